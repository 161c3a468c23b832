// A Node pr-manager-helper client that behaves like QEMU's (scsi/pr-manager-helper.c): read the
// helper's feature word, answer 0, then one command at a time: the 16-byte CDB in one sendmsg()
// with the device fd, the PR OUT parameter list, then the reply. For tests and benchmarks (a Node
// client in its own process keeps the client's cost low and off the server's event loop).

import { ProtocolError } from '../errors.js';
import { type PrHelperReply, PrHelperReplyDecoder, encodeFeatures, encodeRequest } from './pr-helper-wire.js';
import { Errno, type PollHandle, closeFd, connectUnix, errnoName, pollFd, recvWithFds, sendWithFds } from './unix-fd.js';

export class PrHelperClient {
  readonly #fd: number;
  readonly #decoder = new PrHelperReplyDecoder();
  #poll: PollHandle | null = null;
  #pending: { resolve: (r: PrHelperReply) => void; reject: (e: Error) => void } | null = null;
  #features: { resolve: () => void; reject: (e: Error) => void } | null = null;
  #closed = false;
  readonly #out: Uint8Array[] = [];

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** Connect and negotiate (no feature requested, as QEMU does). */
  static async connect(path: string): Promise<PrHelperClient> {
    const c = new PrHelperClient(connectUnix(path));
    c.#poll = pollFd(c.#fd, { readable: true }, (status, ev) => c.#onPoll(status, ev.writable));
    await new Promise<void>((resolve, reject) => {
      c.#features = { resolve, reject };
    });
    c.#send(encodeFeatures(0), []);
    return c;
  }

  /** One command; `fd` travels with the CDB. Rejects if the helper closes the connection. */
  command(cdb: Uint8Array, fd: number, dataOut: Uint8Array | null = null): Promise<PrHelperReply> {
    if (this.#closed) return Promise.reject(new Error('Cannot send a pr-helper command: the connection is closed'));
    if (this.#pending !== null) return Promise.reject(new Error('Cannot send a pr-helper command: one is already in flight (QEMU sends one at a time)'));
    const req = encodeRequest(cdb, dataOut);
    const reply = new Promise<PrHelperReply>((resolve, reject) => {
      this.#pending = { resolve, reject };
    });
    this.#send(req.cdb, [fd]);
    if (req.data !== null && req.data.length > 0) this.#send(req.data, []);
    return reply;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poll?.close();
    this.#poll = null;
    closeFd(this.#fd);
    const err = new Error('Cannot complete the pr-helper command: the connection was closed');
    this.#pending?.reject(err);
    this.#features?.reject(err);
    this.#pending = null;
    this.#features = null;
  }

  #send(bytes: Uint8Array, fds: number[]): void {
    if (this.#out.length > 0) {
      if (fds.length > 0) throw new Error('Cannot queue fds behind unsent bytes');
      this.#out.push(bytes.slice());
      return;
    }
    const n = sendWithFds(this.#fd, bytes, fds);
    if (n === bytes.length) return;
    if (n < 0 && n !== -Errno['EAGAIN']!) {
      this.#fail(new Error(`Cannot send to the pr-helper: ${errnoName(-n)}`));
      return;
    }
    if (n < 0 && fds.length > 0) {
      this.#fail(new Error('Cannot send the CDB and its fd: the socket buffer is full'));
      return;
    }
    this.#out.push(bytes.slice(Math.max(0, n)));
    this.#poll?.start({ readable: true, writable: true }, (status, ev) => this.#onPoll(status, ev.writable));
  }

  #onPoll(status: number, writable: boolean): void {
    try {
      if (status < 0) {
        this.#fail(new Error(`Cannot poll the pr-helper socket: status ${status}`));
        return;
      }
      if (writable) this.#flush();
      for (;;) {
        const r = recvWithFds(this.#fd, 16 * 1024);
        if (r.kind === 'again') return;
        if (r.kind === 'eof') {
          this.#fail(new ProtocolError('connection', 'EOF', 'closed by the helper'));
          return;
        }
        if (r.kind === 'error') {
          this.#fail(new Error(`Cannot read from the pr-helper: ${errnoName(r.errno)}`));
          return;
        }
        for (const fd of r.fds) closeFd(fd); // a helper never sends fds
        const replies = this.#decoder.push(r.bytes);
        if (this.#features !== null && this.#decoder.features !== null) {
          const f = this.#features;
          this.#features = null;
          f.resolve();
        }
        for (const reply of replies) {
          const p = this.#pending;
          this.#pending = null;
          if (p === null) {
            this.#fail(new Error('Cannot match a pr-helper reply: no command is in flight'));
            return;
          }
          p.resolve(reply);
        }
      }
    } catch (e) {
      this.#fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  #flush(): void {
    while (this.#out.length > 0) {
      const head = this.#out[0]!;
      const n = sendWithFds(this.#fd, head);
      if (n === -Errno['EAGAIN']!) return;
      if (n < 0) {
        this.#fail(new Error(`Cannot send to the pr-helper: ${errnoName(-n)}`));
        return;
      }
      if (n === head.length) this.#out.shift();
      else this.#out[0] = head.subarray(n);
    }
    this.#poll?.start({ readable: true }, (status, ev) => this.#onPoll(status, ev.writable));
  }

  #fail(e: Error): void {
    const p = this.#pending;
    const f = this.#features;
    this.#pending = null;
    this.#features = null;
    this.close();
    p?.reject(e);
    f?.reject(e);
  }
}
