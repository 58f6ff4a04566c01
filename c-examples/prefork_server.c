/*
 * prefork_server: a minimal Apache-prefork-style TLS server using shmsesscache.
 *
 * The parent creates the SSL_CTX and the shared session cache, binds one listening socket,
 * and forks N workers that all accept() on it. A client that reconnects lands on any worker;
 * with the shared cache every worker can resume its session, with --no-cache only the worker
 * that made it can (OpenSSL's own cache lives inside one process).
 *
 *   prefork_server --listen 127.0.0.1:PORT --workers N --cert FILE --key FILE
 *                  [--cache-size BYTES] [--cache-path PATH | --no-cache] [--tls13-stateful]
 *                  [--id-prefix TEXT] [--session-timeout SECONDS]
 *                  [--remote URL --remote-key FILE [--remote-timeout-ms N] [--remote-backoff-ms N]
 *                   [--remote-ca FILE] [--remote-cluster]]
 *
 * --remote adds the second tier shared by several hosts (e.g. redis://127.0.0.1:6379/0), with
 * sessions sealed under the keys of --remote-key (a 0600 file of `openssl rand -hex 32` lines).
 * --remote-ca: the CA file a rediss:// URL's server certificate is verified against.
 * --remote-cluster: the URL is a seed node of a Redis Cluster.
 *
 * --id-prefix makes every session id start with TEXT followed by "w" and the worker's slot
 * number (e.g. "web1w3"), the rest random: a load balancer can route a resuming client on it.
 * Prints "ready HOST:PORT" on stdout once listening (PORT 0 picks a free port). SIGTERM or
 * SIGINT stops the workers and the parent, which prints the cache statistics as one
 * "stats key=value ..." line; SIGUSR1 prints them without stopping. A worker that dies is
 * replaced.
 *
 * Each request line gets an HTTP/1.0 answer naming the worker pid and whether the session was
 * resumed, so curl, Python's ssl module and openssl s_client can all talk to it.
 *
 * The SSL_shutdown rule (see README): OpenSSL removes a session from the cache when an SSL
 * whose handshake completed is freed without SSL_shutdown() ("unclean" close), and with an
 * external cache that removal reaches every worker. So after answering we always call
 * SSL_shutdown() (sending close_notify; we do not wait for the client's). When the
 * connection broke in the middle, we mark it shut down with SSL_set_shutdown() only if the
 * handshake had completed and no TLS-level error occurred, which keeps the session usable
 * (the choice 001_*.txt describes); after a protocol error we let OpenSSL drop it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <shmsesscache.h>

#define MAX_WORKERS 256

static volatile sig_atomic_t stop_requested = 0;
static volatile sig_atomic_t stats_requested = 0;

static void on_stop(int sig) { (void)sig; stop_requested = 1; }
static void on_usr1(int sig) { (void)sig; stats_requested = 1; }

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --listen HOST:PORT --workers N --cert FILE --key FILE\n"
            "          [--cache-size BYTES] [--cache-path PATH | --no-cache] [--tls13-stateful]\n"
            "          [--id-prefix TEXT] [--session-timeout SECONDS]\n"
            "          [--remote URL --remote-key FILE [--remote-timeout-ms N] [--remote-backoff-ms N]\n"
            "           [--remote-ca FILE] [--remote-cluster]]\n",
            argv0);
    exit(2);
}

static void die(const char *what)
{
    fprintf(stderr, "prefork_server: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static int listen_on(const char *spec, char *bound, size_t bound_len)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || (size_t)(colon - spec) >= sizeof host)
        die("--listen wants HOST:PORT");
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        die("--listen host must be an IPv4 address such as 127.0.0.1");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0) {
        perror("prefork_server: bind/listen");
        exit(1);
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    snprintf(bound, bound_len, "%s:%u", host, ntohs(a.sin_port));
    return fd;
}

/* Read the request: up to an empty line for HTTP, or one line for anything else. */
static int read_request(SSL *ssl, char *first_line, size_t n)
{
    char buf[8192];
    size_t have = 0;
    first_line[0] = '\0';
    while (have < sizeof buf - 1) {
        int r = SSL_read(ssl, buf + have, (int)(sizeof buf - 1 - have));
        if (r <= 0)
            return have > 0 ? 1 : r;
        have += (size_t)r;
        buf[have] = '\0';
        char *nl = strchr(buf, '\n');
        if (nl == NULL)
            continue;
        if (first_line[0] == '\0') {
            size_t l = (size_t)(nl - buf);
            if (l >= n)
                l = n - 1;
            memcpy(first_line, buf, l);
            first_line[l] = '\0';
        }
        if (strstr(first_line, "HTTP/") == NULL || strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
            return 1;
    }
    return 1;
}

static void serve(SSL_CTX *ctx, int lfd, shmsess_cache *cache, const char *id_prefix, int slot)
{
    if (cache != NULL && id_prefix != NULL) {
        /* The host's prefix plus this worker's slot: ids say which worker made them. */
        char p[SHMSESS_MAX_ID_PREFIX + 1];
        int n = snprintf(p, sizeof p, "%sw%d", id_prefix, slot);
        if (n > 0 && shmsess_set_session_id_prefix(cache, (const uint8_t *)p, strlen(p)) != SHMSESS_OK)
            fprintf(stderr, "prefork_server: session id prefix: %s\n", shmsess_last_error());
    }
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            perror("prefork_server: accept");
            _exit(1);
        }
        struct timeval tv = { 10, 0 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        int ok = SSL_accept(ssl) == 1;
        int clean = 0;
        if (ok) {
            char line[512];
            int r = read_request(ssl, line, sizeof line);
            if (r > 0) {
                char resp[512];
                int reused = SSL_session_reused(ssl);
                int len = snprintf(resp, sizeof resp,
                                   "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                   "X-Worker-Pid: %d\r\nX-Session-Reused: %d\r\n\r\n"
                                   "worker=%d reused=%d protocol=%s\n",
                                   (int)getpid(), reused, (int)getpid(), reused, SSL_get_version(ssl));
                clean = SSL_write(ssl, resp, len) == len;
            } else {
                /* The client closed: with close_notify (a clean close) or by dropping TCP. */
                clean = SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN || ERR_peek_error() == 0;
            }
        }
        if (ok && clean)
            SSL_shutdown(ssl);
        else if (ok && ERR_peek_error() == 0)
            SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
    }
}

