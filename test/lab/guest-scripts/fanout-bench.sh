#!/bin/bash
# Timing loop for bench/lab-bench.ts, run INSIDE the lab guest (one process for the whole run: under
# TCG a python3 start costs about a second, while one command through a helper takes milliseconds).
#
#   bash fanout-bench.sh CLIENT_DIR PRMUX_SOCK QPRH_SOCK MAP PATH_DEV ITERATIONS
#
# Per iteration, in an order rotated every iteration (benchmarking.md: interleave the contenders),
# each contender does READ KEYS, then REGISTER AND IGNORE EXISTING KEY with the iteration's key
# (KEY_A on even iterations, KEY_B on odd ones, so every REGISTER changes the key):
#   prmux           prh_client library call on one kept connection, the map fd opened once (as QEMU
#                   holds them); time.perf_counter around the call only
#   qemu-pr-helper  the same, against Debian's qemu-pr-helper (plain SG_IO on the map: one path)
#   mpathpersist    `mpathpersist --in -k MAP` / `mpathpersist --out --register-ignore --param-sark=K MAP`
#                   run as a process, timed around subprocess.run (start-up included, as an admin or
#                   a libvirt hook pays it)
#   sg_persist      `sg_persist -n --in -k PATH_DEV` / `sg_persist -n --out --register-ignore
#                   --param-sark=K PATH_DEV`: ONE path, one ioctl: the floor of any process-per-command tool
#   exec-floor      `/bin/true` the same way: the process start-up alone
# Prints one JSON object: per contender and operation the list of milliseconds and the answers that
# were not GOOD / exit 0 (the first few, with their text).
set -euo pipefail
[[ $# == 6 ]] || { echo "usage: fanout-bench.sh CLIENT_DIR PRMUX_SOCK QPRH_SOCK MAP PATH_DEV ITERATIONS" >&2; exit 2; }
exec python3 - "$@" <<'PY'
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, sys.argv[1])
import prh_client as prh  # noqa: E402

prmux_sock, qprh_sock, mapdev, pathdev, n = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
KEY_A, KEY_B = 0xbe00000000000a1, 0xbe00000000000b2
RK = prh.pr_in_cdb(prh.PR_IN_ACTIONS['read-keys'], prh.MAX_DATA)
RAI = prh.PR_OUT_ACTIONS['register-and-ignore']

fd = os.open(mapdev, os.O_RDWR)
helpers = {'prmux': prh.PrHelperClient(prmux_sock, timeout=60.0), 'qemu-pr-helper': prh.PrHelperClient(qprh_sock, timeout=60.0)}
times = {}
bad = {}


def record(who, op, ms, problem):
    times.setdefault(who, {}).setdefault(op, []).append(ms)
    if problem is not None:
        b = bad.setdefault(who, {}).setdefault(op, {'count': 0, 'first': []})
        b['count'] += 1
        if len(b['first']) < 3:
            b['first'].append(problem)


def helper(who):
    c = helpers[who]

    def run(key):
        t = time.perf_counter()
        st, sense, _ = c.command(RK, fd)
        record(who, 'read-keys', (time.perf_counter() - t) * 1000, None if st == 0 else 'status 0x%x %s' % (st, prh.sense_summary(sense)))
        params = prh.basic_parameters(0, key)
        cdb = prh.pr_out_cdb(RAI, 0, 0, len(params))
        t = time.perf_counter()
        st, sense, _ = c.command(cdb, fd, params)
        record(who, 'register', (time.perf_counter() - t) * 1000, None if st == 0 else 'status 0x%x %s' % (st, prh.sense_summary(sense)))
    return run


def process(who, read_argv, write_argv):
    def one(op, argv):
        t = time.perf_counter()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ms = (time.perf_counter() - t) * 1000
        record(who, op, ms, None if p.returncode == 0 else 'exit %d: %s' % (p.returncode, (p.stderr or p.stdout).strip()[-200:]))

    def run(key):
        one('read-keys', read_argv)
        if write_argv is not None:
            one('register', write_argv(key))
    return run


contenders = [
    ('prmux', helper('prmux')),
    ('qemu-pr-helper', helper('qemu-pr-helper')),
    ('mpathpersist', process('mpathpersist', ['mpathpersist', '--in', '-k', mapdev],
                             lambda k: ['mpathpersist', '--out', '--register-ignore', '--param-sark=0x%x' % k, mapdev])),
    ('sg_persist', process('sg_persist', ['sg_persist', '-n', '--in', '-k', pathdev],
                           lambda k: ['sg_persist', '-n', '--out', '--register-ignore', '--param-sark=0x%x' % k, pathdev])),
    ('exec-floor', process('exec-floor', ['/bin/true'], None)),
]
started = time.perf_counter()
for i in range(n):
    key = KEY_A if i % 2 == 0 else KEY_B
    k = i % len(contenders)
    for who, run in contenders[k:] + contenders[:k]:
        run(key)
for c in helpers.values():
    c.close()
os.close(fd)
print(json.dumps({'iterations': n, 'map': mapdev, 'pathDev': pathdev, 'seconds': round(time.perf_counter() - started, 2),
                  'times': times, 'notGood': bad}), flush=True)
PY
