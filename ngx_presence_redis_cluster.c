
/*
 * ngx_http_presence_module, the Redis side: a Redis Cluster
 * (presence_redis_cluster).
 *
 * Every key of a room carries the room's hash tag, so each command of the
 * data model touches one slot, and goes to the master that serves it.  A
 * worker keeps:
 *
 *   - the slot map, from CLUSTER SLOTS, asked on one connection to a seed
 *     or to a node the map named (the next one when it fails): at start,
 *     every second, and at most every 100 ms while replies say the map is
 *     stale (MOVED, CLUSTERDOWN) or a master's connection fails;
 *   - a connection per master, opened when a command first needs it, with
 *     the handshake of any data connection (AUTH, SCRIPT LOAD): a master
 *     promoted by a failover has none of the scripts;
 *   - the commands a cluster asked to wait (TRYAGAIN while a slot moves,
 *     CLUSTERDOWN while a failed master is replaced, LOADING), sent again
 *     after a backoff while three quarters of presence_redis_timeout are
 *     not gone, then answered 503.
 *
 * MOVED updates the map and sends the command to the new master; ASK
 * sends ASKING and the command to the node the slot is moving to, and
 * leaves the map as it is.  The nodes answer numeric addresses (unless
 * told to announce names): a worker never resolves a name, a name is
 * logged and its slots answer 503.
 *
 * The live streams' subscriber connection goes to the node the map was
 * last asked from: a PUBLISH reaches every node of a cluster.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


#define NGX_PRESENCE_SLOTS              16384

/* the slot map is asked again this often, and on demand no more often */
#define NGX_PRESENCE_CLUSTER_INTERVAL   1000
#define NGX_PRESENCE_CLUSTER_SOON       100

/* a command asked to wait is sent again after this backoff, doubling */
#define NGX_PRESENCE_RETRY_MIN          10
#define NGX_PRESENCE_RETRY_MAX          200

/* MOVED and ASK for one command: more is a cluster in a loop */
#define NGX_PRESENCE_MAX_REDIRECTS      5

/* what a cluster's refusal of a command says */
#define NGX_PRESENCE_REFUSED_MOVED      1
#define NGX_PRESENCE_REFUSED_ASK        2
#define NGX_PRESENCE_REFUSED_WAIT       3
#define NGX_PRESENCE_REFUSED_DOWN       4
/* a redirection to nowhere a worker can go (a name, garbage) */
#define NGX_PRESENCE_REFUSED_LOST       5


struct ngx_presence_node_s {
    /* first: a connection's context data leads to its node */
    ngx_presence_conn_t            conn;

    ngx_presence_addr_t            addr;
    ngx_queue_t                    queue;

    u_char                         host[NGX_SOCKADDR_STRLEN + 1];
    u_char                         name[NGX_SOCKADDR_STRLEN + NGX_INT_T_LEN
                                        + 3];

    unsigned                       mapped:1;
};


struct ngx_presence_cluster_s {
    ngx_presence_redis_t          *redis;

    /* the master of each slot, NULL for a slot nobody serves */
    ngx_presence_node_t          **slots;

    /* every node the map or a redirection has named: never freed */
    ngx_queue_t                    nodes;
    ngx_uint_t                     nnodes;

    /* asks CLUSTER SLOTS; on a failure, the next seed or node */
    ngx_presence_conn_t            conn;
    ngx_uint_t                     next;
    ngx_msec_t                     asked;

    /* commands that came before the first map */
    ngx_queue_t                    waiting;
    /* commands sent again at their cmd->due */
    ngx_queue_t                    delayed;

    ngx_event_t                    tick;
    ngx_event_t                    soon;
    ngx_event_t                    retry;

    unsigned                       mapped:1;
    unsigned                       asking:1;
    unsigned                       again:1;
    unsigned                       named:1;
};


static void ngx_presence_redis_cluster_ask(ngx_presence_cluster_t *cl);
static void ngx_presence_redis_cluster_refresh(ngx_presence_redis_t *rds);
static void ngx_presence_redis_cluster_tick(ngx_event_t *ev);
static void ngx_presence_redis_cluster_soon(ngx_event_t *ev);
static void ngx_presence_redis_cluster_slots_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_presence_redis_cluster_map(ngx_presence_cluster_t *cl,
    redisReply *reply);
