
/*
 * ngx_http_presence_module: the answers.  Every answer is JSON with
 * Cache-Control: no-store; errors are {"error": code, "message": text}.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_md5.h>

#include "ngx_http_presence.h"


/* bytes of the MD5 of a listing that make its ETag */
#define NGX_HTTP_PRESENCE_ETAG_LEN   8


/* a member of a listing, as it is sorted and written */

typedef struct {
    uint64_t                    prefix;
    ngx_str_t                   name;
    size_t                      escape;
} ngx_http_presence_member_t;


typedef struct {
    ngx_uint_t                  status;
    ngx_str_t                   code;
    ngx_str_t                   message;
} ngx_http_presence_err_t;


static ngx_int_t ngx_http_presence_respond_listing(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_presence_head_ok(redisReply *reply, size_t n);
static ngx_int_t ngx_http_presence_sort(ngx_pool_t *pool,
    ngx_http_presence_member_t *users, ngx_uint_t n);
static int ngx_libc_cdecl ngx_http_presence_cmp_member(const void *one,
    const void *two);
static size_t ngx_http_presence_json_len(ngx_str_t *s);
static u_char *ngx_http_presence_json_str(u_char *p, ngx_str_t *s);


static ngx_http_presence_err_t  ngx_http_presence_errors[] = {

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_user_id"),
      ngx_string("The user id must be a non-empty string of valid UTF-8, "
                 "without control characters, within the length limit.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_room"),
      ngx_string("The room must be a non-empty string of valid UTF-8, "
                 "without control characters, within the length limit.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_json"),
      ngx_string("The body must be one JSON object, such as "
                 "{\\\"user_id\\\": \\\"alice\\\"}.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_limit"),
      ngx_string("The limit must be a whole number of zero or more.") },

    { NGX_HTTP_UNAUTHORIZED, ngx_string("no_identity"),
      ngx_string("The request carries no user identity.") },

    { NGX_HTTP_NOT_ALLOWED, ngx_string("method_not_allowed"),
      ngx_string("This method is not allowed here; see the Allow header.") },

    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, ngx_string("body_too_large"),
      ngx_string("The body is larger than this location accepts.") },

    { NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, ngx_string("unsupported_media_type"),
      ngx_string("Send the body as application/json or text/plain.") },

    { NGX_HTTP_SERVICE_UNAVAILABLE, ngx_string("redis_unavailable"),
      ngx_string("The presence store is unavailable; try again shortly.") },

    { NGX_HTTP_GATEWAY_TIME_OUT, ngx_string("redis_timeout"),
      ngx_string("The presence store did not answer in time.") },

    { NGX_HTTP_BAD_REQUEST, ngx_string("invalid_session_id"),
      ngx_string("The session id must be a non-empty string of valid UTF-8, "
                 "without control characters, of at most 64 bytes.") },

    { NGX_HTTP_SERVICE_UNAVAILABLE, ngx_string("too_many_streams"),
      ngx_string("This server holds as many live streams as it may; "
                 "poll the listing instead.") }
};


static ngx_str_t  ngx_http_presence_allow_post = ngx_string("POST");
static ngx_str_t  ngx_http_presence_allow_get = ngx_string("GET, HEAD");


/* the answer to a request whose command Redis answered (or not: NULL) */

ngx_int_t
ngx_http_presence_respond(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx,
    redisReply *reply)
{
    size_t                          len;
    ngx_buf_t                      *b;
    long long                       n, sessions;
    ngx_http_presence_loc_conf_t   *plcf;
    ngx_http_presence_main_conf_t  *pmcf;

    if (reply == NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    if (ctx->script == NGX_PRESENCE_ONLINE) {
        return ngx_http_presence_respond_listing(r, ctx, reply);
    }

    /* {count or ms left, sessions} */

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_INTEGER)
    {
        goto invalid;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    n = reply->element[0]->integer;
    sessions = reply->element[1]->integer;

    len = sizeof("{\"user_id\":,\"online\":,\"expires_in_ms\":}") - 1
          + sizeof(",\"room\":,\"ttl\":,\"sessions\":") - 1
          + ngx_http_presence_json_len(&ctx->user)
          + ngx_http_presence_json_len(&ctx->room)
          + plcf->ttl_json.len + 2 * NGX_INT64_LEN;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"user_id\":", 11);
    b->last = ngx_http_presence_json_str(b->last, &ctx->user);

    if (ctx->script == NGX_PRESENCE_LOOKUP) {
        if (n < 0) {
            n = 0;
        }

        b->last = ngx_sprintf(b->last, ",\"online\":%s,\"expires_in_ms\":%L",
                              n ? "true" : "false", (int64_t) n);

    } else {
        b->last = ngx_cpymem(b->last, ",\"room\":", 8);
        b->last = ngx_http_presence_json_str(b->last, &ctx->room);

        if (ctx->script == NGX_PRESENCE_HEARTBEAT) {
            b->last = ngx_sprintf(b->last, ",\"ttl\":%V", &plcf->ttl_json);
        }

        b->last = ngx_sprintf(b->last, ",\"online\":%L", (int64_t) n);
    }

    b->last = ngx_sprintf(b->last, ",\"sessions\":%L}", (int64_t) sessions);

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);

