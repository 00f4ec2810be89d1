
/*
 * ngx_http_presence_module, the Redis side: the reply arena.
 *
 * Replies are built in an arena of their own instead of hiredis's two
 * allocations per element: a listing of a thousand members was two
 * thousand malloc() and free() calls, a fifth of the worker's time.
 * The root redisReply comes first, so that freeing it finds the rest.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_presence_redis.h"


typedef struct ngx_presence_block_s  ngx_presence_block_t;

struct ngx_presence_block_s {
    ngx_presence_block_t          *next;
    u_char                        *pos;
    u_char                        *end;
};


typedef struct {
    redisReply                     reply;
    ngx_presence_block_t          *blocks;
} ngx_presence_reply_t;


/* the first block comes with the root: enough for most replies */
#define NGX_PRESENCE_REPLY_INLINE  256
#define NGX_PRESENCE_BLOCK_SIZE    (64 * 1024)


static redisReply *ngx_presence_reply_object(const redisReadTask *task,
    size_t extra, u_char **p);
static void *ngx_presence_reply_string(const redisReadTask *task, char *str,
    size_t len);
static void *ngx_presence_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_presence_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_presence_reply_nil(const redisReadTask *task);
static void ngx_presence_reply_free(void *obj);


redisReplyObjectFunctions  ngx_presence_reply_functions = {
    ngx_presence_reply_string,
    ngx_presence_reply_array,
    ngx_presence_reply_integer,
    ngx_presence_reply_nil,
    ngx_presence_reply_free
};


/*
 * The reply objects.  A root (task->parent is NULL) starts an arena; the
 * objects below it are carved from the arena of their root, found by
 * walking up the tasks.  hiredis frees only roots.
 */

static redisReply *
ngx_presence_reply_object(const redisReadTask *task, size_t extra, u_char **p)
{
    size_t                   size;
    redisReply              *r, *parent;
    ngx_presence_block_t    *b;
    ngx_presence_reply_t    *root;
    const redisReadTask     *t;

    extra = ngx_align(extra, sizeof(void *));

    if (task->parent == NULL) {
        size = ngx_max(extra, NGX_PRESENCE_REPLY_INLINE);

        root = ngx_alloc(sizeof(ngx_presence_reply_t)
                         + sizeof(ngx_presence_block_t) + size,
                         ngx_cycle->log);
        if (root == NULL) {
            return NULL;
        }

        b = (ngx_presence_block_t *) (root + 1);
        b->next = NULL;
        b->pos = (u_char *) (b + 1);
        b->end = b->pos + size;

        root->blocks = b;
        r = &root->reply;

    } else {
        for (t = task; t->parent; t = t->parent) { /* void */ }

        root = t->obj;
        b = root->blocks;
        size = sizeof(redisReply) + extra;

        if ((size_t) (b->end - b->pos) < size) {
            size = ngx_max(size, NGX_PRESENCE_BLOCK_SIZE);

            b = ngx_alloc(sizeof(ngx_presence_block_t) + size,
                          ngx_cycle->log);
            if (b == NULL) {
                return NULL;
            }

            b->next = root->blocks;
            b->pos = (u_char *) (b + 1);
            b->end = b->pos + size;

            root->blocks = b;
        }

        r = (redisReply *) b->pos;
        b->pos += sizeof(redisReply);

        parent = task->parent->obj;
        parent->element[task->idx] = r;
    }

    ngx_memzero(r, sizeof(redisReply));
    r->type = task->type;

    *p = b->pos;
    b->pos += extra;

    return r;
}


static void *
ngx_presence_reply_string(const redisReadTask *task, char *str, size_t len)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, len + 1, &p);
    if (r == NULL) {
        return NULL;
    }

    r->str = (char *) p;
    r->len = len;

    ngx_memcpy(p, str, len);
    p[len] = '\0';

    return r;
}


static void *
ngx_presence_reply_array(const redisReadTask *task, int elements)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, elements * sizeof(redisReply *), &p);
    if (r == NULL) {
        return NULL;
    }

    r->elements = elements;

    if (elements > 0) {
        r->element = (redisReply **) p;
        ngx_memzero(p, elements * sizeof(redisReply *));
    }

    return r;
}


static void *
ngx_presence_reply_integer(const redisReadTask *task, long long value)
{
    u_char      *p;
    redisReply  *r;

    r = ngx_presence_reply_object(task, 0, &p);
    if (r == NULL) {
        return NULL;
    }

    r->integer = value;

    return r;
}


static void *
ngx_presence_reply_nil(const redisReadTask *task)
{
    u_char  *p;

    return ngx_presence_reply_object(task, 0, &p);
}


static void
ngx_presence_reply_free(void *obj)
{
    ngx_presence_reply_t  *root = obj;

    ngx_presence_block_t  *b, *next;

    /* the last block of the list came with the root */

    for (b = root->blocks; b->next; b = next) {
        next = b->next;
        ngx_free(b);
    }

    ngx_free(root);
}
