#!/usr/bin/env python3
"""Conformance suite for a pr-manager-helper, run by a client that speaks the protocol the way QEMU's
scsi/pr-manager-helper.c does (feature word, CDB + one fd in one sendmsg via socket.send_fds, PR OUT
data sized by CDB bytes 7-8, then status | size | 96 bytes sense | payload).

Two modes:

  prh_conformance.py --socket SOCK --san-dir DIR --host HOST [--only SUBSTRING]
      Every group against `prmux serve --san DIR/HOST`: negotiation, every PR IN / PR OUT service
      action on the path fds of the simulated SAN (DIR/HOST/dev/sdX, DIR/HOST/dev/mapper/mpathX,
      topology in DIR/HOST/topology.json) with their SCSI semantics, every protocol violation,
      64 concurrent connections, a slow path, reconnects, idle connections. The SAN's LUNs are the
      `lio` personality: expectations follow SPC-4 except where ../shared/lab/LIO-BEHAVIOUR.md
      measured LIO answering otherwise (cited as "LIO n").

  prh_conformance.py --socket SOCK --protocol-only [--scratch DIR]
      Only the protocol cases, on a regular file, /dev/null, a pipe, a socket, a directory and an
      O_RDONLY fd (no SAN needed): for comparing helpers (qemu-pr-helper vs prmux serve). Each case
      line also carries the raw observation (every reply's status, payload size, 96 sense bytes,
      payload; whether the connection was then closed or kept).

Output: one JSON line per case {"name", "ok", "detail"[, "observation"]}, then one summary line
{"summary": true, "total", "passed", "failed", "failedNames"}. Exit status 1 if any case failed.
`--list` prints the case names of the mode (one JSON array) without connecting.

After every violation case a connection opened before it and a new connection must still be served.
"""

import argparse
import json
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prh_client import (  # noqa: E402
    CDB_SIZE, MAX_DATA, PR_IN, PR_OUT, SENSE_SIZE, basic_parameters, decode_full_status,
    decode_read_keys, decode_read_reservation, pr_in_cdb, pr_out_cdb, register_and_move_parameters,
    scsi_cdb_xfer, sense_summary, transport_id_from_text,
)

# SCSI status (SAM-5 5.3) and the sense triples the suite expects.
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
UNIT_ATTENTION = 0x6
PARAM_LIST_LENGTH_ERROR = (0x5, 0x1A, 0x00)
INVALID_COMMAND_OPCODE = (0x5, 0x20, 0x00)
INVALID_FIELD_IN_CDB = (0x5, 0x24, 0x00)
INVALID_FIELD_IN_PARAM_LIST = (0x5, 0x26, 0x00)
# What QEMU's sg_io_sense_from_errno makes of an SG_IO that fails with an errno it has no entry
# for (ENOTTY on a regular file): CHECK CONDITION, ABORTED COMMAND, I/O PROCESS TERMINATED.
SGIO_FAILED = (0xB, 0x00, 0x06)

# PR IN / PR OUT service actions (SPC-4 6.15.1, 6.16.1; REPLACE LOST RESERVATION is SPC-5).
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT = 0, 1, 2, 3, 4, 5
REGISTER_AND_IGNORE, REGISTER_AND_MOVE, REPLACE_LOST_RESERVATION = 6, 7, 8
# Reservation types (SPC-4 table 168).
WRITE_EXCLUSIVE, EXCLUSIVE_ACCESS, WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 1, 3, 5

# Reservation keys the suite uses; CLEAN_KEY only for resetting a LUN.
KA, KA2, KB, KC, KM, KX = 0xA1A1, 0xA2A2, 0xB2B2, 0xC1C1, 0xD3D3, 0xEEEE
CLEAN_KEY = 0xC1EA2C1EA2

REPLY_TIMEOUT = 10.0   # a helper that neither answers nor closes within this is reported as hung


class CaseFailure(Exception):
    pass


class Closed(Exception):
    """The helper closed the connection (EOF, ECONNRESET or EPIPE)."""


class Hung(Exception):
    """Neither an answer nor a close within the timeout."""


def check(cond, message):
    if not cond:
        raise CaseFailure(message)


class Reply:
    def __init__(self, status, size, sense, data):
        self.status, self.size, self.sense, self.data = status, size, sense, data

    @property
    def triple(self):
        s = sense_summary(self.sense)
        return None if s is None else (s['key'], s['asc'], s['ascq'])

    def describe(self):
        return {'status': self.status, 'size': self.size, 'sense': self.sense.hex(), 'data': self.data.hex()}

    def __repr__(self):
        t = self.triple
        return 'status 0x%02x%s, %d bytes%s' % (
            self.status, '' if t is None else ' sense %x/%02x/%02x' % t, self.size,
            (' ' + self.data.hex()) if self.data else '')


