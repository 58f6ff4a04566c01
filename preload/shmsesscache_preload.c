/*
 * libshmsesscache_preload.so: the shared session cache for OpenSSL servers nobody rebuilds.
 * Loaded with LD_PRELOAD (by `shmsesscache run -- SERVER`, or a unit's Environment=), it
 * interposes the few libssl entry points that tell it what the server does with its
 * SSL_CTXs, and at the first SSL_new on each *server* context (at the first accepting SSL
 * for a generic TLS_method one) it calls shmsess_install on it, through the library's public C ABI only. Settings come from SHMSESS_PRELOAD_*
 * variables (docs/dropin.md). It never stops the server from starting or serving: whatever
 * fails, the server runs as it would without it and the reason is logged once.
 *
 * Why interposition works: references to libssl's symbols, the server's and libssl's own
 * internal ones, bind to these definitions first; dlsym(RTLD_NEXT) finds the real ones. They
 * carry libssl.so.3's version, OPENSSL_3.0.0 (build/preload.map, made from INTERPOSED below),
 * so references of another version (a libssl 1.1 a plugin brings in with dlopen) never bind
 * to them. The library's own OpenSSL calls come back through here too: a thread-local flag
 * passes them straight through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "shmsesscache.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- settings (SHMSESS_PRELOAD_*) ---- */

struct settings {
    const char *path;          /* NULL: anonymous, made by the first server context */
    uint64_t size;             /* 0: the library's default */
    int no_tickets;
    int ignore_unexpected_eof;
    int force;
    const char *only;          /* NULL, or the program names in which the drop-in acts */
    const char *bad;           /* the first invalid variable, with the fix */
};

static struct settings cfg;

/* ---- log: one file (or stderr), opened before any chroot ---- */

/* How the log is opened, here and again by name: O_NONBLOCK so that a FIFO without a reader
 * (or a device) never blocks a constructor that runs in every process of the server. */
#define LOG_OPEN_FLAGS (O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)

static int log_fd = 2;
static dev_t log_dev;
static ino_t log_ino;
static int log_is_file;
static char log_path[4096];

static int is_log_file(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == log_dev && st.st_ino == log_ino;
}

/* What descriptor 2 was when the process started (a daemon may close it, and the next file
 * it opens, a client's upload, gets the number): lines go to it only while it still is. */
static dev_t stderr_dev;
static ino_t stderr_ino;
static int stderr_known = -1; /* -1: not looked at yet; 0: closed at start */

static void note_stderr(void) {
    struct stat st;
    stderr_known = fstat(2, &st) == 0;
    stderr_dev = stderr_known ? st.st_dev : 0;
    stderr_ino = stderr_known ? st.st_ino : 0;
}

static int stderr_is_ours(void) {
    struct stat st;
    if (stderr_known < 0)
        note_stderr();
    return stderr_known && fstat(2, &st) == 0 && st.st_dev == stderr_dev && st.st_ino == stderr_ino;
}

/* A daemon may close every descriptor at start and reuse the numbers (proftpd does): write
 * only while the descriptor is still the file we opened, else open it again by name (which
 * fails after a chroot or a change of user: then the line goes to stderr, if that is still
 * the process's stderr, else nowhere). */
static int log_fd_is_ours(void) {
    if (log_is_file && is_log_file(log_fd))
        return 1;
    if (!log_is_file)
        return stderr_is_ours();
    int fd = open(log_path, LOG_OPEN_FLAGS);
    if (fd >= 0 && is_log_file(fd)) {
        int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
        if (high >= 0) {
            close(fd);
            fd = high;
        }
        log_fd = fd;
        return 1;
    }
    if (fd >= 0)
        close(fd);
    log_fd = 2;
    log_is_file = 0;
    return stderr_is_ours();
}

static void say(const char *fmt, ...) {
    char line[1024];
    size_t room = sizeof line - 1; /* one byte kept for the newline */
    int n = snprintf(line, room, "shmsesscache drop-in[%ld]: ", (long)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, room - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > room - 1)
        len = room - 1; /* cut: vsnprintf wrote at most that much */
    line[len++] = '\n';
    if (log_fd_is_ours()) {
        ssize_t w = write(log_fd, line, len);
        (void)w;
    }
}

/* Each kind of message once per process (a forked worker says it again for itself). */
enum once { ONCE_CACHE, ONCE_OWN_CALLBACKS, ONCE_CACHE_OFF, ONCE_INSTALL,
            ONCE_INSTALLED, ONCE_ROOT, ONCE_CLIENT_CACHE, ONCE_FOREIGN,
            ONCE_COUNT };
