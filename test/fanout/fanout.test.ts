// The multipath fan-out rules (multipath-pr-semantics.md), one test per rule, on the PR model in
// both personalities. Each test runs guest commands through a node's map and checks the model's
// resulting state with READ FULL STATUS / READ RESERVATION on the model itself, what was sent down
// which path (role, CDB, parameter list), and that the guest's answer is the very outcome a target
// produced on the path named in decidedBy.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { executeOnMap, type FanoutContext } from '../../src/fanout/fanout.js';
import type { FanoutResult, PathCommand } from '../../src/fanout/types.js';
import { fromHex } from '../../src/scsi/bytes.js';
import { Asc, HostStatus, PrInAction, PrOutAction, PrType, SenseKey } from '../../src/scsi/constants.js';
import { decodeReadFullStatus } from '../../src/scsi/prin-data.js';
import { senseKeyAscOf } from '../../src/scsi/sense.js';
import type { ScsiOutcome } from '../../src/scsi/types.js';
import type { Personality } from '../../src/scsi/model/device-server.js';
import type { Logger } from '../../src/socket/logger.js';
import { ModelSan, prIn, prOut, prOutRaw, registerAndMove, type ModelNode } from './model-paths.js';

const A = 0xaaaa0001n;
const B = 0xbbbb0002n;
const C = 0xcccc0003n;
const PERSONALITIES: readonly Personality[] = ['lio', 'spc4'];
const { REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE_EXISTING_KEY: RIEK } = PrOutAction;

/** Two cluster nodes; each has SCSI hosts x 2 target ports: node1 sda (h1,t1) sdb (h1,t2) sdc (h2,t1) sdd (h2,t2). */
function makeSan(personality: Personality): { san: ModelSan; n1: ModelNode; n2: ModelNode } {
  const san = new ModelSan({
    personality,
    nodes: [
      { name: 'node1', hosts: [1, 2], targetPorts: 2 },
      { name: 'node2', hosts: [3, 4], targetPorts: 2 },
    ],
  });
  return { san, n1: san.node('node1'), n2: san.node('node2') };
}

function opcodeOf(c: PathCommand): number {
  return parseInt(c.cdb.slice(0, 2), 16);
}
function saOf(c: PathCommand): number {
  return parseInt(c.cdb.slice(2, 4), 16) & 0x1f;
}
function prOuts(r: FanoutResult, sa?: number): PathCommand[] {
  return r.commands.filter((c) => opcodeOf(c) === 0x5f && (sa === undefined || saOf(c) === sa));
}
function prIns(r: FanoutResult, sa?: number): PathCommand[] {
  return r.commands.filter((c) => opcodeOf(c) === 0x5e && (sa === undefined || saOf(c) === sa));
}

function assertGood(r: FanoutResult, what: string): void {
  assert.equal(r.outcome.kind, 'good', `${what}: ${JSON.stringify(r.outcome)}`);
}

/** The guest's answer is the outcome object a target produced on `decidedBy` (not a copy, not rebuilt). */
function assertFromTarget(node: ModelNode, r: FanoutResult): void {
  assert.notEqual(r.decidedBy, null);
  const produced = node.execEvents().filter((e) => e.path === r.decidedBy).map((e) => e.outcome);
  assert.ok(produced.includes(r.outcome), `the answer ${JSON.stringify(r.outcome)} is not one ${r.decidedBy} produced`);
}

function assertSense(o: ScsiOutcome, key: number, asc: { asc: number; ascq: number }): void {
  assert.equal(o.kind, 'check-condition');
  if (o.kind !== 'check-condition') return;
  assert.deepEqual(senseKeyAscOf(o.sense), { key, asc: asc.asc, ascq: asc.ascq });
}

function keysOf(node: ModelNode): Record<string, string | null> {
  return Object.fromEntries([...node.keys()].map(([dev, k]) => [dev, k === null ? null : `0x${k.toString(16)}`]));
}
function allKeys(node: ModelNode, key: bigint | null, devs: readonly string[] = node.devs): Record<string, string | null> {
  return Object.fromEntries(devs.map((d) => [d, key === null ? null : `0x${key.toString(16)}`]));
}

/** Register `key` on every path of the node through the map (all paths up). */
async function registerAll(node: ModelNode, key: bigint): Promise<void> {
  assertGood(await node.run(prOut(RIEK, { saKey: key })), 'setup REGISTER AND IGNORE');
}

function isUnitAttention(o: ScsiOutcome): boolean {
  return o.kind === 'check-condition' && senseKeyAscOf(o.sense)?.key === SenseKey.UNIT_ATTENTION;
}

/**
 * Order of the suspend/resume events and PR OUT service actions ("sa@path") the node saw. Commands
 * answered with UNIT ATTENTION (our own paths get 2A/04, 2A/05 from the preempt or release) are
 * left out: they were re-sent and the re-sent one is listed.
 */