static ngx_int_t ngx_presence_redis_cluster_range(ngx_presence_cluster_t *cl,
    redisReply *range, uint8_t *covered);
static ngx_presence_node_t *ngx_presence_redis_cluster_node(
    ngx_presence_cluster_t *cl, u_char *host, size_t len, ngx_int_t port);
static ngx_int_t ngx_presence_redis_cluster_route(ngx_presence_cmd_t *cmd,
    ngx_presence_node_t *node);
static void ngx_presence_redis_cluster_resend(ngx_presence_cmd_t *cmd);
static ngx_uint_t ngx_presence_redis_cluster_error(ngx_presence_cmd_t *cmd,
    redisReply *reply, ngx_presence_node_t **node);
static void ngx_presence_redis_cluster_delay(ngx_presence_cmd_t *cmd);
static void ngx_presence_redis_cluster_retry(ngx_event_t *ev);
static void ngx_presence_redis_cluster_arm(ngx_presence_cluster_t *cl,
    ngx_msec_t due);
static ngx_presence_addr_t *ngx_presence_redis_cluster_next(
    ngx_presence_cluster_t *cl);


ngx_int_t
ngx_presence_redis_cluster_start(ngx_presence_redis_t *rds)
{
    ngx_presence_cluster_t  *cl;

    cl = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_presence_cluster_t));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->slots = ngx_pcalloc(ngx_cycle->pool,
                            NGX_PRESENCE_SLOTS * sizeof(ngx_presence_node_t *));
    if (cl->slots == NULL) {
        return NGX_ERROR;
    }

    cl->redis = rds;
    rds->cluster = cl;

    ngx_queue_init(&cl->nodes);
    ngx_queue_init(&cl->waiting);
    ngx_queue_init(&cl->delayed);

    cl->tick.handler = ngx_presence_redis_cluster_tick;
    cl->tick.log = rds->log;
    cl->tick.data = cl;
    cl->tick.cancelable = 1;

    cl->soon.handler = ngx_presence_redis_cluster_soon;
    cl->soon.log = rds->log;
    cl->soon.data = cl;
    cl->soon.cancelable = 1;

    cl->retry.handler = ngx_presence_redis_cluster_retry;
    cl->retry.log = rds->log;
    cl->retry.data = cl;
    cl->retry.cancelable = 1;

    ngx_presence_redis_conn_init(&cl->conn, rds, rds->log);
    cl->conn.cluster = 1;
    cl->conn.addr = ngx_presence_redis_cluster_next(cl);

    ngx_presence_redis_connect(&cl->conn);

    ngx_add_timer(&cl->tick, NGX_PRESENCE_CLUSTER_INTERVAL);

    return NGX_OK;
}


/* at exit: the callbacks of the freed contexts see rds->exiting */

void
ngx_presence_redis_cluster_stop(ngx_presence_redis_t *rds)
{
    ngx_queue_t             *q;
    ngx_presence_node_t     *node;
    ngx_presence_cluster_t  *cl;

    cl = rds->cluster;

    if (cl == NULL) {
        return;
    }

    if (cl->tick.timer_set) {
        ngx_del_timer(&cl->tick);
    }

    if (cl->soon.timer_set) {
        ngx_del_timer(&cl->soon);
    }

    if (cl->retry.timer_set) {
        ngx_del_timer(&cl->retry);
    }

    ngx_presence_redis_conn_close(&cl->conn);

    for (q = ngx_queue_head(&cl->nodes);
         q != ngx_queue_sentinel(&cl->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_presence_node_t, queue);
        ngx_presence_redis_conn_close(&node->conn);
    }

    ngx_presence_redis_fail_queue(&cl->waiting);
    ngx_presence_redis_fail_queue(&cl->delayed);
}


/*
 * The slot of a key: CRC16 (XMODEM) of its hash tag, the part between the
 * first "{" and the next "}" when that is not empty, else of all of it.
 */

