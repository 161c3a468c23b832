// The multipath engine: start-up reconciliation before start() resolves, per-map serialisation,
// topology events driving the guard, the verification timer (fake, through the seam), snapshot and
// events, the backend's target mapping, and end to end with the real fan-out on the PR model: two
// hosts with their own engines on one LU, host2 fences host1, host1's paths return, and host1's
// guard does not undo the fence.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type EngineEvent, type EngineStore, type FanoutFn, MultipathEngine } from '../../src/fanout/engine.js';
import { emptyIntent, type MapIntent } from '../../src/fanout/intent.js';
import { mapKeyOf, MultipathBackend } from '../../src/fanout/multipath-backend.js';
import type { FanoutResult, MapControl, MapInfo, PathIo } from '../../src/fanout/types.js';
import { isPrmuxError } from '../../src/errors.js';
import { PrInAction, PrOutAction, ScsiStatus } from '../../src/scsi/constants.js';
import { good, reservationConflict } from '../../src/scsi/outcome.js';
import type { PrDeviceServer } from '../../src/scsi/model/device-server.js';
import type { DeviceTarget } from '../../src/serve/device-target.js';
import type { SetTimer } from '../../src/socket/pr-helper-session.js';
import { FakeTopology, makeMap } from './fake-topology.js';
import { decodeKeys, keysOf, ModelPathIo, newLun, prIn, prOut } from './guard-fixtures.js';

const WA = '3600a0000000000000000000000000001';
const WB = '3600b0000000000000000000000000002';
const K1 = 0x1111n;
const K2 = 0x2222n;
const T0 = '2024-01-01T00:00:00.000Z';

class FakeTimers {
  readonly pending: { ms: number; fn: () => void; cancelled: boolean }[] = [];
  readonly setTimer: SetTimer = (ms, fn) => {
    const t = { ms, fn, cancelled: false };
    this.pending.push(t);
    return () => {
      t.cancelled = true;
    };
  };
  live(): { ms: number; fn: () => void; cancelled: boolean }[] {
    return this.pending.filter((t) => !t.cancelled);
  }
  /** Fire every live timer once (they are one-shot). */
  fire(): void {
    const due = this.live();
    for (const t of due) {
      t.cancelled = true;
      t.fn();
    }
  }
}

class MemoryStore implements EngineStore {
  readonly saved: MapIntent[] = [];
  constructor(readonly initial: MapIntent[] = []) {}
  async loadAll() {
    return { intents: this.initial, corrupt: [], leftovers: [] };
  }
  async save(i: MapIntent): Promise<void> {
    this.saved.push(i);
  }
}

const noControl: MapControl = { suspend: async () => undefined, resume: async () => undefined };

function intentFor(wwid: string, over: Partial<MapIntent>): MapIntent {
  return { ...emptyIntent(wwid, 'mpatha', T0), ...over };
}

interface Host {
  io: ModelPathIo;
  topo: FakeTopology;
  store: MemoryStore;
  timers: FakeTimers;
  engine: MultipathEngine;
  events: EngineEvent[];
  clock: { t: number };
}

function host(
  lun: PrDeviceServer,
  name: string,
  ports: [number, number],
  opts: { intents?: MapIntent[]; fanout?: FanoutFn; maxQueuedPerMap?: number; maps?: MapInfo[]; store?: MemoryStore; wrapIo?: (io: ModelPathIo) => PathIo; io?: ModelPathIo } = {},
): Host {
  // `opts.io`: a restarted prmux reaches the LU through the same nexuses.
  const io = opts.io ?? new ModelPathIo(lun, name, [
    { dev: 'sda', initiatorPort: ports[0], relativeTargetPortId: 1 },
    { dev: 'sdb', initiatorPort: ports[1], relativeTargetPortId: 2 },
  ]);
  const topo = new FakeTopology(opts.maps ?? [makeMap('mpatha', WA, [{ dev: 'sda', host: 1 }, { dev: 'sdb', host: 2 }])]);
  const store = opts.store ?? new MemoryStore(opts.intents ?? []);
  const timers = new FakeTimers();
  const clock = { t: 0 };
  const engine = new MultipathEngine({
    topology: topo,
    io: opts.wrapIo ? opts.wrapIo(io) : io,
    control: noControl,
    store,
    setTimer: timers.setTimer,
    now: () => clock.t,
    wallClock: () => Date.parse(T0),
    verifyIntervalMs: 30_000,
    ...(opts.fanout ? { executeOnMap: opts.fanout } : {}),
    ...(opts.maxQueuedPerMap !== undefined ? { maxQueuedPerMap: opts.maxQueuedPerMap } : {}),
  });
  const events: EngineEvent[] = [];
  engine.onEvent((e) => events.push(e));
  return { io, topo, store, timers, engine, events, clock };
}

