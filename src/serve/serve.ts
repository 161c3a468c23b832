// `prmux serve` (and bare `prmux`): the drop-in for qemu-pr-helper. Lifecycle, in the stock
// helper's order: take the listening socket (systemd activation or -k), daemonise (-d), write the
// pidfile, drop privileges (-u/-g), serve until SIGTERM/SIGINT/SIGHUP, then stop accepting, finish
// the commands in flight, remove the socket file and the pidfile, exit 0.
//
// Node cannot fork(), and Linux capabilities are per thread, so two steps re-run this program
// with the listening socket inherited (see README "Daemon mode and privileges"):
//   -d      the parent binds, starts a detached copy of itself with the socket as fd 3, waits
//           until that copy is serving, then exits 0 (the socket is ready when `-d` returns);
//   -u/-g   the process switches user and group with the kept capabilities raised as ambient
//           and exec()s itself, so every thread of the new image has exactly those credentials.
// The images pass state down in PRMUX_* variables (HANDOVER below), removed once read.

import { spawn } from 'node:child_process';
import { chownSync, closeSync, lstatSync, mkdirSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { MultipathEngine } from '../fanout/engine.js';
import { KernelMapControl, SanMapControl } from '../fanout/map-control.js';
import { MultipathBackend } from '../fanout/multipath-backend.js';
import { KernelPathIo, SanPathIo } from '../fanout/path-io.js';
import { IntentStore } from '../fanout/state-store.js';
import { MultipathTopology, multipathdSocketsFor } from '../fanout/topology.js';
import type { MapControl, PathIo } from '../fanout/types.js';
import { ErrorCode, PrmuxError, isPrmuxError } from '../errors.js';
import type { Logger } from '../socket/logger.js';
import { type BoundSocket, type PrHelperServer, bindPrHelperSocket, createPrHelperServer } from '../socket/pr-helper-server.js';
import { closeFd, redirectStdioToDevNull, setCloseOnExec } from '../socket/unix-fd.js';
import { ACTIVATION_VARIABLES, socketActivation } from './activation.js';
import type { PrBackend } from './backend.js';
import { type DeviceTarget, KernelDeviceResolver } from './device-target.js';
import { inspectFd } from './fd-info.js';
import { type CommandRecord, createPrRequestHandler } from './handler.js';
import { removePidfile, writePidfile } from './pidfile.js';
import { KEPT_CAPABILITIES, credentialMismatches, dropPrivilegesAndReexec, parseProcStatus, resolveCredentials } from './privileges.js';
import { SanBackend, SanDeviceMap } from './san-backend.js';
import { SgIoBackend } from './sgio-backend.js';
import { createLineLogger } from './stderr-logger.js';

/** qemu-pr-helper's defaults (qemu_get_local_state_pathname("run/...")), so configs written for it work. */
export const DEFAULT_SOCKET = '/var/run/qemu-pr-helper.sock';
export const DEFAULT_PIDFILE = '/var/run/qemu-pr-helper.pid';

export interface ServeOptions {
  readonly socket?: string;
  readonly pidfile?: string;
  readonly daemon?: boolean;
  readonly user?: string;
  readonly group?: string;
  /** 0 = -q, 1 = default, 2 = -v, 3 = -vv. */
  readonly verbosity?: number;
  /** DIR/HOST of a running simulated SAN. */
  readonly san?: string;
  readonly socketMode?: number;
  readonly socketGroup?: string;
  readonly sgioTimeoutMs?: number;
  /** How long a stop waits for commands in flight before closing their connections. Default: SG_IO timeout + 5 s. */
  readonly drainTimeoutMs?: number;
  /** Multipath maps: 'fanout' (default) sends each command to the right paths; 'plain' does one SG_IO on the map as the stock helper. */
  readonly multipath?: 'fanout' | 'plain';
  /** Where the intended key state per map is kept. Default /var/lib/prmux (with --san: DIR/HOST/prmux-state). */
  readonly stateDir?: string;
  /** multipathd socket names (default MULTIPATH_SOCKET_NAME, else multipathd's own). */
  readonly multipathdSockets?: readonly string[];
  /** Topology polling period. Default 1000 ms. */
  readonly topologyIntervalMs?: number;
  /** Key verification period. Default 30000 ms; 0 turns it off. */
  readonly verifyIntervalMs?: number;
}

export const DEFAULT_STATE_DIR = '/var/lib/prmux';

/** The process edge serve needs; the CLI passes the real process, tests may pass their own. */
export interface ServeProcess {
  readonly pid: number;
  readonly env: Record<string, string | undefined>;
  readonly execPath: string;
  readonly execArgv: readonly string[];
  /** The script and its arguments (process.argv.slice(1)). */
  readonly argv: readonly string[];
  readonly stderr: (line: string) => void;
  /** Register a handler for SIGTERM/SIGINT/SIGHUP; returns its removal. */
  readonly onStopSignal: (fn: (signal: string) => void) => () => void;
}

const HANDOVER = {
  listenFd: 'PRMUX_LISTEN_FD',
  ownedSocket: 'PRMUX_OWNED_SOCKET',
  readyFd: 'PRMUX_READY_FD',
  daemonChild: 'PRMUX_DAEMON_CHILD',
  pidfileWritten: 'PRMUX_PIDFILE_WRITTEN',
  dropped: 'PRMUX_PRIVILEGES_DROPPED',
} as const;

interface Handover {
  listenFd: number | null;
  ownedSocket: BoundSocket | null;
  readyFd: number | null;
  daemonChild: boolean;
  pidfileWritten: boolean;
  dropped: boolean;
}

function takeHandover(env: Record<string, string | undefined>): Handover {
  const num = (k: string): number | null => {
    const v = env[k];
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : null;
  };
  let owned: BoundSocket | null = null;
  const ownedText = env[HANDOVER.ownedSocket];
  if (ownedText !== undefined) {
    const o = JSON.parse(ownedText) as { path: string; dev: number; ino: number };
    owned = { fd: -1, path: o.path, dev: o.dev, ino: o.ino };
  }
  const h: Handover = {
    listenFd: num(HANDOVER.listenFd),
    ownedSocket: owned,
    readyFd: num(HANDOVER.readyFd),
    daemonChild: env[HANDOVER.daemonChild] === '1',
    pidfileWritten: env[HANDOVER.pidfileWritten] === '1',
    dropped: env[HANDOVER.dropped] === '1',
  };
  for (const k of Object.values(HANDOVER)) delete env[k];
  return h;
}

function handoverEnv(env: Record<string, string | undefined>, h: Handover, listenFd: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  out[HANDOVER.listenFd] = String(listenFd);
  if (h.ownedSocket !== null) out[HANDOVER.ownedSocket] = JSON.stringify({ path: h.ownedSocket.path, dev: h.ownedSocket.dev, ino: h.ownedSocket.ino });
  if (h.readyFd !== null) out[HANDOVER.readyFd] = String(h.readyFd);
  if (h.daemonChild) out[HANDOVER.daemonChild] = '1';
  if (h.pidfileWritten) out[HANDOVER.pidfileWritten] = '1';
  if (h.dropped) out[HANDOVER.dropped] = '1';
  return out;
}

function removeOwnedSocket(s: BoundSocket | null, log: Logger): void {
  if (s === null) return;
  try {
    const st = lstatSync(s.path);
    if (st.dev === s.dev && st.ino === s.ino) unlinkSync(s.path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn('could not remove the socket file', { path: s.path, error: (e as Error).message });
  }
}

function groupId(group: string): number {
  return resolveCredentials(undefined, group).gid;
}

/** The running service: its stats, and a way to stop it as a signal would. */
export interface ServeHandle {
  readonly socketPath: string | null;
  /** The multipath engine (snapshot, events), or null with --multipath plain / -d parent. */
  readonly engine: MultipathEngine | null;
  readonly stats: ServeStats;
  stop(): void;
  /** Resolves with the exit code once stopped. */
  readonly done: Promise<number>;
}

export interface ServeStats {
  commands: number;
  byStatus: Record<string, number>;
  refused: number;
}

/**
 * Start serving. Resolves once the socket is being served (or, with -d in the parent, once the
 * daemon is), with a handle whose `done` gives the exit code. Configuration errors reject with a
 * PrmuxError (code CONFIG) and leave nothing behind.
 */
export async function startServe(options: ServeOptions, proc: ServeProcess): Promise<ServeHandle> {
  const env = proc.env;
  const h = takeHandover(env);
  const log = createLineLogger(options.verbosity ?? 1, proc.stderr);
  const fail = (message: string): never => {
    throw new PrmuxError(ErrorCode.CONFIG, message);
  };

  // 1. The listening socket: inherited from an earlier image, systemd's, or bound here.
  let listenFd: number;
  let owned: BoundSocket | null = h.ownedSocket;
  let socketPath: string | null = owned?.path ?? null;
  if (h.listenFd !== null) {
    listenFd = h.listenFd;
  } else {
    const act = socketActivation(env, proc.pid);
    for (const k of ACTIVATION_VARIABLES) delete env[k];
    if (act.kind === 'error') fail(act.message);
    if (act.kind === 'socket') {
      if (options.socket !== undefined) fail("Cannot use -k/--socket with systemd socket activation: the socket is systemd's (LISTEN_FDS)");
      listenFd = act.fd;
      socketPath = null;
    } else {
      const path = options.socket ?? DEFAULT_SOCKET;
      if (!path.startsWith('/')) fail(`Cannot listen on ${path}: the socket path must be absolute`);
      const gid = options.socketGroup !== undefined ? groupId(options.socketGroup) : undefined;
      const mode = options.socketMode ?? (gid !== undefined ? 0o660 : 0o600);
      owned = await bindPrHelperSocket(path, { mode, logger: log, ...(gid !== undefined ? { gid } : {}) });
      listenFd = owned.fd;
      socketPath = path;
    }
  }

  // 2. Daemonise: a detached copy serves; this process returns once it is ready.
  if (options.daemon === true && !h.daemonChild) {
    return daemonize(proc, h, listenFd, owned, log);
  }

  // 3. Pidfile (with -d or -f, as the stock helper), before dropping privileges.
  const pidfile = options.pidfile ?? (options.daemon === true ? DEFAULT_PIDFILE : undefined);
  let pidfileWritten = h.pidfileWritten;
  try {
    if (pidfile !== undefined && !pidfileWritten) {
      writePidfile(pidfile, proc.pid);
      pidfileWritten = true;
    }

    // -u/-g, resolved once: the state directory's owner, the drop, and the check after it.
    const credentials = options.user !== undefined || options.group !== undefined ? resolveCredentials(options.user, options.group) : null;

    // The key state directory belongs to the user prmux will run as (created before the drop).
    const stateDir = stateDirOf(options);
    if (options.multipath !== 'plain' && !h.dropped) {
      mkdirSync(join(stateDir, 'maps'), { recursive: true, mode: 0o700 });
      if (credentials !== null) {
        chownSync(stateDir, credentials.uid, credentials.gid);
        chownSync(join(stateDir, 'maps'), credentials.uid, credentials.gid);
      }
    }

    // 4. Drop privileges: exec()s this program again; never returns on success.
    if (credentials !== null && h.dropped) {
      // The image after the drop checks that it holds exactly the credentials asked for (file
      // capabilities on the node binary, for one, would have cleared the ambient set at exec).
      const bad = credentialMismatches(parseProcStatus(readFileSync('/proc/self/status', 'utf8')), { credentials, keepCaps: KEPT_CAPABILITIES });
      if (bad.length > 0) fail(`Cannot serve: the privilege drop did not take effect: ${bad.join('; ')}`);
      log.info('running with dropped privileges', { uid: credentials.uid, gid: credentials.gid, keep: KEPT_CAPABILITIES.join(',') });
    }
    if (credentials !== null && !h.dropped) {
      const keepFds = [listenFd, ...(h.readyFd !== null ? [h.readyFd] : [])];
      const next = handoverEnv(env, { ...h, ownedSocket: owned, pidfileWritten, dropped: true }, listenFd);
      log.info('dropping privileges', { uid: credentials.uid, gid: credentials.gid, keep: KEPT_CAPABILITIES.join(',') });
      dropPrivilegesAndReexec({ credentials, keepCaps: KEPT_CAPABILITIES, keepFds, argv: proc.argv, env: next });
    }
  } catch (e) {
    if (pidfile !== undefined && pidfileWritten && !h.pidfileWritten) removePidfile(pidfile, proc.pid);
    if (h.listenFd === null) {
      closeFd(listenFd);
      removeOwnedSocket(owned, log);
    }
    throw e;
  }

  // 5. Serve.
  const sgio = new SgIoBackend({ timeoutMs: options.sgioTimeoutMs ?? 30_000 });
  let san: { map: SanDeviceMap; backend: SanBackend } | null = null;
  if (options.san !== undefined) {
    const hostDir = resolve(options.san);
    try {
      san = { map: new SanDeviceMap(hostDir, basename(hostDir)), backend: new SanBackend({ socketPath: `${hostDir}/san.sock`, timeoutMs: options.sgioTimeoutMs ?? 30_000 }) };
    } catch (e) {
      fail(`Cannot serve simulated host ${hostDir}: ${(e as Error).message} (is \`prmux san start\` running there?)`);
    }
  }
  // The multipath fan-out engine: reconciles every known map before the socket is served.
  let engine: MultipathEngine | null = null;
  let multipathBackend: MultipathBackend | null = null;
  if (options.multipath !== 'plain') {
    const hostDir = options.san !== undefined ? resolve(options.san) : null;
    const topology = new MultipathTopology({
      sockets: hostDir !== null ? [join(hostDir, 'multipathd.sock')] : (options.multipathdSockets ?? multipathdSocketsFor(env['MULTIPATH_SOCKET_NAME'])),
      // A simulated host has no sysfs of its own: with its multipathd down there is nothing to fall back to.
      sysfsRoot: hostDir !== null ? join(hostDir, 'no-sysfs') : '/sys',
      pollIntervalMs: options.topologyIntervalMs ?? 1000,
      logger: log,
    });
    const io: PathIo = hostDir !== null ? new SanPathIo({ socketPath: join(hostDir, 'san.sock') }) : new KernelPathIo({ logger: log });
    const control: MapControl =
      hostDir !== null ? new SanMapControl({ ctlSocketPath: join(dirname(hostDir), 'ctl.sock'), host: basename(hostDir) }) : new KernelMapControl({ logger: log });
    engine = new MultipathEngine({
      topology,
      io,
      control,
      store: new IntentStore({ stateDir: stateDirOf(options), logger: log }),
      logger: log,
      commandTimeoutMs: options.sgioTimeoutMs ?? 30_000,
      verifyIntervalMs: options.verifyIntervalMs ?? 30_000,
    });
    try {
      await engine.start();
    } catch (e) {
      await engine.close().catch(() => undefined);
      fail(`Cannot start the multipath engine: ${(e as Error).message}`);
    }
    multipathBackend = new MultipathBackend({ engine, logger: log });
  }
  const stats: ServeStats = { commands: 0, byStatus: {}, refused: 0 };
  const onCommand = (r: CommandRecord): void => {
    stats.commands++;
    const k = `0x${r.status.toString(16).padStart(2, '0')}`;
    stats.byStatus[k] = (stats.byStatus[k] ?? 0) + 1;
    if (r.refused !== undefined) stats.refused++;
  };
  const kernel = new KernelDeviceResolver();
  const handler = createPrRequestHandler({
    inspect: inspectFd,
    resolve: (info): DeviceTarget => san?.map.lookup(info) ?? kernel.resolve(info),
    backendFor: (t): PrBackend =>
      multipathBackend !== null && MultipathBackend.handles(t) ? multipathBackend : t.kind === 'san-path' || t.kind === 'san-map' ? san!.backend : sgio,
    closeFd: (fd) => {
      closeFd(fd);
    },
    logger: log,
    onCommand,
  });
  const server: PrHelperServer = createPrHelperServer({
    listenFd,
    ...(owned !== null ? { ownedSocket: owned } : {}),
    handler,
    logger: log,
  });
  await server.listen();

  let finish!: (code: number) => void;
  const done = new Promise<number>((r) => (finish = r));
  let stopping = false;
  const stop = (why: string): void => {
    if (stopping) {
      log.warn('second stop request: closing every connection now', { why });
      server.destroy();
      return;
    }
    stopping = true;
    log.info('stopping: no new connections; finishing commands in flight', { why, connections: server.connectionCount });
    // Bounded: a command stuck in the kernel past its own timeout (a target that never answers and
    // whose abort hangs too) must not keep the daemon, its pidfile and its clients waiting forever.
    const drainMs = options.drainTimeoutMs ?? (options.sgioTimeoutMs ?? 30_000) + 5000;
    const deadline = setTimeout(() => {
      log.warn('commands still in flight after the drain timeout: closing their connections', { drainMs, connections: server.connectionCount });
      server.destroy();
    }, drainMs);
    void server.close().then(() => {
      clearTimeout(deadline);
      removeSignals();
      san?.backend.close();
      void engine?.close();
      if (pidfile !== undefined) {
        const kept = removePidfile(pidfile, proc.pid);
        if (kept !== null) log.warn('pidfile not removed', { pidfile, why: kept });
      }
      log.info('stopped', { commands: stats.commands });
      finish(0);
    });
  };
  const removeSignals = proc.onStopSignal((signal) => stop(signal));

  if (socketPath !== null) log.info('serving', { socket: socketPath, san: options.san ?? null });
  if ((options.verbosity ?? 1) > 0) proc.stderr(`prmux serve: listening on ${socketPath ?? `fd ${listenFd} (socket activation)`} (pid ${proc.pid})`);
  if (h.readyFd !== null) {
    // The -d parent is waiting for this line; after it, a daemon's stdio goes to /dev/null.
    try {
      writeSync(h.readyFd, 'ready\n');
      closeSync(h.readyFd);
    } catch {
      // The parent is gone: nobody to tell.
    }
    if (h.daemonChild) redirectStdioToDevNull();
  }
  return { socketPath, stats, engine, stop: () => stop('stop()'), done };
}

function stateDirOf(options: ServeOptions): string {
  if (options.stateDir !== undefined) return resolve(options.stateDir);
  return options.san !== undefined ? join(resolve(options.san), 'prmux-state') : DEFAULT_STATE_DIR;
}

/** -d: start a detached copy of this program on the bound socket; resolve once it serves. */
async function daemonize(proc: ServeProcess, h: Handover, listenFd: number, owned: BoundSocket | null, log: Logger): Promise<ServeHandle> {
  const LISTEN_CHILD_FD = 3;
  const READY_CHILD_FD = 4;
  setCloseOnExec(listenFd, false);
  const env = handoverEnv(proc.env, { ...h, ownedSocket: owned, readyFd: READY_CHILD_FD, daemonChild: true }, LISTEN_CHILD_FD);
  const child = spawn(proc.execPath, [...proc.execArgv, ...proc.argv], {
    detached: true,
    env,
    stdio: ['ignore', 'ignore', 'pipe', listenFd, 'pipe'],
  });
  const ready = child.stdio[READY_CHILD_FD] as NodeJS.ReadableStream;
  const errLines: string[] = [];
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    for (const l of d.split('\n')) if (l !== '') errLines.push(l);
  });
  const code = await new Promise<number>((resolveReady) => {
    let got = '';
    ready.setEncoding('utf8');
    ready.on('data', (d: string) => {
      got += d;
      if (got.includes('ready\n')) resolveReady(0);
    });
    child.once('exit', (c) => resolveReady(c === 0 ? 1 : (c ?? 1)));
    child.once('error', () => resolveReady(1));
  });
  closeFd(listenFd);
  child.stderr!.destroy();
  (ready as unknown as { destroy(): void }).destroy();
  if (code !== 0) {
    for (const l of errLines) proc.stderr(l);
    removeOwnedSocket(owned, log);
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot start the daemon: it exited before serving${errLines.length === 0 ? '' : ' (its messages are above)'}`);
  }
  for (const l of errLines) proc.stderr(l);
  child.unref();
  return { socketPath: owned?.path ?? null, engine: null, stats: { commands: 0, byStatus: {}, refused: 0 }, stop: () => undefined, done: Promise.resolve(0) };
}

export { isPrmuxError };
