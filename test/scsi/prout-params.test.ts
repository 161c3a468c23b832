import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DecodeError, EncodeError } from '../../src/errors.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import { PrOutAction } from '../../src/scsi/constants.js';
import {
  decodePrOutParams,
  encodePrOutParams,
  encodeRegisterAndMoveParams,
  isParameterListLengthError,
} from '../../src/scsi/prout-params.js';
import { encodeTransportId } from '../../src/scsi/transport-id.js';
import type { PrOutParams, RegisterAndMoveParams, TransportId } from '../../src/scsi/types.js';
import { readSample } from '../support/paths.js';
import { assertDecodeError, concat } from './arbitraries.js';

const zeros = (n: number): string => '00'.repeat(n);
const u32hex = (n: number): string => n.toString(16).padStart(8, '0');
const sas2: TransportId = { protocol: 'sas', sasAddress: 0x5001405f00000002n };
const sas3: TransportId = { protocol: 'sas', sasAddress: 0x5001405f00000003n };
const iscsi: TransportId = { protocol: 'iscsi', format: 'port', name: 'iqn.1994-05.com.redhat:n1', isid: '23d000000001' };

function basic(over: Partial<PrOutParams> = {}): PrOutParams {
  return { form: 'basic', key: 0x1122334455667788n, serviceActionKey: 0x99aabbccddeeff00n, specIPt: false, allTgPt: false, aptpl: false, transportIds: [], ...over };
}

function lengthError(fn: () => unknown): DecodeError {
  const e = assertDecodeError(fn, 'PARAMETER LIST LENGTH');
  assert.ok(isParameterListLengthError(e));
  return e;
}

function contentError(fn: () => unknown, field: string): DecodeError {
  const e = assertDecodeError(fn, field);
  assert.ok(!isParameterListLengthError(e), `${field} is a content error, not a length error`);
  return e;
}

describe('basic parameter list (table 180)', () => {
  it('lays out key 0-7, service action key 8-15, flags at byte 20, 24 bytes', () => {
    assert.equal(hex(encodePrOutParams(basic())), '1122334455667788' + '99aabbccddeeff00' + zeros(8));
  });

  it('puts each flag in its own bit of byte 20', () => {
    for (const [flag, bit] of [
      ['allTgPt', 0x04],
      ['aptpl', 0x01],
    ] as const) {
      const bytes = encodePrOutParams(basic({ [flag]: true }));
      assert.equal(bytes.length, 24);
      assert.equal(bytes[20], bit, flag);
      const decoded = decodePrOutParams(bytes, PrOutAction.REGISTER);
      assert.deepEqual(decoded, basic({ [flag]: true }));
    }
    const withSpec = encodePrOutParams(basic({ specIPt: true }));
    assert.equal(withSpec[20], 0x08);
    assert.equal(hex(withSpec.subarray(24)), '00000000', 'TRANSPORTID PARAMETER DATA LENGTH 0');
  });

  it('ignores obsolete bytes 16-19 and 22-23, reserved byte 21 and reserved bits of byte 20', () => {
    const bytes = fromHex('0000000000000001' + '0000000000000002' + 'ffffffff' + 'f2' + 'ff' + 'ffff');
    assert.deepEqual(decodePrOutParams(bytes, PrOutAction.RESERVE), basic({ key: 1n, serviceActionKey: 2n }));
  });

  it('decodes the same layout for every service action but REGISTER AND MOVE', () => {
    const bytes = encodePrOutParams(basic({ aptpl: true }));
    for (let sa = 0; sa <= 0x1f; sa++) {
      if (sa === PrOutAction.REGISTER_AND_MOVE) continue;
      assert.deepEqual(decodePrOutParams(bytes, sa), basic({ aptpl: true }), `service action ${sa}`);
    }
  });

  it('must be exactly 24 bytes without SPEC_I_PT: the lengths LIO answers 1A/00 for', () => {
    // LIO-BEHAVIOUR.md: "PR OUT PARAMETER LIST LENGTH 0, 23, 25, 32 on REGISTER → 5/1A/00"
    const line = /PARAMETER LIST LENGTH ([\d, ]+) on REGISTER → 5\/1A\/00/.exec(readSample('../LIO-BEHAVIOUR.md'));
    assert.ok(line, 'LIO-BEHAVIOUR.md lists the rejected lengths');
    const lengths = line[1]!.split(',').map((s) => Number(s.trim()));
    assert.deepEqual(lengths, [0, 23, 25, 32]);
    const full = concat(encodePrOutParams(basic()), new Uint8Array(8));
    for (const n of lengths) {
      const e = lengthError(() => decodePrOutParams(full.subarray(0, n), PrOutAction.REGISTER));
      assert.equal(e.value, n);
    }
  });

  it('with SPEC_I_PT the list still 24 bytes long is a length error (no TRANSPORTID PARAMETER DATA LENGTH)', () => {
    const bytes = encodePrOutParams(basic()).slice();
    bytes[20] = 0x08;
    lengthError(() => decodePrOutParams(bytes, PrOutAction.REGISTER));
    lengthError(() => decodePrOutParams(concat(bytes, fromHex('000000')), PrOutAction.REGISTER));
  });
});

