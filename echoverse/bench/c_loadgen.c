/* The benchmark's load generator: closed loop, one message in flight per connection.
 *
 * A Python client would spend more CPU per round trip than the servers it measures, so
 * the load comes from this small epoll program instead (bench.py compiles and runs it).
 *
 *     c_loadgen --port P --connections 16 --size 200 --warmup 1 --duration 3 \
 *               --server-pid PID [--cpu 1]
 *
 * Connections open at most RAMP_WINDOW at a time, each counted as ready once its first
 * reply is in, so a server's accept backlog never overflows. Once all are ready and the
 * warm-up has passed, the measured window starts: round trips completed in it, their
 * latencies (first byte sent to last byte received), the server's CPU time from its own
 * accounting (/proc/PID/stat utime + stime, in clock ticks, and the scheduler's run time
 * of each of its threads, /proc/PID/task/TID/schedstat, in nanoseconds: the same time,
 * without the 10 ms granularity), this program's CPU time, and every CPU's busy time
 * (/proc/stat) so bench.py can tell when something else shared a core.
 *
 * Every reply is checked: exactly 2N bytes that split into chunks of 1 to 20 bytes, each
 * followed by its reversal, whose echo halves join to the message. The server may cut
 * anywhere a batch ended, so the check searches for a cut (longest chunk first, dead
 * ends remembered: linear time). A connection whose reply is wrong, or that the server
 * closes, counts as an error and is dropped; the first error is described.
 *
 * With --idle each connection stops after its first round trip; the program prints
 * "ready N", waits for a line (or end of file) on stdin, checks that no connection was
 * closed meanwhile, closes them all and prints its report.
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
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_SIZE 20
/* Connections not yet answered at once: below every server's listen backlog (asyncio
 * 100, Tornado 128), so no SYN is ever dropped and retried a second later. */
#define RAMP_WINDOW 64
/* Messages start at one of this many offsets into a random pattern, so consecutive
 * replies differ and a stale or repeated reply cannot pass the check. */
#define OFFSETS 256
#define MAX_EVENTS 1024
#define MAX_CPUS 256

enum state { CONNECTING, ACTIVE, IDLE, DEAD };

struct conn {
    int fd;
    enum state state;
    int want_out; /* EPOLLOUT is in the interest set */
    int answered; /* the first reply came back */
    uint64_t rounds;
    const unsigned char *msg;
    size_t sent, got;
    unsigned char *reply;
    uint64_t t_start;
};

struct snapshot {
    uint64_t t_ns;
    long long server_ticks; /* -1: unknown */
    long long server_ns;    /* -1: unknown */
    uint64_t self_cpu_us;
    int ncpus;
    unsigned long long busy[MAX_CPUS], total[MAX_CPUS];
};

static struct {
    const char *host;
    int port, connections, server_pid, cpu, idle;
    size_t size;
    double warmup, duration, ramp_timeout;
    unsigned seed;
} opt = {"127.0.0.1", 0, 1, -1, -1, 0, 8, 1.0, 3.0, 60.0, 1};

static struct sockaddr_storage addr;
static socklen_t addrlen;
static int epfd;
static struct conn *conns;
static unsigned char *pattern;
/* Scratch for the reply check: DFS stack and dead-end marks, sized for one message. */
static uint32_t *dfs_pos;
static unsigned char *dfs_len;
static uint32_t *dead_gen;
static uint32_t generation;

static uint64_t *samples;
static size_t nsamples, samples_cap;
static uint64_t errors, rounds_in_window;
static int ramp_timed_out;
static char first_error[512];

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

/* --- the reply check ------------------------------------------------------------ */

static int chunk_fits(const unsigned char *m, const unsigned char *r, size_t p, size_t k) {
    const unsigned char *echo = r + 2 * p, *rev = echo + k;
    if (memcmp(echo, m + p, k) != 0) return 0;
    for (size_t i = 0; i < k; i++)
        if (rev[i] != m[p + k - 1 - i]) return 0;
    return 1;
}

