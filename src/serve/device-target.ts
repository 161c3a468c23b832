// Where a received fd leads: a plain SCSI device, a dm-multipath map, another kind of block or
// character device, a simulated-SAN stand-in, or no device at all. Kernel devices are resolved by
// major:minor through sysfs, as the kernel names them (/sys/dev/block/M:m, dm/uuid "mpath-...").

import { readFileSync, readdirSync, realpathSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { FdInfo } from './fd-info.js';

export type DeviceTarget =
  | { readonly kind: 'scsi'; readonly name: string; readonly major: number; readonly minor: number }
  | {
      readonly kind: 'multipath';
      readonly name: string;
      readonly major: number;
      readonly minor: number;
      /** The map name (dm/name), e.g. "mpatha". */
      readonly map: string;
      /** dm/uuid, "mpath-<wwid>". */
      readonly uuid: string;
      /** The block devices under the map (slaves), e.g. ["sda", "sdb"]. */
      readonly slaves: readonly string[];
    }
  | { readonly kind: 'block' | 'char'; readonly name: string; readonly major: number; readonly minor: number }
  | { readonly kind: 'san-path'; readonly host: string; readonly dev: string; readonly wwid: string }
  | { readonly kind: 'san-map'; readonly host: string; readonly map: string; readonly wwid: string; readonly paths: readonly string[] }
  | { readonly kind: 'not-a-device'; readonly type: FdInfo['type'] };

/** A short name for logs and metrics: "sda", "dm-0 (mpatha)", "san host1/sda", "file". */
export function describeTarget(t: DeviceTarget): string {
  switch (t.kind) {
    case 'multipath':
      return `${t.name} (${t.map})`;
    case 'san-path':
      return `san ${t.host}/${t.dev}`;
    case 'san-map':
      return `san ${t.host}/mapper/${t.map}`;
    case 'not-a-device':
      return t.type;
    default:
      return t.name;
  }
}

/** The dm-multipath UUID prefix multipathd gives its maps. */
export const MPATH_UUID_PREFIX = 'mpath-';

function readTrimmed(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * Resolve a kernel device fd through sysfs (`sysfsRoot` is "/sys" outside tests). Never throws: a
 * device sysfs does not describe is reported as a plain block/char device, which gets one SG_IO
 * like any other (the kernel then answers for it).
 */
export function resolveKernelDevice(info: FdInfo, sysfsRoot = '/sys'): DeviceTarget {
  if (info.type !== 'block' && info.type !== 'char') return { kind: 'not-a-device', type: info.type };
  const { major, minor } = info;
  const node = join(sysfsRoot, 'dev', info.type, `${major}:${minor}`);
  let name = `${major}:${minor}`;
  try {
    name = basename(realpathSync(node));
  } catch {
    return { kind: info.type, name, major, minor };
  }
  if (info.type === 'char') return { kind: 'char', name, major, minor };
  const uuid = readTrimmed(join(node, 'dm', 'uuid'));
  if (uuid !== null && uuid.startsWith(MPATH_UUID_PREFIX)) {
    let slaves: string[] = [];
    try {
      slaves = readdirSync(join(node, 'slaves')).sort();
    } catch {
      // A map without a slaves directory has no paths sysfs can name; multipathd still can.
    }
    return { kind: 'multipath', name, major, minor, map: readTrimmed(join(node, 'dm', 'name')) ?? name, uuid, slaves };
  }
  if (existsSync(join(node, 'device', 'scsi_device'))) return { kind: 'scsi', name, major, minor };
  return { kind: 'block', name, major, minor };
}

/**
 * resolveKernelDevice with a short-lived cache by device number: sysfs is read once per device
 * per `ttlMs` rather than on every command. A device number names the same device until that
 * device goes away; the TTL bounds how long a removed-and-reused number could be misnamed.
 */
export class KernelDeviceResolver {
  readonly #root: string;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, { target: DeviceTarget; at: number }>();
  static readonly MAX_ENTRIES = 4096;

  constructor(opts: { sysfsRoot?: string; ttlMs?: number; now?: () => number } = {}) {
    this.#root = opts.sysfsRoot ?? '/sys';
    this.#ttlMs = opts.ttlMs ?? 2000;
    this.#now = opts.now ?? (() => performance.now());
  }

  resolve(info: FdInfo): DeviceTarget {
    if (info.type !== 'block' && info.type !== 'char') return { kind: 'not-a-device', type: info.type };
    const key = `${info.type}:${info.major}:${info.minor}`;
    const t = this.#now();
    const hit = this.#cache.get(key);
    if (hit !== undefined && t - hit.at < this.#ttlMs) return hit.target;
    const target = resolveKernelDevice(info, this.#root);
    if (this.#cache.size >= KernelDeviceResolver.MAX_ENTRIES) this.#cache.clear();
    this.#cache.set(key, { target, at: t });
    return target;
  }
}
