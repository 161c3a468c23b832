#!/usr/bin/env node
// The prmux command line. Only this edge reads process.argv/env and writes to stdout/stderr; every
// command is a function that takes its output seams, so it can be tested in-process.

import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { runFenceDemo } from './demo/fence-demo.js';
import { runServeDemo } from './demo/serve-demo.js';
import { defaultSanConfig, parseSanConfig } from './san/config.js';
import { startSanServer } from './san/san-server.js';
import { JsonLineClient } from './san/client.js';
import { type ServeOptions, type ServeProcess, DEFAULT_PIDFILE, DEFAULT_SOCKET, startServe } from './serve/serve.js';
import { sizeUvThreadpool } from './sgio/sg-io.js';

/** SG_IO runs on the libuv pool: one thread per command in flight (sized before first use). */
const DEFAULT_SGIO_THREADS = 32;

interface ServeFlags {
  socket?: string;
  pidfile?: string;
  daemon?: boolean;
  user?: string;
  group?: string;
  verbose: number;
  quiet?: boolean;
  trace?: string;
  san?: string;
  socketMode?: string;
  socketGroup?: string;
  sgioTimeout?: number;
  sgioThreads?: number;
  drainTimeout?: number;
  multipath?: string;
  stateDir?: string;
  verifyInterval?: number;
  topologyInterval?: number;
}

/** qemu-pr-helper's flags, then prmux's own; on `prmux serve` and on bare `prmux`. */
function addServeOptions(cmd: Command): Command {
  return cmd
    .option('-k, --socket <path>', `absolute path of the unix socket (default ${DEFAULT_SOCKET})`)
    .option('-f, --pidfile <path>', `pidfile, written with -d or when given, removed at exit (default with -d: ${DEFAULT_PIDFILE})`)
    .option('-d, --daemon', 'run in the background; returns once the socket is served')
    .option('-u, --user <user>', 'user to switch to after listening (keeps CAP_SYS_RAWIO and CAP_SYS_ADMIN only)')
    .option('-g, --group <group>', 'group to switch to after listening')
    .option('-v, --verbose', 'more messages (repeat for debug)', (_v: string, prev: number) => prev + 1, 1)
    .option('-q, --quiet', 'errors only')
    .option('-T, --trace <options>', "accepted for qemu-pr-helper compatibility; prmux's tracing is its debug log (-vv)")
    .option('--san <dir/host>', 'serve simulated host HOST of a running `prmux san start --dir DIR`')
    .option('--socket-mode <octal>', 'mode of the socket file (default 0600, or 0660 with --socket-group)')
    .option('--socket-group <group>', 'group of the socket file, so its members (e.g. the qemu group) may connect')
    .option('--sgio-timeout <ms>', 'timeout of each SCSI command (default 30000)', (v) => Number(v))
    .option('--multipath <mode>', "dm-multipath maps: 'fanout' (default: each command to the right paths, keys kept on every path) or 'plain' (one SG_IO on the map, as the stock helper)")
    .option('--state-dir <dir>', 'where the intended key state per map is kept (default /var/lib/prmux; with --san: DIR/HOST/prmux-state)')
    .option('--verify-interval <ms>', 'how often every map\'s registrations are verified and repaired (default 30000; 0: never)', (v) => Number(v))
    .option('--topology-interval <ms>', 'how often multipathd is polled for maps and paths (default 1000)', (v) => Number(v))
    .option('--drain-timeout <ms>', 'on SIGTERM, how long commands in flight may take before their connections are closed (default: SG_IO timeout + 5 s)', (v) => Number(v))
    .option('--sgio-threads <n>', `SG_IO worker threads (default ${DEFAULT_SGIO_THREADS}; UV_THREADPOOL_SIZE wins)`, (v) => Number(v));
}

