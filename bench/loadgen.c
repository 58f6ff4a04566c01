/*
 * loadgen: the same TLS load for every server in the end-to-end benchmark.
 *
 *   loadgen PORT[,PORT...] PROCS SECONDS 1.2|1.3
 *
 * With several ports (several "hosts" behind a load balancer without stickiness) each
 * connection goes to one of them picked at random, so about half of the reconnections of a
 * client land on a host other than the one that made its session.
 *
 * Forks PROCS client processes against 127.0.0.1:PORT. Each reconnects in a loop for SECONDS:
 * TCP connect, TLS handshake offering the session its previous connection left (TLS 1.2
 * without the ticket extension, so servers resume by session id; TLS 1.3 with whatever ticket
 * the server sent), one HTTP/1.0 request, read to EOF (which also reads TLS 1.3 tickets),
 * close_notify. Prints one JSON object: handshakes per second (all clients), the fraction
 * that resumed, and failed connections. Loopback only; bounded by SECONDS.
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

struct tally {
    long handshakes, resumed, failed;
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

/* One connection; returns the session to offer next time (or NULL) and updates t. */
static SSL_SESSION *one(SSL_CTX *ctx, int port, SSL_SESSION *offer, struct tally *t)
{
    int fd = connect_local(port);
    if (fd < 0) {
        t->failed++;
        return offer;
    }
    SSL *s = SSL_new(ctx);
    SSL_set_fd(s, fd);
    if (offer)
        SSL_set_session(s, offer);
    SSL_SESSION *next = offer;
    if (SSL_connect(s) == 1) {
        static const char req[] = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
        char buf[4096];
        SSL_write(s, req, sizeof req - 1);
        while (SSL_read(s, buf, sizeof buf) > 0)
            ;
        t->handshakes++;
        t->resumed += SSL_session_reused(s);
        SSL_SESSION *got = SSL_get1_session(s);
        if (got) {
            if (offer)
                SSL_SESSION_free(offer);
            next = got;
        }
        SSL_shutdown(s);
    } else {
        t->failed++;
    }
    SSL_free(s);
    close(fd);
    ERR_clear_error();
    return next;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT[,PORT...] PROCS SECONDS 1.2|1.3\n", argv[0]);
        return 2;
    }
    int ports[8] = { 0 }, nports = 0;
    for (char *p = argv[1]; *p && nports < 8;) {
        ports[nports++] = atoi(p);
        char *comma = strchr(p, ',');
        if (!comma)
            break;
        p = comma + 1;
    }
    int port = ports[0], procs = atoi(argv[2]);
    double secs = atof(argv[3]);
    int version = strcmp(argv[4], "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    for (int i = 0; i < nports; i++)
        if (ports[i] <= 0)
            port = 0;
    if (port <= 0 || procs < 1 || procs > 64 || secs <= 0 || secs > 600) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    int pipes[64][2];
    double t0 = now();
    for (int i = 0; i < procs; i++) {
        if (pipe(pipes[i]) != 0)
            return 1;
        if (fork() == 0) {
            SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
            SSL_CTX_set_min_proto_version(ctx, version);
            SSL_CTX_set_max_proto_version(ctx, version);
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
            if (version == TLS1_2_VERSION)
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
            struct tally t = { 0, 0, 0 };
            SSL_SESSION *sess = NULL;
            unsigned seed = (unsigned)getpid();
            while (now() - t0 < secs)
                sess = one(ctx, ports[nports > 1 ? rand_r(&seed) % nports : 0], sess, &t);
            if (write(pipes[i][1], &t, sizeof t) != (ssize_t)sizeof t)
                _exit(1);
            _exit(0);
        }
        close(pipes[i][1]);
    }
    struct tally all = { 0, 0, 0 };
    for (int i = 0; i < procs; i++) {
        struct tally t;
        if (read(pipes[i][0], &t, sizeof t) == (ssize_t)sizeof t) {
            all.handshakes += t.handshakes;
            all.resumed += t.resumed;
            all.failed += t.failed;
        }
        wait(NULL);
    }
    double el = now() - t0;
    printf("{\"handshakes_per_s\":%.1f,\"resumed_fraction\":%.4f,\"handshakes\":%ld,\"failed\":%ld,\"seconds\":%.2f}\n",
           (double)all.handshakes / el, all.handshakes ? (double)all.resumed / (double)all.handshakes : 0.0,
           all.handshakes, all.failed, el);
    return 0;
}
