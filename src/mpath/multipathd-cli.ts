// The command grammar of multipathd 0.9.4's socket interface and the replies it gives, for the
// simulated multipathd. Facts taken from multipath-tools 0.9.4 multipathd/cli.c, callbacks.c,
// cli_handlers.c, uxlsnr.c and libmpathutil/parser.c (this is an independent implementation):
//
// Tokenizing (alloc_strvec): words are split on blanks; a double quote opens/closes a string in
// which blanks are kept and "" stands for one quote; outside a string '{' and '}' are one-character
// words and '!' or '#' end the line. A line that is empty, blank or starts with '!'/'#' cannot be
// tokenized at all, which multipathd reports as "Not enough memory" (ENOMEM).
//
// Keywords (get_cmdvec/find_key): every non-quote word is a keyword; an exact match wins, otherwise a
// unique prefix ("sho" = show, "form" = format, "disable" = disablequeueing); an ambiguous prefix
// ("sh", "s", "stat") is not found. A keyword that takes a parameter (path, map, multipath, group,
// format, key) takes the next word. Errors: unknown word as the last word -> ESRCH ("not found"),
// elsewhere -> ENOENT; a parameter missing at the end -> EINVAL.
//
// Dispatch: the keyword codes, in order, form a fingerprint (verb in byte 0, up to 3 qualifiers);
// more than 4 keywords or a fingerprint with no handler -> EINVAL. So word order matters:
// "show paths raw format X" works, "show paths format X raw" does not.
//
// Replies (uxlsnr.c default_reply, used only when the handler wrote nothing): ESRCH/EINVAL/ENOMEM ->
// "<cmd>: not found|Missing argument|Not enough memory\n" + version line + "CLI commands
// reference:\n" + one line per handler; ENOENT and handler failure -> "fail\n"; success -> "ok\n";
// a non-root client using anything but list/show -> "permission deny: need to be root\n".
// Pure: no Node APIs.

import {
  type MpathMap,
  type MpathTopology,
  findMap,
  findPathByDevOrDevT,
  mapOfPath,
} from './topology-model.js';
import {
  renderMapFormat,
  renderMapJson,
  renderMapTopology,
  renderMaps,
  renderMapsJson,
  renderMapsRaw,
  renderPathState,
  renderPaths,
  renderPathsRaw,
  renderTopology,
  renderWildcards,
  MapFormats,
} from './multipathd-format.js';

// --- keyword and handler tables (cli.h / cli.c load_keys / callbacks.c) -------------------------

/** Keyword codes (cli.h): verbs 1..25, qualifiers 65..83. */
export const Kw = {
  LIST: 1, ADD: 2, DEL: 3, RESET: 4, SWITCH: 5, RECONFIGURE: 6, SUSPEND: 7, RESUME: 8, RESIZE: 9, RELOAD: 10,
  FAIL: 11, REINSTATE: 12, DISABLEQ: 13, RESTOREQ: 14, FORCEQ: 15, GETPRSTATUS: 16, SETPRSTATUS: 17,
  UNSETPRSTATUS: 18, GETPRKEY: 19, SETPRKEY: 20, UNSETPRKEY: 21, SETMARGINAL: 22, UNSETMARGINAL: 23,
  SHUTDOWN: 24, QUIT: 25,
  PATH: 65, PATHS: 66, MAP: 67, MAPS: 68, TOPOLOGY: 69, CONFIG: 70, BLACKLIST: 71, DEVICES: 72, WILDCARDS: 73,
  ALL: 74, DAEMON: 75, FMT: 76, RAW: 77, STATUS: 78, STATS: 79, JSON: 80, LOCAL: 81, GROUP: 82, KEY: 83,
} as const;
export type KwCode = (typeof Kw)[keyof typeof Kw];

interface Keyword {
  word: string;
  code: KwCode;
  hasParam: boolean;
}

