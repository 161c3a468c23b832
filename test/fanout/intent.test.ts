// The intended PR state of a map: transitions for every PR OUT service action, the "only on GOOD"
// rule as a property, and the JSON form.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isPrmuxError } from '../../src/errors.js';
import {
  emptyIntent,
  fenceIntent,
  intentFromJson,
  intentToJson,
  type MapIntent,
  nextIntent,
  pendingEffect,
  sameIntentState,
  withoutPending,
  withPending,
} from '../../src/fanout/intent.js';
import type { FanoutResult } from '../../src/fanout/types.js';
import { encodePrOutCdb } from '../../src/scsi/cdb.js';
import { PrInAction, PrOutAction, SenseKey, Asc } from '../../src/scsi/constants.js';
import { checkCondition, good, reservationConflict, transportFailure } from '../../src/scsi/outcome.js';
import { encodeRegisterAndMoveParams } from '../../src/scsi/prout-params.js';
import { prIn, prOut, sas } from './guard-fixtures.js';

const T0 = '2024-01-01T00:00:00.000Z';
const T1 = '2024-01-01T00:00:01.000Z';
const W = '36001405aaaa';

function ok(): FanoutResult {
  return { outcome: good(), decidedBy: 'sda', commands: [], pendingPaths: [] };
}

function base(over: Partial<MapIntent> = {}): MapIntent {
  return { ...emptyIntent(W, 'mpatha', T0), ...over };
}

function apply(prev: MapIntent, cmd: { cdb: Uint8Array; dataOut: Uint8Array | null }, observed?: Parameters<typeof nextIntent>[5]): MapIntent {
  return nextIntent(prev, cmd.cdb, cmd.dataOut, ok(), T1, observed);
}

