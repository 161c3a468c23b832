// Integration tests of `prmux san` as a child process, driven only through its public interfaces.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { startSan, removeDir, eventually, sleep, type SanProcess } from '../support/san-process.js';
import { readSample } from '../support/paths.js';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { encodePrOutParams } from '../../src/scsi/prout-params.js';
import { decodeReadFullStatus, decodeReadKeys } from '../../src/scsi/prin-data.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import { HostStatus } from '../../src/scsi/constants.js';

const READ_KEYS = hex(encodePrInCdb({ serviceAction: 0, allocationLength: 8192 }));
const READ_FULL = hex(encodePrInCdb({ serviceAction: 3, allocationLength: 8192 }));
const regCdb = (sa: number, type = 0) => hex(encodePrOutCdb({ serviceAction: sa, type, parameterListLength: 24 }));
const params = (key: bigint, sak: bigint, aptpl = false) =>
  hex(encodePrOutParams({ key, serviceActionKey: sak, specIPt: false, allTgPt: false, aptpl, transportIds: [] }));

type Outcome = { kind: string; data?: string; sense?: string; hostStatus?: number };
async function run(san: SanProcess, host: string, dev: string, cdb: string, data = ''): Promise<Outcome> {
  const r = await san.exec(host, dev, cdb, data);
  assert.equal(r['ok'], true, String(r['error']));
  return r['outcome'] as Outcome;
}
async function keys(san: SanProcess, host: string, dev: string): Promise<bigint[]> {
  const o = await run(san, host, dev, READ_KEYS);
  assert.equal(o.kind, 'good');
  return [...decodeReadKeys(fromHex(o.data!)).keys];
}
interface StatusPath { dev: string; transport: string; relativeTargetPortId: number; multipathd: { dmState: string; checkerState: string } | null }
async function statusOf(san: SanProcess): Promise<{ luns: { registrations: { nexusId: string; key: string }[]; generation: number; aptplActive: boolean }[]; hosts: { name: string; multipathd: string; paths: StatusPath[] }[] }> {
  return (await san.ctl('status', '--json')) as never;
}

const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

test('layout, topology.json and multipathd output in the 0.9.4 formats', async () => {
  const san = await startSan([]);
  dirs.push(san.dir);
  try {
    for (const host of ['host1', 'host2']) {
      for (const f of ['multipathd.sock', 'san.sock', 'topology.json', 'dev/sda', 'dev/sdd', 'dev/mapper/mpatha', 'dev/mapper/mpathb']) {
        assert.ok(existsSync(join(san.dir, host, f)), `${host}/${f}`);
      }
    }
    const topo = JSON.parse(readFileSync(join(san.dir, 'host1', 'topology.json'), 'utf8')) as { maps: { name: string; paths: string[]; wwid: string }[]; paths: { dev: string; hcil: string; transportId: string; relativeTargetPortId: number }[] };
    assert.deepEqual(topo.maps.map((m) => [m.name, m.paths]), [['mpatha', ['sda', 'sdb']], ['mpathb', ['sdc', 'sdd']]]);
    assert.equal(topo.maps[0]!.wwid, '360014056001405c0ffee000000000000');
    assert.deepEqual(topo.paths.slice(0, 2).map((p) => [p.dev, p.hcil, p.transportId, p.relativeTargetPortId]), [
      ['sda', '0:0:1:0', 'sas:0x5001405f00000001', 1],
      ['sdb', '1:0:1:0', 'sas:0x5001405f00000002', 2],
    ]);
    // Line formats of `show paths` match the sample's (header and column layout).
    const paths = await san.multipathd('host1', 'show paths');
    const sampleHeader = readSample('multipathd_show_paths.txt').split('\n')[0];
    assert.equal(paths.split('\n')[0], sampleHeader);
    assert.match(paths.split('\n')[1]!, /^0:0:1:0 sda 8:0 {3}50 {2}active ready {2}running [X.]{10} \d+\/\d+$/);
    // `show maps json`: the same field names, in the same order, as multipathd 0.9.4 printed.
    const json = JSON.parse(await san.multipathd('host1', 'show maps json')) as { maps: Record<string, unknown>[] };
    const sample = JSON.parse(readSample('multipathd_show_maps_json.txt')) as { maps: Record<string, unknown>[] };
    assert.deepEqual(Object.keys(json.maps[0]!), Object.keys(sample.maps[0]!));
    const pg = (m: Record<string, unknown>) => (m['path_groups'] as Record<string, unknown>[])[0]!;
    assert.deepEqual(Object.keys(pg(json.maps[0]!)), Object.keys(pg(sample.maps[0]!)));
    assert.deepEqual(Object.keys((pg(json.maps[0]!)['paths'] as object[])[0]!), Object.keys((pg(sample.maps[0]!)['paths'] as object[])[0]!));
    const topology = await san.multipathd('host1', 'show topology');
    assert.match(topology, /mpatha \(360014056001405c0ffee000000000000\) dm-0 LIO-ORG,FILEIO\nsize=64M features='1 queue_if_no_path' hwhandler='1 alua' wp=rw\n/);
    const raw = await san.multipathd('host1', 'show paths raw format "%d %D %w %i %t %T %o"');
    assert.equal(raw.split('\n')[0], 'sda 8:0 360014056001405c0ffee000000000000 0:0:1:0 active ready running');
  } finally {
    assert.equal(await san.stop(), 0);
  }
});

