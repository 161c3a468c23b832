import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSample } from '../support/paths.js';
import { LAB_WWID, between, healthy, labTopology, showPathsBlocks, topologyBlocks, type LabPathRow } from './lab-fixtures.js';
import {
  formatLunHex,
  formatProgress,
  formatSize,
  renderMapFormat,
  renderMapJson,
  renderMapTopology,
  renderMaps,
  renderMapsJson,
  renderMapsRaw,
  renderPathState,
  renderPaths,
  renderPathsRaw,
  renderTopology,
  renderWildcards,
} from '../../src/mpath/multipathd-format.js';
import { makeMap, makePath, type MpathTopology } from '../../src/mpath/topology-model.js';

const failed = (dev: string, tick: number, interval: number, devSt: 'running' | 'offline' = 'running'): LabPathRow => [dev, 'failed', 'faulty', devSt, tick, interval];

// --- golden samples ---------------------------------------------------------------------------

test('show paths: multipathd_show_paths.txt byte for byte', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  assert.equal(renderPaths(t), readSample('multipathd_show_paths.txt'));
});

test('show paths, show maps and multipath -ll of multipath_topology.txt', () => {
  const t = labTopology([healthy('sda', 2, 4), healthy('sdb', 2, 4)]);
  assert.equal(renderPaths(t), between('multipath_topology.txt', '$ multipathd show paths', '(rc=0)'));
  assert.equal(renderMaps(t), between('multipath_topology.txt', '$ multipathd show maps', '(rc=0)'));
  // multipath -ll holds no configurator action for the map, so no "create: " prefix.
  const ll = labTopology([healthy('sda', 2, 4), healthy('sdb', 2, 4)], { action: 'undef' });
  assert.equal(renderTopology(ll, { widthScope: 'map' }), between('multipath_topology.txt', '$ multipath -ll', '(rc=0)'));
  assert.equal(renderTopology(ll), between('multipath_topology.txt', '$ multipath -ll', '(rc=0)'));
});

test('show paths: every table of path_failure.txt', () => {
  const expected: LabPathRow[][] = [
    [failed('sda', 1, 8), healthy('sdb', 2, 8)],
    [healthy('sda', 2, 2), healthy('sdb', 1, 8)],
    [failed('sda', 1, 2), healthy('sdb', 8, 8)],
    [healthy('sda', 2, 2), healthy('sdb', 7, 8)],
    [failed('sda', 1, 2), healthy('sdb', 6, 8)],
    [healthy('sda', 2, 2), healthy('sdb', 4, 8)],
    [healthy('sdb', 2, 8)],
    // After the LUN was re-linked sda came back behind sdb in the pathvec.
    [healthy('sdb', 8, 8), healthy('sda', 4, 4)],
  ];
  const blocks = showPathsBlocks('path_failure.txt');
  assert.equal(blocks.length, expected.length);
  blocks.forEach((block, i) => assert.equal(renderPaths(labTopology(expected[i] ?? [])), block, `table ${i + 1}`));
});

test('topology: every tree of path_failure.txt and npaths4.txt', () => {
  const ll = { action: 'undef' } as const;
  const trees = topologyBlocks('path_failure.txt');
  assert.equal(trees.length, 3);
  assert.equal(renderTopology(labTopology([failed('sda', 1, 2, 'offline'), healthy('sdb', 8, 8)], ll)), trees[0]);
  assert.equal(renderTopology(labTopology([healthy('sdb', 2, 8)], ll)), trees[1]);
  assert.equal(renderTopology(labTopology([healthy('sdb', 8, 8), healthy('sda', 4, 4)], ll)), trees[2]);
  const four = topologyBlocks('npaths4.txt');
  assert.equal(four.length, 1);
  const t4 = labTopology(['sda', 'sdb', 'sdc', 'sdd'].map((d) => healthy(d, 1, 5)), ll);
  assert.equal(renderTopology(t4), four[0]);
  assert.equal(renderMapTopology(t4, t4.maps[0]!, { widthScope: 'map' }), four[0]);
});

test('show maps json: multipathd_show_maps_json.txt byte for byte', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  assert.equal(renderMapsJson(t), readSample('multipathd_show_maps_json.txt'));
});

test('show map <m> json: the same map under "map":{ ... } closed by "}" (print.c snprint_multipath_map_json)', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  const maps = readSample('multipathd_show_maps_json.txt');
  assert.ok(maps.includes('   "maps": [{\n') && maps.endsWith('   }]\n}\n'));
  const expected = maps.replace('   "maps": [{\n', '   "map":{\n').replace(/   \}\]\n\}\n$/, '   }\n}\n');
  const text = renderMapJson(t, t.maps[0]!);
  assert.equal(text, expected);
  const parsed = JSON.parse(text) as { map: unknown };
  assert.deepEqual(parsed.map, (JSON.parse(maps) as { maps: unknown[] }).maps[0]);
});

