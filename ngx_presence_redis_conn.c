
/*
 * ngx_http_presence_module, the Redis side: the life of one connection.
 *
 * Down, connecting (the handshake: AUTH, SELECT, SCRIPT LOAD), ready,
 * dropped, and after a backoff with jitter connecting again.  Commands
 * wait while the connection is not ready (ngx_presence_redis.c); the
 * handshake is bounded by presence_redis_timeout, and a connection whose
 * commands keep timing out is dropped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


#define NGX_PRESENCE_BACKOFF_MIN   50
#define NGX_PRESENCE_BACKOFF_MAX   1000

static void ngx_presence_redis_send_handshake(ngx_presence_conn_t *conn);
static const char *ngx_presence_redis_what(ngx_presence_conn_t *conn);
static void ngx_presence_redis_connect_failed(ngx_presence_conn_t *conn,
    const char *err);
static void ngx_presence_redis_schedule(ngx_presence_conn_t *conn);
static void ngx_presence_redis_timer_handler(ngx_event_t *ev);
static void ngx_presence_redis_drop_handler(ngx_event_t *ev);
static void ngx_presence_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_presence_redis_on_disconnect(const redisAsyncContext *ac,
    int status);


void
ngx_presence_redis_conn_init(ngx_presence_conn_t *conn,
    ngx_presence_redis_t *rds, ngx_log_t *log)
{
    conn->redis = rds;
    conn->backoff = NGX_PRESENCE_BACKOFF_MIN;

    ngx_queue_init(&conn->waiting);
    ngx_queue_init(&conn->retry);

    conn->timer.handler = ngx_presence_redis_timer_handler;
    conn->timer.log = log;
    conn->timer.data = conn;
    conn->timer.cancelable = 1;

    conn->drop.handler = ngx_presence_redis_drop_handler;
    conn->drop.log = log;
    conn->drop.data = conn;
}


/* at exit: no callback runs, no reconnect follows */

void
ngx_presence_redis_conn_close(ngx_presence_conn_t *conn)
{
    redisAsyncContext  *ac;

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    if (conn->drop.posted) {
        ngx_delete_posted_event(&conn->drop);
    }

    ac = conn->ac;

    if (ac) {
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);
    }
}


void
ngx_presence_redis_connect(ngx_presence_conn_t *conn)
{
    redisAsyncContext     *ac;
    ngx_presence_addr_t   *addr;
    ngx_presence_redis_t  *rds;

    rds = conn->redis;
    addr = conn->addr;

    conn->moved = 0;

    if (addr->path.len == 0 && addr->port == 0) {
        /* the sentinels have named no master yet: they connect it */
        conn->state = NGX_PRESENCE_DOWN;
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: connecting to redis at \"%V\"", &addr->name);

    if (addr->path.len) {
        ac = redisAsyncConnectUnix((char *) addr->path.data);

    } else {
        /* the host is numeric: getaddrinfo() does no lookup */
        ac = redisAsyncConnect((char *) addr->host.data, (int) addr->port);
    }

    if (ac == NULL) {
        ngx_presence_redis_connect_failed(conn, "out of memory");
        return;
    }

    if (ac->err) {
        ngx_presence_redis_connect_failed(conn, ac->errstr);
        redisAsyncFree(ac);
        return;
    }

    if (ngx_presence_redis_attach(ac, rds->log) != NGX_OK) {
        redisAsyncFree(ac);
        ngx_presence_redis_schedule(conn);
        return;
    }

    ac->data = conn;

    /*
     * hiredis frees its read buffer after every reply over 16k by default
     * and allocates it again for the next: listings would do that all day
     */
    ac->c.reader->maxbuf = 0;

    /*
     * hiredis reads pub/sub messages with its own reply objects only;
     * the sentinels' few replies need no more
     */
    if (!conn->pubsub && !conn->sentinel && !conn->cluster) {
        ac->c.reader->fn = &ngx_presence_reply_functions;

        /* a new connection: an unexpected reply is worth a line again */
        rds->unexpected = 0;
    }

    conn->ac = ac;
    conn->state = NGX_PRESENCE_CONNECTING;
    conn->timeouts = 0;
    conn->broken = 0;

    /* the adapter is in place: this arms the write event */
    redisAsyncSetConnectCallback(ac, ngx_presence_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_presence_redis_on_disconnect);

    /*
     * hiredis buffers these until the socket is connected; requests
     * that come meanwhile wait in conn->waiting until all are answered
     */
    ngx_presence_redis_send_handshake(conn);

    ngx_add_timer(&conn->timer, rds->conf->timeout);
}


