// One pr-manager-helper connection as a pure state machine: fed (bytes, fds) chunks in arrival
// order, it drives callbacks. No sockets, no timers of its own (an injected setTimer), no Node APIs.
//
// Wire grammar (QEMU docs/interop/pr-helper.rst, scsi/qemu-pr-helper.c prh_co_entry; integers
// big-endian):
//
//   session   := HELLO FEATURES request*
//   HELLO     := u32 0                      helper -> client, written by start()
//   FEATURES  := u32 bits                   client -> helper; a bit prmux lacks      => violation
//   request   := CDB [PARAM]                client -> helper
//   CDB       := 16 bytes + exactly one fd  zero fds, or two or more               => violation
//                byte 0 is 5Eh or 5Fh       anything else                           => violation
//                transfer length <= 8192    PR IN bytes 7-8, PR OUT bytes 5-8       => violation
//   PARAM     := PR OUT only, exactly PARAMETER LIST LENGTH bytes
//   reply     := u32 status | u32 size | 96 bytes sense | size bytes payload   helper -> client
//                size > 0 only for PR IN answered GOOD, and <= ALLOCATION LENGTH (truncated)
//
// A PR OUT whose PARAMETER LIST LENGTH is under 24 (the basic parameter list, SPC-4 6.16.3) is
// answered CHECK CONDITION, ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (5/1A/00) without calling
// onRequest, and the connection is kept, as qemu-pr-helper does once it has read the data.
//
// Which request an fd belongs to. Linux delivers SCM_RIGHTS with the recvmsg() that reads the
// first byte of the sendmsg() that carried them, and ends that recvmsg() within that message
// (unix_stream_read_generic stops after a message with fds). QEMU sends each CDB and its fd in one
// sendmsg(), so a chunk's fds belong to the one CDB that starts inside the chunk. Fds with a chunk
// in which no CDB starts, or in which several CDBs start, cannot be attributed safely (handing a
// PR command the wrong device is the worst outcome): they are closed at once and the connection
// ends with a violation placed before the first CDB of that chunk. Requests parsed before a
// violation are still answered, in order; then the connection closes.
//
// Ordering and bounds. Requests are parsed eagerly into a queue and executed one at a time, in
// order (QEMU never pipelines, but a client that does is answered in order). Backpressure is the
// read hint: readHint() is how many bytes the session accepts next, 0 meaning "stop reading"; it
// is 0 once maxPendingRequests requests are parsed and unanswered, or while the peer does not
// take our output (onWrite returned false), and otherwise the room left under maxBufferedBytes
// (the pending requests plus the partial frame), which by default is one CDB, one 8192-byte
// parameter list and 4 KiB of slack. A caller that pushes more than the hint is still served
// correctly; pushing past maxPendingRequests unanswered requests is a violation (the hard bound).
//
// Timeouts. A frame (the feature word, counted from start(), or a request, counted from its first
// byte) must be complete within frameTimeoutMs while the session wants input; otherwise it is a
// violation. A connection with no partial frame is never cut, however long it idles. The timer is
// stopped while readHint() is 0, since then it is prmux, not the client, that holds the frame up.
//
// Fd ownership. The session owns every fd it is handed until it passes one to onRequest, which
// then owns it (and must close it). Any fd it still owns when it closes, or that it cannot
// attribute, it closes exactly once through closeFd. After onClose nothing more is written.

import { ProtocolError } from '../errors.js';
import { Asc, Opcode, ScsiStatus, SenseKey } from '../scsi/constants.js';
import { buildSense } from '../scsi/sense.js';
import { type Logger, nullLogger } from './logger.js';
import {
  PR_HELPER_CDB_SIZE,
  PR_HELPER_FEATURES_SIZE,
  PR_HELPER_MAX_DATA,
  PR_HELPER_SENSE_SIZE,
  PR_HELPER_SUPPORTED_FEATURES,
  decodeFeatures,
  encodeFeatures,
  encodeReply,
  prHelperTransferLength,
} from './pr-helper-wire.js';

/** SPC-4 6.16.3: the basic PR OUT parameter list is 24 bytes. */
const PR_OUT_BASIC_PARAMETER_LIST = 24;

export interface PrHelperRequest {
  /** The 16 CDB bytes exactly as received. */
  readonly cdb: Uint8Array;
  /** The device fd sent with the CDB; the handler owns it and must close it. */
  readonly fd: number;
  /** PR OUT parameter list; null for PR IN. */
  readonly dataOut: Uint8Array | null;
}

