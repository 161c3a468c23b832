// Scripted persistent-reservation sequences for the fidelity check (issue #5): the same commands are
// run on the real LIO target in the SAN lab (nexus k = path device k) and on the model
// (PrDeviceServer, personality 'lio'), and the answers are compared step by step (compare.ts).
//
// Pure data and builders: every step is one SCSI command (CDB + data-out or data-in length) on one
// I_T nexus, numbered 1..N as the lab numbers its paths. Nexus k has the lab's identities: initiator
// SAS TransportID 0x5001405f0000000k and relative target port id k (lab/README.md, "What the guest
// looks like"), so TransportIDs and relative port ids can be named in parameter lists and compared
// byte for byte in READ FULL STATUS.
//
// `expect` notes what LIO is expected to answer (the numbers are those of
// shared/lab/LIO-BEHAVIOUR.md); they are documentation for the report, never the verdict: the
// verdict is whatever the lab answers.

import { encodePrInCdb, encodePrOutCdb } from '../../src/scsi/cdb.js';
import { Opcode, PrInAction, PrOutAction, PrType } from '../../src/scsi/constants.js';
import { encodePrOutParams, encodeRegisterAndMoveParams } from '../../src/scsi/prout-params.js';
import { encodeTransportId } from '../../src/scsi/transport-id.js';
import { writeU32, writeU64 } from '../../src/scsi/bytes.js';
import type { TransportId } from '../../src/scsi/types.js';

/** One SCSI command as SG_IO carries it. */
export interface Command {
  readonly cdb: Uint8Array;
  /** Data-out bytes (PR OUT parameter list, WRITE data); absent or empty = no data-out. */
  readonly dataOut?: Uint8Array;
  /** Data-in buffer length (the allocation length for PR IN). */
  readonly dataInLength?: number;
  /** SG_IO timeout for this command in ms (the runner's default otherwise). */
  readonly timeoutMs?: number;
}

export interface Step {
  /** 1-based nexus: lab path k, model nexus `p<k>`. */
  readonly nexus: number;
  readonly label: string;
  readonly command: Command;
  /** The answer expected from LIO and why (LIO-BEHAVIOUR.md numbers); for the report only. */
  readonly expect?: string;
}

export interface Sequence {
  readonly name: string;
  readonly nexuses: 2 | 3;
  readonly about: string;
  readonly steps: readonly Step[];
  /**
   * Set when LIO is known not to complete a step (LIO-BEHAVIOUR.md 7, PREEMPT AND ABORT): the lab
   * runs such a sequence on its own, last, with a short timeout, and records what happened.
   */
  readonly lioHang?: { readonly step: number; readonly why: string };
}

// ---- lab identities ---------------------------------------------------------------------------------

/** The lab's initiator SAS address of path k (naa.5001405f000000NN). */
export function sasAddressOf(nexus: number): bigint {
  return 0x5001405f00000000n + BigInt(nexus);
}

export function transportIdOf(nexus: number): TransportId {
  return { protocol: 'sas', sasAddress: sasAddressOf(nexus) };
}

/** Relative target port id of path k in the lab (ports are numbered in link order). */
export function relativePortOf(nexus: number): number {
  return nexus;
}

// ---- keys and types ---------------------------------------------------------------------------------

const A1 = 0xa1n;
const A2 = 0xa2n;
const A3 = 0xa3n;
const B1 = 0xb1n;
const B2 = 0xb2n;
const B3 = 0xb3n;
const C1 = 0xc1n;
const C2 = 0xc2n;
const C3 = 0xc3n;
/** A key nobody holds. */
const NOBODY = 0xdeadn;

const { WRITE_EXCLUSIVE: WE, EXCLUSIVE_ACCESS: EA, WRITE_EXCLUSIVE_REGISTRANTS_ONLY: WE_RO, EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: EA_RO } = PrType;
const { WRITE_EXCLUSIVE_ALL_REGISTRANTS: WE_AR, EXCLUSIVE_ACCESS_ALL_REGISTRANTS: EA_AR } = PrType;

/** Allocation length of the ordinary PR IN steps (what sg_persist uses). */
export const FULL_ALLOC = 8192;
const BLOCK = 512;

const k = (v: bigint): string => `0x${v.toString(16)}`;

// ---- commands ---------------------------------------------------------------------------------------

export interface ParamFlags {
  readonly aptpl?: boolean;
  readonly allTgPt?: boolean;
  /** SPEC_I_PT with these TransportIDs. */
  readonly specIPt?: readonly TransportId[];
}

