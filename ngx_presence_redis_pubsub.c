
/*
 * ngx_http_presence_module, the Redis side: the subscriber connection of
 * the live streams.
 *
 * A worker opens it with its first stream and keeps it: one connection
 * in SUBSCRIBE mode, one channel per room the worker streams.  Its life
 * is that of any connection (ngx_presence_redis_conn.c), with AUTH alone
 * for a handshake; what it hears goes to the handler the HTTP side set.
 *
 * hiredis 0.14 keeps a callback per channel and counts the SUBSCRIBEs it
 * has not seen confirmed, so a room subscribed again while its UNSUBSCRIBE
 * is on the way keeps its callback.  Every channel has the same callback
 * here: the HTTP side finds its room by the channel's name.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


static void ngx_presence_redis_pubsub_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static ngx_int_t ngx_presence_redis_pubsub_send(ngx_presence_redis_t *rds,
    const char *command, ngx_str_t *channel);


void
ngx_presence_redis_pubsub_handler(ngx_presence_redis_t *rds,
    ngx_presence_pubsub_pt handler)
{
    rds->pubsub = handler;
}


/*
 * NGX_OK: SUBSCRIBE is on its way, NGX_PRESENCE_PUBSUB_SUBSCRIBED follows;
 * NGX_AGAIN: the connection is not ready, NGX_PRESENCE_PUBSUB_READY
 * follows; NGX_ERROR: hiredis refused the command.
 */

ngx_int_t
ngx_presence_redis_subscribe(ngx_presence_redis_t *rds, ngx_str_t *channel)
{
    ngx_presence_conn_t  *conn;

    conn = &rds->sub;

    if (!rds->sub_started) {
        rds->sub_started = 1;

        ngx_presence_redis_conn_init(conn, rds, rds->log);
        conn->addr = &rds->master;
        conn->pubsub = 1;

        ngx_presence_redis_connect(conn);

        return NGX_AGAIN;
    }

    if (conn->state != NGX_PRESENCE_READY || conn->ac == NULL) {
        return NGX_AGAIN;
    }

    return ngx_presence_redis_pubsub_send(rds, "SUBSCRIBE", channel);
}


void
ngx_presence_redis_unsubscribe(ngx_presence_redis_t *rds, ngx_str_t *channel)
{
    if (rds->exiting
        || rds->sub.state != NGX_PRESENCE_READY
        || rds->sub.ac == NULL)
    {
        return;
    }

    /* a refusal leaves a channel nobody listens to: messages are dropped */

    (void) ngx_presence_redis_pubsub_send(rds, "UNSUBSCRIBE", channel);
}


static ngx_int_t
ngx_presence_redis_pubsub_send(ngx_presence_redis_t *rds,
    const char *command, ngx_str_t *channel)
{
    size_t       len[2];
    const char  *argv[2];

    argv[0] = command;
    len[0] = ngx_strlen(command);
    argv[1] = (char *) channel->data;
    len[1] = channel->len;

    if (redisAsyncCommandArgv(rds->sub.ac, ngx_presence_redis_pubsub_reply,
                              NULL, 2, argv, len)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * ["subscribe", channel, n], ["message", channel, message],
 * ["unsubscribe", ...]
 */

static void
ngx_presence_redis_pubsub_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    ngx_str_t              channel, message;
    redisReply            *reply, **el;
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    reply = r;

    conn = ngx_presence_redis_reply_conn(ac, reply);
    if (conn == NULL) {
        return;
    }

    rds = conn->redis;

    if (rds->exiting || rds->pubsub == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_presence_redis_unexpected(rds, reply);
        return;
    }

    el = reply->element;

    channel.data = (u_char *) el[1]->str;
    channel.len = el[1]->len;

    if (el[0]->len == 7 && ngx_strncmp(el[0]->str, "message", 7) == 0) {

        if (el[2]->type != REDIS_REPLY_STRING) {
            return;
        }

        message.data = (u_char *) el[2]->str;
        message.len = el[2]->len;

        rds->pubsub(NGX_PRESENCE_PUBSUB_MESSAGE, &channel, &message);
        return;
    }

    if (el[0]->len == 9 && ngx_strncmp(el[0]->str, "subscribe", 9) == 0) {
        rds->pubsub(NGX_PRESENCE_PUBSUB_SUBSCRIBED, &channel, NULL);
    }

    /* an unsubscribe needs nothing: the room was let go when it was sent */
}


void
ngx_presence_redis_pubsub_ready(ngx_presence_redis_t *rds)
{
    if (rds->pubsub && !rds->exiting) {
        rds->pubsub(NGX_PRESENCE_PUBSUB_READY, NULL, NULL);
    }
}


void
ngx_presence_redis_pubsub_down(ngx_presence_redis_t *rds)
{
    if (rds->pubsub && !rds->exiting) {
        rds->pubsub(NGX_PRESENCE_PUBSUB_DOWN, NULL, NULL);
    }
}


void
ngx_presence_redis_pubsub_close(ngx_presence_redis_t *rds)
{
    if (rds->sub_started) {
        ngx_presence_redis_conn_close(&rds->sub);
    }
}
