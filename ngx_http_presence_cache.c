
/*
 * ngx_http_presence_module: presence_online_cache, the listings a worker
 * keeps to answer from.
 *
 * A copy is found by its location (the body shows the location's ttl),
 * the limit and the Redis key.  It answers while it is younger than the
 * setting; older, the next request refreshes it and the requests
 * meanwhile still get it, but never once it is older than the setting and
 * presence_redis_timeout together: a refresh takes no longer than that.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


/* listings a worker keeps for presence_online_cache */
#define NGX_HTTP_PRESENCE_CACHE_MAX  1024


struct ngx_http_presence_cache_node_s {
    ngx_str_node_t              sn;
    ngx_queue_t                 queue;
    /* when the query that made the copy was sent */
    ngx_msec_t                  fetched;
    ngx_str_t                   body;
    ngx_str_t                   etag;
    unsigned                    updating:1;
};


static void ngx_http_presence_cache_evict(ngx_msec_t age);
static void ngx_http_presence_cache_delete(
    ngx_http_presence_cache_node_t *node);


/* the cached listings of this worker, oldest first in the queue */
static ngx_rbtree_t       ngx_http_presence_cache;
static ngx_rbtree_node_t  ngx_http_presence_cache_sentinel;
static ngx_queue_t        ngx_http_presence_cache_queue;
static ngx_uint_t         ngx_http_presence_cache_count;


/*
 * Returns the node to answer from: a copy younger than the setting, or an
 * older one while another request refreshes it, which takes at most
 * presence_redis_timeout.  NULL: ask Redis; ctx->cache is then the node
 * this request refreshes.  A copy is never used without a refresh on its
 * way once it is too old, and never at all once it is older than the
 * setting and the timeout together, whatever Redis does.
 */

ngx_http_presence_cache_node_t *
ngx_http_presence_cache_lookup(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char                          *p;
    size_t                           len;
    uint32_t                         hash;
    ngx_str_t                        key;
    ngx_msec_t                       age;
    ngx_http_presence_loc_conf_t    *plcf;
    ngx_http_presence_main_conf_t   *pmcf;
    ngx_http_presence_cache_node_t  *node;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    /* the location makes part of the key: the body shows its ttl */

    key.len = sizeof(void *) + sizeof(ngx_uint_t) + ctx->key.len;
    key.data = ngx_pnalloc(r->pool, key.len);
    if (key.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(key.data, &plcf, sizeof(void *));
    p = ngx_cpymem(p, &ctx->limit, sizeof(ngx_uint_t));
    ngx_memcpy(p, ctx->key.data, ctx->key.len);

    hash = ngx_crc32_long(key.data, key.len);

    node = (ngx_http_presence_cache_node_t *)
               ngx_str_rbtree_lookup(&ngx_http_presence_cache, &key, hash);

    if (node) {
        age = ngx_current_msec - node->fetched;

        if (node->body.data
            && (age < plcf->online_cache
                || (node->updating
                    && age < plcf->online_cache + pmcf->redis.timeout)))
        {
            return node;
        }

        if (!node->updating) {
            node->updating = 1;
            ctx->cache = node;
            ctx->cache_start = ngx_current_msec;
        }

        return NULL;
    }

    ngx_http_presence_cache_evict(plcf->online_cache);

    if (ngx_http_presence_cache_count >= NGX_HTTP_PRESENCE_CACHE_MAX) {
        return NULL;
    }

    len = sizeof(ngx_http_presence_cache_node_t) + key.len;

    node = ngx_calloc(len, r->connection->log);
    if (node == NULL) {
        return NULL;
    }

    node->sn.node.key = hash;
    node->sn.str.data = (u_char *) node
                        + sizeof(ngx_http_presence_cache_node_t);
    node->sn.str.len = key.len;
    ngx_memcpy(node->sn.str.data, key.data, key.len);

    ngx_rbtree_insert(&ngx_http_presence_cache, &node->sn.node);
    ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);
    ngx_http_presence_cache_count++;

    node->updating = 1;
    ctx->cache = node;
    ctx->cache_start = ngx_current_msec;

    return NULL;
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


/* the refresh of ctx->cache has come */

void
ngx_http_presence_cache_store(ngx_http_presence_ctx_t *ctx, ngx_str_t *body,
    ngx_str_t *etag)
{
    u_char                          *p;
    ngx_http_presence_cache_node_t  *node;

    node = ctx->cache;
    ctx->cache = NULL;

    node->updating = 0;

    p = ngx_alloc(body->len + etag->len, ngx_cycle->log);
    if (p == NULL) {
        return;
    }

    if (node->body.data) {
        ngx_free(node->body.data);
    }

    node->body.data = p;
    node->body.len = body->len;
    p = ngx_cpymem(p, body->data, body->len);

    node->etag.data = p;
    node->etag.len = etag->len;
    ngx_memcpy(p, etag->data, etag->len);

    /* the copy is as old as the query: Redis answered it since */
    node->fetched = ctx->cache_start;

    ngx_queue_remove(&node->queue);
    ngx_queue_insert_tail(&ngx_http_presence_cache_queue, &node->queue);
}


/* a refresh that failed: the next request tries again */

void
ngx_http_presence_cache_abandon(ngx_http_presence_ctx_t *ctx)
{
    ctx->cache->updating = 0;
    ctx->cache = NULL;
}


/*
 * Frees the oldest listings that are past their age, and the oldest one
 * anyway when the cache is full; never one that a request is refreshing.
 */

static void
ngx_http_presence_cache_evict(ngx_msec_t age)
{
    ngx_queue_t                     *q;
    ngx_http_presence_cache_node_t  *node;

    while (!ngx_queue_empty(&ngx_http_presence_cache_queue)) {

        q = ngx_queue_head(&ngx_http_presence_cache_queue);
        node = ngx_queue_data(q, ngx_http_presence_cache_node_t, queue);

        if (node->updating
            || (ngx_current_msec - node->fetched < age
                && ngx_http_presence_cache_count
                   < NGX_HTTP_PRESENCE_CACHE_MAX))
        {
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
