/*
 * ngx_http_shmsess_module: puts every TLS server of the http block on one libshmsesscache
 * segment shared by all workers (and, with a named segment, by the next master too).
 *
 *     load_module modules/ngx_http_shmsess_module.so;
 *     http {
 *         shmsess_session_cache /run/nginx/ssl.sess 64m;    # or: anonymous 64m
 *         ssl_session_tickets off;
 *         ...
 *         location = /sessions { shmsess_status; }
 *     }
 *
 * Life cycle. Directives are only parsed and checked while the configuration is read (that
 * also happens under `nginx -t` and in the `nginx -s` signaller, which must create nothing).
 * The segment is created or attached, and installed on each server's SSL_CTX, in init_module:
 * in the master, after the configuration has been committed and before the workers are
 * forked. The handle lives in module-lifetime state, so a reload hands the new cycle's
 * contexts the same segment when no setting changed; a reload that changes one (or the key or
 * CA file's contents) makes a new handle, which for an anonymous segment is a new, empty
 * segment (the new workers are forked after init_module, so they all map it).
 *
 * Everything the library would refuse at start is refused while the configuration is read
 * (shmsess_options_check), so `nginx -t` and `nginx -s reload` catch it.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <shmsesscache.h>


/* Smallest segment accepted at configuration time: below it the library refuses anyway
 * (it wants two of the largest entries per shard), but only when nginx starts. */
#define NGX_HTTP_SHMSESS_MIN_SIZE  (1024 * 1024)


typedef struct {
    ngx_str_t                  path;             /* empty: anonymous segment */
    size_t                     size;             /* 0: no shmsess_session_cache */
    ngx_str_t                  remote_url;
    ngx_str_t                  remote_key_file;
    ngx_str_t                  remote_key_prefix; /* data != NULL: given */
    ngx_str_t                  remote_ca_file;
    ngx_msec_t                 remote_timeout;
    ngx_str_t                  id_prefix;        /* host tag; each worker appends its number */
    ngx_flag_t                 status_used;
} ngx_http_shmsess_main_conf_t;


/* The session callbacks nginx's own shared cache sets (static functions of nginx, learned
 * once by letting nginx configure a scratch SSL_CTX): any other callback belongs to another
 * module (e.g. Lua's ssl_session_fetch_by_lua) and is left alone. */
typedef struct {
    ngx_uint_t                 known;
    int                      (*new_cb)(SSL *, SSL_SESSION *);
    SSL_SESSION             *(*get_cb)(SSL *, const unsigned char *, int, int *);
    void                     (*remove_cb)(SSL_CTX *, SSL_SESSION *);
} ngx_http_shmsess_nginx_cbs_t;


