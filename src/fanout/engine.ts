// The multipath engine: what `prmux serve` runs guest PR commands on for dm-multipath maps, and the
// one in-process API for the state of every map (snapshot() and onEvent(); the admin CLI, D-Bus and
// metrics are built on it).
//
//  - execute(): a fresh topology lookup before each PR OUT (a path that died a moment ago must not
//    be counted on), the fan-out (fanout.ts) with the map's lock held, then the intent update
//    (intent.ts: only on GOOD), its crash-safe write and the announcement of the key to multipathd.
//  - Per-map serialisation: one guest command or repair at a time per map (a small keyed async
//    mutex with a bounded queue), different maps in parallel. A guest command interleaved with a
//    repair could see half a repair, or have its new key overwritten by a repair with the old one.
//  - start(): load the intents, refresh the topology, and reconcile every known map (register the
//    key on every usable path unless fenced, verify, repair) before resolving — serve awaits it
//    before it serves the socket, so no guest command races the start-up repair. Then the topology
//    polls and the verification timer runs.
//  - Topology events: a path that becomes usable or is added gets the key at once (key-guard.ts);
//    a new map is reconciled.
//  - All or nothing for a guest command that changes registrations on several paths (the kernel's
//    dm_pr_register does the same for a map): a REGISTER / REGISTER AND IGNORE that fails as a whole
//    is rolled back on the paths where it succeeded (REGISTER AND IGNORE with the previous key, or
//    SA key 0 when there was none); the guest still gets the failing path's own status and sense.
//    Before the fan-out a write-ahead record of the command goes into the map's intent file; after
//    it the intent is written without it. A record found at start-up means prmux died in the
//    middle of the command, so the guest never got GOOD for it (QEMU reports a lost helper command
//    as a failure): every usable path is rolled back to the previous intent before the socket is
//    served, and paths that were down get the rolled-back state from the guard when they return.

import { ErrorCode, PrmuxError } from '../errors.js';
import { hex, readU64 } from '../scsi/bytes.js';
import { Opcode, PrInActionName, PrOutAction, PrOutActionName } from '../scsi/constants.js';
import { formatOutcome, outcomeStatus } from '../scsi/outcome.js';
import { type Logger, nullLogger } from '../socket/logger.js';
import type { SetTimer } from '../socket/pr-helper-session.js';
import { executeOnMap, type FanoutContext } from './fanout.js';
import {
  emptyIntent,
  intentMatters,
  type MapIntent,
  nextIntent,
  type PendingCommand,
  pendingEffect,
  type ReservationObservation,
  withoutPending,
} from './intent.js';
import {
  type Finding,
  type GuardCounters,
  type GuardEvent,
  KeyGuard,
  type PathKeyState,
  type RegistrationTrigger,
  type RegistrationView,
  type RepairAction,
  type RepairRecord,
  type VerificationReport,
  emptyGuardCounters,
} from './key-guard.js';
import type { LoadReport } from './state-store.js';
import type { FanoutResult, MapControl, MapInfo, PathCommand, PathInfo, PathIo, TopologyEvent, TopologySource } from './types.js';

export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
export const DEFAULT_VERIFY_INTERVAL_MS = 30_000;
export const DEFAULT_MAX_QUEUED_PER_MAP = 64;
export const DEFAULT_MAX_LISTENERS = 64;
/** Maps reconciled or verified at once (each is a few PR commands on its own paths). */
const RECONCILE_CONCURRENCY = 4;

/** How a guest command names its map: the received fd's dm dev_t, the map name, the WWID. */
export interface MapKey {
  readonly wwid?: string;
  readonly devT?: string;
  readonly name?: string;
}

/** What the engine needs from the intent store (IntentStore has it). */
export interface EngineStore {
  init?(): Promise<void>;
  loadAll(): Promise<LoadReport>;
  save(intent: MapIntent): Promise<void>;
}

export type FanoutFn = (cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, ctx: FanoutContext) => Promise<FanoutResult>;

export interface MultipathEngineOptions {
  readonly topology: TopologySource;
  readonly io: PathIo;
  readonly control: MapControl;
  readonly store: EngineStore;
  readonly logger?: Logger | null;
  /** Bound on each command sent down one path (default 30 s, like qemu-pr-helper's SG_IO). */
  readonly commandTimeoutMs?: number;
  /** Period of the consistency verification (default 30 s); 0 disables it. */
  readonly verifyIntervalMs?: number;
  /** Guest commands waiting for one map beyond this are answered TASK SET FULL (default 64). */
  readonly maxQueuedPerMap?: number;
  readonly maxListeners?: number;
  /** Timer seam (one-shot, returns its cancel function). Default: unref'd global timers. */
  readonly setTimer?: SetTimer;
  /** Monotonic clock, ms (durations). Default performance.now. */
  readonly now?: () => number;
  /** Wall clock, ms since the epoch (timestamps). Default Date.now. */
  readonly wallClock?: () => number;
  /** Fan-out seam (default fanout.ts executeOnMap). */
  readonly executeOnMap?: FanoutFn;
}

// --- observable state ------------------------------------------------------------------------------

export interface PathSnapshot {
  readonly dev: string;
  readonly devT: string;
  readonly hcil: PathInfo['hcil'];
  readonly dmState: string;
  readonly checkerState: string;
  readonly deviceState: string | null;
  readonly usable: boolean;
  /** Our key on this path as far as prmux knows ("0x..."), see keyStatus. */
  readonly key: string | null;
  readonly keyStatus: PathKeyState['status'];
  readonly keyStatusAt: string | null;
  /** Waiting for the key: it changed while the path was down, or a registration is queued. */
  readonly pendingRegistration: boolean;
  readonly lastRegistration: PathKeyState['lastRegistration'];
  /** Last time the path was reported up or down. */
  readonly lastChange: { readonly at: string; readonly usable: boolean } | null;
}

export interface IntentSnapshot {
  readonly key: string | null;
  readonly lastKey: string | null;
  readonly aptpl: boolean;
  readonly allTgPt: boolean;
  readonly reservation: { readonly type: number } | null;
  readonly fenced: { readonly at: string; readonly formerKey: string; readonly detail: string } | null;
  readonly updatedAt: string;
  /** Whether this intent is on disk (a failed write is retried). */
  readonly persisted: boolean;
}

