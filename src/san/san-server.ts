// `prmux san start`: the simulated SAN as a process. Lays out DIR and serves its sockets:
//
//   DIR/ctl.sock                 control (prmux san ctl): {"id":1,"cmd":["path","down","host1","sda"]}
//   DIR/state/aptpl-<wwid>.json  APTPL state of each LUN (crash-safe; survives a restart)
//   DIR/<host>/multipathd.sock   multipathd 0.9.4 CLI, libmpathcmd framing
//   DIR/<host>/san.sock          command execution: {"id":1,"op":"exec","dev":"sda","cdb":"5e00..","data":"","timeoutMs":30000}
//   DIR/<host>/dev/<sdX>, DIR/<host>/dev/mapper/<map>   device stand-ins a client opens and passes as fds
//   DIR/<host>/topology.json     which file is which path or map, WWIDs, H:C:T:L, TransportIDs
//
// Every request socket answers one JSON line per request line, in order. A malformed request gets
// {"ok":false,"error":...}; a line that is not JSON, or longer than 256 KiB, closes that connection.

import { createServer, type Server, type Socket } from 'node:net';
import { mkdirSync, readFileSync, existsSync, unlinkSync, writeFileSync, statSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SimulatedSan, nexusId } from './san.js';
import type { SanConfig } from './config.js';
import { MpathFrameDecoder, encodeMessage, MULTIPATHD_MAX_COMMAND_BYTES } from '../mpath/mpathcmd-framing.js';
import { readJsonLines, writeJsonLine } from '../util/ndjson.js';
import { writeFileAtomicSync } from '../util/atomic-file.js';
import { fromHex } from '../scsi/bytes.js';
import { formatTransportId } from '../scsi/transport-id.js';
import type { PersistentPrState } from '../scsi/model/device-server.js';
import { isPrmuxError } from '../errors.js';
import { outcomeToJson } from './outcome-json.js';

export interface SanServerOptions {
  readonly dir: string;
  readonly config: SanConfig;
  readonly log?: (line: string) => void;
}

export interface SanServer {
  readonly san: SimulatedSan;
  readonly dir: string;
  close(): Promise<void>;
}

const MAX_EXEC_TIMEOUT_MS = 600_000;

function aptplFile(dir: string, wwid: string): string {
  return join(dir, 'state', `aptpl-${wwid}.json`);
}

function loadPersisted(dir: string, config: SanConfig, log: (l: string) => void): Map<string, PersistentPrState> {
  const out = new Map<string, PersistentPrState>();
  for (const lun of config.luns) {
    const file = aptplFile(dir, lun.wwid);
    if (!existsSync(file)) continue;
    try {
      out.set(lun.wwid, JSON.parse(readFileSync(file, 'utf8')) as PersistentPrState);
      log(`restored APTPL state of LUN ${lun.wwid}`);
    } catch (e) {
      log(`ignoring unreadable APTPL state ${file}: ${(e as Error).message}`);
    }
  }
  return out;
}

