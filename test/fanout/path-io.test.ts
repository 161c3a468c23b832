// Path I/O (KernelPathIo on stand-in files and /dev/null, SanPathIo on a simulated SAN) and map
// control (the dm_ioctl layout and KernelMapControl through an ioctl seam; SanMapControl on the
// simulated SAN). Real dm suspend/resume needs the lab (test/lab/map-control.test.ts).

import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { ErrorCode, isPrmuxError } from '../../src/errors.js';
import { KernelPathIo, SanPathIo } from '../../src/fanout/path-io.js';
import {
  DM_DEV_SUSPEND,
  DM_IOCTL_SIZE,
  DmFlag,
  KernelMapControl,
  SanMapControl,
  decodeDmIoctl,
  encodeDmSuspend,
} from '../../src/fanout/map-control.js';
import type { MapInfo, PathInfo } from '../../src/fanout/types.js';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { HostStatus } from '../../src/scsi/constants.js';
import { LinuxErrno } from '../../src/scsi/sgio-result.js';
import { encodePrOutParams } from '../../src/scsi/prout-params.js';
import { decodeReadFullStatus } from '../../src/scsi/prin-data.js';
import { formatTransportId } from '../../src/scsi/transport-id.js';
import type { AsyncIoctl } from '../../src/sgio/sg-io.js';
import type { SetTimer } from '../../src/socket/pr-helper-session.js';
import { startSan, removeDir, type SanProcess } from '../support/san-process.js';

const READ_KEYS = encodePrInCdb({ serviceAction: 0, allocationLength: 8192 });
const READ_FULL_STATUS = encodePrInCdb({ serviceAction: 3, allocationLength: 8192 });
const REGISTER = encodePrOutCdb({ serviceAction: 0, parameterListLength: 24 });
const registerParams = (key: bigint) => encodePrOutParams({ key: 0n, serviceActionKey: key, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });

function pathInfo(dev: string, devT: string): PathInfo {
  return { dev, devT, hcil: { host: 0, channel: 0, target: 1, lun: 0 }, dmState: 'active', checkerState: 'ready', usable: true };
}
function mapOf(paths: [string, string][]): MapInfo {
  return { name: 'mpatha', wwid: '360014056001405c0ffee000000000000', devT: '253:0', paths: paths.map(([d, t]) => pathInfo(d, t)), source: 'multipathd' };
}
const openFdCount = (): number => readdirSync('/proc/self/fd').length;

// --- KernelPathIo ----------------------------------------------------------------------------------

