/*
 * model/calc.c -- the model calculator (dsc_model_calc): parameters, FLOPs per token,
 * KV-cache bytes and memory per GPU of a config, without building a model. The counts
 * follow dsc_model_create's layout tensor by tensor (model.c add_block and the MTP extras),
 * with the same MoE-layer rule (dsc_model_is_moe_block) and the same FP8-held slots
 * (dsc_model_held_slot's block linears), so params_total == dsc_model_num_parameters.
 *
 * Legend (see deepseek_c.h): V vocab, D hidden, L main layers, Dm MTP depths, H heads,
 * dn/dr/dv head dims, dqk = dn + dr, Rq q_lora_rank, Rkv kv_lora_rank, E routed experts,
 * K experts per token, F moe_intermediate_size, Fs shared intermediate, I dense
 * intermediate, S the options' context.
 */
#include <math.h>
#include <string.h>

#include "model_internal.h"

static const char *const FN = "dsc_model_calc";

void dsc_calc_options_default(dsc_calc_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->context = 4096;
  o->recipe = DSC_CALC_RECIPE_FP8;
  o->moments_dtype = DSC_DTYPE_BFLOAT16;
  o->tensor_parallel = 1;
  o->pipeline_parallel = 1;
  o->data_parallel = 1;
  o->expert_parallel = 1;
  o->zero1 = 0;
  o->micro_batch_tokens = 4096;
  o->compare_kv_heads = 0;
}

static int64_t cdiv128(int64_t a) { return (a + 127) / 128; }

/* Parameters of one group (routed experts, or everything else) by storage kind. */
typedef struct {
  int64_t lin;     /* block-linear parameters (E4M3 in the FP8 recipe) */
  int64_t scales;  /* their 128x128 block scales */
  int64_t hp;      /* other trained tensors (embedding, head, norms, router, eh_proj) */
  int64_t bias;    /* correction biases (float32, not trained by gradient) */
  int64_t lin_tensors; /* block-linear tensors (each gets a weight_scale_inv in FP8 checkpoints) */
} group;

/* What one block (main layer or an MTP module's block) holds and uses. */
typedef struct {
  group other, expert;
  int64_t params;      /* all its tensors */
  int64_t active;      /* what one token uses */
  int64_t macs;        /* multiply-adds with weights per token */
  int64_t tensors;     /* Hugging Face tensors (experts one by one) */
  double act_values;   /* saved activation values per token (estimate; see deepseek_c.h) */
  double act_fp8;      /* of which routed-expert inputs (E4M3 in the FP8 recipe) */
} block;

/* An [n, k] block linear, `count` of them (experts), into group g. */
static void add_lin(group *g, int64_t n, int64_t k, int64_t count) {
  g->lin += count * n * k;
  g->scales += count * cdiv128(n) * cdiv128(k);
  g->lin_tensors += count;
}

