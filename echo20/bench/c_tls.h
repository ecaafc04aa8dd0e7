/* OpenSSL's results read as recv()'s and send()'s, for the benchmark's C server and load
 * generator when they are built with -DECHO20_TLS (and -lssl -lcrypto). Included by both,
 * compiled into each: every function here is static. */

#ifndef ECHO20_C_TLS_H
#define ECHO20_C_TLS_H
#ifdef ECHO20_TLS

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

/* Why the last TLS call failed, when it returned -1 with errno EPROTO. */
static char tls_error[256];

static void keep_tls_error(SSL *ssl) {
    unsigned long e = ERR_get_error();
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        snprintf(tls_error, sizeof tls_error, "TLS: %s", X509_verify_cert_error_string(verify));
    } else {
        strcpy(tls_error, "TLS: ");
        ERR_error_string_n(e, tls_error + 5, sizeof tls_error - 5);
    }
    ERR_clear_error();
}

/* An SSL_* result (errno cleared before the call) as recv()/send() give theirs: > 0
 * bytes, 0 end of stream, -1 with errno EAGAIN when it must wait for the socket, -1 with
 * errno set otherwise (EPROTO: tls_error says why). */
static ssize_t tls_result(SSL *ssl, int n) {
    if (n > 0) return n;
    int saved = errno;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (saved == 0) return 0; /* the peer closed without close_notify */
        errno = saved;
        return -1;
    default:
        keep_tls_error(ssl);
        errno = EPROTO;
        return -1;
    }
}

static int tls_length(size_t len) { return len > INT32_MAX ? INT32_MAX : (int)len; }

static ssize_t tls_recv(SSL *ssl, void *buf, size_t len) {
    errno = 0;
    return tls_result(ssl, SSL_read(ssl, buf, tls_length(len)));
}

/* Under SSL_MODE_ENABLE_PARTIAL_WRITE; a write that must wait is retried with the same
 * length, from a buffer that may have moved (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). */
static ssize_t tls_send(SSL *ssl, const void *buf, size_t len) {
    errno = 0;
    return tls_result(ssl, SSL_write(ssl, buf, tls_length(len)));
}

#endif
#endif
