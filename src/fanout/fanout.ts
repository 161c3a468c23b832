// The multipath fan-out of one guest PERSISTENT RESERVE IN/OUT command. Pure logic over injected
// seams (PathIo, MapControl, recheck, clock): no sockets, files, timers or process state.
//
// Each path of a dm-multipath map is its own I_T nexus, and a registration belongs to one nexus
// (SPC-4 5.13.1), so one logical "this host registers key K" is K registered on every path. The
// rules follow libmpathpersist's current code (multipath-tools 0.14, mpath_persist_int.c) and go
// beyond it where multipath-pr-semantics.md says so: the guest always receives the status and
// sense data a target produced on the path that decided the outcome (never a rebuilt sense), and
// READ FULL STATUS and REGISTER AND MOVE work through a map.
//
// What goes where:
//   REGISTER, REGISTER AND IGNORE   every usable path in parallel (ALL_TG_PT: once per SCSI host;
//                                   SPEC_I_PT: the first copy only), conflicts retried with
//                                   REGISTER AND IGNORE, transport failures re-checked
//   RESERVE, CLEAR, PREEMPT (of     one path, next path on a path failure or RESERVATION CONFLICT;
//   another key), REGISTER AND      RESERVE answers GOOD when READ RESERVATION shows our key
//   MOVE, REPLACE LOST RESERVATION  already holding with the same type
//   RELEASE                         every usable path; holder path gone -> suspend, preempt self,
//                                   release, re-register, resume
//   REGISTER with SA key 0 while    release first (as above), then unregister every path
//   holding the reservation
//   PREEMPT of our own key / of an  suspend, preempt, re-register, resume
//   All Registrants reservation
//   PR IN, anything undecodable     one path, next on a path failure; the target decides

import { isPrmuxError } from '../errors.js';
import {
  decodeCapabilities,
  decodePrCdb,
  decodePrOutParams,
  decodeReadFullStatus,
  decodeReadReservation,
  encodePrInCdb,
  encodePrOutCdb,
  encodePrOutParams,
  formatOutcome,
  good,
  hex,
  HostStatus,
  isPrType,
  isRetryableTransportFailure,
  LU_SCOPE,
  Opcode,
  PrInAction,
  PrInActionName,
  PrOutAction,
  PrOutActionName,
  SenseKey,
  senseKeyAscOf,
  transportFailure,
  transportIdEquals,
  writeU32,
  type PrCdb,
  type PrOutCdb,
  type PrOutParams,
  type ReadFullStatusData,
  type RegisterAndMoveParams,
  type ReservationInfo,
  type ScsiOutcome,
} from '../scsi/index.js';
import type { Logger, LogFields } from '../socket/logger.js';
import type { FanoutResult, MapControl, MapInfo, PathCommand, PathInfo, PathIo } from './types.js';

export interface FanoutContext {
  /** Fresh view of the map (usable flags decide which paths). */
  readonly map: MapInfo;
  readonly io: PathIo;
  readonly control: MapControl;
  /** Fresh check of one path after a transport error: true = usable (up), false = down. */
  recheck(path: string): Promise<boolean>;
  /** Per path command. */
  readonly timeoutMs: number;
  readonly logger?: Logger | null;
  /** For durationMs; default performance.now. */
  readonly now?: () => number;
}

/**
 * Execute one guest PERSISTENT RESERVE IN/OUT command on a multipath map: decide which paths get
 * it, send it, and pick the answer the guest receives. Resolves for every SCSI or transport result:
 * a PathIo that rejects counts as a failed path, a MapControl that fails as a transport failure
 * (DID_ERROR), a recheck that fails as "path up". Rejects only on a programming error.
 */
export async function executeOnMap(
  cdb: Uint8Array,
  dataOut: Uint8Array | null,
  allocationLength: number,
  ctx: FanoutContext,
): Promise<FanoutResult> {
  const run = new MapFanout(ctx);
  const decision = await run.execute(cdb, dataOut, allocationLength);
  return {
    outcome: decision.outcome,
    decidedBy: decision.path,
    commands: [...run.commands],
    pendingPaths: [...run.pending],
  };
}

// ---------------------------------------------------------------------------------------------

/**
 * libmpathpersist retries a PR command answered with UNIT ATTENTION up to MAXRETRY (5) more times
 * on the same path (mpath_pr_ioctl.c): the unit attention reports an event and the command was not
 * executed (SAM-5 5.14). Reporting it to the guest instead would leave a fanned-out REGISTER done on
 * some paths only.
 */
const UNIT_ATTENTION_RETRIES = 5;
/** READ RESERVATION header (8) + one reservation descriptor (16), SPC-4 6.15.3. */
const READ_RESERVATION_LENGTH = 24;
/** REPORT CAPABILITIES data is 8 bytes (SPC-4 6.15.4). */
const CAPABILITIES_LENGTH = 8;
/** Bound on the READ FULL STATUS data prmux reads for itself (the pr-helper transfer limit). */
const FULL_STATUS_LENGTH = 8192;
/** Basic PR OUT parameter list without SPEC_I_PT (SPC-4 6.16.3). */
const BASIC_LIST_LENGTH = 24;
/** Parameter list byte 20: SPEC_I_PT (SPC-4 table 180). */
const SPEC_I_PT_BIT = 0x08;
const SPEC_I_PT_BYTE = 20;

