/* mod_socache_shmsess: an Apache httpd "socache" provider on libshmsesscache.
 *
 *     LoadModule socache_shmsess_module modules/mod_socache_shmsess.so
 *     SSLSessionCache shmsess:/run/apache2/ssl_sessions(64M)
 *     SSLSessionCache shmsess                  (anonymous segment of 8 MiB)
 *     SSLSessionCache shmsess:(64M)            (anonymous segment of 64 MiB)
 *
 * The library locks each shard with its own robust process-shared mutex, so the provider is
 * safe for concurrent use: it does not set AP_SOCACHE_FLAG_NOTMPSAFE, and mod_ssl takes no
 * global mutex around it (shmcb needs one around every call). TLS 1.3 sessions are taken out
 * of the cache by the lookup that finds them (single use across all children); TLS 1.2
 * sessions stay until they expire. A named segment outlives restarts, so sessions survive an
 * `apachectl graceful`; an anonymous one lasts as long as the configuration generation.
 *
 * Callers of this provider: mod_ssl's session cache (ids of up to 32 bytes); SSLStaplingCache
 * (20-byte ids) fits too. Ids longer than 32 bytes (mod_authn_socache's keys) are refused.
 */

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_main.h"
#include "http_protocol.h"
#include "ap_provider.h"
#include "ap_socache.h"
#include "mod_status.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "util_cfgtree.h"
#include "apr_hash.h"
#include "apr_md5.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <shmsesscache.h>


module AP_MODULE_DECLARE_DATA socache_shmsess_module;
APLOG_USE_MODULE(socache_shmsess);

/* Default segment size when the configuration gives none (shmcb's is 512000 bytes; sessions
 * are 160-byte-ish DER, so 8 MiB holds about 40,000 of them). */
#define DEFAULT_SIZE (8u * 1024 * 1024)

/* The fleet tier's directives (server config, outside <VirtualHost>: the session cache is
 * one for the whole server). Checked by check_config, so `apache2 -t` refuses them; read by
 * init at every start and graceful restart, which re-reads the key and CA files. */
#define REMOTE_DIRECTIVES 6

typedef struct {
    /* Where each directive of shmsess_directives was given, so a second one is refused with
     * both places (mod_ssl's directives let the last one win, silently). */
    const ap_directive_t *given[REMOTE_DIRECTIVES];
    const char *url;         /* ShmsessRemote redis://... | rediss://...; NULL: one host */
    const char *key_file;    /* ShmsessRemoteKey */
    const char *ca_file;     /* ShmsessRemoteCA */
    const char *key_prefix;  /* ShmsessRemoteKeyPrefix */
    unsigned int timeout_ms; /* ShmsessRemoteTimeout; 0: the library's default */
    int cluster;             /* ShmsessRemoteCluster on */
    int cluster_set;
} remote_conf;

struct ap_socache_instance_t {
    const char *path;    /* NULL: anonymous shared memory, inherited by the children */
    apr_uint64_t size;   /* segment bytes */
    shmsess_cache *cache;
    int fell_back;       /* the named segment was refused; an anonymous one is used */
    int remote_dropped;  /* the fleet tier was refused at this start; this host's segment only */
    const remote_conf *remote; /* this generation's ShmsessRemote*, set by init */
    apr_hash_t *contexts;      /* mod_ssl's session id context of each vhost (see vhost_context) */
};

static remote_conf *remote_conf_of(server_rec *s)
{
    return ap_get_module_config(s->module_config, &socache_shmsess_module);
}

/* "64M", "512000", "2G": bytes with an optional K/M/G suffix (powers of 1024). */
static const char *parse_size(const char *text, apr_uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (end == text || errno || text[0] == '-')
        return "size must be a number of bytes, optionally with K, M or G";
    apr_uint64_t unit = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': unit = 1024; end++; break;
    case 'M': unit = 1024 * 1024; end++; break;
    case 'G': unit = 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end != '\0')
        return "unexpected text after the size";
    if (n == 0 || n > (~(apr_uint64_t)0) / unit)
        return "size out of range";
    *out = n * unit;
    return NULL;
}

/* The library's last message without the name of the function it came from. */
static const char *library_error(apr_pool_t *p)
{
    const char *why = shmsess_last_error();
    const char *colon = strstr(why, ": ");
    if (strncmp(why, "shmsess_", 8) == 0 && colon)
        why = colon + 2;
    return apr_pstrdup(p, why);
}

/* The library names the fields of shmsess_options; the operator wrote directives. */
static const char *const field_directives[][2] = {
    { "remote_url", "ShmsessRemote" },
    { "remote_key_file", "ShmsessRemoteKey" },
    { "remote_ca_file", "ShmsessRemoteCA" },
    { "remote_key_prefix", "ShmsessRemoteKeyPrefix" },
    { "remote_timeout_ms", "ShmsessRemoteTimeout" },
    { "remote_cluster", "ShmsessRemoteCluster" },
};

static const char *in_directives(const char *message, apr_pool_t *p)
{
    for (size_t i = 0; i < sizeof field_directives / sizeof field_directives[0]; i++) {
        const char *field = field_directives[i][0];
        const char *at;
        while ((at = strstr(message, field)) != NULL)
            message = apr_pstrcat(p, apr_pstrndup(p, message, (apr_size_t)(at - message)), field_directives[i][1],
                                  at + strlen(field), NULL);
    }
    return message;
}

static void fill_options(const ap_socache_instance_t *ctx, const char *path, shmsess_options *opts)
{
    shmsess_options_init(opts);
    opts->path = path;
    opts->size_bytes = ctx->size;
}

/* The fleet tier's fields. The byte API reaches Redis only with SHMSESS_BYTE_API_REMOTE. */
static void fill_remote(const remote_conf *rc, shmsess_options *opts)
{
    if (rc == NULL || rc->url == NULL)
        return;
    opts->flags |= SHMSESS_BYTE_API_REMOTE;
    opts->remote_url = rc->url;
    opts->remote_key_file = rc->key_file;
    opts->remote_ca_file = rc->ca_file;
    opts->remote_key_prefix = rc->key_prefix;
    opts->remote_timeout_ms = rc->timeout_ms;
    opts->remote_cluster = rc->cluster;
}

