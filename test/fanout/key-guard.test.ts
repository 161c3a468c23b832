// The key consistency guard on the PR model: registration of a returning path, the fence it must
// never undo, and periodic verification (missing, stray, reservation lost or preempted), with the
// READ KEYS fallback for targets without READ FULL STATUS.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { emptyIntent, type MapIntent } from '../../src/fanout/intent.js';
import { type GuardEvent, KeyGuard } from '../../src/fanout/key-guard.js';
import type { MapInfo, PathCommand, PathIo } from '../../src/fanout/types.js';
import { Asc, PrInAction, PrOutAction, SenseKey } from '../../src/scsi/constants.js';
import { checkCondition } from '../../src/scsi/outcome.js';
import type { PrDeviceServer } from '../../src/scsi/model/device-server.js';
import { FakeTopology, makeMap } from './fake-topology.js';
import { keysOf, ModelPathIo, newLun, prOut } from './guard-fixtures.js';

const W = '360014056001405c0ffee000000000000';
const K1 = 0x1111n;
const K2 = 0x2222n;
const T0 = '2024-01-01T00:00:00.000Z';

interface Rig {
  lun: PrDeviceServer;
  io: ModelPathIo;
  topo: FakeTopology;
  guard: KeyGuard;
  events: GuardEvent[];
  saved: MapIntent[];
  clock: { t: number };
  map(): MapInfo;
  failSaves: boolean;
}

async function rig(opts: { personality?: 'lio' | 'spc4'; io?: (io: ModelPathIo) => PathIo; sameInitiator?: boolean } = {}): Promise<Rig> {
  const lun = newLun(opts.personality ?? 'spc4');
  const io = new ModelPathIo(lun, 'h1', [
    { dev: 'sda', initiatorPort: 1, relativeTargetPortId: 1 },
    { dev: 'sdb', initiatorPort: opts.sameInitiator === true ? 1 : 2, relativeTargetPortId: 2 },
  ]);
  const topo = new FakeTopology([makeMap('mpatha', W, [{ dev: 'sda', host: 1 }, { dev: 'sdb', host: opts.sameInitiator === true ? 1 : 2 }])]);
  await topo.refresh();
  const events: GuardEvent[] = [];
  const saved: MapIntent[] = [];
  const clock = { t: 1000 };
  const r: Rig = {
    lun,
    io,
    topo,
    events,
    saved,
    clock,
    failSaves: false,
    map: () => topo.maps().find((m) => m.wwid === W)!,
    guard: undefined as unknown as KeyGuard,
  };
  r.guard = new KeyGuard({
    io: opts.io ? opts.io(io) : io,
    topology: topo,
    store: {
      save: async (i) => {
        if (r.failSaves) throw new Error('read-only file system');
        saved.push(i);
      },
    },
    now: () => clock.t,
    wallClock: () => Date.parse(T0),
    emit: (e) => events.push(e),
  });
  return r;
}

/** What the fan-out would have done for the guest: the key on the named paths of host `io`. */
function registerDirect(io: ModelPathIo, key: bigint, devs: readonly string[], allTgPt = false): void {
  for (const d of devs) {
    const c = prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: key, allTgPt });
    const o = io.lun.execute(io.nexusOf(d), c.cdb, c.dataOut!);
    assert.equal(o.kind, 'good', `register ${d}`);
  }
}

function intentWith(over: Partial<MapIntent>): MapIntent {
  return { ...emptyIntent(W, 'mpatha', T0), ...over };
}

function kinds(events: readonly GuardEvent[]): string[] {
  return events.map((e) => e.kind);
}

