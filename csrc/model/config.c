/*
 * model/config.c -- the model's configuration: its defaults, its validation (the bounds
 * every path checks before anything is allocated), its parameter count, and the one
 * config.json parser and writer of deepseek_c. The bottom of csrc/model: it calls only
 * json.c and the core.
 *
 * Reading (dsc_model_config_from_json / _load, and Python's ModelConfig through
 * dsc_model_config_normalize_json): a Hugging Face DeepseekV3/V2 config.json becomes a
 * dsc_model_config. The file's model_type chooses the defaults of the keys it leaves out:
 *  - "deepseek_v3" (also when absent): dsc_model_config_default, DeepSeek-V3's values;
 *  - "deepseek_v2": the same sizes, but softmax scoring, greedy top-k, no top-k
 *    normalization, scaling factor 1, no groups, no dense-first layers and no MTP --
 *    what transformers' DeepseekV2 does (its config has no scoring_func, no MTP depth).
 * Beyond the plain numbers:
 *  - q_lora_rank, n_routed_experts, n_shared_experts, num_experts_per_tok may be null
 *    (HF's None: no query compression / no MoE / no shared experts) -> 0; n_group and
 *    topk_group null -> 1 (no groups); bos/eos_token_id null -> -1, a list -> its first
 *    element (the list itself is kept for writing back);
 *  - topk_method "noaux_tc" | "greedy" (also V2's spelling "gready") |
 *    "group_limited_greedy"; scoring_func "sigmoid" | "softmax";
 *  - RoPE: the base from rope_theta, rope_scaling.rope_theta or rope_parameters.rope_theta,
 *    which must agree where several are given; the scaling from rope_scaling (older files)
 *    or rope_parameters (transformers 5), which must agree where both are given; inside
 *    one object "type" and "rope_type" must agree. "yarn" is YaRN (fields it leaves out
 *    take the defaults of HF's DeepseekV3YarnRotaryEmbedding, dsc_rope_params_default),
 *    "default" or null is none, anything else (linear, dynamic, llama3, ...) is refused:
 *    deepseek_c implements no other scaling. rope_interleave false selects DSC_ROPE_HALF;
 *  - settings deepseek_c does not implement are refused, not ignored: hidden_act other
 *    than "silu", attention_bias or mlp_bias true;
 *  - num_key_value_heads is written back equal to num_attention_heads (MLA has no grouped
 *    KV heads, and HF's DeepseekV3 breaks on anything else);
 *  - head_dim and qk_head_dim are derived values (HF writes them): read, not checked,
 *    and written back as deepseek_c computes them.
 * A wrong type, a non-integer or out-of-range integer, or a malformed file is
 * DSC_ERR_FORMAT naming the key; the result must pass dsc_model_config_validate.
 *
 * Writing (dsc_model_config_normalize_json, dsc_model_save): every key above under its HF
 * name with the value in use, plus the members the parser did not interpret ("extra":
 * architectures, torch_dtype, transformers_version, ...) unchanged, keys sorted at every
 * level, two-space indent (Python's json.dumps(indent=2, sort_keys=True) layout). Numbers
 * of extra members keep their spelling (1.0 stays a float for Python).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "json.h"
#include "model_internal.h"

#define MAX_CONFIG_BYTES ((long long)64 << 20) /* a config.json is a few KiB */

/* Where the text came from, for messages: fn, and a file name or "". */
typedef struct {
  const char *fn;
  const char *path;
} src;

#define WHERE(s) (s)->path, (s)->path[0] ? ": " : ""

/* ================================================================== defaults, validation, sizes */

void dsc_model_config_default(dsc_model_config *c) {
  if (!c) return;
  memset(c, 0, sizeof *c);
  c->size = sizeof *c;
  c->vocab_size = 129280;
  c->hidden_size = 7168;
  c->intermediate_size = 18432;
  c->moe_intermediate_size = 2048;
  c->num_hidden_layers = 61;
  c->num_nextn_predict_layers = 1;
  c->num_attention_heads = 128;
  c->q_lora_rank = 1536;
  c->kv_lora_rank = 512;
  c->qk_nope_head_dim = 128;
  c->qk_rope_head_dim = 64;
  c->v_head_dim = 128;
  c->n_routed_experts = 256;
  c->n_shared_experts = 1;
  c->num_experts_per_tok = 8;
  c->n_group = 8;
  c->topk_group = 4;
  c->topk_method = DSC_MOE_TOPK_NOAUX_TC;
  c->scoring_func = DSC_MOE_SCORING_SIGMOID;
  c->norm_topk_prob = 1;
  c->routed_scaling_factor = 2.5f;
  c->first_k_dense_replace = 3;
  c->moe_layer_freq = 1;
  c->rms_norm_eps = 1e-6f;
  dsc_rope_params_default(&c->rope, 64);
  c->rope.factor = 40.0f;
  c->rope.original_max_position = 4096;
  c->rope.beta_fast = 32.0f;
  c->rope.beta_slow = 1.0f;
  c->rope.mscale = 1.0f;
  c->rope.mscale_all_dim = 1.0f;
  c->max_position_embeddings = 163840;
  c->bos_token_id = 0;
  c->eos_token_id = 1;
  c->tie_word_embeddings = 0;
  c->initializer_range = 0.02f; /* the HF config's value (the V3 report used 0.006) */
}

/* Upper bounds of the config fields. They exist so that every derived size (a weight's
 * elements, the parameter count, an activation row) is computed in int64 without overflow,
 * and so a typo (2^31 - 1, a million MTP depths) fails here, before anything is allocated,
 * instead of in an allocation or a wrapped size. Each is far above the largest published
 * DeepSeek config -- V3: V 129280, D 7168, I 18432, F 2048, L 61, H 128, Rq 1536, Rkv 512,
 * dn 128, dr 64, dv 128, E 256, 1 shared, 163840 positions; V2: V 102400, D 5120, I 12288,
 * F 1536, L 60, E 160, 2 shared -- so real configs (and much larger research ones) pass.
 * With them a single weight matrix has < 2^50 elements (H * dqk * Rq at most), a stacked
 * expert tensor E * F * D < 2^59, and sums of two fields fit in int32; only the totals over
 * layers can overflow int64, and those are summed with checked arithmetic
 * (dsc_model_config_sizes). */
enum {
  CFG_MAX_VOCAB = 1 << 24,     /* 16.7M tokens: 130x V3 */
  CFG_MAX_HIDDEN = 1 << 20,    /* D: 146x V3 */
  CFG_MAX_FFN = 1 << 22,       /* I, F: 227x V3's I */
  CFG_MAX_RANK = 1 << 20,      /* q_lora_rank, kv_lora_rank */
  CFG_MAX_HEAD_DIM = 1 << 16,  /* dn, dr, dv (the RoPE part is <= 512 anyway) */
  CFG_MAX_HEADS = 1 << 12,     /* H: 32x V3 */
  CFG_MAX_LAYERS = 1 << 12,    /* L: 67x V3 */
  CFG_MAX_EXPERTS = 1 << 16,   /* E: 256x V3 */
  CFG_MAX_SHARED = 1 << 8,     /* shared experts */
  CFG_MAX_POSITIONS = 1 << 24, /* positions are int32; 100x V3's context */
};

/* Elements of block i's weights, as add_block lays them out, its named (Hugging Face)
 * tensors and its storage entries. Sticky: *ok cleared on overflow. */
