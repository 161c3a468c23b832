#!/usr/bin/env python3
"""A pr-manager-helper client that speaks the protocol the way QEMU's scsi/pr-manager-helper.c does.

Connection: read the helper's 4-byte feature word, answer 4 bytes of 0.
Per command: send the CDB zero-padded to 16 bytes in ONE sendmsg() carrying exactly one fd
(SCM_RIGHTS, socket.send_fds); for PERSISTENT RESERVE OUT then send the parameter list, whose
length QEMU takes from scsi_cdb_xfer() (CDB bytes 7-8); read 4 bytes status, 4 bytes payload
size, 96 bytes sense, then the payload. All integers big-endian.

Library use:
    with PrHelperClient('/run/prmux.sock') as c:
        status, sense, data = c.pr_in(fd, service_action=0, allocation_length=8192)

Command line (prints one JSON object per command):
    prh_client.py --socket PATH --device /dev/sdX read-keys
    prh_client.py --socket PATH --device /dev/sdX register --sa-key 0x123
    prh_client.py --socket PATH --device /dev/sdX raw --cdb 5e00000000000000ff00 [--data HEX]
"""

import argparse
import json
import os
import socket
import struct
import sys

PR_IN = 0x5E
PR_OUT = 0x5F
CDB_SIZE = 16
SENSE_SIZE = 96
MAX_DATA = 8192

PR_IN_ACTIONS = {'read-keys': 0, 'read-reservation': 1, 'report-capabilities': 2, 'read-full-status': 3}
PR_OUT_ACTIONS = {
    'register': 0, 'reserve': 1, 'release': 2, 'clear': 3, 'preempt': 4, 'preempt-and-abort': 5,
    'register-and-ignore': 6, 'register-and-move': 7, 'replace-lost-reservation': 8,
}


class HelperClosed(Exception):
    """The helper closed the connection (QEMU turns this into LUN COMMUNICATION FAILURE)."""


def scsi_cdb_xfer(cdb):
    """QEMU's scsi_cdb_xfer() for the group 2 CDBs used here: bytes 7-8."""
    return (cdb[7] << 8) | cdb[8]


def pr_in_cdb(service_action, allocation_length):
    cdb = bytearray(CDB_SIZE)
    cdb[0] = PR_IN
    cdb[1] = service_action & 0x1F
    struct.pack_into('>H', cdb, 7, allocation_length)
    return bytes(cdb)


def pr_out_cdb(service_action, scope, pr_type, parameter_list_length):
    cdb = bytearray(CDB_SIZE)
    cdb[0] = PR_OUT
    cdb[1] = service_action & 0x1F
    cdb[2] = ((scope & 0xF) << 4) | (pr_type & 0xF)
    struct.pack_into('>I', cdb, 5, parameter_list_length)
    return bytes(cdb)


def basic_parameters(key=0, sa_key=0, aptpl=False, all_tg_pt=False, spec_i_pt=False):
    """The 24-byte basic PR OUT parameter list (SPC-4 6.16.3)."""
    flags = (0x08 if spec_i_pt else 0) | (0x04 if all_tg_pt else 0) | (0x01 if aptpl else 0)
    return struct.pack('>QQ4xBxH', key, sa_key, flags, 0)



def sas_transport_id(address):
    """A SAS TransportID (SPC-4 7.6.4.4): protocol id 6, format 0, the 8-byte SAS address, 24 bytes."""
    return struct.pack('>B3xQ12x', 0x06, address)


def transport_id_from_text(text):
    """'sas:0x5001405f00000001' (the form topology.json uses) -> the 24-byte TransportID."""
    proto, _, value = text.partition(':')
    if proto != 'sas':
        raise ValueError('only SAS TransportIDs are supported here, not %r' % text)
    return sas_transport_id(int(value, 16))


def register_and_move_parameters(key, sa_key, relative_target_port_id, transport_id, unreg=False, aptpl=False):
    """The REGISTER AND MOVE parameter list (SPC-4 6.16.4): 24-byte header, then one TransportID."""
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return struct.pack('>QQxBHI', key, sa_key, flags, relative_target_port_id, len(transport_id)) + bytes(transport_id)


def decode_read_keys(data):
    """READ KEYS data (SPC-4 6.15.2) -> (PRGENERATION, ADDITIONAL LENGTH, keys present in `data`)."""
    generation, additional = struct.unpack_from('>II', data, 0)
    keys = [struct.unpack_from('>Q', data, off)[0] for off in range(8, min(len(data), 8 + additional) - 7, 8)]
    return generation, additional, keys


def decode_read_reservation(data):
    """READ RESERVATION data (SPC-4 6.15.3) -> dict; key/scope/type only when the descriptor is there."""
    generation, additional = struct.unpack_from('>II', data, 0)
    out = {'generation': generation, 'additional': additional}
    if additional >= 16 and len(data) >= 22:
        out['key'] = struct.unpack_from('>Q', data, 8)[0]
        out['scope'] = data[21] >> 4
        out['type'] = data[21] & 0x0F
    return out


