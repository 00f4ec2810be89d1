
/*
 * ngx_http_presence_module: one hiredis async connection per worker,
 * driven by nginx's event loop.
 *
 * hiredis 0.14 has no timeouts of its own; the connect and handshake
 * are bounded by a timer here, each command by a timer of the request
 * that sent it.  See NGINX-HIREDIS.md in the design notes for the traps
 * this file steers around.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_sha1.h>
#include <hiredis/async.h>

#include "ngx_presence.h"


#define NGX_PRESENCE_DOWN          0
#define NGX_PRESENCE_CONNECTING    1
#define NGX_PRESENCE_READY         2
/* connected, the script cache of Redis is being filled again */
#define NGX_PRESENCE_LOADING       3

#define NGX_PRESENCE_BACKOFF_MIN   50
#define NGX_PRESENCE_BACKOFF_MAX   1000

/* a connection whose commands time out this many times in a row is stuck */
#define NGX_PRESENCE_MAX_TIMEOUTS  3


struct ngx_presence_cmd_s {
    ngx_presence_reply_pt          handler;
    void                          *data;
    struct timespec                start;
    ngx_uint_t                     script;
    int                            argc;

    /* in rds->waiting or rds->retry: not on the wire */
    ngx_queue_t                    queue;

    unsigned                       queued:1;
    unsigned                       retried:1;
    const char                    *argv[4 + NGX_PRESENCE_MAX_ARGS];
    size_t                         argvlen[4 + NGX_PRESENCE_MAX_ARGS];

    /* a listing: ZREVRANGE <key> 0 <stop>, none when the limit is 0 */
    ngx_int_t                      limit;
    u_char                         stop[NGX_INT_T_LEN];
    size_t                         stop_len;
};


/*
 * Replies are built in an arena of their own instead of hiredis's two
 * allocations per element: a listing of a thousand members was two
 * thousand malloc() and free() calls, a fifth of the worker's time.
 * The root redisReply comes first, so that freeing it finds the rest.
 */

typedef struct ngx_presence_block_s  ngx_presence_block_t;

struct ngx_presence_block_s {
    ngx_presence_block_t          *next;
    u_char                        *pos;
    u_char                        *end;
};


typedef struct {
    redisReply                     reply;
    ngx_presence_block_t          *blocks;
} ngx_presence_reply_t;


/* the first block comes with the root: enough for most replies */
#define NGX_PRESENCE_REPLY_INLINE  256
#define NGX_PRESENCE_BLOCK_SIZE    (64 * 1024)


typedef struct {
    redisAsyncContext             *ac;
    ngx_presence_redis_conf_t     *conf;
    ngx_log_t                     *log;

    /* reconnect after a backoff, or give up on a slow connect */
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

    unsigned                       exiting:1;
    unsigned                       unexpected:1;
    /* a transaction was left open: nothing more may go on this connection */
    unsigned                       broken:1;
} ngx_presence_redis_t;


static void ngx_presence_redis_connect(void);
static void ngx_presence_redis_schedule(void);
static void ngx_presence_redis_timer_handler(ngx_event_t *ev);
static void ngx_presence_redis_drop_handler(ngx_event_t *ev);
static void ngx_presence_redis_connect_failed(const char *err);
static void ngx_presence_redis_send_handshake(redisAsyncContext *ac);
static void ngx_presence_redis_load_scripts(redisAsyncContext *ac);
static void ngx_presence_redis_flush(void);
static void ngx_presence_redis_fail_queue(ngx_queue_t *queue);
static void ngx_presence_redis_finish(ngx_presence_cmd_t *cmd,
    redisReply *reply);
static void ngx_presence_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_presence_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_presence_redis_handshake_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_presence_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static ngx_int_t ngx_presence_redis_send(redisAsyncContext *ac,
    ngx_presence_cmd_t *cmd);
static void ngx_presence_redis_refused(redisAsyncContext *ac,
    ngx_presence_cmd_t *cmd);
static ngx_int_t ngx_presence_redis_noscript(ngx_presence_cmd_t *cmd,
    redisReply *reply);

static redisReply *ngx_presence_reply_object(const redisReadTask *task,
    size_t extra, u_char **p);
static void *ngx_presence_reply_string(const redisReadTask *task, char *str,
    size_t len);
