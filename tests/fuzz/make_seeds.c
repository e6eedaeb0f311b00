/*
 * make_seeds.c -- writes the seed corpora of the fuzz targets (run by run_fuzz.sh):
 *   <dir>/safetensors/  valid files written by dsc_safetensors_save, plus regression inputs
 *                       the reader once took or must refuse (aliased, overlapping and gapped
 *                       offsets, trailing bytes, repeated keys, trailing garbage, NUL and
 *                       surrogate names, leading zeros, deep nesting, huge dims, ...);
 *   <dir>/config/       config.json texts: DeepSeek-V3 and V2-Lite style, and regression
 *                       inputs (deep nesting, overflowing sizes, repeated keys, bad UTF-8).
 * Seeds are generated rather than committed, so that they follow the writer.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "deepseek_c.h"

static const char *g_dir;
static int g_n;

static void put(const char *sub, const char *name, const void *bytes, size_t n) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s/%s", g_dir, sub, name);
  FILE *f = fopen(p, "wb");
  if (!f || fwrite(bytes, 1, n, f) != n) {
    fprintf(stderr, "make_seeds: cannot write %s\n", p);
    exit(1);
  }
  fclose(f);
  ++g_n;
}

/* A safetensors file: length prefix, header (space-padded to 8 when pad), data. */
static void raw(const char *name, const char *header, size_t hlen, size_t dlen, int pad) {
  size_t n = hlen + (pad ? (8 - hlen % 8) % 8 : 0);
  unsigned char *b = (unsigned char *)calloc(8 + n + dlen + 1, 1);
  if (!b) exit(1);
  for (int i = 0; i < 8; ++i) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memcpy(b + 8, header, hlen);
  memset(b + 8 + hlen, ' ', n - hlen);
  for (size_t i = 0; i < dlen; ++i) b[8 + n + i] = (unsigned char)(i * 37 + 11);
  put("safetensors", name, b, 8 + n + dlen);
  free(b);
}

#define RAW(name, h, dlen) raw((name), (h), strlen(h), (dlen), 1)
#define ONE "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"
#define CFG(name, text) put("config", (name), (text), strlen(text))

static void nested(const char *sub, const char *name, const char *pre, const char *post, int depth) {
  size_t n = strlen(pre) + strlen(post) + 2 * (size_t)depth;
  char *b = (char *)malloc(n + 1);
  if (!b) exit(1);
  size_t k = (size_t)sprintf(b, "%s", pre);
  for (int i = 0; i < depth; ++i) b[k++] = '[';
  for (int i = 0; i < depth; ++i) b[k++] = ']';
  k += (size_t)sprintf(b + k, "%s", post);
  if (!strcmp(sub, "safetensors")) raw(name, b, k, 4, 1);
  else put(sub, name, b, k);
  free(b);
}

