// The daemon's stderr log lines: "prmux: <level>: <message> k=v ...", one line per event, filtered by
// the qemu-pr-helper verbosity flags (-q errors only, default warnings, -v info, -vv debug).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLineLogger, formatLogLine } from '../../src/serve/stderr-logger.js';

function emitAll(verbosity: number): string[] {
  const lines: string[] = [];
  const log = createLineLogger(verbosity, (l) => lines.push(l));
  log.debug('d');
  log.info('i');
  log.warn('w');
  log.error('e');
  return lines;
}

test('verbosity filters levels: 0 (-q) errors, 1 (default) +warnings, 2 (-v) +info, 3 (-vv) +debug', () => {
  assert.deepEqual(emitAll(0), ['prmux: error: e']);
  assert.deepEqual(emitAll(1), ['prmux: warn: w', 'prmux: error: e']);
  assert.deepEqual(emitAll(2), ['prmux: info: i', 'prmux: warn: w', 'prmux: error: e']);
  assert.deepEqual(emitAll(3), ['prmux: debug: d', 'prmux: info: i', 'prmux: warn: w', 'prmux: error: e']);
});

test('verbosity outside 0..3 is clamped: -vvvv is debug, below 0 is still errors', () => {
  assert.deepEqual(emitAll(7), emitAll(3));
  assert.deepEqual(emitAll(-1), ['prmux: error: e']);
});

test('line format: level and message, then k=v fields in insertion order', () => {
  assert.equal(formatLogLine('warn', 'path down'), 'prmux: warn: path down');
  assert.equal(formatLogLine('info', 'listening', {}), 'prmux: info: listening');
  assert.equal(formatLogLine('info', 'PR command', { target: 'sda', status: 2, ok: false, backend: null }), 'prmux: info: PR command target=sda status=2 ok=false backend=null');
  const lines: string[] = [];
  createLineLogger(3, (l) => lines.push(l)).debug('x', { a: 1, b: 'two' });
  assert.deepEqual(lines, ['prmux: debug: x a=1 b=two']);
});

test('values that would not read back as one token are JSON-quoted', () => {
  const line = formatLogLine('error', 'failed', { error: 'Cannot run on sda: path is down', empty: '', eq: 'a=b', quote: 'say "hi"', tab: 'a\tb', nl: 'first\nsecond' });
  assert.equal(
    line,
    'prmux: error: failed error="Cannot run on sda: path is down" empty="" eq="a=b" quote="say \\"hi\\"" tab="a\\tb" nl="first\\nsecond"',
  );
  // One event, one line, whatever the values hold.
  assert.ok(!line.includes('\n'));
});

test('bigint, Error, objects and undefined values', () => {
  assert.equal(formatLogLine('info', 'key', { key: 0x123456789abcdef0n }), `prmux: info: key key=${0x123456789abcdef0n.toString()}`);
  assert.equal(formatLogLine('info', 'key', { key: -1n }), 'prmux: info: key key=-1');
  // An Error is shown by its message (quoted when it has spaces), not as "{}".
  assert.equal(formatLogLine('error', 'x', { error: new Error('EPIPE') }), 'prmux: error: x error=EPIPE');
  assert.equal(formatLogLine('error', 'x', { error: new RangeError('out of range') }), 'prmux: error: x error="out of range"');
  assert.equal(formatLogLine('info', 'x', { n: 1.5, big: 1e21 }), 'prmux: info: x n=1.5 big=1e+21');
  assert.equal(formatLogLine('info', 'x', { u: undefined }), 'prmux: info: x u=null');
  // An object is its JSON, quoted as a string so the line stays k=v tokens.
  const obj = formatLogLine('info', 'x', { o: { a: 1 } });
  const m = /^prmux: info: x o=(.*)$/.exec(obj);
  assert.ok(m !== null, obj);
  assert.equal(JSON.parse(m[1]!), '{"a":1}');
  assert.equal(formatLogLine('info', 'x', { list: [1, 2] }), 'prmux: info: x list=[1,2]');
});

test('the sink gets exactly the formatted line, once per event that passes the filter', () => {
  const lines: string[] = [];
  const log = createLineLogger(1, (l) => lines.push(l));
  log.warn('slow', { ms: 1200 });
  log.info('dropped');
  log.error('bad', { why: 'x y' });
  assert.deepEqual(lines, [formatLogLine('warn', 'slow', { ms: 1200 }), formatLogLine('error', 'bad', { why: 'x y' })]);
  assert.deepEqual(lines, ['prmux: warn: slow ms=1200', 'prmux: error: bad why="x y"']);
});
