/*
 * What the http, stream and mail modules of shmsesscache share: the directives (one list,
 * NGX_SHMSESS_COMMANDS), their checks (nginx -t), the cache's lifetime with the cycle, its
 * installation on one server's SSL_CTX and the status text.
 *
 * Each module is its own .so, and nginx loads modules RTLD_GLOBAL: without hidden
 * visibility, the second module's calls into this file would bind to the first module's copy.
 */

#ifndef NGX_SHMSESS_COMMON_H_INCLUDED_
#define NGX_SHMSESS_COMMON_H_INCLUDED_

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <shmsesscache.h>

#pragma GCC visibility push(hidden)


/* The directives whose place in the configuration is kept, for messages about them. */
typedef enum {
    NGX_SHMSESS_CACHE_DIRECTIVE = 0,
    NGX_SHMSESS_REMOTE_DIRECTIVE,
    NGX_SHMSESS_KEY_DIRECTIVE,
    NGX_SHMSESS_CA_DIRECTIVE,
    NGX_SHMSESS_KEY_PREFIX_DIRECTIVE,
    NGX_SHMSESS_TIMEOUT_DIRECTIVE,
    NGX_SHMSESS_FLEET_DIRECTIVE,
    NGX_SHMSESS_ID_PREFIX_DIRECTIVE,
    NGX_SHMSESS_STATUS_DIRECTIVE,
    NGX_SHMSESS_DIRECTIVES
} ngx_shmsess_directive_e;


typedef struct {
    ngx_str_t                  file;             /* empty: the directive was not given */
    ngx_uint_t                 line;
} ngx_shmsess_where_t;


/* The session callbacks nginx's own shared cache sets (static functions of nginx, learned
 * by letting nginx configure a scratch SSL_CTX): any other callback belongs to another
 * module (e.g. Lua's ssl_session_fetch_by_lua) and is left alone. */
typedef struct {
    ngx_uint_t                 known;
    int                      (*new_cb)(SSL *, SSL_SESSION *);
    SSL_SESSION             *(*get_cb)(SSL *, const unsigned char *, int, int *);
    void                     (*remove_cb)(SSL_CTX *, SSL_SESSION *);
} ngx_shmsess_nginx_cbs_t;


/*
 * One block's settings (the main conf of each module) and, in the master and the workers,
 * the cache made from them. It lives in the cycle's pool: a cleanup frees the handle with
 * the cycle unless the next cycle took it over (same settings), so a reload that drops
 * shmsess_session_cache unmaps the segment.
 */
typedef struct {
    ngx_str_t                  path;             /* empty: anonymous segment */
    size_t                     size;             /* 0: no shmsess_session_cache */
    ngx_str_t                  remote_url;
    ngx_str_t                  remote_key_file;
    ngx_str_t                  remote_key_prefix; /* data != NULL: given */
    ngx_str_t                  remote_ca_file;
    ngx_msec_t                 remote_timeout;
    ngx_str_t                  remote_fleet;     /* data != NULL: given */
    ngx_str_t                  id_prefix;        /* host tag; each worker appends its number */
    ngx_flag_t                 status_used;

    const char                *block;            /* "http", "stream" or "mail" */
    ngx_shmsess_where_t        where[NGX_SHMSESS_DIRECTIVES];

    shmsess_cache             *cache;            /* this cycle's; NULL under -t */
    u_char                    *made_with;        /* the settings it was made with */
    ngx_shmsess_nginx_cbs_t    nginx_cbs;
    ngx_array_t               *servers;          /* of ngx_shmsess_server_t, with results */
} ngx_shmsess_conf_t;


/* How ngx_shmsess_start left one server. */
typedef enum {
    NGX_SHMSESS_INSTALLED = 0,
    NGX_SHMSESS_NO_TLS,
    NGX_SHMSESS_CACHE_OFF,
    NGX_SHMSESS_FOREIGN,
    NGX_SHMSESS_FAILED
} ngx_shmsess_install_e;


/* One server of a block, as its module lists them for ngx_shmsess_start. */
typedef struct {
    void                      *srv_conf;         /* the module's server conf, for its use */
    SSL_CTX                   *ctx;              /* NULL: no TLS */
    ssize_t                    builtin_session_cache;
    ngx_str_t                  name;             /* empty: a server without a name */
    u_char                    *file;
    ngx_uint_t                 line;
    ngx_shmsess_install_e      result;           /* set by ngx_shmsess_start */
} ngx_shmsess_server_t;


/* A module's list of the servers of its block in `cycle` (an array of ngx_shmsess_server_t
 * in the cycle's pool), NULL on error. */
typedef ngx_array_t *(*ngx_shmsess_servers_pt)(ngx_cycle_t *cycle);


