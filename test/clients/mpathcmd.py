#!/usr/bin/env python3
"""Independent libmpathcmd client: sends one multipathd CLI command over a Unix socket with
libmpathcmd framing (native-endian size_t length that counts the trailing NUL, then the command)
and prints the reply. Usage: mpathcmd.py SOCKET COMMAND..."""
import socket
import struct
import sys


def recv_exact(sock, n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError('connection closed after %d of %d bytes' % (len(buf), n))
        buf += chunk
    return buf


def command(path, text, timeout=10.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    try:
        body = text.encode() + b'\0'
        sock.sendall(struct.pack('@N', len(body)) + body)
        (length,) = struct.unpack('@N', recv_exact(sock, struct.calcsize('@N')))
        reply = recv_exact(sock, length)
        return reply.rstrip(b'\0').decode()
    finally:
        sock.close()


if __name__ == '__main__':
    sys.stdout.write(command(sys.argv[1], ' '.join(sys.argv[2:])))
