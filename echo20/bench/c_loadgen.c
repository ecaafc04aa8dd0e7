/* The benchmark's load generator: closed loop or open loop, every reply checked.
 *
 * A Python client would spend more CPU per round trip than the servers it measures, so
 * the load comes from this small epoll program instead (echo20-bench compiles and
 * runs it).
 *
 *     c_loadgen --port P --connections 16 --size 200 --warmup 1 --duration 3 \
 *               --server-pid PID [--cpu 1] [--rate 20000] [--samples FILE]
 *     c_loadgen --unix PATH ...       (a server on a Unix socket)
 *
 * Closed loop (the default): one message in flight per connection; the next is sent
 * when the whole reply to the last is in. Latency: first byte sent to last reply byte
 * received.
 *
 * Open loop (--rate R): R messages per second in total, spread evenly over the
 * connections (connection i sends its k-th message at t0 + (k * connections + i) / R),
 * each sent on schedule whether or not earlier replies have come back. Latency counts
 * from the time a message was due, not from when it left, so a server that stalls is
 * charged for every message that waited behind the stall: coordinated omission
 * corrected as wrk2 does. The time from due to sent (the send lag) is reported too,
 * so a late load generator shows as such. At most MAX_QUEUE messages wait per
 * connection; messages due beyond that are sent as room frees up, still timed from
 * when they were due. After the window, messages due in it are waited for (at most
 * DRAIN_SECONDS); those still missing are counted as unfinished.
 *
 * Connections open at most RAMP_WINDOW at a time, each counted as ready once its first
 * reply is in, so a server's accept backlog never overflows. Once all are ready and the
 * warm-up has passed, the measured window starts: round trips completed in it, their
 * latencies, the server's CPU time from its own accounting (/proc/PID/stat utime +
 * stime, in clock ticks, and the scheduler's run time of each of its threads,
 * /proc/PID/task/TID/schedstat, in nanoseconds: the same time, without the 10 ms
 * granularity), this program's CPU time, and every CPU's busy time (/proc/stat) so the
 * caller can tell when something else shared a core (and how much of each the hypervisor
 * stole, for a virtual machine). --samples FILE writes every
 * measured latency (nanoseconds, sorted, native 64-bit integers) for the caller's
 * histograms; --service-samples FILE, in the open loop, the same from the time each
 * message was actually sent.
 *
 * Every reply is checked as a stream: the bytes received must be the bytes sent, cut
 * into chunks of 1 to 20 bytes, each chunk followed by its reversal. The server may cut
 * anywhere (and in the open loop a chunk may span two messages). The messages are
 * slices of one random pattern with no byte equal to its neighbour (and no 'o', so no
 * chunk is ever "over"), which makes the cut unique: after k echoed bytes, the next
 * byte is either the next echo byte or the first byte of the reversal, never both. A
 * connection whose reply is wrong, or that the server closes, counts as an error and is
 * dropped; the first error is described.
 *
 * With --idle each connection stops after its first round trip; the program prints
 * "ready N", waits for a line (or end of file) on stdin, checks that no connection was
 * closed meanwhile, closes them all and prints its report.
 *
 * Built with -DECHO20_TLS (and -lssl -lcrypto: OpenSSL), --tls-ca CA.pem speaks TLS:
 * each connection's handshake (the server's certificate checked against CA.pem for the
 * name --tls-name, default localhost) is part of the ramp, then the messages go through
 * SSL_write and the replies through SSL_read, every record waiting read in one go.
 * The report names the version and cipher negotiated.
 *
 * The report is one line of JSON on stdout. Exit status 0 unless the arguments are bad
 * or a system call failed.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include "c_tls.h"
#include <time.h>
#include <unistd.h>

#define CHUNK_SIZE 20
/* Connections not yet answered at once: below every server's listen backlog (asyncio
 * 100, Tornado 128), so no SYN is ever dropped and retried a second later. */
#define RAMP_WINDOW 64
/* Messages start at one of this many offsets into the pattern, so consecutive replies
 * differ and a stale or repeated reply cannot pass the check. */
#define OFFSETS 256
#define MAX_EVENTS 1024
#define MAX_CPUS 256
/* Open loop: messages sent and not yet answered, per connection. */
#define MAX_QUEUE 256
/* Open loop: seconds to wait after the window for replies to messages due in it. */
#define DRAIN_SECONDS 2.0
/* Bytes read per recv(): asyncio's own read size. */
#define READ_SIZE (256 * 1024)
/* The timer's event tag, beyond every connection index. */
#define TIMER_TAG UINT32_MAX

