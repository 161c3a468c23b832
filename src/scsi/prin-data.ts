// PERSISTENT RESERVE IN parameter data (SPC-4 6.15.2 - 6.15.5). Pure.
//
// Truncation (SPC-4 4.2.5.6): the device server returns min(allocation length, data length) bytes,
// and ADDITIONAL LENGTH keeps describing the whole list. So the decoders accept fewer bytes than
// ADDITIONAL LENGTH announces and return the complete entries that arrived, with `truncated` set;
// only a missing 8-byte header, or content that contradicts itself, is a DecodeError. Bytes past the
// announced list are ignored: some HBA drivers report no residual count, so the buffer can arrive
// at its full allocation length.

import { DecodeError, EncodeError, describeValue } from '../errors.js';
import { PrInAction, PrType } from './constants.js';
import type {
  Capabilities,
  FullStatusDescriptor,
  ReadFullStatusData,
  ReadKeysData,
  ReadReservationData,
  ReservationInfo,
  Truncation,
} from './types.js';
import { Malformed, isU64, isUint, readU16, readU32, readU64, writeU16, writeU32, writeU64 } from './bytes.js';
import { encodeTransportId, parseTransportId } from './transport-id.js';

const HEADER_LENGTH = 8;
const KEY_LENGTH = 8;
const RESERVATION_DESCRIPTOR_LENGTH = 16;
const CAPABILITIES_LENGTH = 8;
const FULL_STATUS_DESCRIPTOR_HEADER = 24;

const READ_KEYS = 'READ KEYS data';
const READ_RESERVATION = 'READ RESERVATION data';
const REPORT_CAPABILITIES = 'REPORT CAPABILITIES data';
const READ_FULL_STATUS = 'READ FULL STATUS data';

interface Header {
  readonly generation: number;
  readonly additionalLength: number;
  /** Offset just past the bytes that both arrived and belong to the announced list. */
  readonly end: number;
  readonly truncated: boolean;
}

/*
 * Header shared by READ KEYS, READ RESERVATION and READ FULL STATUS (SPC-4 6.15.2, 6.15.3, 6.15.5):
 *   bytes 0-3  PRGENERATION
 *   bytes 4-7  ADDITIONAL LENGTH (bytes after the header, for the whole list)
 */
function parseHeader(bytes: Uint8Array): Header | Malformed {
  if (bytes.length < HEADER_LENGTH) return new Malformed('data length', bytes.length, `is shorter than the ${HEADER_LENGTH}-byte header`);
  const additionalLength = readU32(bytes, 4);
  const announcedEnd = HEADER_LENGTH + additionalLength;
  return {
    generation: readU32(bytes, 0),
    additionalLength,
    end: Math.min(bytes.length, announcedEnd),
    truncated: bytes.length < announcedEnd,
  };
}

function checkGeneration(structure: string, generation: unknown): void {
  if (!isUint(generation, 0xffff_ffff)) throw new EncodeError(structure, 'PRGENERATION', generation, 'is not an integer in 0..2^32-1');
}

function checkKey(structure: string, field: string, key: unknown): void {
  if (!isU64(key)) throw new EncodeError(structure, field, key, 'is not a 64-bit unsigned bigint');
}

function checkScopeType(structure: string, scope: unknown, type: unknown): void {
  if (!isUint(scope, 0xf)) throw new EncodeError(structure, 'SCOPE', scope, 'is not an integer in 0..15');
  if (!isUint(type, 0xf)) throw new EncodeError(structure, 'TYPE', type, 'is not an integer in 0..15');
}

function writeHeader(out: Uint8Array, generation: number): void {
  writeU32(out, 0, generation);
  writeU32(out, 4, out.length - HEADER_LENGTH);
}

// ---------------------------------------------------------------------------------------------
/*
 * READ KEYS (SPC-4 6.15.2):
 *   bytes 0-3  PRGENERATION
 *   bytes 4-7  ADDITIONAL LENGTH (8 x number of keys)
 *   bytes 8..  RESERVATION KEY, 8 bytes each, one per registered I_T nexus
 */
