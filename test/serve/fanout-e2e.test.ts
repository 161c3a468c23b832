// The multipath fan-out end to end, with real processes: a simulated SAN (`prmux san start`), one
// `prmux serve --san DIR/HOST` per host, and a Python client that sends each command as QEMU does
// (16-byte CDB with the fd of DIR/HOST/dev/mapper/mpatha, then the parameter list): what a guest's
// scsi-block disk on a multipath map sends. Faults are injected through `prmux san ctl`.
//
// Every expectation about the LU is checked without prmux: the SAN's `ctl status --json`
// (registrations per I_T nexus, the reservation and its holder nexus, multipathd's view) and
// commands run on single path devices through DIR/HOST/san.sock (READ KEYS, WRITE(10), READ(10)).
// Waits poll with a generous bound; nothing asserts how fast anything happened.
//
// Host layout (--hosts 2 --luns 1 --paths 2): each host has paths sda and sdb to the one LU, its
// map is mpatha; the nexus of host1's sda is "host1/sda".

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  eventually,
  execOnPath,
  GOOD,
  hostOf,
  In,
  keyHex,
  keysOf,
  Lab,
  Out,
  pathOf,
  type PrReply,
  READ_KEYS_CDB,
  readKeysOnPath,
  readOnPath,
  RESERVATION_CONFLICT,
  type SanStatus,
  decodeKeys,
  decodeReservation,
  describeState,
  sleep,
  VERIFY_INTERVAL_MS,
  WE_RO,
  writeOnPath,
} from './fanout-harness.js';

const K0 = 0x5a5a0000000000a0n;
const K1 = 0x1111aaaa00000001n;
const K2 = 0x2222bbbb00000002n;
const TEST_TIMEOUT = 40_000;
/** How long prmux gets to bring diverged paths back into agreement (many verification rounds). */
const CONVERGE_MS = 6 * VERIFY_INTERVAL_MS;

function assertGood(r: PrReply, what: string, lab: Lab, host = 'host1'): void {
  assert.equal(r.status, GOOD, `${what}: expected GOOD, got ${JSON.stringify(r)}\nprmux ${host} log:\n${lab.log(host)}`);
}

async function waitChecker(lab: Lab, host: string, dev: string, state: 'ready' | 'faulty'): Promise<void> {
  await eventually(
    `multipathd of ${host} sees ${dev} ${state}`,
    () => lab.san.status(),
    (st) => pathOf(st, host, dev).multipathd?.checkerState === state,
    describeState,
  );
}

/** The registrations of `host`'s usable paths (transport up, present, multipathd checker ready). */
function usableKeys(st: SanStatus, host: string): Record<string, string | null> {
  const all = keysOf(st, host);
  const out: Record<string, string | null> = {};
  for (const p of hostOf(st, host).paths) {
    if (!p.removed && p.transport === 'up' && p.multipathd?.checkerState === 'ready') out[p.dev] = all[p.dev] ?? null;
  }
  return out;
}

/**
 * Converged: every usable path of `host` carries the same registration (or none), and where prmux
 * keeps an intent with a key, that key is the one on the paths. Returns why not, or null.
 */
function divergence(st: SanStatus, host: string, intent: ReturnType<Lab['intent']>): string | null {
  const keys = usableKeys(st, host);
  const distinct = new Set(Object.values(keys));
  if (distinct.size > 1) return `the usable paths disagree: ${JSON.stringify(keys)}`;
  const onPaths = [...distinct][0] ?? null;
  const intended = intent?.key ?? null;
  if (intended !== null && intended !== onPaths) return `prmux's intent says ${intended}, the paths carry ${onPaths}`;
  if (intent !== null && intended === null && onPaths !== null && onPaths === intent.lastKey) {
    return `prmux's intent says unregistered, the paths still carry its last key ${onPaths}`;
  }
  return null;
}