static pid_t said_in[ONCE_COUNT];

static int first_time(enum once what) {
    pid_t me = getpid();
    if (__atomic_exchange_n(&said_in[what], me, __ATOMIC_RELAXED) == me)
        return 0;
    return 1;
}

static void library_log(int level, const char *message, void *userdata) {
    (void)userdata;
    say("%s: %s", level <= 1 ? "error" : level == 2 ? "warning" : "info", message);
}

static void open_log(const char *file) {
    int fd = open(file, LOG_OPEN_FLAGS | O_CREAT, 0600);
    struct stat st;
    int fifo_unread = fd < 0 && errno == ENXIO; /* what O_NONBLOCK gives for a FIFO nobody reads */
    if (!fifo_unread && (fd < 0 || fstat(fd, &st) != 0)) {
        say("cannot open the log file %s (%s): logging to stderr", file, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    if (fifo_unread || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        say("the log file %s is not a regular file (a FIFO, device or socket): logging to stderr; "
            "give SHMSESS_PRELOAD_LOG a file", file);
        return;
    }
    /* Far from the low numbers a daemon's own files get. */
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
    if (high >= 0) {
        close(fd);
        fd = high;
    }
    log_fd = fd;
    log_dev = st.st_dev;
    log_ino = st.st_ino;
    log_is_file = 1;
    snprintf(log_path, sizeof log_path, "%s", file);
}

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* "1" or "0" (unset or empty: 0); anything else is refused with the fix. */
static int env_switch(const char *name, int *out) {
    const char *v = env(name);
    if (!v || strcmp(v, "0") == 0) {
        *out = 0;
        return 1;
    }
    if (strcmp(v, "1") == 0) {
        *out = 1;
        return 1;
    }
    return 0;
}

/* Bytes, or a number with K, M or G (powers of 1024), as `shmsesscache run --size` takes. */
static int parse_size(const char *s, uint64_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    /* strtoull skips blanks and takes a sign (" -1" wraps to 2^64 - 1): digits only. */
    if (errno || end == s || *s < '0' || *s > '9')
        return 0;
    uint64_t mult = 1;
    switch (*end) {
    case 'K': case 'k': mult = 1ull << 10; end++; break;
    case 'M': case 'm': mult = 1ull << 20; end++; break;
    case 'G': case 'g': mult = 1ull << 30; end++; break;
    }
    if (strcmp(end, "B") == 0 || strcmp(end, "iB") == 0)
        end += strlen(end);
    if (*end || n == 0 || n > UINT64_MAX / mult)
        return 0;
    *out = n * mult;
    return 1;
}

static void read_settings(void) {
    static const char *switches[] = {"SHMSESS_PRELOAD_NO_TICKETS",
                                     "SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF",
                                     "SHMSESS_PRELOAD_FORCE"};
    int *targets[] = {&cfg.no_tickets, &cfg.ignore_unexpected_eof, &cfg.force};
    cfg.path = env("SHMSESS_PRELOAD_PATH");
    cfg.only = env("SHMSESS_PRELOAD_ONLY");
    const char *size = env("SHMSESS_PRELOAD_SIZE");
    if (size && !parse_size(size, &cfg.size))
        cfg.bad = "SHMSESS_PRELOAD_SIZE is not a size (examples: 8388608, 512K, 64M, 1G)";
    for (size_t i = 0; i < sizeof switches / sizeof *switches; i++)
        if (!env_switch(switches[i], targets[i]) && !cfg.bad)
            cfg.bad = "SHMSESS_PRELOAD_NO_TICKETS, _IGNORE_UNEXPECTED_EOF and _FORCE take 1 or 0";
}

/* ---- the real libssl functions ---- */

static __thread int inside; /* in a call into the library: pass everything through */

#define REAL(name) real_##name
#define DECLARE_REAL(ret, name, params) static ret(*real_##name) params
DECLARE_REAL(SSL_CTX *, SSL_CTX_new, (const SSL_METHOD *));
DECLARE_REAL(SSL_CTX *, SSL_CTX_new_ex, (OSSL_LIB_CTX *, const char *, const SSL_METHOD *));
DECLARE_REAL(SSL *, SSL_new, (SSL_CTX *));
DECLARE_REAL(void, SSL_set_accept_state, (SSL *));
DECLARE_REAL(int, SSL_accept, (SSL *));
DECLARE_REAL(long, SSL_CTX_ctrl, (SSL_CTX *, int, long, void *));
DECLARE_REAL(int, SSL_CTX_set_session_id_context, (SSL_CTX *, const unsigned char *, unsigned int));
DECLARE_REAL(void, SSL_CTX_sess_set_new_cb, (SSL_CTX *, int (*)(SSL *, SSL_SESSION *)));
DECLARE_REAL(void, SSL_CTX_sess_set_remove_cb, (SSL_CTX *, void (*)(SSL_CTX *, SSL_SESSION *)));
DECLARE_REAL(void, SSL_CTX_sess_set_get_cb,
             (SSL_CTX *, SSL_SESSION *(*)(SSL *, const unsigned char *, int, int *)));

/* Every function interposed here: one list for the lookups, the check of where they are and
 * the version script (the Makefile reads the names from this macro). */
#define INTERPOSED(X)                                                                              \
    X(SSL_CTX_new) X(SSL_CTX_new_ex) X(SSL_new) X(SSL_set_accept_state) X(SSL_accept)               \
    X(SSL_CTX_ctrl) X(SSL_CTX_set_session_id_context) X(SSL_CTX_sess_set_new_cb)                   \
    X(SSL_CTX_sess_set_remove_cb) X(SSL_CTX_sess_set_get_cb)
#define REAL_ENTRY(name) {(void **)&REAL(name), #name},
static const struct {
    void **slot;
    const char *name;
} reals[] = {INTERPOSED(REAL_ENTRY)};

/* Set when what dlsym(RTLD_NEXT) finds is not the libssl.so.3 this preload was linked with
 * (GnuTLS's OpenSSL compatibility layer, a bundled libssl 1.1): its objects are not OpenSSL
 * 3's, so every call is passed through untouched, as without the drop-in. */
static int foreign;
static const char *foreign_name;
static int left_out; /* not a program SHMSESS_PRELOAD_ONLY names */
static pthread_once_t resolved = PTHREAD_ONCE_INIT;

/* All looked up at once, on first use (a constructor of another object may call libssl before
 * ours): each must be the definition in libssl.so.3 itself. */
static void resolve_all(void) {
    void *libssl3 = dlopen("libssl.so.3", RTLD_LAZY | RTLD_NOLOAD);
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        void *next = dlsym(RTLD_NEXT, reals[i].name);
        __atomic_store_n(reals[i].slot, next, __ATOMIC_RELEASE);
        if (next && (!libssl3 || dlsym(libssl3, reals[i].name) != next) && !foreign) {
            foreign = 1;
            foreign_name = reals[i].name;
        }
    }
}

static void *resolve(void **slot, const char *name) {
    pthread_once(&resolved, resolve_all);
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        say("error: %s not found after the drop-in (%s); is libssl linked?", name, dlerror());
        abort(); /* cannot forward the call: nothing sensible is left to do */
    }
    return p;
}
#define RESOLVE(name) ((__typeof__(REAL(name)))resolve((void **)&REAL(name), #name))

