// The key consistency guard: keeps every usable path of a map registered with the key the guest
// registered (the intent, intent.ts), and tells when and how the LU drifted from it.
//
// multipathd does part of this itself: with `reservation_key` in multipath.conf (or the prkeys file)
// and its "registered" flag set, it registers the key on a path before reinstating it (multipathd
// main.c, the pr_register path of reinstate/add). prmux does not depend on that configuration:
//  - registerPaths(): when a path becomes usable or is added, REGISTER AND IGNORE EXISTING KEY with
//    the intent's key and flags on that path at once. It also announces the key to multipathd
//    (setprkey/setprstatus, on every change of the key) so multipathd's own pre-reinstate
//    registration works where it is configured.
//  - verify(): READ FULL STATUS (READ KEYS + READ RESERVATION where the target refuses it) through a
//    usable path, compared with the intent and the usable paths; each finding is logged, reported as
//    an event, and repaired where repairing is safe.
//
// Never undo a fence. Registrations live at the target, not on the path: a path that was down keeps
// its registration unless someone removed it. So when our key is registered on no nexus of the LU
// at all, someone removed it on purpose — another host's PREEMPT (fence_scsi, fence_mpath, a
// cluster's arbitration) or a CLEAR — and registering it again would let a fenced host back in.
// multipathd applies the same rule before its own registration of a returning path: it reads the
// keys and skips the path when its key is not among them ("Either device not registered or host is
// not authorised for registration", multipathd/main.c mpath_pr_event_handler_fn). The guard then
// registers nothing, records the fence in the intent (key null) and tells multipathd to forget the
// key (unsetprkey/unsetprstatus), so nothing re-registers it until the guest's next REGISTER.
// A LU that lost its registrations to a power cycle without APTPL looks the same and is treated
// the same: only the guest's next REGISTER brings the key back.
//
// Concurrency: the guard does not lock. The engine calls it with the map's lock held, so a guest
// command and a repair never interleave on one map.

import { isPrmuxError } from '../errors.js';
import { hex } from '../scsi/bytes.js';
import { encodePrInCdb, encodePrOutCdb } from '../scsi/cdb.js';
import { HostStatus, isAllRegistrantsType, PrInAction, PrOutAction, type PrType, SenseKey } from '../scsi/constants.js';
import { formatOutcome, outcomeSenseOf, transportFailure } from '../scsi/outcome.js';
import { decodeReadFullStatus, decodeReadKeys, decodeReadReservation } from '../scsi/prin-data.js';
import { encodePrOutParams } from '../scsi/prout-params.js';
import { formatTransportId } from '../scsi/transport-id.js';
import type { ScsiOutcome } from '../scsi/types.js';
import { type Logger, nullLogger } from '../socket/logger.js';
import { emptyIntent, fenceIntent, type MapIntent, type PendingCommand, sameIntentState, withPending, withReservation } from './intent.js';
import type { MapInfo, PathCommand, PathInfo, PathIo, TopologySource } from './types.js';

// --- observable values ------------------------------------------------------------------------------

export type FindingKind =
  /** Our key is registered through fewer nexuses than there are usable paths. Repaired. */
  | 'missing'
  /** The intent says unregistered, but our last key is still registered somewhere. Repaired. */
  | 'stray'
  /** We should hold a reservation and nobody holds one. Repaired (RESERVE). */
  | 'reservation-lost'
  /** Another key holds the reservation we held: we were preempted. Intent updated, not fought. */
  | 'reservation-preempted'
  /** We hold a reservation the intent did not record (e.g. a PREEMPT whose result was not read). Intent updated. */
  | 'reservation-unrecorded'
  /** We hold the reservation with another type than recorded. Intent updated. */
  | 'reservation-type-changed'
  /** Our key is registered nowhere: fenced by another host, or cleared. Never re-registered. */
  | 'fenced'
  /** No usable path to verify through. */
  | 'no-usable-path'
  /** No usable path answered the PR IN, or the answer cannot be relied on. */
  | 'unreadable';

export interface Finding {
  readonly kind: FindingKind;
  readonly detail: string;
  readonly ourRegistrations?: number;
  readonly expectedRegistrations?: number;
  /** Key holding the reservation when the finding is about it ("0x..."). */
  readonly holderKey?: string;
}

export interface RepairAction {
  readonly kind: 'register' | 'unregister' | 'reserve';
  readonly path: string;
  /** Key registered, unregistered or reserved with ("0x..."). */
  readonly key: string;
  readonly ok: boolean;
  /** formatOutcome of the path's final answer. */
  readonly outcome: string;
}

/** One registration as the last PR IN showed it. */
export interface RegistrationView {
  readonly key: string;
  readonly ours: boolean;
  /** From READ FULL STATUS only (null after READ KEYS). */
  readonly holder: boolean | null;
  readonly allTgPt: boolean | null;
  readonly transportId: string | null;
  readonly relativeTargetPortId: number | null;
}

/** What one read of the LU's PR state showed. */
export interface LuStatus {
  readonly method: 'read-full-status' | 'read-keys';
  readonly via: string;
  readonly at: string;
  readonly generation: number;
  readonly keys: readonly bigint[];
  readonly registrations: readonly RegistrationView[];
  /** Reservation holder key (0 under All Registrants types, as READ RESERVATION reports it) and type. */
  readonly reservation: { readonly key: bigint; readonly type: number } | null;
  /** False when the data may have been cut by the allocation length (counts are lower bounds). */
  readonly complete: boolean;
}

