/*
 * checked.h -- overflow-checked size arithmetic, the one place sizes are multiplied or
 * added. Every element count, byte count, arena offset and workspace size computed from
 * user input (shapes, config fields, option values) goes through these, so a huge or
 * hostile value becomes an error instead of a wrapped, too-small allocation.
 *
 * Two styles:
 *  - dsc_mul_i64(a, b, &out) / dsc_add_i64 / dsc_mul_size / dsc_add_size return 1 and
 *    store the result, or return 0 on overflow (out then unspecified);
 *  - the "sticky" dsc_cmul / dsc_cadd / dsc_cbytes take an `int *ok` that they clear on
 *    overflow (returning 0), so a planner computes a whole table of sizes and tests `ok`
 *    once at the end. Sticky sizes also reject negative operands (a negative size is
 *    always a bug or a wrapped value upstream).
 * Valid C11 and C++ (nvcc includes the core headers).
 */
#ifndef DSC_CHECKED_H_
#define DSC_CHECKED_H_

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define DSC_HAVE_OVERFLOW_BUILTINS 1
#endif

static inline int dsc_mul_i64(int64_t a, int64_t b, int64_t *out) {
#ifdef DSC_HAVE_OVERFLOW_BUILTINS
  return !__builtin_mul_overflow(a, b, out);
#else
  if (a == 0 || b == 0) { *out = 0; return 1; }
  if ((a == -1 && b == INT64_MIN) || (b == -1 && a == INT64_MIN)) return 0;
  if (a > 0 ? (b > 0 ? a > INT64_MAX / b : b < INT64_MIN / a)
            : (b > 0 ? a < INT64_MIN / b : a < INT64_MAX / b))
    return 0;
  *out = a * b;
  return 1;
#endif
}

static inline int dsc_add_i64(int64_t a, int64_t b, int64_t *out) {
#ifdef DSC_HAVE_OVERFLOW_BUILTINS
  return !__builtin_add_overflow(a, b, out);
#else
  if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) return 0;
  *out = a + b;
  return 1;
#endif
}

static inline int dsc_mul_size(size_t a, size_t b, size_t *out) {
#ifdef DSC_HAVE_OVERFLOW_BUILTINS
  return !__builtin_mul_overflow(a, b, out);
#else
  if (b != 0 && a > SIZE_MAX / b) return 0;
  *out = a * b;
  return 1;
#endif
}

static inline int dsc_add_size(size_t a, size_t b, size_t *out) {
#ifdef DSC_HAVE_OVERFLOW_BUILTINS
  return !__builtin_add_overflow(a, b, out);
#else
  if (a > SIZE_MAX - b) return 0;
  *out = a + b;
  return 1;
#endif
}

/* Sticky a * b for sizes (a, b >= 0): 0 and *ok = 0 on overflow or a negative operand. */
static inline int64_t dsc_cmul(int64_t a, int64_t b, int *ok) {
  int64_t r = 0;
  if (a < 0 || b < 0 || !dsc_mul_i64(a, b, &r)) {
    *ok = 0;
    return 0;
  }
  return r;
}

/* Sticky a * b * c for sizes. */
static inline int64_t dsc_cmul3(int64_t a, int64_t b, int64_t c, int *ok) {
  return dsc_cmul(dsc_cmul(a, b, ok), c, ok);
}

/* Sticky a + b for sizes (a, b >= 0). */
static inline int64_t dsc_cadd(int64_t a, int64_t b, int *ok) {
  int64_t r = 0;
  if (a < 0 || b < 0 || !dsc_add_i64(a, b, &r)) {
    *ok = 0;
    return 0;
  }
  return r;
}

/* Sticky bytes of n elements of elem bytes each (n >= 0), as a size_t that also fits in
 * int64 (so it can be handed back as a signed count or offset). */
static inline size_t dsc_cbytes(int64_t n, size_t elem, int *ok) {
  int64_t r = 0;
  if (n < 0 || elem > (size_t)INT64_MAX || !dsc_mul_i64(n, (int64_t)elem, &r)) {
    *ok = 0;
    return 0;
  }
  return (size_t)r;
}

/* Sticky a + b for byte counts. */
static inline size_t dsc_caddz(size_t a, size_t b, int *ok) {
  size_t r = 0;
  if (!dsc_add_size(a, b, &r)) {
    *ok = 0;
    return 0;
  }
  return r;
}

/* Sticky round-up of x to a multiple of `align` (a power of two). */
static inline size_t dsc_calign(size_t x, size_t align, int *ok) {
  size_t r = dsc_caddz(x, align - 1, ok);
  return r & ~(align - 1);
}

#endif /* DSC_CHECKED_H_ */