static void block_sizes(const dsc_model_config *c, int32_t i, int32_t ep, int64_t *numel, int64_t *named,
                        int64_t *entries, int *ok) {
  const int64_t D = c->hidden_size, H = c->num_attention_heads, Rq = c->q_lora_rank;
  const int64_t R = c->kv_lora_rank, dr = c->qk_rope_head_dim;
  const int64_t dqk = (int64_t)c->qk_nope_head_dim + c->qk_rope_head_dim;
  const int64_t dkv = (int64_t)c->qk_nope_head_dim + c->v_head_dim;
  int64_t n = D, k = 1; /* input_layernorm */
  if (Rq > 0) {
    n = dsc_cadd(n, dsc_cadd(dsc_cmul(Rq, D, ok), dsc_cadd(Rq, dsc_cmul3(H, dqk, Rq, ok), ok), ok), ok);
    k += 3;
  } else {
    n = dsc_cadd(n, dsc_cmul3(H, dqk, D, ok), ok);
    k += 1;
  }
  n = dsc_cadd(n, dsc_cmul(dsc_cadd(R, dr, ok), D, ok), ok);   /* kv_a_proj_with_mqa */
  n = dsc_cadd(n, R, ok);                                       /* kv_a_layernorm */
  n = dsc_cadd(n, dsc_cmul3(H, dkv, R, ok), ok);                /* kv_b_proj */
  n = dsc_cadd(n, dsc_cmul3(D, H, c->v_head_dim, ok), ok);      /* o_proj */
  n = dsc_cadd(n, D, ok);                                       /* post_attention_layernorm */
  k += 5;
  int64_t e = k;
  if (dsc_model_is_moe_block(c, i)) {
    const int64_t E = c->n_routed_experts, F = c->moe_intermediate_size;
    n = dsc_cadd(n, dsc_cmul(E, D, ok), ok); /* router */
    k += 1, e += 1;
    if (c->topk_method == DSC_MOE_TOPK_NOAUX_TC) n = dsc_cadd(n, E, ok), k += 1, e += 1;
    const int64_t Es = E / (ep > 0 ? ep : 1); /* this rank's share of the experts */
    n = dsc_cadd(n, dsc_cmul(3, dsc_cmul3(Es, F, D, ok), ok), ok); /* stacked experts */
    k = dsc_cadd(k, dsc_cmul(3, Es, ok), ok), e += 3;
    if (c->n_shared_experts > 0) {
      const int64_t Fs = dsc_cmul(F, c->n_shared_experts, ok);
      n = dsc_cadd(n, dsc_cmul3(3, Fs, D, ok), ok);
      k += 3, e += 3;
    }
  } else {
    n = dsc_cadd(n, dsc_cmul3(3, c->intermediate_size, D, ok), ok);
    k += 3, e += 3;
  }
  *numel = n, *named = k, *entries = e;
}

dsc_status dsc_model_config_sizes(const dsc_model_config *c, int64_t *n_params, int64_t *n_named,
                                  int64_t *n_entries, int64_t *max_region) {
  return dsc_model_config_sizes_ep(c, 1, n_params, n_named, n_entries, max_region);
}

dsc_status dsc_model_config_sizes_ep(const dsc_model_config *c, int32_t ep, int64_t *n_params, int64_t *n_named,
                                     int64_t *n_entries, int64_t *max_region) {
  int ok = 1;
  const int64_t V = c->vocab_size, D = c->hidden_size;
  const int64_t L = c->num_hidden_layers, Dm = c->num_nextn_predict_layers;
  int64_t n = dsc_cmul(V, D, &ok), k = 1, e = 1, maxr = n; /* embed_tokens */
  for (int64_t b = 0; b < L + Dm && ok; ++b) {
    int64_t bn = 0, bk = 0, be = 0;
    block_sizes(c, (int32_t)b, ep, &bn, &bk, &be, &ok);
    if (b >= L) { /* an MTP module: enorm, hnorm, eh_proj [D, 2D], shared_head.norm around it */
      bn = dsc_cadd(bn, dsc_cadd(dsc_cmul(3, D, &ok), dsc_cmul3(D, 2, D, &ok), &ok), &ok);
      bk += 4, be += 4;
    }
    n = dsc_cadd(n, bn, &ok);
    k = dsc_cadd(k, bk, &ok);
    e += be;
    if (bn > maxr) maxr = bn;
  }
  n = dsc_cadd(n, D, &ok), k += 1, e += 1; /* model.norm */
  if (!c->tie_word_embeddings) n = dsc_cadd(n, dsc_cmul(V, D, &ok), &ok), k += 1, e += 1;
  if (n_params) *n_params = ok ? n : -1;
  if (n_named) *n_named = ok ? k : -1;
  if (n_entries) *n_entries = ok ? e : -1;
  if (max_region) *max_region = ok ? maxr : -1;
  return ok ? DSC_OK
            : dsc_error(DSC_ERR_INVALID_ARGUMENT, "dsc_model_config_validate",
                        "cfg: expected a model whose parameter count fits in 64 bits, got more than "
                        "2^63 parameters (hidden_size %d, n_routed_experts %d, moe_intermediate_size "
                        "%d, num_hidden_layers %d)",
                        (int)c->hidden_size, (int)c->n_routed_experts, (int)c->moe_intermediate_size,
                        (int)c->num_hidden_layers);
}

