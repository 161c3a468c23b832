// Test seams for the fan-out engine: one logical unit (the PR device-server model, 'lio' or 'spc4')
// shared by one or more cluster nodes. Each node sees the LU as a dm-multipath map whose paths are
// its SCSI hosts (initiator ports) x the target ports: path = its own I_T nexus in the model.
//
// A node provides the PathIo, MapControl and recheck the fan-out is given, with faults scripted per
// path (down, down after k commands, flaky, reply lost after execution, injected conflicts, a
// latency gate the test opens itself: no real timers), and records every event (commands with
// what was sent, rechecks, suspend/resume) in order, so tests check what went where.
//
// The resulting PR state is read from the model directly with READ FULL STATUS / READ RESERVATION
// through an observer nexus that never registers (so no unit attention of a path is consumed).

import { executeOnMap, type FanoutContext } from '../../src/fanout/fanout.js';
import type { FanoutResult, MapControl, MapInfo, PathInfo, PathIo } from '../../src/fanout/types.js';
import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { hex } from '../../src/scsi/bytes.js';
import { HostStatus, Opcode, PrInAction, SenseKey } from '../../src/scsi/constants.js';
import { reservationConflict, transportFailure } from '../../src/scsi/outcome.js';
import { decodeCapabilities, decodeReadFullStatus, decodeReadReservation } from '../../src/scsi/prin-data.js';
import { encodePrOutParams, encodeRegisterAndMoveParams } from '../../src/scsi/prout-params.js';
import { senseKeyAscOf } from '../../src/scsi/sense.js';
import { transportIdEquals } from '../../src/scsi/transport-id.js';
import type { Capabilities, ReservationInfo, ScsiOutcome, TransportId } from '../../src/scsi/types.js';
import { PrDeviceServer, type Personality } from '../../src/scsi/model/device-server.js';
import type { Logger } from '../../src/socket/logger.js';

/** SAS addresses as the lab reports them (naa.5001405f...). */
export const SAS_BASE = 0x5001405f00000000n;

export interface NodeSpec {
  readonly name: string;
  /** SCSI host numbers of the node; each is one initiator port. */
  readonly hosts: readonly number[];
  /** Target ports reached through every host: relative target port ids 1..targetPorts. */
  readonly targetPorts: number;
}

export interface ModelPath {
  readonly node: string;
  readonly dev: string;
  readonly nexusId: string;
  readonly host: number;
  readonly targetPort: number;
  readonly initiator: TransportId;
}

/** A fault of one path, as the PathIo plays it. */
export type PathFault =
  /** Every command fails without reaching the target; a recheck says down. */
  | { readonly kind: 'down'; readonly hostStatus?: number }
  /** The first `commands` commands run, then the path is down (and rechecks say so). */
  | { readonly kind: 'down-after'; readonly commands: number; readonly hostStatus?: number }
  /** The next `failures` commands fail without reaching the target; a recheck says up. */
  | { readonly kind: 'flaky'; readonly failures: number; readonly hostStatus?: number }
  /** The next `failures` commands run at the target but their reply is lost (a timeout); recheck says up. */
  | { readonly kind: 'lost-reply'; readonly failures: number }
  /** The next `count` commands answer RESERVATION CONFLICT without reaching the target. */
  | { readonly kind: 'conflict'; readonly count: number };

export type IoEvent =
  | {
      readonly kind: 'exec';
      readonly path: string;
      readonly cdb: string;
      readonly data: string | null;
      readonly allocationLength: number;
      readonly timeoutMs: number;
      /** The path's usable flag in the map view at the time. */
      readonly usable: boolean;
      /** Whether the command ran at the target (the model). */
      readonly executed: boolean;
      readonly outcome: ScsiOutcome;
    }
  | { readonly kind: 'recheck'; readonly path: string; readonly up: boolean }
  | { readonly kind: 'suspend' | 'resume' };

interface FaultState {
  fault: PathFault;
  /** Commands this fault has seen (down-after counts them; flaky/lost/conflict use them up). */
  seen: number;
}

