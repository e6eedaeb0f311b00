/*
 * test_core.c -- C-level tests of the public ABI on the CPU backend, independent of
 * Python. Each check compares with a plain double-precision loop written here.
 * Also built with ASan/UBSan by tests/c/run_sanitized.sh (CI).
 * Closing line: "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "deepseek_c.h"
#include "check.h"


/* A CPU float32 DLTensor over caller memory, row-major. */
typedef struct {
  DLTensor t;
  int64_t shape[4];
  int64_t strides[4];
} view;

static DLTensor *mk(view *v, void *data, DLDataType dt, int ndim, const int64_t *shape) {
  memset(v, 0, sizeof *v);
  v->t.data = data;
  v->t.device.device_type = kDLCPU;
  v->t.ndim = ndim;
  v->t.dtype = dt;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    v->shape[i] = shape[i];
    v->strides[i] = s;
    s *= shape[i];
  }
  v->t.shape = v->shape;
  v->t.strides = v->strides;
  return &v->t;
}

static const DLDataType F32 = {kDLFloat, 32, 1};
static const DLDataType I32 = {kDLInt, 32, 1};

/* xorshift: deterministic inputs without touching libc's global rand state */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static double max_abs_diff(const float *a, const double *b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= m)) m = d; /* NaN propagates */
  }
  return m;
}

static void test_status_and_context(void) {
  CHECK(strcmp(dsc_status_string(DSC_ERR_SHAPE), "DSC_ERR_SHAPE") == 0, "status name");
  dsc_context *ctx = NULL;
  dsc_status s = dsc_context_create(NULL, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT, "create(NULL out) -> %d", (int)s);
  CHECK(strstr(dsc_last_error(), "dsc_context_create") != NULL, "message names fn: %s", dsc_last_error());

  dsc_context_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.device_type = 99;
  s = dsc_context_create(&o, &ctx);
  CHECK(s == DSC_ERR_DEVICE && ctx == NULL, "bad device type -> %d", (int)s);

  o.device_type = kDLCPU;
  s = dsc_context_create(&o, &ctx);
  CHECK(s == DSC_OK && ctx != NULL, "cpu context: %s", dsc_last_error());
  DLDevice d;
  CHECK(dsc_context_get_device(ctx, &d) == DSC_OK && d.device_type == kDLCPU, "device");
  /* math mode: DEFAULT on a new context, a set/get round trip, bad values refused */
  int32_t mode = -1;
  CHECK(dsc_context_get_math_mode(ctx, &mode) == DSC_OK && mode == DSC_MATH_DEFAULT, "new mode %d", (int)mode);
  CHECK(dsc_context_set_math_mode(ctx, DSC_MATH_BF16_OPERANDS) == DSC_OK, "set: %s", dsc_last_error());
  CHECK(dsc_context_get_math_mode(ctx, &mode) == DSC_OK && mode == DSC_MATH_BF16_OPERANDS, "got %d", (int)mode);
  s = dsc_context_set_math_mode(ctx, 2);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT &&
            err_has("dsc_context_set_math_mode: mode: expected DSC_MATH_DEFAULT (0) or "
                    "DSC_MATH_BF16_OPERANDS (1), got 2"),
        "bad mode -> %d: %s", (int)s, dsc_last_error());
  s = dsc_context_set_math_mode(ctx, -1);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("got -1"), "negative mode: %s", dsc_last_error());
  CHECK(dsc_context_get_math_mode(ctx, &mode) == DSC_OK && mode == DSC_MATH_BF16_OPERANDS, "kept %d", (int)mode);
  CHECK(dsc_context_set_math_mode(ctx, DSC_MATH_DEFAULT) == DSC_OK &&
            dsc_context_get_math_mode(ctx, &mode) == DSC_OK && mode == DSC_MATH_DEFAULT,
        "back to default %d", (int)mode);
  s = dsc_context_set_math_mode(NULL, DSC_MATH_DEFAULT);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("dsc_context_set_math_mode: ctx"), "NULL ctx: %s", dsc_last_error());
  s = dsc_context_get_math_mode(ctx, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("dsc_context_get_math_mode"), "NULL out: %s", dsc_last_error());
  void *ws = NULL;
  dsc_context_destroy(ctx);
  (void)ws;

  dsc_build_info bi;
  memset(&bi, 0, sizeof bi);
  bi.size = sizeof bi;
  CHECK(dsc_get_build_info(&bi) == DSC_OK && strcmp(bi.version, "0.1.0") == 0, "build info");
  int32_t n = -1;
  s = dsc_cuda_device_count(&n);
  CHECK(n >= 0 && (s == DSC_OK || strlen(dsc_last_error()) > 0), "device count with a reason");
}

static void test_dtypes(void) {
  DLDataType bf = {kDLBfloat, 16, 1}, e4 = {kDLFloat8_e4m3fn, 8, 1}, v2 = {kDLFloat, 32, 2};
  CHECK(dsc_dtype_from_dlpack(F32) == DSC_DTYPE_FLOAT32, "f32");
  CHECK(dsc_dtype_from_dlpack(bf) == DSC_DTYPE_BFLOAT16, "bf16");
  CHECK(dsc_dtype_from_dlpack(e4) == DSC_DTYPE_FLOAT8_E4M3FN, "e4m3fn");
  CHECK(dsc_dtype_from_dlpack(v2) == DSC_DTYPE_INVALID, "lanes 2 rejected");
  for (int t = 1; t <= 11; ++t) {
    DLDataType dl = dsc_dtype_to_dlpack((dsc_dtype)t);
    CHECK(dsc_dtype_from_dlpack(dl) == (dsc_dtype)t, "round trip of %s", dsc_dtype_name((dsc_dtype)t));
  }
}

