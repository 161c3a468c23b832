// What a received device fd is: file type, device number, inode, and the access mode it was
// opened with. The decoders are pure; inspectFd() calls fstat(2) and fcntl(F_GETFL) (one syscall
// each: this runs for every command).

import { fstatSync } from 'node:fs';
import { fdStatusFlags } from '../socket/unix-fd.js';

export type FdFileType = 'block' | 'char' | 'file' | 'socket' | 'fifo' | 'directory' | 'symlink' | 'other';
export type AccessMode = 'read-only' | 'write-only' | 'read-write';

export interface FdInfo {
  readonly fd: number;
  readonly type: FdFileType;
  /** For block and character devices: the device number it names. */
  readonly major: number;
  readonly minor: number;
  /** The filesystem device and inode of the file itself (used to recognise simulated-SAN stand-ins). */
  readonly dev: bigint;
  readonly ino: bigint;
  readonly accessMode: AccessMode;
}

const S_IFMT = 0o170000n;
const TYPES: ReadonlyMap<bigint, FdFileType> = new Map([
  [0o060000n, 'block'],
  [0o020000n, 'char'],
  [0o100000n, 'file'],
  [0o140000n, 'socket'],
  [0o010000n, 'fifo'],
  [0o040000n, 'directory'],
  [0o120000n, 'symlink'],
]);

export function fileTypeOfMode(mode: bigint): FdFileType {
  return TYPES.get(mode & S_IFMT) ?? 'other';
}

/** Linux's dev_t encoding (include/linux/kdev_t.h new_decode_dev, glibc gnu_dev_major/minor). */
export function splitDevT(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

/** The access mode in open(2) flags (O_ACCMODE). */
export function accessModeOfFlags(flags: number): AccessMode {
  switch (flags & 3) {
    case 0:
      return 'read-only';
    case 1:
      return 'write-only';
    default:
      return 'read-write';
  }
}

export function inspectFd(fd: number): FdInfo {
  const st = fstatSync(fd, { bigint: true });
  const type = fileTypeOfMode(st.mode);
  const { major, minor } = type === 'block' || type === 'char' ? splitDevT(st.rdev) : { major: 0, minor: 0 };
  const accessMode = accessModeOfFlags(fdStatusFlags(fd));
  return { fd, type, major, minor, dev: st.dev, ino: st.ino, accessMode };
}
