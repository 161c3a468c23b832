// Unix stream sockets with SCM_RIGHTS, through koffi (already a dependency for SG_IO): libc's
// socket/bind/listen/accept4/connect/recvmsg/sendmsg called synchronously on non-blocking fds, and
// koffi's libuv poll handle for readiness. Node's `net` cannot receive ancillary data, and this
// needs no compiled addon of our own (see the report in src/socket/README-fd-passing.md).
//
// Linux only (struct layouts below are the LP64 ones: x86-64, aarch64). Every fd this module
// creates or receives is close-on-exec (SOCK_CLOEXEC, MSG_CMSG_CLOEXEC), so a child process
// prmux spawns never inherits a guest's device fd.

import koffi from 'koffi';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SO_TYPE = 3;
const SO_ACCEPTCONN = 30;
const SO_DOMAIN = 39;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const F_GETFL = 3;
const F_SETFL = 4;
const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;
const SUN_PATH_MAX = 108;
const SHUT_WR = 1;

export const Errno = koffi.os.errno as Readonly<Record<string, number>>;
const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(Errno)) if (!errnoNames.has(value)) errnoNames.set(value, name);
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** Most fds one recvmsg() accepts; more and the kernel sets MSG_CTRUNC and closes the rest. */
export const MAX_FDS_PER_READ = 8;
/** Largest read; callers ask for less (the session's read hint). */
export const MAX_READ = 64 * 1024;

// struct msghdr (LP64): name 0, namelen 8, iov 16, iovlen 24, control 32, controllen 40, flags 48; 56 bytes.
// struct iovec: base 0, len 8; 16 bytes. struct cmsghdr: len 0 (size_t), level 8, type 12, data 16.
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HEADER = 16;
const CONTROL_SIZE = CMSG_HEADER + ((MAX_FDS_PER_READ * 4 + 7) & ~7);

const libc = koffi.load('libc.so.6');
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *len, int flags)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t len)'),
  recvmsg: libc.func('intptr_t recvmsg(int fd, void *msg, int flags)'),
  sendmsg: libc.func('intptr_t sendmsg(int fd, void *msg, int flags)'),
  close: libc.func('int close(int fd)'),
  shutdown: libc.func('int shutdown(int fd, int how)'),
  fcntl: libc.func('int fcntl(int fd, int cmd, ...)'),
  dup2: libc.func('int dup2(int oldfd, int newfd)'),
  open: libc.func('int open(const char *path, int flags, ...)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, _Out_ void *value, _Inout_ uint32_t *len)'),
};

/** A failed system call, shaped like Node's system errors (`code` is the errno name). */
export class SyscallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail?: string) {
    super(`Cannot ${syscall}${detail !== undefined ? ` ${detail}` : ''}: ${errnoName(errno)}`);
    this.name = 'SyscallError';
    this.code = errnoName(errno);
    this.errno = errno;
    this.syscall = syscall;
  }
}

function errno(): number {
  return koffi.errno();
}

/**
 * One scratch area for every recvmsg()/sendmsg() of the process: calls are synchronous on the main
 * thread, and callers copy what they keep before the next call. Allocated once, never freed.
 */
class Scratch {
  readonly base: bigint;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly msgOff = 0;
  readonly iovOff = MSGHDR_SIZE;
  readonly ctlOff = MSGHDR_SIZE + IOVEC_SIZE;
  readonly dataOff = MSGHDR_SIZE + IOVEC_SIZE + CONTROL_SIZE;

  constructor() {
    const size = this.dataOff + MAX_READ;
    this.base = koffi.alloc('uint8_t', size) as unknown as bigint;
    this.bytes = new Uint8Array(koffi.view(this.base, size));
    this.view = new DataView(this.bytes.buffer);
  }

