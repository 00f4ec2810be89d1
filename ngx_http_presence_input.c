
/*
 * ngx_http_presence_module: the functions that read untrusted input.
 *
 * They use nginx's types and macros but call no nginx function, so that
 * the fuzz targets (fuzz/) link them without the rest of nginx.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>

#include "ngx_http_presence_input.h"


static ngx_int_t ngx_http_presence_equal_nocase(u_char *p, size_t len,
    char *s);


/*
 * A user id or a room: 1..max bytes of UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF) without C0 or C1 control
 * characters or DEL.
 */

ngx_int_t
ngx_http_presence_valid_id(u_char *p, size_t len, size_t max)
{
    u_char    *end;
    size_t     n, i;
    uint32_t   u, min;

    if (len == 0 || len > max) {
        return 0;
    }

    end = p + len;

    while (p < end) {

        u = *p++;

        if (u < 0x80) {
            if (u < 0x20 || u == 0x7f) {
                return 0;
            }

            continue;
        }

        if (u >= 0xc2 && u <= 0xdf) {
            n = 1;
            u &= 0x1f;
            min = 0x80;

        } else if (u >= 0xe0 && u <= 0xef) {
            n = 2;
            u &= 0x0f;
            min = 0x800;

        } else if (u >= 0xf0 && u <= 0xf4) {
            n = 3;
            u &= 0x07;
            min = 0x10000;

        } else {
            /* a continuation byte first, 0xc0, 0xc1 or 0xf5 and above */
            return 0;
        }

        if ((size_t) (end - p) < n) {
            return 0;
        }

        for (i = 0; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            u = (u << 6) | (p[i] & 0x3f);
        }

        p += n;

        if (u < min
            || u > 0x10ffff
            || (u >= 0xd800 && u <= 0xdfff)
            || (u >= 0x80 && u <= 0x9f))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * A heartbeat or leave body: exactly one JSON object (RFC 8259, strictly:
 * UTF-8 throughout, no raw control characters in strings, no leading
 * zeros, nothing but whitespace after it) with a string "user_id".
 * jansson enforces all of that, and stops nesting at JSON_PARSER_MAX_DEPTH
 * (2048) rather than recursing as deep as a body goes.  user->data must
 * have room for len bytes, more than the decoded id can take.  Returns
 * NGX_OK with the id copied there, which may still be no valid id (an
 * escaped "\u0000" in it, say), NGX_ERROR when jansson ran out of memory,
 * or the error to answer with.
 */

ngx_int_t
ngx_http_presence_parse_json(u_char *p, size_t len, ngx_str_t *user)
{
    size_t         flags;
    json_t        *json, *item;
    ngx_int_t      rc;
    json_error_t   err;

    /*
     * JSON_REJECT_DUPLICATES: a body with two "user_id" keys names two
     * users, and which one counts would be the parser's choice, so it is
     * ambiguous, not JSON we act on.  JSON_ALLOW_NUL: "\u0000" is legal
     * JSON in any string, and json_string_length() then counts past it,
     * so an id with one is refused as an id, never cut short.
     * JSON_DECODE_INT_AS_REAL: numbers in other fields are none of our
     * business; only those beyond a double's range are refused (RFC 8259
     * section 9 lets a parser limit their range), not every integer past
     * 2^63.
     */

    flags = JSON_REJECT_DUPLICATES|JSON_ALLOW_NUL|JSON_DECODE_INT_AS_REAL;

    json = json_loadb((char *) p, len, flags, &err);

    if (json == NULL) {
        return json_error_code(&err) == json_error_out_of_memory
               ? NGX_ERROR : NGX_HTTP_PRESENCE_ERR_JSON;
    }

    if (!json_is_object(json)) {
        rc = NGX_HTTP_PRESENCE_ERR_JSON;
        goto done;
    }

    item = json_object_get(json, "user_id");

    if (!json_is_string(item)) {
        rc = NGX_HTTP_PRESENCE_ERR_USER;
        goto done;
    }

    user->len = json_string_length(item);

    if (user->len > len) {
        /* cannot be: a JSON string never decodes longer */
        rc = NGX_HTTP_PRESENCE_ERR_JSON;
        goto done;
    }

    ngx_memcpy(user->data, json_string_value(item), user->len);

    rc = NGX_OK;

done:

    json_decref(json);

    return rc;
}


/* application/json (with any parameters) or text/plain (sendBeacon) */

ngx_int_t
ngx_http_presence_media_type_ok(ngx_str_t *value)
{
    size_t   len;
    u_char  *p, *end;

    p = value->data;
    end = p + value->len;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    for (len = 0; p + len < end && p[len] != ';'; len++) { /* void */ }

    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
        len--;
    }

    return ngx_http_presence_equal_nocase(p, len, "application/json")
           || ngx_http_presence_equal_nocase(p, len, "text/plain");
}


static ngx_int_t
ngx_http_presence_equal_nocase(u_char *p, size_t len, char *s)
{
    size_t  i;

    if (len != ngx_strlen(s)) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (ngx_tolower(p[i]) != (u_char) s[i]) {
            return 0;
        }
    }

    return 1;
}


/*
 * ?limit=: digits only; the setting is a cap, not an error to exceed, and
 * so is a number too large for any integer
 */

ngx_int_t
ngx_http_presence_parse_limit(ngx_str_t *value, ngx_uint_t max)
{
    size_t      i;
    ngx_uint_t  n;

    if (value->len == 0) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < value->len; i++) {
        if (value->data[i] < '0' || value->data[i] > '9') {
            return NGX_ERROR;
        }

        if (n <= max) {
            n = n * 10 + (value->data[i] - '0');
        }
    }

    return ngx_min(n, max);
}


/*
 * If-None-Match: "*" or a list of entity tags; the comparison is weak
 * (RFC 9110, 13.1.2), so W/"x" matches "x".  etag includes its quotes.
 */

ngx_int_t
ngx_http_presence_etag_match(ngx_str_t *header, ngx_str_t *etag)
{
    u_char  *p, *end, *start;

    p = header->data;
    end = p + header->len;

    for ( ;; ) {

        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p == end) {
            return 0;
        }

        if (*p == '*') {
            return 1;
        }

        if (end - p >= 2 && p[0] == 'W' && p[1] == '/') {
            p += 2;
        }

        if (p == end || *p != '"') {
            return 0;
        }

        start = p++;

        while (p < end && *p != '"') {
            p++;
        }

        if (p == end) {
            return 0;
        }

        p++;

        if ((size_t) (p - start) == etag->len
            && ngx_memcmp(start, etag->data, etag->len) == 0)
        {
            return 1;
        }
    }
}