export interface PrHelperAnswer {
  readonly status: number;
  /** At most 96 bytes are sent (zero-padded); more are cut. */
  readonly sense: Uint8Array;
  /** Data-in; sent only for PR IN with GOOD status, cut to the ALLOCATION LENGTH. */
  readonly data: Uint8Array;
}

export type SetTimer = (ms: number, fn: () => void) => () => void;

export interface PrHelperSessionLimits {
  /** Requests parsed and not yet answered (the one in flight included). Default 16. */
  readonly maxPendingRequests?: number;
  /** Bytes of pending requests plus the partial frame above which readHint() is 0. */
  readonly maxBufferedBytes?: number;
  /** How long a started frame may stay incomplete while the session wants input. Default 30 s. */
  readonly frameTimeoutMs?: number;
}

export const DEFAULT_SESSION_LIMITS: Required<PrHelperSessionLimits> = {
  maxPendingRequests: 16,
  maxBufferedBytes: PR_HELPER_CDB_SIZE + PR_HELPER_MAX_DATA + 4096,
  frameTimeoutMs: 30_000,
};

export interface PrHelperSessionOptions {
  /** Bytes for the peer. Return false when the peer is not keeping up; call outputDrained() later. */
  onWrite(bytes: Uint8Array): boolean | void;
  onRequest(request: PrHelperRequest): Promise<PrHelperAnswer>;
  /** Called exactly once: null for an orderly end, the violation otherwise. */
  onClose(reason: ProtocolError | null): void;
  closeFd(fd: number): void;
  /** Whether a received fd was opened read-only (fcntl F_GETFL); absent: treated as writable. */
  isReadOnlyFd?: (fd: number) => boolean;
  setTimer: SetTimer;
  /** readHint() went from 0 to more: the caller should read again. */
  onResume?: () => void;
  logger?: Logger | null;
  limits?: PrHelperSessionLimits;
}

interface Frame {
  readonly cdb: Uint8Array;
  cdbHave: number;
  /** Fds attributed to this CDB (exactly one for a valid request). */
  readonly fds: number[];
  /** Set once the CDB is complete and valid. */
  transferLength: number;
  param: Uint8Array | null;
  paramHave: number;
}

type Entry =
  | { readonly kind: 'request'; readonly frame: Frame; readonly held: number }
  | { readonly kind: 'answer'; readonly bytes: Uint8Array; readonly held: number };

type Phase = 'features' | 'cdb' | 'param' | 'stopped';

interface Violation {
  readonly error: ProtocolError;
  /** Index into the chunk's completed frames before which the violation takes effect. */
  readonly at: number;
}

function newFrame(): Frame {
  return { cdb: new Uint8Array(PR_HELPER_CDB_SIZE), cdbHave: 0, fds: [], transferLength: 0, param: null, paramHave: 0 };
}

function frameSize(f: Frame): number {
  return PR_HELPER_CDB_SIZE + (f.param?.length ?? 0);
}

function senseBytes(key: number, a: { asc: number; ascq: number }): Uint8Array {
  return buildSense({ key, asc: a.asc, ascq: a.ascq });
}

export class PrHelperSession {
  readonly #opts: PrHelperSessionOptions;
  readonly #limits: Required<PrHelperSessionLimits>;
  readonly #log: Logger;

  #phase: Phase = 'features';
  readonly #featBuf = new Uint8Array(PR_HELPER_FEATURES_SIZE);
  #featHave = 0;
  #frame: Frame | null = null;

  readonly #queue: Entry[] = [];
  #inFlight: Entry | null = null;
  #held = 0;

  #terminal: ProtocolError | null = null;
  #inputEnded = false;
  #closed = false;
  #started = false;
  #outputBlocked = false;
  #paused = false;

  #cancelTimer: (() => void) | null = null;
  /** What the running timer guards: the feature word or a request frame. */
  #timerFor: Frame | 'features' | null = null;

