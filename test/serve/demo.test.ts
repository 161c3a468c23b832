// `npm start` is `prmux demo`: the README's main job. Run it once and check that every step of the
// scenario answered as it must (the demo exits non-zero otherwise) and that it printed what a user
// needs: the sockets and the device files.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { it } from 'node:test';
import { cliPath } from '../support/san-process.js';

it('prmux demo --once: simulated SAN + one prmux serve per host, fence scenario through the map fds, exit 0', async () => {
  const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
    execFile(process.execPath, [cliPath, 'demo', '--once'], { timeout: 60_000 }, (err, stdout) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout }));
  });
  assert.equal(code, 0, stdout);
  assert.match(stdout, /prmux serve for host1: socket \/\S+\/host1\/prmux\.sock/);
  assert.match(stdout, /device files a client passes: \S+\/host1\/dev\/sda \S+\/host1\/dev\/sdb \S+\/host1\/dev\/mapper\/mpatha/);
  assert.match(stdout, /each key is on both paths of its host/);
  assert.match(stdout, /the key guard registered 0x2222 on the returned path/);
  assert.doesNotMatch(stdout, /^FAIL/m);
});
