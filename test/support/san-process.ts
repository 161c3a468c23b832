// Starts `prmux san start` as a child process and talks to it only through its public interfaces:
// the control socket, the per-host command sockets and multipathd sockets, and its files.

import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { repoRoot } from './paths.js';
import { JsonLineClient } from '../../src/san/client.js';

export const cliPath = join(repoRoot, 'dist', 'src', 'cli.js');

export interface SanProcess {
  readonly dir: string;
  readonly child: ChildProcess;
  readonly stderr: string[];
  ctl(...words: string[]): Promise<unknown>;
  exec(host: string, dev: string, cdbHex: string, dataHex?: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** One multipathd CLI command through the independent Python libmpathcmd client. */
  multipathd(host: string, command: string): Promise<string>;
  stop(): Promise<number | null>;
}

export async function startSan(args: string[] = [], dir = mkdtempSync(join(tmpdir(), 'prmux-san-'))): Promise<SanProcess> {
  const child = spawn(process.execPath, [cliPath, 'san', 'start', '--dir', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`prmux san did not get ready: ${stderr.join('\n')}`)), 20_000);
    lines.once('line', (l) => {
      clearTimeout(timer);
      if (l.startsWith('prmux san ready')) resolve();
      else reject(new Error(`unexpected first line: ${l}`));
    });
    child.once('exit', (code) => reject(new Error(`prmux san exited with ${code}: ${stderr.join('\n')}`)));
  });
  const ctlClient = new JsonLineClient(join(dir, 'ctl.sock'));
  const execClients = new Map<string, JsonLineClient>();
  return {
    dir,
    child,
    stderr,
    async ctl(...words) {
      const r = await ctlClient.request({ cmd: words });
      if (r['ok'] !== true) throw new Error(String(r['error']));
      return r['result'];
    },
    async exec(host, dev, cdbHex, dataHex = '', timeoutMs = 30000) {
      let c = execClients.get(host);
      if (!c) execClients.set(host, (c = new JsonLineClient(join(dir, host, 'san.sock'))));
      return c.request({ op: 'exec', dev, cdb: cdbHex, data: dataHex, timeoutMs });
    },
    multipathd(host, command) {
      return new Promise((resolve, reject) => {
        execFile('python3', [join(repoRoot, 'test', 'clients', 'mpathcmd.py'), join(dir, host, 'multipathd.sock'), command], (err, stdout, se) => {
          if (err) reject(new Error(`${err.message}: ${se}`));
          else resolve(stdout);
        });
      });
    },
    async stop() {
      ctlClient.close();
      for (const c of execClients.values()) c.close();
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      return exited;
    },
  };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns true or the bound passes (the SAN's checker runs on its own timer). */
export async function eventually(fn: () => Promise<boolean>, timeoutMs = 5000, stepMs = 50): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > until) throw new Error('condition not reached in time');
    await sleep(stepMs);
  }
}
