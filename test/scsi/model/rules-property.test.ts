// Property test of the PR device-server model: random sequences of PR OUT / PR IN (and a few
// ordinary) commands on random nexuses, with keys from a small pool so that commands collide, on
// both personalities. The model must never throw, must answer with a ScsiOutcome kind, and the
// persistent-reservation state must stay coherent after every step (SPC-4 5.13).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PrInAction, isAllRegistrantsType, type PrType } from '../../../src/scsi/constants.js';
import { encodePrOutCdb } from '../../../src/scsi/cdb.js';
import { formatOutcome } from '../../../src/scsi/outcome.js';
import type { ScsiOutcome, TransportId } from '../../../src/scsi/types.js';
import { LunHarness, makeLun, sasInitiator } from '../../support/lun-harness.js';

const KINDS: ReadonlySet<ScsiOutcome['kind']> = new Set(['good', 'check-condition', 'reservation-conflict', 'busy', 'task-set-full', 'transport-failure']);

// Paths p1..p4 issue commands; p1 and p2 share initiator port 1 (so ALL_TG_PT fans out), p3 and
// p4 have ports 2 and 3. p5 (initiator port 9, never named by SPEC_I_PT or REGISTER AND MOVE) only
// observes: it never registers, so only a power cycle queues a unit attention on it.
const ACTORS = ['p1', 'p2', 'p3', 'p4'] as const;
const OBSERVER = 'p5';
const INITIATORS = [1, 1, 2, 3, 9];
const KEY_POOL = [0n, 0xa1n, 0xa2n, 0xa3n];

/** A reservation key: a value from the pool, or whatever the issuing nexus is registered with now. */
type KeyChoice = bigint | 'own';

type Command =
  | {
      readonly op: 'prout';
      readonly path: string;
      readonly sa: number;
      readonly type: number;
      readonly scope: number;
      readonly key: KeyChoice;
      readonly saKey: bigint;
      readonly aptpl: boolean;
      readonly allTgPt: boolean;
      readonly specIPt: readonly number[] | null;
      readonly lengthDelta: number;
    }
  | {
      readonly op: 'move';
      /** 'holder': whichever nexus holds the reservation when the command runs. */
      readonly path: string | 'holder';
      readonly key: KeyChoice;
      readonly saKey: bigint;
      /** A path of the LU, or [initiator port, relative target port] (possibly unknown). */
      readonly to: string | readonly [number, number];
      readonly unreg: boolean;
      readonly aptpl: boolean;
    }
  | { readonly op: 'prin'; readonly path: string; readonly sa: number; readonly alloc: number }
  | { readonly op: 'io'; readonly path: string; readonly write: boolean }
  | { readonly op: 'power-cycle' }
  | { readonly op: 'remove-add'; readonly path: string };

const path = fc.constantFrom(...ACTORS);
const poolKey = fc.constantFrom(...KEY_POOL);
const key: fc.Arbitrary<KeyChoice> = fc.oneof({ weight: 3, arbitrary: fc.constant('own' as const) }, { weight: 2, arbitrary: poolKey });
const prType = fc.oneof({ weight: 12, arbitrary: fc.constantFrom(1, 3, 5, 6, 7, 8) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 15 }) });
/** Mostly REGISTER / REGISTER AND IGNORE / RESERVE so that state builds up; now and then an invalid one. */
const proutSa = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom(0, 6) },
  { weight: 3, arbitrary: fc.constant(1) },
  { weight: 5, arbitrary: fc.constantFrom(2, 3, 4, 5) },
  { weight: 1, arbitrary: fc.integer({ min: 7, max: 0x1f }) },
);