/* 1 when reply (2n bytes) is m's chunks, each followed by its reversal. */
static int reply_is_valid(const unsigned char *m, size_t n, const unsigned char *r) {
    if (++generation == 0) { /* wrapped: forget every old mark */
        memset(dead_gen, 0, (n + 1) * sizeof *dead_gen);
        generation = 1;
    }
    size_t depth = 0;
    dfs_pos[0] = 0;
    dfs_len[0] = (unsigned char)(n < CHUNK_SIZE ? n : CHUNK_SIZE);
    for (;;) {
        size_t p = dfs_pos[depth];
        if (p == n) return 1;
        size_t k = dfs_len[depth];
        while (k > 0 && !(dead_gen[p + k] != generation && chunk_fits(m, r, p, k))) k--;
        if (k == 0) {
            dead_gen[p] = generation;
            if (depth == 0) return 0;
            depth--;
            continue;
        }
        dfs_len[depth] = (unsigned char)(k - 1);
        depth++;
        dfs_pos[depth] = (uint32_t)(p + k);
        size_t left = n - (p + k);
        dfs_len[depth] = (unsigned char)(left < CHUNK_SIZE ? left : CHUNK_SIZE);
    }
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

static void add_sample(uint64_t ns) {
    if (nsamples == samples_cap) {
        samples_cap = samples_cap ? 2 * samples_cap : 65536;
        samples = realloc(samples, samples_cap * sizeof *samples);
        if (samples == NULL) die("realloc");
    }
    samples[nsamples++] = ns;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted samples. */
static uint64_t percentile(double q) {
    if (nsamples == 0) return 0;
    size_t rank = (size_t)(q * (double)nsamples + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > nsamples) rank = nsamples;
    return samples[rank - 1];
}

/* --- connections ---------------------------------------------------------------- */

static void set_out_interest(struct conn *c, int index, int want) {
    if (c->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = want;
}

static void drop(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = DEAD;
}

static void open_conn(int index) {
    struct conn *c = &conns[index];
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->reply = malloc(2 * opt.size);
    if (c->reply == NULL) die("malloc");
    c->state = CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        record_error(index, "connect: %s", strerror(errno));
        drop(c);
    }
}

static void pump_send(struct conn *c, int index) {
    while (c->sent < opt.size) {
        ssize_t n = send(c->fd, c->msg + c->sent, opt.size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out_interest(c, index, 1); /* the reply is read meanwhile: no deadlock */
            return;
        } else {
            record_error(index, "send: %s", n < 0 ? strerror(errno) : "no progress");
            drop(c);
            return;
        }
    }
    set_out_interest(c, index, 0);
}

static void start_round(struct conn *c, int index) {
    size_t offset = ((size_t)index * 31u + c->rounds * 7u) % OFFSETS;
    c->msg = pattern + offset;
    c->sent = c->got = 0;
    c->t_start = now_ns();
    pump_send(c, index);
}

/* Returns 1 when this event completed the connection's first round trip. */
static int on_event(int index, uint32_t events, int measuring) {
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
        if (!(events & EPOLLOUT)) return 0;
        c->state = ACTIVE;
        start_round(c, index);
        return 0;
    }
    if ((events & EPOLLOUT) && c->sent < opt.size) {
        pump_send(c, index);
        if (c->state == DEAD) return 0;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return 0;
    size_t want = 2 * opt.size - c->got;
    ssize_t n = recv(c->fd, c->reply + c->got, want, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (n <= 0) {
        record_error(index, "server closed the connection after %zu of %zu reply bytes (%s)",
                     c->got, 2 * opt.size, n == 0 ? "end of stream" : strerror(errno));
        drop(c);
        return 0;
    }
    c->got += (size_t)n;
    if (c->got < 2 * opt.size) return 0;
    if (c->sent < opt.size) { /* a whole reply to a message not yet sent: impossible */
        record_error(index, "reply complete before the message was sent");
        drop(c);
        return 0;
    }
    uint64_t done = now_ns();
    if (!reply_is_valid(c->msg, opt.size, c->reply)) {
        record_error(index, "round trip %" PRIu64 ": the %zu-byte reply is not the chunks of "
                     "the %zu-byte message each followed by its reversal",
                     c->rounds, 2 * opt.size, opt.size);
        drop(c);
        return 0;
    }
    if (measuring) {
        rounds_in_window++;
        add_sample(done - c->t_start);
    }
    c->rounds++;
    int first = !c->answered;
    c->answered = 1;
    if (opt.idle) {
        c->state = IDLE;
        set_out_interest(c, index, 0);
    } else {
        start_round(c, index);
    }
    return first;
}

/* --- main ----------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
            "usage: c_loadgen --port P [--host 127.0.0.1] [--connections 1] [--size 8]\n"
            "                 [--warmup 1] [--duration 3] [--server-pid PID] [--cpu N]\n"
            "                 [--ramp-timeout 60] [--seed 1] [--idle]\n");
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

static void print_report(const struct snapshot *a, const struct snapshot *b, int ready,
                         int measured) {
    qsort(samples, nsamples, sizeof *samples, cmp_u64);
    printf("{\"connections\": %d, \"size\": %zu, \"ready\": %d, \"measured\": %s",
           opt.connections, opt.size, ready, measured ? "true" : "false");
    printf(", \"round_trips\": %" PRIu64 ", \"elapsed_s\": %.6f", rounds_in_window,
           measured ? (double)(b->t_ns - a->t_ns) / 1e9 : 0.0);
    printf(", \"latency_ns\": {\"p50\": %" PRIu64 ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64
           ", \"p99.9\": %" PRIu64 ", \"max\": %" PRIu64 "}",
           percentile(0.50), percentile(0.90), percentile(0.99), percentile(0.999),
           nsamples ? samples[nsamples - 1] : 0);
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
    printf("], \"ramp_timed_out\": %s", ramp_timed_out ? "true" : "false");
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
        else if (strcmp(a, "--port") == 0) opt.port = (int)parse_long(v, 1, 65535);
        else if (strcmp(a, "--connections") == 0) opt.connections = (int)parse_long(v, 1, 1000000);
        else if (strcmp(a, "--size") == 0) opt.size = (size_t)parse_long(v, 1, 1L << 30);
        else if (strcmp(a, "--warmup") == 0) opt.warmup = parse_double(v);
        else if (strcmp(a, "--duration") == 0) opt.duration = parse_double(v);
        else if (strcmp(a, "--ramp-timeout") == 0) opt.ramp_timeout = parse_double(v);
        else if (strcmp(a, "--server-pid") == 0) opt.server_pid = (int)parse_long(v, 1, 1L << 30);
        else if (strcmp(a, "--cpu") == 0) opt.cpu = (int)parse_long(v, 0, MAX_CPUS - 1);
        else if (strcmp(a, "--seed") == 0) opt.seed = (unsigned)parse_long(v, 0, 1L << 30);
        else usage();
    }
    if (opt.port == 0) usage();

    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&addr, 0, sizeof addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, opt.host, &a4->sin_addr) == 1) {
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

    /* Random bytes of every value but 'o', so no chunk can ever be "over". */
    pattern = malloc(opt.size + OFFSETS);
    if (pattern == NULL) die("malloc");
    srandom(opt.seed);
    for (size_t i = 0; i < opt.size + OFFSETS; i++) {
        unsigned char b = (unsigned char)(random() & 0xff);
        pattern[i] = b == 'o' ? 'O' : b;
    }
    dfs_pos = malloc((opt.size + 1) * sizeof *dfs_pos);
    dfs_len = malloc(opt.size + 1);
    dead_gen = calloc(opt.size + 1, sizeof *dead_gen);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    if (!dfs_pos || !dfs_len || !dead_gen || !conns) die("malloc");
    for (int i = 0; i < opt.connections; i++) conns[i].fd = -1;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");

    struct snapshot s0, s1;
    memset(&s0, 0, sizeof s0);
    memset(&s1, 0, sizeof s1);
    int launched = 0, ready = 0, measured = 0;
    /* 0: ramping up, 1: warming up, 2: measuring */
    int phase = 0;
    uint64_t t0 = now_ns();
    uint64_t ramp_deadline = t0 + (uint64_t)(opt.ramp_timeout * 1e9);
    uint64_t measure_at = 0, end_at = 0;
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
            measure_at = now + (uint64_t)(opt.warmup * 1e9);
        }
        if (phase == 0 && now > ramp_deadline) {
            ramp_timed_out = 1; /* too slow to measure, which is not a wrong reply */
            snprintf(first_error, sizeof first_error,
                     "only %d of %d connections answered within %g s", ready, opt.connections,
                     opt.ramp_timeout);
            break;
        }
        if (phase == 1 && now >= measure_at) {
            take_snapshot(&s0);
            end_at = s0.t_ns + (uint64_t)(opt.duration * 1e9);
            phase = 2;
            now = s0.t_ns;
        }
        if (phase == 2 && now >= end_at) {
            take_snapshot(&s1);
            measured = 1;
            break;
        }
        uint64_t deadline = phase == 0 ? now + 100000000u : phase == 1 ? measure_at : end_at;
        int timeout_ms = deadline > now ? (int)((deadline - now + 999999) / 1000000) : 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            ready += on_event((int)events[i].data.u32, events[i].events, phase == 2);
        }
    }

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
