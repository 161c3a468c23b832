import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EncodeError } from '../../src/errors.js';
import {
  activePathCount,
  findMap,
  findPathByDevOrDevT,
  mapName,
  mapOfPath,
  makeMap,
  makePath,
  pathsOfMap,
  validateTopology,
  type MpathTopology,
} from '../../src/mpath/topology-model.js';
import { LAB_WWID, healthy, labTopology } from './lab-fixtures.js';

const onField = (field: string) => (e: unknown): boolean => e instanceof EncodeError && e.field === field;

test('the model is plain data: JSON round-trips it unchanged', () => {
  const t = labTopology([healthy('sda', 1, 4), ['sdb', 'failed', 'faulty', 'offline', 2, 8]]);
  assert.deepEqual(JSON.parse(JSON.stringify(t)), t);
  validateTopology(t);
});

test('lookups: maps by alias, dm-N (as sscanf "dm-%d") or WWID without alias; paths by dev or dev_t', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  const m = t.maps[0]!;
  assert.equal(findMap(t, 'mpatha'), m);
  assert.equal(findMap(t, 'dm-0'), m);
  assert.equal(findMap(t, 'dm- 0'), m);
  assert.equal(findMap(t, 'dm-1'), undefined);
  assert.equal(findMap(t, ''), undefined);
  assert.equal(findMap(t, LAB_WWID), undefined, 'a map with an alias is not found by WWID');
  const unnamed: MpathTopology = { ...t, maps: [{ ...m, alias: null }] };
  assert.equal(mapName(unnamed.maps[0]!), LAB_WWID);
  assert.equal(findMap(unnamed, LAB_WWID), unnamed.maps[0]);
  assert.equal(findPathByDevOrDevT(t, '8:16')?.dev, 'sdb');
  assert.equal(findPathByDevOrDevT(t, 'sda')?.dev, 'sda');
  assert.equal(mapOfPath(t, 'sdb'), m);
  assert.deepEqual(pathsOfMap(t, m).map((p) => p.dev), ['sda', 'sdb']);
});

test('activePathCount counts ready and ghost paths (count_active_paths)', () => {
  const t = labTopology([healthy('sda', 1, 4), ['sdb', 'active', 'ghost', 'running', 1, 4], ['sdc', 'failed', 'faulty', 'running', 1, 4], ['sdd', 'active', 'shaky', 'running', 1, 4]]);
  assert.equal(activePathCount(t, t.maps[0]!), 2);
});

test('validateTopology names the first inconsistent field', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  const m = t.maps[0]!;
  assert.throws(() => validateTopology({ ...t, paths: [...t.paths, makePath({ dev: 'sda', devT: '8:0' })] }), onField('paths[2].dev'));
  assert.throws(() => validateTopology({ ...t, maps: [{ ...m, pathGroups: [{ ...m.pathGroups[0]!, paths: ['sda', 'sdq'] }] }] }), onField('maps[0].pathGroups[0].paths[1]'));
  assert.throws(() => validateTopology({ ...t, maps: [m, makeMap({ alias: 'mpathb', wwid: 'x', pathGroups: [{ priority: 1, status: 'enabled', marginal: false, paths: ['sdb'] }] })] }), onField('maps[1].pathGroups[0].paths[0]'));
  assert.throws(() => validateTopology({ ...t, maps: [m, { ...m }] }), onField('maps[1].alias'));
  assert.throws(() => validateTopology({ ...t, maps: [{ ...m, reservationKey: '0X12' }] }), onField('maps[0].reservationKey'));
  assert.throws(() => validateTopology({ ...t, paths: [{ ...t.paths[0]!, checkerTick: 9 }, t.paths[1]!] }), onField('paths[0].checkerTick'));
  assert.throws(() => validateTopology({ ...t, paths: [{ ...t.paths[0]!, hcil: { host: -1, channel: 0, target: 0, lun: 0 } }, t.paths[1]!] }), onField('paths[0].hcil.host'));
});
