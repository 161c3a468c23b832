import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DecodeError, ErrorCode } from '../../src/errors.js';
import { readSample } from '../support/paths.js';
import { LAB_WWID, healthy, labTopology, showPathsBlocks, type LabPathRow } from './lab-fixtures.js';
import {
  PRMUX_PATHS_FORMAT,
  isOkReply,
  parseGetPrKeyReply,
  parseGetPrStatusReply,
  parseMapJson,
  parseMapsJson,
  parsePathsRaw,
  parseShowPaths,
} from '../../src/mpath/multipathd-parse.js';
import { renderMapJson, renderMapsJson, renderPaths, renderPathsRaw } from '../../src/mpath/multipathd-format.js';
import { CheckerStates, makePath, type MpathTopology } from '../../src/mpath/topology-model.js';

function decodeErrorOn(field: string) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof DecodeError, `expected DecodeError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.DECODE);
    assert.equal(e.field, field);
    return true;
  };
}

test('parseMapsJson: the captured show maps json', () => {
  const reply = parseMapsJson(readSample('multipathd_show_maps_json.txt'));
  assert.equal(reply.majorVersion, 0);
  assert.equal(reply.minorVersion, 1);
  assert.equal(reply.maps.length, 1);
  const m = reply.maps[0]!;
  assert.deepEqual(
    [m.name, m.uuid, m.sysfs, m.failback, m.queueing, m.activePaths, m.writeProt, m.dmState, m.features, m.hwhandler, m.action],
    ['mpatha', LAB_WWID, 'dm-0', 'immediate', '12 chk', 2, 'rw', 'active', '1 queue_if_no_path', '1 alua', 'create'],
  );
  assert.deepEqual([m.vendor, m.product, m.revision, m.mapLoads], ['LIO-ORG', 'FILEIO', '4.0', 1]);
  const g = m.pathGroups[0]!;
  assert.deepEqual([g.selector, g.priority, g.dmState, g.marginal, g.group], ['service-time 0', 50, 'active', false, 1]);
  assert.deepEqual(
    g.paths.map((p) => [p.dev, p.devT, p.dmState, p.devState, p.checkerState, p.checker, p.priority, p.hostWwnn, p.lunHex, p.marginal]),
    [
      ['sda', '8:0', 'active', 'running', 'ready', 'tur', 50, '[undef]', '0x0000000000000000', false],
      ['sdb', '8:16', 'active', 'running', 'ready', 'tur', 50, '[undef]', '0x0000000000000000', false],
    ],
  );
});

test('parseMapsJson / parseMapJson read back what the formatter prints', () => {
  const t = labTopology([['sda', 'failed', 'faulty', 'offline', 1, 2], ['sdb', 'active', 'i/o pending', 'running', 3, 5]]);
  const maps = parseMapsJson(renderMapsJson(t));
  const single = parseMapJson(renderMapJson(t, t.maps[0]!));
  assert.deepEqual(single.map, maps.maps[0]);
  const paths = maps.maps[0]!.pathGroups[0]!.paths;
  assert.deepEqual(paths.map((p) => [p.dev, p.dmState, p.checkerState, p.devState]), [
    ['sda', 'failed', 'faulty', 'offline'],
    ['sdb', 'active', 'i/o pending', 'running'],
  ]);
  assert.equal(maps.maps[0]!.activePaths, 0);
  assert.deepEqual(parseMapsJson(renderMapsJson({ maps: [], paths: [] })).maps, []);
});

test('parseMapsJson: missing, mistyped and out-of-set fields name the JSON path', () => {
  const sample = readSample('multipathd_show_maps_json.txt');
  const doc = (): { maps: Array<Record<string, unknown> & { path_groups: Array<Record<string, unknown> & { paths: Array<Record<string, unknown>> }> }> } & Record<string, unknown> =>
    JSON.parse(sample);
  const d1 = doc();
  delete d1.maps[0]!.path_groups[0]!.paths[1]!['checker'];
  assert.throws(() => parseMapsJson(JSON.stringify(d1)), decodeErrorOn('maps[0].path_groups[0].paths[1].checker'));
  const d2 = doc();
  d2.maps[0]!.path_groups[0]!['pri'] = '50';
  assert.throws(() => parseMapsJson(JSON.stringify(d2)), decodeErrorOn('maps[0].path_groups[0].pri'));
  const d3 = doc();
  d3.maps[0]!.path_groups[0]!.paths[0]!['chk_st'] = 'bogus';
  assert.throws(() => parseMapsJson(JSON.stringify(d3)), (e: unknown) => decodeErrorOn('maps[0].path_groups[0].paths[0].chk_st')(e) && (e as DecodeError).value === 'bogus');
  const d4 = doc();
  d4['major_version'] = 1;
  assert.throws(() => parseMapsJson(JSON.stringify(d4)), decodeErrorOn('major_version'));
  const d5 = doc();
  (d5.maps[0] as Record<string, unknown>)['path_groups'] = {};
  assert.throws(() => parseMapsJson(JSON.stringify(d5)), decodeErrorOn('maps[0].path_groups'));
  assert.throws(() => parseMapsJson('fail\n'), decodeErrorOn('text'));
  assert.throws(() => parseMapsJson('[]'), decodeErrorOn('(root)'));
  assert.throws(() => parseMapJson(sample), decodeErrorOn('map'));
});

test('parsePathsRaw: round trip of every path_failure.txt state through PRMUX_PATHS_FORMAT', () => {
  const rows: LabPathRow[][] = [
    [['sda', 'failed', 'faulty', 'running', 1, 8], healthy('sdb', 2, 8)],
    [['sda', 'failed', 'faulty', 'offline', 1, 2], healthy('sdb', 8, 8)],
    [healthy('sdb', 8, 8), healthy('sda', 4, 4)],
  ];
  for (const r of rows) {
    const t = labTopology(r);
    const records = parsePathsRaw(renderPathsRaw(t, PRMUX_PATHS_FORMAT));
    assert.deepEqual(
      records,
      t.paths.map((p) => ({
        dev: p.dev,
        devT: p.devT,
        hcil: p.hcil,
        wwid: p.wwid,
        map: 'mpatha',
        dmState: p.dmState,
        checkerState: p.checkerState,
        devState: p.devState,
        priority: 50,
        checker: 'tur',
        marginal: false,
      })),
    );
  }
});

test('parsePathsRaw: any checker state, orphans, empty wwid, no address', () => {
  fc.assert(
    fc.property(fc.constantFrom(...CheckerStates), fc.boolean(), fc.integer({ min: -1, max: 100 }), (state, marginal, pri) => {
      const base = labTopology([['sda', 'active', state, 'running', 1, 5]]);
      const orphan = makePath({ dev: 'sdx', devT: '65:0', wwid: '', hcil: null, marginal, priority: pri });
      const t: MpathTopology = { maps: base.maps, paths: [...base.paths, orphan] };
      const [a, b] = parsePathsRaw(renderPathsRaw(t, PRMUX_PATHS_FORMAT));
      assert.equal(a?.checkerState, state);
      assert.deepEqual(b, { dev: 'sdx', devT: '65:0', hcil: null, wwid: '', map: null, dmState: 'active', checkerState: 'undef', devState: 'unknown', priority: pri, checker: 'tur', marginal });
    }),
    { numRuns: 40 },
  );
  assert.deepEqual(parsePathsRaw('ok\n'), [], 'no paths: multipathd answers the default "ok"');
});

test('parsePathsRaw: malformed lines', () => {
  const good = renderPathsRaw(labTopology([healthy('sda', 1, 5)]), PRMUX_PATHS_FORMAT);
  assert.throws(() => parsePathsRaw(good.replace('\tmpatha', '')), decodeErrorOn('line 1'));
  assert.throws(() => parsePathsRaw(good.replace('0:0:1:0', '0:0:1')), decodeErrorOn('line 1 hcil'));
  assert.throws(() => parsePathsRaw(good.replace('\tactive\t', '\tgone\t')), decodeErrorOn('line 1 dm_st'));
  assert.throws(() => parsePathsRaw(good.replace('\t50\t', '\tfifty\t')), decodeErrorOn('line 1 pri'));
  assert.throws(() => parsePathsRaw(good.slice(0, -1)), decodeErrorOn('text'));
  assert.throws(() => parsePathsRaw('fail\n'), decodeErrorOn('line 1'));
});

test('parseShowPaths: every captured show paths table', () => {
  const blocks = [readSample('multipathd_show_paths.txt'), ...showPathsBlocks('multipath_topology.txt'), ...showPathsBlocks('path_failure.txt')];
  assert.equal(blocks.length, 10);
  const all = blocks.flatMap((b) => parseShowPaths(b));
  assert.equal(all.length, 19);
  const first = parseShowPaths(showPathsBlocks('path_failure.txt')[0]!);
  assert.deepEqual(first, [
    { hcil: { host: 0, channel: 0, target: 1, lun: 0 }, dev: 'sda', devT: '8:0', priority: 50, dmState: 'failed', checkerState: 'faulty', devState: 'running', nextCheck: { tick: 1, interval: 8 } },
    { hcil: { host: 1, channel: 0, target: 1, lun: 0 }, dev: 'sdb', devT: '8:16', priority: 50, dmState: 'active', checkerState: 'ready', devState: 'running', nextCheck: { tick: 2, interval: 8 } },
  ]);
});

test('parseShowPaths: values with blanks and orphans, cut by header columns', () => {
  const base = labTopology([['sda', 'active', 'i/o timeout', 'running', 0, 0]]);
  const t: MpathTopology = { maps: base.maps, paths: [...base.paths, makePath({ dev: 'sdq', devT: '65:16' })] };
  const rows = parseShowPaths(renderPaths(t));
  assert.deepEqual(rows.map((r) => [r.dev, r.checkerState, r.devState, r.nextCheck]), [
    ['sda', 'i/o timeout', 'running', { tick: 0, interval: 0 }],
    ['sdq', 'undef', 'unknown', null],
  ]);
  assert.deepEqual(parseShowPaths('ok\n'), []);
  assert.throws(() => parseShowPaths('dev hcil\n'), decodeErrorOn('header'));
});

test('PR replies: getprkey, getprstatus (0.9.4 "1"/"0" and later "set"/"unset"), ok', () => {
  assert.equal(parseGetPrKeyReply('none\n'), null);
  assert.deepEqual(parseGetPrKeyReply('0x777\n'), { key: 0x777n, aptpl: false });
  assert.deepEqual(parseGetPrKeyReply('0xffffffffffffffff:aptpl\n'), { key: 0xffffffffffffffffn, aptpl: true });
  assert.throws(() => parseGetPrKeyReply('fail\n'), decodeErrorOn('getprkey'));
  assert.equal(parseGetPrStatusReply('1'), true);
  assert.equal(parseGetPrStatusReply('0'), false);
  assert.equal(parseGetPrStatusReply('set\n'), true);
  assert.equal(parseGetPrStatusReply('unset\n'), false);
  assert.throws(() => parseGetPrStatusReply('fail\n'), decodeErrorOn('getprstatus'));
  assert.equal(isOkReply('ok\n'), true);
  assert.equal(isOkReply('fail\n'), false);
});