test('commands reach the right nexus; fail path changes only multipathd; transport down is noticed by the checker', async () => {
  const san = await startSan(['--checker-interval', '200']);
  dirs.push(san.dir);
  try {
    assert.equal((await run(san, 'host1', 'sda', regCdb(0), params(0n, 0xabcn))).kind, 'good');
    assert.equal((await run(san, 'host1', 'sdb', regCdb(0), params(0n, 0xabcn))).kind, 'good');
    const full = await run(san, 'host2', 'sda', READ_FULL);
    const d = decodeReadFullStatus(fromHex(full.data!)).descriptors;
    assert.deepEqual(d.map((x) => [x.key, x.relativeTargetPortId]), [[0xabcn, 1], [0xabcn, 2]]);
    // multipathd's view only: the target still answers on sda.
    assert.equal(await san.multipathd('host1', 'fail path sda'), 'ok\n');
    let st = await statusOf(san);
    const sda = () => st.hosts[0]!.paths.find((p) => p.dev === 'sda')!;
    assert.equal(sda().transport, 'up');
    assert.equal(sda().multipathd?.dmState, 'failed');
    assert.equal((await run(san, 'host1', 'sda', READ_KEYS)).kind, 'good');
    assert.equal(await san.multipathd('host1', 'reinstate path sda'), 'ok\n');
    // Transport down: commands fail as on a lost path, and the checker notices.
    await san.ctl('path', 'down', 'host1', 'sdb');
    const lost = await run(san, 'host1', 'sdb', READ_KEYS);
    assert.equal(lost.kind, 'transport-failure');
    assert.equal(lost.hostStatus, HostStatus.DID_TRANSPORT_DISRUPTED);
    await eventually(async () => /1:0:1:0 sdb 8:16 +50 +failed faulty/.test(await san.multipathd('host1', 'show paths')));
    st = await statusOf(san);
    assert.equal(st.hosts[0]!.paths.find((p) => p.dev === 'sdb')!.transport, 'down');
    // Through the map, dm uses only the active path.
    for (let i = 0; i < 4; i++) {
      const r = await san.exec('host1', 'mapper/mpatha', READ_KEYS);
      assert.equal(r['path'], 'sda');
    }
    await san.ctl('path', 'up', 'host1', 'sdb');
    await eventually(async () => /1:0:1:0 sdb 8:16 +50 +active ready/.test(await san.multipathd('host1', 'show paths')));
  } finally {
    await san.stop();
  }
});

test('a path reinstated by the checker gets the map key registered first when PR status is set', async () => {
  const san = await startSan(['--checker-interval', '200']);
  dirs.push(san.dir);
  try {
    for (const dev of ['sda', 'sdb']) assert.equal((await run(san, 'host1', dev, regCdb(0), params(0n, 0x77n))).kind, 'good');
    assert.equal(await san.multipathd('host1', 'setprkey map mpatha key 0x77'), 'ok\n');
    assert.equal(await san.multipathd('host1', 'setprstatus map mpatha'), 'ok\n');
    assert.equal((await san.multipathd('host1', 'getprkey map mpatha')).trim(), '0x77');
    // Remove sdb: the target drops its registration; re-add it with a new relative port id.
    await san.ctl('path', 'remove', 'host1', 'sdb');
    assert.deepEqual(await keys(san, 'host1', 'sda'), [0x77n]);
    await san.ctl('path', 'add', 'host1', 'sdb');
    await eventually(async () => (await keys(san, 'host1', 'sda')).length === 2);
    const full = decodeReadFullStatus(fromHex((await run(san, 'host1', 'sda', READ_FULL)).data!)).descriptors;
    assert.deepEqual(full.map((x) => x.relativeTargetPortId), [1, 5], 're-added path has a new relative target port id');
  } finally {
    await san.stop();
  }
});