describe('KeyGuard: a path comes back', () => {
  it('registers the key on a re-added path at once and measures the delay from the event', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda', 'sdb']);
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    // Hot removal and re-add (LUN unlinked and linked again): the nexus lost its registration.
    r.io.removePath('sdb');
    r.io.addPath({ dev: 'sdb', initiatorPort: 2, relativeTargetPortId: 2 });
    assert.equal(r.io.keyOn('sdb'), null);
    const since = r.clock.t;
    r.clock.t += 40;
    const reports = await r.guard.registerPaths(r.map(), [{ dev: 'sdb', since, trigger: 'path-added' }]);
    assert.equal(r.io.keyOn('sdb'), K1);
    assert.equal(reports.length, 1);
    assert.equal(reports[0]!.ok, true);
    assert.equal(reports[0]!.latencyMs, 40);
    const added = r.events.find((e) => e.kind === 'registration-added');
    assert.ok(added && added.kind === 'registration-added');
    assert.equal(added.path, 'sdb');
    assert.equal(added.key, '0x1111');
    const st = r.guard.stateOf(W)!;
    assert.equal(st.paths.get('sdb')?.status, 'registered');
    assert.equal(st.registrationLatency.maxMs, 40);
    assert.equal(st.counters.registrationsAdded, 1);
  });

  it('does nothing for a map with no key in its intent, nor for a path that is not usable', async () => {
    const r = await rig();
    r.guard.load([intentWith({})]);
    assert.deepEqual(await r.guard.registerPaths(r.map(), [{ dev: 'sda', since: null, trigger: 'path-usable' }]), []);
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    r.topo.setUsable(W, 'sda', false);
    await r.topo.refresh();
    assert.deepEqual(await r.guard.registerPaths(r.map(), [{ dev: 'sda', since: null, trigger: 'path-usable' }]), []);
    assert.equal(r.io.log.length, 0);
  });

  it('does NOT re-register after another host fenced us (PREEMPT AND ABORT of our key)', async () => {
    const r = await rig();
    const h2 = new ModelPathIo(r.lun, 'h2', [{ dev: 'sdc', initiatorPort: 3, relativeTargetPortId: 1 }]);
    registerDirect(r.io, K1, ['sda', 'sdb']);
    registerDirect(h2, K2, ['sdc']);
    r.guard.load([intentWith({ key: K1, lastKey: K1, reservation: { type: 5 } })]);
    const fence = prOut(PrOutAction.PREEMPT_AND_ABORT, { key: K2, saKey: K1, type: 5 });
    assert.equal(r.lun.execute(h2.nexusOf('sdc'), fence.cdb, fence.dataOut!).kind, 'good');
    // Our paths bounce; one comes back.
    const reports = await r.guard.registerPaths(r.map(), [{ dev: 'sdb', since: r.clock.t, trigger: 'path-usable' }]);
    assert.deepEqual(keysOf(r.lun), [K2], 'our key must stay off the LU');
    assert.equal(reports[0]!.ok, false);
    const intent = r.guard.intentOf(W)!;
    assert.equal(intent.key, null);
    assert.equal(intent.reservation, null);
    assert.equal(intent.fenced?.formerKey, K1);
    assert.ok(kinds(r.events).includes('fenced'));
    assert.ok(r.events.some((e) => e.kind === 'drift-found' && e.finding.kind === 'fenced'));
    // multipathd is told to forget the key, so its own reinstate registration cannot undo the fence.
    assert.deepEqual(r.topo.announced.at(-1), { wwid: W, map: 'mpatha', key: null });
    assert.equal(r.saved.at(-1)?.key, null);
    // And the next return does not register either.
    await r.guard.registerPaths(r.map(), [{ dev: 'sda', since: null, trigger: 'path-usable' }]);
    assert.deepEqual(keysOf(r.lun), [K2]);
  });

  it('a returning path that still carries our old key after we unregistered is cleaned', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sdb']);
    r.guard.load([intentWith({ key: null, lastKey: K1 })]);
    await r.guard.registerPaths(r.map(), [{ dev: 'sdb', since: null, trigger: 'path-usable' }]);
    assert.deepEqual(keysOf(r.lun), []);
    assert.ok(r.events.some((e) => e.kind === 'drift-found' && e.finding.kind === 'stray'));
    assert.ok(r.events.some((e) => e.kind === 'registration-repaired' && e.action.kind === 'unregister' && e.action.ok));
  });
});