def decode_full_status(data):
    """READ FULL STATUS data (SPC-4 6.15.5) -> (PRGENERATION, ADDITIONAL LENGTH, complete descriptors)."""
    generation, additional = struct.unpack_from('>II', data, 0)
    descriptors = []
    off = 8
    end = min(len(data), 8 + additional)
    while off + 24 <= end:
        key, = struct.unpack_from('>Q', data, off)
        flags, scope_type = data[off + 12], data[off + 13]
        rtpi, tid_len = struct.unpack_from('>HI', data, off + 18)
        if off + 24 + tid_len > end:
            break
        descriptors.append({
            'key': key, 'all_tg_pt': bool(flags & 0x02), 'holder': bool(flags & 0x01),
            'scope': scope_type >> 4, 'type': scope_type & 0x0F, 'rtpi': rtpi,
            'transport_id': bytes(data[off + 24:off + 24 + tid_len]),
        })
        off += 24 + tid_len
    return generation, additional, descriptors

class PrHelperClient:
    def __init__(self, path, timeout=None):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.helper_features = struct.unpack('>I', self._read_exact(4))[0]
        self.sock.sendall(struct.pack('>I', 0))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise HelperClosed('the helper closed the connection')
            buf += chunk
        return bytes(buf)

    def send_cdb(self, cdb, fds):
        """The CDB in one sendmsg() with `fds` attached (QEMU always attaches exactly one)."""
        cdb = bytes(cdb).ljust(CDB_SIZE, b'\0')
        if fds:
            sent = socket.send_fds(self.sock, [cdb], list(fds))
        else:
            sent = self.sock.send(cdb)
        if sent < len(cdb):
            self.sock.sendall(cdb[sent:])

    def read_reply(self):
        header = self._read_exact(8 + SENSE_SIZE)
        status, size = struct.unpack('>II', header[:8])
        if size > MAX_DATA:
            raise ValueError('payload size %d exceeds %d' % (size, MAX_DATA))
        return status, header[8:], self._read_exact(size)

    def command(self, cdb, fd, data=b''):
        """One command exactly as QEMU sends it: CDB + fd, PR OUT data, then the reply."""
        cdb = bytes(cdb).ljust(CDB_SIZE, b'\0')
        self.send_cdb(cdb, [fd])
        if cdb[0] == PR_OUT:
            length = scsi_cdb_xfer(cdb)
            self.sock.sendall(bytes(data)[:length].ljust(length, b'\0'))
        return self.read_reply()

    def pr_in(self, fd, service_action, allocation_length=MAX_DATA):
        return self.command(pr_in_cdb(service_action, allocation_length), fd)

    def pr_out(self, fd, service_action, parameters, scope=0, pr_type=0):
        return self.command(pr_out_cdb(service_action, scope, pr_type, len(parameters)), fd, parameters)


def sense_summary(sense):
    if not sense or sense[0] & 0x7F not in (0x70, 0x71, 0x72, 0x73):
        return None
    if sense[0] & 0x7F in (0x70, 0x71):
        return {'key': sense[2] & 0xF, 'asc': sense[12], 'ascq': sense[13]}
    return {'key': sense[1] & 0xF, 'asc': sense[2], 'ascq': sense[3]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--socket', required=True)
    p.add_argument('--device', required=True, help='file or device whose fd is sent with the CDB')
    p.add_argument('--read-only', action='store_true', help='open the device O_RDONLY')
    p.add_argument('--timeout', type=float, default=30.0)
    sub = p.add_subparsers(dest='cmd', required=True)
    for name in PR_IN_ACTIONS:
        s = sub.add_parser(name)
        s.add_argument('--alloc', type=lambda v: int(v, 0), default=MAX_DATA)
    for name in PR_OUT_ACTIONS:
        s = sub.add_parser(name)
        s.add_argument('--key', type=lambda v: int(v, 0), default=0)
        s.add_argument('--sa-key', type=lambda v: int(v, 0), default=0)
        s.add_argument('--type', type=lambda v: int(v, 0), default=0)
        s.add_argument('--aptpl', action='store_true')
    raw = sub.add_parser('raw')
    raw.add_argument('--cdb', required=True, help='hex')
    raw.add_argument('--data', default='', help='hex PR OUT parameter list')
    args = p.parse_args(argv)

    fd = os.open(args.device, os.O_RDONLY if args.read_only else os.O_RDWR)
    try:
        with PrHelperClient(args.socket, timeout=args.timeout) as c:
            if args.cmd in PR_IN_ACTIONS:
                status, sense, data = c.pr_in(fd, PR_IN_ACTIONS[args.cmd], args.alloc)
            elif args.cmd in PR_OUT_ACTIONS:
                params = basic_parameters(args.key, args.sa_key, aptpl=args.aptpl)
                status, sense, data = c.pr_out(fd, PR_OUT_ACTIONS[args.cmd], params, pr_type=args.type)
            else:
                status, sense, data = c.command(bytes.fromhex(args.cdb), fd, bytes.fromhex(args.data))
    except HelperClosed as e:
        print(json.dumps({'error': 'helper-closed', 'message': str(e)}))
        return 3
    finally:
        os.close(fd)
    print(json.dumps({'status': status, 'sense': sense_summary(sense), 'senseHex': sense.rstrip(b'\0').hex(), 'data': data.hex()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
