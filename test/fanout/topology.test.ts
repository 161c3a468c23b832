// The multipath topology source: the pure builders and the diff, then the real thing against a
// simulated SAN process (its host1/multipathd.sock speaks multipathd 0.9.4's CLI), with a fake
// sysfs tree mirroring the SAN's host1 for the fallback (this container has no dm devices).

import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, isPrmuxError } from '../../src/errors.js';
import { DEFAULT_MULTIPATHD_SOCKETS } from '../../src/mpath/multipathd-client.js';
import { parseMapsJson, parsePathsRaw } from '../../src/mpath/multipathd-parse.js';
import {
  MultipathTopology,
  UNKNOWN_HCIL,
  diffTopology,
  isUsablePath,
  mapsFromMultipathd,
  multipathdSocketsFor,
  readSysfsTopology,
  type TopologyClient,
} from '../../src/fanout/topology.js';
import type { MapInfo, PathInfo, TopologyEvent } from '../../src/fanout/types.js';
import type { SetTimer } from '../../src/socket/pr-helper-session.js';
import { readSample } from '../support/paths.js';
import { startSan, removeDir, eventually, type SanProcess } from '../support/san-process.js';

const WWID_A = '360014056001405c0ffee000000000000';
const WWID_B = '360014056001405c0ffee000000000001';

// --- pure parts ------------------------------------------------------------------------------------

function path(dev: string, fields: Partial<PathInfo> = {}): PathInfo {
  return { dev, devT: `8:${dev.charCodeAt(2) - 97}`, hcil: { host: 0, channel: 0, target: 1, lun: 0 }, dmState: 'active', checkerState: 'ready', usable: true, ...fields };
}
function map(name: string, wwid: string, paths: PathInfo[]): MapInfo {
  return { name, wwid, devT: '', paths, source: 'multipathd' };
}
const brief = (events: readonly TopologyEvent[]): string[] =>
  events.map((e) => (e.kind === 'source-changed' ? `${e.kind}:${e.source}` : 'path' in e ? `${e.kind}:${e.map.name}/${e.path.dev}` : `${e.kind}:${e.map.name}`));

