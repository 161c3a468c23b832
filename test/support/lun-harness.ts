// Test harness around the PR device-server model: one logical unit reachable through N I_T nexuses
// laid out as the LIO lab has them (shared/lab/RECIPE.md): path pN is initiator port
// naa.5001405f0000000N (SAS TransportID) on relative target port N. PR IN / PR OUT commands are
// built with the src/scsi codecs and their data decoded with them, so a test reads as the sequence
// of commands it sends; assertion helpers name the status a test expects.

import assert from 'node:assert/strict';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { Opcode, PrInAction, PrOutAction, SenseKey, type AscAscq } from '../../src/scsi/constants.js';
import { formatOutcome } from '../../src/scsi/outcome.js';
import {
  decodeCapabilities,
  decodeReadFullStatus,
  decodeReadKeys,
  decodeReadReservation,
} from '../../src/scsi/prin-data.js';
import { encodePrOutParams, encodeRegisterAndMoveParams } from '../../src/scsi/prout-params.js';
import { parseSense } from '../../src/scsi/sense.js';
import type {
  Capabilities,
  ReadFullStatusData,
  ReadKeysData,
  ReadReservationData,
  ScsiOutcome,
  TransportId,
  Truncation,
} from '../../src/scsi/types.js';
import {
  PrDeviceServer,
  type Personality,
  type PrStateSnapshot,
} from '../../src/scsi/model/device-server.js';

/** SAS address of initiator port n in the lab: naa.5001405f0000000N. */
export const LAB_SAS_BASE = 0x5001405f00000000n;

export function sasInitiator(n: number): TransportId {
  return { protocol: 'sas', sasAddress: LAB_SAS_BASE + BigInt(n) };
}

export interface LunOptions {
  readonly personality?: Personality;
  /** Number of I_T nexuses p1..pN (default 2). Path pN is on relative target port N. */
  readonly paths?: number;
  /**
   * Initiator port number of each path, 1-based (default: path pN uses initiator port N). Give
   * e.g. [1, 1, 2] for p1 and p2 sharing initiator port 1 through target ports 1 and 2 (the layout
   * ALL_TG_PT is about).
   */
  readonly initiators?: readonly number[];
  readonly onAbortTasks?: (nexusIds: readonly string[]) => void;
}

export interface RegisterOptions {
  /** RESERVATION KEY (default 0: what an unregistered nexus sends). */
  readonly key?: bigint;
  readonly aptpl?: boolean;
  readonly allTgPt?: boolean;
  /** SPEC_I_PT with these TransportIDs. */
  readonly specIPt?: readonly TransportId[];
}

export interface RegisterAndMoveOptions {
  readonly key: bigint;
  readonly saKey: bigint;
  /** Destination: a path of this LU, or an explicit TransportID and relative target port. */
  readonly to: string | { readonly transportId: TransportId; readonly relativeTargetPortId: number };
  readonly unreg?: boolean;
  readonly aptpl?: boolean;
}

export interface PrOutRequest {
  readonly serviceAction: number;
  readonly type?: number;
  readonly scope?: number;
  /** Parameter list bytes sent as data-out. */
  readonly params: Uint8Array;
  /** CDB PARAMETER LIST LENGTH; defaults to params.length. */
  readonly parameterListLength?: number;
}

/** The largest ALLOCATION LENGTH (16 bits): reads everything the model has. */
export const FULL_ALLOCATION = 0xffff;

export class LunHarness {
  readonly ds: PrDeviceServer;
  readonly paths: readonly string[];
  private readonly initiatorByPath = new Map<string, TransportId>();
  private readonly rtpiByPath = new Map<string, number>();

  constructor(options: LunOptions = {}) {
    const count = options.paths ?? 2;
    const initiators = options.initiators ?? Array.from({ length: count }, (_, i) => i + 1);
    if (initiators.length !== count) throw new RangeError(`initiators has ${initiators.length} entries for ${count} paths`);
    this.ds = new PrDeviceServer({
      ...(options.personality !== undefined ? { personality: options.personality } : {}),
      ...(options.onAbortTasks !== undefined ? { onAbortTasks: options.onAbortTasks } : {}),
    });
    const paths: string[] = [];
    for (let i = 0; i < count; i++) {
      const id = `p${i + 1}`;
      const initiator = sasInitiator(initiators[i]!);
      this.ds.addNexus({ id, initiator, relativeTargetPortId: i + 1 });
      this.initiatorByPath.set(id, initiator);
      this.rtpiByPath.set(id, i + 1);
      paths.push(id);
    }
    this.paths = paths;
  }

  initiator(path: string): TransportId {
    const t = this.initiatorByPath.get(path);
    if (!t) throw new RangeError(`no path ${path}`);
    return t;
  }

