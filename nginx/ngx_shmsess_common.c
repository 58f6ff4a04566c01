/*
 * The part of the shmsesscache nginx modules that does not depend on the block (http,
 * stream, mail): directives, their checks, the cache's lifetime with the cycle, installing it
 * on a server's SSL_CTX, the status text. See ngx_shmsess_common.h.
 *
 * Life cycle. Directives are only parsed and checked while the configuration is read (that
 * also happens under `nginx -t` and in the `nginx -s` signaller, which must create nothing).
 * The segment is created or attached in init_module: in the master, after the configuration
 * has been committed and before the workers are forked. The handle belongs to the cycle's
 * configuration and is freed with the cycle's pool, unless the next cycle took it over
 * because no setting changed (then an anonymous segment survives the reload too).
 */

#include "ngx_shmsess_common.h"


/* Smallest segment accepted at configuration time: below it the library refuses anyway
 * (it wants two of the largest entries per shard), but only when nginx starts. */
#define NGX_SHMSESS_MIN_SIZE  (1024 * 1024)

/* Longest message the module builds before handing it to ngx_conf_log_error. */
#define NGX_SHMSESS_MAX_MESSAGE  1024


static const char  *ngx_shmsess_directive_names[NGX_SHMSESS_DIRECTIVES] = {
    "shmsess_session_cache", "shmsess_remote", "shmsess_remote_key", "shmsess_remote_ca",
    "shmsess_remote_key_prefix", "shmsess_remote_timeout", "shmsess_remote_fleet",
    "shmsess_session_id_prefix",
    "shmsess_status"
};


/* ---- messages at the directive's own line ----------------------------------------------- */

void
ngx_shmsess_remember(ngx_conf_t *cf, ngx_shmsess_conf_t *conf, ngx_shmsess_directive_e d)
{
    u_char     *copy;
    ngx_str_t  *name = &cf->conf_file->file.name;

    /* NUL-terminated: ngx_conf_log_error prints it with %s */
    copy = ngx_pnalloc(cf->pool, name->len + 1);
    if (copy == NULL) {
        return;  /* the message then names the line nginx is reading */
    }

    (void) ngx_cpystrn(copy, name->data, name->len + 1);
    conf->where[d].file.data = copy;
    conf->where[d].file.len = name->len;
    conf->where[d].line = cf->conf_file->line;
}


/* ngx_conf_log_error as if nginx were reading directive `d` (its file and line, e.g. in
 * conf.d/), not the end of the block that is being checked. */
static void ngx_cdecl
ngx_shmsess_error_at(ngx_conf_t *cf, ngx_shmsess_conf_t *conf, ngx_shmsess_directive_e d,
    const char *fmt, ...)
{
    u_char            text[NGX_SHMSESS_MAX_MESSAGE], *last;
    va_list           args;
    ngx_conf_file_t   at, *reading;

    va_start(args, fmt);
    last = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    reading = cf->conf_file;

    if (conf->where[d].file.len) {
        at = *reading;
        at.file.name = conf->where[d].file;
        at.line = conf->where[d].line;
        cf->conf_file = &at;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%*s", last - text, text);

    cf->conf_file = reading;
}


/* The first directive of `conf` that needs shmsess_session_cache, or NGX_SHMSESS_DIRECTIVES. */
static ngx_shmsess_directive_e
ngx_shmsess_first_given(ngx_shmsess_conf_t *conf, ngx_shmsess_directive_e from)
{
    ngx_uint_t  d;

    for (d = from; d < NGX_SHMSESS_DIRECTIVES; d++) {
        if (conf->where[d].file.len) {
            return d;
        }
    }

    return NGX_SHMSESS_DIRECTIVES;
}


/* ---- configuration ---------------------------------------------------------------------- */

void *
ngx_shmsess_create_conf(ngx_conf_t *cf, size_t size, const char *block)
{
    ngx_shmsess_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, size);
    if (conf == NULL) {
        return NULL;
    }

    /* everything else starts zeroed by ngx_pcalloc(): not given */
    conf->remote_timeout = NGX_CONF_UNSET_MSEC;
    conf->block = block;

    return conf;
}


