
/*
 * ngx_http_presence_module, the Redis side: the master of a Sentinel set
 * (presence_redis_sentinel).
 *
 * A worker keeps a connection to every sentinel and one more, to one of
 * them, subscribed to +switch-master.  Every 2 s, when the data
 * connection drops, when a master refuses a write (READONLY) or fails
 * the ROLE check of the handshake, it asks every sentinel it reaches
 * SENTINEL get-master-addr-by-name and SENTINEL MASTER, and takes the
 * address of the one whose config-epoch is highest: for a second or so
 * after a failover only the leading sentinel knows the new master.  A
 * new address moves the data and subscriber connections there; their
 * handshake's ROLE keeps commands off a replica or a stale master.
 *
 * The sentinels answer numeric addresses (unless told to announce
 * names): a worker never resolves a name, an answer that is one is
 * logged and ignored.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


/* how often each worker asks the sentinels where the master is */
#define NGX_PRESENCE_SENTINEL_INTERVAL  2000


typedef struct {
    /* first: a connection's context data leads to its sentinel */
    ngx_presence_conn_t            conn;

    /* the answer of this round: address and config-epoch */
    u_char                         host[NGX_SOCKADDR_STRLEN + 1];
    size_t                         host_len;
    ngx_int_t                      port;
    ngx_int_t                      epoch;

    unsigned                       asked:1;
    unsigned                       named:1;
} ngx_presence_sentinel_node_t;


struct ngx_presence_sentinel_s {
    ngx_presence_redis_t          *redis;
    ngx_presence_sentinel_node_t  *nodes;
    ngx_uint_t                     nnodes;

    /* subscribed to +switch-master on nodes[sub_index] */
    ngx_presence_conn_t            sub;
    ngx_uint_t                     sub_index;

    /* the next round */
    ngx_event_t                    tick;
    /* the end of this round, answered or not */
    ngx_event_t                    deadline;

    /* tells this round's replies from a late one's */
    ngx_uint_t                     round;
    ngx_uint_t                     pending;

    unsigned                       asking:1;
    unsigned                       again:1;
};


static void ngx_presence_redis_sentinel_tick(ngx_event_t *ev);
static void ngx_presence_redis_sentinel_deadline(ngx_event_t *ev);
static void ngx_presence_redis_sentinel_addr_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_presence_redis_sentinel_master_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_presence_redis_sentinel_switch_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_presence_redis_sentinel_done(ngx_presence_sentinel_t *sen);
static ngx_int_t ngx_presence_redis_sentinel_set(ngx_presence_redis_t *rds,
    ngx_str_t *host, ngx_str_t *port, ngx_str_t *from);


ngx_int_t
ngx_presence_redis_sentinel_start(ngx_presence_redis_t *rds)
{
    ngx_uint_t                     i;
    ngx_presence_addr_t           *addr;
    ngx_presence_sentinel_t       *sen;
    ngx_presence_sentinel_node_t  *node;

    sen = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_presence_sentinel_t));
    if (sen == NULL) {
        return NGX_ERROR;
    }

    sen->nnodes = rds->conf->sentinels->nelts;

    sen->nodes = ngx_pcalloc(ngx_cycle->pool,
                             sen->nnodes
                             * sizeof(ngx_presence_sentinel_node_t));
    if (sen->nodes == NULL) {
        return NGX_ERROR;
    }

    sen->redis = rds;
    rds->sentinel = sen;

    sen->tick.handler = ngx_presence_redis_sentinel_tick;
    sen->tick.log = rds->log;
    sen->tick.data = sen;
    sen->tick.cancelable = 1;

    sen->deadline.handler = ngx_presence_redis_sentinel_deadline;
    sen->deadline.log = rds->log;
    sen->deadline.data = sen;
    sen->deadline.cancelable = 1;

    addr = rds->conf->sentinels->elts;

    for (i = 0; i < sen->nnodes; i++) {
        node = &sen->nodes[i];

        ngx_presence_redis_conn_init(&node->conn, rds, rds->log);
        node->conn.addr = &addr[i];
        node->conn.sentinel = 1;

        /* each asks once its handshake is done */
        ngx_presence_redis_connect(&node->conn);
    }

    ngx_presence_redis_conn_init(&sen->sub, rds, rds->log);
    sen->sub.addr = &addr[0];
    sen->sub.sentinel = 1;

    ngx_presence_redis_connect(&sen->sub);

    ngx_add_timer(&sen->tick, NGX_PRESENCE_SENTINEL_INTERVAL);

    return NGX_OK;
}


/* at exit: the callbacks of the freed contexts see rds->exiting */

