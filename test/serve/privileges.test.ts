// The -u/-g privilege drop of `prmux serve`: the pure parts (capability masks, /proc status
// parsing, user/group resolution) in-process, and the real switch + re-exec in a child process
// (test/serve/fixtures/drop-fixture.ts), checked through /proc of every thread of the new image.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Capability,
  KEPT_CAPABILITIES,
  capabilityMask,
  capabilityNames,
  credentialMismatches,
  parseProcStatus,
  resolveCredentials,
  type IdentityDatabase,
  type ProcessCredentials,
} from '../../src/serve/privileges.js';
import { ErrorCode, isPrmuxError } from '../../src/errors.js';

const fixture = fileURLToPath(new URL('./fixtures/drop-fixture.js', import.meta.url));
const RAWIO_ADMIN = (1n << 17n) | (1n << 21n);

// ---------------------------------------------------------------------------------------------
// Pure parts.

test('capabilityMask: bit per capability, case-insensitive, unknown names refused', () => {
  assert.equal(capabilityMask(KEPT_CAPABILITIES), RAWIO_ADMIN);
  assert.equal(capabilityMask(['cap_sys_rawio']), 1n << 17n);
  assert.equal(capabilityMask([]), 0n);
  assert.equal(capabilityMask(['CAP_CHECKPOINT_RESTORE', 'CAP_CHOWN']), (1n << 40n) | 1n);
  assert.equal(capabilityMask(Object.keys(Capability)), (1n << 41n) - 1n);
  assert.throws(() => capabilityMask(['CAP_SYS_RAWIO', 'CAP_NOPE']), (e) => isPrmuxError(e, ErrorCode.CONFIG) && /CAP_NOPE/.test(e.message));
  assert.throws(() => capabilityMask(['SYS_RAWIO']), (e) => isPrmuxError(e, ErrorCode.CONFIG));
  assert.deepEqual(capabilityNames(RAWIO_ADMIN | (1n << 50n)), ['CAP_SYS_RAWIO', 'CAP_SYS_ADMIN', 'cap_50']);
});

test('parseProcStatus on this process /proc/self/status', () => {
  const text = readFileSync('/proc/self/status', 'utf8');
  const st = parseProcStatus(text);
  assert.equal(st.uid[0], process.getuid!());
  assert.equal(st.uid[1], process.geteuid!());
  assert.equal(st.gid[0], process.getgid!());
  assert.equal(st.uid.length, 4);
  // Node's getgroups() always includes the effective gid; /proc lists only the supplementary groups.
  const sorted = (ids: Iterable<number>) => [...new Set(ids)].sort((a, b) => a - b);
  assert.deepEqual(sorted([...st.groups, st.gid[1]!]), sorted(process.getgroups!()));
  assert.equal(typeof st.name, 'string');
  const eff = /^CapEff:\s*([0-9a-f]+)$/m.exec(text)![1]!;
  assert.equal(st.capEff, BigInt(`0x${eff}`));
  const bnd = /^CapBnd:\s*([0-9a-f]+)$/m.exec(text)![1]!;
  assert.equal(st.capBnd, BigInt(`0x${bnd}`));
});

const crafted = [
  'Name:\tprmux',
  'Umask:\t0022',
  'State:\tS (sleeping)',
  'Uid:\t65534\t65534\t65534\t65534',
  'Gid:\t65534\t65534\t65534\t65534',
  'FDSize:\t64',
  'Groups:\t',
  'CapInh:\t0000000000220000',
  'CapPrm:\t0000000000220000',
  'CapEff:\t0000000000220000',
  'CapBnd:\t0000000000220000',
  'CapAmb:\t0000000000220000',
  'NoNewPrivs:\t0',
  'Seccomp:\t0',
  '',
].join('\n');

