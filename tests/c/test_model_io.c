/*
 * test_model_io.c -- C-level tests of config.json parsing and model checkpoints
 * (dsc_model_config_from_json / _load, dsc_model_save / dsc_model_load) through the
 * public ABI only: V3 and V2-Lite style configs, malformed JSON, a save -> load round
 * trip that must be bitwise, and damaged checkpoints (truncated, missing, unexpected,
 * misshapen, non-finite tensors) that must fail with a message naming the culprit.
 * bf16 and FP8 (E4M3 + weight_scale_inv) shards are converted on load.
 * When a CUDA device is visible, a CUDA model is also saved and loaded.
 * Also built with ASan/UBSan by tests/c/run_sanitized.sh (CI).
 * Closing line: "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "deepseek_c.h"
#include "check.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ------------------------------------------------------------------ files */

static void path2(char *out, size_t n, const char *dir, const char *name) {
  snprintf(out, n, "%s/%s", dir, name);
}

static int file_exists(const char *dir, const char *name) {
  char p[512];
  struct stat sb;
  path2(p, sizeof p, dir, name);
  return stat(p, &sb) == 0;
}

static void write_text(const char *dir, const char *name, const char *text, size_t n) {
  char p[512];
  path2(p, sizeof p, dir, name);
  FILE *f = fopen(p, "wb");
  if (!f) return;
  fwrite(text, 1, n, f);
  fclose(f);
}

/* The whole file (malloc'ed, NUL-terminated), its size in *n; NULL if unreadable. */
static char *read_all(const char *dir, const char *name, size_t *n) {
  char p[512];
  path2(p, sizeof p, dir, name);
  FILE *f = fopen(p, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = (char *)malloc((size_t)sz + 1);
  if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
    free(b);
    b = NULL;
  }
  fclose(f);
  if (b) b[sz] = '\0';
  *n = (size_t)sz;
  return b;
}

static int same_file(const char *d1, const char *d2, const char *name) {
  size_t n1 = 0, n2 = 0;
  char *a = read_all(d1, name, &n1), *b = read_all(d2, name, &n2);
  int same = a && b && n1 == n2 && memcmp(a, b, n1) == 0;
  free(a);
  free(b);
  return same;
}

static void copy_file(const char *d1, const char *d2, const char *name) {
  size_t n = 0;
  char *a = read_all(d1, name, &n);
  if (a) write_text(d2, name, a, n);
  free(a);
}

/* Remove a flat directory and its files. */
static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[512];
    path2(p, sizeof p, dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* ------------------------------------------------------------------ a shard to edit */

#define MAXT 512
typedef struct {
  int n;
  const char *names[MAXT];
  DLTensor t[MAXT];
  int64_t shapes[MAXT][4];
  void *owned[2 * MAXT]; /* data and names the test added, freed by shard_free */
  int n_owned;
  dsc_safetensors *f;
} shard;

static int shard_read(shard *s, const char *dir, const char *name) {
  memset(s, 0, sizeof *s);
  char p[512];
  path2(p, sizeof p, dir, name);
  if (dsc_safetensors_open(p, &s->f) != DSC_OK) return 0;
  s->n = (int)dsc_safetensors_count(s->f);
  if (s->n > MAXT) return 0;
  for (int i = 0; i < s->n; ++i) {
    dsc_dtype dt;
    int32_t ndim;
    const int64_t *shape;
    const void *data;
    dsc_safetensors_tensor(s->f, i, &s->names[i], &dt, &ndim, &shape, &data, NULL);
    DLTensor *t = &s->t[i];
    memset(t, 0, sizeof *t);
    t->data = (void *)data;
    t->device.device_type = kDLCPU;
    t->dtype = dsc_dtype_to_dlpack(dt);
    t->ndim = ndim;
    for (int d = 0; d < ndim; ++d) s->shapes[i][d] = shape[d];
    t->shape = s->shapes[i];
  }
  return 1;
}

static int shard_find(const shard *s, const char *name) {
  for (int i = 0; i < s->n; ++i)
    if (!strcmp(s->names[i], name)) return i;
  return -1;
}

static int64_t numel(const DLTensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; ++d) n *= t->shape[d];
  return n;
}

/* Move entry src to slot dst (shape storage included). */
static void shard_move(shard *s, int dst, int src) {
  s->names[dst] = s->names[src];
  s->t[dst] = s->t[src];
  memcpy(s->shapes[dst], s->shapes[src], sizeof s->shapes[dst]);
  s->t[dst].shape = s->shapes[dst];
}

static void shard_drop(shard *s, int i) {
  for (int j = i; j + 1 < s->n; ++j) shard_move(s, j, j + 1);
  s->n--;
}

/* Add (or replace) a tensor whose data the shard takes ownership of. */
static void shard_put(shard *s, const char *name, dsc_dtype dt, int ndim, const int64_t *shape, void *data) {
  int i = shard_find(s, name);
  if (i < 0) {
    i = s->n++;
    char *copy = strdup(name);
    s->owned[s->n_owned++] = copy;
    s->names[i] = copy;
  }
  DLTensor *t = &s->t[i];
  memset(t, 0, sizeof *t);
  t->data = data;
  t->device.device_type = kDLCPU;
  t->dtype = dsc_dtype_to_dlpack(dt);
  t->ndim = ndim;
  for (int d = 0; d < ndim; ++d) s->shapes[i][d] = shape[d];
  t->shape = s->shapes[i];
  s->owned[s->n_owned++] = data;
}

static int shard_write(shard *s, const char *dir, const char *name) {
  char p[512];
  path2(p, sizeof p, dir, name);
  const DLTensor *tp[MAXT];
  for (int i = 0; i < s->n; ++i) tp[i] = &s->t[i];
  /* the metadata of the file read, or {"format": "pt"} */
  const char *meta[16] = {"format", "pt"};
  int64_t n_meta = s->f ? dsc_safetensors_metadata_count(s->f) : 1;
  if (n_meta > 8) n_meta = 8;
  for (int64_t i = 0; s->f && i < n_meta; ++i) dsc_safetensors_metadata(s->f, i, &meta[2 * i], &meta[2 * i + 1]);
  dsc_status st = dsc_safetensors_save(p, s->n, s->names, tp, n_meta, meta);
  if (st != DSC_OK) printf("shard_write: %s\n", dsc_last_error());
  return st == DSC_OK;
}

