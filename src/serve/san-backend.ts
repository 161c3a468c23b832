// `prmux serve --san DIR/HOST`: the device fds QEMU would pass are the stand-in files of simulated
// host HOST (DIR/HOST/dev/sdX, DIR/HOST/dev/mapper/mpathX). A received fd is recognised by its
// filesystem device and inode against DIR/HOST/topology.json, and its commands run on the
// simulated SAN through DIR/HOST/san.sock: a path fd on that path's I_T nexus, a map fd on one
// path the SAN picks (as dm-multipath picks one for a plain SG_IO on the map).

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type HelperAnswer, answerFromOutcome } from '../scsi/helper-answer.js';
import { ErrorCode, PrmuxError } from '../errors.js';
import type { DeviceTarget } from './device-target.js';
import type { FdInfo } from './fd-info.js';
import type { PrBackend, PrCommand } from './backend.js';
import { SanPathIo } from '../fanout/path-io.js';

interface TopologyDoc {
  readonly maps: readonly { name: string; wwid: string; inode: number; paths: string[] }[];
  readonly paths: readonly { dev: string; wwid: string; inode: number; removed: boolean }[];
}

/** Recognises the stand-in files of one simulated host. Re-reads topology.json when it changes. */
export class SanDeviceMap {
  readonly #hostDir: string;
  readonly #host: string;
  /** inode, mtime (ns) and size of the topology.json last read: the SAN replaces it by rename. */
  #loadedKey = '';
  #byInode = new Map<string, DeviceTarget>();
  #fsDev: bigint = -1n;

  constructor(hostDir: string, host: string) {
    this.#hostDir = hostDir;
    this.#host = host;
    this.#reload(true);
  }

  #reload(force: boolean): void {
    const file = join(this.#hostDir, 'topology.json');
    const st = statSync(file, { bigint: true });
    const key = `${st.ino}:${st.mtimeNs}:${st.size}`;
    if (!force && key === this.#loadedKey) return;
    const doc = JSON.parse(readFileSync(file, 'utf8')) as TopologyDoc;
    const next = new Map<string, DeviceTarget>();
    for (const m of doc.maps) next.set(String(m.inode), { kind: 'san-map', host: this.#host, map: m.name, wwid: m.wwid, paths: m.paths });
    for (const p of doc.paths) if (!p.removed) next.set(String(p.inode), { kind: 'san-path', host: this.#host, dev: p.dev, wwid: p.wwid });
    this.#byInode = next;
    this.#loadedKey = key;
    this.#fsDev = statSync(join(this.#hostDir, 'dev'), { bigint: true }).dev;
  }

  /** The SAN device behind `info`, or null when the fd is not one of this host's stand-ins. */
  lookup(info: FdInfo): DeviceTarget | null {
    if (info.type !== 'file') return null;
    this.#reload(false);
    if (info.dev !== this.#fsDev) return null;
    return this.#byInode.get(String(info.ino)) ?? null;
  }
}

export interface SanBackendOptions {
  /** DIR/HOST/san.sock */
  readonly socketPath: string;
  readonly timeoutMs: number;
}

/**
 * Runs commands on the simulated SAN, for fds that are a host's path stand-ins (and, with
 * --multipath plain, its map stand-ins), through the same connection pool the fan-out engine's
 * SanPathIo uses: one connection per command in flight, so a command stuck on a hung path never
 * delays another connection's command.
 */
export class SanBackend implements PrBackend {
  readonly name = 'san';
  readonly #io: SanPathIo;
  readonly #timeoutMs: number;

  constructor(opts: SanBackendOptions) {
    this.#io = new SanPathIo({ socketPath: opts.socketPath });
    this.#timeoutMs = opts.timeoutMs;
  }

  async execute(cmd: PrCommand): Promise<HelperAnswer> {
    const t = cmd.target;
    const dev = t.kind === 'san-path' ? t.dev : t.kind === 'san-map' ? `mapper/${t.map}` : null;
    if (dev === null) throw new PrmuxError(ErrorCode.DEVICE, `Cannot run on the simulated SAN: target ${t.kind} is not a SAN device`);
    return answerFromOutcome(await this.#io.execDevice(dev, cmd.cdb, cmd.dataOut, cmd.allocationLength, this.#timeoutMs));
  }

  close(): void {
    this.#io.close();
  }
}
