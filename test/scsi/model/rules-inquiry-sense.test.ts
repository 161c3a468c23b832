// Standard INQUIRY data and REQUEST SENSE on both personalities of the device-server model. The
// 'lio' expectations are what the lab's LIO target (Debian 6.1, tcm_loop, three target ports)
// returned; where the personalities differ on REQUEST SENSE (LIO 12-14) rules-lio.test.ts has the
// contrast.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Asc, Opcode } from '../../../src/scsi/constants.js';
import { hex } from '../../../src/scsi/bytes.js';
import { PrDeviceServer, type Personality } from '../../../src/scsi/model/device-server.js';
import type { ScsiOutcome, TransportId } from '../../../src/scsi/types.js';
import { LunHarness, expectConflict, expectGood, expectIllegal, expectUa, makeLun } from '../../support/lun-harness.js';

const A = 0xa1n;
const B = 0xa2n;
const BOTH: readonly Personality[] = ['lio', 'spc4'];

/** REQUEST SENSE CDB (SPC-4 6.39): DESC in byte 1 bit 0, ALLOCATION LENGTH in byte 4. */
function requestSense(lun: LunHarness, path: string, alloc = 18): ScsiOutcome {
  return lun.exec(path, Uint8Array.from([0x03, 0, 0, 0, alloc, 0]));
}

function lunWith(personality: Personality, paths: number, regs: ReadonlyArray<readonly [string, bigint]>): LunHarness {
  const lun = makeLun({ personality, paths });
  for (const [path, key] of regs) expectGood(lun.register(path, key), `REGISTER ${key.toString(16)} on ${path}`);
  return lun;
}

/** Fixed-format sense data (SPC-4 4.5.3), 18 bytes, as hex. */
function fixedSense(key: number, asc: number, ascq: number): string {
  const s = new Uint8Array(18);
  s[0] = 0x70;
  s[2] = key;
  s[7] = 10;
  s[12] = asc;
  s[13] = ascq;
  return hex(s);
}

// =====================================================================================================
describe('REQUEST SENSE (SPC-4 6.39, SAM-5 5.14): both personalities', () => {
  for (const personality of BOTH) {
    describe(personality, () => {
      test('a pending unit attention comes back as GOOD with fixed-format sense data, and is cleared', () => {
        const lun = lunWith(personality, 2, [['p1', A], ['p2', B]]);
        expectGood(lun.reserve('p1', A, 5));
        expectGood(lun.release('p1', A, 5)); // 2A/04 to p2
        expectGood(lun.inquiry('p2'), 'INQUIRY does not consume it');
        assert.equal(hex(expectGood(requestSense(lun, 'p2'))), fixedSense(0x6, 0x2a, 0x04));
        expectGood(lun.testUnitReady('p2'), 'cleared by REQUEST SENSE');
        expectGood(lun.testUnitReady('p1'), 'the issuer had none');
      });

      test('with nothing pending: GOOD, NO SENSE', () => {
        const lun = makeLun({ personality, paths: 1 });
        assert.equal(hex(expectGood(requestSense(lun, 'p1'))), fixedSense(0, 0, 0));
        assert.equal(hex(expectGood(requestSense(lun, 'p1'))), fixedSense(0, 0, 0), 'and again: REQUEST SENSE changes nothing');
      });

      test('a short allocation length truncates the sense data and still clears the unit attention', () => {
        const lun = makeLun({ personality, paths: 1 });
        lun.ds.queueUnitAttention('p1', Asc.RESERVATIONS_RELEASED);
        assert.equal(hex(expectGood(requestSense(lun, 'p1', 8))), '700006000000000a');
        expectGood(lun.testUnitReady('p1'));
        assert.equal(hex(expectGood(requestSense(lun, 'p1', 1))), '70');
      });

      test('REQUEST SENSE passes every reservation (SPC-4 table 66), also from an unregistered nexus', () => {
        for (const type of [1, 3, 5, 6, 7, 8]) {
          const lun = lunWith(personality, 3, [['p1', A], ['p2', B]]);
          expectGood(lun.reserve('p1', A, type));
          expectConflict(lun.write10('p3'), `type ${type}: the access rule does apply to WRITE(10)`);
          assert.equal(hex(expectGood(requestSense(lun, 'p3'), `type ${type}`)), fixedSense(0, 0, 0));
        }
      });

      test('a unit attention pending with a reservation conflict: REQUEST SENSE reports it, the next command conflicts', () => {
        const lun = lunWith(personality, 3, [['p1', A]]);
        expectGood(lun.reserve('p1', A, 3));
        lun.ds.queueUnitAttention('p3', Asc.I_T_NEXUS_LOSS);
        assert.equal(hex(expectGood(requestSense(lun, 'p3'))), fixedSense(0x6, 0x29, 0x07));
        expectConflict(lun.write10('p3'));
      });
    });
  }

  test('several pending: lio reports the one of highest priority and clears them all; spc4 reports and clears the oldest', () => {
    for (const personality of BOTH) {
      const lun = lunWith(personality, 2, [['p1', A], ['p2', B]]);
      expectGood(lun.reserve('p1', A, 5));
      expectGood(lun.release('p1', A, 5)); // 2A/04 to p2
      lun.ds.queueUnitAttention('p2', Asc.POWER_ON_RESET);
      const data = hex(expectGood(requestSense(lun, 'p2'), personality));
      if (personality === 'lio') {
        // LIO puts 29h (resets) ahead of 2Ah and clears every pending one on a report.
        assert.equal(data, fixedSense(0x6, 0x29, 0x00));
        assert.deepEqual(lun.drainUnitAttentions('p2'), []);
      } else {
        assert.equal(data, fixedSense(0x6, 0x2a, 0x04));
        assert.deepEqual(lun.drainUnitAttentions('p2'), ['29/00']);
      }
    }
  });

  test('two 2Ah unit attentions (RELEASE then CLEAR) on lio: the first queued is reported, both cleared (as in the lab)', () => {
    const lun = lunWith('lio', 2, [['p1', A], ['p2', B]]);
    expectGood(lun.reserve('p1', A, 5));
    expectGood(lun.release('p1', A, 5)); // 2A/04
    expectGood(lun.reserve('p1', A, 5));
    expectGood(lun.clear('p1', A)); // 2A/03
    assert.equal(hex(expectGood(requestSense(lun, 'p2'))), fixedSense(0x6, 0x2a, 0x04));
    expectGood(lun.testUnitReady('p2'));
  });
});