test('faults: latency, flaky, hang (timeout), unit attention, map suspend/resume, multipathd stop/start', async () => {
  const san = await startSan(['--checker-interval', '200']);
  dirs.push(san.dir);
  try {
    await san.ctl('path', 'latency', 'host1', 'sda', '150');
    let t = Date.now();
    await run(san, 'host1', 'sda', READ_KEYS);
    assert.ok(Date.now() - t >= 140, 'latency applied');
    await san.ctl('path', 'latency', 'host1', 'sda', '0');
    await san.ctl('path', 'flaky', 'host1', 'sdb', '1');
    assert.equal((await run(san, 'host1', 'sdb', READ_KEYS)).kind, 'transport-failure');
    await san.ctl('path', 'flaky', 'host1', 'sdb', '0');
    await san.ctl('path', 'hang', 'host1', 'sdc');
    const hung = await san.exec('host1', 'sdc', READ_KEYS, '', 300);
    assert.equal((hung['outcome'] as Outcome).hostStatus, HostStatus.DID_TIME_OUT);
    await san.ctl('path', 'unhang', 'host1', 'sdc');
    await san.ctl('path', 'ua', 'host1', 'sdd', '29/00');
    const ua = await run(san, 'host1', 'sdd', READ_KEYS);
    assert.equal(ua.kind, 'check-condition');
    assert.equal(ua.sense!.slice(0, 6), '700006');
    assert.equal((await run(san, 'host1', 'sdd', READ_KEYS)).kind, 'good');
    await san.ctl('map', 'suspend', 'host1', 'mpatha');
    t = Date.now();
    const queued = san.exec('host1', 'mapper/mpatha', READ_KEYS);
    await sleep(200);
    await san.ctl('map', 'resume', 'host1', 'mpatha');
    const r = await queued;
    assert.equal((r['outcome'] as Outcome).kind, 'good');
    assert.ok(Date.now() - t >= 190, 'a command on a suspended map waits for the resume');
    await san.ctl('multipathd', 'stop', 'host1');
    assert.ok(!existsSync(join(san.dir, 'host1', 'multipathd.sock')));
    await assert.rejects(san.multipathd('host1', 'show paths'));
    assert.equal((await statusOf(san)).hosts[0]!.multipathd, 'stopped');
    await san.ctl('multipathd', 'start', 'host1');
    await eventually(async () => existsSync(join(san.dir, 'host1', 'multipathd.sock')));
    assert.match(await san.multipathd('host1', 'show maps'), /^name +sysfs uuid/);
    await assert.rejects(san.ctl('path', 'down', 'host9', 'sda'), /host9/);
    await assert.rejects(san.ctl('frobnicate'), /unknown command/);
  } finally {
    await san.stop();
  }
});

test('APTPL state survives a LUN power cycle and a SAN restart; nothing else does', async () => {
  const san = await startSan([]);
  dirs.push(san.dir);
  await run(san, 'host1', 'sda', regCdb(0), params(0n, 0x1n, true));
  await run(san, 'host1', 'sdc', regCdb(0), params(0n, 0x2n, false));
  await san.ctl('lun', 'power-cycle', '1');
  assert.equal((await run(san, 'host1', 'sdc', READ_KEYS)).kind, 'check-condition', 'POWER ON RESET');
  assert.deepEqual(await keys(san, 'host1', 'sdc'), [], 'no APTPL: registrations lost');
  assert.equal(await san.stop(), 0);
  const again = await startSan([], san.dir);
  try {
    assert.deepEqual(await keys(again, 'host2', 'sda'), [0x1n], 'APTPL registration restored after restart');
    const st = await statusOf(again);
    assert.equal(st.luns[0]!.aptplActive, true);
    assert.equal(st.luns[0]!.registrations[0]!.nexusId, 'host1/sda');
  } finally {
    await again.stop();
  }
});

test('malformed requests close that connection only; the SAN keeps serving', async () => {
  const san = await startSan([]);
  dirs.push(san.dir);
  try {
    const closed = (path: string, bytes: Buffer) =>
      new Promise<void>((resolve, reject) => {
        const s = createConnection(path, () => s.write(bytes));
        s.on('data', () => undefined);
        s.on('close', () => resolve());
        s.on('error', reject);
        setTimeout(() => reject(new Error('connection not closed')), 5000);
      });
    // A libmpathcmd length far beyond the bound.
    const huge = Buffer.alloc(16);
    huge.writeBigUInt64LE(1n << 40n);
    await closed(join(san.dir, 'host1', 'multipathd.sock'), huge);
    await closed(join(san.dir, 'host1', 'san.sock'), Buffer.from('this is not json\n'));
    await closed(join(san.dir, 'ctl.sock'), Buffer.from('{"cmd":\n'));
    const bad = await san.exec('host1', 'sdz', READ_KEYS);
    assert.equal(bad['ok'], false);
    assert.match(String(bad['error']), /sdz/);
    assert.match(await san.multipathd('host1', 'show paths'), /sda/);
    assert.equal((await run(san, 'host1', 'sda', READ_KEYS)).kind, 'good');
  } finally {
    await san.stop();
  }
});
