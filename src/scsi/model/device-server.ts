// SPC-4 persistent-reservation device server for one logical unit: pure and deterministic.
//
// The logical unit is reachable through any number of I_T nexuses (initiator port x target port).
// Each command is executed on one nexus: `execute(nexusId, cdb, dataOut)` returns a ScsiOutcome.
// Two personalities:
//  - 'spc4': answers as SPC-4 (spc4r37 5.13, 6.15, 6.16) says.
//  - 'lio' (default): answers as the Linux LIO target (target_core_pr.c, Debian 6.1) does, deviations
//    included, as measured in the lab (shared/lab/LIO-BEHAVIOUR.md). LIO's PREEMPT AND ABORT hang
//    is a bug and is not reproduced: both personalities complete it with GOOD.
// Each deviation is marked `LIO n` with the number it has in LIO-BEHAVIOUR.md; LIO 11-14 were found
// after that list was written (the fidelity check, test/lab/fidelity.test.ts, and a lab probe of the
// same kernel) and continue its numbering.

import { decodePrInCdb, decodePrOutCdb } from '../cdb.js';
import {
  Asc,
  type AscAscq,
  isAllRegistrantsType,
  isExclusiveAccessType,
  isPrType,
  isRegistrantsType,
  LU_SCOPE,
  Opcode,
  PrInAction,
  PrOutAction,
  SenseKey,
} from '../constants.js';
import { encodeCapabilities, encodeReadFullStatus, encodeReadKeys, encodeReadReservation } from '../prin-data.js';
import { decodePrOutParams, isParameterListLengthError } from '../prout-params.js';
import { checkCondition, good, reservationConflict } from '../outcome.js';
import { decodeTransportId, formatTransportId, transportIdEquals } from '../transport-id.js';
import { fromHex, readU16, readU32, readU64 } from '../bytes.js';
import { buildSense } from '../sense.js';
import { isPrmuxError } from '../../errors.js';
import type { ScsiOutcome, TransportId } from '../types.js';

export type Personality = 'lio' | 'spc4';

export interface NexusSpec {
  /** Caller's name for the nexus (a path id in the simulated SAN). */
  readonly id: string;
  /** The initiator port, as READ FULL STATUS reports it and SPEC_I_PT / REGISTER AND MOVE name it. */
  readonly initiator: TransportId;
  /** Relative target port identifier of the target port (SPC-4 3.1.120). */
  readonly relativeTargetPortId: number;
}

export interface LogicalUnitIdentity {
  readonly vendor: string;
  readonly product: string;
  readonly revision: string;
  /** Unit serial number (VPD page 0x80) and NAA designator for VPD page 0x83, as hex without 0x. */
  readonly serial: string;
  readonly naa: string;
  readonly blocks: number;
  readonly blockSize: number;
}

export interface DeviceServerOptions {
  readonly personality?: Personality;
  readonly identity?: Partial<LogicalUnitIdentity>;
  /**
   * Called when PREEMPT AND ABORT aborts the tasks of the preempted nexuses (SPC-4 5.13.11.2.6), so a
   * transport that has commands of those nexuses in flight can terminate them.
   */
  readonly onAbortTasks?: (nexusIds: readonly string[]) => void;
}

/** One registration: a reservation key held by one I_T nexus. */
interface Registration {
  readonly nexusId: string;
  key: bigint;
  readonly allTgPt: boolean;
  /** Type and scope as the device server stores them with the registration (LIO keeps them here). */
  resType: number;
  resScope: number;
}

interface NexusState {
  readonly spec: NexusSpec;
  unitAttentions: AscAscq[];
}

/** A serialisable snapshot of the PR state, for status output and tests. */
export interface PrStateSnapshot {
  readonly personality: Personality;
  readonly generation: number;
  readonly aptplActive: boolean;
  readonly registrations: readonly {
    readonly nexusId: string;
    readonly key: string;
    readonly allTgPt: boolean;
    readonly initiator: string;
    readonly relativeTargetPortId: number;
  }[];
  readonly reservation: {
    readonly type: number;
    readonly scope: number;
    /** Holder nexus; for All Registrants types every registrant holds and this names the one the device server records. */
    readonly holderNexusId: string;
    readonly key: string;
  } | null;
  readonly unitAttentions: Readonly<Record<string, readonly string[]>>;
  readonly nexuses: readonly { readonly id: string; readonly initiator: string; readonly relativeTargetPortId: number }[];
}

/** What survives a power loss when APTPL is active: registrations (by initiator + target port) and the reservation. */
export interface PersistentPrState {
  readonly generation: number;
  readonly registrations: readonly {
    readonly initiator: string;
    readonly relativeTargetPortId: number;
    readonly key: string;
    readonly allTgPt: boolean;
    readonly holder: boolean;
    readonly resType: number;
    readonly resScope: number;
  }[];
}

const DEFAULT_IDENTITY: LogicalUnitIdentity = {
  vendor: 'LIO-ORG',
  product: 'FILEIO',
  revision: '4.0',
  serial: '6001405c0ffee0000000000000000001',
  naa: '60014056001405c0ffee000000000000',
  blocks: 131072,
  blockSize: 512,
};

/** Outcomes of the PR OUT handlers before they reach the wire. */
type Verdict = ScsiOutcome;

const illegal = (asc: AscAscq): Verdict => checkCondition(SenseKey.ILLEGAL_REQUEST, asc);
const INVALID_CDB = (): Verdict => illegal(Asc.INVALID_FIELD_IN_CDB);
const INVALID_PARAM = (): Verdict => illegal(Asc.INVALID_FIELD_IN_PARAMETER_LIST);
const PARAM_LEN = (): Verdict => illegal(Asc.PARAMETER_LIST_LENGTH_ERROR);
/** LIO's TCM_LOGICAL_UNIT_COMMUNICATION_FAILURE: NOT READY 08/00 (LIO 1). */
const LIO_LUN_COMM_FAILURE = (): Verdict => checkCondition(SenseKey.NOT_READY, Asc.LOGICAL_UNIT_COMMUNICATION_FAILURE);

/** REQUEST SENSE (SPC-4 6.39); constants.ts has no entry for it. */
const REQUEST_SENSE = 0x03;

/** How an ordinary command is judged against a reservation (SPC-4 table 66 / SBC-3 table 13). */
type AccessClass = 'always' | 'read' | 'write' | 'nodata' | 'mode-sense';