function listen(server: Server, path: string): Promise<void> {
  if (existsSync(path)) unlinkSync(path);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

export async function startSanServer(options: SanServerOptions): Promise<SanServer> {
  const { dir, config } = options;
  const log = options.log ?? (() => undefined);
  mkdirSync(join(dir, 'state'), { recursive: true });
  const persisted = loadPersisted(dir, config, log);
  const writeTopology = (host: string): void => writeHostTopology(dir, san, host);
  const mpathServers = new Map<string, { server: Server; sockets: Set<Socket> }>();
  const san: SimulatedSan = new SimulatedSan(
    config,
    {
      log,
      persist: (wwid, state) => {
        const file = aptplFile(dir, wwid);
        if (state) writeFileAtomicSync(file, JSON.stringify(state, null, 1) + '\n');
        else if (existsSync(file)) unlinkSync(file);
      },
      topologyChanged: (host) => writeTopology(host),
      multipathdChanged: (host, running) => {
        void (running ? startMultipathd(host) : stopMultipathd(host));
      },
    },
    { persisted },
  );

  const servers: { server: Server; sockets: Set<Socket> }[] = [];
  const track = (server: Server): Set<Socket> => {
    const sockets = new Set<Socket>();
    server.on('connection', (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    });
    return sockets;
  };

  // --- multipathd sockets ---
  const startMultipathd = async (host: string): Promise<void> => {
    if (mpathServers.has(host)) return;
    const server = createServer((socket) => serveMultipathd(san, host, socket, log));
    const sockets = track(server);
    mpathServers.set(host, { server, sockets });
    await listen(server, join(dir, host, 'multipathd.sock'));
  };
  const stopMultipathd = async (host: string): Promise<void> => {
    const entry = mpathServers.get(host);
    if (!entry) return;
    mpathServers.delete(host);
    await closeServer(entry.server, entry.sockets);
    const path = join(dir, host, 'multipathd.sock');
    if (existsSync(path)) unlinkSync(path);
  };

  for (const host of san.hostNames()) {
    mkdirSync(join(dir, host, 'dev', 'mapper'), { recursive: true });
    for (const p of san.paths.filter((x) => x.host === host)) touch(join(dir, host, 'dev', p.dev));
    for (const m of san.maps.filter((x) => x.host === host)) touch(join(dir, host, 'dev', 'mapper', m.alias));
    writeTopology(host);
    await startMultipathd(host);
    const exec = createServer((socket) => serveExec(san, host, dir, socket));
    const sockets = track(exec);
    servers.push({ server: exec, sockets });
    await listen(exec, join(dir, host, 'san.sock'));
  }

  const ctl = createServer((socket) => serveCtl(san, socket));
  servers.push({ server: ctl, sockets: track(ctl) });
  await listen(ctl, join(dir, 'ctl.sock'));
  san.start();

  return {
    san,
    dir,
    async close() {
      san.close();
      for (const host of [...mpathServers.keys()]) await stopMultipathd(host);
      for (const s of servers) await closeServer(s.server, s.sockets);
      for (const host of san.hostNames()) {
        const p = join(dir, host, 'san.sock');
        if (existsSync(p)) unlinkSync(p);
      }
      if (existsSync(join(dir, 'ctl.sock'))) unlinkSync(join(dir, 'ctl.sock'));
    },
  };
}

function touch(path: string): void {
  if (!existsSync(path)) writeFileSync(path, '');
}

/** Where each device stand-in is, with the identifiers a client needs; rewritten on topology changes. */
function writeHostTopology(dir: string, san: SimulatedSan, host: string): void {
  const base = join(dir, host);
  const inode = (file: string): number => {
    try {
      return statSync(file).ino;
    } catch {
      return 0;
    }
  };
  const doc = {
    host,
    maps: san.maps
      .filter((m) => m.host === host)
      .map((m) => ({
        name: m.alias,
        wwid: san.config.luns[m.lun]!.wwid,
        file: join(base, 'dev', 'mapper', m.alias),
        inode: inode(join(base, 'dev', 'mapper', m.alias)),
        paths: san.paths.filter((p) => p.host === host && p.lun === m.lun && !p.removed).map((p) => p.dev),
      })),
    paths: san.paths
      .filter((p) => p.host === host)
      .map((p) => ({
        dev: p.dev,
        file: join(base, 'dev', p.dev),
        inode: inode(join(base, 'dev', p.dev)),
        wwid: san.config.luns[p.lun]!.wwid,
        map: 'mpath' + 'abcdefghijklmnopqrstuvwxyz'[p.lun]!,
        hcil: `${p.hcil.host}:${p.hcil.channel}:${p.hcil.target}:${p.hcil.lun}`,
        devT: p.devT,
        transportId: formatTransportId(p.initiator),
        relativeTargetPortId: p.relativeTargetPortId,
        nexus: nexusId(p),
        removed: p.removed,
      })),
  };
  writeFileAtomicSync(join(base, 'topology.json'), JSON.stringify(doc, null, 2) + '\n');
}

function serveMultipathd(san: SimulatedSan, host: string, socket: Socket, log: (l: string) => void): void {
  const decoder = new MpathFrameDecoder({ maxMessageBytes: MULTIPATHD_MAX_COMMAND_BYTES, structure: 'multipathd command' });
  let chain = Promise.resolve();
  socket.on('data', (chunk: Buffer) => {
    const step = decoder.feed(chunk);
    for (const m of step.messages) {
      chain = chain.then(async () => {
        let reply: string;
        try {
          reply = await san.multipathdCommand(host, m.text);
        } catch (e) {
          log(`${host}: multipathd command failed: ${(e as Error).message}`);
          reply = 'fail\n';
        }
        if (!socket.destroyed) socket.write(encodeMessage(reply));
      });
    }
    if (step.error) {
      log(`${host}: closing a multipathd connection: ${step.error.message}`);
      void chain.then(() => socket.destroy());
    }
  });
}

function serveExec(san: SimulatedSan, host: string, dir: string, socket: Socket): void {
  let chain = Promise.resolve();
  readJsonLines(
    socket,
    (req) => {
      chain = chain.then(async () => writeJsonLine(socket, await answerExec(san, host, dir, req)));
    },
    (why) => writeJsonLine(socket, { id: null, ok: false, error: `Cannot read request: ${why}` }),
  );
}

async function answerExec(san: SimulatedSan, host: string, dir: string, req: unknown): Promise<Record<string, unknown>> {
  const r = (typeof req === 'object' && req !== null ? req : {}) as Record<string, unknown>;
  const id = r['id'] ?? null;
  try {
    switch (r['op']) {
      case 'exec': {
        const dev = r['dev'];
        if (typeof dev !== 'string') return { id, ok: false, error: 'Cannot execute: dev must be a string ("sda" or "mapper/mpatha")' };
        if (typeof r['cdb'] !== 'string') return { id, ok: false, error: 'Cannot execute: cdb must be hex' };
        const cdb = fromHex(r['cdb']);
        if (cdb.length < 6 || cdb.length > 16) return { id, ok: false, error: `Cannot execute: cdb has ${cdb.length} bytes (6 to 16)` };
        const data = typeof r['data'] === 'string' ? fromHex(r['data']) : new Uint8Array(0);
        const t = r['timeoutMs'] ?? 30000;
        if (typeof t !== 'number' || !(t > 0) || t > MAX_EXEC_TIMEOUT_MS) return { id, ok: false, error: `Cannot execute: timeoutMs must be 1..${MAX_EXEC_TIMEOUT_MS}` };
        const result = await san.exec({ host, dev, cdb, data, timeoutMs: t });
        return { id, ok: true, path: result.path, outcome: outcomeToJson(result.outcome) };
      }
      case 'topology':
        return { id, ok: true, topology: JSON.parse(readFileSync(join(dir, host, 'topology.json'), 'utf8')) as unknown };
      default:
        return { id, ok: false, error: `Cannot answer: unknown op ${JSON.stringify(r['op'])} (exec, topology)` };
    }
  } catch (e) {
    if (isPrmuxError(e)) return { id, ok: false, error: e.message, code: e.code };
    throw e;
  }
}

function serveCtl(san: SimulatedSan, socket: Socket): void {
  readJsonLines(
    socket,
    (req) => {
      const r = (typeof req === 'object' && req !== null ? req : {}) as Record<string, unknown>;
      const id = r['id'] ?? null;
      const cmd = r['cmd'];
      if (!Array.isArray(cmd) || !cmd.every((w) => typeof w === 'string')) {
        writeJsonLine(socket, { id, ok: false, error: 'Cannot run ctl: cmd must be an array of strings' });
        return;
      }
      try {
        writeJsonLine(socket, { id, ok: true, result: san.ctl(cmd as string[]) });
      } catch (e) {
        writeJsonLine(socket, { id, ok: false, error: e instanceof Error ? e.message : String(e) });
      }
    },
    (why) => writeJsonLine(socket, { id: null, ok: false, error: `Cannot read request: ${why}` }),
  );
}

/** For tests and tools: the device stand-ins present under a host directory. */
export function listDeviceFiles(dir: string, host: string): string[] {
  const base = join(dir, host, 'dev');
  return [...readdirSync(base).filter((f) => f.startsWith('sd')), ...readdirSync(join(base, 'mapper')).map((m) => `mapper/${m}`)];
}
