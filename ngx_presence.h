
/*
 * ngx_http_presence_module: the interface between the HTTP side
 * (ngx_http_presence_module.c) and the per-worker Redis connection
 * (ngx_presence_redis.c).
 */


#ifndef _NGX_PRESENCE_H_INCLUDED_
#define _NGX_PRESENCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>


/* the Lua scripts of the data model, one per operation */
#define NGX_PRESENCE_HEARTBEAT     0
#define NGX_PRESENCE_LEAVE         1
#define NGX_PRESENCE_ONLINE        2
#define NGX_PRESENCE_LOOKUP        3
#define NGX_PRESENCE_NSCRIPTS      4

/* at most this many arguments after the key */
#define NGX_PRESENCE_MAX_ARGS      2


typedef struct ngx_presence_cmd_s  ngx_presence_cmd_t;

/*
 * Called once per command that was accepted: with the reply, or with NULL
 * when the connection failed before the reply came.  Never called for a
 * command that was detached.  The reply is freed when the handler returns.
 */
typedef void (*ngx_presence_reply_pt)(void *data, redisReply *reply);


typedef struct {
    ngx_str_t                  name;      /* as written, for the logs */
    ngx_str_t                  host;      /* numeric, null-terminated */
    ngx_str_t                  path;      /* unix socket, null-terminated */
    ngx_int_t                  port;
    ngx_str_t                  password;
    ngx_int_t                  db;
    ngx_msec_t                 timeout;
} ngx_presence_redis_conf_t;


/*
 * Counters of all workers, in a shared memory zone that outlives reloads
 * (presence_status).  Until the zone is there they point at a local copy.
 */

typedef struct {
    ngx_atomic_t               heartbeats;
    ngx_atomic_t               leaves;
    ngx_atomic_t               listings;
    ngx_atomic_t               client_errors;
    ngx_atomic_t               redis_unavailable;
    ngx_atomic_t               redis_timeouts;
    ngx_atomic_t               redis_reconnects;
    ngx_atomic_t               redis_rtt_us_sum;
    ngx_atomic_t               redis_rtt_count;
} ngx_presence_counters_t;


/*
 * one worker's Redis connection; only that worker writes its slot, once
 * it has claimed it.  pid and start (the start time of its process) name
 * the worker: see ngx_http_presence_worker_alive().
 */

typedef struct {
    ngx_atomic_t               pid;
    ngx_atomic_t               start;
    ngx_atomic_t               in_flight;
    ngx_atomic_t               reconnects;
    ngx_atomic_t               connected;
} ngx_presence_worker_t;


char *ngx_presence_redis_parse_address(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *value);
ngx_int_t ngx_presence_redis_init_process(ngx_cycle_t *cycle,
    ngx_presence_redis_conf_t *rcf);
void ngx_presence_redis_exit_process(ngx_cycle_t *cycle);

ngx_presence_cmd_t *ngx_presence_redis_eval(ngx_uint_t script,
    ngx_str_t *key, ngx_str_t *args, ngx_uint_t nargs,
    ngx_presence_reply_pt handler, void *data, ngx_log_t *log);
void ngx_presence_redis_detach(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_timed_out(void);
void ngx_presence_redis_unexpected(redisReply *reply);

extern ngx_presence_counters_t  *ngx_presence_counters;
extern ngx_presence_worker_t    *ngx_presence_worker;


#endif /* _NGX_PRESENCE_H_INCLUDED_ */
