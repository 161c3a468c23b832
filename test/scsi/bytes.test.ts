import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EncodeError } from '../../src/errors.js';
import {
  bytesEqual,
  fromHex,
  hex,
  keyToHex,
  readU16,
  readU32,
  readU64,
  readU8,
  writeU16,
  writeU32,
  writeU64,
  writeU8,
} from '../../src/scsi/bytes.js';
import { assertDecodeError } from './arbitraries.js';

describe('hex / fromHex', () => {
  it('renders lowercase hex without separators', () => {
    assert.equal(hex(Uint8Array.of(0x00, 0xab, 0x5e, 0xff)), '00ab5eff');
    assert.equal(hex(new Uint8Array(0)), '');
  });

  it('parses upper and lower case, ignoring spaces, tabs and newlines', () => {
    assert.deepEqual(fromHex('00 AB\n5e\tFf\r\n'), Uint8Array.of(0x00, 0xab, 0x5e, 0xff));
    assert.deepEqual(fromHex(''), new Uint8Array(0));
    assert.deepEqual(fromHex('0008 1d 90 ea01 0000'), Uint8Array.of(0, 8, 0x1d, 0x90, 0xea, 0x01, 0, 0));
  });

  it('rejects an odd number of digits', () => {
    assertDecodeError(() => fromHex('abc'), 'digit count', 3);
    assertDecodeError(() => fromHex('ab c'), 'digit count', 3);
  });

  it('rejects characters that are not hex digits', () => {
    assertDecodeError(() => fromHex('0g'), 'hex digit', 'g');
    assertDecodeError(() => fromHex('0x12'), 'hex digit', 'x');
    assertDecodeError(() => fromHex('12,34'), 'hex digit', ',');
  });
});

describe('big-endian readers', () => {
  const bytes = fromHex('0102030405060708090a');

  it('read at any offset', () => {
    assert.equal(readU8(bytes, 9), 0x0a);
    assert.equal(readU16(bytes, 0), 0x0102);
    assert.equal(readU16(bytes, 8), 0x090a);
    assert.equal(readU32(bytes, 1), 0x02030405);
    assert.equal(readU64(bytes, 2), 0x030405060708090an);
  });

  it('read unsigned values', () => {
    const ff = fromHex('ffffffffffffffff');
    assert.equal(readU16(ff, 0), 0xffff);
    assert.equal(readU32(ff, 0), 0xffff_ffff);
    assert.equal(readU64(ff, 0), 0xffff_ffff_ffff_ffffn);
  });

  it('respect the byteOffset of a subarray', () => {
    const sub = bytes.subarray(2);
    assert.equal(readU16(sub, 0), 0x0304);
    assert.equal(readU32(sub, 1), 0x04050607);
    assert.equal(readU64(sub, 0), 0x030405060708090an);
    assertDecodeError(() => readU64(bytes.subarray(3), 0), 'offset', 0);
  });

  it('reject reads past the end or at bad offsets with a DecodeError', () => {
    assertDecodeError(() => readU8(bytes, 10), 'offset', 10);
    assertDecodeError(() => readU16(bytes, 9), 'offset', 9);
    assertDecodeError(() => readU32(bytes, 7), 'offset', 7);
    assertDecodeError(() => readU64(bytes, 3), 'offset', 3);
    assertDecodeError(() => readU16(bytes, -1), 'offset', -1);
    assertDecodeError(() => readU16(bytes, 1.5), 'offset', 1.5);
  });
});

describe('big-endian writers', () => {
  it('write what the readers read back', () => {
    const out = new Uint8Array(16);
    writeU8(out, 0, 0xfe);
    writeU16(out, 1, 0xbeef);
    writeU32(out, 3, 0xdeadbeef);
    writeU64(out, 7, 0x0102030405060708n);
    assert.equal(hex(out), 'febeefdeadbeef010203040506070800');
  });

  it('write into a subarray at its own offsets', () => {
    const backing = new Uint8Array(8);
    writeU32(backing.subarray(4), 0, 0x11223344);
    assert.equal(hex(backing), '0000000011223344');
  });

  it('reject values out of range with an EncodeError', () => {
    const out = new Uint8Array(8);
    for (const [fn, v] of [
      [() => writeU8(out, 0, 256), 256],
      [() => writeU16(out, 0, 0x10000), 0x10000],
      [() => writeU32(out, 0, 2 ** 32), 2 ** 32],
      [() => writeU32(out, 0, -1), -1],
      [() => writeU16(out, 0, 1.5), 1.5],
      [() => writeU64(out, 0, 1n << 64n), 1n << 64n],
      [() => writeU64(out, 0, -1n), -1n],
    ] as const) {
      assert.throws(fn, (e: unknown) => e instanceof EncodeError && e.value === v);
    }
  });

  it('reject writes past the end', () => {
    assert.throws(() => writeU32(new Uint8Array(3), 0, 1), EncodeError);
    assert.throws(() => writeU64(new Uint8Array(8), 1, 1n), EncodeError);
  });
});

describe('keyToHex / bytesEqual', () => {
  it('formats keys as minimal lowercase hex', () => {
    assert.equal(keyToHex(0n), '0x0');
    assert.equal(keyToHex(0x5150n), '0x5150');
    assert.equal(keyToHex(0xabc123n), '0xabc123');
    assert.equal(keyToHex(0xffff_ffff_ffff_ffffn), '0xffffffffffffffff');
  });

  it('compares bytes', () => {
    assert.ok(bytesEqual(Uint8Array.of(1, 2), Uint8Array.of(1, 2)));
    assert.ok(!bytesEqual(Uint8Array.of(1, 2), Uint8Array.of(1, 3)));
    assert.ok(!bytesEqual(Uint8Array.of(1, 2), Uint8Array.of(1, 2, 0)));
  });
});
