// Byte helpers shared by the SCSI codecs. Pure: Uint8Array and DataView only.
// SCSI puts every multi-byte field big-endian (SPC-4 3.5.2 "bit and byte ordering").

import { DecodeError, EncodeError } from '../errors.js';

/**
 * Why an input is malformed: the field, the value received there and why it is wrong. Parsers
 * return it instead of throwing, so that each public decoder has exactly one place that throws a
 * DecodeError, and so that a decoder can re-label the field of a nested structure (the PR OUT
 * decoder must say whether a bad TransportID is a length or a content problem).
 * Internal to src/scsi; not re-exported from the index.
 */
export class Malformed {
  constructor(
    readonly field: string,
    readonly value: unknown,
    readonly why: string,
    /** True when the structure needs more bytes than it was given (a length, not content, problem). */
    readonly short = false,
  ) {}
}

const HEX_DIGITS = '0123456789abcdef';

/** Lowercase hex, no separators. */
export function hex(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += HEX_DIGITS[b >> 4]! + HEX_DIGITS[b & 0xf]!;
  return out;
}

function hexDigitValue(code: number): number {
  if (code >= 0x30 && code <= 0x39) return code - 0x30; // 0-9
  if (code >= 0x61 && code <= 0x66) return code - 0x61 + 10; // a-f
  if (code >= 0x41 && code <= 0x46) return code - 0x41 + 10; // A-F
  return -1;
}

function isHexWhitespace(ch: string): boolean {
  return ch === ' ' || ch === '\n' || ch === '\r' || ch === '\t';
}

function parseHex(text: string): Uint8Array | Malformed {
  const digits: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (isHexWhitespace(ch)) continue;
    const v = hexDigitValue(ch.charCodeAt(0));
    if (v < 0) return new Malformed('hex digit', ch, `at index ${i} is not a hex digit`);
    digits.push(v);
  }
  if (digits.length % 2 !== 0) return new Malformed('digit count', digits.length, 'is odd: hex needs two digits per byte');
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = (digits[2 * i]! << 4) | digits[2 * i + 1]!;
  return out;
}

/** Bytes from hex text; spaces, tabs and newlines between digits are ignored (as in captured logs). */
export function fromHex(text: string): Uint8Array {
  const r = parseHex(text);
  if (r instanceof Malformed) throw new DecodeError('hex string', r.field, r.value, r.why);
  return r;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function checkRead(bytes: Uint8Array, offset: number, width: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + width > bytes.length) {
    throw new DecodeError('bytes', 'offset', offset, `does not leave ${width} bytes to read in ${bytes.length}`);
  }
}

export function readU8(bytes: Uint8Array, offset: number): number {
  checkRead(bytes, offset, 1);
  return bytes[offset]!;
}

export function readU16(bytes: Uint8Array, offset: number): number {
  checkRead(bytes, offset, 2);
  return view(bytes).getUint16(offset, false);
}

export function readU32(bytes: Uint8Array, offset: number): number {
  checkRead(bytes, offset, 4);
  return view(bytes).getUint32(offset, false);
}

export function readU64(bytes: Uint8Array, offset: number): bigint {
  checkRead(bytes, offset, 8);
  return view(bytes).getBigUint64(offset, false);
}

function checkWrite(bytes: Uint8Array, offset: number, width: number, value: number | bigint, max: number | bigint): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + width > bytes.length) {
    throw new EncodeError('bytes', 'offset', offset, `does not leave ${width} bytes to write in ${bytes.length}`);
  }
  const inRange =
    typeof value === 'bigint' ? value >= 0n && value <= (max as bigint) : Number.isInteger(value) && value >= 0 && value <= (max as number);
  if (!inRange) throw new EncodeError('bytes', `${width * 8}-bit field`, value, `is not an integer in 0..${max.toString()}`);
}

export function writeU8(bytes: Uint8Array, offset: number, value: number): void {
  checkWrite(bytes, offset, 1, value, 0xff);
  bytes[offset] = value;
}

export function writeU16(bytes: Uint8Array, offset: number, value: number): void {
  checkWrite(bytes, offset, 2, value, 0xffff);
  view(bytes).setUint16(offset, value, false);
}

export function writeU32(bytes: Uint8Array, offset: number, value: number): void {
  checkWrite(bytes, offset, 4, value, 0xffff_ffff);
  view(bytes).setUint32(offset, value, false);
}

export const U64_MAX = 0xffff_ffff_ffff_ffffn;

export function writeU64(bytes: Uint8Array, offset: number, value: bigint): void {
  checkWrite(bytes, offset, 8, value, U64_MAX);
  view(bytes).setBigUint64(offset, value, false);
}

/** A reservation key for logs: "0x" + minimal lowercase hex ("0x0" for 0), as sg_persist prints keys. */
export function keyToHex(key: bigint): string {
  return key < 0n ? `-0x${(-key).toString(16)}` : `0x${key.toString(16)}`;
}

/** Byte-wise equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether `value` is an integer in 0..max (encoders' range check). */
export function isUint(value: unknown, max: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max;
}

/** Whether `value` is a bigint in 0..2^64-1 (a reservation key, a WWN). */
export function isU64(value: unknown): value is bigint {
  return typeof value === 'bigint' && value >= 0n && value <= U64_MAX;
}