describe('pure parts', () => {
  test('usable: checker ready or ghost, and the SCSI device not offline', () => {
    assert.equal(isUsablePath('ready', 'running'), true);
    assert.equal(isUsablePath('ghost', undefined), true);
    assert.equal(isUsablePath('ready', 'offline'), false);
    for (const s of ['faulty', 'shaky', 'i/o pending', 'i/o timeout', 'delayed', 'undef']) assert.equal(isUsablePath(s, 'running'), false, s);
  });

  test('MULTIPATH_SOCKET_NAME: one socket when set, else the defaults', () => {
    assert.deepEqual(multipathdSocketsFor('@/my/socket'), ['@/my/socket']);
    assert.deepEqual(multipathdSocketsFor(undefined), DEFAULT_MULTIPATHD_SOCKETS);
    assert.deepEqual(multipathdSocketsFor(''), DEFAULT_MULTIPATHD_SOCKETS);
  });

  test('maps from the lab sample of show maps json plus a raw path listing', () => {
    const json = parseMapsJson(readSample('multipathd_show_maps_json.txt'));
    const raw = parsePathsRaw(
      [
        ['sda', '8:0', '0:0:1:0', WWID_A, 'mpatha', 'active', 'ready', 'running', '50', 'tur', 'normal'],
        // The raw listing is newer than the JSON: its states win.
        ['sdb', '8:16', '1:0:1:0', WWID_A, 'mpatha', 'failed', 'faulty', 'running', '50', 'tur', 'normal'],
      ]
        .map((f) => f.join('\t') + '\n')
        .join(''),
    );
    const maps = mapsFromMultipathd(json, raw, { dmDevT: (dm) => (dm === 'dm-0' ? '253:0' : '') });
    assert.equal(maps.length, 1);
    const m = maps[0]!;
    assert.deepEqual([m.name, m.wwid, m.devT, m.source], ['mpatha', WWID_A, '253:0', 'multipathd']);
    assert.deepEqual(
      m.paths.map((p) => [p.dev, p.devT, `${p.hcil.host}:${p.hcil.channel}:${p.hcil.target}:${p.hcil.lun}`, p.dmState, p.checkerState, p.deviceState, p.usable]),
      [
        ['sda', '8:0', '0:0:1:0', 'active', 'ready', 'running', true],
        ['sdb', '8:16', '1:0:1:0', 'failed', 'faulty', 'running', false],
      ],
    );
    // A member the raw listing does not have yet: JSON states, address from sysfs if it can say, not usable.
    const partial = mapsFromMultipathd(json, raw.slice(0, 1), { hcil: (dev) => (dev === 'sdb' ? { host: 7, channel: 0, target: 1, lun: 0 } : null) });
    const sdb = partial[0]!.paths[1]!;
    assert.deepEqual([sdb.dev, sdb.checkerState, sdb.hcil.host, sdb.usable], ['sdb', 'ready', 7, false]);
    assert.equal(partial[0]!.devT, '');
    const noAddress = mapsFromMultipathd(json, raw.slice(0, 1));
    assert.deepEqual(noAddress[0]!.paths[1]!.hcil, UNKNOWN_HCIL);
  });

  test('diff: maps by WWID, paths by name, usable flips, dev_t change is remove + add', () => {
    const a1 = map('mpatha', WWID_A, [path('sda'), path('sdb')]);
    assert.deepEqual(brief(diffTopology([], [a1])), ['map-added:mpatha']);
    assert.deepEqual(brief(diffTopology([a1], [])), ['map-removed:mpatha']);
    assert.deepEqual(diffTopology([a1], [a1]), []);
    const a2 = map('mpatha', WWID_A, [path('sda', { usable: false, checkerState: 'faulty' }), path('sdc')]);
    assert.deepEqual(brief(diffTopology([a1], [a2])), ['path-removed:mpatha/sdb', 'path-unusable:mpatha/sda', 'path-added:mpatha/sdc']);
    assert.deepEqual(brief(diffTopology([a2], [a1])), ['path-removed:mpatha/sdc', 'path-usable:mpatha/sda', 'path-added:mpatha/sdb']);
    const replaced = map('mpatha', WWID_A, [path('sda', { devT: '8:99' }), path('sdb')]);
    assert.deepEqual(brief(diffTopology([a1], [replaced])), ['path-removed:mpatha/sda', 'path-added:mpatha/sda']);
    // A rename keeps the WWID: no event; a dev_t nobody knows ("") is no change.
    const renamed = map('data1', WWID_A, [path('sda', { devT: '' }), path('sdb')]);
    assert.deepEqual(diffTopology([a1], [renamed]), []);
    const b = map('mpathb', WWID_B, [path('sdc')]);
    assert.deepEqual(brief(diffTopology([a1], [b])), ['map-removed:mpatha', 'map-added:mpathb']);
  });
});

// --- a fake sysfs ------------------------------------------------------------------------------------

interface SanTopologyDoc {
  maps: { name: string; wwid: string; paths: string[] }[];
  paths: { dev: string; devT: string; hcil: string; removed: boolean }[];
}

