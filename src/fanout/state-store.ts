// Where the intended PR state of each map survives a restart or a crash: one JSON file per WWID
// under `${stateDir}/maps/` (default state directory /var/lib/prmux). Every write replaces the file
// atomically (temporary file, fsync, rename, fsync of the directory: util/atomic-file.ts), so after
// a crash the file holds either the old intent or the new one, never a mix.
//
// Loading never takes the daemon down: a file that does not parse is logged and moved aside as
// `<name>.corrupt` (kept for the admin, never read again), and temporary files a crash left behind
// are removed. Writes to one WWID are serialised: two writes in flight could otherwise pick the
// same temporary name (pid + millisecond) and the later rename would find it gone.

import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { type Logger, nullLogger } from '../socket/logger.js';
import { ErrorCode, PrmuxError } from '../errors.js';
import { intentFromJson, intentToJson, type MapIntent } from './intent.js';

export const DEFAULT_STATE_DIR = '/var/lib/prmux';

export interface IntentStoreOptions {
  /** Default /var/lib/prmux; intents live in its maps/ subdirectory. */
  readonly stateDir?: string;
  readonly logger?: Logger | null;
  /** Write seam (default writeFileAtomic); tests use it to fail or observe writes. */
  readonly writeFile?: (path: string, data: string) => Promise<void>;
  /** Largest intent file read (default 64 KiB): a bigger one is not ours and is treated as corrupt. */
  readonly maxFileBytes?: number;
}

/** What loadAll found besides the intents, for logs and the admin view. */
export interface LoadReport {
  readonly intents: readonly MapIntent[];
  /** Files moved aside as .corrupt (their new names). */
  readonly corrupt: readonly string[];
  /** Temporary files of interrupted writes that were removed. */
  readonly leftovers: readonly string[];
}

const SUFFIX = '.json';

/**
 * File name for a WWID. WWIDs are hex or SCSI name strings in practice; anything outside
 * [A-Za-z0-9._:-] is %-escaped so a name can never leave the directory or start with a dot.
 */
export function fileNameForWwid(wwid: string): string {
  const escaped = Array.from(new TextEncoder().encode(wwid), (b, i) => {
    const c = String.fromCharCode(b);
    const plain = b < 0x80 && /[A-Za-z0-9_:.-]/.test(c) && !(i === 0 && c === '.');
    return plain ? c : `%${b.toString(16).padStart(2, '0')}`;
  }).join('');
  return escaped + SUFFIX;
}

function wwidFromFileName(name: string): string | null {
  if (!name.endsWith(SUFFIX) || name.startsWith('.')) return null;
  try {
    const body = name.slice(0, -SUFFIX.length);
    const bytes: number[] = [];
    for (let i = 0; i < body.length; i++) {
      if (body[i] === '%') {
        bytes.push(parseInt(body.slice(i + 1, i + 3), 16));
        i += 2;
      } else {
        bytes.push(body.charCodeAt(i));
      }
    }
    if (bytes.some((b) => Number.isNaN(b))) return null;
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return null;
  }
}

export class IntentStore {
  readonly dir: string;
  readonly #log: Logger;
  readonly #write: (path: string, data: string) => Promise<void>;
  readonly #maxBytes: number;
  /** Tail of the write chain per WWID. */
  readonly #chains = new Map<string, Promise<void>>();

  constructor(opts: IntentStoreOptions = {}) {
    this.dir = join(opts.stateDir ?? DEFAULT_STATE_DIR, 'maps');
    this.#log = opts.logger ?? nullLogger;
    this.#write = opts.writeFile ?? ((p, d) => writeFileAtomic(p, d, 0o600));
    this.#maxBytes = opts.maxFileBytes ?? 64 * 1024;
  }

  pathOf(wwid: string): string {
    return join(this.dir, fileNameForWwid(wwid));
  }

  /** Create the directory (0700: keys are not for every user). */
  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Every intent on disk. Never rejects for a bad file; rejects only if the directory cannot be read. */
  async loadAll(): Promise<LoadReport> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { intents: [], corrupt: [], leftovers: [] };
      throw new PrmuxError(ErrorCode.CONFIG, `Cannot read the state directory ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    const intents: MapIntent[] = [];
    const corrupt: string[] = [];
    const leftovers: string[] = [];
    for (const name of names.sort()) {
      const full = join(this.dir, name);
      if (name.startsWith('.') && name.endsWith('.tmp')) {
        // writeFileAtomic's temporary file: a write was interrupted before its rename, so the
        // target still holds the previous intent. The fragment is of no use.
        await rm(full, { force: true }).catch((e: unknown) => this.#log.warn('cannot remove a leftover temporary intent file', { file: full, error: (e as Error).message }));
        leftovers.push(full);
        this.#log.info('removed the temporary file of an interrupted intent write', { file: full });
        continue;
      }
      const wwid = wwidFromFileName(name);
      if (wwid === null) continue; // .corrupt files and anything else that is not ours
      let why: string | null = null;
      try {
        const st = await stat(full);
        if (!st.isFile()) continue;
        if (st.size > this.#maxBytes) throw new Error(`file is ${st.size} bytes, more than ${this.#maxBytes}`);
        const intent = intentFromJson(await readFile(full, 'utf8'));
        if (intent.wwid !== wwid) throw new Error(`it names WWID ${intent.wwid}, not ${wwid}`);
        intents.push(intent);
      } catch (e) {
        why = (e as Error).message;
      }
      if (why !== null) {
        const aside = await this.#moveAside(full);
        corrupt.push(aside);
        this.#log.error('intent file is unreadable; moved aside and ignored (the map starts with no intent)', { file: full, movedTo: aside, wwid, error: why });
      }
    }
    return { intents, corrupt, leftovers };
  }

  async #moveAside(full: string): Promise<string> {
    let target = `${full}.corrupt`;
    for (let n = 1; n < 1000; n++) {
      const exists = await stat(target).then(
        () => true,
        () => false,
      );
      if (!exists) break;
      target = `${full}.corrupt.${n}`;
    }
    try {
      await rename(full, target);
    } catch (e) {
      this.#log.error('cannot move a corrupt intent file aside', { file: full, error: (e as Error).message });
      return full;
    }
    return target;
  }

  /** Write one intent; resolves once it is durable. Writes for the same WWID happen in call order. */
  save(intent: MapIntent): Promise<void> {
    const data = intentToJson(intent);
    return this.#chain(intent.wwid, () => this.#write(this.pathOf(intent.wwid), data));
  }

  /** Forget a map's intent (the map is gone for good). */
  remove(wwid: string): Promise<void> {
    return this.#chain(wwid, () => rm(this.pathOf(wwid), { force: true }));
  }

  #chain(wwid: string, op: () => Promise<void>): Promise<void> {
    const prev = this.#chains.get(wwid) ?? Promise.resolve();
    const run = prev.then(op, op);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#chains.set(wwid, tail);
    void tail.then(() => {
      if (this.#chains.get(wwid) === tail) this.#chains.delete(wwid);
    });
    return run;
  }
}
