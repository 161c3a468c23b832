import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSample } from '../support/paths.js';
import { healthy, labTopology, showPathsBlocks } from './lab-fixtures.js';
import {
  HANDLERS,
  Kw,
  answerCommandLine,
  convertDev,
  fingerprint,
  getCmdvec,
  parseCommand,
  parsePrKeyParam,
  tokenize,
  type MultipathdCommand,
} from '../../src/mpath/multipathd-cli.js';
import { PRMUX_PATHS_FORMAT, PRMUX_SHOW_PATHS_COMMAND } from '../../src/mpath/multipathd-parse.js';
import { renderMapJson } from '../../src/mpath/multipathd-format.js';
import type { MpathTopology } from '../../src/mpath/topology-model.js';

function command(line: string): MultipathdCommand {
  const r = parseCommand(line);
  assert.ok(r.ok, `${JSON.stringify(line)} should parse, got ${r.ok ? '' : JSON.stringify(r.reply.split('\n')[0])}`);
  return r.command;
}

const fp = (...codes: number[]): number => fingerprint(codes);

// --- tokenizer and keyword vector (vectors as in multipath-tools 0.9.4 tests/cli.c) -------------

test('get_cmdvec errors: ENOMEM for nothing to parse, ESRCH/ENOENT for unknown words, EINVAL for a missing parameter', () => {
  const err = (line: string): string => {
    const r = getCmdvec(line);
    return r.ok ? 'ok' : r.error;
  };
  assert.equal(err(''), 'ENOMEM');
  assert.equal(err('   '), 'ENOMEM');
  assert.equal(err('# comment'), 'ENOMEM');
  assert.equal(err('bogus'), 'ESRCH');
  assert.equal(err('s'), 'ESRCH');
  assert.equal(err('sh'), 'ESRCH', '"sh" is ambiguous: show, shutdown');
  assert.equal(err('disable queueing'), 'ESRCH', '"disable" -> disablequeueing, "queueing" unknown and last');
  assert.equal(err('queueing disable'), 'ENOENT', 'unknown word not in last position');
  assert.equal(err('sh maps'), 'ENOENT');
  assert.equal(err('show map'), 'EINVAL');
  assert.equal(err('show ma'), 'ESRCH', '"ma" is ambiguous: maps, map');
  assert.equal(err('show map xy bogus'), 'ESRCH');
});

test('get_cmdvec: prefixes, aliases and fingerprints', () => {
  const codes = (line: string): number => {
    const r = getCmdvec(line);
    assert.ok(r.ok, line);
    return fingerprint(r.keys.map((k) => k.code));
  };
  assert.equal(codes('sho'), Kw.LIST);
  assert.equal(codes('disable'), Kw.DISABLEQ);
  assert.equal(codes('sho multipaths'), fp(Kw.LIST, Kw.MAPS));
  assert.equal(codes('list maps'), fp(Kw.LIST, Kw.MAPS));
  assert.equal(codes('show list maps'), fp(Kw.LIST, Kw.LIST, Kw.MAPS));
  assert.equal(codes('maps show '), fp(Kw.MAPS, Kw.LIST));
  assert.equal(codes('show maps list json raw'), 0, 'more than 4 keywords');
  assert.equal(codes('q q q q'), fp(Kw.QUIT, Kw.QUIT, Kw.QUIT, Kw.QUIT));
  assert.equal(codes('show map xy form %h raw'), fp(Kw.LIST, Kw.MAP, Kw.FMT, Kw.RAW));
  assert.equal(fp(Kw.LIST, Kw.PATHS, Kw.RAW, Kw.FMT), Kw.LIST | (Kw.PATHS << 8) | (Kw.RAW << 16) | (Kw.FMT << 24));
});