static void
ngx_presence_redis_send_handshake(ngx_presence_conn_t *conn)
{
    char                       db[NGX_INT_T_LEN];
    size_t                     len[2];
    const char                *argv[2];
    redisAsyncContext         *ac;
    ngx_presence_redis_conf_t *rcf;

    ac = conn->ac;
    rcf = conn->redis->conf;

    conn->handshake = 0;

    if (conn->sentinel) {
        ngx_presence_redis_sentinel_handshake(conn);
        return;
    }

    if (conn->pubsub || conn->cluster) {
        /*
         * a subscriber, or the connection that asks a cluster for its
         * slots, needs AUTH only; PING says it is ready without
         */

        argv[0] = rcf->password.len ? "AUTH" : "PING";
        len[0] = 4;
        argv[1] = (char *) rcf->password.data;
        len[1] = rcf->password.len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  NULL, rcf->password.len ? 2 : 1, argv, len)
            == REDIS_OK)
        {
            conn->handshake++;
        }

        return;
    }

    if (rcf->password.len) {
        argv[0] = "AUTH";
        len[0] = 4;
        argv[1] = (char *) rcf->password.data;
        len[1] = rcf->password.len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  NULL, 2, argv, len)
            == REDIS_OK)
        {
            conn->handshake++;
        }
    }

    if (rcf->db) {
        argv[0] = "SELECT";
        len[0] = 6;
        argv[1] = db;
        len[1] = ngx_sprintf((u_char *) db, "%i", rcf->db) - (u_char *) db;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  NULL, 2, argv, len)
            == REDIS_OK)
        {
            conn->handshake++;
        }
    }

    if (rcf->sentinels) {
        /* the sentinels may lag, or name a master restarted empty */

        argv[0] = "ROLE";
        len[0] = 4;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_role_reply,
                                  NULL, 1, argv, len)
            == REDIS_OK)
        {
            conn->handshake++;
        }
    }

    ngx_presence_redis_load_scripts(conn);
}


void
ngx_presence_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply            *reply;
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    reply = r;

    conn = ngx_presence_redis_reply_conn(ac, reply);
    if (conn == NULL) {
        return;
    }

    rds = conn->redis;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: %s at \"%V\" refused the handshake: %*s",
                      ngx_presence_redis_what(conn), &conn->addr->name,
                      (size_t) reply->len, reply->str);

        /* deferred by hiredis until this callback returns */
        redisAsyncFree(ac);
        return;
    }

    if (--conn->handshake) {
        return;
    }

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    if (conn->state == NGX_PRESENCE_LOADING) {
        ngx_log_debug0(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                       "presence: redis scripts loaded again");

        conn->state = NGX_PRESENCE_READY;
        ngx_presence_redis_flush(conn);
        return;
    }

    conn->state = NGX_PRESENCE_READY;
    conn->backoff = NGX_PRESENCE_BACKOFF_MIN;
    conn->failures = 0;

    if (conn->sentinel) {
        ngx_presence_redis_sentinel_ready(conn);
        return;
    }

    if (conn->cluster) {
        ngx_presence_redis_cluster_ready(conn);
        return;
    }

    if (conn->pubsub) {
        ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                      "presence: subscribed to redis at \"%V\" for the "
                      "live streams", &conn->addr->name);

        ngx_presence_redis_pubsub_ready(rds);
        return;
    }

    if (conn->connects++) {
        rds->worker->reconnects++;
        (void) ngx_atomic_fetch_add(&rds->counters->redis_reconnects, 1);
    }

    if (rds->cluster == NULL) {
        /* with a cluster: once the worker knows the slots */
        rds->worker->connected = 1;
    }

    ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                  "presence: connected to redis at \"%V\"", &conn->addr->name);

    ngx_presence_redis_flush(conn);
}


/*
 * The connection a reply is for, or NULL when there is nothing to do: no
 * reply (the context is being freed and its pending callbacks fire) or a
 * context the connection no longer holds.
 */

ngx_presence_conn_t *
ngx_presence_redis_reply_conn(redisAsyncContext *ac, void *reply)
{
    ngx_presence_conn_t  *conn;

    conn = ac->data;

    if (reply == NULL || conn == NULL || conn->ac != ac) {
        return NULL;
    }

    return conn;
}


static void
ngx_presence_redis_connect_failed(ngx_presence_conn_t *conn, const char *err)
{
    ngx_uint_t             level;
    ngx_presence_redis_t  *rds;

    rds = conn->redis;

    /* the first failure in a row is an error; retries only info */

    level = conn->failures++ ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, rds->log, 0,
                  "presence: cannot connect to %s at \"%V\": %s",
                  ngx_presence_redis_what(conn), &conn->addr->name, err);

    if (conn->ac == NULL) {
        ngx_presence_redis_schedule(conn);

        if (conn->sentinel) {
            /* refused at once: a subscriber tries the next sentinel */
            ngx_presence_redis_sentinel_closed(conn);
        }

        if (rds->cluster) {
            /* another node is asked, or the slots are asked again */
            ngx_presence_redis_cluster_closed(conn);
        }
    }

    if (rds->sentinel && !conn->sentinel && !conn->pubsub) {
        /*
         * the master is gone: the sentinel that leads its failover names
         * the new one before it tells the others
         */
        ngx_presence_redis_sentinel_ask(rds);
    }
}


