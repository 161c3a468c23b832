import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EncodeError } from '../../src/errors.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import { Asc, SenseKey } from '../../src/scsi/constants.js';
import { buildSense, formatSense, parseSense, senseEquals, senseKeyAscOf } from '../../src/scsi/sense.js';
import { assertDecodeError, concat } from './arbitraries.js';

const zeros = (n: number): string => '00'.repeat(n);
const invalidFieldInCdb = { key: SenseKey.ILLEGAL_REQUEST, ...Asc.INVALID_FIELD_IN_CDB };

describe('buildSense, fixed format', () => {
  it('is 18 bytes: 70h, key at 2, additional length 10 at 7, ASC/ASCQ at 12/13', () => {
    assert.equal(hex(buildSense(invalidFieldInCdb)), '70' + '00' + '05' + zeros(4) + '0a' + zeros(4) + '24' + '00' + zeros(4));
  });

  it('sets VALID and bytes 3-6 with INFORMATION', () => {
    const b = buildSense({ ...invalidFieldInCdb, information: 0xdeadbeefn });
    assert.equal(b[0], 0xf0);
    assert.equal(hex(b.subarray(3, 7)), 'deadbeef');
  });

  it('puts the sense-key specific bytes at 15-17', () => {
    const b = buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00002') });
    assert.equal(hex(b.subarray(15, 18)), 'c00002');
  });

  it('rejects values that do not fit', () => {
    for (const bad of [
      () => buildSense({ key: 16, asc: 0, ascq: 0 }),
      () => buildSense({ key: 5, asc: 256, ascq: 0 }),
      () => buildSense({ key: 5, asc: 0, ascq: -1 }),
      () => buildSense({ ...invalidFieldInCdb, information: 1n << 32n }),
      () => buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('400002') }), // SKSV clear
      () => buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c000') }),
      () => buildSense({ ...invalidFieldInCdb, information: 1n << 64n }, 'descriptor'),
      () => buildSense(invalidFieldInCdb, 'long' as 'fixed'),
    ]) {
      assert.throws(bad, EncodeError);
    }
  });
});

describe('buildSense, descriptor format', () => {
  it('is the 8-byte header: 72h, key 1, ASC 2, ASCQ 3, additional length 7', () => {
    assert.equal(hex(buildSense(invalidFieldInCdb, 'descriptor')), '72052400' + zeros(3) + '00');
  });

  it('adds an information descriptor (00h, 0Ah, VALID, 64-bit INFORMATION)', () => {
    const b = buildSense({ ...invalidFieldInCdb, information: 0x0102030405060708n }, 'descriptor');
    assert.equal(hex(b), '72052400' + zeros(3) + '0c' + '000a8000' + '0102030405060708');
  });

  it('adds a sense-key specific descriptor (02h, 06h)', () => {
    const b = buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('cf0001') }, 'descriptor');
    assert.equal(hex(b), '72052400' + zeros(3) + '08' + '02060000' + 'cf000100');
    const both = buildSense({ ...invalidFieldInCdb, information: 1n, senseKeySpecific: fromHex('cf0001') }, 'descriptor');
    assert.equal(both[7], 20);
    assert.deepEqual(parseSense(both), { format: 'descriptor', current: true, ...invalidFieldInCdb, information: 1n, senseKeySpecific: fromHex('cf0001') });
  });
});