export interface VerificationReport {
  readonly wwid: string;
  readonly map: string;
  readonly at: string;
  /** No drift found (or none left unrepaired) and the LU could be read. */
  readonly ok: boolean;
  readonly method: LuStatus['method'] | null;
  readonly via: string | null;
  readonly findings: readonly Finding[];
  readonly repairs: readonly RepairAction[];
  readonly ourRegistrations: number | null;
  readonly expectedRegistrations: number;
  readonly durationMs: number;
  /** Every command sent, reads and repairs. */
  readonly commands: readonly PathCommand[];
}

export interface RegistrationReport {
  readonly path: string;
  readonly trigger: RegistrationTrigger;
  readonly ok: boolean;
  readonly outcome: string;
  /** From the topology event that reported the path usable to the registration's GOOD. */
  readonly latencyMs: number | null;
}

export type RegistrationTrigger = 'path-usable' | 'path-added' | 'pending' | 'map-added' | 'start-up';

export interface PathKeyState {
  /** Our key as registered through this path, as far as prmux knows; null = not registered. */
  readonly key: bigint | null;
  /**
   * 'registered' / 'unregistered': a command of ours on this path said so, or a verification
   * confirmed every usable path; 'unknown': a verification found fewer registrations than usable
   * paths and could not tell which; 'pending': the path was down when the key changed.
   */
  readonly status: 'registered' | 'unregistered' | 'unknown' | 'pending';
  readonly at: string;
  readonly lastRegistration: (RegistrationReport & { readonly at: string }) | null;
}

export interface RepairRecord {
  readonly at: string;
  /**
   * 'rollback': paths restored after a guest REGISTER that failed as a whole; 'interrupted-command':
   * paths rolled back at start-up after a command prmux was killed in the middle of.
   */
  readonly trigger: 'verification' | 'rollback' | 'interrupted-command' | RegistrationTrigger;
  readonly what: readonly RepairAction[];
  readonly ok: boolean;
}

export interface GuardCounters {
  verifications: number;
  verificationsFailed: number;
  driftFound: number;
  repairs: number;
  repairsFailed: number;
  registrationsAdded: number;
  registrationsFailed: number;
  fenced: number;
  intentWrites: number;
  intentWriteFailures: number;
}

export interface LatencyStats {
  count: number;
  lastMs: number | null;
  maxMs: number | null;
  totalMs: number;
}

/** What the guard knows about one map; the engine's snapshot is built from it. */
export interface GuardMapState {
  readonly wwid: string;
  intent: MapIntent | null;
  /** Whether the current intent is on disk. */
  persisted: boolean;
  lastStatus: LuStatus | null;
  lastVerification: VerificationReport | null;
  lastRepair: RepairRecord | null;
  /** null until a READ FULL STATUS was tried. */
  fullStatusSupported: boolean | null;
  readonly paths: Map<string, PathKeyState>;
  readonly counters: GuardCounters;
  readonly registrationLatency: LatencyStats;
}

interface EventBase {
  readonly at: string;
  readonly wwid: string;
  readonly map: string;
}

export type GuardEvent =
  | (EventBase & { readonly kind: 'registration-added'; readonly path: string; readonly key: string; readonly trigger: RegistrationTrigger; readonly latencyMs: number | null })
  | (EventBase & { readonly kind: 'registration-repaired'; readonly action: RepairAction })
  | (EventBase & { readonly kind: 'drift-found'; readonly finding: Finding })
  | (EventBase & { readonly kind: 'fenced'; readonly formerKey: string; readonly detail: string })
  | (EventBase & { readonly kind: 'verification-done'; readonly report: VerificationReport })
  | (EventBase & { readonly kind: 'intent-changed'; readonly intent: MapIntent; readonly persisted: boolean });

// --- options ---------------------------------------------------------------------------------------

export interface IntentSink {
  save(intent: MapIntent): Promise<void>;
}

export interface KeyGuardOptions {
  readonly io: PathIo;
  readonly topology: Pick<TopologySource, 'announceKey'>;
  readonly store: IntentSink;
  readonly logger?: Logger | null;
  /** Bound on each command the guard sends (default 30 s). */
  readonly timeoutMs?: number;
  /** Monotonic clock in ms (durations, latencies). Default performance.now. */
  readonly now?: () => number;
  /** Wall clock in ms since the epoch (timestamps). Default Date.now. */
  readonly wallClock?: () => number;
  readonly emit?: (e: GuardEvent) => void;
}

export const DEFAULT_GUARD_TIMEOUT_MS = 30_000;
/** Unit attentions are reported once per nexus each (SAM-5 5.14): a few retries consume them. */
const UNIT_ATTENTION_RETRIES = 3;
/** PR IN allocation length the guard reads with: what one pr-helper transfer can carry. */
const STATUS_ALLOCATION = 8192;
/**
 * Room a READ FULL STATUS answer must leave for one more descriptor (24 bytes + the longest iSCSI
 * TransportID, 228) before prmux trusts it is complete: LIO counts only the descriptors that fit
 * in ADDITIONAL LENGTH (LIO-BEHAVIOUR.md 6), so truncation cannot be seen there.
 */
const FULL_STATUS_SLACK = 256;
const READ_RESERVATION_ALLOCATION = 24;

function keyHex(k: bigint): string {
  return `0x${k.toString(16)}`;
}

/** Counters of a map the guard has not acted on yet. */
export function emptyGuardCounters(): GuardCounters {
  return {
    verifications: 0,
    verificationsFailed: 0,
    driftFound: 0,
    repairs: 0,
    repairsFailed: 0,
    registrationsAdded: 0,
    registrationsFailed: 0,
    fenced: 0,
    intentWrites: 0,
    intentWriteFailures: 0,
  };
}