test('show maps json with no map and with two maps (elements joined by "},{")', () => {
  assert.equal(renderMapsJson({ maps: [], paths: [] }), '{\n   "major_version": 0,\n   "minor_version": 1,\n   "maps": []\n}\n');
  const one = labTopology([healthy('sda', 1, 4)]);
  const other = makeMap({ alias: 'mpathb', wwid: '36001405bbbb', dm: { minor: 1, readOnly: true, suspended: true }, pathGroups: [] });
  const two: MpathTopology = { maps: [...one.maps, other], paths: one.paths };
  const text = renderMapsJson(two);
  assert.ok(text.includes('\n   },{\n      "name" : "mpathb",\n'));
  assert.ok(text.includes('      "path_groups": []\n   }]\n}\n'));
  const parsed = JSON.parse(text) as { maps: Array<{ name: string; write_prot: string; dm_st: string; vend: string; paths: number }> };
  assert.deepEqual(parsed.maps.map((m) => [m.name, m.write_prot, m.dm_st, m.vend, m.paths]), [
    ['mpatha', 'rw', 'active', 'LIO-ORG', 1],
    ['mpathb', 'ro', 'suspend', '##', 0],
  ]);
});

// --- formats and column logic -------------------------------------------------------------------

test('raw format: no header, no padding; RECIPE.md readiness probe "%d %t"', () => {
  const t = labTopology([failed('sda', 1, 8), healthy('sdb', 2, 8)]);
  assert.equal(renderPathsRaw(t, '%d %t'), 'sda failed\nsdb active\n');
  assert.equal(renderPathsRaw(t, '%w %d %D %i %t %T %o %m %p %s %N %n %R %r'), [
    `${LAB_WWID} sda 8:0 0:0:1:0 failed faulty running mpatha 50 LIO-ORG,FILEIO [undef] [undef] [undef] [undef]\n`,
    `${LAB_WWID} sdb 8:16 1:0:1:0 active ready running mpatha 50 LIO-ORG,FILEIO [undef] [undef] [undef] [undef]\n`,
  ].join(''));
  assert.equal(renderMapsRaw(t, '%n %w %d %N %t %Q %x %S %F %r %A'), `mpatha ${LAB_WWID} dm-0 1 active 12 chk 0 64M immediate rw create\n`);
  assert.equal(renderPathsRaw({ maps: [], paths: [] }, '%d'), '');
});

test('format expansion: unknown wildcards vanish with their letter, "%%" prints nothing, literal text is kept', () => {
  const t = labTopology([healthy('sda', 1, 4)]);
  assert.equal(renderPathsRaw(t, 'dev=%d %q|%%|100%'), 'dev=sda ||100\n');
  assert.equal(renderMapsRaw(t, '<%n>%Z<%v/%p/%e>'), '<mpatha><LIO-ORG/FILEIO/4.0>\n');
  assert.equal(renderPathsRaw(t, 'no wildcards'), 'no wildcards\n');
});

test('pretty output: widths from content and headers, last column padded too', () => {
  const t = labTopology([healthy('sda', 1, 4), healthy('sdb', 1, 4)]);
  assert.equal(renderPaths(t, '%d %w|'), 'dev uuid                             |\nsda 360014056001405c0ffee000000000000|\nsdb 360014056001405c0ffee000000000000|\n');
  assert.equal(renderPaths(t, '%M %c'), 'marginal_st checker\nnormal      tur    \nnormal      tur    \n');
  // show map <m> format: padded to widths over all maps (header minimum) but no header line.
  assert.equal(renderMapFormat(t, t.maps[0]!, '%n %N|'), 'mpatha 2    |\n');
});

test('pretty listings of nothing print nothing (the CLI then answers "ok")', () => {
  assert.equal(renderPaths({ maps: [], paths: [] }), '');
  assert.equal(renderMaps({ maps: [], paths: [] }), '');
  assert.equal(renderTopology({ maps: [], paths: [] }), '');
});

