
/*
 * ngx_http_presence_module, the Redis side: what the HTTP side asks of
 * Redis (the data model's operations, answered by callback), and what the
 * files of this side share.  Nothing here knows of HTTP requests.
 */


#ifndef _NGX_PRESENCE_REDIS_H_INCLUDED_
#define _NGX_PRESENCE_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <ngx_event.h>


/* the operations of the data model, one Lua script each */
#define NGX_PRESENCE_HEARTBEAT     0
#define NGX_PRESENCE_LEAVE         1
#define NGX_PRESENCE_ONLINE        2
#define NGX_PRESENCE_LOOKUP        3
#define NGX_PRESENCE_SWEEP         4
#define NGX_PRESENCE_NSCRIPTS      5

/* at most this many arguments after the keys */
#define NGX_PRESENCE_MAX_ARGS      5


typedef struct ngx_presence_cmd_s    ngx_presence_cmd_t;
typedef struct ngx_presence_conn_s   ngx_presence_conn_t;
typedef struct ngx_presence_redis_s  ngx_presence_redis_t;
typedef struct ngx_presence_sentinel_s  ngx_presence_sentinel_t;
typedef struct ngx_presence_cluster_s   ngx_presence_cluster_t;
typedef struct ngx_presence_node_s      ngx_presence_node_t;
typedef struct ngx_presence_batch_s     ngx_presence_batch_t;

/*
 * Called once per command that was accepted: with the reply, or with NULL
 * when the connection failed or refused the command before a reply came.
 * Never called for a command that was detached.  The reply is freed when
 * the handler returns.
 */
typedef void (*ngx_presence_reply_pt)(void *data, redisReply *reply);

/*
 * What the subscriber connection tells the live streams: it is ready (to
 * subscribe), it is gone (with every subscription), a channel is
 * subscribed, or a message came on one (channel and message set).
 */
#define NGX_PRESENCE_PUBSUB_READY       0
#define NGX_PRESENCE_PUBSUB_DOWN        1
#define NGX_PRESENCE_PUBSUB_SUBSCRIBED  2
#define NGX_PRESENCE_PUBSUB_MESSAGE     3

typedef void (*ngx_presence_pubsub_pt)(ngx_uint_t what, ngx_str_t *channel,
    ngx_str_t *message);


/* where a connection goes: numeric, or a unix socket */

typedef struct {
    ngx_str_t                  name;      /* as written, for the logs */
    ngx_str_t                  host;      /* numeric, null-terminated */
    ngx_str_t                  path;      /* unix socket, null-terminated */
    ngx_int_t                  port;
} ngx_presence_addr_t;


typedef struct {
    ngx_str_t                  name;      /* as written, for the logs */
    ngx_str_t                  host;      /* numeric, null-terminated */
    ngx_str_t                  path;      /* unix socket, null-terminated */
    ngx_int_t                  port;
    ngx_str_t                  password;
    ngx_int_t                  db;
    ngx_msec_t                 timeout;

    /* presence_redis_sentinel: the master's name and the sentinels */
    ngx_str_t                  master;
    ngx_array_t               *sentinels;  /* of ngx_presence_addr_t */
    ngx_str_t                  sentinel_password;

    /* presence_redis_cluster: the seed nodes */
    ngx_array_t               *seeds;     /* of ngx_presence_addr_t */
} ngx_presence_redis_conf_t;


/*
 * What the Redis side counts for presence_status: counters of all workers
 * and this worker's slot, both in the status zone of the HTTP side.
 */

typedef struct {
    ngx_atomic_t               heartbeats;
    ngx_atomic_t               leaves;
    ngx_atomic_t               listings;
    ngx_atomic_t               client_errors;
    ngx_atomic_t               redis_unavailable;
    ngx_atomic_t               redis_timeouts;
    ngx_atomic_t               redis_reconnects;
    ngx_atomic_t               redis_failovers;
    ngx_atomic_t               redis_redirects;
    ngx_atomic_t               redis_rtt_us_sum;
    ngx_atomic_t               redis_rtt_count;
    ngx_atomic_t               stream_events;
} ngx_presence_counters_t;