  rtpi(path: string): number {
    const r = this.rtpiByPath.get(path);
    if (r === undefined) throw new RangeError(`no path ${path}`);
    return r;
  }

  snapshot(): PrStateSnapshot {
    return this.ds.snapshot();
  }

  exec(path: string, cdb: Uint8Array, dataOut?: Uint8Array): ScsiOutcome {
    return this.ds.execute(path, cdb, dataOut);
  }

  // ---- PERSISTENT RESERVE IN ---------------------------------------------------------------------

  prIn(path: string, serviceAction: number, allocationLength: number = FULL_ALLOCATION): ScsiOutcome {
    return this.exec(path, encodePrInCdb({ serviceAction, allocationLength }));
  }

  readKeys(path: string): ReadKeysData & Truncation {
    return decodeReadKeys(expectGood(this.prIn(path, PrInAction.READ_KEYS), `READ KEYS on ${path}`));
  }

  readReservation(path: string): ReadReservationData & Truncation {
    return decodeReadReservation(expectGood(this.prIn(path, PrInAction.READ_RESERVATION), `READ RESERVATION on ${path}`));
  }

  readFullStatus(path: string): ReadFullStatusData & Truncation {
    return decodeReadFullStatus(expectGood(this.prIn(path, PrInAction.READ_FULL_STATUS), `READ FULL STATUS on ${path}`));
  }

  capabilities(path: string): Capabilities {
    return decodeCapabilities(expectGood(this.prIn(path, PrInAction.REPORT_CAPABILITIES), `REPORT CAPABILITIES on ${path}`));
  }

  /** PRGENERATION as READ KEYS reports it on `path`. */
  generation(path: string): number {
    return this.readKeys(path).generation;
  }

  // ---- PERSISTENT RESERVE OUT --------------------------------------------------------------------

  prOut(path: string, r: PrOutRequest): ScsiOutcome {
    const cdb = encodePrOutCdb({
      serviceAction: r.serviceAction,
      scope: r.scope ?? 0,
      type: r.type ?? 0,
      parameterListLength: r.parameterListLength ?? r.params.length,
    });
    return this.exec(path, cdb, r.params);
  }

  /** The basic parameter list (24 bytes, or 28 + TransportIDs with SPEC_I_PT). */
  static params(key: bigint, saKey: bigint, o: Omit<RegisterOptions, 'key'> = {}): Uint8Array {
    return encodePrOutParams({
      key,
      serviceActionKey: saKey,
      specIPt: o.specIPt !== undefined,
      allTgPt: o.allTgPt ?? false,
      aptpl: o.aptpl ?? false,
      transportIds: o.specIPt ?? [],
    });
  }

  register(path: string, saKey: bigint, o: RegisterOptions = {}): ScsiOutcome {
    return this.prOut(path, { serviceAction: PrOutAction.REGISTER, params: LunHarness.params(o.key ?? 0n, saKey, o) });
  }

  registerAndIgnore(path: string, saKey: bigint, o: Omit<RegisterOptions, 'key'> = {}): ScsiOutcome {
    return this.prOut(path, {
      serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
      params: LunHarness.params(0n, saKey, o),
    });
  }

  reserve(path: string, key: bigint, type: number, scope = 0): ScsiOutcome {
    return this.prOut(path, { serviceAction: PrOutAction.RESERVE, type, scope, params: LunHarness.params(key, 0n) });
  }

  release(path: string, key: bigint, type: number, scope = 0): ScsiOutcome {
    return this.prOut(path, { serviceAction: PrOutAction.RELEASE, type, scope, params: LunHarness.params(key, 0n) });
  }

  clear(path: string, key: bigint): ScsiOutcome {
    return this.prOut(path, { serviceAction: PrOutAction.CLEAR, params: LunHarness.params(key, 0n) });
  }

  preempt(path: string, key: bigint, saKey: bigint, type: number, o: { abort?: boolean; scope?: number } = {}): ScsiOutcome {
    return this.prOut(path, {
      serviceAction: o.abort === true ? PrOutAction.PREEMPT_AND_ABORT : PrOutAction.PREEMPT,
      type,
      scope: o.scope ?? 0,
      params: LunHarness.params(key, saKey),
    });
  }

  preemptAndAbort(path: string, key: bigint, saKey: bigint, type: number): ScsiOutcome {
    return this.preempt(path, key, saKey, type, { abort: true });
  }

  registerAndMoveParams(o: RegisterAndMoveOptions): Uint8Array {
    const dest =
      typeof o.to === 'string' ? { transportId: this.initiator(o.to), relativeTargetPortId: this.rtpi(o.to) } : o.to;
    return encodeRegisterAndMoveParams({
      key: o.key,
      serviceActionKey: o.saKey,
      unreg: o.unreg ?? false,
      aptpl: o.aptpl ?? false,
      relativeTargetPortId: dest.relativeTargetPortId,
      transportId: dest.transportId,
    });
  }

