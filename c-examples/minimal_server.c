/*
 * minimal_server: the smallest complete prefork TLS server on shmsesscache, to copy from.
 *
 *   minimal_server --listen 127.0.0.1:PORT --workers N --cert FILE --key FILE
 *   cc minimal_server.c $(pkg-config --cflags --libs shmsesscache) -lssl -lcrypto
 *
 * The parent makes the SSL_CTX and the shared cache, listens, forks N workers that accept()
 * on the one socket, replaces a worker that dies, and on SIGTERM or SIGINT stops them and
 * exits. Each request gets "worker=PID reused=0|1". PORT 0 picks a free port; the server
 * prints "ready HOST:PORT" once it listens. Every rule of docs/c-api.md is marked RULE.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <shmsesscache.h>

#define MAX_WORKERS 64

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig) { (void)sig; stop_requested = 1; }

static void die(const char *what, const char *why)
{
    fprintf(stderr, "minimal_server: %s: %s\n", what, why);
    exit(1);
}

/* One connection: handshake, read the request, answer, close cleanly. */
static void serve_one(SSL_CTX *ctx, int fd)
{
    struct timeval limit = {10, 0}; /* a client that stalls cannot hold the worker for long */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1) {
        SSL_free(ssl); /* no session was made, none to keep */
        close(fd);
        return;
    }
    char buf[4096], reply[160];
    int clean, r = SSL_read(ssl, buf, sizeof buf);
    if (r > 0) {
        int n = snprintf(reply, sizeof reply, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                         "worker=%d reused=%d\n", (int)getpid(), SSL_session_reused(ssl));
        clean = SSL_write(ssl, reply, n) == n;
    } else {
        /* The client closed before asking: with close_notify, or by dropping TCP, which
         * SSL_OP_IGNORE_UNEXPECTED_EOF turns into the same end of stream. */
        clean = SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN;
    }
    /* RULE: SSL_shutdown before SSL_free, else OpenSSL removes the session from the cache of
     * every worker. We need not wait for the client's close_notify. After an error we let
     * OpenSSL drop the session: it may be bad. */
    if (clean)
        SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
}

/* A worker: SIGTERM stays blocked except while it waits for a connection (pselect), so a
 * stop never cuts a connection in the middle and never slips in before the wait. */
static void worker(SSL_CTX *ctx, int lfd, const sigset_t *wait_mask)
{
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop_requested) {
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(lfd, &readable);
        if (pselect(lfd + 1, &readable, NULL, NULL, NULL, wait_mask) < 0)
            continue; /* EINTR: the loop condition decides */
        int fd = accept(lfd, NULL, NULL); /* nonblocking: another worker may have taken it */
        if (fd >= 0)
            serve_one(ctx, fd);
        else if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS)
            usleep(100 * 1000); /* out of descriptors or memory: back off, do not spin */
    }
    _exit(0);
}

static int listen_on(const char *spec, char *bound, size_t bound_len)
{
    char host[64];
    unsigned port;
    struct sockaddr_in a = {.sin_family = AF_INET};
    if (sscanf(spec, "%63[^:]:%u", host, &port) != 2 || port > 65535 || inet_pton(AF_INET, host, &a.sin_addr) != 1)
        die("--listen", "expected IPv4:PORT, e.g. 127.0.0.1:8443");
    a.sin_port = htons((unsigned short)port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die(spec, strerror(errno));
    snprintf(bound, bound_len, "%s:%u", host, ntohs(a.sin_port));
    return fd;
}

int main(int argc, char **argv)
{
    const char *listen_spec = NULL, *cert = NULL, *key = NULL;
    int workers = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0) listen_spec = argv[i + 1];
        else if (strcmp(argv[i], "--cert") == 0) cert = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0) key = argv[i + 1];
        else if (strcmp(argv[i], "--workers") == 0) workers = atoi(argv[i + 1]);
        else die(argv[i], "unknown option");
    }
    if (listen_spec == NULL || cert == NULL || key == NULL || workers < 1 || workers > MAX_WORKERS)
        die("usage", "minimal_server --listen IP:PORT --workers 1..64 --cert FILE --key FILE");

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die(cert, "cannot load the certificate or key");
    /* RULE: stateful TLS 1.3 tickets and TLS 1.2 session ids, both looked up in the cache;
     * one ticket per handshake, since a client uses only the newest. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 1);
    /* RULE: a client that drops TCP without close_notify is an end of stream, not a fatal
     * error that removes its session from every worker. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);

    /* RULE: create and install the cache after the certificate, before SSL_new and fork. */
    shmsess_options opts;
    shmsess_options_init(&opts); /* anonymous 8 MiB segment, inherited by the workers */
    shmsess_cache *cache = NULL;
    if (shmsess_cache_create(&opts, &cache) != SHMSESS_OK || shmsess_install(cache, ctx) != SHMSESS_OK)
        die("session cache", shmsess_last_error());

    signal(SIGPIPE, SIG_IGN); /* RULE: a write to a closed connection is EPIPE, not death */
    char bound[96];
    int lfd = listen_on(listen_spec, bound, sizeof bound);

    /* The parent takes its signals with sigtimedwait(); workers inherit them blocked. */
    sigset_t parent_signals, wait_mask;
    sigemptyset(&parent_signals);
    sigaddset(&parent_signals, SIGTERM);
    sigaddset(&parent_signals, SIGINT);
    sigaddset(&parent_signals, SIGCHLD);
    sigprocmask(SIG_BLOCK, &parent_signals, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    pid_t pids[MAX_WORKERS] = {0};
    printf("ready %s\n", bound);
    fflush(stdout);
    struct timespec retry = {1, 0}; /* a fork that failed is tried again a second later */
    for (int sig = 0; sig != SIGTERM && sig != SIGINT; sig = sigtimedwait(&parent_signals, NULL, &retry)) {
        for (pid_t dead; (dead = waitpid(-1, NULL, WNOHANG)) > 0;)
            for (int i = 0; i < workers; i++)
                if (pids[i] == dead) pids[i] = 0;
        for (int i = 0; i < workers; i++)
            if (pids[i] == 0 && (pids[i] = fork()) == 0)
                worker(ctx, lfd, &wait_mask);
            else if (pids[i] < 0)
                pids[i] = 0;
    }
    for (int i = 0; i < workers; i++)
        if (pids[i] > 0) kill(pids[i], SIGTERM);
    while (wait(NULL) > 0) {
    }
    SSL_CTX_free(ctx);
    shmsess_cache_free(cache);
    return 0;
}
