// Parsers for the multipathd replies prmux reads as a client: `show maps json` / `show map M json`,
// `show paths raw format PRMUX_PATHS_FORMAT`, the default `show paths` table, and the PR replies.
// Anything missing, mistyped or out of the value sets multipathd 0.9.4 prints is a DecodeError
// naming the field and the value seen. Pure: no Node APIs.

import { DecodeError } from '../errors.js';
import {
  CheckerStates,
  GroupStates,
  PathDmStates,
  type CheckerState,
  type GroupState,
  type Hcil,
  type PathDmState,
} from './topology-model.js';

// --- show maps json ----------------------------------------------------------------------------

/** dev_st as printed: "unknown" for a path with no map. */
export type JsonDevState = 'running' | 'offline' | 'unknown';
const JSON_DEV_STATES: readonly JsonDevState[] = ['running', 'offline', 'unknown'];

export interface JsonPathRecord {
  dev: string;
  devT: string;
  dmState: PathDmState;
  devState: JsonDevState;
  checkerState: CheckerState;
  checker: string;
  priority: number;
  hostWwnn: string;
  targetWwnn: string;
  hostWwpn: string;
  targetWwpn: string;
  hostAdapter: string;
  lunHex: string;
  marginal: boolean;
}

export interface JsonPathGroupRecord {
  selector: string;
  priority: number;
  dmState: GroupState;
  marginal: boolean;
  /** 1-based group number. */
  group: number;
  paths: JsonPathRecord[];
}

export interface JsonMapRecord {
  name: string;
  uuid: string;
  /** "dm-N", or "undef" without dm info. */
  sysfs: string;
  failback: string;
  queueing: string;
  /** Active (ready or ghost) paths: JSON field "paths". */
  activePaths: number;
  writeProt: 'rw' | 'ro' | 'undef';
  dmState: 'active' | 'suspend' | 'undef';
  features: string;
  hwhandler: string;
  action: string;
  pathFaults: number;
  vendor: string;
  product: string;
  revision: string;
  switchGroup: number;
  mapLoads: number;
  totalQueueingTime: number;
  queueingTimeouts: number;
  pathGroups: JsonPathGroupRecord[];
}

export interface MapsJsonReply {
  majorVersion: number;
  minorVersion: number;
  maps: JsonMapRecord[];
}

export interface MapJsonReply {
  majorVersion: number;
  minorVersion: number;
  map: JsonMapRecord;
}

/** The JSON layout version multipathd 0.9.4 prints (PRINT_JSON_MAJOR_VERSION). */
export const SUPPORTED_JSON_MAJOR_VERSION = 0;

type Json = unknown;

/** Field reader that names the JSON path of whatever is wrong. */
class Reader {
  constructor(
    readonly structure: string,
    readonly where: string,
    readonly obj: Record<string, Json>,
  ) {}

  static root(structure: string, text: string): Reader {
    let value: Json;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new DecodeError(structure, 'text', text.length > 64 ? text.slice(0, 64) + '...' : text, `is not JSON (${e instanceof Error ? e.message : String(e)})`);
    }
    return new Reader(structure, '', Reader.asObject(structure, '(root)', value));
  }

  private static asObject(structure: string, field: string, value: Json): Record<string, Json> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new DecodeError(structure, field, value, 'must be a JSON object');
    return value as Record<string, Json>;
  }

  private name(key: string): string {
    return this.where === '' ? key : `${this.where}.${key}`;
  }

  private raw(key: string): Json {
    if (!Object.prototype.hasOwnProperty.call(this.obj, key)) throw new DecodeError(this.structure, this.name(key), undefined, 'is missing');
    return this.obj[key];
  }

  string(key: string): string {
    const v = this.raw(key);
    if (typeof v !== 'string') throw new DecodeError(this.structure, this.name(key), v, 'must be a string');
    return v;
  }

  int(key: string): number {
    const v = this.raw(key);
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new DecodeError(this.structure, this.name(key), v, 'must be an integer');
    return v;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[]): T {
    const v = this.string(key);
    if (!(allowed as readonly string[]).includes(v)) throw new DecodeError(this.structure, this.name(key), v, `must be one of ${allowed.join(', ')}`);
    return v as T;
  }

  marginal(key: string): boolean {
    return this.oneOf(key, ['normal', 'marginal'] as const) === 'marginal';
  }

  object(key: string): Reader {
    return new Reader(this.structure, this.name(key), Reader.asObject(this.structure, this.name(key), this.raw(key)));
  }

  array(key: string): Reader[] {
    const v = this.raw(key);
    if (!Array.isArray(v)) throw new DecodeError(this.structure, this.name(key), v, 'must be an array');
    return v.map((item, i) => new Reader(this.structure, `${this.name(key)}[${i}]`, Reader.asObject(this.structure, `${this.name(key)}[${i}]`, item)));
  }
}

