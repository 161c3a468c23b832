// A fence_scsi-style scenario on the simulated logical unit: two hosts with two paths each register
// on every path, host1 reserves Write Exclusive - Registrants Only, host2 fences host1 with PREEMPT
// AND ABORT, and host1's writes then fail on both of its paths. Output goes through `print`.

import { PrDeviceServer } from '../scsi/model/device-server.js';
import { encodePrInCdb, encodePrOutCdb } from '../scsi/cdb.js';
import { encodePrOutParams } from '../scsi/prout-params.js';
import { decodeReadFullStatus } from '../scsi/prin-data.js';
import { formatOutcome } from '../scsi/outcome.js';
import { formatTransportId } from '../scsi/transport-id.js';
import { PrOutAction, PrType, PrTypeName } from '../scsi/constants.js';
import type { ScsiOutcome } from '../scsi/types.js';

const HOSTS = [
  { name: 'host1', key: 0x1111n, paths: ['host1/sda', 'host1/sdb'] },
  { name: 'host2', key: 0x2222n, paths: ['host2/sda', 'host2/sdb'] },
] as const;

function params(key: bigint, serviceActionKey: bigint): Uint8Array {
  return encodePrOutParams({ key, serviceActionKey, specIPt: false, allTgPt: false, aptpl: false, transportIds: [] });
}

/** Returns true when every step answered as a correct multipath-aware fan-out must. */
export function runFenceDemo(print: (line: string) => void): boolean {
  const lun = new PrDeviceServer({ personality: 'lio' });
  let rtpi = 0;
  HOSTS.forEach((h, hi) =>
    h.paths.forEach((p, pi) =>
      lun.addNexus({ id: p, initiator: { protocol: 'sas', sasAddress: 0x5001405f00000000n + BigInt(hi * 0x100 + pi + 1) }, relativeTargetPortId: ++rtpi }),
    ),
  );
  let ok = true;
  const step = (what: string, nexus: string, o: ScsiOutcome, want: ScsiOutcome['kind']) => {
    const pass = o.kind === want;
    ok &&= pass;
    print(`${pass ? 'ok  ' : 'FAIL'} ${nexus.padEnd(10)} ${what.padEnd(46)} -> ${formatOutcome(o)}`);
  };
  const out = (sa: number, type = 0) => encodePrOutCdb({ serviceAction: sa, type, parameterListLength: 24 });
  for (const h of HOSTS) {
    for (const p of h.paths) step(`REGISTER key 0x${h.key.toString(16)}`, p, lun.execute(p, out(PrOutAction.REGISTER), params(0n, h.key)), 'good');
  }
  const we_ro = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
  step(`RESERVE ${PrTypeName[we_ro]}`, 'host1/sda', lun.execute('host1/sda', out(PrOutAction.RESERVE, we_ro), params(0x1111n, 0n)), 'good');
  const write = Uint8Array.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  for (const p of HOSTS[0].paths) step('WRITE(10) while holding', p, lun.execute(p, write, new Uint8Array(512)), 'good');
  step('PREEMPT AND ABORT key 0x1111 (fence host1)', 'host2/sda', lun.execute('host2/sda', out(PrOutAction.PREEMPT_AND_ABORT, we_ro), params(0x2222n, 0x1111n)), 'good');
  for (const p of HOSTS[0].paths) {
    step('first command after fencing: UNIT ATTENTION', p, lun.execute(p, write, new Uint8Array(512)), 'check-condition');
    step('WRITE(10) after fencing', p, lun.execute(p, write, new Uint8Array(512)), 'reservation-conflict');
  }
  for (const p of HOSTS[1].paths) step('WRITE(10) by the new holder', p, lun.execute(p, write, new Uint8Array(512)), 'good');
  const rfs = lun.execute('host2/sdb', encodePrInCdb({ serviceAction: 3, allocationLength: 8192 }));
  if (rfs.kind === 'good') {
    const status = decodeReadFullStatus(rfs.data);
    print(`READ FULL STATUS via host2/sdb: PRGENERATION ${status.generation}`);
    for (const d of status.descriptors) {
      print(`  key 0x${d.key.toString(16)} port ${d.relativeTargetPortId} ${formatTransportId(d.transportId)}${d.reservationHolder ? ` holder ${PrTypeName[d.type] ?? d.type}` : ''}`);
    }
  }
  print(ok ? 'fence demo: every path answered as expected' : 'fence demo: some steps answered unexpectedly');
  return ok;
}
