// Replays the PR sessions captured on the real LIO target (shared/lab/samples) against the model's
// LIO personality, one nexus per path (sda = p1, sdb = p2, SAS initiators ...01/...02, relative
// target ports 1/2, as the lab set them up), and checks status, sense and data at every step.
//
// Commands through the map: mpathpersist fans PR OUT REGISTER/RELEASE out to every path and sends
// the rest to one path (libmpathpersist, retrying a path that answers UNIT ATTENTION); a plain
// SG_IO on the map (qemu-pr-helper without multipath support, dd) reaches the one path the sample
// shows.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSample } from '../../support/paths.js';
import { parsePersistCommand, parsePrinted, parseSteps, type PersistCommand, type PrintedAnswer, type PrOp } from '../../support/sg-persist.js';
import { PrDeviceServer } from '../../../src/scsi/model/device-server.js';
import { encodePrInCdb, encodePrOutCdb } from '../../../src/scsi/cdb.js';
import { encodePrOutParams } from '../../../src/scsi/prout-params.js';
import { decodeReadFullStatus, decodeReadKeys, decodeReadReservation } from '../../../src/scsi/prin-data.js';
import { parseSense } from '../../../src/scsi/sense.js';
import { fromHex, hex } from '../../../src/scsi/bytes.js';
import { decodePrCdb } from '../../../src/scsi/cdb.js';
import type { ScsiOutcome } from '../../../src/scsi/types.js';

const PATHS: Record<string, string> = { '/dev/sda': 'p1', '/dev/sdb': 'p2' };
const MAP = '/dev/mapper/mpatha';

function makeLun(): PrDeviceServer {
  const lun = new PrDeviceServer({ personality: 'lio' });
  for (const n of [1, 2]) {
    lun.addNexus({ id: `p${n}`, initiator: { protocol: 'sas', sasAddress: 0x5001405f00000000n + BigInt(n) }, relativeTargetPortId: n });
  }
  return lun;
}

function cdbAndParams(pr: PrOp): { cdb: Uint8Array; params: Uint8Array } {
  const noParams = new Uint8Array(0);
  const basic = (key: bigint, sak: bigint) => encodePrOutParams({ key, serviceActionKey: sak, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
  switch (pr.op) {
    case 'read-keys':
      return { cdb: encodePrInCdb({ serviceAction: 0, allocationLength: 8192 }), params: noParams };
    case 'read-reservation':
      return { cdb: encodePrInCdb({ serviceAction: 1, allocationLength: 8192 }), params: noParams };
    case 'read-full-status':
      return { cdb: encodePrInCdb({ serviceAction: 3, allocationLength: 8192 }), params: noParams };
    case 'register':
      return { cdb: encodePrOutCdb({ serviceAction: 0, parameterListLength: 24 }), params: basic(pr.rk, pr.sark) };
    case 'register-ignore':
      return { cdb: encodePrOutCdb({ serviceAction: 6, parameterListLength: 24 }), params: basic(0n, pr.sark) };
    case 'reserve':
      return { cdb: encodePrOutCdb({ serviceAction: 1, type: pr.type, parameterListLength: 24 }), params: basic(pr.rk, 0n) };
    case 'release':
      return { cdb: encodePrOutCdb({ serviceAction: 2, type: pr.type, parameterListLength: 24 }), params: basic(pr.rk, 0n) };
    case 'clear':
      return { cdb: encodePrOutCdb({ serviceAction: 3, parameterListLength: 24 }), params: basic(pr.rk, 0n) };
  }
}

/** libmpathpersist retries a path that answers UNIT ATTENTION (prout/prin_do_scsi_ioctl). */
function runRetryingUa(lun: PrDeviceServer, nexus: string, cdb: Uint8Array, params: Uint8Array): ScsiOutcome {
  let o = lun.execute(nexus, cdb, params);
  for (let i = 0; i < 3 && o.kind === 'check-condition' && parseSense(o.sense).key === 6; i++) o = lun.execute(nexus, cdb, params);
  return o;
}

function execute(lun: PrDeviceServer, c: PersistCommand, mapPath: string): ScsiOutcome {
  const { cdb, params } = cdbAndParams(c.pr);
  if (c.device !== MAP) {
    const nexus = PATHS[c.device];
    assert.ok(nexus, `unknown device ${c.device}`);
    return lun.execute(nexus, cdb, params);
  }
  if (c.tool === 'mpathpersist' && (c.pr.op === 'register' || c.pr.op === 'register-ignore' || c.pr.op === 'release')) {
    const results = ['p1', 'p2'].map((p) => runRetryingUa(lun, p, cdb, params));
    return results.find((r) => r.kind !== 'good') ?? results[0]!;
  }
  return c.tool === 'mpathpersist' ? runRetryingUa(lun, mapPath, cdb, params) : lun.execute(mapPath, cdb, params);
}

/** The model's answer in the same shape as what sg_persist printed. */
function answerOf(pr: PrOp, o: ScsiOutcome): PrintedAnswer {
  if (o.kind === 'check-condition') {
    const s = parseSense(o.sense);
    return { kind: 'sense', senseKey: s.key, asc: s.asc, ascq: s.ascq };
  }
  assert.equal(o.kind, 'good', `unexpected outcome ${o.kind}`);
  if (o.kind !== 'good') throw new Error('unreachable');
  switch (pr.op) {
    case 'read-keys': {
      const d = decodeReadKeys(o.data);
      return { kind: 'keys', generation: d.generation, keys: d.keys };
    }
    case 'read-reservation': {
      const d = decodeReadReservation(o.data);
      return { kind: 'reservation', generation: d.generation, reservation: d.reservation ? { key: d.reservation.key, type: d.reservation.type } : null };
    }
    case 'read-full-status': {
      const d = decodeReadFullStatus(o.data);
      return {
        kind: 'full-status',
        generation: d.generation,
        descriptors: d.descriptors.map((x) => ({
          key: x.key,
          allTgPt: x.allTgPt,
          relativeTargetPortId: x.relativeTargetPortId,
          holder: x.reservationHolder,
          type: x.reservationHolder ? x.type : null,
          sasAddress: x.transportId.protocol === 'sas' ? x.transportId.sasAddress : -1n,
        })),
      };
    }
    default:
      return { kind: 'none' };
  }
}

/** sg3_utils exit status for an outcome (sg_lib.h SG_LIB_CAT_*). */
function exitStatusOf(o: ScsiOutcome): number {
  if (o.kind === 'good') return 0;
  if (o.kind === 'reservation-conflict') return 24;
  if (o.kind === 'check-condition') return parseSense(o.sense).key;
  return 99;
}

const WRITE_10 = Uint8Array.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]);

