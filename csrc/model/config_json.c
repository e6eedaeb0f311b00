/*
 * model/config_json.c -- dsc_model_config from a Hugging Face DeepseekV3/V2 config.json.
 *
 * The file is parsed over the caller's values (normally dsc_model_config_default): a
 * key that is absent keeps its value, unknown keys are ignored. Every field of
 * dsc_model_config is read under its HF key. Beyond the plain numbers:
 *  - q_lora_rank, n_routed_experts, n_shared_experts, num_experts_per_tok may be null
 *    (HF's None: no query compression / no MoE / no shared experts) -> 0; n_group and
 *    topk_group null -> 1 (no groups); bos/eos_token_id null -> -1, a list -> its first
 *    element (an empty list -> -1);
 *  - topk_method "noaux_tc" | "greedy" (also DeepSeek-V2's spelling "gready") |
 *    "group_limited_greedy"; scoring_func "sigmoid" | "softmax";
 *  - rope_theta, then rope_scaling (null, or {"type"/"rope_type", factor, ...}), then the
 *    newer rope_parameters ({"rope_type", "rope_theta", ...}); a type other than "yarn"
 *    means no scaling (factor 1); YaRN fields missing from the object take the defaults
 *    of HF's DeepseekV3YarnRotaryEmbedding (those of dsc_rope_params_default);
 *    rope_interleave false selects DSC_ROPE_HALF (the checkpoints' default is interleaved);
 *  - model_type "deepseek_v2" without num_nextn_predict_layers means no MTP (V2 has none).
 * A wrong type, a non-integer or out-of-range integer, or a malformed file is
 * DSC_ERR_FORMAT naming the key; *cfg is only written when the whole file is valid and
 * the result passes dsc_model_config_validate.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "json.h"

#define MAX_CONFIG_BYTES ((long long)64 << 20) /* a config.json is a few KiB */

/* Where the text came from, for messages: fn, and a file name or "" . */
typedef struct {
  const char *fn;
  const char *path;
} src;

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
  return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected %s, got %s", s->path,
                   s->path[0] ? ": " : "", key, what, got);
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

