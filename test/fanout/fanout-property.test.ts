// Property test of the fan-out: random sequences of guest PR commands from two cluster nodes,
// each through its own map of the same LU (the PR model, both personalities), with random path
// faults per step (down, down after k commands, flaky, reply lost after execution, injected
// conflicts, paths the map calls unusable). After every step:
//  - the guest's answer is a value a target produced on the path named in decidedBy (the very
//    outcome object for anything but GOOD; a GOOD on that path for GOOD), or, when decidedBy is
//    null, a DID_NO_CONNECT transport failure at a moment no path of the map was usable;
//  - commands only went to paths the map called usable, and never again to a path after a
//    recheck found it down; the result lists exactly the commands the paths saw;
//  - pendingPaths names only paths that were unusable or found down;
//  - the map is never left suspended, and suspend/resume alternate;
//  - a GOOD REGISTER / REGISTER AND IGNORE leaves every path that is not pending with exactly the
//    new key (none for key 0), read from the model with READ FULL STATUS;
//  - with no fault in the step, a GOOD RELEASE leaves no reservation held by that key and type.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { FanoutResult } from '../../src/fanout/types.js';
import { HostStatus, PrOutAction } from '../../src/scsi/constants.js';
import type { Personality } from '../../src/scsi/model/device-server.js';
import type { ReservationInfo } from '../../src/scsi/types.js';
import { ModelSan, prIn, prOut, type GuestCommand, type ModelNode, type PathFault } from './model-paths.js';

const NODE_KEYS: Readonly<Record<string, readonly bigint[]>> = {
  node1: [0n, 0xa1n, 0xa2n],
  node2: [0n, 0xb1n, 0xb2n],
};
const MAX_PATHS = 4;

/**
 * A key named symbolically: an index into the node's keys (0 = key 0), "current" for the key the
 * node's paths hold now (the most common one; 0 when none), "other" for the other node's current
 * key. Resolved when the step runs, so sequences reach registered and reserved states often.
 */
type KeyRef = number | 'current' | 'other';

type Op =
  | { readonly op: 'register'; readonly ignore: boolean; readonly from: KeyRef; readonly to: number }
  | { readonly op: 'reserve'; readonly key: KeyRef; readonly type: TypeRef }
  | { readonly op: 'release'; readonly key: KeyRef; readonly type: TypeRef }
  | { readonly op: 'preempt'; readonly key: KeyRef; readonly victim: KeyRef; readonly type: TypeRef; readonly abort: boolean }
  | { readonly op: 'clear'; readonly key: KeyRef }
  | { readonly op: 'read'; readonly sa: number };

interface Step {
  readonly node: 'node1' | 'node2';
  readonly op: Op;
  readonly faults: readonly (PathFault | null)[];
  readonly unusable: readonly boolean[];
}

const keyIdx = fc.integer({ min: 0, max: 2 });
const ownKey: fc.Arbitrary<KeyRef> = fc.oneof({ weight: 4, arbitrary: fc.constant('current' as const) }, { weight: 1, arbitrary: keyIdx });
const victimKey: fc.Arbitrary<KeyRef> = fc.oneof(
  { weight: 2, arbitrary: fc.constant('current' as const) },
  { weight: 2, arbitrary: fc.constant('other' as const) },
  { weight: 1, arbitrary: keyIdx },
);
/** A reservation type, or "held": the type of the reservation now (5 when there is none). */
type TypeRef = number | 'held';
const typeArb: fc.Arbitrary<TypeRef> = fc.oneof(
  { weight: 3, arbitrary: fc.constant('held' as const) },
  { weight: 2, arbitrary: fc.constantFrom(1, 3, 5, 6, 7, 8) },
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('register' as const), ignore: fc.boolean(), from: ownKey, to: keyIdx }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('reserve' as const), key: ownKey, type: typeArb }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('release' as const), key: ownKey, type: typeArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('preempt' as const), key: ownKey, victim: victimKey, type: typeArb, abort: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('clear' as const), key: ownKey }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('read' as const), sa: fc.integer({ min: 0, max: 3 }) }) },
);
const faultArb: fc.Arbitrary<PathFault | null> = fc.oneof(
  { weight: 6, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.constant({ kind: 'down' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('down-after' as const), commands: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('flaky' as const), failures: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('lost-reply' as const), failures: fc.constant(1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('conflict' as const), count: fc.integer({ min: 1, max: 2 }) }) },
);
const NO_FAULTS: readonly (PathFault | null)[] = Array.from({ length: MAX_PATHS }, () => null);
const ALL_USABLE: readonly boolean[] = Array.from({ length: MAX_PATHS }, () => false);
// Half the steps run on healthy paths, half with random faults and unusable paths.
const faultsArb = fc.oneof(fc.constant(NO_FAULTS), fc.array(faultArb, { minLength: MAX_PATHS, maxLength: MAX_PATHS }));
const unusableArb = fc.oneof(
  { weight: 4, arbitrary: fc.constant(ALL_USABLE) },
  // The first path (where a reservation made through the map usually lives) gone.
  { weight: 1, arbitrary: fc.constant([true, ...ALL_USABLE.slice(1)]) },
  {
    weight: 2,
    arbitrary: fc.array(fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }), {
      minLength: MAX_PATHS,
      maxLength: MAX_PATHS,
    }),
  },
);
const stepArb: fc.Arbitrary<Step> = fc.record({
  node: fc.constantFrom('node1' as const, 'node2' as const),
  op: opArb,
  faults: faultsArb,
  unusable: unusableArb,
});