describe('nextIntent: each service action after GOOD', () => {
  it('REGISTER learns the key and the APTPL / ALL_TG_PT flags', () => {
    const n = apply(base(), prOut(PrOutAction.REGISTER, { saKey: 0xabcn, aptpl: true, allTgPt: true }));
    assert.equal(n.key, 0xabcn);
    assert.equal(n.lastKey, 0xabcn);
    assert.equal(n.aptpl, true);
    assert.equal(n.allTgPt, true);
    assert.equal(n.reservation, null);
    assert.equal(n.updatedAt, T1);
  });

  it('REGISTER AND IGNORE with a new key keeps the reservation (it follows the key)', () => {
    const prev = base({ key: 1n, lastKey: 1n, reservation: { type: 5 } });
    const n = apply(prev, prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: 2n }));
    assert.equal(n.key, 2n);
    assert.deepEqual(n.reservation, { type: 5 });
  });

  it('REGISTER with SA key 0 unregisters, drops the reservation and remembers the old key', () => {
    const prev = base({ key: 7n, lastKey: 7n, reservation: { type: 1 } });
    const n = apply(prev, prOut(PrOutAction.REGISTER, { key: 7n, saKey: 0n }));
    assert.equal(n.key, null);
    assert.equal(n.lastKey, 7n);
    assert.equal(n.reservation, null);
  });

  it('a successful REGISTER clears a recorded fence', () => {
    const fenced = fenceIntent(base({ key: 7n, lastKey: 7n }), T0, 'preempted');
    assert.ok(fenced.fenced);
    const n = apply(fenced, prOut(PrOutAction.REGISTER, { saKey: 7n }));
    assert.equal(n.fenced, undefined);
    assert.equal(n.key, 7n);
  });

  it('RESERVE records the type from the CDB and learns the key from the RESERVATION KEY field', () => {
    const n = apply(base(), prOut(PrOutAction.RESERVE, { key: 0x55n, type: 6 }));
    assert.deepEqual(n.reservation, { type: 6 });
    assert.equal(n.key, 0x55n);
  });

  it('RELEASE drops the reservation, keeps the key', () => {
    const n = apply(base({ key: 3n, lastKey: 3n, reservation: { type: 5 } }), prOut(PrOutAction.RELEASE, { key: 3n, type: 5 }));
    assert.equal(n.reservation, null);
    assert.equal(n.key, 3n);
  });

  it('CLEAR unregisters us and drops the reservation', () => {
    const n = apply(base({ key: 3n, lastKey: 3n, reservation: { type: 5 } }), prOut(PrOutAction.CLEAR, { key: 3n }));
    assert.equal(n.key, null);
    assert.equal(n.lastKey, 3n);
    assert.equal(n.reservation, null);
  });

  for (const sa of [PrOutAction.PREEMPT, PrOutAction.PREEMPT_AND_ABORT]) {
    const name = sa === PrOutAction.PREEMPT ? 'PREEMPT' : 'PREEMPT AND ABORT';
    it(`${name} of another key: the reservation is ours when READ RESERVATION shows our key`, () => {
      const n = apply(base({ key: 0xbn, lastKey: 0xbn }), prOut(sa, { key: 0xbn, saKey: 0xan, type: 5 }), { reservation: { key: 0xbn, type: 5 } });
      assert.deepEqual(n.reservation, { type: 5 });
    });
    it(`${name} of another key: no reservation taken when another key still holds it`, () => {
      const prev = base({ key: 0xbn, lastKey: 0xbn });
      const n = apply(prev, prOut(sa, { key: 0xbn, saKey: 0xan, type: 5 }), { reservation: { key: 0xcn, type: 1 } });
      assert.equal(n, prev);
    });
    it(`${name} of another key without an observation keeps what we held`, () => {
      const prev = base({ key: 0xbn, lastKey: 0xbn, reservation: { type: 6 } });
      assert.equal(apply(prev, prOut(sa, { key: 0xbn, saKey: 0xan, type: 5 })), prev);
    });
    it(`${name} of our own key keeps our reservation with the CDB's type`, () => {
      const n = apply(base({ key: 0xbn, lastKey: 0xbn, reservation: { type: 5 } }), prOut(sa, { key: 0xbn, saKey: 0xbn, type: 6 }));
      assert.deepEqual(n.reservation, { type: 6 });
    });
    it(`${name} under an All Registrants reservation of the CDB's type counts as ours`, () => {
      const n = apply(base({ key: 0xbn, lastKey: 0xbn }), prOut(sa, { key: 0xbn, saKey: 0n, type: 7 }), { reservation: { key: 0n, type: 7 } });
      assert.deepEqual(n.reservation, { type: 7 });
    });
  }

  it('REGISTER AND MOVE moves the reservation away; UNREG unregisters us', () => {
    const prev = base({ key: 1n, lastKey: 1n, reservation: { type: 1 } });
    const params = (unreg: boolean) =>
      encodeRegisterAndMoveParams({ key: 1n, serviceActionKey: 2n, unreg, aptpl: false, relativeTargetPortId: 2, transportId: sas(9) });
    const cdb = encodePrOutCdb({ serviceAction: PrOutAction.REGISTER_AND_MOVE, type: 1, parameterListLength: params(false).length });
    const kept = apply(prev, { cdb, dataOut: params(false) });
    assert.equal(kept.reservation, null);
    assert.equal(kept.key, 1n);
    const gone = apply(prev, { cdb, dataOut: params(true) });
    assert.equal(gone.reservation, null);
    assert.equal(gone.key, null);
    assert.equal(gone.lastKey, 1n);
  });

  it('REPLACE LOST RESERVATION, PR IN and unreadable parameter lists change nothing', () => {
    const prev = base({ key: 1n, lastKey: 1n });
    assert.equal(apply(prev, prOut(PrOutAction.REPLACE_LOST_RESERVATION, { key: 1n, type: 1 })), prev);
    assert.equal(apply(prev, prIn(PrInAction.READ_KEYS)), prev);
    const short = prOut(PrOutAction.REGISTER, { saKey: 5n });
    assert.equal(apply(prev, { cdb: short.cdb, dataOut: short.dataOut!.subarray(0, 20) }), prev);
    assert.equal(apply(prev, { cdb: short.cdb, dataOut: null }), prev);
  });

  it('a command that repeats the current state returns the same object (no write)', () => {
    const prev = base({ key: 9n, lastKey: 9n });
    assert.equal(apply(prev, prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: 9n })), prev);
  });
});

