// systemd socket activation as sd_listen_fds(3) defines it: the fds start at 3 (SD_LISTEN_FDS_START),
// LISTEN_FDS counts them, and they are only ours when LISTEN_PID is our pid. prmux listens on
// exactly one socket, so more than one passed fd is a configuration error, not something to guess at.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACTIVATION_VARIABLES, SD_LISTEN_FDS_START, socketActivation } from '../../src/serve/activation.js';

const PID = 4242;

test('sd_listen_fds: the first passed fd is 3', () => {
  assert.equal(SD_LISTEN_FDS_START, 3);
});

test('no LISTEN_FDS (unset or empty) means no activation, whatever LISTEN_PID says', () => {
  assert.deepEqual(socketActivation({}, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID) }, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: undefined }, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '' }, PID), { kind: 'none' });
});

test('LISTEN_FDS=1 with our pid: the socket is fd 3', () => {
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '1' }, PID), { kind: 'socket', fd: 3 });
  // LISTEN_FDNAMES is informational; its presence changes nothing.
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '1', LISTEN_FDNAMES: 'prmux.socket' }, PID), { kind: 'socket', fd: 3 });
});

test('variables meant for another process are ignored (sd_listen_fds returns 0)', () => {
  // A parent that was activated and did not unset them: its fds are not ours, even a valid count.
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID + 1), LISTEN_FDS: '1' }, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID - 1), LISTEN_FDS: '2' }, PID), { kind: 'none' });
  // No LISTEN_PID at all: sd_listen_fds requires it.
  assert.deepEqual(socketActivation({ LISTEN_FDS: '1' }, PID), { kind: 'none' });
  // A LISTEN_PID that is not a pid cannot name us.
  assert.deepEqual(socketActivation({ LISTEN_PID: 'self', LISTEN_FDS: '1' }, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: `${PID}x`, LISTEN_FDS: '1' }, PID), { kind: 'none' });
  assert.deepEqual(socketActivation({ LISTEN_PID: '', LISTEN_FDS: '1' }, PID), { kind: 'none' });
});

test('LISTEN_FDS=0 with our pid: nothing was passed', () => {
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '0' }, PID), { kind: 'none' });
});

test('more than one fd is an error naming the count (prmux serves one socket)', () => {
  for (const n of ['2', '3', '10']) {
    const a = socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: n }, PID);
    assert.equal(a.kind, 'error', `LISTEN_FDS=${n}`);
    assert.ok(a.kind === 'error' && a.message.startsWith('Cannot ') && a.message.includes(`LISTEN_FDS=${n}`), a.kind === 'error' ? a.message : '');
  }
});

test('a LISTEN_FDS that is not a non-negative decimal is an error naming the value', () => {
  for (const bad of ['one', '-1', '1.0', ' 1', '1 ', '0x1', '1e0']) {
    const a = socketActivation({ LISTEN_PID: String(PID), LISTEN_FDS: bad }, PID);
    assert.equal(a.kind, 'error', `LISTEN_FDS=${JSON.stringify(bad)}`);
    assert.ok(a.kind === 'error' && a.message.includes(JSON.stringify(bad)), a.kind === 'error' ? a.message : '');
  }
});

test('garbage LISTEN_FDS meant for another process is not our error', () => {
  assert.deepEqual(socketActivation({ LISTEN_PID: String(PID + 1), LISTEN_FDS: 'garbage' }, PID), { kind: 'none' });
});

test('the variables to clear include the three systemd sets', () => {
  assert.deepEqual([...ACTIVATION_VARIABLES].sort(), ['LISTEN_FDNAMES', 'LISTEN_FDS', 'LISTEN_PID']);
});
