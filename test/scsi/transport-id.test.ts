import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EncodeError } from '../../src/errors.js';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import {
  decodeTransportId,
  encodeTransportId,
  formatTransportId,
  transportIdEquals,
  transportIdLength,
} from '../../src/scsi/transport-id.js';
import type { TransportId } from '../../src/scsi/types.js';
import { assertDecodeError, concat } from './arbitraries.js';

const zeros = (n: number): string => '00'.repeat(n);
const ascii = (s: string): string => hex(Uint8Array.from(s, (c) => c.charCodeAt(0)));

/** An iSCSI TransportID built by hand: byte 0, reserved, ADDITIONAL LENGTH, then `body` padded. */
function iscsiBytes(byte0: number, body: string, additionalLength?: number): Uint8Array {
  const content = fromHex(body);
  const addl = additionalLength ?? Math.max(20, (content.length + 3) & ~3);
  const out = new Uint8Array(4 + Math.max(addl, content.length));
  out[0] = byte0;
  out[2] = addl >> 8;
  out[3] = addl & 0xff;
  out.set(content, 4);
  return out.subarray(0, 4 + addl);
}

describe('SAS TransportID (protocol 6)', () => {
  it('encodes byte 0 = 06h and the SAS ADDRESS in bytes 4-11 of 24', () => {
    const bytes = encodeTransportId({ protocol: 'sas', sasAddress: 0x5001405f00000002n });
    assert.equal(hex(bytes), '060000005001405f00000002' + zeros(12));
  });

  it('decodes and reports the next offset', () => {
    const bytes = concat(fromHex('aabb'), encodeTransportId({ protocol: 'sas', sasAddress: 0x5001405f00000001n }), fromHex('cc'));
    assert.deepEqual(decodeTransportId(bytes, 2), [{ protocol: 'sas', sasAddress: 0x5001405f00000001n }, 26]);
  });

  it('ignores reserved bytes and the reserved bits 5-4 of byte 0', () => {
    const bytes = fromHex('36ffffff5001405f00000002' + 'ff'.repeat(12));
    assert.deepEqual(decodeTransportId(bytes, 0)[0], { protocol: 'sas', sasAddress: 0x5001405f00000002n });
  });

  it('rejects a format code other than 00b and fewer than 24 bytes', () => {
    assertDecodeError(() => decodeTransportId(fromHex('46' + zeros(23)), 0), 'FORMAT CODE', 1);
    assertDecodeError(() => decodeTransportId(fromHex('06' + zeros(22)), 0), 'TRANSPORTID');
  });
});

describe('Fibre Channel TransportID (protocol 0)', () => {
  it('encodes byte 0 = 00h and the N_PORT_NAME in bytes 8-15 of 24', () => {
    const bytes = encodeTransportId({ protocol: 'fc', nPortName: 0x21000024ff3c5a10n });
    assert.equal(hex(bytes), zeros(8) + '21000024ff3c5a10' + zeros(8));
    assert.deepEqual(decodeTransportId(bytes, 0), [{ protocol: 'fc', nPortName: 0x21000024ff3c5a10n }, 24]);
  });

  it('rejects format codes other than 00b', () => {
    assertDecodeError(() => decodeTransportId(fromHex('c0' + zeros(23)), 0), 'FORMAT CODE', 3);
  });
});