interface Gate {
  readonly opened: Promise<void>;
  open(): void;
  waiting: number;
  arrivals: (() => void)[];
}

/** A registration as READ FULL STATUS shows it, tied to its nexus. */
export interface Registration {
  readonly nexusId: string;
  readonly key: bigint;
  readonly allTgPt: boolean;
  readonly holder: boolean;
  readonly type: number;
}

export class ModelSan {
  readonly server: PrDeviceServer;
  readonly nodes: ReadonlyMap<string, ModelNode>;
  private static readonly OBSERVER = 'observer';

  constructor(options: { readonly personality: Personality; readonly nodes: readonly NodeSpec[] }) {
    this.server = new PrDeviceServer({ personality: options.personality });
    const nodes = new Map<string, ModelNode>();
    options.nodes.forEach((spec, index) => {
      const paths: ModelPath[] = [];
      let letter = 0;
      for (const host of spec.hosts) {
        const initiator: TransportId = { protocol: 'sas', sasAddress: SAS_BASE + BigInt((index + 1) * 0x100 + host) };
        for (let t = 1; t <= spec.targetPorts; t++) {
          const dev = `sd${String.fromCharCode(0x61 + letter++)}`;
          const nexusId = `${spec.name}:${dev}`;
          this.server.addNexus({ id: nexusId, initiator, relativeTargetPortId: t });
          paths.push({ node: spec.name, dev, nexusId, host, targetPort: t, initiator });
        }
      }
      nodes.set(spec.name, new ModelNode(this, spec.name, paths));
    });
    this.server.addNexus({ id: ModelSan.OBSERVER, initiator: { protocol: 'sas', sasAddress: SAS_BASE + 0xff00n }, relativeTargetPortId: 1 });
    this.nodes = nodes;
  }

  node(name: string): ModelNode {
    const n = this.nodes.get(name);
    if (!n) throw new RangeError(`no node ${name}`);
    return n;
  }

  /** A PR IN through the observer nexus, repeated past unit attentions (it never registers, so it has none in practice). */
  private observe(serviceAction: number): Uint8Array {
    const cdb = encodePrInCdb({ serviceAction, allocationLength: 0xffff });
    for (let i = 0; i < 8; i++) {
      const o = this.server.execute(ModelSan.OBSERVER, cdb);
      if (o.kind === 'good') return o.data;
      if (o.kind === 'check-condition' && senseKeyAscOf(o.sense)?.key === SenseKey.UNIT_ATTENTION) continue;
      throw new Error(`observer PR IN 0x${serviceAction.toString(16)} failed: ${o.kind}`);
    }
    throw new Error('observer PR IN kept answering UNIT ATTENTION');
  }

  /**
   * Every registration, read with READ FULL STATUS. ALL_TG_PT descriptors report relative target
   * port id 0 (SPC-4 6.15.5), so descriptors are tied to nexuses through the model's snapshot,
   * which lists registrations in the same order; initiator and target port are cross-checked.
   */
  registrations(): Registration[] {
    const status = decodeReadFullStatus(this.observe(PrInAction.READ_FULL_STATUS));
    const snap = this.server.snapshot();
    if (snap.registrations.length !== status.descriptors.length) {
      throw new Error(`READ FULL STATUS lists ${status.descriptors.length} registrations, the model ${snap.registrations.length}`);
    }
    return status.descriptors.map((d, i) => {
      const s = snap.registrations[i]!;
      const path = this.pathByNexus(s.nexusId);
      if (path && !transportIdEquals(path.initiator, d.transportId)) throw new Error(`descriptor ${i}: TransportID does not match ${s.nexusId}`);
      if (path && !d.allTgPt && d.relativeTargetPortId !== path.targetPort) throw new Error(`descriptor ${i}: target port does not match ${s.nexusId}`);
      return { nexusId: s.nexusId, key: d.key, allTgPt: d.allTgPt, holder: d.reservationHolder, type: d.type };
    });
  }