static void
ngx_presence_redis_schedule(ngx_presence_conn_t *conn)
{
    ngx_msec_t  delay;

    conn->state = NGX_PRESENCE_DOWN;

    if (conn->redis->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    /* jitter keeps the workers of a host from reconnecting in step */

    delay = conn->backoff / 2 + ngx_random() % (conn->backoff / 2 + 1);

    conn->backoff = ngx_min(conn->backoff * 2, NGX_PRESENCE_BACKOFF_MAX);

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, conn->redis->log, 0,
                   "presence: reconnecting to redis in %M ms", delay);

    ngx_add_timer(&conn->timer, delay);
}


static void
ngx_presence_redis_timer_handler(ngx_event_t *ev)
{
    ngx_presence_conn_t  *conn;

    conn = ev->data;

    if (conn->state == NGX_PRESENCE_DOWN) {
        if (!conn->idle) {
            ngx_presence_redis_connect(conn);
        }

        return;
    }

    if (conn->ac == NULL) {
        return;
    }

    if (conn->state == NGX_PRESENCE_CONNECTING) {
        ngx_presence_redis_connect_failed(conn, "timed out");
        redisAsyncFree(conn->ac);
        return;
    }

    if (conn->state == NGX_PRESENCE_LOADING) {
        ngx_log_error(NGX_LOG_ERR, conn->redis->log, 0,
                      "presence: redis at \"%V\" did not load the scripts "
                      "in time, reconnecting", &conn->addr->name);
        redisAsyncFree(conn->ac);
    }
}


static void
ngx_presence_redis_drop_handler(ngx_event_t *ev)
{
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    conn = ev->data;
    rds = conn->redis;

    if (conn->ac == NULL) {
        return;
    }

    if (conn->moved) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                       "presence: leaving redis at \"%V\"",
                       &conn->addr->name);

        /* every pending command gets its callback: their requests 503 */
        conn->backoff = NGX_PRESENCE_BACKOFF_MIN;
        redisAsyncFree(conn->ac);
        return;
    }

    if (conn->broken) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: a transaction to redis at \"%V\" could not "
                      "be completed, reconnecting", &conn->addr->name);
        redisAsyncFree(conn->ac);
        return;
    }

    if (conn->timeouts < NGX_PRESENCE_MAX_TIMEOUTS) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: redis at \"%V\" did not answer %ui commands "
                  "in time, reconnecting", &conn->addr->name, conn->timeouts);

    /* every pending command now gets its callback with no reply */

    redisAsyncFree(conn->ac);
}


static void
ngx_presence_redis_on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        /* hiredis frees the context next; the cleanup reschedules */
        ngx_presence_redis_connect_failed(ac->data, ac->errstr);
    }
}


static void
ngx_presence_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_presence_conn_t  *conn;

    conn = ac->data;

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, conn->redis->log, 0,
                      "presence: lost the connection to %s at \"%V\": %s",
                      ngx_presence_redis_what(conn), &conn->addr->name,
                      ac->errstr);
    }
}


/*
 * The adapter closed the socket of a context that hiredis is freeing:
 * every command sent on it has had its callback by now.
 */

void
ngx_presence_redis_closed(redisAsyncContext *ac)
{
    ngx_presence_conn_t  *conn;

    conn = ac->data;

    if (conn == NULL || conn->ac != ac) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_EVENT, conn->redis->log, 0,
                   "presence: redis connection closed");

    conn->ac = NULL;

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    ngx_presence_redis_schedule(conn);

    if (conn->sentinel) {
        ngx_presence_redis_sentinel_closed(conn);
        return;
    }

    if (conn->redis->cluster) {
        /* another node is asked, or the slots are asked again */
        ngx_presence_redis_cluster_closed(conn);
    }

    if (conn->pubsub) {
        /* the streams learn that their events may have been missed */
        ngx_presence_redis_pubsub_down(conn->redis);
        return;
    }

    if (conn->cluster) {
        return;
    }

    if (conn->redis->cluster == NULL) {
        conn->redis->worker->connected = 0;
    }

    if (conn->redis->sentinel) {
        /* the master may have moved: the sentinels know */
        ngx_presence_redis_sentinel_ask(conn->redis);
    }

    /* 503 to those that waited for this connection */

    ngx_presence_redis_fail_queue(&conn->retry);
    ngx_presence_redis_fail_queue(&conn->waiting);
}


/* what a connection goes to, for the logs */

static const char *
ngx_presence_redis_what(ngx_presence_conn_t *conn)
{
    return conn->sentinel ? "sentinel" : "redis";
}


/*
 * The master is elsewhere now, or this one said READONLY: the connection
 * is dropped from a posted event, outside any callback of its context,
 * and opened again at once, to the master's address as it is then.
 */

void
ngx_presence_redis_move(ngx_presence_conn_t *conn)
{
    if (conn->ac == NULL) {
        if (conn->state == NGX_PRESENCE_DOWN && !conn->redis->exiting) {
            conn->backoff = NGX_PRESENCE_BACKOFF_MIN;

            if (conn->timer.timer_set) {
                ngx_del_timer(&conn->timer);
            }

            ngx_add_timer(&conn->timer, 1);
        }

        return;
    }

    conn->moved = 1;

    if (!conn->drop.posted) {
        ngx_post_event(&conn->drop, &ngx_posted_events);
    }
}
