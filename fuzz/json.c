
/*
 * ngx_http_presence_parse_json() on any body.  A body it takes as JSON
 * (an id, or invalid_user_id) must be strict RFC 8259 as far as a check
 * without a parser can tell: valid UTF-8, no raw control character but
 * JSON's whitespace, '{' first and '}' last.  An id it returns fits the
 * body; when the body has no escapes, it is there verbatim between
 * quotes, so it was neither cut short (a raw NUL byte) nor made up.
 */


#include "fuzz.h"


static int fuzz_utf8(const u_char *p, size_t len);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t      i, first, last;
    u_char     *body, *q;
    u_char     *session_buf;
    ngx_int_t   rc;
    ngx_str_t   user, session;

    body = malloc(size + 1);
    user.data = malloc(size + 1);
    session_buf = malloc(size + 1);

    if (body == NULL || user.data == NULL || session_buf == NULL) {
        free(body);
        free(user.data);
        free(session_buf);
        return 0;
    }

    session.data = session_buf;

    /* no terminating NUL: the parser must stop at size on its own */
    memcpy(body, data, size);

    rc = ngx_http_presence_parse_json(body, size, &user, &session);

    fuzz_assert(rc == NGX_OK || rc == NGX_ERROR
                || rc == NGX_HTTP_PRESENCE_ERR_JSON
                || rc == NGX_HTTP_PRESENCE_ERR_USER
                || rc == NGX_HTTP_PRESENCE_ERR_SESSION);

    if (rc == NGX_OK && session.data) {
        /* a session_id fits the body, as the id does */
        fuzz_assert(session.data == session_buf && session.len <= size);
    }

    if (rc != NGX_OK && rc != NGX_ERROR && rc != NGX_HTTP_PRESENCE_ERR_JSON) {

        fuzz_assert(fuzz_utf8(body, size));

        for (i = 0; i < size; i++) {
            fuzz_assert(body[i] >= 0x20 || body[i] == '\t'
                        || body[i] == '\r' || body[i] == '\n');
        }

        for (first = 0; first < size && body[first] <= ' '; first++) {
            /* void */
        }

        for (last = size; last > first && body[last - 1] <= ' '; last--) {
            /* void */
        }

        fuzz_assert(last - first >= 2);
        fuzz_assert(body[first] == '{' && body[last - 1] == '}');
    }

    if (rc == NGX_OK) {
        fuzz_assert(user.len <= size);

        if (memchr(body, '\\', size) == NULL) {
            fuzz_assert(user.len + 2 <= size);

            for (q = body; q + user.len + 2 <= body + size; q++) {
                if (q[0] == '"' && q[user.len + 1] == '"'
                    && memcmp(q + 1, user.data, user.len) == 0)
                {
                    break;
                }
            }

            fuzz_assert(q + user.len + 2 <= body + size);
        }
    }

    free(body);
    free(user.data);
    free(session_buf);

    return 0;
}


/*
 * UTF-8 throughout, control characters and all: the rule for the whole
 * body, by the decoder that ngx_http_presence_valid_id() uses for ids
 */

static int
fuzz_utf8(const u_char *p, size_t len)
{
    u_char  *q, *end;

    q = (u_char *) p;
    end = q + len;

    while (q < end) {
        if (ngx_http_presence_utf8_decode(&q, end)
            == NGX_HTTP_PRESENCE_UTF8_INVALID)
        {
            return 0;
        }
    }

    return 1;
}
