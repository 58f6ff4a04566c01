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
 *                  [--id-prefix TEXT] [--session-timeout SECONDS] [--groups LIST]
 *                  [--client-timeout SECONDS]
 *                  [--remote URL --remote-key FILE [--remote-timeout-ms N] [--remote-backoff-ms N]
 *                   [--remote-ca FILE] [--remote-cluster] [--remote-fleet LABEL]]
 *
 * --remote adds the second tier shared by several hosts (e.g. redis://127.0.0.1:6379/0, or
 * redis+sentinel://:pw@10.0.0.5:26379,10.0.0.6:26379/mymaster/0 for the master of Sentinel), with
 * sessions sealed under the keys of --remote-key (a 0600 file of `openssl rand -hex 32` lines).
 * --remote-ca: the CA file a rediss:// URL's server certificate is verified against.
 * --remote-cluster: the URL is a seed node of a Redis Cluster.
 * --remote-fleet LABEL: sealed into every Redis value with the database and key prefix.
 *
 * --client-timeout bounds the handshake and the request of one connection together (default
 * 10 s), so clients that trickle bytes cannot hold every worker.
 *
 * --groups sets the key exchange groups the server accepts (e.g. P-256): a client whose first
 * key share is another group gets a HelloRetryRequest on every handshake.
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
 * The SSL_shutdown rule (docs/c-api.md): OpenSSL removes a session from the cache when an SSL
 * whose handshake completed is freed without SSL_shutdown() ("unclean" close), and with an
 * external cache that removal reaches every worker. So after answering we always call
 * SSL_shutdown() (sending close_notify; we do not wait for the client's). A client that drops
 * TCP without close_notify (a browser's unused preconnect) makes SSL_read fail with an
 * "unexpected EOF", which OpenSSL treats as fatal and answers by removing the session before
 * we see the error; SSL_OP_IGNORE_UNEXPECTED_EOF makes it a plain end of stream instead, as
 * servers that keep sessions do. When the connection broke in the middle, we mark it shut
 * down with SSL_set_shutdown() only if the handshake had completed and no TLS-level error
 * occurred, which keeps the session usable; after a protocol error we let OpenSSL drop it.
 *
 * Process management: the parent blocks SIGTERM, SIGINT, SIGUSR1 and SIGCHLD and takes them
 * with sigtimedwait(), so a stop request can never slip in between a check and a blocking
 * wait. Workers are forked with those signals still blocked and reset them to their default
 * action before unblocking, so a SIGTERM that reaches a worker early is not swallowed by the
 * parent's disposition. accept() errors that concern one connection (ECONNABORTED, EPROTO) are
 * skipped, and running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs
 * off for 100 ms instead of exiting. A fork that fails, or a worker that dies within a second
 * of starting for the fourth time in a row, is retried after a delay that doubles up to 5 s:
 * no slot stays empty for good and a crash loop does not spin.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <time.h>
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

/* The signals the parent takes with sigtimedwait(); blocked in the parent and, until they
 * are reset, in a freshly forked worker. */
static sigset_t parent_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGCHLD);
    return set;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --listen HOST:PORT --workers N --cert FILE --key FILE\n"
            "          [--cache-size BYTES] [--cache-path PATH | --no-cache] [--tls13-stateful]\n"
            "          [--id-prefix TEXT] [--session-timeout SECONDS] [--groups LIST] [--client-timeout SECONDS]\n"
            "          [--remote URL --remote-key FILE [--remote-timeout-ms N] [--remote-backoff-ms N]\n"
            "           [--remote-ca FILE] [--remote-cluster] [--remote-fleet LABEL]]\n",
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

/* SIGALRM ends a connection that takes too long: installed without SA_RESTART, it makes the
 * blocked read fail with EINTR, which OpenSSL reports as a want-read, and the connection is
 * closed. SO_RCVTIMEO alone bounds each read, not a client that sends a byte at a time. */
static void on_alarm(int sig) { (void)sig; }

static unsigned client_timeout_s = 10;

static void serve(SSL_CTX *ctx, int lfd, shmsess_cache *cache, const char *id_prefix, int slot)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    if (cache != NULL && id_prefix != NULL) {
        /* The host's prefix plus this worker's slot: ids say which worker made them. */
        char p[SHMSESS_MAX_ID_PREFIX + 1];
        int n = snprintf(p, sizeof p, "%sw%d", id_prefix, slot);
        if (n > 0 && shmsess_set_session_id_prefix(cache, (const uint8_t *)p, strlen(p)) != SHMSESS_OK)
            fprintf(stderr, "prefork_server: session id prefix: %s\n", shmsess_last_error());
    }
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue; /* that connection is gone; the next one is fine */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors or memory: exiting would only make the parent respawn us
                 * into the same wall. Wait for connections to close instead. */
                static time_t said;
                time_t now = time(NULL);
                if (now != said) {
                    fprintf(stderr, "prefork_server: worker %d: accept: %s; backing off\n", (int)getpid(),
                            strerror(errno));
                    said = now;
                }
                poll(NULL, 0, 100);
                continue;
            }
            perror("prefork_server: accept");
            _exit(1);
        }
        struct timeval tv = { 10, 0 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        alarm(client_timeout_s); /* the handshake and the request together */
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
        alarm(0);
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

static long long monotonic_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* One worker slot: its process, when it started, and when an empty slot may be refilled. */
struct slot {
    pid_t pid;
    long long started_ms;
    long long restart_at_ms;
    long long delay_ms; /* back-off for the next failed start or early death */
    int early_deaths;   /* deaths within a second of starting, in a row */
};

struct worker_ctx {
    SSL_CTX *ctx;
    int lfd;
    shmsess_cache *cache;
    const char *id_prefix;
    const sigset_t *mask; /* the signal mask to give workers */
};

static void backoff(struct slot *s)
{
    s->delay_ms = s->delay_ms == 0 ? 250 : s->delay_ms * 2;
    if (s->delay_ms > 5000)
        s->delay_ms = 5000;
    s->restart_at_ms = monotonic_ms() + s->delay_ms;
}

static void start_worker(const struct worker_ctx *w, struct slot *slots, int i)
{
    pid_t p = fork();
    if (p == 0) {
        /* Default dispositions first, then the signals the parent blocked are delivered. */
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGUSR1, SIG_IGN);
        sigprocmask(SIG_SETMASK, w->mask, NULL);
        serve(w->ctx, w->lfd, w->cache, w->id_prefix, i);
        _exit(0);
    }
    if (p < 0) {
        fprintf(stderr, "prefork_server: fork for worker %d: %s; retrying\n", i, strerror(errno));
        slots[i].pid = 0;
        backoff(&slots[i]);
        return;
    }
    if (slots[i].started_ms != 0)
        fprintf(stderr, "prefork_server: worker %d restarted (pid %d)\n", i, (int)p);
    slots[i].pid = p;
    slots[i].started_ms = monotonic_ms();
}