static void *ngx_presence_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_presence_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_presence_reply_nil(const redisReadTask *task);
static void ngx_presence_reply_free(void *obj);

static void ngx_presence_redis_add_read(void *data);
static void ngx_presence_redis_del_read(void *data);
static void ngx_presence_redis_add_write(void *data);
static void ngx_presence_redis_del_write(void *data);
static void ngx_presence_redis_cleanup(void *data);
static void ngx_presence_redis_read_handler(ngx_event_t *ev);
static void ngx_presence_redis_write_handler(ngx_event_t *ev);


/*
 * The data model (DESIGN.md section 4).  A room is a sorted set whose
 * scores are the moments, by the Redis server's clock, at which members
 * stop being online; every script prunes what has expired first.
 */

/*
 * Numbers go to Redis formatted as integers: a Lua number as an argument
 * is printed as a float, which took a tenth of Redis's time per heartbeat.
 */

#define NGX_PRESENCE_LUA_NOW                                                  \
    "local t = redis.call('TIME')\n"                                          \
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"                     \
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf',"                         \
    " string.format('%d', now))\n"

static ngx_str_t  ngx_presence_scripts[NGX_PRESENCE_NSCRIPTS] = {

    /*
     * heartbeat: ARGV[1] user, ARGV[2] ttl in ms; returns the count.
     * The key's expiry only ever moves later: a location with a short
     * presence_ttl must not end a room that others keep alive longer
     * (PTTL is -1 for the key ZADD has just made).
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "local ttl = tonumber(ARGV[2])\n"
               "redis.call('ZADD', KEYS[1],"
               " string.format('%d', now + ttl), ARGV[1])\n"
               "if redis.call('PTTL', KEYS[1]) < ttl then\n"
               "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
               "end\n"
               "return redis.call('ZCARD', KEYS[1])\n"),

    /* leave: ARGV[1] user; returns the count */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "redis.call('ZREM', KEYS[1], ARGV[1])\n"
               "return redis.call('ZCARD', KEYS[1])\n"),

    /*
     * online: returns the count; the members come from a ZREVRANGE in the
     * same MULTI, which answers straight from Redis: a thousand members
     * through a Lua table cost Redis three times as much
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "return redis.call('ZCARD', KEYS[1])\n"),

    /* lookup: ARGV[1] user; returns the ms left, 0 when not online */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
               "if s then return tonumber(s) - now end\n"
               "return 0\n")
};


static redisReplyObjectFunctions  ngx_presence_reply_functions = {
    ngx_presence_reply_string,
    ngx_presence_reply_array,
    ngx_presence_reply_integer,
    ngx_presence_reply_nil,
    ngx_presence_reply_free
};


static u_char                 ngx_presence_sha[NGX_PRESENCE_NSCRIPTS][40];
static ngx_presence_redis_t   ngx_presence_redis;



char *
ngx_presence_redis_parse_address(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *value)
{
    u_char     *p;
    size_t      len;
    ngx_url_t   u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = 6379;

    /* a name is resolved here, once: a worker never waits on DNS */

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\" of the \"presence_redis\" "
                               "directive", u.err, &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.uri.len || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\" of the \"presence_redis\" "
                           "directive: expected \"host:port\" or "
                           "\"unix:/path\"", &u.url);
        return NGX_CONF_ERROR;
    }

    rcf->name = *value;

#if (NGX_HAVE_UNIX_DOMAIN)

    if (u.family == AF_UNIX) {
        p = (u_char *) ((struct sockaddr_un *) u.addrs[0].sockaddr)->sun_path;
        len = ngx_strlen(p);

        rcf->path.data = ngx_pnalloc(cf->pool, len + 1);
        if (rcf->path.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(rcf->path.data, p, len + 1);
        rcf->path.len = len;

        return NGX_CONF_OK;
    }

#endif

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                        NGX_SOCKADDR_STRLEN, 0);
    p[len] = '\0';

    rcf->host.data = p;
    rcf->host.len = len;
    rcf->port = ngx_inet_get_port(u.addrs[0].sockaddr);

    return NGX_CONF_OK;
}


