/*
 * ops/adamw.c -- validation and dispatch of the optimizer: the global gradient norm and
 * one AdamW step (with optional global-norm clipping) over a list of tensors.
 *
 * Everything is checked before anything is written, so a failing call leaves the
 * parameters and moments untouched. The global norm sums the backend's per-tensor
 * float64 sums of squares in list order (deterministic).
 *
 * Legend: n tensors in the list; each tensor is updated as a flat array.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"

/* sqrt(sum over the list of sum(g^2)), the per-tensor sums added in list order. */
static dsc_status global_norm(dsc_context *ctx, const char *fn, int32_t n,
                              const DLTensor *const *tensors, double *norm) {
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx) && n > 0) {
    /* one host wait for the whole list, the same sum as the loop below */
    const float **g = (const float **)malloc((size_t)n * sizeof *g);
    int64_t *numel = (int64_t *)malloc((size_t)n * sizeof *numel);
    dsc_status st = (g && numel) ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    for (int32_t i = 0; i < n && st == DSC_OK; ++i) {
      numel[i] = dsc_numel(tensors[i]);
      g[i] = (const float *)dsc_data(tensors[i]);
    }
    double total = 0.0;
    if (st == DSC_OK) st = dsc_cuda_sumsq_list(ctx, n, g, numel, &total);
    free(g);
    free(numel);
    *norm = sqrt(total);
    return st;
  }
#endif
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t numel = dsc_numel(tensors[i]);
    if (numel == 0) continue;
    double s = 0.0;
    DSC_TRY(DSC_DISPATCH(sumsq, ctx, numel, (const float *)dsc_data(tensors[i]), &s));
    total += s;
  }
  *norm = sqrt(total);
  return DSC_OK;
}

dsc_status dsc_global_norm(dsc_context *ctx, int32_t n, const DLTensor *const *tensors,
                           float *norm) {
  static const char *const FN = "dsc_global_norm";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(norm != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "norm: expected a pointer, got NULL");
  DSC_CHECK(n >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "n: expected >= 0, got %d", (int)n);
  DSC_CHECK(n == 0 || tensors != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "tensors: expected an array of %d tensors, got NULL", (int)n);
  char arg[48];
  for (int32_t i = 0; i < n; ++i) {
    snprintf(arg, sizeof arg, "tensors[%d]", (int)i);
    DSC_TRY(dsc_check_tensor(ctx, FN, arg, tensors[i], DSC_DT(DSC_DTYPE_FLOAT32)));
  }
  double nrm = 0.0;
  DSC_TRY(global_norm(ctx, FN, n, tensors, &nrm));
  *norm = (float)nrm;
  return DSC_OK;
}

/* Checks one parameter's four tensors (param, grad, and the two moments). */
static dsc_status check_entry(dsc_context *ctx, const char *fn, int32_t i, const DLTensor *p,
                              const DLTensor *g, const DLTensor *m, const DLTensor *v) {
  char ap[40], ag[40], am[40], av[40];
  snprintf(ap, sizeof ap, "params[%d]", (int)i);
  snprintf(ag, sizeof ag, "grads[%d]", (int)i);
  snprintf(am, sizeof am, "exp_avg[%d]", (int)i);
  snprintf(av, sizeof av, "exp_avg_sq[%d]", (int)i);
  DSC_TRY(dsc_check_tensor(ctx, fn, ap, p, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, fn, ag, g, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, fn, am, m, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, fn, av, v, DSC_DT_FLOAT));
  /* The backend takes one moment dtype for both moments of a tensor. */
  DSC_TRY(dsc_check_same_dtype(fn, av, v, am, m));
  DSC_TRY(dsc_check_same_shape(fn, ag, g, ap, p));
  DSC_TRY(dsc_check_same_shape(fn, am, m, ap, p));
  DSC_TRY(dsc_check_same_shape(fn, av, v, ap, p));
  return DSC_OK;
}

/* One tensor's bytes, for the aliasing check: which list (0 params, 1 exp_avg,
 * 2 exp_avg_sq, 3 grads) and its index. */
typedef struct {
  uintptr_t lo, hi;
  int32_t list, index;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = (const span *)a, *y = (const span *)b;
  return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : 0;
}

static const char *span_name(const span *s, char *buf, size_t n) {
  static const char *const list[4] = {"params", "exp_avg", "exp_avg_sq", "grads"};
  snprintf(buf, n, "%s[%d]", list[s->list], (int)s->index);
  return buf;
}

/* Every tensor the step writes (params, exp_avg, exp_avg_sq) shares no byte with any other
 * tensor of the call: updating one would change another's input (or update the same
 * memory twice). Sorted spans, so O(n log n) for the model's long lists. */
