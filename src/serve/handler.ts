// The pr-helper request handler: inspect the received fd, refuse PR OUT on a read-only fd (as the
// stock helper does), resolve the device, run the command on the backend that owns it, and close
// the fd exactly once whatever happens. Every command is reported to the observer (logs, metrics,
// the admin API hook here).

import { Asc, Opcode, SenseKey } from '../scsi/constants.js';
import { type HelperAnswer, answerForErrno, checkConditionAnswer } from '../scsi/helper-answer.js';
import { LinuxErrno } from '../scsi/sgio-result.js';
import type { PrHelperAnswer, PrHelperRequest } from '../socket/pr-helper-session.js';
import { type Logger, nullLogger } from '../socket/logger.js';
import type { PrBackend } from './backend.js';
import { type DeviceTarget, describeTarget } from './device-target.js';
import type { FdInfo } from './fd-info.js';

export interface CommandRecord {
  readonly opcode: number;
  readonly serviceAction: number;
  readonly target: string;
  readonly backend: string | null;
  readonly status: number;
  readonly durationMs: number;
  /** Why the command did not reach a device, when it did not. */
  readonly refused?: string;
}

export interface HandlerOptions {
  readonly inspect: (fd: number) => FdInfo;
  readonly resolve: (info: FdInfo) => DeviceTarget;
  readonly backendFor: (target: DeviceTarget) => PrBackend;
  readonly closeFd: (fd: number) => void;
  readonly logger?: Logger | null;
  readonly onCommand?: (r: CommandRecord) => void;
  readonly now?: () => number;
}

/** The 10-byte PERSISTENT RESERVE CDB inside the helper's zero-padded 16. */
const PR_CDB_LENGTH = 10;

export function createPrRequestHandler(opts: HandlerOptions): (req: PrHelperRequest) => Promise<PrHelperAnswer> {
  const log = opts.logger ?? nullLogger;
  const now = opts.now ?? (() => performance.now());
  return async (req) => {
    const started = now();
    const opcode = req.cdb[0]!;
    const serviceAction = req.cdb[1]! & 0x1f;
    let target = '?';
    let backendName: string | null = null;
    let refused: string | undefined;
    let answer: HelperAnswer | null = null;
    try {
      let info: FdInfo;
      try {
        info = opts.inspect(req.fd);
      } catch (e) {
        refused = `cannot inspect fd: ${(e as Error).message}`;
        const errno = (e as NodeJS.ErrnoException).errno;
        answer = answerForErrno(errno !== undefined && errno !== 0 ? Math.abs(errno) : LinuxErrno.EBADF);
        return answer;
      }
      if (opcode === Opcode.PERSISTENT_RESERVE_OUT && info.accessMode === 'read-only') {
        // qemu-pr-helper's do_pr_out: an fd the guest may only read cannot change reservations.
        refused = 'PR OUT on a read-only fd';
        answer = checkConditionAnswer(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE.asc, Asc.INVALID_COMMAND_OPERATION_CODE.ascq);
        return answer;
      }
      const t = opts.resolve(info);
      target = describeTarget(t);
      const backend = opts.backendFor(t);
      backendName = backend.name;
      const cdb = req.cdb.slice(0, PR_CDB_LENGTH);
      const allocationLength = opcode === Opcode.PERSISTENT_RESERVE_IN ? (cdb[7]! << 8) | cdb[8]! : 0;
      answer = await backend.execute({ cdb, dataOut: req.dataOut, allocationLength, fd: req.fd, target: t });
      return answer;
    } catch (e) {
      // The backend could not run the command at all (SAN unreachable, bad argument): answer as
      // the stock helper answers an SG_IO that failed, and keep the connection.
      log.error('PR command failed before reaching the device', { target, error: (e as Error).message });
      refused = (e as Error).message;
      answer = answerForErrno(LinuxErrno.EIO);
      return answer;
    } finally {
      opts.closeFd(req.fd);
      const record: CommandRecord = {
        opcode,
        serviceAction,
        target,
        backend: backendName,
        status: answer?.status ?? -1,
        durationMs: now() - started,
        ...(refused !== undefined ? { refused } : {}),
      };
      try {
        log.debug('PR command', { ...record });
        opts.onCommand?.(record);
      } catch (e) {
        // An observer's failure must not cost the guest its answer.
        log.error('PR command observer failed', { error: (e as Error).message });
      }
    }
  };
}
