// Value types of the SCSI persistent-reservation wire structures. Pure.
// Reservation keys are 64-bit and carried as bigint everywhere.

export type ReservationKey = bigint;

/** PERSISTENT RESERVE IN CDB (SPC-4 6.15.1, 10 bytes; QEMU sends it in a 16-byte buffer, rest zero). */
export interface PrInCdb {
  readonly opcode: 0x5e;
  /** Byte 1 bits 4-0, raw: the device server judges whether it is supported. */
  readonly serviceAction: number;
  /** Bytes 7-8. */
  readonly allocationLength: number;
  /** Byte 9. */
  readonly control: number;
}

/** PERSISTENT RESERVE OUT CDB (SPC-4 6.16.1, 10 bytes). */
export interface PrOutCdb {
  readonly opcode: 0x5f;
  /** Byte 1 bits 4-0, raw. */
  readonly serviceAction: number;
  /** Byte 2 bits 7-4, raw. */
  readonly scope: number;
  /** Byte 2 bits 3-0, raw. */
  readonly type: number;
  /** Bytes 5-8 (32-bit). */
  readonly parameterListLength: number;
  /** Byte 9. */
  readonly control: number;
}

export type PrCdb = PrInCdb | PrOutCdb;

/**
 * TransportID (SPC-4 7.6.4). FC and SAS are 24 bytes; iSCSI is variable (a multiple of 4, at least
 * 20). `raw` keeps a TransportID of any other protocol as it was received (only where its length is
 * known from an enclosing structure, as in READ FULL STATUS).
 */
export type TransportId =
  | { readonly protocol: 'fc'; readonly nPortName: bigint }
  | { readonly protocol: 'sas'; readonly sasAddress: bigint }
  | { readonly protocol: 'iscsi'; readonly format: 'device'; readonly name: string }
  | { readonly protocol: 'iscsi'; readonly format: 'port'; readonly name: string; readonly isid: string }
  | { readonly protocol: 'raw'; readonly protocolId: number; readonly formatCode: number; readonly bytes: Uint8Array };

/** PR OUT parameter list, basic form (SPC-4 6.16.3, table 180), every service action but REGISTER AND MOVE. */
export interface PrOutParams {
  readonly form: 'basic';
  readonly key: ReservationKey;
  readonly serviceActionKey: ReservationKey;
  readonly specIPt: boolean;
  readonly allTgPt: boolean;
  readonly aptpl: boolean;
  /** Present only with SPEC_I_PT: the TransportIDs after the 4-byte TRANSPORTID PARAMETER DATA LENGTH. */
  readonly transportIds: readonly TransportId[];
}

/** PR OUT parameter list for REGISTER AND MOVE (SPC-4 6.16.4, table 181). */
export interface RegisterAndMoveParams {
  readonly form: 'register-and-move';
  readonly key: ReservationKey;
  readonly serviceActionKey: ReservationKey;
  readonly unreg: boolean;
  readonly aptpl: boolean;
  readonly relativeTargetPortId: number;
  readonly transportId: TransportId;
}

/** READ KEYS data (SPC-4 6.15.2). */
export interface ReadKeysData {
  readonly generation: number;
  readonly keys: readonly ReservationKey[];
}

export interface ReservationInfo {
  readonly key: ReservationKey;
  readonly scope: number;
  readonly type: number;
}

/** READ RESERVATION data (SPC-4 6.15.3). */
export interface ReadReservationData {
  readonly generation: number;
  readonly reservation: ReservationInfo | null;
}

/** REPORT CAPABILITIES data (SPC-4 6.15.4, 8 bytes). */
export interface Capabilities {
  /** Compatible Reservation Handling. */
  readonly crh: boolean;
  /** Specify Initiator Ports Capable. */
  readonly sipC: boolean;
  /** All Target Ports Capable. */
  readonly atpC: boolean;
  /** Persist Through Power Loss Capable. */
  readonly ptplC: boolean;
  /** Type Mask Valid. */
  readonly tmv: boolean;
  /** ALLOW COMMANDS field, 0-7. */
  readonly allowCommands: number;
  /** Persist Through Power Loss Activated. */
  readonly ptplA: boolean;
  /** Reservation types the device server supports (meaningful when tmv). */
  readonly types: ReadonlySet<number>;
}

/** One READ FULL STATUS descriptor (SPC-4 6.15.5, table 173). */
export interface FullStatusDescriptor {
  readonly key: ReservationKey;
  readonly allTgPt: boolean;
  readonly reservationHolder: boolean;
  readonly scope: number;
  readonly type: number;
  readonly relativeTargetPortId: number;
  readonly transportId: TransportId;
}

export interface ReadFullStatusData {
  readonly generation: number;
  readonly descriptors: readonly FullStatusDescriptor[];
}

/**
 * What a decoder of PR IN data returns besides the values: SPC-4 lets the device server truncate the
 * data at the allocation length while ADDITIONAL LENGTH still describes the whole list.
 */
export interface Truncation {
  /** ADDITIONAL LENGTH as received. */
  readonly additionalLength: number;
  /** True when fewer bytes arrived than the header announced. */
  readonly truncated: boolean;
}

/** Sense data, fixed (0x70/0x71) or descriptor (0x72/0x73) format (SPC-4 4.5). */
export interface SenseData {
  readonly format: 'fixed' | 'descriptor';
  /** Current (0x70/0x72) versus deferred (0x71/0x73) error. */
  readonly current: boolean;
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
  /** Fixed format INFORMATION field when VALID is set; descriptor format information descriptor. */
  readonly information?: bigint;
  /** Sense-key specific bytes (3) when SKSV is set. */
  readonly senseKeySpecific?: Uint8Array;
}

/**
 * The result of one SCSI command, as a value. `good` carries the data-in bytes (empty for data-out
 * commands); `check-condition` the sense bytes exactly as the target sent them; `transport-failure`
 * says the command did not complete at the target (lost path, timeout): `hostStatus` is the Linux
 * DID_* code, `errno` set when the submission itself failed.
 */
export type ScsiOutcome =
  | { readonly kind: 'good'; readonly data: Uint8Array }
  | { readonly kind: 'check-condition'; readonly sense: Uint8Array }
  | { readonly kind: 'reservation-conflict' }
  | { readonly kind: 'busy' }
  | { readonly kind: 'task-set-full' }
  | {
      readonly kind: 'transport-failure';
      readonly hostStatus: number;
      readonly driverStatus: number;
      readonly errno: number;
      readonly detail: string;
    };
