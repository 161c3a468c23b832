// Nested-QEMU end-to-end test of `prmux serve` (issue #5): real QEMU as the pr-manager-helper client.
//
// L1 is the lab VM (lab/README.md: LIO fileio LUN exported through two tcm_loop targets, one I_T
// nexus each, dm-multipath map /dev/mapper/mpatha). In it prmux serves a socket, and a nested QEMU
// guest (L2, TCG inside TCG) gets the map as a scsi-block disk whose drive has
// `file.pr-manager=<pr-manager-helper object on prmux's socket>` (QEMU docs/system/pr-manager.rst).
// Inside L2, sg_persist sends PERSISTENT RESERVE IN/OUT to its virtio-scsi disk; QEMU hands each one
// to prmux with the map's fd, prmux issues the SG_IO, LIO answers. L2 boots the lab's own kernel
// (unpacked to its ELF image and started through QEMU's PVH entry: lab/nested/l2-kernel.sh) with a
// busybox + sg_persist initramfs built on the host (lab/nested/build-l2-initramfs.sh); its init
// (lab/nested/l2-init) prints every step's output and exit status on its serial console, a file in
// the lab's share dir that this test reads while L2 runs. After REGISTER, L2 waits at a sync point
// (a line on its second serial port, a pipe in L1) while the test reads the registrations on the
// path devices in L1.
//
// What is checked: every step's answer inside L2 (GOOD, the key read back, the reservation and its
// type), prmux's own -vv log (one line per command: exactly L2's commands, on the map, same
// status), and the target's view from L1 through the path devices after the REGISTER (the key on
// every path: the multipath fan-out) and at the end (nothing left).
//
// MULTIPATH_MODE picks prmux's --multipath mode. With 'fanout' (prmux's default) prmux sends each
// command to the paths it chooses, so the lab's map is used as it is (both paths in one group).
// With 'plain' prmux issues ONE SG_IO on the map fd and dm-multipath's service-time selector rotates
// ioctls between the paths of a group, so the RESERVE after a REGISTER could reach the other,
// unregistered I_T nexus (test/lab/serve.test.ts, "map fd" test): the map is then switched to
// path_grouping_policy failover (lab/nested/l1.sh failover), every ioctl goes to the active
// group's path, and the REGISTER registers that path only.
//
// Timing measured here (2-core host shared with other lab VMs, load 2-6; L2 is TCG inside TCG): L1
// boot 11-31 s, L2 start to the sync point 130-185 s, each sg_persist in L2 2-8 s, sync point to
// L2's power-off 30-52 s, whole file 3.1-4.8 min.
// Deadlines are generous; a timeout fails with the tail of L2's console, QEMU's stderr and prmux's log.
//
// When the lab cannot run here (not root, not Linux, build failure, PRMUX_LAB=0) every test is
// reported as SKIPPED with the reason. A VM that does not boot, or an L2 that does not finish, fails.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Opcode, PrInAction, PrOutAction, PrType, ScsiStatus } from '../../src/scsi/constants.js';
import { repoRoot } from '../support/paths.js';
import { LabVm, labSkipReason } from './lab-driver.js';

const PATHS = 2;
/** The prmux build under test: the dist tree this compiled test belongs to (dist/ or dist-<name>/). */
const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli.js');
const NESTED_DIR = join(repoRoot, 'lab', 'nested');
const L1_SCRIPT = join(NESTED_DIR, 'l1.sh');
const BUILD_SCRIPT = join(NESTED_DIR, 'build-l2-initramfs.sh');
const KERNEL_SCRIPT = join(NESTED_DIR, 'l2-kernel.sh');
const SAS_BASE = 0x5001405f00000000n;

const KEY = 0x6e57ed01n;
const TYPE = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
/** How sg_persist --in -r names TYPE. */
const TYPE_TEXT = 'Write Exclusive, registrants only';
/** L2 memory; L1 has 2048 MiB (lab.sh -m), of which ~1.8 GiB are free once the map is up. */
const L2_MEMORY_MB = 256;
/** Host wall seconds from starting L2 to its sync point after REGISTER (measured 130-185 s). */
const SYNC_DEADLINE_S = 480;
/** Host wall seconds from the resume to L2's power-off (measured 30-52 s). */
const DONE_DEADLINE_S = 300;
/** L2's own wait at the sync point, and the nested QEMU's lifetime in L1 (seconds). */
const L2_SYNC_TIMEOUT_S = SYNC_DEADLINE_S + 60;
const L2_LIFETIME_S = SYNC_DEADLINE_S + DONE_DEADLINE_S + 120;

