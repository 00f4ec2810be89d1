
/*
 * ngx_http_presence_module: the content handlers of presence_heartbeat,
 * presence_leave and presence_online, and a request's life while it
 * waits for Redis.
 *
 * A request that sends a command holds a reference (r->main->count) and a
 * timer of presence_redis_timeout; the command's callback or the timer
 * finalizes it, whichever comes first.  A request that goes away first
 * detaches its command in its cleanup: the late reply is dropped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


static ngx_int_t ngx_http_presence_identity_handler(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_parse_body(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_http_presence_ctx_t *ngx_http_presence_create_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_eval_identity(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_start(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_prepare(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_fail(ngx_http_request_t *r, ngx_int_t rc);
static ngx_int_t ngx_http_presence_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_presence_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_cleanup(void *data);
static void ngx_http_presence_timeout_handler(ngx_event_t *ev);
static void ngx_http_presence_reply(void *data, redisReply *reply);


ngx_int_t
ngx_http_presence_update_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc, status;
    ngx_http_presence_ctx_t       *ctx;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (r->method != NGX_HTTP_POST) {
        rc = NGX_HTTP_PRESENCE_ERR_METHOD;
        goto discard;
    }

    ctx = ngx_http_presence_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->script = (plcf->handler == NGX_HTTP_PRESENCE_HEARTBEAT)
                  ? NGX_PRESENCE_HEARTBEAT : NGX_PRESENCE_LEAVE;

    if (plcf->identity) {
        return ngx_http_presence_identity_handler(r, ctx);
    }

    if (r->headers_in.content_type
        && !ngx_http_presence_media_type_ok(&r->headers_in.content_type->value))
    {
        rc = NGX_HTTP_PRESENCE_ERR_MEDIA_TYPE;
        goto discard;
    }

    if (r->headers_in.content_length_n > (off_t) plcf->max_body_size) {
        rc = NGX_HTTP_PRESENCE_ERR_TOO_LARGE;
        goto discard;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;

discard:

    /*
     * The answer comes before the body: nginx reads and drops it.  A
     * chunked body that nginx cannot parse is answered 400 by nginx itself,
     * here as in every handler and as ngx_http_read_client_request_body()
     * does: the request is broken below the API, so no API error fits, and
     * nginx closes the connection, whose next bytes it could no longer tell
     * from a request.  Never a 500: the client is at fault.  A broken chunk
     * that comes after the answer only closes the connection.
     */

    status = ngx_http_discard_request_body(r);
    if (status != NGX_OK) {
        return status;
    }

    return ngx_http_presence_error(r, rc);
}


/*
 * The identity comes from nginx (presence_heartbeat VALUE): a body is
 * read only for its "session_id".  A body that is no JSON object, of
 * another type or too large is ignored, as it always was here: only a
 * session_id that is there and wrong is an error.
 */

static ngx_int_t
ngx_http_presence_identity_handler(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t                      rc;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if ((r->headers_in.content_length_n > 0 || r->headers_in.chunked)
        && (r->headers_in.content_type == NULL
            || ngx_http_presence_media_type_ok(
                                         &r->headers_in.content_type->value))
        && r->headers_in.content_length_n <= (off_t) plcf->max_body_size)
    {
        rc = ngx_http_read_client_request_body(r,
                                           ngx_http_presence_body_handler);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    /* a broken chunked body is nginx's own 400, see above */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_presence_eval_identity(r, ctx);

    if (rc == NGX_OK) {
        rc = ngx_http_presence_start(r, ctx);
    }

    if (rc == NGX_OK) {
        r->main->count++;
        return NGX_DONE;
    }

    return ngx_http_presence_fail(r, rc);
}


static void
ngx_http_presence_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_presence_module);

    rc = ngx_http_presence_parse_body(r, ctx);

    if (rc == NGX_OK) {
        rc = ngx_http_presence_start(r, ctx);
    }

    if (rc == NGX_OK) {
        /* the reply or the timer finalizes the request */
        return;
    }

    ngx_http_finalize_request(r, ngx_http_presence_fail(r, rc));
}


/*
 * The user (from the body, or from nginx) and the optional session of a
 * heartbeat or a leave: NGX_OK, NGX_ERROR, or an error to answer with.
 */

