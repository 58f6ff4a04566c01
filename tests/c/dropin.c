/*
 * The drop-in (libshmsesscache_preload.so) in a program that was not written for the cache:
 * it only uses OpenSSL, and is run with LD_PRELOAD and SHMSESS_PRELOAD_* set by the Makefile.
 *   dropin CERTDIR LOGFILE          the default: server contexts shared, client ones untouched,
 *                                   the server's own callbacks and cache-off left alone,
 *                                   a root process not served
 *   dropin CERTDIR LOGFILE --force  SHMSESS_PRELOAD_FORCE=1: those are replaced
 * Workers are forked processes; when run as root they drop to nobody first, as a server's
 * workers do, except the one that checks the root rule.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

static const char *logfile;
static int forced;

/* What a worker reports about the server context it served on. */
struct report {
    struct outcome hs;
    int installed;     /* the drop-in's callbacks are on the context */
    long mode;         /* its cache mode after SSL_new */
    long own_sessions; /* sessions in OpenSSL's own cache of the context after the handshake */
};

static int own_new_calls;
static int own_new(SSL *s, SSL_SESSION *sess) { (void)s; (void)sess; own_new_calls++; return 0; }
static SSL_SESSION *own_get(SSL *s, const unsigned char *id, int len, int *copy)
{
    (void)s; (void)id; (void)len; *copy = 0;
    return NULL;
}
static void own_remove(SSL_CTX *c, SSL_SESSION *s) { (void)c; (void)s; }

static void drop_root(void)
{
    if (getuid() == 0 && setresuid(65534, 65534, 65534) != 0) {
        perror("setresuid");
        exit(1);
    }
}

/* In a forked worker (unprivileged unless stay_root): the first SSL_new on sctx, then a
 * handshake offering `offer`. */
static void worker(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, int stay_root,
                   struct report *out)
{
    int fds[2];
    if (pipe(fds) != 0)
        exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        if (!stay_root)
            drop_root();
        struct report *r = calloc(1, sizeof *r);
        SSL_free(SSL_new(sctx));
        struct hs_options o = { 0 };
        handshake_with(sctx, cctx, offer, &o, &r->hs);
        /* After the handshake: a generic-method context is decided when an SSL accepts. */
        r->installed = SSL_CTX_sess_get_new_cb(sctx) != NULL && SSL_CTX_sess_get_new_cb(sctx) != own_new;
        r->mode = SSL_CTX_get_session_cache_mode(sctx);
        r->own_sessions = SSL_CTX_sess_number(sctx);
        ssize_t w = write(fds[1], r, sizeof *r);
        free(r);
        exit(w == (ssize_t)sizeof *r ? 0 : 1);
    }
    close(fds[1]);
    memset(out, 0, sizeof *out);
    size_t got = 0;
    ssize_t n;
    while (got < sizeof *out && (n = read(fds[0], (char *)out + got, sizeof *out - got)) > 0)
        got += (size_t)n;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(got == sizeof *out && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "worker failed (status %d; under valgrind 99 means it reported errors)", status);
}