describe('SPEC_I_PT TransportIDs', () => {
  it('follow a 4-byte TRANSPORTID PARAMETER DATA LENGTH at byte 24', () => {
    const p = basic({ specIPt: true, transportIds: [sas2, iscsi, sas3] });
    const bytes = encodePrOutParams(p);
    const tids = concat(encodeTransportId(sas2), encodeTransportId(iscsi), encodeTransportId(sas3));
    assert.equal(bytes.length, 28 + tids.length);
    assert.equal(hex(bytes.subarray(24, 28)), u32hex(tids.length));
    assert.deepEqual(bytes.subarray(28), tids);
    assert.deepEqual(decodePrOutParams(bytes, PrOutAction.REGISTER), p);
  });

  it('an empty TransportID list is 28 bytes', () => {
    const p = basic({ specIPt: true });
    assert.deepEqual(decodePrOutParams(encodePrOutParams(p), PrOutAction.REGISTER), p);
  });

  it('list length other than 28 + TRANSPORTID PARAMETER DATA LENGTH is a length error', () => {
    const bytes = encodePrOutParams(basic({ specIPt: true, transportIds: [sas2] }));
    lengthError(() => decodePrOutParams(bytes.subarray(0, bytes.length - 1), PrOutAction.REGISTER));
    lengthError(() => decodePrOutParams(concat(bytes, fromHex('00000000')), PrOutAction.REGISTER));
    const announced48 = bytes.slice();
    announced48[27] = 48;
    lengthError(() => decodePrOutParams(announced48, PrOutAction.REGISTER));
  });

  it('TransportIDs that do not exactly fill TRANSPORTID PARAMETER DATA LENGTH are a content error', () => {
    // 28 + 30 bytes: one SAS TransportID and 6 bytes that cannot be one
    const bytes = concat(encodePrOutParams(basic({ specIPt: true, transportIds: [sas2] })), new Uint8Array(6));
    bytes[27] = 30;
    const e = contentError(() => decodePrOutParams(bytes, PrOutAction.REGISTER), 'TRANSPORTID PARAMETER DATA LENGTH');
    assert.equal(e.value, 30);
  });

  it('an iSCSI TransportID longer than the remaining data is a content error on the length field', () => {
    const bytes = encodePrOutParams(basic({ specIPt: true, transportIds: [iscsi] })).slice();
    // shrink TRANSPORTID PARAMETER DATA LENGTH and the list by 4: ADDITIONAL LENGTH now overruns
    const cut = bytes.slice(0, bytes.length - 4);
    cut[27] = cut[27]! - 4;
    contentError(() => decodePrOutParams(cut, PrOutAction.REGISTER), 'TRANSPORTID PARAMETER DATA LENGTH');
  });

  it('a TransportID of an unknown protocol or with bad content is a TRANSPORTID content error', () => {
    const bytes = encodePrOutParams(basic({ specIPt: true, transportIds: [sas2] })).slice();
    bytes[28] = 0x04; // SRP: no length of its own, cannot be listed
    const e = contentError(() => decodePrOutParams(bytes, PrOutAction.REGISTER), 'TRANSPORTID');
    assert.match(e.message, /PROTOCOL IDENTIFIER/);
    bytes[28] = 0x46; // SAS with format 01b
    contentError(() => decodePrOutParams(bytes, PrOutAction.REGISTER), 'TRANSPORTID');
  });
});