/* See served_before (below): the same question from the configuration pool, whose parent
 * is the process pool. */
#define SERVED_KEY "socache_shmsess:served"

static int process_served_before(apr_pool_t *pconf)
{
    void *served = NULL;
    apr_pool_t *process_pool = apr_pool_parent_get(pconf);
    return process_pool != NULL && apr_pool_userdata_get(&served, SERVED_KEY, process_pool) == APR_SUCCESS &&
           served != NULL;
}

/* The library's own check of what start would refuse (sizes, the path's directory), without
 * creating anything: `apache2 -t`, and so `apache2ctl graceful`, refuse it with the fix
 * instead of a restart that finds out in the parent. What only opening the segment can find
 * (its mode, owner, format, a full filesystem) is handled by init without stopping httpd. */
static const char *check_settings(const ap_socache_instance_t *ctx, const char *arg, apr_pool_t *tmp,
                                  apr_pool_t *pconf)
{
    shmsess_options opts;
    fill_options(ctx, ctx->path, &opts);
    if (shmsess_options_check(&opts) == SHMSESS_OK)
        return NULL;
    const char *why = library_error(tmp);
    /* A refusal that is about the file at the path (its mode, owner, format, size) and not
     * about the settings: `apache2 -t` and a first start refuse it; a graceful restart of a
     * running httpd must not stop it, so init logs it and falls back to an anonymous segment. */
    fill_options(ctx, NULL, &opts);
    if (ctx->path != NULL && shmsess_options_check(&opts) == SHMSESS_OK && process_served_before(pconf))
        return NULL;
    if (strstr(why, "size_bytes") == NULL)
        return apr_psprintf(tmp, "shmsess:%s: %s", arg, why);
    return apr_psprintf(tmp, "shmsess:%s: %s; give a size from 64K to 1024G, e.g. SSLSessionCache shmsess:%s(64M)",
                        arg, why, ctx->path ? ctx->path : "");
}

/* Configuration time: parse "[path][(size)]" and check it; nothing is created yet (configtest
 * runs this). */
static const char *socache_shmsess_create(ap_socache_instance_t **instance, const char *arg,
                                          apr_pool_t *tmp, apr_pool_t *p)
{
    ap_socache_instance_t *ctx = apr_pcalloc(p, sizeof *ctx);
    ctx->size = DEFAULT_SIZE;
    *instance = ctx;
    if (arg == NULL || *arg == '\0')
        return NULL;

    char *path = apr_pstrdup(tmp, arg);
    char *open_paren = strchr(path, '(');
    if (open_paren) {
        char *close_paren = strchr(open_paren, ')');
        if (close_paren == NULL || close_paren[1] != '\0')
            return apr_psprintf(tmp, "shmsess: invalid argument '%s': expected path(size), e.g. "
                                     "/run/apache2/ssl_sessions(64M)", arg);
        *open_paren = '\0';
        *close_paren = '\0';
        const char *err = parse_size(open_paren + 1, &ctx->size);
        if (err)
            return apr_psprintf(tmp, "shmsess: invalid size in '%s': %s", arg, err);
    }
    if (*path) {
        ctx->path = ap_runtime_dir_relative(p, path);
        if (ctx->path == NULL)
            return apr_psprintf(tmp, "shmsess: invalid path '%s'", path);
    }
    return check_settings(ctx, arg, tmp, p);
}

/* Library messages (lock recoveries, refused sessions, full shards) go to the main error
 * log. ap_server_conf is used rather than a server_rec of one generation, which a restart
 * frees while the callback stays registered. Messages never contain session contents. */
static void log_to_apache(int level, const char *message, void *userdata)
{
    (void)userdata;
    int ap_level = level <= 1 ? APLOG_ERR : level == 2 ? APLOG_WARNING : level == 3 ? APLOG_INFO : APLOG_DEBUG;
    ap_log_error(APLOG_MARK, ap_level, 0, ap_server_conf, "shmsesscache: %s", message);
}

static shmsess_result open_segment(ap_socache_instance_t *ctx, const char *path, const remote_conf *remote,
                                   shmsess_cache **out)
{
    shmsess_options opts;
    fill_options(ctx, path, &opts);
    fill_remote(remote, &opts);
    return shmsess_cache_create(&opts, out);
}

/* The named (or anonymous) segment with the fleet tier; if the tier is refused now (a key or
 * CA file removed, or its mode loosened, since `apache2 -t`), the segment alone, logged. */
static shmsess_result open_tiers(ap_socache_instance_t *ctx, const char *path, const char *cname, server_rec *s)
{
    shmsess_result r = open_segment(ctx, path, ctx->remote, &ctx->cache);
    if (r == SHMSESS_OK || ctx->remote->url == NULL)
        return r;
    const char *why = library_error(s->process->pconf);
    r = open_segment(ctx, path, NULL, &ctx->cache);
    if (r == SHMSESS_OK) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                     "shmsess: the fleet tier (ShmsessRemote) for %s is refused: %s. Serving from this host's "
                     "segment only until it is mended and 'apache2ctl graceful' is run.",
                     cname, in_directives(why, s->process->pconf));
        ctx->remote_dropped = 1;
    }
    return r;
}

/* Whether this httpd served a configuration generation already (init ran; mod_ssl skips it in
 * the startup's first pass and `apache2 -t` never reaches it): check_config then runs for a
 * restart. Kept in the process pool, which outlives generations (the key is copied: this
 * module's strings go when the module is unloaded at a restart). */
static void mark_served(server_rec *s)
{
    apr_pool_userdata_set((void *)1, SERVED_KEY, apr_pool_cleanup_null, s->process->pool);
}

static int served_before(server_rec *s)
{
    void *served = NULL;
    return apr_pool_userdata_get(&served, SERVED_KEY, s->process->pool) == APR_SUCCESS && served != NULL;
}

