// Kernel devices: one SG_IO on the received fd, run on the libuv pool. For a dm-multipath map the
// kernel sends it down one path it picks (what Debian's qemu-pr-helper does without
// libmpathpersist); the fan-out engine replaces that for maps.

import { LinuxErrno } from '../scsi/sgio-result.js';
import { type HelperAnswer, answerForErrno } from '../scsi/helper-answer.js';
import { type AsyncIoctl, koffiIoctl, sgIo } from '../sgio/sg-io.js';
import type { PrBackend, PrCommand } from './backend.js';

export interface SgIoBackendOptions {
  readonly timeoutMs: number;
  /** ioctl seam for tests. */
  readonly ioctl?: AsyncIoctl;
}

export class SgIoBackend implements PrBackend {
  readonly name = 'sg_io';
  readonly #timeoutMs: number;
  readonly #ioctl: AsyncIoctl;

  constructor(opts: SgIoBackendOptions) {
    this.#timeoutMs = opts.timeoutMs;
    this.#ioctl = opts.ioctl ?? koffiIoctl;
  }

  async execute(cmd: PrCommand): Promise<HelperAnswer> {
    if (cmd.target.kind === 'not-a-device' && cmd.target.type !== 'file') {
      // A socket, pipe or directory: an ioctl there means nothing. Answer what the stock helper's
      // SG_IO on a non-device answers (ENOTTY), without issuing it. A regular file does get the
      // ioctl, as the stock helper issues it (the kernel answers ENOTTY).
      return answerForErrno(LinuxErrno.ENOTTY);
    }
    const run = await sgIo(
      cmd.fd,
      cmd.dataOut !== null ? { cdb: cmd.cdb, dataOut: cmd.dataOut, timeoutMs: this.#timeoutMs } : { cdb: cmd.cdb, dataInLength: cmd.allocationLength, timeoutMs: this.#timeoutMs },
      this.#ioctl,
    );
    const q = run.qemu;
    const data = run.completion.data === null ? new Uint8Array(0) : run.completion.data.subarray(0, Math.min(q.dataLength, cmd.allocationLength));
    return { status: q.status, sense: q.sense, data };
  }
}