/* How many lines of the drop-in's log contain `needle`. */
static int log_lines_with(const char *needle)
{
    FILE *f = fopen(logfile, "r");
    char line[2048];
    int n = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* body(arg) in a forked worker that dropped root (as the processes the drop-in serves run);
 * its CHECKs print there, and any failure fails this check too. */
static void as_worker(void (*body)(void *), void *arg)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        drop_root();
        body(arg);
        fflush(stdout);
        exit(failed ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker checks failed (status %d, FAIL lines above)", status);
}

struct client_side {
    SSL_CTX *ctx;
    long mode;
    int version;
};

static void client_context_untouched(void *arg)
{
    struct client_side *c = arg;
    SSL_free(SSL_new(c->ctx));
    CHECK(SSL_CTX_sess_get_new_cb(c->ctx) == NULL && SSL_CTX_sess_get_get_cb(c->ctx) == NULL &&
          SSL_CTX_get_session_cache_mode(c->ctx) == c->mode,
          "v%x: the client context was changed (mode 0x%lx, was 0x%lx)", c->version,
          SSL_CTX_get_session_cache_mode(c->ctx), c->mode);
}

/* A server context and a client context in one process: sessions of the server one resume
 * in another worker; the client one keeps OpenSSL's own client cache, no callbacks. */
static void test_server_shared_client_untouched(int version)
{
    SSL_CTX *sctx = server_ctx("server", version, SSL_OP_NO_TICKET, 0, 0);
    /* A certificate on the client context too (client authentication): a method, not a
     * certificate, says which side a context serves. */
    SSL_CTX *cctx = client_ctx(version, 1);
    long client_mode = SSL_CTX_get_session_cache_mode(cctx);
    struct report a, b;
    worker(sctx, cctx, NULL, 0, &a);
    worker(sctx, cctx, &a.hs, 0, &b);
    CHECK(a.hs.ok && b.hs.ok, "v%x: handshakes %d %d", version, a.hs.ok, b.hs.ok);
    CHECK(a.installed && a.mode == (SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL),
          "v%x: server context not installed (callbacks %d, mode 0x%lx)", version, a.installed, a.mode);
    CHECK(b.hs.reused, "v%x: a session of one worker did not resume in another", version);
    struct client_side c = { cctx, client_mode, version };
    as_worker(client_context_untouched, &c); /* unprivileged: root is never installed on */
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* Two contexts with one certificate and their own session id contexts: the drop-in keeps
 * each (a derived one would be the same for both, and a session would cross over). */
static void test_keeps_server_session_id_context(void)
{
    SSL_CTX *one = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *two = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX_set_session_id_context(one, (const unsigned char *)"one", 3);
    SSL_CTX_set_session_id_context(two, (const unsigned char *)"two", 3);
    SSL_CTX *cctx = client_ctx(TLS12, 0);
    struct report a, same, other;
    worker(one, cctx, NULL, 0, &a);
    worker(one, cctx, &a.hs, 0, &same);
    worker(two, cctx, &a.hs, 0, &other);
    CHECK(same.hs.reused, "a session did not resume on its own context");
    CHECK(other.hs.ok && !other.hs.reused, "a session resumed on a context with another session id context");
    SSL_CTX_free(one);
    SSL_CTX_free(two);
    SSL_CTX_free(cctx);
}

/* A worker still running as root handles TLS: the drop-in leaves its context as the server
 * made it (OpenSSL's own cache on: it resumes as much as it would without the drop-in),
 * nothing reaches the shared cache, and it says so once. */
static void test_root_process_not_served(void)
{
    if (getuid() != 0) {
        printf("skipped the root rule: needs root\n");
        return;
    }
    SSL_CTX *sctx = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *cctx = client_ctx(TLS12, 0);
    int said_before = log_lines_with("runs as root");
    struct report root1, root2, user;
    worker(sctx, cctx, NULL, 1, &root1);
    worker(sctx, cctx, &root1.hs, 0, &user);
    worker(sctx, cctx, &root1.hs, 1, &root2);
    CHECK(root1.hs.ok && user.hs.ok && root2.hs.ok, "handshakes failed");
    CHECK(!root1.installed && root1.mode == SSL_SESS_CACHE_SERVER && root1.own_sessions == 1,
          "a root worker's context was changed (callbacks %d, mode 0x%lx, own cache %ld sessions)",
          root1.installed, root1.mode, root1.own_sessions);
    CHECK(!user.hs.reused, "a session made by a root worker was in the shared cache");
    CHECK(!root2.hs.reused, "a root worker looked a session up in the shared cache");
    int said = log_lines_with("runs as root") - said_before;
    CHECK(said == 2, "root refusals logged %d times (once per root worker: 2)", said);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* A server that runs its own session cache, and one that turned caching off: left alone
 * (and logged), unless --force. */
static void test_server_settings_respected(void)
{
    SSL_CTX *own = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX_sess_set_new_cb(own, own_new);
    SSL_CTX_sess_set_get_cb(own, own_get);
    SSL_CTX_sess_set_remove_cb(own, own_remove);
    SSL_CTX *off = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX_set_session_cache_mode(off, SSL_SESS_CACHE_OFF);
    SSL_CTX *cctx = client_ctx(TLS12, 0);
    struct report o, o2, f, f2;
    worker(own, cctx, NULL, 0, &o);
    worker(own, cctx, &o.hs, 0, &o2);
    worker(off, cctx, NULL, 0, &f);
    worker(off, cctx, &f.hs, 0, &f2);
    if (!forced) {
        CHECK(!o.installed && !o2.hs.reused, "own callbacks were replaced without --force");
        CHECK(!f.installed && f.mode == SSL_SESS_CACHE_OFF && !f2.hs.reused,
              "a context with caching off was changed without --force (mode 0x%lx)", f.mode);
        CHECK(log_lines_with("set its own session callbacks ( new get remove )") >= 1,
              "no log line naming the server's callbacks");
        CHECK(log_lines_with("turned its session cache off (cache mode 0x0)") >= 1,
              "no log line naming the cache mode");
    } else {
        CHECK(o.installed && o2.hs.reused, "--force: own callbacks not replaced (reused %d)", o2.hs.reused);
        CHECK(f.installed && f2.hs.reused, "--force: caching-off context not installed (mode 0x%lx)", f.mode);
    }
    SSL_CTX_free(own);
    SSL_CTX_free(off);
    SSL_CTX_free(cctx);
}

/* The options the drop-in was told to set (the Makefile sets both). */
static uint64_t configured_options(void)
{
    const char *t = getenv("SHMSESS_PRELOAD_NO_TICKETS"), *e = getenv("SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF");
    return (t && strcmp(t, "1") == 0 ? SSL_OP_NO_TICKET : 0) |
           (e && strcmp(e, "1") == 0 ? SSL_OP_IGNORE_UNEXPECTED_EOF : 0);
}

static int maps_anonymous_segment(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        found |= strstr(line, "/memfd:shmsesscache") != NULL;
    if (f)
        fclose(f);
    return found;
}

/* A process that only makes client connections (with a client certificate) makes no
 * anonymous segment. Run first: the segment is made once per process tree. */
static void test_client_only_process_makes_no_segment(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        SSL_CTX *c = client_ctx(TLS12, 1);
        SSL *s = SSL_new(c);
        SSL_set_connect_state(s);
        int made = maps_anonymous_segment();
        SSL_free(s);
        SSL_CTX_free(c);
        exit(made ? 3 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a client-only process made a segment (status %d: 3 means mapped)", status);
}

/* A client on a generic-method (TLS_method) context: with a session id context, as CPython
 * sets "Python" on every SSLContext, or without, as nginx's upstream contexts are made. It
 * only connects, unprivileged as the reviewer's Python client ran: nothing installed, no
 * segment mapped, not a line logged. Run before anything maps the segment. */
static void test_generic_client_makes_no_segment(const char *sid)
{
    int lines_before = log_lines_with("drop-in[");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        drop_root();
        SSL_CTX *c = SSL_CTX_new(TLS_method());
        if (sid)
            SSL_CTX_set_session_id_context(c, (const unsigned char *)sid, (unsigned int)strlen(sid));
        SSL *s = SSL_new(c);
        SSL_set_connect_state(s);
        int touched = SSL_CTX_sess_get_new_cb(c) != NULL || SSL_get_options(s) != SSL_CTX_get_options(c);
        int made = maps_anonymous_segment();
        SSL_free(s);
        SSL_CTX_free(c);
        exit(made ? 3 : touched ? 4 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a TLS_method client (session id context %s) was served (status %d: 3 mapped a segment, 4 installed)",
          sid ? sid : "none", status);
    CHECK(log_lines_with("drop-in[") == lines_before, "a TLS_method client (session id context %s) logged %d lines",
          sid ? sid : "none", log_lines_with("drop-in[") - lines_before);
}

struct sides {
    SSL_CTX *ctx;
    uint64_t own, added;
};

/* The first SSL_new on the context connects, the next accepts (the drop-in installs then). */
static void connect_and_accept_sides(void *arg)
{
    struct sides *t = arg;
    SSL *up = SSL_new(t->ctx), *down = SSL_new(t->ctx);
    SSL_set_connect_state(up);
    SSL_set_accept_state(down);
    CHECK(SSL_CTX_sess_get_new_cb(t->ctx) != NULL, "generic context: nothing installed in this worker");
    CHECK(SSL_get_options(up) == t->own && SSL_CTX_get_options(t->ctx) == t->own,
          "generic context: a connecting SSL got options 0x%llx (the program set 0x%llx)",
          (unsigned long long)SSL_get_options(up), (unsigned long long)t->own);
    CHECK((SSL_get_options(down) & t->added) == t->added,
          "generic context: an accepting SSL lacks the drop-in's options (0x%llx of 0x%llx)",
          (unsigned long long)(SSL_get_options(down) & t->added), (unsigned long long)t->added);
    SSL_free(up);
    SSL_free(down);
}

static void connect_on_client_caching(void *arg)
{
    SSL_CTX *both = arg;
    uint64_t own = SSL_CTX_get_options(both);
    SSL *up = SSL_new(both), *down = SSL_new(both);
    SSL_set_connect_state(up);
    SSL_set_accept_state(down); /* where a generic context is decided */
    CHECK(SSL_CTX_get_session_cache_mode(both) == SSL_SESS_CACHE_BOTH && SSL_CTX_sess_get_new_cb(both) == NULL &&
          SSL_get_options(up) == own && SSL_get_options(down) == own,
          "a TLS_method context caching client sessions was changed (mode 0x%lx, options 0x%llx 0x%llx)",
          SSL_CTX_get_session_cache_mode(both), (unsigned long long)SSL_get_options(up),
          (unsigned long long)SSL_get_options(down));
    SSL_free(up);
    SSL_free(down);
}

/* A generic-method (TLS_method) context the server set a session id context on, used for
 * both sides as a proxy does: its sessions are shared across workers, and the options the
 * drop-in sets reach only the SSLs that accept; one that connects sees the context as the
 * program made it. */
static void test_generic_context_both_ways(void)
{
    SSL_CTX *gen = SSL_CTX_new(TLS_method());
    SSL_CTX_use_certificate_chain_file(gen, cpath("server.pem"));
    SSL_CTX_use_PrivateKey_file(gen, cpath("server.key"), SSL_FILETYPE_PEM);
    SSL_CTX_set_max_proto_version(gen, TLS12);
    SSL_CTX_set_session_id_context(gen, (const unsigned char *)"proxy", 5);
    uint64_t own = SSL_CTX_get_options(gen), added = configured_options();
    SSL_CTX *cctx = client_ctx(TLS12, 0);
    struct report a, b;
    worker(gen, cctx, NULL, 0, &a);
    worker(gen, cctx, &a.hs, 0, &b);
    CHECK(a.installed && b.hs.reused, "generic context: not shared across workers (installed %d, reused %d)",
          a.installed, b.hs.reused);
    struct sides sides = { gen, own, added };
    as_worker(connect_and_accept_sides, &sides);
    SSL_CTX_free(gen);
    SSL_CTX_free(cctx);
}

/* A generic-method context whose cache mode has SSL_SESS_CACHE_CLIENT also caches its client
 * sessions: left exactly as the program made it, and the log names why. */
static void test_generic_client_cache_left_alone(void)
{
    SSL_CTX *both = SSL_CTX_new(TLS_method());
    SSL_CTX_use_certificate_chain_file(both, cpath("server.pem"));
    SSL_CTX_use_PrivateKey_file(both, cpath("server.key"), SSL_FILETYPE_PEM);
    SSL_CTX_set_session_id_context(both, (const unsigned char *)"proxy", 5);
    SSL_CTX_set_session_cache_mode(both, SSL_SESS_CACHE_BOTH);
    int said_before = log_lines_with("SSL_SESS_CACHE_CLIENT");
    as_worker(connect_on_client_caching, both);
    CHECK(log_lines_with("SSL_SESS_CACHE_CLIENT") - said_before == 1,
          "no (or more than one) log line naming the client cache");
    SSL_CTX_free(both);
}

/* Every warning or error the drop-in logged in this run (none is expected). */
static void test_nothing_unexpected_logged(void)
{
    int bad = log_lines_with("warning:") + log_lines_with("error:");
    CHECK(bad == 0, "%d warning or error lines in %s", bad, logfile);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CERTDIR LOGFILE [--force]\n", argv[0]);
        return 2;
    }
    certdir = argv[1];
    logfile = argv[2];
    forced = argc > 3 && strcmp(argv[3], "--force") == 0;
    if (!forced) {
        test_client_only_process_makes_no_segment();
        test_generic_client_makes_no_segment("Python");
        test_generic_client_makes_no_segment(NULL);
        test_server_shared_client_untouched(TLS12);
        test_server_shared_client_untouched(TLS13);
        test_keeps_server_session_id_context();
        test_root_process_not_served();
        test_generic_context_both_ways();
        test_generic_client_cache_left_alone();
    }
    test_server_settings_respected();
    test_nothing_unexpected_logged();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