/** In load_keys() order: prefix matching and the usage text's alias lists depend on it. */
export const KEYWORDS: readonly Keyword[] = [
  ['list', Kw.LIST], ['show', Kw.LIST], ['add', Kw.ADD], ['remove', Kw.DEL], ['del', Kw.DEL],
  ['switch', Kw.SWITCH], ['switchgroup', Kw.SWITCH], ['suspend', Kw.SUSPEND], ['resume', Kw.RESUME],
  ['reinstate', Kw.REINSTATE], ['fail', Kw.FAIL], ['resize', Kw.RESIZE], ['reset', Kw.RESET], ['reload', Kw.RELOAD],
  ['forcequeueing', Kw.FORCEQ], ['disablequeueing', Kw.DISABLEQ], ['restorequeueing', Kw.RESTOREQ],
  ['paths', Kw.PATHS], ['maps', Kw.MAPS], ['multipaths', Kw.MAPS], ['path', Kw.PATH, true], ['map', Kw.MAP, true],
  ['multipath', Kw.MAP, true], ['group', Kw.GROUP, true], ['reconfigure', Kw.RECONFIGURE], ['daemon', Kw.DAEMON],
  ['status', Kw.STATUS], ['stats', Kw.STATS], ['topology', Kw.TOPOLOGY], ['config', Kw.CONFIG],
  ['blacklist', Kw.BLACKLIST], ['devices', Kw.DEVICES], ['raw', Kw.RAW], ['wildcards', Kw.WILDCARDS],
  ['quit', Kw.QUIT], ['exit', Kw.QUIT], ['shutdown', Kw.SHUTDOWN], ['getprstatus', Kw.GETPRSTATUS],
  ['setprstatus', Kw.SETPRSTATUS], ['unsetprstatus', Kw.UNSETPRSTATUS], ['format', Kw.FMT, true], ['json', Kw.JSON],
  ['getprkey', Kw.GETPRKEY], ['setprkey', Kw.SETPRKEY], ['unsetprkey', Kw.UNSETPRKEY], ['key', Kw.KEY, true],
  ['local', Kw.LOCAL], ['setmarginal', Kw.SETMARGINAL], ['unsetmarginal', Kw.UNSETMARGINAL], ['all', Kw.ALL],
].map(([word, code, hasParam]) => ({ word: word as string, code: code as KwCode, hasParam: hasParam === true }));

/** Handler names as in cli_handlers.c; the typed command layer maps them. */
export type HandlerName =
  | 'cli_list_paths' | 'cli_list_paths_fmt' | 'cli_list_paths_raw' | 'cli_list_path' | 'cli_list_maps'
  | 'cli_list_status' | 'cli_list_daemon' | 'cli_list_maps_status' | 'cli_list_maps_stats' | 'cli_list_maps_fmt'
  | 'cli_list_maps_raw' | 'cli_list_maps_topology' | 'cli_list_maps_json' | 'cli_list_map_topology'
  | 'cli_list_map_fmt' | 'cli_list_map_json' | 'cli_list_config_local' | 'cli_list_config' | 'cli_list_blacklist'
  | 'cli_list_devices' | 'cli_list_wildcards' | 'cli_reset_maps_stats' | 'cli_reset_map_stats' | 'cli_add_path'
  | 'cli_del_path' | 'cli_add_map' | 'cli_del_map' | 'cli_del_maps' | 'cli_switch_group' | 'cli_reconfigure'
  | 'cli_reconfigure_all' | 'cli_suspend' | 'cli_resume' | 'cli_resize' | 'cli_reload' | 'cli_reassign'
  | 'cli_reinstate' | 'cli_fail' | 'cli_disable_queueing' | 'cli_restore_queueing' | 'cli_disable_all_queueing'
  | 'cli_restore_all_queueing' | 'cli_quit' | 'cli_shutdown' | 'cli_getprstatus' | 'cli_setprstatus'
  | 'cli_unsetprstatus' | 'cli_force_no_daemon_q' | 'cli_restore_no_daemon_q' | 'cli_getprkey' | 'cli_setprkey'
  | 'cli_unsetprkey' | 'cli_set_marginal' | 'cli_unset_marginal' | 'cli_unset_all_marginal';

interface Handler {
  codes: readonly KwCode[];
  name: HandlerName;
}

