// PERSISTENT RESERVE OUT parameter lists (SPC-4 6.16.3 and 6.16.4). Pure.
//
// A device server answers a malformed parameter list with one of two sense codes, so the decoder's
// DecodeError says which: field "PARAMETER LIST LENGTH" when the list is not as long as its layout
// requires (ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR 1A/00), the offending field's own name
// otherwise (ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST 26/00). isParameterListLengthError()
// tells them apart.
//
// Which service actions may set SPEC_I_PT, ALL_TG_PT or APTPL, and which TransportIDs name known
// initiators, is the device server's judgement, not the decoder's.

import { DecodeError, EncodeError, describeValue } from '../errors.js';
import { PrOutAction } from './constants.js';
import type { PrOutParams, RegisterAndMoveParams, TransportId } from './types.js';
import { Malformed, isU64, isUint, readU16, readU32, readU64, writeU16, writeU32, writeU64 } from './bytes.js';
import { encodeTransportId, parseTransportId, type ParsedTransportId } from './transport-id.js';

const STRUCTURE = 'PR OUT parameter list';
const LENGTH_FIELD = 'PARAMETER LIST LENGTH';
const TPDL_FIELD = 'TRANSPORTID PARAMETER DATA LENGTH';

const BASIC_LENGTH = 24;
const SPEC_I_PT_HEADER_LENGTH = 28;
const REGISTER_AND_MOVE_HEADER_LENGTH = 24;
/** Shortest TransportID (FC, SAS, minimal iSCSI: SPC-4 7.6.4). */
const MIN_TRANSPORT_ID_LENGTH = 24;

const SPEC_I_PT = 0x08;
const ALL_TG_PT = 0x04;
const APTPL = 0x01;
const UNREG = 0x02;

/**
 * Whether a DecodeError from decodePrOutParams is a length error (answer PARAMETER LIST LENGTH
 * ERROR 1A/00) rather than a content error (answer INVALID FIELD IN PARAMETER LIST 26/00).
 */
export function isParameterListLengthError(e: unknown): boolean {
  return e instanceof DecodeError && e.structure === STRUCTURE && e.field === LENGTH_FIELD;
}

/**
 * Parse the TransportIDs filling bytes [start, end) exactly (parseListedTransportId: one of them). A TransportID running past `end`
 * means the TRANSPORTID PARAMETER DATA LENGTH is wrong; anything else wrong inside one is a
 * TRANSPORTID content error. Unknown protocols are rejected: without a length of their own the
 * next TransportID could not be found.
 */
function parseListedTransportId(bytes: Uint8Array, offset: number, end: number, tpdl: number): ParsedTransportId | Malformed {
  const r = parseTransportId(bytes, offset, end - offset, false);
  if (!(r instanceof Malformed)) return r;
  const inner = `${r.field} ${describeValue(r.value)} ${r.why}`;
  if (r.short) return new Malformed(TPDL_FIELD, tpdl, `ends inside the TransportID at byte ${offset} (${inner})`);
  return new Malformed('TRANSPORTID', bytes.subarray(offset, end), `at byte ${offset}: ${inner}`);
}

function parseTransportIds(bytes: Uint8Array, start: number, end: number, tpdl: number): TransportId[] | Malformed {
  const out: TransportId[] = [];
  let offset = start;
  while (offset < end) {
    const r = parseListedTransportId(bytes, offset, end, tpdl);
    if (r instanceof Malformed) return r;
    out.push(r.transportId);
    offset = r.next;
  }
  return out;
}

/*
 * Basic form (SPC-4 6.16.3, table 180), every service action but REGISTER AND MOVE:
 *   bytes 0-7    RESERVATION KEY
 *   bytes 8-15   SERVICE ACTION RESERVATION KEY
 *   bytes 16-19  obsolete
 *   byte 20      SPEC_I_PT 08h, ALL_TG_PT 04h, APTPL 01h (other bits reserved)
 *   byte 21      reserved
 *   bytes 22-23  obsolete
 *   SPEC_I_PT=1: bytes 24-27 TRANSPORTID PARAMETER DATA LENGTH (n), bytes 28..28+n-1 TransportIDs
 * Length: exactly 24 without SPEC_I_PT (SPC-4 6.16.3); exactly 28 + n with it. A list with
 * SPEC_I_PT set but only 24 bytes long has no TRANSPORTID PARAMETER DATA LENGTH: a length error.
 */
