// What multipathd knows about maps and paths, as a plain serializable structure (JSON round-trips it
// unchanged: no classes, no bigint, no Map). The simulated multipathd keeps one of these per host and
// renders every `show ...` reply from it (multipathd-format.ts); the prmux side parses multipathd's
// replies into the record types of multipathd-parse.ts.
//
// Field meanings follow multipath-tools 0.9.4 (libmultipath/structs.h, print.c). Enumerations are
// kept as the exact strings multipathd prints, so rendering is a lookup and never a translation.
// Pure: no Node APIs.

import { EncodeError } from '../errors.js';

/** Path checker state (`chk_st`, print.c snprint_chk_state; PATH_WILD/UNCHECKED/REMOVED print "undef"). */
export const CheckerStates = ['ready', 'faulty', 'shaky', 'ghost', 'i/o pending', 'i/o timeout', 'delayed', 'undef'] as const;
export type CheckerState = (typeof CheckerStates)[number];

/** Device-mapper state of a path inside its map (`dm_st`, snprint_dm_path_state). */
export const PathDmStates = ['active', 'failed', 'undef'] as const;
export type PathDmState = (typeof PathDmStates)[number];

/** SCSI device state as multipathd reports it (`dev_st`, snprint_offline; "unknown" is printed for orphans). */
export const DevStates = ['running', 'offline'] as const;
export type DevState = (typeof DevStates)[number];

/** Path group state (`dm_st` of a group, snprint_pg_state). */
export const GroupStates = ['active', 'enabled', 'disabled', 'undef'] as const;
export type GroupState = (typeof GroupStates)[number];

/** Path initialization state (`%I`, snprint_initialized). */
export const InitStates = ['new', 'failed', 'udev-missing', 'udev-requested', 'ok', 'removed', 'partial', 'undef'] as const;
export type InitState = (typeof InitStates)[number];

/**
 * The configurator action last taken on a map (configure.h `enum actions`). Only reject, rename,
 * reload, create and switchpg print a word (`%A`); the others print nothing. multipathd keeps the
 * action of the last domap(), so a map it created still says "create" (see the show maps json
 * sample), which also makes `show topology` prefix the map line with "create: ".
 */
export const MapActions = ['undef', 'nothing', 'reject', 'reload', 'switchpg', 'rename', 'create', 'resize', 'forcerename', 'dry-run', 'impossible'] as const;
export type MapAction = (typeof MapActions)[number];

/** SCSI address of a path (sg_id). */
export interface Hcil {
  host: number;
  channel: number;
  target: number;
  /** The Linux LUN number (u64 in the kernel; kept below 2^53 here). */
  lun: number;
}

export interface MpathPath {
  /** Kernel name ("sda"); "" prints as "-". */
  dev: string;
  /** "major:minor" ("8:0"). */
  devT: string;
  /** null when multipathd has no SCSI address for the path (prints "#:#:#:#"). */
  hcil: Hcil | null;
  /** The path's WWID as multipathd derived it (uid_attribute), e.g. "360014056001405c0ffee000000000000". */
  wwid: string;
  dmState: PathDmState;
  checkerState: CheckerState;
  devState: DevState;
  /** Path priority; -1 when undefined. */
  priority: number;
  /** Checker name (`%c`), e.g. "tur". */
  checkerName: string;
  /** Seconds left until the next check (pp->tick) ... */
  checkerTick: number;
  /** ... out of the current check interval (pp->checkint); drives the `next_check` bar. */
  checkerInterval: number;
  vendor: string;
  product: string;
  revision: string;
  serial: string;
  /** Size in 512-byte sectors. */
  sizeSectors: number;
  /** FC attributes; null prints "[undef]" (every non-FC transport, as in the lab). */
  hostWwnn: string | null;
  hostWwpn: string | null;
  targetWwnn: string | null;
  targetWwpn: string | null;
  /** Host adapter PCI slot; null prints "[undef]". */
  hostAdapter: string | null;
  marginal: boolean;
  /** pp->failcount (`%0`). */
  failures: number;
  /** Bus protocol name (`%P`), e.g. "scsi:sas", "scsi:fcp", "scsi:unspec". */
  protocol: string;
  initState: InitState;
  /** VPD page data (`%g`); null prints "[undef]". */
  vpdData: string | null;
}