enum state { CONNECTING, HANDSHAKING, ACTIVE, IDLE, DEAD };

struct msg {
    uint64_t start;      /* offset of its first byte in the connection's byte stream */
    uint64_t due, sent;  /* when it was due (open loop) and when its first byte left */
    uint32_t off;        /* its bytes are pattern[off .. off + size) */
    int measured;        /* due inside the measured window (open loop) */
};

struct conn {
    int fd;
    enum state state;
    int want_out; /* EPOLLOUT is in the interest set */
    int answered; /* the first reply came back */
    uint64_t rounds;
    struct msg *queue; /* ring: sent or being sent, not yet answered */
    unsigned head, len, unsent; /* unsent: how many at the ring's end are not fully sent */
    size_t send_pos;            /* bytes of the first unsent message already sent */
    uint64_t stream_sent, stream_checked;
    uint64_t next_k;  /* messages queued so far */
    uint64_t sched_k; /* open loop: messages of the schedule queued so far */
    uint64_t due;    /* open loop: messages due but not yet queued (the ring was full) */
    unsigned char last_byte; /* the last byte of the last message queued */
    unsigned char left[2 * CHUNK_SIZE];
    unsigned nleft; /* reply bytes received but not yet a whole chunk */
#ifdef ECHO20_TLS
    SSL *ssl;
#endif
};

struct snapshot {
    uint64_t t_ns;
    long long server_ticks; /* -1: unknown */
    long long server_ns;    /* -1: unknown */
    uint64_t self_cpu_us;
    int ncpus;
    unsigned long long busy[MAX_CPUS], total[MAX_CPUS], steal[MAX_CPUS];
};

struct samples {
    uint64_t *v;
    size_t n, cap;
};

static struct {
    const char *host, *unix_path;
    int port, connections, server_pid, cpu, idle;
    size_t size;
    double warmup, duration, ramp_timeout, rate;
    unsigned seed;
    const char *samples_path, *service_path;
    const char *tls_ca, *tls_name;
} opt = {"127.0.0.1", NULL, 0, 1, -1, -1, 0, 8, 1.0, 3.0, 60.0, 0.0, 1, NULL, NULL, NULL,
         "localhost"};

static struct sockaddr_storage addr;
static socklen_t addrlen;
static int epfd, timerfd = -1;
static struct conn *conns;
static unsigned char *pattern;
static unsigned char *readbuf;
static unsigned queue_cap;

static struct samples latency, service, lag;
static uint64_t errors, rounds_in_window, measured_due, unfinished;
static int ramp_timed_out;
static char first_error[512];
/* 0: ramping up, 1: warming up, 2: measuring, 3: open loop, draining the window's replies */
static int phase;
static uint64_t window_start, window_end, t0, next_slot;

static void die(const char *what) {
    fprintf(stderr, "c_loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record_error(int index, const char *fmt, ...) {
    errors++;
    if (first_error[0] != '\0') return;
    int n = snprintf(first_error, sizeof first_error, "connection %d: ", index);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error + n, sizeof first_error - (size_t)n, fmt, ap);
    va_end(ap);
    for (char *p = first_error; *p; p++) /* keep the JSON string simple */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
}

static void add_sample(struct samples *s, uint64_t ns) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 65536;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (s->v == NULL) die("realloc");
    }
    s->v[s->n++] = ns;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples. */
static uint64_t percentile(const struct samples *s, double q) {
    if (s->n == 0) return 0;
    size_t rank = (size_t)(q * (double)s->n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > s->n) rank = s->n;
    return s->v[rank - 1];
}

static void write_samples(const struct samples *s, const char *path) {
    if (path == NULL) return;
    FILE *f = fopen(path, "wb");
    if (f == NULL) die(path);
    if (s->n && fwrite(s->v, sizeof *s->v, s->n, f) != s->n) die(path);
    if (fclose(f) != 0) die(path);
}

/* --- measurement ---------------------------------------------------------------- */

static long long read_server_ticks(void) {
    if (opt.server_pid <= 0) return -1;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", opt.server_pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL) return -1;
    /* After ")": field 3 (state) ... field 14 utime, field 15 stime. */
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    return (long long)(utime + stime);
}

