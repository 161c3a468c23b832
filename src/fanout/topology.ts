// Where the fan-out engine learns which maps exist and which of their paths can carry a PR command:
// multipathd's socket (`show maps json` for the maps and their member paths in table order,
// `show paths raw format PRMUX_PATHS_FORMAT` for each path's H:C:T:L, dev_t, dm, checker and
// device states), and sysfs when multipathd does not answer (/sys/block/dm-N with a dm uuid
// "mpath-...", its slaves, each slave's SCSI device state). The source in use is reported as an
// event and logged whenever it changes, in both directions.
//
// The view is refreshed by polling (default every second) and on demand (`find(..., true)`, which
// the engine does before each PR OUT). Refreshes never overlap: a refresh() while one is in flight
// joins it. Two consecutive views are compared into TopologyEvents (pure: diffTopology).
//
// Which path is usable (isUsablePath): libmpathpersist sends PR commands down the paths whose
// checker state is PATH_UP ("ready") or PATH_GHOST ("ghost") and looks at nothing else
// (mpath_persist_int.c, pp->state). prmux adds one rule: a SCSI device sysfs reports "offline"
// rejects every command, so it is skipped too. The dm state of the path (active/failed) is
// deliberately not used: PR commands go to the path device with SG_IO, not through the dm table,
// and a path dm has failed while its checker already sees it up is about to be reinstated and
// must carry the key before it carries I/O again. The map's dm state (suspended or not) does not
// matter either, for the same reason (prmux itself suspends maps around moving a reservation).
// Removed paths are not listed by multipathd (0.9.4 drops them from pathvec), and a path multipathd
// still lists as removed prints checker "undef", which is not usable.
//
// On sysfs there is no checker: a path is usable when its SCSI device state is "running".

import { readFileSync, readdirSync, realpathSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ErrorCode, PrmuxError } from '../errors.js';
import { DEFAULT_MULTIPATHD_SOCKETS, MultipathdClient } from '../mpath/multipathd-client.js';
import { parseHcil, type MapsJsonReply, type PathRecord } from '../mpath/multipathd-parse.js';
import type { Hcil } from '../mpath/topology-model.js';
import type { Logger } from '../socket/logger.js';
import type { SetTimer } from '../socket/pr-helper-session.js';
import { isUsableCheckerState, type MapInfo, type PathInfo, type TopologyEvent, type TopologySource } from './types.js';

/** What the topology needs from a multipathd client (MultipathdClient has it all). */
export interface TopologyClient {
  showMapsJson(): Promise<MapsJsonReply>;
  showPaths(): Promise<PathRecord[]>;
  setPrKey(map: string, key: bigint): Promise<void>;
  unsetPrKey(map: string): Promise<void>;
  setPrStatus(map: string): Promise<void>;
  unsetPrStatus(map: string): Promise<void>;
  close(): Promise<void>;
}

export interface MultipathTopologyOptions {
  /**
   * Builds the multipathd client; called once, at construction, and the topology owns (closes) what
   * it returns. Default: a MultipathdClient on `sockets` (it reconnects by itself after a failure).
   */
  readonly createClient?: () => TopologyClient;
  /**
   * libmpathcmd socket names, tried in order ('@name' = abstract namespace). The edge passes
   * MULTIPATH_SOCKET_NAME here (see multipathdSocketsFor). Default: the abstract socket of
   * multipathd 0.9.4, then /run/multipathd.socket.
   */
  readonly sockets?: string | readonly string[];
  /** Bound on one multipathd request (connect, send, whole reply). Default: the client's (libmpathcmd's 4 s). */
  readonly multipathdTimeoutMs?: number;
  /** Polling period once start()ed. Default 1000 ms. */
  readonly pollIntervalMs?: number;
  /** Where sysfs is mounted (a fake tree in tests). Default "/sys". */
  readonly sysfsRoot?: string;
  readonly logger?: Logger | null;
  /** Timer seam (one-shot; returns its cancel function). Default: the global timers. */
  readonly setTimer?: SetTimer;
  /** Listeners onEvent() accepts. Default 64. */
  readonly maxListeners?: number;
}