export type FailbackPolicy =
  | { mode: 'immediate' }
  | { mode: 'followover' }
  | { mode: 'manual' }
  | { mode: 'undef' }
  /** failback N seconds; `tick` counts down while a deferred failback is pending (0 = none pending). */
  | { mode: 'deferred'; seconds: number; tick: number };

/** no_path_retry: "fail" prints off, "queue" prints on, "undef" prints "-", a number N prints "N chk"/"T sec"/"off". */
export type NoPathRetry = 'fail' | 'queue' | 'undef' | number;

export interface MpathPathGroup {
  priority: number;
  status: GroupState;
  marginal: boolean;
  /** Member paths, by `dev`, in dm table order. */
  paths: string[];
}

export interface MpathMapStats {
  pathFaults: number;
  switchGroup: number;
  mapLoads: number;
  totalQueueingTime: number;
  queueingTimeouts: number;
  mapFailures: number;
}

export interface MpathMap {
  /** The map's alias ("mpatha"); null when it has none and is named by its WWID. */
  alias: string | null;
  /** The map WWID, which multipathd prints as `uuid` (without the "mpath-" dm uuid prefix). */
  wwid: string;
  /** Device-mapper info; null when multipathd has none ("undef" for sysfs, write_prot, dm-st). */
  dm: { minor: number; readOnly: boolean; suspended: boolean } | null;
  /** Size in 512-byte sectors. */
  sizeSectors: number;
  /** dm table features, e.g. "1 queue_if_no_path". */
  features: string;
  /** dm table hardware handler, e.g. "1 alua". */
  hwhandler: string;
  /** Path selector of the map (every group prints the map's selector), e.g. "service-time 0". */
  selector: string;
  failback: FailbackPolicy;
  noPathRetry: NoPathRetry;
  /** Seconds of queueing left once all paths failed (mpp->retry_tick). */
  retryTick: number;
  action: MapAction;
  stats: MpathMapStats;
  pathGroups: MpathPathGroup[];
  /** Persistent reservation bookkeeping (0.9.4 `getprkey`/`getprstatus`). Key as "0x" + lowercase hex, null = none. */
  reservationKey: string | null;
  /** The key was set with the APTPL flag (`setprkey ... key 0x..:aptpl`). */
  reservationKeyAptpl: boolean;
  /** prflag: libmpathpersist registered the key through this map (`setprstatus`). */
  prRegistered: boolean;
}

export interface MpathTopology {
  /** Every map, in multipathd's mpvec order (`show maps` order). */
  maps: MpathMap[];
  /** Every path multipathd knows, in pathvec order (`show paths` order), orphans included. */
  paths: MpathPath[];
}

/** Defaults for a path; pass the fields that matter. */
export function makePath(fields: Partial<MpathPath> & Pick<MpathPath, 'dev' | 'devT'>): MpathPath {
  return {
    hcil: null,
    wwid: '',
    dmState: 'active',
    checkerState: 'ready',
    devState: 'running',
    priority: 1,
    checkerName: 'tur',
    checkerTick: 1,
    checkerInterval: 5,
    vendor: '',
    product: '',
    revision: '',
    serial: '',
    sizeSectors: 0,
    hostWwnn: null,
    hostWwpn: null,
    targetWwnn: null,
    targetWwpn: null,
    hostAdapter: null,
    marginal: false,
    failures: 0,
    protocol: 'scsi:unspec',
    initState: 'ok',
    vpdData: null,
    ...fields,
  };
}

/** Defaults for a map; pass the fields that matter. */
export function makeMap(fields: Partial<MpathMap> & Pick<MpathMap, 'wwid'>): MpathMap {
  return {
    alias: null,
    dm: null,
    sizeSectors: 0,
    features: '0',
    hwhandler: '0',
    selector: 'service-time 0',
    failback: { mode: 'manual' },
    noPathRetry: 'undef',
    retryTick: 0,
    action: 'undef',
    stats: { pathFaults: 0, switchGroup: 0, mapLoads: 0, totalQueueingTime: 0, queueingTimeouts: 0, mapFailures: 0 },
    pathGroups: [],
    reservationKey: null,
    reservationKeyAptpl: false,
    prRegistered: false,
    ...fields,
  };
}

/** The name multipathd shows for a map: its alias, else its WWID (snprint_name). */
export function mapName(map: MpathMap): string {
  return map.alias ?? map.wwid;
}

export function findPath(topology: MpathTopology, dev: string): MpathPath | undefined {
  return topology.paths.find((p) => p.dev === dev);
}

