// Node driver for the SAN lab (lab/lab.sh): a persistent QEMU TCG guest with a real LIO target, tcm_loop
// paths, dm-multipath and multipathd, running the host's own binaries. Boot and power-off go through
// lab.sh (one implementation of the VM lifecycle); requests are written straight into the run
// directory the guest agent polls, so each exec() returns a structured result (exit code, stdout,
// stderr, guest time) without a bash round trip on the host. The request format is documented in
// lab/README.md and implemented on the guest side by lab/guest/stage2.sh.
//
// Test-support code: it uses timers and child processes freely (it is an edge, not library code).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { repoRoot } from '../support/paths.js';

export const labScript = join(repoRoot, 'lab', 'lab.sh');

/** Stable codes of the lab driver's errors (test support, so they live here, not in src/errors.ts). */
export const LabErrorCode = {
  /** The lab cannot run on this machine (not root, not Linux, build failed...): tests skip. */
  UNAVAILABLE: 'ERR_LAB_UNAVAILABLE',
  /** The VM did not reach a ready multipath map. */
  BOOT: 'ERR_LAB_BOOT',
  /** The VM is gone (crashed, killed, powered off). */
  GONE: 'ERR_LAB_GONE',
  /** No result from the guest within the command timeout plus a margin. */
  TIMEOUT: 'ERR_LAB_TIMEOUT',
  /** The driver was used after stop(). */
  CLOSED: 'ERR_LAB_CLOSED',
  /** A request the guest agent cannot carry (empty argv, NUL in an argument, bad timeout). */
  USAGE: 'ERR_LAB_USAGE',
} as const;
export type LabErrorCode = (typeof LabErrorCode)[keyof typeof LabErrorCode];

export class LabError extends Error {
  readonly code: LabErrorCode;
  constructor(code: LabErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = 'LabError';
  }
}

export interface ExecResult {
  readonly argv: readonly string[];
  /** The command's exit status; 124 when the guest-side timeout killed it, 127 when it was not found. */
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  /** Host wall time from writing the request to reading the result. */
  readonly wallMs: number;
  /** Guest time (uptime clock) the command ran. */
  readonly guestMs: number;
}

export interface ExecOptions {
  /** Guest-side timeout in seconds (default 600). */
  readonly timeoutSec?: number;
  /** Working directory in the guest (default: this process's cwd, which the read-only share mirrors). */
  readonly cwd?: string;
  /**
   * Drop the guest's caches first. The host root is shared with cache=loose: a host file the guest has
   * already read and the host has changed since (a rebuilt dist/ file) is stale in the guest until then.
   */
  readonly fresh?: boolean;
}

export interface StartOptions {
  /** Persistent instance name (lab.sh --name); distinct names can coexist. */
  readonly name: string;
  /** Number of tcm_loop paths (1..16, default 2). */
  readonly paths?: number;
  /** Host wall seconds allowed from qemu start to a ready map (default 420: TCG on a busy 2-core host). */
  readonly bootTimeoutSec?: number;
  /** The VM is killed after this many seconds whatever happens (default 1800). */
  readonly lifetimeSec?: number;
  /** The guest powers itself off after this many seconds without a request (default 900; 0 = never). */
  readonly idleTimeoutSec?: number;
  readonly cacheDir?: string;
}

/** Output of one lab.sh invocation, bounded so a runaway command cannot exhaust memory. */
export interface ScriptResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const MAX_CAPTURE = 4 * 1024 * 1024;
const POLL_MS = 50;

