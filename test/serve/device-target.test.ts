// Device resolution through sysfs, against a fake /sys laid out as the kernel lays it out:
// /sys/dev/{block,char}/M:m are relative symlinks into /sys/devices/..., a SCSI disk has
// device -> its scsi_device directory, a dm device has dm/{name,uuid} and slaves/<dev> links.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { type DeviceTarget, MPATH_UUID_PREFIX, describeTarget, resolveKernelDevice } from '../../src/serve/device-target.js';
import type { FdFileType, FdInfo } from '../../src/serve/fd-info.js';

const sys = mkdtempSync(join(tmpdir(), 'prmux-sysfs-'));
after(() => rmSync(sys, { recursive: true, force: true }));

function file(path: string, content: string): void {
  mkdirSync(dirname(join(sys, path)), { recursive: true });
  writeFileSync(join(sys, path), content);
}
function dir(path: string): void {
  mkdirSync(join(sys, path), { recursive: true });
}
/** A relative symlink at `at` pointing to `to` (both sysfs paths), as sysfs makes them. */
function link(at: string, to: string): void {
  mkdirSync(dirname(join(sys, at)), { recursive: true });
  symlinkSync(relative(dirname(join(sys, at)), join(sys, to)), join(sys, at));
}

const WWID = '36001405d6ad8ab4a3a3478ab6c2ab8c1';
const HBA = 'devices/pci0000:00/0000:00:05.0/virtio2/host2';
const LUN_A = `${HBA}/target2:0:0/2:0:0:0`;
const LUN_B = `${HBA}/target2:0:1/2:0:1:0`;

// sda, sdb: SCSI disks (two paths of one LUN).
for (const [lun, name, mm] of [
  [LUN_A, 'sda', '8:0'],
  [LUN_B, 'sdb', '8:16'],
] as const) {
  dir(`${lun}/scsi_device/${lun.split('/').pop()!}`);
  file(`${lun}/block/${name}/dev`, `${mm}\n`);
  link(`${lun}/block/${name}/device`, lun);
  link(`dev/block/${mm}`, `${lun}/block/${name}`);
}
// sg0: the SCSI generic node of sda's LUN.
file(`${LUN_A}/scsi_generic/sg0/dev`, '21:0\n');
link('dev/char/21:0', `${LUN_A}/scsi_generic/sg0`);
// dm-0: the multipath map over sda and sdb (sysfs files end in a newline).
file('devices/virtual/block/dm-0/dm/uuid', `${MPATH_UUID_PREFIX}${WWID}\n`);
file('devices/virtual/block/dm-0/dm/name', 'mpatha\n');
link('devices/virtual/block/dm-0/slaves/sdb', `${LUN_B}/block/sdb`);
link('devices/virtual/block/dm-0/slaves/sda', `${LUN_A}/block/sda`);
link('dev/block/253:0', 'devices/virtual/block/dm-0');
// dm-1: an LVM volume on the map: a dm device, but not a multipath map.
file('devices/virtual/block/dm-1/dm/uuid', 'LVM-Fq2sT4cW0pZbM1nRkVxYe3jHdLaQ9oUiA8gP7sJtN6wXrEyB5vKcD1mZ0hLq2fS3\n');
file('devices/virtual/block/dm-1/dm/name', 'vg0-lv0\n');
link('devices/virtual/block/dm-1/slaves/dm-0', 'devices/virtual/block/dm-0');
link('dev/block/253:1', 'devices/virtual/block/dm-1');
// dm-2: a kpartx partition of the map: its uuid starts "part1-mpath-", not "mpath-".
file('devices/virtual/block/dm-2/dm/uuid', `part1-${MPATH_UUID_PREFIX}${WWID}\n`);
file('devices/virtual/block/dm-2/dm/name', 'mpatha1\n');
link('dev/block/253:2', 'devices/virtual/block/dm-2');
// dm-3: a multipath map whose slaves directory is missing and whose name cannot be read.
file('devices/virtual/block/dm-3/dm/uuid', `${MPATH_UUID_PREFIX}36001405000000000000000000000000b\n`);
link('dev/block/253:3', 'devices/virtual/block/dm-3');
// loop0: a virtual block device with no device link.
file('devices/virtual/block/loop0/dev', '7:0\n');
link('dev/block/7:0', 'devices/virtual/block/loop0');
// vda: a virtio-blk disk: it has a device link, but to a virtio device, not a SCSI one.
dir('devices/pci0000:00/0000:00:04.0/virtio1/driver');
link('devices/pci0000:00/0000:00:04.0/virtio1/block/vda/device', 'devices/pci0000:00/0000:00:04.0/virtio1');
link('dev/block/252:0', 'devices/pci0000:00/0000:00:04.0/virtio1/block/vda');

function info(type: FdFileType, major: number, minor: number): FdInfo {
  return { fd: 9, type, major, minor, dev: 5n, ino: 77n, accessMode: 'read-write' };
}