type Role = PathCommand['role'];

/** The answer chosen and the path that produced it (null when no path could be tried). */
interface Decision {
  readonly outcome: ScsiOutcome;
  readonly path: string | null;
}

/**
 * How one path's answer steers the fan-out:
 *  - good;
 *  - conflict: RESERVATION CONFLICT, not final where a sibling path may hold the key or reservation;
 *  - path: the path, not the target, failed (retryable transport failure), or the LU said NOT READY
 *    on this nexus (libmpathpersist treats NOT READY as retryable; LIO answers NOT READY 08/00 to
 *    RESERVE/RELEASE/CLEAR from an unregistered nexus, LIO-BEHAVIOUR.md 1);
 *  - final: any other answer of the target (or a transport failure another path would not cure).
 */
type Verdict = 'good' | 'conflict' | 'path' | 'final';

function verdictOf(o: ScsiOutcome): Verdict {
  switch (o.kind) {
    case 'good':
      return 'good';
    case 'reservation-conflict':
      return 'conflict';
    case 'transport-failure':
      return isRetryableTransportFailure(o) ? 'path' : 'final';
    case 'check-condition':
      return senseKeyAscOf(o.sense)?.key === SenseKey.NOT_READY ? 'path' : 'final';
    default:
      return 'final';
  }
}

function isUnitAttention(o: ScsiOutcome): boolean {
  return o.kind === 'check-condition' && senseKeyAscOf(o.sense)?.key === SenseKey.UNIT_ATTENTION;
}

/**
 * Which of several failed answers the guest gets: a target's refusal first (it says what is wrong
 * with the command), then RESERVATION CONFLICT, then a target's NOT READY, then a transport failure.
 * Ties go to the earliest in path order.
 */
function failureRank(o: ScsiOutcome): number {
  switch (verdictOf(o)) {
    case 'final':
      return 0;
    case 'conflict':
      return 1;
    case 'path':
      return o.kind === 'transport-failure' ? 3 : 2;
    case 'good':
      return 4;
  }
}

function pickFailure(answers: readonly Decision[]): Decision {
  let best = answers[0]!;
  for (const a of answers) if (failureRank(a.outcome) < failureRank(best.outcome)) best = a;
  return best;
}

function withServiceAction(cdb: Uint8Array, serviceAction: number): Uint8Array {
  const out = cdb.slice();
  out[1] = (out[1]! & 0xe0) | serviceAction;
  return out;
}

function basicParams(key: bigint, serviceActionKey: bigint, flags: { allTgPt?: boolean; aptpl?: boolean } = {}): Uint8Array {
  return encodePrOutParams({
    key,
    serviceActionKey,
    specIPt: false,
    allTgPt: flags.allTgPt ?? false,
    aptpl: flags.aptpl ?? false,
    transportIds: [],
  });
}

function prOutCdb(serviceAction: number, reservation: { type: number; scope: number } | null = null): Uint8Array {
  return encodePrOutCdb({
    serviceAction,
    scope: reservation?.scope ?? LU_SCOPE,
    type: reservation?.type ?? 0,
    parameterListLength: BASIC_LIST_LENGTH,
  });
}

/** Usable paths grouped by SCSI host (initiator port), in path order: ALL_TG_PT goes once per group. */
function groupByHost(paths: readonly PathInfo[]): PathInfo[][] {
  const groups = new Map<number, PathInfo[]>();
  for (const p of paths) {
    const g = groups.get(p.hcil.host);
    if (g) g.push(p);
    else groups.set(p.hcil.host, [p]);
  }
  return [...groups.values()];
}

function describeCdb(cdb: Uint8Array): string {
  const sa = (cdb[1] ?? 0) & 0x1f;
  if (cdb[0] === Opcode.PERSISTENT_RESERVE_IN) return `PR IN ${PrInActionName[sa] ?? `SA 0x${sa.toString(16)}`}`;
  if (cdb[0] === Opcode.PERSISTENT_RESERVE_OUT) return `PR OUT ${PrOutActionName[sa] ?? `SA 0x${sa.toString(16)}`}`;
  return `opcode 0x${(cdb[0] ?? 0).toString(16)}`;
}

const discard = (): void => {};
const silentLogger: Logger = { debug: discard, info: discard, warn: discard, error: discard };

/** performance.now where the runtime has it (Node, browsers), else Date.now; no Node types needed. */
function defaultNow(): number {
  const perf = (globalThis as { performance?: { now(): number } }).performance;
  return perf ? perf.now() : Date.now();
}

/** The result of sending one copy of a REGISTER to one group of paths (one path, or one SCSI host's paths with ALL_TG_PT). */
interface GroupResult {
  /**
   * good / conflict / final as verdictOf; path-up: a path failed but the recheck says it is usable
   * (the command must fail); all-down: every path of the group failed and is down.
   */
  readonly kind: 'good' | 'conflict' | 'final' | 'path-up' | 'all-down';
  readonly outcome: ScsiOutcome;
  readonly path: string;
  /** The group's paths from the deciding one on (a retry starts there). */
  readonly rest: readonly PathInfo[];
}

