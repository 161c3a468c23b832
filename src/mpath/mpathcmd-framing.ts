// libmpathcmd message framing, as multipathd's Unix socket speaks it (multipath-tools 0.9.4
// libmpathcmd/mpath_cmd.c mpath_send_cmd / mpath_recv_reply, multipathd/uxlsnr.c):
//
//   +--------------------------------+---------------------------------------+
//   | length: size_t, native endian  | length bytes: the text, then one NUL  |
//   | (8 bytes little endian, x86-64)| (the length counts the NUL)           |
//   +--------------------------------+---------------------------------------+
//
// Commands and replies use the same frame. Both peers treat the bytes as a C string: multipathd
// reads the command into a zeroed buffer and uses it up to the first NUL; libmpathcmd overwrites
// the last byte of a reply with NUL. So the text of a frame is its bytes up to the first NUL.
// Limits seen in 0.9.4: multipathd resets a client whose command length is 0 or > 512
// (_MAX_CMD_LEN); libmpathcmd refuses a reply length of 0 or >= 32 MiB (MAX_REPLY_LEN).
//
// Pure: no Node APIs (Uint8Array only, own UTF-8 codec so this compiles without DOM/Node types).

import { DecodeError, EncodeError } from '../errors.js';

/** sizeof(size_t) on x86-64, the only ABI multipathd is deployed on here. */
export const SIZE_T_BYTES = 8;
/** multipathd 0.9.4 resets the connection when a command's length field exceeds this (uxlsnr.c). */
export const MULTIPATHD_MAX_COMMAND_BYTES = 512;
/** libmpathcmd 0.9.4 rejects a reply whose length field is >= this (mpath_cmd.h MAX_REPLY_LEN). */
export const LIBMPATHCMD_MAX_REPLY_BYTES = 32 * 1024 * 1024;
/** libmpathcmd's default reply timeout in ms (DEFAULT_REPLY_TIMEOUT), also multipathd's uxsock_timeout. */
export const LIBMPATHCMD_DEFAULT_TIMEOUT_MS = 4000;
/** Default bound for a decoded command frame (generous: a real multipathd caps at 512). */
export const DEFAULT_MAX_COMMAND_BYTES = 64 * 1024;
/** Default bound for a decoded reply frame (show config on a large host stays far below). */
export const DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// UTF-8 (multipathd's strings are bytes; in practice ASCII). Invalid input decodes to U+FFFD.

export function utf8Encode(text: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // lone surrogate
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  }
  return Uint8Array.from(out);
}

/** Number of bytes `text` takes in UTF-8: what C's strlen() would count. */
export function utf8Length(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

export function utf8Decode(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i] ?? 0;
    let cp = 0xfffd;
    let size = 1;
    if (b < 0x80) cp = b;
    else {
      // Continuation bytes a lead byte announces (0 = not a valid lead byte).
      const need = b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;
      if (need > 0 && i + need < bytes.length) {
        let v = b & (0x3f >> need);
        let ok = true;
        for (let k = 1; ok && k <= need; k++) {
          const cb = bytes[i + k] ?? 0;
          if ((cb & 0xc0) !== 0x80) ok = false;
          else v = (v << 6) | (cb & 0x3f);
        }
        const min = need === 1 ? 0x80 : need === 2 ? 0x800 : 0x10000;
        if (ok && v >= min && v <= 0x10ffff && !(v >= 0xd800 && v <= 0xdfff)) {
          cp = v;
          size = need + 1;
        }
      }
    }
    out += String.fromCodePoint(cp);
    i += size;
  }
  return out;
}

/** The C-string view of a frame: bytes up to the first NUL (or all of them), as text. */
export function cStringText(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return utf8Decode(nul === -1 ? bytes : bytes.subarray(0, nul));
}

// ---------------------------------------------------------------------------------------------
// Encoder

/**
 * Frame one message: the 8-byte little-endian length (text bytes + 1) then the text and a NUL.
 * `maxBytes` bounds the length field (default: the reply bound). A text containing NUL is refused:
 * the peer would silently cut it there.
 */
export function encodeMessage(text: string | Uint8Array, maxBytes: number = DEFAULT_MAX_REPLY_BYTES): Uint8Array {
  const body = typeof text === 'string' ? utf8Encode(text) : text;
  if (body.indexOf(0) !== -1) throw new EncodeError('libmpathcmd message', 'text', body, 'contains a NUL byte, which the peer would read as the end');
  const length = body.length + 1;
  if (length > maxBytes) throw new EncodeError('libmpathcmd message', 'length', length, `exceeds the bound of ${maxBytes} bytes`);
  const frame = new Uint8Array(SIZE_T_BYTES + length);
  writeSizeT(frame, length);
  frame.set(body, SIZE_T_BYTES);
  // frame[last] is already 0: the terminating NUL counted by the length.
  return frame;
}

function writeSizeT(target: Uint8Array, value: number): void {
  const view = new DataView(target.buffer, target.byteOffset, SIZE_T_BYTES);
  view.setUint32(0, value % 0x1_0000_0000, true);
  view.setUint32(4, Math.floor(value / 0x1_0000_0000), true);
}

// ---------------------------------------------------------------------------------------------
// Incremental decoder

export interface FramedMessage {
  /** The frame's bytes without its final (terminator) byte. */
  payload: Uint8Array;
  /** C-string text of the frame: the bytes before the first NUL. */
  text: string;
  /** Whether the final byte was the NUL the length promises (always true from a well-behaved peer). */
  terminated: boolean;
}

