// End-to-end harness for the multipath fan-out of `prmux serve`: a simulated SAN process, one
// `prmux serve --san DIR/HOST` process per host, and a Python client that speaks the pr-helper
// protocol as QEMU does (test/clients/prh_client.py: CDB + the fd of DIR/HOST/dev/mapper/mpatha in
// one sendmsg, then the parameter list). The LU is checked without prmux: the SAN's
// `ctl status --json` (registrations per nexus, reservation holder, multipathd's view) and commands
// run on one path device through DIR/HOST/san.sock (READ KEYS, WRITE(10)).
//
// Everything is started from one prmux build (PRMUX_CLI, else dist/src/cli.js), the SAN included,
// so an engineer's own build is tested as a whole.

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { JsonLineClient } from '../../src/san/client.js';
import { fileNameForWwid } from '../../src/fanout/state-store.js';
import { repoRoot } from '../support/paths.js';
import { defaultCliPath, type HelperProcess, startHelper } from './serve-harness.js';

export const cliPath = resolve(defaultCliPath);
export const MAP = 'mpatha';

/** PERSISTENT RESERVE OUT service actions (SPC-4 table 169). */
export const Out = { REGISTER: 0, RESERVE: 1, RELEASE: 2, CLEAR: 3, PREEMPT: 4, PREEMPT_AND_ABORT: 5, REGISTER_AND_IGNORE: 6 } as const;
/** PERSISTENT RESERVE IN service actions (SPC-4 table 162). */
export const In = { READ_KEYS: 0, READ_RESERVATION: 1, REPORT_CAPABILITIES: 2, READ_FULL_STATUS: 3 } as const;
/** Write Exclusive - Registrants Only, the type fence_scsi reserves with. */
export const WE_RO = 5;
export const GOOD = 0x00;
export const RESERVATION_CONFLICT = 0x18;

export const keyHex = (k: bigint): string => `0x${k.toString(16)}`;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- the SAN's state as `prmux san ctl status --json` reports it -----------------------------------

export interface SanRegistration {
  readonly nexusId: string;
  readonly key: string;
  readonly allTgPt: boolean;
  readonly relativeTargetPortId: number;
}
export interface SanLun {
  readonly wwid: string;
  readonly generation: number;
  readonly reservation: { readonly type: number; readonly holderNexusId: string; readonly key: string } | null;
  readonly registrations: readonly SanRegistration[];
}
export interface SanPathStatus {
  readonly dev: string;
  readonly transport: 'up' | 'down';
  readonly removed: boolean;
  readonly hung: boolean;
  readonly relativeTargetPortId: number;
  readonly multipathd: { readonly dmState: string; readonly checkerState: string } | null;
}
export interface SanHostStatus {
  readonly name: string;
  readonly multipathd: 'running' | 'stopped';
  readonly maps: readonly { readonly name: string; readonly suspended: boolean; readonly prKey: string | null; readonly prStatus: boolean }[];
  readonly paths: readonly SanPathStatus[];
}
export interface SanStatus {
  readonly luns: readonly SanLun[];
  readonly hosts: readonly SanHostStatus[];
}

export function hostOf(st: SanStatus, host: string): SanHostStatus {
  const h = st.hosts.find((x) => x.name === host);
  if (h === undefined) throw new Error(`the SAN has no host ${host}`);
  return h;
}

export function pathOf(st: SanStatus, host: string, dev: string): SanPathStatus {
  const p = hostOf(st, host).paths.find((x) => x.dev === dev);
  if (p === undefined) throw new Error(`the SAN has no path ${host}/${dev}`);
  return p;
}

/** The key registered through each present path of `host` (null: none), from the target's own table. */
export function keysOf(st: SanStatus, host: string): Record<string, string | null> {
  const lun = st.luns[0]!;
  const out: Record<string, string | null> = {};
  for (const p of hostOf(st, host).paths) {
    if (p.removed) continue;
    const regs = lun.registrations.filter((r) => r.nexusId === `${host}/${p.dev}`);
    if (regs.length > 1) throw new Error(`nexus ${host}/${p.dev} is registered ${regs.length} times`);
    out[p.dev] = regs[0]?.key ?? null;
  }
  return out;
}

