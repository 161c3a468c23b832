// SCSI command outcomes as values (house style: outcomes are values, exceptions are for broken
// transports and broken code). Constructors, the status to report, and helpers for retries and logs.
// Pure.

import { DecodeError } from '../errors.js';
import { type AscAscq, HostStatus, HostStatusName, ScsiStatus } from './constants.js';
import type { ScsiOutcome, SenseData } from './types.js';
import { buildSense, formatSense, parseSense } from './sense.js';

export function good(data: Uint8Array = new Uint8Array(0)): ScsiOutcome {
  return { kind: 'good', data };
}

/** CHECK CONDITION with sense built from a key and an ASC/ASCQ pair (fixed format unless asked). */
export function checkCondition(key: number, ascAscq: AscAscq, format: 'fixed' | 'descriptor' = 'fixed'): ScsiOutcome {
  return { kind: 'check-condition', sense: buildSense({ key, asc: ascAscq.asc, ascq: ascAscq.ascq }, format) };
}

/** CHECK CONDITION carrying sense bytes exactly as a target sent them. */
export function checkConditionWithSense(sense: Uint8Array): ScsiOutcome {
  return { kind: 'check-condition', sense };
}

export function reservationConflict(): ScsiOutcome {
  return { kind: 'reservation-conflict' };
}

export function busy(): ScsiOutcome {
  return { kind: 'busy' };
}

export function taskSetFull(): ScsiOutcome {
  return { kind: 'task-set-full' };
}

/**
 * The command did not complete at the target: `hostStatus` is the Linux DID_* code, `errno` is set
 * (non-zero) when the submission itself failed, `driverStatus` is the sg driver status.
 */
export function transportFailure(hostStatus: number, detail: string, extra: { errno?: number; driverStatus?: number } = {}): ScsiOutcome {
  return { kind: 'transport-failure', hostStatus, driverStatus: extra.driverStatus ?? 0, errno: extra.errno ?? 0, detail };
}

/**
 * The SCSI status to report for an outcome. A transport failure has no status from the target; it
 * is reported as CHECK CONDITION (QEMU's pr-manager-helper client answers a lost helper command
 * with CHECK CONDITION and LOGICAL UNIT COMMUNICATION FAILURE sense).
 */
export function outcomeStatus(o: ScsiOutcome): number {
  switch (o.kind) {
    case 'good':
      return ScsiStatus.GOOD;
    case 'check-condition':
    case 'transport-failure':
      return ScsiStatus.CHECK_CONDITION;
    case 'reservation-conflict':
      return ScsiStatus.RESERVATION_CONFLICT;
    case 'busy':
      return ScsiStatus.BUSY;
    case 'task-set-full':
      return ScsiStatus.TASK_SET_FULL;
  }
}

/**
 * Host statuses that say the target or the request itself failed, not the path: another path
 * would get the same answer. Mirrors Linux's blk_path_error(), which treats the block statuses
 * these DID_ codes map to (BLK_STS_TARGET, BLK_STS_NEXUS, BLK_STS_NOSPC, BLK_STS_MEDIUM) as not
 * worth a path retry.
 */
const NON_PATH_HOST_STATUS: ReadonlySet<number> = new Set([
  HostStatus.DID_TARGET_FAILURE,
  HostStatus.DID_NEXUS_FAILURE,
  HostStatus.DID_ALLOC_FAILURE,
  HostStatus.DID_MEDIUM_ERROR,
]);

/**
 * Linux errno values of an SG_IO submission that another path will not cure: the request or the
 * process is at fault, not the path (EPERM 1, ENOMEM 12, EACCES 13, EFAULT 14, EINVAL 22).
 */
const NON_PATH_ERRNO: ReadonlySet<number> = new Set([1, 12, 13, 14, 22]);

/** Whether an outcome is a transport failure worth retrying on another path. */
export function isRetryableTransportFailure(o: ScsiOutcome): boolean {
  return o.kind === 'transport-failure' && !NON_PATH_HOST_STATUS.has(o.hostStatus) && !NON_PATH_ERRNO.has(o.errno);
}

/** Parsed sense of a CHECK CONDITION outcome; null for other outcomes and for sense that cannot be parsed. */
export function outcomeSenseOf(o: ScsiOutcome): SenseData | null {
  if (o.kind !== 'check-condition') return null;
  try {
    return parseSense(o.sense);
  } catch (e) {
    if (e instanceof DecodeError) return null;
    throw e;
  }
}

/** One line for logs. */
export function formatOutcome(o: ScsiOutcome): string {
  switch (o.kind) {
    case 'good':
      return `GOOD (${o.data.length} bytes)`;
    case 'check-condition':
      return `CHECK CONDITION ${formatSense(o.sense)}`;
    case 'reservation-conflict':
      return 'RESERVATION CONFLICT';
    case 'busy':
      return 'BUSY';
    case 'task-set-full':
      return 'TASK SET FULL';
    case 'transport-failure': {
      const host = HostStatusName[o.hostStatus] ?? 'DID_?';
      const parts = [`TRANSPORT FAILURE ${host} (0x${o.hostStatus.toString(16).padStart(2, '0')})`];
      if (o.driverStatus !== 0) parts.push(`driver=0x${o.driverStatus.toString(16).padStart(2, '0')}`);
      if (o.errno !== 0) parts.push(`errno=${o.errno}`);
      return o.detail === '' ? parts.join(' ') : `${parts.join(' ')}: ${o.detail}`;
    }
  }
}
