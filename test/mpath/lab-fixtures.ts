// Models of the lab captured in shared/lab/samples (one LIO FILEIO LUN behind tcm_loop, seen by
// multipathd 0.9.4 as map mpatha over sda..sdd), and helpers that cut blocks out of the sample files.
import { readSample } from '../support/paths.js';
import {
  type CheckerState,
  type DevState,
  type MapAction,
  type MpathTopology,
  type PathDmState,
  makeMap,
  makePath,
} from '../../src/mpath/topology-model.js';

export const LAB_WWID = '360014056001405c0ffee000000000000';

const DEV_T: Record<string, string> = { sda: '8:0', sdb: '8:16', sdc: '8:32', sdd: '8:48' };
const HOST: Record<string, number> = { sda: 0, sdb: 1, sdc: 2, sdd: 3 };

/** One path of the lab as a sample shows it: dev, dm_st, chk_st, dev_st, and next_check tick/interval. */
export type LabPathRow = [dev: string, dm: PathDmState, chk: CheckerState, devSt: DevState, tick: number, interval: number];

/**
 * The lab topology: the paths listed, in this pathvec order, all members of mpatha's single group
 * (in `groupOrder`, default the same order). `action` is what the reporting program holds for the
 * map: multipathd keeps "create" after creating it (show maps json), multipath -ll has none.
 */
export function labTopology(rows: LabPathRow[], options: { action?: MapAction; groupOrder?: string[] } = {}): MpathTopology {
  const paths = rows.map(([dev, dmState, checkerState, devState, checkerTick, checkerInterval]) =>
    makePath({
      dev,
      devT: DEV_T[dev] ?? '0:0',
      hcil: { host: HOST[dev] ?? 0, channel: 0, target: 1, lun: 0 },
      wwid: LAB_WWID,
      dmState,
      checkerState,
      devState,
      priority: 50,
      checkerName: 'tur',
      checkerTick,
      checkerInterval,
      vendor: 'LIO-ORG',
      product: 'FILEIO',
      revision: '4.0',
      serial: '6001405c0ffee0000000000000000001',
      sizeSectors: 131072,
      protocol: 'scsi:sas',
    }),
  );
  const map = makeMap({
    alias: 'mpatha',
    wwid: LAB_WWID,
    dm: { minor: 0, readOnly: false, suspended: false },
    sizeSectors: 131072,
    features: '1 queue_if_no_path',
    hwhandler: '1 alua',
    selector: 'service-time 0',
    failback: { mode: 'immediate' },
    noPathRetry: 12,
    retryTick: 0,
    action: options.action ?? 'create',
    stats: { pathFaults: 0, switchGroup: 0, mapLoads: 1, totalQueueingTime: 0, queueingTimeouts: 0, mapFailures: 0 },
    pathGroups: [{ priority: 50, status: 'active', marginal: false, paths: options.groupOrder ?? rows.map((r) => r[0]) }],
  });
  return { maps: [map], paths };
}

export const healthy = (dev: string, tick: number, interval: number): LabPathRow => [dev, 'active', 'ready', 'running', tick, interval];

// --- cutting blocks out of the sample files ---------------------------------------------------

/** The lines after the line `start` up to (excluding) the first line equal to `end`, newline-terminated. */
export function between(sample: string, start: string, end: string): string {
  const lines = readSample(sample).split('\n');
  const from = lines.indexOf(start);
  if (from === -1) throw new Error(`${sample}: no line ${JSON.stringify(start)}`);
  const to = lines.indexOf(end, from + 1);
  if (to === -1) throw new Error(`${sample}: no line ${JSON.stringify(end)} after ${JSON.stringify(start)}`);
  return lines.slice(from + 1, to).map((l) => l + '\n').join('');
}

/** Every `show paths` table in a sample: the header line and the H:C:T:L rows after it. */
export function showPathsBlocks(sample: string): string[] {
  const lines = readSample(sample).split('\n');
  const blocks: string[] = [];
  lines.forEach((line, i) => {
    if (!line.startsWith('hcil ')) return;
    let block = line + '\n';
    for (let j = i + 1; j < lines.length && /^\d+:\d+:\d+:\d+ /.test(lines[j] ?? ''); j++) block += lines[j] + '\n';
    blocks.push(block);
  });
  return blocks;
}

/** Every multipath -ll tree in a sample: the map line, the size line and the tree lines. */
export function topologyBlocks(sample: string): string[] {
  const lines = readSample(sample).split('\n');
  const blocks: string[] = [];
  lines.forEach((line, i) => {
    if (!line.startsWith('mpatha (')) return;
    let block = line + '\n';
    for (let j = i + 1; j < lines.length && /^(size=|[|`]-\+- |[| ] [|`]- )/.test(lines[j] ?? ''); j++) block += lines[j] + '\n';
    blocks.push(block);
  });
  return blocks;
}
