// Newline-delimited JSON over a stream socket, with a bound on the line length. Used by the
// simulated SAN's command and control sockets (simple to drive by hand with socat).

import type { Socket } from 'node:net';

export const DEFAULT_MAX_LINE_BYTES = 256 * 1024;

/**
 * Feed `socket` data to `onMessage` one parsed JSON value at a time. A line longer than the bound
 * or one that is not JSON ends the connection after `onError` was told (it may write a reply).
 */
export function readJsonLines(
  socket: Socket,
  onMessage: (value: unknown) => void,
  onError: (why: string) => void,
  maxLineBytes = DEFAULT_MAX_LINE_BYTES,
): void {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  socket.on('data', (chunk: Buffer) => {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      const line = pendingBytes > 0 ? Buffer.concat([...pending, piece]).toString('utf8') : piece.toString('utf8');
      pending = [];
      pendingBytes = 0;
      start = nl + 1;
      if (line.trim() === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        onError('a request line is not JSON');
        socket.end();
        return;
      }
      onMessage(value);
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0) {
      pendingBytes += rest.length;
      if (pendingBytes > maxLineBytes) {
        onError(`a request line exceeds ${maxLineBytes} bytes`);
        socket.end();
        return;
      }
      pending.push(Buffer.from(rest));
    }
  });
}

export function writeJsonLine(socket: Socket, value: unknown): void {
  if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(value) + '\n');
}