function timeline(node: ModelNode): string[] {
  return node.events.flatMap((e) => {
    if (e.kind === 'suspend' || e.kind === 'resume') return [e.kind];
    if (e.kind === 'exec' && e.cdb.startsWith('5f') && !isUnitAttention(e.outcome)) return [`${(parseInt(e.cdb.slice(2, 4), 16) & 0x1f)}@${e.path}`];
    return [];
  });
}

const recordingLogger = (): Logger & { lines: string[] } => {
  const lines: string[] = [];
  const put = (level: string) => (m: string) => void lines.push(`${level} ${m}`);
  return { lines, debug: put('debug'), info: put('info'), warn: put('warn'), error: put('error') };
};

for (const personality of PERSONALITIES) {
  describe(`fan-out on the ${personality} model`, () => {
    // ---- REGISTER / REGISTER AND IGNORE --------------------------------------------------------
    describe('REGISTER and REGISTER AND IGNORE', () => {
      test('with every path up, the key lands on every path, one command per path, sent in parallel', async () => {
        const { n1 } = makeSan(personality);
        const gates = n1.devs.map((d) => n1.hold(d));
        const running = n1.run(prOut(REGISTER, { saKey: A }));
        // Every path has a command waiting before any completes: they were issued together.
        await Promise.all(gates.map((g) => g.arrived()));
        assert.equal(n1.execEvents().length, 0);
        for (const g of [...gates].reverse()) g.open();
        const r = await running;
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.deepEqual(r.pendingPaths, []);
        assert.deepEqual(r.commands.map((c) => c.role), ['primary', 'primary', 'primary', 'primary']);
        assert.deepEqual(r.commands.map((c) => c.path).sort(), n1.devs);
        assert.deepEqual(r.commands.map((c) => c.path), [...n1.devs].reverse(), 'commands are listed in completion order');
        assertFromTarget(n1, r);
      });

      test('REGISTER AND IGNORE (fence_scsi "-o -I -S key") registers every path too', async () => {
        const { n1 } = makeSan(personality);
        const r = await n1.run(prOut(RIEK, { saKey: B }));
        assertGood(r, 'REGISTER AND IGNORE');
        assert.deepEqual(keysOf(n1), allKeys(n1, B));
        assert.equal(prOuts(r, RIEK).length, 4);
      });

      test('a path the map calls unusable gets nothing; the others get the key and pendingPaths names it', async () => {
        const { n1 } = makeSan(personality);
        n1.setUsable('sdc', false);
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), { sda: '0xaaaa0001', sdb: '0xaaaa0001', sdc: null, sdd: '0xaaaa0001' });
        assert.deepEqual(r.pendingPaths, ['sdc']);
        assert.ok(!r.commands.some((c) => c.path === 'sdc'));
      });

      test('a path failing with a transport error that the recheck finds down: the registration stands, the path is pending', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sdb', { kind: 'down' });
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), { sda: '0xaaaa0001', sdb: null, sdc: '0xaaaa0001', sdd: '0xaaaa0001' });
        assert.deepEqual(r.pendingPaths, ['sdb']);
        assert.deepEqual(
          n1.events.filter((e) => e.kind === 'recheck'),
          [{ kind: 'recheck', path: 'sdb', up: false }],
        );
        assert.equal(r.commands.filter((c) => c.path === 'sdb').length, 1, 'nothing more goes down a path found down');
      });

      test('a path failing with a transport error that the recheck finds up: the command fails with that failure', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sdd', { kind: 'flaky', failures: 1 });
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assert.equal(r.outcome.kind, 'transport-failure');
        assert.equal(r.decidedBy, 'sdd');
        assertFromTarget(n1, r);
        assert.deepEqual(r.pendingPaths, []);
        assert.deepEqual(n1.events.filter((e) => e.kind === 'recheck'), [{ kind: 'recheck', path: 'sdd', up: true }]);
      });

      test('every path failing and down: the command fails, nothing is pending', async () => {
        const { n1 } = makeSan(personality);
        for (const d of n1.devs) n1.fault(d, { kind: 'down' });
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assert.equal(r.outcome.kind, 'transport-failure');
        assertFromTarget(n1, r);
        assert.deepEqual(r.pendingPaths, []);
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
      });

      test('no usable path: a DID_NO_CONNECT transport failure, nothing sent', async () => {
        const { n1 } = makeSan(personality);
        for (const d of n1.devs) n1.setUsable(d, false);
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assert.equal(r.outcome.kind, 'transport-failure');
        if (r.outcome.kind === 'transport-failure') {
          assert.equal(r.outcome.hostStatus, HostStatus.DID_NO_CONNECT);
          assert.match(r.outcome.detail, /no usable path/);
        }
        assert.equal(r.decidedBy, null);
        assert.deepEqual(r.commands, []);
        assert.deepEqual(n1.events, []);
      });

      test('paths answering RESERVATION CONFLICT while others succeeded are retried with REGISTER AND IGNORE', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        // sdc lost its registration (e.g. it came back before the key was put on it again).
        assertGood({ outcome: n1.direct('sdc', prOut(REGISTER, { key: A, saKey: 0n })), decidedBy: 'sdc', commands: [], pendingPaths: [] }, 'setup');
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: B }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), allKeys(n1, B));
        const retries = r.commands.filter((c) => c.role === 'retry-register-and-ignore');
        assert.deepEqual(retries.map((c) => [c.path, saOf(c)]), [['sdc', RIEK]]);
        assert.equal(r.commands.find((c) => c.path === 'sdc' && c.role === 'primary')?.outcome.kind, 'reservation-conflict');
      });

      test('an injected conflict on one path of a new registration is retried the same way', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sdb', { kind: 'conflict', count: 1 });
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.deepEqual(r.commands.filter((c) => c.role === 'retry-register-and-ignore').map((c) => c.path), ['sdb']);
      });

      test('every path answering RESERVATION CONFLICT: the command fails with it, no retry', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        const r = await n1.run(prOut(REGISTER, { key: C, saKey: B }));
        assert.equal(r.outcome.kind, 'reservation-conflict');
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 4);
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
      });

      test('16-byte CDBs (as QEMU sends them) fan out and are retried as 16-byte REGISTER AND IGNORE', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sda', { kind: 'conflict', count: 1 });
        const r = await n1.run(prOut(REGISTER, { saKey: A, size: 16 }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        const retry = r.commands.find((c) => c.role === 'retry-register-and-ignore');
        assert.equal(retry?.cdb.length, 32);
        assert.equal(retry && saOf(retry), RIEK);
      });

      test('a unit attention on one path is consumed and the command re-sent there', async () => {
        const { san, n1 } = makeSan(personality);
        san.server.queueUnitAttention(n1.path('sdb').nexusId, Asc.REGISTRATIONS_PREEMPTED);
        const r = await n1.run(prOut(REGISTER, { saKey: A }));
        assertGood(r, 'REGISTER');
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        const onSdb = r.commands.filter((c) => c.path === 'sdb');
        assert.equal(onSdb.length, 2);
        assertSense(onSdb[0]!.outcome, SenseKey.UNIT_ATTENTION, Asc.REGISTRATIONS_PREEMPTED);
        assert.equal(onSdb[1]!.outcome.kind, 'good');
      });

      test('every command gets the per-path timeout; durations come from the injected clock', async () => {
        const { n1 } = makeSan(personality);
        const r = await n1.run(prOut(REGISTER, { saKey: A }), { timeoutMs: 1234 });
        assert.deepEqual(n1.execEvents().map((e) => e.timeoutMs), [1234, 1234, 1234, 1234]);
        for (const c of r.commands) assert.ok(Number.isFinite(c.durationMs) && c.durationMs >= 0);
      });
    });

    // ---- ALL_TG_PT / SPEC_I_PT -------------------------------------------------------------------
    describe('ALL_TG_PT and SPEC_I_PT', () => {
      test('ALL_TG_PT goes once per SCSI host and registers every target port of each', async () => {
        const { san, n1 } = makeSan(personality);
        const r = await n1.run(prOut(REGISTER, { saKey: A, allTgPt: true }));
        assertGood(r, 'REGISTER ALL_TG_PT');
        const sent = prOuts(r);
        assert.deepEqual(sent.map((c) => n1.path(c.path).host).sort(), [1, 2]);
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.ok(san.registrations().filter((x) => x.nexusId.startsWith('node1:')).every((x) => x.allTgPt));
        assert.ok(!r.commands.some((c) => c.role === 'repair'));
      });

      test('ALL_TG_PT: when the path chosen for a host is down, another path of that host carries it', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sda', { kind: 'down' });
        const r = await n1.run(prOut(REGISTER, { saKey: A, allTgPt: true }));
        assertGood(r, 'REGISTER ALL_TG_PT');
        const host1 = r.commands.filter((c) => n1.path(c.path).host === 1 && opcodeOf(c) === 0x5f);
        assert.deepEqual(host1.map((c) => [c.path, c.role]), [['sda', 'primary'], ['sdb', 'failover']]);
        // The ALL_TG_PT registration through sdb covers sda's target port too.
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.deepEqual(r.pendingPaths, ['sda']);
      });

      test('ALL_TG_PT key change: sibling paths end with the new key (LIO changes only the issuing nexus)', async () => {
        const { n1 } = makeSan(personality);
        assertGood(await n1.run(prOut(REGISTER, { saKey: A, allTgPt: true })), 'setup');
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: B, allTgPt: true }));
        assertGood(r, 'key change');
        assert.deepEqual(keysOf(n1), allKeys(n1, B));
        const repairs = r.commands.filter((c) => c.role === 'repair');
        if (personality === 'lio') assert.deepEqual(repairs.map((c) => c.path).sort(), ['sdb', 'sdd']);
        else assert.deepEqual(repairs, [], 'a target keying ALL_TG_PT per initiator port needs no repair');
        assert.equal(prIns(r, PrInAction.READ_FULL_STATUS).length, 1);
      });

      test('SPEC_I_PT: the first copy carries the TransportIDs, the others have the bit cleared and a 24-byte list', async () => {
        const { san, n1, n2 } = makeSan(personality);
        const r = await n1.run(prOut(REGISTER, { saKey: A, specIPt: [n2.path('sda').initiator] }));
        assertGood(r, 'REGISTER SPEC_I_PT');
        const events = n1.execEvents();
        assert.equal(events.length, 4);
        const [first, ...rest] = events;
        assert.equal(first!.cdb.slice(10, 18), (24 + 4 + 24).toString(16).padStart(8, '0'));
        assert.equal(fromHex(first!.data!)[20]! & 0x08, 0x08);
        for (const e of rest) {
          assert.equal(e.cdb.slice(10, 18), '00000018');
          const list = fromHex(e.data!);
          assert.equal(list.length, 24);
          assert.equal(list[20]! & 0x08, 0);
        }
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        // The named initiator port (node2 host 3) was registered once, by the first copy.
        const node2 = san.registrations().filter((x) => x.nexusId.startsWith('node2:'));
        assert.equal(node2.length, 1);
        assert.equal(node2[0]!.key, A);
      });

      test('SPEC_I_PT refused by the first path: nothing else is sent, the guest gets the target sense', async () => {
        const { n1 } = makeSan(personality);
        const unknown = { protocol: 'sas' as const, sasAddress: 0x5001405f0000beefn };
        const r = await n1.run(prOut(REGISTER, { saKey: A, specIPt: [unknown] }));
        assertSense(r.outcome, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST);
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 1);
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
      });
    });

    // ---- RESERVE --------------------------------------------------------------------------------
    describe('RESERVE', () => {
      test('RESERVATION CONFLICT from non-holder sibling paths is not final: the holder path answers GOOD', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        assert.equal(n1.direct('sdc', prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })).kind, 'good');
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'RESERVE');
        assert.equal(r.decidedBy, 'sdc');
        assert.deepEqual(r.commands.map((c) => [c.path, c.role, c.outcome.kind]), [
          ['sda', 'primary', 'reservation-conflict'],
          ['sdb', 'failover', 'reservation-conflict'],
          ['sdc', 'failover', 'good'],
        ]);
      });

      test('holder path gone: every usable path conflicts, READ RESERVATION shows our key with that type -> GOOD', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        assert.deepEqual(n1.holders(), ['sda']);
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY }));
        assertGood(r, 'RESERVE');
        assert.equal(prOuts(r).length, 3);
        assert.equal(prIns(r, PrInAction.READ_RESERVATION).length, 1);
        assert.equal(r.decidedBy, prIns(r, PrInAction.READ_RESERVATION)[0]!.path);
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 5 });
      });

      test('holder path gone and another type asked: the target conflict is the answer', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY }));
        assert.equal(r.outcome.kind, 'reservation-conflict');
        assertFromTarget(n1, r);
      });

      test('a transport error fails over to the next path', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        n1.fault('sda', { kind: 'flaky', failures: 1 });
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.EXCLUSIVE_ACCESS }));
        assertGood(r, 'RESERVE');
        assert.deepEqual(r.commands.map((c) => [c.path, c.role, c.outcome.kind]), [
          ['sda', 'primary', 'transport-failure'],
          ['sdb', 'failover', 'good'],
        ]);
        assert.deepEqual(n1.holders(), ['sdb']);
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 3 });
      });

      test('LIO NOT READY from an unregistered sibling (LIO-BEHAVIOUR.md 1) is not final either', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assert.equal(n1.direct('sda', prOut(REGISTER, { key: A, saKey: 0n })).kind, 'good');
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'RESERVE');
        const first = r.commands[0]!;
        assert.equal(first.path, 'sda');
        if (personality === 'lio') assertSense(first.outcome, SenseKey.NOT_READY, Asc.LOGICAL_UNIT_COMMUNICATION_FAILURE);
        else assert.equal(first.outcome.kind, 'reservation-conflict');
        assert.equal(r.decidedBy, 'sdb');
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 1 });
      });

      test('when no path succeeds, the target answer beats transport failures of other paths', async () => {
        const { n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        await registerAll(n2, B);
        assertGood(await n2.run(prOut(RESERVE, { key: B, type: PrType.WRITE_EXCLUSIVE })), 'node2 RESERVE');
        for (const d of ['sdb', 'sdc', 'sdd']) n1.fault(d, { kind: 'down' });
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assert.equal(r.outcome.kind, 'reservation-conflict');
        assert.equal(r.decidedBy, 'sda');
        assertFromTarget(n1, r);
      });

      test('ghost (ALUA standby) paths come after ready ones for one-path commands', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        n1.setGhost('sda');
        n1.setGhost('sdb');
        const r = await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'RESERVE');
        assert.equal(r.decidedBy, 'sdc');
      });
    });

    // ---- RELEASE --------------------------------------------------------------------------------
    describe('RELEASE', () => {
      test('RELEASE goes down every usable path; the holder releases, the registrations stay', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
        const r = await n1.run(prOut(RELEASE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'RELEASE');
        assert.equal(prOuts(r, RELEASE).length, 4);
        assert.equal(san.reservation(), null);
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.ok(!n1.events.some((e) => e.kind === 'suspend'));
      });

      test('holder path gone: suspend, preempt our own key, release, re-register every path, resume', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        assert.deepEqual(n1.holders(), ['sda']);
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(RELEASE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY }));
        assertGood(r, 'RELEASE');
        assert.equal(san.reservation(), null);
        assert.deepEqual(keysOf(n1), { sda: null, sdb: '0xaaaa0001', sdc: '0xaaaa0001', sdd: '0xaaaa0001' });
        assert.deepEqual(r.pendingPaths, ['sda']);
        assert.deepEqual(timeline(n1), ['2@sdb', '2@sdc', '2@sdd', 'suspend', '4@sdb', '2@sdb', '6@sdb', '6@sdc', '6@sdd', 'resume'].map((s) => s));
        assert.deepEqual(
          prOuts(r).filter((c) => c.role !== 'primary' && !isUnitAttention(c.outcome)).map((c) => [c.role, c.path]),
          [['preempt-self', 'sdb'], ['release', 'sdb'], ['re-register', 'sdb'], ['re-register', 'sdc'], ['re-register', 'sdd']],
        );
        assert.equal(n1.suspended, false);
      });

      test('holder path gone: the re-registration keeps persist-through-power-loss as the guest set it', async () => {
        for (const aptpl of [true, false]) {
          const { san, n1 } = makeSan(personality);
          assertGood(await n1.run(prOut(RIEK, { saKey: A, aptpl })), 'REGISTER with APTPL (Linux sd sets it)');
          assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
          assert.equal(san.capabilities().ptplA, aptpl);
          n1.setUsable('sda', false);
          assertGood(await n1.run(prOut(RELEASE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'RELEASE');
          assert.equal(san.capabilities().ptplA, aptpl, `APTPL ${aptpl}`);
          const reRegister = n1.execEvents().filter((e) => e.cdb.startsWith('5f06') && e.data !== null && fromHex(e.data)[8 + 7] !== 0);
          assert.ok(reRegister.length >= 3);
          for (const e of reRegister) assert.equal(fromHex(e.data!)[20]! & 0x01, aptpl ? 1 : 0);
        }
      });

      test('holder path gone and a path goes down during the re-registration: it is pending too', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.EXCLUSIVE_ACCESS })), 'setup RESERVE');
        n1.setUsable('sda', false);
        n1.fault('sdd', { kind: 'down-after', commands: 1 });
        const r = await n1.run(prOut(RELEASE, { key: A, type: PrType.EXCLUSIVE_ACCESS }));
        assertGood(r, 'RELEASE');
        assert.deepEqual([...r.pendingPaths].sort(), ['sda', 'sdd']);
        assert.deepEqual(keysOf(n1), { sda: null, sdb: '0xaaaa0001', sdc: '0xaaaa0001', sdd: null });
      });

      test('a RELEASE with the wrong type from the holder: the holder path answers, no reservation moves', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        const r = await n1.run(prOut(RELEASE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assert.equal(r.decidedBy, 'sda');
        assertFromTarget(n1, r);
        // LIO answers RESERVATION CONFLICT (LIO-BEHAVIOUR.md 2), SPC-4 INVALID RELEASE OF PERSISTENT RESERVATION.
        if (personality === 'lio') assert.equal(r.outcome.kind, 'reservation-conflict');
        else assertSense(r.outcome, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 5 });
        assert.ok(!n1.events.some((e) => e.kind === 'suspend'));
      });

      test('a RELEASE with the wrong type while the holder path is gone: the new holder path judges it', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(RELEASE, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assert.notEqual(r.outcome.kind, 'good');
        assertFromTarget(n1, r);
        assert.equal(r.commands.find((c) => c.role === 'release')?.outcome, r.outcome);
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 5 });
        assert.deepEqual(keysOf(n1), { sda: null, sdb: '0xaaaa0001', sdc: '0xaaaa0001', sdd: '0xaaaa0001' });
        assert.equal(n1.suspended, false);
      });
    });

    // ---- unregister ------------------------------------------------------------------------------
    describe('unregister (REGISTER with SA key 0)', () => {
      test('while holding with the holder path up: release first, then unregister every path', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY })), 'setup RESERVE');
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: 0n }));
        assertGood(r, 'unregister');
        assert.equal(san.reservation(), null);
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
        assert.deepEqual(timeline(n1), ['2@sda', '2@sdb', '2@sdc', '2@sdd', '0@sda', '0@sdb', '0@sdc', '0@sdd']);
        assert.deepEqual(r.pendingPaths, []);
      });

      test('while holding through a path that is gone: the reservation is moved, released and the last path unregistered', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: 0n }));
        assertGood(r, 'unregister');
        assert.equal(san.reservation(), null);
        // The PREEMPT removed sda's registration too: nothing of ours is left anywhere.
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
        assert.deepEqual(timeline(n1), ['2@sdb', '2@sdc', '2@sdd', 'suspend', '4@sdb', '2@sdb', '6@sdb', '6@sdc', '6@sdd', 'resume']);
        // sda could not be told: the guard checks it (it may carry a key the PREEMPT did not name).
        assert.deepEqual(r.pendingPaths, ['sda']);
        assertFromTarget(n1, r);
      });

      test('holder gone, unregister with APTPL (as Linux sd sends it): the unregister copies carry it', async () => {
        const { san, n1 } = makeSan(personality);
        assertGood(await n1.run(prOut(RIEK, { saKey: A, aptpl: true })), 'REGISTER');
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
        n1.setUsable('sda', false);
        assertGood(await n1.run(prOut(REGISTER, { key: A, saKey: 0n, aptpl: true })), 'unregister');
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
        assert.equal(san.capabilities().ptplA, true);
      });

      test('holder gone and a usable path left with a stale key: the unregister reaches it too', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
        // sdc carries an older key (it missed a key change), sda (the holder) is gone.
        assert.equal(n1.direct('sdc', prOut(RIEK, { saKey: C })).kind, 'good');
        n1.setUsable('sda', false);
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: 0n }));
        assertGood(r, 'unregister');
        assert.equal(san.reservation(), null);
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
      });

      test('holder gone and the unregister of another path failing while it stays up: the command fails', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
        n1.setUsable('sda', false);
        // sdc fails its RELEASE and then its unregister, and a recheck finds it up.
        n1.fault('sdc', { kind: 'flaky', failures: 2 });
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: 0n }));
        assert.equal(r.outcome.kind, 'transport-failure');
        assert.equal(r.decidedBy, 'sdc');
        assertFromTarget(n1, r);
        assert.equal(n1.suspended, false);
      });

      test('not holding: a plain unregister on every path, without moving anything', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        const r = await n1.run(prOut(REGISTER, { key: A, saKey: 0n }));
        assertGood(r, 'unregister');
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
        assert.deepEqual(timeline(n1), ['0@sda', '0@sdb', '0@sdc', '0@sdd']);
      });
    });

    // ---- PREEMPT ----------------------------------------------------------------------------------
    describe('PREEMPT and PREEMPT AND ABORT', () => {
      test('preempting our own key: suspend, preempt, re-register every path, resume', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
        const r = await n1.run(prOut(PREEMPT, { key: A, saKey: A, type: PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY }));
        assertGood(r, 'PREEMPT self');
        assert.deepEqual(timeline(n1), ['suspend', '4@sda', '6@sda', '6@sdb', '6@sdc', '6@sdd', 'resume']);
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 6 });
        assert.equal(r.decidedBy, 'sda');
        assertFromTarget(n1, r);
      });

      test('preempting our own key without holding the reservation: the issuing path is re-registered too', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        const r = await n1.run(prOut(PREEMPT, { key: A, saKey: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'PREEMPT self');
        // The target removed every registration with our key, the issuer's included (SPC-4 5.13.11.4).
        assert.equal(r.commands.find((c) => c.role === 're-register' && c.path === 'sda')?.outcome.kind, 'good');
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.equal(san.reservation(), null);
      });

      test('preempting an All Registrants reservation (SA key 0): other registrants go, our paths are re-registered', async () => {
        const { san, n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        await registerAll(n2, B);
        assertGood(await n2.run(prOut(RESERVE, { key: B, type: PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS })), 'setup RESERVE AR');
        const r = await n1.run(prOut(PREEMPT, { key: A, saKey: 0n, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY }));
        assertGood(r, 'PREEMPT all');
        assert.deepEqual(keysOf(n2), allKeys(n2, null));
        assert.deepEqual(keysOf(n1), allKeys(n1, A));
        assert.deepEqual(san.reservation(), { key: A, scope: 0, type: 5 });
        assert.ok(n1.events.some((e) => e.kind === 'suspend'));
        assert.equal(n1.suspended, false);
      });

      test('fence_scsi: node2 PREEMPT AND ABORT of node1 leaves node1 with no registration on any path', async () => {
        const { san, n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'node1 RESERVE');
        await registerAll(n2, B);
        const r = await n2.run(prOut(PREEMPT_AND_ABORT, { key: B, saKey: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY }));
        assertGood(r, 'PREEMPT AND ABORT');
        assert.equal(r.commands.length, 1);
        assert.ok(!n2.events.some((e) => e.kind === 'suspend'));
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
        assert.deepEqual(keysOf(n2), allKeys(n2, B));
        assert.deepEqual(san.reservation(), { key: B, scope: 0, type: 5 });
        assert.deepEqual(n2.holders(), [r.decidedBy]);
      });

      test('PREEMPT of another key fails over on a transport error', async () => {
        const { n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        await registerAll(n2, B);
        n2.fault('sda', { kind: 'down' });
        const r = await n2.run(prOut(PREEMPT, { key: B, saKey: A, type: PrType.WRITE_EXCLUSIVE }));
        assertGood(r, 'PREEMPT');
        assert.deepEqual(r.commands.map((c) => [c.path, c.role]), [['sda', 'primary'], ['sdb', 'failover']]);
        assert.deepEqual(keysOf(n1), allKeys(n1, null));
      });

      test('the map cannot be suspended: nothing is preempted and the guest gets a transport failure', async () => {
        const { san, n1 } = makeSan(personality);
        await registerAll(n1, A);
        n1.failSuspend = new Error('dm suspend failed');
        const r = await n1.run(prOut(PREEMPT, { key: A, saKey: A, type: PrType.WRITE_EXCLUSIVE }));
        assert.equal(r.outcome.kind, 'transport-failure');
        assert.equal(r.decidedBy, null);
        assert.deepEqual(r.commands, []);
        assert.equal(san.reservation(), null);
        assert.equal(n1.suspended, false);
      });
    });

    // ---- key change while holding -------------------------------------------------------------
    test('key change while the old key holds through a path that could not be updated: PREEMPT the old key with the new', async () => {
      const { san, n1 } = makeSan(personality);
      await registerAll(n1, A);
      assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY })), 'setup RESERVE');
      n1.setUsable('sda', false);
      const r = await n1.run(prOut(REGISTER, { key: A, saKey: B }));
      assertGood(r, 'key change');
      assert.deepEqual(r.pendingPaths, ['sda']);
      assert.deepEqual(san.reservation(), { key: B, scope: 0, type: 5 });
      assert.deepEqual(keysOf(n1), { sda: null, sdb: '0xbbbb0002', sdc: '0xbbbb0002', sdd: '0xbbbb0002' });
      const preempt = r.commands.filter((c) => c.role === 'preempt-self');
      assert.equal(preempt.length, 1);
      assert.equal(saOf(preempt[0]!), PREEMPT);
      // The guest's answer is the REGISTER's, not the repair's.
      assert.equal(r.commands.find((c) => c.path === r.decidedBy && c.role === 'primary')?.outcome, r.outcome);
    });

    test('key change with every path updated: no preempt', async () => {
      const { n1 } = makeSan(personality);
      await registerAll(n1, A);
      assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
      const r = await n1.run(prOut(REGISTER, { key: A, saKey: B }));
      assertGood(r, 'key change');
      assert.ok(!r.commands.some((c) => c.role === 'preempt-self'));
      assert.deepEqual(keysOf(n1), allKeys(n1, B));
    });

    // ---- one-path commands ---------------------------------------------------------------------
    describe('one-path commands', () => {
      test('READ FULL STATUS goes down one path and returns that target data unchanged', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        const r = await n1.run(prIn(PrInAction.READ_FULL_STATUS));
        assertGood(r, 'READ FULL STATUS');
        assert.equal(r.commands.length, 1);
        assertFromTarget(n1, r);
        if (r.outcome.kind === 'good') assert.equal(decodeReadFullStatus(r.outcome.data).descriptors.length, 4);
      });

      test('PR IN fails over on a transport error and on a down path', async () => {
        const { n1 } = makeSan(personality);
        n1.fault('sda', { kind: 'down' });
        n1.fault('sdb', { kind: 'flaky', failures: 5 });
        const r = await n1.run(prIn(PrInAction.READ_KEYS));
        assertGood(r, 'READ KEYS');
        assert.deepEqual(r.commands.map((c) => [c.path, c.role]), [['sda', 'primary'], ['sdb', 'failover'], ['sdc', 'failover']]);
        assert.equal(r.decidedBy, 'sdc');
      });

      test('PR IN with every path failing: the last transport failure', async () => {
        const { n1 } = makeSan(personality);
        for (const d of n1.devs) n1.fault(d, { kind: 'down' });
        const r = await n1.run(prIn(PrInAction.READ_RESERVATION));
        assert.equal(r.outcome.kind, 'transport-failure');
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 4);
      });

      test('REGISTER AND MOVE: sibling non-holders conflict, the holder path moves the reservation', async () => {
        const { san, n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        assert.equal(n1.direct('sdc', prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })).kind, 'good');
        const dest = n2.path('sda');
        const r = await n1.run(registerAndMove({ key: A, saKey: C, to: dest.initiator, relativeTargetPortId: dest.targetPort }));
        assertGood(r, 'REGISTER AND MOVE');
        assert.equal(r.decidedBy, 'sdc');
        assert.deepEqual(r.commands.map((c) => c.path), ['sda', 'sdb', 'sdc']);
        assert.deepEqual(san.reservation(), { key: C, scope: 0, type: 1 });
        assert.deepEqual(n2.holders(), ['sda']);
      });

      test('CLEAR goes down one path (next on a transport error) and clears every registration', async () => {
        const { san, n1, n2 } = makeSan(personality);
        await registerAll(n1, A);
        await registerAll(n2, B);
        n1.fault('sda', { kind: 'flaky', failures: 1 });
        const r = await n1.run(prOut(CLEAR, { key: A }));
        assertGood(r, 'CLEAR');
        assert.deepEqual(r.commands.map((c) => c.path), ['sda', 'sdb']);
        assert.deepEqual(san.registrations(), []);
      });

      test('REPLACE LOST RESERVATION: one path, the target answer as it is', async () => {
        const { n1 } = makeSan(personality);
        await registerAll(n1, A);
        const r = await n1.run(prOut(PrOutAction.REPLACE_LOST_RESERVATION, { key: A, type: PrType.WRITE_EXCLUSIVE }));
        assertSense(r.outcome, SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 1);
      });

      test('a malformed parameter list is not fanned out: one path, the target sense byte for byte', async () => {
        const { n1 } = makeSan(personality);
        const r = await n1.run(prOutRaw(REGISTER, new Uint8Array(23)));
        assertSense(r.outcome, SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 1);
        const short = await n1.run(prOutRaw(REGISTER, new Uint8Array(24), { parameterListLength: 32 }));
        assertSense(short.outcome, SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
        assert.equal(short.commands.length, 1);
      });

      test('a CDB that is not a PR CDB goes down one path; the target judges it', async () => {
        const { n1 } = makeSan(personality);
        const r = await n1.run({ cdb: Uint8Array.from([0x12, 0, 0, 0, 36, 0]), data: null, allocationLength: 36 });
        assertFromTarget(n1, r);
        assert.equal(r.commands.length, 1);
      });
    });

    test('the injected logger hears about rechecks; without one nothing is logged', async () => {
      const { n1 } = makeSan(personality);
      n1.fault('sdb', { kind: 'down' });
      const logger = recordingLogger();
      assertGood(await n1.run(prOut(REGISTER, { saKey: A }), { logger }), 'REGISTER');
      assert.ok(logger.lines.some((l) => l.startsWith('info') && l.includes('rechecked')));
      assert.ok(logger.lines.filter((l) => l.startsWith('debug')).length >= 4);
    });
  });
}