/** prmux serve --multipath: 'fanout' (default) or 'plain' (one SG_IO on the map fd, as qemu-pr-helper). */
const MULTIPATH_MODE = 'fanout' as 'fanout' | 'plain';
/**
 * The fan-out registers one I_T nexus per path of the map; plain mode only the nexus dm-multipath
 * handed the one SG_IO to. Everything else follows from what L1 observed: L2's READ KEYS must list
 * the key once per registered nexus, its READ FULL STATUS name the same nexuses.
 */
const EXPECT_EVERY_PATH = MULTIPATH_MODE === 'fanout';
/**
 * Map the LU with path_grouping_policy failover for the run (see the header): only needed when
 * dm-multipath, not prmux, picks the path of each command; with a rotating selector L2's steps
 * would otherwise be a lottery.
 */
const FAILOVER_MAP = MULTIPATH_MODE === 'plain';

/** The steps lab/nested/l2-init runs, in order, and the PERSISTENT RESERVE command each one sends. */
const L2_STEPS = [
  { id: 'in-k-before', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_KEYS },
  { id: 'register', opcode: Opcode.PERSISTENT_RESERVE_OUT, sa: PrOutAction.REGISTER },
  { id: 'in-k', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_KEYS },
  { id: 'in-s', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_FULL_STATUS },
  { id: 'reserve', opcode: Opcode.PERSISTENT_RESERVE_OUT, sa: PrOutAction.RESERVE },
  { id: 'in-r', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_RESERVATION },
  { id: 'release', opcode: Opcode.PERSISTENT_RESERVE_OUT, sa: PrOutAction.RELEASE },
  { id: 'in-r-after', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_RESERVATION },
  { id: 'unregister', opcode: Opcode.PERSISTENT_RESERVE_OUT, sa: PrOutAction.REGISTER },
  { id: 'in-k-after', opcode: Opcode.PERSISTENT_RESERVE_IN, sa: PrInAction.READ_KEYS },
] as const;

// ---------------------------------------------------------------------------------------------------
// Parsers of sg_persist's text output (sg3-utils 1.46, as in shared/lab/samples/).

interface KeyList {
  readonly generation: number;
  readonly keys: readonly bigint[];
}

/** `sg_persist --in -k`: "PR generation=0x1, 1 registered reservation key follows:" + one key a line. */
function parseReadKeys(text: string): KeyList {
  const gen = /PR generation=(0x[0-9a-f]+)/i.exec(text);
  assert.ok(gen, `no PR generation in READ KEYS output:\n${text}`);
  if (/there are NO registered reservation keys/.test(text)) return { generation: Number(gen[1]), keys: [] };
  const m = /(\d+) registered reservation keys? follows?:\n((?:\s+0x[0-9a-f]+\n?)*)/i.exec(text);
  assert.ok(m, `unexpected READ KEYS output:\n${text}`);
  const keys = (m[2] ?? '').trim().split(/\s+/).filter((k) => k !== '').map((k) => BigInt(k));
  assert.equal(keys.length, Number(m[1]), `READ KEYS count:\n${text}`);
  return { generation: Number(gen[1]), keys };
}

interface Reservation {
  readonly generation: number;
  readonly key: bigint | null;
  readonly scope: string | null;
  readonly type: string | null;
}

/** `sg_persist --in -r`: "Reservation follows:" Key=.. / "scope: LU_SCOPE,  type: ..", or none held. */
function parseReadReservation(text: string): Reservation {
  const gen = /PR generation=(0x[0-9a-f]+)/i.exec(text);
  assert.ok(gen, `no PR generation in READ RESERVATION output:\n${text}`);
  if (/there is NO reservation held/.test(text)) return { generation: Number(gen[1]), key: null, scope: null, type: null };
  const key = /Key=(0x[0-9a-f]+)/i.exec(text);
  const st = /scope: (\S+),\s+type: (.+)$/m.exec(text);
  assert.ok(key && st, `unexpected READ RESERVATION output:\n${text}`);
  return { generation: Number(gen[1]), key: BigInt(key[1] ?? ''), scope: st[1] ?? null, type: (st[2] ?? '').trim() };
}