test('parseProcStatus on crafted text: values, empty groups, old kernels, malformed lines', () => {
  const st = parseProcStatus(crafted);
  assert.deepEqual(st, {
    name: 'prmux',
    uid: [65534, 65534, 65534, 65534],
    gid: [65534, 65534, 65534, 65534],
    groups: [],
    capInh: RAWIO_ADMIN,
    capPrm: RAWIO_ADMIN,
    capEff: RAWIO_ADMIN,
    capBnd: RAWIO_ADMIN,
    capAmb: RAWIO_ADMIN,
    noNewPrivs: 0,
  });
  assert.deepEqual(parseProcStatus(crafted.replace('Groups:\t', 'Groups:\t4 24 27 ')).groups, [4, 24, 27]);
  // Before Linux 4.3 there is no ambient set, and before 4.10 no NoNewPrivs line.
  const old = parseProcStatus(crafted.replace(/^CapAmb:.*\n/m, '').replace(/^NoNewPrivs:.*\n/m, ''));
  assert.equal(old.capAmb, 0n);
  assert.equal('noNewPrivs' in old, false);
  const bad: [string, string][] = [
    [crafted.replace(/^CapEff:.*\n/m, ''), 'CapEff'],
    [crafted.replace('CapPrm:\t0000000000220000', 'CapPrm:\tzz'), 'CapPrm'],
    [crafted.replace('CapBnd:\t0000000000220000', 'CapBnd:\t00000000002200000'), 'CapBnd'],
    [crafted.replace('Uid:\t65534\t65534\t65534\t65534', 'Uid:\t65534\t65534\t65534'), 'Uid'],
    [crafted.replace('Gid:\t65534', 'Gid:\t-1'), 'Gid'],
    [crafted.replace('Groups:\t', 'Groups:\t4 x'), 'Groups'],
    [crafted.replace('NoNewPrivs:\t0', 'NoNewPrivs:\t2'), 'NoNewPrivs'],
  ];
  for (const [text, field] of bad) {
    assert.throws(() => parseProcStatus(text), (e) => isPrmuxError(e, ErrorCode.DECODE) && (e as unknown as { field: string }).field === field, field);
  }
});

test('credentialMismatches names each difference', () => {
  const good = parseProcStatus(crafted);
  const expected = { credentials: { uid: 65534, gid: 65534 }, keepCaps: KEPT_CAPABILITIES };
  assert.deepEqual(credentialMismatches(good, expected), []);
  assert.deepEqual(credentialMismatches({ ...good, groups: [65534] }, expected), []);
  const bad: ProcessCredentials = { ...good, uid: [65534, 0, 65534, 65534], groups: [0], capAmb: 0n, capBnd: (1n << 41n) - 1n };
  const out = credentialMismatches(bad, expected);
  assert.equal(out.length, 4, out.join('; '));
  assert.match(out.join('; '), /uids 65534,0,65534,65534.*supplementary groups 0.*CapAmb is \(empty\).*CapBnd is CAP_CHOWN/);
});

const fakeDb: IdentityDatabase = {
  userByName: (n) => ({ alice: { uid: 1000, gid: 1000 }, nobody: { uid: 65534, gid: 65534 }, '42': { uid: 4242, gid: 7 } })[n] ?? null,
  userById: (uid) => (uid === 65534 ? { uid, gid: 65534 } : uid === 1000 ? { uid, gid: 1000 } : null),
  groupByName: (n) => ({ nogroup: 65534, kvm: 36 })[n] ?? null,
  current: () => ({ uid: 0, gid: 0 }),
};

test('resolveCredentials: names first, then numbers, primary group without -g (qemu-pr-helper -u/-g)', () => {
  assert.deepEqual(resolveCredentials('alice', undefined, fakeDb), { uid: 1000, gid: 1000 });
  assert.deepEqual(resolveCredentials('alice', 'kvm', fakeDb), { uid: 1000, gid: 36 });
  assert.deepEqual(resolveCredentials('nobody', 'nogroup', fakeDb), { uid: 65534, gid: 65534 });
  // A name that looks like a number is a name first, as getpwnam() is tried first.
  assert.deepEqual(resolveCredentials('42', undefined, fakeDb), { uid: 4242, gid: 7 });
  assert.deepEqual(resolveCredentials('65534', '36', fakeDb), { uid: 65534, gid: 36 });
  // A numeric user with a passwd entry gets its primary group; one without keeps the current gid.
  assert.deepEqual(resolveCredentials('65534', undefined, fakeDb), { uid: 65534, gid: 65534 });
  assert.deepEqual(resolveCredentials('3000', undefined, fakeDb), { uid: 3000, gid: 0 });
  assert.deepEqual(resolveCredentials(undefined, 'kvm', fakeDb), { uid: 0, gid: 36 });
  assert.deepEqual(resolveCredentials(undefined, undefined, fakeDb), { uid: 0, gid: 0 });
  assert.deepEqual(resolveCredentials('4294967294', undefined, fakeDb), { uid: 4294967294, gid: 0 });
  for (const u of ['bob', '', '-1', '4294967295', '1e3', ' 5', '0x10']) {
    assert.throws(() => resolveCredentials(u, undefined, fakeDb), (e) => isPrmuxError(e, ErrorCode.CONFIG) && e.message.includes(`invalid user '${u}'`), u);
  }
  for (const g of ['wheel', '', '-1', '4294967295']) {
    assert.throws(() => resolveCredentials('alice', g, fakeDb), (e) => isPrmuxError(e, ErrorCode.CONFIG) && e.message.includes(`invalid group '${g}'`), g);
  }
});