ngx_uint_t
ngx_presence_redis_cluster_slot(ngx_str_t *key)
{
    u_char      *p, *last, *open, *close;
    uint16_t     crc;
    ngx_uint_t   i;

    p = key->data;
    last = key->data + key->len;

    open = ngx_strlchr(p, last, '{');

    if (open) {
        close = ngx_strlchr(open + 1, last, '}');

        if (close && close > open + 1) {
            p = open + 1;
            last = close;
        }
    }

    crc = 0;

    while (p < last) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc & (NGX_PRESENCE_SLOTS - 1);
}


/*
 * A command of the data model: to its slot's master, or to wait for the
 * first map.  NGX_ERROR when nobody can take it now: the request gets
 * 503 at once.
 */

ngx_int_t
ngx_presence_redis_cluster_submit(ngx_presence_cmd_t *cmd)
{
    ngx_presence_node_t     *node;
    ngx_presence_cluster_t  *cl;

    cl = cmd->redis->cluster;

    if (!cl->mapped) {
        if (cl->conn.ac == NULL) {
            return NGX_ERROR;
        }

        cmd->queued = 1;
        ngx_queue_insert_tail(&cl->waiting, &cmd->queue);
        return NGX_OK;
    }

    node = cl->slots[cmd->slot];

    if (node == NULL
        || ngx_presence_redis_cluster_route(cmd, node) != NGX_OK)
    {
        ngx_presence_redis_cluster_refresh(cmd->redis);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The command goes to this node's connection, opened now when it was
 * never needed before.  A connection that failed and waits for its
 * backoff takes nothing: the map is asked whether the node still serves.
 */

static ngx_int_t
ngx_presence_redis_cluster_route(ngx_presence_cmd_t *cmd,
    ngx_presence_node_t *node)
{
    ngx_presence_conn_t  *conn;

    conn = &node->conn;

    if (conn->ac == NULL) {
        if (conn->timer.timer_set) {
            return NGX_ERROR;
        }

        conn->idle = 0;
        ngx_presence_redis_connect(conn);

        if (conn->ac == NULL) {
            return NGX_ERROR;
        }
    }

    if (conn->broken) {
        return NGX_ERROR;
    }

    return ngx_presence_redis_submit_to(cmd, conn);
}


/* again, after a redirection or a wait; 503 when that cannot be */

static void
ngx_presence_redis_cluster_resend(ngx_presence_cmd_t *cmd)
{
    ngx_presence_node_t     *node;
    ngx_presence_cluster_t  *cl;

    cl = cmd->redis->cluster;

    node = cmd->asking ? cmd->target : cl->slots[cmd->slot];

    if (node && ngx_presence_redis_cluster_route(cmd, node) == NGX_OK) {
        return;
    }

    ngx_presence_redis_cluster_refresh(cmd->redis);
    ngx_presence_redis_finish(cmd, NULL);
}


/*
 * A reply of the data model's commands: NGX_OK when it was a cluster's
 * refusal, and the command is on its way again, waits, or has failed;
 * NGX_DECLINED when it is the command's answer.
 */

ngx_int_t
ngx_presence_redis_cluster_reply(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    ngx_uint_t               refused;
    ngx_presence_node_t     *node;
    ngx_presence_redis_t    *rds;
    ngx_presence_cluster_t  *cl;

    if (cmd->data == NULL || reply->type != REDIS_REPLY_ERROR) {
        return NGX_DECLINED;
    }

    rds = cmd->redis;
    cl = rds->cluster;

    node = NULL;

    if (cmd->refused
        && reply->len >= 9
        && ngx_strncmp(reply->str, "EXECABORT", 9) == 0)
    {
        /* a listing: the reason came with its queued script */
        refused = cmd->refused;
        node = cmd->target;

    } else {
        refused = ngx_presence_redis_cluster_error(cmd, reply, &node);
    }

    switch (refused) {

    case NGX_PRESENCE_REFUSED_MOVED:
    case NGX_PRESENCE_REFUSED_ASK:

        (void) ngx_atomic_fetch_add(&rds->counters->redis_redirects, 1);

        if (++cmd->redirects > NGX_PRESENCE_MAX_REDIRECTS) {
            ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                          "presence: redis cluster redirected a command "
                          "%ui times, giving up: %*s",
                          cmd->redirects - 1, (size_t) reply->len,
                          reply->str);
            ngx_presence_redis_finish(cmd, NULL);
            return NGX_OK;
        }

        if (refused == NGX_PRESENCE_REFUSED_MOVED) {
            cl->slots[cmd->slot] = node;
            cmd->asking = 0;
            ngx_presence_redis_cluster_refresh(rds);

        } else {
            cmd->asking = 1;
            cmd->target = node;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                       "presence: redis command %p redirected to \"%V\"",
                       cmd, &node->addr.name);

        if (ngx_presence_redis_cluster_route(cmd, node) != NGX_OK) {
            ngx_presence_redis_finish(cmd, NULL);
        }

        return NGX_OK;

    case NGX_PRESENCE_REFUSED_DOWN:

        /* a master failed: the map changes once a replica replaces it */
        ngx_presence_redis_cluster_refresh(rds);

        /* fall through */

    case NGX_PRESENCE_REFUSED_WAIT:

        ngx_presence_redis_cluster_delay(cmd);
        return NGX_OK;

    case NGX_PRESENCE_REFUSED_LOST:

        ngx_presence_redis_finish(cmd, NULL);
        return NGX_OK;

    default:
        return NGX_DECLINED;
    }
}


/*
 * A listing's script or ZREVRANGE was refused when queued in the MULTI:
 * EXEC will only say EXECABORT, so the reason is kept for it.
 */

void
ngx_presence_redis_cluster_refused(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    ngx_presence_node_t  *node;

    if (cmd->data == NULL || cmd->redis->exiting) {
        return;
    }

    node = NULL;

    cmd->refused = ngx_presence_redis_cluster_error(cmd, reply, &node);
    cmd->target = node;
}


/*
 * "MOVED <slot> <host>:<port>", "ASK <slot> <host>:<port>" (an empty host
 * is the node that answered), "TRYAGAIN ...", "CLUSTERDOWN ...",
 * "LOADING ..."; 0 for any other error.
 */

static ngx_uint_t
ngx_presence_redis_cluster_error(ngx_presence_cmd_t *cmd, redisReply *reply,
    ngx_presence_node_t **node)
{
    u_char                  *p, *last, *host, *colon;
    size_t                   len;
    ngx_int_t                port;
    ngx_uint_t               refused;
    ngx_presence_addr_t     *from;
    ngx_presence_cluster_t  *cl;

    p = (u_char *) reply->str;
    last = p + reply->len;
    len = reply->len;

    if (len >= 8 && ngx_strncmp(p, "TRYAGAIN", 8) == 0) {
        return NGX_PRESENCE_REFUSED_WAIT;
    }

    if (len >= 7 && ngx_strncmp(p, "LOADING", 7) == 0) {
        return NGX_PRESENCE_REFUSED_WAIT;
    }

    if (len >= 11 && ngx_strncmp(p, "CLUSTERDOWN", 11) == 0) {
        return NGX_PRESENCE_REFUSED_DOWN;
    }

    if (len >= 6 && ngx_strncmp(p, "MOVED ", 6) == 0) {
        refused = NGX_PRESENCE_REFUSED_MOVED;
        p += 6;

    } else if (len >= 4 && ngx_strncmp(p, "ASK ", 4) == 0) {
        refused = NGX_PRESENCE_REFUSED_ASK;
        p += 4;

    } else {
        return 0;
    }

    cl = cmd->redis->cluster;

    /* the slot, which is the command's, then the endpoint */

    p = ngx_strlchr(p, last, ' ');
    colon = NULL;

    if (p) {
        host = ++p;

        for ( /* void */ ; p < last; p++) {
            if (*p == ':') {
                colon = p;
            }
        }
    }

    if (colon == NULL) {
        goto lost;
    }

    port = ngx_atoi(colon + 1, last - colon - 1);
    len = colon - host;

    if (len && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }

    if (len == 0) {
        from = cmd->conn->addr;
        host = from->host.data;
        len = from->host.len;
    }

    *node = ngx_presence_redis_cluster_node(cl, host, len, port);

    if (*node == NULL) {
        goto lost;
    }

    return refused;

lost:

    ngx_log_error(NGX_LOG_ERR, cmd->redis->log, 0,
                  "presence: redis cluster redirects to where a worker "
                  "cannot go (not a numeric address?): %*s",
                  (size_t) reply->len, reply->str);

    return NGX_PRESENCE_REFUSED_LOST;
}


/*
 * The cluster asked the command to wait: it is sent again after a
 * backoff with jitter, unless that would leave it less than a quarter of
 * presence_redis_timeout, the time its request has before a 504.
 */

static void
ngx_presence_redis_cluster_delay(ngx_presence_cmd_t *cmd)
{
    ngx_msec_t               delay, spent;
    ngx_presence_redis_t    *rds;

    rds = cmd->redis;

    delay = ngx_min(NGX_PRESENCE_RETRY_MIN << ngx_min(cmd->tries, 8),
                    NGX_PRESENCE_RETRY_MAX);
    delay = delay / 2 + ngx_random() % (delay / 2 + 1);

    cmd->tries++;

    spent = ngx_current_msec - cmd->created;

    if (spent + delay >= rds->conf->timeout / 4 * 3) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                       "presence: redis command %p waited long enough", cmd);
        ngx_presence_redis_finish(cmd, NULL);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                   "presence: redis command %p again in %M ms", cmd, delay);

    cmd->conn = NULL;
    cmd->due = ngx_current_msec + delay;
    cmd->queued = 1;
    ngx_queue_insert_tail(&rds->cluster->delayed, &cmd->queue);

    ngx_presence_redis_cluster_arm(rds->cluster, cmd->due);
}