async function run(h: Host, cmd: { cdb: Uint8Array; dataOut: Uint8Array | null; allocationLength: number }, key: { wwid?: string; devT?: string; name?: string } = { wwid: WA }): Promise<FanoutResult> {
  return h.engine.execute(key, cmd.cdb, cmd.dataOut, cmd.allocationLength);
}

/** Let queued promise jobs run (no clock involved). */
function settle(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

describe('MultipathEngine start-up', () => {
  it('reconciles every map with an intent before start() resolves, then starts polling and the verify timer', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2], { intents: [intentFor(WA, { key: K1, lastKey: K1 })] });
    // Only sda carries the key (sdb was replaced while prmux was not running).
    const reg = prOut(PrOutAction.REGISTER, { saKey: K1 });
    assert.equal(lun.execute(h.io.nexusOf('sda'), reg.cdb, reg.dataOut!).kind, 'good');
    const sentBeforePolling: boolean[] = [];
    h.io.onExec = () => sentBeforePolling.push(!h.topo.started);
    await h.engine.start();
    assert.equal(h.io.keyOn('sdb'), K1, 'sdb registered during start-up');
    assert.ok(sentBeforePolling.length > 0 && sentBeforePolling.every(Boolean), 'all reconciliation commands ran before polling started');
    assert.equal(h.topo.started, true);
    assert.equal(h.engine.state, 'running');
    assert.deepEqual(h.timers.live().map((t) => t.ms), [30_000]);
    assert.deepEqual(h.topo.announced, [{ wwid: WA, map: 'mpatha', key: K1 }]);
    const rec = h.events.find((e) => e.kind === 'reconciled');
    assert.ok(rec && rec.kind === 'reconciled' && rec.ok);
    await h.engine.close();
  });

  it('does not register at start-up when our key was preempted while prmux was down', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2], { intents: [intentFor(WA, { key: K1, lastKey: K1, reservation: { type: 5 } })] });
    await h.engine.start();
    assert.deepEqual(keysOf(lun), []);
    const snap = h.engine.snapshot().maps.find((m) => m.wwid === WA)!;
    assert.equal(snap.intent?.key, null);
    assert.equal(snap.intent?.fenced?.formerKey, '0x1111');
    assert.ok(h.events.some((e) => e.kind === 'fenced'));
    await h.engine.close();
  });

  it('refuses commands before start and after close, with stable codes', async () => {
    const h = host(newLun(), 'h1', [1, 2]);
    await assert.rejects(run(h, prIn(PrInAction.READ_KEYS)), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_CLOSED'));
    await h.engine.start();
    await h.engine.close();
    assert.equal(h.topo.closed, true);
    assert.equal(h.io.closed, true);
    assert.equal(h.timers.live().length, 0, 'verify timer cancelled');
    assert.equal(h.topo.listenerCount(), 0);
    await assert.rejects(run(h, prIn(PrInAction.READ_KEYS)), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_CLOSED'));
  });
});

