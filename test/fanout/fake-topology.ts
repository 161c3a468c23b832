// An in-memory, scriptable TopologySource for the guard and engine tests. The script changes the
// "truth" (what multipathd would report now); refresh() publishes it and emits the events the real
// topology would (its own pure diffTopology), so a test decides exactly when the engine learns of a
// change, as a poll would.

import { diffTopology } from '../../src/fanout/topology.js';
import type { MapInfo, PathInfo, TopologyEvent, TopologySource } from '../../src/fanout/types.js';

export interface PathSpec {
  readonly dev: string;
  /** SCSI host number (the initiator port); default 0. */
  readonly host?: number;
  readonly usable?: boolean;
}

export function makePath(spec: PathSpec): PathInfo {
  const usable = spec.usable ?? true;
  return {
    dev: spec.dev,
    devT: `8:${spec.dev.charCodeAt(spec.dev.length - 1) - 97 + 0}`,
    hcil: { host: spec.host ?? 0, channel: 0, target: 1, lun: 0 },
    dmState: usable ? 'active' : 'failed',
    checkerState: usable ? 'ready' : 'faulty',
    deviceState: 'running',
    usable,
  };
}

export function makeMap(name: string, wwid: string, paths: readonly PathSpec[], devT = '253:0'): MapInfo {
  return { name, wwid, devT, paths: paths.map(makePath), source: 'multipathd' };
}

export class FakeTopology implements TopologySource {
  #truth: MapInfo[];
  #published: MapInfo[] = [];
  readonly #listeners = new Set<(e: TopologyEvent) => void>();
  /** announceKey calls, in order. */
  readonly announced: { readonly wwid: string; readonly map: string; readonly key: bigint | null }[] = [];
  readonly events: TopologyEvent[] = [];
  refreshes = 0;
  finds = 0;
  freshFinds = 0;
  started = false;
  closed = false;
  /** Make announceKey reject (multipathd down). */
  failAnnounce = false;

  constructor(maps: readonly MapInfo[] = []) {
    this.#truth = [...maps];
  }

  // --- script -----------------------------------------------------------------------------------

  addMap(map: MapInfo): void {
    this.#truth = [...this.#truth.filter((m) => m.wwid !== map.wwid), map];
  }

  removeMap(wwid: string): void {
    this.#truth = this.#truth.filter((m) => m.wwid !== wwid);
  }

  #edit(wwid: string, f: (paths: readonly PathInfo[]) => PathInfo[]): void {
    this.#truth = this.#truth.map((m) => (m.wwid === wwid ? { ...m, paths: f(m.paths) } : m));
  }

  /** Checker says the path is up (ready) or down (faulty). */
  setUsable(wwid: string, dev: string, usable: boolean): void {
    this.#edit(wwid, (ps) => ps.map((p) => (p.dev === dev ? { ...p, usable, checkerState: usable ? 'ready' : 'faulty', dmState: usable ? 'active' : 'failed' } : p)));
  }

  addPath(wwid: string, spec: PathSpec): void {
    this.#edit(wwid, (ps) => [...ps.filter((p) => p.dev !== spec.dev), makePath(spec)]);
  }

  removePath(wwid: string, dev: string): void {
    this.#edit(wwid, (ps) => ps.filter((p) => p.dev !== dev));
  }

  truth(): readonly MapInfo[] {
    return this.#truth;
  }

  // --- TopologySource ------------------------------------------------------------------------------

  start(): void {
    this.started = true;
  }

  close(): void {
    this.closed = true;
  }

  async refresh(): Promise<readonly MapInfo[]> {
    this.refreshes++;
    const events = diffTopology(this.#published, this.#truth);
    this.#published = this.#truth;
    for (const e of events) {
      this.events.push(e);
      for (const l of [...this.#listeners]) l(e);
    }
    return this.#published;
  }

  maps(): readonly MapInfo[] {
    return this.#published;
  }

  async find(key: { readonly wwid?: string; readonly devT?: string; readonly name?: string }, fresh: boolean): Promise<MapInfo | null> {
    this.finds++;
    if (fresh) {
      this.freshFinds++;
      await this.refresh();
    }
    return (
      this.#published.find(
        (m) => (key.wwid !== undefined && m.wwid === key.wwid) || (key.devT !== undefined && key.devT !== '' && m.devT === key.devT) || (key.name !== undefined && m.name === key.name),
      ) ?? null
    );
  }

  onEvent(listener: (e: TopologyEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async announceKey(map: MapInfo, key: bigint | null): Promise<void> {
    if (this.failAnnounce) throw new Error('multipathd is not answering');
    this.announced.push({ wwid: map.wwid, map: map.name, key });
  }

  listenerCount(): number {
    return this.#listeners.size;
  }
}
