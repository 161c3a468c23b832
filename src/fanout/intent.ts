// The intended persistent-reservation state of this host on one multipath map (one LU, keyed by its
// WWID): our key, its APTPL and ALL_TG_PT flags, and the reservation we hold. Pure.
//
// It is what the consistency guard makes every usable path agree with, so it must only ever say
// what the target has accepted: nextIntent changes it only for a PERSISTENT RESERVE OUT that
// completed with GOOD (the fan-out's verdict for the whole map). A command that failed changed
// nothing the guard may rely on, and a guess would make the guard "repair" the LU into a state the
// guest never asked for.
//
// No reservation_key in multipath.conf is needed: the key is learned from the guest's REGISTER, and
// also from the RESERVATION KEY field of any other PR OUT the target accepted (SPC-4 6.16.3: the
// device server checks it against the issuing nexus's registration), so a host whose state
// directory was lost learns its key back from the guest's next command.

import { DecodeError } from '../errors.js';
import { isAllRegistrantsType, Opcode, PrOutAction, type PrType } from '../scsi/constants.js';
import { readU64 } from '../scsi/bytes.js';
import type { FanoutResult } from './types.js';

/**
 * Newest version of the JSON form (2: adds the optional write-ahead `pending` record). intentToJson
 * writes version 1 when there is no `pending`, so a file without an interrupted command stays
 * readable by a prmux that knows version 1 only; intentFromJson reads 1 and 2 and refuses others.
 */
export const INTENT_FORMAT_VERSION = 2;
/** The version written for an intent without `pending` (the original format). */
export const INTENT_FORMAT_VERSION_BASIC = 1;

export interface FencedNote {
  /** When the guard found our key gone from every nexus (ISO 8601). */
  readonly at: string;
  /** The key we had: another host preempted it, or someone cleared the LU. */
  readonly formerKey: bigint;
  /** What was seen, for admins ("key absent from all 3 registrations; reservation held by 0xbb"). */
  readonly detail: string;
}

/**
 * Write-ahead record of a guest PERSISTENT RESERVE OUT that may change this host's registrations on
 * several paths (REGISTER, REGISTER AND IGNORE, RELEASE, PREEMPT of our own key or of an All
 * Registrants reservation: the fan-out sends several commands, and a crash can leave some paths
 * changed and others not). Written before the fan-out, cleared (the intent written without it)
 * once the command completed. While it is set, the other fields of the intent are the PREVIOUS
 * intent, the one the guest last got GOOD for: a prmux that finds it at start-up knows the command
 * was interrupted (the guest never got GOOD for it: QEMU reports a lost helper command as a
 * failure) and rolls the paths back to that intent.
 */
export interface PendingCommand {
  /** The guest's CDB, hex. */
  readonly cdb: string;
  /** The guest's parameter list, hex (null when there was none). */
  readonly data: string | null;
  /** When the fan-out started (ISO 8601). */
  readonly startedAt: string;
}

export interface MapIntent {
  readonly wwid: string;
  /** Map name when the intent last changed (names can change; the WWID is the identity). */
  readonly mapName: string;
  /** Our registered key; null = not registered. */
  readonly key: bigint | null;
  /**
   * The last key we registered, kept after we unregister, cleared or were fenced: a registration
   * with it that shows up later is stray (registered on a path that was down when we unregistered).
   */
  readonly lastKey: bigint | null;
  readonly aptpl: boolean;
  readonly allTgPt: boolean;
  /** The reservation we hold (type per SPC-4 6.16.3.4), or null. */
  readonly reservation: { readonly type: number } | null;
  /** Set when the guard found that another host fenced us; cleared by our next successful REGISTER. */
  readonly fenced?: FencedNote;
  /** Set only on disk, while a guest command is being fanned out (see PendingCommand). */
  readonly pending?: PendingCommand;
  readonly updatedAt: string;
}