void
ngx_presence_redis_sentinel_stop(ngx_presence_redis_t *rds)
{
    ngx_uint_t                i;
    ngx_presence_sentinel_t  *sen;

    sen = rds->sentinel;

    if (sen == NULL) {
        return;
    }

    if (sen->tick.timer_set) {
        ngx_del_timer(&sen->tick);
    }

    if (sen->deadline.timer_set) {
        ngx_del_timer(&sen->deadline);
    }

    for (i = 0; i < sen->nnodes; i++) {
        ngx_presence_redis_conn_close(&sen->nodes[i].conn);
    }

    ngx_presence_redis_conn_close(&sen->sub);
}


/* AUTH with presence_redis_sentinel_password, or PING */

void
ngx_presence_redis_sentinel_handshake(ngx_presence_conn_t *conn)
{
    size_t                      len[2];
    const char                 *argv[2];
    ngx_presence_redis_conf_t  *rcf;

    rcf = conn->redis->conf;

    argv[0] = rcf->sentinel_password.len ? "AUTH" : "PING";
    len[0] = 4;
    argv[1] = (char *) rcf->sentinel_password.data;
    len[1] = rcf->sentinel_password.len;

    if (redisAsyncCommandArgv(conn->ac, ngx_presence_redis_handshake_reply,
                              NULL, rcf->sentinel_password.len ? 2 : 1,
                              argv, len)
        == REDIS_OK)
    {
        conn->handshake++;
    }
}


void
ngx_presence_redis_sentinel_ready(ngx_presence_conn_t *conn)
{
    size_t                    len[2];
    const char               *argv[2];
    ngx_presence_redis_t     *rds;
    ngx_presence_sentinel_t  *sen;

    rds = conn->redis;
    sen = rds->sentinel;

    if (conn != &sen->sub) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                       "presence: connected to sentinel \"%V\"",
                       &conn->addr->name);

        /* the first sentinel that answers tells where to connect */

        if (rds->master.port == 0) {
            ngx_presence_redis_sentinel_ask(rds);
        }

        return;
    }

    argv[0] = "SUBSCRIBE";
    len[0] = 9;
    argv[1] = "+switch-master";
    len[1] = 14;

    if (redisAsyncCommandArgv(conn->ac,
                              ngx_presence_redis_sentinel_switch_reply,
                              NULL, 2, argv, len)
        != REDIS_OK)
    {
        redisAsyncFree(conn->ac);
        return;
    }

    /* a failover may have come while nobody listened */
    ngx_presence_redis_sentinel_ask(rds);
}


/*
 * A sentinel's connection is gone.  The subscriber goes to the next
 * sentinel; a sentinel asked in this round has answered with no reply.
 */

void
ngx_presence_redis_sentinel_closed(ngx_presence_conn_t *conn)
{
    ngx_presence_sentinel_t  *sen;

    sen = conn->redis->sentinel;

    if (sen == NULL || conn != &sen->sub) {
        return;
    }

    sen->sub_index = (sen->sub_index + 1) % sen->nnodes;
    sen->sub.addr = sen->nodes[sen->sub_index].conn.addr;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, conn->redis->log, 0,
                   "presence: subscribing to sentinel \"%V\" next",
                   &sen->sub.addr->name);
}


/* a round: every sentinel that is connected is asked, in parallel */

void
ngx_presence_redis_sentinel_ask(ngx_presence_redis_t *rds)
{
    size_t                         len[3];
    void                          *round;
    ngx_uint_t                     i;
    const char                    *argv[3];
    redisAsyncContext             *ac;
    ngx_presence_sentinel_t       *sen;
    ngx_presence_sentinel_node_t  *node;

    sen = rds->sentinel;

    if (sen == NULL || rds->exiting) {
        return;
    }

    if (sen->asking) {
        /* what changed meanwhile may not be in this round's answers */
        sen->again = 1;
        return;
    }

    sen->round++;
    sen->pending = 0;
    sen->again = 0;

    round = (void *) (uintptr_t) sen->round;

    argv[0] = "SENTINEL";
    len[0] = 8;
    argv[2] = (char *) rds->conf->master.data;
    len[2] = rds->conf->master.len;

    for (i = 0; i < sen->nnodes; i++) {
        node = &sen->nodes[i];

        node->asked = 0;
        node->named = 0;
        node->epoch = -1;

        ac = node->conn.ac;

        if (ac == NULL || node->conn.state != NGX_PRESENCE_READY) {
            continue;
        }

        argv[1] = "get-master-addr-by-name";
        len[1] = 23;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_sentinel_addr_reply,
                                  round, 3, argv, len)
            != REDIS_OK)
        {
            continue;
        }

        argv[1] = "MASTER";
        len[1] = 6;

        if (redisAsyncCommandArgv(ac,
                                  ngx_presence_redis_sentinel_master_reply,
                                  round, 3, argv, len)
            != REDIS_OK)
        {
            continue;
        }

        node->asked = 1;
        sen->pending++;
    }

    if (sen->pending == 0) {
        /* none is connected: the next tick, or the first connect, asks */
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: asking %ui sentinels for \"%V\"",
                   sen->pending, &rds->conf->master);

    sen->asking = 1;

    ngx_add_timer(&sen->deadline, rds->conf->timeout);
}


