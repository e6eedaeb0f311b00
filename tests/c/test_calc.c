/*
 * test_calc.c -- C-level tests of the model calculator (dsc_model_calc) through the public
 * ABI: DeepSeek-V3's checkpoint counts (91,991 tensors, 688,574,839,360 bytes) and totals
 * from dsc_model_config_default, parameter and tensor counts against models dsc_model_create
 * builds from config.json text (dense-first, moe_layer_freq, no q_lora, tied embeddings, MTP
 * 0/2), KV bytes, FLOPs and FP32 memory formulas, and bad arguments (each an
 * DSC_ERR_INVALID_ARGUMENT naming the option, *out untouched).
 * Also built with ASan/UBSan by tests/c/run_sanitized.sh (CI).
 * Closing line: "N passed, N failed".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deepseek_c.h"
#include "check.h"

static dsc_calc_result fresh_result(void) {
  dsc_calc_result r;
  memset(&r, 0xAB, sizeof r); /* poison: every field must be written */
  r.size = sizeof r;
  return r;
}

static void test_v3(void) {
  dsc_model_config c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  dsc_model_config_default(&c);
  dsc_calc_options o;
  dsc_calc_options_default(&o);
  CHECK(o.size == sizeof o && o.context == 4096 && o.recipe == DSC_CALC_RECIPE_FP8 &&
            o.moments_dtype == DSC_DTYPE_BFLOAT16 && o.tensor_parallel == 1 && o.expert_parallel == 1,
        "options defaults");
  dsc_calc_result r = fresh_result();
  CHECK(dsc_model_calc(&c, &o, &r) == DSC_OK, "V3: %s", dsc_last_error());
  const int64_t V = 129280, D = 7168, L = 61;
  CHECK(r.checkpoint_tensors == 91991, "V3 checkpoint tensors 91,991, got %lld", (long long)r.checkpoint_tensors);
  CHECK(r.checkpoint_bytes == 688574839360LL, "V3 checkpoint bytes 688,574,839,360, got %lld",
        (long long)r.checkpoint_bytes);
  CHECK(llround((double)r.params_main / 1e7) == 67103, "V3 main model 671.03B, got %lld", (long long)r.params_main);
  CHECK(llround((double)r.params_active / 1e7) == 3755, "V3 activated 37.55B, got %lld", (long long)r.params_active);
  CHECK(llround((double)(r.params_active - r.params_embedding) / 1e7) == 3663, "V3 activated w/o embedding 36.63B");
  CHECK(llround((double)r.params_mtp / 1e7) == 1161, "V3 MTP 11.61B, got %lld", (long long)r.params_mtp);
  CHECK(r.params_embedding == V * D && r.params_head == V * D, "embedding, head");
  CHECK(r.params_total == r.params_main + r.params_mtp, "total = main + mtp");
  CHECK(r.n_tensors == 3 + 3 * 12 + 58 * (9 + 2 + 256 * 3 + 3) + (9 + 2 + 256 * 3 + 3 + 4), "n_tensors %lld",
        (long long)r.n_tensors);
  CHECK(r.kv_values_per_layer == 576 && r.kv_bytes_mla_bf16 == 1152 * L && r.kv_bytes_mla_fp8 == 656 * L,
        "V3 KV bytes: %lld %lld", (long long)r.kv_bytes_mla_bf16, (long long)r.kv_bytes_mla_fp8);
  CHECK(r.kv_bytes_mha_bf16 == 2 * L * 128 * 320 && r.kv_bytes_gqa_bf16 == r.kv_bytes_mha_bf16, "MHA bytes");
  CHECK(fabs(r.flops_fwd_attention - (double)L * 2.0 * 128 * 320 * 4097.0 / 2.0) < 1.0, "attention FLOPs");
  CHECK(r.flops_fwd_weights == 2.0 * (double)r.decode_macs_main, "weights FLOPs = 2 MACs");
  CHECK(fabs(r.flops_train - 3.0 * (r.flops_fwd_weights + r.flops_fwd_attention + r.flops_fwd_mtp)) <
            1e-6 * r.flops_train,
        "train = 3 x forward");
  CHECK(r.gpus == 1 && r.mem_total == r.mem_weights + r.mem_master + r.mem_grads + r.mem_optimizer +
                                          r.mem_activations,
        "memory total");
  /* NULL options: the defaults */
  dsc_calc_result r2 = fresh_result();
  CHECK(dsc_model_calc(&c, NULL, &r2) == DSC_OK && memcmp(&r, &r2, sizeof r) == 0, "opt NULL = defaults");
  /* FP32 on one GPU: 4 bytes per weight, no masters, 4 per gradient, 8 per moment pair */
  o.recipe = DSC_CALC_RECIPE_FP32;
  o.moments_dtype = DSC_DTYPE_FLOAT32;
  dsc_calc_result f = fresh_result();
  CHECK(dsc_model_calc(&c, &o, &f) == DSC_OK, "fp32: %s", dsc_last_error());
  const double trained = (double)(f.params_total - 59 * 256); /* 58 + 1 MTP correction biases */
  CHECK(f.weight_bytes == 4 * f.params_total && f.mem_weights == 4.0 * (double)f.params_total &&
            f.mem_master == 0.0 && f.mem_grads == 4.0 * trained && f.mem_optimizer == 8.0 * trained,
        "fp32 memory");
  /* V3's layout: PP16 x EP64 inside DP128, ZeRO-1 */
  dsc_calc_options_default(&o);
  o.pipeline_parallel = 16;
  o.data_parallel = 128;
  o.expert_parallel = 64;
  o.zero1 = 1;
  dsc_calc_result g = fresh_result();
  CHECK(dsc_model_calc(&c, &o, &g) == DSC_OK && g.gpus == 2048 && g.mem_total < 80e9, "V3 layout: %g",
        g.mem_total);
}