const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 14,
    arbitrary: fc.record({
      op: fc.constant('prout' as const),
      path,
      sa: proutSa,
      type: prType,
      scope: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 15 }) }),
      key,
      saKey: poolKey,
      aptpl: fc.boolean(),
      allTgPt: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      specIPt: fc.oneof(
        { weight: 8, arbitrary: fc.constant(null) },
        // Initiator ports 1..3 exist; 7 does not.
        { weight: 1, arbitrary: fc.array(fc.constantFrom(1, 2, 3, 7), { maxLength: 2 }) },
      ),
      lengthDelta: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -24, max: 8 }) }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('move' as const),
      path: fc.oneof({ weight: 3, arbitrary: fc.constant('holder' as const) }, { weight: 1, arbitrary: path }),
      key,
      saKey: poolKey,
      to: fc.oneof(
        { weight: 4, arbitrary: path },
        { weight: 1, arbitrary: fc.tuple(fc.constantFrom(1, 2, 3, 7), fc.integer({ min: 0, max: 5 })) },
      ),
      unreg: fc.boolean(),
      aptpl: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('prin' as const),
      path,
      sa: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 3 }) }, { weight: 1, arbitrary: fc.integer({ min: 4, max: 0x1f }) }),
      alloc: fc.oneof(fc.constant(0xffff), fc.integer({ min: 0, max: 64 })),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('io' as const), path, write: fc.boolean() }) },
);

/** Now and then a power cycle, rarer than the rest so that state can build up between them. */
const commands = fc.array(
  fc.oneof(
    { weight: 50, arbitrary: command },
    { weight: 1, arbitrary: fc.constant({ op: 'power-cycle' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('remove-add' as const), path }) },
  ),
  {
    minLength: 10,
    maxLength: 60,
  },
);

function resolveKey(lun: LunHarness, pathId: string, k: KeyChoice): bigint {
  if (k !== 'own') return k;
  const reg = lun.snapshot().registrations.find((r) => r.nexusId === pathId);
  return reg ? BigInt(reg.key) : 0n;
}

function run(lun: LunHarness, c: Command): ScsiOutcome | null {
  switch (c.op) {
    case 'prout': {
      const specIPt: TransportId[] | undefined = c.specIPt === null ? undefined : c.specIPt.map(sasInitiator);
      const params = LunHarness.params(resolveKey(lun, c.path, c.key), c.saKey, { aptpl: c.aptpl, allTgPt: c.allTgPt, ...(specIPt ? { specIPt } : {}) });
      const length = Math.max(0, params.length + c.lengthDelta);
      // A wrong PARAMETER LIST LENGTH sends the list cut short or zero-padded (malformed on purpose).
      const bytes = new Uint8Array(length);
      bytes.set(params.subarray(0, Math.min(length, params.length)));
      const cdb = encodePrOutCdb({ serviceAction: c.sa, type: c.type, scope: c.scope, parameterListLength: length });
      return lun.exec(c.path, cdb, bytes);
    }
    case 'move': {
      const from = c.path === 'holder' ? (lun.snapshot().reservation?.holderNexusId ?? 'p1') : c.path;
      return lun.registerAndMove(from, {
        key: resolveKey(lun, from, c.key),
        saKey: c.saKey,
        to: typeof c.to === 'string' ? c.to : { transportId: sasInitiator(c.to[0]), relativeTargetPortId: c.to[1] },
        unreg: c.unreg,
        aptpl: c.aptpl,
      });
    }
    case 'prin':
      return lun.prIn(c.path, c.sa, c.alloc);
    case 'io':
      return c.write ? lun.write10(c.path) : lun.read10(c.path);
    case 'power-cycle':
      lun.ds.powerCycle();
      return null;
    case 'remove-add':
      // The path goes away (LIO frees its registration on a LUN unlink) and comes back unregistered.
      lun.ds.removeNexus(c.path);
      lun.ds.addNexus({ id: c.path, initiator: lun.initiator(c.path), relativeTargetPortId: lun.rtpi(c.path) });
      return null;
  }
}