/** /sys/block/dm-N (dev, dm/uuid, dm/name, slaves/) and /sys/block/sdX (dev, device -> H:C:T:L with state), as the kernel lays them out. */
function buildFakeSysfs(root: string, doc: SanTopologyDoc): void {
  doc.maps.forEach((m, i) => {
    const dm = join(root, 'block', `dm-${i}`);
    mkdirSync(join(dm, 'dm'), { recursive: true });
    mkdirSync(join(dm, 'slaves'), { recursive: true });
    writeFileSync(join(dm, 'dev'), `253:${i}\n`);
    writeFileSync(join(dm, 'dm', 'uuid'), `mpath-${m.wwid}\n`);
    writeFileSync(join(dm, 'dm', 'name'), `${m.name}\n`);
    for (const dev of m.paths) symlinkSync(join('..', '..', dev), join(dm, 'slaves', dev));
  });
  // A dm device that is not a multipath map (an LVM volume): not listed.
  mkdirSync(join(root, 'block', 'dm-9', 'dm'), { recursive: true });
  writeFileSync(join(root, 'block', 'dm-9', 'dm', 'uuid'), 'LVM-xyz\n');
  for (const p of doc.paths) {
    const scsi = join(root, 'devices', 'platform', `host${p.hcil.split(':')[0]}`, p.hcil);
    mkdirSync(scsi, { recursive: true });
    writeFileSync(join(scsi, 'state'), 'running\n');
    const blk = join(root, 'block', p.dev);
    mkdirSync(blk, { recursive: true });
    writeFileSync(join(blk, 'dev'), `${p.devT}\n`);
    symlinkSync(scsi, join(blk, 'device'));
  }
}

function setSysfsState(root: string, doc: SanTopologyDoc, dev: string, state: string): void {
  const p = doc.paths.find((x) => x.dev === dev)!;
  writeFileSync(join(root, 'devices', 'platform', `host${p.hcil.split(':')[0]}`, p.hcil, 'state'), `${state}\n`);
}