describe('iSCSI TransportID (protocol 5)', () => {
  const name = 'iqn.1994-05.com.redhat:client1';

  it('format 00b: byte 0 = 05h, ADDITIONAL LENGTH, null-terminated name padded to a multiple of 4', () => {
    const bytes = encodeTransportId({ protocol: 'iscsi', format: 'device', name });
    // 30 name bytes + null = 31 -> 32
    assert.equal(hex(bytes), '05000020' + ascii(name) + zeros(2));
    assert.deepEqual(decodeTransportId(bytes, 0), [{ protocol: 'iscsi', format: 'device', name }, 36]);
  });

  it('format 01b: byte 0 = 45h, name + ",i,0x" + ISID + null', () => {
    const tid: TransportId = { protocol: 'iscsi', format: 'port', name, isid: '23d000000001' };
    const bytes = encodeTransportId(tid);
    const body = ascii(`${name},i,0x23d000000001`); // 47 bytes + null = 48
    assert.equal(hex(bytes), '45000030' + body + '00');
    assert.deepEqual(decodeTransportId(bytes, 0), [tid, 52]);
  });

  it('ADDITIONAL LENGTH is at least 20 and a multiple of 4 (SPC-4 7.6.4.6)', () => {
    for (const [len, addl] of [
      [1, 20],
      [18, 20],
      [19, 20],
      [20, 24],
      [23, 24],
      [24, 28],
      [27, 28],
    ] as const) {
      const bytes = encodeTransportId({ protocol: 'iscsi', format: 'device', name: 'x'.repeat(len) });
      assert.equal(bytes.length, 4 + addl, `name of ${len}`);
      assert.equal((bytes[2]! << 8) | bytes[3]!, addl);
      assert.equal(bytes[4 + len], 0, 'null terminator');
      assert.equal(transportIdLength(bytes, 0), 4 + addl);
    }
  });

  it('names are UTF-8', () => {
    const tid: TransportId = { protocol: 'iscsi', format: 'device', name: 'iqn.2024-01.例え:é😀' };
    const bytes = encodeTransportId(tid);
    assert.ok(hex(bytes).includes('c3a9f09f9880'), 'é and 😀 in UTF-8');
    assert.deepEqual(decodeTransportId(bytes, 0)[0], tid);
  });

  it('accepts longer padding than the minimum', () => {
    const bytes = iscsiBytes(0x05, ascii('iqn.a') + '00', 64);
    assert.deepEqual(decodeTransportId(bytes, 0), [{ protocol: 'iscsi', format: 'device', name: 'iqn.a' }, 68]);
  });

  it('rejects a bad ADDITIONAL LENGTH', () => {
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.a') + '00', 16), 0), 'ADDITIONAL LENGTH', 16);
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.a') + '00', 22), 0), 'ADDITIONAL LENGTH', 22);
    // announces more bytes than there are
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.a') + '00').subarray(0, 20), 0), 'ADDITIONAL LENGTH', 20);
    assertDecodeError(() => decodeTransportId(fromHex('050000'), 0), 'TRANSPORTID');
  });

  it('rejects a name without null terminator, with non-zero padding, or not UTF-8', () => {
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('x'.repeat(20))), 0), 'ISCSI NAME');
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.a') + '0000ff'), 0), 'ISCSI NAME');
    for (const bad of ['ff', 'c080', 'eda080', 'f4908080', 'e282', 'c3']) {
      assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.') + bad + '00'), 0), 'ISCSI NAME');
    }
  });

  it('rejects an empty name and a name with a comma', () => {
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, '00'), 0), 'ISCSI NAME', '');
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x05, ascii('iqn.a,b') + '00'), 0), 'ISCSI NAME', 'iqn.a,b');
  });

  it('format 01b needs the ",i,0x" separator and a 12-digit ISID', () => {
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x45, ascii('iqn.a') + '00'), 0), 'ISCSI NAME', 'iqn.a');
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x45, ascii('iqn.a,i,0x23d00000001') + '00'), 0), 'ISCSI INITIATOR SESSION ID', '23d00000001');
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x45, ascii('iqn.a,i,0x23d00000001g') + '00'), 0), 'ISCSI INITIATOR SESSION ID');
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x45, ascii(',i,0x23d000000001') + '00'), 0), 'ISCSI NAME', '');
  });

  it('rejects format codes 10b and 11b', () => {
    assertDecodeError(() => decodeTransportId(iscsiBytes(0x85, ascii('iqn.a') + '00'), 0), 'FORMAT CODE', 2);
    assertDecodeError(() => decodeTransportId(iscsiBytes(0xc5, ascii('iqn.a') + '00'), 0), 'FORMAT CODE', 3);
  });
});

