// SCSI constants used by prmux, as `as const` tables with reverse maps for logs.
// Values from SPC-4 (spc4r37) clauses 4.5 (sense), 5.13 (persistent reservations),
// 6.15/6.16 (PERSISTENT RESERVE IN/OUT) and SAM-5 (status codes).

function reverse<T extends Record<string, number>>(table: T): Record<number, keyof T & string> {
  const out: Record<number, keyof T & string> = {};
  for (const [name, value] of Object.entries(table)) out[value] = name as keyof T & string;
  return out;
}

/** Operation codes prmux handles or that the access rule classifies. */
export const Opcode = {
  TEST_UNIT_READY: 0x00,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  RESERVE_6: 0x16,
  RELEASE_6: 0x17,
  MODE_SENSE_6: 0x1a,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  WRITE_VERIFY_10: 0x2e,
  VERIFY_10: 0x2f,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_BUFFER: 0x3b,
  READ_BUFFER: 0x3c,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  PERSISTENT_RESERVE_IN: 0x5e,
  PERSISTENT_RESERVE_OUT: 0x5f,
  READ_16: 0x88,
  COMPARE_AND_WRITE: 0x89,
  WRITE_16: 0x8a,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];
export const OpcodeName = reverse(Opcode);

/** PERSISTENT RESERVE IN service actions (SPC-4 6.15.1, table 166). */
export const PrInAction = {
  READ_KEYS: 0x00,
  READ_RESERVATION: 0x01,
  REPORT_CAPABILITIES: 0x02,
  READ_FULL_STATUS: 0x03,
} as const;
export type PrInAction = (typeof PrInAction)[keyof typeof PrInAction];
export const PrInActionName = reverse(PrInAction);

/** PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2, table 177; REPLACE LOST RESERVATION is SPC-5). */
export const PrOutAction = {
  REGISTER: 0x00,
  RESERVE: 0x01,
  RELEASE: 0x02,
  CLEAR: 0x03,
  PREEMPT: 0x04,
  PREEMPT_AND_ABORT: 0x05,
  REGISTER_AND_IGNORE_EXISTING_KEY: 0x06,
  REGISTER_AND_MOVE: 0x07,
  REPLACE_LOST_RESERVATION: 0x08,
} as const;
export type PrOutAction = (typeof PrOutAction)[keyof typeof PrOutAction];
export const PrOutActionName = reverse(PrOutAction);

/** Persistent reservation types (SPC-4 6.16.3, table 179). 0, 2, 4 and 9-F are reserved. */
export const PrType = {
  WRITE_EXCLUSIVE: 0x1,
  EXCLUSIVE_ACCESS: 0x3,
  WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 0x5,
  EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 0x6,
  WRITE_EXCLUSIVE_ALL_REGISTRANTS: 0x7,
  EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 0x8,
} as const;
export type PrType = (typeof PrType)[keyof typeof PrType];
export const PrTypeName = reverse(PrType);
export const PR_TYPES: readonly PrType[] = [0x1, 0x3, 0x5, 0x6, 0x7, 0x8];
export function isPrType(v: number): v is PrType {
  return (PR_TYPES as readonly number[]).includes(v);
}
/** Registrants Only and All Registrants types: access is tied to registration. */
export function isRegistrantsType(t: PrType): boolean {
  return t >= 0x5;
}
/** All Registrants types: every registrant is a reservation holder (SPC-4 5.13.9). */
export function isAllRegistrantsType(t: PrType): boolean {
  return t === 0x7 || t === 0x8;
}
/** Exclusive Access family: reads are also restricted. */
export function isExclusiveAccessType(t: PrType): boolean {
  return t === 0x3 || t === 0x6 || t === 0x8;
}

/** Only LU_SCOPE is defined (SPC-4 6.16.3.2). */
export const LU_SCOPE = 0x0;

/** SAM-5 status codes. */
export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  ACA_ACTIVE: 0x30,
  TASK_ABORTED: 0x40,
} as const;
export type ScsiStatus = (typeof ScsiStatus)[keyof typeof ScsiStatus];
export const ScsiStatusName = reverse(ScsiStatus);

/** Sense keys (SPC-4 4.5.6, table 48). */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  BLANK_CHECK: 0x8,
  VENDOR_SPECIFIC: 0x9,
  COPY_ABORTED: 0xa,
  ABORTED_COMMAND: 0xb,
  VOLUME_OVERFLOW: 0xd,
  MISCOMPARE: 0xe,
  COMPLETED: 0xf,
} as const;
export type SenseKey = (typeof SenseKey)[keyof typeof SenseKey];
export const SenseKeyName = reverse(SenseKey);