/* one worker's Redis connection; only that worker writes its slot */

typedef struct {
    ngx_atomic_t               pid;
    /* when the worker's process started, to tell a recycled pid */
    ngx_atomic_t               start;
    ngx_atomic_t               in_flight;
    ngx_atomic_t               reconnects;
    ngx_atomic_t               connected;
    ngx_atomic_t               streams;
} ngx_presence_worker_t;


char *ngx_presence_redis_parse_address(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *value);
char *ngx_presence_redis_parse_sentinel(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *values, ngx_uint_t n);
char *ngx_presence_redis_parse_cluster(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *values, ngx_uint_t n);

ngx_presence_redis_t *ngx_presence_redis_create(ngx_cycle_t *cycle,
    ngx_presence_redis_conf_t *rcf, ngx_presence_counters_t *counters,
    ngx_presence_worker_t *worker);
void ngx_presence_redis_destroy(ngx_presence_redis_t *rds);

ngx_presence_cmd_t *ngx_presence_redis_eval(ngx_presence_redis_t *rds,
    ngx_uint_t script, ngx_str_t *key, ngx_str_t *args, ngx_uint_t nargs,
    ngx_presence_reply_pt handler, void *data, ngx_log_t *log);
ngx_presence_cmd_t *ngx_presence_redis_online(ngx_presence_redis_t *rds,
    ngx_str_t *key, ngx_uint_t limit, ngx_presence_reply_pt handler,
    void *data, ngx_log_t *log);
