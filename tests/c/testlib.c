/* Helpers shared by the C test programs: see testlib.h. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>

#include "testlib.h"

int passed, failed;

shmsess_cache *new_cache(uint32_t flags)
{
    shmsess_options o;
    shmsess_options_init(&o);
    o.size_bytes = 1 << 20;
    o.flags = flags;
    shmsess_cache *c = NULL;
    if (shmsess_cache_create(&o, &c) != SHMSESS_OK) {
        printf("cannot create cache: %s\n", shmsess_last_error());
        exit(1);
    }
    return c;
}

shmsess_stats stats_of(shmsess_cache *c)
{
    shmsess_stats s;
    memset(&s, 0, sizeof s);
    if (shmsess_cache_stats(c, &s) != SHMSESS_OK)
        printf("stats failed: %s\n", shmsess_last_error());
    return s;
}

/* ---------- one handshake in memory ---------- */

/* Counts the ServerHellos a client reads (a HelloRetryRequest is one). */
static void count_server_hellos(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                                void *arg)
{
    (void)version;
    (void)ssl;
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 && ((const unsigned char *)buf)[0] == SSL3_MT_SERVER_HELLO)
        ++*(int *)arg;
}

void handshake_with(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, const struct hs_options *o,
                    struct outcome *out)
{
    static const struct hs_options defaults;
    if (o == NULL)
        o = &defaults;
    memset(out, 0, sizeof *out);
    struct tls_pair pair;
    tls_pair_open(&pair, sctx, cctx);
    SSL *s = pair.s, *c = pair.c;
    SSL_set_msg_callback(c, count_server_hellos);
    SSL_set_msg_callback_arg(c, &out->server_hellos);
    if (o->sni)
        SSL_set_tlsext_host_name(c, o->sni);
    if (offer && offer->der_len > 0) {
        const unsigned char *p = offer->der;
        SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, offer->der_len);
        SSL_set_session(c, sess);
        SSL_SESSION_free(sess);
    }
    if (o->sni_after_hrr) {
        /* First ClientHello, the server's answer (a HelloRetryRequest if the groups disagree),
         * then another name for the second ClientHello: nothing in TLS stops a client. */
        SSL_do_handshake(c);
        SSL_do_handshake(s);
        SSL_set_tlsext_host_name(c, o->sni_after_hrr);
    }
    out->ok = tls_pair_handshake(&pair, o->early);
    if (out->ok) {
        tls_pair_first_byte(&pair);
        out->reused = SSL_session_reused(s);
        out->early = SSL_get_early_data_status(s) == SSL_EARLY_DATA_ACCEPTED;
        X509 *peer = SSL_get1_peer_certificate(s);
        out->peer_cert = peer != NULL;
        X509_free(peer);
        SSL_SESSION *cs = SSL_get1_session(c);
        if (cs) {
            out->lifetime_hint = SSL_SESSION_get_ticket_lifetime_hint(cs);
            int len = i2d_SSL_SESSION(cs, NULL);
            if (len > 0 && len <= (int)sizeof out->der) {
                unsigned char *p = out->der;
                out->der_len = i2d_SSL_SESSION(cs, &p);
            }
            SSL_SESSION_free(cs);
        }
    }
    tls_pair_close(&pair, !o->unclean);
    ERR_clear_error();
}

void handshake(SSL_CTX *sctx, SSL_CTX *cctx, const unsigned char *offer, int offer_len, int early, int clean,
               struct outcome *out)
{
    struct outcome *o = NULL;
    if (offer_len > 0) {
        o = calloc(1, sizeof *o);
        memcpy(o->der, offer, (size_t)offer_len);
        o->der_len = offer_len;
    }
    struct hs_options opts = { .early = early, .unclean = !clean };
    handshake_with(sctx, cctx, o, &opts, out);
    free(o);
}

void in_worker_with(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, const struct hs_options *opts,
                    struct outcome *out)
{
    int fds[2];
    if (pipe(fds) != 0)
        exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        struct outcome *o = calloc(1, sizeof *o);
        handshake_with(sctx, cctx, offer, opts, o);
        ssize_t w = write(fds[1], o, sizeof *o);
        free(o);
        close(fds[1]);
        exit(w == (ssize_t)sizeof *o ? 0 : 1);
    }
    close(fds[1]);
    memset(out, 0, sizeof *out);
    size_t got = 0;
    while (got < sizeof *out) {
        ssize_t r = read(fds[0], (char *)out + got, sizeof *out - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(got == sizeof *out && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "worker failed (status %d; under valgrind 99 means it reported errors)", status);
}

void in_worker(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, int early, struct outcome *out)
{
    struct hs_options opts = { .early = early };
    in_worker_with(sctx, cctx, offer, &opts, out);
}
