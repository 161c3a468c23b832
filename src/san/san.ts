// The simulated multipath SAN: LUNs (each an SPC-4 PR device server), hosts with paths (each an
// I_T nexus), a multipathd view per host, and fault injection. No sockets or files here: the
// server (san-server.ts) wires this to Unix sockets and the state directory.
//
// Two views are kept apart, as on a real host: the transport (what the target sees: path up/down,
// latency, flaky, hung) and multipathd's view (dm and checker states). `fail path` changes only
// multipathd's view; `ctl path down` breaks the transport, and the host's path checker notices it
// within its polling interval.

import { PrDeviceServer, type PersistentPrState } from '../scsi/model/device-server.js';
import { HostStatus, type AscAscq } from '../scsi/constants.js';
import { encodePrOutCdb } from '../scsi/cdb.js';
import { encodePrOutParams } from '../scsi/prout-params.js';
import { transportFailure } from '../scsi/outcome.js';
import { formatTransportId } from '../scsi/transport-id.js';
import type { ScsiOutcome, TransportId } from '../scsi/types.js';
import { answerCommandLine } from '../mpath/multipathd-cli.js';
import { makeMap, makePath, type MpathPath, type MpathTopology } from '../mpath/topology-model.js';
import { PrmuxError, ErrorCode } from '../errors.js';
import type { SanConfig } from './config.js';

export interface SanPath {
  readonly host: string;
  readonly dev: string;
  readonly lun: number;
  /** Path index within the host for this LUN (0-based): SCSI host number and initiator port. */
  readonly index: number;
  readonly devT: string;
  readonly hcil: { host: number; channel: number; target: number; lun: number };
  readonly initiator: TransportId;
  relativeTargetPortId: number;
  transport: 'up' | 'down';
  latencyMs: number;
  /** Probability (0..1) that a command fails at the transport. */
  flaky: number;
  /** Commands never complete at the target: the initiator times them out. */
  hung: boolean;
  /** The device is gone (hot-removed); the target dropped the nexus. */
  removed: boolean;
}

export interface SanMap {
  readonly host: string;
  readonly alias: string;
  readonly lun: number;
  suspended: boolean;
  /** Commands waiting for a resume. */
  readonly waiters: Set<() => void>;
  /** Round-robin position of the path selector. */
  next: number;
}

interface SanHost {
  readonly name: string;
  multipathd: 'running' | 'stopped';
  topology: MpathTopology;
  checkerTimer: ReturnType<typeof setInterval> | null;
}

export interface SanEvents {
  /** APTPL state of a LUN changed: persist it (null: nothing to persist). */
  readonly persist?: (wwid: string, state: PersistentPrState | null) => void;
  /** Something a log should show. */
  readonly log?: (line: string) => void;
  /** A host's topology (files, rtpis) changed. */
  readonly topologyChanged?: (host: string) => void;
  /** multipathd of a host was stopped or started. */
  readonly multipathdChanged?: (host: string, running: boolean) => void;
}

export interface ExecRequest {
  readonly host: string;
  /** "sda" for a path device, "mapper/mpatha" for a map. */
  readonly dev: string;
  readonly cdb: Uint8Array;
  readonly data: Uint8Array;
  readonly timeoutMs: number;
}

export interface ExecResult {
  readonly outcome: ScsiOutcome;
  /** The path that carried the command. */
  readonly path: string | null;
}

const ALIASES = 'abcdefghijklmnopqrstuvwxyz';

function devName(n: number): string {
  // sda..sdz, sdaa.. as the kernel names them.
  let name = '';
  let x = n;
  do {
    name = ALIASES[x % 26]! + name;
    x = Math.floor(x / 26) - 1;
  } while (x >= 0);
  return 'sd' + name;
}

export class SimulatedSan {
  readonly config: SanConfig;
  readonly luns: PrDeviceServer[];
  readonly paths: SanPath[] = [];
  readonly maps: SanMap[] = [];
  private readonly hosts = new Map<string, SanHost>();
  private readonly events: SanEvents;
  private readonly random: () => number;
  private lastPersisted: string[] = [];
  private closed = false;
  private readonly pending = new Set<{ resolve: (r: ExecResult) => void; timer: ReturnType<typeof setTimeout> | undefined }>();

