import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EncodeError } from '../../src/errors.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import { PrInAction, PrType } from '../../src/scsi/constants.js';
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
import { encodeTransportId } from '../../src/scsi/transport-id.js';
import type { Capabilities, FullStatusDescriptor, TransportId } from '../../src/scsi/types.js';
import { assertDecodeError, concat } from './arbitraries.js';

const zeros = (n: number): string => '00'.repeat(n);

describe('READ KEYS', () => {
  const data = { generation: 0x0102, keys: [0xabc123n, 0xabc123n, 0xffff_ffff_ffff_ffffn] };

  it('lays out PRGENERATION, ADDITIONAL LENGTH and 8-byte keys', () => {
    assert.equal(hex(encodeReadKeys(data)), '00000102' + '00000018' + '0000000000abc123' + '0000000000abc123' + 'ff'.repeat(8));
    assert.equal(hex(encodeReadKeys({ generation: 0, keys: [] })), zeros(8));
  });

  it('decodes the whole list with truncated false', () => {
    assert.deepEqual(decodeReadKeys(encodeReadKeys(data)), { ...data, additionalLength: 24, truncated: false });
  });

  it('at every allocation length gives the keys that fit, truncated, ADDITIONAL LENGTH unchanged', () => {
    const full = encodeReadKeys(data);
    for (let alloc = 0; alloc <= full.length + 4; alloc++) {
      const prefix = truncateToAllocationLength(full, alloc);
      if (alloc < 8) {
        assertDecodeError(() => decodeReadKeys(prefix), 'data length', alloc);
        continue;
      }
      const got = decodeReadKeys(prefix);
      assert.deepEqual(got.keys, data.keys.slice(0, Math.floor((Math.min(alloc, full.length) - 8) / 8)), `alloc ${alloc}`);
      assert.equal(got.truncated, alloc < full.length, `alloc ${alloc}`);
      assert.equal(got.additionalLength, 24);
      assert.equal(got.generation, 0x0102);
    }
  });

  it('rejects an ADDITIONAL LENGTH that is not a multiple of 8', () => {
    assertDecodeError(() => decodeReadKeys(fromHex('00000001' + '0000000c' + zeros(12))), 'ADDITIONAL LENGTH', 12);
    assertDecodeError(() => decodeReadKeys(fromHex('00000001' + '00000001')), 'ADDITIONAL LENGTH', 1);
  });

  it('ignores bytes past the announced list', () => {
    const got = decodeReadKeys(concat(encodeReadKeys({ generation: 1, keys: [5n] }), fromHex('ffffffffffffffff')));
    assert.deepEqual(got, { generation: 1, keys: [5n], additionalLength: 8, truncated: false });
  });

  it('rejects generations and keys that do not fit', () => {
    assert.throws(() => encodeReadKeys({ generation: 2 ** 32, keys: [] }), EncodeError);
    assert.throws(() => encodeReadKeys({ generation: 0, keys: [1n << 64n] }), EncodeError);
  });
});

describe('READ RESERVATION', () => {
  const held = { generation: 3, reservation: { key: 0xabc123n, scope: 0, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY } };

  it('without a reservation is the 8-byte header with ADDITIONAL LENGTH 0', () => {
    const bytes = encodeReadReservation({ generation: 4, reservation: null });
    assert.equal(hex(bytes), '00000004' + '00000000');
    assert.deepEqual(decodeReadReservation(bytes), { generation: 4, reservation: null, additionalLength: 0, truncated: false });
  });

  it('with a reservation: ADDITIONAL LENGTH 16, key 8-15, scope/type at byte 21', () => {
    const bytes = encodeReadReservation(held);
    assert.equal(hex(bytes), '00000003' + '00000010' + '0000000000abc123' + zeros(4) + '00' + '05' + zeros(2));
    assert.deepEqual(decodeReadReservation(bytes), { ...held, additionalLength: 16, truncated: false });
  });

  it('splits byte 21 into scope (bits 7-4) and type (bits 3-0), ignoring obsolete and reserved bytes', () => {
    const bytes = fromHex('00000000' + '00000010' + '0000000000000007' + 'ffffffff' + 'ff' + 'a8' + 'ffff');
    assert.deepEqual(decodeReadReservation(bytes).reservation, { key: 7n, scope: 0xa, type: 0x8 });
  });

  it('at every allocation length: no reservation until all 24 bytes arrived, then truncated false', () => {
    const full = encodeReadReservation(held);
    for (let alloc = 0; alloc <= full.length; alloc++) {
      const prefix = truncateToAllocationLength(full, alloc);
      if (alloc < 8) {
        assertDecodeError(() => decodeReadReservation(prefix), 'data length', alloc);
        continue;
      }
      const got = decodeReadReservation(prefix);
      assert.equal(got.truncated, alloc < 24, `alloc ${alloc}`);
      assert.equal(got.additionalLength, 16);
      assert.deepEqual(got.reservation, alloc < 24 ? null : held.reservation, `alloc ${alloc}`);
    }
  });

  it('rejects ADDITIONAL LENGTH other than 0 or 16', () => {
    for (const addl of [8, 15, 17, 32]) {
      assertDecodeError(() => decodeReadReservation(concat(fromHex('00000001' + addl.toString(16).padStart(8, '0')), new Uint8Array(addl))), 'ADDITIONAL LENGTH', addl);
    }
  });

  it('rejects scope, type and key that do not fit', () => {
    assert.throws(() => encodeReadReservation({ generation: 0, reservation: { key: 0n, scope: 16, type: 1 } }), EncodeError);
    assert.throws(() => encodeReadReservation({ generation: 0, reservation: { key: 0n, scope: 0, type: -1 } }), EncodeError);
    assert.throws(() => encodeReadReservation({ generation: 0, reservation: { key: -1n, scope: 0, type: 1 } }), EncodeError);
  });
});