/* NUL-terminated copy of a configuration string for the library (NULL when empty). */
static ngx_int_t
ngx_shmsess_cstr(ngx_pool_t *pool, ngx_str_t *s, const char **out)
{
    u_char  *p;

    *out = NULL;

    if (s->len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(p, s->data, s->len + 1);
    *out = (const char *) p;

    return NGX_OK;
}


/* The library's options for the segment alone (path and size); strings copied into `pool`. */
static ngx_int_t
ngx_shmsess_segment_options(ngx_pool_t *pool, ngx_shmsess_conf_t *conf, shmsess_options *opts)
{
    shmsess_options_init(opts);

    /* nginx set each server's session id context (ngx_ssl_session_id_context) */
    opts->flags = SHMSESS_KEEP_SESSION_ID_CONTEXT;
    opts->size_bytes = conf->size;

    /* session lifetime: each session carries its server's ssl_session_timeout */
    opts->session_timeout = 0;

    /* a string that could not be copied must not turn a named segment into an anonymous one */
    return ngx_shmsess_cstr(pool, &conf->path, &opts->path);
}


/* All the library's options for this configuration; strings are copied into `pool`. */
static ngx_int_t
ngx_shmsess_options(ngx_pool_t *pool, ngx_shmsess_conf_t *conf, shmsess_options *opts)
{
    if (ngx_shmsess_segment_options(pool, conf, opts) != NGX_OK
        || ngx_shmsess_cstr(pool, &conf->remote_url, &opts->remote_url) != NGX_OK
        || ngx_shmsess_cstr(pool, &conf->remote_key_file, &opts->remote_key_file) != NGX_OK
        || ngx_shmsess_cstr(pool, &conf->remote_key_prefix, &opts->remote_key_prefix)
           != NGX_OK
        || ngx_shmsess_cstr(pool, &conf->remote_ca_file, &opts->remote_ca_file) != NGX_OK
        || ngx_shmsess_cstr(pool, &conf->remote_fleet, &opts->remote_fleet) != NGX_OK)
    {
        return NGX_ERROR;
    }

    opts->remote_timeout_ms =
        conf->remote_timeout == NGX_CONF_UNSET_MSEC ? 0 : (uint32_t) conf->remote_timeout;

    /* a prefix at creation installs the library's id generator; workers extend it */
    opts->session_id_prefix = conf->id_prefix.data;
    opts->session_id_prefix_len = (uint32_t) conf->id_prefix.len;

    /* the generator also without a prefix: it picks ids whose shards have room, so the
     * shards fill evenly (OpenSSL's random ids leave the fullest evicting early) */
    opts->flags |= SHMSESS_GENERATE_SESSION_IDS;

    return NGX_OK;
}


/* A Redis-tier directive given without what it configures (it would be silently ignored). */
static char *
ngx_shmsess_check_remote_directives(ngx_conf_t *cf, ngx_shmsess_conf_t *conf)
{
    ngx_shmsess_directive_e  orphan;

    if (conf->remote_url.len) {
        return NGX_CONF_OK;
    }

    orphan = conf->remote_key_file.len ? NGX_SHMSESS_KEY_DIRECTIVE
           : conf->remote_ca_file.len ? NGX_SHMSESS_CA_DIRECTIVE
           : conf->remote_key_prefix.data ? NGX_SHMSESS_KEY_PREFIX_DIRECTIVE
           : conf->remote_timeout != NGX_CONF_UNSET_MSEC ? NGX_SHMSESS_TIMEOUT_DIRECTIVE
           : conf->remote_fleet.data ? NGX_SHMSESS_FLEET_DIRECTIVE
           : NGX_SHMSESS_DIRECTIVES;

    if (orphan != NGX_SHMSESS_DIRECTIVES) {
        ngx_shmsess_error_at(cf, conf, orphan,
                             "\"%s\" has no effect without \"shmsess_remote\" (and "
                             "\"shmsess_session_cache\") in the %s block: add them or "
                             "remove it", ngx_shmsess_directive_names[orphan], conf->block);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* "... is a symbolic link" advice for a key file the library refused (it never follows one). */
static void
ngx_shmsess_symlink_hint(ngx_conf_t *cf, ngx_shmsess_conf_t *conf)
{
    ngx_str_t       *file = &conf->remote_key_file;
    ngx_file_info_t  fi;

    if (file->len == 0 || ngx_link_info(file->data, &fi) == NGX_FILE_ERROR
        || !ngx_is_link(&fi))
    {
        return;
    }

    ngx_shmsess_error_at(cf, conf, NGX_SHMSESS_KEY_DIRECTIVE,
                         "\"shmsess_remote_key\" \"%V\" is a symbolic link, which the "
                         "library refuses to follow (Kubernetes secret volumes are made of "
                         "them): give the real file (readlink -f \"%V\"; in a Kubernetes "
                         "secret volume DIR/..data/NAME, which stays valid across updates) "
                         "or copy the key into a regular file of mode 0600", file, file);
}


/* Everything shmsess_cache_create would refuse at start, refused now (nginx -t, reload):
 * the segment alone first (reported at shmsess_session_cache), then with the Redis tier
 * (reported at shmsess_remote). */
static char *
ngx_shmsess_check_with_library(ngx_conf_t *cf, ngx_shmsess_conf_t *conf)
{
    shmsess_options          opts;
    ngx_shmsess_directive_e  d;

    d = NGX_SHMSESS_CACHE_DIRECTIVE;

    if (ngx_shmsess_segment_options(cf->temp_pool, conf, &opts) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (shmsess_options_check(&opts) == SHMSESS_OK) {
        d = NGX_SHMSESS_REMOTE_DIRECTIVE;

        if (ngx_shmsess_options(cf->temp_pool, conf, &opts) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (shmsess_options_check(&opts) == SHMSESS_OK) {
            return NGX_CONF_OK;
        }
    }

    ngx_shmsess_error_at(cf, conf, d, "shmsess: invalid settings: %s", shmsess_last_error());
    ngx_shmsess_symlink_hint(cf, conf);

    return NGX_CONF_ERROR;
}


/* One file is one segment: a block of this configuration read before this one (http, stream
 * and mail each have their own conf) that names the same file with another size would make
 * the second block's start fail after the first block created the file. */
static char *
ngx_shmsess_check_same_file(ngx_conf_t *cf, ngx_shmsess_conf_t *conf)
{
    ngx_str_t            blocks[] = { ngx_string("http"), ngx_string("stream"),
                                      ngx_string("mail") };
    ngx_uint_t           i;
    ngx_shmsess_conf_t  *other;

    for (i = 0; conf->path.len && i < sizeof(blocks) / sizeof(blocks[0]); i++) {
        other = ngx_shmsess_block_conf(cf->cycle, &blocks[i]);

        if (other == NULL || other == conf || other->size == 0
            || other->path.len != conf->path.len
            || ngx_memcmp(other->path.data, conf->path.data, conf->path.len) != 0
            || other->size == conf->size)
        {
            continue;
        }

        ngx_shmsess_error_at(cf, conf, NGX_SHMSESS_CACHE_DIRECTIVE,
                             "segment \"%V\" is also named by \"shmsess_session_cache\" in "
                             "the %s block (%V:%ui) with another size (%uz bytes there, %uz "
                             "here): one file is one segment, so give both the same size, or "
                             "name another file here", &conf->path, other->block,
                             &other->where[NGX_SHMSESS_CACHE_DIRECTIVE].file,
                             other->where[NGX_SHMSESS_CACHE_DIRECTIVE].line,
                             other->size, conf->size);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_shmsess_check_conf(ngx_conf_t *cf, ngx_shmsess_conf_t *conf)
{
    ngx_shmsess_directive_e  needs_cache;

    needs_cache = ngx_shmsess_first_given(conf, NGX_SHMSESS_REMOTE_DIRECTIVE);

    if (conf->size == 0 && needs_cache != NGX_SHMSESS_DIRECTIVES) {
        ngx_shmsess_error_at(cf, conf, needs_cache,
                             "shmsess_remote, shmsess_remote_key, shmsess_remote_ca, "
                             "shmsess_remote_key_prefix, shmsess_remote_timeout, "
                             "shmsess_remote_fleet, shmsess_session_id_prefix and "
                             "shmsess_status need "
                             "\"shmsess_session_cache\" in the %s block", conf->block);
        return NGX_CONF_ERROR;
    }

    if (ngx_shmsess_check_remote_directives(cf, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->remote_url.len && conf->remote_key_file.len == 0) {
        ngx_shmsess_error_at(cf, conf, NGX_SHMSESS_REMOTE_DIRECTIVE,
                             "\"shmsess_remote\" needs \"shmsess_remote_key\": a file with "
                             "one 64-hex-digit key per line, mode 0600 "
                             "(openssl rand -hex 32)");
        return NGX_CONF_ERROR;
    }

    if (conf->remote_key_prefix.data && conf->remote_key_prefix.len == 0) {
        ngx_shmsess_error_at(cf, conf, NGX_SHMSESS_KEY_PREFIX_DIRECTIVE,
                             "empty \"shmsess_remote_key_prefix\": give a prefix for this "
                             "fleet's Redis keys (e.g. \"shmsess:web:\") or remove the "
                             "directive to use the default");
        return NGX_CONF_ERROR;
    }

    if (conf->remote_timeout != NGX_CONF_UNSET_MSEC
        && (conf->remote_timeout == 0 || conf->remote_timeout > 60000))
    {
        ngx_shmsess_error_at(cf, conf, NGX_SHMSESS_TIMEOUT_DIRECTIVE,
                             "\"shmsess_remote_timeout\" must be between 1ms and 60s");
        return NGX_CONF_ERROR;
    }

    if (conf->size == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_shmsess_check_same_file(cf, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_shmsess_check_with_library(cf, conf);
}


/* A size with nginx's k and m suffixes, and g (nginx 1.22's ngx_parse_size has no g). */
static ssize_t
ngx_shmsess_parse_size(ngx_str_t *value)
{
    ssize_t    n;
    ngx_str_t  number;

    if (value->len < 2
        || (value->data[value->len - 1] != 'g' && value->data[value->len - 1] != 'G'))
    {
        return ngx_parse_size(value);
    }

    number.data = value->data;
    number.len = value->len - 1;

    n = ngx_atosz(number.data, number.len);
    if (n == NGX_ERROR || n > NGX_MAX_SIZE_T_VALUE / (1024 * 1024 * 1024)) {
        return NGX_ERROR;
    }

    return n * 1024 * 1024 * 1024;
}


/* shmsess_session_cache PATH|anonymous SIZE; */
char *
ngx_shmsess_set_session_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ssize_t     size;
    ngx_str_t  *value;

    if (conf->size) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_CACHE_DIRECTIVE);
    value = cf->args->elts;

    size = ngx_shmsess_parse_size(&value[2]);

    if (size == NGX_ERROR || size < NGX_SHMSESS_MIN_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid size \"%V\" in \"shmsess_session_cache\": give a "
                           "number with the suffix k, m or g, at least 1m and at most "
                           "1024g, e.g. \"64m\" or \"1g\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    conf->size = (size_t) size;

    if (ngx_strcmp(value[1].data, "anonymous") == 0) {
        return NGX_CONF_OK;
    }

    if (value[1].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid segment \"%V\" in \"shmsess_session_cache\": "
                           "give an absolute file name (e.g. /run/nginx/ssl.sess "
                           "or /dev/shm/nginx.sess) or \"anonymous\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    conf->path = value[1];

    return NGX_CONF_OK;
}


/* The URL schemes the library takes (it checks the rest of the URL). */
static const char  *ngx_shmsess_remote_schemes[] = {
    "redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://"
};


static ngx_int_t
ngx_shmsess_known_scheme(ngx_str_t *url)
{
    size_t  i, n;

    for (i = 0; i < sizeof(ngx_shmsess_remote_schemes) / sizeof(ngx_shmsess_remote_schemes[0]);
         i++)
    {
        n = ngx_strlen(ngx_shmsess_remote_schemes[i]);
        if (url->len > n
            && ngx_strncmp(url->data, ngx_shmsess_remote_schemes[i], n) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* shmsess_remote redis[s]://HOST:PORT[/DB] or redis[s]+sentinel://IP:PORT,.../MASTER[/DB];
 * the library checks the rest of the URL. */
char *
ngx_shmsess_set_remote(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t  *value;

    if (conf->remote_url.len) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_REMOTE_DIRECTIVE);
    value = cf->args->elts;

    if (!ngx_shmsess_known_scheme(&value[1])) {
        /* The URL is never echoed: it may carry the fleet's password. */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid URL in \"shmsess_remote\" (not shown: it may hold a "
                           "password): expected redis://HOST:PORT[/DB], e.g. "
                           "redis://127.0.0.1:6379/0, or rediss:// for TLS, or "
                           "redis+sentinel://IP:PORT,IP:PORT/MASTERNAME/DB for Sentinel");
        return NGX_CONF_ERROR;
    }

    conf->remote_url = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_key FILE; relative names are relative to the configuration prefix. */
char *
ngx_shmsess_set_remote_key(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t       *value;
    ngx_file_info_t  fi;

    if (conf->remote_key_file.len) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_KEY_DIRECTIVE);
    value = cf->args->elts;

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_file_info(value[1].data, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"shmsess_remote_key\" cannot read \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (!ngx_is_file(&fi) || (ngx_file_access(&fi) & 077) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"shmsess_remote_key\" \"%V\" must be a regular file of mode "
                           "0600 (chmod 600 \"%V\")", &value[1], &value[1]);
        return NGX_CONF_ERROR;
    }

    conf->remote_key_file = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_ca FILE; the CA (PEM) a rediss:// server's certificate must chain to. */
char *
ngx_shmsess_set_remote_ca(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t  *value;

    if (conf->remote_ca_file.len) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_CA_DIRECTIVE);
    value = cf->args->elts;

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    conf->remote_ca_file = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_key_prefix STRING; (an empty one is refused by ngx_shmsess_check_conf) */
char *
ngx_shmsess_set_remote_key_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t  *value;

    if (conf->remote_key_prefix.data) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_KEY_PREFIX_DIRECTIVE);
    value = cf->args->elts;
    conf->remote_key_prefix = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_fleet LABEL; the fleet label sealed into every Redis value (the library
 * checks it: printable ASCII without spaces, at most 64 bytes). */
char *
ngx_shmsess_set_remote_fleet(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t  *value;

    if (conf->remote_fleet.data) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_FLEET_DIRECTIVE);
    value = cf->args->elts;
    conf->remote_fleet = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_timeout TIME; (the range is checked by ngx_shmsess_check_conf) */
char *
ngx_shmsess_set_remote_timeout(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t   *value;
    ngx_msec_t   ms;

    if (conf->remote_timeout != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_TIMEOUT_DIRECTIVE);
    value = cf->args->elts;

    ms = ngx_parse_time(&value[1], 0);
    if (ms == (ngx_msec_t) NGX_ERROR) {
        return "invalid value";
    }

    conf->remote_timeout = ms;

    return NGX_CONF_OK;
}


/*
 * shmsess_session_id_prefix TEXT; up to 15 bytes of printable ASCII that every session id
 * this host makes starts with (a tag a load balancer can route TLS 1.2 clients on); each
 * worker adds one byte, its number. Ids travel in clear text.
 */
char *
ngx_shmsess_set_id_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *c)
{
    ngx_shmsess_conf_t  *conf = c;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (conf->id_prefix.len) {
        return "is duplicate";
    }

    ngx_shmsess_remember(cf, conf, NGX_SHMSESS_ID_PREFIX_DIRECTIVE);
    value = cf->args->elts;

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] <= 0x20 || value[1].data[i] >= 0x7f) {
            break;
        }
    }

    if (value[1].len == 0 || value[1].len > SHMSESS_MAX_ID_PREFIX - 1 || i < value[1].len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid prefix \"%V\" in \"shmsess_session_id_prefix\": give "
                           "1 to %d printable characters without spaces, e.g. \"web3\"",
                           &value[1], SHMSESS_MAX_ID_PREFIX - 1);
        return NGX_CONF_ERROR;
    }

    conf->id_prefix = value[1];

    return NGX_CONF_OK;
}


/* ---- the cache with the cycle (init_module) --------------------------------------------- */

static void
ngx_shmsess_log(int level, const char *message, void *data)
{
    ngx_uint_t  nginx_level;

    nginx_level = level <= 1 ? NGX_LOG_ERR
                : level == 2 ? NGX_LOG_WARN
                : level == 3 ? NGX_LOG_INFO
                : NGX_LOG_DEBUG;

    /* ngx_cycle, not a cycle captured at registration: a reload frees the old one */
    ngx_log_error(nginx_level, ngx_cycle->log, 0, "shmsesscache: %s", message);
}


/* "dev:inode:size:mtime:ctime" of a file, so that a reload sees a rewritten key or CA file
 * (nanosecond times: a rewrite within the same second counts too); "-" when it cannot be
 * read (the library then refuses it). */
static u_char *
ngx_shmsess_file_id(u_char *p, u_char *last, ngx_str_t *name)
{
    struct stat  st;

    if (name->len == 0) {
        return p;
    }

    if (stat((const char *) name->data, &st) == -1) {
        return ngx_slprintf(p, last, "-");
    }

    return ngx_slprintf(p, last, "%uL:%uL:%O:%T.%09l:%T.%09l", (uint64_t) st.st_dev,
                        (uint64_t) st.st_ino, (off_t) st.st_size, st.st_mtim.tv_sec,
                        st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
}


/* Every setting the cache is made with, as one string: a reload that changes none of them
 * keeps the handle (and so the anonymous segment). The key and CA files count by identity
 * and times, so a rotated key file is read again by a reload. */
static u_char *
ngx_shmsess_settings(ngx_pool_t *pool, ngx_shmsess_conf_t *conf)
{
    size_t   len;
    u_char  *p, *last, *end;

    len = conf->path.len + conf->remote_url.len + conf->remote_key_file.len
          + conf->remote_key_prefix.len + conf->remote_ca_file.len + conf->id_prefix.len
          + conf->remote_fleet.len
          + 2 * NGX_INT64_LEN + 2 * 128 + sizeof("\n\n\n\n\n\n\n\n\n\n\n\n");

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NULL;
    }

    end = p + len - 1;
    last = ngx_slprintf(p, end, "%V\n%uz\n%V\n%V\n%V\n%M\n%V\n%V\n%V\n", &conf->path,
                        conf->size, &conf->remote_url, &conf->remote_key_file,
                        &conf->remote_key_prefix, conf->remote_timeout, &conf->id_prefix,
                        &conf->remote_ca_file, &conf->remote_fleet);
    last = ngx_shmsess_file_id(last, end, &conf->remote_key_file);
    last = ngx_slprintf(last, end, "\n");
    last = ngx_shmsess_file_id(last, end, &conf->remote_ca_file);
    *last = '\0';

    return p;
}


/* The cycle's pool cleanup: its handle goes with it, unless the next cycle took it over. */
static void
ngx_shmsess_free_with_cycle(void *data)
{
    ngx_shmsess_conf_t  *conf = data;

    /* the cycle's SSL contexts hold their own references until they are freed */
    shmsess_cache_free(conf->cache);
    conf->cache = NULL;
}


/* `conf` holds `cache` (made with `settings`) for the life of `cycle`. */
static ngx_int_t
ngx_shmsess_hold(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf, shmsess_cache *cache,
    u_char *settings)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_shmsess_free_with_cycle;
    cln->data = conf;
    conf->cache = cache;
    conf->made_with = settings;

    return NGX_OK;
}


/* The previous cycle's handle, now this cycle's. */
static ngx_int_t
ngx_shmsess_take_over(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf, ngx_shmsess_conf_t *old)
{
    size_t   len;
    u_char  *settings;

    len = ngx_strlen(old->made_with) + 1;

    settings = ngx_pnalloc(cycle->pool, len);
    if (settings != NULL) {
        ngx_memcpy(settings, old->made_with, len);
    }

    if (settings == NULL || ngx_shmsess_hold(cycle, conf, old->cache, settings) != NGX_OK) {
        return NGX_ERROR;
    }

    old->cache = NULL;

    return NGX_OK;
}


/* Let nginx configure a scratch SSL_CTX with its shared cache to learn its callbacks. */
static void
ngx_shmsess_learn_nginx_callbacks(ngx_cycle_t *cycle, ngx_shmsess_nginx_cbs_t *cbs)
{
    ngx_ssl_t        probe;
    ngx_str_t        sess_ctx = ngx_string("shmsess-probe");
    ngx_array_t      no_certificates;
    ngx_shm_zone_t   fake_zone;

    ngx_memzero(&probe, sizeof(ngx_ssl_t));
    ngx_memzero(&fake_zone, sizeof(ngx_shm_zone_t));
    ngx_memzero(&no_certificates, sizeof(ngx_array_t));
    no_certificates.size = sizeof(ngx_str_t);

    probe.log = cycle->log;
    probe.ctx = SSL_CTX_new(TLS_server_method());
    if (probe.ctx == NULL) {
        return;
    }

    if (ngx_ssl_session_cache(&probe, &sess_ctx, &no_certificates,
                              NGX_SSL_NO_BUILTIN_SCACHE, &fake_zone, 300)
        == NGX_OK)
    {
        cbs->new_cb = SSL_CTX_sess_get_new_cb(probe.ctx);
        cbs->get_cb = SSL_CTX_sess_get_get_cb(probe.ctx);
        cbs->remove_cb = SSL_CTX_sess_get_remove_cb(probe.ctx);
        cbs->known = 1;
    }

    /* the fake zone is only an ex_data pointer, which nginx never frees */
    SSL_CTX_set_ex_data(probe.ctx, ngx_ssl_session_cache_index, NULL);
    SSL_CTX_free(probe.ctx);
}


static shmsess_result
ngx_shmsess_create(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf, shmsess_cache **out)
{
    shmsess_options  opts;

    if (ngx_shmsess_options(cycle->pool, conf, &opts) != NGX_OK) {
        return SHMSESS_ERR_INVALID_ARGUMENT;
    }

    return shmsess_cache_create(&opts, out);
}


/* The cache of `conf` for the new cycle (see ngx_shmsess_start). NGX_DECLINED: the previous
 * cycle's was kept after a failure; NGX_ERROR: none. */
static ngx_int_t
ngx_shmsess_open(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf, ngx_shmsess_conf_t *old)
{
    u_char          *settings;
    ngx_uint_t       level, had;
    shmsess_cache   *cache;
    shmsess_result   rc;

    shmsess_set_log_callback(ngx_shmsess_log, NULL, 3);
    ngx_shmsess_learn_nginx_callbacks(cycle, &conf->nginx_cbs);

    settings = ngx_shmsess_settings(cycle->pool, conf);
    if (settings == NULL) {
        return NGX_ERROR;
    }

    had = (old && old->cache);

    if (had && ngx_strcmp(settings, old->made_with) == 0) {
        return ngx_shmsess_take_over(cycle, conf, old);
    }

    cache = NULL;
    rc = ngx_shmsess_create(cycle, conf, &cache);

    if (rc != SHMSESS_OK) {
        level = had ? NGX_LOG_ALERT : NGX_LOG_EMERG;
        ngx_log_error(level, cycle->log, 0,
                      "shmsess: cannot %s session cache%s%V%s of the %s block: %s%s",
                      conf->path.len ? "open the" : "create the anonymous",
                      conf->path.len ? " \"" : "", &conf->path, conf->path.len ? "\"" : "",
                      conf->block, shmsess_last_error(),
                      had ? "; the previous cache is kept" : "");

        if (!had || ngx_shmsess_take_over(cycle, conf, old) != NGX_OK) {
            return NGX_ERROR;
        }

        return NGX_DECLINED;
    }

    if (ngx_shmsess_hold(cycle, conf, cache, settings) != NGX_OK) {
        shmsess_cache_free(cache);
        return NGX_ERROR;
    }

    if (had && old->path.len == 0) {
        /* the new workers are forked after this and map the new segment; the old workers
         * finish on the old one, which goes with them */
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: the session cache settings (or the key or CA file) of the %s "
                      "block changed: the sessions of the previous anonymous segment are "
                      "dropped", conf->block);
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "shmsess: session cache of %uz bytes in %s%V for the %s block", conf->size,
                  conf->path.len ? "" : "anonymous shared memory", &conf->path, conf->block);

    return NGX_OK;
}


ngx_cycle_t *
ngx_shmsess_previous_cycle(ngx_cycle_t *cycle, ngx_module_t *module)
{
    ngx_uint_t    i;
    ngx_cycle_t  *old = cycle->old_cycle;

    if (old == NULL || ngx_is_init_cycle(old) || old->modules == NULL) {
        return NULL;
    }

    /* a module loaded only by the new configuration has no index in the old one */
    for (i = 0; old->modules[i]; i++) {
        if (old->modules[i] == module) {
            return old;
        }
    }

    return NULL;
}


/* ` "name"` for a server with a name, nothing for one without (stream): four arguments. */
#define NGX_SHMSESS_NAMED(name)                                                  \
    (name)->len ? " \"" : "", (name), (name)->len ? "\"" : ""


/* A session callback set by another module (not nginx's own shared cache). */
static ngx_uint_t
ngx_shmsess_foreign_callbacks(ngx_shmsess_nginx_cbs_t *cbs, SSL_CTX *ctx)
{
    int           (*new_cb)(SSL *, SSL_SESSION *);
    SSL_SESSION  *(*get_cb)(SSL *, const unsigned char *, int, int *);
    void          (*remove_cb)(SSL_CTX *, SSL_SESSION *);

    new_cb = SSL_CTX_sess_get_new_cb(ctx);
    get_cb = SSL_CTX_sess_get_get_cb(ctx);
    remove_cb = SSL_CTX_sess_get_remove_cb(ctx);

    if (!cbs->known) {
        /* cannot tell: only a context without callbacks is surely free */
        return new_cb || get_cb || remove_cb;
    }

    return (new_cb && new_cb != cbs->new_cb)
           || (get_cb && get_cb != cbs->get_cb)
           || (remove_cb && remove_cb != cbs->remove_cb);
}


/* Put one server's context on conf->cache, unless it has no TLS, its session cache off or
 * callbacks of another module. */
static ngx_shmsess_install_e
ngx_shmsess_install_server(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf,
    ngx_shmsess_server_t *srv)
{
    SSL_CTX     *ctx = srv->ctx;
    ngx_str_t   *name = &srv->name;
    u_char      *file = srv->file;
    ngx_uint_t   line = srv->line;

    if (ctx == NULL) {
        return NGX_SHMSESS_NO_TLS;
    }

    if (srv->builtin_session_cache == NGX_SSL_NO_SCACHE) {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "shmsess: %s server%s%V%s in %s:%ui has \"ssl_session_cache off\": "
                      "left alone", conf->block, NGX_SHMSESS_NAMED(name), file, line);
        return NGX_SHMSESS_CACHE_OFF;
    }

    if (ngx_shmsess_foreign_callbacks(&conf->nginx_cbs, ctx)) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: %s server%s%V%s in %s:%ui already has session callbacks "
                      "of another module: left alone", conf->block, NGX_SHMSESS_NAMED(name),
                      file, line);
        return NGX_SHMSESS_FOREIGN;
    }

    if (shmsess_install(conf->cache, ctx) != SHMSESS_OK) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "shmsess: cannot install the session cache on %s server%s%V%s "
                      "in %s:%ui: %s", conf->block, NGX_SHMSESS_NAMED(name), file, line,
                      shmsess_last_error());
        return NGX_SHMSESS_FAILED;
    }

    return NGX_SHMSESS_INSTALLED;
}


