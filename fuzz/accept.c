
/*
 * ngx_http_presence_accept(): the input is two Accept header lines split
 * at the first newline, each copied into an allocation of its own size so
 * that ASan sees any read past either.  The outcome may not depend on the
 * order of the lines, on a line given twice or on the case of the letters;
 * a range for neither format changes nothing; an application/json line
 * always makes it JSON, a text/plain line makes it text unless JSON has
 * the full weight.
 */


#include "fuzz.h"


static u_char *
fuzz_dup(const uint8_t *p, size_t n, ngx_uint_t upper)
{
    u_char  *d;
    size_t   i;

    d = malloc(n ? n : 1);
    if (d == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        d[i] = (upper && p[i] >= 'a' && p[i] <= 'z') ? p[i] - 0x20 : p[i];
    }

    return d;
}


static void
fuzz_feed(ngx_http_presence_accept_t *a, char *s)
{
    ngx_str_t  line;

    line.len = strlen(s);
    line.data = (u_char *) fuzz_dup((uint8_t *) s, line.len, 0);

    if (line.data) {
        ngx_http_presence_accept(a, &line);
        free(line.data);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t                       n;
    u_char                      *nl;
    ngx_uint_t                   i;
    ngx_str_t                    one, two, up;
    ngx_http_presence_accept_t   ab, ba, aab, upper, x;

    nl = memchr(data, '\n', size);
    n = nl ? (size_t) (nl - data) : size;

    one.len = n;
    one.data = fuzz_dup(data, n, 0);
    two.len = nl ? size - n - 1 : 0;
    two.data = fuzz_dup(data + size - two.len, two.len, 0);
    up.len = n;
    up.data = fuzz_dup(data, n, 1);

    if (one.data == NULL || two.data == NULL || up.data == NULL) {
        goto done;
    }

    ngx_memzero(&ab, sizeof(ngx_http_presence_accept_t));
    ngx_http_presence_accept(&ab, &one);
    ngx_http_presence_accept(&ab, &two);

    for (i = 0; i < 2; i++) {
        fuzz_assert(ab.q[i] <= 1000 && ab.specific[i] <= 3);
        fuzz_assert(ab.specific[i] || ab.q[i] == 0);
    }

    ngx_memzero(&ba, sizeof(ngx_http_presence_accept_t));
    ngx_http_presence_accept(&ba, &two);
    ngx_http_presence_accept(&ba, &one);
    fuzz_assert(memcmp(&ab, &ba, sizeof(ngx_http_presence_accept_t)) == 0);

    ngx_memzero(&aab, sizeof(ngx_http_presence_accept_t));
    ngx_http_presence_accept(&aab, &one);
    ngx_http_presence_accept(&aab, &one);
    ngx_http_presence_accept(&aab, &two);
    fuzz_assert(memcmp(&ab, &aab, sizeof(ngx_http_presence_accept_t)) == 0);

    ngx_memzero(&upper, sizeof(ngx_http_presence_accept_t));
    ngx_http_presence_accept(&upper, &up);
    ngx_http_presence_accept(&upper, &two);
    fuzz_assert(memcmp(&ab, &upper, sizeof(ngx_http_presence_accept_t)) == 0);

    x = ab;
    fuzz_feed(&x, "image/png, text/html;q=1, application/xml, */json");
    fuzz_assert(memcmp(&ab, &x, sizeof(ngx_http_presence_accept_t)) == 0);

    x = ab;
    fuzz_feed(&x, "application/json");
    fuzz_assert(!ngx_http_presence_accept_text(&x));

    x = ab;
    fuzz_feed(&x, "text/plain");
    fuzz_assert(ngx_http_presence_accept_text(&x)
                == (ab.q[NGX_HTTP_PRESENCE_FORMAT_JSON] < 1000));

done:

    free(one.data);
    free(two.data);
    free(up.data);

    return 0;
}