function readVersion(r: Reader): { majorVersion: number; minorVersion: number } {
  const majorVersion = r.int('major_version');
  const minorVersion = r.int('minor_version');
  if (majorVersion !== SUPPORTED_JSON_MAJOR_VERSION) {
    throw new DecodeError(r.structure, 'major_version', majorVersion, `is not the supported JSON layout ${SUPPORTED_JSON_MAJOR_VERSION}`);
  }
  return { majorVersion, minorVersion };
}

function readPath(r: Reader): JsonPathRecord {
  return {
    dev: r.string('dev'),
    devT: r.string('dev_t'),
    dmState: r.oneOf('dm_st', PathDmStates),
    devState: r.oneOf('dev_st', JSON_DEV_STATES),
    checkerState: r.oneOf('chk_st', CheckerStates),
    checker: r.string('checker'),
    priority: r.int('pri'),
    hostWwnn: r.string('host_wwnn'),
    targetWwnn: r.string('target_wwnn'),
    hostWwpn: r.string('host_wwpn'),
    targetWwpn: r.string('target_wwpn'),
    hostAdapter: r.string('host_adapter'),
    lunHex: r.string('lun_hex'),
    marginal: r.marginal('marginal_st'),
  };
}

function readGroup(r: Reader): JsonPathGroupRecord {
  return {
    selector: r.string('selector'),
    priority: r.int('pri'),
    dmState: r.oneOf('dm_st', GroupStates),
    marginal: r.marginal('marginal_st'),
    group: r.int('group'),
    paths: r.array('paths').map(readPath),
  };
}

function readMap(r: Reader): JsonMapRecord {
  return {
    name: r.string('name'),
    uuid: r.string('uuid'),
    sysfs: r.string('sysfs'),
    failback: r.string('failback'),
    queueing: r.string('queueing'),
    activePaths: r.int('paths'),
    writeProt: r.oneOf('write_prot', ['rw', 'ro', 'undef'] as const),
    dmState: r.oneOf('dm_st', ['active', 'suspend', 'undef'] as const),
    features: r.string('features'),
    hwhandler: r.string('hwhandler'),
    action: r.string('action'),
    pathFaults: r.int('path_faults'),
    vendor: r.string('vend'),
    product: r.string('prod'),
    revision: r.string('rev'),
    switchGroup: r.int('switch_grp'),
    mapLoads: r.int('map_loads'),
    totalQueueingTime: r.int('total_q_time'),
    queueingTimeouts: r.int('q_timeouts'),
    pathGroups: r.array('path_groups').map(readGroup),
  };
}

/** `show maps json`. */
export function parseMapsJson(text: string): MapsJsonReply {
  const r = Reader.root('multipathd show maps json reply', text);
  return { ...readVersion(r), maps: r.array('maps').map(readMap) };
}

/** `show map <m> json`. */
export function parseMapJson(text: string): MapJsonReply {
  const r = Reader.root('multipathd show map json reply', text);
  return { ...readVersion(r), map: readMap(r.object('map')) };
}

// --- show paths raw format ---------------------------------------------------------------------

/**
 * The format prmux asks for: dev, dev_t, hcil, wwid, map alias, dm state, checker state, dev state,
 * priority, checker, marginal state. Fields are separated by TAB: no field multipathd prints can
 * contain one (device and map names, WWIDs and states are blank-free or, like "i/o pending", use
 * a space), so empty fields and spaces inside a field stay unambiguous. multipathd's tokenizer keeps
 * the TABs because the format is sent inside double quotes.
 */