static void shard_free(shard *s) {
  for (int i = 0; i < s->n_owned; ++i) free(s->owned[i]);
  dsc_safetensors_close(s->f);
  memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ configs */

static const char V3_CONFIG[] =
    "{\n"
    "  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"auto_map\": {\"AutoConfig\": \"configuration_deepseek.DeepseekV3Config\",\n"
    "               \"AutoModel\": \"modeling_deepseek.DeepseekV3Model\"},\n"
    "  \"aux_loss_alpha\": 0.001,\n"
    "  \"bos_token_id\": 0,\n"
    "  \"eos_token_id\": 1,\n"
    "  \"ep_size\": 1,\n"
    "  \"first_k_dense_replace\": 3,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 7168,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 18432,\n"
    "  \"kv_lora_rank\": 512,\n"
    "  \"max_position_embeddings\": 163840,\n"
    "  \"model_type\": \"deepseek_v3\",\n"
    "  \"moe_intermediate_size\": 2048,\n"
    "  \"moe_layer_freq\": 1,\n"
    "  \"n_group\": 8,\n"
    "  \"n_routed_experts\": 256,\n"
    "  \"n_shared_experts\": 1,\n"
    "  \"norm_topk_prob\": true,\n"
    "  \"num_attention_heads\": 128,\n"
    "  \"num_experts_per_tok\": 8,\n"
    "  \"num_hidden_layers\": 61,\n"
    "  \"num_key_value_heads\": 128,\n"
    "  \"num_nextn_predict_layers\": 1,\n"
    "  \"q_lora_rank\": 1536,\n"
    "  \"qk_nope_head_dim\": 128,\n"
    "  \"qk_rope_head_dim\": 64,\n"
    "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\",\n"
    "                          \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]},\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0,\n"
    "                   \"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096,\n"
    "                   \"type\": \"yarn\"},\n"
    "  \"rope_theta\": 10000,\n"
    "  \"routed_scaling_factor\": 2.5,\n"
    "  \"scoring_func\": \"sigmoid\",\n"
    "  \"seq_aux\": true,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"topk_group\": 4,\n"
    "  \"topk_method\": \"noaux_tc\",\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.46.3\",\n"
    "  \"use_cache\": true,\n"
    "  \"v_head_dim\": 128,\n"
    "  \"vocab_size\": 129280\n"
    "}\n";

/* V2-Lite with the newer rope_parameters spelling, an eos list, unknown nested keys and
 * escapes (a surrogate pair among them) in values that are ignored. */
static const char V2_LITE_CONFIG[] =
    "{\"architectures\":[\"DeepseekV2ForCausalLM\"],\"model_type\":\"deepseek_v2\","
    "\"vocab_size\":102400,\"hidden_size\":2048,\"intermediate_size\":10944,"
    "\"moe_intermediate_size\":1408,\"num_hidden_layers\":27,\"num_attention_heads\":16,"
    "\"num_key_value_heads\":16,\"n_shared_experts\":2,\"n_routed_experts\":64,"
    "\"num_experts_per_tok\":6,\"first_k_dense_replace\":1,\"moe_layer_freq\":1,"
    "\"n_group\":1,\"topk_group\":1,\"topk_method\":\"greedy\",\"scoring_func\":\"softmax\","
    "\"norm_topk_prob\":false,\"routed_scaling_factor\":1.0,\"aux_loss_alpha\":0.001,"
    "\"seq_aux\":true,\"q_lora_rank\":null,\"kv_lora_rank\":512,\"qk_nope_head_dim\":128,"
    "\"qk_rope_head_dim\":64,\"v_head_dim\":128,\"max_position_embeddings\":163840,"
    "\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":10000.0,\"factor\":40,"
    "\"original_max_position_embeddings\":4096,\"beta_fast\":32,\"beta_slow\":1,"
    "\"mscale\":0.707,\"mscale_all_dim\":0.707},"
    "\"rms_norm_eps\":1e-6,\"bos_token_id\":100000,\"eos_token_id\":[100001, 100002],"
    "\"tie_word_embeddings\":false,\"initializer_range\":0.02,"
    "\"note\":\"caf\\u00e9 \\ud83d\\ude00 \\\"quoted\\\" \\\\ \\/ \\b\\f\\n\\r\\t\","
    "\"nested\":{\"a\":[null,true,false,-0.5e-3,{\"b\":[[],{}]}],\"\\u0000\":\"x\"}}";

/* Every field but size, compared one by one (no padding bytes compared). */
static int cfg_equal(const dsc_model_config *a, const dsc_model_config *b) {
  const dsc_rope_params *r = &a->rope, *s = &b->rope;
  return a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
         a->intermediate_size == b->intermediate_size &&
         a->moe_intermediate_size == b->moe_intermediate_size &&
         a->num_hidden_layers == b->num_hidden_layers &&
         a->num_nextn_predict_layers == b->num_nextn_predict_layers &&
         a->num_attention_heads == b->num_attention_heads && a->q_lora_rank == b->q_lora_rank &&
         a->kv_lora_rank == b->kv_lora_rank && a->qk_nope_head_dim == b->qk_nope_head_dim &&
         a->qk_rope_head_dim == b->qk_rope_head_dim && a->v_head_dim == b->v_head_dim &&
         a->n_routed_experts == b->n_routed_experts && a->n_shared_experts == b->n_shared_experts &&
         a->num_experts_per_tok == b->num_experts_per_tok && a->n_group == b->n_group &&
         a->topk_group == b->topk_group && a->topk_method == b->topk_method &&
         a->scoring_func == b->scoring_func && a->norm_topk_prob == b->norm_topk_prob &&
         a->routed_scaling_factor == b->routed_scaling_factor &&
         a->first_k_dense_replace == b->first_k_dense_replace &&
         a->moe_layer_freq == b->moe_layer_freq && a->rms_norm_eps == b->rms_norm_eps &&
         r->layout == s->layout && r->dim == s->dim && r->theta == s->theta &&
         r->factor == s->factor && r->original_max_position == s->original_max_position &&
         r->beta_fast == s->beta_fast && r->beta_slow == s->beta_slow && r->mscale == s->mscale &&
         r->mscale_all_dim == s->mscale_all_dim &&
         a->max_position_embeddings == b->max_position_embeddings &&
         a->bos_token_id == b->bos_token_id && a->eos_token_id == b->eos_token_id &&
         a->tie_word_embeddings == b->tie_word_embeddings &&
         a->initializer_range == b->initializer_range;
}

static void test_config_v3(void) {
  dsc_model_config c;
  dsc_model_config_default(&c);
  /* scramble the defaults so that every value must come from the file */
  c.hidden_size = 64;
  c.q_lora_rank = 0;
  c.num_hidden_layers = 2;
  c.topk_method = DSC_MOE_TOPK_GREEDY;
  c.scoring_func = DSC_MOE_SCORING_SOFTMAX;
  c.norm_topk_prob = 0;
  c.rope.factor = 1.0f;
  c.rope.mscale_all_dim = 0.0f;
  c.rope.theta = 500.0f;
  c.eos_token_id = -1;
  c.initializer_range = 0.5f;
  dsc_status s = dsc_model_config_from_json(V3_CONFIG, strlen(V3_CONFIG), &c);
  CHECK(s == DSC_OK, "V3 config: %s", dsc_last_error());
  dsc_model_config d;
  dsc_model_config_default(&d);
  CHECK(cfg_equal(&c, &d), "V3 config.json gives the V3 defaults");
  CHECK(c.hidden_size == 7168 && c.q_lora_rank == 1536 && c.num_hidden_layers == 61, "V3 sizes");
  CHECK(c.topk_method == DSC_MOE_TOPK_NOAUX_TC && c.scoring_func == DSC_MOE_SCORING_SIGMOID &&
            c.norm_topk_prob == 1,
        "V3 routing");
  CHECK(c.rope.factor == 40.0f && c.rope.original_max_position == 4096 && c.rope.mscale == 1.0f &&
            c.rope.mscale_all_dim == 1.0f && c.rope.beta_fast == 32.0f && c.rope.beta_slow == 1.0f &&
            c.rope.theta == 10000.0f && c.rope.dim == 64 && c.rope.layout == DSC_ROPE_INTERLEAVED,
        "V3 YaRN: factor %g mscale_all_dim %g theta %g", (double)c.rope.factor,
        (double)c.rope.mscale_all_dim, (double)c.rope.theta);
  CHECK(c.eos_token_id == 1 && c.bos_token_id == 0 && c.initializer_range == 0.02f &&
            c.rms_norm_eps == 1e-6f,
        "V3 tokens, init, eps");

  /* rope_scaling null / not yarn -> no scaling; the rest unchanged */
  static const char NO_SCALING[] = "{\"rope_scaling\": null, \"rope_theta\": 50000.0}";
  s = dsc_model_config_from_json(NO_SCALING, strlen(NO_SCALING), &c);
  CHECK(s == DSC_OK && c.rope.factor == 1.0f && c.rope.theta == 50000.0f && c.hidden_size == 7168,
        "rope_scaling null: %s factor %g", dsc_last_error(), (double)c.rope.factor);
  /* a scaling deepseek_c does not implement is refused, never silently dropped */
  static const char LINEAR[] = "{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}";
  dsc_model_config_default(&c);
  s = dsc_model_config_from_json(LINEAR, strlen(LINEAR), &c);
  CHECK(s == DSC_ERR_FORMAT && err_has("rope_scaling.type") && err_has("linear"),
        "rope_scaling linear -> refused: %s", dsc_last_error());
  /* eos null, bos list, q_lora_rank null on top of V3 */
  static const char IDS[] = "{\"eos_token_id\": null, \"bos_token_id\": [7, 8], \"q_lora_rank\": null}";
  dsc_model_config_default(&c);
  s = dsc_model_config_from_json(IDS, strlen(IDS), &c);
  CHECK(s == DSC_OK && c.eos_token_id == -1 && c.bos_token_id == 7 && c.q_lora_rank == 0,
        "token ids: %s eos %d bos %d", dsc_last_error(), c.eos_token_id, c.bos_token_id);
  /* newer transformers: rope_interleave false means rotate-half pairs */
  static const char HALF[] = "{\"rope_interleave\": false}";
  dsc_model_config_default(&c);
  s = dsc_model_config_from_json(HALF, strlen(HALF), &c);
  CHECK(s == DSC_OK && c.rope.layout == DSC_ROPE_HALF, "rope_interleave false -> DSC_ROPE_HALF");
  /* an empty object keeps everything */
  dsc_model_config_default(&c);
  s = dsc_model_config_from_json(" {} ", 4, &c);
  CHECK(s == DSC_OK && cfg_equal(&c, &d), "{} keeps the defaults");
}

static void test_config_v2_lite(void) {
  dsc_model_config c;
  dsc_model_config_default(&c);
  dsc_status s = dsc_model_config_from_json(V2_LITE_CONFIG, strlen(V2_LITE_CONFIG), &c);
  CHECK(s == DSC_OK, "V2-Lite config: %s", dsc_last_error());
  CHECK(c.q_lora_rank == 0 && c.topk_method == DSC_MOE_TOPK_GREEDY &&
            c.scoring_func == DSC_MOE_SCORING_SOFTMAX && c.norm_topk_prob == 0,
        "V2-Lite: q_lora null, greedy, softmax, no norm");
  CHECK(c.n_routed_experts == 64 && c.n_shared_experts == 2 && c.num_experts_per_tok == 6 &&
            c.n_group == 1 && c.topk_group == 1 && c.first_k_dense_replace == 1 &&
            c.routed_scaling_factor == 1.0f,
        "V2-Lite MoE");
  CHECK(c.num_nextn_predict_layers == 0, "deepseek_v2 has no MTP: %d", c.num_nextn_predict_layers);
  CHECK(c.rope.factor == 40.0f && c.rope.mscale == 0.707f && c.rope.mscale_all_dim == 0.707f &&
            c.rope.theta == 10000.0f && c.rope.dim == 64 && c.rope.original_max_position == 4096,
        "V2-Lite rope_parameters: factor %g mscale %g", (double)c.rope.factor, (double)c.rope.mscale);
  CHECK(c.bos_token_id == 100000 && c.eos_token_id == 100001 && c.vocab_size == 102400,
        "V2-Lite tokens: eos %d", c.eos_token_id);

  /* the file on disk */
  char dir[] = "/tmp/dsc_cfg_XXXXXX";
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp");
    return;
  }
  write_text(dir, "config.json", V2_LITE_CONFIG, strlen(V2_LITE_CONFIG));
  char p[512];
  path2(p, sizeof p, dir, "config.json");
  dsc_model_config e;
  dsc_model_config_default(&e);
  s = dsc_model_config_load(p, &e);
  CHECK(s == DSC_OK && cfg_equal(&c, &e), "config_load = from_json: %s", dsc_last_error());
  path2(p, sizeof p, dir, "nope.json");
  s = dsc_model_config_load(p, &e);
  CHECK(s == DSC_ERR_IO && err_has("nope.json"), "missing file -> IO naming it: %s", dsc_last_error());
  /* a malformed file names the file and the key */
  static const char BAD[] = "{\"hidden_size\": \"2048\"}";
  write_text(dir, "config.json", BAD, strlen(BAD));
  path2(p, sizeof p, dir, "config.json");
  s = dsc_model_config_load(p, &e);
  CHECK(s == DSC_ERR_FORMAT && err_has("config.json") && err_has("hidden_size"),
        "bad file -> FORMAT naming file and key: %s", dsc_last_error());
  rm_dir(dir);
}

