// `prmux serve -u USER -g GROUP`: after listening, become USER/GROUP keeping only the capabilities
// the helper needs, as qemu-pr-helper's drop_privileges() does with libcap-ng (clear every
// capability, keep CAP_SYS_RAWIO for SG_IO and CAP_SYS_ADMIN for device-mapper ioctls in
// effective+permitted, change uid/gid, drop the supplementary groups, clear the bounding set).
//
// Why a re-exec: Linux credentials are per thread. glibc broadcasts setgroups/setresgid/setresuid
// to every thread of the process, but capset() and prctl() change only the calling thread. A Node
// process already runs V8 platform threads and (once used) the libuv pool, where SG_IO runs; a
// capset() on the main thread alone would leave the pool without CAP_SYS_RAWIO (setresuid cleared
// their sets) and any thread created later would copy whatever the main thread had. So the main
// thread switches its own credentials with synchronous libc calls (koffi), then execve()s the same
// Node program: the new image starts with a single thread holding the new credentials, and every
// thread it creates copies them. The kept capabilities cross execve() as AMBIENT capabilities,
// which a non-root uid keeps across the exec of a file without file capabilities
// (capabilities(7), "Transformation of capabilities during execve()"). A fresh image also leaves
// behind anything created with the old credentials, such as an io_uring instance
// (CVE-2024-22017 was setuid() in Node leaving one behind).
//
// Linux only (LP64 struct layouts: x86-64, aarch64). Every call here is synchronous, on the main
// thread, at startup; nothing here runs per request.

import koffi from 'koffi';
import { ErrorCode, DecodeError, PrmuxError } from '../errors.js';
import { SyscallError, errnoName } from '../socket/unix-fd.js';
import { type Logger, nullLogger } from '../socket/logger.js';

// ---------------------------------------------------------------------------------------------
// Pure part: capability names and masks, /proc/<pid>/status parsing.

/** <linux/capability.h> capability numbers. */
export const Capability = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_DAC_READ_SEARCH: 2,
  CAP_FOWNER: 3,
  CAP_FSETID: 4,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SETPCAP: 8,
  CAP_LINUX_IMMUTABLE: 9,
  CAP_NET_BIND_SERVICE: 10,
  CAP_NET_BROADCAST: 11,
  CAP_NET_ADMIN: 12,
  CAP_NET_RAW: 13,
  CAP_IPC_LOCK: 14,
  CAP_IPC_OWNER: 15,
  CAP_SYS_MODULE: 16,
  CAP_SYS_RAWIO: 17,
  CAP_SYS_CHROOT: 18,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_PACCT: 20,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_BOOT: 22,
  CAP_SYS_NICE: 23,
  CAP_SYS_RESOURCE: 24,
  CAP_SYS_TIME: 25,
  CAP_SYS_TTY_CONFIG: 26,
  CAP_MKNOD: 27,
  CAP_LEASE: 28,
  CAP_AUDIT_WRITE: 29,
  CAP_AUDIT_CONTROL: 30,
  CAP_SETFCAP: 31,
  CAP_MAC_OVERRIDE: 32,
  CAP_MAC_ADMIN: 33,
  CAP_SYSLOG: 34,
  CAP_WAKE_ALARM: 35,
  CAP_BLOCK_SUSPEND: 36,
  CAP_AUDIT_READ: 37,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
  CAP_CHECKPOINT_RESTORE: 40,
} as const;
export type CapabilityName = keyof typeof Capability;

const capabilityByNumber = new Map<number, CapabilityName>(
  (Object.entries(Capability) as [CapabilityName, number][]).map(([name, n]) => [n, name]),
);

/**
 * What qemu-pr-helper keeps: CAP_SYS_RAWIO for SG_IO on devices, CAP_SYS_ADMIN for the
 * /dev/mapper/control ioctls (scsi/qemu-pr-helper.c, drop_privileges()).
 */