/** What the engine observed right after a PREEMPT it sent for the guest (READ RESERVATION). */
export interface ReservationObservation {
  readonly reservation: { readonly key: bigint; readonly type: number } | null;
}

export function emptyIntent(wwid: string, mapName: string, now: string): MapIntent {
  return { wwid, mapName, key: null, lastKey: null, aptpl: false, allTgPt: false, reservation: null, updatedAt: now };
}

/** Whether the guard has anything to keep consistent for this intent. */
export function intentMatters(i: MapIntent): boolean {
  return i.key !== null || i.lastKey !== null || i.reservation !== null;
}

/*
 * The fields nextIntent reads (SPC-4 6.16.3, table 180, and 6.16.4, table 181). Read raw rather
 * than through decodePrOutParams: the target accepted the list, and only these bytes matter here
 * (a TransportID list after SPEC_I_PT changes other initiators' registrations, not ours).
 *   basic form:         bytes 0-7 RESERVATION KEY, 8-15 SERVICE ACTION RESERVATION KEY,
 *                       byte 20 SPEC_I_PT 08h | ALL_TG_PT 04h | APTPL 01h
 *   REGISTER AND MOVE:  bytes 0-7 RESERVATION KEY, 8-15 SERVICE ACTION RESERVATION KEY,
 *                       byte 17 UNREG 02h | APTPL 01h
 */
interface OutFields {
  readonly key: bigint;
  readonly saKey: bigint;
  readonly allTgPt: boolean;
  readonly aptpl: boolean;
  readonly unreg: boolean;
}

const PARAMS_MIN = 24;

function readOutFields(serviceAction: number, data: Uint8Array | null): OutFields | null {
  if (data === null || data.length < PARAMS_MIN) return null;
  const key = readU64(data, 0);
  const saKey = readU64(data, 8);
  if (serviceAction === PrOutAction.REGISTER_AND_MOVE) {
    const f = data[17]!;
    return { key, saKey, allTgPt: false, aptpl: (f & 0x01) !== 0, unreg: (f & 0x02) !== 0 };
  }
  const f = data[20]!;
  return { key, saKey, allTgPt: (f & 0x04) !== 0, aptpl: (f & 0x01) !== 0, unreg: false };
}

function sameReservation(a: MapIntent['reservation'], b: MapIntent['reservation']): boolean {
  return a === null || b === null ? a === b : a.type === b.type;
}

function sameFence(a: FencedNote | undefined, b: FencedNote | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.at === b.at && a.formerKey === b.formerKey && a.detail === b.detail;
}

function samePending(a: PendingCommand | undefined, b: PendingCommand | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.cdb === b.cdb && a.data === b.data && a.startedAt === b.startedAt;
}

/** Equality of everything but updatedAt (and the map name, which is bookkeeping). */
export function sameIntentState(a: MapIntent, b: MapIntent): boolean {
  return (
    samePending(a.pending, b.pending) &&
    a.wwid === b.wwid &&
    a.key === b.key &&
    a.lastKey === b.lastKey &&
    a.aptpl === b.aptpl &&
    a.allTgPt === b.allTgPt &&
    sameReservation(a.reservation, b.reservation) &&
    sameFence(a.fenced, b.fenced)
  );
}

type Draft = { -readonly [K in keyof MapIntent]: MapIntent[K] };

function withoutFence(i: MapIntent): Draft {
  const { fenced: _dropped, ...rest } = i;
  return { ...rest };
}

/** `prev` itself when nothing changed, so callers can skip the write by identity. */
function settle(prev: MapIntent, next: Draft, now: string): MapIntent {
  if (sameIntentState(prev, next)) return prev;
  return { ...next, updatedAt: now };
}

/**
 * The intent after a PERSISTENT RESERVE OUT the fan-out ran for the guest. Anything but GOOD, a PR
 * IN, or a CDB/parameter list that cannot be read returns `prev` unchanged (the same object).
 * `observed` is what a READ RESERVATION right after a PREEMPT of another key showed: whether the SA
 * key held the reservation (then it moved to us) is not in the CDB (SPC-4 5.13.11.4).
 */
