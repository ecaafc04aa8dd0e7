/* The benchmark's C reference: a minimal epoll echo20 server.
 *
 * What every Python server in the benchmark is compared against. It does the least a
 * server of this protocol can do: one recv() per batch of waiting bytes (up to 256 KiB,
 * asyncio's read size), the batch cut into 20-byte chunks and a shorter rest, each
 * chunk followed by its reversal in one output buffer, one send() per batch. A chunk
 * equal to exactly "over" closes the connection after its reply. TCP_NODELAY is on,
 * as asyncio and uvloop set it. Output the kernel does not take at once waits in a
 * per-connection buffer, and reading pauses until it has gone (backpressure).
 *
 * Build and run (bench.py does both):
 *
 *     cc -O2 -o c_echo_server tools/c_echo_server.c
 *     ./c_echo_server --port 0
 *     echo20 listening on 127.0.0.1:40831 (loop: epoll)
 *     ./c_echo_server --unix /tmp/echo20.sock
 *     echo20 listening on unix:/tmp/echo20.sock (loop: epoll)
 *
 * Built with -DECHO20_TLS (and -lssl -lcrypto, OpenSSL; echo20-bench run --tls does it)
 * it serves TLS with --certfile CHAIN.pem --keyfile KEY.pem: the same work through
 * OpenSSL's SSL_read and SSL_write, all the records waiting read into one batch.
 *
 * SIGTERM or SIGINT exits 0 (the kernel closes every connection).
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "c_tls.h"

#define CHUNK_SIZE 20
/* asyncio's selector transports read up to 256 KiB per recv(); the same here, so large
 * messages cost the same number of reads in both. */
#define READ_SIZE (256 * 1024)
#define MAX_EVENTS 512

struct conn {
    unsigned char *pending; /* reply bytes the kernel has not taken yet */
    size_t pending_len;
    size_t pending_off;
    int closing; /* "over" was answered: close once pending is sent */
#ifdef ECHO20_TLS
    SSL *ssl;
#endif
};

static struct conn *conns; /* indexed by descriptor */
static size_t conns_cap;
static int epfd;
static unsigned char inbuf[READ_SIZE];
static unsigned char outbuf[2 * READ_SIZE];

static void die(const char *what) {
    fprintf(stderr, "c_echo_server: %s: %s\n", what, strerror(errno));
    exit(1);
}

#ifdef ECHO20_TLS
static SSL_CTX *tls_ctx; /* NULL: plain TCP */
#endif

static ssize_t io_recv(int fd, unsigned char *buf, size_t len) {
#ifdef ECHO20_TLS
    if (conns[fd].ssl != NULL) return tls_recv(conns[fd].ssl, buf, len);
#endif
    return recv(fd, buf, len, 0);
}

static ssize_t io_send(int fd, const unsigned char *buf, size_t len) {
#ifdef ECHO20_TLS
    if (conns[fd].ssl != NULL) return tls_send(conns[fd].ssl, buf, len);
#endif
    return send(fd, buf, len, MSG_NOSIGNAL);
}

static void close_conn(int fd) {
#ifdef ECHO20_TLS
    if (conns[fd].ssl != NULL) {
        SSL_shutdown(conns[fd].ssl); /* close_notify, best effort: no waiting */
        SSL_free(conns[fd].ssl);
        ERR_clear_error();
    }
#endif
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
    close(fd); /* also removes it from the epoll set */
}

static int answer(int fd, size_t len);

static void set_interest(int fd, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl");
}

/* One send() of the whole reply; what the kernel refuses waits for EPOLLOUT. Returns 0
 * when the connection is closed now, 1 while it is open. */
static int send_reply(int fd, const unsigned char *out, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = io_send(fd, out + off, len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* Under TLS the retry is the same write (same length) from this copy. */
            struct conn *c = &conns[fd];
            c->pending = malloc(len - off);
            if (c->pending == NULL) die("malloc");
            memcpy(c->pending, out + off, len - off);
            c->pending_len = len - off;
            c->pending_off = 0;
            set_interest(fd, EPOLLOUT); /* reading waits until the reply is gone */
            return 1;
        } else {
            close_conn(fd); /* reset or broken pipe: the peer vanished */
            return 0;
        }
    }
    if (conns[fd].closing) {
        close_conn(fd);
        return 0;
    }
    return 1;
}