ngx_int_t
ngx_presence_redis_init_process(ngx_cycle_t *cycle,
    ngx_presence_redis_conf_t *rcf)
{
    u_char                 digest[20];
    ngx_uint_t             i;
    ngx_sha1_t             sha1;
    ngx_presence_redis_t  *rds;

    for (i = 0; i < NGX_PRESENCE_NSCRIPTS; i++) {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, ngx_presence_scripts[i].data,
                        ngx_presence_scripts[i].len);
        ngx_sha1_final(digest, &sha1);
        ngx_hex_dump(ngx_presence_sha[i], digest, sizeof(digest));
    }

    rds = &ngx_presence_redis;

    ngx_memzero(rds, sizeof(ngx_presence_redis_t));

    rds->conf = rcf;
    rds->log = cycle->log;
    rds->backoff = NGX_PRESENCE_BACKOFF_MIN;

    ngx_queue_init(&rds->waiting);
    ngx_queue_init(&rds->retry);

    rds->timer.handler = ngx_presence_redis_timer_handler;
    rds->timer.log = cycle->log;
    rds->timer.data = rds;
    rds->timer.cancelable = 1;

    rds->drop.handler = ngx_presence_redis_drop_handler;
    rds->drop.log = cycle->log;
    rds->drop.data = rds;

    ngx_presence_redis_connect();

    return NGX_OK;
}


void
ngx_presence_redis_exit_process(ngx_cycle_t *cycle)
{
    redisAsyncContext     *ac;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    rds->exiting = 1;

    if (rds->timer.timer_set) {
        ngx_del_timer(&rds->timer);
    }

    if (rds->drop.posted) {
        ngx_delete_posted_event(&rds->drop);
    }

    ac = rds->ac;

    if (ac) {
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);
    }
}


static void
ngx_presence_redis_connect(void)
{
    redisAsyncContext          *ac;
    ngx_connection_t           *c;
    ngx_presence_redis_t       *rds;
    ngx_presence_redis_conf_t  *rcf;

    rds = &ngx_presence_redis;
    rcf = rds->conf;

    if (rcf->path.len) {
        ac = redisAsyncConnectUnix((char *) rcf->path.data);

    } else {
        /* the host is numeric: getaddrinfo() does no lookup */
        ac = redisAsyncConnect((char *) rcf->host.data, (int) rcf->port);
    }

    if (ac == NULL) {
        ngx_presence_redis_connect_failed("out of memory");
        return;
    }

    if (ac->err) {
        ngx_presence_redis_connect_failed(ac->errstr);
        redisAsyncFree(ac);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rds->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_presence_redis_schedule();
        return;
    }

    c->data = ac;
    c->read->handler = ngx_presence_redis_read_handler;
    c->write->handler = ngx_presence_redis_write_handler;
    c->read->log = rds->log;
    c->write->log = rds->log;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    ac->ev.data = c;
    ac->ev.addRead = ngx_presence_redis_add_read;
    ac->ev.delRead = ngx_presence_redis_del_read;
    ac->ev.addWrite = ngx_presence_redis_add_write;
    ac->ev.delWrite = ngx_presence_redis_del_write;
    ac->ev.cleanup = ngx_presence_redis_cleanup;

    /*
     * hiredis frees its read buffer after every reply over 16k by default
     * and allocates it again for the next: listings would do that all day
     */
    ac->c.reader->maxbuf = 0;
    ac->c.reader->fn = &ngx_presence_reply_functions;

    rds->ac = ac;
    rds->state = NGX_PRESENCE_CONNECTING;
    rds->timeouts = 0;
    rds->unexpected = 0;
    rds->broken = 0;

    /* the adapter is in place: this arms the write event */
    redisAsyncSetConnectCallback(ac, ngx_presence_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_presence_redis_on_disconnect);

    /*
     * hiredis buffers these until the socket is connected; requests
     * that come meanwhile wait in rds->waiting until all are answered
     */
    ngx_presence_redis_send_handshake(ac);

    ngx_add_timer(&rds->timer, rcf->timeout);
}