/** nobody/nogroup by name when this system has them (as 65534), else the numbers. */
function nobodyAndNogroup(): { user: string; group: string } {
  const has = (file: string, name: string) => readFileSync(file, 'utf8').split('\n').some((l) => l.startsWith(`${name}:`) && l.split(':')[2] === '65534');
  return { user: has('/etc/passwd', 'nobody') ? 'nobody' : '65534', group: has('/etc/group', 'nogroup') ? 'nogroup' : '65534' };
}

test('resolveCredentials against the system database (getpwnam_r/getgrnam_r through koffi)', () => {
  assert.deepEqual(resolveCredentials('root', 'root'), { uid: 0, gid: 0 });
  const { user, group } = nobodyAndNogroup();
  assert.deepEqual(resolveCredentials(user, group), { uid: 65534, gid: 65534 });
  if (user === 'nobody') {
    const primary = Number(readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('nobody:'))!.split(':')[3]);
    assert.deepEqual(resolveCredentials('nobody', undefined), { uid: 65534, gid: primary });
  }
  assert.throws(() => resolveCredentials('prmux-no-such-user', undefined), (e) => isPrmuxError(e, ErrorCode.CONFIG) && /invalid user 'prmux-no-such-user'/.test(e.message));
  assert.throws(() => resolveCredentials('root', 'prmux-no-such-group'), (e) => isPrmuxError(e, ErrorCode.CONFIG) && /invalid group 'prmux-no-such-group'/.test(e.message));
});

// ---------------------------------------------------------------------------------------------
// The real switch, in a child process.

function whyCannotDrop(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  const st = parseProcStatus(readFileSync('/proc/self/status', 'utf8'));
  const need = capabilityMask(['CAP_SETPCAP', 'CAP_SETUID', 'CAP_SETGID']);
  if ((st.capEff & need) !== need) return `missing ${capabilityNames(need & ~st.capEff).join(', ')}`;
  if ((st.capBnd & RAWIO_ADMIN) !== RAWIO_ADMIN || (st.capPrm & RAWIO_ADMIN) !== RAWIO_ADMIN) return 'CAP_SYS_RAWIO/CAP_SYS_ADMIN not available to keep';
  return null;
}
const skipReason = whyCannotDrop();

const dir = mkdtempSync(join(tmpdir(), 'prmux-priv-'));
chmodSync(dir, 0o755); // the dropped image must reach the socket and the public file
writeFileSync(join(dir, 'public'), 'readable by anyone\n', { mode: 0o644 });
writeFileSync(join(dir, 'secret'), 'root only\n', { mode: 0o600 });
after(() => rmSync(dir, { recursive: true, force: true }));

interface Run { code: number | null; signal: string | null; pid: number; stdout: string; stderr: string }

function runFixture(options: Record<string, unknown>): Promise<Run> {
  rmSync(join(dir, 's.sock'), { force: true });
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  env['UV_THREADPOOL_SIZE'] = '4';
  const child = spawn(process.execPath, [fixture, JSON.stringify({ dir, ...options })], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    // A bound, not a timing assertion: a wedged child is killed and the test fails.
    const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', (e) => {
      clearTimeout(guard);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, pid: child.pid!, stdout, stderr });
    });
  });
}

interface HexCreds { tid?: string; name?: string; uid: number[]; gid: number[]; groups: number[]; capInh: string; capPrm: string; capEff: string; capBnd: string; capAmb: string; noNewPrivs?: number }
interface Report {
  pid: number;
  threadsBefore: number;
  main: HexCreds;
  threads: HexCreds[];
  fd: number;
  listening: boolean;
  acceptedConnection: boolean;
  fibmapOnPool: string;
  umountOnPool: string;
  umountOnMain: string;
  secret: string;
}