/* Every server of the list; NGX_ERROR when one could not be put on the cache. */
static ngx_int_t
ngx_shmsess_install_servers(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf,
    ngx_shmsess_servers_pt list)
{
    ngx_uint_t             s, installed;
    ngx_shmsess_server_t  *srv;

    conf->servers = list(cycle);
    if (conf->servers == NULL) {
        return NGX_ERROR;
    }

    srv = conf->servers->elts;
    installed = 0;

    for (s = 0; s < conf->servers->nelts; s++) {
        srv[s].result = ngx_shmsess_install_server(cycle, conf, &srv[s]);

        if (srv[s].result == NGX_SHMSESS_FAILED) {
            return NGX_ERROR;
        }

        installed += (srv[s].result == NGX_SHMSESS_INSTALLED);
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "shmsess: session cache installed on %ui TLS server(s) of the %s block, "
                  "%ui other server(s) left alone", installed, conf->block,
                  conf->servers->nelts - installed);

    return NGX_OK;
}


ngx_int_t
ngx_shmsess_start(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf, ngx_shmsess_conf_t *old,
    ngx_shmsess_servers_pt servers)
{
    ngx_int_t  rc;

    /*
     * `nginx -t` runs init_module too: no segment there. The `nginx -s` signaller returns
     * from ngx_init_cycle before init_module in 1.22; checked anyway, as it is in the same
     * spirit and costs nothing.
     */
    if (ngx_test_config || ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    /* no cache configured: the previous cycle's, if any, is freed with that cycle */
    if (conf == NULL || conf->size == 0) {
        return NGX_OK;
    }

    rc = ngx_shmsess_open(cycle, conf, old);

    if (rc == NGX_OK || rc == NGX_DECLINED) {
        rc = ngx_shmsess_install_servers(cycle, conf, servers);
    }

    /* a failing init_module makes the master exit: only refuse a first start */
    if (rc == NGX_ERROR && !ngx_is_init_cycle(cycle->old_cycle)) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "shmsess: the reloaded configuration runs without the shared "
                      "session cache on some servers of the %s block, see above",
                      conf->block);
        return NGX_OK;
    }

    return rc == NGX_ERROR ? NGX_ERROR : NGX_OK;
}


