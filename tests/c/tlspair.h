/*
 * A TLS server and client in one process, joined by a memory BIO pair: the contexts (from the
 * certificates in `certdir`), the pair, and driving a handshake to its end. No network, no
 * kernel: what the C tests (through testlib.h) and bench/handshake.c both build on.
 *
 * Nothing here checks or counts results: a context whose certificate cannot be loaded ends the
 * program (exit 1, with OpenSSL's errors on stderr), everything else is returned.
 */
#ifndef SHMSESS_TLSPAIR_H
#define SHMSESS_TLSPAIR_H

#include <openssl/ssl.h>

enum { TLS12 = TLS1_2_VERSION, TLS13 = TLS1_3_VERSION };

/* The directory of server.pem/key, vhost2.pem/key, client.pem/key and bigclient.pem/key
 * (scripts/make-certs.sh); set by main() from its arguments. */
extern const char *certdir;

/* certdir/name, in one of four rotating static buffers. */
char *cpath(const char *name);
/* A server context with certificate NAME.pem/NAME.key, one protocol version, options, early
 * data limit, and (verify_client) a required client certificate (client.pem or bigclient.pem). */
SSL_CTX *server_ctx(const char *name, int version, long options, unsigned max_early, int verify_client);
/* A client context for one version, asking for session ids rather than tickets in TLS 1.2;
 * with_cert 1: client.pem, 2: bigclient.pem (4096-bit). */
SSL_CTX *client_ctx(int version, int with_cert);

/* A server SSL `s` and a client SSL `c` over a BIO pair, in accept and connect state. */
struct tls_pair {
    SSL *s, *c;
};

/* New SSLs of sctx and cctx, joined; nothing is sent yet (set a session, a name or callbacks
 * on p->c first). */
void tls_pair_open(struct tls_pair *p, SSL_CTX *sctx, SSL_CTX *cctx);
/* Both sides' handshakes, client first, until both are done (at most 200 rounds). With
 * `early`, the client first writes 6 bytes of 0-RTT data and the server first reads early
 * data. Returns 1 if both completed. */
int tls_pair_handshake(struct tls_pair *p, int early);
/* The server writes one byte and the client reads it: the client has then also read a TLS 1.3
 * NewSessionTicket the server sent after its Finished. */
void tls_pair_first_byte(struct tls_pair *p);
/* SSL_shutdown on both sides (unless !clean: a connection dropped without close_notify), then
 * both SSLs freed. */
void tls_pair_close(struct tls_pair *p, int clean);

#endif