export function nextIntent(
  prev: MapIntent,
  cdb: Uint8Array,
  dataOut: Uint8Array | null,
  result: FanoutResult,
  now: string,
  observed?: ReservationObservation,
): MapIntent {
  if (result.outcome.kind !== 'good') return prev;
  if (cdb.length < 10 || cdb[0] !== Opcode.PERSISTENT_RESERVE_OUT) return prev;
  const sa = cdb[1]! & 0x1f;
  const type = cdb[2]! & 0x0f;
  const f = readOutFields(sa, dataOut);
  if (f === null) return prev;
  const d = { ...prev } as Draft;
  switch (sa) {
    case PrOutAction.REGISTER:
    case PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY: {
      if (f.saKey === 0n) {
        // Unregistering (SPC-4 5.13.11.3) also releases a reservation we hold; the fan-out
        // releases first when we hold one (libmpathpersist's order).
        const u = { ...d, key: null, lastKey: prev.key ?? prev.lastKey, reservation: null };
        return settle(prev, u, now);
      }
      // A new key keeps our reservation: the fan-out PREEMPTs the old key when the holder path
      // could not be updated, so the reservation follows the key.
      const r = withoutFence(prev);
      return settle(prev, { ...r, key: f.saKey, lastKey: f.saKey, aptpl: f.aptpl, allTgPt: f.allTgPt }, now);
    }
    case PrOutAction.RESERVE:
      return settle(prev, { ...learnKey(d, f.key), reservation: { type } }, now);
    case PrOutAction.RELEASE:
      return settle(prev, { ...learnKey(d, f.key), reservation: null }, now);
    case PrOutAction.CLEAR:
      // SPC-4 5.13.11.6: every registration and the reservation are gone, ours included.
      return settle(prev, { ...d, key: null, lastKey: f.key !== 0n ? f.key : prev.key ?? prev.lastKey, reservation: null }, now);
    case PrOutAction.PREEMPT:
    case PrOutAction.PREEMPT_AND_ABORT: {
      const mine = learnKey(d, f.key);
      if (f.saKey === f.key) {
        // Preempting our own key (fence_scsi's flush of stale registrations): if we held the
        // reservation, the SA key identified the holder and we hold it again with the CDB's type.
        return settle(prev, { ...mine, reservation: prev.reservation !== null ? { type } : null }, now);
      }
      if (observed === undefined) return settle(prev, mine, now);
      const seen = observed.reservation;
      const ours = seen !== null && (seen.key === f.key || (isAllRegistrantsType(seen.type as PrType) && seen.type === type));
      return settle(prev, { ...mine, reservation: ours ? { type: seen.type } : null }, now);
    }
    case PrOutAction.REGISTER_AND_MOVE: {
      // SPC-4 5.13.8: the reservation moves to the named nexus; UNREG unregisters the issuer.
      if (f.unreg) return settle(prev, { ...d, key: null, lastKey: f.key, reservation: null, aptpl: f.aptpl }, now);
      return settle(prev, { ...learnKey(d, f.key), reservation: null, aptpl: f.aptpl }, now);
    }
    default:
      // REPLACE LOST RESERVATION (SPC-5) and anything unknown: no rule, no change.
      return prev;
  }
}

/** The RESERVATION KEY of an accepted PR OUT is our registered key (SPC-4 5.13.7 checks it). */
function learnKey(d: Draft, key: bigint): Draft {
  if (key === 0n || d.key === key) return d;
  const r = withoutFence(d as MapIntent);
  return { ...r, key, lastKey: key };
}

/** The guard found our key registered nowhere: another host fenced us. Never re-register it. */
export function fenceIntent(prev: MapIntent, now: string, detail: string): MapIntent {
  if (prev.key === null) return prev;
  return { ...prev, key: null, lastKey: prev.key, reservation: null, fenced: { at: now, formerKey: prev.key, detail }, updatedAt: now };
}

