// What a received fd is: the dev_t split (glibc gnu_dev_major/gnu_dev_minor), the S_IFMT file type,
// the access mode (O_ACCMODE of fcntl F_GETFL), and inspectFd() on real fds of every kind serve meets.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, constants, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { type AccessMode, accessModeOfFlags, fileTypeOfMode, inspectFd, splitDevT } from '../../src/serve/fd-info.js';

const dir = mkdtempSync(join(tmpdir(), 'prmux-fd-info-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** glibc's gnu_dev_makedev (sysmacros.h), written out independently of the code under test. */
function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

// ---------------------------------------------------------------------------------------------
// splitDevT

test('splitDevT: known dev_t values', () => {
  // Literal encodings, so a wrong makedev() above cannot hide a wrong split.
  assert.deepEqual(splitDevT(0x800n), { major: 8, minor: 0 }); // sda
  assert.deepEqual(splitDevT(0x810n), { major: 8, minor: 16 }); // sdb
  assert.deepEqual(splitDevT(0x103n), { major: 1, minor: 3 }); // /dev/null
  assert.deepEqual(splitDevT(0xfd03n), { major: 253, minor: 3 }); // dm-3
  assert.deepEqual(splitDevT(0x1500n), { major: 21, minor: 0 }); // sg0
  // makedev(259, 300000): minor 0x493e0 -> low byte e0, the rest (0x493) at bits 20..43.
  assert.deepEqual(splitDevT(0x493103e0n), { major: 259, minor: 300000 });
  // The largest minor the kernel's 32-bit dev_t carries (20 bits), with the largest major (12 bits).
  assert.equal(makedev(4095, 0xfffff), 0xffffffffn);
  assert.deepEqual(splitDevT(0xffffffffn), { major: 4095, minor: 0xfffff });
  assert.deepEqual(splitDevT(0n), { major: 0, minor: 0 });
});

test('splitDevT inverts makedev over the kernel range (12-bit major, 20-bit minor)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xfff }), fc.integer({ min: 0, max: 0xfffff }), (major, minor) => {
      assert.deepEqual(splitDevT(makedev(major, minor)), { major, minor });
    }),
  );
});

test('splitDevT inverts glibc makedev over the full 32-bit major and minor (gnu_dev_minor masks to 32 bits)', () => {
  // glibc: minor = (dev & 0xff) | ((dev >> 12) & 0xffffff00). Without the 32-bit mask the major's
  // high bits (44..63) leak into the minor for any major >= 4096.
  assert.deepEqual(splitDevT(makedev(4096, 0)), { major: 4096, minor: 0 });
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }), (major, minor) => {
      assert.deepEqual(splitDevT(makedev(major, minor)), { major, minor });
    }),
  );
});

test('splitDevT agrees with ls -l on a real device node (/dev/null is 1, 3)', () => {
  const st = statSync('/dev/null', { bigint: true });
  assert.deepEqual(splitDevT(st.rdev), { major: 1, minor: 3 });
});

// ---------------------------------------------------------------------------------------------
// fileTypeOfMode

test('fileTypeOfMode: every S_IF* type, permission and set-id bits ignored', () => {
  const cases: [bigint, string][] = [
    [0o060660n, 'block'],
    [0o020666n, 'char'],
    [0o100644n, 'file'],
    [0o140777n, 'socket'],
    [0o010600n, 'fifo'],
    [0o040755n, 'directory'],
    [0o120777n, 'symlink'],
    [0o104755n, 'file'], // setuid file
    [0o041777n, 'directory'], // sticky directory
    [0o062660n, 'block'], // setgid bit on a device node
    [0o000644n, 'other'], // no type bits
    [0o070000n, 'other'], // not a defined S_IF* value
    [0o160000n, 'other'],
  ];
  for (const [mode, type] of cases) assert.equal(fileTypeOfMode(mode), type, `mode 0o${mode.toString(8)}`);
});

test('fileTypeOfMode agrees with fs.constants on real files', () => {
  assert.equal(BigInt(constants.S_IFBLK), 0o060000n);
  assert.equal(fileTypeOfMode(statSync('/dev/null', { bigint: true }).mode), 'char');
  assert.equal(fileTypeOfMode(statSync(dir, { bigint: true }).mode), 'directory');
  const f = join(dir, 'mode-file');
  writeFileSync(f, 'x');
  assert.equal(fileTypeOfMode(statSync(f, { bigint: true }).mode), 'file');
});

// accessModeOfFlags, and the access mode inspectFd reads (fcntl F_GETFL) on real fds

/** The flags the kernel shows for our fd (octal "flags:" line of /proc/self/fdinfo): an independent source. */
function kernelFlagsOf(fd: number): number {
  const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m !== null, `no flags line for fd ${fd}`);
  return Number.parseInt(m[1]!, 8);
}

test('accessModeOfFlags: O_ACCMODE decides, every other flag is ignored', () => {
  const { O_APPEND, O_NONBLOCK, O_SYNC, O_DSYNC } = constants;
  const O_LARGEFILE = 0o100000;
  for (const extra of [0, O_APPEND, O_NONBLOCK, O_SYNC, O_DSYNC, O_LARGEFILE, O_APPEND | O_NONBLOCK | O_LARGEFILE | O_SYNC]) {
    assert.equal(accessModeOfFlags(0 | extra), 'read-only', `0 | 0o${extra.toString(8)}`);
    assert.equal(accessModeOfFlags(1 | extra), 'write-only', `1 | 0o${extra.toString(8)}`);
    assert.equal(accessModeOfFlags(2 | extra), 'read-write', `2 | 0o${extra.toString(8)}`);
    // Access mode 3 (Linux's ioctl-only open) is not O_RDONLY, and qemu-pr-helper only refuses PR
    // OUT when (flags & O_ACCMODE) == O_RDONLY: it must not be reported read-only.
    assert.notEqual(accessModeOfFlags(3 | extra), 'read-only', `3 | 0o${extra.toString(8)}`);
  }
});

