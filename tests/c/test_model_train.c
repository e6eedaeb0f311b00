/*
 * test_model_train.c -- the training step of dsc_model through the public C ABI only:
 * a tiny DeepSeek-V3-style model (query compression, YaRN, a dense layer then an MoE
 * layer with shared experts and group-limited routing, one MTP depth) learns a fixed
 * batch of a next-token task; gradients of dsc_model_loss_and_grad agree with central
 * differences of the loss; grad accumulation over two micro-batches equals the full
 * batch; the correction bias moves; bad inputs fail with messages naming the argument
 * and leave the model usable. Also built with ASan/UBSan by tests/c/run_sanitized.sh.
 * Closing line: "N passed, N failed".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deepseek_c.h"
#include "check.h"


/* A host int32 / float32 DLTensor over caller memory. */
static DLTensor host_tensor(void *data, DLDataTypeCode code, int ndim, int64_t *shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.dtype.code = (uint8_t)code;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.ndim = ndim;
  t.shape = shape;
  return t;
}

static void tiny_config(dsc_model_config *c) {
  dsc_model_config_default(c);
  c->vocab_size = 32;
  c->hidden_size = 32;
  c->intermediate_size = 48;
  c->moe_intermediate_size = 16;
  c->num_hidden_layers = 2;
  c->num_nextn_predict_layers = 1;
  c->num_attention_heads = 2;
  c->q_lora_rank = 16;
  c->kv_lora_rank = 16;
  c->qk_nope_head_dim = 8;
  c->qk_rope_head_dim = 8;
  c->v_head_dim = 8;
  c->n_routed_experts = 8;
  c->n_shared_experts = 1;
  c->num_experts_per_tok = 2;
  c->n_group = 4;
  c->topk_group = 2;
  c->first_k_dense_replace = 1;
  c->max_position_embeddings = 64;
  dsc_rope_params_default(&c->rope, 8);
  c->rope.factor = 4.0f;
  c->rope.original_max_position = 16;
  c->rope.beta_fast = 32.0f;
  c->rope.beta_slow = 1.0f;
  c->rope.mscale = 1.0f;
  c->rope.mscale_all_dim = 1.0f;
  c->initializer_range = 0.1f;
}

enum { B = 4, T = 12 };

/* A next-token task: row b is b, b+3, b+6, ... (mod V); targets are the next tokens. */
static void make_batch(int32_t *tok, int32_t *tgt, int V) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      tok[b * T + t] = (b * 5 + 3 * t) % V;
      tgt[b * T + t] = t + 1 < T ? (b * 5 + 3 * (t + 1)) % V : -100;
    }
}

/* An on_token callback that counts the calls made while the context is not in mode `want`. */
typedef struct {
  dsc_context *ctx;
  int32_t want;
  int bad, calls;
} mode_probe;

static int32_t probe_token(void *user, int32_t seq, int32_t token) {
  mode_probe *p = (mode_probe *)user;
  int32_t mode = -1;
  (void)seq;
  (void)token;
  p->calls += 1;
  p->bad += dsc_context_get_math_mode(p->ctx, &mode) != DSC_OK || mode != p->want;
  return 0;
}

static float loss_of(dsc_model *m, const dsc_train_options *o, DLTensor *tk, DLTensor *tg) {
  dsc_train_stats s;
  memset(&s, 0, sizeof s);
  s.size = sizeof s;
  if (dsc_model_loss_and_grad(m, o, tk, tg, 0, 1.0f, &s) != DSC_OK) return NAN;
  return s.loss + o->mtp_lambda * s.mtp_loss; /* one MTP depth: lambda / 1 */
}