/** Replay one sample file. `mapPathFor` picks the path a non-fanned-out map command reached. */
function replay(lun: PrDeviceServer, name: string, mapPathFor: (stepIndex: number) => string = () => 'p1'): number {
  let checked = 0;
  parseSteps(readSample(name)).forEach((step, i) => {
    const where = `${name}:${step.line} ${step.command}`;
    if (step.command.startsWith('dd ')) {
      const of = /of=(\S+)/.exec(step.command)![1]!;
      const nexuses = of === MAP ? ['p1', 'p2'] : [PATHS[of]!];
      for (const n of nexuses) {
        // dd through the map may reach either path: each must give the answer dd saw.
        const o = lun.execute(n, WRITE_10, new Uint8Array(4096));
        assert.equal(o.kind === 'good' ? 0 : 1, step.rc, `${where} via ${n}: ${o.kind}`);
      }
      checked++;
      return;
    }
    const c = parsePersistCommand(step.command);
    assert.ok(c, `${where}: a step the replay does not understand`);
    const o = execute(lun, c, mapPathFor(i));
    assert.equal(exitStatusOf(o), step.rc, `${where}: exit status`);
    const printed = parsePrinted(step.output);
    if (printed.kind !== 'none' || o.kind !== 'good') assert.deepEqual(answerOf(c.pr, o), printed, where);
    checked++;
  });
  return checked;
}

test('pr_single_path.txt replays identically on the LIO personality', () => {
  const lun = makeLun();
  const steps = replay(lun, 'pr_single_path.txt');
  assert.equal(steps, 4);
  // LIO 3: the unregister at the end leaves PRGENERATION at 1.
  assert.equal(lun.snapshot().generation, 1);
});

test('pr_multipath.txt replays identically, continuing the same LU after pr_single_path.txt', () => {
  // Captured in the same boot right after pr_single_path.txt: it starts from that session's end
  // state (no registrations, PRGENERATION 1, which is why the sample's first READ KEYS shows 3).
  const lun = makeLun();
  replay(lun, 'pr_single_path.txt');
  const steps = replay(lun, 'pr_multipath.txt');
  assert.equal(steps, parseSteps(readSample('pr_multipath.txt')).length);
  assert.ok(steps >= 18);
});