function serveOptionsFrom(f: ServeFlags): ServeOptions {
  if (f.socketMode !== undefined && !/^0?[0-7]{3}$/.test(f.socketMode)) throw new CliError(`Cannot use --socket-mode ${f.socketMode}: give an octal mode such as 0660`);
  if (f.sgioTimeout !== undefined && !(Number.isInteger(f.sgioTimeout) && f.sgioTimeout >= 1)) throw new CliError('Cannot use --sgio-timeout: give a positive number of milliseconds');
  if (f.multipath !== undefined && f.multipath !== 'fanout' && f.multipath !== 'plain') throw new CliError(`Cannot use --multipath ${f.multipath}: give fanout or plain`);
  for (const [flag, v] of [['--verify-interval', f.verifyInterval], ['--topology-interval', f.topologyInterval]] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) throw new CliError(`Cannot use ${flag}: give a number of milliseconds`);
  }
  if (f.drainTimeout !== undefined && !(Number.isInteger(f.drainTimeout) && f.drainTimeout >= 0)) throw new CliError('Cannot use --drain-timeout: give a number of milliseconds');
  return {
    ...(f.socket !== undefined ? { socket: f.socket } : {}),
    ...(f.pidfile !== undefined ? { pidfile: f.pidfile } : {}),
    ...(f.daemon === true ? { daemon: true } : {}),
    ...(f.user !== undefined ? { user: f.user } : {}),
    ...(f.group !== undefined ? { group: f.group } : {}),
    verbosity: f.quiet === true ? 0 : f.verbose,
    ...(f.san !== undefined ? { san: f.san } : {}),
    ...(f.socketMode !== undefined ? { socketMode: Number.parseInt(f.socketMode, 8) } : {}),
    ...(f.socketGroup !== undefined ? { socketGroup: f.socketGroup } : {}),
    ...(f.sgioTimeout !== undefined ? { sgioTimeoutMs: f.sgioTimeout } : {}),
    ...(f.drainTimeout !== undefined ? { drainTimeoutMs: f.drainTimeout } : {}),
    ...(f.multipath !== undefined ? { multipath: f.multipath as 'fanout' | 'plain' } : {}),
    ...(f.stateDir !== undefined ? { stateDir: f.stateDir } : {}),
    ...(f.verifyInterval !== undefined ? { verifyIntervalMs: f.verifyInterval } : {}),
    ...(f.topologyInterval !== undefined ? { topologyIntervalMs: f.topologyInterval } : {}),
  };
}

class CliError extends Error {}

function realServeProcess(io: CliIo): ServeProcess {
  return {
    pid: process.pid,
    env: process.env,
    execPath: process.execPath,
    execArgv: process.execArgv,
    argv: process.argv.slice(1),
    stderr: io.err,
    onStopSignal: (fn) => {
      const handlers = (['SIGTERM', 'SIGINT', 'SIGHUP'] as const).map((sig) => {
        const h = () => fn(sig);
        process.on(sig, h);
        return [sig, h] as const;
      });
      return () => {
        for (const [sig, h] of handlers) process.off(sig, h);
      };
    },
  };
}

async function runServeCommand(flags: ServeFlags, io: CliIo): Promise<number> {
  let options: ServeOptions;
  try {
    options = serveOptionsFrom(flags);
  } catch (e) {
    io.err(`prmux: ${(e as Error).message}`);
    return 1;
  }
  sizeUvThreadpool(flags.sgioThreads ?? DEFAULT_SGIO_THREADS, process.env);
  try {
    const handle = await startServe(options, realServeProcess(io));
    return await handle.done;
  } catch (e) {
    io.err(`prmux: ${(e as Error).message}`);
    return 1;
  }
}

export interface CliIo {
  readonly out: (line: string) => void;
  readonly err: (line: string) => void;
}