static void saved(const char *dir) {
  /* one tensor of every dtype, metadata */
  static const dsc_dtype dts[] = {DSC_DTYPE_FLOAT32, DSC_DTYPE_BFLOAT16, DSC_DTYPE_FLOAT16, DSC_DTYPE_FLOAT8_E4M3FN,
                                  DSC_DTYPE_FLOAT8_E5M2, DSC_DTYPE_INT32, DSC_DTYPE_INT64, DSC_DTYPE_UINT8,
                                  DSC_DTYPE_BOOL, DSC_DTYPE_FLOAT64, DSC_DTYPE_INT8};
  enum { ND = sizeof dts / sizeof dts[0] };
  static unsigned char buf[ND][48];
  static int64_t shapes[ND][2];
  DLTensor t[ND];
  const DLTensor *tp[ND];
  char names[ND][32];
  const char *np[ND];
  for (int i = 0; i < ND; ++i) {
    for (int k = 0; k < 48; ++k) buf[i][k] = (unsigned char)(k * 13 + i);
    memset(&t[i], 0, sizeof t[i]);
    t[i].data = buf[i];
    t[i].device.device_type = kDLCPU;
    t[i].dtype = dsc_dtype_to_dlpack(dts[i]);
    shapes[i][0] = 2;
    shapes[i][1] = (int64_t)(8 / dsc_dtype_size(dts[i]));
    t[i].ndim = i % 3 == 2 ? 1 : 2; /* some 1-d */
    t[i].shape = shapes[i];
    tp[i] = &t[i];
    snprintf(names[i], sizeof names[i], i == 3 ? "model.layers.%d.mlp.w\xc3\xa9" : "model.layers.%d.weight", i);
    np[i] = names[i];
  }
  const char *meta[4] = {"format", "pt", "note", "quote \" backslash \\ tab \t"};
  char p[1024];
  snprintf(p, sizeof p, "%s/safetensors/all_dtypes.safetensors", dir);
  if (dsc_safetensors_save(p, ND, np, tp, 2, meta) != DSC_OK) goto fail;
  snprintf(p, sizeof p, "%s/safetensors/metadata_only.safetensors", dir);
  if (dsc_safetensors_save(p, 0, NULL, NULL, 1, meta) != DSC_OK) goto fail;
  snprintf(p, sizeof p, "%s/safetensors/empty.safetensors", dir);
  if (dsc_safetensors_save(p, 0, NULL, NULL, 0, NULL) != DSC_OK) goto fail;
  /* a scalar and an empty tensor */
  int64_t zero_shape[2] = {0, 3};
  t[0].ndim = 0;
  t[1].ndim = 2;
  t[1].shape = zero_shape;
  snprintf(p, sizeof p, "%s/safetensors/scalar_and_empty.safetensors", dir);
  if (dsc_safetensors_save(p, 2, np, tp, 0, NULL) != DSC_OK) goto fail;
  g_n += 4;
  return;
fail:
  fprintf(stderr, "make_seeds: dsc_safetensors_save: %s\n", dsc_last_error());
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  g_dir = argv[1];
  char p[1024];
  snprintf(p, sizeof p, "%s/safetensors", g_dir);
  mkdir(g_dir, 0755);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/config", g_dir);
  mkdir(p, 0755);

  saved(g_dir);
  /* valid, written by hand: unpadded, other whitespace, any order, null metadata */
  raw("unpadded", "{\"a\":" ONE "}", strlen("{\"a\":" ONE "}"), 4, 0);
  raw("ws_padding", "{\"a\":" ONE "}\t\r\n ", strlen("{\"a\":" ONE "}") + 4, 4, 0);
  RAW("order", "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},\"a\":" ONE "}", 8);
  RAW("meta_null", "{\"__metadata__\":null,\"a\":" ONE "}", 4);
  RAW("unknown_key", "{\"a\":{\"zz\":[1,{\"q\":null},\"x\",-1.5e3,true],\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
  RAW("pair", "{\"a\\ud83d\\ude00\\n\":" ONE "}", 4);
  /* regressions: accepted by the old reader, refused by the reference */
  RAW("alias", "{\"a\":" ONE ",\"b\":" ONE "}", 4);
  RAW("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
  RAW("gap", "{\"a\":" ONE ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12);
  RAW("trailing_bytes", "{\"a\":" ONE "}", 5);
  RAW("dup_name", "{\"a\":" ONE ",\"a\":" ONE "}", 4);
  RAW("dup_shape", "{\"a\":{\"shape\":[2],\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,24]}}", 24);
  RAW("dup_meta", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"a\":" ONE "}", 4);
  RAW("garbage", "{\"a\":" ONE "}x", 4);
  raw("nul_padding", "{\"a\":" ONE "}\0\0\0", strlen("{\"a\":" ONE "}") + 3, 4, 0);
  RAW("bad_unknown", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":01}}", 4);
  RAW("leading_zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4);
  RAW("float_dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4);
  RAW("nul_name", "{\"a\\u0000b\":" ONE "}", 4);
  RAW("lone_surrogate", "{\"a\\ud800\":" ONE "}", 4);
  RAW("utf8_surrogate", "{\"a\xed\xa0\x80\":" ONE "}", 4);
  RAW("overlong", "{\"a\xc0\xaf\":" ONE "}", 4);
  RAW("huge_dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,0],\"data_offsets\":[0,0]}}", 0);
  RAW("numel_overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0);
  RAW("u64_overflow", "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4);
  nested("safetensors", "nest_127", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":", "}}", 125);
  nested("safetensors", "nest_200", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":", "}}", 200);
  {
    unsigned char b[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    put("safetensors", "huge_length", b, 16);
  }

  /* config.json */
  CFG("v3.json",
      "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 129280,"
      " \"hidden_size\": 7168, \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048,"
      " \"num_hidden_layers\": 61, \"num_nextn_predict_layers\": 1, \"num_attention_heads\": 128,"
      " \"n_shared_experts\": 1, \"n_routed_experts\": 256, \"routed_scaling_factor\": 2.5, \"kv_lora_rank\": 512,"
      " \"q_lora_rank\": 1536, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"qk_nope_head_dim\": 128,"
      " \"topk_method\": \"noaux_tc\", \"n_group\": 8, \"topk_group\": 4, \"num_experts_per_tok\": 8,"
      " \"moe_layer_freq\": 1, \"first_k_dense_replace\": 3, \"norm_topk_prob\": true, \"scoring_func\": \"sigmoid\","
      " \"max_position_embeddings\": 163840, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,"
      " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0, \"mscale_all_dim\": 1.0,"
      " \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}, \"tie_word_embeddings\": false,"
      " \"bos_token_id\": 0, \"eos_token_id\": 1, \"initializer_range\": 0.02, \"torch_dtype\": \"bfloat16\","
      " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", \"quant_method\": \"fp8\","
      " \"weight_block_size\": [128, 128]}}");
  CFG("v2_lite.json",
      "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 102400, \"hidden_size\": 2048, \"intermediate_size\": 10944,"
      " \"moe_intermediate_size\": 1408, \"num_hidden_layers\": 27, \"num_attention_heads\": 16,"
      " \"n_shared_experts\": 2, \"n_routed_experts\": 64, \"routed_scaling_factor\": 1.0, \"kv_lora_rank\": 512,"
      " \"q_lora_rank\": null, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"qk_nope_head_dim\": 128,"
      " \"topk_method\": \"greedy\", \"n_group\": 1, \"topk_group\": 1, \"num_experts_per_tok\": 6,"
      " \"first_k_dense_replace\": 1, \"norm_topk_prob\": false, \"scoring_func\": \"softmax\","
      " \"rope_scaling\": null, \"bos_token_id\": 100000, \"eos_token_id\": [100001, 100002]}");
  CFG("tiny.json",
      "{\"vocab_size\": 96, \"hidden_size\": 64, \"intermediate_size\": 160, \"moe_intermediate_size\": 32,"
      " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"q_lora_rank\": 32, \"kv_lora_rank\": 32,"
      " \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8, \"v_head_dim\": 16, \"n_routed_experts\": 8,"
      " \"n_group\": 2, \"topk_group\": 1, \"num_experts_per_tok\": 2,"
      " \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000, \"factor\": 4,"
      " \"original_max_position_embeddings\": 64}, \"rope_interleave\": false}");
  CFG("empty.json", "{}");
  CFG("overflow_moe.json", "{\"moe_intermediate_size\":1969458275,\"n_routed_experts\":29775,\"hidden_size\":1048576}");
  CFG("overflow_kv.json", "{\"kv_lora_rank\":2147483647}");
  CFG("overflow_heads.json", "{\"qk_nope_head_dim\":2147483647,\"qk_rope_head_dim\":2147483646}");
  CFG("int_max.json", "{\"vocab_size\":2147483647,\"hidden_size\":2147483647,\"num_hidden_layers\":2147483647}");
  CFG("dup.json", "{\"hidden_size\": 7168, \"hidden_size\": 64}");
  CFG("leading_zero.json", "{\"hidden_size\": 07168}");
  CFG("surrogate.json", "{\"model_type\": \"\\ud800\"}");
  CFG("bad_utf8.json", "{\"model_type\": \"\xc0\xaf\"}");
  CFG("garbage.json", "{} x");
  nested("config", "nest_64.json", "{\"a\": ", "}", 63);
  nested("config", "nest_5000.json", "{\"a\": ", "}", 5000);
  printf("make_seeds: %d seeds in %s\n", g_n, g_dir);
  return 0;
}
