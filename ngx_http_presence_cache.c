
/*
 * ngx_http_presence_module: the listings a worker keeps, for
 * presence_online_cache and as the memo of listings.
 *
 * A listing is found by its location (the body shows the location's ttl),
 * the limit and the Redis key.  With presence_online_cache, it answers
 * while it is younger than the setting; older, the next request refreshes
 * it and the requests meanwhile still get it, but never once it is older
 * than the setting and presence_redis_timeout together: a refresh takes
 * no longer than that.
 *
 * Every full listing is also kept as the memo, with the room's count and
 * last event id that its transaction returned: every change of who is in
 * a room advances that id, so a later listing whose head (count, id) is
 * the same has the same body, as long as the memo held every member
 * (count <= limit).  Such a listing asks Redis for the head only.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


/* listings a worker keeps, and the most bytes of bodies they may take */
#define NGX_HTTP_PRESENCE_CACHE_MAX    1024
#define NGX_HTTP_PRESENCE_CACHE_BYTES  (16 * 1024 * 1024)


struct ngx_http_presence_cache_node_s {
    ngx_str_node_t              sn;
    ngx_queue_t                 queue;
    /* when the query that made the copy was sent */
    ngx_msec_t                  fetched;
    ngx_str_t                   body;
    ngx_str_t                   etag;
    /* the head of the listing that made the body: its count and id */
    uint64_t                    count;
    uint64_t                    id;
    unsigned                    updating:1;
};


static void ngx_http_presence_cache_evict(void);
static void ngx_http_presence_cache_delete(
    ngx_http_presence_cache_node_t *node);
static ngx_http_presence_cache_node_t *ngx_http_presence_cache_find(
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_cache_refreshed(ngx_http_presence_ctx_t *ctx,
    ngx_http_presence_cache_node_t *node);
static void ngx_http_presence_cache_set(ngx_http_presence_cache_node_t *node,
    ngx_str_t *body, ngx_str_t *etag, uint64_t count, uint64_t id);


/* the listings of this worker, least recently used first in the queue */
static ngx_rbtree_t       ngx_http_presence_cache;
static ngx_rbtree_node_t  ngx_http_presence_cache_sentinel;
static ngx_queue_t        ngx_http_presence_cache_queue;
static ngx_uint_t         ngx_http_presence_cache_count;
static size_t             ngx_http_presence_cache_bytes;


/*
 * Returns the node to answer from: a copy of presence_online_cache
 * younger than the setting, or an older one while another request
 * refreshes it, which takes at most presence_redis_timeout.  NULL: ask
 * Redis; ctx->cache is then the node this request refreshes (only with
 * presence_online_cache), and ctx->head is set when the memo may answer
 * once Redis says the room's head is still the memo's.  A copy is never
 * used without a refresh on its way once it is too old, and never at all
 * once it is older than the setting and the timeout together, whatever
 * Redis does.
 */

ngx_http_presence_cache_node_t *
ngx_http_presence_cache_lookup(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char                          *p;
    size_t                           len;
    ngx_str_t                       *key;
    ngx_msec_t                       age;
    ngx_http_presence_loc_conf_t    *plcf;
    ngx_http_presence_main_conf_t   *pmcf;
    ngx_http_presence_cache_node_t  *node;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    /* the location makes part of the key: the body shows its ttl */

    key = &ctx->cache_key;

    key->len = sizeof(void *) + sizeof(ngx_uint_t) + ctx->key.len;
    key->data = ngx_pnalloc(r->pool, key->len);
    if (key->data == NULL) {
        key->len = 0;
        return NULL;
    }

    p = ngx_cpymem(key->data, &plcf, sizeof(void *));
    p = ngx_cpymem(p, &ctx->limit, sizeof(ngx_uint_t));
    ngx_memcpy(p, ctx->key.data, ctx->key.len);

    ctx->cache_hash = ngx_crc32_long(key->data, key->len);

    node = ngx_http_presence_cache_find(ctx);

    if (node) {
        ngx_queue_remove(&node->queue);
        ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);

        age = ngx_current_msec - node->fetched;

        if (plcf->online_cache
            && node->body.data
            && (age < plcf->online_cache
                || (node->updating
                    && age < plcf->online_cache + pmcf->redis.timeout)))
        {
            return node;
        }

        /* a full listing's body depends on who is in the room only */

        if (ctx->limit && node->body.data && node->count <= ctx->limit) {
            ctx->head = 1;
        }

        if (plcf->online_cache && !node->updating) {
            node->updating = 1;
            ctx->cache = node;
            ctx->cache_start = ngx_current_msec;
        }

        return NULL;
    }

    ngx_http_presence_cache_evict();

    if (ngx_http_presence_cache_count >= NGX_HTTP_PRESENCE_CACHE_MAX) {
        return NULL;
    }

    len = sizeof(ngx_http_presence_cache_node_t) + key->len;

    node = ngx_calloc(len, r->connection->log);
    if (node == NULL) {
        return NULL;
    }

    node->sn.node.key = ctx->cache_hash;
    node->sn.str.data = (u_char *) node
                        + sizeof(ngx_http_presence_cache_node_t);
    node->sn.str.len = key->len;
    ngx_memcpy(node->sn.str.data, key->data, key->len);

    ngx_rbtree_insert(&ngx_http_presence_cache, &node->sn.node);
    ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);
    ngx_http_presence_cache_count++;

    if (plcf->online_cache) {
        node->updating = 1;
        ctx->cache = node;
        ctx->cache_start = ngx_current_msec;
    }

    return NULL;
}