function accessClassOf(opcode: number): AccessClass {
  switch (opcode) {
    case Opcode.INQUIRY:
    case Opcode.REPORT_LUNS:
    case REQUEST_SENSE:
    case Opcode.PERSISTENT_RESERVE_IN:
    case Opcode.TEST_UNIT_READY:
    case Opcode.RESERVE_6:
    case Opcode.RELEASE_6:
    case 0x4d: // LOG SENSE
      return 'always';
    case Opcode.MODE_SENSE_6:
    case Opcode.MODE_SENSE_10:
    case Opcode.READ_BUFFER:
      return 'mode-sense';
    case Opcode.READ_6:
    case Opcode.READ_10:
    case Opcode.READ_12:
    case Opcode.READ_16:
    case Opcode.READ_CAPACITY_10:
    case Opcode.SERVICE_ACTION_IN_16:
    case Opcode.MAINTENANCE_IN:
      return 'read';
    case Opcode.WRITE_6:
    case Opcode.WRITE_10:
    case Opcode.WRITE_12:
    case Opcode.WRITE_16:
    case Opcode.WRITE_VERIFY_10:
    case Opcode.WRITE_SAME_16:
    case Opcode.COMPARE_AND_WRITE:
    case Opcode.UNMAP:
    case Opcode.MODE_SELECT_6:
    case Opcode.MODE_SELECT_10:
    case Opcode.WRITE_BUFFER:
    case Opcode.PERSISTENT_RESERVE_OUT:
      return 'write';
    default:
      return 'nodata';
  }
}

/** Opcodes that do not report a pending unit attention (SAM-5 5.14, SPC-4 table 51). */
function exemptFromUnitAttention(opcode: number): boolean {
  return opcode === Opcode.INQUIRY || opcode === Opcode.REPORT_LUNS || opcode === REQUEST_SENSE;
}

export class PrDeviceServer {
  readonly personality: Personality;
  readonly identity: LogicalUnitIdentity;
  private readonly onAbortTasks: ((nexusIds: readonly string[]) => void) | undefined;
  private readonly nexuses = new Map<string, NexusState>();
  /** Registrations in the order they were made: READ KEYS and READ FULL STATUS list them so. */
  private registrations: Registration[] = [];
  /**
   * The registration the device server records as reservation holder. Under All Registrants types
   * every registrant is a holder; this is then the one the reservation type is kept with.
   */
  private holder: Registration | null = null;
  private generation = 0;
  private aptplActive = false;

  constructor(options: DeviceServerOptions = {}) {
    this.personality = options.personality ?? 'lio';
    this.identity = { ...DEFAULT_IDENTITY, ...options.identity };
    this.onAbortTasks = options.onAbortTasks;
  }

  // ---- topology ---------------------------------------------------------------------------------

  addNexus(spec: NexusSpec): void {
    if (this.nexuses.has(spec.id)) throw new RangeError(`Cannot add nexus: id ${spec.id} exists already`);
    this.nexuses.set(spec.id, { spec, unitAttentions: [] });
  }

  /**
   * The nexus goes away (path removed, LUN unlinked from its target port). Its registrations are
   * freed as LIO does on a LUN unlink (every one of them: LIO 11 can leave two for one nexus); a
   * reservation it held is released implicitly (an All Registrants reservation stays with the
   * remaining registrants). No unit attention, no generation change: no PR OUT command ran.
   */
  removeNexus(id: string): void {
    for (const reg of this.registrations.filter((r) => r.nexusId === id)) this.freeRegistration(reg, { implicitRelease: true });
    this.nexuses.delete(id);
  }

  hasNexus(id: string): boolean {
    return this.nexuses.has(id);
  }

  /** Queue a unit attention for one nexus (fault injection; also used for power-on). */
  queueUnitAttention(nexusId: string, ua: AscAscq): void {
    const n = this.nexusState(nexusId);
    this.establishUa(n, ua);
  }

  /**
   * Power cycle the logical unit (SPC-4 5.13.5): registrations and the reservation survive only if
   * APTPL is active; PRGENERATION restarts at 0; every nexus sees POWER ON RESET.
   */
  powerCycle(): void {
    const keep = this.aptplActive ? this.exportPersistent() : null;
    this.registrations = [];
    this.holder = null;
    this.generation = 0;
    this.aptplActive = false;
    for (const n of this.nexuses.values()) n.unitAttentions = [];
    if (keep) this.importPersistent(keep);
    for (const n of this.nexuses.values()) this.establishUa(n, Asc.POWER_ON_RESET);
  }

  /** APTPL state for a persistent store, or null when APTPL is not active. */
  exportPersistent(): PersistentPrState | null {
    if (!this.aptplActive) return null;
    return {
      generation: this.generation,
      registrations: this.registrations.map((r) => {
        const spec = this.nexusState(r.nexusId).spec;
        return {
          initiator: formatTransportId(spec.initiator),
          relativeTargetPortId: spec.relativeTargetPortId,
          key: '0x' + r.key.toString(16),
          allTgPt: r.allTgPt,
          holder: r === this.holder,
          resType: r.resType,
          resScope: r.resScope,
        };
      }),
    };
  }

  /**
   * Restore APTPL state (after a power cycle or a restart of the process that hosts the model).
   * Registrations whose nexus is not known are dropped: the nexus must exist before import.
   */
  importPersistent(state: PersistentPrState): void {
    this.registrations = [];
    this.holder = null;
    for (const saved of state.registrations) {
      const nexus = [...this.nexuses.values()].find(
        (n) => formatTransportId(n.spec.initiator) === saved.initiator && n.spec.relativeTargetPortId === saved.relativeTargetPortId,
      );
      if (!nexus) continue;
      const reg: Registration = {
        nexusId: nexus.spec.id,
        key: BigInt(saved.key),
        allTgPt: saved.allTgPt,
        resType: saved.resType,
        resScope: saved.resScope,
      };
      this.registrations.push(reg);
      if (saved.holder) this.holder = reg;
    }
    this.aptplActive = this.registrations.length > 0;
  }

  snapshot(): PrStateSnapshot {
    const ua: Record<string, string[]> = {};
    for (const [id, n] of this.nexuses) {
      if (n.unitAttentions.length > 0) ua[id] = n.unitAttentions.map((u) => `${hex2(u.asc)}/${hex2(u.ascq)}`);
    }
    const h = this.holder;
    return {
      personality: this.personality,
      generation: this.generation,
      aptplActive: this.aptplActive,
      registrations: this.registrations.map((r) => {
        const spec = this.nexuses.get(r.nexusId)?.spec;
        return {
          nexusId: r.nexusId,
          key: '0x' + r.key.toString(16),
          allTgPt: r.allTgPt,
          initiator: spec ? formatTransportId(spec.initiator) : '?',
          relativeTargetPortId: spec?.relativeTargetPortId ?? 0,
        };
      }),
      reservation: h
        ? {
            type: h.resType,
            scope: h.resScope >> 4,
            holderNexusId: h.nexusId,
            key: '0x' + (isAllRegistrantsType(h.resType as never) ? 0n : h.key).toString(16),
          }
        : null,
      unitAttentions: ua,
      nexuses: [...this.nexuses.values()].map((n) => ({
        id: n.spec.id,
        initiator: formatTransportId(n.spec.initiator),
        relativeTargetPortId: n.spec.relativeTargetPortId,
      })),
    };
  }

