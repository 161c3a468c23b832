// How one CDB reaches one path (one I_T nexus) of a map: SG_IO on the path's own block device
// (KernelPathIo), or the simulated SAN's san.sock naming the path (SanPathIo).
//
// KernelPathIo opens /dev/<path> once and keeps the fd for later commands (an open of a SCSI disk
// is not free: sd_open may revalidate the disk). The fd is replaced when the topology says the path
// is now another device (its dev_t changed), when the kernel answers that the device behind the
// fd is gone (ENODEV/ENXIO: deleted or offlined, see below), when retain() is told the path is no
// longer in any map, and on close(). An fd is never closed while a command runs on it: the number
// could otherwise be reused by another open and the command land on the wrong device.

import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, PrmuxError } from '../errors.js';
import { JsonLineClient } from '../san/client.js';
import { hex } from '../scsi/bytes.js';
import { HostStatus } from '../scsi/constants.js';
import { transportFailure } from '../scsi/outcome.js';
import type { ScsiOutcome } from '../scsi/types.js';
import { splitDevT } from '../serve/fd-info.js';
import { outcomeFromJson } from '../san/outcome-json.js';
import { type AsyncIoctl, type SgIoRun, koffiIoctl, sgIo } from '../sgio/sg-io.js';
import type { Logger } from '../socket/logger.js';
import type { SetTimer } from '../socket/pr-helper-session.js';
import type { MapInfo, PathIo } from './types.js';

/** errno values with which the block layer refuses SG_IO before building a request: the device behind the fd was deleted or is offline. */
const DEVICE_GONE_ERRNOS: ReadonlySet<number> = new Set([osConstants.errno.ENODEV, osConstants.errno.ENXIO]);

/**
 * O_RDWR: the kernel lets an fd opened without write access send only the commands it deems
 * read-safe (PERSISTENT RESERVE OUT is not one of them) unless the caller has CAP_SYS_RAWIO.
 * O_NONBLOCK: as sg3_utils' sg_cmds_open_device, so the open does not wait for media on a disk
 * that reports none; it has no effect on SG_IO itself.
 */
const PATH_OPEN_FLAGS = fsConstants.O_RDWR | fsConstants.O_NONBLOCK;

/** A kernel device name: no directory parts, no dot names (the path goes under devRoot). */
function checkDevName(dev: string, action: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(dev)) {
    throw new PrmuxError(ErrorCode.DEVICE, `Cannot ${action}: path name ${JSON.stringify(dev)} is not a kernel device name`);
  }
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export interface KernelPathIoOptions {
  /** Where the path device nodes are. Default "/dev". */
  readonly devRoot?: string;
  /** ioctl seam (tests); default libc's ioctl on the libuv pool. */
  readonly ioctl?: AsyncIoctl;
  readonly logger?: Logger | null;
}

interface OpenPath {
  readonly dev: string;
  readonly handle: FileHandle;
  readonly fd: number;
  /** The dev_t this fd is for: the block device's own number, or the topology's for a stand-in file. */
  readonly devT: string;
  readonly ino: bigint;
  inFlight: number;
  /** Replaced or dropped: closed once the last command on it returns. */
  retired: boolean;
}

/** One open path device, as openPaths() reports it. */
export interface OpenPathInfo {
  readonly dev: string;
  readonly fd: number;
  readonly devT: string;
  readonly inFlight: number;
}

export class KernelPathIo implements PathIo {
  readonly #devRoot: string;
  readonly #ioctl: AsyncIoctl;
  readonly #logger: Logger | null;
  readonly #open = new Map<string, OpenPath>();
  /** Opens in progress, shared by concurrent commands on the same path. */
  readonly #opening = new Map<string, Promise<OpenPath>>();
  /** Every entry not yet closed (current and retired-but-busy), for close(). */
  readonly #all = new Set<OpenPath>();
  readonly #closing = new Set<Promise<void>>();
  #closed = false;

  constructor(options: KernelPathIoOptions = {}) {
    this.#devRoot = options.devRoot ?? '/dev';
    this.#ioctl = options.ioctl ?? koffiIoctl;
    this.#logger = options.logger ?? null;
  }