  prepare(dataLength: number, controlLength: number): void {
    const v = this.view;
    this.bytes.fill(0, 0, this.dataOff);
    v.setBigUint64(this.msgOff + 16, this.base + BigInt(this.iovOff), true);
    v.setBigUint64(this.msgOff + 24, 1n, true);
    if (controlLength > 0) {
      v.setBigUint64(this.msgOff + 32, this.base + BigInt(this.ctlOff), true);
      v.setBigUint64(this.msgOff + 40, BigInt(controlLength), true);
    }
    v.setBigUint64(this.iovOff, this.base + BigInt(this.dataOff), true);
    v.setBigUint64(this.iovOff + 8, BigInt(dataLength), true);
  }
}

let scratch: Scratch | null = null;
function getScratch(): Scratch {
  scratch ??= new Scratch();
  return scratch;
}

export type RecvResult =
  | { readonly kind: 'data'; /** Valid until the next call into this module. */ readonly bytes: Uint8Array; readonly fds: number[]; readonly fdsTruncated: boolean }
  | { readonly kind: 'again' }
  | { readonly kind: 'eof' }
  | { readonly kind: 'error'; readonly errno: number };

/** Non-blocking recvmsg() of at most `maxBytes`, collecting SCM_RIGHTS fds (close-on-exec). */
export function recvWithFds(fd: number, maxBytes: number): RecvResult {
  const s = getScratch();
  const want = Math.max(1, Math.min(maxBytes, MAX_READ));
  s.prepare(want, CONTROL_SIZE);
  let n: number;
  for (;;) {
    n = Number(c.recvmsg(fd, s.base + BigInt(s.msgOff), MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
    if (n >= 0) break;
    const e = errno();
    if (e === Errno['EINTR']) continue;
    if (e === Errno['EAGAIN'] || e === Errno['EWOULDBLOCK']) return { kind: 'again' };
    return { kind: 'error', errno: e };
  }
  const fds = readRights(s);
  const flags = s.view.getInt32(s.msgOff + 48, true);
  if (n === 0 && fds.length === 0) return { kind: 'eof' };
  return { kind: 'data', bytes: s.bytes.subarray(s.dataOff, s.dataOff + n), fds, fdsTruncated: (flags & MSG_CTRUNC) !== 0 };
}

function readRights(s: Scratch): number[] {
  const v = s.view;
  const fds: number[] = [];
  const controlLength = Number(v.getBigUint64(s.msgOff + 40, true));
  let off = 0;
  while (off + CMSG_HEADER <= controlLength) {
    const len = Number(v.getBigUint64(s.ctlOff + off, true));
    if (len < CMSG_HEADER) break;
    const level = v.getInt32(s.ctlOff + off + 8, true);
    const type = v.getInt32(s.ctlOff + off + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = Math.floor((len - CMSG_HEADER) / 4);
      for (let i = 0; i < count; i++) fds.push(v.getInt32(s.ctlOff + off + CMSG_HEADER + 4 * i, true));
    }
    off += (len + 7) & ~7;
  }
  return fds;
}

/**
 * Non-blocking sendmsg() of `bytes` with `fds` attached (SCM_RIGHTS). Returns the bytes sent
 * (the fds go with the first byte), or -errno (-EAGAIN when the socket buffer is full).
 */
export function sendWithFds(fd: number, bytes: Uint8Array, fds: readonly number[] = []): number {
  if (fds.length > MAX_FDS_PER_READ) throw new RangeError(`Cannot send ${fds.length} fds: at most ${MAX_FDS_PER_READ}`);
  const s = getScratch();
  const len = Math.min(bytes.length, MAX_READ);
  const controlLength = fds.length > 0 ? CMSG_HEADER + ((fds.length * 4 + 7) & ~7) : 0;
  s.prepare(len, controlLength);
  s.bytes.set(bytes.subarray(0, len), s.dataOff);
  if (fds.length > 0) {
    s.view.setBigUint64(s.ctlOff, BigInt(CMSG_HEADER + fds.length * 4), true);
    s.view.setInt32(s.ctlOff + 8, SOL_SOCKET, true);
    s.view.setInt32(s.ctlOff + 12, SCM_RIGHTS, true);
    fds.forEach((f, i) => s.view.setInt32(s.ctlOff + CMSG_HEADER + 4 * i, f, true));
  }
  for (;;) {
    const n = Number(c.sendmsg(fd, s.base + BigInt(s.msgOff), MSG_DONTWAIT | MSG_NOSIGNAL));
    if (n >= 0) return n;
    const e = errno();
    if (e !== Errno['EINTR']) return -e;
  }
}

function sockaddrUn(path: string): Buffer {
  const p = Buffer.from(path, 'utf8');
  if (p.length === 0 || p.length >= SUN_PATH_MAX || p.includes(0)) {
    throw new RangeError(`Cannot use unix socket path ${JSON.stringify(path)}: it must be 1..${SUN_PATH_MAX - 1} bytes without NUL`);
  }
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  return addr;
}

function newSocket(): number {
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError('socket', errno());
  return fd;
}

/**
 * sockaddr_un for an abstract name ("@name" in multipathd's notation): a NUL, then the name, with
 * the address length counting exactly those bytes. A server binds exactly that many bytes
 * (multipathd does), and the kernel matches abstract addresses by length too, so padding the
 * name to sun_path's full size (as Node's net does) never reaches it.
 */
function sockaddrAbstract(name: string): Buffer {
  const p = Buffer.from(name, 'utf8');
  if (p.length === 0 || p.length >= SUN_PATH_MAX - 1) throw new RangeError(`Cannot use abstract socket name ${JSON.stringify(name)}: it must be 1..${SUN_PATH_MAX - 2} bytes`);
  const addr = Buffer.alloc(2 + 1 + p.length);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 3);
  return addr;
}

/** Connect (blocking) to the abstract unix socket `name` with the exact address length; the fd is returned blocking, close-on-exec. */
export function connectUnixAbstract(name: string): number {
  return connectBlocking(sockaddrAbstract(name), `abstract unix socket @${name}`);
}

/** A listening abstract unix socket bound with the exact address length (as multipathd binds), close-on-exec. */
export function listenUnixAbstract(name: string, backlog: number): number {
  return bindAndListen(sockaddrAbstract(name), backlog, `abstract unix socket @${name}`);
}

/** A non-blocking, close-on-exec listening socket bound to `path` (which must not exist). */
export function listenUnix(path: string, backlog: number): number {
  return bindAndListen(sockaddrUn(path), backlog, `unix socket ${path}`);
}

function bindAndListen(addr: Buffer, backlog: number, what: string): number {
  const fd = newSocket();
  if ((c.bind(fd, addr, addr.length) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new SyscallError('bind', e, what);
  }
  if ((c.listen(fd, backlog) as number) < 0) {
    const e = errno();
    c.close(fd);
    throw new SyscallError('listen', e, `on ${what}`);
  }
  return fd;
}

/** accept4() with SOCK_NONBLOCK | SOCK_CLOEXEC: the new fd, or -errno (-EAGAIN: none pending). */
export function acceptConnection(listenFd: number): number {
  for (;;) {
    const fd = c.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
    if (fd >= 0) return fd;
    const e = errno();
    if (e !== Errno['EINTR'] && e !== Errno['ECONNABORTED']) return -e;
  }
}

/** Connect to a unix socket (blocking connect), then make the fd non-blocking. Client side. */
export function connectUnix(path: string): number {
  const fd = connectBlocking(sockaddrUn(path), `unix socket ${path}`);
  setNonBlocking(fd);
  return fd;
}

/** socket() + blocking connect() (EINTR retried); the fd is blocking, close-on-exec. */
function connectBlocking(addr: Buffer, what: string): number {
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new SyscallError('socket', errno());
  for (;;) {
    if ((c.connect(fd, addr, addr.length) as number) === 0) return fd;
    const e = errno();
    if (e === Errno['EINTR']) continue;
    c.close(fd);
    throw new SyscallError('connect', e, `to ${what}`);
  }
}

export function setNonBlocking(fd: number): void {
  const flags = c.fcntl(fd, F_GETFL, 'int', 0) as number;
  if (flags < 0 || (c.fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK) as number) < 0) throw new SyscallError('fcntl', errno(), `O_NONBLOCK on fd ${fd}`);
  const fdFlags = c.fcntl(fd, F_GETFD, 'int', 0) as number;
  if (fdFlags < 0 || (c.fcntl(fd, F_SETFD, 'int', fdFlags | FD_CLOEXEC) as number) < 0) throw new SyscallError('fcntl', errno(), `FD_CLOEXEC on fd ${fd}`);
}

/** fcntl(F_GETFL): the fd's file status flags and access mode (O_ACCMODE = 3). */
export function fdStatusFlags(fd: number): number {
  const flags = c.fcntl(fd, F_GETFL, 'int', 0) as number;
  if (flags < 0) throw new SyscallError('fcntl', errno(), `F_GETFL on fd ${fd}`);
  return flags;
}

/** Set or clear FD_CLOEXEC: an fd handed to an exec'd image (the daemon, the privilege drop) must survive exec. */
export function setCloseOnExec(fd: number, on: boolean): void {
  const flags = c.fcntl(fd, F_GETFD, 'int', 0) as number;
  if (flags < 0 || (c.fcntl(fd, F_SETFD, 'int', on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) as number) < 0) {
    throw new SyscallError('fcntl', errno(), `FD_CLOEXEC on fd ${fd}`);
  }
}

/** Point fds 0, 1 and 2 at /dev/null, as daemon(3) does once the daemon is detached. */
export function redirectStdioToDevNull(): void {
  const O_RDWR = 2;
  const fd = c.open('/dev/null', O_RDWR, 'int', 0) as number;
  if (fd < 0) throw new SyscallError('open', errno(), '/dev/null');
  for (const target of [0, 1, 2]) {
    if (fd !== target && (c.dup2(fd, target) as number) < 0) throw new SyscallError('dup2', errno(), `/dev/null onto fd ${target}`);
  }
  if (fd > 2) c.close(fd);
}

export function shutdownWrite(fd: number): void {
  c.shutdown(fd, SHUT_WR);
}

/** close(2). Returns 0 or -errno; a close is never retried (Linux releases the fd even on EINTR). */
export function closeFd(fd: number): number {
  return (c.close(fd) as number) < 0 ? -errno() : 0;
}

function intSockopt(fd: number, name: number): number {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  if ((c.getsockopt(fd, SOL_SOCKET, name, value, len) as number) < 0) throw new SyscallError('getsockopt', errno(), `on fd ${fd}`);
  return value[0]!;
}

/** Whether `fd` is a listening unix stream socket (as systemd socket activation hands over). */
export function isListeningUnixStream(fd: number): boolean {
  return intSockopt(fd, SO_DOMAIN) === AF_UNIX && intSockopt(fd, SO_TYPE) === SOCK_STREAM && intSockopt(fd, SO_ACCEPTCONN) === 1;
}

export interface PollEvents {
  readonly readable: boolean;
  readonly writable: boolean;
  readonly disconnect: boolean;
}

export interface PollHandle {
  start(opts: { readable?: boolean; writable?: boolean; disconnect?: boolean }, cb: (status: number, ev: PollEvents) => void): void;
  stop(): void;
  close(): void;
}

/**
 * A libuv poll handle on `fd` (koffi.node.poll). koffi swallows exceptions thrown by the callback,
 * so callers must catch their own. Close the handle before closing the fd (libuv's rule).
 */
export function pollFd(fd: number, opts: { readable?: boolean; writable?: boolean; disconnect?: boolean }, cb: (status: number, ev: PollEvents) => void): PollHandle {
  const h = (koffi as unknown as { node: { poll(fd: number, o: object, cb: (s: number, e: PollEvents) => void): PollHandle | null } }).node.poll(fd, opts, cb);
  if (h === null) throw new Error(`Cannot poll fd ${fd}: koffi returned no handle`);
  return h;
}