function parseReadKeys(bytes: Uint8Array): (ReadKeysData & Truncation) | Malformed {
  const h = parseHeader(bytes);
  if (h instanceof Malformed) return h;
  if (h.additionalLength % KEY_LENGTH !== 0) {
    return new Malformed('ADDITIONAL LENGTH', h.additionalLength, 'is not a multiple of 8, the length of a reservation key');
  }
  const keys: bigint[] = [];
  for (let o = HEADER_LENGTH; o + KEY_LENGTH <= h.end; o += KEY_LENGTH) keys.push(readU64(bytes, o));
  return { generation: h.generation, keys, additionalLength: h.additionalLength, truncated: h.truncated };
}

export function decodeReadKeys(bytes: Uint8Array): ReadKeysData & Truncation {
  const r = parseReadKeys(bytes);
  if (r instanceof Malformed) throw new DecodeError(READ_KEYS, r.field, r.value, r.why);
  return r;
}

/** Encode the whole READ KEYS data (truncate with truncateToAllocationLength). */
export function encodeReadKeys(data: ReadKeysData): Uint8Array {
  checkGeneration(READ_KEYS, data.generation);
  data.keys.forEach((k, i) => checkKey(READ_KEYS, `RESERVATION KEY ${i}`, k));
  const additionalLength = data.keys.length * KEY_LENGTH;
  if (additionalLength > 0xffff_ffff) throw new EncodeError(READ_KEYS, 'ADDITIONAL LENGTH', additionalLength, 'does not fit in 32 bits');
  const out = new Uint8Array(HEADER_LENGTH + additionalLength);
  writeHeader(out, data.generation);
  data.keys.forEach((k, i) => writeU64(out, HEADER_LENGTH + i * KEY_LENGTH, k));
  return out;
}

// ---------------------------------------------------------------------------------------------
/*
 * READ RESERVATION (SPC-4 6.15.3):
 *   bytes 0-3    PRGENERATION
 *   bytes 4-7    ADDITIONAL LENGTH: 0 (no reservation) or 16
 *   with a reservation:
 *   bytes 8-15   RESERVATION KEY (0 for the All Registrants types, SPC-4 5.13.9)
 *   bytes 16-19  obsolete
 *   byte 20      reserved
 *   byte 21      bits 7-4 SCOPE, bits 3-0 TYPE
 *   bytes 22-23  obsolete
 * A truncated reservation descriptor yields reservation null with truncated set: callers must look
 * at `truncated` before reading "no reservation" into it.
 */
function parseReadReservation(bytes: Uint8Array): (ReadReservationData & Truncation) | Malformed {
  const h = parseHeader(bytes);
  if (h instanceof Malformed) return h;
  if (h.additionalLength !== 0 && h.additionalLength !== RESERVATION_DESCRIPTOR_LENGTH) {
    return new Malformed('ADDITIONAL LENGTH', h.additionalLength, 'is not 0 (no reservation) or 16 (one reservation)');
  }
  let reservation: ReservationInfo | null = null;
  if (h.additionalLength === RESERVATION_DESCRIPTOR_LENGTH && !h.truncated) {
    const scopeType = bytes[21]!;
    reservation = { key: readU64(bytes, 8), scope: scopeType >> 4, type: scopeType & 0x0f };
  }
  return { generation: h.generation, reservation, additionalLength: h.additionalLength, truncated: h.truncated };
}

export function decodeReadReservation(bytes: Uint8Array): ReadReservationData & Truncation {
  const r = parseReadReservation(bytes);
  if (r instanceof Malformed) throw new DecodeError(READ_RESERVATION, r.field, r.value, r.why);
  return r;
}

export function encodeReadReservation(data: ReadReservationData): Uint8Array {
  checkGeneration(READ_RESERVATION, data.generation);
  const res = data.reservation;
  if (res === null) {
    const out = new Uint8Array(HEADER_LENGTH);
    writeHeader(out, data.generation);
    return out;
  }
  checkKey(READ_RESERVATION, 'RESERVATION KEY', res.key);
  checkScopeType(READ_RESERVATION, res.scope, res.type);
  const out = new Uint8Array(HEADER_LENGTH + RESERVATION_DESCRIPTOR_LENGTH);
  writeHeader(out, data.generation);
  writeU64(out, 8, res.key);
  out[21] = (res.scope << 4) | res.type;
  return out;
}

