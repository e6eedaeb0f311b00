/*
 * ops/moe_layer.c -- the whole DeepSeekMoE layer, forward and backward, composed from
 * the MoE, grouped-linear, linear, SwiGLU and add ops (it computes nothing itself; each
 * step validates and dispatches as usual, so the layer runs on whatever device the
 * context has kernels for).
 *
 *   logits = x @ gate^T                       [T, E]
 *   indices, weights, scores = route(logits, bias)
 *   xp, offsets, row_map = permute(x)         [R, D]
 *   act = swiglu(xp @ Wg[e]^T, xp @ Wu[e]^T)  [R, F]   (per expert e, grouped)
 *   eo = act @ Wd[e]^T                        [R, D]
 *   y = unpermute(eo, weights) + shared(x)    [T, D]
 *   shared(x) = swiglu(x @ Sg^T, x @ Su^T) @ Sd^T
 * With w->fp8 the expert and shared GEMMs (and their backward) are the FP8 pieces of
 * fp8_layers.h on the same buffers instead of the float32 ops. The routed experts' input xp
 * is kept as quantized for the gate/up GEMMs (E4M3 in 1x128 tiles, B_XQ / B_XS) and their
 * weight gradients use it (dequantized, re-tiled along the tokens), as DeepSeek-V3 caches
 * FP8 activations: these are the rows an expert-parallel dispatch sends (moe_layer_ex.h).
 *
 * Host waits (issue #15: none inside a training or decode step on the GPU). Without an
 * exchange the permuted rows are sized by the bound R_max (ops/moe_internal.h
 * dsc_moe_row_bound: T*k + min(E, T*k) * (align-1)), known from shapes; the padded count R =
 * offsets[E] stays on the device and rows [R, R_max) are zero padding every step keeps
 * zero. The FP8 experts (grouped fprop/dgrad, K-grouped wgrad with align 128) and the
 * float32 experts (kernels/grouped_linear.cu: the BF16 tensor-core kernel in the
 * BF16-operand mode, the exact float32 one in FP32 math) read the offsets on the device:
 * their layer never waits. Only the FP8 layer with an alignment that is not a multiple of
 * 128 copies them back (its per-expert wgrad loop, in the backward).
 * With an exchange (moe_layer_ex.h) the plan needs the counts on the host (host_counts);
 * its float32 expert GEMMs then take the offsets it uploads as they are (no copy back).
 *
 * Legend: T tokens, D hidden, E routed experts, k experts per token, F expert
 * intermediate size, Fs shared intermediate size, R permuted rows (the bound R_max without
 * an exchange).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fp8_layers.h"
#include "moe_internal.h"
#include "moe_layer_ex.h"

/* Run a step only while every earlier step succeeded (cleanup happens once at the end). */
#define STEP(call)                 \
  do {                             \
    if (st == DSC_OK) st = (call); \
  } while (0)

/* A float32 / int32 row-major tensor on the context's device, owned by a saved set. */
typedef struct {
  DLTensor t;
  int64_t shape[3];
  int64_t strides[3];
  size_t cap; /* bytes allocated at t.data (kept across calls: no fresh pages per step) */
} buf;

enum {
  B_SCORES, B_INDICES, B_WEIGHTS, B_XP, B_OFFSETS, B_ROWMAP, B_HG, B_HU, B_ACT, B_EO,
  B_SG, B_SU, B_SA, B_DSCORES, B_AUXLOSS,
  B_XR, B_OFFL, B_EOR, /* with an exchange: rows computed here, their offsets, outputs */
  B_XQ, B_XS,          /* fp8: the rows the experts compute (R or Rin) in E4M3, 1x128 scales */
  B_XPQ, B_XPS,        /* fp8 with an exchange: this rank's permuted rows (R) so quantized */
  B_COUNT
};
/* Temporaries of one forward / backward call, kept in the handle between calls. */
enum { T_DEO, T_DW, T_DACT, T_DHG, T_DHU, T_DXP, T_DXP2, T_DXTOK, T_DLOG, T_DXR, T_DSA, T_DSG,
       T_DSU, T_DXS, T_LOGITS, T_SO,
       T_DEOR, T_DXPR, T_DXS2, /* with an exchange */
       T_COUNT };

struct dsc_moe_layer_saved {
  dsc_context *ctx; /* the context the buffers were allocated with */
  buf b[B_COUNT];
  buf tmp[T_COUNT];
  int have;     /* a forward filled the buffers */
  int fp8;      /* ... with FP8 expert GEMMs */
  int have_aux; /* dsc_moe_layer_aux_loss filled B_DSCORES for the backward */
  int64_t T, D, E, k, F, Fs, R;
  int64_t align; /* the forward's row alignment of the experts' groups */
  /* an exchange (moe_layer_ex.h): the forward's, and where its phases are */
  int ex;         /* the forward ran with an exchange */
  int64_t El, Rin; /* experts and rows computed here */
  int fwd_phase;  /* phases of the current forward done (a mask) */
  int bwd_phase;  /* phases of the current backward done */
};

static void buf_free(dsc_context *ctx, buf *x) {
  if (x->t.data) dsc_free(ctx, x->t.data);
  memset(x, 0, sizeof *x);
}

/* Shape x as a contiguous [d0, d1] (or [d0] when d1 < 0) tensor of dtype dt, reusing its
 * memory when large enough (a training step of a fixed shape then allocates nothing). */
static dsc_status buf_alloc(dsc_context *ctx, buf *x, dsc_dtype dt, int64_t d0, int64_t d1) {
  int ok = 1;
  size_t bytes = dsc_cbytes(dsc_cmul(d0, d1 < 0 ? 1 : d1, &ok), dsc_dtype_size(dt), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_moe_layer",
            "an activation of %lld x %lld does not fit in 64 bits", (long long)d0, (long long)d1);
  if (bytes == 0) bytes = dsc_dtype_size(dt);
  if (!x->t.data || x->cap < bytes) {
    buf_free(ctx, x);
    DSC_TRY(dsc_malloc(ctx, bytes, &x->t.data));
    x->cap = bytes;
  }
  x->t.device = ctx->device;
  x->t.dtype = dsc_dtype_to_dlpack(dt);
  x->t.ndim = d1 < 0 ? 1 : 2;
  x->shape[0] = d0;
  x->shape[1] = d1 < 0 ? 1 : d1;
  x->strides[0] = d1 < 0 ? 1 : d1;
  x->strides[1] = 1;
  x->t.shape = x->shape;
  x->t.strides = x->strides;
  return DSC_OK;
}

/* The weights of w as named inputs (absent ones NULL); returns the count. */
static int weight_list(const dsc_moe_layer_weights *w, dsc_named_tensor *l) {
  const dsc_named_tensor all[14] = {
      {"w->gate", w->gate}, {"w->bias", w->bias}, {"w->experts_gate", w->experts_gate},
      {"w->experts_up", w->experts_up}, {"w->experts_down", w->experts_down},
      {"w->shared_gate", w->shared_gate}, {"w->shared_up", w->shared_up},
      {"w->shared_down", w->shared_down}, {"w->experts_gate_scale_inv", w->experts_gate_scale_inv},
      {"w->experts_up_scale_inv", w->experts_up_scale_inv},
      {"w->experts_down_scale_inv", w->experts_down_scale_inv},
      {"w->shared_gate_scale_inv", w->shared_gate_scale_inv},
      {"w->shared_up_scale_inv", w->shared_up_scale_inv},
      {"w->shared_down_scale_inv", w->shared_down_scale_inv}};
  memcpy(l, all, sizeof all);
  return 14;
}

dsc_status dsc_moe_layer_saved_create(dsc_context *ctx, dsc_moe_layer_saved **out) {
  static const char *const FN = "dsc_moe_layer_saved_create";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = (dsc_moe_layer_saved *)calloc(1, sizeof **out);
  if (!*out) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  (*out)->ctx = ctx;
  return DSC_OK;
}

void dsc_moe_layer_saved_destroy(dsc_moe_layer_saved *s) {
  if (!s) return;
  for (int i = 0; i < B_COUNT; ++i) buf_free(s->ctx, &s->b[i]);
  for (int i = 0; i < T_COUNT; ++i) buf_free(s->ctx, &s->tmp[i]);
  free(s);
}

static void saved_release(void *s) { dsc_moe_layer_saved_destroy((dsc_moe_layer_saved *)s); }

/* The intermediates of a forward without a saved handle (inference): the context's own
 * handle, whose buffers are kept from call to call (a decode step of a seen shape then
 * allocates nothing); its state starts afresh at every call, as a new handle's would. */
static dsc_status local_saved(dsc_context *ctx, const char *fn, dsc_moe_layer_saved **out) {
  dsc_moe_layer_saved *s = (dsc_moe_layer_saved *)ctx->moe_local;
  if (!s) {
    s = (dsc_moe_layer_saved *)calloc(1, sizeof *s);
    if (!s) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    s->ctx = ctx;
    ctx->moe_local = s;
    ctx->moe_local_release = saved_release;
  }
  s->have = s->fp8 = s->have_aux = s->ex = 0;
  s->T = s->D = s->E = s->k = s->F = s->Fs = s->R = s->El = s->Rin = 0;
  s->fwd_phase = s->bwd_phase = 0;
  *out = s;
  return DSC_OK;
}

/* The 2-D view [rows, cols] of a contiguous tensor (x is [..., D] in the layer). */
static DLTensor flat2(const DLTensor *x, int64_t *shape2, int64_t *strides2) {
  DLTensor v = *x;
  shape2[0] = dsc_rows(x);
  shape2[1] = dsc_last_dim(x);
  strides2[0] = shape2[1];
  strides2[1] = 1;
  v.ndim = 2;
  v.shape = shape2;
  v.strides = strides2;
  return v;
}

/* ---- FP8 expert GEMMs (w->fp8) -------------------------------------------------------- */

/* Scratch of one FP8 call (one device allocation): a quantized activation aq [Mmax,Kmax]
 * (scales as [Mmax,ceil(Kmax/128)]), quantized weights wq [Wmax] (scales ws), and the
 * expert offsets on the host offs_h [E+1]. */
typedef struct {
  void *mem;
  uint8_t *aq, *wq;
  float *as, *ws;
  int32_t *offs_h; /* the offsets on the host: the CPU's own (read in place), a CUDA copy
                      (host_offs: the expert-parallel path), or NULL (CUDA, none needed) */
  int offs_h_owned;
  int dev_wgrad; /* weight gradients from the device offsets (groups aligned to 128 rows) */
  const DLTensor *aq_of; /* the activation aq holds the tiles of (gate and up share one) */
} fp8_scratch;

