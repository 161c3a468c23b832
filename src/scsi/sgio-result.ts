// What an SG_IO ioctl's completion means, as a value: prmux's ScsiOutcome, and the status and
// sense qemu-pr-helper would have sent to the guest for the same completion. Pure.
//
// QEMU (scsi/qemu-pr-helper.c do_sgio_worker, scsi/utils.c) decides in this order:
//   1. ioctl() failed           -> scsi_sense_from_errno(errno), sense built if CHECK CONDITION
//   2. host_status != 0         -> scsi_sense_from_host_status(host_status), sense built if CHECK CONDITION;
//                                  a host status that function does not list yields GOOD
//   3. driver_status & 0x06     -> BUSY (SG_ERR_DRIVER_TIMEOUT tested as a bit mask, as QEMU does)
//   4. otherwise                -> the target's status byte, with the sense the kernel wrote
// For GOOD the data length is dxfer_len - resid. Built sense is fixed format, 18 bytes
// (scsi_build_sense), in the zeroed 96-byte sense field.
//
// prmux's outcome differs where QEMU's answer hides what happened: a failed submission or a
// transport (host) error is a `transport-failure` (the command may not have reached the target;
// multipath logic decides whether another path is worth trying), except where the errno or host
// status itself names a target status (EBADE and DID_NEXUS_FAILURE: reservation conflict; EDOM:
// task set full). QEMU's answer is kept alongside for drop-in compatibility and logs.

import { HostStatus, HostStatusName, ScsiStatus, SenseKey } from './constants.js';
import { buildSense } from './sense.js';
import type { ScsiOutcome } from './types.js';

/** Linux errno values the mapping names (asm-generic/errno*.h; the same on x86-64 and arm64). */
export const LinuxErrno = {
  EPERM: 1,
  EIO: 5,
  EBADF: 9,
  ENOMEM: 12,
  EFAULT: 14,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  EDOM: 33,
  EBADE: 52,
  ENODATA: 61,
  EREMOTEIO: 121,
  ENOMEDIUM: 123,
} as const;

const errnoNames = new Map<number, string>(Object.entries(LinuxErrno).map(([k, v]) => [v, k]));

/** sg driver_status bits QEMU tests (include/scsi/utils.h). */
export const SG_ERR_DRIVER_TIMEOUT = 0x06;
export const SG_ERR_DRIVER_SENSE = 0x08;

/** The sense field of the pr-helper reply. */
const QEMU_SENSE_SIZE = 96;

/** Sense codes QEMU builds (scsi/utils.c sense_code_*): key, ASC, ASCQ. */
export const QemuSense = {
  IO_ERROR: [SenseKey.ABORTED_COMMAND, 0x00, 0x06],
  TARGET_FAILURE: [SenseKey.HARDWARE_ERROR, 0x44, 0x00],
  READ_ERROR: [SenseKey.MEDIUM_ERROR, 0x11, 0x00],
  NO_MEDIUM: [SenseKey.NOT_READY, 0x3a, 0x00],
  INVALID_FIELD: [SenseKey.ILLEGAL_REQUEST, 0x24, 0x00],
  SPACE_ALLOC_FAILED: [SenseKey.DATA_PROTECT, 0x27, 0x07],
  LUN_NOT_RESPONDING: [SenseKey.ABORTED_COMMAND, 0x05, 0x00],
  COMMAND_TIMEOUT: [SenseKey.ABORTED_COMMAND, 0x2e, 0x02],
  LUN_COMM_FAILURE: [SenseKey.ABORTED_COMMAND, 0x08, 0x00],
  COMMAND_ABORTED: [SenseKey.ABORTED_COMMAND, 0x2f, 0x02],
  RESET: [SenseKey.UNIT_ATTENTION, 0x29, 0x00],
  I_T_NEXUS_LOSS: [SenseKey.ABORTED_COMMAND, 0x29, 0x07],
} as const satisfies Record<string, readonly [number, number, number]>;
export type QemuSenseName = keyof typeof QemuSense;

