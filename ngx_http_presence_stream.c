
/*
 * ngx_http_presence_module: presence_stream, the live stream of a room
 * as Server-Sent Events.
 *
 * A stream answers "retry", then a snapshot (the listing, with the id of
 * the room's last event), then every join and leave of the room as the
 * scripts publish them on the room's channel.  A worker keeps a room
 * object per room it streams: the streams, the channel's subscription on
 * the worker's subscriber connection, and the sweep that turns expired
 * users into events when nobody touches the room.
 *
 * Consistency: a stream asks for its snapshot only once the channel is
 * subscribed, so every event after the snapshot reaches the worker; the
 * events that arrive while snapshots are on their way are kept in the
 * room (the backlog), and a stream sends those, and later ones, whose id
 * is above its snapshot's.
 *
 * An event is rendered once per room, in memory counted by reference,
 * and each stream sends it as a buffer of its own that points there: the
 * memory goes when the last stream has written it out.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


/* a client that lets this much of its stream wait in nginx is dropped */
#define NGX_HTTP_PRESENCE_STREAM_UNSENT   65536

/* events kept for streams that wait for a snapshot */
#define NGX_HTTP_PRESENCE_BACKLOG_MAX     4096

/* a snapshot that failed is asked again after */
#define NGX_HTTP_PRESENCE_RETRY           1000

/* a room is swept at least this often, and at most jitter after a due */
#define NGX_HTTP_PRESENCE_SWEEP_MAX       900
#define NGX_HTTP_PRESENCE_SWEEP_JITTER    100

/* how often a worker looks whether it is shutting down */
#define NGX_HTTP_PRESENCE_EXIT_CHECK      200


/* a stream's state */
#define NGX_HTTP_PRESENCE_SUBSCRIBE       0    /* the room is not subscribed */
#define NGX_HTTP_PRESENCE_SNAPSHOT        1    /* the snapshot is asked */
#define NGX_HTTP_PRESENCE_RETRY_WAIT      2    /* it failed, asked again */
#define NGX_HTTP_PRESENCE_LIVE            3

/* any of them, to ngx_http_presence_room_each() */
#define NGX_HTTP_PRESENCE_ANY             ((ngx_uint_t) -1)

/* a room's subscription */
#define NGX_HTTP_PRESENCE_UNSUBSCRIBED    0
#define NGX_HTTP_PRESENCE_SUBSCRIBING     1
#define NGX_HTTP_PRESENCE_SUBSCRIBED      2


typedef struct ngx_http_presence_room_s    ngx_http_presence_room_t;
typedef struct ngx_http_presence_stream_s  ngx_http_presence_stream_t;
typedef struct ngx_http_presence_event_s   ngx_http_presence_event_t;
typedef struct ngx_http_presence_out_s     ngx_http_presence_out_t;

typedef void (*ngx_http_presence_stream_pt)(ngx_http_presence_stream_t *st);


/* an event as every stream of a room sends it */

struct ngx_http_presence_event_s {
    ngx_queue_t                  queue;      /* in room->backlog */
    ngx_uint_t                   refs;
    uint64_t                     id;
    size_t                       len;
    u_char                       data[1];
};


/* a buffer of a stream on its way to the client */

struct ngx_http_presence_out_s {
    ngx_http_presence_out_t     *next;
    ngx_buf_t                    buf;
    ngx_http_presence_event_t   *event;      /* NULL: static text */
};


struct ngx_http_presence_stream_s {
    ngx_http_request_t          *request;
    ngx_http_presence_room_t    *room;
    ngx_queue_t                  queue;      /* in room->streams */
    ngx_presence_cmd_t          *cmd;        /* the snapshot, on its way */

    /* the ping; and the bound of a wait for Redis, or the retry */
    ngx_event_t                  timer;
    ngx_msec_t                   deadline;
    ngx_msec_t                   written;

    ngx_str_t                    room_name;
    uint64_t                     last;       /* id of what it holds */
    ngx_uint_t                   epoch;      /* of the backlog, when asked */
    ngx_uint_t                   state;

    ngx_http_presence_out_t     *busy;
    ngx_http_presence_out_t    **busy_tail;
    ngx_http_presence_out_t     *free;
    size_t                       unsent;

    unsigned                     unavailable:1;  /* told; a snapshot is due */
    unsigned                     done:1;
};


struct ngx_http_presence_room_s {
    ngx_str_node_t               sn;         /* the channel */
    ngx_str_t                    key;
    ngx_queue_t                  streams;
    ngx_queue_t                  backlog;
    ngx_uint_t                   nbacklog;
    ngx_uint_t                   epoch;
    ngx_uint_t                   waiting;    /* streams with a snapshot asked */
    ngx_uint_t                   state;
    ngx_uint_t                   busy;       /* its streams are being walked */

    ngx_event_t                  sweep;
    ngx_presence_cmd_t          *sweep_cmd;
};


static ngx_int_t ngx_http_presence_stream_start(ngx_http_request_t *r,
    ngx_http_presence_stream_t *st, ngx_str_t *key);
