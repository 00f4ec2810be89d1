
/*
 * ngx_http_presence_media_type_ok(): leading blanks and parameters after
 * a ";" never change the answer, and it agrees with a plain reading of
 * the two types the module takes.
 */


#include "fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *buf, *semi;
    size_t      i, len;
    ngx_int_t   ok, expect;
    ngx_str_t   value;

    buf = malloc(size + 16);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    /* libFuzzer's buffer is exactly size bytes: ASan sees an over-read */
    value.data = (u_char *) data;
    value.len = size;
    ok = ngx_http_presence_media_type_ok(&value);

    /* the reference: the type before any ";", blanks trimmed, any case */

    semi = memchr(buf, ';', size);
    len = semi ? (size_t) (semi - buf) : size;

    for (i = 0; i < len && (buf[i] == ' ' || buf[i] == '\t'); i++) { }
    while (len > i && (buf[len - 1] == ' ' || buf[len - 1] == '\t')) {
        len--;
    }

    expect = (len - i == 16
              && strncasecmp((char *) buf + i, "application/json", 16) == 0)
             || (len - i == 10
                 && strncasecmp((char *) buf + i, "text/plain", 10) == 0);

    fuzz_assert(ok == expect);

    if (semi == NULL) {
        memcpy(buf + size, "; charset=x", 11);
        value.data = buf;
        value.len = size + 11;
        fuzz_assert(ngx_http_presence_media_type_ok(&value) == ok);
    }

    free(buf);

    return 0;
}
