// The pidfile libvirt and init scripts watch: written atomically (temporary file, fsync, rename),
// refused when it names another live prmux or qemu-pr-helper, removed at exit only if it still
// names this process.

import { readFileSync, unlinkSync } from 'node:fs';
import { ErrorCode, PrmuxError } from '../errors.js';
import { writeFileAtomicSync } from '../util/atomic-file.js';

/** The pid a pidfile names, or null if it is absent, empty or not a pid. */
export function readPidfile(path: string): number | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  const m = /^\s*(\d+)\s*$/.exec(text);
  return m === null ? null : Number(m[1]);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function writePidfile(path: string, pid: number): void {
  const other = readPidfile(path);
  if (other !== null && other !== pid && alive(other)) {
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot write pidfile ${path}: it names process ${other}, which is running`);
  }
  try {
    writeFileAtomicSync(path, `${pid}\n`, 0o644);
  } catch (e) {
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot write pidfile ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** Remove the pidfile if it still names `pid`. Returns why it was kept, or null once removed. */
export function removePidfile(path: string, pid: number): string | null {
  const named = readPidfile(path);
  if (named !== pid) return named === null ? 'it is gone or unreadable' : `it names process ${named}`;
  try {
    unlinkSync(path);
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}