/** The key the node's paths hold most often (0 when none). */
function currentKey(node: ModelNode): bigint {
  const counts = new Map<bigint, number>();
  for (const k of node.keys().values()) if (k !== null) counts.set(k, (counts.get(k) ?? 0) + 1);
  let best = 0n;
  let n = 0;
  for (const [k, c] of counts) if (c > n) [best, n] = [k, c];
  return best;
}

function resolveKey(san: ModelSan, nodeName: string, ref: KeyRef): bigint {
  if (ref === 'current') return currentKey(san.node(nodeName));
  if (ref === 'other') return currentKey(san.node(nodeName === 'node1' ? 'node2' : 'node1'));
  return NODE_KEYS[nodeName]![ref]!;
}

/** The step with every key resolved: what the guest sends. */
interface Resolved {
  readonly cmd: GuestCommand;
  readonly key: bigint;
  readonly saKey: bigint;
  readonly type: number;
}

function command(san: ModelSan, node: string, op: Op): Resolved {
  const keys = NODE_KEYS[node]!;
  const k = (ref: KeyRef): bigint => resolveKey(san, node, ref);
  const t = (ref: TypeRef): number => (ref === 'held' ? (san.reservation()?.type ?? 5) : ref);
  switch (op.op) {
    case 'register': {
      const key = op.ignore ? 0n : k(op.from);
      const saKey = keys[op.to]!;
      return { cmd: prOut(op.ignore ? PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY : PrOutAction.REGISTER, { key, saKey }), key, saKey, type: 0 };
    }
    case 'reserve':
      return { cmd: prOut(PrOutAction.RESERVE, { key: k(op.key), type: t(op.type) }), key: k(op.key), saKey: 0n, type: t(op.type) };
    case 'release':
      return { cmd: prOut(PrOutAction.RELEASE, { key: k(op.key), type: t(op.type) }), key: k(op.key), saKey: 0n, type: t(op.type) };
    case 'preempt': {
      const key = k(op.key);
      const saKey = k(op.victim);
      return { cmd: prOut(op.abort ? PrOutAction.PREEMPT_AND_ABORT : PrOutAction.PREEMPT, { key, saKey, type: t(op.type) }), key, saKey, type: t(op.type) };
    }
    case 'clear':
      return { cmd: prOut(PrOutAction.CLEAR, { key: k(op.key) }), key: k(op.key), saKey: 0n, type: 0 };
    case 'read':
      return { cmd: prIn(op.sa), key: 0n, saKey: 0n, type: 0 };
  }
}

/** What the LU looked like from the node before the step: its paths' keys and the reservation. */
interface Before {
  readonly keys: ReadonlyMap<string, bigint | null>;
  readonly reservation: ReservationInfo | null;
}

