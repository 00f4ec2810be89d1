
/*
 * ngx_http_presence_parse_limit(): an error exactly when the value is
 * empty or not all digits; otherwise the number capped at the maximum,
 * however many digits it has.  The first byte picks the maximum.
 */


#include "fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t      i;
    ngx_int_t   rc;
    ngx_str_t   value;
    ngx_uint_t  max, n, digits;

    if (size == 0) {
        return 0;
    }

    max = (ngx_uint_t) data[0] * 4000 + 1;     /* 1 .. 1020001 */

    value.data = (u_char *) data + 1;
    value.len = size - 1;

    rc = ngx_http_presence_parse_limit(&value, max);

    digits = value.len > 0;
    n = 0;

    for (i = 0; i < value.len; i++) {
        if (value.data[i] < '0' || value.data[i] > '9') {
            digits = 0;
            break;
        }

        /* saturate well above any maximum */
        n = (n > 100000000) ? n : n * 10 + (value.data[i] - '0');
    }

    if (!digits) {
        fuzz_assert(rc == NGX_ERROR);

    } else {
        fuzz_assert(rc >= 0);
        fuzz_assert((ngx_uint_t) rc == (n < max ? n : max));
    }

    return 0;
}