dsc_status dsc_model_config_validate(const dsc_model_config *c) {
  static const char *const FN = "dsc_model_config_validate";
  DSC_CHECK(c != NULL && c->size >= sizeof(dsc_model_config), DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg: expected a dsc_model_config with size = %zu (dsc_model_config_default)",
            sizeof(dsc_model_config));
  /* ranges first: everything after (sums, loops over blocks, sizes) relies on them */
#define RANGE(f, lo, hi, why)                                                                  \
  DSC_CHECK(c->f >= (lo) && c->f <= (hi), DSC_ERR_INVALID_ARGUMENT, FN,                        \
            "cfg->" #f ": expected %d..%d%s, got %d", (int)(lo), (int)(hi), why, (int)c->f)
  RANGE(vocab_size, 1, CFG_MAX_VOCAB, "");
  RANGE(hidden_size, 1, CFG_MAX_HIDDEN, "");
  RANGE(num_hidden_layers, 1, CFG_MAX_LAYERS, "");
  RANGE(num_nextn_predict_layers, 0, DSC_MODEL_MAX_MTP, " (MTP depths)");
  RANGE(num_attention_heads, 1, CFG_MAX_HEADS, "");
  RANGE(q_lora_rank, 0, CFG_MAX_RANK, " (0: no query compression)");
  RANGE(kv_lora_rank, 1, CFG_MAX_RANK, "");
  RANGE(qk_nope_head_dim, 1, CFG_MAX_HEAD_DIM, "");
  RANGE(qk_rope_head_dim, 1, CFG_MAX_HEAD_DIM, "");
  RANGE(v_head_dim, 1, CFG_MAX_HEAD_DIM, "");
  RANGE(n_routed_experts, 0, CFG_MAX_EXPERTS, " (0: every layer dense)");
  RANGE(first_k_dense_replace, 0, CFG_MAX_LAYERS + DSC_MODEL_MAX_MTP, "");
  RANGE(moe_layer_freq, 1, CFG_MAX_LAYERS + DSC_MODEL_MAX_MTP, "");
  RANGE(max_position_embeddings, 1, CFG_MAX_POSITIONS, "");
  /* used only where some layer needs them (below), but never out of range */
  RANGE(intermediate_size, 0, CFG_MAX_FFN, "");
  RANGE(moe_intermediate_size, 0, CFG_MAX_FFN, "");
  RANGE(n_shared_experts, 0, CFG_MAX_SHARED, "");
#undef RANGE
  DSC_CHECK(c->qk_rope_head_dim % 2 == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->qk_rope_head_dim: expected an even number, got %d", (int)c->qk_rope_head_dim);
  DSC_CHECK(c->rope.dim == c->qk_rope_head_dim, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->rope.dim: expected qk_rope_head_dim = %d, got %d", (int)c->qk_rope_head_dim,
            (int)c->rope.dim);
  int any_dense = 0, any_moe = 0;
  const int32_t n_blocks = c->num_hidden_layers + c->num_nextn_predict_layers; /* <= 2^12 + 8 */
  for (int32_t i = 0; i < n_blocks; ++i) {
    int moe = dsc_model_is_moe_block(c, i);
    any_moe |= moe;
    any_dense |= !moe;
  }
  if (any_dense) {
    DSC_CHECK(c->intermediate_size >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg->intermediate_size: expected >= 1 (some layers are dense), got %d",
              (int)c->intermediate_size);
  }
  if (any_moe) {
    const int32_t E = c->n_routed_experts;
    DSC_CHECK(c->moe_intermediate_size >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg->moe_intermediate_size: expected >= 1, got %d", (int)c->moe_intermediate_size);
    DSC_CHECK(c->num_experts_per_tok >= 1 && c->num_experts_per_tok <= E, DSC_ERR_INVALID_ARGUMENT,
              FN, "cfg->num_experts_per_tok: expected 1..n_routed_experts (%d), got %d", (int)E,
              (int)c->num_experts_per_tok);
    DSC_CHECK(c->topk_method >= DSC_MOE_TOPK_NOAUX_TC &&
                  c->topk_method <= DSC_MOE_TOPK_GROUP_LIMITED_GREEDY,
              DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg->topk_method: expected noaux_tc (0), greedy (1) or group_limited_greedy (2), got %d",
              (int)c->topk_method);
    DSC_CHECK(c->scoring_func == DSC_MOE_SCORING_SIGMOID || c->scoring_func == DSC_MOE_SCORING_SOFTMAX,
              DSC_ERR_INVALID_ARGUMENT, FN, "cfg->scoring_func: expected sigmoid (0) or softmax (1), got %d",
              (int)c->scoring_func);
    if (c->topk_method != DSC_MOE_TOPK_GREEDY) {
      DSC_CHECK(c->n_group >= 1 && c->n_group <= E && E % c->n_group == 0, DSC_ERR_INVALID_ARGUMENT,
                FN, "cfg->n_group: expected a divisor of n_routed_experts (%d), got %d", (int)E,
                (int)c->n_group);
      DSC_CHECK(c->topk_group >= 1 && c->topk_group <= c->n_group, DSC_ERR_INVALID_ARGUMENT, FN,
                "cfg->topk_group: expected 1..n_group (%d), got %d", (int)c->n_group,
                (int)c->topk_group);
      const int64_t reach = (int64_t)c->topk_group * (E / c->n_group); /* <= E */
      DSC_CHECK(c->num_experts_per_tok <= reach, DSC_ERR_INVALID_ARGUMENT, FN,
                "cfg->num_experts_per_tok: expected <= topk_group * experts per group = %lld, got %d",
                (long long)reach, (int)c->num_experts_per_tok);
    }
    DSC_CHECK(isfinite(c->routed_scaling_factor) && c->routed_scaling_factor > 0.0f,
              DSC_ERR_INVALID_ARGUMENT, FN, "cfg->routed_scaling_factor: expected > 0, got %g",
              (double)c->routed_scaling_factor);
  }
  DSC_CHECK(isfinite(c->rms_norm_eps) && c->rms_norm_eps > 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->rms_norm_eps: expected > 0, got %g", (double)c->rms_norm_eps);
  DSC_CHECK(isfinite(c->initializer_range) && c->initializer_range >= 0.0f, DSC_ERR_INVALID_ARGUMENT,
            FN, "cfg->initializer_range: expected >= 0, got %g", (double)c->initializer_range);
  DSC_CHECK(c->bos_token_id >= -1 && c->bos_token_id < c->vocab_size, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->bos_token_id: expected -1 (none) or an id below vocab_size %d, got %d",
            (int)c->vocab_size, (int)c->bos_token_id);
  DSC_CHECK(c->eos_token_id >= -1 && c->eos_token_id < c->vocab_size, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->eos_token_id: expected -1 (none) or an id below vocab_size %d, got %d",
            (int)c->vocab_size, (int)c->eos_token_id);
  DSC_CHECK(c->tie_word_embeddings == 0 || c->tie_word_embeddings == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->tie_word_embeddings: expected 0 or 1, got %d", (int)c->tie_word_embeddings);
  DSC_CHECK(c->model_type == DSC_MODEL_TYPE_DEEPSEEK_V3 || c->model_type == DSC_MODEL_TYPE_DEEPSEEK_V2,
            DSC_ERR_INVALID_ARGUMENT, FN,
            "cfg->model_type: expected DSC_MODEL_TYPE_DEEPSEEK_V3 (0) or _V2 (1), got %d", (int)c->model_type);
  if (c->model_type == DSC_MODEL_TYPE_DEEPSEEK_V2 && c->n_routed_experts > 0) {
    /* what DeepSeek's and transformers' V2 code run: anything else would be computed one
     * way here and another way by them from the same checkpoint */
    DSC_CHECK(c->scoring_func == DSC_MOE_SCORING_SOFTMAX, DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg->scoring_func: expected softmax for model_type deepseek_v2 (V2 routes with softmax), got "
              "sigmoid");
    DSC_CHECK(c->topk_method != DSC_MOE_TOPK_NOAUX_TC, DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg->topk_method: expected greedy or group_limited_greedy for model_type deepseek_v2, got "
              "noaux_tc (a V3 method)");
  }
  float sc = 0.0f;
  DSC_TRY(dsc_rope_softmax_scale(&c->rope, c->qk_nope_head_dim + c->qk_rope_head_dim, &sc));
  /* the totals, with checked arithmetic, before anyone allocates for them */
  return dsc_model_config_sizes(c, NULL, NULL, NULL, NULL);
}

int dsc_model_is_moe_block(const dsc_model_config *c, int32_t i) {
  return c->n_routed_experts > 0 && i >= c->first_k_dense_replace && i % c->moe_layer_freq == 0;
}


/* ================================================================== reading */

/* "<fn>: [<path>: ]<key>: expected <what>, got <value>" */
static dsc_status bad_value(const src *s, const char *key, const char *what, const dsc_json *v) {
  char got[96];
  if (v->type == DSC_JSON_NUMBER) {
    snprintf(got, sizeof got, "%.17g", v->num);
  } else if (v->type == DSC_JSON_STRING) {
    snprintf(got, sizeof got, "the string \"%.60s\"", v->str);
  } else if (v->type == DSC_JSON_TRUE || v->type == DSC_JSON_FALSE) {
    snprintf(got, sizeof got, "%s", v->type == DSC_JSON_TRUE ? "true" : "false");
  } else {
    snprintf(got, sizeof got, "%s", dsc_json_type_name(v->type));
  }
  return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected %s, got %s", WHERE(s), key, what, got);
}

/* An integer-valued number in int32 range (4096 and 4096.0 alike). */
static dsc_status as_int(const src *s, const char *key, const dsc_json *v, int32_t *out) {
  if (v->type != DSC_JSON_NUMBER) return bad_value(s, key, "an integer", v);
  if (v->num != floor(v->num)) return bad_value(s, key, "an integer", v);
  if (v->num < (double)INT32_MIN || v->num > (double)INT32_MAX)
    return bad_value(s, key, "an integer in [-2147483648, 2147483647]", v);
  *out = (int32_t)v->num;
  return DSC_OK;
}

static dsc_status as_float(const src *s, const char *key, const dsc_json *v, float *out) {
  if (v->type != DSC_JSON_NUMBER) return bad_value(s, key, "a number", v);
  if (fabs(v->num) > (double)FLT_MAX) return bad_value(s, key, "a number in float32 range", v);
  *out = (float)v->num;
  return DSC_OK;
}

/* Optional integer member: absent keeps *out; null gives null_value when null_ok. */
static dsc_status get_int(const src *s, const dsc_json *obj, const char *key, int null_ok,
                          int32_t null_value, int32_t *out) {
  const dsc_json *v = dsc_json_get(obj, key);
  if (!v) return DSC_OK;
  if (v->type == DSC_JSON_NULL && null_ok) {
    *out = null_value;
    return DSC_OK;
  }
  return as_int(s, key, v, out);
}

static dsc_status get_float(const src *s, const dsc_json *obj, const char *key, float *out) {
  const dsc_json *v = dsc_json_get(obj, key);
  return v ? as_float(s, key, v, out) : DSC_OK;
}

static dsc_status get_bool(const src *s, const dsc_json *obj, const char *key, int32_t *out) {
  const dsc_json *v = dsc_json_get(obj, key);
  if (!v) return DSC_OK;
  if (v->type != DSC_JSON_TRUE && v->type != DSC_JSON_FALSE)
    return bad_value(s, key, "true or false", v);
  *out = v->type == DSC_JSON_TRUE;
  return DSC_OK;
}

/* bos/eos_token_id: an integer, null (-1) or a list of integers (its first element; -1
 * when empty). *is_list tells the caller to keep the list for writing back. */
static dsc_status get_token_id(const src *s, const dsc_json *obj, const char *key, int32_t *out,
                               int *is_list) {
  const dsc_json *v = dsc_json_get(obj, key);
  *is_list = 0;
  if (!v) return DSC_OK;
  if (v->type == DSC_JSON_ARRAY) {
    *is_list = 1;
    int32_t first = -1, x;
    for (const dsc_json *e = v->child; e; e = e->next) {
      if (e->type != DSC_JSON_NUMBER) return bad_value(s, key, "a list of integers", e);
      DSC_TRY(as_int(s, key, e, &x));
      if (e == v->child) first = x;
    }
    *out = first;
    return DSC_OK;
  }
  if (v->type == DSC_JSON_NULL) {
    *out = -1;
    return DSC_OK;
  }
  if (v->type != DSC_JSON_NUMBER) return bad_value(s, key, "an integer, null or a list of integers", v);
  return as_int(s, key, v, out);
}

/* A string member mapped through names[] to values[]; absent keeps *out. */
static dsc_status get_enum(const src *s, const dsc_json *obj, const char *key, const char *const *names,
                           const int32_t *values, int n, const char *expected, int32_t *out) {
  const dsc_json *v = dsc_json_get(obj, key);
  if (!v) return DSC_OK;
  if (v->type == DSC_JSON_STRING)
    for (int i = 0; i < n; ++i)
      if (!strcmp(v->str, names[i])) {
        *out = values[i];
        return DSC_OK;
      }
  return bad_value(s, key, expected, v);
}

/* A member that may only take one value (a setting deepseek_c implements one way). */
static dsc_status get_fixed_bool(const src *s, const dsc_json *obj, const char *key, int want,
                                 const char *why) {
  int32_t v = want;
  DSC_TRY(get_bool(s, obj, key, &v));
  if (v != want)
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected %s (%s), got %s", WHERE(s), key,
                     want ? "true" : "false", why, v ? "true" : "false");
  return DSC_OK;
}

/* One RoPE scaling object (rope_scaling or rope_parameters) read on its own. */
typedef struct {
  int present;      /* the key exists (null counts: "no scaling") */
  int has_theta;
  float theta;
  dsc_rope_params p; /* factor 1 = none; layout/theta not used */
} rope_obj;

static dsc_status read_rope(const src *s, const dsc_json *root, const char *parent, int32_t dim, rope_obj *r) {
  memset(r, 0, sizeof *r);
  dsc_rope_params_default(&r->p, dim);
  const dsc_json *v = dsc_json_get(root, parent);
  if (!v) return DSC_OK;
  r->present = 1;
  if (v->type == DSC_JSON_NULL) return DSC_OK;
  if (v->type != DSC_JSON_OBJECT) return bad_value(s, parent, "an object or null", v);
  char key[96];
  const dsc_json *t = dsc_json_get(v, "rope_theta");
  if (t) {
    snprintf(key, sizeof key, "%s.rope_theta", parent);
    DSC_TRY(as_float(s, key, t, &r->theta));
    r->has_theta = 1;
  }
  const dsc_json *ty = dsc_json_get(v, "type"), *rty = dsc_json_get(v, "rope_type");
  if (ty && ty->type != DSC_JSON_STRING) {
    snprintf(key, sizeof key, "%s.type", parent);
    return bad_value(s, key, "a string", ty);
  }
  if (rty && rty->type != DSC_JSON_STRING) {
    snprintf(key, sizeof key, "%s.rope_type", parent);
    return bad_value(s, key, "a string", rty);
  }
  if (ty && rty && strcmp(ty->str, rty->str) != 0)
    return dsc_error(DSC_ERR_FORMAT, s->fn,
                     "%s%s%s: \"type\" (\"%.40s\") and \"rope_type\" (\"%.40s\") disagree: keep one", WHERE(s),
                     parent, ty->str, rty->str);
  const dsc_json *kind = rty ? rty : ty;
  if (!kind) {
    /* a bare {"rope_theta": ...} is no scaling; anything else needs its type */
    if (v->n_children == (t ? 1 : 0)) return DSC_OK;
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected a \"rope_type\" (or \"type\") string, got none",
                     WHERE(s), parent);
  }
  if (!strcmp(kind->str, "default")) return DSC_OK;
  if (strcmp(kind->str, "yarn") != 0) {
    snprintf(key, sizeof key, "%s.%s", parent, rty ? "rope_type" : "type");
    return bad_value(s, key, "\"yarn\" or \"default\" (the RoPE scalings deepseek_c implements)", kind);
  }
  static const char *const FLOATS[] = {"factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"};
  float *const dst[] = {&r->p.factor, &r->p.beta_fast, &r->p.beta_slow, &r->p.mscale, &r->p.mscale_all_dim};
  if (!dsc_json_get(v, "factor"))
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s.factor: expected a number for YaRN, got none", WHERE(s),
                     parent);
  for (int i = 0; i < 5; ++i) {
    snprintf(key, sizeof key, "%s.%s", parent, FLOATS[i]);
    const dsc_json *f = dsc_json_get(v, FLOATS[i]);
    if (f) DSC_TRY(as_float(s, key, f, dst[i]));
  }
  snprintf(key, sizeof key, "%s.original_max_position_embeddings", parent);
  const dsc_json *o = dsc_json_get(v, "original_max_position_embeddings");
  if (o) DSC_TRY(as_int(s, key, o, &r->p.original_max_position));
  snprintf(key, sizeof key, "%s.factor", parent);
  if (!(r->p.factor >= 1.0f))
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected a number >= 1 for YaRN, got %g", WHERE(s), key,
                     (double)r->p.factor);
  return DSC_OK;
}

static int same_scaling(const dsc_rope_params *a, const dsc_rope_params *b) {
  if (a->factor <= 1.0f && b->factor <= 1.0f) return 1; /* both none */
  return a->factor == b->factor && a->original_max_position == b->original_max_position &&
         a->beta_fast == b->beta_fast && a->beta_slow == b->beta_slow && a->mscale == b->mscale &&
         a->mscale_all_dim == b->mscale_all_dim;
}

/* rope_theta, rope_scaling, rope_parameters, rope_interleave -> c->rope. */
static dsc_status read_rope_all(const src *s, const dsc_json *root, dsc_model_config *c) {
  rope_obj sc, pa;
  DSC_TRY(read_rope(s, root, "rope_scaling", c->qk_rope_head_dim, &sc));
  DSC_TRY(read_rope(s, root, "rope_parameters", c->qk_rope_head_dim, &pa));
  /* the base: every place that gives one must give the same */
  float theta = c->rope.theta;
  const char *from = NULL;
  const dsc_json *tv = dsc_json_get(root, "rope_theta");
  if (tv) {
    DSC_TRY(as_float(s, "rope_theta", tv, &theta));
    from = "rope_theta";
  }
  const rope_obj *objs[2] = {&sc, &pa};
  static const char *const names[2] = {"rope_scaling.rope_theta", "rope_parameters.rope_theta"};
  for (int i = 0; i < 2; ++i) {
    if (!objs[i]->has_theta) continue;
    if (from && objs[i]->theta != theta)
      return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s (%g) and %s (%g) disagree: keep one", WHERE(s), from,
                       (double)theta, names[i], (double)objs[i]->theta);
    theta = objs[i]->theta;
    from = names[i];
  }
  /* the scaling: rope_parameters (newer) and rope_scaling must agree where both are given */
  dsc_rope_params r = c->rope;
  if (sc.present && pa.present && !same_scaling(&sc.p, &pa.p))
    return dsc_error(DSC_ERR_FORMAT, s->fn,
                     "%s%srope_scaling (factor %g) and rope_parameters (factor %g) describe different RoPE "
                     "scalings: keep one",
                     WHERE(s), (double)sc.p.factor, (double)pa.p.factor);
  const rope_obj *use = pa.present ? &pa : sc.present ? &sc : NULL;
  if (use) {
    const int32_t layout = r.layout;
    r = use->p;
    r.layout = layout;
  }
  r.theta = theta;
  r.dim = c->qk_rope_head_dim;
  int32_t interleave = r.layout != DSC_ROPE_HALF;
  DSC_TRY(get_bool(s, root, "rope_interleave", &interleave));
  r.layout = interleave ? DSC_ROPE_INTERLEAVED : DSC_ROPE_HALF;
  c->rope = r;
  return DSC_OK;
}