/* Parse `json` over the defaults: expect DSC_ERR_FORMAT with `part` in the message and
 * the config unchanged. */
static void expect_bad(const char *json, size_t len, const char *part) {
  dsc_model_config c, before;
  dsc_model_config_default(&c);
  before = c;
  dsc_status s = dsc_model_config_from_json(json, len, &c);
  CHECK(s == DSC_ERR_FORMAT && err_has(part) && err_has("dsc_model_config_from_json") &&
            cfg_equal(&c, &before),
        "bad config (%.40s...) -> FORMAT with '%s': got %s '%s'", json, part, dsc_status_string(s),
        dsc_last_error());
}

#define BAD(json, part) expect_bad((json), strlen(json), (part))

static void test_config_malformed(void) {
  size_t n = strlen(V3_CONFIG);
  expect_bad(V3_CONFIG, n / 2, "invalid JSON");           /* truncated */
  expect_bad(V3_CONFIG, n - 3, "invalid JSON");           /* last brace cut */
  char *garbage = (char *)malloc(n + 8);
  memcpy(garbage, V3_CONFIG, n);
  memcpy(garbage + n, " x", 3);
  expect_bad(garbage, n + 2, "unexpected data after");   /* trailing garbage */
  garbage[n] = '\0';
  expect_bad(garbage, n + 1, "unexpected data after");   /* an embedded NUL counts */
  free(garbage);
  BAD("{\"hidden_size\": \"7168\"}", "hidden_size");
  BAD("{\"n_group\": \"8\"}", "n_group");
  BAD("{\"hidden_size\": 64.5}", "hidden_size");
  BAD("{\"vocab_size\": 3e10}", "vocab_size");
  BAD("{\"vocab_size\": -2147483649}", "vocab_size");
  BAD("{\"num_hidden_layers\": null}", "num_hidden_layers");
  BAD("{\"norm_topk_prob\": 1}", "norm_topk_prob");
  BAD("{\"topk_method\": \"top2\"}", "topk_method");
  BAD("{\"scoring_func\": 0}", "scoring_func");
  BAD("{\"rms_norm_eps\": \"1e-6\"}", "rms_norm_eps");
  BAD("{\"routed_scaling_factor\": 1e300}", "routed_scaling_factor");
  BAD("{\"eos_token_id\": \"</s>\"}", "eos_token_id");
  BAD("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": \"40\"}}", "rope_scaling.factor");
  BAD("{\"rope_scaling\": {\"type\": \"yarn\"}}", "rope_scaling.factor");
  BAD("{\"rope_scaling\": 40}", "rope_scaling");
  BAD("{\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4, "
             "\"original_max_position_embeddings\": 4.5}}", "rope_parameters.original_max_position_embeddings");
  BAD("{\"model_type\": 3}", "model_type");
  /* grammar */
  BAD("", "unexpected end");
  BAD("[1, 2]", "top level");
  BAD("{\"a\": 1,}", "invalid JSON");
  BAD("{\"a\": 01}", "invalid JSON");
  BAD("{\"a\": 1.}", "invalid JSON");
  BAD("{\"a\": .5}", "invalid JSON");
  BAD("{\"a\": tru}", "invalid JSON");
  BAD("{\"a\": NaN}", "invalid JSON");
  BAD("{\"a\": 1e999}", "range");
  BAD("{\"a\": \"\\ud800\"}", "surrogate");
  BAD("{\"a\": \"\\udc00\"}", "surrogate");
  BAD("{\"a\": \"\\x\"}", "escape");
  BAD("{\"a\": \"tab\there\"}", "control character");
  BAD("{\"a\": \"\xc3\x28\"}", "UTF-8");
  BAD("{\"a\": \"\xed\xa0\x80\"}", "UTF-8"); /* an encoded surrogate */
  BAD("{\"a\" 1}", "':'");
  BAD("{a: 1}", "member name");
  BAD("{\"a\": 1 // comment\n}", "invalid JSON");
  char deep[300];
  int k = 0;
  k += snprintf(deep, sizeof deep, "{\"a\": ");
  for (int i = 0; i < 100; ++i) deep[k++] = '[';
  for (int i = 0; i < 100; ++i) deep[k++] = ']';
  deep[k++] = '}';
  expect_bad(deep, (size_t)k, "nesting");
  /* line and column of the problem */
  BAD("{\n  \"a\": 1,\n  \"b\": ?\n}", "line 3, column 8");

  dsc_model_config c;
  dsc_model_config_default(&c);
  CHECK(dsc_model_config_from_json(NULL, 3, &c) == DSC_ERR_INVALID_ARGUMENT, "NULL json");
  CHECK(dsc_model_config_from_json("{}", 2, NULL) == DSC_ERR_INVALID_ARGUMENT, "NULL cfg");
  /* well-formed but inconsistent: dsc_model_config_validate decides */
  static const char INCONSISTENT[] = "{\"n_group\": 3}";
  CHECK(dsc_model_config_from_json(INCONSISTENT, strlen(INCONSISTENT), &c) != DSC_OK && err_has("n_group"),
        "validate runs: %s", dsc_last_error());
}

/* ------------------------------------------------------------------ checkpoints */

static void tiny_config(dsc_model_config *c) {
  dsc_model_config_default(c);
  c->vocab_size = 96;
  c->hidden_size = 64;
  c->intermediate_size = 160; /* 2 FP8 row blocks */
  c->moe_intermediate_size = 32;
  c->num_hidden_layers = 2;
  c->num_nextn_predict_layers = 1;
  c->num_attention_heads = 2;
  c->q_lora_rank = 32;
  c->kv_lora_rank = 32;
  c->qk_nope_head_dim = 16;
  c->qk_rope_head_dim = 8;
  c->v_head_dim = 16;
  c->n_routed_experts = 8;
  c->n_shared_experts = 1;
  c->num_experts_per_tok = 2;
  c->n_group = 2;
  c->topk_group = 1;
  c->first_k_dense_replace = 1;
  c->max_position_embeddings = 256;
  c->rope.dim = 8;
  c->rope.factor = 4.0f;
  c->rope.original_max_position = 64;
  c->rope.mscale = 0.707f;
  c->rope.mscale_all_dim = 0.707f;
  c->initializer_range = 0.006f;
  c->rms_norm_eps = 1e-5f;
  c->eos_token_id = 2;
}

static DLDevice model_device(const dsc_model *m) {
  DLDevice d = {kDLCPU, 0};
  dsc_context_get_device(dsc_model_context(m), &d);
  return d;
}

/* Tensor `i` of the model (or its moment `which` >= 0) copied to a new host buffer. */
static float *host_copy(dsc_model *m, int64_t i, int which, int64_t *n, const char **name) {
  DLTensor v;
  dsc_status s = dsc_model_tensor(m, i, name, &v);
  if (s == DSC_OK && which >= 0) s = dsc_model_optimizer_state(m, i, which, &v);
  if (s != DSC_OK) return NULL;
  *n = numel(&v);
  float *h = (float *)malloc((size_t)(*n ? *n : 1) * sizeof(float));
  DLDevice cpu = {kDLCPU, 0};
  if (h) dsc_memcpy(dsc_model_context(m), h, cpu, (char *)v.data + v.byte_offset, v.device, (size_t)*n * 4);
  return h;
}

/* Fill tensor i (or moment `which`) with values from f (host data sent to the device). */
static void fill(dsc_model *m, int64_t i, int which, float (*f)(void)) {
  DLTensor v;
  if (dsc_model_tensor(m, i, NULL, &v) != DSC_OK) return;
  if (which >= 0 && dsc_model_optimizer_state(m, i, which, &v) != DSC_OK) return;
  int64_t n = numel(&v);
  float *h = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
  for (int64_t k = 0; k < n; ++k) h[k] = f();
  DLDevice cpu = {kDLCPU, 0};
  dsc_memcpy(dsc_model_context(m), (char *)v.data + v.byte_offset, v.device, h, cpu, (size_t)n * 4);
  free(h);
}

static float frand_pos(void) { return fabsf(frand()) * 1e-3f; }

static int is_bias(const char *name) {
  size_t n = strlen(name), k = strlen("e_score_correction_bias");
  return n >= k && !strcmp(name + n - k, "e_score_correction_bias");
}

/* Random weights, moments and step: every value must survive the round trip. */
static void randomize(dsc_model *m, int64_t step) {
  for (int64_t i = 0; i < dsc_model_num_tensors(m); ++i) {
    const char *name;
    dsc_model_tensor(m, i, &name, NULL);
    fill(m, i, -1, frand);
    if (!is_bias(name)) {
      fill(m, i, 0, frand);
      fill(m, i, 1, frand_pos);
    }
  }
  dsc_model_set_step(m, step);
}

/* Tensors (and, with moments, the optimizer state and step) bitwise equal. */
static int models_equal(dsc_model *a, dsc_model *b, int moments, char *why, size_t cap) {
  if (dsc_model_num_tensors(a) != dsc_model_num_tensors(b)) {
    snprintf(why, cap, "tensor counts %lld vs %lld", (long long)dsc_model_num_tensors(a),
             (long long)dsc_model_num_tensors(b));
    return 0;
  }
  if (moments && dsc_model_step(a) != dsc_model_step(b)) {
    snprintf(why, cap, "steps %lld vs %lld", (long long)dsc_model_step(a), (long long)dsc_model_step(b));
    return 0;
  }
  for (int64_t i = 0; i < dsc_model_num_tensors(a); ++i) {
    for (int which = -1; which < (moments ? 2 : 0); ++which) {
      const char *na, *nb;
      int64_t n1 = 0, n2 = 0;
      dsc_model_tensor(a, i, &na, NULL);
      if (which >= 0 && is_bias(na)) continue;
      float *x = host_copy(a, i, which, &n1, &na), *y = host_copy(b, i, which, &n2, &nb);
      int same = x && y && n1 == n2 && !strcmp(na, nb) && memcmp(x, y, (size_t)n1 * 4) == 0;
      if (!same) snprintf(why, cap, "%s (which %d) differs", na, which);
      free(x);
      free(y);
      if (!same) return 0;
    }
  }
  return 1;
}

