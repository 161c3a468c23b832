// Renders multipathd 0.9.4 replies from a topology model, byte for byte: `show paths`, `show paths
// [raw] format`, `show maps`, `show maps [raw] format`, `show map M [raw] format`, `show maps json`,
// `show map M json`, `show topology`, `show map M topology`, `show path P`, `show wildcards`.
//
// Behaviour matched (multipath-tools 0.9.4 libmultipath/print.c and multipathd/cli_handlers.c, read
// for facts; this is an independent implementation):
// - A format is literal text with `%c` wildcards looked up in per-object tables (path, map, group).
//   An unknown wildcard prints nothing and swallows both characters (so "%%" prints nothing); the
//   text after the last wildcard is copied and a newline ends the line.
// - "Pretty" output (show paths / show maps, and their `format` forms) pads each field with spaces
//   to a column width: the largest byte length of that field over every object (capped at 255,
//   fieldwidth_t), and at least the header's length when a header is printed. Padding applies to
//   the last column too, hence trailing blanks. `raw` output has neither header nor padding.
// - A pretty listing with no rows prints nothing at all (not even the header); the CLI layer then
//   answers "ok\n" for the empty reply.
// - `show topology` uses the multipath -ll tree with path columns sized over the whole pathvec
//   (no header minimum); its map line starts with "<action>: " when the map's last action was one
//   that prints (create, reload, ...), as multipathd keeps that action after domap().
// - JSON is printed from fixed text templates: 3-space indentation, `"key" : value`, elements
//   joined as `},{`, arrays closed with `}]`. String values are not escaped (multipathd does not).
// Pure: no Node APIs.

import { utf8Length } from './mpathcmd-framing.js';
import {
  type MpathMap,
  type MpathPath,
  type MpathPathGroup,
  type MpathTopology,
  activePathCount,
  mapName,
  mapOfPath,
  pathsOfMap,
} from './topology-model.js';

/** Formats multipathd itself uses (print.c / print.h). */
export const PathFormats = {
  /** `show paths` (PRINT_PATH_CHECKER). */
  checker: '%i %d %D %p %t %T %o %C',
  /** Path lines of the topology tree (PRINT_PATH_INDENT). */
  indent: '%i %d %D %t %T %o',
  /** multipath -v3 path listing (PRINT_PATH_LONG). */
  long: '%w %i %d %D %p %t %T %s %o',
} as const;

export const MapFormats = {
  /** `show maps` (PRINT_MAP_NAMES). */
  names: '%n %d %w',
  /** `show maps status` (PRINT_MAP_STATUS). */
  status: '%n %F %Q %N %t %r',
  /** `show maps stats` (PRINT_MAP_STATS). */
  stats: '%n %0 %1 %2 %3 %4',
  /** Second line of a topology entry (PRINT_MAP_PROPS). */
  props: "size=%S features='%f' hwhandler='%h' wp=%r",
} as const;

/** Group line of a topology entry (PRINT_PG_INDENT). */
export const GROUP_INDENT_FORMAT = "policy='%s' prio=%p status=%t";

/** The widest a column gets (fieldwidth_t is an unsigned char). */
const MAX_FIELD_WIDTH = 255;
/** Length of the next_check bar. */
const PROGRESS_LEN = 10;

interface Wildcard<T> {
  wildcard: string;
  header: string;
  print: (object: T) => string;
}

/** What a path field printer needs: the path and the map it belongs to (pp->mpp), if any. */
interface PathCtx {
  path: MpathPath;
  map: MpathMap | undefined;
}

interface MapCtx {
  topology: MpathTopology;
  map: MpathMap;
}

interface GroupCtx {
  map: MpathMap;
  group: MpathPathGroup;
}

// --- value printers --------------------------------------------------------------------------

/**
 * snprint_size: sectors halved to KiB in single-precision float, divided by 1024 while >= 1024 (up to
 * P), printed "%.*f" with one decimal below 10 and none above; printf rounds exact ties to even.
 */
export function formatSize(sectors: number): string {
  let s = Math.fround(Math.floor(sectors / 2));
  const units = 'KMGTP';
  let unit = 0;
  while (s >= 1024 && unit < units.length - 1) {
    s = Math.fround(s / 1024);
    unit++;
  }
  return printfFixed(s, s < 10 ? 1 : 0) + units.charAt(unit);
}

