
/*
 * ngx_http_presence_module: who is online, answered by nginx itself.
 *
 * This file is the HTTP side: directives, the content handlers, request
 * parsing and the JSON answers.  The Redis side is ngx_presence_redis.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_md5.h>

#include "ngx_presence.h"
#include "ngx_http_presence_input.h"


#define NGX_HTTP_PRESENCE_HEARTBEAT  1
#define NGX_HTTP_PRESENCE_LEAVE      2
#define NGX_HTTP_PRESENCE_ONLINE     3
#define NGX_HTTP_PRESENCE_STATUS     4

/* bytes of the MD5 of a listing that make its ETag */
#define NGX_HTTP_PRESENCE_ETAG_LEN   8

/* the largest presence_online_limit */
#define NGX_HTTP_PRESENCE_LIMIT_MAX  1000000

/* listings a worker keeps for presence_online_cache */
#define NGX_HTTP_PRESENCE_CACHE_MAX  1024

/* worker slots in the status zone: old and new workers during a reload */
#define NGX_HTTP_PRESENCE_WORKERS    256


typedef struct {
    ngx_presence_counters_t     counters;
    ngx_presence_worker_t       workers[NGX_HTTP_PRESENCE_WORKERS];
} ngx_http_presence_shctx_t;


typedef struct {
    ngx_presence_redis_conf_t   redis;
    ngx_shm_zone_t             *shm_zone;
    ngx_flag_t                  used;
} ngx_http_presence_main_conf_t;


typedef struct {
    ngx_uint_t                  handler;
    ngx_http_complex_value_t   *identity;
    ngx_http_complex_value_t   *room;
    ngx_msec_t                  ttl;
    ngx_str_t                   key_prefix;
    ngx_uint_t                  online_limit;
    ngx_uint_t                  max_id_length;
    size_t                      max_body_size;
    ngx_msec_t                  online_cache;

    /* the TTL as Redis takes it (ms) and as the JSON shows it (s) */
    ngx_str_t                   ttl_ms;
    ngx_str_t                   ttl_json;
} ngx_http_presence_loc_conf_t;


/*
 * A listing kept by a worker for presence_online_cache, found by its
 * location, Redis key and limit.
 */

typedef struct {
    ngx_str_node_t              sn;
    ngx_queue_t                 queue;
    /* when the query that made the copy was sent */
    ngx_msec_t                  fetched;
    ngx_str_t                   body;
    ngx_str_t                   etag;
    unsigned                    updating:1;
} ngx_http_presence_cache_node_t;


typedef struct {
    ngx_http_request_t         *request;
    ngx_presence_cmd_t         *cmd;
    ngx_event_t                 timeout;
    ngx_uint_t                  script;
    ngx_str_t                   user;
    ngx_str_t                   room;
    ngx_str_t                   key;
    ngx_str_t                   arg;
    ngx_uint_t                  limit;

    /* this request refreshes the cached listing, asked at cache_start */
    ngx_http_presence_cache_node_t  *cache;
    ngx_msec_t                  cache_start;
} ngx_http_presence_ctx_t;


/* a member of a listing, as it is sorted and written */

typedef struct {
    uint64_t                    prefix;
    ngx_str_t                   name;
    size_t                      escape;
} ngx_http_presence_member_t;


typedef struct {
    ngx_uint_t                  status;
    ngx_str_t                   code;
    ngx_str_t                   message;
} ngx_http_presence_err_t;