static ngx_int_t ngx_http_presence_stream_headers(ngx_http_request_t *r);
static ngx_http_presence_room_t *ngx_http_presence_room_get(ngx_str_t *key);
static void ngx_http_presence_room_put(ngx_http_presence_room_t *room);
static void ngx_http_presence_room_subscribe(ngx_http_presence_room_t *room);
static void ngx_http_presence_room_clear(ngx_http_presence_room_t *room);
static void ngx_http_presence_room_lost(ngx_http_presence_room_t *room);
static void ngx_http_presence_room_stale(ngx_http_presence_room_t *room);
static void ngx_http_presence_stream_stale(ngx_http_presence_stream_t *st);
static void ngx_http_presence_room_each(ngx_http_presence_room_t *room,
    ngx_uint_t state, ngx_http_presence_stream_pt handler);
static void ngx_http_presence_stream_lost(ngx_http_presence_stream_t *st);
static void ngx_http_presence_sweep_handler(ngx_event_t *ev);
static void ngx_http_presence_sweep_reply(void *data, redisReply *reply);
static void ngx_http_presence_sweep_after(ngx_http_presence_room_t *room,
    ngx_msec_t delay);
static void ngx_http_presence_pubsub(ngx_uint_t what, ngx_str_t *channel,
    ngx_str_t *message);
static void ngx_http_presence_publish(ngx_http_presence_room_t *room,
    ngx_str_t *message);
static ngx_http_presence_event_t *ngx_http_presence_change_event(
    ngx_http_presence_change_t *ch);
static void ngx_http_presence_snapshot(ngx_http_presence_stream_t *st);
static void ngx_http_presence_snapshot_reply(void *data, redisReply *reply);
static ngx_http_presence_event_t *ngx_http_presence_snapshot_event(
    ngx_http_presence_stream_t *st, redisReply *reply);
static void ngx_http_presence_unavailable(ngx_http_presence_stream_t *st,
    ngx_msec_t retry);
static void ngx_http_presence_stream_timer(ngx_event_t *ev);
static void ngx_http_presence_stream_arm(ngx_http_presence_stream_t *st);
static ngx_int_t ngx_http_presence_stream_send(
    ngx_http_presence_stream_t *st, ngx_http_presence_event_t *ev,
    ngx_str_t *text);
static ngx_int_t ngx_http_presence_stream_output(
    ngx_http_presence_stream_t *st, ngx_http_presence_event_t *ev,
    ngx_str_t *text);
static void ngx_http_presence_stream_sent(ngx_http_presence_stream_t *st);
static void ngx_http_presence_stream_write(ngx_http_request_t *r);
static void ngx_http_presence_stream_flow(ngx_http_request_t *r,
    ngx_int_t rc);
static void ngx_http_presence_stream_drop(ngx_http_presence_stream_t *st);
static void ngx_http_presence_stream_dropped(ngx_event_t *ev);
static void ngx_http_presence_stream_end(ngx_http_presence_stream_t *st);
static void ngx_http_presence_stream_leave(ngx_http_presence_stream_t *st);
static void ngx_http_presence_stream_cleanup(void *data);
static void ngx_http_presence_event_release(ngx_http_presence_event_t *ev);
static void ngx_http_presence_exit_check(ngx_event_t *ev);


static ngx_str_t  ngx_http_presence_retry_text =
    ngx_string("retry: 2000\n\n");

static ngx_str_t  ngx_http_presence_ping_text = ngx_string(": ping\n\n");

static ngx_str_t  ngx_http_presence_unavailable_text = ngx_string(
    "event: unavailable\n"
    "data: {\"error\":\"redis_unavailable\",\"message\":\"The presence store "
    "is unavailable; a snapshot follows when it is back.\"}\n\n");


/* the worker's rooms, by channel, and what it holds */

static ngx_rbtree_t           ngx_http_presence_rooms;
static ngx_rbtree_node_t      ngx_http_presence_rooms_sentinel;
static ngx_uint_t             ngx_http_presence_nstreams;
static ngx_presence_redis_t  *ngx_http_presence_rds;
static ngx_event_t            ngx_http_presence_exit_ev;


/* at init_process */

void
ngx_http_presence_stream_init(ngx_presence_redis_t *rds)
{
    ngx_rbtree_init(&ngx_http_presence_rooms,
                    &ngx_http_presence_rooms_sentinel,
                    ngx_str_rbtree_insert_value);

    ngx_http_presence_rds = rds;
    ngx_http_presence_nstreams = 0;

    ngx_presence_redis_pubsub_handler(rds, ngx_http_presence_pubsub);

    /*
     * Not cancelable: while streams are open a shutting down worker waits
     * for it, and it ends the streams (nginx would otherwise wait on them
     * for as long as the clients stay, or exit with their sockets open).
     */

    ngx_http_presence_exit_ev.handler = ngx_http_presence_exit_check;
    ngx_http_presence_exit_ev.log = ngx_cycle->log;
    ngx_http_presence_exit_ev.data = &ngx_http_presence_exit_ev;
}