test('qemu_pr_helper.txt: every payload the helper returned decodes and the model reproduces the session', () => {
  const text = readSample('qemu_pr_helper.txt');
  const lun = makeLun();
  // Captured in a separate boot whose LU had PRGENERATION 6 and no registrations. Bring the model
  // there the way LIO gets there: REGISTER bumps, unregister does not (LIO 3).
  const basic = (key: bigint, sak: bigint) => encodePrOutParams({ key, serviceActionKey: sak, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
  const reg = encodePrOutCdb({ serviceAction: 0, parameterListLength: 24 });
  for (let i = 0; i < 6; i++) {
    assert.equal(lun.execute('p1', reg, basic(0n, 0x99n)).kind, 'good');
    assert.equal(lun.execute('p1', reg, basic(0x99n, 0n)).kind, 'good');
  }
  assert.equal(lun.snapshot().generation, 6);

  // Each prh_client command: the CDB and parameter list it sent, the status and payload it got.
  // The sample says which path dm picked: the REGISTER reached sdb (relative port 2).
  const blocks = [...text.matchAll(/op=(\w+) cdb=([0-9a-f]+) param=([0-9a-f-]+)\nreply: scsi_status=0x([0-9a-f]+) payload_size=(\d+)[^\n]*\n(?:payload: ([0-9a-f]+))?/g)];
  assert.ok(blocks.length >= 4, `found ${blocks.length} exchanges`);
  let exchanges = 0;
  const stepsBefore = blocks.filter((b) => b.index! < text.indexOf('8x RESERVE'));
  for (const b of stepsBefore) {
    const [, op, cdbHex, paramHex, status, size, payload] = b;
    const cdb = fromHex(cdbHex!);
    assert.equal(cdb.length, 16, 'QEMU sends 16-byte CDBs');
    const parsed = decodePrCdb(cdb);
    const params = paramHex === '-' ? new Uint8Array(0) : fromHex(paramHex!);
    const o = lun.execute('p2', cdb.subarray(0, 10), params);
    assert.equal(o.kind === 'good' ? 0 : -1, parseInt(status!, 16), `${op}: status`);
    if (parsed.opcode === 0x5e) {
      assert.ok(o.kind === 'good');
      if (o.kind === 'good') {
        assert.equal(o.data.length, Number(size), `${op}: payload size`);
        assert.equal(hex(o.data), payload, `${op}: payload`);
      }
    }
    exchanges++;
  }
  assert.ok(exchanges >= 4);

  // "Path 1 (sda) registers + holds a WE-RO reservation" and sdb's registration was dropped; then
  // 8 RESERVEs through the map: via sda GOOD, via sdb RESERVATION CONFLICT (4 and 4).
  assert.equal(lun.execute('p1', reg, basic(0n, 0x5150n)).kind, 'good');
  assert.equal(lun.execute('p2', reg, basic(0x5150n, 0n)).kind, 'good');
  const reserve = encodePrOutCdb({ serviceAction: 1, type: 5, parameterListLength: 24 });
  assert.equal(lun.execute('p1', reserve, basic(0x5150n, 0n)).kind, 'good');
  const counts = { good: 0, conflict: 0 };
  for (let i = 0; i < 8; i++) {
    const o = lun.execute(i % 2 === 0 ? 'p1' : 'p2', reserve, basic(0x5150n, 0n));
    if (o.kind === 'good') counts.good++;
    else if (o.kind === 'reservation-conflict') counts.conflict++;
  }
  assert.deepEqual(counts, { good: 4, conflict: 4 }, 'the lab saw 4 GOOD and 4 RESERVATION CONFLICT');
  // The rest of the sample is sg_persist on the paths: release via sda GOOD; via sdb (unregistered,
  // no reservation left) NOT READY / LOGICAL UNIT COMMUNICATION FAILURE (LIO 1); clear via sda; the
  // helper's READ KEYS then shows generation 9 and no keys.
  const tail = text.slice(text.indexOf('LIO quirk'));
  replayTail(lun, tail);
  const last = blocks[blocks.length - 1]!;
  const readKeys = lun.execute('p2', fromHex(last[2]!).subarray(0, 10));
  assert.ok(readKeys.kind === 'good');
  if (readKeys.kind === 'good') assert.equal(hex(readKeys.data), last[6]);
});

function replayTail(lun: PrDeviceServer, text: string): void {
  for (const step of parseSteps(text)) {
    const c = parsePersistCommand(step.command.replace(/ -n| -v/g, ''));
    if (!c) continue;
    const o = execute(lun, c, 'p1');
    assert.equal(exitStatusOf(o), step.rc, step.command);
    const printed = parsePrinted(step.output);
    if (printed.kind === 'sense') assert.deepEqual(answerOf(c.pr, o), printed, step.command);
  }
}

test('the replay is sensitive: a model answering SPC-4 strictly diverges from the LIO sessions', () => {
  const lun = new PrDeviceServer({ personality: 'spc4' });
  for (const n of [1, 2]) {
    lun.addNexus({ id: `p${n}`, initiator: { protocol: 'sas', sasAddress: 0x5001405f00000000n + BigInt(n) }, relativeTargetPortId: n });
  }
  replay(lun, 'pr_single_path.txt'); // same answers, but PRGENERATION moves on unregister
  assert.equal(lun.snapshot().generation, 2);
  assert.throws(() => replay(lun, 'pr_multipath.txt'), assert.AssertionError);
});
