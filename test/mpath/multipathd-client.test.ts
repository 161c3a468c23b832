import { listenUnixAbstract } from '../../src/socket/unix-fd.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EncodeError, ErrorCode, isPrmuxError } from '../../src/errors.js';
import { MultipathdClient, socketPathOf } from '../../src/mpath/multipathd-client.js';
import { MpathFrameDecoder, encodeMessage } from '../../src/mpath/mpathcmd-framing.js';
import { answerCommandLine } from '../../src/mpath/multipathd-cli.js';
import type { MpathTopology } from '../../src/mpath/topology-model.js';
import { readSample } from '../support/paths.js';
import { healthy, labTopology } from './lab-fixtures.js';

/** What the fake server does with one received command. */
type Behaviour =
  | { kind: 'answer' } // as the reference executor, from the server's topology
  | { kind: 'reply'; text: string }
  | { kind: 'close-mid-reply' } // header promising 100 bytes, 10 bytes, then close
  | { kind: 'stall' } // never answer
  | { kind: 'raw'; bytes: Uint8Array };

interface FakeServer {
  name: string;
  connections: number;
  commands: string[];
  topology: MpathTopology;
  /** Behaviour for the n-th command (0-based, over all connections); default 'answer'. */
  plan: Behaviour[];
  close(): Promise<void>;
}

