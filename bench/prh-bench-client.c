/*
 * prh-bench-client: a load generator for pr-manager-helper servers (QEMU's pr-helper wire
 * protocol, see ../../shared/reference/pr-helper-protocol.md and QEMU docs/interop/pr-helper.rst).
 *
 * Written for prmux's bench/ (not derived from QEMU code). Compiled at run time by
 * bench/pr-helper-bench.ts with `gcc -O2 -pthread`.
 *
 * It opens N connections, negotiates on each (reads the helper's 4-byte feature word, answers
 * 4 zero bytes, as QEMU does), then runs one thread per connection doing strict ping-pong with
 * one request in flight per connection, as QEMU does (one command at a time per connection):
 *
 *   sendmsg(16-byte PERSISTENT RESERVE IN / READ KEYS CDB + exactly one fd as SCM_RIGHTS)
 *   recv(104-byte header: status u32 BE, size u32 BE, 96 bytes sense; then `size` payload bytes)
 *
 * Every reply is checked: status must fit in a byte, size must be <= the CDB's allocation
 * length, a non-GOOD status must carry no payload, and no byte may follow the reply. Any
 * violation, an EOF, or a timeout is an error: the connection is abandoned and counted, so a
 * server that drops connections shows up as errors rather than as a fast result.
 *
 * Usage:
 *   prh-bench-client -s SOCKET -f FDPATH [-c CONNS] [-t SECONDS] [-w WARMUP_S] [-a ALLOC_LEN]
 *                    [-n COUNT] [-T TIMEOUT_S]
 *   -n COUNT: probe mode; each connection sends COUNT requests, no warm-up, no time window.
 *
 * Output: one JSON object on stdout, e.g.
 *   {"conns":8,"requests":123456,"seconds":2.000,"p50_us":61.2,"p99_us":140.7,"rps":61728.0,...}
 * Exit status: 0 when there was no error, 1 when requests failed, 2 on a setup failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CDB_LEN 16
#define HDR_LEN 104 /* status(4) + size(4) + sense(96) */
#define SENSE_LEN 96
#define MAX_ALLOC 8192 /* the protocol's transfer limit */
#define MAX_CONNS 1024

struct conn {
    int idx;
    int sock;
    pthread_t thread;
    uint32_t *lat; /* nanoseconds, one per request completed inside the window */
    size_t n, cap;
    uint64_t done;   /* requests completed (probe mode or window), for the probe */
    uint64_t errors; /* at most 1 per connection: an error abandons the connection */
    char err[200];
    uint64_t status_counts[256];
    int have_first;
    uint32_t first_status, first_size;
    unsigned char first_sense[SENSE_LEN];
    uint64_t size_mismatch; /* replies whose size differed from this connection's first reply */
};

static struct conn conns[MAX_CONNS];
static int nconns = 1;
static int passfd = -1;
static unsigned alloc_len = 255;
static long probe_count = 0;
static struct timespec t_window_start, t_window_end;
static pthread_barrier_t start_barrier;
static unsigned char cdb[CDB_LEN];