/* Whether a call is the server's, on OpenSSL 3's objects: not the library's own calls coming
 * back through here, not another library's SSL functions. */
static int ours(void) {
    pthread_once(&resolved, resolve_all);
    if (foreign && first_time(ONCE_FOREIGN)) {
        Dl_info where = {0};
        dladdr(dlsym(RTLD_NEXT, foreign_name), &where);
        say("info: %s after the drop-in is in %s, not OpenSSL 3's libssl.so.3: every SSL call is "
            "passed through untouched (no shared cache in this process)",
            foreign_name, where.dli_fname ? where.dli_fname : "another object");
    }
    return !inside && !foreign && !left_out;
}

/* ---- what the server did to each SSL_CTX (kept in its ex_data) ---- */

enum {
    ST_SEEN = 1 << 0,
    ST_SID_CTX = 1 << 1,        /* the server set a session id context */
    ST_OWN_NEW_CB = 1 << 2,
    ST_OWN_GET_CB = 1 << 3,
    ST_OWN_REMOVE_CB = 1 << 4,
    ST_MODE_SET = 1 << 5,       /* the server set a cache mode (in the high bits) */
    ST_DECIDED = 1 << 6,
    ST_OPTIONS_PER_SSL = 1 << 7, /* installed on a generic context: options go to accepting SSLs */
    ST_MODE_SHIFT = 16,
};

