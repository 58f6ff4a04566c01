/*
 * capacity: how many sessions a server's cache keeps (the capacity benchmark, bench/run.py
 * --only capacity).
 *
 *   capacity PORT COUNT PROCS 1.2|1.3 [CLIENT_CERT CLIENT_KEY]
 *
 * Phase 1: COUNT full handshakes against 127.0.0.1:PORT (PROCS client processes, each doing
 * its share), each with one HTTP/1.0 request read to EOF (which also reads TLS 1.3 tickets)
 * and close_notify, so the server keeps its session. Each client keeps the session it was
 * left (TLS 1.2 without the ticket extension: resumption by id; TLS 1.3: the last ticket,
 * which is what clients offer). With a client certificate, every session carries it.
 *
 * Phase 2, once every process has finished phase 1: each kept session is offered once by a
 * connection that reads up to the ServerHello and drops. Nothing of the client's second flight
 * reaches the server, so the probe makes no session and the server stores nothing: the probe
 * of one session cannot evict another. Whether the server resumed is read from its
 * ServerHello (OpenSSL's client has parsed it: SSL_session_reused).
 *
 * Prints one JSON object: offered, resumed, failed (full handshakes that did not complete or
 * probes that saw no ServerHello) and seconds. Loopback only; every socket has a 5 s timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_PROCS 16

struct tally {
    long offered, resumed, failed;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A full handshake, one request, close_notify: the session the server left us, or NULL. */
static SSL_SESSION *full_handshake(SSL_CTX *ctx, int port)
{
    int fd = connect_local(port);
    if (fd < 0)
        return NULL;
    SSL *s = SSL_new(ctx);
    SSL_set_fd(s, fd);
    SSL_SESSION *got = NULL;
    if (SSL_connect(s) == 1) {
        static const char req[] = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
        char buf[4096];
        SSL_write(s, req, sizeof req - 1);
        while (SSL_read(s, buf, sizeof buf) > 0)
            ;
        got = SSL_get1_session(s);
        SSL_shutdown(s);
    }
    SSL_free(s);
    close(fd);
    ERR_clear_error();
    return got;
}

/* Set by the message callback when the ServerHello (or a HelloRetryRequest) has been read. */
static int server_hello_seen;

static void watch_server_hello(int write_p, int version, int content_type, const void *buf, size_t len,
                               SSL *ssl, void *arg)
{
    (void)version, (void)ssl, (void)arg;
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 && ((const unsigned char *)buf)[0] == SSL3_MT_SERVER_HELLO)
        server_hello_seen = 1;
}

/* Sends what the client wrote so far; 0 when the socket failed. */
static int flush_to(int fd, BIO *wbio)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(wbio, buf, sizeof buf)) > 0)
        if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
            return 0;
    return 1;
}

/* Offers `sess` and drops after the ServerHello: 1 resumed, 0 not, -1 no ServerHello. Over
 * memory BIOs, so the client's second flight (written while OpenSSL processes the ServerHello
 * and what came with it) is never sent. */
static int probe(SSL_CTX *ctx, int port, SSL_SESSION *sess)
{
    int fd = connect_local(port);
    if (fd < 0)
        return -1;
    SSL *s = SSL_new(ctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(s, rbio, wbio);
    SSL_set_session(s, sess);
    SSL_set_msg_callback(s, watch_server_hello);
    server_hello_seen = 0;
    int result = -1;
    for (;;) {
        int r = SSL_connect(s);
        if (server_hello_seen) {
            result = SSL_session_reused(s) ? 1 : 0;
            break;
        }
        if (r == 1 || SSL_get_error(s, r) != SSL_ERROR_WANT_READ || !flush_to(fd, wbio))
            break;
        char buf[16384];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
        BIO_write(rbio, buf, (int)n);
    }
    SSL_free(s);
    close(fd);
    ERR_clear_error();
    return result;
}

static SSL_CTX *client_ctx(int version, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, version);
    SSL_CTX_set_max_proto_version(ctx, version);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (version == TLS1_2_VERSION)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (cert && (SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)) {
        fprintf(stderr, "capacity: cannot load %s / %s\n", cert, key);
        exit(2);
    }
    return ctx;
}

/* One client process: its share of full handshakes, then (after `go`) its probes. */
static void client(SSL_CTX *ctx, int port, long share, int ready_fd, int go_fd, int out_fd)
{
    struct tally t = { 0, 0, 0 };
    SSL_SESSION **kept = calloc((size_t)share, sizeof *kept);
    for (long i = 0; i < share; i++)
        if (!(kept[i] = full_handshake(ctx, port)))
            t.failed++;
    char c = 'r';
    if (write(ready_fd, &c, 1) != 1 || read(go_fd, &c, 1) != 1)
        _exit(1);
    for (long i = 0; i < share; i++) {
        if (!kept[i])
            continue;
        int r = probe(ctx, port, kept[i]);
        t.offered++;
        if (r < 0)
            t.failed++;
        else
            t.resumed += r;
        SSL_SESSION_free(kept[i]);
    }
    free(kept);
    if (write(out_fd, &t, sizeof t) != (ssize_t)sizeof t)
        _exit(1);
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: %s PORT COUNT PROCS 1.2|1.3 [CLIENT_CERT CLIENT_KEY]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), procs = atoi(argv[3]);
    long count = atol(argv[2]);
    int version = strcmp(argv[4], "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (port <= 0 || port > 65535 || count < 1 || count > 1000000 || procs < 1 || procs > MAX_PROCS) {
        fprintf(stderr, "capacity: bad arguments\n");
        return 2;
    }
    SSL_CTX *ctx = client_ctx(version, argc == 7 ? argv[5] : NULL, argc == 7 ? argv[6] : NULL);
    int ready[2], go[2], out[2];
    if (pipe(ready) != 0 || pipe(go) != 0 || pipe(out) != 0)
        return 1;
    double t0 = now();
    for (int i = 0; i < procs; i++) {
        long share = count / procs + (i < count % procs);
        if (fork() == 0)
            client(ctx, port, share, ready[1], go[0], out[1]);
    }
    close(ready[1]);
    close(out[1]);
    /* Every process has made its sessions before any probe: the probes see the full cache. */
    char c;
    for (int i = 0; i < procs; i++)
        if (read(ready[0], &c, 1) != 1)
            return 1;
    for (int i = 0; i < procs; i++)
        if (write(go[1], "g", 1) != 1)
            return 1;
    struct tally all = { 0, 0, 0 };
    for (int i = 0; i < procs; i++) {
        struct tally t;
        if (read(out[0], &t, sizeof t) != (ssize_t)sizeof t)
            return 1;
        all.offered += t.offered;
        all.resumed += t.resumed;
        all.failed += t.failed;
    }
    while (wait(NULL) > 0)
        ;
    SSL_CTX_free(ctx);
    printf("{\"count\":%ld,\"offered\":%ld,\"resumed\":%ld,\"failed\":%ld,\"seconds\":%.2f}\n", count, all.offered,
           all.resumed, all.failed, now() - t0);
    return 0;
}
