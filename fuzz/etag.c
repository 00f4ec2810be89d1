
/*
 * ngx_http_presence_etag_match(): the input is an If-None-Match value up
 * to a newline and an ETag after it, each copied into an allocation of
 * its own size so that ASan sees any read past either.  Then a list that
 * ends with a well-formed tag, weak or strong, must match that tag.
 */


#include "fuzz.h"


static u_char *
fuzz_dup(const uint8_t *p, size_t n)
{
    u_char  *d;

    d = malloc(n ? n : 1);
    if (d) {
        memcpy(d, p, n);
    }

    return d;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *nl, *tag, *list, *t;
    size_t      n, i;
    ngx_str_t   header, etag;

    nl = memchr(data, '\n', size);
    n = nl ? (size_t) (nl - data) : size;

    header.len = n;
    header.data = fuzz_dup(data, n);
    etag.len = nl ? size - n - 1 : 0;
    etag.data = fuzz_dup(data + size - etag.len, etag.len);

    if (header.data && etag.data) {
        (void) ngx_http_presence_etag_match(&header, &etag);
    }

    /* a well-formed tag from the bytes after the newline, quotes dropped */

    tag = malloc(etag.len + 2);
    list = malloc(etag.len + 2 + 7);

    if (etag.data && tag && list) {
        t = tag;
        *t++ = '"';

        for (i = 0; i < etag.len; i++) {
            if (etag.data[i] != '"') {
                *t++ = etag.data[i];
            }
        }

        *t++ = '"';

        free(etag.data);
        etag.data = tag;
        etag.len = t - tag;
        tag = NULL;

        t = ngx_cpymem(list, "\"x\", W/", 7);
        t = ngx_cpymem(t, etag.data, etag.len);

        free(header.data);
        header.data = list;
        header.len = t - list;
        list = NULL;

        fuzz_assert(ngx_http_presence_etag_match(&header, &etag));
    }

    free(header.data);
    free(etag.data);
    free(tag);
    free(list);

    return 0;
}
