/*
 * A server that loads the library with dlopen (a module system), installs a cache, and later
 * dlcloses it while SSL_CTXs still exist. OpenSSL calls the ex_data free function registered
 * by the library on every later SSL_CTX_free, of any context: the library must stay mapped
 * (it is linked -z nodelete), or that call jumps into unmapped memory.
 *
 * usage: c_unload LIBRARY CERTDIR
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/ssl.h>

typedef struct shmsess_cache shmsess_cache;
typedef int (*init_fn)(void *opts, size_t size);
typedef int (*create_fn)(const void *opts, shmsess_cache **out);
typedef int (*install_fn)(shmsess_cache *c, SSL_CTX *ctx);
typedef void (*free_fn)(shmsess_cache *c);

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBRARY CERTDIR\n", argv[0]);
        return 2;
    }
    char pem[512], key[512];
    snprintf(pem, sizeof pem, "%s/server.pem", argv[2]);
    snprintf(key, sizeof key, "%s/server.key", argv[2]);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("FAIL dlopen: %s\n0 passed, 1 failed\n", dlerror());
        return 1;
    }
    init_fn init = (init_fn)dlsym(lib, "shmsess_options_init_sized");
    create_fn create = (create_fn)dlsym(lib, "shmsess_cache_create");
    install_fn install = (install_fn)dlsym(lib, "shmsess_install");
    free_fn cache_free = (free_fn)dlsym(lib, "shmsess_cache_free");
    if (!init || !create || !install || !cache_free) {
        printf("FAIL dlsym\n0 passed, 1 failed\n");
        return 1;
    }
    _Alignas(8) unsigned char opts[512] = { 0 };
    shmsess_cache *cache = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate_file(ctx, pem, SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
    if (init(opts, sizeof opts) != 0 || create(opts, &cache) != 0 || install(cache, ctx) != 0) {
        printf("FAIL create/install\n0 passed, 1 failed\n");
        return 1;
    }
    cache_free(cache);
    dlclose(lib);
    /* The installed context, then an unrelated one: both run the library's free function. */
    SSL_CTX_free(ctx);
    SSL_CTX_free(SSL_CTX_new(TLS_server_method()));
    printf("1 passed, 0 failed\n");
    return 0;
}