static int64_t cdiv128(int64_t a) { return (a + 127) / 128; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* f->mem is the context's DSC_SLOT_MOE_FP8 buffer (kept for the next call), not freed. */
static void fp8_scratch_free(dsc_context *ctx, fp8_scratch *f) {
  (void)ctx;
  if (f->offs_h_owned) free(f->offs_h);
  memset(f, 0, sizeof *f);
}

/* need_w: some weight is float32 and gets quantized here (else no weight scratch).
 * host_offs: the GEMMs need the offsets on the host (a CUDA copy back, one wait; the
 * expert-parallel path's unaligned groups); else CUDA reads them on the device only and
 * the CPU in place. bwd: for a backward, whose weight gradients run on the device offsets
 * when align (the groups' row alignment) is a multiple of 128 (dsc_fp8l_wgrad_dev), else
 * loop over host offsets (copied). */
static dsc_status fp8_scratch_alloc(dsc_context *ctx, int64_t T, int64_t R, int64_t D, int64_t E,
                                    int64_t F, int64_t Fs, const DLTensor *offsets, int need_w,
                                    fp8_scratch *f, int host_offs, int bwd, int64_t align) {
  memset(f, 0, sizeof *f);
  int ok = 1;
  const int64_t kmax = max64(D, max64(F, Fs)), mmax = max64(R, T);
  const int64_t wmax = need_w ? max64(dsc_cmul3(E, F, D, &ok), dsc_cmul(Fs, D, &ok)) : 0;
  const int64_t wsmax = need_w ? max64(dsc_cmul3(E, cdiv128(F), cdiv128(D), &ok),
                                       dsc_cmul(cdiv128(Fs), cdiv128(D), &ok))
                               : 0;
  const size_t sz[4] = {dsc_cbytes(dsc_cmul(mmax, kmax, &ok), 1, &ok),
                        dsc_cbytes(dsc_cmul(mmax, cdiv128(kmax), &ok), 4, &ok),
                        dsc_cbytes(wmax, 1, &ok), dsc_cbytes(wsmax, 4, &ok)};
  size_t off[5] = {0};
  for (int i = 0; i < 4; ++i) off[i + 1] = dsc_caddz(off[i], dsc_calign(sz[i], 64, &ok), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_moe_layer",
            "FP8 scratch for %lld rows of up to %lld features does not fit in 64 bits",
            (long long)mmax, (long long)kmax);
  f->dev_wgrad = !host_offs && align % 128 == 0;
  dsc_status st = DSC_OK;
  if (!dsc_ctx_is_cuda(ctx)) {
    f->offs_h = (int32_t *)dsc_data(offsets); /* host memory already */
  } else if (host_offs || (bwd && !f->dev_wgrad)) {
    f->offs_h = (int32_t *)malloc((size_t)(E + 1) * sizeof(int32_t));
    if (!f->offs_h)
      return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_moe_layer", "out of host memory");
    f->offs_h_owned = 1;
    st = dsc_memcpy(ctx, f->offs_h, (DLDevice){kDLCPU, 0}, dsc_data(offsets), ctx->device,
                    (size_t)(E + 1) * sizeof(int32_t));
  }
  if (st == DSC_OK) st = dsc_ctx_slot(ctx, DSC_SLOT_MOE_FP8, off[4] ? off[4] : 64, &f->mem);
  if (st != DSC_OK) {
    fp8_scratch_free(ctx, f);
    return st;
  }
  char *b = (char *)f->mem;
  f->aq = (uint8_t *)b;
  f->as = (float *)(b + off[1]);
  f->wq = (uint8_t *)(b + off[2]);
  f->ws = (float *)(b + off[3]);
  return DSC_OK;
}

/* y [M,N] = x [M,K] @ w^T: G experts over the rows of `offs` (device; f->offs_h on the host),
 * or one matrix (G 1, offs NULL); w [G,N,K] float32 (quantized here) or, with w_scale, held
 * in E4M3 with its block scales [G,Nb,Kb]. */
static dsc_status fp8_fwd_q(dsc_context *ctx, fp8_scratch *f, int64_t G, int64_t M, int64_t N,
                            int64_t K, const uint8_t *xq, const float *xs, const DLTensor *w,
                            const DLTensor *w_scale, const DLTensor *offs, DLTensor *y);
static dsc_status fp8_fwd(dsc_context *ctx, fp8_scratch *f, int64_t G, int64_t M, int64_t N,
                          int64_t K, const DLTensor *x, const DLTensor *w, const DLTensor *w_scale,
                          const DLTensor *offs, DLTensor *y) {
  if (f->aq_of != x) {
    DSC_TRY(dsc_fp8l_quant_act(ctx, DSC_DTYPE_FLOAT32, M, K, dsc_data(x), f->aq, f->as));
    f->aq_of = x;
  }
  return fp8_fwd_q(ctx, f, G, M, N, K, f->aq, f->as, w, w_scale, offs, y);
}

/* The same on x already quantized: xq [M,K] E4M3, xs [M,ceil(K/128)] (1x128 tiles). */
static dsc_status fp8_fwd_q(dsc_context *ctx, fp8_scratch *f, int64_t G, int64_t M, int64_t N,
                            int64_t K, const uint8_t *xq, const float *xs, const DLTensor *w,
                            const DLTensor *w_scale, const DLTensor *offs, DLTensor *y) {
  const uint8_t *wq = f->wq;
  const float *ws = f->ws;
  if (w_scale) {
    wq = (const uint8_t *)dsc_data(w);
    ws = (const float *)dsc_data(w_scale);
  } else {
    DSC_TRY(dsc_fp8l_quant_weight(ctx, G, N, K, (const float *)dsc_data(w), 0, f->wq, f->ws));
  }
  return dsc_fp8l_fprop(ctx, G, M, N, K, xq, xs, wq, ws,
                        offs ? (const int32_t *)dsc_data(offs) : NULL, offs ? f->offs_h : NULL,
                        DSC_DTYPE_FLOAT32, dsc_data(y));
}

/* Its backward: dx [M,K] = dy @ w (per expert), dw [G,N,K] = dy^T x (when dw); x float32,
 * or (xs != NULL) x [M,K] E4M3 with its 1x128 scales xs [M,ceil(K/128)]. */
static dsc_status fp8_bwd(dsc_context *ctx, const fp8_scratch *f, int64_t G, int64_t M, int64_t N,
                          int64_t K, const DLTensor *dy, const DLTensor *x, const float *xs,
                          const DLTensor *w, const DLTensor *offs, DLTensor *dx, DLTensor *dw) {
  const dsc_dtype f32 = DSC_DTYPE_FLOAT32;
  const int32_t *oh = offs ? f->offs_h : NULL;
  const dsc_dtype xt = xs ? DSC_DTYPE_FLOAT8_E4M3FN : f32;
  if (dw && offs && f->dev_wgrad)
    DSC_TRY(dsc_fp8l_wgrad_dev(ctx, G, M, N, K, f32, dsc_data(dy), xt, dsc_data(x), xs,
                               (const int32_t *)dsc_data(offs), (float *)dsc_data(dw)));
  else if (dw)
    DSC_TRY(dsc_fp8l_wgrad(ctx, G, M, N, K, f32, dsc_data(dy), xt, dsc_data(x), xs, oh, (float *)dsc_data(dw)));
  DSC_TRY(dsc_fp8l_quant_weight(ctx, G, N, K, (const float *)dsc_data(w), 1, f->wq, f->ws));
  return dsc_fp8l_dgrad(ctx, G, M, N, K, f32, dsc_data(dy), DSC_DTYPE_FLOAT8_E4M3FN, f->wq,
                        f->ws, 1, offs ? (const int32_t *)dsc_data(offs) : NULL, oh,
                        dsc_data(dx));
}

/* The permuted rows B_XP [R,D] in E4M3 1x128 tiles into b[iq] [R,D] and b[is] [R,ceil(D/128)]
 * (the rule the expert GEMMs apply to their input: per row, so a row quantizes alike
 * wherever it is done). */
static dsc_status quant_rows(dsc_context *ctx, buf *b, int64_t R, int64_t D, int iq, int is) {
  DSC_TRY(buf_alloc(ctx, &b[iq], DSC_DTYPE_FLOAT8_E4M3FN, R, D));
  DSC_TRY(buf_alloc(ctx, &b[is], DSC_DTYPE_FLOAT32, R, cdiv128(D)));
  return dsc_fp8l_quant_act(ctx, DSC_DTYPE_FLOAT32, R, D, b[B_XP].t.data, (uint8_t *)b[iq].t.data,
                            (float *)b[is].t.data);
}

/* An expert-side weight: float32, or (scale != NULL) float8_e4m3fn with float32 128x128
 * block scales [(G,) ceil(N/128), ceil(K/128)] for a weight [(G,) N, K]. */
static dsc_status check_ew(const dsc_context *ctx, const char *fn, const char *name,
                           const char *sname, const DLTensor *t, const DLTensor *scale, int nd,
                           const int64_t *shape) {
  DSC_TRY(dsc_check_tensor(ctx, fn, name, t,
                           DSC_DT(scale ? DSC_DTYPE_FLOAT8_E4M3FN : DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_shape(fn, name, t, nd, shape));
  if (!scale) return DSC_OK;
  int64_t ss[3];
  for (int i = 0; i < nd; ++i) ss[i] = shape[i];
  ss[nd - 2] = (shape[nd - 2] + 127) / 128;
  ss[nd - 1] = (shape[nd - 1] + 127) / 128;
  DSC_TRY(dsc_check_tensor(ctx, fn, sname, scale, DSC_DT(DSC_DTYPE_FLOAT32)));
  return dsc_check_shape(fn, sname, scale, nd, ss);
}

static int has_fp8_weights(const dsc_moe_layer_weights *w) {
  return w->experts_gate_scale_inv || w->experts_up_scale_inv || w->experts_down_scale_inv ||
         w->shared_gate_scale_inv || w->shared_up_scale_inv || w->shared_down_scale_inv;
}

/* infer: a forward without saved activations, where weights may be held in FP8. */
/* El > 0: the expert stacks hold El experts (an exchange computes the others elsewhere). */
static dsc_status check_weights_el(const dsc_context *ctx, const char *fn, const dsc_moe_layer_weights *w,
                                   int64_t D, int infer, int64_t El, int64_t *E, int64_t *F, int64_t *Fs);
static dsc_status check_weights(const dsc_context *ctx, const char *fn, const dsc_moe_layer_weights *w,
                                int64_t D, int infer, int64_t *E, int64_t *F, int64_t *Fs) {
  return check_weights_el(ctx, fn, w, D, infer, 0, E, F, Fs);
}

static dsc_status check_weights_el(const dsc_context *ctx, const char *fn, const dsc_moe_layer_weights *w,
                                   int64_t D, int infer, int64_t El, int64_t *E, int64_t *F, int64_t *Fs) {
  DSC_CHECK(w != NULL && w->size >= sizeof(dsc_moe_layer_weights), DSC_ERR_INVALID_ARGUMENT, fn,
            "w: expected a dsc_moe_layer_weights with size = %zu", sizeof(dsc_moe_layer_weights));
  DSC_CHECK(w->fp8 == 0 || w->fp8 == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "w->fp8: expected 0 or 1, got %d", (int)w->fp8);
  if (has_fp8_weights(w)) {
    DSC_CHECK(w->fp8, DSC_ERR_INVALID_ARGUMENT, fn,
              "w: FP8 weights (*_scale_inv set) need w->fp8 = 1, got 0");
    DSC_CHECK(infer, DSC_ERR_INVALID_ARGUMENT, fn,
              "w: FP8 weights (*_scale_inv set) are for inference: expected saved = NULL and no "
              "backward, or float32 master weights");
  }
  const unsigned F32 = DSC_DT(DSC_DTYPE_FLOAT32);
  DSC_TRY(dsc_check_tensor(ctx, fn, "w->gate", w->gate, F32));
  DSC_TRY(dsc_check_ndim(fn, "w->gate", w->gate, 2, 2, "(E, D)"));
  *E = w->gate->shape[0];
  int64_t gshape[2] = {*E, D};
  DSC_TRY(dsc_check_shape(fn, "w->gate", w->gate, 2, gshape));
  if (w->bias) {
    DSC_TRY(dsc_check_tensor(ctx, fn, "w->bias", w->bias, F32));
    DSC_TRY(dsc_check_shape(fn, "w->bias", w->bias, 1, E));
  }
  DSC_CHECK(w->experts_gate != NULL, DSC_ERR_INVALID_ARGUMENT, fn,
            "w->experts_gate: expected a tensor, got NULL");
  DSC_TRY(dsc_check_ndim(fn, "w->experts_gate", w->experts_gate, 3, 3, "(E, F, D)"));
  *F = w->experts_gate->shape[1];
  const int64_t Es = El > 0 ? El : *E; /* experts in the stacks */
  int64_t egs[3] = {Es, *F, D}, eds[3] = {Es, D, *F};
  DSC_TRY(check_ew(ctx, fn, "w->experts_gate", "w->experts_gate_scale_inv", w->experts_gate,
                   w->experts_gate_scale_inv, 3, egs));
  DSC_TRY(check_ew(ctx, fn, "w->experts_up", "w->experts_up_scale_inv", w->experts_up,
                   w->experts_up_scale_inv, 3, egs));
  DSC_TRY(check_ew(ctx, fn, "w->experts_down", "w->experts_down_scale_inv", w->experts_down,
                   w->experts_down_scale_inv, 3, eds));
  *Fs = 0;
  if (w->shared_gate || w->shared_up || w->shared_down) {
    DSC_CHECK(w->shared_gate != NULL, DSC_ERR_INVALID_ARGUMENT, fn,
              "w->shared_gate: expected a tensor with shared_up/shared_down, got NULL");
    DSC_TRY(dsc_check_ndim(fn, "w->shared_gate", w->shared_gate, 2, 2, "(Fs, D)"));
    *Fs = w->shared_gate->shape[0];
    int64_t sgs[2] = {*Fs, D}, sds[2] = {D, *Fs};
    DSC_TRY(check_ew(ctx, fn, "w->shared_gate", "w->shared_gate_scale_inv", w->shared_gate,
                     w->shared_gate_scale_inv, 2, sgs));
    DSC_TRY(check_ew(ctx, fn, "w->shared_up", "w->shared_up_scale_inv", w->shared_up,
                     w->shared_up_scale_inv, 2, sgs));
    DSC_TRY(check_ew(ctx, fn, "w->shared_down", "w->shared_down_scale_inv", w->shared_down,
                     w->shared_down_scale_inv, 2, sds));
  } else {
    DSC_CHECK(!w->shared_gate_scale_inv && !w->shared_up_scale_inv && !w->shared_down_scale_inv,
              DSC_ERR_INVALID_ARGUMENT, fn,
              "w->shared_*_scale_inv: expected NULL without shared experts, got a tensor");
  }
  return DSC_OK;
}

dsc_status dsc_moe_layer_forward(dsc_context *ctx, const dsc_moe_route_params *p, int32_t align,
                                 const dsc_moe_layer_weights *w, const DLTensor *x, DLTensor *y,
                                 DLTensor *counts, dsc_moe_layer_saved *saved) {
  static const char *const FN = "dsc_moe_layer_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "y", y, "x", x));
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "p: expected route params, got NULL");
  DSC_CHECK(align >= 1, DSC_ERR_INVALID_ARGUMENT, FN, "align: expected >= 1, got %d", (int)align);
  DSC_CHECK(saved == NULL || saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected a handle created with this context");
  const int64_t D = dsc_last_dim(x), T = dsc_rows(x);
  int64_t E, F, Fs;
  DSC_TRY(check_weights(ctx, FN, w, D, saved == NULL, &E, &F, &Fs));
  DSC_TRY(dsc_moe_check_route_params(FN, p, E));
  if (counts) DSC_TRY(dsc_check_tensor(ctx, FN, "counts", counts, DSC_DT_INDEX));
  {
    /* x is read again (shared experts) after y is written: nothing may share memory */
    dsc_named_tensor ins[15], outs[2] = {{"y", y}, {"counts", counts}};
    ins[0] = (dsc_named_tensor){"x", x};
    const int n_in = 1 + weight_list(w, ins + 1);
    DSC_TRY(dsc_check_outputs_disjoint(FN, 2, outs, n_in, ins));
  }
  const int64_t k = p->top_k;
  if (align == 1 && w->fp8 && dsc_ctx_is_cuda(ctx)) align = 128; /* per-expert 128-row tiles (DeepGEMM) for the FP8 GEMMs; padding rows are zero and unread */

  /* Without a saved handle (inference) the intermediates live in the context's one. */
  dsc_moe_layer_saved *s = saved;
  if (!s) DSC_TRY(local_saved(ctx, FN, &s));
  s->have = 0;
  s->have_aux = 0;
  buf *logits = &s->tmp[T_LOGITS];
  int64_t xs2[2], xst2[2], ys2[2], yst2[2];
  DLTensor x2 = flat2(x, xs2, xst2), y2 = flat2(y, ys2, yst2);
  buf *b = s->b;
  dsc_status st = DSC_OK;
  STEP(buf_alloc(ctx, logits, DSC_DTYPE_FLOAT32, T, E));
  STEP(buf_alloc(ctx, &b[B_SCORES], DSC_DTYPE_FLOAT32, T, E));
  STEP(buf_alloc(ctx, &b[B_INDICES], DSC_DTYPE_INT32, T, k));
  STEP(buf_alloc(ctx, &b[B_WEIGHTS], DSC_DTYPE_FLOAT32, T, k));
  STEP(dsc_linear_forward(ctx, &x2, w->gate, &logits->t));
  STEP(dsc_moe_route(ctx, p, &logits->t, w->bias, &b[B_INDICES].t, &b[B_WEIGHTS].t, &b[B_SCORES].t));
  /* The routing's indices (in [0, E) by construction) and the permutation's row map: the
   * inner ops need not copy them back to check their range (DSC_DEBUG_CHECKS=1 does). */
  ctx->trusted_indices++;
  if (counts) STEP(dsc_moe_expert_load(ctx, &b[B_INDICES].t, counts));
  /* The permuted rows are sized by their bound R_max (moe_internal.h), never by the count R
   * = offsets[E], which stays on the device. Rows [R, R_max), kernel by kernel:
   *  - permute: zeroed with the experts' own padding (its pad kernel reads offsets[E]);
   *  - grouped GEMMs (FP8 fprop/dgrad, float32 and BF16 kernels, CPU): read offsets[E] and
   *    write zeros there, computing nothing;
   *  - SwiGLU, add, FP8 row quantization, the wgrad's quantization along the tokens: run over
   *    all R_max rows, harmlessly (zeros stay zeros; a tile past offsets[E] is never read);
   *  - the K-grouped FP8, float32 and BF16 wgrads: sum each expert's own rows only;
   *  - combine, its backward's weights and permute's backward: walk the row map (never
   *    there); the combine's backward zeroes every row no pair names.
   * So they add nothing to any output or gradient. On the CPU with align 1, R_max = R. */
  const int64_t R = dsc_moe_row_bound(T * k, E, align);
  if (st == DSC_OK && (R < 0 || R > INT32_MAX))
    st = dsc_error(DSC_ERR_UNSUPPORTED, FN,
                   "x: expected at most 2^31-1 permuted rows (int32 offsets), got a bound of %lld for %lld "
                   "tokens, top_k %lld, %lld experts, align %d",
                   (long long)R, (long long)T, (long long)k, (long long)E, (int)align);
  STEP(buf_alloc(ctx, &b[B_XP], DSC_DTYPE_FLOAT32, R, D));
  STEP(buf_alloc(ctx, &b[B_OFFSETS], DSC_DTYPE_INT32, E + 1, -1));
  STEP(buf_alloc(ctx, &b[B_ROWMAP], DSC_DTYPE_INT32, T, k));
  STEP(dsc_moe_permute_bound(ctx, FN, &x2, &b[B_INDICES].t, (int32_t)E, align, &b[B_XP].t, &b[B_OFFSETS].t,
                             &b[B_ROWMAP].t));
  STEP(buf_alloc(ctx, &b[B_HG], DSC_DTYPE_FLOAT32, R, F));
  STEP(buf_alloc(ctx, &b[B_HU], DSC_DTYPE_FLOAT32, R, F));
  STEP(buf_alloc(ctx, &b[B_ACT], DSC_DTYPE_FLOAT32, R, F));
  STEP(buf_alloc(ctx, &b[B_EO], DSC_DTYPE_FLOAT32, R, D));
  fp8_scratch f8;
  memset(&f8, 0, sizeof f8);
  if (w->fp8) {
    /* held FP8 weights need no weight scratch (a float32 shared expert with FP8 routed
     * ones still does) */
    const int all_held = w->experts_gate_scale_inv && w->experts_up_scale_inv &&
                         w->experts_down_scale_inv &&
                         (Fs == 0 || (w->shared_gate_scale_inv && w->shared_up_scale_inv &&
                                      w->shared_down_scale_inv));
    STEP(fp8_scratch_alloc(ctx, T, R, D, E, F, Fs, &b[B_OFFSETS].t, !all_held, &f8, 0, 0, align));
    STEP(quant_rows(ctx, b, R, D, B_XQ, B_XS));
    const uint8_t *xq = (const uint8_t *)b[B_XQ].t.data;
    const float *xs = (const float *)b[B_XS].t.data;
    STEP(fp8_fwd_q(ctx, &f8, E, R, F, D, xq, xs, w->experts_gate, w->experts_gate_scale_inv,
                   &b[B_OFFSETS].t, &b[B_HG].t));
    STEP(fp8_fwd_q(ctx, &f8, E, R, F, D, xq, xs, w->experts_up, w->experts_up_scale_inv,
                   &b[B_OFFSETS].t, &b[B_HU].t));
    STEP(dsc_swiglu_forward(ctx, &b[B_HG].t, &b[B_HU].t, &b[B_ACT].t));
    STEP(fp8_fwd(ctx, &f8, E, R, D, F, &b[B_ACT].t, w->experts_down, w->experts_down_scale_inv,
                 &b[B_OFFSETS].t, &b[B_EO].t));
  } else {
    /* the offsets are read where they are: in place on the CPU, on the device on CUDA */
    STEP(dsc_grouped_linear_forward_h(ctx, &b[B_XP].t, w->experts_gate, &b[B_OFFSETS].t, NULL, &b[B_HG].t));
    STEP(dsc_grouped_linear_forward_h(ctx, &b[B_XP].t, w->experts_up, &b[B_OFFSETS].t, NULL, &b[B_HU].t));
    STEP(dsc_swiglu_forward(ctx, &b[B_HG].t, &b[B_HU].t, &b[B_ACT].t));
    STEP(dsc_grouped_linear_forward_h(ctx, &b[B_ACT].t, w->experts_down, &b[B_OFFSETS].t, NULL, &b[B_EO].t));
  }
  STEP(dsc_moe_unpermute(ctx, &b[B_EO].t, &b[B_ROWMAP].t, &b[B_WEIGHTS].t, &y2));
  if (Fs > 0) {
    buf *so = &s->tmp[T_SO];
    STEP(buf_alloc(ctx, &b[B_SG], DSC_DTYPE_FLOAT32, T, Fs));
    STEP(buf_alloc(ctx, &b[B_SU], DSC_DTYPE_FLOAT32, T, Fs));
    STEP(buf_alloc(ctx, &b[B_SA], DSC_DTYPE_FLOAT32, T, Fs));
    STEP(buf_alloc(ctx, so, DSC_DTYPE_FLOAT32, T, D));
    if (w->fp8) {
      STEP(fp8_fwd(ctx, &f8, 1, T, Fs, D, &x2, w->shared_gate, w->shared_gate_scale_inv, NULL,
                   &b[B_SG].t));
      STEP(fp8_fwd(ctx, &f8, 1, T, Fs, D, &x2, w->shared_up, w->shared_up_scale_inv, NULL,
                   &b[B_SU].t));
      STEP(dsc_swiglu_forward(ctx, &b[B_SG].t, &b[B_SU].t, &b[B_SA].t));
      STEP(fp8_fwd(ctx, &f8, 1, T, D, Fs, &b[B_SA].t, w->shared_down, w->shared_down_scale_inv,
                   NULL, &so->t));
    } else {
      STEP(dsc_linear_forward(ctx, &x2, w->shared_gate, &b[B_SG].t));
      STEP(dsc_linear_forward(ctx, &x2, w->shared_up, &b[B_SU].t));
      STEP(dsc_swiglu_forward(ctx, &b[B_SG].t, &b[B_SU].t, &b[B_SA].t));
      STEP(dsc_linear_forward(ctx, &b[B_SA].t, w->shared_down, &so->t));
    }
    STEP(dsc_add(ctx, &y2, &so->t, &y2));
  }
  fp8_scratch_free(ctx, &f8);
  ctx->trusted_indices--;
  if (s == ctx->moe_local) {
    s->have = 0; /* the context's handle: buffers kept, nothing to continue from */
  } else if (st == DSC_OK) {
    s->have = 1;
    s->fp8 = w->fp8;
    s->T = T, s->D = D, s->E = E, s->k = k, s->F = F, s->Fs = Fs, s->R = R;
    s->align = align;
  }
  return st;
}

/* Backward of y = x @ w^T accumulating the input gradient: dx_acc += dy @ w, dw = dy^T x (when
 * dw); float32 2-D tensors. */
static dsc_status lin_bwd_acc(dsc_context *ctx, const DLTensor *dy, const DLTensor *x, const DLTensor *w,
                              DLTensor *dx_acc, DLTensor *dw) {
  if (dw) DSC_TRY(dsc_matmul(ctx, dy, x, dw, 1, 0, 1.0f, 0.0f));
  return dsc_matmul(ctx, dy, w, dx_acc, 0, 0, 1.0f, 1.0f);
}

dsc_status dsc_moe_layer_backward(dsc_context *ctx, const dsc_moe_route_params *p,
                                  const dsc_moe_layer_weights *w, const DLTensor *x,
                                  const DLTensor *dy, dsc_moe_layer_saved *saved, DLTensor *dx,
                                  const dsc_moe_layer_grads *g) {
  static const char *const FN = "dsc_moe_layer_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "dy", dy, "x", x));
  if (dx) {
    DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT(DSC_DTYPE_FLOAT32)));
    DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  }
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "p: expected route params, got NULL");
  DSC_CHECK(g != NULL && g->size >= sizeof(dsc_moe_layer_grads), DSC_ERR_INVALID_ARGUMENT, FN,
            "g: expected a dsc_moe_layer_grads with size = %zu", sizeof(dsc_moe_layer_grads));
  DSC_CHECK(saved != NULL && saved->have && saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected the handle filled by dsc_moe_layer_forward on this context");
  const int64_t D = dsc_last_dim(x), T = dsc_rows(x);
  int64_t E, F, Fs;
  DSC_TRY(check_weights(ctx, FN, w, D, 0, &E, &F, &Fs));
  DSC_TRY(dsc_moe_check_route_params(FN, p, E));
  DSC_CHECK(saved->T == T && saved->D == D && saved->E == E && saved->F == F && saved->Fs == Fs &&
                saved->k == p->top_k,
            DSC_ERR_SHAPE, FN,
            "saved: expected activations of a forward with T=%lld, D=%lld, E=%lld, F=%lld, k=%d, got "
            "T=%lld, D=%lld, E=%lld, F=%lld, k=%lld",
            (long long)T, (long long)D, (long long)E, (long long)F, (int)p->top_k, (long long)saved->T,
            (long long)saved->D, (long long)saved->E, (long long)saved->F, (long long)saved->k);
  DSC_CHECK(saved->fp8 == w->fp8, DSC_ERR_INVALID_ARGUMENT, FN,
            "w->fp8: expected %d (the value of the forward that filled `saved`), got %d",
            (int)saved->fp8, (int)w->fp8);
  {
    /* the gradients are written while x, dy and the weights are still read */
    dsc_named_tensor ins[16], outs[8] = {
        {"dx", dx},           {"g->gate", g->gate},
        {"g->experts_gate", g->experts_gate}, {"g->experts_up", g->experts_up},
        {"g->experts_down", g->experts_down}, {"g->shared_gate", g->shared_gate},
        {"g->shared_up", g->shared_up},       {"g->shared_down", g->shared_down}};
    ins[0] = (dsc_named_tensor){"x", x};
    ins[1] = (dsc_named_tensor){"dy", dy};
    const int n_in = 2 + weight_list(w, ins + 2);
    DSC_TRY(dsc_check_outputs_disjoint(FN, 8, outs, n_in, ins));
  }
  const int64_t R = saved->R, k = saved->k;
  buf *b = saved->b;

  int64_t xs2[2], xst2[2], ds2[2], dst2[2];
  DLTensor x2 = flat2(x, xs2, xst2), dy2 = flat2(dy, ds2, dst2);
  buf *tmp = saved->tmp;
  dsc_status st = DSC_OK;
  ctx->trusted_indices++; /* the forward's routing and row map (see the forward) */

  /* routed experts: combine -> down -> SwiGLU -> gate/up -> dispatch */
  STEP(buf_alloc(ctx, &tmp[T_DEO], DSC_DTYPE_FLOAT32, R, D));
  STEP(buf_alloc(ctx, &tmp[T_DW], DSC_DTYPE_FLOAT32, T, k));
  STEP(dsc_moe_unpermute_backward(ctx, &dy2, &b[B_EO].t, &b[B_ROWMAP].t, &b[B_WEIGHTS].t,
                                  &tmp[T_DEO].t, &tmp[T_DW].t));
  fp8_scratch f8;
  memset(&f8, 0, sizeof f8);
  if (w->fp8) STEP(fp8_scratch_alloc(ctx, T, R, D, E, F, Fs, &b[B_OFFSETS].t, 1, &f8, 0, 1, saved->align));
  STEP(buf_alloc(ctx, &tmp[T_DACT], DSC_DTYPE_FLOAT32, R, F));
  if (w->fp8)
    STEP(fp8_bwd(ctx, &f8, E, R, D, F, &tmp[T_DEO].t, &b[B_ACT].t, NULL, w->experts_down,
                 &b[B_OFFSETS].t, &tmp[T_DACT].t, g->experts_down));
  else
    STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DEO].t, &b[B_ACT].t, w->experts_down,
                                     &b[B_OFFSETS].t, NULL, &tmp[T_DACT].t, g->experts_down));
  STEP(buf_alloc(ctx, &tmp[T_DHG], DSC_DTYPE_FLOAT32, R, F));
  STEP(buf_alloc(ctx, &tmp[T_DHU], DSC_DTYPE_FLOAT32, R, F));
  STEP(dsc_swiglu_backward(ctx, &tmp[T_DACT].t, &b[B_HG].t, &b[B_HU].t, &tmp[T_DHG].t, &tmp[T_DHU].t));
  STEP(buf_alloc(ctx, &tmp[T_DXP], DSC_DTYPE_FLOAT32, R, D));
  /* float32 on the CPU: the up projection's input gradient is accumulated into the gate's by
   * the GEMMs (no [R, D] add), its weight gradient checked here as the op would */
  const int cpu_acc = !w->fp8 && !dsc_ctx_is_cuda(ctx);
  if (!cpu_acc) STEP(buf_alloc(ctx, &tmp[T_DXP2], DSC_DTYPE_FLOAT32, R, D));
  if (cpu_acc && g->experts_up) {
    const int64_t shp[3] = {E, F, D};
    STEP(dsc_check_tensor(ctx, FN, "g->experts_up", g->experts_up, DSC_DT(DSC_DTYPE_FLOAT32)));
    STEP(dsc_check_shape(FN, "g->experts_up", g->experts_up, 3, shp));
  }
  if (cpu_acc) {
    STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHG].t, &b[B_XP].t, w->experts_gate,
                                     &b[B_OFFSETS].t, NULL, &tmp[T_DXP].t, g->experts_gate));
    STEP(dsc_cpu_grouped_linear_bwd_acc(ctx, E, R, F, D, (const float *)tmp[T_DHU].t.data,
                                        (const float *)b[B_XP].t.data, (const float *)dsc_data(w->experts_up),
                                        (const int32_t *)b[B_OFFSETS].t.data, (float *)tmp[T_DXP].t.data,
                                        g->experts_up ? (float *)dsc_data(g->experts_up) : NULL));
  } else if (w->fp8) {
    const float *xs = (const float *)b[B_XS].t.data;
    STEP(fp8_bwd(ctx, &f8, E, R, F, D, &tmp[T_DHG].t, &b[B_XQ].t, xs, w->experts_gate,
                 &b[B_OFFSETS].t, &tmp[T_DXP].t, g->experts_gate));
    STEP(fp8_bwd(ctx, &f8, E, R, F, D, &tmp[T_DHU].t, &b[B_XQ].t, xs, w->experts_up, &b[B_OFFSETS].t,
                 &tmp[T_DXP2].t, g->experts_up));
  } else {
    STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHG].t, &b[B_XP].t, w->experts_gate,
                                     &b[B_OFFSETS].t, NULL, &tmp[T_DXP].t, g->experts_gate));
    STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHU].t, &b[B_XP].t, w->experts_up,
                                     &b[B_OFFSETS].t, NULL, &tmp[T_DXP2].t, g->experts_up));
  }
  if (!cpu_acc) STEP(dsc_add(ctx, &tmp[T_DXP].t, &tmp[T_DXP2].t, &tmp[T_DXP].t));
  STEP(buf_alloc(ctx, &tmp[T_DXTOK], DSC_DTYPE_FLOAT32, T, D));
  STEP(dsc_moe_permute_backward(ctx, &tmp[T_DXP].t, &b[B_ROWMAP].t, &tmp[T_DXTOK].t));

  /* router: weights -> logits -> x and the gate weight (the bias gets no gradient) */
  STEP(buf_alloc(ctx, &tmp[T_DLOG], DSC_DTYPE_FLOAT32, T, E));
  STEP(dsc_moe_route_backward(ctx, p, &tmp[T_DW].t, &b[B_SCORES].t, &b[B_INDICES].t,
                              saved->have_aux ? &b[B_DSCORES].t : NULL, &tmp[T_DLOG].t));
  if (cpu_acc) {
    STEP(lin_bwd_acc(ctx, &tmp[T_DLOG].t, &x2, w->gate, &tmp[T_DXTOK].t, g->gate));
  } else {
    STEP(buf_alloc(ctx, &tmp[T_DXR], DSC_DTYPE_FLOAT32, T, D));
    STEP(dsc_linear_backward(ctx, &tmp[T_DLOG].t, &x2, w->gate, &tmp[T_DXR].t, g->gate));
    STEP(dsc_add(ctx, &tmp[T_DXTOK].t, &tmp[T_DXR].t, &tmp[T_DXTOK].t));
  }

  /* shared experts */
  if (Fs > 0) {
    STEP(buf_alloc(ctx, &tmp[T_DSA], DSC_DTYPE_FLOAT32, T, Fs));
    if (w->fp8)
      STEP(fp8_bwd(ctx, &f8, 1, T, D, Fs, &dy2, &b[B_SA].t, NULL, w->shared_down, NULL, &tmp[T_DSA].t,
                   g->shared_down));
    else
      STEP(dsc_linear_backward(ctx, &dy2, &b[B_SA].t, w->shared_down, &tmp[T_DSA].t, g->shared_down));
    STEP(buf_alloc(ctx, &tmp[T_DSG], DSC_DTYPE_FLOAT32, T, Fs));
    STEP(buf_alloc(ctx, &tmp[T_DSU], DSC_DTYPE_FLOAT32, T, Fs));
    STEP(dsc_swiglu_backward(ctx, &tmp[T_DSA].t, &b[B_SG].t, &b[B_SU].t, &tmp[T_DSG].t, &tmp[T_DSU].t));
    STEP(buf_alloc(ctx, &tmp[T_DXS], DSC_DTYPE_FLOAT32, T, D));
    const DLTensor *sw[2] = {w->shared_gate, w->shared_up};
    DLTensor *sg[2] = {g->shared_gate, g->shared_up};
    const DLTensor *sdy[2] = {&tmp[T_DSG].t, &tmp[T_DSU].t};
    for (int i = 0; i < 2; ++i) {
      if (cpu_acc) {
        STEP(lin_bwd_acc(ctx, sdy[i], &x2, sw[i], &tmp[T_DXTOK].t, sg[i]));
        continue;
      }
      if (w->fp8)
        STEP(fp8_bwd(ctx, &f8, 1, T, Fs, D, sdy[i], &x2, NULL, sw[i], NULL, &tmp[T_DXS].t, sg[i]));
      else
        STEP(dsc_linear_backward(ctx, sdy[i], &x2, sw[i], &tmp[T_DXS].t, sg[i]));
      STEP(dsc_add(ctx, &tmp[T_DXTOK].t, &tmp[T_DXS].t, &tmp[T_DXTOK].t));
    }
  }
  fp8_scratch_free(ctx, &f8);
  if (dx && st == DSC_OK) {
    int64_t dxs2[2], dxst2[2];
    DLTensor dx2 = flat2(dx, dxs2, dxst2);
    DLDevice dev = ctx->device;
    st = dsc_memcpy(ctx, dsc_data(&dx2), dev, tmp[T_DXTOK].t.data, dev, (size_t)(T * D) * sizeof(float));
  }
  ctx->trusted_indices--;
  return st;
}

