import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fromHex } from '../../src/scsi/bytes.js';
import { Asc, HostStatus, ScsiStatus, SenseKey } from '../../src/scsi/constants.js';
import {
  busy,
  checkCondition,
  checkConditionWithSense,
  formatOutcome,
  good,
  isRetryableTransportFailure,
  outcomeSenseOf,
  outcomeStatus,
  reservationConflict,
  taskSetFull,
  transportFailure,
} from '../../src/scsi/outcome.js';
import { buildSense, parseSense } from '../../src/scsi/sense.js';

describe('outcome constructors', () => {
  it('build the ScsiOutcome values', () => {
    assert.deepEqual(good(), { kind: 'good', data: new Uint8Array(0) });
    assert.deepEqual(good(fromHex('0102')), { kind: 'good', data: fromHex('0102') });
    assert.deepEqual(reservationConflict(), { kind: 'reservation-conflict' });
    assert.deepEqual(busy(), { kind: 'busy' });
    assert.deepEqual(taskSetFull(), { kind: 'task-set-full' });
    assert.deepEqual(transportFailure(HostStatus.DID_TIME_OUT, 'timed out'), { kind: 'transport-failure', hostStatus: 3, driverStatus: 0, errno: 0, detail: 'timed out' });
    assert.deepEqual(transportFailure(0, 'ioctl failed', { errno: 19, driverStatus: 6 }), { kind: 'transport-failure', hostStatus: 0, driverStatus: 6, errno: 19, detail: 'ioctl failed' });
  });

  it('checkCondition builds fixed sense by default, descriptor on request', () => {
    const o = checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
    assert.equal(o.kind, 'check-condition');
    assert.deepEqual(o.kind === 'check-condition' && o.sense, buildSense({ key: 5, asc: 0x1a, ascq: 0 }));
    const d = checkCondition(SenseKey.UNIT_ATTENTION, Asc.REGISTRATIONS_PREEMPTED, 'descriptor');
    assert.deepEqual(outcomeSenseOf(d), { format: 'descriptor', current: true, key: 6, asc: 0x2a, ascq: 5 });
  });

  it('checkConditionWithSense keeps the bytes as sent', () => {
    const sense = concat96(buildSense({ key: 2, ...Asc.LOGICAL_UNIT_COMMUNICATION_FAILURE }));
    const o = checkConditionWithSense(sense);
    assert.equal(o.kind === 'check-condition' && o.sense, sense);
  });
});

function concat96(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(96);
  out.set(b);
  return out;
}

describe('outcomeStatus', () => {
  it('maps each outcome to its SCSI status, transport failures to CHECK CONDITION', () => {
    assert.equal(outcomeStatus(good()), ScsiStatus.GOOD);
    assert.equal(outcomeStatus(checkCondition(5, Asc.INVALID_FIELD_IN_CDB)), ScsiStatus.CHECK_CONDITION);
    assert.equal(outcomeStatus(reservationConflict()), 0x18);
    assert.equal(outcomeStatus(busy()), 0x08);
    assert.equal(outcomeStatus(taskSetFull()), 0x28);
    assert.equal(outcomeStatus(transportFailure(HostStatus.DID_NO_CONNECT, 'gone')), ScsiStatus.CHECK_CONDITION);
  });
});

describe('isRetryableTransportFailure', () => {
  it('retries path failures', () => {
    for (const h of [
      HostStatus.DID_OK,
      HostStatus.DID_NO_CONNECT,
      HostStatus.DID_BUS_BUSY,
      HostStatus.DID_TIME_OUT,
      HostStatus.DID_ERROR,
      HostStatus.DID_RESET,
      HostStatus.DID_SOFT_ERROR,
      HostStatus.DID_IMM_RETRY,
      HostStatus.DID_TRANSPORT_DISRUPTED,
      HostStatus.DID_TRANSPORT_FAILFAST,
      HostStatus.DID_TRANSPORT_MARGINAL,
    ]) {
      assert.ok(isRetryableTransportFailure(transportFailure(h, '')), `host status ${h}`);
    }
    assert.ok(isRetryableTransportFailure(transportFailure(0, 'ENODEV', { errno: 19 })));
    assert.ok(isRetryableTransportFailure(transportFailure(0, 'EIO', { errno: 5 })));
  });

  it('does not retry target, nexus, allocation and medium failures, nor local errors', () => {
    for (const h of [HostStatus.DID_TARGET_FAILURE, HostStatus.DID_NEXUS_FAILURE, HostStatus.DID_ALLOC_FAILURE, HostStatus.DID_MEDIUM_ERROR]) {
      assert.ok(!isRetryableTransportFailure(transportFailure(h, '')), `host status ${h}`);
    }
    for (const errno of [1, 12, 13, 14, 22]) assert.ok(!isRetryableTransportFailure(transportFailure(0, '', { errno })), `errno ${errno}`);
  });

  it('is false for outcomes the target answered', () => {
    for (const o of [good(), busy(), taskSetFull(), reservationConflict(), checkCondition(0xb, Asc.LOGICAL_UNIT_COMMUNICATION_FAILURE)]) {
      assert.ok(!isRetryableTransportFailure(o));
    }
  });
});

describe('outcomeSenseOf / formatOutcome', () => {
  it('parses the sense of CHECK CONDITION only', () => {
    assert.deepEqual(outcomeSenseOf(checkCondition(5, Asc.INVALID_FIELD_IN_CDB)), parseSense(buildSense({ key: 5, asc: 0x24, ascq: 0 })));
    assert.equal(outcomeSenseOf(checkConditionWithSense(fromHex('0102'))), null);
    assert.equal(outcomeSenseOf(good()), null);
    assert.equal(outcomeSenseOf(reservationConflict()), null);
  });

  it('renders one line per outcome', () => {
    assert.equal(formatOutcome(good(new Uint8Array(16))), 'GOOD (16 bytes)');
    assert.equal(formatOutcome(checkCondition(5, Asc.INVALID_FIELD_IN_CDB)), 'CHECK CONDITION ILLEGAL_REQUEST INVALID_FIELD_IN_CDB (5/24/00)');
    assert.equal(formatOutcome(reservationConflict()), 'RESERVATION CONFLICT');
    assert.equal(formatOutcome(busy()), 'BUSY');
    assert.equal(formatOutcome(taskSetFull()), 'TASK SET FULL');
    assert.equal(formatOutcome(transportFailure(HostStatus.DID_TIME_OUT, 'path sdb')), 'TRANSPORT FAILURE DID_TIME_OUT (0x03): path sdb');
    assert.equal(formatOutcome(transportFailure(0, 'SG_IO', { errno: 19, driverStatus: 0x06 })), 'TRANSPORT FAILURE DID_OK (0x00) driver=0x06 errno=19: SG_IO');
    assert.equal(formatOutcome(transportFailure(0x7f, '')), 'TRANSPORT FAILURE DID_? (0x7f)');
  });
});