const K = Kw;
/** In registration order (init_handler_callbacks): the usage text lists them in this order. */
export const HANDLERS: readonly Handler[] = (
  [
    [[K.LIST, K.PATHS], 'cli_list_paths'],
    [[K.LIST, K.PATHS, K.FMT], 'cli_list_paths_fmt'],
    [[K.LIST, K.PATHS, K.RAW, K.FMT], 'cli_list_paths_raw'],
    [[K.LIST, K.PATH], 'cli_list_path'],
    [[K.LIST, K.MAPS], 'cli_list_maps'],
    [[K.LIST, K.STATUS], 'cli_list_status'],
    [[K.LIST, K.DAEMON], 'cli_list_daemon'],
    [[K.LIST, K.MAPS, K.STATUS], 'cli_list_maps_status'],
    [[K.LIST, K.MAPS, K.STATS], 'cli_list_maps_stats'],
    [[K.LIST, K.MAPS, K.FMT], 'cli_list_maps_fmt'],
    [[K.LIST, K.MAPS, K.RAW, K.FMT], 'cli_list_maps_raw'],
    [[K.LIST, K.MAPS, K.TOPOLOGY], 'cli_list_maps_topology'],
    [[K.LIST, K.TOPOLOGY], 'cli_list_maps_topology'],
    [[K.LIST, K.MAPS, K.JSON], 'cli_list_maps_json'],
    [[K.LIST, K.MAP, K.TOPOLOGY], 'cli_list_map_topology'],
    [[K.LIST, K.MAP, K.FMT], 'cli_list_map_fmt'],
    [[K.LIST, K.MAP, K.RAW, K.FMT], 'cli_list_map_fmt'],
    [[K.LIST, K.MAP, K.JSON], 'cli_list_map_json'],
    [[K.LIST, K.CONFIG, K.LOCAL], 'cli_list_config_local'],
    [[K.LIST, K.CONFIG], 'cli_list_config'],
    [[K.LIST, K.BLACKLIST], 'cli_list_blacklist'],
    [[K.LIST, K.DEVICES], 'cli_list_devices'],
    [[K.LIST, K.WILDCARDS], 'cli_list_wildcards'],
    [[K.RESET, K.MAPS, K.STATS], 'cli_reset_maps_stats'],
    [[K.RESET, K.MAP, K.STATS], 'cli_reset_map_stats'],
    [[K.ADD, K.PATH], 'cli_add_path'],
    [[K.DEL, K.PATH], 'cli_del_path'],
    [[K.ADD, K.MAP], 'cli_add_map'],
    [[K.DEL, K.MAP], 'cli_del_map'],
    [[K.DEL, K.MAPS], 'cli_del_maps'],
    [[K.SWITCH, K.MAP, K.GROUP], 'cli_switch_group'],
    [[K.RECONFIGURE], 'cli_reconfigure'],
    [[K.RECONFIGURE, K.ALL], 'cli_reconfigure_all'],
    [[K.SUSPEND, K.MAP], 'cli_suspend'],
    [[K.RESUME, K.MAP], 'cli_resume'],
    [[K.RESIZE, K.MAP], 'cli_resize'],
    [[K.RELOAD, K.MAP], 'cli_reload'],
    [[K.RESET, K.MAP], 'cli_reassign'],
    [[K.REINSTATE, K.PATH], 'cli_reinstate'],
    [[K.FAIL, K.PATH], 'cli_fail'],
    [[K.DISABLEQ, K.MAP], 'cli_disable_queueing'],
    [[K.RESTOREQ, K.MAP], 'cli_restore_queueing'],
    [[K.DISABLEQ, K.MAPS], 'cli_disable_all_queueing'],
    [[K.RESTOREQ, K.MAPS], 'cli_restore_all_queueing'],
    [[K.QUIT], 'cli_quit'],
    [[K.SHUTDOWN], 'cli_shutdown'],
    [[K.GETPRSTATUS, K.MAP], 'cli_getprstatus'],
    [[K.SETPRSTATUS, K.MAP], 'cli_setprstatus'],
    [[K.UNSETPRSTATUS, K.MAP], 'cli_unsetprstatus'],
    [[K.FORCEQ, K.DAEMON], 'cli_force_no_daemon_q'],
    [[K.RESTOREQ, K.DAEMON], 'cli_restore_no_daemon_q'],
    [[K.GETPRKEY, K.MAP], 'cli_getprkey'],
    [[K.SETPRKEY, K.MAP, K.KEY], 'cli_setprkey'],
    [[K.UNSETPRKEY, K.MAP], 'cli_unsetprkey'],
    [[K.SETMARGINAL, K.PATH], 'cli_set_marginal'],
    [[K.UNSETMARGINAL, K.PATH], 'cli_unset_marginal'],
    [[K.UNSETMARGINAL, K.MAP], 'cli_unset_all_marginal'],
  ] as const
).map(([codes, name]) => ({ codes, name }));