/**
 * Whether a REGISTER with SPEC_I_PT has succeeded in this run: only then may the lio personality hold
 * two registrations for one nexus (LIO 11: a TransportID naming the issuing nexus, or naming an
 * initiator port twice, registers that nexus again). The second copy is another registration to
 * LIO, so a PR OUT from that nexus can also queue a unit attention for it (CLEAR: 2A/03 to every
 * registration but the issuer's).
 */
function specIPtRegistered(c: Command, o: ScsiOutcome | null): boolean {
  return c.op === 'prout' && c.sa === 0 && c.specIPt !== null && o?.kind === 'good';
}

function checkInvariants(lun: LunHarness, prevGeneration: number, powerCycled: boolean, duplicatesAllowed: boolean, where: string): number {
  const snap = lun.snapshot();
  const ids = snap.registrations.map((r) => r.nexusId);
  if (!duplicatesAllowed) assert.equal(new Set(ids).size, ids.length, `${where}: at most one registration per nexus (${ids.join(',')})`);
  assert.ok(!ids.includes(OBSERVER), `${where}: the observer never registers`);
  const res = snap.reservation;
  if (res !== null) {
    assert.ok(ids.length > 0, `${where}: a reservation exists only with at least one registration`);
    // A non-AR holder is registered; under AR the registration the type is kept with is one of the registrants.
    assert.ok(ids.includes(res.holderNexusId), `${where}: holder ${res.holderNexusId} is registered (type ${res.type})`);
    if (!isAllRegistrantsType(res.type as PrType)) {
      const holderKey = snap.registrations.find((r) => r.nexusId === res.holderNexusId)?.key;
      assert.equal(res.key, holderKey, `${where}: a non-AR reservation reads the holder's key`);
    } else {
      assert.equal(res.key, '0x0', `${where}: an AR reservation reads key 0`);
    }
    assert.ok([1, 3, 5, 6, 7, 8].includes(res.type), `${where}: reservation type ${res.type} is a valid type`);
    assert.equal(res.scope, 0, `${where}: LU_SCOPE`);
  }
  if (powerCycled) assert.equal(snap.generation, 0, `${where}: a power cycle restarts PRGENERATION at 0`);
  else assert.ok(snap.generation >= prevGeneration, `${where}: PRGENERATION never decreases (${prevGeneration} -> ${snap.generation})`);

  // What the observer reads agrees with the state. It has a unit attention only after a power cycle.
  lun.drainUnitAttentions(OBSERVER);
  const rk = lun.readKeys(OBSERVER);
  assert.equal(rk.keys.length, snap.registrations.length, `${where}: READ KEYS count equals the registration count`);
  assert.deepEqual(rk.keys.map((k) => '0x' + k.toString(16)), snap.registrations.map((r) => r.key), `${where}: READ KEYS keys`);
  assert.equal(rk.generation, snap.generation, `${where}: READ KEYS PRGENERATION`);
  const rr = lun.readReservation(OBSERVER);
  assert.equal(rr.reservation === null, res === null, `${where}: READ RESERVATION agrees`);
  if (rr.reservation && res) assert.equal(rr.reservation.type, res.type);
  const fs = lun.readFullStatus(OBSERVER);
  assert.equal(fs.descriptors.length, snap.registrations.length, `${where}: READ FULL STATUS descriptor count`);
  if (res !== null) {
    const holders = fs.descriptors.filter((d) => d.reservationHolder).length;
    if (isAllRegistrantsType(res.type as PrType)) assert.equal(holders, fs.descriptors.length, `${where}: every AR registrant is R_HOLDER`);
    else assert.equal(holders, 1, `${where}: exactly one R_HOLDER`);
  } else {
    assert.ok(fs.descriptors.every((d) => !d.reservationHolder), `${where}: no R_HOLDER without a reservation`);
  }
  return snap.generation;
}

/** The PR state proper, without the unit-attention queues (which any command may consume). */
function prState(lun: LunHarness): unknown {
  const { generation, aptplActive, registrations, reservation } = lun.snapshot();
  return { generation, aptplActive, registrations, reservation };
}