export const DEFAULT_POLL_INTERVAL_MS = 1000;
/** The dm uuid prefix multipathd gives its maps (libmultipath UUID_PREFIX). */
export const MPATH_DM_UUID_PREFIX = 'mpath-';
/** H:C:T:L of a path whose SCSI address nobody could tell (multipathd "#:#:#:#", no sysfs link). */
export const UNKNOWN_HCIL: PathInfo['hcil'] = Object.freeze({ host: -1, channel: -1, target: -1, lun: -1 });

const realSetTimer: SetTimer = (ms, fn) => {
  const t = globalThis.setTimeout(fn, ms);
  return () => globalThis.clearTimeout(t);
};

/**
 * The socket list for a value of MULTIPATH_SOCKET_NAME (libmpathcmd's override of the socket
 * name): that one socket when set and non-empty, else the defaults. The caller reads the
 * environment; this only interprets the value.
 */
export function multipathdSocketsFor(envValue: string | undefined): readonly string[] {
  return envValue !== undefined && envValue !== '' ? [envValue] : DEFAULT_MULTIPATHD_SOCKETS;
}

/** The usable rule documented at the top of this file, for multipathd's view of a path. */
export function isUsablePath(checkerState: string, deviceState: string | undefined): boolean {
  return isUsableCheckerState(checkerState) && deviceState !== 'offline';
}

export interface MultipathdLookups {
  /** "major:minor" of a dm device named by multipathd's `sysfs` field ("dm-0"); "" when unknown. */
  dmDevT?(sysfsName: string): string;
  /** H:C:T:L of a path multipathd printed no address for; null when unknown. */
  hcil?(dev: string): Hcil | null;
}

/**
 * Build the maps from one `show maps json` and one `show paths raw format` reply. Member paths come
 * from the JSON (path groups in order, each group's paths in dm table order); each path's states,
 * dev_t and H:C:T:L come from the raw listing, which prmux queries second and is therefore the
 * newer of the two. A member missing from the raw listing (added between the two queries) keeps
 * the JSON's states and is marked unusable until the next refresh sees it whole.
 */
export function mapsFromMultipathd(reply: MapsJsonReply, paths: readonly PathRecord[], lookups: MultipathdLookups = {}): MapInfo[] {
  const byDev = new Map<string, PathRecord>();
  for (const p of paths) if (p.dev !== '') byDev.set(p.dev, p);
  return reply.maps.map((m): MapInfo => {
    const seen = new Set<string>();
    const members: PathInfo[] = [];
    for (const group of m.pathGroups) {
      for (const jp of group.paths) {
        if (jp.dev === '' || seen.has(jp.dev)) continue;
        seen.add(jp.dev);
        const rec = byDev.get(jp.dev);
        const hcil = rec?.hcil ?? lookups.hcil?.(jp.dev) ?? null;
        const devState = rec?.devState ?? jp.devState;
        const checkerState = rec?.checkerState ?? jp.checkerState;
        members.push({
          dev: jp.dev,
          devT: normalizeDevT(rec?.devT ?? jp.devT),
          hcil: hcil ?? UNKNOWN_HCIL,
          dmState: rec?.dmState ?? jp.dmState,
          checkerState,
          ...(devState !== 'unknown' ? { deviceState: devState } : {}),
          usable: rec !== undefined && isUsablePath(checkerState, devState),
        });
      }
    }
    return {
      name: m.name,
      wwid: m.uuid,
      devT: /^dm-\d+$/.test(m.sysfs) ? (lookups.dmDevT?.(m.sysfs) ?? '') : '',
      paths: members,
      source: 'multipathd',
    };
  });
}

function normalizeDevT(devT: string): string {
  return /^\d+:\d+$/.test(devT) ? devT : '';
}

/**
 * The events that take `prev` to `next`. Maps are matched by WWID, paths within a map by device
 * name. A path whose dev_t changed is a different device under the same name: it is reported as
 * removed and added. A new map reports map-added only (its paths are in the event), a vanished
 * one map-removed only. A path that appears is reported by path-added alone, whatever its
 * usable flag; path-usable/path-unusable are for paths present in both views.
 */
