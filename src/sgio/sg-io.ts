// ioctl(fd, SG_IO, &sg_io_hdr) through koffi, run on the libuv thread pool (koffi's `.async`) so
// that a slow target never blocks the event loop. The completion is turned into a value by the
// pure mapping in src/scsi/sgio-result.ts.
//
// Pool sizing: every SG_IO in flight occupies one libuv pool thread until the kernel completes or
// times it out; the pool has 4 threads unless UV_THREADPOOL_SIZE says otherwise, and libuv reads
// that variable once, at the first use of the pool. See sizeUvThreadpool().

import koffi from 'koffi';
import { type SgIoCompletion, type SgIoResult, sgIoResult } from '../scsi/sgio-result.js';

/** <scsi/sg.h> */
export const SG_IO = 0x2285;
export const SgDxfer = { NONE: -1, TO_DEV: -2, FROM_DEV: -3 } as const;
export type SgDxfer = (typeof SgDxfer)[keyof typeof SgDxfer];
const SG_INTERFACE_ID = 'S'.charCodeAt(0);
const SENSE_MAX = 96;

/**
 * struct sg_io_hdr (<scsi/sg.h>), 88 bytes on LP64 Linux. Declared for its layout: the fields are
 * written through the offsets koffi computes, into memory koffi allocates, because the pointers it
 * holds must stay valid while a pool thread runs the ioctl.
 */
export const SgIoHdr = koffi.struct('prmux_sg_io_hdr', {
  interface_id: 'int',
  dxfer_direction: 'int',
  cmd_len: 'uchar',
  mx_sb_len: 'uchar',
  iovec_count: 'ushort',
  dxfer_len: 'uint',
  dxferp: 'void *',
  cmdp: 'void *',
  sbp: 'void *',
  timeout: 'uint',
  flags: 'uint',
  pack_id: 'int',
  usr_ptr: 'void *',
  status: 'uchar',
  masked_status: 'uchar',
  msg_status: 'uchar',
  sb_len_wr: 'uchar',
  host_status: 'ushort',
  driver_status: 'ushort',
  resid: 'int',
  duration: 'uint',
  info: 'uint',
});
export const SG_IO_HDR_SIZE = koffi.sizeof(SgIoHdr);
if (SG_IO_HDR_SIZE !== 88) throw new Error(`Cannot use SG_IO: struct sg_io_hdr is ${SG_IO_HDR_SIZE} bytes here, expected 88 (LP64 Linux)`);
const off = (field: string): number => koffi.offsetof(SgIoHdr, field);
const O = {
  interface_id: off('interface_id'),
  dxfer_direction: off('dxfer_direction'),
  cmd_len: off('cmd_len'),
  mx_sb_len: off('mx_sb_len'),
  dxfer_len: off('dxfer_len'),
  dxferp: off('dxferp'),
  cmdp: off('cmdp'),
  sbp: off('sbp'),
  timeout: off('timeout'),
  status: off('status'),
  sb_len_wr: off('sb_len_wr'),
  host_status: off('host_status'),
  driver_status: off('driver_status'),
  resid: off('resid'),
  duration: off('duration'),
};

/** ioctl(fd, request, arg) on a pool thread; the callback gets the return value and errno. */
export type AsyncIoctl = (fd: number, request: number, arg: bigint, done: (ret: number, errno: number, failure?: unknown) => void) => void;

let libcIoctl: { async: (...args: unknown[]) => void } | null = null;

/**
 * libc's ioctl, declared with a fixed third argument: koffi cannot run variadic functions
 * asynchronously, and on the LP64 Linux ABIs a pointer passed as a fixed or a variadic argument
 * travels the same way. koffi (>= 3.2) reports the worker thread's errno in the callback.
 */
export const koffiIoctl: AsyncIoctl = (fd, request, arg, done) => {
  libcIoctl ??= koffi.load('libc.so.6').func('int ioctl(int fd, unsigned long request, void *arg)') as unknown as { async: (...args: unknown[]) => void };
  libcIoctl.async(fd, request, arg, (err: unknown, ret: number) => {
    if (err !== null && err !== undefined) done(-1, 0, err);
    else done(ret, ret < 0 ? koffi.errno() : 0);
  });
};

export interface SgIoCommand {
  /** 6..16 CDB bytes. */
  readonly cdb: Uint8Array;
  /** Data-out bytes (SG_DXFER_TO_DEV), or the data-in length (SG_DXFER_FROM_DEV), or neither. */
  readonly dataOut?: Uint8Array;
  readonly dataInLength?: number;
  /** sg_io_hdr.timeout in milliseconds. Default 30 s (qemu-pr-helper uses 1 ms, which the block layer rounds up). */
  readonly timeoutMs?: number;
}

export interface SgIoRun extends SgIoResult {
  readonly completion: SgIoCompletion;
  /** sg_io_hdr.duration: milliseconds the kernel reports the command took. */
  readonly durationMs: number;
}

export const DEFAULT_SG_IO_TIMEOUT_MS = 30_000;
const MAX_TRANSFER = 1 << 20;
/** Spare bytes after the data-in buffer (see sgIo). */
const DATA_SLACK = 64;

/**
 * Issue one SCSI command with SG_IO on `fd` without blocking the event loop. Never rejects for a
 * SCSI or transport outcome (those are values); rejects only for a bad argument.
 */