#define INT_FIELD(k) {#k, offsetof(dsc_model_config, k), 0, 0}
#define NULLABLE(k, nv) {#k, offsetof(dsc_model_config, k), 1, nv}

static const struct {
  const char *key;
  size_t offset;
  int null_ok;
  int32_t null_value;
} INT_FIELDS[] = {
    INT_FIELD(vocab_size),
    INT_FIELD(hidden_size),
    INT_FIELD(intermediate_size),
    INT_FIELD(moe_intermediate_size),
    INT_FIELD(num_hidden_layers),
    INT_FIELD(num_nextn_predict_layers),
    INT_FIELD(num_attention_heads),
    NULLABLE(q_lora_rank, 0),
    INT_FIELD(kv_lora_rank),
    INT_FIELD(qk_nope_head_dim),
    INT_FIELD(qk_rope_head_dim),
    INT_FIELD(v_head_dim),
    NULLABLE(n_routed_experts, 0),
    NULLABLE(n_shared_experts, 0),
    NULLABLE(num_experts_per_tok, 0),
    NULLABLE(n_group, 1),
    NULLABLE(topk_group, 1),
    INT_FIELD(first_k_dense_replace),
    INT_FIELD(moe_layer_freq),
    INT_FIELD(max_position_embeddings),
};

