// SG_IO through koffi: the real ioctl path on fds without SG_IO support, the struct layout, and
// that commands run off the event loop.

import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import koffi from 'koffi';
import { ScsiStatus } from '../../src/scsi/constants.js';
import { encodePrInCdb } from '../../src/scsi/cdb.js';
import { LinuxErrno } from '../../src/scsi/sgio-result.js';
import { type AsyncIoctl, SG_IO, SG_IO_HDR_SIZE, SgIoHdr, sgIo, sizeUvThreadpool } from '../../src/sgio/sg-io.js';

const readKeys = encodePrInCdb({ serviceAction: 0, allocationLength: 8192 }, 10);

describe('struct sg_io_hdr', () => {
  it('is 88 bytes with the <scsi/sg.h> offsets', () => {
    assert.equal(SG_IO_HDR_SIZE, 88);
    const expected: Record<string, number> = {
      interface_id: 0, dxfer_direction: 4, cmd_len: 8, mx_sb_len: 9, iovec_count: 10, dxfer_len: 12, dxferp: 16, cmdp: 24,
      sbp: 32, timeout: 40, flags: 44, pack_id: 48, usr_ptr: 56, status: 64, masked_status: 65, msg_status: 66, sb_len_wr: 67,
      host_status: 68, driver_status: 70, resid: 72, duration: 76, info: 80,
    };
    for (const [field, offset] of Object.entries(expected)) assert.equal(koffi.offsetof(SgIoHdr, field), offset, field);
    assert.equal(SG_IO, 0x2285);
  });
});

describe('sgIo on fds without SG_IO support (what qemu-pr-helper answers for them)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prmux-sgio-'));
  const file = join(dir, 'regular');
  writeFileSync(file, 'not a disk');

  for (const [label, path] of [['/dev/null', '/dev/null'], ['a regular file', file]] as const) {
    it(`${label}: ENOTTY -> CHECK CONDITION, ABORTED COMMAND 00/06`, async () => {
      const fd = openSync(path, 'r+');
      try {
        const r = await sgIo(fd, { cdb: readKeys, dataInLength: 8192 });
        assert.equal(r.completion.errno, LinuxErrno.ENOTTY);
        assert.equal(r.qemu.status, ScsiStatus.CHECK_CONDITION);
        assert.deepEqual([r.qemu.sense[0], r.qemu.sense[2], r.qemu.sense[12], r.qemu.sense[13]], [0x70, 0x0b, 0x00, 0x06]);
        assert.equal(r.outcome.kind, 'transport-failure');
      } finally {
        closeSync(fd);
      }
    });
  }

  it('a closed fd: EBADF -> the same generic answer', async () => {
    const fd = openSync(file, 'r');
    closeSync(fd);
    const r = await sgIo(fd, { cdb: readKeys, dataInLength: 16 });
    assert.equal(r.completion.errno, LinuxErrno.EBADF);
    assert.equal(r.qemu.status, ScsiStatus.CHECK_CONDITION);
    assert.equal(r.qemu.sense[2], 0x0b);
  });

  it('many in parallel all complete', async () => {
    const fd = openSync('/dev/null', 'r+');
    try {
      const runs = await Promise.all(Array.from({ length: 32 }, () => sgIo(fd, { cdb: readKeys, dataOut: new Uint8Array(0) })));
      assert.ok(runs.every((r) => r.completion.errno === LinuxErrno.ENOTTY));
    } finally {
      closeSync(fd);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('rejects bad arguments before any ioctl', async () => {
    await assert.rejects(sgIo(0, { cdb: new Uint8Array(3) }), RangeError);
    await assert.rejects(sgIo(0, { cdb: readKeys, dataInLength: 8, dataOut: new Uint8Array(8) }), RangeError);
    await assert.rejects(sgIo(0, { cdb: readKeys, timeoutMs: 0 }), RangeError);
  });
});

describe('sgIo runs off the event loop', () => {
  it('timers keep firing while commands block pool threads', { timeout: 20_000 }, async () => {
    // A pool-thread call that really blocks: read(2) on an empty pipe, standing in for a slow SG_IO.
    const libc = koffi.load('libc.so.6');
    const pipe = libc.func('int pipe(_Out_ int *fds)');
    const read = libc.func('intptr_t read(int fd, void *buf, size_t n)') as unknown as { async: (...a: unknown[]) => void };
    const write = libc.func('intptr_t write(int fd, const void *buf, size_t n)');
    const fds = new Int32Array(2);
    assert.equal(pipe(fds), 0);
    const sink = Buffer.alloc(1);
    const blockingIoctl: AsyncIoctl = (_fd, request, _arg, done) => {
      assert.equal(request, SG_IO);
      read.async(fds[0], sink, 1, (err: unknown, ret: number) => done(err ? -1 : Number(ret) >= 0 ? 0 : -1, 0, err ?? undefined));
    };
    let settled = 0;
    const runs = [0, 1, 2].map(() =>
      sgIo(99, { cdb: readKeys, dataInLength: 8, timeoutMs: 60_000 }, blockingIoctl).finally(() => {
        settled++;
      }),
    );
    let ticksWhilePending = 0;
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (settled === 0) ticksWhilePending++;
        if (ticksWhilePending === 3) {
          clearInterval(t);
          write(fds[1], Buffer.from([1, 2, 3]), 3);
          resolve();
        }
      }, 1);
    });
    const done = await Promise.all(runs);
    assert.equal(ticksWhilePending, 3, 'the event loop ran while all three commands were blocked');
    assert.ok(done.every((r) => r.outcome.kind === 'good'));
    const close = libc.func('int close(int fd)');
    close(fds[0]);
    close(fds[1]);
  });
});

describe('sizeUvThreadpool', () => {
  it('sets UV_THREADPOOL_SIZE when the operator did not', () => {
    const env: Record<string, string | undefined> = {};
    assert.equal(sizeUvThreadpool(16, env), 16);
    assert.equal(env['UV_THREADPOOL_SIZE'], '16');
  });
  it("keeps the operator's value", () => {
    const env: Record<string, string | undefined> = { UV_THREADPOOL_SIZE: '8' };
    assert.equal(sizeUvThreadpool(64, env), 8);
    assert.equal(env['UV_THREADPOOL_SIZE'], '8');
  });
  it('refuses sizes libuv does not accept', () => {
    assert.throws(() => sizeUvThreadpool(0, {}), RangeError);
    assert.throws(() => sizeUvThreadpool(1025, {}), RangeError);
  });
});