static int ex_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static void make_ex_index(void) {
    ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static uintptr_t state_of(const SSL_CTX *ctx) {
    pthread_once(&ex_once, make_ex_index);
    return ex_index < 0 ? 0 : (uintptr_t)SSL_CTX_get_ex_data(ctx, ex_index);
}

static void set_state(SSL_CTX *ctx, uintptr_t st) {
    pthread_once(&ex_once, make_ex_index);
    if (ex_index >= 0)
        SSL_CTX_set_ex_data(ctx, ex_index, (void *)(st | ST_SEEN));
}

static void add_state(SSL_CTX *ctx, uintptr_t bits) {
    if (ctx)
        set_state(ctx, state_of(ctx) | bits);
}

/* Made with TLS_method (or DTLS_method): its SSLs may connect as well as accept. */
static int is_generic_context(const SSL_CTX *ctx) {
    const SSL_METHOD *m = SSL_CTX_get_ssl_method(ctx);
    return m != TLS_client_method() && m != DTLS_client_method() && m != TLS_server_method() &&
           m != DTLS_server_method();
}

/* A client-only method never serves; a server-only one always does; a generic one
 * (TLS_method) serves only once one of its SSLs accepts, and only if it has a certificate:
 * a session id context proves nothing (CPython sets "Python" on every SSLContext, client
 * ones too), so a process that only connects never installs nor maps a segment. */
static int is_server_context(const SSL_CTX *ctx, int accepting) {
    const SSL_METHOD *m = SSL_CTX_get_ssl_method(ctx);
    if (m == TLS_client_method() || m == DTLS_client_method())
        return 0;
    if (m == TLS_server_method() || m == DTLS_server_method())
        return 1;
    return accepting && SSL_CTX_get0_certificate(ctx) != NULL;
}

/* ---- the cache: named, attached at load; anonymous, made by the first server context ---- */

static shmsess_cache *cache;
static int cache_tried;
static const char *cache_error = "not made yet";
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void make_cache(void) {
    shmsess_options o;
    shmsess_options_init(&o);
    o.path = cfg.path;
    if (cfg.size)
        o.size_bytes = cfg.size;
    /* STRICT: the checks `shmsesscache run` makes (absolute path, a size the machine can back). */
    o.flags |= SHMSESS_NEVER_LOCK_AS_ROOT | SHMSESS_STRICT_SETTINGS;
    if (cfg.bad) {
        cache_error = cfg.bad;
        return;
    }
    inside++;
    shmsess_result r = shmsess_options_check(&o);
    if (r == SHMSESS_OK)
        r = shmsess_cache_create(&o, &cache);
    inside--;
    if (r != SHMSESS_OK) {
        static char why[512];
        snprintf(why, sizeof why, "%s", shmsess_last_error());
        cache_error = why;
        cache = NULL;
    }
}

/* Made once: a forked child inherits `cache_tried` and the mapping with it. */
static void ensure_cache(void) {
    pthread_mutex_lock(&cache_lock);
    if (!cache_tried) {
        cache_tried = 1;
        make_cache();
        if (!cache && first_time(ONCE_CACHE))
            say("warning: no shared session cache, the server runs with its own: %s", cache_error);
    }
    pthread_mutex_unlock(&cache_lock);
}

/* The name of the program this process runs: the basename of /proc/self/exe, which the
 * process cannot choose (argv[0] is whatever its parent passed); argv[0]'s where /proc is not
 * mounted. */
static void program_name(char *out, size_t len) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *name = program_invocation_name;
    if (n > 0) {
        exe[n] = 0;
        name = exe;
    }
    const char *slash = strrchr(name, '/');
    snprintf(out, len, "%s", slash ? slash + 1 : name);
}

