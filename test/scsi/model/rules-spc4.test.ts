// The persistent-reservation rules of shared/reference/spc-pr-cheatsheet.md (and the SPC-4 clauses
// behind them) on the strict 'spc4' personality of the device-server model, one rule per test.
// Clause numbers are spc4r37 (5.13 persistent reservations, 6.15 PR IN, 6.16 PR OUT).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Asc, PrInAction, PrOutAction, PrType, SenseKey, PR_TYPES } from '../../../src/scsi/constants.js';
import { encodePrInCdb } from '../../../src/scsi/cdb.js';
import { decodeReadFullStatus, decodeReadKeys, decodeReadReservation } from '../../../src/scsi/prin-data.js';
import { readU32 } from '../../../src/scsi/bytes.js';
import { PrDeviceServer } from '../../../src/scsi/model/device-server.js';
import {
  FULL_ALLOCATION,
  LunHarness,
  expectConflict,
  expectGood,
  expectIllegal,
  expectSense,
  expectUa,
  makeLun,
  sasInitiator,
} from '../../support/lun-harness.js';

const A = 0xa1n;
const B = 0xa2n;
const C = 0xa3n;
const D = 0xa4n;

const personality = 'spc4' as const;
const NON_AR_TYPES = [PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY];
const AR_TYPES = [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS];
const RO_AR_TYPES = [5, 6, 7, 8];

/** A LU with `paths` nexuses and the given registrations made in order (all must succeed). */
function lunWith(paths: number, regs: ReadonlyArray<readonly [string, bigint]>, extra: Parameters<typeof makeLun>[0] = {}): LunHarness {
  const lun = makeLun({ personality, paths, ...extra });
  for (const [path, key] of regs) expectGood(lun.register(path, key), `REGISTER ${key.toString(16)} on ${path}`);
  return lun;
}

function keysOf(lun: LunHarness, path: string): bigint[] {
  return [...lun.readKeys(path).keys];
}

