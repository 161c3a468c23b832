// Starts a pr-manager-helper as a child process (`prmux serve`, or qemu-pr-helper for comparison),
// waits until its socket answers with the 4-byte feature word, and stops it with a signal.
//
// Readiness is judged by the protocol itself (connect, read the feature word, hang up) rather than
// by a log line, so the same code works for prmux and for qemu-pr-helper.

import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { repoRoot } from '../support/paths.js';

/**
 * The prmux CLI the tests run: `PRMUX_CLI` when set (an engineer's own build, e.g.
 * dist-conf/src/cli.js), otherwise the build `npm test` makes (as test/support/san-process.ts).
 */
export const defaultCliPath = process.env['PRMUX_CLI'] ?? join(repoRoot, 'dist', 'src', 'cli.js');

export interface HelperProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly socket: string;
  /** stderr lines so far (for failure messages). */
  readonly stderr: string[];
  /** Number of open fds of the process (/proc/PID/fd). */
  fdCount(): number;
  /** Signal the process and wait for its exit; resolves with the exit code (null if killed by a signal). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface StartHelperOptions {
  /** Executable and arguments. */
  readonly command: string;
  readonly args: readonly string[];
  readonly socket: string;
  readonly readyTimeoutMs?: number;
}

/** True when a client connecting to `socket` receives the 4-byte feature word. */
export function probeFeatureWord(socket: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(socket);
    let got = 0;
    const finish = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= 4) finish(true);
    });
    s.on('error', () => finish(false));
    s.on('close', () => finish(got >= 4));
  });
}

export async function startHelper(opts: StartHelperOptions): Promise<HelperProcess> {
  const child = spawn(opts.command, [...opts.args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  let failure: Error | null = null;
  void spawnError.then((e) => (failure = e));

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  for (;;) {
    if (failure !== null) throw new Error(`Cannot start ${opts.command}: ${(failure as Error).message}`);
    if (exited !== null) {
      const e = exited as { code: number | null; signal: NodeJS.Signals | null };
      throw new Error(`${opts.command} exited (code ${e.code}, signal ${e.signal}) before serving ${opts.socket}:\n${stderr.join('\n')}`);
    }
    if (await probeFeatureWord(opts.socket, 500)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${opts.command} did not serve ${opts.socket} in time:\n${stderr.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  const pid = child.pid!;
  return {
    child,
    pid,
    socket: opts.socket,
    stderr,
    fdCount: () => readdirSync(`/proc/${pid}/fd`).length,
    async stop(signal = 'SIGTERM', timeoutMs = 10_000) {
      if (exited !== null) return exited;
      child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`${opts.command} did not exit within ${timeoutMs} ms of ${signal}:\n${stderr.join('\n')}`));
        }, timeoutMs);
      });
      try {
        return await Promise.race([exit, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

export interface StartServeOptions {
  readonly socket: string;
  /** Extra arguments after `serve -k SOCKET` (e.g. ['--san', 'DIR/host1']). */
  readonly args?: readonly string[];
  /** The prmux CLI to run; defaults to defaultCliPath. */
  readonly cliPath?: string;
  readonly readyTimeoutMs?: number;
}

/** `node <cli.js> serve -k SOCKET ...args` as a child process, ready when the socket answers. */
export function startServe(opts: StartServeOptions): Promise<HelperProcess> {
  return startHelper({
    command: process.execPath,
    // Its own key state directory (the default, /var/lib/prmux, is the machine's).
    args: [opts.cliPath ?? defaultCliPath, 'serve', '-k', opts.socket, '--state-dir', `${opts.socket}.state`, ...(opts.args ?? [])],
    socket: opts.socket,
    ...(opts.readyTimeoutMs !== undefined ? { readyTimeoutMs: opts.readyTimeoutMs } : {}),
  });
}

export interface PythonResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a script of test/clients with python3; resolves when it exits. */
export function runPython(script: string, args: readonly string[], timeoutMs = 120_000): Promise<PythonResult> {
  return new Promise((resolve, reject) => {
    const p = spawn('python3', [join(repoRoot, 'test', 'clients', script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${script} did not finish within ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** One case line of prh_conformance.py. */
export interface CaseLine {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  readonly observation?: unknown;
}

export interface SuiteRun {
  readonly code: number | null;
  readonly cases: Map<string, CaseLine>;
  readonly summary: { total: number; passed: number; failed: number; failedNames: string[] } | null;
  readonly stderr: string;
  readonly stdout: string;
}

/** Run prh_conformance.py and parse its JSON lines. */
export async function runConformance(args: readonly string[], timeoutMs?: number): Promise<SuiteRun> {
  const r = await runPython('prh_conformance.py', args, timeoutMs);
  const cases = new Map<string, CaseLine>();
  let summary: SuiteRun['summary'] = null;
  for (const line of r.stdout.split('\n')) {
    if (line.trim() === '') continue;
    const v = JSON.parse(line) as Record<string, unknown>;
    if (v['summary'] === true) summary = v as unknown as NonNullable<SuiteRun['summary']>;
    else cases.set(String(v['name']), v as unknown as CaseLine);
  }
  return { code: r.code, cases, summary, stderr: r.stderr, stdout: r.stdout };
}

/** The case names prh_conformance.py runs with these mode flags (it prints them without connecting). */
export async function listConformanceCases(modeArgs: readonly string[]): Promise<string[]> {
  const r = await runPython('prh_conformance.py', ['--list', ...modeArgs], 20_000);
  if (r.code !== 0) throw new Error(`prh_conformance.py --list failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as string[];
}