describe('MultipathEngine commands', () => {
  /** A fan-out that waits until the test releases each command; records order and overlap. */
  function gatedFanout() {
    const started: string[] = [];
    const release = new Map<string, () => void>();
    let active = new Map<string, number>();
    const maxActive = new Map<string, number>();
    const fn: FanoutFn = async (cdb, _d, _a, ctx) => {
      const tag = `${ctx.map.name}#${cdb[9]}`;
      started.push(tag);
      active.set(ctx.map.wwid, (active.get(ctx.map.wwid) ?? 0) + 1);
      maxActive.set(ctx.map.wwid, Math.max(maxActive.get(ctx.map.wwid) ?? 0, active.get(ctx.map.wwid)!));
      await new Promise<void>((r) => release.set(tag, r));
      active.set(ctx.map.wwid, active.get(ctx.map.wwid)! - 1);
      return { outcome: reservationConflict(), decidedBy: 'sda', commands: [], pendingPaths: [] };
    };
    return { fn, started, release, maxActive, reset: () => (active = new Map()) };
  }

  function tagged(n: number) {
    const c = prIn(PrInAction.READ_KEYS);
    const cdb = c.cdb.slice();
    cdb[9] = n; // CONTROL byte as a tag the fake fan-out can see
    return { ...c, cdb };
  }

  it('runs one command at a time per map, in arrival order, and different maps in parallel', async () => {
    const g = gatedFanout();
    const maps = [makeMap('mpatha', WA, [{ dev: 'sda' }]), makeMap('mpathb', WB, [{ dev: 'sdb' }], '253:1')];
    const h = host(newLun(), 'h1', [1, 2], { fanout: g.fn, maps });
    await h.engine.start();
    const a = [1, 2, 3].map((n) => run(h, tagged(n), { wwid: WA }));
    const b = run(h, tagged(9), { name: 'mpathb' });
    await settle();
    assert.deepEqual(g.started.sort(), ['mpatha#1', 'mpathb#9']);
    g.release.get('mpathb#9')!();
    g.release.get('mpatha#1')!();
    await settle();
    assert.deepEqual(g.started.filter((s) => s.startsWith('mpatha')), ['mpatha#1', 'mpatha#2']);
    g.release.get('mpatha#2')!();
    await settle();
    g.release.get('mpatha#3')!();
    await Promise.all([...a, b]);
    assert.deepEqual(g.started.filter((s) => s.startsWith('mpatha')), ['mpatha#1', 'mpatha#2', 'mpatha#3']);
    assert.equal(g.maxActive.get(WA), 1);
    await h.engine.close();
  });

  it('answers TASK SET FULL beyond the per-map queue bound', async () => {
    const g = gatedFanout();
    const h = host(newLun(), 'h1', [1, 2], { fanout: g.fn, maxQueuedPerMap: 2 });
    await h.engine.start();
    const first = run(h, tagged(1));
    const second = run(h, tagged(2));
    const third = await run(h, tagged(3));
    assert.equal(third.outcome.kind, 'task-set-full');
    await settle();
    g.release.get('mpatha#1')!();
    await settle();
    g.release.get('mpatha#2')!();
    await Promise.all([first, second]);
    assert.equal(h.engine.snapshot().maps[0]!.counters.commandsRejectedBusy, 1);
    await h.engine.close();
  });

  it('looks the topology up fresh before each PR OUT, not before a PR IN', async () => {
    const seen: MapInfo[] = [];
    const fn: FanoutFn = async (_c, _d, _a, ctx) => {
      seen.push(ctx.map);
      return { outcome: good(), decidedBy: 'sda', commands: [], pendingPaths: [] };
    };
    const h = host(newLun(), 'h1', [1, 2], { fanout: fn });
    await h.engine.start();
    const before = h.topo.freshFinds;
    await run(h, prIn(PrInAction.READ_KEYS));
    assert.equal(h.topo.freshFinds, before);
    // sdb fails; no poll has run yet, but the PR OUT must see it.
    h.topo.setUsable(WA, 'sdb', false);
    await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    assert.equal(h.topo.freshFinds, before + 1);
    assert.equal(seen.at(-1)!.paths.find((p) => p.dev === 'sdb')!.usable, false);
    await h.engine.close();
  });

  it('rejects a map neither multipathd nor sysfs knows with a DEVICE error', async () => {
    const h = host(newLun(), 'h1', [1, 2]);
    await h.engine.start();
    await assert.rejects(run(h, prIn(PrInAction.READ_KEYS), { devT: '253:9' }), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_DEVICE'));
    await h.engine.close();
  });

  it('updates, writes and announces the intent after a GOOD PR OUT only, and reports the command', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    const r = await run(h, prOut(PrOutAction.REGISTER, { saKey: K1, aptpl: true }));
    assert.equal(r.outcome.kind, 'good');
    assert.deepEqual(keysOf(lun), [K1, K1]);
    assert.equal(h.store.saved.at(-1)?.key, K1);
    assert.equal(h.store.saved.at(-1)?.aptpl, true);
    assert.deepEqual(h.topo.announced.at(-1), { wwid: WA, map: 'mpatha', key: K1 });
    assert.equal(h.store.saved.at(-1)?.pending, undefined, 'the final write carries no write-ahead record');
    // A REGISTER with the wrong key conflicts: nothing changes. The write-ahead record is written
    // and then replaced by the unchanged intent.
    const writes = h.store.saved.length;
    const bad = await run(h, prOut(PrOutAction.REGISTER, { key: 0x9999n, saKey: K2 }));
    assert.equal(bad.outcome.kind, 'reservation-conflict');
    assert.equal(h.store.saved.length, writes + 2);
    assert.ok(h.store.saved[writes]!.pending !== undefined);
    const last = h.store.saved.at(-1)!;
    assert.equal(last.pending, undefined);
    assert.equal(last.key, K1);
    assert.equal(last.lastKey, K1);
    assert.deepEqual(keysOf(lun), [K1, K1]);
    const done = h.events.filter((e) => e.kind === 'command-done');
    assert.equal(done.length, 2);
    const first = done[0]!;
    assert.ok(first.kind === 'command-done');
    assert.equal(first.command, 'PR OUT REGISTER');
    assert.equal(first.status, ScsiStatus.GOOD);
    assert.equal(first.intentChanged, true);
    assert.deepEqual(first.commands.map((c) => c.path).sort(), ['sda', 'sdb']);
    await h.engine.close();
  });
});