describe('parseSense', () => {
  it('reads fixed format, current and deferred, with and without VALID', () => {
    const b = buildSense(invalidFieldInCdb).slice();
    assert.deepEqual(parseSense(b), { format: 'fixed', current: true, ...invalidFieldInCdb });
    b[0] = 0x71;
    assert.equal(parseSense(b).current, false);
    b[0] = 0xf1;
    b[6] = 0x2a;
    assert.deepEqual(parseSense(b), { format: 'fixed', current: false, ...invalidFieldInCdb, information: 0x2an });
  });

  it('reads descriptor format, current and deferred, ignoring bit 7 of byte 0', () => {
    const b = buildSense({ key: SenseKey.UNIT_ATTENTION, ...Asc.RESERVATIONS_PREEMPTED }, 'descriptor').slice();
    assert.deepEqual(parseSense(b), { format: 'descriptor', current: true, key: 6, asc: 0x2a, ascq: 0x03 });
    b[0] = 0x73;
    assert.equal(parseSense(b).current, false);
    b[0] = 0xf2;
    assert.equal(parseSense(b).current, true);
  });

  it('masks the sense key out of the fixed-format flag bits', () => {
    const b = buildSense(invalidFieldInCdb).slice();
    b[2] = 0xe5; // FILEMARK, EOM, ILI set
    assert.equal(parseSense(b).key, 5);
  });

  it('takes the sense-key specific bytes only when SKSV is set', () => {
    const b = buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00002') }).slice();
    assert.deepEqual(parseSense(b).senseKeySpecific, fromHex('c00002'));
    b[15] = 0x40;
    assert.equal(parseSense(b).senseKeySpecific, undefined);
  });

  it('treats the 96-byte pr-helper sense buffer like the sense inside it', () => {
    const b = buildSense(invalidFieldInCdb);
    const padded = concat(b, new Uint8Array(96 - b.length));
    assert.deepEqual(parseSense(padded), parseSense(b));
    assert.ok(senseEquals(padded, b));
  });

  it('tolerates a short fixed sense only when ADDITIONAL SENSE LENGTH says ASC/ASCQ are absent', () => {
    assert.deepEqual(parseSense(fromHex('70000600000000' + '00')), { format: 'fixed', current: true, key: 6, asc: 0, ascq: 0 });
    assert.deepEqual(parseSense(fromHex('700006000000000400000000')), { format: 'fixed', current: true, key: 6, asc: 0, ascq: 0 });
    // ASC announced (additional length 5), ASCQ not
    assert.deepEqual(parseSense(fromHex('70000600000000050000000029')), { format: 'fixed', current: true, key: 6, asc: 0x29, ascq: 0 });
    // announced but cut off
    assertDecodeError(() => parseSense(fromHex('70000600000000060000000029')), 'sense length', 13);
    assert.deepEqual(parseSense(fromHex('7000060000000006000000002903')), { format: 'fixed', current: true, key: 6, asc: 0x29, ascq: 3 });
  });

  it('rejects a fixed sense cut before the ASC/ASCQ it announces', () => {
    const full = buildSense(invalidFieldInCdb);
    for (let n = 8; n < 14; n++) assertDecodeError(() => parseSense(full.subarray(0, n)), 'sense length', n);
    for (let n = 0; n < 8; n++) assertDecodeError(() => parseSense(full.subarray(0, n)), 'sense length', n);
    assert.deepEqual(parseSense(full.subarray(0, 14)), { format: 'fixed', current: true, ...invalidFieldInCdb });
  });

  it('reads only what ADDITIONAL SENSE LENGTH covers, as Linux does', () => {
    const b = buildSense(invalidFieldInCdb).slice();
    b[7] = 0;
    assert.deepEqual(parseSense(b), { format: 'fixed', current: true, key: 5, asc: 0, ascq: 0 });
  });

  it('skips unknown and cut-off descriptors', () => {
    const head = fromHex('72062903' + zeros(3));
    const vendor = fromHex('80020102'); // vendor-specific descriptor
    const info = fromHex('000a8000' + '0000000000000063');
    const list = concat(vendor, info);
    assert.deepEqual(parseSense(concat(head, Uint8Array.of(list.length), list)), { format: 'descriptor', current: true, key: 6, asc: 0x29, ascq: 3, information: 0x63n });
    const cut = concat(head, Uint8Array.of(list.length), list).subarray(0, 8 + 4 + 6);
    assert.deepEqual(parseSense(cut), { format: 'descriptor', current: true, key: 6, asc: 0x29, ascq: 3 });
  });

  it('rejects unknown response codes and descriptor sense shorter than its header', () => {
    assertDecodeError(() => parseSense(fromHex('00' + zeros(17))), 'RESPONSE CODE', 0);
    assertDecodeError(() => parseSense(fromHex('7f' + zeros(17))), 'RESPONSE CODE', 0x7f);
    assertDecodeError(() => parseSense(fromHex('720524')), 'sense length', 3);
    assertDecodeError(() => parseSense(new Uint8Array(0)), 'sense length', 0);
  });
});

