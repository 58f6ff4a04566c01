/*
 * Another library's SSL_CTX_new / SSL_new / SSL_free / SSL_CTX_free, as GnuTLS's OpenSSL
 * compatibility layer or a bundled libssl 1.1 defines them: objects that are not OpenSSL 3's.
 * Loaded before libssl.so.3, so the drop-in's dlsym(RTLD_NEXT) finds these first.
 */
#include <stdlib.h>
#include <string.h>

struct foreign { char tag[8]; };

static void *made(const char *tag) {
    struct foreign *f = malloc(sizeof *f);
    if (f)
        strcpy(f->tag, tag);
    return f;
}

void *SSL_CTX_new(const void *method) { (void)method; return made("ctx"); }
void *SSL_new(void *ctx) { (void)ctx; return made("ssl"); }
void SSL_free(void *s) { free(s); }
void SSL_CTX_free(void *c) { free(c); }