// --- properties -------------------------------------------------------------------------------------

const key = fc.oneof(fc.bigInt({ min: 1n, max: (1n << 64n) - 1n }), fc.bigInt({ min: 1n, max: 16n }));
const arbIntent: fc.Arbitrary<MapIntent> = fc
  .record({
    key: fc.option(key, { nil: null }),
    lastKey: fc.option(key, { nil: null }),
    aptpl: fc.boolean(),
    allTgPt: fc.boolean(),
    reservation: fc.option(fc.integer({ min: 0, max: 15 }).map((type) => ({ type })), { nil: null }),
    fenced: fc.option(fc.record({ at: fc.constant(T0), formerKey: key, detail: fc.string({ maxLength: 20 }) }).map((f) => ({ ...f })), { nil: undefined }),
  })
  .map((r) => {
    const { fenced, ...rest } = r;
    return fenced === undefined ? { ...base(), ...rest } : { ...base(), ...rest, fenced };
  });

/** Raw CDBs of either opcode with any service action and scope/type byte. */
const rawCdb = fc.tuple(fc.constantFrom(0x5e, 0x5f), fc.integer({ min: 0, max: 0x1f }), fc.integer({ min: 0, max: 0xff }), fc.integer({ min: 10, max: 16 })).map(([op, sa, st, len]) => {
  const c = new Uint8Array(len);
  c[0] = op;
  c[1] = sa;
  c[2] = st;
  c[8] = 24;
  return c;
});
/** Well-formed PR OUT commands of every service action (most of the runs), and raw noise. */
const arbCommand: fc.Arbitrary<{ cdb: Uint8Array; dataOut: Uint8Array | null }> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .record({
        sa: fc.integer({ min: 0, max: 8 }),
        key: fc.bigInt({ min: 0n, max: 16n }),
        saKey: fc.bigInt({ min: 0n, max: 16n }),
        type: fc.integer({ min: 0, max: 15 }),
        aptpl: fc.boolean(),
        allTgPt: fc.boolean(),
      })
      .map((r) => {
        if (r.sa !== PrOutAction.REGISTER_AND_MOVE) return prOut(r.sa, r);
        const dataOut = encodeRegisterAndMoveParams({ key: r.key, serviceActionKey: r.saKey, unreg: r.aptpl, aptpl: r.allTgPt, relativeTargetPortId: 1, transportId: sas(1) });
        return { cdb: encodePrOutCdb({ serviceAction: r.sa, type: r.type, parameterListLength: dataOut.length }), dataOut };
      }),
  },
  { weight: 1, arbitrary: fc.record({ cdb: rawCdb, dataOut: fc.option(fc.uint8Array({ minLength: 0, maxLength: 40, size: 'max' }), { nil: null }) }) },
);
const notGood = fc.constantFrom(
  reservationConflict(),
  checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
  checkCondition(SenseKey.UNIT_ATTENTION, Asc.REGISTRATIONS_PREEMPTED),
  { kind: 'busy' as const },
  { kind: 'task-set-full' as const },
  transportFailure(0x0e, 'down'),
);
const observed = fc.option(
  fc.record({ reservation: fc.option(fc.record({ key: fc.bigInt({ min: 0n, max: 16n }), type: fc.integer({ min: 0, max: 15 }) }), { nil: null }) }),
  { nil: undefined },
);

