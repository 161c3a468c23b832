// `prmux demo` (npm start): an embedded simulated SAN (two hypervisor hosts, one LUN, two paths
// each), one `prmux serve` per host on it, and a fence_scsi-style scenario sent through those
// sockets exactly as QEMU sends a guest's commands (CDB + device fd over SCM_RIGHTS). Then it keeps
// serving (unless --once) and prints what a client needs: the socket paths and device files.

import { mkdtempSync, openSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultSanConfig } from '../san/config.js';
import { type SanServer, listDeviceFiles, startSanServer } from '../san/san-server.js';
import { JsonLineClient } from '../san/client.js';
import { encodePrInCdb, encodePrOutCdb } from '../scsi/cdb.js';
import { PrInAction, PrOutAction, PrType, PrTypeName, ScsiStatus } from '../scsi/constants.js';
import { decodeReadFullStatus, decodeReadKeys, decodeReadReservation } from '../scsi/prin-data.js';
import { encodePrOutParams } from '../scsi/prout-params.js';
import { formatSense } from '../scsi/sense.js';
import { formatTransportId } from '../scsi/transport-id.js';
import { PrHelperClient } from '../socket/pr-helper-client.js';
import { type ServeHandle, startServe } from '../serve/serve.js';

export interface ServeDemoOptions {
  /** Directory for the SAN and sockets; a new temporary one by default (removed on exit). */
  readonly dir?: string;
  /** Exit after the scenario instead of serving until SIGINT/SIGTERM. */
  readonly once?: boolean;
}

export interface DemoIo {
  readonly out: (line: string) => void;
  readonly err: (line: string) => void;
  /** Resolves when the user asks to stop (Ctrl-C). */
  readonly stopRequested: () => Promise<string>;
}

const HOSTS = [
  { name: 'host1', key: 0x1111n },
  { name: 'host2', key: 0x2222n },
] as const;

const STATUS_NAME: Record<number, string> = { 0x00: 'GOOD', 0x02: 'CHECK CONDITION', 0x08: 'BUSY', 0x18: 'RESERVATION CONFLICT', 0x28: 'TASK SET FULL' };