export function sgIo(fd: number, cmd: SgIoCommand, ioctl: AsyncIoctl = koffiIoctl): Promise<SgIoRun> {
  const cdbLen = cmd.cdb.length;
  if (cdbLen < 6 || cdbLen > 16) return Promise.reject(new RangeError(`Cannot issue SG_IO: CDB length ${cdbLen} is not 6..16`));
  if (cmd.dataOut !== undefined && cmd.dataInLength !== undefined) {
    return Promise.reject(new RangeError('Cannot issue SG_IO: a command has data-out or data-in, not both'));
  }
  const dataLen = cmd.dataOut?.length ?? cmd.dataInLength ?? 0;
  if (!Number.isInteger(dataLen) || dataLen < 0 || dataLen > MAX_TRANSFER) {
    return Promise.reject(new RangeError(`Cannot issue SG_IO: transfer length ${dataLen} is not 0..${MAX_TRANSFER}`));
  }
  const timeoutMs = cmd.timeoutMs ?? DEFAULT_SG_IO_TIMEOUT_MS;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 0xffff_ffff) {
    return Promise.reject(new RangeError(`Cannot issue SG_IO: timeout ${timeoutMs} ms is not a positive 32-bit integer`));
  }
  const direction = cmd.dataOut !== undefined && dataLen > 0 ? SgDxfer.TO_DEV : cmd.dataInLength !== undefined && dataLen > 0 ? SgDxfer.FROM_DEV : SgDxfer.NONE;

  // One native block holds the header, CDB, sense and data: it must not move or be collected
  // while the pool thread uses it, and it is freed once the ioctl has returned.
  const cdbOff = SG_IO_HDR_SIZE;
  const senseOff = cdbOff + 16;
  const dataOff = senseOff + SENSE_MAX;
  // Room past dxfer_len: the LIO target writes up to 32 bytes beyond the allocation length of a
  // short READ FULL STATUS (seen in the lab), and when the kernel maps this buffer directly those
  // bytes would land in whatever follows it.
  const size = dataOff + Math.max(dataLen, 1) + DATA_SLACK;
  const base = koffi.alloc('uint8_t', size) as unknown as bigint;
  const mem = new Uint8Array(koffi.view(base, size));
  const v = new DataView(mem.buffer);
  mem.fill(0);
  v.setInt32(O.interface_id, SG_INTERFACE_ID, true);
  v.setInt32(O.dxfer_direction, direction, true);
  v.setUint8(O.cmd_len, cdbLen);
  v.setUint8(O.mx_sb_len, SENSE_MAX);
  v.setUint32(O.dxfer_len, direction === SgDxfer.NONE ? 0 : dataLen, true);
  v.setBigUint64(O.dxferp, direction === SgDxfer.NONE ? 0n : base + BigInt(dataOff), true);
  v.setBigUint64(O.cmdp, base + BigInt(cdbOff), true);
  v.setBigUint64(O.sbp, base + BigInt(senseOff), true);
  v.setUint32(O.timeout, timeoutMs, true);
  mem.set(cmd.cdb, cdbOff);
  if (direction === SgDxfer.TO_DEV) mem.set(cmd.dataOut!, dataOff);

  return new Promise<SgIoRun>((resolve, reject) => {
    try {
      ioctl(fd, SG_IO, base, (ret, errno, failure) => {
        try {
          if (failure !== undefined) throw failure;
          const sbLen = Math.min(v.getUint8(O.sb_len_wr), SENSE_MAX);
          const completion: SgIoCompletion = {
            errno: ret < 0 ? errno || 5 : 0,
            status: ret < 0 ? 0 : v.getUint8(O.status),
            hostStatus: ret < 0 ? 0 : v.getUint16(O.host_status, true),
            driverStatus: ret < 0 ? 0 : v.getUint16(O.driver_status, true),
            sense: ret < 0 ? new Uint8Array(0) : mem.slice(senseOff, senseOff + sbLen),
            resid: ret < 0 ? 0 : v.getInt32(O.resid, true),
            data: direction === SgDxfer.FROM_DEV ? mem.slice(dataOff, dataOff + dataLen) : null,
          };
          const durationMs = ret < 0 ? 0 : v.getUint32(O.duration, true);
          resolve({ ...sgIoResult(completion), completion, durationMs });
        } catch (e) {
          reject(e);
        } finally {
          koffi.free(base as never);
        }
      });
    } catch (e) {
      koffi.free(base as never);
      reject(e);
    }
  });
}

/** libuv's bounds for UV_THREADPOOL_SIZE. */
const UV_THREADPOOL_MAX = 1024;

/**
 * Size the libuv thread pool that runs SG_IO: sets UV_THREADPOOL_SIZE in `env` (pass
 * process.env) unless the operator already set it. It only works if called before anything uses
 * the pool (async fs, dns.lookup, crypto, zlib, koffi `.async`): libuv reads the variable once,
 * at the pool's first use. Call it at the top of the entry point. Returns the size in effect
 * after the call (the operator's value wins).
 */
export function sizeUvThreadpool(n: number, env: Record<string, string | undefined>): number {
  if (!Number.isInteger(n) || n < 1 || n > UV_THREADPOOL_MAX) {
    throw new RangeError(`Cannot size the libuv thread pool to ${n}: it must be an integer in 1..${UV_THREADPOOL_MAX}`);
  }
  const current = env['UV_THREADPOOL_SIZE'];
  if (current !== undefined && current !== '') {
    const parsed = Number.parseInt(current, 10);
    if (Number.isInteger(parsed) && parsed >= 1) return Math.min(parsed, UV_THREADPOOL_MAX);
  }
  env['UV_THREADPOOL_SIZE'] = String(n);
  return n;
}