interface FullStatusEntry {
  readonly key: bigint;
  readonly relativePort: number;
  readonly sasAddress: bigint;
  readonly holder: boolean;
}

/** `sg_persist --in -s`: one block per registration (Key=, Relative port address:, SAS address:). */
function parseFullStatus(text: string): FullStatusEntry[] {
  const entries: FullStatusEntry[] = [];
  let cur: { key: bigint; relativePort?: number; sasAddress?: bigint; holder: boolean } | undefined;
  const flush = (): void => {
    if (cur === undefined) return;
    assert.ok(cur.relativePort !== undefined && cur.sasAddress !== undefined, `incomplete descriptor:\n${text}`);
    entries.push({ key: cur.key, relativePort: cur.relativePort, sasAddress: cur.sasAddress, holder: cur.holder });
  };
  for (const line of text.split('\n')) {
    let m: RegExpExecArray | null;
    if ((m = /^\s*Key=(0x[0-9a-f]+)/i.exec(line))) {
      flush();
      cur = { key: BigInt(m[1] ?? ''), holder: false };
    } else if (cur && (m = /Relative port address: (0x[0-9a-f]+)/i.exec(line))) {
      cur.relativePort = Number(m[1]);
    } else if (cur && (m = /SAS address: (0x[0-9a-f]+)/i.exec(line))) {
      cur.sasAddress = BigInt(m[1] ?? '');
    } else if (cur && /<< Reservation holder >>/.test(line)) {
      cur.holder = true;
    }
  }
  flush();
  return entries;
}

/** Path N's initiator is naa.5001405f0000000N (lab/README.md): its SAS TransportID names the path. */
function pathOfSas(sas: bigint): number {
  const n = Number(sas - SAS_BASE);
  assert.ok(n >= 1 && n <= PATHS, `SAS address 0x${sas.toString(16)} is no lab path`);
  return n;
}

/**
 * The SCSI status behind an sg_persist exit status (sg3_utils sg_lib.h: SG_LIB_CAT_RES_CONFLICT is
 * 24; the other non-zero categories come from sense data, i.e. CHECK CONDITION).
 */
function statusOfExit(rc: number): number {
  if (rc === 0) return ScsiStatus.GOOD;
  if (rc === 24) return ScsiStatus.RESERVATION_CONFLICT;
  return ScsiStatus.CHECK_CONDITION;
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

// ---------------------------------------------------------------------------------------------------
// L2's console (lab/nested/l2-init markers) and L1's path view (lab/nested/l1.sh view).

interface L2Step {
  readonly rc: number;
  readonly output: string;
  /** L2 uptime (s) at BEGIN and END. */
  readonly t0: number;
  readonly t1: number;
}
interface L2Console {
  /** First occurrence of each event (BOOT, MODULES, DISK, SYNC, RESUME, DONE, ...): words and L2 uptime. */
  readonly events: Map<string, { readonly words: string; readonly t: number }>;
  readonly steps: Map<string, L2Step>;
}

// The kernel may interleave its own lines ("[   12.345678] ...") with the script's.
const KERNEL_LINE = /^\[\s*\d+\.\d+\]/;

function parseConsole(text: string): L2Console {
  const events = new Map<string, { words: string; t: number }>();
  const steps = new Map<string, L2Step>();
  let open: { id: string; t0: number; lines: string[] } | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    let m: RegExpExecArray | null;
    if ((m = /^@@L2 BEGIN (\S+) t=([\d.]+)$/.exec(line))) {
      open = { id: m[1] ?? '', t0: Number(m[2]), lines: [] };
    } else if ((m = /^@@L2 END (\S+) rc=(\d+) t=([\d.]+)$/.exec(line))) {
      assert.equal(m[1], open?.id, `END without its BEGIN in L2's console: ${line}`);
      if (open) steps.set(open.id, { rc: Number(m[2]), output: open.lines.join('\n'), t0: open.t0, t1: Number(m[3]) });
      open = undefined;
    } else if ((m = /^@@L2 (\S+)(.*?) t=([\d.]+)$/.exec(line))) {
      if (!events.has(m[1] ?? '')) events.set(m[1] ?? '', { words: (m[2] ?? '').trim(), t: Number(m[3]) });
    } else if (open && !KERNEL_LINE.test(line)) {
      open.lines.push(line);
    }
  }
  return { events, steps };
}

