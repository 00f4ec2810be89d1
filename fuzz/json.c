
/*
 * ngx_http_presence_parse_json() on any body: a user id it accepts fits
 * the body's length and has no NUL byte in it (cJSON cuts strings at a
 * "\u0000"; the module must refuse those, not pass a shorter id on).
 */


#include "fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *body;
    ngx_int_t   rc;
    ngx_str_t   user;

    body = malloc(size + 1);
    user.data = malloc(size + 1);

    if (body == NULL || user.data == NULL) {
        free(body);
        free(user.data);
        return 0;
    }

    memcpy(body, data, size);
    body[size] = '\0';

    rc = ngx_http_presence_parse_json(body, size, &user);

    fuzz_assert(rc == NGX_OK || rc == NGX_ERROR
                || rc == NGX_HTTP_PRESENCE_ERR_JSON
                || rc == NGX_HTTP_PRESENCE_ERR_USER);

    if (rc == NGX_OK) {
        fuzz_assert(user.len <= size);
        fuzz_assert(memchr(user.data, '\0', user.len) == NULL);
    }

    free(body);
    free(user.data);

    return 0;
}
