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
 * The directives, their checks and the cache's life with the cycle are shared with the stream
 * and mail modules (ngx_shmsess_common.c). What is http's own: the servers to install the
 * cache on, the warning about listen sockets whose default server decides against the cache
 * for their name-based virtual hosts, and the status location.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_shmsess_common.h"


/* A listen socket shared by name-based virtual hosts, as the configuration made it (nginx's
 * own list is in the configuration's temporary pool, gone by init_module). */
typedef struct {
    ngx_str_t                   addr_text;
    ngx_http_core_srv_conf_t   *default_server;
    ngx_array_t                 others;          /* of ngx_http_core_srv_conf_t * */
} ngx_http_shmsess_socket_t;


/* A status location that shows the cache of another block (shmsess_status stream;). */
typedef struct {
    ngx_str_t                   block;
    u_char                     *file;
    ngx_uint_t                  line;
} ngx_http_shmsess_status_of_t;


typedef struct {
    ngx_shmsess_conf_t          common;          /* first: the shared directives' conf */
    ngx_array_t                *sockets;         /* of ngx_http_shmsess_socket_t */
    ngx_array_t                *status_of;       /* of ngx_http_shmsess_status_of_t */
} ngx_http_shmsess_main_conf_t;


typedef struct {
    ngx_str_t                   status_block;    /* empty: http's own cache */
} ngx_http_shmsess_loc_conf_t;


