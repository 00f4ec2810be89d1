
/*
 * Shared by the libFuzzer targets: each drives one function of
 * ngx_http_presence_input.c and checks a property a broken one would
 * violate, not only that it does not crash.
 */


#ifndef _FUZZ_H_INCLUDED_
#define _FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <stdlib.h>

#include "../ngx_http_presence_input.h"


#define fuzz_assert(cond)                                                     \
    if (!(cond)) {                                                            \
        fprintf(stderr, "property failed: %s (%s:%d)\n", #cond,               \
                __FILE__, __LINE__);                                          \
        abort();                                                              \
    }


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#endif /* _FUZZ_H_INCLUDED_ */