/* What to do about a named segment the library refused to open. */
static const char *fix_for(shmsess_result r)
{
    if (r == SHMSESS_ERR_FORMAT)
        return "Remove the file, or move its sessions with 'shmsesscache dump' and 'shmsesscache load', to use "
               "it again.";
    return "Mend what the message names (the file must be a regular file of the user that starts httpd, mode "
           "0600, on a filesystem with room for it), then 'apache2ctl graceful' to use it again.";
}

/* mod_ssl's session id context of vhost `s` into `out` (33 bytes): the MD5, in hex, of
 * "ServerName:port", `port_if_none` when the vhost names no port (mod_ssl: 443, or 80 for
 * SSLEngine optional). mod_ssl sets it per connection and again when SNI picks a vhost, and
 * OpenSSL refuses a session of another context only after the provider's retrieve returned
 * (and, TLS 1.3, took) it. Used only to recognise another vhost's session, never to accept
 * one: a context that is no vhost's is left to OpenSSL. */
static void vhost_context(const server_rec *s, apr_port_t port_if_none, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    char id[512];
    unsigned char digest[APR_MD5_DIGESTSIZE];
    int n = apr_snprintf(id, sizeof id, "%s:%u", s->server_hostname ? s->server_hostname : "",
                         (unsigned)(s->port ? s->port : port_if_none));
    apr_md5(digest, id, (apr_size_t)n);
    for (int i = 0; i < APR_MD5_DIGESTSIZE; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[32] = '\0';
}

static void add_context(apr_hash_t *contexts, const server_rec *v, apr_port_t port_if_none, apr_pool_t *p)
{
    char *c = apr_palloc(p, 33);
    vhost_context(v, port_if_none, c);
    apr_hash_set(contexts, c, 32, v);
}

/* Every vhost's context, built in the parent (the children inherit it, read only). */
static apr_hash_t *vhost_contexts(server_rec *s, apr_pool_t *p)
{
    apr_hash_t *contexts = apr_hash_make(p);
    for (const server_rec *v = s; v != NULL; v = v->next) {
        add_context(contexts, v, 443, p);
        if (v->port == 0)
            add_context(contexts, v, 80, p);
    }
    return contexts;
}

struct vhost_check {
    const ap_socache_instance_t *ctx;
    const server_rec *s; /* the vhost of the connection, as SNI chose it */
};

static int context_is(const unsigned char *sid, const server_rec *s, apr_port_t port_if_none)
{
    char mine[33];
    vhost_context(s, port_if_none, mine);
    return memcmp(sid, mine, 32) == 0;
}

/* shmsess_accept_fn: whether the entry may resume on this connection's vhost. No: it is a
 * session whose context is another vhost's (OpenSSL would refuse it after the retrieve, and a
 * TLS 1.3 ticket would be used up for nothing). Bytes that are no session (SSLStaplingCache's
 * OCSP responses) or a context no vhost has are not this check's to refuse. */
static int for_this_vhost(const uint8_t *data, size_t len, void *userdata)
{
    const struct vhost_check *vc = userdata;
    const unsigned char *in = data;
    SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &in, (long)len);
    if (sess == NULL)
        return 1;
    unsigned int n = 0;
    const unsigned char *sid = SSL_SESSION_get0_id_context(sess, &n);
    int ok = n != 32 || apr_hash_get(vc->ctx->contexts, sid, 32) == NULL || context_is(sid, vc->s, 443) ||
             (vc->s->port == 0 && context_is(sid, vc->s, 80));
    SSL_SESSION_free(sess);
    return ok;
}

/* post_config, in the parent before the children are forked (they inherit the mapping).
 * Never fails: mod_ssl exits when a provider's init does (AH01874), and at a graceful restart
 * that takes the whole site down for a cache. The settings were checked at configuration
 * time; what only opening the segment finds (another format, a loose mode, a full
 * filesystem) falls back to an anonymous segment, and if even that cannot be had (no memory),
 * httpd serves without a session cache until the next restart. Both are logged as errors. */
static apr_status_t socache_shmsess_init(ap_socache_instance_t *ctx, const char *cname,
                                         const struct ap_socache_hints *hints, server_rec *s,
                                         apr_pool_t *p)
{
    (void)hints;
    shmsess_set_log_callback(log_to_apache, NULL, 4);
    ctx->fell_back = 0;
    ctx->remote_dropped = 0;
    ctx->cache = NULL;
    ctx->remote = remote_conf_of(s);
    ctx->contexts = vhost_contexts(s, p);
    mark_served(s);
    shmsess_result r = open_tiers(ctx, ctx->path, cname, s);
    if (r != SHMSESS_OK && ctx->path) {
        /* Refusing to start would turn a size change, a chmod or a full disk plus
         * `apachectl graceful` into an outage, and deleting or mending a file is not ours to
         * do. Serve from anonymous memory and say so loudly. */
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                     "shmsess: cannot use %s for %s: %s. Using an anonymous segment of %" APR_UINT64_T_FMT
                     " bytes instead (sessions will not survive a restart). %s",
                     ctx->path, cname, shmsess_last_error(), ctx->size, fix_for(r));
        ctx->fell_back = 1;
        r = open_tiers(ctx, NULL, cname, s);
    }
    if (r != SHMSESS_OK) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                     "shmsess: cannot create an anonymous segment of %" APR_UINT64_T_FMT " bytes for %s: %s. "
                     "Serving without a session cache (every handshake is a full one) until the next restart; "
                     "give a smaller size in SSLSessionCache.",
                     ctx->size, cname, shmsess_last_error());
        ctx->cache = NULL;
        return APR_SUCCESS;
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, "shmsess: %s cache of %" APR_UINT64_T_FMT " bytes in %s%s", cname,
                 ctx->size, ctx->path && !ctx->fell_back ? ctx->path : "anonymous shared memory",
                 ctx->remote->url && !ctx->remote_dropped ? ", with the fleet tier (ShmsessRemote)" : "");
    return APR_SUCCESS;
}