export function basicParams(key: bigint, saKey: bigint, f: ParamFlags = {}): Uint8Array {
  return encodePrOutParams({
    key,
    serviceActionKey: saKey,
    specIPt: f.specIPt !== undefined,
    allTgPt: f.allTgPt ?? false,
    aptpl: f.aptpl ?? false,
    transportIds: f.specIPt ?? [],
  });
}

export function prOut(sa: number, params: Uint8Array, o: { type?: number; scope?: number; parameterListLength?: number } = {}): Command {
  const cdb = encodePrOutCdb({ serviceAction: sa, type: o.type ?? 0, scope: o.scope ?? 0, parameterListLength: o.parameterListLength ?? params.length });
  return { cdb, dataOut: params };
}

export function prIn(sa: number, alloc: number): Command {
  return { cdb: encodePrInCdb({ serviceAction: sa, allocationLength: alloc }), dataInLength: alloc };
}

export const TEST_UNIT_READY: Command = { cdb: new Uint8Array(6) };

/** READ(10) of one block at LBA 0. */
export const READ_10: Command = { cdb: Uint8Array.from([Opcode.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0]), dataInLength: BLOCK };

/** WRITE(10) of one zero block at LBA 0 (the lab's LU is all zeros, so READ data stays comparable). */
export const WRITE_10: Command = { cdb: Uint8Array.from([Opcode.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0]), dataOut: new Uint8Array(BLOCK) };

/** Standard INQUIRY, 36 bytes: exempt from unit attentions (SAM-5 5.14). */
export const INQUIRY: Command = { cdb: Uint8Array.from([Opcode.INQUIRY, 0, 0, 0, 36, 0]), dataInLength: 36 };

/** REQUEST SENSE, 18 bytes (fixed format): reports a pending unit attention as data and clears it. */
export const REQUEST_SENSE: Command = { cdb: Uint8Array.from([0x03, 0, 0, 0, 18, 0]), dataInLength: 18 };

// ---- the builder -----------------------------------------------------------------------------------

/** Builds one sequence: each method appends one step with a readable label. */
export class Script {
  private readonly steps: Step[] = [];
  private hang: { step: number; why: string } | undefined;

  constructor(
    readonly name: string,
    readonly nexuses: 2 | 3,
    readonly about: string,
  ) {}

  add(nexus: number, label: string, command: Command, expect?: string): this {
    if (!Number.isInteger(nexus) || nexus < 1 || nexus > this.nexuses) {
      throw new RangeError(`Cannot add step "${label}" to ${this.name}: nexus ${nexus} is not 1..${this.nexuses}`);
    }
    this.steps.push({ nexus, label: `p${nexus} ${label}`, command, ...(expect !== undefined ? { expect } : {}) });
    return this;
  }

  /** Mark the last step added as one LIO does not complete. */
  hangsOnLio(why: string): this {
    this.hang = { step: this.steps.length - 1, why };
    return this;
  }

  register(n: number, key: bigint, saKey: bigint, f: ParamFlags = {}, expect?: string): this {
    return this.add(n, `REGISTER ${k(key)}->${k(saKey)}${flagText(f)}`, prOut(PrOutAction.REGISTER, basicParams(key, saKey, f)), expect);
  }

