// Multipath fan-out benchmark (issue #6, SAN part): what `prmux serve` costs on a dm-multipath map
// as the number of paths grows, and how fast a returning path gets its key back. Side by side in
// one run, on simulated SANs with a fixed latency per path (default 5 ms):
//
//  1. PERSISTENT RESERVE OUT REGISTER / REGISTER AND IGNORE EXISTING KEY through prmux on a map fd
//     (DIR/host1/dev/mapper/mpatha) with 1, 2, 4 and 8 paths; every call changes the key on every
//     path. Per-call latency p50/p99 per path count and its ratio to the 1-path time (target: at
//     most 1.2: the fan-out sends to the paths in parallel, so N paths should cost about one).
//     After every run, READ FULL STATUS straight from the SAN (not through prmux) must show the
//     run's last key on every one of the N I_T nexuses, and nothing else; otherwise the row fails.
//  2. Path return -> key registered, on a 2-path map: `path remove host1 sdb` (the target drops the
//     nexus and its registration), then `path add host1 sdb`, timed until READ FULL STATUS shows the
//     key on sdb's nexus again (target: under 1 s). prmux learns of a returning path from its
//     topology poll, so this is run with --topology-interval 1000 (the default) and 200, with
//     multipathd's own key unset (prmux alone), and once as deployed (prmux has announced the key
//     to multipathd, which registers it on a returning path itself, as multipathd 0.9.4 does).
//
// The client is this same file run as `--worker` in its own process (a Node PrHelperClient, as QEMU
// speaks the protocol: one command at a time, the 24-byte parameter list after the CDB), so the
// client's work is off the servers' event loops. Path counts are interleaved (one run of each per
// round, order rotated every round) and medians of the rounds are reported. See bench/README.md and
// ../shared/reference/benchmarking.md (2 vCPUs: compare ratios from one run).
//
// This is an edge program: it reads argv, writes to stdout/stderr and spawns processes. Every child
// is killed on exit, on error and on SIGINT/SIGTERM/SIGHUP.

import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Child, type PinMode, cpuPrefix, interrupted, removeTmp, removeTmpOnExit, runBenchmark, sleep, startChild, stopAll, stopChild, waitLine, waitListening } from './bench-kit.js';
import { MultipathdClient } from '../src/mpath/multipathd-client.js';
import { JsonLineClient } from '../src/san/client.js';
import { fromHex, hex } from '../src/scsi/bytes.js';
import { encodePrInCdb, encodePrOutCdb } from '../src/scsi/cdb.js';
import { PrInAction, PrOutAction } from '../src/scsi/constants.js';
import { decodeReadFullStatus } from '../src/scsi/prin-data.js';
import { encodePrOutParams } from '../src/scsi/prout-params.js';
import type { PrHelperClient } from '../src/socket/pr-helper-client.js';
import type { TransportId } from '../src/scsi/types.js';

const SELF = fileURLToPath(import.meta.url);
const HERE = dirname(SELF);
const HOST = 'host1';
const MAP = 'mpatha';
const RETURN_DEV = 'sdb';
/** Where READ FULL STATUS is read during the path-return test: the path that stays. */
const STATUS_DEV = 'sda';

// ---------------------------------------------------------------------------------------------
// Options


interface Options {
  readonly rounds: number;
  readonly calls: number;
  readonly warmup: number;
  readonly paths: readonly number[];
  readonly latencyMs: number;
  readonly cycles: number;
  readonly returnTimeoutMs: number;
  readonly skipReturn: boolean;
  readonly json: string | undefined;
  readonly cli: string;
  readonly pin: PinMode;
  readonly keepTmp: boolean;
}

