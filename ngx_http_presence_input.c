
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


static void ngx_http_presence_json_copy(json_t *item, ngx_str_t *to);
static ngx_int_t ngx_http_presence_equal_nocase(u_char *p, size_t len,
    char *s);
static u_char *ngx_http_presence_accept_range(
    ngx_http_presence_accept_t *accept, u_char *p, u_char *end);
static void ngx_http_presence_accept_match(ngx_http_presence_accept_t *accept,
    ngx_str_t *type, ngx_str_t *subtype, ngx_uint_t q);
static ngx_int_t ngx_http_presence_qvalue(ngx_str_t *value);
static u_char *ngx_http_presence_token(u_char *p, u_char *end);
static u_char *ngx_http_presence_ows(u_char *p, u_char *end);
static u_char *ngx_http_presence_quoted(u_char *p, u_char *end);


/*
 * A user id or a room: 1..max bytes of UTF-8 without C0 or C1 control
 * characters or DEL.
 */

ngx_int_t
ngx_http_presence_valid_id(u_char *p, size_t len, size_t max)
{
    u_char    *end;
    uint32_t   u;

    if (len == 0 || len > max) {
        return 0;
    }

    end = p + len;

    while (p < end) {
        u = ngx_http_presence_utf8_decode(&p, end);

        if (u == NGX_HTTP_PRESENCE_UTF8_INVALID
            || u < 0x20
            || (u >= 0x7f && u <= 0x9f))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * One character of UTF-8 as RFC 3629 has it (no overlong forms, no
 * surrogates, nothing above U+10FFFF), and *p moved past it; or
 * NGX_HTTP_PRESENCE_UTF8_INVALID.  p < end.
 */

uint32_t
ngx_http_presence_utf8_decode(u_char **p, u_char *end)
{
    u_char    *s;
    size_t     n, i;
    uint32_t   u, min;

    s = *p;
    u = *s++;

    if (u < 0x80) {
        *p = s;
        return u;
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
        return NGX_HTTP_PRESENCE_UTF8_INVALID;
    }

    if ((size_t) (end - s) < n) {
        return NGX_HTTP_PRESENCE_UTF8_INVALID;
    }

    for (i = 0; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return NGX_HTTP_PRESENCE_UTF8_INVALID;
        }

        u = (u << 6) | (s[i] & 0x3f);
    }

    if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
        return NGX_HTTP_PRESENCE_UTF8_INVALID;
    }

    *p = s + n;

    return u;
}


/*
 * A heartbeat or leave body: exactly one JSON object (RFC 8259, strictly:
 * UTF-8 throughout, no raw control characters in strings, no leading
 * zeros, nothing but whitespace after it) with a string "user_id" (unless
 * user is NULL: the identity comes from elsewhere) and, optionally, a
 * string "session_id".  jansson enforces all of that, and stops nesting at
 * JSON_PARSER_MAX_DEPTH (2048) rather than recursing as deep as a body
 * goes.  user->data and session->data must each have room for len bytes,
 * more than a decoded string can take.  Returns NGX_OK with the strings
 * copied there (session->data NULL when there is no session_id), which
 * may still be no valid ids (an escaped "\u0000" in one, say), NGX_ERROR
 * when jansson ran out of memory, or the error to answer with.
 */

ngx_int_t
ngx_http_presence_parse_json(u_char *p, size_t len, ngx_str_t *user,
    ngx_str_t *session)
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

    /*
     * A raw NUL byte is never JSON: a control character in a string, no
     * token outside one.  jansson 2.14 refuses most, but skips one that
     * follows a number or a literal ("[1<NUL>]"), so it is refused here.
     */

    if (ngx_strlchr(p, p + len, '\0') != NULL) {
        return NGX_HTTP_PRESENCE_ERR_JSON;
    }

    json = json_loadb((char *) p, len, flags, &err);

    if (json == NULL) {
        return json_error_code(&err) == json_error_out_of_memory
               ? NGX_ERROR : NGX_HTTP_PRESENCE_ERR_JSON;
    }

    if (!json_is_object(json)) {
        rc = NGX_HTTP_PRESENCE_ERR_JSON;
        goto done;
    }

    if (user) {
        item = json_object_get(json, "user_id");

        if (!json_is_string(item)) {
            rc = NGX_HTTP_PRESENCE_ERR_USER;
            goto done;
        }

        ngx_http_presence_json_copy(item, user);
    }

    item = json_object_get(json, "session_id");

    if (item == NULL) {
        ngx_str_null(session);

    } else if (!json_is_string(item)) {
        rc = NGX_HTTP_PRESENCE_ERR_SESSION;
        goto done;

    } else {
        ngx_http_presence_json_copy(item, session);
    }

    rc = NGX_OK;

