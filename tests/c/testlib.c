/* Helpers shared by the C test programs: see testlib.h. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>

#include "testlib.h"

int passed, failed;
const char *certdir;

char *cpath(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", certdir, name);
    return buf[i];
}

/* ---------- contexts ---------- */

SSL_CTX *server_ctx(const char *name, int version, long options, unsigned max_early, int verify_client)
{
    char pem[64], key[64];
    snprintf(pem, sizeof pem, "%s.pem", name);
    snprintf(key, sizeof key, "%s.key", name);
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate_file(c, cpath(pem), SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(c, cpath(key), SSL_FILETYPE_PEM);
    SSL_CTX_set_min_proto_version(c, version);
    SSL_CTX_set_max_proto_version(c, version);
    SSL_CTX_set_options(c, (uint64_t)options);
    SSL_CTX_set_num_tickets(c, 1);
    if (max_early)
        SSL_CTX_set_max_early_data(c, max_early);
    if (verify_client) {
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_CTX_load_verify_locations(c, cpath("client.pem"), NULL);
        SSL_CTX_load_verify_locations(c, cpath("bigclient.pem"), NULL);
    }
    return c;
}

SSL_CTX *client_ctx(int version, int with_cert)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(c, version);
    SSL_CTX_set_max_proto_version(c, version);
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET); /* TLS 1.2: use session ids */
    if (with_cert) {
        const char *name = with_cert == 2 ? "bigclient" : "client";
        char pem[64], key[64];
        snprintf(pem, sizeof pem, "%s.pem", name);
        snprintf(key, sizeof key, "%s.key", name);
        SSL_CTX_use_certificate_file(c, cpath(pem), SSL_FILETYPE_PEM);
        SSL_CTX_use_PrivateKey_file(c, cpath(key), SSL_FILETYPE_PEM);
    }
    return c;
}

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
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    BIO *sb, *cb;
    BIO_new_bio_pair(&sb, 0, &cb, 0);
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
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
    int cdone = 0, sdone = 0, early_written = !o->early, early_read_done = !o->early;
    unsigned char buf[256];
    if (o->sni_after_hrr) {
        /* First ClientHello, the server's answer (a HelloRetryRequest if the groups disagree),
         * then another name for the second ClientHello: nothing in TLS stops a client. */
        SSL_do_handshake(c);
        SSL_do_handshake(s);
        SSL_set_tlsext_host_name(c, o->sni_after_hrr);
    }
    for (int i = 0; i < 200 && !(cdone && sdone); i++) {
        if (!early_written) {
            size_t w = 0;
            if (SSL_write_early_data(c, "early!", 6, &w) == 1)
                early_written = 1;
        } else if (!cdone) {
            cdone = SSL_do_handshake(c) == 1;
        }
        if (!early_read_done) {
            size_t r = 0;
            int rc = SSL_read_early_data(s, buf, sizeof buf, &r);
            if (rc == SSL_READ_EARLY_DATA_FINISH || rc == SSL_READ_EARLY_DATA_ERROR)
                early_read_done = 1;
        } else if (!sdone) {
            sdone = SSL_do_handshake(s) == 1;
        }
    }
    out->ok = cdone && sdone;
    if (out->ok) {
        /* Let the client read the TLS 1.3 NewSessionTicket. */
        SSL_write(s, "x", 1);
        SSL_read(c, buf, 1);
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
    if (!o->unclean) {
        SSL_shutdown(s);
        SSL_shutdown(c);
    }
    SSL_free(s);
    SSL_free(c);
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