test('tokenize: quotes keep blanks, "" is a quote, braces split, ! and # end the line', () => {
  const words = (line: string): string[] => (tokenize(line) ?? []).map((t) => (t.kind === 'quote' ? '<q>' : t.text));
  assert.deepEqual(words('show path "x y"'), ['show', 'path', '<q>', 'x y', '<q>']);
  assert.deepEqual(words('show path "2"""'), ['show', 'path', '<q>', '2"', '<q>']);
  assert.deepEqual(words('show path "2""'), ['show', 'path', '<q>', '2"']);
  assert.deepEqual(words('a{b}c'), ['a', '{', 'b', '}', 'c']);
  assert.deepEqual(words('show paths # trailing'), ['show', 'paths']);
  assert.deepEqual(words('show paths raw format "%d # %t"'), ['show', 'paths', 'raw', 'format', '<q>', '%d # %t', '<q>']);
  assert.deepEqual(words('\tshow\t\tpaths\n'), ['show', 'paths']);
  assert.equal(tokenize('! bang'), null);
});

// --- typed commands ----------------------------------------------------------------------------

test('parseCommand: every command the simulated multipathd answers, with aliases', () => {
  const cases: Array<[string, MultipathdCommand]> = [
    ['show paths', { type: 'show-paths' }],
    ['list paths', { type: 'show-paths' }],
    ['sho paths', { type: 'show-paths' }],
    ['show paths format "%d %t"', { type: 'show-paths-format', format: '%d %t' }],
    ['show paths raw format "%d %t"', { type: 'show-paths-raw', format: '%d %t' }],
    ["show paths raw format %d", { type: 'show-paths-raw', format: '%d' }],
    ['show path /dev/sda', { type: 'show-path', path: 'sda' }],
    ['show maps', { type: 'show-maps' }],
    ['show multipaths', { type: 'show-maps' }],
    ['show maps raw format "%n %w %d %N %t %Q %x"', { type: 'show-maps-raw', format: '%n %w %d %N %t %Q %x' }],
    ['show maps format "%n %S"', { type: 'show-maps-format', format: '%n %S' }],
    ['show maps json', { type: 'show-maps-json' }],
    ['list multipaths json', { type: 'show-maps-json' }],
    ['show map mpatha json', { type: 'show-map-json', map: 'mpatha' }],
    ['show multipath /dev/dm-0 json', { type: 'show-map-json', map: 'dm-0' }],
    ['show map mpatha raw format "%n"', { type: 'show-map-format', map: 'mpatha', format: '%n' }],
    ['show topology', { type: 'show-topology' }],
    ['show maps topology', { type: 'show-topology' }],
    ['show map mpatha topology', { type: 'show-map-topology', map: 'mpatha' }],
    ['show maps status', { type: 'show-maps-status' }],
    ['show maps stats', { type: 'show-maps-stats' }],
    ['show wildcards', { type: 'show-wildcards' }],
    ['fail path sda', { type: 'fail-path', path: 'sda' }],
    ['reinstate path 8:0', { type: 'reinstate-path', path: '8:0' }],
    ['del path sda', { type: 'del-path', path: 'sda' }],
    ['remove path sda', { type: 'del-path', path: 'sda' }],
    ['add path sda', { type: 'add-path', path: 'sda' }],
    ['getprkey map mpatha', { type: 'getprkey', map: 'mpatha' }],
    ['setprkey map mpatha key 0x123', { type: 'setprkey', map: 'mpatha', key: '0x123' }],
    ['setprkey multipath mpatha key 123:aptpl', { type: 'setprkey', map: 'mpatha', key: '123:aptpl' }],
    ['unsetprkey map mpatha', { type: 'unsetprkey', map: 'mpatha' }],
    ['getprstatus map mpatha', { type: 'getprstatus', map: 'mpatha' }],
    ['setprstatus map mpatha', { type: 'setprstatus', map: 'mpatha' }],
    ['unsetprstatus map mpatha', { type: 'unsetprstatus', map: 'mpatha' }],
    ['reconfigure', { type: 'other', handler: 'cli_reconfigure', params: {} }],
    ['switchgroup map mpatha group 2', { type: 'other', handler: 'cli_switch_group', params: { map: 'mpatha', group: '2' } }],
  ];
  for (const [line, expected] of cases) assert.deepEqual(command(line), expected, line);
});

test('the command prmux sends to list paths parses to its raw format', () => {
  assert.deepEqual(command(PRMUX_SHOW_PATHS_COMMAND), { type: 'show-paths-raw', format: PRMUX_PATHS_FORMAT });
});

