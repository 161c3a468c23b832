// The fan-out's kernel seams on the real stack of the SAN lab (LIO + tcm_loop + dm-multipath +
// multipathd 0.9.4 in a QEMU TCG guest): KernelMapControl suspends and resumes mpatha with
// DM_DEV_SUSPEND (dmsetup info must show SUSPENDED, then ACTIVE), MultipathTopology reads the map
// from multipathd's abstract socket and, with multipathd unreachable, from sysfs, and KernelPathIo
// runs PR commands down each path device (a REGISTER through path 1 shows in READ FULL STATUS as
// path 1's nexus). The guest runs the host's node on the compiled modules of the dist folder this
// file was compiled into.
//
// When the lab cannot run here (not root, not Linux, the build fails, PRMUX_LAB=0) every test is
// reported as SKIPPED with the reason (as in lab-smoke.test.ts).
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it, type TestContext } from 'node:test';
import { LabVm, labSkipReason, type ExecResult } from './lab-driver.js';

const PATHS = 2;
const WWID = '360014056001405c0ffee000000000000';
/** The dist folder holding this compiled file (dist/ or an engineer's own). */
const distRoot = fileURLToPath(new URL('../../', import.meta.url));
const mod = (rel: string): string => JSON.stringify(new URL(`../../src/${rel}`, import.meta.url).href);

let lab: LabVm | undefined;
let skipReason = 'the lab was not started';

function needLab(t: TestContext): LabVm | undefined {
  if (lab === undefined) t.skip(skipReason);
  return lab;
}

/** Run an ES module body with node in the guest; its stdout is the result. */
function node(vm: LabVm, body: string, fresh = false): Promise<ExecResult> {
  return vm.exec([process.execPath, '--input-type=module', '-e', body], { timeoutSec: 180, fresh, cwd: distRoot });
}

async function checkNode(vm: LabVm, body: string, fresh = false): Promise<string> {
  const r = await node(vm, body, fresh);
  assert.equal(r.code, 0, `guest node exited ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`);
  return r.stdout;
}

async function dmState(vm: LabVm): Promise<string> {
  const r = await vm.check(['dmsetup', 'info', 'mpatha']);
  const m = /^State:\s+(\S+)/m.exec(r.stdout);
  assert.ok(m, r.stdout);
  return m[1]!;
}

