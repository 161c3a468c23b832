// Side-by-side round-trip benchmark of pr-manager-helper servers, all driven by the same compiled
// client (bench/prh-bench-client.c) with the same request (PERSISTENT RESERVE IN / READ KEYS, one
// fd attached) at 1, 8 and 64 connections:
//
//   prmux-san    prmux serve --san on a simulated SAN path fd: protocol + SAN round trip
//   prmux-file   prmux serve on a regular-file fd: its error path (SG_IO fails, CHECK CONDITION)
//   qemu-file    qemu-pr-helper on the same regular-file fd: the same error path (pure protocol cost)
//   node-echo    a bare Node `net` echo of the same frame sizes: the floor for a Node server
//   prmux-loop0, qemu-loop0   the same two on /dev/loop0 (a block device without SG_IO), if present
//
// Contenders are interleaved (one run of each, in an order rotated every round) and the medians of
// the rounds are reported, with ratios. See bench/README.md for how to read the numbers and
// ../shared/reference/benchmarking.md for why it is measured this way (2 vCPUs, wake-up costs).
//
// This is an edge program: it reads argv/env, writes to stdout/stderr and spawns processes. Every
// child is killed on exit, on error and on SIGINT/SIGTERM/SIGHUP.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readdirSync, writeFileSync, constants as fsc } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Child, type PinMode, cpuPrefix, interrupted, removeTmp, removeTmpOnExit, runBenchmark, sleep, startChild, stopAll, waitLine, waitListening } from './bench-kit.js';

// ---------------------------------------------------------------------------------------------
// Options


interface Options {
  readonly rounds: number;
  readonly seconds: number;
  readonly warmup: number;
  readonly conns: readonly number[];
  readonly json: string | undefined;
  readonly cli: string;
  readonly pin: PinMode;
  readonly alloc: number;
  readonly only: readonly string[] | undefined;
  readonly qemu: string | undefined;
  readonly loop: string | undefined;
  readonly keepTmp: boolean;
}

const HERE = dirname(fileURLToPath(import.meta.url));

// How prmux is asked to serve. The contract offers `prmux serve [options]` and bare `prmux [options]`
// (same code). The bare form is used because, while both the root program and `serve` declare the
// same options, commander hands `serve -k PATH` to the root program and serve falls back to the
// default socket; the bare form means the same thing whichever way that is resolved.
const SERVE: readonly string[] = [];

const USAGE = `usage: node dist/bench/pr-helper-bench.js [options]
  --rounds N         rounds per connection count (env PRMUX_BENCH_ROUNDS, default 5)
  --seconds S        measured seconds per run (env PRMUX_BENCH_SECONDS, default 2)
  --warmup S         unmeasured warm-up per run (env PRMUX_BENCH_WARMUP, default 0.2)
  --conns LIST       connection counts (env PRMUX_BENCH_CONNS, default 1,8,64)
  --json FILE        also write all results as JSON
  --cli PATH         prmux cli.js to run (default: the cli.js of this build)
  --pin split|same|none   split: servers on CPU 0, client on CPU 1 (default); same: all on CPU 0
  --no-pin           same as --pin none
  --alloc N          READ KEYS allocation length (default 255)
  --only LIST        contenders to run, e.g. prmux-file,qemu-file
  --qemu-pr-helper PATH   (default: qemu-pr-helper from PATH)
  --loop DEV         block device for the *-loop0 contenders (default /dev/loop0; "none" to skip)
  --keep-tmp         keep the temporary directory (sockets, logs)`;

