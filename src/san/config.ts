// Topology of a simulated SAN: hosts, LUNs and paths, from flags or a JSON file.

import { PrmuxError, ErrorCode } from '../errors.js';
import type { Personality } from '../scsi/model/device-server.js';

export interface SanLunConfig {
  /** Multipath WWID (uid) as multipathd shows it, e.g. "36001405...". */
  readonly wwid: string;
  readonly personality: Personality;
  readonly sizeSectors: number;
}

export interface SanPathConfig {
  /** Extra latency of every command on this path, in milliseconds. */
  readonly latencyMs: number;
}

export interface SanHostConfig {
  readonly name: string;
  /** Paths per LUN (each an I_T nexus of its own). */
  readonly paths: readonly SanPathConfig[];
}

export interface SanConfig {
  readonly hosts: readonly SanHostConfig[];
  readonly luns: readonly SanLunConfig[];
  /** multipathd path checker polling interval of every host, in milliseconds. */
  readonly checkerIntervalMs: number;
}

export interface TopologyFlags {
  readonly hosts?: number;
  readonly luns?: number;
  readonly paths?: number;
  readonly checkerIntervalMs?: number;
  readonly latencyMs?: number;
}

/** WWIDs in the LIO lab's pattern (NAA 6, LIO's OUI 001405); LUN 0 has the lab LUN's own WWID. */
export function lunWwid(index: number): string {
  return `360014056001405c0ffee${index.toString(16).padStart(12, '0')}`;
}

function intFlag(name: string, v: number | undefined, def: number, max: number): number {
  const n = v ?? def;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new PrmuxError(ErrorCode.CONFIG, `Cannot build SAN topology: --${name} ${String(v)} is not an integer from 1 to ${max}`);
  return n;
}

/** Default topology: 2 hosts, 2 LUNs, 2 paths per host per LUN, LIO personality. */
export function defaultSanConfig(flags: TopologyFlags = {}): SanConfig {
  const hosts = intFlag('hosts', flags.hosts, 2, 16);
  const luns = intFlag('luns', flags.luns, 2, 26);
  const paths = intFlag('paths', flags.paths, 2, 8);
  return {
    hosts: Array.from({ length: hosts }, (_, h) => ({
      name: `host${h + 1}`,
      paths: Array.from({ length: paths }, () => ({ latencyMs: flags.latencyMs ?? 0 })),
    })),
    luns: Array.from({ length: luns }, (_, i) => ({ wwid: lunWwid(i), personality: 'lio' as const, sizeSectors: 131072 })),
    checkerIntervalMs: flags.checkerIntervalMs ?? 1000,
  };
}

/** Validate a `--config` JSON document (see README "Simulated SAN" for the schema). */
export function parseSanConfig(json: unknown): SanConfig {
  const fail = (field: string, why: string): never => {
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot read SAN config: ${field} ${why}`);
  };
  if (typeof json !== 'object' || json === null) fail('document', 'is not a JSON object');
  const doc = json as Record<string, unknown>;
  const hostsRaw = doc['hosts'];
  const lunsRaw = doc['luns'];
  if (!Array.isArray(hostsRaw) || hostsRaw.length === 0) fail('hosts', 'must be a non-empty array');
  if (!Array.isArray(lunsRaw) || lunsRaw.length === 0) fail('luns', 'must be a non-empty array');
  const hosts = (hostsRaw as unknown[]).map((h, i): SanHostConfig => {
    const o = (typeof h === 'object' && h !== null ? h : fail(`hosts[${i}]`, 'is not an object')) as Record<string, unknown>;
    const name = typeof o['name'] === 'string' && /^[a-z][a-z0-9_-]{0,31}$/.test(o['name']) ? o['name'] : fail(`hosts[${i}].name`, 'must match ^[a-z][a-z0-9_-]{0,31}$');
    const pathsRaw = o['paths'];
    if (!Array.isArray(pathsRaw) || pathsRaw.length === 0 || pathsRaw.length > 8) fail(`hosts[${i}].paths`, 'must be an array of 1 to 8 paths');
    const paths = (pathsRaw as unknown[]).map((p, j): SanPathConfig => {
      const po = (typeof p === 'object' && p !== null ? p : {}) as Record<string, unknown>;
      const latency = po['latencyMs'] ?? 0;
      if (typeof latency !== 'number' || !(latency >= 0) || latency > 60000) fail(`hosts[${i}].paths[${j}].latencyMs`, 'must be a number from 0 to 60000');
      return { latencyMs: latency as number };
    });
    return { name, paths };
  });
  const names = new Set(hosts.map((h) => h.name));
  if (names.size !== hosts.length) fail('hosts', 'has duplicate names');
  const luns = (lunsRaw as unknown[]).map((l, i): SanLunConfig => {
    const o = (typeof l === 'object' && l !== null ? l : fail(`luns[${i}]`, 'is not an object')) as Record<string, unknown>;
    const wwid = o['wwid'] ?? lunWwid(i);
    if (typeof wwid !== 'string' || !/^[0-9a-f]{8,64}$/.test(wwid)) fail(`luns[${i}].wwid`, 'must be 8 to 64 lowercase hex digits');
    const personality = o['personality'] ?? 'lio';
    if (personality !== 'lio' && personality !== 'spc4') fail(`luns[${i}].personality`, 'must be "lio" or "spc4"');
    const size = o['sizeSectors'] ?? 131072;
    if (typeof size !== 'number' || !Number.isInteger(size) || size < 8) fail(`luns[${i}].sizeSectors`, 'must be an integer >= 8');
    return { wwid: wwid as string, personality: personality as Personality, sizeSectors: size as number };
  });
  if (new Set(luns.map((l) => l.wwid)).size !== luns.length) fail('luns', 'has duplicate WWIDs');
  const interval = doc['checkerIntervalMs'] ?? 1000;
  if (typeof interval !== 'number' || !(interval >= 50) || interval > 600000) fail('checkerIntervalMs', 'must be a number from 50 to 600000');
  return { hosts, luns, checkerIntervalMs: interval as number };
}
