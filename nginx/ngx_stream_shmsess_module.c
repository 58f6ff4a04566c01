/*
 * ngx_stream_shmsess_module: puts every TLS server of the stream block (TLS in front of any
 * TCP service) on one libshmsesscache segment shared by all workers.
 *
 *     load_module modules/ngx_stream_module.so;            # Debian: libnginx-mod-stream
 *     load_module modules/ngx_stream_shmsess_module.so;
 *     stream {
 *         shmsess_session_cache /run/nginx/ssl.sess 64m;    # or: anonymous 64m
 *         ssl_session_tickets off;
 *         server { listen 6380 ssl; proxy_pass 127.0.0.1:6379; ... }
 *     }
 *
 * The directives, their checks and the cache's life with the cycle are those of the http
 * module (ngx_shmsess_common.c); naming the same segment file in http {} and stream {} puts
 * both on one segment (a session is still only resumed by a server of its own block: nginx's
 * session id context differs).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_shmsess_common.h"


static ngx_int_t ngx_stream_shmsess_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_stream_shmsess_init_process(ngx_cycle_t *cycle);
static void *ngx_stream_shmsess_create_main_conf(ngx_conf_t *cf);
static char *ngx_stream_shmsess_init_main_conf(ngx_conf_t *cf, void *conf);


static ngx_command_t  ngx_stream_shmsess_commands[] = {

    NGX_SHMSESS_COMMANDS(NGX_STREAM_MAIN_CONF, NGX_STREAM_MAIN_CONF_OFFSET),

      ngx_null_command
};


static ngx_stream_module_t  ngx_stream_shmsess_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_stream_shmsess_create_main_conf,   /* create main configuration */
    ngx_stream_shmsess_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL                                   /* merge server configuration */
};


ngx_module_t  ngx_stream_shmsess_module = {
    NGX_MODULE_V1,
    &ngx_stream_shmsess_module_ctx,        /* module context */
    ngx_stream_shmsess_commands,           /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    ngx_stream_shmsess_init_module,        /* init module */
    ngx_stream_shmsess_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_stream_shmsess_create_main_conf(ngx_conf_t *cf)
{
    return ngx_shmsess_create_conf(cf, sizeof(ngx_shmsess_conf_t), "stream");
}


static char *
ngx_stream_shmsess_init_main_conf(ngx_conf_t *cf, void *conf)
{
    return ngx_shmsess_check_conf(cf, conf);
}


/* Every server of the stream block (each listen socket has one server: no virtual hosts,
 * so each server's own context is the one its connections are accepted on). */
static ngx_array_t *
ngx_stream_shmsess_servers(ngx_cycle_t *cycle)
{
    ngx_uint_t                     s;
    ngx_array_t                   *list;
    ngx_shmsess_server_t          *srv;
    ngx_stream_ssl_conf_t         *sslcf;
    ngx_stream_core_srv_conf_t   **cscfp;
    ngx_stream_core_main_conf_t   *cmcf;

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle, ngx_stream_core_module);
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
        sslcf = cscfp[s]->ctx->srv_conf[ngx_stream_ssl_module.ctx_index];
        srv->srv_conf = cscfp[s];
        srv->ctx = sslcf->ssl.ctx;
        srv->builtin_session_cache = sslcf->builtin_session_cache;
        srv->file = cscfp[s]->file_name;
        srv->line = cscfp[s]->line;
    }

    return list;
}


static ngx_int_t
ngx_stream_shmsess_init_module(ngx_cycle_t *cycle)
{
    ngx_cycle_t  *previous;

    previous = ngx_shmsess_previous_cycle(cycle, &ngx_stream_shmsess_module);

    return ngx_shmsess_start(cycle,
                             ngx_stream_cycle_get_module_main_conf(cycle,
                                                                   ngx_stream_shmsess_module),
                             previous ? ngx_stream_cycle_get_module_main_conf(
                                            previous, ngx_stream_shmsess_module)
                                      : NULL,
                             ngx_stream_shmsess_servers);
}


static ngx_int_t
ngx_stream_shmsess_init_process(ngx_cycle_t *cycle)
{
    ngx_shmsess_init_worker(cycle,
                            ngx_stream_cycle_get_module_main_conf(cycle,
                                                                  ngx_stream_shmsess_module));
    return NGX_OK;
}
