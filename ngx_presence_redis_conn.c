
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
    redisAsyncContext          *ac;
    ngx_presence_redis_t       *rds;
    ngx_presence_redis_conf_t  *rcf;

    rds = conn->redis;
    rcf = rds->conf;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: connecting to redis at \"%V\"", &rcf->name);

    if (rcf->path.len) {
        ac = redisAsyncConnectUnix((char *) rcf->path.data);

    } else {
        /* the host is numeric: getaddrinfo() does no lookup */
        ac = redisAsyncConnect((char *) rcf->host.data, (int) rcf->port);
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

    /* hiredis reads pub/sub messages with its own reply objects only */
    if (!conn->pubsub) {
        ac->c.reader->fn = &ngx_presence_reply_functions;
    }

    conn->ac = ac;
    conn->state = NGX_PRESENCE_CONNECTING;
    conn->timeouts = 0;
    conn->unexpected = 0;
    conn->broken = 0;

    /* the adapter is in place: this arms the write event */
    redisAsyncSetConnectCallback(ac, ngx_presence_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_presence_redis_on_disconnect);

    /*
     * hiredis buffers these until the socket is connected; requests
     * that come meanwhile wait in conn->waiting until all are answered
     */
    ngx_presence_redis_send_handshake(conn);

    ngx_add_timer(&conn->timer, rcf->timeout);
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

    if (conn->pubsub) {
        /* a subscriber needs AUTH only; PING says it is ready without */

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
    conn = ac->data;
    rds = conn->redis;

    if (reply == NULL || conn->ac != ac) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: redis at \"%V\" refused the handshake: %*s",
                      &rds->conf->name, (size_t) reply->len, reply->str);

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

    if (conn->pubsub) {
        ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                      "presence: subscribed to redis at \"%V\" for the "
                      "live streams", &rds->conf->name);

        ngx_presence_redis_pubsub_ready(rds);
        return;
    }

    if (conn->connects++) {
        rds->worker->reconnects++;
        (void) ngx_atomic_fetch_add(&rds->counters->redis_reconnects, 1);
    }

    rds->worker->connected = 1;

    ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                  "presence: connected to redis at \"%V\"", &rds->conf->name);

    ngx_presence_redis_flush(conn);
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
                  "presence: cannot connect to redis at \"%V\": %s",
                  &rds->conf->name, err);

    if (conn->ac == NULL) {
        ngx_presence_redis_schedule(conn);
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
        ngx_presence_redis_connect(conn);
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
                      "in time, reconnecting", &conn->redis->conf->name);
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

    if (conn->broken) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: a transaction to redis at \"%V\" could not "
                      "be completed, reconnecting", &rds->conf->name);
        redisAsyncFree(conn->ac);
        return;
    }

    if (conn->timeouts < NGX_PRESENCE_MAX_TIMEOUTS) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: redis at \"%V\" did not answer %ui commands "
                  "in time, reconnecting", &rds->conf->name, conn->timeouts);

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
                      "presence: lost the connection to redis at \"%V\": %s",
                      &conn->redis->conf->name, ac->errstr);
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

    if (conn->pubsub) {
        /* the streams learn that their events may have been missed */
        ngx_presence_redis_pubsub_down(conn->redis);
        return;
    }

    conn->redis->worker->connected = 0;

    /* 503 to those that waited for this connection */

    ngx_presence_redis_fail_queue(&conn->retry);
    ngx_presence_redis_fail_queue(&conn->waiting);
}
