// `prmux serve --san DIR/HOST`: the device fds QEMU would pass are the stand-in files of simulated
// host HOST (DIR/HOST/dev/sdX, DIR/HOST/dev/mapper/mpathX). A received fd is recognised by its
// filesystem device and inode against DIR/HOST/topology.json, and its commands run on the
// simulated SAN through DIR/HOST/san.sock: a path fd on that path's I_T nexus, a map fd on one
// path the SAN picks (as dm-multipath picks one for a plain SG_IO on the map).

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { JsonLineClient } from '../san/client.js';
import { fromHex, hex } from '../scsi/bytes.js';
import { type HelperAnswer, answerFromOutcome } from '../scsi/helper-answer.js';
import type { ScsiOutcome } from '../scsi/types.js';
import { ErrorCode, PrmuxError } from '../errors.js';
import type { DeviceTarget } from './device-target.js';
import type { FdInfo } from './fd-info.js';
import type { PrBackend, PrCommand } from './backend.js';

interface TopologyDoc {
  readonly maps: readonly { name: string; wwid: string; inode: number; paths: string[] }[];
  readonly paths: readonly { dev: string; wwid: string; inode: number; removed: boolean }[];
}

/** Parse the SAN's san.sock outcome JSON back into an outcome value. */
export function outcomeFromJson(v: unknown): ScsiOutcome {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  switch (o['kind']) {
    case 'good':
      return { kind: 'good', data: fromHex(String(o['data'] ?? '')) };
    case 'check-condition':
      return { kind: 'check-condition', sense: fromHex(String(o['sense'] ?? '')) };
    case 'reservation-conflict':
    case 'busy':
    case 'task-set-full':
      return { kind: o['kind'] };
    case 'transport-failure':
      return {
        kind: 'transport-failure',
        hostStatus: Number(o['hostStatus'] ?? 0),
        driverStatus: Number(o['driverStatus'] ?? 0),
        errno: Number(o['errno'] ?? 0),
        detail: String(o['detail'] ?? ''),
      };
    default:
      throw new PrmuxError(ErrorCode.SAN, `Cannot read SAN outcome: kind ${JSON.stringify(o['kind'])} is unknown`);
  }
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
  /** Connections kept to san.sock; the SAN serves each in order, so one per command in flight. */
  readonly maxConnections?: number;
}

/**
 * Runs commands on the simulated SAN. The SAN answers each connection's requests in order, so
 * every command in flight gets its own connection (idle ones are reused): a command stuck on a
 * hung path never delays another connection's command.
 */
export class SanBackend implements PrBackend {
  readonly name = 'san';
  readonly #opts: Required<SanBackendOptions>;
  readonly #idle: JsonLineClient[] = [];
  #open = 0;
  readonly #waiters: ((c: JsonLineClient) => void)[] = [];
  #closed = false;

  constructor(opts: SanBackendOptions) {
    this.#opts = { maxConnections: 64, ...opts };
  }

  async #acquire(): Promise<JsonLineClient> {
    if (this.#closed) throw new PrmuxError(ErrorCode.CLOSED, 'Cannot run a SAN command: the backend is closed');
    const idle = this.#idle.pop();
    if (idle !== undefined) return idle;
    if (this.#open < this.#opts.maxConnections) {
      this.#open++;
      return new JsonLineClient(this.#opts.socketPath, this.#opts.timeoutMs + 5000);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #release(c: JsonLineClient): void {
    const w = this.#waiters.shift();
    if (w !== undefined) w(c);
    else if (this.#closed) c.close();
    else this.#idle.push(c);
  }

  async execute(cmd: PrCommand): Promise<HelperAnswer> {
    const t = cmd.target;
    const dev = t.kind === 'san-path' ? t.dev : t.kind === 'san-map' ? `mapper/${t.map}` : null;
    if (dev === null) throw new PrmuxError(ErrorCode.DEVICE, `Cannot run on the simulated SAN: target ${t.kind} is not a SAN device`);
    const client = await this.#acquire();
    try {
      const reply = await client.request({ op: 'exec', dev, cdb: hex(cmd.cdb), data: cmd.dataOut === null ? '' : hex(cmd.dataOut), timeoutMs: this.#opts.timeoutMs });
      if (reply['ok'] !== true) throw new PrmuxError(ErrorCode.SAN, `Cannot run on ${dev}: ${String(reply['error'])}`);
      const answer = answerFromOutcome(outcomeFromJson(reply['outcome']));
      return answer.data.length > cmd.allocationLength ? { ...answer, data: answer.data.subarray(0, cmd.allocationLength) } : answer;
    } finally {
      this.#release(client);
    }
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.close();
  }
}