  registerIgnore(n: number, saKey: bigint, f: ParamFlags = {}, expect?: string): this {
    return this.add(n, `REGISTER AND IGNORE ->${k(saKey)}${flagText(f)}`, prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, basicParams(0n, saKey, f)), expect);
  }

  reserve(n: number, key: bigint, type: number, o: { scope?: number; flags?: ParamFlags } = {}, expect?: string): this {
    const scope = o.scope ?? 0;
    return this.add(n, `RESERVE ${k(key)} type ${type}${scope ? ` scope ${scope}` : ''}${flagText(o.flags ?? {})}`,
      prOut(PrOutAction.RESERVE, basicParams(key, 0n, o.flags), { type, scope }), expect);
  }

  release(n: number, key: bigint, type: number, expect?: string): this {
    return this.add(n, `RELEASE ${k(key)} type ${type}`, prOut(PrOutAction.RELEASE, basicParams(key, 0n), { type }), expect);
  }

  clear(n: number, key: bigint, expect?: string): this {
    return this.add(n, `CLEAR ${k(key)}`, prOut(PrOutAction.CLEAR, basicParams(key, 0n)), expect);
  }

  preempt(n: number, key: bigint, saKey: bigint, type: number, o: { scope?: number } = {}, expect?: string): this {
    const scope = o.scope ?? 0;
    return this.add(n, `PREEMPT ${k(key)} sa ${k(saKey)} type ${type}${scope ? ` scope ${scope}` : ''}`,
      prOut(PrOutAction.PREEMPT, basicParams(key, saKey), { type, scope }), expect);
  }

  preemptAndAbort(n: number, key: bigint, saKey: bigint, type: number, expect?: string): this {
    return this.add(n, `PREEMPT AND ABORT ${k(key)} sa ${k(saKey)} type ${type}`,
      prOut(PrOutAction.PREEMPT_AND_ABORT, basicParams(key, saKey), { type }), expect);
  }

  /** REGISTER AND MOVE to `to` (a lab nexus) or to an explicit port and TransportID. */
  move(
    n: number,
    key: bigint,
    saKey: bigint,
    to: number | { readonly rtpi: number; readonly tid: TransportId },
    o: { unreg?: boolean; aptpl?: boolean } = {},
    expect?: string,
  ): this {
    const rtpi = typeof to === 'number' ? relativePortOf(to) : to.rtpi;
    const tid = typeof to === 'number' ? transportIdOf(to) : to.tid;
    const params = encodeRegisterAndMoveParams({ key, serviceActionKey: saKey, unreg: o.unreg ?? false, aptpl: o.aptpl ?? false, relativeTargetPortId: rtpi, transportId: tid });
    const where = typeof to === 'number' ? `p${to}` : `port ${rtpi} ${tidText(tid)}`;
    return this.add(n, `REGISTER AND MOVE ${k(key)} sa ${k(saKey)} -> ${where}${o.unreg ? ' UNREG' : ''}${o.aptpl ? ' APTPL' : ''}`,
      prOut(PrOutAction.REGISTER_AND_MOVE, params), expect);
  }

  /** A PR OUT with a hand-made parameter list (malformed lists, odd lengths). */
  prOutRaw(n: number, label: string, sa: number, params: Uint8Array, o: { type?: number; scope?: number; parameterListLength?: number } = {}, expect?: string): this {
    return this.add(n, label, prOut(sa, params, o), expect);
  }

  readKeys(n: number, alloc = FULL_ALLOC, expect?: string): this {
    return this.add(n, `READ KEYS alloc ${alloc}`, prIn(PrInAction.READ_KEYS, alloc), expect);
  }

  readReservation(n: number, alloc = FULL_ALLOC, expect?: string): this {
    return this.add(n, `READ RESERVATION alloc ${alloc}`, prIn(PrInAction.READ_RESERVATION, alloc), expect);
  }

  capabilities(n: number, alloc = FULL_ALLOC, expect?: string): this {
    return this.add(n, `REPORT CAPABILITIES alloc ${alloc}`, prIn(PrInAction.REPORT_CAPABILITIES, alloc), expect);
  }

  fullStatus(n: number, alloc = FULL_ALLOC, expect?: string): this {
    return this.add(n, `READ FULL STATUS alloc ${alloc}`, prIn(PrInAction.READ_FULL_STATUS, alloc), expect);
  }

  prInRaw(n: number, sa: number, alloc: number, expect?: string): this {
    return this.add(n, `PR IN service action 0x${sa.toString(16)} alloc ${alloc}`, prIn(sa, alloc), expect);
  }

  tur(n: number, expect?: string): this {
    return this.add(n, 'TEST UNIT READY', TEST_UNIT_READY, expect);
  }

  read(n: number, expect?: string): this {
    return this.add(n, 'READ(10) 1 block', READ_10, expect);
  }

  write(n: number, expect?: string): this {
    return this.add(n, 'WRITE(10) 1 block', WRITE_10, expect);
  }

  inquiry(n: number, expect?: string): this {
    return this.add(n, 'INQUIRY 36', INQUIRY, expect);
  }

  requestSense(n: number, expect?: string): this {
    return this.add(n, 'REQUEST SENSE 18', REQUEST_SENSE, expect);
  }

  build(): Sequence {
    return { name: this.name, nexuses: this.nexuses, about: this.about, steps: [...this.steps], ...(this.hang ? { lioHang: this.hang } : {}) };
  }
}

function tidText(t: TransportId): string {
  switch (t.protocol) {
    case 'sas':
      return `sas:${t.sasAddress.toString(16)}`;
    case 'fc':
      return `fc:${t.nPortName.toString(16)}`;
    case 'iscsi':
      return `iscsi:${t.name}`;
    case 'raw':
      return `raw:${t.protocolId}`;
  }
}

function flagText(f: ParamFlags): string {
  const parts: string[] = [];
  if (f.allTgPt) parts.push('ALL_TG_PT');
  if (f.aptpl) parts.push('APTPL');
  if (f.specIPt) parts.push(`SPEC_I_PT[${f.specIPt.map(tidText).join(',')}]`);
  return parts.length ? ` ${parts.join(' ')}` : '';
}