/* Load dir and expect failure with status st and `part` in the message. */
static void expect_load_fails(dsc_context *ctx, const char *dir, dsc_status st, const char *part,
                              const char *what) {
  dsc_model *m = (dsc_model *)(uintptr_t)1; /* must come back NULL */
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.strict = 1; /* spare tensors are errors too */
  dsc_status s = dsc_model_load(ctx, dir, &o, &m);
  CHECK(s == st && m == NULL && err_has(part), "%s: expected %s with '%s', got %s '%s'", what,
        dsc_status_string(st), part, dsc_status_string(s), dsc_last_error());
  if (s == DSC_OK) dsc_model_destroy(m);
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_checkpoints(dsc_context *ctx) {
  dsc_model_config cfg;
  tiny_config(&cfg);
  dsc_model_options opt;
  dsc_model_options_default(&opt);
  opt.seed = 3;
  dsc_model *m = NULL;
  dsc_status s = dsc_model_create(ctx, &cfg, &opt, &m);
  CHECK(s == DSC_OK, "create tiny model: %s", dsc_last_error());
  if (s != DSC_OK) return;
  randomize(m, 7);

  char root[] = "/tmp/dsc_ckpt_XXXXXX";
  if (!mkdtemp(root)) {
    CHECK(0, "mkdtemp");
    dsc_model_destroy(m);
    return;
  }
  char dir[256], dir2[256], bad[256];
  snprintf(dir, sizeof dir, "%s/a/b", root); /* parents are created */
  snprintf(dir2, sizeof dir2, "%s/c", root);
  snprintf(bad, sizeof bad, "%s/bad", root);
  char a_dir[256];
  snprintf(a_dir, sizeof a_dir, "%s/a", root);

  /* ---- round trip, optimizer included */
  s = dsc_model_save(m, dir, 1);
  CHECK(s == DSC_OK, "save: %s", dsc_last_error());
  CHECK(file_exists(dir, "config.json") && file_exists(dir, "model.safetensors") &&
            file_exists(dir, "optimizer.safetensors"),
        "three files written");
  size_t cn = 0;
  char *cj = read_all(dir, "config.json", &cn);
  CHECK(cj && strstr(cj, "\"model_type\": \"deepseek_v3\"") && strstr(cj, "\"q_lora_rank\": 32") &&
            strstr(cj, "\"type\": \"yarn\"") && strstr(cj, "\"torch_dtype\": \"float32\"") &&
            strstr(cj, "\"topk_method\": \"noaux_tc\"") && strstr(cj, "\"scoring_func\": \"sigmoid\"") &&
            strstr(cj, "\"architectures\": [\n    \"DeepseekV3ForCausalLM\"\n  ]"),
        "config.json content:\n%s", cj ? cj : "(none)");
  /* keys sorted */
  int sorted = cj != NULL, n_keys = 0;
  char prev[64] = "", key[64];
  for (const char *p = cj; sorted && p && (p = strstr(p, "\n  \"")) != NULL; p += 4) {
    size_t kn = strcspn(p + 4, "\"");
    snprintf(key, sizeof key, "%.*s", (int)kn, p + 4);
    sorted = strcmp(prev, key) < 0;
    memcpy(prev, key, sizeof prev);
    ++n_keys;
  }
  sorted = sorted && n_keys > 30;
  CHECK(sorted, "config.json keys sorted");
  free(cj);
  dsc_model_config back;
  char cpath[512];
  path2(cpath, sizeof cpath, dir, "config.json");
  dsc_model_config_default(&back);
  s = dsc_model_config_load(cpath, &back);
  dsc_model_config mine;
  dsc_model_config_default(&mine);
  dsc_model_get_config(m, &mine);
  CHECK(s == DSC_OK && cfg_equal(&back, &mine), "config.json reads back equal: %s", dsc_last_error());

  dsc_model *m2 = NULL;
  s = dsc_model_load(ctx, dir, NULL, &m2);
  CHECK(s == DSC_OK && m2 != NULL, "load: %s", dsc_last_error());
  char why[256] = "";
  if (m2) {
    CHECK(models_equal(m, m2, 1, why, sizeof why), "round trip bitwise: %s", why);
    CHECK(dsc_model_step(m2) == 7, "step restored: %lld", (long long)dsc_model_step(m2));
    /* saving the loaded model reproduces the same bytes */
    s = dsc_model_save(m2, dir2, 1);
    CHECK(s == DSC_OK && same_file(dir, dir2, "model.safetensors") &&
              same_file(dir, dir2, "optimizer.safetensors") && same_file(dir, dir2, "config.json"),
          "save(load(save)) is byte-identical: %s", dsc_last_error());
    dsc_model_destroy(m2);
    m2 = NULL;
  }

  /* ---- without the optimizer: a stale optimizer.safetensors is removed */
  s = dsc_model_save(m, dir2, 0);
  CHECK(s == DSC_OK && !file_exists(dir2, "optimizer.safetensors"), "optimizer=0 removes the stale file");
  s = dsc_model_load(ctx, dir2, NULL, &m2);
  CHECK(s == DSC_OK && m2 && dsc_model_step(m2) == 0, "load without optimizer: %s", dsc_last_error());
  if (m2) {
    CHECK(models_equal(m, m2, 0, why, sizeof why), "weights without optimizer: %s", why);
    dsc_model_destroy(m2);
    m2 = NULL;
  }

  /* ---- damaged checkpoints; each case starts from a fresh copy of dir in bad/ */
  const char *files[] = {"config.json", "model.safetensors", "optimizer.safetensors"};
#define FRESH()                                            \
  do {                                                     \
    rm_dir(bad);                                           \
    mkdir(bad, 0777);                                      \
    for (int f_ = 0; f_ < 3; ++f_) copy_file(dir, bad, files[f_]); \
  } while (0)
  char mpath[512];
  path2(mpath, sizeof mpath, bad, "model.safetensors");
  size_t msize = 0;
  free(read_all(dir, "model.safetensors", &msize));

  FRESH();
  CHECK(truncate(mpath, (off_t)(msize / 2)) == 0, "truncate");
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.safetensors", "truncated data");
  FRESH();
  CHECK(truncate(mpath, 100) == 0, "truncate");
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.safetensors", "truncated header");
  FRESH();
  CHECK(truncate(mpath, 3) == 0, "truncate");
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.safetensors", "3-byte file");
  FRESH();
  {
    size_t n = 0;
    char *t = read_all(bad, "config.json", &n);
    write_text(bad, "config.json", t, n / 2);
    free(t);
  }
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "config.json", "truncated config.json");
  FRESH();
  {
    char p[512];
    path2(p, sizeof p, bad, "config.json");
    unlink(p);
  }
  expect_load_fails(ctx, bad, DSC_ERR_IO, "config.json", "no config.json");
  expect_load_fails(ctx, "/nonexistent/dsc/ckpt", DSC_ERR_IO, "/nonexistent/dsc/ckpt", "no directory");

  shard sh;
  const char *victim = "model.layers.1.mlp.experts.3.up_proj.weight";
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int i = shard_find(&sh, victim);
    CHECK(i >= 0, "%s in the checkpoint", victim);
    if (i >= 0) shard_drop(&sh, i);
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, victim, "missing tensor");

  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t shp[2] = {4, 4};
    shard_put(&sh, "model.layers.0.mlp.bogus.weight", DSC_DTYPE_FLOAT32, 2, shp, calloc(16, 4));
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.layers.0.mlp.bogus.weight", "unexpected tensor");

  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t shp[1] = {63};
    shard_put(&sh, "model.norm.weight", DSC_DTYPE_FLOAT32, 1, shp, calloc(63, 4));
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.norm.weight", "wrong shape");

  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t shp[1] = {64};
    float *x = (float *)calloc(64, 4);
    x[17] = NAN;
    shard_put(&sh, "model.layers.0.input_layernorm.weight", DSC_DTYPE_FLOAT32, 1, shp, x);
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.layers.0.input_layernorm.weight", "NaN weight");

  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t shp[1] = {64};
    shard_put(&sh, "model.layers.0.input_layernorm.weight", DSC_DTYPE_INT32, 1, shp, calloc(64, 4));
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "int32", "int32 weight");

  /* the tensor split over two shards, and one in both */
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    shard one;
    memset(&one, 0, sizeof one);
    int i = shard_find(&sh, "lm_head.weight");
    one.n = 1;
    one.names[0] = sh.names[i];
    one.t[0] = sh.t[i];
    memcpy(one.shapes[0], sh.shapes[i], sizeof one.shapes[0]);
    one.t[0].shape = one.shapes[0];
    shard_write(&one, bad, "model-00002-of-00002.safetensors");
    shard_drop(&sh, i);
    shard_write(&sh, bad, "model.safetensors");
    dsc_model *m3 = NULL;
    s = dsc_model_load(ctx, bad, NULL, &m3);
    CHECK(s == DSC_OK && m3, "two shards: %s", dsc_last_error());
    if (m3) {
      CHECK(models_equal(m, m3, 1, why, sizeof why), "two shards equal: %s", why);
      dsc_model_destroy(m3);
    }
  }
  shard_free(&sh);
  copy_file(dir, bad, "model.safetensors");
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "lm_head.weight", "tensor in two shards");

  /* MTP copies of the embedding and head are accepted and ignored; deeper ones are not */
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t shp[2] = {96, 64};
    shard_put(&sh, "model.layers.2.embed_tokens.weight", DSC_DTYPE_FLOAT32, 2, shp, calloc(96 * 64, 4));
    shard_put(&sh, "model.layers.2.shared_head.head.weight", DSC_DTYPE_FLOAT32, 2, shp, calloc(96 * 64, 4));
    shard_write(&sh, bad, "model.safetensors");
    dsc_model *m3 = NULL;
    s = dsc_model_load(ctx, bad, NULL, &m3);
    CHECK(s == DSC_OK && m3, "MTP duplicates accepted: %s", dsc_last_error());
    if (m3) {
      CHECK(models_equal(m, m3, 1, why, sizeof why), "MTP duplicates ignored: %s", why);
      dsc_model_destroy(m3);
    }
    shard_put(&sh, "model.layers.3.embed_tokens.weight", DSC_DTYPE_FLOAT32, 2, shp, calloc(96 * 64, 4));
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "model.layers.3.embed_tokens.weight", "layer 3 is no MTP layer");

  /* ---- bfloat16 shards: widened exactly */
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    for (int i = 0; i < sh.n; ++i) {
      int64_t n = numel(&sh.t[i]);
      uint16_t *h = (uint16_t *)malloc((size_t)n * 2);
      const float *x = (const float *)sh.t[i].data;
      for (int64_t k = 0; k < n; ++k) {
        float v;
        memcpy(&v, x + k, 4);
        h[k] = f32_to_bf16(v);
      }
      int64_t shp[4];
      memcpy(shp, sh.shapes[i], sizeof shp);
      shard_put(&sh, sh.names[i], DSC_DTYPE_BFLOAT16, sh.t[i].ndim, shp, h);
    }
    shard_write(&sh, bad, "model.safetensors");
    dsc_model *m3 = NULL;
    s = dsc_model_load(ctx, bad, NULL, &m3);
    CHECK(s == DSC_OK && m3, "bf16 checkpoint: %s", dsc_last_error());
    int ok = m3 != NULL;
    for (int64_t i = 0; ok && i < dsc_model_num_tensors(m3); ++i) {
      int64_t n = 0, n0 = 0;
      const char *name;
      float *got = host_copy(m3, i, -1, &n, &name);
      float *orig = host_copy(m, i, -1, &n0, &name);
      for (int64_t k = 0; ok && k < n; ++k) {
        float want = bf16_to_f32(f32_to_bf16(orig[k]));
        ok = memcmp(&want, &got[k], 4) == 0;
        if (!ok) printf("bf16 mismatch in %s[%lld]\n", name, (long long)k);
      }
      free(got);
      free(orig);
    }
    CHECK(ok, "bf16 values widened exactly");
    if (m3) dsc_model_destroy(m3);
  }
  shard_free(&sh);

  /* ---- FP8 E4M3 + weight_scale_inv (160 x 64: two row blocks) */
  const char *wname = "model.layers.0.mlp.gate_proj.weight";
  const char *sname = "model.layers.0.mlp.gate_proj.weight_scale_inv";
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int i = shard_find(&sh, wname);
    int64_t shp[2] = {160, 64}, sshp[2] = {2, 1};
    uint8_t *q = (uint8_t *)malloc(160 * 64);
    float *sc = (float *)malloc(2 * 4), *deq = (float *)malloc(160 * 64 * 4);
    DLTensor x, tq, ts, td;
    memset(&x, 0, sizeof x);
    x.data = sh.t[i].data;
    x.device.device_type = kDLCPU;
    x.dtype = dsc_dtype_to_dlpack(DSC_DTYPE_FLOAT32);
    x.ndim = 2;
    x.shape = shp;
    tq = x;
    tq.data = q;
    tq.dtype = dsc_dtype_to_dlpack(DSC_DTYPE_FLOAT8_E4M3FN);
    ts = x;
    ts.data = sc;
    ts.shape = sshp;
    td = x;
    td.data = deq;
    dsc_fp8_quant_params qp;
    dsc_fp8_quant_params_default(&qp);
    qp.block_rows = 128;
    qp.block_cols = 128;
    s = dsc_fp8_quantize(ctx, &qp, &x, &tq, &ts);
    CHECK(s == DSC_OK, "fp8 quantize: %s", dsc_last_error());
    s = dsc_fp8_dequantize(ctx, 128, 128, &tq, &ts, &td);
    CHECK(s == DSC_OK, "fp8 dequantize: %s", dsc_last_error());
    float *sc2 = (float *)malloc(2 * 4);
    memcpy(sc2, sc, 8);
    shard_put(&sh, wname, DSC_DTYPE_FLOAT8_E4M3FN, 2, shp, q);
    shard_put(&sh, sname, DSC_DTYPE_FLOAT32, 2, sshp, sc);
    shard_write(&sh, bad, "model.safetensors");
    dsc_model *m3 = NULL;
    s = dsc_model_load(ctx, bad, NULL, &m3);
    CHECK(s == DSC_OK && m3, "fp8 checkpoint: %s", dsc_last_error());
    if (m3) {
      int64_t idx = -1, n = 0;
      const char *nm;
      dsc_model_find_tensor(m3, wname, &idx);
      float *got = host_copy(m3, idx, -1, &n, &nm);
      CHECK(got && n == 160 * 64 && memcmp(got, deq, (size_t)n * 4) == 0,
            "fp8 weight = dsc_fp8_dequantize(q, scale_inv)");
      free(got);
      dsc_model_destroy(m3);
    }
    free(deq);
    /* a wrong scale shape, then no scale at all */
    int64_t bshp[2] = {1, 1};
    shard_put(&sh, sname, DSC_DTYPE_FLOAT32, 2, bshp, sc2);
    shard_write(&sh, bad, "model.safetensors");
    expect_load_fails(ctx, bad, DSC_ERR_FORMAT, sname, "fp8 scale shape");
    shard_drop(&sh, shard_find(&sh, sname));
    shard_write(&sh, bad, "model.safetensors");
    expect_load_fails(ctx, bad, DSC_ERR_FORMAT, sname, "fp8 without scales");
  }
  shard_free(&sh);
  /* block scales of a float32 weight */
  FRESH();
  if (shard_read(&sh, bad, "model.safetensors")) {
    int64_t sshp[2] = {2, 1};
    float *sc = (float *)malloc(8);
    sc[0] = sc[1] = 1.0f;
    shard_put(&sh, sname, DSC_DTYPE_FLOAT32, 2, sshp, sc);
    shard_write(&sh, bad, "model.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, sname, "orphan weight_scale_inv");

  /* ---- optimizer file damage */
  FRESH();
  if (shard_read(&sh, bad, "optimizer.safetensors")) {
    char nm[160];
    snprintf(nm, sizeof nm, "exp_avg_sq.%s", victim);
    int i = shard_find(&sh, nm);
    CHECK(i >= 0 && shard_find(&sh, "step") >= 0, "optimizer file has %s and step", nm);
    CHECK(shard_find(&sh, "exp_avg.model.layers.1.mlp.gate.e_score_correction_bias") < 0,
          "no moments for the correction bias");
    if (i >= 0) shard_drop(&sh, i);
    shard_write(&sh, bad, "optimizer.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "exp_avg_sq.model.layers.1.mlp.experts.3.up_proj.weight",
                    "missing moment");
  FRESH();
  if (shard_read(&sh, bad, "optimizer.safetensors")) {
    int64_t shp[1] = {8};
    shard_put(&sh, "exp_avg.model.layers.1.mlp.gate.e_score_correction_bias", DSC_DTYPE_FLOAT32, 1, shp,
              calloc(8, 4));
    shard_write(&sh, bad, "optimizer.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "e_score_correction_bias", "moment of the bias");
  FRESH();
  if (shard_read(&sh, bad, "optimizer.safetensors")) {
    shard_drop(&sh, shard_find(&sh, "step"));
    shard_write(&sh, bad, "optimizer.safetensors");
  }
  shard_free(&sh);
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "step", "no step");
  FRESH();
  {
    char p[512];
    path2(p, sizeof p, bad, "optimizer.safetensors");
    CHECK(truncate(p, 64) == 0, "truncate");
  }
  expect_load_fails(ctx, bad, DSC_ERR_FORMAT, "optimizer.safetensors", "truncated optimizer file");
#undef FRESH

  /* ---- bad arguments */
  dsc_model *m3 = NULL;
  CHECK(dsc_model_load(NULL, dir, NULL, &m3) == DSC_ERR_INVALID_ARGUMENT && m3 == NULL, "load NULL ctx");
  CHECK(dsc_model_load(ctx, NULL, NULL, &m3) == DSC_ERR_INVALID_ARGUMENT, "load NULL dir");
  CHECK(dsc_model_load(ctx, dir, NULL, NULL) == DSC_ERR_INVALID_ARGUMENT, "load NULL out");
  CHECK(dsc_model_save(NULL, dir, 0) == DSC_ERR_INVALID_ARGUMENT, "save NULL model");
  CHECK(dsc_model_save(m, NULL, 0) == DSC_ERR_INVALID_ARGUMENT, "save NULL dir");
  {
    char p[512];
    path2(p, sizeof p, root, "plainfile");
    write_text(root, "plainfile", "x", 1);
    s = dsc_model_save(m, p, 0);
    CHECK(s == DSC_ERR_IO, "save into a file path -> IO: %s", dsc_last_error());
    unlink(p);
  }

  /* ---- CUDA: a CUDA model saves the same bytes and loads back bitwise */
  int32_t ndev = 0;
  if (dsc_cuda_device_count(&ndev) == DSC_OK && ndev > 0) {
    dsc_context *gctx = NULL;
    dsc_context_options o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.device_type = kDLCUDA;
    s = dsc_context_create(&o, &gctx);
    CHECK(s == DSC_OK, "cuda context: %s", dsc_last_error());
    dsc_model *g = NULL;
    if (s == DSC_OK) s = dsc_model_load(gctx, dir, NULL, &g);
    CHECK(s == DSC_OK && g && model_device(g).device_type == kDLCUDA, "load on CUDA: %s", dsc_last_error());
    if (g) {
      CHECK(models_equal(m, g, 1, why, sizeof why), "CUDA load bitwise: %s", why);
      rm_dir(dir2);
      s = dsc_model_save(g, dir2, 1);
      CHECK(s == DSC_OK && same_file(dir, dir2, "model.safetensors") &&
                same_file(dir, dir2, "optimizer.safetensors"),
            "CUDA save byte-identical: %s", dsc_last_error());
      dsc_model_destroy(g);
    }
    if (gctx) dsc_context_destroy(gctx);
    printf("CUDA checkpoint tests ran on %d device(s)\n", (int)ndev);
  } else {
    printf("CUDA checkpoint tests skipped (no CUDA device)\n");
  }

  dsc_model_destroy(m);
  rm_dir(bad);
  rm_dir(dir2);
  rm_dir(dir);
  rm_dir(a_dir);
  rm_dir(root);
}

/* ------------------------------------------------------------------ strict safetensors and JSON */

/* A safetensors file from a header (padded with spaces to 8 bytes when pad) and data. */
static void st_write_raw(const char *path, const char *header, size_t hlen, const void *data, size_t dlen,
                         int pad) {
  FILE *f = fopen(path, "wb");
  if (!f) return;
  size_t n = hlen + (pad ? (8 - hlen % 8) % 8 : 0);
  unsigned char len8[8];
  for (int i = 0; i < 8; ++i) len8[i] = (unsigned char)((uint64_t)n >> (8 * i));
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, hlen, f);
  for (size_t i = hlen; i < n; ++i) fputc(' ', f);
  if (dlen) fwrite(data, 1, dlen, f);
  fclose(f);
}

/* Open `header` + dlen zero bytes: expect DSC_OK (part NULL) or DSC_ERR_FORMAT with
 * `part` and the file's name in the message. */
static void st_expect(const char *path, const char *header, size_t hlen, size_t dlen, int pad, const char *part,
                      const char *what) {
  static const unsigned char zeros[64] = {0};
  st_write_raw(path, header, hlen, zeros, dlen, pad);
  dsc_safetensors *f = NULL;
  dsc_status s = dsc_safetensors_open(path, &f);
  if (!part) {
    CHECK(s == DSC_OK && f != NULL, "%s: expected to load, got %s '%s'", what, dsc_status_string(s),
          dsc_last_error());
  } else {
    CHECK(s == DSC_ERR_FORMAT && f == NULL && err_has(part) && err_has("bad.safetensors"),
          "%s: expected FORMAT with '%s', got %s '%s'", what, part, dsc_status_string(s), dsc_last_error());
  }
  dsc_safetensors_close(f);
}

#define ST_OK(h, dlen, what) st_expect(p, (h), strlen(h), (dlen), 1, NULL, (what))
#define ST_BAD(h, dlen, part, what) st_expect(p, (h), strlen(h), (dlen), 1, (part), (what))
#define ONE "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_safetensors_strict(void) {
  char dir[] = "/tmp/dsc_st_XXXXXX";
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp");
    return;
  }
  char p[512];
  path2(p, sizeof p, dir, "bad.safetensors");
  ST_OK("{\"a\":" ONE "}", 4, "valid");
  ST_OK("{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},\"a\":" ONE "}", 8, "any order");
  ST_OK("{\"__metadata__\":null,\"a\":" ONE "}", 4, "metadata null");
  /* offsets tile the data block: no alias, overlap, gap, trailing bytes */
  ST_BAD("{\"a\":" ONE ",\"b\":" ONE "}", 4, "overlap the previous tensor \"a\"", "aliased offsets");
  ST_BAD("{\"a\":" ONE ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap", "gap");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "begin at 0", "not from 0");
  ST_BAD("{\"a\":" ONE "}", 5, "belong to no tensor", "trailing bytes");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside", "truncated data");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, "overflows",
         "numel overflow");
  /* keys given twice, anywhere */
  ST_BAD("{\"a\":" ONE ",\"a\":" ONE "}", 4, "\"a\" appears twice", "duplicate tensor");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"shape\":[3],\"data_offsets\":[0,24]}}", 24,
         "\"shape\" appears twice", "duplicate shape (once concatenated to [2, 3])");
  ST_BAD("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"a\":" ONE "}", 4, "\"k\" appears twice", "duplicate metadata key");
  /* strict JSON */
  ST_BAD("{\"a\":" ONE "}x", 4, "unexpected data after", "trailing garbage");
  st_expect(p, "{\"a\":" ONE "}\0\0\0", strlen("{\"a\":" ONE "}") + 3, 4, 0, "unexpected data after", "NUL padding");
  st_expect(p, "{\"a\":" ONE "}\t\r\n ", strlen("{\"a\":" ONE "}") + 4, 4, 0, NULL, "whitespace padding");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":01}}", 4, "leading zeros",
         "malformed unknown value");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":[1,]}}", 4, "expected a value",
         "trailing comma in an unknown value");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zeros", "leading zero dim");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "without sign, fraction", "1.0 dim");
  ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4, "exactly two", "three offsets");
  ST_BAD("{\"a\\ud800\":" ONE "}", 4, "lone high surrogate", "lone surrogate escape");
  ST_BAD("{\"a\xed\xa0\x80\":" ONE "}", 4, "invalid UTF-8", "encoded surrogate");
  ST_BAD("{\"a\xc0\xaf\":" ONE "}", 4, "invalid UTF-8", "overlong");
  ST_BAD("{\"a\xe2\x82\":" ONE "}", 4, "invalid UTF-8", "truncated sequence");
  ST_BAD("[]", 0, "must be a JSON object", "array root");
  /* names are kept whole: a NUL inside is refused, not cut */
  ST_BAD("{\"a\\u0000b\":" ONE "}", 4, "tensor name \"a\\x00b\"", "NUL in a name");
  ST_BAD("{\"__metadata__\":{\"k\":\"v\\u0000\"},\"a\":" ONE "}", 4, "NUL", "NUL in metadata");
  /* deep nesting: an error, not a stack overflow; the reference allows 127 levels */
  {
    const int depth = 100000;
    char *h = (char *)malloc((size_t)2 * depth + 128);
    if (h) {
      int k = sprintf(h, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":");
      for (int i = 0; i < depth; ++i) h[k++] = '[';
      for (int i = 0; i < depth; ++i) h[k++] = ']';
      k += sprintf(h + k, "}}");
      st_expect(p, h, (size_t)k, 4, 1, "nesting deeper than 127", "deep nesting");
      k = sprintf(h, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"z\":");
      for (int i = 0; i < 125; ++i) h[k++] = '[';
      for (int i = 0; i < 125; ++i) h[k++] = ']';
      k += sprintf(h + k, "}}");
      st_expect(p, h, (size_t)k, 4, 1, NULL, "127 levels");
      free(h);
    }
  }
  /* the header-length limit is the reference's 100,000,000 bytes */
  {
    unsigned char b[16] = {0};
    const uint64_t n = 100000001;
    for (int i = 0; i < 8; ++i) b[i] = (unsigned char)(n >> (8 * i));
    FILE *f = fopen(p, "wb");
    if (f) {
      fwrite(b, 1, 16, f);
      fclose(f);
    }
    dsc_safetensors *sf = NULL;
    CHECK(dsc_safetensors_open(p, &sf) == DSC_ERR_FORMAT && err_has("100000000"), "header limit: %s",
          dsc_last_error());
  }

  /* the writer refuses what the reader would refuse */
  float x[2] = {1.0f, 2.0f};
  int64_t shape1[1] = {2};
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = x;
  t.device.device_type = kDLCPU;
  t.dtype = dsc_dtype_to_dlpack(DSC_DTYPE_FLOAT32);
  t.ndim = 1;
  t.shape = shape1;
  const DLTensor *tp[3] = {&t, &t, &t};
  path2(p, sizeof p, dir, "w.safetensors");
  const char *bad_utf8[1] = {"a\xc0\xaf"};
  CHECK(dsc_safetensors_save(p, 1, bad_utf8, tp, 0, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("UTF-8"),
        "save: invalid UTF-8 name: %s", dsc_last_error());
  const char *dup[3] = {"x", "y", "x"};
  CHECK(dsc_safetensors_save(p, 3, dup, tp, 0, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("names[2]") &&
            err_has("appears twice"),
        "save: duplicate name: %s", dsc_last_error());
  const char *names2[2] = {"x", "y"};
  const char *meta_dup[4] = {"k", "1", "k", "2"};
  CHECK(dsc_safetensors_save(p, 2, names2, tp, 2, meta_dup) == DSC_ERR_INVALID_ARGUMENT && err_has("appears twice"),
        "save: duplicate metadata key: %s", dsc_last_error());
  const char *meta_bad[2] = {"k", "\xff"};
  CHECK(dsc_safetensors_save(p, 2, names2, tp, 1, meta_bad) == DSC_ERR_INVALID_ARGUMENT && err_has("meta_kv[1]"),
        "save: invalid UTF-8 metadata: %s", dsc_last_error());
  struct stat sb;
  CHECK(stat(p, &sb) != 0, "nothing written on refusal");
  rm_dir(dir);
}

/* 160k tensors: save, open (duplicate check and name index are n log n) and find. The
 * times are printed, never asserted. */
static void test_safetensors_many(void) {
  char dir[] = "/tmp/dsc_stm_XXXXXX";
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp");
    return;
  }
  enum { N = 160000 };
  char (*names)[16] = (char(*)[16])malloc((size_t)N * 16);
  const char **np = (const char **)malloc(sizeof(char *) * N);
  DLTensor *ts = (DLTensor *)calloc(N, sizeof(DLTensor));
  const DLTensor **tp = (const DLTensor **)malloc(sizeof(DLTensor *) * N);
  unsigned char *vals = (unsigned char *)malloc(N);
  static int64_t one = 1;
  if (!names || !np || !ts || !tp || !vals) {
    CHECK(0, "out of memory");
  } else {
    for (int i = 0; i < N; ++i) {
      snprintf(names[i], 16, "w.%d", (i * 7919) % N); /* not in sorted order */
      np[i] = names[i];
      vals[i] = (unsigned char)(i * 31);
      ts[i].data = &vals[i];
      ts[i].device.device_type = kDLCPU;
      ts[i].dtype = dsc_dtype_to_dlpack(DSC_DTYPE_UINT8);
      ts[i].ndim = 1;
      ts[i].shape = &one;
      tp[i] = &ts[i];
    }
    char p[512];
    path2(p, sizeof p, dir, "many.safetensors");
    double t0 = now_s();
    dsc_status s = dsc_safetensors_save(p, N, np, tp, 0, NULL);
    double t1 = now_s();
    dsc_safetensors *f = NULL;
    if (s == DSC_OK) s = dsc_safetensors_open(p, &f);
    double t2 = now_s();
    CHECK(s == DSC_OK && dsc_safetensors_count(f) == N, "160k tensors: %s", dsc_last_error());
    int found = 0;
    for (int i = 0; f && i < N; i += 997) {
      int64_t idx = -1;
      const void *data = NULL;
      if (dsc_safetensors_find(f, names[i], &idx) == DSC_OK && idx == i &&
          dsc_safetensors_tensor(f, idx, NULL, NULL, NULL, NULL, &data, NULL) == DSC_OK &&
          *(const unsigned char *)data == vals[i])
        ++found;
    }
    CHECK(found == (N + 996) / 997, "find among 160k: %d found", found);
    int64_t idx = 0;
    CHECK(f && dsc_safetensors_find(f, "w.160000", &idx) == DSC_ERR_INVALID_ARGUMENT && idx == -1, "find missing");
    printf("160k-tensor header: save %.3f s, open %.3f s\n", t1 - t0, t2 - t1);
    dsc_safetensors_close(f);
    /* a repeat among 160k names: the writer and the reader (header edited) both say so */
    np[N - 1] = names[3];
    CHECK(dsc_safetensors_save(p, N, np, tp, 0, NULL) == DSC_ERR_INVALID_ARGUMENT && err_has("appears twice"),
          "save: repeat among 160k names: %s", dsc_last_error());
  }
  free(names);
  free((void *)np);
  free(ts);
  free((void *)tp);
  free(vals);
  rm_dir(dir);
}

