
/*
 * ngx_http_presence_module, the Redis side: heartbeats that go to Redis
 * together.
 *
 * The heartbeats a worker receives in one pass of its event loop for the
 * same room (and the same ttl, most sessions and key life: the same
 * location's) wait in a batch until the end of the pass (a posted event)
 * and go as one call of the heartbeat script, which takes any number of
 * users: one round trip, one command for Redis to parse, one entry into
 * Lua, one prune, one expiry check, one ZCARD and one PUBLISH for all of
 * them.  Each request keeps its own command: it can be detached or time
 * out alone, and gets its own part of the reply ({count, its sessions}),
 * or the same failure as the others when the call fails.  A batch of one
 * goes as it is.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


/* users per call: the script's arguments, and Redis's time in one call */
#define NGX_PRESENCE_BATCH_MAX     256

/* open batches looked at for a heartbeat's room, newest first */
#define NGX_PRESENCE_BATCH_LOOK    8

/* EVALSHA sha 3 room sessions version ttl most life, then user, session */
#define NGX_PRESENCE_BATCH_HEAD    9


struct ngx_presence_batch_s {
    /* in rds->batches until the end of the pass */
    ngx_queue_t                    queue;
    /* the heartbeats, by cmd->queue */
    ngx_queue_t                    members;
    ngx_uint_t                     n;
};


static void ngx_presence_redis_batch_flush(ngx_event_t *ev);
static ngx_presence_batch_t *ngx_presence_redis_batch_find(
    ngx_presence_redis_t *rds, ngx_presence_cmd_t *cmd);
static ngx_int_t ngx_presence_redis_batch_same(ngx_presence_cmd_t *a,
    ngx_presence_cmd_t *b);
static void ngx_presence_redis_batch_send(ngx_presence_redis_t *rds,
    ngx_presence_batch_t *batch);
static void ngx_presence_redis_batch_one(ngx_presence_cmd_t *cmd);


void
ngx_presence_redis_batch_init(ngx_presence_redis_t *rds)
{
    ngx_queue_init(&rds->batches);

    rds->flush.handler = ngx_presence_redis_batch_flush;
    rds->flush.log = rds->log;
    rds->flush.data = rds;
}


/*
 * The heartbeat joins its room's batch of this pass; it is the caller's
 * command as any other (detach, timed_out).  NGX_DECLINED without memory
 * for a batch: it goes alone.
 */

ngx_int_t
ngx_presence_redis_batch_add(ngx_presence_cmd_t *cmd)
{
    ngx_presence_redis_t  *rds;
    ngx_presence_batch_t  *batch;

    rds = cmd->redis;

    batch = ngx_presence_redis_batch_find(rds, cmd);

    if (batch == NULL) {
        batch = ngx_alloc(sizeof(ngx_presence_batch_t), cmd->log);
        if (batch == NULL) {
            return NGX_DECLINED;
        }

        ngx_queue_init(&batch->members);
        batch->n = 0;

        ngx_queue_insert_tail(&rds->batches, &batch->queue);
    }

    cmd->batch = batch;
    cmd->queued = 1;
    ngx_queue_insert_tail(&batch->members, &cmd->queue);
    batch->n++;

    if (!rds->flush.posted) {
        ngx_post_event(&rds->flush, &ngx_posted_events);
    }

    return NGX_OK;
}


/* a heartbeat detached before its batch went: it is off the list now */

void
ngx_presence_redis_batch_leave(ngx_presence_cmd_t *cmd)
{
    cmd->batch->n--;
}


static ngx_presence_batch_t *
ngx_presence_redis_batch_find(ngx_presence_redis_t *rds,
    ngx_presence_cmd_t *cmd)
{
    ngx_uint_t             i;
    ngx_queue_t           *q;
    ngx_presence_batch_t  *batch;

    for (q = ngx_queue_last(&rds->batches), i = 0;
         q != ngx_queue_sentinel(&rds->batches)
         && i < NGX_PRESENCE_BATCH_LOOK;
         q = ngx_queue_prev(q), i++)
    {
        batch = ngx_queue_data(q, ngx_presence_batch_t, queue);

        if (batch->n == 0 || batch->n >= NGX_PRESENCE_BATCH_MAX) {
            continue;
        }

        if (ngx_presence_redis_batch_same(
                ngx_queue_data(ngx_queue_head(&batch->members),
                               ngx_presence_cmd_t, queue),
                cmd))
        {
            return batch;
        }
    }

    return NULL;
}


/* the same room, ttl, most sessions and key life */

static ngx_int_t
ngx_presence_redis_batch_same(ngx_presence_cmd_t *a, ngx_presence_cmd_t *b)
{
    ngx_uint_t  i;

    for (i = 3; i < NGX_PRESENCE_BATCH_HEAD; i++) {
        if (a->argvlen[i] != b->argvlen[i]
            || ngx_memcmp(a->argv[i], b->argv[i], a->argvlen[i]) != 0)
        {
            return 0;
        }
    }

    return 1;
}


/* the end of the pass: every batch goes */

static void
ngx_presence_redis_batch_flush(ngx_event_t *ev)
{
    ngx_queue_t           *q;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_redis_t  *rds;
    ngx_presence_batch_t  *batch;

    rds = ev->data;

    while (!ngx_queue_empty(&rds->batches)) {
        q = ngx_queue_head(&rds->batches);
        ngx_queue_remove(q);

        batch = ngx_queue_data(q, ngx_presence_batch_t, queue);

        if (batch->n > 1) {
            ngx_presence_redis_batch_send(rds, batch);
            continue;
        }

        cmd = ngx_presence_redis_dequeue(&batch->members);
        ngx_free(batch);

        if (cmd) {
            ngx_presence_redis_batch_one(cmd);
        }
    }
}