/** printf("%.Nf") for N in {0,1} of a float value; x*10 of a float32 is exact in a double. */
function printfFixed(value: number, digits: 0 | 1): string {
  const scaled = digits === 1 ? value * 10 : value;
  let n = Math.floor(scaled);
  const frac = scaled - n;
  if (frac > 0.5 || (frac === 0.5 && n % 2 === 1)) n += 1;
  return digits === 1 ? `${Math.floor(n / 10)}.${n % 10}` : String(n);
}

/** snprint_progress: "XXXX...... cur/total"; with total 0 only " cur/total". */
export function formatProgress(current: number, total: number): string {
  let bar = '';
  if (total > 0) {
    // Integer division as in C; a tick above the interval cannot happen in multipathd (clamped here).
    const filled = Math.min(PROGRESS_LEN, Math.max(0, Math.trunc((PROGRESS_LEN * current) / total)));
    bar = 'X'.repeat(filled) + '.'.repeat(PROGRESS_LEN - filled);
  }
  return `${bar} ${current}/${total}`;
}

/** snprint_path_lunhex: the LUN in SCSI 8-byte LUN format (int_to_scsilun word swap), 16 hex digits. */
export function formatLunHex(lun: number | null): string {
  if (lun === null) return '0xffffffffffffffff'; // SCSI_INVALID_LUN for a path without address
  const l = BigInt(lun);
  const m16 = 0xffffn;
  const swapped = ((l & m16) << 48n) | (((l >> 16n) & m16) << 32n) | (((l >> 32n) & m16) << 16n) | ((l >> 48n) & m16);
  return '0x' + swapped.toString(16).padStart(16, '0');
}

function formatFailback(map: MpathMap): string {
  const f = map.failback;
  if (f.mode === 'immediate') return 'immediate';
  if (f.mode === 'followover') return 'followover';
  if (f.mode === 'deferred' && f.tick > 0) return formatProgress(f.tick, f.seconds);
  return '-';
}

function formatQueueing(ctx: MapCtx): string {
  const { map } = ctx;
  const npr = map.noPathRetry;
  if (npr === 'fail') return 'off';
  if (npr === 'queue') return 'on';
  if (npr === 'undef') return '-';
  if (npr > 0) {
    if (map.retryTick > 0) return `${map.retryTick} sec`;
    if (activePathCount(ctx.topology, map) > 0) return `${npr} chk`;
    return 'off';
  }
  return '';
}

const ACTION_WORDS: Partial<Record<MpathMap['action'], string>> = {
  reject: 'reject',
  rename: 'rename',
  reload: 'reload',
  create: 'create',
  switchpg: 'switchpg',
};

/** First member path (groups in order) with a non-empty value, as the map's vend/prod/rev printers do. */
function firstMember(ctx: MapCtx, pick: (p: MpathPath) => boolean): MpathPath | undefined {
  return pathsOfMap(ctx.topology, ctx.map).find(pick);
}

// --- wildcard tables (print.c mpd[], pd[], pgd[]: same letters, headers and order) --------------

