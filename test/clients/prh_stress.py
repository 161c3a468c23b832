#!/usr/bin/env python3
"""Hammer a pr-manager-helper server with a seeded mix of good and bad clients.

Usage: prh_stress.py SOCKET TAGDIR COUNT SEED

TAGDIR holds files tag-0 .. tag-(K-1), file k containing b'tag-k'. Each good request sends the fd
of file k and names k in the command (PR IN: CDB bytes 2-5; PR OUT: parameter bytes 4-7), so a
server-side handler can prove that every fd arrived with the bytes it was sent with.

Prints one JSON line: counts per scenario and a list of unexpected outcomes (empty when the
server behaved). Exit status 0 unless the script itself failed.
"""

import json
import os
import random
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prh_client import (  # noqa: E402
    PR_IN, PR_OUT, HelperClosed, PrHelperClient, basic_parameters, pr_in_cdb, pr_out_cdb, sense_summary,
)

SCENARIOS = [
    # (name, weight)
    ('pr-in', 40), ('pr-out', 25), ('short-pr-out', 5), ('pipelined', 5),
    ('no-fd', 4), ('two-fds', 4), ('bad-opcode', 3), ('too-long', 3), ('feature-bit', 2),
    ('abrupt-after-cdb', 3), ('abrupt-partial-cdb', 3), ('abrupt-mid-param', 3),
]


def tagged_in(k, alloc):
    cdb = bytearray(pr_in_cdb(1, alloc))
    struct.pack_into('>I', cdb, 2, k)  # reserved bytes 2-5 carry the tag
    return bytes(cdb)


def tagged_out(k):
    params = bytearray(basic_parameters(key=k))
    return pr_out_cdb(0, 0, 1, len(params)), bytes(params)


def expect_closed(c):
    try:
        c.read_reply()
    except (HelperClosed, ConnectionResetError, BrokenPipeError):
        return True
    return False


def main():
    path, tagdir, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    ntags = len([n for n in os.listdir(tagdir) if n.startswith('tag-')])
    tag_fds = [os.open(os.path.join(tagdir, 'tag-%d' % k), os.O_RDWR) for k in range(ntags)]
    names = [n for n, _ in SCENARIOS]
    weights = [w for _, w in SCENARIOS]
    counts = {n: 0 for n in names}
    unexpected = []
    sent = 0
    c = None

    def fresh():
        nonlocal c
        if c is not None:
            c.close()
        c = PrHelperClient(path, timeout=20)

    fresh()
    while sent < count:
        name = rng.choices(names, weights)[0]
        counts[name] += 1
        k = rng.randrange(ntags)
        fd = tag_fds[k]
        content = b'tag-%d' % k
        try:
            if name == 'pr-in':
                alloc = rng.choice([0, 3, len(content), 64, 8192])
                status, sense, data = c.command(tagged_in(k, alloc), fd)
                sent += 1
                if status != 0 or data != content[:alloc]:
                    unexpected.append([name, k, status, sense_summary(sense), data.hex()])
            elif name == 'pr-out':
                cdb, params = tagged_out(k)
                status, sense, data = c.command(cdb, fd, params)
                sent += 1
                if status != 0 or data:
                    unexpected.append([name, k, status, sense_summary(sense)])
            elif name == 'short-pr-out':
                status, sense, _ = c.command(pr_out_cdb(1, 0, 1, 8), fd, b'\1' * 8)
                sent += 1
                if status != 2 or sense_summary(sense) != {'key': 5, 'asc': 0x1A, 'ascq': 0}:
                    unexpected.append([name, status, sense_summary(sense)])
            elif name == 'pipelined':
                k2 = rng.randrange(ntags)
                c.send_cdb(tagged_in(k, 64), [fd])
                cdb, params = tagged_out(k2)
                c.send_cdb(cdb, [tag_fds[k2]])
                c.sock.sendall(params)
                sent += 2
                r1, r2 = c.read_reply(), c.read_reply()
                if r1[0] != 0 or r1[2] != content or r2[0] != 0:
                    unexpected.append([name, r1[0], r2[0]])
            elif name in ('no-fd', 'two-fds', 'bad-opcode', 'too-long'):
                if name == 'bad-opcode':
                    c.send_cdb(b'\x12' + b'\0' * 15, [fd])
                elif name == 'too-long':
                    c.send_cdb(pr_out_cdb(0, 0, 1, 8193), [fd])
                else:
                    c.send_cdb(tagged_in(k, 64), [] if name == 'no-fd' else [fd, fd])
                sent += 1
                if not expect_closed(c):
                    unexpected.append([name, 'connection not closed'])
                fresh()
            elif name == 'feature-bit':
                c.close()
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(20)
                s.connect(path)
                s.recv(4)
                s.sendall(struct.pack('>I', 1))
                sent += 1
                if s.recv(1) != b'':
                    unexpected.append([name, 'connection not closed'])
                s.close()
                c = None
                fresh()
            elif name == 'abrupt-after-cdb':
                c.send_cdb(tagged_in(k, 64), [fd])
                sent += 1
                fresh()
            elif name == 'abrupt-partial-cdb':
                socket.send_fds(c.sock, [tagged_in(k, 64)[:7]], [fd])
                sent += 1
                fresh()
            elif name == 'abrupt-mid-param':
                cdb, params = tagged_out(k)
                c.send_cdb(cdb, [fd])
                c.sock.sendall(params[:10])
                sent += 1
                fresh()
        except (HelperClosed, ConnectionResetError, BrokenPipeError, socket.timeout) as e:
            unexpected.append([name, 'error', repr(e)])
            fresh()
    c.close()
    for fd in tag_fds:
        os.close(fd)
    print(json.dumps({'sent': sent, 'counts': counts, 'unexpected': unexpected[:50], 'unexpectedCount': len(unexpected)}))


if __name__ == '__main__':
    main()