export interface MapCounters extends GuardCounters {
  commands: number;
  /** Guest commands whose outcome was not GOOD. */
  commandsNotGood: number;
  /** Guest commands answered TASK SET FULL because the map's queue was full. */
  commandsRejectedBusy: number;
  pathUp: number;
  pathDown: number;
}

export interface CommandSummary {
  readonly at: string;
  readonly command: string;
  readonly status: number;
  readonly outcome: string;
  readonly decidedBy: string | null;
  readonly paths: number;
  readonly durationMs: number;
}

export interface MapSnapshot {
  readonly wwid: string;
  readonly name: string;
  readonly devT: string;
  readonly source: MapInfo['source'] | null;
  /** False for a map the engine has an intent for but the topology does not list now. */
  readonly present: boolean;
  readonly usablePaths: number;
  readonly paths: readonly PathSnapshot[];
  readonly intent: IntentSnapshot | null;
  /** The reservation as the last PR IN of the guard showed it. */
  readonly reservation: { readonly holderKey: string; readonly type: number; readonly ours: boolean } | null;
  /** Registrations as the last PR IN of the guard showed them (one per I_T nexus). */
  readonly registrations: readonly RegistrationView[];
  readonly statusAt: string | null;
  readonly statusMethod: 'read-full-status' | 'read-keys' | null;
  readonly fullStatusSupported: boolean | null;
  readonly lastVerification: Omit<VerificationReport, 'commands'> | null;
  readonly lastRepair: RepairRecord | null;
  readonly lastCommand: CommandSummary | null;
  readonly registrationLatency: { readonly count: number; readonly lastMs: number | null; readonly maxMs: number | null; readonly meanMs: number | null };
  /** Guest commands and repairs running or waiting on this map. */
  readonly queueDepth: number;
  readonly counters: MapCounters;
}

export interface EngineSnapshot {
  readonly at: string;
  readonly state: EngineState;
  readonly verifyIntervalMs: number;
  readonly lastVerificationRound: string | null;
  readonly maps: readonly MapSnapshot[];
}

export type EngineState = 'new' | 'starting' | 'running' | 'closed';

interface Base {
  readonly at: string;
  readonly wwid: string;
  readonly map: string;
}

export type EngineEvent =
  | GuardEvent
  | (Base & { readonly kind: 'map-added' | 'map-removed' })
  | (Base & { readonly kind: 'path-up' | 'path-down' | 'path-added' | 'path-removed'; readonly path: string; readonly usable: boolean })
  | { readonly kind: 'topology-source-changed'; readonly at: string; readonly source: 'multipathd' | 'sysfs'; readonly reason: string }
  | (Base & {
      readonly kind: 'command-done';
      readonly command: string;
      readonly opcode: number;
      readonly serviceAction: number;
      readonly status: number;
      readonly outcome: string;
      readonly decidedBy: string | null;
      readonly commands: readonly PathCommand[];
      readonly pendingPaths: readonly string[];
      readonly intentChanged: boolean;
      /** Paths put back to the previous state because the command failed as a whole (see the top). */
      readonly rolledBack: readonly RepairAction[];
      readonly durationMs: number;
    })
  | (Base & {
      /**
       * A write-ahead record was found at start-up (or when the map came back): prmux died while
       * fanning out this command. 'rolled-back': the usable paths carry the previous intent again;
       * 'unregister-completed': the command was an unregister and our key is on no nexus any more,
       * so it is not registered again (never undo what may be a fence); 'key-gone': our key and the
       * interrupted one are registered nowhere, left to the guard's fence rule.
       */
      readonly kind: 'interrupted-command-rolled-back';
      readonly command: string;
      readonly startedAt: string;
      readonly previousKey: string | null;
      readonly interruptedKey: string | null;
      readonly resolution: 'rolled-back' | 'unregister-completed' | 'key-gone';
      readonly repairs: readonly RepairAction[];
      readonly commands: readonly PathCommand[];
    })
  | (Base & { readonly kind: 'reconciled'; readonly ok: boolean; readonly findings: readonly Finding[]; readonly repairs: readonly RepairAction[] });

export type { Finding, RepairAction, RepairRecord, VerificationReport, RegistrationView, PathKeyState, RegistrationTrigger };

// --- the keyed mutex ------------------------------------------------------------------------------

/**
 * One job at a time per key, in arrival order; a bounded number waiting (jobs of the engine itself
 * may pass the bound: they are coalesced, at most one of each kind per map).
 */
class KeyedMutex {
  readonly #max: number;
  readonly #queues = new Map<string, { depth: number; tail: Promise<void> }>();

  constructor(max: number) {
    this.#max = max;
  }

  depth(key: string): number {
    return this.#queues.get(key)?.depth ?? 0;
  }