static ngx_int_t ngx_http_presence_update_handler(ngx_http_request_t *r);
static void ngx_http_presence_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_online_handler(ngx_http_request_t *r);
static ngx_http_presence_ctx_t *ngx_http_presence_create_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_start(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_prepare(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_http_presence_cache_node_t *ngx_http_presence_cache_lookup(
    ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_cache_store(
    ngx_http_presence_cache_node_t *node, ngx_msec_t start, ngx_str_t *body,
    ngx_str_t *etag);
static void ngx_http_presence_cache_evict(ngx_msec_t age);
static void ngx_http_presence_cache_free(void);
static void ngx_http_presence_cache_delete(
    ngx_http_presence_cache_node_t *node);
static ngx_int_t ngx_http_presence_send_listing(ngx_http_request_t *r,
    ngx_str_t *body, ngx_str_t *etag);
static ngx_int_t ngx_http_presence_fail(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_eval_identity(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_presence_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_cleanup(void *data);
static void ngx_http_presence_timeout_handler(ngx_event_t *ev);
static void ngx_http_presence_reply(void *data, redisReply *reply);
static ngx_int_t ngx_http_presence_respond(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_presence_respond_listing(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply);
static int ngx_libc_cdecl ngx_http_presence_cmp_member(const void *one,
    const void *two);
static ngx_int_t ngx_http_presence_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
static ngx_int_t ngx_http_presence_error(ngx_http_request_t *r,
    ngx_int_t err);
static ngx_int_t ngx_http_presence_add_header(ngx_http_request_t *r,
    ngx_str_t *key, ngx_str_t *value, ngx_table_elt_t **h);
static size_t ngx_http_presence_json_len(ngx_str_t *s);
static u_char *ngx_http_presence_json_str(u_char *p, ngx_str_t *s);


static ngx_int_t ngx_http_presence_status_handler(ngx_http_request_t *r);
static ngx_uint_t ngx_http_presence_status_text(ngx_http_request_t *r);
static u_char *ngx_http_presence_status_json(u_char *p,
    ngx_http_presence_shctx_t *sh);
static u_char *ngx_http_presence_status_prometheus(u_char *p,
    ngx_http_presence_shctx_t *sh);
static ngx_int_t ngx_http_presence_worker_alive(ngx_presence_worker_t *w);
static ngx_atomic_uint_t ngx_http_presence_start_time(ngx_pid_t pid,
    ngx_uint_t *zombie);
static ngx_uint_t ngx_http_presence_in_flight(ngx_http_presence_shctx_t *sh);
static ngx_int_t ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_presence_claim_slot(ngx_cycle_t *cycle,
    ngx_shm_zone_t *shm_zone);

static ngx_int_t ngx_http_presence_init_process(ngx_cycle_t *cycle);
static void ngx_http_presence_exit_process(ngx_cycle_t *cycle);
static void *ngx_http_presence_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_presence_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
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


static ngx_command_t  ngx_http_presence_commands[] = {

    { ngx_string("presence_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
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


static ngx_http_presence_err_t  ngx_http_presence_errors[] = {

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_user_id"),
      ngx_string("The user id must be a non-empty string of valid UTF-8, "
                 "without control characters, within the length limit.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_room"),
      ngx_string("The room must be a non-empty string of valid UTF-8, "
                 "without control characters, within the length limit.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_json"),
      ngx_string("The body must be one JSON object, such as "
                 "{\\\"user_id\\\": \\\"alice\\\"}.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_limit"),
      ngx_string("The limit must be a whole number of zero or more.") },

    { NGX_HTTP_UNAUTHORIZED, ngx_string("no_identity"),
      ngx_string("The request carries no user identity.") },

    { NGX_HTTP_NOT_ALLOWED, ngx_string("method_not_allowed"),
      ngx_string("This method is not allowed here; see the Allow header.") },

    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, ngx_string("body_too_large"),
      ngx_string("The body is larger than this location accepts.") },

    { NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, ngx_string("unsupported_media_type"),
      ngx_string("Send the body as application/json or text/plain.") },

    { NGX_HTTP_SERVICE_UNAVAILABLE, ngx_string("redis_unavailable"),
      ngx_string("The presence store is unavailable; try again shortly.") },

    { NGX_HTTP_GATEWAY_TIME_OUT, ngx_string("redis_timeout"),
      ngx_string("The presence store did not answer in time.") }
};


static ngx_http_complex_value_t  ngx_http_presence_default_room = {
    ngx_string("global"), NULL, NULL, NULL, { 0 }
};


static ngx_str_t  ngx_http_presence_allow_post = ngx_string("POST");
static ngx_str_t  ngx_http_presence_allow_get = ngx_string("GET, HEAD");


/* presence_status: name, what it counts, where */

typedef struct {
    ngx_str_t                   name;
    ngx_str_t                   help;
    size_t                      offset;
} ngx_http_presence_counter_t;


#define ngx_http_presence_counter(name, help)                                 \
    { ngx_string(#name), ngx_string(help),                                    \
      offsetof(ngx_presence_counters_t, name) }

static ngx_http_presence_counter_t  ngx_http_presence_counter_list[] = {
    ngx_http_presence_counter(heartbeats, "Heartbeats answered 200."),
    ngx_http_presence_counter(leaves, "Leaves answered 200."),
    ngx_http_presence_counter(listings,
                              "Listings and lookups answered 200 or 304."),
    ngx_http_presence_counter(client_errors,
                              "Requests answered with a 4xx error."),
    ngx_http_presence_counter(redis_unavailable,
                              "Requests answered 503: Redis unavailable."),
    ngx_http_presence_counter(redis_timeouts,
                              "Requests answered 504: Redis too slow."),
    ngx_http_presence_counter(redis_reconnects,
                              "Redis connections opened again after a drop."),
    ngx_http_presence_counter(redis_rtt_us_sum,
                              "Microseconds from command to reply, summed."),
    ngx_http_presence_counter(redis_rtt_count, "Redis replies timed.")
};


/* until the status zone is there, and in processes without a slot */
static ngx_presence_counters_t  ngx_http_presence_local_counters;
static ngx_presence_worker_t    ngx_http_presence_local_worker;

ngx_presence_counters_t  *ngx_presence_counters =
    &ngx_http_presence_local_counters;
ngx_presence_worker_t    *ngx_presence_worker =
    &ngx_http_presence_local_worker;


/* the cached listings of this worker, oldest first in the queue */
static ngx_rbtree_t       ngx_http_presence_cache;
static ngx_rbtree_node_t  ngx_http_presence_cache_sentinel;
static ngx_queue_t        ngx_http_presence_cache_queue;
static ngx_uint_t         ngx_http_presence_cache_count;


static ngx_int_t
ngx_http_presence_update_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc, status;
    ngx_http_presence_ctx_t       *ctx;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (r->method != NGX_HTTP_POST) {
        rc = NGX_HTTP_PRESENCE_ERR_METHOD;
        goto discard;
    }

    ctx = ngx_http_presence_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->script = (plcf->handler == NGX_HTTP_PRESENCE_HEARTBEAT)
                  ? NGX_PRESENCE_HEARTBEAT : NGX_PRESENCE_LEAVE;

    if (plcf->identity) {

        /*
         * the identity comes from nginx: any body is ignored; a broken
         * chunked body is nginx's own 400, see below
         */

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_presence_eval_identity(r, ctx);

        if (rc == NGX_OK) {
            rc = ngx_http_presence_start(r, ctx);
        }

        if (rc == NGX_OK) {
            r->main->count++;
            return NGX_DONE;
        }

        return ngx_http_presence_fail(r, rc);
    }

    if (r->headers_in.content_type
        && !ngx_http_presence_media_type_ok(&r->headers_in.content_type->value))
    {
        rc = NGX_HTTP_PRESENCE_ERR_MEDIA_TYPE;
        goto discard;
    }

    if (r->headers_in.content_length_n > (off_t) plcf->max_body_size) {
        rc = NGX_HTTP_PRESENCE_ERR_TOO_LARGE;
        goto discard;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;

discard:

    /*
     * The answer comes before the body: nginx reads and drops it.  A
     * chunked body that nginx cannot parse is answered 400 by nginx itself,
     * here as in every handler and as ngx_http_read_client_request_body()
     * does: the request is broken below the API, so no API error fits, and
     * nginx closes the connection, whose next bytes it could no longer tell
     * from a request.  Never a 500: the client is at fault.  A broken chunk
     * that comes after the answer only closes the connection.
     */

    status = ngx_http_discard_request_body(r);
    if (status != NGX_OK) {
        return status;
    }

    return ngx_http_presence_error(r, rc);
}


static void
ngx_http_presence_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      body;
    ngx_http_presence_ctx_t       *ctx;
    ngx_http_presence_loc_conf_t  *plcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_presence_module);
    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = ngx_http_presence_read_body(r, &body);

    if (rc == NGX_OK) {
        /* a JSON string decodes to no more bytes than it takes */

        ctx->user.data = ngx_pnalloc(r->pool, body.len);
        if (ctx->user.data == NULL) {
            rc = NGX_ERROR;

        } else {
            rc = ngx_http_presence_parse_json(body.data, body.len,
                                              &ctx->user);
        }
    }

    if (rc == NGX_OK
        && !ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                       plcf->max_id_length))
    {
        rc = NGX_HTTP_PRESENCE_ERR_USER;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_presence_start(r, ctx);
    }

    if (rc == NGX_OK) {
        /* the reply or the timer finalizes the request */
        return;
    }

    ngx_http_finalize_request(r, ngx_http_presence_fail(r, rc));
}


static ngx_int_t
ngx_http_presence_online_handler(ngx_http_request_t *r)
{
    size_t                           i;
    u_char                          *p;
    ngx_int_t                        rc, limit;
    ngx_str_t                        value, body, etag;
    ngx_http_presence_ctx_t         *ctx;
    ngx_http_presence_loc_conf_t    *plcf;
    ngx_http_presence_cache_node_t  *node;

    /* nginx's own 400 for a broken chunked body: see the update handler */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_METHOD);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    ctx = ngx_http_presence_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_arg(r, (u_char *) "user_id", 7, &value) == NGX_OK) {

        p = ngx_pnalloc(r->pool, value.len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /*
         * decoded as browsers encode a form: '+' is a space.  It becomes
         * one before the %XX are decoded, so that "%2B" stays a '+'
         */

        for (i = 0; i < value.len; i++) {
            p[i] = (value.data[i] == '+') ? ' ' : value.data[i];
        }

        value.data = p;
        ctx->user.data = p;

        /* in place: a decoded byte never takes more room than its %XX */
        ngx_unescape_uri(&p, &value.data, value.len, 0);
        ctx->user.len = p - ctx->user.data;

        if (!ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                        plcf->max_id_length))
        {
            return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_USER);
        }

        ctx->script = NGX_PRESENCE_LOOKUP;

    } else {
        ctx->limit = plcf->online_limit;

        if (ngx_http_arg(r, (u_char *) "limit", 5, &value) == NGX_OK) {
            limit = ngx_http_presence_parse_limit(&value, plcf->online_limit);

            if (limit == NGX_ERROR) {
                return ngx_http_presence_error(r,
                                               NGX_HTTP_PRESENCE_ERR_LIMIT);
            }

            ctx->limit = limit;
        }

        ctx->script = NGX_PRESENCE_ONLINE;
    }

    rc = ngx_http_presence_prepare(r, ctx);
    if (rc != NGX_OK) {
        return ngx_http_presence_fail(r, rc);
    }

    if (ctx->script == NGX_PRESENCE_ONLINE && plcf->online_cache) {
        node = ngx_http_presence_cache_lookup(r, ctx);

        if (node) {
            /*
             * the node may change before a slow client has it all; its
             * body and etag lie together in one allocation
             */

            body.len = node->body.len + node->etag.len;
            body.data = ngx_pnalloc(r->pool, body.len);
            if (body.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_memcpy(body.data, node->body.data, body.len);

            etag.data = body.data + node->body.len;
            etag.len = node->etag.len;
            body.len = node->body.len;

            return ngx_http_presence_send_listing(r, &body, &etag);
        }
    }

    rc = ngx_http_presence_query(r, ctx);

    if (rc == NGX_OK) {
        r->main->count++;
        return NGX_DONE;
    }

    return ngx_http_presence_fail(r, rc);
}


/*
 * presence_status: the counters of all workers and the Redis connection
 * of each, as JSON, or as Prometheus text when asked for with
 * ?format=prometheus or an Accept header that prefers text/plain.
 */

static ngx_int_t
ngx_http_presence_status_handler(ngx_http_request_t *r)
{
    size_t                          size;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_http_presence_shctx_t      *sh;
    ngx_http_presence_main_conf_t  *pmcf;

    static ngx_str_t  vary = ngx_string("Vary");
    static ngx_str_t  accept = ngx_string("Accept");

    /* nginx's own 400 for a broken chunked body: see the update handler */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_METHOD);
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    sh = pmcf->shm_zone->data;

    /* the format depends on Accept: a cache must keep one of each */

    if (ngx_http_presence_add_header(r, &vary, &accept, NULL) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a generous bound: every line at its longest */

    size = (sizeof(ngx_http_presence_counter_list)
            / sizeof(ngx_http_presence_counter_t)) * 256 + 512
           + NGX_HTTP_PRESENCE_WORKERS * 128;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_presence_status_text(r)) {
        b->last = ngx_http_presence_status_prometheus(b->last, sh);

        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4; charset=utf-8");
        r->headers_out.content_type_len = sizeof("text/plain") - 1;

    } else {
        b->last = ngx_http_presence_status_json(b->last, sh);
    }

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);
}


/*
 * Text for ?format=prometheus, or when the Accept header lines weigh
 * text/plain above application/json (ngx_http_presence_accept_text()).
 * All the lines: before nginx 1.23 headers_in.accept holds the first only.
 */

static ngx_uint_t
ngx_http_presence_status_text(ngx_http_request_t *r)
{
    ngx_str_t                    format;
    ngx_uint_t                   i;
    ngx_list_part_t             *part;
    ngx_table_elt_t             *h;
    ngx_http_presence_accept_t   accept;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK
        && format.len == 10
        && ngx_strncmp(format.data, "prometheus", 10) == 0)
    {
        return 1;
    }

    ngx_memzero(&accept, sizeof(ngx_http_presence_accept_t));

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0
            && h[i].key.len == sizeof("Accept") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept",
                               sizeof("Accept") - 1)
               == 0)
        {
            ngx_http_presence_accept(&accept, &h[i].value);
        }
    }

    return ngx_http_presence_accept_text(&accept);
}


