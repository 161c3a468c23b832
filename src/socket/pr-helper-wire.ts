// Byte layouts of QEMU's pr-manager-helper protocol (docs/interop/pr-helper.rst, scsi/pr-helper.h,
// scsi/pr-manager-helper.c) as pure encoders and decoders. No sockets, no Node APIs: the session
// (pr-helper-session.ts), the server, the tests and the benchmark client all build on these.
//
// Connection, all integers big-endian:
//   helper -> client   u32 supported feature bits (no feature is defined: 0)
//   client -> helper   u32 requested feature bits (QEMU sends 0; a bit the helper lacks closes)
// Then per command, one at a time on a connection (QEMU holds a mutex around each command):
//   client -> helper   16 bytes CDB, with exactly one fd as SCM_RIGHTS ancillary data
//   client -> helper   PR OUT only: the parameter list (its length from the CDB)
//   helper -> client   u32 SCSI status | u32 payload size | 96 bytes sense | payload
// The payload is non-empty only for a PR IN answered GOOD, and never longer than the CDB's
// ALLOCATION LENGTH (QEMU's client asserts resp.sz <= dxfer_len, and resp.sz == 0 for PR OUT).

import { DecodeError, EncodeError, ErrorCode, isPrmuxError } from '../errors.js';
import { decodePrCdb, prCdbTransferLength } from '../scsi/cdb.js';
import type { PrCdb } from '../scsi/types.js';
import { Opcode, PR_HELPER_MAX_TRANSFER } from '../scsi/constants.js';

/** PR_HELPER_CDB_SIZE: QEMU zero-pads the guest's CDB into a 16-byte buffer. */
export const PR_HELPER_CDB_SIZE = 16;
/** PR_HELPER_SENSE_SIZE: the sense field of every reply, zero-padded. */
export const PR_HELPER_SENSE_SIZE = 96;
/** status (4) + payload size (4) + sense (96). */
export const PR_HELPER_REPLY_HEADER_SIZE = 8 + PR_HELPER_SENSE_SIZE;
export const PR_HELPER_FEATURES_SIZE = 4;
/** PR_HELPER_DATA_SIZE: the largest parameter list or allocation length the protocol carries. */
export const PR_HELPER_MAX_DATA = PR_HELPER_MAX_TRANSFER;
/** The feature bits prmux supports: none are defined by QEMU's stock protocol. */
export const PR_HELPER_SUPPORTED_FEATURES = 0;

function u32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0;
}

function putU32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 24;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}

function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

/** The 4-byte feature word either side sends at connection start. */
export function encodeFeatures(bits: number): Uint8Array {
  if (!isU32(bits)) throw new EncodeError('pr-helper feature word', 'feature bits', bits, 'is not a 32-bit unsigned integer');
  const out = new Uint8Array(PR_HELPER_FEATURES_SIZE);
  putU32(out, 0, bits);
  return out;
}

export function decodeFeatures(bytes: Uint8Array, offset = 0): number {
  if (offset < 0 || offset + PR_HELPER_FEATURES_SIZE > bytes.length) {
    throw new DecodeError('pr-helper feature word', 'length', bytes.length - offset, `is shorter than ${PR_HELPER_FEATURES_SIZE} bytes`);
  }
  return u32(bytes, offset);
}

/**
 * Bytes of data the command moves, read the way prmux validates it: PR IN ALLOCATION LENGTH is
 * bytes 7-8 (SPC-4 6.15.1); PR OUT PARAMETER LIST LENGTH is bytes 5-8 (SPC-4 6.16.1). QEMU's
 * scsi_cdb_xfer() reads bytes 7-8 for both (a group 2 CDB); reading all four for PR OUT is
 * stricter: a length with bytes 5-6 set is refused instead of silently cut to its low 16 bits.
 * Returns null for any other opcode.
 */
export function prHelperTransferLength(cdb: Uint8Array): number | null {
  let decoded: PrCdb;
  try {
    decoded = decodePrCdb(cdb);
  } catch (e) {
    if (isPrmuxError(e, ErrorCode.DECODE)) return null;
    throw e;
  }
  return prCdbTransferLength(decoded);
}

export interface PrHelperReply {
  /** SCSI status byte (GOOD 00h, CHECK CONDITION 02h, BUSY 08h, RESERVATION CONFLICT 18h, ...). */
  readonly status: number;
  /** Sense bytes; at most 96 are sent, zero-padded. Meaningful with CHECK CONDITION only. */
  readonly sense: Uint8Array;
  /** The payload as it goes on the wire (callers apply the PR IN / allocation-length rules). */
  readonly payload: Uint8Array;
}

/**
 * Reply frame:
 *   bytes 0-3     SCSI status (QEMU's PRHelperResponse.result, int32 big-endian)
 *   bytes 4-7     payload size (PRHelperResponse.sz)
 *   bytes 8-103   sense (PRHelperResponse.sense), zero-padded
 *   bytes 104..   payload
 */