/** The guard saw another key holding the reservation we intended: we were preempted; do not fight. */
export function withReservation(prev: MapIntent, reservation: MapIntent['reservation'], now: string): MapIntent {
  if (sameReservation(prev.reservation, reservation)) return prev;
  return { ...prev, reservation, updatedAt: now };
}

// --- write-ahead record ----------------------------------------------------------------------------

/** `prev` with the write-ahead record of a command about to be fanned out. */
export function withPending(prev: MapIntent, pending: PendingCommand): MapIntent {
  return { ...prev, pending };
}

/** The intent without its write-ahead record (`i` itself when it has none). */
export function withoutPending(i: MapIntent): MapIntent {
  if (i.pending === undefined) return i;
  const { pending: _dropped, ...rest } = i;
  return rest;
}

/** What an interrupted command was doing to this host's registrations, read from its record. */
export interface PendingEffect {
  readonly opcode: number;
  readonly serviceAction: number;
  /** RESERVATION KEY of the parameter list (0 when none could be read). */
  readonly key: bigint;
  /**
   * The key the command was registering on our paths: the SERVICE ACTION RESERVATION KEY of a
   * REGISTER / REGISTER AND IGNORE (null for SA key 0, an unregister), else the RESERVATION KEY
   * (PREEMPT of our own key and RELEASE re-register it), null when unreadable.
   */
  readonly registering: bigint | null;
}

function fromHex(h: string): Uint8Array | null {
  if (h.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(h)) return null;
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function pendingEffect(p: PendingCommand): PendingEffect {
  const cdb = fromHex(p.cdb) ?? new Uint8Array(0);
  const data = p.data === null ? null : fromHex(p.data);
  const opcode = cdb[0] ?? 0;
  const serviceAction = (cdb[1] ?? 0) & 0x1f;
  const f = opcode === Opcode.PERSISTENT_RESERVE_OUT ? readOutFields(serviceAction, data) : null;
  if (f === null) return { opcode, serviceAction, key: 0n, registering: null };
  const isRegister = serviceAction === PrOutAction.REGISTER || serviceAction === PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY;
  const registering = isRegister ? f.saKey : f.key;
  return { opcode, serviceAction, key: f.key, registering: registering === 0n ? null : registering };
}

// --- JSON ------------------------------------------------------------------------------------------

/*
 * On disk (state-store.ts writes one file per WWID):
 *   { "version": 1, "wwid": "3600...", "mapName": "mpatha", "key": "0x1234" | null,
 *     "lastKey": "0x1234" | null, "aptpl": false, "allTgPt": false, "reservation": { "type": 5 } | null,
 *     "fenced": { "at": "...", "formerKey": "0x1234", "detail": "..." } (optional), "updatedAt": "...",
 *     "pending": { "cdb": "5f00...", "data": "00..." | null, "startedAt": "..." } (optional, version 2) }
 * Keys are hex strings: JSON numbers cannot carry 64 bits. Version 1 is written when there is no
 * "pending", so only a file of an interrupted command needs a prmux that reads version 2.
 */
export function intentToJson(i: MapIntent): string {
  const doc: Record<string, unknown> = {
    version: i.pending === undefined ? INTENT_FORMAT_VERSION_BASIC : INTENT_FORMAT_VERSION,
    wwid: i.wwid,
    mapName: i.mapName,
    key: i.key === null ? null : keyHex(i.key),
    lastKey: i.lastKey === null ? null : keyHex(i.lastKey),
    aptpl: i.aptpl,
    allTgPt: i.allTgPt,
    reservation: i.reservation === null ? null : { type: i.reservation.type },
    updatedAt: i.updatedAt,
  };
  if (i.fenced !== undefined) doc['fenced'] = { at: i.fenced.at, formerKey: keyHex(i.fenced.formerKey), detail: i.fenced.detail };
  if (i.pending !== undefined) doc['pending'] = { cdb: i.pending.cdb, data: i.pending.data, startedAt: i.pending.startedAt };
  return JSON.stringify(doc, null, 2) + '\n';
}

const STRUCTURE = 'map intent';

function keyHex(k: bigint): string {
  return `0x${k.toString(16)}`;
}

function parseKey(field: string, v: unknown): bigint {
  if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/i.test(v)) throw new DecodeError(STRUCTURE, field, v, 'is not a 64-bit key in hex ("0x...")');
  return BigInt(v);
}