static ngx_int_t ngx_http_shmsess_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_shmsess_init_process(ngx_cycle_t *cycle);
static void *ngx_http_shmsess_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_shmsess_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_shmsess_session_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shmsess_remote(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shmsess_remote_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shmsess_remote_ca(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shmsess_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_shmsess_options(ngx_pool_t *pool,
    ngx_http_shmsess_main_conf_t *smcf, shmsess_options *opts);
static char *ngx_http_shmsess_id_prefix(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_shmsess_commands[] = {

    { ngx_string("shmsess_session_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_shmsess_session_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shmsess_remote"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_shmsess_remote,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shmsess_remote_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_shmsess_remote_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shmsess_remote_ca"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_shmsess_remote_ca,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shmsess_remote_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_shmsess_main_conf_t, remote_key_prefix),
      NULL },

    { ngx_string("shmsess_remote_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_shmsess_main_conf_t, remote_timeout),
      NULL },

    { ngx_string("shmsess_session_id_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_shmsess_id_prefix,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shmsess_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_shmsess_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_shmsess_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_shmsess_create_main_conf,     /* create main configuration */
    ngx_http_shmsess_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_shmsess_module = {
    NGX_MODULE_V1,
    &ngx_http_shmsess_module_ctx,          /* module context */
    ngx_http_shmsess_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_shmsess_init_module,          /* init module */
    ngx_http_shmsess_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/*
 * Module-lifetime state (the module is linked -z nodelete, see config): the cache handle the
 * current cycle's contexts use and the settings it was made with, compared on each reload.
 * Only the master writes it, before forking; workers inherit it read-only.
 */
static shmsess_cache                 *ngx_http_shmsess_cache;
static u_char                        *ngx_http_shmsess_made_with;
static ngx_uint_t                     ngx_http_shmsess_made_anonymous;
static ngx_http_shmsess_nginx_cbs_t   ngx_http_shmsess_nginx_cbs;


/* ---- configuration ---------------------------------------------------------------------- */

static void *
ngx_http_shmsess_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_shmsess_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_shmsess_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     smcf->path = { 0, NULL };
     *     smcf->size = 0;
     *     smcf->remote_url = { 0, NULL };
     *     smcf->remote_key_file = { 0, NULL };
     *     smcf->remote_key_prefix = { 0, NULL };
     *     smcf->remote_ca_file = { 0, NULL };
     *     smcf->id_prefix = { 0, NULL };
     *     smcf->status_used = 0;
     */

    smcf->remote_timeout = NGX_CONF_UNSET_MSEC;

    return smcf;
}


/* A Redis-tier directive given without what it configures (it would be silently ignored). */
static char *
ngx_http_shmsess_check_remote_directives(ngx_conf_t *cf, ngx_http_shmsess_main_conf_t *smcf)
{
    const char  *orphan;

    if (smcf->remote_url.len) {
        return NGX_CONF_OK;
    }

    orphan = smcf->remote_key_file.len ? "shmsess_remote_key"
           : smcf->remote_ca_file.len ? "shmsess_remote_ca"
           : smcf->remote_key_prefix.data ? "shmsess_remote_key_prefix"
           : smcf->remote_timeout != NGX_CONF_UNSET_MSEC ? "shmsess_remote_timeout"
           : NULL;

    if (orphan) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" has no effect without \"shmsess_remote\" (and "
                           "\"shmsess_session_cache\") in the http block: add them or "
                           "remove it", orphan);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* "... is a symbolic link" advice for a key file the library refused (it never follows one). */
static void
ngx_http_shmsess_symlink_hint(ngx_conf_t *cf, ngx_str_t *file)
{
    ngx_file_info_t  fi;

    if (file->len == 0 || ngx_link_info(file->data, &fi) == NGX_FILE_ERROR
        || !ngx_is_link(&fi))
    {
        return;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"shmsess_remote_key\" \"%V\" is a symbolic link, which the library "
                       "refuses to follow (Kubernetes secret volumes are made of them): give "
                       "the real file (readlink -f \"%V\"; in a Kubernetes secret volume "
                       "DIR/..data/NAME, which stays valid across updates) or copy the key "
                       "into a regular file of mode 0600", file, file);
}


/* Everything shmsess_cache_create would refuse at start, refused now (nginx -t, reload). */
static char *
ngx_http_shmsess_check_with_library(ngx_conf_t *cf, ngx_http_shmsess_main_conf_t *smcf)
{
    shmsess_options  opts;

    if (ngx_http_shmsess_options(cf->temp_pool, smcf, &opts) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (shmsess_options_check(&opts) == SHMSESS_OK) {
        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "shmsess: invalid settings: %s",
                       shmsess_last_error());
    ngx_http_shmsess_symlink_hint(cf, &smcf->remote_key_file);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_shmsess_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    if (smcf->size == 0
        && (smcf->remote_url.len || smcf->remote_key_file.len || smcf->status_used
            || smcf->id_prefix.len || smcf->remote_ca_file.len
            || smcf->remote_key_prefix.data
            || smcf->remote_timeout != NGX_CONF_UNSET_MSEC))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shmsess_remote, shmsess_remote_key, shmsess_remote_ca, "
                           "shmsess_remote_key_prefix, shmsess_remote_timeout, "
                           "shmsess_session_id_prefix and shmsess_status need "
                           "\"shmsess_session_cache\" in the http block");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_shmsess_check_remote_directives(cf, smcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (smcf->remote_url.len && smcf->remote_key_file.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"shmsess_remote\" needs \"shmsess_remote_key\": a file with "
                           "one 64-hex-digit key per line, mode 0600 "
                           "(openssl rand -hex 32)");
        return NGX_CONF_ERROR;
    }

    if (smcf->remote_key_prefix.data && smcf->remote_key_prefix.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty \"shmsess_remote_key_prefix\": give a prefix for this "
                           "fleet's Redis keys (e.g. \"shmsess:web:\") or remove the "
                           "directive to use the default");
        return NGX_CONF_ERROR;
    }

    if (smcf->remote_timeout != NGX_CONF_UNSET_MSEC
        && (smcf->remote_timeout == 0 || smcf->remote_timeout > 60000))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"shmsess_remote_timeout\" must be between 1ms and 60s");
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(smcf->remote_timeout, 0);

    if (smcf->size == 0) {
        return NGX_CONF_OK;
    }

    return ngx_http_shmsess_check_with_library(cf, smcf);
}


/* A size with nginx's k and m suffixes, and g (nginx 1.22's ngx_parse_size has no g). */
static ssize_t
ngx_http_shmsess_parse_size(ngx_str_t *value)
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
static char *
ngx_http_shmsess_session_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (smcf->size) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_http_shmsess_parse_size(&value[2]);

    if (size == NGX_ERROR || size < NGX_HTTP_SHMSESS_MIN_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid size \"%V\" in \"shmsess_session_cache\": give a "
                           "number with the suffix k, m or g, at least 1m and at most "
                           "1024g, e.g. \"64m\" or \"1g\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    smcf->size = (size_t) size;

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

    smcf->path = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote redis[s]://HOST:PORT[/DB]; the library checks the rest of the URL. */
static char *
ngx_http_shmsess_remote(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    ngx_str_t  *value;

    if (smcf->remote_url.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (!(value[1].len > sizeof("redis://") - 1
          && ngx_strncmp(value[1].data, "redis://", sizeof("redis://") - 1) == 0)
        && !(value[1].len > sizeof("rediss://") - 1
             && ngx_strncmp(value[1].data, "rediss://", sizeof("rediss://") - 1) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid URL \"%V\" in \"shmsess_remote\": expected "
                           "redis://HOST:PORT[/DB], e.g. redis://127.0.0.1:6379/0, or "
                           "rediss:// for TLS", &value[1]);
        return NGX_CONF_ERROR;
    }

    smcf->remote_url = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_key FILE; relative names are relative to the configuration prefix. */
static char *
ngx_http_shmsess_remote_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    ngx_str_t       *value;
    ngx_file_info_t  fi;

    if (smcf->remote_key_file.len) {
        return "is duplicate";
    }

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

    smcf->remote_key_file = value[1];

    return NGX_CONF_OK;
}


/* shmsess_remote_ca FILE; the CA (PEM) a rediss:// server's certificate must chain to. */
static char *
ngx_http_shmsess_remote_ca(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    ngx_str_t  *value;

    if (smcf->remote_ca_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    smcf->remote_ca_file = value[1];

    return NGX_CONF_OK;
}


/*
 * shmsess_session_id_prefix TEXT; up to 15 bytes of printable ASCII that every session id
 * this host makes starts with (a tag a load balancer can route TLS 1.2 clients on); each
 * worker adds one byte, its number. Ids travel in clear text.
 */
static char *
ngx_http_shmsess_id_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_main_conf_t  *smcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (smcf->id_prefix.len) {
        return "is duplicate";
    }

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

    smcf->id_prefix = value[1];

    return NGX_CONF_OK;
}


/* ---- creating the cache and putting the servers on it (init_module) ---------------------- */

static void
ngx_http_shmsess_log(int level, const char *message, void *data)
{
    ngx_uint_t  nginx_level;

    nginx_level = level <= 1 ? NGX_LOG_ERR
                : level == 2 ? NGX_LOG_WARN
                : level == 3 ? NGX_LOG_INFO
                : NGX_LOG_DEBUG;

    /* ngx_cycle, not a cycle captured at registration: a reload frees the old one */
    ngx_log_error(nginx_level, ngx_cycle->log, 0, "shmsesscache: %s", message);
}


/* NUL-terminated copy of a configuration string for the library (NULL when empty). */
static ngx_int_t
ngx_http_shmsess_cstr(ngx_pool_t *pool, ngx_str_t *s, const char **out)
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


/* "dev:inode:size:mtime:ctime" of a file, so that a reload sees a rewritten key or CA file
 * (nanosecond times: a rewrite within the same second counts too); "-" when it cannot be
 * read (the library then refuses it). */
static u_char *
ngx_http_shmsess_file_id(u_char *p, u_char *last, ngx_str_t *name)
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
ngx_http_shmsess_settings(ngx_pool_t *pool, ngx_http_shmsess_main_conf_t *smcf)
{
    size_t   len;
    u_char  *p, *last, *end;

    len = smcf->path.len + smcf->remote_url.len + smcf->remote_key_file.len
          + smcf->remote_key_prefix.len + smcf->remote_ca_file.len + smcf->id_prefix.len
          + 2 * NGX_INT64_LEN + 2 * 128 + sizeof("\n\n\n\n\n\n\n\n\n\n\n");

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NULL;
    }

    end = p + len - 1;
    last = ngx_slprintf(p, end, "%V\n%uz\n%V\n%V\n%V\n%M\n%V\n%V\n", &smcf->path, smcf->size,
                        &smcf->remote_url, &smcf->remote_key_file,
                        &smcf->remote_key_prefix, smcf->remote_timeout, &smcf->id_prefix,
                        &smcf->remote_ca_file);
    last = ngx_http_shmsess_file_id(last, end, &smcf->remote_key_file);
    last = ngx_slprintf(last, end, "\n");
    last = ngx_http_shmsess_file_id(last, end, &smcf->remote_ca_file);
    *last = '\0';

    return p;
}


/* The library's options for this configuration; strings are copied into `pool`. */
static ngx_int_t
ngx_http_shmsess_options(ngx_pool_t *pool, ngx_http_shmsess_main_conf_t *smcf,
    shmsess_options *opts)
{
    shmsess_options_init(opts);

    /* a string that could not be copied must not turn a named segment into an anonymous one */
    if (ngx_http_shmsess_cstr(pool, &smcf->path, &opts->path) != NGX_OK
        || ngx_http_shmsess_cstr(pool, &smcf->remote_url, &opts->remote_url) != NGX_OK
        || ngx_http_shmsess_cstr(pool, &smcf->remote_key_file,
                                 &opts->remote_key_file) != NGX_OK
        || ngx_http_shmsess_cstr(pool, &smcf->remote_key_prefix,
                                 &opts->remote_key_prefix) != NGX_OK
        || ngx_http_shmsess_cstr(pool, &smcf->remote_ca_file,
                                 &opts->remote_ca_file) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* nginx set each server's session id context (ngx_ssl_session_id_context) */
    opts->flags = SHMSESS_KEEP_SESSION_ID_CONTEXT;
    opts->size_bytes = smcf->size;
    opts->remote_timeout_ms =
        smcf->remote_timeout == NGX_CONF_UNSET_MSEC ? 0 : (uint32_t) smcf->remote_timeout;

    /* a prefix at creation installs the library's id generator; workers extend it */
    opts->session_id_prefix = smcf->id_prefix.data;
    opts->session_id_prefix_len = (uint32_t) smcf->id_prefix.len;

    /* session lifetime: each session carries its server's ssl_session_timeout */
    opts->session_timeout = 0;

    return NGX_OK;
}


static shmsess_result
ngx_http_shmsess_create(ngx_cycle_t *cycle, ngx_http_shmsess_main_conf_t *smcf,
    shmsess_cache **out)
{
    shmsess_options  opts;

    if (ngx_http_shmsess_options(cycle->pool, smcf, &opts) != NGX_OK) {
        return SHMSESS_ERR_INVALID_ARGUMENT;
    }

    return shmsess_cache_create(&opts, out);
}


/* Remember the settings in memory that outlives the cycle. */
static ngx_int_t
ngx_http_shmsess_keep_settings(u_char *settings)
{
    size_t   len;
    u_char  *copy;

    len = ngx_strlen(settings) + 1;

    copy = ngx_alloc(len, ngx_cycle->log);
    if (copy == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(copy, settings, len);

    ngx_free(ngx_http_shmsess_made_with);
    ngx_http_shmsess_made_with = copy;

    return NGX_OK;
}


/*
 * Make ngx_http_shmsess_cache the cache this configuration asks for. NGX_DECLINED: keep
 * using the previous one (a failure on reload).
 */
static ngx_int_t
ngx_http_shmsess_open(ngx_cycle_t *cycle, ngx_http_shmsess_main_conf_t *smcf)
{
    u_char          *settings;
    ngx_uint_t       level;
    shmsess_cache   *cache;
    shmsess_result   rc;

    settings = ngx_http_shmsess_settings(cycle->pool, smcf);
    if (settings == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_shmsess_cache
        && ngx_strcmp(settings, ngx_http_shmsess_made_with) == 0)
    {
        return NGX_OK;
    }

    cache = NULL;
    rc = ngx_http_shmsess_create(cycle, smcf, &cache);

    if (rc != SHMSESS_OK) {
        level = ngx_http_shmsess_cache ? NGX_LOG_ALERT : NGX_LOG_EMERG;
        ngx_log_error(level, cycle->log, 0, "shmsess: cannot %s session cache%s%V%s: %s%s",
                      smcf->path.len ? "open the" : "create the anonymous",
                      smcf->path.len ? " \"" : "", &smcf->path, smcf->path.len ? "\"" : "",
                      shmsess_last_error(),
                      ngx_http_shmsess_cache ? "; the previous cache is kept" : "");
        return ngx_http_shmsess_cache ? NGX_DECLINED : NGX_ERROR;
    }

    if (ngx_http_shmsess_keep_settings(settings) != NGX_OK) {
        shmsess_cache_free(cache);
        return NGX_ERROR;
    }

    if (ngx_http_shmsess_cache && ngx_http_shmsess_made_anonymous) {
        /* the new workers are forked after this and map the new segment; the old workers
         * finish on the old one, which goes with them */
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: the session cache settings (or the key or CA file) changed: "
                      "the sessions of the previous anonymous segment are dropped");
    }

    /* the old cycle's contexts hold their own references until they are freed */
    shmsess_cache_free(ngx_http_shmsess_cache);

    ngx_http_shmsess_cache = cache;
    ngx_http_shmsess_made_anonymous = (smcf->path.len == 0);

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "shmsess: session cache of %uz bytes in %s%V", smcf->size,
                  smcf->path.len ? "" : "anonymous shared memory", &smcf->path);

    return NGX_OK;
}


/* Let nginx configure a scratch SSL_CTX with its shared cache to learn its callbacks. */
static void
ngx_http_shmsess_learn_nginx_callbacks(ngx_cycle_t *cycle)
{
    ngx_ssl_t        probe;
    ngx_str_t        sess_ctx = ngx_string("shmsess-probe");
    ngx_array_t      no_certificates;
    ngx_shm_zone_t   fake_zone;

    if (ngx_http_shmsess_nginx_cbs.known) {
        return;
    }

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
        ngx_http_shmsess_nginx_cbs.new_cb = SSL_CTX_sess_get_new_cb(probe.ctx);
        ngx_http_shmsess_nginx_cbs.get_cb = SSL_CTX_sess_get_get_cb(probe.ctx);
        ngx_http_shmsess_nginx_cbs.remove_cb = SSL_CTX_sess_get_remove_cb(probe.ctx);
        ngx_http_shmsess_nginx_cbs.known = 1;
    }

    /* the fake zone is only an ex_data pointer, which nginx never frees */
    SSL_CTX_set_ex_data(probe.ctx, ngx_ssl_session_cache_index, NULL);
    SSL_CTX_free(probe.ctx);
}


/* A session callback set by another module (not nginx's own shared cache). */
static ngx_uint_t
ngx_http_shmsess_foreign_callbacks(SSL_CTX *ctx)
{
    int           (*new_cb)(SSL *, SSL_SESSION *);
    SSL_SESSION  *(*get_cb)(SSL *, const unsigned char *, int, int *);
    void          (*remove_cb)(SSL_CTX *, SSL_SESSION *);

    new_cb = SSL_CTX_sess_get_new_cb(ctx);
    get_cb = SSL_CTX_sess_get_get_cb(ctx);
    remove_cb = SSL_CTX_sess_get_remove_cb(ctx);

    if (!ngx_http_shmsess_nginx_cbs.known) {
        /* cannot tell: only a context without callbacks is surely free */
        return new_cb || get_cb || remove_cb;
    }

    return (new_cb && new_cb != ngx_http_shmsess_nginx_cbs.new_cb)
           || (get_cb && get_cb != ngx_http_shmsess_nginx_cbs.get_cb)
           || (remove_cb && remove_cb != ngx_http_shmsess_nginx_cbs.remove_cb);
}


/* Install the cache on one server's context. NGX_DECLINED: the server is left alone. */
static ngx_int_t
ngx_http_shmsess_install_server(ngx_cycle_t *cycle, ngx_http_core_srv_conf_t *cscf)
{
    ngx_http_ssl_srv_conf_t  *sscf;

    sscf = cscf->ctx->srv_conf[ngx_http_ssl_module.ctx_index];

    if (sscf == NULL || sscf->ssl.ctx == NULL) {
        return NGX_DECLINED;  /* no TLS in this server */
    }

    if (sscf->builtin_session_cache == NGX_SSL_NO_SCACHE) {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "shmsess: server \"%V\" in %s:%ui has \"ssl_session_cache off\": "
                      "left alone", &cscf->server_name, cscf->file_name, cscf->line);
        return NGX_DECLINED;
    }

    if (ngx_http_shmsess_foreign_callbacks(sscf->ssl.ctx)) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: server \"%V\" in %s:%ui already has session callbacks "
                      "of another module: left alone", &cscf->server_name,
                      cscf->file_name, cscf->line);
        return NGX_DECLINED;
    }

    if (shmsess_install(ngx_http_shmsess_cache, sscf->ssl.ctx) != SHMSESS_OK) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "shmsess: cannot install the session cache on server \"%V\" "
                      "in %s:%ui: %s", &cscf->server_name, cscf->file_name, cscf->line,
                      shmsess_last_error());
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* Every server of the http block, default servers of each listen socket included: OpenSSL
 * takes the session callbacks from the context a connection was accepted on. */
static ngx_int_t
ngx_http_shmsess_install_servers(ngx_cycle_t *cycle)
{
    ngx_int_t                   rc;
    ngx_uint_t                  s, installed, skipped;
    ngx_http_core_srv_conf_t  **cscfp;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    cscfp = cmcf->servers.elts;
    installed = 0;
    skipped = 0;

    for (s = 0; s < cmcf->servers.nelts; s++) {
        rc = ngx_http_shmsess_install_server(cycle, cscfp[s]);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        installed += (rc == NGX_OK);
        skipped += (rc == NGX_DECLINED);
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "shmsess: session cache installed on %ui TLS server(s), %ui other "
                  "server(s) left alone", installed, skipped);

    return NGX_OK;
}


static ngx_int_t
ngx_http_shmsess_init_module(ngx_cycle_t *cycle)
{
    ngx_int_t                      rc;
    ngx_http_shmsess_main_conf_t  *smcf;

    /*
     * `nginx -t` runs init_module too: no segment there. The `nginx -s` signaller returns
     * from ngx_init_cycle before init_module in 1.22; checked anyway, as it is in the same
     * spirit and costs nothing.
     */
    if (ngx_test_config || ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shmsess_module);
    if (smcf == NULL || smcf->size == 0) {
        return NGX_OK;
    }

    shmsess_set_log_callback(ngx_http_shmsess_log, NULL, 3);
    ngx_http_shmsess_learn_nginx_callbacks(cycle);

    rc = ngx_http_shmsess_open(cycle, smcf);

    if (rc == NGX_OK || rc == NGX_DECLINED) {
        rc = ngx_http_shmsess_install_servers(cycle);
    }

    /* a failing init_module makes the master exit: only refuse a first start */
    if (rc == NGX_ERROR && !ngx_is_init_cycle(cycle->old_cycle)) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "shmsess: the reloaded configuration runs without the shared "
                      "session cache on some servers, see above");
        return NGX_OK;
    }

    return rc;
}


/* Each worker's session ids: the host's prefix and one byte, the worker's number. */
static ngx_int_t
ngx_http_shmsess_init_process(ngx_cycle_t *cycle)
{
    u_char                         prefix[SHMSESS_MAX_ID_PREFIX];
    ngx_http_shmsess_main_conf_t  *smcf;

    if (ngx_process != NGX_PROCESS_WORKER || ngx_http_shmsess_cache == NULL) {
        return NGX_OK;
    }

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shmsess_module);
    if (smcf == NULL || smcf->id_prefix.len == 0) {
        return NGX_OK;
    }

    ngx_memcpy(prefix, smcf->id_prefix.data, smcf->id_prefix.len);
    prefix[smcf->id_prefix.len] = (u_char) ngx_worker;

    if (shmsess_set_session_id_prefix(ngx_http_shmsess_cache, prefix,
                                      smcf->id_prefix.len + 1)
        != SHMSESS_OK)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: worker %ui keeps the host's session id prefix: %s",
                      ngx_worker, shmsess_last_error());
    }

    return NGX_OK;
}