// ---------------------------------------------------------------------------------------------------
describe('spc4: registration is per I_T nexus (5.13.7)', () => {
  test('READ KEYS lists the key once per registered nexus, in registration order', () => {
    const lun = lunWith(4, [['p3', B], ['p1', A], ['p4', A], ['p2', C]]);
    assert.deepEqual(keysOf(lun, 'p1'), [B, A, A, C]);
    const fs = lun.readFullStatus('p2');
    assert.deepEqual(
      fs.descriptors.map((d) => [d.key, d.relativeTargetPortId, d.transportId]),
      [[B, 3, sasInitiator(3)], [A, 1, sasInitiator(1)], [A, 4, sasInitiator(4)], [C, 2, sasInitiator(2)]],
    );
    // A key registered through every path appears once per path.
    const all = lunWith(4, [['p1', A], ['p2', A], ['p3', A], ['p4', A]]);
    assert.deepEqual(keysOf(all, 'p1'), [A, A, A, A]);
  });

  test('an unregistered nexus: REGISTER with a non-zero RESERVATION KEY conflicts, REGISTER 0 -> 0 is a GOOD no-op', () => {
    const lun = lunWith(3, [['p1', A]]);
    const gen = lun.generation('p3');
    expectConflict(lun.register('p2', B, { key: A }));
    expectConflict(lun.register('p2', B, { key: B }));
    expectGood(lun.register('p2', 0n));
    const rk = lun.readKeys('p3');
    assert.deepEqual(rk.keys, [A]);
    assert.equal(rk.generation, gen, 'neither a conflicting REGISTER nor the 0 -> 0 no-op bumps PRGENERATION');
  });

  test('a registered nexus: REGISTER with another RESERVATION KEY conflicts; the right key replaces it', () => {
    const lun = lunWith(2, [['p1', A], ['p2', B]]);
    expectConflict(lun.register('p1', C, { key: B }));
    expectConflict(lun.register('p1', C, { key: 0n }));
    assert.deepEqual(keysOf(lun, 'p1'), [A, B]);
    expectGood(lun.register('p1', C, { key: A }));
    assert.deepEqual(keysOf(lun, 'p1'), [C, B], 'the key changes in place, registration order kept');
  });

  test('REGISTER AND IGNORE EXISTING KEY ignores the RESERVATION KEY field, registered or not', () => {
    const lun = lunWith(2, [['p1', A]]);
    const junk = LunHarness.params(0xdeadbeefn, C);
    expectGood(lun.prOut('p1', { serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, params: junk }));
    expectGood(lun.prOut('p2', { serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, params: LunHarness.params(0x1234n, D) }));
    assert.deepEqual(keysOf(lun, 'p1'), [C, D]);
  });

  test('unregistering (SERVICE ACTION RESERVATION KEY 0) removes only that nexus', () => {
    const lun = lunWith(3, [['p1', A], ['p2', A], ['p3', B]]);
    expectGood(lun.register('p2', 0n, { key: A }));
    assert.deepEqual(lun.snapshot().registrations.map((r) => r.nexusId), ['p1', 'p3']);
    expectGood(lun.registerAndIgnore('p3', 0n));
    assert.deepEqual(lun.snapshot().registrations.map((r) => r.nexusId), ['p1']);
  });

  test('a RESERVATION KEY that does not match the nexus registration: RESERVATION CONFLICT for every key-checked service action', () => {
    const cases: Array<[string, (l: LunHarness) => ReturnType<LunHarness['reserve']>]> = [
      ['RESERVE', (l) => l.reserve('p1', B, 5)],
      ['RELEASE by the holder', (l) => l.release('p1', B, 5)],
      ['CLEAR', (l) => l.clear('p1', B)],
      ['PREEMPT', (l) => l.preempt('p1', B, B, 5)],
      ['PREEMPT AND ABORT', (l) => l.preemptAndAbort('p1', B, B, 5)],
      ['REGISTER AND MOVE', (l) => l.registerAndMove('p1', { key: B, saKey: C, to: 'p3' })],
      ['REGISTER', (l) => l.register('p1', C, { key: B })],
    ];
    for (const [name, run] of cases) {
      const lun = lunWith(3, [['p1', A], ['p2', B]]);
      expectGood(lun.reserve('p1', A, 5));
      const before = lun.snapshot();
      expectConflict(run(lun), name);
      assert.deepEqual(lun.snapshot(), before, `${name} with the wrong key changes nothing`);
    }
  });

  test('an unregistered nexus gets RESERVATION CONFLICT from every service action that needs a registration', () => {
    for (const reserved of [false, true]) {
      const cases: Array<[string, (l: LunHarness) => ReturnType<LunHarness['reserve']>]> = [
        ['RESERVE', (l) => l.reserve('p3', 0n, 5)],
        ['RELEASE', (l) => l.release('p3', 0n, 5)],
        ['CLEAR', (l) => l.clear('p3', 0n)],
        ['PREEMPT', (l) => l.preempt('p3', 0n, A, 5)],
        ['PREEMPT AND ABORT', (l) => l.preemptAndAbort('p3', 0n, A, 5)],
        ['REGISTER AND MOVE', (l) => l.registerAndMove('p3', { key: 0n, saKey: C, to: 'p2' })],
      ];
      for (const [name, run] of cases) {
        const lun = lunWith(3, [['p1', A], ['p2', B]]);
        if (reserved) expectGood(lun.reserve('p1', A, 5));
        const before = lun.snapshot();
        expectConflict(run(lun), `${name} (${reserved ? 'reserved' : 'no reservation'})`);
        assert.deepEqual(lun.snapshot(), before);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: reservation types and the access rule (5.13.1, table 66)', () => {
  type Verdict = 'ok' | 'conflict';
  // [type] -> who -> [READ(10), WRITE(10)]. Holder p1 (key A), registered non-holder p2 (key B),
  // unregistered p3. Under All Registrants every registrant is a holder (5.13.10).
  const TABLE: Record<number, Record<'holder' | 'registered' | 'unregistered', [Verdict, Verdict]>> = {
    [PrType.WRITE_EXCLUSIVE]: { holder: ['ok', 'ok'], registered: ['ok', 'conflict'], unregistered: ['ok', 'conflict'] },
    [PrType.EXCLUSIVE_ACCESS]: { holder: ['ok', 'ok'], registered: ['conflict', 'conflict'], unregistered: ['conflict', 'conflict'] },
    [PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY]: { holder: ['ok', 'ok'], registered: ['ok', 'ok'], unregistered: ['ok', 'conflict'] },
    [PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY]: { holder: ['ok', 'ok'], registered: ['ok', 'ok'], unregistered: ['conflict', 'conflict'] },
    [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS]: { holder: ['ok', 'ok'], registered: ['ok', 'ok'], unregistered: ['ok', 'conflict'] },
    [PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS]: { holder: ['ok', 'ok'], registered: ['ok', 'ok'], unregistered: ['conflict', 'conflict'] },
  };
  const WHO = { holder: 'p1', registered: 'p2', unregistered: 'p3' } as const;

  for (const type of PR_TYPES) {
    test(`type ${type}: READ(10) / WRITE(10) from holder, registered non-holder and unregistered nexus`, () => {
      const lun = lunWith(3, [['p1', A], ['p2', B]]);
      expectGood(lun.reserve('p1', A, type));
      for (const [who, path] of Object.entries(WHO) as Array<[keyof typeof WHO, string]>) {
        const [read, write] = TABLE[type]![who];
        const r = lun.read10(path);
        const w = lun.write10(path);
        if (read === 'ok') expectGood(r, `type ${type} READ(10) from ${who}`);
        else expectConflict(r, `type ${type} READ(10) from ${who}`);
        if (write === 'ok') expectGood(w, `type ${type} WRITE(10) from ${who}`);
        else expectConflict(w, `type ${type} WRITE(10) from ${who}`);
        // ALLOW COMMANDS 001b and table 66: TEST UNIT READY, INQUIRY and PR IN pass every type.
        expectGood(lun.testUnitReady(path), `type ${type} TEST UNIT READY from ${who}`);
        expectGood(lun.inquiry(path), `type ${type} INQUIRY from ${who}`);
        expectGood(lun.prIn(path, PrInAction.READ_RESERVATION), `type ${type} READ RESERVATION from ${who}`);
      }
    });
  }

  test('without a reservation every nexus may read and write', () => {
    const lun = lunWith(3, [['p1', A]]);
    for (const p of lun.paths) {
      expectGood(lun.read10(p));
      expectGood(lun.write10(p));
    }
  });

  test('READ RESERVATION: holder key, scope LU_SCOPE and the type; key 0 under All Registrants', () => {
    for (const type of PR_TYPES) {
      const lun = lunWith(2, [['p1', A], ['p2', B]]);
      assert.equal(lun.readReservation('p2').reservation, null);
      expectGood(lun.reserve('p1', A, type));
      const rr = lun.readReservation('p2');
      assert.deepEqual(rr.reservation, { key: AR_TYPES.includes(type as 7 | 8) ? 0n : A, scope: 0, type });
      assert.equal(rr.additionalLength, 16);
    }
  });

  test('RESERVE from a registered non-holder sibling nexus (same key, other path) conflicts for WE, EA, WE_RO and EA_RO', () => {
    for (const type of NON_AR_TYPES) {
      const lun = lunWith(2, [['p1', A], ['p2', A]]);
      expectGood(lun.reserve('p1', A, type));
      expectConflict(lun.reserve('p2', A, type), `sibling RESERVE type ${type}`);
      assert.equal(lun.snapshot().reservation?.holderNexusId, 'p1');
    }
  });

  test('the holder repeating its type gets GOOD; asking for any other type gets RESERVATION CONFLICT', () => {
    for (const type of PR_TYPES) {
      for (const other of PR_TYPES) {
        const lun = lunWith(2, [['p1', A], ['p2', B]]);
        expectGood(lun.reserve('p1', A, type));
        const gen = lun.generation('p1');
        if (other === type) expectGood(lun.reserve('p1', A, other));
        else expectConflict(lun.reserve('p1', A, other), `holder of type ${type} asks for ${other}`);
        const rr = lun.readReservation('p1');
        assert.equal(rr.reservation?.type, type);
        assert.equal(rr.generation, gen, 'RESERVE never bumps PRGENERATION');
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: All Registrants reservations (5.13.10)', () => {
  for (const type of AR_TYPES) {
    test(`type ${type}: every registrant holds; READ RESERVATION key 0; R_HOLDER on every registrant`, () => {
      const lun = lunWith(4, [['p1', A], ['p2', B], ['p3', C]]);
      expectGood(lun.reserve('p2', B, type));
      assert.deepEqual(lun.readReservation('p4').reservation, { key: 0n, scope: 0, type });
      const fs = lun.readFullStatus('p4');
      assert.equal(fs.descriptors.length, 3);
      for (const d of fs.descriptors) {
        assert.equal(d.reservationHolder, true, `R_HOLDER on ${d.key.toString(16)}`);
        assert.equal(d.type, type);
        assert.equal(d.scope, 0);
      }
      // Any registrant may RESERVE the same type (it already holds) but not another one.
      expectGood(lun.reserve('p1', A, type));
      expectGood(lun.reserve('p3', C, type));
      expectConflict(lun.reserve('p3', C, type === 7 ? 8 : 7));
      // A nexus that registers later is a holder too.
      expectGood(lun.register('p4', D));
      assert.equal(lun.readFullStatus('p4').descriptors.every((d) => d.reservationHolder), true);
    });

    test(`type ${type}: the reservation survives until the last registrant unregisters`, () => {
      const lun = lunWith(4, [['p1', A], ['p2', B], ['p3', C]]);
      expectGood(lun.reserve('p1', A, type));
      for (const [path, key, left] of [['p1', A, 2], ['p2', B, 1]] as const) {
        expectGood(lun.register(path, 0n, { key }));
        assert.deepEqual(lun.readReservation('p4').reservation, { key: 0n, scope: 0, type }, `after ${path} unregistered`);
        const fs = lun.readFullStatus('p4');
        assert.equal(fs.descriptors.length, left);
        assert.ok(fs.descriptors.every((d) => d.reservationHolder && d.type === type));
        // The remaining registrants still have holder access.
        expectGood(lun.write10('p3'));
      }
      expectGood(lun.register('p3', 0n, { key: C }));
      assert.equal(lun.readReservation('p4').reservation, null, 'gone with the last registrant');
      expectGood(lun.write10('p4'));
      // Unregistering a registrant of an All Registrants reservation releases nothing: no 2A/04.
      for (const p of lun.paths) assert.deepEqual(lun.drainUnitAttentions(p), [], `no unit attention on ${p}`);
    });

    test(`type ${type}: any registrant may RELEASE it; 2A/04 to the other registrants`, () => {
      const lun = lunWith(4, [['p1', A], ['p2', B], ['p3', C]]);
      expectGood(lun.reserve('p1', A, type));
      expectGood(lun.release('p3', C, type));
      assert.equal(lun.readReservation('p3').reservation, null);
      assert.deepEqual(lun.drainUnitAttentions('p1'), ['2a/04']);
      assert.deepEqual(lun.drainUnitAttentions('p2'), ['2a/04']);
      assert.deepEqual(lun.drainUnitAttentions('p3'), []);
      assert.deepEqual(lun.drainUnitAttentions('p4'), []);
    });
  }
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: RELEASE (5.13.11.2)', () => {
  test('by a registered non-holder: GOOD and no effect (no release, no unit attention, no generation bump)', () => {
    for (const type of NON_AR_TYPES) {
      const lun = lunWith(3, [['p1', A], ['p2', B], ['p3', A]]);
      expectGood(lun.reserve('p1', A, type));
      const before = lun.snapshot();
      expectGood(lun.release('p2', B, type), `non-holder RELEASE type ${type}`);
      expectGood(lun.release('p3', A, type), `non-holder sibling RELEASE type ${type}`);
      assert.deepEqual(lun.snapshot(), before);
    }
  });

  test('with no reservation: GOOD, nothing changes', () => {
    const lun = lunWith(2, [['p1', A], ['p2', B]]);
    const before = lun.snapshot();
    expectGood(lun.release('p1', A, 5));
    assert.deepEqual(lun.snapshot(), before);
  });

  test('by the holder with the wrong type: ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (5/26/04)', () => {
    for (const type of PR_TYPES) {
      for (const other of PR_TYPES.filter((t) => t !== type)) {
        const lun = lunWith(2, [['p1', A], ['p2', B]]);
        expectGood(lun.reserve('p1', A, type));
        const before = lun.snapshot();
        expectSense(lun.release('p1', A, other), SenseKey.ILLEGAL_REQUEST, 0x26, 0x04, `release type ${other} of a type ${type} reservation`);
        assert.deepEqual(lun.snapshot(), before);
      }
    }
  });

  test('by the holder: releases; 2A/04 to every other registered nexus for RO/AR types only, none to the issuer', () => {
    for (const type of PR_TYPES) {
      // p2 is the holder's sibling path (same key), p3 another registrant, p4 unregistered.
      const lun = lunWith(4, [['p1', A], ['p2', A], ['p3', B]]);
      expectGood(lun.reserve('p1', A, type));
      const gen = lun.generation('p1');
      expectGood(lun.release('p1', A, type));
      const rr = lun.readReservation('p1');
      assert.equal(rr.reservation, null);
      assert.equal(rr.generation, gen, 'RELEASE does not bump PRGENERATION');
      const ua = RO_AR_TYPES.includes(type) ? ['2a/04'] : [];
      assert.deepEqual(lun.drainUnitAttentions('p2'), ua, `type ${type}: sibling`);
      assert.deepEqual(lun.drainUnitAttentions('p3'), ua, `type ${type}: other registrant`);
      assert.deepEqual(lun.drainUnitAttentions('p4'), [], `type ${type}: unregistered`);
      assert.deepEqual(lun.drainUnitAttentions('p1'), [], `type ${type}: issuer`);
      // Registrations are untouched.
      assert.deepEqual(keysOf(lun, 'p1'), [A, A, B]);
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: CLEAR (5.13.11.6)', () => {
  test('removes every registration and the reservation; 2A/03 to every other registered nexus only', () => {
    for (const issuer of ['p1', 'p3'] as const) {
      // p1 holds, p2 is its sibling, p3 another registrant, p4 unregistered.
      const lun = lunWith(4, [['p1', A], ['p2', A], ['p3', B]]);
      expectGood(lun.reserve('p1', A, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY));
      const gen = lun.generation('p1');
      expectGood(lun.clear(issuer, issuer === 'p1' ? A : B), `CLEAR from ${issuer}`);
      const rk = lun.readKeys(issuer);
      assert.deepEqual(rk.keys, []);
      assert.equal(rk.generation, gen + 1);
      assert.equal(lun.readReservation(issuer).reservation, null);
      for (const p of ['p1', 'p2', 'p3']) {
        assert.deepEqual(lun.drainUnitAttentions(p), p === issuer ? [] : ['2a/03'], `CLEAR from ${issuer}: ${p}`);
      }
      assert.deepEqual(lun.drainUnitAttentions('p4'), []);
      // After CLEAR nothing restricts access any more.
      expectGood(lun.write10('p4'));
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: PREEMPT and PREEMPT AND ABORT (5.13.11.4, 5.13.11.5)', () => {
  for (const abort of [false, true]) {
    const sa = abort ? 'PREEMPT AND ABORT' : 'PREEMPT';
    const setup = (regs: ReadonlyArray<readonly [string, bigint]>, paths = 4) => {
      const aborted: string[][] = [];
      const lun = lunWith(paths, regs, { onAbortTasks: (ids) => aborted.push([...ids]) });
      return { lun, aborted };
    };

    test(`${sa} of another key: the holder's registrations go, the issuer holds with the CDB type, 2A/05 to the preempted`, () => {
      // p1 holds with A; p3 is p1's sibling path (A); p2 preempts.
      const { lun, aborted } = setup([['p1', A], ['p2', B], ['p3', A]]);
      expectGood(lun.reserve('p1', A, 5));
      const gen = lun.generation('p2');
      expectGood(lun.preempt('p2', B, A, 6, { abort }));
      const rk = lun.readKeys('p2');
      assert.deepEqual(rk.keys, [B]);
      assert.equal(rk.generation, gen + 1);
      assert.deepEqual(lun.readReservation('p2').reservation, { key: B, scope: 0, type: 6 });
      assert.deepEqual(lun.drainUnitAttentions('p1'), ['2a/05']);
      assert.deepEqual(lun.drainUnitAttentions('p3'), ['2a/05']);
      assert.deepEqual(lun.drainUnitAttentions('p2'), []);
      assert.deepEqual(lun.drainUnitAttentions('p4'), []);
      assert.deepEqual(aborted, abort ? [['p1', 'p3']] : [], 'PREEMPT AND ABORT aborts the tasks of exactly the preempted nexuses');
      // The preempted nexuses lost access under the new EA_RO reservation.
      expectConflict(lun.read10('p1'));
      expectGood(lun.read10('p2'));
    });

    test(`${sa} that changes the type: 2A/04 to the registrants that keep their registration; none when the type stays`, () => {
      for (const newType of [5, 6]) {
        const { lun } = setup([['p1', A], ['p2', B], ['p3', C]]);
        expectGood(lun.reserve('p1', A, 5));
        expectGood(lun.preempt('p2', B, A, newType, { abort }));
        assert.deepEqual(lun.drainUnitAttentions('p1'), ['2a/05']);
        assert.deepEqual(lun.drainUnitAttentions('p3'), newType === 5 ? [] : ['2a/04'], `new type ${newType}`);
        assert.deepEqual(lun.drainUnitAttentions('p2'), []);
      }
    });

    test(`${sa} of the issuer's own key: sibling paths removed, the issuer kept and holding`, () => {
      for (const holder of ['p1', 'p2'] as const) {
        // p1 and p2 share key A (one host, two paths); p3 another host.
        const { lun, aborted } = setup([['p1', A], ['p2', A], ['p3', B]]);
        expectGood(lun.reserve(holder, A, 5));
        expectGood(lun.preempt('p1', A, A, 5, { abort }), `${sa} own key, holder ${holder}`);
        assert.deepEqual(lun.snapshot().registrations.map((r) => [r.nexusId, r.key]), [['p1', '0xa1'], ['p3', '0xa2']]);
        assert.equal(lun.snapshot().reservation?.holderNexusId, 'p1');
        assert.deepEqual(lun.readReservation('p1').reservation, { key: A, scope: 0, type: 5 });
        assert.deepEqual(lun.drainUnitAttentions('p2'), ['2a/05']);
        assert.deepEqual(lun.drainUnitAttentions('p3'), [], 'same type: no 2A/04');
        assert.deepEqual(lun.drainUnitAttentions('p1'), []);
        assert.deepEqual(aborted, abort ? [['p2']] : []);
      }
    });

    test(`${sa} with SERVICE ACTION RESERVATION KEY 0 under a non-All-Registrants reservation: 5/26/00, nothing changes`, () => {
      for (const type of NON_AR_TYPES) {
        const { lun, aborted } = setup([['p1', A], ['p2', B]]);
        expectGood(lun.reserve('p1', A, type));
        const before = lun.snapshot();
        expectIllegal(lun.preempt('p2', B, 0n, type, { abort }), Asc.INVALID_FIELD_IN_PARAMETER_LIST);
        assert.deepEqual(lun.snapshot(), before);
        assert.deepEqual(aborted, []);
      }
    });

    test(`${sa} with SERVICE ACTION RESERVATION KEY 0 under All Registrants: all other registrations go, the issuer takes a new reservation`, () => {
      for (const type of AR_TYPES) {
        const { lun, aborted } = setup([['p1', A], ['p2', B], ['p3', C]]);
        expectGood(lun.reserve('p2', B, type));
        const gen = lun.generation('p1');
        expectGood(lun.preempt('p1', A, 0n, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, { abort }));
        const rk = lun.readKeys('p1');
        assert.deepEqual(rk.keys, [A]);
        assert.equal(rk.generation, gen + 1);
        assert.deepEqual(lun.readReservation('p1').reservation, { key: A, scope: 0, type: 5 });
        assert.equal(lun.snapshot().reservation?.holderNexusId, 'p1');
        assert.deepEqual(lun.drainUnitAttentions('p2'), ['2a/05']);
        assert.deepEqual(lun.drainUnitAttentions('p3'), ['2a/05']);
        assert.deepEqual(lun.drainUnitAttentions('p1'), []);
        assert.deepEqual(aborted, abort ? [['p2', 'p3']] : []);
      }
    });

    test(`${sa} with a non-zero key under All Registrants removes only those registrations; the reservation stays with the rest`, () => {
      // spc4r17 5.7.11.4 table 52: under an all registrants reservation a non-zero SERVICE ACTION
      // RESERVATION KEY only removes registrations (5.7.11.4.4); every remaining registrant still holds.
      for (const type of AR_TYPES) {
        const { lun } = setup([['p1', A], ['p2', B], ['p3', C]]);
        expectGood(lun.reserve('p1', A, type)); // p1 is the registration the model records the type with
        expectGood(lun.preempt('p2', B, A, type, { abort }));
        assert.deepEqual(keysOf(lun, 'p2'), [B, C]);
        assert.deepEqual(lun.readReservation('p2').reservation, { key: 0n, scope: 0, type }, `type ${type} reservation kept`);
        assert.ok(lun.readFullStatus('p2').descriptors.every((d) => d.reservationHolder));
        assert.deepEqual(lun.drainUnitAttentions('p1'), ['2a/05']);
        assert.deepEqual(lun.drainUnitAttentions('p3'), []);
      }
    });

    test(`${sa} without a reservation only removes registrations (no reservation is created)`, () => {
      const { lun, aborted } = setup([['p1', A], ['p2', B], ['p3', B]]);
      const gen = lun.generation('p1');
      expectGood(lun.preempt('p1', A, B, 5, { abort }));
      const rk = lun.readKeys('p1');
      assert.deepEqual(rk.keys, [A]);
      assert.equal(rk.generation, gen + 1);
      assert.equal(lun.readReservation('p1').reservation, null);
      assert.deepEqual(lun.drainUnitAttentions('p2'), ['2a/05']);
      assert.deepEqual(lun.drainUnitAttentions('p3'), ['2a/05']);
      assert.deepEqual(aborted, abort ? [['p2', 'p3']] : []);
    });

    test(`${sa} of a key that does not hold the reservation only removes registrations; the reservation stays`, () => {
      const { lun } = setup([['p1', A], ['p2', B], ['p3', C]]);
      expectGood(lun.reserve('p1', A, 5));
      expectGood(lun.preempt('p3', C, B, 6, { abort }));
      assert.deepEqual(keysOf(lun, 'p3'), [A, C]);
      assert.deepEqual(lun.readReservation('p3').reservation, { key: A, scope: 0, type: 5 }, 'TYPE ignored, holder unchanged');
      assert.deepEqual(lun.drainUnitAttentions('p2'), ['2a/05']);
      assert.deepEqual(lun.drainUnitAttentions('p1'), []);
    });

    test(`${sa} of a key nobody has registered: RESERVATION CONFLICT, nothing changes`, () => {
      for (const reserved of [false, true]) {
        const { lun, aborted } = setup([['p1', A], ['p2', B]]);
        if (reserved) expectGood(lun.reserve('p1', A, 5));
        const before = lun.snapshot();
        expectConflict(lun.preempt('p2', B, D, 5, { abort }));
        assert.deepEqual(lun.snapshot(), before);
        assert.deepEqual(aborted, []);
      }
    });
  }

  test('PREEMPT does not call onAbortTasks; PREEMPT AND ABORT completes with GOOD and calls it once', () => {
    const calls: string[][] = [];
    const lun = lunWith(3, [['p1', A], ['p2', B]], { onAbortTasks: (ids) => calls.push([...ids]) });
    expectGood(lun.reserve('p1', A, 5));
    expectGood(lun.preempt('p2', B, A, 5));
    assert.deepEqual(calls, []);
    expectGood(lun.register('p3', C));
    expectGood(lun.preemptAndAbort('p3', C, B, 5));
    assert.deepEqual(calls, [['p2']]);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: REGISTER AND MOVE (5.13.8, 6.16.4)', () => {
  function reserved(type = 5) {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, type));
    return lun;
  }

  for (const type of NON_AR_TYPES) {
    test(`type ${type}: moves the reservation to an unregistered destination, registered with the SA key`, () => {
      const lun = reserved(type);
      const gen = lun.generation('p1');
      expectGood(lun.registerAndMove('p1', { key: A, saKey: C, to: 'p3' }));
      const rk = lun.readKeys('p1');
      assert.deepEqual(rk.keys, [A, B, C]);
      assert.equal(rk.generation, gen + 1);
      assert.deepEqual(lun.readReservation('p1').reservation, { key: C, scope: 0, type });
      const fs = lun.readFullStatus('p1');
      const dest = fs.descriptors.find((d) => d.key === C);
      assert.ok(dest);
      assert.equal(dest.reservationHolder, true);
      assert.equal(dest.relativeTargetPortId, 3);
      assert.deepEqual(dest.transportId, sasInitiator(3));
      assert.equal(dest.allTgPt, false);
      assert.equal(fs.descriptors.find((d) => d.key === A)?.reservationHolder, false, 'the issuer keeps its registration, not the reservation');
      // The destination holds: it may release with its new key and the reservation's type.
      expectGood(lun.release('p3', C, type));
      assert.equal(lun.readReservation('p3').reservation, null);
    });
  }

  test('to an already registered destination: its key is replaced by the SA key', () => {
    const lun = reserved();
    expectGood(lun.registerAndMove('p1', { key: A, saKey: D, to: 'p2' }));
    assert.deepEqual(keysOf(lun, 'p1'), [A, D]);
    assert.deepEqual(lun.readReservation('p1').reservation, { key: D, scope: 0, type: 5 });
    assert.equal(lun.snapshot().reservation?.holderNexusId, 'p2');
    expectGood(lun.release('p2', D, 5));
  });

  test('UNREG=1 unregisters the issuing nexus', () => {
    const lun = reserved();
    expectGood(lun.registerAndMove('p1', { key: A, saKey: C, to: 'p3', unreg: true }));
    assert.deepEqual(lun.snapshot().registrations.map((r) => r.nexusId), ['p2', 'p3']);
    assert.equal(lun.snapshot().reservation?.holderNexusId, 'p3');
  });

  test('refused moves change nothing', () => {
    const cases: Array<[string, (l: LunHarness) => ReturnType<LunHarness['reserve']>, 'conflict' | 'invalid-param']> = [
      ['from an unregistered nexus', (l) => l.registerAndMove('p3', { key: 0n, saKey: C, to: 'p2' }), 'conflict'],
      ['with SERVICE ACTION RESERVATION KEY 0', (l) => l.registerAndMove('p1', { key: A, saKey: 0n, to: 'p3' }), 'invalid-param'],
      ['by a registered non-holder', (l) => l.registerAndMove('p2', { key: B, saKey: C, to: 'p3' }), 'conflict'],
      ['to the issuing nexus itself', (l) => l.registerAndMove('p1', { key: A, saKey: C, to: 'p1' }), 'invalid-param'],
      [
        'to an initiator port the LU does not know',
        (l) => l.registerAndMove('p1', { key: A, saKey: C, to: { transportId: sasInitiator(9), relativeTargetPortId: 3 } }),
        'invalid-param',
      ],
      [
        'to a relative target port the LU does not have',
        (l) => l.registerAndMove('p1', { key: A, saKey: C, to: { transportId: sasInitiator(3), relativeTargetPortId: 7 } }),
        'invalid-param',
      ],
    ];
    for (const [name, run, want] of cases) {
      const lun = reserved();
      const before = lun.snapshot();
      const o = run(lun);
      if (want === 'conflict') expectConflict(o, name);
      else expectIllegal(o, Asc.INVALID_FIELD_IN_PARAMETER_LIST, name);
      assert.deepEqual(lun.snapshot(), before, name);
    }
  });

  test('under an All Registrants reservation: RESERVATION CONFLICT', () => {
    for (const type of AR_TYPES) {
      const lun = reserved(type);
      const before = lun.snapshot();
      expectConflict(lun.registerAndMove('p1', { key: A, saKey: C, to: 'p3' }));
      assert.deepEqual(lun.snapshot(), before);
    }
  });

  test('without a reservation: RESERVATION CONFLICT (the issuer is not a reservation holder)', () => {
    const lun = lunWith(3, [['p1', A]]);
    const before = lun.snapshot();
    expectConflict(lun.registerAndMove('p1', { key: A, saKey: C, to: 'p3' }));
    assert.deepEqual(lun.snapshot(), before);
  });

  test('APTPL in the REGISTER AND MOVE list sets PTPL_A', () => {
    const lun = reserved();
    assert.equal(lun.capabilities('p1').ptplA, false);
    expectGood(lun.registerAndMove('p1', { key: A, saKey: C, to: 'p3', aptpl: true }));
    assert.equal(lun.capabilities('p1').ptplA, true);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: ALL_TG_PT (5.13.7, 6.16.3)', () => {
  // p1 and p2: initiator port 1 through target ports 1 and 2; p3: initiator port 2.
  const shared = () => makeLun({ personality, paths: 3, initiators: [1, 1, 2] });

  test('one REGISTER with ALL_TG_PT registers the initiator port on every target port', () => {
    const lun = shared();
    expectGood(lun.register('p1', A, { allTgPt: true }));
    const rk = lun.readKeys('p3');
    assert.deepEqual(rk.keys, [A, A]);
    assert.equal(rk.generation, 1, 'one command, one PRGENERATION step');
    const fs = lun.readFullStatus('p3');
    assert.deepEqual(
      fs.descriptors.map((d) => [d.allTgPt, d.relativeTargetPortId, d.transportId]),
      [[true, 0, sasInitiator(1)], [true, 0, sasInitiator(1)]],
      'ALL_TG_PT=1 and relative target port id 0 (not defined with ALL_TG_PT)',
    );
    assert.deepEqual(lun.snapshot().registrations.map((r) => r.nexusId), ['p1', 'p2']);
    // p2 is registered: it may reserve with the key; p3 is not.
    expectGood(lun.reserve('p2', A, 5));
    expectConflict(lun.write10('p3'));
    expectGood(lun.write10('p1'));
  });

  test('without ALL_TG_PT only the issuing nexus is registered', () => {
    const lun = shared();
    expectGood(lun.register('p1', A));
    assert.deepEqual(lun.snapshot().registrations.map((r) => r.nexusId), ['p1']);
    assert.equal(lun.readFullStatus('p1').descriptors[0]?.relativeTargetPortId, 1);
    assert.equal(lun.readFullStatus('p1').descriptors[0]?.allTgPt, false);
  });

  test('the key of an ALL_TG_PT registration changes, and the registration goes, on every target port at once', () => {
    const lun = shared();
    expectGood(lun.register('p1', A, { allTgPt: true }));
    expectGood(lun.register('p2', B, { key: A }));
    assert.deepEqual(keysOf(lun, 'p3'), [B, B]);
    expectGood(lun.register('p1', 0n, { key: B }));
    assert.deepEqual(keysOf(lun, 'p3'), []);
    assert.equal(lun.generation('p3'), 3);
  });

  test('REPORT CAPABILITIES advertises ATP_C', () => {
    assert.equal(shared().capabilities('p1').atpC, true);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: SPEC_I_PT (6.16.3)', () => {
  test('REGISTER with SPEC_I_PT naming p2 registers the issuing nexus and p2', () => {
    const lun = lunWith(3, []);
    expectGood(lun.register('p1', A, { specIPt: [sasInitiator(2)] }));
    const rk = lun.readKeys('p3');
    assert.deepEqual(rk.keys, [A, A]);
    assert.equal(rk.generation, 1, 'one command, one PRGENERATION step');
    assert.deepEqual(
      lun.readFullStatus('p3').descriptors.map((d) => [d.relativeTargetPortId, d.transportId]),
      [[1, sasInitiator(1)], [2, sasInitiator(2)]],
    );
    expectGood(lun.reserve('p2', A, 5), 'p2 is registered with the key');
  });

  test('an unknown initiator port: 5/26/00, nothing registered', () => {
    const lun = lunWith(3, []);
    expectIllegal(lun.register('p1', A, { specIPt: [sasInitiator(2), sasInitiator(0x77)] }), Asc.INVALID_FIELD_IN_PARAMETER_LIST);
    assert.deepEqual(lun.snapshot().registrations, []);
    assert.equal(lun.generation('p1'), 0);
  });

  test('SPEC_I_PT on RESERVE or REGISTER AND IGNORE EXISTING KEY: 5/26/00', () => {
    for (const tids of [[], [sasInitiator(2)]]) {
      const lun = lunWith(2, [['p1', A]]);
      const params = LunHarness.params(A, 0n, { specIPt: tids });
      expectIllegal(lun.prOut('p1', { serviceAction: PrOutAction.RESERVE, type: 5, params }), Asc.INVALID_FIELD_IN_PARAMETER_LIST, 'RESERVE');
      const rie = LunHarness.params(0n, B, { specIPt: tids });
      expectIllegal(
        lun.prOut('p2', { serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, params: rie }),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        'REGISTER AND IGNORE',
      );
      assert.deepEqual(keysOf(lun, 'p1'), [A]);
      assert.equal(lun.readReservation('p1').reservation, null);
    }
  });

  test('SPEC_I_PT from a registered nexus: 5/24/00 (register behaviours table)', () => {
    const lun = lunWith(3, [['p1', A]]);
    expectIllegal(lun.register('p1', B, { key: A, specIPt: [sasInitiator(2)] }), Asc.INVALID_FIELD_IN_CDB);
    assert.deepEqual(keysOf(lun, 'p1'), [A]);
  });

  test('REPORT CAPABILITIES advertises SIP_C', () => {
    assert.equal(lunWith(1, []).capabilities('p1').sipC, true);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: APTPL and power loss (5.13.5)', () => {
  test('without APTPL a power cycle loses registrations and reservation; PRGENERATION restarts at 0; POWER ON RESET everywhere', () => {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 6));
    lun.ds.powerCycle();
    for (const p of lun.paths) {
      // PR IN reports the unit attention too (no exemption), once.
      expectUa(lun.prIn(p, PrInAction.READ_KEYS), Asc.POWER_ON_RESET, `first command on ${p}`);
    }
    const rk = lun.readKeys('p3');
    assert.deepEqual(rk.keys, []);
    assert.equal(rk.generation, 0);
    assert.equal(lun.readReservation('p3').reservation, null);
    expectGood(lun.read10('p3'));
    assert.equal(lun.ds.exportPersistent(), null);
  });

  test('with APTPL registrations and reservation survive the power cycle; PRGENERATION restarts at 0', () => {
    const lun = makeLun({ personality, paths: 3 });
    expectGood(lun.register('p2', B, { aptpl: true }));
    expectGood(lun.register('p1', A, { aptpl: true }));
    expectGood(lun.reserve('p1', A, 6));
    const fsBefore = lun.readFullStatus('p3');
    // A pending unit attention does not survive the power loss; POWER ON RESET replaces it.
    lun.ds.queueUnitAttention('p2', Asc.REGISTRATIONS_PREEMPTED);
    lun.ds.powerCycle();
    for (const p of lun.paths) assert.deepEqual(lun.drainUnitAttentions(p), ['29/00'], p);
    const fs = lun.readFullStatus('p3');
    assert.equal(fs.generation, 0);
    assert.deepEqual(fs.descriptors, fsBefore.descriptors, 'same registrations in the same order, same holder and type');
    assert.deepEqual(lun.readReservation('p3').reservation, { key: A, scope: 0, type: 6 });
    expectConflict(lun.read10('p3'), 'the EA_RO reservation still restricts the unregistered nexus');
    assert.equal(lun.capabilities('p3').ptplA, true);
    expectGood(lun.release('p1', A, 6), 'the holder still holds');
  });

  test('PTPL_A follows the APTPL bit of the last successful REGISTER', () => {
    const lun = makeLun({ personality, paths: 3 });
    const caps = lun.capabilities('p1');
    assert.equal(caps.ptplC, true);
    assert.equal(caps.ptplA, false);
    expectGood(lun.register('p1', A, { aptpl: true }));
    assert.equal(lun.capabilities('p1').ptplA, true);
    expectGood(lun.register('p2', B));
    assert.equal(lun.capabilities('p1').ptplA, false);
    expectGood(lun.registerAndIgnore('p3', C, { aptpl: true }));
    assert.equal(lun.capabilities('p1').ptplA, true);
    expectConflict(lun.register('p1', D, { key: B }), 'a failed REGISTER');
    assert.equal(lun.capabilities('p1').ptplA, true, 'a failed REGISTER leaves PTPL_A alone');
    expectGood(lun.register('p1', D, { key: A }));
    assert.equal(lun.capabilities('p1').ptplA, false);
    // The last REGISTER had APTPL=0: a power cycle keeps nothing.
    lun.ds.powerCycle();
    lun.drainUnitAttentions('p1');
    assert.deepEqual(keysOf(lun, 'p1'), []);
  });

  test('exportPersistent / importPersistent carry the APTPL state (through JSON) to a new device server', () => {
    const lun = makeLun({ personality, paths: 3 });
    assert.equal(lun.ds.exportPersistent(), null);
    expectGood(lun.register('p3', C, { aptpl: true }));
    expectGood(lun.register('p1', A, { aptpl: true }));
    expectGood(lun.reserve('p3', C, 5));
    const state = lun.ds.exportPersistent();
    assert.ok(state);
    const restored = makeLun({ personality, paths: 3 });
    restored.ds.importPersistent(JSON.parse(JSON.stringify(state)));
    assert.deepEqual(restored.readFullStatus('p2').descriptors, lun.readFullStatus('p2').descriptors);
    assert.deepEqual(restored.readReservation('p2').reservation, { key: C, scope: 0, type: 5 });
    assert.equal(restored.capabilities('p2').ptplA, true);
    expectConflict(restored.write10('p2'));
    expectGood(restored.write10('p1'));
  });

  test('importPersistent drops registrations of nexuses the new device server does not have', () => {
    const lun = makeLun({ personality, paths: 3 });
    expectGood(lun.register('p1', A, { aptpl: true }));
    expectGood(lun.register('p3', C, { aptpl: true }));
    const state = lun.ds.exportPersistent();
    assert.ok(state);
    const smaller = makeLun({ personality, paths: 2 });
    smaller.ds.importPersistent(state);
    assert.deepEqual(keysOf(smaller, 'p1'), [A]);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: PRGENERATION (6.15.2)', () => {
  test('a REGISTER fanned out through N paths bumps it N times', () => {
    for (const n of [1, 2, 4]) {
      const lun = makeLun({ personality, paths: n });
      for (const p of lun.paths) expectGood(lun.register(p, A));
      assert.equal(lun.generation('p1'), n);
    }
  });

  test('increments exactly on successful REGISTER, REGISTER AND IGNORE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE', () => {
    // p4 only watches: it never registers, so it never gets a unit attention.
    const lun = makeLun({ personality, paths: 4 });
    const steps: Array<[string, () => ReturnType<LunHarness['reserve']>, 'good' | 'conflict' | 'check', number]> = [
      ['REGISTER p1', () => lun.register('p1', A), 'good', 1],
      ['REGISTER p2', () => lun.register('p2', B), 'good', 1],
      ['REGISTER 0 -> 0 (no-op)', () => lun.register('p3', 0n), 'good', 0],
      ['REGISTER wrong key', () => lun.register('p1', C, { key: B }), 'conflict', 0],
      ['REGISTER AND IGNORE p3', () => lun.registerAndIgnore('p3', C), 'good', 1],
      ['REGISTER (key change)', () => lun.register('p3', D, { key: C }), 'good', 1],
      ['RESERVE', () => lun.reserve('p1', A, 5), 'good', 0],
      ['RESERVE again (same type)', () => lun.reserve('p1', A, 5), 'good', 0],
      ['RESERVE conflicting', () => lun.reserve('p2', B, 5), 'conflict', 0],
      ['READ KEYS', () => lun.prIn('p1', PrInAction.READ_KEYS), 'good', 0],
      ['READ FULL STATUS', () => lun.prIn('p1', PrInAction.READ_FULL_STATUS), 'good', 0],
      ['RELEASE', () => lun.release('p1', A, 5), 'good', 0],
      ['RESERVE', () => lun.reserve('p1', A, 5), 'good', 0],
      ['RELEASE wrong type', () => lun.release('p1', A, 6), 'check', 0],
      ['PREEMPT unmatched', () => lun.preempt('p2', B, 0x99n, 5), 'conflict', 0],
      ['PREEMPT SA key 0', () => lun.preempt('p2', B, 0n, 5), 'check', 0],
      ['PREEMPT', () => lun.preempt('p2', B, D, 5), 'good', 1],
      ['REGISTER p3 again', () => lun.register('p3', C), 'good', 1],
      ['PREEMPT AND ABORT', () => lun.preemptAndAbort('p2', B, A, 5), 'good', 1],
      ['REGISTER AND MOVE', () => lun.registerAndMove('p2', { key: B, saKey: A, to: 'p1' }), 'good', 1],
      ['REGISTER AND MOVE refused', () => lun.registerAndMove('p2', { key: B, saKey: A, to: 'p1' }), 'conflict', 0],
      ['unregister (REGISTER SA key 0)', () => lun.register('p2', 0n, { key: B }), 'good', 1],
      ['unregister (REGISTER AND IGNORE SA key 0)', () => lun.registerAndIgnore('p3', 0n), 'good', 1],
      ['CLEAR', () => lun.clear('p1', A), 'good', 1],
      ['CLEAR from an unregistered nexus', () => lun.clear('p1', A), 'conflict', 0],
    ];
    let gen = lun.generation('p4');
    for (const [name, run, want, delta] of steps) {
      // Clear unit attentions the previous step queued so each step sees its own outcome.
      for (const p of ['p1', 'p2', 'p3']) lun.drainUnitAttentions(p);
      const o = run();
      if (want === 'good') expectGood(o, name);
      else if (want === 'conflict') expectConflict(o, name);
      else assert.equal(o.kind, 'check-condition', name);
      const now = lun.generation('p4');
      assert.equal(now - gen, delta, `${name}: PRGENERATION ${gen} -> ${now}`);
      gen = now;
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: unit attentions are queued per I_T nexus (SAM-5 5.14)', () => {
  const scenarios: Array<[string, string, (l: LunHarness) => void, readonly string[], readonly string[]]> = [
    // name, ua, action, nexuses that get it, nexuses that do not
    ['CLEAR', '2a/03', (l) => expectGood(l.clear('p1', A)), ['p2', 'p3'], ['p1', 'p4']],
    ['RELEASE of WE_RO', '2a/04', (l) => expectGood(l.release('p1', A, 5)), ['p2', 'p3'], ['p1', 'p4']],
    ['PREEMPT by the holder changing the type', '2a/04', (l) => expectGood(l.preempt('p1', A, A, 6)), ['p3'], ['p1', 'p4']],
    ['PREEMPT', '2a/05', (l) => expectGood(l.preempt('p3', B, A, 5)), ['p1', 'p2'], ['p3', 'p4']],
  ];
  for (const [name, ua, action, hit, miss] of scenarios) {
    test(`${name}: ${ua} reported once on each affected nexus's next command (PR IN included), INQUIRY leaves it pending`, () => {
      // p1 holds WE_RO with A, p2 is its sibling (A), p3 registered with B, p4 unregistered.
      const lun = lunWith(4, [['p1', A], ['p2', A], ['p3', B]]);
      expectGood(lun.reserve('p1', A, 5));
      action(lun);
      const [asc, ascq] = ua.split('/').map((h) => parseInt(h, 16)) as [number, number];
      for (const p of hit) {
        expectGood(lun.inquiry(p), `INQUIRY on ${p} is exempt`);
        expectUa(lun.prIn(p, PrInAction.READ_RESERVATION), { asc, ascq }, `${name}: first command on ${p}`);
        expectGood(lun.prIn(p, PrInAction.READ_RESERVATION), `${name}: second command on ${p}`);
      }
      for (const p of miss) expectGood(lun.prIn(p, PrInAction.READ_RESERVATION), `${name}: ${p} gets no unit attention`);
    });
  }

  test('a pending unit attention is reported before a reservation conflict', () => {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 3));
    lun.ds.queueUnitAttention('p2', Asc.I_T_NEXUS_LOSS);
    expectUa(lun.write10('p2'), Asc.I_T_NEXUS_LOSS);
    expectConflict(lun.write10('p2'));
  });

  test('two pending unit attentions are each reported once, then commands succeed', () => {
    const lun = lunWith(2, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 5));
    expectGood(lun.release('p1', A, 5)); // 2A/04 to p2
    expectGood(lun.reserve('p1', A, 5));
    expectGood(lun.clear('p1', A)); // 2A/03 to p2
    assert.deepEqual(lun.drainUnitAttentions('p2').sort(), ['2a/03', '2a/04']);
    expectGood(lun.prIn('p2', PrInAction.READ_KEYS));
  });

  test('queueUnitAttention reaches only the named nexus', () => {
    const lun = lunWith(3, []);
    lun.ds.queueUnitAttention('p2', Asc.BUS_DEVICE_RESET);
    expectGood(lun.prIn('p1', PrInAction.READ_KEYS));
    expectUa(lun.prIn('p2', PrInAction.READ_KEYS), Asc.BUS_DEVICE_RESET);
    expectGood(lun.prIn('p2', PrInAction.READ_KEYS));
    expectGood(lun.prIn('p3', PrInAction.READ_KEYS));
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: REPORT CAPABILITIES is consistent with what the model does (6.15.4)', () => {
  test('type mask lists exactly the types RESERVE accepts', () => {
    const caps = makeLun({ personality, paths: 1 }).capabilities('p1');
    assert.equal(caps.tmv, true);
    for (let type = 0; type < 16; type++) {
      const lun = lunWith(1, [['p1', A]]);
      const o = lun.reserve('p1', A, type);
      if (caps.types.has(type)) expectGood(o, `advertised type ${type}`);
      else expectIllegal(o, Asc.INVALID_FIELD_IN_CDB, `type ${type} not advertised`);
    }
    assert.deepEqual([...caps.types].sort(), [1, 3, 5, 6, 7, 8]);
  });

  test('ALLOW COMMANDS 001b: TEST UNIT READY passes Write Exclusive and Exclusive Access reservations', () => {
    const lun0 = makeLun({ personality, paths: 1 });
    assert.equal(lun0.capabilities('p1').allowCommands, 1);
    for (const type of [PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS]) {
      const lun = lunWith(3, [['p1', A], ['p2', B]]);
      expectGood(lun.reserve('p1', A, type));
      expectGood(lun.testUnitReady('p2'));
      expectGood(lun.testUnitReady('p3'));
    }
  });

  test('SIP_C, ATP_C and PTPL_C are set and the features work (see the SPEC_I_PT, ALL_TG_PT and APTPL tests)', () => {
    const caps = makeLun({ personality, paths: 1 }).capabilities('p1');
    assert.deepEqual([caps.sipC, caps.atpC, caps.ptplC], [true, true, true]);
  });

  // REPORT CAPABILITIES sets CRH: RESERVE(6)/RELEASE(6) follow SPC-4 5.13.3 (from a holder or a
  // registrant they complete with GOOD and change nothing; an unregistered nexus conflicts).
  test('CRH: RESERVE(6) and RELEASE(6) from the persistent reservation holder complete with GOOD (5.13.3)', () => {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 5));
    assert.equal(lun.capabilities('p1').crh, true);
    expectGood(lun.exec('p1', Uint8Array.from([0x16, 0, 0, 0, 0, 0])), 'RESERVE(6) from the holder');
    expectGood(lun.exec('p2', Uint8Array.from([0x16, 0, 0, 0, 0, 0])), 'RESERVE(6) from a registrant under WE_RO');
    expectGood(lun.exec('p1', Uint8Array.from([0x17, 0, 0, 0, 0, 0])), 'RELEASE(6) from the holder');
    assert.deepEqual(lun.readReservation('p1').reservation, { key: A, scope: 0, type: 5 }, 'the persistent reservation is unchanged');
    expectConflict(lun.exec('p3', Uint8Array.from([0x16, 0, 0, 0, 0, 0])), 'RESERVE(6) from an unregistered nexus');
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: invalid fields (6.15.1, 6.16.1, 6.16.3)', () => {
  test('PR IN service actions 0x04..0x1f: 5/24/00', () => {
    const lun = lunWith(1, [['p1', A]]);
    for (let sa = 0x04; sa <= 0x1f; sa++) expectIllegal(lun.prIn('p1', sa), Asc.INVALID_FIELD_IN_CDB, `PR IN SA 0x${sa.toString(16)}`);
  });

  test('PR OUT service actions 0x08..0x1f: 5/24/00, nothing changes', () => {
    const lun = lunWith(2, [['p1', A]]);
    const before = lun.snapshot();
    for (let sa = 0x08; sa <= 0x1f; sa++) {
      expectIllegal(lun.prOut('p1', { serviceAction: sa, type: 5, params: LunHarness.params(A, B) }), Asc.INVALID_FIELD_IN_CDB, `PR OUT SA 0x${sa.toString(16)}`);
    }
    assert.deepEqual(lun.snapshot(), before);
  });

  test('reserved TYPE values (0, 2, 4, 9..15) on RESERVE, RELEASE, PREEMPT and PREEMPT AND ABORT: 5/24/00', () => {
    for (const type of [0, 2, 4, 9, 10, 11, 12, 13, 14, 15]) {
      const lun = lunWith(2, [['p1', A], ['p2', B]]);
      expectGood(lun.reserve('p1', A, 5));
      const before = lun.snapshot();
      expectIllegal(lun.reserve('p1', A, type), Asc.INVALID_FIELD_IN_CDB, `RESERVE type ${type}`);
      expectIllegal(lun.release('p1', A, type), Asc.INVALID_FIELD_IN_CDB, `RELEASE type ${type}`);
      expectIllegal(lun.preempt('p2', B, A, type), Asc.INVALID_FIELD_IN_CDB, `PREEMPT type ${type}`);
      expectIllegal(lun.preemptAndAbort('p2', B, A, type), Asc.INVALID_FIELD_IN_CDB, `PREEMPT AND ABORT type ${type}`);
      assert.deepEqual(lun.snapshot(), before);
    }
  });

  test('a SCOPE other than LU_SCOPE on RESERVE, RELEASE and PREEMPT: 5/24/00 (the field is in the CDB)', () => {
    for (let scope = 1; scope < 16; scope++) {
      const lun = lunWith(2, [['p1', A], ['p2', B]]);
      expectIllegal(lun.reserve('p1', A, 5, scope), Asc.INVALID_FIELD_IN_CDB, `RESERVE scope ${scope}`);
      expectGood(lun.reserve('p1', A, 5));
      expectIllegal(lun.release('p1', A, 5, scope), Asc.INVALID_FIELD_IN_CDB, `RELEASE scope ${scope}`);
      expectIllegal(lun.preempt('p2', B, A, 5, { scope }), Asc.INVALID_FIELD_IN_CDB, `PREEMPT scope ${scope}`);
      assert.equal(lun.snapshot().reservation?.holderNexusId, 'p1');
    }
  });

  test('PARAMETER LIST LENGTH 0, 23, 25, 32 on REGISTER (and the other basic-list service actions): 5/1A/00', () => {
    const basic = LunHarness.params(0n, A);
    for (const length of [0, 23, 25, 32]) {
      // Malformed on purpose: the 24-byte list cut short or padded with zeros.
      const bytes = new Uint8Array(length);
      bytes.set(basic.subarray(0, Math.min(24, length)));
      for (const sa of [PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, PrOutAction.RESERVE, PrOutAction.RELEASE, PrOutAction.CLEAR, PrOutAction.PREEMPT]) {
        const lun = lunWith(2, [['p2', B]]);
        const before = lun.snapshot();
        expectIllegal(lun.prOut('p1', { serviceAction: sa, type: 5, params: bytes }), Asc.PARAMETER_LIST_LENGTH_ERROR, `SA ${sa} length ${length}`);
        assert.deepEqual(lun.snapshot(), before);
      }
    }
  });

  test('a REGISTER AND MOVE list whose length does not match its TransportID: 5/1A/00', () => {
    const lun = lunWith(3, [['p1', A]]);
    expectGood(lun.reserve('p1', A, 5));
    const good = lun.registerAndMoveParams({ key: A, saKey: C, to: 'p3' });
    for (const bytes of [good.subarray(0, 23), good.subarray(0, good.length - 4), Uint8Array.from([...good, 0, 0, 0, 0])]) {
      expectIllegal(lun.prOut('p1', { serviceAction: PrOutAction.REGISTER_AND_MOVE, params: bytes }), Asc.PARAMETER_LIST_LENGTH_ERROR, `length ${bytes.length}`);
    }
    assert.equal(lun.snapshot().reservation?.holderNexusId, 'p1');
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: allocation length truncates PR IN data (SPC-4 4.2.5.6)', () => {
  test('every allocation length 0..full+8 returns the prefix of the full answer, ADDITIONAL LENGTH unchanged', () => {
    const lun = lunWith(4, [['p1', A], ['p2', B], ['p3', C]]);
    expectGood(lun.reserve('p2', B, 6));
    for (const sa of [PrInAction.READ_KEYS, PrInAction.READ_RESERVATION, PrInAction.REPORT_CAPABILITIES, PrInAction.READ_FULL_STATUS]) {
      const full = expectGood(lun.prIn('p4', sa, FULL_ALLOCATION));
      const expectedLength = { 0: 8 + 3 * 8, 1: 8 + 16, 2: 8, 3: 8 + 3 * 48 }[sa];
      assert.equal(full.length, expectedLength, `SA ${sa} full length`);
      for (let alloc = 0; alloc <= full.length + 8; alloc++) {
        const data = expectGood(lun.prIn('p4', sa, alloc), `SA ${sa} alloc ${alloc}`);
        assert.deepEqual(data, full.subarray(0, Math.min(alloc, full.length)), `SA ${sa} alloc ${alloc}`);
        if (sa !== PrInAction.REPORT_CAPABILITIES && alloc >= 8) assert.equal(readU32(data, 4), full.length - 8);
      }
    }
    // The decoders see the truncation.
    const cut = expectGood(lun.prIn('p4', PrInAction.READ_FULL_STATUS, 60));
    const d = decodeReadFullStatus(cut);
    assert.equal(d.truncated, true);
    assert.equal(d.additionalLength, 3 * 48);
    assert.equal(d.descriptors.length, 1);
    assert.deepEqual(decodeReadKeys(expectGood(lun.prIn('p4', PrInAction.READ_KEYS, 20))).keys, [A]);
    assert.equal(decodeReadReservation(expectGood(lun.prIn('p4', PrInAction.READ_RESERVATION, 12))).truncated, true);
  });

  test('the 16-byte CDB form QEMU sends is answered like the 10-byte one', () => {
    const lun = lunWith(2, [['p1', A]]);
    const ten = expectGood(lun.exec('p2', encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 100 })));
    const sixteen = expectGood(lun.exec('p2', encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 100 }, 16)));
    assert.deepEqual(sixteen, ten);
  });
});

// ---------------------------------------------------------------------------------------------------
describe('spc4: nexus removal', () => {
  test('removeNexus frees the registration and implicitly releases a reservation it held, without a PRGENERATION step', () => {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 3));
    const gen = lun.generation('p2');
    lun.ds.removeNexus('p1');
    assert.equal(lun.ds.hasNexus('p1'), false);
    const rk = lun.readKeys('p2');
    assert.deepEqual(rk.keys, [B]);
    assert.equal(rk.generation, gen);
    assert.equal(lun.readReservation('p2').reservation, null);
    expectGood(lun.write10('p3'));
  });

  test('an All Registrants reservation stays with the remaining registrants when a nexus goes', () => {
    const lun = lunWith(3, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 8));
    lun.ds.removeNexus('p1');
    assert.deepEqual(lun.readReservation('p2').reservation, { key: 0n, scope: 0, type: 8 });
    expectConflict(lun.read10('p3'));
  });

  test('a device server built directly takes the lio personality by default', () => {
    assert.equal(new PrDeviceServer().personality, 'lio');
    assert.equal(new PrDeviceServer({ personality: 'spc4' }).personality, 'spc4');
  });
});
