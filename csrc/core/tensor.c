/*
 * tensor.c -- dtype mapping between dsc_dtype and DLPack, and the checks every op
 * runs on its tensor arguments before dispatching.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

dsc_dtype dsc_dtype_from_dlpack(DLDataType t) {
  if (t.lanes != 1) return DSC_DTYPE_INVALID;
  switch (t.code) {
    case kDLFloat:
      return t.bits == 32 ? DSC_DTYPE_FLOAT32
             : t.bits == 16 ? DSC_DTYPE_FLOAT16
             : t.bits == 64 ? DSC_DTYPE_FLOAT64
                            : DSC_DTYPE_INVALID;
    case kDLBfloat: return t.bits == 16 ? DSC_DTYPE_BFLOAT16 : DSC_DTYPE_INVALID;
    case kDLFloat8_e4m3fn: return t.bits == 8 ? DSC_DTYPE_FLOAT8_E4M3FN : DSC_DTYPE_INVALID;
    case kDLFloat8_e5m2: return t.bits == 8 ? DSC_DTYPE_FLOAT8_E5M2 : DSC_DTYPE_INVALID;
    case kDLInt:
      return t.bits == 32 ? DSC_DTYPE_INT32
             : t.bits == 64 ? DSC_DTYPE_INT64
             : t.bits == 8 ? DSC_DTYPE_INT8
                           : DSC_DTYPE_INVALID;
    case kDLUInt: return t.bits == 8 ? DSC_DTYPE_UINT8 : DSC_DTYPE_INVALID;
    case kDLBool: return t.bits == 8 ? DSC_DTYPE_BOOL : DSC_DTYPE_INVALID;
    default: return DSC_DTYPE_INVALID;
  }
}

DLDataType dsc_dtype_to_dlpack(dsc_dtype t) {
  DLDataType d = {0, 0, 1};
  switch (t) {
    case DSC_DTYPE_FLOAT32: d.code = kDLFloat; d.bits = 32; break;
    case DSC_DTYPE_FLOAT64: d.code = kDLFloat; d.bits = 64; break;
    case DSC_DTYPE_FLOAT16: d.code = kDLFloat; d.bits = 16; break;
    case DSC_DTYPE_BFLOAT16: d.code = kDLBfloat; d.bits = 16; break;
    case DSC_DTYPE_FLOAT8_E4M3FN: d.code = kDLFloat8_e4m3fn; d.bits = 8; break;
    case DSC_DTYPE_FLOAT8_E5M2: d.code = kDLFloat8_e5m2; d.bits = 8; break;
    case DSC_DTYPE_INT32: d.code = kDLInt; d.bits = 32; break;
    case DSC_DTYPE_INT64: d.code = kDLInt; d.bits = 64; break;
    case DSC_DTYPE_INT8: d.code = kDLInt; d.bits = 8; break;
    case DSC_DTYPE_UINT8: d.code = kDLUInt; d.bits = 8; break;
    case DSC_DTYPE_BOOL: d.code = kDLBool; d.bits = 8; break;
    case DSC_DTYPE_INVALID: d.lanes = 0; break;
  }
  return d;
}

const char *dsc_dtype_name(dsc_dtype t) {
  switch (t) {
    case DSC_DTYPE_FLOAT32: return "float32";
    case DSC_DTYPE_FLOAT64: return "float64";
    case DSC_DTYPE_FLOAT16: return "float16";
    case DSC_DTYPE_BFLOAT16: return "bfloat16";
    case DSC_DTYPE_FLOAT8_E4M3FN: return "float8_e4m3fn";
    case DSC_DTYPE_FLOAT8_E5M2: return "float8_e5m2";
    case DSC_DTYPE_INT32: return "int32";
    case DSC_DTYPE_INT64: return "int64";
    case DSC_DTYPE_INT8: return "int8";
    case DSC_DTYPE_UINT8: return "uint8";
    case DSC_DTYPE_BOOL: return "bool";
    case DSC_DTYPE_INVALID: break;
  }
  return "invalid";
}

size_t dsc_dtype_size(dsc_dtype t) {
  switch (t) {
    case DSC_DTYPE_FLOAT64: case DSC_DTYPE_INT64: return 8;
    case DSC_DTYPE_FLOAT32: case DSC_DTYPE_INT32: return 4;
    case DSC_DTYPE_FLOAT16: case DSC_DTYPE_BFLOAT16: return 2;
    case DSC_DTYPE_FLOAT8_E4M3FN: case DSC_DTYPE_FLOAT8_E5M2: case DSC_DTYPE_INT8:
    case DSC_DTYPE_UINT8: case DSC_DTYPE_BOOL: return 1;
    case DSC_DTYPE_INVALID: break;
  }
  return 0;
}

int64_t dsc_numel(const DLTensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i)
    if (!dsc_mul_i64(n, t->shape[i], &n)) return -1;
  return n;
}

/* The product of the non-zero dims times the element size: 1 when it fits in int64 and
 * in DSC_MAX_TENSOR_BYTES, 0 when it overflows int64, -1 when it fits but exceeds the cap.
 * The product of the non-zero dims, so every partial product of dims fits too (an empty
 * tensor with huge other dims would still make "rows" loops run for ever or wrap). */
