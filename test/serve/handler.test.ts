// The pr-helper request handler with fake inspect/resolve/backends: fd ownership (closed exactly
// once, and only after the backend is done with it), the read-only PR OUT refusal of
// qemu-pr-helper's do_pr_out, errno-mapped answers, the CDB and allocation length handed to the
// backend, and the command record.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ScsiStatus, SenseKey } from '../../src/scsi/constants.js';
import { HELPER_SENSE_SIZE, type HelperAnswer } from '../../src/scsi/helper-answer.js';
import type { PrBackend, PrCommand } from '../../src/serve/backend.js';
import type { DeviceTarget } from '../../src/serve/device-target.js';
import type { FdInfo } from '../../src/serve/fd-info.js';
import { type CommandRecord, type HandlerOptions, createPrRequestHandler } from '../../src/serve/handler.js';
import type { PrHelperRequest } from '../../src/socket/pr-helper-session.js';
import type { Logger } from '../../src/socket/logger.js';

const SDA: DeviceTarget = { kind: 'scsi', name: 'sda', major: 8, minor: 0 };

function fdInfo(fd: number, accessMode: FdInfo['accessMode'] = 'read-write'): FdInfo {
  return { fd, type: 'block', major: 8, minor: 0, dev: 5n, ino: 100n, accessMode };
}

/** PR IN (5Eh), READ KEYS, ALLOCATION LENGTH in bytes 7-8, padded to 16 as the helper sends it. */
function prInCdb(allocationLength: number, serviceAction = 0x00): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x5e;
  c[1] = serviceAction;
  c[7] = allocationLength >> 8;
  c[8] = allocationLength & 0xff;
  return c;
}

/** PR OUT (5Fh) with PARAMETER LIST LENGTH in bytes 5-8. */
function prOutCdb(serviceAction: number, type: number, paramLength = 24): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x5f;
  c[1] = serviceAction;
  c[2] = type;
  c[5] = (paramLength >>> 24) & 0xff;
  c[6] = (paramLength >> 16) & 0xff;
  c[7] = (paramLength >> 8) & 0xff;
  c[8] = paramLength & 0xff;
  return c;
}

function answer(status: number, data: Uint8Array = new Uint8Array(0)): HelperAnswer {
  return { status, sense: new Uint8Array(HELPER_SENSE_SIZE), data };
}

/** Sense key, ASC, ASCQ of a fixed-format sense field (SPC-4 4.5.3). */
function senseTriple(sense: Uint8Array): [number, number, number] {
  assert.equal(sense[0]! & 0x7f, 0x70, 'fixed-format current sense');
  return [sense[2]! & 0x0f, sense[12]!, sense[13]!];
}

interface Harness {
  readonly handler: (req: PrHelperRequest) => Promise<{ status: number; sense: Uint8Array; data: Uint8Array }>;
  readonly closed: number[];
  readonly commands: PrCommand[];
  readonly records: CommandRecord[];
  readonly errors: string[];
  readonly calls: { inspect: number; resolve: number; backendFor: number };
}

function harness(overrides: Partial<HandlerOptions> & { execute?: (cmd: PrCommand) => Promise<HelperAnswer> } = {}): Harness {
  const closed: number[] = [];
  const commands: PrCommand[] = [];
  const records: CommandRecord[] = [];
  const errors: string[] = [];
  const calls = { inspect: 0, resolve: 0, backendFor: 0 };
  const execute = overrides.execute ?? (async () => answer(ScsiStatus.GOOD));
  const backend: PrBackend = {
    name: 'fake',
    execute: (cmd) => {
      commands.push(cmd);
      // The fd is the backend's to use until it answers: it must still be open now.
      assert.ok(!closed.includes(cmd.fd), `fd ${cmd.fd} closed before the backend ran`);
      return execute(cmd);
    },
  };
  const logger: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: (m, f) => errors.push(`${m} ${JSON.stringify(f)}`) };
  const opts: HandlerOptions = {
    inspect: (fd) => {
      calls.inspect++;
      return fdInfo(fd);
    },
    resolve: () => {
      calls.resolve++;
      return SDA;
    },
    backendFor: () => {
      calls.backendFor++;
      return backend;
    },
    closeFd: (fd) => closed.push(fd),
    logger,
    onCommand: (r) => records.push(r),
    ...overrides,
  };
  return { handler: createPrRequestHandler(opts), closed, commands, records, errors, calls };
}