export const MAP_WILDCARDS: readonly Wildcard<MapCtx>[] = [
  { wildcard: 'n', header: 'name', print: (c) => mapName(c.map) },
  { wildcard: 'w', header: 'uuid', print: (c) => c.map.wwid },
  { wildcard: 'd', header: 'sysfs', print: (c) => (c.map.dm ? `dm-${c.map.dm.minor}` : 'undef') },
  { wildcard: 'F', header: 'failback', print: (c) => formatFailback(c.map) },
  { wildcard: 'Q', header: 'queueing', print: formatQueueing },
  { wildcard: 'N', header: 'paths', print: (c) => String(activePathCount(c.topology, c.map)) },
  { wildcard: 'r', header: 'write_prot', print: (c) => (c.map.dm ? (c.map.dm.readOnly ? 'ro' : 'rw') : 'undef') },
  { wildcard: 't', header: 'dm-st', print: (c) => (c.map.dm ? (c.map.dm.suspended ? 'suspend' : 'active') : 'undef') },
  { wildcard: 'S', header: 'size', print: (c) => formatSize(c.map.sizeSectors) },
  { wildcard: 'f', header: 'features', print: (c) => c.map.features },
  { wildcard: 'x', header: 'failures', print: (c) => String(c.map.stats.mapFailures) },
  { wildcard: 'h', header: 'hwhandler', print: (c) => c.map.hwhandler },
  { wildcard: 'A', header: 'action', print: (c) => ACTION_WORDS[c.map.action] ?? '' },
  { wildcard: '0', header: 'path_faults', print: (c) => String(c.map.stats.pathFaults) },
  { wildcard: '1', header: 'switch_grp', print: (c) => String(c.map.stats.switchGroup) },
  { wildcard: '2', header: 'map_loads', print: (c) => String(c.map.stats.mapLoads) },
  { wildcard: '3', header: 'total_q_time', print: (c) => String(c.map.stats.totalQueueingTime) },
  { wildcard: '4', header: 'q_timeouts', print: (c) => String(c.map.stats.queueingTimeouts) },
  {
    wildcard: 's',
    header: 'vend/prod/rev',
    print: (c) => {
      const p = firstMember(c, (x) => x.vendor !== '' && x.product !== '');
      return p ? `${p.vendor},${p.product}` : '##,##';
    },
  },
  { wildcard: 'v', header: 'vend', print: (c) => firstMember(c, (x) => x.vendor !== '')?.vendor ?? '##' },
  { wildcard: 'p', header: 'prod', print: (c) => firstMember(c, (x) => x.product !== '')?.product ?? '##' },
  { wildcard: 'e', header: 'rev', print: (c) => firstMember(c, (x) => x.revision !== '')?.revision ?? '##' },
  { wildcard: 'G', header: 'foreign', print: () => '--' },
  { wildcard: 'g', header: 'vpd page data', print: (c) => firstMember(c, (x) => x.vpdData !== null)?.vpdData ?? '[undef]' },
];

export const PATH_WILDCARDS: readonly Wildcard<PathCtx>[] = [
  { wildcard: 'w', header: 'uuid', print: (c) => c.path.wwid },
  {
    wildcard: 'i',
    header: 'hcil',
    print: (c) => (c.path.hcil ? `${c.path.hcil.host}:${c.path.hcil.channel}:${c.path.hcil.target}:${c.path.hcil.lun}` : '#:#:#:#'),
  },
  { wildcard: 'd', header: 'dev', print: (c) => (c.path.dev === '' ? '-' : c.path.dev) },
  { wildcard: 'D', header: 'dev_t', print: (c) => (c.path.dev === '' ? '#:#' : c.path.devT) },
  { wildcard: 't', header: 'dm_st', print: (c) => c.path.dmState },
  { wildcard: 'o', header: 'dev_st', print: (c) => (c.map ? c.path.devState : 'unknown') },
  { wildcard: 'T', header: 'chk_st', print: (c) => (c.map ? c.path.checkerState : 'undef') },
  { wildcard: 's', header: 'vend/prod/rev', print: (c) => `${c.path.vendor},${c.path.product}` },
  { wildcard: 'c', header: 'checker', print: (c) => (c.path.checkerName === '' ? '(null)' : c.path.checkerName) },
  { wildcard: 'C', header: 'next_check', print: (c) => (c.map ? formatProgress(c.path.checkerTick, c.path.checkerInterval) : 'orphan') },
  { wildcard: 'p', header: 'pri', print: (c) => String(c.path.priority) },
  { wildcard: 'S', header: 'size', print: (c) => formatSize(c.path.sizeSectors) },
  { wildcard: 'z', header: 'serial', print: (c) => c.path.serial },
  { wildcard: 'M', header: 'marginal_st', print: (c) => (c.path.marginal ? 'marginal' : 'normal') },
  { wildcard: 'm', header: 'multipath', print: (c) => (c.map ? (c.map.alias ?? '[unknown]') : '[orphan]') },
  { wildcard: 'N', header: 'host WWNN', print: (c) => c.path.hostWwnn ?? '[undef]' },
  { wildcard: 'n', header: 'target WWNN', print: (c) => c.path.targetWwnn ?? '[undef]' },
  { wildcard: 'R', header: 'host WWPN', print: (c) => c.path.hostWwpn ?? '[undef]' },
  { wildcard: 'r', header: 'target WWPN', print: (c) => c.path.targetWwpn ?? '[undef]' },
  { wildcard: 'a', header: 'host adapter', print: (c) => c.path.hostAdapter ?? '[undef]' },
  { wildcard: 'G', header: 'foreign', print: () => '--' },
  { wildcard: 'g', header: 'vpd page data', print: (c) => c.path.vpdData ?? '[undef]' },
  { wildcard: '0', header: 'failures', print: (c) => String(c.path.failures) },
  { wildcard: 'P', header: 'protocol', print: (c) => c.path.protocol },
  { wildcard: 'I', header: 'init_st', print: (c) => c.path.initState },
  { wildcard: 'L', header: 'LUN hex', print: (c) => formatLunHex(c.path.hcil ? c.path.hcil.lun : null) },
];