describe('other protocols', () => {
  const srp = fromHex('04' + zeros(7) + '0123456789abcdef0123456789abcdef');

  it('are a DecodeError without an enclosing length', () => {
    assertDecodeError(() => decodeTransportId(srp, 0), 'PROTOCOL IDENTIFIER', 4);
    assertDecodeError(() => transportIdLength(srp, 0), 'PROTOCOL IDENTIFIER', 4);
  });

  it('are kept raw with an enclosing length (READ FULL STATUS)', () => {
    const [tid, next] = decodeTransportId(srp, 0, 24);
    assert.deepEqual(tid, { protocol: 'raw', protocolId: 4, formatCode: 0, bytes: srp });
    assert.equal(next, 24);
    assert.deepEqual(encodeTransportId(tid), srp);
    assert.equal(formatTransportId(tid), `raw(protocol 0x4, format 0):${hex(srp)}`);
  });

  it('raw copies its bytes', () => {
    const buf = srp.slice();
    const [tid] = decodeTransportId(buf, 0, 24);
    buf[5] = 0x99;
    assert.equal(tid.protocol === 'raw' && tid.bytes[5], 0);
  });

  it('raw needs a multiple of 4 bytes of at least 24', () => {
    assertDecodeError(() => decodeTransportId(concat(srp, fromHex('00000000')), 0, 20), 'TRANSPORTID');
    assertDecodeError(() => decodeTransportId(concat(srp, fromHex('0000')), 0, 26), 'TRANSPORTID');
  });
});

describe('decodeTransportId bounds', () => {
  const sas = encodeTransportId({ protocol: 'sas', sasAddress: 1n });

  it('honours available for known protocols', () => {
    assert.equal(decodeTransportId(sas, 0, 24)[1], 24);
    assertDecodeError(() => decodeTransportId(sas, 0, 23), 'TRANSPORTID');
    assertDecodeError(() => decodeTransportId(sas, 0, 25), 'available length', 25);
    assertDecodeError(() => decodeTransportId(sas, 0, -1), 'available length', -1);
  });

  it('rejects offsets outside the buffer and empty input', () => {
    assertDecodeError(() => decodeTransportId(sas, -1), 'offset', -1);
    assertDecodeError(() => decodeTransportId(sas, 25), 'offset', 25);
    assertDecodeError(() => decodeTransportId(sas, 24), 'TRANSPORTID');
    assertDecodeError(() => decodeTransportId(new Uint8Array(0), 0), 'TRANSPORTID');
  });
});

describe('transportIdLength', () => {
  it('needs only the bytes that carry the length', () => {
    assert.equal(transportIdLength(fromHex('06'), 0), 24);
    assert.equal(transportIdLength(fromHex('00'), 0), 24);
    assert.equal(transportIdLength(fromHex('aa45000030'), 1), 52);
  });

  it('rejects what has no knowable length', () => {
    assertDecodeError(() => transportIdLength(fromHex('0500'), 0), 'TRANSPORTID');
    assertDecodeError(() => transportIdLength(fromHex('05000013'), 0), 'ADDITIONAL LENGTH', 0x13);
    assertDecodeError(() => transportIdLength(fromHex('46'), 0), 'FORMAT CODE', 1);
    assertDecodeError(() => transportIdLength(fromHex('06'), 1), 'offset', 1);
  });
});

describe('encodeTransportId rejects what it cannot carry', () => {
  const cases: Array<[string, TransportId]> = [
    ['SAS ADDRESS', { protocol: 'sas', sasAddress: -1n }],
    ['SAS ADDRESS', { protocol: 'sas', sasAddress: 1n << 64n }],
    ['N_PORT_NAME', { protocol: 'fc', nPortName: 1n << 64n }],
    ['ISCSI NAME', { protocol: 'iscsi', format: 'device', name: '' }],
    ['ISCSI NAME', { protocol: 'iscsi', format: 'device', name: 'iqn.a,b' }],
    ['ISCSI NAME', { protocol: 'iscsi', format: 'device', name: 'iqn.a\u0000' }],
    ['ISCSI NAME', { protocol: 'iscsi', format: 'device', name: 'iqn.\ud800' }],
    ['ISCSI NAME', { protocol: 'iscsi', format: 'device', name: 'x'.repeat(0xfffc) }],
    ['ISCSI INITIATOR SESSION ID', { protocol: 'iscsi', format: 'port', name: 'iqn.a', isid: '0x1234' }],
    ['ISCSI INITIATOR SESSION ID', { protocol: 'iscsi', format: 'port', name: 'iqn.a', isid: '1234567890abc' }],
    ['PROTOCOL IDENTIFIER', { protocol: 'raw', protocolId: 6, formatCode: 0, bytes: fromHex('06' + zeros(23)) }],
    ['PROTOCOL IDENTIFIER', { protocol: 'raw', protocolId: 16, formatCode: 0, bytes: fromHex('00' + zeros(23)) }],
    ['FORMAT CODE', { protocol: 'raw', protocolId: 4, formatCode: 4, bytes: fromHex('04' + zeros(23)) }],
    ['TRANSPORTID', { protocol: 'raw', protocolId: 4, formatCode: 0, bytes: fromHex('04' + zeros(19)) }],
    ['TRANSPORTID', { protocol: 'raw', protocolId: 4, formatCode: 0, bytes: fromHex('04' + zeros(25)) }],
    ['TRANSPORTID', { protocol: 'raw', protocolId: 4, formatCode: 1, bytes: fromHex('04' + zeros(23)) }],
  ];
  for (const [field, tid] of cases) {
    it(`${field}: ${JSON.stringify(tid, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v)).slice(0, 80)}`, () => {
      assert.throws(() => encodeTransportId(tid), (e: unknown) => e instanceof EncodeError && e.field === field);
    });
  }
});