test('a SCSI disk (device/scsi_device present) resolves to scsi with its kernel name', () => {
  assert.deepEqual(resolveKernelDevice(info('block', 8, 0), sys), { kind: 'scsi', name: 'sda', major: 8, minor: 0 });
  assert.deepEqual(resolveKernelDevice(info('block', 8, 16), sys), { kind: 'scsi', name: 'sdb', major: 8, minor: 16 });
});

test('a dm device with an mpath- uuid is a multipath map: name, map, uuid and sorted slaves', () => {
  assert.deepEqual(resolveKernelDevice(info('block', 253, 0), sys), {
    kind: 'multipath',
    name: 'dm-0',
    major: 253,
    minor: 0,
    map: 'mpatha',
    uuid: `mpath-${WWID}`,
    slaves: ['sda', 'sdb'],
  });
});

test('a multipath map without slaves/ or dm/name: no slaves, the map named after the dm device', () => {
  const t = resolveKernelDevice(info('block', 253, 3), sys);
  assert.equal(t.kind, 'multipath');
  assert.ok(t.kind === 'multipath');
  assert.deepEqual(t.slaves, []);
  assert.equal(t.map, 'dm-3');
  assert.equal(t.uuid, 'mpath-36001405000000000000000000000000b');
});

test('dm devices that are not multipath maps (LVM, kpartx partition of a map) are plain block devices', () => {
  assert.deepEqual(resolveKernelDevice(info('block', 253, 1), sys), { kind: 'block', name: 'dm-1', major: 253, minor: 1 });
  assert.deepEqual(resolveKernelDevice(info('block', 253, 2), sys), { kind: 'block', name: 'dm-2', major: 253, minor: 2 });
});

test('non-SCSI block devices (loop, virtio-blk) are plain block devices', () => {
  assert.deepEqual(resolveKernelDevice(info('block', 7, 0), sys), { kind: 'block', name: 'loop0', major: 7, minor: 0 });
  assert.deepEqual(resolveKernelDevice(info('block', 252, 0), sys), { kind: 'block', name: 'vda', major: 252, minor: 0 });
});

test('a character device resolves by /sys/dev/char, never by the block table', () => {
  assert.deepEqual(resolveKernelDevice(info('char', 21, 0), sys), { kind: 'char', name: 'sg0', major: 21, minor: 0 });
  // 8:0 exists as a block device only; as a char device it is unknown, named "M:m".
  assert.deepEqual(resolveKernelDevice(info('char', 8, 0), sys), { kind: 'char', name: '8:0', major: 8, minor: 0 });
});

test('a device sysfs does not describe is a plain device named "M:m" (gets one SG_IO; the kernel answers)', () => {
  assert.deepEqual(resolveKernelDevice(info('block', 8, 32), sys), { kind: 'block', name: '8:32', major: 8, minor: 32 });
  assert.deepEqual(resolveKernelDevice(info('char', 21, 9), sys), { kind: 'char', name: '21:9', major: 21, minor: 9 });
  // A sysfs root that does not exist at all: still no throw.
  assert.deepEqual(resolveKernelDevice(info('block', 8, 0), join(sys, 'nowhere')), { kind: 'block', name: '8:0', major: 8, minor: 0 });
});

test('fds that are not devices are not-a-device with their type, sysfs untouched', () => {
  for (const type of ['file', 'socket', 'fifo', 'directory', 'symlink', 'other'] as const) {
    // major/minor 8:0 would resolve to sda if the type were ignored.
    assert.deepEqual(resolveKernelDevice(info(type, 8, 0), sys), { kind: 'not-a-device', type });
  }
});

test('describeTarget: the short names logs and metrics use', () => {
  const cases: [DeviceTarget, string][] = [
    [{ kind: 'scsi', name: 'sda', major: 8, minor: 0 }, 'sda'],
    [{ kind: 'multipath', name: 'dm-0', major: 253, minor: 0, map: 'mpatha', uuid: `mpath-${WWID}`, slaves: ['sda', 'sdb'] }, 'dm-0 (mpatha)'],
    [{ kind: 'block', name: 'loop0', major: 7, minor: 0 }, 'loop0'],
    [{ kind: 'block', name: '8:32', major: 8, minor: 32 }, '8:32'],
    [{ kind: 'char', name: 'sg0', major: 21, minor: 0 }, 'sg0'],
    [{ kind: 'san-path', host: 'host1', dev: 'sdb', wwid: WWID }, 'san host1/sdb'],
    [{ kind: 'san-map', host: 'host2', map: 'mpatha', wwid: WWID, paths: ['sda', 'sdb'] }, 'san host2/mapper/mpatha'],
    [{ kind: 'not-a-device', type: 'file' }, 'file'],
    [{ kind: 'not-a-device', type: 'socket' }, 'socket'],
  ];
  for (const [t, s] of cases) assert.equal(describeTarget(t), s);
});
