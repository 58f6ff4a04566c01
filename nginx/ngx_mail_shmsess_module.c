/*
 * ngx_mail_shmsess_module: puts every TLS server of the mail block (IMAP, POP3 and SMTP
 * proxies, implicit TLS and STARTTLS alike) on one libshmsesscache segment shared by all
 * workers.
 *
 *     load_module modules/ngx_mail_module.so;              # Debian: libnginx-mod-mail
 *     load_module modules/ngx_mail_shmsess_module.so;
 *     mail {
 *         shmsess_session_cache /run/nginx/ssl.sess 64m;    # or: anonymous 64m
 *         ssl_session_tickets off;
 *         server { listen 993 ssl; protocol imap; ... }
 *     }
 *
 * The directives, their checks and the cache's life with the cycle are those of the http
 * module (ngx_shmsess_common.c).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_mail.h>

#include "ngx_shmsess_common.h"


/* nginx 1.22 has no ngx_mail_cycle_get_module_main_conf, and its mail headers do not declare
 * the mail core module (a global of ngx_mail_module.so, loaded before this module). */
extern ngx_module_t  ngx_mail_module;

#define ngx_mail_shmsess_cycle_main_conf(cycle, module)                         \
    ((cycle)->conf_ctx[ngx_mail_module.index] ?                                 \
        ((ngx_mail_conf_ctx_t *) (cycle)->conf_ctx[ngx_mail_module.index])      \
            ->main_conf[module.ctx_index]                                       \
        : NULL)


static ngx_int_t ngx_mail_shmsess_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_mail_shmsess_init_process(ngx_cycle_t *cycle);
static void *ngx_mail_shmsess_create_main_conf(ngx_conf_t *cf);
static char *ngx_mail_shmsess_init_main_conf(ngx_conf_t *cf, void *conf);


static ngx_command_t  ngx_mail_shmsess_commands[] = {

    NGX_SHMSESS_COMMANDS(NGX_MAIL_MAIN_CONF, NGX_MAIL_MAIN_CONF_OFFSET),

      ngx_null_command
};


static ngx_mail_module_t  ngx_mail_shmsess_module_ctx = {
    NULL,                                  /* protocol */

    ngx_mail_shmsess_create_main_conf,     /* create main configuration */
    ngx_mail_shmsess_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL                                   /* merge server configuration */
};


ngx_module_t  ngx_mail_shmsess_module = {
    NGX_MODULE_V1,
    &ngx_mail_shmsess_module_ctx,          /* module context */
    ngx_mail_shmsess_commands,             /* module directives */
    NGX_MAIL_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_mail_shmsess_init_module,          /* init module */
    ngx_mail_shmsess_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_mail_shmsess_create_main_conf(ngx_conf_t *cf)
{
    return ngx_shmsess_create_conf(cf, sizeof(ngx_shmsess_conf_t), "mail");
}


static char *
ngx_mail_shmsess_init_main_conf(ngx_conf_t *cf, void *conf)
{
    return ngx_shmsess_check_conf(cf, conf);
}


/* Every server of the mail block (its context serves implicit TLS and STARTTLS). */
static ngx_array_t *
ngx_mail_shmsess_servers(ngx_cycle_t *cycle)
{
    ngx_uint_t                   s;
    ngx_array_t                 *list;
    ngx_mail_ssl_conf_t         *sslcf;
    ngx_shmsess_server_t        *srv;
    ngx_mail_core_srv_conf_t   **cscfp;
    ngx_mail_core_main_conf_t   *cmcf;

    cmcf = ngx_mail_shmsess_cycle_main_conf(cycle, ngx_mail_core_module);
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
        sslcf = cscfp[s]->ctx->srv_conf[ngx_mail_ssl_module.ctx_index];
        srv->srv_conf = cscfp[s];
        srv->ctx = sslcf->ssl.ctx;
        srv->builtin_session_cache = sslcf->builtin_session_cache;
        srv->name = cscfp[s]->server_name;
        srv->file = cscfp[s]->file_name;
        srv->line = cscfp[s]->line;
    }

    return list;
}


static ngx_int_t
ngx_mail_shmsess_init_module(ngx_cycle_t *cycle)
{
    ngx_cycle_t  *previous;

    previous = ngx_shmsess_previous_cycle(cycle, &ngx_mail_shmsess_module);

    return ngx_shmsess_start(cycle,
                             ngx_mail_shmsess_cycle_main_conf(cycle, ngx_mail_shmsess_module),
                             previous ? ngx_mail_shmsess_cycle_main_conf(
                                            previous, ngx_mail_shmsess_module)
                                      : NULL,
                             ngx_mail_shmsess_servers);
}


static ngx_int_t
ngx_mail_shmsess_init_process(ngx_cycle_t *cycle)
{
    ngx_shmsess_init_worker(cycle,
                            ngx_mail_shmsess_cycle_main_conf(cycle, ngx_mail_shmsess_module));
    return NGX_OK;
}