/** A basic parameter list of `length` bytes (keys in place where they fit): for length errors. */
function paramsOfLength(length: number, key: bigint, saKey: bigint): Uint8Array {
  const full = new Uint8Array(Math.max(length, 24));
  writeU64(full, 0, key);
  writeU64(full, 8, saKey);
  return full.subarray(0, length);
}

/** A SPEC_I_PT parameter list with a raw TransportID area and a stated TRANSPORTID PARAMETER DATA LENGTH. */
function specIPtRaw(saKey: bigint, tidArea: Uint8Array, statedLength = tidArea.length): Uint8Array {
  const out = new Uint8Array(28 + tidArea.length);
  writeU64(out, 8, saKey);
  out[20] = 0x08; // SPEC_I_PT
  writeU32(out, 24, statedLength);
  out.set(tidArea, 28);
  return out;
}

// ---- the sequences ---------------------------------------------------------------------------------

function registerBasics(): Sequence {
  return new Script('register', 2, 'REGISTER / REGISTER AND IGNORE EXISTING KEY: add, change, remove, wrong key, ALL_TG_PT')
    .readKeys(1, FULL_ALLOC, 'empty LU: header only')
    .readReservation(1)
    .fullStatus(1)
    .capabilities(1, FULL_ALLOC, '0008 1d 90 ea01 0000')
    .register(1, 0n, A1)
    .register(1, 0n, A1, {}, 'registered nexus, key 0 does not match: CONFLICT')
    .register(2, NOBODY, A2, {}, 'unregistered nexus with a non-zero key: CONFLICT')
    .register(2, 0n, 0n, {}, 'GOOD no-op, no generation bump')
    .register(2, 0n, A2)
    .readKeys(2)
    .register(1, A1, B1)
    .registerIgnore(2, B2)
    .fullStatus(2)
    .register(1, B1, 0n, {}, 'unregister: no generation bump (LIO 3)')
    .registerIgnore(2, 0n, {}, 'unregister: no generation bump (LIO 3)')
    .readKeys(1)
    .register(1, 0n, C1, { allTgPt: true })
    .fullStatus(1, FULL_ALLOC, 'ALL_TG_PT=1, relative target port id 0')
    .register(1, C1, C2, {}, 'LIO 9: ALL_TG_PT registration without ALL_TG_PT: 5/24/00')
    .registerIgnore(1, C2, {}, 'LIO 9')
    .registerIgnore(1, C3, { allTgPt: true })
    .readKeys(2)
    .register(1, C3, 0n, { allTgPt: true })
    .readKeys(2)
    .build();
}

function reserveOfType(type: number): Sequence {
  const other = type === WE ? EA : WE;
  const allReg = type === WE_AR || type === EA_AR;
  const s = new Script(`reserve-type-${type}`, 3, `RESERVE type ${type}: holder, non-holder, unregistered, access, RELEASE right and wrong`)
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .reserve(3, 0n, type, {}, 'unregistered, no reservation: LIO 1 (02/08/00)')
    .reserve(1, A1, type)
    .readReservation(1)
    .readReservation(2)
    .readReservation(3)
    .reserve(1, A1, type, {}, 'holder repeats: GOOD')
    .reserve(1, A1, other, {}, 'holder asks another type: CONFLICT')
    .reserve(1, A2, type, {}, 'wrong key: CONFLICT')
    .reserve(2, A2, type, {}, allReg ? 'all registrants: GOOD' : 'registered non-holder: CONFLICT')
    .reserve(3, 0n, type, {}, 'unregistered under a reservation: CONFLICT')
    .fullStatus(1)
    .tur(2)
    .read(2)
    .write(2)
    .tur(3)
    .read(3)
    .write(3)
    .readKeys(3, FULL_ALLOC, 'PR IN is always allowed')
    .read(1)
    .write(1)
    .release(3, 0n, type, 'unregistered under a reservation: CONFLICT')
    .release(2, A2, type, allReg ? 'all registrants: any registrant releases' : 'non-holder: GOOD, no effect')
    .readReservation(1)
    .release(1, A1, other, 'LIO 2: wrong type from the holder: CONFLICT')
    .release(1, A2, type, 'wrong key: CONFLICT')
    .release(1, A1, type)
    .tur(2, type >= WE_RO ? '2A/04 RESERVATIONS RELEASED' : 'no UA')
    .tur(2)
    .tur(1)
    .tur(3)
    .readReservation(1)
    .release(3, 0n, type, 'LIO 1')
    .clear(3, 0n, 'LIO 1')
    .release(1, A1, type, 'no reservation: GOOD')
    .reserve(2, A2, type)
    .reserve(1, A1, type, {}, allReg ? 'GOOD' : 'CONFLICT')
    .register(2, A2, 0n, {}, 'holder unregisters: implicit release (all registrants: stays with p1)')
    .tur(1)
    .tur(1)
    .readReservation(1)
    .fullStatus(1)
    .read(3)
    .write(3);
  return s.build();
}

