/*
 * C test harness for shmsesscache, using only the public header. Run under valgrind by
 * `make test-c`: every process (the parent and the forked "workers") must be free of leaks and
 * invalid accesses, error paths included.
 *
 * Handshakes run over memory BIO pairs. A "worker" is a child forked after the cache and the
 * SSL_CTXs were created, exactly like a prefork server's; it does one handshake and reports
 * over a pipe whether the session was resumed, plus the client's session (DER) for the next
 * worker to offer.
 *
 * usage: c_harness CERTDIR   (server.pem/key, vhost2.pem/key, client.pem/key)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <shmsesscache.h>

#include "testlib.h"

/* ---------- tests ---------- */

static void test_api_errors(void)
{
    shmsess_options o;
    shmsess_cache *c = (shmsess_cache *)0x1;
    CHECK((shmsess_options_init)(NULL) == SHMSESS_ERR_NULL_ARGUMENT, "options_init(NULL)");
    CHECK(shmsess_options_init_sized(&o, 40) == SHMSESS_ERR_INVALID_ARGUMENT, "options smaller than 0.1");
    CHECK(strlen(shmsess_last_error()) > 0, "a failure leaves a message");
    shmsess_options_init(&o);
    CHECK(shmsess_cache_create(NULL, &c) == SHMSESS_ERR_NULL_ARGUMENT && c == NULL, "NULL opts");
    CHECK(shmsess_cache_create(&o, NULL) == SHMSESS_ERR_NULL_ARGUMENT, "NULL out");
    o.size_bytes = 0;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT, "size 0: %s", shmsess_last_error());
    o.size_bytes = 1000;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT && strstr(shmsess_last_error(), "too small"),
          "size 1000: %s", shmsess_last_error());
    shmsess_options_init(&o);
    o.slot_bytes = 7;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT, "slot_bytes 7");
    shmsess_options_init(&o);
    o.struct_size = 4;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT, "struct_size 4");
    shmsess_options_init(&o);
    o.flags = 0x100;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT, "unknown flag");
    shmsess_options_init(&o);
    o.session_id_context_len = 40;
    o.session_id_context = (const uint8_t *)"0123456789012345678901234567890123456789";
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT, "sid ctx of 40 bytes");

    c = new_cache(0);
    unsigned char id[33] = { 1, 2, 3 }, data[8193], buf[64];
    memset(data, 7, sizeof data);
    size_t out_len = 0;
    CHECK(shmsess_cache_store(c, id, 0, data, 10, 2000000000) == SHMSESS_ERR_INVALID_ARGUMENT, "id length 0");
    CHECK(shmsess_cache_store(c, id, 33, data, 10, 2000000000) == SHMSESS_ERR_INVALID_ARGUMENT, "id length 33");
    CHECK(shmsess_cache_store(c, NULL, 32, data, 10, 2000000000) == SHMSESS_ERR_NULL_ARGUMENT, "NULL id");
    CHECK(shmsess_cache_store(c, id, 32, NULL, 10, 2000000000) == SHMSESS_ERR_NULL_ARGUMENT, "NULL data");
    CHECK(shmsess_cache_store(c, id, 32, data, 8193, 2000000000) == SHMSESS_ERR_TOO_LARGE, "8193 bytes");
    CHECK(stats_of(c).too_large == 1, "too large is counted");
    CHECK(shmsess_cache_store(c, id, 32, data, 8192, 2000000000) == SHMSESS_OK, "8192 bytes: %s", shmsess_last_error());
    CHECK(shmsess_cache_lookup(c, id, 32, buf, sizeof buf, &out_len, 0) == SHMSESS_ERR_BUFFER_TOO_SMALL && out_len == 8192,
          "small buffer reports the size needed (%zu)", out_len);
    CHECK(shmsess_cache_lookup(c, id, 32, NULL, 0, NULL, 0) == SHMSESS_ERR_NULL_ARGUMENT, "NULL out_len");
    CHECK(shmsess_cache_lookup(c, (const unsigned char *)"zz", 2, buf, sizeof buf, &out_len, 0) == SHMSESS_ERR_NOT_FOUND, "miss");
    CHECK(shmsess_cache_remove(c, (const unsigned char *)"zz", 2) == SHMSESS_ERR_NOT_FOUND, "remove unknown");
    CHECK(shmsess_cache_remove(c, id, 32) == SHMSESS_OK, "remove known");
    CHECK(shmsess_install(c, NULL) == SHMSESS_ERR_NULL_ARGUMENT, "install NULL ctx");
    CHECK(shmsess_install(NULL, NULL) == SHMSESS_ERR_NULL_ARGUMENT, "install NULL cache");
    CHECK(shmsess_cache_stats(c, NULL) == SHMSESS_ERR_NULL_ARGUMENT, "stats NULL");
    CHECK(shmsess_cache_flush(NULL, 0) == SHMSESS_ERR_NULL_ARGUMENT, "flush NULL");
    SSL_CTX *nocert = SSL_CTX_new(TLS_server_method());
    CHECK(shmsess_install(c, nocert) == SHMSESS_ERR_INVALID_ARGUMENT && strstr(shmsess_last_error(), "certificate"),
          "install without a certificate or context: %s", shmsess_last_error());
    /* Per-context flags: only SHMSESS_KEEP_SESSION_ID_CONTEXT, which also lets a context without a
     * certificate be installed on (the caller set its session id context). */
    CHECK(shmsess_install_flags(c, nocert, SHMSESS_NO_TLS13) == SHMSESS_ERR_INVALID_ARGUMENT &&
              strstr(shmsess_last_error(), "SHMSESS_KEEP_SESSION_ID_CONTEXT") && !SSL_CTX_sess_get_new_cb(nocert),
          "install_flags with another flag is refused, nothing set: %s", shmsess_last_error());
    CHECK(shmsess_install_flags(c, nocert, SHMSESS_KEEP_SESSION_ID_CONTEXT) == SHMSESS_OK &&
              SSL_CTX_sess_get_new_cb(nocert) != NULL,
          "install_flags keeping the caller's context: %s", shmsess_last_error());
    CHECK(shmsess_install_flags(NULL, nocert, 0) == SHMSESS_ERR_NULL_ARGUMENT, "install_flags NULL cache");
    SSL_CTX_free(nocert);
    shmsess_options ro;
    shmsess_options_init(&ro);
    ro.flags = SHMSESS_NEVER_LOCK_AS_ROOT;
    CHECK(shmsess_options_check(&ro) == SHMSESS_OK, "SHMSESS_NEVER_LOCK_AS_ROOT is a known flag: %s",
          shmsess_last_error());
    shmsess_cache_free(c);
    CHECK(shmsess_cache_stats(c, &(shmsess_stats){ 0 }) == SHMSESS_ERR_BAD_HANDLE, "use after free is refused");
    shmsess_cache_free(c); /* double free: ignored, reported */
    CHECK(strstr(shmsess_last_error(), "not a live handle") != NULL, "double free is reported");
    shmsess_cache_free(NULL);
    CHECK(strcmp(shmsess_result_name(SHMSESS_ERR_IO), "SHMSESS_ERR_IO") == 0, "result names");
}