export function encodeReply(reply: PrHelperReply): Uint8Array {
  const structure = 'pr-helper reply';
  if (!isU32(reply.status) || reply.status > 0xff) throw new EncodeError(structure, 'status', reply.status, 'is not a SCSI status byte');
  if (reply.sense.length > PR_HELPER_SENSE_SIZE) {
    throw new EncodeError(structure, 'sense length', reply.sense.length, `exceeds ${PR_HELPER_SENSE_SIZE} bytes`);
  }
  if (reply.payload.length > PR_HELPER_MAX_DATA) {
    throw new EncodeError(structure, 'payload size', reply.payload.length, `exceeds ${PR_HELPER_MAX_DATA} bytes`);
  }
  const out = new Uint8Array(PR_HELPER_REPLY_HEADER_SIZE + reply.payload.length);
  putU32(out, 0, reply.status);
  putU32(out, 4, reply.payload.length);
  out.set(reply.sense, 8);
  out.set(reply.payload, PR_HELPER_REPLY_HEADER_SIZE);
  return out;
}

export interface DecodedReplyHeader {
  readonly status: number;
  readonly payloadSize: number;
  readonly sense: Uint8Array;
}

/** Decode the 104-byte reply header; the payload size is checked against the protocol maximum. */
export function decodeReplyHeader(bytes: Uint8Array, offset = 0): DecodedReplyHeader {
  const structure = 'pr-helper reply';
  if (offset < 0 || offset + PR_HELPER_REPLY_HEADER_SIZE > bytes.length) {
    throw new DecodeError(structure, 'length', bytes.length - offset, `is shorter than the ${PR_HELPER_REPLY_HEADER_SIZE}-byte header`);
  }
  const status = u32(bytes, offset);
  const payloadSize = u32(bytes, offset + 4);
  if (payloadSize > PR_HELPER_MAX_DATA) throw new DecodeError(structure, 'payload size', payloadSize, `exceeds ${PR_HELPER_MAX_DATA} bytes`);
  return { status, payloadSize, sense: bytes.slice(offset + 8, offset + PR_HELPER_REPLY_HEADER_SIZE) };
}

/**
 * Client side: incremental decoder of the helper's byte stream (feature word, then replies). Holds
 * at most one reply (104 + 8192 bytes) of partial input: replies are returned as they complete.
 */
export class PrHelperReplyDecoder {
  #features: number | null = null;
  #buf = new Uint8Array(PR_HELPER_REPLY_HEADER_SIZE + PR_HELPER_MAX_DATA);
  #have = 0;
  #header: DecodedReplyHeader | null = null;

  /** The helper's feature word, once received. */
  get features(): number | null {
    return this.#features;
  }

  /** True while part of a feature word or reply is buffered. */
  get partial(): boolean {
    return this.#have > 0 || this.#header !== null;
  }

  push(bytes: Uint8Array): PrHelperReply[] {
    const out: PrHelperReply[] = [];
    let i = 0;
    while (i < bytes.length) {
      const need = this.#need();
      const take = Math.min(need - this.#have, bytes.length - i);
      this.#buf.set(bytes.subarray(i, i + take), this.#have);
      this.#have += take;
      i += take;
      if (this.#have < need) break;
      if (this.#features === null) {
        this.#features = decodeFeatures(this.#buf);
        this.#have = 0;
      } else if (this.#header === null) {
        this.#header = decodeReplyHeader(this.#buf);
        if (this.#header.payloadSize === 0) this.#emit(out);
      } else {
        this.#emit(out);
      }
    }
    return out;
  }

  #need(): number {
    if (this.#features === null) return PR_HELPER_FEATURES_SIZE;
    if (this.#header === null) return PR_HELPER_REPLY_HEADER_SIZE;
    return PR_HELPER_REPLY_HEADER_SIZE + this.#header.payloadSize;
  }

  #emit(out: PrHelperReply[]): void {
    const h = this.#header!;
    out.push({ status: h.status, sense: h.sense, payload: this.#buf.slice(PR_HELPER_REPLY_HEADER_SIZE, PR_HELPER_REPLY_HEADER_SIZE + h.payloadSize) });
    this.#header = null;
    this.#have = 0;
  }
}

/**
 * Client side: the bytes of one request. `cdb` (at most 16 bytes) is zero-padded to 16 as QEMU
 * does; it must travel in one sendmsg() with the fd. `data` follows for PR OUT, its length taken
 * from the CDB (QEMU sends exactly scsi_cdb_xfer() bytes); for any other CDB it is null.
 */
export function encodeRequest(cdb: Uint8Array, dataOut: Uint8Array | null = null): { cdb: Uint8Array; data: Uint8Array | null } {
  const structure = 'pr-helper request';
  if (cdb.length === 0 || cdb.length > PR_HELPER_CDB_SIZE) {
    throw new EncodeError(structure, 'CDB length', cdb.length, `is not 1..${PR_HELPER_CDB_SIZE} bytes`);
  }
  const padded = new Uint8Array(PR_HELPER_CDB_SIZE);
  padded.set(cdb);
  if (padded[0] !== Opcode.PERSISTENT_RESERVE_OUT) {
    if (dataOut !== null && dataOut.length > 0) throw new EncodeError(structure, 'data-out length', dataOut.length, 'is not 0 for a CDB other than PR OUT');
    return { cdb: padded, data: null };
  }
  const length = prHelperTransferLength(padded)!;
  const data = dataOut ?? new Uint8Array(0);
  if (data.length !== length) {
    throw new EncodeError(structure, 'data-out length', data.length, `differs from the CDB's PARAMETER LIST LENGTH ${length}`);
  }
  return { cdb: padded, data };
}
