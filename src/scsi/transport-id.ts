// TransportIDs (SPC-4 7.6.4): the initiator port identifiers carried by PR OUT (SPEC_I_PT, REGISTER
// AND MOVE) and reported by READ FULL STATUS. Pure.
//
// prmux codes the three protocols it meets: Fibre Channel, SAS (what the LIO lab reports) and iSCSI.
// Any other protocol is kept `raw`, but only when an enclosing structure gives the TransportID's
// length (READ FULL STATUS's ADDITIONAL DESCRIPTOR LENGTH): a TransportID of unknown protocol has
// no length of its own, so in a list of TransportIDs it cannot be skipped.

import { DecodeError, EncodeError } from '../errors.js';
import { ProtocolId } from './constants.js';
import type { TransportId } from './types.js';
import { Malformed, hex, isU64, isUint, readU16, readU64, writeU16, writeU64 } from './bytes.js';

const STRUCTURE = 'TransportID';
/** FC, SAS and every other format-00b TransportID but iSCSI are 24 bytes (SPC-4 7.6.4.1). */
const FIXED_TRANSPORT_ID_LENGTH = 24;
/** iSCSI ADDITIONAL LENGTH: at least 20 and a multiple of 4 (SPC-4 7.6.4.6). */
const ISCSI_MIN_ADDITIONAL_LENGTH = 20;
const ISCSI_MAX_ADDITIONAL_LENGTH = 0xfffc;
/** Separator between the iSCSI name and the ISID in format 01b (SPC-4 7.6.4.6). */
const ISID_SEPARATOR = ',i,0x';
/** The ISID is 6 bytes (RFC 3720 10.12.5), carried as 12 hex digits. */
const ISID_PATTERN = /^[0-9a-fA-F]{12}$/;

const FORMAT_DEVICE = 0b00;
const FORMAT_PORT = 0b01;

// ---------------------------------------------------------------------------------------------
// UTF-8 (iSCSI names are UTF-8, RFC 3720 3.2.6.2). Written out because the pure core has no
// TextEncoder/TextDecoder (no DOM or Node types). Strict: overlong forms, surrogates and code points
// above U+10FFFF are rejected.

