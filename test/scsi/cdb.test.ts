import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EncodeError } from '../../src/errors.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import {
  decodePrCdb,
  decodePrInCdb,
  decodePrOutCdb,
  encodePrInCdb,
  encodePrOutCdb,
  prCdbTransferLength,
} from '../../src/scsi/cdb.js';
import { assertDecodeError } from './arbitraries.js';

describe('PERSISTENT RESERVE IN CDB', () => {
  it('decodes service action (byte 1 bits 4-0), allocation length (7-8) and control (9)', () => {
    const cdb = fromHex('5e e3 ff ff ff ff ff 12 34 c0');
    assert.deepEqual(decodePrInCdb(cdb), { opcode: 0x5e, serviceAction: 0x03, allocationLength: 0x1234, control: 0xc0 });
    assert.deepEqual(decodePrCdb(cdb), decodePrInCdb(cdb));
  });

  it('accepts the 16-byte form QEMU sends and ignores bytes 10-15', () => {
    const cdb = fromHex('5e01000000000000ff00' + 'aabbccddeeff');
    assert.deepEqual(decodePrInCdb(cdb), { opcode: 0x5e, serviceAction: 1, allocationLength: 0xff, control: 0 });
  });

  it('returns service actions raw, including ones SPC does not define', () => {
    assert.equal(decodePrInCdb(fromHex('5e1f0000000000000000')).serviceAction, 0x1f);
  });

  it('encodes 10 and 16 bytes', () => {
    assert.equal(hex(encodePrInCdb({ serviceAction: 3, allocationLength: 0x2000 })), '5e030000000000200000');
    assert.equal(hex(encodePrInCdb({ serviceAction: 0, allocationLength: 8, control: 4 }, 16)), '5e000000000000000804000000000000');
  });

  it('rejects values that do not fit', () => {
    for (const bad of [
      () => encodePrInCdb({ serviceAction: 32, allocationLength: 0 }),
      () => encodePrInCdb({ serviceAction: -1, allocationLength: 0 }),
      () => encodePrInCdb({ serviceAction: 0, allocationLength: 0x10000 }),
      () => encodePrInCdb({ serviceAction: 0, allocationLength: 1.5 }),
      () => encodePrInCdb({ serviceAction: 0, allocationLength: 0, control: 256 }),
      () => encodePrInCdb({ serviceAction: 0, allocationLength: 0 }, 12 as 10),
    ]) {
      assert.throws(bad, EncodeError);
    }
  });
});

describe('PERSISTENT RESERVE OUT CDB', () => {
  it('decodes service action, scope/type (byte 2) and the 32-bit parameter list length (5-8)', () => {
    const cdb = fromHex('5f 24 15 ff ff 00 01 00 18 80');
    assert.deepEqual(decodePrOutCdb(cdb), {
      opcode: 0x5f,
      serviceAction: 4,
      scope: 1,
      type: 5,
      parameterListLength: 0x00010018,
      control: 0x80,
    });
    assert.deepEqual(decodePrCdb(cdb), decodePrOutCdb(cdb));
  });

  it('reads all four length bytes, not only 7-8 as QEMU does', () => {
    assert.equal(decodePrOutCdb(fromHex('5f00000000ffffffff00')).parameterListLength, 0xffff_ffff);
  });

  it('encodes 10 and 16 bytes, scope and type defaulting to 0', () => {
    assert.equal(hex(encodePrOutCdb({ serviceAction: 2, type: 5, parameterListLength: 24 })), '5f020500000000001800');
    assert.equal(hex(encodePrOutCdb({ serviceAction: 0, parameterListLength: 24 }, 16)), '5f000000000000001800000000000000');
    assert.equal(hex(encodePrOutCdb({ serviceAction: 7, scope: 0xf, type: 0xf, parameterListLength: 0x01020304, control: 1 })), '5f07ff00000102030401');
  });

  it('rejects values that do not fit', () => {
    for (const bad of [
      () => encodePrOutCdb({ serviceAction: 0x20, parameterListLength: 0 }),
      () => encodePrOutCdb({ serviceAction: 0, scope: 16, parameterListLength: 0 }),
      () => encodePrOutCdb({ serviceAction: 0, type: 16, parameterListLength: 0 }),
      () => encodePrOutCdb({ serviceAction: 0, parameterListLength: 2 ** 32 }),
      () => encodePrOutCdb({ serviceAction: 0, parameterListLength: -24 }),
      () => encodePrOutCdb({ serviceAction: 0, parameterListLength: 0, control: 0x100 }),
      () => encodePrOutCdb({ serviceAction: 0, parameterListLength: 0 }, 6 as 10),
    ]) {
      assert.throws(bad, EncodeError);
    }
  });
});

describe('CDB decode errors', () => {
  it('rejects fewer than 10 or more than 16 bytes on CDB length', () => {
    assertDecodeError(() => decodePrCdb(new Uint8Array(0)), 'CDB length', 0);
    assertDecodeError(() => decodePrCdb(fromHex('5e0000000000000000')), 'CDB length', 9);
    assertDecodeError(() => decodePrCdb(new Uint8Array(17).fill(0x5e)), 'CDB length', 17);
    assertDecodeError(() => decodePrInCdb(fromHex('5e')), 'CDB length', 1);
    assertDecodeError(() => decodePrOutCdb(fromHex('5f00')), 'CDB length', 2);
  });

  it('rejects other operation codes on OPERATION CODE, naming the value', () => {
    assertDecodeError(() => decodePrCdb(fromHex('12000000000000000000')), 'OPERATION CODE', 0x12);
    assertDecodeError(() => decodePrInCdb(fromHex('5f000000000000000000')), 'OPERATION CODE', 0x5f);
    assertDecodeError(() => decodePrOutCdb(fromHex('5e000000000000000000')), 'OPERATION CODE', 0x5e);
  });

  it('says what went wrong in the message', () => {
    const e = assertDecodeError(() => decodePrCdb(fromHex('12000000000000000000')), 'OPERATION CODE');
    assert.match(e.message, /^Cannot decode PERSISTENT RESERVE CDB: OPERATION CODE 0x12 \(18\) is not/);
  });
});

describe('prCdbTransferLength', () => {
  it('is the allocation length for PR IN and the parameter list length for PR OUT', () => {
    assert.equal(prCdbTransferLength(decodePrCdb(fromHex('5e000000000000200000'))), 0x2000);
    assert.equal(prCdbTransferLength(decodePrCdb(fromHex('5f000000000001001800'))), 0x10018);
  });
});
