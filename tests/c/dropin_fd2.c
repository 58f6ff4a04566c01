/*
 * A daemon that closed its stderr, then opened a data file (which gets descriptor 2), then
 * serves TLS, under the drop-in logging to stderr (no SHMSESS_PRELOAD_LOG): the drop-in's
 * lines must not land in the data file.
 *   dropin_fd2 CERTDIR DATAFILE
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

static int own_new(SSL *s, SSL_SESSION *sess) { (void)s; (void)sess; return 0; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CERTDIR DATAFILE\n", argv[0]);
        return 2;
    }
    char pem[4096], key[4096];
    snprintf(pem, sizeof pem, "%s/server.pem", argv[1]);
    snprintf(key, sizeof key, "%s/server.key", argv[1]);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate_chain_file(ctx, pem);
    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
    SSL_CTX_sess_set_new_cb(ctx, own_new); /* the drop-in leaves it alone and says so */
    close(2);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd != 2) {
        printf("FAIL: the data file got descriptor %d, not 2\n", fd);
        return 1;
    }
    if (write(fd, "DATA\n", 5) != 5)
        return 1;
    SSL_free(SSL_new(ctx));
    SSL_CTX_free(ctx);
    char got[4096] = {0};
    ssize_t n = pread(fd, got, sizeof got - 1, 0);
    close(fd);
    int clean = n == 5 && strcmp(got, "DATA\n") == 0;
    if (!clean)
        printf("FAIL: the data file on descriptor 2 holds %zd bytes: %.200s\n", n, got);
    printf("%d passed, %d failed\n", clean, !clean);
    return clean ? 0 : 1;
}