/* The second tier's options are checked at creation, with messages that name the problem and
 * never echo a URL (it may carry a password) or a key. */
/* Mappings of this process's anonymous segments (memfd "shmsesscache..."). */
static int segment_mappings(void)
{
    char line[1024];
    int n = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "/memfd:shmsesscache"))
            n++;
    fclose(f);
    return n;
}

static void test_remote_options(void)
{
    char dir[] = "/tmp/shmsess-remote-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char key[600], loose[600];
    snprintf(key, sizeof key, "%s/key", dir);
    snprintf(loose, sizeof loose, "%s/loose", dir);
    const char *hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    int fd = open(key, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0 && write(fd, hex, strlen(hex)) == (ssize_t)strlen(hex), "write key");
    close(fd);
    fd = open(loose, O_WRONLY | O_CREAT | O_EXCL, 0644);
    CHECK(fd >= 0 && write(fd, hex, strlen(hex)) == (ssize_t)strlen(hex), "write loose key");
    fchmod(fd, 0644);
    close(fd);

    shmsess_options o;
    shmsess_cache *c = NULL;
    shmsess_options_init(&o);
    CHECK(o.remote_url == NULL && o.remote_timeout_ms == 25 && o.remote_backoff_ms == 2000, "remote defaults");
    o.size_bytes = 1 << 20;
    o.remote_url = "redis://127.0.0.1:1/0";
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT && strstr(shmsess_last_error(), "remote_key_file"),
          "a remote tier without a key file: %s", shmsess_last_error());
    o.remote_key_file = loose;
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_SECURITY && strstr(shmsess_last_error(), "600"),
          "a key file others can read: %s", shmsess_last_error());
    o.remote_key_file = key;
    o.remote_url = "http://user:hunter2@example/";
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_ERR_INVALID_ARGUMENT && !strstr(shmsess_last_error(), "hunter2"),
          "a URL that is not redis: %s", shmsess_last_error());
    o.remote_url = "redis://127.0.0.1:1/0";
    CHECK(shmsess_cache_create(&o, &c) == SHMSESS_OK, "a remote tier is created without connecting: %s",
          shmsess_last_error());
    /* Nothing listens on port 1: lookups are misses, stores are dropped, nothing fails. */
    unsigned char id[32] = { 1 }, buf[64];
    size_t n;
    CHECK(shmsess_cache_lookup(c, id, 32, buf, sizeof buf, &n, 0) == SHMSESS_ERR_NOT_FOUND, "raw API stays local");
    /* A forked worker that uses the tier builds its own per-process state and must leave the
     * parent's alone, yet reachable: valgrind in the worker (which checks for leaks at its
     * exit, see in_worker) found the parent's "definitely lost" in every worker. */
    SSL_CTX *sctx = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *cctx = client_ctx(TLS12, 0);
    CHECK(shmsess_install(c, sctx) == SHMSESS_OK, "install with a remote tier: %s", shmsess_last_error());
    struct outcome out;
    in_worker(sctx, cctx, NULL, 0, &out);
    CHECK(out.ok, "a worker's handshake with an unreachable remote tier");
    /* The same in a worker that frees the cache before it exits. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct outcome o2;
        handshake(sctx, cctx, NULL, 0, 0, 1, &o2);
        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
        shmsess_cache_free(c);
        _exit(!o2.ok ? 1 : segment_mappings() != 0 ? 2 : 0); /* 2: the cache left it mapped */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a worker that frees a cache with a remote tier (status %d: 2 = the segment stayed mapped, "
          "99 = valgrind found errors)", status);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    shmsess_cache_free(c);
    unlink(key);
    unlink(loose);
    rmdir(dir);
}