/* A list of `n` servers for a module to fill (see ngx_shmsess_servers_pt). */
ngx_array_t *
ngx_shmsess_server_list(ngx_cycle_t *cycle, ngx_uint_t n)
{
    return ngx_array_create(cycle->pool, n ? n : 1, sizeof(ngx_shmsess_server_t));
}


void
ngx_shmsess_init_worker(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf)
{
    u_char  prefix[SHMSESS_MAX_ID_PREFIX];

    if (ngx_process != NGX_PROCESS_WORKER || conf == NULL || conf->cache == NULL
        || conf->id_prefix.len == 0)
    {
        return;
    }

    ngx_memcpy(prefix, conf->id_prefix.data, conf->id_prefix.len);
    prefix[conf->id_prefix.len] = (u_char) ngx_worker;

    if (shmsess_set_session_id_prefix(conf->cache, prefix, conf->id_prefix.len + 1)
        != SHMSESS_OK)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: worker %ui keeps the host's session id prefix: %s",
                      ngx_worker, shmsess_last_error());
    }
}


/* ---- statistics in Prometheus text format ----------------------------------------------- */

/* `"value"` with Prometheus's escapes (backslash, double quote, newline) into [p, last). */
static u_char *
ngx_shmsess_label_value(u_char *p, u_char *last, ngx_str_t *value)
{
    ngx_uint_t  i;

    /* two bytes of room for each byte, escaped or not (the caller sized it so) */
    for (i = 0; i < value->len && p + 2 <= last; i++) {
        switch (value->data[i]) {
        case '\\':
        case '"':
            *p++ = '\\';
            *p++ = value->data[i];
            break;
        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;
        default:
            /* Prometheus labels are UTF-8 text and the library refuses anything else: a file
             * name's other bytes (and control bytes) are shown as '?', never as a 500. */
            *p++ = (value->data[i] >= 0x20 && value->data[i] < 0x7f) ? value->data[i] : '?';
        }
    }

    return p;
}