/** The target refuses the service action itself (READ FULL STATUS is optional before SPC-4). */
function isUnsupported(o: ScsiOutcome): boolean {
  const s = outcomeSenseOf(o);
  return s !== null && s.key === SenseKey.ILLEGAL_REQUEST && (s.asc === 0x20 || s.asc === 0x24);
}

function isUnitAttention(o: ScsiOutcome): boolean {
  return outcomeSenseOf(o)?.key === SenseKey.UNIT_ATTENTION;
}

/** LIO 9: an ALL_TG_PT=1 registration only accepts REGISTER AND IGNORE with ALL_TG_PT=1 (5/24/00). */
function isInvalidFieldInCdb(o: ScsiOutcome): boolean {
  const s = outcomeSenseOf(o);
  return s !== null && s.key === SenseKey.ILLEGAL_REQUEST && s.asc === 0x24 && s.ascq === 0x00;
}

/** Usable paths of a map, in table order. */
export function usablePaths(map: MapInfo): PathInfo[] {
  return map.paths.filter((p) => p.usable);
}

/**
 * Registrations of our key a consistent map shows at least: one per usable path, or with ALL_TG_PT
 * one per initiator port (SCSI host), since one registration then covers every target port.
 */
export function expectedRegistrations(map: MapInfo, allTgPt: boolean): number {
  const usable = usablePaths(map);
  return allTgPt ? new Set(usable.map((p) => p.hcil.host)).size : usable.length;
}

export class KeyGuard {
  readonly #io: PathIo;
  readonly #topology: Pick<TopologySource, 'announceKey'>;
  readonly #store: IntentSink;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #wall: () => number;
  readonly #emit: (e: GuardEvent) => void;
  readonly #maps = new Map<string, GuardMapState>();