  constructor(config: SanConfig, events: SanEvents = {}, options: { random?: () => number; persisted?: ReadonlyMap<string, PersistentPrState> } = {}) {
    this.config = config;
    this.events = events;
    this.random = options.random ?? Math.random;
    this.luns = config.luns.map((l) => new PrDeviceServer({ personality: l.personality, identity: { blocks: l.sizeSectors, naa: l.wwid.slice(1) } }));
    let rtpi = 0;
    config.hosts.forEach((h, hi) => {
      let devIndex = 0;
      config.luns.forEach((_l, li) => {
        h.paths.forEach((p, pi) => {
          const dev = devName(devIndex);
          const path: SanPath = {
            host: h.name,
            dev,
            lun: li,
            index: pi,
            devT: `8:${devIndex * 16}`,
            hcil: { host: pi, channel: 0, target: 1, lun: li },
            // One initiator port per host HBA port: host1 path N = 0x5001405f0000000N as in the lab.
            initiator: { protocol: 'sas', sasAddress: 0x5001405f00000000n + BigInt(hi * 0x100 + pi + 1) },
            relativeTargetPortId: 0,
            transport: 'up',
            latencyMs: p.latencyMs,
            flaky: 0,
            hung: false,
            removed: false,
          };
          devIndex++;
          this.paths.push(path);
        });
      });
    });
    // Relative target port ids per LUN, in host then path order (host1's paths get 1..N as in the lab).
    for (let li = 0; li < this.luns.length; li++) {
      rtpi = 0;
      for (const p of this.paths.filter((x) => x.lun === li)) {
        p.relativeTargetPortId = ++rtpi;
        this.luns[li]!.addNexus({ id: nexusId(p), initiator: p.initiator, relativeTargetPortId: p.relativeTargetPortId });
      }
      const saved = options.persisted?.get(config.luns[li]!.wwid);
      if (saved) this.luns[li]!.importPersistent(saved);
    }
    this.lastPersisted = this.luns.map((l) => JSON.stringify(l.exportPersistent()));
    for (const h of config.hosts) {
      config.luns.forEach((_l, li) => this.maps.push({ host: h.name, alias: 'mpath' + ALIASES[li]!, lun: li, suspended: false, waiters: new Set(), next: 0 }));
      this.hosts.set(h.name, { name: h.name, multipathd: 'running', topology: this.buildTopology(h.name), checkerTimer: null });
    }
  }

  /** Start every host's path checker. */
  start(): void {
    for (const h of this.hosts.values()) this.startChecker(h);
  }

  /** Stop timers; commands in flight complete with a transport failure. */
  close(): void {
    this.closed = true;
    for (const h of this.hosts.values()) this.stopChecker(h);
    for (const p of [...this.pending]) {
      p.resolve({ outcome: transportFailure(HostStatus.DID_NO_CONNECT, 'the simulated SAN is shutting down'), path: null });
    }
    this.pending.clear();
    for (const m of this.maps) for (const w of m.waiters) w();
  }

  hostNames(): string[] {
    return [...this.hosts.keys()];
  }

  topologyOf(host: string): MpathTopology {
    return this.host(host).topology;
  }

  isMultipathdRunning(host: string): boolean {
    return this.host(host).multipathd === 'running';
  }

  // ---- multipathd ------------------------------------------------------------------------------

