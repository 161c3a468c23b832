// The one errors module of prmux. Every error carries a stable `code` (match on it, never on the
// message); messages read "Cannot <action>: <what is wrong>" and name the field and the value seen.
// Pure: imported by the SCSI core, so it must not use Node APIs.

export const ErrorCode = {
  /** Bytes that do not form the wire structure being decoded. */
  DECODE: 'ERR_PRMUX_DECODE',
  /** A value that cannot be encoded (out of range, wrong length). */
  ENCODE: 'ERR_PRMUX_ENCODE',
  /** A pr-manager-helper client broke the protocol; its connection is closed. */
  PROTOCOL: 'ERR_PRMUX_PROTOCOL',
  /** multipathd (or the simulated one) failed or answered something unusable. */
  MULTIPATHD: 'ERR_PRMUX_MULTIPATHD',
  /** A configuration or command-line value is invalid. */
  CONFIG: 'ERR_PRMUX_CONFIG',
  /** A wait exceeded its bound. */
  TIMEOUT: 'ERR_PRMUX_TIMEOUT',
  /** An object was used after close()/destroy(). */
  CLOSED: 'ERR_PRMUX_CLOSED',
  /** A device could not be opened, identified or driven. */
  DEVICE: 'ERR_PRMUX_DEVICE',
  /** A simulated-SAN control request was refused. */
  SAN: 'ERR_PRMUX_SAN',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class PrmuxError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'PrmuxError';
  }
}

/** Render a received value for an error message: numbers in hex and decimal, bytes in hex. */
export function describeValue(value: unknown): string {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? `0x${value.toString(16)} (${value})` : String(value);
  if (typeof value === 'bigint') return `0x${value.toString(16)}`;
  if (value instanceof Uint8Array) {
    const shown = Array.from(value.subarray(0, 32), (b) => b.toString(16).padStart(2, '0')).join('');
    return value.length > 32 ? `${shown}... (${value.length} bytes)` : `${shown || '(empty)'} (${value.length} bytes)`;
  }
  return JSON.stringify(value) ?? String(value);
}

/**
 * A wire structure could not be decoded. `structure` names what was being decoded (e.g.
 * "PR OUT parameter list"), `field` the offending field, `value` what was received there.
 */
export class DecodeError extends PrmuxError {
  readonly structure: string;
  readonly field: string;
  readonly value: unknown;
  constructor(structure: string, field: string, value: unknown, why: string) {
    super(ErrorCode.DECODE, `Cannot decode ${structure}: ${field} ${describeValue(value)} ${why}`);
    this.name = 'DecodeError';
    this.structure = structure;
    this.field = field;
    this.value = value;
  }
}

/** A value handed to an encoder is outside what the wire structure can carry. */
export class EncodeError extends PrmuxError {
  readonly structure: string;
  readonly field: string;
  readonly value: unknown;
  constructor(structure: string, field: string, value: unknown, why: string) {
    super(ErrorCode.ENCODE, `Cannot encode ${structure}: ${field} ${describeValue(value)} ${why}`);
    this.name = 'EncodeError';
    this.structure = structure;
    this.field = field;
    this.value = value;
  }
}

/** A pr-manager-helper client violated the protocol. */
export class ProtocolError extends PrmuxError {
  readonly field: string;
  readonly value: unknown;
  constructor(field: string, value: unknown, why: string) {
    super(ErrorCode.PROTOCOL, `Cannot serve pr-helper request: ${field} ${describeValue(value)} ${why}`);
    this.name = 'ProtocolError';
    this.field = field;
    this.value = value;
  }
}

export function isPrmuxError(e: unknown, code?: ErrorCode): e is PrmuxError {
  return e instanceof PrmuxError && (code === undefined || e.code === code);
}
