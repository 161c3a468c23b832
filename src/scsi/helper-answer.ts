// The pr-manager-helper reply for a SCSI outcome: status, the 96-byte sense field and data-in.
// Pure. An outcome that came from the target (GOOD, CHECK CONDITION with the target's own sense,
// RESERVATION CONFLICT, BUSY, TASK SET FULL) is passed through unchanged. A transport failure has
// no target status, so it is reported the way qemu-pr-helper reports the same failure of its
// SG_IO (scsi/utils.c): by errno when the submission failed, else by host status, else (driver
// timeout) BUSY. The guest then sees what it would have seen behind the stock helper.

import { ScsiStatus } from './constants.js';
import { buildSense } from './sense.js';
import { QemuSense, qemuStatusFromErrno, qemuStatusFromHostStatus, SG_ERR_DRIVER_TIMEOUT } from './sgio-result.js';
import type { ScsiOutcome } from './types.js';

export const HELPER_SENSE_SIZE = 96;

export interface HelperAnswer {
  readonly status: number;
  /** Always HELPER_SENSE_SIZE bytes; zero unless CHECK CONDITION. */
  readonly sense: Uint8Array;
  /** Data-in; empty unless GOOD. */
  readonly data: Uint8Array;
}

function senseField(bytes: Uint8Array | null): Uint8Array {
  const out = new Uint8Array(HELPER_SENSE_SIZE);
  if (bytes !== null) out.set(bytes.subarray(0, HELPER_SENSE_SIZE));
  return out;
}

const EMPTY = new Uint8Array(0);

/** A CHECK CONDITION answer with fixed-format sense built from key/ASC/ASCQ. */
export function checkConditionAnswer(key: number, asc: number, ascq: number): HelperAnswer {
  return { status: ScsiStatus.CHECK_CONDITION, sense: senseField(buildSense({ key, asc, ascq }, 'fixed')), data: EMPTY };
}

/** What qemu-pr-helper answers when its SG_IO fails with `errno` (e.g. ENOTTY on a regular file). */
export function answerForErrno(errno: number): HelperAnswer {
  const v = qemuStatusFromErrno(errno);
  if (v.sense === null) return { status: v.status, sense: senseField(null), data: EMPTY };
  const [key, asc, ascq] = QemuSense[v.sense];
  return { status: v.status, sense: senseField(buildSense({ key, asc, ascq }, 'fixed')), data: EMPTY };
}

export function answerFromOutcome(o: ScsiOutcome): HelperAnswer {
  switch (o.kind) {
    case 'good':
      return { status: ScsiStatus.GOOD, sense: senseField(null), data: o.data };
    case 'check-condition':
      return { status: ScsiStatus.CHECK_CONDITION, sense: senseField(o.sense), data: EMPTY };
    case 'reservation-conflict':
      return { status: ScsiStatus.RESERVATION_CONFLICT, sense: senseField(null), data: EMPTY };
    case 'busy':
      return { status: ScsiStatus.BUSY, sense: senseField(null), data: EMPTY };
    case 'task-set-full':
      return { status: ScsiStatus.TASK_SET_FULL, sense: senseField(null), data: EMPTY };
    case 'transport-failure': {
      if (o.errno !== 0) return answerForErrno(o.errno);
      if (o.hostStatus !== 0) {
        const v = qemuStatusFromHostStatus(o.hostStatus);
        // QEMU reports GOOD for host statuses it does not list (DID_ERROR, DID_SOFT_ERROR...). A
        // failed PR command must not look successful to the guest: report it as QEMU's own
        // pr-manager client reports a lost helper command (LOGICAL UNIT COMMUNICATION FAILURE).
        const verdict = v.status === ScsiStatus.GOOD ? { status: ScsiStatus.CHECK_CONDITION, sense: 'LUN_COMM_FAILURE' as const } : v;
        if (verdict.sense === null) return { status: verdict.status, sense: senseField(null), data: EMPTY };
        const [key, asc, ascq] = QemuSense[verdict.sense];
        return { status: verdict.status, sense: senseField(buildSense({ key, asc, ascq }, 'fixed')), data: EMPTY };
      }
      if ((o.driverStatus & SG_ERR_DRIVER_TIMEOUT) !== 0) return { status: ScsiStatus.BUSY, sense: senseField(null), data: EMPTY };
      const [key, asc, ascq] = QemuSense.LUN_COMM_FAILURE;
      return { status: ScsiStatus.CHECK_CONDITION, sense: senseField(buildSense({ key, asc, ascq }, 'fixed')), data: EMPTY };
    }
  }
}