/* A tiny config.json; the variants change one key. */
static const char *TINY =
    "{\"vocab_size\": 96, \"hidden_size\": 64, \"intermediate_size\": 80, \"moe_intermediate_size\": 24,"
    " \"num_hidden_layers\": %d, \"num_nextn_predict_layers\": %d, \"num_attention_heads\": 2,"
    " \"q_lora_rank\": %s, \"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8,"
    " \"v_head_dim\": 16, \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,"
    " \"n_group\": 4, \"topk_group\": 2, \"first_k_dense_replace\": %d, \"moe_layer_freq\": %d,"
    " \"tie_word_embeddings\": %s, \"max_position_embeddings\": 64,"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 16}}";

static void test_against_built_models(dsc_context *ctx) {
  static const struct {
    const char *what;
    int layers, mtp;
    const char *q_lora;
    int first_dense, freq;
    const char *tied;
  } v[] = {
      {"tiny", 2, 1, "32", 1, 1, "false"},
      {"dense first 2", 4, 1, "32", 2, 1, "false"},
      {"moe_layer_freq 2", 4, 1, "32", 0, 2, "false"},
      {"no q_lora", 2, 1, "null", 1, 1, "false"},
      {"tied embeddings", 2, 1, "32", 1, 1, "true"},
      {"MTP 0", 2, 0, "32", 1, 1, "false"},
      {"MTP 2", 2, 2, "32", 1, 1, "false"},
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; ++i) {
    char json[1024];
    int n = snprintf(json, sizeof json, TINY, v[i].layers, v[i].mtp, v[i].q_lora, v[i].first_dense, v[i].freq,
                     v[i].tied);
    dsc_model_config c;
    memset(&c, 0, sizeof c);
    c.size = sizeof c;
    if (dsc_model_config_from_json(json, (size_t)n, &c) != DSC_OK) {
      CHECK(0, "%s: config: %s", v[i].what, dsc_last_error());
      continue;
    }
    dsc_calc_result r = fresh_result();
    dsc_calc_options o;
    dsc_calc_options_default(&o);
    o.recipe = DSC_CALC_RECIPE_FP32;
    CHECK(dsc_model_calc(&c, &o, &r) == DSC_OK, "%s: %s", v[i].what, dsc_last_error());
    dsc_model_options mo;
    dsc_model_options_default(&mo);
    dsc_model *m = NULL;
    if (dsc_model_create(ctx, &c, &mo, &m) != DSC_OK) {
      CHECK(0, "%s: create: %s", v[i].what, dsc_last_error());
      continue;
    }
    size_t wb = 0;
    CHECK(dsc_model_weight_bytes(m, &wb) == DSC_OK, "weight bytes");
    CHECK(r.params_total == dsc_model_num_parameters(m), "%s: params %lld vs model %lld", v[i].what,
          (long long)r.params_total, (long long)dsc_model_num_parameters(m));
    CHECK(r.n_tensors == dsc_model_num_tensors(m), "%s: tensors %lld vs model %lld", v[i].what,
          (long long)r.n_tensors, (long long)dsc_model_num_tensors(m));
    CHECK((size_t)r.weight_bytes == wb, "%s: fp32 weight bytes %lld vs model %zu", v[i].what,
          (long long)r.weight_bytes, wb);
    /* the sum over the model's tensors, counted by hand */
    int64_t sum = 0;
    for (int64_t k = 0; k < dsc_model_num_tensors(m); ++k) {
      DLTensor t;
      const char *name = NULL;
      if (dsc_model_tensor(m, k, &name, &t) != DSC_OK) break;
      int64_t e = 1;
      for (int d = 0; d < t.ndim; ++d) e *= t.shape[d];
      sum += e;
    }
    CHECK(sum == r.params_total, "%s: sum of tensors %lld", v[i].what, (long long)sum);
    CHECK(r.params_head == (strcmp(v[i].tied, "true") ? 96 * 64 : 0), "%s: head", v[i].what);
    CHECK((r.params_mtp == 0) == (v[i].mtp == 0), "%s: MTP params", v[i].what);
    dsc_model_destroy(m);
  }
}

