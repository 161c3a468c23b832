// Smoke test of the SAN lab: boots the real storage stack once (LIO + tcm_loop + dm-multipath +
// multipathd in a QEMU TCG guest, lab/lab.sh) and checks the properties later suites rely on: the map
// has one path per tcm_loop target, a registration made through path N is reported by the target as
// relative target port N with SAS TransportID 0x5001405f0000000N (as in the captured samples), and
// multipathd's fail/reinstate show up in `multipathd show paths`; and the driver's own contract
// (separate stdout/stderr/exit status, the share dir, fresh reads of changed host files).
//
// When the lab cannot run here (not root, not Linux, the build fails, PRMUX_LAB=0) every test is
// reported as SKIPPED with the reason. A build that succeeds but a VM that does not boot is a failure.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { LabVm, labSkipReason } from './lab-driver.js';

const PATHS = 2;
const WWID = '360014056001405c0ffee000000000000';

let lab: LabVm | undefined;
let skipReason = 'the lab was not started';

/** One READ FULL STATUS descriptor as sg_persist --in -s prints it. */
interface FullStatusEntry {
  key: bigint;
  relativePort: number;
  sasAddress: bigint;
  holder: boolean;
}

// sg_persist prints one block per descriptor: "Key=0x..", "Relative port address: 0x..",
// "<< Reservation holder >>" or "not reservation holder", "SAS address: 0x..".
function parseFullStatus(text: string): FullStatusEntry[] {
  const entries: FullStatusEntry[] = [];
  let cur: Partial<FullStatusEntry> | undefined;
  const flush = (): void => {
    if (cur === undefined) return;
    assert.ok(cur.key !== undefined && cur.relativePort !== undefined && cur.sasAddress !== undefined,
      `incomplete descriptor in sg_persist output:\n${text}`);
    entries.push({ key: cur.key, relativePort: cur.relativePort, sasAddress: cur.sasAddress, holder: cur.holder ?? false });
  };
  for (const line of text.split('\n')) {
    let m: RegExpMatchArray | null;
    if ((m = /^\s*Key=(0x[0-9a-f]+)/i.exec(line))) {
      flush();
      cur = { key: BigInt(m[1] ?? '') };
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

/** `multipathd show paths raw format '%d %t %T'` → dev → "dm_st chk_st". */
async function pathStates(vm: LabVm): Promise<Map<string, string>> {
  const r = await vm.check(['multipathd', 'show', 'paths', 'raw', 'format', '%d %t %T']);
  const states = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const [dev, dm, chk] = line.trim().split(/\s+/);
    if (dev && dm && chk) states.set(dev, `${dm} ${chk}`);
  }
  return states;
}

/** The sdX behind path n (lab-fault resolves it through the tcm_loop TPG's SCSI address). */
async function devOfPath(vm: LabVm, n: number): Promise<string> {
  const r = await vm.check(['lab-fault', 'dev', String(n)]);
  const dev = r.stdout.trim();
  assert.match(dev, /^sd[a-z]+$/);
  return dev;
}

function needLab(t: TestContext): LabVm | undefined {
  if (lab === undefined) t.skip(skipReason);
  return lab;
}

describe('SAN lab smoke (real LIO + dm-multipath in QEMU TCG)', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    const reason = await labSkipReason();
    if (reason !== null) {
      skipReason = reason;
      return;
    }
    // Its own instance name, so a developer's `lab.sh start` VM is left alone.
    lab = await LabVm.start({ name: `smoke-${process.pid}`, paths: PATHS, lifetimeSec: 1800 });
  }, { timeout: 25 * 60_000 });

  after(async () => {
    await lab?.stop();
  }, { timeout: 3 * 60_000 });

  it('builds one map, mpatha, with one active path per tcm_loop target', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const states = await pathStates(vm);
    assert.equal(states.size, PATHS, `paths: ${JSON.stringify([...states])}`);
    for (const [dev, st] of states) assert.equal(st, 'active ready', `${dev}: ${st}`);
    const ll = await vm.check(['multipath', '-ll']);
    assert.match(ll.stdout, new RegExp(`^mpatha \\(${WWID}\\) dm-\\d+ LIO-ORG,FILEIO`, 'm'));
    assert.equal(ll.stdout.match(/active ready running/g)?.length, PATHS, ll.stdout);
    // Path i is the i-th disk: the order the stage-2 script linked them in.
    for (let n = 1; n <= PATHS; n++) assert.equal(await devOfPath(vm, n), `sd${String.fromCharCode(96 + n)}`);
  });

  it('reports a REGISTER through path N as relative port N with SAS address 0x5001405f0000000N', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const before = parseFullStatus((await vm.check(['sg_persist', '-n', '--in', '-s', '/dev/sda'])).stdout);
    assert.deepEqual(before, [], 'the LU starts with no registrations');
    const keys = [0x5a1a01n, 0x5a1a02n];
    try {
      for (let n = 1; n <= PATHS; n++) {
        const dev = await devOfPath(vm, n);
        await vm.check(['sg_persist', '-n', '--out', '--register', `--param-sark=0x${keys[n - 1]?.toString(16)}`, `/dev/${dev}`]);
      }
      // Read through the last path, so the answer does not come from the nexus that registered first.
      const readDev = await devOfPath(vm, PATHS);
      const status = parseFullStatus((await vm.check(['sg_persist', '-n', '--in', '-s', `/dev/${readDev}`])).stdout);
      const byPort = [...status].sort((a, b) => a.relativePort - b.relativePort);
      assert.deepEqual(byPort, keys.map((key, i) => ({
        key,
        relativePort: i + 1,
        sasAddress: 0x5001405f00000000n + BigInt(i + 1),
        holder: false,
      })));
    } finally {
      // Unregister (REGISTER with the current key and SA key 0) so later tests start clean.
      for (let n = 1; n <= PATHS; n++) {
        const dev = await devOfPath(vm, n);
        await vm.exec(['sg_persist', '-n', '--out', '--register', `--param-rk=0x${keys[n - 1]?.toString(16)}`, '--param-sark=0', `/dev/${dev}`]);
      }
    }
    const cleared = parseFullStatus((await vm.check(['sg_persist', '-n', '--in', '-s', '/dev/sda'])).stdout);
    assert.deepEqual(cleared, []);
  });

  it('shows multipathd fail path / reinstate path in multipathd show paths', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const dev = await devOfPath(vm, 1);
    const other = await devOfPath(vm, 2);
    const failed = await vm.check(['multipathd', 'fail', 'path', dev]);
    assert.equal(failed.stdout.trim(), 'ok');
    try {
      const during = await pathStates(vm);
      assert.equal(during.get(dev)?.split(' ')[0], 'failed', `after fail: ${JSON.stringify([...during])}`);
      assert.equal(during.get(other), 'active ready');
    } finally {
      const reinstated = await vm.check(['multipathd', 'reinstate', 'path', dev]);
      assert.equal(reinstated.stdout.trim(), 'ok');
    }
    // The checker confirms the path on its next round; lab-fault waits for that (bounded).
    await vm.check(['lab-fault', 'wait-paths', String(PATHS), '120']);
    const afterStates = await pathStates(vm);
    assert.equal(afterStates.get(dev), 'active ready');
    assert.equal(afterStates.get(other), 'active ready');
  });

  it('lab-fault: a hot-removed path loses its registration and returns on a new relative port', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const key = 0x5a1a77n;
    const dev1 = await devOfPath(vm, 1);
    const dev2 = await devOfPath(vm, 2);
    await vm.check(['sg_persist', '-n', '--out', '--register', `--param-sark=0x${key.toString(16)}`, `/dev/${dev1}`]);
    await vm.check(['lab-fault', 'unlink-lun', '1']);
    try {
      // LIO drops the registrations of a nexus whose LUN is unlinked (RECIPE.md, "Faults").
      const gone = parseFullStatus((await vm.check(['sg_persist', '-n', '--in', '-s', `/dev/${dev2}`])).stdout);
      assert.deepEqual(gone, []);
      const listing = (await vm.check(['lab-fault', 'paths'])).stdout;
      assert.match(listing, /^1 - \S+ online no naa\.5001405f00000001$/m, listing);
    } finally {
      await vm.check(['lab-fault', 'relink-lun', '1', '120']);
    }
    await vm.check(['lab-fault', 'wait-paths', String(PATHS), '120']);
    const back = await devOfPath(vm, 1);
    await vm.check(['sg_persist', '-n', '--out', '--register', `--param-sark=0x${key.toString(16)}`, `/dev/${back}`]);
    try {
      const status = parseFullStatus((await vm.check(['sg_persist', '-n', '--in', '-s', `/dev/${dev2}`])).stdout);
      assert.equal(status.length, 1, JSON.stringify(status, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v)));
      assert.equal(status[0]?.sasAddress, 0x5001405f00000001n);
      // The relinked LUN is a new target port: LIO numbers it after the existing ones.
      assert.ok((status[0]?.relativePort ?? 0) > PATHS, `relative port ${String(status[0]?.relativePort)}`);
    } finally {
      await vm.exec(['sg_persist', '-n', '--out', '--register', `--param-rk=0x${key.toString(16)}`, '--param-sark=0', `/dev/${back}`]);
    }
  });

  it('lab-fault: transport-offline fails the path in multipathd, transport-online brings it back', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const dev = await devOfPath(vm, 2);
    await vm.check(['lab-fault', 'transport-offline', '2']);
    try {
      assert.match((await vm.check(['lab-fault', 'paths'])).stdout, new RegExp(`^2 ${dev} \\S+ offline yes `, 'm'));
      // The path checker (polling_interval 2) notices on its next round; bounded wait in the guest.
      const waited = await vm.sh(
        `for i in $(seq 120); do multipathd show paths raw format '%d %t' | grep -qx '${dev} failed' && exit 0; sleep 0.5; done; exit 1`);
      assert.equal(waited.code, 0, `path ${dev} never failed: ${(await vm.exec(['multipathd', 'show', 'paths'])).stdout}`);
    } finally {
      await vm.check(['lab-fault', 'transport-online', '2']);
    }
    await vm.check(['lab-fault', 'wait-paths', String(PATHS), '120']);
    assert.equal((await pathStates(vm)).get(dev), 'active ready');
  });

  it('returns the exit status, stdout and stderr of a guest command separately', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const r = await vm.sh('echo to-out; echo to-err >&2; exit 7');
    assert.equal(r.code, 7);
    assert.equal(r.stdout, 'to-out\n');
    assert.equal(r.stderr, 'to-err\n');
    assert.equal(r.timedOut, false);
    const missing = await vm.exec(['lab-no-such-command']);
    assert.equal(missing.code, 127);
  });

  it('exchanges files through the share dir and sees host changes with fresh', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const token = `t${process.pid}-${Date.now()}`;
    await writeFile(join(vm.shareDir, 'in.txt'), `${token}\n`);
    const r = await vm.sh('cat "$LAB_SHARE/in.txt"; echo "back-$(cat "$LAB_SHARE/in.txt")" > "$LAB_SHARE/out.txt"');
    assert.equal(r.stdout, `${token}\n`);
    assert.equal(await readFile(join(vm.shareDir, 'out.txt'), 'utf8'), `back-${token}\n`);
    // A host file outside the share: cached by the guest once read, visible again after a fresh exec.
    const dir = await mkdtemp(join(tmpdir(), 'prmux-lab-'));
    try {
      const file = join(dir, 'f.txt');
      await writeFile(file, 'one\n');
      assert.equal((await vm.check(['cat', file])).stdout, 'one\n');
      await writeFile(file, 'two, longer\n');
      assert.equal((await vm.check(['cat', file], { fresh: true })).stdout, 'two, longer\n');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