function report(run: Run): Report {
  assert.equal(run.code, 0, `fixture failed: ${run.stderr}`);
  const lines = run.stdout.trim().split('\n');
  assert.equal(lines.length, 1, run.stdout);
  return JSON.parse(lines[0]!) as Report;
}

const hex = (n: bigint) => `0x${n.toString(16)}`;

test('drop to nobody/nogroup keeping CAP_SYS_RAWIO+CAP_SYS_ADMIN: every thread of the re-executed image', { skip: skipReason ?? false }, async () => {
  const { user, group } = nobodyAndNogroup();
  const run = await runFixture({ user, group });
  const r = report(run);
  // The same process (execve, not a child), which was multi-threaded when it switched.
  assert.equal(r.pid, run.pid);
  assert.ok(r.threadsBefore >= 5, `first image had ${r.threadsBefore} threads`);
  // main + 4 pool threads at least (UV_THREADPOOL_SIZE=4, pool started before the snapshot).
  assert.ok(r.threads.length >= 5, `re-executed image has ${r.threads.length} threads`);
  for (const t of [r.main, ...r.threads]) {
    const who = `thread ${t.tid ?? 'main'} (${t.name ?? '?'})`;
    assert.deepEqual(t.uid, [65534, 65534, 65534, 65534], who);
    assert.deepEqual(t.gid, [65534, 65534, 65534, 65534], who);
    assert.ok(t.groups.every((g) => g === 65534), `${who}: groups ${t.groups.join(',')}`);
    for (const set of ['capEff', 'capPrm', 'capAmb', 'capInh', 'capBnd'] as const) assert.equal(t[set], hex(RAWIO_ADMIN), `${who}: ${set}`);
  }
  // The listening socket crossed execve() and still accepts.
  assert.equal(r.listening, true);
  assert.equal(r.acceptedConnection, true);
  // The capabilities are effective on pool threads (where SG_IO runs) and on the main thread:
  // FIBMAP needs CAP_SYS_RAWIO (EPERM without), umount2 of a non-mount point needs CAP_SYS_ADMIN.
  assert.notEqual(r.fibmapOnPool, 'EPERM');
  assert.equal(r.umountOnPool, 'EINVAL');
  assert.equal(r.umountOnMain, 'EINVAL');
  // No CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH any more: a root-only file is out of reach.
  assert.equal(r.secret, 'EACCES');
});

test('the capability probes fail when no capability is kept (control for the test above)', { skip: skipReason ?? false }, async () => {
  const { user, group } = nobodyAndNogroup();
  const r = report(await runFixture({ user, group, caps: 'none' }));
  for (const t of [r.main, ...r.threads]) {
    assert.deepEqual(t.uid, [65534, 65534, 65534, 65534]);
    for (const set of ['capEff', 'capPrm', 'capAmb', 'capInh', 'capBnd'] as const) assert.equal(t[set], '0x0', set);
  }
  assert.equal(r.fibmapOnPool, 'EPERM');
  assert.equal(r.umountOnPool, 'EPERM');
  assert.equal(r.umountOnMain, 'EPERM');
  assert.equal(r.secret, 'EACCES');
  assert.equal(r.acceptedConnection, true);
});

test('a user that does not exist: clear error, exit 1, no exec', async () => {
  const run = await runFixture({ user: 'prmux-no-such-user', group: 'nogroup' });
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /ERR_PRMUX_CONFIG: Cannot drop privileges: invalid user 'prmux-no-such-user'/);
  assert.equal(run.stdout, '');
});

test('a failing step is named with its errno: an fd to keep that is not open', { skip: skipReason ?? false }, async () => {
  const run = await runFixture({ user: '65534', group: '65534', badFd: 987 });
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /ERR_PRMUX_CONFIG: Cannot drop privileges: fcntl\(F_GETFD\) on fd 987 to keep failed: EBADF \(errno 9\)/);
  assert.equal(run.stdout, '');
});

test('a failing execve() after the switch: named with its errno, exit 1', { skip: skipReason ?? false }, async () => {
  const run = await runFixture({ user: '65534', group: '65534', execPath: join(dir, 'no-such-node') });
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /Cannot drop privileges: execve\(.*no-such-node\) failed: ENOENT \(errno 2\)/);
  assert.equal(run.stdout, '');
});