async function waitConverged(lab: Lab, host: string, what: string): Promise<SanStatus> {
  return eventually(
    what,
    async () => ({ st: await lab.san.status(), intent: lab.intent(host) }),
    (v) => divergence(v.st, host, v.intent) === null,
    (v) => `${divergence(v.st, host, v.intent)}; intent ${JSON.stringify(v.intent)}; ${describeState(v.st)}\nprmux ${host} log:\n${lab.log(host)}`,
    CONVERGE_MS,
  ).then((v) => v.st);
}

async function waitKeys(lab: Lab, host: string, want: Record<string, string | null>, what: string): Promise<SanStatus> {
  return eventually(
    what,
    () => lab.san.status(),
    (st) => JSON.stringify(keysOf(st, host)) === JSON.stringify(want),
    (st) => `${describeState(st)}\nprmux ${host} log:\n${lab.log(host)}`,
  );
}

const sorted = (xs: readonly string[]): string[] => [...xs].sort();

describe('prmux serve: multipath fan-out on the simulated SAN, end to end', { concurrency: false }, () => {
  test('fence_scsi between two hosts: register, reserve type 5, PREEMPT AND ABORT; the victim loses access on every path and is not let back in', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start({ prmuxHosts: ['host1', 'host2'] });
    try {
      // fence_scsi unfences with "sg_persist -o -I -S key": REGISTER AND IGNORE EXISTING KEY.
      assertGood(await lab.out('host1', Out.REGISTER_AND_IGNORE, { saKey: K1 }), 'host1 registers', lab);
      assertGood(await lab.out('host2', Out.REGISTER_AND_IGNORE, { saKey: K2 }), 'host2 registers', lab, 'host2');
      let st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
      assert.deepEqual(keysOf(st, 'host2'), { sda: keyHex(K2), sdb: keyHex(K2) }, describeState(st));
      // The target lists one registration per nexus, whichever path asks.
      const four = sorted([keyHex(K1), keyHex(K1), keyHex(K2), keyHex(K2)]);
      for (const [h, d] of [['host1', 'sda'], ['host1', 'sdb'], ['host2', 'sda'], ['host2', 'sdb']] as const) {
        assert.deepEqual(sorted((await readKeysOnPath(lab.san, h, d)) as string[]), four, `READ KEYS on ${h}/${d}`);
      }

      // The first node reserves Write Exclusive - Registrants Only ("sg_persist -o -R -T 5 -K key").
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'host1 reserves', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation?.type, WE_RO, describeState(st));
      assert.equal(st.luns[0]!.reservation?.key, keyHex(K1), describeState(st));
      assert.match(st.luns[0]!.reservation!.holderNexusId, /^host1\//);
      for (const h of ['host1', 'host2']) for (const d of ['sda', 'sdb']) assert.equal(await writeOnPath(lab.san, h, d), 'good', `registrant ${h}/${d} writes`);

      // host2 fences host1 ("sg_persist -o -A -T 5 -K mykey -S victimkey").
      assertGood(await lab.out('host2', Out.PREEMPT_AND_ABORT, { key: K2, saKey: K1, type: WE_RO }), 'host2 preempts and aborts host1', lab, 'host2');
      st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: null, sdb: null }, `the victim keeps no registration: ${describeState(st)}`);
      assert.deepEqual(keysOf(st, 'host2'), { sda: keyHex(K2), sdb: keyHex(K2) }, describeState(st));
      assert.equal(st.luns[0]!.reservation?.key, keyHex(K2), describeState(st));
      assert.equal(st.luns[0]!.reservation?.type, WE_RO, describeState(st));
      assert.match(st.luns[0]!.reservation!.holderNexusId, /^host2\//);
      // Every path of the victim lost write access (reads stay allowed under type 5); the fencer's paths write.
      for (const d of ['sda', 'sdb']) {
        assert.equal(await writeOnPath(lab.san, 'host1', d), 'reservation-conflict', `victim host1/${d} cannot write`);
        assert.equal(await readOnPath(lab.san, 'host1', d), 'good', `victim host1/${d} may still read`);
        assert.equal(await writeOnPath(lab.san, 'host2', d), 'good', `fencer host2/${d} writes`);
      }
      // The guest's writes go through dm: whichever path the map picks, they conflict.
      for (let i = 0; i < 4; i++) {
        const w = await execOnPath(lab.san, 'host1', 'mapper/mpatha', '2a000000000000000100', '00'.repeat(512));
        assert.equal(w.outcome?.kind, 'reservation-conflict', `victim write through its map (path ${w.path})`);
      }
      // The victim's guest sees the fence through its own prmux.
      const keys = await lab.in('host1', In.READ_KEYS);
      assertGood(keys, 'host1 READ KEYS through its map', lab);
      assert.deepEqual(decodeKeys(keys.data!), [keyHex(K2), keyHex(K2)]);
      const res = await lab.in('host1', In.READ_RESERVATION);
      assert.deepEqual(decodeReservation(res.data!), { key: keyHex(K2), type: WE_RO });

      // host1's prmux finds its key gone from the LU, records the fence and tells multipathd to forget the key.
      await eventually(
        "host1's prmux records the fence",
        async () => lab.intent('host1'),
        (i) => i !== null && i.key === null && i.fenced !== undefined,
        (i) => `intent ${JSON.stringify(i)}\n${lab.log('host1')}`,
      );
      st = await lab.san.status();
      assert.equal(hostOf(st, 'host1').maps[0]!.prKey, null, `host1 multipathd must not keep the fenced key: ${describeState(st)}`);
      assert.equal(hostOf(st, 'host1').maps[0]!.prStatus, false, describeState(st));

      // A path of the victim bounces: neither prmux nor multipathd may register the fenced key again.
      await lab.san.ctl('path', 'down', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'faulty');
      await lab.san.ctl('path', 'up', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'ready');
      await sleep(3 * VERIFY_INTERVAL_MS); // an observation window of several verification rounds
      st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: null, sdb: null }, `the fenced key came back: ${describeState(st)}\n${lab.log('host1')}`);
      assert.ok(!st.luns[0]!.registrations.some((r) => r.key === keyHex(K1)), describeState(st));
      for (const d of ['sda', 'sdb']) assert.equal(await writeOnPath(lab.san, 'host1', d), 'reservation-conflict', `victim host1/${d} still cannot write`);
      // The fencer's state is untouched.
      assert.deepEqual(keysOf(st, 'host2'), { sda: keyHex(K2), sdb: keyHex(K2) }, describeState(st));
      assert.equal(st.luns[0]!.reservation?.key, keyHex(K2), describeState(st));
      assert.equal(lab.intent('host2')?.key, keyHex(K2));
      assert.deepEqual(lab.intent('host2')?.reservation, { type: WE_RO });
    } finally {
      await lab.stop();
    }
  });

  test('REGISTER with a path down before the fan-out: the key on the live path; the path returns and the guard registers it', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      await lab.san.ctl('path', 'down', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'faulty');
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER with sdb down', lab);
      let st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: null }, describeState(st));
      assert.equal(lab.intent('host1')?.key, keyHex(K1));
      // Only prmux's guard may put the key on sdb: multipathd's own registration is turned off.
      await lab.silenceMultipathdKey('host1');
      await lab.san.ctl('path', 'up', 'host1', 'sdb');
      st = await waitKeys(lab, 'host1', { sda: keyHex(K1), sdb: keyHex(K1) }, 'sdb gets the key back through the guard');
      assert.equal(hostOf(st, 'host1').maps[0]!.prKey, null, 'multipathd did not do it');
      assert.deepEqual(await readKeysOnPath(lab.san, 'host1', 'sdb'), [keyHex(K1), keyHex(K1)]);
    } finally {
      await lab.stop();
    }
  });

  test('REGISTER with a path going down during the fan-out: rechecked down, the registration stands; on return the guard registers it', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      await lab.san.ctl('path', 'latency', 'host1', 'sdb', '2000');
      const pending = lab.out('host1', Out.REGISTER, { saKey: K1 });
      let st = await eventually('sda registered while sdb is in flight', () => lab.san.status(), (s) => keysOf(s, 'host1')['sda'] === keyHex(K1), describeState);
      assert.equal(keysOf(st, 'host1')['sdb'], null, 'the copy for sdb is still in flight');
      await lab.san.ctl('path', 'down', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'faulty');
      // sdb's copy fails at the transport; multipathd calls the path faulty: the registration stands.
      assertGood(await pending, 'REGISTER with sdb lost mid-command', lab);
      st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: null }, describeState(st));
      assert.equal(lab.intent('host1')?.key, keyHex(K1));
      await lab.san.ctl('path', 'latency', 'host1', 'sdb', '0');
      await lab.silenceMultipathdKey('host1');
      await lab.san.ctl('path', 'up', 'host1', 'sdb');
      await waitKeys(lab, 'host1', { sda: keyHex(K1), sdb: keyHex(K1) }, 'sdb gets the key back through the guard');
    } finally {
      await lab.stop();
    }
  });

  test('key change while a path is down: the path returns with the old key and the guard replaces it; the old key is left nowhere', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER K1', lab);
      await lab.san.ctl('path', 'down', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'faulty');
      assertGood(await lab.out('host1', Out.REGISTER, { key: K1, saKey: K2 }), 'REGISTER K1 -> K2 with sdb down', lab);
      let st = await lab.san.status();
      // Registrations live at the target: the down path keeps the old key.
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K2), sdb: keyHex(K1) }, describeState(st));
      assert.equal(lab.intent('host1')?.key, keyHex(K2));
      await lab.silenceMultipathdKey('host1');
      await lab.san.ctl('path', 'up', 'host1', 'sdb');
      st = await waitKeys(lab, 'host1', { sda: keyHex(K2), sdb: keyHex(K2) }, 'sdb gets the new key through the guard');
      assert.ok(!st.luns[0]!.registrations.some((r) => r.key === keyHex(K1)), `the old key is stray: ${describeState(st)}`);
    } finally {
      await lab.stop();
    }
  });

  test('unregister while holding the reservation through a path that is down: released and unregistered everywhere; the path returns with nothing', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER', lab);
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE', lab);
      let st = await lab.san.status();
      const holder = st.luns[0]!.reservation!.holderNexusId.split('/')[1]!;
      await lab.san.ctl('path', 'down', 'host1', holder);
      await waitChecker(lab, 'host1', holder, 'faulty');
      assertGood(await lab.out('host1', Out.REGISTER, { key: K1, saKey: 0n }), 'unregister while the holder path is down', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation, null, describeState(st));
      assert.deepEqual(st.luns[0]!.registrations, [], `nothing left registered: ${describeState(st)}`);
      assert.equal(hostOf(st, 'host1').maps[0]!.suspended, false, 'the map was resumed');
      assert.equal(hostOf(st, 'host1').maps[0]!.prKey, null, 'multipathd was told the map has no key');
      assert.equal(lab.intent('host1')?.key, null);

      await lab.san.ctl('path', 'up', 'host1', holder);
      await waitChecker(lab, 'host1', holder, 'ready');
      await sleep(3 * VERIFY_INTERVAL_MS); // an observation window of several verification rounds
      st = await lab.san.status();
      assert.deepEqual(st.luns[0]!.registrations, [], `nothing stray after the path returned: ${describeState(st)}\n${lab.log('host1')}`);
      assert.equal(st.luns[0]!.reservation, null, describeState(st));
    } finally {
      await lab.stop();
    }
  });

  test('flaky path that drops every command while multipathd calls it up: the REGISTER fails and leaves no path with the new key', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      await lab.san.ctl('path', 'flaky', 'host1', 'sdb', '1');
      const r = await lab.out('host1', Out.REGISTER, { saKey: K1 });
      // The rule: a path that failed at the transport and is still up makes the command fail.
      assert.notEqual(r.status, GOOD, `REGISTER over a path that drops it must fail: ${JSON.stringify(r)}`);
      assert.equal(r.closed, undefined);
      // The guest was told the REGISTER failed: a key on sda alone would let this host write
      // through sda but not sdb. libmpathpersist rolls the paths that succeeded back; prmux must
      // leave the paths in agreement too, within several verification rounds.
      await waitConverged(lab, 'host1', `host1 paths agree after a failed REGISTER (the guest got ${JSON.stringify(r)})`);
    } finally {
      await lab.stop();
    }
  });

  test('flaky path dropping half the commands: the guest retries until GOOD, the key ends on every path; PR IN fails over', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      await lab.san.ctl('path', 'flaky', 'host1', 'sdb', '0.5');
      let r: PrReply = {};
      let attempts = 0;
      while (attempts < 40) {
        attempts++;
        r = await lab.out('host1', Out.REGISTER_AND_IGNORE, { saKey: K1 });
        if (r.status === GOOD) break;
        assert.equal(r.closed, undefined, `prmux dropped the connection: ${lab.log('host1')}`);
      }
      assertGood(r, `REGISTER AND IGNORE after ${attempts} attempt(s)`, lab);
      let st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
      for (let i = 0; i < 8; i++) {
        const k = await lab.in('host1', In.READ_KEYS);
        assertGood(k, 'READ KEYS through the map with a flaky path', lab);
        assert.deepEqual(decodeKeys(k.data!), [keyHex(K1), keyHex(K1)]);
      }
      await lab.san.ctl('path', 'flaky', 'host1', 'sdb', '0');
      st = await waitConverged(lab, 'host1', 'host1 paths agree');
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
    } finally {
      await lab.stop();
    }
  });

  test('conflict on some paths: a stale key on one path is replaced (REGISTER AND IGNORE retry); RESERVE conflicted by a non-holder sibling is not final', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      // A stale registration on sda only, made on that path directly.
      const params = Buffer.alloc(24);
      params.writeBigUInt64BE(K0, 8);
      const stale = await execOnPath(lab.san, 'host1', 'sda', '5f000000000000001800', params.toString('hex'));
      assert.equal(stale.outcome?.kind, 'good');
      let st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K0), sdb: null }, describeState(st));

      // The guest's REGISTER (reservation key 0): sdb takes it, sda answers RESERVATION CONFLICT.
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER over a stale sibling', lab);
      st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
      assert.ok(!st.luns[0]!.registrations.some((x) => x.key === keyHex(K0)), `stale key left: ${describeState(st)}`);

      // Make sdb the holder: reserve while sda is down.
      await lab.san.ctl('path', 'down', 'host1', 'sda');
      await waitChecker(lab, 'host1', 'sda', 'faulty');
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE with sda down', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation?.holderNexusId, 'host1/sdb', describeState(st));
      await lab.san.ctl('path', 'up', 'host1', 'sda');
      await waitChecker(lab, 'host1', 'sda', 'ready');
      // The target refuses a RESERVE from the non-holder sibling (checked on that path directly)...
      const direct = Buffer.alloc(24);
      direct.writeBigUInt64BE(K1, 0);
      const refused = await execOnPath(lab.san, 'host1', 'sda', `5f01${WE_RO.toString(16).padStart(2, '0')}00000000001800`, direct.toString('hex'));
      assert.equal(refused.outcome?.kind, 'reservation-conflict', 'precondition: sda is not the holder');
      // ...but the guest's RESERVE through the map is GOOD, as on a single-path disk.
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE repeated by the holder host', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation?.holderNexusId, 'host1/sdb', describeState(st));
      assert.equal(st.luns[0]!.reservation?.type, WE_RO);
      // A RESERVE of another type is the target's conflict.
      const other = await lab.out('host1', Out.RESERVE, { key: K1, type: 1 });
      assert.equal(other.status, RESERVATION_CONFLICT, JSON.stringify(other));
    } finally {
      await lab.stop();
    }
  });

  test('holder path removed: the target drops it and the reservation; the guard reserves again through the other path; the path re-added gets the key; RELEASE works', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER', lab);
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE', lab);
      let st = await lab.san.status();
      const holder = st.luns[0]!.reservation!.holderNexusId.split('/')[1]!;
      const other = holder === 'sda' ? 'sdb' : 'sda';
      const rtpiBefore = pathOf(st, 'host1', holder).relativeTargetPortId;
      await lab.silenceMultipathdKey('host1');

      await lab.san.ctl('path', 'remove', 'host1', holder);
      st = await lab.san.status();
      assert.ok(!st.luns[0]!.registrations.some((r) => r.nexusId === `host1/${holder}`), `the removed nexus keeps no registration: ${describeState(st)}`);
      // The reservation went with the holder's registration; prmux holds it again through the other path.
      st = await eventually(
        'the guard takes the reservation back through the remaining path',
        () => lab.san.status(),
        (s) => s.luns[0]!.reservation?.holderNexusId === `host1/${other}` && s.luns[0]!.reservation?.type === WE_RO && s.luns[0]!.reservation?.key === keyHex(K1),
        (s) => `${describeState(s)}\n${lab.log('host1')}`,
      );
      assert.equal(await writeOnPath(lab.san, 'host1', other), 'good');

      await lab.san.ctl('path', 'add', 'host1', holder);
      st = await waitKeys(lab, 'host1', { sda: keyHex(K1), sdb: keyHex(K1) }, 'the re-added path gets the key through the guard');
      assert.notEqual(pathOf(st, 'host1', holder).relativeTargetPortId, rtpiBefore, 'a new I_T nexus (new relative target port id)');
      assert.equal(hostOf(st, 'host1').maps[0]!.prKey, null, 'multipathd did not do it');
      assert.equal(await writeOnPath(lab.san, 'host1', holder), 'good', 'the re-added path may write');

      assertGood(await lab.out('host1', Out.RELEASE, { key: K1, type: WE_RO }), 'RELEASE', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation, null, describeState(st));
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
      assert.equal(lab.intent('host1')?.reservation, null);
    } finally {
      await lab.stop();
    }
  });

  test('holder path down: RELEASE moves the reservation to a live path (map suspended around it) and releases it; the path returns and gets the key', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER', lab);
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE', lab);
      let st = await lab.san.status();
      const holder = st.luns[0]!.reservation!.holderNexusId.split('/')[1]!;
      const other = holder === 'sda' ? 'sdb' : 'sda';
      await lab.silenceMultipathdKey('host1');
      await lab.san.ctl('path', 'down', 'host1', holder);
      await waitChecker(lab, 'host1', holder, 'faulty');

      assertGood(await lab.out('host1', Out.RELEASE, { key: K1, type: WE_RO }), 'RELEASE with the holder path down', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation, null, describeState(st));
      assert.equal(keysOf(st, 'host1')[other], keyHex(K1), describeState(st));
      assert.equal(hostOf(st, 'host1').maps[0]!.suspended, false, 'the map was resumed');

      await lab.san.ctl('path', 'up', 'host1', holder);
      await waitKeys(lab, 'host1', { sda: keyHex(K1), sdb: keyHex(K1) }, 'the holder path returns and has the key');
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation, null, describeState(st));
    } finally {
      await lab.stop();
    }
  });

  test('multipathd stopped and restarted: prmux keeps serving on its last view; a path that came back meanwhile is registered once multipathd answers', { timeout: TEST_TIMEOUT }, async () => {
    const lab = await Lab.start();
    try {
      await lab.san.ctl('path', 'down', 'host1', 'sdb');
      await waitChecker(lab, 'host1', 'sdb', 'faulty');
      assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER with sdb down', lab);
      let st = await lab.san.status();
      assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: null }, describeState(st));
      await lab.silenceMultipathdKey('host1');

      await lab.san.ctl('multipathd', 'stop', 'host1');
      // Still serving, PR IN and PR OUT.
      const keys = await lab.in('host1', In.READ_KEYS);
      assertGood(keys, 'READ KEYS with multipathd down', lab);
      assert.deepEqual(decodeKeys(keys.data!), [keyHex(K1)]);
      assertGood(await lab.out('host1', Out.RESERVE, { key: K1, type: WE_RO }), 'RESERVE with multipathd down', lab);
      st = await lab.san.status();
      assert.equal(st.luns[0]!.reservation?.holderNexusId, 'host1/sda', describeState(st));

      // sdb's transport comes back while no checker runs.
      await lab.san.ctl('path', 'up', 'host1', 'sdb');
      await sleep(3 * VERIFY_INTERVAL_MS); // a few verification rounds on the stale view
      assert.equal(lab.prmux('host1').child.exitCode, null, 'prmux is still running');
      const again = await lab.in('host1', In.READ_RESERVATION);
      assertGood(again, 'READ RESERVATION with multipathd still down', lab);
      assert.deepEqual(decodeReservation(again.data!), { key: keyHex(K1), type: WE_RO });

      await lab.san.ctl('multipathd', 'start', 'host1');
      st = await waitKeys(lab, 'host1', { sda: keyHex(K1), sdb: keyHex(K1) }, 'sdb is registered once multipathd reports it ready');
      assert.equal(hostOf(st, 'host1').maps[0]!.prKey, null, 'multipathd did not do it');
      const both = await lab.in('host1', In.READ_KEYS);
      assertGood(both, 'READ KEYS after multipathd is back', lab);
      assert.deepEqual(decodeKeys(both.data!), [keyHex(K1), keyHex(K1)]);
      assert.equal(st.luns[0]!.reservation?.holderNexusId, 'host1/sda', describeState(st));
    } finally {
      await lab.stop();
    }
  });

  describe('prmux killed with SIGKILL in the middle of a fan-out and restarted with the same state directory', () => {
    test('first REGISTER, the slow copy still reaching the LU after the kill: the paths converge and the guest recovers', { timeout: TEST_TIMEOUT }, async (t) => {
      const lab = await Lab.start();
      try {
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '2000');
        const pending = lab.out('host1', Out.REGISTER, { saKey: K1 });
        let st = await eventually('sda registered while sdb is in flight', () => lab.san.status(), (s) => keysOf(s, 'host1')['sda'] === keyHex(K1), describeState);
        assert.equal(keysOf(st, 'host1')['sdb'], null, 'the copy for sdb is still in flight');
        await lab.killPrmux('host1');
        const lost = await pending;
        assert.equal(lost.closed, true, `the guest's command dies with the helper: ${JSON.stringify(lost)}`);
        // The intent is written once the fan-out succeeded: the kill came first.
        const atKill = lab.intent('host1');

        await lab.startPrmux('host1'); // serves only after its start-up reconcile
        // A command on sdb queued behind the in-flight copy (same latency) returns after it ran.
        await execOnPath(lab.san, 'host1', 'sdb', READ_KEYS_CDB);
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '0');
        st = await waitConverged(lab, 'host1', 'host1 paths converge after the restart');
        const after = { keys: keysOf(st, 'host1'), intentAtKill: atKill, intentAfter: lab.intent('host1') };
        // Reported for the record (see the report): which way it converged.
        t.diagnostic(`SIGKILL with a slow copy: ${JSON.stringify(after)}`);

        // The guest does what it does after a lost command: registers again, then unregisters.
        assertGood(await lab.out('host1', Out.REGISTER_AND_IGNORE, { saKey: K1 }), 'REGISTER AND IGNORE after the restart', lab);
        st = await lab.san.status();
        assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
        assert.equal(lab.intent('host1')?.key, keyHex(K1));
        assertGood(await lab.out('host1', Out.REGISTER, { key: K1, saKey: 0n }), 'unregister', lab);
        st = await lab.san.status();
        assert.deepEqual(st.luns[0]!.registrations, [], `nothing stray: ${describeState(st)}`);
        assert.equal(lab.intent('host1')?.key, null);
      } finally {
        await lab.stop();
      }
    });

    test('first REGISTER whose second copy never reaches the LU (its path lost after the kill): the paths converge after the restart', { timeout: TEST_TIMEOUT }, async () => {
      const lab = await Lab.start();
      try {
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '2000');
        const pending = lab.out('host1', Out.REGISTER, { saKey: K1 });
        let st = await eventually('sda registered while sdb is in flight', () => lab.san.status(), (s) => keysOf(s, 'host1')['sda'] === keyHex(K1), describeState);
        assert.equal(keysOf(st, 'host1')['sdb'], null, 'the copy for sdb is still in flight');
        await lab.killPrmux('host1');
        // The copy for sdb fails at the transport when its turn comes: it never reaches the LU.
        await lab.san.ctl('path', 'down', 'host1', 'sdb');
        assert.equal((await pending).closed, true);
        await lab.startPrmux('host1');
        const barrier = await execOnPath(lab.san, 'host1', 'sdb', READ_KEYS_CDB);
        assert.equal(barrier.outcome?.kind, 'transport-failure');
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '0');
        await lab.san.ctl('path', 'up', 'host1', 'sdb');
        await waitChecker(lab, 'host1', 'sdb', 'ready');
        // Nothing was acknowledged to the guest: either the key on both paths (rolled forward) or
        // on none (rolled back), never a path that writes while its sibling cannot.
        await waitConverged(lab, 'host1', 'host1 paths converge after the restart');
      } finally {
        await lab.stop();
      }
    });

    test('key change K1 -> K2 killed half way: the acknowledged key K1 is back on every path, K2 nowhere', { timeout: TEST_TIMEOUT }, async () => {
      const lab = await Lab.start();
      try {
        assertGood(await lab.out('host1', Out.REGISTER, { saKey: K1 }), 'REGISTER K1', lab);
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '2000');
        const pending = lab.out('host1', Out.REGISTER, { key: K1, saKey: K2 });
        await eventually('sda has K2 while sdb is in flight', () => lab.san.status(), (s) => keysOf(s, 'host1')['sda'] === keyHex(K2), describeState);
        await lab.killPrmux('host1');
        await lab.san.ctl('path', 'down', 'host1', 'sdb');
        assert.equal((await pending).closed, true);
        assert.equal(lab.intent('host1')?.key, keyHex(K1), 'the intent on disk is the acknowledged key');
        await waitChecker(lab, 'host1', 'sdb', 'faulty');
        await lab.startPrmux('host1');
        await execOnPath(lab.san, 'host1', 'sdb', READ_KEYS_CDB);
        await lab.san.ctl('path', 'latency', 'host1', 'sdb', '0');
        await lab.san.ctl('path', 'up', 'host1', 'sdb');
        await waitChecker(lab, 'host1', 'sdb', 'ready');
        const st = await waitConverged(lab, 'host1', 'host1 paths converge after the restart');
        assert.deepEqual(keysOf(st, 'host1'), { sda: keyHex(K1), sdb: keyHex(K1) }, describeState(st));
        assert.ok(!st.luns[0]!.registrations.some((r) => r.key === keyHex(K2)), `nothing stray: ${describeState(st)}`);
        const k = await lab.in('host1', In.READ_KEYS);
        assertGood(k, 'READ KEYS after the restart', lab);
        assert.deepEqual(decodeKeys(k.data!), [keyHex(K1), keyHex(K1)]);
      } finally {
        await lab.stop();
      }
    });
  });
});