/* the retry timer fires at the earliest due of the delayed commands */

static void
ngx_presence_redis_cluster_arm(ngx_presence_cluster_t *cl, ngx_msec_t due)
{
    ngx_msec_int_t  left;

    if (cl->retry.timer_set) {
        if ((ngx_msec_int_t) (cl->retry.timer.key - due) <= 0) {
            return;
        }

        /* ngx_add_timer() would keep a timer less than 300 ms later */
        ngx_del_timer(&cl->retry);
    }

    left = (ngx_msec_int_t) (due - ngx_current_msec);

    ngx_add_timer(&cl->retry, left > 0 ? (ngx_msec_t) left : 1);
}


static void
ngx_presence_redis_cluster_retry(ngx_event_t *ev)
{
    ngx_queue_t              due, *q, *next;
    ngx_presence_cmd_t      *cmd;
    ngx_presence_cluster_t  *cl;

    cl = ev->data;

    /*
     * Those due are taken off first: sending one may end its request,
     * whose handlers may detach other commands
     */

    ngx_queue_init(&due);

    for (q = ngx_queue_head(&cl->delayed);
         q != ngx_queue_sentinel(&cl->delayed);
         q = next)
    {
        next = ngx_queue_next(q);
        cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);

        if ((ngx_msec_int_t) (cmd->due - ngx_current_msec) <= 0) {
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&due, q);
        }
    }

    while ((cmd = ngx_presence_redis_dequeue(&due))) {
        ngx_presence_redis_cluster_resend(cmd);
    }

    for (q = ngx_queue_head(&cl->delayed);
         q != ngx_queue_sentinel(&cl->delayed);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);
        ngx_presence_redis_cluster_arm(cl, cmd->due);
    }
}