/** One line for failure messages: registrations, reservation, per path transport / checker state. */
export function describeState(st: SanStatus): string {
  const lun = st.luns[0]!;
  const regs = lun.registrations.map((r) => `${r.nexusId}=${r.key}`).join(' ') || 'none';
  const res = lun.reservation === null ? 'none' : `type ${lun.reservation.type} key ${lun.reservation.key} via ${lun.reservation.holderNexusId}`;
  const paths = st.hosts
    .flatMap((h) => h.paths.map((p) => `${h.name}/${p.dev}:${p.removed ? 'removed' : p.transport}/${p.multipathd?.checkerState ?? '-'}`))
    .join(' ');
  const mpd = st.hosts.map((h) => `${h.name}:multipathd=${h.multipathd},prkey=${h.maps[0]?.prKey ?? null},prstatus=${h.maps[0]?.prStatus ?? false}`).join(' ');
  return `registrations [${regs}] reservation [${res}] paths [${paths}] ${mpd}`;
}

// --- the SAN process ----------------------------------------------------------------------------

export interface ExecReply {
  readonly ok: boolean;
  readonly path?: string;
  readonly outcome?: { readonly kind: string; readonly data?: string; readonly sense?: string; readonly hostStatus?: number };
  readonly error?: string;
}

export interface SanProcess {
  readonly dir: string;
  readonly child: ChildProcess;
  readonly stderr: string[];
  ctl(...words: string[]): Promise<unknown>;
  status(): Promise<SanStatus>;
  /** One CDB on one path device ("sda") or map ("mapper/mpatha") of a host, through DIR/HOST/san.sock. */
  exec(host: string, dev: string, cdbHex: string, dataHex?: string): Promise<ExecReply>;
  /** One multipathd CLI command through the independent Python libmpathcmd client. */
  multipathd(host: string, command: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startSanProcess(dir: string, args: readonly string[], cli = cliPath): Promise<SanProcess> {
  const child = spawn(process.execPath, [cli, 'san', 'start', '--dir', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  const lines = createInterface({ input: child.stdout! });
  try {
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`prmux san did not get ready: ${stderr.join('\n')}`)), 20_000);
      lines.once('line', (l) => {
        clearTimeout(timer);
        if (l.startsWith('prmux san ready')) ok();
        else fail(new Error(`prmux san printed ${JSON.stringify(l)} instead of its ready line`));
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        fail(new Error(`prmux san exited with ${code}: ${stderr.join('\n')}`));
      });
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  const ctlClient = new JsonLineClient(join(dir, 'ctl.sock'), 10_000);
  const execClients = new Map<string, JsonLineClient>();
  const ctl = async (...words: string[]): Promise<unknown> => {
    const r = await ctlClient.request({ cmd: words });
    if (r['ok'] !== true) throw new Error(`prmux san ctl ${words.join(' ')}: ${String(r['error'])}`);
    return r['result'];
  };
  return {
    dir,
    child,
    stderr,
    ctl,
    async status() {
      return (await ctl('status', '--json')) as SanStatus;
    },
    async exec(host, dev, cdbHex, dataHex = '') {
      let c = execClients.get(host);
      if (c === undefined) execClients.set(host, (c = new JsonLineClient(join(dir, host, 'san.sock'), 30_000)));
      return (await c.request({ op: 'exec', dev, cdb: cdbHex, data: dataHex, timeoutMs: 10_000 })) as unknown as ExecReply;
    },
    multipathd(host, command) {
      return new Promise((ok, fail) => {
        execFile('python3', [join(repoRoot, 'test', 'clients', 'mpathcmd.py'), join(dir, host, 'multipathd.sock'), command], { timeout: 15_000 }, (err, stdout, se) => {
          if (err) fail(new Error(`multipathd ${command}: ${err.message}: ${se}`));
          else ok(stdout);
        });
      });
    },
    async stop() {
      ctlClient.close();
      for (const c of execClients.values()) c.close();
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// --- commands on one path, judged by the target alone -------------------------------------------

const UA_RETRIES = 4;

/** READ KEYS, allocation length 8192 (SPC-4 6.15.1: bytes 7-8). */
export const READ_KEYS_CDB = '5e000000000000200000';

function isUnitAttention(r: ExecReply): boolean {
  const s = r.outcome?.kind === 'check-condition' ? (r.outcome.sense ?? '') : '';
  // Fixed format: sense key in the low nibble of byte 2; descriptor format: byte 1.
  if (s.length < 6) return false;
  const code = parseInt(s.slice(0, 2), 16) & 0x7f;
  const key = code === 0x72 || code === 0x73 ? parseInt(s.slice(2, 4), 16) & 0x0f : parseInt(s.slice(4, 6), 16) & 0x0f;
  return key === 0x06;
}

/** exec, with the unit attentions a path reports once each consumed first (SAM-5 5.14). */
export async function execOnPath(san: SanProcess, host: string, dev: string, cdbHex: string, dataHex = ''): Promise<ExecReply> {
  for (let i = 0; ; i++) {
    const r = await san.exec(host, dev, cdbHex, dataHex);
    if (!r.ok) throw new Error(`exec on ${host}/${dev} refused: ${r.error}`);
    if (!isUnitAttention(r) || i >= UA_RETRIES) return r;
  }
}

/** READ KEYS on one path device: the keys the LU lists (one per registered nexus), or the outcome kind when not GOOD. */
export async function readKeysOnPath(san: SanProcess, host: string, dev: string): Promise<string[] | string> {
  const r = await execOnPath(san, host, dev, READ_KEYS_CDB);
  if (r.outcome?.kind !== 'good') return r.outcome?.kind ?? 'no outcome';
  const d = Buffer.from(r.outcome.data ?? '', 'hex');
  const additional = d.readUInt32BE(4);
  const keys: string[] = [];
  for (let off = 8; off + 8 <= Math.min(d.length, 8 + additional); off += 8) keys.push(keyHex(d.readBigUInt64BE(off)));
  return keys;
}

/** WRITE(10) of one block at LBA 0 down one path device: 'good', 'reservation-conflict', ... */
export async function writeOnPath(san: SanProcess, host: string, dev: string): Promise<string> {
  const r = await execOnPath(san, host, dev, '2a000000000000000100', '00'.repeat(512));
  return r.outcome?.kind ?? 'no outcome';
}

/** READ(10) of one block at LBA 0 down one path device. */
export async function readOnPath(san: SanProcess, host: string, dev: string): Promise<string> {
  const r = await execOnPath(san, host, dev, '28000000000000000100');
  return r.outcome?.kind ?? 'no outcome';
}

// --- the QEMU-like client -------------------------------------------------------------------------

/**
 * A long-running Python process that runs each request in its own thread: opens the device file
 * O_RDWR, connects to the helper socket (feature negotiation as QEMU), sends one command with the
 * fd, prints the reply as one JSON line. A helper that dies mid-command is reported as `closed`.
 */
const DRIVER = String.raw`
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
from prh_client import PrHelperClient, HelperClosed, basic_parameters, sense_summary
lock = threading.Lock()
def reply(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + '\n')
        sys.stdout.flush()
def run(req):
    rid = req['id']
    try:
        fd = os.open(req['device'], os.O_RDWR)
        try:
            with PrHelperClient(req['socket'], timeout=req.get('timeout', 60)) as c:
                if req['kind'] == 'in':
                    status, sense, data = c.pr_in(fd, req['sa'], req.get('alloc', 8192))
                else:
                    params = basic_parameters(int(req['key'], 16), int(req['saKey'], 16), aptpl=req.get('aptpl', False))
                    status, sense, data = c.pr_out(fd, req['sa'], params, scope=0, pr_type=req.get('type', 0))
        finally:
            os.close(fd)
        reply({'id': rid, 'status': status, 'sense': sense_summary(sense), 'data': data.hex()})
    except (HelperClosed, ConnectionResetError, BrokenPipeError) as e:
        reply({'id': rid, 'closed': True, 'error': '%s: %s' % (type(e).__name__, e)})
    except Exception as e:
        reply({'id': rid, 'error': '%s: %s' % (type(e).__name__, e)})
for line in sys.stdin:
    if line.strip():
        threading.Thread(target=run, args=(json.loads(line),), daemon=True).start()
`;

export interface PrReply {
  readonly status?: number;
  readonly sense?: { readonly key: number; readonly asc: number; readonly ascq: number } | null;
  readonly data?: string;
  /** The helper closed the connection before answering (QEMU: LOGICAL UNIT COMMUNICATION FAILURE). */
  readonly closed?: boolean;
  readonly error?: string;
}

export interface OutParams {
  readonly key?: bigint;
  readonly saKey?: bigint;
  readonly type?: number;
  readonly aptpl?: boolean;
}

export class PrClient {
  readonly #p: ChildProcess;
  readonly #waiting = new Map<number, (r: PrReply) => void>();
  readonly #stderr: string[] = [];
  #next = 1;
  #exited = false;

  constructor() {
    this.#p = spawn('python3', ['-u', '-c', DRIVER, join(repoRoot, 'test', 'clients')], { stdio: ['pipe', 'pipe', 'pipe'] });
    createInterface({ input: this.#p.stdout! }).on('line', (l) => {
      const r = JSON.parse(l) as PrReply & { id: number };
      const w = this.#waiting.get(r.id);
      this.#waiting.delete(r.id);
      w?.(r);
    });
    createInterface({ input: this.#p.stderr! }).on('line', (l) => this.#stderr.push(l));
    this.#p.once('exit', () => {
      this.#exited = true;
      for (const w of this.#waiting.values()) w({ error: `the Python client exited: ${this.#stderr.join('\n')}` });
      this.#waiting.clear();
    });
  }

  #request(body: Record<string, unknown>, timeoutMs = 60_000): Promise<PrReply> {
    if (this.#exited) return Promise.resolve({ error: `the Python client exited: ${this.#stderr.join('\n')}` });
    const id = this.#next++;
    return new Promise((ok) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        ok({ error: `no reply in ${timeoutMs} ms` });
      }, timeoutMs);
      this.#waiting.set(id, (r) => {
        clearTimeout(timer);
        ok(r);
      });
      this.#p.stdin!.write(JSON.stringify({ id, ...body }) + '\n');
    });
  }

  prIn(socket: string, device: string, sa: number, alloc = 8192): Promise<PrReply> {
    return this.#request({ socket, device, kind: 'in', sa, alloc });
  }

  prOut(socket: string, device: string, sa: number, p: OutParams = {}): Promise<PrReply> {
    return this.#request({ socket, device, kind: 'out', sa, key: keyHex(p.key ?? 0n), saKey: keyHex(p.saKey ?? 0n), type: p.type ?? 0, aptpl: p.aptpl ?? false });
  }

  async close(): Promise<void> {
    if (this.#exited) return;
    const exited = new Promise<void>((r) => this.#p.once('exit', () => r()));
    this.#p.stdin!.end();
    const timer = setTimeout(() => this.#p.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/** READ KEYS data -> keys ("0x..."). */
export function decodeKeys(hexData: string): string[] {
  const d = Buffer.from(hexData, 'hex');
  const additional = d.readUInt32BE(4);
  const out: string[] = [];
  for (let off = 8; off + 8 <= Math.min(d.length, 8 + additional); off += 8) out.push(keyHex(d.readBigUInt64BE(off)));
  return out;
}

/** READ RESERVATION data -> key and type, or null. */
export function decodeReservation(hexData: string): { key: string; type: number } | null {
  const d = Buffer.from(hexData, 'hex');
  if (d.readUInt32BE(4) < 16 || d.length < 22) return null;
  return { key: keyHex(d.readBigUInt64BE(8)), type: d[21]! & 0x0f };
}

// --- the lab: SAN + one prmux serve per host ------------------------------------------------------

export interface LabOptions {
  /** Hosts that get a prmux serve (default ['host1']). */
  readonly prmuxHosts?: readonly string[];
  /** Extra `prmux serve` arguments. */
  readonly serveArgs?: readonly string[];
}

/** Topology interval and verification period short enough for quick tests. */
export const TOPOLOGY_INTERVAL_MS = 200;
export const VERIFY_INTERVAL_MS = 500;
export const CHECKER_INTERVAL_MS = 200;

export class Lab {
  readonly dir: string;
  readonly san: SanProcess;
  readonly client: PrClient;
  readonly wwid: string;
  readonly #serveArgs: readonly string[];
  readonly #prmux = new Map<string, HelperProcess>();

  private constructor(dir: string, san: SanProcess, client: PrClient, wwid: string, serveArgs: readonly string[]) {
    this.dir = dir;
    this.san = san;
    this.client = client;
    this.wwid = wwid;
    this.#serveArgs = serveArgs;
  }

  static async start(opts: LabOptions = {}): Promise<Lab> {
    const dir = mkdtempSync(join(tmpdir(), 'prmux-fanout-e2e-'));
    let san: SanProcess | null = null;
    let client: PrClient | null = null;
    try {
      san = await startSanProcess(dir, ['--hosts', '2', '--luns', '1', '--paths', '2', '--checker-interval', String(CHECKER_INTERVAL_MS)]);
      const topo = JSON.parse(readFileSync(join(dir, 'host1', 'topology.json'), 'utf8')) as { maps: { wwid: string }[] };
      client = new PrClient();
      const lab = new Lab(dir, san, client, topo.maps[0]!.wwid, opts.serveArgs ?? []);
      for (const h of opts.prmuxHosts ?? ['host1']) await lab.startPrmux(h);
      return lab;
    } catch (e) {
      await client?.close();
      await san?.stop();
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  socket(host: string): string {
    return join(this.dir, `${host}.prmux.sock`);
  }

  /** The map's stand-in: what a guest's scsi-block disk on /dev/mapper/mpatha passes as its fd. */
  mapFile(host: string): string {
    return join(this.dir, host, 'dev', 'mapper', MAP);
  }

  prmux(host: string): HelperProcess {
    const p = this.#prmux.get(host);
    if (p === undefined) throw new Error(`no prmux serves ${host}`);
    return p;
  }

  /** `prmux serve --san DIR/HOST`; its state directory is the default one (DIR/HOST/prmux-state). */
  async startPrmux(host: string): Promise<HelperProcess> {
    const p = await startHelper({
      command: process.execPath,
      args: [
        cliPath,
        'serve',
        '-k',
        this.socket(host),
        '--san',
        join(this.dir, host),
        '--topology-interval',
        String(TOPOLOGY_INTERVAL_MS),
        '--verify-interval',
        String(VERIFY_INTERVAL_MS),
        '-v',
        ...this.#serveArgs,
      ],
      socket: this.socket(host),
    });
    this.#prmux.set(host, p);
    return p;
  }

  /** SIGKILL: no drain, no cleanup (the socket file stays; the next prmux replaces it). */
  async killPrmux(host: string): Promise<void> {
    const r = await this.prmux(host).stop('SIGKILL');
    if (r.signal !== 'SIGKILL') throw new Error(`prmux for ${host} ended with ${JSON.stringify(r)} instead of SIGKILL`);
    this.#prmux.delete(host);
  }

  out(host: string, sa: number, p: OutParams = {}): Promise<PrReply> {
    return this.client.prOut(this.socket(host), this.mapFile(host), sa, p);
  }

  in(host: string, sa: number, alloc = 8192): Promise<PrReply> {
    return this.client.prIn(this.socket(host), this.mapFile(host), sa, alloc);
  }

  /** The intent prmux keeps for the map of `host` on disk, or null when there is none. */
  intent(host: string): { key: string | null; lastKey: string | null; reservation: { type: number } | null; fenced?: unknown } | null {
    const file = join(this.dir, host, 'prmux-state', 'maps', fileNameForWwid(this.wwid));
    if (!existsSync(file)) return null;
    return JSON.parse(readFileSync(file, 'utf8')) as { key: string | null; lastKey: string | null; reservation: { type: number } | null };
  }

  /** Turn off multipathd's own before-reinstate registration, so a returning path can only get the key from prmux. */
  async silenceMultipathdKey(host: string): Promise<void> {
    await this.san.multipathd(host, `unsetprstatus map ${MAP}`);
    await this.san.multipathd(host, `unsetprkey map ${MAP}`);
    const m = hostOf(await this.san.status(), host).maps[0]!;
    if (m.prStatus || m.prKey !== null) throw new Error(`multipathd of ${host} still has PR status ${m.prStatus} key ${m.prKey}`);
  }

  /** Stderr of prmux of `host` (last lines), for failure messages. */
  log(host: string, lines = 40): string {
    const p = this.#prmux.get(host);
    return p === undefined ? '(not running)' : p.stderr.slice(-lines).join('\n');
  }

  async stop(): Promise<void> {
    for (const [host, p] of this.#prmux) {
      this.#prmux.delete(host);
      await p.stop('SIGTERM', 10_000).catch(() => p.stop('SIGKILL'));
    }
    await this.client.close();
    await this.san.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Poll `probe` until `done` accepts its value, or fail after `timeoutMs` (a generous bound that only
 * keeps a broken run from hanging) with the last value described.
 */
export async function eventually<T>(what: string, probe: () => Promise<T>, done: (v: T) => boolean, describe: (v: T) => string, timeoutMs = 10_000, stepMs = 50): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (done(v)) return v;
    if (Date.now() > until) throw new Error(`${what}: not reached within ${timeoutMs} ms; last seen: ${describe(v)}`);
    await sleep(stepMs);
  }
}
