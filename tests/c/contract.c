/*
 * The OpenSSL contract under OpenSSL's real behaviour (issue 12), using only the public header:
 * HelloRetryRequest between two lookups of a ticket, virtual hosts chosen by an SNI callback
 * after the lookup, session id contexts that cover the client-certificate policy, OpenSSL's
 * own housekeeping with the internal cache kept, early data with OpenSSL's anti-replay, the
 * ticket lifetime clients are told, and a configuration reload. Handshakes run over memory
 * BIOs in forked "worker" processes (see testlib.h). Run under valgrind by `make test-c`.
 *
 * usage: c_contract CERTDIR
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <shmsesscache.h>

#include "testlib.h"

static int log_lines;
static char last_log[512];

static void count_log(int level, const char *msg, void *userdata)
{
    (void)level;
    (void)userdata;
    log_lines++;
    snprintf(last_log, sizeof last_log, "%s", msg);
}

/* ---------- 1. TLS 1.3 resumption through a HelloRetryRequest ---------- */

/* The server accepts only P-256; the client's first key share is X25519, so every handshake
 * of this client goes through a HelloRetryRequest. */
static void test_hello_retry_request(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *s = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX_set1_groups_list(s, "P-256");
    CHECK(shmsess_install(cache, s) == SHMSESS_OK, "install: %s", shmsess_last_error());
    SSL_CTX *hrr = client_ctx(TLS13, 0), *direct = client_ctx(TLS13, 0);
    SSL_CTX_set1_groups_list(hrr, "X25519:P-256");
    SSL_CTX_set1_groups_list(direct, "P-256");
    struct outcome *o = calloc(3, sizeof *o), *r = o + 1, *again = o + 2;

    in_worker(s, hrr, NULL, 0, o);
    CHECK(o->ok && o->server_hellos == 2, "full handshake through an HRR (%d ServerHellos)", o->server_hellos);
    in_worker(s, hrr, o, 0, r);
    CHECK(r->ok && r->server_hellos == 2, "the resumption attempt went through an HRR (%d)", r->server_hellos);
    CHECK(r->reused, "a ticket resumes through a HelloRetryRequest, in another worker");
    shmsess_stats st = stats_of(cache);
    CHECK(st.taken == 1 && st.hrr_resumed == 1, "taken once (%llu), resumed by the retried ClientHello (%llu)",
          (unsigned long long)st.taken, (unsigned long long)st.hrr_resumed);
    in_worker(s, hrr, o, 0, again);
    CHECK(again->ok && !again->reused, "the same ticket again, through an HRR: refused");
    in_worker(s, direct, o, 0, again);
    CHECK(again->ok && again->server_hellos == 1 && !again->reused, "the same ticket again, without HRR: refused");

    /* A ticket first used without HRR cannot be replayed through one either. */
    in_worker(s, direct, NULL, 0, o);
    in_worker(s, direct, o, 0, r);
    CHECK(r->ok && r->reused && r->server_hellos == 1, "direct resumption");
    in_worker(s, hrr, o, 0, again);
    CHECK(again->ok && !again->reused, "... and its replay through an HRR is refused");

    /* Two connections in one process (one SSL_CTX, like a threaded server): the ticket
     * parked on the first connection is not visible to the second. */
    in_worker(s, hrr, NULL, 0, o);
    handshake_with(s, hrr, o, NULL, r);
    handshake_with(s, hrr, o, NULL, again);
    CHECK(r->reused && !again->reused, "in one process: resumed once (%d then %d)", r->reused, again->reused);
    free(o);
    SSL_CTX_free(s);
    SSL_CTX_free(hrr);
    SSL_CTX_free(direct);
    shmsess_cache_free(cache);
}

/* ---------- 2. Virtual hosts chosen by an SNI callback ---------- */

struct vhosts {
    SSL_CTX *b;
};