/* Sum of the scheduler's run time of every thread of the server, in nanoseconds. */
static long long read_server_ns(void) {
    if (opt.server_pid <= 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", opt.server_pid);
    DIR *dir = opendir(path);
    if (dir == NULL) return -1;
    long long total = 0;
    int found = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        char file[320], buf[128];
        snprintf(file, sizeof file, "/proc/%d/task/%s/schedstat", opt.server_pid, entry->d_name);
        int fd = open(file, O_RDONLY);
        if (fd < 0) continue; /* the thread ended meanwhile */
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = '\0';
        total += strtoll(buf, NULL, 10);
        found = 1;
    }
    closedir(dir);
    return found ? total : -1;
}

static void read_cpu_stat(struct snapshot *s) {
    s->ncpus = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int cpu;
        unsigned long long v[8] = {0};
        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
        if (sscanf(line + 3, "%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 5)
            continue;
        if (cpu < 0 || cpu >= MAX_CPUS) continue;
        /* user nice system idle iowait irq softirq steal. Busy leaves out softirq: with
         * IRQ time accounting the loopback delivery of the benchmark's own packets lands
         * there, charged to whichever CPU sent them; it is not someone else's load. */
        s->busy[cpu] = v[0] + v[1] + v[2] + v[5] + v[7];
        s->total[cpu] = s->busy[cpu] + v[3] + v[4] + v[6];
        s->steal[cpu] = v[7]; /* time the hypervisor gave this virtual CPU to others */
        if (cpu + 1 > s->ncpus) s->ncpus = cpu + 1;
    }
    fclose(f);
}

static void take_snapshot(struct snapshot *s) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->self_cpu_us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
                     (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    s->server_ticks = read_server_ticks();
    s->server_ns = read_server_ns();
    read_cpu_stat(s);
    s->t_ns = now_ns();
}

/* --- the byte streams ----------------------------------------------------------- */

static struct msg *queue_at(struct conn *c, unsigned i) {
    return &c->queue[(c->head + i) % queue_cap];
}

/* Byte x of the connection's sent stream (x must be sent and not yet checked). */
static unsigned char sent_byte(struct conn *c, uint64_t x) {
    for (unsigned i = 0; i < c->len; i++) {
        struct msg *m = queue_at(c, i);
        if (x < m->start + opt.size) return pattern[m->off + (x - m->start)];
    }
    return 0; /* not reached: x < stream_sent */
}

/* Bytes [x, x + n) of the sent stream: a pointer into the pattern when they lie in one
 * message, else copied into scratch. */
static const unsigned char *sent_bytes(struct conn *c, uint64_t x, size_t n,
                                       unsigned char *scratch) {
    struct msg *m = queue_at(c, 0);
    if (c->len && x >= m->start && x + n <= m->start + opt.size)
        return pattern + m->off + (x - m->start);
    for (size_t i = 0; i < n; i++) scratch[i] = sent_byte(c, x + i);
    return scratch;
}

/* One chunk of the reply at r (avail bytes): its length k, 0 when more bytes are
 * needed, -1 when the bytes are not a chunk of what was sent followed by its reversal. */
static int parse_chunk(struct conn *c, const unsigned char *r, size_t avail) {
    if (avail == 0) return 0;
    uint64_t unchecked = c->stream_sent - c->stream_checked;
    if (unchecked == 0) return -1; /* a reply to bytes never sent */
    size_t lim = unchecked < CHUNK_SIZE ? (size_t)unchecked : CHUNK_SIZE;
    unsigned char scratch[CHUNK_SIZE];
    const unsigned char *s = sent_bytes(c, c->stream_checked, lim, scratch);
    size_t k = 0;
    for (;;) {
        if (k >= avail) return 0;
        if (k < lim && r[k] == s[k]) {
            k++;
            continue;
        }
        /* Not the next echo byte: the reversal's first byte, or wrong. */
        if (k == 0 || r[k] != s[k - 1]) return -1;
        break;
    }
    if (avail < 2 * k) return 0;
    for (size_t j = 0; j < k; j++)
        if (r[k + j] != s[k - 1 - j]) return -1;
    return (int)k;
}

static void set_out_interest(struct conn *c, int index, int want) {
    if (c->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = want;
}

/* --- TLS, or not: recv() and send() for a connection ------------------------------ */

#ifdef ECHO20_TLS
static SSL_CTX *tls_ctx; /* NULL: plain TCP */
#endif
static char tls_version[128]; /* what the first connection negotiated */

static const char *error_text(int err) {
#ifdef ECHO20_TLS
    if (err == EPROTO && tls_error[0]) return tls_error;
#endif
    return strerror(err);
}

static ssize_t io_recv(struct conn *c, unsigned char *buf, size_t len) {
#ifdef ECHO20_TLS
    if (c->ssl != NULL) return tls_recv(c->ssl, buf, len);
#endif
    return recv(c->fd, buf, len, 0);
}

static ssize_t io_send(struct conn *c, const unsigned char *buf, size_t len) {
#ifdef ECHO20_TLS
    if (c->ssl != NULL) return tls_send(c->ssl, buf, len);
#endif
    return send(c->fd, buf, len, MSG_NOSIGNAL);
}

static void drop(struct conn *c) {
#ifdef ECHO20_TLS
    if (c->ssl != NULL) SSL_free(c->ssl);
    c->ssl = NULL;
#endif
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = DEAD;
}

static void pump_send(struct conn *c, int index) {
    while (c->unsent > 0) {
        struct msg *m = queue_at(c, c->len - c->unsent);
        if (c->send_pos == 0 && m->sent == 0) m->sent = now_ns();
        ssize_t n = io_send(c, pattern + m->off + c->send_pos, opt.size - c->send_pos);
        if (n > 0) {
            c->send_pos += (size_t)n;
            c->stream_sent += (uint64_t)n;
            if (c->send_pos == opt.size) {
                c->send_pos = 0;
                c->unsent--;
            }
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out_interest(c, index, 1); /* replies are read meanwhile: no deadlock */
            return;
        } else {
            record_error(index, "send: %s", n < 0 ? error_text(errno) : "no progress");
            drop(c);
            return;
        }
    }
    set_out_interest(c, index, 0);
}

/* Queue the connection's next message (due at `due`, 0 in the closed loop). */
static void queue_message(struct conn *c, int index, uint64_t due) {
    struct msg *m = queue_at(c, c->len);
    /* The stream offset follows from every message being `size` bytes. */
    m->start = c->next_k * (uint64_t)opt.size;
    uint32_t off = (uint32_t)(((size_t)index * 31u + c->next_k * 7u) % OFFSETS);
    /* Its first byte must differ from the stream's last, or the cut would be ambiguous. */
    while (c->next_k && pattern[off] == c->last_byte) off = (off + 1) % OFFSETS;
    m->off = off;
    m->due = due;
    m->sent = 0;
    m->measured = due && due >= window_start && due < window_end;
    c->last_byte = pattern[off + opt.size - 1];
    c->next_k++;
    c->len++;
    c->unsent++;
}

/* A message whose last chunk has been checked: its round trip is done. */
static void complete(struct conn *c, uint64_t done) {
    struct msg *m = queue_at(c, 0);
    if (opt.rate > 0) {
        if (m->measured) {
            rounds_in_window++;
            add_sample(&latency, done - m->due);
            add_sample(&service, done - m->sent);
            add_sample(&lag, m->sent - m->due);
        }
    } else if (phase == 2) {
        rounds_in_window++;
        add_sample(&latency, done - m->sent);
    }
    c->head = (c->head + 1) % queue_cap;
    c->len--;
    c->rounds++;
}

/* When the schedule's slot is due: connection slot % connections sends it. */
static uint64_t slot_time(uint64_t slot) { return t0 + (uint64_t)((double)slot * 1e9 / opt.rate); }

/* Queue what is due on this connection while the ring has room (open loop). */
static void queue_due(struct conn *c, int index) {
    while (c->due > 0 && c->len < queue_cap) {
        uint64_t slot = c->sched_k * (uint64_t)opt.connections + (uint64_t)index;
        queue_message(c, index, slot_time(slot));
        c->sched_k++;
        c->due--;
    }
}

/* The connection is up (and its TLS handshake done): the first message goes. */
static void start_sending(struct conn *c, int index) {
    c->state = ACTIVE;
    queue_message(c, index, 0);
    pump_send(c, index);
}

/* One step of the TLS handshake, on whatever event the last step waited for. */
static void handshake(struct conn *c, int index) {
#ifdef ECHO20_TLS
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        if (tls_version[0] == '\0')
            snprintf(tls_version, sizeof tls_version, "%s %s", SSL_get_version(c->ssl),
                     SSL_get_cipher_name(c->ssl));
        start_sending(c, index);
        return;
    }
    errno = 0;
    if (tls_result(c->ssl, r) < 0 && errno == EAGAIN) {
        set_out_interest(c, index, SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_WRITE);
        return;
    }
    record_error(index, "TLS handshake: %s",
                 errno == EPROTO ? tls_error : errno ? strerror(errno) : "end of stream");
    drop(c);
#else
    (void)c;
    (void)index;
#endif
}

/* The connect finished: TLS begins, or the messages. */
static void connected(struct conn *c, int index) {
#ifdef ECHO20_TLS
    if (tls_ctx != NULL) {
        c->ssl = SSL_new(tls_ctx);
        if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd) ||
            !SSL_set_tlsext_host_name(c->ssl, opt.tls_name) ||
            !SSL_set1_host(c->ssl, opt.tls_name))
            die("SSL_new");
        SSL_set_connect_state(c->ssl);
        c->state = HANDSHAKING;
        handshake(c, index);
        return;
    }