  capabilities(): Capabilities {
    return decodeCapabilities(this.observe(PrInAction.REPORT_CAPABILITIES));
  }

  reservation(): ReservationInfo | null {
    return decodeReadReservation(this.observe(PrInAction.READ_RESERVATION)).reservation;
  }

  private pathByNexus(nexusId: string): ModelPath | undefined {
    for (const n of this.nodes.values()) {
      const p = n.paths.find((x) => x.nexusId === nexusId);
      if (p) return p;
    }
    return undefined;
  }
}

let clockTicks = 0;

export class ModelNode implements PathIo, MapControl {
  readonly events: IoEvent[] = [];
  private readonly usable = new Map<string, boolean>();
  private readonly checker = new Map<string, string>();
  private readonly faults = new Map<string, FaultState>();
  private readonly gates = new Map<string, Gate>();
  suspended = false;
  failSuspend: Error | null = null;
  failResume: Error | null = null;

  constructor(
    readonly san: ModelSan,
    readonly name: string,
    readonly paths: readonly ModelPath[],
  ) {}

  get devs(): string[] {
    return this.paths.map((p) => p.dev);
  }

  path(dev: string): ModelPath {
    const p = this.paths.find((x) => x.dev === dev);
    if (!p) throw new RangeError(`node ${this.name} has no path ${dev}`);
    return p;
  }

  // ---- the map view ------------------------------------------------------------------------------

  /** Whether the map view calls the path usable (multipathd's checker state). */
  setUsable(dev: string, usable: boolean): void {
    this.path(dev);
    this.usable.set(dev, usable);
  }

  isUsable(dev: string): boolean {
    return this.usable.get(dev) ?? true;
  }

  /** Report the path as an ALUA standby path (checker "ghost"), still usable. */
  setGhost(dev: string): void {
    this.path(dev);
    this.checker.set(dev, 'ghost');
  }

  map(): MapInfo {
    const paths: PathInfo[] = this.paths.map((p, i) => {
      const usable = this.isUsable(p.dev);
      return {
        dev: p.dev,
        devT: `8:${i * 16}`,
        hcil: { host: p.host, channel: 0, target: p.targetPort - 1, lun: 0 },
        dmState: usable ? 'active' : 'failed',
        checkerState: usable ? (this.checker.get(p.dev) ?? 'ready') : 'faulty',
        usable,
      };
    });
    return { name: `mpath-${this.name}`, wwid: '36001405c0ffee0000000000000000001', devT: '253:0', paths, source: 'multipathd' };
  }

  // ---- faults ------------------------------------------------------------------------------------

  fault(dev: string, fault: PathFault | null): void {
    this.path(dev);
    if (fault === null) this.faults.delete(dev);
    else this.faults.set(dev, { fault, seen: 0 });
  }

  /** Whether the path is down now (what a recheck answers). */
  isDown(dev: string): boolean {
    const f = this.faults.get(dev);
    if (!f) return false;
    if (f.fault.kind === 'down') return true;
    if (f.fault.kind === 'down-after') return f.seen >= f.fault.commands;
    return false;
  }

  /**
   * Hold every command on `dev` until `open()` is called: a controllable latency. `arrived()`
   * resolves once a command is waiting there.
   */
  hold(dev: string): { open(): void; arrived(): Promise<void> } {
    this.path(dev);
    let open!: () => void;
    const opened = new Promise<void>((resolve) => (open = resolve));
    const gate: Gate = { opened, open, waiting: 0, arrivals: [] };
    this.gates.set(dev, gate);
    return {
      open: () => {
        this.gates.delete(dev);
        gate.open();
      },
      arrived: () => (gate.waiting > 0 ? Promise.resolve() : new Promise<void>((resolve) => gate.arrivals.push(resolve))),
    };
  }

  // ---- PathIo ------------------------------------------------------------------------------------

