// One test per row of QEMU's tables (scsi/utils.c scsi_sense_from_errno, scsi_sense_from_host_status;
// scsi/qemu-pr-helper.c do_sgio_worker), checking both prmux's outcome and QEMU's answer.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostStatus, ScsiStatus } from '../../src/scsi/constants.js';
import { LinuxErrno, QemuSense, type QemuSenseName, type SgIoCompletion, sgIoResult } from '../../src/scsi/sgio-result.js';

const base: SgIoCompletion = { errno: 0, status: 0, hostStatus: 0, driverStatus: 0, sense: new Uint8Array(0), resid: 0, data: null };

function qemuSense(result: ReturnType<typeof sgIoResult>): [number, number, number] | null {
  const s = result.qemu.sense;
  assert.equal(s.length, 96);
  if (s.every((b) => b === 0)) return null;
  assert.equal(s[0], 0x70, 'QEMU builds fixed-format sense');
  assert.equal(s[7], 10);
  return [s[2]!, s[12]!, s[13]!];
}

function expectSense(name: QemuSenseName | null): [number, number, number] | null {
  return name === null ? null : [...QemuSense[name]];
}

describe('sgIoResult: ioctl failed (scsi_sense_from_errno)', () => {
  const rows: [keyof typeof LinuxErrno, number, QemuSenseName | null, string][] = [
    ['EDOM', ScsiStatus.TASK_SET_FULL, null, 'task-set-full'],
    ['EBADE', ScsiStatus.RESERVATION_CONFLICT, null, 'reservation-conflict'],
    ['ENODEV', ScsiStatus.CHECK_CONDITION, 'TARGET_FAILURE', 'transport-failure'],
    ['EREMOTEIO', ScsiStatus.CHECK_CONDITION, 'TARGET_FAILURE', 'transport-failure'],
    ['ENODATA', ScsiStatus.CHECK_CONDITION, 'READ_ERROR', 'transport-failure'],
    ['ENOMEDIUM', ScsiStatus.CHECK_CONDITION, 'NO_MEDIUM', 'transport-failure'],
    ['ENOMEM', ScsiStatus.CHECK_CONDITION, 'TARGET_FAILURE', 'transport-failure'],
    ['EINVAL', ScsiStatus.CHECK_CONDITION, 'INVALID_FIELD', 'transport-failure'],
    ['ENOSPC', ScsiStatus.CHECK_CONDITION, 'SPACE_ALLOC_FAILED', 'transport-failure'],
    ['ENOTTY', ScsiStatus.CHECK_CONDITION, 'IO_ERROR', 'transport-failure'],
    ['EBADF', ScsiStatus.CHECK_CONDITION, 'IO_ERROR', 'transport-failure'],
    ['EIO', ScsiStatus.CHECK_CONDITION, 'IO_ERROR', 'transport-failure'],
    ['EPERM', ScsiStatus.CHECK_CONDITION, 'IO_ERROR', 'transport-failure'],
  ];
  for (const [name, status, sense, kind] of rows) {
    it(`${name} -> QEMU status 0x${status.toString(16)} ${sense ?? 'no sense'}; outcome ${kind}`, () => {
      const r = sgIoResult({ ...base, errno: LinuxErrno[name], data: new Uint8Array(16) });
      assert.equal(r.qemu.status, status);
      assert.deepEqual(qemuSense(r), expectSense(sense));
      assert.equal(r.qemu.dataLength, 0);
      assert.equal(r.outcome.kind, kind);
      if (r.outcome.kind === 'transport-failure') {
        assert.equal(r.outcome.errno, LinuxErrno[name]);
        assert.match(r.outcome.detail, new RegExp(name));
      }
    });
  }
});