static u_char *
ngx_http_presence_status_json(u_char *p, ngx_http_presence_shctx_t *sh)
{
    ngx_uint_t                    i, n, in_flight;
    ngx_atomic_t                 *v;
    ngx_presence_worker_t        *w;
    ngx_http_presence_counter_t  *c;

    *p++ = '{';

    c = ngx_http_presence_counter_list;
    n = sizeof(ngx_http_presence_counter_list)
        / sizeof(ngx_http_presence_counter_t);

    in_flight = ngx_http_presence_in_flight(sh);

    for (i = 0; i < n; i++) {
        v = (ngx_atomic_t *) ((u_char *) &sh->counters + c[i].offset);
        p = ngx_sprintf(p, "\"%V\":%uA,", &c[i].name, *v);
    }

    p = ngx_sprintf(p, "\"redis_in_flight\":%ui,\"workers\":[", in_flight);

    n = 0;

    for (i = 0; i < NGX_HTTP_PRESENCE_WORKERS; i++) {
        w = &sh->workers[i];

        if (!ngx_http_presence_worker_alive(w)) {
            continue;
        }

        p = ngx_sprintf(p, "%s{\"pid\":%uA,\"redis_connected\":%s,"
                        "\"redis_in_flight\":%uA,\"redis_reconnects\":%uA}",
                        n++ ? "," : "", w->pid,
                        w->connected ? "true" : "false",
                        w->in_flight, w->reconnects);
    }

    return ngx_cpymem(p, "]}", 2);
}


