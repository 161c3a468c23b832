// Side-by-side latency of PR commands on a REAL multipath map (the SAN lab: LIO + tcm_loop paths +
// dm-multipath + multipathd 0.9.4 in a QEMU TCG guest, lab/README.md):
//
//   prmux           prmux serve with its multipath fan-out (the default): READ KEYS on one path,
//                   REGISTER AND IGNORE EXISTING KEY on every path in parallel
//   qemu-pr-helper  Debian's qemu-pr-helper 7.2 (no libmpathpersist: ONE plain SG_IO on the map, so its
//                   REGISTER reaches one path only: less work, and the wrong result, see fanout.test.ts)
//   mpathpersist    multipath-tools' CLI on the map (libmpathpersist: every path), a process per command
//   sg_persist      sg3_utils on ONE path device, a process per command: the floor for any
//                   process-per-command tool (process start-up + one ioctl)
//   exec-floor      /bin/true: the process start-up alone (READ KEYS column only)
//
// All of it is timed INSIDE the guest by one Python process (test/lab/guest-scripts/fanout-bench.sh):
// time.perf_counter around prh_client library calls (one kept connection and one map fd per helper, as
// QEMU holds them) and around subprocess.run of the CLI tools. Contenders are interleaved, order
// rotated every iteration (shared/reference/benchmarking.md). Medians and ratios are printed; nothing
// is asserted. Under TCG every instruction is emulated, so absolute numbers are far above bare metal:
// read the ratios.
//
//   node dist/bench/lab-bench.js [--paths N] [--iterations N] [--cli PATH] [--json FILE]
//
// Boots its own lab VM (name labbench-<pid>) and always powers it off, also on SIGINT/SIGTERM/SIGHUP.
// Exit status: 0 done, 1 some answer was not GOOD / exit 0, 2 setup failure or the lab is unavailable.
//
// This is an edge program: it reads argv, writes to stdout/stderr and drives the lab VM.
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LabVm, labSkipReason } from '../test/lab/lab-driver.js';
import { repoRoot } from '../test/support/paths.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const CLIENT_DIR = join(repoRoot, 'test', 'clients');
const GUEST_SCRIPT = join(repoRoot, 'test', 'lab', 'guest-scripts', 'fanout-bench.sh');
const MAP = '/dev/mapper/mpatha';
const PRMUX = { sock: '/tmp/prmux-bench.sock', pid: '/tmp/prmux-bench.pid', err: '/tmp/prmux-bench.err', rc: '/tmp/prmux-bench.rc', state: '/tmp/prmux-bench-state' };
const QPRH = { sock: '/tmp/qprh-bench.sock', pid: '/tmp/qprh-bench.pid', out: '/tmp/qprh-bench.out' };
const CONTENDERS = ['prmux', 'qemu-pr-helper', 'mpathpersist', 'sg_persist', 'exec-floor'] as const;
const OPS = ['read-keys', 'register'] as const;

const USAGE = `usage: node dist/bench/lab-bench.js [options]
  --paths N         tcm_loop paths of the lab map (default 2)
  --iterations N    iterations; each runs every contender once per operation (default 20)
  --cli PATH        prmux cli.js to run in the guest (default: the cli.js of this build)
  --json FILE       also write every sample as JSON`;

interface Options {
  readonly paths: number;
  readonly iterations: number;
  readonly cli: string;
  readonly json: string | undefined;
}

function parseOptions(argv: readonly string[]): Options | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      paths: { type: 'string' },
      iterations: { type: 'string' },
      cli: { type: 'string' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) return 'help';
  const int = (v: string | undefined, dflt: number, min: number, max: number, name: string): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`Cannot use --${name} ${v}: give an integer ${min}..${max}`);
    return n;
  };
  return {
    paths: int(values.paths, 2, 1, 16, 'paths'),
    iterations: int(values.iterations, 20, 1, 1000, 'iterations'),
    cli: resolve(values.cli ?? join(HERE, '..', 'src', 'cli.js')),
    json: values.json,
  };
}