static void
ngx_presence_redis_send_handshake(redisAsyncContext *ac)
{
    char                       db[NGX_INT_T_LEN];
    size_t                     len[2];
    const char                *argv[2];
    ngx_presence_redis_t      *rds;
    ngx_presence_redis_conf_t *rcf;

    rds = &ngx_presence_redis;
    rcf = rds->conf;

    rds->handshake = 0;

    if (rcf->password.len) {
        argv[0] = "AUTH";
        len[0] = 4;
        argv[1] = (char *) rcf->password.data;
        len[1] = rcf->password.len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  NULL, 2, argv, len)
            == REDIS_OK)
        {
            rds->handshake++;
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
            rds->handshake++;
        }
    }

    ngx_presence_redis_load_scripts(ac);
}


/*
 * SCRIPT LOAD of every script, counted in rds->handshake: at the
 * handshake, and again after a NOSCRIPT (SCRIPT FLUSH).  Their replies
 * come after those of every command written before them.
 */

static void
ngx_presence_redis_load_scripts(redisAsyncContext *ac)
{
    size_t                 len[3];
    ngx_uint_t             i;
    const char            *argv[3];
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    for (i = 0; i < NGX_PRESENCE_NSCRIPTS; i++) {
        argv[0] = "SCRIPT";
        len[0] = 6;
        argv[1] = "LOAD";
        len[1] = 4;
        argv[2] = (char *) ngx_presence_scripts[i].data;
        len[2] = ngx_presence_scripts[i].len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  NULL, 3, argv, len)
            == REDIS_OK)
        {
            rds->handshake++;
        }
    }
}


static void
ngx_presence_redis_connect_failed(const char *err)
{
    ngx_uint_t             level;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    /* the first failure in a row is an error; retries only info */

    level = rds->failures++ ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, rds->log, 0,
                  "presence: cannot connect to redis at \"%V\": %s",
                  &rds->conf->name, err);

    if (rds->ac == NULL) {
        ngx_presence_redis_schedule();
    }
}


static void
ngx_presence_redis_schedule(void)
{
    ngx_msec_t             delay;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    rds->state = NGX_PRESENCE_DOWN;

    if (rds->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    /* jitter keeps the workers of a host from reconnecting in step */

    delay = rds->backoff / 2 + ngx_random() % (rds->backoff / 2 + 1);

    rds->backoff = ngx_min(rds->backoff * 2, NGX_PRESENCE_BACKOFF_MAX);

    ngx_add_timer(&rds->timer, delay);
}


static void
ngx_presence_redis_timer_handler(ngx_event_t *ev)
{
    ngx_presence_redis_t  *rds;

    rds = ev->data;

    if (rds->state == NGX_PRESENCE_DOWN) {
        ngx_presence_redis_connect();
        return;
    }

    if (rds->ac == NULL) {
        return;
    }

    if (rds->state == NGX_PRESENCE_CONNECTING) {
        ngx_presence_redis_connect_failed("timed out");
        redisAsyncFree(rds->ac);
        return;
    }

    if (rds->state == NGX_PRESENCE_LOADING) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: redis at \"%V\" did not load the scripts "
                      "in time, reconnecting", &rds->conf->name);
        redisAsyncFree(rds->ac);
    }
}


static void
ngx_presence_redis_drop_handler(ngx_event_t *ev)
{
    ngx_presence_redis_t  *rds;

    rds = ev->data;

    if (rds->ac == NULL) {
        return;
    }

    if (rds->broken) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: a transaction to redis at \"%V\" could not "
                      "be completed, reconnecting", &rds->conf->name);
        redisAsyncFree(rds->ac);
        return;
    }

    if (rds->timeouts < NGX_PRESENCE_MAX_TIMEOUTS) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: redis at \"%V\" did not answer %ui commands "
                  "in time, reconnecting", &rds->conf->name, rds->timeouts);

    /* every pending command now gets its callback with no reply */

    redisAsyncFree(rds->ac);
}


static void
ngx_presence_redis_on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        /* hiredis frees the context next; the cleanup reschedules */
        ngx_presence_redis_connect_failed(ac->errstr);
    }
}


static void
ngx_presence_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: lost the connection to redis at \"%V\": %s",
                      &rds->conf->name, ac->errstr);
    }
}


