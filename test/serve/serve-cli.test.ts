// `prmux serve` as the process libvirt, systemd and admins start: qemu-pr-helper's flags, systemd
// socket activation, -d, pidfile, socket file mode/group, stale and live sockets, and the drain on
// SIGTERM with a command in flight. Real processes, real sockets, real fds; the device side is a
// simulated SAN host (and regular files for the kernel path).

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PrHelperClient } from '../../src/socket/pr-helper-client.js';
import { closeFd, listenUnix } from '../../src/socket/unix-fd.js';
import { encodePrInCdb } from '../../src/scsi/cdb.js';
import { ScsiStatus } from '../../src/scsi/constants.js';
import { type SanProcess, cliPath, startSan } from '../support/san-process.js';

interface Run {
  readonly child: ChildProcess;
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
}

function run(args: string[], opts: { env?: Record<string, string>; shellActivation?: boolean; listenFd?: number } = {}): Run {
  const env = { ...process.env, ...opts.env };
  const stdio: ('ignore' | 'pipe' | number)[] = ['ignore', 'pipe', 'pipe'];
  if (opts.listenFd !== undefined) stdio.push(opts.listenFd);
  // systemd sets LISTEN_PID to the service's pid after fork; `exec` in sh keeps the shell's pid.
  const child = opts.shellActivation
    ? spawn('sh', ['-c', `LISTEN_PID=$$ exec "$0" "$@"`, process.execPath, cliPath, ...args], { env, stdio })
    : spawn(process.execPath, [cliPath, ...args], { env, stdio });
  const stderr: string[] = [];
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => stderr.push(...d.split('\n').filter((l) => l !== '')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stderr, exited };
}

