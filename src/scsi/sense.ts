// Sense data (SPC-4 4.5): building the sense prmux answers with, and reading the sense a target
// sent. Pure.
//
// prmux passes a target's sense through untouched; parsing is for decisions (retry, consistency
// guard) and logs, so the parser tolerates what real targets and the SG_IO layer do: a sense
// buffer cut short by the host's buffer size, the 96 bytes the pr-helper protocol always carries
// with zeros after the sense proper, descriptors it does not know.

import { DecodeError, EncodeError } from '../errors.js';
import { SenseKeyName, ascName } from './constants.js';
import type { SenseData } from './types.js';
import { Malformed, bytesEqual, hex, isU64, isUint, readU32, readU64, writeU32, writeU64 } from './bytes.js';

const STRUCTURE = 'sense data';

const FIXED_CURRENT = 0x70;
const FIXED_DEFERRED = 0x71;
const DESCRIPTOR_CURRENT = 0x72;
const DESCRIPTOR_DEFERRED = 0x73;
/** Fixed format byte 0 bit 7: the INFORMATION field is valid. */
const VALID = 0x80;
/** Byte 0 of the sense-key specific bytes, bit 7: SKSV. */
const SKSV = 0x80;

const FIXED_LENGTH = 18;
const FIXED_ADDITIONAL_LENGTH = 10;
const DESCRIPTOR_HEADER_LENGTH = 8;
/** Information sense data descriptor (SPC-4 4.5.2.2). */
const INFORMATION_DESCRIPTOR = 0x00;
const INFORMATION_DESCRIPTOR_ADDITIONAL_LENGTH = 0x0a;
/** Sense key specific sense data descriptor (SPC-4 4.5.2.3). */
const SENSE_KEY_SPECIFIC_DESCRIPTOR = 0x02;
const SENSE_KEY_SPECIFIC_DESCRIPTOR_ADDITIONAL_LENGTH = 0x06;

export interface SenseInput {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
  /** INFORMATION: 32 bits in fixed format, 64 in descriptor format. */
  readonly information?: bigint;
  /** The 3 sense-key specific bytes, SKSV (bit 7 of the first) set. */
  readonly senseKeySpecific?: Uint8Array;
}

/*
 * Fixed format (SPC-4 4.5.3), 18 bytes as built here:
 *   byte 0      VALID 80h | RESPONSE CODE 70h (current) / 71h (deferred)
 *   byte 1      obsolete
 *   byte 2      FILEMARK, EOM, ILI, reserved, SENSE KEY (bits 3-0)
 *   bytes 3-6   INFORMATION
 *   byte 7      ADDITIONAL SENSE LENGTH (n - 7)
 *   bytes 8-11  COMMAND-SPECIFIC INFORMATION
 *   byte 12     ADDITIONAL SENSE CODE
 *   byte 13     ADDITIONAL SENSE CODE QUALIFIER
 *   byte 14     FIELD REPLACEABLE UNIT CODE
 *   bytes 15-17 SKSV | SENSE KEY SPECIFIC
 * Descriptor format (SPC-4 4.5.2):
 *   byte 0      RESPONSE CODE 72h (current) / 73h (deferred)
 *   byte 1      SENSE KEY (bits 3-0)
 *   byte 2      ADDITIONAL SENSE CODE
 *   byte 3      ADDITIONAL SENSE CODE QUALIFIER
 *   bytes 4-6   reserved
 *   byte 7      ADDITIONAL SENSE LENGTH (n - 7)
 *   bytes 8..   sense data descriptors: type, additional length, then the descriptor's bytes
 *     information (00h, 0Ah): byte 2 VALID 80h, byte 3 reserved, bytes 4-11 INFORMATION
 *     sense key specific (02h, 06h): bytes 2-3 reserved, bytes 4-6 SKSV | SENSE KEY SPECIFIC, byte 7 reserved
 */