dsc_status dsc_moe_layer_aux_loss(dsc_context *ctx, dsc_moe_layer_saved *saved, int64_t seq_len,
                                  float alpha, float *loss) {
  static const char *const FN = "dsc_moe_layer_aux_loss";
  DSC_CHECK(saved != NULL && saved->have && saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected the handle filled by dsc_moe_layer_forward on this context");
  DSC_CHECK(seq_len >= 1 && saved->T % seq_len == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "seq_len: expected a divisor of the %lld tokens, got %lld", (long long)saved->T,
            (long long)seq_len);
  DSC_CHECK(isfinite(alpha) && alpha >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "alpha: expected a finite number >= 0, got %g", (double)alpha);
  buf *b = saved->b;
  saved->have_aux = 0;
  dsc_status st = DSC_OK;
  STEP(buf_alloc(ctx, &b[B_DSCORES], DSC_DTYPE_FLOAT32, saved->T, saved->E));
  STEP(buf_alloc(ctx, &b[B_AUXLOSS], DSC_DTYPE_FLOAT32, 1, -1));
  STEP(dsc_moe_seq_aux_loss(ctx, &b[B_SCORES].t, &b[B_INDICES].t, seq_len, alpha, &b[B_AUXLOSS].t,
                            &b[B_DSCORES].t));
  /* loss NULL: no copy back (a caller that reads the value later, with others) */
  if (loss) STEP(dsc_memcpy(ctx, loss, (DLDevice){kDLCPU, 0}, b[B_AUXLOSS].t.data, ctx->device, sizeof(float)));
  if (st == DSC_OK) saved->have_aux = 1;
  return st;
}

const float *dsc_moe_layer_saved_aux_device(const dsc_moe_layer_saved *saved) {
  return saved && saved->have_aux ? (const float *)saved->b[B_AUXLOSS].t.data : NULL;
}

dsc_status dsc_moe_layer_saved_routing(dsc_context *ctx, const dsc_moe_layer_saved *saved, DLTensor *indices,
                                       DLTensor *weights, DLTensor *scores) {
  static const char *const FN = "dsc_moe_layer_saved_routing";
  DSC_CHECK(saved != NULL && saved->have && saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected the handle filled by dsc_moe_layer_forward on this context");
  const buf *b = saved->b;
  struct {
    DLTensor *t;
    const char *name;
    int idx;
    unsigned dt;
  } outs[3] = {{indices, "indices", B_INDICES, DSC_DT(DSC_DTYPE_INT32)},
               {weights, "weights", B_WEIGHTS, DSC_DT(DSC_DTYPE_FLOAT32)},
               {scores, "scores", B_SCORES, DSC_DT(DSC_DTYPE_FLOAT32)}};
  for (int i = 0; i < 3; ++i) {
    if (!outs[i].t) continue;
    DSC_TRY(dsc_check_tensor(ctx, FN, outs[i].name, outs[i].t, outs[i].dt));
    for (int j = 0; j < i; ++j)
      DSC_TRY(dsc_check_no_overlap(FN, outs[i].name, outs[i].t, outs[j].name, outs[j].t));
    const DLTensor *src = &b[outs[i].idx].t;
    DSC_CHECK(dsc_numel(outs[i].t) == dsc_numel(src) && dsc_last_dim(outs[i].t) == src->shape[1], DSC_ERR_SHAPE,
              FN, "%s: expected %lld x %lld values ([..., %lld]), got %lld", outs[i].name,
              (long long)src->shape[0], (long long)src->shape[1], (long long)src->shape[1],
              (long long)dsc_numel(outs[i].t));
    DSC_TRY(dsc_memcpy(ctx, dsc_data(outs[i].t), ctx->device, src->data, ctx->device,
                       (size_t)dsc_numel(src) * 4));
  }
  return DSC_OK;
}

/* ---- the layer with an exchange and phases (moe_layer_ex.h) ----------------------------- */

/* counts[e] = offsets[e+1] - offsets[e] for the permuted layout's offsets [E+1] (device). */
static dsc_status host_counts(dsc_context *ctx, const DLTensor *offsets, int64_t E, int64_t *counts) {
  int32_t *h = (int32_t *)malloc((size_t)(E + 1) * sizeof(int32_t));
  if (!h) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_moe_layer", "out of host memory");
  dsc_status st = dsc_memcpy(ctx, h, (DLDevice){kDLCPU, 0}, dsc_data(offsets), ctx->device,
                             (size_t)(E + 1) * sizeof(int32_t));
  for (int64_t e = 0; st == DSC_OK && e < E; ++e) counts[e] = h[e + 1] - h[e];
  free(h);
  return st;
}

static dsc_status check_phase(const char *fn, int32_t phase, const dsc_moe_layer_saved *saved,
                              const dsc_moe_exchange *ex, int32_t mb, int32_t align) {
  DSC_CHECK(phase >= 1 && phase <= DSC_MOE_PHASE_ALL, DSC_ERR_INVALID_ARGUMENT, fn,
            "phase: expected a non-empty mask of BEGIN (1), MIDDLE (2), END (4), got %d", (int)phase);
  DSC_CHECK(phase == DSC_MOE_PHASE_ALL || saved != NULL, DSC_ERR_INVALID_ARGUMENT, fn,
            "saved: expected a handle for a call of part of the layer (phase %d)", (int)phase);
  DSC_CHECK(!ex || (ex->n_local >= 1 && ex->plan && ex->dispatch_start && ex->dispatch_finish &&
                    ex->combine_start && ex->combine_finish),
            DSC_ERR_INVALID_ARGUMENT, fn, "ex: expected an exchange with n_local >= 1 and every hook");
  DSC_CHECK(!ex || align == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "align: expected 1 with an exchange (rows travel unpadded), got %d", (int)align);
  DSC_CHECK(mb == 0 || mb == 1, DSC_ERR_INVALID_ARGUMENT, fn, "mb: expected 0 or 1, got %d", (int)mb);
  return DSC_OK;
}

/* The expert GEMMs of the forward on X [rows, D] grouped by the G experts of offs (device,
 * [G+1]) into out [rows, D]; saves hg, hu, act. f8: the FP8 scratch (w->fp8), where X is
 * read as quantized in b[B_XQ] / b[B_XS] instead. */
static dsc_status experts_fwd(dsc_context *ctx, const dsc_moe_layer_weights *w, buf *b, int64_t G, int64_t rows,
                              int64_t D, int64_t F, buf *X, buf *offs, fp8_scratch *f8, buf *out) {
  dsc_status st = DSC_OK;
  STEP(buf_alloc(ctx, &b[B_HG], DSC_DTYPE_FLOAT32, rows, F));
  STEP(buf_alloc(ctx, &b[B_HU], DSC_DTYPE_FLOAT32, rows, F));
  STEP(buf_alloc(ctx, &b[B_ACT], DSC_DTYPE_FLOAT32, rows, F));
  STEP(buf_alloc(ctx, out, DSC_DTYPE_FLOAT32, rows, D));
  if (st != DSC_OK || rows == 0) return st;
  if (w->fp8) {
    /* X's rows as quantized before the dispatch (B_XQ / B_XS) */
    const uint8_t *xq = (const uint8_t *)b[B_XQ].t.data;
    const float *xs = (const float *)b[B_XS].t.data;
    STEP(fp8_fwd_q(ctx, f8, G, rows, F, D, xq, xs, w->experts_gate, w->experts_gate_scale_inv, &offs->t,
                   &b[B_HG].t));
    STEP(fp8_fwd_q(ctx, f8, G, rows, F, D, xq, xs, w->experts_up, w->experts_up_scale_inv, &offs->t,
                   &b[B_HU].t));
    STEP(dsc_swiglu_forward(ctx, &b[B_HG].t, &b[B_HU].t, &b[B_ACT].t));
    STEP(fp8_fwd(ctx, f8, G, rows, D, F, &b[B_ACT].t, w->experts_down, w->experts_down_scale_inv, &offs->t,
                 &out->t));
  } else {
    /* the layer's own offsets (trusted): read in place (CPU) or on the device (CUDA) */
    STEP(dsc_grouped_linear_forward_h(ctx, &X->t, w->experts_gate, &offs->t, NULL, &b[B_HG].t));
    STEP(dsc_grouped_linear_forward_h(ctx, &X->t, w->experts_up, &offs->t, NULL, &b[B_HU].t));
    STEP(dsc_swiglu_forward(ctx, &b[B_HG].t, &b[B_HU].t, &b[B_ACT].t));
    STEP(dsc_grouped_linear_forward_h(ctx, &b[B_ACT].t, w->experts_down, &offs->t, NULL, &out->t));
  }
  return st;
}

dsc_status dsc_moe_layer_forward_ex(dsc_context *ctx, const dsc_moe_route_params *p, int32_t align,
                                    const dsc_moe_layer_weights *w, const DLTensor *x, DLTensor *y,
                                    DLTensor *counts, dsc_moe_layer_saved *saved, const dsc_moe_exchange *ex,
                                    int32_t mb, int32_t phase) {
  static const char *const FN = "dsc_moe_layer_forward";
  if (!ex && phase == DSC_MOE_PHASE_ALL) return dsc_moe_layer_forward(ctx, p, align, w, x, y, counts, saved);
  DSC_TRY(check_phase(FN, phase, saved, ex, mb, align));
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "y", y, "x", x));
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "p: expected route params, got NULL");
  DSC_CHECK(align >= 1, DSC_ERR_INVALID_ARGUMENT, FN, "align: expected >= 1, got %d", (int)align);
  DSC_CHECK(saved == NULL || saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected a handle created with this context");
  const int64_t D = dsc_last_dim(x), T = dsc_rows(x);
  int64_t E, F, Fs;
  DSC_TRY(check_weights_el(ctx, FN, w, D, saved == NULL, ex ? ex->n_local : 0, &E, &F, &Fs));
  const int64_t El = ex ? ex->n_local : E;
  if (counts) DSC_TRY(dsc_check_tensor(ctx, FN, "counts", counts, DSC_DT_INDEX));
  {
    dsc_named_tensor ins[15], outs[2] = {{"y", y}, {"counts", counts}};
    ins[0] = (dsc_named_tensor){"x", x};
    const int n_in = 1 + weight_list(w, ins + 1);
    DSC_TRY(dsc_check_outputs_disjoint(FN, 2, outs, n_in, ins));
  }
  const int64_t k = p->top_k;
  dsc_moe_layer_saved *s = saved;
  if (!s) DSC_TRY(local_saved(ctx, FN, &s));
  if (!(phase & DSC_MOE_PHASE_BEGIN))
    DSC_CHECK(s->fwd_phase != 0 && !(s->fwd_phase & phase) && s->T == T && s->D == D && s->ex == (ex != NULL),
              DSC_ERR_INVALID_ARGUMENT, FN,
              "phase: %d continues no forward begun on this handle with the same x (phases done: %d)", (int)phase,
              (int)s->fwd_phase);
  int64_t xs2[2], xst2[2], ys2[2], yst2[2];
  DLTensor x2 = flat2(x, xs2, xst2), y2 = flat2(y, ys2, yst2);
  buf *b = s->b;
  dsc_status st = DSC_OK;
  int64_t *cnt = NULL;

  if (phase & DSC_MOE_PHASE_BEGIN) {
    s->have = 0;
    s->have_aux = 0;
    s->fwd_phase = 0;
    s->bwd_phase = 0;
    buf *logits = &s->tmp[T_LOGITS];
    STEP(buf_alloc(ctx, logits, DSC_DTYPE_FLOAT32, T, E));
    STEP(buf_alloc(ctx, &b[B_SCORES], DSC_DTYPE_FLOAT32, T, E));
    STEP(buf_alloc(ctx, &b[B_INDICES], DSC_DTYPE_INT32, T, k));
    STEP(buf_alloc(ctx, &b[B_WEIGHTS], DSC_DTYPE_FLOAT32, T, k));
    int64_t R = 0;
    if (T > 0) {
      STEP(dsc_linear_forward(ctx, &x2, w->gate, &logits->t));
      STEP(dsc_moe_route(ctx, p, &logits->t, w->bias, &b[B_INDICES].t, &b[B_WEIGHTS].t, &b[B_SCORES].t));
      if (counts) STEP(dsc_moe_expert_load(ctx, &b[B_INDICES].t, counts));
      STEP(dsc_moe_permute_rows(ctx, &b[B_INDICES].t, (int32_t)E, align, &R));
    } else if (counts) {
      /* no tokens: no load */
      const size_t cb = (size_t)dsc_numel(counts) * dsc_dtype_size(dsc_tensor_dtype(counts));
      void *z = calloc(1, cb ? cb : 1);
      if (!z) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
      STEP(dsc_memcpy(ctx, dsc_data(counts), ctx->device, z, (DLDevice){kDLCPU, 0}, cb));
      free(z);
    }
    STEP(buf_alloc(ctx, &b[B_XP], DSC_DTYPE_FLOAT32, R, D));
    STEP(buf_alloc(ctx, &b[B_OFFSETS], DSC_DTYPE_INT32, E + 1, -1));
    STEP(buf_alloc(ctx, &b[B_ROWMAP], DSC_DTYPE_INT32, T, k));
    if (T > 0)
      STEP(dsc_moe_permute(ctx, &x2, &b[B_INDICES].t, (int32_t)E, align, &b[B_XP].t, &b[B_OFFSETS].t,
                           &b[B_ROWMAP].t));
    int64_t Rin = R;
    if (ex && st == DSC_OK) {
      cnt = (int64_t *)calloc((size_t)(E + El), sizeof(int64_t)); /* counts [E], then local [El] */
      int32_t *offl = (int32_t *)malloc((size_t)(El + 1) * sizeof(int32_t));
      if (!cnt || !offl) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
      if (T > 0) STEP(host_counts(ctx, &b[B_OFFSETS].t, E, cnt));
      STEP(ex->plan(ex->user, ctx, mb, cnt, &Rin, cnt + E));
      if (st == DSC_OK) {
        offl[0] = 0;
        for (int64_t e = 0; e < El; ++e) offl[e + 1] = offl[e] + (int32_t)cnt[E + e];
        if (offl[El] != Rin)
          st = dsc_error(DSC_ERR_INTERNAL, FN, "ex: the plan's local counts sum to %d, its rows to %lld",
                         (int)offl[El], (long long)Rin);
      }
      STEP(buf_alloc(ctx, &b[B_OFFL], DSC_DTYPE_INT32, El + 1, -1));
      STEP(dsc_memcpy(ctx, b[B_OFFL].t.data, ctx->device, offl, (DLDevice){kDLCPU, 0},
                      (size_t)(El + 1) * sizeof(int32_t)));
      if (w->fp8) {
        /* quantized here, sent as E4M3 + 1x128 scales: D + 4 * ceil(D/128) bytes a row */
        STEP(quant_rows(ctx, b, R, D, B_XPQ, B_XPS));
        STEP(buf_alloc(ctx, &b[B_XQ], DSC_DTYPE_FLOAT8_E4M3FN, Rin, D));
        STEP(buf_alloc(ctx, &b[B_XS], DSC_DTYPE_FLOAT32, Rin, cdiv128(D)));
        if (st == DSC_OK) {
          const dsc_moe_plane pl[2] = {{b[B_XPQ].t.data, (size_t)D, b[B_XQ].t.data},
                                       {b[B_XPS].t.data, (size_t)cdiv128(D) * sizeof(float), b[B_XS].t.data}};
          st = ex->dispatch_start(ex->user, ctx, mb, 2, pl);
        }
      } else {
        STEP(buf_alloc(ctx, &b[B_XR], DSC_DTYPE_FLOAT32, Rin, D));
        if (st == DSC_OK) {
          const dsc_moe_plane pl = {b[B_XP].t.data, (size_t)D * sizeof(float), b[B_XR].t.data};
          st = ex->dispatch_start(ex->user, ctx, mb, 1, &pl);
        }
      }
      free(offl);
    } else if (w->fp8) {
      STEP(quant_rows(ctx, b, R, D, B_XQ, B_XS)); /* no exchange: the experts' rows are these */
    }
    if (st == DSC_OK) {
      s->T = T, s->D = D, s->E = E, s->k = k, s->F = F, s->Fs = Fs, s->R = R;
      s->ex = ex != NULL;
      s->El = El;
      s->Rin = Rin;
      s->fp8 = w->fp8;
      s->fwd_phase |= DSC_MOE_PHASE_BEGIN;
    }
  }

  if ((phase & DSC_MOE_PHASE_MIDDLE) && st == DSC_OK) {
    const int64_t Rin = s->Rin;
    if (ex) STEP(ex->dispatch_finish(ex->user, ctx, mb));
    buf *X = ex ? &b[B_XR] : &b[B_XP], *offs = ex ? &b[B_OFFL] : &b[B_OFFSETS];
    buf *out = ex ? &b[B_EOR] : &b[B_EO];
    fp8_scratch f8;
    memset(&f8, 0, sizeof f8);
    if (w->fp8 && st == DSC_OK) {
      const int all_held = w->experts_gate_scale_inv && w->experts_up_scale_inv && w->experts_down_scale_inv &&
                           (Fs == 0 || (w->shared_gate_scale_inv && w->shared_up_scale_inv &&
                                        w->shared_down_scale_inv));
      STEP(fp8_scratch_alloc(ctx, T, Rin, D, El, F, Fs, &offs->t, !all_held, &f8, 0, 0, 1));
    }
    STEP(experts_fwd(ctx, w, b, El, Rin, D, F, X, offs, &f8, out));
    if (ex) {
      STEP(buf_alloc(ctx, &b[B_EO], DSC_DTYPE_FLOAT32, s->R, D));
      STEP(ex->combine_start(ex->user, ctx, mb, b[B_EOR].t.data, (size_t)D * sizeof(float), b[B_EO].t.data));
    }
    /* the shared experts compute while the combine is in flight */
    if (Fs > 0 && T > 0) {
      buf *so = &s->tmp[T_SO];
      STEP(buf_alloc(ctx, &b[B_SG], DSC_DTYPE_FLOAT32, T, Fs));
      STEP(buf_alloc(ctx, &b[B_SU], DSC_DTYPE_FLOAT32, T, Fs));
      STEP(buf_alloc(ctx, &b[B_SA], DSC_DTYPE_FLOAT32, T, Fs));
      STEP(buf_alloc(ctx, so, DSC_DTYPE_FLOAT32, T, D));
      if (w->fp8) {
        STEP(fp8_fwd(ctx, &f8, 1, T, Fs, D, &x2, w->shared_gate, w->shared_gate_scale_inv, NULL, &b[B_SG].t));
        STEP(fp8_fwd(ctx, &f8, 1, T, Fs, D, &x2, w->shared_up, w->shared_up_scale_inv, NULL, &b[B_SU].t));
        STEP(dsc_swiglu_forward(ctx, &b[B_SG].t, &b[B_SU].t, &b[B_SA].t));
        STEP(fp8_fwd(ctx, &f8, 1, T, D, Fs, &b[B_SA].t, w->shared_down, w->shared_down_scale_inv, NULL, &so->t));
      } else {
        STEP(dsc_linear_forward(ctx, &x2, w->shared_gate, &b[B_SG].t));
        STEP(dsc_linear_forward(ctx, &x2, w->shared_up, &b[B_SU].t));
        STEP(dsc_swiglu_forward(ctx, &b[B_SG].t, &b[B_SU].t, &b[B_SA].t));
        STEP(dsc_linear_forward(ctx, &b[B_SA].t, w->shared_down, &so->t));
      }
    }
    fp8_scratch_free(ctx, &f8);
    if (st == DSC_OK) s->fwd_phase |= DSC_MOE_PHASE_MIDDLE;
  }

  if ((phase & DSC_MOE_PHASE_END) && st == DSC_OK) {
    if (ex) STEP(ex->combine_finish(ex->user, ctx, mb));
    if (T > 0) {
      STEP(dsc_moe_unpermute(ctx, &b[B_EO].t, &b[B_ROWMAP].t, &b[B_WEIGHTS].t, &y2));
      if (Fs > 0) STEP(dsc_add(ctx, &y2, &s->tmp[T_SO].t, &y2));
    }
    if (st == DSC_OK) {
      s->fwd_phase |= DSC_MOE_PHASE_END;
      s->have = 1;
    }
  }
  free(cnt);
  if (s == ctx->moe_local) {
    s->have = 0; /* the context's handle: buffers kept, nothing to continue from */
    s->fwd_phase = 0;
  } else if (st != DSC_OK) {
    s->have = 0;
    s->fwd_phase = 0;
  }
  return st;
}