  async exec(map: MapInfo, path: string, cdb: Uint8Array, dataOut: Uint8Array | null, allocationLength: number, timeoutMs: number): Promise<ScsiOutcome> {
    const p = this.path(path);
    if (map.name !== this.map().name) throw new RangeError(`command for map ${map.name} reached node ${this.name}`);
    const usable = this.isUsable(path);
    await Promise.resolve(); // commands complete asynchronously, as SG_IO through a worker does
    const gate = this.gates.get(path);
    if (gate) {
      gate.waiting++;
      for (const arrive of gate.arrivals.splice(0)) arrive();
      await gate.opened;
    }
    const f = this.faults.get(path);
    let outcome: ScsiOutcome | null = null;
    let executed = false;
    if (f) {
      const fault = f.fault;
      switch (fault.kind) {
        case 'down':
          outcome = transportFailure(fault.hostStatus ?? HostStatus.DID_TRANSPORT_DISRUPTED, `path ${path} down`);
          break;
        case 'down-after':
          if (f.seen >= fault.commands) outcome = transportFailure(fault.hostStatus ?? HostStatus.DID_NO_CONNECT, `path ${path} went down`);
          else f.seen++;
          break;
        case 'flaky':
          if (f.seen < fault.failures) {
            f.seen++;
            outcome = transportFailure(fault.hostStatus ?? HostStatus.DID_TRANSPORT_DISRUPTED, `path ${path} flaked`);
          }
          break;
        case 'lost-reply':
          if (f.seen < fault.failures) {
            f.seen++;
            this.san.server.execute(p.nexusId, cdb, dataOut ?? new Uint8Array(0));
            executed = true;
            outcome = transportFailure(HostStatus.DID_TIME_OUT, `path ${path}: reply lost`);
          }
          break;
        case 'conflict':
          if (f.seen < fault.count) {
            f.seen++;
            outcome = reservationConflict();
          }
          break;
      }
    }
    if (outcome === null) {
      outcome = this.san.server.execute(p.nexusId, cdb, dataOut ?? new Uint8Array(0));
      executed = true;
      if (outcome.kind === 'good' && cdb[0] === Opcode.PERSISTENT_RESERVE_IN) outcome = { kind: 'good', data: outcome.data.subarray(0, allocationLength) };
    }
    this.events.push({
      kind: 'exec',
      path,
      cdb: hex(cdb),
      data: dataOut ? hex(dataOut) : null,
      allocationLength,
      timeoutMs,
      usable,
      executed,
      outcome,
    });
    return outcome;
  }

  recheck(dev: string): Promise<boolean> {
    const up = !this.isDown(dev);
    this.events.push({ kind: 'recheck', path: dev, up });
    return Promise.resolve(up);
  }

  // ---- MapControl --------------------------------------------------------------------------------

  async suspend(map: MapInfo): Promise<void> {
    if (map.name !== this.map().name) throw new RangeError(`suspend of ${map.name} reached node ${this.name}`);
    await Promise.resolve();
    if (this.failSuspend) throw this.failSuspend;
    if (this.suspended) throw new Error(`map ${map.name} suspended twice`);
    this.suspended = true;
    this.events.push({ kind: 'suspend' });
  }

  async resume(map: MapInfo): Promise<void> {
    if (map.name !== this.map().name) throw new RangeError(`resume of ${map.name} reached node ${this.name}`);
    await Promise.resolve();
    if (this.failResume) throw this.failResume;
    if (!this.suspended) throw new Error(`map ${map.name} resumed while not suspended`);
    this.suspended = false;
    this.events.push({ kind: 'resume' });
  }

  // ---- running guest commands --------------------------------------------------------------------

  context(o: { readonly timeoutMs?: number; readonly logger?: Logger } = {}): FanoutContext {
    return {
      map: this.map(),
      io: this,
      control: this,
      recheck: (dev) => this.recheck(dev),
      timeoutMs: o.timeoutMs ?? 5000,
      ...(o.logger ? { logger: o.logger } : {}),
      now: () => clockTicks++,
    };
  }