export const GROUP_WILDCARDS: readonly Wildcard<GroupCtx>[] = [
  { wildcard: 's', header: 'selector', print: (c) => c.map.selector },
  { wildcard: 'p', header: 'pri', print: (c) => String(c.group.priority) },
  { wildcard: 't', header: 'dm_st', print: (c) => c.group.status },
  { wildcard: 'M', header: 'marginal_st', print: (c) => (c.group.marginal ? 'marginal' : 'normal') },
];

function lookup<T>(table: readonly Wildcard<T>[], wildcard: string): Wildcard<T> | undefined {
  return table.find((w) => w.wildcard === wildcard);
}

// --- format expansion --------------------------------------------------------------------------

type Widths = ReadonlyMap<string, number>;

/**
 * Expand one format line. `field(wc)` returns the text for a known wildcard, undefined for an unknown
 * one; `widths` (pretty output) pads a known field to its column width. A trailing lone '%' is
 * dropped (multipathd would read past the string there).
 */
function expand(format: string, field: (wc: string) => string | undefined, widths?: Widths): string {
  let out = '';
  let from = 0;
  for (let at = format.indexOf('%', from); at !== -1; at = format.indexOf('%', from)) {
    out += format.slice(from, at);
    const wc = format.charAt(at + 1);
    if (wc === '') return out + '\n';
    from = at + 2;
    const value = field(wc);
    if (value === undefined) continue;
    out += value;
    const width = widths?.get(wc);
    const len = utf8Length(value);
    if (width !== undefined && len < width) out += ' '.repeat(width - len);
  }
  return out + format.slice(from) + '\n';
}

function wildcardsIn(format: string): string[] {
  const out: string[] = [];
  for (let at = format.indexOf('%'); at !== -1 && at + 1 < format.length; at = format.indexOf('%', at + 2)) out.push(format.charAt(at + 1));
  return out;
}

/** Column widths of `format`'s fields over `objects`, starting from the header lengths or 0. */
function layout<T>(table: readonly Wildcard<T>[], format: string, objects: readonly T[], withHeader: boolean): Map<string, number> {
  const widths = new Map<string, number>();
  for (const wc of wildcardsIn(format)) {
    const entry = lookup(table, wc);
    if (!entry || widths.has(wc)) continue;
    let width = withHeader ? utf8Length(entry.header) : 0;
    for (const o of objects) width = Math.max(width, Math.min(utf8Length(entry.print(o)), MAX_FIELD_WIDTH));
    widths.set(wc, width);
  }
  return widths;
}

function headerLine<T>(table: readonly Wildcard<T>[], format: string, widths: Widths): string {
  return expand(format, (wc) => lookup(table, wc)?.header, widths);
}

function line<T>(table: readonly Wildcard<T>[], format: string, object: T, widths?: Widths): string {
  return expand(format, (wc) => lookup(table, wc)?.print(object), widths);
}

function pathContexts(topology: MpathTopology): PathCtx[] {
  return topology.paths.map((path) => ({ path, map: mapOfPath(topology, path.dev) }));
}

function mapContexts(topology: MpathTopology): MapCtx[] {
  return topology.maps.map((map) => ({ topology, map }));
}

// --- show paths / show maps --------------------------------------------------------------------

/** `show paths` (default format) and `show paths format "<fmt>"`: header plus padded rows; "" when no path. */
export function renderPaths(topology: MpathTopology, format: string = PathFormats.checker): string {
  const ctxs = pathContexts(topology);
  if (ctxs.length === 0) return '';
  const widths = layout(PATH_WILDCARDS, format, ctxs, true);
  return headerLine(PATH_WILDCARDS, format, widths) + ctxs.map((c) => line(PATH_WILDCARDS, format, c, widths)).join('');
}

/** `show paths raw format "<fmt>"`: one unpadded line per path, no header; "" when no path. */
export function renderPathsRaw(topology: MpathTopology, format: string): string {
  return pathContexts(topology)
    .map((c) => line(PATH_WILDCARDS, format, c))
    .join('');
}

