// The multipath fan-out of `prmux serve` on the real stack (issue #6, lab done-criteria): one
// persistent QEMU TCG guest with a real LIO target, three tcm_loop paths (one I_T nexus each),
// dm-multipath and multipathd 0.9.4 (lab/README.md). prmux serves /dev/mapper/mpatha with its default
// fan-out engine (topology from multipathd's abstract socket, KernelPathIo on /dev/sdX, map suspend
// through dm ioctls), and the independent Python client (test/clients/prh_client.py, through the step
// runner guest-scripts/pr-steps.sh) sends the PR commands the way QEMU does. Every claim is checked
// with sg_persist --in -k/-r/-s run directly on EACH path device: the target's own view per nexus
// (path N = SAS 0x5001405f0000000N; relative target port N at boot, a new id after a relink).
//
// Scenarios:
//  1. REGISTER through the map: the key on every path.
//  2. The holder's RESERVE repeated 20 times through the map: prmux answers GOOD every time, Debian's
//     qemu-pr-helper (plain SG_IO on the map: dm-multipath picks a path per ioctl) answers a mix of
//     GOOD and RESERVATION CONFLICT on the same LU state. Note: under Write Exclusive - Registrants
//     Only (type 5) only the nexus that reserved is the holder (SPC-4 5.13.10: every registrant is a
//     holder only for the All Registrants types 7/8), so a registered non-holder nexus repeating the
//     RESERVE gets RESERVATION CONFLICT under type 5 as under type 1 (LIO-BEHAVIOUR.md, "Checked").
//     Both are run: type 5 reserved through the map (the holder is the first path prmux tries), and
//     type 1 held through the LAST path, so prmux must get past two conflicting paths.
//  3. A path removed and added back gets the key back (LUN unlink/relink: LIO drops that nexus's
//     registrations, and the disk returns with a new relative target port). multipathd's
//     fail/reinstate is not such a case: LIO keeps the registration. Timed by
//     guest-scripts/fanout-key-return.sh from the relink and from multipathd showing the path
//     active+ready (reported, never asserted).
//  4. The holder path removed, then RELEASE through prmux:
//     a. LUN unlinked from the holder's TPG. LIO itself releases the reservation when it frees the
//        holder's registration (target_core_device.c core_disable_device_list_for_node →
//        target_core_pr.c core_scsi3_free_pr_reg_from_nacl: "If the passed se_node_acl matches the
//        reservation holder, release the reservation"; SPC has no notion of a LUN unmap), so the target
//        shows no reservation at once; prmux's key guard then finds "reservation-lost" (the guest
//        never released) and reserves again through a remaining path; the guest's RELEASE through the
//        map then releases that one. Afterwards the path is relinked and gets the key back.
//     b. The holder path's transport taken down (tcm_loop transport_status offline) and multipathd's
//        checker showing it faulty: now the target KEEPS the reservation, held by a nexus nobody can
//        reach (mpathpersist 0.9.4 answers RESERVATION CONFLICT here, RECIPE.md). prmux must
//        suspend the map, PREEMPT its own key from a usable path, RELEASE there, re-register and
//        resume; when the transport returns, the path gets the key back.
//
// When the lab cannot run here (not root, not Linux, build failure, PRMUX_LAB=0) every test is
// reported as SKIPPED with the reason. A VM that does not boot is a failure.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PrType, ScsiStatus, ScsiStatusName } from '../../src/scsi/constants.js';
import { repoRoot } from '../support/paths.js';
import { LabVm, labSkipReason } from './lab-driver.js';

const PATHS = 3;
const MAP = '/dev/mapper/mpatha';
/** The prmux build under test: the dist tree this compiled test belongs to (dist/ or dist-<name>/). */
const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli.js');
const CLIENT_DIR = join(repoRoot, 'test', 'clients');
const RUNNER = join(repoRoot, 'test', 'lab', 'guest-scripts', 'pr-steps.sh');
const KEY_RETURN = join(repoRoot, 'test', 'lab', 'guest-scripts', 'fanout-key-return.sh');
const PRMUX = { sock: '/tmp/prmux-fan.sock', pid: '/tmp/prmux-fan.pid', err: '/tmp/prmux-fan.err', rc: '/tmp/prmux-fan.rc', state: '/tmp/prmux-state' };
const PRMUX_OPTIONS = `--state-dir ${PRMUX.state} --topology-interval 500 --verify-interval 2000 -vv`;
const QPRH = { sock: '/tmp/qprh-fan.sock', pid: '/tmp/qprh-fan.pid', out: '/tmp/qprh-fan.out' };
const LOG_MARK = '/tmp/prmux-fan.mark';
const SAS_BASE = 0x5001405f00000000n;
const KEY = 0x6a11n;
const WE = PrType.WRITE_EXCLUSIVE;
const WERO = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
const REPEAT = 20;