test('inspectFd reports the access mode of real fds opened every way (checked against /proc/self/fdinfo)', () => {
  const f = join(dir, 'access-file');
  writeFileSync(f, 'data');
  const { O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_NONBLOCK, O_SYNC, O_DSYNC, O_CREAT, O_NOATIME } = constants;
  const cases: [string | number, AccessMode][] = [
    ['r', 'read-only'],
    ['w', 'write-only'],
    ['r+', 'read-write'],
    ['a', 'write-only'], // O_WRONLY|O_CREAT|O_APPEND
    ['a+', 'read-write'], // O_RDWR|O_CREAT|O_APPEND
    ['rs+', 'read-write'], // O_RDWR|O_SYNC
    [O_RDONLY | O_NONBLOCK, 'read-only'],
    [O_RDONLY | (O_NOATIME ?? 0), 'read-only'],
    [O_WRONLY | O_APPEND | O_DSYNC, 'write-only'],
    [O_RDWR | O_SYNC | O_NONBLOCK | O_CREAT, 'read-write'],
    [O_RDWR | O_APPEND, 'read-write'],
  ];
  for (const [flags, expected] of cases) {
    const fd = openSync(f, flags);
    try {
      assert.equal(accessModeOfFlags(kernelFlagsOf(fd)), expected, `flags ${String(flags)}: kernel flags 0o${kernelFlagsOf(fd).toString(8)}`);
      assert.equal(inspectFd(fd).accessMode, expected, `flags ${String(flags)}`);
    } finally {
      closeSync(fd);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// inspectFd on real fds

test('inspectFd: a regular file, with its own dev/ino and no device number', () => {
  const f = join(dir, 'regular');
  writeFileSync(f, 'hello');
  const st = statSync(f, { bigint: true });
  for (const [flags, mode] of [
    ['r', 'read-only'],
    ['r+', 'read-write'],
    ['a', 'write-only'],
  ] as const) {
    const fd = openSync(f, flags);
    try {
      const info = inspectFd(fd);
      assert.deepEqual(info, { fd, type: 'file', major: 0, minor: 0, dev: st.dev, ino: st.ino, accessMode: mode });
    } finally {
      closeSync(fd);
    }
  }
});

test('inspectFd: /dev/null is character device 1:3, in the mode it was opened', () => {
  const ro = openSync('/dev/null', 'r');
  const rw = openSync('/dev/null', 'r+');
  try {
    const a = inspectFd(ro);
    assert.equal(a.type, 'char');
    assert.equal(a.major, 1);
    assert.equal(a.minor, 3);
    assert.equal(a.accessMode, 'read-only');
    assert.equal(a.ino, fstatSync(ro, { bigint: true }).ino);
    const b = inspectFd(rw);
    assert.deepEqual({ type: b.type, major: b.major, minor: b.minor, accessMode: b.accessMode }, { type: 'char', major: 1, minor: 3, accessMode: 'read-write' });
  } finally {
    closeSync(ro);
    closeSync(rw);
  }
});

test('inspectFd: a directory', () => {
  const fd = openSync(dir, 'r');
  try {
    const info = inspectFd(fd);
    assert.equal(info.type, 'directory');
    assert.equal(info.accessMode, 'read-only');
    assert.equal(info.ino, statSync(dir, { bigint: true }).ino);
  } finally {
    closeSync(fd);
  }
});

test('inspectFd: a pipe (fifo), opened read-write without blocking', () => {
  const fifo = join(dir, 'fifo');
  const r = spawnSync('mkfifo', [fifo]);
  assert.equal(r.status, 0, `mkfifo: ${String(r.stderr)}`);
  // Linux lets a FIFO be opened O_RDWR without waiting for a peer.
  const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  try {
    const info = inspectFd(fd);
    assert.equal(info.type, 'fifo');
    assert.equal(info.major, 0);
    assert.equal(info.minor, 0);
    assert.equal(info.accessMode, 'read-write');
  } finally {
    closeSync(fd);
  }
});

test('inspectFd: a unix socket', async () => {
  const server: Server = createServer();
  const path = join(dir, 'sock');
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(path, res);
  });
  try {
    // The listening socket's own fd (libuv exposes it on Unix as handle.fd).
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    assert.ok(Number.isInteger(fd) && fd > 2, `socket fd ${fd}`);
    const info = inspectFd(fd);
    assert.equal(info.type, 'socket');
    assert.equal(info.major, 0);
    assert.equal(info.minor, 0);
    assert.equal(info.accessMode, 'read-write');
  } finally {
    await new Promise<void>((res) => server.close(() => res()));
  }
});

test('inspectFd on an fd that is not open throws an errno error (the handler maps errno)', () => {
  assert.throws(
    () => inspectFd(1_000_000),
    (e: NodeJS.ErrnoException) => e.code === 'EBADF' && typeof e.errno === 'number' && Math.abs(e.errno) === 9,
  );
});