describe('MultipathEngine topology events, verification timer, snapshot', () => {
  it('registers the key on a path as soon as the topology reports it usable again', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    // sdb is hot-removed and re-added at the target: its registration is gone.
    h.io.removePath('sdb');
    h.topo.removePath(WA, 'sdb');
    await h.topo.refresh();
    h.io.addPath({ dev: 'sdb', initiatorPort: 2, relativeTargetPortId: 2 });
    h.topo.addPath(WA, { dev: 'sdb', host: 2, usable: false });
    await h.topo.refresh();
    h.clock.t = 100;
    h.topo.setUsable(WA, 'sdb', true);
    await h.topo.refresh();
    h.clock.t = 130;
    await h.engine.whenIdle();
    assert.equal(h.io.keyOn('sdb'), K1);
    const kinds = h.events.map((e) => e.kind);
    for (const k of ['path-removed', 'path-added', 'path-up', 'registration-added'] as const) assert.ok(kinds.includes(k), k);
    const snap = h.engine.mapSnapshot({ name: 'mpatha' })!;
    const sdb = snap.paths.find((p) => p.dev === 'sdb')!;
    assert.equal(sdb.key, '0x1111');
    assert.equal(sdb.keyStatus, 'registered');
    assert.equal(sdb.lastRegistration?.ok, true);
    assert.equal(sdb.lastChange?.usable, true);
    assert.equal(snap.registrationLatency.count, 1);
    assert.equal(snap.counters.pathUp, 1);
    await h.engine.close();
  });

  it('a REGISTER while a path is down leaves it pending; the path gets the key when it returns', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    h.io.setDown('sdb', true);
    h.topo.setUsable(WA, 'sdb', false);
    const r = await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    assert.equal(r.outcome.kind, 'good');
    assert.equal(h.io.keyOn('sdb'), null);
    assert.equal(h.engine.mapSnapshot({ wwid: WA })!.paths.find((p) => p.dev === 'sdb')!.pendingRegistration, true);
    h.io.setDown('sdb', false);
    h.topo.setUsable(WA, 'sdb', true);
    await h.topo.refresh();
    await h.engine.whenIdle();
    assert.equal(h.io.keyOn('sdb'), K1);
    assert.equal(h.engine.mapSnapshot({ wwid: WA })!.paths.find((p) => p.dev === 'sdb')!.pendingRegistration, false);
    await h.engine.close();
  });

  it('the verification timer (fake, via the seam) finds and repairs drift, then re-arms', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    // Someone removes sdb's registration behind our back (the nexus is reset at the target).
    h.io.removePath('sdb');
    h.io.addPath({ dev: 'sdb', initiatorPort: 2, relativeTargetPortId: 2 });
    assert.deepEqual(keysOf(lun), [K1]);
    h.timers.fire();
    await h.engine.whenIdle();
    assert.deepEqual(keysOf(lun), [K1, K1]);
    assert.ok(h.events.some((e) => e.kind === 'drift-found' && e.finding.kind === 'missing'));
    assert.ok(h.events.some((e) => e.kind === 'verification-done'));
    assert.equal(h.timers.live().length, 1, 're-armed');
    const snap = h.engine.snapshot();
    assert.notEqual(snap.lastVerificationRound, null);
    const m = snap.maps[0]!;
    assert.equal(m.lastVerification?.ok, true);
    assert.deepEqual(m.lastVerification?.findings.map((f) => f.kind), ['missing']);
    assert.equal(m.lastRepair?.ok, true);
    assert.deepEqual(m.lastRepair?.what.map((a) => a.path), ['sda', 'sdb']);
    await h.engine.close();
  });

  it('snapshot: complete per map and per path, JSON-serialisable; map events', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    await run(h, prOut(PrOutAction.RESERVE, { key: K1, type: 5 }));
    await h.engine.verifyNow({ wwid: WA });
    const snap = JSON.parse(JSON.stringify(h.engine.snapshot())) as ReturnType<MultipathEngine['snapshot']>;
    assert.equal(snap.state, 'running');
    assert.equal(snap.maps.length, 1);
    const m = snap.maps[0]!;
    assert.equal(m.name, 'mpatha');
    assert.equal(m.present, true);
    assert.equal(m.usablePaths, 2);
    assert.deepEqual(m.intent && { key: m.intent.key, reservation: m.intent.reservation, persisted: m.intent.persisted }, { key: '0x1111', reservation: { type: 5 }, persisted: true });
    assert.deepEqual(m.reservation, { holderKey: '0x1111', type: 5, ours: true });
    assert.equal(m.registrations.length, 2);
    assert.ok(m.registrations.every((r) => r.ours && r.transportId !== null));
    assert.equal(m.statusMethod, 'read-full-status');
    assert.deepEqual(m.paths.map((p) => [p.dev, p.usable, p.key, p.keyStatus, p.checkerState]), [
      ['sda', true, '0x1111', 'registered', 'ready'],
      ['sdb', true, '0x1111', 'registered', 'ready'],
    ]);
    assert.equal(m.lastCommand?.command, 'PR OUT RESERVE');
    assert.equal(m.counters.commands, 2);
    assert.equal(m.counters.verifications, 1);
    // A map appears and one disappears.
    h.topo.addMap(makeMap('mpathb', WB, [{ dev: 'sdc' }], '253:1'));
    h.topo.removeMap(WA);
    await h.topo.refresh();
    await h.engine.whenIdle();
    const kinds = h.events.map((e) => e.kind);
    assert.ok(kinds.includes('map-added') && kinds.includes('map-removed'));
    const after = h.engine.snapshot();
    // The removed map is still listed (its intent is kept) but not present.
    assert.deepEqual(after.maps.map((x) => [x.wwid, x.present]).sort(), [
      [WA, false],
      [WB, true],
    ]);
    await h.engine.close();
  });

  it('a listener that throws does not break the engine; listeners are bounded', async () => {
    const h = host(newLun(), 'h1', [1, 2]);
    h.engine.onEvent(() => {
      throw new Error('bad listener');
    });
    await h.engine.start();
    const r = await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    assert.equal(r.outcome.kind, 'good');
    for (let i = 0; i < 62; i++) h.engine.onEvent(() => undefined);
    assert.throws(() => h.engine.onEvent(() => undefined), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_CONFIG'));
    await h.engine.close();
  });
});