let lab: LabVm | undefined;
let skipReason = 'the lab was not started';
/** path number → current /dev/sdX (a relinked path may come back under another name). */
const devOf = new Map<number, string>();
/** path number → relative target port id of its nexus (N at boot; a relinked LUN gets a new one). */
const portOf = new Map<number, number>();
/** Paths whose LUN is linked (all but the one a scenario removed). */
const present = new Set<number>();
/** Timings measured in the guest, gathered for the last test's summary. */
const timings: string[] = [];

function needLab(t: TestContext): LabVm | undefined {
  if (lab === undefined) t.skip(skipReason);
  return lab;
}

function dev(n: number): string {
  const d = devOf.get(n);
  assert.ok(d !== undefined, `no device known for path ${n}`);
  return d;
}

function devs(paths: Iterable<number> = present): string[] {
  return [...paths].sort((a, b) => a - b).map((n) => dev(n));
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

function sh(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---------------------------------------------------------------------------------------------------
// The step runner (guest-scripts/pr-steps.sh, shared with serve.test.ts): one python3 process per batch.

interface PrStep {
  readonly op: 'pr';
  readonly id: string;
  readonly sock: string;
  readonly dev: string;
  readonly action: string;
  readonly key?: bigint;
  readonly saKey?: bigint;
  readonly type?: number;
  readonly check?: boolean;
  readonly paths?: readonly string[];
}
interface ShStep {
  readonly op: 'sh';
  readonly id: string;
  readonly cmd: string;
  readonly timeout?: number;
}
interface CheckStep {
  readonly op: 'check';
  readonly id: string;
  readonly paths?: readonly string[];
}
type Step = PrStep | ShStep | CheckStep;

interface Sense {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
}
interface SgRun {
  readonly rc: number;
  readonly out: string;
  readonly err: string;
  readonly unitAttention: readonly string[];
}
interface StepResult {
  readonly id: string;
  readonly ms: number;
  readonly status?: number;
  readonly sense?: Sense | null;
  readonly decoded?: { readonly keys?: readonly string[]; readonly descriptors?: ReadonlyArray<{ readonly key: string; readonly rtpi: number; readonly transport_id: string }> } | null;
  readonly error?: { readonly kind: string; readonly message: string };
  readonly check?: Record<string, { k: SgRun; r: SgRun; s: SgRun }>;
  readonly rc?: number;
  readonly stdout?: string;
  readonly stderr?: string;
}

class Results {
  constructor(readonly list: readonly StepResult[]) {}
  get(id: string): StepResult {
    const r = this.list.find((x) => x.id === id);
    assert.ok(r !== undefined, `no result for step ${id}`);
    return r;
  }
}

let batchSeq = 0;

async function runSteps(vm: LabVm, steps: readonly Step[], timeoutSec = 180): Promise<Results> {
  const name = `fanout-steps-${++batchSeq}.json`;
  const spec = { paths: devs(), steps };
  await writeFile(join(vm.shareDir, name), JSON.stringify(spec, (_k, v: unknown) => (typeof v === 'bigint' ? hex(v) : v)));
  const r = await vm.exec(['bash', RUNNER, CLIENT_DIR, `${LabVm.guestShareDir}/${name}`], { timeoutSec });
  assert.equal(r.code, 0, `step runner exited ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`);
  const list = r.stdout.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as StepResult);
  assert.equal(list.length, steps.length, `the runner answered ${list.length} of ${steps.length} steps:\n${r.stdout}${r.stderr}`);
  return new Results(list);
}

function shOk(r: StepResult): string {
  assert.equal(r.rc, 0, `${r.id} exited ${String(r.rc)}:\n${r.stdout ?? ''}${r.stderr ?? ''}`);
  return r.stdout ?? '';
}

function answerText(r: StepResult): string {
  if (r.error) return `no answer (${r.error.kind}: ${r.error.message})`;
  const st = ScsiStatusName[r.status ?? -1] ?? `status 0x${(r.status ?? -1).toString(16)}`;
  const s = r.sense;
  return s ? `${st} ${s.key.toString(16)}/${s.asc.toString(16).padStart(2, '0')}/${s.ascq.toString(16).padStart(2, '0')}` : st;
}

function expectGood(r: StepResult): void {
  assert.equal(r.error, undefined, `${r.id}: ${answerText(r)}`);
  assert.equal(r.status, ScsiStatus.GOOD, `${r.id}: got ${answerText(r)}`);
}

// ---------------------------------------------------------------------------------------------------
// sg_persist's view of the LU, per path device.

/** sg_persist's names of the PR types (sg_persist.c), index = TYPE code. */
const SG_TYPE_NAMES = ['obsolete [0]', 'Write Exclusive', 'obsolete [2]', 'Exclusive Access', 'obsolete [4]',
  'Write Exclusive, registrants only', 'Exclusive Access, registrants only', 'Write Exclusive, all registrants',
  'Exclusive Access, all registrants'];

interface Registration {
  readonly path: number;
  readonly key: bigint;
  readonly relativePort: number;
  readonly holder: boolean;
  readonly type: number | null;
}
interface PathView {
  readonly generation: number;
  readonly keys: readonly bigint[];
  readonly reservation: { readonly key: bigint; readonly type: number } | null;
  /** Sorted by path number. */
  readonly full: readonly Registration[];
}

function typeCode(name: string, text: string): number {
  const i = SG_TYPE_NAMES.indexOf(name.trim());
  assert.ok(i > 0, `unknown PR type '${name}' in:\n${text}`);
  return i;
}

function parseReservation(where: string, out: string): PathView['reservation'] {
  const rk = /Key=(0x[0-9a-f]+)\s+scope: (\w+),\s+type: (.+)$/im.exec(out);
  if (rk) return { key: BigInt(rk[1] ?? ''), type: typeCode(rk[3] ?? '', out) };
  assert.match(out, /there is NO reservation held/, `${where}: unexpected sg_persist -r output:\n${out}`);
  return null;
}

function parseView(devName: string, c: { k: SgRun; r: SgRun; s: SgRun }): PathView {
  for (const [flag, run] of Object.entries(c)) {
    assert.equal(run.rc, 0, `sg_persist --in -${flag} ${devName} exited ${run.rc}: ${run.err}${run.out}`);
  }
  const gen = /PR generation=(0x[0-9a-f]+)/i.exec(c.k.out);
  assert.ok(gen?.[1] !== undefined, `no PR generation in:\n${c.k.out}`);
  const keys = [...c.k.out.matchAll(/^\s+(0x[0-9a-f]+)\s*$/gim)].map((m) => BigInt(m[1] ?? ''));
  return { generation: Number(gen[1]), keys, reservation: parseReservation(devName, c.r.out), full: parseFull(devName, c.s.out) };
}

/** sg_persist --in -s: one registration per descriptor, sorted by path number. */
function parseFull(devName: string, out: string): Registration[] {
  const full: Registration[] = [];
  for (const block of out.split(/^(?=\s+Key=)/m).slice(1)) {
    const key = /Key=(0x[0-9a-f]+)/i.exec(block);
    const port = /Relative port address: (0x[0-9a-f]+)/i.exec(block);
    const addr = /SAS address: (0x[0-9a-f]+)/i.exec(block);
    const type = /scope: \w+,\s+type: (.+)$/m.exec(block);
    assert.ok(key && port && addr, `${devName}: incomplete descriptor in sg_persist -s:\n${block}`);
    full.push({
      path: Number(BigInt(addr[1] ?? '') - SAS_BASE),
      key: BigInt(key[1] ?? ''),
      relativePort: Number(port[1]),
      holder: /<< Reservation holder >>/.test(block),
      type: type ? typeCode(type[1] ?? '', block) : null,
    });
  }
  if (full.length === 0) assert.match(out, /No full status descriptors/, `${devName}: unexpected -s output:\n${out}`);
  return full.sort((a, b) => a.path - b.path);
}

function views(r: StepResult): Map<string, PathView> {
  assert.ok(r.check !== undefined, `${r.id}: no cross-check`);
  const out = new Map<string, PathView>();
  for (const [d, c] of Object.entries(r.check)) out.set(d, parseView(d, c));
  return out;
}

function firstView(r: StepResult): PathView {
  const v = views(r).values().next().value;
  assert.ok(v !== undefined, `${r.id}: no path checked`);
  return v;
}

/** "p1:0x6a11@1[R1] p2:0x6a11@4 p3:-" from one path's READ FULL STATUS view. */
function regsText(v: PathView): string {
  const parts: string[] = [];
  for (let n = 1; n <= PATHS; n++) {
    const regs = v.full.filter((f) => f.path === n);
    parts.push(`p${n}:${regs.length === 0 ? '-' : regs.map((f) => `${hex(f.key)}@${f.relativePort}${f.holder ? `[R${f.type ?? '?'}]` : ''}`).join(',')}`);
  }
  return parts.join(' ');
}

interface Expected {
  /** Paths registered with KEY (each with its current relative port). */
  readonly paths: readonly number[];
  /** The holder path and the type, or null for no reservation. */
  readonly res: { readonly path: number; readonly type: number } | null;
}

/** What sg_persist on EACH checked path reports after step r. */
function assertState(r: StepResult, exp: Expected): void {
  const all = views(r);
  assert.ok(all.size > 0, `${r.id}: no path checked`);
  for (const [d, v] of all) {
    const where = `after ${r.id}, sg_persist on ${d} (${regsText(v)})`;
    assert.deepEqual(v.keys, exp.paths.map(() => KEY), `${where}: READ KEYS`);
    assert.deepEqual(v.reservation, exp.res === null ? null : { key: KEY, type: exp.res.type }, `${where}: READ RESERVATION`);
    const want = [...exp.paths].sort((a, b) => a - b).map((n) => ({
      path: n,
      key: KEY,
      relativePort: portOf.get(n) ?? -1,
      holder: exp.res?.path === n,
      type: exp.res?.path === n ? exp.res.type : null,
    }));
    assert.deepEqual(v.full, want, `${where}: READ FULL STATUS`);
  }
}

/** The holder path in one view (there must be exactly one holder). */
function holderOf(r: StepResult): number {
  const hs = firstView(r).full.filter((f) => f.holder);
  assert.equal(hs.length, 1, `${r.id}: holders ${regsText(firstView(r))}`);
  return hs[0]?.path ?? 0;
}

// ---------------------------------------------------------------------------------------------------
// Guest-side helpers.

function startPrmuxScript(): string {
  const run = `${sh(process.execPath)} ${sh(CLI)} serve -k ${PRMUX.sock} -f ${PRMUX.pid} ${PRMUX_OPTIONS} 2>${PRMUX.err}; echo $? >${PRMUX.rc}`;
  // No systemd in the guest: a new session, detached from the request's process group.
  return `rm -rf ${PRMUX.state}; rm -f ${PRMUX.sock} ${PRMUX.pid} ${PRMUX.err} ${PRMUX.rc}
setsid bash -c ${sh(run)} </dev/null >/dev/null 2>&1 &
for i in $(seq 900); do
  [ -S ${PRMUX.sock} ] && [ -s ${PRMUX.pid} ] && exit 0
  [ -e ${PRMUX.rc} ] && break
  sleep 0.1
done
echo "prmux serve did not come up (exit $(cat ${PRMUX.rc} 2>/dev/null))"; cat ${PRMUX.err}; exit 1`;
}

const startQprhScript = `rm -f ${QPRH.sock} ${QPRH.pid}
setsid qemu-pr-helper -k ${QPRH.sock} -f ${QPRH.pid} </dev/null >${QPRH.out} 2>&1 &
for i in $(seq 300); do [ -S ${QPRH.sock} ] && exit 0; sleep 0.1; done
echo 'qemu-pr-helper did not come up'; cat ${QPRH.out}; exit 1`;

/** Remember where prmux's log ends now (logSince reads what came after). */
const markLog = `wc -l < ${PRMUX.err} > ${LOG_MARK}`;

/** prmux's log lines since markLog, without the topology polling noise, matching an ERE. */
function logSince(ere: string): string {
  return `tail -n +$(( $(cat ${LOG_MARK}) + 1 )) ${PRMUX.err} | grep -v 'multipathd command' | grep -E ${sh(ere)} || true`;
}

/** Path commands of prmux's fan-out since markLog, counted: "  19 path=sda ... outcome=...". */
function pathCommandsSince(command: string): string {
  return `tail -n +$(( $(cat ${LOG_MARK}) + 1 )) ${PRMUX.err} | grep 'fanout: path command' | grep -F ${sh(`command="${command}"`)} \
| sed -E 's/.* (path=[^ ]+) (role=[^ ]+) .*(outcome="[^"]*").*/\\1 \\2 \\3/' | sort | uniq -c || true`;
}

async function resolveDevs(vm: LabVm): Promise<void> {
  const r = await vm.check(['bash', '-c', `for n in $(seq ${PATHS}); do echo "$n $(lab-fault dev $n)"; done`]);
  for (const line of r.stdout.trim().split('\n')) {
    const [n, d] = line.split(' ');
    assert.match(d ?? '', /^sd[a-z]+$/, r.stdout);
    devOf.set(Number(n), `/dev/${d ?? ''}`);
  }
}

interface KeyReturn {
  readonly action: string;
  readonly path: number;
  readonly dev: string | null;
  readonly diskMs: number | null;
  readonly activeMs: number | null;
  readonly keyMs: number | null;
  readonly rtpi: number | null;
  readonly states: ReadonlyArray<readonly [number, string]>;
  readonly probeErrors: ReadonlyArray<readonly [number, string]>;
  readonly polls: number;
  readonly timedOut: boolean;
}

/**
 * Bring path n back (relink its LUN, or its transport online) and wait until its nexus has KEY again,
 * probing READ FULL STATUS through qemu-pr-helper on a path that stayed up.
 */
async function bringBack(vm: LabVm, action: 'relink' | 'transport-online', n: number, probe: number): Promise<KeyReturn> {
  const r = await vm.exec(['bash', KEY_RETURN, CLIENT_DIR, action, String(n), hex(KEY), QPRH.sock, dev(probe), '60'], { timeoutSec: 120 });
  assert.equal(r.code, 0, `fanout-key-return.sh exited ${r.code}\n${r.stdout}${r.stderr}`);
  const kr = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as KeyReturn;
  assert.ok(kr.dev !== null, `path ${n}: no disk after ${action}: ${r.stdout}`);
  assert.equal(kr.timedOut, false, `path ${n} after ${action}: key ${hex(KEY)} not registered on its nexus within 60 s: ${r.stdout}`);
  assert.ok(kr.keyMs !== null && kr.rtpi !== null, r.stdout);
  devOf.set(n, `/dev/${kr.dev}`);
  portOf.set(n, kr.rtpi);
  present.add(n);
  const fromActive = kr.activeMs !== null ? `${kr.keyMs - kr.activeMs} ms after multipathd showed it active+ready (at ${kr.activeMs} ms)` : 'multipathd never showed it active+ready';
  timings.push(`path ${n} ${action} → key on its nexus: ${kr.keyMs} ms after the ${action}, ${fromActive}; disk ${kr.dev} at ${kr.diskMs} ms; ` +
    `relative port ${kr.rtpi}; multipathd states ${JSON.stringify(kr.states)}; ${kr.polls} polls`);
  return kr;
}

describe('prmux serve fan-out on the SAN lab (real LIO + dm-multipath, 3 paths)', { timeout: 20 * 60_000 }, () => {
  before(async () => {
    const reason = await labSkipReason();
    if (reason !== null) {
      skipReason = reason;
      return;
    }
    const vm = await LabVm.start({ name: `labfan-${process.pid}`, paths: PATHS, lifetimeSec: 1500, idleTimeoutSec: 300 });
    lab = vm;
    try {
      await resolveDevs(vm);
      for (let n = 1; n <= PATHS; n++) {
        portOf.set(n, n);
        present.add(n);
      }
      // fresh: this build's dist files may have changed since the guest (9p cache=loose) last read them.
      await vm.check(['bash', '-c', startPrmuxScript()], { fresh: true, timeoutSec: 180 });
      await vm.check(['bash', '-c', startQprhScript]);
    } catch (e) {
      await vm.stop();
      throw e;
    }
  }, { timeout: 15 * 60_000 });

  after(async () => {
    await lab?.stop();
  }, { timeout: 3 * 60_000 });

  it('REGISTER through the map: sg_persist -s on each path shows the key on every path (ports 1..N, SAS ...01..0N)', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const res = await runSteps(vm, [
      { op: 'check', id: 'baseline' },
      { op: 'pr', id: 'register', sock: PRMUX.sock, dev: MAP, action: 'register', saKey: KEY, check: true },
      { op: 'pr', id: 'read-keys', sock: PRMUX.sock, dev: MAP, action: 'read-keys' },
      { op: 'pr', id: 'read-full-status', sock: PRMUX.sock, dev: MAP, action: 'read-full-status' },
      { op: 'sh', id: 'log', cmd: `grep -E 'REGISTER|reservation key' ${PRMUX.err} | grep -v 'multipathd command' || true` },
    ]);
    const base = firstView(res.get('baseline'));
    assert.deepEqual([base.keys, base.reservation, base.full], [[], null, []], 'the LU starts empty');
    expectGood(res.get('register'));
    const all = [1, 2, 3];
    assertState(res.get('register'), { paths: all, res: null });
    // One REGISTER per nexus, each bumping PRGENERATION (LIO-BEHAVIOUR.md 3).
    for (const v of views(res.get('register')).values()) assert.equal(v.generation, base.generation + PATHS);
    expectGood(res.get('read-keys'));
    assert.deepEqual(res.get('read-keys').decoded?.keys, all.map(() => hex(KEY)));
    expectGood(res.get('read-full-status'));
    // One descriptor per nexus, in the order the parallel REGISTERs reached the target.
    const descriptors = res.get('read-full-status').decoded?.descriptors?.map((d) => [d.key, d.rtpi, d.transport_id.slice(0, 24)]) ?? [];
    assert.deepEqual([...descriptors].sort((a, b) => Number(a[1]) - Number(b[1])),
      all.map((n) => [hex(KEY), n, `06000000${(SAS_BASE + BigInt(n)).toString(16)}`]));
    t.diagnostic(`REGISTER ${hex(KEY)} through ${MAP}; ` +
      `sg_persist -s per path: ${[...views(res.get('register'))].map(([d, v]) => `${d}: ${regsText(v)}`).join('; ')}\n` +
      `prmux log:\n${res.get('log').stdout ?? ''}`);
  });

  it(`the holder's RESERVE ${REPEAT} times through the map: prmux GOOD every time, qemu-pr-helper a mix`, async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const repeat = (tag: string, sock: string, type: number): Step[] =>
      Array.from({ length: REPEAT }, (_v, i): Step => ({ op: 'pr', id: `${tag}-${i}`, sock, dev: MAP, action: 'reserve', key: KEY, type }));
    const steps: Step[] = [
      // A. Type 5 reserved through the map: the holder is the nexus prmux sent it to.
      { op: 'pr', id: 'reserve-5', sock: PRMUX.sock, dev: MAP, action: 'reserve', key: KEY, type: WERO, check: true },
      { op: 'sh', id: 'mark-5', cmd: markLog },
      ...repeat('prmux-5', PRMUX.sock, WERO),
      { op: 'sh', id: 'log-5', cmd: pathCommandsSince('PR OUT RESERVE') },
      ...repeat('qprh-5', QPRH.sock, WERO),
      { op: 'check', id: 'after-5' },
      { op: 'pr', id: 'release-5', sock: PRMUX.sock, dev: MAP, action: 'release', key: KEY, type: WERO, check: true },
      // B. Type 1 held through path 3's nexus (prmux on path 3's own device: one plain SG_IO there), so
      //    the map's first two paths are registered non-holders.
      { op: 'pr', id: 'reserve-1-p3', sock: PRMUX.sock, dev: dev(3), action: 'reserve', key: KEY, type: WE, check: true },
      { op: 'sh', id: 'mark-1', cmd: markLog },
      ...repeat('prmux-1', PRMUX.sock, WE),
      { op: 'sh', id: 'log-1', cmd: pathCommandsSince('PR OUT RESERVE') },
      ...repeat('qprh-1', QPRH.sock, WE),
      { op: 'check', id: 'after-1' },
      { op: 'pr', id: 'release-1', sock: PRMUX.sock, dev: MAP, action: 'release', key: KEY, type: WE, check: true },
    ];
    const res = await runSteps(vm, steps);
    const all = [1, 2, 3];
    const notes: string[] = [];
    for (const [tag, type, reserveId] of [['5', WERO, 'reserve-5'], ['1', WE, 'reserve-1-p3']] as const) {
      expectGood(res.get(reserveId));
      const holder = holderOf(res.get(reserveId));
      if (tag === '1') assert.equal(holder, 3);
      assertState(res.get(reserveId), { paths: all, res: { path: holder, type } });
      // prmux: every RESERVE from the holder through the map is GOOD, whichever path dm would pick.
      const mine = Array.from({ length: REPEAT }, (_v, i) => res.get(`prmux-${tag}-${i}`));
      for (const r of mine) expectGood(r);
      // qemu-pr-helper: plain SG_IO on the map. dm-multipath hands each ioctl to the path its
      // selector picks: the holder's nexus answers GOOD, the two registered non-holders RESERVATION
      // CONFLICT (the LU state is identical for both helpers: key on every path, same holder).
      const theirs = Array.from({ length: REPEAT }, (_v, i) => res.get(`qprh-${tag}-${i}`));
      for (const r of theirs) {
        assert.equal(r.error, undefined, `${r.id}: ${answerText(r)}`);
        assert.ok(r.status === ScsiStatus.GOOD || r.status === ScsiStatus.RESERVATION_CONFLICT, `${r.id}: ${answerText(r)}`);
      }
      const conflicts = theirs.filter((r) => r.status === ScsiStatus.RESERVATION_CONFLICT).length;
      assert.ok(conflicts > 0, `qemu-pr-helper answered GOOD to all ${REPEAT} RESERVEs on the map: dm-multipath sent every ioctl down the holder's path`);
      // Nothing changed at the target: same holder, same type, key on every path.
      assertState(res.get(`after-${tag}`), { paths: all, res: { path: holder, type } });
      expectGood(res.get(`release-${tag}`));
      assertState(res.get(`release-${tag}`), { paths: all, res: null });
      notes.push(`type ${type} held through path ${holder} (${dev(holder)}): prmux ${mine.filter((r) => r.status === ScsiStatus.GOOD).length} GOOD / ${REPEAT} ` +
        `(client ms: ${mine.map((r) => r.ms).join(',')}); qemu-pr-helper ${REPEAT - conflicts} GOOD + ${conflicts} RESERVATION CONFLICT ` +
        `(${theirs.map((r) => (r.status === ScsiStatus.GOOD ? 'G' : 'C')).join('')})\n` +
        `  prmux's path commands for those ${REPEAT} RESERVEs (from -vv):\n${(shOk(res.get(`log-${tag}`)) || '(none logged)\n').replace(/^/gm, '    ')}`);
    }
    t.diagnostic(notes.join('\n'));
  });

  it('a path removed and added back gets the key back (LUN unlink + relink; timed)', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const N = 2;
    const old = dev(N);
    present.delete(N);
    const res = await runSteps(vm, [
      { op: 'sh', id: 'mark', cmd: markLog },
      { op: 'sh', id: 'unlink', cmd: `lab-fault unlink-lun ${N} && lab-fault wait-paths ${PATHS - 1} 60 && ! test -e ${old} && echo gone` },
      { op: 'check', id: 'unlinked' },
    ]);
    assert.match(shOk(res.get('unlink')), /^gone$/m);
    // LIO dropped path 2's registration; the others keep theirs.
    assertState(res.get('unlinked'), { paths: [1, 3], res: null });
    const kr = await bringBack(vm, 'relink', N, 1);
    // A new relative target port id for the relinked LUN (LIO numbers target ports afresh).
    assert.notEqual(kr.rtpi, N, `relinked path ${N} kept relative port ${N}`);
    const after1 = await runSteps(vm, [
      { op: 'check', id: 'relinked' },
      { op: 'sh', id: 'log', cmd: logSince('returning path|path up|path down|drift|repaired|left the topology') },
    ]);
    assertState(after1.get('relinked'), { paths: [1, 2, 3], res: null });
    t.diagnostic(`${timings[timings.length - 1] ?? ''}\nsg_persist -s per path after: ${[...views(after1.get('relinked'))].map(([d, v]) => `${d}: ${regsText(v)}`).join('; ')}\n` +
      `prmux log:\n${after1.get('log').stdout ?? ''}`);
  });

  it('the holder path removed (LUN unlinked from its TPG), then RELEASE through prmux: released, every remaining path keeps the key', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r1 = await runSteps(vm, [
      { op: 'pr', id: 'reserve', sock: PRMUX.sock, dev: MAP, action: 'reserve', key: KEY, type: WE, check: true },
    ]);
    expectGood(r1.get('reserve'));
    const H = holderOf(r1.get('reserve'));
    assertState(r1.get('reserve'), { paths: [1, 2, 3], res: { path: H, type: WE } });
    const rest = [1, 2, 3].filter((n) => n !== H);
    const probe = dev(rest[0] ?? 0);
    present.delete(H);
    const res = await runSteps(vm, [
      { op: 'sh', id: 'mark', cmd: markLog },
      // The target's view right after the unlink, before anything else runs.
      { op: 'sh', id: 'unlink', cmd: `lab-fault unlink-lun ${H} && { sg_persist -n --in -s ${probe} 2>/dev/null || sg_persist -n --in -s ${probe}; }` },
      { op: 'sh', id: 'wait-paths', cmd: `lab-fault wait-paths ${PATHS - 1} 60` },
      // prmux's key guard finds the reservation gone although the guest never released it
      // (reservation-lost) and reserves again through a remaining path (verify every 2 s here).
      { op: 'sh', id: 'repaired', cmd: `for i in $(seq 150); do o=$(sg_persist -n --in -r ${probe} 2>&1); case $o in *Key=*) echo "$o"; exit 0;; esac; sleep 0.1; done; echo "$o"; exit 1` },
      { op: 'check', id: 'before-release' },
      { op: 'pr', id: 'release', sock: PRMUX.sock, dev: MAP, action: 'release', key: KEY, type: WE, check: true },
      { op: 'sh', id: 'log', cmd: logSince('drift|repaired|holding the reservation|suspended|resumed|path (up|down)|left the topology|serviceAction=2 ') },
    ]);
    // sg_persist -s right after the unlink: the holder descriptor, if any.
    const sOut = shOk(res.get('unlink'));
    const immediately = parseFull(probe, sOut).find((f) => f.holder);
    shOk(res.get('wait-paths'));
    const log = res.get('log').stdout ?? '';
    // LIO releases the reservation with the holder's registration: no holder, or (when prmux's 2 s
    // verification ran between the unlink and this sg_persist) our key already holding it again
    // through a remaining path.
    assert.ok(immediately === undefined || (immediately.key === KEY && immediately.type === WE && rest.includes(immediately.path)), `right after the unlink:\n${sOut}`);
    shOk(res.get('repaired'));
    assert.match(log, /reservation-lost/, `prmux did not report the lost reservation:\n${log}`);
    const retaken = holderOf(res.get('before-release'));
    assert.ok(rest.includes(retaken), `re-reserved through path ${retaken}`);
    assertState(res.get('before-release'), { paths: rest, res: { path: retaken, type: WE } });
    expectGood(res.get('release'));
    assertState(res.get('release'), { paths: rest, res: null });
    t.diagnostic(`holder path ${H} (${dev(H)}) unlinked; sg_persist -s on ${probe} right after: ${immediately === undefined ? 'NO reservation (LIO released it with the registration)' : `already held again by ${hex(immediately.key)} type ${String(immediately.type)} through path ${immediately.path} (prmux's verification was quicker than sg_persist)`}; ` +
      `prmux re-reserved through path ${retaken}; RELEASE through the map: ${answerText(res.get('release'))}; after: ${regsText(firstView(res.get('release')))}\nprmux log:\n${log}`);
    // Back to three paths for the next scenario: the relinked path gets the key back.
    await bringBack(vm, 'relink', H, rest[0] ?? 0);
    const r3 = await runSteps(vm, [{ op: 'check', id: 'back' }]);
    assertState(r3.get('back'), { paths: [1, 2, 3], res: null });
  });

  it('the holder path unreachable (transport down, multipathd: faulty), then RELEASE through prmux: moved and released, the path gets the key back', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r1 = await runSteps(vm, [
      { op: 'pr', id: 'reserve', sock: PRMUX.sock, dev: MAP, action: 'reserve', key: KEY, type: WE, check: true },
    ]);
    expectGood(r1.get('reserve'));
    const H = holderOf(r1.get('reserve'));
    assertState(r1.get('reserve'), { paths: [1, 2, 3], res: { path: H, type: WE } });
    const rest = [1, 2, 3].filter((n) => n !== H);
    present.delete(H);
    const res = await runSteps(vm, [
      { op: 'sh', id: 'offline', cmd: `lab-fault transport-offline ${H} && lab-fault wait-paths ${PATHS - 1} 60 && multipathd show paths raw format '%d %t %T'` },
      // The target keeps the reservation and every registration: the holder nexus is merely unreachable.
      { op: 'check', id: 'offline-view' },
      { op: 'sh', id: 'mark', cmd: markLog },
      { op: 'pr', id: 'release', sock: PRMUX.sock, dev: MAP, action: 'release', key: KEY, type: WE, check: true },
      { op: 'sh', id: 'dm', cmd: 'dmsetup info -c --noheadings -o name,attr mpatha' },
      { op: 'sh', id: 'log', cmd: logSince('holding the reservation|suspended|resumed|preempt|PREEMPT|RELEASE|re-register|pending|some paths|serviceAction=2 ') },
    ]);
    const mp = shOk(res.get('offline'));
    // prmux goes by the checker state (topology.ts): anything but ready/ghost is not usable.
    assert.match(mp, new RegExp(`^${dev(H).slice(5)} \\S+ (?!ready$|ghost$)\\S+$`, 'm'), mp);
    assertState(res.get('offline-view'), { paths: [1, 2, 3], res: { path: H, type: WE } });
    expectGood(res.get('release'));
    // Released; the PREEMPT of our own key removed the unreachable holder's registration; the usable
    // paths have the key; the map was resumed (attr "L--w": live, not suspended).
    assertState(res.get('release'), { paths: rest, res: null });
    const dm = shOk(res.get('dm'));
    assert.match(dm, /^mpatha:L-{2}w/m, `map state after the RELEASE: ${dm}`);
    const log = res.get('log').stdout ?? '';
    assert.match(log, /suspended map/, log);
    assert.match(log, /resumed map/, log);
    t.diagnostic(`holder path ${H} (${dev(H)}) transport offline, multipathd: ${mp.trim().replace(/\n/g, ', ')}; RELEASE through the map: ` +
      `${answerText(res.get('release'))}; after: ${regsText(firstView(res.get('release')))}; dm: ${dm.trim()}\nprmux log:\n${log}`);
    const portBefore = portOf.get(H);
    const kr = await bringBack(vm, 'transport-online', H, rest[0] ?? 0);
    // Same disk, same target port: only the transport came back.
    assert.equal(kr.rtpi, portBefore);
    const r3 = await runSteps(vm, [{ op: 'check', id: 'back' }]);
    assertState(r3.get('back'), { paths: [1, 2, 3], res: null });
    const summary = await vm.exec(['bash', '-c', `grep -E ': (info|warn|error):' ${PRMUX.err} | grep -v 'multipathd command' | sort | uniq -c | sort -rn | head -40`]);
    t.diagnostic(`key return timings (guest clock):\n${timings.join('\n')}\nprmux info/warn/error lines over the whole run (counted):\n${summary.stdout}`);
  });
});