describe('KeyGuard: verification', () => {
  it('finds our key missing on a usable path and registers it on every usable path', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda']);
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.equal(rep.method, 'read-full-status');
    assert.deepEqual(rep.findings.map((f) => f.kind), ['missing']);
    assert.equal(rep.ourRegistrations, 1);
    assert.equal(rep.expectedRegistrations, 2);
    assert.equal(rep.ok, true);
    assert.equal(r.io.keyOn('sda'), K1);
    assert.equal(r.io.keyOn('sdb'), K1);
    assert.deepEqual(rep.repairs.map((a) => [a.kind, a.path, a.ok]), [
      ['register', 'sda', true],
      ['register', 'sdb', true],
    ]);
    assert.ok(r.events.some((e) => e.kind === 'drift-found' && e.finding.kind === 'missing'));
    assert.equal(r.events.filter((e) => e.kind === 'registration-repaired').length, 2);
    assert.equal(r.events.at(-1)?.kind, 'verification-done');
    assert.equal(r.guard.stateOf(W)!.lastRepair?.trigger, 'verification');
    // A second round finds nothing.
    const again = await r.guard.verify(r.map());
    assert.deepEqual(again.findings, []);
    assert.equal(again.ok, true);
    assert.equal(again.ourRegistrations, 2);
  });

  it('without repair, only reports', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda']);
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map(), { repair: false });
    assert.deepEqual(rep.findings.map((f) => f.kind), ['missing']);
    assert.equal(rep.ok, false);
    assert.equal(r.io.keyOn('sdb'), null);
  });

  it('finds a stray registration of our last key and removes it', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sdb']);
    r.guard.load([intentWith({ key: null, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['stray']);
    assert.deepEqual(keysOf(r.lun), []);
    assert.ok(rep.repairs.every((a) => a.kind === 'unregister' && a.ok));
  });

  it('removes a stray ALL_TG_PT registration on LIO (which refuses REGISTER AND IGNORE without the bit)', async () => {
    const r = await rig({ personality: 'lio', sameInitiator: true });
    registerDirect(r.io, K1, ['sda'], true);
    assert.deepEqual(keysOf(r.lun), [K1, K1], 'LIO registers the initiator port on both target ports');
    r.guard.load([intentWith({ key: null, lastKey: K1, allTgPt: false })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['stray']);
    assert.deepEqual(keysOf(r.lun), []);
  });

  it('takes a lost reservation back with RESERVE', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda', 'sdb']);
    r.guard.load([intentWith({ key: K1, lastKey: K1, reservation: { type: 5 } })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['reservation-lost']);
    const res = r.lun.snapshot().reservation;
    assert.equal(res?.type, 5);
    assert.equal(res?.key, '0x1111');
    assert.deepEqual(rep.repairs.map((a) => [a.kind, a.ok]), [['reserve', true]]);
    assert.deepEqual(r.guard.intentOf(W)!.reservation, { type: 5 });
  });

  it('does not fight for a reservation another key holds: records that we were preempted', async () => {
    const r = await rig();
    const h2 = new ModelPathIo(r.lun, 'h2', [{ dev: 'sdc', initiatorPort: 3, relativeTargetPortId: 1 }]);
    registerDirect(r.io, K1, ['sda', 'sdb']);
    registerDirect(h2, K2, ['sdc']);
    const reserve = prOut(PrOutAction.RESERVE, { key: K2, type: 5 });
    assert.equal(r.lun.execute(h2.nexusOf('sdc'), reserve.cdb, reserve.dataOut!).kind, 'good');
    r.guard.load([intentWith({ key: K1, lastKey: K1, reservation: { type: 5 } })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['reservation-preempted']);
    assert.equal(rep.findings[0]!.holderKey, '0x2222');
    assert.deepEqual(rep.repairs, []);
    assert.equal(r.lun.snapshot().reservation?.key, '0x2222');
    assert.equal(r.guard.intentOf(W)!.reservation, null);
    assert.equal(r.guard.intentOf(W)!.key, K1);
  });

  it('records a reservation we hold that the intent did not know of', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda', 'sdb']);
    const reserve = prOut(PrOutAction.RESERVE, { key: K1, type: 1 });
    assert.equal(r.lun.execute(r.io.nexusOf('sda'), reserve.cdb, reserve.dataOut!).kind, 'good');
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['reservation-unrecorded']);
    assert.deepEqual(r.guard.intentOf(W)!.reservation, { type: 1 });
  });

  it('our key registered nowhere is a fence: recorded, nothing registered', async () => {
    const r = await rig();
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['fenced']);
    assert.deepEqual(keysOf(r.lun), []);
    assert.equal(r.guard.intentOf(W)!.key, null);
    assert.ok(r.guard.intentOf(W)!.fenced);
  });

  it('falls back to READ KEYS + READ RESERVATION when the target refuses READ FULL STATUS, and remembers it', async () => {
    let rfsTried = 0;
    const r = await rig({
      io: (inner) => ({
        exec: async (map, path, cdb, data, alloc) => {
          if (cdb[0] === 0x5e && (cdb[1]! & 0x1f) === PrInAction.READ_FULL_STATUS) {
            rfsTried++;
            return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
          }
          return inner.exec(map, path, cdb, data, alloc);
        },
      }),
    });
    registerDirect(r.io, K1, ['sda']);
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.equal(rep.method, 'read-keys');
    assert.deepEqual(rep.findings.map((f) => f.kind), ['missing']);
    assert.equal(r.io.keyOn('sdb'), K1);
    assert.equal(r.guard.stateOf(W)!.fullStatusSupported, false);
    await r.guard.verify(r.map());
    assert.equal(rfsTried, 1);
  });

  it('reads through the next usable path when one fails, and consumes unit attentions', async () => {
    const r = await rig();
    registerDirect(r.io, K1, ['sda', 'sdb']);
    r.lun.queueUnitAttention(r.io.nexusOf('sdb'), Asc.I_T_NEXUS_LOSS);
    r.io.setDown('sda', true); // the checker has not noticed yet: still "usable"
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    const rep = await r.guard.verify(r.map());
    assert.equal(rep.via, 'sdb');
    assert.deepEqual(rep.findings, []);
    assert.ok(rep.commands.some((c) => c.path === 'sda' && c.outcome.kind === 'transport-failure'));
    assert.ok(rep.commands.some((c) => c.path === 'sdb' && c.outcome.kind === 'check-condition'));
  });

  it('no usable path: reported, nothing sent', async () => {
    const r = await rig();
    r.guard.load([intentWith({ key: K1, lastKey: K1 })]);
    r.topo.setUsable(W, 'sda', false);
    r.topo.setUsable(W, 'sdb', false);
    await r.topo.refresh();
    const rep = await r.guard.verify(r.map());
    assert.deepEqual(rep.findings.map((f) => f.kind), ['no-usable-path']);
    assert.equal(rep.ok, false);
    assert.equal(r.io.log.length, 0);
    assert.equal(r.guard.intentOf(W)!.key, K1, 'unverifiable is not fenced');
  });
});