/* One batch: what one recv() returns; under TLS, every record waiting (up to the
 * buffer), as one recv() takes every byte waiting. Returns 1 when the connection is
 * still open and more may be read at once (TLS bytes decrypted but not yet read). */
static int read_batch(int fd) {
    size_t len = 0;
    int ended = 0;
    for (;;) {
        ssize_t n = io_recv(fd, inbuf + len, sizeof inbuf - len);
        if (n > 0) {
            len += (size_t)n;
#ifdef ECHO20_TLS
            if (conns[fd].ssl != NULL && len < sizeof inbuf) continue;
#endif
            break;
        }
        if (n < 0 && errno == EINTR) continue;
        /* Nothing more for now; or the end of stream, or an error such as a reset. */
        ended = !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        break;
    }
    if (len > 0 && !answer(fd, len)) return 0;
    /* With a reply still waiting, the end of stream is read again once it has gone. */
    if (ended && conns[fd].pending == NULL) {
        close_conn(fd);
        return 0;
    }
#ifdef ECHO20_TLS
    /* A full buffer may leave decrypted bytes inside OpenSSL that epoll cannot see. */
    return len == sizeof inbuf && conns[fd].ssl != NULL && conns[fd].pending == NULL &&
           SSL_pending(conns[fd].ssl) > 0;
#else
    return 0;
#endif
}

static void on_readable(int fd) {
    while (read_batch(fd)) {
    }
}

/* The batch in inbuf answered; 0 when that closed the connection. */
static int answer(int fd, size_t len) {
    size_t out = 0;
    for (size_t start = 0; start < len; start += CHUNK_SIZE) {
        size_t k = len - start < CHUNK_SIZE ? len - start : CHUNK_SIZE;
        const unsigned char *chunk = inbuf + start;
        memcpy(outbuf + out, chunk, k);
        out += k;
        for (size_t i = 0; i < k; i++) outbuf[out + i] = chunk[k - 1 - i];
        out += k;
        if (k == 4 && memcmp(chunk, "over", 4) == 0) {
            conns[fd].closing = 1; /* bytes after "over" are discarded */
            break;
        }
    }
    return send_reply(fd, outbuf, out);
}