export const PRMUX_PATHS_FORMAT = '%d\t%D\t%i\t%w\t%m\t%t\t%T\t%o\t%p\t%c\t%M';
/** The command prmux sends to list paths. */
export const PRMUX_SHOW_PATHS_COMMAND = `show paths raw format "${PRMUX_PATHS_FORMAT}"`;

export interface PathRecord {
  dev: string;
  devT: string;
  /** null for "#:#:#:#" (no SCSI address). */
  hcil: Hcil | null;
  wwid: string;
  /** The map alias, null for an orphan path ("[orphan]"); "[unknown]" is kept as is. */
  map: string | null;
  dmState: PathDmState;
  checkerState: CheckerState;
  devState: JsonDevState;
  priority: number;
  checker: string;
  marginal: boolean;
}

const PATHS_RAW = 'multipathd show paths raw reply';

export function parseHcil(text: string, structure: string, field: string): Hcil | null {
  if (text === '#:#:#:#') return null;
  const m = /^(\d+):(\d+):(\d+):(\d+)$/.exec(text);
  if (!m) throw new DecodeError(structure, field, text, 'must be H:C:T:L');
  const [host, channel, target, lun] = m.slice(1).map(Number) as [number, number, number, number];
  if (!Number.isSafeInteger(lun)) throw new DecodeError(structure, field, text, 'has a LUN beyond 2^53');
  return { host, channel, target, lun };
}

function parseInt10(text: string, structure: string, field: string): number {
  if (!/^-?\d+$/.test(text)) throw new DecodeError(structure, field, text, 'must be a decimal integer');
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new DecodeError(structure, field, text, 'is out of range');
  return n;
}

function oneOf<T extends string>(text: string, allowed: readonly T[], structure: string, field: string): T {
  if (!(allowed as readonly string[]).includes(text)) throw new DecodeError(structure, field, text, `must be one of ${allowed.join(', ')}`);
  return text as T;
}

/**
 * Parse the reply to PRMUX_SHOW_PATHS_COMMAND. With no paths multipathd has nothing to print and
 * answers the default "ok\n", which reads as an empty list.
 */