dsc_status dsc_moe_layer_backward_ex(dsc_context *ctx, const dsc_moe_route_params *p,
                                     const dsc_moe_layer_weights *w, const DLTensor *x, const DLTensor *dy,
                                     dsc_moe_layer_saved *saved, DLTensor *dx, const dsc_moe_layer_grads *g,
                                     const dsc_moe_exchange *ex, int32_t mb, int32_t phase) {
  static const char *const FN = "dsc_moe_layer_backward";
  if (!ex && phase == DSC_MOE_PHASE_ALL) return dsc_moe_layer_backward(ctx, p, w, x, dy, saved, dx, g);
  DSC_TRY(check_phase(FN, phase, saved, ex, mb, 1));
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "dy", dy, "x", x));
  if (dx) {
    DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT(DSC_DTYPE_FLOAT32)));
    DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  }
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "p: expected route params, got NULL");
  DSC_CHECK(g != NULL && g->size >= sizeof(dsc_moe_layer_grads), DSC_ERR_INVALID_ARGUMENT, FN,
            "g: expected a dsc_moe_layer_grads with size = %zu", sizeof(dsc_moe_layer_grads));
  DSC_CHECK(saved != NULL && saved->have && saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected the handle filled by dsc_moe_layer_forward on this context");
  const int64_t D = dsc_last_dim(x), T = dsc_rows(x);
  int64_t E, F, Fs;
  DSC_TRY(check_weights_el(ctx, FN, w, D, 0, ex ? ex->n_local : 0, &E, &F, &Fs));
  const int64_t El = ex ? ex->n_local : E;
  DSC_CHECK(saved->T == T && saved->D == D && saved->E == E && saved->F == F && saved->Fs == Fs &&
                saved->k == p->top_k && saved->ex == (ex != NULL) && saved->El == El,
            DSC_ERR_SHAPE, FN,
            "saved: expected activations of a forward with T=%lld, D=%lld, E=%lld, F=%lld, k=%d and %s exchange",
            (long long)T, (long long)D, (long long)E, (long long)F, (int)p->top_k, ex ? "an" : "no");
  DSC_CHECK(saved->fp8 == w->fp8, DSC_ERR_INVALID_ARGUMENT, FN,
            "w->fp8: expected %d (the value of the forward that filled `saved`), got %d", (int)saved->fp8,
            (int)w->fp8);
  if (!(phase & DSC_MOE_PHASE_BEGIN))
    DSC_CHECK(saved->bwd_phase != 0 && !(saved->bwd_phase & phase), DSC_ERR_INVALID_ARGUMENT, FN,
              "phase: %d continues no backward begun on this handle (phases done: %d)", (int)phase,
              (int)saved->bwd_phase);
  {
    dsc_named_tensor ins[16], outs[8] = {
        {"dx", dx},           {"g->gate", g->gate},
        {"g->experts_gate", g->experts_gate}, {"g->experts_up", g->experts_up},
        {"g->experts_down", g->experts_down}, {"g->shared_gate", g->shared_gate},
        {"g->shared_up", g->shared_up},       {"g->shared_down", g->shared_down}};
    ins[0] = (dsc_named_tensor){"x", x};
    ins[1] = (dsc_named_tensor){"dy", dy};
    const int n_in = 2 + weight_list(w, ins + 2);
    DSC_TRY(dsc_check_outputs_disjoint(FN, 8, outs, n_in, ins));
  }
  const int64_t R = saved->R, Rin = saved->Rin, k = saved->k;
  buf *b = saved->b, *tmp = saved->tmp;
  int64_t xs2[2], xst2[2], ds2[2], dst2[2];
  DLTensor x2 = flat2(x, xs2, xst2), dy2 = flat2(dy, ds2, dst2);
  const int cpu_acc = !w->fp8 && !dsc_ctx_is_cuda(ctx);
  dsc_status st = DSC_OK;

  if (phase & DSC_MOE_PHASE_BEGIN) {
    saved->bwd_phase = 0;
    STEP(buf_alloc(ctx, &tmp[T_DEO], DSC_DTYPE_FLOAT32, R, D));
    STEP(buf_alloc(ctx, &tmp[T_DW], DSC_DTYPE_FLOAT32, T, k));
    if (T > 0)
      STEP(dsc_moe_unpermute_backward(ctx, &dy2, &b[B_EO].t, &b[B_ROWMAP].t, &b[B_WEIGHTS].t, &tmp[T_DEO].t,
                                      &tmp[T_DW].t));
    if (ex) {
      STEP(buf_alloc(ctx, &tmp[T_DEOR], DSC_DTYPE_FLOAT32, Rin, D));
      if (st == DSC_OK) {
        const dsc_moe_plane pl = {tmp[T_DEO].t.data, (size_t)D * sizeof(float), tmp[T_DEOR].t.data};
        st = ex->dispatch_start(ex->user, ctx, mb, 1, &pl);
      }
    }
    if (st == DSC_OK) saved->bwd_phase |= DSC_MOE_PHASE_BEGIN;
  }

  if ((phase & DSC_MOE_PHASE_MIDDLE) && st == DSC_OK) {
    if (ex) STEP(ex->dispatch_finish(ex->user, ctx, mb));
    buf *X = ex ? &b[B_XR] : &b[B_XP], *offs = ex ? &b[B_OFFL] : &b[B_OFFSETS];
    buf *deo = ex ? &tmp[T_DEOR] : &tmp[T_DEO];
    buf *dxp = ex ? &tmp[T_DXPR] : &tmp[T_DXP];
    fp8_scratch f8;
    memset(&f8, 0, sizeof f8);
    if (w->fp8) STEP(fp8_scratch_alloc(ctx, T, Rin, D, El, F, Fs, &offs->t, 1, &f8, 1, 1, 1));
    STEP(buf_alloc(ctx, &tmp[T_DACT], DSC_DTYPE_FLOAT32, Rin, F));
    STEP(buf_alloc(ctx, &tmp[T_DHG], DSC_DTYPE_FLOAT32, Rin, F));
    STEP(buf_alloc(ctx, &tmp[T_DHU], DSC_DTYPE_FLOAT32, Rin, F));
    STEP(buf_alloc(ctx, dxp, DSC_DTYPE_FLOAT32, Rin, D));
    if (!cpu_acc) STEP(buf_alloc(ctx, &tmp[T_DXP2], DSC_DTYPE_FLOAT32, Rin, D));
    if (cpu_acc && g->experts_up) {
      const int64_t shp[3] = {El, F, D};
      STEP(dsc_check_tensor(ctx, FN, "g->experts_up", g->experts_up, DSC_DT(DSC_DTYPE_FLOAT32)));
      STEP(dsc_check_shape(FN, "g->experts_up", g->experts_up, 3, shp));
    }
    if (Rin == 0) {
      /* no rows here: the local experts' weight gradients are zeros */
      DLTensor *gw[3] = {g->experts_gate, g->experts_up, g->experts_down};
      for (int i = 0; i < 3 && st == DSC_OK; ++i) {
        if (!gw[i]) continue;
        const size_t nb = (size_t)dsc_numel(gw[i]) * sizeof(float);
        void *z = calloc(1, nb ? nb : 1);
        if (!z) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
        STEP(dsc_memcpy(ctx, dsc_data(gw[i]), ctx->device, z, (DLDevice){kDLCPU, 0}, nb));
        free(z);
      }
    } else {
      if (w->fp8)
        STEP(fp8_bwd(ctx, &f8, El, Rin, D, F, &deo->t, &b[B_ACT].t, NULL, w->experts_down, &offs->t, &tmp[T_DACT].t,
                     g->experts_down));
      else
        STEP(dsc_grouped_linear_backward_h(ctx, &deo->t, &b[B_ACT].t, w->experts_down, &offs->t, NULL,
                                           &tmp[T_DACT].t, g->experts_down));
      STEP(dsc_swiglu_backward(ctx, &tmp[T_DACT].t, &b[B_HG].t, &b[B_HU].t, &tmp[T_DHG].t, &tmp[T_DHU].t));
      if (cpu_acc) {
        STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHG].t, &X->t, w->experts_gate, &offs->t, NULL,
                                           &dxp->t, g->experts_gate));
        STEP(dsc_cpu_grouped_linear_bwd_acc(ctx, El, Rin, F, D, (const float *)tmp[T_DHU].t.data,
                                            (const float *)X->t.data, (const float *)dsc_data(w->experts_up),
                                            (const int32_t *)offs->t.data, (float *)dxp->t.data,
                                            g->experts_up ? (float *)dsc_data(g->experts_up) : NULL));
      } else if (w->fp8) {
        const float *xs = (const float *)b[B_XS].t.data;
        STEP(fp8_bwd(ctx, &f8, El, Rin, F, D, &tmp[T_DHG].t, &b[B_XQ].t, xs, w->experts_gate, &offs->t, &dxp->t,
                     g->experts_gate));
        STEP(fp8_bwd(ctx, &f8, El, Rin, F, D, &tmp[T_DHU].t, &b[B_XQ].t, xs, w->experts_up, &offs->t, &tmp[T_DXP2].t,
                     g->experts_up));
      } else {
        STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHG].t, &X->t, w->experts_gate, &offs->t, NULL,
                                           &dxp->t, g->experts_gate));
        STEP(dsc_grouped_linear_backward_h(ctx, &tmp[T_DHU].t, &X->t, w->experts_up, &offs->t, NULL,
                                           &tmp[T_DXP2].t, g->experts_up));
      }
      if (!cpu_acc) STEP(dsc_add(ctx, &dxp->t, &tmp[T_DXP2].t, &dxp->t));
    }
    if (ex) {
      STEP(buf_alloc(ctx, &tmp[T_DXP], DSC_DTYPE_FLOAT32, R, D));
      STEP(ex->combine_start(ex->user, ctx, mb, tmp[T_DXPR].t.data, (size_t)D * sizeof(float),
                             tmp[T_DXP].t.data));
    }
    /* shared experts while the combine is in flight: their weight gradients (and, off the
     * fused CPU path, their input gradients into T_DXS / T_DXS2; added at the end) */
    if (Fs > 0 && T == 0) {
      DLTensor *gz[3] = {g->shared_gate, g->shared_up, g->shared_down}; /* no tokens: zeros */
      for (int i = 0; i < 3 && st == DSC_OK; ++i) {
        if (!gz[i]) continue;
        const size_t nb = (size_t)dsc_numel(gz[i]) * sizeof(float);
        void *z = calloc(1, nb ? nb : 1);
        if (!z) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
        STEP(dsc_memcpy(ctx, dsc_data(gz[i]), ctx->device, z, (DLDevice){kDLCPU, 0}, nb));
        free(z);
      }
    }
    if (Fs > 0 && T > 0) {
      STEP(buf_alloc(ctx, &tmp[T_DSA], DSC_DTYPE_FLOAT32, T, Fs));
      if (w->fp8)
        STEP(fp8_bwd(ctx, &f8, 1, T, D, Fs, &dy2, &b[B_SA].t, NULL, w->shared_down, NULL, &tmp[T_DSA].t,
                     g->shared_down));
      else
        STEP(dsc_linear_backward(ctx, &dy2, &b[B_SA].t, w->shared_down, &tmp[T_DSA].t, g->shared_down));
      STEP(buf_alloc(ctx, &tmp[T_DSG], DSC_DTYPE_FLOAT32, T, Fs));
      STEP(buf_alloc(ctx, &tmp[T_DSU], DSC_DTYPE_FLOAT32, T, Fs));
      STEP(dsc_swiglu_backward(ctx, &tmp[T_DSA].t, &b[B_SG].t, &b[B_SU].t, &tmp[T_DSG].t, &tmp[T_DSU].t));
      const DLTensor *sw[2] = {w->shared_gate, w->shared_up};
      DLTensor *sg[2] = {g->shared_gate, g->shared_up};
      const DLTensor *sdy[2] = {&tmp[T_DSG].t, &tmp[T_DSU].t};
      const int sx[2] = {T_DXS, T_DXS2};
      for (int i = 0; i < 2; ++i) {
        if (cpu_acc) {
          if (sg[i]) STEP(dsc_matmul(ctx, sdy[i], &x2, sg[i], 1, 0, 1.0f, 0.0f));
          continue;
        }
        STEP(buf_alloc(ctx, &tmp[sx[i]], DSC_DTYPE_FLOAT32, T, D));
        if (w->fp8)
          STEP(fp8_bwd(ctx, &f8, 1, T, Fs, D, sdy[i], &x2, NULL, sw[i], NULL, &tmp[sx[i]].t, sg[i]));
        else
          STEP(dsc_linear_backward(ctx, sdy[i], &x2, sw[i], &tmp[sx[i]].t, sg[i]));
      }
    }
    fp8_scratch_free(ctx, &f8);
    if (st == DSC_OK) saved->bwd_phase |= DSC_MOE_PHASE_MIDDLE;
  }

  if ((phase & DSC_MOE_PHASE_END) && st == DSC_OK) {
    if (ex) STEP(ex->combine_finish(ex->user, ctx, mb));
    if (T > 0) {
      STEP(buf_alloc(ctx, &tmp[T_DXTOK], DSC_DTYPE_FLOAT32, T, D));
      STEP(dsc_moe_permute_backward(ctx, &tmp[T_DXP].t, &b[B_ROWMAP].t, &tmp[T_DXTOK].t));
      STEP(buf_alloc(ctx, &tmp[T_DLOG], DSC_DTYPE_FLOAT32, T, E));
      STEP(dsc_moe_route_backward(ctx, p, &tmp[T_DW].t, &b[B_SCORES].t, &b[B_INDICES].t,
                                  saved->have_aux ? &b[B_DSCORES].t : NULL, &tmp[T_DLOG].t));
      if (cpu_acc) {
        STEP(lin_bwd_acc(ctx, &tmp[T_DLOG].t, &x2, w->gate, &tmp[T_DXTOK].t, g->gate));
      } else {
        STEP(buf_alloc(ctx, &tmp[T_DXR], DSC_DTYPE_FLOAT32, T, D));
        STEP(dsc_linear_backward(ctx, &tmp[T_DLOG].t, &x2, w->gate, &tmp[T_DXR].t, g->gate));
        STEP(dsc_add(ctx, &tmp[T_DXTOK].t, &tmp[T_DXR].t, &tmp[T_DXTOK].t));
      }
      if (Fs > 0) {
        if (cpu_acc) {
          STEP(dsc_matmul(ctx, &tmp[T_DSG].t, w->shared_gate, &tmp[T_DXTOK].t, 0, 0, 1.0f, 1.0f));
          STEP(dsc_matmul(ctx, &tmp[T_DSU].t, w->shared_up, &tmp[T_DXTOK].t, 0, 0, 1.0f, 1.0f));
        } else {
          STEP(dsc_add(ctx, &tmp[T_DXTOK].t, &tmp[T_DXS].t, &tmp[T_DXTOK].t));
          STEP(dsc_add(ctx, &tmp[T_DXTOK].t, &tmp[T_DXS2].t, &tmp[T_DXTOK].t));
        }
      }
      if (dx && st == DSC_OK) {
        int64_t dxs2[2], dxst2[2];
        DLTensor dx2 = flat2(dx, dxs2, dxst2);
        DLDevice dev = ctx->device;
        st = dsc_memcpy(ctx, dsc_data(&dx2), dev, tmp[T_DXTOK].t.data, dev, (size_t)(T * D) * sizeof(float));
      }
    } else {
      /* no tokens: the router gets a zero gradient (the shared experts got theirs) */
      DLTensor *gz[1] = {g->gate};
      for (int i = 0; i < 1 && st == DSC_OK; ++i) {
        if (!gz[i]) continue;
        const size_t nb = (size_t)dsc_numel(gz[i]) * sizeof(float);
        void *z = calloc(1, nb ? nb : 1);
        if (!z) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
        STEP(dsc_memcpy(ctx, dsc_data(gz[i]), ctx->device, z, (DLDevice){kDLCPU, 0}, nb));
        free(z);
      }
    }
    if (st == DSC_OK) saved->bwd_phase |= DSC_MOE_PHASE_END;
  }
  return st;
}