static int size_fits(const DLTensor *t) {
  int64_t n = (int64_t)dsc_dtype_size(dsc_tensor_dtype(t));
  if (n == 0) n = 1;
  for (int i = 0; i < t->ndim; ++i)
    if (t->shape[i] < 0 || (t->shape[i] > 0 && !dsc_mul_i64(n, t->shape[i], &n))) return 0;
  return (uint64_t)n <= DSC_MAX_TENSOR_BYTES ? 1 : -1;
}

int dsc_tensor_size_ok(const DLTensor *t) { return size_fits(t) > 0; }

int dsc_tensor_nbytes(const DLTensor *t, size_t *bytes) {
  *bytes = 0;
  const int64_t n = dsc_numel(t);
  int ok = n >= 0;
  const size_t b = dsc_cbytes(n, dsc_dtype_size(dsc_tensor_dtype(t)), &ok);
  if (ok) *bytes = b;
  return ok;
}

void *dsc_data(const DLTensor *t) { return (char *)t->data + t->byte_offset; }

dsc_dtype dsc_tensor_dtype(const DLTensor *t) { return dsc_dtype_from_dlpack(t->dtype); }

int64_t dsc_last_dim(const DLTensor *t) { return t->ndim > 0 ? t->shape[t->ndim - 1] : 1; }

int64_t dsc_rows(const DLTensor *t) {
  int64_t n = 1;
  for (int i = 0; i + 1 < t->ndim; ++i)
    if (!dsc_mul_i64(n, t->shape[i], &n)) return -1;
  return n;
}

const char *dsc_shape_str(const DLTensor *t, char *buf, size_t n) {
  size_t used = 0;
  int w = snprintf(buf, n, "(");
  used = w > 0 ? (size_t)w : 0;
  for (int i = 0; i < t->ndim && used < n; ++i) {
    w = snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (w > 0) used += (size_t)w;
  }
  if (used < n) snprintf(buf + used, n - used, ")");
  return buf;
}

static void dtype_list(unsigned mask, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = '\0';
  for (int d = 1; d < 32 && used < n; ++d) {
    if (!(mask & DSC_DT(d))) continue;
    int w = snprintf(buf + used, n - used, used ? " or %s" : "%s", dsc_dtype_name((dsc_dtype)d));
    if (w > 0) used += (size_t)w;
  }
}

static const char *device_name(int32_t type) {
  switch (type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed";
    case kDLROCM: return "rocm";
    default: return "device";
  }
}