describe('nextIntent properties', () => {
  it('anything but GOOD leaves the intent exactly as it was', () => {
    fc.assert(
      fc.property(arbIntent, arbCommand, notGood, observed, (prev, cmd, outcome, obs) => {
        const r: FanoutResult = { outcome, decidedBy: null, commands: [], pendingPaths: [] };
        assert.equal(nextIntent(prev, cmd.cdb, cmd.dataOut, r, T1, obs), prev);
      }),
      { numRuns: 500 },
    );
  });

  it('after GOOD: a key is never 0, updatedAt moves only with a change, PR IN never changes it', () => {
    fc.assert(
      fc.property(arbIntent, arbCommand, observed, (prev, { cdb, dataOut }, obs) => {
        const n = nextIntent(prev, cdb, dataOut, ok(), T1, obs);
        assert.notEqual(n.key, 0n);
        if (n === prev) return;
        assert.equal(cdb[0], 0x5f, 'PR IN changed the intent');
        assert.equal(n.updatedAt, T1);
        assert.equal(sameIntentState(n, prev), false, 'a new object without a change');
        assert.equal(n.wwid, prev.wwid);
      }),
      { numRuns: 500 },
    );
  });

  it('after GOOD, REGISTER / RESERVE / RELEASE / CLEAR land where SPC-4 says, whatever came before', () => {
    const simple = fc.record({
      sa: fc.constantFrom(PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, PrOutAction.RESERVE, PrOutAction.RELEASE, PrOutAction.CLEAR),
      key: fc.bigInt({ min: 1n, max: 16n }),
      saKey: fc.bigInt({ min: 0n, max: 16n }),
      type: fc.constantFrom(1, 3, 5, 6, 7, 8),
      aptpl: fc.boolean(),
      allTgPt: fc.boolean(),
    });
    fc.assert(
      fc.property(arbIntent, simple, (prev, c) => {
        const cmd = prOut(c.sa, c);
        const n = nextIntent(prev, cmd.cdb, cmd.dataOut, ok(), T1);
        switch (c.sa) {
          case PrOutAction.REGISTER:
          case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
            if (c.saKey === 0n) {
              assert.equal(n.key, null);
              assert.equal(n.reservation, null);
            } else {
              assert.equal(n.key, c.saKey);
              assert.equal(n.aptpl, c.aptpl);
              assert.equal(n.allTgPt, c.allTgPt);
              assert.equal(n.fenced, undefined);
              assert.deepEqual(n.reservation, prev.reservation);
            }
            break;
          case PrOutAction.RESERVE:
            assert.deepEqual(n.reservation, { type: c.type });
            assert.equal(n.key, c.key);
            break;
          case PrOutAction.RELEASE:
            assert.equal(n.reservation, null);
            assert.equal(n.key, c.key);
            break;
          case PrOutAction.CLEAR:
            assert.equal(n.key, null);
            assert.equal(n.reservation, null);
            assert.equal(n.lastKey, c.key);
            break;
        }
      }),
      { numRuns: 500 },
    );
  });

  it('JSON round trip preserves every field', () => {
    fc.assert(
      fc.property(arbIntent, (i) => {
        assert.deepEqual(intentFromJson(intentToJson(i)), i);
      }),
      { numRuns: 300 },
    );
  });
});