export function buildProgram(io: CliIo, setExitCode: (code: number) => void): Command {
  const program = new Command('prmux')
    .description('Multipath-aware SCSI persistent-reservation proxy for QEMU pr-manager-helper clients')
    .version('0.1.0', '-V, --version')
    .configureOutput({ writeOut: (s) => io.out(s.replace(/\n$/, '')), writeErr: (s) => io.err(s.replace(/\n$/, '')) })
    .exitOverride()
    // Root options (bare `prmux -k ...`) only before a subcommand, so `prmux serve -k ...` reaches serve.
    .enablePositionalOptions();
  addServeOptions(program).action(async (flags: ServeFlags) => {
    setExitCode(await runServeCommand(flags, io));
  });
  addServeOptions(program.command('serve').description('serve the pr-manager-helper protocol (the drop-in for qemu-pr-helper; also what bare `prmux` does)')).action(
    async (flags: ServeFlags) => {
      setExitCode(await runServeCommand(flags, io));
    },
  );
  program
    .command('demo')
    .description('start a simulated SAN and prmux serve on it, run a fence_scsi scenario through the sockets, then keep serving')
    .option('--once', 'exit after the scenario')
    .option('--dir <dir>', 'directory for the SAN and the sockets (default: a new temporary directory, removed at exit)')
    .option('--model', 'only replay the scenario on the in-memory SPC-4/LIO model (no SAN, no sockets)')
    .action(async (o: { once?: boolean; dir?: string; model?: boolean }) => {
      if (o.model === true) {
        setExitCode(runFenceDemo(io.out) ? 0 : 1);
        return;
      }
      const stopRequested = () =>
        new Promise<string>((resolveStop) => {
          const h = (sig: string) => {
            process.off('SIGINT', h);
            process.off('SIGTERM', h);
            resolveStop(sig);
          };
          process.on('SIGINT', h);
          process.on('SIGTERM', h);
        });
      setExitCode(await runServeDemo({ ...(o.dir !== undefined ? { dir: resolve(o.dir) } : {}), once: o.once === true }, { out: io.out, err: io.err, stopRequested }));
    });
  const san = program.command('san').description('the simulated multipath SAN');
  san
    .command('start')
    .description('run a simulated SAN in the foreground until SIGTERM or SIGINT')
    .requiredOption('--dir <dir>', 'directory for sockets, device stand-ins and state')
    .option('--hosts <n>', 'number of hosts', (v) => Number(v))
    .option('--luns <n>', 'number of LUNs', (v) => Number(v))
    .option('--paths <n>', 'paths per host per LUN', (v) => Number(v))
    .option('--checker-interval <ms>', 'multipathd path checker interval', (v) => Number(v))
    .option('--config <file>', 'JSON topology (hosts, LUNs with WWID and personality, per-path latency)')
    .action(async (o: { dir: string; hosts?: number; luns?: number; paths?: number; checkerInterval?: number; config?: string }) => {
      const config = o.config
        ? parseSanConfig(JSON.parse(readFileSync(o.config, 'utf8')) as unknown)
        : defaultSanConfig({
            ...(o.hosts !== undefined ? { hosts: o.hosts } : {}),
            ...(o.luns !== undefined ? { luns: o.luns } : {}),
            ...(o.paths !== undefined ? { paths: o.paths } : {}),
            ...(o.checkerInterval !== undefined ? { checkerIntervalMs: o.checkerInterval } : {}),
          });
      const dir = resolve(o.dir);
      const server = await startSanServer({ dir, config, log: (l) => io.err(`prmux san: ${l}`) });
      io.out(`prmux san ready: dir ${dir} hosts ${server.san.hostNames().join(',')} luns ${config.luns.length} paths/host/lun ${config.hosts[0]!.paths.length}`);
      await new Promise<void>((done) => {
        const stop = () => {
          process.off('SIGTERM', stop);
          process.off('SIGINT', stop);
          void server.close().then(done);
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
      });
    });
  san
    .command('ctl')
    .description('change or query a running simulated SAN (see README: path down|up|latency|flaky|hang|unhang|ua|remove|add, map suspend|resume, lun power-cycle, multipathd stop|start, status --json)')
    .requiredOption('--dir <dir>', 'the SAN directory')
    .allowUnknownOption()
    .argument('<words...>', 'the control command')
    .action(async (words: string[], o: { dir: string }) => {
      const client = new JsonLineClient(join(resolve(o.dir), 'ctl.sock'));
      try {
        const reply = await client.request({ cmd: words });
        if (reply['ok'] !== true) {
          io.err(`prmux san ctl: ${String(reply['error'])}`);
          setExitCode(1);
          return;
        }
        const result = reply['result'];
        io.out(typeof result === 'string' ? result : JSON.stringify(result, null, 2));
      } finally {
        client.close();
      }
    });
  return program;
}

export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  let code = 0;
  const program = buildProgram(io, (c) => (code = c));
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    throw e;
  }
  return code;
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === new URL(`file://${(await import('node:fs')).realpathSync(process.argv[1])}`).href;
if (invokedDirectly) {
  main(process.argv.slice(2), { out: (l) => process.stdout.write(l + '\n'), err: (l) => process.stderr.write(l + '\n') }).then(
    (code) => {
      // A daemon that has drained its connections is done, even if a device left an SG_IO stuck
      // in the kernel: exit explicitly rather than wait on it.
      process.exit(code);
    },
    (e: unknown) => {
      process.stderr.write(`prmux: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
