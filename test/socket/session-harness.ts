// Test harness for PrHelperSession: an fd ledger, fake timers, a reply decoder on the output and a
// scriptable handler. Every fd the test hands the session must end "closed by session" or
// "handed" (then the fake handler closes it) exactly once; the ledger throws on a double close.

import assert from 'node:assert/strict';
import { setImmediate as settle } from 'node:timers/promises';
import type { ProtocolError } from '../../src/errors.js';
import { Opcode, ScsiStatus } from '../../src/scsi/constants.js';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { PrHelperSession, type PrHelperAnswer, type PrHelperRequest, type PrHelperSessionLimits } from '../../src/socket/pr-helper-session.js';
import { PrHelperReplyDecoder, type PrHelperReply, encodeFeatures, prHelperTransferLength } from '../../src/socket/pr-helper-wire.js';

export type FdState = 'open' | 'closed-by-session' | 'handed' | 'closed-by-handler';

export class FdLedger {
  readonly #state = new Map<number, FdState>();
  #next = 1000;

  open(): number {
    const fd = this.#next++;
    this.#state.set(fd, 'open');
    return fd;
  }

  sessionClose(fd: number): void {
    const s = this.#state.get(fd);
    assert.equal(s, 'open', `session closed fd ${fd} in state ${String(s)}`);
    this.#state.set(fd, 'closed-by-session');
  }

  hand(fd: number): void {
    const s = this.#state.get(fd);
    assert.equal(s, 'open', `session handed fd ${fd} in state ${String(s)}`);
    this.#state.set(fd, 'handed');
  }