static void
ngx_presence_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply            *reply;
    ngx_presence_redis_t  *rds;

    reply = r;
    rds = &ngx_presence_redis;

    if (reply == NULL || rds->ac != ac) {
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

    if (--rds->handshake) {
        return;
    }

    if (rds->timer.timer_set) {
        ngx_del_timer(&rds->timer);
    }

    if (rds->state == NGX_PRESENCE_LOADING) {
        ngx_log_debug0(NGX_LOG_DEBUG_CORE, rds->log, 0,
                       "presence: redis scripts loaded again");

        rds->state = NGX_PRESENCE_READY;
        ngx_presence_redis_flush();
        return;
    }

    rds->state = NGX_PRESENCE_READY;
    rds->backoff = NGX_PRESENCE_BACKOFF_MIN;
    rds->failures = 0;

    if (rds->connects++) {
        ngx_presence_worker->reconnects++;
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->redis_reconnects,
                                    1);
    }

    ngx_presence_worker->connected = 1;

    ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                  "presence: connected to redis at \"%V\"", &rds->conf->name);

    ngx_presence_redis_flush();
}


/*
 * The connection is good: the commands refused with NOSCRIPT go again,
 * then those that waited, in the order they came.
 */

static void
ngx_presence_redis_flush(void)
{
    ngx_queue_t           *q, *queue;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    for (queue = &rds->retry; queue; queue = (queue == &rds->retry)
                                             ? &rds->waiting : NULL)
    {
        while (!ngx_queue_empty(queue)) {
            q = ngx_queue_head(queue);
            ngx_queue_remove(q);

            cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);
            cmd->queued = 0;

            (void) clock_gettime(CLOCK_MONOTONIC, &cmd->start);

            if (rds->broken
                || ngx_presence_redis_send(rds->ac, cmd) != NGX_OK)
            {
                ngx_presence_redis_finish(cmd, NULL);
                continue;
            }

            ngx_presence_worker->in_flight++;
        }
    }
}


/* commands that never went out, when the connection is gone */

static void
ngx_presence_redis_fail_queue(ngx_queue_t *queue)
{
    ngx_queue_t         *q;
    ngx_presence_cmd_t  *cmd;

    while (!ngx_queue_empty(queue)) {
        q = ngx_queue_head(queue);
        ngx_queue_remove(q);

        cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);
        cmd->queued = 0;

        ngx_presence_redis_finish(cmd, NULL);
    }
}


static void
ngx_presence_redis_finish(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    if (cmd->data && !ngx_presence_redis.exiting) {
        cmd->handler(cmd->data, reply);
    }

    ngx_free(cmd);
}