  constructor(opts: PrHelperSessionOptions) {
    this.#opts = opts;
    this.#limits = { ...DEFAULT_SESSION_LIMITS, ...opts.limits };
    this.#log = opts.logger ?? nullLogger;
    const l = this.#limits;
    if (!(l.maxPendingRequests >= 1) || !(l.maxBufferedBytes >= PR_HELPER_CDB_SIZE + PR_HELPER_MAX_DATA) || !(l.frameTimeoutMs > 0)) {
      throw new RangeError(`Cannot create pr-helper session: limits ${JSON.stringify(l)} are out of range`);
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Requests parsed and not yet answered, the one in flight included. */
  get pendingRequests(): number {
    return this.#queue.length + (this.#inFlight !== null ? 1 : 0);
  }

  /** Write the helper's feature word and start the handshake clock. */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#write(encodeFeatures(PR_HELPER_SUPPORTED_FEATURES));
    this.#updateFlow();
  }

  /** How many bytes the session accepts next; 0 means stop reading. */
  readHint(): number {
    if (this.#closed || this.#terminal !== null || this.#inputEnded || this.#outputBlocked) return 0;
    if (this.pendingRequests >= this.#limits.maxPendingRequests) return 0;
    const partial = this.#frame !== null ? frameSize(this.#frame) : 0;
    return Math.max(0, this.#limits.maxBufferedBytes - this.#held - partial);
  }

  wantsMoreInput(): boolean {
    return this.readHint() > 0;
  }

  /**
   * One received chunk and the fds its recvmsg() carried. The bytes are copied; the caller may
   * reuse its buffer. Input after the session stopped reading is dropped and its fds closed.
   */
  push(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.#closed || this.#terminal !== null || this.#inputEnded || this.#phase === 'stopped') {
      this.#closeFds(fds);
      return;
    }
    const completed: Frame[] = [];
    /** Frames whose first CDB byte is in this chunk, in order. */
    const starts: Frame[] = [];
    let violation: Violation | null = null;
    let i = 0;
    while (i < bytes.length && violation === null) {
      switch (this.#phase) {
        case 'features': {
          const take = Math.min(PR_HELPER_FEATURES_SIZE - this.#featHave, bytes.length - i);
          this.#featBuf.set(bytes.subarray(i, i + take), this.#featHave);
          this.#featHave += take;
          i += take;
          if (this.#featHave === PR_HELPER_FEATURES_SIZE) {
            const bits = decodeFeatures(this.#featBuf);
            if ((bits & ~PR_HELPER_SUPPORTED_FEATURES) !== 0) {
              violation = { error: new ProtocolError('requested features', bits, 'ask for feature bits prmux does not support'), at: 0 };
            } else {
              this.#phase = 'cdb';
            }
          }
          break;
        }
        case 'cdb': {
          if (this.#frame === null) {
            this.#frame = newFrame();
            starts.push(this.#frame);
          }
          const f = this.#frame;
          const take = Math.min(PR_HELPER_CDB_SIZE - f.cdbHave, bytes.length - i);
          f.cdb.set(bytes.subarray(i, i + take), f.cdbHave);
          f.cdbHave += take;
          i += take;
          if (f.cdbHave < PR_HELPER_CDB_SIZE) break;
          const length = prHelperTransferLength(f.cdb);
          if (length === null) {
            violation = {
              error: new ProtocolError('CDB operation code', f.cdb[0]!, 'is not PERSISTENT RESERVE IN (5Eh) or OUT (5Fh)'),
              at: completed.length,
            };
          } else if (length > PR_HELPER_MAX_DATA) {
            violation = { error: new ProtocolError('CDB transfer length', length, `exceeds ${PR_HELPER_MAX_DATA} bytes`), at: completed.length };
          } else {
            f.transferLength = length;
            if (f.cdb[0] === Opcode.PERSISTENT_RESERVE_OUT && length > 0) {
              f.param = new Uint8Array(length);
              this.#phase = 'param';
            } else {
              completed.push(f);
              this.#frame = null;
            }
          }
          break;
        }
        case 'param': {
          const f = this.#frame!;
          const param = f.param!;
          const take = Math.min(param.length - f.paramHave, bytes.length - i);
          param.set(bytes.subarray(i, i + take), f.paramHave);
          f.paramHave += take;
          i += take;
          if (f.paramHave === param.length) {
            completed.push(f);
            this.#frame = null;
            this.#phase = 'cdb';
          }
          break;
        }
      }
    }

    // Attribute the chunk's fds (see the header comment).
    if (fds.length > 0) {
      if (starts.length === 1) {
        starts[0]!.fds.push(...fds);
      } else {
        this.#closeFds(fds);
        const first = starts[0];
        const idx = first === undefined ? -1 : completed.indexOf(first);
        const at = first === undefined || idx < 0 ? completed.length : idx;
        const why =
          starts.length === 0
            ? 'arrived with bytes that do not start a CDB'
            : `arrived with one read in which ${starts.length} CDBs start, so which CDB they belong to is ambiguous`;
        if (violation === null || at < violation.at) violation = { error: new ProtocolError('file descriptors', fds.length, why), at };
      }
    }

    // Queue the complete requests, in order, up to the first violation.
    const upTo = violation?.at ?? completed.length;
    let k = 0;
    for (; k < upTo; k++) {
      const f = completed[k]!;
      const v = this.#checkFrame(f);
      if (v !== null) {
        violation = { error: v, at: k };
        break;
      }
      this.#enqueue(f);
    }
    if (violation !== null) this.#stopParsing(violation.error, completed.slice(k));
    this.#pump();
    this.#updateFlow();
  }

  /** The peer finished sending (EOF): answer what is queued, then close with no error. */
  end(): void {
    if (this.#closed || this.#inputEnded) return;
    this.#inputEnded = true;
    this.#discardPartial('the peer ended the connection');
    this.#phase = 'stopped';
    this.#pump();
    this.#updateFlow();
  }

  /** Orderly local close: stop reading, answer what is queued and in flight, then close. */
  close(): void {
    this.end();
  }

  /** Abort now: close every fd the session owns, write nothing more, drop the in-flight answer. */
  destroy(reason: ProtocolError | null = null): void {
    if (this.#closed) return;
    this.#discardPartial(null);
    for (const e of this.#queue.splice(0)) if (e.kind === 'request') this.#closeFds(e.frame.fds);
    this.#inFlight = null;
    this.#finishClose(reason);
  }

  /** The peer took the output that made onWrite return false. */
  outputDrained(): void {
    if (!this.#outputBlocked) return;
    this.#outputBlocked = false;
    this.#pump();
    this.#updateFlow();
  }

  // ---------------------------------------------------------------------------------------------

  #checkFrame(f: Frame): ProtocolError | null {
    if (f.fds.length === 0) return new ProtocolError('file descriptors', 0, 'are missing: each CDB needs exactly one');
    if (f.fds.length > 1) return new ProtocolError('file descriptors', f.fds.length, 'came with one CDB: it needs exactly one');
    if (this.pendingRequests >= this.#limits.maxPendingRequests) {
      return new ProtocolError('pipelined requests', this.pendingRequests + 1, `exceed the bound of ${this.#limits.maxPendingRequests} unanswered requests`);
    }
    return null;
  }

  #enqueue(f: Frame): void {
    if (f.cdb[0] === Opcode.PERSISTENT_RESERVE_OUT && f.transferLength < PR_OUT_BASIC_PARAMETER_LIST) {
      // Answered here, without the device: PARAMETER LIST LENGTH ERROR (SPC-4 6.16.3), connection
      // kept. The stock helper's read-only check comes first (do_pr_out), so a read-only fd gets
      // INVALID COMMAND OPERATION CODE instead, as it would for a well-formed PR OUT.
      const readOnly = this.#opts.isReadOnlyFd?.(f.fds[0]!) ?? false;
      this.#closeFds(f.fds);
      const bytes = encodeReply({
        status: ScsiStatus.CHECK_CONDITION,
        sense: readOnly ? senseBytes(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE) : senseBytes(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR),
        payload: new Uint8Array(0),
      });
      this.#queue.push({ kind: 'answer', bytes, held: bytes.length });
      this.#held += bytes.length;
      return;
    }
    const held = frameSize(f);
    this.#queue.push({ kind: 'request', frame: f, held });
    this.#held += held;
  }

  #stopParsing(error: ProtocolError, unqueued: readonly Frame[]): void {
    this.#log.warn('pr-helper client broke the protocol; closing after answering earlier requests', { code: error.code, error: error.message });
    this.#terminal = error;
    for (const f of unqueued) this.#closeFds(f.fds);
    this.#discardPartial(null);
    this.#phase = 'stopped';
  }

  #discardPartial(why: string | null): void {
    const f = this.#frame;
    if (f !== null) {
      if (why !== null) this.#log.debug('pr-helper partial frame dropped', { why, cdbBytes: f.cdbHave, paramBytes: f.paramHave });
      this.#closeFds(f.fds);
      this.#frame = null;
    }
  }

  #pump(): void {
    while (!this.#closed && this.#inFlight === null && !this.#outputBlocked) {
      const entry = this.#queue.shift();
      if (entry === undefined) break;
      if (entry.kind === 'answer') {
        this.#held -= entry.held;
        this.#write(entry.bytes);
        continue;
      }
      this.#inFlight = entry;
      const f = entry.frame;
      const request: PrHelperRequest = { cdb: f.cdb, fd: f.fds[0]!, dataOut: f.param };
      let promise: Promise<PrHelperAnswer>;
      try {
        promise = Promise.resolve(this.#opts.onRequest(request));
      } catch (e) {
        promise = Promise.reject(e);
      }
      promise.then(
        (answer) => this.#complete(entry, answer, null),
        (err: unknown) => this.#complete(entry, null, err),
      );
    }
    if (!this.#closed && this.#inFlight === null && this.#queue.length === 0 && (this.#terminal !== null || this.#inputEnded)) {
      this.#finishClose(this.#terminal);
    }
  }

  #complete(entry: Entry, answer: PrHelperAnswer | null, err: unknown): void {
    if (this.#inFlight !== entry) return; // destroyed meanwhile: nobody to answer
    this.#inFlight = null;
    this.#held -= entry.held;
    if (this.#closed || entry.kind !== 'request') return;
    let bytes: Uint8Array | null = null;
    if (answer !== null) {
      try {
        bytes = this.#encodeAnswer(entry.frame, answer);
      } catch (e) {
        err = e;
      }
    }
    if (bytes === null) {
      // A handler bug must not cost the connection: answer as qemu-pr-helper answers an SG_IO it
      // could not complete (scsi_sense_from_errno default: ABORTED COMMAND, I/O PROCESS TERMINATED).
      this.#log.error('pr-helper request handler failed', { error: err instanceof Error ? err.message : String(err) });
      bytes = encodeReply({
        status: ScsiStatus.CHECK_CONDITION,
        sense: senseBytes(SenseKey.ABORTED_COMMAND, Asc.I_O_PROCESS_TERMINATED),
        payload: new Uint8Array(0),
      });
    }
    this.#write(bytes);
    this.#pump();
    this.#updateFlow();
  }

  #encodeAnswer(f: Frame, a: PrHelperAnswer): Uint8Array {
    const sense = a.sense.length > PR_HELPER_SENSE_SIZE ? a.sense.subarray(0, PR_HELPER_SENSE_SIZE) : a.sense;
    const dataIn = f.cdb[0] === Opcode.PERSISTENT_RESERVE_IN && a.status === ScsiStatus.GOOD;
    const payload = dataIn ? a.data.subarray(0, Math.min(a.data.length, f.transferLength)) : new Uint8Array(0);
    return encodeReply({ status: a.status, sense, payload });
  }

  #write(bytes: Uint8Array): void {
    if (this.#closed) return;
    if (this.#opts.onWrite(bytes) === false) this.#outputBlocked = true;
  }

  #finishClose(reason: ProtocolError | null): void {
    this.#closed = true;
    this.#phase = 'stopped';
    this.#stopTimer();
    this.#opts.onClose(reason);
  }

  #closeFds(fds: readonly number[]): void {
    for (const fd of fds) this.#opts.closeFd(fd);
  }

  /** Re-evaluate the read hint (resume signal) and the frame timer after any state change. */
  #updateFlow(): void {
    if (this.#closed) return;
    const hint = this.readHint();
    if (hint > 0 && this.#paused) {
      this.#paused = false;
      this.#opts.onResume?.();
    } else if (hint === 0) {
      this.#paused = true;
    }
    const guarded: Frame | 'features' | null =
      !this.#started || hint === 0 ? null : this.#phase === 'features' ? 'features' : this.#frame;
    if (guarded === this.#timerFor) return;
    this.#stopTimer();
    if (guarded === null) return;
    this.#timerFor = guarded;
    const ms = this.#limits.frameTimeoutMs;
    this.#cancelTimer = this.#opts.setTimer(ms, () => {
      this.#cancelTimer = null;
      this.#timerFor = null;
      if (this.#closed || this.#terminal !== null) return;
      const have = guarded === 'features' ? this.#featHave : guarded.cdbHave + guarded.paramHave;
      this.#stopParsing(new ProtocolError('partial frame', have, `(bytes received) stayed incomplete for ${ms} ms`), []);
      this.#pump();
      this.#updateFlow();
    });
  }

  #stopTimer(): void {
    const cancel = this.#cancelTimer;
    this.#cancelTimer = null;
    this.#timerFor = null;
    cancel?.();
  }
}