int main(void) {
  dsc_context *ctx = NULL;
  CHECK(dsc_context_create(NULL, &ctx) == DSC_OK, "context: %s", dsc_last_error());
  dsc_model_config cfg;
  tiny_config(&cfg);
  dsc_model_options mo;
  dsc_model_options_default(&mo);
  mo.seed = 7;
  dsc_model *m = NULL;
  CHECK(dsc_model_create(ctx, &cfg, &mo, &m) == DSC_OK, "create: %s", dsc_last_error());
  if (!m) return 1;

  int32_t tok[B * T], tgt[B * T];
  make_batch(tok, tgt, cfg.vocab_size);
  int64_t shp[2] = {B, T};
  DLTensor tk = host_tensor(tok, kDLInt, 2, shp), tg = host_tensor(tgt, kDLInt, 2, shp);
  dsc_train_options o;
  dsc_train_options_default(&o);

  /* gradients vs central differences of the loss (float32: a few largest entries) */
  {
    const char *names[] = {"model.layers.0.self_attn.q_b_proj.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
                           "model.layers.2.eh_proj.weight", "model.norm.weight", "lm_head.weight"};
    o.bias_update_rate = 0.0f;
    CHECK(!isnan(loss_of(m, &o, &tk, &tg)), "loss_and_grad: %s", dsc_last_error());
    for (size_t k = 0; k < sizeof names / sizeof *names; ++k) {
      int64_t idx = -1;
      DLTensor w, g;
      CHECK(dsc_model_find_tensor(m, names[k], &idx) == DSC_OK, "find %s", names[k]);
      if (idx < 0) continue;
      dsc_model_tensor(m, idx, NULL, &w);
      dsc_model_grad(m, idx, &g);
      int64_t n = 1;
      for (int d = 0; d < w.ndim; ++d) n *= w.shape[d];
      /* the largest gradient entry */
      int64_t best = 0;
      float *gp = (float *)g.data, *wp = (float *)w.data;
      for (int64_t i = 1; i < n; ++i)
        if (fabsf(gp[i]) > fabsf(gp[best])) best = i;
      const float ga = gp[best], w0 = wp[best], eps = 1e-2f;
      wp[best] = w0 + eps;
      const float lp = loss_of(m, &o, &tk, &tg);
      wp[best] = w0 - eps;
      const float lm = loss_of(m, &o, &tk, &tg);
      wp[best] = w0;
      const float fd = (lp - lm) / (2 * eps);
      CHECK(fabsf(fd - ga) <= 0.03f * fabsf(ga) + 2e-3f, "%s[%lld]: grad %g vs finite difference %g", names[k],
            (long long)best, ga, fd);
    }
  }

  /* grad accumulation: two micro-batches of 2 rows == the full batch of 4 */
  {
    int64_t idx = -1;
    dsc_model_find_tensor(m, "model.layers.1.mlp.gate.weight", &idx);
    DLTensor g;
    const int64_t n = (int64_t)cfg.n_routed_experts * cfg.hidden_size;
    float *full = (float *)malloc((size_t)n * sizeof(float));
    loss_of(m, &o, &tk, &tg);
    dsc_model_grad(m, idx, &g);
    memcpy(full, g.data, (size_t)n * sizeof(float));
    int64_t half[2] = {B / 2, T};
    DLTensor t0 = host_tensor(tok, kDLInt, 2, half), y0 = host_tensor(tgt, kDLInt, 2, half);
    DLTensor t1 = host_tensor(tok + B / 2 * T, kDLInt, 2, half), y1 = host_tensor(tgt + B / 2 * T, kDLInt, 2, half);
    CHECK(dsc_model_loss_and_grad(m, &o, &t0, &y0, 0, 0.5f, NULL) == DSC_OK, "%s", dsc_last_error());
    CHECK(dsc_model_loss_and_grad(m, &o, &t1, &y1, 1, 0.5f, NULL) == DSC_OK, "%s", dsc_last_error());
    dsc_model_grad(m, idx, &g);
    float worst = 0.0f, scale = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      worst = fmaxf(worst, fabsf(((float *)g.data)[i] - full[i]));
      scale = fmaxf(scale, fabsf(full[i]));
    }
    CHECK(worst <= 1e-4f * scale + 1e-7f, "accumulated router gradient differs by %g (scale %g)", worst, scale);
    free(full);
  }

  /* training: the loss falls, the step counts, the bias moves, the load is recorded */
  {
    dsc_train_options_default(&o);
    o.lr = 1e-2f;
    o.bias_update_rate = 1e-2f;
    dsc_train_stats s0, s;
    memset(&s0, 0, sizeof s0);
    s0.size = sizeof s0;
    s = s0;
    CHECK(dsc_model_train_step(m, &o, &tk, &tg, &s0) == DSC_OK, "train_step: %s", dsc_last_error());
    for (int i = 0; i < 40; ++i) dsc_model_train_step(m, &o, &tk, &tg, &s);
    CHECK(s.loss < 0.3f * s0.loss, "loss did not fall: %g -> %g", s0.loss, s.loss);
    CHECK(s.mtp_loss < s0.mtp_loss, "MTP loss did not fall: %g -> %g", s0.mtp_loss, s.mtp_loss);
    CHECK(dsc_model_step(m) == 41 && s.step == 41, "step: %lld", (long long)dsc_model_step(m));
    CHECK(s.grad_norm > 0.0f && s.tokens == B * T, "stats: grad_norm %g tokens %lld", s.grad_norm,
          (long long)s.tokens);
    int64_t idx = -1;
    dsc_model_find_tensor(m, "model.layers.1.mlp.gate.e_score_correction_bias", &idx);
    DLTensor bias;
    dsc_model_tensor(m, idx, NULL, &bias);
    float babs = 0.0f;
    for (int e = 0; e < cfg.n_routed_experts; ++e) babs += fabsf(((float *)bias.data)[e]);
    CHECK(babs > 0.0f, "the correction bias did not move");
    int64_t counts[8], tot = 0;
    CHECK(dsc_model_expert_load(m, 1, counts, 8) == DSC_OK, "%s", dsc_last_error());
    for (int e = 0; e < 8; ++e) tot += counts[e];
    CHECK(tot == B * T * cfg.num_experts_per_tok, "expert load sums to %lld", (long long)tot);
    CHECK(dsc_model_expert_load(m, 0, counts, 8) == DSC_ERR_INVALID_ARGUMENT && err_has("dense"),
          "dense layer load: %s", dsc_last_error());
    size_t act = 0;
    CHECK(dsc_model_activation_bytes(m, &act) == DSC_OK && act > 0, "activation bytes");
  }

  /* bad inputs: clear errors, the model stays usable (stats asked for: the step without the
   * host, DSC_DEVICE_STEP=1, reports a bad id with its one read; with stats NULL it would be
   * reported by the next read) */
  {
    dsc_train_stats bs;
    memset(&bs, 0, sizeof bs);
    bs.size = sizeof bs;
    int32_t badtok[B * T];
    memcpy(badtok, tok, sizeof badtok);
    badtok[5] = cfg.vocab_size;
    DLTensor bt = host_tensor(badtok, kDLInt, 2, shp);
    CHECK(dsc_model_train_step(m, &o, &bt, &tg, &bs) == DSC_ERR_INVALID_ARGUMENT && err_has("tokens") &&
              err_has("vocab_size"),
          "out-of-range token: %s", dsc_last_error());
    int32_t badtgt[B * T];
    memcpy(badtgt, tgt, sizeof badtgt);
    badtgt[7] = -5;
    DLTensor by = host_tensor(badtgt, kDLInt, 2, shp);
    CHECK(dsc_model_train_step(m, &o, &tk, &by, &bs) == DSC_ERR_INVALID_ARGUMENT && err_has("targets"),
          "bad target: %s", dsc_last_error());
    int64_t shp2[2] = {B, T - 1};
    DLTensor ys = host_tensor(tgt, kDLInt, 2, shp2);
    CHECK(dsc_model_train_step(m, &o, &tk, &ys, NULL) == DSC_ERR_SHAPE && err_has("targets"),
          "target shape: %s", dsc_last_error());
    dsc_train_options o2 = o;
    o2.grad_accum = 3;
    CHECK(dsc_model_train_step(m, &o2, &tk, &tg, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("grad_accum"),
          "grad_accum: %s", dsc_last_error());
    o2 = o;
    o2.lr = NAN;
    CHECK(dsc_model_train_step(m, &o2, &tk, &tg, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("lr"),
          "lr: %s", dsc_last_error());
    float fbuf[B * T];
    DLTensor ft = host_tensor(fbuf, kDLFloat, 2, shp);
    CHECK(dsc_model_train_step(m, &o, &ft, &tg, NULL) == DSC_ERR_DTYPE, "float tokens: %s", dsc_last_error());
    float *logits = (float *)malloc(sizeof(float) * B * T * (size_t)cfg.vocab_size);
    int64_t ls[3] = {B, T, cfg.vocab_size}, lbad[3] = {B, T, cfg.vocab_size + 1};
    DLTensor lg = host_tensor(logits, kDLFloat, 3, ls), lgb = host_tensor(logits, kDLFloat, 3, lbad);
    CHECK(dsc_model_forward(m, &tk, &lgb) == DSC_ERR_SHAPE && err_has("logits"), "logits shape: %s",
          dsc_last_error());
    CHECK(dsc_model_forward(m, &tk, &lg) == DSC_OK, "forward after errors: %s", dsc_last_error());
    int finite = 1;
    for (int64_t i = 0; i < (int64_t)B * T * cfg.vocab_size; ++i) finite &= isfinite(logits[i]) != 0;
    CHECK(finite, "non-finite logits");
    free(logits);
    dsc_model_config bad = cfg;
    bad.n_group = 3;
    dsc_model *m2 = NULL;
    CHECK(dsc_model_create(ctx, &bad, NULL, &m2) == DSC_ERR_INVALID_ARGUMENT && err_has("n_group") && !m2,
          "bad config: %s", dsc_last_error());
  }
  { /* compute_dtype: BF16 compute (the V3 recipe); anything else is refused by name */
    dsc_model_options bo = mo;
    dsc_model *mb = NULL;
    CHECK(bo.compute_dtype == DSC_DTYPE_FLOAT32, "default compute_dtype %d", (int)bo.compute_dtype);
    bo.compute_dtype = DSC_DTYPE_FLOAT16;
    CHECK(dsc_model_create(ctx, &cfg, &bo, &mb) == DSC_ERR_INVALID_ARGUMENT && err_has("compute_dtype") && !mb,
          "bad compute_dtype: %s", dsc_last_error());
    bo.compute_dtype = DSC_DTYPE_BFLOAT16;
    CHECK(dsc_model_create(ctx, &cfg, &bo, &mb) == DSC_OK, "bf16 create: %s", dsc_last_error());
    if (mb) {
      int64_t idx = -1;
      DLTensor master, cw;
      CHECK(dsc_model_find_tensor(mb, "lm_head.weight", &idx) == DSC_OK, "find lm_head");
      CHECK(dsc_model_tensor(mb, idx, NULL, &master) == DSC_OK && dsc_model_compute_tensor(mb, idx, &cw) == DSC_OK,
            "compute_tensor: %s", dsc_last_error());
      const float *a = (const float *)master.data, *c = (const float *)cw.data;
      int64_t n = 1, bad_round = 0, differ = 0;
      for (int i = 0; i < master.ndim; ++i) n *= master.shape[i];
      for (int64_t i = 0; i < n; ++i) { /* RNE to the top 16 bits */
        uint32_t u;
        memcpy(&u, &a[i], 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
        float r;
        memcpy(&r, &u, 4);
        bad_round += r != c[i];
        differ += a[i] != c[i];
      }
      CHECK(bad_round == 0 && differ > 0, "compute copy: %lld not RNE, %lld differ", (long long)bad_round,
            (long long)differ);
      CHECK(dsc_model_freeze_fp8(mb) == DSC_ERR_INVALID_ARGUMENT && err_has("compute_dtype"),
            "freeze of a bf16 model: %s", dsc_last_error());
      /* its passes run in BF16-operand math and hand the caller's mode back, whichever it was,
       * after a step, a forward, a refused call and a generation (whose on_token callback,
       * between passes, sees the caller's mode too) */
      const int32_t modes[2] = {DSC_MATH_DEFAULT, DSC_MATH_BF16_OPERANDS};
      for (int k = 0; k < 2; ++k) {
        int32_t got = -1;
        CHECK(dsc_context_set_math_mode(ctx, modes[k]) == DSC_OK, "set mode: %s", dsc_last_error());
        dsc_train_stats ts;
        memset(&ts, 0, sizeof ts);
        ts.size = sizeof ts;
        CHECK(dsc_model_train_step(mb, &o, &tk, &tg, &ts) == DSC_OK && isfinite(ts.loss), "bf16 step: %s",
              dsc_last_error());
        CHECK(dsc_context_get_math_mode(ctx, &got) == DSC_OK && got == modes[k], "after a step: mode %d, set %d",
              (int)got, (int)modes[k]);
        float lg[B * T * 64];
        int64_t lshp[3] = {B, T, cfg.vocab_size};
        DLTensor lt = host_tensor(lg, kDLFloat, 3, lshp);
        CHECK(cfg.vocab_size <= 64 && dsc_model_forward(mb, &tk, &lt) == DSC_OK, "bf16 forward: %s", dsc_last_error());
        CHECK(dsc_context_get_math_mode(ctx, &got) == DSC_OK && got == modes[k], "after a forward: mode %d", (int)got);
        int64_t bshp[2] = {B, T + 1}; /* a wrong logits shape: refused */
        DLTensor bad_lt = host_tensor(lg, kDLFloat, 2, bshp);
        CHECK(dsc_model_forward(mb, &tk, &bad_lt) != DSC_OK, "bad logits accepted");
        CHECK(dsc_context_get_math_mode(ctx, &got) == DSC_OK && got == modes[k], "after a refused call: mode %d",
              (int)got);
        /* generation: the callback, between passes, sees the caller's mode */
        dsc_generate_options go;
        dsc_generate_options_default(&go);
        go.max_new_tokens = 3;
        const int32_t *prompts[2] = {tok, tok + T};
        const int32_t plen[2] = {4, 5};
        int32_t out[2 * 3], olen[2];
        mode_probe pr = {ctx, modes[k], 0, 0};
        CHECK(dsc_model_generate(mb, &go, 2, prompts, plen, out, olen, probe_token, &pr, NULL) == DSC_OK,
              "bf16 generate: %s", dsc_last_error());
        CHECK(pr.calls > 0 && pr.bad == 0, "callback saw another mode %d of %d times", pr.bad, pr.calls);
        CHECK(dsc_context_get_math_mode(ctx, &got) == DSC_OK && got == modes[k], "after generate: mode %d", (int)got);
      }
      dsc_context_set_math_mode(ctx, DSC_MATH_DEFAULT);
      dsc_model_destroy(mb);
    }
  }
  dsc_model_destroy(m);
  dsc_context_destroy(ctx);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