test('word order matters: a known vector with no handler answers the usage text', () => {
  const r = parseCommand('show paths format "%d" raw');
  assert.equal(r.ok, false);
  assert.ok(!r.ok && r.reply.startsWith('show paths format "%d" raw: Missing argument\n'));
  assert.equal(parseCommand('map mpatha getprstatus').ok, false);
});

test('usage reply: first line per error, version line, one line per handler with aliases and $params', () => {
  const r = parseCommand('show bogus');
  assert.ok(!r.ok);
  const lines = r.reply.split('\n');
  assert.equal(lines[0], 'show bogus: not found');
  assert.equal(lines[1], 'multipath-tools v0.9.4 (12/19, 2022)');
  assert.equal(lines[2], 'CLI commands reference:');
  assert.equal(lines.length, 3 + HANDLERS.length + 1);
  assert.equal(lines.at(-1), '');
  assert.deepEqual(lines.slice(3, 7), [' list|show paths', ' list|show paths format $format', ' list|show paths raw format $format', ' list|show path $path']);
  for (const expected of [
    ' list|show map|multipath $map json',
    ' list|show maps|multipaths json',
    ' remove|del path $path',
    ' switch|switchgroup map|multipath $map group $group',
    ' quit|exit',
    ' setprkey map|multipath $map key $key',
    ' getprstatus map|multipath $map',
    ' unsetmarginal map|multipath $map',
    ' forcequeueing daemon',
  ]) assert.ok(lines.includes(expected), expected);
  const missing = parseCommand('show');
  assert.ok(!missing.ok && missing.reply.startsWith('show: Missing argument\nmultipath-tools v0.9.4'));
  const empty = parseCommand('');
  assert.ok(!empty.ok && empty.reply.startsWith(': Not enough memory\nmultipath-tools v0.9.4'));
  const enoent = parseCommand('show bogus "x"');
  assert.deepEqual(enoent, { ok: false, reply: 'fail\n', reason: 'ENOENT' });
});

test('non-root peers may only list', () => {
  assert.deepEqual(parseCommand('fail path sda', { isRoot: false }), { ok: false, reply: 'permission deny: need to be root\n', reason: 'EPERM' });
  assert.equal(parseCommand('show paths', { isRoot: false }).ok, true);
});

test('convertDev and parsePrKeyParam follow convert_dev / parse_prkey_flags', () => {
  assert.equal(convertDev('/dev/sda', true), 'sda');
  assert.equal(convertDev('/dev/', true), '/dev/');
  assert.equal(convertDev('/dev/cciss/c0d0', true), 'cciss!c0d0');
  assert.equal(convertDev('/dev/mapper/mpatha', false), 'mapper/mpatha');
  assert.deepEqual(parsePrKeyParam('777'), { key: 0x777n, aptpl: false });
  assert.deepEqual(parsePrKeyParam('0x777'), { key: 0x777n, aptpl: false });
  assert.deepEqual(parsePrKeyParam('0XABC:aptpl'), { key: 0xabcn, aptpl: true });
  assert.deepEqual(parsePrKeyParam('x5'), { key: 5n, aptpl: false });
  assert.deepEqual(parsePrKeyParam('00'), { key: 0n, aptpl: false });
  assert.deepEqual(parsePrKeyParam('5:other'), { key: 5n, aptpl: false });
  assert.deepEqual(parsePrKeyParam('ffffffffffffffff'), { key: 0xffffffffffffffffn, aptpl: false });
  for (const bad of ['', '0', '0x', 'zz', '0x1ffffffffffffffff', '12 3']) assert.equal(parsePrKeyParam(bad), null, bad);
});

// --- reference executor ----------------------------------------------------------------------

/** Run lines in order; return the replies and the final topology. */
function session(start: MpathTopology, lines: string[], options = {}): { replies: string[]; topology: MpathTopology } {
  let topology = start;
  const replies = lines.map((line) => {
    const r = answerCommandLine(topology, line, options);
    topology = r.topology;
    return r.reply;
  });
  return { replies, topology };
}