static u_char *
ngx_http_presence_status_prometheus(u_char *p, ngx_http_presence_shctx_t *sh)
{
    ngx_uint_t                    i, n, in_flight;
    ngx_atomic_t                 *v;
    ngx_presence_worker_t        *w;
    ngx_http_presence_counter_t  *c;

    c = ngx_http_presence_counter_list;
    n = sizeof(ngx_http_presence_counter_list)
        / sizeof(ngx_http_presence_counter_t);

    for (i = 0; i < n; i++) {
        v = (ngx_atomic_t *) ((u_char *) &sh->counters + c[i].offset);

        p = ngx_sprintf(p, "# HELP nginx_presence_%V_total %V\n"
                        "# TYPE nginx_presence_%V_total counter\n"
                        "nginx_presence_%V_total %uA\n",
                        &c[i].name, &c[i].help, &c[i].name, &c[i].name, *v);
    }

    in_flight = ngx_http_presence_in_flight(sh);

    p = ngx_sprintf(p, "# HELP nginx_presence_redis_in_flight "
                    "Commands sent to Redis and not answered yet.\n"
                    "# TYPE nginx_presence_redis_in_flight gauge\n"
                    "nginx_presence_redis_in_flight %ui\n"
                    "# HELP nginx_presence_redis_connected "
                    "Whether a worker's Redis connection is up.\n"
                    "# TYPE nginx_presence_redis_connected gauge\n",
                    in_flight);

    for (i = 0; i < NGX_HTTP_PRESENCE_WORKERS; i++) {
        w = &sh->workers[i];

        if (ngx_http_presence_worker_alive(w)) {
            p = ngx_sprintf(p, "nginx_presence_redis_connected{pid=\"%uA\"} "
                            "%d\n", w->pid, w->connected ? 1 : 0);
        }
    }

    return p;
}


static ngx_http_presence_ctx_t *
ngx_http_presence_create_ctx(ngx_http_request_t *r)
{
    ngx_http_cleanup_t       *cln;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_presence_cleanup;
    cln->data = ctx;

    ctx->request = r;

    ctx->timeout.handler = ngx_http_presence_timeout_handler;
    ctx->timeout.data = ctx;
    ctx->timeout.log = r->connection->log;

    ngx_http_set_ctx(r, ctx, ngx_http_presence_module);

    return ctx;
}


/* NGX_OK, NGX_ERROR, or an error to answer with */

static ngx_int_t
ngx_http_presence_eval_identity(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (ngx_http_complex_value(r, plcf->identity, &ctx->user) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->user.len == 0) {
        return NGX_HTTP_PRESENCE_ERR_IDENTITY;
    }

    if (!ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                    plcf->max_id_length))
    {
        return NGX_HTTP_PRESENCE_ERR_USER;
    }

    return NGX_OK;
}


/* the room, then the command to Redis: NGX_OK, NGX_ERROR or an error */