ngx_int_t
ngx_http_presence_stream_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_str_t                       key;
    ngx_http_cleanup_t             *cln;
    ngx_http_presence_stream_t     *st;
    ngx_http_presence_main_conf_t  *pmcf;

    /* nginx's own 400 for a broken chunked body: see the update handler */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_METHOD);
    }

    if (r != r->main) {
        /* a subrequest would hold its parent open forever */
        return NGX_HTTP_NOT_FOUND;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_stream_t));
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_presence_room_key(r, &st->room_name, &key);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_presence_error(r, rc);
    }

    if (r->method == NGX_HTTP_HEAD) {
        return ngx_http_presence_stream_headers(r);
    }

    if (ngx_http_presence_nstreams >= pmcf->stream_max_clients) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "presence: %ui streams are open on this worker, "
                      "presence_stream_max_clients; answering 503",
                      ngx_http_presence_nstreams);

        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_STREAMS);
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->request = r;
    st->busy_tail = &st->busy;
    st->done = 1;               /* until it is in its room */

    st->timer.handler = ngx_http_presence_stream_timer;
    st->timer.data = st;
    st->timer.log = r->connection->log;
    st->timer.cancelable = 1;

    cln->handler = ngx_http_presence_stream_cleanup;
    cln->data = st;

    ngx_http_set_ctx(r, st, ngx_http_presence_module);

    rc = ngx_http_presence_stream_headers(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    if (ngx_http_presence_stream_send(st, NULL, &ngx_http_presence_retry_text)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    r->main->count++;

    rc = ngx_http_presence_stream_start(r, st, &key);

    if (rc != NGX_OK) {
        /* the count taken above goes with the request */
        r->main->count--;
        return rc;
    }

    return NGX_DONE;
}


/* the stream joins its room: NGX_OK or NGX_ERROR */

static ngx_int_t
ngx_http_presence_stream_start(ngx_http_request_t *r,
    ngx_http_presence_stream_t *st, ngx_str_t *key)
{
    ngx_http_presence_room_t  *room;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_presence_stream_write;

    st->written = ngx_current_msec;

    room = ngx_http_presence_room_get(key);
    if (room == NULL) {
        return NGX_ERROR;
    }

    st->room = room;
    st->done = 0;
    st->state = NGX_HTTP_PRESENCE_SUBSCRIBE;

    ngx_queue_insert_tail(&room->streams, &st->queue);

    if (ngx_http_presence_nstreams++ == 0) {
        ngx_add_timer(&ngx_http_presence_exit_ev,
                      NGX_HTTP_PRESENCE_EXIT_CHECK);
    }

    ngx_http_presence_worker()->streams = ngx_http_presence_nstreams;

    if (room->state == NGX_HTTP_PRESENCE_SUBSCRIBED) {
        ngx_http_presence_snapshot(st);

    } else {
        if (room->state == NGX_HTTP_PRESENCE_UNSUBSCRIBED) {
            ngx_http_presence_room_subscribe(room);
        }

        st->deadline = ngx_current_msec
                       + ngx_http_presence_rds->conf->timeout;
        ngx_http_presence_stream_arm(st);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_stream_headers(ngx_http_request_t *r)
{
    static ngx_str_t  cache_control = ngx_string("Cache-Control");
    static ngx_str_t  no_store = ngx_string("no-store");
    static ngx_str_t  accel = ngx_string("X-Accel-Buffering");
    static ngx_str_t  no = ngx_string("no");

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;

    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    ngx_str_set(&r->headers_out.charset, "utf-8");

    /* a proxy in front, nginx's own too, must pass events on at once */

    if (ngx_http_presence_add_header(r, &cache_control, &no_store, NULL)
        != NGX_OK
        || ngx_http_presence_add_header(r, &accel, &no, NULL) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_send_header(r);
}


/* the worker's object of a room, made and subscribed when first needed */

static ngx_http_presence_room_t *
ngx_http_presence_room_get(ngx_str_t *key)
{
    u_char                    *p;
    uint32_t                   hash;
    ngx_str_t                  channel;
    ngx_http_presence_room_t  *room;

    channel.len = key->len + 2;
    channel.data = ngx_alloc(channel.len, ngx_cycle->log);
    if (channel.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(channel.data, key->data, key->len);
    *p++ = ':';
    *p = 'e';

    hash = ngx_crc32_long(channel.data, channel.len);

    room = (ngx_http_presence_room_t *)
               ngx_str_rbtree_lookup(&ngx_http_presence_rooms, &channel, hash);

    if (room) {
        ngx_free(channel.data);
        return room;
    }

    room = ngx_calloc(sizeof(ngx_http_presence_room_t), ngx_cycle->log);
    if (room == NULL) {
        ngx_free(channel.data);
        return NULL;
    }

    room->sn.node.key = hash;
    room->sn.str = channel;
    room->key.data = channel.data;
    room->key.len = key->len;

    ngx_queue_init(&room->streams);
    ngx_queue_init(&room->backlog);

    room->sweep.handler = ngx_http_presence_sweep_handler;
    room->sweep.data = room;
    room->sweep.log = ngx_cycle->log;
    room->sweep.cancelable = 1;

    ngx_rbtree_insert(&ngx_http_presence_rooms, &room->sn.node);

    return room;
}


/* a room whose last stream has gone goes too */

static void
ngx_http_presence_room_put(ngx_http_presence_room_t *room)
{
    if (!ngx_queue_empty(&room->streams) || room->busy) {
        return;
    }

    if (room->state != NGX_HTTP_PRESENCE_UNSUBSCRIBED) {
        ngx_presence_redis_unsubscribe(ngx_http_presence_rds, &room->sn.str);
    }

    if (room->sweep.timer_set) {
        ngx_del_timer(&room->sweep);
    }

    if (room->sweep_cmd) {
        ngx_presence_redis_detach(room->sweep_cmd);
    }

    ngx_http_presence_room_clear(room);

    ngx_rbtree_delete(&ngx_http_presence_rooms, &room->sn.node);

    ngx_free(room->sn.str.data);
    ngx_free(room);
}


static void
ngx_http_presence_room_subscribe(ngx_http_presence_room_t *room)
{
    ngx_int_t  rc;

    rc = ngx_presence_redis_subscribe(ngx_http_presence_rds, &room->sn.str);

    if (rc == NGX_OK) {
        room->state = NGX_HTTP_PRESENCE_SUBSCRIBING;

    } else {
        /* NGX_AGAIN: subscribed when the connection is ready */
        room->state = NGX_HTTP_PRESENCE_UNSUBSCRIBED;
    }
}


/* the backlog goes: no stream waits for a snapshot any more */

static void
ngx_http_presence_room_clear(ngx_http_presence_room_t *room)
{
    ngx_queue_t                *q;
    ngx_http_presence_event_t  *ev;

    while (!ngx_queue_empty(&room->backlog)) {
        q = ngx_queue_head(&room->backlog);
        ngx_queue_remove(q);

        ev = ngx_queue_data(q, ngx_http_presence_event_t, queue);
        ngx_http_presence_event_release(ev);
    }

    room->nbacklog = 0;
}


/*
 * The subscription is gone with the connection: events may have been
 * missed.  Every stream says so and waits for a fresh snapshot.
 */

static void
ngx_http_presence_room_lost(ngx_http_presence_room_t *room)
{
    room->state = NGX_HTTP_PRESENCE_UNSUBSCRIBED;

    room->busy++;

    ngx_http_presence_room_each(room, NGX_HTTP_PRESENCE_ANY,
                                ngx_http_presence_stream_lost);
    ngx_http_presence_room_clear(room);

    room->busy--;
    ngx_http_presence_room_put(room);
}


static void
ngx_http_presence_stream_lost(ngx_http_presence_stream_t *st)
{
    if (st->cmd) {
        ngx_presence_redis_detach(st->cmd);
        st->cmd = NULL;
        st->room->waiting--;
    }

    st->state = NGX_HTTP_PRESENCE_SUBSCRIBE;
    ngx_http_presence_unavailable(st, 0);
}


/*
 * The sweep: the script that prunes the room, so that users whose time
 * ran out are announced even when nobody else touches the room.  It says
 * when the next one's time runs out; the sweep comes back then, with a
 * jitter that spreads the workers and hosts over it (the first one does
 * the work, the others find nothing), and at least every 900 ms + jitter.
 */

static void
ngx_http_presence_sweep_handler(ngx_event_t *ev)
{
    ngx_http_presence_room_t  *room;

    room = ev->data;

    if (room->sweep_cmd) {
        /* Redis did not answer the last one in all this time */
        ngx_presence_redis_timed_out(room->sweep_cmd);
        room->sweep_cmd = NULL;

        ngx_http_presence_room_stale(room);
    }

    room->sweep_cmd = ngx_presence_redis_eval(ngx_http_presence_rds,
                                              NGX_PRESENCE_SWEEP, &room->key,
                                              NULL, 0,
                                              ngx_http_presence_sweep_reply,
                                              room, ngx_cycle->log);

    ngx_http_presence_sweep_after(room, room->sweep_cmd
                                        ? ngx_http_presence_rds->conf->timeout
                                        : NGX_HTTP_PRESENCE_RETRY);
}


static void
ngx_http_presence_sweep_reply(void *data, redisReply *reply)
{
    ngx_http_presence_room_t  *room = data;

    ngx_msec_t  delay;

    room->sweep_cmd = NULL;

    delay = NGX_HTTP_PRESENCE_SWEEP_MAX;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_http_presence_sweep_after(room, delay);
        ngx_http_presence_room_stale(room);
        return;
    }

    if (reply->integer >= 0 && reply->integer < NGX_HTTP_PRESENCE_SWEEP_MAX) {
        /* the next user's time ends in Redis's clock: just after that */
        delay = (ngx_msec_t) reply->integer + 1;
    }

    ngx_http_presence_sweep_after(room, delay);
}


/*
 * A sweep failed: the room's keys may expire before another finds whose
 * time ran out, and take them unannounced.  The live streams say Redis is
 * unavailable and take a fresh snapshot.
 */

static void
ngx_http_presence_room_stale(ngx_http_presence_room_t *room)
{
    ngx_http_presence_room_each(room, NGX_HTTP_PRESENCE_LIVE,
                                ngx_http_presence_stream_stale);
}


static void
ngx_http_presence_stream_stale(ngx_http_presence_stream_t *st)
{
    ngx_http_presence_unavailable(st, NGX_HTTP_PRESENCE_RETRY);
}


/*
 * Calls handler for each stream of the room in the state given (any with
 * NGX_HTTP_PRESENCE_ANY).  A stream may leave meanwhile, the last one
 * too: the room goes only once the walk is over.
 */

static void
ngx_http_presence_room_each(ngx_http_presence_room_t *room, ngx_uint_t state,
    ngx_http_presence_stream_pt handler)
{
    ngx_queue_t                 *q, *next;
    ngx_http_presence_stream_t  *st;

    room->busy++;

    for (q = ngx_queue_head(&room->streams);
         q != ngx_queue_sentinel(&room->streams);
         q = next)
    {
        next = ngx_queue_next(q);
        st = ngx_queue_data(q, ngx_http_presence_stream_t, queue);

        if (state == NGX_HTTP_PRESENCE_ANY || st->state == state) {
            handler(st);
        }
    }

    room->busy--;
    ngx_http_presence_room_put(room);
}


static void
ngx_http_presence_sweep_after(ngx_http_presence_room_t *room,
    ngx_msec_t delay)
{
    if (room->sweep.timer_set) {
        ngx_del_timer(&room->sweep);
    }

    ngx_add_timer(&room->sweep,
                  delay + ngx_random() % NGX_HTTP_PRESENCE_SWEEP_JITTER);
}


/* what the subscriber connection says */

static void
ngx_http_presence_pubsub(ngx_uint_t what, ngx_str_t *channel,
    ngx_str_t *message)
{
    ngx_rbtree_node_t         *node, *root, *sentinel;
    ngx_http_presence_room_t  *room;

    root = ngx_http_presence_rooms.root;
    sentinel = ngx_http_presence_rooms.sentinel;

    switch (what) {

    case NGX_PRESENCE_PUBSUB_READY:

        if (root == sentinel) {
            return;
        }

        for (node = ngx_rbtree_min(root, sentinel);
             node;
             node = ngx_rbtree_next(&ngx_http_presence_rooms, node))
        {
            room = (ngx_http_presence_room_t *) node;

            if (room->state == NGX_HTTP_PRESENCE_UNSUBSCRIBED) {
                ngx_http_presence_room_subscribe(room);
            }
        }

        return;

    case NGX_PRESENCE_PUBSUB_DOWN:

        /* a room may go while this runs: always start from the smallest */

        for ( ;; ) {
            room = NULL;

            for (node = (root = ngx_http_presence_rooms.root) == sentinel
                        ? NULL : ngx_rbtree_min(root, sentinel);
                 node;
                 node = ngx_rbtree_next(&ngx_http_presence_rooms, node))
            {
                if (((ngx_http_presence_room_t *) node)->state
                    != NGX_HTTP_PRESENCE_UNSUBSCRIBED)
                {
                    room = (ngx_http_presence_room_t *) node;
                    break;
                }
            }

            if (room == NULL) {
                break;
            }

            ngx_http_presence_room_lost(room);
        }

        /* the streams that waited for a subscription were told on time */
        return;

    case NGX_PRESENCE_PUBSUB_SUBSCRIBED:

        room = (ngx_http_presence_room_t *) ngx_str_rbtree_lookup(
                   &ngx_http_presence_rooms, channel,
                   ngx_crc32_long(channel->data, channel->len));

        if (room == NULL || room->state != NGX_HTTP_PRESENCE_SUBSCRIBING) {
            return;
        }

        room->state = NGX_HTTP_PRESENCE_SUBSCRIBED;

        ngx_http_presence_sweep_after(room, 0);

        ngx_http_presence_room_each(room, NGX_HTTP_PRESENCE_SUBSCRIBE,
                                    ngx_http_presence_snapshot);
        return;

    default: /* NGX_PRESENCE_PUBSUB_MESSAGE */

        room = (ngx_http_presence_room_t *) ngx_str_rbtree_lookup(
                   &ngx_http_presence_rooms, channel,
                   ngx_crc32_long(channel->data, channel->len));

        if (room == NULL) {
            return;
        }

        ngx_http_presence_publish(room, message);
    }
}


/* the events of a message to every stream of the room that is live */

static void
ngx_http_presence_publish(ngx_http_presence_room_t *room, ngx_str_t *message)
{
    u_char                      *p, *end;
    ngx_uint_t                   sent;
    ngx_queue_t                 *q, *next;
    ngx_http_presence_event_t   *ev;
    ngx_http_presence_stream_t  *st;
    ngx_http_presence_change_t   ch;

    p = message->data;
    end = p + message->len;

    room->busy++;

    while (p < end) {
        p = ngx_http_presence_parse_change(p, end, &ch);

        if (p == NULL) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "presence: a message on the channel \"%V\" is not "
                          "the module's; ignored", &room->sn.str);
            break;
        }

        ev = ngx_http_presence_change_event(&ch);
        if (ev == NULL) {
            break;
        }

        ev->refs++;
        sent = 0;

        for (q = ngx_queue_head(&room->streams);
             q != ngx_queue_sentinel(&room->streams);
             q = next)
        {
            next = ngx_queue_next(q);
            st = ngx_queue_data(q, ngx_http_presence_stream_t, queue);

            if (st->state != NGX_HTTP_PRESENCE_LIVE || ev->id <= st->last) {
                continue;
            }

            st->last = ev->id;
            sent++;

            /* a stream that fails is dropped, the others go on */
            (void) ngx_http_presence_stream_send(st, ev, NULL);
        }

        (void) ngx_atomic_fetch_add(
                          &ngx_http_presence_counters()->stream_events, sent);

        if (room->waiting) {
            if (room->nbacklog == NGX_HTTP_PRESENCE_BACKLOG_MAX) {
                /* the snapshots on their way miss events: they ask again */
                ngx_http_presence_room_clear(room);
                room->epoch++;
            }

            ev->refs++;
            ngx_queue_insert_tail(&room->backlog, &ev->queue);
            room->nbacklog++;
        }

        ngx_http_presence_event_release(ev);
    }

    room->busy--;
    ngx_http_presence_room_put(room);
}


static ngx_http_presence_event_t *
ngx_http_presence_change_event(ngx_http_presence_change_t *ch)
{
    u_char                     *p;
    size_t                      len, escape;
    ngx_http_presence_event_t  *ev;

    escape = ngx_escape_json(NULL, ch->user.data, ch->user.len);

    len = sizeof("event: leave\nid: \ndata: {\"user_id\":\"\",\"count\":"
                 ",\"reason\":\"timeout\"}\n\n") - 1
          + 2 * NGX_INT64_LEN + ch->user.len + escape;

    ev = ngx_alloc(sizeof(ngx_http_presence_event_t) + len, ngx_cycle->log);
    if (ev == NULL) {
        return NULL;
    }

    ev->refs = 0;
    ev->id = ch->id;

    p = ngx_sprintf(ev->data, "event: %s\nid: %uL\ndata: {\"user_id\":\"",
                    ch->kind == NGX_HTTP_PRESENCE_JOIN ? "join" : "leave",
                    ch->id);
    p = (u_char *) ngx_escape_json(p, ch->user.data, ch->user.len);
    p = ngx_sprintf(p, "\",\"count\":%uL", ch->count);

    if (ch->kind == NGX_HTTP_PRESENCE_LEFT) {
        p = ngx_cpymem(p, ",\"reason\":\"leave\"", 17);

    } else if (ch->kind == NGX_HTTP_PRESENCE_TIMEOUT) {
        p = ngx_cpymem(p, ",\"reason\":\"timeout\"", 19);
    }

    p = ngx_cpymem(p, "}\n\n", 3);

    ev->len = p - ev->data;

    return ev;
}


/* the listing of the room, asked once the channel is subscribed */

static void
ngx_http_presence_snapshot(ngx_http_presence_stream_t *st)
{
    ngx_http_request_t            *r;
    ngx_http_presence_room_t      *room;
    ngx_http_presence_loc_conf_t  *plcf;

    r = st->request;
    room = st->room;
    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    st->cmd = ngx_presence_redis_online(ngx_http_presence_rds, &room->key,
                                        plcf->online_limit,
                                        ngx_http_presence_snapshot_reply, st,
                                        r->connection->log);

    if (st->cmd == NULL) {
        ngx_http_presence_unavailable(st, NGX_HTTP_PRESENCE_RETRY);
        return;
    }

    st->state = NGX_HTTP_PRESENCE_SNAPSHOT;
    st->epoch = room->epoch;
    st->deadline = ngx_current_msec + ngx_http_presence_rds->conf->timeout;

    room->waiting++;

    ngx_http_presence_stream_arm(st);
}


static void
ngx_http_presence_snapshot_reply(void *data, redisReply *reply)
{
    ngx_http_presence_stream_t *st = data;

    ngx_uint_t                  sent;
    ngx_queue_t                *q;
    ngx_http_presence_room_t   *room;
    ngx_http_presence_event_t  *ev, *snapshot;

    room = st->room;

    st->cmd = NULL;
    room->waiting--;
    room->busy++;

    if (reply == NULL) {
        ngx_http_presence_unavailable(st, NGX_HTTP_PRESENCE_RETRY);
        goto done;
    }

    if (st->epoch != room->epoch) {
        /* events it would need were let go: a fresher snapshot */
        ngx_http_presence_snapshot(st);
        goto done;
    }

    snapshot = ngx_http_presence_snapshot_event(st, reply);

    if (snapshot == NULL) {
        ngx_http_presence_unavailable(st, NGX_HTTP_PRESENCE_RETRY);
        goto done;
    }

    st->state = NGX_HTTP_PRESENCE_LIVE;
    st->unavailable = 0;
    st->deadline = 0;
    st->last = snapshot->id;

    snapshot->refs++;

    if (ngx_http_presence_stream_send(st, snapshot, NULL) != NGX_OK) {
        ngx_http_presence_event_release(snapshot);
        goto done;
    }

    ngx_http_presence_event_release(snapshot);

    /* what came while the snapshot was on its way and is not in it */

    sent = 0;

    for (q = ngx_queue_head(&room->backlog);
         q != ngx_queue_sentinel(&room->backlog);
         q = ngx_queue_next(q))
    {
        ev = ngx_queue_data(q, ngx_http_presence_event_t, queue);

        if (ev->id <= st->last) {
            continue;
        }

        st->last = ev->id;
        sent++;

        if (ngx_http_presence_stream_send(st, ev, NULL) != NGX_OK) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&ngx_http_presence_counters()->stream_events,
                                sent);

    if (!st->done) {
        ngx_http_presence_stream_arm(st);
    }

done:

    if (room->waiting == 0) {
        ngx_http_presence_room_clear(room);
    }

    room->busy--;
    ngx_http_presence_room_put(room);
}


static ngx_http_presence_event_t *
ngx_http_presence_snapshot_event(ngx_http_presence_stream_t *st,
    redisReply *reply)
{
    uint64_t                        id;
    ngx_int_t                       rc;
    ngx_str_t                       body;
    ngx_pool_t                     *pool;
    ngx_http_request_t             *r;
    ngx_http_presence_event_t      *ev;
    ngx_http_presence_loc_conf_t   *plcf;

    r = st->request;
    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    /* a stream lives long: what a snapshot needs for a moment goes after */

    pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, r->connection->log);
    if (pool == NULL) {
        return NULL;
    }

    rc = ngx_http_presence_listing(pool, ngx_http_presence_rds, reply,
                                   plcf->online_limit, &st->room_name,
                                   &plcf->ttl_json, &body, &id);

    if (rc != NGX_OK) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    ev = ngx_alloc(sizeof(ngx_http_presence_event_t)
                   + sizeof("event: snapshot\nid: \ndata: \n\n") - 1
                   + NGX_INT64_LEN + body.len, r->connection->log);

    if (ev) {
        ev->refs = 0;
        ev->id = id;
        ev->len = ngx_sprintf(ev->data, "event: snapshot\nid: %uL\ndata: "
                              "%V\n\n", id, &body)
                  - ev->data;
    }

    ngx_destroy_pool(pool);

    return ev;
}


/*
 * Redis is out of reach: the stream says so once, and asks again for a
 * snapshot after retry ms (0: when the room is subscribed again).
 */

static void
ngx_http_presence_unavailable(ngx_http_presence_stream_t *st,
    ngx_msec_t retry)
{
    if (st->done) {
        return;
    }

    if (retry) {
        st->state = NGX_HTTP_PRESENCE_RETRY_WAIT;
        st->deadline = ngx_current_msec + retry;

    } else {
        st->deadline = 0;
    }

    if (!st->unavailable) {
        st->unavailable = 1;

        if (ngx_http_presence_stream_send(st, NULL,
                                          &ngx_http_presence_unavailable_text)
            != NGX_OK)
        {
            return;
        }
    }

    ngx_http_presence_stream_arm(st);
}


/* the ping, and the bound of the wait for Redis or the retry */

static void
ngx_http_presence_stream_timer(ngx_event_t *ev)
{
    ngx_http_presence_stream_t     *st;
    ngx_http_presence_loc_conf_t   *plcf;

    st = ev->data;

    if (st->deadline && (ngx_msec_int_t) (st->deadline - ngx_current_msec)
                        <= 0)
    {
        st->deadline = 0;

        switch (st->state) {

        case NGX_HTTP_PRESENCE_SNAPSHOT:
            ngx_presence_redis_timed_out(st->cmd);
            st->cmd = NULL;
            st->room->waiting--;

            if (st->room->waiting == 0) {
                ngx_http_presence_room_clear(st->room);
            }

            ngx_http_presence_unavailable(st, NGX_HTTP_PRESENCE_RETRY);
            break;

        case NGX_HTTP_PRESENCE_RETRY_WAIT:
            if (st->room->state == NGX_HTTP_PRESENCE_SUBSCRIBED) {
                ngx_http_presence_snapshot(st);

            } else {
                st->state = NGX_HTTP_PRESENCE_SUBSCRIBE;
            }

            break;

        default: /* NGX_HTTP_PRESENCE_SUBSCRIBE, too long */
            ngx_http_presence_unavailable(st, 0);
        }

        if (st->done) {
            return;
        }
    }

    plcf = ngx_http_get_module_loc_conf(st->request,
                                        ngx_http_presence_module);

    if (ngx_current_msec - st->written >= plcf->stream_ping) {
        if (ngx_http_presence_stream_send(st, NULL,
                                          &ngx_http_presence_ping_text)
            != NGX_OK)
        {
            return;
        }
    }

    ngx_http_presence_stream_arm(st);
}


static void
ngx_http_presence_stream_arm(ngx_http_presence_stream_t *st)
{
    ngx_msec_t                     at;
    ngx_msec_int_t                 delay;
    ngx_http_presence_loc_conf_t  *plcf;

    if (st->done) {
        return;
    }

    plcf = ngx_http_get_module_loc_conf(st->request,
                                        ngx_http_presence_module);

    at = st->written + plcf->stream_ping;

    if (st->deadline && (ngx_msec_int_t) (st->deadline - at) < 0) {
        at = st->deadline;
    }

    delay = (ngx_msec_int_t) (at - ngx_current_msec);

    ngx_add_timer(&st->timer, delay > 0 ? (ngx_msec_t) delay : 1);
}


/*
 * Writes an event, or static text, to the stream.  NGX_OK, or NGX_ERROR
 * when the client is gone or lets too much wait: the stream is dropped
 * then (ngx_http_presence_stream_drop(): nothing to do for one not yet in
 * its room).  The event's memory is referenced until its buffer is
 * written.
 */

static ngx_int_t
ngx_http_presence_stream_send(ngx_http_presence_stream_t *st,
    ngx_http_presence_event_t *ev, ngx_str_t *text)
{
    if (ngx_http_presence_stream_output(st, ev, text) != NGX_OK) {
        ngx_http_presence_stream_drop(st);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_stream_output(ngx_http_presence_stream_t *st,
    ngx_http_presence_event_t *ev, ngx_str_t *text)
{
    size_t                    len;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_chain_t               out;
    ngx_http_request_t       *r;
    ngx_http_presence_out_t  *o;

    r = st->request;

    len = ev ? ev->len : text->len;

    if (st->unsent + len > NGX_HTTP_PRESENCE_STREAM_UNSENT) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "presence: the stream's client does not read, "
                      "%uz bytes wait; dropping it", st->unsent);
        return NGX_ERROR;
    }

    o = st->free;

    if (o) {
        st->free = o->next;

    } else {
        o = ngx_palloc(r->pool, sizeof(ngx_http_presence_out_t));
        if (o == NULL) {
            return NGX_ERROR;
        }
    }

    b = &o->buf;
    ngx_memzero(b, sizeof(ngx_buf_t));

    if (ev) {
        ev->refs++;
        b->pos = ev->data;

    } else {
        b->pos = text->data;
    }

    b->last = b->pos + len;
    b->start = b->pos;
    b->end = b->last;

    b->memory = 1;
    b->flush = 1;

    o->event = ev;
    o->next = NULL;
    *st->busy_tail = o;
    st->busy_tail = &o->next;

    st->unsent += len;
    st->written = ngx_current_msec;

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_output_filter(r, &out);

    ngx_http_presence_stream_sent(st);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ngx_http_presence_stream_flow(r, rc);

    return NGX_OK;
}


/* the buffers written out are free again, their events let go */

static void
ngx_http_presence_stream_sent(ngx_http_presence_stream_t *st)
{
    ngx_http_presence_out_t  *o;

    while ((o = st->busy) && o->buf.pos == o->buf.last) {
        st->busy = o->next;
        st->unsent -= o->buf.last - o->buf.start;

        if (o->event) {
            ngx_http_presence_event_release(o->event);
            o->event = NULL;
        }

        o->next = st->free;
        st->free = o;
    }

    if (st->busy == NULL) {
        st->busy_tail = &st->busy;
    }
}


/* the client can take more */

static void
ngx_http_presence_stream_write(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_event_t                 *wev;
    ngx_http_presence_stream_t  *st;

    wev = r->connection->write;
    st = ngx_http_get_module_ctx(r, ngx_http_presence_module);

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "presence: the stream's client timed out");
        r->connection->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    if (st) {
        ngx_http_presence_stream_sent(st);
    }

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    ngx_http_presence_stream_flow(r, rc);
}