  /** Run a guest command through the map (the events of earlier commands are cleared first). */
  run(cmd: GuestCommand, o: { readonly timeoutMs?: number; readonly logger?: Logger } = {}): Promise<FanoutResult> {
    this.events.length = 0;
    return executeOnMap(cmd.cdb, cmd.data, cmd.allocationLength, this.context(o));
  }

  /** Execute directly on one path's nexus, bypassing the fan-out (sets up state a test needs). */
  direct(dev: string, cmd: GuestCommand): ScsiOutcome {
    return this.san.server.execute(this.path(dev).nexusId, cmd.cdb, cmd.data ?? new Uint8Array(0));
  }

  /** The key registered on each path's nexus (null: none), from READ FULL STATUS. */
  keys(): Map<string, bigint | null> {
    const regs = this.san.registrations();
    return new Map(this.paths.map((p) => [p.dev, regs.find((r) => r.nexusId === p.nexusId)?.key ?? null]));
  }

  /** Paths whose registration READ FULL STATUS marks as reservation holder. */
  holders(): string[] {
    const regs = this.san.registrations();
    return this.paths.filter((p) => regs.some((r) => r.nexusId === p.nexusId && r.holder)).map((p) => p.dev);
  }

  execEvents(): Extract<IoEvent, { kind: 'exec' }>[] {
    return this.events.filter((e): e is Extract<IoEvent, { kind: 'exec' }> => e.kind === 'exec');
  }
}

// ---- guest commands -----------------------------------------------------------------------------

export interface GuestCommand {
  readonly cdb: Uint8Array;
  readonly data: Uint8Array | null;
  readonly allocationLength: number;
}

export interface OutOptions {
  readonly key?: bigint;
  readonly saKey?: bigint;
  readonly type?: number;
  readonly scope?: number;
  readonly allTgPt?: boolean;
  readonly aptpl?: boolean;
  readonly specIPt?: readonly TransportId[];
  /** CDB size: QEMU sends 16 bytes. */
  readonly size?: 10 | 16;
}

export function prOut(serviceAction: number, o: OutOptions = {}): GuestCommand {
  const data = encodePrOutParams({
    key: o.key ?? 0n,
    serviceActionKey: o.saKey ?? 0n,
    specIPt: o.specIPt !== undefined,
    allTgPt: o.allTgPt ?? false,
    aptpl: o.aptpl ?? false,
    transportIds: o.specIPt ?? [],
  });
  const cdb = encodePrOutCdb({ serviceAction, scope: o.scope ?? 0, type: o.type ?? 0, parameterListLength: data.length }, o.size ?? 10);
  return { cdb, data, allocationLength: 0 };
}

/** A PR OUT with an arbitrary parameter list and PARAMETER LIST LENGTH (malformed lists). */
export function prOutRaw(serviceAction: number, data: Uint8Array, o: { type?: number; parameterListLength?: number } = {}): GuestCommand {
  const cdb = encodePrOutCdb({ serviceAction, type: o.type ?? 0, parameterListLength: o.parameterListLength ?? data.length });
  return { cdb, data, allocationLength: 0 };
}

export function registerAndMove(o: { key: bigint; saKey: bigint; to: TransportId; relativeTargetPortId: number; unreg?: boolean }): GuestCommand {
  const data = encodeRegisterAndMoveParams({
    key: o.key,
    serviceActionKey: o.saKey,
    unreg: o.unreg ?? false,
    aptpl: false,
    relativeTargetPortId: o.relativeTargetPortId,
    transportId: o.to,
  });
  const cdb = encodePrOutCdb({ serviceAction: 0x07, parameterListLength: data.length });
  return { cdb, data, allocationLength: 0 };
}

export function prIn(serviceAction: number, allocationLength = 8192): GuestCommand {
  return { cdb: encodePrInCdb({ serviceAction, allocationLength: Math.min(allocationLength, 0xffff) }), data: null, allocationLength };
}