describe('REPORT CAPABILITIES', () => {
  const none: Capabilities = { crh: false, sipC: false, atpC: false, ptplC: false, tmv: false, allowCommands: 0, ptplA: false, types: new Set() };

  it('with nothing set is LENGTH 8 and zeros', () => {
    assert.equal(hex(encodeCapabilities(none)), '0008' + zeros(6));
    assert.deepEqual(decodeCapabilities(fromHex('0008' + zeros(6))), none);
  });

  it('puts each flag in its bit', () => {
    for (const [flag, byte, bit] of [
      ['crh', 2, 0x10],
      ['sipC', 2, 0x08],
      ['atpC', 2, 0x04],
      ['ptplC', 2, 0x01],
      ['tmv', 3, 0x80],
      ['ptplA', 3, 0x01],
    ] as const) {
      const c = { ...none, [flag]: true };
      const bytes = encodeCapabilities(c);
      const expected = new Uint8Array(8);
      expected[1] = 8;
      expected[byte] = bit;
      assert.deepEqual(bytes, expected, flag);
      assert.deepEqual(decodeCapabilities(bytes), c, flag);
    }
  });

  it('puts ALLOW COMMANDS in bits 6-4 of byte 3', () => {
    for (let allow = 0; allow <= 7; allow++) {
      const bytes = encodeCapabilities({ ...none, allowCommands: allow });
      assert.equal(bytes[3], allow << 4);
      assert.equal(decodeCapabilities(bytes).allowCommands, allow);
    }
  });

  it('maps each reservation type to its type-mask bit', () => {
    for (const [type, byte, bit] of [
      [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, 4, 0x80],
      [PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, 4, 0x40],
      [PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 4, 0x20],
      [PrType.EXCLUSIVE_ACCESS, 4, 0x08],
      [PrType.WRITE_EXCLUSIVE, 4, 0x02],
      [PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, 5, 0x01],
    ] as const) {
      const bytes = encodeCapabilities({ ...none, tmv: true, types: new Set([type]) });
      assert.equal(bytes[byte], bit, `type ${type}`);
      assert.equal(bytes[byte === 4 ? 5 : 4], 0);
      assert.deepEqual(decodeCapabilities(bytes).types, new Set([type]));
    }
  });

  it('ignores reserved bits and bytes', () => {
    assert.deepEqual(decodeCapabilities(fromHex('0008' + 'e2' + '0e' + '15' + 'fe' + 'ffff')), none);
  });

  it('is 8 bytes: shorter data and any other LENGTH are errors', () => {
    const full = encodeCapabilities({ ...none, crh: true });
    for (let alloc = 0; alloc < 8; alloc++) assertDecodeError(() => decodeCapabilities(truncateToAllocationLength(full, alloc)), 'data length', alloc);
    assert.deepEqual(decodeCapabilities(truncateToAllocationLength(full, 8)), { ...none, crh: true });
    assertDecodeError(() => decodeCapabilities(fromHex('0009' + zeros(7))), 'LENGTH', 9);
    assertDecodeError(() => decodeCapabilities(fromHex('0000' + zeros(6))), 'LENGTH', 0);
  });

  it('rejects ALLOW COMMANDS above 7 and types that are not PR types', () => {
    assert.throws(() => encodeCapabilities({ ...none, allowCommands: 8 }), EncodeError);
    for (const t of [0, 2, 4, 9]) assert.throws(() => encodeCapabilities({ ...none, types: new Set([t]) }), EncodeError);
  });
});