const USAGE = `usage: node dist/bench/fanout-bench.js [options]
  --rounds N         rounds of the REGISTER measurement (default 5)
  --calls N          measured calls per path count per round (default 200)
  --warmup N         unmeasured calls before each run (default 10)
  --paths LIST       path counts (default 1,2,4,8; each 1..8)
  --latency MS       simulated latency of every path (default 5)
  --cycles N         path remove/add cycles per path-return variant (default 10)
  --return-timeout MS  give up on one path return after this long (default 5000)
  --no-return        skip the path-return measurement
  --json FILE        also write all results (every sample) as JSON
  --cli PATH         prmux cli.js to run (default: the cli.js of this build)
  --pin split|same|none   split: SANs and prmux on CPU 0, client on CPU 1 (default); same: all on CPU 0
  --no-pin           same as --pin none
  --keep-tmp         keep the temporary directory (sockets, logs, state)`;

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      rounds: { type: 'string' },
      calls: { type: 'string' },
      warmup: { type: 'string' },
      paths: { type: 'string' },
      latency: { type: 'string' },
      cycles: { type: 'string' },
      'return-timeout': { type: 'string' },
      'no-return': { type: 'boolean' },
      json: { type: 'string' },
      cli: { type: 'string' },
      pin: { type: 'string' },
      'no-pin': { type: 'boolean' },
      'keep-tmp': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return 'help';
  const num = (name: string, v: string | undefined, dflt: number, min: number, max: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`Cannot parse options: --${name} must be an integer from ${min} to ${max}, got "${v}"`);
    return n;
  };
  const paths = (values.paths ?? '1,2,4,8').split(',').map((p) => num('paths', p.trim(), 1, 1, 8));
  if (new Set(paths).size !== paths.length) throw new Error('Cannot parse options: --paths lists a path count twice');
  let pin: PinMode = 'split';
  if (values.pin !== undefined) {
    if (values.pin !== 'split' && values.pin !== 'same' && values.pin !== 'none') throw new Error(`Cannot parse options: --pin must be split, same or none, got "${values.pin}"`);
    pin = values.pin;
  }
  if (values['no-pin']) pin = 'none';
  return {
    rounds: num('rounds', values.rounds, 5, 1, 1000),
    calls: num('calls', values.calls, 200, 2, 100_000),
    warmup: num('warmup', values.warmup, 10, 0, 10_000),
    paths,
    latencyMs: num('latency', values.latency, 5, 0, 10_000),
    cycles: num('cycles', values.cycles, 10, 1, 1000),
    returnTimeoutMs: num('return-timeout', values['return-timeout'], 5000, 100, 600_000),
    skipReturn: values['no-return'] ?? false,
    json: values.json,
    cli: resolve(values.cli ?? join(HERE, '..', 'src', 'cli.js')),
    pin,
    keepTmp: values['keep-tmp'] ?? false,
  };
}

// ---------------------------------------------------------------------------------------------
// The client (this file with --worker, in its own process)

interface WorkerSpec {
  readonly sock: string;
  readonly fd: string;
  readonly calls: number;
  readonly warmup: number;
  /** Hex; call j registers key keyBase + j + 1 (never 0). */
  readonly keyBase: string;
  readonly callTimeoutMs: number;
}

interface WorkerResult {
  /** Measured calls, milliseconds, in order. */
  readonly samples: number[];
  /** Per sample: 'R' REGISTER (with the previous key), 'I' REGISTER AND IGNORE EXISTING KEY. */
  readonly kinds: string;
  /** The last key registered with GOOD, hex, or null. */
  finalKey: string | null;
  errors: number;
  firstError?: string;
  setupError?: string;
}

function describeStatus(status: number, sense: Uint8Array): string {
  const names: Record<number, string> = { 0: 'GOOD', 2: 'CHECK CONDITION', 8: 'BUSY', 0x18: 'RESERVATION CONFLICT', 0x28: 'TASK SET FULL' };
  const name = names[status] ?? `status 0x${status.toString(16)}`;
  if (status !== 2) return name;
  const h = (n: number | undefined): string => (n ?? 0).toString(16).padStart(2, '0');
  const code = (sense[0] ?? 0) & 0x7f;
  if (code === 0x72 || code === 0x73) return `${name} ${h((sense[1] ?? 0) & 0xf)}/${h(sense[2])}/${h(sense[3])}`;
  return `${name} ${h((sense[2] ?? 0) & 0xf)}/${h(sense[12])}/${h(sense[13])}`;
}