/** Build current (not deferred) sense data. */
export function buildSense(s: SenseInput, format: 'fixed' | 'descriptor' = 'fixed'): Uint8Array {
  if (!isUint(s.key, 0xf)) throw new EncodeError(STRUCTURE, 'SENSE KEY', s.key, 'is not an integer in 0..15');
  if (!isUint(s.asc, 0xff)) throw new EncodeError(STRUCTURE, 'ADDITIONAL SENSE CODE', s.asc, 'is not an integer in 0..255');
  if (!isUint(s.ascq, 0xff)) throw new EncodeError(STRUCTURE, 'ADDITIONAL SENSE CODE QUALIFIER', s.ascq, 'is not an integer in 0..255');
  const sks = s.senseKeySpecific;
  if (sks !== undefined && (!(sks instanceof Uint8Array) || sks.length !== 3 || (sks[0]! & SKSV) === 0)) {
    throw new EncodeError(STRUCTURE, 'SENSE KEY SPECIFIC', sks, 'is not 3 bytes with SKSV (bit 7 of the first) set');
  }
  const info = s.information;
  if (format === 'fixed') {
    if (info !== undefined && !(typeof info === 'bigint' && info >= 0n && info <= 0xffff_ffffn)) {
      throw new EncodeError(STRUCTURE, 'INFORMATION', info, 'does not fit the 32-bit fixed-format field');
    }
    const out = new Uint8Array(FIXED_LENGTH);
    out[0] = FIXED_CURRENT | (info !== undefined ? VALID : 0);
    out[2] = s.key;
    if (info !== undefined) writeU32(out, 3, Number(info));
    out[7] = FIXED_ADDITIONAL_LENGTH;
    out[12] = s.asc;
    out[13] = s.ascq;
    if (sks !== undefined) out.set(sks, 15);
    return out;
  }
  if (format !== 'descriptor') throw new EncodeError(STRUCTURE, 'format', format, 'is not "fixed" or "descriptor"');
  if (info !== undefined && !isU64(info)) throw new EncodeError(STRUCTURE, 'INFORMATION', info, 'is not a 64-bit unsigned bigint');
  const length = DESCRIPTOR_HEADER_LENGTH + (info !== undefined ? 12 : 0) + (sks !== undefined ? 8 : 0);
  const out = new Uint8Array(length);
  out[0] = DESCRIPTOR_CURRENT;
  out[1] = s.key;
  out[2] = s.asc;
  out[3] = s.ascq;
  out[7] = length - DESCRIPTOR_HEADER_LENGTH;
  let o = DESCRIPTOR_HEADER_LENGTH;
  if (info !== undefined) {
    out[o] = INFORMATION_DESCRIPTOR;
    out[o + 1] = INFORMATION_DESCRIPTOR_ADDITIONAL_LENGTH;
    out[o + 2] = VALID;
    writeU64(out, o + 4, info);
    o += 12;
  }
  if (sks !== undefined) {
    out[o] = SENSE_KEY_SPECIFIC_DESCRIPTOR;
    out[o + 1] = SENSE_KEY_SPECIFIC_DESCRIPTOR_ADDITIONAL_LENGTH;
    out.set(sks, o + 4);
  }
  return out;
}

function withOptional(base: Omit<SenseData, 'information' | 'senseKeySpecific'>, information: bigint | undefined, sks: Uint8Array | undefined): SenseData {
  return {
    ...base,
    ...(information !== undefined ? { information } : {}),
    ...(sks !== undefined ? { senseKeySpecific: sks } : {}),
  };
}

function parseFixed(bytes: Uint8Array, responseCode: number): SenseData | Malformed {
  if (bytes.length < 8) return new Malformed('sense length', bytes.length, 'is shorter than the 8 bytes that hold the fixed-format ADDITIONAL SENSE LENGTH');
  // Like Linux's scsi_normalize_sense: the additional length bounds what is meaningful.
  const end = Math.min(bytes.length, 8 + bytes[7]!);
  const ascAnnounced = 8 + bytes[7]! > 12;
  const ascqAnnounced = 8 + bytes[7]! > 13;
  if ((ascAnnounced && bytes.length < 13) || (ascqAnnounced && bytes.length < 14)) {
    return new Malformed('sense length', bytes.length, `is too short for the ASC/ASCQ that ADDITIONAL SENSE LENGTH ${bytes[7]!} announces`);
  }
  const information = (bytes[0]! & VALID) !== 0 ? BigInt(readU32(bytes, 3)) : undefined;
  const sks = end >= 18 && (bytes[15]! & SKSV) !== 0 ? bytes.slice(15, 18) : undefined;
  return withOptional(
    {
      format: 'fixed',
      current: responseCode === FIXED_CURRENT,
      key: bytes[2]! & 0x0f,
      asc: ascAnnounced ? bytes[12]! : 0,
      ascq: ascqAnnounced ? bytes[13]! : 0,
    },
    information,
    sks,
  );
}