static void test_rms_norm(dsc_context *ctx) {
  enum { N = 5, D = 37 };
  float x[N * D], w[D], y[N * D], rstd[N], dy[N * D], dx[N * D], dw[D];
  for (int i = 0; i < N * D; ++i) { x[i] = frand(); dy[i] = frand(); y[i] = NAN; dx[i] = NAN; }
  for (int j = 0; j < D; ++j) { w[j] = 1.0f + 0.3f * frand(); dw[j] = NAN; }
  view vx, vw, vy, vr, vdy, vdx, vdw;
  int64_t sx[2] = {N, D}, sw[1] = {D}, sr[1] = {N};
  DLTensor *tx = mk(&vx, x, F32, 2, sx), *tw = mk(&vw, w, F32, 1, sw), *ty = mk(&vy, y, F32, 2, sx);
  DLTensor *tr = mk(&vr, rstd, F32, 1, sr);
  dsc_status s = dsc_rms_norm_forward(ctx, tx, tw, 1e-6f, ty, tr);
  CHECK(s == DSC_OK, "rms fwd: %s", dsc_last_error());
  double ref[N * D], rdx[N * D], rdw[D] = {0};
  for (int i = 0; i < N; ++i) {
    double ss = 0, gx = 0;
    for (int j = 0; j < D; ++j) ss += (double)x[i * D + j] * x[i * D + j];
    double r = 1.0 / sqrt(ss / D + 1e-6);
    for (int j = 0; j < D; ++j) {
      ref[i * D + j] = w[j] * x[i * D + j] * r;
      gx += (double)dy[i * D + j] * w[j] * x[i * D + j];
      rdw[j] += (double)dy[i * D + j] * x[i * D + j] * r;
    }
    for (int j = 0; j < D; ++j)
      rdx[i * D + j] = r * (dy[i * D + j] * w[j] - x[i * D + j] * r * r * gx / D);
  }
  CHECK(max_abs_diff(y, ref, N * D) < 1e-5, "rms fwd values: %g", max_abs_diff(y, ref, N * D));
  s = dsc_rms_norm_backward(ctx, mk(&vdy, dy, F32, 2, sx), tx, tw, tr, 1e-6f, mk(&vdx, dx, F32, 2, sx),
                            mk(&vdw, dw, F32, 1, sw));
  CHECK(s == DSC_OK, "rms bwd: %s", dsc_last_error());
  CHECK(max_abs_diff(dx, rdx, N * D) < 1e-5, "rms dx: %g", max_abs_diff(dx, rdx, N * D));
  CHECK(max_abs_diff(dw, rdw, D) < 1e-5, "rms dw: %g", max_abs_diff(dw, rdw, D));

  /* bad input: wrong weight length, wrong dtype, non-contiguous, NULL */
  int64_t bad[1] = {D - 1};
  s = dsc_rms_norm_forward(ctx, tx, mk(&vw, w, F32, 1, bad), 1e-6f, ty, NULL);
  CHECK(s == DSC_ERR_SHAPE && strstr(dsc_last_error(), "dsc_rms_norm_forward: w: expected shape (37), got (36)"),
        "shape message: %s", dsc_last_error());
  DLTensor xi = *tx;
  xi.dtype = I32;
  s = dsc_rms_norm_forward(ctx, &xi, mk(&vw, w, F32, 1, sw), 1e-6f, ty, NULL);
  CHECK(s == DSC_ERR_DTYPE && strstr(dsc_last_error(), "x: expected dtype float32 or bfloat16, got int32"),
        "dtype message: %s", dsc_last_error());
  view vs;
  DLTensor *ts = mk(&vs, x, F32, 2, sx);
  vs.strides[0] = 2 * D; /* every other row: not contiguous */
  s = dsc_rms_norm_forward(ctx, ts, tw, 1e-6f, ty, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "C-contiguous"), "strides: %s",
        dsc_last_error());
  s = dsc_rms_norm_forward(ctx, NULL, tw, 1e-6f, ty, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "x: expected a tensor, got NULL"),
        "null: %s", dsc_last_error());
  s = dsc_rms_norm_forward(NULL, tx, tw, 1e-6f, ty, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT, "null ctx");
  s = dsc_rms_norm_forward(ctx, tx, tw, NAN, ty, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "eps"), "eps: %s", dsc_last_error());
}

static void test_rope_yarn(dsc_context *ctx) {
  dsc_rope_params p;
  dsc_rope_params_default(&p, 64);
  p.factor = 40.0f;
  p.mscale = 1.0f;
  p.mscale_all_dim = 1.0f;
  float inv[32], base[32];
  CHECK(dsc_rope_inv_freq(&p, inv, 32) == DSC_OK, "yarn inv_freq: %s", dsc_last_error());
  dsc_rope_params q;
  dsc_rope_params_default(&q, 64);
  CHECK(dsc_rope_inv_freq(&q, base, 32) == DSC_OK, "plain inv_freq");
  int ok = 1;
  for (int i = 0; i <= 10; ++i) ok &= fabsf(inv[i] - base[i]) <= 1e-7f * base[i];
  for (int i = 23; i < 32; ++i) ok &= fabsf(inv[i] - base[i] / 40.0f) <= 1e-6f * base[i];
  CHECK(ok, "YaRN: pairs <= 10 kept, >= 23 divided by 40");
  CHECK(fabsf(base[1] - powf(10000.0f, -2.0f / 64.0f)) < 1e-7f, "theta_1");
  float sm = 0, cs = 0;
  CHECK(dsc_rope_softmax_scale(&p, 192, &sm) == DSC_OK && fabsf(sm - 0.1352338f) < 1e-6f,
        "V3 softmax scale %.7f", sm);
  CHECK(dsc_rope_cos_sin_scale(&p, &cs) == DSC_OK && fabsf(cs - 1.0f) < 1e-7f, "cos/sin scale");
  CHECK(dsc_rope_inv_freq(&p, inv, 31) == DSC_ERR_SHAPE, "n must be dim/2");

  /* forward then backward is the identity, on an interleaved [B=2, T=3, H=2, D=8] */
  enum { B = 2, T = 3, H = 2, D = 8 };
  float x[B * T * H * D], y[B * T * H * D], z[B * T * H * D];
  int32_t pos[B * T];
  for (int i = 0; i < B * T * H * D; ++i) x[i] = frand();
  for (int i = 0; i < B * T; ++i) pos[i] = 7 * i + 1;
  view vx, vp, vy, vz;
  int64_t sx[4] = {B, T, H, D}, sp[2] = {B, T};
  dsc_rope_params r;
  dsc_rope_params_default(&r, D);
  dsc_status s = dsc_rope_forward(ctx, &r, mk(&vx, x, F32, 4, sx), mk(&vp, pos, I32, 2, sp), mk(&vy, y, F32, 4, sx));
  CHECK(s == DSC_OK, "rope fwd: %s", dsc_last_error());
  s = dsc_rope_backward(ctx, &r, &vy.t, &vp.t, mk(&vz, z, F32, 4, sx));
  CHECK(s == DSC_OK, "rope bwd: %s", dsc_last_error());
  double xd[B * T * H * D];
  for (int i = 0; i < B * T * H * D; ++i) xd[i] = x[i];
  CHECK(max_abs_diff(z, xd, B * T * H * D) < 1e-5, "rope inverse: %g", max_abs_diff(z, xd, B * T * H * D));
  /* first pair of token (0,0), head 0, rotated by pos 1 * theta_0 = 1 rad */
  double c = cos(1.0), sn = sin(1.0);
  CHECK(fabs(y[0] - (x[0] * c - x[1] * sn)) < 1e-5 && fabs(y[1] - (x[0] * sn + x[1] * c)) < 1e-5,
        "interleaved pair rotation");
  pos[2] = -1;
  s = dsc_rope_forward(ctx, &r, &vx.t, &vp.t, &vy.t);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "positions"), "negative position: %s",
        dsc_last_error());
}