/*
 * The node of the request's listing, looked up again after a wait: the
 * one it saw may have been evicted meanwhile (the one it refreshes never
 * is).
 */

static ngx_http_presence_cache_node_t *
ngx_http_presence_cache_find(ngx_http_presence_ctx_t *ctx)
{
    if (ctx->cache) {
        return ctx->cache;
    }

    if (ctx->cache_key.len == 0) {
        return NULL;
    }

    return (ngx_http_presence_cache_node_t *)
               ngx_str_rbtree_lookup(&ngx_http_presence_cache,
                                     &ctx->cache_key, ctx->cache_hash);
}


/*
 * The node may change before a slow client has it all: the request gets
 * a copy of the body and the etag, in one allocation.
 */

ngx_int_t
ngx_http_presence_cache_answer(ngx_http_request_t *r,
    ngx_http_presence_cache_node_t *node)
{
    ngx_str_t  body, etag;

    body.len = node->body.len + node->etag.len;
    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(body.data, node->body.data, body.len);

    etag.data = body.data + node->body.len;
    etag.len = node->etag.len;
    body.len = node->body.len;

    return ngx_http_presence_send_listing(r, &body, &etag);
}


/*
 * A full listing has come: it refreshes ctx->cache, or else becomes the
 * memo of its node, if the node is still there.  A listing that did not
 * hold every member can never answer as the memo, and is kept only as the
 * copy of presence_online_cache.  The body, count and id change together:
 * whichever request stored last, the three always agree.
 */

void
ngx_http_presence_memo_store(ngx_http_presence_ctx_t *ctx, ngx_str_t *body,
    ngx_str_t *etag, uint64_t count, uint64_t id)
{
    ngx_http_presence_cache_node_t  *node;

    node = ngx_http_presence_cache_find(ctx);
    if (node == NULL) {
        return;
    }

    if (ctx->cache) {
        ngx_http_presence_cache_refreshed(ctx, node);

        /* (which may evict the node: touch it no more) */
        ngx_http_presence_cache_set(node, body, etag, count, id);
        return;
    }

    /*
     * Not the refresh of presence_online_cache: the copy's age stays
     * what it was, and a body that is newer than its age says is only
     * on the safe side.
     */

    if (count <= ctx->limit) {
        ngx_http_presence_cache_set(node, body, etag, count, id);
    }
}


