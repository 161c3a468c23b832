// The pidfile: written atomically (no temporary file left behind), refused while it names another
// live process, taken over when the process it names is gone, removed only while it names us.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, PrmuxError } from '../../src/errors.js';
import { readPidfile, removePidfile, writePidfile } from '../../src/serve/pidfile.js';

const root = mkdtempSync(join(tmpdir(), 'prmux-pidfile-'));
after(() => rmSync(root, { recursive: true, force: true }));
/** A fresh empty directory per test, so "only the pidfile is left" can be checked. */
function freshDir(): string {
  return mkdtempSync(join(root, 't-'));
}

/** The pid of a process that has exited and been reaped: not running any more. */
function deadPid(): number {
  const r = spawnSync('true');
  assert.equal(r.status, 0);
  assert.ok(typeof r.pid === 'number' && r.pid > 0);
  return r.pid;
}

test('writePidfile writes "<pid>\\n" and leaves no temporary file in the directory', () => {
  const d = freshDir();
  const p = join(d, 'prmux.pid');
  writePidfile(p, 12345);
  assert.equal(readFileSync(p, 'utf8'), '12345\n');
  assert.deepEqual(readdirSync(d), ['prmux.pid']);
  assert.equal(readPidfile(p), 12345);
  // Rewriting with the same pid is fine (a restart of the same process image, -d re-exec).
  writePidfile(p, 12345);
  assert.deepEqual(readdirSync(d), ['prmux.pid']);
});

test('writePidfile refuses a pidfile naming another live process, and leaves it as it was', () => {
  const d = freshDir();
  const p = join(d, 'qemu-pr-helper.pid');
  // Our parent (the test runner) is alive; a writer with another pid must not take its pidfile.
  writeFileSync(p, `${process.ppid}\n`);
  assert.throws(
    () => writePidfile(p, process.pid),
    (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.CONFIG && e.message.startsWith('Cannot write pidfile') && e.message.includes(String(process.ppid)),
  );
  assert.equal(readFileSync(p, 'utf8'), `${process.ppid}\n`);
  assert.deepEqual(readdirSync(d), ['qemu-pr-helper.pid']);
  // Same with our own (live) pid in the file and a different writer pid.
  writeFileSync(p, String(process.pid));
  assert.throws(() => writePidfile(p, deadPid()), (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.CONFIG);
  assert.equal(readFileSync(p, 'utf8'), String(process.pid));
});

test('writePidfile takes over a stale pidfile (its process is gone) and an unreadable one', () => {
  const d = freshDir();
  const p = join(d, 'prmux.pid');
  const stale = deadPid();
  writeFileSync(p, `${stale}\n`);
  writePidfile(p, process.pid);
  assert.equal(readFileSync(p, 'utf8'), `${process.pid}\n`);
  for (const junk of ['', 'not a pid\n', '12 34\n', '-5\n']) {
    writeFileSync(p, junk);
    writePidfile(p, 777);
    assert.equal(readFileSync(p, 'utf8'), '777\n', `after ${JSON.stringify(junk)}`);
  }
  assert.deepEqual(readdirSync(d), ['prmux.pid']);
});

test('writePidfile into a directory that does not exist: a CONFIG error naming the path, nothing created', () => {
  const d = freshDir();
  const p = join(d, 'missing', 'prmux.pid');
  assert.throws(() => writePidfile(p, 1234), (e: unknown) => e instanceof PrmuxError && e.code === ErrorCode.CONFIG && e.message.includes(p));
  assert.deepEqual(readdirSync(d), []);
});

test('readPidfile: a pid with surrounding whitespace, else null', () => {
  const d = freshDir();
  const p = join(d, 'x.pid');
  assert.equal(readPidfile(p), null); // absent
  const cases: [string, number | null][] = [
    ['42\n', 42],
    ['  42 \n', 42],
    ['42', 42],
    ['', null],
    ['\n', null],
    ['4 2\n', null],
    ['42\n43\n', null],
    ['0x2a\n', null],
    ['pid 42\n', null],
  ];
  for (const [text, pid] of cases) {
    writeFileSync(p, text);
    assert.equal(readPidfile(p), pid, JSON.stringify(text));
  }
});

test('removePidfile removes the file only while it names the given pid', () => {
  const d = freshDir();
  const p = join(d, 'prmux.pid');
  writePidfile(p, 555);
  // Another process took it over (e.g. a second instance after a stale takeover): keep theirs.
  writeFileSync(p, '556\n');
  const kept = removePidfile(p, 555);
  assert.ok(kept !== null && kept.includes('556'), String(kept));
  assert.ok(existsSync(p));
  assert.equal(readFileSync(p, 'utf8'), '556\n');
  // Ours again: removed, and null says so.
  writeFileSync(p, '555\n');
  assert.equal(removePidfile(p, 555), null);
  assert.ok(!existsSync(p));
  // Already gone: a reason, not a throw.
  const gone = removePidfile(p, 555);
  assert.equal(typeof gone, 'string');
  // Unreadable content is not ours either.
  writeFileSync(p, 'garbage');
  assert.notEqual(removePidfile(p, 555), null);
  assert.ok(existsSync(p));
});
