// `prmux serve`'s backend for dm-multipath maps: a received fd that resolves to a multipath map
// (kernel: dm uuid "mpath-<wwid>"; simulated SAN: a map stand-in) runs its PR command through the
// multipath engine (fan-out over the map's paths, key consistency guard) instead of one SG_IO the
// kernel sends down whichever path it picks.
//
// The guest gets the answer of the path that decided the outcome, converted exactly as the SG_IO
// backend converts a kernel answer (answerFromOutcome), data cut to the allocation length. A map
// neither multipathd nor sysfs knows is not guessed at: the command is rejected with a PrmuxError,
// and the request handler answers it as it answers an SG_IO that could not be issued.

import { ErrorCode, isPrmuxError, PrmuxError } from '../errors.js';
import { type HelperAnswer, answerFromOutcome } from '../scsi/helper-answer.js';
import type { PrBackend, PrCommand } from '../serve/backend.js';
import { type DeviceTarget, describeTarget, MPATH_UUID_PREFIX } from '../serve/device-target.js';
import { type Logger, nullLogger } from '../socket/logger.js';
import type { MapKey, MultipathEngine } from './engine.js';

/** What the backend needs of the engine (MultipathEngine has it). */
export type EngineLike = Pick<MultipathEngine, 'execute'> & { close?(): Promise<void> };

export interface MultipathBackendOptions {
  readonly engine: EngineLike;
  readonly logger?: Logger | null;
  /** close() also closes the engine (default false: whoever built the engine closes it). */
  readonly closeEngine?: boolean;
}

/** The engine's lookup key for a target, or null when the target is not a multipath map. */
export function mapKeyOf(t: DeviceTarget): MapKey | null {
  switch (t.kind) {
    case 'multipath': {
      const key: { wwid?: string; devT: string; name: string } = { devT: `${t.major}:${t.minor}`, name: t.map };
      if (t.uuid.startsWith(MPATH_UUID_PREFIX) && t.uuid.length > MPATH_UUID_PREFIX.length) key.wwid = t.uuid.slice(MPATH_UUID_PREFIX.length);
      return key;
    }
    case 'san-map':
      return { wwid: t.wwid, name: t.map };
    default:
      return null;
  }
}

export class MultipathBackend implements PrBackend {
  readonly name = 'multipath';
  readonly #engine: EngineLike;
  readonly #log: Logger;
  readonly #closeEngine: boolean;

  constructor(opts: MultipathBackendOptions) {
    this.#engine = opts.engine;
    this.#log = opts.logger ?? nullLogger;
    this.#closeEngine = opts.closeEngine ?? false;
  }

  /** Whether this backend serves the target (a multipath map of either kind). */
  static handles(t: DeviceTarget): boolean {
    return mapKeyOf(t) !== null;
  }

  async execute(cmd: PrCommand): Promise<HelperAnswer> {
    const key = mapKeyOf(cmd.target);
    if (key === null) {
      throw new PrmuxError(ErrorCode.DEVICE, `Cannot run a PR command through the multipath engine: target ${describeTarget(cmd.target)} is not a multipath map`);
    }
    let result;
    try {
      result = await this.#engine.execute(key, cmd.cdb, cmd.dataOut, cmd.allocationLength);
    } catch (e) {
      if (isPrmuxError(e, ErrorCode.DEVICE)) {
        this.#log.warn('multipath map unknown to multipathd and sysfs; the command fails as a failed SG_IO would', { target: describeTarget(cmd.target), error: e.message });
      }
      throw e;
    }
    const answer = answerFromOutcome(result.outcome);
    return answer.data.length > cmd.allocationLength ? { ...answer, data: answer.data.subarray(0, cmd.allocationLength) } : answer;
  }

  close(): void {
    if (!this.#closeEngine || this.#engine.close === undefined) return;
    this.#engine.close().catch((e: unknown) => this.#log.error('closing the multipath engine failed', { error: (e as Error).message }));
  }
}
