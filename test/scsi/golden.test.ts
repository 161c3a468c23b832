// Golden tests: the bytes and the sg_persist / mpathpersist outputs captured from the real LIO stack
// (shared/lab/samples, LIO-BEHAVIOUR.md) must decode to what the tools printed, and re-encode identically.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fromHex, hex } from '../../src/scsi/bytes.js';
import { decodePrCdb, decodePrInCdb, decodePrOutCdb, encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { Asc, PrInAction, PrOutAction, SenseKey } from '../../src/scsi/constants.js';
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
} from '../../src/scsi/prin-data.js';
import { decodePrOutParams, encodePrOutParams } from '../../src/scsi/prout-params.js';
import { buildSense, formatSense, parseSense } from '../../src/scsi/sense.js';
import { decodeTransportId, encodeTransportId, formatTransportId } from '../../src/scsi/transport-id.js';
import type { FullStatusDescriptor, ReadFullStatusData } from '../../src/scsi/types.js';
import { readSample } from '../support/paths.js';

const LIO_BEHAVIOUR = '../LIO-BEHAVIOUR.md';

/** sg_persist's names of the reservation types (sg_persist.c's pr_type_strs). */
const TYPE_BY_TEXT: Record<string, number> = {
  'Write Exclusive': 1,
  'Exclusive Access': 3,
  'Write Exclusive, registrants only': 5,
  'Exclusive Access, registrants only': 6,
  'Write Exclusive, all registrants': 7,
  'Exclusive Access, all registrants': 8,
};

type Parsed =
  | { kind: 'full'; file: string; generation: number | null; descriptors: FullStatusDescriptor[] }
  | { kind: 'keys'; file: string; generation: number; count: number; keys: bigint[] }
  | { kind: 'reservation'; file: string; generation: number; key: bigint | null; type: number | null };

/**
 * Reads the PR IN reports sg_persist and mpathpersist printed (-s full status, -k keys, -r
 * reservation) out of a captured session, line by line.
 */
function parseToolOutput(file: string): Parsed[] {
  const out: Parsed[] = [];
  let current: Parsed | null = null;
  let descriptor: { -readonly [K in keyof FullStatusDescriptor]: FullStatusDescriptor[K] } | null = null;
  const flush = (): void => {
    if (current !== null) out.push(current);
    current = null;
    descriptor = null;
  };
  // nested_qemu.txt came through a serial console: CRLF line ends.
  for (const line of readSample(file).split(/\r?\n/)) {
    let m: RegExpExecArray | null;
    if ((m = /PR generation=0x([0-9a-f]+)$/.exec(line))) {
      flush();
      current = { kind: 'full', file, generation: parseInt(m[1]!, 16), descriptors: [] };
    } else if ((m = /PR generation=0x([0-9a-f]+),\s+(\d+) registered reservation keys? follows?:/.exec(line))) {
      flush();
      current = { kind: 'keys', file, generation: parseInt(m[1]!, 16), count: Number(m[2]), keys: [] };
    } else if ((m = /PR generation=0x([0-9a-f]+), there are NO registered reservation keys/.exec(line))) {
      flush();
      out.push({ kind: 'keys', file, generation: parseInt(m[1]!, 16), count: 0, keys: [] });
    } else if ((m = /PR generation=0x([0-9a-f]+), Reservation follows:/.exec(line))) {
      flush();
      current = { kind: 'reservation', file, generation: parseInt(m[1]!, 16), key: null, type: null };
    } else if ((m = /PR generation=0x([0-9a-f]+), there is NO reservation held/.exec(line))) {
      flush();
      out.push({ kind: 'reservation', file, generation: parseInt(m[1]!, 16), key: null, type: null });
    } else if (current?.kind === 'keys' && (m = /^\s+(0x[0-9a-f]+)\s*$/.exec(line))) {
      current.keys.push(BigInt(m[1]!));
    } else if (current?.kind === 'reservation' && (m = /Key\s*=\s*(0x[0-9a-f]+)/.exec(line))) {
      current.key = BigInt(m[1]!);
    } else if (current?.kind === 'reservation' && (m = /scope\s*[:=]\s*LU_SCOPE,\s+type\s*[:=]\s*(.+?)\s*$/.exec(line))) {
      current.type = TYPE_BY_TEXT[m[1]!] ?? -1;
    } else if ((m = /^\s+Key=(0x[0-9a-f]+)$/.exec(line))) {
      // npaths4.txt shows descriptors without the generation line
      if (current?.kind !== 'full') {
        flush();
        current = { kind: 'full', file, generation: null, descriptors: [] };
      }
      descriptor = { key: BigInt(m[1]!), allTgPt: false, reservationHolder: false, scope: 0, type: 0, relativeTargetPortId: -1, transportId: { protocol: 'sas', sasAddress: -1n } };
      current.descriptors.push(descriptor);
    } else if (descriptor !== null && /All target ports bit (clear|set)/.test(line)) {
      descriptor.allTgPt = line.includes('bit set');
    } else if (descriptor !== null && (m = /Relative port address: 0x([0-9a-f]+)/.exec(line))) {
      descriptor.relativeTargetPortId = parseInt(m[1]!, 16);
    } else if (descriptor !== null && /<< Reservation holder >>/.test(line)) {
      descriptor.reservationHolder = true;
    } else if (descriptor !== null && (m = /scope: LU_SCOPE,\s+type: (.+?)\s*$/.exec(line))) {
      descriptor.type = TYPE_BY_TEXT[m[1]!] ?? -1;
    } else if (descriptor !== null && (m = /SAS address: (0x[0-9a-f]+)/.exec(line))) {
      descriptor.transportId = { protocol: 'sas', sasAddress: BigInt(m[1]!) };
    } else if (current?.kind === 'full' && /No full status descriptors/.test(line)) {
      // stays empty
    } else if (/not reservation holder|Transport Id of initiator:/.test(line)) {
      // default values
    } else {
      flush();
    }
  }
  flush();
  return out;
}