  registerAndMove(path: string, o: RegisterAndMoveOptions): ScsiOutcome {
    return this.prOut(path, { serviceAction: PrOutAction.REGISTER_AND_MOVE, params: this.registerAndMoveParams(o) });
  }

  // ---- ordinary commands ---------------------------------------------------------------------------

  read10(path: string, lba = 0, blocks = 1): ScsiOutcome {
    return this.exec(path, rw10Cdb(Opcode.READ_10, lba, blocks));
  }

  write10(path: string, lba = 0, blocks = 1): ScsiOutcome {
    return this.exec(path, rw10Cdb(Opcode.WRITE_10, lba, blocks), new Uint8Array(blocks * this.ds.identity.blockSize));
  }

  inquiry(path: string, allocationLength = 96): ScsiOutcome {
    // No codec builds INQUIRY: SPC-4 6.6, bytes 3-4 ALLOCATION LENGTH.
    return this.exec(path, Uint8Array.from([Opcode.INQUIRY, 0, 0, allocationLength >> 8, allocationLength & 0xff, 0]));
  }

  testUnitReady(path: string): ScsiOutcome {
    return this.exec(path, new Uint8Array(6));
  }

  /**
   * Report and clear every unit attention pending on `path` with TEST UNIT READY (allowed through
   * every reservation type, SPC-4 table 66), returning them as "asc/ascq" in the order reported.
   */
  drainUnitAttentions(path: string): string[] {
    const seen: string[] = [];
    for (let i = 0; i < 16; i++) {
      const o = this.testUnitReady(path);
      if (o.kind === 'good') return seen;
      if (o.kind !== 'check-condition') assert.fail(`TEST UNIT READY on ${path}: got ${formatOutcome(o)}`);
      const s = parseSense(o.sense);
      if (s.key !== SenseKey.UNIT_ATTENTION) assert.fail(`TEST UNIT READY on ${path}: got ${formatOutcome(o)}`);
      seen.push(`${hex2(s.asc)}/${hex2(s.ascq)}`);
    }
    return assert.fail(`TEST UNIT READY on ${path}: more than 16 unit attentions`);
  }
}

/** READ(10) / WRITE(10) CDB (SBC-3 5.11 / 5.35); no codec in src/scsi builds these. */
export function rw10Cdb(opcode: number, lba: number, blocks: number): Uint8Array {
  const cdb = new Uint8Array(10);
  cdb[0] = opcode;
  new DataView(cdb.buffer).setUint32(2, lba);
  new DataView(cdb.buffer).setUint16(7, blocks);
  return cdb;
}

export function makeLun(options: LunOptions = {}): LunHarness {
  return new LunHarness(options);
}

// ---- assertions ------------------------------------------------------------------------------------

/** Asserts GOOD; returns the data-in bytes. */
export function expectGood(o: ScsiOutcome, what = 'command'): Uint8Array {
  if (o.kind !== 'good') assert.fail(`${what}: expected GOOD, got ${formatOutcome(o)}`);
  return o.data;
}

export function expectConflict(o: ScsiOutcome, what = 'command'): void {
  if (o.kind !== 'reservation-conflict') assert.fail(`${what}: expected RESERVATION CONFLICT, got ${formatOutcome(o)}`);
}

/** Asserts CHECK CONDITION with this sense key, ASC and ASCQ. */
export function expectSense(o: ScsiOutcome, key: number, asc: number, ascq: number, what = 'command'): void {
  const want = `${key.toString(16)}/${hex2(asc)}/${hex2(ascq)}`;
  if (o.kind !== 'check-condition') assert.fail(`${what}: expected CHECK CONDITION ${want}, got ${formatOutcome(o)}`);
  const s = parseSense(o.sense);
  const got = `${s.key.toString(16)}/${hex2(s.asc)}/${hex2(s.ascq)}`;
  assert.equal(got, want, `${what}: expected sense ${want}, got ${formatOutcome(o)}`);
}

/** CHECK CONDITION, ILLEGAL REQUEST with this ASC/ASCQ. */
export function expectIllegal(o: ScsiOutcome, a: AscAscq, what = 'command'): void {
  expectSense(o, SenseKey.ILLEGAL_REQUEST, a.asc, a.ascq, what);
}

/** CHECK CONDITION, UNIT ATTENTION with this ASC/ASCQ. */
export function expectUa(o: ScsiOutcome, a: AscAscq, what = 'command'): void {
  expectSense(o, SenseKey.UNIT_ATTENTION, a.asc, a.ascq, what);
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