static void print_stats(shmsess_cache *cache)
{
    if (cache == NULL) {
        printf("stats cache=none\n");
        fflush(stdout);
        return;
    }
    shmsess_stats s;
    if (shmsess_cache_stats(cache, &s) != SHMSESS_OK) {
        fprintf(stderr, "prefork_server: stats: %s\n", shmsess_last_error());
        return;
    }
    /* Every field by name: new library versions add fields without changes here. */
    printf("stats");
    const char *name;
    uint64_t value;
    for (size_t i = 0; shmsess_stats_field(&s, i, &name, &value) == SHMSESS_OK; i++)
        printf(" %s=%llu", name, (unsigned long long)value);
    printf("\n");
    fflush(stdout);
}

static void log_to_stderr(int level, const char *msg, void *userdata)
{
    (void)userdata;
    fprintf(stderr, "prefork_server[%d]: shmsesscache level %d: %s\n", (int)getpid(), level, msg);
}

int main(int argc, char **argv)
{
    const char *listen_spec = NULL, *cert = NULL, *key = NULL, *cache_path = NULL;
    unsigned long long cache_size = 8ULL << 20;
    int workers = 4, no_cache = 0, tls13_stateful = 0;
    const char *id_prefix = NULL;
    unsigned long session_timeout = 0;
    const char *remote_url = NULL, *remote_key = NULL, *remote_ca = NULL;
    int remote_cluster = 0;
    unsigned long remote_timeout_ms = 0, remote_backoff_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--listen") && v) listen_spec = argv[++i];
        else if (!strcmp(a, "--workers") && v) workers = atoi(argv[++i]);
        else if (!strcmp(a, "--cert") && v) cert = argv[++i];
        else if (!strcmp(a, "--key") && v) key = argv[++i];
        else if (!strcmp(a, "--cache-size") && v) cache_size = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--cache-path") && v) cache_path = argv[++i];
        else if (!strcmp(a, "--no-cache")) no_cache = 1;
        else if (!strcmp(a, "--tls13-stateful")) tls13_stateful = 1;
        else if (!strcmp(a, "--id-prefix") && v) id_prefix = argv[++i];
        else if (!strcmp(a, "--session-timeout") && v) session_timeout = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote") && v) remote_url = argv[++i];
        else if (!strcmp(a, "--remote-key") && v) remote_key = argv[++i];
        else if (!strcmp(a, "--remote-timeout-ms") && v) remote_timeout_ms = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote-backoff-ms") && v) remote_backoff_ms = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote-ca") && v) remote_ca = argv[++i];
        else if (!strcmp(a, "--remote-cluster")) remote_cluster = 1;
        else usage(argv[0]);
    }
    if (!listen_spec || !cert || !key || workers < 1 || workers > MAX_WORKERS || (no_cache && cache_path) ||
        (id_prefix && strlen(id_prefix) > SHMSESS_MAX_ID_PREFIX - 4) || session_timeout > 86400 * 365 ||
        (remote_url && (no_cache || !remote_key)) || remote_timeout_ms > 60000 || remote_backoff_ms > 3600000)
        usage(argv[0]);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        die("SSL_CTX_new failed");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load the certificate or key");
    /* Stateful TLS 1.3 tickets (looked up in the cache) and TLS 1.2 session ids instead of
     * tickets: like nginx's "ssl_session_tickets off". Without it OpenSSL issues stateless
     * tickets, which never touch any session cache. */
    if (tls13_stateful) {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        /* A client uses the newest ticket; a second one per handshake would only sit in the
         * cache until it expires. */
        SSL_CTX_set_num_tickets(ctx, 1);
    }

    shmsess_cache *cache = NULL;
    if (no_cache) {
        /* OpenSSL's own cache: per process. */
        static const unsigned char sid_ctx[] = "prefork_server";
        SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    } else {
        shmsess_set_log_callback(log_to_stderr, NULL, 2);
        shmsess_options opts;
        shmsess_options_init(&opts);
        opts.path = cache_path; /* NULL: anonymous segment, inherited by the workers */
        opts.size_bytes = cache_size;
        opts.session_timeout = (uint32_t)session_timeout;
        if (id_prefix != NULL) {
            opts.session_id_prefix = (const uint8_t *)id_prefix;
            opts.session_id_prefix_len = (uint32_t)strlen(id_prefix);
        }
        opts.remote_url = remote_url;
        opts.remote_key_file = remote_key;
        if (remote_timeout_ms)
            opts.remote_timeout_ms = (uint32_t)remote_timeout_ms;
        if (remote_backoff_ms)
            opts.remote_backoff_ms = (uint32_t)remote_backoff_ms;
        opts.remote_ca_file = remote_ca;
        opts.remote_cluster = (uint32_t)remote_cluster;
        if (shmsess_cache_create(&opts, &cache) != SHMSESS_OK) {
            fprintf(stderr, "prefork_server: cannot create the session cache: %s\n", shmsess_last_error());
            return 1;
        }
        if (shmsess_install(cache, ctx) != SHMSESS_OK) {
            fprintf(stderr, "prefork_server: cannot install the session cache: %s\n", shmsess_last_error());
            return 1;
        }
    }

    char bound[96];
    int lfd = listen_on(listen_spec, bound, sizeof bound);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop; /* no SA_RESTART: waitpid returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pid_t pids[MAX_WORKERS] = { 0 };
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p < 0)
            die("fork failed");
        if (p == 0)
            serve(ctx, lfd, cache, id_prefix, i);
        pids[i] = p;
    }
    printf("ready %s\n", bound);
    fflush(stdout);

    while (!stop_requested) {
        int status;
        pid_t p = waitpid(-1, &status, 0);
        if (stats_requested) {
            stats_requested = 0;
            print_stats(cache);
        }
        if (p <= 0 || stop_requested)
            continue;
        for (int i = 0; i < workers; i++) {
            if (pids[i] != p)
                continue;
            fprintf(stderr, "prefork_server: worker %d %s %d; starting another\n", (int)p,
                    WIFSIGNALED(status) ? "killed by signal" : "exited with", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            pid_t np = fork();
            if (np == 0)
                serve(ctx, lfd, cache, id_prefix, i);
            pids[i] = np > 0 ? np : 0;
        }
    }
    for (int i = 0; i < workers; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (int i = 0; i < workers; i++)
        if (pids[i] > 0)
            waitpid(pids[i], NULL, 0);
    print_stats(cache);
    close(lfd);
    SSL_CTX_free(ctx);
    shmsess_cache_free(cache);
    return 0;
}