/* Keys the parser interprets; every other member of the file is "extra". The list is
 * also what the writer produces (rope_parameters aside: written as rope_scaling). */
static const char *const OWNED[] = {
    "attention_bias", "bos_token_id", "eos_token_id", "first_k_dense_replace", "head_dim", "hidden_act",
    "hidden_size", "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings",
    "model_type", "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts",
    "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
    "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers", "q_lora_rank",
    "qk_head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_interleave",
    "rope_parameters", "rope_scaling", "rope_theta", "routed_scaling_factor", "scoring_func",
    "tie_word_embeddings", "topk_group", "topk_method", "v_head_dim", "vocab_size",
};

static int is_owned(const char *key, size_t len) {
  for (size_t i = 0; i < sizeof OWNED / sizeof OWNED[0]; ++i)
    if (strlen(OWNED[i]) == len && !memcmp(OWNED[i], key, len)) return 1;
  return 0;
}

/* The defaults of a model_type (keys a file of that family leaves out). */
static void type_defaults(dsc_model_config *c, int32_t type) {
  dsc_model_config_default(c);
  c->model_type = type;
  if (type == DSC_MODEL_TYPE_DEEPSEEK_V2) {
    c->scoring_func = DSC_MOE_SCORING_SOFTMAX;
    c->topk_method = DSC_MOE_TOPK_GREEDY;
    c->norm_topk_prob = 0;
    c->routed_scaling_factor = 1.0f;
    c->n_group = 1;
    c->topk_group = 1;
    c->first_k_dense_replace = 0;
    c->num_nextn_predict_layers = 0;
    c->n_shared_experts = 2;
  }
}

/* Text writer forward declaration (extras are serialized while parsing). */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} tbuf;
static void write_members(tbuf *b, const dsc_json *obj, const char *text, int indent,
                          int (*keep)(const dsc_json *m, void *arg), void *arg);
static void tb_put(tbuf *b, const char *s, size_t len);
static void tb_str(tbuf *b, const char *s);

typedef struct {
  int bos_list, eos_list;
} extra_filter;

static int keep_extra(const dsc_json *m, void *arg) {
  const extra_filter *f = (const extra_filter *)arg;
  if (f->bos_list && !strcmp(m->key, "bos_token_id") && m->key_len == 12) return 1;
  if (f->eos_list && !strcmp(m->key, "eos_token_id") && m->key_len == 12) return 1;
  return !is_owned(m->key, m->key_len);
}

/* Parse text into *cfg (only on success) and, when extra != NULL, the uninterpreted
 * members as a JSON object text (malloc'ed, "{}" when none). */