describe('MultipathBackend', () => {
  it('maps kernel and SAN multipath targets to engine keys, and nothing else', () => {
    const mp: DeviceTarget = { kind: 'multipath', name: 'dm-0', major: 253, minor: 0, map: 'mpatha', uuid: `mpath-${WA}`, slaves: ['sda'] };
    assert.deepEqual(mapKeyOf(mp), { devT: '253:0', name: 'mpatha', wwid: WA });
    assert.deepEqual(mapKeyOf({ kind: 'san-map', host: 'host1', map: 'mpathb', wwid: WB, paths: [] }), { wwid: WB, name: 'mpathb' });
    assert.equal(mapKeyOf({ kind: 'scsi', name: 'sda', major: 8, minor: 0 }), null);
    assert.equal(mapKeyOf({ kind: 'san-path', host: 'h', dev: 'sda', wwid: WA }), null);
    assert.equal(MultipathBackend.handles(mp), true);
  });

  it('answers with the target status and data cut to the allocation length; unknown maps reject', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    const backend = new MultipathBackend({ engine: h.engine });
    assert.equal(backend.name, 'multipath');
    const target: DeviceTarget = { kind: 'multipath', name: 'dm-0', major: 253, minor: 0, map: 'mpatha', uuid: `mpath-${WA}`, slaves: ['sda', 'sdb'] };
    const reg = prOut(PrOutAction.REGISTER, { saKey: K1 });
    const a = await backend.execute({ cdb: reg.cdb, dataOut: reg.dataOut, allocationLength: 0, fd: 7, target });
    assert.equal(a.status, ScsiStatus.GOOD);
    const rk = prIn(PrInAction.READ_KEYS, 12);
    const b = await backend.execute({ cdb: rk.cdb, dataOut: null, allocationLength: 12, fd: 7, target });
    assert.equal(b.status, ScsiStatus.GOOD);
    assert.equal(b.data.length, 12);
    assert.equal(b.sense.length, 96);
    const conflict = prOut(PrOutAction.REGISTER, { key: 0x77n, saKey: 0x78n });
    const c = await backend.execute({ cdb: conflict.cdb, dataOut: conflict.dataOut, allocationLength: 0, fd: 7, target });
    assert.equal(c.status, ScsiStatus.RESERVATION_CONFLICT);
    const gone: DeviceTarget = { ...target, minor: 5, map: 'mpathz', uuid: 'mpath-nothere' };
    await assert.rejects(backend.execute({ cdb: rk.cdb, dataOut: null, allocationLength: 12, fd: 7, target: gone }), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_DEVICE'));
    await assert.rejects(backend.execute({ cdb: rk.cdb, dataOut: null, allocationLength: 12, fd: 7, target: { kind: 'scsi', name: 'sda', major: 8, minor: 0 } }), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_DEVICE'));
    await h.engine.close();
  });
});

describe('two hosts, one LU, the real fan-out', () => {
  it('host2 fences host1 with PREEMPT AND ABORT; host1 does not re-register when its paths return', async () => {
    const lun = newLun();
    const h1 = host(lun, 'h1', [1, 2]);
    const h2 = host(lun, 'h2', [3, 4]);
    await h1.engine.start();
    await h2.engine.start();

    assert.equal((await run(h1, prOut(PrOutAction.REGISTER, { saKey: K1 }))).outcome.kind, 'good');
    assert.equal((await run(h1, prOut(PrOutAction.RESERVE, { key: K1, type: 5 }))).outcome.kind, 'good');
    assert.equal((await run(h2, prOut(PrOutAction.REGISTER, { saKey: K2 }))).outcome.kind, 'good');
    assert.deepEqual(keysOf(lun).sort(), [K1, K1, K2, K2]);

    // host1 loses its paths (the reason host2 fences it), then host2 fences.
    for (const d of ['sda', 'sdb']) {
      h1.io.setDown(d, true);
      h1.topo.setUsable(WA, d, false);
    }
    await h1.topo.refresh();
    const fence = await run(h2, prOut(PrOutAction.PREEMPT_AND_ABORT, { key: K2, saKey: K1, type: 5 }));
    assert.equal(fence.outcome.kind, 'good');
    assert.deepEqual(keysOf(lun), [K2, K2]);
    // host2 learnt that it now holds the reservation (read after the PREEMPT).
    const s2 = h2.engine.mapSnapshot({ wwid: WA })!;
    assert.deepEqual(s2.intent?.reservation, { type: 5 });

    // host1's paths come back; its guard must see the fence and leave the LU alone.
    for (const d of ['sda', 'sdb']) {
      h1.io.setDown(d, false);
      h1.topo.setUsable(WA, d, true);
    }
    await h1.topo.refresh();
    await h1.engine.whenIdle();
    assert.deepEqual(keysOf(lun), [K2, K2], 'host1 did not undo the fence');
    assert.equal(lun.snapshot().reservation?.key, '0x2222');
    const s1 = h1.engine.mapSnapshot({ wwid: WA })!;
    assert.equal(s1.intent?.key, null);
    assert.equal(s1.intent?.fenced?.formerKey, '0x1111');
    assert.ok(h1.events.some((e) => e.kind === 'fenced'));
    assert.deepEqual(h1.topo.announced.at(-1), { wwid: WA, map: 'mpatha', key: null });

    // The periodic verification of host1 does not bring the key back either; host2's is clean.
    h1.timers.fire();
    h2.timers.fire();
    await Promise.all([h1.engine.whenIdle(), h2.engine.whenIdle()]);
    assert.deepEqual(keysOf(lun), [K2, K2]);
    assert.deepEqual(h2.engine.mapSnapshot({ wwid: WA })!.lastVerification?.findings, []);

    // The guest of host1 reads what the LU says: only host2's key.
    const rk = await run(h1, prIn(PrInAction.READ_KEYS));
    assert.deepEqual(decodeKeys(rk.outcome), [K2, K2]);
    // Only the guest's own new REGISTER brings host1 back.
    assert.equal((await run(h1, prOut(PrOutAction.REGISTER, { saKey: K1 }))).outcome.kind, 'good');
    assert.equal(h1.engine.mapSnapshot({ wwid: WA })!.intent?.fenced, null);
    await Promise.all([h1.engine.close(), h2.engine.close()]);
  });
});

// --- rollback of a failed REGISTER, write-ahead record and recovery after a crash -----------------

/** A store that keeps the first `durable` writes and never completes any later one (the crash). */
class CrashingStore extends MemoryStore {
  constructor(
    readonly durable: number,
    initial: MapIntent[] = [],
  ) {
    super(initial);
  }
  override async save(i: MapIntent): Promise<void> {
    if (this.saved.length >= this.durable) return new Promise<void>(() => {});
    this.saved.push(i);
  }
}

/** What a restarted prmux finds on disk: the last durable write. */
function onDisk(store: MemoryStore): MapIntent[] {
  const last = store.saved.at(-1);
  return last === undefined ? [] : [last];
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await settle();
  assert.ok(cond(), what);
}

function register(lun: PrDeviceServer, io: ModelPathIo, dev: string, key: bigint): void {
  const c = prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: key });
  assert.equal(lun.execute(io.nexusOf(dev), c.cdb, c.dataOut!).kind, 'good');
}