  async exec(map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<ScsiOutcome> {
    if (this.#closed) throw new PrmuxError(ErrorCode.CLOSED, `Cannot run a command on ${path}: the path I/O is closed`);
    checkDevName(path, 'run a command');
    const devT = map.paths.find((p) => p.dev === path)?.devT ?? '';
    const entry = await this.#acquire(path, devT);
    const run = await this.#run(entry, cdb, dataOut, allocationLength, timeoutMs);
    if (run.outcome.kind !== 'transport-failure' || !DEVICE_GONE_ERRNOS.has(run.completion.errno)) return run.outcome;
    // The block layer refused before a request existed (sd's ioctl checks the device is online;
    // a deleted disk has no queue): nothing reached the target, so one retry on a fresh open is
    // safe even for PR OUT. The fresh open finds whatever device now has the name (a path removed
    // and added back); when it fails, the device really is gone and the first answer stands.
    this.#retire(entry, 'the device behind the fd is gone');
    let fresh: OpenPath;
    try {
      fresh = await this.#acquire(path, devT);
    } catch (e) {
      this.#logger?.debug('path device cannot be reopened', { dev: path, error: messageOf(e) });
      return run.outcome;
    }
    return (await this.#run(fresh, cdb, dataOut, allocationLength, timeoutMs)).outcome;
  }

  /**
   * Keep the fds of paths still in `maps` (the view after a refresh) and close the others; a path
   * whose dev_t changed is closed too and reopened by its next command.
   */
  retain(maps: readonly MapInfo[]): void {
    const wanted = new Map<string, string>();
    for (const m of maps) for (const p of m.paths) wanted.set(p.dev, p.devT);
    for (const entry of [...this.#open.values()]) {
      const devT = wanted.get(entry.dev);
      if (devT === undefined) this.#retire(entry, 'the path left the topology');
      else if (devT !== '' && devT !== entry.devT) this.#retire(entry, `its dev_t changed from ${entry.devT} to ${devT}`);
    }
  }

  /** The fds held now (diagnostics and tests). */
  openPaths(): OpenPathInfo[] {
    return [...this.#open.values()].map((e) => ({ dev: e.dev, fd: e.fd, devT: e.devT, inFlight: e.inFlight }));
  }

  /** Close every fd; one with a command running is closed when the command returns. Later exec() calls reject. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const entry of [...this.#all]) this.#retire(entry, 'closing');
    await Promise.all([...this.#opening.values()].map((p) => p.catch(() => undefined)));
    await Promise.all([...this.#closing]);
  }

  async #run(entry: OpenPath, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<SgIoRun> {
    entry.inFlight++;
    try {
      return await sgIo(entry.fd, dataOut !== null ? { cdb, dataOut, timeoutMs } : { cdb, dataInLength: allocationLength, timeoutMs }, this.#ioctl);
    } finally {
      entry.inFlight--;
      if (entry.retired && entry.inFlight === 0) this.#closeHandle(entry);
    }
  }

  async #acquire(dev: string, devT: string): Promise<OpenPath> {
    const current = this.#open.get(dev);
    if (current !== undefined && (devT === '' || devT === current.devT)) return current;
    let opening = this.#opening.get(dev);
    if (opening === undefined) {
      opening = this.#openDevice(dev, devT).finally(() => this.#opening.delete(dev));
      this.#opening.set(dev, opening);
    }
    return opening;
  }

  async #openDevice(dev: string, devT: string): Promise<OpenPath> {
    const file = join(this.#devRoot, dev);
    let handle: FileHandle;
    try {
      handle = await open(file, PATH_OPEN_FLAGS);
    } catch (e) {
      throw new PrmuxError(ErrorCode.DEVICE, `Cannot open path device ${file}: ${(e as NodeJS.ErrnoException).code ?? messageOf(e)}`, { cause: e });
    }
    let actual = devT;
    let ino = 0n;
    try {
      const st = await handle.stat({ bigint: true });
      ino = st.ino;
      if (st.isBlockDevice() || st.isCharacterDevice()) {
        const { major, minor } = splitDevT(st.rdev);
        actual = `${major}:${minor}`;
        if (devT !== '' && actual !== devT) {
          // udev has not caught up, or the name now belongs to another disk: commands must not go there.
          throw new PrmuxError(ErrorCode.DEVICE, `Cannot use path device ${file}: it is ${actual}, the topology says ${dev} is ${devT}`);
        }
      }
      // A regular file (a stand-in in tests) has no dev_t of its own: it takes the topology's.
      if (this.#closed) throw new PrmuxError(ErrorCode.CLOSED, `Cannot open ${file}: the path I/O is closed`);
    } catch (e) {
      await handle.close().catch(() => undefined);
      throw e;
    }
    const entry: OpenPath = { dev, handle, fd: handle.fd, devT: actual, ino, inFlight: 0, retired: false };
    const old = this.#open.get(dev);
    this.#open.set(dev, entry);
    this.#all.add(entry);
    if (old !== undefined) this.#retire(old, `reopened as ${actual}`);
    this.#logger?.debug('opened path device', { dev, fd: entry.fd, devT: actual });
    return entry;
  }

  #retire(entry: OpenPath, why: string): void {
    if (this.#open.get(entry.dev) === entry) this.#open.delete(entry.dev);
    if (entry.retired) return;
    entry.retired = true;
    this.#logger?.debug('closing path device', { dev: entry.dev, fd: entry.fd, why, inFlight: entry.inFlight });
    if (entry.inFlight === 0) this.#closeHandle(entry);
  }

  #closeHandle(entry: OpenPath): void {
    if (!this.#all.delete(entry)) return;
    const p: Promise<void> = entry.handle
      .close()
      .catch((e: unknown) => this.#logger?.warn('closing a path device failed', { dev: entry.dev, error: messageOf(e) }))
      .finally(() => this.#closing.delete(p));
    this.#closing.add(p);
  }
}

// --- the simulated SAN -----------------------------------------------------------------------------

export interface SanPathIoOptions {
  /** DIR/HOST/san.sock */
  readonly socketPath: string;
  /** Connections to san.sock: the SAN answers a connection's requests in order, so one per command in flight. Default 64. */
  readonly maxConnections?: number;
  /** Commands waiting for a connection beyond maxConnections. Default 1024. */
  readonly maxWaiting?: number;
  /** How long past the command's own timeout the SAN may take to answer before the command counts as timed out. Default 5000 ms. */
  readonly answerMarginMs?: number;
  readonly setTimer?: SetTimer;
}

/** The simulated SAN's bound on a command timeout (san-server.ts MAX_EXEC_TIMEOUT_MS). */
const SAN_MAX_TIMEOUT_MS = 600_000;

const realSetTimer: SetTimer = (ms, fn) => {
  const t = globalThis.setTimeout(fn, ms);
  return () => globalThis.clearTimeout(t);
};

/**
 * Runs each command on the named path's own I_T nexus of the simulated SAN. The SAN carries out the
 * transport faults (down, hung, flaky, removed) and answers with the target's outcome.
 */
export class SanPathIo implements PathIo {
  readonly #socketPath: string;
  readonly #maxConnections: number;
  readonly #maxWaiting: number;
  readonly #marginMs: number;
  readonly #setTimer: SetTimer;
  readonly #idle: JsonLineClient[] = [];
  readonly #waiters: ((c: JsonLineClient | null) => void)[] = [];
  #open = 0;
  #closed = false;

  constructor(options: SanPathIoOptions) {
    this.#socketPath = options.socketPath;
    this.#maxConnections = options.maxConnections ?? 64;
    this.#maxWaiting = options.maxWaiting ?? 1024;
    this.#marginMs = options.answerMarginMs ?? 5000;
    this.#setTimer = options.setTimer ?? realSetTimer;
  }

  async exec(_map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<ScsiOutcome> {
    checkDevName(path, 'run a SAN command');
    return this.execDevice(path, cdb, dataOut, allocationLength, timeoutMs);
  }

  /**
   * Runs one command on a device of the simulated host: a path ("sda", its own I_T nexus) or a map
   * ("mapper/mpatha": the SAN picks one path, as dm does for a plain SG_IO on the map).
   */
  async execDevice(path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<ScsiOutcome> {
    checkDevName(path.startsWith('mapper/') ? path.slice('mapper/'.length) : path, 'run a SAN command');
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > SAN_MAX_TIMEOUT_MS) {
      throw new PrmuxError(ErrorCode.DEVICE, `Cannot run a SAN command on ${path}: timeout ${timeoutMs} ms is not 1..${SAN_MAX_TIMEOUT_MS}`);
    }
    const client = await this.#acquire();
    let reusable = false;
    try {
      const request = client.request({ op: 'exec', dev: path, cdb: hex(cdb), data: dataOut === null ? '' : hex(dataOut), timeoutMs });
      const reply = await this.#within(request, timeoutMs + this.#marginMs);
      if (reply === null) {
        // The SAN enforces the command timeout itself; no answer at all means it is stuck. The
        // connection is out of step now and is dropped (reusable stays false).
        return transportFailure(HostStatus.DID_TIME_OUT, `${path}: no answer from the simulated SAN within ${timeoutMs + this.#marginMs} ms`);
      }
      reusable = true;
      if (reply['ok'] !== true) throw new PrmuxError(ErrorCode.SAN, `Cannot run a command on ${path}: ${String(reply['error'])}`);
      const outcome = outcomeFromJson(reply['outcome']);
      return outcome.kind === 'good' && outcome.data.length > allocationLength ? { kind: 'good', data: outcome.data.subarray(0, allocationLength) } : outcome;
    } finally {
      this.#release(client, reusable);
    }
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.close();
    for (const w of this.#waiters.splice(0)) w(null);
  }

  #within(request: Promise<Record<string, unknown>>, ms: number): Promise<Record<string, unknown> | null> {
    return new Promise((resolve, reject) => {
      let done = false;
      const cancel = this.#setTimer(ms, () => {
        if (done) return;
        done = true;
        resolve(null);
      });
      request.then(
        (v) => {
          if (done) return;
          done = true;
          cancel();
          resolve(v);
        },
        (e: unknown) => {
          if (done) return;
          done = true;
          cancel();
          reject(e instanceof Error ? e : new Error(String(e)));
        },
      );
    });
  }

  async #acquire(): Promise<JsonLineClient> {
    if (this.#closed) throw new PrmuxError(ErrorCode.CLOSED, 'Cannot run a SAN command: the path I/O is closed');
    const idle = this.#idle.pop();
    if (idle !== undefined) return idle;
    if (this.#open < this.#maxConnections) {
      this.#open++;
      return this.#newClient();
    }
    if (this.#waiters.length >= this.#maxWaiting) {
      throw new PrmuxError(ErrorCode.SAN, `Cannot run a SAN command: ${this.#waiters.length} commands already wait for a connection`);
    }
    const c = await new Promise<JsonLineClient | null>((resolve) => this.#waiters.push(resolve));
    if (c === null) throw new PrmuxError(ErrorCode.CLOSED, 'Cannot run a SAN command: the path I/O was closed');
    return c;
  }

  #newClient(): JsonLineClient {
    // The client's own bound is the SAN's largest timeout plus the margin: exec() bounds each
    // command by its own timeout.
    return new JsonLineClient(this.#socketPath, SAN_MAX_TIMEOUT_MS + this.#marginMs);
  }

  #release(c: JsonLineClient, reusable: boolean): void {
    if (!reusable) {
      c.close();
      this.#open--;
      const w = this.#waiters.shift();
      if (w !== undefined) {
        this.#open++;
        w(this.#newClient());
      }
      return;
    }
    const w = this.#waiters.shift();
    if (w !== undefined) w(c);
    else if (this.#closed) {
      c.close();
      this.#open--;
    } else this.#idle.push(c);
  }
}