/* config.json through the same strict JSON reader. */
static void test_json_strict(void) {
  BAD("{\"hidden_size\": 7168, \"hidden_size\": 64}", "\"hidden_size\" appears twice");
  BAD("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"factor\": 4}}", "\"factor\" appears twice");
  BAD("{\"unknown\": {\"x\": 1, \"x\": 1}}", "appears twice");
  BAD("{\n  \"a\": 1,\n  \"b\": ?\n}", "at byte 19 (line 3, column 8)");
  BAD("{\"a\": -01}", "leading zeros");
  BAD("{\"a\": 00}", "leading zeros");
  BAD("{\"a\": \"\xc0\xaf\"}", "invalid UTF-8");
  BAD("{\"a\": \"\xf8\x88\x80\x80\x80\"}", "invalid UTF-8");
  BAD("{\"a\": \"\xe2\x82\"}", "invalid UTF-8");
  BAD("{\"a\": \"\xf4\x90\x80\x80\"}", "invalid UTF-8"); /* above U+10FFFF */
  BAD("{\"a\": \"\\ud800\\u0041\"}", "lone high surrogate");
  BAD("{\"a\": 1} {}", "unexpected data after");
  /* 1e5 levels: an error, not a stack overflow */
  const int depth = 100000;
  char *deep = (char *)malloc((size_t)2 * depth + 16);
  if (deep) {
    int k = sprintf(deep, "{\"a\": ");
    for (int i = 0; i < depth; ++i) deep[k++] = '[';
    for (int i = 0; i < depth; ++i) deep[k++] = ']';
    deep[k++] = '}';
    expect_bad(deep, (size_t)k, "nesting deeper than 64");
    free(deep);
  }
  /* a valid file with unknown keys and 64 levels still parses */
  char ok[256];
  int k = sprintf(ok, "{\"x\": ");
  for (int i = 0; i < 63; ++i) ok[k++] = '[';
  for (int i = 0; i < 63; ++i) ok[k++] = ']';
  k += sprintf(ok + k, ", \"y\": \"\\ud83d\\ude00\"}");
  dsc_model_config c;
  dsc_model_config_default(&c);
  CHECK(dsc_model_config_from_json(ok, (size_t)k, &c) == DSC_OK, "64 levels, surrogate pair: %s", dsc_last_error());
}