/* the connection that asks for the slots is ready: it asks */

void
ngx_presence_redis_cluster_ready(ngx_presence_conn_t *conn)
{
    u_char                  *p;
    ngx_presence_addr_t     *addr;
    ngx_presence_redis_t    *rds;
    ngx_presence_cluster_t  *cl;

    rds = conn->redis;
    cl = rds->cluster;
    addr = conn->addr;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: asking redis cluster node \"%V\" for the slots",
                   &addr->name);

    /* the subscriber connection goes to a node known to answer */

    p = ngx_cpymem(rds->master_host, addr->host.data, addr->host.len);
    *p = '\0';

    rds->master.host.len = addr->host.len;
    rds->master.port = addr->port;
    rds->master.name = addr->name;

    if (rds->sub_started && rds->sub.ac == NULL) {
        ngx_presence_redis_move(&rds->sub);
    }

    cl->asking = 0;
    ngx_presence_redis_cluster_ask(cl);
}


/*
 * A connection of the cluster is gone.  The one that asks for the slots
 * goes to the next seed or node; when a master's is, the map is asked
 * whether a replica replaces it.
 */

void
ngx_presence_redis_cluster_closed(ngx_presence_conn_t *conn)
{
    ngx_presence_redis_t    *rds;
    ngx_presence_cluster_t  *cl;

    rds = conn->redis;
    cl = rds->cluster;

    if (rds->exiting) {
        return;
    }

    if (conn->pubsub) {
        return;
    }

    if (conn != &cl->conn) {
        ngx_presence_redis_cluster_refresh(rds);
        return;
    }

    cl->asking = 0;
    rds->worker->connected = 0;

    conn->addr = ngx_presence_redis_cluster_next(cl);

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: asking redis cluster node \"%V\" next",
                   &conn->addr->name);

    if (!cl->mapped) {
        /* nothing to send them to: 503 */
        ngx_presence_redis_fail_queue(&cl->waiting);
    }
}