/* while output waits, the write event is armed and bounded by send_timeout */

static void
ngx_http_presence_stream_flow(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;
    wev = c->write;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (rc == NGX_AGAIN || c->buffered || r->buffered) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
}


/*
 * A stream whose client is gone or does not read: out of its room now,
 * its request ended from the posted events, where no caller up the stack
 * (a walk over a room's streams, the stream's own handler) holds it.
 */

static void
ngx_http_presence_stream_drop(ngx_http_presence_stream_t *st)
{
    if (st->done) {
        return;
    }

    ngx_http_presence_stream_leave(st);

    st->timer.handler = ngx_http_presence_stream_dropped;
    ngx_post_event(&st->timer, &ngx_posted_events);
}


static void
ngx_http_presence_stream_dropped(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_presence_stream_t  *st;

    st = ev->data;
    r = st->request;
    c = r->connection;

    ngx_http_finalize_request(r, NGX_ERROR);
    ngx_http_run_posted_requests(c);
}


/* the end of a stream that nginx ends: the browser comes again */

static void
ngx_http_presence_stream_end(ngx_http_presence_stream_t *st)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    if (st->done) {
        return;
    }

    ngx_http_presence_stream_leave(st);

    r = st->request;

    if (st->busy || r->connection->buffered) {
        /* a shutdown does not wait for a slow client */
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    rc = ngx_http_send_special(r, NGX_HTTP_LAST);
    ngx_http_finalize_request(r, rc);
}


