#!/bin/bash
# Step runner for test/lab/serve.test.ts, run INSIDE the lab guest:
#
#   bash pr-steps.sh CLIENT_DIR STEPS_JSON
#
# CLIENT_DIR holds test/clients/prh_client.py (the independent pr-manager-helper client); its library
# API (PrHelperClient and the parameter builders) sends every command exactly as QEMU does. STEPS_JSON
# lists the steps of one scenario; one process runs them all because under TCG each python3 start
# costs about a second, while a command through a helper takes milliseconds. Prints one JSON object
# per step on stdout, in order.
#
# Steps ("op"):
#   pr     one command through a helper socket: {sock, conn?, dev, ro?, reopen?, action, ...}; action is
#          a PR IN name (read-keys, read-reservation, report-capabilities, read-full-status; alloc?) or a
#          PR OUT name (register, register-and-ignore, reserve, release, clear, preempt,
#          preempt-and-abort, replace-lost-reservation: key?, saKey?, type?, scope?, aptpl?;
#          register-and-move: key, saKey, rtpi, tid "sas:0x..", unreg?) or raw (cdb hex, data hex).
#          Connections are kept per (sock, conn) like QEMU keeps one per pr-manager object, and fds
#          per (dev, ro) until reopen; a connection that failed is dropped and made anew next time.
#          With "check": true the per-path sg_persist cross-check follows the command.
#   check  sg_persist -n --in -k / -r / -s on each device of the step's "paths" (default: the
#          file's "paths"; a pr step with "check" takes the same override). A UNIT ATTENTION the
#          target queued for that nexus is reported and the command repeated once, so a UA left by
#          an earlier step does not hide the state.
#   sh     a shell command {cmd, timeout?}: rc, stdout, stderr.
#   close  close every connection and fd.
# Every result carries "ms", the step's guest time. A step must never touch an LU after a command
# that did not return (PREEMPT AND ABORT on LIO): sg_persist would hang there unkillably.
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: pr-steps.sh CLIENT_DIR STEPS_JSON" >&2; exit 2; }
exec python3 - "$@" <<'PY'
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, sys.argv[1])
import prh_client as prh  # noqa: E402

spec = json.load(open(sys.argv[2]))
paths = spec.get('paths', [])
conns = {}
fds = {}
SG_LIB_CAT_UNIT_ATTENTION = 6


def num(v, default=0):
    if v is None:
        return default
    return int(v, 0) if isinstance(v, str) else int(v)


def fd_for(step):
    k = (step['dev'], bool(step.get('ro')))
    if step.get('reopen') and k in fds:
        os.close(fds.pop(k))
    if k not in fds:
        fds[k] = os.open(k[0], os.O_RDONLY if k[1] else os.O_RDWR)
    return fds[k]


def conn_for(step):
    k = (step['sock'], step.get('conn', 'main'))
    if k not in conns:
        conns[k] = prh.PrHelperClient(k[0], timeout=float(step.get('timeout', 30)))
    c = conns[k]
    c.sock.settimeout(float(step.get('timeout', 30)))
    return k, c


def drop_conn(k):
    c = conns.pop(k, None)
    if c is not None:
        c.close()


def hex64(v):
    return '0x%x' % v


def decode(action, data):
    try:
        if action == 'read-keys':
            g, a, keys = prh.decode_read_keys(data)
            return {'generation': g, 'additional': a, 'keys': [hex64(x) for x in keys]}
        if action == 'read-reservation':
            r = prh.decode_read_reservation(data)
            if 'key' in r:
                r['key'] = hex64(r['key'])
            return r
        if action == 'read-full-status':
            g, a, ds = prh.decode_full_status(data)
            for d in ds:
                d['key'] = hex64(d['key'])
                d['transport_id'] = d['transport_id'].hex()
            return {'generation': g, 'additional': a, 'descriptors': ds}
    except Exception as e:  # a short or malformed payload is a finding, not a runner crash
        return {'error': repr(e)}
    return None


def pr_command(step):
    action = step['action']
    if action == 'raw':
        return bytes.fromhex(step['cdb']), bytes.fromhex(step.get('data', ''))
    if action in prh.PR_IN_ACTIONS:
        return prh.pr_in_cdb(prh.PR_IN_ACTIONS[action], num(step.get('alloc'), prh.MAX_DATA)), b''
    sa = prh.PR_OUT_ACTIONS[action]
    if action == 'register-and-move':
        params = prh.register_and_move_parameters(
            num(step.get('key')), num(step.get('saKey')), num(step['rtpi']),
            prh.transport_id_from_text(step['tid']), unreg=bool(step.get('unreg')))
    else:
        params = prh.basic_parameters(num(step.get('key')), num(step.get('saKey')), aptpl=bool(step.get('aptpl')))
    return prh.pr_out_cdb(sa, num(step.get('scope')), num(step.get('type')), len(params)), params


def run_pr(step):
    out = {}
    k = None
    try:
        cdb, data = pr_command(step)
        out['cdb'] = cdb.hex()
        fd = fd_for(step)
        k, c = conn_for(step)
        status, sense, payload = c.command(cdb, fd, data)
        out.update(status=status, sense=prh.sense_summary(sense), senseHex=sense.rstrip(b'\0').hex(),
                   data=payload.hex(), decoded=decode(step['action'], payload) if status == 0 else None)
    except prh.HelperClosed as e:
        out['error'] = {'kind': 'closed', 'message': str(e)}
    except socket.timeout as e:
        out['error'] = {'kind': 'timeout', 'message': str(e)}
    except OSError as e:
        out['error'] = {'kind': 'oserror', 'message': str(e), 'errno': e.errno}
    if 'error' in out and k is not None:
        drop_conn(k)
    return out


def sg_persist(flag, dev):
    attempts = []
    for _ in range(2):
        p = subprocess.run(['sg_persist', '-n', '--in', flag, dev], capture_output=True, text=True, timeout=60)
        attempts.append({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr})
        if p.returncode != SG_LIB_CAT_UNIT_ATTENTION:
            break
    last = attempts[-1]
    return {'rc': last['rc'], 'out': last['out'], 'err': last['err'],
            'unitAttention': [a['err'].strip() for a in attempts[:-1]]}


def check(devs):
    return {dev: {f: sg_persist('-' + f, dev) for f in ('k', 'r', 's')} for dev in devs}


for step in spec['steps']:
    op = step['op']
    res = {'id': step.get('id', ''), 'op': op}
    t0 = time.monotonic()
    if op == 'pr':
        res.update(run_pr(step))
        if step.get('check'):
            res['check'] = check(step.get('paths', paths))
    elif op == 'check':
        res['check'] = check(step.get('paths', paths))
    elif op == 'sh':
        try:
            p = subprocess.run(['bash', '-c', step['cmd']], capture_output=True, text=True,
                               timeout=float(step.get('timeout', 60)))
            res.update(rc=p.returncode, stdout=p.stdout, stderr=p.stderr)
        except subprocess.TimeoutExpired as e:
            res.update(rc=124, stdout=str(e.stdout or ''), stderr='timeout')
    elif op == 'close':
        for key in list(conns):
            drop_conn(key)
        for key in list(fds):
            os.close(fds.pop(key))
    else:
        res['error'] = {'kind': 'usage', 'message': 'unknown op %r' % op}
    res['ms'] = round((time.monotonic() - t0) * 1000)
    print(json.dumps(res), flush=True)
PY