  /**
   * Answer one multipathd CLI command of a host, as multipathd 0.9.4 does, and carry out what it
   * implies on the host: a reinstated or added path of a map with PR status set gets the map's key
   * registered (REGISTER AND IGNORE EXISTING KEY) before it is active again.
   */
  async multipathdCommand(host: string, line: string): Promise<string> {
    const h = this.host(host);
    const trimmed = line.trim();
    const words = trimmed.split(/\s+/);
    const verb = `${words[0] ?? ''} ${words[1] ?? ''}`;
    if ((verb === 'reinstate path' || verb === 'add path') && words[2]) {
      const path = this.findPath(host, words[2].replace(/^\/dev\//, ''));
      if (verb === 'add path' && path && !path.removed && !h.topology.paths.some((p) => p.dev === path.dev)) {
        await this.registerReturningPath(h, path);
        this.addToTopology(h, path);
        return 'ok\n';
      }
      if (verb === 'reinstate path' && path) {
        const tp = h.topology.paths.find((p) => p.dev === path.dev);
        if (tp && tp.dmState === 'failed') await this.registerReturningPath(h, path);
      }
    }
    const { reply, topology } = answerCommandLine(h.topology, line);
    h.topology = topology;
    return reply;
  }

  /** multipathd's own before-reinstate registration (0.9.4 with a key set through setprkey). */
  private async registerReturningPath(h: SanHost, path: SanPath): Promise<void> {
    const map = h.topology.maps.find((m) => m.wwid === this.config.luns[path.lun]!.wwid);
    if (!map || !map.prRegistered || !map.reservationKey) return;
    const key = BigInt(map.reservationKey);
    const cdb = encodePrOutCdb({ serviceAction: 0x06, parameterListLength: 24 });
    const params = encodePrOutParams({ key: 0n, serviceActionKey: key, specIPt: false, allTgPt: false, aptpl: map.reservationKeyAptpl, transportIds: [] });
    const r = await this.execPath(path, cdb, params, 30000);
    this.events.log?.(`${h.name}: multipathd registered key ${map.reservationKey} on returning path ${path.dev}: ${r.kind}`);
  }

  private startChecker(h: SanHost): void {
    if (h.checkerTimer || this.closed) return;
    h.checkerTimer = setInterval(() => void this.checkPaths(h), this.config.checkerIntervalMs);
    h.checkerTimer.unref?.();
  }

  private stopChecker(h: SanHost): void {
    if (h.checkerTimer) clearInterval(h.checkerTimer);
    h.checkerTimer = null;
  }

  /** One pass of the host's path checker (tur): down transports fail, restored ones come back. */
  async checkPaths(h: SanHost): Promise<void> {
    if (h.multipathd !== 'running' || this.closed) return;
    for (const tp of [...h.topology.paths]) {
      const path = this.findPath(h.name, tp.dev);
      if (!path) continue;
      const up = path.transport === 'up' && !path.removed && !path.hung;
      if (!up && tp.checkerState !== 'faulty') {
        this.patchPath(h, tp.dev, { dmState: 'failed', checkerState: 'faulty' }, true);
        this.events.log?.(`${h.name}: checker: ${tp.dev} is down`);
      } else if (up && tp.dmState === 'failed') {
        await this.registerReturningPath(h, path);
        this.patchPath(h, tp.dev, { dmState: 'active', checkerState: 'ready' }, false);
        this.events.log?.(`${h.name}: checker: ${tp.dev} reinstated`);
      }
    }
  }

  private patchPath(h: SanHost, dev: string, patch: Partial<MpathPath>, countFault: boolean): void {
    h.topology = {
      ...h.topology,
      paths: h.topology.paths.map((p) => (p.dev === dev ? { ...p, ...patch } : p)),
      maps: h.topology.maps.map((m) =>
        countFault && m.pathGroups.some((g) => g.paths.includes(dev)) ? { ...m, stats: { ...m.stats, pathFaults: m.stats.pathFaults + 1 } } : m,
      ),
    };
  }

  // ---- command execution -----------------------------------------------------------------------

  /** Execute a CDB on a path device, or on a map the way dm-multipath does (one path per command). */
  async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.closed) return { outcome: transportFailure(HostStatus.DID_NO_CONNECT, 'the simulated SAN is shutting down'), path: null };
    const mapName = req.dev.startsWith('mapper/') ? req.dev.slice('mapper/'.length) : null;
    if (mapName === null) {
      const path = this.findPath(req.host, req.dev);
      if (!path) throw new PrmuxError(ErrorCode.SAN, `Cannot execute: host ${req.host} has no device ${req.dev}`);
      return { outcome: await this.execPath(path, req.cdb, req.data, req.timeoutMs), path: path.dev };
    }
    const map = this.maps.find((m) => m.host === req.host && m.alias === mapName);
    if (!map) throw new PrmuxError(ErrorCode.SAN, `Cannot execute: host ${req.host} has no map ${mapName}`);
    if (map.suspended) {
      const resumed = await this.waitFor(map, req.timeoutMs);
      if (!resumed) return { outcome: transportFailure(HostStatus.DID_TIME_OUT, `map ${mapName} stayed suspended`), path: null };
    }
    const h = this.host(req.host);
    const active = h.topology.paths
      .filter((p) => p.dmState === 'active' && this.findPath(req.host, p.dev)?.lun === map.lun)
      .map((p) => this.findPath(req.host, p.dev)!)
      .filter((p) => !p.removed);
    if (active.length === 0) return { outcome: transportFailure(HostStatus.DID_NO_CONNECT, `map ${mapName} has no active path`, { errno: 107 }), path: null };
    const path = active[map.next++ % active.length]!;
    return { outcome: await this.execPath(path, req.cdb, req.data, req.timeoutMs), path: path.dev };
  }

