#!/usr/bin/env node
// The prmux command line. Only this edge reads process.argv/env and writes to stdout/stderr; every
// command is a function that takes its output seams, so it can be tested in-process.

import { Command, CommanderError } from 'commander';
import { runFenceDemo } from './demo/fence-demo.js';

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
