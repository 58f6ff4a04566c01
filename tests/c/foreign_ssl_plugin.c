/*
 * A program not linked to libssl that dlopens (RTLD_LOCAL) a plugin linked to a bundled
 * libssl 1.1 (libforeign_ssl11.so: tests/c/foreign_ssl_lib.c with its symbols versioned
 * OPENSSL_1_1_0, tests/c/foreign_ssl11.map), run under the drop-in. The plugin's versioned
 * references must reach its own library, not the drop-in's definitions (which forwarded them
 * to libssl.so.3 and crashed there on the foreign objects: review F1).
 *   foreign_ssl_plugin PLUGIN.so         the host
 * Built with -DPLUGIN, this file is the plugin.
 */
#include <stdio.h>
#include <string.h>

#ifdef PLUGIN
void *SSL_CTX_new(const void *method);
void *SSL_new(void *ctx);
void SSL_free(void *s);
void SSL_CTX_free(void *c);

int plugin_run(void);
int plugin_run(void) {
    char *ctx = SSL_CTX_new(NULL);
    char *ssl = ctx ? SSL_new(ctx) : NULL;
    int ok = ctx && ssl && strcmp(ctx, "ctx") == 0 && strcmp(ssl, "ssl") == 0;
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return ok;
}
#else
#include <dlfcn.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PLUGIN.so\n", argv[0]);
        return 2;
    }
    void *plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!plugin) {
        printf("FAIL: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    int (*run)(void) = (int (*)(void))dlsym(plugin, "plugin_run");
    int ok = run && run();
    if (!ok)
        printf("FAIL: the plugin's libssl 1.1 calls did not reach its own library\n");
    printf("%d passed, %d failed\n", ok, !ok);
    dlclose(plugin);
    return ok ? 0 : 1;
}
#endif
