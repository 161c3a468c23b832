// Property tests (fast-check): every structure round-trips, and no input makes a decoder throw
// anything but a DecodeError. Whatever a decoder accepts, the matching encoder can re-encode and
// the decoder reads back the same value (the codecs agree on what is valid).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DecodeError } from '../../src/errors.js';
import { fromHex, hex, readU16, readU32, readU64, writeU16, writeU32, writeU64 } from '../../src/scsi/bytes.js';
import { decodePrCdb, decodePrInCdb, decodePrOutCdb, encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import {
  decodeCapabilities,
  decodePrInData,
  decodeReadFullStatus,
  decodeReadKeys,
  decodeReadReservation,
  encodeCapabilities,
  encodeReadFullStatus,
  encodeReadKeys,
  encodeReadReservation,
  truncateToAllocationLength,
} from '../../src/scsi/prin-data.js';
import { decodePrOutParams, encodePrOutParams, encodeRegisterAndMoveParams, isParameterListLengthError } from '../../src/scsi/prout-params.js';
import { buildSense, formatSense, parseSense, senseEquals, senseKeyAscOf } from '../../src/scsi/sense.js';
import {
  decodeTransportId,
  encodeTransportId,
  formatTransportId,
  transportIdEquals,
  transportIdLength,
} from '../../src/scsi/transport-id.js';
import type { PrInCdb, PrOutCdb, TransportId } from '../../src/scsi/types.js';
import {
  anyTid,
  basicParams,
  capabilities,
  fullStatusDescriptor,
  listedTid,
  mutated,
  rawTid,
  readFullStatusData,
  readKeysData,
  readReservationData,
  registerAndMoveParams,
  u64,
  valueOrDecodeError,
} from './arbitraries.js';

/** Cases run across this file; the suite promises at least 100,000. */
let casesRun = 0;
function check<Ts extends [unknown, ...unknown[]]>(numRuns: number, arbs: { [K in keyof Ts]: fc.Arbitrary<Ts[K]> }, predicate: (...args: Ts) => void): void {
  fc.assert(fc.property(...arbs, predicate), { numRuns });
  casesRun += numRuns;
}

const bytes = (maxLength: number): fc.Arbitrary<Uint8Array> => fc.uint8Array({ maxLength });

function roundTripTid(tid: TransportId): void {
  const enc = encodeTransportId(tid);
  const [back, next] = decodeTransportId(enc, 0, tid.protocol === 'raw' ? enc.length : undefined);
  assert.deepEqual(back, tid);
  assert.equal(next, enc.length);
  assert.ok(transportIdEquals(back, tid));
}

describe('round trips', () => {
  it('hex / fromHex', () => {
    check(3000, [bytes(64), fc.constantFrom('', ' ', '\n')], (b, sep) => {
      const text = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(sep);
      assert.deepEqual(fromHex(text), b);
      assert.equal(hex(fromHex(text.toUpperCase())), hex(b));
    });
  });

  it('big-endian readers and writers', () => {
    check(3000, [fc.nat(16), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff_ffff }), u64], (offset, a, b, c) => {
      const buf = new Uint8Array(offset + 14);
      writeU16(buf, offset, a);
      writeU32(buf, offset + 2, b);
      writeU64(buf, offset + 6, c);
      assert.deepEqual([readU16(buf, offset), readU32(buf, offset + 2), readU64(buf, offset + 6)], [a, b, c]);
    });
  });

  it('PERSISTENT RESERVE IN CDB', () => {
    const fields = fc.record({ serviceAction: fc.integer({ min: 0, max: 31 }), allocationLength: fc.integer({ min: 0, max: 0xffff }), control: fc.integer({ min: 0, max: 255 }) }, { noNullPrototype: true });
    check(5000, [fields, fc.constantFrom(10 as const, 16 as const)], (f, size) => {
      const enc = encodePrInCdb(f, size);
      assert.equal(enc.length, size);
      const expected: PrInCdb = { opcode: 0x5e, ...f };
      assert.deepEqual(decodePrInCdb(enc), expected);
      assert.deepEqual(decodePrCdb(enc), expected);
    });
  });

  it('PERSISTENT RESERVE OUT CDB', () => {
    const fields = fc.record({
      serviceAction: fc.integer({ min: 0, max: 31 }),
      scope: fc.integer({ min: 0, max: 15 }),
      type: fc.integer({ min: 0, max: 15 }),
      parameterListLength: fc.integer({ min: 0, max: 0xffff_ffff }),
      control: fc.integer({ min: 0, max: 255 }),
    }, { noNullPrototype: true });
    check(5000, [fields, fc.constantFrom(10 as const, 16 as const)], (f, size) => {
      const enc = encodePrOutCdb(f, size);
      const expected: PrOutCdb = { opcode: 0x5f, ...f };
      assert.deepEqual(decodePrOutCdb(enc), expected);
      assert.deepEqual(decodePrCdb(enc), expected);
    });
  });

  it('TransportIDs of every protocol, at any offset', () => {
    check(8000, [anyTid, bytes(8)], (tid, before) => {
      roundTripTid(tid);
      const enc = encodeTransportId(tid);
      const buf = new Uint8Array(before.length + enc.length + 3);
      buf.set(before);
      buf.set(enc, before.length);
      const [back, next] = decodeTransportId(buf, before.length, tid.protocol === 'raw' ? enc.length : undefined);
      assert.deepEqual(back, tid);
      assert.equal(next, before.length + enc.length);
      if (tid.protocol !== 'raw') assert.equal(transportIdLength(buf, before.length), enc.length);
      assert.equal(enc.length % 4, 0);
      assert.ok(enc.length >= 24);
      assert.ok(formatTransportId(tid).length > 0);
    });
  });

  it('iSCSI TransportIDs compare names and ISIDs case-insensitively', () => {
    const ascii = fc.string({ unit: fc.constantFrom(...'abcxyzABCXYZ019-.:'.split('')), minLength: 1, maxLength: 40 });
    check(3000, [ascii, fc.boolean(), fc.string({ unit: fc.constantFrom(...'0123456789abcdef'.split('')), minLength: 12, maxLength: 12 })], (name, port, isid) => {
      const a: TransportId = port ? { protocol: 'iscsi', format: 'port', name, isid } : { protocol: 'iscsi', format: 'device', name };
      const b: TransportId = port ? { protocol: 'iscsi', format: 'port', name: name.toUpperCase(), isid: isid.toUpperCase() } : { protocol: 'iscsi', format: 'device', name: name.toLowerCase() };
      assert.ok(transportIdEquals(a, b));
      assert.ok(transportIdEquals(b, a));
      roundTripTid(b);
    });
  });

  it('PR OUT basic parameter lists', () => {
    check(6000, [basicParams, fc.integer({ min: 0, max: 31 }).filter((sa) => sa !== 7)], (p, sa) => {
      const enc = encodePrOutParams(p);
      assert.equal(enc.length, p.specIPt ? 28 + p.transportIds.reduce((n, t) => n + encodeTransportId(t).length, 0) : 24);
      assert.deepEqual(decodePrOutParams(enc, sa), p);
    });
  });

  it('PR OUT REGISTER AND MOVE parameter lists', () => {
    check(5000, [registerAndMoveParams], (p) => {
      const enc = encodeRegisterAndMoveParams(p);
      assert.equal(enc.length, 24 + encodeTransportId(p.transportId).length);
      assert.deepEqual(decodePrOutParams(enc, 7), p);
    });
  });

  it('READ KEYS', () => {
    check(4000, [readKeysData], (d) => {
      assert.deepEqual(decodeReadKeys(encodeReadKeys(d)), { ...d, additionalLength: 8 * d.keys.length, truncated: false });
    });
  });

  it('READ RESERVATION', () => {
    check(4000, [readReservationData], (d) => {
      assert.deepEqual(decodeReadReservation(encodeReadReservation(d)), { ...d, additionalLength: d.reservation ? 16 : 0, truncated: false });
    });
  });

  it('REPORT CAPABILITIES', () => {
    check(4000, [capabilities], (c) => {
      const enc = encodeCapabilities(c);
      assert.equal(enc.length, 8);
      assert.deepEqual(decodeCapabilities(enc), c);
      assert.deepEqual(decodePrInData(2, enc), { action: 'report-capabilities', ...c });
    });
  });

  it('READ FULL STATUS', () => {
    check(4000, [readFullStatusData], (d) => {
      const enc = encodeReadFullStatus(d);
      assert.deepEqual(decodeReadFullStatus(enc), { ...d, additionalLength: enc.length - 8, truncated: false });
    });
  });

  it('READ FULL STATUS and READ KEYS truncated at any allocation length', () => {
    check(4000, [readFullStatusData, fc.nat(600)], (d, alloc) => {
      const enc = encodeReadFullStatus(d);
      const prefix = truncateToAllocationLength(enc, alloc);
      if (prefix.length < 8) {
        assert.throws(() => decodeReadFullStatus(prefix), DecodeError);
        return;
      }
      const got = decodeReadFullStatus(prefix);
      let end = 8;
      let fit = 0;
      for (const desc of d.descriptors) {
        end += 24 + encodeTransportId(desc.transportId).length;
        if (end > prefix.length) break;
        fit++;
      }
      assert.deepEqual(got, { generation: d.generation, descriptors: d.descriptors.slice(0, fit), additionalLength: enc.length - 8, truncated: prefix.length < enc.length });
    });
    check(3000, [readKeysData, fc.nat(120)], (d, alloc) => {
      const prefix = truncateToAllocationLength(encodeReadKeys(d), alloc);
      if (prefix.length < 8) return;
      const got = decodeReadKeys(prefix);
      assert.deepEqual(got.keys, d.keys.slice(0, (prefix.length - 8) >> 3));
      assert.equal(got.truncated, prefix.length < 8 + 8 * d.keys.length);
      assert.equal(got.additionalLength, 8 * d.keys.length);
    });
  });

  it('sense data, fixed and descriptor', () => {
    const sense = fc.record(
      {
        key: fc.integer({ min: 0, max: 15 }),
        asc: fc.integer({ min: 0, max: 255 }),
        ascq: fc.integer({ min: 0, max: 255 }),
        information: fc.bigInt({ min: 0n, max: 0xffff_ffffn }),
        senseKeySpecific: fc.uint8Array({ minLength: 3, maxLength: 3 }).map((b) => Uint8Array.of(b[0]! | 0x80, b[1]!, b[2]!)),
      }, { noNullPrototype: true, requiredKeys: ['key', 'asc', 'ascq'] });
    check(5000, [sense, fc.constantFrom('fixed' as const, 'descriptor' as const), fc.nat(80)], (s, format, pad) => {
      const built = buildSense(s, format);
      const parsed = parseSense(built);
      assert.deepEqual(parsed, { format, current: true, ...s });
      const padded = new Uint8Array(built.length + pad);
      padded.set(built);
      assert.deepEqual(parseSense(padded), parsed);
      assert.ok(senseEquals(padded, built));
      assert.ok(senseEquals(parsed, padded));
      assert.deepEqual(senseKeyAscOf(built), { key: s.key, asc: s.asc, ascq: s.ascq });
      assert.match(formatSense(built), /\([0-9a-f]\/[0-9a-f]{2}\/[0-9a-f]{2}\)/);
    });
  });
});