/* ------------------------------------------------------------------ Hugging Face layouts */

/* The config semantics of transformers' files and the normalized text the writer gives:
 * a deepseek_v2 file without scoring_func routes with softmax; unknown members survive
 * dsc_model_create_json -> dsc_model_save -> dsc_model_load verbatim. */
static void test_config_hf_semantics(dsc_context *ctx) {
  static const char V2[] = "{\"model_type\": \"deepseek_v2\", \"n_routed_experts\": 8, \"num_experts_per_tok\": 2,"
                           " \"n_group\": null, \"topk_group\": null, \"hidden_size\": 64}";
  dsc_model_config c;
  dsc_model_config_default(&c);
  dsc_status s = dsc_model_config_from_json(V2, strlen(V2), &c);
  CHECK(s == DSC_OK && c.scoring_func == DSC_MOE_SCORING_SOFTMAX && c.topk_method == DSC_MOE_TOPK_GREEDY &&
            c.norm_topk_prob == 0 && c.num_nextn_predict_layers == 0 && c.model_type == DSC_MODEL_TYPE_DEEPSEEK_V2,
        "deepseek_v2 defaults: %s scoring %d topk %d", dsc_last_error(), c.scoring_func, c.topk_method);
  /* normalize: size query, then the text; unknown members kept with their spelling */
  static const char X[] = "{\"hidden_size\": 64, \"my_key\": {\"z\": 1.0, \"a\": [true, null]}, "
                          "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 5e5}}";
  size_t n = 0;
  s = dsc_model_config_normalize_json(X, strlen(X), NULL, 0, &n);
  CHECK(s == DSC_OK && n > 100, "normalize size: %s", dsc_last_error());
  char *buf = (char *)malloc(n + 1);
  size_t n2 = 0;
  s = dsc_model_config_normalize_json(X, strlen(X), buf, n + 1, &n2);
  CHECK(s == DSC_OK && n2 == n && strlen(buf) == n, "normalize text");
  CHECK(strstr(buf, "\"my_key\": {\n    \"a\": [\n      true,\n      null\n    ],\n    \"z\": 1.0\n  }") != NULL,
        "extra member sorted, pretty, 1.0 kept: %s", buf);
  CHECK(strstr(buf, "\"rope_scaling\": null") && strstr(buf, "\"rope_theta\": 500000.0") &&
            !strstr(buf, "rope_parameters"),
        "RoPE written as rope_theta + rope_scaling: %s", buf);
  CHECK(dsc_model_config_normalize_json(X, strlen(X), buf, n, &n2) == DSC_ERR_INVALID_ARGUMENT,
        "a buffer without room for the NUL is refused");
  free(buf);
  /* the extra members travel with the model through a checkpoint */
  dsc_model_config t;
  tiny_config(&t);
  char dir[] = "/tmp/dsc_hf_XXXXXX";
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp");
    return;
  }
  dsc_model *m = NULL;
  static const char J[] = "{\"vocab_size\": 96, \"hidden_size\": 64, \"intermediate_size\": 160, "
      "\"moe_intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"q_lora_rank\": 32, "
      "\"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8, \"v_head_dim\": 16, "
      "\"n_routed_experts\": 8, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1, "
      "\"first_k_dense_replace\": 1, \"max_position_embeddings\": 256, \"transformers_version\": \"5.24.0\"}";
  s = dsc_model_create_json(ctx, J, strlen(J), NULL, &m);
  CHECK(s == DSC_OK, "create_json: %s", dsc_last_error());
  if (s != DSC_OK) return;
  CHECK(dsc_model_save(m, dir, 0) == DSC_OK, "save: %s", dsc_last_error());
  char p[512];
  path2(p, sizeof p, dir, "config.json");
  FILE *fp = fopen(p, "rb");
  char text[8192] = {0};
  size_t got = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
  if (fp) fclose(fp);
  CHECK(got > 0 && strstr(text, "\"transformers_version\": \"5.24.0\"") && strstr(text, "\"torch_dtype\": \"float32\""),
        "saved config keeps the unknown key: %s", text);
  /* drop the MTP module's tensors, as transformers' save_pretrained does */
  path2(p, sizeof p, dir, "model.safetensors");
  dsc_safetensors *f = NULL;
  s = dsc_safetensors_open(p, &f);
  CHECK(s == DSC_OK, "open: %s", dsc_last_error());
  int64_t nt = dsc_safetensors_count(f), k = 0;
  const char **names = (const char **)calloc((size_t)nt, sizeof *names);
  DLTensor *ts = (DLTensor *)calloc((size_t)nt, sizeof *ts);
  const DLTensor **tp = (const DLTensor **)calloc((size_t)nt, sizeof *tp);
  for (int64_t i = 0; i < nt; ++i) {
    const char *name;
    dsc_dtype dt;
    int32_t ndim;
    const int64_t *shape;
    const void *data;
    size_t nb;
    dsc_safetensors_tensor(f, i, &name, &dt, &ndim, &shape, &data, &nb);
    if (!strncmp(name, "model.layers.2.", 15)) continue;
    names[k] = name;
    ts[k].data = (void *)data;
    ts[k].device.device_type = kDLCPU;
    ts[k].ndim = ndim;
    ts[k].shape = (int64_t *)shape;
    ts[k].dtype = dsc_dtype_to_dlpack(dt);
    tp[k] = &ts[k];
    ++k;
  }
  char dir2[600];
  snprintf(dir2, sizeof dir2, "%s/hf", dir);
  mkdir(dir2, 0755);
  write_text(dir2, "config.json", text, strlen(text));
  char p2[700];
  snprintf(p2, sizeof p2, "%s/model.safetensors", dir2);
  s = dsc_safetensors_save(p2, k, names, tp, 0, NULL);
  CHECK(s == DSC_OK, "save without MTP: %s", dsc_last_error());
  dsc_safetensors_close(f);
  free(names);
  free(ts);
  free(tp);
  dsc_model *a = NULL, *b = NULL;
  s = dsc_model_load(ctx, dir2, NULL, &a);
  dsc_model_config ca;
  memset(&ca, 0, sizeof ca);
  ca.size = sizeof ca;
  CHECK(s == DSC_OK && dsc_model_get_config(a, &ca) == DSC_OK && ca.num_nextn_predict_layers == 0 &&
            dsc_model_num_load_warnings(a) == 1 && strstr(dsc_model_load_warning(a, 0), "MTP") &&
            dsc_model_load_warning(a, 1) == NULL,
        "no MTP tensors: MTP off with one warning: %s", s == DSC_OK ? dsc_model_load_warning(a, 0) : dsc_last_error());
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.init_missing_mtp = 1;
  s = dsc_model_load(ctx, dir2, &o, &b);
  CHECK(s == DSC_OK && dsc_model_get_config(b, &ca) == DSC_OK && ca.num_nextn_predict_layers == 1,
        "init_missing_mtp keeps the MTP depth: %s", dsc_last_error());
  o.init_missing_mtp = 2;
  dsc_model *bad = NULL;
  CHECK(dsc_model_load(ctx, dir2, &o, &bad) == DSC_ERR_INVALID_ARGUMENT && err_has("init_missing_mtp"),
        "init_missing_mtp 2 refused");
  dsc_model_destroy(a);
  dsc_model_destroy(b);
  dsc_model_destroy(m);
  rm_dir(dir2);
  rm_dir(dir);
}