interface PathView {
  /** path number → READ KEYS through that path's own device. */
  readonly keys: Map<number, KeyList>;
  /** READ FULL STATUS through path 1's device. */
  readonly full: FullStatusEntry[];
  /** `multipath -ll mpatha` at that moment. */
  readonly map: string;
  readonly text: string;
}

function parseView(text: string): PathView {
  const keys = new Map<number, KeyList>();
  let full: FullStatusEntry[] | undefined;
  // "@@VIEW path N sdX" or "@@VIEW full-status sdX", sg_persist's output, "@@VIEW rc=N".
  for (const m of text.matchAll(/^@@VIEW (?:path (\d+) sd[a-z]+|full-status \S+)\n([\s\S]*?)^@@VIEW rc=(\d+)$/gm)) {
    assert.equal(m[3], '0', `sg_persist in L1 failed:\n${text}`);
    if (m[1] !== undefined) keys.set(Number(m[1]), parseReadKeys(m[2] ?? ''));
    else full = parseFullStatus(m[2] ?? '');
  }
  assert.equal(keys.size, PATHS, `L1 view lists ${keys.size} paths:\n${text}`);
  assert.ok(full, `no READ FULL STATUS in the L1 view:\n${text}`);
  const map = text.split(/^@@MAP\n/m)[1] ?? '';
  return { keys, full, map, text };
}

/** The path devices of the map's active path group(s), from `multipath -ll` ("status=active" groups). */
function activeDevs(multipathLl: string): string[] {
  const devs: string[] = [];
  let active = false;
  for (const line of multipathLl.split('\n')) {
    const pg = /policy=.*status=(\w+)/.exec(line);
    if (pg) active = pg[1] === 'active';
    const path = /\d+:\d+:\d+:\d+ (sd[a-z]+) /.exec(line);
    if (path && active) devs.push(path[1] ?? '');
  }
  return devs;
}

/** One "prmux: debug: PR command k=v ..." line of prmux serve -vv (src/serve/handler.ts). */
interface PrmuxRecord {
  readonly opcode: number;
  readonly serviceAction: number;
  readonly target: string;
  readonly backend: string;
  readonly status: number;
  readonly refused: string | null;
}