describe('REGISTER AND MOVE parameter list (table 181)', () => {
  const ram: RegisterAndMoveParams = {
    form: 'register-and-move',
    key: 0xa1n,
    serviceActionKey: 0xa3n,
    unreg: false,
    aptpl: false,
    relativeTargetPortId: 2,
    transportId: sas2,
  };

  it('lays out keys, UNREG/APTPL at byte 17, port at 18-19, length at 20-23, TransportID at 24', () => {
    const bytes = encodeRegisterAndMoveParams(ram);
    assert.equal(hex(bytes), '00000000000000a1' + '00000000000000a3' + '00' + '00' + '0002' + '00000018' + hex(encodeTransportId(sas2)));
    assert.deepEqual(decodePrOutParams(bytes, PrOutAction.REGISTER_AND_MOVE), ram);
  });

  it('puts UNREG and APTPL in bits 1 and 0 of byte 17', () => {
    assert.equal(encodeRegisterAndMoveParams({ ...ram, unreg: true })[17], 0x02);
    assert.equal(encodeRegisterAndMoveParams({ ...ram, aptpl: true })[17], 0x01);
    const bytes = encodeRegisterAndMoveParams(ram).slice();
    bytes[17] = 0xff; // reserved bits ignored
    bytes[16] = 0xff;
    assert.deepEqual(decodePrOutParams(bytes, PrOutAction.REGISTER_AND_MOVE), { ...ram, unreg: true, aptpl: true });
  });

  it('carries an iSCSI TransportID', () => {
    const p = { ...ram, transportId: iscsi, relativeTargetPortId: 0xffff };
    assert.deepEqual(decodePrOutParams(encodeRegisterAndMoveParams(p), PrOutAction.REGISTER_AND_MOVE), p);
  });

  it('must be exactly 24 + TRANSPORTID PARAMETER DATA LENGTH', () => {
    const bytes = encodeRegisterAndMoveParams(ram);
    lengthError(() => decodePrOutParams(bytes.subarray(0, 23), PrOutAction.REGISTER_AND_MOVE));
    lengthError(() => decodePrOutParams(bytes.subarray(0, 47), PrOutAction.REGISTER_AND_MOVE));
    lengthError(() => decodePrOutParams(concat(bytes, fromHex('00')), PrOutAction.REGISTER_AND_MOVE));
    // the basic 24-byte list sent with REGISTER AND MOVE announces no TransportID
    const e = contentError(() => decodePrOutParams(encodePrOutParams(basic()), PrOutAction.REGISTER_AND_MOVE), 'TRANSPORTID PARAMETER DATA LENGTH');
    assert.equal(e.value, 0);
  });

  it('the TransportID must be exactly TRANSPORTID PARAMETER DATA LENGTH bytes', () => {
    const bytes = concat(encodeRegisterAndMoveParams(ram), new Uint8Array(4));
    bytes[23] = 28;
    contentError(() => decodePrOutParams(bytes, PrOutAction.REGISTER_AND_MOVE), 'TRANSPORTID PARAMETER DATA LENGTH');
    const bad = encodeRegisterAndMoveParams(ram).slice();
    bad[24] = 0x01; // parallel SCSI
    contentError(() => decodePrOutParams(bad, PrOutAction.REGISTER_AND_MOVE), 'TRANSPORTID');
  });
});

describe('isParameterListLengthError', () => {
  it('is false for anything but a PR OUT list length DecodeError', () => {
    assert.ok(!isParameterListLengthError(new Error('PARAMETER LIST LENGTH')));
    assert.ok(!isParameterListLengthError(new DecodeError('PERSISTENT RESERVE CDB', 'PARAMETER LIST LENGTH', 1, 'x')));
    assert.ok(!isParameterListLengthError(undefined));
  });
});

describe('encoders reject what the lists cannot carry', () => {
  const raw: TransportId = { protocol: 'raw', protocolId: 4, formatCode: 0, bytes: fromHex('04' + zeros(23)) };
  const ram: RegisterAndMoveParams = { form: 'register-and-move', key: 1n, serviceActionKey: 2n, unreg: false, aptpl: false, relativeTargetPortId: 1, transportId: sas2 };
  for (const [what, fn] of [
    ['key above 64 bits', () => encodePrOutParams(basic({ key: 1n << 64n }))],
    ['negative service action key', () => encodePrOutParams(basic({ serviceActionKey: -1n }))],
    ['TransportIDs without SPEC_I_PT', () => encodePrOutParams(basic({ transportIds: [sas2] }))],
    ['raw TransportID in SPEC_I_PT list', () => encodePrOutParams(basic({ specIPt: true, transportIds: [raw] }))],
    ['wrong form', () => encodePrOutParams({ ...basic(), form: 'register-and-move' as 'basic' })],
    ['flag not boolean', () => encodePrOutParams({ ...basic(), aptpl: 1 as unknown as boolean })],
    ['relative port above 16 bits', () => encodeRegisterAndMoveParams({ ...ram, relativeTargetPortId: 0x10000 })],
    ['raw TransportID in REGISTER AND MOVE', () => encodeRegisterAndMoveParams({ ...ram, transportId: raw })],
    ['bad iSCSI name', () => encodeRegisterAndMoveParams({ ...ram, transportId: { protocol: 'iscsi', format: 'device', name: '' } })],
  ] as const) {
    it(what, () => assert.throws(fn, EncodeError));
  }
});