/* ------------------------------------------------------------------ atomic saves */

/* rm -r (lstat: links are removed, never followed). */
static void rm_tree(const char *path) {
  struct stat sb;
  if (lstat(path, &sb) != 0) return;
  if (S_ISDIR(sb.st_mode)) {
    chmod(path, 0700);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      char p[768];
      snprintf(p, sizeof p, "%s/%s", path, e->d_name);
      rm_tree(p);
    }
    if (d) closedir(d);
    rmdir(path);
  } else {
    unlink(path);
  }
}

/* Entries of parent named like a generation of checkpoint `base` (".base.tmp-*", ".base.old-*"). */
static int count_generations(const char *parent, const char *base) {
  char tmp[128], old[128];
  snprintf(tmp, sizeof tmp, ".%s.tmp-", base);
  snprintf(old, sizeof old, ".%s.old-", base);
  int n = 0;
  DIR *d = opendir(parent);
  for (struct dirent *e; d && (e = readdir(d)) != NULL;)
    n += !strncmp(e->d_name, tmp, strlen(tmp)) || !strncmp(e->d_name, old, strlen(old));
  if (d) closedir(d);
  return n;
}

static ino_t inode_of(const char *dir, const char *name) {
  char p[512];
  struct stat sb;
  path2(p, sizeof p, dir, name);
  return stat(p, &sb) == 0 ? sb.st_ino : 0;
}