// =====================================================================================================
describe('standard INQUIRY data (SPC-4 6.6.2)', () => {
  // What the lab's LIO returned to INQUIRY with allocation length 255 on a 3-port LU:
  // 00 00 06 02 5b b8 10 02 'LIO-ORG ' 'FILEIO          ' '4.0 ', zeros, version descriptors at
  // byte 58: SAM-5 00a0, SAS-3 0c60, SPC-4 0460, SBC-3 04c0, zeros to byte 95.
  const LAB_INQUIRY =
    '000006025bb810024c494f2d4f52472046494c45494f20202020202020202020342e3020' +
    '00'.repeat(22) +
    '00a00c60046004c0' +
    '00'.repeat(30);

  test('lio: the 96 bytes LIO returns, whatever the allocation length beyond them', () => {
    assert.equal(LAB_INQUIRY.length, 96 * 2);
    const lun = makeLun({ personality: 'lio', paths: 3 });
    for (const alloc of [96, 100, 255, 4096]) assert.equal(hex(expectGood(lun.inquiry('p1', alloc))), LAB_INQUIRY, `alloc ${alloc}`);
  });

  test('lio: a short allocation length returns the prefix (36, 5, 4, 0 as in the lab)', () => {
    const lun = makeLun({ personality: 'lio', paths: 3 });
    for (const alloc of [36, 5, 4, 0]) assert.equal(hex(expectGood(lun.inquiry('p2', alloc))), LAB_INQUIRY.slice(0, alloc * 2), `alloc ${alloc}`);
  });

  test('lio: MULTIP only when the LU has more than one target port; the transport descriptor follows the port protocol', () => {
    const single = makeLun({ personality: 'lio', paths: 1 });
    const one = expectGood(single.inquiry('p1'));
    assert.equal(one[6], 0x00, 'one target port: no MULTIP');
    assert.equal(hex(one.subarray(0, 6)), '000006025bb8');

    const byProtocol: Array<[TransportId, string]> = [
      [{ protocol: 'fc', nPortName: 0x21000024ff000001n }, '0a40'],
      [{ protocol: 'iscsi', format: 'device', name: 'iqn.2003-01.org.example:host' }, '0960'],
      [{ protocol: 'sas', sasAddress: 0x5001405f00000001n }, '0c60'],
      [{ protocol: 'raw', protocolId: 4, formatCode: 0, bytes: new Uint8Array(24) }, '0940'],
      [{ protocol: 'raw', protocolId: 0xe, formatCode: 0, bytes: new Uint8Array(24) }, '0000'],
    ];
    for (const [initiator, descriptor] of byProtocol) {
      const ds = new PrDeviceServer({ personality: 'lio' });
      ds.addNexus({ id: 'a', initiator, relativeTargetPortId: 1 });
      ds.addNexus({ id: 'b', initiator, relativeTargetPortId: 2 });
      const data = expectGood(ds.execute('a', Uint8Array.from([Opcode.INQUIRY, 0, 0, 0, 96, 0])));
      assert.equal(data[6], 0x10, `${initiator.protocol}: two target ports: MULTIP`);
      assert.equal(hex(data.subarray(58, 66)), `00a0${descriptor}046004c0`, initiator.protocol);
    }
  });

  test('spc4: 36 bytes, ADDITIONAL LENGTH 31, implicit ALUA only, no MULTIP or 3PC claimed', () => {
    const lun = makeLun({ personality: 'spc4', paths: 3 });
    const data = expectGood(lun.inquiry('p1', 255));
    assert.equal(data.length, 36);
    assert.equal(hex(data), '000006021f100002' + LAB_INQUIRY.slice(16, 72));
  });

  test('both: the identity given to the device server fills VENDOR, PRODUCT and REVISION, space-padded', () => {
    for (const personality of BOTH) {
      const ds = new PrDeviceServer({ personality, identity: { vendor: 'ACME', product: 'SIM', revision: '1' } });
      ds.addNexus({ id: 'a', initiator: { protocol: 'sas', sasAddress: 1n }, relativeTargetPortId: 1 });
      const data = expectGood(ds.execute('a', Uint8Array.from([Opcode.INQUIRY, 0, 0, 0, 36, 0])));
      assert.equal(Buffer.from(data.subarray(8, 36)).toString('latin1'), 'ACME    SIM             1   ', personality);
    }
  });

  test('both: EVPD=0 with a PAGE CODE: 5/24/00; INQUIRY leaves a pending unit attention alone', () => {
    for (const personality of BOTH) {
      const lun = makeLun({ personality, paths: 1 });
      expectIllegal(lun.exec('p1', Uint8Array.from([Opcode.INQUIRY, 0, 0x80, 0, 96, 0])), Asc.INVALID_FIELD_IN_CDB, personality);
      lun.ds.queueUnitAttention('p1', Asc.POWER_ON_RESET);
      expectGood(lun.inquiry('p1'), personality);
      expectUa(lun.testUnitReady('p1'), Asc.POWER_ON_RESET, personality);
    }
  });
});