function parseOptions(argv: readonly string[], env: NodeJS.ProcessEnv): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      rounds: { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      conns: { type: 'string' },
      json: { type: 'string' },
      cli: { type: 'string' },
      pin: { type: 'string' },
      'no-pin': { type: 'boolean' },
      alloc: { type: 'string' },
      only: { type: 'string' },
      'qemu-pr-helper': { type: 'string' },
      loop: { type: 'string' },
      'keep-tmp': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return 'help';
  const num = (name: string, v: string | undefined, dflt: number, min: number, max: number, integer: boolean): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new Error(`Cannot parse options: --${name} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}, got "${v}"`);
    }
    return n;
  };
  const connsText = values.conns ?? env['PRMUX_BENCH_CONNS'] ?? '1,8,64';
  const conns = connsText.split(',').map((c) => num('conns', c.trim(), 1, 1, 1024, true));
  let pin: PinMode = 'split';
  if (values.pin !== undefined) {
    if (values.pin !== 'split' && values.pin !== 'same' && values.pin !== 'none') throw new Error(`Cannot parse options: --pin must be split, same or none, got "${values.pin}"`);
    pin = values.pin;
  }
  if (values['no-pin']) pin = 'none';
  const which = (cmd: string): string | undefined => {
    const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
    const p = r.stdout.trim();
    return r.status === 0 && p ? p : undefined;
  };
  const loop = values.loop ?? '/dev/loop0';
  return {
    rounds: num('rounds', values.rounds ?? env['PRMUX_BENCH_ROUNDS'], 5, 1, 1000, true),
    seconds: num('seconds', values.seconds ?? env['PRMUX_BENCH_SECONDS'], 2, 0.05, 600, false),
    warmup: num('warmup', values.warmup ?? env['PRMUX_BENCH_WARMUP'], 0.2, 0, 60, false),
    conns,
    json: values.json,
    cli: resolve(values.cli ?? join(HERE, '..', 'src', 'cli.js')),
    pin,
    alloc: num('alloc', values.alloc, 255, 8, 8192, true),
    only: values.only?.split(',').map((s) => s.trim()).filter((s) => s !== ''),
    qemu: values['qemu-pr-helper'] ?? which('qemu-pr-helper'),
    loop: loop === 'none' ? undefined : loop,
    keepTmp: values['keep-tmp'] ?? false,
  };
}

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered so it can be killed on any exit path.

