
/*
 * ngx_http_presence_module, the HTTP side: what its files share.
 *
 * ngx_http_presence_module.c   directives, configuration, module hooks
 * ngx_http_presence_handler.c  content handlers, body, identity, the
 *                              request's wait for Redis
 * ngx_http_presence_response.c the JSON answers, errors and headers
 * ngx_http_presence_cache.c    presence_online_cache
 * ngx_http_presence_status.c   presence_status and its shared counters
 * ngx_http_presence_stream.c   presence_stream: live streams of the rooms
 * ngx_http_presence_input.c    reading untrusted input (pure, fuzzed)
 *
 * The Redis side is ngx_presence_redis*.c, behind ngx_presence_redis.h.
 */


#ifndef _NGX_HTTP_PRESENCE_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_presence_redis.h"
#include "ngx_http_presence_input.h"


/* what a location does: presence_heartbeat, presence_leave... */
#define NGX_HTTP_PRESENCE_HEARTBEAT  1
#define NGX_HTTP_PRESENCE_LEAVE      2
#define NGX_HTTP_PRESENCE_ONLINE     3
#define NGX_HTTP_PRESENCE_STATUS     4
#define NGX_HTTP_PRESENCE_STREAM     5


typedef struct ngx_http_presence_cache_node_s  ngx_http_presence_cache_node_t;


typedef struct {
    ngx_presence_redis_conf_t   redis;
    ngx_shm_zone_t             *shm_zone;
    ngx_flag_t                  used;
    ngx_uint_t                  stream_max_clients;

    /* the worker's Redis context, from init_process on */
    ngx_presence_redis_t       *rds;
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
    ngx_uint_t                  max_sessions;
    ngx_msec_t                  leave_grace;
    ngx_msec_t                  stream_ping;

    /* the TTL as Redis takes it (ms) and as the JSON shows it (s) */
    ngx_str_t                   ttl_ms;
    ngx_str_t                   ttl_json;

    /* presence_max_sessions and presence_leave_grace as Redis takes them */
    ngx_str_t                   max_sessions_arg;
    ngx_str_t                   leave_grace_arg;

    /* the life of a room's keys after a heartbeat (see the script) */
    ngx_str_t                   key_life_arg;
} ngx_http_presence_loc_conf_t;


/* a request that talks to Redis */

typedef struct {
    ngx_http_request_t         *request;
    ngx_presence_cmd_t         *cmd;
    ngx_event_t                 timeout;
    ngx_uint_t                  script;
    ngx_str_t                   user;
    /* the session_id; data is NULL without one */
    ngx_str_t                   session;
    ngx_str_t                   room;
    ngx_str_t                   key;
    ngx_uint_t                  limit;

    /* this request refreshes the cached listing, asked at cache_start */
    ngx_http_presence_cache_node_t  *cache;
    ngx_msec_t                  cache_start;

    /* the key of the listing's node in the worker's cache and memo */
    ngx_str_t                   cache_key;
    uint32_t                    cache_hash;

    /* only the head (count, id) is asked: the memo may answer */
    unsigned                    head:1;
} ngx_http_presence_ctx_t;


/* ngx_http_presence_handler.c */
ngx_int_t ngx_http_presence_update_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_online_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_room_key(ngx_http_request_t *r, ngx_str_t *room,
    ngx_str_t *key);

/* ngx_http_presence_response.c */
ngx_int_t ngx_http_presence_respond(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply);
ngx_int_t ngx_http_presence_respond_head(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply);
ngx_int_t ngx_http_presence_listing(ngx_pool_t *pool,
    ngx_presence_redis_t *rds, redisReply *reply, ngx_uint_t limit,
    ngx_str_t *room, ngx_str_t *ttl, ngx_str_t *body, uint64_t *id);
ngx_int_t ngx_http_presence_send_listing(ngx_http_request_t *r,
    ngx_str_t *body, ngx_str_t *etag);
ngx_int_t ngx_http_presence_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b);
ngx_int_t ngx_http_presence_error(ngx_http_request_t *r, ngx_int_t err);
ngx_int_t ngx_http_presence_add_header(ngx_http_request_t *r,
    ngx_str_t *key, ngx_str_t *value, ngx_table_elt_t **hp);

/* ngx_http_presence_cache.c */
ngx_http_presence_cache_node_t *ngx_http_presence_cache_lookup(
    ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx);
ngx_int_t ngx_http_presence_cache_answer(ngx_http_request_t *r,
    ngx_http_presence_cache_node_t *node);
void ngx_http_presence_cache_abandon(ngx_http_presence_ctx_t *ctx);
void ngx_http_presence_memo_store(ngx_http_presence_ctx_t *ctx,
    ngx_str_t *body, ngx_str_t *etag, uint64_t count, uint64_t id);
ngx_http_presence_cache_node_t *ngx_http_presence_memo_check(
    ngx_http_presence_ctx_t *ctx, uint64_t count, uint64_t id);
void ngx_http_presence_cache_init(void);
void ngx_http_presence_cache_free(void);

/* ngx_http_presence_stream.c */
ngx_int_t ngx_http_presence_stream_handler(ngx_http_request_t *r);
void ngx_http_presence_stream_init(ngx_presence_redis_t *rds);

/* ngx_http_presence_status.c */
ngx_int_t ngx_http_presence_status_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_status_zone(ngx_conf_t *cf,
    ngx_http_presence_main_conf_t *pmcf);
void ngx_http_presence_status_claim(ngx_cycle_t *cycle,
    ngx_http_presence_main_conf_t *pmcf);
void ngx_http_presence_status_release(void);
void ngx_http_presence_count(ngx_http_request_t *r, ngx_uint_t status);
ngx_presence_counters_t *ngx_http_presence_counters(void);
ngx_presence_worker_t *ngx_http_presence_worker(void);


extern ngx_module_t  ngx_http_presence_module;


#endif /* _NGX_HTTP_PRESENCE_H_INCLUDED_ */