describe('MultipathEngine: a REGISTER that fails as a whole is rolled back', () => {
  it('first REGISTER over a path that drops it while multipath calls it up: the guest gets that path failure, sda is unregistered again', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    h.io.setDown('sdb', true); // transport failures; the topology (and the recheck) still say usable
    const r = await run(h, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    assert.equal(r.outcome.kind, 'transport-failure', 'the failing path answer, as the fan-out chose it');
    assert.equal(r.decidedBy, 'sdb');
    assert.equal(h.io.keyOn('sda'), null, 'rolled back');
    assert.equal(h.io.keyOn('sdb'), null);
    const done = h.events.find((e) => e.kind === 'command-done');
    assert.ok(done && done.kind === 'command-done');
    assert.deepEqual(done.rolledBack.map((a) => [a.kind, a.path, a.ok]), [['unregister', 'sda', true]]);
    // The key the failed command may have left anywhere is the last key: stray wherever it shows up.
    const intent = h.store.saved.at(-1)!;
    assert.equal(intent.key, null);
    assert.equal(intent.lastKey, K1);
    assert.equal(intent.pending, undefined);
    // A copy that reached sdb's LU although its answer was lost is removed by the guard.
    h.io.setDown('sdb', false);
    register(lun, h.io, 'sdb', K1);
    await h.engine.verifyAll();
    assert.deepEqual(keysOf(lun), []);
    await h.engine.close();
  });

  it('key change K1 -> K2 that fails on one path: the path that took K2 gets K1 back with the previous APTPL', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    assert.equal((await run(h, prOut(PrOutAction.REGISTER, { saKey: K1, aptpl: true }))).outcome.kind, 'good');
    h.io.setDown('sdb', true);
    const r = await run(h, prOut(PrOutAction.REGISTER, { key: K1, saKey: K2 }));
    assert.notEqual(r.outcome.kind, 'good');
    assert.equal(h.io.keyOn('sda'), K1);
    assert.equal(h.io.keyOn('sdb'), K1);
    assert.equal(h.engine.mapSnapshot({ wwid: WA })!.intent?.key, '0x1111');
    const done = h.events.filter((e) => e.kind === 'command-done').at(-1)!;
    assert.ok(done.kind === 'command-done');
    const restore = done.commands.find((c) => c.role === 'repair' && c.path === 'sda');
    assert.ok(restore, 'the restoring command is reported with the command');
    // REGISTER AND IGNORE EXISTING KEY, SA key K1, APTPL as before.
    assert.equal(restore.cdb.slice(0, 4), '5f06');
    assert.equal(lun.snapshot().aptplActive, true);
    await h.engine.close();
  });

  it('a REGISTER refused on every path changes nothing and sends nothing more', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    const r = await run(h, prOut(PrOutAction.REGISTER, { key: 0x9999n, saKey: K1 }));
    assert.equal(r.outcome.kind, 'reservation-conflict');
    const done = h.events.find((e) => e.kind === 'command-done');
    assert.ok(done && done.kind === 'command-done');
    assert.deepEqual(done.rolledBack, []);
    assert.equal(h.store.saved.at(-1)?.lastKey, null);
    await h.engine.close();
  });
});