test('fail path / reinstate path reproduce path_failure.txt section 1', () => {
  const blocks = showPathsBlocks('path_failure.txt');
  const s = session(labTopology([healthy('sda', 1, 8), healthy('sdb', 2, 8)]), ['fail path sda', 'show paths']);
  assert.deepEqual(s.replies, ['ok\n', blocks[0]]);
  assert.equal(s.topology.maps[0]?.stats.pathFaults, 1);
  const back = session(s.topology, ['reinstate path /dev/sda', 'show paths raw format "%d %t %T"', 'fail path 8:16', 'fail path sdz', 'reinstate path sdz']);
  assert.deepEqual(back.replies, ['ok\n', 'sda active ready\nsdb active ready\n', 'ok\n', 'fail\n', 'fail\n']);
});

test('del path / add path', () => {
  const blocks = showPathsBlocks('path_failure.txt');
  const s = session(labTopology([healthy('sda', 1, 8), healthy('sdb', 2, 8)]), ['del path sda', 'show paths', 'del path sda', 'add path sdb', 'add path sda', 'show map mpatha raw format "%N"']);
  // 0.9.4 serves "show map M raw format" with the padded handler: "paths" header width 5.
  assert.deepEqual(s.replies, ['ok\n', blocks[6], 'fail\n', 'ok\n', 'fail\n', '1    \n']);
  assert.deepEqual(s.topology.maps[0]?.pathGroups.map((g) => g.paths), [['sdb']]);
  const gone = session(s.topology, ['del path sdb', 'show paths', 'show topology', 'show maps json']);
  assert.equal(gone.replies[0], 'ok\n');
  assert.equal(gone.replies[1], 'ok\n', 'an empty listing answers the default "ok"');
  assert.ok(gone.replies[2]?.startsWith('create: mpatha ('));
  assert.ok(gone.replies[3]?.includes('"path_groups": []'));
});

test('persistent reservation bookkeeping: getprkey/setprkey/unsetprkey, getprstatus/setprstatus/unsetprstatus', () => {
  const s = session(labTopology([healthy('sda', 1, 5)]), [
    'getprkey map mpatha',
    'setprkey map mpatha key 777',
    'getprkey map dm-0',
    'setprkey map mpatha key 0x0000000000000777:aptpl',
    'getprkey map mpatha',
    'setprkey map mpatha key 0xZZ',
    'setprkey map mpatha key 0',
    'unsetprkey map mpatha',
    'getprkey map mpatha',
    'getprstatus map mpatha',
    'setprstatus map mpatha',
    'getprstatus map mpatha',
    'unsetprstatus map mpatha',
    'getprstatus map mpatha',
    'getprkey map mpathz',
    'setprstatus map mpathz',
    'getprstatus map dm-7',
  ]);
  assert.deepEqual(s.replies, ['none\n', 'ok\n', '0x777\n', 'ok\n', '0x777:aptpl\n', 'fail\n', 'fail\n', 'ok\n', 'none\n', '0', 'ok\n', '1', 'ok\n', '0', 'fail\n', 'fail\n', 'fail\n']);
  const noFile = session(labTopology([healthy('sda', 1, 5)]), ['setprkey map mpatha key 777', 'unsetprkey map mpatha', 'getprkey map mpatha'], { prkeysFile: false });
  assert.deepEqual(noFile.replies, ['fail\n', 'ok\n', 'none\n']);
});

test('show commands through the executor', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  const s = session(t, ['show maps json', 'show map mpatha json', 'show map mpathz json', 'show paths', 'show path sdb', 'quit', 'reconfigure', 'show bogus']);
  assert.equal(s.replies[0], readSample('multipathd_show_maps_json.txt'));
  assert.equal(s.replies[1], renderMapJson(t, t.maps[0]!));
  assert.equal(s.replies[2], 'fail\n');
  assert.equal(s.replies[3], readSample('multipathd_show_paths.txt'));
  assert.equal(s.replies[4], 'running\n');
  assert.equal(s.replies[5], 'ok\n');
  assert.equal(s.replies[6], 'fail\n');
  assert.ok(s.replies[7]?.startsWith('show bogus: not found\n'));
  assert.equal(s.topology, t, 'read-only commands keep the same topology object');
  assert.equal(session({ maps: [], paths: [] }, ['show maps', 'show topology']).replies.join(''), 'ok\nok\n');
});
