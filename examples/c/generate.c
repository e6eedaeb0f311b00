/*
 * generate.c -- load a checkpoint and generate from a text prompt, through the C ABI only.
 *
 *   generate <checkpoint_dir> <prompt text> [--max-new N] [--temperature T] [--top-k K]
 *            [--top-p P] [--seed S] [--eos ID] [--speculative] [--num-draft K]
 *            [--cache float32|bfloat16|fp8] [--cuda] [--fp8]
 *   generate <checkpoint_dir> --ids <id> [<id> ...] [options]      (token ids instead of text)
 *
 * e.g. after `python -m deepseek_c demo`:   generate demo_out "12+34="   ->   046
 *
 * The text is tokenized with the checkpoint's vocab.txt (written by `python -m deepseek_c
 * demo` / `train`; line i is token i, special tokens as <name>, bytes escaped as \\, \n,
 * \t, \r, \xHH): the longest vocabulary entry at each position, after the model's
 * bos_token_id. The output is decoded the same way (stopping at the end-of-sequence token).
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
          "usage: %s <checkpoint_dir> <prompt text> | --ids <id> [<id> ...] [--max-new N] "
          "[--temperature T] [--top-k K] [--top-p P] [--seed S] [--eos ID] [--speculative] "
          "[--num-draft K] [--cache float32|bfloat16|fp8] [--cuda] [--fp8]\n",
          argv0);
  return 2;
}

/* ---- vocab.txt: token i = line i (bytes after unescaping; special tokens <name>) ---- */

typedef struct {
  int32_t n;
  char **bytes;   /* [n] token bytes (NULL for a special token) */
  size_t *len;    /* [n] */
} vocab;