dsc_status dsc_check_tensor(const dsc_context *ctx, const char *fn, const char *arg,
                            const DLTensor *t, unsigned dtypes) {
  char buf[256];
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "ctx: expected a context, got NULL");
  DSC_CHECK(t != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "%s: expected a tensor, got NULL", arg);
  DSC_CHECK(t->ndim >= 0 && t->ndim <= 16, DSC_ERR_SHAPE, fn,
            "%s: expected 0 to 16 dims, got %d", arg, (int)t->ndim);
  DSC_CHECK(t->ndim == 0 || t->shape != NULL, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected a shape array, got NULL", arg);
  for (int i = 0; i < t->ndim; ++i) {
    DSC_CHECK(t->shape[i] >= 0, DSC_ERR_SHAPE, fn, "%s: expected non-negative dims, got %s", arg,
              dsc_shape_str(t, buf, sizeof buf));
  }
  const int fits = size_fits(t);
  DSC_CHECK(fits != 0, DSC_ERR_SHAPE, fn,
            "%s: expected a shape whose size fits in 64 bits, got %s of %s", arg,
            dsc_shape_str(t, buf, sizeof buf), dsc_dtype_name(dsc_tensor_dtype(t)));
  DSC_CHECK(fits > 0, DSC_ERR_SHAPE, fn,
            "%s: expected a shape of at most 2^57 bytes (no address space holds more), got %s "
            "of %s",
            arg, dsc_shape_str(t, buf, sizeof buf), dsc_dtype_name(dsc_tensor_dtype(t)));
  dsc_dtype dt = dsc_tensor_dtype(t);
  if (!(dtypes & DSC_DT(dt))) {
    char want[160];
    dtype_list(dtypes, want, sizeof want);
    return dsc_error(DSC_ERR_DTYPE, fn, "%s: expected dtype %s, got %s (DLPack code %u, bits %u, lanes %u)",
                     arg, want, dsc_dtype_name(dt), (unsigned)t->dtype.code,
                     (unsigned)t->dtype.bits, (unsigned)t->dtype.lanes);
  }
  /* CUDA host/managed memory is readable by the host but we only accept the exact
   * device kinds the context computes on. */
  int same_dev = t->device.device_type == ctx->device.device_type &&
                 (ctx->device.device_type == kDLCPU || t->device.device_id == ctx->device.device_id);
  DSC_CHECK(same_dev, DSC_ERR_DEVICE, fn, "%s: expected a tensor on %s:%d, got %s:%d", arg,
            device_name(ctx->device.device_type), (int)ctx->device.device_id,
            device_name(t->device.device_type), (int)t->device.device_id);
  /* C-contiguous: strides equal the row-major strides (size-1 dims and empty tensors
   * are free). */
  if (t->strides != NULL && dsc_numel(t) > 0) {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; --i) {
      if (t->shape[i] != 1 && t->strides[i] != expect) {
        char sb[256];
        size_t used = 0;
        for (int j = 0; j < t->ndim && used < sizeof sb; ++j) {
          int w = snprintf(sb + used, sizeof sb - used, j ? ", %lld" : "%lld",
                           (long long)t->strides[j]);
          if (w > 0) used += (size_t)w;
        }
        return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                         "%s: expected a C-contiguous tensor, got shape %s with element strides (%s)"
                         " (make it contiguous first, e.g. np.ascontiguousarray / .contiguous())",
                         arg, dsc_shape_str(t, buf, sizeof buf), sb);
      }
      expect *= t->shape[i];
    }
  }
  DSC_CHECK(t->data != NULL || dsc_numel(t) == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected data, got a NULL pointer for %lld elements", arg,
            (long long)dsc_numel(t));
  /* the byte extent [data + byte_offset, + bytes) must not wrap the address space */
  size_t bytes = 0;
  int ok = dsc_tensor_nbytes(t, &bytes);
  size_t end = dsc_caddz((size_t)t->byte_offset, bytes, &ok);
  (void)dsc_caddz((size_t)(uintptr_t)t->data, end, &ok);
  DSC_CHECK(ok, DSC_ERR_SHAPE, fn,
            "%s: expected a byte extent that fits in the address space, got %s of %s at %p + "
            "byte_offset %llu",
            arg, dsc_shape_str(t, buf, sizeof buf), dsc_dtype_name(dt), t->data,
            (unsigned long long)t->byte_offset);
  return DSC_OK;
}

/* ---- aliasing ------------------------------------------------------------------- */

typedef struct {
  uintptr_t lo, hi; /* [lo, hi) */
} byte_range;

/* 0 when t is NULL or empty (nothing to overlap). */
static int range_of(const DLTensor *t, byte_range *r) {
  size_t bytes = 0;
  if (!t || !dsc_tensor_nbytes(t, &bytes) || bytes == 0 || !t->data) return 0;
  r->lo = (uintptr_t)t->data + (uintptr_t)t->byte_offset;
  r->hi = r->lo + (uintptr_t)bytes;
  return 1;
}

int dsc_tensor_byte_range(const DLTensor *t, uintptr_t *lo, uintptr_t *hi) {
  byte_range r;
  if (!range_of(t, &r)) return 0;
  *lo = r.lo, *hi = r.hi;
  return 1;
}

static int same_device(const DLTensor *a, const DLTensor *b) {
  return a->device.device_type == b->device.device_type &&
         (a->device.device_type == kDLCPU || a->device.device_id == b->device.device_id);
}

/* 1 when out and in share at least one byte. */
static int overlaps(const DLTensor *out, const DLTensor *in) {
  byte_range a, b;
  if (!range_of(out, &a) || !range_of(in, &b) || !same_device(out, in)) return 0;
  return a.lo < b.hi && b.lo < a.hi;
}