function payloads(file: string): Array<{ op: string; cdb: string; param: string; payload: string | null; command: string; printed: string[] }> {
  const result: Array<{ op: string; cdb: string; param: string; payload: string | null; command: string; printed: string[] }> = [];
  let command = '';
  for (const line of readSample(file).split(/\r?\n/)) {
    let m: RegExpExecArray | null;
    if (line.startsWith('$ ')) command = line;
    else if ((m = /^op=(\w+) cdb=([0-9a-f]+) param=(\S+)$/.exec(line))) result.push({ op: m[1]!, cdb: m[2]!, param: m[3]!, payload: null, command, printed: [] });
    else if ((m = /^payload: ([0-9a-f]+)$/.exec(line)) && result.length > 0) result[result.length - 1]!.payload = m[1]!;
    else if (result.length > 0 && result[result.length - 1]!.payload !== null && /^\s*(PRgeneration|key)=/.test(line)) result[result.length - 1]!.printed.push(line);
  }
  return result;
}

describe('qemu_pr_helper.txt: the pr-helper session', () => {
  const session = payloads('qemu_pr_helper.txt');

  it('has the operations the sample shows', () => {
    assert.deepEqual(
      session.map((s) => s.op),
      ['readkeys', 'register', 'readkeys', 'readfull', 'readkeys'],
    );
  });

  it('every CDB decodes and re-encodes byte-identically in its 16-byte form', () => {
    for (const s of session) {
      const bytes = fromHex(s.cdb);
      assert.equal(bytes.length, 16);
      const cdb = decodePrCdb(bytes);
      const again = cdb.opcode === 0x5e ? encodePrInCdb(cdb, 16) : encodePrOutCdb(cdb, 16);
      assert.equal(hex(again), s.cdb, s.op);
    }
    const readfull = decodePrInCdb(fromHex(session[3]!.cdb));
    assert.deepEqual(readfull, { opcode: 0x5e, serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 8192, control: 0 });
  });

  it('the REGISTER parameter list carries the key the command line asked for', () => {
    const reg = session.find((s) => s.op === 'register')!;
    const sark = BigInt(/register (0x[0-9a-f]+)/.exec(reg.command)![1]!);
    const cdb = decodePrOutCdb(fromHex(reg.cdb));
    assert.equal(cdb.serviceAction, PrOutAction.REGISTER);
    const param = fromHex(reg.param);
    assert.equal(cdb.parameterListLength, param.length);
    const p = decodePrOutParams(param, cdb.serviceAction);
    assert.ok(p.form === 'basic');
    assert.deepEqual(p, { form: 'basic', key: 0n, serviceActionKey: sark, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
    assert.equal(hex(encodePrOutParams(p)), reg.param);
  });

  it('READ KEYS payloads decode to what the client printed and re-encode identically', () => {
    const reads = session.filter((s) => s.op === 'readkeys');
    assert.equal(reads.length, 3);
    for (const s of reads) {
      const m = /PRgeneration=0x([0-9a-f]+) keys=\[(.*)\]/.exec(s.printed[0]!)!;
      const keys = m[2]! === '' ? [] : m[2]!.split(',').map((k) => BigInt(k.trim().replace(/'/g, '')));
      const bytes = fromHex(s.payload!);
      const decoded = decodeReadKeys(bytes);
      assert.deepEqual(decoded, { generation: parseInt(m[1]!, 16), keys, additionalLength: keys.length * 8, truncated: false });
      assert.equal(hex(encodeReadKeys(decoded)), s.payload);
    }
  });

  it('the READ FULL STATUS payload decodes to the printed descriptor and re-encodes identically', () => {
    const s = session.find((x) => x.op === 'readfull')!;
    const head = /PRgeneration=0x([0-9a-f]+) full-status descriptors bytes=(\d+)/.exec(s.printed[0]!)!;
    const d = /key=(0x[0-9a-f]+) all_tg_pt=(\d) r_holder=(\d) scope\/type=0x([0-9a-f]{2}) rel_tgt_port=(\d+) transport_id=([0-9a-f]+)/.exec(s.printed[1]!)!;
    const bytes = fromHex(s.payload!);
    const decoded = decodePrInData(PrInAction.READ_FULL_STATUS, bytes);
    assert.equal(decoded.action, 'read-full-status');
    if (decoded.action !== 'read-full-status') return;
    assert.equal(decoded.generation, parseInt(head[1]!, 16));
    assert.equal(decoded.additionalLength, Number(head[2]));
    assert.equal(decoded.truncated, false);
    assert.equal(decoded.descriptors.length, 1);
    const desc = decoded.descriptors[0]!;
    const [printedTid] = decodeTransportId(fromHex(d[6]!), 0);
    assert.deepEqual(desc, {
      key: BigInt(d[1]!),
      allTgPt: d[2] === '1',
      reservationHolder: d[3] === '1',
      scope: parseInt(d[4]!, 16) >> 4,
      type: parseInt(d[4]!, 16) & 0xf,
      relativeTargetPortId: Number(d[5]),
      transportId: printedTid,
    });
    assert.equal(hex(encodeTransportId(desc.transportId)), d[6]);
    assert.equal(formatTransportId(desc.transportId), 'sas:0x5001405f00000002');
    assert.equal(hex(encodeReadFullStatus(decoded)), s.payload);
  });

  it('sg_persist -s on the path printed the same status the helper returned', () => {
    const fromTool = parseToolOutput('qemu_pr_helper.txt').filter((p) => p.kind === 'full');
    assert.equal(fromTool.length, 1);
    const t = fromTool[0]!;
    assert.ok(t.kind === 'full' && t.generation !== null);
    const readfull = session.find((x) => x.op === 'readfull')!;
    assert.equal(hex(encodeReadFullStatus({ generation: t.generation, descriptors: t.descriptors })), readfull.payload);
  });

  it('the sg_persist -v PR OUT CDB decodes to the command line it came from and re-encodes identically', () => {
    const text = readSample('qemu_pr_helper.txt');
    const m = /(\$ sg_persist [^\n]*--release[^\n]*)\n\s*Persistent reservation out cdb: \[([0-9a-f ]+)\]/.exec(text)!;
    const type = Number(/--prout-type=(\d+)/.exec(m[1]!)![1]);
    const bytes = fromHex(m[2]!);
    const cdb = decodePrOutCdb(bytes);
    assert.deepEqual(cdb, { opcode: 0x5f, serviceAction: PrOutAction.RELEASE, scope: 0, type, parameterListLength: 24, control: 0 });
    assert.equal(hex(encodePrOutCdb(cdb)), hex(bytes));
  });
});

describe('sg_persist / mpathpersist reports', () => {
  const files = ['pr_multipath.txt', 'pr_single_path.txt', 'npaths4.txt', 'nested_qemu.txt', 'path_failure.txt', 'qemu_pr_helper.txt'];
  const reports = files.flatMap(parseToolOutput);

  it('were all found', () => {
    const count = (kind: Parsed['kind']): number => reports.filter((r) => r.kind === kind).length;
    assert.equal(count('full'), 11);
    assert.equal(count('keys'), 5);
    assert.equal(count('reservation'), 4);
  });

  it('full-status descriptors: SAS TransportIDs 06 000000 + address + zeros, LIO layout, round trip', () => {
    const lio = /SAS \(`([0-9a-f ]+)` \+ naa\.5001405f000000NN\)/.exec(readSample(LIO_BEHAVIOUR));
    assert.ok(lio, 'LIO-BEHAVIOUR.md describes the SAS TransportIDs');
    const prefix = lio[1]!.replace(/ /g, '');
    let descriptorsSeen = 0;
    for (const r of reports) {
      if (r.kind !== 'full') continue;
      const data: ReadFullStatusData = { generation: r.generation ?? 0, descriptors: r.descriptors };
      const bytes = encodeReadFullStatus(data);
      assert.equal(bytes.length, 8 + 48 * r.descriptors.length, r.file);
      r.descriptors.forEach((d, i) => {
        descriptorsSeen++;
        assert.ok(d.relativeTargetPortId >= 1, `${r.file}: relative port printed`);
        assert.equal(d.transportId.protocol, 'sas');
        const base = 8 + 48 * i;
        const address = d.transportId.protocol === 'sas' ? d.transportId.sasAddress : -1n;
        assert.equal(hex(bytes.subarray(base + 24, base + 48)), prefix + address.toString(16).padStart(16, '0') + '00'.repeat(12), r.file);
        assert.equal(hex(bytes.subarray(base + 20, base + 24)), '00000018');
        assert.equal(bytes[base + 12], d.reservationHolder ? 0x01 : 0x00);
        assert.equal(bytes[base + 13], d.type);
        assert.equal((bytes[base + 18]! << 8) | bytes[base + 19]!, d.relativeTargetPortId);
        assert.equal(formatTransportId(d.transportId), `sas:0x${address.toString(16)}`);
      });
      assert.deepEqual(decodeReadFullStatus(bytes), { ...data, additionalLength: bytes.length - 8, truncated: false });
    }
    assert.equal(descriptorsSeen, 13);
  });

  it('the holder printed by sg_persist -s (path 1, WE-RO) has R_HOLDER and scope/type 05h', () => {
    const holders = reports.flatMap((r) => (r.kind === 'full' ? r.descriptors.filter((d) => d.reservationHolder) : []));
    assert.equal(holders.length, 2);
    for (const h of holders) {
      assert.equal(h.type, 5);
      assert.equal(formatTransportId(h.transportId), 'sas:0x5001405f00000001');
      const bytes = encodeReadFullStatus({ generation: 3, descriptors: [h] });
      assert.equal(hex(bytes.subarray(8 + 12, 8 + 14)), '0105');
    }
  });

  it('READ KEYS reports round-trip with one 8-byte key per registered nexus', () => {
    for (const r of reports) {
      if (r.kind !== 'keys') continue;
      assert.equal(r.keys.length, r.count, r.file);
      const bytes = encodeReadKeys({ generation: r.generation, keys: r.keys });
      assert.equal(hex(bytes.subarray(4, 8)), (8 * r.count).toString(16).padStart(8, '0'));
      r.keys.forEach((k, i) => assert.equal(hex(bytes.subarray(8 + 8 * i, 16 + 8 * i)), k.toString(16).padStart(16, '0')));
      assert.deepEqual(decodeReadKeys(bytes), { generation: r.generation, keys: r.keys, additionalLength: 8 * r.count, truncated: false });
    }
  });

  it('READ RESERVATION reports round-trip: key at 8-15, type at byte 21', () => {
    for (const r of reports) {
      if (r.kind !== 'reservation') continue;
      const reservation = r.key === null ? null : { key: r.key, scope: 0, type: r.type! };
      assert.notEqual(reservation?.type, -1, 'type name known');
      const bytes = encodeReadReservation({ generation: r.generation, reservation });
      assert.equal(bytes.length, reservation === null ? 8 : 24);
      if (reservation !== null) {
        assert.equal(hex(bytes.subarray(8, 16)), reservation.key.toString(16).padStart(16, '0'));
        assert.equal(bytes[21], reservation.type);
      }
      assert.deepEqual(decodeReadReservation(bytes), { generation: r.generation, reservation, additionalLength: reservation === null ? 0 : 16, truncated: false });
    }
  });
});

describe('LIO-BEHAVIOUR.md: REPORT CAPABILITIES of an empty LU', () => {
  const text = readSample(LIO_BEHAVIOUR);
  const m = /REPORT CAPABILITIES =\s*`([0-9a-f ]+)`\s*\(([^)]*)\)/.exec(text);

  it('decodes to the flags the lab notes list and re-encodes identically', () => {
    assert.ok(m, 'LIO-BEHAVIOUR.md has the REPORT CAPABILITIES bytes');
    const bytes = fromHex(m[1]!);
    const notes = m[2]!; // "CRH, SIP_C, ATP_C, PTPL_C; TMV, ALLOW COMMANDS 1; types 1,3,5,6,7,8"
    const named = (flag: string): boolean => new RegExp(`\\b${flag}\\b`).test(notes);
    const c = decodeCapabilities(bytes);
    assert.equal(c.crh, named('CRH'));
    assert.equal(c.sipC, named('SIP_C'));
    assert.equal(c.atpC, named('ATP_C'));
    assert.equal(c.ptplC, named('PTPL_C'));
    assert.equal(c.tmv, named('TMV'));
    assert.equal(c.ptplA, named('PTPL_A'));
    assert.equal(c.allowCommands, Number(/ALLOW COMMANDS (\d)/.exec(notes)![1]));
    assert.deepEqual(c.types, new Set(/types ([\d,]+)/.exec(notes)![1]!.split(',').map(Number)));
    assert.deepEqual([c.crh, c.sipC, c.atpC, c.ptplC, c.tmv, c.allowCommands, c.ptplA], [true, true, true, true, true, 1, false]);
    assert.equal(hex(encodeCapabilities(c)), hex(bytes));
  });
});

describe('sense data printed by sg_persist', () => {
  const found = ['qemu_pr_helper.txt', 'pr_multipath.txt'].flatMap((file) =>
    [...readSample(file).matchAll(/Fixed format, current; Sense key: (.+)\nAdditional sense: (.+)/g)].map((m) => ({ key: m[1]!, asc: m[2]! })),
  );
  const constName = (s: string): string => s.trim().toUpperCase().replace(/ /g, '_');

  it('builds and parses fixed sense with the key and ASC/ASCQ the tool named', () => {
    assert.deepEqual(found.map((f) => f.key), ['Not Ready', 'Unit Attention']);
    for (const f of found) {
      const key = SenseKey[constName(f.key) as keyof typeof SenseKey];
      const asc = Asc[constName(f.asc) as keyof typeof Asc];
      assert.ok(key !== undefined && asc !== undefined, `${f.key} / ${f.asc} known`);
      const sense = buildSense({ key, ...asc });
      assert.deepEqual(parseSense(sense), { format: 'fixed', current: true, key, ...asc });
      assert.ok(formatSense(sense).startsWith(`${constName(f.key)} ${constName(f.asc)} (`));
    }
  });
});
