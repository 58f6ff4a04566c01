/* A TLS server and client over a memory BIO pair: see tlspair.h. */
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>

#include "tlspair.h"

const char *certdir;

char *cpath(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", certdir, name);
    return buf[i];
}

/* Loads NAME.pem and NAME.key into `c`, or ends the program: a test or benchmark without its
 * certificate would measure nothing. */
static void use_cert(SSL_CTX *c, const char *name)
{
    char pem[64], key[64];
    snprintf(pem, sizeof pem, "%s.pem", name);
    snprintf(key, sizeof key, "%s.key", name);
    if (c == NULL || SSL_CTX_use_certificate_chain_file(c, cpath(pem)) != 1 ||
        SSL_CTX_use_PrivateKey_file(c, cpath(key), SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "cannot load %s and %s\n", cpath(pem), cpath(key));
        ERR_print_errors_fp(stderr);
        exit(1);
    }
}

SSL_CTX *server_ctx(const char *name, int version, long options, unsigned max_early, int verify_client)
{
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    use_cert(c, name);
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
    if (with_cert)
        use_cert(c, with_cert == 2 ? "bigclient" : "client");
    return c;
}

void tls_pair_open(struct tls_pair *p, SSL_CTX *sctx, SSL_CTX *cctx)
{
    BIO *sb, *cb;
    p->s = SSL_new(sctx);
    p->c = SSL_new(cctx);
    BIO_new_bio_pair(&sb, 0, &cb, 0);
    SSL_set_bio(p->s, sb, sb);
    SSL_set_bio(p->c, cb, cb);
    SSL_set_accept_state(p->s);
    SSL_set_connect_state(p->c);
}

int tls_pair_handshake(struct tls_pair *p, int early)
{
    int cdone = 0, sdone = 0, early_written = !early, early_read_done = !early;
    unsigned char buf[256];
    for (int i = 0; i < 200 && !(cdone && sdone); i++) {
        if (!early_written) {
            size_t w = 0;
            if (SSL_write_early_data(p->c, "early!", 6, &w) == 1)
                early_written = 1;
        } else if (!cdone) {
            cdone = SSL_do_handshake(p->c) == 1;
        }
        if (!early_read_done) {
            size_t r = 0;
            int rc = SSL_read_early_data(p->s, buf, sizeof buf, &r);
            if (rc == SSL_READ_EARLY_DATA_FINISH || rc == SSL_READ_EARLY_DATA_ERROR)
                early_read_done = 1;
        } else if (!sdone) {
            sdone = SSL_do_handshake(p->s) == 1;
        }
    }
    return cdone && sdone;
}

void tls_pair_first_byte(struct tls_pair *p)
{
    unsigned char b;
    SSL_write(p->s, "x", 1);
    SSL_read(p->c, &b, 1);
}

void tls_pair_close(struct tls_pair *p, int clean)
{
    if (clean) {
        SSL_shutdown(p->s);
        SSL_shutdown(p->c);
    }
    SSL_free(p->s);
    SSL_free(p->c);
    p->s = p->c = NULL;
}