static void vocab_free(vocab *v) {
  for (int32_t i = 0; i < v->n; ++i) free(v->bytes[i]);
  free(v->bytes);
  free(v->len);
  memset(v, 0, sizeof *v);
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* 1: loaded; 0: no vocab.txt in dir; -1: a malformed file (message printed). */
static int vocab_load(const char *dir, vocab *v) {
  memset(v, 0, sizeof *v);
  char path[4096];
  snprintf(path, sizeof path, "%s/vocab.txt", dir);
  FILE *fp = fopen(path, "rb");
  if (!fp) return 0;
  char line[1024];
  int32_t cap = 0;
  while (fgets(line, sizeof line, fp)) {
    size_t k = strlen(line);
    if (k && line[k - 1] == '\n') line[--k] = '\0';
    if (v->n == cap) {
      cap = cap ? 2 * cap : 256;
      char **nb = (char **)realloc(v->bytes, (size_t)cap * sizeof *nb);
      size_t *nl = nb ? (size_t *)realloc(v->len, (size_t)cap * sizeof *nl) : NULL;
      if (nb) v->bytes = nb;
      if (!nb || !nl) {
        fclose(fp);
        vocab_free(v);
        return -1;
      }
      v->len = nl;
    }
    char *tok = NULL;
    size_t n = 0;
    if (!(k >= 3 && line[0] == '<' && line[k - 1] == '>')) { /* not a special token */
      tok = (char *)malloc(k + 1);
      for (size_t i = 0; tok && i < k; ++i) {
        if (line[i] != '\\') {
          tok[n++] = line[i];
          continue;
        }
        const char e = line[i + 1];
        if (e == '\\' || e == 'n' || e == 't' || e == 'r') {
          tok[n++] = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : '\\';
          i += 1;
        } else if (e == 'x' && hexval(line[i + 2]) >= 0 && hexval(line[i + 3]) >= 0) {
          tok[n++] = (char)(hexval(line[i + 2]) * 16 + hexval(line[i + 3]));
          i += 3;
        } else {
          fprintf(stderr, "%s: line %d: bad escape\n", path, (int)v->n + 1);
          free(tok);
          fclose(fp);
          vocab_free(v);
          return -1;
        }
      }
    }
    v->bytes[v->n] = tok;
    v->len[v->n] = n;
    v->n++;
  }
  fclose(fp);
  return 1;
}

/* Longest-match tokenization of text; -1 (message printed) when a byte is in no token. */
static int32_t vocab_encode(const vocab *v, const char *text, int32_t *out, int32_t cap) {
  int32_t n = 0;
  for (size_t i = 0, len = strlen(text); i < len;) {
    int32_t best = -1;
    size_t best_len = 0;
    for (int32_t t = 0; t < v->n; ++t)
      if (v->bytes[t] && v->len[t] > best_len && v->len[t] <= len - i && !memcmp(v->bytes[t], text + i, v->len[t]))
        best = t, best_len = v->len[t];
    if (best < 0 || n == cap) {
      fprintf(stderr, "prompt: '%c' at offset %zu is in no token of the vocabulary\n", text[i], i);
      return -1;
    }
    out[n++] = best;
    i += best_len;
  }
  return n;
}

static void vocab_print(const vocab *v, int32_t token) {
  if (token >= 0 && token < v->n && v->bytes[token]) fwrite(v->bytes[token], 1, v->len[token], stdout);
}

/* The token callback: print each token as it is produced (its text with a vocabulary). */
static int32_t print_token(void *user, int32_t seq, int32_t token) {
  const vocab *v = (const vocab *)user;
  (void)seq;
  if (v && v->n) vocab_print(v, token);
  else printf(" %d", (int)token);
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
  int cuda = 0, fp8 = 0, ids = 0;
  const char *text = NULL;
  int32_t *prompt = (int32_t *)malloc((size_t)(argc + 4096) * sizeof(int32_t));
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
    } else if (!strcmp(a, "--ids")) {
      ids = 1;
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
    } else if (ids) {
      if (!parse_int(a, 0, 0x7fffffffL, &v)) {
        fprintf(stderr, "--ids: expected a token id (an int >= 0), got '%s'\n", a);
        return usage(argv[0]);
      }
      prompt[plen++] = (int32_t)v;
    } else if (!text) {
      text = a;
    } else {
      fprintf(stderr, "one prompt text expected (quote it), got a second '%s'\n", a);
      return usage(argv[0]);
    }
  }
  if (ids ? plen == 0 : text == NULL) return usage(argv[0]);
  vocab voc;
  const int have_vocab = vocab_load(dir, &voc);
  if (have_vocab < 0) return 1;
  if (!ids && !have_vocab) {
    fprintf(stderr, "%s has no vocab.txt to tokenize the prompt with: pass token ids with --ids\n", dir);
    return 2;
  }

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
    if (have_vocab) vocab_free(&voc);
    dsc_context_destroy(ctx);
    return 1;
  }
  size_t bytes = 0;
  if (fp8 && dsc_model_freeze_fp8(model) != DSC_OK) { /* inference only: E4M3-held weights */
    fprintf(stderr, "freeze: %s\n", dsc_last_error());
    if (have_vocab) vocab_free(&voc);
    dsc_model_destroy(model);
    dsc_context_destroy(ctx);
    return 1;
  }
  dsc_model_weight_bytes(model, &bytes);
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  dsc_model_get_config(model, &cfg);
  if (!ids) { /* <bos> + the text's tokens */
    if (cfg.bos_token_id >= 0) prompt[plen++] = cfg.bos_token_id;
    const int32_t k = vocab_encode(&voc, text, prompt + plen, (int32_t)(argc + 4096) - plen);
    if (k < 0) {
      vocab_free(&voc);
      free(prompt);
      dsc_model_destroy(model);
      dsc_context_destroy(ctx);
      return 2;
    }
    plen += k;
    if (go.eos_token_id < 0) go.eos_token_id = cfg.eos_token_id; /* stop at the end of the answer */
  }
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
  printf("prompt (%d tokens):", (int)plen);
  for (int32_t i = 0; i < plen; ++i) printf(" %d", (int)prompt[i]);
  printf("\n%s", have_vocab ? "text: " : "tokens:");
  if (have_vocab && text) printf("%s", text);
  dsc_status s = dsc_model_generate(model, &go, 1, prompts, &plen, out, &out_len, print_token,
                                    have_vocab ? &voc : NULL, &st);
  printf("\n");
  int rc = 0;
  if (s != DSC_OK) {
    fprintf(stderr, "generate: %s\n", dsc_last_error());
    rc = 1;
  } else {
    printf("output (%d tokens):", (int)out_len);
    for (int32_t i = 0; i < out_len; ++i) printf(" %d", (int)out[i]);
    printf("\n");
    if (have_vocab) {
      printf("answer: ");
      for (int32_t i = 0; i < out_len && out[i] != cfg.eos_token_id; ++i) vocab_print(&voc, out[i]);
      printf("\n");
    }
    printf("stats: %lld new tokens in %.4f s (%.1f tokens/s), %d main forwards", (long long)st.new_tokens,
           st.seconds, st.tokens_per_s, (int)st.main_forwards);
    if (go.speculative)
      printf(", %lld drafted, %lld accepted (%.1f%%)", (long long)st.drafted, (long long)st.accepted,
             st.drafted ? 100.0 * (double)st.accepted / (double)st.drafted : 0.0);
    printf("\n");
  }
  free(out);
  free(prompt);
  if (have_vocab) vocab_free(&voc);
  dsc_model_destroy(model);
  dsc_context_destroy(ctx);
  return rc;
}