static void
ngx_presence_redis_sentinel_tick(ngx_event_t *ev)
{
    ngx_presence_sentinel_t  *sen;

    sen = ev->data;

    if (sen->redis->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_presence_redis_sentinel_ask(sen->redis);

    ngx_add_timer(&sen->tick, NGX_PRESENCE_SENTINEL_INTERVAL);
}


/* a sentinel that did not answer in time: the others' answers decide */

static void
ngx_presence_redis_sentinel_deadline(ngx_event_t *ev)
{
    ngx_presence_sentinel_t  *sen;

    sen = ev->data;

    if (sen->asking) {
        ngx_presence_redis_sentinel_done(sen);
    }
}


/* [host, port], or nil while the sentinel does not know the master */

static void
ngx_presence_redis_sentinel_addr_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                    *reply;
    ngx_presence_sentinel_t       *sen;
    ngx_presence_sentinel_node_t  *node;

    reply = r;
    node = ac->data;

    if (reply == NULL || node == NULL || node->conn.ac != ac
        || node->conn.redis->exiting)
    {
        return;
    }

    sen = node->conn.redis->sentinel;

    if ((uintptr_t) privdata != sen->round || !node->asked) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING
        || reply->element[0]->len > NGX_SOCKADDR_STRLEN)
    {
        return;
    }

    node->port = ngx_atoi((u_char *) reply->element[1]->str,
                          reply->element[1]->len);

    if (node->port <= 0 || node->port > 65535) {
        return;
    }

    ngx_memcpy(node->host, reply->element[0]->str, reply->element[0]->len);
    node->host[reply->element[0]->len] = '\0';
    node->host_len = reply->element[0]->len;

    node->named = 1;
}


/* a flat list of fields and values: config-epoch is the one used */

static void
ngx_presence_redis_sentinel_master_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    size_t                         i;
    redisReply                    *reply, *k, *v;
    ngx_presence_sentinel_t       *sen;
    ngx_presence_sentinel_node_t  *node;

    reply = r;
    node = ac->data;

    if (node == NULL || node->conn.ac != ac || node->conn.redis->exiting) {
        return;
    }

    sen = node->conn.redis->sentinel;

    if ((uintptr_t) privdata != sen->round || !node->asked) {
        return;
    }

    node->asked = 0;

    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i + 1 < reply->elements; i += 2) {
            k = reply->element[i];
            v = reply->element[i + 1];

            if (k->type == REDIS_REPLY_STRING
                && v->type == REDIS_REPLY_STRING
                && k->len == 12
                && ngx_strncmp(k->str, "config-epoch", 12) == 0)
            {
                node->epoch = ngx_atoi((u_char *) v->str, v->len);
                break;
            }
        }
    }

    if (reply == NULL) {
        node->named = 0;
    }

    if (--sen->pending == 0 && sen->asking) {
        ngx_presence_redis_sentinel_done(sen);
    }
}


/* the round is over: the answer of the highest config-epoch is taken */

static void
ngx_presence_redis_sentinel_done(ngx_presence_sentinel_t *sen)
{
    u_char                         buf[NGX_INT_T_LEN];
    ngx_str_t                      host, port, from;
    ngx_uint_t                     i;
    ngx_presence_sentinel_node_t  *node, *best;

    sen->asking = 0;

    if (sen->deadline.timer_set) {
        ngx_del_timer(&sen->deadline);
    }

    best = NULL;

    for (i = 0; i < sen->nnodes; i++) {
        node = &sen->nodes[i];

        if (node->named && (best == NULL || node->epoch > best->epoch)) {
            best = node;
        }

        node->asked = 0;
        node->named = 0;
    }

    if (best) {
        host.data = best->host;
        host.len = best->host_len;
        port.data = buf;
        port.len = ngx_sprintf(buf, "%i", best->port) - buf;
        from = best->conn.addr->name;

        (void) ngx_presence_redis_sentinel_set(sen->redis, &host, &port,
                                               &from);
    }

    if (sen->again) {
        ngx_presence_redis_sentinel_ask(sen->redis);
    }
}


/*
 * ["message", "+switch-master", "<name> <old ip> <old port> <ip> <port>"]:
 * the failover is over, the new master is known to every sentinel soon
 */