describe('senseEquals', () => {
  it('compares meaning, not bytes', () => {
    const a = buildSense(invalidFieldInCdb);
    assert.ok(senseEquals(a, parseSense(a)));
    assert.ok(!senseEquals(a, buildSense({ ...invalidFieldInCdb, ascq: 1 })));
    assert.ok(!senseEquals(a, buildSense({ ...invalidFieldInCdb, key: 6 })));
    assert.ok(!senseEquals(a, buildSense(invalidFieldInCdb, 'descriptor')), 'format differs');
    assert.ok(!senseEquals(a, buildSense({ ...invalidFieldInCdb, information: 0n })), 'information differs');
    assert.ok(!senseEquals(buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00001') }), buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00002') })));
    assert.ok(senseEquals(buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00001') }), buildSense({ ...invalidFieldInCdb, senseKeySpecific: fromHex('c00001') })));
  });

  it('equals unparseable bytes only to identical bytes', () => {
    assert.ok(senseEquals(fromHex('0102'), fromHex('0102')));
    assert.ok(!senseEquals(fromHex('0102'), fromHex('0103')));
    assert.ok(!senseEquals(fromHex('0102'), buildSense(invalidFieldInCdb)));
  });
});

describe('formatSense / senseKeyAscOf', () => {
  it('names key and ASC/ASCQ with the numbers', () => {
    assert.equal(formatSense(buildSense(invalidFieldInCdb)), 'ILLEGAL_REQUEST INVALID_FIELD_IN_CDB (5/24/00)');
    assert.equal(formatSense(buildSense({ key: SenseKey.ABORTED_COMMAND, ...Asc.LOGICAL_UNIT_COMMUNICATION_FAILURE }, 'descriptor')), 'ABORTED_COMMAND LOGICAL_UNIT_COMMUNICATION_FAILURE (b/08/00)');
    assert.equal(formatSense(buildSense({ key: 0xc, asc: 0x99, ascq: 0x01 })), 'SENSE KEY 0xc ASC 0x99/ASCQ 0x01 (c/99/01)');
  });

  it('adds deferred, information and sense-key specific bytes when present', () => {
    const b = buildSense({ ...invalidFieldInCdb, information: 0x10n, senseKeySpecific: fromHex('c00002') }).slice();
    b[0] = 0xf1;
    assert.equal(formatSense(b), 'ILLEGAL_REQUEST INVALID_FIELD_IN_CDB (5/24/00) deferred information=0x10 sks=c00002');
  });

  it('never throws on garbage', () => {
    assert.match(formatSense(fromHex('0102')), /^malformed sense 0102 \(RESPONSE CODE/);
    assert.match(formatSense(new Uint8Array(0)), /^malformed sense/);
    assert.match(formatSense(new Uint8Array(40)), /^malformed sense (00){32}\.\.\./);
  });

  it('senseKeyAscOf returns key/ASC/ASCQ or null', () => {
    assert.deepEqual(senseKeyAscOf(buildSense(invalidFieldInCdb)), { key: 5, asc: 0x24, ascq: 0 });
    assert.deepEqual(senseKeyAscOf(buildSense(invalidFieldInCdb, 'descriptor')), { key: 5, asc: 0x24, ascq: 0 });
    assert.equal(senseKeyAscOf(fromHex('00')), null);
  });
});