/** `show path <dev>` prints only the path's dev_st ("%o"), unpadded. */
export function renderPathState(topology: MpathTopology, path: MpathPath): string {
  return line(PATH_WILDCARDS, '%o', { path, map: mapOfPath(topology, path.dev) });
}

/** `show maps` (default "%n %d %w") and `show maps format "<fmt>"`: header plus padded rows; "" when no map. */
export function renderMaps(topology: MpathTopology, format: string = MapFormats.names): string {
  const ctxs = mapContexts(topology);
  if (ctxs.length === 0) return '';
  const widths = layout(MAP_WILDCARDS, format, ctxs, true);
  return headerLine(MAP_WILDCARDS, format, widths) + ctxs.map((c) => line(MAP_WILDCARDS, format, c, widths)).join('');
}

/** `show maps raw format "<fmt>"`: one unpadded line per map, no header. */
export function renderMapsRaw(topology: MpathTopology, format: string): string {
  return mapContexts(topology)
    .map((c) => line(MAP_WILDCARDS, format, c))
    .join('');
}

/**
 * `show map <m> format "<fmt>"` and, in 0.9.4, also `show map <m> raw format "<fmt>"` (both reach
 * cli_list_map_fmt): one line for the map, padded to widths computed over all maps with headers,
 * but without a header line.
 */
export function renderMapFormat(topology: MpathTopology, map: MpathMap, format: string): string {
  const widths = layout(MAP_WILDCARDS, format, mapContexts(topology), true);
  return line(MAP_WILDCARDS, format, { topology, map }, widths);
}

// --- topology ----------------------------------------------------------------------------------

export interface TopologyOptions {
  /**
   * Which paths size the path columns: 'pathvec' (multipathd show topology / show map topology:
   * every known path) or 'map' (multipath -ll: the map's own paths). Default 'pathvec'.
   */
  widthScope?: 'pathvec' | 'map';
}

/** One map as the `multipath -ll` tree (verbosity 2). */
export function renderMapTopology(topology: MpathTopology, map: MpathMap, options: TopologyOptions = {}): string {
  const scope = options.widthScope ?? 'pathvec';
  const members = scope === 'map' ? pathsOfMap(topology, map).map((path) => ({ path, map: map as MpathMap | undefined })) : pathContexts(topology);
  const widths = layout(PATH_WILDCARDS, PathFormats.indent, members, false);
  return renderOneTopology(topology, map, widths);
}

/** `show topology` (and `show maps topology`): every map's tree, back to back; "" when no map. */
export function renderTopology(topology: MpathTopology, options: TopologyOptions = {}): string {
  if ((options.widthScope ?? 'pathvec') === 'map') return topology.maps.map((m) => renderMapTopology(topology, m, options)).join('');
  const widths = layout(PATH_WILDCARDS, PathFormats.indent, pathContexts(topology), false);
  return topology.maps.map((m) => renderOneTopology(topology, m, widths)).join('');
}

function renderOneTopology(topology: MpathTopology, map: MpathMap, widths: Widths): string {
  const ctx: MapCtx = { topology, map };
  // snprint_multipath_style at verbosity 2: action prefix, name, "(wwid)" when the name differs.
  const showAction = map.action !== 'nothing' && map.action !== 'undef' && map.action !== 'impossible';
  const showWwid = mapName(map) !== map.wwid;
  const style = `${showAction ? '%A: ' : ''}%n${showWwid ? ' (%w)' : ''} %d %s`;
  let out = line(MAP_WILDCARDS, style, ctx) + line(MAP_WILDCARDS, MapFormats.props, ctx);
  map.pathGroups.forEach((group, j) => {
    const lastGroup = j === map.pathGroups.length - 1;
    out += `${lastGroup ? '`' : '|'}-+- ` + line(GROUP_WILDCARDS, GROUP_INDENT_FORMAT, { map, group });
    const members = group.paths.flatMap((dev) => {
      const path = topology.paths.find((p) => p.dev === dev);
      return path ? [path] : [];
    });
    members.forEach((path, i) => {
      const lastPath = i === members.length - 1;
      out += `${lastGroup ? ' ' : '|'} ${lastPath ? '`' : '|'}- ` + line(PATH_WILDCARDS, PathFormats.indent, { path, map }, widths);
    });
  });
  return out;
}