/* Collect every worker that exited; its slot is refilled at once, or after a back-off if it
 * died within a second of starting (a crash loop). */
static void reap(struct slot *slots, int workers)
{
    int status;
    pid_t p;
    while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < workers; i++) {
            if (slots[i].pid != p)
                continue;
            fprintf(stderr, "prefork_server: worker %d %s %d; starting another\n", (int)p,
                    WIFSIGNALED(status) ? "killed by signal" : "exited with",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            slots[i].pid = 0;
            /* A few quick deaths in a row are restarted at once (workers killed under load);
             * from the fourth on it is a crash loop, and restarts back off. */
            if (monotonic_ms() - slots[i].started_ms < 1000 && ++slots[i].early_deaths > 3) {
                backoff(&slots[i]);
            } else {
                if (monotonic_ms() - slots[i].started_ms >= 1000)
                    slots[i].early_deaths = 0;
                slots[i].delay_ms = 0;
                slots[i].restart_at_ms = 0;
            }
        }
    }
}

/* How long the parent may sleep: until the earliest pending restart, or forever (-1). */
static struct timespec next_restart(const struct slot *slots, int workers)
{
    long long soonest = -1, now = monotonic_ms();
    for (int i = 0; i < workers; i++)
        if (slots[i].pid == 0 && (soonest < 0 || slots[i].restart_at_ms < soonest))
            soonest = slots[i].restart_at_ms;
    struct timespec t = { -1, 0 };
    if (soonest >= 0) {
        long long ms = soonest > now ? soonest - now : 0;
        t.tv_sec = ms / 1000;
        t.tv_nsec = (ms % 1000) * 1000000;
    }
    return t;
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
    const char *id_prefix = NULL, *groups = NULL;
    unsigned long session_timeout = 0;
    const char *remote_url = NULL, *remote_key = NULL, *remote_ca = NULL, *remote_fleet = NULL;
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
        else if (!strcmp(a, "--groups") && v) groups = argv[++i];
        else if (!strcmp(a, "--client-timeout") && v) client_timeout_s = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--session-timeout") && v) session_timeout = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote") && v) remote_url = argv[++i];
        else if (!strcmp(a, "--remote-key") && v) remote_key = argv[++i];
        else if (!strcmp(a, "--remote-timeout-ms") && v) remote_timeout_ms = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote-backoff-ms") && v) remote_backoff_ms = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--remote-ca") && v) remote_ca = argv[++i];
        else if (!strcmp(a, "--remote-cluster")) remote_cluster = 1;
        else if (!strcmp(a, "--remote-fleet") && v) remote_fleet = argv[++i];
        else usage(argv[0]);
    }
    if (!listen_spec || !cert || !key || workers < 1 || workers > MAX_WORKERS || (no_cache && cache_path) ||
        (id_prefix && strlen(id_prefix) > SHMSESS_MAX_ID_PREFIX - 4) || session_timeout > 86400 * 365 ||
        (remote_url && (no_cache || !remote_key)) || remote_timeout_ms > 60000 || remote_backoff_ms > 3600000 ||
        client_timeout_s < 1 || client_timeout_s > 3600)
        usage(argv[0]);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        die("SSL_CTX_new failed");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load the certificate or key");
    /* A client that drops TCP without close_notify is an end of stream, not a fatal error that
     * removes its session from the cache of every worker (see the SSL_shutdown rule above). */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (groups != NULL && SSL_CTX_set1_groups_list(ctx, groups) != 1)
        die("--groups: not a list of groups OpenSSL knows (e.g. P-256:X25519)");
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
        /* Up to info (3): the remote tier's "working again" after an outage is info, and an
         * operator who saw "skipping" wants to see it end. */
        shmsess_set_log_callback(log_to_stderr, NULL, 3);
        if (remote_url != NULL && !tls13_stateful)
            fprintf(stderr,
                    "prefork_server: warning: --remote without --tls13-stateful: TLS 1.3 clients get "
                    "stateless tickets, which never reach the shared cache or Redis, so they resume only on "
                    "this host; add --tls13-stateful to carry TLS 1.3 sessions across hosts\n");
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
        opts.remote_fleet = remote_fleet;
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

    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs = parent_signals(), old_mask;
    sigprocmask(SIG_BLOCK, &sigs, &old_mask);

    struct slot slots[MAX_WORKERS];
    memset(slots, 0, sizeof slots);
    struct worker_ctx w = { ctx, lfd, cache, id_prefix, &old_mask };
    for (int i = 0; i < workers; i++)
        start_worker(&w, slots, i);
    printf("ready %s\n", bound);
    fflush(stdout);

    for (;;) {
        struct timespec wait = next_restart(slots, workers);
        siginfo_t info;
        int sig = sigtimedwait(&sigs, &info, wait.tv_sec < 0 ? NULL : &wait);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGUSR1)
            print_stats(cache);
        reap(slots, workers);
        for (int i = 0; i < workers; i++)
            if (slots[i].pid == 0 && monotonic_ms() >= slots[i].restart_at_ms)
                start_worker(&w, slots, i);
    }
    pid_t pids[MAX_WORKERS];
    for (int i = 0; i < workers; i++)
        pids[i] = slots[i].pid;
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