ngx_presence_cmd_t *
ngx_presence_redis_eval(ngx_uint_t script, ngx_str_t *key, ngx_str_t *args,
    ngx_uint_t nargs, ngx_presence_reply_pt handler, void *data,
    ngx_log_t *log)
{
    u_char                *p;
    size_t                 size;
    ngx_uint_t             i;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    if (rds->ac == NULL || rds->state == NGX_PRESENCE_DOWN || rds->broken) {
        return NULL;
    }

    /*
     * The command keeps its own copy of the key and the arguments: after
     * a NOSCRIPT it is sent again as EVAL, maybe after its request is gone.
     */

    size = sizeof(ngx_presence_cmd_t) + key->len;

    for (i = 0; i < nargs; i++) {
        size += args[i].len;
    }

    cmd = ngx_alloc(size, log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->script = script;
    cmd->queued = 0;
    cmd->retried = 0;
    cmd->limit = 0;
    cmd->stop_len = 0;
    cmd->argc = 4 + nargs;

    cmd->argv[0] = "EVALSHA";
    cmd->argvlen[0] = 7;
    cmd->argv[1] = (char *) ngx_presence_sha[script];
    cmd->argvlen[1] = 40;
    cmd->argv[2] = "1";
    cmd->argvlen[2] = 1;

    p = (u_char *) cmd + sizeof(ngx_presence_cmd_t);

    cmd->argv[3] = (char *) p;
    cmd->argvlen[3] = key->len;
    p = ngx_cpymem(p, key->data, key->len);

    for (i = 0; i < nargs; i++) {
        cmd->argv[4 + i] = (char *) p;
        cmd->argvlen[4 + i] = args[i].len;
        p = ngx_cpymem(p, args[i].data, args[i].len);
    }

    if (script == NGX_PRESENCE_ONLINE) {
        cmd->argc = 4;
        cmd->limit = ngx_atoi(args[0].data, args[0].len);

        if (cmd->limit > 0) {
            cmd->stop_len = ngx_sprintf(cmd->stop, "%i", cmd->limit - 1)
                            - cmd->stop;
        }
    }

    if (rds->state != NGX_PRESENCE_READY) {
        /* no command goes out before the handshake has succeeded */
        cmd->queued = 1;
        ngx_queue_insert_tail(&rds->waiting, &cmd->queue);
        return cmd;
    }

    (void) clock_gettime(CLOCK_MONOTONIC, &cmd->start);

    if (ngx_presence_redis_send(rds->ac, cmd) != NGX_OK) {
        ngx_free(cmd);
        return NULL;
    }

    ngx_presence_worker->in_flight++;

    return cmd;
}


/*
 * One EVALSHA (or EVAL); a listing is MULTI, the script, ZREVRANGE, EXEC,
 * and only the reply of EXEC, [count, members], comes to the handler.
 */

static ngx_int_t
ngx_presence_redis_send(redisAsyncContext *ac, ngx_presence_cmd_t *cmd)
{
    size_t       len[4];
    const char  *argv[4];

    if (cmd->script != NGX_PRESENCE_ONLINE) {
        return (redisAsyncCommandArgv(ac, ngx_presence_redis_reply, cmd,
                                      cmd->argc, cmd->argv, cmd->argvlen)
                == REDIS_OK) ? NGX_OK : NGX_ERROR;
    }

    argv[0] = "MULTI";
    len[0] = 5;

    if (redisAsyncCommandArgv(ac, NULL, NULL, 1, argv, len) != REDIS_OK) {
        return NGX_ERROR;
    }

    if (redisAsyncCommandArgv(ac, NULL, NULL, cmd->argc, cmd->argv,
                              cmd->argvlen)
        != REDIS_OK)
    {
        goto broken;
    }

    if (cmd->limit > 0) {
        argv[0] = "ZREVRANGE";
        len[0] = 9;
        argv[1] = cmd->argv[3];
        len[1] = cmd->argvlen[3];
        argv[2] = "0";
        len[2] = 1;
        argv[3] = (char *) cmd->stop;
        len[3] = cmd->stop_len;

        if (redisAsyncCommandArgv(ac, NULL, NULL, 4, argv, len)
            != REDIS_OK)
        {
            goto broken;
        }
    }

    argv[0] = "EXEC";
    len[0] = 4;

    if (redisAsyncCommandArgv(ac, ngx_presence_redis_reply, cmd, 1, argv, len)
        == REDIS_OK)
    {
        return NGX_OK;
    }

broken:

    /*
     * MULTI went out without its EXEC (hiredis ran out of memory): any
     * later command would join the transaction.  The connection is
     * dropped instead, and nothing more is written to it meanwhile.
     */

    ngx_presence_redis.broken = 1;

    if (!ngx_presence_redis.drop.posted) {
        ngx_post_event(&ngx_presence_redis.drop, &ngx_posted_events);
    }

    return NGX_ERROR;
}


void
ngx_presence_redis_detach(ngx_presence_cmd_t *cmd)
{
    if (cmd->queued) {
        /* not written yet: it never will be */
        ngx_queue_remove(&cmd->queue);
        ngx_free(cmd);
        return;
    }

    /* Redis answers in order: the command stays pending, its reply dropped */
    cmd->data = NULL;
}


void
ngx_presence_redis_timed_out(void)
{
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    if (++rds->timeouts >= NGX_PRESENCE_MAX_TIMEOUTS
        && rds->ac && !rds->drop.posted)
    {
        ngx_post_event(&rds->drop, &ngx_posted_events);
    }
}


/*
 * A reply the scripts never give: an error (WRONGTYPE, OOM, READONLY...)
 * or another type.  Every request then answers 503; the log says so once
 * per connection, without a request's context (the URL may hold a user
 * id), so that a misconfigured Redis does not write a line per request.
 */

void
ngx_presence_redis_unexpected(redisReply *reply)
{
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    if (rds->unexpected) {
        return;
    }

    rds->unexpected = 1;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: redis at \"%V\" answers an error, requests "
                      "get 503 (logged once per connection): %*s",
                      &rds->conf->name, (size_t) reply->len, reply->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: redis at \"%V\" answers a reply of type %d "
                  "where the scripts give another, requests get 503 "
                  "(logged once per connection)",
                  &rds->conf->name, reply->type);
}