  handlerClose(fd: number): void {
    assert.equal(this.#state.get(fd), 'handed');
    this.#state.set(fd, 'closed-by-handler');
  }

  state(fd: number): FdState | undefined {
    return this.#state.get(fd);
  }

  /** Fds neither closed by the session nor closed by the handler. */
  stillOpen(): number[] {
    return [...this.#state].filter(([, s]) => s === 'open' || s === 'handed').map(([fd]) => fd);
  }
}

export class FakeTimers {
  readonly timers: { ms: number; fn: () => void; active: boolean }[] = [];

  setTimer = (ms: number, fn: () => void): (() => void) => {
    const t = { ms, fn, active: true };
    this.timers.push(t);
    return () => {
      t.active = false;
    };
  };

  active(): { ms: number; fn: () => void; active: boolean }[] {
    return this.timers.filter((t) => t.active);
  }

  fireAll(): void {
    for (const t of this.active()) {
      t.active = false;
      t.fn();
    }
  }
}

export type Handler = (req: PrHelperRequest, h: Harness) => Promise<PrHelperAnswer>;

/** Default answer: GOOD; PR IN data is 300 bytes of a pattern derived from the CDB (to test truncation). */
export function patternData(req: PrHelperRequest): Uint8Array {
  const out = new Uint8Array(300);
  for (let i = 0; i < out.length; i++) out[i] = (req.cdb[1]! * 7 + i) & 0xff;
  return out;
}

export const goodHandler: Handler = async (req) => ({ status: ScsiStatus.GOOD, sense: new Uint8Array(0), data: patternData(req) });

export class Harness {
  readonly ledger = new FdLedger();
  readonly timers = new FakeTimers();
  readonly decoder = new PrHelperReplyDecoder();
  readonly replies: PrHelperReply[] = [];
  readonly requests: { cdb: Uint8Array; dataOut: Uint8Array | null }[] = [];
  readonly session: PrHelperSession;
  writtenAfterClose = 0;
  closeReason: ProtocolError | null | undefined = undefined;
  closeCount = 0;
  resumes = 0;
  /** Handler closes the fd before answering unless `keepFds` (then the test closes them). */
  handler: Handler;
  writeResult: boolean = true;

  constructor(opts: { handler?: Handler; limits?: PrHelperSessionLimits; start?: boolean; isReadOnlyFd?: (fd: number) => boolean } = {}) {
    this.handler = opts.handler ?? goodHandler;
    this.session = new PrHelperSession({
      ...(opts.isReadOnlyFd !== undefined ? { isReadOnlyFd: opts.isReadOnlyFd } : {}),
      onWrite: (bytes) => {
        if (this.closeCount > 0) this.writtenAfterClose++;
        this.replies.push(...this.decoder.push(bytes));
        return this.writeResult;
      },
      onRequest: (req) => {
        this.ledger.hand(req.fd);
        this.requests.push({ cdb: req.cdb.slice(), dataOut: req.dataOut === null ? null : req.dataOut.slice() });
        return this.handler(req, this).finally(() => this.ledger.handlerClose(req.fd));
      },
      onClose: (reason) => {
        this.closeCount++;
        this.closeReason = reason;
      },
      closeFd: (fd) => this.ledger.sessionClose(fd),
      setTimer: this.timers.setTimer,
      onResume: () => this.resumes++,
      ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
    });
    if (opts.start !== false) this.session.start();
  }

  /** Let handler promises settle. */
  async settle(): Promise<void> {
    for (let i = 0; i < 5; i++) await settle();
  }
}

// --- Request building -------------------------------------------------------------------------

export interface WireRequest {
  readonly label: string;
  /** 16 CDB bytes followed by the parameter list (if any), as the client sends them. */
  readonly bytes: Uint8Array;
  /** How many fds the client attaches to the CDB's first chunk (1 for a well-formed request). */
  readonly fdCount: number;
  /** Expected outcome when sent alone on a fresh connection. */
  readonly expect: 'answered' | 'local-answer' | 'violation';
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function prIn(serviceAction: number, allocationLength: number, label = `PR IN sa=${serviceAction} alloc=${allocationLength}`): WireRequest {
  return { label, bytes: encodePrInCdb({ serviceAction, allocationLength }, 16), fdCount: 1, expect: 'answered' };
}

export function prOut(serviceAction: number, params: Uint8Array, label = `PR OUT sa=${serviceAction} len=${params.length}`): WireRequest {
  const cdb = encodePrOutCdb({ serviceAction, scope: 0, type: 1, parameterListLength: params.length }, 16);
  return { label, bytes: cat(cdb, params), fdCount: 1, expect: params.length < 24 ? 'local-answer' : 'answered' };
}

export function params(length: number, seed = 1): Uint8Array {
  const p = new Uint8Array(length);
  for (let i = 0; i < length; i++) p[i] = (seed * 31 + i * 5) & 0xff;
  return p;
}

export function withFds(r: WireRequest, fdCount: number): WireRequest {
  return { ...r, label: `${r.label} with ${fdCount} fds`, fdCount, expect: 'violation' };
}

export function rawCdb(cdb: Uint8Array, label: string): WireRequest {
  const padded = new Uint8Array(16);
  padded.set(cdb);
  return { label, bytes: padded, fdCount: 1, expect: 'violation' };
}

/** Every request shape the session distinguishes. */
export function requestCatalogue(): WireRequest[] {
  const badOpcode = new Uint8Array(16);
  badOpcode[0] = Opcode.INQUIRY;
  const bigOut = encodePrOutCdb({ serviceAction: 0, parameterListLength: 8193 }, 16);
  const wideOut = encodePrOutCdb({ serviceAction: 0, parameterListLength: 0x0001_0018 }, 16);
  return [
    prIn(0, 24, 'READ KEYS alloc 24 (handler data truncated)'),
    prIn(1, 8192, 'READ RESERVATION alloc 8192'),
    prIn(2, 0, 'REPORT CAPABILITIES alloc 0'),
    prIn(3, 300, 'READ FULL STATUS alloc 300'),
    prOut(0, params(24), 'REGISTER 24 bytes'),
    prOut(0, params(52, 2), 'REGISTER SPEC_I_PT 52 bytes'),
    prOut(7, params(8192, 3), 'REGISTER AND MOVE 8192 bytes'),
    prOut(1, params(8, 4), 'RESERVE 8 bytes (parameter list length error)'),
    prOut(1, new Uint8Array(0), 'RESERVE 0 bytes (parameter list length error)'),
    withFds(prIn(0, 24), 0),
    withFds(prOut(0, params(24)), 2),
    rawCdb(badOpcode, 'INQUIRY opcode'),
    rawCdb(encodePrInCdb({ serviceAction: 0, allocationLength: 8193 }, 16), 'PR IN alloc 8193'),
    rawCdb(bigOut, 'PR OUT length 8193'),
    rawCdb(wideOut, 'PR OUT length 0x00010018 (bytes 5-6 set)'),
  ];
}

export interface Chunk {
  readonly bytes: Uint8Array;
  readonly fdCount: number;
}

/**
 * Cut the client byte stream (feature word, then the requests) at the given offsets; each
 * request's fds ride on the chunk that holds the CDB's first byte, as Linux delivers them.
 */
export function split(requests: readonly WireRequest[], cuts: readonly number[], features = 0): { chunks: Chunk[]; cdbStarts: number[] } {
  const stream = cat(encodeFeatures(features), ...requests.map((r) => r.bytes));
  const cdbStarts: number[] = [];
  let o = 4;
  for (const r of requests) {
    cdbStarts.push(o);
    o += r.bytes.length;
  }
  const bounds = [...new Set([0, ...cuts.filter((c) => c > 0 && c < stream.length), stream.length])].sort((a, b) => a - b);
  const chunks: Chunk[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const from = bounds[i]!;
    const to = bounds[i + 1]!;
    let fdCount = 0;
    requests.forEach((r, k) => {
      const s = cdbStarts[k]!;
      if (s >= from && s < to) fdCount += r.fdCount;
    });
    chunks.push({ bytes: stream.slice(from, to), fdCount });
  }
  return { chunks, cdbStarts };
}

/** Feed chunks (opening ledger fds for each), then end the input and let everything settle. */
export async function run(h: Harness, chunks: readonly Chunk[], opts: { end?: boolean } = {}): Promise<void> {
  for (const c of chunks) {
    const fds = Array.from({ length: c.fdCount }, () => h.ledger.open());
    h.session.push(c.bytes, fds);
    await h.settle();
  }
  if (opts.end !== false) h.session.end();
  await h.settle();
}

/** The reply the default handler produces for a request sent alone. */
export function transferLength(r: WireRequest): number {
  return prHelperTransferLength(r.bytes.subarray(0, 16)) ?? -1;
}
