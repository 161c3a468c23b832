#!/usr/bin/env node
// The prmux command line. Only this edge reads process.argv/env and writes to stdout/stderr; every
// command is a function that takes its output seams, so it can be tested in-process.

import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { runFenceDemo } from './demo/fence-demo.js';
import { defaultSanConfig, parseSanConfig } from './san/config.js';
import { startSanServer } from './san/san-server.js';
import { JsonLineClient } from './san/client.js';

export interface CliIo {
  readonly out: (line: string) => void;
  readonly err: (line: string) => void;
}

export function buildProgram(io: CliIo, setExitCode: (code: number) => void): Command {
  const program = new Command('prmux')
    .description('Multipath-aware SCSI persistent-reservation proxy for QEMU pr-manager-helper clients')
    .version('0.1.0', '-V, --version')
    .configureOutput({ writeOut: (s) => io.out(s.replace(/\n$/, '')), writeErr: (s) => io.err(s.replace(/\n$/, '')) })
    .exitOverride();
  program
    .command('demo')
    .description('run a fence_scsi-style scenario on a simulated logical unit and print every step')
    .action(() => {
      setExitCode(runFenceDemo(io.out) ? 0 : 1);
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
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`prmux: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