describe('arbitrary input: a value or a DecodeError, nothing else', () => {
  it('CDB decoders', () => {
    check(6000, [bytes(20), fc.constantFrom(0x5e, 0x5f, 0x12, undefined)], (raw, opcode) => {
      const b = raw.slice();
      if (opcode !== undefined && b.length > 0) b[0] = opcode;
      for (const decode of [decodePrCdb, decodePrInCdb, decodePrOutCdb]) {
        const r = valueOrDecodeError(() => decode(b));
        if (r instanceof DecodeError) continue;
        const again = r.opcode === 0x5e ? encodePrInCdb(r, 16) : encodePrOutCdb(r, 16);
        assert.deepEqual(decodePrCdb(again), r);
      }
    });
  });

  it('TransportID decoders, on random and on edited TransportIDs', () => {
    const input = fc.oneof(bytes(64), mutated(anyTid.map(encodeTransportId)));
    check(8000, [input, fc.nat(8), fc.option(fc.nat(70), { nil: undefined })], (b, offset, available) => {
      const r = valueOrDecodeError(() => decodeTransportId(b, offset, available));
      if (!(r instanceof DecodeError)) {
        const [tid, next] = r;
        assert.ok(next > offset && next <= b.length);
        if (available === undefined) assert.notEqual(tid.protocol, 'raw');
        roundTripTid(tid);
      }
      const len = valueOrDecodeError(() => transportIdLength(b, offset));
      if (!(r instanceof DecodeError) && available === undefined) assert.equal(len, r[1] - offset);
    });
  });

  it('PR OUT parameter list decoder, on random and on edited lists', () => {
    const input = fc.oneof(
      bytes(80),
      mutated(basicParams.map(encodePrOutParams)),
      mutated(registerAndMoveParams.map(encodeRegisterAndMoveParams)),
    );
    check(12000, [input, fc.oneof(fc.constant(7), fc.integer({ min: 0, max: 31 }))], (b, sa) => {
      const r = valueOrDecodeError(() => decodePrOutParams(b, sa));
      if (r instanceof DecodeError) {
        assert.equal(r.structure, 'PR OUT parameter list');
        // length errors are exactly the lists whose length contradicts the layout
        if (isParameterListLengthError(r)) assert.equal(r.value, b.length);
        return;
      }
      const again = r.form === 'basic' ? encodePrOutParams(r) : encodeRegisterAndMoveParams(r);
      assert.deepEqual(decodePrOutParams(again, r.form === 'basic' ? 0 : 7), r);
    });
  });

  it('PR IN data decoders, on random and on edited data', () => {
    const input = fc.oneof(
      fc.tuple(fc.integer({ min: 0, max: 5 }), bytes(96)),
      fc.tuple(fc.constant(0), mutated(readKeysData.map(encodeReadKeys))),
      fc.tuple(fc.constant(1), mutated(readReservationData.map(encodeReadReservation))),
      fc.tuple(fc.constant(2), mutated(capabilities.map(encodeCapabilities))),
      fc.tuple(fc.constant(3), mutated(fc.array(fullStatusDescriptor, { maxLength: 3 }).map((descriptors) => encodeReadFullStatus({ generation: 1, descriptors })))),
    );
    check(14000, [input], ([sa, b]) => {
      const r = valueOrDecodeError(() => decodePrInData(sa, b));
      for (const decode of [decodeReadKeys, decodeReadReservation, decodeCapabilities, decodeReadFullStatus]) valueOrDecodeError(() => decode(b));
      if (r instanceof DecodeError) return;
      switch (r.action) {
        case 'read-keys':
          assert.deepEqual(decodeReadKeys(encodeReadKeys(r)).keys, r.keys);
          break;
        case 'read-reservation':
          assert.deepEqual(decodeReadReservation(encodeReadReservation(r)).reservation, r.reservation);
          break;
        case 'report-capabilities': {
          const { action: _action, ...c } = r;
          assert.deepEqual(decodeCapabilities(encodeCapabilities(c)), c);
          break;
        }
        case 'read-full-status':
          assert.deepEqual(decodeReadFullStatus(encodeReadFullStatus(r)).descriptors, r.descriptors);
          break;
      }
    });
  });

  it('sense parser, on random and on edited sense', () => {
    const fields = fc.record({ key: fc.integer({ min: 0, max: 15 }), asc: fc.integer({ min: 0, max: 255 }), ascq: fc.integer({ min: 0, max: 255 }) }, { noNullPrototype: true });
    const sks = fc.option(fc.uint8Array({ minLength: 3, maxLength: 3 }).map((b) => Uint8Array.of(b[0]! | 0x80, b[1]!, b[2]!)), { nil: undefined });
    const build = (format: 'fixed' | 'descriptor', maxInfo: bigint) =>
      fc.tuple(fields, fc.option(fc.bigInt({ min: 0n, max: maxInfo }), { nil: undefined }), sks).map(([f, information, senseKeySpecific]) =>
        buildSense({ ...f, ...(information !== undefined ? { information } : {}), ...(senseKeySpecific !== undefined ? { senseKeySpecific } : {}) }, format),
      );
    const built = fc.oneof(build('fixed', 0xffff_ffffn), build('descriptor', (1n << 64n) - 1n));
    check(8000, [fc.oneof(bytes(40), mutated(built))], (b) => {
      const r = valueOrDecodeError(() => parseSense(b));
      const line = formatSense(b);
      assert.equal(typeof line, 'string');
      assert.equal(senseKeyAscOf(b) === null, r instanceof DecodeError);
      if (r instanceof DecodeError || !r.current) return;
      const info = r.information;
      const sks = r.senseKeySpecific;
      const rebuilt = buildSense({ key: r.key, asc: r.asc, ascq: r.ascq, ...(info !== undefined ? { information: info } : {}), ...(sks !== undefined ? { senseKeySpecific: sks } : {}) }, r.format);
      assert.ok(senseEquals(rebuilt, r));
    });
  });

  it('hex parser', () => {
    check(3000, [fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF \nxg-'.split('')), maxLength: 40 })], (s) => {
      const r = valueOrDecodeError(() => fromHex(s));
      if (!(r instanceof DecodeError)) assert.equal(hex(r), s.replace(/\s/g, '').toLowerCase());
    });
  });

  it('raw TransportIDs are only produced with an enclosing length', () => {
    check(2000, [rawTid], (tid) => {
      const enc = encodeTransportId(tid);
      assert.throws(() => decodeTransportId(enc, 0), (e: unknown) => e instanceof DecodeError && e.field === 'PROTOCOL IDENTIFIER');
      assert.deepEqual(decodeTransportId(enc, 0, enc.length)[0], tid);
    });
  });

  it('listed TransportIDs in a SPEC_I_PT list decode as the encoder wrote them', () => {
    check(3000, [fc.array(listedTid, { minLength: 1, maxLength: 6 })], (tids) => {
      const enc = encodePrOutParams({ key: 1n, serviceActionKey: 2n, specIPt: true, allTgPt: false, aptpl: false, transportIds: tids });
      const back = decodePrOutParams(enc, 0);
      assert.ok(back.form === 'basic');
      assert.equal(back.transportIds.length, tids.length);
      back.transportIds.forEach((t, i) => assert.ok(transportIdEquals(t, tids[i]!)));
    });
  });
});

describe('suite size', () => {
  it('runs at least 100,000 property cases', () => {
    assert.ok(casesRun >= 100_000, `ran ${casesRun}`);
  });
});