/* dir loads as exactly `want` (weights, step, moments). */
static void expect_loads_as(dsc_context *ctx, const char *dir, dsc_model *want, const char *what) {
  dsc_model *got = NULL;
  dsc_status s = dsc_model_load(ctx, dir, NULL, &got);
  char why[256] = "";
  CHECK(s == DSC_OK && got && models_equal(want, got, 1, why, sizeof why), "%s: %s %s", what,
        s == DSC_OK ? "" : dsc_last_error(), why);
  if (got) dsc_model_destroy(got);
}

/* dsc_model_save replaces the directory as a whole (protocol at the top of model_io.c):
 * over another architecture, files it does not own kept as the same inodes, the
 * two-rename fallback, recovery of a save killed between its renames, and failed
 * writes (file size limit; a read-only directory) leaving the old checkpoint. */
static void test_checkpoint_atomic(dsc_context *ctx) {
  dsc_model_config c1, c2;
  tiny_config(&c1);
  tiny_config(&c2);
  c2.num_hidden_layers = 3; /* another architecture */
  c2.moe_intermediate_size = 48;
  dsc_model_options opt;
  dsc_model_options_default(&opt);
  dsc_model *m1 = NULL, *m2 = NULL;
  dsc_status s = dsc_model_create(ctx, &c1, &opt, &m1);
  if (s == DSC_OK) s = dsc_model_create(ctx, &c2, &opt, &m2);
  CHECK(s == DSC_OK, "create models: %s", dsc_last_error());
  char root[] = "/tmp/dsc_atomic_XXXXXX";
  if (s != DSC_OK || !mkdtemp(root)) {
    dsc_model_destroy(m1);
    dsc_model_destroy(m2);
    return;
  }
  randomize(m1, 5);
  randomize(m2, 9);
  char dir[256], sub[256], p1[320], p2[320];
  snprintf(dir, sizeof dir, "%s/ck", root);
  snprintf(sub, sizeof sub, "%s/ck/plots", root);

  /* ---- a swap over another architecture keeps what the save does not own */
  s = dsc_model_save(m1, dir, 1);
  CHECK(s == DSC_OK, "save m1: %s", dsc_last_error());
  write_text(dir, "vocab.txt", "a\nb\n", 4);
  mkdir(sub, 0755);
  write_text(sub, "loss.png", "png", 3);
  path2(p1, sizeof p1, dir, "link");
  CHECK(symlink("vocab.txt", p1) == 0, "symlink");
  write_text(dir, "model.safetensors.tmp.424242", "x", 1); /* the old writer's temp file */
  const ino_t vocab_ino = inode_of(dir, "vocab.txt");
  s = dsc_model_save(m2, dir, 1);
  CHECK(s == DSC_OK, "save m2 over m1: %s", dsc_last_error());
  expect_loads_as(ctx, dir, m2, "other architecture");
  CHECK(vocab_ino != 0 && inode_of(dir, "vocab.txt") == vocab_ino, "vocab.txt carried as a hard link");
  size_t n = 0;
  char *txt = read_all(sub, "loss.png", &n);
  CHECK(txt && n == 3 && !memcmp(txt, "png", 3), "plots/loss.png carried");
  free(txt);
  char lnk[64] = "";
  ssize_t ln = readlink(p1, lnk, sizeof lnk - 1);
  CHECK(ln == 9 && !memcmp(lnk, "vocab.txt", 9), "symlink carried");
  CHECK(!file_exists(dir, "model.safetensors.tmp.424242"), "the old writer's temp file dropped");
  CHECK(count_generations(root, "ck") == 0, "no generation left");
  path2(p2, sizeof p2, root, ".ck.lock");
  CHECK(access(p2, F_OK) == 0, "the lock file stays beside the checkpoint");

  /* ---- the two-rename fallback */
  setenv("DSC_CHECKPOINT_NO_EXCHANGE", "1", 1);
  s = dsc_model_save(m1, dir, 1);
  unsetenv("DSC_CHECKPOINT_NO_EXCHANGE");
  CHECK(s == DSC_OK, "fallback save: %s", dsc_last_error());
  expect_loads_as(ctx, dir, m1, "fallback save");
  CHECK(count_generations(root, "ck") == 0 && inode_of(dir, "vocab.txt") == vocab_ino, "fallback: clean");

  /* ---- a fallback save killed between its renames: dir missing, both generations beside
   * it; the load puts the old one back and removes the other */
  path2(p1, sizeof p1, root, ".ck.old-77-aaaaaa");
  path2(p2, sizeof p2, root, ".ck.tmp-78-bbbbbb");
  CHECK(rename(dir, p1) == 0 && mkdir(p2, 0755) == 0, "simulate a kill between the renames");
  write_text(p2, "config.json", "{", 1);
  expect_loads_as(ctx, dir, m1, "recovered old generation");
  CHECK(count_generations(root, "ck") == 0 && inode_of(dir, "vocab.txt") == vocab_ino, "recovery: clean");

  /* ---- a write that fails (file size limit, as a full disk): error naming the file and
   * the reason; the old checkpoint intact; nothing left */
  struct rlimit old_lim, lim;
  if (getrlimit(RLIMIT_FSIZE, &old_lim) == 0) {
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old_lim;
    lim.rlim_cur = 64 << 10; /* config.json fits, model.safetensors does not */
    s = setrlimit(RLIMIT_FSIZE, &lim) == 0 ? dsc_model_save(m2, dir, 1) : DSC_ERR_INTERNAL;
    setrlimit(RLIMIT_FSIZE, &old_lim);
    signal(SIGXFSZ, old_handler);
    CHECK(s == DSC_ERR_IO && err_has("dsc_model_save: dir: cannot write model.safetensors of the checkpoint") &&
              err_has("File too large") && err_has("untouched"),
          "size limit: %s %s", dsc_status_string(s), dsc_last_error());
    expect_loads_as(ctx, dir, m1, "old checkpoint after a failed write");
    CHECK(count_generations(root, "ck") == 0, "failed write: no generation left");
  }

  /* ---- a read-only checkpoint directory (root may write anyway: skipped) */
  if (geteuid() != 0) {
    chmod(dir, 0555);
    s = dsc_model_save(m2, dir, 1);
    CHECK(s == DSC_ERR_IO && err_has("is not writable") && err_has("untouched"), "read-only dir: %s %s",
          dsc_status_string(s), dsc_last_error());
    chmod(dir, 0755);
    expect_loads_as(ctx, dir, m1, "old checkpoint after a refused save");
    CHECK(count_generations(root, "ck") == 0, "refused save: no generation left");
  } else {
    printf("skip: read-only directory test (running as root)\n");
  }

  dsc_model_destroy(m1);
  dsc_model_destroy(m2);
  rm_tree(root);
}

int main(void) {
  test_config_v3();
  test_config_v2_lite();
  test_config_malformed();
  test_json_strict();
  test_safetensors_strict();
  test_safetensors_many();
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
  test_checkpoints(ctx);
  test_config_hf_semantics(ctx);
  test_checkpoint_atomic(ctx);
  dsc_context_destroy(ctx);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
