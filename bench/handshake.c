/*
 * handshake: what the session cache costs inside a handshake, and how densely real sessions
 * pack. One process, memory BIOs (no network, no kernel): the numbers are CPU cost only.
 *
 *   handshake CERTDIR SECONDS RUNS
 *
 * 1. Resumed handshakes per second, TLS 1.2 (session ids) and TLS 1.3 (stateful tickets,
 *    SSL_OP_NO_TICKET), with (a) OpenSSL's internal cache, (b) shmsesscache, and (c) no cache
 *    (every handshake full). Client and server run in the same loop, so both sides' work is
 *    in every figure, equally for all three. Each client offers the session its previous
 *    connection left (TLS 1.3 tickets are single-use with shmsesscache, so it must).
 * 2. Density: real TLS 1.2 and 1.3 sessions, with and without a client certificate, are
 *    stored (under fresh ids patched into the DER) into a 4 MiB segment until it is full;
 *    sessions held per MiB is what the segment then holds.
 *
 * Prints one JSON object on stdout (the median of RUNS runs for each figure, and all runs).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include <shmsesscache.h>

#include "tlspair.h"

enum mode { INTERNAL, SHMSESS, NONE };
static const char *mode_name[] = { "internal", "shmsesscache", "none" };

static void die(const char *m)
{
    fprintf(stderr, "handshake: %s\n", m);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The benchmark's server: server.pem, session ids and stateful TLS 1.3 tickets (no_ticket). */
static SSL_CTX *bench_server_ctx(int version, int verify_client)
{
    return server_ctx("server", version, SSL_OP_NO_TICKET, 0, verify_client);
}

/* A pair of sctx and cctx, the client offering `offer` (may be NULL), handshake completed and
 * the TLS 1.3 NewSessionTicket read by the client. */
static void connect_pair(struct tls_pair *p, SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *offer)
{
    tls_pair_open(p, sctx, cctx);
    if (offer)
        SSL_set_session(p->c, offer);
    if (!tls_pair_handshake(p, 0))
        die("handshake failed");
    tls_pair_first_byte(p);
}

/* One handshake; returns the client's session for the next one (owned by the caller), and
 * whether the server resumed. */