static void test_named_segment_checks(void)
{
    char dir[] = "/tmp/shmsess-harness-XXXXXX";
    if (!mkdtemp(dir))
        return;
    char path[600], link_path[600], bogus[600];
    snprintf(path, sizeof path, "%s/seg", dir);
    snprintf(link_path, sizeof link_path, "%s/link", dir);
    snprintf(bogus, sizeof bogus, "%s/bogus", dir);
    shmsess_options o;
    shmsess_options_init(&o);
    o.size_bytes = 1 << 20;
    o.path = path;
    shmsess_cache *a = NULL, *b = NULL;
    CHECK(shmsess_cache_create(&o, &a) == SHMSESS_OK, "create named: %s", shmsess_last_error());
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "mode %o", st.st_mode & 0777);
    CHECK(shmsess_cache_create(&o, &b) == SHMSESS_OK, "attach named: %s", shmsess_last_error());
    unsigned char id[32] = { 9 }, buf[64];
    size_t n = 0;
    shmsess_cache_store(a, id, 32, (const unsigned char *)"hello", 5, 4000000000u);
    CHECK(shmsess_cache_lookup(b, id, 32, buf, sizeof buf, &n, 0) == SHMSESS_OK && n == 5, "shared via the file");
    shmsess_cache_free(b);
    o.size_bytes = 2 << 20;
    CHECK(shmsess_cache_create(&o, &b) == SHMSESS_ERR_FORMAT && strstr(shmsess_last_error(), "requested"),
          "other size refused: %s", shmsess_last_error());
    o.size_bytes = 1 << 20;
    CHECK(symlink(path, link_path) == 0, "symlink");
    o.path = link_path;
    CHECK(shmsess_cache_create(&o, &b) == SHMSESS_ERR_SECURITY && strstr(shmsess_last_error(), "symbolic link"),
          "symlink refused: %s", shmsess_last_error());
    int fd = open(bogus, O_CREAT | O_WRONLY, 0600);
    char junk[8192];
    memset(junk, 'x', sizeof junk);
    CHECK(fd >= 0 && write(fd, junk, sizeof junk) == (ssize_t)sizeof junk, "write bogus");
    close(fd);
    o.path = bogus;
    CHECK(shmsess_cache_create(&o, &b) == SHMSESS_ERR_FORMAT && strstr(shmsess_last_error(), "magic"),
          "wrong magic refused: %s", shmsess_last_error());
    chmod(path, 0666);
    o.path = path;
    CHECK(shmsess_cache_create(&o, &b) == SHMSESS_ERR_SECURITY && strstr(shmsess_last_error(), "writable"),
          "loose mode refused: %s", shmsess_last_error());
    shmsess_cache_free(a);
    unlink(path);
    unlink(link_path);
    unlink(bogus);
    rmdir(dir);
}