/** How often each liveness expectation applied (the run must exercise them). */
export const coverage: Record<string, number> = {};
function covered(what: string): void {
  coverage[what] = (coverage[what] ?? 0) + 1;
}

/**
 * Liveness: with no I/O fault in the step (paths the map calls unusable are allowed), a command
 * that a single-path disk would accept from this host gets GOOD through the map. The host is
 * "registered with K" when some usable path of it holds K.
 */
function expectedGood(node: ModelNode, step: Step, rs: Resolved, before: Before): string | null {
  if (!step.faults.every((f) => f === null)) return null;
  const usable = node.devs.filter((d) => node.isUsable(d));
  if (usable.length === 0) return null;
  const has = (k: bigint): boolean => usable.some((d) => before.keys.get(d) === k);
  const op = step.op;
  const k = rs.key;
  switch (op.op) {
    case 'register':
      if (op.ignore) return 'REGISTER AND IGNORE';
      if (k === 0n) return usable.some((d) => before.keys.get(d) === null) ? 'REGISTER from an unregistered path' : null;
      return has(k) ? 'REGISTER with the registered key' : null;
    case 'reserve': {
      if (k === 0n || !has(k)) return null;
      const r = before.reservation;
      if (r === null) return 'RESERVE with no reservation';
      if (r.type === rs.type && r.key === k) return 'RESERVE repeated by the holder';
      return null;
    }
    case 'release': {
      const r = before.reservation;
      if (k === 0n || !has(k) || r === null || r.key !== k || r.type !== rs.type) return null;
      return node.devs.some((d) => !node.isUsable(d) && before.keys.get(d) === k) ? 'RELEASE, maybe with the holder gone' : 'RELEASE by the holder';
    }
    case 'preempt':
      return k !== 0n && rs.saKey === k && has(k) ? 'PREEMPT of our own key' : null;
    default:
      return null;
  }
}

