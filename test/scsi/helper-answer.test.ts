// The pr-manager-helper reply for an outcome. Target answers pass through unchanged; transport
// failures are answered as qemu-pr-helper answers the same failed SG_IO (scsi/utils.c
// scsi_sense_from_errno / scsi_sense_from_host_status, then the driver-timeout BUSY of
// qemu-pr-helper.c), except that a failure must never read as GOOD. Expected sense codes are
// written out from QEMU's sense_code_* table, not taken from the code under test.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { HostStatus, ScsiStatus, SenseKey } from '../../src/scsi/constants.js';
import { HELPER_SENSE_SIZE, answerForErrno, answerFromOutcome, checkConditionAnswer, type HelperAnswer } from '../../src/scsi/helper-answer.js';
import { buildSense } from '../../src/scsi/sense.js';
import type { ScsiOutcome } from '../../src/scsi/types.js';

/** Fixed-format sense as scsi_build_sense writes it: 70h, key, additional length 10, ASC, ASCQ; 18 bytes. */
function qemuFixedSense(key: number, asc: number, ascq: number): Uint8Array {
  const s = new Uint8Array(HELPER_SENSE_SIZE);
  s[0] = 0x70;
  s[2] = key;
  s[7] = 10;
  s[12] = asc;
  s[13] = ascq;
  return s;
}

const ZERO_SENSE = new Uint8Array(HELPER_SENSE_SIZE);
const EMPTY = new Uint8Array(0);

function failure(f: Partial<{ hostStatus: number; driverStatus: number; errno: number }>): ScsiOutcome {
  return { kind: 'transport-failure', hostStatus: f.hostStatus ?? 0, driverStatus: f.driverStatus ?? 0, errno: f.errno ?? 0, detail: 'test' };
}

function checkCondition(a: HelperAnswer, key: number, asc: number, ascq: number, what: string): void {
  assert.equal(a.status, ScsiStatus.CHECK_CONDITION, what);
  assert.deepEqual(a.sense, qemuFixedSense(key, asc, ascq), what);
  assert.deepEqual(a.data, EMPTY, what);
}

function noSense(a: HelperAnswer, status: number, what: string): void {
  assert.equal(a.status, status, what);
  assert.deepEqual(a.sense, ZERO_SENSE, what);
  assert.deepEqual(a.data, EMPTY, what);
}

describe('answerFromOutcome: target answers', () => {
  it('GOOD: data passed through, zero 96-byte sense', () => {
    const data = Uint8Array.from([0, 0, 0, 5, 0, 0, 0, 8, 0xab, 0xcd, 0, 0, 0, 0, 0, 1]);
    const a = answerFromOutcome({ kind: 'good', data });
    assert.equal(a.status, ScsiStatus.GOOD);
    assert.deepEqual(a.sense, ZERO_SENSE);
    assert.deepEqual(a.data, data);
    noSense(answerFromOutcome({ kind: 'good', data: EMPTY }), ScsiStatus.GOOD, 'GOOD, no data');
  });

  it('CHECK CONDITION: the target\'s sense byte-exact, zero-padded to 96; no data', () => {
    // Descriptor-format sense from the target must not be rewritten to fixed format.
    const desc = buildSense({ key: SenseKey.UNIT_ATTENTION, asc: 0x2a, ascq: 0x03 }, 'descriptor');
    const fixed = Uint8Array.from([0xf0, 0, 0x06, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0, 0xaa, 0xbb]);
    for (const sense of [desc, fixed, EMPTY]) {
      const a = answerFromOutcome({ kind: 'check-condition', sense });
      assert.equal(a.status, ScsiStatus.CHECK_CONDITION);
      assert.equal(a.sense.length, HELPER_SENSE_SIZE);
      assert.deepEqual(a.sense.subarray(0, sense.length), sense);
      assert.ok(a.sense.subarray(sense.length).every((b) => b === 0));
      assert.deepEqual(a.data, EMPTY);
    }
  });

  it('CHECK CONDITION with more than 96 sense bytes: the first 96', () => {
    const long = Uint8Array.from({ length: 252 }, (_, i) => (i * 7 + 1) & 0xff);
    const a = answerFromOutcome({ kind: 'check-condition', sense: long });
    assert.deepEqual(a.sense, long.subarray(0, 96));
  });

  it('sense is always 96 bytes and a fresh buffer (never aliases the outcome\'s)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (sense) => {
        const a = answerFromOutcome({ kind: 'check-condition', sense });
        assert.equal(a.sense.length, HELPER_SENSE_SIZE);
        const n = Math.min(sense.length, HELPER_SENSE_SIZE);
        assert.deepEqual(a.sense.subarray(0, n), sense.subarray(0, n));
        if (sense.length > 0) assert.notEqual(a.sense.buffer, sense.buffer);
      }),
    );
  });

  it('RESERVATION CONFLICT, BUSY, TASK SET FULL: the status, zero sense, no data', () => {
    noSense(answerFromOutcome({ kind: 'reservation-conflict' }), 0x18, 'reservation conflict');
    noSense(answerFromOutcome({ kind: 'busy' }), 0x08, 'busy');
    noSense(answerFromOutcome({ kind: 'task-set-full' }), 0x28, 'task set full');
  });
});