static ngx_int_t
ngx_http_presence_start(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_presence_prepare(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_presence_query(r, ctx);
}


/*
 * The room and the Redis key; for a listing, followed in the same buffer
 * by the limit, which makes the key of the cached listing too.
 */

static ngx_int_t
ngx_http_presence_prepare(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    u_char                        *p;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (ngx_http_complex_value(r, plcf->room, &ctx->room) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ngx_http_presence_valid_id(ctx->room.data, ctx->room.len,
                                    plcf->max_id_length))
    {
        return NGX_HTTP_PRESENCE_ERR_ROOM;
    }

    /* the braces make the room a Redis Cluster hash tag */

    ctx->key.len = plcf->key_prefix.len + ctx->room.len + 2;
    ctx->key.data = ngx_pnalloc(r->pool, ctx->key.len + NGX_INT_T_LEN);
    if (ctx->key.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(ctx->key.data, plcf->key_prefix.data,
                   plcf->key_prefix.len);
    *p++ = '{';
    p = ngx_cpymem(p, ctx->room.data, ctx->room.len);
    *p++ = '}';

    if (ctx->script == NGX_PRESENCE_ONLINE) {
        ctx->arg.data = p;
        ctx->arg.len = ngx_sprintf(p, "%ui", ctx->limit) - p;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_fail(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_presence_error(r, rc);
}


/*
 * Gathers the body into one null-terminated buffer, wherever nginx put
 * it: one buffer, several (chunked), or a temporary file.  NGX_OK,
 * NGX_ERROR, or too large for presence_max_body_size, which a chunked body
 * can only show once it is read.
 */

static ngx_int_t
ngx_http_presence_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char                        *p;
    off_t                          len;
    ssize_t                        n;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    len = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            len += ngx_buf_size(cl->buf);
        }
    }

    if (len > (off_t) plcf->max_body_size) {
        return NGX_HTTP_PRESENCE_ERR_TOO_LARGE;
    }

    p = ngx_pnalloc(r->pool, (size_t) len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = (size_t) len;

    for (cl = r->request_body ? r->request_body->bufs : NULL;
         cl;
         cl = cl->next)
    {
        b = cl->buf;

        if (ngx_buf_size(b) == 0) {
            continue;
        }

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        /* at most presence_max_body_size from a local temporary file */

        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "presence: cannot read the request body from "
                          "\"%V\"", &b->file->name);
            return NGX_ERROR;
        }

        p += n;
    }

    *p = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_query(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_str_t                       args[NGX_PRESENCE_MAX_ARGS];
    ngx_uint_t                      nargs;
    ngx_http_presence_loc_conf_t   *plcf;
    ngx_http_presence_main_conf_t  *pmcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    switch (ctx->script) {

    case NGX_PRESENCE_HEARTBEAT:
        args[0] = ctx->user;
        args[1] = plcf->ttl_ms;
        nargs = 2;
        break;

    case NGX_PRESENCE_ONLINE:
        args[0] = ctx->arg;
        nargs = 1;
        break;

    default: /* NGX_PRESENCE_LEAVE, NGX_PRESENCE_LOOKUP */
        args[0] = ctx->user;
        nargs = 1;
        break;
    }

    ctx->cmd = ngx_presence_redis_eval(ctx->script, &ctx->key, args, nargs,
                                       ngx_http_presence_reply, ctx,
                                       r->connection->log);

    if (ctx->cmd == NULL) {
        return NGX_HTTP_PRESENCE_ERR_UNAVAILABLE;
    }

    ngx_add_timer(&ctx->timeout, pmcf->redis.timeout);

    /* a client that goes away ends the request; the reply is dropped */

    if (!r->discard_body) {
        r->read_event_handler = ngx_http_test_reading;
    }

    return NGX_OK;
}


static void
ngx_http_presence_cleanup(void *data)
{
    ngx_http_presence_ctx_t  *ctx = data;

    if (ctx->cmd) {
        ngx_presence_redis_detach(ctx->cmd);
        ctx->cmd = NULL;
    }

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    /* a refresh that failed: the next request tries again */

    if (ctx->cache) {
        ctx->cache->updating = 0;
        ctx->cache = NULL;
    }
}


static void
ngx_http_presence_timeout_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "presence: redis timeout");

    ngx_presence_redis_detach(ctx->cmd);
    ctx->cmd = NULL;

    ngx_presence_redis_timed_out();

    ngx_http_finalize_request(r,
                     ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_TIMEOUT));
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_presence_reply(void *data, redisReply *reply)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx;

    ctx = data;
    r = ctx->request;
    c = r->connection;

    ctx->cmd = NULL;

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    ngx_http_finalize_request(r, ngx_http_presence_respond(r, ctx, reply));
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_presence_respond(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx,
    redisReply *reply)
{
    size_t                         len;
    ngx_buf_t                     *b;
    long long                      n;
    ngx_http_presence_loc_conf_t  *plcf;

    if (reply == NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    if (ctx->script == NGX_PRESENCE_ONLINE) {
        return ngx_http_presence_respond_listing(r, ctx, reply);
    }

    if (reply->type != REDIS_REPLY_INTEGER) {
        goto invalid;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    n = reply->integer;

    len = sizeof("{\"user_id\":,\"online\":,\"expires_in_ms\":}") - 1
          + sizeof(",\"room\":,\"ttl\":") - 1
          + ngx_http_presence_json_len(&ctx->user)
          + ngx_http_presence_json_len(&ctx->room)
          + plcf->ttl_json.len + NGX_INT64_LEN;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"user_id\":", 11);
    b->last = ngx_http_presence_json_str(b->last, &ctx->user);

    switch (ctx->script) {
    case NGX_PRESENCE_HEARTBEAT:
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->heartbeats, 1);
        break;
    case NGX_PRESENCE_LEAVE:
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->leaves, 1);
        break;
    default: /* NGX_PRESENCE_LOOKUP */
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->listings, 1);
        break;
    }

    if (ctx->script == NGX_PRESENCE_LOOKUP) {
        if (n < 0) {
            n = 0;
        }

        b->last = ngx_sprintf(b->last, ",\"online\":%s,\"expires_in_ms\":%L}",
                              n ? "true" : "false", (int64_t) n);

    } else {
        b->last = ngx_cpymem(b->last, ",\"room\":", 8);
        b->last = ngx_http_presence_json_str(b->last, &ctx->room);

        if (ctx->script == NGX_PRESENCE_HEARTBEAT) {
            b->last = ngx_sprintf(b->last, ",\"ttl\":%V", &plcf->ttl_json);
        }

        b->last = ngx_sprintf(b->last, ",\"online\":%L}", (int64_t) n);
    }

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);

invalid:

    ngx_presence_redis_unexpected(reply);

    return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
}


