// A client of multipathd's Unix socket for prmux (I/O edge; the framing, grammar and parsers it
// uses are the pure modules beside it).
//
// Socket names follow libmpathcmd: a name starting with '@' is an abstract socket (Linux; Node
// takes it as a path starting with NUL), anything else a pathname. multipathd 0.9.4 listens only on
// the abstract "@/org/kernel/linux/storage/multipathd"; later releases also on the pathname
// "/run/multipathd.socket". By default both are tried in that order; libmpathcmd's
// MULTIPATH_SOCKET_NAME override is the `socket` option here (the CLI edge reads the environment).
//
// One connection is kept and reused: multipathd answers any number of commands on a connection,
// one reply per command, in order. Requests are serialized through a bounded queue. A request
// that fails in a way that leaves the stream in an unknown state (timeout, peer closed mid-reply,
// undecodable reply) destroys the connection; the next request connects afresh. A sent command is
// never retried: `fail path` and friends are not idempotent.

import * as net from 'node:net';
import { connectUnixAbstract } from '../socket/unix-fd.js';
import { EncodeError, ErrorCode, PrmuxError } from '../errors.js';
import {
  DEFAULT_MAX_REPLY_BYTES,
  LIBMPATHCMD_DEFAULT_TIMEOUT_MS,
  MULTIPATHD_MAX_COMMAND_BYTES,
  MpathFrameDecoder,
  encodeMessage,
} from './mpathcmd-framing.js';
import {
  PRMUX_SHOW_PATHS_COMMAND,
  isOkReply,
  parseGetPrKeyReply,
  parseGetPrStatusReply,
  parseMapJson,
  parseMapsJson,
  parsePathsRaw,
  type MapJsonReply,
  type MapsJsonReply,
  type PathRecord,
} from './multipathd-parse.js';

/** Where multipathd 0.9.4 listens (libmpathcmd DEFAULT_SOCKET, abstract namespace). */
export const MULTIPATHD_ABSTRACT_SOCKET = '@/org/kernel/linux/storage/multipathd';
/** Where multipathd >= 0.9.5 also listens (systemd socket unit). */
export const MULTIPATHD_PATHNAME_SOCKET = '/run/multipathd.socket';
export const DEFAULT_MULTIPATHD_SOCKETS: readonly string[] = [MULTIPATHD_ABSTRACT_SOCKET, MULTIPATHD_PATHNAME_SOCKET];