async function runWorker(spec: WorkerSpec): Promise<number> {
  // Loaded here only: the harness itself never needs the fd-passing socket code (koffi).
  const { PrHelperClient: Client } = await import('../src/socket/pr-helper-client.js');
  const result: WorkerResult = { samples: [], kinds: '', finalKey: null, errors: 0 };
  let kinds = '';
  let fd = -1;
  let client: PrHelperClient | null = null;
  try {
    // PR OUT on a read-only fd is refused (as by qemu-pr-helper): QEMU opens the disk read-write.
    fd = openSync(spec.fd, 'r+');
    client = await Client.connect(spec.sock);
    const base = BigInt(`0x${spec.keyBase}`);
    let prev: bigint | null = null;
    for (let j = 0; j < spec.warmup + spec.calls; j++) {
      const key = base + BigInt(j + 1);
      // Alternate: REGISTER with the current key (SPC-4 5.13.11.2.3: changes it), then REGISTER AND
      // IGNORE EXISTING KEY; the first call of a run does not know the current key.
      const register = prev !== null && j % 2 === 1;
      const cdb = encodePrOutCdb({ serviceAction: register ? PrOutAction.REGISTER : PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, parameterListLength: 24 }, 16);
      const params = encodePrOutParams({ key: register && prev !== null ? prev : 0n, serviceActionKey: key, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
      const t0 = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const reply = await Promise.race([
        client.command(cdb, fd, params),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no reply within ${spec.callTimeoutMs} ms`)), spec.callTimeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
      const ms = performance.now() - t0;
      if (reply.status !== 0) {
        result.errors++;
        result.firstError = `call ${j} (${register ? 'REGISTER' : 'REGISTER AND IGNORE EXISTING KEY'}): ${describeStatus(reply.status, reply.sense)}`;
        break;
      }
      prev = key;
      result.finalKey = key.toString(16);
      if (j >= spec.warmup) {
        result.samples.push(ms);
        kinds += register ? 'R' : 'I';
      }
    }
  } catch (e) {
    result.errors++;
    result.firstError ??= (e as Error).message;
  } finally {
    client?.close();
    if (fd >= 0) closeSync(fd);
  }
  const out = { ...result, kinds };
  await new Promise<void>((done) => process.stdout.write(`${JSON.stringify(out)}\n`, () => done()));
  return result.errors > 0 ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered so it can be killed on any exit path.

function started(c: Child, why: string | undefined): void {
  if (why !== undefined) throw new Error(`Cannot start ${c.name}: ${why}`);
}

async function runWorkerProcess(pin: PinMode, spec: WorkerSpec): Promise<WorkerResult> {
  const fail = (why: string): WorkerResult => ({ samples: [], kinds: '', finalKey: null, errors: 1, setupError: why });
  if (interrupted()) return fail('interrupted');
  const c = startChild('client', [...cpuPrefix(pin, 'client'), process.execPath, SELF, '--worker', JSON.stringify(spec)]);
  let out = '';
  c.proc.stdout?.on('data', (b: Buffer) => (out += b.toString('utf8')));
  const hardMs = (spec.calls + spec.warmup) * spec.callTimeoutMs + 30_000;
  const timer = setTimeout(() => c.proc.kill('SIGKILL'), hardMs);
  await new Promise<void>((done) => {
    if (c.exited) done();
    else c.proc.once('exit', () => done());
  });
  clearTimeout(timer);
  const line = out.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as WorkerResult;
  } catch {
    return fail(`client produced no result (exit ${c.proc.exitCode ?? c.proc.signalCode}): ${c.tail.slice(-3).join(' | ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The simulated SAN and prmux

interface TopologyDoc {
  readonly paths: readonly { readonly dev: string; readonly transportId: string; readonly removed: boolean }[];
}

interface Setup {
  readonly paths: number;
  readonly dir: string;
  readonly sock: string;
  readonly mapFile: string;
  /** TransportID of every path of the map ("sas:0x..."), as topology.json names them. */
  readonly transportIds: ReadonlyMap<string, string>;
  readonly san: Child;
  serve?: Child;
  readonly exec: JsonLineClient;
  readonly ctl: JsonLineClient;
}

function sanConfig(paths: number, latencyMs: number): unknown {
  return {
    hosts: [{ name: HOST, paths: Array.from({ length: paths }, () => ({ latencyMs })) }],
    luns: [{ personality: 'lio' }],
    checkerIntervalMs: 1000,
  };
}

async function startSan(opt: Options, tmp: string, label: string, paths: number, onLine?: (l: string) => void): Promise<Setup> {
  const dir = join(tmp, label);
  const cfg = join(tmp, `${label}.json`);
  writeFileSync(cfg, JSON.stringify(sanConfig(paths, opt.latencyMs)));
  const san = startChild(`SAN ${label}`, [...cpuPrefix(opt.pin, 'server'), process.execPath, opt.cli, 'san', 'start', '--dir', dir, '--config', cfg], onLine !== undefined ? { onLine } : {});
  await started(san, await waitLine(san, 'prmux san ready'));
  const topo = JSON.parse(readFileSync(join(dir, HOST, 'topology.json'), 'utf8')) as TopologyDoc;
  const transportIds = new Map(topo.paths.map((p) => [p.dev, p.transportId]));
  if (transportIds.size !== paths) throw new Error(`Cannot use SAN ${label}: topology.json lists ${transportIds.size} paths, expected ${paths}`);
  return {
    paths,
    dir,
    sock: join(tmp, `${label}-prmux.sock`),
    mapFile: join(dir, HOST, 'dev', 'mapper', MAP),
    transportIds,
    san,
    exec: new JsonLineClient(join(dir, HOST, 'san.sock'), 10_000),
    ctl: new JsonLineClient(join(dir, 'ctl.sock'), 10_000),
  };
}

async function startServe(opt: Options, s: Setup, extra: readonly string[], onLine?: (l: string) => void): Promise<void> {
  const argv = [...cpuPrefix(opt.pin, 'server'), process.execPath, opt.cli, 'serve', '--san', join(s.dir, HOST), '-k', s.sock, '--state-dir', join(s.dir, 'prmux-state'), '--verify-interval', '0', ...extra];
  const child = startChild(`prmux serve (${s.paths} path${s.paths > 1 ? 's' : ''})`, argv, onLine !== undefined ? { onLine } : {});
  s.serve = child;
  started(child, await waitListening(child, s.sock));
}

function tidText(t: TransportId): string {
  switch (t.protocol) {
    case 'sas':
      return `sas:0x${t.sasAddress.toString(16).padStart(16, '0')}`;
    case 'fc':
      return `fc:0x${t.nPortName.toString(16).padStart(16, '0')}`;
    case 'iscsi':
      return `iscsi:${t.name}`;
    default:
      return `raw:${hex(t.bytes)}`;
  }
}

/** READ FULL STATUS straight from the SAN (on one path's nexus): [transport id, key] per registration. */
async function fullStatus(s: Setup, dev: string): Promise<{ tid: string; key: bigint }[]> {
  const cdb = encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 8192 }, 16);
  const r = await s.exec.request({ op: 'exec', dev, cdb: hex(cdb), data: '', timeoutMs: 5000 });
  if (r['ok'] !== true) throw new Error(`Cannot read the registrations on ${dev}: ${String(r['error'])}`);
  const o = r['outcome'] as Record<string, unknown>;
  if (o['kind'] !== 'good') throw new Error(`Cannot read the registrations on ${dev}: READ FULL STATUS answered ${JSON.stringify(o)}`);
  return decodeReadFullStatus(fromHex(String(o['data'] ?? ''))).descriptors.map((d) => ({ tid: tidText(d.transportId), key: d.key }));
}

/** null when every path of the map, and nothing else, holds `key`; otherwise what is wrong. */
async function checkKeyEverywhere(s: Setup, key: bigint): Promise<string | null> {
  const regs = await fullStatus(s, STATUS_DEV);
  const problems: string[] = [];
  for (const [dev, tid] of s.transportIds) {
    const mine = regs.filter((r) => r.tid === tid);
    if (mine.length === 0) problems.push(`${dev} not registered`);
    else if (mine.some((r) => r.key !== key)) problems.push(`${dev} has key 0x${mine.map((r) => r.key.toString(16)).join('/')}`);
  }
  const known = new Set(s.transportIds.values());
  const stray = regs.filter((r) => !known.has(r.tid));
  if (stray.length > 0) problems.push(`${stray.length} registration(s) of unknown nexuses`);
  if (regs.length !== s.transportIds.size) problems.push(`${regs.length} registrations for ${s.transportIds.size} paths`);
  return problems.length === 0 ? null : `expected key 0x${key.toString(16)} on all ${s.paths} paths: ${problems.join(', ')}`;
}

async function ctl(s: Setup, ...cmd: string[]): Promise<void> {
  const r = await s.ctl.request({ cmd });
  if (r['ok'] !== true) throw new Error(`Cannot run san ctl ${cmd.join(' ')}: ${String(r['error'])}`);
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile (p in 0..1). */
function pct(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const k = Math.min(s.length, Math.max(1, Math.ceil(p * s.length)));
  return s[k - 1]!;
}

const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : '-');
const pad = (s: string, w: number): string => (s.length >= w ? s : ' '.repeat(w - s.length) + s);
const padEnd = (s: string, w: number): string => (s.length >= w ? s : s + ' '.repeat(w - s.length));

interface RunRecord {
  readonly round: number;
  readonly p50: number;
  readonly p99: number;
  readonly p50Register: number;
  readonly p50Ignore: number;
  readonly finalKey: string | null;
  readonly check: string | null;
  readonly errors: number;
  readonly error?: string;
  readonly samples: readonly number[];
}

interface RowSummary {
  readonly paths: number;
  readonly p50: number;
  readonly p99: number;
  readonly p50Register: number;
  readonly p50Ignore: number;
  readonly pooledP50: number;
  readonly pooledP99: number;
  readonly goodRounds: number;
  readonly failed: boolean;
  readonly firstProblem: string | null;
}

interface CycleRecord {
  readonly cycle: number;
  /** ms from `path add` to READ FULL STATUS showing the key on the returned path; null: not within the timeout. */
  readonly ms: number | null;
  /** How long the path stayed removed (the poll must see it gone), ms. */
  readonly removedMs: number;
  readonly error?: string;
}

interface VariantResult {
  readonly name: string;
  readonly topologyIntervalMs: number;
  readonly multipathdKnowsKey: boolean;
  readonly cycles: readonly CycleRecord[];
  readonly p50: number;
  readonly p90: number;
  readonly max: number;
  readonly ok: number;
  /** prmux's own log: detection of the returning path -> key registered (excludes the poll wait). */
  readonly prmuxRegistrations: number;
  readonly prmuxDetectToRegisteredP50: number;
  readonly multipathdRegistrations: number;
  /** Cycles in which multipathd had a key again before it was unset (prmux re-announced it). */
  readonly reannounced: number;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  let opts: Options | 'help';
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const say = (s: string): void => void process.stdout.write(`${s}\n`);
  const note = (s: string): void => void process.stderr.write(`${s}\n`);
  const pin: PinMode = opts.pin === 'split' && cpus().length < 2 ? 'same' : opts.pin;
  const opt: Options = { ...opts, pin };
  if (!existsSync(opt.cli)) throw new Error(`Cannot run the benchmark: prmux cli not found at ${opt.cli} (build first, or pass --cli)`);
  if (pin !== 'none' && spawnSync('taskset', ['-c', '0', 'true']).status !== 0) throw new Error('Cannot pin: taskset is missing or failed (use --no-pin)');

  const tmp = mkdtempSync(join(tmpdir(), 'prmux-fbench-'));
  removeTmpOnExit(opt.keepTmp ? undefined : tmp);
  const setups: Setup[] = [];
  const closeSetup = async (s: Setup): Promise<void> => {
    s.exec.close();
    s.ctl.close();
    await stopChild(s.serve);
    await stopChild(s.san);
  };
  try {
    const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
    const pinText =
      pin === 'split' ? 'pinned with taskset: SANs and prmux on CPU 0, the client on CPU 1'
      : pin === 'same' ? 'pinned with taskset: everything on CPU 0'
      : 'not pinned (the scheduler places everything)';
    say('multipath fan-out benchmark: prmux serve on simulated SAN maps (DIR/host1/dev/mapper/mpatha)');
    say(`machine: ${cpus().length} x ${cpuModel}, Linux ${release()}, node ${process.version}; ${pinText}`);
    say(`each path: ${opt.latencyMs} ms simulated latency per command; prmux serve --san ... --verify-interval 0`);
    const loadAtStart = loadavg()[0] ?? NaN;
    say('');

    // ---- 1. REGISTER on 1, 2, 4, 8 paths
    note(`starting ${opt.paths.length} SANs and prmux servers (${opt.paths.join(', ')} paths)`);
    for (const n of opt.paths) {
      const s = await startSan(opt, tmp, `san${n}`, n);
      setups.push(s);
      await startServe(opt, s, []);
    }
    const callTimeoutMs = 10_000;
    const runs = new Map<number, RunRecord[]>();
    const measure = async (s: Setup, round: number, calls: number, warmup: number): Promise<RunRecord> => {
      // Distinct keys per path count, round and call: 0xfb NN RR RR cccccc.
      const keyBase = ((0xfbn << 56n) | (BigInt(s.paths) << 48n) | (BigInt(round + 1) << 32n)).toString(16);
      const r = await runWorkerProcess(pin, { sock: s.sock, fd: s.mapFile, calls, warmup, keyBase, callTimeoutMs });
      let check: string | null = null;
      if (r.finalKey !== null) {
        try {
          check = await checkKeyEverywhere(s, BigInt(`0x${r.finalKey}`));
        } catch (e) {
          check = (e as Error).message;
        }
      } else check = 'no key was registered';
      const samples = r.samples;
      const by = (k: string): number[] => samples.filter((_, i) => r.kinds[i] === k);
      const error = r.setupError ?? r.firstError;
      return {
        round,
        p50: pct(samples, 0.5),
        p99: pct(samples, 0.99),
        p50Register: pct(by('R'), 0.5),
        p50Ignore: pct(by('I'), 0.5),
        finalKey: r.finalKey,
        check,
        errors: r.errors,
        ...(error !== undefined ? { error } : {}),
        samples,
      };
    };
    // Warm-up and probe: JIT, connections, the intent file; also proves each setup answers GOOD.
    for (const s of setups) {
      const p = await measure(s, -1, 20, 0);
      note(`[probe] ${s.paths} path(s): ${p.errors ? `ERROR ${p.error ?? ''}` : `p50 ${fmt(p.p50)} ms`}${p.check ? `; CHECK FAILED: ${p.check}` : '; key on all paths'}`);
    }
    for (let round = 0; round < opt.rounds && !interrupted(); round++) {
      const order = setups.map((_, i) => setups[(i + round) % setups.length]!);
      for (const s of order) {
        if (interrupted()) break;
        const r = await measure(s, round, opt.calls, opt.warmup);
        runs.set(s.paths, [...(runs.get(s.paths) ?? []), r]);
        note(
          `[round ${round + 1}/${opt.rounds}] ${s.paths} path(s): p50 ${fmt(r.p50)} ms  p99 ${fmt(r.p99)} ms` +
            (r.errors ? `  ERRORS: ${r.error ?? ''}` : '') +
            (r.check ? `  CHECK FAILED: ${r.check}` : ''),
        );
      }
    }
    const rows: RowSummary[] = opt.paths.map((n) => {
      const rs = runs.get(n) ?? [];
      const good = rs.filter((r) => r.errors === 0 && r.check === null && r.samples.length > 0);
      const bad = rs.find((r) => r.errors > 0 || r.check !== null);
      const pooled = good.flatMap((r) => r.samples);
      return {
        paths: n,
        p50: median(good.map((r) => r.p50)),
        p99: median(good.map((r) => r.p99)),
        p50Register: median(good.map((r) => r.p50Register)),
        p50Ignore: median(good.map((r) => r.p50Ignore)),
        pooledP50: pct(pooled, 0.5),
        pooledP99: pct(pooled, 0.99),
        goodRounds: good.length,
        failed: bad !== undefined || good.length === 0,
        firstProblem: bad === undefined ? (good.length === 0 ? 'no run' : null) : (bad.error ?? bad.check),
      };
    });
    for (const s of setups) await closeSetup(s);
    setups.length = 0;

    const base = rows.find((r) => r.paths === 1);
    say(`== REGISTER / REGISTER AND IGNORE EXISTING KEY through the map fd, every call a new key on every path ==`);
    say(`   (${opt.rounds} rounds x ${opt.calls} calls per path count, +${opt.warmup} unmeasured each; path counts interleaved, order rotated`);
    say('    each round; per round p50/p99; the table shows the median over rounds; ratios against the 1-path row)');
    say(`${pad('paths', 5)} ${pad('p50 ms', 8)} ${pad('p99 ms', 8)} ${pad('REG p50', 8)} ${pad('RIEK p50', 9)} ${pad('p50/1', 7)} ${pad('p99/1', 7)}  key on all paths after each run`);
    let worstRatio = 0;
    for (const r of rows) {
      const ratio50 = base && !base.failed && !r.failed ? r.p50 / base.p50 : NaN;
      const ratio99 = base && !base.failed && !r.failed ? r.p99 / base.p99 : NaN;
      if (Number.isFinite(ratio50)) worstRatio = Math.max(worstRatio, ratio50);
      const verdict = r.failed ? `FAILED: ${r.firstProblem ?? ''}` : `ok (${r.goodRounds}/${opt.rounds} rounds)`;
      say(`${pad(String(r.paths), 5)} ${pad(fmt(r.p50), 8)} ${pad(fmt(r.p99), 8)} ${pad(fmt(r.p50Register), 8)} ${pad(fmt(r.p50Ignore), 9)} ${pad(`x${fmt(ratio50)}`, 7)} ${pad(`x${fmt(ratio99)}`, 7)}  ${verdict}`);
    }
    if (base !== undefined && !base.failed && rows.length > 1) {
      say(`target: p50 at N paths / p50 at 1 path <= 1.2 -> ${rows.every((r) => !r.failed) && worstRatio <= 1.2 ? 'met' : 'NOT met'} (worst x${fmt(worstRatio)})`);
    }
    say('REG = REGISTER with the current key, RIEK = REGISTER AND IGNORE EXISTING KEY (alternating). Each call is, inside prmux:');
    say('a fresh multipathd topology read, the command on all paths in parallel, the crash-safe intent write, setprkey+setprstatus;');
    say('a REGISTER that changes the key also reads the reservation on one path afterwards (an old key still holding it is');
    say('preempted), hence one path latency more than RIEK.');
    say('');

    // ---- 2. path return -> key registered
    const variants: VariantResult[] = [];
    let flap: { ms: number | null; waitedMs: number } | null = null;
    if (!opt.skipReturn && !interrupted()) {
      const counters = { prmux: [] as number[], mpathd: 0 };
      const onServeLine = (l: string): void => {
        const m = /registered our key on a returning path .*path=(\S+).*latencyMs=([\d.]+)/.exec(l);
        if (m !== null && m[1] === RETURN_DEV) counters.prmux.push(Number(m[2]));
      };
      const onSanLine = (l: string): void => {
        if (new RegExp(`multipathd registered key \\S+ on returning path ${RETURN_DEV}: good`).test(l)) counters.mpathd++;
      };
      note('path return: starting a 2-path SAN');
      const s = await startSan(opt, tmp, 'return', 2, onSanLine);
      setups.push(s);
      const mpd = new MultipathdClient({ socket: join(s.dir, HOST, 'multipathd.sock') });
      try {
        const registered = async (key: bigint): Promise<boolean> => {
          const tid = s.transportIds.get(RETURN_DEV);
          return (await fullStatus(s, STATUS_DEV)).some((r) => r.tid === tid && r.key === key);
        };
        /** One remove/add cycle; `waitMs` is how long the path stays removed. */
        const cycle = async (i: number, key: bigint, waitMs: number, unsetMultipathd: boolean, reann: { n: number }): Promise<CycleRecord> => {
          try {
            if (unsetMultipathd) {
              if ((await mpd.getPrKey(MAP)) !== null) reann.n++;
              await mpd.unsetPrStatus(MAP);
              await mpd.unsetPrKey(MAP);
            }
            await ctl(s, 'path', 'remove', HOST, RETURN_DEV);
            if (await registered(key)) return { cycle: i, ms: null, removedMs: 0, error: `${RETURN_DEV} still registered after path remove` };
            const removedAt = performance.now();
            await sleep(waitMs);
            const t0 = performance.now();
            await ctl(s, 'path', 'add', HOST, RETURN_DEV);
            const removedMs = t0 - removedAt;
            for (;;) {
              if (await registered(key)) return { cycle: i, ms: performance.now() - t0, removedMs };
              if (performance.now() - t0 > opt.returnTimeoutMs || interrupted()) return { cycle: i, ms: null, removedMs, error: `not registered within ${opt.returnTimeoutMs} ms` };
            }
          } catch (e) {
            return { cycle: i, ms: null, removedMs: 0, error: (e as Error).message };
          }
        };
        const plan: { name: string; interval: number; knows: boolean; flap: boolean }[] = [
          { name: 'as deployed: multipathd has the key', interval: 1000, knows: true, flap: false },
          { name: 'prmux alone (multipathd key unset)', interval: 1000, knows: false, flap: true },
          { name: 'prmux alone (multipathd key unset)', interval: 200, knows: false, flap: false },
        ];
        let pv = 0;
        for (const v of plan) {
          if (interrupted()) break;
          note(`path return: prmux serve --topology-interval ${v.interval}, ${v.name}`);
          await startServe(opt, s, ['--topology-interval', String(v.interval), '-v'], onServeLine);
          // Register through prmux, so its intent (and multipathd, by its announcement) has the key.
          const keyBase = ((0xfcn << 56n) | (BigInt(++pv) << 32n)).toString(16);
          const r = await runWorkerProcess(pin, { sock: s.sock, fd: s.mapFile, calls: 1, warmup: 0, keyBase, callTimeoutMs });
          if (r.finalKey === null) throw new Error(`Cannot register through prmux for the path-return test: ${r.setupError ?? r.firstError ?? 'no key'}`);
          const key = BigInt(`0x${r.finalKey}`);
          const bad = await checkKeyEverywhere(s, key);
          if (bad !== null) throw new Error(`Cannot start the path-return test: ${bad}`);
          if (v.knows) {
            const k = await mpd.getPrKey(MAP);
            if (k?.key !== key) throw new Error(`Cannot run "${v.name}": multipathd's key is ${k === null ? 'unset' : `0x${k.key.toString(16)}`}, prmux registered 0x${key.toString(16)}`);
          }
          if (!v.knows) {
            // prmux alone: multipathd must not register the returning path itself.
            await mpd.unsetPrStatus(MAP);
            await mpd.unsetPrKey(MAP);
          }
          const before = { prmux: counters.prmux.length, mpathd: counters.mpathd };
          const reann = { n: 0 };
          const cycles: CycleRecord[] = [];
          for (let i = 0; i < opt.cycles && !interrupted(); i++) {
            // Keep the path removed for longer than one poll (so prmux sees it leave), plus a random
            // part so `path add` lands at a uniformly random phase of the poll.
            const waitMs = Math.round(v.interval + 100 + Math.random() * v.interval);
            const c = await cycle(i, key, waitMs, !v.knows, reann);
            cycles.push(c);
            note(`[${v.name}, poll ${v.interval} ms] cycle ${i + 1}/${opt.cycles}: ${c.ms === null ? `FAILED: ${c.error ?? ''}` : `${fmt(c.ms, 1)} ms`}`);
          }
          await sleep(300); // let the last registration's log lines arrive
          const oks = cycles.flatMap((c) => (c.ms === null ? [] : [c.ms]));
          const prmuxLat = counters.prmux.slice(before.prmux);
          variants.push({
            name: v.name,
            topologyIntervalMs: v.interval,
            multipathdKnowsKey: v.knows,
            cycles,
            p50: pct(oks, 0.5),
            p90: pct(oks, 0.9),
            max: oks.length === cycles.length ? Math.max(...oks) : NaN,
            ok: oks.length,
            prmuxRegistrations: prmuxLat.length,
            prmuxDetectToRegisteredP50: pct(prmuxLat, 0.5),
            multipathdRegistrations: counters.mpathd - before.mpathd,
            reannounced: reann.n,
          });
          if (v.flap && !interrupted()) {
            // A remove and add between two polls: the poll sees the same path before and after.
            await mpd.unsetPrStatus(MAP);
            await mpd.unsetPrKey(MAP);
            const fc = await cycle(-1, key, 0, false, { n: 0 });
            const timeout = fc.error?.startsWith('not registered') === true;
            if (fc.ms === null && !timeout) throw new Error(`Cannot run the remove+add flap probe: ${fc.error ?? ''}`);
            flap = { ms: fc.ms, waitedMs: opt.returnTimeoutMs };
            note(`[flap probe, poll ${v.interval} ms] ${fc.ms === null ? `not registered within ${opt.returnTimeoutMs} ms` : `${fmt(fc.ms, 1)} ms`}`);
          }
          await stopChild(s.serve);
        }
      } finally {
        void mpd.close();
      }

      say(`== path return -> key registered: 2 paths (${opt.latencyMs} ms each), path remove host1 ${RETURN_DEV}, then path add, ${opt.cycles} cycles per row ==`);
      say(`   (timed from \`path add\` until READ FULL STATUS on ${STATUS_DEV}, read straight from the SAN in a loop, shows the key on ${RETURN_DEV}'s`);
      say(`    nexus; resolution: one READ FULL STATUS round trip, >= ${opt.latencyMs} ms. The path stays removed for poll + 100 ms + random(0..poll))`);
      say(`${padEnd('variant', 38)} ${pad('poll ms', 7)} ${pad('ok', 6)} ${pad('p50 ms', 8)} ${pad('p90 ms', 8)} ${pad('max ms', 8)}  registered by (log lines)`);
      for (const v of variants) {
        const by = `multipathd ${v.multipathdRegistrations}, prmux ${v.prmuxRegistrations}${v.prmuxRegistrations ? ` (detect->registered p50 ${fmt(v.prmuxDetectToRegisteredP50, 1)} ms)` : ''}`;
        say(
          `${padEnd(v.name, 38)} ${pad(String(v.topologyIntervalMs), 7)} ${pad(`${v.ok}/${v.cycles.length}`, 6)} ${pad(fmt(v.p50, 1), 8)} ${pad(fmt(v.p90, 1), 8)} ${pad(fmt(v.max, 1), 8)}  ${by}` +
            (v.reannounced ? `; multipathd had a key again ${v.reannounced}x` : ''),
        );
      }
      for (const v of variants) {
        const firstBad = v.cycles.find((c) => c.ms === null);
        if (firstBad) say(`  ${v.name}, poll ${v.topologyIntervalMs} ms: ${v.cycles.length - v.ok} cycle(s) failed, first: ${firstBad.error ?? ''}`);
      }
      const def = variants.find((v) => !v.multipathdKnowsKey && v.topologyIntervalMs === 1000);
      if (def !== undefined) {
        say(`target: under 1 s (every cycle, prmux alone at the default 1000 ms poll) -> ${def.ok === def.cycles.length && def.max < 1000 ? 'met' : 'NOT met'} (max ${fmt(def.max, 1)} ms)`);
      }
      say('bound: prmux learns that a path is back only from its topology poll, then registers at once (one REGISTER AND IGNORE');
      say('EXISTING KEY on that path; "detect->registered" above). The poll period is --topology-interval plus one refresh (two');
      say('multipathd commands; the next poll is timed from the end of the last), so expect about period/2 and at most one period.');
      say('With multipathd holding the key (prmux announces it with setprkey/setprstatus), multipathd registers the returning');
      say('path itself before adding it back, within one path latency, whatever the poll.');
      if (flap !== null) {
        say(
          `flap probe (prmux alone, poll 1000 ms, path add right after path remove): ${flap.ms === null ? `key NOT back within ${flap.waitedMs} ms - a remove+add between two polls looks unchanged to the poll; with --verify-interval 0 nothing repairs it` : `key back after ${fmt(flap.ms, 1)} ms`}`,
        );
      }
      say('');
    }
    say(`caveats: 2 vCPUs in a VM shared with other work (1-min load average ${fmt(loadAtStart)} at the start, ${fmt(loadavg()[0] ?? NaN)} at the end;`);
    say('p99 moves with that load far more than p50). Simulated latency is a Node timer (>= the set value, ~1 ms granularity).');
    say('Every server also runs a 1 s multipathd checker (SAN) and a topology poll (prmux). Compare ratios from one run.');

    if (opt.json) {
      const doc = {
        tool: 'prmux bench/fanout-bench',
        date: new Date().toISOString(),
        machine: { cpus: cpus().length, model: cpuModel, kernel: release(), node: process.version, loadavg1: { start: loadAtStart, end: loadavg()[0] ?? null } },
        options: { ...opt },
        register: { rows, runs: Object.fromEntries([...runs].map(([n, rs]) => [String(n), rs])) },
        pathReturn: { variants, flap },
      };
      writeFileSync(opt.json, `${JSON.stringify(doc, null, 2)}\n`);
      say(`results written to ${opt.json}`);
    }
    const failed = rows.some((r) => r.failed) || variants.some((v) => v.ok !== v.cycles.length);
    return failed ? 1 : 0;
  } finally {
    for (const s of setups) await closeSetup(s).catch(() => undefined);
    await stopAll();
    if (opt.keepTmp) note(`temporary directory kept: ${tmp}`);
    removeTmp();
  }
}

if (process.argv[2] === '--worker') {
  // The client process: one run, result as one JSON line on stdout.
  let spec: WorkerSpec;
  try {
    spec = JSON.parse(process.argv[3] ?? '') as WorkerSpec;
  } catch {
    process.stdout.write(`${JSON.stringify({ samples: [], kinds: '', finalKey: null, errors: 1, setupError: 'bad worker spec' })}\n`);
    process.exit(2);
  }
  runWorker(spec).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(2);
    },
  );
} else {
  runBenchmark(main);
}