/* nginx-style: the listener's context serves a.test; b.test switches to its own context. */
static int pick_vhost(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name && strcmp(name, "b.test") == 0) {
        SSL_CTX *b = ((struct vhosts *)arg)->b;
        SSL_set_SSL_CTX(ssl, b);
        /* What nginx's servername callback copies too: SSL_set_SSL_CTX leaves them. */
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(b), SSL_CTX_get_verify_callback(b));
        SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(b));
    }
    return SSL_TLSEXT_ERR_OK;
}

static void sni_case(int version)
{
    const char *label = version == TLS13 ? "TLS 1.3" : "TLS 1.2";
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *a = server_ctx("server", version, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *b = server_ctx("vhost2", version, SSL_OP_NO_TICKET, 0, 1);
    struct vhosts v = { b };
    SSL_CTX_set_tlsext_servername_callback(a, pick_vhost);
    SSL_CTX_set_tlsext_servername_arg(a, &v);
    CHECK(shmsess_install(cache, a) == SHMSESS_OK && shmsess_install(cache, b) == SHMSESS_OK, "install");
    SSL_CTX *c = client_ctx(version, 1);
    struct outcome *o = calloc(3, sizeof *o), *r = o + 1, *ob = o + 2;
    struct hs_options to_a = { .sni = "a.test" }, to_b = { .sni = "b.test" }, to_none = { 0 };

    in_worker_with(a, c, NULL, &to_a, o);
    CHECK(o->ok && !o->peer_cert, "%s: vhost A asks for no client certificate", label);
    in_worker_with(a, c, o, &to_b, r);
    CHECK(r->ok && !r->reused && r->peer_cert,
          "%s: A's session offered to B (chosen by the SNI callback) is a full handshake that demands the "
          "certificate (reused=%d peer_cert=%d)",
          label, r->reused, r->peer_cert);
    CHECK(stats_of(cache).sni_mismatch >= 1, "%s: counted as sni_mismatch", label);
    in_worker_with(a, c, o, &to_none, r);
    CHECK(r->ok && !r->reused, "%s: A's session offered without a server name: not resumed", label);
    in_worker_with(a, c, o, &to_a, r);
    CHECK(r->ok && r->reused, "%s: A's session still resumes on A (refused offers put it back)", label);

    in_worker_with(a, c, NULL, &to_b, ob);
    CHECK(ob->ok && ob->peer_cert, "%s: B's full handshake has the client certificate", label);
    in_worker_with(a, c, ob, &to_b, r);
    CHECK(r->ok && r->reused && r->peer_cert, "%s: B's session resumes on B with its certificate", label);
    if (version == TLS13)
        in_worker_with(a, c, r, &to_a, r); /* the new ticket of that resumption, offered to A */
    else
        in_worker_with(a, c, ob, &to_a, r);
    CHECK(r->ok && !r->reused, "%s: B's session is not resumed on A", label);
    free(o);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* A client may name another host in the ClientHello that follows a HelloRetryRequest: the
 * ticket its first ClientHello took (for a.test) must not resume on b.test, whose context
 * requires a client certificate; and names are compared byte for byte (a servername callback
 * may send "A.TEST" elsewhere than "a.test"). */
static void test_sni_through_hrr_and_case(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *a = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *b = server_ctx("vhost2", TLS13, SSL_OP_NO_TICKET, 0, 1);
    SSL_CTX_set1_groups_list(a, "P-256");
    SSL_CTX_set1_groups_list(b, "P-256");
    struct vhosts v = { b };
    SSL_CTX_set_tlsext_servername_callback(a, pick_vhost);
    SSL_CTX_set_tlsext_servername_arg(a, &v);
    shmsess_install(cache, a);
    shmsess_install(cache, b);
    SSL_CTX *c = client_ctx(TLS13, 0); /* no client certificate */
    SSL_CTX_set1_groups_list(c, "X25519:P-256");
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    struct hs_options to_a = { .sni = "a.test" }, switch_to_b = { .sni = "a.test", .sni_after_hrr = "b.test" };
    struct hs_options upper = { .sni = "A.TEST" };
    in_worker_with(a, c, NULL, &to_a, o);
    in_worker_with(a, c, o, &switch_to_b, r);
    CHECK(r->server_hellos == 2 && !(r->ok && r->reused),
          "a.test in the first ClientHello, b.test after the HRR: not resumed on b.test (ok=%d reused=%d)", r->ok,
          r->reused);
    in_worker_with(a, c, o, &to_a, r);
    CHECK(r->ok && r->reused, "the ticket refused on b.test still resumes once for a.test, through an HRR");
    in_worker_with(a, c, NULL, &to_a, o);
    in_worker_with(a, c, o, &upper, r);
    CHECK(r->ok && !r->reused, "a session made for a.test offered for A.TEST: not resumed (byte for byte)");
    free(o);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* A server that reuses its SSL objects with SSL_clear(): a ticket parked by one handshake's
 * lookup must not be handed to a ClientHello replayed on the next connection of that SSL. */
static unsigned char recorded[65536];
static size_t recorded_len;

static void pump(BIO *from, BIO *to, int record)
{
    unsigned char buf[16384];
    int n;
    while ((n = BIO_read(from, buf, sizeof buf)) > 0) {
        if (record && recorded_len + (size_t)n <= sizeof recorded) {
            memcpy(recorded + recorded_len, buf, (size_t)n);
            recorded_len += (size_t)n;
        }
        BIO_write(to, buf, n);
    }
}

static void mem_bios(SSL *ssl, BIO **in, BIO **out)
{
    *in = BIO_new(BIO_s_mem());
    *out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(*in, -1);
    SSL_set_bio(ssl, *in, *out);
}

static void test_ssl_clear_drops_parked_ticket(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *sctx = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *cctx = client_ctx(TLS13, 0);
    shmsess_install(cache, sctx);
    struct outcome *o = calloc(1, sizeof *o);
    handshake_with(sctx, cctx, NULL, NULL, o);
    const unsigned char *p = o->der;
    SSL_SESSION *ticket = d2i_SSL_SESSION(NULL, &p, o->der_len);
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    BIO *sin, *sout, *cin, *cout;
    mem_bios(s, &sin, &sout);
    mem_bios(c, &cin, &cout);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    SSL_set_session(c, ticket);
    recorded_len = 0;
    SSL_do_handshake(c);
    pump(cout, sin, 1); /* the ClientHello, recorded */
    int cd = 0, sd = 0;
    unsigned char buf[8];
    for (int i = 0; i < 50 && !(cd && sd); i++) {
        if (!sd)
            sd = SSL_do_handshake(s) == 1;
        pump(sout, cin, 0);
        if (!cd)
            cd = SSL_do_handshake(c) == 1;
        pump(cout, sin, 0);
    }
    SSL_write(s, "x", 1); /* the server's new ticket is sent with its first data */
    pump(sout, cin, 0);
    SSL_read(c, buf, 1);
    CHECK(cd && sd && SSL_session_reused(s), "connection 1 resumes");
    SSL_shutdown(s);
    SSL_clear(s);
    mem_bios(s, &sin, &sout);
    SSL_set_accept_state(s);
    BIO_write(sin, recorded, (int)recorded_len); /* the replay */
    SSL_do_handshake(s);
    CHECK(!SSL_session_reused(s), "the same ClientHello replayed on the SSL after SSL_clear: not resumed");
    CHECK(stats_of(cache).hrr_resumed == 0, "nothing handed out as an HRR retry (%llu)",
          (unsigned long long)stats_of(cache).hrr_resumed);
    SSL_free(s);
    SSL_free(c);
    SSL_SESSION_free(ticket);
    free(o);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    shmsess_cache_free(cache);
    ERR_clear_error();
}

/* SSL_dup copies ex_data: a ticket parked for a HelloRetryRequest must not be owned by the
 * original and the copy alike (both frees released it: a double free). The copy starts with
 * nothing parked; the original keeps its ticket. */
static void test_ssl_dup_does_not_share_a_parked_ticket(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *sctx = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *cctx = client_ctx(TLS13, 0);
    SSL_CTX_set1_groups_list(sctx, "P-256");
    SSL_CTX_set1_groups_list(cctx, "X25519:P-256");
    shmsess_install(cache, sctx);
    struct tls_pair p;
    tls_pair_open(&p, sctx, cctx);
    CHECK(tls_pair_handshake(&p, 0), "first handshake");
    tls_pair_first_byte(&p);
    SSL_SESSION *sess = SSL_get1_session(p.c);
    tls_pair_close(&p, 1);
    /* ClientHello 1 (an X25519 share the server does not take): the ticket is taken and parked,
     * and the server answers with a HelloRetryRequest; the handshake goes no further. */
    tls_pair_open(&p, sctx, cctx);
    SSL_set_session(p.c, sess);
    SSL_do_handshake(p.c);
    SSL_do_handshake(p.s);
    CHECK(stats_of(cache).taken == 1, "the ticket was taken and parked (taken %llu)",
          (unsigned long long)stats_of(cache).taken);
    SSL_clear(p.s);
    SSL *copy = SSL_dup(p.s);
    CHECK(copy != NULL, "SSL_dup");
    SSL_free(copy); /* frees only what the copy owns */
    tls_pair_close(&p, 0);
    SSL_SESSION_free(sess);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    shmsess_cache_free(cache);
    ERR_clear_error();
}

/* No servername callback at all (one host, or hosts told apart by certificate): OpenSSL then
 * records no name in the session, the library does; the same name resumes, another does not. */
static void test_sni_without_callback(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *s = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *c = client_ctx(TLS12, 0);
    shmsess_install(cache, s);
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    struct hs_options to_a = { .sni = "a.test" }, to_b = { .sni = "b.test" };
    in_worker_with(s, c, NULL, &to_a, o);
    in_worker_with(s, c, o, &to_a, r);
    CHECK(r->ok && r->reused, "without a servername callback, the same name resumes");
    in_worker_with(s, c, o, &to_b, r);
    CHECK(r->ok && !r->reused, "... another name does not");
    free(o);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* Same certificate, different client-certificate policy: the derived session id context must
 * differ, or a session made without a client certificate resumes where one is required. */
static void test_policy_in_session_id_context(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *open_ctx = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *strict = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 1);
    STACK_OF(X509_NAME) *cas = SSL_load_client_CA_file(cpath("client.pem"));
    SSL_CTX_set_client_CA_list(strict, cas);
    shmsess_install(cache, open_ctx);
    shmsess_install(cache, strict);
    SSL_CTX *c = client_ctx(TLS12, 1);
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    in_worker(open_ctx, c, NULL, 0, o);
    in_worker(strict, c, o, 0, r);
    CHECK(r->ok && !r->reused && r->peer_cert,
          "one certificate, two client-certificate policies: not resumed across them (reused=%d)", r->reused);
    in_worker(open_ctx, c, o, 0, r);
    CHECK(r->ok && r->reused, "... but resumed on the same policy");
    free(o);
    SSL_CTX_free(open_ctx);
    SSL_CTX_free(strict);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* ---------- 5. Smaller contract points ---------- */

/* With the internal cache kept, OpenSSL's own housekeeping (SSL_CTX_free, flushes, eviction)
 * calls the remove callback: that must not delete the sessions for every process. */
static void test_internal_housekeeping_stays_local(void)
{
    shmsess_cache *cache = new_cache(SHMSESS_KEEP_INTERNAL_CACHE);
    SSL_CTX *s = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0), *c = client_ctx(TLS12, 0);
    shmsess_install(cache, s);
    struct outcome *o = calloc(1, sizeof *o);
    for (int i = 0; i < 10; i++)
        handshake(s, c, NULL, 0, 0, 1, o);
    CHECK(stats_of(cache).entries == 10, "10 sessions stored (%llu)", (unsigned long long)stats_of(cache).entries);
    SSL_CTX_flush_sessions(s, 0);
    CHECK(stats_of(cache).entries == 10, "SSL_CTX_flush_sessions leaves the shared entries (%llu)",
          (unsigned long long)stats_of(cache).entries);
    SSL_CTX *s2 = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    shmsess_install(cache, s2);
    for (int i = 0; i < 3; i++)
        handshake(s2, c, NULL, 0, 0, 1, o);
    SSL_CTX_free(s2);
    CHECK(stats_of(cache).entries == 13, "a worker's SSL_CTX_free leaves them too (%llu)",
          (unsigned long long)stats_of(cache).entries);
    in_worker(s, c, o, 0, o);
    free(o);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* Whether the stateful ticket of the client session in `o` is in the cache (not taken). */
static int ticket_in_cache(shmsess_cache *cache, const struct outcome *o)
{
    const unsigned char *p = o->der;
    SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, o->der_len);
    const unsigned char *tick = NULL;
    size_t len = 0, n = 0;
    unsigned char buf[8192];
    if (sess)
        SSL_SESSION_get0_ticket(sess, &tick, &len);
    int found = tick && len == 32 &&
                shmsess_cache_lookup(cache, tick, len, buf, sizeof buf, &n, SHMSESS_LOOKUP_KEEP) == SHMSESS_OK;
    SSL_SESSION_free(sess);
    return found;
}

/* Early data with OpenSSL's anti-replay on: OpenSSL refuses every external-cache resumption,
 * so the library neither stores such tickets (nobody could use them) nor looks them up (a
 * lookup would burn the ticket for nothing), and the log says once what to change. */
static void test_anti_replay_does_not_burn_tickets(void)
{
    shmsess_cache *cache = new_cache(0);
    SSL_CTX *s = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 16384, 0), *c = client_ctx(TLS13, 0);
    log_lines = 0;
    shmsess_set_log_callback(count_log, NULL, 2);
    shmsess_install(cache, s);
    int after_install = log_lines;
    CHECK(after_install == 1 && strstr(last_log, "SSL_OP_NO_ANTI_REPLAY"), "install warns: %s", last_log);
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    in_worker(s, c, NULL, 0, o);
    shmsess_stats st = stats_of(cache);
    CHECK(st.stores == 0 && st.anti_replay_skipped == 1, "its ticket is not stored (stores %llu, skipped %llu)",
          (unsigned long long)st.stores, (unsigned long long)st.anti_replay_skipped);
    /* A ticket that is in the cache anyway (stored before the option changed, or by another
     * server on the segment) is not taken by a lookup OpenSSL would refuse. */
    SSL_CTX_set_options(s, SSL_OP_NO_ANTI_REPLAY);
    in_worker(s, c, NULL, 0, o);
    SSL_CTX_clear_options(s, SSL_OP_NO_ANTI_REPLAY);
    in_worker(s, c, o, 0, r);
    in_worker(s, c, o, 0, r);
    st = stats_of(cache);
    CHECK(st.taken == 0 && ticket_in_cache(cache, o), "no ticket taken (taken %llu), the ticket is still there",
          (unsigned long long)st.taken);
    handshake_with(s, c, o, NULL, r);
    handshake_with(s, c, o, NULL, r);
    CHECK(log_lines == after_install + 1, "said once per process (%d lines)", log_lines - after_install);
    /* The fix the message names: with SSL_OP_NO_ANTI_REPLAY the ticket resumes, once. */
    SSL_CTX_set_options(s, SSL_OP_NO_ANTI_REPLAY);
    in_worker(s, c, o, 1, r);
    CHECK(r->ok && r->reused && r->early, "with SSL_OP_NO_ANTI_REPLAY: resumed with early data");
    in_worker(s, c, o, 1, r);
    CHECK(r->ok && !r->reused && !r->early, "... once");
    shmsess_set_log_callback(NULL, NULL, 1);
    free(o);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* Two servers of different session id contexts on one cache (nginx's http and stream blocks
 * on one file, or two http servers with different certificates): OpenSSL compares the
 * contexts only after the lookup returned the ticket. The ticket offered to the wrong server
 * must not be burnt there, nor count as a resumption; it still resumes once on its own. */
static void test_ticket_of_another_context_goes_back(void)
{
    shmsess_cache *cache = new_cache(SHMSESS_KEEP_SESSION_ID_CONTEXT);
    SSL_CTX *http = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *stream = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX_set_session_id_context(http, (const unsigned char *)"http-ctx", 8);
    SSL_CTX_set_session_id_context(stream, (const unsigned char *)"stream-ctx", 10);
    shmsess_install(cache, http);
    shmsess_install(cache, stream);
    SSL_CTX *c = client_ctx(TLS13, 0);
    struct outcome *o = calloc(3, sizeof *o), *r = o + 1, *again = o + 2;
    in_worker(http, c, NULL, 0, o);
    shmsess_stats before = stats_of(cache);
    in_worker(stream, c, o, 0, r);
    shmsess_stats st = stats_of(cache);
    CHECK(r->ok && !r->reused, "a ticket of one session id context offered to another: not resumed");
    CHECK(ticket_in_cache(cache, o), "... and not burnt: the ticket is in the cache again");
    CHECK(st.lookup_refused - before.lookup_refused == 1, "... counted as a refused hit (lookup_refused +%llu)",
          (unsigned long long)(st.lookup_refused - before.lookup_refused));
    in_worker(http, c, o, 0, r);
    CHECK(r->ok && r->reused, "then offered to its own server: resumed");
    in_worker(http, c, o, 0, again);
    CHECK(again->ok && !again->reused, "... once");
    free(o);
    SSL_CTX_free(http);
    SSL_CTX_free(stream);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* opts.session_timeout is what clients are told (the ticket lifetime hint), not only what the
 * cache applies afterwards. */
static void test_session_timeout_is_the_ticket_lifetime(void)
{
    shmsess_options opts;
    shmsess_options_init(&opts);
    opts.size_bytes = 1 << 20;
    opts.session_timeout = 1234;
    shmsess_cache *cache = NULL;
    CHECK(shmsess_cache_create(&opts, &cache) == SHMSESS_OK, "create: %s", shmsess_last_error());
    SSL_CTX *s = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c = client_ctx(TLS13, 0);
    shmsess_install(cache, s);
    struct outcome *o = calloc(1, sizeof *o);
    in_worker(s, c, NULL, 0, o);
    CHECK(o->ok && o->lifetime_hint == 1234, "ticket lifetime hint %lu, want 1234", o->lifetime_hint);
    free(o);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* ---------- TLS 1.3: a full shard keeps the ticket each client offers ---------- */

/* Offers `sess` and stops once the server has read the ClientHello and answered: whether it
 * resumed. The server never issues a new ticket, so the check stores nothing. */
static int resumes_without_storing(SSL_CTX *s, SSL_CTX *c, SSL_SESSION *sess)
{
    struct tls_pair p;
    tls_pair_open(&p, s, c);
    SSL_set_session(p.c, sess);
    SSL_do_handshake(p.c);
    SSL_do_handshake(p.s);
    int resumed = SSL_session_reused(p.s);
    tls_pair_close(&p, 0);
    ERR_clear_error();
    return resumed;
}

/* Every full handshake issues two tickets and the client keeps the last. A one-shard cache
 * holding 256 tickets, after 200 clients (400 tickets): the 200 tickets the clients offer are
 * kept and the spares (their first tickets) made the room. Oldest-first eviction alone would
 * keep only the last 128 clients' tickets. */
static void test_tls13_spares_go_first(void)
{
    enum { CLIENTS = 200 };
    shmsess_options opts;
    shmsess_options_init(&opts);
    opts.size_bytes = 56 * 1024; /* the header page and one shard of 256 slots */
    shmsess_cache *cache = NULL;
    CHECK(shmsess_cache_create(&opts, &cache) == SHMSESS_OK, "create: %s", shmsess_last_error());
    shmsess_stats st = stats_of(cache);
    CHECK(st.shards == 1 && st.capacity_slots == 256, "%llu shards, %llu slots",
          (unsigned long long)st.shards, (unsigned long long)st.capacity_slots);
    SSL_CTX *s = server_ctx("server", TLS13, SSL_OP_NO_TICKET, 0, 0), *c = client_ctx(TLS13, 0);
    SSL_CTX_set_num_tickets(s, 2); /* OpenSSL's default (server_ctx issues one) */
    shmsess_install(cache, s);
    SSL_SESSION *kept[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        struct tls_pair p;
        tls_pair_open(&p, s, c);
        int ok = tls_pair_handshake(&p, 0);
        tls_pair_first_byte(&p); /* the client has read both tickets */
        kept[i] = ok ? SSL_get1_session(p.c) : NULL;
        tls_pair_close(&p, 1);
    }
    int resumed = 0;
    for (int i = 0; i < CLIENTS; i++) {
        if (kept[i]) {
            resumed += resumes_without_storing(s, c, kept[i]);
            SSL_SESSION_free(kept[i]);
        }
    }
    CHECK(resumed == CLIENTS, "TLS 1.3, one full shard: %d of %d clients resume with the ticket they kept",
          resumed, CLIENTS);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

/* A reload: the old cache and its contexts are freed, a new cache is installed on new
 * contexts. A vhost context nothing was installed on (reached by an SNI callback) must use the
 * new cache, for stores and lookups alike. */
static void test_reload_rule(void)
{
    shmsess_cache *old = new_cache(0);
    SSL_CTX *old_ctx = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    shmsess_install(old, old_ctx);
    SSL_CTX_free(old_ctx);
    shmsess_cache_free(old);

    shmsess_cache *cache = new_cache(0);
    SSL_CTX *a = server_ctx("server", TLS12, SSL_OP_NO_TICKET, 0, 0);
    SSL_CTX *b = server_ctx("vhost2", TLS12, SSL_OP_NO_TICKET, 0, 0); /* nothing installed */
    static const unsigned char ctx_b[] = "vhost-b";
    SSL_CTX_set_session_id_context(b, ctx_b, sizeof ctx_b - 1);
    struct vhosts v = { b };
    SSL_CTX_set_tlsext_servername_callback(a, pick_vhost);
    SSL_CTX_set_tlsext_servername_arg(a, &v);
    shmsess_install(cache, a);
    SSL_CTX *c = client_ctx(TLS12, 0);
    struct outcome *o = calloc(2, sizeof *o), *r = o + 1;
    struct hs_options to_b = { .sni = "b.test" };
    in_worker_with(a, c, NULL, &to_b, o);
    CHECK(o->ok && stats_of(cache).stores == 1, "after a reload, a vhost without its own install stores in the new "
                                                 "cache (stores %llu)",
          (unsigned long long)stats_of(cache).stores);
    in_worker_with(a, c, o, &to_b, r);
    CHECK(r->ok && r->reused, "... and resumes from it in another worker");
    free(o);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    SSL_CTX_free(c);
    shmsess_cache_free(cache);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CERTDIR\n", argv[0]);
        return 2;
    }
    certdir = argv[1];
    test_hello_retry_request();
    sni_case(TLS12);
    sni_case(TLS13);
    test_sni_without_callback();
    test_sni_through_hrr_and_case();
    test_ssl_clear_drops_parked_ticket();
    test_ssl_dup_does_not_share_a_parked_ticket();
    test_policy_in_session_id_context();
    test_internal_housekeeping_stays_local();
    test_anti_replay_does_not_burn_tickets();
    test_ticket_of_another_context_goes_back();
    test_session_timeout_is_the_ticket_lifetime();
    test_reload_rule();
    test_tls13_spares_go_first();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