describe('transportIdEquals', () => {
  const sas = (a: bigint): TransportId => ({ protocol: 'sas', sasAddress: a });
  const dev = (name: string): TransportId => ({ protocol: 'iscsi', format: 'device', name });
  const port = (name: string, isid: string): TransportId => ({ protocol: 'iscsi', format: 'port', name, isid });

  it('compares FC and SAS by value and never across protocols', () => {
    assert.ok(transportIdEquals(sas(5n), sas(5n)));
    assert.ok(!transportIdEquals(sas(5n), sas(6n)));
    assert.ok(!transportIdEquals(sas(5n), { protocol: 'fc', nPortName: 5n }));
    assert.ok(transportIdEquals({ protocol: 'fc', nPortName: 5n }, { protocol: 'fc', nPortName: 5n }));
  });

  it('compares iSCSI names and ISIDs case-insensitively, device and port formats never equal', () => {
    assert.ok(transportIdEquals(dev('iqn.2003-01.org.Linux-ISCSI:x'), dev('IQN.2003-01.ORG.linux-iscsi:X')));
    assert.ok(!transportIdEquals(dev('iqn.a'), dev('iqn.b')));
    assert.ok(transportIdEquals(port('iqn.a', '23D000000001'), port('IQN.A', '23d000000001')));
    assert.ok(!transportIdEquals(port('iqn.a', '23d000000001'), port('iqn.a', '23d000000002')));
    assert.ok(!transportIdEquals(dev('iqn.a'), port('iqn.a', '23d000000001')));
    assert.ok(!transportIdEquals(port('iqn.a', '23d000000001'), dev('iqn.a')));
  });

  it('compares raw TransportIDs by protocol, format and bytes', () => {
    const raw = (b: string): TransportId => ({ protocol: 'raw', protocolId: 4, formatCode: 0, bytes: fromHex(b) });
    assert.ok(transportIdEquals(raw('04' + zeros(23)), raw('04' + zeros(23))));
    assert.ok(!transportIdEquals(raw('04' + zeros(23)), raw('04' + zeros(22) + '01')));
    assert.ok(!transportIdEquals(raw('04' + zeros(23)), raw('04' + zeros(27))));
    assert.ok(!transportIdEquals(raw('04' + zeros(23)), sas(0n)));
  });
});

describe('formatTransportId', () => {
  it('renders one line per protocol', () => {
    assert.equal(formatTransportId({ protocol: 'sas', sasAddress: 0x5001405f00000002n }), 'sas:0x5001405f00000002');
    assert.equal(formatTransportId({ protocol: 'fc', nPortName: 0xabcn }), 'fc:0x0000000000000abc');
    assert.equal(formatTransportId({ protocol: 'iscsi', format: 'device', name: 'iqn.a' }), 'iscsi:iqn.a');
    assert.equal(formatTransportId({ protocol: 'iscsi', format: 'port', name: 'iqn.a', isid: '23d000000001' }), 'iscsi:iqn.a,i,0x23d000000001');
  });
});