/* ---- the status handler: statistics in Prometheus text format ---------------------------- */

/* Fields that go up and down; everything else the library exports is a counter. */
static const char  *ngx_http_shmsess_gauges[] = {
    "entries", "used_slots", "capacity_slots", "slot_bytes", "shards", "slots_per_shard",
    "min_shard_used_slots", "max_shard_used_slots", "size_bytes", "created_unix",
    "now_unix", "oldest_created_unix", "newest_created_unix", "earliest_expiry_unix",
    "latest_expiry_unix", "avg_time_left_s", NULL
};


static ngx_uint_t
ngx_http_shmsess_is_gauge(const char *name)
{
    ngx_uint_t  i;

    for (i = 0; ngx_http_shmsess_gauges[i]; i++) {
        if (ngx_strcmp(name, ngx_http_shmsess_gauges[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


/* "# TYPE shmsess_lookup_hits_total counter\nshmsess_lookup_hits_total 42\n" per field. */
static ngx_buf_t *
ngx_http_shmsess_format(ngx_http_request_t *r, shmsess_stats *st)
{
    size_t       len, n, i;
    uint64_t     value;
    ngx_buf_t   *b;
    const char  *name, *type, *suffix;

    n = shmsess_stats_field_count();
    len = 0;

    for (i = 0; i < n; i++) {
        if (shmsess_stats_field(st, i, &name, &value) == SHMSESS_OK) {
            len += 2 * (ngx_strlen(name) + sizeof("shmsess__total"))
                   + sizeof("# TYPE  counter\n") + NGX_INT64_LEN + 1;
        }
    }

    b = ngx_create_temp_buf(r->pool, len ? len : 1);
    if (b == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        if (shmsess_stats_field(st, i, &name, &value) != SHMSESS_OK) {
            continue;
        }

        type = ngx_http_shmsess_is_gauge(name) ? "gauge" : "counter";
        suffix = type[0] == 'c' ? "_total" : "";

        b->last = ngx_sprintf(b->last, "# TYPE shmsess_%s%s %s\nshmsess_%s%s %uL\n",
                              name, suffix, type, name, suffix, value);
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    return b;
}


static ngx_int_t
ngx_http_shmsess_status_handler(ngx_http_request_t *r)
{
    ngx_int_t      rc;
    ngx_buf_t     *b;
    ngx_chain_t    out;
    shmsess_stats  st;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_shmsess_cache == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_memzero(&st, sizeof(shmsess_stats));

    if (shmsess_cache_stats(ngx_http_shmsess_cache, &st) != SHMSESS_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "shmsess: cannot read the statistics: %s", shmsess_last_error());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_http_shmsess_format(r, &st);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* location = /sessions { shmsess_status; } */
static char *
ngx_http_shmsess_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_shmsess_main_conf_t  *smcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_shmsess_status_handler;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shmsess_module);
    smcf->status_used = 1;

    return NGX_CONF_OK;
}