function preemptSequence(): Sequence {
  return new Script('preempt', 3, 'PREEMPT: holder, registrations only, wrong keys, self-preempt to change type, unit attentions')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .register(3, 0n, A3)
    .reserve(1, A1, WE)
    .preempt(2, NOBODY, A1, EA, {}, 'wrong key: CONFLICT')
    .preempt(2, A2, A1, EA, {}, 'GOOD: p1 preempted')
    .read(1, '2A/05 REGISTRATIONS PREEMPTED')
    .read(1, 'CONFLICT (EA, unregistered)')
    .tur(1)
    .tur(3, 'type changed 1 -> 3')
    .tur(3)
    .readReservation(2)
    .fullStatus(2)
    .preempt(3, A3, NOBODY, EA, {}, 'no registration with the SA key: CONFLICT')
    .preempt(1, 0n, A2, EA, {}, 'unregistered: CONFLICT')
    .preempt(3, A3, 0n, EA, {}, 'SA key 0 under a non-AR reservation: 5/26/00')
    .preempt(2, A2, A3, EA, {}, 'removes p3 only')
    .readKeys(3, FULL_ALLOC, '2A/05')
    .readKeys(3)
    .preempt(2, A2, A2, WE_RO, {}, 'self-preempt changes the type')
    .readReservation(2)
    .preempt(2, A2, A2, 0, {}, 'invalid type: 5/24/00')
    .preempt(2, A2, A2, EA, { scope: 1 }, 'LIO 4: scope 1 -> 5/26/00')
    .register(1, 0n, A1)
    .register(3, 0n, A1)
    .preempt(2, A2, A1, WE_RO, {}, 'removes p1 and p3 (both key 0xa1)')
    .tur(1)
    .tur(1)
    .tur(3)
    .tur(3)
    .readKeys(2)
    .register(1, 0n, B1)
    .preempt(1, B1, A2, EA_RO, {}, 'a new registrant preempts the holder and changes the type')
    .tur(2)
    .tur(2)
    .readReservation(1)
    .fullStatus(1)
    .build();
}

function preemptAllRegistrants(): Sequence {
  return new Script('preempt-all-registrants', 3, 'PREEMPT under All Registrants reservations and without a reservation')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .register(3, 0n, A3)
    .reserve(1, A1, WE_AR)
    .readReservation(2, FULL_ALLOC, 'key 0 under all registrants')
    .fullStatus(2)
    .preempt(3, A3, A1, WE_AR)
    .tur(1)
    .tur(1)
    .tur(2)
    .tur(2)
    .fullStatus(3)
    .register(1, 0n, B1)
    .preempt(3, A3, 0n, EA_AR, {}, 'SA key 0 under AR: removes every other registration')
    .tur(1)
    .tur(2)
    .tur(2)
    .readReservation(3)
    .fullStatus(3)
    .read(1)
    .read(3)
    .clear(3, A3)
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .preempt(1, A1, A2, WE_RO, {}, 'no reservation: only removes p2')
    .readReservation(1)
    .tur(2, '2A/05')
    .tur(2)
    .readKeys(1)
    .build();
}

function clearSequence(): Sequence {
  return new Script('clear', 3, 'CLEAR: wrong key, unregistered, unit attentions to the other registrants')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .register(3, 0n, A3)
    .reserve(2, A2, EA_RO)
    .clear(3, NOBODY, 'wrong key: CONFLICT')
    .clear(3, A3)
    .readKeys(1, FULL_ALLOC, '2A/03 RESERVATIONS PREEMPTED')
    .readKeys(1)
    .tur(2, '2A/03')
    .tur(2)
    .tur(3, 'the issuer gets no UA')
    .readReservation(3)
    .clear(1, A1, 'unregistered, no reservation: LIO 1')
    .register(1, 0n, A1)
    .clear(1, A1, 'only registrant: GOOD, no UA anywhere')
    .tur(1)
    .tur(2)
    .tur(3)
    .readKeys(2)
    .build();
}