describe('sgIoResult: host status (scsi_sense_from_host_status)', () => {
  const rows: [keyof typeof HostStatus, number, QemuSenseName | null, string][] = [
    ['DID_NO_CONNECT', ScsiStatus.CHECK_CONDITION, 'LUN_NOT_RESPONDING', 'transport-failure'],
    ['DID_BUS_BUSY', ScsiStatus.BUSY, null, 'transport-failure'],
    ['DID_TIME_OUT', ScsiStatus.CHECK_CONDITION, 'COMMAND_TIMEOUT', 'transport-failure'],
    ['DID_BAD_TARGET', ScsiStatus.CHECK_CONDITION, 'LUN_COMM_FAILURE', 'transport-failure'],
    ['DID_ABORT', ScsiStatus.CHECK_CONDITION, 'COMMAND_ABORTED', 'transport-failure'],
    ['DID_RESET', ScsiStatus.CHECK_CONDITION, 'RESET', 'transport-failure'],
    ['DID_TRANSPORT_DISRUPTED', ScsiStatus.CHECK_CONDITION, 'I_T_NEXUS_LOSS', 'transport-failure'],
    ['DID_TARGET_FAILURE', ScsiStatus.CHECK_CONDITION, 'TARGET_FAILURE', 'transport-failure'],
    ['DID_NEXUS_FAILURE', ScsiStatus.RESERVATION_CONFLICT, null, 'reservation-conflict'],
    ['DID_ALLOC_FAILURE', ScsiStatus.CHECK_CONDITION, 'SPACE_ALLOC_FAILED', 'transport-failure'],
    ['DID_MEDIUM_ERROR', ScsiStatus.CHECK_CONDITION, 'READ_ERROR', 'transport-failure'],
    // Not in QEMU's table: QEMU answers GOOD (and the data) although the transport failed.
    ['DID_ERROR', ScsiStatus.GOOD, null, 'transport-failure'],
    ['DID_SOFT_ERROR', ScsiStatus.GOOD, null, 'transport-failure'],
    ['DID_TRANSPORT_FAILFAST', ScsiStatus.GOOD, null, 'transport-failure'],
    ['DID_TRANSPORT_MARGINAL', ScsiStatus.GOOD, null, 'transport-failure'],
  ];
  for (const [name, status, sense, kind] of rows) {
    it(`${name} -> QEMU status 0x${status.toString(16)} ${sense ?? 'no sense'}; outcome ${kind}`, () => {
      const r = sgIoResult({ ...base, hostStatus: HostStatus[name], data: new Uint8Array(16), resid: 4 });
      assert.equal(r.qemu.status, status);
      assert.deepEqual(qemuSense(r), expectSense(sense));
      assert.equal(r.qemu.dataLength, status === ScsiStatus.GOOD ? 12 : 0);
      assert.equal(r.outcome.kind, kind);
      if (r.outcome.kind === 'transport-failure') {
        assert.equal(r.outcome.hostStatus, HostStatus[name]);
        assert.match(r.outcome.detail, new RegExp(name));
      }
    });
  }

  it('host status wins over the target status byte', () => {
    const r = sgIoResult({ ...base, hostStatus: HostStatus.DID_TIME_OUT, status: ScsiStatus.GOOD });
    assert.equal(r.qemu.status, ScsiStatus.CHECK_CONDITION);
    assert.equal(r.outcome.kind, 'transport-failure');
  });
});

describe('sgIoResult: driver status and target status', () => {
  it('driver timeout -> QEMU BUSY; outcome transport-failure', () => {
    const r = sgIoResult({ ...base, driverStatus: 0x06 });
    assert.equal(r.qemu.status, ScsiStatus.BUSY);
    assert.equal(r.outcome.kind, 'transport-failure');
  });

  it('QEMU tests SG_ERR_DRIVER_TIMEOUT as a mask: DRIVER_ERROR (0x04) also reads as BUSY', () => {
    assert.equal(sgIoResult({ ...base, driverStatus: 0x04 }).qemu.status, ScsiStatus.BUSY);
  });

  it('DRIVER_SENSE alone (0x08) is not a timeout', () => {
    const r = sgIoResult({ ...base, driverStatus: 0x08, data: new Uint8Array(4) });
    assert.equal(r.qemu.status, ScsiStatus.GOOD);
    assert.equal(r.outcome.kind, 'good');
  });

  it('GOOD: data cut by resid', () => {
    const data = Uint8Array.from({ length: 16 }, (_, i) => i);
    const r = sgIoResult({ ...base, data, resid: 6 });
    assert.deepEqual(r.outcome, { kind: 'good', data: data.subarray(0, 10) });
    assert.equal(r.qemu.dataLength, 10);
    assert.equal(qemuSense(r), null);
  });

  it('CHECK CONDITION: the target sense is passed through untouched, and into the QEMU field', () => {
    const sense = Uint8Array.from([0x72, 0x06, 0x2a, 0x03, 0, 0, 0, 0]);
    const r = sgIoResult({ ...base, status: ScsiStatus.CHECK_CONDITION, driverStatus: 0x08, sense, data: new Uint8Array(8) });
    assert.deepEqual(r.outcome, { kind: 'check-condition', sense });
    assert.equal(r.qemu.status, ScsiStatus.CHECK_CONDITION);
    assert.deepEqual(r.qemu.sense.subarray(0, 8), sense);
    assert.equal(r.qemu.dataLength, 0);
  });

  const statuses: [number, string][] = [
    [ScsiStatus.RESERVATION_CONFLICT, 'reservation-conflict'],
    [ScsiStatus.BUSY, 'busy'],
    [ScsiStatus.TASK_SET_FULL, 'task-set-full'],
    [ScsiStatus.TASK_ABORTED, 'transport-failure'],
    [ScsiStatus.ACA_ACTIVE, 'transport-failure'],
  ];
  for (const [status, kind] of statuses) {
    it(`status 0x${status.toString(16)} -> outcome ${kind}, QEMU passes the status through`, () => {
      const r = sgIoResult({ ...base, status });
      assert.equal(r.outcome.kind, kind);
      assert.equal(r.qemu.status, status);
    });
  }

  it('built sense overwrites only the first 18 bytes of what the kernel wrote', () => {
    const kernel = new Uint8Array(32).fill(0xaa);
    const r = sgIoResult({ ...base, hostStatus: HostStatus.DID_TIME_OUT, sense: kernel });
    assert.deepEqual(qemuSense(r), [...QemuSense.COMMAND_TIMEOUT]);
    assert.deepEqual(r.qemu.sense.subarray(18, 32), kernel.subarray(18));
    assert.ok(r.qemu.sense.subarray(32).every((b) => b === 0));
  });
});
