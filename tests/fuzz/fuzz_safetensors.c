/*
 * fuzz_safetensors.c -- libFuzzer target for the safetensors reader (csrc/model/safetensors.c
 * and the JSON cursor under it). Built and run by tests/fuzz/run_fuzz.sh under ASan/UBSan.
 *
 * Every input is opened from memory (the same parser dsc_safetensors_open runs on a file's
 * bytes). A refusal must be DSC_ERR_FORMAT with a message; an accepted file must keep the
 * reader's promises, checked through the public ABI only:
 *  - every tensor is found by its own name, and its bytes lie inside the input's data block;
 *  - the tensors tile the data block: disjoint, and their sizes add up to exactly its size;
 *  - nbytes == numel * itemsize; every name and metadata string is readable (no NUL inside
 *    is possible to see, but their ends are within reach).
 * A broken promise aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deepseek_c.h"
#include "../../csrc/model/safetensors.h"

#define REQUIRE(cond, what)                                         \
  do {                                                              \
    if (!(cond)) {                                                  \
      fprintf(stderr, "fuzz_safetensors: broken promise: %s\n", what); \
      abort();                                                      \
    }                                                               \
  } while (0)

typedef struct {
  const unsigned char *p;
  size_t n;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = (const span *)a, *y = (const span *)b;
  return x->p < y->p ? -1 : x->p > y->p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dsc_safetensors *f = NULL;
  dsc_status s = dsc_safetensors_open_memory(data, size, "fuzz.safetensors", &f);
  if (s != DSC_OK) {
    REQUIRE(f == NULL, "a refused file is not handed out");
    REQUIRE(s == DSC_ERR_FORMAT || s == DSC_ERR_OUT_OF_MEMORY, "a refusal is DSC_ERR_FORMAT");
    REQUIRE(strstr(dsc_last_error(), "fuzz.safetensors") != NULL, "the message names the file");
    return 0;
  }
  uint64_t hn = 0;
  for (int i = 7; i >= 0; --i) hn = (hn << 8) | data[i];
  const uint64_t block = size - 8 - hn; /* the data block's size */
  const int64_t n = dsc_safetensors_count(f);
  span *sp = (span *)malloc(sizeof *sp * (size_t)(n ? n : 1));
  REQUIRE(sp != NULL, "memory");
  uint64_t total = 0;
  volatile unsigned sink = 0;
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    dsc_dtype dt;
    int32_t ndim;
    const int64_t *shape;
    const void *p;
    size_t nbytes;
    REQUIRE(dsc_safetensors_tensor(f, i, &name, &dt, &ndim, &shape, &p, &nbytes) == DSC_OK, "tensor i");
    sink += (unsigned)strlen(name);
    int64_t idx = -1;
    REQUIRE(dsc_safetensors_find(f, name, &idx) == DSC_OK && idx == i, "found by its own name");
    REQUIRE(ndim >= 0 && ndim <= 16, "ndim");
    uint64_t numel = 1;
    for (int d = 0; d < ndim; ++d) {
      REQUIRE(shape[d] >= 0, "dims are non-negative");
      numel *= (uint64_t)shape[d]; /* nbytes fits, so this cannot wrap when nonzero */
    }
    REQUIRE(numel * dsc_dtype_size(dt) == nbytes, "nbytes == numel * itemsize");
    for (size_t k = 0; k < nbytes; ++k) sink += ((const unsigned char *)p)[k]; /* ASan checks the reads */
    sp[i].p = (const unsigned char *)p;
    sp[i].n = nbytes;
    total += nbytes;
  }
  REQUIRE(total == block, "the tensors' sizes add up to the data block");
  if (n > 1) qsort(sp, (size_t)n, sizeof *sp, span_cmp);
  for (int64_t i = 1; i < n; ++i) REQUIRE(sp[i - 1].p + sp[i - 1].n <= sp[i].p, "tensors are disjoint");
  if (n > 0) REQUIRE((size_t)(sp[n - 1].p + sp[n - 1].n - sp[0].p) <= block, "inside the data block");
  for (int64_t i = 0; i < dsc_safetensors_metadata_count(f); ++i) {
    const char *k, *v;
    REQUIRE(dsc_safetensors_metadata(f, i, &k, &v) == DSC_OK, "metadata i");
    sink += (unsigned)(strlen(k) + strlen(v));
  }
  (void)sink;
  free(sp);
  dsc_safetensors_close(f);
  return 0;
}
