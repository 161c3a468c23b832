// Locations the tests read: the repository root and the shared lab samples beside the checkout.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'tsconfig.pure.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`Cannot find the prmux repository root above ${start}`);
    dir = parent;
  }
}

export const repoRoot = findRepoRoot(dirname(fileURLToPath(import.meta.url)));
/** `../shared/lab/samples` next to the checkout (CI lays a copy of shared/ beside the clone). */
export const samplesDir = process.env['PRMUX_SAMPLES_DIR'] ?? resolve(repoRoot, '..', 'shared', 'lab', 'samples');

export function readSample(name: string): string {
  return readFileSync(join(samplesDir, name), 'utf8');
}