function unitAttentions(): Sequence {
  return new Script('unit-attention', 2, 'unit attentions: INQUIRY does not consume, REQUEST SENSE and PR IN do, several pending')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .reserve(1, A1, WE_RO)
    .release(1, A1, WE_RO, '2A/04 to p2')
    .inquiry(2, 'exempt: GOOD, the UA stays')
    .requestSense(2, 'UA as sense data, cleared')
    .tur(2, 'GOOD')
    .reserve(1, A1, WE_RO)
    .release(1, A1, WE_RO)
    .readKeys(2, FULL_ALLOC, 'PR IN reports the UA too')
    .readKeys(2)
    .reserve(1, A1, EA_RO)
    .release(1, A1, EA_RO, '2A/04 to p2')
    .clear(1, A1, '2A/03 to p2 as well')
    .tur(2, 'one UA, all cleared')
    .tur(2)
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .reserve(1, A1, WE)
    .release(1, A1, WE, 'type 1: no UA')
    .tur(2)
    .preempt(2, A2, A1, WE, {}, 'no reservation: removes p1, 2A/05 to p1')
    .tur(2, 'the issuer gets no UA')
    .read(1, '2A/05')
    .read(1)
    .requestSense(1, 'nothing pending: NO SENSE')
    .build();
}

function registerAndMove(): Sequence {
  return new Script('register-and-move', 3, 'REGISTER AND MOVE: errors, move to unregistered and registered nexuses, UNREG, APTPL, LIO 8')
    .register(1, 0n, A1)
    .move(1, A1, B3, 3, {}, 'no reservation')
    .reserve(1, A1, WE)
    .move(2, 0n, B3, 3, {}, 'unregistered: CONFLICT')
    .move(1, A1, 0n, 3, {}, 'SA key 0: 5/26/00')
    .move(1, A1, B3, 1, {}, 'to itself: 5/26/00')
    .move(1, A1, B3, { rtpi: 9, tid: transportIdOf(3) }, {}, 'unknown relative port')
    .move(1, A1, B3, { rtpi: 2, tid: transportIdOf(3) }, {}, 'initiator not behind that port')
    .move(1, A1, B3, { rtpi: 3, tid: { protocol: 'sas', sasAddress: 0x5001405f000000ffn } }, {}, 'unknown initiator')
    .move(1, NOBODY, B3, 3, {}, 'wrong key: CONFLICT')
    .prOutRaw(1, 'REGISTER AND MOVE with TRANSPORTID LENGTH 24 but 28 bytes after the header', PrOutAction.REGISTER_AND_MOVE,
      withTail(encodeRegisterAndMoveParams({ key: A1, serviceActionKey: B3, unreg: false, aptpl: false, relativeTargetPortId: 3, transportId: transportIdOf(3) }), 4))
    .register(2, 0n, A2)
    .move(2, A2, B3, 3, {}, 'non-holder: CONFLICT')
    .move(1, A1, B3, 3, {}, 'GOOD: p3 registered with 0xb3 and holds')
    .fullStatus(1)
    .readReservation(3)
    .tur(1)
    .tur(3)
    .move(3, B3, B2, 2, { unreg: true }, 'to a registered nexus: its key becomes 0xb2; p3 unregistered')
    .fullStatus(2)
    .move(2, B2, B1, 1, {}, 'back to p1 (moved away from before)')
    .readReservation(1)
    .release(1, B1, WE, 'LIO 8: the holder cannot release')
    .registerIgnore(1, C1)
    .readReservation(1)
    .release(1, C1, WE, 'LIO 8')
    .clear(1, C1)
    .tur(2)
    .tur(2)
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .reserve(1, A1, WE_AR)
    .move(1, A1, B2, 2, {}, 'all registrants: CONFLICT')
    .release(1, A1, WE_AR)
    .tur(2, '2A/04')
    .reserve(1, A1, WE_RO)
    .move(1, A1, C3, 3, { aptpl: true }, 'GOOD, APTPL activated')
    .capabilities(3, FULL_ALLOC, 'PTPL_A set')
    .fullStatus(3)
    .tur(1)
    .tur(2)
    .tur(3)
    .build();
}

/** `params` with `extra` zero bytes appended (a parameter list longer than its own lengths say). */
function withTail(params: Uint8Array, extra: number): Uint8Array {
  const out = new Uint8Array(params.length + extra);
  out.set(params);
  return out;
}

