/*
 * model/safetensors.h -- library-internal additions to the safetensors reader of the
 * public ABI (deepseek_c.h): not exported in the header users see.
 */
#ifndef DSC_MODEL_SAFETENSORS_H_
#define DSC_MODEL_SAFETENSORS_H_

#include <stddef.h>

#include "deepseek_c.h"

/* dsc_safetensors_open on a file already in memory (copied; `name` stands for the path
 * in messages). For the fuzz target (tests/fuzz) and anything else that holds bytes. */
dsc_status dsc_safetensors_open_memory(const void *bytes, size_t size, const char *name,
                                       dsc_safetensors **out);

#endif /* DSC_MODEL_SAFETENSORS_H_ */