static void count_block(const dsc_model_config *c, int32_t i, block *b) {
  memset(b, 0, sizeof *b);
  const int64_t D = c->hidden_size, H = c->num_attention_heads;
  const int64_t dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, dqk = dn + dr;
  const int64_t Rq = c->q_lora_rank, Rkv = c->kv_lora_rank;
  group *o = &b->other;
  /* attention: norms, projections (model.c add_block, in its order) */
  int64_t attn_macs;
  o->hp += D; /* input_layernorm */
  if (Rq > 0) {
    add_lin(o, Rq, D, 1);      /* q_a_proj */
    o->hp += Rq;               /* q_a_layernorm */
    add_lin(o, H * dqk, Rq, 1); /* q_b_proj */
    attn_macs = Rq * D + H * dqk * Rq;
    b->tensors += 3;
  } else {
    add_lin(o, H * dqk, D, 1); /* q_proj */
    attn_macs = H * dqk * D;
    b->tensors += 1;
  }
  add_lin(o, Rkv + dr, D, 1);        /* kv_a_proj_with_mqa */
  o->hp += Rkv;                      /* kv_a_layernorm */
  add_lin(o, H * (dn + dv), Rkv, 1); /* kv_b_proj */
  add_lin(o, D, H * dv, 1);          /* o_proj */
  o->hp += D;                        /* post_attention_layernorm */
  attn_macs += (Rkv + dr) * D + H * (dn + dv) * Rkv + D * H * dv;
  b->tensors += 6;
  b->act_values = (double)(2 * D + (Rq > 0 ? 2 * Rq : 0) + (Rkv + dr) + Rkv + 2 * H * dqk + 2 * H * dv + H);

  int64_t ffn_active, ffn_macs;
  if (dsc_model_is_moe_block(c, i)) {
    const int64_t E = c->n_routed_experts, K = c->num_experts_per_tok, F = c->moe_intermediate_size;
    const int64_t Fs = F * c->n_shared_experts;
    o->hp += E * D; /* mlp.gate.weight (the router) */
    b->tensors += 1;
    int64_t bias = 0;
    if (c->topk_method == DSC_MOE_TOPK_NOAUX_TC) {
      bias = E;
      o->bias += E; /* e_score_correction_bias */
      b->tensors += 1;
    }
    add_lin(&b->expert, F, D, E); /* experts.E.gate_proj */
    add_lin(&b->expert, F, D, E); /* up_proj */
    add_lin(&b->expert, D, F, E); /* down_proj */
    b->tensors += 3 * E;
    if (Fs > 0) {
      add_lin(o, Fs, D, 1);
      add_lin(o, Fs, D, 1);
      add_lin(o, D, Fs, 1);
      b->tensors += 3;
    }
    ffn_active = E * D + bias + K * 3 * D * F + 3 * D * Fs;
    ffn_macs = E * D + K * 3 * D * F + 3 * D * Fs;
    b->act_values += (double)(2 * D + E + K * (D + 3 * F) + 3 * Fs);
    b->act_fp8 = (double)(K * D);
  } else {
    const int64_t I = c->intermediate_size;
    add_lin(o, I, D, 1);
    add_lin(o, I, D, 1);
    add_lin(o, D, I, 1);
    b->tensors += 3;
    ffn_active = 3 * D * I;
    ffn_macs = 3 * D * I;
    b->act_values += (double)(2 * D + 3 * I);
  }
  b->params = o->lin + o->hp + o->bias + b->expert.lin;
  /* the attention and norms are used whole; of the FFN, what the token is routed to */
  b->active = attn_macs + 2 * D + (Rq > 0 ? Rq : 0) + Rkv + ffn_active;
  b->macs = attn_macs + ffn_macs;
}

static void group_add(group *a, const group *b) {
  a->lin += b->lin;
  a->scales += b->scales;
  a->hp += b->hp;
  a->bias += b->bias;
  a->lin_tensors += b->lin_tensors;
}

/* Bytes of a group's weights in the recipe's dtypes (exact: the counts are bounded). */
static int64_t weight_bytes(const group *g, int32_t recipe) {
  switch (recipe) {
    case DSC_CALC_RECIPE_FP32: return 4 * (g->lin + g->hp + g->bias);
    case DSC_CALC_RECIPE_BF16: return 2 * (g->lin + g->hp) + 4 * g->bias;
    default: return g->lin + 4 * g->scales + 2 * g->hp + 4 * g->bias;
  }
}