export function diffTopology(prev: readonly MapInfo[], next: readonly MapInfo[]): TopologyEvent[] {
  const events: TopologyEvent[] = [];
  const nextByWwid = new Map(next.map((m) => [m.wwid, m]));
  const prevByWwid = new Map(prev.map((m) => [m.wwid, m]));
  for (const m of prev) if (!nextByWwid.has(m.wwid)) events.push({ kind: 'map-removed', map: m });
  for (const m of next) {
    const old = prevByWwid.get(m.wwid);
    if (old === undefined) {
      events.push({ kind: 'map-added', map: m });
      continue;
    }
    const oldPaths = new Map(old.paths.map((p) => [p.dev, p]));
    const newPaths = new Map(m.paths.map((p) => [p.dev, p]));
    const replaced = (a: PathInfo, b: PathInfo): boolean => a.devT !== '' && b.devT !== '' && a.devT !== b.devT;
    for (const p of old.paths) {
      const now = newPaths.get(p.dev);
      if (now === undefined || replaced(p, now)) events.push({ kind: 'path-removed', map: m, path: p });
    }
    for (const p of m.paths) {
      const before = oldPaths.get(p.dev);
      if (before === undefined || replaced(before, p)) events.push({ kind: 'path-added', map: m, path: p });
      else if (before.usable !== p.usable) events.push({ kind: p.usable ? 'path-usable' : 'path-unusable', map: m, path: p });
    }
  }
  return events;
}

// --- sysfs ---------------------------------------------------------------------------------------