describe('KernelPathIo', () => {
  const devRoot = mkdtempSync(join(tmpdir(), 'prmux-dev-'));
  after(() => rmSync(devRoot, { recursive: true, force: true }));
  for (const d of ['sda', 'sdb', 'sdc']) writeFileSync(join(devRoot, d), '');

  test('SG_IO on a stand-in file is ENOTTY as a value; one fd per path, kept across commands and shared by concurrent ones', async () => {
    const io = new KernelPathIo({ devRoot });
    const map = mapOf([['sda', '8:0'], ['sdb', '8:16']]);
    const base = openFdCount();
    try {
      const first = await io.exec(map, 'sda', READ_KEYS, null, 8192, 1000);
      assert.equal(first.kind, 'transport-failure');
      assert.equal(first.kind === 'transport-failure' && first.errno, LinuxErrno.ENOTTY);
      const fd = io.openPaths().find((p) => p.dev === 'sda')!.fd;
      assert.equal(openFdCount(), base + 1);
      // PR OUT (data-out) goes down the same fd.
      const second = await io.exec(map, 'sda', REGISTER, registerParams(5n), 0, 1000);
      assert.equal(second.kind === 'transport-failure' && second.errno, LinuxErrno.ENOTTY);
      assert.deepEqual(io.openPaths(), [{ dev: 'sda', fd, devT: '8:0', inFlight: 0 }]);
      assert.equal(openFdCount(), base + 1);
      // Five commands at once on a path not yet open: one open.
      const outs = await Promise.all(Array.from({ length: 5 }, () => io.exec(map, 'sdb', READ_KEYS, null, 8192, 1000)));
      assert.ok(outs.every((o) => o.kind === 'transport-failure'));
      assert.equal(io.openPaths().length, 2);
      assert.equal(openFdCount(), base + 2);
      // The fd is opened read-write (PR OUT needs it).
      const flags = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s+(\d+)/)![1]!;
      assert.equal(parseInt(flags, 8) & 3, 2);
    } finally {
      await io.close();
    }
    assert.equal(openFdCount(), base);
  });

  test('reopened when the path dev_t changes; closed by retain() and close()', async () => {
    const io = new KernelPathIo({ devRoot });
    const base = openFdCount();
    try {
      await io.exec(mapOf([['sda', '8:0'], ['sdb', '8:16']]), 'sda', READ_KEYS, null, 8192, 1000);
      await io.exec(mapOf([['sda', '8:0'], ['sdb', '8:16']]), 'sdb', READ_KEYS, null, 8192, 1000);
      assert.equal(openFdCount(), base + 2);
      // sda is now another device: a new node under the same name, and a new dev_t in the topology.
      unlinkSync(join(devRoot, 'sda'));
      writeFileSync(join(devRoot, 'sda'), 'new');
      const newIno = statSync(join(devRoot, 'sda')).ino;
      // Same dev_t: the kept fd (still on the old inode) is used.
      await io.exec(mapOf([['sda', '8:0'], ['sdb', '8:16']]), 'sda', READ_KEYS, null, 8192, 1000);
      assert.notEqual(fstatSync(io.openPaths().find((p) => p.dev === 'sda')!.fd).ino, newIno);
      await io.exec(mapOf([['sda', '8:64'], ['sdb', '8:16']]), 'sda', READ_KEYS, null, 8192, 1000);
      const sda = io.openPaths().find((p) => p.dev === 'sda')!;
      assert.equal(sda.devT, '8:64');
      assert.equal(fstatSync(sda.fd).ino, newIno);
      await eventuallyFds(base + 2);
      // retain(): sdb left the topology, sda changed dev_t again: both closed.
      io.retain([mapOf([['sda', '8:80']])]);
      assert.deepEqual(io.openPaths(), []);
      await eventuallyFds(base);
      await io.exec(mapOf([['sda', '8:80']]), 'sda', READ_KEYS, null, 8192, 1000);
      io.retain([mapOf([['sda', '8:80']])]);
      assert.equal(io.openPaths().length, 1);
      assert.equal(openFdCount(), base + 1);
    } finally {
      await io.close();
    }
    assert.equal(openFdCount(), base);
    await assert.rejects(io.exec(mapOf([['sda', '']]), 'sda', READ_KEYS, null, 8192, 1000), (e: unknown) => isPrmuxError(e, ErrorCode.CLOSED));
  });

  test('the device behind the fd is gone (ENODEV): one retry on a fresh open of the new device', async () => {
    const calls: number[] = [];
    const ioctl: AsyncIoctl = (fd, _req, _arg, done) => {
      calls.push(fd);
      const first = calls.length === 1;
      // The disk is deleted and a new one appears under the same name.
      if (first) {
        unlinkSync(join(devRoot, 'sdc'));
        writeFileSync(join(devRoot, 'sdc'), 'replacement');
      }
      setImmediate(() => (first ? done(-1, LinuxErrno.ENODEV) : done(0, 0)));
    };
    const io = new KernelPathIo({ devRoot, ioctl });
    try {
      const o = await io.exec(mapOf([['sdc', '8:32']]), 'sdc', READ_KEYS, null, 16, 1000);
      assert.equal(o.kind, 'good');
      assert.equal(calls.length, 2);
      const now = io.openPaths();
      assert.equal(now.length, 1);
      assert.equal(fstatSync(now[0]!.fd).ino, statSync(join(devRoot, 'sdc')).ino);
    } finally {
      await io.close();
    }
  });

  test('the device behind the fd is gone for good: the reopen fails and the first answer stands', async () => {
    writeFileSync(join(devRoot, 'sdd'), '');
    const calls: number[] = [];
    const ioctl: AsyncIoctl = (fd, _req, _arg, done) => {
      calls.push(fd);
      rmSync(join(devRoot, 'sdd'), { force: true });
      setImmediate(() => done(-1, LinuxErrno.ENODEV));
    };
    const io = new KernelPathIo({ devRoot, ioctl });
    const base = openFdCount();
    try {
      const o = await io.exec(mapOf([['sdd', '8:48']]), 'sdd', READ_KEYS, null, 16, 1000);
      assert.equal(o.kind === 'transport-failure' && o.errno, LinuxErrno.ENODEV);
      assert.equal(calls.length, 1, 'nothing is retried without a device');
      assert.deepEqual(io.openPaths(), []);
      await eventuallyFds(base);
    } finally {
      await io.close();
    }
  });

  test('a device node whose number is not the topology\'s is refused; bad names and missing nodes reject', async () => {
    const io = new KernelPathIo({ devRoot: '/dev' });
    try {
      // /dev/null is char 1:3: right number, SG_IO answered ENOTTY by the kernel.
      const ok = await io.exec(mapOf([['null', '1:3']]), 'null', READ_KEYS, null, 8192, 1000);
      assert.equal(ok.kind === 'transport-failure' && ok.errno, LinuxErrno.ENOTTY);
      assert.equal(io.openPaths()[0]!.devT, '1:3');
      await assert.rejects(io.exec(mapOf([['null', '8:0']]), 'null', READ_KEYS, null, 8192, 1000), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE) && /it is 1:3/.test((e as Error).message));
      await assert.rejects(io.exec(mapOf([]), '../etc/passwd', READ_KEYS, null, 8192, 1000), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
      await assert.rejects(io.exec(mapOf([]), 'prmux-no-such-disk', READ_KEYS, null, 8192, 1000), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
    } finally {
      await io.close();
    }
  });
});