export function parsePathsRaw(text: string): PathRecord[] {
  if (text === 'ok\n') return [];
  if (text !== '' && !text.endsWith('\n')) throw new DecodeError(PATHS_RAW, 'text', text.slice(-32), 'must end with a newline');
  const lines = text === '' ? [] : text.slice(0, -1).split('\n');
  return lines.map((line, i) => {
    const f = line.split('\t');
    const where = (name: string): string => `line ${i + 1} ${name}`;
    if (f.length !== 11) throw new DecodeError(PATHS_RAW, `line ${i + 1}`, line, `must have 11 TAB-separated fields, has ${f.length}`);
    const [dev, devT, hcil, wwid, map, dm, chk, devSt, pri, checker, marginal] = f as [string, string, string, string, string, string, string, string, string, string, string];
    if (!/^(\d+:\d+|#:#)$/.test(devT)) throw new DecodeError(PATHS_RAW, where('dev_t'), devT, 'must be major:minor');
    return {
      dev,
      devT,
      hcil: parseHcil(hcil, PATHS_RAW, where('hcil')),
      wwid,
      map: map === '[orphan]' ? null : map,
      dmState: oneOf(dm, PathDmStates, PATHS_RAW, where('dm_st')),
      checkerState: oneOf(chk, CheckerStates, PATHS_RAW, where('chk_st')),
      devState: oneOf(devSt, JSON_DEV_STATES, PATHS_RAW, where('dev_st')),
      priority: parseInt10(pri, PATHS_RAW, where('pri')),
      checker,
      marginal: oneOf(marginal, ['normal', 'marginal'] as const, PATHS_RAW, where('marginal_st')) === 'marginal',
    };
  });
}

// --- the default `show paths` table -------------------------------------------------------------

export interface ShowPathsRow {
  hcil: Hcil | null;
  dev: string;
  devT: string;
  priority: number;
  dmState: PathDmState;
  checkerState: CheckerState;
  devState: JsonDevState;
  /** null for an orphan ("orphan"). */
  nextCheck: { tick: number; interval: number } | null;
}

const PATHS_TABLE = 'multipathd show paths reply';
const PATHS_TABLE_HEADERS = ['hcil', 'dev', 'dev_t', 'pri', 'dm_st', 'chk_st', 'dev_st', 'next_check'] as const;

/**
 * Parse the default `show paths` table. Columns are found from the header line (every column,
 * header included, is padded to the same width and followed by one blank), so values containing a
 * blank ("i/o pending") are cut correctly. Assumes ASCII, as multipathd's values are.
 */
export function parseShowPaths(text: string): ShowPathsRow[] {
  if (text === 'ok\n' || text === '') return [];
  const lines = text.split('\n');
  if (lines.pop() !== '') throw new DecodeError(PATHS_TABLE, 'text', text.slice(-32), 'must end with a newline');
  const header = lines.shift() ?? '';
  const starts: number[] = [];
  let at = 0;
  for (const name of PATHS_TABLE_HEADERS) {
    while (header.charAt(at) === ' ') at++;
    if (!header.startsWith(name, at) || (starts.length > 0 && header.charAt(at - 1) !== ' ')) {
      throw new DecodeError(PATHS_TABLE, 'header', header, `must list ${PATHS_TABLE_HEADERS.join(' ')}`);
    }
    starts.push(at);
    at += name.length;
  }
  return lines.map((line, i) => {
    const cell = (k: number): string => line.slice(starts[k], k + 1 < starts.length ? (starts[k + 1] ?? 0) - 1 : undefined).trimEnd();
    const where = (k: number): string => `line ${i + 2} ${PATHS_TABLE_HEADERS[k]}`;
    const next = cell(7);
    let nextCheck: ShowPathsRow['nextCheck'] = null;
    if (next !== 'orphan') {
      const m = /^(?:[X.]{10})? (\d+)\/(\d+)$/.exec(next);
      if (!m) throw new DecodeError(PATHS_TABLE, where(7), next, 'must be a progress bar "XX........ t/n"');
      nextCheck = { tick: Number(m[1]), interval: Number(m[2]) };
    }
    return {
      hcil: parseHcil(cell(0), PATHS_TABLE, where(0)),
      dev: cell(1),
      devT: cell(2),
      priority: parseInt10(cell(3), PATHS_TABLE, where(3)),
      dmState: oneOf(cell(4), PathDmStates, PATHS_TABLE, where(4)),
      checkerState: oneOf(cell(5), CheckerStates, PATHS_TABLE, where(5)),
      devState: oneOf(cell(6), JSON_DEV_STATES, PATHS_TABLE, where(6)),
      nextCheck,
    };
  });
}

// --- PR replies ---------------------------------------------------------------------------------

const PR_REPLY = 'multipathd PR reply';

/** `getprkey` reply: "none\n" -> null, "0x<hex>[:aptpl]\n" -> the key. */
export function parseGetPrKeyReply(text: string): { key: bigint; aptpl: boolean } | null {
  if (text === 'none\n') return null;
  const m = /^0x([0-9a-f]{1,16})(:aptpl)?\n$/.exec(text);
  if (!m?.[1]) throw new DecodeError(PR_REPLY, 'getprkey', text, 'must be "none" or 0x<hex>[:aptpl]');
  return { key: BigInt('0x' + m[1]), aptpl: m[2] !== undefined };
}

/**
 * `getprstatus` reply: 0.9.4 prints the flag as "1"/"0" without newline; 0.13+ prints "set"/"unset".
 * (libmpathpersist of those releases only looks at the leading word.)
 */
export function parseGetPrStatusReply(text: string): boolean {
  const t = text.trimEnd();
  if (t === '1' || t === 'set') return true;
  if (t === '0' || t === 'unset') return false;
  throw new DecodeError(PR_REPLY, 'getprstatus', text, 'must be 1/0 (0.9.4) or set/unset');
}

/** Replies of commands that answer only success or failure: libmpathpersist checks for a leading "ok". */
export function isOkReply(text: string): boolean {
  return text.startsWith('ok');
}
