// Suspending and resuming a multipath map around moving a reservation (multipath-pr-semantics.md:
// "suspend the dm device (no flush), PREEMPT our own key ..., resume"): while the map is suspended
// no I/O reaches a path that has just lost its registration.
//
// KernelMapControl issues device-mapper's DM_DEV_SUSPEND ioctl on /dev/mapper/control, as
// `dmsetup suspend --noflush` / `dmsetup resume` do, addressed by the map's name. The layout is
// struct dm_ioctl of the kernel's include/uapi/linux/dm-ioctl.h, interface version 4:
//
//   offset size field
//        0   12 __u32 version[3]   in: the version we speak (4.0.0); out: the kernel's
//       12    4 __u32 data_size    bytes passed in, this struct included
//       16    4 __u32 data_start   where variable data starts (none for this command)
//       20    4 __u32 target_count out
//       24    4 __s32 open_count   out
//       28    4 __u32 flags        in/out (DM_SUSPEND_FLAG on output: the device is suspended)
//       32    4 __u32 event_nr     in: udev cookie (0: none); out: event number
//       36    4 __u32 padding
//       40    8 __u64 dev          out: the device number (addressing is by name here)
//       48  128 char name[DM_NAME_LEN]
//      176  129 char uuid[DM_UUID_LEN]  empty: the name addresses the device
//      305    7 char data[7]       padding up to 312 bytes
//
// DM_DEV_SUSPEND = _IOWR(0xfd, 6, struct dm_ioctl). With DM_SUSPEND_FLAG it suspends, without it
// resumes. DM_NOFLUSH_FLAG: queued I/O stays queued in the multipath target instead of being
// flushed or failed (what libmpathpersist's dm_simplecmd_noflush asks for). DM_SKIP_LOCKFS_FLAG:
// no filesystem freeze, as libmultipath's dm_simplecmd always sets (the kernel skips the freeze
// on a noflush suspend anyway). A resume also swaps in an inactive table if one was loaded, as
// `dmsetup resume` does; multipathd loads tables with its own suspend/resume cycle, so none waits
// here in practice.
//
// SanMapControl drives the simulated SAN's `map suspend|resume HOST MAP` control commands.

import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import koffi from 'koffi';
import { ErrorCode, PrmuxError } from '../errors.js';
import { JsonLineClient } from '../san/client.js';
import { type AsyncIoctl, koffiIoctl } from '../sgio/sg-io.js';
import type { Logger } from '../socket/logger.js';
import type { MapInfo, MapControl } from './types.js';

export const DM_IOCTL_MAGIC = 0xfd;
export const DM_DEV_SUSPEND_CMD = 6;
export const DM_NAME_LEN = 128;
export const DM_UUID_LEN = 129;
export const DM_IOCTL_SIZE = 312;
/** The interface version prmux speaks: major 4 (the only one Linux has had since 2.6); minor 0 is accepted by every 4.x kernel. */
export const DM_INTERFACE_VERSION = [4, 0, 0] as const;

export const DmFlag = {
  READONLY: 1 << 0,
  SUSPEND: 1 << 1,
  SKIP_LOCKFS: 1 << 10,
  NOFLUSH: 1 << 11,
} as const;