// --- JSON --------------------------------------------------------------------------------------
// Templates as multipathd prints them (print.c PRINT_JSON_*). Each is expanded like any format,
// so a template's last line gets the newline the expansion appends.

const JSON_INDENT = '   ';
const JSON_HEADER = '{\n   "major_version": 0,\n   "minor_version": 1,\n';
const JSON_MAP = [
  '{',
  '      "name" : "%n",',
  '      "uuid" : "%w",',
  '      "sysfs" : "%d",',
  '      "failback" : "%F",',
  '      "queueing" : "%Q",',
  '      "paths" : %N,',
  '      "write_prot" : "%r",',
  '      "dm_st" : "%t",',
  '      "features" : "%f",',
  '      "hwhandler" : "%h",',
  '      "action" : "%A",',
  '      "path_faults" : %0,',
  '      "vend" : "%v",',
  '      "prod" : "%p",',
  '      "rev" : "%e",',
  '      "switch_grp" : %1,',
  '      "map_loads" : %2,',
  '      "total_q_time" : %3,',
  '      "q_timeouts" : %4,',
].join('\n');
const JSON_GROUP = ['{', '         "selector" : "%s",', '         "pri" : %p,', '         "dm_st" : "%t",', '         "marginal_st" : "%M",'].join('\n');
const JSON_PATH = [
  '{',
  '            "dev" : "%d",',
  '            "dev_t" : "%D",',
  '            "dm_st" : "%t",',
  '            "dev_st" : "%o",',
  '            "chk_st" : "%T",',
  '            "checker" : "%c",',
  '            "pri" : %p,',
  '            "host_wwnn" : "%N",',
  '            "target_wwnn" : "%n",',
  '            "host_wwpn" : "%R",',
  '            "target_wwpn" : "%r",',
  '            "host_adapter" : "%a",',
  '            "lun_hex" : "%L",',
  '            "marginal_st" : "%M"',
].join('\n');

/** Closing brace of an element at `depth` indents: "}," between elements, "}" after the last. */
function elementEnd(depth: number, last: boolean): string {
  return JSON_INDENT.repeat(depth) + (last ? '}' : '},');
}

function mapJsonFields(topology: MpathTopology, map: MpathMap, last: boolean): string {
  let out = line(MAP_WILDCARDS, JSON_MAP, { topology, map }) + JSON_INDENT.repeat(2) + '"path_groups": [';
  map.pathGroups.forEach((group, i) => {
    out += line(GROUP_WILDCARDS, JSON_GROUP, { map, group }) + `${JSON_INDENT.repeat(3)}"group" : ${i + 1},\n` + JSON_INDENT.repeat(3) + '"paths": [';
    const members = group.paths.flatMap((dev) => {
      const path = topology.paths.find((p) => p.dev === dev);
      return path ? [path] : [];
    });
    members.forEach((path, j) => {
      out += line(PATH_WILDCARDS, JSON_PATH, { path, map }) + elementEnd(3, j === members.length - 1);
    });
    out += ']\n' + elementEnd(2, i === map.pathGroups.length - 1);
  });
  return out + ']\n' + elementEnd(1, last);
}

/** `show maps json`. */
export function renderMapsJson(topology: MpathTopology): string {
  let out = JSON_HEADER + JSON_INDENT + '"maps": [';
  topology.maps.forEach((map, i) => {
    out += mapJsonFields(topology, map, i === topology.maps.length - 1);
  });
  return out + ']\n' + '}\n';
}

/** `show map <m> json`. */
export function renderMapJson(topology: MpathTopology, map: MpathMap): string {
  return JSON_HEADER + JSON_INDENT + '"map":' + mapJsonFields(topology, map, true) + '\n' + '}\n';
}

// --- show wildcards ----------------------------------------------------------------------------

/** `show wildcards` (snprint_wildcards). */
export function renderWildcards(): string {
  const list = (table: readonly Wildcard<never>[]): string => table.map((w) => `%${w.wildcard}  ${w.header}\n`).join('');
  return (
    'multipath format wildcards:\n' +
    list(MAP_WILDCARDS as readonly Wildcard<never>[]) +
    '\npath format wildcards:\n' +
    list(PATH_WILDCARDS as readonly Wildcard<never>[]) +
    '\npathgroup format wildcards:\n' +
    list(GROUP_WILDCARDS as readonly Wildcard<never>[])
  );
}