/* Session made by worker 1, resumed by worker 2, then offered again to worker 3. */
static void resume_across_workers(const char *label, shmsess_cache *cache, SSL_CTX *s, SSL_CTX *c, int early,
                                  int expect_third)
{
    struct outcome *first = calloc(3, sizeof *first), *second = first + 1, *third = first + 2;
    in_worker(s, c, NULL, 0, first);
    CHECK(first->ok && !first->reused && first->der_len > 0, "%s: full handshake in worker 1", label);
    in_worker(s, c, first, early, second);
    CHECK(second->ok && second->reused, "%s: worker 2 resumes worker 1's session", label);
    if (early)
        CHECK(second->early, "%s: 0-RTT data accepted the first time", label);
    in_worker(s, c, first, early, third);
    CHECK(third->ok && third->reused == expect_third, "%s: the same session offered again: reused=%d, expected %d",
          label, third->reused, expect_third);
    if (early)
        CHECK(!third->early, "%s: 0-RTT replay of the same ticket is refused", label);
    (void)cache;
    free(first);
}

static void test_resumption(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *s12 = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *c12 = client_ctx(TLS12, 0);
    SSL_CTX *s13 = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c13 = client_ctx(TLS13, 0);
    CHECK(shmsess_install(cache, s12) == SHMSESS_OK && shmsess_install(cache, s13) == SHMSESS_OK, "install: %s",
          shmsess_last_error());
    CHECK(SSL_CTX_get_session_cache_mode(s12) == (SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL), "default mode");
    resume_across_workers("TLS 1.2", cache, s12, c12, 0, 1);
    resume_across_workers("TLS 1.3 stateful", cache, s13, c13, 0, 0);
    shmsess_stats st = stats_of(cache);
    CHECK(st.taken == 1, "TLS 1.3 lookup took the entry (taken=%llu)", (unsigned long long)st.taken);

    /* TLS 1.3 stateless tickets are not stored. */
    SSL_CTX *s13t = server_ctx("server", TLS13, 0, 0, 0);
    shmsess_install(cache, s13t);
    uint64_t stores = stats_of(cache).stores;
    struct outcome *o = calloc(1, sizeof *o);
    handshake(s13t, c13, NULL, 0, 0, 1, o);
    st = stats_of(cache);
    CHECK(o->ok && st.stores == stores && st.tls13_stateless_skipped >= 1, "stateless ticket not stored (stores %llu→%llu)",
          (unsigned long long)stores, (unsigned long long)st.stores);

    /* In-process loop: any leak per hit (a wrong *copy) shows up under valgrind. */
    handshake(s12, c12, NULL, 0, 0, 1, o);
    struct outcome *r = calloc(1, sizeof *r);
    int all = 1;
    for (int i = 0; i < 20; i++) {
        handshake(s12, c12, o->der, o->der_len, 0, 1, r);
        all &= r->reused;
    }
    CHECK(all, "20 resumptions in one process");

    /* The SSL_shutdown rule: freeing a connection without SSL_shutdown() removes its session
     * from the shared cache (OpenSSL's remove callback), so it cannot be resumed anywhere. */
    uint64_t removes = stats_of(cache).remove_hits;
    handshake(s12, c12, NULL, 0, 0, 0, o);
    CHECK(stats_of(cache).remove_hits == removes + 1, "unclean close removed the session");
    handshake(s12, c12, o->der, o->der_len, 0, 1, r);
    CHECK(!r->reused, "a session lost to an unclean close is not resumed");

    /* remove_session_cb tolerates sessions that were never stored. */
    SSL_SESSION *fresh = SSL_SESSION_new();
    SSL_SESSION_set1_id(fresh, (const unsigned char *)"never-stored-session-id-01234567", 32);
    uint64_t misses = stats_of(cache).remove_misses;
    SSL_CTX_remove_session(s12, fresh);
    CHECK(stats_of(cache).remove_misses == misses + 1, "remove of an unknown id is a counted miss");
    SSL_SESSION_free(fresh);

    free(o);
    free(r);
    SSL_CTX_free(s12);
    SSL_CTX_free(s13);
    SSL_CTX_free(s13t);
    SSL_CTX_free(c12);
    SSL_CTX_free(c13);
    shmsess_cache_free(cache);
}