/** Invariants relating the state before and after one command (SPC-4 5.13, 6.15.2). */
function checkStep(
  lun: LunHarness,
  c: Command,
  o: ScsiOutcome | null,
  before: ReturnType<LunHarness['snapshot']>,
  beforeState: unknown,
  duplicatesAllowed: boolean,
  where: string,
): void {
  const after = lun.snapshot();
  if (c.op === 'prin' || c.op === 'io' || (o !== null && o.kind !== 'good')) {
    // PR IN and ordinary commands never change PR state; neither does a PR OUT that failed
    // (CHECK CONDITION or RESERVATION CONFLICT): no registration, no reservation, no PRGENERATION step.
    assert.deepEqual(prState(lun), beforeState, `${where}: ${o ? formatOutcome(o) : ''} left the PR state alone`);
  }
  if (c.op === 'prout' && o?.kind === 'good' && (c.sa === 1 || c.sa === 2)) {
    assert.equal(after.generation, before.generation, `${where}: RESERVE / RELEASE do not bump PRGENERATION`);
  }
  const issuer = c.op === 'prout' ? c.path : c.op === 'move' ? (c.path === 'holder' ? (before.reservation?.holderNexusId ?? 'p1') : c.path) : null;
  const issuerRegistrations = before.registrations.filter((r) => r.nexusId === issuer).length;
  if (issuer !== null && (before.unitAttentions[issuer] ?? []).length === 0 && !(duplicatesAllowed && issuerRegistrations > 1)) {
    // No PR OUT service action establishes a unit attention for the nexus that sent it.
    assert.deepEqual(after.unitAttentions[issuer] ?? [], [], `${where}: the issuer got no unit attention`);
  }
  const was = before.reservation;
  if (was !== null && isAllRegistrantsType(was.type as PrType) && after.reservation === null && after.registrations.length > 0) {
    // An All Registrants reservation ends with its last registrant (5.13.10), or by RELEASE / CLEAR.
    assert.ok(c.op === 'prout' && c.sa === 2 && o?.kind === 'good', `${where}: an All Registrants reservation vanished while registrants remain`);
  }
}

for (const personality of ['lio', 'spc4'] as const) {
  test(`${personality}: random PR command sequences never throw and keep the PR state coherent`, () => {
    fc.assert(
      fc.property(commands, (cmds) => {
        const lun = makeLun({ personality, paths: 5, initiators: INITIATORS });
        let gen = 0;
        let duplicatesAllowed = false;
        cmds.forEach((c, i) => {
          const where = `step ${i} ${JSON.stringify(c, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))}`;
          const before = lun.snapshot();
          const beforeState = prState(lun);
          const o = run(lun, c);
          if (o !== null) assert.ok(KINDS.has(o.kind), `${where}: outcome ${formatOutcome(o)}`);
          checkStep(lun, c, o, before, beforeState, duplicatesAllowed, where);
          if (personality === 'lio' && specIPtRegistered(c, o)) duplicatesAllowed = true;
          gen = checkInvariants(lun, gen, c.op === 'power-cycle', duplicatesAllowed, where);
        });
      }),
      { numRuns: 300 },
    );
  });
}

test('the observer reads through every reservation type (PR IN is allowed to an unregistered nexus)', () => {
  // Guards the property test's premise: if PR IN from an unregistered nexus conflicted, the
  // invariant checks would fail for the wrong reason.
  for (const personality of ['lio', 'spc4'] as const) {
    for (const type of [1, 3, 5, 6, 7, 8]) {
      const lun = makeLun({ personality, paths: 5, initiators: INITIATORS });
      lun.register('p1', 0xa1n);
      lun.reserve('p1', 0xa1n, type);
      assert.equal(lun.prIn(OBSERVER, PrInAction.READ_FULL_STATUS).kind, 'good');
      assert.equal(lun.snapshot().reservation?.type, type);
    }
  }
});
