// Runs the fidelity sequences (sequences.ts) on real SCSI devices with SG_IO and prints one JSON line
// per event (compare.ts RunnerLine): the reset before each sequence, each step's status, sense and
// data-in, the end of each sequence. Meant for the SAN lab guest, where device k is path k's disk:
//
//   node dist-fid/test/fidelity/guest-runner.js --devices /dev/sda,/dev/sdb,/dev/sdc [--only a,b] [--skip c] [--timeout-ms N]
//
// Data-in buffers are PAD bytes longer than the CDB's allocation length (the CDB itself is exact):
// LIO's READ FULL STATUS writes up to 32 bytes past the allocation length: it checks only the
// TransportID length (24), not the whole 48-byte descriptor nor the 8-byte header, against the room
// left, then writes the whole descriptor (the same check gives LIO-BEHAVIOUR.md 6),
// and when the kernel maps the caller's buffer directly (4-byte aligned address and length) those
// bytes land in this process's heap (seen as "double free or corruption" aborts). LIO clamps its
// data length to the CDB's allocation length and reports the padding as residual, so what comes back
// is unchanged; bytes it wrote into the padding are counted and reported as `beyond`.
//
// The devices are opened read-only: root's CAP_SYS_RAWIO allows every CDB through SG_IO, and a
// read-write open would make udev probe the disk when it is closed (its `watch` rule), and a probe
// is I/O that consumes unit attentions. Exit status: 0 when every selected sequence ran to its end,
// 1 when one did not (reset failure, transport failure is still a result), 2 on bad usage.
//
// This file is an edge (a command-line entry point): it uses process.argv, stdout and exit codes.

import { closeSync, constants, openSync } from 'node:fs';
import { sgIo, type SgIoCommand } from '../../src/sgio/sg-io.js';
import { hex } from '../../src/scsi/bytes.js';
import { ScsiStatus } from '../../src/scsi/constants.js';
import { runSequence, type Executor, type Observed, type RunnerLine } from './compare.js';
import { SEQUENCES, type Command } from './sequences.js';

interface Options {
  devices: string[];
  only: string[] | null;
  skip: string[];
  timeoutMs: number;
}

function parseArgs(argv: readonly string[]): Options | string {
  const o: Options = { devices: [], only: null, skip: [], timeoutMs: 20_000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--devices' && v !== undefined) o.devices = v.split(',').filter((d) => d !== '');
    else if (a === '--only' && v !== undefined) o.only = v.split(',');
    else if (a === '--skip' && v !== undefined) o.skip = v.split(',');
    else if (a === '--timeout-ms' && v !== undefined && /^\d+$/.test(v)) o.timeoutMs = Number(v);
    else return `unknown or incomplete argument ${a ?? ''}`;
    i++;
  }
  if (o.devices.length < 2) return 'give at least two devices with --devices';
  for (const name of [...(o.only ?? []), ...o.skip]) {
    if (!SEQUENCES.some((s) => s.name === name)) return `no sequence named ${name}`;
  }
  return o;
}

function emit(line: RunnerLine): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Bytes added to every data-in buffer (more than LIO's overrun of up to 32 bytes; a multiple of 4). */
const PAD = 64;

function sgIoExecutor(fds: readonly number[], defaultTimeoutMs: number): Executor {
  return async (nexus: number, command: Command): Promise<Observed> => {
    const fd = fds[nexus - 1];
    if (fd === undefined) throw new RangeError(`Cannot run on nexus ${nexus}: only ${fds.length} devices`);
    const dataOut = command.dataOut !== undefined && command.dataOut.length > 0 ? command.dataOut : undefined;
    const alloc = dataOut === undefined ? (command.dataInLength ?? 0) : 0;
    const cmd: SgIoCommand = {
      cdb: command.cdb,
      timeoutMs: command.timeoutMs ?? defaultTimeoutMs,
      ...(dataOut !== undefined ? { dataOut } : {}),
      ...(alloc > 0 ? { dataInLength: alloc + PAD } : {}),
    };
    const r = await sgIo(fd, cmd);
    const o = r.outcome;
    switch (o.kind) {
      case 'good': {
        const buffer = r.completion.data;
        let beyond = 0;
        if (buffer !== null) {
          for (let i = buffer.length - 1; i >= alloc; i--) {
            if (buffer[i] !== 0) {
              beyond = i - alloc + 1;
              break;
            }
          }
        }
        const over = o.data.length > alloc ? { detail: `device transferred ${o.data.length} bytes for allocation length ${alloc}` } : {};
        return { status: ScsiStatus.GOOD, sense: '', data: hex(o.data.subarray(0, alloc)), ...(beyond > 0 ? { beyond } : {}), ...over };
      }
      case 'check-condition':
        return { status: ScsiStatus.CHECK_CONDITION, sense: hex(o.sense), data: '' };
      case 'reservation-conflict':
        return { status: ScsiStatus.RESERVATION_CONFLICT, sense: '', data: '' };
      case 'busy':
        return { status: ScsiStatus.BUSY, sense: '', data: '' };
      case 'task-set-full':
        return { status: ScsiStatus.TASK_SET_FULL, sense: '', data: '' };
      case 'transport-failure':
        return { status: null, sense: '', data: '', detail: o.detail };
    }
  };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (typeof opts === 'string') {
    process.stderr.write(`guest-runner: ${opts}\n`);
    return 2;
  }
  const fds = opts.devices.map((d) => openSync(d, constants.O_RDONLY | constants.O_NONBLOCK));
  try {
    const exec = sgIoExecutor(fds, opts.timeoutMs);
    let allComplete = true;
    for (const seq of SEQUENCES) {
      if (opts.only !== null && !opts.only.includes(seq.name)) continue;
      if (opts.skip.includes(seq.name)) continue;
      if (seq.nexuses > fds.length) {
        emit({ t: 'error', seq: seq.name, message: `needs ${seq.nexuses} devices, got ${fds.length}` });
        allComplete = false;
        continue;
      }
      const run = await runSequence(exec, seq, fds.length, emit);
      if (!run.complete) allComplete = false;
    }
    return allComplete ? 0 : 1;
  } catch (e) {
    emit({ t: 'error', seq: null, message: e instanceof Error ? `${e.message}\n${e.stack ?? ''}` : String(e) });
    return 1;
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

process.exitCode = await main();
