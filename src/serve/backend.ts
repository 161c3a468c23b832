// The seam between the pr-helper front end and what executes a PERSISTENT RESERVE command: one
// SG_IO on the fd (kernel devices), the simulated SAN, and (next) the multipath fan-out engine.

import type { HelperAnswer } from '../scsi/helper-answer.js';
import type { DeviceTarget } from './device-target.js';

export interface PrCommand {
  /** The 10-byte PERSISTENT RESERVE IN/OUT CDB (the helper protocol pads it to 16). */
  readonly cdb: Uint8Array;
  /** PR OUT parameter list; null for PR IN. */
  readonly dataOut: Uint8Array | null;
  /** PR IN ALLOCATION LENGTH (0 for PR OUT). */
  readonly allocationLength: number;
  /** The device fd as received; the front end owns and closes it. */
  readonly fd: number;
  readonly target: DeviceTarget;
}

export interface PrBackend {
  readonly name: string;
  /** Answers every SCSI outcome as a value; rejects only when it could not run the command. */
  execute(cmd: PrCommand): Promise<HelperAnswer>;
  close?(): void;
}