/* the seeds in turn, then every node known */

static ngx_presence_addr_t *
ngx_presence_redis_cluster_next(ngx_presence_cluster_t *cl)
{
    ngx_uint_t            i, nseeds;
    ngx_queue_t          *q;
    ngx_presence_addr_t  *seeds;
    ngx_presence_node_t  *node;

    seeds = cl->redis->conf->seeds->elts;
    nseeds = cl->redis->conf->seeds->nelts;

    i = cl->next++ % (nseeds + cl->nnodes);

    if (i < nseeds) {
        return &seeds[i];
    }

    i -= nseeds;

    for (q = ngx_queue_head(&cl->nodes); i; q = ngx_queue_next(q)) {
        i--;
    }

    node = ngx_queue_data(q, ngx_presence_node_t, queue);

    return &node->addr;
}


/*
 * The map may be stale: it is asked now, or when NGX_PRESENCE_CLUSTER_SOON
 * has passed since it was last asked, or again after the answer on its
 * way (which may predate the change).
 */

static void
ngx_presence_redis_cluster_refresh(ngx_presence_redis_t *rds)
{
    ngx_msec_t               since;
    ngx_presence_cluster_t  *cl;

    cl = rds->cluster;

    if (rds->exiting) {
        return;
    }

    if (cl->asking) {
        cl->again = 1;
        return;
    }

    since = ngx_current_msec - cl->asked;

    if (since >= NGX_PRESENCE_CLUSTER_SOON) {
        ngx_presence_redis_cluster_ask(cl);
        return;
    }

    if (!cl->soon.timer_set) {
        ngx_add_timer(&cl->soon, NGX_PRESENCE_CLUSTER_SOON - since);
    }
}


static void
ngx_presence_redis_cluster_soon(ngx_event_t *ev)
{
    ngx_presence_redis_cluster_ask(ev->data);
}


static void
ngx_presence_redis_cluster_tick(ngx_event_t *ev)
{
    ngx_presence_cluster_t  *cl;

    cl = ev->data;

    if (cl->asking
        && ngx_current_msec - cl->asked >= cl->redis->conf->timeout)
    {
        ngx_log_error(NGX_LOG_ERR, cl->redis->log, 0,
                      "presence: redis cluster node \"%V\" did not give "
                      "the slots in time, asking another",
                      &cl->conn.addr->name);

        ngx_presence_redis_move(&cl->conn);

    } else {
        ngx_presence_redis_cluster_ask(cl);
    }

    ngx_add_timer(&cl->tick, NGX_PRESENCE_CLUSTER_INTERVAL);
}


static void
ngx_presence_redis_cluster_ask(ngx_presence_cluster_t *cl)
{
    size_t        len[2];
    const char   *argv[2];

    if (cl->asking) {
        cl->again = 1;
        return;
    }

    if (cl->conn.ac == NULL || cl->conn.state != NGX_PRESENCE_READY
        || cl->redis->exiting)
    {
        /* it asks once it is ready */
        return;
    }

    if (cl->soon.timer_set) {
        ngx_del_timer(&cl->soon);
    }

    argv[0] = "CLUSTER";
    len[0] = 7;
    argv[1] = "SLOTS";
    len[1] = 5;

    if (redisAsyncCommandArgv(cl->conn.ac,
                              ngx_presence_redis_cluster_slots_reply,
                              NULL, 2, argv, len)
        != REDIS_OK)
    {
        return;
    }

    cl->asking = 1;
    cl->again = 0;
    cl->asked = ngx_current_msec;
}