static ngx_int_t ngx_http_shmsess_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_shmsess_init_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_shmsess_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_shmsess_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_shmsess_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_shmsess_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_shmsess_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_shmsess_commands[] = {

    NGX_SHMSESS_COMMANDS(NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET),

    { ngx_string("shmsess_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_shmsess_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_shmsess_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_shmsess_postconfiguration,    /* postconfiguration */

    ngx_http_shmsess_create_main_conf,     /* create main configuration */
    ngx_http_shmsess_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_shmsess_create_loc_conf,      /* create location configuration */
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


/* ---- configuration ---------------------------------------------------------------------- */

static void *
ngx_http_shmsess_create_main_conf(ngx_conf_t *cf)
{
    /* set by ngx_pcalloc(): smcf->sockets = NULL */
    return ngx_shmsess_create_conf(cf, sizeof(ngx_http_shmsess_main_conf_t), "http");
}


static void *
ngx_http_shmsess_create_loc_conf(ngx_conf_t *cf)
{
    /* set by ngx_pcalloc(): status_block = { 0, NULL } */
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_shmsess_loc_conf_t));
}


static char *
ngx_http_shmsess_init_main_conf(ngx_conf_t *cf, void *conf)
{
    return ngx_shmsess_check_conf(cf, conf);
}


/* One listen socket with virtual hosts besides its default server, copied for init_module. */
static ngx_int_t
ngx_http_shmsess_keep_socket(ngx_conf_t *cf, ngx_http_shmsess_main_conf_t *smcf,
    ngx_http_conf_addr_t *addr)
{
    ngx_uint_t                   s;
    ngx_http_core_srv_conf_t   **servers, **other;
    ngx_http_shmsess_socket_t   *sock;

    sock = ngx_array_push(smcf->sockets);
    if (sock == NULL) {
        return NGX_ERROR;
    }

    sock->addr_text.data = ngx_pstrdup(cf->pool, &addr->opt.addr_text);
    sock->addr_text.len = addr->opt.addr_text.len;
    sock->default_server = addr->default_server;

    if (sock->addr_text.data == NULL
        || ngx_array_init(&sock->others, cf->pool, addr->servers.nelts,
                          sizeof(ngx_http_core_srv_conf_t *)) != NGX_OK)
    {
        return NGX_ERROR;
    }

    servers = addr->servers.elts;

    for (s = 0; s < addr->servers.nelts; s++) {
        if (servers[s] != addr->default_server) {
            other = ngx_array_push(&sock->others);
            if (other == NULL) {
                return NGX_ERROR;
            }
            *other = servers[s];
        }
    }

    return NGX_OK;
}


/* The listen sockets that serve more than one server (nginx decides their default server
 * while it reads the configuration; its list is gone by init_module). */
static ngx_int_t
ngx_http_shmsess_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                     p, a;
    ngx_http_conf_port_t          *port;
    ngx_http_conf_addr_t          *addr;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_shmsess_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shmsess_module);
    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (smcf->common.size == 0 || cmcf->ports == NULL) {
        return NGX_OK;
    }

    smcf->sockets = ngx_array_create(cf->pool, 4, sizeof(ngx_http_shmsess_socket_t));
    if (smcf->sockets == NULL) {
        return NGX_ERROR;
    }

    port = cmcf->ports->elts;

    for (p = 0; p < cmcf->ports->nelts; p++) {
        addr = port[p].addrs.elts;

        for (a = 0; a < port[p].addrs.nelts; a++) {
            /* only TLS sockets: on a plain-text one no session is ever resumed */
            if (addr[a].servers.nelts > 1 && addr[a].opt.ssl
                && ngx_http_shmsess_keep_socket(cf, smcf, &addr[a]) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* ---- putting the servers on the cache (init_module) ------------------------------------- */

static ngx_str_t *
ngx_http_shmsess_server_name(ngx_http_core_srv_conf_t *cscf)
{
    ngx_http_server_name_t  *names = cscf->server_names.elts;

    return cscf->server_names.nelts ? &names[0].name : &cscf->server_name;
}


/* Every server of the http block, default servers of each listen socket included: OpenSSL
 * takes the session callbacks from the context a connection was accepted on. */
static ngx_array_t *
ngx_http_shmsess_servers(ngx_cycle_t *cycle)
{
    ngx_uint_t                  s;
    ngx_array_t                *list;
    ngx_shmsess_server_t       *srv;
    ngx_http_ssl_srv_conf_t    *sscf;
    ngx_http_core_srv_conf_t  **cscfp;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    list = ngx_shmsess_server_list(cycle, cmcf->servers.nelts);
    if (list == NULL) {
        return NULL;
    }

    for (s = 0; s < cmcf->servers.nelts; s++) {
        srv = ngx_array_push(list);
        if (srv == NULL) {
            return NULL;
        }

        ngx_memzero(srv, sizeof(ngx_shmsess_server_t));
        sscf = cscfp[s]->ctx->srv_conf[ngx_http_ssl_module.ctx_index];
        srv->srv_conf = cscfp[s];
        srv->ctx = sscf->ssl.ctx;
        srv->builtin_session_cache = sscf->builtin_session_cache;
        srv->name = *ngx_http_shmsess_server_name(cscfp[s]);
        srv->file = cscfp[s]->file_name;
        srv->line = cscfp[s]->line;
    }

    return list;
}


/* How the cache was left on one server (by ngx_shmsess_start). */
static ngx_shmsess_install_e
ngx_http_shmsess_result_of(ngx_shmsess_conf_t *conf, ngx_http_core_srv_conf_t *cscf)
{
    ngx_uint_t             s;
    ngx_shmsess_server_t  *srv = conf->servers->elts;

    for (s = 0; s < conf->servers->nelts; s++) {
        if (srv[s].srv_conf == cscf) {
            return srv[s].result;
        }
    }

    return NGX_SHMSESS_NO_TLS;
}


/* `"a" (FILE:LINE), "b" (FILE:LINE)` for the servers of `others`, as far as fits. */
static u_char *
ngx_http_shmsess_list_names(u_char *p, u_char *last, ngx_array_t *others)
{
    ngx_uint_t                  i;
    ngx_http_core_srv_conf_t  **cscfp = others->elts;

    for (i = 0; i < others->nelts; i++) {
        p = ngx_slprintf(p, last, "%s\"%V\" (%s:%ui)", i ? ", " : "",
                         ngx_http_shmsess_server_name(cscfp[i]), cscfp[i]->file_name,
                         cscfp[i]->line);
    }

    return p;
}


/*
 * OpenSSL takes the session callbacks from the context a connection was accepted on, the
 * listen socket's default server, before the server name picks the virtual host: a default
 * server left without the cache turns resumption off for every virtual host on its socket.
 * Said at warn level (Debian's error_log hides notice), naming the socket and the hosts.
 */
static void
ngx_http_shmsess_warn_default_servers(ngx_cycle_t *cycle, ngx_http_shmsess_main_conf_t *smcf)
{
    u_char                      names[512], *last;
    ngx_uint_t                  i;
    ngx_shmsess_install_e       rc;
    ngx_http_shmsess_socket_t  *sock;

    if (smcf->sockets == NULL || smcf->common.servers == NULL) {
        return;
    }

    sock = smcf->sockets->elts;

    for (i = 0; i < smcf->sockets->nelts; i++) {
        rc = ngx_http_shmsess_result_of(&smcf->common, sock[i].default_server);

        if (rc != NGX_SHMSESS_CACHE_OFF && rc != NGX_SHMSESS_FOREIGN) {
            continue;
        }

        last = ngx_http_shmsess_list_names(names, names + sizeof(names), &sock[i].others);

        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "shmsess: the default server \"%V\" (%s:%ui) of the listen socket %V "
                      "has %s, and OpenSSL takes the session cache from the default server: "
                      "no TLS session is resumed on %V for the %ui other server(s) there "
                      "either: %*s; remove \"ssl_session_cache off\" from the default server "
                      "(or make another one \"default_server\"), or give these servers a "
                      "listen address of their own",
                      ngx_http_shmsess_server_name(sock[i].default_server),
                      sock[i].default_server->file_name, sock[i].default_server->line,
                      &sock[i].addr_text,
                      rc == NGX_SHMSESS_CACHE_OFF ? "\"ssl_session_cache off\""
                                                  : "session callbacks of another module",
                      &sock[i].addr_text, sock[i].others.nelts, last - names, names);
    }
}


/* `shmsess_status stream;` needs a stream block with shmsess_session_cache. Known only once
 * every block was read: refused under nginx -t, a warning on a reload or start (the location
 * then answers 503), which must not stop the server. */
static ngx_int_t
ngx_http_shmsess_check_status_of(ngx_cycle_t *cycle, ngx_http_shmsess_main_conf_t *smcf)
{
    ngx_uint_t                     i, level;
    ngx_shmsess_conf_t            *conf;
    ngx_http_shmsess_status_of_t  *of;

    if (smcf->status_of == NULL) {
        return NGX_OK;
    }

    level = ngx_test_config ? NGX_LOG_EMERG : NGX_LOG_WARN;

    of = smcf->status_of->elts;

    for (i = 0; i < smcf->status_of->nelts; i++) {
        conf = ngx_shmsess_block_conf(cycle, &of[i].block);

        if (conf && conf->size) {
            continue;
        }

        ngx_log_error(level, cycle->log, 0,
                      "\"shmsess_status %V\" in %s:%ui: the %V block has no "
                      "\"shmsess_session_cache\"%s: add one there (and load "
                      "ngx_%V_shmsess_module.so), or remove the argument to show the http "
                      "block's cache", &of[i].block, of[i].file, of[i].line, &of[i].block,
                      ngx_test_config ? "" : " (the location answers 503)", &of[i].block);

        if (ngx_test_config) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_shmsess_init_module(ngx_cycle_t *cycle)
{
    ngx_int_t                      rc;
    ngx_cycle_t                   *previous;
    ngx_http_shmsess_main_conf_t  *smcf, *old;

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shmsess_module);
    previous = ngx_shmsess_previous_cycle(cycle, &ngx_http_shmsess_module);
    old = previous ? ngx_http_cycle_get_module_main_conf(previous, ngx_http_shmsess_module)
                   : NULL;

    rc = ngx_shmsess_start(cycle, smcf ? &smcf->common : NULL, old ? &old->common : NULL,
                           ngx_http_shmsess_servers);

    if (rc == NGX_OK && smcf) {
        ngx_http_shmsess_warn_default_servers(cycle, smcf);
        rc = ngx_http_shmsess_check_status_of(cycle, smcf);
    }

    return rc;
}


static ngx_int_t
ngx_http_shmsess_init_process(ngx_cycle_t *cycle)
{
    ngx_http_shmsess_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shmsess_module);
    ngx_shmsess_init_worker(cycle, smcf ? &smcf->common : NULL);

    return NGX_OK;
}


/* ---- the status handler: statistics in Prometheus text format ---------------------------- */

static ngx_int_t
ngx_http_shmsess_status_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_chain_t                    out;
    ngx_shmsess_conf_t            *conf;
    ngx_http_shmsess_loc_conf_t   *slcf;
    ngx_http_shmsess_main_conf_t  *smcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_shmsess_module);
    smcf = ngx_http_get_module_main_conf(r, ngx_http_shmsess_module);

    conf = slcf->status_block.len
           ? ngx_shmsess_block_conf((ngx_cycle_t *) ngx_cycle, &slcf->status_block)
           : &smcf->common;

    if (conf == NULL || conf->cache == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    b = ngx_shmsess_status_text(r->pool, r->connection->log, conf);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

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


/* A status location for another block's cache: checked once every block is read. */
static char *
ngx_http_shmsess_status_of(ngx_conf_t *cf, ngx_http_shmsess_main_conf_t *smcf,
    ngx_str_t *block)
{
    ngx_http_shmsess_status_of_t  *of;

    if (smcf->status_of == NULL) {
        smcf->status_of = ngx_array_create(cf->pool, 2, sizeof(ngx_http_shmsess_status_of_t));
        if (smcf->status_of == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    of = ngx_array_push(smcf->status_of);
    if (of == NULL) {
        return NGX_CONF_ERROR;
    }

    of->block = *block;
    of->file = cf->conf_file->file.name.data;
    of->line = cf->conf_file->line;

    return NGX_CONF_OK;
}


/* location = /sessions { shmsess_status [http|stream|mail]; } */
static char *
ngx_http_shmsess_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shmsess_loc_conf_t  *slcf = conf;

    ngx_str_t                     *value;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_shmsess_main_conf_t  *smcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_shmsess_status_handler;
    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shmsess_module);
    value = cf->args->elts;

    if (cf->args->nelts == 1 || ngx_strcmp(value[1].data, "http") == 0) {
        smcf->common.status_used = 1;
        ngx_shmsess_remember(cf, &smcf->common, NGX_SHMSESS_STATUS_DIRECTIVE);
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "stream") != 0 && ngx_strcmp(value[1].data, "mail") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid block \"%V\" in \"shmsess_status\": give \"http\" "
                           "(the default), \"stream\" or \"mail\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    slcf->status_block = value[1];

    return ngx_http_shmsess_status_of(cf, smcf, &value[1]);
}
