// The pure SCSI persistent-reservation core: constants, value types and the wire codecs.
// (bytes.ts's Malformed is internal to the codecs and not re-exported.)

export * from './constants.js';
export type * from './types.js';
export {
  hex,
  fromHex,
  readU8,
  readU16,
  readU32,
  readU64,
  writeU8,
  writeU16,
  writeU32,
  writeU64,
  keyToHex,
  bytesEqual,
  U64_MAX,
} from './bytes.js';
export * from './cdb.js';
export {
  decodeTransportId,
  encodeTransportId,
  transportIdLength,
  transportIdEquals,
  formatTransportId,
} from './transport-id.js';
export * from './prout-params.js';
export * from './prin-data.js';
export * from './sense.js';
export * from './outcome.js';