export const KEPT_CAPABILITIES: readonly CapabilityName[] = ['CAP_SYS_RAWIO', 'CAP_SYS_ADMIN'];

/** Bit mask of the named capabilities ("CAP_SYS_RAWIO", case-insensitive). Pure. */
export function capabilityMask(names: readonly string[]): bigint {
  let mask = 0n;
  for (const name of names) {
    const n = (Capability as Readonly<Record<string, number>>)[name.toUpperCase()];
    if (n === undefined) throw new PrmuxError(ErrorCode.CONFIG, `Cannot use capability ${JSON.stringify(name)}: not a Linux capability name (e.g. CAP_SYS_RAWIO)`);
    mask |= 1n << BigInt(n);
  }
  return mask;
}

/** Names of the bits set in `mask` (unknown bits as "cap_<n>"), lowest first. Pure. */
export function capabilityNames(mask: bigint): string[] {
  const names: string[] = [];
  for (let n = 0; n < 64; n++) if ((mask >> BigInt(n)) & 1n) names.push(capabilityByNumber.get(n) ?? `cap_${n}`);
  return names;
}

/** The credential lines of /proc/<pid>/status or /proc/<pid>/task/<tid>/status. */
export interface ProcessCredentials {
  /** Thread name (the `Name:` line), when present. */
  name?: string;
  /** Real, effective, saved, filesystem. */
  uid: number[];
  gid: number[];
  /** Supplementary groups. */
  groups: number[];
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs?: number;
}

const STATUS = '/proc/<pid>/status';

/** Parse the text of /proc/<pid>/status (proc(5)). Pure; throws DecodeError if a credential line is missing or malformed. */
export function parseProcStatus(text: string): ProcessCredentials {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !fields.has(line.slice(0, colon))) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  const required = (field: string): string => {
    const v = fields.get(field);
    if (v === undefined) throw new DecodeError(STATUS, field, null, 'is missing');
    return v;
  };
  const ids = (field: string, count: number | null): number[] => {
    const raw = required(field);
    const words = raw === '' ? [] : raw.split(/\s+/);
    if (count !== null && words.length !== count) throw new DecodeError(STATUS, field, raw, `does not hold ${count} ids`);
    return words.map((w) => {
      if (!/^\d{1,10}$/.test(w) || Number(w) > 0xffffffff) throw new DecodeError(STATUS, field, raw, `holds ${JSON.stringify(w)}, not an id`);
      return Number(w);
    });
  };
  const caps = (field: string): bigint => {
    const raw = required(field);
    if (!/^[0-9a-fA-F]{1,16}$/.test(raw)) throw new DecodeError(STATUS, field, raw, 'is not a hexadecimal capability set');
    return BigInt(`0x${raw}`);
  };
  const result: ProcessCredentials = {
    uid: ids('Uid', 4),
    gid: ids('Gid', 4),
    groups: ids('Groups', null),
    capInh: caps('CapInh'),
    capPrm: caps('CapPrm'),
    capEff: caps('CapEff'),
    capBnd: caps('CapBnd'),
    // CapAmb exists since Linux 4.3; older kernels have no ambient set at all.
    capAmb: fields.has('CapAmb') ? caps('CapAmb') : 0n,
  };
  const name = fields.get('Name');
  if (name !== undefined) result.name = name;
  const nnp = fields.get('NoNewPrivs');
  if (nnp !== undefined) {
    if (!/^[01]$/.test(nnp)) throw new DecodeError(STATUS, 'NoNewPrivs', nnp, 'is not 0 or 1');
    result.noNewPrivs = Number(nnp);
  }
  return result;
}

/**
 * How `actual` (one thread's status after the switch) differs from what dropping to `credentials`
 * keeping `keepCaps` must give; empty when it matches. The re-executed image can check itself with
 * it before serving (a node binary with file capabilities, for one, would lose the ambient set). Pure.
 */