function utf8Decode(b: Uint8Array): string | null {
  let out = '';
  let i = 0;
  while (i < b.length) {
    const lead = b[i]!;
    let cp: number;
    let extra: number;
    let min: number;
    if (lead < 0x80) [cp, extra, min] = [lead, 0, 0];
    else if (lead >= 0xc2 && lead <= 0xdf) [cp, extra, min] = [lead & 0x1f, 1, 0x80];
    else if (lead >= 0xe0 && lead <= 0xef) [cp, extra, min] = [lead & 0x0f, 2, 0x800];
    else if (lead >= 0xf0 && lead <= 0xf4) [cp, extra, min] = [lead & 0x07, 3, 0x10000];
    else return null;
    for (let k = 1; k <= extra; k++) {
      const cont = b[i + k];
      if (cont === undefined || (cont & 0xc0) !== 0x80) return null;
      cp = (cp << 6) | (cont & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return null;
    out += String.fromCodePoint(cp);
    i += extra + 1;
  }
  return out;
}

function utf8Encode(s: string): Uint8Array | null {
  const out: number[] = [];
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp >= 0xd800 && cp <= 0xdfff) return null; // lone surrogate: not encodable
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return Uint8Array.from(out);
}

/**
 * Why an iSCSI name cannot be carried, or null. iSCSI names never contain a comma (RFC 3720
 * 3.2.6.2 allows letters, digits, '-', '.', ':'), and format 01b relies on that to find ",i,0x".
 * prmux does not enforce the rest of the stringprep profile: targets compare names, not prmux.
 */
function iscsiNameProblem(name: string): string | null {
  if (name.length === 0) return 'is empty';
  if (name.includes(',')) return 'contains a comma, which iSCSI names cannot (RFC 3720 3.2.6.2)';
  if (name.includes('\u0000')) return 'contains a null character';
  return null;
}

// ---------------------------------------------------------------------------------------------

export interface ParsedTransportId {
  readonly transportId: TransportId;
  /** Offset just past the TransportID. */
  readonly next: number;
}

/*
 * Byte 0 of every TransportID (SPC-4 7.6.4.1): bits 7-6 FORMAT CODE, bits 5-4 reserved,
 * bits 3-0 PROTOCOL IDENTIFIER.
 *
 * Fibre Channel, format 00b (SPC-4 7.6.4.2), 24 bytes:
 *   byte 0 = 00h, bytes 1-7 reserved, bytes 8-15 N_PORT_NAME, bytes 16-23 reserved
 * SAS, format 00b (SPC-4 7.6.4.7), 24 bytes:
 *   byte 0 = 06h, bytes 1-3 reserved, bytes 4-11 SAS ADDRESS, bytes 12-23 reserved
 * iSCSI (SPC-4 7.6.4.6), 4 + ADDITIONAL LENGTH bytes:
 *   byte 0 = 05h (format 00b, initiator device) or 45h (format 01b, initiator port)
 *   byte 1 reserved, bytes 2-3 ADDITIONAL LENGTH (multiple of 4, at least 20)
 *   bytes 4..  00b: ISCSI NAME, null-terminated, null-padded
 *              01b: ISCSI NAME + ",i,0x" + ISCSI INITIATOR SESSION ID (hex), null-terminated, null-padded
 * Reserved bytes are not checked (SPC-4's keyword "reserved": a recipient may check them, but need not).
 *
 * Internal to src/scsi. `limit` is how many bytes from `offset` the TransportID may occupy (the
 * caller guarantees offset + limit <= bytes.length); `allowRaw` keeps an unknown protocol as raw,
 * occupying all `limit` bytes. A Malformed with `short` set means the TransportID needs more bytes
 * than `limit`.
 */
export function parseTransportId(bytes: Uint8Array, offset: number, limit: number, allowRaw: boolean): ParsedTransportId | Malformed {
  const whole = (): Uint8Array => bytes.subarray(offset, offset + limit);
  if (limit < 1) return new Malformed('TRANSPORTID', whole(), 'is empty', true);
  const byte0 = bytes[offset]!;
  const formatCode = byte0 >> 6;
  const protocolId = byte0 & 0x0f;
  switch (protocolId) {
    case ProtocolId.FC:
    case ProtocolId.SAS: {
      const name = protocolId === ProtocolId.FC ? 'Fibre Channel' : 'SAS';
      if (formatCode !== FORMAT_DEVICE) return new Malformed('FORMAT CODE', formatCode, `is not 00b, the only ${name} TransportID format`);
      if (limit < FIXED_TRANSPORT_ID_LENGTH) {
        return new Malformed('TRANSPORTID', whole(), `is shorter than the 24 bytes of a ${name} TransportID`, true);
      }
      const next = offset + FIXED_TRANSPORT_ID_LENGTH;
      return protocolId === ProtocolId.FC
        ? { transportId: { protocol: 'fc', nPortName: readU64(bytes, offset + 8) }, next }
        : { transportId: { protocol: 'sas', sasAddress: readU64(bytes, offset + 4) }, next };
    }
    case ProtocolId.ISCSI: {
      if (formatCode !== FORMAT_DEVICE && formatCode !== FORMAT_PORT) {
        return new Malformed('FORMAT CODE', formatCode, 'is not 00b or 01b, the iSCSI TransportID formats');
      }
      if (limit < 4) return new Malformed('TRANSPORTID', whole(), 'is too short to hold an iSCSI ADDITIONAL LENGTH', true);
      const additionalLength = readU16(bytes, offset + 2);
      if (additionalLength < ISCSI_MIN_ADDITIONAL_LENGTH || additionalLength % 4 !== 0) {
        return new Malformed('ADDITIONAL LENGTH', additionalLength, 'is not a multiple of 4 of at least 20 (SPC-4 7.6.4.6)');
      }
      if (4 + additionalLength > limit) {
        return new Malformed('ADDITIONAL LENGTH', additionalLength, `needs ${4 + additionalLength} bytes but only ${limit} are available`, true);
      }
      const field = bytes.subarray(offset + 4, offset + 4 + additionalLength);
      const nul = field.indexOf(0);
      if (nul < 0) return new Malformed('ISCSI NAME', field, 'is not null-terminated');
      if (field.subarray(nul).some((b) => b !== 0)) return new Malformed('ISCSI NAME', field, 'has non-zero bytes in its null padding');
      const text = utf8Decode(field.subarray(0, nul));
      if (text === null) return new Malformed('ISCSI NAME', field.subarray(0, nul), 'is not valid UTF-8');
      const next = offset + 4 + additionalLength;
      if (formatCode === FORMAT_DEVICE) {
        const problem = iscsiNameProblem(text);
        if (problem !== null) return new Malformed('ISCSI NAME', text, problem);
        return { transportId: { protocol: 'iscsi', format: 'device', name: text }, next };
      }
      const sep = text.indexOf(ISID_SEPARATOR);
      if (sep < 0) return new Malformed('ISCSI NAME', text, `has no "${ISID_SEPARATOR}" separator before the ISID (format 01b)`);
      const name = text.slice(0, sep);
      const isid = text.slice(sep + ISID_SEPARATOR.length);
      const problem = iscsiNameProblem(name);
      if (problem !== null) return new Malformed('ISCSI NAME', name, problem);
      if (!ISID_PATTERN.test(isid)) return new Malformed('ISCSI INITIATOR SESSION ID', isid, 'is not 12 hex digits');
      return { transportId: { protocol: 'iscsi', format: 'port', name, isid }, next };
    }
    default: {
      if (!allowRaw) {
        return new Malformed('PROTOCOL IDENTIFIER', protocolId, 'is not Fibre Channel (0h), iSCSI (5h) or SAS (6h)');
      }
      if (limit < FIXED_TRANSPORT_ID_LENGTH || limit % 4 !== 0) {
        return new Malformed('TRANSPORTID', whole(), 'is not a multiple of 4 bytes of at least 24 (SPC-4 7.6.4.1)', true);
      }
      return { transportId: { protocol: 'raw', protocolId, formatCode, bytes: whole().slice() }, next: offset + limit };
    }
  }
}

function parseAt(bytes: Uint8Array, offset: number, available: number | undefined): ParsedTransportId | Malformed {
  if (!Number.isInteger(offset) || offset < 0 || offset > bytes.length) {
    return new Malformed('offset', offset, `is outside the ${bytes.length} bytes given`);
  }
  if (available === undefined) return parseTransportId(bytes, offset, bytes.length - offset, false);
  if (!Number.isInteger(available) || available < 0 || offset + available > bytes.length) {
    return new Malformed('available length', available, `does not fit in the ${bytes.length - offset} bytes after offset ${offset}`);
  }
  return parseTransportId(bytes, offset, available, true);
}

/**
 * Decode the TransportID at `offset`; returns it and the offset just past it. `available` is the
 * length an enclosing structure gives it (READ FULL STATUS); only then is a TransportID of a protocol
 * other than FC, SAS or iSCSI kept (as `raw`, all `available` bytes) instead of rejected.
 */
export function decodeTransportId(bytes: Uint8Array, offset: number, available?: number): [TransportId, number] {
  const r = parseAt(bytes, offset, available);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return [r.transportId, r.next];
}

/*
 * Length of the TransportID at `offset` from its first bytes: 24 for FC and SAS, 4 + ADDITIONAL
 * LENGTH for iSCSI (SPC-4 7.6.4). Only the bytes that carry the length need to be present.
 */
function parseLength(bytes: Uint8Array, offset: number): number | Malformed {
  if (!Number.isInteger(offset) || offset < 0 || offset >= bytes.length) {
    return new Malformed('offset', offset, `leaves no byte of the ${bytes.length} given to read`);
  }
  const byte0 = bytes[offset]!;
  const formatCode = byte0 >> 6;
  switch (byte0 & 0x0f) {
    case ProtocolId.FC:
    case ProtocolId.SAS:
      if (formatCode !== FORMAT_DEVICE) return new Malformed('FORMAT CODE', formatCode, 'is not 00b, the only FC and SAS TransportID format');
      return FIXED_TRANSPORT_ID_LENGTH;
    case ProtocolId.ISCSI: {
      if (formatCode !== FORMAT_DEVICE && formatCode !== FORMAT_PORT) {
        return new Malformed('FORMAT CODE', formatCode, 'is not 00b or 01b, the iSCSI TransportID formats');
      }
      if (offset + 4 > bytes.length) return new Malformed('TRANSPORTID', bytes.subarray(offset), 'is too short to hold an iSCSI ADDITIONAL LENGTH');
      const additionalLength = readU16(bytes, offset + 2);
      if (additionalLength < ISCSI_MIN_ADDITIONAL_LENGTH || additionalLength % 4 !== 0) {
        return new Malformed('ADDITIONAL LENGTH', additionalLength, 'is not a multiple of 4 of at least 20 (SPC-4 7.6.4.6)');
      }
      return 4 + additionalLength;
    }
    default:
      return new Malformed('PROTOCOL IDENTIFIER', byte0 & 0x0f, 'is not Fibre Channel (0h), iSCSI (5h) or SAS (6h): its length is unknown');
  }
}

/** Length in bytes of the TransportID starting at `offset`. */
export function transportIdLength(bytes: Uint8Array, offset: number): number {
  const r = parseLength(bytes, offset);
  if (r instanceof Malformed) throw new DecodeError(STRUCTURE, r.field, r.value, r.why);
  return r;
}

function encodeProblem(field: string, value: unknown, why: string): EncodeError {
  return new EncodeError(STRUCTURE, field, value, why);
}

/** Encode a TransportID in the shortest form SPC-4 allows (iSCSI padded to a multiple of 4, at least 24 bytes). */
export function encodeTransportId(tid: TransportId): Uint8Array {
  switch (tid.protocol) {
    case 'fc': {
      if (!isU64(tid.nPortName)) throw encodeProblem('N_PORT_NAME', tid.nPortName, 'is not a 64-bit unsigned bigint');
      const out = new Uint8Array(FIXED_TRANSPORT_ID_LENGTH);
      out[0] = ProtocolId.FC;
      writeU64(out, 8, tid.nPortName);
      return out;
    }
    case 'sas': {
      if (!isU64(tid.sasAddress)) throw encodeProblem('SAS ADDRESS', tid.sasAddress, 'is not a 64-bit unsigned bigint');
      const out = new Uint8Array(FIXED_TRANSPORT_ID_LENGTH);
      out[0] = ProtocolId.SAS;
      writeU64(out, 4, tid.sasAddress);
      return out;
    }
    case 'iscsi': {
      const nameProblem = typeof tid.name === 'string' ? iscsiNameProblem(tid.name) : 'is not a string';
      if (nameProblem !== null) throw encodeProblem('ISCSI NAME', tid.name, nameProblem);
      let text = tid.name;
      if (tid.format === 'port') {
        if (typeof tid.isid !== 'string' || !ISID_PATTERN.test(tid.isid)) {
          throw encodeProblem('ISCSI INITIATOR SESSION ID', tid.isid, 'is not 12 hex digits');
        }
        text += ISID_SEPARATOR + tid.isid;
      } else if (tid.format !== 'device') {
        throw encodeProblem('FORMAT CODE', (tid as { format: unknown }).format, 'is not "device" (00b) or "port" (01b)');
      }
      const utf8 = utf8Encode(text);
      if (utf8 === null) throw encodeProblem('ISCSI NAME', tid.name, 'holds a lone surrogate, which UTF-8 cannot carry');
      // Null terminator, then null padding to a multiple of 4, at least 20 bytes (SPC-4 7.6.4.6).
      const additionalLength = Math.max(ISCSI_MIN_ADDITIONAL_LENGTH, (utf8.length + 1 + 3) & ~3);
      if (additionalLength > ISCSI_MAX_ADDITIONAL_LENGTH) {
        throw encodeProblem('ISCSI NAME', tid.name, `needs ${additionalLength} bytes, more than the 16-bit ADDITIONAL LENGTH carries`);
      }
      const out = new Uint8Array(4 + additionalLength);
      out[0] = ((tid.format === 'port' ? FORMAT_PORT : FORMAT_DEVICE) << 6) | ProtocolId.ISCSI;
      writeU16(out, 2, additionalLength);
      out.set(utf8, 4);
      return out;
    }
    case 'raw': {
      if (!isUint(tid.protocolId, 0xf) || tid.protocolId === ProtocolId.FC || tid.protocolId === ProtocolId.SAS || tid.protocolId === ProtocolId.ISCSI) {
        throw encodeProblem('PROTOCOL IDENTIFIER', tid.protocolId, 'is not a 4-bit protocol other than FC, iSCSI and SAS (those have typed forms)');
      }
      if (!isUint(tid.formatCode, 0b11)) throw encodeProblem('FORMAT CODE', tid.formatCode, 'is not 0..3');
      const raw = tid.bytes;
      if (!(raw instanceof Uint8Array) || raw.length < FIXED_TRANSPORT_ID_LENGTH || raw.length % 4 !== 0) {
        throw encodeProblem('TRANSPORTID', raw, 'is not a multiple of 4 bytes of at least 24 (SPC-4 7.6.4.1)');
      }
      const byte0 = raw[0]!;
      if ((byte0 & 0x0f) !== tid.protocolId || byte0 >> 6 !== tid.formatCode) {
        throw encodeProblem('TRANSPORTID', raw, `byte 0 does not carry protocol ${tid.protocolId} and format ${tid.formatCode}`);
      }
      return raw.slice();
    }
    default:
      throw encodeProblem('protocol', (tid as { protocol: unknown }).protocol, 'is not fc, sas, iscsi or raw');
  }
}

/**
 * Whether two TransportIDs name the same initiator: FC and SAS by value, iSCSI by name and ISID
 * compared case-insensitively (iSCSI names are case-folded by RFC 3722 stringprep; the ISID is hex),
 * raw by protocol, format and bytes. A device-format and a port-format iSCSI TransportID differ.
 */
export function transportIdEquals(a: TransportId, b: TransportId): boolean {
  switch (a.protocol) {
    case 'fc':
      return b.protocol === 'fc' && a.nPortName === b.nPortName;
    case 'sas':
      return b.protocol === 'sas' && a.sasAddress === b.sasAddress;
    case 'iscsi':
      if (b.protocol !== 'iscsi' || a.format !== b.format || a.name.toLowerCase() !== b.name.toLowerCase()) return false;
      return a.format === 'device' || (b.format === 'port' && a.isid.toLowerCase() === b.isid.toLowerCase());
    case 'raw':
      return (
        b.protocol === 'raw' &&
        a.protocolId === b.protocolId &&
        a.formatCode === b.formatCode &&
        a.bytes.length === b.bytes.length &&
        a.bytes.every((v, i) => v === b.bytes[i])
      );
  }
}

function wwn(v: bigint): string {
  return `0x${v.toString(16).padStart(16, '0')}`;
}

/** One-line form for logs: "sas:0x5001405f00000002", "fc:0x...", "iscsi:<name>[,i,0x<isid>]". */
export function formatTransportId(tid: TransportId): string {
  switch (tid.protocol) {
    case 'fc':
      return `fc:${wwn(tid.nPortName)}`;
    case 'sas':
      return `sas:${wwn(tid.sasAddress)}`;
    case 'iscsi':
      return tid.format === 'port' ? `iscsi:${tid.name}${ISID_SEPARATOR}${tid.isid}` : `iscsi:${tid.name}`;
    case 'raw':
      return `raw(protocol 0x${tid.protocolId.toString(16)}, format ${tid.formatCode}):${hex(tid.bytes)}`;
  }
}