  /** Whether `nexusId` may perform `cdb` under the current reservation (no side effects, no UA). */
  wouldConflict(nexusId: string, cdb: Uint8Array): boolean {
    return this.reservationConflict(this.nexusState(nexusId), cdb);
  }

  // ---- command execution ------------------------------------------------------------------------

  /**
   * Execute one command on one nexus. `dataOut` is the data-out buffer (PR OUT parameter list,
   * WRITE data); only its length matters for ordinary writes.
   */
  execute(nexusId: string, cdb: Uint8Array, dataOut: Uint8Array = new Uint8Array(0)): ScsiOutcome {
    const n = this.nexusState(nexusId);
    const opcode = cdb[0];
    if (opcode === undefined) return INVALID_CDB();
    // SAM-5 5.14: a pending unit attention is reported before anything else, once.
    if (!exemptFromUnitAttention(opcode) && n.unitAttentions.length > 0) {
      const ua = this.takeUa(n);
      return checkCondition(SenseKey.UNIT_ATTENTION, ua);
    }
    if (this.reservationConflict(n, cdb)) return reservationConflict();
    switch (opcode) {
      case Opcode.PERSISTENT_RESERVE_IN:
        return this.prIn(n, cdb);
      case Opcode.PERSISTENT_RESERVE_OUT:
        return this.prOut(n, cdb, dataOut);
      case Opcode.TEST_UNIT_READY:
        return good();
      case Opcode.INQUIRY:
        return this.inquiry(n, cdb);
      case REQUEST_SENSE:
        return this.requestSense(n, cdb);
      case Opcode.READ_CAPACITY_10:
        return good(this.readCapacity10());
      case Opcode.READ_6:
      case Opcode.READ_10:
      case Opcode.READ_12:
      case Opcode.READ_16:
        return good(new Uint8Array(transferBlocks(cdb) * this.identity.blockSize));
      case Opcode.RESERVE_6:
        // SPC-4 5.13.3 (CRH=1): under a persistent reservation RESERVE(6) from a registrant
        // completes with GOOD and changes nothing; from anyone else it conflicts. SPC-2
        // reservations are not modelled, so without a persistent reservation it is a GOOD no-op.
        if (this.holder && !this.registrationOf(n.spec.id)) return reservationConflict();
        return good();
      case Opcode.RELEASE_6:
        // SPC-4 5.13.3 (CRH=1): RELEASE(6) never releases a persistent reservation: GOOD, no effect.
        return good();
      case Opcode.WRITE_6:
      case Opcode.WRITE_10:
      case Opcode.WRITE_12:
      case Opcode.WRITE_16:
      case Opcode.SYNCHRONIZE_CACHE_10:
        return good();
      default:
        return illegal(Asc.INVALID_COMMAND_OPERATION_CODE);
    }
  }

  // ---- reservation access rule (SPC-4 5.13.1, table 66; LIO core_scsi3_pr_seq_non_holder) -------

  private reservationConflict(n: NexusState, cdb: Uint8Array): boolean {
    const h = this.holder;
    if (!h) return false;
    const type = h.resType;
    const registered = this.registrationOf(n.spec.id) !== undefined;
    const opcode = cdb[0] ?? 0;
    if (h.nexusId === n.spec.id) return false;
    if (isAllRegistrantsType(type as never) && registered) return false; // every registrant holds
    if (opcode === Opcode.PERSISTENT_RESERVE_OUT) return this.prOutConflictsForNonHolder(cdb, registered, type);
    const cls = accessClassOf(opcode);
    if (cls === 'always') return false;
    const writeExclusive = !isExclusiveAccessType(type as never);
    const registrantsType = isRegistrantsType(type as never);
    if (registrantsType && registered) return false;
    if (cls === 'mode-sense') return !(registered || writeExclusive);
    if (writeExclusive) {
      // Write Exclusive family: only data-out commands conflict (reads and no-data commands pass).
      return cls === 'write';
    }
    return true; // Exclusive Access family: everything but the allowed commands conflicts
  }

  /** PR OUT from a nexus that does not hold the reservation (SPC-4 table 66 footnotes; LIO table 46). */
  private prOutConflictsForNonHolder(cdb: Uint8Array, registered: boolean, type: number): boolean {
    const sa = (cdb[1] ?? 0) & 0x1f;
    if (this.personality === 'spc4') {
      // SPC-4 allows every PR OUT here; the service action itself decides (unregistered nexuses get
      // RESERVATION CONFLICT from it).
      return false;
    }
    let conflict: boolean;
    switch (sa) {
      case PrOutAction.REGISTER:
      case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
        return false;
      case PrOutAction.CLEAR:
      case PrOutAction.PREEMPT:
      case PrOutAction.PREEMPT_AND_ABORT:
      case PrOutAction.RELEASE:
        conflict = !registered;
        break;
      default:
        conflict = true; // RESERVE, REGISTER AND MOVE, and unknown service actions
    }
    if (!conflict) return false;
    // LIO then lets registered nexuses through under Registrants Only / All Registrants types.
    return !(registered && isRegistrantsType(type as never));
  }

  // ---- PERSISTENT RESERVE IN (SPC-4 6.15) --------------------------------------------------------

  private prIn(n: NexusState, cdbBytes: Uint8Array): ScsiOutcome {
    const cdb = decodePrInCdb(cdbBytes);
    const alloc = cdb.allocationLength;
    const lio = this.personality === 'lio';
    switch (cdb.serviceAction) {
      case PrInAction.READ_KEYS: {
        if (lio && alloc < 8) return INVALID_CDB(); // LIO 5
        const data = encodeReadKeys({ generation: this.generation, keys: this.registrations.map((r) => r.key) });
        return good(data.subarray(0, Math.min(alloc, data.length)));
      }
      case PrInAction.READ_RESERVATION: {
        if (lio && alloc < 8) return INVALID_CDB(); // LIO 5
        const h = this.holder;
        const data = encodeReadReservation({
          generation: this.generation,
          reservation: h
            ? { key: isAllRegistrantsType(h.resType as never) ? 0n : h.key, scope: h.resScope >> 4, type: h.resType }
            : null,
        });
        if (lio && h && alloc < 22) {
          // LIO writes the header only and leaves the rest of the buffer zero when the key and
          // type do not fit.
          const out = new Uint8Array(Math.min(alloc, data.length));
          out.set(data.subarray(0, 8));
          return good(out);
        }
        return good(data.subarray(0, Math.min(alloc, data.length)));
      }
      case PrInAction.REPORT_CAPABILITIES: {
        if (lio && alloc < 6) return INVALID_CDB(); // LIO 5
        const data = encodeCapabilities(this.capabilities());
        return good(data.subarray(0, Math.min(alloc, data.length)));
      }
      case PrInAction.READ_FULL_STATUS:
        if (lio && alloc < 8) return INVALID_CDB(); // LIO 5
        return good(this.readFullStatus(alloc));
      default:
        return INVALID_CDB();
    }
  }