async function until(what: string, cond: () => boolean, r?: Run, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${r ? `; stderr: ${r.stderr.join(' | ')}` : ''}`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

async function listening(r: Run): Promise<void> {
  await until('the listening line', () => r.stderr.some((l) => l.startsWith('prmux serve: listening on')), r);
}

let san: SanProcess;
let dir: string;
const dev = (name: string) => join(san.dir, 'host1', 'dev', name);
const readKeysCdb = encodePrInCdb({ serviceAction: 0, allocationLength: 8192 });

async function readKeys(socket: string, device = dev('sda')): Promise<number> {
  const c = await PrHelperClient.connect(socket);
  const fd = openSync(device, 'r');
  try {
    return (await c.command(readKeysCdb, fd)).status;
  } finally {
    closeSync(fd);
    c.close();
  }
}

before(async () => {
  san = await startSan(['--hosts', '1', '--luns', '1', '--paths', '2']);
  dir = mkdtempSync(join(tmpdir(), 'prmux-serve-cli-'));
});
after(async () => {
  await san.stop();
  rmSync(san.dir, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
});

describe('prmux serve: command line', () => {
  it('bare `prmux` takes the same flags as `prmux serve`; -h lists qemu-pr-helper\'s flags; -V prints a version', async () => {
    const h = run(['-h']);
    let out = '';
    h.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    assert.equal(await h.exited, 0);
    for (const flag of ['-k, --socket', '-f, --pidfile', '-d, --daemon', '-u, --user', '-g, --group', '-v, --verbose', '-q, --quiet', '-T, --trace']) assert.ok(out.includes(flag), `help lists ${flag}`);
    const v = run(['-V']);
    let version = '';
    v.child.stdout!.on('data', (d: Buffer) => (version += d.toString()));
    assert.equal(await v.exited, 0);
    assert.match(version, /^\d+\.\d+\.\d+/);

    const socket = join(dir, 'bare.sock');
    const r = run(['-k', socket, '--san', join(san.dir, 'host1'), '-T', 'enable=pr_*', '-v']);
    await listening(r);
    assert.equal(await readKeys(socket), ScsiStatus.GOOD);
    r.child.kill('SIGTERM');
    assert.equal(await r.exited, 0);
  });

  it('refuses a relative socket path and unknown flags with exit 1 or 2 and a message', async () => {
    const r = run(['serve', '-k', 'relative.sock']);
    assert.equal(await r.exited, 1);
    assert.ok(r.stderr.some((l) => /must be absolute/.test(l)), r.stderr.join('\n'));
    const u = run(['serve', '--no-such-flag']);
    assert.notEqual(await u.exited, 0);
  });

  it('pidfile: written when -f is given, names the server, removed with the socket file on SIGTERM (exit 0)', async () => {
    const socket = join(dir, 'pid.sock');
    const pidfile = join(dir, 'prmux.pid');
    const r = run(['serve', '-k', socket, '-f', pidfile, '--san', join(san.dir, 'host1')]);
    await listening(r);
    assert.equal(readFileSync(pidfile, 'utf8'), `${r.child.pid}\n`);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temporary files left by the atomic write');
    assert.equal(statSync(socket).mode & 0o777, 0o600, 'socket mode 0600 by default');
    r.child.kill('SIGHUP');
    assert.equal(await r.exited, 0);
    assert.equal(existsSync(pidfile), false);
    assert.equal(existsSync(socket), false);
  });

  it('refuses a pidfile that names another running process, and leaves it alone', async () => {
    const pidfile = join(dir, 'held.pid');
    writeFileSync(pidfile, `${process.pid}\n`);
    const r = run(['serve', '-k', join(dir, 'held.sock'), '-f', pidfile]);
    assert.equal(await r.exited, 1);
    assert.ok(r.stderr.some((l) => l.includes(`names process ${process.pid}`)), r.stderr.join('\n'));
    assert.equal(readFileSync(pidfile, 'utf8'), `${process.pid}\n`);
    assert.equal(existsSync(join(dir, 'held.sock')), false, 'the socket it bound is removed again');
  });

  it('replaces a stale socket file but never takes over a live server\'s socket', async () => {
    const socket = join(dir, 'stale.sock');
    closeFd(listenUnix(socket, 1)); // a socket file nobody serves any more
    const first = run(['serve', '-k', socket, '--san', join(san.dir, 'host1')]);
    await listening(first);
    const second = run(['serve', '-k', socket]);
    assert.equal(await second.exited, 1);
    assert.ok(second.stderr.some((l) => /live server/.test(l)), second.stderr.join('\n'));
    assert.equal(await readKeys(socket), ScsiStatus.GOOD, 'the first server still serves');
    first.child.kill('SIGTERM');
    assert.equal(await first.exited, 0);
  });

  it('--socket-group gives the socket to a group with mode 0660; --socket-mode sets the mode', async () => {
    const socket = join(dir, 'group.sock');
    const r = run(['serve', '-k', socket, '--socket-group', '1', '--state-dir', join(dir, 'state-group')]);
    await listening(r);
    const st = statSync(socket);
    assert.equal(st.gid, 1);
    assert.equal(st.mode & 0o777, 0o660);
    r.child.kill('SIGTERM');
    assert.equal(await r.exited, 0);
    const m = run(['serve', '-k', socket, '--socket-mode', '0640', '--state-dir', join(dir, 'state-group')]);
    await listening(m);
    assert.equal(statSync(socket).mode & 0o777, 0o640);
    m.child.kill('SIGTERM');
    assert.equal(await m.exited, 0);
  });

  it('-d returns once the socket is served; the daemon writes its pidfile, detaches, and cleans up on SIGTERM', async () => {
    const socket = join(dir, 'daemon.sock');
    const pidfile = join(dir, 'daemon.pid');
    const r = run(['-d', '-k', socket, '-f', pidfile, '--san', join(san.dir, 'host1')]);
    assert.equal(await r.exited, 0, r.stderr.join('\n'));
    assert.equal(await readKeys(socket), ScsiStatus.GOOD, 'served as soon as -d returned');
    const pid = Number(readFileSync(pidfile, 'utf8'));
    assert.notEqual(pid, r.child.pid);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    assert.equal(stat[2], String(pid), 'the daemon leads its own session (setsid)');
    assert.equal(readFileSync(`/proc/${pid}/fdinfo/2`, 'utf8').length > 0, true);
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /cli\.js/);
    process.kill(pid, 'SIGTERM');
    await until('the daemon to exit', () => !existsSync(`/proc/${pid}`) || readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z'));
    await until('the pidfile to go', () => !existsSync(pidfile));
    assert.equal(existsSync(socket), false);
  });

  it('a -d daemon that cannot start reports why and exits 1', async () => {
    const pidfile = join(dir, 'busy.pid');
    writeFileSync(pidfile, `${process.pid}\n`);
    const r = run(['-d', '-k', join(dir, 'busy.sock'), '-f', pidfile]);
    assert.equal(await r.exited, 1);
    assert.ok(r.stderr.some((l) => l.includes(`names process ${process.pid}`)), r.stderr.join('\n'));
  });
});

describe('prmux serve: systemd socket activation', () => {
  it('serves the socket systemd passes as fd 3 (LISTEN_FDS=1, LISTEN_PID checked) and leaves the socket file to systemd', async () => {
    const socket = join(dir, 'activated.sock');
    const fd = listenUnix(socket, 16);
    try {
      const r = run(['serve', '--san', join(san.dir, 'host1')], { env: { LISTEN_FDS: '1' }, shellActivation: true, listenFd: fd });
      await listening(r);
      assert.ok(r.stderr.some((l) => l.includes('(socket activation)')));
      assert.equal(await readKeys(socket), ScsiStatus.GOOD);
      r.child.kill('SIGTERM');
      assert.equal(await r.exited, 0);
      assert.equal(existsSync(socket), true, 'the unit owns the socket file');
    } finally {
      closeFd(fd);
    }
  });

  it('ignores LISTEN_FDS meant for another process (LISTEN_PID differs) and binds -k as usual', async () => {
    const socket = join(dir, 'notmine.sock');
    const r = run(['serve', '-k', socket, '--san', join(san.dir, 'host1')], { env: { LISTEN_FDS: '1', LISTEN_PID: '1' } });
    await listening(r);
    assert.equal(await readKeys(socket), ScsiStatus.GOOD);
    r.child.kill('SIGTERM');
    assert.equal(await r.exited, 0);
  });

  it('-k together with activation, and LISTEN_FDS=2, are errors', async () => {
    const a = run(['serve', '-k', join(dir, 'x.sock')], { env: { LISTEN_FDS: '1' }, shellActivation: true });
    assert.equal(await a.exited, 1);
    assert.ok(a.stderr.some((l) => /socket activation/.test(l)), a.stderr.join('\n'));
    const b = run(['serve'], { env: { LISTEN_FDS: '2' }, shellActivation: true });
    assert.equal(await b.exited, 1);
    assert.ok(b.stderr.some((l) => /LISTEN_FDS=2/.test(l)), b.stderr.join('\n'));
  });
});

describe('prmux serve: drain on SIGTERM', () => {
  it('finishes the command in flight, answers it, then exits 0', async () => {
    const socket = join(dir, 'drain.sock');
    const r = run(['serve', '-k', socket, '--san', join(san.dir, 'host1')]);
    await listening(r);
    await san.ctl('path', 'latency', 'host1', 'sdb', '800');
    try {
      const c = await PrHelperClient.connect(socket);
      const fd = openSync(dev('sdb'), 'r');
      const reply = c.command(readKeysCdb, fd);
      await new Promise((res) => setTimeout(res, 200));
      r.child.kill('SIGTERM');
      assert.equal((await reply).status, ScsiStatus.GOOD, 'the in-flight command is answered');
      closeSync(fd);
      c.close();
      assert.equal(await r.exited, 0);
    } finally {
      await san.ctl('path', 'latency', 'host1', 'sdb', '0');
    }
  });
});

describe('prmux serve: bounded drain', () => {
  it('a command stuck past --drain-timeout does not keep the daemon: its connection is closed, pidfile and socket removed, exit 0', async () => {
    const socket = join(dir, 'stuck.sock');
    const pidfile = join(dir, 'stuck.pid');
    const r = run(['serve', '-k', socket, '-f', pidfile, '--san', join(san.dir, 'host1'), '--sgio-timeout', '60000', '--drain-timeout', '300']);
    await listening(r);
    await san.ctl('path', 'hang', 'host1', 'sdb');
    try {
      const c = await PrHelperClient.connect(socket);
      const fd = openSync(dev('sdb'), 'r');
      const reply = c.command(readKeysCdb, fd).then(
        () => 'answered',
        () => 'connection closed',
      );
      await new Promise((res) => setTimeout(res, 200));
      r.child.kill('SIGTERM');
      assert.equal(await r.exited, 0);
      assert.equal(await reply, 'connection closed');
      closeSync(fd);
      c.close();
      assert.equal(existsSync(pidfile), false);
      assert.equal(existsSync(socket), false);
      assert.ok(r.stderr.some((l) => /drain timeout/.test(l)), r.stderr.join('\n'));
    } finally {
      await san.ctl('path', 'unhang', 'host1', 'sdb');
    }
  });
});

describe('prmux serve: -u/-g', () => {
  const root = process.getuid?.() === 0;
  it('switches to the user and group after listening, keeps only CAP_SYS_RAWIO|CAP_SYS_ADMIN in every thread, and still serves', { skip: root ? false : 'needs root' }, async () => {
    const socket = join(dir, 'dropped.sock');
    const pidfile = join(dir, 'dropped.pid');
    const stateDir = join(dir, 'state-dropped');
    chmodSync(dir, 0o711); // the dropped user must be able to reach its state directory
    const r = run(['serve', '-k', socket, '-f', pidfile, '-u', '65534', '-g', '65534', '-v', '--state-dir', stateDir]);
    await listening(r);
    const pid = r.child.pid!;
    assert.equal(readFileSync(pidfile, 'utf8'), `${pid}\n`, 'same pid across the re-exec');
    const want = (1n << 17n) | (1n << 21n); // CAP_SYS_RAWIO, CAP_SYS_ADMIN
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const status = readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8');
      const field = (name: string) => /^(\S+):\s*(.*)$/m.exec(status.split('\n').find((l) => l.startsWith(`${name}:`)) ?? '')?.[2] ?? '';
      assert.deepEqual(field('Uid').split(/\s+/), ['65534', '65534', '65534', '65534'], `thread ${task} uid`);
      assert.deepEqual(field('Gid').split(/\s+/), ['65534', '65534', '65534', '65534'], `thread ${task} gid`);
      for (const set of ['CapEff', 'CapPrm', 'CapBnd', 'CapAmb']) assert.equal(BigInt(`0x${field(set)}`), want, `thread ${task} ${set}`);
    }
    // The kernel path still answers (a regular file: what the stock helper answers, ABORTED COMMAND).
    const c = await PrHelperClient.connect(socket);
    const fd = openSync(join(dir, 'dropped.pid'), 'r');
    const reply = await c.command(readKeysCdb, fd);
    closeSync(fd);
    c.close();
    assert.equal(reply.status, ScsiStatus.CHECK_CONDITION);
    assert.deepEqual([...reply.sense.subarray(0, 14)], [0x70, 0, 0x0b, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x00, 0x06]);
    r.child.kill('SIGTERM');
    assert.equal(await r.exited, 0);
    assert.ok(r.stderr.some((l) => /running with dropped privileges/.test(l)), r.stderr.join('\n'));
    assert.equal(statSync(stateDir).uid, 65534, 'the key state directory belongs to the user prmux runs as');
  });

  it('an unknown user is a clear error before anything is served', async () => {
    const r = run(['serve', '-k', join(dir, 'nouser.sock'), '-u', 'no-such-user-prmux']);
    assert.equal(await r.exited, 1);
    assert.ok(r.stderr.some((l) => /invalid user 'no-such-user-prmux'/.test(l)), r.stderr.join('\n'));
    assert.equal(existsSync(join(dir, 'nouser.sock')), false);
  });
});