describe('fan-out kernel seams in the SAN lab', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    const reason = await labSkipReason();
    if (reason !== null) {
      skipReason = reason;
      return;
    }
    lab = await LabVm.start({ name: `fanout-${process.pid}`, paths: PATHS, lifetimeSec: 1800 });
  }, { timeout: 25 * 60_000 });

  after(async () => {
    await lab?.stop();
  }, { timeout: 3 * 60_000 });

  it('KernelMapControl suspends mpatha without flushing and resumes it', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    assert.equal(await dmState(vm), 'ACTIVE');
    const run = (verb: 'suspend' | 'resume', name: string): string => `
      import { KernelMapControl } from ${mod('fanout/map-control.js')};
      const mc = new KernelMapControl();
      try { await mc.${verb}({ name: ${JSON.stringify(name)}, wwid: '', devT: '', paths: [], source: 'sysfs' }); console.log('ok'); }
      finally { await mc.close(); }`;
    try {
      assert.equal((await checkNode(vm, run('suspend', 'mpatha'), true)).trim(), 'ok');
      assert.equal(await dmState(vm), 'SUSPENDED');
      assert.equal((await checkNode(vm, run('resume', 'mpatha'))).trim(), 'ok');
      assert.equal(await dmState(vm), 'ACTIVE');
      // A name dm does not know: the kernel's ENXIO, as a DEVICE error.
      const missing = await node(vm, run('suspend', 'nosuchmap'));
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /ERR_PRMUX_DEVICE|ENXIO/);
    } finally {
      if ((await dmState(vm)) !== 'ACTIVE') await vm.exec(['dmsetup', 'resume', 'mpatha']);
    }
  });

  type View = {
    source: string;
    events: string[];
    reasons: string[];
    maps: { name: string; wwid: string; devT: string; source: string; paths: { dev: string; devT: string; hcil: { host: number }; checkerState: string; deviceState?: string; usable: boolean }[] }[];
  };
  /** One refresh in the guest: the view, the events and the reasons of source changes. */
  async function guestView(vm: LabVm, sockets: string | null): Promise<View> {
    return JSON.parse(
      await checkNode(
        vm,
        `
      import { MultipathTopology } from ${mod('fanout/topology.js')};
      const events = [];
      const reasons = [];
      const topo = new MultipathTopology(${sockets === null ? '{}' : `{ sockets: ${JSON.stringify(sockets)} }`});
      topo.onEvent((e) => { events.push(e.kind === 'source-changed' ? e.kind + ':' + e.source : e.kind); if (e.kind === 'source-changed') reasons.push(e.reason); });
      const maps = await topo.refresh();
      topo.close();
      console.log(JSON.stringify({ source: topo.source, events, reasons, maps }));`,
        true,
      ),
    ) as View;
  }
  const dmDevT = async (vm: LabVm): Promise<string> => (await vm.check(['bash', '-c', 'cat /sys/block/$(basename $(readlink -f /dev/mapper/mpatha))/dev'])).stdout.trim();

  it('MultipathTopology reads mpatha from sysfs when multipathd is unreachable', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const v = await guestView(vm, '@/prmux/no-such-multipathd');
    assert.equal(v.source, 'sysfs');
    assert.deepEqual(v.events, ['source-changed:sysfs', 'map-added']);
    assert.match(v.reasons[0] ?? '', /multipathd unreachable/);
    const m = v.maps[0]!;
    assert.deepEqual([m.name, m.wwid, m.devT, m.source], ['mpatha', WWID, await dmDevT(vm), 'sysfs']);
    assert.deepEqual(m.paths.map((p) => [p.dev, p.deviceState, p.usable]), [['sda', 'running', true], ['sdb', 'running', true]]);
    assert.deepEqual(m.paths.map((p) => p.devT), ['8:0', '8:16']);
    assert.notEqual(m.paths[0]!.hcil.host, m.paths[1]!.hcil.host, 'one SCSI host per tcm_loop target');
  });

  // multipathd 0.9.4 listens on the abstract socket only, bound with the name's exact length. Node
  // 20's net would connect with the whole 108-byte sun_path (another name: ECONNREFUSED), so
  // MultipathdClient connects abstract names itself (unix-fd.ts connectUnixAbstract).
  it('MultipathTopology reads mpatha from multipathd over its abstract socket, as sysfs shows it', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const v = await guestView(vm, null);
    assert.equal(v.source, 'multipathd', v.reasons.join('\n'));
    assert.deepEqual(v.events, ['source-changed:multipathd', 'map-added']);
    const m = v.maps[0]!;
    assert.deepEqual([m.name, m.wwid, m.devT, m.source], ['mpatha', WWID, await dmDevT(vm), 'multipathd']);
    assert.deepEqual(m.paths.map((p) => [p.dev, p.checkerState, p.deviceState, p.usable]), [['sda', 'ready', 'running', true], ['sdb', 'ready', 'running', true]]);
    const s = (await guestView(vm, '@/prmux/no-such-multipathd')).maps[0]!;
    assert.deepEqual(m.paths.map((p) => [p.dev, p.devT, p.hcil]), s.paths.map((p) => [p.dev, p.devT, p.hcil]));
  });

  it('MultipathTopology builds mpatha from multipathd 0.9.4\'s own replies and announces keys to it (commands through the multipathd CLI)', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    // multipathd 0.9.4 keeps a key given by setprkey only for maps whose reservation_key is "file"
    // (the setting under which it registers keys on returning paths, RECIPE.md); the lab's
    // multipath.conf has none, so add it for this test.
    await vm.check(['bash', '-c', "grep -q reservation_key /etc/multipath.conf || sed -i 's/^defaults {/defaults {\\n\\treservation_key file/' /etc/multipath.conf; multipathd reconfigure; for i in $(seq 90); do [ \"$(multipathd show paths raw format '%d %t %T' 2>/dev/null | grep -c 'active ready')\" = 2 ] && exit 0; sleep 1; done; exit 1"], { timeoutSec: 180 });
    // The same command lines MultipathdClient sends, carried by "multipathd -k<command>" (sent verbatim):
    // this checks the reply formats and parsers against the real daemon without the abstract socket.
    const out = await checkNode(
      vm,
      `
      import { execFileSync } from 'node:child_process';
      import { MultipathTopology } from ${mod('fanout/topology.js')};
      import { parseMapsJson, parsePathsRaw, PRMUX_SHOW_PATHS_COMMAND } from ${mod('mpath/multipathd-parse.js')};
      const ask = (cmd) => execFileSync('multipathd', ['-k' + cmd], { encoding: 'utf8' });
      const transcript = [];
      const ok = (cmd) => { const r = ask(cmd); transcript.push(cmd + ' -> ' + r.trim()); if (!r.startsWith('ok')) throw new Error(cmd + ': ' + r); };
      const topo = new MultipathTopology({ createClient: () => ({
        showMapsJson: async () => parseMapsJson(ask('show maps json')),
        showPaths: async () => parsePathsRaw(ask(PRMUX_SHOW_PATHS_COMMAND)),
        setPrKey: async (m, k) => ok('setprkey map ' + m + ' key 0x' + k.toString(16)),
        unsetPrKey: async (m) => ok('unsetprkey map ' + m),
        setPrStatus: async (m) => ok('setprstatus map ' + m),
        unsetPrStatus: async (m) => ok('unsetprstatus map ' + m),
        close: async () => {},
      }) });
      const map = await topo.find({ name: 'mpatha' }, true);
      const source = topo.source;
      await topo.announceKey(map, 0xfa50n);
      const announced = [ask('getprkey map mpatha'), ask('getprstatus map mpatha')];
      await topo.announceKey(map, null);
      const withdrawn = [ask('getprkey map mpatha'), ask('getprstatus map mpatha')];
      topo.close();
      console.log(JSON.stringify({ source, map, announced, withdrawn, transcript }));`,
      true,
    );
    const r = JSON.parse(out) as { source: string; map: View['maps'][number]; announced: string[]; withdrawn: string[]; transcript: string[] };
    assert.equal(r.source, 'multipathd');
    assert.deepEqual([r.map.name, r.map.wwid, r.map.devT, r.map.source], ['mpatha', WWID, await dmDevT(vm), 'multipathd']);
    assert.deepEqual(r.map.paths.map((p) => [p.dev, p.devT, p.checkerState, p.deviceState, p.usable]), [['sda', '8:0', 'ready', 'running', true], ['sdb', '8:16', 'ready', 'running', true]]);
    const s = (await guestView(vm, '@/prmux/no-such-multipathd')).maps[0]!;
    assert.deepEqual(r.map.paths.map((p) => p.hcil), s.paths.map((p) => p.hcil), 'multipathd and sysfs agree on H:C:T:L');
    assert.deepEqual(r.transcript, ['setprkey map mpatha key 0xfa50 -> ok', 'setprstatus map mpatha -> ok', 'unsetprstatus map mpatha -> ok', 'unsetprkey map mpatha -> ok']);
    assert.equal(r.announced[0]!.trim(), '0xfa50');
    assert.match(r.announced[1]!, /^(1|set)/);
    assert.equal(r.withdrawn[0]!.trim(), 'none');
    assert.match(r.withdrawn[1]!, /^(0|unset)/);
  });

  it('KernelPathIo: a REGISTER through path 1 is path 1\'s nexus in READ FULL STATUS read through path 2', async (t) => {
    const vm = needLab(t);
    if (!vm) return;
    const out = await checkNode(vm, `
      import { MultipathTopology } from ${mod('fanout/topology.js')};
      import { KernelPathIo } from ${mod('fanout/path-io.js')};
      import { encodePrInCdb, encodePrOutCdb } from ${mod('scsi/cdb.js')};
      import { encodePrOutParams } from ${mod('scsi/prout-params.js')};
      import { decodeReadFullStatus } from ${mod('scsi/prin-data.js')};
      import { formatTransportId } from ${mod('scsi/transport-id.js')};
      const topo = new MultipathTopology();
      const map = await topo.find({ name: 'mpatha' }, true);
      topo.close();
      const io = new KernelPathIo();
      const reg = (old, key) => encodePrOutParams({ key: old, serviceActionKey: key, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
      const REGISTER = encodePrOutCdb({ serviceAction: 0, parameterListLength: 24 });
      const r1 = await io.exec(map, 'sda', REGISTER, reg(0n, 0xfa40n), 0, 10000);
      const full = await io.exec(map, 'sdb', encodePrInCdb({ serviceAction: 3, allocationLength: 4096 }), null, 4096, 10000);
      const r2 = await io.exec(map, 'sda', REGISTER, reg(0xfa40n, 0n), 0, 10000);
      const fds = io.openPaths().map((p) => p.dev + ':' + p.devT);
      await io.close();
      const d = full.kind === 'good' ? decodeReadFullStatus(full.data).descriptors.map((x) => ({ key: '0x' + x.key.toString(16), rtpi: x.relativeTargetPortId, tid: formatTransportId(x.transportId) })) : full;
      console.log(JSON.stringify({ r1: r1.kind, r2: r2.kind, full: d, fds, devT: map.paths.map((p) => p.dev + ':' + p.devT) }));`, true);
    const r = JSON.parse(out) as { r1: string; r2: string; full: unknown; fds: string[]; devT: string[] };
    assert.equal(r.r1, 'good');
    assert.equal(r.r2, 'good');
    assert.deepEqual(r.full, [{ key: '0xfa40', rtpi: 1, tid: 'sas:0x5001405f00000001' }]);
    assert.deepEqual(r.fds, r.devT, 'one fd per path, opened on the device multipathd names');
  });
});