// ---------------------------------------------------------------------------------------------
/*
 * REPORT CAPABILITIES (SPC-4 6.15.4), 8 bytes:
 *   bytes 0-1  LENGTH (0008h)
 *   byte 2     CRH 10h, SIP_C 08h, ATP_C 04h, PTPL_C 01h (other bits reserved)
 *   byte 3     TMV 80h, ALLOW COMMANDS bits 6-4, PTPL_A 01h
 *   bytes 4-5  PERSISTENT RESERVATION TYPE MASK:
 *              byte 4 WR_EX_AR 80h, EX_AC_RO 40h, WR_EX_RO 20h, EX_AC 08h, WR_EX 02h; byte 5 EX_AC_AR 01h
 *   bytes 6-7  reserved
 */
const CRH = 0x10;
const SIP_C = 0x08;
const ATP_C = 0x04;
const PTPL_C = 0x01;
const TMV = 0x80;
const PTPL_A = 0x01;
/** [type, byte, bit] of each type in the PERSISTENT RESERVATION TYPE MASK. */
const TYPE_MASK: ReadonlyArray<readonly [PrType, 4 | 5, number]> = [
  [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, 4, 0x80],
  [PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, 4, 0x40],
  [PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 4, 0x20],
  [PrType.EXCLUSIVE_ACCESS, 4, 0x08],
  [PrType.WRITE_EXCLUSIVE, 4, 0x02],
  [PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, 5, 0x01],
];

function parseCapabilities(bytes: Uint8Array): Capabilities | Malformed {
  if (bytes.length < CAPABILITIES_LENGTH) {
    return new Malformed('data length', bytes.length, `is shorter than the ${CAPABILITIES_LENGTH} bytes of REPORT CAPABILITIES data`);
  }
  const length = readU16(bytes, 0);
  if (length !== CAPABILITIES_LENGTH) return new Malformed('LENGTH', length, `is not ${CAPABILITIES_LENGTH}`);
  const b2 = bytes[2]!;
  const b3 = bytes[3]!;
  const types = new Set<number>();
  for (const [type, byte, bit] of TYPE_MASK) if ((bytes[byte]! & bit) !== 0) types.add(type);
  return {
    crh: (b2 & CRH) !== 0,
    sipC: (b2 & SIP_C) !== 0,
    atpC: (b2 & ATP_C) !== 0,
    ptplC: (b2 & PTPL_C) !== 0,
    tmv: (b3 & TMV) !== 0,
    allowCommands: (b3 >> 4) & 0x07,
    ptplA: (b3 & PTPL_A) !== 0,
    types,
  };
}

export function decodeCapabilities(bytes: Uint8Array): Capabilities {
  const r = parseCapabilities(bytes);
  if (r instanceof Malformed) throw new DecodeError(REPORT_CAPABILITIES, r.field, r.value, r.why);
  return r;
}

