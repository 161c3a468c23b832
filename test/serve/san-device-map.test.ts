// `serve --san`: the SAN's outcome JSON read back into outcome values, and SanDeviceMap recognising
// a host's stand-in files (by filesystem device and inode, against a hand-written topology.json).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, PrmuxError } from '../../src/errors.js';
import { fromHex } from '../../src/scsi/bytes.js';
import { buildSense } from '../../src/scsi/sense.js';
import type { ScsiOutcome } from '../../src/scsi/types.js';
import { outcomeFromJson, outcomeToJson } from '../../src/san/outcome-json.js';
import { type FdInfo, inspectFd } from '../../src/serve/fd-info.js';
import { SanDeviceMap } from '../../src/serve/san-backend.js';

const root = mkdtempSync(join(tmpdir(), 'prmux-san-map-'));
after(() => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// outcomeFromJson

test('outcomeFromJson: every kind the SAN sends', () => {
  assert.deepEqual(outcomeFromJson({ kind: 'good', data: '0000000100000008' }), { kind: 'good', data: Uint8Array.from([0, 0, 0, 1, 0, 0, 0, 8]) });
  assert.deepEqual(outcomeFromJson({ kind: 'good', data: '' }), { kind: 'good', data: new Uint8Array(0) });
  assert.deepEqual(outcomeFromJson({ kind: 'good' }), { kind: 'good', data: new Uint8Array(0) });
  assert.deepEqual(outcomeFromJson({ kind: 'check-condition', sense: '700005000000000a0000000024000000' }), {
    kind: 'check-condition',
    sense: fromHex('700005000000000a0000000024000000'),
  });
  assert.deepEqual(outcomeFromJson({ kind: 'reservation-conflict' }), { kind: 'reservation-conflict' });
  assert.deepEqual(outcomeFromJson({ kind: 'busy' }), { kind: 'busy' });
  assert.deepEqual(outcomeFromJson({ kind: 'task-set-full' }), { kind: 'task-set-full' });
  assert.deepEqual(outcomeFromJson({ kind: 'transport-failure', hostStatus: 1, driverStatus: 0, errno: 0, detail: 'path down' }), {
    kind: 'transport-failure',
    hostStatus: 1,
    driverStatus: 0,
    errno: 0,
    detail: 'path down',
  });
  // Missing numeric fields read as 0 (no status), a missing detail as ''.
  assert.deepEqual(outcomeFromJson({ kind: 'transport-failure', errno: 5 }), { kind: 'transport-failure', hostStatus: 0, driverStatus: 0, errno: 5, detail: '' });
});

test('outcomeFromJson reads back exactly what the SAN server writes (outcomeToJson), for every kind', () => {
  const outcomes: ScsiOutcome[] = [
    { kind: 'good', data: Uint8Array.from([0xde, 0xad, 0xbe, 0xef]) },
    { kind: 'good', data: new Uint8Array(0) },
    { kind: 'check-condition', sense: buildSense({ key: 0x6, asc: 0x2a, ascq: 0x03 }, 'fixed') },
    { kind: 'check-condition', sense: buildSense({ key: 0x5, asc: 0x26, ascq: 0x00 }, 'descriptor') },
    { kind: 'reservation-conflict' },
    { kind: 'busy' },
    { kind: 'task-set-full' },
    { kind: 'transport-failure', hostStatus: 0x0e, driverStatus: 0x06, errno: 0, detail: 'SG_IO transport error: DID_TRANSPORT_DISRUPTED' },
    { kind: 'transport-failure', hostStatus: 0, driverStatus: 0, errno: 19, detail: 'SG_IO failed: ENODEV' },
  ];
  for (const o of outcomes) {
    // Through JSON text, as over san.sock.
    const wire = JSON.parse(JSON.stringify(outcomeToJson(o))) as unknown;
    assert.deepEqual(outcomeFromJson(wire), o, o.kind);
  }
});

test('outcomeFromJson: an unknown or missing kind is a SAN error naming it', () => {
  for (const bad of [{ kind: 'good-ish' }, { kind: 'GOOD' }, {}, null, undefined, 'good', 42, ['good']]) {
    assert.throws(
      () => outcomeFromJson(bad),
      (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.SAN && e.message.startsWith('Cannot read SAN outcome'),
      JSON.stringify(bad) ?? 'undefined',
    );
  }
  assert.throws(() => outcomeFromJson({ kind: 'weird' }), /"weird"/);
});

test('outcomeFromJson: bad hex in data or sense is a decode error, not garbage bytes', () => {
  assert.throws(() => outcomeFromJson({ kind: 'good', data: 'zz' }), (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.DECODE);
  assert.throws(() => outcomeFromJson({ kind: 'check-condition', sense: '700' }), (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.DECODE);
});

// ---------------------------------------------------------------------------------------------
// SanDeviceMap

const WWID_A = '36001405aaaaaaaaaaaaaaaaaaaaaaaaa';
const WWID_B = '36001405bbbbbbbbbbbbbbbbbbbbbbbbb';

interface Host {
  readonly dir: string;
  readonly files: Record<'sda' | 'sdb' | 'sdc' | 'mpatha' | 'other', string>;
}

function makeHost(name: string): Host {
  const dir = join(root, name);
  mkdirSync(join(dir, 'dev', 'mapper'), { recursive: true });
  const files = {
    sda: join(dir, 'dev', 'sda'),
    sdb: join(dir, 'dev', 'sdb'),
    sdc: join(dir, 'dev', 'sdc'),
    mpatha: join(dir, 'dev', 'mapper', 'mpatha'),
    other: join(dir, 'dev', 'other'),
  };
  for (const f of Object.values(files)) writeFileSync(f, '');
  return { dir, files };
}

function ino(path: string): number {
  return statSync(path).ino;
}

/** topology.json as the SAN writes it (only the fields SanDeviceMap reads, plus a few it ignores). */
function writeTopology(h: Host, host: string, removed: { sdb?: boolean } = {}, mtime?: number): void {
  const doc = {
    host,
    maps: [{ name: 'mpatha', wwid: WWID_A, file: h.files.mpatha, inode: ino(h.files.mpatha), paths: removed.sdb === true ? ['sda'] : ['sda', 'sdb'] }],
    paths: [
      { dev: 'sda', file: h.files.sda, inode: ino(h.files.sda), wwid: WWID_A, map: 'mpatha', removed: false },
      { dev: 'sdb', file: h.files.sdb, inode: ino(h.files.sdb), wwid: WWID_A, map: 'mpatha', removed: removed.sdb === true },
      { dev: 'sdc', file: h.files.sdc, inode: ino(h.files.sdc), wwid: WWID_B, map: 'mpathb', removed: true },
    ],
  };
  // As the SAN does (writeFileAtomicSync): a new file renamed over the old one.
  const tmp = join(h.dir, '.topology.json.tmp');
  writeFileSync(tmp, JSON.stringify(doc, null, 2) + '\n');
  if (mtime !== undefined) utimesSync(tmp, mtime, mtime);
  renameSync(tmp, join(h.dir, 'topology.json'));
}

/** inspectFd on a real fd of `path`. */
function infoOf(path: string, flags = 'r+'): FdInfo {
  const fd = openSync(path, flags);
  try {
    return inspectFd(fd);
  } finally {
    closeSync(fd);
  }
}

test('SanDeviceMap recognises path and map stand-ins by inode; removed paths and other files are not SAN devices', () => {
  const h = makeHost('host1');
  writeTopology(h, 'host1');
  const map = new SanDeviceMap(h.dir, 'host1');
  assert.deepEqual(map.lookup(infoOf(h.files.sda)), { kind: 'san-path', host: 'host1', dev: 'sda', wwid: WWID_A });
  assert.deepEqual(map.lookup(infoOf(h.files.sdb, 'r')), { kind: 'san-path', host: 'host1', dev: 'sdb', wwid: WWID_A });
  assert.deepEqual(map.lookup(infoOf(h.files.mpatha)), { kind: 'san-map', host: 'host1', map: 'mpatha', wwid: WWID_A, paths: ['sda', 'sdb'] });
  // sdc is listed but removed: its fd is no longer a SAN path.
  assert.equal(map.lookup(infoOf(h.files.sdc)), null);
  // A file on the same filesystem that topology.json does not list.
  assert.equal(map.lookup(infoOf(h.files.other)), null);
  assert.equal(map.lookup(infoOf(join(h.dir, 'topology.json'))), null);
});

test('SanDeviceMap: only regular files on the host directory\'s filesystem match', () => {
  const h = makeHost('host2');
  writeTopology(h, 'host2');
  const map = new SanDeviceMap(h.dir, 'host2');
  const sda = infoOf(h.files.sda);
  // The same inode number on another filesystem is another file.
  assert.equal(map.lookup({ ...sda, dev: sda.dev + 1n }), null);
  // A device or socket fd is never a stand-in, even if its inode number collides.
  assert.equal(map.lookup({ ...sda, type: 'char' }), null);
  assert.equal(map.lookup({ ...sda, type: 'socket' }), null);
  assert.equal(map.lookup({ ...sda, type: 'block', major: 8, minor: 0 }), null);
});

test('SanDeviceMap names targets after its own host, not after the directory layout', () => {
  const h = makeHost('h3dir');
  writeTopology(h, 'host3');
  const map = new SanDeviceMap(h.dir, 'host3');
  const t = map.lookup(infoOf(h.files.sda));
  assert.ok(t !== null && t.kind === 'san-path' && t.host === 'host3');
});

test('SanDeviceMap reloads topology.json when it changes (path removed, then restored)', () => {
  const h = makeHost('host4');
  const t0 = Math.floor(Date.now() / 1000) - 100;
  writeTopology(h, 'host4', {}, t0);
  const map = new SanDeviceMap(h.dir, 'host4');
  const sdb = infoOf(h.files.sdb);
  assert.deepEqual(map.lookup(sdb), { kind: 'san-path', host: 'host4', dev: 'sdb', wwid: WWID_A });

  // Explicit, distinct mtimes: the reload must not depend on the clock ticking between writes.
  writeTopology(h, 'host4', { sdb: true }, t0 + 10);
  assert.equal(map.lookup(sdb), null);
  assert.deepEqual(map.lookup(infoOf(h.files.mpatha)), { kind: 'san-map', host: 'host4', map: 'mpatha', wwid: WWID_A, paths: ['sda'] });

  writeTopology(h, 'host4', {}, t0 + 20);
  assert.deepEqual(map.lookup(sdb), { kind: 'san-path', host: 'host4', dev: 'sdb', wwid: WWID_A });
});

test('SanDeviceMap sees a rewrite that lands within the same timestamp tick (the SAN replaces topology.json by rename)', () => {
  // Kernel file timestamps are coarse (one tick, several ms), so two topology changes in quick
  // succession can leave topology.json with the same mtime. The SAN writes it atomically (temporary
  // file + rename), so the file is a new inode each time: a reload check on mtime alone misses it.
  const h = makeHost('host5');
  const t = Math.floor(Date.now() / 1000) - 50;
  writeTopology(h, 'host5', {}, t);
  const map = new SanDeviceMap(h.dir, 'host5');
  const sdb = infoOf(h.files.sdb);
  assert.notEqual(map.lookup(sdb), null);
  // Replaced by rename, with the same mtime.
  const p = join(h.dir, 'topology.json');
  const before = statSync(p).ino;
  writeTopology(h, 'host5', { sdb: true }, t);
  assert.notEqual(statSync(p).ino, before, 'test setup: topology.json is a new file');
  assert.equal(statSync(p).mtimeMs, t * 1000, 'test setup: same mtime');
  assert.equal(map.lookup(sdb), null, 'sdb was removed in the new topology.json');
});

test('SanDeviceMap without a topology.json cannot be built', () => {
  const dir = join(root, 'empty-host');
  mkdirSync(join(dir, 'dev'), { recursive: true });
  assert.throws(() => new SanDeviceMap(dir, 'empty-host'));
});