static void test_bad_arguments(void) {
  dsc_model_config c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  dsc_model_config_default(&c);
  dsc_calc_options o;
  dsc_calc_result r;
  CHECK(dsc_model_calc(&c, NULL, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("out: expected"), "out NULL");
  memset(&r, 0, sizeof r);
  r.size = 3;
  CHECK(dsc_model_calc(&c, NULL, &r) == DSC_ERR_INVALID_ARGUMENT && err_has("out: expected a dsc_calc_result"),
        "out size");
  r.size = sizeof r;
  CHECK(dsc_model_calc(NULL, NULL, &r) == DSC_ERR_INVALID_ARGUMENT && err_has("cfg"), "cfg NULL");
  dsc_model_config bad = c;
  bad.hidden_size = 0;
  CHECK(dsc_model_calc(&bad, NULL, &r) == DSC_ERR_INVALID_ARGUMENT && err_has("hidden_size"), "bad config");
  dsc_calc_options_default(&o);
  o.size = 8;
  CHECK(dsc_model_calc(&c, &o, &r) == DSC_ERR_INVALID_ARGUMENT && err_has("opt: expected size"), "opt size");
#define BAD(field, value, text)                                                                      \
  do {                                                                                             \
    dsc_calc_options_default(&o);                                                                  \
    o.field = value;                                                                               \
    dsc_calc_result p = fresh_result();                                                            \
    dsc_calc_result q = p;                                                                         \
    CHECK(dsc_model_calc(&c, &o, &p) == DSC_ERR_INVALID_ARGUMENT && err_has(text) &&               \
              memcmp(&p, &q, sizeof p) == 0,                                                       \
          #field " = " #value ": %s", dsc_last_error());                                           \
  } while (0)
  BAD(context, 0, "opt->context: expected >= 1 token, got 0");
  BAD(recipe, 3, "opt->recipe: expected DSC_CALC_RECIPE_FP32 (0), _BF16 (1) or _FP8 (2), got 3");
  BAD(moments_dtype, DSC_DTYPE_INT32, "opt->moments_dtype");
  BAD(tensor_parallel, 3, "opt->tensor_parallel: expected a divisor of num_attention_heads (128), got 3");
  BAD(tensor_parallel, 0, "opt->tensor_parallel");
  BAD(pipeline_parallel, 62, "opt->pipeline_parallel: expected 1..num_hidden_layers (61), got 62");
  BAD(data_parallel, -1, "opt->data_parallel: expected >= 1, got -1");
  BAD(expert_parallel, 2, "opt->expert_parallel: expected a divisor of data_parallel (1) and of "
                          "n_routed_experts (256), got 2");
  BAD(zero1, 2, "opt->zero1: expected 0 or 1, got 2");
  BAD(micro_batch_tokens, 0, "opt->micro_batch_tokens");
  BAD(compare_kv_heads, 3, "opt->compare_kv_heads: expected 0 (MHA) or a divisor of num_attention_heads (128)");
#undef BAD
  dsc_calc_options_default(&o);
  o.tensor_parallel = 1 << 12;
  o.pipeline_parallel = 1;
  o.data_parallel = 1 << 20;
  dsc_model_config wide = c;
  wide.num_attention_heads = 1 << 12; /* the most the config bounds allow */
  CHECK(dsc_model_calc(&wide, &o, &r) == DSC_ERR_INVALID_ARGUMENT && err_has("GPUs"), "too many GPUs: %s",
        dsc_last_error());
}

int main(void) {
  test_v3();
  test_bad_arguments();
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
  test_against_built_models(ctx);
  dsc_context_destroy(ctx);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