/* The segment file is kept: a restart attaches to it again with the sessions inside. */
static void socache_shmsess_destroy(ap_socache_instance_t *ctx, server_rec *s)
{
    (void)s;
    if (ctx->cache) {
        shmsess_cache_free(ctx->cache);
        ctx->cache = NULL;
    }
}

static apr_status_t status_of(shmsess_result r)
{
    switch (r) {
    case SHMSESS_OK: return APR_SUCCESS;
    case SHMSESS_ERR_NOT_FOUND: return APR_NOTFOUND;
    case SHMSESS_ERR_BUFFER_TOO_SMALL:
    case SHMSESS_ERR_TOO_LARGE: return APR_ENOSPC;
    case SHMSESS_ERR_NULL_ARGUMENT:
    case SHMSESS_ERR_INVALID_ARGUMENT: return APR_EINVAL;
    case SHMSESS_ERR_LOCK: return APR_TIMEUP;
    default: return APR_EGENERAL;
    }
}

static apr_status_t socache_shmsess_store(ap_socache_instance_t *ctx, server_rec *s, const unsigned char *id,
                                          unsigned int idlen, apr_time_t expiry, unsigned char *data,
                                          unsigned int datalen, apr_pool_t *p)
{
    (void)p;
    if (ctx->cache == NULL)
        return APR_EGENERAL;
    apr_time_t seconds = apr_time_sec(expiry);
    shmsess_result r = shmsess_cache_store(ctx->cache, id, idlen, data, datalen, seconds > 0 ? (uint64_t)seconds : 0);
    if (r != SHMSESS_OK)
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, "shmsess: store of a %u-byte entry refused: %s", datalen,
                     shmsess_last_error());
    return status_of(r);
}

/* A TLS 1.3 ticket taken by a retrieve, kept for the ClientHello that follows a
 * HelloRetryRequest: OpenSSL looks the ticket up for the first ClientHello, before it decides
 * to ask the client for another key share, and again for the retried one. mod_ssl passes the
 * connection's pool to retrieve, so the copy lives on that connection only (another connection
 * offering the same ticket never sees it: single use holds) and is wiped when it ends. */
struct parked {
    size_t len;
    unsigned char der[];
};

#define PARKED "shmsess-parked:"
#define MISSED "shmsess-missed:"

static apr_status_t wipe_parked(void *data)
{
    struct parked *pk = data;
    OPENSSL_cleanse(pk->der, pk->len);
    pk->len = 0;
    return APR_SUCCESS;
}

/* The connection pool's userdata key for what this provider keeps there about `id`. */
static const char *conn_key(const char *what, const unsigned char *id, unsigned int idlen, apr_pool_t *p)
{
    static const char hex[] = "0123456789abcdef";
    size_t wlen = strlen(what);
    char *k = apr_palloc(p, wlen + 2 * idlen + 1);
    char *o = k + wlen;
    memcpy(k, what, wlen); /* not strcpy: no unfortified string function in the module (lintian) */
    for (unsigned int i = 0; i < idlen; i++) {
        *o++ = hex[id[i] >> 4];
        *o++ = hex[id[i] & 15];
    }
    *o = '\0';
    return k;
}

/* A lookup of this connection for `id` found nothing that resumes. The ClientHello retried
 * after a HelloRetryRequest offers the same id again: it is answered "not found" without
 * asking (and counting) again, so one offer is one retrieve miss in mod_status. */
static void remember_miss(const unsigned char *id, unsigned int idlen, apr_pool_t *p)
{
    static const char marker = 1;
    apr_pool_userdata_set(&marker, conn_key(MISSED, id, idlen, p), NULL, p);
}

static int missed_before(const unsigned char *id, unsigned int idlen, apr_pool_t *p)
{
    void *data = NULL;
    return apr_pool_userdata_get(&data, conn_key(MISSED, id, idlen, p), p) == APR_SUCCESS && data != NULL;
}

static void park(const unsigned char *id, unsigned int idlen, const unsigned char *der, size_t len, apr_pool_t *p)
{
    struct parked *pk = apr_palloc(p, sizeof *pk + len);
    pk->len = len;
    memcpy(pk->der, der, len);
    apr_pool_cleanup_register(p, pk, wipe_parked, apr_pool_cleanup_null);
    apr_pool_userdata_set(pk, conn_key(PARKED, id, idlen, p), NULL, p);
}

/* The copy parked on this connection for `id`, handed out once. */
static int unpark(const unsigned char *id, unsigned int idlen, unsigned char *dest, unsigned int *destlen,
                  apr_pool_t *p)
{
    const char *key = conn_key(PARKED, id, idlen, p);
    void *data = NULL;
    if (apr_pool_userdata_get(&data, key, p) != APR_SUCCESS || data == NULL)
        return 0;
    struct parked *pk = data;
    int ok = pk->len > 0 && pk->len <= *destlen;
    if (ok) {
        memcpy(dest, pk->der, pk->len);
        *destlen = (unsigned int)pk->len;
    }
    wipe_parked(pk);
    apr_pool_userdata_set(NULL, key, NULL, p);
    return ok;
}

static apr_status_t socache_shmsess_retrieve(ap_socache_instance_t *ctx, server_rec *s, const unsigned char *id,
                                             unsigned int idlen, unsigned char *dest, unsigned int *destlen,
                                             apr_pool_t *p)
{
    if (ctx->cache == NULL)
        return APR_EGENERAL;
    /* With one vhost context there is no other vhost's session to recognise. */
    struct vhost_check vc = { ctx, s };
    int several = ctx->contexts != NULL && apr_hash_count(ctx->contexts) > 1 && s != NULL;
    /* The ClientHello retried after a HelloRetryRequest: the ticket this connection took is
     * here, and asking the cache (and Redis, which has its tombstone) would only miss. Its
     * vhost is checked again, as the first lookup did. */
    if (p != NULL && unpark(id, idlen, dest, destlen, p)) {
        if (several && !for_this_vhost(dest, *destlen, &vc)) {
            OPENSSL_cleanse(dest, *destlen);
            return APR_NOTFOUND;
        }
        shmsess_cache_count_hrr_resumed(ctx->cache);
        return APR_SUCCESS;
    }
    if (p != NULL && missed_before(id, idlen, p))
        return APR_NOTFOUND;
    size_t got = 0;
    shmsess_result r = shmsess_cache_lookup_checked(ctx->cache, id, idlen, dest, *destlen, &got,
                                                    SHMSESS_LOOKUP_TAKE_TLS13, several ? for_this_vhost : NULL, &vc);
    if (r == SHMSESS_OK) {
        *destlen = (unsigned int)got;
        if (p != NULL && shmsess_session_is_tls13(dest, got))
            park(id, idlen, dest, got, p);
        return APR_SUCCESS;
    }
    if (p != NULL && r == SHMSESS_ERR_NOT_FOUND)
        remember_miss(id, idlen, p);
    return status_of(r);
}