invalid:

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    ngx_presence_redis_unexpected(pmcf->rds, reply);

    return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
}


static ngx_int_t
ngx_http_presence_respond_listing(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply)
{
    u_char                         digest[16], *etag;
    uint64_t                       id;
    ngx_int_t                      rc;
    ngx_str_t                      value, body;
    ngx_md5_t                      md5;
    ngx_http_presence_loc_conf_t   *plcf;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = ngx_http_presence_listing(r->pool, pmcf->rds, reply, ctx->limit,
                                   &ctx->room, &plcf->ttl_json, &body, &id);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    /*
     * A strong ETag is a hash of the very body: it changes when someone
     * comes or goes, not when a listed user only heartbeats again.
     */

    ngx_md5_init(&md5);
    ngx_md5_update(&md5, body.data, body.len);
    ngx_md5_final(digest, &md5);

    etag = ngx_pnalloc(r->pool, NGX_HTTP_PRESENCE_ETAG_LEN * 2 + 2);
    if (etag == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    value.data = etag;
    *etag++ = '"';
    etag = ngx_hex_dump(etag, digest, NGX_HTTP_PRESENCE_ETAG_LEN);
    *etag++ = '"';
    value.len = etag - value.data;

    /* the shape was checked: the head is {count, id} */

    ngx_http_presence_memo_store(ctx, &body, &value,
                           (uint64_t) reply->element[0]->element[0]->integer,
                           id);

    return ngx_http_presence_send_listing(r, &body, &value);
}


/*
 * The reply to the head alone, [[count, id]], of a listing the memo may
 * answer: the memo's body when the room's head is still the memo's,
 * NGX_DECLINED when the full listing must be asked, or an error.
 */

ngx_int_t
ngx_http_presence_respond_head(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, redisReply *reply)
{
    redisReply                      *head;
    ngx_http_presence_main_conf_t   *pmcf;
    ngx_http_presence_cache_node_t  *node;

    if (reply == NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    if (!ngx_http_presence_head_ok(reply, 1)) {
        pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
        ngx_presence_redis_unexpected(pmcf->rds, reply);

        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_UNAVAILABLE);
    }

    head = reply->element[0];

    node = ngx_http_presence_memo_check(ctx,
                                        (uint64_t) head->element[0]->integer,
                                        (uint64_t) head->element[1]->integer);
    if (node == NULL) {
        return NGX_DECLINED;
    }

    return ngx_http_presence_cache_answer(r, node);
}


/*
 * The JSON of a listing from the reply of its transaction, in the pool:
 * {"room":..,"ttl":..,"count":..,"users":[..]}, the users sorted, and the
 * id of the room's last event, which the listing holds.  NGX_OK,
 * NGX_ERROR, or NGX_DECLINED for a reply the scripts never give (logged).
 */

ngx_int_t
ngx_http_presence_listing(ngx_pool_t *pool, ngx_presence_redis_t *rds,
    redisReply *reply, ngx_uint_t limit, ngx_str_t *room, ngx_str_t *ttl,
    ngx_str_t *body, uint64_t *id)
{
    size_t                       len, i, n, nusers;
    ngx_buf_t                   *b;
    redisReply                  *el, *head;
    ngx_http_presence_member_t  *users, *u;

    /* EXEC of {count, id} and, unless the limit is 0, the members */

    if (!ngx_http_presence_head_ok(reply, limit ? 2 : 1)
        || (limit && reply->element[1]->type != REDIS_REPLY_ARRAY))
    {
        ngx_presence_redis_unexpected(rds, reply);
        return NGX_DECLINED;
    }

    head = reply->element[0];
    *id = (uint64_t) head->element[1]->integer;

    nusers = limit ? reply->element[1]->elements : 0;

    users = ngx_palloc(pool,
                       (nusers + 1) * sizeof(ngx_http_presence_member_t));
    if (users == NULL) {
        return NGX_ERROR;
    }

    len = sizeof("{\"room\":,\"ttl\":,\"count\":,\"users\":[]}") - 1
          + ngx_http_presence_json_len(room) + ttl->len + NGX_INT64_LEN;

    for (i = 0; i < nusers; i++) {
        el = reply->element[1]->element[i];

        if (el->type != REDIS_REPLY_STRING) {
            ngx_presence_redis_unexpected(rds, el);
            return NGX_DECLINED;
        }

        u = &users[i];

        u->name.data = (u_char *) el->str;
        u->name.len = el->len;
        u->escape = ngx_escape_json(NULL, u->name.data, u->name.len);

        /* the first 8 bytes, big-endian, settle most comparisons */

        u->prefix = 0;

        for (n = 0; n < 8; n++) {
            u->prefix = (u->prefix << 8)
                        | (n < u->name.len ? u->name.data[n] : 0);
        }

        len += u->name.len + u->escape + 3;
    }

    /* Redis gave the most recently seen first; people read names sorted */

    if (ngx_http_presence_sort(pool, users, nusers) != NGX_OK) {
        return NGX_ERROR;
    }

    b = ngx_create_temp_buf(pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"room\":", 8);
    b->last = ngx_http_presence_json_str(b->last, room);
    b->last = ngx_sprintf(b->last, ",\"ttl\":%V,\"count\":%L,\"users\":[",
                          ttl, (int64_t) head->element[0]->integer);

    for (i = 0; i < nusers; i++) {
        u = &users[i];

        if (i) {
            *b->last++ = ',';
        }

        *b->last++ = '"';

        if (u->escape) {
            b->last = (u_char *) ngx_escape_json(b->last, u->name.data,
                                                 u->name.len);
        } else {
            b->last = ngx_cpymem(b->last, u->name.data, u->name.len);
        }

        *b->last++ = '"';
    }

    b->last = ngx_cpymem(b->last, "]}", 2);

    body->data = b->pos;
    body->len = b->last - b->pos;

    return NGX_OK;
}


/*
 * Sorting a thousand names was the largest part of a listing's CPU with
 * qsort(), glibc's merge sort copying whole members through a comparison
 * callback.  A radix sort of the 8-byte prefixes puts them in order in a
 * few linear passes (one per byte that differs at all: "u1".."u1000"
 * takes four); only names that share all 8 bytes are then compared whole.
 */

static ngx_int_t
ngx_http_presence_sort(ngx_pool_t *pool, ngx_http_presence_member_t *users,
    ngx_uint_t n)
{
    ngx_uint_t                   i, j, k, byte, sum, shift;
    ngx_uint_t                   count[8][256];
    ngx_http_presence_member_t  *from, *to, *t;

    if (n < 2) {
        return NGX_OK;
    }

    ngx_memzero(count, sizeof(count));

    for (i = 0; i < n; i++) {
        for (byte = 0; byte < 8; byte++) {
            count[byte][(users[i].prefix >> (byte * 8)) & 0xff]++;
        }
    }

    from = users;
    to = NULL;

    /* least significant byte first: each pass is stable */

    for (byte = 0; byte < 8; byte++) {
        shift = byte * 8;

        if (count[byte][(users[0].prefix >> shift) & 0xff] == n) {
            continue;
        }

        if (to == NULL) {
            to = ngx_palloc(pool, n * sizeof(ngx_http_presence_member_t));
            if (to == NULL) {
                return NGX_ERROR;
            }
        }

        sum = 0;

        for (k = 0; k < 256; k++) {
            j = count[byte][k];
            count[byte][k] = sum;
            sum += j;
        }

        for (i = 0; i < n; i++) {
            to[count[byte][(from[i].prefix >> shift) & 0xff]++] = from[i];
        }

        t = from;
        from = to;
        to = t;
    }

    if (from != users) {
        ngx_memcpy(users, from, n * sizeof(ngx_http_presence_member_t));
    }

    for (i = 0; i < n; i = j) {
        for (j = i + 1; j < n && users[j].prefix == users[i].prefix; j++) {
            /* void */
        }

        if (j - i > 1) {
            ngx_qsort(&users[i], j - i, sizeof(ngx_http_presence_member_t),
                      ngx_http_presence_cmp_member);
        }
    }

    return NGX_OK;
}


/* the EXEC of a listing: n replies, the first the script's {count, id} */

static ngx_int_t
ngx_http_presence_head_ok(redisReply *reply, size_t n)
{
    return reply->type == REDIS_REPLY_ARRAY
           && reply->elements == n
           && reply->element[0]->type == REDIS_REPLY_ARRAY
           && reply->element[0]->elements == 2
           && reply->element[0]->element[0]->type == REDIS_REPLY_INTEGER
           && reply->element[0]->element[1]->type == REDIS_REPLY_INTEGER;
}


/* bytewise, as memcmp() orders: by the prefix first, then all of it */

static int ngx_libc_cdecl
ngx_http_presence_cmp_member(const void *one, const void *two)
{
    ngx_int_t                          rc;
    const ngx_http_presence_member_t  *a = one;
    const ngx_http_presence_member_t  *b = two;

    if (a->prefix != b->prefix) {
        return (a->prefix < b->prefix) ? -1 : 1;
    }

    rc = ngx_memcmp(a->name.data, b->name.data,
                    ngx_min(a->name.len, b->name.len));

    if (rc != 0) {
        return (int) rc;
    }

    return (a->name.len > b->name.len) - (a->name.len < b->name.len);
}


/*
 * A listing with its strong ETag; nginx's not-modified filter answers 304
 * to a matching If-None-Match.  body and etag must live as long as the
 * request.
 */

ngx_int_t
ngx_http_presence_send_listing(ngx_http_request_t *r, ngx_str_t *body,
    ngx_str_t *etag)
{
    ngx_buf_t        *b;
    ngx_table_elt_t  *h;

    static ngx_str_t  etag_name = ngx_string("ETag");

    if (ngx_http_presence_add_header(r, &etag_name, etag, &h) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.etag = h;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);
}


/* every answer of the module, counted here */

ngx_int_t
ngx_http_presence_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t     rc;
    ngx_chain_t   out;

    static ngx_str_t  cache_control = ngx_string("Cache-Control");
    static ngx_str_t  no_store = ngx_string("no-store");

    ngx_http_presence_count(r, status);

    r->headers_out.status = status;

    if (ngx_http_presence_add_header(r, &cache_control, &no_store, NULL)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->headers_out.content_type.len == 0) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        ngx_str_set(&r->headers_out.charset, "utf-8");
    }
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_presence_error(ngx_http_request_t *r, ngx_int_t err)
{
    ngx_buf_t                     *b;
    ngx_str_t                      retry, *allow;
    ngx_http_presence_err_t       *e;
    ngx_http_presence_loc_conf_t  *plcf;

    static ngx_str_t  allow_name = ngx_string("Allow");
    static ngx_str_t  retry_after = ngx_string("Retry-After");

    e = &ngx_http_presence_errors[err - 1];

    if (err == NGX_HTTP_PRESENCE_ERR_METHOD) {
        plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

        allow = (plcf->handler == NGX_HTTP_PRESENCE_ONLINE
                 || plcf->handler == NGX_HTTP_PRESENCE_STATUS
                 || plcf->handler == NGX_HTTP_PRESENCE_STREAM)
                ? &ngx_http_presence_allow_get : &ngx_http_presence_allow_post;

        if (ngx_http_presence_add_header(r, &allow_name, allow, NULL)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (err == NGX_HTTP_PRESENCE_ERR_UNAVAILABLE) {
        ngx_str_set(&retry, "1");

        if (ngx_http_presence_add_header(r, &retry_after, &retry, NULL)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    b = ngx_create_temp_buf(r->pool, sizeof("{\"error\":\"\",\"message\":\"\"}")
                                     - 1 + e->code.len + e->message.len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"error\":\"%V\",\"message\":\"%V\"}",
                          &e->code, &e->message);

    return ngx_http_presence_send(r, e->status, b);
}


ngx_int_t
ngx_http_presence_add_header(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value, ngx_table_elt_t **hp)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *key;
    h->value = *value;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    if (hp) {
        *hp = h;
    }

    return NGX_OK;
}


static size_t
ngx_http_presence_json_len(ngx_str_t *s)
{
    return s->len + 2 + ngx_escape_json(NULL, s->data, s->len);
}


static u_char *
ngx_http_presence_json_str(u_char *p, ngx_str_t *s)
{
    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, s->data, s->len);
    *p++ = '"';

    return p;
}