async function eventuallyFds(n: number): Promise<void> {
  // Closing a FileHandle completes on the libuv pool.
  for (let i = 0; i < 200 && openFdCount() !== n; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(openFdCount(), n);
}

// --- dm_ioctl and KernelMapControl -------------------------------------------------------------------

describe('KernelMapControl', () => {
  test('struct dm_ioctl for DM_DEV_SUSPEND: version 4, sizes, flags, name', () => {
    assert.equal(DM_DEV_SUSPEND, 0xc138fd06);
    const s = encodeDmSuspend('mpatha', true);
    assert.equal(s.length, DM_IOCTL_SIZE);
    const v = new DataView(s.buffer);
    assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true), v.getUint32(8, true)], [4, 0, 0]);
    assert.equal(v.getUint32(12, true), 312);
    assert.equal(v.getUint32(16, true), 312);
    assert.equal(v.getUint32(28, true), DmFlag.SUSPEND | DmFlag.NOFLUSH | DmFlag.SKIP_LOCKFS);
    assert.equal(v.getUint32(28, true), 0xc02);
    assert.equal(new TextDecoder().decode(s.subarray(48, 54)), 'mpatha');
    assert.ok(s.subarray(54).every((b) => b === 0), 'name NUL-terminated, uuid empty');
    assert.equal(new DataView(encodeDmSuspend('mpatha', false).buffer).getUint32(28, true), 0xc00);
    for (const bad of ['', 'a/b', 'x'.repeat(128)]) assert.throws(() => encodeDmSuspend(bad, true), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
    // The kernel's answer: huge_encode_dev(253:300) and the flags.
    const reply = encodeDmSuspend('mpatha', true);
    new DataView(reply.buffer).setBigUint64(40, BigInt((300 & 0xff) | (253 << 8) | ((300 & ~0xff) << 12)), true);
    new DataView(reply.buffer).setInt32(24, 2, true);
    const d = decodeDmIoctl(reply);
    assert.deepEqual([d.devT, d.name, d.openCount, d.flags & DmFlag.SUSPEND], ['253:300', 'mpatha', 2, DmFlag.SUSPEND]);
  });

  test('suspend and resume through the ioctl seam; errors and a state the kernel did not reach are DEVICE errors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prmux-dmctl-'));
    const control = join(dir, 'control');
    writeFileSync(control, '');
    const seen: { fd: number; request: number; flags: number; name: string }[] = [];
    let suspended = false;
    let fail = 0;
    let lie = false;
    const ioctl: AsyncIoctl = (fd, request, arg, done) => {
      const mem = new Uint8Array(koffi.view(arg, DM_IOCTL_SIZE));
      const d = decodeDmIoctl(mem);
      seen.push({ fd, request, flags: d.flags, name: d.name });
      if (fail !== 0) return setImmediate(() => done(-1, fail));
      // The kernel's side: suspend or resume, then report the status into the same struct.
      if (!lie) suspended = (d.flags & DmFlag.SUSPEND) !== 0;
      const v = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
      v.setUint32(28, suspended ? DmFlag.SUSPEND : 0, true);
      v.setBigUint64(40, BigInt(253 << 8), true);
      setImmediate(() => done(0, 0));
    };
    const mc = new KernelMapControl({ controlPath: control, ioctl });
    const map = mapOf([]);
    try {
      await mc.suspend(map);
      assert.equal(suspended, true);
      await mc.resume(map);
      assert.equal(suspended, false);
      assert.deepEqual(seen.map((s) => [s.request, s.flags, s.name]), [[DM_DEV_SUSPEND, 0xc02, 'mpatha'], [DM_DEV_SUSPEND, 0xc00, 'mpatha']]);
      assert.equal(seen[0]!.fd, seen[1]!.fd, 'the control node is opened once');
      fail = 6;
      await assert.rejects(mc.suspend(map), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE) && /ENXIO \(no such dm device\)/.test((e as Error).message));
      fail = 0;
      lie = true;
      await assert.rejects(mc.suspend(map), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE) && /not suspended afterwards/.test((e as Error).message));
    } finally {
      await mc.close();
    }
    await assert.rejects(mc.resume(map), (e: unknown) => isPrmuxError(e, ErrorCode.CLOSED));
    // The real ioctl on a file that is not the dm control node: the kernel says ENOTTY.
    const real = new KernelMapControl({ controlPath: control });
    await assert.rejects(real.suspend(map), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE) && /ENOTTY/.test((e as Error).message));
    await real.close();
    const missing = new KernelMapControl({ controlPath: join(dir, 'nope') });
    await assert.rejects(missing.suspend(map), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE) && /ENOENT/.test((e as Error).message));
    await missing.close();
    rmSync(dir, { recursive: true, force: true });
  });
});