function specIPt(): Sequence {
  const unknownSas: TransportId = { protocol: 'sas', sasAddress: 0x5001405f000000ffn };
  const sas2 = encodeTransportId(transportIdOf(2));
  return new Script('spec-i-pt', 3, 'REGISTER with SPEC_I_PT: registers named initiators; unknown, malformed and odd TransportIDs')
    .register(1, 0n, A1, { specIPt: [transportIdOf(2)] }, 'registers p1 and p2')
    .fullStatus(1)
    .readKeys(2)
    .register(1, A1, A1, { specIPt: [transportIdOf(3)] }, 'LIO 10: from a registered nexus 5/26/00')
    .register(3, 0n, A3, { specIPt: [unknownSas] }, 'unknown SAS address: 5/26/00')
    .register(3, 0n, A3, { specIPt: [{ protocol: 'fc', nPortName: sasAddressOf(2) }] }, 'FC TransportID on a SAS target')
    .register(3, 0n, A3, { specIPt: [{ protocol: 'iscsi', format: 'device', name: 'iqn.2003-01.org.linux-iscsi.lab:x' }] }, 'iSCSI TransportID on a SAS target')
    .prOutRaw(3, 'REGISTER SPEC_I_PT with TPDL 48 but one 24-byte TransportID', PrOutAction.REGISTER, specIPtRaw(A3, sas2, 48))
    .prOutRaw(3, 'REGISTER SPEC_I_PT with a 20-byte (truncated) SAS TransportID', PrOutAction.REGISTER, specIPtRaw(A3, sas2.subarray(0, 20)))
    .prOutRaw(3, 'REGISTER SPEC_I_PT with TPDL 0 (no TransportIDs)', PrOutAction.REGISTER, specIPtRaw(A3, new Uint8Array(0)))
    .fullStatus(3)
    .clear(1, A1)
    .tur(2)
    .tur(3)
    .register(3, 0n, A3)
    .register(2, 0n, B2, { specIPt: [transportIdOf(1), transportIdOf(3)] }, 'names p1 (unregistered) and p3 (registered: skipped)')
    .fullStatus(2)
    .clear(2, B2)
    .tur(1)
    .tur(3)
    .register(3, 0n, C3, { specIPt: [transportIdOf(3), transportIdOf(1)] }, 'names itself and p1')
    .fullStatus(3)
    .readKeys(1)
    .build();
}

function aptpl(): Sequence {
  return new Script('aptpl', 2, 'APTPL: accepted and reported as PTPL_A (a power cycle needs a guest reboot: not exercised)')
    .capabilities(1)
    .register(1, 0n, A1, { aptpl: true })
    .capabilities(1, FULL_ALLOC, 'PTPL_A set')
    .register(2, 0n, A2, {}, 'APTPL 0 in the last REGISTER clears PTPL_A')
    .capabilities(2)
    .register(2, A2, A2, { aptpl: true })
    .capabilities(2)
    .reserve(1, A1, WE_RO)
    .capabilities(1)
    .registerIgnore(1, A1, { aptpl: false })
    .capabilities(1)
    .release(1, A1, WE_RO)
    .tur(2)
    .register(2, A2, 0n, { aptpl: true }, 'unregister with APTPL')
    .capabilities(1)
    .clear(1, A1)
    .capabilities(1, FULL_ALLOC, 'CLEAR deactivates APTPL')
    .registerIgnore(1, B1, { aptpl: true, allTgPt: true })
    .capabilities(2)
    .fullStatus(2)
    .build();
}

