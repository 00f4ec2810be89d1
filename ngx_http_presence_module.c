
/*
 * ngx_http_presence_module: who is online, answered by nginx itself.
 *
 * This file has the directives, their configuration and the module's
 * hooks; ngx_http_presence.h lists the other files of the HTTP side, and
 * ngx_presence_redis.h is the way to the Redis side.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


/* the largest presence_online_limit */
#define NGX_HTTP_PRESENCE_LIMIT_MAX  1000000


static ngx_int_t ngx_http_presence_init_process(ngx_cycle_t *cycle);
static void ngx_http_presence_exit_process(ngx_cycle_t *cycle);
static void *ngx_http_presence_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_presence_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_presence_redis_sentinel(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_presence_redis_cluster(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_presence_redis_conflict(
    ngx_http_presence_main_conf_t *pmcf);
static char *ngx_http_presence_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_content(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_check_msec(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_check_prefix(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_check_size(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_check_bounds(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_post_handler_pt  ngx_http_presence_check_msec_p =
    ngx_http_presence_check_msec;

static ngx_conf_post_handler_pt  ngx_http_presence_check_prefix_p =
    ngx_http_presence_check_prefix;

static ngx_conf_post_handler_pt  ngx_http_presence_check_size_p =
    ngx_http_presence_check_size;

/* like ngx_conf_check_num_bounds(), with the directive in the message */

static ngx_conf_num_bounds_t  ngx_http_presence_db_bounds = {
    ngx_http_presence_check_bounds, 0, -1
};

static ngx_conf_num_bounds_t  ngx_http_presence_limit_bounds = {
    ngx_http_presence_check_bounds, 1, NGX_HTTP_PRESENCE_LIMIT_MAX
};

static ngx_conf_num_bounds_t  ngx_http_presence_id_length_bounds = {
    ngx_http_presence_check_bounds, 1, 1024
};

static ngx_conf_num_bounds_t  ngx_http_presence_sessions_bounds = {
    ngx_http_presence_check_bounds, 1, 1024
};

static ngx_conf_num_bounds_t  ngx_http_presence_streams_bounds = {
    ngx_http_presence_check_bounds, 1, -1
};


static ngx_command_t  ngx_http_presence_commands[] = {

    { ngx_string("presence_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_redis_sentinel"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_presence_redis_sentinel,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_redis_cluster"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_presence_redis_cluster,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_redis_sentinel_password"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, redis.sentinel_password),
      NULL },

    { ngx_string("presence_redis_password"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, redis.password),
      NULL },

    { ngx_string("presence_redis_db"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, redis.db),
      &ngx_http_presence_db_bounds },

    { ngx_string("presence_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, redis.timeout),
      &ngx_http_presence_check_msec_p },

    { ngx_string("presence_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, ttl),
      &ngx_http_presence_check_msec_p },

    { ngx_string("presence_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, key_prefix),
      &ngx_http_presence_check_prefix_p },

    { ngx_string("presence_room"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, room),
      NULL },

    { ngx_string("presence_heartbeat"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_presence_content,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_HEARTBEAT,
      NULL },

    { ngx_string("presence_leave"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_presence_content,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_LEAVE,
      NULL },

    { ngx_string("presence_online"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_content,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_ONLINE,
      NULL },

    { ngx_string("presence_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_content,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_STATUS,
      NULL },

    { ngx_string("presence_stream"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_content,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_STREAM,
      NULL },

    { ngx_string("presence_stream_ping"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, stream_ping),
      &ngx_http_presence_check_msec_p },

    { ngx_string("presence_stream_max_clients"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, stream_max_clients),
      &ngx_http_presence_streams_bounds },

    { ngx_string("presence_online_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, online_limit),
      &ngx_http_presence_limit_bounds },

    { ngx_string("presence_max_id_length"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, max_id_length),
      &ngx_http_presence_id_length_bounds },

    { ngx_string("presence_online_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, online_cache),
      NULL },

    { ngx_string("presence_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, max_body_size),
      &ngx_http_presence_check_size_p },

    { ngx_string("presence_max_sessions"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, max_sessions),
      &ngx_http_presence_sessions_bounds },

    { ngx_string("presence_leave_grace"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, leave_grace),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_presence_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_presence_create_main_conf,    /* create main configuration */
    ngx_http_presence_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_presence_create_loc_conf,     /* create location configuration */
    ngx_http_presence_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_presence_module = {
    NGX_MODULE_V1,
    &ngx_http_presence_module_ctx,         /* module context */
    ngx_http_presence_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_presence_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_presence_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_complex_value_t  ngx_http_presence_default_room = {
    ngx_string("global"), NULL, NULL, NULL, { 0 }
};


static ngx_int_t
ngx_http_presence_init_process(ngx_cycle_t *cycle)
{
    ngx_http_presence_main_conf_t  *pmcf;

    /* cache helpers run init_process too: only workers talk to Redis */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_presence_module);

    if (pmcf == NULL || !pmcf->used) {
        return NGX_OK;
    }

    ngx_http_presence_status_claim(cycle, pmcf);
    ngx_http_presence_cache_init();

    pmcf->rds = ngx_presence_redis_create(cycle, &pmcf->redis,
                                          ngx_http_presence_counters(),
                                          ngx_http_presence_worker());
    if (pmcf->rds == NULL) {
        return NGX_ERROR;
    }

    ngx_http_presence_stream_init(pmcf->rds);

    return NGX_OK;
}


static void
ngx_http_presence_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_presence_module);

    /* only a worker that talks to Redis has anything to let go */

    if (pmcf == NULL || pmcf->rds == NULL) {
        return;
    }

    ngx_presence_redis_destroy(pmcf->rds);
    pmcf->rds = NULL;

    ngx_http_presence_cache_free();
    ngx_http_presence_status_release();
}


static void *
ngx_http_presence_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_presence_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     pmcf->redis.name = { 0, NULL };
     *     pmcf->redis.host = { 0, NULL };
     *     pmcf->redis.path = { 0, NULL };
     *     pmcf->redis.password = { 0, NULL };
     *     pmcf->redis.master = { 0, NULL };
     *     pmcf->redis.sentinels = NULL;
     *     pmcf->redis.sentinel_password = { 0, NULL };
     *     pmcf->redis.seeds = NULL;
     *     pmcf->shm_zone = NULL;
     *     pmcf->used = 0;
     *     pmcf->rds = NULL;
     */

    pmcf->redis.db = NGX_CONF_UNSET;
    pmcf->stream_max_clients = NGX_CONF_UNSET_UINT;
    pmcf->redis.timeout = NGX_CONF_UNSET_MSEC;

    return pmcf;
}


static char *
ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_str_t  addr;

    if (pmcf->redis.sentinel_password.data
        && pmcf->redis.sentinels == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_redis_sentinel_password\" needs "
                           "\"presence_redis_sentinel\"");
        return NGX_CONF_ERROR;
    }

    if (pmcf->redis.seeds && pmcf->redis.db != NGX_CONF_UNSET) {
        /* a cluster has one database, and refuses SELECT */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_redis_db\" cannot be used with "
                           "\"presence_redis_cluster\": a cluster has "
                           "database 0 only");
        return NGX_CONF_ERROR;
    }

    if (pmcf->redis.name.data == NULL && pmcf->redis.sentinels == NULL
        && pmcf->redis.seeds == NULL)
    {
        ngx_str_set(&addr, "127.0.0.1:6379");

        if (ngx_presence_redis_parse_address(cf, &pmcf->redis, &addr)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    ngx_conf_init_value(pmcf->redis.db, 0);
    ngx_conf_init_msec_value(pmcf->redis.timeout, 1000);
    ngx_conf_init_uint_value(pmcf->stream_max_clients, 4096);

    if (!pmcf->used) {
        return NGX_CONF_OK;
    }

    /* the counters of presence_status, for all workers and reloads */

    if (ngx_http_presence_status_zone(cf, pmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_presence_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_presence_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     plcf->handler = 0;
     *     plcf->identity = NULL;
     *     plcf->key_prefix = { 0, NULL };
     *     plcf->ttl_ms = { 0, NULL };
     *     plcf->ttl_json = { 0, NULL };
     *     plcf->max_sessions_arg = { 0, NULL };
     *     plcf->leave_grace_arg = { 0, NULL };
     */

    plcf->room = NGX_CONF_UNSET_PTR;
    plcf->ttl = NGX_CONF_UNSET_MSEC;
    plcf->online_limit = NGX_CONF_UNSET_UINT;
    plcf->max_id_length = NGX_CONF_UNSET_UINT;
    plcf->max_body_size = NGX_CONF_UNSET_SIZE;
    plcf->online_cache = NGX_CONF_UNSET_MSEC;
    plcf->max_sessions = NGX_CONF_UNSET_UINT;
    plcf->leave_grace = NGX_CONF_UNSET_MSEC;
    plcf->stream_ping = NGX_CONF_UNSET_MSEC;

    return plcf;
}


static char *
ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_presence_loc_conf_t *prev = parent;
    ngx_http_presence_loc_conf_t *conf = child;

    u_char                         *p;
    ngx_http_complex_value_t       *room;
    ngx_http_presence_main_conf_t  *pmcf;

    ngx_conf_merge_msec_value(conf->ttl, prev->ttl, 10000);
    ngx_conf_merge_str_value(conf->key_prefix, prev->key_prefix,
                             "presence:");
    ngx_conf_merge_ptr_value(conf->room, prev->room,
                             &ngx_http_presence_default_room);
    ngx_conf_merge_uint_value(conf->online_limit, prev->online_limit, 1000);
    ngx_conf_merge_uint_value(conf->max_id_length, prev->max_id_length, 128);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              4096);
    ngx_conf_merge_msec_value(conf->online_cache, prev->online_cache, 0);
    ngx_conf_merge_uint_value(conf->max_sessions, prev->max_sessions, 16);
    ngx_conf_merge_msec_value(conf->leave_grace, prev->leave_grace, 0);
    ngx_conf_merge_msec_value(conf->stream_ping, prev->stream_ping, 15000);

    room = conf->room;

    /* a room without variables is checked once, here */

    if (room->lengths == NULL
        && !ngx_http_presence_valid_id(room->value.data, room->value.len,
                                       conf->max_id_length))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid presence_room \"%V\": a room is 1 to %ui "
                           "bytes of UTF-8 without control characters",
                           &room->value, conf->max_id_length);
        return NGX_CONF_ERROR;
    }

    /* the numbers as the scripts take them, formatted once */

    p = ngx_pnalloc(cf->pool, 5 * NGX_INT_T_LEN + 4);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->max_sessions_arg.data = p;
    p = ngx_sprintf(p, "%ui", conf->max_sessions);
    conf->max_sessions_arg.len = p - conf->max_sessions_arg.data;

    conf->leave_grace_arg.data = p;
    p = ngx_sprintf(p, "%M", conf->leave_grace);
    conf->leave_grace_arg.len = p - conf->leave_grace_arg.data;

    conf->ttl_ms.data = p;
    p = ngx_sprintf(p, "%M", conf->ttl);
    conf->ttl_ms.len = p - conf->ttl_ms.data;

    /*
     * A room's keys outlive its last user by the time the sweeps of the
     * live streams need to announce the user's timeout: one every second,
     * each answered within presence_redis_timeout (the main configuration
     * is complete by the time locations are merged).
     */

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_presence_module);

    conf->key_life_arg.data = p;
    p = ngx_sprintf(p, "%M", conf->ttl + 2 * pmcf->redis.timeout + 1000);
    conf->key_life_arg.len = p - conf->key_life_arg.data;

    conf->ttl_json.data = p;

    if (conf->ttl % 1000) {
        p = ngx_sprintf(p, "%M.%03M", conf->ttl / 1000, conf->ttl % 1000);

        while (p[-1] == '0') {
            p--;
        }

    } else {
        p = ngx_sprintf(p, "%M", conf->ttl / 1000);
    }

    conf->ttl_json.len = p - conf->ttl_json.data;

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_str_t  *value;

    if (pmcf->redis.name.data) {
        return "is duplicate";
    }

    if (pmcf->redis.sentinels || pmcf->redis.seeds) {
        return ngx_http_presence_redis_conflict(pmcf);
    }

    value = cf->args->elts;

    return ngx_presence_redis_parse_address(cf, &pmcf->redis, &value[1]);
}


static char *
ngx_http_presence_redis_sentinel(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_str_t  *value;

    if (pmcf->redis.sentinels) {
        return "is duplicate";
    }

    if (pmcf->redis.name.data || pmcf->redis.seeds) {
        return ngx_http_presence_redis_conflict(pmcf);
    }

    value = cf->args->elts;

    return ngx_presence_redis_parse_sentinel(cf, &pmcf->redis, &value[1],
                                             cf->args->nelts - 1);
}


static char *
ngx_http_presence_redis_cluster(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_str_t  *value;

    if (pmcf->redis.seeds) {
        return "is duplicate";
    }

    if (pmcf->redis.name.data || pmcf->redis.sentinels) {
        return ngx_http_presence_redis_conflict(pmcf);
    }

    value = cf->args->elts;

    return ngx_presence_redis_parse_cluster(cf, &pmcf->redis, &value[1],
                                            cf->args->nelts - 1);
}


/* one Redis, a Sentinel set or a cluster: the one given before */

static char *
ngx_http_presence_redis_conflict(ngx_http_presence_main_conf_t *pmcf)
{
    if (pmcf->redis.name.data) {
        return "conflicts with \"presence_redis\"";
    }

    if (pmcf->redis.sentinels) {
        return "conflicts with \"presence_redis_sentinel\"";
    }

    return "conflicts with \"presence_redis_cluster\"";
}


static char *
ngx_http_presence_content(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    ngx_str_t                         *value;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_presence_main_conf_t     *pmcf;
    ngx_http_compile_complex_value_t   ccv;

    /* one presence handler per location */

    if (plcf->handler == cmd->offset) {
        return "is duplicate";
    }

    if (plcf->handler) {
        return "conflicts with another presence handler in this location";
    }

    plcf->handler = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    switch (plcf->handler) {
    case NGX_HTTP_PRESENCE_ONLINE:
        clcf->handler = ngx_http_presence_online_handler;
        break;
    case NGX_HTTP_PRESENCE_STATUS:
        clcf->handler = ngx_http_presence_status_handler;
        break;
    case NGX_HTTP_PRESENCE_STREAM:
        clcf->handler = ngx_http_presence_stream_handler;
        break;
    default:
        clcf->handler = ngx_http_presence_update_handler;
        break;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_presence_module);
    pmcf->used = 1;

    if (cf->args->nelts == 1) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    plcf->identity = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (plcf->identity == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = plcf->identity;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_check_msec(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *msp = data;

    if (*msp == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_check_prefix(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *prefix = data;

    /* a brace would move the Redis Cluster hash tag off the room */

    if (ngx_strlchr(prefix->data, prefix->data + prefix->len, '{')
        || ngx_strlchr(prefix->data, prefix->data + prefix->len, '}'))
    {
        return "must not contain \"{\" or \"}\"";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_check_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_conf_num_bounds_t *bounds = post;
    ngx_int_t             *np = data;

    u_char  *p;

    if (*np >= bounds->low && (bounds->high == -1 || *np <= bounds->high)) {
        return NGX_CONF_OK;
    }

    p = ngx_pnalloc(cf->pool,
                    sizeof("must be between  and ") + 2 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    if (bounds->high == -1) {
        ngx_sprintf(p, "must be %i or more%Z", bounds->low);

    } else {
        ngx_sprintf(p, "must be between %i and %i%Z",
                    bounds->low, bounds->high);
    }

    return (char *) p;
}


static char *
ngx_http_presence_check_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}