interface RegisterPlan {
  /** REGISTER or REGISTER AND IGNORE EXISTING KEY. */
  readonly serviceAction: number;
  readonly cdb: Uint8Array;
  readonly data: Uint8Array;
  readonly params: PrOutParams;
  readonly role: Role;
  /** A path that already holds the right registration (the one that preempted for us). */
  readonly exclude?: string;
}

interface RegisterResult extends Decision {
  readonly ok: boolean;
  /** Paths whose copy succeeded. */
  readonly reached: readonly string[];
}

interface SelfPreemptPlan {
  /** The PREEMPT or PREEMPT AND ABORT to send, issued with our key. */
  readonly cdb: Uint8Array;
  readonly data: Uint8Array;
  /** Our key, re-registered on the other paths afterwards. */
  readonly key: bigint;
  /** APTPL of the guest's command, for the unregister copies of 'release-unregister'. */
  readonly aptpl: boolean;
  /**
   * What follows on the path that now holds the reservation: nothing (preempt self / preempt all),
   * a RELEASE, or a RELEASE and then unregistering that last path (unregister while holding).
   */
  readonly then:
    | { readonly kind: 'none' }
    | { readonly kind: 'release' | 'release-unregister'; readonly cdb: Uint8Array; readonly data: Uint8Array };
}

class MapFanout {
  readonly commands: PathCommand[] = [];
  /** Paths the guard must bring up to date when they return (see FanoutResult.pendingPaths). */
  readonly pending = new Set<string>();
  /** Paths a recheck found down during this command: nothing more is sent to them. */
  private readonly down = new Set<string>();
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(private readonly ctx: FanoutContext) {
    this.log = ctx.logger ?? silentLogger;
    this.now = ctx.now ?? defaultNow;
  }

  private fields(extra: LogFields = {}): LogFields {
    return { map: this.ctx.map.name, wwid: this.ctx.map.wwid, ...extra };
  }

  // ---- dispatch ---------------------------------------------------------------------------------

  async execute(cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number): Promise<Decision> {
    let parsed: PrCdb;
    try {
      parsed = decodePrCdb(cdb);
    } catch (e) {
      if (!isPrmuxError(e)) throw e;
      // Not a PR CDB prmux can read: the target judges it, on one path.
      this.log.debug('fanout: CDB not decodable, sent down one path', this.fields({ reason: e.message }));
      return this.firstAnswer(this.usablePaths(), cdb, dataOut, allocationLength, 'primary', true);
    }
    if (parsed.opcode === Opcode.PERSISTENT_RESERVE_IN) {
      // PR IN: any one usable path (libmpathpersist mpath_prin_activepath), next on a path failure.
      return this.firstAnswer(this.usablePaths(), cdb, dataOut, allocationLength, 'primary', true);
    }
    const params = decodeParams(parsed, dataOut);
    const single = (conflictIsFinal: boolean): Promise<Decision> =>
      this.firstAnswer(this.usablePaths(), cdb, dataOut, allocationLength, 'primary', conflictIsFinal);
    if (params === null || dataOut === null) {
      // A parameter list that cannot be decoded is not fanned out: the target says what is wrong.
      this.log.debug('fanout: parameter list not decodable, sent down one path', this.fields({ command: describeCdb(cdb) }));
      return single(true);
    }
    if (params.form === 'register-and-move') return single(false);
    switch (parsed.serviceAction) {
      case PrOutAction.REGISTER:
      case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
        return this.register(parsed, cdb, dataOut, params);
      case PrOutAction.RESERVE:
        return this.reserve(parsed, cdb, dataOut, params);
      case PrOutAction.RELEASE:
        if (!isPrType(parsed.type) || parsed.scope !== LU_SCOPE) return single(true);
        return this.release(cdb, dataOut, params.key, { type: parsed.type, scope: parsed.scope }, 'primary', null);
      case PrOutAction.PREEMPT:
      case PrOutAction.PREEMPT_AND_ABORT:
        return this.preempt(cdb, dataOut, params);
      case PrOutAction.CLEAR:
      case PrOutAction.REPLACE_LOST_RESERVATION:
        // One path; a sibling that answers RESERVATION CONFLICT may lack our registration.
        return single(false);
      default:
        return single(true);
    }
  }

  // ---- seams ------------------------------------------------------------------------------------

  /** Usable paths not found down, ready before ghost (an ALUA standby port is the second choice). */
  private usablePaths(exclude?: string): PathInfo[] {
    const usable = this.ctx.map.paths.filter((p) => p.usable && !this.down.has(p.dev) && p.dev !== exclude);
    return [...usable.filter((p) => p.checkerState !== 'ghost'), ...usable.filter((p) => p.checkerState === 'ghost')];
  }

  /** No path to send to: answered as a lost connection (the session maps it as QEMU does). */
  private noPath(): Decision {
    const total = this.ctx.map.paths.length;
    const detail = `Cannot execute on map ${this.ctx.map.name}: no usable path (${total} path${total === 1 ? '' : 's'}, none ready or ghost and up)`;
    this.log.warn('fanout: no usable path', this.fields({ paths: total }));
    return { outcome: transportFailure(HostStatus.DID_NO_CONNECT, detail), path: null };
  }

