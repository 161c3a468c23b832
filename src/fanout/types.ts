// Shared vocabulary of the multipath fan-out engine: what a map and its paths look like, the seams
// through which commands reach one path (one I_T nexus) and a map is suspended, and the results a
// fan-out reports. No I/O here.

import type { ScsiOutcome } from '../scsi/types.js';

/** multipathd's view of one path of a map (`show paths raw format`), or sysfs's when multipathd is down. */
export interface PathInfo {
  /** Kernel device name, "sda" (the simulated SAN uses the same names). */
  readonly dev: string;
  /** "major:minor" of the path's block device ("" when unknown). */
  readonly devT: string;
  /** SCSI address; `host` identifies the initiator port (ALL_TG_PT registrations are per host). */
  readonly hcil: { readonly host: number; readonly channel: number; readonly target: number; readonly lun: number };
  /** dm state of the path in the map: "active" | "failed" | ... ("undef" when unknown). */
  readonly dmState: string;
  /** multipathd path checker state: "ready" | "ghost" | "faulty" | "shaky" | "offline" | "removed" | ... */
  readonly checkerState: string;
  /** SCSI device state from sysfs ("running", "offline", ...), when known. */
  readonly deviceState?: string;
  /** Usable for PR commands: checker ready or ghost (libmpathpersist's rule) and not removed/offline. */
  readonly usable: boolean;
}

export interface MapInfo {
  /** Map name (alias), "mpatha". */
  readonly name: string;
  /** The LU's WWID (dm uuid without the "mpath-" prefix). The guard keys its state by it. */
  readonly wwid: string;
  /** "major:minor" of the dm device ("" when unknown). */
  readonly devT: string;
  readonly paths: readonly PathInfo[];
  /** Where this view came from. */
  readonly source: 'multipathd' | 'sysfs';
}

/** libmpathpersist's rule for a usable path: checker `ready` (UP) or `ghost` (standby ALUA). */
export function isUsableCheckerState(state: string): boolean {
  return state === 'ready' || state === 'ghost';
}

/** Executes one CDB on one path of a map (its own I_T nexus). */
export interface PathIo {
  /**
   * Resolves with the outcome as a value for every SCSI or transport result; rejects only when the
   * command could not be issued at all (bad arguments, the device cannot be opened).
   */
  exec(map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<ScsiOutcome>;
}

/** Suspends and resumes a map without flushing (dm suspend --noflush), around moving a reservation. */
export interface MapControl {
  suspend(map: MapInfo): Promise<void>;
  resume(map: MapInfo): Promise<void>;
}

/** One command prmux sent down one path while serving a guest command or repairing. */
export interface PathCommand {
  readonly path: string;
  /** The CDB as sent (hex), e.g. with SPEC_I_PT cleared on the copies. */
  readonly cdb: string;
  /** Why it was sent: the guest's command, a retry, a failover, part of moving a reservation, a repair. */
  readonly role: 'primary' | 'retry-register-and-ignore' | 'failover' | 'recheck' | 'preempt-self' | 'release' | 're-register' | 'read-reservation' | 'repair' | 'verify';
  readonly outcome: ScsiOutcome;
  readonly durationMs: number;
}

export interface FanoutResult {
  /** What the guest gets: the target's own answer from the path that decided the outcome. */
  readonly outcome: ScsiOutcome;
  /** The path whose answer is `outcome` (null when no path could be tried). */
  readonly decidedBy: string | null;
  /** Everything sent, in completion order. */
  readonly commands: readonly PathCommand[];
  /** Paths that were down during a REGISTER that succeeded elsewhere: the guard registers them on return. */
  readonly pendingPaths: readonly string[];
}

/** A change the topology source noticed between two refreshes. */
export type TopologyEvent =
  | { readonly kind: 'map-added' | 'map-removed'; readonly map: MapInfo }
  | { readonly kind: 'path-added' | 'path-removed' | 'path-usable' | 'path-unusable'; readonly map: MapInfo; readonly path: PathInfo }
  | { readonly kind: 'source-changed'; readonly source: 'multipathd' | 'sysfs'; readonly reason: string };

/** Where maps and paths come from: multipathd's socket, sysfs as the fallback. */
export interface TopologySource {
  /** Start polling (interval set at construction). */
  start(): void;
  close(): void;
  /** Query now (multipathd, else sysfs) and emit the events for what changed. */
  refresh(): Promise<readonly MapInfo[]>;
  /** The maps as of the last refresh. */
  maps(): readonly MapInfo[];
  /** The map with this WWID, dm dev_t ("253:0") or name; `fresh` refreshes first (done before each PR OUT). */
  find(key: { readonly wwid?: string; readonly devT?: string; readonly name?: string }, fresh: boolean): Promise<MapInfo | null>;
  /** Subscribe to changes; returns the unsubscribe function. */
  onEvent(listener: (e: TopologyEvent) => void): () => void;
  /** Tell multipathd the map's key and registered flag (setprkey/unsetprkey, setprstatus/unsetprstatus); no-op on sysfs. */
  announceKey(map: MapInfo, key: bigint | null): Promise<void>;
}
