// PERSISTENT RESERVE IN / OUT command descriptor blocks. Pure.
//
// The decoders return raw field values: whether a service action, scope or type is supported is
// the device server's judgement, answered with sense data (SPC-4 6.15.1, 6.16.1), not a decode error.
// They accept 10 to 16 bytes because QEMU's pr-manager-helper protocol always carries the CDB in
// a 16-byte buffer with the unused tail zeroed; bytes past 9 are ignored.

import { DecodeError, EncodeError } from '../errors.js';
import { Opcode } from './constants.js';
import type { PrCdb, PrInCdb, PrOutCdb } from './types.js';
import { Malformed, isUint, readU16, readU32, writeU16, writeU32 } from './bytes.js';

const STRUCTURE = 'PERSISTENT RESERVE CDB';
const MIN_CDB = 10;
const MAX_CDB = 16;

type OpcodeWanted = 'any' | typeof Opcode.PERSISTENT_RESERVE_IN | typeof Opcode.PERSISTENT_RESERVE_OUT;

/*
 * PERSISTENT RESERVE IN (SPC-4 6.15.1)
 *   byte 0     OPERATION CODE (5Eh)
 *   byte 1     bits 4-0 SERVICE ACTION
 *   bytes 2-6  reserved
 *   bytes 7-8  ALLOCATION LENGTH
 *   byte 9     CONTROL
 *
 * PERSISTENT RESERVE OUT (SPC-4 6.16.1)
 *   byte 0     OPERATION CODE (5Fh)
 *   byte 1     bits 4-0 SERVICE ACTION
 *   byte 2     bits 7-4 SCOPE, bits 3-0 TYPE
 *   bytes 3-4  reserved
 *   bytes 5-8  PARAMETER LIST LENGTH (32-bit; QEMU's scsi_cdb_xfer reads only 7-8, prmux reads all four)
 *   byte 9     CONTROL
 */
function parsePrCdb(bytes: Uint8Array, wanted: OpcodeWanted): PrCdb | Malformed {
  if (bytes.length < MIN_CDB || bytes.length > MAX_CDB) {
    return new Malformed('CDB length', bytes.length, `is not ${MIN_CDB}..${MAX_CDB} bytes`);
  }
  const opcode = bytes[0]!;
  const accepted =
    wanted === 'any' ? opcode === Opcode.PERSISTENT_RESERVE_IN || opcode === Opcode.PERSISTENT_RESERVE_OUT : opcode === wanted;
  if (!accepted) {
    const expected =
      wanted === 'any'
        ? 'PERSISTENT RESERVE IN (5Eh) or OUT (5Fh)'
        : wanted === Opcode.PERSISTENT_RESERVE_IN
          ? 'PERSISTENT RESERVE IN (5Eh)'
          : 'PERSISTENT RESERVE OUT (5Fh)';
    return new Malformed('OPERATION CODE', opcode, `is not ${expected}`);
  }
  const serviceAction = bytes[1]! & 0x1f;
  const control = bytes[9]!;
  if (opcode === Opcode.PERSISTENT_RESERVE_IN) {
    return { opcode: Opcode.PERSISTENT_RESERVE_IN, serviceAction, allocationLength: readU16(bytes, 7), control };
  }
  return {
    opcode: Opcode.PERSISTENT_RESERVE_OUT,
    serviceAction,
    scope: bytes[2]! >> 4,
    type: bytes[2]! & 0x0f,
    parameterListLength: readU32(bytes, 5),
    control,
  };
}

/** Decode a PERSISTENT RESERVE IN or OUT CDB (10..16 bytes). */
export function decodePrCdb(bytes: Uint8Array): PrCdb {
  const r = parsePrCdb(bytes, 'any');
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r;
}

/** Decode a PERSISTENT RESERVE IN CDB; any other opcode is a DecodeError on OPERATION CODE. */
export function decodePrInCdb(bytes: Uint8Array): PrInCdb {
  const r = parsePrCdb(bytes, Opcode.PERSISTENT_RESERVE_IN);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r as PrInCdb;
}

/** Decode a PERSISTENT RESERVE OUT CDB; any other opcode is a DecodeError on OPERATION CODE. */
export function decodePrOutCdb(bytes: Uint8Array): PrOutCdb {
  const r = parsePrCdb(bytes, Opcode.PERSISTENT_RESERVE_OUT);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r as PrOutCdb;
}

function checkSize(structure: string, size: unknown): asserts size is 10 | 16 {
  if (size !== 10 && size !== 16) throw new EncodeError(structure, 'CDB size', size, 'is not 10 or 16');
}

function checkField(structure: string, field: string, value: unknown, max: number): asserts value is number {
  if (!isUint(value, max)) throw new EncodeError(structure, field, value, `is not an integer in 0..${max}`);
}

export interface PrInCdbFields {
  readonly serviceAction: number;
  readonly allocationLength: number;
  readonly control?: number;
}

/** Encode a PERSISTENT RESERVE IN CDB; `size` 16 gives the zero-padded form QEMU sends. */
export function encodePrInCdb(fields: PrInCdbFields, size: 10 | 16 = 10): Uint8Array {
  const structure = 'PERSISTENT RESERVE IN CDB';
  checkSize(structure, size);
  const control = fields.control ?? 0;
  checkField(structure, 'SERVICE ACTION', fields.serviceAction, 0x1f);
  checkField(structure, 'ALLOCATION LENGTH', fields.allocationLength, 0xffff);
  checkField(structure, 'CONTROL', control, 0xff);
  const out = new Uint8Array(size);
  out[0] = Opcode.PERSISTENT_RESERVE_IN;
  out[1] = fields.serviceAction;
  writeU16(out, 7, fields.allocationLength);
  out[9] = control;
  return out;
}

export interface PrOutCdbFields {
  readonly serviceAction: number;
  readonly scope?: number;
  readonly type?: number;
  readonly parameterListLength: number;
  readonly control?: number;
}

/** Encode a PERSISTENT RESERVE OUT CDB; `size` 16 gives the zero-padded form QEMU sends. */
export function encodePrOutCdb(fields: PrOutCdbFields, size: 10 | 16 = 10): Uint8Array {
  const structure = 'PERSISTENT RESERVE OUT CDB';
  checkSize(structure, size);
  const scope = fields.scope ?? 0;
  const type = fields.type ?? 0;
  const control = fields.control ?? 0;
  checkField(structure, 'SERVICE ACTION', fields.serviceAction, 0x1f);
  checkField(structure, 'SCOPE', scope, 0xf);
  checkField(structure, 'TYPE', type, 0xf);
  checkField(structure, 'PARAMETER LIST LENGTH', fields.parameterListLength, 0xffff_ffff);
  checkField(structure, 'CONTROL', control, 0xff);
  const out = new Uint8Array(size);
  out[0] = Opcode.PERSISTENT_RESERVE_OUT;
  out[1] = fields.serviceAction;
  out[2] = (scope << 4) | type;
  writeU32(out, 5, fields.parameterListLength);
  out[9] = control;
  return out;
}

/** Bytes the command moves: ALLOCATION LENGTH (data in) or PARAMETER LIST LENGTH (data out). */
export function prCdbTransferLength(cdb: PrCdb): number {
  return cdb.opcode === Opcode.PERSISTENT_RESERVE_IN ? cdb.allocationLength : cdb.parameterListLength;
}