static void test_matmul_linear(dsc_context *ctx) {
  enum { M = 7, K = 13, N = 5 };
  float a[M * K], b[K * N], c[M * N], w[N * K], y[M * N];
  for (int i = 0; i < M * K; ++i) a[i] = frand();
  for (int i = 0; i < K * N; ++i) b[i] = frand();
  for (int i = 0; i < N * K; ++i) w[i] = frand();
  for (int i = 0; i < M * N; ++i) c[i] = y[i] = NAN;
  view va, vb, vc, vw, vy;
  int64_t sa[2] = {M, K}, sb[2] = {K, N}, sc[2] = {M, N}, sw[2] = {N, K};
  dsc_status s = dsc_matmul(ctx, mk(&va, a, F32, 2, sa), mk(&vb, b, F32, 2, sb), mk(&vc, c, F32, 2, sc), 0, 0, 1.0f, 0.0f);
  CHECK(s == DSC_OK, "matmul: %s", dsc_last_error());
  double ref[M * N], refy[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = 0, accy = 0;
      for (int k = 0; k < K; ++k) {
        acc += (double)a[i * K + k] * b[k * N + j];
        accy += (double)a[i * K + k] * w[j * K + k];
      }
      ref[i * N + j] = acc;
      refy[i * N + j] = accy;
    }
  CHECK(max_abs_diff(c, ref, M * N) < 1e-4, "matmul values %g", max_abs_diff(c, ref, M * N));
  s = dsc_linear_forward(ctx, &va.t, mk(&vw, w, F32, 2, sw), mk(&vy, y, F32, 2, sc));
  CHECK(s == DSC_OK && max_abs_diff(y, refy, M * N) < 1e-4, "linear: %s", dsc_last_error());
  s = dsc_matmul(ctx, &va.t, &va.t, &vc.t, 0, 0, 1.0f, 0.0f);
  CHECK(s == DSC_ERR_SHAPE, "K mismatch -> shape error: %s", dsc_last_error());
}

static void test_cross_entropy(dsc_context *ctx) {
  enum { N = 6, V = 11 };
  float logits[N * V], dl[N * V], loss = NAN;
  int32_t tgt[N] = {3, -100, 0, 10, 5, 5};
  for (int i = 0; i < N * V; ++i) { logits[i] = 3.0f * frand(); dl[i] = NAN; }
  view vl, vt, vloss, vd;
  int64_t sl[2] = {N, V}, st[1] = {N};
  dsc_status s = dsc_cross_entropy(ctx, mk(&vl, logits, F32, 2, sl), mk(&vt, tgt, I32, 1, st), -100, 1.0f,
                                   mk(&vloss, &loss, F32, 0, NULL), mk(&vd, dl, F32, 2, sl), NULL);
  CHECK(s == DSC_OK, "ce: %s", dsc_last_error());
  double total = 0;
  double rdl[N * V];
  for (int i = 0; i < N; ++i) {
    double m = -INFINITY, se = 0;
    for (int j = 0; j < V; ++j) m = fmax(m, logits[i * V + j]);
    for (int j = 0; j < V; ++j) se += exp(logits[i * V + j] - m);
    double lse = m + log(se);
    for (int j = 0; j < V; ++j)
      rdl[i * V + j] = tgt[i] == -100 ? 0.0 : (exp(logits[i * V + j] - lse) - (j == tgt[i])) / 5.0;
    if (tgt[i] != -100) total += lse - logits[i * V + tgt[i]];
  }
  CHECK(fabs(loss - total / 5.0) < 1e-5, "ce loss %g vs %g", (double)loss, total / 5.0);
  CHECK(max_abs_diff(dl, rdl, N * V) < 1e-6, "ce dlogits %g", max_abs_diff(dl, rdl, N * V));
  tgt[4] = 11;
  s = dsc_cross_entropy(ctx, &vl.t, &vt.t, -100, 1.0f, &vloss.t, NULL, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "targets"), "target range: %s",
        dsc_last_error());
}