static dsc_status parse_config(const src *s, const char *text, size_t len, dsc_model_config *cfg, char **extra) {
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, s->fn, "cfg: expected a pointer, got NULL");
  DSC_CHECK(cfg->size >= sizeof(dsc_model_config), DSC_ERR_INVALID_ARGUMENT, s->fn,
            "cfg->size: expected sizeof(dsc_model_config) = %zu (fill it with dsc_model_config_default), got %zu",
            sizeof(dsc_model_config), cfg->size);
  if (extra) *extra = NULL;
  dsc_json_doc *doc = NULL;
  DSC_TRY(dsc_json_parse(text, len, s->fn, s->path[0] ? s->path : "json", &doc));
  const dsc_json *root = dsc_json_root(doc);
  dsc_model_config c;
  dsc_status st = DSC_OK;
  if (root->type != DSC_JSON_OBJECT) {
    st = dsc_error(DSC_ERR_FORMAT, s->fn, "%s%sexpected a JSON object at the top level, got %s", WHERE(s),
                   dsc_json_type_name(root->type));
  }
  int32_t type = DSC_MODEL_TYPE_DEEPSEEK_V3;
  if (st == DSC_OK) {
    static const char *const names[] = {"deepseek_v3", "deepseek_v2"};
    static const int32_t values[] = {DSC_MODEL_TYPE_DEEPSEEK_V3, DSC_MODEL_TYPE_DEEPSEEK_V2};
    st = get_enum(s, root, "model_type", names, values, 2,
                  "\"deepseek_v3\" or \"deepseek_v2\" (the architectures deepseek_c implements)", &type);
  }
  type_defaults(&c, type);
  for (size_t i = 0; st == DSC_OK && i < sizeof INT_FIELDS / sizeof INT_FIELDS[0]; ++i) {
    int32_t *dst = (int32_t *)((char *)&c + INT_FIELDS[i].offset);
    st = get_int(s, root, INT_FIELDS[i].key, INT_FIELDS[i].null_ok, INT_FIELDS[i].null_value, dst);
  }
  if (st == DSC_OK) st = get_float(s, root, "routed_scaling_factor", &c.routed_scaling_factor);
  if (st == DSC_OK) st = get_float(s, root, "rms_norm_eps", &c.rms_norm_eps);
  if (st == DSC_OK) st = get_float(s, root, "initializer_range", &c.initializer_range);
  if (st == DSC_OK) st = get_bool(s, root, "norm_topk_prob", &c.norm_topk_prob);
  if (st == DSC_OK) st = get_bool(s, root, "tie_word_embeddings", &c.tie_word_embeddings);
  extra_filter ef = {0, 0};
  if (st == DSC_OK) st = get_token_id(s, root, "bos_token_id", &c.bos_token_id, &ef.bos_list);
  if (st == DSC_OK) st = get_token_id(s, root, "eos_token_id", &c.eos_token_id, &ef.eos_list);
  if (st == DSC_OK) {
    static const char *const names[] = {"noaux_tc", "greedy", "gready", "group_limited_greedy"};
    static const int32_t values[] = {DSC_MOE_TOPK_NOAUX_TC, DSC_MOE_TOPK_GREEDY, DSC_MOE_TOPK_GREEDY,
                                     DSC_MOE_TOPK_GROUP_LIMITED_GREEDY};
    st = get_enum(s, root, "topk_method", names, values, 4,
                  "\"noaux_tc\", \"greedy\" or \"group_limited_greedy\"", &c.topk_method);
  }
  if (st == DSC_OK) {
    static const char *const names[] = {"sigmoid", "softmax"};
    static const int32_t values[] = {DSC_MOE_SCORING_SIGMOID, DSC_MOE_SCORING_SOFTMAX};
    st = get_enum(s, root, "scoring_func", names, values, 2, "\"sigmoid\" or \"softmax\"", &c.scoring_func);
  }
  if (st == DSC_OK) {
    static const char *const names[] = {"silu"};
    static const int32_t values[] = {0};
    int32_t act = 0;
    st = get_enum(s, root, "hidden_act", names, values, 1,
                  "\"silu\" (the activation of DeepSeek's SwiGLU experts, the only one deepseek_c implements)",
                  &act);
  }
  if (st == DSC_OK) st = get_fixed_bool(s, root, "attention_bias", 0, "MLA projections without biases");
  if (st == DSC_OK) st = get_fixed_bool(s, root, "mlp_bias", 0, "MLP and expert projections without biases");
  if (st == DSC_OK) {
    /* MLA has no grouped KV heads; HF's DeepseekV3 needs the two equal, so the value is
     * read (type-checked) and written back as num_attention_heads */
    int32_t kvh = c.num_attention_heads;
    st = get_int(s, root, "num_key_value_heads", 1, c.num_attention_heads, &kvh);
  }
  if (st == DSC_OK) {
    c.rope.size = sizeof c.rope;
    c.rope.dim = c.qk_rope_head_dim;
    st = read_rope_all(s, root, &c);
  }
  if (st == DSC_OK && extra) {
    tbuf b = {0};
    tb_put(&b, "{", 1);
    write_members(&b, root, text, 0, keep_extra, &ef);
    tb_str(&b, b.n > 1 ? "\n}" : "}");
    if (b.oom) {
      free(b.p);
      st = dsc_error(DSC_ERR_OUT_OF_MEMORY, s->fn, "out of host memory for the config's extra keys");
    } else {
      *extra = b.p;
    }
  }
  dsc_json_free(doc);
  if (st == DSC_OK) st = dsc_model_config_validate(&c);
  if (st != DSC_OK) {
    if (extra) {
      free(*extra);
      *extra = NULL;
    }
    return st;
  }
  *cfg = c;
  return DSC_OK;
}

/* The whole file as text (malloc'ed, *n bytes). */
static dsc_status read_file(const char *fn, const char *path, char **text, size_t *n) {
  *text = NULL;
  *n = 0;
  FILE *fp = fopen(path, "rb");
  if (!fp) return dsc_error(DSC_ERR_IO, fn, "path: cannot open '%s': %s", path, strerror(errno));
  struct stat sb;
  dsc_status st = DSC_OK;
  if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = dsc_error(DSC_ERR_IO, fn, "path: '%s' is not a regular file", path);
  } else if ((long long)sb.st_size > MAX_CONFIG_BYTES) {
    st = dsc_error(DSC_ERR_FORMAT, fn, "path: '%s' has %lld bytes, too many for a config.json", path,
                   (long long)sb.st_size);
  } else {
    *n = (size_t)sb.st_size;
    *text = (char *)malloc(*n ? *n : 1);
    if (!*text) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory for '%s'", path);
    else if (*n && fread(*text, 1, *n, fp) != *n) st = dsc_error(DSC_ERR_IO, fn, "path: short read of '%s'", path);
  }
  fclose(fp);
  if (st != DSC_OK) {
    free(*text);
    *text = NULL;
  }
  return st;
}

dsc_status dsc_model_config_from_json(const char *json, size_t len, dsc_model_config *cfg) {
  static const src s = {"dsc_model_config_from_json", ""};
  DSC_CHECK(json != NULL, DSC_ERR_INVALID_ARGUMENT, s.fn, "json: expected text, got NULL");
  return parse_config(&s, json, len, cfg, NULL);
}

dsc_status dsc_model_config_load(const char *path, dsc_model_config *cfg) {
  static const char *const FN = "dsc_model_config_load";
  DSC_CHECK(path != NULL && path[0], DSC_ERR_INVALID_ARGUMENT, FN, "path: expected a file name");
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "cfg: expected a pointer, got NULL");
  return dsc_model_config_read(FN, path, cfg, NULL);
}

dsc_status dsc_model_config_read(const char *fn, const char *path, dsc_model_config *cfg, char **extra) {
  char *text = NULL;
  size_t n = 0;
  DSC_TRY(read_file(fn, path, &text, &n));
  const src s = {fn, path};
  dsc_status st = parse_config(&s, text, n, cfg, extra);
  free(text);
  return st;
}

dsc_status dsc_model_config_parse(const char *fn, const char *json, size_t len, dsc_model_config *cfg,
                                  char **extra) {
  const src s = {fn, ""};
  DSC_CHECK(json != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "json: expected text, got NULL");
  return parse_config(&s, json, len, cfg, extra);
}

/* ================================================================== writing */

static void tb_put(tbuf *b, const char *s, size_t len) {
  if (b->oom) return;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + len + 1) cap *= 2;
    char *np = (char *)realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void tb_str(tbuf *b, const char *s) { tb_put(b, s, strlen(s)); }

static void tb_indent(tbuf *b, int n) {
  static const char spaces[] = "                                ";
  while (n > 0) {
    int k = n < 32 ? n : 32;
    tb_put(b, spaces, (size_t)k);
    n -= k;
  }
}

/* A JSON string literal of n bytes of UTF-8 (control characters and NUL escaped). */
static void tb_json_string(tbuf *b, const char *s, size_t n) {
  tb_put(b, "\"", 1);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char ch = (unsigned char)s[i];
    char esc[8];
    if (ch == '"') tb_put(b, "\\\"", 2);
    else if (ch == '\\') tb_put(b, "\\\\", 2);
    else if (ch == '\n') tb_put(b, "\\n", 2);
    else if (ch == '\r') tb_put(b, "\\r", 2);
    else if (ch == '\t') tb_put(b, "\\t", 2);
    else if (ch < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", (unsigned)ch);
      tb_put(b, esc, 6);
    } else {
      tb_put(b, s + i, 1);
    }
  }
  tb_put(b, "\"", 1);
}

/* The shortest %g that reads back as the same float32, with '.' whatever the locale,
 * and a ".0" on integral values so that Python reads a float back. */
static void fmt_float(char *out, size_t cap, float v) {
  char buf[48];
  for (int prec = 6; prec <= 9; ++prec) {
    snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
    if ((float)strtod(buf, NULL) == v) break;
  }
  const char *dp = localeconv()->decimal_point;
  size_t dpn = dp ? strlen(dp) : 0, k = 0;
  for (const char *s = buf; *s && k + 1 < cap;) {
    if (dpn && strncmp(s, dp, dpn) == 0) {
      out[k++] = '.';
      s += dpn;
    } else {
      out[k++] = *s++;
    }
  }
  out[k] = '\0';
  if (!strpbrk(out, ".eE") && k + 3 < cap) memcpy(out + k, ".0", 3);
}