export interface MultipathdClientLogger {
  debug(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** Timer seam (tests and embedders may inject their own; the default is the global timers). */
export interface TimerSeam {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: TimerSeam = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
};

export interface MultipathdClientOptions {
  /** Socket name(s) to try in order ('@name' = abstract). Default DEFAULT_MULTIPATHD_SOCKETS. */
  socket?: string | readonly string[];
  /** Bound on one request: connecting, sending and receiving the whole reply. Default 4000 ms (libmpathcmd's). */
  timeoutMs?: number;
  /** Largest reply accepted (length field, NUL included). Default 16 MiB. */
  maxReplyBytes?: number;
  /** Largest command sent (length field, NUL included). Default 512, what multipathd 0.9.4 accepts. */
  maxCommandBytes?: number;
  /** Requests waiting behind the one in flight. Default 32. */
  maxQueuedRequests?: number;
  logger?: MultipathdClientLogger | null;
  timers?: TimerSeam;
}

interface Request {
  command: string;
  frame: Uint8Array;
  resolve: (reply: string) => void;
  reject: (error: Error) => void;
}

interface Connection {
  socket: net.Socket;
  decoder: MpathFrameDecoder;
  name: string;
}

function multipathdError(action: string, why: string, cause?: unknown): PrmuxError {
  return new PrmuxError(ErrorCode.MULTIPATHD, `Cannot ${action}: ${why}`, cause === undefined ? undefined : { cause });
}

/** Node's path for a libmpathcmd socket name. */
export function socketPathOf(name: string): string {
  return name.startsWith('@') ? '\0' + name.slice(1) : name;
}

export class MultipathdClient {
  readonly #sockets: readonly string[];
  readonly #timeoutMs: number;
  readonly #maxReply: number;
  readonly #maxCommand: number;
  readonly #maxQueued: number;
  readonly #logger: MultipathdClientLogger | null;
  readonly #timers: TimerSeam;

  #connection: Connection | null = null;
  /** The connect in progress, shared so a request queued behind a timed-out one does not open a second socket. */
  #connecting: Promise<Connection> | null = null;
  #queue: Request[] = [];
  #inFlight: { request: Request; timer: unknown; settle: (error: Error | null, reply?: string) => void } | null = null;
  #closed = false;

  constructor(options: MultipathdClientOptions = {}) {
    const sockets = options.socket === undefined ? DEFAULT_MULTIPATHD_SOCKETS : typeof options.socket === 'string' ? [options.socket] : options.socket;
    if (sockets.length === 0 || sockets.some((s) => s.length < 2)) {
      throw new PrmuxError(ErrorCode.CONFIG, `Cannot create multipathd client: socket names ${JSON.stringify(sockets)} must be non-empty`);
    }
    this.#sockets = [...sockets];
    this.#timeoutMs = positive('timeoutMs', options.timeoutMs ?? LIBMPATHCMD_DEFAULT_TIMEOUT_MS);
    this.#maxReply = positive('maxReplyBytes', options.maxReplyBytes ?? DEFAULT_MAX_REPLY_BYTES);
    this.#maxCommand = positive('maxCommandBytes', options.maxCommandBytes ?? MULTIPATHD_MAX_COMMAND_BYTES);
    this.#maxQueued = positive('maxQueuedRequests', options.maxQueuedRequests ?? 32);
    this.#logger = options.logger ?? null;
    this.#timers = options.timers ?? realTimers;
  }

  /** Send one command line and resolve with multipathd's reply text (the C string of the reply frame). */
  command(command: string): Promise<string> {
    if (this.#closed) return Promise.reject(new PrmuxError(ErrorCode.CLOSED, 'Cannot send multipathd command: the client is closed'));
    let frame: Uint8Array;
    try {
      frame = encodeMessage(command, this.#maxCommand);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.#queue.length >= this.#maxQueued) {
      return Promise.reject(multipathdError('send multipathd command', `${this.#queue.length} requests are already waiting`));
    }
    return new Promise<string>((resolve, reject) => {
      this.#queue.push({ command, frame, resolve, reject });
      this.#pump();
    });
  }

  /** `show maps json`, validated. */
  async showMapsJson(): Promise<MapsJsonReply> {
    return parseReply('read multipathd maps', await this.command('show maps json'), parseMapsJson);
  }

  /** `show map <m> json`, validated; a "fail" reply (no such map) is an error. */
  async showMapJson(map: string): Promise<MapJsonReply> {
    return parseReply(`read multipathd map ${map}`, await this.command(`show map ${mapArg(map)} json`), parseMapJson);
  }

  /** Every path multipathd knows, via `show paths raw format` with PRMUX_PATHS_FORMAT. */
  async showPaths(): Promise<PathRecord[]> {
    return parseReply('read multipathd paths', await this.command(PRMUX_SHOW_PATHS_COMMAND), parsePathsRaw);
  }

  /** `setprkey map M key 0x<key>[:aptpl]`: tell multipathd the map's reservation key. Key 0: use unsetPrKey. */
  async setPrKey(map: string, key: bigint, options: { aptpl?: boolean } = {}): Promise<void> {
    if (key <= 0n || key > 0xffff_ffff_ffff_ffffn) throw new EncodeError('multipathd setprkey command', 'key', key, 'must be 1..2^64-1');
    await this.#expectOk(`set the reservation key of ${map}`, `setprkey map ${mapArg(map)} key 0x${key.toString(16)}${options.aptpl ? ':aptpl' : ''}`);
  }

  async unsetPrKey(map: string): Promise<void> {
    await this.#expectOk(`unset the reservation key of ${map}`, `unsetprkey map ${mapArg(map)}`);
  }

  /** The map's key as multipathd holds it; null for none. */
  async getPrKey(map: string): Promise<{ key: bigint; aptpl: boolean } | null> {
    const reply = await this.command(`getprkey map ${mapArg(map)}`);
    if (reply === 'fail\n') throw multipathdError(`get the reservation key of ${map}`, 'multipathd answered "fail" (no such map?)');
    return parseReply(`get the reservation key of ${map}`, reply, parseGetPrKeyReply);
  }

  /** Mark the map as registered (prflag), so multipathd registers the key on returning paths. */
  async setPrStatus(map: string): Promise<void> {
    await this.#expectOk(`set the PR status of ${map}`, `setprstatus map ${mapArg(map)}`);
  }

  async unsetPrStatus(map: string): Promise<void> {
    await this.#expectOk(`unset the PR status of ${map}`, `unsetprstatus map ${mapArg(map)}`);
  }

  async getPrStatus(map: string): Promise<boolean> {
    const reply = await this.command(`getprstatus map ${mapArg(map)}`);
    if (reply === 'fail\n') throw multipathdError(`get the PR status of ${map}`, 'multipathd answered "fail" (no such map?)');
    return parseReply(`get the PR status of ${map}`, reply, parseGetPrStatusReply);
  }

  /** Abort what is pending (CLOSED errors), drop the connection; later calls fail with CLOSED. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const error = new PrmuxError(ErrorCode.CLOSED, 'Cannot complete multipathd command: the client was closed');
    for (const r of this.#queue.splice(0)) r.reject(error);
    this.#inFlight?.settle(error);
    const conn = this.#connection;
    this.#connection = null;
    if (conn && !conn.socket.destroyed) {
      await new Promise<void>((resolve) => {
        conn.socket.once('close', () => resolve());
        conn.socket.destroy();
      });
    }
  }

  async #expectOk(action: string, command: string): Promise<void> {
    const reply = await this.command(command);
    if (!isOkReply(reply)) throw multipathdError(action, `multipathd answered ${JSON.stringify(reply.slice(0, 200))}`);
  }

  #pump(): void {
    if (this.#inFlight || this.#closed) return;
    const request = this.#queue.shift();
    if (!request) return;
    let done = false;
    let timer: unknown;
    const settle = (error: Error | null, reply?: string): void => {
      if (done) return;
      done = true;
      this.#timers.clearTimeout(timer);
      this.#inFlight = null;
      if (error) request.reject(error);
      else request.resolve(reply ?? '');
      this.#pump();
    };
    timer = this.#timers.setTimeout(() => {
      this.#drop(`no complete reply to ${JSON.stringify(request.command)} within ${this.#timeoutMs} ms`);
      settle(new PrmuxError(ErrorCode.TIMEOUT, `Cannot run multipathd command ${JSON.stringify(request.command)}: no reply within ${this.#timeoutMs} ms`));
    }, this.#timeoutMs);
    this.#inFlight = { request, timer, settle };
    this.#send(request).catch((e: unknown) => settle(e instanceof Error ? e : new Error(String(e))));
  }

  async #send(request: Request): Promise<void> {
    const conn = this.#connection ?? (await this.#connectShared());
    if (this.#inFlight?.request !== request) {
      // Timed out or closed while connecting: do not send a command nobody waits for.
      return;
    }
    this.#logger?.debug('multipathd command', { command: request.command, socket: conn.name });
    conn.socket.write(request.frame);
  }

  #connectShared(): Promise<Connection> {
    if (!this.#connecting) {
      this.#connecting = this.#connect().finally(() => {
        this.#connecting = null;
      });
    }
    return this.#connecting;
  }

  async #connect(): Promise<Connection> {
    const failures: string[] = [];
    for (const name of this.#sockets) {
      try {
        const socket = await connectOnce(socketPathOf(name));
        if (this.#closed) {
          socket.destroy();
          throw new PrmuxError(ErrorCode.CLOSED, 'Cannot connect to multipathd: the client was closed');
        }
        const conn: Connection = { socket, name, decoder: new MpathFrameDecoder({ maxMessageBytes: this.#maxReply, structure: 'multipathd reply' }) };
        this.#attach(conn);
        this.#connection = conn;
        this.#logger?.debug('connected to multipathd', { socket: name });
        return conn;
      } catch (e) {
        if (e instanceof PrmuxError) throw e;
        failures.push(`${name} (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
    }
    throw multipathdError('connect to multipathd', `tried ${failures.join(', ')}`);
  }

  #attach(conn: Connection): void {
    const { socket, decoder } = conn;
    socket.on('data', (chunk: Buffer) => {
      if (this.#connection !== conn) return;
      const step = decoder.feed(chunk);
      const [first, ...extra] = step.messages;
      if (first) {
        if (this.#inFlight) this.#inFlight.settle(null, first.text);
        else extra.unshift(first);
      }
      if (step.error) {
        this.#drop('undecodable reply');
        this.#inFlight?.settle(multipathdError('read multipathd reply', step.error.message, step.error));
      } else if (extra.length > 0) {
        // A reply nobody asked for: the stream is out of step, start over.
        this.#logger?.warn('unsolicited multipathd reply, reconnecting', { bytes: extra.reduce((n, m) => n + m.payload.length, 0) });
        this.#drop('unsolicited reply');
      }
    });
    const onGone = (why: string): void => {
      if (this.#connection !== conn) return;
      const partial = decoder.inFrame ? ` after ${decoder.bufferedBytes} bytes of a reply` : '';
      this.#connection = null;
      socket.destroy();
      this.#inFlight?.settle(multipathdError('read multipathd reply', `the connection ${why}${partial}`));
    };
    socket.on('end', () => onGone('was closed by multipathd'));
    socket.on('error', (e: Error) => onGone(`failed (${(e as NodeJS.ErrnoException).code ?? e.message})`));
    socket.on('close', () => onGone('was closed'));
  }

  #drop(why: string): void {
    const conn = this.#connection;
    if (!conn) return;
    this.#connection = null;
    this.#logger?.debug('dropping multipathd connection', { why });
    conn.socket.destroy();
  }
}

function positive(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new PrmuxError(ErrorCode.CONFIG, `Cannot create multipathd client: ${name} ${value} must be a positive integer`);
  return value;
}

function connectOnce(path: string): Promise<net.Socket> {
  if (path.startsWith('\0')) {
    // Abstract names need the exact address length, which Node's net does not use (it pads).
    try {
      const fd = connectUnixAbstract(path.slice(1));
      return Promise.resolve(new net.Socket({ fd, readable: true, writable: true }));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const onError = (e: Error): void => {
      socket.destroy();
      reject(e);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

/**
 * Map names go into the command line unquoted: refuse what multipathd's tokenizer would split or
 * cut (blanks, quotes, braces, '!' and '#', non-ASCII, NUL). multipathd's own names never have them.
 */
function mapArg(map: string): string {
  if (!/^[\x21-\x7e]+$/.test(map) || /["{}!#]/.test(map)) throw new EncodeError('multipathd command', 'map', map, 'must be printable ASCII without blanks, quotes, braces, ! or #');
  return map;
}

function parseReply<T>(action: string, reply: string, parse: (text: string) => T): T {
  try {
    return parse(reply);
  } catch (e) {
    throw multipathdError(action, `unusable reply ${JSON.stringify(reply.slice(0, 120))}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}