static void test_embedding_adamw(dsc_context *ctx) {
  enum { V = 9, D = 4, n = 5 };
  float table[V * D], out[n * D], dout[n * D], dtable[V * D];
  int32_t ids[n] = {2, 8, 2, 0, 5};
  for (int i = 0; i < V * D; ++i) { table[i] = frand(); dtable[i] = NAN; }
  for (int i = 0; i < n * D; ++i) { dout[i] = frand(); out[i] = NAN; }
  view vi, vt, vo, vd, vdt;
  int64_t si[1] = {n}, st[2] = {V, D}, so[2] = {n, D};
  dsc_status s = dsc_embedding_forward(ctx, mk(&vi, ids, I32, 1, si), mk(&vt, table, F32, 2, st), mk(&vo, out, F32, 2, so));
  int ok = s == DSC_OK;
  for (int i = 0; i < n && ok; ++i)
    for (int j = 0; j < D; ++j) ok &= out[i * D + j] == table[ids[i] * D + j];
  CHECK(ok, "embedding gather: %s", dsc_last_error());
  s = dsc_embedding_backward(ctx, &vi.t, mk(&vd, dout, F32, 2, so), mk(&vdt, dtable, F32, 2, st));
  double ref[V * D] = {0};
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < D; ++j) ref[ids[i] * D + j] += dout[i * D + j];
  CHECK(s == DSC_OK && max_abs_diff(dtable, ref, V * D) < 1e-6, "embedding scatter-add");
  ids[3] = 9;
  s = dsc_embedding_forward(ctx, &vi.t, &vt.t, &vo.t);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "ids") && strstr(dsc_last_error(), "9"),
        "id range: %s", dsc_last_error());

  /* AdamW: one step on one tensor against the formula */
  enum { P = 10 };
  float p[P], g[P], m[P], v[P], p0[P];
  for (int i = 0; i < P; ++i) { p[i] = p0[i] = frand(); g[i] = frand(); m[i] = v[i] = 0.0f; }
  view vp, vg, vm, vv;
  int64_t sp[1] = {P};
  DLTensor *tp = mk(&vp, p, F32, 1, sp), *tm = mk(&vm, m, F32, 1, sp), *tv = mk(&vv, v, F32, 1, sp);
  const DLTensor *tg = mk(&vg, g, F32, 1, sp);
  dsc_adamw_params ap;
  memset(&ap, 0, sizeof ap);
  ap.size = sizeof ap;
  ap.lr = 0.01f; ap.beta1 = 0.9f; ap.beta2 = 0.95f; ap.eps = 1e-8f; ap.weight_decay = 0.1f; ap.step = 1;
  float gn = -1;
  s = dsc_adamw_step(ctx, &ap, 1, &tp, &tg, &tm, &tv, &gn);
  CHECK(s == DSC_OK, "adamw: %s", dsc_last_error());
  double sq = 0, err = 0;
  for (int i = 0; i < P; ++i) {
    sq += (double)g[i] * g[i];
    double mm = 0.1 * g[i], vv2 = 0.05 * (double)g[i] * g[i];
    double want = p0[i] - 0.01 * 0.1 * p0[i] - 0.01 * (mm / 0.1) / (sqrt(vv2 / 0.05) + 1e-8);
    err = fmax(err, fabs(p[i] - want));
  }
  CHECK(err < 1e-6, "adamw update err %g", err);
  CHECK(fabs(gn - sqrt(sq)) < 1e-5, "grad norm %g vs %g", (double)gn, sqrt(sq));
  ap.step = 0;
  s = dsc_adamw_step(ctx, &ap, 1, &tp, &tg, &tm, &tv, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && strstr(dsc_last_error(), "step"), "step 0: %s", dsc_last_error());
}

static void test_add(dsc_context *ctx) {
  enum { N = 37 };
  float a[N], b[N], out[N];
  for (int i = 0; i < N; ++i) { a[i] = frand(); b[i] = frand(); out[i] = NAN; }
  view va, vb, vo;
  int64_t sh[1] = {N};
  dsc_status s = dsc_add(ctx, mk(&va, a, F32, 1, sh), mk(&vb, b, F32, 1, sh), mk(&vo, out, F32, 1, sh));
  int ok = s == DSC_OK;
  for (int i = 0; i < N && ok; ++i) ok = out[i] == a[i] + b[i];
  CHECK(ok, "add: %s", dsc_last_error());
  s = dsc_add(ctx, &va.t, &vb.t, &va.t); /* in place */
  CHECK(s == DSC_OK && a[3] == out[3], "add in place");
  int64_t sh2[1] = {N - 1};
  s = dsc_add(ctx, &va.t, mk(&vb, b, F32, 1, sh2), &vo.t);
  CHECK(s == DSC_ERR_SHAPE && strstr(dsc_last_error(), "dsc_add: b"), "add shape: %s", dsc_last_error());
}

static void test_safetensors(void) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/dsc_test_%ld.safetensors", (long)rng_state % 100000);
  float a[6] = {1, 2, 3, 4, 5, 6};
  int32_t b[2] = {-7, 9};
  view va, vb;
  int64_t sa[2] = {2, 3}, sb[1] = {2};
  const char *names[2] = {"model.a", "b\"quoted"};
  const DLTensor *ts[2] = {mk(&va, a, F32, 2, sa), mk(&vb, b, I32, 1, sb)};
  const char *meta[2] = {"format", "pt"};
  dsc_status s = dsc_safetensors_save(path, 2, names, ts, 1, meta);
  CHECK(s == DSC_OK, "save: %s", dsc_last_error());
  dsc_safetensors *f = NULL;
  s = dsc_safetensors_open(path, &f);
  CHECK(s == DSC_OK && dsc_safetensors_count(f) == 2, "open: %s", dsc_last_error());
  if (f) {
    int64_t idx = -1;
    const void *data = NULL;
    const int64_t *shape = NULL;
    int32_t nd = 0;
    dsc_dtype dt = DSC_DTYPE_INVALID;
    CHECK(dsc_safetensors_find(f, "b\"quoted", &idx) == DSC_OK, "find escaped name");
    CHECK(dsc_safetensors_tensor(f, idx, NULL, &dt, &nd, &shape, &data, NULL) == DSC_OK && dt == DSC_DTYPE_INT32 &&
              nd == 1 && shape[0] == 2 && memcmp(data, b, sizeof b) == 0,
          "tensor b");
    const char *k, *v;
    CHECK(dsc_safetensors_metadata(f, 0, &k, &v) == DSC_OK && !strcmp(k, "format") && !strcmp(v, "pt"), "metadata");
    CHECK(dsc_safetensors_find(f, "nope", &idx) == DSC_ERR_INVALID_ARGUMENT, "missing name");
    dsc_safetensors_close(f);
  }
  /* truncate the file: a format error, not a crash */
  FILE *fp = fopen(path, "r+b");
  if (fp) {
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fclose(fp);
    CHECK(truncate(path, len - 3) == 0, "truncate");
    f = NULL;
    s = dsc_safetensors_open(path, &f);
    CHECK(s == DSC_ERR_FORMAT && f == NULL && strstr(dsc_last_error(), "truncated"), "truncated: %s", dsc_last_error());
  }
  remove(path);
}


/* ---- sizes and aliasing (issue 14: no crash on any size, no silent wrong answer) ---- */