function parseDescriptor(bytes: Uint8Array, responseCode: number): SenseData | Malformed {
  if (bytes.length < DESCRIPTOR_HEADER_LENGTH) {
    return new Malformed('sense length', bytes.length, `is shorter than the ${DESCRIPTOR_HEADER_LENGTH}-byte descriptor-format header`);
  }
  const end = Math.min(bytes.length, DESCRIPTOR_HEADER_LENGTH + bytes[7]!);
  let information: bigint | undefined;
  let sks: Uint8Array | undefined;
  // Descriptors cut off by a short buffer are skipped, as are types prmux does not use.
  for (let o = DESCRIPTOR_HEADER_LENGTH; o + 2 <= end; o += 2 + bytes[o + 1]!) {
    const type = bytes[o]!;
    const descEnd = o + 2 + bytes[o + 1]!;
    if (descEnd > end) break;
    if (type === INFORMATION_DESCRIPTOR && information === undefined && descEnd >= o + 12 && (bytes[o + 2]! & VALID) !== 0) {
      information = readU64(bytes, o + 4);
    } else if (type === SENSE_KEY_SPECIFIC_DESCRIPTOR && sks === undefined && descEnd >= o + 7 && (bytes[o + 4]! & SKSV) !== 0) {
      sks = bytes.slice(o + 4, o + 7);
    }
  }
  return withOptional(
    { format: 'descriptor', current: responseCode === DESCRIPTOR_CURRENT, key: bytes[1]! & 0x0f, asc: bytes[2]!, ascq: bytes[3]! },
    information,
    sks,
  );
}

function parseSenseBytes(bytes: Uint8Array): SenseData | Malformed {
  if (bytes.length < 1) return new Malformed('sense length', 0, 'is zero: there is no RESPONSE CODE');
  // Bit 7 of byte 0 is VALID in fixed format and reserved in descriptor format: ignore it here.
  const responseCode = bytes[0]! & 0x7f;
  switch (responseCode) {
    case FIXED_CURRENT:
    case FIXED_DEFERRED:
      return parseFixed(bytes, responseCode);
    case DESCRIPTOR_CURRENT:
    case DESCRIPTOR_DEFERRED:
      return parseDescriptor(bytes, responseCode);
    default:
      return new Malformed('RESPONSE CODE', responseCode, 'is not 70h-73h (fixed or descriptor, current or deferred)');
  }
}

/** Parse fixed (70h/71h) or descriptor (72h/73h) sense data. */
export function parseSense(bytes: Uint8Array): SenseData {
  const r = parseSenseBytes(bytes);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r;
}

function asSenseData(s: SenseData | Uint8Array): SenseData | null {
  if (!(s instanceof Uint8Array)) return s;
  const r = parseSenseBytes(s);
  return r instanceof Malformed ? null : r;
}

/**
 * Whether two sense data say the same thing: format, current/deferred, key, ASC, ASCQ, INFORMATION
 * and sense-key specific bytes. Padding differs freely (a 96-byte pr-helper sense buffer equals
 * the 18 bytes inside it). Bytes that cannot be parsed are equal only to identical bytes.
 */
export function senseEquals(a: SenseData | Uint8Array, b: SenseData | Uint8Array): boolean {
  const pa = asSenseData(a);
  const pb = asSenseData(b);
  if (pa === null || pb === null) return a instanceof Uint8Array && b instanceof Uint8Array && pa === pb && bytesEqual(a, b);
  const sksEqual =
    pa.senseKeySpecific === undefined || pb.senseKeySpecific === undefined
      ? pa.senseKeySpecific === pb.senseKeySpecific
      : bytesEqual(pa.senseKeySpecific, pb.senseKeySpecific);
  return (
    pa.format === pb.format &&
    pa.current === pb.current &&
    pa.key === pb.key &&
    pa.asc === pb.asc &&
    pa.ascq === pb.ascq &&
    pa.information === pb.information &&
    sksEqual
  );
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** One line for logs, e.g. "ILLEGAL_REQUEST INVALID_FIELD_IN_CDB (5/24/00)". Never throws. */
export function formatSense(bytes: Uint8Array): string {
  const r = parseSenseBytes(bytes);
  if (r instanceof Malformed) return `malformed sense ${hex(bytes.subarray(0, 32))}${bytes.length > 32 ? '...' : ''} (${r.field} ${r.why})`;
  const keyName = SenseKeyName[r.key] ?? `SENSE KEY 0x${r.key.toString(16)}`;
  let line = `${keyName} ${ascName(r.asc, r.ascq)} (${r.key.toString(16)}/${hex2(r.asc)}/${hex2(r.ascq)})`;
  if (!r.current) line += ' deferred';
  if (r.information !== undefined) line += ` information=0x${r.information.toString(16)}`;
  if (r.senseKeySpecific !== undefined) line += ` sks=${hex(r.senseKeySpecific)}`;
  return line;
}

/** Sense key, ASC and ASCQ of sense bytes, or null when they cannot be parsed. */
export function senseKeyAscOf(bytes: Uint8Array): { key: number; asc: number; ascq: number } | null {
  const r = parseSenseBytes(bytes);
  return r instanceof Malformed ? null : { key: r.key, asc: r.asc, ascq: r.ascq };
}