function readTrimmed(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** "sda" < "sdb" < "sdaa", as the kernel numbers them; "dm-2" < "dm-10". */
function kernelNameOrder(a: string, b: string): number {
  const na = /^(\D*)(\d+)$/.exec(a);
  const nb = /^(\D*)(\d+)$/.exec(b);
  if (na && nb && na[1] === nb[1]) return Number(na[2]) - Number(nb[2]);
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** A block device's "major:minor" (/sys/block/X/dev); "" when sysfs does not say. */
export function sysfsDevT(sysfsRoot: string, name: string): string {
  return normalizeDevT(readTrimmed(join(sysfsRoot, 'block', name, 'dev')) ?? '');
}

/** A SCSI disk's H:C:T:L: the name of the SCSI device its `device` link points to. */
export function sysfsHcil(sysfsRoot: string, dev: string): Hcil | null {
  try {
    return parseHcil(basename(realpathSync(join(sysfsRoot, 'block', dev, 'device'))), 'sysfs SCSI device', 'name');
  } catch {
    return null;
  }
}

function sysfsPath(sysfsRoot: string, dev: string): PathInfo {
  const state = readTrimmed(join(sysfsRoot, 'block', dev, 'device', 'state'));
  return {
    dev,
    devT: sysfsDevT(sysfsRoot, dev),
    hcil: sysfsHcil(sysfsRoot, dev) ?? UNKNOWN_HCIL,
    // No checker and no dm table status on this route.
    dmState: 'undef',
    checkerState: 'undef',
    ...(state !== null ? { deviceState: state } : {}),
    usable: state === 'running',
  };
}

/**
 * The multipath maps as sysfs shows them: every /sys/block/dm-N whose dm/uuid starts with "mpath-",
 * named by dm/name, with its slaves as paths. Throws DEVICE when /sys/block cannot be read at all.
 */
export function readSysfsTopology(sysfsRoot: string): MapInfo[] {
  const blockDir = join(sysfsRoot, 'block');
  let names: string[];
  try {
    names = readdirSync(blockDir);
  } catch (e) {
    throw new PrmuxError(ErrorCode.DEVICE, `Cannot read the multipath topology from sysfs: ${blockDir}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
  }
  const maps: MapInfo[] = [];
  for (const dm of names.filter((n) => /^dm-\d+$/.test(n)).sort(kernelNameOrder)) {
    const uuid = readTrimmed(join(blockDir, dm, 'dm', 'uuid'));
    if (uuid === null || !uuid.startsWith(MPATH_DM_UUID_PREFIX)) continue;
    let slaves: string[] = [];
    try {
      slaves = readdirSync(join(blockDir, dm, 'slaves')).sort(kernelNameOrder);
    } catch {
      // A map without a slaves directory has no paths sysfs can name.
    }
    maps.push({
      name: readTrimmed(join(blockDir, dm, 'dm', 'name')) ?? dm,
      wwid: uuid.slice(MPATH_DM_UUID_PREFIX.length),
      devT: sysfsDevT(sysfsRoot, dm),
      paths: slaves.map((dev) => sysfsPath(sysfsRoot, dev)),
      source: 'sysfs',
    });
  }
  return maps;
}

// --- the topology source -------------------------------------------------------------------------

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class MultipathTopology implements TopologySource {
  /** Maps whose key multipathd refused (warned once). */
  readonly #keyRefused = new Set<string>();
  readonly #client: TopologyClient;
  readonly #pollMs: number;
  readonly #sysfsRoot: string;
  readonly #logger: Logger | null;
  readonly #setTimer: SetTimer;
  readonly #maxListeners: number;
  readonly #listeners = new Set<(e: TopologyEvent) => void>();

  #maps: readonly MapInfo[] = [];
  #source: 'multipathd' | 'sysfs' | null = null;
  #inFlight: Promise<readonly MapInfo[]> | null = null;
  #cancelTimer: (() => void) | null = null;
  #started = false;
  #closed = false;
  #lastPollError: string | null = null;

  constructor(options: MultipathTopologyOptions = {}) {
    const pollMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
    if (!Number.isSafeInteger(pollMs) || pollMs < 1) {
      throw new PrmuxError(ErrorCode.CONFIG, `Cannot create the multipath topology: pollIntervalMs ${String(pollMs)} must be a positive integer`);
    }
    this.#pollMs = pollMs;
    this.#sysfsRoot = options.sysfsRoot ?? '/sys';
    this.#logger = options.logger ?? null;
    this.#setTimer = options.setTimer ?? realSetTimer;
    this.#maxListeners = options.maxListeners ?? 64;
    this.#client =
      options.createClient?.() ??
      new MultipathdClient({
        socket: options.sockets ?? DEFAULT_MULTIPATHD_SOCKETS,
        ...(options.multipathdTimeoutMs !== undefined ? { timeoutMs: options.multipathdTimeoutMs } : {}),
        logger: this.#logger,
      });
  }

  /** Where the last refresh got its view (null before the first). */
  get source(): 'multipathd' | 'sysfs' | null {
    return this.#source;
  }

  /** Refresh now, then every pollIntervalMs (measured from the end of one refresh to the next). */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#poll();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cancelTimer?.();
    this.#cancelTimer = null;
    this.#client.close().catch((e: unknown) => this.#logger?.debug('closing the multipathd client failed', { error: messageOf(e) }));
  }

  maps(): readonly MapInfo[] {
    return this.#maps;
  }

  refresh(): Promise<readonly MapInfo[]> {
    if (this.#closed) return Promise.reject(closedError('refresh the multipath topology'));
    this.#inFlight ??= this.#query().finally(() => {
      this.#inFlight = null;
    });
    return this.#inFlight;
  }

  async find(key: { readonly wwid?: string; readonly devT?: string; readonly name?: string }, fresh: boolean): Promise<MapInfo | null> {
    if (key.wwid === undefined && key.devT === undefined && key.name === undefined) return null;
    let maps = this.#maps;
    if (fresh) {
      try {
        maps = await this.refresh();
      } catch (e) {
        if (this.#closed) throw e;
        // Neither multipathd nor sysfs answered: the last view is the best there is.
        this.#logger?.warn('topology refresh failed, using the last view', { error: messageOf(e) });
      }
    }
    return (
      maps.find(
        (m) =>
          (key.wwid === undefined || m.wwid === key.wwid) &&
          (key.devT === undefined || (m.devT !== '' && m.devT === key.devT)) &&
          (key.name === undefined || m.name === key.name),
      ) ?? null
    );
  }

  onEvent(listener: (e: TopologyEvent) => void): () => void {
    if (this.#listeners.size >= this.#maxListeners && !this.#listeners.has(listener)) {
      throw new PrmuxError(ErrorCode.CONFIG, `Cannot subscribe to topology events: ${this.#listeners.size} listeners already (the bound)`);
    }
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * Tell multipathd the map's key and that it is registered (libmpathpersist's setprkey +
   * setprstatus after a successful REGISTER; unsetprstatus + unsetprkey after unregistering), so
   * that multipathd registers the key on a path before reinstating it. The key goes first and the
   * status second (and the reverse for removal) so that multipathd never holds "registered" with a
   * missing or stale key. Failures are logged, never thrown: prmux's own guard does not depend on
   * multipathd knowing the key. A key of 0 means "no key". No-op while the view comes from sysfs
   * (the guard should announce again when the source changes back to multipathd).
   */
  async announceKey(map: MapInfo, key: bigint | null): Promise<void> {
    if (this.#closed) return;
    if (this.#source !== 'multipathd') {
      this.#logger?.debug('multipathd is not the topology source, key not announced', { map: map.name });
      return;
    }
    const k = key === null || key === 0n ? null : key;
    try {
      if (k !== null) {
        await this.#client.setPrKey(map.name, k);
        await this.#client.setPrStatus(map.name);
      } else {
        await this.#client.unsetPrStatus(map.name);
        await this.#client.unsetPrKey(map.name);
      }
      this.#logger?.debug(k !== null ? 'told multipathd the reservation key' : 'told multipathd the map has no key', { map: map.name, ...(k !== null ? { key: `0x${k.toString(16)}` } : {}) });
      this.#keyRefused.delete(map.name);
    } catch (e) {
      // multipathd 0.9.4 refuses setprkey unless multipath.conf says `reservation_key file`: say so
      // once per map (then at debug level), not on every key change.
      const first = !this.#keyRefused.has(map.name);
      this.#keyRefused.add(map.name);
      const log = first ? this.#logger?.warn : this.#logger?.debug;
      log?.call(this.#logger, 'multipathd did not take the reservation key (its own re-registration of returning paths needs `reservation_key file` in multipath.conf; prmux registers them itself)', {
        map: map.name,
        error: messageOf(e),
      });
    }
  }

  #poll(): void {
    this.#cancelTimer = null;
    if (this.#closed) return;
    this.refresh()
      .then(
        () => {
          this.#lastPollError = null;
        },
        (e: unknown) => {
          if (this.#closed) return;
          // Once per distinct failure, not once a second.
          const error = messageOf(e);
          if (error !== this.#lastPollError) this.#logger?.error('topology refresh failed', { error });
          else this.#logger?.debug('topology refresh failed again', { error });
          this.#lastPollError = error;
        },
      )
      .finally(() => {
        if (!this.#closed) this.#cancelTimer = this.#setTimer(this.#pollMs, () => this.#poll());
      });
  }

  async #query(): Promise<readonly MapInfo[]> {
    let next: MapInfo[];
    let source: 'multipathd' | 'sysfs';
    let reason: string;
    try {
      const json = await this.#client.showMapsJson();
      const paths = await this.#client.showPaths();
      next = mapsFromMultipathd(json, paths, { dmDevT: (dm) => sysfsDevT(this.#sysfsRoot, dm), hcil: (dev) => sysfsHcil(this.#sysfsRoot, dev) });
      source = 'multipathd';
      reason = this.#source === null ? 'first refresh' : 'multipathd answers again';
    } catch (e) {
      if (this.#closed) throw closedError('refresh the multipath topology');
      reason = `multipathd unreachable: ${messageOf(e)}`;
      try {
        next = readSysfsTopology(this.#sysfsRoot);
      } catch (s) {
        throw new PrmuxError(ErrorCode.DEVICE, `Cannot refresh the multipath topology: ${reason}; ${messageOf(s)}`, { cause: s });
      }
      source = 'sysfs';
      if (this.#source === 'sysfs') this.#logger?.debug('multipathd still unreachable, topology from sysfs', { error: messageOf(e) });
    }
    if (this.#closed) throw closedError('refresh the multipath topology');
    const events: TopologyEvent[] = [];
    if (source !== this.#source) {
      events.push({ kind: 'source-changed', source, reason });
      if (source === 'sysfs') this.#logger?.warn('topology now from sysfs (multipathd unreachable)', { reason });
      else this.#logger?.info('topology now from multipathd', { reason });
    }
    events.push(...diffTopology(this.#maps, next));
    this.#maps = next;
    this.#source = source;
    for (const e of events) this.#emit(e);
    return next;
  }

  #emit(e: TopologyEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(e);
      } catch (err) {
        // A broken listener must not stop the others or the poller.
        this.#logger?.error('topology event listener threw', { event: e.kind, error: messageOf(err) });
      }
    }
  }
}

function closedError(action: string): PrmuxError {
  return new PrmuxError(ErrorCode.CLOSED, `Cannot ${action}: the topology source is closed`);
}
