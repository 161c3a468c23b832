import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ErrorCode, ProtocolError } from '../../src/errors.js';
import { ScsiStatus } from '../../src/scsi/constants.js';
import type { PrHelperAnswer } from '../../src/socket/pr-helper-session.js';
import { PR_HELPER_SENSE_SIZE, type PrHelperReply, decodeFeatures } from '../../src/socket/pr-helper-wire.js';
import {
  type Chunk,
  Harness,
  type WireRequest,
  params,
  patternData,
  prIn,
  prOut,
  requestCatalogue,
  run,
  split,
  transferLength,
  withFds,
} from './session-harness.js';

interface Outcome {
  replies: PrHelperReply[];
  close: { code: string; field: string } | null | undefined;
}

function outcome(h: Harness): Outcome {
  const r = h.closeReason;
  return { replies: h.replies, close: r === undefined ? undefined : r === null ? null : { code: r.code, field: r.field } };
}

/** Cut points that put the feature word and each request in a chunk of its own. */
function boundaries(requests: readonly WireRequest[]): number[] {
  let cut = 4;
  const cuts = [4];
  for (const r of requests) {
    cut += r.bytes.length;
    cuts.push(cut);
  }
  return cuts;
}

/** One chunk per request (and one for the feature word). */
function separate(requests: WireRequest[]): Chunk[] {
  return split(requests, boundaries(requests)).chunks;
}

/** Each request in its own chunk: the reference a split stream must reproduce. */
async function reference(requests: readonly WireRequest[]): Promise<Outcome> {
  const h = new Harness();
  await run(h, split(requests, boundaries(requests)).chunks);
  assertLedgerClean(h);
  return outcome(h);
}

function assertLedgerClean(h: Harness): void {
  assert.deepEqual(h.ledger.stillOpen(), [], 'every fd is closed exactly once (by the session or by the handler)');
  assert.equal(h.closeCount, 1, 'onClose is called exactly once');
  assert.equal(h.writtenAfterClose, 0, 'nothing is written after close');
}

function startsPerChunk(chunks: readonly Chunk[], cdbStarts: readonly number[]): number[] {
  let o = 0;
  return chunks.map((c) => {
    const from = o;
    o += c.bytes.length;
    return cdbStarts.filter((s) => s >= from && s < o).length;
  });
}

/**
 * A split stream is answered exactly like the reference when no chunk starts two CDBs; otherwise
 * (ambiguous fd attribution) it may stop early, but what it answered is a prefix of the reference.
 */
async function checkSplit(requests: readonly WireRequest[], cuts: readonly number[], ref: Outcome): Promise<void> {
  const { chunks, cdbStarts } = split(requests, cuts);
  const h = new Harness();
  await run(h, chunks);
  assertLedgerClean(h);
  const got = outcome(h);
  const ambiguous = startsPerChunk(chunks, cdbStarts).some((n) => n >= 2) && chunks.some((c) => c.fdCount > 0);
  if (!ambiguous) {
    assert.deepEqual(got, ref, `cuts ${cuts.join(',')}`);
  } else {
    assert.deepEqual(got.replies, ref.replies.slice(0, got.replies.length), `cuts ${cuts.join(',')}: replies are a prefix`);
    if (got.replies.length < ref.replies.length) assert.equal(got.close?.code, ErrorCode.PROTOCOL);
  }
}

describe('PrHelperSession: handshake', () => {
  it('writes the 4-byte feature word 0 on start and nothing else', () => {
    const h = new Harness();
    assert.equal(h.decoder.features, 0);
    assert.equal(h.replies.length, 0);
  });

  it('closes with a violation when the client requests a feature bit', async () => {
    const h = new Harness();
    await run(h, split([prIn(0, 24)], [4], 1).chunks, { end: false });
    assert.ok(h.closeReason instanceof ProtocolError);
    assert.equal(h.closeReason.field, 'requested features');
    assert.equal(h.requests.length, 0);
    assertLedgerClean(h);
  });

  it('accepts feature word 0 and serves requests', async () => {
    const h = new Harness();
    await run(h, separate([prIn(0, 24)]));
    assert.equal(h.replies.length, 1);
    assert.equal(h.closeReason, null);
    assert.equal(decodeFeatures(new Uint8Array(4)), 0);
  });
});

