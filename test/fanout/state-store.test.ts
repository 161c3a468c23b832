// The intent store: one file per WWID, written atomically; loading survives corrupt files and the
// leftovers of interrupted writes.

import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { emptyIntent, type MapIntent } from '../../src/fanout/intent.js';
import { fileNameForWwid, IntentStore } from '../../src/fanout/state-store.js';
import type { Logger } from '../../src/socket/logger.js';

const T0 = '2024-01-01T00:00:00.000Z';

function intent(wwid: string, key: bigint | null, over: Partial<MapIntent> = {}): MapIntent {
  return { ...emptyIntent(wwid, 'mpatha', T0), key, lastKey: key, ...over };
}

function recordingLogger(): Logger & { lines: { level: string; message: string; fields: unknown }[] } {
  const lines: { level: string; message: string; fields: unknown }[] = [];
  const at = (level: string) => (message: string, fields?: unknown) => void lines.push({ level, message, fields });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'prmux-store-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
async function freshStore(opts: ConstructorParameters<typeof IntentStore>[0] = {}): Promise<IntentStore> {
  const store = new IntentStore({ stateDir: join(root, `s${n++}`), ...opts });
  await store.init();
  return store;
}

describe('IntentStore', () => {
  it('writes one file per WWID under maps/, readable only by its owner, and loads it back', async () => {
    const store = await freshStore();
    const a = intent('3600a', 0x11n, { reservation: { type: 5 }, aptpl: true });
    const b = intent('3600b', null);
    await store.save(a);
    await store.save(b);
    assert.deepEqual((await readdir(store.dir)).sort(), ['3600a.json', '3600b.json']);
    assert.equal((await stat(store.pathOf('3600a'))).mode & 0o777, 0o600);
    const loaded = await store.loadAll();
    assert.deepEqual(
      [...loaded.intents].sort((x, y) => x.wwid.localeCompare(y.wwid)),
      [a, b],
    );
    assert.deepEqual(loaded.corrupt, []);
  });

  it('a state directory that does not exist yet loads as empty', async () => {
    const store = new IntentStore({ stateDir: join(root, 'never-created') });
    assert.deepEqual((await store.loadAll()).intents, []);
  });

  it('serialises writes to one WWID: many at once all land, the last one wins, no temporary file is left', async () => {
    const store = await freshStore();
    const writes = Array.from({ length: 25 }, (_, i) => store.save(intent('3600c', BigInt(i + 1))));
    await Promise.all(writes);
    const loaded = await store.loadAll();
    assert.equal(loaded.intents.length, 1);
    assert.equal(loaded.intents[0]!.key, 25n);
    assert.deepEqual(await readdir(store.dir), ['3600c.json']);
  });

  it('moves a corrupt file aside as .corrupt, logs it, and loads the others', async () => {
    const log = recordingLogger();
    const store = await freshStore({ logger: log });
    await store.save(intent('3600d', 5n));
    await writeFile(join(store.dir, '3600e.json'), '{"version":1,"wwid":"3600e", "key": tru');
    const first = await store.loadAll();
    assert.deepEqual(first.intents.map((i) => i.wwid), ['3600d']);
    assert.deepEqual(first.corrupt, [join(store.dir, '3600e.json.corrupt')]);
    assert.ok(log.lines.some((l) => l.level === 'error' && /unreadable/.test(l.message)));
    // The bad bytes are kept for the admin, and the next load does not trip over them again.
    assert.match(await readFile(join(store.dir, '3600e.json.corrupt'), 'utf8'), /tru$/);
    const second = await store.loadAll();
    assert.deepEqual(second.corrupt, []);
    assert.deepEqual(second.intents.map((i) => i.wwid), ['3600d']);
  });

  it('a second corrupt file of the same WWID does not overwrite the first one set aside', async () => {
    const store = await freshStore();
    await writeFile(join(store.dir, '3600f.json'), 'one');
    await store.loadAll();
    await writeFile(join(store.dir, '3600f.json'), 'two');
    await store.loadAll();
    assert.equal(await readFile(join(store.dir, '3600f.json.corrupt'), 'utf8'), 'one');
    assert.equal(await readFile(join(store.dir, '3600f.json.corrupt.1'), 'utf8'), 'two');
  });

  it('a file naming another WWID than its own name is treated as corrupt', async () => {
    const store = await freshStore();
    await store.save(intent('3600g', 1n));
    await writeFile(join(store.dir, '3600h.json'), await readFile(store.pathOf('3600g'), 'utf8'));
    const r = await store.loadAll();
    assert.deepEqual(r.intents.map((i) => i.wwid), ['3600g']);
    assert.equal(r.corrupt.length, 1);
  });

  it('a crash between writing the temporary file and the rename leaves the previous intent intact', async () => {
    // The write seam does what writeFileAtomic does up to the crash: a partial temporary file
    // beside the target, then nothing (the process died before rename).
    let crash = false;
    const store = await freshStore({
      writeFile: async (path, data) => {
        if (crash) {
          await writeFile(join(store.dir, `.${fileNameForWwid('3600i')}.4242.abc.tmp`), data.slice(0, 17));
          throw new Error('power lost');
        }
        const { writeFileAtomic } = await import('../../src/util/atomic-file.js');
        await writeFileAtomic(path, data);
      },
    });
    await store.save(intent('3600i', 0x1n));
    crash = true;
    await assert.rejects(store.save(intent('3600i', 0x2n)), /power lost/);
    const r = await store.loadAll();
    assert.equal(r.intents[0]!.key, 0x1n);
    assert.equal(r.leftovers.length, 1);
    assert.deepEqual(await readdir(store.dir), ['3600i.json']);
  });

  it('keeps a write-ahead record in the same file: a crash before the final write loads it; the final write clears it', async () => {
    const store = await freshStore();
    const prev = intent('3600w', 0x1n);
    const pending = { cdb: '5f000000000000001800', data: '0000000000000001' + '0000000000000002' + '00'.repeat(8), startedAt: T0 };
    await store.save({ ...prev, pending });
    const doc = JSON.parse(await readFile(store.pathOf('3600w'), 'utf8')) as Record<string, unknown>;
    assert.equal(doc['version'], 2);
    const crashed = await store.loadAll();
    assert.deepEqual(crashed.intents, [{ ...prev, pending }]);
    await store.save(intent('3600w', 0x2n));
    const done = await store.loadAll();
    assert.equal(done.intents[0]!.pending, undefined);
    assert.equal(done.intents[0]!.key, 0x2n);
    assert.equal((JSON.parse(await readFile(store.pathOf('3600w'), 'utf8')) as Record<string, unknown>)['version'], 1);
  });

  it('loads a version 1 file written by an older prmux', async () => {
    const store = await freshStore();
    await writeFile(
      store.pathOf('3600v'),
      JSON.stringify({ version: 1, wwid: '3600v', mapName: 'mpatha', key: '0x7', lastKey: '0x7', aptpl: true, allTgPt: false, reservation: { type: 5 }, updatedAt: T0 }),
    );
    const r = await store.loadAll();
    assert.deepEqual(r.corrupt, []);
    assert.deepEqual(r.intents, [intent('3600v', 0x7n, { aptpl: true, reservation: { type: 5 } })]);
  });

  it('a failed write does not block later writes of the same WWID', async () => {
    let fail = true;
    const store = await freshStore({
      writeFile: async (path, data) => {
        if (fail) throw new Error('disk full');
        await writeFile(path, data);
      },
    });
    await assert.rejects(store.save(intent('3600j', 1n)), /disk full/);
    fail = false;
    await store.save(intent('3600j', 2n));
    assert.equal((await store.loadAll()).intents[0]!.key, 2n);
  });

  it('remove() forgets a WWID', async () => {
    const store = await freshStore();
    await store.save(intent('3600k', 1n));
    await store.remove('3600k');
    await store.remove('3600k'); // idempotent
    assert.deepEqual((await store.loadAll()).intents, []);
  });

  it('WWIDs that are not plain names cannot escape the directory or hide as dot files', async () => {
    assert.equal(fileNameForWwid('3600abc'), '3600abc.json');
    assert.equal(fileNameForWwid('../etc/passwd'), '%2e.%2fetc%2fpasswd.json');
    assert.equal(fileNameForWwid('.hidden'), '%2ehidden.json');
    assert.equal(fileNameForWwid('a b%'), 'a%20b%25.json');
    const store = await freshStore();
    const odd = intent('eui.0123/x y%é', 3n);
    await store.save(odd);
    assert.deepEqual((await store.loadAll()).intents, [odd]);
  });
});
