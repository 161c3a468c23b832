#!/bin/bash
# Watcher for test/lab/fanout.test.ts, run INSIDE the lab guest: brings path N back and measures how
# long it takes until that path's I_T nexus is registered with KEY again (by prmux's key guard; nothing
# else registers keys in the lab: multipath.conf has no reservation_key).
#
#   bash fanout-key-return.sh CLIENT_DIR ACTION N KEY PROBE_SOCK PROBE_DEV [TIMEOUT_S]
#
# ACTION   relink            re-create the LUN symlink in path N's TPG (what `lab-fault relink-lun N`
#                            does; done here so the clock starts at the link itself). The disk comes
#                            back under a new sdX name with a new relative target port id.
#          transport-online  tcm_loop transport_status of path N back to online (same disk).
# KEY      0x... the key expected on path N's nexus (SAS address 0x5001405f000000NN).
# PROBE_*  a pr-manager-helper socket and a path device that stays up: READ FULL STATUS goes through
#          them (a few ms per poll, where an sg_persist exec costs 50-80 ms under TCG). Path N's own new
#          device is never touched, so the unit attentions LIO queues for the returning nexus are left
#          to whoever registers it.
#
# Polls every ~20 ms: the disk's name (sysfs, via the TPG's address as lab-fault does), multipathd's
# view of it (its socket, `show paths raw format "%d %t %T"`), and READ FULL STATUS. Prints ONE JSON
# object: times in ms from the action (guest monotonic clock) to the disk, to multipathd showing it
# active+ready, and to the key on the nexus; the relative target port id of the new registration;
# the multipathd states seen; how many polls; and "timedOut".
set -euo pipefail
[[ $# == 6 || $# == 7 ]] || { echo "usage: fanout-key-return.sh CLIENT_DIR ACTION N KEY PROBE_SOCK PROBE_DEV [TIMEOUT_S]" >&2; exit 2; }
exec python3 - "$@" <<'PY'
import glob
import json
import os
import sys
import time

sys.path.insert(0, sys.argv[1])
import mpathcmd  # noqa: E402
import prh_client as prh  # noqa: E402

action, n, key = sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 0)
probe_sock, probe_dev = sys.argv[5], sys.argv[6]
timeout_s = float(sys.argv[7]) if len(sys.argv) > 7 else 30.0
TPG = '/sys/kernel/config/target/loopback/naa.50014050000000%02x/tpgt_1' % n
BACKSTORE = '/sys/kernel/config/target/core/fileio_0/lun0'
SAS = 0x5001405f00000000 + n
MULTIPATHD = '\0/org/kernel/linux/storage/multipathd'
POLL_S = 0.02


def disk():
    with open(TPG + '/address') as f:
        hct = f.read().strip()
    for b in glob.glob('/sys/class/scsi_device/%s:0/device/block/*' % hct):
        return os.path.basename(b)
    return None


def mpath_state(dev):
    try:
        out = mpathcmd.command(MULTIPATHD, 'show paths raw format "%d %t %T"', timeout=5.0)
    except OSError as e:
        return 'multipathd: %s' % e
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == dev:
            return '%s %s' % (f[1], f[2])
    return 'absent'


def registration(client, fd):
    """(relative target port id of KEY on path N's nexus, or None) from READ FULL STATUS."""
    status, sense, data = client.pr_in(fd, prh.PR_IN_ACTIONS['read-full-status'])
    if status != 0:
        return None, 'status 0x%x %s' % (status, prh.sense_summary(sense))
    _g, _a, descs = prh.decode_full_status(data)
    want = prh.sas_transport_id(SAS)
    for d in descs:
        if d['transport_id'][:12] == want[:12] and d['key'] == key:
            return d['rtpi'], None
    return None, None


client = prh.PrHelperClient(probe_sock, timeout=10.0)
fd = os.open(probe_dev, os.O_RDWR)
out = {'action': action, 'path': n, 'key': '0x%x' % key, 'polls': 0, 'dev': None,
       'diskMs': None, 'activeMs': None, 'keyMs': None, 'rtpi': None, 'states': [], 'probeErrors': [],
       'timedOut': False}
t0 = time.monotonic()
if action == 'relink':
    os.symlink(BACKSTORE, TPG + '/lun/lun_0/lab_lun')
elif action == 'transport-online':
    with open(TPG + '/transport_status', 'w') as f:
        f.write('online')
else:
    sys.exit('unknown action %r' % action)


def ms():
    return round((time.monotonic() - t0) * 1000)


while True:
    out['polls'] += 1
    if out['dev'] is None:
        out['dev'] = disk()
        if out['dev'] is not None:
            out['diskMs'] = ms()
    if out['dev'] is not None and out['activeMs'] is None:
        st = mpath_state(out['dev'])
        if not out['states'] or out['states'][-1][1] != st:
            out['states'].append([ms(), st])
        if st == 'active ready':
            out['activeMs'] = ms()
    if out['keyMs'] is None:
        rtpi, err = registration(client, fd)
        if err is not None and len(out['probeErrors']) < 5:
            out['probeErrors'].append([ms(), err])
        if rtpi is not None:
            out['keyMs'], out['rtpi'] = ms(), rtpi
    if out['keyMs'] is not None and out['activeMs'] is not None:
        break
    if time.monotonic() - t0 > timeout_s:
        out['timedOut'] = True
        break
    time.sleep(POLL_S)
os.close(fd)
client.close()
print(json.dumps(out), flush=True)
PY