describe('KeyGuard: intent bookkeeping', () => {
  it('announces the key to multipathd when it changes, and survives multipathd not answering', async () => {
    const r = await rig();
    await r.guard.commit(r.map(), intentWith({ key: K1, lastKey: K1 }));
    assert.deepEqual(r.topo.announced, [{ wwid: W, map: 'mpatha', key: K1 }]);
    await r.guard.commit(r.map(), intentWith({ key: K1, lastKey: K1, reservation: { type: 5 } }));
    assert.equal(r.topo.announced.length, 1, 'same key: nothing to announce');
    r.topo.failAnnounce = true;
    await r.guard.commit(r.map(), intentWith({ key: K2, lastKey: K2 }));
    assert.equal(r.guard.intentOf(W)!.key, K2);
  });

  it('keeps an intent it could not write and writes it again on flushDirty()', async () => {
    const r = await rig();
    r.failSaves = true;
    await r.guard.commit(r.map(), intentWith({ key: K1, lastKey: K1 }));
    assert.equal(r.guard.stateOf(W)!.persisted, false);
    assert.equal(r.guard.intentOf(W)!.key, K1);
    r.failSaves = false;
    await r.guard.flushDirty();
    assert.equal(r.guard.stateOf(W)!.persisted, true);
    assert.equal(r.saved.at(-1)?.key, K1);
  });
});

describe('KeyGuard: rollback helpers', () => {
  it('writeAhead saves the current intent with the record and leaves the in-memory intent alone; a failed write is reported, not thrown', async () => {
    const r = await rig();
    r.guard.load([{ ...emptyIntent(W, 'mpatha', T0), key: K1, lastKey: K1 }]);
    const pending = { cdb: '5f000000000000001800', data: null, startedAt: T0 };
    assert.equal(await r.guard.writeAhead(r.map(), pending), true);
    assert.deepEqual(r.saved.at(-1)?.pending, pending);
    assert.equal(r.saved.at(-1)?.key, K1);
    assert.equal(r.guard.intentOf(W)?.pending, undefined);
    r.failSaves = true;
    assert.equal(await r.guard.writeAhead(r.map(), pending), false);
    assert.equal(r.guard.stateOf(W)?.counters.intentWriteFailures, 1);
    // commit with force replaces the record even though the intent did not change.
    r.failSaves = false;
    await r.guard.commit(r.map(), r.guard.intentOf(W)!, { force: true });
    assert.equal(r.saved.at(-1)?.pending, undefined);
  });

  it('restorePaths puts the previous key back (or removes ours) on the given paths only, reporting each as a repair', async () => {
    const r = await rig();
    r.guard.load([{ ...emptyIntent(W, 'mpatha', T0), key: K1, lastKey: K1 }]);
    for (const dev of ['sda', 'sdb']) {
      const c = prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: K2 });
      assert.equal(r.lun.execute(r.io.nexusOf(dev), c.cdb, c.dataOut!).kind, 'good');
    }
    const out: PathCommand[] = [];
    const back = await r.guard.restorePaths(r.map(), ['sda'], K1, { aptpl: false, allTgPt: false }, 'rollback', out);
    assert.deepEqual(back.map((a) => [a.kind, a.path, a.key, a.ok]), [['register', 'sda', '0x1111', true]]);
    assert.equal(r.io.keyOn('sda'), K1);
    assert.equal(r.io.keyOn('sdb'), K2, 'not a path it was given');
    const gone = await r.guard.restorePaths(r.map(), ['sdb'], null, { aptpl: false, allTgPt: false }, 'interrupted-command', out);
    assert.deepEqual(gone.map((a) => [a.kind, a.path, a.ok]), [['unregister', 'sdb', true]]);
    assert.equal(r.io.keyOn('sdb'), null);
    assert.equal(out.length, 2);
    assert.equal(r.guard.stateOf(W)?.lastRepair?.trigger, 'interrupted-command');
    assert.equal(r.guard.stateOf(W)?.paths.get('sdb')?.status, 'unregistered');
    assert.ok(r.events.filter((e) => e.kind === 'registration-repaired').length === 2);
  });
});
