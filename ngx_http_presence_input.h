
/*
 * ngx_http_presence_module: reading untrusted input.
 *
 * Pure functions (no request, no pool, no I/O, no nginx function calls)
 * so that the libFuzzer targets in fuzz/ drive the very code the module
 * runs.  The body parser is jansson's: it allocates with malloc() and is
 * done with it before returning, and reads /dev/urandom once per process
 * for its hash seed (falling back to the time and pid without it).
 */


#ifndef _NGX_HTTP_PRESENCE_INPUT_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_INPUT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * The errors the module answers with.  Above zero: never confused with
 * NGX_OK and NGX_ERROR, which the same helpers return.
 */

typedef enum {
    NGX_HTTP_PRESENCE_ERR_USER = 1,
    NGX_HTTP_PRESENCE_ERR_ROOM,
    NGX_HTTP_PRESENCE_ERR_JSON,
    NGX_HTTP_PRESENCE_ERR_LIMIT,
    NGX_HTTP_PRESENCE_ERR_IDENTITY,
    NGX_HTTP_PRESENCE_ERR_METHOD,
    NGX_HTTP_PRESENCE_ERR_TOO_LARGE,
    NGX_HTTP_PRESENCE_ERR_MEDIA_TYPE,
    NGX_HTTP_PRESENCE_ERR_UNAVAILABLE,
    NGX_HTTP_PRESENCE_ERR_TIMEOUT,
    NGX_HTTP_PRESENCE_ERR_SESSION,
    NGX_HTTP_PRESENCE_ERR_STREAMS
} ngx_http_presence_err_e;


/* the longest session_id, bytes */
#define NGX_HTTP_PRESENCE_SESSION_MAX   64


/* what ngx_http_presence_utf8_decode() returns for a broken character */
#define NGX_HTTP_PRESENCE_UTF8_INVALID  0xffffffff


/*
 * What the Accept header lines make of the two formats of presence_status:
 * for each, the weight (in thousandths) of the most specific media range
 * that names it, and how specific that range is: 0 none yet, 1 any type,
 * 2 the type with any subtype, 3 the type and the subtype.  Zeroed before
 * the first line.
 */

#define NGX_HTTP_PRESENCE_FORMAT_JSON  0
#define NGX_HTTP_PRESENCE_FORMAT_TEXT  1

typedef struct {
    ngx_uint_t                  q[2];
    ngx_uint_t                  specific[2];
} ngx_http_presence_accept_t;


/*
 * A change of a room as the scripts publish it on the room's channel, one
 * line each: "<id> <J|L|T> <count> <user>\n" (join, leave, timeout).
 */

#define NGX_HTTP_PRESENCE_JOIN     'J'
#define NGX_HTTP_PRESENCE_LEFT     'L'
#define NGX_HTTP_PRESENCE_TIMEOUT  'T'

/* the longest user id a change may carry (presence_max_id_length's bound) */
#define NGX_HTTP_PRESENCE_CHANGE_ID_MAX  1024

typedef struct {
    uint64_t                    id;
    uint64_t                    count;
    ngx_uint_t                  kind;
    ngx_str_t                   user;
} ngx_http_presence_change_t;


ngx_int_t ngx_http_presence_valid_id(u_char *p, size_t len, size_t max);
u_char *ngx_http_presence_parse_change(u_char *p, u_char *end,
    ngx_http_presence_change_t *change);
uint32_t ngx_http_presence_utf8_decode(u_char **p, u_char *end);
ngx_int_t ngx_http_presence_parse_json(u_char *p, size_t len,
    ngx_str_t *user, ngx_str_t *session);
ngx_int_t ngx_http_presence_media_type_ok(ngx_str_t *value);
ngx_int_t ngx_http_presence_parse_limit(ngx_str_t *value, ngx_uint_t max);
void ngx_http_presence_accept(ngx_http_presence_accept_t *accept,
    ngx_str_t *value);
ngx_int_t ngx_http_presence_accept_text(ngx_http_presence_accept_t *accept);


#endif /* _NGX_HTTP_PRESENCE_INPUT_H_INCLUDED_ */