/* A CPU tensor with the given shape and no strides (compact row-major by DLPack's rule):
 * lets a test describe shapes whose strides would overflow. */
static DLTensor *raw(view *v, void *data, DLDataType dt, int ndim, const int64_t *shape) {
  memset(v, 0, sizeof *v);
  v->t.data = data;
  v->t.device.device_type = kDLCPU;
  v->t.ndim = ndim;
  v->t.dtype = dt;
  for (int i = 0; i < ndim; ++i) v->shape[i] = shape[i];
  v->t.shape = v->shape;
  return &v->t;
}

static void test_huge_shapes(dsc_context *ctx) {
  float x[64], w[4];
  for (int i = 0; i < 64; ++i) x[i] = frand();
  for (int i = 0; i < 4; ++i) w[i] = 1.0f;
  view vx, vw;
  const int64_t sw[1] = {4};
  DLTensor *tw = mk(&vw, w, F32, 1, sw);
  /* (2^62 + 1, 4) float32: the element count wraps to 4 in 64 bits; a C caller can build it */
  const int64_t wrap[2] = {((int64_t)1 << 62) + 1, 4};
  DLTensor *tx = raw(&vx, x, F32, 2, wrap);
  dsc_status s = dsc_rms_norm_forward(ctx, tx, tw, 1e-6f, tx, NULL);
  CHECK(s == DSC_ERR_SHAPE && err_has("dsc_rms_norm_forward: x: expected a shape whose size fits in 64 bits, "
                                      "got (4611686018427387905, 4) of float32"),
        "wrapping numel: %d %s", (int)s, dsc_last_error());
  /* empty, but the other dims' product wraps: rows loops would run for ever */
  const int64_t empty_wrap[3] = {0, (int64_t)1 << 62, (int64_t)1 << 62};
  s = dsc_add(ctx, raw(&vx, x, F32, 3, empty_wrap), tx, tx);
  CHECK(s == DSC_ERR_SHAPE && err_has("a: expected a shape whose size fits in 64 bits"), "empty wrap: %s",
        dsc_last_error());
  /* fits in 64 bits, beyond any address space */
  const int64_t big[1] = {(int64_t)1 << 56};
  s = dsc_rms_norm_forward(ctx, raw(&vx, x, F32, 1, big), tw, 1e-6f, tx, NULL);
  CHECK(s == DSC_ERR_SHAPE && err_has("x: expected a shape of at most 2^57 bytes"), "2^58 bytes: %s",
        dsc_last_error());
  /* a byte extent that wraps the address space */
  const int64_t s64[1] = {64};
  DLTensor *tend = raw(&vx, (void *)(~(uintptr_t)0 - 15), F32, 1, s64);
  s = dsc_add(ctx, tend, tend, tend);
  CHECK(s == DSC_ERR_SHAPE && err_has("a: expected a byte extent that fits in the address space"), "wrap: %s",
        dsc_last_error());
  /* dsc_malloc: rounding a huge request up must not wrap to a tiny block */
  void *p = (void *)1;
  s = dsc_malloc(ctx, ~(size_t)0 - 10, &p);
  CHECK(s == DSC_ERR_OUT_OF_MEMORY && p == NULL, "malloc(SIZE_MAX - 10): %d %p", (int)s, p);
}

static void v2_lite(dsc_model_config *c) {
  dsc_model_config_default(c);
  c->vocab_size = 102400, c->hidden_size = 2048, c->intermediate_size = 10944;
  c->moe_intermediate_size = 1408, c->num_hidden_layers = 27, c->num_nextn_predict_layers = 0;
  c->num_attention_heads = 16, c->q_lora_rank = 0, c->n_routed_experts = 64;
  c->n_shared_experts = 2, c->num_experts_per_tok = 6, c->first_k_dense_replace = 1;
  c->n_group = 1, c->topk_group = 1, c->topk_method = DSC_MOE_TOPK_GREEDY;
  c->scoring_func = DSC_MOE_SCORING_SOFTMAX, c->norm_topk_prob = 0, c->routed_scaling_factor = 1.0f;
  c->rope.mscale = 0.707f, c->rope.mscale_all_dim = 0.707f;
  c->bos_token_id = 100000, c->eos_token_id = 100001;
}

/* cfg with one change must fail validation naming `field`, before any allocation. */
static void expect_invalid(dsc_context *ctx, const dsc_model_config *cfg, const char *field, const char *what) {
  dsc_status s = dsc_model_config_validate(cfg);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has(field), "%s: validate -> %d %s", what, (int)s, dsc_last_error());
  dsc_model *m = NULL;
  s = dsc_model_create(ctx, cfg, NULL, &m);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && m == NULL && err_has(field), "%s: create -> %d %s", what, (int)s,
        dsc_last_error());
}