/** The version line multipathd 0.9.4 prints in its usage text (version.h: 0x000904, date 0x0C1316). */
export const MULTIPATHD_VERSION_LINE = 'multipath-tools v0.9.4 (12/19, 2022)\n';

// --- tokenizer (alloc_strvec) ------------------------------------------------------------------

export type Token = { kind: 'quote' } | { kind: 'word'; text: string };

// isspace() in the C locale, and isascii().
const isSpace = (c: string): boolean => c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';
const isAscii = (c: string): boolean => c.charCodeAt(0) < 0x80;

/** Split a command line as multipathd does; null where alloc_strvec gives up (empty, blank, comment). */
export function tokenize(line: string): Token[] | null {
  let i = 0;
  const at = (k: number): string => line.charAt(k); // '' past the end plays C's NUL
  while (at(i) !== '' && (isSpace(at(i)) || !isAscii(at(i)))) i++;
  if (at(i) === '' || at(i) === '!' || at(i) === '#') return null;
  const tokens: Token[] = [];
  let inString = false;
  for (;;) {
    const c = at(i);
    if (c === '"' && !(inString && at(i + 1) === '"')) {
      tokens.push({ kind: 'quote' });
      inString = !inString;
      i++;
    } else if (!inString && (c === '{' || c === '}')) {
      tokens.push({ kind: 'word', text: c });
      i++;
    } else {
      let text = '';
      for (;;) {
        while (at(i) !== '' && at(i) !== '"' && (inString || (!isSpace(at(i)) && isAscii(at(i)) && !'!#{}'.includes(at(i))))) text += at(i++);
        // Inside a string, "" is a literal quote and the word goes on.
        if (inString && at(i) === '"' && at(i + 1) === '"') {
          text += '"';
          i += 2;
          continue;
        }
        break;
      }
      tokens.push({ kind: 'word', text });
    }
    while (!inString && at(i) !== '' && (isSpace(at(i)) || !isAscii(at(i)))) i++;
    if (at(i) === '' || (!inString && (at(i) === '!' || at(i) === '#'))) return tokens;
  }
}

/** find_key(): exact match, else the unique keyword the word is a prefix of; undefined otherwise. */
export function findKeyword(word: string): Keyword | undefined {
  let found: Keyword | undefined;
  for (const kw of KEYWORDS) {
    if (!kw.word.startsWith(word)) continue;
    if (kw.word.length === word.length) return kw;
    if (found) return undefined; // ambiguous prefix
    found = kw;
  }
  return found;
}

export type CmdvecError = 'ENOMEM' | 'ESRCH' | 'ENOENT' | 'EINVAL';

export interface CmdKey {
  code: KwCode;
  param?: string;
}

/** get_cmdvec(): the keyword vector of a command line, or the errno multipathd would derive. */
export function getCmdvec(line: string): { ok: true; keys: CmdKey[] } | { ok: false; error: CmdvecError } {
  const tokens = tokenize(line);
  if (tokens === null) return { ok: false, error: 'ENOMEM' };
  const keys: CmdKey[] = [];
  let pending: CmdKey | null = null;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t === undefined || t.kind === 'quote') continue;
    if (pending) {
      pending.param = t.text;
      pending = null;
      continue;
    }
    const kw = findKeyword(t.text);
    if (!kw) return { ok: false, error: i === tokens.length - 1 ? 'ESRCH' : 'ENOENT' };
    const key: CmdKey = { code: kw.code };
    keys.push(key);
    if (kw.hasParam) pending = key;
  }
  if (pending) return { ok: false, error: 'EINVAL' };
  return { ok: true, keys };
}

/** fingerprint(): codes packed verb-first into a u32; 0 (invalid) beyond 4 keywords. */
export function fingerprint(codes: readonly number[]): number {
  if (codes.length > 4) return 0;
  return codes.reduce((fp, code, i) => (fp | (code << (8 * i))) >>> 0, 0);
}

function findHandler(keys: readonly CmdKey[]): Handler | undefined {
  const fp = fingerprint(keys.map((k) => k.code));
  if (fp === 0) return undefined;
  return HANDLERS.find((h) => fingerprint(h.codes) === fp);
}