  /**
   * One command on one path, retried there while it answers UNIT ATTENTION. Every attempt is
   * recorded. A PathIo that rejects (the command could not be issued: the device cannot be opened)
   * is a path failure like a lost connection.
   */
  private async send(path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, role: Role): Promise<ScsiOutcome> {
    for (let attempt = 0; ; attempt++) {
      const started = this.now();
      let outcome: ScsiOutcome;
      try {
        outcome = await this.ctx.io.exec(this.ctx.map, path, cdb, dataOut, allocationLength, this.ctx.timeoutMs);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        this.log.error('fanout: command could not be issued', this.fields({ path, command: describeCdb(cdb), error: why }));
        outcome = transportFailure(HostStatus.DID_NO_CONNECT, `Cannot issue ${describeCdb(cdb)} on path ${path}: ${why}`);
      }
      const durationMs = Math.max(0, this.now() - started);
      this.commands.push({ path, cdb: hex(cdb), role, outcome, durationMs });
      this.log.debug('fanout: path command', this.fields({ path, role, command: describeCdb(cdb), outcome: formatOutcome(outcome), durationMs }));
      if (isUnitAttention(outcome) && attempt < UNIT_ATTENTION_RETRIES) continue;
      return outcome;
    }
  }

  /** Ask whether a path that failed is really down; a failing check counts as up (the command then fails). */
  private async recheck(path: string): Promise<boolean> {
    let up: boolean;
    try {
      up = await this.ctx.recheck(path);
    } catch (e) {
      this.log.warn('fanout: path recheck failed, treating the path as up', this.fields({ path, error: e instanceof Error ? e.message : String(e) }));
      up = true;
    }
    if (!up) this.down.add(path);
    this.log.info('fanout: path rechecked after a failure', this.fields({ path, up }));
    return up;
  }

  /**
   * Send to one path at a time until one answers for the target: GOOD or a final answer ends it;
   * a path failure moves to the next path; RESERVATION CONFLICT too unless `conflictIsFinal`.
   * When no path answers GOOD: the first conflict, else the most telling failure.
   */
  private async firstAnswer(
    paths: readonly PathInfo[],
    cdb: Uint8Array,
    dataOut: Uint8Array | null,
    allocationLength: number,
    role: Role,
    conflictIsFinal: boolean,
  ): Promise<Decision> {
    if (paths.length === 0) return this.noPath();
    const failures: Decision[] = [];
    for (const [i, p] of paths.entries()) {
      const outcome = await this.send(p.dev, cdb, dataOut, allocationLength, i === 0 ? role : 'failover');
      const v = verdictOf(outcome);
      if (v === 'good' || v === 'final' || (v === 'conflict' && conflictIsFinal)) return { outcome, path: p.dev };
      failures.push({ outcome, path: p.dev });
    }
    return pickFailure(failures);
  }

  private async readReservation(): Promise<{ readonly reservation: ReservationInfo | null; readonly path: string } | null> {
    const cdb = encodePrInCdb({ serviceAction: PrInAction.READ_RESERVATION, allocationLength: READ_RESERVATION_LENGTH });
    // prmux's own reads take the first path that answers GOOD.
    const d = await this.firstAnswer(this.usablePaths(), cdb, null, READ_RESERVATION_LENGTH, 'read-reservation', false);
    if (d.outcome.kind !== 'good' || d.path === null) return null;
    try {
      return { reservation: decodeReadReservation(d.outcome.data).reservation, path: d.path };
    } catch (e) {
      if (!isPrmuxError(e)) throw e;
      this.log.warn('fanout: READ RESERVATION data not decodable', this.fields({ path: d.path, error: e.message }));
      return null;
    }
  }

  /**
   * Whether persist-through-power-loss is active (PTPL_A). Targets keep APTPL as the last REGISTER
   * set it (LIO-BEHAVIOUR.md: PTPL_A follows the last REGISTER), so REGISTER AND IGNORE sent by
   * prmux on its own carries it over; Linux sd registers with APTPL set. Unknown -> false (the
   * SPC-4 default).
   */
  private async persistenceActive(): Promise<boolean> {
    const cdb = encodePrInCdb({ serviceAction: PrInAction.REPORT_CAPABILITIES, allocationLength: CAPABILITIES_LENGTH });
    const d = await this.firstAnswer(this.usablePaths(), cdb, null, CAPABILITIES_LENGTH, 'verify', false);
    if (d.outcome.kind !== 'good') return false;
    try {
      return decodeCapabilities(d.outcome.data).ptplA;
    } catch (e) {
      if (!isPrmuxError(e)) throw e;
      this.log.warn('fanout: REPORT CAPABILITIES data not decodable', this.fields({ path: d.path, error: e.message }));
      return false;
    }
  }