describe('answerFromOutcome: transport failures, as qemu-pr-helper answers the same SG_IO', () => {
  it('errno (scsi_sense_from_errno)', () => {
    checkCondition(answerFromOutcome(failure({ errno: 25 })), SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'ENOTTY -> IO_ERROR');
    checkCondition(answerFromOutcome(failure({ errno: 5 })), SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'EIO -> IO_ERROR');
    checkCondition(answerFromOutcome(failure({ errno: 19 })), SenseKey.HARDWARE_ERROR, 0x44, 0x00, 'ENODEV -> TARGET_FAILURE');
    checkCondition(answerFromOutcome(failure({ errno: 121 })), SenseKey.HARDWARE_ERROR, 0x44, 0x00, 'EREMOTEIO -> TARGET_FAILURE');
    checkCondition(answerFromOutcome(failure({ errno: 12 })), SenseKey.HARDWARE_ERROR, 0x44, 0x00, 'ENOMEM -> TARGET_FAILURE');
    checkCondition(answerFromOutcome(failure({ errno: 61 })), SenseKey.MEDIUM_ERROR, 0x11, 0x00, 'ENODATA -> READ_ERROR');
    checkCondition(answerFromOutcome(failure({ errno: 123 })), SenseKey.NOT_READY, 0x3a, 0x00, 'ENOMEDIUM -> NO_MEDIUM');
    checkCondition(answerFromOutcome(failure({ errno: 22 })), SenseKey.ILLEGAL_REQUEST, 0x24, 0x00, 'EINVAL -> INVALID_FIELD');
    checkCondition(answerFromOutcome(failure({ errno: 28 })), SenseKey.DATA_PROTECT, 0x27, 0x07, 'ENOSPC -> SPACE_ALLOC_FAILED');
    noSense(answerFromOutcome(failure({ errno: 52 })), ScsiStatus.RESERVATION_CONFLICT, 'EBADE');
    noSense(answerFromOutcome(failure({ errno: 33 })), ScsiStatus.TASK_SET_FULL, 'EDOM');
  });

  it('errno beats host and driver status (the ioctl failed; its hdr means nothing)', () => {
    const a = answerFromOutcome(failure({ errno: 25, hostStatus: HostStatus.DID_BUS_BUSY, driverStatus: 0x06 }));
    checkCondition(a, SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'ENOTTY with DID_BUS_BUSY');
    checkCondition(answerFromOutcome(failure({ errno: 22, hostStatus: HostStatus.DID_NEXUS_FAILURE })), SenseKey.ILLEGAL_REQUEST, 0x24, 0x00, 'EINVAL with DID_NEXUS_FAILURE');
  });

  it('host statuses QEMU lists (scsi_sense_from_host_status; SCSI_HOST_* = DID_*)', () => {
    const cases: [number, string, number, [number, number, number] | null][] = [
      [0x01, 'DID_NO_CONNECT -> LUN_NOT_RESPONDING', ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x05, 0x00]],
      [0x02, 'DID_BUS_BUSY -> BUSY', ScsiStatus.BUSY, null],
      [0x03, 'DID_TIME_OUT -> COMMAND_TIMEOUT', ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x2e, 0x02]],
      [0x04, 'DID_BAD_TARGET -> LUN_COMM_FAILURE', ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x08, 0x00]],
      [0x05, 'DID_ABORT -> COMMAND_ABORTED', ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x2f, 0x02]],
      [0x08, 'DID_RESET -> RESET', ScsiStatus.CHECK_CONDITION, [SenseKey.UNIT_ATTENTION, 0x29, 0x00]],
      [0x0e, 'DID_TRANSPORT_DISRUPTED -> I_T_NEXUS_LOSS', ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x29, 0x07]],
      [0x10, 'DID_TARGET_FAILURE -> TARGET_FAILURE', ScsiStatus.CHECK_CONDITION, [SenseKey.HARDWARE_ERROR, 0x44, 0x00]],
      [0x11, 'DID_NEXUS_FAILURE -> RESERVATION CONFLICT', ScsiStatus.RESERVATION_CONFLICT, null],
      [0x12, 'DID_ALLOC_FAILURE -> SPACE_ALLOC_FAILED', ScsiStatus.CHECK_CONDITION, [SenseKey.DATA_PROTECT, 0x27, 0x07]],
      [0x13, 'DID_MEDIUM_ERROR -> READ_ERROR', ScsiStatus.CHECK_CONDITION, [SenseKey.MEDIUM_ERROR, 0x11, 0x00]],
    ];
    for (const [hostStatus, what, status, sense] of cases) {
      // A driver timeout alongside does not change it: host status is decided first.
      for (const driverStatus of [0, 0x06]) {
        const a = answerFromOutcome(failure({ hostStatus, driverStatus }));
        if (sense === null) noSense(a, status, what);
        else checkCondition(a, ...sense, what);
      }
    }
  });

  it('host statuses QEMU does not list never read as GOOD (DID_ERROR, DID_SOFT_ERROR, ...)', () => {
    const unlisted = [0x06, 0x07, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0f, 0x14, 0x15, 0x7f, 0xff];
    for (const hostStatus of unlisted) {
      const a = answerFromOutcome(failure({ hostStatus }));
      assert.notEqual(a.status, ScsiStatus.GOOD, `host status 0x${hostStatus.toString(16)}`);
      assert.equal(a.data.length, 0);
      assert.equal(a.sense.length, HELPER_SENSE_SIZE);
      // Reported as QEMU's own pr-manager client reports a lost helper command.
      checkCondition(a, SenseKey.ABORTED_COMMAND, 0x08, 0x00, `host status 0x${hostStatus.toString(16)}`);
    }
    assert.notEqual(answerFromOutcome(failure({ hostStatus: HostStatus.DID_ERROR })).status, ScsiStatus.GOOD);
  });

  it('no errno, no host status: a driver timeout (any of bits 0x06) is BUSY, else a communication failure', () => {
    for (const driverStatus of [0x06, 0x02, 0x04, 0x0e, 0x26]) noSense(answerFromOutcome(failure({ driverStatus })), ScsiStatus.BUSY, `driver 0x${driverStatus.toString(16)}`);
    for (const driverStatus of [0x00, 0x08, 0x01, 0x10]) {
      checkCondition(answerFromOutcome(failure({ driverStatus })), SenseKey.ABORTED_COMMAND, 0x08, 0x00, `driver 0x${driverStatus.toString(16)}`);
    }
  });

  it('property: a transport failure is never answered GOOD, carries no data and a 96-byte sense', () => {
    fc.assert(
      fc.property(fc.nat(0xff), fc.nat(0xff), fc.nat(200), (hostStatus, driverStatus, errno) => {
        const a = answerFromOutcome(failure({ hostStatus, driverStatus, errno }));
        assert.notEqual(a.status, ScsiStatus.GOOD);
        assert.equal(a.data.length, 0);
        assert.equal(a.sense.length, HELPER_SENSE_SIZE);
        // Sense only with CHECK CONDITION.
        if (a.status !== ScsiStatus.CHECK_CONDITION) assert.deepEqual(a.sense, ZERO_SENSE);
        else assert.equal(a.sense[0], 0x70);
      }),
    );
  });
});