function checkStep(node: ModelNode, step: Step, rs: Resolved, r: FanoutResult, label: string, before?: Before): void {
  const cmd = rs.cmd;
  const execs = node.execEvents();
  const down = new Set<string>();
  // Commands only to usable paths, never after a recheck found the path down.
  for (const e of node.events) {
    if (e.kind === 'recheck' && !e.up) down.add(e.path);
    if (e.kind !== 'exec') continue;
    assert.ok(e.usable, `${label}: command sent to ${e.path}, which the map calls unusable`);
    assert.ok(!down.has(e.path), `${label}: command sent to ${e.path} after a recheck found it down`);
  }
  // The result lists exactly what the paths saw.
  assert.equal(r.commands.length, execs.length, `${label}: commands listed vs executed`);
  for (const e of execs) {
    assert.ok(r.commands.some((c) => c.outcome === e.outcome && c.path === e.path && c.cdb === e.cdb), `${label}: ${e.path} ${e.cdb} not listed`);
  }
  // Provenance of the answer.
  if (r.decidedBy === null) {
    assert.equal(r.outcome.kind, 'transport-failure', `${label}: no deciding path but ${r.outcome.kind}`);
    if (r.outcome.kind === 'transport-failure') assert.equal(r.outcome.hostStatus, HostStatus.DID_NO_CONNECT, label);
    for (const p of node.map().paths) assert.ok(!p.usable || down.has(p.dev), `${label}: "no usable path" while ${p.dev} was usable`);
  } else {
    const produced = execs.filter((e) => e.path === r.decidedBy).map((e) => e.outcome);
    if (r.outcome.kind === 'good' && cmd.cdb[0] === 0x5f) {
      assert.ok(produced.some((o) => o.kind === 'good'), `${label}: GOOD but ${r.decidedBy} produced no GOOD`);
    } else {
      assert.ok(produced.includes(r.outcome), `${label}: ${JSON.stringify(r.outcome)} is not an answer ${r.decidedBy} produced`);
    }
  }
  // Pending paths are paths that did not get the command.
  for (const p of r.pendingPaths) assert.ok(!node.isUsable(p) || down.has(p), `${label}: ${p} pending but usable and up`);
  // Suspend / resume.
  const sr = node.events.filter((e) => e.kind === 'suspend' || e.kind === 'resume').map((e) => e.kind);
  sr.forEach((k, i) => assert.equal(k, i % 2 === 0 ? 'suspend' : 'resume', `${label}: suspend/resume order ${sr.join(',')}`));
  assert.equal(node.suspended, false, `${label}: map left suspended`);
  // A successful registration is on every path that is not pending.
  if (step.op.op === 'register' && r.outcome.kind === 'good') {
    const want = rs.saKey;
    for (const [dev, key] of node.keys()) {
      if (r.pendingPaths.includes(dev)) continue;
      assert.equal(key, want === 0n ? null : want, `${label}: ${dev} has ${key?.toString(16) ?? 'no key'} after a GOOD register of ${want.toString(16)}`);
    }
  }
  if (before) {
    const expect = expectedGood(node, step, rs, before);
    if (expect !== null) {
      covered(expect);
      assert.equal(r.outcome.kind, 'good', `${label}: ${expect} should be GOOD, got ${JSON.stringify(r.outcome)}`);
    }
    // Preempting our own key (or an All Registrants reservation with key 0) re-registers our paths.
    const op = step.op;
    if (op.op === 'preempt' && r.outcome.kind === 'good' && rs.key !== 0n) {
      const k = rs.key;
      const victim = rs.saKey;
      if (victim === k || (victim === 0n && before.reservation?.key === 0n)) {
        covered(victim === k ? 'paths after PREEMPT self' : 'paths after PREEMPT of All Registrants');
        for (const [dev, key] of node.keys()) {
          if (r.pendingPaths.includes(dev)) continue;
          assert.equal(key, k, `${label}: ${dev} has ${key?.toString(16) ?? 'no key'} after a GOOD PREEMPT of our own registrations`);
        }
      }
    }
  }
  // With no I/O fault (paths the map calls unusable are allowed: the holder may be one of them)...
  const noIoFault = step.faults.every((f) => f === null);
  // ...a GOOD RELEASE leaves no reservation held by that key and type,
  if (step.op.op === 'release' && r.outcome.kind === 'good' && noIoFault) {
    const key = rs.key;
    const res = node.san.reservation();
    if (key !== 0n) assert.ok(!(res && res.key === key && res.type === rs.type), `${label}: GOOD RELEASE but ${key.toString(16)} still holds type ${rs.type}`);
  }
  // ...and a GOOD key change moves a reservation the old key held to the new key.
  if (step.op.op === 'register' && !step.op.ignore && r.outcome.kind === 'good' && noIoFault && before) {
    const res = node.san.reservation();
    if (rs.key !== 0n && rs.saKey !== 0n && before.reservation?.key === rs.key) {
      covered('key change while holding');
      assert.equal(res?.key, rs.saKey, `${label}: the reservation of the old key did not follow the key change`);
    }
  }
}

/**
 * Where a sequence starts: an empty LU, node1 registered, node1 holding a Registrants Only
 * reservation, or both nodes registered and node2 holding an All Registrants one. The prefix runs
 * through the fan-out on healthy paths and is checked like any step.
 */
type Prefix = 'empty' | 'registered' | 'reserved' | 'all-registrants';
const PREFIX_STEPS: Readonly<Record<Prefix, readonly Op[]>> = {
  empty: [],
  registered: [{ op: 'register', ignore: true, from: 0, to: 1 }],
  reserved: [
    { op: 'register', ignore: true, from: 0, to: 1 },
    { op: 'reserve', key: 'current', type: 5 },
  ],
  'all-registrants': [
    { op: 'register', ignore: true, from: 0, to: 1 },
    { op: 'register', ignore: true, from: 0, to: 1 },
    { op: 'reserve', key: 'current', type: 7 },
  ],
};