/* Collects what shmsess_cache_iterate hands out; stops after `stop_after` entries if set. */
struct walk {
    int seen, stop_after, saw_12, saw_13;
    const unsigned char *id12, *id13;
};

static int walk_entry(const uint8_t *id, size_t id_len, const uint8_t *data, size_t data_len, uint64_t expires,
                      void *userdata)
{
    struct walk *w = userdata;
    w->seen++;
    if (id_len == 32 && memcmp(id, w->id12, 32) == 0 && data_len > 0 && data[0] == 0x30 && expires > 0)
        w->saw_12 = 1;
    if (id_len == 32 && memcmp(id, w->id13, 32) == 0 && data_len > 0 && expires > 0)
        w->saw_13 = 1;
    return w->stop_after && w->seen >= w->stop_after;
}

/* The raw API as an Apache socache provider uses it: i2d'd sessions stored by id, looked up
 * with SHMSESS_LOOKUP_TAKE_TLS13 (TLS 1.3 single use, TLS 1.2 kept), walked by iterate. */
static void test_raw_take_modes_and_iterate(void)
{
    shmsess_cache *cache = new_cache(0);
    struct outcome *o12 = calloc(1, sizeof *o12), *o13 = calloc(1, sizeof *o13);
    SSL_CTX *s12 = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *c12 = client_ctx(TLS12, 0);
    SSL_CTX *s13 = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c13 = client_ctx(TLS13, 0);
    handshake(s12, c12, NULL, 0, 0, 1, o12);
    handshake(s13, c13, NULL, 0, 0, 1, o13);
    CHECK(o12->ok && o12->der_len > 0 && o13->ok && o13->der_len > 0, "sessions to store");
    const unsigned char *p12 = o12->der, *p13 = o13->der;
    SSL_SESSION *sess12 = d2i_SSL_SESSION(NULL, &p12, o12->der_len);
    SSL_SESSION *sess13 = d2i_SSL_SESSION(NULL, &p13, o13->der_len);
    unsigned int l12 = 0, l13 = 0;
    const unsigned char *id12 = SSL_SESSION_get_id(sess12, &l12), *id13 = SSL_SESSION_get_id(sess13, &l13);
    CHECK(l12 == 32 && l13 == 32, "32-byte ids (%u, %u)", l12, l13);
    uint64_t later = (uint64_t)time(NULL) + 300;
    CHECK(shmsess_cache_store(cache, id12, l12, o12->der, o12->der_len, later) == SHMSESS_OK, "store 1.2");
    CHECK(shmsess_cache_store(cache, id13, l13, o13->der, o13->der_len, later) == SHMSESS_OK, "store 1.3");

    struct walk w = { .id12 = id12, .id13 = id13 };
    CHECK(shmsess_cache_iterate(cache, walk_entry, &w) == SHMSESS_OK && w.seen == 2 && w.saw_12 && w.saw_13,
          "iterate sees both entries (%d)", w.seen);
    struct walk w1 = { .stop_after = 1, .id12 = id12, .id13 = id13 };
    CHECK(shmsess_cache_iterate(cache, walk_entry, &w1) == SHMSESS_OK && w1.seen == 1, "a callback can stop the walk");
    CHECK(shmsess_cache_iterate(cache, NULL, NULL) == SHMSESS_ERR_NULL_ARGUMENT, "iterate without callback");

    unsigned char buf[8192];
    size_t n = 0;
    for (int i = 0; i < 2; i++)
        CHECK(shmsess_cache_lookup(cache, id12, l12, buf, sizeof buf, &n, SHMSESS_LOOKUP_TAKE_TLS13) == SHMSESS_OK &&
                  n == (size_t)o12->der_len && memcmp(buf, o12->der, n) == 0,
              "TLS 1.2 session stays after a TLS1.3-take lookup (%d)", i);
    CHECK(shmsess_cache_lookup(cache, id13, l13, buf, sizeof buf, &n, SHMSESS_LOOKUP_TAKE_TLS13) == SHMSESS_OK &&
              n == (size_t)o13->der_len,
          "TLS 1.3 session found once");
    CHECK(shmsess_cache_lookup(cache, id13, l13, buf, sizeof buf, &n, SHMSESS_LOOKUP_TAKE_TLS13) == SHMSESS_ERR_NOT_FOUND,
          "TLS 1.3 session taken by the first lookup");
    CHECK(stats_of(cache).taken == 1, "one take counted");

    SSL_SESSION_free(sess12);
    SSL_SESSION_free(sess13);
    free(o12);
    free(o13);
    SSL_CTX_free(s12);
    SSL_CTX_free(c12);
    SSL_CTX_free(s13);
    SSL_CTX_free(c13);
    shmsess_cache_free(cache);
}