/* a heartbeat alone: its own command, as it was made */

static void
ngx_presence_redis_batch_one(ngx_presence_cmd_t *cmd)
{
    cmd->batch = NULL;

    if (ngx_presence_redis_start(cmd) != NGX_OK) {
        /* it was accepted: its handler learns it failed */
        ngx_presence_redis_finish(cmd, NULL);
    }
}


/*
 * One command for the batch: the first heartbeat's head, then the user
 * and session of each.  The strings stay in the heartbeats' commands,
 * which live until the reply: a detached one only loses its handler.
 */

static void
ngx_presence_redis_batch_send(ngx_presence_redis_t *rds,
    ngx_presence_batch_t *batch)
{
    int                  argc;
    ngx_uint_t           i;
    ngx_queue_t         *q;
    ngx_presence_cmd_t  *many, *cmd, *first;

    argc = NGX_PRESENCE_BATCH_HEAD + 2 * batch->n;

    many = ngx_alloc(sizeof(ngx_presence_cmd_t)
                     + argc * (sizeof(char *) + sizeof(size_t)), rds->log);

    if (many == NULL) {
        ngx_presence_redis_batch_done(batch, NULL);
        return;
    }

    first = ngx_queue_data(ngx_queue_head(&batch->members),
                           ngx_presence_cmd_t, queue);

    ngx_memzero(many, sizeof(ngx_presence_cmd_t));

    many->argv = (const char **) (many + 1);
    many->argvlen = (size_t *) (many->argv + argc);
    many->argc = argc;
    many->redis = rds;
    many->data = batch;
    many->many = 1;
    many->log = rds->log;
    many->script = NGX_PRESENCE_HEARTBEAT;
    many->slot = first->slot;
    many->created = ngx_current_msec;

    for (i = 0; i < NGX_PRESENCE_BATCH_HEAD; i++) {
        many->argv[i] = first->argv[i];
        many->argvlen[i] = first->argvlen[i];
    }

    for (q = ngx_queue_head(&batch->members);
         q != ngx_queue_sentinel(&batch->members);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);

        /* on its way: a detach drops its part of the reply */
        cmd->queued = 0;

        many->argv[i] = cmd->argv[NGX_PRESENCE_BATCH_HEAD];
        many->argvlen[i++] = cmd->argvlen[NGX_PRESENCE_BATCH_HEAD];
        many->argv[i] = cmd->argv[NGX_PRESENCE_BATCH_HEAD + 1];
        many->argvlen[i++] = cmd->argvlen[NGX_PRESENCE_BATCH_HEAD + 1];
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rds->log, 0,
                   "presence: redis command %p: %ui heartbeats",
                   many, batch->n);

    if (ngx_presence_redis_start(many) != NGX_OK) {
        ngx_presence_redis_finish(many, NULL);
        return;
    }

    /* a heartbeat that times out counts against the connection */

    for (q = ngx_queue_head(&batch->members);
         q != ngx_queue_sentinel(&batch->members);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);
        cmd->conn = many->conn;
    }
}


/*
 * The reply of a batch, {count, sessions of each}: each heartbeat gets
 * {count, its sessions}, as if it had gone alone; any other reply (none,
 * an error) goes to each as it is.
 */

void
ngx_presence_redis_batch_done(ngx_presence_batch_t *batch, redisReply *reply)
{
    redisReply            one, part[2], *parts[2], **el;
    ngx_uint_t            i;
    ngx_presence_cmd_t   *cmd;

    el = NULL;

    if (reply
        && reply->type == REDIS_REPLY_ARRAY
        && reply->elements == batch->n + 1)
    {
        el = reply->element;

        for (i = 0; i <= batch->n; i++) {
            if (el[i]->type != REDIS_REPLY_INTEGER) {
                el = NULL;
                break;
            }
        }
    }

    ngx_memzero(&one, sizeof(redisReply));
    one.type = REDIS_REPLY_ARRAY;
    one.elements = 2;
    one.element = parts;
    parts[0] = &part[0];
    parts[1] = &part[1];

    i = 0;

    while ((cmd = ngx_presence_redis_dequeue(&batch->members))) {
        i++;

        if (cmd->data && !cmd->redis->exiting) {
            if (el) {
                part[0] = *el[0];
                part[1] = *el[i];
                cmd->handler(cmd->data, &one);

            } else {
                cmd->handler(cmd->data, reply);
            }
        }

        ngx_free(cmd);
    }

    ngx_free(batch);
}


/* at exit: the batches not sent are dropped, no handler runs */

void
ngx_presence_redis_batch_close(ngx_presence_redis_t *rds)
{
    ngx_queue_t           *q;
    ngx_presence_batch_t  *batch;

    if (rds->flush.posted) {
        ngx_delete_posted_event(&rds->flush);
    }

    while (!ngx_queue_empty(&rds->batches)) {
        q = ngx_queue_head(&rds->batches);
        ngx_queue_remove(q);

        batch = ngx_queue_data(q, ngx_presence_batch_t, queue);
        ngx_presence_redis_batch_done(batch, NULL);
    }
}