/* SHMSESS_PRELOAD_ONLY=imap-login,pop3-login: whether this program is one of them. */
static int listed_in_only(void) {
    char me[4096];
    program_name(me, sizeof me);
    size_t mine = strlen(me);
    for (const char *p = cfg.only; *p;) {
        size_t n = strcspn(p, ",");
        if (n == mine && strncmp(p, me, n) == 0)
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

__attribute__((constructor)) static void preload_init(void) {
    note_stderr();
    read_settings();
    /* Not one of the programs that serve (dovecot's imap processes run as the mail user): no
     * segment mapped, nothing installed, not a line logged. */
    if (cfg.only && !listed_in_only()) {
        left_out = 1;
        return;
    }
    const char *log = env("SHMSESS_PRELOAD_LOG");
    if (log)
        open_log(log);
    /* A bad setting is said by ensure_cache, once, where a server context needs the cache. */
    shmsess_set_log_callback(library_log, NULL, 2);
    /* Mapped now, before the server forks, drops privileges or chroots. */
    if (cfg.path)
        ensure_cache();
}

/* ---- deciding, once per context, at its first SSL_new ---- */

static void describe_callbacks(uintptr_t st, char *out, size_t len) {
    snprintf(out, len, "%s%s%s", st & ST_OWN_NEW_CB ? " new" : "", st & ST_OWN_GET_CB ? " get" : "",
             st & ST_OWN_REMOVE_CB ? " remove" : "");
}

/* Leave alone a server that runs its own session cache or turned caching off. */
static int server_objects(uintptr_t st) {
    long mode = (long)(st >> ST_MODE_SHIFT);
    if (st & (ST_OWN_NEW_CB | ST_OWN_GET_CB | ST_OWN_REMOVE_CB)) {
        if (first_time(ONCE_OWN_CALLBACKS)) {
            char which[32];
            describe_callbacks(st, which, sizeof which);
            say("info: left a server context alone: the server set its own session callbacks (%s ); "
                "set SHMSESS_PRELOAD_FORCE=1 (shmsesscache run --force) to replace them",
                which);
        }
        return 1;
    }
    if ((st & ST_MODE_SET) && !(mode & SSL_SESS_CACHE_SERVER)) {
        if (first_time(ONCE_CACHE_OFF))
            say("info: left a server context alone: the server turned its session cache off "
                "(cache mode 0x%lx); set SHMSESS_PRELOAD_FORCE=1 (shmsesscache run --force) to "
                "cache its sessions anyway", mode);
        return 1;
    }
    return 0;
}

/* What --no-tickets and --ignore-unexpected-eof add to a served connection. */
static uint64_t server_options(void) {
    return (cfg.no_tickets ? SSL_OP_NO_TICKET : 0) |
           (cfg.ignore_unexpected_eof ? SSL_OP_IGNORE_UNEXPECTED_EOF : 0);
}

static void install_on(SSL_CTX *ctx, uintptr_t st) {
    uint32_t flags = (st & ST_SID_CTX) ? SHMSESS_KEEP_SESSION_ID_CONTEXT : 0;
    inside++;
    shmsess_result r = shmsess_install_flags(cache, ctx, flags);
    if (r == SHMSESS_OK && server_options()) {
        /* A generic context's connecting SSLs must not lose their tickets or their
         * truncation check: there the options go to each SSL that accepts. */
        if (is_generic_context(ctx))
            add_state(ctx, ST_OPTIONS_PER_SSL);
        else
            SSL_CTX_set_options(ctx, server_options());
    }
    inside--;
    if (r != SHMSESS_OK && first_time(ONCE_INSTALL))
        say("warning: could not install the shared cache on a server context (it keeps its own): %s",
            shmsess_last_error());
    else if (r == SHMSESS_OK && first_time(ONCE_INSTALLED))
        say("info: shared cache installed on a server context (session id context %s%s%s)",
            (st & ST_SID_CTX) ? "the server's" : "derived", cfg.no_tickets ? ", tickets off" : "",
            cfg.ignore_unexpected_eof ? ", unexpected EOF ignored" : "");
}

/* Root never takes a shard lock in memory its unprivileged workers write, so installing in a
 * root process would turn OpenSSL's own cache off and then serve nothing: it would resume
 * less than without the drop-in. Leave its contexts exactly as the server made them. */
static int runs_as_root(void) {
    if (geteuid() != 0)
        return 0;
    if (first_time(ONCE_ROOT))
        say("info: this process runs as root: its server contexts keep OpenSSL's own session "
            "cache (root never locks a segment that unprivileged workers write); the shared "
            "cache serves the server's unprivileged workers");
    return 1;
}

/* A generic context that caches client sessions (SSL_SESS_CACHE_CLIENT) makes client
 * connections too; installing would drop that bit and replace its callbacks, which its
 * client side would see. Left alone, even with --force. */
static int caches_client_sessions(const SSL_CTX *ctx, uintptr_t st) {
    long mode = (long)(st >> ST_MODE_SHIFT);
    if (!is_generic_context(ctx) || !(st & ST_MODE_SET) || !(mode & SSL_SESS_CACHE_CLIENT))
        return 0;
    if (first_time(ONCE_CLIENT_CACHE))
        say("info: left a TLS_method context alone: its cache mode 0x%lx has SSL_SESS_CACHE_CLIENT, "
            "so it also makes client connections, which the shared cache must not change", mode);
    return 1;
}

/* Once per context: at its first SSL_new for a context whose method says which side it is;
 * for a generic one at the first SSL that accepts while it has a certificate (until then it is
 * left undecided: a certificate may come later). */
static void decide(SSL_CTX *ctx, int accepting) {
    static pthread_mutex_t deciding = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&deciding);
    uintptr_t st = state_of(ctx);
    int serves = is_server_context(ctx, accepting);
    if (!(st & ST_DECIDED) && (serves || !is_generic_context(ctx))) {
        set_state(ctx, st | ST_DECIDED);
        if (serves && !caches_client_sessions(ctx, st) && !runs_as_root()) {
            ensure_cache();
            if (cache && (cfg.force || !server_objects(st)))
                install_on(ctx, st);
        }
    }
    pthread_mutex_unlock(&deciding);
}

/* ---- the interposed entry points ---- */

static SSL_CTX *noticed(SSL_CTX *ctx) {
    if (ctx && ours()) {
        add_state(ctx, 0);
        /* An anonymous segment is made here, before the server forks its workers; client-only
         * processes and those that never make a server context make none. */
        if (is_server_context(ctx, 0)) /* a TLS_server_method one */
            ensure_cache();
    }
    return ctx;
}

EXPORT SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    return noticed(RESOLVE(SSL_CTX_new)(method));
}

