/*
 * example.c -- calling deepseek_c from plain C through its ABI only.
 *
 * Build against an installed package:
 *   inc=$(python -c "import deepseek_c as d; print(d.get_include())")
 *   lib=$(python -c "import deepseek_c as d, os; print(os.path.dirname(d.get_library()))")
 *   cc -std=c11 example.c -I"$inc" -L"$lib" -ldeepseek_c -Wl,-rpath,"$lib" -lm -o example
 *
 * It normalizes a small batch with RMSNorm, projects it with a linear layer, shows
 * the error message a bad argument produces, and exits 0 when everything checks.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <deepseek_c.h>

/* A CPU float32 row-major DLTensor over caller memory. */
static DLTensor view(float *data, int ndim, int64_t *shape, int64_t *strides) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = kDLFloat;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = strides;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return t;
}

int main(void) {
  enum { N = 2, D = 4, O = 3 };
  float x[N * D] = {1, 2, 3, 4, -1, 0.5f, 0, 2};
  float w[D] = {1, 1, 1, 1};
  float y[N * D], proj[O * D], z[N * O];
  for (int i = 0; i < O * D; ++i) proj[i] = (float)(i % 5) - 2.0f;

  dsc_context *ctx = NULL;
  dsc_context_options opt;
  memset(&opt, 0, sizeof opt);
  opt.size = sizeof opt;
  opt.device_type = kDLCPU;
  if (dsc_context_create(&opt, &ctx) != DSC_OK) {
    fprintf(stderr, "context: %s\n", dsc_last_error());
    return 1;
  }

  int64_t sx[2] = {N, D}, stx[2], sw[1] = {D}, stw[1], sp[2] = {O, D}, stp[2], sz[2] = {N, O}, stz[2], sty[2];
  DLTensor tx = view(x, 2, sx, stx), tw = view(w, 1, sw, stw), ty = view(y, 2, sx, sty);
  DLTensor tp = view(proj, 2, sp, stp), tz = view(z, 2, sz, stz);

  int ok = 1;
  if (dsc_rms_norm_forward(ctx, &tx, &tw, 1e-6f, &ty, NULL) != DSC_OK ||
      dsc_linear_forward(ctx, &ty, &tp, &tz) != DSC_OK) {
    fprintf(stderr, "op failed: %s\n", dsc_last_error());
    dsc_context_destroy(ctx);
    return 1;
  }
  for (int i = 0; i < N; ++i) {
    double ss = 0;
    for (int j = 0; j < D; ++j) ss += (double)y[i * D + j] * y[i * D + j];
    printf("row %d: rms after RMSNorm = %.6f, projected = [%.4f, %.4f, %.4f]\n", i, sqrt(ss / D),
           z[i * O], z[i * O + 1], z[i * O + 2]);
    ok &= fabs(sqrt(ss / D) - 1.0) < 1e-4;
  }

  /* A bad argument is a status and a message, never a crash. */
  int64_t bad[1] = {D + 1};
  DLTensor tb = view(w, 1, bad, stw);
  dsc_status s = dsc_rms_norm_forward(ctx, &tx, &tb, 1e-6f, &ty, NULL);
  printf("bad weight -> %s: %s\n", dsc_status_string(s), dsc_last_error());
  ok &= s == DSC_ERR_SHAPE;

  dsc_context_destroy(ctx);
  printf(ok ? "example: OK\n" : "example: FAILED\n");
  return ok ? 0 : 1;
}