static apr_status_t socache_shmsess_remove(ap_socache_instance_t *ctx, server_rec *s, const unsigned char *id,
                                           unsigned int idlen, apr_pool_t *p)
{
    (void)s;
    (void)p;
    if (ctx->cache == NULL)
        return APR_EGENERAL;
    return status_of(shmsess_cache_remove(ctx->cache, id, idlen));
}

static long seconds_until(uint64_t when, uint64_t now)
{
    return when > now ? (long)(when - now) : 0;
}

static uint64_t at_most(uint64_t v, uint64_t limit)
{
    return v < limit ? v : limit;
}

static int percent(uint64_t part, uint64_t whole)
{
    return whole ? (int)(100 * part / whole) : 0;
}

/* Counters only this cache has, for both of mod_status's forms (?auto key, HTML label).
 * The remote ones are shown when ShmsessRemote is on. */
struct counter_line {
    const char *key;
    const char *label;
    size_t offset;
    int remote;
};

#define COUNTER(key, label, field, remote) { key, label, offsetof(shmsess_stats, field), remote }
static const struct counter_line counter_lines[] = {
    COUNTER("CacheHRRResumedCount", "TLS 1.3 tickets resumed through a HelloRetryRequest", hrr_resumed, 0),
    COUNTER("CacheSNIMismatchCount", "sessions refused for another server name", sni_mismatch, 0),
    COUNTER("CacheRemoteStoreCount", "sessions written to Redis", remote_stores, 1),
    COUNTER("CacheRemoteHitCount", "local misses Redis answered", remote_hits, 1),
    COUNTER("CacheRemoteMissCount", "local misses Redis did not have either", remote_misses, 1),
    COUNTER("CacheRemoteErrorCount", "failed Redis operations", remote_errors, 1),
    COUNTER("CacheRemoteTimeoutCount", "Redis operations past ShmsessRemoteTimeout", remote_timeouts, 1),
    COUNTER("CacheRemoteSkippedCount", "Redis operations skipped while backing off", remote_skipped, 1),
    COUNTER("CacheRemoteRejectedCount", "Redis values that did not authenticate", remote_rejected, 1),
    COUNTER("CacheRemoteReplaysRefusedCount", "TLS 1.3 tickets refused as used on another host",
            remote_replays_refused, 1),
    COUNTER("CacheRemoteUnconfirmedCount", "TLS 1.3 tickets whose single use Redis could not confirm",
            remote_unconfirmed, 1),
    COUNTER("CacheRemoteDroppedCount", "writes that never reached Redis", remote_dropped, 1),
    COUNTER("CacheRemoteRediscoveredCount", "times the sentinels named another master (a failover)",
            remote_rediscovered, 1),
    COUNTER("CacheRemoteOldFormatCount", "Redis values refused as sealed by 0.4", remote_old_format, 1),
    COUNTER("CacheRemoteRedirectsRefusedCount", "cluster redirections outside the slot map refused",
            remote_redirects_refused, 1),
    COUNTER("CacheRemoteRefusedCount", "sessions read from Redis that could not resume (another vhost)",
            remote_refused, 1),
};

static uint64_t counter_value(const shmsess_stats *st, const struct counter_line *c)
{
    uint64_t v;
    memcpy(&v, (const char *)st + c->offset, sizeof v);
    return v;
}

static void status_counters(const ap_socache_instance_t *ctx, const shmsess_stats *st, request_rec *r, int flags)
{
    int remote = ctx->remote && ctx->remote->url && !ctx->remote_dropped;
    for (size_t i = 0; i < sizeof counter_lines / sizeof counter_lines[0]; i++) {
        const struct counter_line *c = &counter_lines[i];
        if (c->remote && !remote)
            continue;
        if (flags & AP_STATUS_SHORT)
            ap_rprintf(r, "%s: %" APR_UINT64_T_FMT "\n", c->key, (apr_uint64_t)counter_value(st, c));
        else
            ap_rprintf(r, "%s: <b>%" APR_UINT64_T_FMT "</b><br>", c->label, (apr_uint64_t)counter_value(st, c));
    }
}

/* mod_status: shmcb's lines and ?auto keys (so existing monitoring keeps parsing them), then
 * what only this cache has. Retrieves are counted as resumptions: a local miss that Redis
 * answered is a hit, and the second lookup of a ticket through a HelloRetryRequest (answered
 * from the copy kept on the connection) is neither a hit nor a miss but an HRR resumption. */