static ngx_int_t
ngx_http_presence_parse_body(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_str_t                      body;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (plcf->identity) {
        rc = ngx_http_presence_eval_identity(r, ctx);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    rc = ngx_http_presence_read_body(r, &body);

    if (rc != NGX_OK) {
        return (plcf->identity && rc == NGX_HTTP_PRESENCE_ERR_TOO_LARGE)
               ? NGX_OK : rc;
    }

    /* a JSON string decodes to no more bytes than it takes */

    p = ngx_pnalloc(r->pool, 2 * body.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->session.data = p + body.len;

    if (plcf->identity) {
        rc = ngx_http_presence_parse_json(body.data, body.len, NULL,
                                          &ctx->session);

        if (rc == NGX_HTTP_PRESENCE_ERR_JSON) {
            /* not JSON: no session, as before sessions were read */
            ngx_str_null(&ctx->session);
            return NGX_OK;
        }

    } else {
        ctx->user.data = p;

        rc = ngx_http_presence_parse_json(body.data, body.len, &ctx->user,
                                          &ctx->session);

        if (rc == NGX_OK
            && !ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                           plcf->max_id_length))
        {
            rc = NGX_HTTP_PRESENCE_ERR_USER;
        }
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->session.data
        && !ngx_http_presence_valid_id(ctx->session.data, ctx->session.len,
                                       NGX_HTTP_PRESENCE_SESSION_MAX))
    {
        return NGX_HTTP_PRESENCE_ERR_SESSION;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_presence_online_handler(ngx_http_request_t *r)
{
    size_t                           i;
    u_char                          *p;
    ngx_int_t                        rc, limit;
    ngx_str_t                        value;
    ngx_http_presence_ctx_t         *ctx;
    ngx_http_presence_loc_conf_t    *plcf;
    ngx_http_presence_cache_node_t  *node;

    /* nginx's own 400 for a broken chunked body: see the update handler */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_METHOD);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    ctx = ngx_http_presence_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_arg(r, (u_char *) "user_id", 7, &value) == NGX_OK) {

        p = ngx_pnalloc(r->pool, value.len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /*
         * decoded as browsers encode a form: '+' is a space.  It becomes
         * one before the %XX are decoded, so that "%2B" stays a '+'
         */

        for (i = 0; i < value.len; i++) {
            p[i] = (value.data[i] == '+') ? ' ' : value.data[i];
        }

        value.data = p;
        ctx->user.data = p;

        /* in place: a decoded byte never takes more room than its %XX */
        ngx_unescape_uri(&p, &value.data, value.len, 0);
        ctx->user.len = p - ctx->user.data;

        if (!ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                        plcf->max_id_length))
        {
            return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_USER);
        }

        ctx->script = NGX_PRESENCE_LOOKUP;

    } else {
        ctx->limit = plcf->online_limit;

        if (ngx_http_arg(r, (u_char *) "limit", 5, &value) == NGX_OK) {
            limit = ngx_http_presence_parse_limit(&value, plcf->online_limit);

            if (limit == NGX_ERROR) {
                return ngx_http_presence_error(r,
                                               NGX_HTTP_PRESENCE_ERR_LIMIT);
            }

            ctx->limit = limit;
        }

        ctx->script = NGX_PRESENCE_ONLINE;
    }

    rc = ngx_http_presence_prepare(r, ctx);
    if (rc != NGX_OK) {
        return ngx_http_presence_fail(r, rc);
    }

    /*
     * presence_online_cache may answer at once; else, when the worker's
     * memo of this listing holds every member, Redis is asked the room's
     * head first (ngx_http_presence_cache.c)
     */

    if (ctx->script == NGX_PRESENCE_ONLINE) {
        node = ngx_http_presence_cache_lookup(r, ctx);

        if (node) {
            return ngx_http_presence_cache_answer(r, node);
        }
    }

    rc = ngx_http_presence_query(r, ctx);

    if (rc == NGX_OK) {
        r->main->count++;
        return NGX_DONE;
    }

    return ngx_http_presence_fail(r, rc);
}


static ngx_http_presence_ctx_t *
ngx_http_presence_create_ctx(ngx_http_request_t *r)
{
    ngx_http_cleanup_t       *cln;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_presence_cleanup;
    cln->data = ctx;

    ctx->request = r;

    ctx->timeout.handler = ngx_http_presence_timeout_handler;
    ctx->timeout.data = ctx;
    ctx->timeout.log = r->connection->log;

    ngx_http_set_ctx(r, ctx, ngx_http_presence_module);

    return ctx;
}


/* NGX_OK, NGX_ERROR, or an error to answer with */

static ngx_int_t
ngx_http_presence_eval_identity(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (ngx_http_complex_value(r, plcf->identity, &ctx->user) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->user.len == 0) {
        return NGX_HTTP_PRESENCE_ERR_IDENTITY;
    }

    if (!ngx_http_presence_valid_id(ctx->user.data, ctx->user.len,
                                    plcf->max_id_length))
    {
        return NGX_HTTP_PRESENCE_ERR_USER;
    }

    return NGX_OK;
}


/* the room, then the command to Redis: NGX_OK, NGX_ERROR or an error */

