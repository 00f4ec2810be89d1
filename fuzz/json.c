
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
    ngx_int_t   rc;
    ngx_str_t   user;

    body = malloc(size + 1);
    user.data = malloc(size + 1);

    if (body == NULL || user.data == NULL) {
        free(body);
        free(user.data);
        return 0;
    }

    /* no terminating NUL: the parser must stop at size on its own */
    memcpy(body, data, size);

    rc = ngx_http_presence_parse_json(body, size, &user);

    fuzz_assert(rc == NGX_OK || rc == NGX_ERROR
                || rc == NGX_HTTP_PRESENCE_ERR_JSON
                || rc == NGX_HTTP_PRESENCE_ERR_USER);

    if (rc == NGX_OK || rc == NGX_HTTP_PRESENCE_ERR_USER) {

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

    return 0;
}


/*
 * UTF-8 as RFC 3629 has it, control characters and all: the rule for the
 * whole body, where ngx_http_presence_valid_id() is stricter
 */

static int
fuzz_utf8(const u_char *p, size_t len)
{
    size_t    n, i;
    uint32_t  u, min;

    for (i = 0; i < len; /* void */) {

        u = p[i++];

        if (u < 0x80) {
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
            return 0;
        }

        if (len - i < n) {
            return 0;
        }

        while (n--) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            u = (u << 6) | (p[i++] & 0x3f);
        }

        if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
            return 0;
        }
    }

    return 1;
}
