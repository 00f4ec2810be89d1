
/*
 * ngx_http_presence_valid_id(): an accepted id has no control character,
 * and survives a trip through JSON: written with jansson as the user_id
 * and the session_id of a heartbeat body, raw UTF-8 or all escaped,
 * ngx_http_presence_parse_json() gives back the very same bytes.
 */


#include "fuzz.h"
#include <jansson.h>


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char          *body;
    size_t         i, k;
    json_t        *obj;
    ngx_str_t      user, session;
    json_error_t   err;
    static int     flags[] = { JSON_COMPACT, JSON_COMPACT|JSON_ENSURE_ASCII };

    /* libFuzzer's buffer is exactly size bytes: ASan sees an over-read */

    if (!ngx_http_presence_valid_id((u_char *) data, size, 1024)) {
        return 0;
    }

    for (i = 0; i < size; i++) {
        fuzz_assert(data[i] >= 0x20 && data[i] != 0x7f);
    }

    /* the same string as user_id and as session_id */

    obj = json_pack_ex(&err, 0, "{s:s%,s:s%}", "user_id", (const char *) data,
                       size, "session_id", (const char *) data, size);

    if (obj == NULL) {
        /* jansson refuses only what is no UTF-8, and valid_id() took it */
        fuzz_assert(json_error_code(&err) == json_error_out_of_memory);
        return 0;
    }

    for (k = 0; k < sizeof(flags) / sizeof(flags[0]); k++) {

        body = json_dumps(obj, flags[k]);
        if (body == NULL) {
            continue;
        }

        user.data = malloc(strlen(body));
        user.len = 0;
        session.data = malloc(strlen(body));

        if (user.data && session.data) {
            fuzz_assert(ngx_http_presence_parse_json((u_char *) body,
                                                     strlen(body), &user,
                                                     &session)
                        == NGX_OK);
            fuzz_assert(user.len == size);
            fuzz_assert(memcmp(user.data, data, size) == 0);
            fuzz_assert(session.len == size);
            fuzz_assert(memcmp(session.data, data, size) == 0);
        }

        free(user.data);
        free(session.data);

        free(body);
    }

    json_decref(obj);

    return 0;
}