static void test_config_bounds(dsc_context *ctx) {
  dsc_model_config c;
  dsc_model_config_default(&c);
  CHECK(dsc_model_config_validate(&c) == DSC_OK, "V3 validates: %s", dsc_last_error());
  v2_lite(&c);
  CHECK(dsc_model_config_validate(&c) == DSC_OK, "V2-Lite validates: %s", dsc_last_error());
  dsc_model_config_default(&c);
  c.hidden_size *= 8, c.n_routed_experts *= 16, c.num_hidden_layers *= 4; /* room above V3 */
  CHECK(dsc_model_config_validate(&c) == DSC_OK, "V3 x8 wide, x16 experts, x4 deep: %s", dsc_last_error());

  dsc_model_config_default(&c);
  c.moe_intermediate_size = 1969458275, c.n_routed_experts = 29775, c.hidden_size = 1 << 20;
  c.n_group = 1, c.topk_group = 1;
  expect_invalid(ctx, &c, "moe_intermediate_size", "parameter count past int64 (issue's config)");
  dsc_model_config_default(&c);
  c.kv_lora_rank = INT32_MAX; /* kv_lora_rank + qk_rope_head_dim wrapped */
  expect_invalid(ctx, &c, "cfg->kv_lora_rank: expected 1..1048576, got 2147483647", "kv_lora_rank");
  dsc_model_config_default(&c);
  c.qk_nope_head_dim = INT32_MAX - 100, c.v_head_dim = 200; /* qk_nope + v wrapped */
  expect_invalid(ctx, &c, "qk_nope_head_dim", "qk_nope + v");
  dsc_model_config_default(&c);
  c.num_hidden_layers = INT32_MAX; /* layers + MTP wrapped */
  expect_invalid(ctx, &c, "num_hidden_layers", "layers + MTP");
  dsc_model_config_default(&c);
  c.hidden_size = INT32_MAX;
  expect_invalid(ctx, &c, "hidden_size", "hidden_size");
  dsc_model_config_default(&c);
  c.num_nextn_predict_layers = 1000000; /* touched 1.2 GB before its <= 8 check */
  expect_invalid(ctx, &c, "num_nextn_predict_layers: expected 0..8", "MTP depth");
  dsc_model_config_default(&c);
  c.hidden_size = 1 << 20, c.n_routed_experts = 1 << 16, c.moe_intermediate_size = 1 << 22;
  c.num_hidden_layers = 1 << 12, c.n_group = 1, c.topk_group = 1, c.first_k_dense_replace = 0;
  expect_invalid(ctx, &c, "parameter count fits in 64 bits", "every field in range, the total past int64");

  /* V3 itself: 2.7 TB of float32 parameters fail fast, naming the sizes (skipped on a machine
   * that might hold it) */
  const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
  if (ram > 0 && ram < 2.0 * 1099511627776.0) {
    dsc_model_config_default(&c);
    dsc_model *m = NULL;
    dsc_status s = dsc_model_create(ctx, &c, NULL, &m);
    CHECK(s == DSC_ERR_OUT_OF_MEMORY && m == NULL &&
              err_has("dsc_model_create: cfg: the model needs 2.") && err_has("TiB of float32 parameters, this machine has"),
          "V3 on this machine: %d %s", (int)s, dsc_last_error());
  }
}

static void test_aliasing(dsc_context *ctx) {
  enum { M = 6, K = 8 };
  float a[M * K], b[K * K], keep[K * K];
  for (int i = 0; i < M * K; ++i) a[i] = frand();
  for (int i = 0; i < K * K; ++i) keep[i] = b[i] = frand();
  view va, vb, vc;
  const int64_t sa[2] = {M, K}, sb[2] = {K, K};
  DLTensor *ta = mk(&va, a, F32, 2, sa), *tb = mk(&vb, b, F32, 2, sb);
  /* matmul into b itself: used to return a wrong product without an error */
  const int64_t sbb[2] = {K, K};
  dsc_status s = dsc_matmul(ctx, mk(&vc, a, F32, 2, sbb), tb, tb, 0, 0, 1.0f, 0.0f);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT &&
            err_has("dsc_matmul: c: expected memory that does not overlap b, got an overlapping range"),
        "matmul c = b: %s", dsc_last_error());
  CHECK(memcmp(b, keep, sizeof b) == 0, "b untouched after the refused call");
  /* linear with y = x */
  float x[K * K];
  for (int i = 0; i < K * K; ++i) x[i] = frand();
  view vx;
  DLTensor *tx = mk(&vx, x, F32, 2, sb);
  s = dsc_linear_forward(ctx, tx, tb, tx);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("dsc_linear_forward: y: expected memory that does not overlap x"),
        "linear y = x: %s", dsc_last_error());
  /* linear backward: dw on top of dy */
  s = dsc_linear_backward(ctx, tx, ta, tb, NULL, tx);
  CHECK(s == DSC_ERR_SHAPE || s == DSC_ERR_INVALID_ARGUMENT, "linear bwd bad: %d", (int)s);

  /* rms_norm in place: correct; shifted by a row: refused */
  enum { N = 4, D = 16 };
  float buf[(N + 1) * D], w[D];
  double ref[N * D];
  for (int i = 0; i < (N + 1) * D; ++i) buf[i] = frand();
  for (int j = 0; j < D; ++j) w[j] = 1.0f + 0.3f * frand();
  for (int i = 0; i < N; ++i) {
    double ss = 0;
    for (int j = 0; j < D; ++j) ss += (double)buf[i * D + j] * buf[i * D + j];
    for (int j = 0; j < D; ++j) ref[i * D + j] = w[j] * buf[i * D + j] / sqrt(ss / D + 1e-6);
  }
  view vy, vw, vy2;
  const int64_t sx[2] = {N, D}, sw[1] = {D};
  DLTensor *ty = mk(&vy, buf, F32, 2, sx), *tw = mk(&vw, w, F32, 1, sw);
  s = dsc_rms_norm_forward(ctx, ty, tw, 1e-6f, mk(&vy2, buf + D, F32, 2, sx), NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("y: expected either x itself (in place) or memory that does not "
                                                 "overlap it, got a partially overlapping range"),
        "rms shifted: %s", dsc_last_error());
  s = dsc_rms_norm_forward(ctx, ty, tw, 1e-6f, ty, NULL);
  CHECK(s == DSC_OK && max_abs_diff(buf, ref, N * D) < 1e-5, "rms in place: %s %g", dsc_last_error(),
        max_abs_diff(buf, ref, N * D));

  /* add in place: out = a */
  float p[32], q[32];
  double sum[32];
  for (int i = 0; i < 32; ++i) p[i] = frand(), q[i] = frand(), sum[i] = (double)p[i] + q[i];
  view vp, vq;
  const int64_t s32[1] = {32};
  DLTensor *tp = mk(&vp, p, F32, 1, s32), *tq = mk(&vq, q, F32, 1, s32);
  s = dsc_add(ctx, tp, tq, tp);
  CHECK(s == DSC_OK && max_abs_diff(p, sum, 32) < 1e-6, "add in place: %s", dsc_last_error());

  /* swiglu backward: dgate and dup the same memory */
  float g[32], u[32], d[32], dg[32];
  for (int i = 0; i < 32; ++i) g[i] = frand(), u[i] = frand(), d[i] = frand();
  view vg, vu, vd, vdg;
  s = dsc_swiglu_backward(ctx, mk(&vd, d, F32, 1, s32), mk(&vg, g, F32, 1, s32), mk(&vu, u, F32, 1, s32),
                          mk(&vdg, dg, F32, 1, s32), &vdg.t);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("dup: expected memory that does not overlap dgate"),
        "swiglu dgate = dup: %s", dsc_last_error());

  /* AdamW: a parameter overlapping a gradient would update the gradient mid-step */
  float pw[32], m1[32], m2[32];
  for (int i = 0; i < 32; ++i) pw[i] = frand(), m1[i] = 0.0f, m2[i] = 0.0f;
  view vpw, vg2, vm1, vm2;
  DLTensor *tpw = mk(&vpw, pw, F32, 1, s32);
  const int64_t s16[1] = {16};
  DLTensor *tg2 = mk(&vg2, pw + 8, F32, 1, s16);
  DLTensor *tpw16 = mk(&vpw, pw, F32, 1, s16);
  (void)tpw;
  dsc_adamw_params ap;
  memset(&ap, 0, sizeof ap);
  ap.size = sizeof ap, ap.lr = 1e-3f, ap.beta1 = 0.9f, ap.beta2 = 0.95f, ap.eps = 1e-8f, ap.step = 1;
  DLTensor *pl[1] = {tpw16}, *ml[1] = {mk(&vm1, m1, F32, 1, s16)}, *vl[1] = {mk(&vm2, m2, F32, 1, s16)};
  const DLTensor *gl[1] = {tg2};
  s = dsc_adamw_step(ctx, &ap, 1, pl, gl, ml, vl, NULL);
  CHECK(s == DSC_ERR_INVALID_ARGUMENT && err_has("params[0]: expected memory that does not overlap grads[0]"),
        "adamw overlap: %s", dsc_last_error());
}