describe('MultipathEngine: write-ahead record and recovery of an interrupted command', () => {
  it('writes the record before the first command of the fan-out, and only for commands that touch several paths', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2]);
    await h.engine.start();
    const seen: (MapIntent | undefined)[] = [];
    h.io.onExec = () => seen.push(h.store.saved.at(-1));
    const reg = prOut(PrOutAction.REGISTER, { saKey: K1 });
    await run(h, reg);
    assert.deepEqual(seen[0]?.pending, { cdb: Buffer.from(reg.cdb).toString('hex'), data: Buffer.from(reg.dataOut!).toString('hex'), startedAt: T0 });
    assert.equal(seen[0]?.key, null, 'the record sits on the previous intent');
    const writes = h.store.saved.length;
    await run(h, prOut(PrOutAction.RESERVE, { key: K1, type: 5 }));
    assert.ok(h.store.saved.slice(writes).every((i) => i.pending === undefined), 'RESERVE goes down one path: no record');
    await h.engine.close();
  });

  it('killed with the second copy of a first REGISTER in flight: at restart sda is unregistered again; sdb, down then, loses the stray key on return', async () => {
    const lun = newLun();
    const store = new MemoryStore();
    // sdb's copy never completes: prmux dies with it in flight.
    const first = host(lun, 'h1', [1, 2], {
      store,
      wrapIo: (io) => ({ exec: (m, p, c, d, a, t) => (p === 'sdb' && c[0] === 0x5f ? new Promise(() => {}) : (io as PathIo).exec(m, p, c, d, a, t)) }),
    });
    await first.engine.start();
    void run(first, prOut(PrOutAction.REGISTER, { saKey: K1 }));
    await until('sda registered', () => first.io.keyOn('sda') === K1);
    const disk = onDisk(store);
    assert.ok(disk[0]?.pending !== undefined, 'the write-ahead record is what is on disk');
    // The copy reached sdb's LU after all, and sdb is down when prmux restarts.
    register(lun, first.io, 'sdb', K1);

    const h = host(lun, 'h1', [1, 2], { io: first.io, intents: disk, maps: [makeMap('mpatha', WA, [{ dev: 'sda', host: 1 }, { dev: 'sdb', host: 2, usable: false }])] });
    h.io.setDown('sdb', true);
    await h.engine.start();
    assert.equal(h.io.keyOn('sda'), null, 'rolled back before start() resolved');
    assert.equal(h.io.keyOn('sdb'), K1, 'sdb was down');
    const ev = h.events.find((e) => e.kind === 'interrupted-command-rolled-back');
    assert.ok(ev && ev.kind === 'interrupted-command-rolled-back');
    assert.equal(ev.resolution, 'rolled-back');
    assert.equal(ev.previousKey, null);
    assert.equal(ev.interruptedKey, '0x1111');
    assert.equal(ev.command, 'PR OUT REGISTER');
    const after = h.store.saved.at(-1)!;
    assert.equal(after.pending, undefined, 'the record is cleared');
    assert.equal(after.key, null);
    assert.equal(after.lastKey, K1);
    // sdb returns: the guard removes the interrupted key from it.
    h.io.setDown('sdb', false);
    h.topo.setUsable(WA, 'sdb', true);
    await h.topo.refresh();
    await h.engine.whenIdle();
    assert.deepEqual(keysOf(lun), []);
    await h.engine.close();
  });

  it('a store whose final write never happens (crash after the fan-out, before GOOD): the restart rolls K1 -> K2 back to K1 on every path', async () => {
    const lun = newLun();
    const first = host(lun, 'h1', [1, 2], { intents: [intentFor(WA, { key: K1, lastKey: K1 })], store: new CrashingStore(1, [intentFor(WA, { key: K1, lastKey: K1 })]) });
    register(lun, first.io, 'sda', K1);
    register(lun, first.io, 'sdb', K1);
    await first.engine.start();
    const store = first.store as CrashingStore;
    // Only the write-ahead record becomes durable; the command hangs on its final write.
    let answered = false;
    void run(first, prOut(PrOutAction.REGISTER, { key: K1, saKey: K2 })).then(() => (answered = true));
    await until('both paths changed', () => first.io.keyOn('sda') === K2 && first.io.keyOn('sdb') === K2);
    for (let i = 0; i < 20; i++) await settle();
    assert.equal(answered, false, 'the guest never got GOOD');
    const disk = onDisk(store);
    assert.equal(disk[0]?.key, K1);
    assert.ok(disk[0]?.pending !== undefined);

    first.io.onExec = null;
    const h = host(lun, 'h1', [1, 2], { io: first.io, intents: disk });
    await h.engine.start();
    assert.equal(h.io.keyOn('sda'), K1);
    assert.equal(h.io.keyOn('sdb'), K1);
    assert.ok(!keysOf(lun).includes(K2), 'K2 nowhere');
    const ev = h.events.find((e) => e.kind === 'interrupted-command-rolled-back');
    assert.ok(ev && ev.kind === 'interrupted-command-rolled-back' && ev.previousKey === '0x1111' && ev.interruptedKey === '0x2222');
    assert.equal(h.store.saved.at(-1)?.pending, undefined);
    assert.equal(h.store.saved.at(-1)?.key, K1);
    await h.engine.close();
  });

  it('an interrupted unregister that reached every nexus is not undone (our key is nowhere: never register it again)', async () => {
    const lun = newLun();
    const unreg = prOut(PrOutAction.REGISTER, { key: K1, saKey: 0n });
    const rec = { ...intentFor(WA, { key: K1, lastKey: K1 }), pending: { cdb: Buffer.from(unreg.cdb).toString('hex'), data: Buffer.from(unreg.dataOut!).toString('hex'), startedAt: T0 } };
    const h = host(lun, 'h1', [1, 2], { intents: [rec] });
    await h.engine.start();
    assert.deepEqual(keysOf(lun), []);
    const ev = h.events.find((e) => e.kind === 'interrupted-command-rolled-back');
    assert.ok(ev && ev.kind === 'interrupted-command-rolled-back');
    assert.equal(ev.resolution, 'unregister-completed');
    const after = h.store.saved.at(-1)!;
    assert.equal(after.key, null);
    assert.equal(after.lastKey, K1);
    assert.equal(after.pending, undefined);
    await h.engine.close();
  });

  it('an interrupted unregister that reached one path only: the previous key is registered again on every usable path', async () => {
    const lun = newLun();
    const h = host(lun, 'h1', [1, 2], { intents: [] });
    register(lun, h.io, 'sdb', K1); // sda was already unregistered when prmux died
    const unreg = prOut(PrOutAction.REGISTER, { key: K1, saKey: 0n });
    const rec = { ...intentFor(WA, { key: K1, lastKey: K1 }), pending: { cdb: Buffer.from(unreg.cdb).toString('hex'), data: Buffer.from(unreg.dataOut!).toString('hex'), startedAt: T0 } };
    const h2 = host(lun, 'h1', [1, 2], { io: h.io, intents: [rec] });
    await h2.engine.start();
    assert.equal(h2.io.keyOn('sda'), K1);
    assert.equal(h2.io.keyOn('sdb'), K1);
    assert.equal(h2.store.saved.at(-1)?.key, K1);
    await h2.engine.close();
  });
});