// --- usage text (genhelp_handler) --------------------------------------------------------------

/** One usage line per handler: " list|show map|multipath $map json". */
function usageLines(): string {
  let out = '';
  for (const h of HANDLERS) {
    for (const code of h.codes) {
      const kw = KEYWORDS.find((k) => k.code === code);
      if (!kw) continue;
      out += ' ' + kw.word;
      for (const alias of KEYWORDS) if (alias.code === code && alias !== kw) out += '|' + alias.word;
      if (kw.hasParam) out += ' $' + kw.word;
    }
    out += '\n';
  }
  return out;
}

const USAGE_FIRST_LINE: Record<'ENOMEM' | 'ESRCH' | 'EINVAL', string> = {
  ENOMEM: 'Not enough memory',
  ESRCH: 'not found',
  EINVAL: 'Missing argument',
};

/**
 * The reply to a command multipathd could not dispatch: "<cmd>: <why>\n", the version line,
 * "CLI commands reference:\n" and every command form. (Reproduced in full, not shortened.)
 */
export function usageReply(line: string, error: 'ENOMEM' | 'ESRCH' | 'EINVAL'): string {
  return `${line}: ${USAGE_FIRST_LINE[error]}\n` + MULTIPATHD_VERSION_LINE + 'CLI commands reference:\n' + usageLines();
}

// --- typed commands ----------------------------------------------------------------------------

export type MultipathdCommand =
  | { type: 'show-paths' }
  | { type: 'show-paths-format'; format: string }
  | { type: 'show-paths-raw'; format: string }
  | { type: 'show-path'; path: string }
  | { type: 'show-maps' }
  | { type: 'show-maps-format'; format: string }
  | { type: 'show-maps-raw'; format: string }
  | { type: 'show-maps-status' }
  | { type: 'show-maps-stats' }
  | { type: 'show-maps-json' }
  | { type: 'show-map-json'; map: string }
  /** `show map M format F` and `show map M raw format F` (one handler in 0.9.4). */
  | { type: 'show-map-format'; map: string; format: string }
  /** `show topology` and `show maps topology`. */
  | { type: 'show-topology' }
  | { type: 'show-map-topology'; map: string }
  | { type: 'show-wildcards' }
  | { type: 'fail-path'; path: string }
  | { type: 'reinstate-path'; path: string }
  | { type: 'del-path'; path: string }
  | { type: 'add-path'; path: string }
  | { type: 'getprkey'; map: string }
  /** `key` is the parameter as sent (libmpathpersist sends bare hex, e.g. "abc" or "abc:aptpl"). */
  | { type: 'setprkey'; map: string; key: string }
  | { type: 'unsetprkey'; map: string }
  | { type: 'getprstatus'; map: string }
  | { type: 'setprstatus'; map: string }
  | { type: 'unsetprstatus'; map: string }
  /** A command 0.9.4 dispatches but this model does not act on (reconfigure, suspend map, ...). */
  | { type: 'other'; handler: HandlerName; params: { path?: string; map?: string; group?: string; format?: string; key?: string } };

export type ParseOutcome =
  | { ok: true; command: MultipathdCommand }
  /** The exact reply multipathd gives for this line without running any handler. */
  | { ok: false; reply: string; reason: CmdvecError | 'EPERM' };

export interface ParseOptions {
  /** multipathd refuses everything but list/show to non-root peers (SO_PEERCRED uid != 0). Default true. */
  isRoot?: boolean;
}

/** convert_dev(): strip a leading "/dev/" (when more follows); path names map "cciss/" to "cciss!". */
export function convertDev(name: string, isPathDevice: boolean): string {
  let n = name;
  if (isPathDevice) {
    const at = n.indexOf('cciss/');
    if (at !== -1) n = n.slice(0, at + 5) + '!' + n.slice(at + 6);
  }
  return n.startsWith('/dev/') && n.length > 5 ? n.slice(5) : n;
}

