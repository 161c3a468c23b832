// The server on real unix sockets, with clients in separate processes (the Python client that
// speaks the protocol as QEMU's pr-manager-helper.c does).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCode, isPrmuxError } from '../../src/errors.js';
import { ScsiStatus } from '../../src/scsi/constants.js';
import { type PrHelperServer, createPrHelperServer } from '../../src/socket/pr-helper-server.js';
import type { PrHelperAnswer, PrHelperRequest } from '../../src/socket/pr-helper-session.js';
import { closeFd, listenUnix } from '../../src/socket/unix-fd.js';
import { repoRoot } from '../support/paths.js';

const clientDir = join(repoRoot, 'test', 'clients');

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

function python(script: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('python3', [join(clientDir, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function u32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** Proves each fd arrived with its own command: the file behind the fd names the tag the command carries. */
async function tagHandler(req: PrHelperRequest): Promise<PrHelperAnswer> {
  try {
    const buf = Buffer.alloc(64);
    const n = readSync(req.fd, buf, 0, buf.length, 0);
    const content = buf.subarray(0, n).toString();
    const tag = req.cdb[0] === 0x5e ? u32(req.cdb, 2) : u32(req.dataOut!, 4);
    if (content !== `tag-${tag}`) {
      return { status: ScsiStatus.CHECK_CONDITION, sense: new Uint8Array([0x70, 0, 0x0e, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1d, 0]), data: new Uint8Array(0) };
    }
    return { status: ScsiStatus.GOOD, sense: new Uint8Array(0), data: buf.subarray(0, n) };
  } finally {
    closeSync(req.fd);
  }
}

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'prmux-server-'));
  for (let k = 0; k < 32; k++) writeFileSync(join(dir, `tag-${k}`), `tag-${k}`);
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe('pr-helper server: fd passing under a hostile mix', () => {
  it('serves 10,000 requests (valid, violations, abrupt disconnects, two-fd and no-fd messages) and loses or leaks no fd', async () => {
    // Warm-up so that lazily created process-wide fds (libuv, koffi) exist before the baseline.
    const path = join(dir, 'stress.sock');
    const warm = createPrHelperServer({ path, handler: tagHandler });
    await warm.listen();
    const w = await python('prh_stress.py', [path, dir, '20', '1']);
    assert.equal(w.code, 0, w.stderr);
    await warm.close();

    const baseline = fdCount();
    const server = createPrHelperServer({ path, handler: tagHandler });
    await server.listen();
    const r = await python('prh_stress.py', [path, dir, '10000', '7']);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as { sent: number; counts: Record<string, number>; unexpected: unknown[]; unexpectedCount: number };
    assert.ok(report.sent >= 10_000);
    assert.deepEqual(report.unexpected, [], JSON.stringify(report.unexpected));
    for (const [name, n] of Object.entries(report.counts)) assert.ok(n > 0, `scenario ${name} ran`);
    await waitFor(() => server.connectionCount === 0, 'every connection to close');
    await server.close();
    assert.equal(fdCount(), baseline, 'the process holds exactly the fds it held before');
  });
});

describe('pr-helper server: socket file handling', () => {
  it('replaces a stale socket file', async () => {
    const path = join(dir, 'stale.sock');
    closeFd(listenUnix(path, 1)); // bound then closed: a socket file nobody listens on
    assert.ok(statSync(path).isSocket());
    const server = createPrHelperServer({ path, handler: tagHandler, socketMode: 0o660 });
    await server.listen();
    assert.equal(statSync(path).mode & 0o777, 0o660);
    const r = await python('prh_client.py', ['--socket', path, '--device', join(dir, 'tag-3'), '--read-only', 'raw', '--cdb', '5e01000000030000ff00']);
    assert.equal(JSON.parse(r.stdout).status, 0, r.stdout + r.stderr);
    await server.close();
    assert.throws(() => statSync(path), /ENOENT/, 'close removes the socket file it created');
  });

  it('does not steal a socket a live server answers on', async () => {
    const path = join(dir, 'live.sock');
    const other = createServer((s) => {
      s.on('error', () => {}); // the probe hangs up at once
      s.end('alive');
    });
    await new Promise<void>((r) => other.listen(path, r));
    const server = createPrHelperServer({ path, handler: tagHandler });
    await assert.rejects(server.listen(), (e: unknown) => isPrmuxError(e, ErrorCode.CONFIG) && /live server/.test((e as Error).message));
    assert.ok(statSync(path).isSocket(), 'the live socket file is still there');
    await new Promise<void>((r) => other.close(() => r()));
  });

  it('refuses a path that is not a socket', async () => {
    const path = join(dir, 'plain-file');
    writeFileSync(path, 'x');
    await assert.rejects(createPrHelperServer({ path, handler: tagHandler }).listen(), (e: unknown) => isPrmuxError(e, ErrorCode.CONFIG));
  });

  it('serves on an inherited listening fd (socket activation) and refuses a non-socket fd', async () => {
    const path = join(dir, 'activated.sock');
    const fd = listenUnix(path, 8);
    const server = createPrHelperServer({ listenFd: fd, handler: tagHandler });
    await server.listen();
    const r = await python('prh_client.py', ['--socket', path, '--device', join(dir, 'tag-5'), '--read-only', 'raw', '--cdb', '5e01000000050000ff00']);
    const out = JSON.parse(r.stdout) as { status: number; data: string };
    assert.equal(out.status, 0);
    assert.equal(Buffer.from(out.data, 'hex').toString(), 'tag-5');
    await server.close();
    await assert.rejects(createPrHelperServer({ listenFd: 0, handler: tagHandler }).listen(), (e: unknown) => isPrmuxError(e, ErrorCode.CONFIG));
  });
});

describe('pr-helper server: connections are independent', () => {
  let server: PrHelperServer;
  let release: () => void = () => {};
  const path = () => join(dir, 'indep.sock');

  it('a slow handler on one connection does not delay another; close() waits for it', async () => {
    const slowGate = new Promise<void>((r) => (release = r));
    let slowStarted = false;
    server = createPrHelperServer({
      path: path(),
      handler: async (req) => {
        if (req.cdb[1] === 2) {
          slowStarted = true;
          await slowGate;
        }
        return tagHandler(req);
      },
    });
    await server.listen();
    // Connection A: REPORT CAPABILITIES (service action 2) blocks in the handler.
    const slow = python('prh_client.py', ['--socket', path(), '--device', join(dir, 'tag-1'), '--read-only', 'raw', '--cdb', '5e02000000010000ff00']);
    await waitFor(() => slowStarted, 'the slow request to reach the handler');
    // Connection B is answered meanwhile.
    const fast = await python('prh_client.py', ['--socket', path(), '--device', join(dir, 'tag-2'), '--read-only', 'raw', '--cdb', '5e01000000020000ff00']);
    assert.equal(JSON.parse(fast.stdout).status, 0);
    // close() stops accepting but lets A finish.
    let closed = false;
    const closing = server.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(closed, false, 'close() waits for the in-flight request');
    release();
    const a = await slow;
    const out = JSON.parse(a.stdout) as { status: number; data: string };
    assert.equal(out.status, 0, 'the in-flight request is answered before the connection closes');
    assert.equal(Buffer.from(out.data, 'hex').toString(), 'tag-1');
    await closing;
  });

  it('destroy() drops connections at once', async () => {
    const gate = new Promise<void>(() => {});
    let started = false;
    const fds: number[] = [];
    server = createPrHelperServer({
      path: path(),
      handler: async (req) => {
        fds.push(req.fd);
        started = true;
        await gate;
        throw new Error('unreachable');
      },
    });
    await server.listen();
    const client = python('prh_client.py', ['--socket', path(), '--device', join(dir, 'tag-1'), '--read-only', 'read-keys']);
    await waitFor(() => started, 'the request to reach the handler');
    server.destroy();
    assert.equal(server.connectionCount, 0);
    const r = await client;
    assert.equal(JSON.parse(r.stdout).error, 'helper-closed');
    for (const fd of fds) closeSync(fd); // the handler owned it
  });
});

describe('pr-helper server with the Node client', () => {
  it('answers PR IN with the fd content, PR OUT under 24 bytes with 5/1A/00, in order, leaking nothing', async () => {
    const { PrHelperClient } = await import('../../src/socket/pr-helper-client.js');
    const { encodePrInCdb, encodePrOutCdb } = await import('../../src/scsi/cdb.js');
    const path = join(dir, 'node-client.sock');
    const server = createPrHelperServer({ path, handler: tagHandler });
    await server.listen();
    const baseline = fdCount();
    const client = await PrHelperClient.connect(path);
    try {
    for (let i = 0; i < 200; i++) {
      const k = i % 32;
      // r+: a PR OUT on a read-only fd is answered 5/20/00 before the length check.
      const fd = openSync(join(dir, `tag-${k}`), i % 5 === 4 ? 'r+' : 'r');
      try {
        if (i % 5 === 4) {
          const r = await client.command(encodePrOutCdb({ serviceAction: 1, parameterListLength: 8 }, 16), fd, new Uint8Array(8));
          assert.equal(r.status, ScsiStatus.CHECK_CONDITION);
          assert.deepEqual([r.sense[2], r.sense[12], r.sense[13]], [5, 0x1a, 0]);
        } else {
          const cdb = encodePrInCdb({ serviceAction: 1, allocationLength: 64 }, 16);
          new DataView(cdb.buffer).setUint32(2, k);
          const r = await client.command(cdb, fd);
          assert.equal(r.status, ScsiStatus.GOOD);
          assert.equal(Buffer.from(r.payload).toString(), `tag-${k}`);
        }
      } finally {
        closeSync(fd); // ours; the server received a duplicate and closed that one
      }
    }
    client.close();
    await waitFor(() => server.connectionCount === 0, 'the connection to close');
    assert.equal(fdCount(), baseline);
    } finally {
      // A failed assertion must not leave the client's poll handle keeping the test process alive.
      client.close();
      server.destroy();
    }
  });
});