/** A path by kernel name or by "major:minor", the two forms multipathd's fail/reinstate accept. */
export function findPathByDevOrDevT(topology: MpathTopology, name: string): MpathPath | undefined {
  return topology.paths.find((p) => p.dev === name) ?? topology.paths.find((p) => p.devT === name);
}

/** The map a path belongs to (pp->mpp); undefined for an orphan. */
export function mapOfPath(topology: MpathTopology, dev: string): MpathMap | undefined {
  return topology.maps.find((m) => m.pathGroups.some((g) => g.paths.includes(dev)));
}

/**
 * A map by the names multipathd's find_mp_by_str accepts: "dm-N" (its minor), else its alias.
 * (0.9.4 structs.c find_mp_by_str: sscanf "dm-%d" then find_mp_by_minor, otherwise find_mp_by_alias.)
 */
export function findMap(topology: MpathTopology, name: string): MpathMap | undefined {
  // sscanf("dm-%d") skips blanks and takes a sign after the prefix.
  const dm = /^dm-\s*([+-]?\d+)/.exec(name);
  if (dm?.[1] !== undefined) {
    const minor = Number(dm[1]);
    return topology.maps.find((m) => m.dm?.minor === minor);
  }
  if (name === '') return undefined;
  // multipathd always has an alias (the WWID without user_friendly_names); mapName() mirrors that.
  return topology.maps.find((m) => mapName(m) === name);
}

/** The member paths of a map, group by group, in table order. */
export function pathsOfMap(topology: MpathTopology, map: MpathMap): MpathPath[] {
  const out: MpathPath[] = [];
  for (const group of map.pathGroups) {
    for (const dev of group.paths) {
      const p = findPath(topology, dev);
      if (p) out.push(p);
    }
  }
  return out;
}

/** count_active_paths(): members whose checker state is up (ready) or ghost. */
export function activePathCount(topology: MpathTopology, map: MpathMap): number {
  return pathsOfMap(topology, map).filter((p) => p.checkerState === 'ready' || p.checkerState === 'ghost').length;
}

/**
 * Check the cross references a renderer relies on: unique path names, unique map names, every
 * group member exists, no path in two maps, counters are non-negative integers. Throws EncodeError
 * naming the first offending field.
 */
export function validateTopology(topology: MpathTopology): void {
  const structure = 'multipathd topology';
  const devs = new Set<string>();
  topology.paths.forEach((p, i) => {
    if (p.dev !== '' && devs.has(p.dev)) throw new EncodeError(structure, `paths[${i}].dev`, p.dev, 'is not unique');
    devs.add(p.dev);
    for (const [field, value] of [['checkerTick', p.checkerTick], ['checkerInterval', p.checkerInterval], ['sizeSectors', p.sizeSectors], ['failures', p.failures]] as const) {
      if (!Number.isSafeInteger(value) || value < 0) throw new EncodeError(structure, `paths[${i}].${field}`, value, 'must be a non-negative integer');
    }
    if (p.checkerInterval > 0 && p.checkerTick > p.checkerInterval) {
      throw new EncodeError(structure, `paths[${i}].checkerTick`, p.checkerTick, `exceeds checkerInterval ${p.checkerInterval}`);
    }
    if (p.hcil) {
      for (const [field, value] of Object.entries(p.hcil)) {
        if (!Number.isSafeInteger(value) || value < 0) throw new EncodeError(structure, `paths[${i}].hcil.${field}`, value, 'must be a non-negative integer');
      }
    }
  });
  const names = new Set<string>();
  const owner = new Map<string, string>();
  topology.maps.forEach((m, i) => {
    const name = mapName(m);
    if (names.has(name)) throw new EncodeError(structure, `maps[${i}].alias`, name, 'is not unique');
    names.add(name);
    if (m.reservationKey !== null && !/^0x[0-9a-f]{1,16}$/.test(m.reservationKey)) {
      throw new EncodeError(structure, `maps[${i}].reservationKey`, m.reservationKey, 'must be "0x" and 1-16 lowercase hex digits');
    }
    m.pathGroups.forEach((g, j) => {
      g.paths.forEach((dev, k) => {
        const field = `maps[${i}].pathGroups[${j}].paths[${k}]`;
        if (!devs.has(dev)) throw new EncodeError(structure, field, dev, 'names no path of the topology');
        const prev = owner.get(dev);
        if (prev !== undefined) throw new EncodeError(structure, field, dev, `is already a member of ${prev}`);
        owner.set(dev, name);
      });
    });
  });
}