static void on_writable(int fd) {
    struct conn *c = &conns[fd];
    while (c->pending_off < c->pending_len) {
        ssize_t n = io_send(fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
        if (n > 0) {
            c->pending_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            close_conn(fd);
            return;
        }
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    if (c->closing) {
        close_conn(fd);
        return;
    }
    set_interest(fd, EPOLLIN);
}

static int unix_socket; /* listening on a Unix socket: no TCP options */

static int accept_tls(int fd) {
#ifdef ECHO20_TLS
    if (tls_ctx == NULL) return 1;
    conns[fd].ssl = SSL_new(tls_ctx);
    if (conns[fd].ssl == NULL || !SSL_set_fd(conns[fd].ssl, fd)) return 0;
    /* The handshake runs inside the first SSL_read calls. */
    SSL_set_accept_state(conns[fd].ssl);
#else
    (void)fd;
#endif
    return 1;
}

static void on_acceptable(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "c_echo_server: accept: %s\n", strerror(errno));
                return;
            }
            die("accept4");
        }
        if ((size_t)fd >= conns_cap) { /* cannot happen: conns covers RLIMIT_NOFILE */
            close(fd);
            continue;
        }
        int one = 1;
        if (!unix_socket) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (!accept_tls(fd)) {
            close_conn(fd);
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

static void usage(void) {
    fprintf(stderr, "usage: c_echo_server [--host 127.0.0.1] [--port 8888] [--unix PATH]\n"
                    "                     [--certfile CHAIN.pem --keyfile KEY.pem]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = NULL, *certfile = NULL, *keyfile = NULL;
    long port = 8888;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            host = argv[++i];
        } else if (strcmp(argv[i], "--unix") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "--certfile") == 0 && i + 1 < argc) {
            certfile = argv[++i];
        } else if (strcmp(argv[i], "--keyfile") == 0 && i + 1 < argc) {
            keyfile = argv[++i];
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            port = strtol(argv[++i], &end, 10);
            if (*end != '\0' || port < 0 || port > 65535) usage();
        } else {
            usage();
        }
    }

    if (certfile != NULL) {
#ifdef ECHO20_TLS
        tls_ctx = SSL_CTX_new(TLS_server_method());
        if (tls_ctx == NULL ||
            SSL_CTX_use_certificate_chain_file(tls_ctx, certfile) != 1 ||
            SSL_CTX_use_PrivateKey_file(tls_ctx, keyfile ? keyfile : certfile,
                                        SSL_FILETYPE_PEM) != 1) {
            char text[256];
            ERR_error_string_n(ERR_get_error(), text, sizeof text);
            fprintf(stderr, "c_echo_server: cannot load %s: %s\n", certfile, text);
            return 2;
        }
        /* Writes may end inside a record, retried from a moved copy (send_reply). */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
#else
        (void)keyfile;
        fprintf(stderr, "c_echo_server: built without TLS (-DECHO20_TLS, OpenSSL)\n");
        return 2;
#endif
    }

    /* OpenSSL writes with write(), not send(MSG_NOSIGNAL): a peer gone mid-write must
     * be an error to handle, not a signal that kills the program. */
    signal(SIGPIPE, SIG_IGN);
    /* 10,000 idle connections need more descriptors than the usual soft limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit");
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    conns_cap = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20) ? 1u << 20
                                                                       : (size_t)rl.rlim_cur;
    conns = calloc(conns_cap, sizeof *conns);
    if (conns == NULL) die("calloc");

    struct sockaddr_storage addr;
    socklen_t addrlen;
    memset(&addr, 0, sizeof addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    struct sockaddr_un *au = (struct sockaddr_un *)&addr;
    if (path != NULL) {
        if (strlen(path) >= sizeof au->sun_path) {
            fprintf(stderr, "c_echo_server: Unix socket path too long: %s\n", path);
            return 2;
        }
        au->sun_family = AF_UNIX;
        strcpy(au->sun_path, path);
        addrlen = sizeof *au;
        unix_socket = 1;
        struct stat st; /* a socket left by an earlier server is replaced */
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path);
    } else if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        addrlen = sizeof *a6;
    } else {
        fprintf(stderr, "c_echo_server: not a numeric address: %s\n", host);
        return 2;
    }

    int lfd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    if (!unix_socket) setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, addrlen) < 0) die("bind");
    if (listen(lfd, SOMAXCONN) < 0) die("listen");
    addrlen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &addrlen) < 0) die("getsockname");

    /* SIGTERM and SIGINT arrive as readable events, so the loop ends cleanly. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) die("signalfd");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
    ev.data.fd = sfd;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) < 0) die("epoll_ctl");

    char text[INET6_ADDRSTRLEN];
    if (unix_socket) {
        printf("echo20 listening on unix:%s (loop: epoll)\n", path);
    } else if (addr.ss_family == AF_INET) {
        inet_ntop(AF_INET, &a4->sin_addr, text, sizeof text);
        printf("echo20 listening on %s:%u (loop: epoll)\n", text, ntohs(a4->sin_port));
    } else {
        inet_ntop(AF_INET6, &a6->sin6_addr, text, sizeof text);
        printf("echo20 listening on [%s]:%u (loop: epoll)\n", text, ntohs(a6->sin6_port));
    }
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == sfd) return 0; /* exiting closes every connection */
            if (fd == lfd) {
                on_acceptable(lfd);
            } else if (conns[fd].pending != NULL) {
                on_writable(fd); /* only EPOLLOUT (or an error) is asked for meanwhile */
            } else {
                on_readable(fd);
            }
        }
    }
}