/* dsc_context_get_counters from C: a CPU context counts its allocations; reset; sizes. */
static void test_counters(void) {
  dsc_context *ctx = NULL;
  CHECK(dsc_context_create(NULL, &ctx) == DSC_OK, "counters: context: %s", dsc_last_error());
  if (!ctx) return;
  dsc_context_counters c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  void *p = NULL;
  CHECK(dsc_malloc(ctx, 100, &p) == DSC_OK, "counters: malloc");
  dsc_free(ctx, p);
  CHECK(dsc_context_get_counters(ctx, &c, 1) == DSC_OK && c.allocs == 1 && c.frees == 1 &&
            c.syncs == 0 && c.copies_to_host == 0 && c.copies_to_device == 0,
        "counters: allocs %llu frees %llu", (unsigned long long)c.allocs, (unsigned long long)c.frees);
  CHECK(dsc_context_get_counters(ctx, &c, 0) == DSC_OK && c.allocs == 0 && c.frees == 0,
        "counters: reset");
  c.size = sizeof c + 8;
  CHECK(dsc_context_get_counters(ctx, &c, 0) == DSC_ERR_INVALID_ARGUMENT &&
            strstr(dsc_last_error(), "out->size") != NULL,
        "counters: bad size: %s", dsc_last_error());
  dsc_context_destroy(ctx);
}

/* Deferred range checks: every CPU consumer survives bad indices (huge and negative: an
 * unguarded read would leave the arrays, which ASan reports), writes what it documents, and
 * dsc_context_check reports the first failure with the immediate check's message. */
static int all_finite(const float *x, int n) {
  for (int i = 0; i < n; ++i)
    if (!isfinite(x[i])) return 0;
  return 1;
}