export function encodeCapabilities(c: Capabilities): Uint8Array {
  if (!isUint(c.allowCommands, 7)) throw new EncodeError(REPORT_CAPABILITIES, 'ALLOW COMMANDS', c.allowCommands, 'is not an integer in 0..7');
  const out = new Uint8Array(CAPABILITIES_LENGTH);
  writeU16(out, 0, CAPABILITIES_LENGTH);
  out[2] = (c.crh ? CRH : 0) | (c.sipC ? SIP_C : 0) | (c.atpC ? ATP_C : 0) | (c.ptplC ? PTPL_C : 0);
  out[3] = (c.tmv ? TMV : 0) | (c.allowCommands << 4) | (c.ptplA ? PTPL_A : 0);
  for (const t of c.types) {
    const entry = TYPE_MASK.find(([type]) => type === t);
    if (entry === undefined) throw new EncodeError(REPORT_CAPABILITIES, 'PERSISTENT RESERVATION TYPE MASK', t, 'is not a persistent reservation type');
    out[entry[1]] = out[entry[1]]! | entry[2];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
/*
 * READ FULL STATUS (SPC-4 6.15.5): the 8-byte header, then one descriptor per registration:
 *   bytes 0-7    RESERVATION KEY
 *   bytes 8-11   reserved
 *   byte 12      ALL_TG_PT 02h, R_HOLDER 01h (other bits reserved)
 *   byte 13      bits 7-4 SCOPE, bits 3-0 TYPE (meaningful when R_HOLDER)
 *   bytes 14-17  reserved
 *   bytes 18-19  RELATIVE TARGET PORT IDENTIFIER (0 with ALL_TG_PT)
 *   bytes 20-23  ADDITIONAL DESCRIPTOR LENGTH (n, the TransportID's length)
 *   bytes 24..   TransportID, exactly n bytes
 */
const ALL_TG_PT = 0x02;
const R_HOLDER = 0x01;

function parseReadFullStatus(bytes: Uint8Array): (ReadFullStatusData & Truncation) | Malformed {
  const h = parseHeader(bytes);
  if (h instanceof Malformed) return h;
  const listEnd = HEADER_LENGTH + h.additionalLength;
  const descriptors: FullStatusDescriptor[] = [];
  let o = HEADER_LENGTH;
  while (o < listEnd) {
    if (o + FULL_STATUS_DESCRIPTOR_HEADER > listEnd) {
      return new Malformed('ADDITIONAL LENGTH', h.additionalLength, `ends inside the descriptor at byte ${o}`);
    }
    if (o + FULL_STATUS_DESCRIPTOR_HEADER > bytes.length) break; // truncated by the allocation length
    const descriptorLength = readU32(bytes, o + 20);
    const tidStart = o + FULL_STATUS_DESCRIPTOR_HEADER;
    if (tidStart + descriptorLength > listEnd) {
      return new Malformed('ADDITIONAL DESCRIPTOR LENGTH', descriptorLength, `of the descriptor at byte ${o} runs past ADDITIONAL LENGTH ${h.additionalLength}`);
    }
    if (tidStart + descriptorLength > bytes.length) break; // truncated by the allocation length
    const tid = parseTransportId(bytes, tidStart, descriptorLength, true);
    if (tid instanceof Malformed) {
      const inner = `${tid.field} ${describeValue(tid.value)} ${tid.why}`;
      return tid.short
        ? new Malformed('ADDITIONAL DESCRIPTOR LENGTH', descriptorLength, `of the descriptor at byte ${o} ends inside its TransportID (${inner})`)
        : new Malformed('TRANSPORTID', bytes.subarray(tidStart, tidStart + descriptorLength), `of the descriptor at byte ${o}: ${inner}`);
    }
    if (tid.next !== tidStart + descriptorLength) {
      return new Malformed('ADDITIONAL DESCRIPTOR LENGTH', descriptorLength, `of the descriptor at byte ${o} is not the length of its TransportID (${tid.next - tidStart})`);
    }
    const flags = bytes[o + 12]!;
    const scopeType = bytes[o + 13]!;
    descriptors.push({
      key: readU64(bytes, o),
      allTgPt: (flags & ALL_TG_PT) !== 0,
      reservationHolder: (flags & R_HOLDER) !== 0,
      scope: scopeType >> 4,
      type: scopeType & 0x0f,
      relativeTargetPortId: readU16(bytes, o + 18),
      transportId: tid.transportId,
    });
    o = tid.next;
  }
  return { generation: h.generation, descriptors, additionalLength: h.additionalLength, truncated: h.truncated };
}

export function decodeReadFullStatus(bytes: Uint8Array): ReadFullStatusData & Truncation {
  const r = parseReadFullStatus(bytes);
  if (r instanceof Malformed) throw new DecodeError(READ_FULL_STATUS, r.field, r.value, r.why);
  return r;
}

export function encodeReadFullStatus(data: ReadFullStatusData): Uint8Array {
  checkGeneration(READ_FULL_STATUS, data.generation);
  const parts = data.descriptors.map((d, i) => {
    checkKey(READ_FULL_STATUS, `RESERVATION KEY of descriptor ${i}`, d.key);
    checkScopeType(READ_FULL_STATUS, d.scope, d.type);
    if (!isUint(d.relativeTargetPortId, 0xffff)) {
      throw new EncodeError(READ_FULL_STATUS, 'RELATIVE TARGET PORT IDENTIFIER', d.relativeTargetPortId, 'is not an integer in 0..65535');
    }
    const tid = encodeTransportId(d.transportId);
    const part = new Uint8Array(FULL_STATUS_DESCRIPTOR_HEADER + tid.length);
    writeU64(part, 0, d.key);
    part[12] = (d.allTgPt ? ALL_TG_PT : 0) | (d.reservationHolder ? R_HOLDER : 0);
    part[13] = (d.scope << 4) | d.type;
    writeU16(part, 18, d.relativeTargetPortId);
    writeU32(part, 20, tid.length);
    part.set(tid, FULL_STATUS_DESCRIPTOR_HEADER);
    return part;
  });
  const additionalLength = parts.reduce((n, p) => n + p.length, 0);
  if (additionalLength > 0xffff_ffff) throw new EncodeError(READ_FULL_STATUS, 'ADDITIONAL LENGTH', additionalLength, 'does not fit in 32 bits');
  const out = new Uint8Array(HEADER_LENGTH + additionalLength);
  writeHeader(out, data.generation);
  let o = HEADER_LENGTH;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/**
 * The data-in a device server returns for an allocation length (SPC-4 4.2.5.6): the first
 * min(length, allocationLength) bytes, unchanged, so ADDITIONAL LENGTH still describes the whole
 * list. Returns a view of `data`, not a copy.
 */
export function truncateToAllocationLength(data: Uint8Array, allocationLength: number): Uint8Array {
  if (!isUint(allocationLength, Number.MAX_SAFE_INTEGER)) {
    throw new EncodeError('PR IN data', 'ALLOCATION LENGTH', allocationLength, 'is not a non-negative integer');
  }
  return data.subarray(0, Math.min(data.length, allocationLength));
}

export type PrInData =
  | ({ readonly action: 'read-keys' } & ReadKeysData & Truncation)
  | ({ readonly action: 'read-reservation' } & ReadReservationData & Truncation)
  | ({ readonly action: 'report-capabilities' } & Capabilities)
  | ({ readonly action: 'read-full-status' } & ReadFullStatusData & Truncation);

function parsePrInData(serviceAction: number, bytes: Uint8Array): PrInData | Malformed {
  const tag = <A extends PrInData['action'], T extends object>(action: A, r: T | Malformed): ({ readonly action: A } & T) | Malformed =>
    r instanceof Malformed ? r : { action, ...r };
  switch (serviceAction) {
    case PrInAction.READ_KEYS:
      return tag('read-keys', parseReadKeys(bytes));
    case PrInAction.READ_RESERVATION:
      return tag('read-reservation', parseReadReservation(bytes));
    case PrInAction.REPORT_CAPABILITIES:
      return tag('report-capabilities', parseCapabilities(bytes));
    case PrInAction.READ_FULL_STATUS:
      return tag('read-full-status', parseReadFullStatus(bytes));
    default:
      return new Malformed('SERVICE ACTION', serviceAction, 'is not a PERSISTENT RESERVE IN service action with parameter data (0-3)');
  }
}

const PR_IN_STRUCTURE: Readonly<Record<number, string>> = {
  [PrInAction.READ_KEYS]: READ_KEYS,
  [PrInAction.READ_RESERVATION]: READ_RESERVATION,
  [PrInAction.REPORT_CAPABILITIES]: REPORT_CAPABILITIES,
  [PrInAction.READ_FULL_STATUS]: READ_FULL_STATUS,
};

/** Decode the data-in of a PERSISTENT RESERVE IN command by its service action. */
export function decodePrInData(serviceAction: number, bytes: Uint8Array): PrInData {
  const r = parsePrInData(serviceAction, bytes);
  if (r instanceof Malformed) throw new DecodeError(PR_IN_STRUCTURE[serviceAction] ?? 'PR IN data', r.field, r.value, r.why);
  return r;
}