describe('PrHelperSession: every request shape at every split point', () => {
  const follow = prIn(0, 24, 'follow-up READ KEYS');
  for (const r of requestCatalogue()) {
    it(`${r.label}: two chunks, every cut`, async () => {
      const requests = [r, follow];
      const ref = await reference(requests);
      // Sanity of the reference itself.
      if (r.expect === 'violation') {
        assert.equal(ref.replies.length, 0);
        assert.equal(ref.close?.code, ErrorCode.PROTOCOL);
      } else {
        assert.equal(ref.replies.length, 2, 'the connection survives and serves the next request');
        assert.equal(ref.close, null);
      }
      const total = 4 + r.bytes.length + follow.bytes.length;
      for (let cut = 1; cut < total; cut++) await checkSplit(requests, [cut], ref);
    });
  }

  it('READ KEYS then REGISTER: every pair of cuts (three chunks)', async () => {
    const requests = [prIn(0, 24), prOut(0, params(24))];
    const ref = await reference(requests);
    const total = 4 + 16 + 16 + 24;
    for (let a = 1; a < total; a++) for (let b = a + 1; b < total; b++) await checkSplit(requests, [a, b], ref);
  });

  it('answers PR IN with the handler data cut to the allocation length; GOOD only', async () => {
    const r = prIn(0, 24);
    const ref = await reference([r]);
    const reply = ref.replies[0]!;
    assert.equal(reply.status, ScsiStatus.GOOD);
    assert.equal(reply.payload.length, transferLength(r));
    assert.deepEqual(reply.payload, patternData({ cdb: r.bytes, fd: 0, dataOut: null }).subarray(0, 24));
    assert.equal(reply.sense.length, PR_HELPER_SENSE_SIZE);
  });
});

describe('PrHelperSession: random splittings (fast-check)', () => {
  const catalogue = requestCatalogue();
  const valid = catalogue.filter((r) => r.expect !== 'violation' && r.bytes.length < 200);
  const any = catalogue.filter((r) => r.bytes.length < 200);
  it('answers a split stream like the unsplit one; every fd closed exactly once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...valid) }, { weight: 1, arbitrary: fc.constantFrom(...any) }), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.array(fc.nat({ max: 2000 }), { maxLength: 12 }),
        async (requests, rawCuts) => {
          const total = 4 + requests.reduce((n, r) => n + r.bytes.length, 0);
          const cuts = rawCuts.map((c) => 1 + (c % (total - 1)));
          const ref = await reference(requests);
          await checkSplit(requests, cuts, ref);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('kernel-realistic splits (a read never runs past a CDB that carries fds) always match the reference', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.constantFrom(...valid), { minLength: 1, maxLength: 8 }), fc.array(fc.nat({ max: 2000 }), { maxLength: 12 }), async (requests, rawCuts) => {
        const total = 4 + requests.reduce((n, r) => n + r.bytes.length, 0);
        // Linux ends a recvmsg() after the message that carried fds: cut after every CDB.
        const cdbEnds: number[] = [];
        let o = 4;
        for (const r of requests) {
          cdbEnds.push(o + 16);
          o += r.bytes.length;
        }
        const cuts = [...rawCuts.map((c) => 1 + (c % (total - 1))), ...cdbEnds];
        const ref = await reference(requests);
        const { chunks } = split(requests, cuts);
        const h = new Harness();
        await run(h, chunks);
        assertLedgerClean(h);
        assert.deepEqual(outcome(h), ref);
      }),
      { numRuns: 200 },
    );
  });
});

