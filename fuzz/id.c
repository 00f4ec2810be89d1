
/*
 * ngx_http_presence_valid_id(): an accepted id has no control character,
 * and survives a trip through JSON: written with cJSON as a heartbeat
 * body, ngx_http_presence_parse_json() gives back the very same bytes.
 */


#include "fuzz.h"
#include <cjson/cJSON.h>


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *id;
    char       *body;
    size_t      i;
    cJSON      *obj;
    ngx_str_t   user;

    /* libFuzzer's buffer is exactly size bytes: ASan sees an over-read */

    if (!ngx_http_presence_valid_id((u_char *) data, size, 1024)) {
        return 0;
    }

    id = malloc(size + 1);
    if (id == NULL) {
        return 0;
    }

    memcpy(id, data, size);

    for (i = 0; i < size; i++) {
        fuzz_assert(id[i] >= 0x20 && id[i] != 0x7f);
    }

    id[size] = '\0';

    obj = cJSON_CreateObject();
    cJSON_AddStringToObject(obj, "user_id", (char *) id);
    body = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);

    if (body != NULL) {
        user.data = malloc(strlen(body));
        user.len = 0;

        if (user.data) {
            fuzz_assert(ngx_http_presence_parse_json((u_char *) body,
                                                     strlen(body), &user)
                        == NGX_OK);
            fuzz_assert(user.len == size);
            fuzz_assert(memcmp(user.data, id, size) == 0);
            free(user.data);
        }

        cJSON_free(body);
    }

    free(id);

    return 0;
}
