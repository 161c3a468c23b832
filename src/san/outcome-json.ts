// Outcomes on the simulated SAN's san.sock: how the SAN writes them and how clients (prmux serve's
// SAN backend, the fan-out engine's SAN path I/O) read them back.

import { ErrorCode, PrmuxError } from '../errors.js';
import { fromHex, hex } from '../scsi/bytes.js';
import type { ScsiOutcome } from '../scsi/types.js';

export function outcomeToJson(o: ScsiOutcome): Record<string, unknown> {
  switch (o.kind) {
    case 'good':
      return { kind: 'good', data: hex(o.data) };
    case 'check-condition':
      return { kind: 'check-condition', sense: hex(o.sense) };
    case 'transport-failure':
      return { kind: 'transport-failure', hostStatus: o.hostStatus, driverStatus: o.driverStatus, errno: o.errno, detail: o.detail };
    default:
      return { kind: o.kind };
  }
}

/** Parse the SAN's san.sock outcome JSON back into an outcome value. */
export function outcomeFromJson(v: unknown): ScsiOutcome {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  switch (o['kind']) {
    case 'good':
      return { kind: 'good', data: fromHex(String(o['data'] ?? '')) };
    case 'check-condition':
      return { kind: 'check-condition', sense: fromHex(String(o['sense'] ?? '')) };
    case 'reservation-conflict':
    case 'busy':
    case 'task-set-full':
      return { kind: o['kind'] };
    case 'transport-failure':
      return {
        kind: 'transport-failure',
        hostStatus: Number(o['hostStatus'] ?? 0),
        driverStatus: Number(o['driverStatus'] ?? 0),
        errno: Number(o['errno'] ?? 0),
        detail: String(o['detail'] ?? ''),
      };
    default:
      throw new PrmuxError(ErrorCode.SAN, `Cannot read SAN outcome: kind ${JSON.stringify(o['kind'])} is unknown`);
  }
}