describe('PrHelperSession: violations', () => {
  const cases: { name: string; requests: WireRequest[]; field: string }[] = [
    { name: 'CDB without fd', requests: [withFds(prIn(0, 24), 0)], field: 'file descriptors' },
    { name: 'CDB with two fds', requests: [withFds(prIn(0, 24), 2)], field: 'file descriptors' },
    { name: 'CDB with three fds', requests: [withFds(prOut(0, params(24)), 3)], field: 'file descriptors' },
  ];
  for (const c of cases) {
    it(`${c.name}: closes, every fd closed once, handler never called`, async () => {
      const h = new Harness();
      await run(h, split(c.requests, [4]).chunks, { end: false });
      assert.equal(h.closeReason?.field, c.field);
      assert.equal(h.requests.length, 0);
      assertLedgerClean(h);
    });
  }

  it('PR OUT length 8193 closes before reading any parameter data', async () => {
    const h = new Harness();
    const r = requestCatalogue().find((x) => x.label === 'PR OUT length 8193')!;
    await run(h, split([r], [4]).chunks, { end: false });
    assert.equal(h.closeReason?.field, 'CDB transfer length');
    assert.equal(h.closeReason?.value, 8193);
    assertLedgerClean(h);
  });

  it('fds attached to parameter data (not a CDB start) are closed and end the connection', async () => {
    const h = new Harness();
    const r = prOut(0, params(24));
    h.session.push(new Uint8Array(4), []);
    const cdbFd = h.ledger.open();
    h.session.push(r.bytes.subarray(0, 16), [cdbFd]);
    const stray = [h.ledger.open(), h.ledger.open()];
    h.session.push(r.bytes.subarray(16), stray);
    await h.settle();
    assert.equal(h.closeReason?.field, 'file descriptors');
    assert.equal(h.ledger.state(stray[0]!), 'closed-by-session');
    // The CDB's own fd was attributed unambiguously: that request is answered before the close.
    assert.equal(h.ledger.state(cdbFd), 'closed-by-handler');
    assert.equal(h.replies.length, 1);
    assertLedgerClean(h);
  });

  it('a request before a violation in the same read is still answered, then the connection closes', async () => {
    const h = new Harness();
    const good = prIn(0, 24);
    const bad = withFds(prIn(1, 24), 0);
    // [features][good CDB] with its fd, then [bad CDB] alone in a second read.
    await run(h, split([good, bad], [20]).chunks, { end: false });
    assert.equal(h.replies.length, 1);
    assert.equal(h.closeReason?.field, 'file descriptors');
    assertLedgerClean(h);
  });

  it('input after a violation is ignored and its fds closed', async () => {
    const h = new Harness();
    await run(h, split([withFds(prIn(0, 24), 0)], [4]).chunks, { end: false });
    const late = h.ledger.open();
    h.session.push(prIn(0, 24).bytes, [late]);
    assert.equal(h.ledger.state(late), 'closed-by-session');
    assert.equal(h.writtenAfterClose, 0);
  });
});

describe('PrHelperSession: answers', () => {
  it('a short PR OUT on a read-only fd: 5/20/00 (the read-only check comes first, as in the stock helper), fd closed, no handler', async () => {
    const h = new Harness({ isReadOnlyFd: () => true });
    await run(h, separate([prOut(1, params(8))]));
    assert.equal(h.requests.length, 0);
    const [first] = h.replies;
    assert.equal(first!.status, ScsiStatus.CHECK_CONDITION);
    assert.deepEqual([first!.sense[2], first!.sense[12], first!.sense[13]], [0x05, 0x20, 0x00]);
    assertLedgerClean(h);
  });

  it('PR OUT with a parameter list under 24 bytes: 5/1A/00 without the handler, connection kept', async () => {
    const h = new Harness();
    await run(h, separate([prOut(1, params(8)), prIn(0, 8)]));
    assert.equal(h.requests.length, 1, 'only the PR IN reached the handler');
    const [first, second] = h.replies;
    assert.equal(first!.status, ScsiStatus.CHECK_CONDITION);
    assert.deepEqual([first!.sense[0], first!.sense[2], first!.sense[12], first!.sense[13]], [0x70, 0x05, 0x1a, 0x00]);
    assert.equal(first!.payload.length, 0);
    assert.equal(second!.status, ScsiStatus.GOOD);
    assertLedgerClean(h);
  });

  it('sends no payload for CHECK CONDITION PR IN nor for PR OUT, and cuts sense at 96 bytes', async () => {
    const longSense = new Uint8Array(200).fill(0x42);
    const h = new Harness({
      handler: async (req) => ({
        status: req.cdb[1] === 1 ? ScsiStatus.CHECK_CONDITION : ScsiStatus.GOOD,
        sense: longSense,
        data: new Uint8Array(64).fill(9),
      }),
    });
    await run(h, separate([prIn(1, 64), prOut(0, params(24)), prIn(0, 64)]));
    assert.deepEqual(
      h.replies.map((r) => [r.status, r.payload.length]),
      [
        [ScsiStatus.CHECK_CONDITION, 0],
        [ScsiStatus.GOOD, 0],
        [ScsiStatus.GOOD, 64],
      ],
    );
    assert.deepEqual(h.replies[0]!.sense, longSense.subarray(0, 96));
  });

  it('zero-pads short sense to 96 bytes', async () => {
    const h = new Harness({ handler: async () => ({ status: ScsiStatus.CHECK_CONDITION, sense: new Uint8Array([0x70, 0, 6]), data: new Uint8Array(0) }) });
    await run(h, separate([prIn(0, 8)]));
    const expected = new Uint8Array(96);
    expected.set([0x70, 0, 6]);
    assert.deepEqual(h.replies[0]!.sense, expected);
  });

  it('a handler that throws or rejects gets ABORTED COMMAND 00/06; the connection stays', async () => {
    let n = 0;
    const h = new Harness({
      handler: (req) => {
        n++;
        if (n === 1) throw new Error('sync boom');
        if (n === 2) return Promise.reject(new Error('async boom'));
        if (n === 3) return Promise.resolve({ status: 999, sense: new Uint8Array(0), data: new Uint8Array(0) });
        return Promise.resolve({ status: 0, sense: new Uint8Array(0), data: patternData(req) });
      },
    });
    // A synchronous throw means the harness' .finally never runs: close those fds here.
    const origHandler = h.handler;
    h.handler = (req, hh) => {
      try {
        return origHandler(req, hh);
      } catch (e) {
        return Promise.reject(e);
      }
    };
    await run(h, separate([prIn(0, 8), prIn(0, 8), prIn(0, 8), prIn(0, 8)]));
    assert.deepEqual(
      h.replies.map((r) => [r.status, r.sense[2], r.sense[12], r.sense[13]]),
      [
        [2, 0x0b, 0x00, 0x06],
        [2, 0x0b, 0x00, 0x06],
        [2, 0x0b, 0x00, 0x06],
        [0, 0, 0, 0],
      ],
    );
    assertLedgerClean(h);
  });
});

