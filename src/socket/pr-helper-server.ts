// The pr-manager-helper server: a listening unix socket, one PrHelperSession per connection, and
// the wiring between real non-blocking sockets (unix-fd.ts) and the pure sessions. Protocol logic
// lives in the session; this file only moves bytes and fds.
//
// Each connection is independent: a slow handler on one never delays another (sessions only
// await their own handler). Reads follow the session's read hint, so a connection holds at most
// about one frame of input; writes that the peer does not take are buffered up to
// maxWriteBufferBytes, beyond which the session stops dispatching (and so stops reading).

import { lstatSync, chmodSync, chownSync, unlinkSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { ErrorCode, PrmuxError, type ProtocolError } from '../errors.js';
import { type Logger, nullLogger } from './logger.js';
import { PrHelperSession, type PrHelperAnswer, type PrHelperRequest, type PrHelperSessionLimits, type SetTimer } from './pr-helper-session.js';
import {
  Errno,
  MAX_READ,
  type PollEvents,
  type PollHandle,
  SyscallError,
  acceptConnection,
  closeFd,
  errnoName,
  fdStatusFlags,
  isListeningUnixStream,
  listenUnix,
  pollFd,
  recvWithFds,
  sendWithFds,
  setNonBlocking,
} from './unix-fd.js';

export interface PrHelperServerLimits extends PrHelperSessionLimits {
  /** Connections served at once; more are accepted and closed at once. Default 256. */
  readonly maxConnections?: number;
  /** listen(2) backlog. Default 128. */
  readonly backlog?: number;
  /** Reply bytes buffered for a peer that does not read before the session pauses. Default 64 KiB. */
  readonly maxWriteBufferBytes?: number;
  /** How long a closing connection may take to flush its last replies. Default 5 s. */
  readonly closeFlushMs?: number;
}

export interface PrHelperServerOptions {
  /** Unix socket path to bind (absolute). Exactly one of path and listenFd. */
  readonly path?: string;
  /** An already listening unix stream socket, e.g. fd 3 from systemd socket activation. */
  readonly listenFd?: number;
  /** With listenFd: the socket file behind it that this server owns and removes on close (if still the same file). */
  readonly ownedSocket?: BoundSocket;
  /** chmod of the socket file after bind (path only), e.g. 0o660. */
  readonly socketMode?: number;
  /** Serves one command; owns `request.fd` and must close it. */
  readonly handler: (request: PrHelperRequest) => Promise<PrHelperAnswer>;
  readonly logger?: Logger | null;
  readonly limits?: PrHelperServerLimits;
  /** Timer seam; defaults to unref'd setTimeout. */
  readonly setTimer?: SetTimer;
}

export interface PrHelperServer {
  listen(): Promise<void>;
  /** Stop accepting, let every connection answer what it has read, resolve when all are closed. */
  close(): Promise<void>;
  /** Abort: close the listener and every connection now (in-flight answers are dropped). */
  destroy(): void;
  /** Open connections. */
  readonly connectionCount: number;
}

const DEFAULTS = { maxConnections: 256, backlog: 128, maxWriteBufferBytes: 64 * 1024, closeFlushMs: 5000 };
const ACCEPTS_PER_WAKEUP = 64;
const READS_PER_WAKEUP = 16;
const ACCEPT_BACKOFF_MS = 100;

const realSetTimer: SetTimer = (ms, fn) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return () => clearTimeout(t);
};

export function createPrHelperServer(options: PrHelperServerOptions): PrHelperServer {
  return new Server(options);
}

/** Connect to `path` to learn whether a live server owns it. */
function probe(path: string): Promise<'live' | 'stale' | 'absent'> {
  return new Promise((resolve, reject) => {
    const s = netConnect(path);
    s.once('connect', () => {
      s.destroy();
      resolve('live');
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      s.destroy();
      if (e.code === 'ECONNREFUSED') resolve('stale');
      else if (e.code === 'ENOENT') resolve('absent');
      else reject(e);
    });
  });
}