  private async readFullStatus(role: Role): Promise<ReadFullStatusData | null> {
    const cdb = encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: FULL_STATUS_LENGTH });
    const d = await this.firstAnswer(this.usablePaths(), cdb, null, FULL_STATUS_LENGTH, role, false);
    if (d.outcome.kind !== 'good') return null;
    try {
      return decodeReadFullStatus(d.outcome.data);
    } catch (e) {
      if (!isPrmuxError(e)) throw e;
      this.log.warn('fanout: READ FULL STATUS data not decodable', this.fields({ path: d.path, error: e.message }));
      return null;
    }
  }

  // ---- REGISTER / REGISTER AND IGNORE EXISTING KEY ----------------------------------------------

  private async register(cdb: PrOutCdb, cdbBytes: Uint8Array, data: Uint8Array, params: PrOutParams): Promise<Decision> {
    const sa = cdb.serviceAction;
    // The key registered before: REGISTER carries it; REGISTER AND IGNORE's RESERVATION KEY is
    // ignored by the target, and prmux takes it as the caller's statement of its current key when
    // it is not zero (libmpathpersist uses the key multipathd remembers instead).
    const oldKey = params.key;
    const newKey = params.serviceActionKey;
    if (newKey === 0n && oldKey !== 0n) {
      // Unregister while holding the reservation: release first (libmpathpersist
      // do_mpath_persistent_reserve_out), so a holder path that cannot be reached does not keep it.
      const held = await this.readReservation();
      const r = held?.reservation;
      if (r && r.key === oldKey) {
        const releaseCdb = prOutCdb(PrOutAction.RELEASE, r);
        const released = await this.release(releaseCdb, basicParams(oldKey, 0n), oldKey, r, 'release', { aptpl: params.aptpl });
        if (released.outcome.kind !== 'good' || released.unregistered) return released;
      }
    }
    const result = await this.registerEverywhere({ serviceAction: sa, cdb: cdbBytes, data, params, role: 'primary' });
    if (!result.ok) return result;
    if (params.allTgPt) await this.sweepAllTgPtSiblings(params, oldKey, newKey, result.reached);
    if (oldKey !== 0n && newKey !== 0n && oldKey !== newKey) await this.preemptOldKey(oldKey, newKey);
    return result;
  }

  /**
   * Send a REGISTER (AND IGNORE) to every usable path, or once per SCSI host with ALL_TG_PT, in
   * parallel. libmpathpersist mpath_prout_reg:
   *  - SPEC_I_PT: the TransportIDs are registered by the first command only; the copies sent down
   *    the other paths have the bit cleared (and the list cut to its 24-byte basic form). prmux
   *    sends the first copy alone, so a target that refuses the list refuses it before any other
   *    path registered anything.
   *  - some paths GOOD and some RESERVATION CONFLICT (they had another key or none): retry those
   *    with REGISTER AND IGNORE EXISTING KEY.
   *  - a path failure: re-check the path; down -> the registration stands and the path is pending
   *    (its key is set when it returns; with ALL_TG_PT another path of the same host is tried
   *    first); up -> the command fails.
   *  - every path failed: the command failed, with a target's answer.
   */
  private async registerEverywhere(plan: RegisterPlan): Promise<RegisterResult> {
    const paths = this.usablePaths(plan.exclude);
    if (paths.length === 0) {
      if (plan.exclude === undefined) return { ...this.noPath(), ok: false, reached: [] };
      this.markPending();
      return { outcome: good(), path: null, ok: true, reached: [] };
    }
    const groups = plan.params.allTgPt ? groupByHost(paths) : paths.map((p) => [p]);
    const others = plan.params.specIPt ? clearSpecIPt(plan.cdb, plan.data) : { cdb: plan.cdb, data: plan.data };
    let results: GroupResult[];
    if (plan.params.specIPt) {
      results = [];
      let carrier = -1;
      for (const [i, g] of groups.entries()) {
        const r = await this.runGroup(g, plan.cdb, plan.data, plan.role);
        results.push(r);
        if (r.kind === 'good') {
          carrier = i;
          break;
        }
        // A refusal of the first copy is final: REGISTER AND IGNORE cannot carry SPEC_I_PT.
        if (r.kind !== 'all-down') return { ok: false, outcome: r.outcome, path: r.path, reached: [] };
      }
      if (carrier >= 0) {
        results.push(...(await Promise.all(groups.slice(carrier + 1).map((g) => this.runGroup(g, others.cdb, others.data, plan.role)))));
      }
    } else {
      results = await Promise.all(groups.map((g) => this.runGroup(g, plan.cdb, plan.data, plan.role)));
    }
    const succeeded = results.some((r) => r.kind === 'good');
    const conflicted = results.some((r) => r.kind === 'conflict');
    const refused = results.some((r) => r.kind === 'final');
    if (plan.serviceAction === PrOutAction.REGISTER && succeeded && conflicted && !refused) {
      const ignoreCdb = withServiceAction(others.cdb, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY);
      this.log.info('fanout: REGISTER conflicted on some paths and succeeded on others: retrying with REGISTER AND IGNORE EXISTING KEY', this.fields({
        paths: results.filter((r) => r.kind === 'conflict').map((r) => r.path),
      }));
      results = await Promise.all(
        results.map((r) => (r.kind === 'conflict' ? this.runGroup(r.rest, ignoreCdb, others.data, 'retry-register-and-ignore') : Promise.resolve(r))),
      );
    }
    const refusal =
      results.find((r) => r.kind === 'final') ?? results.find((r) => r.kind === 'path-up') ?? results.find((r) => r.kind === 'conflict');
    if (refusal) return { ok: false, outcome: refusal.outcome, path: refusal.path, reached: [] };
    const success = results.find((r) => r.kind === 'good');
    if (!success) {
      // Every path failed and is down: nothing was registered, so nothing is pending.
      const first = results[0]!;
      return { ok: false, outcome: first.outcome, path: first.path, reached: [] };
    }
    this.markPending();
    return { ok: true, outcome: success.outcome, path: success.path, reached: results.filter((r) => r.kind === 'good').map((r) => r.path) };
  }

  /** Every path of the map that did not get the registration: not usable, or found down. */
  private markPending(): void {
    for (const p of this.ctx.map.paths) if (!p.usable || this.down.has(p.dev)) this.pending.add(p.dev);
  }

  /** One copy of a REGISTER to one group: its first path, then (found down) the next of the same host. */
  private async runGroup(group: readonly PathInfo[], cdb: Uint8Array, data: Uint8Array, role: Role): Promise<GroupResult> {
    let last: { outcome: ScsiOutcome; path: string } | null = null;
    for (const [i, p] of group.entries()) {
      const outcome = await this.send(p.dev, cdb, data, 0, i === 0 ? role : 'failover');
      const v = verdictOf(outcome);
      if (v === 'path') {
        if (await this.recheck(p.dev)) return { kind: 'path-up', outcome, path: p.dev, rest: group.slice(i) };
        last = { outcome, path: p.dev };
        continue;
      }
      return { kind: v, outcome, path: p.dev, rest: group.slice(i) };
    }
    // The loop ran at least once: groups are never empty.
    return { kind: 'all-down', outcome: last!.outcome, path: last!.path, rest: [] };
  }

  /**
   * ALL_TG_PT registrations are one per initiator port on targets that key them so, but LIO keeps
   * one registration per I_T nexus and changes only the issuing nexus's key: the sibling paths of
   * the same host keep the old key. READ FULL STATUS tells: an ALL_TG_PT registration of one of our
   * initiator ports (one that now holds the new key) with another key is such a sibling. Then every
   * usable path that did not get the command gets REGISTER AND IGNORE with ALL_TG_PT (harmless where
   * the key is already right).
   */
  private async sweepAllTgPtSiblings(params: PrOutParams, oldKey: bigint, newKey: bigint, reached: readonly string[]): Promise<void> {
    const siblings = this.usablePaths().filter((p) => !reached.includes(p.dev));
    if (siblings.length === 0) return;
    if (newKey === 0n && oldKey === 0n) return;
    const status = await this.readFullStatus('verify');
    if (status === null) return;
    const all = status.descriptors.filter((d) => d.allTgPt);
    const ours = all.filter((d) => d.key === newKey).map((d) => d.transportId);
    const stale =
      newKey !== 0n
        ? all.some((d) => d.key !== newKey && ours.some((t) => transportIdEquals(t, d.transportId)))
        : all.some((d) => d.key === oldKey);
    if (!stale) return;
    this.log.warn('fanout: ALL_TG_PT registration left with another key on sibling paths: registering them one by one', this.fields({
      paths: siblings.map((p) => p.dev),
    }));
    const cdb = prOutCdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY);
    const data = basicParams(0n, newKey, { allTgPt: true, aptpl: params.aptpl });
    const outcomes = await Promise.all(siblings.map((p) => this.send(p.dev, cdb, data, 0, 'repair')));
    outcomes.forEach((o, i) => {
      if (o.kind !== 'good') this.log.warn('fanout: ALL_TG_PT sibling repair failed', this.fields({ path: siblings[i]!.dev, outcome: formatOutcome(o) }));
    });
  }

  /**
   * The key changed while our old key held the reservation through a path that could not be
   * updated (down, or no longer in the map): PREEMPT the old key with the new one over a usable
   * path so the reservation follows the key (libmpathpersist preempt_missing_path). The
   * registration itself already succeeded; a failure here is logged.
   */
  private async preemptOldKey(oldKey: bigint, newKey: bigint): Promise<void> {
    const held = await this.readReservation();
    const r = held?.reservation;
    if (!r || r.key !== oldKey) return;
    this.log.warn('fanout: the old key still holds the reservation through a path that was not updated: preempting it with the new key', this.fields({
      type: r.type,
    }));
    const d = await this.firstAnswer(this.usablePaths(), prOutCdb(PrOutAction.PREEMPT, r), basicParams(newKey, oldKey), 0, 'preempt-self', false);
    if (d.outcome.kind !== 'good') this.log.error('fanout: preempting the old key failed', this.fields({ path: d.path, outcome: formatOutcome(d.outcome) }));
  }

  // ---- RESERVE ----------------------------------------------------------------------------------

  /**
   * One path at a time. RESERVATION CONFLICT from one path is not final: another path of ours may
   * be the holder (a RESERVE from the holder repeating the type is GOOD). If every path refuses but
   * READ RESERVATION shows our key holding with the same type, answer GOOD, as a single-path disk
   * would (libmpathpersist mpath_prout_common + check_holding_reservation).
   */
  private async reserve(cdb: PrOutCdb, cdbBytes: Uint8Array, data: Uint8Array, params: PrOutParams): Promise<Decision> {
    const d = await this.firstAnswer(this.usablePaths(), cdbBytes, data, 0, 'primary', false);
    if (d.outcome.kind !== 'reservation-conflict' || params.key === 0n) return d;
    const held = await this.readReservation();
    const r = held?.reservation;
    if (held && r && r.key === params.key && r.type === cdb.type && r.scope === cdb.scope) {
      this.log.info('fanout: RESERVE conflicted on every usable path but our key holds the reservation with that type: GOOD', this.fields({ type: r.type }));
      return { outcome: good(), path: held.path };
    }
    return d;
  }

  // ---- RELEASE ----------------------------------------------------------------------------------

  /**
   * RELEASE on every usable path in parallel: only the holder's nexus releases, the others answer
   * GOOD and change nothing (SPC-4 5.13.11.2). If our key still holds the reservation afterwards
   * and the command was right (same type and scope), the holder path is gone: move the reservation
   * to a usable path with PREEMPT of our own key and release it there (libmpathpersist
   * mpath_prout_rel). If the type or scope was wrong and a path answered it, that is the answer; if
   * no path did (the holder is gone), the reservation is moved and the RELEASE re-sent to the new
   * holder, so the target judges it. `unregister`: the caller is unregistering; if the reservation
   * had to be moved, every usable path is unregistered right there and `unregistered` is set.
   */
  private async release(
    cdb: Uint8Array,
    data: Uint8Array,
    key: bigint,
    asked: { readonly type: number; readonly scope: number },
    role: Role,
    unregister: { readonly aptpl: boolean } | null,
  ): Promise<Decision & { readonly unregistered?: boolean }> {
    const paths = this.usablePaths();
    if (paths.length === 0) return this.noPath();
    const answers: Decision[] = await Promise.all(paths.map(async (p) => ({ outcome: await this.send(p.dev, cdb, data, 0, role), path: p.dev })));
    const released = answers.find((a) => a.outcome.kind === 'good');
    if (!released) return pickFailure(answers);
    if (key === 0n) return released;
    const held = await this.readReservation();
    const r = held?.reservation;
    // All Registrants reservations read key 0 (SPC-4 6.15.3): any of our registered paths released it.
    if (!r || r.key !== key) return released;
    if (r.type !== asked.type || r.scope !== asked.scope) {
      const refusal = answers.find((a) => a.outcome.kind !== 'good' && verdictOf(a.outcome) !== 'path');
      if (refusal) return refusal;
    }
    this.log.warn('fanout: the path holding the reservation is not usable: moving the reservation to a usable path to release it', this.fields({
      type: r.type,
    }));
    const result = await this.preemptSelf({
      cdb: prOutCdb(PrOutAction.PREEMPT, r),
      data: basicParams(key, key),
      key,
      aptpl: unregister?.aptpl ?? false,
      then: { kind: unregister ? 'release-unregister' : 'release', cdb, data },
    });
    return { ...result, unregistered: unregister !== null && result.unregistered };
  }

  // ---- PREEMPT / PREEMPT AND ABORT --------------------------------------------------------------

  /**
   * PREEMPT of our own key removes the registrations of our other paths: done with the map
   * suspended and followed by re-registering them ("preempt self"). PREEMPT with SA key 0 of an
   * All Registrants reservation removes every other registration, ours included: the same
   * ("preempt all"). Any other PREEMPT goes down one path (libmpathpersist
   * do_mpath_persistent_reserve_out).
   */
  private async preempt(cdb: Uint8Array, data: Uint8Array, params: PrOutParams): Promise<Decision> {
    const key = params.key;
    const saKey = params.serviceActionKey;
    if (key !== 0n && saKey === key) return this.preemptSelf({ cdb, data, key, aptpl: params.aptpl, then: { kind: 'none' } });
    if (key !== 0n && saKey === 0n) {
      // Only an All Registrants reservation reads key 0 (SPC-4 6.15.3). When the reservation cannot
      // be read, take the safe way: under any other reservation (or none) the target refuses SA key
      // 0 and nothing is re-registered.
      const held = await this.readReservation();
      if (held === null || (held.reservation !== null && held.reservation.key === 0n)) {
        return this.preemptSelf({ cdb, data, key, aptpl: params.aptpl, then: { kind: 'none' } });
      }
    }
    return this.firstAnswer(this.usablePaths(), cdb, data, 0, 'primary', false);
  }

  /**
   * Suspend the map (no flush: dm queues the I/O), PREEMPT with our key from one usable path (it
   * becomes the holder if there is a reservation to take; our other registrations go), optionally
   * RELEASE there (and unregister it and every other path), re-register our key on every usable
   * path with REGISTER AND IGNORE, resume (libmpathpersist do_preempt_self). The map is suspended so no I/O goes down a
   * path while it has no key. The answer: the PREEMPT's, or the RELEASE's / unregister's when they
   * ran, unless a later step failed (then that step's answer).
   */
  private async preemptSelf(plan: SelfPreemptPlan): Promise<Decision & { readonly unregistered: boolean }> {
    const map = this.ctx.map;
    try {
      await this.ctx.control.suspend(map);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      this.log.error('fanout: cannot suspend the map to move the reservation', this.fields({ error: why }));
      return { outcome: transportFailure(HostStatus.DID_ERROR, `Cannot suspend map ${map.name}: ${why}`), path: null, unregistered: false };
    }
    let result: Decision & { readonly unregistered: boolean };
    try {
      result = await this.preemptSelfSuspended(plan);
    } catch (e) {
      // A broken seam: still never leave the map suspended.
      await this.ctx.control.resume(map).catch(() => undefined);
      throw e;
    }
    try {
      await this.ctx.control.resume(map);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      this.log.error('fanout: cannot resume the map after moving the reservation', this.fields({ error: why }));
      // The PR state changed, but the guest must learn that the map is stuck (libmpathpersist
      // reports the failed resume the same way).
      if (result.outcome.kind === 'good') {
        result = { outcome: transportFailure(HostStatus.DID_ERROR, `Cannot resume map ${map.name}: ${why}`), path: null, unregistered: false };
      }
    }
    return result;
  }

  private async preemptSelfSuspended(plan: SelfPreemptPlan): Promise<Decision & { readonly unregistered: boolean }> {
    const pre = await this.firstAnswer(this.usablePaths(), plan.cdb, plan.data, 0, 'preempt-self', false);
    if (pre.outcome.kind !== 'good' || pre.path === null) return { ...pre, unregistered: false };
    const holder = pre.path;
    let result: Decision & { readonly unregistered: boolean } = { ...pre, unregistered: false };
    if (plan.then.kind !== 'none') {
      const rel = await this.send(holder, plan.then.cdb, plan.then.data, 0, 'release');
      result = { outcome: rel, path: holder, unregistered: false };
      if (rel.kind === 'good' && plan.then.kind === 'release-unregister') {
        const unregisterList = basicParams(0n, 0n, { aptpl: plan.aptpl });
        const unreg = await this.send(holder, prOutCdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY), unregisterList, 0, 're-register');
        if (unreg.kind === 'good') {
          // The PREEMPT removed the other registrations of our key; a path left with another
          // (stale) key is unregistered too, so nothing of ours stays on a usable path.
          const rest = await this.registerEverywhere({
            serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
            cdb: prOutCdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY),
            data: unregisterList,
            params: { form: 'basic', key: 0n, serviceActionKey: 0n, specIPt: false, allTgPt: false, aptpl: plan.aptpl, transportIds: [] },
            role: 're-register',
            exclude: holder,
          });
          if (rest.ok) return { outcome: unreg, path: holder, unregistered: true };
          return { outcome: rest.outcome, path: rest.path, unregistered: false };
        }
        result = { outcome: unreg, path: holder, unregistered: false };
      }
    }
    // Every usable path, the preempting one included: a PREEMPT that does not identify the holder
    // (no reservation, or another host's) removes the issuer's own registration too (SPC-4
    // 5.13.11.4, removing registrations; LIO frees it as well), and REGISTER AND IGNORE of the key
    // a path already has changes nothing.
    const aptpl = await this.persistenceActive();
    const reg = await this.registerEverywhere({
      serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
      cdb: prOutCdb(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY),
      data: basicParams(0n, plan.key, { aptpl }),
      params: { form: 'basic', key: 0n, serviceActionKey: plan.key, specIPt: false, allTgPt: false, aptpl, transportIds: [] },
      role: 're-register',
    });
    if (!reg.ok) {
      this.log.error('fanout: re-registering the paths after moving the reservation failed', this.fields({ path: reg.path, outcome: formatOutcome(reg.outcome) }));
      if (result.outcome.kind === 'good') result = { outcome: reg.outcome, path: reg.path, unregistered: false };
    }
    return result;
  }
}

/** The copy of a SPEC_I_PT REGISTER for the other paths: the bit cleared, the list cut to 24 bytes. */
function clearSpecIPt(cdb: Uint8Array, data: Uint8Array): { cdb: Uint8Array; data: Uint8Array } {
  const list = data.slice(0, BASIC_LIST_LENGTH);
  list[SPEC_I_PT_BYTE] = list[SPEC_I_PT_BYTE]! & ~SPEC_I_PT_BIT;
  const copy = cdb.slice();
  writeU32(copy, 5, BASIC_LIST_LENGTH);
  return { cdb: copy, data: list };
}

/** The decoded parameter list, or null when it cannot be decoded (then the target decides). */
function decodeParams(cdb: PrOutCdb, dataOut: Uint8Array | null): PrOutParams | RegisterAndMoveParams | null {
  if (dataOut === null || dataOut.length < cdb.parameterListLength) return null;
  try {
    return decodePrOutParams(dataOut.subarray(0, cdb.parameterListLength), cdb.serviceAction);
  } catch (e) {
    if (isPrmuxError(e)) return null;
    throw e;
  }
}