#endif
    start_sending(c, index);
}

/* One read of replies, checked; then the next message if one is owed. Returns -1 when
 * nothing more can be read now (or the connection was dropped), else 1 when this read
 * completed the connection's first round trip, 0 when not. */
static int read_replies(struct conn *c, int index) {
    memcpy(readbuf, c->left, c->nleft);
    ssize_t n = io_recv(c, readbuf + c->nleft, READ_SIZE);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return -1;
    if (n <= 0) {
        record_error(index, "server closed the connection with %" PRIu64 " of %" PRIu64
                     " bytes sent unanswered (%s)",
                     c->stream_sent - c->stream_checked, c->stream_sent,
                     n == 0 ? "end of stream" : error_text(errno));
        drop(c);
        return -1;
    }
    uint64_t done = now_ns();
    size_t avail = c->nleft + (size_t)n, pos = 0;
    int first = 0;
    for (;;) {
        int k = parse_chunk(c, readbuf + pos, avail - pos);
        if (k == 0) break;
        if (k < 0) {
            record_error(index, "reply byte %" PRIu64 ": the reply is not the chunks of "
                         "the %zu-byte messages sent, each followed by its reversal",
                         2 * c->stream_checked + 1, opt.size);
            drop(c);
            return -1;
        }
        pos += 2 * (size_t)k;
        c->stream_checked += (uint64_t)k;
        while (c->len > c->unsent && c->stream_checked >= queue_at(c, 0)->start + opt.size) {
            complete(c, done);
            if (!c->answered) first = c->answered = 1;
        }
    }
    c->nleft = (unsigned)(avail - pos);
    memcpy(c->left, readbuf + pos, c->nleft);
    if (opt.idle) {
        if (c->answered && c->len == 0) {
            c->state = IDLE;
            set_out_interest(c, index, 0);
        }
    } else if (opt.rate > 0 && phase >= 1) {
        queue_due(c, index);
        pump_send(c, index);
    } else if (c->len == 0 && phase != 3) {
        queue_message(c, index, 0);
        pump_send(c, index);
    }
    return first;
}

