// A PathIo backed by the PR device-server model: every path of a host is its own I_T nexus of one
// shared logical unit (initiator port x target port, as in the lab), so two hosts with their own
// engines can register, reserve and fence each other on the same LU. Paths can be taken down and
// brought back (a down path answers a transport failure, as a dead link does; its registration
// stays at the target, as registrations do across a transport loss). Commands can be held at a
// gate to observe ordering. PR commands for tests are built with the codecs.

import { ErrorCode, PrmuxError } from '../../src/errors.js';
import type { MapInfo, PathIo } from '../../src/fanout/types.js';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { HostStatus } from '../../src/scsi/constants.js';
import { transportFailure } from '../../src/scsi/outcome.js';
import { decodeReadKeys, decodeReadReservation } from '../../src/scsi/prin-data.js';
import { encodePrOutParams } from '../../src/scsi/prout-params.js';
import type { ScsiOutcome, TransportId } from '../../src/scsi/types.js';
import { PrDeviceServer, type Personality } from '../../src/scsi/model/device-server.js';

export const SAS_BASE = 0x5001405f00000000n;

export function sas(port: number): TransportId {
  return { protocol: 'sas', sasAddress: SAS_BASE + BigInt(port) };
}

export interface ModelPathSpec {
  readonly dev: string;
  /** Initiator port number (unique across hosts). */
  readonly initiatorPort: number;
  readonly relativeTargetPortId: number;
}

export interface ExecRecord {
  readonly path: string;
  readonly sa: number;
  readonly opcode: number;
  readonly outcome: ScsiOutcome['kind'];
}

export function newLun(personality: Personality = 'spc4'): PrDeviceServer {
  return new PrDeviceServer({ personality });
}

export class ModelPathIo implements PathIo {
  readonly lun: PrDeviceServer;
  readonly host: string;
  readonly #nexus = new Map<string, string>();
  readonly #down = new Set<string>();
  readonly log: ExecRecord[] = [];
  #gate: Promise<void> | null = null;
  #active = 0;
  /** Most commands ever in flight at once. */
  maxActive = 0;
  /** Called before each command runs (after the gate). */
  onExec: ((path: string, cdb: Uint8Array) => void) | null = null;
  closed = false;

  constructor(lun: PrDeviceServer, host: string, paths: readonly ModelPathSpec[]) {
    this.lun = lun;
    this.host = host;
    for (const p of paths) this.addPath(p);
  }

  addPath(p: ModelPathSpec): void {
    const id = `${this.host}/${p.dev}`;
    this.lun.addNexus({ id, initiator: sas(p.initiatorPort), relativeTargetPortId: p.relativeTargetPortId });
    this.#nexus.set(p.dev, id);
  }

  /** The LUN is unlinked from this path (hot removal): the nexus and its registration go away. */
  removePath(dev: string): void {
    const id = this.nexusOf(dev);
    this.lun.removeNexus(id);
    this.#nexus.delete(dev);
  }

  nexusOf(dev: string): string {
    const id = this.#nexus.get(dev);
    if (id === undefined) throw new RangeError(`no path ${dev} on ${this.host}`);
    return id;
  }

  setDown(dev: string, down: boolean): void {
    if (down) this.#down.add(dev);
    else this.#down.delete(dev);
  }

  /** Hold every command until the returned function is called. */
  hold(): () => void {
    let release!: () => void;
    this.#gate = new Promise<void>((r) => (release = r));
    const gate = this.#gate;
    return () => {
      if (this.#gate === gate) this.#gate = null;
      release();
    };
  }

  /** Keys registered through this path's nexus, as the model has them. */
  keyOn(dev: string): bigint | null {
    const id = this.nexusOf(dev);
    const r = this.lun.snapshot().registrations.find((x) => x.nexusId === id);
    return r === undefined ? null : BigInt(r.key);
  }

  async exec(_map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number): Promise<ScsiOutcome> {
    if (this.closed) throw new PrmuxError(ErrorCode.CLOSED, 'Cannot run a command: the path io is closed');
    const id = this.#nexus.get(path);
    if (id === undefined) throw new PrmuxError(ErrorCode.DEVICE, `Cannot open ${path}: no such path`);
    this.#active++;
    this.maxActive = Math.max(this.maxActive, this.#active);
    try {
      while (this.#gate !== null) await this.#gate;
      // A command is never answered synchronously by a real device.
      await Promise.resolve();
      this.onExec?.(path, cdb);
      let outcome: ScsiOutcome;
      if (this.#down.has(path) || !this.lun.hasNexus(id)) outcome = transportFailure(HostStatus.DID_TRANSPORT_DISRUPTED, `${path}: transport down`);
      else {
        outcome = this.lun.execute(id, cdb, dataOut ?? new Uint8Array(0));
        if (outcome.kind === 'good' && outcome.data.length > allocationLength) outcome = { kind: 'good', data: outcome.data.subarray(0, allocationLength) };
      }
      this.log.push({ path, opcode: cdb[0]!, sa: cdb[1]! & 0x1f, outcome: outcome.kind });
      return outcome;
    } finally {
      this.#active--;
    }
  }

  close(): void {
    this.closed = true;
  }
}

// --- guest commands ---------------------------------------------------------------------------------

export interface GuestCommand {
  readonly cdb: Uint8Array;
  readonly dataOut: Uint8Array | null;
  readonly allocationLength: number;
}

export function prOut(serviceAction: number, o: { key?: bigint; saKey?: bigint; type?: number; aptpl?: boolean; allTgPt?: boolean } = {}): GuestCommand {
  const params = encodePrOutParams({ key: o.key ?? 0n, serviceActionKey: o.saKey ?? 0n, specIPt: false, allTgPt: o.allTgPt ?? false, aptpl: o.aptpl ?? false, transportIds: [] });
  return { cdb: encodePrOutCdb({ serviceAction, type: o.type ?? 0, parameterListLength: params.length }), dataOut: params, allocationLength: 0 };
}

export function prIn(serviceAction: number, allocationLength = 8192): GuestCommand {
  return { cdb: encodePrInCdb({ serviceAction, allocationLength }), dataOut: null, allocationLength };
}

/** Keys registered on the LU, one per nexus (READ KEYS through any nexus, UA-free). */
export function keysOf(lun: PrDeviceServer): bigint[] {
  return lun.snapshot().registrations.map((r) => BigInt(r.key));
}

export function decodeKeys(o: ScsiOutcome): bigint[] {
  if (o.kind !== 'good') throw new Error(`expected GOOD, got ${o.kind}`);
  return [...decodeReadKeys(o.data).keys];
}

export function decodeReservation(o: ScsiOutcome): { key: bigint; type: number } | null {
  if (o.kind !== 'good') throw new Error(`expected GOOD, got ${o.kind}`);
  const r = decodeReadReservation(o.data).reservation;
  return r === null ? null : { key: r.key, type: r.type };
}