/* the stream leaves its room and the worker's count; once */

static void
ngx_http_presence_stream_leave(ngx_http_presence_stream_t *st)
{
    ngx_http_presence_room_t  *room;

    if (st->done) {
        return;
    }

    st->done = 1;

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    room = st->room;

    if (room == NULL) {
        return;
    }

    if (st->cmd) {
        ngx_presence_redis_detach(st->cmd);
        st->cmd = NULL;

        if (--room->waiting == 0) {
            ngx_http_presence_room_clear(room);
        }
    }

    ngx_queue_remove(&st->queue);
    st->room = NULL;

    if (--ngx_http_presence_nstreams == 0
        && ngx_http_presence_exit_ev.timer_set)
    {
        ngx_del_timer(&ngx_http_presence_exit_ev);
    }

    ngx_http_presence_worker()->streams = ngx_http_presence_nstreams;

    ngx_http_presence_room_put(room);
}


static void
ngx_http_presence_stream_cleanup(void *data)
{
    ngx_http_presence_stream_t *st = data;

    ngx_http_presence_out_t  *o;

    ngx_http_presence_stream_leave(st);

    if (st->timer.posted) {
        ngx_delete_posted_event(&st->timer);
    }

    /* nothing more is written: the events still referenced are let go */

    for (o = st->busy; o; o = o->next) {
        if (o->event) {
            ngx_http_presence_event_release(o->event);
            o->event = NULL;
        }
    }

    st->busy = NULL;
    st->busy_tail = &st->busy;
}


