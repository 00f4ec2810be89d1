
/*
 * ngx_http_presence_module, the Redis side: the event adapter between a
 * hiredis async context and nginx's event loop.
 *
 * hiredis calls these hooks often and expects them to be idempotent.  The
 * events are level-triggered: hiredis reads at most 16k per call, and an
 * edge-triggered socket would stall a longer reply until the next command.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_presence_redis.h"


static void ngx_presence_redis_add_read(void *data);
static void ngx_presence_redis_del_read(void *data);
static void ngx_presence_redis_add_write(void *data);
static void ngx_presence_redis_del_write(void *data);
static void ngx_presence_redis_cleanup(void *data);
static void ngx_presence_redis_read_handler(ngx_event_t *ev);
static void ngx_presence_redis_write_handler(ngx_event_t *ev);


/* the connection whose write handler runs, if any */
static ngx_connection_t  *ngx_presence_redis_writing;


/*
 * Wraps the context's socket in an nginx connection (which flips the
 * instance bit that guards against stale events) and hooks it up.
 */

ngx_int_t
ngx_presence_redis_attach(redisAsyncContext *ac, ngx_log_t *log)
{
    ngx_connection_t  *c;

    c = ngx_get_connection(ac->c.fd, log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = ac;
    c->read->handler = ngx_presence_redis_read_handler;
    c->write->handler = ngx_presence_redis_write_handler;
    c->read->log = log;
    c->write->log = log;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    ac->ev.data = c;
    ac->ev.addRead = ngx_presence_redis_add_read;
    ac->ev.delRead = ngx_presence_redis_del_read;
    ac->ev.addWrite = ngx_presence_redis_add_write;
    ac->ev.delWrite = ngx_presence_redis_del_write;
    ac->ev.cleanup = ngx_presence_redis_cleanup;

    return NGX_OK;
}


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


/*
 * The commands made in one pass of the event loop go out together at its
 * end: the write event is posted, not waited for, since a connected socket
 * nearly always takes the bytes.  Only when it did not (hiredis asks again
 * from inside its write) or before the connection is made does the
 * socket's own event wait for room.  This saves a round trip the two
 * epoll_ctl() calls and the pass it took epoll to report the socket
 * writable.
 */

static void
ngx_presence_redis_add_write(void *data)
{
    ngx_connection_t   *c = data;
    redisAsyncContext  *ac;

    if (c->write->active || c->write->posted) {
        return;
    }

    ac = c->data;

    if ((ac->c.flags & REDIS_CONNECTED) && ngx_presence_redis_writing != c) {
        ngx_post_event(c->write, &ngx_posted_events);
        return;
    }

    if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "presence: cannot add the redis write event");
    }
}


static void
ngx_presence_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/*
 * Called once by hiredis as it frees the context, before onDisconnect and
 * before it closes the socket itself.
 */

static void
ngx_presence_redis_cleanup(void *data)
{
    ngx_connection_t   *c = data;

    redisAsyncContext  *ac;

    ac = c->data;

    /* hiredis may still call the hooks while it frees the context */
    ac->ev.addRead = NULL;
    ac->ev.delRead = NULL;
    ac->ev.addWrite = NULL;
    ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.data = NULL;

    /* removes the events, timers and posted events of the socket */
    ngx_close_connection(c);

    /* the fd is closed: keep hiredis from closing a reused number */
    ac->c.fd = -1;

    ngx_presence_redis_closed(ac);
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

    /* c may be freed inside: only its address is compared afterwards */

    ngx_presence_redis_writing = c;
    redisAsyncHandleWrite(c->data);
    ngx_presence_redis_writing = NULL;
}