type QemuVerdict = { readonly status: number; readonly sense: QemuSenseName | null };

/** scsi_sense_from_errno() on Linux (ENODEV falls through to the EREMOTEIO case there). */
export function qemuStatusFromErrno(errno: number): QemuVerdict {
  switch (errno) {
    case 0:
      return { status: ScsiStatus.GOOD, sense: null };
    case LinuxErrno.EDOM:
      return { status: ScsiStatus.TASK_SET_FULL, sense: null };
    case LinuxErrno.ENODEV:
    case LinuxErrno.EREMOTEIO:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'TARGET_FAILURE' };
    case LinuxErrno.EBADE:
      return { status: ScsiStatus.RESERVATION_CONFLICT, sense: null };
    case LinuxErrno.ENODATA:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'READ_ERROR' };
    case LinuxErrno.ENOMEDIUM:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'NO_MEDIUM' };
    case LinuxErrno.ENOMEM:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'TARGET_FAILURE' };
    case LinuxErrno.EINVAL:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'INVALID_FIELD' };
    case LinuxErrno.ENOSPC:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'SPACE_ALLOC_FAILED' };
    default:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'IO_ERROR' };
  }
}

/** scsi_sense_from_host_status(): QEMU's SCSI_HOST_* values are Linux's DID_* codes. */
export function qemuStatusFromHostStatus(hostStatus: number): QemuVerdict {
  switch (hostStatus) {
    case HostStatus.DID_NO_CONNECT:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'LUN_NOT_RESPONDING' };
    case HostStatus.DID_BUS_BUSY:
      return { status: ScsiStatus.BUSY, sense: null };
    case HostStatus.DID_TIME_OUT:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'COMMAND_TIMEOUT' };
    case HostStatus.DID_BAD_TARGET:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'LUN_COMM_FAILURE' };
    case HostStatus.DID_ABORT:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'COMMAND_ABORTED' };
    case HostStatus.DID_RESET:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'RESET' };
    case HostStatus.DID_TRANSPORT_DISRUPTED:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'I_T_NEXUS_LOSS' };
    case HostStatus.DID_TARGET_FAILURE:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'TARGET_FAILURE' };
    case HostStatus.DID_NEXUS_FAILURE: // SCSI_HOST_RESERVATION_ERROR
      return { status: ScsiStatus.RESERVATION_CONFLICT, sense: null };
    case HostStatus.DID_ALLOC_FAILURE:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'SPACE_ALLOC_FAILED' };
    case HostStatus.DID_MEDIUM_ERROR:
      return { status: ScsiStatus.CHECK_CONDITION, sense: 'READ_ERROR' };
    default:
      // Includes DID_OK and codes QEMU does not list (DID_ERROR, DID_SOFT_ERROR,
      // DID_TRANSPORT_FAILFAST, ...): QEMU reports GOOD for those.
      return { status: ScsiStatus.GOOD, sense: null };
  }
}

/** The fields of a completed ioctl(SG_IO) that decide its meaning. */
export interface SgIoCompletion {
  /** errno when ioctl() returned -1, else 0. */
  readonly errno: number;
  /** sg_io_hdr.status: the target's SCSI status byte. */
  readonly status: number;
  readonly hostStatus: number;
  readonly driverStatus: number;
  /** The sense bytes the kernel wrote (sbp[0 .. sb_len_wr)). */
  readonly sense: Uint8Array;
  /** dxfer_len minus the bytes actually transferred. */
  readonly resid: number;
  /** The data-in buffer (dxfer_len bytes), or null for data-out / no data. */
  readonly data: Uint8Array | null;
}

export interface SgIoResult {
  readonly outcome: ScsiOutcome;
  /** What qemu-pr-helper would answer: the status and its 96-byte sense field. */
  readonly qemu: { readonly status: number; readonly sense: Uint8Array; readonly dataLength: number };
}