export function credentialMismatches(actual: ProcessCredentials, expected: { credentials: Credentials; keepCaps: readonly string[] }): string[] {
  const { uid, gid } = expected.credentials;
  const mask = capabilityMask(expected.keepCaps);
  const out: string[] = [];
  if (actual.uid.some((u) => u !== uid)) out.push(`uids ${actual.uid.join(',')} are not all ${uid}`);
  if (actual.gid.some((g) => g !== gid)) out.push(`gids ${actual.gid.join(',')} are not all ${gid}`);
  if (actual.groups.some((g) => g !== gid)) out.push(`supplementary groups ${actual.groups.join(',')} are not empty`);
  const sets: [string, bigint][] = [['CapEff', actual.capEff], ['CapPrm', actual.capPrm], ['CapInh', actual.capInh], ['CapAmb', actual.capAmb], ['CapBnd', actual.capBnd]];
  for (const [set, value] of sets) {
    if (value !== mask) out.push(`${set} is ${capabilityNames(value).join(',') || '(empty)'}, not ${capabilityNames(mask).join(',') || '(empty)'}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// User and group resolution.

export interface Credentials {
  uid: number;
  gid: number;
}

/** The user and group database, as a seam (tests pass a fake). */
export interface IdentityDatabase {
  userByName(name: string): { uid: number; gid: number } | null;
  userById(uid: number): { uid: number; gid: number } | null;
  groupByName(name: string): number | null;
  /** The process's real uid and gid. */
  current(): Credentials;
}

/** uid_t/gid_t -1 means "leave unchanged" to setresuid()/setresgid(), so it cannot be a target. */
const MAX_ID = 0xfffffffe;

function numericId(text: string): number | null {
  if (!/^\d{1,10}$/.test(text)) return null;
  const n = Number(text);
  return n <= MAX_ID ? n : null;
}

/**
 * The uid/gid that `-u USER` / `-g GROUP` name. Like qemu-pr-helper: a name is looked up first
 * (getpwnam/getgrnam), then a decimal number is accepted; anything else is "invalid user 'x'".
 * Without -g the user's primary group is used (qemu-pr-helper would keep the current gid); a
 * numeric user with no passwd entry has none, and then the current gid is kept, as qemu does.
 * Without -u the current uid is kept.
 */
export function resolveCredentials(user: string | undefined, group: string | undefined, db: IdentityDatabase = systemIdentityDatabase): Credentials {
  const current = db.current();
  let uid = current.uid;
  let primaryGid: number | null = null;
  if (user !== undefined) {
    const entry = user === '' ? null : db.userByName(user);
    if (entry !== null) {
      uid = entry.uid;
      primaryGid = entry.gid;
    } else {
      const n = numericId(user);
      if (n === null) throw new PrmuxError(ErrorCode.CONFIG, `Cannot drop privileges: invalid user '${user}' (no such user, and not a decimal uid)`);
      uid = n;
      primaryGid = db.userById(n)?.gid ?? null;
    }
  }
  let gid = primaryGid ?? current.gid;
  if (group !== undefined) {
    const byName = group === '' ? null : db.groupByName(group);
    const n = byName ?? numericId(group);
    if (n === null) throw new PrmuxError(ErrorCode.CONFIG, `Cannot drop privileges: invalid group '${group}' (no such group, and not a decimal gid)`);
    gid = n;
  }
  return { uid, gid };
}

// ---------------------------------------------------------------------------------------------
// libc through koffi. Loaded lazily so that importing this module for the pure part costs nothing.

const PR_SET_KEEPCAPS = 8;
const PR_CAPBSET_READ = 23;
const PR_CAPBSET_DROP = 24;
const PR_GET_SECUREBITS = 27;
const PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_RAISE = 2;
const PR_CAP_AMBIENT_CLEAR_ALL = 4;
/** <linux/securebits.h>: SECBIT_NO_CAP_AMBIENT_RAISE forbids PR_CAP_AMBIENT_RAISE. */
const SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6;
/** <linux/capability.h>: 64-bit capability sets, two struct __user_cap_data_struct. */
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;
/** Highest capability number tried when walking the bounding set (the kernel answers EINVAL past cap_last_cap). */
const CAP_PROBE_LIMIT = 63;
/** Bound on the getpwnam_r()/getgrnam_r() scratch buffer (grown on ERANGE). */
const NSS_BUFFER_MAX = 1 << 20;

interface Libc {
  prctl: (...args: unknown[]) => number;
  capget: (hdr: Uint32Array, data: Uint32Array) => number;
  capset: (hdr: Uint32Array, data: Uint32Array) => number;
  setgroups: (size: number, list: null) => number;
  setresgid: (r: number, e: number, s: number) => number;
  setresuid: (r: number, e: number, s: number) => number;
  fcntl: (...args: unknown[]) => number;
  execve: (path: string, argv: (string | null)[], envp: (string | null)[]) => number;
  getpwnam_r: (name: string, pwd: Record<string, unknown>, buf: Buffer, len: number, result: unknown[]) => number;
  getpwuid_r: (uid: number, pwd: Record<string, unknown>, buf: Buffer, len: number, result: unknown[]) => number;
  getgrnam_r: (name: string, grp: Record<string, unknown>, buf: Buffer, len: number, result: unknown[]) => number;
}

let libcCache: Libc | null = null;
function libc(): Libc {
  if (libcCache !== null) return libcCache;
  const lib = koffi.load('libc.so.6');
  // struct passwd / struct group (<pwd.h>, <grp.h>); only the ids are read, the strings stay in the scratch buffer.
  koffi.struct('prmux_passwd', { pw_name: 'void *', pw_passwd: 'void *', pw_uid: 'uint32_t', pw_gid: 'uint32_t', pw_gecos: 'void *', pw_dir: 'void *', pw_shell: 'void *' });
  koffi.struct('prmux_group', { gr_name: 'void *', gr_passwd: 'void *', gr_gid: 'uint32_t', gr_mem: 'void *' });
  libcCache = {
    prctl: lib.func('int prctl(int option, ...)') as unknown as Libc['prctl'],
    capget: lib.func('int capget(void *hdr, _Out_ void *data)') as unknown as Libc['capget'],
    capset: lib.func('int capset(void *hdr, void *data)') as unknown as Libc['capset'],
    setgroups: lib.func('int setgroups(size_t size, const uint32_t *list)') as unknown as Libc['setgroups'],
    setresgid: lib.func('int setresgid(uint32_t rgid, uint32_t egid, uint32_t sgid)') as unknown as Libc['setresgid'],
    setresuid: lib.func('int setresuid(uint32_t ruid, uint32_t euid, uint32_t suid)') as unknown as Libc['setresuid'],
    fcntl: lib.func('int fcntl(int fd, int cmd, ...)') as unknown as Libc['fcntl'],
    execve: lib.func('int execve(const char *path, const char **argv, const char **envp)') as unknown as Libc['execve'],
    getpwnam_r: lib.func('int getpwnam_r(const char *name, _Out_ prmux_passwd *pwd, uint8_t *buf, size_t len, _Out_ void **result)') as unknown as Libc['getpwnam_r'],
    getpwuid_r: lib.func('int getpwuid_r(uint32_t uid, _Out_ prmux_passwd *pwd, uint8_t *buf, size_t len, _Out_ void **result)') as unknown as Libc['getpwuid_r'],
    getgrnam_r: lib.func('int getgrnam_r(const char *name, _Out_ prmux_group *grp, uint8_t *buf, size_t len, _Out_ void **result)') as unknown as Libc['getgrnam_r'],
  };
  return libcCache;
}

const ERANGE = 34;
/** getpwnam_r(3): these returns mean "no such entry" (and so does 0 with a NULL result). */
const NOT_FOUND = new Set([0, 2 /* ENOENT */, 3 /* ESRCH */, 9 /* EBADF */, 1 /* EPERM */]);

/** One *_r lookup, growing the scratch buffer on ERANGE up to NSS_BUFFER_MAX. */
function nssLookup(what: string, call: (out: Record<string, unknown>, buf: Buffer, result: unknown[]) => number): Record<string, unknown> | null {
  for (let size = 16 * 1024; ; size *= 2) {
    const out: Record<string, unknown> = {};
    const result: unknown[] = [null];
    const rc = call(out, Buffer.alloc(size), result);
    if (rc === 0 && result[0] !== null && result[0] !== undefined) return out;
    if (rc === ERANGE && size < NSS_BUFFER_MAX) continue;
    if (NOT_FOUND.has(rc)) return null;
    throw new PrmuxError(ErrorCode.CONFIG, `Cannot look up ${what}: ${errnoName(rc)}`, { cause: new SyscallError(`look up ${what}`, rc) });
  }
}

/** The system's user and group database (NSS, through libc). */
export const systemIdentityDatabase: IdentityDatabase = {
  userByName(name) {
    const pw = nssLookup(`user '${name}'`, (out, buf, result) => libc().getpwnam_r(name, out, buf, buf.length, result));
    return pw === null ? null : { uid: pw['pw_uid'] as number, gid: pw['pw_gid'] as number };
  },
  userById(uid) {
    const pw = nssLookup(`uid ${uid}`, (out, buf, result) => libc().getpwuid_r(uid, out, buf, buf.length, result));
    return pw === null ? null : { uid: pw['pw_uid'] as number, gid: pw['pw_gid'] as number };
  },
  groupByName(name) {
    const gr = nssLookup(`group '${name}'`, (out, buf, result) => libc().getgrnam_r(name, out, buf, buf.length, result));
    return gr === null ? null : (gr['gr_gid'] as number);
  },
  current() {
    return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  },
};

// ---------------------------------------------------------------------------------------------
// The switch and the re-exec.

export interface DropPrivilegesOptions {
  readonly credentials: Credentials;
  /** Capabilities to keep, e.g. KEPT_CAPABILITIES. */
  readonly keepCaps: readonly string[];
  /** fds the new image needs (the listening socket); their FD_CLOEXEC is cleared (0, 1 and 2 always are, when open). */
  readonly keepFds: readonly number[];
  /** What follows the Node options on the new command line: the script and its arguments. */
  readonly argv: readonly string[];
  /** The new image's whole environment (add the marker that tells it not to drop again). */
  readonly env: Readonly<Record<string, string>>;
  /** Default process.execPath. */
  readonly execPath?: string;
  /** Default process.execArgv (so --enable-source-maps and the like carry over). */
  readonly execArgv?: readonly string[];
  readonly logger?: Logger;
}

function fail(step: string, errno: number): never {
  const cause = new SyscallError(step, errno);
  throw new PrmuxError(ErrorCode.CONFIG, `Cannot drop privileges: ${step} failed: ${cause.code} (errno ${errno})`, { cause });
}

function refuse(why: string): never {
  throw new PrmuxError(ErrorCode.CONFIG, `Cannot drop privileges: ${why}`);
}

const ul = (n: number | bigint): unknown[] => ['unsigned long', n];

function prctl(option: number, a2: number, a3 = 0, a4 = 0, a5 = 0): number {
  return libc().prctl(option, ...ul(a2), ...ul(a3), ...ul(a4), ...ul(a5));
}

function capget(): { eff: bigint; prm: bigint; inh: bigint } {
  const hdr = new Uint32Array([LINUX_CAPABILITY_VERSION_3, 0]);
  const data = new Uint32Array(6);
  if (libc().capget(hdr, data) < 0) fail('capget()', koffi.errno());
  const join = (lo: number, hi: number): bigint => (BigInt(data[hi]!) << 32n) | BigInt(data[lo]!);
  // struct __user_cap_data_struct[2] { effective, permitted, inheritable }: [0] bits 0..31, [1] bits 32..63.
  return { eff: join(0, 3), prm: join(1, 4), inh: join(2, 5) };
}

/** The bounding set, read bit by bit with PR_CAPBSET_READ up to the kernel's last capability. */
function readBoundingSet(): bigint {
  let bnd = 0n;
  for (let cap = 0; cap <= CAP_PROBE_LIMIT; cap++) {
    const r = prctl(PR_CAPBSET_READ, cap);
    if (r < 0) {
      if (koffi.errno() === 22 /* EINVAL: past cap_last_cap */) break;
      fail(`prctl(PR_CAPBSET_READ, ${capabilityByNumber.get(cap) ?? cap})`, koffi.errno());
    }
    if (r === 1) bnd |= 1n << BigInt(cap);
  }
  return bnd;
}

function checkEnvironmentEntry(key: string, value: string): string {
  if (key === '' || key.includes('=') || key.includes('\0') || value.includes('\0')) refuse(`environment variable ${JSON.stringify(key)} cannot be passed to execve()`);
  return `${key}=${value}`;
}

/**
 * Become `credentials` keeping only `keepCaps`, then execve() the same Node program with `argv`
 * and `env`; never returns. Call it on the main thread, with no SG_IO in flight (execve ends
 * every other thread). Everything is checked before the first change, so most refusals leave
 * the process as it was; a failure after that (named by step and errno) leaves it partly
 * switched, and the caller must exit. Throws PrmuxError CONFIG.
 *
 * Steps (qemu-pr-helper's via libcap-ng's capng_change_id with CAPNG_DROP_SUPP_GRP |
 * CAPNG_CLEAR_BOUNDING, plus what the re-exec needs): drop the other capabilities from the
 * bounding set; PR_SET_KEEPCAPS so setresuid() keeps the permitted set; setgroups(0);
 * setresgid; setresuid; capset effective = permitted = inheritable = kept (inheritable because
 * an ambient capability must be permitted and inheritable); raise each kept one in the ambient
 * set; clear FD_CLOEXEC on keepFds and on stdin/stdout/stderr; execve().
 */
export function dropPrivilegesAndReexec(opts: DropPrivilegesOptions): never {
  const log = opts.logger ?? nullLogger;
  const { uid, gid } = opts.credentials;
  for (const [what, id] of [['uid', uid], ['gid', gid]] as const) {
    if (!Number.isInteger(id) || id < 0 || id > MAX_ID) refuse(`${what} ${id} is not 0..${MAX_ID}`);
  }
  const keep = capabilityMask(opts.keepCaps);
  const execPath = opts.execPath ?? process.execPath;
  const argv = [execPath, ...(opts.execArgv ?? process.execArgv), ...opts.argv];
  for (const a of argv) if (a.includes('\0')) refuse(`argument ${JSON.stringify(a)} cannot be passed to execve()`);
  const envp = Object.entries(opts.env).map(([k, v]) => checkEnvironmentEntry(k, v));
  const c = libc();

  // Checks, before any change.
  for (const fd of opts.keepFds) {
    if (!Number.isInteger(fd) || fd < 0) refuse(`fd ${fd} to keep is not a file descriptor number`);
    if (c.fcntl(fd, F_GETFD, 'int', 0) < 0) fail(`fcntl(F_GETFD) on fd ${fd} to keep`, koffi.errno());
  }
  const before = capget();
  const bnd = readBoundingSet();
  const required = capabilityMask(['CAP_SETPCAP', 'CAP_SETUID', 'CAP_SETGID']);
  if ((before.eff & required) !== required) refuse(`${capabilityNames(required & ~before.eff).join(', ')} not in the effective set (run as root)`);
  if ((before.prm & keep) !== keep) refuse(`${capabilityNames(keep & ~before.prm).join(', ')} not in the permitted set, so it cannot be kept`);
  if ((bnd & keep) !== keep) refuse(`${capabilityNames(keep & ~bnd).join(', ')} not in the bounding set, so it cannot be kept`);
  const securebits = prctl(PR_GET_SECUREBITS, 0);
  if (securebits < 0) fail('prctl(PR_GET_SECUREBITS)', koffi.errno());
  if (keep !== 0n && (securebits & SECBIT_NO_CAP_AMBIENT_RAISE) !== 0) refuse('SECBIT_NO_CAP_AMBIENT_RAISE is set, so no capability can cross execve()');

  log.info('dropping privileges', { uid, gid, keep: capabilityNames(keep), keepFds: [...opts.keepFds] });

  // 1. Bounding set: only the kept capabilities may ever be regained, even through a setuid-root
  // or file-capability program (libcap-ng's CAPNG_CLEAR_BOUNDING).
  for (let cap = 0; cap <= CAP_PROBE_LIMIT; cap++) {
    const bit = 1n << BigInt(cap);
    if ((bnd & bit) !== 0n && (keep & bit) === 0n && prctl(PR_CAPBSET_DROP, cap) < 0) {
      fail(`prctl(PR_CAPBSET_DROP, ${capabilityByNumber.get(cap) ?? cap})`, koffi.errno());
    }
  }
  // 2. Without keep-caps, leaving uid 0 clears the permitted set (capabilities(7), "Effect of user ID changes").
  if (prctl(PR_SET_KEEPCAPS, 1) < 0) fail('prctl(PR_SET_KEEPCAPS, 1)', koffi.errno());
  // 3-5. glibc applies these to every thread of the process; the other threads lose all their
  // capabilities here, which does not matter since execve() ends them.
  if (c.setgroups(0, null) < 0) fail('setgroups(0)', koffi.errno());
  if (c.setresgid(gid, gid, gid) < 0) fail(`setresgid(${gid})`, koffi.errno());
  if (c.setresuid(uid, uid, uid) < 0) fail(`setresuid(${uid})`, koffi.errno());
  // 6. This thread only: the kept set, in inheritable too so it can be raised in the ambient set.
  const lo = Number(keep & 0xffffffffn);
  const hi = Number(keep >> 32n);
  const hdr = new Uint32Array([LINUX_CAPABILITY_VERSION_3, 0]);
  if (c.capset(hdr, new Uint32Array([lo, lo, lo, hi, hi, hi])) < 0) fail(`capset(${capabilityNames(keep).join(',') || 'none'})`, koffi.errno());
  // 7. Ambient: what a non-root process without file capabilities keeps across execve().
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) < 0) fail('prctl(PR_CAP_AMBIENT_CLEAR_ALL)', koffi.errno());
  for (const name of capabilityNames(keep)) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, Capability[name as CapabilityName]) < 0) fail(`prctl(PR_CAP_AMBIENT_RAISE, ${name})`, koffi.errno());
  }
  // 8. The fds the new image takes over: keepFds (prmux creates every fd close-on-exec) and the
  // open ones of stdin/stdout/stderr, which Node marked close-on-exec at startup too (libuv's
  // uv_disable_stdio_inheritance(), fds 0..15). The new Node image marks them again.
  const stdio = [0, 1, 2].filter((fd) => c.fcntl(fd, F_GETFD, 'int', 0) >= 0);
  for (const fd of new Set([...stdio, ...opts.keepFds])) {
    const flags = c.fcntl(fd, F_GETFD, 'int', 0);
    if (flags < 0 || c.fcntl(fd, F_SETFD, 'int', flags & ~FD_CLOEXEC) < 0) fail(`fcntl(F_SETFD) clearing FD_CLOEXEC on fd ${fd}`, koffi.errno());
  }
  // 9. Returns only on failure.
  c.execve(execPath, [...argv, null], [...envp, null]);
  fail(`execve(${execPath})`, koffi.errno());
}