static ngx_int_t
ngx_http_presence_respond_listing(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply)
{
    u_char                         digest[16], *etag;
    size_t                         len, i, n, nusers;
    ngx_buf_t                     *b;
    ngx_str_t                      value, body;
    ngx_md5_t                      md5;
    redisReply                    *el;
    ngx_http_presence_member_t    *users, *u;
    ngx_http_presence_loc_conf_t  *plcf;

    /* EXEC of the count and, unless the limit is 0, the members */

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != (ctx->limit ? 2 : 1)
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || (ctx->limit && reply->element[1]->type != REDIS_REPLY_ARRAY))
    {
        ngx_presence_redis_unexpected(reply);
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    nusers = ctx->limit ? reply->element[1]->elements : 0;

    users = ngx_palloc(r->pool,
                       (nusers + 1) * sizeof(ngx_http_presence_member_t));
    if (users == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = sizeof("{\"room\":,\"ttl\":,\"count\":,\"users\":[]}") - 1
          + ngx_http_presence_json_len(&ctx->room)
          + plcf->ttl_json.len + NGX_INT64_LEN;

    for (i = 0; i < nusers; i++) {
        el = reply->element[1]->element[i];

        if (el->type != REDIS_REPLY_STRING) {
            ngx_presence_redis_unexpected(el);
            return ngx_http_presence_error(r,
                                           NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
        }

        u = &users[i];

        u->name.data = (u_char *) el->str;
        u->name.len = el->len;
        u->escape = ngx_escape_json(NULL, u->name.data, u->name.len);

        /* the first 8 bytes, big-endian, settle most comparisons */

        u->prefix = 0;

        for (n = 0; n < 8; n++) {
            u->prefix = (u->prefix << 8)
                        | (n < u->name.len ? u->name.data[n] : 0);
        }

        len += u->name.len + u->escape + 3;
    }

    /* Redis gave the most recently seen first; people read names sorted */

    ngx_qsort(users, nusers, sizeof(ngx_http_presence_member_t),
              ngx_http_presence_cmp_member);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"room\":", 8);
    b->last = ngx_http_presence_json_str(b->last, &ctx->room);
    b->last = ngx_sprintf(b->last, ",\"ttl\":%V,\"count\":%L,\"users\":[",
                          &plcf->ttl_json,
                          (int64_t) reply->element[0]->integer);

    for (i = 0; i < nusers; i++) {
        u = &users[i];

        if (i) {
            *b->last++ = ',';
        }

        *b->last++ = '"';

        if (u->escape) {
            b->last = (u_char *) ngx_escape_json(b->last, u->name.data,
                                                 u->name.len);
        } else {
            b->last = ngx_cpymem(b->last, u->name.data, u->name.len);
        }

        *b->last++ = '"';
    }

    b->last = ngx_cpymem(b->last, "]}", 2);

    /*
     * A strong ETag is a hash of the very body: it changes when someone
     * comes or goes, not when a listed user only heartbeats again.
     */

    ngx_md5_init(&md5);
    ngx_md5_update(&md5, b->pos, b->last - b->pos);
    ngx_md5_final(digest, &md5);

    etag = ngx_pnalloc(r->pool, NGX_HTTP_PRESENCE_ETAG_LEN * 2 + 2);
    if (etag == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    value.data = etag;
    *etag++ = '"';
    etag = ngx_hex_dump(etag, digest, NGX_HTTP_PRESENCE_ETAG_LEN);
    *etag++ = '"';
    value.len = etag - value.data;

    body.data = b->pos;
    body.len = b->last - b->pos;

    if (ctx->cache) {
        ngx_http_presence_cache_store(ctx->cache, ctx->cache_start, &body,
                                      &value);
        ctx->cache = NULL;
    }

    return ngx_http_presence_send_listing(r, &body, &value);
}


/* body and etag must live as long as the request */

/*
 * At exit: the module is unloaded next, and what only its static variables
 * point to would be a leak to valgrind.
 */

static void
ngx_http_presence_cache_free(void)
{
    ngx_queue_t                     *q;
    ngx_http_presence_cache_node_t  *node;

    while (!ngx_queue_empty(&ngx_http_presence_cache_queue)) {
        q = ngx_queue_head(&ngx_http_presence_cache_queue);
        node = ngx_queue_data(q, ngx_http_presence_cache_node_t, queue);

        ngx_http_presence_cache_delete(node);
    }
}


static ngx_int_t
ngx_http_presence_send_listing(ngx_http_request_t *r, ngx_str_t *body,
    ngx_str_t *etag)
{
    ngx_buf_t        *b;
    ngx_table_elt_t  *h;

    static ngx_str_t  etag_name = ngx_string("ETag");

    (void) ngx_atomic_fetch_add(&ngx_presence_counters->listings, 1);

    if (ngx_http_presence_add_header(r, &etag_name, etag, &h) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.etag = h;

    if (r->headers_in.if_none_match
        && ngx_http_presence_etag_match(&r->headers_in.if_none_match->value,
                                        etag))
    {
        return ngx_http_presence_send(r, NGX_HTTP_NOT_MODIFIED, NULL);
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);
}


/*
 * presence_online_cache.  Returns the node to answer from: a copy younger
 * than the setting, or an older one while another request refreshes it,
 * which takes at most presence_redis_timeout.  NULL: ask Redis; ctx->cache
 * is then the node this request refreshes.  A copy is never used without
 * a refresh on its way once it is too old, and never at all once it is
 * older than the setting and the timeout together, whatever Redis does.
 */

static ngx_http_presence_cache_node_t *
ngx_http_presence_cache_lookup(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char                          *p;
    size_t                           len;
    uint32_t                         hash;
    ngx_str_t                        key;
    ngx_msec_t                       age;
    ngx_http_presence_loc_conf_t    *plcf;
    ngx_http_presence_main_conf_t   *pmcf;
    ngx_http_presence_cache_node_t  *node;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    /* the location makes part of the key: the body shows its ttl */

    key.len = sizeof(void *) + ctx->key.len + ctx->arg.len;
    key.data = ngx_pnalloc(r->pool, key.len);
    if (key.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(key.data, &plcf, sizeof(void *));
    ngx_memcpy(p, ctx->key.data, ctx->key.len + ctx->arg.len);

    hash = ngx_crc32_long(key.data, key.len);

    node = (ngx_http_presence_cache_node_t *)
               ngx_str_rbtree_lookup(&ngx_http_presence_cache, &key, hash);

    if (node) {
        age = ngx_current_msec - node->fetched;

        if (node->body.data
            && (age < plcf->online_cache
                || (node->updating
                    && age < plcf->online_cache + pmcf->redis.timeout)))
        {
            return node;
        }

        if (!node->updating) {
            node->updating = 1;
            ctx->cache = node;
            ctx->cache_start = ngx_current_msec;
        }

        return NULL;
    }

    ngx_http_presence_cache_evict(plcf->online_cache);

    if (ngx_http_presence_cache_count >= NGX_HTTP_PRESENCE_CACHE_MAX) {
        return NULL;
    }

    len = sizeof(ngx_http_presence_cache_node_t) + key.len;

    node = ngx_calloc(len, r->connection->log);
    if (node == NULL) {
        return NULL;
    }

    node->sn.node.key = hash;
    node->sn.str.data = (u_char *) node
                        + sizeof(ngx_http_presence_cache_node_t);
    node->sn.str.len = key.len;
    ngx_memcpy(node->sn.str.data, key.data, key.len);

    ngx_rbtree_insert(&ngx_http_presence_cache, &node->sn.node);
    ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);
    ngx_http_presence_cache_count++;

    node->updating = 1;
    ctx->cache = node;
    ctx->cache_start = ngx_current_msec;

    return NULL;
}


static void
ngx_http_presence_cache_store(ngx_http_presence_cache_node_t *node,
    ngx_msec_t start, ngx_str_t *body, ngx_str_t *etag)
{
    u_char  *p;

    node->updating = 0;

    p = ngx_alloc(body->len + etag->len, ngx_cycle->log);
    if (p == NULL) {
        return;
    }

    if (node->body.data) {
        ngx_free(node->body.data);
    }

    node->body.data = p;
    node->body.len = body->len;
    p = ngx_cpymem(p, body->data, body->len);

    node->etag.data = p;
    node->etag.len = etag->len;
    ngx_memcpy(p, etag->data, etag->len);

    /* the copy is as old as the query: Redis answered it since */
    node->fetched = start;

    ngx_queue_remove(&node->queue);
    ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);
}


/*
 * Frees the oldest listings that are past their age, and the oldest one
 * anyway when the cache is full; never one that a request is refreshing.
 */

static void
ngx_http_presence_cache_evict(ngx_msec_t age)
{
    ngx_queue_t                     *q;
    ngx_http_presence_cache_node_t  *node;

    while (!ngx_queue_empty(&ngx_http_presence_cache_queue)) {

        q = ngx_queue_head(&ngx_http_presence_cache_queue);
        node = ngx_queue_data(q, ngx_http_presence_cache_node_t, queue);

        if (node->updating
            || (ngx_current_msec - node->fetched < age
                && ngx_http_presence_cache_count
                   < NGX_HTTP_PRESENCE_CACHE_MAX))
        {
            return;
        }

        ngx_http_presence_cache_delete(node);
    }
}


static void
ngx_http_presence_cache_delete(ngx_http_presence_cache_node_t *node)
{
    ngx_queue_remove(&node->queue);
    ngx_rbtree_delete(&ngx_http_presence_cache, &node->sn.node);
    ngx_http_presence_cache_count--;

    if (node->body.data) {
        ngx_free(node->body.data);
    }

    ngx_free(node);
}


/* bytewise, as memcmp() orders: by the prefix first, then all of it */

static int ngx_libc_cdecl
ngx_http_presence_cmp_member(const void *one, const void *two)
{
    ngx_int_t                          rc;
    const ngx_http_presence_member_t  *a = one;
    const ngx_http_presence_member_t  *b = two;

    if (a->prefix != b->prefix) {
        return (a->prefix < b->prefix) ? -1 : 1;
    }

    rc = ngx_memcmp(a->name.data, b->name.data,
                    ngx_min(a->name.len, b->name.len));

    if (rc != 0) {
        return (int) rc;
    }

    return (a->name.len > b->name.len) - (a->name.len < b->name.len);
}


/* b == NULL: no body (304) */

static ngx_int_t
ngx_http_presence_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t     rc;
    ngx_chain_t   out;

    static ngx_str_t  cache_control = ngx_string("Cache-Control");
    static ngx_str_t  no_store = ngx_string("no-store");

    r->headers_out.status = status;

    if (ngx_http_presence_add_header(r, &cache_control, &no_store, NULL)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (b == NULL) {
        r->header_only = 1;
        r->headers_out.content_length_n = -1;

        return ngx_http_send_header(r);
    }

    if (r->headers_out.content_type.len == 0) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        ngx_str_set(&r->headers_out.charset, "utf-8");
    }
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_presence_error(ngx_http_request_t *r, ngx_int_t err)
{
    ngx_buf_t                     *b;
    ngx_str_t                      retry, *allow;
    ngx_http_presence_err_t       *e;
    ngx_http_presence_loc_conf_t  *plcf;

    static ngx_str_t  allow_name = ngx_string("Allow");
    static ngx_str_t  retry_after = ngx_string("Retry-After");

    e = &ngx_http_presence_errors[err - 1];

    switch (e->status) {
    case NGX_HTTP_SERVICE_UNAVAILABLE:
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->redis_unavailable,
                                    1);
        break;
    case NGX_HTTP_GATEWAY_TIME_OUT:
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->redis_timeouts, 1);
        break;
    default:
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->client_errors, 1);
        break;
    }

    if (err == NGX_HTTP_PRESENCE_ERR_METHOD) {
        plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

        allow = (plcf->handler == NGX_HTTP_PRESENCE_ONLINE
                 || plcf->handler == NGX_HTTP_PRESENCE_STATUS)
                ? &ngx_http_presence_allow_get : &ngx_http_presence_allow_post;

        if (ngx_http_presence_add_header(r, &allow_name, allow, NULL)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (err == NGX_HTTP_PRESENCE_ERR_UNAVAILABLE) {
        ngx_str_set(&retry, "1");

        if (ngx_http_presence_add_header(r, &retry_after, &retry, NULL)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    b = ngx_create_temp_buf(r->pool, sizeof("{\"error\":\"\",\"message\":\"\"}")
                                     - 1 + e->code.len + e->message.len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"error\":\"%V\",\"message\":\"%V\"}",
                          &e->code, &e->message);

    return ngx_http_presence_send(r, e->status, b);
}


static ngx_int_t
ngx_http_presence_add_header(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value, ngx_table_elt_t **hp)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *key;
    h->value = *value;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    if (hp) {
        *hp = h;
    }

    return NGX_OK;
}


static size_t
ngx_http_presence_json_len(ngx_str_t *s)
{
    return s->len + 2 + ngx_escape_json(NULL, s->data, s->len);
}


static u_char *
ngx_http_presence_json_str(u_char *p, ngx_str_t *s)
{
    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, s->data, s->len);
    *p++ = '"';

    return p;
}


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

    if (pmcf->shm_zone) {
        ngx_http_presence_claim_slot(cycle, pmcf->shm_zone);
    }

    ngx_rbtree_init(&ngx_http_presence_cache,
                    &ngx_http_presence_cache_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_http_presence_cache_queue);

    return ngx_presence_redis_init_process(cycle, &pmcf->redis);
}