done:

    json_decref(json);

    return rc;
}


/* a JSON string never decodes longer than it is written in the body */

static void
ngx_http_presence_json_copy(json_t *item, ngx_str_t *to)
{
    to->len = json_string_length(item);
    ngx_memcpy(to->data, json_string_value(item), to->len);
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
 * One Accept header line (RFC 9110, 12.5.1), added to what earlier lines
 * gave: a list of media ranges with parameters and a weight.  A range that
 * is not well formed, or whose weight is, counts for nothing; the commas
 * inside a quoted parameter value separate nothing.
 */

void
ngx_http_presence_accept(ngx_http_presence_accept_t *accept,
    ngx_str_t *value)
{
    u_char  *p, *end;

    p = value->data;
    end = p + value->len;

    while (p < end) {
        p = ngx_http_presence_accept_range(accept, p, end);
    }
}


/*
 * Prometheus text only when text/plain weighs more than application/json:
 * JSON is the default and the API's own format, so a tie is JSON (axios
 * sends application/json, text/plain and any type alike), and so is neither
 * being acceptable.  The order of the ranges means nothing (RFC 9110), and a
 * proxy may merge or reorder header lines.
 */

ngx_int_t
ngx_http_presence_accept_text(ngx_http_presence_accept_t *accept)
{
    return accept->q[NGX_HTTP_PRESENCE_FORMAT_TEXT]
           > accept->q[NGX_HTTP_PRESENCE_FORMAT_JSON];
}


/* one media range up to and past its comma */

static u_char *
ngx_http_presence_accept_range(ngx_http_presence_accept_t *accept, u_char *p,
    u_char *end)
{
    u_char     *start;
    ngx_int_t   q, w;
    ngx_str_t   type, subtype, name, value;

    q = -1;

    p = ngx_http_presence_ows(p, end);

    type.data = p;
    p = ngx_http_presence_token(p, end);
    type.len = p - type.data;

    if (type.len == 0 || p == end || *p != '/') {
        goto skip;
    }

    subtype.data = ++p;
    p = ngx_http_presence_token(p, end);
    subtype.len = p - subtype.data;

    if (subtype.len == 0) {
        goto skip;
    }

    /* parameters: the first "q" is the weight, the others count for nothing */

    for ( ;; ) {
        p = ngx_http_presence_ows(p, end);

        if (p == end || *p == ',') {
            break;
        }

        if (*p != ';') {
            goto skip;
        }

        p++;

        p = ngx_http_presence_ows(p, end);

        name.data = p;
        p = ngx_http_presence_token(p, end);
        name.len = p - name.data;

        if (name.len == 0) {
            /* an empty parameter, ";;", is allowed */
            continue;
        }

        if (p == end || *p != '=') {
            goto skip;
        }

        p++;

        if (p < end && *p == '"') {
            start = p;
            p = ngx_http_presence_quoted(p, end);

            if (p == NULL) {
                p = end;
                goto skip;
            }

            value.data = start;
            value.len = p - start;

        } else {
            value.data = p;
            p = ngx_http_presence_token(p, end);
            value.len = p - value.data;
        }

        if (name.len == 1 && (name.data[0] | 0x20) == 'q' && q == -1) {
            w = ngx_http_presence_qvalue(&value);

            if (w == NGX_ERROR) {
                goto skip;
            }

            q = w;
        }
    }

    ngx_http_presence_accept_match(accept, &type, &subtype,
                                   (q == -1) ? 1000 : q);

skip:

    /* the rest of the range, quoted strings and all, and the comma */

    while (p < end && *p != ',') {

        if (*p == '"') {
            p = ngx_http_presence_quoted(p, end);

            if (p == NULL) {
                return end;
            }

            continue;
        }

        p++;
    }

    return (p < end) ? p + 1 : end;
}


/* the most specific range that names a format sets its weight */

static void
ngx_http_presence_accept_match(ngx_http_presence_accept_t *accept,
    ngx_str_t *type, ngx_str_t *subtype, ngx_uint_t q)
{
    ngx_uint_t  i, specific;

    static char  *names[][2] = {
        { "application", "json" },      /* NGX_HTTP_PRESENCE_FORMAT_JSON */
        { "text", "plain" }             /* NGX_HTTP_PRESENCE_FORMAT_TEXT */
    };

    for (i = 0; i < 2; i++) {

        if (type->len == 1 && type->data[0] == '*') {
            /* "*" with a named subtype is no media range */
            specific = (subtype->len == 1 && subtype->data[0] == '*') ? 1 : 0;

        } else if (!ngx_http_presence_equal_nocase(type->data, type->len,
                                                   names[i][0]))
        {
            specific = 0;

        } else if (subtype->len == 1 && subtype->data[0] == '*') {
            specific = 2;

        } else {
            specific = ngx_http_presence_equal_nocase(subtype->data,
                                                      subtype->len,
                                                      names[i][1])
                       ? 3 : 0;
        }

        if (specific == 0 || specific < accept->specific[i]) {
            continue;
        }

        if (specific > accept->specific[i] || q > accept->q[i]) {
            accept->specific[i] = specific;
            accept->q[i] = q;
        }
    }
}


/* "0" to "1" with at most three decimals, in thousandths */

static ngx_int_t
ngx_http_presence_qvalue(ngx_str_t *value)
{
    size_t      i;
    ngx_int_t   q, unit;

    if (value->len == 0 || value->len > 5
        || (value->data[0] != '0' && value->data[0] != '1'))
    {
        return NGX_ERROR;
    }

    q = (value->data[0] - '0') * 1000;

    if (value->len == 1) {
        return q;
    }

    if (value->data[1] != '.') {
        return NGX_ERROR;
    }

    unit = 100;

    for (i = 2; i < value->len; i++) {
        if (value->data[i] < '0' || value->data[i] > '9') {
            return NGX_ERROR;
        }

        q += (value->data[i] - '0') * unit;
        unit /= 10;
    }

    return (q > 1000) ? NGX_ERROR : q;
}


/* past the token characters of RFC 9110, 5.6.2 */

static u_char *
ngx_http_presence_token(u_char *p, u_char *end)
{
    u_char  c;

    for ( /* void */ ; p < end; p++) {
        c = *p;

        if ((c >= '0' && c <= '9')
            || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
        {
            continue;
        }

        switch (c) {
        case '!': case '#': case '$': case '%': case '&': case '\'':
        case '*': case '+': case '-': case '.': case '^': case '_':
        case '`': case '|': case '~':
            continue;
        }

        break;
    }

    return p;
}


static u_char *
ngx_http_presence_ows(u_char *p, u_char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    return p;
}


/* p at the opening quote: past the closing one, or NULL if there is none */

static u_char *
ngx_http_presence_quoted(u_char *p, u_char *end)
{
    for (p++; p < end; p++) {

        if (*p == '\\') {
            if (++p == end) {
                return NULL;
            }

            continue;
        }

        if (*p == '"') {
            return p + 1;
        }
    }

    return NULL;
}


/*
 * The next change of a channel's message from p on: the byte after its
 * line, with *change filled, or NULL at the end or at a line that is not
 * one (anyone who may PUBLISH can send anything; nothing after a broken
 * line is trusted).
 */

u_char *
ngx_http_presence_parse_change(u_char *p, u_char *end,
    ngx_http_presence_change_t *change)
{
    u_char     *nl;
    uint64_t    n[2];
    ngx_uint_t  i, digits;

    for (i = 0; i < 2; i++) {
        n[i] = 0;

        for (digits = 0; p < end && *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits == 18) {
                return NULL;
            }

            n[i] = n[i] * 10 + (*p - '0');
        }

        if (digits == 0 || p == end || *p++ != ' ') {
            return NULL;
        }

        if (i == 1) {
            break;
        }

        if (end - p < 2
            || (*p != NGX_HTTP_PRESENCE_JOIN && *p != NGX_HTTP_PRESENCE_LEFT
                && *p != NGX_HTTP_PRESENCE_TIMEOUT)
            || p[1] != ' ')
        {
            return NULL;
        }

        change->kind = *p;
        p += 2;
    }

    nl = ngx_strlchr(p, end, '\n');

    if (nl == NULL
        || !ngx_http_presence_valid_id(p, nl - p,
                                       NGX_HTTP_PRESENCE_CHANGE_ID_MAX))
    {
        return NULL;
    }

    change->id = n[0];
    change->count = n[1];
    change->user.data = p;
    change->user.len = nl - p;

    return nl + 1;
}