describe('intent JSON', () => {
  it('stores keys as hex strings with a format version', () => {
    const doc = JSON.parse(intentToJson(base({ key: 0xffff_ffff_ffff_ffffn, lastKey: 1n }))) as Record<string, unknown>;
    // Version 1 (readable by a prmux that predates the write-ahead record) when nothing is pending.
    assert.equal(doc['version'], 1);
    assert.equal('pending' in doc, false);
    assert.equal(doc['key'], '0xffffffffffffffff');
    assert.equal(doc['lastKey'], '0x1');
  });

  for (const [what, text] of [
    ['not JSON', '{'],
    ['another version', JSON.stringify({ ...JSON.parse(intentToJson(base())), version: 3 })],
    ['a pending record without a CDB', JSON.stringify({ ...JSON.parse(intentToJson(base())), version: 2, pending: { data: null, startedAt: T1 } })],
    ['a pending record with a non-hex parameter list', JSON.stringify({ ...JSON.parse(intentToJson(base())), version: 2, pending: { cdb: '5f000000000000001800', data: 'zz', startedAt: T1 } })],
    ['a numeric key', JSON.stringify({ ...JSON.parse(intentToJson(base())), key: 5 })],
    ['a key longer than 64 bits', JSON.stringify({ ...JSON.parse(intentToJson(base())), key: '0x1ffffffffffffffff' })],
    ['no wwid', JSON.stringify({ ...JSON.parse(intentToJson(base())), wwid: '' })],
    ['a bad reservation', JSON.stringify({ ...JSON.parse(intentToJson(base())), reservation: { type: 'x' } })],
  ] as const) {
    it(`refuses ${what} with a decode error`, () => {
      assert.throws(() => intentFromJson(text), (e: unknown) => isPrmuxError(e, 'ERR_PRMUX_DECODE'));
    });
  }
});

describe('write-ahead record (pending)', () => {
  const reg = prOut(PrOutAction.REGISTER, { key: 0x11n, saKey: 0x22n, allTgPt: true });
  const pending = { cdb: Buffer.from(reg.cdb).toString('hex'), data: Buffer.from(reg.dataOut!).toString('hex'), startedAt: T1 };

  it('is written as version 2 and read back; the intent without it is the previous one', () => {
    const prev = base({ key: 0x11n, lastKey: 0x11n, aptpl: true });
    const w = withPending(prev, pending);
    const doc = JSON.parse(intentToJson(w)) as Record<string, unknown>;
    assert.equal(doc['version'], 2);
    const back = intentFromJson(intentToJson(w));
    assert.deepEqual(back, w);
    assert.deepEqual(withoutPending(back), prev);
    assert.equal(withoutPending(prev), prev, 'no record: the same object');
    assert.equal(sameIntentState(w, prev), false, 'the record is part of the state written');
  });

  it('loads a version 1 file of an older prmux (no pending)', () => {
    const v1 = JSON.stringify({ version: 1, wwid: 'w1', mapName: 'mpatha', key: '0x5', lastKey: '0x5', aptpl: false, allTgPt: false, reservation: null, updatedAt: T0 });
    const i = intentFromJson(v1);
    assert.equal(i.key, 5n);
    assert.equal(i.pending, undefined);
  });

  it('pendingEffect reads what the interrupted command was registering', () => {
    assert.deepEqual(pendingEffect(pending), { opcode: 0x5f, serviceAction: PrOutAction.REGISTER, key: 0x11n, registering: 0x22n });
    const unreg = prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, { saKey: 0n });
    const u = pendingEffect({ cdb: Buffer.from(unreg.cdb).toString('hex'), data: Buffer.from(unreg.dataOut!).toString('hex'), startedAt: T1 });
    assert.equal(u.registering, null, 'SA key 0 unregisters');
    const rel = prOut(PrOutAction.RELEASE, { key: 0x33n, type: 5 });
    assert.equal(pendingEffect({ cdb: Buffer.from(rel.cdb).toString('hex'), data: Buffer.from(rel.dataOut!).toString('hex'), startedAt: T1 }).registering, 0x33n);
    assert.equal(pendingEffect({ cdb: Buffer.from(rel.cdb).toString('hex'), data: null, startedAt: T1 }).registering, null);
  });
});

describe('fenceIntent', () => {
  it('drops key and reservation, remembers the former key and why', () => {
    const f = fenceIntent(base({ key: 4n, lastKey: 4n, reservation: { type: 5 } }), T1, 'gone');
    assert.equal(f.key, null);
    assert.equal(f.reservation, null);
    assert.equal(f.lastKey, 4n);
    assert.deepEqual(f.fenced, { at: T1, formerKey: 4n, detail: 'gone' });
  });
});