function parseKeyOrNull(field: string, v: unknown): bigint | null {
  return v === null ? null : parseKey(field, v);
}

function parseString(field: string, v: unknown): string {
  if (typeof v !== 'string') throw new DecodeError(STRUCTURE, field, v, 'is not a string');
  return v;
}

function parseBool(field: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw new DecodeError(STRUCTURE, field, v, 'is not a boolean');
  return v;
}

/** Parse intentToJson's output; a DecodeError names the field that is wrong. */
export function intentFromJson(text: string): MapIntent {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new DecodeError(STRUCTURE, 'JSON', text.slice(0, 64), `does not parse (${(e as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new DecodeError(STRUCTURE, 'document', doc, 'is not a JSON object');
  const o = doc as Record<string, unknown>;
  if (o['version'] !== INTENT_FORMAT_VERSION && o['version'] !== INTENT_FORMAT_VERSION_BASIC) {
    throw new DecodeError(STRUCTURE, 'version', o['version'], `is not ${INTENT_FORMAT_VERSION_BASIC} or ${INTENT_FORMAT_VERSION}`);
  }
  const wwid = parseString('wwid', o['wwid']);
  if (wwid === '') throw new DecodeError(STRUCTURE, 'wwid', wwid, 'is empty');
  const res = o['reservation'];
  let reservation: MapIntent['reservation'] = null;
  if (res !== null) {
    const t = typeof res === 'object' && res !== null ? (res as Record<string, unknown>)['type'] : undefined;
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t > 15) throw new DecodeError(STRUCTURE, 'reservation.type', t, 'is not a type 0..15');
    reservation = { type: t };
  }
  const intent: Draft = {
    wwid,
    mapName: parseString('mapName', o['mapName']),
    key: parseKeyOrNull('key', o['key']),
    lastKey: parseKeyOrNull('lastKey', o['lastKey'] ?? null),
    aptpl: parseBool('aptpl', o['aptpl']),
    allTgPt: parseBool('allTgPt', o['allTgPt']),
    reservation,
    updatedAt: parseString('updatedAt', o['updatedAt']),
  };
  const fenced = o['fenced'];
  if (fenced !== undefined && fenced !== null) {
    if (typeof fenced !== 'object') throw new DecodeError(STRUCTURE, 'fenced', fenced, 'is not an object');
    const fo = fenced as Record<string, unknown>;
    intent.fenced = { at: parseString('fenced.at', fo['at']), formerKey: parseKey('fenced.formerKey', fo['formerKey']), detail: parseString('fenced.detail', fo['detail']) };
  }
  const pending = o['pending'];
  if (pending !== undefined && pending !== null) {
    if (typeof pending !== 'object' || Array.isArray(pending)) throw new DecodeError(STRUCTURE, 'pending', pending, 'is not an object');
    const po = pending as Record<string, unknown>;
    const cdb = parseString('pending.cdb', po['cdb']);
    if (!/^([0-9a-f]{2}){6,32}$/i.test(cdb)) throw new DecodeError(STRUCTURE, 'pending.cdb', cdb, 'is not a CDB in hex');
    const data = po['data'] ?? null;
    if (data !== null && (typeof data !== 'string' || !/^([0-9a-f]{2})*$/i.test(data))) throw new DecodeError(STRUCTURE, 'pending.data', data, 'is not a parameter list in hex or null');
    intent.pending = { cdb, data, startedAt: parseString('pending.startedAt', po['startedAt']) };
  }
  return intent;
}