/* bos/eos_token_id: an integer, null (-1) or a list (its first element). */
static dsc_status get_token_id(const src *s, const dsc_json *obj, const char *key, int32_t *out) {
  const dsc_json *v = dsc_json_get(obj, key);
  if (!v) return DSC_OK;
  if (v->type == DSC_JSON_ARRAY) {
    v = v->child;
    if (!v) {
      *out = -1;
      return DSC_OK;
    }
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

/* rope_scaling / rope_parameters. parent names the object in messages. */
static dsc_status get_rope(const src *s, const dsc_json *obj, const char *parent, int is_params,
                           dsc_rope_params *r) {
  const dsc_json *v = dsc_json_get(obj, parent);
  if (!v) return DSC_OK;
  dsc_rope_params d;
  dsc_rope_params_default(&d, r->dim);
  if (v->type == DSC_JSON_NULL) {
    /* no scaling: keep the base, reset the YaRN fields */
    d.theta = r->theta;
    d.layout = r->layout;
    *r = d;
    return DSC_OK;
  }
  if (v->type != DSC_JSON_OBJECT) return bad_value(s, parent, "an object or null", v);
  char key[64];
  d.theta = r->theta;
  d.layout = r->layout;
  if (is_params) {
    snprintf(key, sizeof key, "%s.rope_theta", parent);
    const dsc_json *t = dsc_json_get(v, "rope_theta");
    if (t) DSC_TRY(as_float(s, key, t, &d.theta));
  }
  const dsc_json *type = dsc_json_get(v, "rope_type");
  snprintf(key, sizeof key, "%s.rope_type", parent);
  if (!type) {
    type = dsc_json_get(v, "type");
    snprintf(key, sizeof key, "%s.type", parent);
  }
  if (!type) {
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s: expected a \"rope_type\" (or \"type\") string, got none",
                     s->path, s->path[0] ? ": " : "", parent);
  }
  if (type->type != DSC_JSON_STRING) return bad_value(s, key, "a string", type);
  if (strcmp(type->str, "yarn") != 0) {
    *r = d; /* "default", "linear", ...: not YaRN, so no scaling here */
    return DSC_OK;
  }
  static const char *const FLOATS[] = {"factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"};
  float *const dst[] = {&d.factor, &d.beta_fast, &d.beta_slow, &d.mscale, &d.mscale_all_dim};
  if (!dsc_json_get(v, "factor"))
    return dsc_error(DSC_ERR_FORMAT, s->fn, "%s%s%s.factor: expected a number for YaRN, got none",
                     s->path, s->path[0] ? ": " : "", parent);
  for (int i = 0; i < 5; ++i) {
    snprintf(key, sizeof key, "%s.%s", parent, FLOATS[i]);
    const dsc_json *f = dsc_json_get(v, FLOATS[i]);
    if (f) DSC_TRY(as_float(s, key, f, dst[i]));
  }
  snprintf(key, sizeof key, "%s.original_max_position_embeddings", parent);
  const dsc_json *o = dsc_json_get(v, "original_max_position_embeddings");
  if (o) DSC_TRY(as_int(s, key, o, &d.original_max_position));
  *r = d;
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

static dsc_status parse_config(const src *s, const char *text, size_t len, dsc_model_config *cfg) {
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, s->fn, "cfg: expected a pointer, got NULL");
  DSC_CHECK(cfg->size >= sizeof(dsc_model_config), DSC_ERR_INVALID_ARGUMENT, s->fn,
            "cfg->size: expected sizeof(dsc_model_config) = %zu (fill it with dsc_model_config_default), got %zu",
            sizeof(dsc_model_config), cfg->size);
  dsc_json_doc *doc = NULL;
  DSC_TRY(dsc_json_parse(text, len, s->fn, s->path[0] ? s->path : "json", &doc));
  const dsc_json *root = dsc_json_root(doc);
  dsc_model_config c = *cfg; /* parsed into a copy: *cfg changes only on success */
  dsc_status st = DSC_OK;
  if (root->type != DSC_JSON_OBJECT) {
    st = dsc_error(DSC_ERR_FORMAT, s->fn, "%s%sexpected a JSON object at the top level, got %s",
                   s->path, s->path[0] ? ": " : "", dsc_json_type_name(root->type));
  }
  for (size_t i = 0; st == DSC_OK && i < sizeof INT_FIELDS / sizeof INT_FIELDS[0]; ++i) {
    int32_t *dst = (int32_t *)((char *)&c + INT_FIELDS[i].offset);
    st = get_int(s, root, INT_FIELDS[i].key, INT_FIELDS[i].null_ok, INT_FIELDS[i].null_value, dst);
  }
  if (st == DSC_OK) st = get_float(s, root, "routed_scaling_factor", &c.routed_scaling_factor);
  if (st == DSC_OK) st = get_float(s, root, "rms_norm_eps", &c.rms_norm_eps);
  if (st == DSC_OK) st = get_float(s, root, "initializer_range", &c.initializer_range);
  if (st == DSC_OK) st = get_bool(s, root, "norm_topk_prob", &c.norm_topk_prob);
  if (st == DSC_OK) st = get_bool(s, root, "tie_word_embeddings", &c.tie_word_embeddings);
  if (st == DSC_OK) st = get_token_id(s, root, "bos_token_id", &c.bos_token_id);
  if (st == DSC_OK) st = get_token_id(s, root, "eos_token_id", &c.eos_token_id);
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
    const dsc_json *mt = dsc_json_get(root, "model_type");
    if (mt && mt->type != DSC_JSON_STRING) st = bad_value(s, "model_type", "a string", mt);
    else if (mt && !strcmp(mt->str, "deepseek_v2") && !dsc_json_get(root, "num_nextn_predict_layers"))
      c.num_nextn_predict_layers = 0;
  }
  /* RoPE: the base first, then the scaling objects (the newer spelling last). */
  c.rope.size = sizeof c.rope;
  c.rope.dim = c.qk_rope_head_dim;
  if (st == DSC_OK) st = get_float(s, root, "rope_theta", &c.rope.theta);
  if (st == DSC_OK) {
    int32_t interleave = c.rope.layout != DSC_ROPE_HALF;
    st = get_bool(s, root, "rope_interleave", &interleave);
    c.rope.layout = interleave ? DSC_ROPE_INTERLEAVED : DSC_ROPE_HALF;
  }
  if (st == DSC_OK) st = get_rope(s, root, "rope_scaling", 0, &c.rope);
  if (st == DSC_OK) st = get_rope(s, root, "rope_parameters", 1, &c.rope);
  dsc_json_free(doc);
  if (st != DSC_OK) return st;
  DSC_TRY(dsc_model_config_validate(&c));
  *cfg = c;
  return DSC_OK;
}

dsc_status dsc_model_config_from_json(const char *json, size_t len, dsc_model_config *cfg) {
  static const src s = {"dsc_model_config_from_json", ""};
  DSC_CHECK(json != NULL, DSC_ERR_INVALID_ARGUMENT, s.fn, "json: expected text, got NULL");
  return parse_config(&s, json, len, cfg);
}

dsc_status dsc_model_config_load(const char *path, dsc_model_config *cfg) {
  static const char *const FN = "dsc_model_config_load";
  DSC_CHECK(path != NULL && path[0], DSC_ERR_INVALID_ARGUMENT, FN, "path: expected a file name");
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "cfg: expected a pointer, got NULL");
  FILE *fp = fopen(path, "rb");
  if (!fp) return dsc_error(DSC_ERR_IO, FN, "path: cannot open '%s': %s", path, strerror(errno));
  struct stat sb;
  dsc_status st = DSC_OK;
  char *text = NULL;
  size_t n = 0;
  if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = dsc_error(DSC_ERR_IO, FN, "path: '%s' is not a regular file", path);
  } else if ((long long)sb.st_size > MAX_CONFIG_BYTES) {
    st = dsc_error(DSC_ERR_FORMAT, FN, "path: '%s' has %lld bytes, too many for a config.json", path,
                   (long long)sb.st_size);
  } else {
    n = (size_t)sb.st_size;
    text = (char *)malloc(n ? n : 1);
    if (!text) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory for '%s'", path);
    else if (n && fread(text, 1, n, fp) != n) st = dsc_error(DSC_ERR_IO, FN, "path: short read of '%s'", path);
  }
  fclose(fp);
  if (st == DSC_OK) {
    const src s = {FN, path};
    st = parse_config(&s, text, n, cfg);
  }
  free(text);
  return st;
}