export interface DecodeStep {
  /** Messages completed by this chunk, in order (also those before an error in the same chunk). */
  messages: FramedMessage[];
  /** Set once the stream is unusable; every later feed() returns the same error and no messages. */
  error: DecodeError | null;
}

export interface FrameDecoderOptions {
  /** Largest accepted length field (it counts the NUL). */
  maxMessageBytes: number;
  /** Name used in errors, e.g. "multipathd reply". */
  structure?: string;
  /** Treat a frame whose last byte is not NUL as an error (default false: both C peers tolerate it). */
  requireTerminator?: boolean;
}

type DecoderState =
  | { kind: 'length'; have: number; header: Uint8Array }
  | { kind: 'body'; length: number; have: number; chunks: Uint8Array[] }
  | { kind: 'failed'; error: DecodeError };

/**
 * Decoder state machine: `length` collects the 8 header bytes, `body` collects exactly `length`
 * bytes, then back to `length`; `failed` is terminal. Chunk boundaries never matter. Memory is
 * bounded by maxMessageBytes + 8: the length is checked before any body byte is kept.
 */
export class MpathFrameDecoder {
  readonly #max: number;
  readonly #structure: string;
  readonly #requireTerminator: boolean;
  #state: DecoderState = { kind: 'length', have: 0, header: new Uint8Array(SIZE_T_BYTES) };

  constructor(options: FrameDecoderOptions) {
    if (!Number.isSafeInteger(options.maxMessageBytes) || options.maxMessageBytes < 1) {
      throw new EncodeError('libmpathcmd decoder options', 'maxMessageBytes', options.maxMessageBytes, 'must be a positive integer');
    }
    this.#max = options.maxMessageBytes;
    this.#structure = options.structure ?? 'libmpathcmd message';
    this.#requireTerminator = options.requireTerminator ?? false;
  }

  /** True while part of a frame has been received: a stall here is a partial frame. */
  get inFrame(): boolean {
    const s = this.#state;
    return (s.kind === 'length' && s.have > 0) || s.kind === 'body';
  }

  /** Bytes of the current partial frame held (header included). */
  get bufferedBytes(): number {
    const s = this.#state;
    if (s.kind === 'length') return s.have;
    if (s.kind === 'body') return SIZE_T_BYTES + s.have;
    return 0;
  }

  get failed(): DecodeError | null {
    return this.#state.kind === 'failed' ? this.#state.error : null;
  }

  feed(chunk: Uint8Array): DecodeStep {
    const messages: FramedMessage[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      const s = this.#state;
      if (s.kind === 'failed') break;
      if (s.kind === 'length') {
        const take = Math.min(SIZE_T_BYTES - s.have, chunk.length - offset);
        s.header.set(chunk.subarray(offset, offset + take), s.have);
        s.have += take;
        offset += take;
        if (s.have === SIZE_T_BYTES) this.#onHeader(s.header);
        continue;
      }
      const take = Math.min(s.length - s.have, chunk.length - offset);
      s.chunks.push(chunk.subarray(offset, offset + take));
      s.have += take;
      offset += take;
      if (s.have === s.length) {
        const message = this.#onBody(s.chunks, s.length);
        if (message) messages.push(message);
      }
    }
    return { messages, error: this.failed };
  }

  /** The stream ended: an error when it ended inside a frame. The decoder is then failed. */
  finish(): DecodeError | null {
    const s = this.#state;
    if (s.kind === 'failed') return s.error;
    if (s.kind === 'length' && s.have === 0) return null;
    const error =
      s.kind === 'length'
        ? new DecodeError(this.#structure, 'length', s.have, `is cut short: the stream ended after ${s.have} of ${SIZE_T_BYTES} length bytes`)
        : new DecodeError(this.#structure, 'data', s.have, `is cut short: the stream ended after ${s.have} of ${s.length} bytes`);
    this.#state = { kind: 'failed', error };
    return error;
  }

  #onHeader(header: Uint8Array): void {
    const view = new DataView(header.buffer, header.byteOffset, SIZE_T_BYTES);
    const low = view.getUint32(0, true);
    const high = view.getUint32(4, true);
    if (high !== 0 || low > this.#max) {
      const value = high === 0 ? low : (BigInt(high) << 32n) | BigInt(low);
      this.#fail(new DecodeError(this.#structure, 'length', value, `exceeds the bound of ${this.#max} bytes`));
      return;
    }
    if (low === 0) {
      // Both peers refuse 0: the length always counts at least the terminating NUL.
      this.#fail(new DecodeError(this.#structure, 'length', 0, 'must count the terminating NUL (at least 1)'));
      return;
    }
    this.#state = { kind: 'body', length: low, have: 0, chunks: [] };
  }

  #onBody(chunks: Uint8Array[], length: number): FramedMessage | null {
    const body = chunks.length === 1 && chunks[0] ? chunks[0] : concat(chunks, length);
    const last = body[length - 1];
    if (last !== 0 && this.#requireTerminator) {
      this.#fail(new DecodeError(this.#structure, 'terminator', last, 'must be a NUL byte'));
      return null;
    }
    this.#state = { kind: 'length', have: 0, header: new Uint8Array(SIZE_T_BYTES) };
    const payload = body.subarray(0, length - 1);
    return { payload, text: cStringText(payload), terminated: last === 0 };
  }

  #fail(error: DecodeError): void {
    this.#state = { kind: 'failed', error };
  }
}

function concat(chunks: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