/* Returns 1 when this event completed the connection's first round trip. */
static int on_event(int index, uint32_t events) {
    struct conn *c = &conns[index];
    if (c->state == DEAD) return 0;
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            record_error(index, "connect: %s", strerror(err));
            drop(c);
            return 0;
        }
        if (events & EPOLLOUT) connected(c, index);
        return 0;
    }
    if (c->state == HANDSHAKING) {
        handshake(c, index);
        return 0;
    }
    if ((events & EPOLLOUT) && c->unsent > 0) {
        pump_send(c, index);
        if (c->state == DEAD) return 0;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return 0;
    /* Plain TCP: one recv() per event, as the servers do. TLS: every record waiting,
     * since OpenSSL may hold decrypted bytes that epoll cannot see. */
    int first = 0;
    for (;;) {
        int r = read_replies(c, index);
        if (r < 0) break;
        first |= r;
#ifdef ECHO20_TLS
        if (c->ssl != NULL && c->state != DEAD) continue;
#endif
        break;
    }
    return first;
}

static void open_conn(int index) {
    struct conn *c = &conns[index];
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    if (opt.unix_path == NULL) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->queue = calloc(queue_cap, sizeof *c->queue);
    if (c->queue == NULL) die("calloc");
    c->state = CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        record_error(index, "connect: %s", strerror(errno));
        drop(c);
    }
}