static void
ngx_presence_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply            *reply;
    struct timespec        now;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_redis_t  *rds;

    reply = r;
    cmd = privdata;
    rds = &ngx_presence_redis;

    ngx_presence_worker->in_flight--;

    if (reply) {
        rds->timeouts = 0;

        (void) clock_gettime(CLOCK_MONOTONIC, &now);

        (void) ngx_atomic_fetch_add(&ngx_presence_counters->redis_rtt_us_sum,
                             (now.tv_sec - cmd->start.tv_sec) * 1000000
                             + (now.tv_nsec - cmd->start.tv_nsec) / 1000);
        (void) ngx_atomic_fetch_add(&ngx_presence_counters->redis_rtt_count,
                                    1);
    }

    if (reply && !cmd->retried && rds->ac == ac && !rds->exiting
        && ngx_presence_redis_noscript(cmd, reply))
    {
        ngx_presence_redis_refused(ac, cmd);
        return;
    }

    if (reply && !ngx_queue_empty(&rds->retry)) {
        /*
         * Redis ran this command, written after those it refused: run
         * now, they would take effect after it, a heartbeat after the
         * leave that followed it.  They fail instead.
         */
        ngx_presence_redis_fail_queue(&rds->retry);
    }

    ngx_presence_redis_finish(cmd, reply);
}


/*
 * The script cache was flushed (SCRIPT FLUSH; a restart or a failover
 * comes with a new connection, whose handshake loads the scripts).  The
 * scripts are loaded again; new commands wait meanwhile, and the refused
 * one goes again as EVAL once every command written before the loads has
 * been answered, so that none overtakes another.
 */

static void
ngx_presence_redis_refused(redisAsyncContext *ac, ngx_presence_cmd_t *cmd)
{
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;

    if (cmd->data == NULL) {
        ngx_free(cmd);
        return;
    }

    if (rds->state == NGX_PRESENCE_READY) {
        ngx_log_debug0(NGX_LOG_DEBUG_CORE, rds->log, 0,
                       "presence: redis answers NOSCRIPT, loading the "
                       "scripts again");

        rds->state = NGX_PRESENCE_LOADING;
        ngx_presence_redis_load_scripts(ac);

        if (rds->timer.timer_set) {
            ngx_del_timer(&rds->timer);
        }

        ngx_add_timer(&rds->timer, rds->conf->timeout);
    }

    cmd->retried = 1;
    cmd->argv[0] = "EVAL";
    cmd->argvlen[0] = 4;
    cmd->argv[1] = (char *) ngx_presence_scripts[cmd->script].data;
    cmd->argvlen[1] = ngx_presence_scripts[cmd->script].len;

    cmd->queued = 1;
    ngx_queue_insert_tail(&rds->retry, &cmd->queue);
}


/*
 * The script is not in Redis's cache.  In a MULTI, Redis refuses the
 * EVALSHA when it is queued (EXECABORT) or, in older versions, answers
 * NOSCRIPT in its place in the reply of EXEC.
 */

static ngx_int_t
ngx_presence_redis_noscript(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    if (cmd->script == NGX_PRESENCE_ONLINE
        && reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0)
    {
        reply = reply->element[0];
    }

    return reply->type == REDIS_REPLY_ERROR
           && (ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
               || (cmd->script == NGX_PRESENCE_ONLINE
                   && ngx_strncmp(reply->str, "EXECABORT", 9) == 0));
}


/*
 * The reply objects.  A root (task->parent is NULL) starts an arena; the
 * objects below it are carved from the arena of their root, found by
 * walking up the tasks.  hiredis frees only roots.
 */

