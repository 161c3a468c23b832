// What the benchmarks share: their child processes (every one registered, so it is killed on any
// way out), CPU pinning, readiness waits, and the handlers that stop everything on a signal.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { connect } from 'node:net';

export type PinMode = 'split' | 'same' | 'none';

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  /** Last lines of stdout+stderr (bounded), for diagnostics. */
  readonly tail: string[];
  exited: boolean;
}

const children = new Set<Child>();
const TAIL_LINES = 40;
let signalled = false;
let tmpToRemove: string | undefined;

/** Whether a signal asked the benchmark to stop (long loops check it). */
export function interrupted(): boolean {
  return signalled;
}

/** `taskset` prefix: servers on CPU 0, the client on CPU 1 ('split'), all on CPU 0 ('same'), or none. */
export function cpuPrefix(pin: PinMode, role: 'server' | 'client'): string[] {
  if (pin === 'none') return [];
  return ['taskset', '-c', pin === 'same' || role === 'server' ? '0' : '1'];
}

export function startChild(name: string, argv: readonly string[], opts: { stdin?: 'pipe' | 'ignore'; onLine?: (line: string) => void } = {}): Child {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error(`Cannot start ${name}: empty command`);
  const proc = spawn(cmd, args, { stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'] });
  const child: Child = { name, proc, tail: [], exited: false };
  children.add(child);
  // Always drain the pipes: a server blocked on a full pipe would look slow.
  const keep = (chunk: Buffer): void => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line === '') continue;
      child.tail.push(line);
      if (child.tail.length > TAIL_LINES) child.tail.shift();
      opts.onLine?.(line);
    }
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  proc.on('error', (e) => {
    child.tail.push(`spawn error: ${e.message}`);
    child.exited = true;
  });
  proc.on('exit', () => {
    child.exited = true;
    children.delete(child);
  });
  return child;
}

export function killAllNow(): void {
  for (const c of children) if (!c.exited) c.proc.kill('SIGKILL');
}

export async function stopChild(c: Child | undefined, graceMs = 3000): Promise<void> {
  if (c === undefined || c.exited || c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  const gone = new Promise<void>((done) => c.proc.once('exit', () => done()));
  c.proc.kill('SIGTERM');
  const timer = setTimeout(() => c.proc.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c)));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function canConnect(path: string): Promise<boolean> {
  return new Promise((done) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });
}

function exitText(c: Child): string {
  return `${c.name} exited (${c.proc.exitCode ?? c.proc.signalCode}): ${c.tail.slice(-5).join(' | ')}`;
}

/** Waits until `path` accepts connections; returns why not (the child exited, or the bound passed). */
export async function waitListening(c: Child, path: string, timeoutMs = 30_000): Promise<string | undefined> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (c.exited) return exitText(c);
    if (existsSync(path) && (await canConnect(path))) return undefined;
    if (Date.now() > until) return `${c.name} did not listen on ${path} within ${timeoutMs} ms: ${c.tail.slice(-5).join(' | ')}`;
    await sleep(50);
  }
}

/** Waits until the child printed a line starting with `prefix`; returns why not. */
export async function waitLine(c: Child, prefix: string, timeoutMs = 30_000): Promise<string | undefined> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (c.tail.some((l) => l.startsWith(prefix))) return undefined;
    if (c.exited) return exitText(c);
    if (Date.now() > until) return `${c.name} did not print "${prefix}" within ${timeoutMs} ms: ${c.tail.slice(-5).join(' | ')}`;
    await sleep(50);
  }
}

/** The temporary directory removed on every way out (unless the caller keeps it). */
export function removeTmpOnExit(dir: string | undefined): void {
  tmpToRemove = dir;
}

export function removeTmp(): void {
  if (tmpToRemove !== undefined) rmSync(tmpToRemove, { recursive: true, force: true });
  tmpToRemove = undefined;
}

/**
 * Run `main` with every child killed on any way out: normal end, an exception, a signal (a second
 * signal kills at once), or process exit.
 */
export function runBenchmark(main: () => Promise<number>): void {
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (signalled) {
        killAllNow();
        process.exit(130);
      }
      signalled = true;
      process.stderr.write(`\n${sig}: stopping all benchmark processes\n`);
      void stopAll().finally(() => {
        removeTmp();
        process.exit(130);
      });
    });
  }
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      killAllNow();
      removeTmp();
      process.exitCode = 2;
    },
  );
}