static inline uint64_t ts_ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }
static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return ts_ns(&t);
}
static inline uint32_t be32(const unsigned char *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

static void set_err(struct conn *c, const char *what, int e) {
    c->errors++;
    if (e)
        snprintf(c->err, sizeof c->err, "conn %d: %s: %s", c->idx, what, strerror(e));
    else
        snprintf(c->err, sizeof c->err, "conn %d: %s", c->idx, what);
}

/* Reads exactly len bytes; 0 on success, -1 with errno (0 for EOF). */
static int read_full(int s, unsigned char *buf, size_t len) {
    size_t have = 0;
    while (have < len) {
        ssize_t r = recv(s, buf + have, len - have, 0);
        if (r > 0) { have += (size_t)r; continue; }
        if (r == 0) { errno = 0; return -1; }
        if (errno == EINTR) continue;
        return -1;
    }
    return 0;
}

static int write_full(int s, const unsigned char *buf, size_t len) {
    size_t have = 0;
    while (have < len) {
        ssize_t r = send(s, buf + have, len - have, MSG_NOSIGNAL);
        if (r > 0) { have += (size_t)r; continue; }
        if (r < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

/* One request: CDB with exactly one fd in a single sendmsg; any remainder of the 16 bytes (a
 * short send, which a stream socket may in theory do) goes without the fd. */
static int send_request(int s) {
    struct iovec iov = {.iov_base = cdb, .iov_len = CDB_LEN};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &passfd, sizeof(int));
    ssize_t r;
    do r = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    if (r < CDB_LEN) return write_full(s, cdb + r, (size_t)(CDB_LEN - r));
    return 0;
}

/* Reads one reply and validates its framing. Returns 0, or -1 with a message in c->err. */
static int recv_reply(struct conn *c, unsigned char *buf) {
    size_t want = HDR_LEN, have = 0;
    uint32_t status = 0, size = 0;
    /* One recv usually returns the whole reply; ask for as much as a valid reply can be, so a
     * server that sends trailing garbage is caught below. */
    while (have < want) {
        ssize_t r = recv(c->sock, buf + have, HDR_LEN + MAX_ALLOC - have, 0);
        if (r == 0) { set_err(c, have ? "EOF inside a reply" : "server closed the connection", 0); return -1; }
        if (r < 0) {
            if (errno == EINTR) continue;
            set_err(c, (errno == EAGAIN || errno == EWOULDBLOCK) ? "reply timeout" : "recv", (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : errno);
            return -1;
        }
        have += (size_t)r;
        if (want == HDR_LEN && have >= HDR_LEN) {
            status = be32(buf);
            size = be32(buf + 4);
            if (status > 0xff) { set_err(c, "framing: status word above 0xff", 0); return -1; }
            if (size > alloc_len) { set_err(c, "framing: payload size above the allocation length", 0); return -1; }
            if (status != 0 && size != 0) { set_err(c, "framing: payload with a non-GOOD status", 0); return -1; }
            want = HDR_LEN + size;
        }
    }
    if (have > want) { set_err(c, "framing: bytes after the reply (unsolicited data)", 0); return -1; }
    c->status_counts[status]++;
    if (!c->have_first) {
        c->have_first = 1;
        c->first_status = status;
        c->first_size = size;
        memcpy(c->first_sense, buf + 8, SENSE_LEN);
    } else if (size != c->first_size) {
        c->size_mismatch++;
    }
    return 0;
}

static void record(struct conn *c, uint64_t ns) {
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 65536;
        uint32_t *p = realloc(c->lat, ncap * sizeof *p);
        if (!p) return; /* out of memory: drop the sample rather than crash */
        c->lat = p;
        c->cap = ncap;
    }
    c->lat[c->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void *run(void *arg) {
    struct conn *c = arg;
    unsigned char *buf = malloc(HDR_LEN + MAX_ALLOC);
    if (!buf) { set_err(c, "malloc", ENOMEM); pthread_barrier_wait(&start_barrier); return NULL; }
    pthread_barrier_wait(&start_barrier);
    const uint64_t ws = ts_ns(&t_window_start), we = ts_ns(&t_window_end);
    for (;;) {
        if (probe_count > 0 && (long)c->done >= probe_count) break;
        uint64_t t0 = now_ns();
        if (send_request(c->sock) < 0) { set_err(c, "sendmsg", errno); break; }
        if (recv_reply(c, buf) < 0) break;
        uint64_t t1 = now_ns();
        if (probe_count > 0) { c->done++; record(c, t1 - t0); continue; }
        /* Only requests entirely inside [window start, window end] count, so requests/seconds is
         * a true rate; at most one straddling request per connection is dropped at each edge. */
        if (t0 >= ws && t1 <= we) { c->done++; record(c, t1 - t0); }
        if (t1 >= we) break;
    }
    free(buf);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in microseconds. */
static double pct(const uint32_t *v, size_t n, double p) {
    if (!n) return 0;
    size_t k = (size_t)(p * (double)n + 0.999999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return v[k - 1] / 1000.0;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void fail_setup(const char *what, int e) {
    printf("{\"setup_error\":");
    char m[300];
    snprintf(m, sizeof m, "%s%s%s", what, e ? ": " : "", e ? strerror(e) : "");
    json_str(m);
    printf("}\n");
    exit(2);
}

static void usage(void) {
    fprintf(stderr, "usage: prh-bench-client -s SOCKET -f FDPATH [-c CONNS] [-t SECONDS] [-w WARMUP_S] [-a ALLOC_LEN] [-n COUNT] [-T TIMEOUT_S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *sockpath = NULL, *fdpath = NULL;
    double seconds = 2.0, warmup = 0.2, timeout_s = 5.0;
    int opt;
    while ((opt = getopt(argc, argv, "s:f:c:t:w:a:n:T:")) != -1) {
        switch (opt) {
        case 's': sockpath = optarg; break;
        case 'f': fdpath = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'a': alloc_len = (unsigned)atoi(optarg); break;
        case 'n': probe_count = atol(optarg); break;
        case 'T': timeout_s = atof(optarg); break;
        default: usage();
        }
    }
    if (!sockpath || !fdpath || nconns < 1 || nconns > MAX_CONNS || seconds <= 0 || warmup < 0 || alloc_len > MAX_ALLOC || timeout_s <= 0) usage();

    /* PERSISTENT RESERVE IN (0x5E), service action READ KEYS (0x00), allocation length in
     * bytes 7-8 (SPC-4 6.15.1), control byte 0. */
    memset(cdb, 0, sizeof cdb);
    cdb[0] = 0x5e;
    cdb[1] = 0x00;
    cdb[7] = (unsigned char)(alloc_len >> 8);
    cdb[8] = (unsigned char)(alloc_len & 0xff);

    passfd = open(fdpath, O_RDWR | O_CLOEXEC);
    if (passfd < 0) passfd = open(fdpath, O_RDONLY | O_CLOEXEC);
    if (passfd < 0) fail_setup("open fd path", errno);

    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(sockpath) >= sizeof sa.sun_path) fail_setup("socket path too long", 0);
    strcpy(sa.sun_path, sockpath);
    struct timeval tv = {.tv_sec = (time_t)timeout_s, .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    unsigned feature_word = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->idx = i;
        c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->sock < 0) fail_setup("socket", errno);
        setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(c->sock, (struct sockaddr *)&sa, sizeof sa) < 0) fail_setup("connect", errno);
        unsigned char feat[4], zero[4] = {0, 0, 0, 0};
        if (read_full(c->sock, feat, 4) < 0) fail_setup(errno ? "read feature word" : "read feature word: EOF", errno);
        feature_word = be32(feat);
        if (write_full(c->sock, zero, 4) < 0) fail_setup("write requested features", errno);
    }

    if (pthread_barrier_init(&start_barrier, NULL, (unsigned)nconns + 1) != 0) fail_setup("pthread_barrier_init", errno);
    for (int i = 0; i < nconns; i++)
        if (pthread_create(&conns[i].thread, NULL, run, &conns[i]) != 0) fail_setup("pthread_create", errno);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t ws = ts_ns(&now) + (uint64_t)(warmup * 1e9), we = ws + (uint64_t)(seconds * 1e9);
    t_window_start.tv_sec = (time_t)(ws / 1000000000ull);
    t_window_start.tv_nsec = (long)(ws % 1000000000ull);
    t_window_end.tv_sec = (time_t)(we / 1000000000ull);
    t_window_end.tv_nsec = (long)(we % 1000000000ull);
    uint64_t started = now_ns();
    pthread_barrier_wait(&start_barrier); /* publishes the window to the threads */
    for (int i = 0; i < nconns; i++) pthread_join(conns[i].thread, NULL);
    uint64_t finished = now_ns();

    size_t total = 0;
    uint64_t errors = 0, size_mismatch = 0, status_counts[256] = {0}, done = 0;
    const char *first_err = NULL;
    struct conn *first = NULL;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        total += c->n;
        done += c->done;
        errors += c->errors;
        size_mismatch += c->size_mismatch;
        if (c->errors && !first_err) first_err = c->err;
        if (c->have_first && !first) first = c;
        for (int s = 0; s < 256; s++) status_counts[s] += c->status_counts[s];
    }
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) fail_setup("malloc", ENOMEM);
    size_t k = 0;
    for (int i = 0; i < nconns; i++) {
        memcpy(all + k, conns[i].lat, conns[i].n * sizeof *all);
        k += conns[i].n;
    }
    qsort(all, total, sizeof *all, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < total; i++) sum += all[i];
    double secs = probe_count > 0 ? (double)(finished - started) / 1e9 : seconds;

    printf("{\"conns\":%d,\"requests\":%zu,\"seconds\":%.3f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"max_us\":%.1f,\"mean_us\":%.1f,\"rps\":%.1f,\"errors\":%llu,\"size_mismatch\":%llu,\"feature_word\":%u,\"alloc_len\":%u",
           nconns, total, secs, pct(all, total, 0.50), pct(all, total, 0.90), pct(all, total, 0.99), pct(all, total, 0.999),
           total ? all[total - 1] / 1000.0 : 0.0, total ? sum / (double)total / 1000.0 : 0.0, secs > 0 ? (double)total / secs : 0.0,
           (unsigned long long)errors, (unsigned long long)size_mismatch, feature_word, alloc_len);
    printf(",\"statuses\":{");
    int comma = 0;
    for (int s = 0; s < 256; s++)
        if (status_counts[s]) {
            printf("%s\"%d\":%llu", comma ? "," : "", s, (unsigned long long)status_counts[s]);
            comma = 1;
        }
    printf("}");
    if (first) {
        printf(",\"first_reply\":{\"status\":%u,\"size\":%u,\"sense\":\"", first->first_status, first->first_size);
        for (int i = 0; i < 18; i++) printf("%02x", first->first_sense[i]);
        printf("\"}");
    }
    if (first_err) {
        printf(",\"first_error\":");
        json_str(first_err);
    }
    printf("}\n");
    return errors ? 1 : 0;
}
