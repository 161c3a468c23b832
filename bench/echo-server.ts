// The floor for a Node pr-helper server: a bare `net` unix-socket server that speaks just enough
// of the pr-helper framing to be driven by bench/prh-bench-client.c. It writes the 4-byte feature
// word on accept, takes the client's 4-byte answer, then for every 16 bytes received writes one
// canned reply (104-byte header + a payload of the size prmux returns). No parsing, no fd, no SCSI:
// whatever prmux costs above this is prmux's own work (framing, fd receipt, dispatch, SG_IO/SAN).
//
// The client attaches an fd to every CDB. libuv reads a non-IPC pipe with read(2), so the SCM_RIGHTS
// message is discarded by the kernel (scm_recv without a control buffer -> MSG_CTRUNC, scm_destroy
// drops the file references): nothing leaks. The bench checks this by counting /proc/PID/fd.
//
// Usage: node echo-server.js SOCKET_PATH PAYLOAD_BYTES [STATUS]
// Prints "echo-server: listening on SOCKET_PATH (pid N)" on stdout when ready; exits when stdin
// closes (so it dies with the bench even if the bench is killed hard), on SIGTERM or SIGINT.

import { createServer, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';

const CDB_BYTES = 16;
const HEADER_BYTES = 104;

function main(argv: readonly string[]): void {
  const [path, payloadArg, statusArg] = argv;
  const payload = Number(payloadArg ?? '0');
  const status = Number(statusArg ?? '0');
  if (!path || !Number.isInteger(payload) || payload < 0 || payload > 8192 || !Number.isInteger(status) || status < 0 || status > 0xff) {
    process.stderr.write('usage: echo-server.js SOCKET_PATH PAYLOAD_BYTES [STATUS]\n');
    process.exitCode = 2;
    return;
  }
  const reply = Buffer.alloc(HEADER_BYTES + payload);
  reply.writeUInt32BE(status, 0);
  reply.writeUInt32BE(status === 0 ? payload : 0, 4);
  const oneReply = status === 0 ? reply : reply.subarray(0, HEADER_BYTES);
  const features = Buffer.alloc(4);

  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    // Bytes still owed before the next reply: first the 4-byte feature answer, then 16 per CDB.
    let negotiated = false;
    let pending = 0;
    sock.write(features);
    sock.on('data', (chunk: Buffer) => {
      let n = chunk.length;
      if (!negotiated) {
        pending += n;
        if (pending < 4) return;
        negotiated = true;
        n = pending - 4;
        pending = 0;
      }
      pending += n;
      const replies = Math.floor(pending / CDB_BYTES);
      pending -= replies * CDB_BYTES;
      if (replies === 1) sock.write(oneReply);
      else if (replies > 1) sock.write(Buffer.concat(Array.from({ length: replies }, () => oneReply)));
    });
    sock.on('error', () => sock.destroy());
    sock.on('close', () => sockets.delete(sock));
  });
  const stop = (): void => {
    process.stdin.destroy();
    server.close();
    for (const s of sockets) s.destroy();
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  server.listen(path, () => {
    process.stdout.write(`echo-server: listening on ${path} (pid ${process.pid})\n`);
  });
}

main(process.argv.slice(2));