// --- the simulated SAN -------------------------------------------------------------------------------

describe('on the simulated SAN', () => {
  let san: SanProcess | undefined;
  after(async () => {
    await san?.stop();
    if (san) removeDir(san.dir);
  });

  test('SanPathIo: a REGISTER on sda is sda\'s I_T nexus in READ FULL STATUS; faults are outcome values; a stuck SAN times out', async () => {
    san = await startSan(['--checker-interval', '200']);
    const topo = JSON.parse(readFileSync(join(san.dir, 'host1', 'topology.json'), 'utf8')) as { paths: { dev: string; transportId: string; relativeTargetPortId: number }[] };
    const timers: { ms: number; fn: () => void }[] = [];
    const real: SetTimer = (ms, fn) => {
      const t = setTimeout(fn, ms);
      return () => clearTimeout(t);
    };
    // Real timers, except that the bound of a command with a 60 s timeout is fired by hand.
    const setTimer: SetTimer = (ms, fn) => {
      if (ms < 60_000) return real(ms, fn);
      const t = { ms, fn };
      timers.push(t);
      return () => timers.splice(timers.indexOf(t), 1);
    };
    const io = new SanPathIo({ socketPath: join(san.dir, 'host1', 'san.sock'), setTimer, answerMarginMs: 1000 });
    const map = mapOf([['sda', '8:0'], ['sdb', '8:16'], ['sdc', '8:32']]);
    try {
      assert.equal((await io.exec(map, 'sda', REGISTER, registerParams(0xabcdn), 0, 5000)).kind, 'good');
      const full = await io.exec(map, 'sdb', READ_FULL_STATUS, null, 8192, 5000);
      assert.equal(full.kind, 'good');
      const d = decodeReadFullStatus(full.kind === 'good' ? full.data : new Uint8Array()).descriptors;
      const sda = topo.paths.find((p) => p.dev === 'sda')!;
      assert.deepEqual(d.map((x) => [x.key, formatTransportId(x.transportId), x.relativeTargetPortId]), [[0xabcdn, sda.transportId, sda.relativeTargetPortId]]);
      assert.equal(sda.transportId, 'sas:0x5001405f00000001');
      // The data is cut to the allocation length the caller gives.
      const short = await io.exec(map, 'sdb', READ_FULL_STATUS, null, 8, 5000);
      assert.equal(short.kind === 'good' && short.data.length, 8);

      await san.ctl('path', 'down', 'host1', 'sdb');
      const down = await io.exec(map, 'sdb', READ_KEYS, null, 8192, 5000);
      assert.equal(down.kind === 'transport-failure' && down.hostStatus, HostStatus.DID_TRANSPORT_DISRUPTED);
      await san.ctl('path', 'up', 'host1', 'sdb');

      // A hung path holds its own connection only: sda still answers meanwhile.
      await san.ctl('path', 'hang', 'host1', 'sdc');
      let hungDone = false;
      const hung = io.exec(map, 'sdc', READ_KEYS, null, 8192, 60_000).finally(() => (hungDone = true));
      assert.equal((await io.exec(map, 'sda', READ_KEYS, null, 8192, 5000)).kind, 'good');
      assert.equal(hungDone, false);
      assert.equal(timers.length, 1);
      assert.equal(timers[0]!.ms, 61_000);
      timers[0]!.fn();
      const timedOut = await hung;
      assert.equal(timedOut.kind === 'transport-failure' && timedOut.hostStatus, HostStatus.DID_TIME_OUT);
      await san.ctl('path', 'unhang', 'host1', 'sdc');
      assert.equal((await io.exec(map, 'sda', READ_KEYS, null, 8192, 5000)).kind, 'good');

      await assert.rejects(io.exec(map, 'sdz', READ_KEYS, null, 8192, 5000), (e: unknown) => isPrmuxError(e, ErrorCode.SAN));
      await assert.rejects(io.exec(map, 'mapper/mpatha', READ_KEYS, null, 8192, 5000), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
      await assert.rejects(io.exec(map, 'sda', READ_KEYS, null, 8192, 0), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
    } finally {
      io.close();
    }
    await assert.rejects(io.exec(map, 'sda', READ_KEYS, null, 8192, 5000), (e: unknown) => isPrmuxError(e, ErrorCode.CLOSED));
  });

  test('SanMapControl: map suspend/resume on the control socket', async () => {
    assert.ok(san, 'the SAN of the previous test');
    const mc = new SanMapControl({ ctlSocketPath: join(san.dir, 'ctl.sock'), host: 'host1' });
    const suspendedOf = async (name: string): Promise<boolean> => {
      const st = (await san!.ctl('status', '--json')) as { hosts: { name: string; maps: { name: string; suspended: boolean }[] }[] };
      return st.hosts.find((h) => h.name === 'host1')!.maps.find((m) => m.name === name)!.suspended;
    };
    try {
      const map = mapOf([]);
      await mc.suspend(map);
      assert.equal(await suspendedOf('mpatha'), true);
      assert.equal(await suspendedOf('mpathb'), false);
      await mc.resume(map);
      assert.equal(await suspendedOf('mpatha'), false);
      await assert.rejects(mc.suspend({ ...map, name: 'mpathz' }), (e: unknown) => isPrmuxError(e, ErrorCode.SAN) && /no map mpathz/.test((e as Error).message));
    } finally {
      mc.close();
    }
  });
});