static ngx_int_t
ngx_http_presence_start(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_presence_prepare(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_presence_query(r, ctx);
}


static ngx_int_t
ngx_http_presence_prepare(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    return ngx_http_presence_room_key(r, &ctx->room, &ctx->key);
}


/*
 * The room of the request, and the Redis key of its sorted set: NGX_OK,
 * NGX_ERROR or NGX_HTTP_PRESENCE_ERR_ROOM
 */

ngx_int_t
ngx_http_presence_room_key(ngx_http_request_t *r, ngx_str_t *room,
    ngx_str_t *key)
{
    u_char                        *p;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (ngx_http_complex_value(r, plcf->room, room) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ngx_http_presence_valid_id(room->data, room->len,
                                    plcf->max_id_length))
    {
        return NGX_HTTP_PRESENCE_ERR_ROOM;
    }

    /* the braces make the room a Redis Cluster hash tag */

    key->len = plcf->key_prefix.len + room->len + 2;
    key->data = ngx_pnalloc(r->pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, plcf->key_prefix.data, plcf->key_prefix.len);
    *p++ = '{';
    p = ngx_cpymem(p, room->data, room->len);
    *p = '}';

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_fail(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_presence_error(r, rc);
}


/*
 * Gathers the body into one null-terminated buffer, wherever nginx put
 * it: one buffer, several (chunked), or a temporary file.  NGX_OK,
 * NGX_ERROR, or too large for presence_max_body_size, which a chunked body
 * can only show once it is read.
 */

static ngx_int_t
ngx_http_presence_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char                        *p;
    off_t                          len;
    ssize_t                        n;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    len = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            len += ngx_buf_size(cl->buf);
        }
    }

    if (len > (off_t) plcf->max_body_size) {
        return NGX_HTTP_PRESENCE_ERR_TOO_LARGE;
    }

    p = ngx_pnalloc(r->pool, (size_t) len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = (size_t) len;

    for (cl = r->request_body ? r->request_body->bufs : NULL;
         cl;
         cl = cl->next)
    {
        b = cl->buf;

        if (ngx_buf_size(b) == 0) {
            continue;
        }

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        /* at most presence_max_body_size from a local temporary file */

        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "presence: cannot read the request body from "
                          "\"%V\"", &b->file->name);
            return NGX_ERROR;
        }

        p += n;
    }

    *p = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_query(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_str_t                       args[NGX_PRESENCE_MAX_ARGS];
    ngx_uint_t                      nargs;
    ngx_http_presence_loc_conf_t   *plcf;
    ngx_http_presence_main_conf_t  *pmcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    if (ctx->script == NGX_PRESENCE_ONLINE) {
        /* the head alone: the script's [count, id], no members */

        ctx->cmd = ngx_presence_redis_online(pmcf->rds, &ctx->key,
                                             ctx->head ? 0 : ctx->limit,
                                             ngx_http_presence_reply, ctx,
                                             r->connection->log);

    } else {
        /*
         * heartbeat: ttl, most sessions, the keys' life, user, session
         * (heartbeats of a room with the same first three may go to Redis
         * together); leave: user, session, grace; lookup: user.  No
         * session_id is the empty one.
         */

        if (ctx->script == NGX_PRESENCE_HEARTBEAT) {
            args[0] = plcf->ttl_ms;
            args[1] = plcf->max_sessions_arg;
            args[2] = plcf->key_life_arg;
            args[3] = ctx->user;
            args[4] = ctx->session;
            nargs = 5;

        } else if (ctx->script == NGX_PRESENCE_LEAVE) {
            args[0] = ctx->user;
            args[1] = ctx->session;
            args[2] = plcf->leave_grace_arg;
            nargs = 3;

        } else {
            args[0] = ctx->user;
            nargs = 1;
        }

        ctx->cmd = ngx_presence_redis_eval(pmcf->rds, ctx->script, &ctx->key,
                                           args, nargs,
                                           ngx_http_presence_reply, ctx,
                                           r->connection->log);
    }

    if (ctx->cmd == NULL) {
        return NGX_HTTP_PRESENCE_ERR_UNAVAILABLE;
    }

    ngx_add_timer(&ctx->timeout, pmcf->redis.timeout);

    /* a client that goes away ends the request; the reply is dropped */

    if (!r->discard_body) {
        r->read_event_handler = ngx_http_test_reading;
    }

    return NGX_OK;
}


static void
ngx_http_presence_cleanup(void *data)
{
    ngx_http_presence_ctx_t  *ctx = data;

    if (ctx->cmd) {
        ngx_presence_redis_detach(ctx->cmd);
        ctx->cmd = NULL;
    }

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    if (ctx->cache) {
        ngx_http_presence_cache_abandon(ctx);
    }
}


static void
ngx_http_presence_timeout_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "presence: redis timeout");

    ngx_presence_redis_timed_out(ctx->cmd);
    ctx->cmd = NULL;

    ngx_http_finalize_request(r,
                     ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_TIMEOUT));
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_presence_reply(void *data, redisReply *reply)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx;

    ctx = data;
    r = ctx->request;
    c = r->connection;

    ctx->cmd = NULL;

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    if (ctx->head) {
        ctx->head = 0;

        rc = ngx_http_presence_respond_head(r, ctx, reply);

        if (rc == NGX_DECLINED) {

            /* the room changed: the full listing, with a timer of its own */

            rc = ngx_http_presence_query(r, ctx);

            if (rc == NGX_OK) {
                return;
            }

            rc = ngx_http_presence_fail(r, rc);
        }

    } else {
        rc = ngx_http_presence_respond(r, ctx, reply);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