test('sysfs: multipath maps with their slaves, device state decides usable', () => {
  const root = mkdtempSync(join(tmpdir(), 'prmux-sysfs-'));
  try {
    const doc: SanTopologyDoc = {
      maps: [
        { name: 'mpatha', wwid: WWID_A, paths: ['sda', 'sdb'] },
        { name: 'mpathb', wwid: WWID_B, paths: ['sdc'] },
      ],
      paths: [
        { dev: 'sda', devT: '8:0', hcil: '0:0:1:0', removed: false },
        { dev: 'sdb', devT: '8:16', hcil: '1:0:1:0', removed: false },
        { dev: 'sdc', devT: '8:32', hcil: '0:0:1:1', removed: false },
      ],
    };
    buildFakeSysfs(root, doc);
    setSysfsState(root, doc, 'sdb', 'offline');
    const maps = readSysfsTopology(root);
    assert.deepEqual(maps.map((m) => [m.name, m.wwid, m.devT, m.source]), [['mpatha', WWID_A, '253:0', 'sysfs'], ['mpathb', WWID_B, '253:1', 'sysfs']]);
    assert.deepEqual(
      maps[0]!.paths.map((p) => [p.dev, p.devT, p.hcil.host, p.deviceState, p.checkerState, p.usable]),
      [['sda', '8:0', 0, 'running', 'undef', true], ['sdb', '8:16', 1, 'offline', 'undef', false]],
    );
    // A slave whose device is gone from sysfs: listed, not usable.
    rmSync(join(root, 'block', 'sdc'), { recursive: true });
    const gone = readSysfsTopology(root)[1]!.paths[0]!;
    assert.deepEqual([gone.dev, gone.devT, gone.usable, gone.hcil], ['sdc', '', false, UNKNOWN_HCIL]);
    assert.throws(() => readSysfsTopology(join(root, 'nope')), (e: unknown) => isPrmuxError(e, ErrorCode.DEVICE));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

// --- refresh coalescing and the poll timer, with a scripted client ------------------------------------

/** A client answering from a fixed reply, counting calls; each query waits for `gate` when set. */
function scriptedClient(): TopologyClient & { calls: string[]; gate: Promise<void> | null; fail: Error | null } {
  const json = parseMapsJson(readSample('multipathd_show_maps_json.txt'));
  const c = {
    calls: [] as string[],
    gate: null as Promise<void> | null,
    fail: null as Error | null,
    async showMapsJson() {
      c.calls.push('show maps json');
      if (c.gate) await c.gate;
      if (c.fail) throw c.fail;
      return json;
    },
    async showPaths() {
      c.calls.push('show paths');
      return [];
    },
    async setPrKey(m: string, k: bigint) {
      c.calls.push(`setprkey ${m} 0x${k.toString(16)}`);
    },
    async unsetPrKey(m: string) {
      c.calls.push(`unsetprkey ${m}`);
    },
    async setPrStatus(m: string) {
      c.calls.push(`setprstatus ${m}`);
    },
    async unsetPrStatus(m: string) {
      c.calls.push(`unsetprstatus ${m}`);
    },
    async close() {
      c.calls.push('close');
    },
  };
  return c;
}

test('concurrent refreshes share one query; polling runs one refresh at a time through the timer seam', async () => {
  const client = scriptedClient();
  const timers: { ms: number; fn: () => void; cancelled: boolean }[] = [];
  const setTimer: SetTimer = (ms, fn) => {
    const t = { ms, fn, cancelled: false };
    timers.push(t);
    return () => {
      t.cancelled = true;
    };
  };
  const topo = new MultipathTopology({ createClient: () => client, setTimer, pollIntervalMs: 250, sysfsRoot: '/nonexistent' });
  let open!: () => void;
  client.gate = new Promise((r) => (open = r));
  const p1 = topo.refresh();
  const p2 = topo.refresh();
  const p3 = topo.find({ name: 'mpatha' }, true);
  open();
  const [r1, r2, found] = await Promise.all([p1, p2, p3]);
  assert.equal(r1, r2);
  assert.equal(found?.wwid, WWID_A);
  assert.deepEqual(client.calls, ['show maps json', 'show paths']);
  client.gate = null;

  // start(): a refresh now; the next one is scheduled only once it finished.
  topo.start();
  assert.equal(timers.length, 0);
  await eventually(async () => timers.length === 1, 2000, 5);
  assert.equal(timers[0]!.ms, 250);
  assert.equal(client.calls.filter((c) => c === 'show maps json').length, 2);
  timers[0]!.fn();
  await eventually(async () => timers.length === 2, 2000, 5);
  assert.equal(client.calls.filter((c) => c === 'show maps json').length, 3);
  // A failing refresh (multipathd down, no sysfs either) keeps polling and keeps the last view.
  client.fail = new Error('boom');
  timers[1]!.fn();
  await eventually(async () => timers.length === 3, 2000, 5);
  assert.equal(topo.maps().length, 1);
  assert.equal(topo.source, 'multipathd');
  topo.close();
  assert.equal(timers[2]!.cancelled, true);
  assert.ok(client.calls.includes('close'));
  await assert.rejects(topo.refresh(), (e: unknown) => isPrmuxError(e, ErrorCode.CLOSED));
});

test('announceKey: key then status, status off then key off; failures are only logged', async () => {
  const client = scriptedClient();
  const warnings: string[] = [];
  const logger = { debug() {}, info() {}, warn: (m: string) => warnings.push(m), error() {} };
  const topo = new MultipathTopology({ createClient: () => client, sysfsRoot: '/nonexistent', logger });
  const [m] = await topo.refresh();
  client.calls.length = 0;
  await topo.announceKey(m!, 0xabcn);
  await topo.announceKey(m!, null);
  await topo.announceKey(m!, 0n);
  assert.deepEqual(client.calls, ['setprkey mpatha 0xabc', 'setprstatus mpatha', 'unsetprstatus mpatha', 'unsetprkey mpatha', 'unsetprstatus mpatha', 'unsetprkey mpatha']);
  client.setPrKey = async () => {
    throw new Error('multipathd said fail');
  };
  await topo.announceKey(m!, 1n);
  assert.equal(warnings.length, 1);
  topo.close();
});

// --- against the simulated SAN ---------------------------------------------------------------------------

describe('against a simulated SAN', () => {
  let san: SanProcess | undefined;
  const cleanup: (() => void)[] = [];
  after(async () => {
    await san?.stop();
    for (const c of cleanup) c();
  });

  /** Collects events; waitFor resolves with the first collected event (from index `from`) matching. */
  function recorder(topo: MultipathTopology): { events: TopologyEvent[]; waitFor(pred: (e: TopologyEvent) => boolean, from?: number): Promise<TopologyEvent> } {
    const events: TopologyEvent[] = [];
    topo.onEvent((e) => events.push(e));
    return {
      events,
      async waitFor(pred, from = 0) {
        let hit: TopologyEvent | undefined;
        await eventually(async () => (hit = events.slice(from).find(pred)) !== undefined, 15_000, 20);
        return hit!;
      },
    };
  }

  test('multipathd view, polling events on path down/up and remove/add, key announcements, sysfs fallback both ways', async () => {
    san = await startSan(['--checker-interval', '200']);
    const dir = san.dir;
    cleanup.push(() => removeDir(dir));
    const doc = JSON.parse(readFileSync(join(dir, 'host1', 'topology.json'), 'utf8')) as SanTopologyDoc;
    const sysfs = mkdtempSync(join(tmpdir(), 'prmux-sysfs-'));
    cleanup.push(() => rmSync(sysfs, { recursive: true, force: true }));
    buildFakeSysfs(sysfs, doc);

    const logs: string[] = [];
    const logger = { debug() {}, info: (m: string) => logs.push(`info ${m}`), warn: (m: string) => logs.push(`warn ${m}`), error: (m: string) => logs.push(`error ${m}`) };
    const topo = new MultipathTopology({ sockets: join(dir, 'host1', 'multipathd.sock'), multipathdTimeoutMs: 3000, pollIntervalMs: 50, sysfsRoot: sysfs, logger });
    const rec = recorder(topo);
    try {
      // First view: from multipathd, every map added.
      const maps = await topo.refresh();
      assert.equal(topo.source, 'multipathd');
      assert.deepEqual(brief(rec.events), ['source-changed:multipathd', 'map-added:mpatha', 'map-added:mpathb']);
      assert.deepEqual(maps.map((m) => [m.name, m.wwid, m.devT, m.source]), [['mpatha', WWID_A, '253:0', 'multipathd'], ['mpathb', WWID_B, '253:1', 'multipathd']]);
      assert.deepEqual(
        maps[0]!.paths.map((p) => [p.dev, p.devT, `${p.hcil.host}:${p.hcil.channel}:${p.hcil.target}:${p.hcil.lun}`, p.dmState, p.checkerState, p.deviceState, p.usable]),
        [['sda', '8:0', '0:0:1:0', 'active', 'ready', 'running', true], ['sdb', '8:16', '1:0:1:0', 'active', 'ready', 'running', true]],
      );
      assert.equal((await topo.find({ wwid: WWID_B }, false))?.name, 'mpathb');
      assert.equal((await topo.find({ name: 'mpatha' }, true))?.wwid, WWID_A);
      assert.equal((await topo.find({ devT: '253:1' }, false))?.name, 'mpathb');
      assert.equal(await topo.find({ name: 'mpatha', wwid: WWID_B }, false), null);
      assert.equal(await topo.find({ wwid: 'nope' }, true), null);

      // Polling: the SAN's checker notices the transport loss, the next poll reports it.
      topo.start();
      let from = rec.events.length;
      await san.ctl('path', 'down', 'host1', 'sdb');
      const down = await rec.waitFor((e) => e.kind === 'path-unusable', from);
      assert.deepEqual(brief([down]), ['path-unusable:mpatha/sdb']);
      assert.equal(down.kind === 'path-unusable' && down.path.checkerState, 'faulty');
      from = rec.events.length;
      await san.ctl('path', 'up', 'host1', 'sdb');
      assert.deepEqual(brief([await rec.waitFor((e) => e.kind === 'path-usable', from)]), ['path-usable:mpatha/sdb']);

      // Hot removal and addition.
      from = rec.events.length;
      await san.ctl('path', 'remove', 'host1', 'sdc');
      assert.deepEqual(brief([await rec.waitFor((e) => e.kind === 'path-removed', from)]), ['path-removed:mpathb/sdc']);
      assert.deepEqual((await topo.find({ name: 'mpathb' }, true))?.paths.map((p) => p.dev), ['sdd']);
      from = rec.events.length;
      await san.ctl('path', 'add', 'host1', 'sdc');
      const added = await rec.waitFor((e) => e.kind === 'path-added', from);
      assert.deepEqual(brief([added]), ['path-added:mpathb/sdc']);
      assert.equal(added.kind === 'path-added' && added.path.usable, true);

      // The key reaches multipathd (which registers it on returning paths).
      const mpatha = (await topo.find({ name: 'mpatha' }, false))!;
      await topo.announceKey(mpatha, 0x1234abcdn);
      assert.equal(await san.multipathd('host1', 'getprkey map mpatha'), '0x1234abcd\n');
      assert.equal((await san.multipathd('host1', 'getprstatus map mpatha')).trim(), '1');
      await topo.announceKey(mpatha, null);
      assert.equal(await san.multipathd('host1', 'getprkey map mpatha'), 'none\n');
      assert.equal((await san.multipathd('host1', 'getprstatus map mpatha')).trim(), '0');

      // multipathd stops: the view comes from sysfs, and says so.
      from = rec.events.length;
      await san.ctl('multipathd', 'stop', 'host1');
      const toSysfs = await rec.waitFor((e) => e.kind === 'source-changed', from);
      assert.equal(toSysfs.kind === 'source-changed' && toSysfs.source, 'sysfs');
      assert.match(toSysfs.kind === 'source-changed' ? toSysfs.reason : '', /multipathd unreachable/);
      assert.ok(logs.some((l) => l.startsWith('warn topology now from sysfs')), logs.join('\n'));
      const onSysfs = await topo.refresh();
      assert.equal(topo.source, 'sysfs');
      assert.deepEqual(onSysfs.map((m) => [m.name, m.source, m.paths.map((p) => `${p.dev}:${p.usable}`).join(',')]), [
        ['mpatha', 'sysfs', 'sda:true,sdb:true'],
        ['mpathb', 'sysfs', 'sdc:true,sdd:true'],
      ]);
      // Same maps, same paths, same usability: switching source alone is not a topology change.
      assert.deepEqual(brief(rec.events.slice(from)), ['source-changed:sysfs']);
      // Key announcements are a no-op on sysfs (no throw, no multipathd).
      await topo.announceKey(onSysfs[0]!, 0x99n);
      // Device state drives usability on sysfs.
      from = rec.events.length;
      setSysfsState(sysfs, doc, 'sda', 'offline');
      assert.deepEqual(brief([await rec.waitFor((e) => e.kind === 'path-unusable', from)]), ['path-unusable:mpatha/sda']);

      // multipathd is back: its view again (sda is up for its checker), and the switch is logged.
      from = rec.events.length;
      await san.ctl('multipathd', 'start', 'host1');
      const back = await rec.waitFor((e) => e.kind === 'source-changed', from);
      assert.equal(back.kind === 'source-changed' && back.source, 'multipathd');
      assert.deepEqual(brief(rec.events.slice(from)).slice(0, 2), ['source-changed:multipathd', 'path-usable:mpatha/sda']);
      assert.ok(logs.some((l) => l.startsWith('info topology now from multipathd')), logs.join('\n'));
      assert.equal(topo.source, 'multipathd');
    } finally {
      topo.close();
    }
  });

  test('socket names are tried in order (a missing one first)', async () => {
    assert.ok(san, 'the SAN of the previous test');
    const topo = new MultipathTopology({ sockets: [join(san.dir, 'missing.sock'), join(san.dir, 'host2', 'multipathd.sock')], sysfsRoot: '/nonexistent' });
    try {
      const maps = await topo.refresh();
      assert.equal(topo.source, 'multipathd');
      assert.deepEqual(maps.map((m) => [m.name, m.paths.map((p) => p.dev).join(',')]), [['mpatha', 'sda,sdb'], ['mpathb', 'sdc,sdd']]);
    } finally {
      topo.close();
    }
  });
});