dsc_status dsc_model_calc(const dsc_model_config *cfg, const dsc_calc_options *opt, dsc_calc_result *out) {
  DSC_CHECK(out != NULL && out->size == sizeof(dsc_calc_result), DSC_ERR_INVALID_ARGUMENT, FN,
            "out: expected a dsc_calc_result with size = %zu, got %s%zu", sizeof(dsc_calc_result),
            out ? "size " : "NULL", out ? out->size : (size_t)0);
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "cfg: expected a dsc_model_config, got NULL");
  DSC_TRY(dsc_model_config_validate(cfg));
  dsc_calc_options o;
  if (opt) {
    DSC_CHECK(opt->size == sizeof(dsc_calc_options), DSC_ERR_INVALID_ARGUMENT, FN,
              "opt: expected size = %zu (dsc_calc_options_default), got %zu", sizeof(dsc_calc_options),
              opt->size);
    o = *opt;
  } else {
    dsc_calc_options_default(&o);
  }
  const dsc_model_config *c = cfg;
  const int64_t V = c->vocab_size, D = c->hidden_size, L = c->num_hidden_layers;
  const int64_t Dm = c->num_nextn_predict_layers, H = c->num_attention_heads, E = c->n_routed_experts;
  const int64_t dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, dqk = dn + dr;
  const int64_t Rkv = c->kv_lora_rank;

  /* the options */
  DSC_CHECK(o.context >= 1, DSC_ERR_INVALID_ARGUMENT, FN, "opt->context: expected >= 1 token, got %lld",
            (long long)o.context);
  DSC_CHECK(o.recipe >= DSC_CALC_RECIPE_FP32 && o.recipe <= DSC_CALC_RECIPE_FP8, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->recipe: expected DSC_CALC_RECIPE_FP32 (0), _BF16 (1) or _FP8 (2), got %d", (int)o.recipe);
  DSC_CHECK(o.moments_dtype == DSC_DTYPE_FLOAT32 || o.moments_dtype == DSC_DTYPE_BFLOAT16,
            DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->moments_dtype: expected DSC_DTYPE_FLOAT32 (%d) or DSC_DTYPE_BFLOAT16 (%d), got %d",
            (int)DSC_DTYPE_FLOAT32, (int)DSC_DTYPE_BFLOAT16, (int)o.moments_dtype);
  DSC_CHECK(o.tensor_parallel >= 1 && H % o.tensor_parallel == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->tensor_parallel: expected a divisor of num_attention_heads (%lld), got %d", (long long)H,
            (int)o.tensor_parallel);
  DSC_CHECK(o.pipeline_parallel >= 1 && o.pipeline_parallel <= L, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->pipeline_parallel: expected 1..num_hidden_layers (%lld), got %d", (long long)L,
            (int)o.pipeline_parallel);
  DSC_CHECK(o.data_parallel >= 1, DSC_ERR_INVALID_ARGUMENT, FN, "opt->data_parallel: expected >= 1, got %d",
            (int)o.data_parallel);
  if (E > 0) {
    DSC_CHECK(o.expert_parallel >= 1 && o.data_parallel % o.expert_parallel == 0 && E % o.expert_parallel == 0,
              DSC_ERR_INVALID_ARGUMENT, FN,
              "opt->expert_parallel: expected a divisor of data_parallel (%d) and of n_routed_experts (%lld), "
              "got %d",
              (int)o.data_parallel, (long long)E, (int)o.expert_parallel);
  } else {
    DSC_CHECK(o.expert_parallel == 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "opt->expert_parallel: expected 1 (the config has no routed experts), got %d", (int)o.expert_parallel);
  }
  DSC_CHECK(o.zero1 == 0 || o.zero1 == 1, DSC_ERR_INVALID_ARGUMENT, FN, "opt->zero1: expected 0 or 1, got %d",
            (int)o.zero1);
  DSC_CHECK(o.micro_batch_tokens >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->micro_batch_tokens: expected >= 1, got %lld", (long long)o.micro_batch_tokens);
  DSC_CHECK(o.compare_kv_heads == 0 || (o.compare_kv_heads >= 1 && H % o.compare_kv_heads == 0),
            DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->compare_kv_heads: expected 0 (MHA) or a divisor of num_attention_heads (%lld), got %d",
            (long long)H, (int)o.compare_kv_heads);
  DSC_CHECK((long long)o.tensor_parallel * o.pipeline_parallel * o.data_parallel <= INT32_MAX,
            DSC_ERR_INVALID_ARGUMENT, FN,
            "opt: expected tensor_parallel * pipeline_parallel * data_parallel <= %d GPUs, got %lld",
            (int)INT32_MAX, (long long)o.tensor_parallel * o.pipeline_parallel * o.data_parallel);

  /* Every count below is a sum of products of int32 config fields: bound the largest in
   * double first so that the int64 arithmetic cannot overflow. */
  {
    const double d = (double)D, big = (double)(INT64_MAX / 8);
    const double per_block = 4.0 * d * ((double)c->q_lora_rank + (double)H * (double)dqk) +
                             (double)H * (double)(dn + dv) * (double)Rkv + d * (double)H * (double)dv +
                             3.0 * d * ((double)c->intermediate_size + (double)c->moe_intermediate_size *
                                        ((double)E + (double)c->n_shared_experts + 1.0)) +
                             d * (double)E + 8.0 * d + 2.0 * d * d;
    const double total = 2.0 * (double)V * d + (double)(L + Dm) * per_block;
    DSC_CHECK(total < big, DSC_ERR_INVALID_ARGUMENT, FN,
              "cfg: expected a model below %.3g parameters (int64 counts), got about %.3g", big, total);
  }

  dsc_calc_result r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;

  /* parameters: [embed] [layers] [final norm] [lm_head?] [MTP modules], as dsc_model_create */
  group other = {0}, expert = {0};
  other.hp += V * D; /* model.embed_tokens.weight */
  int64_t tensors = 1, active = V * D, macs = 0, params_mtp = 0;
  double act = 0.0, act8 = 0.0; /* saved values per token: recipe dtype / routed-expert inputs */
  for (int32_t i = 0; i < (int32_t)L; ++i) {
    block b;
    count_block(c, i, &b);
    group_add(&other, &b.other);
    group_add(&expert, &b.expert);
    tensors += b.tensors;
    active += b.active;
    macs += b.macs;
    act += b.act_values;
    act8 += b.act_fp8;
  }
  other.hp += D; /* model.norm.weight */
  tensors += 1;
  active += D;
  if (!c->tie_word_embeddings) {
    other.hp += V * D; /* lm_head.weight */
    tensors += 1;
  }
  active += c->tie_word_embeddings ? 0 : V * D; /* tied: the embedding, already counted, is the head */
  macs += V * D;                                /* logits */
  act += 2.0 * (double)D;                       /* final norm input and output */
  double logits_values = (double)V;
  int64_t active_mtp = 0, macs_mtp = 0;
  double mtp_flops = 0.0;
  for (int32_t d = 0; d < (int32_t)Dm; ++d) {
    block b;
    count_block(c, (int32_t)L + d, &b);
    const int64_t own = 3 * D + 2 * D * D; /* enorm, hnorm, shared_head.norm; eh_proj [D, 2D] */
    group_add(&other, &b.other);
    group_add(&expert, &b.expert);
    other.hp += own;
    tensors += b.tensors + 4;
    params_mtp += b.params + own;
    if (d == 0) {
      active_mtp = b.active + own;
      macs_mtp = 2 * D * D + b.macs + V * D;
    }
    act += 6.0 * (double)D + b.act_values + 2.0 * (double)D;
    act8 += b.act_fp8;
    logits_values += (double)V;
    /* each depth: eh_proj, its block (causal attention over ~S positions), the shared head */
    mtp_flops += 2.0 * (double)(2 * D * D + b.macs + V * D) +
                 2.0 * (double)(H * (dqk + dv)) * ((double)o.context + 1.0) / 2.0;
  }

  r.params_total = other.lin + other.hp + other.bias + expert.lin;
  r.params_embedding = V * D;
  r.params_head = c->tie_word_embeddings ? 0 : V * D;
  r.params_mtp = params_mtp;
  r.params_main = r.params_total - params_mtp;
  r.params_routed_experts = expert.lin;
  r.params_active = active;
  r.params_active_mtp = active_mtp;
  r.n_tensors = tensors;

  /* FLOPs per token */
  r.decode_macs_main = macs;
  r.decode_macs_mtp = macs_mtp;
  r.flops_fwd_weights = 2.0 * (double)macs;
  r.flops_fwd_attention = (double)L * 2.0 * (double)(H * (dqk + dv)) * ((double)o.context + 1.0) / 2.0;
  r.flops_fwd_mtp = mtp_flops;
  r.flops_train = 3.0 * (r.flops_fwd_weights + r.flops_fwd_attention + r.flops_fwd_mtp);
  r.flops_decode = r.flops_fwd_weights + (double)L * 2.0 * (double)(H * (2 * Rkv + dr)) * (double)o.context;

  /* KV cache per token over the main layers */
  const int64_t gkv = o.compare_kv_heads ? o.compare_kv_heads : H;
  r.kv_values_per_layer = Rkv + dr;
  r.kv_bytes_mla_bf16 = 2 * L * (Rkv + dr);
  r.kv_bytes_mla_fp8 = L * (Rkv + 4 * cdiv128(Rkv) + 2 * dr);
  r.kv_bytes_mha_bf16 = 2 * L * H * (dqk + dv);
  r.kv_bytes_gqa_bf16 = 2 * L * gkv * (dqk + dv);

  /* weights in the recipe's dtypes */
  const int64_t wb_other = weight_bytes(&other, o.recipe), wb_expert = weight_bytes(&expert, o.recipe);
  r.weight_bytes = wb_other + wb_expert;
  r.fp8_params = other.lin + expert.lin;
  r.fp8_scales = other.scales + expert.scales;
  const int64_t hp_bytes = o.recipe == DSC_CALC_RECIPE_FP32 ? 4 : 2;
  r.checkpoint_bytes = r.weight_bytes + Dm * 2 * V * D * hp_bytes;
  r.checkpoint_tensors = tensors + 2 * Dm + (o.recipe == DSC_CALC_RECIPE_FP8 ? other.lin_tensors + expert.lin_tensors : 0);

  /* memory per GPU */
  const double tp = o.tensor_parallel, pp = o.pipeline_parallel, dp = o.data_parallel, ep = o.expert_parallel;
  const double tr_other = (double)(other.lin + other.hp), tr_expert = (double)expert.lin; /* trained */
  const double sh_other = o.zero1 ? dp : 1.0, sh_expert = o.zero1 ? dp / ep : 1.0;
  const double mom = o.moments_dtype == DSC_DTYPE_BFLOAT16 ? 2.0 : 4.0;
  r.gpus = (int32_t)(o.tensor_parallel * o.pipeline_parallel * o.data_parallel);
  r.mem_weights = ((double)wb_other / tp + (double)wb_expert / ep) / pp;
  r.mem_master = o.recipe == DSC_CALC_RECIPE_FP32
                     ? 0.0
                     : 4.0 * (tr_other / tp / sh_other + tr_expert / ep / sh_expert) / pp;
  r.mem_grads = 4.0 * (tr_other / tp + tr_expert / ep) / pp;
  r.mem_optimizer = 2.0 * mom * (tr_other / tp / sh_other + tr_expert / ep / sh_expert) / pp;
  const double ab = o.recipe == DSC_CALC_RECIPE_FP32 ? 4.0 : 2.0;
  const double per_token = o.recipe == DSC_CALC_RECIPE_FP8
                               ? (act - act8) * ab + act8 * (1.0 + 4.0 / 128.0) + 4.0 * logits_values
                               : act * ab + 4.0 * logits_values;
  r.mem_activations = (double)o.micro_batch_tokens * per_token / tp / pp;
  r.mem_total = r.mem_weights + r.mem_master + r.mem_grads + r.mem_optimizer + r.mem_activations;

  *out = r;
  return DSC_OK;
}