describe('READ FULL STATUS', () => {
  const sas = (n: number): TransportId => ({ protocol: 'sas', sasAddress: 0x5001405f00000000n + BigInt(n) });
  const descriptors: FullStatusDescriptor[] = [
    { key: 0xabc123n, allTgPt: false, reservationHolder: true, scope: 0, type: 5, relativeTargetPortId: 1, transportId: sas(1) },
    { key: 0xabc123n, allTgPt: true, reservationHolder: false, scope: 0, type: 0, relativeTargetPortId: 0, transportId: sas(2) },
    { key: 0x77n, allTgPt: false, reservationHolder: false, scope: 0, type: 0, relativeTargetPortId: 3, transportId: { protocol: 'iscsi', format: 'port', name: 'iqn.2003-01.org.x:y', isid: '400001370000' } },
    { key: 0x1n, allTgPt: false, reservationHolder: false, scope: 0, type: 0, relativeTargetPortId: 4, transportId: { protocol: 'fc', nPortName: 0x2100001b32000001n } },
    { key: 0x2n, allTgPt: false, reservationHolder: false, scope: 0, type: 0, relativeTargetPortId: 5, transportId: { protocol: 'raw', protocolId: 4, formatCode: 0, bytes: fromHex('04' + zeros(7) + 'fe'.repeat(16)) } },
  ];
  const data = { generation: 9, descriptors };

  it('lays out each descriptor: key, flags at 12, scope/type at 13, port at 18-19, length at 20-23, TransportID at 24', () => {
    const bytes = encodeReadFullStatus({ generation: 7, descriptors: [descriptors[0]!] });
    assert.equal(
      hex(bytes),
      '00000007' + '00000030' + '0000000000abc123' + zeros(4) + '01' + '05' + zeros(4) + '0001' + '00000018' + hex(encodeTransportId(sas(1))),
    );
    const second = encodeReadFullStatus({ generation: 0, descriptors: [descriptors[1]!] });
    assert.equal(second[8 + 12], 0x02, 'ALL_TG_PT');
  });

  it('round-trips descriptors with every TransportID kind', () => {
    assert.deepEqual(decodeReadFullStatus(encodeReadFullStatus(data)), { ...data, additionalLength: encodeReadFullStatus(data).length - 8, truncated: false });
  });

  it('an empty LU is the header with ADDITIONAL LENGTH 0', () => {
    assert.deepEqual(decodeReadFullStatus(fromHex('00000006' + '00000000')), { generation: 6, descriptors: [], additionalLength: 0, truncated: false });
  });

  it('at every allocation length gives the descriptors that fit, truncated, ADDITIONAL LENGTH unchanged', () => {
    const full = encodeReadFullStatus(data);
    const ends: number[] = [];
    let o = 8;
    for (const d of descriptors) {
      o += 24 + encodeTransportId(d.transportId).length;
      ends.push(o);
    }
    assert.equal(o, full.length);
    for (let alloc = 0; alloc <= full.length + 3; alloc++) {
      const prefix = truncateToAllocationLength(full, alloc);
      if (alloc < 8) {
        assertDecodeError(() => decodeReadFullStatus(prefix), 'data length', alloc);
        continue;
      }
      const got = decodeReadFullStatus(prefix);
      const fit = ends.filter((end) => end <= alloc).length;
      assert.deepEqual(got.descriptors, descriptors.slice(0, fit), `alloc ${alloc}`);
      assert.equal(got.truncated, alloc < full.length, `alloc ${alloc}`);
      assert.equal(got.additionalLength, full.length - 8);
    }
  });

  it('rejects an ADDITIONAL LENGTH that ends inside a descriptor', () => {
    const full = encodeReadFullStatus({ generation: 1, descriptors: [descriptors[0]!] });
    for (const [addl, field, value] of [
      [1, 'ADDITIONAL LENGTH', 1],
      [23, 'ADDITIONAL LENGTH', 23],
      [24, 'ADDITIONAL DESCRIPTOR LENGTH', 24], // header fits, its TransportID runs past the list
      [47, 'ADDITIONAL DESCRIPTOR LENGTH', 24],
      [49, 'ADDITIONAL LENGTH', 49], // one whole descriptor, then 1 stray byte
      [71, 'ADDITIONAL LENGTH', 71],
    ] as const) {
      const bytes = concat(full, new Uint8Array(24));
      bytes[7] = addl;
      assertDecodeError(() => decodeReadFullStatus(bytes.subarray(0, 8 + addl)), field, value);
    }
  });

  it('rejects an ADDITIONAL DESCRIPTOR LENGTH that is not its TransportID length', () => {
    const bytes = concat(encodeReadFullStatus({ generation: 1, descriptors: [descriptors[0]!] }), new Uint8Array(4));
    bytes[7] = 0x34; // list grows by 4
    bytes[8 + 23] = 28; // descriptor says 28, SAS is 24
    assertDecodeError(() => decodeReadFullStatus(bytes), 'ADDITIONAL DESCRIPTOR LENGTH', 28);
    bytes[8 + 23] = 20;
    bytes[7] = 0x2c;
    assertDecodeError(() => decodeReadFullStatus(bytes.subarray(0, 8 + 44)), 'ADDITIONAL DESCRIPTOR LENGTH', 20);
  });

  it('rejects a TransportID with bad content', () => {
    const bytes = encodeReadFullStatus({ generation: 1, descriptors: [descriptors[2]!] }).slice();
    bytes[8 + 24] = 0x85; // iSCSI format 10b
    assertDecodeError(() => decodeReadFullStatus(bytes), 'TRANSPORTID');
  });

  it('rejects values that do not fit', () => {
    const d = descriptors[0]!;
    for (const bad of [{ ...d, relativeTargetPortId: 0x10000 }, { ...d, scope: 16 }, { ...d, type: 16 }, { ...d, key: 1n << 64n }]) {
      assert.throws(() => encodeReadFullStatus({ generation: 0, descriptors: [bad] }), EncodeError);
    }
  });
});