static void
ngx_presence_redis_cluster_slots_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply              *reply;
    ngx_presence_conn_t     *conn;
    ngx_presence_redis_t    *rds;
    ngx_presence_cluster_t  *cl;

    reply = r;

    conn = ngx_presence_redis_reply_conn(ac, reply);
    if (conn == NULL) {
        return;
    }

    rds = conn->redis;
    cl = rds->cluster;

    if (rds->exiting) {
        return;
    }

    cl->asking = 0;

    if (reply->type != REDIS_REPLY_ARRAY) {
        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                          "presence: redis at \"%V\" does not give the "
                          "slots of a cluster: %*s", &conn->addr->name,
                          (size_t) reply->len, reply->str);

        } else {
            ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                          "presence: redis at \"%V\" answers CLUSTER SLOTS "
                          "with a reply of type %d", &conn->addr->name,
                          reply->type);
        }

        ngx_presence_redis_move(conn);
        return;
    }

    ngx_presence_redis_cluster_map(cl, reply);

    if (cl->again) {
        ngx_presence_redis_cluster_refresh(rds);
    }
}


/*
 * CLUSTER SLOTS: [[first, last, [host, port, id, ...], replicas...], ...].
 * A slot in no range has no master: its rooms answer 503.  The nodes no
 * longer in the map are left alone: connected, they say MOVED; down,
 * they are not connected again until a command needs them.
 */

static void
ngx_presence_redis_cluster_map(ngx_presence_cluster_t *cl, redisReply *reply)
{
    size_t                 i;
    uint8_t                covered[NGX_PRESENCE_SLOTS / 8];
    ngx_uint_t             s, served;
    ngx_queue_t           *q;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_node_t   *node;
    ngx_presence_redis_t  *rds;

    rds = cl->redis;

    ngx_memzero(covered, sizeof(covered));

    for (q = ngx_queue_head(&cl->nodes);
         q != ngx_queue_sentinel(&cl->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_presence_node_t, queue);
        node->mapped = 0;
    }

    for (i = 0; i < reply->elements; i++) {
        (void) ngx_presence_redis_cluster_range(cl, reply->element[i],
                                                covered);
    }

    served = 0;

    for (s = 0; s < NGX_PRESENCE_SLOTS; s++) {
        if (covered[s / 8] & (1 << (s % 8))) {
            served++;

        } else {
            cl->slots[s] = NULL;
        }
    }

    for (q = ngx_queue_head(&cl->nodes);
         q != ngx_queue_sentinel(&cl->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_presence_node_t, queue);

        node->conn.idle = !node->mapped;

        if (node->conn.idle && node->conn.ac == NULL
            && node->conn.timer.timer_set)
        {
            ngx_del_timer(&node->conn.timer);
        }
    }

    rds->worker->connected = 1;

    if (cl->mapped) {
        return;
    }

    cl->mapped = 1;

    ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                  "presence: redis cluster at \"%V\": %ui of %d slots "
                  "served", &cl->conn.addr->name, served, NGX_PRESENCE_SLOTS);

    while ((cmd = ngx_presence_redis_dequeue(&cl->waiting))) {
        ngx_presence_redis_cluster_resend(cmd);
    }
}


/* one range of CLUSTER SLOTS, into the map */

