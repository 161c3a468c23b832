// `prmux serve --san DIR/host1` against an independent client in another language: the Python
// suite test/clients/prh_conformance.py speaks the protocol as QEMU's scsi/pr-manager-helper.c does
// (socket.send_fds) and checks negotiation, every PR IN / PR OUT service action with its SCSI
// semantics on the simulated SAN, every protocol violation, 64 concurrent connections, a slow path,
// reconnects and idle connections. One `it` per case of the suite; then the process checks: no fd
// left behind, and SIGTERM ends it with exit status 0.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type SanProcess, removeDir, startSan } from '../support/san-process.js';
import { type HelperProcess, type SuiteRun, listConformanceCases, runConformance, runPython, startServe } from './serve-harness.js';

const HOST = 'host1';

/** Case names known before the suite runs, so each gets its own `it`. */
const caseNames = await listConformanceCases([]);

/**
 * Connections to `path` as the listening side sees them: /proc/net/unix lists accepted sockets with
 * the listener's path and state 03 (connected). Used to count the SAN connections prmux keeps idle
 * for reuse (src/serve/san-backend.ts pools them), which are not leaks.
 */
function connectedTo(path: string): number {
  let n = 0;
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[5] === '03' && f.slice(7).join(' ') === path) n++;
  }
  return n;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * prmux's fd count without the pooled SAN connections, taken once it holds no client connection
 * (its accepted sockets, listed in /proc/net/unix under its socket path, are all gone) and the
 * count is the same twice in a row; with `want`, polls (bounded) until the count equals it.
 */
async function settledFds(serve: HelperProcess, sanSock: string, want?: number): Promise<number> {
  let last = -1;
  for (let i = 0; i < 200; i++) {
    if (connectedTo(serve.socket) === 0) {
      const n = serve.fdCount() - connectedTo(sanSock);
      if (want !== undefined ? n === want : n === last) return n;
      last = n;
    }
    await sleep(50);
  }
  return last;
}

describe('prmux serve --san: conformance with an independent QEMU-style client', () => {
  let san: SanProcess | null = null;
  let serve: HelperProcess | null = null;
  let work = '';
  let run: SuiteRun | null = null;
  let baselineFds = -1;
  let sanSock = '';

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'prmux-conformance-'));
    san = await startSan();
    sanSock = join(san.dir, HOST, 'san.sock');
    const socket = join(work, 'prmux.sock');
    serve = await startServe({ socket, args: ['--san', join(san.dir, HOST)] });
    // Warm-up, so that lazily created process-wide fds (libuv pool, first SAN connection) exist
    // before the baseline.
    const warm = await runPython('prh_client.py', ['--socket', socket, '--device', join(san.dir, HOST, 'dev', 'sda'), 'read-keys']);
    assert.equal(warm.code, 0, warm.stdout + warm.stderr);
    baselineFds = await settledFds(serve, sanSock);
    run = await runConformance(['--socket', socket, '--san-dir', san.dir, '--host', HOST, '--scratch', work], 90_000);
  });

  after(async () => {
    await serve?.stop('SIGKILL').catch(() => undefined);
    await san?.stop();
    if (san) removeDir(san.dir);
    if (work) removeDir(work);
  });

  for (const name of caseNames) {
    it(name, () => {
      assert.ok(run, 'the suite ran');
      const c = run.cases.get(name);
      assert.ok(c, `case not reported; suite exit ${run.code}; stderr:\n${run.stderr}`);
      assert.equal(c.ok, true, c.detail);
    });
  }

  it('the suite exits 0 and reports exactly the listed cases', () => {
    assert.ok(run);
    assert.deepEqual([...run.cases.keys()].sort(), [...caseNames].sort(), run.stderr);
    assert.ok(run.summary, `no summary line: ${run.stdout.slice(-2000)}\n${run.stderr}`);
    assert.equal(run.summary.failed, 0, `failed: ${run.summary.failedNames.join('; ')}`);
    assert.equal(run.code, 0, run.stderr);
  });

  it('prmux holds the fds it held before the suite (pooled SAN connections aside)', async () => {
    assert.ok(serve);
    const now = await settledFds(serve, sanSock, baselineFds);
    assert.equal(now, baselineFds, `fds: ${serve.fdCount()}, pooled SAN connections: ${connectedTo(sanSock)}`);
    // The pool is bounded (64 in src/serve/san-backend.ts): 64 concurrent clients must not grow it past that.
    assert.ok(connectedTo(sanSock) <= 64, `${connectedTo(sanSock)} SAN connections`);
  });

  it('SIGTERM makes prmux exit 0 and remove its socket', async () => {
    assert.ok(serve);
    const exit = await serve.stop('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null }, serve.stderr.join('\n'));
    assert.equal(existsSync(serve.socket), false, 'the socket file is removed');
  });
});
