// Clients of the simulated SAN's JSON-line sockets (ctl.sock and <host>/san.sock), one request at
// a time per connection with a timeout.

import { createConnection, type Socket } from 'node:net';
import { PrmuxError, ErrorCode } from '../errors.js';
import { readJsonLines } from '../util/ndjson.js';

export class JsonLineClient {
  private socket: Socket | null = null;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }>();

  constructor(
    private readonly path: string,
    private readonly timeoutMs = 35_000,
  ) {}

  private connect(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    return new Promise((resolve, reject) => {
      const s = createConnection(this.path);
      s.once('connect', () => {
        this.socket = s;
        resolve(s);
      });
      s.once('error', (e) => {
        reject(new PrmuxError(ErrorCode.SAN, `Cannot reach ${this.path}: ${e.message}`, { cause: e }));
      });
      s.on('close', () => {
        this.socket = null;
        for (const [id, w] of this.waiting) {
          clearTimeout(w.timer);
          w.reject(new PrmuxError(ErrorCode.SAN, `Cannot finish request ${id}: ${this.path} closed the connection`));
        }
        this.waiting.clear();
      });
      readJsonLines(
        s,
        (v) => {
          const msg = v as Record<string, unknown>;
          const w = typeof msg['id'] === 'number' ? this.waiting.get(msg['id']) : undefined;
          if (!w) return;
          this.waiting.delete(msg['id'] as number);
          clearTimeout(w.timer);
          w.resolve(msg);
        },
        () => s.destroy(),
        64 * 1024 * 1024,
      );
    });
  }

  async request(body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const s = await this.connect();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new PrmuxError(ErrorCode.TIMEOUT, `Cannot finish request to ${this.path}: no answer in ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      s.write(JSON.stringify({ ...body, id }) + '\n');
    });
  }

  close(): void {
    this.socket?.end();
    this.socket = null;
  }
}