describe('PrHelperSession: ordering, backpressure, close', () => {
  function deferredHandler(): { handler: (req: unknown) => Promise<PrHelperAnswer>; resolvers: ((a: PrHelperAnswer) => void)[] } {
    const resolvers: ((a: PrHelperAnswer) => void)[] = [];
    return {
      resolvers,
      handler: () => new Promise<PrHelperAnswer>((resolve) => resolvers.push(resolve)),
    };
  }
  const ok = (tag: number): PrHelperAnswer => ({ status: 0, sense: new Uint8Array(0), data: new Uint8Array([tag]) });

  it('executes pipelined requests one at a time, answering in order', async () => {
    const d = deferredHandler();
    const h = new Harness({ handler: d.handler });
    await run(h, split([prIn(0, 8), prIn(1, 8), prIn(2, 8)], [4, 20, 36]).chunks, { end: false });
    assert.equal(h.requests.length, 1, 'only the first is in flight');
    d.resolvers[0]!(ok(1));
    await h.settle();
    assert.equal(h.requests.length, 2);
    d.resolvers[1]!(ok(2));
    await h.settle();
    d.resolvers[2]!(ok(3));
    await h.settle();
    assert.deepEqual(
      h.replies.map((r) => r.payload[0]),
      [1, 2, 3],
    );
    h.session.end();
    await h.settle();
    assertLedgerClean(h);
  });

  it('readHint drops to 0 at maxPendingRequests and resumes when one is answered', async () => {
    const d = deferredHandler();
    const h = new Harness({ handler: d.handler, limits: { maxPendingRequests: 3 } });
    const reqs = [prIn(0, 8), prIn(1, 8), prIn(2, 8)];
    await run(h, split(reqs, [4, 20, 36]).chunks, { end: false });
    assert.equal(h.session.readHint(), 0);
    assert.equal(h.session.wantsMoreInput(), false);
    const resumesBefore = h.resumes;
    d.resolvers[0]!(ok(1));
    await h.settle();
    assert.ok(h.session.readHint() > 0);
    assert.equal(h.resumes, resumesBefore + 1);
    // Ignoring the hint past the hard bound is a violation.
    const extra = [prIn(3, 8), prIn(4, 8)].map((r) => ({ bytes: r.bytes, fdCount: 1 }));
    await run(h, extra, { end: false });
    for (let i = 1; i < 10 && h.closeCount === 0; i++) {
      d.resolvers[i]?.(ok(0));
      await h.settle();
    }
    assert.equal(h.replies.length, 4, 'the three accepted requests plus the first are answered');
    assert.equal(h.closeReason?.field, 'pipelined requests');
    assertLedgerClean(h);
  });

  it('readHint is bounded by maxBufferedBytes minus what is held', async () => {
    const d = deferredHandler();
    const h = new Harness({ handler: d.handler });
    const max = 16 + 8192 + 4096;
    await run(h, separate([]), { end: false });
    assert.equal(h.session.readHint(), max);
    await run(h, [{ bytes: prOut(0, params(8192)).bytes, fdCount: 1 }], { end: false });
    assert.equal(h.session.readHint(), max - (16 + 8192));
    d.resolvers[0]!(ok(0));
    await h.settle();
    assert.equal(h.session.readHint(), max);
    h.session.end();
    await h.settle();
    assertLedgerClean(h);
  });

  it('stops dispatching while the output is blocked, and resumes on outputDrained()', async () => {
    const h = new Harness();
    h.writeResult = false;
    await run(h, separate([prIn(0, 8), prIn(1, 8)]), { end: false });
    assert.equal(h.replies.length, 1);
    assert.equal(h.session.readHint(), 0);
    h.writeResult = true;
    h.session.outputDrained();
    await h.settle();
    assert.equal(h.replies.length, 2);
    h.session.end();
    await h.settle();
    assertLedgerClean(h);
  });

  it('end(): drops a partial frame (closing its fd), answers what is queued, closes with null', async () => {
    const d = deferredHandler();
    const h = new Harness({ handler: d.handler });
    const chunks = split([prIn(0, 8), prIn(1, 8), prIn(2, 8)], [4, 20, 36, 40]).chunks;
    await run(h, chunks.slice(0, -1), { end: false });
    h.session.end();
    assert.equal(h.closeCount, 0, 'still answering');
    d.resolvers[0]!(ok(1));
    await h.settle();
    d.resolvers[1]!(ok(2));
    await h.settle();
    assert.equal(h.replies.length, 2);
    assert.equal(h.closeReason, null);
    assertLedgerClean(h);
  });

  it('destroy() during an in-flight request: queued fds closed, the handler keeps its fd, nothing written later', async () => {
    const d = deferredHandler();
    const h = new Harness({ handler: d.handler });
    await run(h, split([prIn(0, 8), prIn(1, 8)], [4, 20, 30]).chunks, { end: false });
    assert.equal(h.requests.length, 1);
    h.session.destroy();
    assert.equal(h.closeCount, 1);
    assert.equal(h.ledger.stillOpen().length, 1, 'only the handed fd is open');
    d.resolvers[0]!(ok(1));
    await h.settle();
    assert.equal(h.replies.length, 0);
    assertLedgerClean(h);
  });
});