/**
 * QEMU's 96-byte sense field: zeroed, then what the kernel wrote (sb_len_wr bytes), then, when it
 * builds sense itself, scsi_build_sense() overwrites the first 18 bytes (fixed format).
 */
function qemuSenseField(name: QemuSenseName | null, kernelSense: Uint8Array): Uint8Array {
  const out = new Uint8Array(QEMU_SENSE_SIZE);
  out.set(kernelSense.subarray(0, QEMU_SENSE_SIZE));
  if (name !== null) {
    const [key, asc, ascq] = QemuSense[name];
    out.set(buildSense({ key, asc, ascq }, 'fixed'));
  }
  return out;
}

function transferred(c: SgIoCompletion): Uint8Array {
  if (c.data === null) return new Uint8Array(0);
  const n = Math.max(0, Math.min(c.data.length, c.data.length - c.resid));
  return c.data.subarray(0, n);
}

function errnoLabel(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

export function sgIoResult(c: SgIoCompletion): SgIoResult {
  const data = transferred(c);
  const failed = (kind: 'transport-failure', detail: string): ScsiOutcome => ({
    kind,
    hostStatus: c.hostStatus,
    driverStatus: c.driverStatus,
    errno: c.errno,
    detail,
  });

  if (c.errno !== 0) {
    const v = qemuStatusFromErrno(c.errno);
    const qemu = { status: v.status, sense: qemuSenseField(v.sense, new Uint8Array(0)), dataLength: 0 };
    if (c.errno === LinuxErrno.EBADE) return { outcome: { kind: 'reservation-conflict' }, qemu };
    if (c.errno === LinuxErrno.EDOM) return { outcome: { kind: 'task-set-full' }, qemu };
    return { outcome: failed('transport-failure', `SG_IO failed: ${errnoLabel(c.errno)}`), qemu };
  }

  if (c.hostStatus !== HostStatus.DID_OK) {
    const v = qemuStatusFromHostStatus(c.hostStatus);
    const good = v.status === ScsiStatus.GOOD;
    const qemu = { status: v.status, sense: qemuSenseField(v.sense, c.sense), dataLength: good ? data.length : 0 };
    if (c.hostStatus === HostStatus.DID_NEXUS_FAILURE) return { outcome: { kind: 'reservation-conflict' }, qemu };
    const name = HostStatusName[c.hostStatus] ?? `host status 0x${c.hostStatus.toString(16)}`;
    return { outcome: failed('transport-failure', `SG_IO transport error: ${name}`), qemu };
  }

  if ((c.driverStatus & SG_ERR_DRIVER_TIMEOUT) !== 0) {
    return {
      outcome: failed('transport-failure', `SG_IO driver status 0x${c.driverStatus.toString(16)} (timeout)`),
      qemu: { status: ScsiStatus.BUSY, sense: qemuSenseField(null, c.sense), dataLength: 0 },
    };
  }

  const qemu = { status: c.status, sense: qemuSenseField(null, c.sense), dataLength: c.status === ScsiStatus.GOOD ? data.length : 0 };
  switch (c.status) {
    case ScsiStatus.GOOD:
      return { outcome: { kind: 'good', data }, qemu };
    case ScsiStatus.CHECK_CONDITION:
      return { outcome: { kind: 'check-condition', sense: c.sense }, qemu };
    case ScsiStatus.RESERVATION_CONFLICT:
      return { outcome: { kind: 'reservation-conflict' }, qemu };
    case ScsiStatus.BUSY:
      return { outcome: { kind: 'busy' }, qemu };
    case ScsiStatus.TASK_SET_FULL:
      return { outcome: { kind: 'task-set-full' }, qemu };
    default:
      // CONDITION MET, ACA ACTIVE, TASK ABORTED...: no PR command should end this way, and
      // ScsiOutcome has no value for it; report it as a failure that names the status.
      return { outcome: failed('transport-failure', `unexpected SCSI status 0x${c.status.toString(16)}`), qemu };
  }
}