static void
ngx_http_presence_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_presence_module);

    if (pmcf == NULL || !pmcf->used) {
        return;
    }

    ngx_presence_redis_exit_process(cycle);

    ngx_http_presence_cache_free();

    if (ngx_presence_worker != &ngx_http_presence_local_worker) {
        ngx_presence_worker->connected = 0;
        ngx_presence_worker->in_flight = 0;
        ngx_presence_worker->pid = 0;
    }
}


static ngx_int_t
ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t            *shpool;
    ngx_http_presence_shctx_t  *sh;

    if (data) {
        /* a reload: the counters go on */
        sh = data;
        goto done;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        sh = shpool->data;
        goto done;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_presence_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;

done:

    shm_zone->data = sh;
    ngx_presence_counters = &sh->counters;

    return NGX_OK;
}


/*
 * A slot of its own for this worker: a free one, or a dead worker's.  The
 * zone's mutex keeps two new workers from taking the same dead worker's
 * slot (a pid and a start time cannot be set in one atomic step); nginx's
 * master frees the mutex if a worker dies holding it.  The pid is written
 * last: a reader that sees it sees the rest.
 */

static void
ngx_http_presence_claim_slot(ngx_cycle_t *cycle, ngx_shm_zone_t *shm_zone)
{
    ngx_uint_t                  i;
    ngx_slab_pool_t            *shpool;
    ngx_presence_worker_t      *w;
    ngx_http_presence_shctx_t  *sh;

    sh = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < NGX_HTTP_PRESENCE_WORKERS; i++) {
        w = &sh->workers[i];

        if (ngx_http_presence_worker_alive(w)) {
            continue;
        }

        w->pid = 0;
        ngx_memory_barrier();

        w->in_flight = 0;
        w->reconnects = 0;
        w->connected = 0;
        w->start = ngx_http_presence_start_time(ngx_pid, NULL);
        ngx_memory_barrier();

        w->pid = (ngx_atomic_uint_t) ngx_pid;

        ngx_shmtx_unlock(&shpool->mutex);

        ngx_presence_worker = w;
        return;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                  "presence: no free status slot, this worker's redis "
                  "connection is not listed by presence_status");
}