static ngx_int_t
ngx_presence_redis_cluster_range(ngx_presence_cluster_t *cl,
    redisReply *range, uint8_t *covered)
{
    u_char               *host;
    size_t                len;
    ngx_uint_t            s, first, last, moved;
    redisReply           *master;
    ngx_presence_addr_t  *from;
    ngx_presence_node_t  *node;

    if (range->type != REDIS_REPLY_ARRAY
        || range->elements < 3
        || range->element[0]->type != REDIS_REPLY_INTEGER
        || range->element[1]->type != REDIS_REPLY_INTEGER
        || range->element[2]->type != REDIS_REPLY_ARRAY
        || range->element[2]->elements < 2
        || range->element[2]->element[0]->type != REDIS_REPLY_STRING
        || range->element[2]->element[1]->type != REDIS_REPLY_INTEGER
        || range->element[0]->integer < 0
        || range->element[1]->integer >= NGX_PRESENCE_SLOTS
        || range->element[0]->integer > range->element[1]->integer)
    {
        return NGX_DECLINED;
    }

    first = (ngx_uint_t) range->element[0]->integer;
    last = (ngx_uint_t) range->element[1]->integer;
    master = range->element[2];

    host = (u_char *) master->element[0]->str;
    len = master->element[0]->len;

    if (len == 0 || (len == 1 && host[0] == '?')) {
        /* an endpoint the node does not know: the node asked */
        from = cl->conn.addr;
        host = from->host.data;
        len = from->host.len;
    }

    node = ngx_presence_redis_cluster_node(cl, host, len,
                                           master->element[1]->integer);
    if (node == NULL) {
        return NGX_DECLINED;
    }

    node->mapped = 1;
    moved = 0;

    for (s = first; s <= last; s++) {
        if (cl->slots[s] != node) {
            moved += (cl->slots[s] != NULL);
            cl->slots[s] = node;
        }

        covered[s / 8] |= (uint8_t) (1 << (s % 8));
    }

    if (moved && cl->mapped) {
        (void) ngx_atomic_fetch_add(&cl->redis->counters->redis_failovers, 1);

        ngx_log_error(NGX_LOG_NOTICE, cl->redis->log, 0,
                      "presence: redis cluster slots %ui-%ui are served by "
                      "\"%V\" now", first, last, &node->addr.name);
    }

    return NGX_OK;
}


/* the node at host:port, known or new; NULL for a name or a bad port */

static ngx_presence_node_t *
ngx_presence_redis_cluster_node(ngx_presence_cluster_t *cl, u_char *host,
    size_t len, ngx_int_t port)
{
    u_char               *p;
    ngx_queue_t          *q;
    struct in6_addr       in6;
    ngx_presence_node_t  *node;

    for (q = ngx_queue_head(&cl->nodes);
         q != ngx_queue_sentinel(&cl->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_presence_node_t, queue);

        if (node->addr.port == port
            && node->addr.host.len == len
            && ngx_strncmp(node->addr.host.data, host, len) == 0)
        {
            return node;
        }
    }

    if (port <= 0 || port > 65535 || len == 0 || len > NGX_SOCKADDR_STRLEN
        || (ngx_inet_addr(host, len) == INADDR_NONE
#if (NGX_HAVE_INET6)
            && ngx_inet6_addr(host, len, in6.s6_addr) != NGX_OK
#endif
           ))
    {
        if (!cl->named) {
            cl->named = 1;

            ngx_log_error(NGX_LOG_ERR, cl->redis->log, 0,
                          "presence: redis cluster names a node \"%*s\" "
                          "port %i, not a numeric address and port: its "
                          "slots answer 503 (a worker does not resolve "
                          "names; logged once)", len, host, port);
        }

        return NULL;
    }

    node = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_presence_node_t));
    if (node == NULL) {
        return NULL;
    }

    p = ngx_cpymem(node->host, host, len);
    *p = '\0';

    node->addr.host.data = node->host;
    node->addr.host.len = len;
    node->addr.port = port;

    /* an IPv6 address in brackets, as nginx writes one with a port */

    if (ngx_strlchr(host, host + len, ':')) {
        p = ngx_sprintf(node->name, "[%*s]:%i", len, host, port);

    } else {
        p = ngx_sprintf(node->name, "%*s:%i", len, host, port);
    }

    node->addr.name.data = node->name;
    node->addr.name.len = p - node->name;

    ngx_presence_redis_conn_init(&node->conn, cl->redis, cl->redis->log);
    node->conn.addr = &node->addr;

    ngx_queue_insert_tail(&cl->nodes, &node->queue);
    cl->nnodes++;

    return node;
}