function params(key: bigint, serviceActionKey: bigint): Uint8Array {
  return encodePrOutParams({ key, serviceActionKey, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
}

export async function runServeDemo(opts: ServeDemoOptions, io: DemoIo): Promise<number> {
  const temporary = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'prmux-demo-'));
  let san: SanServer | null = null;
  const serving: ServeHandle[] = [];
  const clients: PrHelperClient[] = [];
  const direct = new Map<string, JsonLineClient>();
  try {
    san = await startSanServer({ dir, config: defaultSanConfig({ hosts: 2, luns: 1, paths: 2 }) });
    io.out(`simulated SAN: ${dir} (hosts host1 host2; LUN ${san.san.config.luns[0]!.wwid}; 2 paths per host)`);
    const sockets: Record<string, string> = {};
    for (const h of HOSTS) {
      const socket = join(dir, h.name, 'prmux.sock');
      sockets[h.name] = socket;
      serving.push(
        await startServe(
          { socket, san: join(dir, h.name), verbosity: 1, topologyIntervalMs: 250, verifyIntervalMs: 5000 },
          { pid: process.pid, env: {}, execPath: process.execPath, execArgv: [], argv: [], stderr: io.err, onStopSignal: () => () => undefined },
        ),
      );
      io.out(`prmux serve for ${h.name}: socket ${socket}`);
      io.out(`  device files a client passes: ${listDeviceFiles(dir, h.name).map((f) => join(dir, h.name, 'dev', f)).join(' ')}`);
    }

    // The scenario, as two guests' QEMU processes would send it.
    const conn: Record<string, PrHelperClient> = {};
    for (const h of HOSTS) clients.push((conn[h.name] = await PrHelperClient.connect(sockets[h.name]!)));
    let ok = true;
    const send = async (host: string, dev: string, cdb: Uint8Array, data: Uint8Array | null) => {
      const fd = openSync(join(dir, host, 'dev', dev), 'r+');
      try {
        return await conn[host]!.command(cdb, fd, data);
      } finally {
        closeSync(fd);
      }
    };
    const step = async (what: string, host: string, dev: string, cdb: Uint8Array, data: Uint8Array | null, want: number) => {
      const r = await send(host, dev, cdb, data);
      const pass = r.status === want;
      ok &&= pass;
      const sense = r.status === ScsiStatus.CHECK_CONDITION ? ` ${formatSense(r.sense)}` : '';
      io.out(`${pass ? 'ok  ' : 'FAIL'} ${`${host}/${dev}`.padEnd(18)} ${what.padEnd(44)} -> ${STATUS_NAME[r.status] ?? r.status}${sense}`);
      return r;
    };
    const guestWrite = async (host: string, dev: string, want: string) => {
      let c = direct.get(host);
      if (c === undefined) direct.set(host, (c = new JsonLineClient(join(dir, host, 'san.sock'))));
      const r = await c.request({ op: 'exec', dev, cdb: '2a000000000000000100', data: '00'.repeat(512) });
      const kind = String((r['outcome'] as Record<string, unknown> | undefined)?.['kind']);
      const pass = kind === want;
      ok &&= pass;
      io.out(`${pass ? 'ok  ' : 'FAIL'} ${`${host}/${dev}`.padEnd(18)} ${'guest WRITE(10) (data path, not PR)'.padEnd(44)} -> ${kind}`);
    };
    const out = (sa: number, type = 0) => encodePrOutCdb({ serviceAction: sa, type, parameterListLength: 24 });
    const weRo = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY;

    const map = 'mapper/mpatha';
    const fullStatus = async (host: string, label: string) => {
      const r = await step(`READ FULL STATUS (${label})`, host, map, encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 8192 }), null, ScsiStatus.GOOD);
      const d = decodeReadFullStatus(r.payload).descriptors;
      for (const x of d) io.out(`       key 0x${x.key.toString(16)} port ${x.relativeTargetPortId} ${formatTransportId(x.transportId)}${x.reservationHolder ? ` holder ${PrTypeName[x.type] ?? x.type}` : ''}`);
      return d;
    };

    io.out('');
    io.out('fence_scsi scenario, each guest using its multipath disk (the map fd), as QEMU sends it:');
    for (const h of HOSTS) await step(`REGISTER key 0x${h.key.toString(16)}`, h.name, map, out(PrOutAction.REGISTER), params(0n, h.key), ScsiStatus.GOOD);
    const regs = await fullStatus('host1', 'one registration per path of each host');
    const perPath = regs.length === 4 && HOSTS.every((h) => regs.filter((d) => d.key === h.key).length === 2);
    ok &&= perPath;
    io.out(`       ${perPath ? 'each key is on both paths of its host: the fan-out reached every I_T nexus' : 'FAIL: a key is missing from a path'}`);
    await step(`RESERVE ${PrTypeName[weRo]}`, 'host1', map, out(PrOutAction.RESERVE, weRo), params(0x1111n, 0n), ScsiStatus.GOOD);
    for (const dev of ['sda', 'sdb']) await guestWrite('host1', dev, 'good');
    await step('PREEMPT AND ABORT key 0x1111 (fence host1)', 'host2', map, out(PrOutAction.PREEMPT_AND_ABORT, weRo), params(0x2222n, 0x1111n), ScsiStatus.GOOD);
    const rk = await step('READ KEYS', 'host2', map, encodePrInCdb({ serviceAction: PrInAction.READ_KEYS, allocationLength: 8192 }), null, ScsiStatus.GOOD);
    io.out(`       keys: ${decodeReadKeys(rk.payload).keys.map((k) => `0x${k.toString(16)}`).join(' ')}`);
    for (const dev of ['sda', 'sdb']) {
      await guestWrite('host1', dev, 'check-condition'); // the unit attention the preemption left
      await guestWrite('host1', dev, 'reservation-conflict');
    }
    const seen = await step('READ RESERVATION (the fenced host looks)', 'host1', map, encodePrInCdb({ serviceAction: PrInAction.READ_RESERVATION, allocationLength: 8192 }), null, ScsiStatus.GOOD);
    const now = decodeReadReservation(seen.payload).reservation;
    const heldByHost2 = now !== null && now.key === 0x2222n;
    ok &&= heldByHost2;
    io.out(`       ${heldByHost2 ? 'holder is now host2 (key 0x2222)' : 'FAIL: host2 does not hold the reservation'}`);

    io.out('');
    io.out("a path of host2 is hot-removed (the LU drops that I_T nexus's registration) and comes back:");
    san.san.ctl(['path', 'remove', 'host2', 'sdb']);
    san.san.ctl(['path', 'add', 'host2', 'sdb']);
    const back = Date.now();
    let restored = false;
    while (!restored && Date.now() - back < 10_000) {
      await new Promise((r) => setTimeout(r, 100));
      const c = direct.get('host2') ?? new JsonLineClient(join(dir, 'host2', 'san.sock'));
      direct.set('host2', c);
      const r = await c.request({ op: 'exec', dev: 'sda', cdb: Buffer.from(encodePrInCdb({ serviceAction: PrInAction.READ_FULL_STATUS, allocationLength: 8192 })).toString('hex'), data: '' });
      const o = r['outcome'] as Record<string, unknown> | undefined;
      if (o?.['kind'] === 'good') restored = decodeReadFullStatus(Buffer.from(String(o['data']), 'hex')).descriptors.filter((d) => d.key === 0x2222n).length === 2;
    }
    ok &&= restored;
    io.out(`${restored ? 'ok  ' : 'FAIL'} host2/sdb          the key guard registered 0x2222 on the returned path ${restored ? `after ${Date.now() - back} ms` : '(not within 10 s)'}`);
    await fullStatus('host2', 'after the path returned');
    io.out('');
    io.out(ok ? 'demo: every command answered as expected' : 'demo: some commands answered unexpectedly');
    if (opts.once === true) return ok ? 0 : 1;

    io.out('');
    io.out('serving until Ctrl-C. Try, from another shell:');
    io.out(`  python3 test/clients/prh_client.py --socket ${sockets['host1']} --device ${join(dir, 'host1', 'dev', 'sda')} read-keys`);
    io.out(`  node dist/src/cli.js san ctl --dir ${dir} status --json`);
    const why = await io.stopRequested();
    io.out(`stopping (${why})`);
    return ok ? 0 : 1;
  } finally {
    for (const c of clients) c.close();
    for (const c of direct.values()) c.close();
    for (const s of serving) s.stop();
    await Promise.all(serving.map((s) => s.done));
    await san?.close();
    if (temporary) rmSync(dir, { recursive: true, force: true });
  }
}