function fdCount(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The client

interface ClientResult {
  readonly conns: number;
  readonly requests: number;
  readonly seconds: number;
  readonly p50_us: number;
  readonly p90_us: number;
  readonly p99_us: number;
  readonly p999_us: number;
  readonly max_us: number;
  readonly mean_us: number;
  readonly rps: number;
  readonly errors: number;
  readonly size_mismatch: number;
  readonly statuses: Record<string, number>;
  readonly first_reply?: { status: number; size: number; sense: string };
  readonly first_error?: string;
  readonly setup_error?: string;
}

function compileClient(dir: string): string {
  // The C source is not compiled by tsc: find it in the repository this build came from
  // (dist*/bench/ -> ../../bench/).
  const candidates = [join(HERE, '..', '..', 'bench', 'prh-bench-client.c'), join(process.cwd(), 'bench', 'prh-bench-client.c')];
  const src = candidates.find((p) => existsSync(p));
  if (src === undefined) throw new Error(`Cannot compile the client: prh-bench-client.c not found in ${candidates.join(', ')}`);
  const out = join(dir, 'prh-bench-client');
  const r = spawnSync('gcc', ['-O2', '-Wall', '-pthread', '-o', out, src], { encoding: 'utf8' });
  if (r.error) throw new Error(`Cannot compile the client: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`Cannot compile the client: gcc exited ${r.status}: ${r.stderr}`);
  return out;
}

async function runClient(opts: Options, client: string, sock: string, fd: string, args: readonly string[], hardTimeoutMs: number): Promise<ClientResult> {
  if (interrupted()) return { setup_error: 'interrupted' } as ClientResult;
  const c = startChild('client', [...cpuPrefix(opts.pin, 'client'), client, '-s', sock, '-f', fd, '-a', String(opts.alloc), ...args]);
  let out = '';
  c.proc.stdout?.on('data', (b: Buffer) => (out += b.toString('utf8')));
  const timer = setTimeout(() => c.proc.kill('SIGKILL'), hardTimeoutMs);
  await new Promise<void>((done) => {
    if (c.exited) done();
    else c.proc.once('exit', () => done());
  });
  clearTimeout(timer);
  const line = out.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as ClientResult;
  } catch {
    return { setup_error: `client produced no result (exit ${c.proc.exitCode ?? c.proc.signalCode}): ${c.tail.slice(-3).join(' | ')}` } as ClientResult;
  }
}

// ---------------------------------------------------------------------------------------------
// Contenders

interface Contender {
  readonly name: string;
  readonly what: string;
  readonly server: string; // key into servers
  fd: string;
  available: boolean;
  reason: string;
  probe?: ClientResult;
}

interface Server {
  readonly key: string;
  readonly sock: string;
  child?: Child;
  error?: string;
  fdsBefore?: number | undefined;
  fdsAfter?: number | undefined;
}

const STATUS_NAMES: Record<number, string> = { 0: 'GOOD', 2: 'CHECK CONDITION', 8: 'BUSY', 0x18: 'RESERVATION CONFLICT', 0x28: 'TASK SET FULL' };

function describeReply(r: ClientResult | undefined): string {
  const f = r?.first_reply;
  if (!f) return 'no reply';
  const name = STATUS_NAMES[f.status] ?? `0x${f.status.toString(16)}`;
  if (f.status !== 2) return `${name}, payload ${f.size} bytes`;
  const b = Buffer.from(f.sense, 'hex');
  const code = (b[0] ?? 0) & 0x7f;
  const h = (n: number | undefined): string => (n ?? 0).toString(16).padStart(2, '0');
  if (code === 0x70 || code === 0x71) return `${name}, sense ${h((b[2] ?? 0) & 0xf)}/${h(b[12])}/${h(b[13])}`;
  if (code === 0x72 || code === 0x73) return `${name}, sense ${h((b[1] ?? 0) & 0xf)}/${h(b[2])}/${h(b[3])}`;
  return `${name}, sense ${f.sense}`;
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

interface Summary {
  readonly p50_us: number;
  readonly p99_us: number;
  readonly rps: number;
  readonly rounds: number;
  readonly errors: number;
  readonly failed: boolean;
  readonly firstError?: string;
}

function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function summarize(runs: readonly ClientResult[]): Summary {
  const errors = runs.reduce((n, r) => n + (r.errors ?? 0) + (r.setup_error ? 1 : 0), 0);
  const good = runs.filter((r) => !r.setup_error && r.errors === 0 && r.requests > 0);
  const bad = runs.find((r) => r.setup_error || r.errors > 0);
  const firstError = bad?.setup_error ?? bad?.first_error;
  return {
    p50_us: median(good.map((r) => r.p50_us)),
    p99_us: median(good.map((r) => r.p99_us)),
    rps: median(good.map((r) => r.rps)),
    rounds: good.length,
    errors,
    failed: errors > 0 || good.length === 0,
    ...(firstError !== undefined ? { firstError } : {}),
  };
}

const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : '-');
const pad = (s: string, w: number): string => (s.length >= w ? s : ' '.repeat(w - s.length) + s);
const padEnd = (s: string, w: number): string => (s.length >= w ? s : s + ' '.repeat(w - s.length));

interface Ratio {
  readonly label: string;
  readonly a: string;
  readonly b: string;
  readonly conns: number;
  readonly p50: number;
  readonly p99: number;
  readonly rps: number;
}

const RATIO_PAIRS: ReadonlyArray<readonly [string, string, string]> = [
  ['prmux vs qemu-pr-helper, regular-file fd (error path)', 'prmux-file', 'qemu-file'],
  ['prmux vs qemu-pr-helper, /dev/loop0 (error path)', 'prmux-loop0', 'qemu-loop0'],
  ['prmux (regular-file fd) vs bare Node echo', 'prmux-file', 'node-echo'],
  ['prmux (SAN) vs bare Node echo', 'prmux-san', 'node-echo'],
  ['prmux SAN path fd vs prmux regular-file fd', 'prmux-san', 'prmux-file'],
];

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  let opts: Options | 'help';
  try {
    opts = parseOptions(process.argv.slice(2), process.env);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const o = opts;
  const say = (s: string): void => void process.stdout.write(`${s}\n`);
  const note = (s: string): void => void process.stderr.write(`${s}\n`);

  if (o.pin !== 'none' && cpus().length < 2 && o.pin === 'split') {
    note('only one CPU: using --pin same');
  }
  const pin: PinMode = o.pin === 'split' && cpus().length < 2 ? 'same' : o.pin;
  const opt: Options = { ...o, pin };
  if (pin !== 'none' && spawnSync('taskset', ['-c', '0', 'true']).status !== 0) {
    throw new Error('Cannot pin: taskset is missing or failed (use --no-pin)');
  }

  const tmp = mkdtempSync(join(tmpdir(), 'prmux-bench-'));
  removeTmpOnExit(o.keepTmp ? undefined : tmp);
  try {
    const client = compileClient(tmp);
    const regular = join(tmp, 'regular.img');
    writeFileSync(regular, Buffer.alloc(4096));
    const sanDir = join(tmp, 'san');

    const servers = new Map<string, Server>([
      ['san', { key: 'san', sock: join(sanDir, 'ctl.sock') }],
      ['prmux-san', { key: 'prmux-san', sock: join(tmp, 'prmux-san.sock') }],
      ['prmux', { key: 'prmux', sock: join(tmp, 'prmux.sock') }],
      ['qemu', { key: 'qemu', sock: join(tmp, 'qemu.sock') }],
      ['echo', { key: 'echo', sock: join(tmp, 'echo.sock') }],
    ]);
    const srv = (k: string): Server => servers.get(k)!;
    let sanFd = join(sanDir, 'host1', 'dev', 'sda');

    const loopOk = ((): string | undefined => {
      if (opt.loop === undefined) return 'skipped (--loop none)';
      if (!existsSync(opt.loop)) return `${opt.loop} does not exist`;
      try {
        closeSync(openSync(opt.loop, fsc.O_RDONLY));
        return undefined;
      } catch (e) {
        return `cannot open ${opt.loop}: ${(e as Error).message}`;
      }
    })();
    const loopDev = opt.loop ?? '/dev/loop0';

    const contenders: Contender[] = [
      { name: 'prmux-san', what: 'prmux serve --san, READ KEYS on a simulated SAN path fd (protocol + SAN round trip)', server: 'prmux-san', fd: sanFd, available: true, reason: '' },
      { name: 'prmux-file', what: 'prmux serve, regular-file fd (error path: SG_IO fails, CHECK CONDITION)', server: 'prmux', fd: regular, available: true, reason: '' },
      { name: 'qemu-file', what: 'qemu-pr-helper, the same regular-file fd (its error path)', server: 'qemu', fd: regular, available: true, reason: '' },
      { name: 'node-echo', what: 'bare Node net echo, same frame sizes (the floor for a Node server)', server: 'echo', fd: regular, available: true, reason: '' },
      { name: 'prmux-loop0', what: `prmux serve, ${loopDev} (block device, SG_IO fails)`, server: 'prmux', fd: loopDev, available: loopOk === undefined, reason: loopOk ?? '' },
      { name: 'qemu-loop0', what: `qemu-pr-helper, ${loopDev}`, server: 'qemu', fd: loopDev, available: loopOk === undefined, reason: loopOk ?? '' },
    ];
    if (opt.only) {
      const unknown = opt.only.filter((n) => !contenders.some((c) => c.name === n));
      if (unknown.length) throw new Error(`Cannot select contenders: unknown ${unknown.join(', ')} (known: ${contenders.map((c) => c.name).join(', ')})`);
      for (const c of contenders) if (!opt.only.includes(c.name)) { c.available = false; c.reason = 'not selected (--only)'; }
    }
    const wanted = (server: string): boolean => contenders.some((c) => c.available && c.server === server);
    const disable = (server: string, reason: string): void => {
      for (const c of contenders) if (c.server === server && c.available) { c.available = false; c.reason = reason; }
    };
    const node = process.execPath;
    const serverCpu = cpuPrefix(pin, 'server');

    // --- start the servers (all stay up for the whole run; idle while others are measured)
    if (!existsSync(opt.cli) && (wanted('prmux') || wanted('prmux-san'))) {
      disable('prmux', `prmux cli not found at ${opt.cli}`);
      disable('prmux-san', `prmux cli not found at ${opt.cli}`);
    }
    if (wanted('prmux-san')) {
      const san = startChild('prmux san', [...serverCpu, node, opt.cli, 'san', 'start', '--dir', sanDir, '--hosts', '1', '--luns', '1', '--paths', '2']);
      srv('san').child = san;
      const err = await waitLine(san, 'prmux san ready');
      if (err) disable('prmux-san', err);
      else {
        if (!existsSync(sanFd)) {
          // Fall back to the first path stand-in the SAN laid out.
          const devs = readdirSync(join(sanDir, 'host1', 'dev')).filter((n) => n.startsWith('sd'));
          if (devs[0] !== undefined) sanFd = join(sanDir, 'host1', 'dev', devs[0]);
        }
        contenders.find((x) => x.name === 'prmux-san')!.fd = sanFd;
        const ps = startChild('prmux serve --san', [...serverCpu, node, opt.cli, ...SERVE, '--san', join(sanDir, 'host1'), '-k', srv('prmux-san').sock]);
        srv('prmux-san').child = ps;
        const e2 = await waitListening(ps, srv('prmux-san').sock);
        if (e2) disable('prmux-san', e2);
      }
    }
    if (wanted('prmux')) {
      const p = startChild('prmux serve', [...serverCpu, node, opt.cli, ...SERVE, '-k', srv('prmux').sock, '--state-dir', join(tmp, 'prmux-state')]);
      srv('prmux').child = p;
      const err = await waitListening(p, srv('prmux').sock);
      if (err) disable('prmux', err);
    }
    let qemuVersion = '';
    if (wanted('qemu')) {
      if (opt.qemu === undefined || !existsSync(opt.qemu)) disable('qemu', 'qemu-pr-helper is missing (contender skipped)');
      else {
        qemuVersion = (spawnSync(opt.qemu, ['-V'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0] ?? '';
        const q = startChild('qemu-pr-helper', [...serverCpu, opt.qemu, '-k', srv('qemu').sock, '-f', join(tmp, 'qemu-pr-helper.pid')]);
        srv('qemu').child = q;
        const err = await waitListening(q, srv('qemu').sock);
        if (err) disable('qemu', err);
      }
    }

    // --- probe each contender once (20 requests on 1 connection): checks it answers and what
    const probe = async (c: Contender): Promise<void> => {
      const r = await runClient(opt, client, srv(c.server).sock, c.fd, ['-c', '1', '-n', '20'], 30_000);
      c.probe = r;
      if (r.setup_error || r.errors > 0 || r.requests === 0) {
        c.available = false;
        c.reason = `probe failed: ${r.setup_error ?? r.first_error ?? 'no reply'}`;
      }
    };
    for (const c of contenders) if (c.available && c.server !== 'echo') await probe(c);

    // The echo server answers like prmux does on the SAN: GOOD with the same payload size.
    const sanProbe = contenders.find((c) => c.name === 'prmux-san')?.probe?.first_reply;
    const echoPayload = sanProbe && sanProbe.status === 0 ? sanProbe.size : 8;
    if (wanted('echo')) {
      const echoJs = join(HERE, 'echo-server.js');
      const e = startChild('echo-server', [...serverCpu, node, echoJs, srv('echo').sock, String(echoPayload), '0'], { stdin: 'pipe' });
      srv('echo').child = e;
      const err = await waitListening(e, srv('echo').sock);
      if (err) disable('echo', err);
      else await probe(contenders.find((c) => c.name === 'node-echo')!);
    }

    const active = contenders.filter((c) => c.available);
    const runSeconds = opt.seconds + opt.warmup + 0.05;
    const estimate = active.length * opt.conns.length * opt.rounds * runSeconds;

    // --- header
    const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
    const pinText =
      pin === 'split' ? 'pinned with taskset: servers (prmux, SAN, qemu-pr-helper, echo) on CPU 0, client on CPU 1 (every round trip crosses CPUs)'
      : pin === 'same' ? 'pinned with taskset: servers and client all on CPU 0 (same-CPU wake-ups)'
      : 'not pinned (the scheduler places client and servers; expect more variance)';
    say('pr-helper round-trip benchmark: PERSISTENT RESERVE IN / READ KEYS, one fd per request, one request in flight per connection');
    say(`machine: ${cpus().length} x ${cpuModel}, Linux ${release()}, node ${process.version}${qemuVersion ? `, ${qemuVersion}` : ''}`);
    say(`pinning: ${pinText}`);
    say(`method: ${opt.rounds} rounds x ${opt.seconds} s per contender per connection count (+${opt.warmup} s unmeasured warm-up each), contenders interleaved, order rotated each round; medians of the rounds. Allocation length ${opt.alloc}.`);
    say('contenders:');
    for (const c of contenders) {
      say(`  ${padEnd(c.name, 12)} ${c.available ? c.what : `SKIPPED: ${c.reason}`}`);
      if (c.available) say(`  ${' '.repeat(12)} answers: ${describeReply(c.probe)}`);
    }
    say(`estimated run time: ${Math.round(estimate)} s`);
    say('');

    for (const s of servers.values()) s.fdsBefore = fdCount(s.child?.proc.pid);

    // --- measure
    const runs = new Map<string, ClientResult[]>(); // key `${conns}:${name}`
    for (const n of opt.conns) {
      for (let round = 0; round < opt.rounds; round++) {
        const order = active.map((_, i) => active[(i + round) % active.length]!);
        for (const c of order) {
          const r = await runClient(opt, client, srv(c.server).sock, c.fd, ['-c', String(n), '-t', String(opt.seconds), '-w', String(opt.warmup)], (runSeconds + 30) * 1000);
          if (interrupted()) break;
          const key = `${n}:${c.name}`;
          runs.set(key, [...(runs.get(key) ?? []), r]);
          note(
            `[${n} conn${n > 1 ? 's' : ''}, round ${round + 1}/${opt.rounds}] ${padEnd(c.name, 12)} ` +
              (r.setup_error ? `SETUP ERROR: ${r.setup_error}` : `p50 ${fmt(r.p50_us)} us  p99 ${fmt(r.p99_us)} us  ${fmt(r.rps, 0)} req/s${r.errors ? `  ERRORS ${r.errors}: ${r.first_error ?? ''}` : ''}`),
          );
        }
      }
    }

    // Let servers notice the closed connections, then count their fds again: every request passed
    // one fd, so a server that does not close them shows thousands more.
    await sleep(300);
    for (const s of servers.values()) s.fdsAfter = fdCount(s.child?.proc.pid);

    // --- report
    const summaries = new Map<string, Summary>();
    for (const [k, v] of runs) summaries.set(k, summarize(v));
    const sumOf = (n: number, name: string): Summary | undefined => summaries.get(`${n}:${name}`);
    say('');
    for (const n of opt.conns) {
      say(`== ${n} connection${n > 1 ? 's' : ''} (median of ${opt.rounds} rounds x ${opt.seconds} s) ==`);
      say(`${padEnd('contender', 12)} ${pad('p50 us', 9)} ${pad('p99 us', 9)} ${pad('req/s', 10)}  notes`);
      for (const c of active) {
        const s = sumOf(n, c.name);
        if (!s) continue;
        const died = srv(c.server).child?.exited === true ? ' (the server exited)' : '';
        const notes = s.failed ? `FAILED: ${s.errors} error(s)${died}, ${s.firstError ?? ''}` : '';
        say(`${padEnd(c.name, 12)} ${pad(fmt(s.p50_us), 9)} ${pad(fmt(s.p99_us), 9)} ${pad(fmt(s.rps, 0), 10)}  ${notes}`);
      }
      say('');
    }

    const ratios: Ratio[] = [];
    say('ratios (A/B; latency ratio > 1 means A is slower, throughput ratio > 1 means A serves more requests/s):');
    for (const [label, a, b] of RATIO_PAIRS) {
      const cols: string[] = [];
      for (const n of opt.conns) {
        const sa = sumOf(n, a);
        const sb = sumOf(n, b);
        if (!sa || !sb) continue;
        if (sa.failed || sb.failed) {
          cols.push(`${n} conn: n/a (errors)`);
          continue;
        }
        const r: Ratio = { label, a, b, conns: n, p50: sa.p50_us / sb.p50_us, p99: sa.p99_us / sb.p99_us, rps: sa.rps / sb.rps };
        ratios.push(r);
        cols.push(`${n} conn: p50 x${fmt(r.p50, 2)}  p99 x${fmt(r.p99, 2)}  req/s x${fmt(r.rps, 2)}`);
      }
      if (cols.length) {
        say(`  ${label} (${a} / ${b}):`);
        for (const col of cols) say(`    ${col}`);
      }
    }
    say('');
    // Every request passes one fd: a server that failed to close them would grow by the number of
    // requests it served (tens of thousands). Growth up to the connection count is a pool or cache.
    const leakLines: string[] = [];
    const maxConns = Math.max(...opt.conns);
    let leak = false;
    for (const s of servers.values()) {
      if (s.fdsBefore === undefined || s.fdsAfter === undefined) continue;
      const d = s.fdsAfter - s.fdsBefore;
      if (d > maxConns + 16) leak = true;
      leakLines.push(`${s.key} ${s.fdsBefore}->${s.fdsAfter}${d > maxConns + 16 ? ' LEAK' : d > 0 ? ` (+${d})` : ''}`);
    }
    if (leakLines.length) {
      say(`open fds of each server before -> after all runs: ${leakLines.join(', ')}`);
      say(
        leak
          ? '  LEAK: a server holds more fds than there were connections; passed fds are probably not closed.'
          : '  (no leak of passed fds: that would add one fd per request served; small growth is a connection pool)',
      );
    }
    say('caveats: 2 vCPUs in a VM; cross-CPU wake-ups (~50-70 us) dominate single-connection latency; the C client itself');
    say('shares one CPU with all its threads at 64 connections. Compare ratios from one run, not absolute numbers across runs.');

    if (opt.json) {
      const doc = {
        tool: 'prmux bench/pr-helper-bench',
        date: new Date().toISOString(),
        machine: { cpus: cpus().length, model: cpuModel, kernel: release(), node: process.version, qemuPrHelper: qemuVersion || null },
        options: { rounds: opt.rounds, seconds: opt.seconds, warmup: opt.warmup, conns: opt.conns, pin, alloc: opt.alloc, cli: opt.cli },
        request: { cdb: `5e000000000000${opt.alloc.toString(16).padStart(4, '0')}00000000000000`, fdsPerRequest: 1, inFlightPerConnection: 1 },
        contenders: contenders.map((c) => ({ name: c.name, what: c.what, fd: c.fd, available: c.available, reason: c.reason || null, answers: c.available ? describeReply(c.probe) : null, probe: c.probe ?? null })),
        results: opt.conns.map((n) => ({
          conns: n,
          contenders: Object.fromEntries(active.map((c) => [c.name, { median: sumOf(n, c.name) ?? null, rounds: runs.get(`${n}:${c.name}`) ?? [] }])),
        })),
        ratios,
        serverFds: Object.fromEntries([...servers.values()].filter((s) => s.fdsBefore !== undefined).map((s) => [s.key, { before: s.fdsBefore, after: s.fdsAfter ?? null }])),
      };
      writeFileSync(opt.json, `${JSON.stringify(doc, null, 2)}\n`);
      say(`results written to ${opt.json}`);
    }
    const failed = [...summaries.values()].some((s) => s.failed);
    return failed ? 1 : 0;
  } finally {
    await stopAll();
    if (o.keepTmp) note(`temporary directory kept: ${tmp}`);
    removeTmp();
  }
}

runBenchmark(main);