  private waitFor(map: SanMap, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        map.waiters.delete(done);
        resolve(!map.suspended);
      };
      const timer = setTimeout(done, timeoutMs);
      map.waiters.add(done);
    });
  }

  private execPath(path: SanPath, cdb: Uint8Array, data: Uint8Array, timeoutMs: number): Promise<ScsiOutcome> {
    return new Promise((resolve) => {
      const entry: { resolve: (r: ExecResult) => void; timer: ReturnType<typeof setTimeout> | undefined } = { resolve: () => {}, timer: undefined };
      const settle = (o: ScsiOutcome): void => {
        this.pending.delete(entry);
        if (entry.timer) clearTimeout(entry.timer);
        resolve(o);
      };
      entry.resolve = (r) => settle(r.outcome);
      const run = (): void => {
        entry.timer = undefined;
        if (path.removed) return settle(transportFailure(HostStatus.DID_NO_CONNECT, `${path.dev} was removed`, { errno: 6 }));
        if (path.transport === 'down') return settle(transportFailure(HostStatus.DID_TRANSPORT_DISRUPTED, `${path.dev}: transport down`));
        if (path.flaky > 0 && this.random() < path.flaky) return settle(transportFailure(HostStatus.DID_TRANSPORT_DISRUPTED, `${path.dev}: flaky transport dropped the command`));
        const outcome = this.luns[path.lun]!.execute(nexusId(path), cdb, data);
        this.afterCommand(path.lun);
        settle(outcome);
      };
      // A hung target never answers: the initiator's command timer fires (DID_TIME_OUT).
      entry.timer = path.hung
        ? setTimeout(() => settle(transportFailure(HostStatus.DID_TIME_OUT, `${path.dev}: command timed out after ${timeoutMs} ms`)), timeoutMs)
        : setTimeout(run, path.latencyMs);
      this.pending.add(entry);
    });
  }

  private afterCommand(lun: number): void {
    const state = this.luns[lun]!.exportPersistent();
    const json = JSON.stringify(state);
    if (json !== this.lastPersisted[lun]) {
      this.lastPersisted[lun] = json;
      this.events.persist?.(this.config.luns[lun]!.wwid, state);
    }
  }

  // ---- fault injection (prmux san ctl) -----------------------------------------------------------

  ctl(words: readonly string[]): unknown {
    const [noun, verb, ...rest] = words;
    const need = (n: number, usage: string) => {
      if (rest.length < n) throw new PrmuxError(ErrorCode.SAN, `Cannot run ctl ${words.join(' ')}: usage: ${usage}`);
    };
    switch (`${noun ?? ''} ${verb ?? ''}`) {
      case 'path down':
      case 'path up': {
        need(2, `path ${verb} HOST DEV`);
        this.pathOf(rest[0]!, rest[1]!).transport = verb === 'down' ? 'down' : 'up';
        return 'ok';
      }
      case 'path latency': {
        need(3, 'path latency HOST DEV MS');
        this.pathOf(rest[0]!, rest[1]!).latencyMs = numberArg(rest[2]!, 0, 600000, 'latency');
        return 'ok';
      }
      case 'path flaky': {
        need(3, 'path flaky HOST DEV PROBABILITY');
        this.pathOf(rest[0]!, rest[1]!).flaky = numberArg(rest[2]!, 0, 1, 'probability');
        return 'ok';
      }
      case 'path hang':
      case 'path unhang': {
        need(2, `path ${verb} HOST DEV`);
        this.pathOf(rest[0]!, rest[1]!).hung = verb === 'hang';
        return 'ok';
      }
      case 'path ua': {
        need(3, 'path ua HOST DEV ASC/ASCQ (hex, e.g. 29/00)');
        const m = /^([0-9a-f]{1,2})\/([0-9a-f]{1,2})$/i.exec(rest[2]!);
        if (!m) throw new PrmuxError(ErrorCode.SAN, `Cannot queue unit attention: ${rest[2]} is not ASC/ASCQ in hex`);
        const path = this.pathOf(rest[0]!, rest[1]!);
        const ua: AscAscq = { asc: parseInt(m[1]!, 16), ascq: parseInt(m[2]!, 16) };
        this.luns[path.lun]!.queueUnitAttention(nexusId(path), ua);
        return 'ok';
      }
      case 'path remove': {
        need(2, 'path remove HOST DEV');
        const path = this.pathOf(rest[0]!, rest[1]!);
        if (path.removed) throw new PrmuxError(ErrorCode.SAN, `Cannot remove ${path.host}/${path.dev}: already removed`);
        path.removed = true;
        // The target drops the nexus and its registrations (as LIO does on a LUN unlink).
        this.luns[path.lun]!.removeNexus(nexusId(path));
        const h = this.host(path.host);
        h.topology = answerCommandLine(h.topology, `del path ${path.dev}`).topology;
        this.events.topologyChanged?.(path.host);
        return 'ok';
      }
      case 'path add': {
        need(2, 'path add HOST DEV');
        const path = this.pathOf(rest[0]!, rest[1]!);
        if (!path.removed) throw new PrmuxError(ErrorCode.SAN, `Cannot add ${path.host}/${path.dev}: it is present`);
        const lun = this.luns[path.lun]!;
        // A re-added path comes back with a new relative target port id.
        const used = this.paths.filter((p) => p.lun === path.lun).map((p) => p.relativeTargetPortId);
        path.relativeTargetPortId = Math.max(...used) + 1;
        path.removed = false;
        lun.addNexus({ id: nexusId(path), initiator: path.initiator, relativeTargetPortId: path.relativeTargetPortId });
        const h = this.host(path.host);
        // udev tells multipathd; it registers the key first where PR status is set.
        if (h.multipathd === 'running') {
          void this.registerReturningPath(h, path).then(() => {
            this.addToTopology(h, path);
            this.events.topologyChanged?.(path.host);
          });
        } else {
          this.events.topologyChanged?.(path.host);
        }
        return 'ok';
      }
      case 'map suspend':
      case 'map resume': {
        need(2, `map ${verb} HOST MAP`);
        const map = this.maps.find((m) => m.host === rest[0] && m.alias === rest[1]);
        if (!map) throw new PrmuxError(ErrorCode.SAN, `Cannot ${verb} map: host ${rest[0]} has no map ${rest[1]}`);
        map.suspended = verb === 'suspend';
        if (!map.suspended) for (const w of [...map.waiters]) w();
        const h = this.host(map.host);
        h.topology = {
          ...h.topology,
          maps: h.topology.maps.map((m) => (m.alias === map.alias && m.dm ? { ...m, dm: { ...m.dm, suspended: map.suspended } } : m)),
        };
        return 'ok';
      }
      case 'lun power-cycle': {
        need(1, 'lun power-cycle WWID|INDEX');
        const index = this.lunIndex(rest[0]!);
        this.luns[index]!.powerCycle();
        this.afterCommand(index);
        return 'ok';
      }
      case 'multipathd stop':
      case 'multipathd start': {
        need(1, `multipathd ${verb} HOST`);
        const h = this.host(rest[0]!);
        h.multipathd = verb === 'stop' ? 'stopped' : 'running';
        if (verb === 'stop') this.stopChecker(h);
        else this.startChecker(h);
        this.events.multipathdChanged?.(h.name, h.multipathd === 'running');
        return 'ok';
      }
      case 'status ':
      case 'status --json':
        return this.status();
      default:
        throw new PrmuxError(ErrorCode.SAN, `Cannot run ctl: unknown command "${words.join(' ')}"`);
    }
  }

  /** The whole state, for `prmux san ctl status --json`. */
  status(): unknown {
    return {
      luns: this.luns.map((lun, i) => {
        const s = lun.snapshot();
        return {
          index: i,
          wwid: this.config.luns[i]!.wwid,
          personality: s.personality,
          generation: s.generation,
          aptplActive: s.aptplActive,
          reservation: s.reservation,
          registrations: s.registrations,
          unitAttentions: s.unitAttentions,
        };
      }),
      hosts: [...this.hosts.values()].map((h) => ({
        name: h.name,
        multipathd: h.multipathd,
        maps: this.maps
          .filter((m) => m.host === h.name)
          .map((m) => {
            const tm = h.topology.maps.find((x) => x.alias === m.alias);
            return {
              name: m.alias,
              wwid: this.config.luns[m.lun]!.wwid,
              suspended: m.suspended,
              prKey: tm?.reservationKey ?? null,
              prStatus: tm?.prRegistered ?? false,
            };
          }),
        paths: this.paths
          .filter((p) => p.host === h.name)
          .map((p) => {
            const tp = h.topology.paths.find((x) => x.dev === p.dev);
            return {
              dev: p.dev,
              map: 'mpath' + ALIASES[p.lun]!,
              hcil: `${p.hcil.host}:${p.hcil.channel}:${p.hcil.target}:${p.hcil.lun}`,
              devT: p.devT,
              initiator: formatTransportId(p.initiator),
              relativeTargetPortId: p.relativeTargetPortId,
              nexus: nexusId(p),
              transport: p.transport,
              latencyMs: p.latencyMs,
              flaky: p.flaky,
              hung: p.hung,
              removed: p.removed,
              multipathd: tp ? { dmState: tp.dmState, checkerState: tp.checkerState, devState: tp.devState } : null,
            };
          }),
      })),
    };
  }

  // ---- helpers -----------------------------------------------------------------------------------

  private host(name: string): SanHost {
    const h = this.hosts.get(name);
    if (!h) throw new PrmuxError(ErrorCode.SAN, `Cannot find host ${name}: hosts are ${[...this.hosts.keys()].join(', ')}`);
    return h;
  }

  findPath(host: string, dev: string): SanPath | undefined {
    return this.paths.find((p) => p.host === host && p.dev === dev);
  }

  private pathOf(host: string, dev: string): SanPath {
    this.host(host);
    const p = this.findPath(host, dev.replace(/^\/dev\//, ''));
    if (!p) throw new PrmuxError(ErrorCode.SAN, `Cannot find path ${dev} on ${host}`);
    return p;
  }

  private lunIndex(arg: string): number {
    const byWwid = this.config.luns.findIndex((l) => l.wwid === arg);
    if (byWwid >= 0) return byWwid;
    const n = Number(arg);
    if (Number.isInteger(n) && n >= 0 && n < this.luns.length) return n;
    throw new PrmuxError(ErrorCode.SAN, `Cannot find LUN ${arg}: give its WWID or index 0..${this.luns.length - 1}`);
  }

  private mpathPath(p: SanPath): MpathPath {
    const lun = this.config.luns[p.lun]!;
    return makePath({
      dev: p.dev,
      devT: p.devT,
      hcil: p.hcil,
      wwid: lun.wwid,
      priority: 50,
      checkerName: 'tur',
      checkerTick: 1,
      checkerInterval: Math.max(1, Math.round(this.config.checkerIntervalMs / 1000)),
      vendor: 'LIO-ORG',
      product: 'FILEIO',
      revision: '4.0',
      serial: lun.wwid.slice(8),
      sizeSectors: lun.sizeSectors,
      protocol: 'scsi:sas',
      dmState: p.transport === 'up' ? 'active' : 'failed',
      checkerState: p.transport === 'up' ? 'ready' : 'faulty',
    });
  }

  private buildTopology(host: string): MpathTopology {
    const paths = this.paths.filter((p) => p.host === host && !p.removed);
    const maps = this.maps
      .filter((m) => m.host === host)
      .map((m, i) => {
        const lun = this.config.luns[m.lun]!;
        return makeMap({
          alias: m.alias,
          wwid: lun.wwid,
          dm: { minor: i, readOnly: false, suspended: false },
          sizeSectors: lun.sizeSectors,
          features: '1 queue_if_no_path',
          hwhandler: '1 alua',
          selector: 'service-time 0',
          failback: { mode: 'immediate' },
          noPathRetry: 12,
          action: 'create',
          stats: { pathFaults: 0, switchGroup: 0, mapLoads: 1, totalQueueingTime: 0, queueingTimeouts: 0, mapFailures: 0 },
          pathGroups: [{ priority: 50, status: 'active', marginal: false, paths: paths.filter((p) => p.lun === m.lun).map((p) => p.dev) }],
        });
      });
    return { maps, paths: paths.map((p) => this.mpathPath(p)) };
  }

  private addToTopology(h: SanHost, path: SanPath): void {
    if (h.topology.paths.some((p) => p.dev === path.dev)) return;
    const wwid = this.config.luns[path.lun]!.wwid;
    h.topology = {
      paths: [...h.topology.paths, this.mpathPath(path)],
      maps: h.topology.maps.map((m) => {
        if (m.wwid !== wwid) return m;
        const groups = m.pathGroups.length > 0 ? m.pathGroups : [{ priority: 50, status: 'active' as const, marginal: false, paths: [] }];
        return { ...m, pathGroups: groups.map((g, i) => (i === 0 ? { ...g, paths: [...g.paths, path.dev] } : g)) };
      }),
    };
  }
}

export function nexusId(p: Pick<SanPath, 'host' | 'dev'>): string {
  return `${p.host}/${p.dev}`;
}

function numberArg(text: string, min: number, max: number, what: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max) throw new PrmuxError(ErrorCode.SAN, `Cannot set ${what}: ${text} is not a number from ${min} to ${max}`);
  return n;
}