function sh(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function startScript(cli: string): string {
  // Default fan-out mode; the periodic verification is off so that the other contenders' key changes
  // (they all re-register the same LU) do not trigger prmux repairs in the middle of a measurement.
  const run = `${sh(process.execPath)} ${sh(cli)} serve -k ${PRMUX.sock} -f ${PRMUX.pid} --state-dir ${PRMUX.state} --verify-interval 0 2>${PRMUX.err}; echo $? >${PRMUX.rc}`;
  return `rm -rf ${PRMUX.state}; rm -f ${PRMUX.sock} ${PRMUX.pid} ${PRMUX.err} ${PRMUX.rc} ${QPRH.sock} ${QPRH.pid}
setsid bash -c ${sh(run)} </dev/null >/dev/null 2>&1 &
setsid qemu-pr-helper -k ${QPRH.sock} -f ${QPRH.pid} </dev/null >${QPRH.out} 2>&1 &
for i in $(seq 900); do
  [ -S ${PRMUX.sock} ] && [ -s ${PRMUX.pid} ] && [ -S ${QPRH.sock} ] && exit 0
  [ -e ${PRMUX.rc} ] && break
  sleep 0.1
done
echo "prmux serve or qemu-pr-helper did not come up (prmux exit $(cat ${PRMUX.rc} 2>/dev/null))"; cat ${PRMUX.err} ${QPRH.out}; exit 1`;
}

/** Every path unregistered (REGISTER AND IGNORE, SA key 0), retried once for a unit attention. */
const cleanupScript = `for d in $(multipathd show paths raw format '%d'); do
  sg_persist -n --out --register-ignore --param-sark=0 /dev/$d >/dev/null 2>&1 || sg_persist -n --out --register-ignore --param-sark=0 /dev/$d
done`;

const versionsScript = `echo "kernel $(uname -r)"
echo "$(qemu-pr-helper --version | head -1)"
echo "$(multipath -h 2>&1 | grep -m1 -o 'multipath-tools v[0-9.]*')"
echo "sg_persist $(sg_persist --version 2>&1 | head -1)"
echo "node $(${sh(process.execPath)} --version)"
echo "first path device /dev/$(multipathd show paths raw format '%d' | head -1)"`;

interface GuestReport {
  readonly iterations: number;
  readonly seconds: number;
  readonly pathDev: string;
  readonly times: Record<string, Partial<Record<(typeof OPS)[number], number[]>>>;
  readonly notGood: Record<string, Partial<Record<(typeof OPS)[number], { count: number; first: string[] }>>>;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return (sorted[lo] ?? Number.NaN) + ((sorted[hi] ?? Number.NaN) - (sorted[lo] ?? Number.NaN)) * (pos - lo);
}

interface Stat {
  readonly median: number;
  readonly p90: number;
  readonly min: number;
  readonly n: number;
}

function stat(samples: readonly number[] | undefined): Stat | null {
  if (samples === undefined || samples.length === 0) return null;
  const s = [...samples].sort((a, b) => a - b);
  return { median: quantile(s, 0.5), p90: quantile(s, 0.9), min: s[0] ?? Number.NaN, n: s.length };
}

function fmt(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

function report(r: GuestReport, opts: Options, versions: string, bootLine: string): { text: string; bad: boolean } {
  const st = (who: string, op: (typeof OPS)[number]): Stat | null => stat(r.times[who]?.[op]);
  const lines: string[] = [];
  lines.push(`prmux lab bench: ${r.iterations} iterations, ${opts.paths} path(s), ${MAP}, timed inside the guest (QEMU TCG: read the ratios, not the absolute numbers)`);
  lines.push(versions.trim().split('\n').join('; '));
  lines.push(bootLine);
  lines.push(`prmux: serve, fan-out (default), --verify-interval 0; qemu-pr-helper: plain SG_IO on the map; sg_persist on ${r.pathDev} only; guest loop ${r.seconds} s`);
  lines.push('');
  lines.push('| contender | READ KEYS median | p90 | min | REGISTER AND IGNORE median | p90 | min | not GOOD |');
  lines.push('|---|---|---|---|---|---|---|---|');
  let bad = false;
  for (const who of CONTENDERS) {
    const cells: string[] = [];
    for (const op of OPS) {
      const s = st(who, op);
      cells.push(s === null ? '-' : fmt(s.median), s === null ? '-' : fmt(s.p90), s === null ? '-' : fmt(s.min));
    }
    const nb = OPS.map((op) => r.notGood[who]?.[op]?.count ?? 0);
    if (nb.some((c) => c > 0)) bad = true;
    lines.push(`| ${who} | ${cells.join(' | ')} | ${nb.some((c) => c > 0) ? nb.join('/') : '0'} |`);
  }
  lines.push('');
  lines.push('ratios of medians (READ KEYS, REGISTER AND IGNORE):');
  const ratio = (a: string, b: string, label: string): void => {
    const parts = OPS.map((op) => {
      const x = st(a, op);
      const y = st(b, op);
      return x === null || y === null ? '-' : `${(x.median / y.median).toFixed(2)}x`;
    });
    lines.push(`  ${label.padEnd(44)} ${parts.join(', ')}`);
  };
  ratio('mpathpersist', 'prmux', 'mpathpersist / prmux');
  ratio('prmux', 'qemu-pr-helper', 'prmux / qemu-pr-helper');
  ratio('mpathpersist', 'sg_persist', 'mpathpersist / sg_persist (process floor)');
  ratio('prmux', 'sg_persist', 'prmux / sg_persist');
  const diff = OPS.map((op) => {
    const x = st('mpathpersist', op);
    const y = st('sg_persist', op);
    return x === null || y === null ? '-' : `${fmt(x.median - y.median)} ms`;
  });
  lines.push(`  ${'mpathpersist - sg_persist (beyond start-up)'.padEnd(44)} ${diff.join(', ')}`);
  const floor = st('exec-floor', 'read-keys');
  const sgRk = st('sg_persist', 'read-keys');
  if (floor !== null && sgRk !== null) lines.push(`  ${'process start-up (/bin/true) median'.padEnd(44)} ${fmt(floor.median)} ms (sg_persist READ KEYS - that: ${fmt(sgRk.median - floor.median)} ms)`);
  for (const who of CONTENDERS) {
    for (const op of OPS) {
      const b = r.notGood[who]?.[op];
      if (b !== undefined && b.count > 0) lines.push(`NOT GOOD: ${who} ${op}: ${b.count} of ${r.iterations}, e.g. ${b.first.join(' | ')}`);
    }
  }
  return { text: lines.join('\n'), bad };
}

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
  const reason = await labSkipReason();
  if (reason !== null) {
    process.stderr.write(`lab-bench: the lab cannot run here: ${reason}\n`);
    return 2;
  }
  process.stderr.write(`lab-bench: booting a ${opts.paths}-path lab VM...\n`);
  const vm = await LabVm.start({ name: `labbench-${process.pid}`, paths: opts.paths, lifetimeSec: 1800, idleTimeoutSec: 300 });
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(130);
    stopping = true;
    process.stderr.write(`lab-bench: ${sig}: powering the lab VM off\n`);
    void vm.stop().finally(() => process.exit(130));
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  try {
    const bootLine = vm.bootLog.split('\n').find((l) => l.includes('boot->ready')) ?? '';
    // fresh: the guest's 9p root is cache=loose and this build's files may have changed since it read them.
    const up = await vm.exec(['bash', '-c', startScript(opts.cli)], { fresh: true, timeoutSec: 180 });
    if (up.code !== 0) throw new Error(`prmux/qemu-pr-helper did not start in the guest:\n${up.stdout}${up.stderr}`);
    const versions = await vm.exec(['bash', '-c', `${cleanupScript}\n${versionsScript}`], { timeoutSec: 120 });
    if (versions.code !== 0) throw new Error(`guest preparation failed:\n${versions.stdout}${versions.stderr}`);
    const pathDev = /first path device (\/dev\/sd[a-z]+)/.exec(versions.stdout)?.[1];
    if (pathDev === undefined) throw new Error(`no path device found:\n${versions.stdout}`);
    process.stderr.write(`lab-bench: ${opts.iterations} iterations in the guest...\n`);
    const run = await vm.exec(['bash', GUEST_SCRIPT, CLIENT_DIR, PRMUX.sock, QPRH.sock, MAP, pathDev, String(opts.iterations)], { timeoutSec: 1200 });
    if (run.code !== 0) throw new Error(`the guest timing loop failed (exit ${run.code}):\n${run.stdout}${run.stderr}`);
    const guest = JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as GuestReport;
    const prmuxLog = await vm.exec(['bash', '-c', `sort ${PRMUX.err} | uniq -c | sort -rn | head -8`]);
    const { text, bad } = report(guest, opts, versions.stdout.split('\n').filter((l) => !l.startsWith('first path')).join('\n'), bootLine);
    process.stdout.write(`${text}\nprmux stderr (distinct lines, counted):\n${prmuxLog.stdout}`);
    if (opts.json !== undefined) writeFileSync(opts.json, JSON.stringify({ options: opts, versions: versions.stdout, guest }, null, 2));
    return bad ? 1 : 0;
  } finally {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
    if (!stopping) await vm.stop();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`lab-bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 2;
  },
);
