/*
 * Helpers shared by the C test programs in tests/c: checks, caches, and handshakes over memory
 * BIO pairs (tlspair.h, which bench/handshake.c uses too) with their outcome recorded, in this
 * process or in a forked "worker" process.
 */
#ifndef SHMSESS_TESTLIB_H
#define SHMSESS_TESTLIB_H

#include <stdio.h>

#include <openssl/ssl.h>

#include <shmsesscache.h>

#include "tlspair.h"

extern int passed, failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            printf("FAIL %s:%d: %s — ", __FILE__, __LINE__, #cond);        \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

shmsess_cache *new_cache(uint32_t flags);
shmsess_stats stats_of(shmsess_cache *c);

struct outcome {
    int ok;            /* handshake completed */
    int reused;        /* server says the session was resumed */
    int early;         /* server accepted early data */
    int peer_cert;     /* the server saw a client certificate */
    int server_hellos; /* ServerHellos the client read: 2 after a HelloRetryRequest */
    unsigned long lifetime_hint; /* of the session (ticket) the client got */
    int der_len;       /* client session for the next connection */
    unsigned char der[8192];
};

struct hs_options {
    int early;        /* the client sends 0-RTT data */
    int unclean;      /* the server SSL is freed without SSL_shutdown() */
    const char *sni;  /* server name the client asks for, or NULL */
    const char *sni_after_hrr; /* if set, the name the client asks for in its second ClientHello */
};

/* Handshake sctx/cctx, offering the client session `offer` (may be NULL). */
void handshake_with(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, const struct hs_options *o,
                    struct outcome *out);
/* The same in a forked child (a separate worker process). */
void in_worker_with(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, const struct hs_options *o,
                    struct outcome *out);

/* Older forms: offer as bytes, early data, clean shutdown. */
void handshake(SSL_CTX *sctx, SSL_CTX *cctx, const unsigned char *offer, int offer_len, int early, int clean,
               struct outcome *out);
void in_worker(SSL_CTX *sctx, SSL_CTX *cctx, const struct outcome *offer, int early, struct outcome *out);

#endif