/** Parse one command line (the text of one libmpathcmd frame) the way multipathd 0.9.4 does. */
export function parseCommand(line: string, options: ParseOptions = {}): ParseOutcome {
  const vec = getCmdvec(line);
  if (!vec.ok) {
    if (vec.error === 'ENOENT') return { ok: false, reply: 'fail\n', reason: 'ENOENT' };
    return { ok: false, reply: usageReply(line, vec.error), reason: vec.error };
  }
  const handler = findHandler(vec.keys);
  if (!handler) return { ok: false, reply: usageReply(line, 'EINVAL'), reason: 'EINVAL' };
  if (options.isRoot === false && vec.keys[0]?.code !== Kw.LIST) {
    return { ok: false, reply: 'permission deny: need to be root\n', reason: 'EPERM' };
  }
  const param = (code: KwCode): string => vec.keys.find((k) => k.code === code)?.param ?? '';
  const path = (): string => convertDev(param(Kw.PATH), true);
  const map = (): string => convertDev(param(Kw.MAP), false);
  const format = (): string => param(Kw.FMT);
  return { ok: true, command: typedCommand(handler, vec.keys, path, map, format, param) };
}

function typedCommand(
  handler: Handler,
  keys: readonly CmdKey[],
  path: () => string,
  map: () => string,
  format: () => string,
  param: (code: KwCode) => string,
): MultipathdCommand {
  switch (handler.name) {
    case 'cli_list_paths': return { type: 'show-paths' };
    case 'cli_list_paths_fmt': return { type: 'show-paths-format', format: format() };
    case 'cli_list_paths_raw': return { type: 'show-paths-raw', format: format() };
    case 'cli_list_path': return { type: 'show-path', path: path() };
    case 'cli_list_maps': return { type: 'show-maps' };
    case 'cli_list_maps_fmt': return { type: 'show-maps-format', format: format() };
    case 'cli_list_maps_raw': return { type: 'show-maps-raw', format: format() };
    case 'cli_list_maps_status': return { type: 'show-maps-status' };
    case 'cli_list_maps_stats': return { type: 'show-maps-stats' };
    case 'cli_list_maps_json': return { type: 'show-maps-json' };
    case 'cli_list_map_json': return { type: 'show-map-json', map: map() };
    case 'cli_list_map_fmt': return { type: 'show-map-format', map: map(), format: format() };
    case 'cli_list_maps_topology': return { type: 'show-topology' };
    case 'cli_list_map_topology': return { type: 'show-map-topology', map: map() };
    case 'cli_list_wildcards': return { type: 'show-wildcards' };
    case 'cli_fail': return { type: 'fail-path', path: path() };
    case 'cli_reinstate': return { type: 'reinstate-path', path: path() };
    case 'cli_del_path': return { type: 'del-path', path: path() };
    case 'cli_add_path': return { type: 'add-path', path: path() };
    case 'cli_getprkey': return { type: 'getprkey', map: map() };
    case 'cli_setprkey': return { type: 'setprkey', map: map(), key: param(Kw.KEY) };
    case 'cli_unsetprkey': return { type: 'unsetprkey', map: map() };
    case 'cli_getprstatus': return { type: 'getprstatus', map: map() };
    case 'cli_setprstatus': return { type: 'setprstatus', map: map() };
    case 'cli_unsetprstatus': return { type: 'unsetprstatus', map: map() };
    default: {
      const params: Extract<MultipathdCommand, { type: 'other' }>['params'] = {};
      for (const k of keys) {
        if (k.param === undefined) continue;
        if (k.code === Kw.PATH) params.path = convertDev(k.param, true);
        else if (k.code === Kw.MAP) params.map = convertDev(k.param, false);
        else if (k.code === Kw.GROUP) params.group = k.param;
        else if (k.code === Kw.FMT) params.format = k.param;
        else if (k.code === Kw.KEY) params.key = k.param;
      }
      return { type: 'other', handler: handler.name, params };
    }
  }
}

// --- replies -----------------------------------------------------------------------------------

/** Handler outcome -> the reply multipathd sends when the handler wrote nothing (default_reply). */
export const Replies = {
  ok: 'ok\n',
  fail: 'fail\n',
  timeout: 'timeout\n',
  permission: 'permission deny: need to be root\n',
} as const;

/** uxlsnr.c: a handler's own text is the reply; an empty one is replaced by "ok\n" or "fail\n". */
export function finishReply(text: string, succeeded: boolean): string {
  if (text.length > 0) return text;
  return succeeded ? Replies.ok : Replies.fail;
}