  /** REPORT CAPABILITIES (SPC-4 6.15.4): what this model implements. */
  private capabilities() {
    return {
      crh: true,
      sipC: true,
      atpC: true,
      ptplC: true,
      tmv: true,
      allowCommands: 1,
      ptplA: this.aptplActive,
      types: new Set<number>([1, 3, 5, 6, 7, 8]),
    };
  }

  private readFullStatus(alloc: number): Uint8Array {
    const h = this.holder;
    const allReg = h !== null && isAllRegistrantsType(h.resType as never);
    const descriptors = this.registrations.map((r) => {
      const spec = this.nexusState(r.nexusId).spec;
      const holds = r === h || allReg;
      const type = r === h ? r.resType : allReg && h ? h.resType : 0;
      const scope = r === h ? r.resScope >> 4 : allReg && h ? h.resScope >> 4 : 0;
      const one = encodeReadFullStatus({
        generation: 0,
        descriptors: [
          {
            key: r.key,
        allTgPt: r.allTgPt,
        reservationHolder: holds,
        scope: holds ? scope : 0,
        type: holds ? type : 0,
        // SPC-4 6.15.5: not defined when ALL_TG_PT is set; LIO leaves it zero.
            relativeTargetPortId: r.allTgPt ? 0 : spec.relativeTargetPortId,
            transportId: spec.initiator,
          },
        ],
      });
      return one.subarray(8);
    });
    let additional = 0;
    const included: Uint8Array[] = [];
    for (const d of descriptors) {
      const tidLength = d.length - 24;
      if (this.personality === 'lio' && tidLength + additional > alloc) break; // LIO 6
      included.push(d);
      additional += d.length;
    }
    const out = new Uint8Array(8 + additional);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, this.generation);
    dv.setUint32(4, additional);
    let off = 8;
    for (const d of included) {
      out.set(d, off);
      off += d.length;
    }
    return out.subarray(0, Math.min(alloc, out.length));
  }

  // ---- PERSISTENT RESERVE OUT (SPC-4 6.16) -------------------------------------------------------

  private prOut(n: NexusState, cdbBytes: Uint8Array, dataOut: Uint8Array): ScsiOutcome {
    const cdb = decodePrOutCdb(cdbBytes);
    const sa = cdb.serviceAction;
    const length = cdb.parameterListLength;
    if (dataOut.length < length) return PARAM_LEN();
    const params = dataOut.subarray(0, length);
    return this.personality === 'lio'
      ? this.prOutLio(n, sa, cdb.scope, cdb.type, params)
      : this.prOutSpc4(n, sa, cdb.scope, cdb.type, params);
  }

  /** The order of checks LIO applies before the service action runs (target_scsi3_emulate_pr_out). */
  private prOutLio(n: NexusState, sa: number, scope: number, type: number, params: Uint8Array): ScsiOutcome {
    if (params.length < 24) return PARAM_LEN();
    const key = readU64(params, 0);
    const saKey = readU64(params, 8);
    const isMove = sa === PrOutAction.REGISTER_AND_MOVE;
    const flags = params[20] ?? 0;
    const specIPt = !isMove && (flags & 0x08) !== 0;
    const allTgPt = !isMove && (flags & 0x04) !== 0;
    const aptpl = isMove ? ((params[17] ?? 0) & 0x01) !== 0 : (flags & 0x01) !== 0;
    const unreg = isMove && ((params[17] ?? 0) & 0x02) !== 0;
    if (specIPt && sa !== PrOutAction.REGISTER) return INVALID_PARAM();
    if (!specIPt && !isMove && params.length !== 24) return PARAM_LEN();
    const scopeRaw = scope << 4; // LIO keeps the scope as the raw high nibble of CDB byte 2
    switch (sa) {
      case PrOutAction.REGISTER:
      case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
        return this.register(n, sa === PrOutAction.REGISTER, key, saKey, { specIPt, allTgPt, aptpl, params });
      case PrOutAction.RESERVE:
        if (!isPrType(type)) return INVALID_CDB();
        return this.reserve(n, key, type, scopeRaw);
      case PrOutAction.RELEASE:
        return this.release(n, key, type, scopeRaw);
      case PrOutAction.CLEAR:
        return this.clear(n, key);
      case PrOutAction.PREEMPT:
      case PrOutAction.PREEMPT_AND_ABORT:
        if (!isPrType(type)) return INVALID_CDB();
        return this.preempt(n, key, saKey, type, scopeRaw, sa === PrOutAction.PREEMPT_AND_ABORT);
      case PrOutAction.REGISTER_AND_MOVE:
        return this.registerAndMove(n, key, saKey, aptpl, unreg, params);
      default:
        return INVALID_CDB();
    }
  }

  private prOutSpc4(n: NexusState, sa: number, scope: number, type: number, params: Uint8Array): ScsiOutcome {
    if (sa > PrOutAction.REGISTER_AND_MOVE) return INVALID_CDB(); // REPLACE LOST RESERVATION is SPC-5
    if (params.length < 24) return PARAM_LEN();
    const specIPtBit = ((params[20] ?? 0) & 0x08) !== 0;
    if (sa !== PrOutAction.REGISTER_AND_MOVE && sa !== PrOutAction.REGISTER && specIPtBit) return INVALID_PARAM();
    let decoded;
    try {
      decoded = decodePrOutParams(params, sa);
    } catch (e) {
      if (isPrmuxError(e)) return isParameterListLengthError(e) ? PARAM_LEN() : INVALID_PARAM();
      throw e;
    }
    if (decoded.form === 'register-and-move') {
      return this.registerAndMove(n, decoded.key, decoded.serviceActionKey, decoded.aptpl, decoded.unreg, params);
    }
    const { key, serviceActionKey: saKey, specIPt, allTgPt, aptpl } = decoded;
    const needsType = sa === PrOutAction.RESERVE || sa === PrOutAction.RELEASE || sa === PrOutAction.PREEMPT || sa === PrOutAction.PREEMPT_AND_ABORT;
    if (needsType && scope !== LU_SCOPE) return INVALID_CDB(); // SPC-4 6.16.3.2: only LU_SCOPE
    switch (sa) {
      case PrOutAction.REGISTER:
      case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
        return this.register(n, sa === PrOutAction.REGISTER, key, saKey, { specIPt, allTgPt, aptpl, params });
      case PrOutAction.RESERVE:
        if (!isPrType(type)) return INVALID_CDB();
        return this.reserve(n, key, type, 0);
      case PrOutAction.RELEASE:
        if (!isPrType(type)) return INVALID_CDB();
        return this.release(n, key, type, 0);
      case PrOutAction.CLEAR:
        return this.clear(n, key);
      default: // PREEMPT, PREEMPT AND ABORT
        if (!isPrType(type)) return INVALID_CDB();
        return this.preempt(n, key, saKey, type, 0, sa === PrOutAction.PREEMPT_AND_ABORT);
    }
  }

  /** SPC-4 5.13.7 (register behaviours, table 47) and 6.16.3.3 (SPEC_I_PT). */
  private register(
    n: NexusState,
    checkKey: boolean,
    key: bigint,
    saKey: bigint,
    o: { specIPt: boolean; allTgPt: boolean; aptpl: boolean; params: Uint8Array },
  ): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) {
      if (checkKey && key !== 0n) return reservationConflict();
      if (saKey === 0n) return good(); // unregistered and nothing to register: GOOD, no change
      const added: Registration[] = [];
      if (o.specIPt) {
        const targets = this.specIPtTargets(n, o.params);
        if ('kind' in targets) return targets;
        added.push(this.newRegistration(n.spec.id, saKey, o.allTgPt));
        // specIPtTargets has already left out what each personality skips (LIO 11: LIO skips less).
        for (const nexusId of targets) added.push(this.newRegistration(nexusId, saKey, o.allTgPt));
      } else {
        added.push(this.newRegistration(n.spec.id, saKey, o.allTgPt));
      }
      if (o.allTgPt) {
        // ALL_TG_PT (SPC-4 5.13.7): the initiator port is registered on every target port.
        for (const first of [...added]) {
          const initiator = this.nexusState(first.nexusId).spec.initiator;
          for (const other of this.nexuses.values()) {
            if (other.spec.id === first.nexusId || !transportIdEquals(other.spec.initiator, initiator)) continue;
            if (this.registrationOf(other.spec.id) || added.some((r) => r.nexusId === other.spec.id)) continue;
            added.push(this.newRegistration(other.spec.id, saKey, true));
          }
        }
      }
      this.registrations.push(...added);
      // LIO bumps PRGENERATION once per registration it adds; SPC-4 once per command.
      for (let i = 0; i < (lio ? added.length : 1); i++) this.bumpGeneration();
      this.aptplActive = o.aptpl;
      return good();
    }
    if (checkKey && key !== reg.key) return reservationConflict();
    if (o.specIPt) return lio ? INVALID_PARAM() : INVALID_CDB(); // LIO 10
    if (lio && reg.allTgPt && !o.allTgPt) return INVALID_CDB(); // LIO 9
    if (saKey !== 0n) {
      // One registration per initiator port: the key changes on every target port. The siblings
      // are found by the old key, so collect them before the key changes.
      const siblings = !lio && reg.allTgPt ? this.allTgPtSiblings(reg) : [];
      reg.key = saKey;
      for (const sib of siblings) sib.key = saKey;
      this.bumpGeneration();
      this.aptplActive = o.aptpl;
      return good();
    }
    // Unregister (SPC-4 5.13.11.3).
    if (reg.allTgPt) for (const sib of this.allTgPtSiblings(reg)) this.freeRegistration(sib, { implicitRelease: true });
    const wasHolderOfRegistrantsOnly = reg === this.holder && (reg.resType === 5 || reg.resType === 6);
    this.freeRegistration(reg, { implicitRelease: true });
    if (wasHolderOfRegistrantsOnly) {
      for (const r of this.registrations) this.establishUa(this.nexusState(r.nexusId), Asc.RESERVATIONS_RELEASED);
    }
    if (!lio) this.bumpGeneration(); // LIO 3: LIO leaves PRGENERATION alone here
    this.aptplActive = o.aptpl;
    return good();
  }

  /** Nexuses named by the SPEC_I_PT TransportID list, or the outcome that rejects the list. */
  private specIPtTargets(issuer: NexusState, params: Uint8Array): string[] | ScsiOutcome {
    const lio = this.personality === 'lio';
    if (params.length < 28) return lio ? INVALID_PARAM() : PARAM_LEN();
    const tpdl = readU32(params, 24);
    if (tpdl + 28 !== params.length) return lio ? INVALID_PARAM() : PARAM_LEN();
    const out: string[] = [];
    let off = 28;
    while (off < params.length) {
      let tid: TransportId;
      try {
        const [value, next] = decodeTransportId(params, off);
        tid = value;
        off = next;
      } catch (e) {
        if (isPrmuxError(e)) return INVALID_PARAM();
        throw e;
      }
      if (off > params.length) return INVALID_PARAM();
      // The named initiator port on the receiving target port; LIO takes the first target port
      // the initiator is connected to.
      const candidates = [...this.nexuses.values()].filter((x) => transportIdEquals(x.spec.initiator, tid));
      const sameTarget = candidates.find((x) => x.spec.relativeTargetPortId === issuer.spec.relativeTargetPortId);
      const target = sameTarget ?? candidates[0];
      if (!target) return INVALID_PARAM();
      // An initiator port that is already registered is skipped (LIO; SPC-4 leaves it unchanged).
      if (this.registrationOf(target.spec.id)) continue;
      if (lio) {
        // LIO 11 (an LIO bug, reproduced for fidelity): LIO decides "already registered" by looking
        // only at the registrations that existed before this command (core_scsi3_decode_spec_i_port
        // asks __core_scsi3_locate_pr_reg). The issuing nexus's own registration is only allocated
        // at that point and added after the whole list has been decoded, and so is every
        // registration made for an earlier TransportID of the same list. So a TransportID naming
        // the issuing nexus registers that nexus a second time, and an initiator port named twice
        // is registered twice: READ KEYS and READ FULL STATUS list each copy, and PRGENERATION
        // goes up once per copy. Each copy is a registration of its own everywhere else: unregistering
        // frees the first one listed and leaves the nexus registered with the other, and a CLEAR or
        // a RELEASE of a Registrants Only reservation from that nexus queues the unit attention
        // "for the other registrants" on the issuing nexus too. All of it seen in the lab (fidelity
        // sequence spec-i-pt; probes with [p3] and [p1, p1] from p3).
        out.push(target.spec.id);
        continue;
      }
      // spc4: one registration per I_T nexus (SPC-4 5.13.7); the issuing nexus is registered anyway.
      if (target.spec.id === issuer.spec.id) continue;
      if (!out.includes(target.spec.id)) out.push(target.spec.id);
    }
    return out;
  }

  /** SPC-4 5.13.9 (reserving). */
  private reserve(n: NexusState, key: bigint, type: number, scopeRaw: number): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) return lio ? LIO_LUN_COMM_FAILURE() : reservationConflict(); // LIO 1
    if (key !== reg.key) return reservationConflict();
    if (lio && scopeRaw !== 0) return INVALID_PARAM(); // LIO 4
    const h = this.holder;
    if (h) {
      if (!this.isHolder(reg)) return reservationConflict();
      if (h.resType !== type || h.resScope !== scopeRaw) return reservationConflict();
      return good();
    }
    reg.resType = type;
    reg.resScope = scopeRaw;
    this.holder = reg;
    return good();
  }

  /** SPC-4 5.13.11.2 (releasing). */
  private release(n: NexusState, key: bigint, type: number, scopeRaw: number): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) return lio ? LIO_LUN_COMM_FAILURE() : reservationConflict(); // LIO 1
    const h = this.holder;
    if (!h || !this.isHolder(reg)) return good(); // no reservation, or not a holder: GOOD, nothing changes
    if (key !== reg.key) return reservationConflict();
    if (h.resType !== type || h.resScope !== scopeRaw) {
      // LIO 2 (and LIO 8, where REGISTER AND MOVE left a stale scope on the holder's registration).
      return lio ? reservationConflict() : illegal(Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
    }
    const releasedType = h.resType;
    this.clearHolder();
    if (isRegistrantsType(releasedType as never)) {
      for (const r of this.registrations) {
        if (r !== reg) this.establishUa(this.nexusState(r.nexusId), Asc.RESERVATIONS_RELEASED);
      }
    }
    return good();
  }

  /** SPC-4 5.13.11.6 (clearing). */
  private clear(n: NexusState, key: bigint): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) return lio ? LIO_LUN_COMM_FAILURE() : reservationConflict(); // LIO 1
    if (key !== reg.key) return reservationConflict();
    this.clearHolder();
    for (const r of this.registrations) {
      if (r !== reg) this.establishUa(this.nexusState(r.nexusId), Asc.RESERVATIONS_PREEMPTED);
    }
    this.registrations = [];
    this.aptplActive = false;
    this.bumpGeneration();
    return good();
  }

  /** SPC-4 5.13.11.4 (preempting) and 5.13.11.5 (preempting and aborting). */
  private preempt(n: NexusState, key: bigint, saKey: bigint, type: number, scopeRaw: number, abort: boolean): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) return reservationConflict();
    if (key !== reg.key) return reservationConflict();
    if (lio && scopeRaw !== 0) return INVALID_PARAM(); // LIO 4
    const h = this.holder;
    const allReg = h !== null && isAllRegistrantsType(h.resType as never);
    if (!allReg && saKey === 0n) return INVALID_PARAM();
    const preempted: string[] = [];
    // Which branch: the SA key identifies the holder (preempt the reservation) or not (only remove
    // registrations). LIO compares with the key of the registration it records as holder, also
    // under All Registrants types; SPC-4 treats All Registrants with a non-zero key as removal only.
    const identifiesHolder = h !== null && (lio ? h.key === saKey : !allReg && h.key === saKey);
    if (!identifiesHolder) {
      let matched = saKey === 0n;
      for (const r of [...this.registrations]) {
        if (!allReg) {
          if (r.key !== saKey) continue;
          matched = true;
          this.freeRegistration(r, { implicitRelease: false });
          if (r !== reg) preempted.push(r.nexusId);
        } else {
          if (saKey !== 0n && r.key !== saKey) continue;
          matched = true;
          if (r === reg) continue;
          // An All Registrants reservation stays with the remaining registrants.
          this.freeRegistration(r, { implicitRelease: true });
          preempted.push(r.nexusId);
        }
      }
      if (!matched) return reservationConflict();
      for (const id of preempted) this.establishUa(this.nexusState(id), Asc.REGISTRATIONS_PREEMPTED);
      if (h && allReg && saKey === 0n) {
        this.clearHolder();
        if (this.registrations.includes(reg)) this.makeHolder(reg, type, scopeRaw);
      } else if (this.holder && !this.registrations.includes(this.holder)) {
        // The holder lost its registration: its reservation goes with it (SPC-4 5.13.11.1). Under
        // All Registrants freeRegistration has already passed the reservation to a remaining
        // registrant, which must keep it (spc4r17 5.7.11.4.4: removing registrations leaves an all
        // registrants reservation with the registrants that are left).
        this.clearHolder();
      }
      if (abort && preempted.length > 0) this.onAbortTasks?.(preempted);
      this.bumpGeneration();
      return good();
    }
    // The SA key identifies the holder: release it, remove every registration with that key except
    // the issuer's, and establish the issuer's reservation with the CDB's type and scope.
    const oldType = h.resType;
    const oldScope = h.resScope;
    for (const r of [...this.registrations]) {
      if (r === reg) continue;
      if (saKey !== 0n && r.key !== saKey) continue;
      this.freeRegistration(r, { implicitRelease: false });
      preempted.push(r.nexusId);
      this.establishUa(this.nexusState(r.nexusId), Asc.REGISTRATIONS_PREEMPTED);
    }
    this.clearHolder();
    this.makeHolder(reg, type, scopeRaw);
    if (oldType !== type || oldScope !== scopeRaw) {
      for (const r of this.registrations) {
        if (r !== reg) this.establishUa(this.nexusState(r.nexusId), Asc.RESERVATIONS_RELEASED);
      }
    }
    if (abort && preempted.length > 0) this.onAbortTasks?.(preempted);
    this.bumpGeneration();
    return good();
  }

  /** SPC-4 5.13.8 (registering and moving the reservation, table 50). */
  private registerAndMove(n: NexusState, key: bigint, saKey: bigint, aptpl: boolean, unreg: boolean, params: Uint8Array): ScsiOutcome {
    const lio = this.personality === 'lio';
    const reg = this.registrationOf(n.spec.id);
    if (!reg) return lio ? LIO_LUN_COMM_FAILURE() : reservationConflict(); // LIO 1
    if (key !== reg.key) return reservationConflict();
    if (saKey === 0n) return INVALID_PARAM();
    if (params.length < 24) return PARAM_LEN();
    const rtpi = readU16(params, 18);
    const tidLength = readU32(params, 20);
    if (tidLength + 24 !== params.length) return lio ? INVALID_PARAM() : PARAM_LEN();
    const portKnown = [...this.nexuses.values()].some((x) => x.spec.relativeTargetPortId === rtpi);
    if (!portKnown) return INVALID_PARAM();
    let tid: TransportId;
    try {
      tid = decodeTransportId(params, 24)[0];
    } catch (e) {
      if (isPrmuxError(e)) return INVALID_PARAM();
      throw e;
    }
    if (transportIdEquals(tid, n.spec.initiator)) return INVALID_PARAM(); // moving to itself
    const dest = [...this.nexuses.values()].find(
      (x) => transportIdEquals(x.spec.initiator, tid) && x.spec.relativeTargetPortId === rtpi,
    );
    if (!dest) return INVALID_PARAM();
    const h = this.holder;
    if (!h) return lio ? INVALID_CDB() : reservationConflict();
    if (!this.isHolder(reg)) return reservationConflict();
    if (isAllRegistrantsType(h.resType as never)) return reservationConflict();
    const type = h.resType;
    let destReg = this.registrationOf(dest.spec.id);
    if (destReg) {
      destReg.key = saKey;
    } else {
      destReg = this.newRegistration(dest.spec.id, saKey, false);
      this.registrations.push(destReg);
    }
    this.clearHolder();
    this.holder = destReg;
    destReg.resType = type;
    if (lio) {
      // LIO 8: LIO stores the holder's TYPE as the issuer's scope and leaves the destination's
      // stored scope as it was, so a destination that once was moved away from cannot RELEASE.
      reg.resScope = type;
    } else {
      destReg.resScope = 0;
    }
    this.bumpGeneration();
    if (unreg) this.freeRegistration(reg, { implicitRelease: false });
    this.aptplActive = aptpl;
    return good();
  }

  // ---- helpers --------------------------------------------------------------------------------------

  private nexusState(id: string): NexusState {
    const n = this.nexuses.get(id);
    if (!n) throw new RangeError(`Cannot use nexus: no nexus with id ${id}`);
    return n;
  }

  private registrationOf(nexusId: string): Registration | undefined {
    return this.registrations.find((r) => r.nexusId === nexusId);
  }

  private newRegistration(nexusId: string, key: bigint, allTgPt: boolean): Registration {
    return { nexusId, key, allTgPt, resType: 0, resScope: 0 };
  }

  private allTgPtSiblings(reg: Registration): Registration[] {
    const initiator = this.nexusState(reg.nexusId).spec.initiator;
    return this.registrations.filter(
      (r) => r !== reg && r.allTgPt && r.key === reg.key && transportIdEquals(this.nexusState(r.nexusId).spec.initiator, initiator),
    );
  }

  /** Under All Registrants types every registrant is a holder (SPC-4 5.13.10). */
  private isHolder(reg: Registration): boolean {
    const h = this.holder;
    if (!h) return false;
    return h === reg || isAllRegistrantsType(h.resType as never);
  }

  private makeHolder(reg: Registration, type: number, scopeRaw: number): void {
    reg.resType = type;
    reg.resScope = scopeRaw;
    this.holder = reg;
  }

  private clearHolder(): void {
    const h = this.holder;
    if (!h) return;
    h.resType = 0;
    // LIO clears the stored scope too; the REGISTER AND MOVE quirk sets it again afterwards.
    h.resScope = 0;
    this.holder = null;
  }

  /**
   * Remove a registration. With `implicitRelease`, a reservation it holds is released (SPC-4
   * 5.13.11.3); an All Registrants reservation passes to the first remaining registrant and ends
   * with the last one.
   */
  private freeRegistration(reg: Registration, o: { implicitRelease: boolean }): void {
    const h = this.holder;
    this.registrations = this.registrations.filter((r) => r !== reg);
    if (h !== reg) return;
    if (!o.implicitRelease) return;
    const type = h.resType;
    const scope = h.resScope;
    this.clearHolder();
    const next = this.registrations[0];
    if (isAllRegistrantsType(type as never) && next) this.makeHolder(next, type, scope);
  }

  private bumpGeneration(): void {
    this.generation = (this.generation + 1) >>> 0;
  }

  private establishUa(n: NexusState, ua: AscAscq): void {
    if (n.unitAttentions.some((u) => u.asc === ua.asc && u.ascq === ua.ascq)) return; // no duplicates
    n.unitAttentions.push(ua);
  }

  /**
   * The unit attention to report. SPC-4: the oldest, and only it is cleared. LIO (UA_INTLCK_CTRL
   * 00b): the one of highest priority is reported and every pending one is cleared.
   */
  private takeUa(n: NexusState): AscAscq {
    if (this.personality === 'spc4') return n.unitAttentions.shift()!;
    const rank = (u: AscAscq): number => (u.asc === 0x29 ? 0 : u.asc === 0x2a ? 1 : 2);
    const best = [...n.unitAttentions].sort((a, b) => rank(a) - rank(b))[0]!;
    n.unitAttentions = [];
    return best;
  }

  /**
   * REQUEST SENSE (SPC-4 6.39; SAM-5 5.14 e): GOOD, with the pending unit attention as sense data
   * (reported and cleared as takeUa does for the personality), or NO SENSE when none is pending.
   * DESC (byte 1 bit 0) asks for descriptor format; ALLOCATION LENGTH is byte 4.
   */
  private requestSense(n: NexusState, cdb: Uint8Array): ScsiOutcome {
    const lio = this.personality === 'lio';
    const desc = ((cdb[1] ?? 0) & 0x01) !== 0;
    const alloc = cdb[4] ?? 0;
    // LIO 12: LIO does not emulate descriptor format here ("REQUEST_SENSE description emulation
    // not supported"): INVALID FIELD IN CDB, and the unit attention stays pending. SPC-4 lets a
    // device server that has descriptor format (this model builds it) return it.
    if (lio && desc) return INVALID_CDB();
    // LIO 13: with ALLOCATION LENGTH 0 there is no data buffer to map, and LIO answers NOT READY,
    // LOGICAL UNIT COMMUNICATION FAILURE before looking at the unit attentions (they stay pending).
    // SPC-4 4.2.5.6: length 0 is not an error, nothing is transferred.
    if (lio && alloc === 0) return LIO_LUN_COMM_FAILURE();
    const ua = n.unitAttentions.length > 0 ? this.takeUa(n) : null;
    const sense = buildSense(
      ua ? { key: SenseKey.UNIT_ATTENTION, asc: ua.asc, ascq: ua.ascq } : { key: SenseKey.NO_SENSE, asc: 0, ascq: 0 },
      desc ? 'descriptor' : 'fixed',
    );
    if (lio) {
      // LIO 14: LIO completes REQUEST SENSE without a residual: the whole allocation length is
      // transferred, the sense data (fixed format, 18 bytes) first, then zeros. (It copies its
      // 96-byte sense buffer; past 96 bytes it leaves the initiator's buffer as it was, which is
      // zero in the lab.) SPC-4 4.2.5.6 transfers only the sense data that fits.
      const out = new Uint8Array(alloc);
      out.set(sense.subarray(0, Math.min(alloc, sense.length)));
      return good(out);
    }
    return good(sense.subarray(0, Math.min(alloc, sense.length)));
  }

  private inquiry(n: NexusState, cdb: Uint8Array): ScsiOutcome {
    const evpd = ((cdb[1] ?? 0) & 0x01) !== 0;
    const page = cdb[2] ?? 0;
    const alloc = ((cdb[3] ?? 0) << 8) | (cdb[4] ?? 0);
    let data: Uint8Array;
    if (!evpd) {
      if (page !== 0) return INVALID_CDB();
      data = this.personality === 'lio' ? this.standardInquiryLio(n) : this.standardInquirySpc4();
    } else if (page === 0x00) {
      data = Uint8Array.from([0, 0x00, 0, 3, 0x00, 0x80, 0x83]);
    } else if (page === 0x80) {
      data = new Uint8Array(4 + this.identity.serial.length);
      data[1] = 0x80;
      data[3] = this.identity.serial.length;
      writeAscii(data, 4, this.identity.serial.length, this.identity.serial);
    } else if (page === 0x83) {
      const naa = fromHex(this.identity.naa);
      data = new Uint8Array(8 + naa.length);
      data[1] = 0x83;
      data[3] = 4 + naa.length;
      data[4] = 0x01; // binary code set
      data[5] = 0x03; // NAA designator, LU association
      data[7] = naa.length;
      data.set(naa, 8);
    } else {
      return INVALID_CDB();
    }
    return good(data.subarray(0, Math.min(alloc, data.length)));
  }

  /**
   * Standard INQUIRY data of the spc4 personality (SPC-4 6.6.2), 36 bytes: direct-access block
   * device, VERSION SPC-4, RESPONSE DATA FORMAT 2, TPGS 01b, CMDQUE.
   */
  private standardInquirySpc4(): Uint8Array {
    const data = new Uint8Array(36);
    data[2] = 0x06; // VERSION: SPC-4
    data[3] = 0x02; // RESPONSE DATA FORMAT 2
    data[4] = data.length - 5; // ADDITIONAL LENGTH
    data[5] = 0x10; // TPGS 01b: implicit ALUA
    data[7] = 0x02; // CMDQUE
    writeAscii(data, 8, 8, this.identity.vendor);
    writeAscii(data, 16, 16, this.identity.product);
    writeAscii(data, 32, 4, this.identity.revision);
    return data;
  }

  /**
   * Standard INQUIRY data as LIO builds it (target_core_spc.c spc_emulate_inquiry_std, Debian 6.1;
   * every byte checked in the lab with allocation lengths 4..255): 96 bytes (ADDITIONAL LENGTH 91),
   * SCCS, TPGS 11b (LIO's default target port group allows implicit and explicit ALUA), 3PC
   * (emulate_3pc is on by default), MULTIP when the LU is exported through more than one target
   * port, CMDQUE, and version descriptors SAM-5, the target port's transport, SPC-4, SBC-3. These
   * bits describe LIO; the model implements none of SCCS, ALUA or EXTENDED COPY (their commands get
   * INVALID COMMAND OPERATION CODE).
   */
  private standardInquiryLio(n: NexusState): Uint8Array {
    const data = new Uint8Array(96);
    const dv = new DataView(data.buffer);
    data[2] = 0x06; // VERSION: SPC-4
    data[3] = 0x02; // RESPONSE DATA FORMAT 2
    data[4] = data.length - 5; // ADDITIONAL LENGTH 91
    data[5] = 0x80 | 0x30 | 0x08; // SCCS, TPGS 11b, 3PC
    const ports = new Set([...this.nexuses.values()].map((x) => x.spec.relativeTargetPortId));
    if (ports.size > 1) data[6] = 0x10; // MULTIP
    data[7] = 0x02; // CMDQUE
    writeAscii(data, 8, 8, this.identity.vendor);
    writeAscii(data, 16, 16, this.identity.product);
    writeAscii(data, 32, 4, this.identity.revision);
    dv.setUint16(58, VERSION_DESCRIPTOR.SAM5);
    dv.setUint16(60, transportVersionDescriptor(n.spec.initiator));
    dv.setUint16(62, VERSION_DESCRIPTOR.SPC4);
    dv.setUint16(64, VERSION_DESCRIPTOR.SBC3);
    return data;
  }

  private readCapacity10(): Uint8Array {
    const out = new Uint8Array(8);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, Math.min(this.identity.blocks - 1, 0xffffffff));
    dv.setUint32(4, this.identity.blockSize);
    return out;
  }
}