static redisReply *
ngx_presence_reply_object(const redisReadTask *task, size_t extra, u_char **p)
{
    size_t                   size;
    redisReply              *r, *parent;
    ngx_presence_block_t    *b;
    ngx_presence_reply_t    *root;
    const redisReadTask     *t;

    extra = ngx_align(extra, sizeof(void *));

    if (task->parent == NULL) {
        size = ngx_max(extra, NGX_PRESENCE_REPLY_INLINE);

        root = ngx_alloc(sizeof(ngx_presence_reply_t)
                         + sizeof(ngx_presence_block_t) + size,
                         ngx_presence_redis.log);
        if (root == NULL) {
            return NULL;
        }

        b = (ngx_presence_block_t *) (root + 1);
        b->next = NULL;
        b->pos = (u_char *) (b + 1);
        b->end = b->pos + size;

        root->blocks = b;
        r = &root->reply;

    } else {
        for (t = task; t->parent; t = t->parent) { /* void */ }

        root = t->obj;
        b = root->blocks;
        size = sizeof(redisReply) + extra;

        if ((size_t) (b->end - b->pos) < size) {
            size = ngx_max(size, NGX_PRESENCE_BLOCK_SIZE);

            b = ngx_alloc(sizeof(ngx_presence_block_t) + size,
                          ngx_presence_redis.log);
            if (b == NULL) {
                return NULL;
            }

            b->next = root->blocks;
            b->pos = (u_char *) (b + 1);
            b->end = b->pos + size;

            root->blocks = b;
        }

        r = (redisReply *) b->pos;
        b->pos += sizeof(redisReply);

        parent = task->parent->obj;
        parent->element[task->idx] = r;
    }

    ngx_memzero(r, sizeof(redisReply));
    r->type = task->type;

    *p = b->pos;
    b->pos += extra;

    return r;
}


static void *
ngx_presence_reply_string(const redisReadTask *task, char *str, size_t len)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, len + 1, &p);
    if (r == NULL) {
        return NULL;
    }

    r->str = (char *) p;
    r->len = len;

    ngx_memcpy(p, str, len);
    p[len] = '\0';

    return r;
}


static void *
ngx_presence_reply_array(const redisReadTask *task, int elements)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, elements * sizeof(redisReply *), &p);
    if (r == NULL) {
        return NULL;
    }

    r->elements = elements;

    if (elements > 0) {
        r->element = (redisReply **) p;
        ngx_memzero(p, elements * sizeof(redisReply *));
    }

    return r;
}


static void *
ngx_presence_reply_integer(const redisReadTask *task, long long value)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, 0, &p);
    if (r == NULL) {
        return NULL;
    }

    r->integer = value;

    return r;
}


static void *
ngx_presence_reply_nil(const redisReadTask *task)
{
    u_char  *p;

    return ngx_presence_reply_object(task, 0, &p);
}


static void
ngx_presence_reply_free(void *obj)
{
    ngx_presence_reply_t  *root = obj;

    ngx_presence_block_t  *b, *next;

    /* the last block of the list came with the root */

    for (b = root->blocks; b->next; b = next) {
        next = b->next;
        ngx_free(b);
    }

    ngx_free(root);
}


/*
 * The event adapter.  hiredis calls these often and expects them to be
 * idempotent.  The events are level-triggered: hiredis reads at most 16k
 * per call, and an edge-triggered socket would stall a longer reply.
 */

static void
ngx_presence_redis_add_read(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "presence: cannot add the redis read event");
        }
    }
}


static void
ngx_presence_redis_del_read(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_presence_redis_add_write(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "presence: cannot add the redis write event");
        }
    }
}


static void
ngx_presence_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


static void
ngx_presence_redis_cleanup(void *data)
{
    ngx_connection_t      *c = data;

    redisAsyncContext     *ac;
    ngx_presence_redis_t  *rds;

    rds = &ngx_presence_redis;
    ac = c->data;

    /* hiredis may still call the hooks while it frees the context */
    ac->ev.addRead = NULL;
    ac->ev.delRead = NULL;
    ac->ev.addWrite = NULL;
    ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.data = NULL;

    ngx_close_connection(c);

    /* the fd is closed: keep hiredis from closing a reused number */
    ac->c.fd = -1;

    if (rds->ac != ac) {
        return;
    }

    rds->ac = NULL;
    ngx_presence_worker->connected = 0;

    if (rds->timer.timer_set) {
        ngx_del_timer(&rds->timer);
    }

    ngx_presence_redis_schedule();

    /* 503 to those that waited for this connection */

    ngx_presence_redis_fail_queue(&rds->retry);
    ngx_presence_redis_fail_queue(&rds->waiting);
}


static void
ngx_presence_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    /* either may be freed inside: touch neither afterwards */
    redisAsyncHandleRead(c->data);
}


static void
ngx_presence_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleWrite(c->data);
}