static dsc_status check_no_aliasing(const char *fn, int32_t n, DLTensor *const *params,
                                    const DLTensor *const *grads, DLTensor *const *exp_avg,
                                    DLTensor *const *exp_avg_sq) {
  int ok = 1;
  const size_t bytes = dsc_cbytes(dsc_cmul(4, n, &ok), sizeof(span), &ok);
  span *w = ok ? (span *)malloc(bytes ? bytes : 1) : NULL;
  if (!w) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  const DLTensor *const *lists[4] = {(const DLTensor *const *)params,
                                     (const DLTensor *const *)exp_avg,
                                     (const DLTensor *const *)exp_avg_sq, grads};
  int64_t nw = 0;
  for (int32_t l = 0; l < 4; ++l)
    for (int32_t i = 0; i < n; ++i)
      if (dsc_tensor_byte_range(lists[l][i], &w[nw].lo, &w[nw].hi)) w[nw].list = l, w[nw++].index = i;
  qsort(w, (size_t)nw, sizeof *w, span_cmp);
  /* a span overlaps an earlier one iff it starts before the furthest end seen so far;
   * grads may share memory with grads (both only read) */
  dsc_status st = DSC_OK;
  int64_t far = -1;       /* span reaching furthest among the written ones so far */
  int64_t far_any = -1;   /* ... among all */
  for (int64_t k = 0; k < nw && st == DSC_OK; ++k) {
    const int written = w[k].list != 3;
    const int64_t prev = written ? far_any : far;
    if (prev >= 0 && w[k].lo < w[prev].hi) {
      char a[48], b[48];
      const span *out = written ? &w[k] : &w[prev], *in = written ? &w[prev] : &w[k];
      st = dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                     "%s: expected memory that does not overlap %s, got an overlapping range "
                     "(each tensor the step updates needs its own memory)",
                     span_name(out, a, sizeof a), span_name(in, b, sizeof b));
    }
    if (written && (far < 0 || w[k].hi > w[far].hi)) far = k;
    if (far_any < 0 || w[k].hi > w[far_any].hi) far_any = k;
  }
  free(w);
  return st;
}

dsc_status dsc_adamw_step(dsc_context *ctx, const dsc_adamw_params *p, int32_t n,
                          DLTensor *const *params, const DLTensor *const *grads,
                          DLTensor *const *exp_avg, DLTensor *const *exp_avg_sq,
                          float *grad_norm) {
  static const char *const FN = "dsc_adamw_step";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "p: expected AdamW parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_adamw_params), DSC_ERR_INVALID_ARGUMENT, FN,
            "p->size: expected sizeof(dsc_adamw_params) = %zu, got %zu", sizeof(dsc_adamw_params),
            p->size);
  DSC_CHECK(n >= 1, DSC_ERR_INVALID_ARGUMENT, FN, "n: expected >= 1 tensors, got %d", (int)n);
  DSC_CHECK(params != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "params: expected an array of %d tensors, got NULL", (int)n);
  DSC_CHECK(grads != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "grads: expected an array of %d tensors, got NULL", (int)n);
  DSC_CHECK(exp_avg != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "exp_avg: expected an array of %d tensors, got NULL", (int)n);
  DSC_CHECK(exp_avg_sq != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "exp_avg_sq: expected an array of %d tensors, got NULL", (int)n);
  for (int32_t i = 0; i < n; ++i)
    DSC_TRY(check_entry(ctx, FN, i, params[i], grads[i], exp_avg[i], exp_avg_sq[i]));
  DSC_TRY(check_no_aliasing(FN, n, params, grads, exp_avg, exp_avg_sq));

  DSC_CHECK(isfinite(p->lr) && p->lr >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->lr: expected a finite number >= 0, got %g", (double)p->lr);
  DSC_CHECK(p->beta1 >= 0.0f && p->beta1 < 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->beta1: expected a number in [0, 1), got %g", (double)p->beta1);
  DSC_CHECK(p->beta2 >= 0.0f && p->beta2 < 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->beta2: expected a number in [0, 1), got %g", (double)p->beta2);
  DSC_CHECK(isfinite(p->eps) && p->eps > 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->eps: expected a finite number > 0, got %g", (double)p->eps);
  DSC_CHECK(isfinite(p->weight_decay) && p->weight_decay >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->weight_decay: expected a finite number >= 0, got %g", (double)p->weight_decay);
  DSC_CHECK(p->step >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->step: expected a 1-based step >= 1, got %lld", (long long)p->step);
  DSC_CHECK(isfinite(p->max_grad_norm) && p->max_grad_norm >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->max_grad_norm: expected a finite number >= 0 (0: no clipping), got %g",
            (double)p->max_grad_norm);

  /* Global-norm clipping: the grads are scaled inside the update, never modified. The
   * norm is also computed when only reported. A NaN norm gives coefficient 1, so the
   * NaN reaches the parameters instead of being hidden (as torch's clip_grad_norm_). */
  float gscale = 1.0f;
  if (p->max_grad_norm > 0.0f || grad_norm != NULL) {
    double norm = 0.0;
    DSC_TRY(global_norm(ctx, FN, n, grads, &norm));
    if (grad_norm) *grad_norm = (float)norm;
    if (p->max_grad_norm > 0.0f) {
      const double coef = (double)p->max_grad_norm / (norm + 1e-6);
      if (coef < 1.0) gscale = (float)coef;
    }
  }
  /* Bias corrections in double: beta^step for large steps underflows gracefully. */
  const float bc1 = (float)(1.0 - pow((double)p->beta1, (double)p->step));
  const float bc2 = (float)(1.0 - pow((double)p->beta2, (double)p->step));

  for (int32_t i = 0; i < n; ++i) {
    const int64_t numel = dsc_numel(params[i]);
    if (numel == 0) continue;
    float *pp = (float *)dsc_data(params[i]);
    const float *gp = (const float *)dsc_data(grads[i]);
    const dsc_dtype mom_dt = dsc_tensor_dtype(exp_avg[i]);
    void *mp = dsc_data(exp_avg[i]), *vp = dsc_data(exp_avg_sq[i]);
    DSC_TRY(DSC_DISPATCH(adamw, ctx, numel, pp, gp, mom_dt, mp, vp, p->lr, p->beta1, p->beta2, p->eps,
                         p->weight_decay, bc1, bc2, gscale, NULL));
  }
  return DSC_OK;
}