class Conn:
    """One helper connection, with the raw operations the violation cases need."""

    def __init__(self, path, negotiate=True, features=0, timeout=REPLY_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.helper_features = None
        if negotiate:
            self.helper_features = struct.unpack('>I', self.recv_exact(4))[0]
            self.send(struct.pack('>I', features))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise Hung('no answer and no close within %.0f s (%d of %d bytes)' % (self.sock.gettimeout(), len(buf), n))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(type(e).__name__)
            if not chunk:
                raise Closed('EOF after %d of %d bytes' % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(type(e).__name__)

    def send_tolerant(self, data, fds=()):
        """Send data (with fds) the helper may refuse by closing; the close is seen on the next read."""
        try:
            if fds:
                socket.send_fds(self.sock, [bytes(data)], list(fds))
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_cdb(self, cdb, fds):
        """The CDB zero-padded to 16 bytes in one sendmsg() carrying `fds` (QEMU: exactly one)."""
        cdb = bytes(cdb).ljust(CDB_SIZE, b'\0')
        try:
            sent = socket.send_fds(self.sock, [cdb], list(fds)) if fds else self.sock.send(cdb)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(type(e).__name__)
        if sent < len(cdb):
            self.send(cdb[sent:])

    def read_reply(self):
        header = self.recv_exact(8 + SENSE_SIZE)
        status, size = struct.unpack('>II', header[:8])
        check(size <= MAX_DATA, 'payload size %d above %d' % (size, MAX_DATA))
        return Reply(status, size, header[8:], self.recv_exact(size))

    def command(self, cdb, fd, data=b''):
        """One command as QEMU sends it, with the reply checked against the protocol's size rules."""
        cdb = bytes(cdb).ljust(CDB_SIZE, b'\0')
        self.send_cdb(cdb, [fd])
        if cdb[0] == PR_OUT:
            length = scsi_cdb_xfer(cdb)
            self.send(bytes(data)[:length].ljust(length, b'\0'))
        reply = self.read_reply()
        check_reply_size(cdb, reply)
        return reply

    def pr_in(self, fd, action, alloc=MAX_DATA):
        return self.command(pr_in_cdb(action, alloc), fd)

    def pr_out(self, fd, action, params, pr_type=0, scope=0):
        return self.command(pr_out_cdb(action, scope, pr_type, len(params)), fd, params)

    def readable_now(self):
        return bool(select.select([self.sock], [], [], 0)[0])


def check_reply_size(cdb, reply):
    """pr-helper.rst: a payload only for PR IN answered GOOD, never above the ALLOCATION LENGTH."""
    if cdb[0] == PR_IN and reply.status == GOOD:
        check(reply.size <= scsi_cdb_xfer(cdb), 'payload of %d bytes above the allocation length %d' % (reply.size, scsi_cdb_xfer(cdb)))
    else:
        check(reply.size == 0, 'payload of %d bytes with status 0x%02x on opcode 0x%02x' % (reply.size, reply.status, cdb[0]))


def expect(reply, status, triple=None, what=''):
    prefix = (what + ': ') if what else ''
    check(reply.status == status, '%sexpected status 0x%02x, got %r' % (prefix, status, reply))
    if triple is not None:
        check(reply.triple == tuple(triple), '%sexpected sense %x/%02x/%02x, got %r' % ((prefix,) + tuple(triple) + (reply,)))
    return reply


def expect_good(reply, what=''):
    return expect(reply, GOOD, None, what)


# ---- environment --------------------------------------------------------------------------------

class Lun:
    def __init__(self, name, map_file, paths):
        self.name = name
        self.map_file = map_file
        self.paths = paths     # [{'dev','file','transportId','relativeTargetPortId', 'fd'}]
        self.map_fd = os.open(map_file, os.O_RDWR)


class Env:
    """The fds and expectations of one mode."""

    def __init__(self, args):
        self.socket = args.socket
        self.san = not args.protocol_only
        self.own_scratch = not args.scratch
        self.scratch = args.scratch or tempfile.mkdtemp(prefix='prh-conformance-')
        self.owned_fds = []
        alien = os.path.join(self.scratch, 'not-a-device')
        with open(alien, 'wb') as f:
            f.write(b'\0' * 512)
        self.alien_fd = self.keep(os.open(alien, os.O_RDWR))         # regular file, not from the SAN
        self.alien_ro_fd = self.keep(os.open(alien, os.O_RDONLY))
        if self.san:
            self.ctl_path = os.path.join(args.san_dir, 'ctl.sock')
            self.host = args.host
            topo = json.load(open(os.path.join(args.san_dir, args.host, 'topology.json')))
            paths = {p['dev']: p for p in topo['paths']}
            self.luns = []
            for m in topo['maps']:
                lp = []
                for dev in m['paths']:
                    p = dict(paths[dev])
                    p['fd'] = self.keep(os.open(p['file'], os.O_RDWR))
                    p['ro_fd'] = self.keep(os.open(p['file'], os.O_RDONLY))
                    lp.append(p)
                self.luns.append(Lun(m['name'], m['file'], lp))
            check(len(self.luns) >= 2 and all(len(lun.paths) >= 2 for lun in self.luns),
                  'the suite needs 2 LUNs with 2 paths each on %s' % args.host)
            self.rw_fd = self.luns[0].paths[0]['fd']
            self.ro_fd = self.luns[0].paths[0]['ro_fd']
        else:
            self.rw_fd = self.alien_fd
            self.ro_fd = self.alien_ro_fd

    def keep(self, fd):
        self.owned_fds.append(fd)
        return fd

    def probe(self, conn):
        """A command that must be answered: READ KEYS on a SAN path, or on the regular file."""
        reply = conn.pr_in(self.rw_fd, READ_KEYS)
        if self.san:
            expect_good(reply, 'probe READ KEYS')
        else:
            expect(reply, CHECK_CONDITION, SGIO_FAILED, 'probe READ KEYS on a regular file')
        return reply

    def ctl(self, *words):
        """One request to the simulated SAN's control socket (what `prmux san ctl` sends)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.ctl_path)
        try:
            s.sendall((json.dumps({'id': 1, 'cmd': list(words)}) + '\n').encode())
            buf = b''
            while not buf.endswith(b'\n'):
                chunk = s.recv(65536)
                check(chunk, 'the SAN control socket closed')
                buf += chunk
        finally:
            s.close()
        r = json.loads(buf)
        check(r.get('ok') is True, 'san ctl %s failed: %s' % (' '.join(words), r.get('error')))
        return r.get('result')


# ---- LUN state helpers (SAN mode) -------------------------------------------------------------------

def drain_unit_attentions(c, fd):
    """LIO reports one UNIT ATTENTION per command, PR IN included (LIO-BEHAVIOUR: unit attentions)."""
    for _ in range(4):
        r = c.pr_in(fd, READ_KEYS)
        if r.status == GOOD:
            return
        check(r.status == CHECK_CONDITION and r.triple and r.triple[0] == UNIT_ATTENTION, 'draining UAs: %r' % (r,))
    raise CaseFailure('unit attentions do not drain')


def reset_lun(c, lun):
    """Leave the LUN with no registration and no reservation: REGISTER AND IGNORE EXISTING KEY a
    cleanup key on the first path, CLEAR with it, then consume the UNIT ATTENTIONs CLEAR leaves."""
    for p in lun.paths:
        drain_unit_attentions(c, p['fd'])
    first = lun.paths[0]['fd']
    r = c.pr_out(first, REGISTER_AND_IGNORE, basic_parameters(sa_key=CLEAN_KEY))
    if r.triple == INVALID_FIELD_IN_CDB:  # LIO 9: an ALL_TG_PT registration needs ALL_TG_PT here
        r = c.pr_out(first, REGISTER_AND_IGNORE, basic_parameters(sa_key=CLEAN_KEY, all_tg_pt=True))
    expect_good(r, 'reset: REGISTER AND IGNORE EXISTING KEY')
    expect_good(c.pr_out(first, CLEAR, basic_parameters(key=CLEAN_KEY)), 'reset: CLEAR')
    for p in lun.paths:
        drain_unit_attentions(c, p['fd'])
    gen, additional, keys = read_keys(c, first)
    check(additional == 0 and keys == [], 'reset left keys %s' % keys)
    check('key' not in read_reservation(c, first), 'reset left a reservation')


def read_keys(c, fd, alloc=MAX_DATA):
    return decode_read_keys(expect_good(c.pr_in(fd, READ_KEYS, alloc), 'READ KEYS').data)


def read_reservation(c, fd, alloc=MAX_DATA):
    return decode_read_reservation(expect_good(c.pr_in(fd, READ_RESERVATION, alloc), 'READ RESERVATION').data)


def register(c, fd, sa_key, key=0):
    return expect_good(c.pr_out(fd, REGISTER, basic_parameters(key=key, sa_key=sa_key)), 'REGISTER 0x%x' % sa_key)


def hexkeys(keys):
    return ['0x%x' % k for k in keys]


# ---- cases ------------------------------------------------------------------------------------------

CASES = []   # (name, function, modes) ; modes: 'san', 'protocol'


def case(name, modes=('san',)):
    def deco(fn):
        CASES.append((name, fn, modes))
        return fn
    return deco


def others_still_served(env, witness):
    """The connection opened before the case, and a new one, are still answered."""
    env.probe(witness)
    with Conn(env.socket) as fresh:
        env.probe(fresh)


# Negotiation ---------------------------------------------------------------------------------------

@case('negotiation: the helper speaks first, with feature word 0', ('san', 'protocol'))
def _(env):
    with Conn(env.socket, negotiate=False) as c:
        word = c.recv_exact(4)   # the client has sent nothing yet
        check(word == b'\0\0\0\0', 'feature word %s' % word.hex())
        c.send(b'\0\0\0\0')
        env.probe(c)
    return {'featureWord': word.hex()}


@case('negotiation: a feature word written in two pieces is accepted', ('san', 'protocol'))
def _(env):
    with Conn(env.socket, negotiate=False) as c:
        c.recv_exact(4)
        c.send(b'\0\0')
        time.sleep(0.05)
        c.send(b'\0\0')
        env.probe(c)


def feature_request(bits):
    def run(env):
        with Conn(env.socket) as witness, Conn(env.socket, negotiate=False) as c:
            c.recv_exact(4)
            c.send(struct.pack('>I', bits))
            obs = observe(c, 1, env)
            check(obs['end'] == 'closed' and not obs['replies'], 'requested feature 0x%x: %s' % (bits, obs))
            others_still_served(env, witness)
            return obs
    return run


case('negotiation: requesting feature bit 0x1 makes the helper close', ('san', 'protocol'))(feature_request(0x1))
case('negotiation: requesting feature bit 0x80000000 makes the helper close', ('san', 'protocol'))(feature_request(0x80000000))


# PR IN / PR OUT semantics on the simulated SAN --------------------------------------------------------

@case('pr-in: READ KEYS on an empty LUN is the 8-byte header with ADDITIONAL LENGTH 0')
def _(env):
    lun = env.luns[0]
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        for p in lun.paths:
            r = expect_good(c.pr_in(p['fd'], READ_KEYS))
            check(r.size == 8, '%s: %d bytes' % (p['dev'], r.size))
            check(decode_read_keys(r.data)[1] == 0, '%s: ADDITIONAL LENGTH %d' % (p['dev'], decode_read_keys(r.data)[1]))
        r = expect_good(c.pr_in(lun.paths[0]['fd'], READ_RESERVATION))
        check(r.size == 8 and decode_read_reservation(r.data)['additional'] == 0, 'READ RESERVATION %r' % (r,))
        r = expect_good(c.pr_in(lun.paths[0]['fd'], READ_FULL_STATUS))
        check(r.size == 8 and decode_full_status(r.data)[1] == 0, 'READ FULL STATUS %r' % (r,))


@case('pr-out REGISTER: the key appears in READ KEYS on every path, PRGENERATION +1 per registration')
def _(env):
    lun = env.luns[0]
    a, b = lun.paths[0]['fd'], lun.paths[1]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        g0 = read_keys(c, a)[0]
        register(c, a, KA)
        for fd in (a, b, lun.map_fd):
            g, additional, keys = read_keys(c, fd)
            check((g, additional, keys) == (g0 + 1, 8, [KA]), 'after REGISTER on A: gen %d (was %d), keys %s' % (g, g0, hexkeys(keys)))
        register(c, b, KB)
        g, additional, keys = read_keys(c, a)
        # LIO-BEHAVIOUR: READ KEYS lists keys in registration order, one per I_T nexus.
        check((g, additional, keys) == (g0 + 2, 16, [KA, KB]), 'after REGISTER on B: gen %d, keys %s' % (g, hexkeys(keys)))
        # The other LUN is untouched: the fds reach the right logical unit.
        check(read_keys(c, env.luns[1].paths[0]['fd'])[2] == [], 'LUN 1 shows keys registered on LUN 0')
        # REGISTER with a RESERVATION KEY that is not the nexus's own: RESERVATION CONFLICT, no change.
        expect(c.pr_out(a, REGISTER, basic_parameters(key=0xBAD, sa_key=KX)), RESERVATION_CONFLICT, None, 'REGISTER with a wrong key')
        check(read_keys(c, a)[0] == g0 + 2, 'a failed REGISTER changed PRGENERATION')
        # Changing the key: REGISTER with the current key and a new SA key.
        expect_good(c.pr_out(a, REGISTER, basic_parameters(key=KA, sa_key=KA2)), 'REGISTER KA -> KA2')
        g, _, keys = read_keys(c, b)
        check((g, keys) == (g0 + 3, [KA2, KB]), 'after the key change: gen %d keys %s' % (g, hexkeys(keys)))
        # Unregistering (SA key 0) removes the key; LIO 3: LIO leaves PRGENERATION alone here.
        expect_good(c.pr_out(a, REGISTER, basic_parameters(key=KA2, sa_key=0)), 'REGISTER KA2 -> 0')
        g, _, keys = read_keys(c, b)
        check((g, keys) == (g0 + 3, [KB]), 'after unregistering A: gen %d keys %s (LIO 3: no bump)' % (g, hexkeys(keys)))
        reset_lun(c, lun)


@case('pr-out REGISTER AND IGNORE EXISTING KEY: registers and replaces without the old key')
def _(env):
    lun = env.luns[0]
    a = lun.paths[0]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        g0 = read_keys(c, a)[0]
        expect_good(c.pr_out(a, REGISTER_AND_IGNORE, basic_parameters(key=0xBAD, sa_key=KA)))
        check(read_keys(c, a)[::2] == (g0 + 1, [KA]), 'after REGISTER AND IGNORE: %s' % (read_keys(c, a),))
        expect_good(c.pr_out(a, REGISTER_AND_IGNORE, basic_parameters(key=0xBAD, sa_key=KA2)))
        check(read_keys(c, a)[::2] == (g0 + 2, [KA2]), 'after the second REGISTER AND IGNORE: %s' % (read_keys(c, a),))
        reset_lun(c, lun)


@case('pr-out RESERVE / RELEASE: holder and type in READ RESERVATION, conflicts from the other I_T nexus')
def _(env):
    lun = env.luns[0]
    a, b = lun.paths[0]['fd'], lun.paths[1]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, a, KA)
        register(c, b, KB)
        g = read_keys(c, a)[0]
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE), 'RESERVE on A')
        for fd in (a, b, lun.map_fd):
            rr = read_reservation(c, fd)
            check(rr == {'generation': g, 'additional': 16, 'key': KA, 'scope': 0, 'type': WRITE_EXCLUSIVE},
                  'READ RESERVATION after RESERVE: %s' % rr)
        # Another I_T nexus (path B, registered) asks for the reservation: RESERVATION CONFLICT.
        expect(c.pr_out(b, RESERVE, basic_parameters(key=KB), pr_type=WRITE_EXCLUSIVE), RESERVATION_CONFLICT, None, 'RESERVE on B')
        # The holder repeats its type: GOOD, nothing changes; another type: RESERVATION CONFLICT.
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE), 'RESERVE again on A')
        expect(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=EXCLUSIVE_ACCESS), RESERVATION_CONFLICT, None, 'RESERVE of another type')
        # RELEASE by a registered non-holder: GOOD without effect (SPC-4 5.13.11.2).
        expect_good(c.pr_out(b, RELEASE, basic_parameters(key=KB), pr_type=WRITE_EXCLUSIVE), 'RELEASE on B')
        check(read_reservation(c, b).get('key') == KA, 'RELEASE by the non-holder released the reservation')
        # RELEASE by the holder with the wrong key: RESERVATION CONFLICT.
        expect(c.pr_out(a, RELEASE, basic_parameters(key=0xBAD), pr_type=WRITE_EXCLUSIVE), RESERVATION_CONFLICT, None, 'RELEASE, wrong key')
        expect_good(c.pr_out(a, RELEASE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE), 'RELEASE on A')
        rr = read_reservation(c, b)
        # RESERVE and RELEASE leave PRGENERATION alone (SPC-4 6.15.2; LIO-BEHAVIOUR 3).
        check(rr == {'generation': g, 'additional': 0}, 'READ RESERVATION after RELEASE: %s' % rr)
        check(read_keys(c, a)[2] == [KA, KB], 'RELEASE changed the registrations')
        reset_lun(c, lun)


@case('pr-out CLEAR: removes every registration and the reservation, UNIT ATTENTION 2A/03 to the others')
def _(env):
    lun = env.luns[0]
    a, b = lun.paths[0]['fd'], lun.paths[1]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, a, KA)
        register(c, b, KB)
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE_REGISTRANTS_ONLY))
        g = read_keys(c, b)[0]
        expect_good(c.pr_out(b, CLEAR, basic_parameters(key=KB)), 'CLEAR on B')
        check(read_keys(c, b) == (g + 1, 0, []), 'READ KEYS after CLEAR: %s' % (read_keys(c, b),))
        check(read_reservation(c, b) == {'generation': g + 1, 'additional': 0}, 'reservation survived CLEAR')
        # SPC-4 5.13.11.6: RESERVATIONS PREEMPTED to every other nexus that was registered, once.
        expect(c.pr_in(a, READ_KEYS), CHECK_CONDITION, (UNIT_ATTENTION, 0x2A, 0x03), 'A after CLEAR')
        expect_good(c.pr_in(a, READ_KEYS), 'A after its unit attention')
        reset_lun(c, lun)


def preempt_case(action, label):
    def run(env):
        lun = env.luns[0]
        a, b = lun.paths[0]['fd'], lun.paths[1]['fd']
        with Conn(env.socket) as c:
            reset_lun(c, lun)
            register(c, a, KA)
            register(c, b, KB)
            expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE))
            g = read_keys(c, b)[0]
            # B preempts the holder's key and takes an Exclusive Access reservation.
            expect_good(c.pr_out(b, action, basic_parameters(key=KB, sa_key=KA), pr_type=EXCLUSIVE_ACCESS), label + ' on B')
            check(read_keys(c, b) == (g + 1, 8, [KB]), 'READ KEYS after %s: %s' % (label, read_keys(c, b),))
            rr = read_reservation(c, b)
            check(rr == {'generation': g + 1, 'additional': 16, 'key': KB, 'scope': 0, 'type': EXCLUSIVE_ACCESS}, 'reservation: %s' % rr)
            # SPC-4 5.13.11.4: REGISTRATIONS PREEMPTED (2A/05) to the preempted nexus, once.
            expect(c.pr_in(a, READ_KEYS), CHECK_CONDITION, (UNIT_ATTENTION, 0x2A, 0x05), 'A after ' + label)
            check(read_keys(c, a)[2] == [KB], 'A sees other keys')
            # A is no longer registered: RESERVE from it conflicts with B's Exclusive Access reservation.
            expect(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=EXCLUSIVE_ACCESS), RESERVATION_CONFLICT, None, 'RESERVE on preempted A')
            reset_lun(c, lun)
    return run


case('pr-out PREEMPT: removes the preempted key, moves the reservation, UNIT ATTENTION 2A/05')(preempt_case(PREEMPT, 'PREEMPT'))
case('pr-out PREEMPT AND ABORT: as PREEMPT, answered (the LIO hang is not reproduced, LIO 7)')(preempt_case(PREEMPT_AND_ABORT, 'PREEMPT AND ABORT'))


@case('pr-out REGISTER AND MOVE: the reservation moves to the named I_T nexus with the SA key')
def _(env):
    lun = env.luns[0]
    pa, pb = lun.paths
    a, b = pa['fd'], pb['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, a, KA)
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE))
        g = read_keys(c, a)[0]
        # Moving to the issuing I_T nexus itself: INVALID FIELD IN PARAMETER LIST (LIO-BEHAVIOUR).
        own = register_and_move_parameters(KA, KM, pa['relativeTargetPortId'], transport_id_from_text(pa['transportId']))
        expect(c.pr_out(a, REGISTER_AND_MOVE, own), CHECK_CONDITION, INVALID_FIELD_IN_PARAM_LIST, 'REGISTER AND MOVE to itself')
        params = register_and_move_parameters(KA, KM, pb['relativeTargetPortId'], transport_id_from_text(pb['transportId']))
        expect_good(c.pr_out(a, REGISTER_AND_MOVE, params), 'REGISTER AND MOVE to B')
        rr = read_reservation(c, b)
        check(rr == {'generation': g + 1, 'additional': 16, 'key': KM, 'scope': 0, 'type': WRITE_EXCLUSIVE}, 'reservation after the move: %s' % rr)
        check(read_keys(c, b)[2] == [KA, KM], 'keys after the move: %s' % hexkeys(read_keys(c, b)[2]))
        _, _, ds = decode_full_status(expect_good(c.pr_in(b, READ_FULL_STATUS)).data)
        holders = [(d['key'], d['rtpi'], d['transport_id']) for d in ds if d['holder']]
        check(holders == [(KM, pb['relativeTargetPortId'], transport_id_from_text(pb['transportId']))], 'holder in READ FULL STATUS: %s' % ds)
        # The new holder releases with its new key.
        expect_good(c.pr_out(b, RELEASE, basic_parameters(key=KM), pr_type=WRITE_EXCLUSIVE), 'RELEASE by the new holder')
        check('key' not in read_reservation(c, a), 'still reserved after RELEASE')
        reset_lun(c, lun)


@case('pr-out REPLACE LOST RESERVATION: not supported by LIO, ILLEGAL REQUEST 5/24/00, nothing changes')
def _(env):
    lun = env.luns[0]
    a = lun.paths[0]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, a, KA)
        before = read_keys(c, a)
        # SPC-5 6.17.11 service action 08h; LIO-BEHAVIOUR: PR OUT 08h/09h -> INVALID FIELD IN CDB.
        expect(c.pr_out(a, REPLACE_LOST_RESERVATION, basic_parameters(key=KA, sa_key=KA), pr_type=WRITE_EXCLUSIVE),
               CHECK_CONDITION, INVALID_FIELD_IN_CDB, 'REPLACE LOST RESERVATION')
        check(read_keys(c, a) == before and 'key' not in read_reservation(c, a), 'REPLACE LOST RESERVATION changed the state')
        reset_lun(c, lun)


@case('pr-in REPORT CAPABILITIES: the LIO capabilities, cut to the allocation length')
def _(env):
    lun = env.luns[0]
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        # LIO-BEHAVIOUR: 0008 1d 90 ea01 0000 = LENGTH 8; CRH SIP_C ATP_C PTPL_C; TMV, ALLOW COMMANDS 1;
        # types WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX, EX_AC_AR.
        full = expect_good(c.pr_in(lun.paths[0]['fd'], REPORT_CAPABILITIES)).data
        check(full.hex() == '00081d90ea010000', 'REPORT CAPABILITIES %s' % full.hex())
        check(expect_good(c.pr_in(lun.map_fd, REPORT_CAPABILITIES)).data == full, 'differs through the map fd')
        r = expect_good(c.pr_in(lun.paths[1]['fd'], REPORT_CAPABILITIES, 6))
        check(r.data == full[:6], 'allocation length 6: %s' % r.data.hex())
        # LIO 5: an allocation length below what the header needs is INVALID FIELD IN CDB.
        expect(c.pr_in(lun.paths[1]['fd'], REPORT_CAPABILITIES, 4), CHECK_CONDITION, INVALID_FIELD_IN_CDB, 'allocation length 4')


@case('pr-in READ KEYS / READ RESERVATION: allocation length cuts the data, ADDITIONAL LENGTH stays real')
def _(env):
    lun = env.luns[0]
    a, b = lun.paths[0]['fd'], lun.paths[1]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, a, KA)
        register(c, b, KB)
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE))
        full = expect_good(c.pr_in(a, READ_KEYS)).data
        check(len(full) == 24, 'READ KEYS is %d bytes' % len(full))
        for alloc in (8, 12, 16, 23, 24, 25, 8192):
            r = expect_good(c.pr_in(b, READ_KEYS, alloc), 'READ KEYS alloc %d' % alloc)
            check(r.data == full[:alloc], 'READ KEYS alloc %d: %s, full %s' % (alloc, r.data.hex(), full.hex()))
            check(decode_read_keys(r.data)[1] == 16, 'alloc %d: ADDITIONAL LENGTH %d' % (alloc, decode_read_keys(r.data)[1]))
        full = expect_good(c.pr_in(a, READ_RESERVATION)).data
        check(len(full) == 24, 'READ RESERVATION is %d bytes' % len(full))
        r = expect_good(c.pr_in(b, READ_RESERVATION, 8))
        check(r.data == full[:8] and decode_read_reservation(r.data)['additional'] == 16, 'READ RESERVATION alloc 8: %s' % r.data.hex())
        # LIO 5: READ KEYS with ALLOCATION LENGTH 0 is INVALID FIELD IN CDB (SPC-4 would return no data).
        expect(c.pr_in(a, READ_KEYS, 0), CHECK_CONDITION, INVALID_FIELD_IN_CDB, 'READ KEYS alloc 0')
        reset_lun(c, lun)


@case('pr-in READ FULL STATUS: one descriptor per registration with the TransportIDs of topology.json')
def _(env):
    lun = env.luns[0]
    pa, pb = lun.paths
    with Conn(env.socket) as c:
        reset_lun(c, lun)
        register(c, pa['fd'], KA)
        register(c, pb['fd'], KB)
        expect_good(c.pr_out(pa['fd'], RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE))
        g = read_keys(c, pa['fd'])[0]
        want = [
            {'key': KA, 'all_tg_pt': False, 'holder': True, 'scope': 0, 'type': WRITE_EXCLUSIVE,
             'rtpi': pa['relativeTargetPortId'], 'transport_id': transport_id_from_text(pa['transportId'])},
            {'key': KB, 'all_tg_pt': False, 'holder': False, 'scope': 0, 'type': 0,
             'rtpi': pb['relativeTargetPortId'], 'transport_id': transport_id_from_text(pb['transportId'])},
        ]
        full = None
        for fd in (pa['fd'], pb['fd'], lun.map_fd):
            r = expect_good(c.pr_in(fd, READ_FULL_STATUS))
            gen, additional, ds = decode_full_status(r.data)
            check(gen == g and additional == 96 and r.size == 104, 'header: gen %d (want %d) additional %d size %d' % (gen, g, additional, r.size))
            check(ds == want, 'descriptors %s, want %s' % (ds, want))
            full = r.data
        r = expect_good(c.pr_in(pb['fd'], READ_FULL_STATUS, 30))
        check(r.size == 30, 'allocation length 30 returned %d bytes' % r.size)
        # LIO 6: with a short allocation length ADDITIONAL LENGTH counts only the descriptors that fit
        # (alloc 30 -> 48); the descriptor bytes themselves are those of the full answer.
        check(r.data[:4] == full[:4] and r.data[8:] == full[8:30], 'alloc 30: %s, full %s' % (r.data.hex(), full[:30].hex()))
        check(decode_full_status(r.data)[1] == 48, 'alloc 30: ADDITIONAL LENGTH %d (LIO 6: 48)' % decode_full_status(r.data)[1])
        reset_lun(c, lun)


@case('pr-in through the map fd: READ KEYS / READ RESERVATION as on its paths; the other LUN is separate')
def _(env):
    l0, l1 = env.luns[0], env.luns[1]
    with Conn(env.socket) as c:
        reset_lun(c, l0)
        reset_lun(c, l1)
        register(c, l0.paths[0]['fd'], KA)
        register(c, l1.paths[1]['fd'], KC)
        for _ in range(4):  # the SAN picks a path per command: every pick answers the same
            check(read_keys(c, l0.map_fd)[2] == [KA], 'map of LUN 0: %s' % hexkeys(read_keys(c, l0.map_fd)[2]))
            check(read_keys(c, l1.map_fd)[2] == [KC], 'map of LUN 1: %s' % hexkeys(read_keys(c, l1.map_fd)[2]))
        reset_lun(c, l0)
        reset_lun(c, l1)


# Violations -----------------------------------------------------------------------------------------

def observe(c, replies_wanted, env):
    """Read up to `replies_wanted` replies; then, if all came, send the probe to learn whether the
    connection was kept. Returns {'replies': [...], 'end': 'closed'|'kept'|'hung'[, 'probe']}."""
    out = {'replies': []}
    try:
        for _ in range(replies_wanted):
            out['replies'].append(c.read_reply().describe())
        out['probe'] = env.probe(c).describe()
        out['end'] = 'kept'
    except Closed:
        out['end'] = 'closed'
    except Hung:
        out['end'] = 'hung'
    return out


def violation(name, modes=('san', 'protocol')):
    """A violation case: `fn(env, c)` does its sends on a fresh negotiated connection and returns
    (replies the client waits for, check(env, obs) or None). Then the witness connections are tried."""
    def deco(fn):
        def run(env):
            with Conn(env.socket) as witness:
                with Conn(env.socket) as c:
                    wanted, verify = fn(env, c)
                    if wanted == 0:
                        obs = {'replies': [], 'end': 'client-closed'}
                    else:
                        obs = observe(c, wanted, env)
                if env.san and verify is not None:
                    verify(env, obs)
                others_still_served(env, witness)
            return obs
        CASES.append(('violation: ' + name, run, modes))
        return fn
    return deco


def closes(env, obs):
    check(obs['end'] == 'closed' and not obs['replies'], 'expected a close without an answer, observed %s' % obs)


def answers(triple, kept=True, status=CHECK_CONDITION):
    def verify(env, obs):
        check(len(obs['replies']) == 1, 'expected one answer, observed %s' % obs)
        r = obs['replies'][0]
        got = sense_summary(bytes.fromhex(r['sense']))
        got = None if got is None else (got['key'], got['asc'], got['ascq'])
        check(r['status'] == status and got == tuple(triple) and r['size'] == 0,
              'expected status 0x%02x sense %x/%02x/%02x, observed %s' % ((status,) + tuple(triple) + (obs,)))
        check(obs['end'] == ('kept' if kept else 'closed'), 'expected the connection %s, observed %s' % ('kept' if kept else 'closed', obs))
    return verify


def no_key_registered(verify_more=None):
    """The rejected PR OUT must not have reached the logical unit."""
    def verify(env, obs):
        if verify_more:
            verify_more(env, obs)
        with Conn(env.socket) as c:
            keys = read_keys(c, env.luns[0].paths[0]['fd'])[2]
            check(KX not in keys, 'the rejected PR OUT registered 0x%x: keys %s' % (KX, hexkeys(keys)))
            reset_lun(c, env.luns[0])
    return verify


def fresh_lun(env):
    if env.san:
        with Conn(env.socket) as c:
            reset_lun(c, env.luns[0])


@violation('a CDB without an fd closes the connection')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [])
    return 1, closes


@violation('a CDB with two fds closes the connection')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.rw_fd, env.alien_fd])
    return 1, closes


@violation('opcode 0x12 (INQUIRY) closes the connection')
def _(env, c):
    c.send_cdb(bytes([0x12, 0, 0, 0, 36, 0]), [env.rw_fd])
    return 1, closes


@violation('PR OUT PARAMETER LIST LENGTH 8193 (bytes 7-8) closes before the data is read')
def _(env, c):
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 8193), [env.rw_fd])   # no data: QEMU never gets to send it
    return 1, closes


@violation('PR OUT PARAMETER LIST LENGTH 0x00010018 (bytes 5-6 non-zero)')
def _(env, c):
    # QEMU's client sizes the data by bytes 7-8 (24 bytes) and sends it. prmux reads bytes 5-8 per
    # SPC-4 6.16.1 (65560 > 8192) and closes; qemu-pr-helper forwards the CDB with 24 bytes of data.
    fresh_lun(env)
    cdb = bytearray(pr_out_cdb(REGISTER, 0, 0, 24))
    cdb[5], cdb[6] = 0x00, 0x01
    c.send_cdb(cdb, [env.rw_fd])
    c.send_tolerant(basic_parameters(sa_key=KX))
    return 1, no_key_registered(closes)


@violation('PR IN ALLOCATION LENGTH 8193 closes the connection')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, 8193), [env.rw_fd])
    return 1, closes


@violation('PR IN ALLOCATION LENGTH 0 is passed to the device')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, 0), [env.rw_fd])
    # LIO 5: READ KEYS with ALLOCATION LENGTH 0 is INVALID FIELD IN CDB (SPC-4: GOOD, no data).
    return 1, answers(INVALID_FIELD_IN_CDB)


@violation('PR IN ALLOCATION LENGTH 8192 is accepted')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, 8192), [env.rw_fd])

    def verify(env, obs):
        check(len(obs['replies']) == 1 and obs['replies'][0]['status'] == GOOD and obs['end'] == 'kept', 'observed %s' % obs)
    return 1, verify


@violation('PR OUT PARAMETER LIST LENGTH 8192 is accepted (REGISTER: LIO says 5/1A/00 for length != 24)')
def _(env, c):
    fresh_lun(env)
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 8192), [env.rw_fd])
    c.send_tolerant(basic_parameters(sa_key=KX).ljust(8192, b'\0'))
    # LIO-BEHAVIOUR: PARAMETER LIST LENGTH 0, 23, 25, 32 on REGISTER -> 5/1A/00; 8192 likewise.
    return 1, no_key_registered(answers(PARAM_LIST_LENGTH_ERROR))


@violation('PR OUT with an 8-byte parameter list: 5/1A/00 and the connection is kept')
def _(env, c):
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 8), [env.rw_fd])
    c.send(b'\0' * 8)
    return 1, answers(PARAM_LIST_LENGTH_ERROR)


@violation('PR OUT with PARAMETER LIST LENGTH 0: 5/1A/00 and the connection is kept')
def _(env, c):
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 0), [env.rw_fd])
    return 1, answers(PARAM_LIST_LENGTH_ERROR)


@violation('PR OUT on an O_RDONLY fd: 5/20/00 and the connection is kept')
def _(env, c):
    fresh_lun(env)
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.ro_fd])
    c.send(basic_parameters(sa_key=KX))
    return 1, no_key_registered(answers(INVALID_COMMAND_OPCODE))


@violation('PR OUT on an O_RDONLY fd with an 8-byte parameter list: the read-only check comes first, 5/20/00')
def _(env, c):
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 8), [env.ro_fd])
    c.send(b'\0' * 8)
    return 1, answers(INVALID_COMMAND_OPCODE)


@violation('PR IN on an O_RDONLY fd is served')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.ro_fd])

    def verify(env, obs):
        check(len(obs['replies']) == 1 and obs['replies'][0]['status'] == GOOD and obs['end'] == 'kept', 'observed %s' % obs)
    return 1, verify


def non_san_fd(label, opener):
    @violation('PR IN with %s: CHECK CONDITION 0B/00/06 (the failed SG_IO), connection kept' % label)
    def _(env, c):
        fd, cleanup = opener(env)
        try:
            c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [fd])
        finally:
            cleanup()
        return 1, answers(SGIO_FAILED)


def _regular(env):
    return env.alien_fd, lambda: None


def _devnull(env):
    fd = os.open('/dev/null', os.O_RDWR)
    return fd, lambda: os.close(fd)


def _pipe(env):
    r, w = os.pipe()
    return r, lambda: (os.close(r), os.close(w))


def _socket(env):
    a, b = socket.socketpair()
    return a.fileno(), lambda: (a.close(), b.close())


def _directory(env):
    fd = os.open(env.scratch, os.O_RDONLY | os.O_DIRECTORY)
    return fd, lambda: os.close(fd)


non_san_fd('a regular file not from the SAN', _regular)
non_san_fd('/dev/null', _devnull)
non_san_fd('a pipe', _pipe)
non_san_fd('a socket', _socket)
non_san_fd('a directory', _directory)


@violation('PR OUT REGISTER with a regular file not from the SAN: CHECK CONDITION 0B/00/06, connection kept')
def _(env, c):
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.alien_fd])
    c.send(basic_parameters(sa_key=KX))
    return 1, answers(SGIO_FAILED)


@violation('PR IN with an invalid service action (1Fh) is passed to the device')
def _(env, c):
    c.send_cdb(pr_in_cdb(0x1F, MAX_DATA), [env.rw_fd])
    # LIO-BEHAVIOUR: invalid service actions -> 5/24/00 (on a regular file the SG_IO fails: 0B/00/06).
    return 1, answers(INVALID_FIELD_IN_CDB)


@violation('a truncated CDB, then the client closes')
def _(env, c):
    c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA)[:8], [env.rw_fd])
    c.close()
    return 0, None


@violation('a PR OUT with short parameter data, then the client closes')
def _(env, c):
    fresh_lun(env)
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.rw_fd])
    c.send(basic_parameters(sa_key=KX)[:10])
    c.close()
    return 0, no_key_registered()


@violation('two commands back to back without waiting: both answered, in order')
def _(env, c):
    if env.san:
        fresh_lun(env)
        # REGISTER then READ KEYS: the second answer shows the key only if they ran in order.
        c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.rw_fd])
        c.send(basic_parameters(sa_key=KX))
        c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.rw_fd])

        def verify(env, obs):
            rs = obs['replies']
            check(len(rs) == 2 and obs['end'] == 'kept', 'observed %s' % obs)
            check(rs[0]['status'] == GOOD and rs[0]['size'] == 0, 'first answer %s' % rs[0])
            keys = decode_read_keys(bytes.fromhex(rs[1]['data']))[2] if rs[1]['status'] == GOOD else None
            check(keys == [KX], 'second answer %s (keys %s)' % (rs[1], keys))
            with Conn(env.socket) as c2:
                reset_lun(c2, env.luns[0])
        return 2, verify
    # Without a SAN: a read-only PR OUT (5/20/00) then a PR IN on a regular file (0B/00/06).
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.ro_fd])
    c.send(basic_parameters(sa_key=KX))
    c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.alien_fd])
    return 2, None


@violation('an fd attached to the PR OUT parameter data instead of the CDB')
def _(env, c):
    # QEMU never does this. qemu-pr-helper reads the data without asking for fds (the kernel drops
    # the extra fd) and serves the command; prmux cannot tell which command such an fd belongs to
    # and closes the connection once the requests before it are answered.
    fresh_lun(env)
    c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.rw_fd])
    c.send_tolerant(basic_parameters(sa_key=0), [env.alien_fd])

    def verify(env, obs):
        check(obs['end'] == 'closed', 'expected the connection closed, observed %s' % obs)
        check(all(r['status'] == GOOD for r in obs['replies']) and len(obs['replies']) <= 1, 'observed %s' % obs)
    return 1, verify


# Concurrency ---------------------------------------------------------------------------------------

@case('concurrency: 64 connections at once, each a mix of commands on two LUNs, all answered correctly')
def _(env):
    l0, l1 = env.luns[0], env.luns[1]
    a, b = l0.paths[0]['fd'], l0.paths[1]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, l0)
        reset_lun(c, l1)
        register(c, a, KA)
        register(c, b, KB)
        expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE_REGISTRANTS_ONLY))
        register(c, l1.paths[0]['fd'], KC)
        g0 = read_keys(c, a)[0]
        g1 = read_keys(c, l1.paths[1]['fd'])[0]
    pc = l1.paths[0]

    # Every command leaves the state as it is, so each answer is known whatever the interleaving.
    def steps():
        return [
            ('READ KEYS LUN0/A', lambda c: check(read_keys(c, a) == (g0, 16, [KA, KB]), 'got %s' % (read_keys(c, a),))),
            ('READ RESERVATION LUN0/B', lambda c: check(read_reservation(c, b) == {
                'generation': g0, 'additional': 16, 'key': KA, 'scope': 0, 'type': WRITE_EXCLUSIVE_REGISTRANTS_ONLY}, 'got %s' % read_reservation(c, b))),
            ('READ KEYS LUN1/path2', lambda c: check(read_keys(c, l1.paths[1]['fd']) == (g1, 8, [KC]), 'got %s' % (read_keys(c, l1.paths[1]['fd']),))),
            ('READ KEYS LUN1/map', lambda c: check(read_keys(c, l1.map_fd)[2] == [KC], 'got %s' % (read_keys(c, l1.map_fd),))),
            ('REPORT CAPABILITIES LUN0/map', lambda c: check(expect_good(c.pr_in(l0.map_fd, REPORT_CAPABILITIES)).data.hex() == '00081d90ea010000', 'caps')),
            ('READ FULL STATUS LUN1/path1', lambda c: check(
                [(d['key'], d['rtpi'], d['transport_id']) for d in decode_full_status(expect_good(c.pr_in(pc['fd'], READ_FULL_STATUS)).data)[2]]
                == [(KC, pc['relativeTargetPortId'], transport_id_from_text(pc['transportId']))], 'full status')),
            ('RESERVE again by the holder', lambda c: expect_good(c.pr_out(a, RESERVE, basic_parameters(key=KA), pr_type=WRITE_EXCLUSIVE_REGISTRANTS_ONLY))),
            ('RESERVE by the other nexus', lambda c: expect(c.pr_out(b, RESERVE, basic_parameters(key=KB), pr_type=WRITE_EXCLUSIVE_REGISTRANTS_ONLY), RESERVATION_CONFLICT)),
            ('REGISTER with a wrong key', lambda c: expect(c.pr_out(b, REGISTER, basic_parameters(key=0xBAD, sa_key=KX)), RESERVATION_CONFLICT)),
            ('PR OUT, 8-byte parameter list', lambda c: expect(c.pr_out(a, REGISTER, b'\0' * 8), CHECK_CONDITION, PARAM_LIST_LENGTH_ERROR)),
            ('PR OUT on O_RDONLY', lambda c: expect(c.pr_out(l0.paths[1]['ro_fd'], REGISTER, basic_parameters(sa_key=KX)), CHECK_CONDITION, INVALID_COMMAND_OPCODE)),
            ('regular file', lambda c: expect(c.pr_in(env.alien_fd, READ_KEYS), CHECK_CONDITION, SGIO_FAILED)),
        ]

    n = 64
    errors = []
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    done = [0]

    def worker(i):
        try:
            with Conn(env.socket) as c:
                barrier.wait(timeout=30)
                s = steps()
                s = s[i % len(s):] + s[:i % len(s)]   # each connection starts at another command
                for name, fn in s + s:
                    try:
                        fn(c)
                    except CaseFailure as e:
                        raise CaseFailure('%s: %s' % (name, e))
            with lock:
                done[0] += 1
        except Exception as e:  # noqa: BLE001 - collected and reported
            with lock:
                errors.append('connection %d: %s: %s' % (i, type(e).__name__, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not errors, '%d connections failed: %s' % (len(errors), errors[:5]))
    check(done[0] == n, 'only %d of %d connections finished' % (done[0], n))
    with Conn(env.socket) as c:
        check(read_keys(c, a) == (g0, 16, [KA, KB]), 'state changed: %s' % (read_keys(c, a),))
        reset_lun(c, l0)
        reset_lun(c, l1)
    return {'connections': n, 'commandsEach': 24}


@case('concurrency: a slow path does not delay commands on other connections')
def _(env):
    l0 = env.luns[0]
    slow_dev, slow_fd = l0.paths[1]['dev'], l0.paths[1]['fd']
    fast_fd = l0.paths[0]['fd']
    with Conn(env.socket) as c:
        reset_lun(c, l0)
        register(c, fast_fd, KA)
    env.ctl('path', 'latency', env.host, slow_dev, '3000')
    try:
        with Conn(env.socket) as slow, Conn(env.socket) as fast:
            slow.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [slow_fd])
            # Give prmux a moment to hand the slow command to the SAN first, so that a helper that
            # runs commands one at a time would make the fast ones below wait behind it. (The pause
            # only makes the check sharper; nothing is asserted about durations.)
            time.sleep(0.2)
            answered = 0
            for _ in range(10):
                check(read_keys(fast, fast_fd)[2] == [KA], 'fast path READ KEYS')
                answered += 1
            # Ordering, not timing: the slow command is still outstanding after the fast ones.
            pending = not slow.readable_now()
            r = slow.read_reply()
            check_reply_size(pr_in_cdb(READ_KEYS, MAX_DATA), r)
            expect_good(r, 'the slow command')
            check(decode_read_keys(r.data)[2] == [KA], 'slow READ KEYS %s' % r.data.hex())
            check(pending, 'the slow command was answered before the %d fast ones: they waited for it' % answered)
    finally:
        env.ctl('path', 'latency', env.host, slow_dev, '0')
    with Conn(env.socket) as c:
        reset_lun(c, l0)


# Reconnects / idle ---------------------------------------------------------------------------------

@case('reconnects: 200 connect/negotiate/close cycles, every 10th with a command', ('san', 'protocol'))
def _(env):
    for i in range(200):
        with Conn(env.socket) as c:
            if i % 10 == 0:
                env.probe(c)
    with Conn(env.socket) as c:
        env.probe(c)


@case('reconnects: clients that vanish before negotiating, mid-CDB, mid-data and mid-reply-read', ('san', 'protocol'))
def _(env):
    with Conn(env.socket) as witness:
        # Before reading the feature word.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(env.socket)
        s.close()
        # Half a feature word.
        with Conn(env.socket, negotiate=False) as c:
            c.recv_exact(4)
            c.send(b'\0\0')
        # Mid-CDB with the fd attached.
        with Conn(env.socket) as c:
            c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA)[:5], [env.rw_fd])
        # Mid parameter data.
        with Conn(env.socket) as c:
            c.send_cdb(pr_out_cdb(REGISTER, 0, 0, 24), [env.alien_fd])
            c.send(b'\0' * 12)
        # A whole command, gone before the answer is read.
        with Conn(env.socket) as c:
            c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.rw_fd])
        # Many commands queued, then gone.
        with Conn(env.socket) as c:
            for _ in range(8):
                c.send_cdb(pr_in_cdb(READ_KEYS, MAX_DATA), [env.rw_fd])
        others_still_served(env, witness)
        with Conn(env.socket) as c:
            for _ in range(3):
                env.probe(c)


@case('idle: a negotiated connection left idle for 3 s is still served', ('san', 'protocol'))
def _(env):
    with Conn(env.socket) as c:
        env.probe(c)
        time.sleep(3)
        env.probe(c)


# ---- runner -------------------------------------------------------------------------------------

LONG_IDLE = 'idle: a connection negotiated before every case is still served after all of them'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--socket')
    p.add_argument('--san-dir')
    p.add_argument('--host', default='host1')
    p.add_argument('--protocol-only', action='store_true')
    p.add_argument('--scratch', help='directory for scratch files (default: a new temp dir)')
    p.add_argument('--only', help='run only the cases whose name contains this')
    p.add_argument('--list', action='store_true')
    args = p.parse_args(argv)
    mode = 'protocol' if args.protocol_only else 'san'
    selected = [(n, fn) for n, fn, modes in CASES if mode in modes and (not args.only or args.only in n)]
    if args.list:
        print(json.dumps([n for n, _ in selected] + [LONG_IDLE]))
        return 0
    if not args.socket or (mode == 'san' and not args.san_dir):
        p.error('--socket and (--san-dir or --protocol-only) are required')

    env = Env(args)
    # A connection negotiated now and used only after every case: idle for the whole run.
    long_idle = Conn(args.socket)
    failed = []
    results = []

    def emit(name, ok, detail, observation=None):
        line = {'name': name, 'ok': ok, 'detail': detail}
        if observation is not None:
            line['observation'] = observation
        print(json.dumps(line), flush=True)
        results.append(name)
        if not ok:
            failed.append(name)

    for name, fn in selected:
        try:
            obs = fn(env)
            emit(name, True, '', obs if mode == 'protocol' else None)
        except CaseFailure as e:
            emit(name, False, str(e))
        except (Closed, Hung) as e:
            emit(name, False, '%s: %s' % (type(e).__name__, e))
        except Exception as e:  # noqa: BLE001 - a broken case is a failed case
            emit(name, False, '%s: %s\n%s' % (type(e).__name__, e, traceback.format_exc()))
    try:
        env.probe(long_idle)
        emit(LONG_IDLE, True, '')
    except Exception as e:  # noqa: BLE001
        emit(LONG_IDLE, False, '%s: %s' % (type(e).__name__, e))
    long_idle.close()
    for fd in env.owned_fds:
        os.close(fd)
    for lun in getattr(env, 'luns', []):
        os.close(lun.map_fd)
    if env.own_scratch:
        shutil.rmtree(env.scratch, ignore_errors=True)
    print(json.dumps({'summary': True, 'total': len(results), 'passed': len(results) - len(failed),
                      'failed': len(failed), 'failedNames': failed}), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
