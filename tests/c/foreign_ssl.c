/*
 * A program whose SSL_* come from another library (tests/c/foreign_ssl_lib.c), run under the
 * drop-in: it must pass every call through untouched (no OpenSSL 3 call on a foreign object:
 * valgrind would see the invalid reads) and say so once.
 *   foreign_ssl LOGFILE
 */
#include <stdio.h>
#include <string.h>

void *SSL_CTX_new(const void *method);
void *SSL_new(void *ctx);
void SSL_free(void *s);
void SSL_CTX_free(void *c);

static int log_lines_with(const char *file, const char *needle) {
    FILE *f = fopen(file, "r");
    char line[2048];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s LOGFILE\n", argv[0]);
        return 2;
    }
    int failed = 0;
    char *ctx = SSL_CTX_new(NULL);
    char *ssl = SSL_new(ctx);
    if (!ctx || !ssl || strcmp(ctx, "ctx") != 0 || strcmp(ssl, "ssl") != 0) {
        printf("FAIL: the foreign library's objects did not come back untouched\n");
        failed++;
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    int said = log_lines_with(argv[1], "not OpenSSL 3's libssl");
    if (said != 1) {
        printf("FAIL: %d log lines saying the SSL functions are another library's (1 expected)\n", said);
        failed++;
    }
    printf("%d passed, %d failed\n", 2 - failed, failed);
    return failed ? 1 : 0;
}