function parsePrmuxLog(text: string): PrmuxRecord[] {
  const out: PrmuxRecord[] = [];
  for (const line of text.split('\n')) {
    // The handler's record (opcode=...), not the fan-out's own "PR command done ..." lines.
    if (!line.startsWith('prmux: debug: PR command opcode=')) continue;
    const fields = new Map<string, string>();
    // Values are bare tokens or JSON strings (stderr-logger.ts formatValue).
    for (const m of line.slice('prmux: debug: PR command '.length).matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
      const v = m[2] ?? '';
      fields.set(m[1] ?? '', v.startsWith('"') ? (JSON.parse(v) as string) : v);
    }
    out.push({
      opcode: Number(fields.get('opcode')),
      serviceAction: Number(fields.get('serviceAction')),
      target: fields.get('target') ?? '',
      backend: fields.get('backend') ?? '',
      status: Number(fields.get('status')),
      refused: fields.get('refused') ?? null,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The run.

interface NestedRun {
  /** path number → sdX in L1. */
  readonly devs: Map<number, string>;
  readonly viewBefore: PathView;
  readonly viewAtSync: PathView;
  readonly viewAfter: PathView;
  readonly consoleText: string;
  readonly l2: L2Console;
  readonly l2Exit: string;
  readonly l2Stderr: string;
  readonly prmuxLog: string;
  readonly prmuxStop: string;
  readonly timings: readonly string[];
}

let lab: LabVm | undefined;
let skipReason = 'the lab was not started';
let run: Promise<NestedRun> | undefined;

function needLab(t: TestContext): LabVm | undefined {
  if (lab === undefined) t.skip(skipReason);
  return lab;
}

function sec(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

async function readOr(path: string, fallback: string): Promise<string> {
  return readFile(path, 'utf8').catch(() => fallback);
}

function tail(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

/** Run one of the host-side scripts of lab/nested/ (small outputs; killed after 2 minutes). */
async function hostScript(script: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolveP, reject) => {
    const child = spawn('bash', [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString('utf8'); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString('utf8'); });
    const timer = setTimeout(() => child.kill('SIGTERM'), 120_000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolveP({ stdout: stdout.trim(), stderr: stderr.trim() });
      else reject(new Error(`${script} exited ${String(code)}:\n${stderr}`));
    });
  });
}

async function runNested(vm: LabVm): Promise<NestedRun> {
  const timings: string[] = [];
  const hostDir = join(vm.shareDir, 'nested');
  const guestDir = `${LabVm.guestShareDir}/nested`;
  const consolePath = join(hostDir, 'l2-console.log');
  const l1 = (args: readonly string[], timeoutSec = 120) => vm.check(['bash', L1_SCRIPT, ...args], { timeoutSec });
  await mkdir(hostDir, { recursive: true });

  let t = performance.now();
  const modules = (await hostScript(BUILD_SCRIPT, [join(hostDir, 'l2-initrd.img')])).stdout;
  timings.push(`L2 initramfs built on the host: ${sec(performance.now() - t)} (modules: ${modules})`);
  // L2 boots the very kernel L1 runs: its ELF image through QEMU's PVH entry when it can be unpacked.
  t = performance.now();
  const k = await hostScript(KERNEL_SCRIPT, []);
  assert.ok(existsSync(k.stdout), `l2-kernel.sh printed ${k.stdout}`);
  timings.push(`L2 kernel ${k.stdout}: ${sec(performance.now() - t)}${k.stderr === '' ? '' : ` (${k.stderr})`}`);

  const devs = new Map<number, string>();
  for (const line of (await l1(['paths'])).stdout.trim().split('\n')) {
    const [n, d] = line.split(' ');
    assert.match(d ?? '', /^sd[a-z]+$/, line);
    devs.set(Number(n), d ?? '');
  }
  if (FAILOVER_MAP) {
    t = performance.now();
    await l1(['failover']); // fails unless mpatha ends up with one group per path, all paths active
    timings.push(`map switched to failover grouping: ${sec(performance.now() - t)}`);
  }
  const viewBefore = parseView((await l1(['view'])).stdout);
  t = performance.now();
  await l1(['start-prmux', process.execPath, CLI, '--multipath', MULTIPATH_MODE]);
  timings.push(`prmux serve -vv --multipath ${MULTIPATH_MODE} up in L1: ${sec(performance.now() - t)}`);

  // Everything the failure message needs, read fresh from the share.
  const evidence = async (why: string): Promise<Error> => {
    const [con, err, rc, plog] = await Promise.all([
      readOr(consolePath, '(no console file)'), readOr(join(hostDir, 'l2-qemu.stderr'), '(none)'),
      readOr(join(hostDir, 'l2.rc'), '(still running)'), readOr(join(hostDir, 'prmux.log'), '(none)').then(prmuxLogShown),
    ]);
    await vm.exec(['bash', L1_SCRIPT, 'stop-l2'], { timeoutSec: 30 }).catch(() => undefined);
    // L2 boots with loglevel=3: its console stays empty until its init prints BOOT.
    const conTail = con.trim() === '' ? "(empty: L2's kernel has not reached its init)" : tail(con, 40);
    return new Error(`${why}\nnested QEMU exit: ${rc.trim()}\n--- L2 console (last 40 lines)\n${conTail}\n` +
      `--- nested QEMU stderr\n${tail(err, 10)}\n--- prmux log (last 15 lines)\n${tail(plog, 15)}`);
  };
  const waitFor = async (marker: RegExp, deadlineS: number, what: string): Promise<string> => {
    const start = performance.now();
    for (;;) {
      const text = await readOr(consolePath, '');
      if (marker.test(text)) return text;
      if (existsSync(join(hostDir, 'l2.rc'))) {
        // Exited: one last read, the file may have grown since.
        const last = await readOr(consolePath, '');
        if (marker.test(last)) return last;
        throw await evidence(`The nested QEMU exited before ${what}.`);
      }
      if (performance.now() - start > deadlineS * 1000) throw await evidence(`Timed out after ${deadlineS} s waiting for ${what}.`);
      await delay(1000);
    }
  };

  const kernel = k.stdout;
  // Every boot-time cost is multiplied under TCG inside TCG: no crypto self-tests, no mitigations.
  const append = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'mitigations=off', 'cryptomgr.notests',
    `l2key=${hex(KEY)}`, `l2type=${TYPE}`, `l2sync=${L2_SYNC_TIMEOUT_S}`].join(' ');
  t = performance.now();
  await l1(['start-l2', kernel, `${guestDir}/l2-initrd.img`, String(L2_MEMORY_MB), String(L2_LIFETIME_S), append]);
  const tStart = performance.now();
  timings.push(`nested QEMU started in L1: ${sec(tStart - t)}`);

  await waitFor(/^@@L2 SYNC register /m, SYNC_DEADLINE_S, "L2's sync point after REGISTER");
  const tSync = performance.now();
  timings.push(`L2 start → sync point after REGISTER: ${sec(tSync - tStart)} host wall`);
  const viewAtSync = parseView((await l1(['view'])).stdout);
  await l1(['resume']);
  timings.push(`L1 path view + resume: ${sec(performance.now() - tSync)}`);

  const tResume = performance.now();
  await waitFor(/^@@L2 DONE /m, DONE_DEADLINE_S, "L2's last step");
  // DONE is printed just before the power-off; QEMU's exit status follows within seconds.
  const deadline = performance.now() + 60_000;
  while (!existsSync(join(hostDir, 'l2.rc')) && performance.now() < deadline) await delay(500);
  timings.push(`resume → L2 done: ${sec(performance.now() - tResume)}; L2 start → QEMU exit: ${sec(performance.now() - tStart)}`);

  const consoleText = await readOr(consolePath, '');
  const l2 = parseConsole(consoleText);
  const viewAfter = parseView((await l1(['view'])).stdout);
  const prmuxStop = (await l1(['stop-prmux'], 60)).stdout.trim();
  const [l2Exit, l2Stderr, prmuxLog] = await Promise.all([
    readOr(join(hostDir, 'l2.rc'), '(no exit status: QEMU did not exit within 60 s of DONE)'),
    readOr(join(hostDir, 'l2-qemu.stderr'), ''),
    readOr(join(hostDir, 'prmux.log'), ''),
  ]);
  return { devs, viewBefore, viewAtSync, viewAfter, consoleText, l2, l2Exit: l2Exit.trim(), l2Stderr, prmuxLog, prmuxStop, timings };
}

/** prmux's log without the topology poll's once-a-second "multipathd command" lines. */
function prmuxLogShown(log: string): string {
  return log.split('\n').filter((l) => !l.startsWith('prmux: debug: multipathd command ')).join('\n').trim();
}

/** The nested run, started by the first test that needs it; every test awaits the same result. */
function nested(vm: LabVm): Promise<NestedRun> {
  run ??= runNested(vm);
  return run;
}

/** Paths whose nexus holds `key`, from READ FULL STATUS (sorted, each at most once). */
function pathsWithKey(v: PathView, key: bigint): number[] {
  const paths = v.full.filter((e) => e.key === key).map((e) => pathOfSas(e.sasAddress)).sort((a, b) => a - b);
  assert.equal(new Set(paths).size, paths.length, `a path registered twice: ${v.text}`);
  return paths;
}

function step(r: NestedRun, id: string): L2Step {
  const s = r.l2.steps.get(id);
  assert.ok(s, `step ${id} did not complete in L2:\n${tail(r.consoleText, 40)}`);
  return s;
}

describe('nested QEMU: scsi-block + pr-manager-helper on prmux serve, map of the SAN lab', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    const reason = await labSkipReason();
    if (reason !== null) {
      skipReason = reason;
      return;
    }
    assert.ok(existsSync(CLI), `no prmux build at ${CLI}`);
    // Its own instance name, so other suites' and developers' lab VMs are left alone.
    lab = await LabVm.start({ name: `nested-${process.pid}`, paths: PATHS, lifetimeSec: 1800 });
  }, { timeout: 25 * 60_000 });

  after(async () => {
    await lab?.stop();
  }, { timeout: 3 * 60_000 });

  it('boots L2 with the map as its scsi-block disk and runs every sg_persist step', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r = await nested(vm);
    // The disk L2 sees is the LIO LU, passed through (scsi-block forwards INQUIRY to the map).
    assert.match(r.l2.events.get('DISK')?.words ?? '', /^sd[a-z]+ vendor=LIO-ORG\s+model=FILEIO/, tail(r.consoleText, 40));
    assert.deepEqual([...r.l2.steps.keys()], L2_STEPS.map((s) => s.id), tail(r.consoleText, 60));
    assert.ok(r.l2.events.has('RESUME'), `L2 left its sync point without the resume line:\n${tail(r.consoleText, 40)}`);
    assert.ok(r.l2.events.has('DONE'));
    assert.equal(r.l2Exit, '0', `nested QEMU exit status; stderr:\n${r.l2Stderr}`);
    const ev = (name: string): string => `${r.l2.events.get(name)?.t.toFixed(1) ?? '?'} s`;
    const steps = L2_STEPS.map((s) => {
      const x = r.l2.steps.get(s.id);
      return x ? `${s.id} ${(x.t1 - x.t0).toFixed(1)} s` : `${s.id} ?`;
    });
    t.diagnostic([
      `L1 boot: ${vm.bootLog.split('\n').find((l) => l.includes('boot->ready'))?.replace(/^\[lab\] /, '') ?? '?'}`,
      ...r.timings,
      `L2 uptime: init ${ev('BOOT')}, modules ${ev('MODULES')}, disk ${ev('DISK')}, sync ${ev('SYNC')}, resume ${ev('RESUME')}, done ${ev('DONE')}`,
      `L2 steps (L2 uptime, sg_persist start to exit): ${steps.join(', ')}`,
      `map in L1 at L2's sync point:\n${r.viewAtSync.map.trim()}`,
      `L2 console:\n${r.consoleText.trim()}`,
    ].join('\n'));
  });

  it('answers each PERSISTENT RESERVE command from L2 as SPC-4 says: GOOD, the key read back, the reservation type', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r = await nested(vm);
    for (const s of L2_STEPS) assert.equal(step(r, s.id).rc, 0, `${s.id} in L2 (sg_persist exit status):\n${step(r, s.id).output}`);
    const registered = pathsWithKey(r.viewAtSync, KEY);

    const k0 = parseReadKeys(step(r, 'in-k-before').output);
    assert.deepEqual(k0.keys, [], 'the LU starts without registrations');
    // One key per registered I_T nexus (SPC-4 6.15.2): as many as L1 saw through the path devices.
    const k1 = parseReadKeys(step(r, 'in-k').output);
    assert.deepEqual(k1.keys, registered.map(() => KEY), step(r, 'in-k').output);
    assert.ok(k1.generation > k0.generation, `PRGENERATION ${k0.generation} → ${k1.generation}`);
    // READ FULL STATUS from L2 names the same nexuses L1 saw (SAS TransportID = path).
    const full = parseFullStatus(step(r, 'in-s').output);
    assert.deepEqual(full.map((e) => [pathOfSas(e.sasAddress), e.key, e.holder]), registered.map((p) => [p, KEY, false]), step(r, 'in-s').output);

    const res = parseReadReservation(step(r, 'in-r').output);
    assert.deepEqual([res.key, res.scope, res.type], [KEY, 'LU_SCOPE', TYPE_TEXT], step(r, 'in-r').output);
    assert.equal(res.generation, k1.generation, 'RESERVE does not change PRGENERATION (SPC-4 6.16.2)');
    assert.deepEqual(parseReadReservation(step(r, 'in-r-after').output).key, null, step(r, 'in-r-after').output);
    assert.deepEqual(parseReadKeys(step(r, 'in-k-after').output).keys, [], step(r, 'in-k-after').output);
    t.diagnostic(`in L2: READ KEYS ${k1.keys.map(hex).join(',')} (generation ${k1.generation}); READ RESERVATION ${hex(res.key ?? 0n)} ${res.scope ?? ''} ${res.type ?? ''}; after RELEASE none; after unregister no keys`);
  });

  it('prmux served exactly the commands L2 sent, on the map, with the status L2 got (its -vv log)', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r = await nested(vm);
    const log = prmuxLogShown(r.prmuxLog);
    const records = parsePrmuxLog(r.prmuxLog);
    const want = L2_STEPS.map((s) => ({ opcode: s.opcode, serviceAction: s.sa, status: statusOfExit(step(r, s.id).rc) }));
    assert.deepEqual(records.map((x) => ({ opcode: x.opcode, serviceAction: x.serviceAction, status: x.status })), want, log);
    for (const x of records) {
      // The fd QEMU passes is the map's (src/serve/device-target.ts: "dm-N (mpatha)").
      assert.match(x.target, /^dm-\d+ \(mpatha\)$/, log);
      assert.equal(x.backend, MULTIPATH_MODE === 'fanout' ? 'multipath' : 'sg_io', log);
      assert.equal(x.refused, null, log);
    }
    assert.match(r.prmuxLog, /^prmux serve: listening on \/tmp\/prmux-nested\.sock \(pid \d+\)$/m);
    assert.equal(r.prmuxStop, 'stopped', 'prmux exits on SIGTERM after the run');
    t.diagnostic(`prmux log (without the topology poll's multipathd commands):\n${log}`);
  });

  it(`the REGISTER from L2 reached the LU: the key is on ${EXPECT_EVERY_PATH ? 'every path' : 'a path'} in L1, and gone at the end`, async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r = await nested(vm);
    assert.deepEqual(r.viewBefore.full, [], `the LU starts without registrations:\n${r.viewBefore.text}`);
    const registered = pathsWithKey(r.viewAtSync, KEY);
    assert.deepEqual(r.viewAtSync.full.filter((e) => e.key !== KEY), [], r.viewAtSync.text);
    // READ KEYS is LU-wide: every path device answers the same list, the key once per nexus.
    for (const [n, v] of r.viewAtSync.keys) assert.deepEqual(v.keys, registered.map(() => KEY), `READ KEYS via path ${n}:\n${r.viewAtSync.text}`);
    if (EXPECT_EVERY_PATH) {
      assert.deepEqual(registered, Array.from({ length: PATHS }, (_v, i) => i + 1), r.viewAtSync.text);
    } else {
      // Plain mode: prmux's ONE SG_IO on the map fd registered the nexus dm-multipath sent it to.
      assert.ok(registered.length >= 1, `the key is on no path:\n${r.viewAtSync.text}`);
    }
    const active = activeDevs(r.viewAtSync.map);
    if (FAILOVER_MAP) {
      // One path per group: dm-multipath sent the SG_IO down the active group's only path, so that
      // path's nexus is registered.
      assert.equal(active.length, 1, `active path group of mpatha:\n${r.viewAtSync.map}`);
      const activePath = [...r.devs].find(([, d]) => d === active[0])?.[0];
      assert.ok(activePath !== undefined && registered.includes(activePath), `active ${active[0] ?? '?'}, registered ${JSON.stringify(registered)}`);
    }
    for (const [n, v] of r.viewAfter.keys) assert.deepEqual(v.keys, [], `after L2 unregistered, READ KEYS via path ${n}:\n${r.viewAfter.text}`);
    assert.deepEqual(r.viewAfter.full, []);
    t.diagnostic(`after the L2 REGISTER, key ${hex(KEY)} on path(s) ${registered.map((p) => `${p} (/dev/${r.devs.get(p) ?? '?'}, ` +
      `relative port ${r.viewAtSync.full.find((e) => pathOfSas(e.sasAddress) === p)?.relativePort ?? '?'})`).join(', ')} of ${PATHS}; ` +
      `active path group of mpatha: ${active.join(' ') || '?'}\nL1 view at the sync point:\n${r.viewAtSync.text.trim()}`);
  });
});