ngx_buf_t *
ngx_shmsess_status_text(ngx_pool_t *pool, ngx_log_t *log, ngx_shmsess_conf_t *conf)
{
    size_t          len, cap;
    u_char         *labels, *p, *last;
    ngx_buf_t      *b;
    ngx_str_t       anonymous = ngx_string("anonymous");
    shmsess_stats   st;

    ngx_memzero(&st, sizeof(shmsess_stats));

    if (shmsess_cache_stats(conf->cache, &st) != SHMSESS_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "shmsess: cannot read the statistics: %s",
                      shmsess_last_error());
        return NULL;
    }

    /* block="stream",segment="/run/nginx/ssl.sess": each escape doubles a byte at most */
    cap = sizeof("block=\"\",segment=\"\"") + ngx_strlen(conf->block)
          + 2 * ngx_max(conf->path.len, anonymous.len);
    labels = ngx_pnalloc(pool, cap);
    if (labels == NULL) {
        return NULL;
    }

    last = labels + cap - 1;
    p = ngx_slprintf(labels, last, "block=\"%s\",segment=\"", conf->block);
    p = ngx_shmsess_label_value(p, last, conf->path.len ? &conf->path : &anonymous);
    p = ngx_slprintf(p, last, "\"");
    *p = '\0';

    len = 0;
    if (shmsess_stats_prometheus(&st, (const char *) labels, NULL, 0, &len)
        != SHMSESS_ERR_BUFFER_TOO_SMALL)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0, "shmsess: cannot format the statistics: %s",
                      shmsess_last_error());
        return NULL;
    }

    b = ngx_create_temp_buf(pool, len + 1);
    if (b == NULL) {
        return NULL;
    }

    if (shmsess_stats_prometheus(&st, (const char *) labels, (char *) b->pos, len + 1, &len)
        != SHMSESS_OK)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0, "shmsess: cannot format the statistics: %s",
                      shmsess_last_error());
        return NULL;
    }

    b->last = b->pos + len;

    return b;
}


ngx_shmsess_conf_t *
ngx_shmsess_block_conf(ngx_cycle_t *cycle, ngx_str_t *block)
{
    u_char         core[32], ours[48];
    void        ***ctx;
    ngx_uint_t     i;
    ngx_module_t  *m, *core_module, *our_module;

    if (block->len > 8) {
        return NULL;
    }

    (void) ngx_snprintf(core, sizeof(core), "ngx_%V_module%Z", block);
    (void) ngx_snprintf(ours, sizeof(ours), "ngx_%V_shmsess_module%Z", block);
    core_module = NULL;
    our_module = NULL;

    for (i = 0; cycle->modules[i]; i++) {
        m = cycle->modules[i];

        if (m->name == NULL) {
            continue;
        }

        if (ngx_strcmp(m->name, core) == 0) {
            core_module = m;

        } else if (ngx_strcmp(m->name, ours) == 0) {
            our_module = m;
        }
    }

    if (core_module == NULL || our_module == NULL
        || cycle->conf_ctx[core_module->index] == NULL)
    {
        return NULL;
    }

    /* the http, stream and mail conf contexts all start with main_conf */
    ctx = (void ***) cycle->conf_ctx[core_module->index];

    return (*ctx)[our_module->ctx_index];
}