dsc_status dsc_check_no_overlap(const char *fn, const char *out_name, const DLTensor *out,
                                const char *in_name, const DLTensor *in) {
  DSC_CHECK(!overlaps(out, in), DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected memory that does not overlap %s, got an overlapping range (pass a "
            "fresh array as the output)",
            out_name, in_name);
  return DSC_OK;
}

dsc_status dsc_check_inplace_or_disjoint(const char *fn, const char *out_name,
                                         const DLTensor *out, const char *in_name,
                                         const DLTensor *in) {
  if (!overlaps(out, in)) return DSC_OK;
  int exact = (uintptr_t)out->data + (uintptr_t)out->byte_offset ==
                  (uintptr_t)in->data + (uintptr_t)in->byte_offset &&
              dsc_tensor_dtype(out) == dsc_tensor_dtype(in) && out->ndim == in->ndim;
  for (int i = 0; exact && i < out->ndim; ++i) exact = out->shape[i] == in->shape[i];
  DSC_CHECK(exact, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected either %s itself (in place) or memory that does not overlap it, got a "
            "partially overlapping range (pass %s or a fresh array as the output)",
            out_name, in_name, in_name);
  return DSC_OK;
}

dsc_status dsc_check_ndim(const char *fn, const char *arg, const DLTensor *t, int min_ndim,
                          int max_ndim, const char *what) {
  char buf[256];
  if (t->ndim >= min_ndim && t->ndim <= max_ndim) return DSC_OK;
  if (min_ndim == max_ndim)
    return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected %d dims %s, got %d dims %s", arg, min_ndim,
                     what, (int)t->ndim, dsc_shape_str(t, buf, sizeof buf));
  return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected %d to %d dims %s, got %d dims %s", arg,
                   min_ndim, max_ndim, what, (int)t->ndim, dsc_shape_str(t, buf, sizeof buf));
}

dsc_status dsc_check_shape(const char *fn, const char *arg, const DLTensor *t, int ndim,
                           const int64_t *shape) {
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; ++i) ok = t->shape[i] == shape[i];
  if (ok) return DSC_OK;
  DLTensor want;
  memset(&want, 0, sizeof want);
  want.ndim = ndim;
  want.shape = (int64_t *)shape;
  char a[256], b[256];
  return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected shape %s, got %s", arg,
                   dsc_shape_str(&want, a, sizeof a), dsc_shape_str(t, b, sizeof b));
}

dsc_status dsc_check_same_shape(const char *fn, const char *arg, const DLTensor *t,
                                const char *ref_arg, const DLTensor *ref) {
  int ok = t->ndim == ref->ndim;
  for (int i = 0; ok && i < t->ndim; ++i) ok = t->shape[i] == ref->shape[i];
  if (ok) return DSC_OK;
  char a[256], b[256];
  return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected the shape of %s %s, got %s", arg, ref_arg,
                   dsc_shape_str(ref, a, sizeof a), dsc_shape_str(t, b, sizeof b));
}

dsc_status dsc_check_same_dtype(const char *fn, const char *arg, const DLTensor *t,
                                const char *ref_arg, const DLTensor *ref) {
  dsc_dtype a = dsc_tensor_dtype(t), b = dsc_tensor_dtype(ref);
  DSC_CHECK(a == b, DSC_ERR_DTYPE, fn, "%s: expected the dtype of %s (%s), got %s", arg, ref_arg,
            dsc_dtype_name(b), dsc_dtype_name(a));
  return DSC_OK;
}

dsc_status dsc_check_disjoint(const char *fn, const char *out_name, const DLTensor *out, ...) {
  va_list ap;
  va_start(ap, out);
  dsc_status st = DSC_OK;
  for (const char *name = va_arg(ap, const char *); name != NULL && st == DSC_OK;
       name = va_arg(ap, const char *)) {
    const DLTensor *in = va_arg(ap, const DLTensor *);
    st = dsc_check_no_overlap(fn, out_name, out, name, in);
  }
  va_end(ap);
  return st;
}

dsc_status dsc_check_outputs_disjoint(const char *fn, int n_out, const dsc_named_tensor *outs,
                                      int n_in, const dsc_named_tensor *ins) {
  for (int i = 0; i < n_out; ++i) {
    for (int j = 0; j < n_in; ++j)
      DSC_TRY(dsc_check_no_overlap(fn, outs[i].name, outs[i].t, ins[j].name, ins[j].t));
    for (int j = 0; j < i; ++j)
      DSC_TRY(dsc_check_no_overlap(fn, outs[i].name, outs[i].t, outs[j].name, outs[j].t));
  }
  return DSC_OK;
}