describe('fan-out seams', () => {
  test('a PathIo that rejects counts as a failed path: rechecked, and the command goes on elsewhere', async () => {
    const { n1 } = makeSan('lio');
    const ctx = n1.context();
    const failing: FanoutContext = {
      ...ctx,
      io: {
        exec: (map, path, cdb, dataOut, allocationLength, timeoutMs) =>
          path === 'sdb' ? Promise.reject(new Error('cannot open /dev/sdb')) : n1.exec(map, path, cdb, dataOut, allocationLength, timeoutMs),
      },
      recheck: (path) => Promise.resolve(path !== 'sdb'),
    };
    const cmd = prOut(REGISTER, { saKey: A });
    const r = await executeOnMap(cmd.cdb, cmd.data, 0, failing);
    assertGood(r, 'REGISTER');
    assert.deepEqual(r.pendingPaths, ['sdb']);
    const sdb = r.commands.find((c) => c.path === 'sdb');
    assert.equal(sdb?.outcome.kind, 'transport-failure');
    if (sdb?.outcome.kind === 'transport-failure') assert.match(sdb.outcome.detail, /cannot open/);
  });

  test('a recheck that fails counts as "path up": the REGISTER fails rather than leaving a usable path without the key', async () => {
    const { n1 } = makeSan('lio');
    n1.fault('sdc', { kind: 'down' });
    const ctx: FanoutContext = { ...n1.context(), recheck: () => Promise.reject(new Error('multipathd not answering')), logger: null };
    const cmd = prOut(REGISTER, { saKey: A });
    const r = await executeOnMap(cmd.cdb, cmd.data, 0, ctx);
    assert.equal(r.outcome.kind, 'transport-failure');
    assert.equal(r.decidedBy, 'sdc');
    assert.deepEqual(r.pendingPaths, []);
  });

  test('a map that cannot be resumed: the PR change is made, the guest is told the map is stuck', async () => {
    const { n1 } = makeSan('spc4');
    await registerAll(n1, A);
    assertGood(await n1.run(prOut(RESERVE, { key: A, type: PrType.WRITE_EXCLUSIVE })), 'setup RESERVE');
    n1.failResume = new Error('dm resume failed');
    const r = await n1.run(prOut(PREEMPT, { key: A, saKey: A, type: PrType.EXCLUSIVE_ACCESS }));
    assert.equal(r.outcome.kind, 'transport-failure');
    assert.equal(r.decidedBy, null);
    if (r.outcome.kind === 'transport-failure') assert.match(r.outcome.detail, /Cannot resume map mpath-node1/);
    assert.deepEqual(n1.san.reservation(), { key: A, scope: 0, type: 3 });
    assert.deepEqual(keysOf(n1), allKeys(n1, A));
  });
});