static void test_deferred_checks(void) {
  dsc_context *ctx = NULL;
  CHECK(dsc_context_create(NULL, &ctx) == DSC_OK, "deferred: context: %s", dsc_last_error());
  if (!ctx) return;
  int32_t mode = -1;
  CHECK(dsc_context_get_check_mode(ctx, &mode) == DSC_OK && mode == DSC_CHECK_IMMEDIATE, "deferred: default");
  CHECK(dsc_context_set_check_mode(ctx, 5) == DSC_ERR_INVALID_ARGUMENT &&
            strstr(dsc_last_error(), "dsc_context_set_check_mode: mode:") != NULL,
        "deferred: bad mode: %s", dsc_last_error());
  CHECK(dsc_context_check(NULL) == DSC_ERR_INVALID_ARGUMENT, "deferred: NULL ctx");
  CHECK(dsc_context_check(ctx) == DSC_OK, "deferred: empty record");

  enum { V = 6, D = 3, n = 4 };
  float table[V * D], out[n * D], dout[n * D], dtable[V * D];
  int32_t ids[n] = {1, 1 << 30, 5, -(1 << 30)};
  for (int i = 0; i < V * D; ++i) table[i] = frand();
  for (int i = 0; i < n * D; ++i) { dout[i] = frand(); out[i] = NAN; }
  view vi, vt, vo, vd, vdt;
  int64_t si[1] = {n}, st[2] = {V, D}, so[2] = {n, D};
  mk(&vi, ids, I32, 1, si); mk(&vt, table, F32, 2, st); mk(&vo, out, F32, 2, so);
  mk(&vd, dout, F32, 2, so); mk(&vdt, dtable, F32, 2, st);
  /* the immediate message, then the same call deferred */
  char imm[512];
  CHECK(dsc_embedding_forward(ctx, &vi.t, &vt.t, &vo.t) == DSC_ERR_INVALID_ARGUMENT, "deferred: immediate");
  snprintf(imm, sizeof imm, "%s", dsc_last_error());
  CHECK(strcmp(imm, "dsc_embedding_forward: ids: expected values in [0, 6), got 1073741824 at position 1") == 0,
        "deferred: immediate message: %s", imm);
  CHECK(dsc_context_set_check_mode(ctx, DSC_CHECK_DEFERRED) == DSC_OK, "deferred: set");
  dsc_context_counters c0;
  memset(&c0, 0, sizeof c0);
  c0.size = sizeof c0;
  CHECK(dsc_context_get_counters(ctx, &c0, 1) == DSC_OK, "deferred: counters reset");
  CHECK(dsc_embedding_forward(ctx, &vi.t, &vt.t, &vo.t) == DSC_OK, "deferred: fwd: %s", dsc_last_error());
  int ok = 1;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < D; ++j)
      ok &= out[i * D + j] == ((ids[i] >= 0 && ids[i] < V) ? table[ids[i] * D + j] : 0.0f);
  CHECK(ok, "deferred: bad ids give zero rows");
  CHECK(dsc_embedding_backward(ctx, &vi.t, &vd.t, &vdt.t) == DSC_OK, "deferred: bwd: %s", dsc_last_error());
  double ref[V * D] = {0};
  for (int i = 0; i < n; ++i)
    if (ids[i] >= 0 && ids[i] < V)
      for (int j = 0; j < D; ++j) ref[ids[i] * D + j] += dout[i * D + j];
  CHECK(max_abs_diff(dtable, ref, V * D) < 1e-6, "deferred: bad ids add nothing");

  /* cross-entropy and token_logprob: bad targets count as ignored */
  enum { N = 3, W = 5 };
  float logits[N * W], dl[N * W], loss = NAN, lp[N], ent[N], dlp[N] = {0.5f, -1.0f, 2.0f};
  int64_t tg[N] = {2, 1LL << 40, -7};
  for (int i = 0; i < N * W; ++i) logits[i] = frand();
  view vl, vtg, vloss, vdl, vlp, vent, vdlp;
  int64_t sl[2] = {N, W}, sn[1] = {N};
  const DLDataType I64 = {kDLInt, 64, 1};
  mk(&vl, logits, F32, 2, sl); mk(&vtg, tg, I64, 1, sn); mk(&vloss, &loss, F32, 0, NULL);
  mk(&vdl, dl, F32, 2, sl); mk(&vlp, lp, F32, 1, sn); mk(&vent, ent, F32, 1, sn); mk(&vdlp, dlp, F32, 1, sn);
  CHECK(dsc_cross_entropy(ctx, &vl.t, &vtg.t, -100, 1.0f, &vloss.t, &vdl.t, NULL) == DSC_OK &&
            isfinite(loss) && all_finite(dl, N * W),
        "deferred: ce: %s", dsc_last_error());
  double m = -INFINITY, se = 0;
  for (int j = 0; j < W; ++j) m = fmax(m, logits[j]);
  for (int j = 0; j < W; ++j) se += exp(logits[j] - m);
  CHECK(fabs(loss - (m + log(se) - logits[2])) < 1e-5, "deferred: ce loss of the one good row");
  CHECK(dsc_token_logprob(ctx, &vl.t, &vtg.t, -100, &vlp.t, &vent.t) == DSC_OK && lp[1] == 0.0f &&
            ent[2] == 0.0f && all_finite(lp, N),
        "deferred: token_logprob: %s", dsc_last_error());
  CHECK(dsc_token_logprob_backward(ctx, &vl.t, &vtg.t, -100, &vdlp.t, &vdl.t) == DSC_OK &&
            all_finite(dl, N * W) && dl[W] == 0.0f && dl[2 * W + 4] == 0.0f,
        "deferred: token_logprob_backward: %s", dsc_last_error());

  /* distillation: a bad teacher index is left out */
  enum { K = 2 };
  int32_t tix[N * K] = {0, 4, -(1 << 29), 3, 1 << 29, 2};
  float tlog[N * K];
  int64_t tt[N] = {1, 1, 1};
  for (int i = 0; i < N * K; ++i) tlog[i] = frand();
  view vtix, vtlog, vtt;
  int64_t sk[2] = {N, K};
  mk(&vtix, tix, I32, 2, sk); mk(&vtlog, tlog, F32, 2, sk); mk(&vtt, tt, I64, 1, sn);
  CHECK(dsc_topk_kl(ctx, &vl.t, &vtix.t, &vtlog.t, &vtt.t, -100, 1.0f, 1.0f, &vloss.t, &vdl.t) == DSC_OK &&
            isfinite(loss) && all_finite(dl, N * W),
        "deferred: topk_kl: %s", dsc_last_error());

  /* no waits, nothing read yet; the first failure (the embedding forward's) is reported */
  dsc_context_counters c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  CHECK(dsc_context_get_counters(ctx, &c, 0) == DSC_OK && c.deferred_checks == 6 && c.index_checks == 0 &&
            c.syncs == 0 && c.check_reads == 0,
        "deferred: counters %llu deferred, %llu immediate", (unsigned long long)c.deferred_checks,
        (unsigned long long)c.index_checks);
  CHECK(dsc_context_check(ctx) == DSC_ERR_INVALID_ARGUMENT && strcmp(dsc_last_error(), imm) == 0,
        "deferred: check: %s", dsc_last_error());
  CHECK(dsc_context_check(ctx) == DSC_OK, "deferred: cleared");
  CHECK(dsc_context_get_counters(ctx, &c, 0) == DSC_OK && c.check_reads == 1, "deferred: one read");
  /* the next failure: ce's target at position 1; synchronize reports it too */
  CHECK(dsc_cross_entropy(ctx, &vl.t, &vtg.t, -100, 1.0f, &vloss.t, NULL, NULL) == DSC_OK, "deferred: ce 2");
  CHECK(dsc_context_synchronize(ctx) == DSC_ERR_INVALID_ARGUMENT &&
            strcmp(dsc_last_error(), "dsc_cross_entropy: targets: expected values in [0, 5) or ignore_index "
                                     "(-100), got 1099511627776 at position 1") == 0,
        "deferred: synchronize: %s", dsc_last_error());
  CHECK(dsc_context_check(ctx) == DSC_OK, "deferred: read by synchronize");
  /* good indices record nothing */
  ids[1] = 0; ids[3] = 2;
  CHECK(dsc_embedding_forward(ctx, &vi.t, &vt.t, &vo.t) == DSC_OK && dsc_context_check(ctx) == DSC_OK,
        "deferred: good run");
  dsc_context_destroy(ctx);
}

int main(void) {
  test_status_and_context();
  test_counters();
  test_deferred_checks();
  test_dtypes();
  dsc_context *ctx = NULL;
  dsc_context_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.device_type = kDLCPU;
  if (dsc_context_create(&o, &ctx) != DSC_OK) {
    printf("FAIL: cannot create a CPU context: %s\n", dsc_last_error());
    printf("%d passed, %d failed\n", g_pass, g_fail + 1);
    return 1;
  }
  test_rms_norm(ctx);
  test_rope_yarn(ctx);
  test_matmul_linear(ctx);
  test_cross_entropy(ctx);
  test_embedding_adamw(ctx);
  test_add(ctx);
  test_safetensors();
  test_huge_shapes(ctx);
  test_config_bounds(ctx);
  test_aliasing(ctx);
  dsc_context_destroy(ctx);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