/** Run lab.sh with the given arguments; kills it (and with it the VM it boots) after timeoutMs. */
export function runLabScript(args: readonly string[], timeoutMs: number): Promise<ScriptResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [labScript, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    child.stdout.on('data', (b: Buffer) => {
      if (outLen < MAX_CAPTURE) out.push(b);
      outLen += b.length;
    });
    child.stderr.on('data', (b: Buffer) => {
      if (errLen < MAX_CAPTURE) err.push(b);
      errLen += b.length;
    });
    // SIGTERM makes lab.sh's exit trap kill the VM it started.
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

/**
 * Why the lab cannot run here, or null when it can. Builds (installs packages, fetches the kernel) on
 * the way: a cached build is a quick no-op, and a failed one is a reason to skip, not a test failure.
 */
/**
 * Why a lab suite must skip, or null to run: PRMUX_LAB=0 turns the lab off on purpose; otherwise
 * whatever labUnavailableReason finds (not Linux, not root, no QEMU...).
 */
export async function labSkipReason(): Promise<string | null> {
  if (process.env['PRMUX_LAB'] === '0') return 'disabled by PRMUX_LAB=0';
  return labUnavailableReason();
}

export async function labUnavailableReason(opts: { cacheDir?: string; buildTimeoutSec?: number } = {}): Promise<string | null> {
  if (process.platform !== 'linux') return `the lab needs Linux (this is ${process.platform})`;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'the lab needs root (apt-get, 9p passthrough share)';
  if (!existsSync(labScript)) return `no ${labScript}`;
  const args = ['build', ...(opts.cacheDir !== undefined ? ['--cache', opts.cacheDir] : [])];
  let r: ScriptResult;
  try {
    r = await runLabScript(args, (opts.buildTimeoutSec ?? 1200) * 1000);
  } catch (e) {
    return `lab.sh build could not be started: ${(e as Error).message}`;
  }
  if (r.code !== 0) return `lab.sh build failed (exit ${String(r.code)}): ${lastLines(r.stderr, 3)}`;
  return null;
}

async function readBounded(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const buf = Buffer.alloc(Math.min(size, MAX_CAPTURE));
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const text = buf.subarray(0, bytesRead).toString('utf8');
    return size > MAX_CAPTURE ? `${text}\n[lab: output truncated at ${MAX_CAPTURE} of ${size} bytes]\n` : text;
  } finally {
    await fh.close();
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

let requestSeq = 0;

/** A running persistent lab VM. */
export class LabVm {
  readonly name: string;
  readonly runDir: string;
  readonly paths: number;
  /** lab.sh start's stderr: run dir and the boot→ready timing. */
  readonly bootLog: string;
  private readonly cacheArgs: readonly string[];
  private stopped = false;

  private constructor(name: string, runDir: string, paths: number, bootLog: string, cacheArgs: readonly string[]) {
    this.name = name;
    this.runDir = runDir;
    this.paths = paths;
    this.bootLog = bootLog;
    this.cacheArgs = cacheArgs;
  }

  /** Boot a persistent VM (lab.sh start); resolves once mpatha has every path active. */
  static async start(opts: StartOptions): Promise<LabVm> {
    const paths = opts.paths ?? 2;
    const boot = opts.bootTimeoutSec ?? 420;
    const cacheArgs = opts.cacheDir !== undefined ? ['--cache', opts.cacheDir] : [];
    const args = ['start', '--name', opts.name, '--paths', String(paths), '--boot-timeout', String(boot),
      '--lifetime', String(opts.lifetimeSec ?? 1800), '--idle-timeout', String(opts.idleTimeoutSec ?? 900), ...cacheArgs];
    const r = await runLabScript(args, (boot + 120) * 1000);
    const runDir = r.stdout.trim().split('\n').pop() ?? '';
    if (r.code !== 0 || runDir === '') {
      throw new LabError(LabErrorCode.BOOT, `Cannot start the lab VM '${opts.name}' (lab.sh exit ${String(r.code)}):\n${lastLines(r.stderr, 40)}`);
    }
    return new LabVm(opts.name, runDir, paths, r.stderr, cacheArgs);
  }

  /** Host directory shared read-write and uncached with the guest, where it is `guestShareDir`. */
  get shareDir(): string {
    return join(this.runDir, 'share');
  }

  /** The guest's path of `shareDir` (also $LAB_SHARE in guest commands). */
  static readonly guestShareDir = '/lab-run/share';

  /** Whether qemu (through its watchdog wrapper) is still running. */
  async alive(): Promise<boolean> {
    try {
      const pid = Number.parseInt(await readFile(join(this.runDir, 'watchdog.pid'), 'utf8'), 10);
      return Number.isInteger(pid) && pid > 0 && pidAlive(pid);
    } catch {
      return false;
    }
  }

  /** Run argv in the guest; never rejects for a non-zero exit, only when the lab itself fails. */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.stopped) throw new LabError(LabErrorCode.CLOSED, `Cannot exec in lab '${this.name}': it was stopped`);
    if (argv.length === 0) throw new LabError(LabErrorCode.USAGE, 'Cannot exec: empty argv');
    const timeoutSec = opts.timeoutSec ?? 600;
    if (!Number.isSafeInteger(timeoutSec) || timeoutSec < 1) {
      throw new LabError(LabErrorCode.USAGE, `Cannot exec: timeoutSec ${String(timeoutSec)} is not a positive integer`);
    }
    const id = `${Date.now()}${String(++requestSeq % 1e6).padStart(6, '0')}-${process.pid}`;
    const fields = [`${timeoutSec}${opts.fresh === true ? '+fresh' : ''}`, opts.cwd ?? process.cwd(), ...argv];
    if (fields.some((f) => f.includes('\0'))) throw new LabError(LabErrorCode.USAGE, 'Cannot exec: an argument contains NUL');
    const started = performance.now();
    const tmp = join(this.runDir, 'req', `.${id}.tmp`);
    await writeFile(tmp, fields.map((f) => `${f}\0`).join(''));
    // The guest only looks at *.req, so it never sees a half-written request.
    await rename(tmp, join(this.runDir, 'req', `${id}.req`));
    const out = (ext: string): string => join(this.runDir, 'out', `${id}.${ext}`);
    const deadline = started + (timeoutSec + 30) * 1000;
    let code: number | undefined;
    let polls = 0;
    for (;;) {
      const rc = await readFile(out('rc'), 'utf8').catch(() => '');
      if (/^\d+\n$/.test(rc)) {
        code = Number.parseInt(rc, 10);
        break;
      }
      // Checking the process is cheap but not free: every 10th poll.
      if (++polls % 10 === 0 && !(await this.alive())) {
        throw new LabError(LabErrorCode.GONE, `Cannot exec ${JSON.stringify(argv)}: the lab VM '${this.name}' is gone (see ${this.runDir}/console.log)`);
      }
      if (performance.now() > deadline) {
        throw new LabError(LabErrorCode.TIMEOUT, `Cannot exec ${JSON.stringify(argv)}: no result within ${timeoutSec}s + 30s`);
      }
      await delay(POLL_MS);
    }
    const wallMs = performance.now() - started;
    const [stdout, stderr, time] = await Promise.all([readBounded(out('out')), readBounded(out('err')), readFile(out('time'), 'utf8')]);
    const [t0, t1] = time.trim().split(/\s+/).map(Number);
    await rm(join(this.runDir, 'req', `${id}.req`), { force: true });
    return { argv, code, stdout, stderr, timedOut: code === 124, wallMs, guestMs: ((t1 ?? 0) - (t0 ?? 0)) * 1000 };
  }

  /** Run a bash script in the guest. */
  sh(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.exec(['bash', '-c', script], opts);
  }

  /** Like exec, but rejects (with the output in the message) unless the exit status is 0. */
  async check(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.exec(argv, opts);
    if (r.code !== 0) {
      throw new Error(`guest command ${JSON.stringify(argv)} exited ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`);
    }
    return r;
  }

  /** Power the VM off (lab.sh stop kills it if it does not go). Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const r = await runLabScript(['stop', '--name', this.name, ...this.cacheArgs], 120_000);
    if (r.code !== 0) throw new Error(`lab.sh stop '${this.name}' exited ${String(r.code)}: ${lastLines(r.stderr, 5)}`);
  }
}