static void
ngx_presence_redis_sentinel_switch_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    u_char                   *p, *last;
    ngx_str_t                 f[5];
    ngx_uint_t                n;
    redisReply               *reply, *msg;
    ngx_presence_conn_t      *conn;
    ngx_presence_redis_t     *rds;

    reply = r;
    conn = ac->data;

    if (reply == NULL || conn == NULL || conn->ac != ac
        || conn->redis->exiting)
    {
        return;
    }

    rds = conn->redis;

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len != 7
        || ngx_strncmp(reply->element[0]->str, "message", 7) != 0
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    msg = reply->element[2];

    p = (u_char *) msg->str;
    last = p + msg->len;

    for (n = 0; n < 5 && p < last; n++) {
        f[n].data = p;

        while (p < last && *p != ' ') {
            p++;
        }

        f[n].len = p - f[n].data;

        if (p < last) {
            p++;
        }
    }

    if (n != 5
        || f[0].len != rds->conf->master.len
        || ngx_strncmp(f[0].data, rds->conf->master.data, f[0].len) != 0)
    {
        /* another master of the same sentinels */
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: sentinel \"%V\" says +switch-master",
                   &conn->addr->name);

    (void) ngx_presence_redis_sentinel_set(rds, &f[3], &f[4],
                                           &conn->addr->name);
}


/*
 * The master is at host:port, says the sentinel "from".  When that is a
 * new address, the connections go there.
 */

static ngx_int_t
ngx_presence_redis_sentinel_set(ngx_presence_redis_t *rds, ngx_str_t *host,
    ngx_str_t *port, ngx_str_t *from)
{
    u_char               *p;
    ngx_int_t             n;
    ngx_uint_t            known;
    struct in6_addr       in6;

    n = ngx_atoi(port->data, port->len);

    if (n <= 0 || n > 65535 || host->len == 0
        || host->len > NGX_SOCKADDR_STRLEN)
    {
        return NGX_ERROR;
    }

    if (ngx_inet_addr(host->data, host->len) == INADDR_NONE
#if (NGX_HAVE_INET6)
        && ngx_inet6_addr(host->data, host->len, in6.s6_addr) != NGX_OK
#endif
       )
    {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: sentinel \"%V\" names the master of \"%V\" "
                      "\"%V\", not a numeric address: ignored (a worker "
                      "does not resolve names)", from, &rds->conf->master,
                      host);
        return NGX_ERROR;
    }

    if (rds->master.port == n
        && rds->master.host.len == host->len
        && ngx_strncmp(rds->master.host.data, host->data, host->len) == 0)
    {
        return NGX_OK;
    }

    known = (rds->master.port != 0);

    p = ngx_cpymem(rds->master_host, host->data, host->len);
    *p = '\0';

    rds->master.host.data = rds->master_host;
    rds->master.host.len = host->len;
    rds->master.port = n;

    /* an IPv6 address in brackets, as nginx writes one with a port */

    p = rds->master_name;

    if (ngx_strlchr(host->data, host->data + host->len, ':')) {
        p = ngx_sprintf(p, "[%V]:%i", host, n);

    } else {
        p = ngx_sprintf(p, "%V:%i", host, n);
    }

    rds->master.name.data = rds->master_name;
    rds->master.name.len = p - rds->master_name;

    if (known) {
        (void) ngx_atomic_fetch_add(&rds->counters->redis_failovers, 1);

        ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                      "presence: redis master of \"%V\" is now %V",
                      &rds->conf->master, &rds->master.name);

    } else {
        ngx_log_error(NGX_LOG_NOTICE, rds->log, 0,
                      "presence: redis master of \"%V\" is %V",
                      &rds->conf->master, &rds->master.name);
    }

    ngx_presence_redis_move(&rds->data);

    if (rds->sub_started) {
        ngx_presence_redis_move(&rds->sub);
    }

    return NGX_OK;
}


/*
 * ROLE in the data connection's handshake: ["master", ...] passes as any
 * step of the handshake; a replica (or a sentinel) fails it, and the
 * sentinels are asked again
 */

void
ngx_presence_redis_role_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    ngx_str_t              role;
    redisReply            *reply;
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    reply = r;

    conn = ngx_presence_redis_reply_conn(ac, reply);
    if (conn == NULL) {
        return;
    }

    rds = conn->redis;

    ngx_str_set(&role, "?");

    if (reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0
        && reply->element[0]->type == REDIS_REPLY_STRING)
    {
        role.data = (u_char *) reply->element[0]->str;
        role.len = reply->element[0]->len;
    }

    if (role.len == 6 && ngx_strncmp(role.data, "master", 6) == 0) {
        ngx_presence_redis_handshake_reply(ac, r, privdata);
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        /* logged there; the connection is dropped */
        ngx_presence_redis_handshake_reply(ac, r, privdata);
        ngx_presence_redis_sentinel_ask(rds);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: redis at \"%V\" is not the master of \"%V\" "
                  "(ROLE %V), asking the sentinels", &conn->addr->name,
                  &rds->conf->master, &role);

    /* deferred by hiredis until this callback returns */
    redisAsyncFree(ac);

    ngx_presence_redis_sentinel_ask(rds);
}