static void
ngx_http_presence_event_release(ngx_http_presence_event_t *ev)
{
    if (--ev->refs == 0) {
        ngx_free(ev);
    }
}


/*
 * A worker that shuts down (reload, quit) ends its streams at once: the
 * browsers come again to the new workers.
 */

static void
ngx_http_presence_exit_check(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_rbtree_node_t           *root, *sentinel;
    ngx_http_presence_room_t    *room;
    ngx_http_presence_stream_t  *st;

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, NGX_HTTP_PRESENCE_EXIT_CHECK);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "presence: shutting down, ending %ui streams",
                   ngx_http_presence_nstreams);

    sentinel = ngx_http_presence_rooms.sentinel;

    /* each end takes a stream out of its room, and the last the room */

    while ((root = ngx_http_presence_rooms.root) != sentinel) {
        room = (ngx_http_presence_room_t *) ngx_rbtree_min(root, sentinel);

        if (ngx_queue_empty(&room->streams)) {
            /* cannot be: a room goes with its last stream */
            break;
        }

        st = ngx_queue_data(ngx_queue_head(&room->streams),
                            ngx_http_presence_stream_t, queue);
        c = st->request->connection;

        ngx_http_presence_stream_end(st);
        ngx_http_run_posted_requests(c);
    }
}