function parseBasic(bytes: Uint8Array): PrOutParams | Malformed {
  if (bytes.length < BASIC_LENGTH) {
    return new Malformed(LENGTH_FIELD, bytes.length, `is shorter than the ${BASIC_LENGTH} bytes of the basic parameter list`);
  }
  const flags = bytes[20]!;
  const specIPt = (flags & SPEC_I_PT) !== 0;
  const head = {
    form: 'basic' as const,
    key: readU64(bytes, 0),
    serviceActionKey: readU64(bytes, 8),
    specIPt,
    allTgPt: (flags & ALL_TG_PT) !== 0,
    aptpl: (flags & APTPL) !== 0,
  };
  if (!specIPt) {
    if (bytes.length !== BASIC_LENGTH) return new Malformed(LENGTH_FIELD, bytes.length, `is not ${BASIC_LENGTH} with SPEC_I_PT clear`);
    return { ...head, transportIds: [] };
  }
  if (bytes.length < SPEC_I_PT_HEADER_LENGTH) {
    return new Malformed(LENGTH_FIELD, bytes.length, `is shorter than ${SPEC_I_PT_HEADER_LENGTH}: SPEC_I_PT is set but there is no ${TPDL_FIELD}`);
  }
  const tpdl = readU32(bytes, 24);
  if (bytes.length !== SPEC_I_PT_HEADER_LENGTH + tpdl) {
    return new Malformed(LENGTH_FIELD, bytes.length, `is not ${SPEC_I_PT_HEADER_LENGTH} + ${TPDL_FIELD} ${tpdl}`);
  }
  const transportIds = parseTransportIds(bytes, SPEC_I_PT_HEADER_LENGTH, bytes.length, tpdl);
  if (transportIds instanceof Malformed) return transportIds;
  return { ...head, transportIds };
}

/*
 * REGISTER AND MOVE (SPC-4 6.16.4, table 181):
 *   bytes 0-7    RESERVATION KEY
 *   bytes 8-15   SERVICE ACTION RESERVATION KEY
 *   byte 16      reserved
 *   byte 17      UNREG 02h, APTPL 01h (other bits reserved)
 *   bytes 18-19  RELATIVE TARGET PORT IDENTIFIER
 *   bytes 20-23  TRANSPORTID PARAMETER DATA LENGTH (n)
 *   bytes 24..   one TransportID, exactly n bytes
 * Length: exactly 24 + n.
 */
function parseRegisterAndMove(bytes: Uint8Array): RegisterAndMoveParams | Malformed {
  if (bytes.length < REGISTER_AND_MOVE_HEADER_LENGTH) {
    return new Malformed(LENGTH_FIELD, bytes.length, `is shorter than the ${REGISTER_AND_MOVE_HEADER_LENGTH}-byte REGISTER AND MOVE header`);
  }
  const tpdl = readU32(bytes, 20);
  if (bytes.length !== REGISTER_AND_MOVE_HEADER_LENGTH + tpdl) {
    return new Malformed(LENGTH_FIELD, bytes.length, `is not ${REGISTER_AND_MOVE_HEADER_LENGTH} + ${TPDL_FIELD} ${tpdl}`);
  }
  if (tpdl < MIN_TRANSPORT_ID_LENGTH) {
    return new Malformed(TPDL_FIELD, tpdl, `is shorter than the ${MIN_TRANSPORT_ID_LENGTH} bytes of the shortest TransportID`);
  }
  const parsed = parseListedTransportId(bytes, REGISTER_AND_MOVE_HEADER_LENGTH, bytes.length, tpdl);
  if (parsed instanceof Malformed) return parsed;
  if (parsed.next !== bytes.length) {
    return new Malformed(TPDL_FIELD, tpdl, `is not the length of the TransportID it holds (${parsed.next - REGISTER_AND_MOVE_HEADER_LENGTH} bytes)`);
  }
  const transportId = parsed.transportId;
  const flags = bytes[17]!;
  return {
    form: 'register-and-move',
    key: readU64(bytes, 0),
    serviceActionKey: readU64(bytes, 8),
    unreg: (flags & UNREG) !== 0,
    aptpl: (flags & APTPL) !== 0,
    relativeTargetPortId: readU16(bytes, 18),
    transportId,
  };
}

/**
 * Decode a PR OUT parameter list for `serviceAction` (the CDB's): REGISTER AND MOVE (07h) has its
 * own layout, every other service action the basic one.
 */
export function decodePrOutParams(bytes: Uint8Array, serviceAction: number): PrOutParams | RegisterAndMoveParams {
  const r = serviceAction === PrOutAction.REGISTER_AND_MOVE ? parseRegisterAndMove(bytes) : parseBasic(bytes);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r;
}