describe('PrHelperSession: partial-frame timeout', () => {
  it('drops a stalled partial CDB after the timeout, closing its fd', async () => {
    const h = new Harness();
    const r = prIn(0, 8);
    await run(h, split([r], [4, 10]).chunks.slice(0, 2), { end: false });
    const active = h.timers.active();
    assert.equal(active.length, 1);
    assert.equal(active[0]!.ms, 30_000);
    h.timers.fireAll();
    await h.settle();
    assert.equal(h.closeReason?.field, 'partial frame');
    assertLedgerClean(h);
  });

  it('drops a stalled PR OUT parameter list', async () => {
    const h = new Harness({ limits: { frameTimeoutMs: 5000 } });
    await run(h, split([prOut(0, params(24))], [4, 30]).chunks.slice(0, 2), { end: false });
    assert.equal(h.timers.active()[0]!.ms, 5000);
    h.timers.fireAll();
    assert.equal(h.closeReason?.field, 'partial frame');
    assertLedgerClean(h);
  });

  it('never arms a timer on an idle connection with no partial frame', async () => {
    const h = new Harness();
    await run(h, separate([prIn(0, 8), prOut(0, params(24))]), { end: false });
    assert.equal(h.replies.length, 2);
    assert.equal(h.timers.active().length, 0);
    h.session.end();
    await h.settle();
    assert.equal(h.closeReason, null);
  });

  it('times the handshake from start()', () => {
    const h = new Harness();
    assert.equal(h.timers.active().length, 1);
    h.timers.fireAll();
    assert.equal(h.closeReason?.field, 'partial frame');
  });

  it('re-arms for each new frame and pauses while readHint is 0', async () => {
    const d: ((a: PrHelperAnswer) => void)[] = [];
    const h = new Harness({ handler: () => new Promise((resolve) => d.push(resolve)), limits: { maxPendingRequests: 1 } });
    await run(h, split([prIn(0, 8)], [4]).chunks, { end: false });
    assert.equal(h.timers.active().length, 0, 'no partial frame');
    // A partial second request arrives while the first is in flight and the queue is full.
    h.session.push(prIn(1, 8).bytes.subarray(0, 3), [h.ledger.open()]);
    assert.equal(h.session.readHint(), 0);
    assert.equal(h.timers.active().length, 0, 'prmux, not the client, holds the frame up');
    d[0]!({ status: 0, sense: new Uint8Array(0), data: new Uint8Array(0) });
    await h.settle();
    assert.equal(h.timers.active().length, 1, 'the client is on the clock again');
    h.session.destroy();
    assertLedgerClean(h);
  });
});