/** <asm-generic/ioctl.h> _IOWR(type, nr, size): direction read|write (3) in bits 30-31, size in 16-29. */
export function iowr(type: number, nr: number, size: number): number {
  return ((3 << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}

/** 0xc138fd06 */
export const DM_DEV_SUSPEND = iowr(DM_IOCTL_MAGIC, DM_DEV_SUSPEND_CMD, DM_IOCTL_SIZE);

const OFF = { version: 0, dataSize: 12, dataStart: 16, targetCount: 20, openCount: 24, flags: 28, eventNr: 32, dev: 40, name: 48, uuid: 176 } as const;

/** A dm device name the kernel accepts: 1..127 bytes, no '/' (DM_DIR has no subdirectories), no NUL. */
function checkMapName(name: string, action: string): Uint8Array {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length >= DM_NAME_LEN || name.includes('/') || name.includes('\0')) {
    throw new PrmuxError(ErrorCode.DEVICE, `Cannot ${action}: map name ${JSON.stringify(name)} is not a dm device name (1..${DM_NAME_LEN - 1} bytes, no '/')`);
  }
  return bytes;
}

/** struct dm_ioctl for DM_DEV_SUSPEND on the named device, little-endian (x86-64, arm64). */
export function encodeDmSuspend(name: string, suspend: boolean): Uint8Array {
  const nameBytes = checkMapName(name, suspend ? 'suspend map' : 'resume map');
  const out = new Uint8Array(DM_IOCTL_SIZE);
  const v = new DataView(out.buffer);
  DM_INTERFACE_VERSION.forEach((n, i) => v.setUint32(OFF.version + 4 * i, n, true));
  v.setUint32(OFF.dataSize, DM_IOCTL_SIZE, true);
  v.setUint32(OFF.dataStart, DM_IOCTL_SIZE, true);
  v.setUint32(OFF.flags, (suspend ? DmFlag.SUSPEND : 0) | DmFlag.NOFLUSH | DmFlag.SKIP_LOCKFS, true);
  out.set(nameBytes, OFF.name);
  return out;
}

export interface DmIoctlReply {
  readonly version: readonly [number, number, number];
  readonly flags: number;
  readonly openCount: number;
  readonly eventNr: number;
  readonly targetCount: number;
  /** "major:minor" of the device. */
  readonly devT: string;
  readonly name: string;
}

/** The fields the kernel writes back into struct dm_ioctl. */
export function decodeDmIoctl(bytes: Uint8Array): DmIoctlReply {
  if (bytes.length < DM_IOCTL_SIZE) throw new PrmuxError(ErrorCode.DECODE, `Cannot decode struct dm_ioctl: ${bytes.length} bytes, need ${DM_IOCTL_SIZE}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dev = v.getBigUint64(OFF.dev, true);
  // The kernel's huge_encode_dev: minor low 8 bits, major 12 bits, then the high minor bits.
  const major = Number((dev >> 8n) & 0xfffn);
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  const nameField = bytes.subarray(OFF.name, OFF.name + DM_NAME_LEN);
  const nul = nameField.indexOf(0);
  return {
    version: [v.getUint32(0, true), v.getUint32(4, true), v.getUint32(8, true)],
    flags: v.getUint32(OFF.flags, true),
    openCount: v.getInt32(OFF.openCount, true),
    eventNr: v.getUint32(OFF.eventNr, true),
    targetCount: v.getUint32(OFF.targetCount, true),
    devT: `${major}:${minor}`,
    name: new TextDecoder().decode(nul === -1 ? nameField : nameField.subarray(0, nul)),
  };
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([k, n]) => [n, k]));

export interface KernelMapControlOptions {
  /** The device-mapper control node. Default "/dev/mapper/control". */
  readonly controlPath?: string;
  /** ioctl seam (tests); default libc's ioctl on the libuv pool (a suspend waits for in-flight I/O). */
  readonly ioctl?: AsyncIoctl;
  readonly logger?: Logger | null;
}

export class KernelMapControl implements MapControl {
  readonly #controlPath: string;
  readonly #ioctl: AsyncIoctl;
  readonly #logger: Logger | null;
  #control: Promise<FileHandle> | null = null;
  #inFlight = 0;
  #closed = false;

  constructor(options: KernelMapControlOptions = {}) {
    this.#controlPath = options.controlPath ?? '/dev/mapper/control';
    this.#ioctl = options.ioctl ?? koffiIoctl;
    this.#logger = options.logger ?? null;
  }

  async suspend(map: MapInfo): Promise<void> {
    await this.#suspendOrResume(map.name, true);
  }

  async resume(map: MapInfo): Promise<void> {
    await this.#suspendOrResume(map.name, false);
  }

  /** Close the control node (after the commands in flight). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#inFlight === 0) await this.#closeControl();
  }

  async #closeControl(): Promise<void> {
    const c = this.#control;
    this.#control = null;
    if (c !== null) await (await c.catch(() => null))?.close().catch(() => undefined);
  }

  #controlHandle(): Promise<FileHandle> {
    this.#control ??= open(this.#controlPath, fsConstants.O_RDWR).catch((e: unknown) => {
      this.#control = null;
      throw new PrmuxError(ErrorCode.DEVICE, `Cannot open ${this.#controlPath}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
    });
    return this.#control;
  }

  /** Issue DM_DEV_SUSPEND and check the state the kernel reports afterwards. */
  async #suspendOrResume(name: string, suspend: boolean): Promise<DmIoctlReply> {
    const action = `${suspend ? 'suspend' : 'resume'} map ${name}`;
    if (this.#closed) throw new PrmuxError(ErrorCode.CLOSED, `Cannot ${action}: the map control is closed`);
    const request = encodeDmSuspend(name, suspend);
    this.#inFlight++;
    try {
      const handle = await this.#controlHandle();
      const reply = await ioctlStruct(this.#ioctl, handle.fd, DM_DEV_SUSPEND, request);
      if (reply.ret < 0) {
        const errno = reply.errno;
        const why = errno === osConstants.errno.ENXIO ? 'no such dm device' : errno === osConstants.errno.EINVAL ? 'the kernel refused the request' : 'the ioctl failed';
        throw new PrmuxError(ErrorCode.DEVICE, `Cannot ${action}: DM_DEV_SUSPEND: ${errnoNames.get(errno) ?? `errno ${errno}`} (${why})`);
      }
      const out = decodeDmIoctl(reply.bytes);
      const suspended = (out.flags & DmFlag.SUSPEND) !== 0;
      if (suspended !== suspend) {
        throw new PrmuxError(ErrorCode.DEVICE, `Cannot ${action}: the kernel reports the device ${suspended ? 'still suspended' : 'not suspended'} afterwards (flags 0x${out.flags.toString(16)})`);
      }
      this.#logger?.info(suspend ? 'suspended map (noflush)' : 'resumed map', { map: name, dev: out.devT, openCount: out.openCount });
      return out;
    } finally {
      this.#inFlight--;
      if (this.#closed && this.#inFlight === 0) await this.#closeControl();
    }
  }
}

/**
 * ioctl(fd, request, buf) with `bytes` copied into native memory that stays put while a pool thread
 * runs the call, and copied back afterwards (the kernel writes its answer into the same struct).
 */
function ioctlStruct(ioctl: AsyncIoctl, fd: number, request: number, bytes: Uint8Array): Promise<{ ret: number; errno: number; bytes: Uint8Array }> {
  const size = bytes.length;
  const base = koffi.alloc('uint8_t', size) as unknown as bigint;
  const mem = new Uint8Array(koffi.view(base, size));
  mem.set(bytes);
  return new Promise((resolve, reject) => {
    try {
      ioctl(fd, request, base, (ret, errno, failure) => {
        try {
          if (failure !== undefined) throw failure instanceof Error ? failure : new Error(String(failure));
          resolve({ ret, errno: ret < 0 ? errno || osConstants.errno.EIO : 0, bytes: mem.slice() });
        } catch (e) {
          reject(e instanceof Error ? e : new Error(String(e)));
        } finally {
          koffi.free(base as never);
        }
      });
    } catch (e) {
      koffi.free(base as never);
      reject(e instanceof Error ? e : new Error(String(e)));
    }
  });
}

// --- the simulated SAN -----------------------------------------------------------------------------

export interface SanMapControlOptions {
  /** DIR/ctl.sock */
  readonly ctlSocketPath: string;
  /** The simulated host whose map is meant. */
  readonly host: string;
  /** Bound on one control request. Default 10 s. */
  readonly timeoutMs?: number;
}

/** `map suspend HOST MAP` / `map resume HOST MAP` on the simulated SAN's control socket. */
export class SanMapControl implements MapControl {
  readonly #client: JsonLineClient;
  readonly #host: string;

  constructor(options: SanMapControlOptions) {
    this.#client = new JsonLineClient(options.ctlSocketPath, options.timeoutMs ?? 10_000);
    this.#host = options.host;
  }

  suspend(map: MapInfo): Promise<void> {
    return this.#run('suspend', map.name);
  }

  resume(map: MapInfo): Promise<void> {
    return this.#run('resume', map.name);
  }

  close(): void {
    this.#client.close();
  }

  async #run(verb: 'suspend' | 'resume', name: string): Promise<void> {
    const reply = await this.#client.request({ cmd: ['map', verb, this.#host, name] });
    if (reply['ok'] !== true) throw new PrmuxError(ErrorCode.SAN, `Cannot ${verb} map ${name} of ${this.#host}: ${String(reply['error'])}`);
  }
}