function checkKey(field: string, value: unknown): void {
  if (!isU64(value)) throw new EncodeError(STRUCTURE, field, value, 'is not a 64-bit unsigned bigint');
}

function checkFlag(field: string, value: unknown): void {
  if (typeof value !== 'boolean') throw new EncodeError(STRUCTURE, field, value, 'is not a boolean');
}

/** TransportIDs in a PR OUT list must be of a protocol prmux can code (see parseTransportIds). */
function encodeListedTransportId(tid: TransportId): Uint8Array {
  if (tid.protocol === 'raw') {
    throw new EncodeError(STRUCTURE, 'TRANSPORTID', tid.bytes, 'is of an unknown protocol, which a PR OUT parameter list cannot carry');
  }
  return encodeTransportId(tid);
}

export type PrOutParamsInput = Omit<PrOutParams, 'form'> & { readonly form?: 'basic' };

/** Encode the basic parameter list: 24 bytes, or 28 + TransportIDs with SPEC_I_PT. */
export function encodePrOutParams(p: PrOutParamsInput): Uint8Array {
  if (p.form !== undefined && p.form !== 'basic') throw new EncodeError(STRUCTURE, 'form', p.form, 'is not "basic"');
  checkKey('RESERVATION KEY', p.key);
  checkKey('SERVICE ACTION RESERVATION KEY', p.serviceActionKey);
  checkFlag('SPEC_I_PT', p.specIPt);
  checkFlag('ALL_TG_PT', p.allTgPt);
  checkFlag('APTPL', p.aptpl);
  if (!Array.isArray(p.transportIds)) throw new EncodeError(STRUCTURE, 'TRANSPORTIDS', p.transportIds, 'is not an array');
  if (!p.specIPt && p.transportIds.length > 0) {
    throw new EncodeError(STRUCTURE, 'TRANSPORTIDS', p.transportIds.length, 'are carried only with SPEC_I_PT set');
  }
  const encoded = p.transportIds.map(encodeListedTransportId);
  const tpdl = encoded.reduce((n, t) => n + t.length, 0);
  if (!isUint(tpdl, 0xffff_ffff)) throw new EncodeError(STRUCTURE, TPDL_FIELD, tpdl, 'does not fit in 32 bits');
  const out = new Uint8Array(p.specIPt ? SPEC_I_PT_HEADER_LENGTH + tpdl : BASIC_LENGTH);
  writeU64(out, 0, p.key);
  writeU64(out, 8, p.serviceActionKey);
  out[20] = (p.specIPt ? SPEC_I_PT : 0) | (p.allTgPt ? ALL_TG_PT : 0) | (p.aptpl ? APTPL : 0);
  if (p.specIPt) {
    writeU32(out, 24, tpdl);
    let offset = SPEC_I_PT_HEADER_LENGTH;
    for (const t of encoded) {
      out.set(t, offset);
      offset += t.length;
    }
  }
  return out;
}

export type RegisterAndMoveParamsInput = Omit<RegisterAndMoveParams, 'form'> & { readonly form?: 'register-and-move' };

/** Encode a REGISTER AND MOVE parameter list: 24 bytes + the TransportID. */
export function encodeRegisterAndMoveParams(p: RegisterAndMoveParamsInput): Uint8Array {
  if (p.form !== undefined && p.form !== 'register-and-move') throw new EncodeError(STRUCTURE, 'form', p.form, 'is not "register-and-move"');
  checkKey('RESERVATION KEY', p.key);
  checkKey('SERVICE ACTION RESERVATION KEY', p.serviceActionKey);
  checkFlag('UNREG', p.unreg);
  checkFlag('APTPL', p.aptpl);
  if (!isUint(p.relativeTargetPortId, 0xffff)) {
    throw new EncodeError(STRUCTURE, 'RELATIVE TARGET PORT IDENTIFIER', p.relativeTargetPortId, 'is not an integer in 0..65535');
  }
  const tid = encodeListedTransportId(p.transportId);
  const out = new Uint8Array(REGISTER_AND_MOVE_HEADER_LENGTH + tid.length);
  writeU64(out, 0, p.key);
  writeU64(out, 8, p.serviceActionKey);
  out[17] = (p.unreg ? UNREG : 0) | (p.aptpl ? APTPL : 0);
  writeU16(out, 18, p.relativeTargetPortId);
  writeU32(out, 20, tid.length);
  out.set(tid, REGISTER_AND_MOVE_HEADER_LENGTH);
  return out;
}