/* commands in flight on the connections of all live workers */

static ngx_uint_t
ngx_http_presence_in_flight(ngx_http_presence_shctx_t *sh)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < NGX_HTTP_PRESENCE_WORKERS; i++) {
        if (ngx_http_presence_worker_alive(&sh->workers[i])) {
            n += sh->workers[i].in_flight;
        }
    }

    return n;
}


/*
 * A worker that crashed never clears its slot, and its pid may later be
 * another process's: kill(pid, 0) alone would take that process for the
 * worker, list it, sum its stale in_flight, and keep the slot from ever
 * being reused; it would also take a killed worker that the master has
 * not reaped yet, a zombie, for alive.  So a slot holds the pid and the
 * start time of the worker's process, which the worker reads itself when
 * it claims the slot, and the worker is alive while a process with that
 * pid started at that time and is no zombie.  A pid and a start time name
 * one process only.  Reading procfs does not block.  Where it cannot be
 * read (no procfs, another system than Linux) the start time is 0, and
 * kill(pid, 0) decides as before.
 */

static ngx_int_t
ngx_http_presence_worker_alive(ngx_presence_worker_t *w)
{
    ngx_pid_t          pid;
    ngx_uint_t         zombie;
    ngx_atomic_uint_t  start, now;

    pid = (ngx_pid_t) w->pid;
    ngx_memory_barrier();
    start = w->start;

    if (pid == 0) {
        return 0;
    }

    if (start) {
        now = ngx_http_presence_start_time(pid, &zombie);

        if (now == (ngx_atomic_uint_t) NGX_ERROR) {
            return 0;
        }

        if (now) {
            return now == start && !zombie;
        }
    }

    return !(kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH);
}


/*
 * The start time of a process, field 22 of /proc/<pid>/stat (after the
 * command, which is in parentheses and may hold any character); 0 when
 * procfs cannot tell, NGX_ERROR when there is no such process.
 */

static ngx_atomic_uint_t
ngx_http_presence_start_time(ngx_pid_t pid, ngx_uint_t *zombie)
{
#if (NGX_LINUX)
    off_t        t;
    u_char      *p, *last, *end;
    ssize_t      n;
    ngx_fd_t     fd;
    ngx_err_t    err;
    ngx_uint_t   field;
    u_char       name[sizeof("/proc//stat") + NGX_INT64_LEN];
    u_char       buf[1024];

    if (zombie) {
        *zombie = 0;
    }

    ngx_sprintf(name, "/proc/%P/stat%Z", pid);

    fd = ngx_open_file(name, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        err = ngx_errno;
        return (err == NGX_ENOENT || err == NGX_ESRCH)
               ? (ngx_atomic_uint_t) NGX_ERROR : 0;
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));
    err = ngx_errno;

    (void) ngx_close_file(fd);

    if (n == -1) {
        /* the process went away between open() and read() */
        return (err == NGX_ESRCH) ? (ngx_atomic_uint_t) NGX_ERROR : 0;
    }

    end = buf + n;

    for (p = end; p > buf && p[-1] != ')'; p--) { /* void */ }

    if (p == buf) {
        return 0;
    }

    /* p is past the command: " state ppid ...", the state is field 3 */

    for (field = 2; field < 22; field++) {
        while (p < end && *p == ' ') {
            p++;
        }

        if (field == 2 && zombie) {
            *zombie = (p < end && (*p == 'Z' || *p == 'X'));
        }

        if (field < 21) {
            while (p < end && *p != ' ') {
                p++;
            }
        }
    }

    for (last = p; last < end && *last != ' '; last++) { /* void */ }

    t = ngx_atoof(p, last - p);

    return (t > 0) ? (ngx_atomic_uint_t) t : 0;

#else

    if (zombie) {
        *zombie = 0;
    }

    return 0;

#endif
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
     */

    pmcf->redis.db = NGX_CONF_UNSET;
    pmcf->redis.timeout = NGX_CONF_UNSET_MSEC;

    return pmcf;
}


static char *
ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_str_t  addr;

    static ngx_str_t  name = ngx_string("presence_status");

    if (pmcf->redis.name.data == NULL) {
        ngx_str_set(&addr, "127.0.0.1:6379");

        if (ngx_presence_redis_parse_address(cf, &pmcf->redis, &addr)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    ngx_conf_init_value(pmcf->redis.db, 0);
    ngx_conf_init_msec_value(pmcf->redis.timeout, 1000);

    if (!pmcf->used) {
        return NGX_CONF_OK;
    }

    /* the counters of presence_status, for all workers and reloads */

    pmcf->shm_zone = ngx_shared_memory_add(cf, &name, 64 * 1024,
                                           &ngx_http_presence_module);
    if (pmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    pmcf->shm_zone->init = ngx_http_presence_init_zone;

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
     */

    plcf->room = NGX_CONF_UNSET_PTR;
    plcf->ttl = NGX_CONF_UNSET_MSEC;
    plcf->online_limit = NGX_CONF_UNSET_UINT;
    plcf->max_id_length = NGX_CONF_UNSET_UINT;
    plcf->max_body_size = NGX_CONF_UNSET_SIZE;
    plcf->online_cache = NGX_CONF_UNSET_MSEC;

    return plcf;
}


static char *
ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_presence_loc_conf_t *prev = parent;
    ngx_http_presence_loc_conf_t *conf = child;

    u_char                    *p;
    ngx_http_complex_value_t  *room;

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

    if (prev->ttl_ms.data && conf->ttl == prev->ttl) {
        conf->ttl_ms = prev->ttl_ms;
        conf->ttl_json = prev->ttl_json;
        return NGX_CONF_OK;
    }

    p = ngx_pnalloc(cf->pool, 2 * NGX_INT_T_LEN + 4);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->ttl_ms.data = p;
    conf->ttl_ms.len = ngx_sprintf(p, "%M", conf->ttl) - p;

    p += conf->ttl_ms.len;

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

    value = cf->args->elts;

    return ngx_presence_redis_parse_address(cf, &pmcf->redis, &value[1]);
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