static SSL_SESSION *handshake(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *offer, int *reused)
{
    struct tls_pair p;
    connect_pair(&p, sctx, cctx, offer);
    *reused = SSL_session_reused(p.s);
    SSL_SESSION *next = SSL_get1_session(p.c);
    tls_pair_close(&p, 1);
    return next;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    double t[64];
    memcpy(t, v, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* Handshakes per second for `secs` seconds; checks that every one resumed (or none, for NONE). */
static double rate(enum mode m, int version, double secs)
{
    SSL_CTX *sctx = bench_server_ctx(version, 0), *cctx = client_ctx(version, 0);
    shmsess_cache *cache = NULL;
    if (m == SHMSESS) {
        shmsess_options o;
        shmsess_options_init(&o);
        o.size_bytes = 8 << 20;
        if (shmsess_cache_create(&o, &cache) != SHMSESS_OK || shmsess_install(cache, sctx) != SHMSESS_OK)
            die(shmsess_last_error());
    } else {
        static const unsigned char sid[] = "bench";
        SSL_CTX_set_session_id_context(sctx, sid, sizeof sid - 1);
        SSL_CTX_set_session_cache_mode(sctx, m == INTERNAL ? SSL_SESS_CACHE_SERVER : SSL_SESS_CACHE_OFF);
    }
    int reused;
    SSL_SESSION *sess = handshake(sctx, cctx, NULL, &reused);
    long n = 0, resumed = 0;
    double t0 = now(), t = t0;
    while (t - t0 < secs) {
        for (int i = 0; i < 20; i++) {
            SSL_SESSION *next = handshake(sctx, cctx, m == NONE ? NULL : sess, &reused);
            SSL_SESSION_free(sess);
            sess = next;
            resumed += reused;
            n++;
        }
        t = now();
    }
    SSL_SESSION_free(sess);
    if ((m == NONE && resumed != 0) || (m != NONE && resumed != n)) {
        fprintf(stderr, "handshake: %s TLS 0x%x resumed %ld of %ld\n", mode_name[m], version, resumed, n);
        exit(1);
    }
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    shmsess_cache_free(cache);
    return (double)n / (t - t0);
}

/* DER of a real session of this kind (server side: what the cache stores). */
static int real_session(int version, int client_cert, unsigned char *der, int cap, unsigned *id_off)
{
    SSL_CTX *sctx = bench_server_ctx(version, client_cert), *cctx = client_ctx(version, client_cert);
    static const unsigned char sid[] = "bench";
    SSL_CTX_set_session_id_context(sctx, sid, sizeof sid - 1);
    struct tls_pair pair;
    connect_pair(&pair, sctx, cctx, NULL);
    SSL_SESSION *ss = SSL_get1_session(pair.s);
    unsigned idlen;
    const unsigned char *id = SSL_SESSION_get_id(ss, &idlen);
    int len = i2d_SSL_SESSION(ss, NULL);
    if (len > cap)
        die("session too large");
    unsigned char *p = der;
    i2d_SSL_SESSION(ss, &p);
    *id_off = 0;
    for (int i = 0; i + (int)idlen <= len; i++)
        if (idlen == 32 && memcmp(der + i, id, 32) == 0) {
            *id_off = (unsigned)i;
            break;
        }
    SSL_SESSION_free(ss);
    tls_pair_close(&pair, 1);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    return len;
}

/* Sessions of this kind a 4 MiB segment holds when full, per MiB. */
static double density(const unsigned char *der, int len, unsigned id_off, uint64_t *slots_per)
{
    shmsess_options o;
    shmsess_options_init(&o);
    o.size_bytes = 4 << 20;
    shmsess_cache *c = NULL;
    if (shmsess_cache_create(&o, &c) != SHMSESS_OK)
        die(shmsess_last_error());
    unsigned char buf[8192];
    memcpy(buf, der, (size_t)len);
    shmsess_stats st;
    uint64_t prev = 0;
    for (long i = 0;; i++) {
        RAND_bytes(buf + id_off, 32);
        shmsess_cache_store(c, buf + id_off, 32, buf, (size_t)len, 4000000000u);
        if (i % 4096 == 4095) {
            shmsess_cache_stats(c, &st);
            if (st.evicted > 0 && st.entries == prev)
                break;
            prev = st.entries;
        }
    }
    shmsess_cache_stats(c, &st);
    *slots_per = st.used_slots / (st.entries ? st.entries : 1);
    shmsess_cache_free(c);
    return (double)st.entries / 4.0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s CERTDIR SECONDS RUNS\n", argv[0]);
        return 2;
    }
    certdir = argv[1];
    double secs = atof(argv[2]);
    /* HANDSHAKE_PROFILE=internal|shmsesscache: only that mode, TLS 1.2, once (for callgrind). */
    const char *prof = getenv("HANDSHAKE_PROFILE");
    if (prof != NULL) {
        enum mode m = strcmp(prof, "internal") == 0 ? INTERNAL : SHMSESS;
        printf("%s %.1f/s\n", mode_name[m], rate(m, TLS1_2_VERSION, secs));
        return 0;
    }
    int runs = atoi(argv[3]);
    if (runs < 1 || runs > 64 || secs <= 0)
        die("bad SECONDS or RUNS");
    printf("{\"openssl\":\"%s\",\"handshakes\":[", OpenSSL_version(OPENSSL_VERSION));
    int versions[2] = { TLS1_2_VERSION, TLS1_3_VERSION };
    const char *vname[2] = { "TLS 1.2", "TLS 1.3" };
    for (int v = 0; v < 2; v++) {
        double r[3][64];
        /* Interleave the modes run by run, so drift on a shared machine hits all alike. */
        for (int k = 0; k < runs; k++)
            for (int m = 0; m < 3; m++)
                r[m][k] = rate((enum mode)m, versions[v], secs);
        for (int m = 0; m < 3; m++) {
            printf("%s{\"protocol\":\"%s\",\"mode\":\"%s\",\"median_per_s\":%.1f,\"runs\":[", v || m ? "," : "",
                   vname[v], mode_name[m], median(r[m], runs));
            for (int k = 0; k < runs; k++)
                printf("%s%.1f", k ? "," : "", r[m][k]);
            printf("]}");
        }
        fprintf(stderr, "%s: internal %.0f/s, shmsesscache %.0f/s, none %.0f/s\n", vname[v], median(r[0], runs),
                median(r[1], runs), median(r[2], runs));
    }
    printf("],\"density\":[");
    for (int v = 0; v < 2; v++)
        for (int cc = 0; cc < 2; cc++) {
            unsigned char der[8192];
            unsigned off;
            int len = real_session(versions[v], cc, der, sizeof der, &off);
            uint64_t slots;
            double per_mib = density(der, len, off, &slots);
            printf("%s{\"protocol\":\"%s\",\"client_cert\":%s,\"der_bytes\":%d,\"slots\":%llu,\"per_mib\":%.0f}",
                   v || cc ? "," : "", vname[v], cc ? "true" : "false", len, (unsigned long long)slots, per_mib);
            fprintf(stderr, "density %s%s: %d bytes, %llu slot(s), %.0f per MiB\n", vname[v],
                    cc ? " + client cert" : "", len, (unsigned long long)slots, per_mib);
        }
    printf("]}\n");
    return 0;
}
