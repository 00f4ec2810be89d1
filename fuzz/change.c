
/*
 * ngx_http_presence_parse_change(): the channel's messages come from
 * anyone who may PUBLISH.  Each change it takes stays within the input,
 * ends at a newline, carries a valid user id and a known kind, and
 * printed back in the scripts' format is the very line it was read from.
 */


#include "fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                          n;
    u_char                      *c;
    char                         buf[64];
    u_char                      *p, *end, *next, *line;
    size_t                       len;
    ngx_http_presence_change_t   ch;

    /* a copy of exactly size bytes: ASan sees any read past the end */

    p = malloc(size ? size : 1);
    if (p == NULL) {
        return 0;
    }

    memcpy(p, data, size);
    line = p;
    end = p + size;

    while (line < end) {
        next = ngx_http_presence_parse_change(line, end, &ch);

        if (next == NULL) {
            break;
        }

        fuzz_assert(next > line && next <= end && next[-1] == '\n');
        fuzz_assert(ch.kind == NGX_HTTP_PRESENCE_JOIN
                    || ch.kind == NGX_HTTP_PRESENCE_LEFT
                    || ch.kind == NGX_HTTP_PRESENCE_TIMEOUT);
        fuzz_assert(ch.user.data > line
                    && ch.user.data + ch.user.len == next - 1);
        fuzz_assert(ngx_http_presence_valid_id(ch.user.data, ch.user.len,
                                     NGX_HTTP_PRESENCE_CHANGE_ID_MAX));

        /*
         * printed back as the scripts write it, the line is the same,
         * unless a number in it has a leading zero (the scripts never
         * write one; the parser need not refuse it)
         */

        len = ch.user.data - line;
        n = snprintf(buf, sizeof(buf), "%llu %c %llu ",
                     (unsigned long long) ch.id, (int) ch.kind,
                     (unsigned long long) ch.count);

        c = (u_char *) memchr(line, ' ', len) + 3;

        if (!(line[0] == '0' && line[1] != ' ')
            && !(c[0] == '0' && c[1] != ' '))
        {
            fuzz_assert((size_t) n == len && memcmp(buf, line, len) == 0);
        }

        line = next;
    }

    free(p);

    return 0;
}