/** A tiny multipathd: frames decoded with the same decoder, commands answered by the reference executor. */
async function startServer(name: string, topology: MpathTopology): Promise<FakeServer> {
  const sockets = new Set<net.Socket>();
  const fake: FakeServer = {
    name,
    connections: 0,
    commands: [],
    topology,
    plan: [],
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = net.createServer((socket) => {
    fake.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new MpathFrameDecoder({ maxMessageBytes: 512, structure: 'test command' });
    socket.on('data', (chunk: Buffer) => {
      const step = decoder.feed(chunk);
      for (const m of step.messages) {
        const behaviour = fake.plan[fake.commands.length] ?? { kind: 'answer' };
        fake.commands.push(m.text);
        switch (behaviour.kind) {
          case 'answer': {
            const r = answerCommandLine(fake.topology, m.text);
            fake.topology = r.topology;
            socket.write(encodeMessage(r.reply));
            break;
          }
          case 'reply':
            socket.write(encodeMessage(behaviour.text));
            break;
          case 'close-mid-reply': {
            const frame = encodeMessage('x'.repeat(99));
            socket.end(frame.subarray(0, 18));
            break;
          }
          case 'stall':
            break;
          case 'raw':
            socket.write(behaviour.bytes);
            break;
        }
      }
      if (step.error) socket.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // An abstract name is bound with its exact length, as multipathd binds it (Node's net pads it).
    if (name.startsWith('@')) server.listen({ fd: listenUnixAbstract(name.slice(1), 16) }, () => resolve());
    else server.listen(socketPathOf(name), () => resolve());
  });
  return fake;
}

function tempSocketName(): { name: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'prmux-mpathd-'));
  return { name: join(dir, 'multipathd.socket'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

async function withServer(fn: (server: FakeServer, client: MultipathdClient) => Promise<void>, clientTimeoutMs = 2000): Promise<void> {
  const { name, cleanup } = tempSocketName();
  const server = await startServer(name, labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]));
  const client = new MultipathdClient({ socket: name, timeoutMs: clientTimeoutMs });
  try {
    await fn(server, client);
  } finally {
    await client.close();
    await server.close();
    cleanup();
  }
}

const hasCode = (code: string) => (e: unknown): boolean => isPrmuxError(e) && e.code === code;

test('client: show maps json, show paths and raw commands over a pathname socket', async () => {
  await withServer(async (server, client) => {
    const maps = await client.showMapsJson();
    assert.equal(maps.maps[0]?.name, 'mpatha');
    assert.deepEqual(maps.maps[0]?.pathGroups[0]?.paths.map((p) => p.dev), ['sda', 'sdb']);
    const paths = await client.showPaths();
    assert.deepEqual(paths.map((p) => [p.dev, p.map, p.dmState, p.checkerState, p.hcil?.host]), [
      ['sda', 'mpatha', 'active', 'ready', 0],
      ['sdb', 'mpatha', 'active', 'ready', 1],
    ]);
    assert.equal(await client.command('show paths'), readSample('multipathd_show_paths.txt'));
    assert.equal((await client.showMapJson('mpatha')).map.uuid, maps.maps[0]?.uuid);
    assert.match(await client.command('show bogus'), /^show bogus: not found\nmultipath-tools v0\.9\.4/);
    assert.equal(server.connections, 1, 'one connection serves every request');
  });
});

test('client: PR bookkeeping commands and their replies', async () => {
  await withServer(async (server, client) => {
    assert.equal(await client.getPrKey('mpatha'), null);
    await client.setPrKey('mpatha', 0x777n);
    assert.deepEqual(await client.getPrKey('mpatha'), { key: 0x777n, aptpl: false });
    await client.setPrKey('mpatha', 0xabcdefn, { aptpl: true });
    assert.deepEqual(await client.getPrKey('mpatha'), { key: 0xabcdefn, aptpl: true });
    assert.equal(await client.getPrStatus('mpatha'), false);
    await client.setPrStatus('mpatha');
    assert.equal(await client.getPrStatus('mpatha'), true);
    await client.unsetPrStatus('mpatha');
    assert.equal(await client.getPrStatus('mpatha'), false);
    await client.unsetPrKey('mpatha');
    assert.equal(await client.getPrKey('mpatha'), null);
    assert.ok(server.commands.includes('setprkey map mpatha key 0x777'));
    assert.ok(server.commands.includes('setprkey map mpatha key 0xabcdef:aptpl'));
    await assert.rejects(client.setPrStatus('nosuchmap'), hasCode(ErrorCode.MULTIPATHD));
    await assert.rejects(client.getPrKey('nosuchmap'), hasCode(ErrorCode.MULTIPATHD));
    await assert.rejects(client.getPrStatus('nosuchmap'), hasCode(ErrorCode.MULTIPATHD));
    await assert.rejects(client.showMapJson('nosuchmap'), hasCode(ErrorCode.MULTIPATHD));
    await assert.rejects(client.setPrKey('mpatha', 0n), EncodeError);
    await assert.rejects(client.setPrKey('mp atha', 1n), EncodeError);
  });
});

test('client: concurrent commands are serialized on one connection, replies in order', async () => {
  await withServer(async (server, client) => {
    const replies = await Promise.all([
      client.command('getprstatus map mpatha'),
      client.command('show paths raw format "%d"'),
      client.command('show maps raw format "%n %d"'),
    ]);
    assert.deepEqual(replies, ['0', 'sda\nsdb\n', 'mpatha dm-0\n']);
    assert.equal(server.connections, 1);
  });
});

test('client: the server closing mid-reply fails that request; the next one reconnects', async () => {
  await withServer(async (server, client) => {
    server.plan = [{ kind: 'close-mid-reply' }];
    await assert.rejects(client.command('show paths'), (e: unknown) => hasCode(ErrorCode.MULTIPATHD)(e) && /after 18 bytes of a reply/.test((e as Error).message));
    assert.equal(await client.command('show paths raw format "%d"'), 'sda\nsdb\n');
    assert.equal(server.connections, 2);
  });
});

test('client: a stalled server times the request out; the next request uses a new connection', async () => {
  await withServer(async (server, client) => {
    server.plan = [{ kind: 'stall' }];
    await assert.rejects(client.command('show maps'), hasCode(ErrorCode.TIMEOUT));
    assert.equal(await client.command('getprstatus map mpatha'), '0');
    assert.equal(server.connections, 2);
  }, 200);
});

test('client: an oversized or unsolicited reply drops the connection', async () => {
  await withServer(async (server, client) => {
    const huge = new Uint8Array(8);
    new DataView(huge.buffer).setUint32(0, 64 * 1024 * 1024, true);
    server.plan = [{ kind: 'raw', bytes: huge }, { kind: 'raw', bytes: Uint8Array.from([...encodeMessage('ok\n'), ...encodeMessage('extra\n')]) }];
    await assert.rejects(client.command('show maps'), (e: unknown) => hasCode(ErrorCode.MULTIPATHD)(e) && /exceeds the bound/.test((e as Error).message));
    assert.equal(await client.command('show maps'), 'ok\n');
    assert.equal(await client.command('getprstatus map mpatha'), '0');
    assert.equal(server.connections, 3);
  });
});

test('client: a reply that does not parse is a MULTIPATHD error naming the reply', async () => {
  await withServer(async (server, client) => {
    server.plan = [{ kind: 'reply', text: 'fail\n' }, { kind: 'reply', text: 'garbage' }];
    await assert.rejects(client.showMapsJson(), (e: unknown) => hasCode(ErrorCode.MULTIPATHD)(e) && (e as Error).message.includes('"fail\\n"'));
    await assert.rejects(client.getPrStatus('mpatha'), hasCode(ErrorCode.MULTIPATHD));
  });
});

test('client: command bounds and close()', async () => {
  await withServer(async (server, client) => {
    await assert.rejects(client.command('x'.repeat(512)), (e: unknown) => e instanceof EncodeError && e.field === 'length');
    await assert.rejects(client.command('a\0b'), EncodeError);
    server.plan = [{ kind: 'stall' }];
    const pending = assert.rejects(client.command('show maps'), hasCode(ErrorCode.CLOSED));
    const queued = assert.rejects(client.command('show paths'), hasCode(ErrorCode.CLOSED));
    // Let the first request reach the server before closing.
    while (server.commands.length === 0) await new Promise((r) => setImmediate(r));
    await client.close();
    await pending;
    await queued;
    await assert.rejects(client.command('show maps'), hasCode(ErrorCode.CLOSED));
  });
});

test('client: the request queue is bounded', async () => {
  const { name, cleanup } = tempSocketName();
  const server = await startServer(name, labTopology([healthy('sda', 1, 4)]));
  server.plan = [{ kind: 'stall' }];
  const client = new MultipathdClient({ socket: name, maxQueuedRequests: 1, timeoutMs: 5000 });
  try {
    const first = assert.rejects(client.command('show maps'), hasCode(ErrorCode.CLOSED));
    const second = assert.rejects(client.command('show maps'), hasCode(ErrorCode.CLOSED));
    await assert.rejects(client.command('show maps'), (e: unknown) => hasCode(ErrorCode.MULTIPATHD)(e) && /already waiting/.test((e as Error).message));
    await client.close();
    await first;
    await second;
  } finally {
    await server.close();
    cleanup();
  }
});

test('client: socket names are tried in order, abstract names work, and none reachable is an error', async () => {
  const missing = tempSocketName();
  const abstract = `@prmux-test-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
  const server = await startServer(abstract, labTopology([healthy('sda', 1, 4)]));
  const client = new MultipathdClient({ socket: [missing.name, abstract] });
  const lost = new MultipathdClient({ socket: missing.name });
  try {
    assert.equal(await client.command('show paths raw format "%d %D"'), 'sda 8:0\n');
    await assert.rejects(lost.command('show maps'), (e: unknown) => hasCode(ErrorCode.MULTIPATHD)(e) && /ENOENT/.test((e as Error).message));
  } finally {
    await client.close();
    await lost.close();
    await server.close();
    missing.cleanup();
  }
  assert.throws(() => new MultipathdClient({ socket: [] }), hasCode(ErrorCode.CONFIG));
  assert.throws(() => new MultipathdClient({ timeoutMs: 0 }), hasCode(ErrorCode.CONFIG));
});