function malformed(): Sequence {
  return new Script('malformed', 2, 'malformed CDBs and parameter lists: lengths, service actions, types, scope, SPEC_I_PT misuse')
    .prOutRaw(1, 'REGISTER with PARAMETER LIST LENGTH 0', PrOutAction.REGISTER, new Uint8Array(0), {}, '5/1A/00')
    .prOutRaw(1, 'REGISTER with 23 bytes', PrOutAction.REGISTER, paramsOfLength(23, 0n, A1), {}, '5/1A/00')
    .prOutRaw(1, 'REGISTER with 25 bytes', PrOutAction.REGISTER, paramsOfLength(25, 0n, A1), {}, '5/1A/00')
    .prOutRaw(1, 'REGISTER with 28 bytes', PrOutAction.REGISTER, paramsOfLength(28, 0n, A1), {}, '5/1A/00')
    .prOutRaw(1, 'REGISTER with 32 bytes', PrOutAction.REGISTER, paramsOfLength(32, 0n, A1), {}, '5/1A/00')
    .prOutRaw(1, 'RESERVE with 0 bytes (unregistered)', PrOutAction.RESERVE, new Uint8Array(0), { type: WE })
    .readKeys(1, FULL_ALLOC, 'nothing registered')
    .register(1, 0n, A1)
    .prOutRaw(1, 'RESERVE with 32 bytes', PrOutAction.RESERVE, paramsOfLength(32, A1, 0n), { type: WE }, '5/1A/00')
    .prOutRaw(1, 'CLEAR with 25 bytes', PrOutAction.CLEAR, paramsOfLength(25, A1, 0n), {}, '5/1A/00')
    .prOutRaw(1, 'RELEASE with 16 bytes', PrOutAction.RELEASE, paramsOfLength(16, A1, 0n), { type: WE }, '5/1A/00')
    .reserve(1, A1, 0, {}, 'type 0: 5/24/00')
    .reserve(1, A1, 2, {}, 'type 2: 5/24/00')
    .reserve(1, A1, 4, {}, 'type 4: 5/24/00')
    .reserve(1, A1, 9, {}, 'type 9: 5/24/00')
    .reserve(1, A1, 0xf, {}, 'type F: 5/24/00')
    .reserve(1, A1, WE, { scope: 1 }, 'LIO 4: 5/26/00')
    .reserve(1, A1, WE, { scope: 2 }, 'LIO 4')
    .reserve(1, A1, WE, { flags: { specIPt: [transportIdOf(2)] } }, 'SPEC_I_PT on RESERVE: 5/26/00')
    .registerIgnore(1, B1, { specIPt: [transportIdOf(2)] }, 'SPEC_I_PT on REGISTER AND IGNORE: 5/26/00')
    .prOutRaw(1, 'PR OUT service action 0x08', 0x08, basicParams(A1, 0n), {}, '5/24/00')
    .prOutRaw(1, 'PR OUT service action 0x09', 0x09, basicParams(A1, 0n), {}, '5/24/00')
    .prOutRaw(1, 'PR OUT service action 0x1f', 0x1f, basicParams(A1, 0n), {}, '5/24/00')
    .prInRaw(1, 0x04, FULL_ALLOC, '5/24/00')
    .prInRaw(1, 0x1f, FULL_ALLOC, '5/24/00')
    .reserve(1, A1, WE)
    .prOutRaw(1, 'RELEASE type 0', PrOutAction.RELEASE, basicParams(A1, 0n), { type: 0 })
    .prOutRaw(1, 'RELEASE type 9', PrOutAction.RELEASE, basicParams(A1, 0n), { type: 9 })
    .preempt(1, A1, A1, 2, {}, 'invalid type: 5/24/00')
    .readReservation(1)
    .release(1, A1, WE)
    .readReservation(2)
    .build();
}

function allocationLengths(): Sequence {
  const s = new Script('allocation-length', 3, 'PR IN allocation lengths: LIO 5 (below 8 rejected) and LIO 6 (READ FULL STATUS length)')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .register(3, 0n, A3, { allTgPt: true })
    .reserve(2, A2, WE_RO);
  for (const a of [0, 4, 7, 8, 12, 16, 20, 24, 32]) s.readKeys(1, a);
  for (const a of [0, 4, 8, 12, 16, 20, 22, 24, 32]) s.readReservation(1, a);
  for (const a of [0, 2, 4, 6, 7, 8, 16]) s.capabilities(1, a);
  for (const a of [0, 4, 8, 20, 24, 30, 31, 32, 55, 56, 72, 80, 104, 105, 152, 176, FULL_ALLOC]) s.fullStatus(1, a);
  return s.build();
}

function preemptAndAbort(): Sequence {
  return new Script('preempt-and-abort', 2, 'PREEMPT AND ABORT of the holder (LIO 7: LIO does not complete it)')
    .register(1, 0n, A1)
    .register(2, 0n, A2)
    .reserve(1, A1, WE_RO)
    .preemptAndAbort(2, A2, A1, WE_RO, 'SPC-4: GOOD, 2A/05 to p1; LIO 7: no status')
    .hangsOnLio('LIO-BEHAVIOUR.md 7: LIO never completes PREEMPT AND ABORT under tcm_loop (no status; the SCSI error handler\'s abort then hangs in tcm_loop_issue_tmr and the LU stays wedged); the model completes it as SPC-4 says on purpose')
    .tur(1, '2A/05')
    .tur(1)
    .readReservation(2)
    .fullStatus(2)
    .build();
}

/** Every sequence, in the order the lab runs them (the one LIO hangs on last). */
export const SEQUENCES: readonly Sequence[] = [
  registerBasics(),
  ...[WE, EA, WE_RO, EA_RO, WE_AR, EA_AR].map(reserveOfType),
  preemptSequence(),
  preemptAllRegistrants(),
  clearSequence(),
  unitAttentions(),
  registerAndMove(),
  specIPt(),
  aptpl(),
  malformed(),
  allocationLengths(),
  preemptAndAbort(),
];

export function sequenceByName(name: string): Sequence | undefined {
  return SEQUENCES.find((s) => s.name === name);
}