  constructor(opts: KeyGuardOptions) {
    this.#io = opts.io;
    this.#topology = opts.topology;
    this.#store = opts.store;
    this.#log = opts.logger ?? nullLogger;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_GUARD_TIMEOUT_MS;
    this.#now = opts.now ?? (() => performance.now());
    this.#wall = opts.wallClock ?? (() => Date.now());
    const emit = opts.emit;
    this.#emit = (e) => {
      if (emit === undefined) return;
      try {
        emit(e);
      } catch (err) {
        this.#log.error('a guard event listener threw', { event: e.kind, error: (err as Error).message });
      }
    };
  }

  #iso(): string {
    return new Date(this.#wall()).toISOString();
  }

  // --- state -----------------------------------------------------------------------------------------

  #state(wwid: string): GuardMapState {
    let s = this.#maps.get(wwid);
    if (s === undefined) {
      s = {
        wwid,
        intent: null,
        persisted: true,
        lastStatus: null,
        lastVerification: null,
        lastRepair: null,
        fullStatusSupported: null,
        paths: new Map(),
        counters: emptyGuardCounters(),
        registrationLatency: { count: 0, lastMs: null, maxMs: null, totalMs: 0 },
      };
      this.#maps.set(wwid, s);
    }
    return s;
  }

  /** Read-only view for snapshots. */
  stateOf(wwid: string): Readonly<GuardMapState> | null {
    return this.#maps.get(wwid) ?? null;
  }

  knownWwids(): string[] {
    return [...this.#maps.keys()];
  }

  intentOf(wwid: string): MapIntent | null {
    return this.#maps.get(wwid)?.intent ?? null;
  }

  /** Intents read from the state store at start-up. */
  load(intents: readonly MapIntent[]): void {
    for (const i of intents) {
      const s = this.#state(i.wwid);
      s.intent = i;
      s.persisted = true;
    }
  }

  /** Forget everything about a map (its intent file is the store's business). */
  forget(wwid: string): void {
    this.#maps.delete(wwid);
  }

  #setPath(s: GuardMapState, dev: string, patch: Partial<PathKeyState> & Pick<PathKeyState, 'key' | 'status'>): void {
    const prev = s.paths.get(dev);
    s.paths.set(dev, { lastRegistration: prev?.lastRegistration ?? null, at: this.#iso(), ...patch });
  }

  /** A path left the map: what was known about it no longer applies to whatever takes its name. */
  forgetPath(wwid: string, dev: string): void {
    this.#maps.get(wwid)?.paths.delete(dev);
  }

  /** Mark paths as waiting for the key (they were down when it changed: FanoutResult.pendingPaths). */
  markPending(wwid: string, devs: readonly string[]): void {
    const s = this.#state(wwid);
    const key = s.intent?.key ?? null;
    for (const d of devs) this.#setPath(s, d, { key: s.paths.get(d)?.key ?? null, status: key === null ? 'unknown' : 'pending' });
  }

  /**
   * After a guest PR OUT: what each path now carries, from the commands the fan-out sent. A GOOD
   * REGISTER / REGISTER AND IGNORE on a path registered the new key there (or removed ours with SA
   * key 0); CLEAR and a preemption of our own key change every path.
   */
  noteCommand(map: MapInfo, before: MapIntent | null, after: MapIntent, commands: readonly PathCommand[]): void {
    const s = this.#state(map.wwid);
    if (before !== null && before.key === after.key) return;
    const registeredOn = new Set<string>();
    for (const c of commands) {
      if (c.outcome.kind !== 'good') continue;
      const sa = parseInt(c.cdb.slice(2, 4), 16) & 0x1f;
      if (c.cdb.startsWith('5f') && (sa === PrOutAction.REGISTER || sa === PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY)) registeredOn.add(c.path);
    }
    for (const p of map.paths) {
      if (after.key === null) this.#setPath(s, p.dev, { key: null, status: registeredOn.has(p.dev) || p.usable ? 'unregistered' : 'unknown' });
      else if (registeredOn.has(p.dev)) this.#setPath(s, p.dev, { key: after.key, status: 'registered' });
      else this.#setPath(s, p.dev, { key: s.paths.get(p.dev)?.key ?? null, status: p.usable ? 'unknown' : 'pending' });
    }
  }

  /**
   * Make `next` the map's intent: write it (crash-safe, through the store) and, when the key
   * changed, tell multipathd. A failed write is logged and retried by flushDirty(); the command
   * that changed the intent did succeed at the target and cannot be taken back.
   */
  async commit(map: MapInfo, next: MapIntent, opts: { readonly force?: boolean } = {}): Promise<void> {
    const s = this.#state(map.wwid);
    const prev = s.intent;
    // `force`: write even an unchanged intent (it replaces a write-ahead record on disk).
    if (prev !== null && prev === next && opts.force !== true) return;
    s.intent = next;
    await this.#persist(s, map.name);
    if (prev?.key !== next.key) await this.announce(map);
  }

  async #persist(s: GuardMapState, mapName: string): Promise<void> {
    const intent = s.intent;
    if (intent === null) return;
    s.counters.intentWrites++;
    try {
      await this.#store.save(intent);
      s.persisted = true;
    } catch (e) {
      s.persisted = false;
      s.counters.intentWriteFailures++;
      this.#log.error('cannot write the map intent; it is kept in memory and written again later', { wwid: s.wwid, map: mapName, error: (e as Error).message });
    }
    this.#emit({ kind: 'intent-changed', at: this.#iso(), wwid: s.wwid, map: mapName, intent, persisted: s.persisted });
  }

  /**
   * Write the map's intent with the write-ahead record of a guest command about to be fanned out
   * (intent.ts PendingCommand); the in-memory intent is not changed. Resolves true once the record
   * is durable, false when the write failed (logged; the command still runs: refusing every PR OUT
   * on a full disk would be worse than the crash window the record closes).
   */
  async writeAhead(map: MapInfo, pending: PendingCommand): Promise<boolean> {
    const s = this.#state(map.wwid);
    const base = s.intent ?? emptyIntent(map.wwid, map.name, this.#iso());
    s.counters.intentWrites++;
    try {
      await this.#store.save(withPending(base, pending));
      return true;
    } catch (e) {
      s.counters.intentWriteFailures++;
      this.#log.error('cannot write the write-ahead record of a PR command; running it without', { wwid: map.wwid, map: map.name, error: (e as Error).message });
      return false;
    }
  }

  /**
   * Put our registration back on `paths` as it was before a command that did not complete:
   * REGISTER AND IGNORE EXISTING KEY with `key` (null: SA key 0, unregister) and the previous
   * APTPL / ALL_TG_PT flags. Only for commands of this host that changed these paths themselves:
   * it never brings back a key someone else removed (see the top of the file).
   */
  async restorePaths(
    map: MapInfo,
    paths: readonly string[],
    key: bigint | null,
    flags: { readonly aptpl: boolean; readonly allTgPt: boolean },
    trigger: RepairRecord['trigger'],
    out: PathCommand[],
  ): Promise<RepairAction[]> {
    const s = this.#state(map.wwid);
    const actions = await Promise.all(
      paths.map(async (dev): Promise<RepairAction> => {
        const o = await this.#registerOn(map, dev, key ?? 0n, flags.aptpl, flags.allTgPt, 'repair', out);
        const ok = o.kind === 'good';
        if (ok) this.#setPath(s, dev, key === null ? { key: null, status: 'unregistered' } : { key, status: 'registered' });
        else this.#setPath(s, dev, { key: s.paths.get(dev)?.key ?? null, status: 'unknown' });
        return { kind: key === null ? 'unregister' : 'register', path: dev, key: keyHex(key ?? 0n), ok, outcome: formatOutcome(o) };
      }),
    );
    this.#recordRepairs(map, s, actions, trigger);
    return actions;
  }

  /** Write again every intent whose last write failed. */
  async flushDirty(): Promise<void> {
    for (const s of this.#maps.values()) {
      if (!s.persisted && s.intent !== null) await this.#persist(s, s.intent.mapName);
    }
  }

  /** Tell multipathd the map's key (setprkey + setprstatus) or that there is none (unset*). */
  async announce(map: MapInfo): Promise<void> {
    const key = this.intentOf(map.wwid)?.key ?? null;
    try {
      await this.#topology.announceKey(map, key);
    } catch (e) {
      // multipathd down or too old: prmux's own registration on path return still works.
      this.#log.warn('cannot tell multipathd the map key', { wwid: map.wwid, map: map.name, key: key === null ? null : keyHex(key), error: (e as Error).message });
    }
  }

  // --- commands --------------------------------------------------------------------------------------

  /** One command on one path; unit attentions (reported once each) are consumed by retrying. */
  async #exec(map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, alloc: number, role: PathCommand['role'], out: PathCommand[]): Promise<ScsiOutcome> {
    for (let attempt = 0; ; attempt++) {
      const started = this.#now();
      let outcome: ScsiOutcome;
      try {
        outcome = await this.#io.exec(map, path, cdb, dataOut, alloc, this.#timeoutMs);
      } catch (e) {
        // PathIo rejects only when the command could not be issued (device cannot be opened):
        // for the guard that path is as good as down.
        const why = isPrmuxError(e) ? `${e.code}: ${e.message}` : String((e as Error)?.message ?? e);
        this.#log.warn('cannot issue a guard command', { wwid: map.wwid, path, error: why });
        outcome = transportFailure(HostStatus.DID_NO_CONNECT, `cannot issue the command on ${path}: ${why}`);
      }
      out.push({ path, cdb: hex(cdb), role, outcome, durationMs: this.#now() - started });
      if (isUnitAttention(outcome) && attempt < UNIT_ATTENTION_RETRIES) {
        this.#log.info('unit attention consumed by a guard command; retrying', { wwid: map.wwid, path, outcome: formatOutcome(outcome) });
        continue;
      }
      return outcome;
    }
  }

  /**
   * REGISTER AND IGNORE EXISTING KEY with `saKey` (0 = unregister) on one path. With LIO an
   * ALL_TG_PT=1 registration refuses the command without the bit (LIO-BEHAVIOUR.md 9), so a 5/24/00
   * answer is retried once with ALL_TG_PT flipped, as that note's cleanup procedure asks.
   */
  async #registerOn(map: MapInfo, path: string, saKey: bigint, aptpl: boolean, allTgPt: boolean, role: PathCommand['role'], out: PathCommand[]): Promise<ScsiOutcome> {
    const send = (atp: boolean): Promise<ScsiOutcome> => {
      const params = encodePrOutParams({ key: 0n, serviceActionKey: saKey, specIPt: false, allTgPt: atp, aptpl, transportIds: [] });
      const cdb = encodePrOutCdb({ serviceAction: PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, parameterListLength: params.length });
      return this.#exec(map, path, cdb, params, 0, role, out);
    };
    const first = await send(allTgPt);
    if (!isInvalidFieldInCdb(first)) return first;
    return send(!allTgPt);
  }

  async #reserveOn(map: MapInfo, path: string, key: bigint, type: number, out: PathCommand[]): Promise<ScsiOutcome> {
    const params = encodePrOutParams({ key, serviceActionKey: 0n, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
    const cdb = encodePrOutCdb({ serviceAction: PrOutAction.RESERVE, type, parameterListLength: params.length });
    return this.#exec(map, path, cdb, params, 0, 'repair', out);
  }

  /**
   * Read the LU's PR state through the first usable path that answers: READ FULL STATUS, or READ
   * KEYS + READ RESERVATION where the target refuses it (ILLEGAL REQUEST 20/00 or 24/00). Null when
   * no path answered. `prefer` are tried first (paths known to be up for longer).
   */
  async readStatus(map: MapInfo, out: PathCommand[], prefer: readonly string[] = []): Promise<LuStatus | null> {
    const s = this.#state(map.wwid);
    const usable = usablePaths(map).map((p) => p.dev);
    const order = [...prefer.filter((d) => usable.includes(d)), ...usable.filter((d) => !prefer.includes(d))];
    for (const path of order) {
      if (s.fullStatusSupported !== false) {
        const o = await this.#exec(map, path, encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: STATUS_ALLOCATION }), null, STATUS_ALLOCATION, 'verify', out);
        if (o.kind === 'good') {
          const st = this.#fromFullStatus(map, path, o.data, s.intent);
          if (st !== null) {
            s.fullStatusSupported = true;
            return st;
          }
          continue;
        }
        if (!isUnsupported(o)) continue;
        s.fullStatusSupported = false;
        this.#log.info('the target refuses READ FULL STATUS; verifying with READ KEYS', { wwid: map.wwid, path, outcome: formatOutcome(o) });
      }
      const st = await this.#readKeysAndReservation(map, path, out, s.intent);
      if (st !== null) return st;
    }
    return null;
  }

  #fromFullStatus(map: MapInfo, path: string, data: Uint8Array, intent: MapIntent | null): LuStatus | null {
    let d;
    try {
      d = decodeReadFullStatus(data);
    } catch (e) {
      this.#log.warn('unreadable READ FULL STATUS data', { wwid: map.wwid, path, error: (e as Error).message });
      return null;
    }
    const ourKeys = new Set([intent?.key, intent?.lastKey].filter((k): k is bigint => k !== null && k !== undefined));
    const holders = d.descriptors.filter((x) => x.reservationHolder);
    const h = holders[0];
    const allReg = h !== undefined && isAllRegistrantsType(h.type as PrType);
    return {
      method: 'read-full-status',
      via: path,
      at: this.#iso(),
      generation: d.generation,
      keys: d.descriptors.map((x) => x.key),
      registrations: d.descriptors.map((x) => ({
        key: keyHex(x.key),
        ours: ourKeys.has(x.key),
        holder: x.reservationHolder,
        allTgPt: x.allTgPt,
        transportId: formatTransportId(x.transportId),
        relativeTargetPortId: x.relativeTargetPortId,
      })),
      reservation: h === undefined ? null : { key: allReg ? 0n : h.key, type: h.type },
      complete: !d.truncated && data.length + FULL_STATUS_SLACK <= STATUS_ALLOCATION,
    };
  }

  async #readKeysAndReservation(map: MapInfo, path: string, out: PathCommand[], intent: MapIntent | null): Promise<LuStatus | null> {
    // Two commands are not atomic: PRGENERATION tells whether something changed in between
    // (RESERVE and RELEASE do not bump it, so the reservation is read second).
    for (let attempt = 0; attempt < 2; attempt++) {
      const k = await this.#exec(map, path, encodePrInCdb({ serviceAction: PrInAction.READ_KEYS, allocationLength: STATUS_ALLOCATION }), null, STATUS_ALLOCATION, 'verify', out);
      if (k.kind !== 'good') return null;
      const r = await this.#exec(map, path, encodePrInCdb({ serviceAction: PrInAction.READ_RESERVATION, allocationLength: READ_RESERVATION_ALLOCATION }), null, READ_RESERVATION_ALLOCATION, 'read-reservation', out);
      if (r.kind !== 'good') return null;
      let keys, res;
      try {
        keys = decodeReadKeys(k.data);
        res = decodeReadReservation(r.data);
      } catch (e) {
        this.#log.warn('unreadable READ KEYS / READ RESERVATION data', { wwid: map.wwid, path, error: (e as Error).message });
        return null;
      }
      if (keys.generation !== res.generation && attempt === 0) continue;
      const ourKeys = new Set([intent?.key, intent?.lastKey].filter((x): x is bigint => x !== null && x !== undefined));
      return {
        method: 'read-keys',
        via: path,
        at: this.#iso(),
        generation: keys.generation,
        keys: keys.keys,
        registrations: keys.keys.map((key) => ({ key: keyHex(key), ours: ourKeys.has(key), holder: null, allTgPt: null, transportId: null, relativeTargetPortId: null })),
        reservation: res.reservation === null ? null : { key: res.reservation.key, type: res.reservation.type },
        complete: !keys.truncated && !res.truncated,
      };
    }
    return null;
  }

  // --- registration on path return -------------------------------------------------------------------

  /**
   * Paths became usable or were added: register the intent's key on each at once (REGISTER AND
   * IGNORE EXISTING KEY), unless our key is registered nowhere (a fence: see the top of the file).
   * With no key in the intent, a returning path may still carry our old key (we unregistered while
   * it was down): that stray registration is removed. `since` is the monotonic time the topology
   * reported the path usable, for the latency the issue asks to keep under 1 s.
   */
  async registerPaths(map: MapInfo, requests: readonly { readonly dev: string; readonly since: number | null; readonly trigger: RegistrationTrigger }[]): Promise<RegistrationReport[]> {
    const s = this.#state(map.wwid);
    const intent = s.intent;
    const usable = new Set(usablePaths(map).map((p) => p.dev));
    const wanted = requests.filter((r) => usable.has(r.dev));
    if (intent === null || wanted.length === 0) return [];
    if (intent.key === null && intent.lastKey === null) return [];
    const commands: PathCommand[] = [];
    const returning = new Set(wanted.map((r) => r.dev));
    const settled = [...usable].filter((d) => !returning.has(d));
    const status = await this.readStatus(map, commands, settled);
    if (status === null) {
      this.#log.warn('cannot read the keys of the LU; not registering the returning paths until the next verification', { wwid: map.wwid, map: map.name, paths: wanted.map((r) => r.dev) });
      for (const r of wanted) this.#setPath(s, r.dev, { key: s.paths.get(r.dev)?.key ?? null, status: 'pending' });
      return wanted.map((r) => ({ path: r.dev, trigger: r.trigger, ok: false, outcome: 'keys unreadable', latencyMs: null }));
    }
    s.lastStatus = status;
    if (intent.key === null) {
      // Only the stray case is left (lastKey set).
      const stray = status.keys.filter((k) => k === intent.lastKey).length;
      if (stray > 0) await this.#removeStray(map, s, intent, status, wanted.map((r) => r.dev), commands, wanted[0]!.trigger);
      return [];
    }
    const ours = status.keys.filter((k) => k === intent.key).length;
    if (ours === 0) {
      if (!status.complete) {
        this.#log.warn('the keys of the LU were cut short; not registering until a complete read', { wwid: map.wwid, map: map.name });
        return wanted.map((r) => ({ path: r.dev, trigger: r.trigger, ok: false, outcome: 'keys incomplete', latencyMs: null }));
      }
      await this.#fenced(map, s, intent, status);
      return wanted.map((r) => ({ path: r.dev, trigger: r.trigger, ok: false, outcome: 'fenced: not registered', latencyMs: null }));
    }
    const reports = await Promise.all(
      wanted.map(async (r): Promise<RegistrationReport> => {
        const o = await this.#registerOn(map, r.dev, intent.key!, intent.aptpl, intent.allTgPt, 're-register', commands);
        const ok = o.kind === 'good';
        const latencyMs = ok && r.since !== null ? this.#now() - r.since : null;
        const report: RegistrationReport = { path: r.dev, trigger: r.trigger, ok, outcome: formatOutcome(o), latencyMs };
        this.#setPath(s, r.dev, ok ? { key: intent.key, status: 'registered', lastRegistration: { ...report, at: this.#iso() } } : { key: s.paths.get(r.dev)?.key ?? null, status: 'pending', lastRegistration: { ...report, at: this.#iso() } });
        if (ok) {
          s.counters.registrationsAdded++;
          if (latencyMs !== null) {
            const l = s.registrationLatency;
            l.count++;
            l.lastMs = latencyMs;
            l.maxMs = l.maxMs === null ? latencyMs : Math.max(l.maxMs, latencyMs);
            l.totalMs += latencyMs;
          }
          this.#log.info('registered our key on a returning path', { wwid: map.wwid, map: map.name, path: r.dev, key: keyHex(intent.key!), trigger: r.trigger, latencyMs });
          this.#emit({ kind: 'registration-added', at: this.#iso(), wwid: map.wwid, map: map.name, path: r.dev, key: keyHex(intent.key!), trigger: r.trigger, latencyMs });
        } else {
          s.counters.registrationsFailed++;
          this.#log.warn('cannot register our key on a returning path', { wwid: map.wwid, map: map.name, path: r.dev, outcome: report.outcome });
        }
        return report;
      }),
    );
    s.lastRepair = {
      at: this.#iso(),
      trigger: wanted[0]!.trigger,
      what: reports.map((r) => ({ kind: 'register' as const, path: r.path, key: keyHex(intent.key!), ok: r.ok, outcome: r.outcome })),
      ok: reports.every((r) => r.ok),
    };
    return reports;
  }

  async #fenced(map: MapInfo, s: GuardMapState, intent: MapIntent, status: LuStatus): Promise<void> {
    const holder = status.reservation === null ? 'no reservation' : `reservation type ${status.reservation.type} held by ${keyHex(status.reservation.key)}`;
    const detail = `key ${keyHex(intent.key!)} is registered on none of the ${status.keys.length} registrations of the LU (${holder}): preempted by another host or cleared; not registering it again`;
    const finding: Finding = { kind: 'fenced', detail, ourRegistrations: 0, expectedRegistrations: expectedRegistrations(map, intent.allTgPt), ...(status.reservation !== null ? { holderKey: keyHex(status.reservation.key) } : {}) };
    s.counters.fenced++;
    s.counters.driftFound++;
    this.#log.warn('fenced: our key is gone from the LU', { wwid: map.wwid, map: map.name, key: keyHex(intent.key!), detail });
    for (const p of map.paths) this.#setPath(s, p.dev, { key: null, status: p.usable ? 'unregistered' : 'unknown' });
    const next = fenceIntent(intent, this.#iso(), detail);
    await this.commit(map, next);
    this.#emit({ kind: 'drift-found', at: this.#iso(), wwid: map.wwid, map: map.name, finding });
    this.#emit({ kind: 'fenced', at: this.#iso(), wwid: map.wwid, map: map.name, formerKey: keyHex(intent.key!), detail });
  }

  async #removeStray(map: MapInfo, s: GuardMapState, intent: MapIntent, status: LuStatus, paths: readonly string[], commands: PathCommand[], trigger: RepairRecord['trigger']): Promise<RepairAction[]> {
    const lastKey = intent.lastKey!;
    const count = status.keys.filter((k) => k === lastKey).length;
    const finding: Finding = { kind: 'stray', detail: `key ${keyHex(lastKey)} is registered ${count} time(s) although this host unregistered it`, ourRegistrations: count, expectedRegistrations: 0 };
    s.counters.driftFound++;
    this.#log.warn('drift: stray registration of our old key', { wwid: map.wwid, map: map.name, ...finding });
    this.#emit({ kind: 'drift-found', at: this.#iso(), wwid: map.wwid, map: map.name, finding });
    // READ FULL STATUS says whether the stray registration is an ALL_TG_PT one (LIO 9).
    const atp = status.registrations.some((r) => r.ours && r.key === keyHex(lastKey) && r.allTgPt === true) || intent.allTgPt;
    const actions = await Promise.all(
      paths.map(async (dev): Promise<RepairAction> => {
        const o = await this.#registerOn(map, dev, 0n, intent.aptpl, atp, 'repair', commands);
        const ok = o.kind === 'good';
        if (ok) this.#setPath(s, dev, { key: null, status: 'unregistered' });
        return { kind: 'unregister', path: dev, key: keyHex(lastKey), ok, outcome: formatOutcome(o) };
      }),
    );
    this.#recordRepairs(map, s, actions, trigger);
    return actions;
  }

  #recordRepairs(map: MapInfo, s: GuardMapState, actions: readonly RepairAction[], trigger: RepairRecord['trigger']): void {
    if (actions.length === 0) return;
    for (const a of actions) {
      if (a.ok) s.counters.repairs++;
      else s.counters.repairsFailed++;
      (a.ok ? this.#log.info : this.#log.warn).call(this.#log, a.ok ? 'repaired' : 'repair failed', { wwid: map.wwid, map: map.name, ...a });
      this.#emit({ kind: 'registration-repaired', at: this.#iso(), wwid: map.wwid, map: map.name, action: a });
    }
    s.lastRepair = { at: this.#iso(), trigger, what: actions, ok: actions.every((a) => a.ok) };
  }

  // --- periodic verification -------------------------------------------------------------------------

  /**
   * Compare the LU with the intent and repair what is safe to repair:
   *  - missing: our key on fewer nexuses than usable paths (while present somewhere) → REGISTER AND
   *    IGNORE on every usable path (idempotent; with ALL_TG_PT once per initiator port);
   *  - stray: intent unregistered, our last key still present → REGISTER AND IGNORE with SA key 0;
   *  - reservation-lost: we should hold type T and nobody holds → RESERVE T;
   *  - reservation-preempted: another key holds it → intent updated, no fight;
   *  - fenced: our key nowhere → intent records the fence, nothing registered.
   * Without `repair`, findings are reported and nothing is sent but the reads.
   */
  async verify(map: MapInfo, opts: { readonly repair?: boolean } = {}): Promise<VerificationReport> {
    const repair = opts.repair ?? true;
    const started = this.#now();
    const s = this.#state(map.wwid);
    const intent = s.intent;
    const commands: PathCommand[] = [];
    const findings: Finding[] = [];
    const repairs: RepairAction[] = [];
    const expected = intent === null ? usablePaths(map).length : expectedRegistrations(map, intent.allTgPt);
    const finish = (status: LuStatus | null, ours: number | null): VerificationReport => {
      const unrepaired = findings.some((f) => f.kind === 'no-usable-path' || f.kind === 'unreadable') || repairs.some((r) => !r.ok) || (!repair && findings.length > 0);
      const report: VerificationReport = {
        wwid: map.wwid,
        map: map.name,
        at: this.#iso(),
        ok: !unrepaired,
        method: status?.method ?? null,
        via: status?.via ?? null,
        findings,
        repairs,
        ourRegistrations: ours,
        expectedRegistrations: expected,
        durationMs: this.#now() - started,
        commands,
      };
      s.lastVerification = report;
      s.counters.verifications++;
      if (!report.ok) s.counters.verificationsFailed++;
      this.#emit({ kind: 'verification-done', at: report.at, wwid: map.wwid, map: map.name, report });
      return report;
    };
    const found = (f: Finding): void => {
      findings.push(f);
      if (f.kind !== 'fenced') {
        s.counters.driftFound++;
        this.#log.warn(`drift: ${f.kind}`, { wwid: map.wwid, map: map.name, ...f });
        this.#emit({ kind: 'drift-found', at: this.#iso(), wwid: map.wwid, map: map.name, finding: f });
      }
    };

    if (usablePaths(map).length === 0) {
      found({ kind: 'no-usable-path', detail: `map ${map.name} has no usable path to verify through` });
      return finish(null, null);
    }
    const status = await this.readStatus(map, commands);
    if (status === null) {
      found({ kind: 'unreadable', detail: 'no usable path answered READ FULL STATUS / READ KEYS' });
      return finish(null, null);
    }
    s.lastStatus = status;
    if (intent === null) return finish(status, null);

    if (intent.key === null) {
      if (intent.lastKey !== null && status.keys.includes(intent.lastKey)) {
        const count = status.keys.filter((k) => k === intent.lastKey).length;
        if (repair) {
          // #removeStray reports the finding itself.
          repairs.push(...(await this.#removeStray(map, s, intent, status, usablePaths(map).map((p) => p.dev), commands, 'verification')));
          findings.push({ kind: 'stray', detail: `key ${keyHex(intent.lastKey)} was still registered ${count} time(s)`, ourRegistrations: count, expectedRegistrations: 0 });
        } else {
          found({ kind: 'stray', detail: `key ${keyHex(intent.lastKey)} is still registered ${count} time(s)`, ourRegistrations: count, expectedRegistrations: 0 });
        }
      }
      return finish(status, intent.lastKey === null ? null : status.keys.filter((k) => k === intent.lastKey).length);
    }

    const key = intent.key;
    const ours = status.keys.filter((k) => k === key).length;
    if (ours === 0) {
      if (!status.complete) {
        found({ kind: 'unreadable', detail: `key ${keyHex(key)} not among the registrations read, but the list may be cut short; not concluding`, ourRegistrations: 0, expectedRegistrations: expected });
        return finish(status, 0);
      }
      await this.#fenced(map, s, intent, status);
      findings.push({ kind: 'fenced', detail: this.intentOf(map.wwid)?.fenced?.detail ?? 'fenced', ourRegistrations: 0, expectedRegistrations: expected });
      return finish(status, 0);
    }

    if (ours < expected) {
      found({ kind: 'missing', detail: `key ${keyHex(key)} is registered through ${ours} nexus(es), ${expected} usable path(s)`, ourRegistrations: ours, expectedRegistrations: expected });
      for (const p of usablePaths(map)) this.#setPath(s, p.dev, { key: s.paths.get(p.dev)?.key ?? null, status: 'unknown' });
      if (repair) {
        const targets = intent.allTgPt ? onePathPerHost(usablePaths(map)) : usablePaths(map);
        const actions = await Promise.all(
          targets.map(async (p): Promise<RepairAction> => {
            const o = await this.#registerOn(map, p.dev, key, intent.aptpl, intent.allTgPt, 'repair', commands);
            const ok = o.kind === 'good';
            if (ok) this.#setPath(s, p.dev, { key, status: 'registered' });
            return { kind: 'register', path: p.dev, key: keyHex(key), ok, outcome: formatOutcome(o) };
          }),
        );
        repairs.push(...actions);
      }
    } else {
      // Every usable path is accounted for (as far as counting can tell).
      for (const p of usablePaths(map)) this.#setPath(s, p.dev, { key, status: 'registered' });
    }

    // The reservation. Under All Registrants types every registrant holds it (SPC-4 5.13.9).
    const res = status.reservation;
    const weHold = res !== null && (isAllRegistrantsType(res.type as PrType) ? ours > 0 : res.key === key);
    let next = intent;
    if (intent.reservation !== null) {
      if (res === null) {
        found({ kind: 'reservation-lost', detail: `we should hold a type ${intent.reservation.type} reservation and nobody holds one` });
        if (repair) {
          let action: RepairAction | null = null;
          for (const p of usablePaths(map)) {
            const o = await this.#reserveOn(map, p.dev, key, intent.reservation.type, commands);
            action = { kind: 'reserve', path: p.dev, key: keyHex(key), ok: o.kind === 'good', outcome: formatOutcome(o) };
            if (action.ok) break;
          }
          if (action !== null) repairs.push(action);
        }
      } else if (!weHold) {
        found({ kind: 'reservation-preempted', detail: `key ${keyHex(res.key)} holds a type ${res.type} reservation: we were preempted; not taking it back`, holderKey: keyHex(res.key) });
        next = withReservation(next, null, this.#iso());
      } else if (res.type !== intent.reservation.type) {
        found({ kind: 'reservation-type-changed', detail: `we hold type ${res.type}, the intent said ${intent.reservation.type}`, holderKey: keyHex(res.key) });
        next = withReservation(next, { type: res.type }, this.#iso());
      }
    } else if (weHold && !isAllRegistrantsType(res!.type as PrType)) {
      found({ kind: 'reservation-unrecorded', detail: `we hold a type ${res!.type} reservation the intent did not record`, holderKey: keyHex(res!.key) });
      next = withReservation(next, { type: res!.type }, this.#iso());
    }
    if (!sameIntentState(next, intent)) await this.commit(map, next);
    this.#recordRepairs(map, s, repairs, 'verification');
    return finish(status, ours);
  }
}

/** The first usable path of each SCSI host: one ALL_TG_PT registration per initiator port. */
function onePathPerHost(paths: readonly PathInfo[]): PathInfo[] {
  const seen = new Set<number>();
  return paths.filter((p) => {
    if (seen.has(p.hcil.host)) return false;
    seen.add(p.hcil.host);
    return true;
  });
}