/** A bound, listening socket file: the fd and the file's identity (to remove it only if still ours). */
export interface BoundSocket {
  readonly fd: number;
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

export interface BindOptions {
  readonly backlog?: number;
  /** Final mode of the socket file. Default 0600: only the owner (root, or -u) may connect. */
  readonly mode?: number;
  /** Group to give the socket file (with mode 0660, members may connect). */
  readonly gid?: number;
  readonly logger?: Logger | null;
}

/**
 * Bind and listen on `path` the way the stock helper does, hardened: the path must be absolute; a
 * stale socket file (nobody answers) is replaced; a socket a live server answers on is never
 * taken over; anything else at the path is left alone and refused. The file is created with
 * umask 0177 so no one else can connect before its final mode and group are set.
 */
export async function bindPrHelperSocket(path: string, opts: BindOptions = {}): Promise<BoundSocket> {
  const log = opts.logger ?? nullLogger;
  if (!path.startsWith('/')) throw new PrmuxError(ErrorCode.CONFIG, `Cannot listen on ${path}: the socket path must be absolute`);
  let isSocket = false;
  let exists = true;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    exists = false;
  }
  if (exists) {
    if (!isSocket) throw new PrmuxError(ErrorCode.CONFIG, `Cannot listen on ${path}: it exists and is not a socket`);
    const state = await probe(path);
    if (state === 'live') throw new PrmuxError(ErrorCode.CONFIG, `Cannot listen on ${path}: a live server answers there`);
    if (state === 'stale') {
      log.info('removing stale pr-helper socket', { path });
      unlinkSync(path);
    }
  }
  const oldMask = process.umask(0o177);
  let fd: number;
  try {
    fd = listenUnix(path, opts.backlog ?? DEFAULTS.backlog);
  } catch (e) {
    if (e instanceof SyscallError) throw new PrmuxError(ErrorCode.CONFIG, `Cannot listen on ${path}: ${e.message}`, { cause: e });
    throw e;
  } finally {
    process.umask(oldMask);
  }
  try {
    if (opts.gid !== undefined) chownSync(path, -1, opts.gid);
    chmodSync(path, opts.mode ?? 0o600);
    const st = lstatSync(path);
    return { fd, path, dev: st.dev, ino: st.ino };
  } catch (e) {
    closeFd(fd);
    try {
      unlinkSync(path);
    } catch {
      // Nothing more to undo.
    }
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot set up socket ${path}: ${(e as Error).message}`, { cause: e });
  }
}

class Server implements PrHelperServer {
  readonly #opts: PrHelperServerOptions;
  readonly #log: Logger;
  readonly #limits: Required<Pick<PrHelperServerLimits, keyof typeof DEFAULTS>>;
  readonly #setTimer: SetTimer;
  readonly #connections = new Set<Connection>();
  #listenFd = -1;
  #listenPoll: PollHandle | null = null;
  /** The socket file we bound (dev/ino), removed on close only if it is still ours. */
  #bound: { path: string; dev: number; ino: number } | null = null;
  #state: 'new' | 'listening' | 'closing' | 'closed' = 'new';
  #drained: (() => void) | null = null;
  #backoff: (() => void) | null = null;

  constructor(opts: PrHelperServerOptions) {
    if ((opts.path === undefined) === (opts.listenFd === undefined)) {
      throw new PrmuxError(ErrorCode.CONFIG, 'Cannot create pr-helper server: give exactly one of path and listenFd');
    }
    this.#opts = opts;
    this.#log = opts.logger ?? nullLogger;
    this.#limits = { ...DEFAULTS, ...opts.limits };
    this.#setTimer = opts.setTimer ?? realSetTimer;
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  get log(): Logger {
    return this.#log;
  }

  get setTimer(): SetTimer {
    return this.#setTimer;
  }

  get limits(): PrHelperServerLimits {
    return { ...this.#opts.limits, ...this.#limits };
  }

  get handler(): (request: PrHelperRequest) => Promise<PrHelperAnswer> {
    return this.#opts.handler;
  }

  async listen(): Promise<void> {
    if (this.#state !== 'new') throw new PrmuxError(ErrorCode.CLOSED, `Cannot listen: the server is ${this.#state}`);
    const { path, listenFd } = this.#opts;
    if (path !== undefined) {
      const b = await bindPrHelperSocket(path, { backlog: this.#limits.backlog, logger: this.#log, ...(this.#opts.socketMode !== undefined ? { mode: this.#opts.socketMode } : {}) });
      this.#listenFd = b.fd;
      this.#bound = { path: b.path, dev: b.dev, ino: b.ino };
    } else {
      if (this.#opts.ownedSocket !== undefined) this.#bound = { ...this.#opts.ownedSocket };
      const fd = listenFd!;
      if (!isListeningUnixStream(fd)) throw new PrmuxError(ErrorCode.CONFIG, `Cannot listen on fd ${fd}: it is not a listening unix stream socket`);
      setNonBlocking(fd);
      this.#listenFd = fd;
    }
    this.#state = 'listening';
    this.#listenPoll = pollFd(this.#listenFd, { readable: true }, () => this.#safely(() => this.#acceptAll()));
    this.#log.info('pr-helper server listening', { path: path ?? null, fd: this.#listenFd });
  }

  #acceptAll(): void {
    for (let i = 0; i < ACCEPTS_PER_WAKEUP && this.#state === 'listening'; i++) {
      const fd = acceptConnection(this.#listenFd);
      if (fd === -Errno['EAGAIN']!) return;
      if (fd < 0) {
        // EMFILE/ENFILE and the like: the listener stays readable, so pause instead of spinning.
        this.#log.error('pr-helper accept failed; pausing accepts', { errno: errnoName(-fd), pauseMs: ACCEPT_BACKOFF_MS });
        this.#listenPoll?.stop();
        this.#backoff = this.#setTimer(ACCEPT_BACKOFF_MS, () => {
          this.#backoff = null;
          if (this.#state === 'listening') this.#listenPoll?.start({ readable: true }, () => this.#safely(() => this.#acceptAll()));
        });
        return;
      }
      if (this.#connections.size >= this.#limits.maxConnections) {
        this.#log.warn('pr-helper connection refused: at maxConnections', { maxConnections: this.#limits.maxConnections });
        closeFd(fd);
        continue;
      }
      const conn = new Connection(this, fd);
      this.#connections.add(conn);
      conn.start();
    }
  }

  /** Called by a connection once its fd is closed. */
  forget(conn: Connection): void {
    this.#connections.delete(conn);
    if (this.#connections.size === 0 && this.#drained !== null) {
      const d = this.#drained;
      this.#drained = null;
      d();
    }
  }

  #stopListening(): void {
    this.#backoff?.();
    this.#backoff = null;
    this.#listenPoll?.close();
    this.#listenPoll = null;
    if (this.#listenFd >= 0) {
      closeFd(this.#listenFd);
      this.#listenFd = -1;
    }
    const b = this.#bound;
    this.#bound = null;
    if (b !== null) {
      try {
        const st = lstatSync(b.path);
        if (st.dev === b.dev && st.ino === b.ino) unlinkSync(b.path);
      } catch {
        // Already gone: nothing to clean.
      }
    }
  }

  close(): Promise<void> {
    if (this.#state === 'closed') return Promise.resolve();
    if (this.#state === 'closing') return new Promise((resolve) => this.#whenDrained(resolve));
    this.#state = 'closing';
    this.#stopListening();
    const done = new Promise<void>((resolve) => this.#whenDrained(resolve));
    for (const conn of [...this.#connections]) conn.close();
    return done.then(() => {
      this.#state = 'closed';
    });
  }

  #whenDrained(resolve: () => void): void {
    if (this.#connections.size === 0) {
      resolve();
      return;
    }
    const prev = this.#drained;
    this.#drained = () => {
      prev?.();
      resolve();
    };
  }

  destroy(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closing';
    this.#stopListening();
    for (const conn of [...this.#connections]) conn.destroy();
    this.#state = 'closed';
  }

  /** koffi drops exceptions thrown from poll callbacks: report them instead of losing them. */
  #safely(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#log.error('pr-helper server internal error', { error: e instanceof Error ? e.stack : String(e) });
    }
  }
}

class Connection {
  readonly #server: Server;
  readonly #fd: number;
  readonly #session: PrHelperSession;
  readonly #log: Logger;
  readonly #maxWrite: number;
  readonly #flushMs: number;
  #poll: PollHandle | null = null;
  #polling = { readable: false, writable: false };
  readonly #out: Uint8Array[] = [];
  #outBytes = 0;
  #eof = false;
  /** The session is closed; the fd stays open only to flush the last replies. */
  #sessionDone = false;
  #released = false;
  #flushTimer: (() => void) | null = null;

  constructor(server: Server, fd: number) {
    this.#server = server;
    this.#fd = fd;
    this.#log = server.log;
    const limits = server.limits;
    this.#maxWrite = limits.maxWriteBufferBytes ?? DEFAULTS.maxWriteBufferBytes;
    this.#flushMs = limits.closeFlushMs ?? DEFAULTS.closeFlushMs;
    this.#session = new PrHelperSession({
      onWrite: (bytes) => this.#write(bytes),
      onRequest: server.handler,
      onClose: (reason) => this.#onSessionClose(reason),
      closeFd: (f) => {
        closeFd(f);
      },
      isReadOnlyFd: (f) => {
        try {
          return (fdStatusFlags(f) & 3) === 0; // O_ACCMODE == O_RDONLY
        } catch {
          return false;
        }
      },
      setTimer: server.setTimer,
      onResume: () => this.#updatePoll(),
      logger: this.#log,
      limits,
    });
  }

  start(): void {
    this.#poll = pollFd(this.#fd, { readable: true }, (status, ev) => this.#onPoll(status, ev));
    this.#polling = { readable: true, writable: false };
    this.#session.start();
    this.#updatePoll();
  }

  close(): void {
    this.#session.close();
  }

  destroy(): void {
    this.#session.destroy();
    this.#release();
  }

  #onPoll(status: number, ev: PollEvents): void {
    try {
      if (status < 0) {
        this.#log.debug('pr-helper connection poll error', { status });
        this.destroy();
        return;
      }
      if (ev.writable) this.#flush();
      if ((ev.readable || ev.disconnect) && !this.#sessionDone) this.#read();
      this.#updatePoll();
    } catch (e) {
      this.#log.error('pr-helper connection internal error', { error: e instanceof Error ? e.stack : String(e) });
      this.destroy();
    }
  }

  #read(): void {
    for (let i = 0; i < READS_PER_WAKEUP && !this.#eof && !this.#released; i++) {
      const hint = this.#session.readHint();
      if (hint === 0) return;
      const r = recvWithFds(this.#fd, Math.min(hint, MAX_READ));
      if (r.kind === 'again') return;
      if (r.kind === 'eof') {
        this.#eof = true;
        this.#session.end();
        return;
      }
      if (r.kind === 'error') {
        this.#log.debug('pr-helper connection read failed', { errno: errnoName(r.errno) });
        this.destroy();
        return;
      }
      if (r.fdsTruncated) this.#log.warn('pr-helper client sent more fds than one read accepts; the kernel closed the rest', { received: r.fds.length });
      this.#session.push(r.bytes, r.fds);
    }
  }

  #write(bytes: Uint8Array): boolean {
    if (this.#released) return true;
    if (this.#out.length === 0) {
      const n = sendWithFds(this.#fd, bytes);
      if (n === bytes.length) return true;
      if (n < 0 && n !== -Errno['EAGAIN']!) {
        this.#log.debug('pr-helper connection write failed', { errno: errnoName(-n) });
        // Not from inside the session's own call: let it finish its step first.
        queueMicrotask(() => this.destroy());
        return true;
      }
      const sent = Math.max(0, n);
      this.#out.push(bytes.slice(sent));
      this.#outBytes += bytes.length - sent;
    } else {
      this.#out.push(bytes.slice());
      this.#outBytes += bytes.length;
    }
    this.#updatePoll();
    return this.#outBytes <= this.#maxWrite;
  }

  #flush(): void {
    while (this.#out.length > 0 && !this.#released) {
      const head = this.#out[0]!;
      const n = sendWithFds(this.#fd, head);
      if (n === -Errno['EAGAIN']!) return;
      if (n < 0) {
        this.#log.debug('pr-helper connection write failed', { errno: errnoName(-n) });
        this.destroy();
        return;
      }
      this.#outBytes -= n;
      if (n === head.length) this.#out.shift();
      else this.#out[0] = head.subarray(n);
    }
    if (this.#out.length === 0) {
      if (this.#sessionDone) this.#release();
      else this.#session.outputDrained();
    }
  }

  #onSessionClose(reason: ProtocolError | null): void {
    this.#sessionDone = true;
    if (reason !== null) this.#log.info('pr-helper connection closed for a protocol violation', { error: reason.message });
    if (this.#out.length === 0 || this.#released) {
      this.#release();
      return;
    }
    this.#flushTimer = this.#server.setTimer(this.#flushMs, () => {
      this.#flushTimer = null;
      this.#release();
    });
    this.#updatePoll();
  }

  #updatePoll(): void {
    if (this.#released || this.#poll === null) return;
    const readable = !this.#sessionDone && !this.#eof && this.#session.readHint() > 0;
    const writable = this.#out.length > 0;
    if (readable === this.#polling.readable && writable === this.#polling.writable) return;
    this.#polling = { readable, writable };
    if (!readable && !writable) this.#poll.stop();
    else this.#poll.start({ readable, writable }, (status, ev) => this.#onPoll(status, ev));
  }

  /** Close the poll handle and the fd, exactly once. */
  #release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#flushTimer?.();
    this.#flushTimer = null;
    this.#poll?.close();
    this.#poll = null;
    this.#out.length = 0;
    this.#outBytes = 0;
    const r = closeFd(this.#fd);
    if (r < 0) this.#log.warn('pr-helper connection close failed', { errno: errnoName(-r) });
    this.#server.forget(this);
  }
}

export { SyscallError };