/* --- the open loop's clock ------------------------------------------------------ */

/* Hand every slot due by `now` to its connection and send what can be sent. */
static void release_due(uint64_t now) {
    while (slot_time(next_slot) <= now) {
        uint64_t due = slot_time(next_slot);
        if (due >= window_end) break; /* the window is over: no more */
        int index = (int)(next_slot % (uint64_t)opt.connections);
        next_slot++;
        if (due >= window_start && due < window_end) measured_due++;
        struct conn *c = &conns[index];
        if (c->state != ACTIVE) continue;
        c->due++;
        queue_due(c, index);
        pump_send(c, index);
    }
}

static void arm_timer(uint64_t at) {
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(at / 1000000000u),
                                          .tv_nsec = (long)(at % 1000000000u)}};
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    if (timerfd_settime(timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
}

/* --- main ----------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
            "usage: c_loadgen (--port P [--host 127.0.0.1] | --unix PATH) [--connections 1]\n"
            "                 [--size 8]\n"
            "                 [--warmup 1] [--duration 3] [--server-pid PID] [--cpu N]\n"
            "                 [--ramp-timeout 60] [--seed 1] [--rate R] [--samples FILE]\n"
            "                 [--service-samples FILE] [--idle]\n"
            "                 [--tls-ca CA.pem [--tls-name localhost]]\n");
    exit(2);
}

static double parse_double(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0' || v < 0) usage();
    return v;
}

static long parse_long(const char *s, long lo, long hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < lo || v > hi) usage();
    return v;
}

static void print_percentiles(const char *name, const struct samples *s) {
    printf(", \"%s\": {\"p50\": %" PRIu64 ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64
           ", \"p99.9\": %" PRIu64 ", \"p99.99\": %" PRIu64 ", \"max\": %" PRIu64 "}",
           name, percentile(s, 0.50), percentile(s, 0.90), percentile(s, 0.99),
           percentile(s, 0.999), percentile(s, 0.9999), s->n ? s->v[s->n - 1] : 0);
}

static void print_report(const struct snapshot *a, const struct snapshot *b, int ready,
                         int measured) {
    qsort(latency.v, latency.n, sizeof *latency.v, cmp_u64);
    qsort(service.v, service.n, sizeof *service.v, cmp_u64);
    qsort(lag.v, lag.n, sizeof *lag.v, cmp_u64);
    write_samples(&latency, opt.samples_path);
    write_samples(&service, opt.service_path);
    printf("{\"mode\": \"%s\", \"rate\": %.3f", opt.rate > 0 ? "open" : "closed", opt.rate);
    printf(", \"connections\": %d, \"size\": %zu, \"ready\": %d, \"measured\": %s",
           opt.connections, opt.size, ready, measured ? "true" : "false");
    printf(", \"round_trips\": %" PRIu64 ", \"elapsed_s\": %.6f", rounds_in_window,
           measured ? (double)(b->t_ns - a->t_ns) / 1e9 : 0.0);
    printf(", \"due_in_window\": %" PRIu64 ", \"unfinished\": %" PRIu64, measured_due,
           unfinished);
    printf(", \"samples\": %zu", latency.n);
    print_percentiles("latency_ns", &latency);
    print_percentiles("service_ns", &service);
    print_percentiles("send_lag_ns", &lag);
    long long ticks = measured && a->server_ticks >= 0 && b->server_ticks >= 0
                          ? b->server_ticks - a->server_ticks
                          : -1;
    long long ns = measured && a->server_ns >= 0 && b->server_ns >= 0 ? b->server_ns - a->server_ns
                                                                       : -1;
    printf(", \"server_cpu_ticks\": %lld, \"ticks_per_s\": %ld, \"server_cpu_ns\": %lld", ticks,
           sysconf(_SC_CLK_TCK), ns);
    printf(", \"loadgen_cpu_us\": %" PRIu64, measured ? b->self_cpu_us - a->self_cpu_us : 0);
    printf(", \"cpu_busy_ticks\": [");
    int ncpus = measured && a->ncpus == b->ncpus ? a->ncpus : 0;
    for (int i = 0; i < ncpus; i++) printf("%s%llu", i ? ", " : "", b->busy[i] - a->busy[i]);
    printf("], \"cpu_total_ticks\": [");
    for (int i = 0; i < ncpus; i++) printf("%s%llu", i ? ", " : "", b->total[i] - a->total[i]);
    printf("], \"cpu_steal_ticks\": [");
    for (int i = 0; i < ncpus; i++) printf("%s%llu", i ? ", " : "", b->steal[i] - a->steal[i]);
    printf("], \"ramp_timed_out\": %s", ramp_timed_out ? "true" : "false");
    for (char *p = tls_version; *p; p++) /* keep the JSON string simple */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
    printf(", \"tls\": \"%s\"", tls_version);
    printf(", \"errors\": %" PRIu64 ", \"first_error\": \"%s\"}\n", errors, first_error);
    fflush(stdout);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--idle") == 0) {
            opt.idle = 1;
            continue;
        }
        if (v == NULL) usage();
        i++;
        if (strcmp(a, "--host") == 0) opt.host = v;
        else if (strcmp(a, "--unix") == 0) opt.unix_path = v;
        else if (strcmp(a, "--port") == 0) opt.port = (int)parse_long(v, 1, 65535);
        else if (strcmp(a, "--connections") == 0) opt.connections = (int)parse_long(v, 1, 1000000);
        else if (strcmp(a, "--size") == 0) opt.size = (size_t)parse_long(v, 1, 1L << 30);
        else if (strcmp(a, "--warmup") == 0) opt.warmup = parse_double(v);
        else if (strcmp(a, "--duration") == 0) opt.duration = parse_double(v);
        else if (strcmp(a, "--ramp-timeout") == 0) opt.ramp_timeout = parse_double(v);
        else if (strcmp(a, "--rate") == 0) opt.rate = parse_double(v);
        else if (strcmp(a, "--server-pid") == 0) opt.server_pid = (int)parse_long(v, 1, 1L << 30);
        else if (strcmp(a, "--cpu") == 0) opt.cpu = (int)parse_long(v, 0, MAX_CPUS - 1);
        else if (strcmp(a, "--seed") == 0) opt.seed = (unsigned)parse_long(v, 0, 1L << 30);
        else if (strcmp(a, "--samples") == 0) opt.samples_path = v;
        else if (strcmp(a, "--service-samples") == 0) opt.service_path = v;
        else if (strcmp(a, "--tls-ca") == 0) opt.tls_ca = v;
        else if (strcmp(a, "--tls-name") == 0) opt.tls_name = v;
        else usage();
    }
    if (opt.port == 0 && opt.unix_path == NULL) usage();
    /* OpenSSL writes with write(), not send(MSG_NOSIGNAL): a peer gone mid-write must
     * be an error to handle, not a signal that kills the program. */
    signal(SIGPIPE, SIG_IGN);
    queue_cap = opt.rate > 0 ? MAX_QUEUE : 1;
    if (opt.tls_ca != NULL) {
#ifdef ECHO20_TLS
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (tls_ctx == NULL || SSL_CTX_load_verify_locations(tls_ctx, opt.tls_ca, NULL) != 1) {
            fprintf(stderr, "c_loadgen: cannot load %s\n", opt.tls_ca);
            return 2;
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
        /* Writes may end inside a message, retried from where they stopped. */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
#else
        fprintf(stderr, "c_loadgen: built without TLS (-DECHO20_TLS, OpenSSL)\n");
        return 2;
#endif
    }

    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    /* Wake up when the timer says, not up to 50 us later (the default timer slack). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&addr, 0, sizeof addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    struct sockaddr_un *au = (struct sockaddr_un *)&addr;
    if (opt.unix_path != NULL) {
        if (strlen(opt.unix_path) >= sizeof au->sun_path) {
            fprintf(stderr, "c_loadgen: Unix socket path too long: %s\n", opt.unix_path);
            return 2;
        }
        au->sun_family = AF_UNIX;
        strcpy(au->sun_path, opt.unix_path);
        addrlen = sizeof *au;
    } else if (inet_pton(AF_INET, opt.host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)opt.port);
        addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, opt.host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)opt.port);
        addrlen = sizeof *a6;
    } else {
        fprintf(stderr, "c_loadgen: not a numeric address: %s\n", opt.host);
        return 2;
    }

    /* Random bytes, none equal to its neighbour and none an 'o' (so no chunk is "over"). */
    pattern = malloc(opt.size + OFFSETS);
    readbuf = malloc(READ_SIZE + 2 * CHUNK_SIZE);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    if (!pattern || !readbuf || !conns) die("malloc");
    srandom(opt.seed);
    for (size_t i = 0; i < opt.size + OFFSETS; i++) {
        unsigned char b;
        do b = (unsigned char)(random() & 0xff);
        while (b == 'o' || (i > 0 && b == pattern[i - 1]));
        pattern[i] = b;
    }
    for (int i = 0; i < opt.connections; i++) conns[i].fd = -1;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    if (opt.rate > 0) {
        timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (timerfd < 0) die("timerfd_create");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = TIMER_TAG};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, timerfd, &ev) < 0) die("epoll_ctl");
    }

    struct snapshot s0, s1;
    memset(&s0, 0, sizeof s0);
    memset(&s1, 0, sizeof s1);
    int launched = 0, ready = 0, measured = 0;
    uint64_t start = now_ns();
    uint64_t ramp_deadline = start + (uint64_t)(opt.ramp_timeout * 1e9);
    uint64_t drain_deadline = 0;
    window_start = window_end = UINT64_MAX;
    struct epoll_event events[MAX_EVENTS];

    for (;;) {
        int alive = 0;
        while (launched < opt.connections && launched - ready < RAMP_WINDOW) {
            open_conn(launched++);
        }
        for (int i = 0; i < launched && !alive; i++) alive = conns[i].state != DEAD;
        if (!alive) break; /* every connection failed: the report says why */

        uint64_t now = now_ns();
        if (phase == 0 && ready + (int)errors >= opt.connections) {
            if (opt.idle) break;
            phase = 1;
            t0 = now;
            window_start = now + (uint64_t)(opt.warmup * 1e9);
            window_end = window_start + (uint64_t)(opt.duration * 1e9);
        }
        if (phase == 0 && now > ramp_deadline) {
            ramp_timed_out = 1; /* too slow to measure, which is not a wrong reply */
            snprintf(first_error, sizeof first_error,
                     "only %d of %d connections answered within %g s", ready, opt.connections,
                     opt.ramp_timeout);
            break;
        }
        if (phase == 1 && now >= window_start) {
            take_snapshot(&s0);
            phase = 2;
            now = s0.t_ns;
        }
        if (phase == 2 && now >= window_end) {
            take_snapshot(&s1);
            measured = 1;
            if (opt.rate <= 0) break;
            phase = 3;
            drain_deadline = now + (uint64_t)(DRAIN_SECONDS * 1e9);
        }
        if (phase == 3 && (now >= drain_deadline || rounds_in_window + errors >= measured_due))
            break;
        if (opt.rate > 0 && phase >= 1) release_due(now);
        uint64_t deadline = phase == 0   ? now + 100000000u
                            : phase == 1 ? window_start
                            : phase == 2 ? window_end
                                         : drain_deadline;
        int timeout_ms;
        if (opt.rate > 0 && phase >= 1) {
            /* The next send is due before the next phase change: the timer wakes us. */
            uint64_t next = slot_time(next_slot);
            if (phase < 3 && next < deadline) deadline = next;
            arm_timer(deadline);
            timeout_ms = -1;
        } else {
            timeout_ms = deadline > now ? (int)((deadline - now + 999999) / 1000000) : 0;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == TIMER_TAG) {
                uint64_t expirations;
                if (read(timerfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("read timerfd");
                continue;
            }
            ready += on_event((int)events[i].data.u32, events[i].events);
        }
    }
    if (phase == 3 && rounds_in_window + errors < measured_due)
        unfinished = measured_due - rounds_in_window;

    if (opt.idle && first_error[0] == '\0') {
        printf("ready %d\n", ready);
        fflush(stdout);
        char line[64];
        if (read(STDIN_FILENO, line, sizeof line) < 0 && errno != EINTR) die("read");
        /* A connection the server dropped while idle shows as readable (end of stream). */
        int n = epoll_wait(epfd, events, MAX_EVENTS, 0);
        for (int i = 0; i < n; i++) {
            int index = (int)events[i].data.u32;
            if (conns[index].state != DEAD)
                record_error(index, "closed by the server while idle");
        }
    }
    for (int i = 0; i < opt.connections; i++) {
        if (conns[i].fd >= 0) close(conns[i].fd);
    }
    print_report(&s0, &s1, ready, measured);
    return 0;
}