  run<T>(key: string, fn: () => Promise<T>, bypassBound = false): Promise<T> | null {
    let q = this.#queues.get(key);
    if (q === undefined) {
      q = { depth: 0, tail: Promise.resolve() };
      this.#queues.set(key, q);
    }
    if (!bypassBound && q.depth >= this.#max) return null;
    q.depth++;
    const result = q.tail.then(fn);
    const done = result.then(
      () => undefined,
      () => undefined,
    );
    q.tail = done;
    const entry = q;
    void done.then(() => {
      entry.depth--;
      if (entry.depth === 0 && this.#queues.get(key) === entry) this.#queues.delete(key);
    });
    return result;
  }
}

function hexKey(k: bigint | null): string | null {
  return k === null ? null : `0x${k.toString(16)}`;
}

function commandName(cdb: Uint8Array): string {
  const sa = (cdb[1] ?? 0) & 0x1f;
  if (cdb[0] === Opcode.PERSISTENT_RESERVE_IN) return `PR IN ${PrInActionName[sa] ?? `SA 0x${sa.toString(16)}`}`;
  if (cdb[0] === Opcode.PERSISTENT_RESERVE_OUT) return `PR OUT ${PrOutActionName[sa] ?? `SA 0x${sa.toString(16)}`}`;
  return `opcode 0x${(cdb[0] ?? 0).toString(16)}`;
}

function parseHex(h: string): Uint8Array {
  const out = new Uint8Array(h.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function isRegisterAction(sa: number): boolean {
  return sa === PrOutAction.REGISTER || sa === PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY;
}

/**
 * PR OUT commands the fan-out may apply to some paths and not others: REGISTER and REGISTER AND
 * IGNORE (every path), RELEASE (the holder path gone: preempt self, release, re-register), PREEMPT
 * of our own key or with SA key 0 (preempt self / preempt all: re-register). Single-path commands
 * (RESERVE, CLEAR, PREEMPT of another key, REGISTER AND MOVE) are atomic at the target.
 */
export function needsWriteAhead(cdb: Uint8Array, dataOut: Uint8Array | null): boolean {
  if (cdb[0] !== Opcode.PERSISTENT_RESERVE_OUT) return false;
  const sa = (cdb[1] ?? 0) & 0x1f;
  if (isRegisterAction(sa) || sa === PrOutAction.RELEASE) return true;
  if (sa !== PrOutAction.PREEMPT && sa !== PrOutAction.PREEMPT_AND_ABORT) return false;
  if (dataOut === null || dataOut.length < 16) return false;
  const key = readU64(dataOut, 0);
  const saKey = readU64(dataOut, 8);
  return key !== 0n && (saKey === key || saKey === 0n);
}

/**
 * The key the paths carried before a command when the intent does not know it (state directory
 * lost): the RESERVATION KEY of a PR OUT the target checks against the nexus's registration
 * (SPC-4 5.13.7; REGISTER AND IGNORE's is not checked, so it says nothing).
 */
function keyFromCommand(sa: number, key: bigint): bigint | null {
  return key !== 0n && sa !== PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY ? key : null;
}

function describeKey(k: MapKey): string {
  const parts: string[] = [];
  if (k.name !== undefined) parts.push(`map ${k.name}`);
  if (k.devT !== undefined) parts.push(`dev_t ${k.devT}`);
  if (k.wwid !== undefined) parts.push(`WWID ${k.wwid}`);
  return parts.join(', ') || 'an unnamed map';
}

const realSetTimer: SetTimer = (ms, fn) => {
  const t = globalThis.setTimeout(fn, ms);
  t.unref?.();
  return () => globalThis.clearTimeout(t);
};

function emptyMapCounters(): Omit<MapCounters, keyof GuardCounters> {
  return { commands: 0, commandsNotGood: 0, commandsRejectedBusy: 0, pathUp: 0, pathDown: 0 };
}

export class MultipathEngine {
  readonly #topology: TopologySource;
  readonly #io: PathIo;
  readonly #control: MapControl;
  readonly #store: EngineStore;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #verifyIntervalMs: number;
  readonly #maxListeners: number;
  readonly #setTimer: SetTimer;
  readonly #now: () => number;
  readonly #wall: () => number;
  readonly #fanout: FanoutFn;
  readonly #guard: KeyGuard;
  readonly #lock: KeyedMutex;
  readonly #listeners = new Set<(e: EngineEvent) => void>();
  #state: EngineState = 'new';
  #unsubscribe: (() => void) | null = null;
  #cancelVerify: (() => void) | null = null;
  #lastRound: string | null = null;
  /** Registrations waiting for their map's lock, coalesced per map. */
  readonly #pending = new Map<string, Map<string, { since: number | null; trigger: RegistrationTrigger }>>();
  readonly #registrationQueued = new Set<string>();
  readonly #verifyQueued = new Set<string>();
  readonly #engineCounters = new Map<string, Omit<MapCounters, keyof GuardCounters>>();
  readonly #lastCommand = new Map<string, CommandSummary>();
  readonly #pathChanges = new Map<string, { at: string; usable: boolean }>();
  readonly #inflight = new Set<Promise<unknown>>();
  /** Intents loaded with a write-ahead record (a command prmux died in), until rolled back. */
  readonly #interrupted = new Map<string, MapIntent>();

  constructor(opts: MultipathEngineOptions) {
    this.#topology = opts.topology;
    this.#io = opts.io;
    this.#control = opts.control;
    this.#store = opts.store;
    this.#log = opts.logger ?? nullLogger;
    this.#timeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#verifyIntervalMs = opts.verifyIntervalMs ?? DEFAULT_VERIFY_INTERVAL_MS;
    this.#maxListeners = opts.maxListeners ?? DEFAULT_MAX_LISTENERS;
    this.#setTimer = opts.setTimer ?? realSetTimer;
    this.#now = opts.now ?? (() => performance.now());
    this.#wall = opts.wallClock ?? (() => Date.now());
    this.#fanout = opts.executeOnMap ?? executeOnMap;
    this.#lock = new KeyedMutex(opts.maxQueuedPerMap ?? DEFAULT_MAX_QUEUED_PER_MAP);
    this.#guard = new KeyGuard({
      io: this.#io,
      topology: this.#topology,
      store: this.#store,
      logger: this.#log,
      timeoutMs: this.#timeoutMs,
      now: this.#now,
      wallClock: this.#wall,
      emit: (e) => this.#emit(e),
    });
  }

  get state(): EngineState {
    return this.#state;
  }

  #iso(): string {
    return new Date(this.#wall()).toISOString();
  }

  #counters(wwid: string): Omit<MapCounters, keyof GuardCounters> {
    let c = this.#engineCounters.get(wwid);
    if (c === undefined) {
      c = emptyMapCounters();
      this.#engineCounters.set(wwid, c);
    }
    return c;
  }

  // --- events ----------------------------------------------------------------------------------------

  /** Subscribe to engine events; returns the unsubscribe function. A listener that throws is logged. */
  onEvent(listener: (e: EngineEvent) => void): () => void {
    if (this.#listeners.size >= this.#maxListeners) {
      throw new PrmuxError(ErrorCode.CONFIG, `Cannot add an engine listener: ${this.#maxListeners} are registered already (maxListeners)`);
    }
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  #emit(e: EngineEvent): void {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        this.#log.error('an engine event listener threw', { event: e.kind, error: (err as Error).message });
      }
    }
  }

  // --- lifecycle ---------------------------------------------------------------------------------------

  /**
   * Load the intents, learn the topology, reconcile every map that has an intent (announce the key
   * to multipathd, register it on every usable path unless we were fenced, verify and repair), then
   * start polling and the verification timer. Resolves when every map is reconciled.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new PrmuxError(ErrorCode.CLOSED, `Cannot start the multipath engine: it is ${this.#state}`);
    this.#state = 'starting';
    await this.#store.init?.();
    const loaded = await this.#store.loadAll();
    // The guard works on the previous intent; the record is kept here until the paths are rolled
    // back (#recoverInterrupted, under the map's lock, before anything else runs on the map).
    const intents = loaded.intents.map((i) => {
      if (i.pending === undefined) return i;
      this.#interrupted.set(i.wwid, i);
      return withoutPending(i);
    });
    this.#guard.load(intents);
    this.#log.info('loaded map intents', { intents: loaded.intents.length, interrupted: this.#interrupted.size, corrupt: loaded.corrupt.length, leftovers: loaded.leftovers.length });
    this.#unsubscribe = this.#topology.onEvent((e) => this.#onTopology(e));
    let maps: readonly MapInfo[];
    try {
      maps = await this.#topology.refresh();
    } catch (e) {
      // Neither multipathd nor sysfs answered: nothing to reconcile now; polling and the
      // verification rounds catch up when they do.
      this.#log.error('cannot read the multipath topology at start-up', { error: (e as Error).message });
      maps = this.#topology.maps();
    }
    await this.#forEachBounded(maps, (m) => this.#locked(m.wwid, () => this.#reconcile(m.wwid, 'start-up')));
    if (this.#state !== 'starting') return; // closed meanwhile
    this.#state = 'running';
    this.#topology.start();
    this.#scheduleVerify();
    this.#log.info('multipath engine running', { maps: maps.length, verifyIntervalMs: this.#verifyIntervalMs });
  }

  /** Stop the timers and topology polling, let running work finish, close the topology and the path io. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#cancelVerify?.();
    this.#cancelVerify = null;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    await Promise.allSettled([...this.#inflight]);
    this.#topology.close();
    const closable = this.#io as PathIo & { close?(): unknown };
    try {
      await closable.close?.();
    } catch (e) {
      this.#log.warn('closing the path io failed', { error: (e as Error).message });
    }
  }

  /** Resolves once no command, registration or verification is running or queued (tests, admin "settle"). */
  async whenIdle(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }

  async #forEachBounded<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < items.length) {
        const item = items[next++]!;
        try {
          await fn(item);
        } catch (e) {
          this.#log.error('multipath engine task failed', { error: (e as Error).message });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(RECONCILE_CONCURRENCY, items.length) }, worker));
  }

  /** Run engine work under a map's lock (never refused), tracked for close(). */
  #locked<T>(wwid: string, fn: () => Promise<T>): Promise<T> {
    const p = this.#lock.run(wwid, fn, true)!;
    this.#track(p);
    return p;
  }

  #track(p: Promise<unknown>): void {
    const t = p.then(
      () => undefined,
      () => undefined,
    );
    this.#inflight.add(t);
    void t.then(() => this.#inflight.delete(t));
  }

  #currentMap(wwid: string): MapInfo | null {
    return this.#topology.maps().find((m) => m.wwid === wwid) ?? null;
  }

  /** Announce, register everywhere (fence-checked), verify. Called with the map's lock held. */
  async #reconcile(wwid: string, trigger: RegistrationTrigger): Promise<void> {
    await this.#recoverInterrupted(wwid);
    const map = this.#currentMap(wwid);
    const intent = this.#guard.intentOf(wwid);
    if (map === null || intent === null || !intentMatters(intent)) return;
    await this.#guard.announce(map);
    await this.#guard.registerPaths(
      map,
      map.paths.filter((p) => p.usable).map((p) => ({ dev: p.dev, since: null, trigger })),
    );
    const report = await this.#guard.verify(map);
    this.#emit({ kind: 'reconciled', at: this.#iso(), wwid, map: map.name, ok: report.ok, findings: report.findings, repairs: report.repairs });
  }

  // --- topology ------------------------------------------------------------------------------------------

  #onTopology(e: TopologyEvent): void {
    const at = this.#iso();
    switch (e.kind) {
      case 'source-changed':
        this.#log.info('topology source changed', { source: e.source, reason: e.reason });
        this.#emit({ kind: 'topology-source-changed', at, source: e.source, reason: e.reason });
        return;
      case 'map-added':
        this.#emit({ kind: 'map-added', at, wwid: e.map.wwid, map: e.map.name });
        if (this.#state === 'running' && !this.#verifyQueued.has(e.map.wwid)) {
          const wwid = e.map.wwid;
          this.#verifyQueued.add(wwid);
          void this.#locked(wwid, async () => {
            this.#verifyQueued.delete(wwid);
            if (this.#state === 'running') await this.#reconcile(wwid, 'map-added');
          }).catch((err: unknown) => this.#log.error('reconciling a new map failed', { wwid, error: (err as Error).message }));
        }
        return;
      case 'map-removed':
        this.#emit({ kind: 'map-removed', at, wwid: e.map.wwid, map: e.map.name });
        this.#pending.delete(e.map.wwid);
        for (const p of e.map.paths) this.#forgetPath(e.map.wwid, p.dev);
        if (this.#guard.intentOf(e.map.wwid) === null) {
          // Nothing to keep for a map we never guarded; one with an intent stays listed (not present).
          this.#guard.forget(e.map.wwid);
          this.#engineCounters.delete(e.map.wwid);
          this.#lastCommand.delete(e.map.wwid);
        }
        this.#retainIo();
        return;
      case 'path-removed':
        this.#emit({ kind: 'path-removed', at, wwid: e.map.wwid, map: e.map.name, path: e.path.dev, usable: false });
        this.#pending.get(e.map.wwid)?.delete(e.path.dev);
        this.#forgetPath(e.map.wwid, e.path.dev);
        this.#retainIo();
        return;
      case 'path-added':
        this.#pathChanges.set(`${e.map.wwid}/${e.path.dev}`, { at, usable: e.path.usable });
        this.#emit({ kind: 'path-added', at, wwid: e.map.wwid, map: e.map.name, path: e.path.dev, usable: e.path.usable });
        if (e.path.usable) this.#queueRegistration(e.map.wwid, e.path.dev, 'path-added');
        return;
      case 'path-usable':
        this.#pathChanges.set(`${e.map.wwid}/${e.path.dev}`, { at, usable: true });
        this.#counters(e.map.wwid).pathUp++;
        this.#log.info('path up', { wwid: e.map.wwid, map: e.map.name, path: e.path.dev });
        this.#emit({ kind: 'path-up', at, wwid: e.map.wwid, map: e.map.name, path: e.path.dev, usable: true });
        this.#queueRegistration(e.map.wwid, e.path.dev, 'path-usable');
        return;
      case 'path-unusable':
        this.#pathChanges.set(`${e.map.wwid}/${e.path.dev}`, { at, usable: false });
        this.#counters(e.map.wwid).pathDown++;
        this.#log.info('path down', { wwid: e.map.wwid, map: e.map.name, path: e.path.dev, checker: e.path.checkerState });
        this.#emit({ kind: 'path-down', at, wwid: e.map.wwid, map: e.map.name, path: e.path.dev, usable: false });
        return;
    }
  }

  #forgetPath(wwid: string, dev: string): void {
    this.#pathChanges.delete(`${wwid}/${dev}`);
    this.#guard.forgetPath(wwid, dev);
  }

  /** KernelPathIo keeps one fd per path: let it close the fds of paths that left. */
  #retainIo(): void {
    const io = this.#io as PathIo & { retain?(maps: readonly MapInfo[]): void };
    try {
      io.retain?.(this.#topology.maps());
    } catch (e) {
      this.#log.warn('path io retain failed', { error: (e as Error).message });
    }
  }

  /**
   * Register the key on a path that became usable, as soon as the map's lock allows. During
   * start-up the reconciliation covers every path, so nothing is queued then.
   */
  #queueRegistration(wwid: string, dev: string, trigger: RegistrationTrigger): void {
    if (this.#state !== 'running') return;
    let m = this.#pending.get(wwid);
    if (m === undefined) {
      m = new Map();
      this.#pending.set(wwid, m);
    }
    if (!m.has(dev)) m.set(dev, { since: this.#now(), trigger });
    if (this.#registrationQueued.has(wwid)) return;
    this.#registrationQueued.add(wwid);
    void this.#locked(wwid, async () => {
      this.#registrationQueued.delete(wwid);
      const reqs = this.#pending.get(wwid);
      this.#pending.delete(wwid);
      if (reqs === undefined || this.#state !== 'running') return;
      await this.#recoverInterrupted(wwid);
      const map = this.#currentMap(wwid);
      if (map === null) return;
      await this.#guard.registerPaths(
        map,
        [...reqs].map(([d, r]) => ({ dev: d, since: r.since, trigger: r.trigger })),
      );
    }).catch((err: unknown) => this.#log.error('registering a returning path failed', { wwid, error: (err as Error).message }));
  }

  // --- verification --------------------------------------------------------------------------------------

  #scheduleVerify(): void {
    if (this.#state !== 'running' || this.#verifyIntervalMs <= 0) return;
    this.#cancelVerify = this.#setTimer(this.#verifyIntervalMs, () => {
      this.#cancelVerify = null;
      const round = this.verifyAll().finally(() => this.#scheduleVerify());
      this.#track(round);
    });
  }

  /**
   * One verification round: every present map with an intent worth keeping, under its lock, a few
   * maps at a time. Intents whose write failed earlier are written again first.
   */
  async verifyAll(): Promise<VerificationReport[]> {
    await this.#guard.flushDirty();
    const wanted = this.#topology.maps().filter((m) => {
      const i = this.#guard.intentOf(m.wwid);
      return (i !== null && intentMatters(i)) || this.#interrupted.has(m.wwid);
    });
    const reports: VerificationReport[] = [];
    await this.#forEachBounded(wanted, async (m) => {
      const r = await this.#verifyLocked(m.wwid);
      if (r !== null) reports.push(r);
    });
    this.#lastRound = this.#iso();
    return reports;
  }

  /** Verify (and repair) one map now, whether or not it has an intent (the admin's "check now"). */
  async verifyNow(key: MapKey, opts: { readonly repair?: boolean } = {}): Promise<VerificationReport> {
    const map = await this.#topology.find(key, true);
    if (map === null) throw new PrmuxError(ErrorCode.DEVICE, `Cannot verify ${describeKey(key)}: multipathd and sysfs know no such map`);
    return this.#locked(map.wwid, async () => this.#guard.verify(this.#currentMap(map.wwid) ?? map, opts));
  }

  #verifyLocked(wwid: string): Promise<VerificationReport | null> {
    return this.#locked(wwid, async () => {
      if (this.#state === 'closed') return null;
      await this.#recoverInterrupted(wwid);
      const map = this.#currentMap(wwid);
      return map === null ? null : this.#guard.verify(map);
    });
  }

  // --- guest commands ------------------------------------------------------------------------------------

  /**
   * Run one guest PERSISTENT RESERVE IN/OUT on a map. Resolves with the fan-out's result for every
   * SCSI or transport outcome (TASK SET FULL when too many commands wait for this map); rejects
   * with a PrmuxError when no such map is known (code DEVICE) or the engine is not running (CLOSED).
   */
  async execute(key: MapKey, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number): Promise<FanoutResult> {
    if (this.#state !== 'running') throw new PrmuxError(ErrorCode.CLOSED, `Cannot run a PR command on ${describeKey(key)}: the multipath engine is ${this.#state}`);
    let map = await this.#topology.find(key, false);
    if (map === null) map = await this.#topology.find(key, true);
    if (map === null) throw new PrmuxError(ErrorCode.DEVICE, `Cannot run a PR command on ${describeKey(key)}: multipathd and sysfs know no such map`);
    const wwid = map.wwid;
    const first = map;
    const job = this.#lock.run(wwid, () => this.#executeLocked(wwid, first, cdb, dataOut, allocationLength));
    if (job === null) {
      this.#counters(wwid).commandsRejectedBusy++;
      this.#log.warn('too many PR commands waiting for one map; answering TASK SET FULL', { wwid, map: map.name, queued: this.#lock.depth(wwid) });
      return { outcome: { kind: 'task-set-full' }, decidedBy: null, commands: [], pendingPaths: [] };
    }
    this.#track(job);
    return job;
  }

  async #executeLocked(wwid: string, found: MapInfo, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number): Promise<FanoutResult> {
    const started = this.#now();
    const isOut = cdb[0] === Opcode.PERSISTENT_RESERVE_OUT;
    let map = found;
    if (isOut) {
      // Before each PR OUT: a fresh view, so the paths the fan-out counts on are the live ones.
      const fresh = await this.#topology.find({ wwid }, true);
      if (fresh === null) throw new PrmuxError(ErrorCode.DEVICE, `Cannot run a PR command on map ${found.name}: it is gone (WWID ${wwid})`);
      map = fresh;
    }
    // A command prmux died in comes first: the guest's new command starts from the previous state.
    await this.#recoverInterrupted(wwid);
    const before = this.#guard.intentOf(wwid);
    let writeAhead = false;
    if (isOut && needsWriteAhead(cdb, dataOut)) {
      const record: PendingCommand = { cdb: hex(cdb), data: dataOut === null ? null : hex(dataOut), startedAt: this.#iso() };
      writeAhead = await this.#guard.writeAhead(map, record);
    }
    const ctx: FanoutContext = {
      map,
      io: this.#io,
      control: this.#control,
      recheck: async (path) => {
        const m = await this.#topology.find({ wwid }, true);
        return m?.paths.find((p) => p.dev === path)?.usable ?? false;
      },
      timeoutMs: this.#timeoutMs,
      logger: this.#log,
      now: this.#now,
    };
    const result = await this.#fanout(cdb, dataOut, allocationLength, ctx);
    const extra: PathCommand[] = [];
    let intentChanged = false;
    let rolledBack: RepairAction[] = [];
    if (isOut && result.outcome.kind === 'good') {
      intentChanged = await this.#applyIntent(map, cdb, dataOut, result, extra);
    } else if (isOut) {
      const rb = await this.#rollBack(map, before, cdb, dataOut, result, extra);
      rolledBack = rb.actions;
      intentChanged = rb.intentChanged;
    }
    if (writeAhead && !intentChanged) {
      // The intent did not change, but the file holds the write-ahead record: replace it.
      await this.#guard.commit(map, this.#guard.intentOf(wwid) ?? emptyIntent(wwid, map.name, this.#iso()), { force: true });
    }
    const c = this.#counters(wwid);
    c.commands++;
    if (result.outcome.kind !== 'good') c.commandsNotGood++;
    const durationMs = this.#now() - started;
    const summary: CommandSummary = {
      at: this.#iso(),
      command: commandName(cdb),
      status: outcomeStatus(result.outcome),
      outcome: formatOutcome(result.outcome),
      decidedBy: result.decidedBy,
      paths: new Set(result.commands.map((x) => x.path)).size,
      durationMs,
    };
    this.#lastCommand.set(wwid, summary);
    this.#log.debug('PR command done', { wwid, map: map.name, command: summary.command, outcome: summary.outcome, decidedBy: result.decidedBy, commands: result.commands.length });
    this.#emit({
      kind: 'command-done',
      at: summary.at,
      wwid,
      map: map.name,
      command: summary.command,
      opcode: cdb[0] ?? 0,
      serviceAction: (cdb[1] ?? 0) & 0x1f,
      status: summary.status,
      outcome: summary.outcome,
      decidedBy: result.decidedBy,
      commands: [...result.commands, ...extra],
      pendingPaths: result.pendingPaths,
      intentChanged,
      rolledBack,
      durationMs,
    });
    return result;
  }

  /**
   * A PR OUT failed as a whole: put the paths it changed back as they were (the kernel's
   * dm_pr_register rolls a map's paths back the same way). Paths changed: a GOOD REGISTER / REGISTER
   * AND IGNORE among the commands sent; after a GOOD PREEMPT of our own key (moving a reservation)
   * every usable path, since the PREEMPT removed our registrations from the others. They get
   * REGISTER AND IGNORE with the previous key (SA key 0 when there was none) and the previous
   * APTPL / ALL_TG_PT. When there was no key and a copy may have registered the new one, the intent
   * records it as our last key, so the guard removes it wherever it is left (a path that failed
   * after the target executed the command, or where the rollback failed).
   */
  async #rollBack(
    map: MapInfo,
    before: MapIntent | null,
    cdb: Uint8Array,
    dataOut: Uint8Array | null,
    result: FanoutResult,
    extra: PathCommand[],
  ): Promise<{ actions: RepairAction[]; intentChanged: boolean }> {
    const none = { actions: [], intentChanged: false };
    if (cdb[0] !== Opcode.PERSISTENT_RESERVE_OUT || dataOut === null || dataOut.length < 24) return none;
    const sa = (cdb[1] ?? 0) & 0x1f;
    const touched = new Set<string>();
    const failedAtTransport = new Set<string>();
    let selfPreempted = false;
    let maybeRegistered = false;
    for (const c of result.commands) {
      if (!c.cdb.startsWith('5f')) continue;
      const csa = parseInt(c.cdb.slice(2, 4), 16) & 0x1f;
      if (c.outcome.kind === 'transport-failure') failedAtTransport.add(c.path);
      else failedAtTransport.delete(c.path);
      if (isRegisterAction(csa)) {
        if (c.outcome.kind === 'good') touched.add(c.path);
        else if (c.outcome.kind === 'transport-failure') maybeRegistered = true;
      }
      if (c.outcome.kind === 'good' && c.role === 'preempt-self' && (csa === PrOutAction.PREEMPT || csa === PrOutAction.PREEMPT_AND_ABORT)) selfPreempted = true;
    }
    if (!isRegisterAction(sa) && !selfPreempted) return none;
    const targets = new Set(touched);
    if (selfPreempted) for (const p of map.paths) if (p.usable && !failedAtTransport.has(p.dev)) targets.add(p.dev);
    const keyField = readU64(dataOut, 0);
    const newKey = isRegisterAction(sa) ? readU64(dataOut, 8) : keyField;
    const prevKey = before?.key ?? keyFromCommand(sa, keyField);
    const flags = { aptpl: before?.aptpl ?? false, allTgPt: before?.allTgPt ?? (dataOut[20]! & 0x04) !== 0 };
    let actions: RepairAction[] = [];
    if (targets.size > 0) {
      this.#log.warn('PR command failed after changing some paths: restoring their previous registration', {
        wwid: map.wwid,
        map: map.name,
        command: commandName(cdb),
        paths: [...targets],
        key: hexKey(prevKey),
      });
      actions = await this.#guard.restorePaths(map, [...targets], prevKey, flags, 'rollback', extra);
    }
    // No key before, and the new one may be left somewhere: make it the last key (stray if seen).
    if (prevKey === null && newKey !== 0n && (touched.size > 0 || maybeRegistered)) {
      const base = before ?? emptyIntent(map.wwid, map.name, this.#iso());
      if (base.lastKey !== newKey) {
        await this.#guard.commit(map, { ...base, mapName: map.name, lastKey: newKey, updatedAt: this.#iso() });
        return { actions, intentChanged: true };
      }
    }
    return { actions, intentChanged: false };
  }

  /**
   * Roll back a command prmux died in (its write-ahead record was loaded at start-up): under the
   * map's lock, before anything else runs on the map. Needs the map present and one usable path to
   * read the LU through; otherwise it is tried again at the next reconcile, path return,
   * verification or guest command. Never undoes a fence: the previous key is registered again only
   * when the LU still shows it or the interrupted key on some nexus (so our own command removed it).
   */
  async #recoverInterrupted(wwid: string): Promise<void> {
    const rec = this.#interrupted.get(wwid);
    if (rec === undefined || rec.pending === undefined) return;
    const map = this.#currentMap(wwid);
    if (map === null) return;
    const usable = map.paths.filter((p) => p.usable).map((p) => p.dev);
    const eff = pendingEffect(rec.pending);
    const command = commandName(parseHex(rec.pending.cdb));
    if (usable.length === 0) {
      this.#log.warn('a PR command was interrupted; no usable path to roll it back through yet', { wwid, map: map.name, command });
      return;
    }
    const commands: PathCommand[] = [];
    const status = await this.#guard.readStatus(map, commands);
    if (status === null) {
      this.#log.warn('a PR command was interrupted; the LU cannot be read to roll it back yet', { wwid, map: map.name, command });
      return;
    }
    const prev = this.#guard.intentOf(wwid) ?? withoutPending(rec);
    const prevKey = prev.key ?? keyFromCommand(eff.serviceAction, eff.key);
    const interruptedKey = eff.registering;
    const seen = (k: bigint | null): boolean => k !== null && status.keys.includes(k);
    const now = this.#iso();
    let next: MapIntent = prev;
    let repairs: RepairAction[] = [];
    let resolution: 'rolled-back' | 'unregister-completed' | 'key-gone' = 'rolled-back';
    if (prevKey !== null) {
      if (seen(prevKey) || seen(interruptedKey)) {
        repairs = await this.#guard.restorePaths(map, usable, prevKey, { aptpl: prev.aptpl, allTgPt: prev.allTgPt }, 'interrupted-command', commands);
        if (prev.key !== prevKey) next = { ...prev, key: prevKey, lastKey: prevKey, updatedAt: now };
      } else if (!status.complete) {
        this.#log.warn('a PR command was interrupted; the keys read were cut short, not rolling back yet', { wwid, map: map.name, command });
        return;
      } else if (isRegisterAction(eff.serviceAction) && interruptedKey === null) {
        // The unregister reached every nexus (or another host removed the key meanwhile): the
        // previous key is registered nowhere and is not brought back.
        resolution = 'unregister-completed';
        next = { ...prev, key: null, lastKey: prevKey, reservation: null, updatedAt: now };
      } else {
        // Neither key anywhere: preempted or cleared; the guard's fence rule decides (reconcile).
        resolution = 'key-gone';
      }
    } else {
      if (seen(interruptedKey)) {
        const allTgPt = rec.pending.data !== null && rec.pending.data.length >= 42 && (parseInt(rec.pending.data.slice(40, 42), 16) & 0x04) !== 0;
        repairs = await this.#guard.restorePaths(map, usable, null, { aptpl: prev.aptpl, allTgPt }, 'interrupted-command', commands);
      }
      // The interrupted key becomes our last key: a path that was down gets it removed on return.
      if (interruptedKey !== null && prev.lastKey !== interruptedKey) next = { ...prev, lastKey: interruptedKey, updatedAt: now };
    }
    this.#interrupted.delete(wwid);
    await this.#guard.commit(map, next.mapName === map.name ? next : { ...next, mapName: map.name }, { force: true });
    const fields = {
      wwid,
      map: map.name,
      command,
      startedAt: rec.pending.startedAt,
      previousKey: hexKey(prevKey),
      interruptedKey: hexKey(interruptedKey),
      resolution,
      repairs: repairs.map((r) => `${r.path}:${r.ok ? 'ok' : r.outcome}`),
    };
    this.#log.warn('interrupted PR command rolled back to the previous intent', fields);
    this.#emit({
      kind: 'interrupted-command-rolled-back',
      at: this.#iso(),
      wwid,
      map: map.name,
      command,
      startedAt: rec.pending.startedAt,
      previousKey: hexKey(prevKey),
      interruptedKey: hexKey(interruptedKey),
      resolution,
      repairs,
      commands,
    });
  }

  /** nextIntent after a GOOD PR OUT, its write and announcement; true when the intent changed. */
  async #applyIntent(map: MapInfo, cdb: Uint8Array, dataOut: Uint8Array | null, result: FanoutResult, extra: PathCommand[]): Promise<boolean> {
    const before = this.#guard.intentOf(map.wwid);
    const base = before ?? emptyIntent(map.wwid, map.name, this.#iso());
    const sa = (cdb[1] ?? 0) & 0x1f;
    let observed: ReservationObservation | undefined;
    if ((sa === PrOutAction.PREEMPT || sa === PrOutAction.PREEMPT_AND_ABORT) && dataOut !== null && dataOut.length >= 16 && readU64(dataOut, 0) !== readU64(dataOut, 8)) {
      // Whether the preempted key held the reservation (so it is ours now) is not in the CDB
      // (SPC-4 5.13.11.4): read it while the lock is still held.
      const st = await this.#guard.readStatus(map, extra);
      if (st !== null) observed = { reservation: st.reservation };
    }
    let next = nextIntent(base, cdb, dataOut, result, this.#iso(), observed);
    if (next === base) return false;
    if (next.mapName !== map.name) next = { ...next, mapName: map.name };
    await this.#guard.commit(map, next);
    this.#guard.noteCommand(map, before, next, result.commands);
    if (result.pendingPaths.length > 0) {
      this.#guard.markPending(map.wwid, result.pendingPaths);
      this.#log.info('key change reached some paths only; the others get it when they return', { wwid: map.wwid, map: map.name, pending: result.pendingPaths });
      // A path that came back while the command ran is usable already: no event will come for it.
      const now = this.#currentMap(map.wwid);
      for (const dev of result.pendingPaths) {
        if (now?.paths.find((p) => p.dev === dev)?.usable === true) this.#queueRegistration(map.wwid, dev, 'pending');
      }
    }
    return true;
  }

  // --- snapshot ------------------------------------------------------------------------------------------

  /** Everything known about every map, JSON-serialisable (keys as "0x..." strings). */
  snapshot(): EngineSnapshot {
    const maps = this.#topology.maps();
    const wwids = [...new Set([...maps.map((m) => m.wwid), ...this.#guard.knownWwids()])];
    return {
      at: this.#iso(),
      state: this.#state,
      verifyIntervalMs: this.#verifyIntervalMs,
      lastVerificationRound: this.#lastRound,
      maps: wwids.map((w) => this.#mapSnapshot(w, maps.find((m) => m.wwid === w) ?? null)),
    };
  }

  /** One map's snapshot, or null when the engine knows nothing of it. */
  mapSnapshot(key: MapKey): MapSnapshot | null {
    const maps = this.#topology.maps();
    const m = maps.find((x) => (key.wwid !== undefined && x.wwid === key.wwid) || (key.devT !== undefined && key.devT !== '' && x.devT === key.devT) || (key.name !== undefined && x.name === key.name));
    if (m !== undefined) return this.#mapSnapshot(m.wwid, m);
    if (key.wwid !== undefined && this.#guard.stateOf(key.wwid) !== null) return this.#mapSnapshot(key.wwid, null);
    return null;
  }

  #mapSnapshot(wwid: string, map: MapInfo | null): MapSnapshot {
    const g = this.#guard.stateOf(wwid);
    const intent = g?.intent ?? null;
    const pending = this.#pending.get(wwid);
    const paths: PathSnapshot[] = (map?.paths ?? []).map((p) => {
      const k = g?.paths.get(p.dev);
      return {
        dev: p.dev,
        devT: p.devT,
        hcil: p.hcil,
        dmState: p.dmState,
        checkerState: p.checkerState,
        deviceState: p.deviceState ?? null,
        usable: p.usable,
        key: hexKey(k?.key ?? null),
        keyStatus: k?.status ?? 'unknown',
        keyStatusAt: k?.at ?? null,
        pendingRegistration: k?.status === 'pending' || pending?.has(p.dev) === true,
        lastRegistration: k?.lastRegistration ?? null,
        lastChange: this.#pathChanges.get(`${wwid}/${p.dev}`) ?? null,
      };
    });
    const st = g?.lastStatus ?? null;
    const res = st?.reservation ?? null;
    const ours = res !== null && intent?.key !== null && intent?.key !== undefined && (res.key === intent.key || (res.key === 0n && st!.keys.includes(intent.key)));
    const lat = g?.registrationLatency;
    const lv = g?.lastVerification ?? null;
    let lastVerification: MapSnapshot['lastVerification'] = null;
    if (lv !== null) {
      const { commands: _omitted, ...rest } = lv;
      lastVerification = rest;
    }
    return {
      wwid,
      name: map?.name ?? intent?.mapName ?? '',
      devT: map?.devT ?? '',
      source: map?.source ?? null,
      present: map !== null,
      usablePaths: paths.filter((p) => p.usable).length,
      paths,
      intent:
        intent === null
          ? null
          : {
              key: hexKey(intent.key),
              lastKey: hexKey(intent.lastKey),
              aptpl: intent.aptpl,
              allTgPt: intent.allTgPt,
              reservation: intent.reservation,
              fenced: intent.fenced === undefined ? null : { at: intent.fenced.at, formerKey: hexKey(intent.fenced.formerKey)!, detail: intent.fenced.detail },
              updatedAt: intent.updatedAt,
              persisted: g?.persisted ?? true,
            },
      reservation: res === null ? null : { holderKey: hexKey(res.key)!, type: res.type, ours },
      registrations: st?.registrations ?? [],
      statusAt: st?.at ?? null,
      statusMethod: st?.method ?? null,
      fullStatusSupported: g?.fullStatusSupported ?? null,
      lastVerification,
      lastRepair: g?.lastRepair ?? null,
      lastCommand: this.#lastCommand.get(wwid) ?? null,
      registrationLatency: {
        count: lat?.count ?? 0,
        lastMs: lat?.lastMs ?? null,
        maxMs: lat?.maxMs ?? null,
        meanMs: lat !== undefined && lat.count > 0 ? lat.totalMs / lat.count : null,
      },
      queueDepth: this.#lock.depth(wwid),
      counters: { ...(g?.counters ?? emptyGuardCounters()), ...(this.#engineCounters.get(wwid) ?? emptyMapCounters()) },
    };
  }
}