test('success: the backend answer is returned as is, the fd closed once after it, the command recorded', async () => {
  const data = Uint8Array.from([0, 0, 0, 1, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
  let clock = 1000;
  const h = harness({ execute: async () => answer(ScsiStatus.GOOD, data), now: () => (clock += 21) });
  const a = await h.handler({ cdb: prInCdb(16), fd: 17, dataOut: null });
  assert.equal(a.status, ScsiStatus.GOOD);
  assert.deepEqual(a.data, data);
  assert.equal(a.sense.length, HELPER_SENSE_SIZE);
  assert.deepEqual(h.closed, [17]);
  assert.equal(h.commands.length, 1);
  assert.deepEqual(h.records, [{ opcode: 0x5e, serviceAction: 0, target: 'sda', backend: 'fake', status: 0, durationMs: 21 }]);
  assert.ok(!('refused' in h.records[0]!), 'a command that reached the device is not refused');
});

test('the backend gets the 10-byte CDB, the parameter list, the fd, the resolved target and the allocation length', async () => {
  const h = harness();
  // PR IN READ RESERVATION, allocation length 0x1234 (distinct bytes catch a byte-order slip).
  const inCdb = prInCdb(0x1234, 0x01);
  inCdb.fill(0xee, 10); // helper padding must not reach the device
  await h.handler({ cdb: inCdb, fd: 30, dataOut: null });
  const pin = h.commands[0]!;
  assert.deepEqual(pin.cdb, Uint8Array.from([0x5e, 0x01, 0, 0, 0, 0, 0, 0x12, 0x34, 0]));
  assert.equal(pin.allocationLength, 0x1234);
  assert.equal(pin.dataOut, null);
  assert.equal(pin.fd, 30);
  assert.deepEqual(pin.target, SDA);

  // PR OUT REGISTER: allocation length 0 (bytes 5-8 are the parameter list length, not an allocation length).
  const params = new Uint8Array(24).map((_, i) => i + 1);
  const outCdb = prOutCdb(0x00, 0x00, 24);
  await h.handler({ cdb: outCdb, fd: 31, dataOut: params });
  const pout = h.commands[1]!;
  assert.deepEqual(pout.cdb, outCdb.subarray(0, 10));
  assert.equal(pout.cdb.length, 10);
  assert.equal(pout.allocationLength, 0);
  assert.deepEqual(pout.dataOut, params);
  assert.equal(pout.fd, 31);

  // The largest allocation length the protocol carries, and zero.
  await h.handler({ cdb: prInCdb(8192), fd: 32, dataOut: null });
  await h.handler({ cdb: prInCdb(0), fd: 33, dataOut: null });
  assert.deepEqual(h.commands.slice(2).map((c) => c.allocationLength), [8192, 0]);
  assert.deepEqual(h.closed, [30, 31, 32, 33]);
});

test('the record names the service action (byte 1, low 5 bits) and the target as described', async () => {
  const map: DeviceTarget = { kind: 'multipath', name: 'dm-0', major: 253, minor: 0, map: 'mpatha', uuid: 'mpath-3600', slaves: ['sda', 'sdb'] };
  const h = harness({ resolve: () => map });
  const cdb = prOutCdb(0x01, 0x05);
  cdb[1] = 0xe1; // high 3 bits are not part of the service action
  await h.handler({ cdb, fd: 40, dataOut: new Uint8Array(24) });
  assert.equal(h.records[0]!.opcode, 0x5f);
  assert.equal(h.records[0]!.serviceAction, 0x01);
  assert.equal(h.records[0]!.target, 'dm-0 (mpatha)');
});

test('PR OUT on a read-only fd: CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE; nothing reaches a device', async () => {
  const h = harness({
    inspect: (fd) => fdInfo(fd, 'read-only'),
    execute: async () => assert.fail('the backend must not run a PR OUT on a read-only fd'),
  });
  const a = await h.handler({ cdb: prOutCdb(0x00, 0x00), fd: 50, dataOut: new Uint8Array(24) });
  assert.equal(a.status, ScsiStatus.CHECK_CONDITION);
  assert.equal(a.sense.length, 96);
  assert.deepEqual(senseTriple(a.sense), [SenseKey.ILLEGAL_REQUEST, 0x20, 0x00]);
  assert.equal(a.data.length, 0);
  assert.equal(h.commands.length, 0);
  assert.equal(h.calls.backendFor, 0);
  assert.deepEqual(h.closed, [50]);
  assert.equal(h.records.length, 1);
  const r = h.records[0]!;
  assert.equal(r.status, ScsiStatus.CHECK_CONDITION);
  assert.equal(r.backend, null);
  assert.ok(r.refused !== undefined && /read-only/.test(r.refused), r.refused);
});

test('PR IN on a read-only fd, and PR OUT on a write-only fd, do reach the backend (only O_RDONLY + PR OUT is refused)', async () => {
  const ro = harness({ inspect: (fd) => fdInfo(fd, 'read-only') });
  assert.equal((await ro.handler({ cdb: prInCdb(8), fd: 51, dataOut: null })).status, ScsiStatus.GOOD);
  assert.equal(ro.commands.length, 1);
  const wo = harness({ inspect: (fd) => fdInfo(fd, 'write-only') });
  assert.equal((await wo.handler({ cdb: prOutCdb(0x00, 0x00), fd: 52, dataOut: new Uint8Array(24) })).status, ScsiStatus.GOOD);
  assert.equal(wo.commands.length, 1);
  assert.deepEqual([...ro.closed, ...wo.closed], [51, 52]);
});

test('inspect throwing: answered as qemu-pr-helper answers that errno, fd closed once, no backend', async () => {
  const errnoError = (errno: number, code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: fstat`), { errno, code });
  const cases: [unknown, number, [number, number, number] | null][] = [
    // Node reports errno negated; the handler uses its magnitude.
    [errnoError(-22, 'EINVAL'), ScsiStatus.CHECK_CONDITION, [SenseKey.ILLEGAL_REQUEST, 0x24, 0x00]],
    [errnoError(-12, 'ENOMEM'), ScsiStatus.CHECK_CONDITION, [SenseKey.HARDWARE_ERROR, 0x44, 0x00]],
    [errnoError(22, 'EINVAL'), ScsiStatus.CHECK_CONDITION, [SenseKey.ILLEGAL_REQUEST, 0x24, 0x00]],
    [errnoError(-33, 'EDOM'), ScsiStatus.TASK_SET_FULL, null],
    [errnoError(-9, 'EBADF'), ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x00, 0x06]],
    // No errno at all: treated as EBADF -> I/O error (ABORTED COMMAND 00/06).
    [new Error('no such fd'), ScsiStatus.CHECK_CONDITION, [SenseKey.ABORTED_COMMAND, 0x00, 0x06]],
  ];
  let fd = 60;
  for (const [err, status, sense] of cases) {
    const h = harness({
      inspect: () => {
        throw err;
      },
    });
    const a = await h.handler({ cdb: prInCdb(8), fd, dataOut: null });
    assert.equal(a.status, status, String(err));
    assert.equal(a.sense.length, 96);
    if (sense === null) assert.ok(a.sense.every((b) => b === 0));
    else assert.deepEqual(senseTriple(a.sense), sense);
    assert.equal(h.calls.resolve, 0);
    assert.equal(h.calls.backendFor, 0);
    assert.deepEqual(h.closed, [fd]);
    assert.equal(h.records.length, 1);
    assert.ok(h.records[0]!.refused?.startsWith('cannot inspect fd'), h.records[0]!.refused);
    assert.equal(h.records[0]!.status, status);
    fd++;
  }
});

test('backend rejecting: CHECK CONDITION, ABORTED COMMAND (I/O error), logged, fd still closed once', async () => {
  const h = harness({
    execute: async () => {
      throw new Error('SAN unreachable');
    },
  });
  const a = await h.handler({ cdb: prInCdb(8), fd: 70, dataOut: null });
  assert.equal(a.status, ScsiStatus.CHECK_CONDITION);
  assert.equal(a.sense.length, 96);
  assert.deepEqual(senseTriple(a.sense), [SenseKey.ABORTED_COMMAND, 0x00, 0x06]);
  assert.equal(a.data.length, 0);
  assert.deepEqual(h.closed, [70]);
  assert.equal(h.errors.length, 1);
  assert.match(h.errors[0]!, /SAN unreachable/);
  const r = h.records[0]!;
  assert.equal(r.backend, 'fake');
  assert.equal(r.target, 'sda');
  assert.equal(r.status, ScsiStatus.CHECK_CONDITION);
  assert.equal(r.refused, 'SAN unreachable');
});

test('a backend that throws synchronously, resolve or backendFor throwing: same answer, fd closed once', async () => {
  const syncBackend: PrBackend = {
    name: 'sync-thrower',
    execute: () => {
      throw new Error('bad argument');
    },
  };
  const h1 = harness({ backendFor: () => syncBackend });
  const h2 = harness({
    resolve: () => {
      throw new Error('sysfs gone');
    },
  });
  const h3 = harness({
    backendFor: () => {
      throw new Error('no backend');
    },
  });
  for (const [h, fd] of [
    [h1, 80],
    [h2, 81],
    [h3, 82],
  ] as const) {
    const a = await h.handler({ cdb: prInCdb(8), fd, dataOut: null });
    assert.equal(a.status, ScsiStatus.CHECK_CONDITION);
    assert.deepEqual(senseTriple(a.sense), [SenseKey.ABORTED_COMMAND, 0x00, 0x06]);
    assert.deepEqual(h.closed, [fd]);
    assert.equal(h.records.length, 1);
  }
});

test('backend statuses pass through to the record (RESERVATION CONFLICT, BUSY, CHECK CONDITION)', async () => {
  for (const status of [ScsiStatus.RESERVATION_CONFLICT, ScsiStatus.BUSY, ScsiStatus.CHECK_CONDITION, ScsiStatus.TASK_SET_FULL]) {
    const h = harness({ execute: async () => answer(status) });
    const a = await h.handler({ cdb: prOutCdb(0x01, 0x05), fd: 90, dataOut: new Uint8Array(24) });
    assert.equal(a.status, status);
    assert.equal(h.records[0]!.status, status);
    assert.equal(h.records[0]!.refused, undefined);
    assert.deepEqual(h.closed, [90]);
  }
});

test('without a logger or observer the handler still answers and closes', async () => {
  const closed: number[] = [];
  const handler = createPrRequestHandler({
    inspect: (fd) => fdInfo(fd),
    resolve: () => SDA,
    backendFor: () => ({ name: 'x', execute: async () => answer(ScsiStatus.GOOD) }),
    closeFd: (fd) => closed.push(fd),
  });
  assert.equal((await handler({ cdb: prInCdb(8), fd: 99, dataOut: null })).status, ScsiStatus.GOOD);
  assert.deepEqual(closed, [99]);
});

// ---------------------------------------------------------------------------------------------
// Property: whatever happens to each request, and however requests interleave, every fd is closed
// exactly once, every request is answered (the promise never rejects) and recorded once.

type Scenario =
  | { readonly kind: 'good' }
  | { readonly kind: 'status'; readonly status: number }
  | { readonly kind: 'reject' }
  | { readonly kind: 'throw-sync' }
  | { readonly kind: 'inspect-throws'; readonly errno: number | undefined }
  | { readonly kind: 'resolve-throws' }
  | { readonly kind: 'read-only' };

const scenario: fc.Arbitrary<Scenario> = fc.oneof(
  fc.constant({ kind: 'good' } as const),
  fc.constantFrom(0x02, 0x08, 0x18, 0x28).map((status) => ({ kind: 'status', status }) as const),
  fc.constant({ kind: 'reject' } as const),
  fc.constant({ kind: 'throw-sync' } as const),
  fc.option(fc.integer({ min: 1, max: 130 }).chain((n) => fc.constantFrom(n, -n)), { nil: undefined }).map((errno) => ({ kind: 'inspect-throws', errno }) as const),
  fc.constant({ kind: 'resolve-throws' } as const),
  fc.constant({ kind: 'read-only' } as const),
);

test('property: fd close count equals the number of requests, for any sequence of outcomes and failures', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ s: scenario, out: fc.boolean(), delay: fc.nat(3) }), { maxLength: 25 }),
      fc.boolean(),
      async (reqs, concurrent) => {
        const byFd = new Map<number, Scenario>();
        const closes = new Map<number, number>();
        let recorded = 0;
        const backend: PrBackend = {
          name: 'p',
          execute: (cmd) => {
            const s = byFd.get(cmd.fd)!;
            assert.equal(closes.get(cmd.fd) ?? 0, 0, 'fd closed while the backend runs');
            if (s.kind === 'throw-sync') throw new Error('sync');
            // Let other requests run in between (microtask hops), so interleavings vary.
            const settle = async (i: number): Promise<HelperAnswer> => {
              for (let k = 0; k < i; k++) await Promise.resolve();
              if (s.kind === 'reject') throw new Error('rejected');
              return answer(s.kind === 'status' ? s.status : ScsiStatus.GOOD);
            };
            return settle(reqs.find((_, i) => 1000 + i === cmd.fd)!.delay);
          },
        };
        const handler = createPrRequestHandler({
          inspect: (fd) => {
            const s = byFd.get(fd)!;
            if (s.kind === 'inspect-throws') throw Object.assign(new Error('inspect'), s.errno === undefined ? {} : { errno: s.errno });
            return fdInfo(fd, s.kind === 'read-only' ? 'read-only' : 'read-write');
          },
          resolve: (info) => {
            if (byFd.get(info.fd)!.kind === 'resolve-throws') throw new Error('resolve');
            return SDA;
          },
          backendFor: () => backend,
          closeFd: (fd) => closes.set(fd, (closes.get(fd) ?? 0) + 1),
          onCommand: () => recorded++,
        });
        const requests = reqs.map((r, i): PrHelperRequest => {
          const fd = 1000 + i;
          byFd.set(fd, r.s);
          // read-only only refuses PR OUT; use PR OUT for it so the refusal path is taken.
          const out = r.out || r.s.kind === 'read-only';
          return out ? { cdb: prOutCdb(0x00, 0x00), fd, dataOut: new Uint8Array(24) } : { cdb: prInCdb(64), fd, dataOut: null };
        });
        const answers = concurrent ? await Promise.all(requests.map((q) => handler(q))) : await requests.reduce<Promise<{ status: number }[]>>(async (acc, q) => [...(await acc), await handler(q)], Promise.resolve([]));
        assert.equal(answers.length, requests.length);
        assert.equal(recorded, requests.length);
        assert.equal([...closes.values()].reduce((a, b) => a + b, 0), requests.length);
        for (const q of requests) assert.equal(closes.get(q.fd), 1, `fd ${q.fd} (${byFd.get(q.fd)!.kind})`);
        for (const [i, a] of answers.entries()) {
          const s = reqs[i]!.s;
          const expected =
            s.kind === 'good' ? ScsiStatus.GOOD : s.kind === 'status' ? s.status : s.kind === 'inspect-throws' ? undefined : ScsiStatus.CHECK_CONDITION;
          if (expected !== undefined) assert.equal(a.status, expected, s.kind);
          // A failed fstat is never reported as success, whatever its errno.
          else assert.notEqual(a.status, ScsiStatus.GOOD, `inspect errno ${String(s.kind === 'inspect-throws' ? s.errno : '')}`);
        }
      },
    ),
    { numRuns: 150 },
  );
});