/* The directives, for a module's command list: ctx is NGX_HTTP_MAIN_CONF, NGX_STREAM_MAIN_CONF
 * or NGX_MAIL_MAIN_CONF, offset the matching *_MAIN_CONF_OFFSET. */
#define NGX_SHMSESS_COMMANDS(ctx, offset)                                        \
    { ngx_string("shmsess_session_cache"), ctx|NGX_CONF_TAKE2,                  \
      ngx_shmsess_set_session_cache, offset, 0, NULL },                         \
    { ngx_string("shmsess_remote"), ctx|NGX_CONF_TAKE1,                         \
      ngx_shmsess_set_remote, offset, 0, NULL },                                \
    { ngx_string("shmsess_remote_key"), ctx|NGX_CONF_TAKE1,                     \
      ngx_shmsess_set_remote_key, offset, 0, NULL },                            \
    { ngx_string("shmsess_remote_ca"), ctx|NGX_CONF_TAKE1,                      \
      ngx_shmsess_set_remote_ca, offset, 0, NULL },                             \
    { ngx_string("shmsess_remote_key_prefix"), ctx|NGX_CONF_TAKE1,              \
      ngx_shmsess_set_remote_key_prefix, offset, 0, NULL },                     \
    { ngx_string("shmsess_remote_timeout"), ctx|NGX_CONF_TAKE1,                 \
      ngx_shmsess_set_remote_timeout, offset, 0, NULL },                        \
    { ngx_string("shmsess_remote_fleet"), ctx|NGX_CONF_TAKE1,                   \
      ngx_shmsess_set_remote_fleet, offset, 0, NULL },                          \
    { ngx_string("shmsess_session_id_prefix"), ctx|NGX_CONF_TAKE1,              \
      ngx_shmsess_set_id_prefix, offset, 0, NULL }


char *ngx_shmsess_set_session_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote_ca(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote_key_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote_timeout(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_remote_fleet(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_shmsess_set_id_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

/* Remember where a directive of `conf` was given (for directives a module handles itself). */
void ngx_shmsess_remember(ngx_conf_t *cf, ngx_shmsess_conf_t *conf,
    ngx_shmsess_directive_e d);

/* The module's create_main_conf: `size` bytes (a module's conf starting with an
 * ngx_shmsess_conf_t), zeroed; `block` names the block in messages. */
void *ngx_shmsess_create_conf(ngx_conf_t *cf, size_t size, const char *block);

/* The module's init_main_conf: what the library would refuse at start, refused now, each
 * message pointing at the line of the directive it is about. */
char *ngx_shmsess_check_conf(ngx_conf_t *cf, ngx_shmsess_conf_t *conf);

/* The cycle before `cycle` if it had `module` loaded and a configuration (a reload), else
 * NULL: where the previous conf of the module may be looked up. */
ngx_cycle_t *ngx_shmsess_previous_cycle(ngx_cycle_t *cycle, ngx_module_t *module);

/*
 * The module's init_module (in the master, before the workers are forked; nothing under -t
 * or in the signaller): the cache of `conf` for the new cycle, the previous cycle's handle
 * when the settings are the same (`old` is that cycle's conf of the same module, or NULL),
 * else a new one (on a reload that cannot make one, the previous one is kept), installed on
 * every server `servers` lists unless it has no TLS, its session cache off or callbacks of
 * another module. conf->servers keeps the list with each server's result. Refuses only a
 * first start: a reload that fails is logged and runs on.
 */
ngx_int_t ngx_shmsess_start(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf,
    ngx_shmsess_conf_t *old, ngx_shmsess_servers_pt servers);

/* An empty list for `n` servers, for a module's ngx_shmsess_servers_pt to fill. */
ngx_array_t *ngx_shmsess_server_list(ngx_cycle_t *cycle, ngx_uint_t n);

/* The module's init_process: each worker's session id prefix (the host's, then one byte,
 * the worker's number). */
void ngx_shmsess_init_worker(ngx_cycle_t *cycle, ngx_shmsess_conf_t *conf);

/* The statistics of conf->cache in Prometheus text format (the command-line tool's, from the
 * library), labelled with the block and the segment, in a buffer of `pool`; NULL on error
 * (logged). */
ngx_buf_t *ngx_shmsess_status_text(ngx_pool_t *pool, ngx_log_t *log,
    ngx_shmsess_conf_t *conf);

/* The conf of this project's module of the block named `block` ("http", "stream", "mail")
 * in `cycle`, found by the modules' names (the modules are separate .so files, loaded in any
 * order); NULL when that module or block is not there. */
ngx_shmsess_conf_t *ngx_shmsess_block_conf(ngx_cycle_t *cycle, ngx_str_t *block);


#pragma GCC visibility pop

#endif /* NGX_SHMSESS_COMMON_H_INCLUDED_ */