/** Additional sense code / qualifier pairs prmux produces or recognises. */
export interface AscAscq {
  readonly asc: number;
  readonly ascq: number;
}
export const Asc = {
  NO_ADDITIONAL_SENSE: { asc: 0x00, ascq: 0x00 },
  I_O_PROCESS_TERMINATED: { asc: 0x00, ascq: 0x06 },
  LOGICAL_UNIT_NOT_READY: { asc: 0x04, ascq: 0x00 },
  LOGICAL_UNIT_COMMUNICATION_FAILURE: { asc: 0x08, ascq: 0x00 },
  LOGICAL_UNIT_COMMUNICATION_TIMEOUT: { asc: 0x08, ascq: 0x01 },
  UNRECOVERED_READ_ERROR: { asc: 0x11, ascq: 0x00 },
  PARAMETER_LIST_LENGTH_ERROR: { asc: 0x1a, ascq: 0x00 },
  INVALID_COMMAND_OPERATION_CODE: { asc: 0x20, ascq: 0x00 },
  INVALID_FIELD_IN_CDB: { asc: 0x24, ascq: 0x00 },
  LOGICAL_UNIT_NOT_SUPPORTED: { asc: 0x25, ascq: 0x00 },
  INVALID_FIELD_IN_PARAMETER_LIST: { asc: 0x26, ascq: 0x00 },
  INVALID_RELEASE_OF_PERSISTENT_RESERVATION: { asc: 0x26, ascq: 0x04 },
  POWER_ON_RESET: { asc: 0x29, ascq: 0x00 },
  BUS_DEVICE_RESET: { asc: 0x29, ascq: 0x03 },
  I_T_NEXUS_LOSS: { asc: 0x29, ascq: 0x07 },
  RESERVATIONS_PREEMPTED: { asc: 0x2a, ascq: 0x03 },
  RESERVATIONS_RELEASED: { asc: 0x2a, ascq: 0x04 },
  REGISTRATIONS_PREEMPTED: { asc: 0x2a, ascq: 0x05 },
  COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: { asc: 0x2f, ascq: 0x00 },
  TARGET_FAILURE: { asc: 0x44, ascq: 0x00 },
  INSUFFICIENT_REGISTRATION_RESOURCES: { asc: 0x55, ascq: 0x04 },
  MEDIUM_NOT_PRESENT: { asc: 0x3a, ascq: 0x00 },
} as const satisfies Record<string, AscAscq>;
export type AscName = keyof typeof Asc;
const ascByCode = new Map<number, AscName>();
for (const [name, v] of Object.entries(Asc)) ascByCode.set((v.asc << 8) | v.ascq, name as AscName);
/** Name of an ASC/ASCQ pair for logs, or its hex form when prmux has no name for it. */
export function ascName(asc: number, ascq: number): string {
  return ascByCode.get((asc << 8) | ascq) ?? `ASC 0x${hex2(asc)}/ASCQ 0x${hex2(ascq)}`;
}
function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** SCSI host (transport) status codes as Linux reports them in sg_io_hdr.host_status. */
export const HostStatus = {
  DID_OK: 0x00,
  DID_NO_CONNECT: 0x01,
  DID_BUS_BUSY: 0x02,
  DID_TIME_OUT: 0x03,
  DID_BAD_TARGET: 0x04,
  DID_ABORT: 0x05,
  DID_PARITY: 0x06,
  DID_ERROR: 0x07,
  DID_RESET: 0x08,
  DID_BAD_INTR: 0x09,
  DID_PASSTHROUGH: 0x0a,
  DID_SOFT_ERROR: 0x0b,
  DID_IMM_RETRY: 0x0c,
  DID_REQUEUE: 0x0d,
  DID_TRANSPORT_DISRUPTED: 0x0e,
  DID_TRANSPORT_FAILFAST: 0x0f,
  DID_TARGET_FAILURE: 0x10,
  DID_NEXUS_FAILURE: 0x11,
  DID_ALLOC_FAILURE: 0x12,
  DID_MEDIUM_ERROR: 0x13,
  DID_TRANSPORT_MARGINAL: 0x14,
} as const;
export type HostStatus = (typeof HostStatus)[keyof typeof HostStatus];
export const HostStatusName = reverse(HostStatus);

/** TransportID protocol identifiers (SPC-4 7.6.1, table 444) for the forms prmux codes. */
export const ProtocolId = {
  FC: 0x0,
  ISCSI: 0x5,
  SAS: 0x6,
} as const;
export type ProtocolId = (typeof ProtocolId)[keyof typeof ProtocolId];

/** Largest transfer the pr-manager-helper protocol carries in either direction. */
export const PR_HELPER_MAX_TRANSFER = 8192;