/** A key as multipathd stores it: "0x" + lowercase hex without leading zeros (get_be64 -> "%" PRIx64). */
export function canonicalPrKey(key: bigint): string {
  return '0x' + key.toString(16);
}

/**
 * parse_prkey_flags(): optional ":aptpl" suffix (any other suffix is ignored), then an optional
 * '0' and an optional 'x'/'X', then 1..16 hex digits. null when multipathd would refuse it.
 */
export function parsePrKeyParam(param: string): { key: bigint; aptpl: boolean } | null {
  let text = param;
  let aptpl = false;
  const colon = text.indexOf(':');
  if (colon !== -1) {
    aptpl = text.slice(colon + 1) === 'aptpl';
    text = text.slice(0, colon);
  }
  if (text.startsWith('0')) text = text.slice(1);
  if (text.startsWith('x') || text.startsWith('X')) text = text.slice(1);
  if (text.length === 0 || text.length > 16 || !/^[0-9a-fA-F]+$/.test(text)) return null;
  return { key: BigInt('0x' + text), aptpl };
}

/** `getprkey` reply: "none\n" or "0x<hex>[:aptpl]\n". */
export function prKeyReply(key: string | null, aptpl: boolean): string {
  if (key === null || BigInt(key) === 0n) return 'none\n';
  return `${canonicalPrKey(BigInt(key))}${aptpl ? ':aptpl' : ''}\n`;
}

/**
 * `getprstatus` reply in 0.9.4: the prflag printed with "%d" and no newline, i.e. "1" or "0".
 * (Later releases answer "set"/"unset"; the prmux client accepts both.)
 */
export function prStatusReply(registered: boolean): string {
  return registered ? '1' : '0';
}

// --- a reference executor for the simulated multipathd ----------------------------------------

export interface ExecuteOptions {
  /**
   * Whether multipath.conf says `reservation_key file`: only then can `setprkey` store a key
   * (set_prkey() re-reads the key through the configuration and fails when it differs). Default true.
   */
  prkeysFile?: boolean;
}

export interface ExecuteResult {
  reply: string;
  /** The topology after the command (a new object when it changed, else the same one). */
  topology: MpathTopology;
}

/**
 * Answer a parsed command from a topology as multipathd 0.9.4 would, without side effects beyond
 * the returned topology. Path transitions follow the lab captures: `fail path` marks the path
 * failed/faulty (and counts a path fault), `reinstate path` marks it active/ready, `del path` drops
 * it from the pathvec and its group (an emptied group disappears), `add path` of a path already in
 * a map is "ok" and of an unknown one "fail" (no udev device to discover here: the SAN layer adds
 * the path to the topology itself). Commands of kind 'other' answer "fail\n" except quit ("ok\n").
 */