test('orphan paths and paths without address print multipathd placeholders and widen columns', () => {
  const t = labTopology([healthy('sda', 1, 4)]);
  const orphan = makePath({ dev: 'sdzz1', devT: '65:1', hcil: null, checkerState: 'ready', dmState: 'undef' });
  const withOrphan: MpathTopology = { maps: t.maps, paths: [...t.paths, orphan] };
  assert.equal(renderPaths(withOrphan), [
    'hcil    dev   dev_t pri dm_st  chk_st dev_st  next_check    \n',
    '0:0:1:0 sda   8:0   50  active ready  running XX........ 1/4\n',
    '#:#:#:# sdzz1 65:1  1   undef  undef  unknown orphan        \n',
  ].join(''));
  assert.equal(renderPathsRaw(withOrphan, '%m %L'), 'mpatha 0x0000000000000000\n[orphan] 0xffffffffffffffff\n');
  assert.equal(renderPathState(withOrphan, orphan), 'unknown\n');
  assert.equal(renderPathState(withOrphan, t.paths[0]!), 'running\n');
});

test('topology with two groups, action prefix and column widths over the whole pathvec', () => {
  const base = labTopology([healthy('sda', 1, 5), healthy('sdb', 1, 5), ['sdc', 'active', 'ghost', 'running', 1, 5]]);
  const map = base.maps[0]!;
  const t: MpathTopology = {
    paths: base.paths,
    maps: [
      {
        ...map,
        pathGroups: [
          { priority: 50, status: 'active', marginal: false, paths: ['sda', 'sdb'] },
          { priority: 10, status: 'enabled', marginal: false, paths: ['sdc'] },
        ],
      },
    ],
  };
  assert.equal(renderTopology(t), [
    `create: mpatha (${LAB_WWID}) dm-0 LIO-ORG,FILEIO\n`,
    "size=64M features='1 queue_if_no_path' hwhandler='1 alua' wp=rw\n",
    "|-+- policy='service-time 0' prio=50 status=active\n",
    '| |- 0:0:1:0 sda 8:0  active ready running\n',
    '| `- 1:0:1:0 sdb 8:16 active ready running\n',
    "`-+- policy='service-time 0' prio=10 status=enabled\n",
    '  `- 2:0:1:0 sdc 8:32 active ghost running\n',
  ].join(''));
  // A map named by its WWID does not repeat it; "nothing" prints no action.
  const named: MpathTopology = { paths: t.paths, maps: [{ ...t.maps[0]!, alias: null, action: 'nothing', pathGroups: [] }] };
  assert.equal(renderTopology(named).split('\n')[0], `${LAB_WWID} dm-0 ##,##`);
  // A longer device name elsewhere in the pathvec widens the dev column of every tree.
  const wide: MpathTopology = { paths: [...t.paths, makePath({ dev: 'sdaaa', devT: '8:1000' })], maps: t.maps };
  assert.ok(renderTopology(wide).includes('| |- 0:0:1:0 sda   8:0    active ready running\n'));
  assert.ok(renderMapTopology(wide, wide.maps[0]!, { widthScope: 'map' }).includes('| |- 0:0:1:0 sda 8:0  active ready running\n'));
});

test('size: single-precision KiB scaling with printf rounding (ties to even)', () => {
  assert.equal(formatSize(131072), '64M');
  assert.equal(formatSize(2), '1.0K');
  assert.equal(formatSize(0), '0.0K');
  assert.equal(formatSize(20480), '10M');
  assert.equal(formatSize(21504), '10M'); // 10.5M: printf rounds the exact tie to even
  assert.equal(formatSize(23552), '12M'); // 11.5M -> 12
  assert.equal(formatSize(4608), '2.2M'); // 2.25M -> 2.2
  assert.equal(formatSize(3584), '1.8M'); // 1.75M -> 1.8
  assert.equal(formatSize(2 * 1024 ** 3 * 3), '3.0T');
  assert.equal(formatSize(2 * 1024 ** 4 * 2048), '2048P'); // no unit above P
  assert.equal(formatSize(2 * 1023), '1023K');
});

test('progress bar and LUN hex', () => {
  assert.equal(formatProgress(1, 4), 'XX........ 1/4');
  assert.equal(formatProgress(8, 8), 'XXXXXXXXXX 8/8');
  assert.equal(formatProgress(0, 5), '.......... 0/5');
  assert.equal(formatProgress(0, 0), ' 0/0');
  assert.equal(formatLunHex(0), '0x0000000000000000');
  assert.equal(formatLunHex(1), '0x0001000000000000');
  assert.equal(formatLunHex(0x4001), '0x4001000000000000');
  assert.equal(formatLunHex(0x12345), '0x2345000100000000');
});

test('show wildcards lists the three tables', () => {
  const text = renderWildcards();
  assert.ok(text.startsWith('multipath format wildcards:\n%n  name\n%w  uuid\n'));
  assert.ok(text.includes('\npath format wildcards:\n%w  uuid\n%i  hcil\n'));
  assert.ok(text.endsWith('\npathgroup format wildcards:\n%s  selector\n%p  pri\n%t  dm_st\n%M  marginal_st\n'));
});