static int key_cmp(const dsc_json *a, const dsc_json *b) {
  size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
  int c = memcmp(a->key, b->key, n);
  return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* Members sorted by key, stable (so that with duplicate keys the last one is last). */
typedef struct {
  const dsc_json *m;
  size_t order;
} member;

static int member_cmp(const void *pa, const void *pb) {
  const member *a = (const member *)pa, *b = (const member *)pb;
  int c = key_cmp(a->m, b->m);
  return c ? c : (a->order > b->order) - (a->order < b->order);
}

static void write_value(tbuf *b, const dsc_json *v, const char *text, int indent);

/* The members of obj (those keep() accepts; all when keep is NULL) as `"key": value`
 * lines one level below `indent`, each after a newline, sorted, a repeated key written
 * once with its last value (the one dsc_json_get sees). Writes nothing for none; the
 * caller adds the braces (and the newline before the closing one). */
static void write_members(tbuf *b, const dsc_json *obj, const char *text, int indent,
                          int (*keep)(const dsc_json *m, void *arg), void *arg) {
  if (!obj || obj->type != DSC_JSON_OBJECT) return;
  size_t n = 0;
  for (const dsc_json *m = obj->child; m; m = m->next) n += !keep || keep(m, arg);
  if (n == 0) return;
  member *v = (member *)malloc(n * sizeof *v);
  if (!v) {
    b->oom = 1;
    return;
  }
  size_t k = 0;
  for (const dsc_json *m = obj->child; m; m = m->next)
    if (!keep || keep(m, arg)) v[k].m = m, v[k].order = k, ++k;
  qsort(v, n, sizeof *v, member_cmp);
  int first = 1;
  for (size_t i = 0; i < n; ++i) {
    if (i + 1 < n && key_cmp(v[i].m, v[i + 1].m) == 0) continue; /* a later duplicate wins */
    tb_str(b, first ? "\n" : ",\n");
    first = 0;
    tb_indent(b, indent + 2);
    tb_json_string(b, v[i].m->key, v[i].m->key_len);
    tb_put(b, ": ", 2);
    write_value(b, v[i].m, text, indent + 2);
  }
  free(v);
}

/* One value, pretty-printed at `indent` (the column of its line); numbers copied from
 * the source text so that their spelling (1 vs 1.0) survives. */
static void write_value(tbuf *b, const dsc_json *v, const char *text, int indent) {
  switch (v->type) {
    case DSC_JSON_NULL: tb_str(b, "null"); return;
    case DSC_JSON_TRUE: tb_str(b, "true"); return;
    case DSC_JSON_FALSE: tb_str(b, "false"); return;
    case DSC_JSON_STRING: tb_json_string(b, v->str, v->str_len); return;
    case DSC_JSON_NUMBER: {
      size_t e = v->offset;
      while (text[e] && strchr("+-0123456789.eE", text[e])) ++e;
      tb_put(b, text + v->offset, e - v->offset);
      return;
    }
    case DSC_JSON_ARRAY: {
      if (!v->child) {
        tb_str(b, "[]");
        return;
      }
      tb_str(b, "[");
      for (const dsc_json *e = v->child; e; e = e->next) {
        tb_str(b, e == v->child ? "\n" : ",\n");
        tb_indent(b, indent + 2);
        write_value(b, e, text, indent + 2);
      }
      tb_str(b, "\n");
      tb_indent(b, indent);
      tb_str(b, "]");
      return;
    }
    case DSC_JSON_OBJECT: {
      if (!v->child) {
        tb_str(b, "{}");
        return;
      }
      tb_str(b, "{");
      write_members(b, v, text, indent, NULL, NULL);
      tb_str(b, "\n");
      tb_indent(b, indent);
      tb_str(b, "}");
      return;
    }
  }
}

/* One top-level entry of the output: its key and its rendered value. */
typedef struct {
  const char *key;
  size_t key_len;
  char *value; /* malloc'ed JSON text */
} entry;

typedef struct {
  entry *e;
  size_t n, cap;
  int oom;
} entries;

static void add(entries *es, const char *key, size_t key_len, const char *value, size_t value_len) {
  if (es->oom) return;
  if (es->n == es->cap) {
    size_t cap = es->cap ? 2 * es->cap : 64;
    entry *ne = (entry *)realloc(es->e, cap * sizeof *ne);
    if (!ne) {
      es->oom = 1;
      return;
    }
    es->e = ne;
    es->cap = cap;
  }
  char *v = (char *)malloc(value_len + 1);
  if (!v) {
    es->oom = 1;
    return;
  }
  memcpy(v, value, value_len);
  v[value_len] = '\0';
  es->e[es->n].key = key;
  es->e[es->n].key_len = key_len;
  es->e[es->n].value = v;
  es->n++;
}

static void add_raw(entries *es, const char *key, const char *value) {
  add(es, key, strlen(key), value, strlen(value));
}

static void add_int(entries *es, const char *key, long long v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", v);
  add_raw(es, key, buf);
}

static void add_float(entries *es, const char *key, float v) {
  char buf[48];
  fmt_float(buf, sizeof buf, v);
  add_raw(es, key, buf);
}

static int has_extra(const dsc_json *extra, const char *key) { return extra && dsc_json_get(extra, key) != NULL; }

static int entry_cmp(const void *pa, const void *pb) {
  const entry *a = (const entry *)pa, *b = (const entry *)pb;
  size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
  int c = memcmp(a->key, b->key, n);
  return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

dsc_status dsc_model_config_render(const char *fn, const dsc_model_config *c, const char *extra_text, int flags,
                                   char **out, size_t *out_len) {
  *out = NULL;
  if (out_len) *out_len = 0;
  dsc_json_doc *xdoc = NULL;
  const dsc_json *x = NULL;
  if (extra_text && extra_text[0]) {
    DSC_TRY(dsc_json_parse(extra_text, strlen(extra_text), fn, "the config's extra keys", &xdoc));
    x = dsc_json_root(xdoc);
    if (x->type != DSC_JSON_OBJECT) {
      dsc_json_free(xdoc);
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "extra config: expected a JSON object, got %s",
                       dsc_json_type_name(x->type));
    }
  }
  const int v2 = c->model_type == DSC_MODEL_TYPE_DEEPSEEK_V2;
  entries es = {0};
  /* the keys deepseek_c interprets, with the values it uses */
  if (!has_extra(x, "architectures"))
    add_raw(&es, "architectures", v2 ? "[\n    \"DeepseekV2ForCausalLM\"\n  ]" : "[\n    \"DeepseekV3ForCausalLM\"\n  ]");
  add_raw(&es, "attention_bias", "false");
  if (!has_extra(x, "bos_token_id")) {
    if (c->bos_token_id < 0) add_raw(&es, "bos_token_id", "null");
    else add_int(&es, "bos_token_id", c->bos_token_id);
  }
  if (!has_extra(x, "eos_token_id")) {
    if (c->eos_token_id < 0) add_raw(&es, "eos_token_id", "null");
    else add_int(&es, "eos_token_id", c->eos_token_id);
  }
  add_int(&es, "first_k_dense_replace", c->first_k_dense_replace);
  add_int(&es, "head_dim", c->qk_rope_head_dim); /* HF's name for the RoPE part of a head */
  add_raw(&es, "hidden_act", "\"silu\"");
  add_int(&es, "hidden_size", c->hidden_size);
  add_float(&es, "initializer_range", c->initializer_range);
  add_int(&es, "intermediate_size", c->intermediate_size);
  add_int(&es, "kv_lora_rank", c->kv_lora_rank);
  add_int(&es, "max_position_embeddings", c->max_position_embeddings);
  add_raw(&es, "model_type", v2 ? "\"deepseek_v2\"" : "\"deepseek_v3\"");
  add_int(&es, "moe_intermediate_size", c->moe_intermediate_size);
  add_int(&es, "moe_layer_freq", c->moe_layer_freq);
  add_int(&es, "n_group", c->n_group);
  /* 0 experts is HF's None (a dense model); transformers reads 0 as "an MoE of nothing" */
  if (c->n_routed_experts == 0) add_raw(&es, "n_routed_experts", "null");
  else add_int(&es, "n_routed_experts", c->n_routed_experts);
  if (c->n_shared_experts == 0) add_raw(&es, "n_shared_experts", "null");
  else add_int(&es, "n_shared_experts", c->n_shared_experts);
  add_raw(&es, "norm_topk_prob", c->norm_topk_prob ? "true" : "false");
  add_int(&es, "num_attention_heads", c->num_attention_heads);
  if (c->num_experts_per_tok == 0) add_raw(&es, "num_experts_per_tok", "null");
  else add_int(&es, "num_experts_per_tok", c->num_experts_per_tok);
  add_int(&es, "num_hidden_layers", c->num_hidden_layers);
  add_int(&es, "num_key_value_heads", c->num_attention_heads); /* MLA: HF expects them equal */
  add_int(&es, "num_nextn_predict_layers", c->num_nextn_predict_layers);
  if (c->q_lora_rank == 0) add_raw(&es, "q_lora_rank", "null");
  else add_int(&es, "q_lora_rank", c->q_lora_rank);
  add_int(&es, "qk_head_dim", (long long)c->qk_nope_head_dim + c->qk_rope_head_dim);
  add_int(&es, "qk_nope_head_dim", c->qk_nope_head_dim);
  add_int(&es, "qk_rope_head_dim", c->qk_rope_head_dim);
  add_float(&es, "rms_norm_eps", c->rms_norm_eps);
  add_raw(&es, "rope_interleave", c->rope.layout != DSC_ROPE_HALF ? "true" : "false");
  add_float(&es, "rope_theta", c->rope.theta);
  if (c->rope.factor > 1.0f) {
    char f[5][48], buf[512];
    fmt_float(f[0], sizeof f[0], c->rope.beta_fast);
    fmt_float(f[1], sizeof f[1], c->rope.beta_slow);
    fmt_float(f[2], sizeof f[2], c->rope.factor);
    fmt_float(f[3], sizeof f[3], c->rope.mscale);
    fmt_float(f[4], sizeof f[4], c->rope.mscale_all_dim);
    snprintf(buf, sizeof buf,
             "{\n    \"beta_fast\": %s,\n    \"beta_slow\": %s,\n    \"factor\": %s,\n"
             "    \"mscale\": %s,\n    \"mscale_all_dim\": %s,\n"
             "    \"original_max_position_embeddings\": %d,\n    \"type\": \"yarn\"\n  }",
             f[0], f[1], f[2], f[3], f[4], (int)c->rope.original_max_position);
    add_raw(&es, "rope_scaling", buf);
  } else {
    add_raw(&es, "rope_scaling", "null");
  }
  add_float(&es, "routed_scaling_factor", c->routed_scaling_factor);
  add_raw(&es, "scoring_func", c->scoring_func == DSC_MOE_SCORING_SOFTMAX ? "\"softmax\"" : "\"sigmoid\"");
  add_raw(&es, "tie_word_embeddings", c->tie_word_embeddings ? "true" : "false");
  add_int(&es, "topk_group", c->topk_group);
  add_raw(&es, "topk_method", c->topk_method == DSC_MOE_TOPK_GREEDY                 ? "\"greedy\""
                              : c->topk_method == DSC_MOE_TOPK_GROUP_LIMITED_GREEDY ? "\"group_limited_greedy\""
                                                                                    : "\"noaux_tc\"");
  add_int(&es, "v_head_dim", c->v_head_dim);
  add_int(&es, "vocab_size", c->vocab_size);
  /* a checkpoint: its weights decide the dtype and the quantization */
  if (flags & DSC_CONFIG_CHECKPOINT) {
    add_raw(&es, "torch_dtype", "\"float32\"");
    if (has_extra(x, "dtype")) add_raw(&es, "dtype", "\"float32\"");
    if (flags & DSC_CONFIG_FP8_WEIGHTS)
      add_raw(&es, "quantization_config",
              "{\n    \"activation_scheme\": \"dynamic\",\n    \"fmt\": \"e4m3\",\n"
              "    \"quant_method\": \"fp8\",\n    \"weight_block_size\": [\n      128,\n      128\n    ]\n  }");
  }
  /* the members deepseek_c does not interpret, as they came */
  for (const dsc_json *m = x ? x->child : NULL; m && !es.oom; m = m->next) {
    if (flags & DSC_CONFIG_CHECKPOINT) {
      static const char *const replaced[] = {"torch_dtype", "dtype", "quantization_config"};
      int skip = 0;
      for (int i = 0; i < 3; ++i) skip |= m->key_len == strlen(replaced[i]) && !strcmp(m->key, replaced[i]);
      if (skip) continue;
    }
    tbuf v = {0};
    write_value(&v, m, extra_text, 2);
    if (v.oom) es.oom = 1;
    else add(&es, m->key, m->key_len, v.p ? v.p : "", v.n);
    free(v.p);
  }
  tbuf b = {0};
  if (!es.oom) {
    qsort(es.e, es.n, sizeof *es.e, entry_cmp);
    tb_str(&b, "{\n");
    for (size_t i = 0; i < es.n; ++i) {
      if (i + 1 < es.n && entry_cmp(&es.e[i], &es.e[i + 1]) == 0) continue; /* defensive: one per key */
      tb_str(&b, "  ");
      tb_json_string(&b, es.e[i].key, es.e[i].key_len);
      tb_str(&b, ": ");
      tb_str(&b, es.e[i].value);
      tb_str(&b, i + 1 < es.n ? ",\n" : "\n");
    }
    tb_str(&b, "}\n");
  }
  const int oom = es.oom || b.oom;
  for (size_t i = 0; i < es.n; ++i) free(es.e[i].value);
  free(es.e);
  dsc_json_free(xdoc); /* after the entries: their keys point into it */
  if (oom) {
    free(b.p);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory for config.json");
  }
  *out = b.p;
  if (out_len) *out_len = b.n;
  return DSC_OK;
}

/* Copy text into the caller's buffer under the size-query protocol. */
dsc_status dsc_model_config_copy_out(const char *fn, const char *text, size_t n, char *out, size_t cap,
                                     size_t *out_len) {
  DSC_CHECK(out_len != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "out_len: expected a pointer, got NULL");
  DSC_CHECK(out != NULL || cap == 0, DSC_ERR_INVALID_ARGUMENT, fn, "out: expected a buffer for cap = %zu bytes",
            cap);
  *out_len = n;
  if (cap == 0) return DSC_OK;
  DSC_CHECK(cap > n, DSC_ERR_INVALID_ARGUMENT, fn, "cap: expected at least %zu bytes (with the NUL), got %zu",
            n + 1, cap);
  memcpy(out, text, n);
  out[n] = '\0';
  return DSC_OK;
}

dsc_status dsc_model_config_normalize_json(const char *json, size_t len, char *out, size_t cap, size_t *out_len) {
  static const char *const FN = "dsc_model_config_normalize_json";
  DSC_CHECK(out_len != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out_len: expected a pointer, got NULL");
  dsc_model_config c;
  dsc_model_config_default(&c);
  char *extra = NULL;
  DSC_TRY(dsc_model_config_parse(FN, json, len, &c, &extra));
  char *text = NULL;
  size_t n = 0;
  dsc_status st = dsc_model_config_render(FN, &c, extra, 0, &text, &n);
  free(extra);
  if (st == DSC_OK) st = dsc_model_config_copy_out(FN, text, n, out, cap, out_len);
  free(text);
  return st;
}