void ngx_presence_redis_detach(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_timed_out(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_unexpected(ngx_presence_redis_t *rds,
    redisReply *reply);

void ngx_presence_redis_pubsub_handler(ngx_presence_redis_t *rds,
    ngx_presence_pubsub_pt handler);
ngx_int_t ngx_presence_redis_subscribe(ngx_presence_redis_t *rds,
    ngx_str_t *channel);
void ngx_presence_redis_unsubscribe(ngx_presence_redis_t *rds,
    ngx_str_t *channel);


/*
 * Inside the Redis side: a command, a connection and a worker's context.
 * ngx_presence_redis.c has the scripts and the commands,
 * ngx_presence_redis_conn.c the life of a connection,
 * ngx_presence_redis_adapter.c its events, ngx_presence_redis_reply.c
 * the replies, ngx_presence_redis_pubsub.c the subscriber connection,
 * ngx_presence_redis_sentinel.c the sentinels and where the master is,
 * ngx_presence_redis_cluster.c the slots of a cluster and its nodes.
 */

#define NGX_PRESENCE_DOWN          0
#define NGX_PRESENCE_CONNECTING    1
#define NGX_PRESENCE_READY         2
/* connected, the script cache of Redis is being filled again */
#define NGX_PRESENCE_LOADING       3

/* a connection whose commands time out this many times in a row is stuck */
#define NGX_PRESENCE_MAX_TIMEOUTS  3


struct ngx_presence_cmd_s {
    /* NULL while the command waits for a cluster's map or a retry */
    ngx_presence_conn_t           *conn;
    ngx_presence_redis_t          *redis;
    ngx_presence_reply_pt          handler;
    void                          *data;
    ngx_log_t                     *log;
    struct timespec                start;
    ngx_uint_t                     script;
    int                            argc;

    /* in conn->waiting or conn->retry: not on the wire */
    ngx_queue_t                    queue;

    unsigned                       queued:1;
    unsigned                       retried:1;
    /* a cluster's ASK: ASKING goes first */
    unsigned                       asking:1;
    /* the heartbeats of a batch: data is the batch */
    unsigned                       many:1;

    /* a cluster: the room's slot, when the command came, what it met */
    ngx_uint_t                     slot;
    ngx_msec_t                     created;
    ngx_msec_t                     due;
    ngx_uint_t                     redirects;
    ngx_uint_t                     tries;
    /* a listing's queued script was refused: why, and where to go */
    ngx_uint_t                     refused;
    ngx_presence_node_t           *target;

    /* a heartbeat: the batch it is in, or waits in */
    ngx_presence_batch_t          *batch;

    /* EVALSHA sha 3 room sessions version args... */
    const char                   **argv;
    size_t                        *argvlen;
    const char                    *args[6 + NGX_PRESENCE_MAX_ARGS];
    size_t                         lens[6 + NGX_PRESENCE_MAX_ARGS];

    /* a listing: ZREVRANGE <key> 0 <limit - 1>, none when the limit is 0 */
    ngx_uint_t                     limit;
    u_char                         stop[NGX_INT_T_LEN];
    size_t                         stop_len;
};


struct ngx_presence_conn_s {
    redisAsyncContext             *ac;
    ngx_presence_redis_t          *redis;
    /* the master's address, or a sentinel's */
    ngx_presence_addr_t           *addr;

    /* reconnect after a backoff, or give up on a slow handshake */
    ngx_event_t                    timer;
    /* posted: drop a connection that stopped answering */
    ngx_event_t                    drop;

    /*
     * Commands that wait for the handshake or a reload of the scripts:
     * none is written before the connection is known to be good.
     */
    ngx_queue_t                    waiting;
    /* refused with NOSCRIPT, sent again in order once the scripts are in */
    ngx_queue_t                    retry;

    ngx_msec_t                     backoff;
    ngx_uint_t                     state;
    ngx_uint_t                     handshake;
    ngx_uint_t                     timeouts;
    ngx_uint_t                     connects;
    ngx_uint_t                     failures;

    /* a transaction was left open: nothing more may go on this connection */
    unsigned                       broken:1;
    /* the subscriber connection of the live streams */
    unsigned                       pubsub:1;
    /* a connection to a sentinel (ngx_presence_redis_sentinel.c) */
    unsigned                       sentinel:1;
    /* the master moved or said READONLY: drop it, connect again */
    unsigned                       moved:1;
    /* the connection that asks a cluster for its slots */
    unsigned                       cluster:1;
    /* a cluster's node no longer in the map: connect only when needed */
    unsigned                       idle:1;
};


struct ngx_presence_redis_s {
    ngx_presence_redis_conf_t     *conf;
    ngx_log_t                     *log;
    ngx_presence_counters_t       *counters;
    ngx_presence_worker_t         *worker;

    /*
     * The master's address: presence_redis's, or the one the sentinels
     * name (port 0 until they have); host and name in the buffers below.
     */
    ngx_presence_addr_t            master;
    u_char                         master_host[NGX_SOCKADDR_STRLEN + 1];
    u_char                         master_name[NGX_SOCKADDR_STRLEN
                                               + NGX_INT_T_LEN + 2];

    /* presence_redis_sentinel */
    ngx_presence_sentinel_t       *sentinel;

    /*
     * presence_redis_cluster: the slots and a connection per master; the
     * master's address above is then the node the slots came from, where
     * the subscriber connection goes
     */
    ngx_presence_cluster_t        *cluster;

    /* the one data connection, without a cluster */
    ngx_presence_conn_t            data;

    /* heartbeats to go to Redis together at the end of the event loop */
    ngx_queue_t                    batches;
    ngx_event_t                    flush;

    /* the subscriber connection, from the worker's first stream on */
    ngx_presence_conn_t            sub;
    ngx_presence_pubsub_pt         pubsub;

    unsigned                       exiting:1;
    unsigned                       sub_started:1;
    /* an unexpected reply was logged since the last connect */
    unsigned                       unexpected:1;
};


/* ngx_presence_redis_conn.c */
void ngx_presence_redis_conn_init(ngx_presence_conn_t *conn,
    ngx_presence_redis_t *rds, ngx_log_t *log);
void ngx_presence_redis_connect(ngx_presence_conn_t *conn);
void ngx_presence_redis_conn_close(ngx_presence_conn_t *conn);
void ngx_presence_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata);
ngx_presence_conn_t *ngx_presence_redis_reply_conn(redisAsyncContext *ac,
    void *reply);
void ngx_presence_redis_closed(redisAsyncContext *ac);

/* ngx_presence_redis.c */
void ngx_presence_redis_load_scripts(ngx_presence_conn_t *conn);
void ngx_presence_redis_flush(ngx_presence_conn_t *conn);
void ngx_presence_redis_fail_queue(ngx_queue_t *queue);
ngx_presence_cmd_t *ngx_presence_redis_dequeue(ngx_queue_t *queue);
ngx_int_t ngx_presence_redis_submit_to(ngx_presence_cmd_t *cmd,
    ngx_presence_conn_t *conn);
ngx_int_t ngx_presence_redis_start(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_finish(ngx_presence_cmd_t *cmd, redisReply *reply);
void ngx_presence_redis_queued_reply(redisAsyncContext *ac, void *r,
    void *privdata);

/* ngx_presence_redis_pubsub.c */
void ngx_presence_redis_pubsub_ready(ngx_presence_redis_t *rds);
void ngx_presence_redis_pubsub_down(ngx_presence_redis_t *rds);
void ngx_presence_redis_pubsub_close(ngx_presence_redis_t *rds);

/* ngx_presence_redis_sentinel.c */
ngx_int_t ngx_presence_redis_sentinel_start(ngx_presence_redis_t *rds);
void ngx_presence_redis_sentinel_stop(ngx_presence_redis_t *rds);
void ngx_presence_redis_sentinel_ask(ngx_presence_redis_t *rds);
void ngx_presence_redis_sentinel_handshake(ngx_presence_conn_t *conn);
void ngx_presence_redis_sentinel_ready(ngx_presence_conn_t *conn);
void ngx_presence_redis_sentinel_closed(ngx_presence_conn_t *conn);
void ngx_presence_redis_role_reply(redisAsyncContext *ac, void *r,
    void *privdata);
void ngx_presence_redis_move(ngx_presence_conn_t *conn);

/* ngx_presence_redis_cluster.c */
ngx_int_t ngx_presence_redis_cluster_start(ngx_presence_redis_t *rds);
void ngx_presence_redis_cluster_stop(ngx_presence_redis_t *rds);
ngx_int_t ngx_presence_redis_cluster_submit(ngx_presence_cmd_t *cmd);
ngx_uint_t ngx_presence_redis_cluster_slot(ngx_str_t *key);
ngx_int_t ngx_presence_redis_cluster_reply(ngx_presence_cmd_t *cmd,
    redisReply *reply);
void ngx_presence_redis_cluster_refused(ngx_presence_cmd_t *cmd,
    redisReply *reply);
void ngx_presence_redis_cluster_ready(ngx_presence_conn_t *conn);
void ngx_presence_redis_cluster_closed(ngx_presence_conn_t *conn);

/* ngx_presence_redis_batch.c */
void ngx_presence_redis_batch_init(ngx_presence_redis_t *rds);
ngx_int_t ngx_presence_redis_batch_add(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_batch_leave(ngx_presence_cmd_t *cmd);
void ngx_presence_redis_batch_done(ngx_presence_batch_t *batch,
    redisReply *reply);
void ngx_presence_redis_batch_close(ngx_presence_redis_t *rds);

/* ngx_presence_redis_adapter.c */
ngx_int_t ngx_presence_redis_attach(redisAsyncContext *ac, ngx_log_t *log);

/* ngx_presence_redis_reply.c */
extern redisReplyObjectFunctions  ngx_presence_reply_functions;


#endif /* _NGX_PRESENCE_REDIS_H_INCLUDED_ */