static void socache_shmsess_status(ap_socache_instance_t *ctx, request_rec *r, int flags)
{
    shmsess_stats st;
    memset(&st, 0, sizeof st);
    if (ctx->cache == NULL || shmsess_cache_stats(ctx->cache, &st) != SHMSESS_OK) {
        ap_rputs(flags & AP_STATUS_SHORT ? "CacheType: SHMSESS\nCacheError: 1\n"
                                         : "cache type: <b>SHMSESS</b>, statistics unavailable<br>",
                 r);
        return;
    }
    const char *where = ctx->path && !ctx->fell_back ? ctx->path : "anonymous";
    int index_pct = percent(st.entries, st.capacity_slots);
    int cache_pct = percent(st.used_slots, st.capacity_slots);
    long avg_left = (long)st.avg_time_left_s;
    long min_left = seconds_until(st.earliest_expiry_unix, st.now_unix);
    long max_left = seconds_until(st.latest_expiry_unix, st.now_unix);
    uint64_t recoveries = st.lock_owner_died + st.dirty_repairs;
    /* A hit the segment found but that resumed nothing (a TLS 1.3 ticket Redis says was used
     * on another host, another vhost's session: lookup_refused) is a miss to mod_ssl, which
     * got NOT_FOUND; so is a session Redis answered a local miss with and that was then
     * refused (remote_refused, counted in remote_hits too). */
    uint64_t local_hits = st.lookup_hits - at_most(st.lookup_refused, st.lookup_hits);
    uint64_t remote_resumed = st.remote_hits - at_most(st.remote_refused, st.remote_hits);
    uint64_t retrieve_hits = local_hits + remote_resumed;
    uint64_t retrieve_misses = st.lookup_misses - at_most(remote_resumed, st.lookup_misses) + (st.lookup_hits - local_hits);

    if (flags & AP_STATUS_SHORT) {
        ap_rprintf(r, "CacheType: SHMSESS\n");
        ap_rprintf(r, "CacheSharedMemory: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.size_bytes);
        ap_rprintf(r, "CacheCurrentEntries: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.entries);
        ap_rprintf(r, "CacheSubcaches: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.shards);
        ap_rprintf(r, "CacheIndexesPerSubcaches: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.slots_per_shard);
        if (st.entries) {
            ap_rprintf(r, "CacheTimeLeftOldestAvg: %ld\n", avg_left);
            ap_rprintf(r, "CacheTimeLeftOldestMin: %ld\n", min_left);
            ap_rprintf(r, "CacheTimeLeftOldestMax: %ld\n", max_left);
        }
        ap_rprintf(r, "CacheIndexUsage: %d%%\n", index_pct);
        ap_rprintf(r, "CacheUsage: %d%%\n", cache_pct);
        ap_rprintf(r, "CacheStoreCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.stores);
        ap_rprintf(r, "CacheReplaceCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.replaced);
        ap_rprintf(r, "CacheExpireCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.expired);
        ap_rprintf(r, "CacheDiscardCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.evicted);
        ap_rprintf(r, "CacheRetrieveHitCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)retrieve_hits);
        ap_rprintf(r, "CacheRetrieveMissCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)retrieve_misses);
        ap_rprintf(r, "CacheRemoveHitCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.remove_hits);
        ap_rprintf(r, "CacheRemoveMissCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.remove_misses);
        ap_rprintf(r, "CacheSingleUseTakenCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.taken);
        ap_rprintf(r, "CacheTooLargeCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.too_large);
        ap_rprintf(r, "CacheLockRecoveryCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)recoveries);
        ap_rprintf(r, "CacheCorruptDroppedCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.corrupt_dropped);
        ap_rprintf(r, "CacheLockTimeoutCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.lock_timeouts);
        ap_rprintf(r, "CacheLockContendedCount: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)st.lock_contended);
        status_counters(ctx, &st, r, flags);
        return;
    }

    ap_rprintf(r, "cache type: <b>SHMSESS</b>, shared memory: <b>%" APR_UINT64_T_FMT "</b> bytes, "
                  "current entries: <b>%" APR_UINT64_T_FMT "</b><br>",
               (apr_uint64_t)st.size_bytes, (apr_uint64_t)st.entries);
    ap_rprintf(r, "segment: <b>%s</b>%s, shards: <b>%" APR_UINT64_T_FMT "</b>, slots per shard: <b>%" APR_UINT64_T_FMT
                  "</b> of <b>%" APR_UINT64_T_FMT "</b> bytes<br>",
               ap_escape_html(r->pool, where), ctx->fell_back ? " (the named segment was refused, see the error log)" : "",
               (apr_uint64_t)st.shards, (apr_uint64_t)st.slots_per_shard, (apr_uint64_t)st.slot_bytes);
    if (st.entries)
        ap_rprintf(r, "time left on entries: avg: <b>%ld</b> seconds, (range: %ld...%ld)<br>", avg_left, min_left,
                   max_left);
    ap_rprintf(r, "index usage: <b>%d%%</b>, cache usage: <b>%d%%</b> (fullest shard %" APR_UINT64_T_FMT
                  " of %" APR_UINT64_T_FMT " slots)<br>",
               index_pct, cache_pct, (apr_uint64_t)st.max_shard_used_slots, (apr_uint64_t)st.slots_per_shard);
    ap_rprintf(r, "total entries stored since starting: <b>%" APR_UINT64_T_FMT "</b><br>", (apr_uint64_t)st.stores);
    ap_rprintf(r, "total entries replaced since starting: <b>%" APR_UINT64_T_FMT "</b><br>", (apr_uint64_t)st.replaced);
    ap_rprintf(r, "total entries expired since starting: <b>%" APR_UINT64_T_FMT "</b><br>", (apr_uint64_t)st.expired);
    ap_rprintf(r, "total (pre-expiry) entries scrolled out of the cache: <b>%" APR_UINT64_T_FMT "</b><br>",
               (apr_uint64_t)st.evicted);
    ap_rprintf(r, "total retrieves since starting: <b>%" APR_UINT64_T_FMT "</b> hit, <b>%" APR_UINT64_T_FMT
                  "</b> miss<br>",
               (apr_uint64_t)retrieve_hits, (apr_uint64_t)retrieve_misses);
    ap_rprintf(r, "total removes since starting: <b>%" APR_UINT64_T_FMT "</b> hit, <b>%" APR_UINT64_T_FMT
                  "</b> miss<br>",
               (apr_uint64_t)st.remove_hits, (apr_uint64_t)st.remove_misses);
    ap_rprintf(r, "TLS 1.3 sessions taken by their single use: <b>%" APR_UINT64_T_FMT "</b>, "
                  "refused as too large: <b>%" APR_UINT64_T_FMT "</b><br>",
               (apr_uint64_t)st.taken, (apr_uint64_t)st.too_large);
    ap_rprintf(r, "locks recovered after a crashed holder: <b>%" APR_UINT64_T_FMT "</b>, corrupt entries dropped: <b>%"
                  APR_UINT64_T_FMT "</b>, lock timeouts: <b>%" APR_UINT64_T_FMT "</b>, contended: <b>%" APR_UINT64_T_FMT
                  "</b><br>",
               (apr_uint64_t)recoveries, (apr_uint64_t)st.corrupt_dropped, (apr_uint64_t)st.lock_timeouts,
               (apr_uint64_t)st.lock_contended);
    status_counters(ctx, &st, r, flags);
}

struct iterate_call {
    ap_socache_instance_t *ctx;
    server_rec *s;
    void *userctx;
    ap_socache_iterator_t *iterator;
    apr_pool_t *pool;
    apr_status_t status;
};

static int iterate_one(const uint8_t *id, size_t id_len, const uint8_t *data, size_t data_len, uint64_t expires,
                       void *userdata)
{
    (void)expires;
    struct iterate_call *call = userdata;
    call->status = call->iterator(call->ctx, call->s, call->userctx, id, (unsigned int)id_len, data,
                                  (unsigned int)data_len, call->pool);
    return call->status != APR_SUCCESS;
}

/* Entries are copied shard by shard and handed to the iterator outside the locks. */
static apr_status_t socache_shmsess_iterate(ap_socache_instance_t *ctx, server_rec *s, void *userctx,
                                            ap_socache_iterator_t *iterator, apr_pool_t *pool)
{
    if (ctx->cache == NULL)
        return APR_EGENERAL;
    struct iterate_call call = { ctx, s, userctx, iterator, pool, APR_SUCCESS };
    shmsess_result r = shmsess_cache_iterate(ctx->cache, iterate_one, &call);
    if (call.status != APR_SUCCESS)
        return call.status;
    return status_of(r);
}

static const ap_socache_provider_t socache_shmsess = {
    "shmsess",
    0, /* safe for concurrent use: no AP_SOCACHE_FLAG_NOTMPSAFE, so no global mutex */
    socache_shmsess_create,
    socache_shmsess_init,
    socache_shmsess_destroy,
    socache_shmsess_store,
    socache_shmsess_retrieve,
    socache_shmsess_remove,
    socache_shmsess_status,
    socache_shmsess_iterate,
};

static void *create_server_config(apr_pool_t *p, server_rec *s)
{
    (void)s;
    return apr_pcalloc(p, sizeof(remote_conf));
}

static const command_rec shmsess_directives[REMOTE_DIRECTIVES + 1];

/* The directives configure the one session cache of the server: outside <VirtualHost>, and
 * each once (Apache names the second one's file and line; the message names the first). */
static remote_conf *global_conf(cmd_parms *cmd, const char **err)
{
    *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    if (*err)
        return NULL;
    remote_conf *rc = remote_conf_of(cmd->server);
    const ap_directive_t **given = &rc->given[cmd->cmd - shmsess_directives];
    if (*given != NULL) {
        *err = apr_psprintf(cmd->pool, "%s is given twice: first at %s:%d. Keep one of them (the fleet tier is "
                                       "one for the whole server)",
                            cmd->cmd->name, (*given)->filename, (*given)->line_num);
        return NULL;
    }
    *given = cmd->directive;
    return rc;
}

static const char *set_remote(cmd_parms *cmd, void *dconf, const char *arg)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    if (rc == NULL)
        return err;
    /* The library checks the rest of the URL (at the configuration check). */
    if (strncmp(arg, "redis://", 8) != 0 && strncmp(arg, "rediss://", 9) != 0
        && strncmp(arg, "redis+sentinel://", 17) != 0 && strncmp(arg, "rediss+sentinel://", 18) != 0)
        return "ShmsessRemote: expected redis://host:port/db or rediss://host:port/db "
               "(e.g. ShmsessRemote redis://10.0.0.5:6379/0), or "
               "redis+sentinel://ip:port,ip:port/MASTERNAME/db for Sentinel";
    rc->url = arg;
    return NULL;
}

static const char *set_file(cmd_parms *cmd, const char *arg, const char **field)
{
    const char *path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL)
        return apr_psprintf(cmd->pool, "%s: invalid path '%s'", cmd->cmd->name, arg);
    *field = path;
    return NULL;
}

static const char *set_remote_key(cmd_parms *cmd, void *dconf, const char *arg)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    return rc ? set_file(cmd, arg, &rc->key_file) : err;
}

static const char *set_remote_ca(cmd_parms *cmd, void *dconf, const char *arg)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    return rc ? set_file(cmd, arg, &rc->ca_file) : err;
}

static const char *set_remote_timeout(cmd_parms *cmd, void *dconf, const char *arg)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    if (rc == NULL)
        return err;
    char *end = NULL;
    errno = 0;
    unsigned long ms = strtoul(arg, &end, 10);
    if (end == arg || *end != '\0' || errno || arg[0] == '-' || ms < 1 || ms > 60000)
        return "ShmsessRemoteTimeout: milliseconds from 1 to 60000 per remote operation "
               "(e.g. ShmsessRemoteTimeout 25)";
    rc->timeout_ms = (unsigned int)ms;
    return NULL;
}

static const char *set_remote_cluster(cmd_parms *cmd, void *dconf, int on)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    if (rc == NULL)
        return err;
    rc->cluster = on;
    rc->cluster_set = 1;
    return NULL;
}

static const char *set_remote_key_prefix(cmd_parms *cmd, void *dconf, const char *arg)
{
    (void)dconf;
    const char *err;
    remote_conf *rc = global_conf(cmd, &err);
    if (rc == NULL)
        return err;
    if (*arg == '\0')
        return "ShmsessRemoteKeyPrefix: give a non-empty prefix (e.g. ShmsessRemoteKeyPrefix shmsess:www:)";
    rc->key_prefix = arg;
    return NULL;
}

static const command_rec shmsess_directives[REMOTE_DIRECTIVES + 1] = {
    AP_INIT_TAKE1("ShmsessRemote", set_remote, NULL, RSRC_CONF,
                  "redis://host:port/db or rediss://...: the Redis tier this host shares with others"),
    AP_INIT_TAKE1("ShmsessRemoteKey", set_remote_key, NULL, RSRC_CONF,
                  "file of AES-256 keys (64 hex digits a line, mode 0600) sealing sessions in Redis"),
    AP_INIT_TAKE1("ShmsessRemoteCA", set_remote_ca, NULL, RSRC_CONF,
                  "PEM file of the CA certificates a rediss:// server's certificate must chain to"),
    AP_INIT_TAKE1("ShmsessRemoteTimeout", set_remote_timeout, NULL, RSRC_CONF,
                  "longest a remote operation may take, in ms (default 25)"),
    AP_INIT_FLAG("ShmsessRemoteCluster", set_remote_cluster, NULL, RSRC_CONF,
                 "on: ShmsessRemote names a seed node of a Redis Cluster"),
    AP_INIT_TAKE1("ShmsessRemoteKeyPrefix", set_remote_key_prefix, NULL, RSRC_CONF,
                  "prefix of the Redis keys (default shmsess:)"),
    { NULL },
};

/* The directives that only make sense with ShmsessRemote. */
static const char *orphan_directive(const remote_conf *rc)
{
    if (rc->key_file)
        return "ShmsessRemoteKey";
    if (rc->ca_file)
        return "ShmsessRemoteCA";
    if (rc->timeout_ms)
        return "ShmsessRemoteTimeout";
    if (rc->cluster_set)
        return "ShmsessRemoteCluster";
    if (rc->key_prefix)
        return "ShmsessRemoteKeyPrefix";
    return NULL;
}

/* After the configuration is read, in `apache2 -t` too: the fleet tier's settings as a whole
 * (URL, key file's owner, mode and contents, CA file, cluster), as start would check them. */
/* A refusal of the fleet tier's settings: fatal in `apache2 -t` and at the first start, so
 * the operator sees it before anything runs; at a restart of a running httpd (a key file
 * whose mode changed since, a restart signalled without the configuration test) an error in
 * the log, and the new generation runs without the tier (init says so too). */
static int refuse_remote(server_rec *s, const char *why)
{
    if (served_before(s)) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                     "shmsess: %s. This restart goes on without the fleet tier (each host's segment only); mend "
                     "it and run 'apache2ctl graceful'.",
                     why);
        return OK;
    }
    ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "shmsess: %s", why);
    return HTTP_INTERNAL_SERVER_ERROR;
}

/* The last SSLSessionCache in the configuration tree (mod_ssl keeps the last), or NULL.
 * Include, <IfModule> and <IfDefine> are already spliced in when they apply. */
static const ap_directive_t *last_session_cache(const ap_directive_t *d)
{
    const ap_directive_t *last = NULL;
    for (; d != NULL; d = d->next) {
        const ap_directive_t *inner = d->first_child ? last_session_cache(d->first_child) : NULL;
        if (ap_cstr_casecmp(d->directive, "SSLSessionCache") == 0)
            last = d;
        else if (inner != NULL)
            last = inner;
    }
    return last;
}

/* Whether an SSLSessionCache argument names this provider ("shmsess", "shmsess:..."). */
static int names_shmsess(const char *arg)
{
    if (*arg == '"' || *arg == '\'')
        arg++;
    return strncmp(arg, "shmsess", 7) == 0 && (arg[7] == '\0' || arg[7] == ':' || arg[7] == '"' ||
                                                arg[7] == '\'' || apr_isspace(arg[7]));
}

/* ShmsessRemote configures this provider's session cache: with another one it would be
 * ignored without a word, and the operator would believe in a fleet that is not there. */
static const char *unused_remote(const remote_conf *rc, apr_pool_t *p)
{
    const ap_directive_t *cache = last_session_cache(ap_conftree);
    if (cache != NULL && names_shmsess(cache->args))
        return NULL;
    const ap_directive_t *remote = rc->given[0];
    if (cache == NULL)
        return apr_psprintf(p, "ShmsessRemote (%s:%d) configures SSLSessionCache shmsess, but there is no "
                               "SSLSessionCache: add 'SSLSessionCache shmsess:/run/apache2/ssl_sessions(64M)', or "
                               "remove the Shmsess* directives",
                            remote->filename, remote->line_num);
    return apr_psprintf(p, "ShmsessRemote (%s:%d) configures SSLSessionCache shmsess, but the session cache is "
                           "'SSLSessionCache %s' (%s:%d), which would ignore it: use 'SSLSessionCache shmsess:...' "
                           "there, or remove the Shmsess* directives",
                        remote->filename, remote->line_num, cache->args, cache->filename, cache->line_num);
}

static int check_remote_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    const remote_conf *rc = remote_conf_of(s);
    if (rc->url == NULL) {
        const char *orphan = orphan_directive(rc);
        if (orphan == NULL)
            return OK;
        return refuse_remote(s, apr_psprintf(ptemp, "%s is set but ShmsessRemote is not: add ShmsessRemote "
                                                    "redis://host:port/db, or remove it",
                                             orphan));
    }
    const char *unused = unused_remote(rc, ptemp);
    if (unused != NULL)
        return refuse_remote(s, unused);
    shmsess_options opts;
    shmsess_options_init(&opts);
    fill_remote(rc, &opts);
    if (shmsess_options_check(&opts) == SHMSESS_OK)
        return OK;
    return refuse_remote(s, apr_psprintf(ptemp, "ShmsessRemote settings refused: %s",
                                         in_directives(library_error(ptemp), ptemp)));
}

static void register_hooks(apr_pool_t *p)
{
    ap_register_provider(p, AP_SOCACHE_PROVIDER_GROUP, "shmsess", AP_SOCACHE_PROVIDER_VERSION, &socache_shmsess);
    ap_hook_check_config(check_remote_config, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA socache_shmsess_module = {
    STANDARD20_MODULE_STUFF,
    NULL, /* per-directory config */
    NULL, /* merge per-directory */
    create_server_config,
    NULL, /* merge per-server: the directives are global only */
    shmsess_directives,
    register_hooks,
    AP_MODULE_FLAG_NONE,
};