static void
ngx_http_presence_cache_set(ngx_http_presence_cache_node_t *node,
    ngx_str_t *body, ngx_str_t *etag, uint64_t count, uint64_t id)
{
    u_char  *p;

    p = ngx_alloc(body->len + etag->len, ngx_cycle->log);
    if (p == NULL) {
        return;
    }

    if (node->body.data) {
        ngx_http_presence_cache_bytes -= node->body.len + node->etag.len;
        ngx_free(node->body.data);
    }

    ngx_http_presence_cache_bytes += body->len + etag->len;

    node->body.data = p;
    node->body.len = body->len;
    p = ngx_cpymem(p, body->data, body->len);

    node->etag.data = p;
    node->etag.len = etag->len;
    ngx_memcpy(p, etag->data, etag->len);

    node->count = count;
    node->id = id;

    /* large rooms' bodies: the least recently used go first */

    ngx_http_presence_cache_evict();
}


/*
 * The head of the room has come, (count, id): the node whose memo is the
 * listing of that very head, or NULL.  A refresh of presence_online_cache
 * that the memo answers is done: the copy is as new as the head's query.
 */

ngx_http_presence_cache_node_t *
ngx_http_presence_memo_check(ngx_http_presence_ctx_t *ctx, uint64_t count,
    uint64_t id)
{
    ngx_http_presence_cache_node_t  *node;

    node = ngx_http_presence_cache_find(ctx);

    if (node == NULL
        || node->body.data == NULL
        || node->count != count
        || node->id != id
        || count > ctx->limit)
    {
        return NULL;
    }

    if (ctx->cache) {
        ngx_http_presence_cache_refreshed(ctx, node);
    }

    return node;
}


/* the copy is as old as the query that refreshed it: Redis answered since */

static void
ngx_http_presence_cache_refreshed(ngx_http_presence_ctx_t *ctx,
    ngx_http_presence_cache_node_t *node)
{
    ctx->cache = NULL;
    node->updating = 0;
    node->fetched = ctx->cache_start;
}


/* a refresh that failed: the next request tries again */

void
ngx_http_presence_cache_abandon(ngx_http_presence_ctx_t *ctx)
{
    ctx->cache->updating = 0;
    ctx->cache = NULL;
}


/*
 * Frees the least recently used listings while the worker keeps as many
 * as it may, or their bodies take more than 16 MiB (a thousand rooms of a
 * thousand users would take ten times that); never one that a request is
 * refreshing.
 */

static void
ngx_http_presence_cache_evict(void)
{
    ngx_queue_t                     *q;
    ngx_http_presence_cache_node_t  *node;

    while (ngx_http_presence_cache_count >= NGX_HTTP_PRESENCE_CACHE_MAX
           || ngx_http_presence_cache_bytes > NGX_HTTP_PRESENCE_CACHE_BYTES)
    {
        q = ngx_queue_head(&ngx_http_presence_cache_queue);
        node = ngx_queue_data(q, ngx_http_presence_cache_node_t, queue);

        if (node->updating) {
            return;
        }

        ngx_http_presence_cache_delete(node);
    }
}


static void
ngx_http_presence_cache_delete(ngx_http_presence_cache_node_t *node)
{
    ngx_queue_remove(&node->queue);
    ngx_rbtree_delete(&ngx_http_presence_cache, &node->sn.node);
    ngx_http_presence_cache_count--;

    if (node->body.data) {
        ngx_http_presence_cache_bytes -= node->body.len + node->etag.len;
        ngx_free(node->body.data);
    }

    ngx_free(node);
}


void
ngx_http_presence_cache_init(void)
{
    ngx_rbtree_init(&ngx_http_presence_cache,
                    &ngx_http_presence_cache_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_http_presence_cache_queue);
}


/*
 * At exit: the module is unloaded next, and what only its static variables
 * point to would be a leak to valgrind.
 */

void
ngx_http_presence_cache_free(void)
{
    ngx_queue_t                     *q;
    ngx_http_presence_cache_node_t  *node;

    while (!ngx_queue_empty(&ngx_http_presence_cache_queue)) {
        q = ngx_queue_head(&ngx_http_presence_cache_queue);
        node = ngx_queue_data(q, ngx_http_presence_cache_node_t, queue);

        ngx_http_presence_cache_delete(node);
    }
}