export function executeCommand(topology: MpathTopology, command: MultipathdCommand, options: ExecuteOptions = {}): ExecuteResult {
  const same = (reply: string): ExecuteResult => ({ reply, topology });
  const withMap = (name: string, fn: (map: MpathMap) => ExecuteResult): ExecuteResult => {
    const map = findMap(topology, name);
    return map ? fn(map) : same(Replies.fail);
  };
  switch (command.type) {
    case 'show-paths': return same(finishReply(renderPaths(topology), true));
    case 'show-paths-format': return same(finishReply(renderPaths(topology, command.format), true));
    case 'show-paths-raw': return same(finishReply(renderPathsRaw(topology, command.format), true));
    case 'show-path': {
      const p = topology.paths.find((x) => x.dev === command.path);
      return same(p ? finishReply(renderPathState(topology, p), true) : Replies.fail);
    }
    case 'show-maps': return same(finishReply(renderMaps(topology), true));
    case 'show-maps-format': return same(finishReply(renderMaps(topology, command.format), true));
    case 'show-maps-raw': return same(finishReply(renderMapsRaw(topology, command.format), true));
    case 'show-maps-status': return same(finishReply(renderMaps(topology, MapFormats.status), true));
    case 'show-maps-stats': return same(finishReply(renderMaps(topology, MapFormats.stats), true));
    case 'show-maps-json': return same(renderMapsJson(topology));
    case 'show-map-json': return withMap(command.map, (m) => same(renderMapJson(topology, m)));
    case 'show-map-format': return withMap(command.map, (m) => same(finishReply(renderMapFormat(topology, m, command.format), true)));
    case 'show-topology': return same(finishReply(renderTopology(topology), true));
    case 'show-map-topology': return withMap(command.map, (m) => same(finishReply(renderMapTopology(topology, m), true)));
    case 'show-wildcards': return same(renderWildcards());
    case 'fail-path':
    case 'reinstate-path': {
      const p = findPathByDevOrDevT(topology, command.path);
      const owner = p ? mapOfPath(topology, p.dev) : undefined;
      if (!p || !owner) return same(Replies.fail);
      const failing = command.type === 'fail-path';
      const next = updatePath(topology, p.dev, failing ? { dmState: 'failed', checkerState: 'faulty' } : { dmState: 'active', checkerState: 'ready' });
      const counted = failing && p.dmState !== 'failed'
        ? updateMap(next, owner, { stats: { ...owner.stats, pathFaults: owner.stats.pathFaults + 1 } })
        : next;
      return { reply: Replies.ok, topology: counted };
    }
    case 'del-path': {
      if (!topology.paths.some((x) => x.dev === command.path)) return same(Replies.fail);
      return { reply: Replies.ok, topology: removePath(topology, command.path) };
    }
    case 'add-path': {
      const p = topology.paths.find((x) => x.dev === command.path);
      return same(p && mapOfPath(topology, p.dev) ? Replies.ok : Replies.fail);
    }
    case 'getprkey': return withMap(command.map, (m) => same(prKeyReply(m.reservationKey, m.reservationKeyAptpl)));
    case 'getprstatus': return withMap(command.map, (m) => same(prStatusReply(m.prRegistered)));
    case 'setprstatus':
    case 'unsetprstatus':
      return withMap(command.map, (m) => ({ reply: Replies.ok, topology: updateMap(topology, m, { prRegistered: command.type === 'setprstatus' }) }));
    case 'setprkey':
      return withMap(command.map, (m) => {
        const parsed = parsePrKeyParam(command.key);
        if (!parsed) return same(Replies.fail);
        if (options.prkeysFile === false) return same(parsed.key === 0n && m.reservationKey === null ? Replies.ok : Replies.fail);
        const key = parsed.key === 0n ? null : canonicalPrKey(parsed.key);
        return { reply: Replies.ok, topology: updateMap(topology, m, { reservationKey: key, reservationKeyAptpl: key !== null && parsed.aptpl }) };
      });
    case 'unsetprkey':
      return withMap(command.map, (m) => {
        if (options.prkeysFile === false) return same(m.reservationKey === null ? Replies.ok : Replies.fail);
        return { reply: Replies.ok, topology: updateMap(topology, m, { reservationKey: null, reservationKeyAptpl: false }) };
      });
    case 'other':
      return same(command.handler === 'cli_quit' ? Replies.ok : Replies.fail);
  }
}

/** Parse and execute one command line: the whole request/reply step of a simulated multipathd. */
export function answerCommandLine(topology: MpathTopology, line: string, options: ExecuteOptions & ParseOptions = {}): ExecuteResult {
  const parsed = parseCommand(line, options);
  if (!parsed.ok) return { reply: parsed.reply, topology };
  return executeCommand(topology, parsed.command, options);
}

function updatePath(topology: MpathTopology, dev: string, patch: Partial<MpathTopology['paths'][number]>): MpathTopology {
  return { ...topology, paths: topology.paths.map((p) => (p.dev === dev ? { ...p, ...patch } : p)) };
}

function updateMap(topology: MpathTopology, map: MpathMap, patch: Partial<MpathMap>): MpathTopology {
  const index = topology.maps.indexOf(map);
  return { ...topology, maps: topology.maps.map((m, i) => (i === index ? { ...m, ...patch } : m)) };
}

function removePath(topology: MpathTopology, dev: string): MpathTopology {
  return {
    paths: topology.paths.filter((p) => p.dev !== dev),
    maps: topology.maps.map((m) => {
      if (!m.pathGroups.some((g) => g.paths.includes(dev))) return m;
      const pathGroups = m.pathGroups.map((g) => ({ ...g, paths: g.paths.filter((d) => d !== dev) })).filter((g) => g.paths.length > 0);
      return { ...m, pathGroups };
    }),
  };
}
