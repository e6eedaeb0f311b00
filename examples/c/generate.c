/*
 * generate.c -- load a checkpoint and generate from token ids, through the C ABI only.
 *
 *   generate <checkpoint_dir> <id> [<id> ...] [--max-new N] [--temperature T] [--top-k K]
 *            [--top-p P] [--seed S] [--eos ID] [--speculative] [--num-draft K]
 *            [--cache float32|bfloat16|fp8] [--cuda] [--fp8]
 *
 * --fp8 loads the model for FP8 inference: every block matrix held only in E4M3 with 128x128
 * block scales (dsc_model_freeze_fp8), as DeepSeek ships V3.
 *
 * The checkpoint is a Hugging Face style directory (config.json + *.safetensors), e.g.
 * one written by deepseek_c (Model.save / `python -m deepseek_c train`). Tokens are
 * printed as they come (the token callback), then the whole output and the statistics.
 *
 * Build against an installed package:
 *   inc=$(python -c "import deepseek_c as d; print(d.get_include())")
 *   lib=$(python -c "import deepseek_c as d, os; print(os.path.dirname(d.get_library()))")
 *   cc -std=c11 generate.c -I"$inc" -L"$lib" -ldeepseek_c -Wl,-rpath,"$lib" -lm -o generate
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deepseek_c.h>

static int usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s <checkpoint_dir> <token id> [<token id> ...] [--max-new N] "
          "[--temperature T] [--top-k K] [--top-p P] [--seed S] [--eos ID] [--speculative] "
          "[--num-draft K] [--cache float32|bfloat16|fp8] [--cuda] [--fp8]\n",
          argv0);
  return 2;
}

/* The token callback: print each token as it is produced. */
static int32_t print_token(void *user, int32_t seq, int32_t token) {
  (void)user;
  (void)seq;
  printf(" %d", (int)token);
  fflush(stdout);
  return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!s[0] || *end || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3) return usage(argv[0]);
  const char *dir = argv[1];
  dsc_generate_options go;
  dsc_generate_options_default(&go);
  int cuda = 0, fp8 = 0;
  int32_t *prompt = (int32_t *)malloc((size_t)argc * sizeof(int32_t));
  int32_t plen = 0;
  if (!prompt) return 1;
  for (int i = 2; i < argc; ++i) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    long v = 0;
    if (!strcmp(a, "--speculative")) {
      go.speculative = 1;
    } else if (!strcmp(a, "--cuda")) {
      cuda = 1;
    } else if (!strcmp(a, "--fp8")) {
      fp8 = 1;
    } else if (!strncmp(a, "--", 2)) {
      if (!val) {
        fprintf(stderr, "%s: expected a value\n", a);
        return usage(argv[0]);
      }
      ++i;
      int ok = 1;
      if (!strcmp(a, "--max-new")) ok = parse_int(val, 0, 1L << 30, &v), go.max_new_tokens = (int32_t)v;
      else if (!strcmp(a, "--top-k")) ok = parse_int(val, 0, 1L << 30, &v), go.top_k = (int32_t)v;
      else if (!strcmp(a, "--num-draft")) ok = parse_int(val, 1, 64, &v), go.num_draft = (int32_t)v;
      else if (!strcmp(a, "--eos")) ok = parse_int(val, -1, 1L << 30, &v), go.eos_token_id = (int32_t)v;
      else if (!strcmp(a, "--seed")) go.seed = strtoull(val, NULL, 10);
      else if (!strcmp(a, "--temperature")) go.temperature = strtof(val, NULL);
      else if (!strcmp(a, "--top-p")) go.top_p = strtof(val, NULL);
      else if (!strcmp(a, "--cache")) {
        if (!strcmp(val, "float32")) go.cache_dtype = DSC_DTYPE_FLOAT32;
        else if (!strcmp(val, "bfloat16")) go.cache_dtype = DSC_DTYPE_BFLOAT16;
        else if (!strcmp(val, "fp8")) go.cache_dtype = DSC_DTYPE_FLOAT8_E4M3FN;
        else ok = 0;
      } else {
        fprintf(stderr, "unknown option %s\n", a);
        return usage(argv[0]);
      }
      if (!ok) {
        fprintf(stderr, "%s: bad value '%s'\n", a, val);
        return usage(argv[0]);
      }
    } else {
      if (!parse_int(a, 0, 0x7fffffffL, &v)) {
        fprintf(stderr, "expected a token id (an int >= 0), got '%s'\n", a);
        return usage(argv[0]);
      }
      prompt[plen++] = (int32_t)v;
    }
  }
  if (plen == 0) return usage(argv[0]);

  dsc_context *ctx = NULL;
  dsc_context_options co;
  memset(&co, 0, sizeof co);
  co.size = sizeof co;
  co.device_type = cuda ? kDLCUDA : kDLCPU;
  if (dsc_context_create(&co, &ctx) != DSC_OK) {
    fprintf(stderr, "context: %s\n", dsc_last_error());
    return 1;
  }
  dsc_model_options mo;
  dsc_model_options_default(&mo);
  mo.fp8 = fp8;
  dsc_model *model = NULL;
  if (dsc_model_load(ctx, dir, &mo, &model) != DSC_OK) {
    fprintf(stderr, "load: %s\n", dsc_last_error());
    dsc_context_destroy(ctx);
    return 1;
  }
  size_t bytes = 0;
  if (fp8 && dsc_model_freeze_fp8(model) != DSC_OK) { /* inference only: E4M3-held weights */
    fprintf(stderr, "freeze: %s\n", dsc_last_error());
    dsc_model_destroy(model);
    dsc_context_destroy(ctx);
    return 1;
  }
  dsc_model_weight_bytes(model, &bytes);
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  dsc_model_get_config(model, &cfg);
  printf("model: %s, %d layers + %d MTP, vocab %d, %.3g M parameters, %.3g MB of weights%s\n", dir,
         (int)cfg.num_hidden_layers, (int)cfg.num_nextn_predict_layers, (int)cfg.vocab_size,
         (double)dsc_model_num_parameters(model) / 1e6, (double)bytes / 1e6,
         fp8 ? " (block matrices in E4M3)" : "");

  const int32_t n = go.max_new_tokens;
  int32_t *out = (int32_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
  int32_t out_len = 0;
  dsc_generate_stats st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  const int32_t *prompts[1] = {prompt};
  printf("tokens:");
  dsc_status s = dsc_model_generate(model, &go, 1, prompts, &plen, out, &out_len, print_token, NULL, &st);
  printf("\n");
  int rc = 0;
  if (s != DSC_OK) {
    fprintf(stderr, "generate: %s\n", dsc_last_error());
    rc = 1;
  } else {
    printf("output (%d):", (int)out_len);
    for (int32_t i = 0; i < out_len; ++i) printf(" %d", (int)out[i]);
    printf("\n");
    printf("stats: %lld new tokens in %.4f s (%.1f tokens/s), %d main forwards", (long long)st.new_tokens,
           st.seconds, st.tokens_per_s, (int)st.main_forwards);
    if (go.speculative)
      printf(", %lld drafted, %lld accepted (%.1f%%)", (long long)st.drafted, (long long)st.accepted,
             st.drafted ? 100.0 * (double)st.accepted / (double)st.drafted : 0.0);
    printf("\n");
  }
  free(out);
  free(prompt);
  dsc_model_destroy(model);
  dsc_context_destroy(ctx);
  return rc;
}