/** VERSION DESCRIPTOR codes LIO reports (SPC-4 table 149). */
const VERSION_DESCRIPTOR = {
  SAM5: 0x00a0,
  SPC4: 0x0460,
  SBC3: 0x04c0,
  FCP4: 0x0a40,
  ISCSI: 0x0960,
  SAS3: 0x0c60,
  SBP3: 0x0980,
  SRP: 0x0940,
} as const;

/**
 * The transport's version descriptor, by the protocol of the target port (LIO takes the target
 * port group's protocol identifier; a target port of the model speaks its initiators' protocol).
 * LIO writes 0 for a protocol it does not know.
 */
function transportVersionDescriptor(t: TransportId): number {
  switch (t.protocol) {
    case 'fc':
      return VERSION_DESCRIPTOR.FCP4;
    case 'iscsi':
      return VERSION_DESCRIPTOR.ISCSI;
    case 'sas':
      return VERSION_DESCRIPTOR.SAS3;
    case 'raw':
      // SPC-4 table 430 protocol identifiers: 3 = SBP-3, 4 = SRP.
      return t.protocolId === 3 ? VERSION_DESCRIPTOR.SBP3 : t.protocolId === 4 ? VERSION_DESCRIPTOR.SRP : 0;
  }
}

function transferBlocks(cdb: Uint8Array): number {
  switch (cdb[0]) {
    case Opcode.READ_6:
      return (cdb[4] ?? 0) === 0 ? 256 : (cdb[4] ?? 0);
    case Opcode.READ_10:
      return ((cdb[7] ?? 0) << 8) | (cdb[8] ?? 0);
    case Opcode.READ_12:
      return readU32(cdb, 6);
    case Opcode.READ_16:
      return readU32(cdb, 10);
    default:
      return 0;
  }
}

function writeAscii(out: Uint8Array, offset: number, width: number, text: string): void {
  for (let i = 0; i < width; i++) out[offset + i] = i < text.length ? text.charCodeAt(i) & 0x7f : 0x20;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