describe('truncateToAllocationLength', () => {
  const data = fromHex('0001020304');
  it('returns the first min(length, allocation length) bytes', () => {
    assert.equal(truncateToAllocationLength(data, 0).length, 0);
    assert.equal(hex(truncateToAllocationLength(data, 3)), '000102');
    assert.equal(hex(truncateToAllocationLength(data, 5)), '0001020304');
    assert.equal(hex(truncateToAllocationLength(data, 0xffff)), '0001020304');
  });
  it('rejects negative and fractional lengths', () => {
    assert.throws(() => truncateToAllocationLength(data, -1), EncodeError);
    assert.throws(() => truncateToAllocationLength(data, 1.5), EncodeError);
  });
});

describe('decodePrInData', () => {
  it('tags the data with the service action', () => {
    const keys = decodePrInData(PrInAction.READ_KEYS, encodeReadKeys({ generation: 1, keys: [2n] }));
    assert.deepEqual(keys, { action: 'read-keys', generation: 1, keys: [2n], additionalLength: 8, truncated: false });
    const res = decodePrInData(PrInAction.READ_RESERVATION, encodeReadReservation({ generation: 1, reservation: null }));
    assert.equal(res.action, 'read-reservation');
    const caps = decodePrInData(PrInAction.REPORT_CAPABILITIES, fromHex('0008 1d 90 ea01 0000'));
    assert.equal(caps.action === 'report-capabilities' && caps.crh, true);
    const full = decodePrInData(PrInAction.READ_FULL_STATUS, fromHex('0000000100000000'));
    assert.deepEqual(full, { action: 'read-full-status', generation: 1, descriptors: [], additionalLength: 0, truncated: false });
  });

  it('names the structure in its errors', () => {
    const e = assertDecodeError(() => decodePrInData(PrInAction.READ_KEYS, fromHex('0000000100000004')), 'ADDITIONAL LENGTH', 4);
    assert.equal(e.structure, 'READ KEYS data');
    assert.equal(assertDecodeError(() => decodePrInData(PrInAction.REPORT_CAPABILITIES, fromHex('00')), 'data length').structure, 'REPORT CAPABILITIES data');
  });

  it('rejects service actions without parameter data', () => {
    assertDecodeError(() => decodePrInData(4, fromHex('0000000000000000')), 'SERVICE ACTION', 4);
    assertDecodeError(() => decodePrInData(0x1f, fromHex('0000000000000000')), 'SERVICE ACTION', 0x1f);
  });
});