static void test_tls13_options(void)
{
    /* With SHMSESS_TLS13_ALLOW_REUSE a stateful ticket resumes again. */
    shmsess_cache *cache = new_cache(SHMSESS_TLS13_ALLOW_REUSE);
    SSL_CTX *s = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c = client_ctx(TLS13, 0);
    shmsess_install(cache, s);
    resume_across_workers("TLS 1.3 reuse allowed", cache, s, c, 0, 1);
    SSL_CTX_free(s);
    shmsess_cache_free(cache);

    /* 0-RTT with SSL_OP_NO_ANTI_REPLAY: accepted once in the whole server, never twice. */
    cache = new_cache(0);
    s = server_ctx("server", TLS13, SSL_OP_NO_TICKET | SSL_OP_NO_ANTI_REPLAY, 16384, 0);
    shmsess_install(cache, s);
    SSL_CTX_set_max_early_data(c, 0);
    resume_across_workers("TLS 1.3 0-RTT", cache, s, c, 1, 0);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);

    /* SHMSESS_KEEP_INTERNAL_CACHE leaves OpenSSL's cache on. */
    cache = new_cache(SHMSESS_KEEP_INTERNAL_CACHE);
    s = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    shmsess_install(cache, s);
    CHECK(SSL_CTX_get_session_cache_mode(s) == SSL_SESS_CACHE_SERVER, "internal cache kept");
    SSL_CTX_free(s);
    shmsess_cache_free(cache);
}

static void test_vhosts_and_client_certs(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *a = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *b = server_ctx("vhost2", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *c = client_ctx(TLS12, 0);
    shmsess_install(cache, a);
    shmsess_install(cache, b);
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    in_worker(a, c, NULL, 0, o);
    in_worker(b, c, o, 0, r);
    CHECK(r->ok && !r->reused, "a session of virtual host A is not resumed on B");
    in_worker(a, c, o, 0, r);
    CHECK(r->ok && r->reused, "... but is on A");

    /* Sessions with a client certificate are larger (about 550 bytes) and still shared. */
    SSL_CTX *v = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 1), *cc = client_ctx(TLS12, 1);
    shmsess_install(cache, v);
    uint64_t slots = stats_of(cache).used_slots;
    in_worker(v, cc, NULL, 0, o);
    CHECK(stats_of(cache).used_slots >= slots + 3, "a client-certificate session spans several slots");
    in_worker(v, cc, o, 0, r);
    CHECK(r->ok && r->reused, "client-certificate session resumed in another worker");

    /* Sessions over 1 KiB (a 4096-bit client certificate) take the callbacks' heap path. */
    SSL_CTX *cb12 = client_ctx(TLS12, 2);
    slots = stats_of(cache).used_slots;
    in_worker(v, cb12, NULL, 0, o);
    CHECK(o->ok && stats_of(cache).used_slots >= slots + 7, "a >1 KiB session is stored (%llu slots)",
          (unsigned long long)(stats_of(cache).used_slots - slots));
    in_worker(v, cb12, o, 0, r);
    CHECK(r->ok && r->reused, "a >1 KiB session resumes in another worker");
    SSL_CTX *v13 = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 1), *cb13 = client_ctx(TLS13, 2);
    shmsess_install(cache, v13);
    uint64_t taken = stats_of(cache).taken;
    in_worker(v13, cb13, NULL, 0, o);
    in_worker(v13, cb13, o, 0, r);
    CHECK(r->ok && r->reused && stats_of(cache).taken == taken + 1, "a >1 KiB TLS 1.3 ticket is taken and resumed");
    in_worker(v13, cb13, o, 0, r);
    CHECK(r->ok && !r->reused, "... once");
    SSL_CTX_free(cb12);
    SSL_CTX_free(v13);
    SSL_CTX_free(cb13);
    free(o);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    SSL_CTX_free(c);
    SSL_CTX_free(v);
    SSL_CTX_free(cc);
    shmsess_cache_free(cache);
}