EXPORT SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *method) {
    return noticed(RESOLVE(SSL_CTX_new_ex)(libctx, propq, method));
}

EXPORT SSL *SSL_new(SSL_CTX *ctx) {
    if (ctx && ours() && !(state_of(ctx) & ST_DECIDED))
        decide(ctx, 0);
    return RESOLVE(SSL_new)(ctx);
}

/* An SSL of a generic context becomes a server one here (or in SSL_accept, which may not
 * come through SSL_set_accept_state): it gets the options its context could not carry. */
static void accepting(SSL *s) {
    if (!s || !ours())
        return;
    SSL_CTX *ctx = SSL_get_SSL_CTX(s);
    if (!(state_of(ctx) & ST_DECIDED))
        decide(ctx, 1);
    if (state_of(ctx) & ST_OPTIONS_PER_SSL)
        SSL_set_options(s, server_options());
}

EXPORT void SSL_set_accept_state(SSL *s) {
    RESOLVE(SSL_set_accept_state)(s);
    accepting(s);
}

EXPORT int SSL_accept(SSL *s) {
    if (s && ours() && SSL_in_before(s))
        accepting(s);
    return RESOLVE(SSL_accept)(s);
}

EXPORT long SSL_CTX_ctrl(SSL_CTX *ctx, int cmd, long larg, void *parg) {
    if (ctx && cmd == SSL_CTRL_SET_SESS_CACHE_MODE && ours()) {
        uintptr_t st = state_of(ctx) & ((1u << ST_MODE_SHIFT) - 1);
        set_state(ctx, st | ST_MODE_SET | ((uintptr_t)(larg & 0xffff) << ST_MODE_SHIFT));
    }
    return RESOLVE(SSL_CTX_ctrl)(ctx, cmd, larg, parg);
}

EXPORT int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid, unsigned int len) {
    int ok = RESOLVE(SSL_CTX_set_session_id_context)(ctx, sid, len);
    if (ok == 1 && len > 0 && ours()) {
        add_state(ctx, ST_SID_CTX);
        noticed(ctx);
    }
    return ok;
}

EXPORT void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*cb)(SSL *, SSL_SESSION *)) {
    if (cb && ours())
        add_state(ctx, ST_OWN_NEW_CB);
    RESOLVE(SSL_CTX_sess_set_new_cb)(ctx, cb);
}

EXPORT void SSL_CTX_sess_set_remove_cb(SSL_CTX *ctx, void (*cb)(SSL_CTX *, SSL_SESSION *)) {
    if (cb && ours())
        add_state(ctx, ST_OWN_REMOVE_CB);
    RESOLVE(SSL_CTX_sess_set_remove_cb)(ctx, cb);
}

EXPORT void SSL_CTX_sess_set_get_cb(SSL_CTX *ctx,
                                    SSL_SESSION *(*cb)(SSL *, const unsigned char *, int, int *)) {
    if (cb && ours())
        add_state(ctx, ST_OWN_GET_CB);
    RESOLVE(SSL_CTX_sess_set_get_cb)(ctx, cb);
}
