// fast-check arbitraries for the SCSI PR value types, and helpers shared by the scsi tests.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DecodeError } from '../../src/errors.js';
import type {
  Capabilities,
  FullStatusDescriptor,
  PrOutParams,
  ReadFullStatusData,
  ReadKeysData,
  ReadReservationData,
  RegisterAndMoveParams,
  TransportId,
} from '../../src/scsi/types.js';

export const U64_MAX = (1n << 64n) - 1n;

/** 64-bit values biased towards the edges and small keys, as real keys are. */
export const u64 = fc.oneof(
  fc.bigInt({ min: 0n, max: U64_MAX }),
  fc.bigInt({ min: 0n, max: 0xffffn }),
  fc.constantFrom(0n, 1n, U64_MAX, 1n << 63n),
);
export const u32 = fc.oneof(fc.integer({ min: 0, max: 0xffff_ffff }), fc.constantFrom(0, 1, 0xffff_ffff));
export const u16 = fc.integer({ min: 0, max: 0xffff });
export const nibble = fc.integer({ min: 0, max: 15 });

/** Characters of iSCSI names (RFC 3720 3.2.6.2) plus some non-ASCII ones to exercise UTF-8. */
const nameChar = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-.:'.split('')) },
  { weight: 1, arbitrary: fc.constantFrom('é', 'ß', 'Ω', '日', '本', '😀', '\u{10ffff}') },
);
export const iscsiName = fc.string({ unit: nameChar, minLength: 1, maxLength: 90 });
export const isid = fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF'.split('')), minLength: 12, maxLength: 12 });

export const fcTid = u64.map((nPortName): TransportId => ({ protocol: 'fc', nPortName }));
export const sasTid = u64.map((sasAddress): TransportId => ({ protocol: 'sas', sasAddress }));
export const iscsiDeviceTid = iscsiName.map((name): TransportId => ({ protocol: 'iscsi', format: 'device', name }));
export const iscsiPortTid = fc.tuple(iscsiName, isid).map(([name, i]): TransportId => ({ protocol: 'iscsi', format: 'port', name, isid: i }));

/** TransportIDs a PR OUT parameter list can carry (no raw). */
export const listedTid: fc.Arbitrary<TransportId> = fc.oneof(fcTid, sasTid, iscsiDeviceTid, iscsiPortTid);

/** A TransportID of a protocol prmux does not code, as READ FULL STATUS may report it. */
export const rawTid: fc.Arbitrary<TransportId> = fc
  .record({
    protocolId: fc.constantFrom(1, 2, 3, 4, 7, 8, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf),
    formatCode: fc.integer({ min: 0, max: 3 }),
    words: fc.integer({ min: 6, max: 16 }),
    fill: fc.uint8Array({ minLength: 64, maxLength: 64 }),
  })
  .map(({ protocolId, formatCode, words, fill }): TransportId => {
    const bytes = fill.slice(0, words * 4);
    bytes[0] = (formatCode << 6) | (bytes[0]! & 0x30) | protocolId;
    return { protocol: 'raw', protocolId, formatCode, bytes };
  });

export const anyTid: fc.Arbitrary<TransportId> = fc.oneof(listedTid, rawTid);

export const basicParams: fc.Arbitrary<PrOutParams> = fc
  .record({
    key: u64,
    serviceActionKey: u64,
    specIPt: fc.boolean(),
    allTgPt: fc.boolean(),
    aptpl: fc.boolean(),
    tids: fc.array(listedTid, { maxLength: 4 }),
  })
  .map(({ tids, ...rest }) => ({ form: 'basic', ...rest, transportIds: rest.specIPt ? tids : [] }));

export const registerAndMoveParams: fc.Arbitrary<RegisterAndMoveParams> = fc.record({
  form: fc.constant('register-and-move' as const),
  key: u64,
  serviceActionKey: u64,
  unreg: fc.boolean(),
  aptpl: fc.boolean(),
  relativeTargetPortId: u16,
  transportId: listedTid,
}, { noNullPrototype: true });

export const readKeysData: fc.Arbitrary<ReadKeysData> = fc.record({ generation: u32, keys: fc.array(u64, { maxLength: 12 }) }, { noNullPrototype: true });

export const readReservationData: fc.Arbitrary<ReadReservationData> = fc.record({
  generation: u32,
  reservation: fc.option(fc.record({ key: u64, scope: nibble, type: nibble }, { noNullPrototype: true }), { nil: null }),
}, { noNullPrototype: true });

export const capabilities: fc.Arbitrary<Capabilities> = fc.record({
  crh: fc.boolean(),
  sipC: fc.boolean(),
  atpC: fc.boolean(),
  ptplC: fc.boolean(),
  tmv: fc.boolean(),
  allowCommands: fc.integer({ min: 0, max: 7 }),
  ptplA: fc.boolean(),
  types: fc.subarray([1, 3, 5, 6, 7, 8]).map((t) => new Set<number>(t)),
}, { noNullPrototype: true });

export const fullStatusDescriptor: fc.Arbitrary<FullStatusDescriptor> = fc.record({
  key: u64,
  allTgPt: fc.boolean(),
  reservationHolder: fc.boolean(),
  scope: nibble,
  type: nibble,
  relativeTargetPortId: u16,
  transportId: anyTid,
}, { noNullPrototype: true });

export const readFullStatusData: fc.Arbitrary<ReadFullStatusData> = fc.record({
  generation: u32,
  descriptors: fc.array(fullStatusDescriptor, { maxLength: 5 }),
}, { noNullPrototype: true });

/**
 * Random edits of a valid encoding, to reach the decoders' deep paths: half keep the length and
 * overwrite a few bytes, the rest also cut the bytes short or append some.
 */
export function mutated(base: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const resize = fc.oneof(
    { weight: 2, arbitrary: fc.constant({ cut: undefined, tail: new Uint8Array(0) }) },
    { weight: 1, arbitrary: fc.nat().map((cut) => ({ cut, tail: new Uint8Array(0) })) },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((tail) => ({ cut: undefined, tail })) },
  );
  return fc
    .tuple(base, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }), resize)
    .map(([bytes, edits, { cut, tail }]) => {
      let out: Uint8Array = bytes.slice();
      for (const [at, v] of edits) if (out.length > 0) out[at % out.length] = v;
      if (cut !== undefined) out = out.slice(0, cut % (out.length + 1));
      if (tail.length > 0) out = concat(out, tail);
      return out;
    });
}

/**
 * Run a decoder on arbitrary input: it must return a value or throw a DecodeError with a field
 * and a "Cannot decode" message; any other exception (RangeError, TypeError...) fails the test.
 */
export function valueOrDecodeError<T>(decode: () => T): T | DecodeError {
  try {
    return decode();
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    assert.ok(e.field.length > 0, 'DecodeError names a field');
    assert.match(e.message, /^Cannot decode /);
    return e;
  }
}

/** Assert that `fn` throws a DecodeError on `field` (and optionally check the value received). */
export function assertDecodeError(fn: () => unknown, field: string, value?: unknown): DecodeError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof DecodeError, `expected a DecodeError on ${field}, got ${String(caught)}`);
  assert.equal(caught.field, field, caught.message);
  if (value !== undefined) assert.deepEqual(caught.value, value);
  return caught;
}

/** Concatenate byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
