/*
 * A program built against an earlier header (OLD_HEADER=1: the 0.1 options struct, 48 bytes;
 * OLD_HEADER=2: the 0.2 struct with the session id prefix, 64 bytes), run with this library.
 * It declares what it uses itself, exactly as those headers did, and keeps its structs on the
 * heap at their exact size, so valgrind reports any byte the library writes past them.
 *
 * usage: c_old_abi_v1 | c_old_abi_v2   (prints "N passed, N failed")
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef OLD_HEADER
#error "build with -DOLD_HEADER=1 or 2"
#endif

typedef struct shmsess_cache shmsess_cache;

/* shmsess_options as the 0.1 header declared it, plus the 0.2 fields for OLD_HEADER=2. */
typedef struct shmsess_options {
    uint32_t struct_size;
    uint32_t flags;
    const char *path;
    uint64_t size_bytes;
    uint32_t slot_bytes;
    uint32_t lock_timeout_ms;
    uint32_t session_timeout;
    uint32_t session_id_context_len;
    const uint8_t *session_id_context;
#if OLD_HEADER >= 2
    const uint8_t *session_id_prefix;
    uint32_t session_id_prefix_len;
#endif
} shmsess_options;

/* The 0.1 statistics: 28 counters after struct_size and version. */
typedef struct shmsess_stats {
    uint32_t struct_size;
    uint32_t version;
    uint64_t counters[28];
} shmsess_stats;

int shmsess_options_init(shmsess_options *opts);
int shmsess_cache_create(const shmsess_options *opts, shmsess_cache **out);
int shmsess_cache_store(shmsess_cache *c, const uint8_t *id, size_t id_len, const uint8_t *data, size_t data_len,
                        uint64_t expires);
int shmsess_cache_lookup(shmsess_cache *c, const uint8_t *id, size_t id_len, uint8_t *buf, size_t buf_len,
                         size_t *out_len, int take);
int shmsess_cache_stats(const shmsess_cache *c, shmsess_stats *stats);
void shmsess_cache_free(shmsess_cache *c);
const char *shmsess_last_error(void);
const char *shmsess_version(void);
int shmsess_set_log_callback(void (*callback)(int level, const char *message, void *userdata), void *userdata,
                             int max_level);

static int legacy_warnings;
static void on_log(int level, const char *message, void *userdata)
{
    (void)level;
    (void)userdata;
    legacy_warnings += strstr(message, "legacy shmsess_options_init") != NULL;
}

static int passed, failed;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            passed++;                                                           \
        } else {                                                                \
            failed++;                                                           \
            printf("FAIL %s:%d: %s — ", __FILE__, __LINE__, #cond);             \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

int main(void)
{
    /* Exactly the caller's size, on the heap: a write past it is a valgrind error. */
    shmsess_options *o = malloc(sizeof *o);
    CHECK(shmsess_options_init(o) == 0, "options_init: %s", shmsess_last_error());
    CHECK(o->size_bytes == 8u << 20 && o->slot_bytes == 200 && o->path == NULL, "0.1 defaults");
    o->size_bytes = 1 << 20;
#if OLD_HEADER >= 2
    /* A 0.2 program that sets a prefix after the (unsized) init: not read, nothing breaks. */
    o->session_id_prefix = (const uint8_t *)"old";
    o->session_id_prefix_len = 3;
#endif
    shmsess_cache *c = NULL;
    shmsess_set_log_callback(on_log, NULL, 2);
    CHECK(shmsess_cache_create(o, &c) == 0 && c != NULL, "create with the old struct: %s", shmsess_last_error());
    CHECK(legacy_warnings == 1, "the log says that fields after the 0.1 ones are not read (%d)", legacy_warnings);
    uint8_t id[32] = { 7 }, data[100], buf[200];
    memset(data, 9, sizeof data);
    size_t n = 0;
    CHECK(shmsess_cache_store(c, id, 32, data, sizeof data, 4000000000u) == 0, "store");
    CHECK(shmsess_cache_lookup(c, id, 32, buf, sizeof buf, &n, 0) == 0 && n == sizeof data &&
              memcmp(buf, data, n) == 0,
          "lookup");
    shmsess_stats *st = malloc(sizeof *st);
    CHECK(shmsess_cache_stats(c, st) == 0 && st->struct_size == sizeof *st && st->counters[0] == 1,
          "0.1 stats: %u bytes, %llu stores", st->struct_size, (unsigned long long)st->counters[0]);
    CHECK(strcmp(shmsess_version(), EXPECTED_VERSION) == 0, "version %s, expected %s", shmsess_version(),
          EXPECTED_VERSION);
    free(st);
    shmsess_cache_free(c);
    free(o);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