describe('answerForErrno', () => {
  it('ENOTTY (the SG_IO on a regular file) is CHECK CONDITION, ABORTED COMMAND 00/06, as qemu-pr-helper answers', () => {
    checkCondition(answerForErrno(25), SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'ENOTTY');
  });

  it('other errnos follow scsi_sense_from_errno; status-only answers carry zero sense', () => {
    checkCondition(answerForErrno(9), SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'EBADF');
    checkCondition(answerForErrno(1), SenseKey.ABORTED_COMMAND, 0x00, 0x06, 'EPERM');
    checkCondition(answerForErrno(22), SenseKey.ILLEGAL_REQUEST, 0x24, 0x00, 'EINVAL');
    noSense(answerForErrno(52), ScsiStatus.RESERVATION_CONFLICT, 'EBADE');
    noSense(answerForErrno(33), ScsiStatus.TASK_SET_FULL, 'EDOM');
  });
});

describe('checkConditionAnswer', () => {
  it('builds 18-byte fixed-format sense in the 96-byte field', () => {
    checkCondition(checkConditionAnswer(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00), SenseKey.ILLEGAL_REQUEST, 0x20, 0x00, 'invalid opcode');
    checkCondition(checkConditionAnswer(SenseKey.ILLEGAL_REQUEST, 0x1a, 0x00), SenseKey.ILLEGAL_REQUEST, 0x1a, 0x00, 'parameter list length');
    checkCondition(checkConditionAnswer(SenseKey.UNIT_ATTENTION, 0x2a, 0x03), SenseKey.UNIT_ATTENTION, 0x2a, 0x03, 'reservations preempted');
  });

  it('answers are independent buffers (one answer\'s sense is not another\'s)', () => {
    const a = checkConditionAnswer(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00);
    const b = checkConditionAnswer(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00);
    a.sense[12] = 0xff;
    assert.equal(b.sense[12], 0x20);
    const c = answerForErrno(25);
    const d = answerForErrno(25);
    c.sense[2] = 0;
    assert.equal(d.sense[2], SenseKey.ABORTED_COMMAND);
  });
});