export async function runSequence(personality: Personality, steps: readonly Step[], prefix: Prefix = 'empty'): Promise<void> {
  const san = new ModelSan({
    personality,
    nodes: [
      { name: 'node1', hosts: [1, 2], targetPorts: 2 },
      { name: 'node2', hosts: [3], targetPorts: 2 },
    ],
  });
  const healthy = { faults: NO_FAULTS, unusable: ALL_USABLE };
  const setup: Step[] = PREFIX_STEPS[prefix].map((op, i) => ({ node: prefix === 'all-registrants' && i !== 0 ? 'node2' : 'node1', op, ...healthy }));
  for (const [i, step] of [...setup, ...steps].entries()) {
    const node = san.node(step.node);
    node.devs.forEach((dev, j) => {
      node.fault(dev, step.faults[j] ?? null);
      node.setUsable(dev, !(step.unusable[j] ?? false));
    });
    const rs = command(san, step.node, step.op);
    const before: Before = { keys: node.keys(), reservation: san.reservation() };
    const r = await node.run(rs.cmd);
    const label = `${personality} step ${i} ${step.node} ${JSON.stringify(step.op)} key 0x${rs.key.toString(16)} SA key 0x${rs.saKey.toString(16)} type ${rs.type}`;
    checkStep(node, step, rs, r, label, before);
    for (const dev of node.devs) {
      node.fault(dev, null);
      node.setUsable(dev, true);
    }
  }
}

for (const personality of ['lio', 'spc4'] as const) {
  test(`fan-out invariants hold over random command sequences with random path faults (${personality})`, async () => {
    for (const k of Object.keys(coverage)) delete coverage[k];
    await fc.assert(
      fc.asyncProperty(
        fc.array(stepArb, { minLength: 3, maxLength: 16 }),
        fc.constantFrom<Prefix>('empty', 'registered', 'reserved', 'reserved', 'all-registrants'),
        (steps, prefix) => runSequence(personality, steps, prefix),
      ),
      { numRuns: Number(process.env['FANOUT_PROPERTY_RUNS'] ?? 300) },
    );
    if (process.env['FANOUT_COVERAGE']) console.error(personality, coverage);
    // Every expectation was exercised (the rarest about ten times in 300 runs).
    for (const what of [
      'REGISTER AND IGNORE',
      'REGISTER from an unregistered path',
      'REGISTER with the registered key',
      'RESERVE with no reservation',
      'RESERVE repeated by the holder',
      'RELEASE by the holder',
      'RELEASE, maybe with the holder gone',
      'PREEMPT of our own key',
      'paths after PREEMPT self',
      'key change while holding',
    ]) {
      assert.ok((coverage[what] ?? 0) >= 1, `${what}: exercised ${coverage[what] ?? 0} times`);
    }
  });
}

test('the invariants can fail: made-up sense, a lost key, a refused command that should succeed', async () => {
  const san = new ModelSan({ personality: 'lio', nodes: [{ name: 'node1', hosts: [1], targetPorts: 2 }] });
  const node = san.node('node1');
  const healthy = { faults: [null, null], unusable: [false, false] };
  // An answer no path produced.
  const read: Step = { node: 'node1', op: { op: 'read', sa: 0 }, ...healthy };
  const rsRead = command(san, 'node1', read.op);
  const r = await node.run(rsRead.cmd);
  const forged: FanoutResult = { ...r, outcome: { kind: 'check-condition', sense: Uint8Array.from([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0]) } };
  assert.throws(() => checkStep(node, read, rsRead, forged, 'forged'), /is not an answer/);
  // A GOOD registration that is missing on a path.
  const register: Step = { node: 'node1', op: { op: 'register', ignore: true, from: 0, to: 1 }, ...healthy };
  const rsReg = command(san, 'node1', register.op);
  const reg = await node.run(rsReg.cmd);
  node.direct('sdb', prOut(PrOutAction.REGISTER, { key: 0xa1n, saKey: 0n }));
  assert.throws(() => checkStep(node, register, rsReg, reg, 'lost key'), /has no key after a GOOD register/);
  // A REGISTER with the key a healthy path holds, answered RESERVATION CONFLICT (a real answer of sdb).
  const before: Before = { keys: node.keys(), reservation: san.reservation() };
  const change: Step = { node: 'node1', op: { op: 'register', ignore: false, from: 'current', to: 2 }, ...healthy };
  const rsChange = command(san, 'node1', change.op);
  const refused = await node.run(prOut(PrOutAction.REGISTER, { key: 0xa2n, saKey: 0xa1n }));
  assert.equal(refused.outcome.kind, 'reservation-conflict');
  assert.throws(() => checkStep(node, change, rsChange, refused, 'refused', before), /should be GOOD/);
});