/* Session-id generator: prefix + CSPRNG at the full 32 bytes, per-worker prefixes, counted;
 * the statistics accessor; callers built against the 0.1 options struct. */
static void test_id_generator_and_stats_fields(void)
{
    shmsess_options o;
    shmsess_options_init(&o);
    o.size_bytes = 1 << 20;
    o.session_id_prefix = (const uint8_t *)"host-A";
    o.session_id_prefix_len = 6;
    shmsess_cache *cache = NULL;
    CHECK(shmsess_cache_create(&o, &cache) == SHMSESS_OK, "create with a prefix: %s", shmsess_last_error());
    SSL_CTX *s12 = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *c12 = client_ctx(TLS12, 0);
    SSL_CTX *s13 = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c13 = client_ctx(TLS13, 0);
    shmsess_install(cache, s12);
    shmsess_install(cache, s13);
    struct outcome *out = calloc(1, sizeof *out), *r = calloc(1, sizeof *r);
    handshake(s12, c12, NULL, 0, 0, 1, out);
    const unsigned char *p = out->der;
    SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, out->der_len);
    unsigned int idlen = 0;
    const unsigned char *id = sess ? SSL_SESSION_get_id(sess, &idlen) : NULL;
    CHECK(id && idlen == 32 && memcmp(id, "host-A", 6) == 0, "TLS 1.2 id carries the prefix at 32 bytes (len %u)", idlen);
    SSL_SESSION_free(sess);
    handshake(s12, c12, out->der, out->der_len, 0, 1, r);
    CHECK(r->reused, "a generated id resumes");

    /* A worker sets its own prefix after fork; TLS 1.3 stateful tickets (the raw id) carry it. */
    CHECK(shmsess_set_session_id_prefix(cache, (const uint8_t *)"host-Aw7", 8) == SHMSESS_OK, "worker prefix");
    CHECK(shmsess_set_session_id_prefix(cache, (const uint8_t *)"0123456789abcdefX", 17) == SHMSESS_ERR_INVALID_ARGUMENT,
          "a 17-byte prefix is refused");
    CHECK(shmsess_set_session_id_prefix(cache, NULL, 4) == SHMSESS_ERR_NULL_ARGUMENT, "NULL prefix");
    handshake(s13, c13, NULL, 0, 0, 1, out);
    shmsess_stats st = stats_of(cache);
    CHECK(st.entries == 2, "two sessions stored (%llu)", (unsigned long long)st.entries);
    CHECK(out->ok && st.ids_generated == 2 && st.id_collisions == 0, "ids generated %llu, collisions %llu",
          (unsigned long long)st.ids_generated, (unsigned long long)st.id_collisions);
    handshake(s13, c13, out->der, out->der_len, 0, 1, r);
    CHECK(r->reused, "a TLS 1.3 ticket with a generated id resumes");

    /* Every field by name, in struct order, bounded by struct_size. */
    size_t n = shmsess_stats_field_count();
    const char *name = NULL;
    uint64_t value = 0;
    int saw_hits = 0, saw_avg = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(shmsess_stats_field(&st, i, &name, &value) == SHMSESS_OK && name, "field %zu", i);
        if (!strcmp(name, "lookup_hits"))
            saw_hits = value == st.lookup_hits;
        if (!strcmp(name, "avg_time_left_s"))
            saw_avg = value == st.avg_time_left_s;
    }
    CHECK(n >= 37 && saw_hits && saw_avg, "fields by name (%zu)", n);
    CHECK(shmsess_stats_field(&st, n, &name, &value) == SHMSESS_ERR_NOT_FOUND, "past the last field");
    CHECK(shmsess_stats_field(NULL, 0, &name, &value) == SHMSESS_ERR_NULL_ARGUMENT, "NULL stats");
    CHECK(st.version == SHMSESS_STATS_VERSION && st.struct_size == sizeof st, "stats version %u", st.version);
    double hr = shmsess_stats_hit_ratio(&st);
    CHECK(hr > 0.0 && hr <= 1.0, "hit ratio %f", hr);
    /* A caller with the version-1 struct (up to size_bytes) gets exactly those fields. */
    size_t v1 = offsetof(shmsess_stats, size_bytes) + sizeof(uint64_t);
    shmsess_stats small;
    memset(&small, 0xAB, sizeof small);
    CHECK(shmsess_cache_stats_sized(cache, &small, v1) == SHMSESS_OK && small.struct_size == v1 &&
              small.ids_generated == 0xABABABABABABABABULL,
          "sized stats writes only what fits");
    size_t k = 0;
    while (shmsess_stats_field(&small, k, &name, &value) == SHMSESS_OK)
        k++;
    CHECK(k == 28, "an old struct exposes its 28 fields, not more (%zu)", k);
    /* The exported symbol (what 0.1 programs call) never writes past the version-1 struct. */
    memset(&small, 0xAB, sizeof small);
    CHECK((shmsess_cache_stats)(cache, &small) == SHMSESS_OK && small.struct_size == v1 && small.size_bytes == st.size_bytes &&
              small.ids_generated == 0xABABABABABABABABULL,
          "the unsized symbol writes version 1 only (%u bytes)", small.struct_size);

    /* A caller built against 0.1 (options end at session_id_context) still works: no prefix. */
    shmsess_options old;
    shmsess_options_init(&old);
    old.size_bytes = 1 << 20;
    old.struct_size = offsetof(shmsess_options, session_id_prefix);
    old.session_id_prefix_len = 99; /* beyond its struct: must be ignored */
    shmsess_cache *oc = NULL;
    CHECK(shmsess_cache_create(&old, &oc) == SHMSESS_OK, "0.1-sized options: %s", shmsess_last_error());
    CHECK(shmsess_set_session_id_prefix(oc, (const uint8_t *)"x", 1) == SHMSESS_ERR_INVALID_ARGUMENT,
          "no generator without the option: %s", shmsess_last_error());
    shmsess_cache_free(oc);
    /* A struct_size that ends inside a pointer field leaves that field out, never half-read. */
    shmsess_options part;
    shmsess_options_init(&part);
    part.size_bytes = 1 << 20;
    part.remote_url = "redis://127.0.0.1:1/0"; /* no key file: would be refused if read */
    part.struct_size = offsetof(shmsess_options, remote_url) + 4;
    CHECK(shmsess_cache_create(&part, &oc) == SHMSESS_OK, "struct_size inside remote_url: %s", shmsess_last_error());
    shmsess_cache_free(oc);
    o.session_id_prefix_len = 17;
    CHECK(shmsess_cache_create(&o, &oc) == SHMSESS_ERR_INVALID_ARGUMENT && oc == NULL, "prefix of 17 bytes refused");

    free(out);
    free(r);
    SSL_CTX_free(s12);
    SSL_CTX_free(s13);
    SSL_CTX_free(c12);
    SSL_CTX_free(c13);
    shmsess_cache_free(cache);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CERTDIR\n", argv[0]);
        return 2;
    }
    certdir = argv[1];
    test_api_errors();
    test_named_segment_checks();
    test_remote_options();
    test_resumption();
    test_tls13_options();
    test_raw_take_modes_and_iterate();
    test_vhosts_and_client_certs();
    test_id_generator_and_stats_fields();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
