/*
 * model/generate.c -- dsc_model_generate: batched inference with the paged latent cache,
 * greedy / temperature / top-k / top-p sampling, and MTP speculative decoding.
 *
 * Flow of one call (every buffer is allocated once, before the first step):
 *   validate everything -> create the cache (L layers, + 1 for the MTP module) ->
 *   prefill: all prompts as one padded [B, Tp] batch through every block
 *            (dsc_mla_prefill per block), logits of each prompt's last token, sample;
 *   step:    the alive sequences as a ragged [B, 1 + k] batch: the pending token (sampled,
 *            not yet fed) and its k drafts at positions P .. P + k (dsc_mla_decode per
 *            block); verification; cache truncated to the kept prefix.
 * Speculation (MTP module 0, cache layer L), per sequence and step:
 *   catch-up: the MTP block over the positions the main model just kept, P .. P + a, from
 *             the main model's normalized hidden states there and the tokens one ahead
 *             (t_{i+1}); this writes the MTP layer's latents of every kept position (and
 *             overwrites the chained ones below) and its last row drafts token 1 (the
 *             block's FFN half runs on that row only: the others only feed the cache);
 *   chain:    drafts 2 .. k: the same module one position further, its own normalized
 *             output as the hidden state and its last draft as the token (these latents
 *             are provisional: kept positions are rewritten by the next catch-up,
 *             rejected ones truncated).
 * The cache's length is per sequence (shared by the layers): each call below ends exactly
 * at the length the sequence must have afterwards, so no call truncates another's rows.
 * That is the step-by-step host path described above. In one process the steps run on the
 * device instead, plain decoding and speculative decoding alike (the device-resident loops
 * below: fixed [B, 1] / [B, 1 + K] batches, verification and drafting on the device, one
 * host read per chunk of steps, CUDA-graph replay); the passes themselves are inference's
 * (infer.c), the sampling rules dsc_sample_tokens'. The prefill (and the MTP prefill)
 * stays on the host path.
 * Where the host still waits per step: expert-parallel generation (the ranks agree on
 * every step), DSC_DEVICE_DECODE=0, and inside the model a MoE layer's expert-offset
 * read-back on CUDA (which also declines the CUDA graph).
 *
 * Legend: B prompts (batch rows), T tokens per row, N = B*T, D hidden, V vocab, L main
 * layers, K num_draft (0 without speculation), P the position of a sequence's pending token.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "infer.h"
#include "sample_math.h"
#include "spec_step.h"
#include "../ops/sample_internal.h"

static const char *const FN = "dsc_model_generate";
static const DLDevice HOST = {kDLCPU, 0};

#define GEN_MAX_DRAFT 16

void dsc_generate_options_default(dsc_generate_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->max_new_tokens = 16;
  o->temperature = 0.0f;
  o->top_k = 0;
  o->top_p = 1.0f;
  o->seed = 0;
  o->eos_token_id = DSC_GENERATE_EOS_FROM_CONFIG;
  o->speculative = 0;
  o->num_draft = 1;
  o->cache_dtype = DSC_DTYPE_FLOAT32;
  o->block_size = 64;
  o->max_batch = 0;
}

/* ---- the state of one call ------------------------------------------------------------ */

typedef struct {
  dsc_infer in; /* the batch's buffers, cache and passes (infer.c) */
  dsc_generate_options o;
  int32_t eos; /* -1: none */
  int greedy;
  const int32_t *const *prompts;
  const int32_t *plen;
  int32_t *out; /* [B, max_new] host (the caller's) */
  dsc_token_fn on_token;
  void *user;
  int stop_all;
  /* per sequence (host) */
  void *hmem;
  int32_t *ngen, *alive, *nd, *drafts /* [B, K] */, *row /* row in the last batch */,
      *acc /* accepted in the last step */, *mrow /* row in the last MTP batch */,
      *kn /* drafts wanted for the next step */;
  uint64_t *rkey, *rctr;
  double *q;     /* [B, K, V] draft distributions (sampling with speculation) */
  double *pbuf;  /* [V] */
  double *rbuf;  /* [V] */
  dsc_sample_pair *pairs; /* [V] */
  /* the device-resident loop (device memory): tok [B], state [2B] (alive, ngen),
   * rng [B, 2] (key, counter), out [B, max_new] */
  void *dloop;
  int32_t *d_tok, *d_state, *d_out;
  int64_t *d_rng;
  /* the speculative one adds: plen [B], nd [B], acc [B], drafts [B, K], cnt [B] and
   * rec [GEN_CHUNK, B] (after out, in the region copied back per chunk), q [B, K, V] */
  int32_t *d_plen, *d_nd, *d_acc, *d_drafts, *d_cnt, *d_rec;
  double *d_q;
  /* stats */
  int64_t new_tokens, drafted, accepted;
} gen;

static double urand(gen *g, int32_t b) { return dsc_sample_urand(g->rkey[b], &g->rctr[b]); }

static int32_t tok_at(const gen *g, int32_t b, int64_t i) {
  return i < g->plen[b] ? g->prompts[b][i]
                        : g->out[(int64_t)b * g->o.max_new_tokens + (i - g->plen[b])];
}

/* Position of the pending token (the last emitted one, not yet fed to the model). */
static int64_t pending_pos(const gen *g, int32_t b) { return (int64_t)g->plen[b] + g->ngen[b] - 1; }

static void release(gen *g) {
  if (g->dloop) dsc_free(g->in.ctx, g->dloop);
  dsc_infer_release(&g->in);
  free(g->hmem);
  free(g->q);
  free(g->pairs);
}

/* ---- sampling ------------------------------------------------------------------------- */

/* The rules of dsc_sample_tokens, row by row (cpu/sample.c): the speculative path needs the
 * distributions themselves. */
static int32_t argmax_row(const float *l, int32_t V) { return dsc_cpu_sample_argmax(l, V); }

static int sampling_dist(gen *g, const float *l, double *p) {
  return dsc_cpu_sample_dist(l, g->in.V, g->o.temperature, g->o.top_k, g->o.top_p, p, g->pairs);
}

static int32_t draw(const double *p, int32_t V, double u) { return dsc_cpu_sample_draw(p, V, u); }

static dsc_status bad_logits(gen *g, int32_t b) {
  (void)g;
  return dsc_error(DSC_ERR_INTERNAL, FN,
                   "the logits of sequence %d are all NaN or -inf (a diverged model?)", (int)b);
}

/* Sample a token of sequence b from a logits row (plain decoding, the bonus token). */
static dsc_status sample_row(gen *g, int32_t b, const float *l, int32_t *tok) {
  if (g->greedy) {
    *tok = argmax_row(l, g->in.V);
    return *tok < 0 ? bad_logits(g, b) : DSC_OK;
  }
  if (sampling_dist(g, l, g->pbuf) != 0) return bad_logits(g, b);
  *tok = draw(g->pbuf, g->in.V, urand(g, b));
  return DSC_OK;
}

/* ---- emission ------------------------------------------------------------------------- */

static void finish(gen *g, int32_t b) {
  if (!g->alive[b]) return;
  g->alive[b] = 0;
  (void)dsc_mla_cache_free_sequence(g->in.cache, b); /* known id: cannot fail */
}

/* Append a token to sequence b; returns 1 when the sequence is done after it. */
static int emit(gen *g, int32_t b, int32_t tok) {
  g->out[(int64_t)b * g->o.max_new_tokens + g->ngen[b]] = tok;
  g->ngen[b] += 1;
  g->new_tokens += 1;
  int done = (tok == g->eos) || g->ngen[b] >= g->o.max_new_tokens;
  if (g->on_token) {
    const int32_t r = g->on_token(g->user, b, tok);
    if (r < 0) g->stop_all = 1;
    if (r != 0) done = 1;
  }
  return done;
}

/* ---- drafting ------------------------------------------------------------------------- */

/* Draft token j (0-based) of sequence b from an MTP logits row. */
static dsc_status take_draft(gen *g, int32_t b, int32_t j, const float *l) {
  int32_t tok;
  if (g->greedy) {
    tok = argmax_row(l, g->in.V);
    if (tok < 0) return bad_logits(g, b);
  } else {
    double *q = g->q + ((int64_t)b * g->in.K + j) * g->in.V;
    if (sampling_dist(g, l, q) != 0) return bad_logits(g, b);
    tok = draw(q, g->in.V, urand(g, b));
  }
  g->drafts[(int64_t)b * g->in.K + j] = tok;
  g->nd[b] = j + 1;
  return DSC_OK;
}

/* The drafts of every alive sequence b with kn[b] > 0. Catch-up: the MTP block over
 * positions first[b] .. P-1 (P: the pending token's position), the hidden input of position
 * first[b] + j being row hrow0[b] + j of hsrc ([hrows, D], main-model rows after
 * model.norm) and the token input the one a position ahead; its last row drafts token 1.
 * Chain: drafts 2 .. kn[b], one MTP call per draft over the sequences still drafting. */
static dsc_status draft_all(gen *g, const int64_t *first, const int64_t *hrow0, int prefill,
                            const float *hsrc, int64_t hrows) {
  /* catch-up (or the MTP prefill) */
  int32_t nb = 0, T = 0;
  for (int32_t b = 0; b < g->in.B; ++b) {
    g->nd[b] = 0;
    if (!g->alive[b] || g->kn[b] <= 0) continue;
    const int32_t n = (int32_t)(pending_pos(g, b) - first[b]);
    if (n > T) T = n;
    ++nb;
  }
  if (nb == 0) return DSC_OK;
  int32_t r = 0;
  for (int32_t b = 0; b < g->in.B; ++b) {
    if (!g->alive[b] || g->kn[b] <= 0) continue;
    const int64_t P = pending_pos(g, b);
    const int32_t n = (int32_t)(P - first[b]);
    for (int32_t j = 0; j < T; ++j) {
      const int64_t k = (int64_t)r * T + j;
      const int valid = j < n;
      g->in.h_ids[k] = valid ? tok_at(g, b, first[b] + j + 1) : 0;
      g->in.h_pos[k] = valid ? (int32_t)(first[b] + j) : -1;
      g->in.h_gidx[k] = valid ? (int32_t)(hrow0[b] + j) : 0;
    }
    g->in.h_seq[r] = b;
    g->in.h_last[r] = (int32_t)((int64_t)r * T + n - 1);
    g->mrow[b] = r;
    ++r;
  }
  const float *lh;
  DSC_TRY(dsc_infer_mtp(&g->in, nb, T, prefill, hsrc, hrows, &lh));
  for (int32_t b = 0; b < g->in.B; ++b)
    if (g->alive[b] && g->kn[b] > 0)
      DSC_TRY(take_draft(g, b, 0, lh + (int64_t)g->mrow[b] * g->in.V));
  /* chain: draft j+1 from draft j, one position further */
  for (int32_t j = 1; j < g->in.K; ++j) {
    nb = 0;
    for (int32_t b = 0; b < g->in.B; ++b) {
      if (!g->alive[b] || g->kn[b] <= j) continue;
      g->in.h_ids[nb] = g->drafts[(int64_t)b * g->in.K + j - 1];
      g->in.h_pos[nb] = (int32_t)(pending_pos(g, b) + j - 1);
      g->in.h_gidx[nb] = g->mrow[b];
      g->in.h_seq[nb] = b;
      g->in.h_last[nb] = nb;
      g->mrow[b] = nb; /* the next row (read above before being replaced) */
      ++nb;
    }
    if (nb == 0) break;
    DSC_TRY(dsc_infer_mtp(&g->in, nb, 1, 0, g->in.mo, g->in.B, &lh));
    for (int32_t b = 0; b < g->in.B; ++b)
      if (g->alive[b] && g->kn[b] > j) DSC_TRY(take_draft(g, b, j, lh + (int64_t)g->mrow[b] * g->in.V));
  }
  return DSC_OK;
}

/* Drafts wanted for the next step: never past max_new_tokens. */
static void plan_drafts(gen *g) {
  for (int32_t b = 0; b < g->in.B; ++b) {
    int32_t k = g->in.K;
    const int32_t room = g->o.max_new_tokens - g->ngen[b] - 1;
    if (k > room) k = room;
    g->kn[b] = g->alive[b] ? (k > 0 ? k : 0) : 0;
  }
}

/* ---- verification ----------------------------------------------------------------------- */

/* Sequence b's step: its rows of logits (base: the pending token's, then one per draft).
 * Emits the accepted drafts and the correction / bonus token; sets acc[b]. */
static dsc_status verify(gen *g, int32_t b, const float *lrows) {
  const int32_t V = g->in.V, kb = g->nd[b];
  int32_t a = 0;
  g->drafted += kb;
  for (int32_t j = 0; j <= kb; ++j) {
    const float *l = lrows + (int64_t)j * V;
    int32_t tok;
    int accepted = 0;
    if (j < kb) {
      const int32_t x = g->drafts[(int64_t)b * g->in.K + j];
      if (g->greedy) {
        tok = argmax_row(l, V);
        if (tok < 0) return bad_logits(g, b);
        accepted = tok == x;
      } else {
        double *p = g->pbuf, *r = g->rbuf;
        const double *q = g->q + ((int64_t)b * g->in.K + j) * V;
        if (sampling_dist(g, l, p) != 0) return bad_logits(g, b);
        const double u = urand(g, b);
        accepted = u * q[x] < p[x]; /* u < p(x) / q(x); q(x) > 0: x was drawn from q */
        if (accepted) {
          tok = x;
        } else {
          double s = 0.0;
          for (int32_t v = 0; v < V; ++v) {
            r[v] = p[v] > q[v] ? p[v] - q[v] : 0.0;
            s += r[v];
          }
          tok = draw(s > 0.0 ? r : p, V, urand(g, b));
        }
      }
      if (accepted) ++a;
    } else {
      DSC_TRY(sample_row(g, b, l, &tok));
    }
    if (accepted) g->accepted += 1;
    if (emit(g, b, tok)) {
      g->acc[b] = a;
      finish(g, b);
      return DSC_OK;
    }
    if (!accepted) break;
  }
  g->acc[b] = a;
  return DSC_OK;
}

/* ---- validation ------------------------------------------------------------------------- */

/* Host arrays [a, a + na) and [b, b + nb) (bytes) share a byte. */
static int host_overlap(const void *a, size_t na, const void *b, size_t nb) {
  const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return na > 0 && nb > 0 && x < y + nb && y < x + na;
}

/* The outputs (out_tokens, out_lens) are written while the prompts, their lengths and the
 * pointer array are still read (out_tokens is filled with -1 first, and decoding reads the
 * prompts back): no sharing. */
static dsc_status check_host_aliasing(int32_t n_prompts, const int32_t *const *prompts,
                                      const int32_t *prompt_lens, const int32_t *out_tokens,
                                      int32_t max_new, const int32_t *out_lens) {
  const size_t nb = (size_t)n_prompts * sizeof(int32_t);
  const size_t tb = out_tokens ? (size_t)n_prompts * (size_t)max_new * sizeof(int32_t) : 0;
  const struct { const char *name; const void *p; size_t n; } outs[2] = {
      {"out_tokens", out_tokens, tb}, {"out_lens", out_lens, nb}};
  DSC_CHECK(!host_overlap(out_tokens, tb, out_lens, nb), DSC_ERR_INVALID_ARGUMENT, FN,
            "out_lens: expected memory that does not overlap out_tokens, got an overlapping range");
  for (int k = 0; k < 2; ++k) {
    DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompt_lens, nb), DSC_ERR_INVALID_ARGUMENT, FN,
              "%s: expected memory that does not overlap prompt_lens, got an overlapping range",
              outs[k].name);
    DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompts, (size_t)n_prompts * sizeof *prompts),
              DSC_ERR_INVALID_ARGUMENT, FN,
              "%s: expected memory that does not overlap prompts (the pointer array), got an "
              "overlapping range",
              outs[k].name);
    for (int32_t i = 0; i < n_prompts; ++i)
      DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompts[i], (size_t)prompt_lens[i] * sizeof(int32_t)),
                DSC_ERR_INVALID_ARGUMENT, FN,
                "%s: expected memory that does not overlap prompts[%d], got an overlapping range "
                "(pass separate output arrays)",
                outs[k].name, (int)i);
  }
  return DSC_OK;
}

static dsc_status validate(const dsc_model *m, const dsc_generate_options *o, int32_t n_prompts,
                           const int32_t *const *prompts, const int32_t *prompt_lens,
                           const int32_t *out_tokens, const int32_t *out_lens,
                           const dsc_generate_stats *stats) {
  const dsc_model_config *c = &m->cfg;
  const int32_t V = c->vocab_size;
  DSC_CHECK(o->size >= sizeof(dsc_generate_options), DSC_ERR_INVALID_ARGUMENT, FN,
            "o: expected options with size = %zu (dsc_generate_options_default), got %zu",
            sizeof(dsc_generate_options), o->size);
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_generate_stats), DSC_ERR_INVALID_ARGUMENT,
            FN, "stats: expected stats->size = %zu, got %zu", sizeof(dsc_generate_stats),
            stats ? stats->size : (size_t)0);
  DSC_CHECK(o->max_new_tokens >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->max_new_tokens: expected >= 0, got %d", (int)o->max_new_tokens);
  DSC_CHECK(isfinite(o->temperature) && o->temperature >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->temperature: expected a finite value >= 0 (0: greedy), got %g",
            (double)o->temperature);
  DSC_CHECK(o->top_k >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->top_k: expected >= 0 (0: off), got %d", (int)o->top_k);
  DSC_CHECK(o->top_p > 0.0f && o->top_p <= 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->top_p: expected a value in (0, 1] (1: off), got %g", (double)o->top_p);
  DSC_CHECK(o->eos_token_id == DSC_GENERATE_EOS_FROM_CONFIG || o->eos_token_id == -1 ||
                (o->eos_token_id >= 0 && o->eos_token_id < V),
            DSC_ERR_INVALID_ARGUMENT, FN,
            "o->eos_token_id: expected an id in [0, %d), -1 (none) or "
            "DSC_GENERATE_EOS_FROM_CONFIG (-2), got %d",
            (int)V, (int)o->eos_token_id);
  DSC_CHECK(o->speculative == 0 || o->speculative == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->speculative: expected 0 (none) or 1 (MTP), got %d", (int)o->speculative);
  if (o->speculative) {
    DSC_CHECK(m->n_mtp >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "o->speculative: MTP drafts need a model with MTP modules, got "
              "num_nextn_predict_layers = 0");
    DSC_CHECK(o->num_draft >= 1 && o->num_draft <= GEN_MAX_DRAFT, DSC_ERR_INVALID_ARGUMENT, FN,
              "o->num_draft: expected a value in [1, %d], got %d", GEN_MAX_DRAFT,
              (int)o->num_draft);
  }
  const dsc_dtype cd = (dsc_dtype)o->cache_dtype;
  DSC_CHECK(cd == DSC_DTYPE_FLOAT32 || cd == DSC_DTYPE_BFLOAT16 || cd == DSC_DTYPE_FLOAT8_E4M3FN,
            DSC_ERR_INVALID_ARGUMENT, FN,
            "o->cache_dtype: expected float32, bfloat16 or float8_e4m3fn, got %s (%d)",
            dsc_dtype_name(cd), (int)o->cache_dtype);
  DSC_CHECK(o->block_size >= 1 && o->block_size <= (1 << 16), DSC_ERR_INVALID_ARGUMENT, FN,
            "o->block_size: expected a value in [1, 65536], got %d", (int)o->block_size);
  DSC_CHECK(o->max_batch >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->max_batch: expected >= 0 (0: n_prompts), got %d", (int)o->max_batch);
  DSC_CHECK(n_prompts >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_prompts: expected at least one prompt, got %d", (int)n_prompts);
  DSC_CHECK(o->max_batch == 0 || n_prompts <= o->max_batch, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_prompts: expected at most o->max_batch = %d prompts, got %d", (int)o->max_batch,
            (int)n_prompts);
  DSC_CHECK(prompts != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "prompts: expected an array, got NULL");
  DSC_CHECK(prompt_lens != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "prompt_lens: expected an array, got NULL");
  DSC_CHECK(out_lens != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out_lens: expected an array, got NULL");
  DSC_CHECK(out_tokens != NULL || o->max_new_tokens == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "out_tokens: expected an array of n_prompts * max_new_tokens ids, got NULL");
  for (int32_t i = 0; i < n_prompts; ++i) {
    const int32_t n = prompt_lens[i];
    DSC_CHECK(n >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: expected at least one token, got prompt_lens[%d] = %d", (int)i, (int)i,
              (int)n);
    DSC_CHECK(prompts[i] != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: expected %d token ids, got NULL", (int)i, (int)n);
    DSC_CHECK((int64_t)n + o->max_new_tokens <= c->max_position_embeddings,
              DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: prompt length %d + max_new_tokens %d exceeds "
              "max_position_embeddings = %d",
              (int)i, (int)n, (int)o->max_new_tokens, (int)c->max_position_embeddings);
    for (int32_t j = 0; j < n; ++j)
      DSC_CHECK(prompts[i][j] >= 0 && prompts[i][j] < V, DSC_ERR_INVALID_ARGUMENT, FN,
                "prompts[%d]: expected ids in [0, %d), got %d at index %d", (int)i, (int)V,
                (int)prompts[i][j], (int)j);
  }
  return check_host_aliasing(n_prompts, prompts, prompt_lens, out_tokens, o->max_new_tokens, out_lens);
}

/* ---- setup ------------------------------------------------------------------------------ */

static dsc_status setup(gen *g) {
  DSC_TRY(dsc_infer_setup(&g->in, FN, g->plen, g->o.max_new_tokens, g->in.K, g->o.cache_dtype,
                          g->o.block_size));
  const int64_t B = g->in.B, V = g->in.V;
  const int64_t K1 = g->in.K > 0 ? g->in.K : 1;
  int ok = 1;
  size_t hs[11] = {
      (size_t)B * 4, (size_t)B * 4, (size_t)B * 4,  /* ngen, alive, nd */
      (size_t)(B * K1) * 4,                         /* drafts (K1 <= 16) */
      (size_t)B * 4, (size_t)B * 4, (size_t)B * 4, (size_t)B * 4, /* row, acc, mrow, kn */
      (size_t)B * 8, (size_t)B * 8,                 /* rkey, rctr */
      (size_t)(2 * V) * 8,                          /* pbuf, rbuf */
  };
  size_t htot = 0, hoff[11];
  for (int i = 0; i < 11; ++i) {
    hoff[i] = htot;
    htot = dsc_caddz(htot, dsc_calign(hs[i], 256, &ok), &ok);
  }
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "the host buffers do not fit in 64 bits");
  g->hmem = calloc(1, htot);
  g->pairs = (dsc_sample_pair *)malloc((size_t)V * sizeof *g->pairs);
  if (!g->hmem || !g->pairs)
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %zu bytes of host buffers", htot);
  char *hp = (char *)g->hmem;
  g->ngen = (int32_t *)(hp + hoff[0]);
  g->alive = (int32_t *)(hp + hoff[1]);
  g->nd = (int32_t *)(hp + hoff[2]);
  g->drafts = (int32_t *)(hp + hoff[3]);
  g->row = (int32_t *)(hp + hoff[4]);
  g->acc = (int32_t *)(hp + hoff[5]);
  g->mrow = (int32_t *)(hp + hoff[6]);
  g->kn = (int32_t *)(hp + hoff[7]);
  g->rkey = (uint64_t *)(hp + hoff[8]);
  g->rctr = (uint64_t *)(hp + hoff[9]);
  g->pbuf = (double *)(hp + hoff[10]);
  g->rbuf = g->pbuf + V;
  if (g->in.K > 0 && !g->greedy) {
    const size_t qb = dsc_cbytes(dsc_cmul3(B, g->in.K, V, &ok), sizeof(double), &ok);
    g->q = ok ? (double *)malloc(qb) : NULL;
    if (!g->q)
      return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the draft distributions");
  }
  for (int32_t b = 0; b < g->in.B; ++b) {
    g->rkey[b] = dsc_sample_key(g->o.seed, (uint64_t)b);
    g->rctr[b] = 0;
  }
  return DSC_OK;
}
static double now_s(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- expert parallel ------------------------------------------------------------------- */

/* The model's MoE layers exchange tokens with other ranks: every rank of the group must run
 * the same sequence of them. */
static int ep_generation(const dsc_model *m) {
  for (int32_t b = 0; m->dist && b < m->n_blocks; ++b)
    if (dsc_model_exchange(m, b)) return 1;
  return 0;
}

/* ---- the device-resident decode loop ------------------------------------------------------
 * Plain decoding (no speculation, one process): every step runs on the device without the
 * host: the batch keeps all B rows (a finished row is padding: position -1), the sampled
 * token becomes the row's next input in place (decode_advance), EOS and max_new_tokens end
 * rows on the device, and the tokens are written to a device copy of out. The host looks
 * once per chunk of GEN_CHUNK steps (one copy of [state | out], one wait): it stops when
 * every row is done, reports rows whose logits had nothing to sample (token -1), and serves
 * on_token: the chunk's tokens in step order, then sequence order (what the step-by-step
 * path calls); a callback that stops a sequence (or all) discards what that sequence
 * produced later in the chunk. The cache holds every sequence's blocks for prompt +
 * max_new_tokens from the start, so no step allocates blocks or uploads tables.
 * On CUDA the step is captured in a CUDA graph once a plain step has shown 0 host waits,
 * copies and allocations (DSC_CUDA_GRAPHS=0: never), and replayed after that.
 * DSC_DEVICE_DECODE=0 in the environment takes the step-by-step path instead. */

#define GEN_CHUNK 16

static int env_off(const char *name) {
  const char *v = getenv(name);
  return v && strcmp(v, "0") == 0;
}

/* One speculative step (see run_spec_device). */
static dsc_status spec_step(gen *g, const dsc_sample_params *sp) {
  dsc_infer *in = &g->in;
  dsc_context *ctx = in->ctx;
  const int32_t B = in->B, K = in->K, Tv = in->Tv, mx = g->o.max_new_tokens;
  DSC_TRY(dsc_spec_inputs(ctx, DSC_SPEC_MAIN, B, Tv, K, 0, mx, g->d_plen, g->d_state, g->d_out, g->d_drafts,
                          g->d_nd, g->d_acc, in->d_ids, in->d_pos, NULL, NULL));
  DSC_TRY(dsc_infer_verify_device(in));
  DSC_TRY(dsc_spec_verify(ctx, B, K, in->V, mx, g->eos, sp, in->logits, g->d_drafts, g->d_q, g->d_rng, g->d_state,
                          g->d_out, g->d_nd, g->d_acc, GEN_CHUNK, g->d_cnt, g->d_rec));
  DSC_TRY(dsc_spec_inputs(ctx, DSC_SPEC_CATCH, B, Tv, K, 0, mx, g->d_plen, g->d_state, g->d_out, g->d_drafts,
                          g->d_nd, g->d_acc, in->d_ids, in->d_pos, in->d_gidx, in->d_last));
  DSC_TRY(dsc_infer_mtp_device(in, Tv, in->hn, (int64_t)B * Tv));
  DSC_TRY(dsc_spec_draft(ctx, B, K, 0, in->V, sp, in->logits, g->d_rng, g->d_nd, g->d_drafts, g->d_q));
  for (int32_t j = 1; j < K; ++j) {
    DSC_TRY(dsc_spec_inputs(ctx, DSC_SPEC_CHAIN, B, 1, K, j, mx, g->d_plen, g->d_state, g->d_out, g->d_drafts,
                            g->d_nd, g->d_acc, in->d_ids, in->d_pos, in->d_gidx, in->d_last));
    DSC_TRY(dsc_infer_mtp_device(in, 1, in->mo, B));
    DSC_TRY(dsc_spec_draft(ctx, B, K, j, in->V, sp, in->logits, g->d_rng, g->d_nd, g->d_drafts, g->d_q));
  }
  return DSC_OK;
}

static dsc_status device_step(gen *g, const dsc_sample_params *sp) {
  dsc_infer *in = &g->in;
  if (in->K > 0) return spec_step(g, sp);
  DSC_TRY(dsc_infer_decode_device(in));
  DSC_TRY(dsc_sample_rows(in->ctx, in->B, in->V, sp, in->logits, g->d_rng, g->d_state, g->d_tok));
  return dsc_decode_advance(in->ctx, in->B, g->o.max_new_tokens, g->eos, g->d_tok, in->d_ids, in->d_pos,
                            g->d_state, g->d_out);
}

/* The CUDA graph of one step: 0 none yet, 1 capturing next, -1 off (with the reason logged). */
typedef struct {
  int mode;
  void *exec;
  dsc_context_counters before;
} step_graph;

static dsc_status graph_step(gen *g, const dsc_sample_params *sp, step_graph *sg, int64_t step) {
#ifdef DSC_WITH_CUDA
  dsc_context *ctx = g->in.ctx;
  if (sg->exec) return dsc_cuda_graph_launch(ctx, sg->exec);
  if (sg->mode == 0 && step == 1) { /* the second step: does it wait, copy or allocate? */
    sg->before.size = sizeof sg->before;
    DSC_TRY(dsc_context_get_counters(ctx, &sg->before, 0));
    DSC_TRY(device_step(g, sp));
    dsc_context_counters now;
    now.size = sizeof now;
    DSC_TRY(dsc_context_get_counters(ctx, &now, 0));
    const uint64_t waits = now.syncs - sg->before.syncs, allocs = now.allocs - sg->before.allocs,
                   copies = (now.copies_to_device - sg->before.copies_to_device) +
                            (now.copies_to_host - sg->before.copies_to_host);
    if (waits || allocs || copies) {
      dsc_log(ctx, DSC_LOG_INFO,
              "dsc_model_generate: decode step not captured in a CUDA graph: it made %llu host waits, %llu "
              "copies and %llu allocations (plain launches instead)",
              (unsigned long long)waits, (unsigned long long)copies, (unsigned long long)allocs);
      sg->mode = -1;
    } else {
      sg->mode = 1;
    }
    return DSC_OK;
  }
  if (sg->mode == 1) {
    sg->mode = -1; /* one try */
    dsc_graph_capture *cap = NULL;
    dsc_status s = dsc_cuda_graph_capture_begin(ctx, &cap);
    if (s == DSC_OK) {
      const dsc_status st = device_step(g, sp);
      s = dsc_cuda_graph_capture_end(ctx, cap, &sg->exec); /* ends the capture whatever st was */
      if (st != DSC_OK && sg->exec) {
        dsc_cuda_graph_destroy(sg->exec);
        sg->exec = NULL;
      }
      if (st != DSC_OK) s = st;
    }
    if (s == DSC_OK && sg->exec) return dsc_cuda_graph_launch(ctx, sg->exec); /* the captured step runs now */
    dsc_log(ctx, DSC_LOG_INFO, "dsc_model_generate: decode step not captured in a CUDA graph (%s): plain launches",
            dsc_last_error());
    /* the capture did not run the step (and may have invalidated the work): redo it plainly */
  }
#else
  (void)sg;
  (void)step;
#endif
  return device_step(g, sp);
}

/* End sequence b of a chunk's host copy after its first `at` tokens (a callback stopped it):
 * alive [B], ngen [B], out [B, mx]; *edited = 1 when that changed anything. */
static void cut_at(int32_t *alive, int32_t *ngen, int32_t *out, int32_t mx, int32_t b, int32_t at, int *edited) {
  if (at < ngen[b] || alive[b]) *edited = 1;
  for (int32_t i = at; i < ngen[b]; ++i) out[(int64_t)b * mx + i] = -1;
  ngen[b] = at;
  alive[b] = 0;
}

/* Host bookkeeping of one chunk: hs = the host copy of [state (alive [B], ngen [B]) | out
 * [B, max_new]], n0 [B] the counts before the chunk, em [B] scratch. Emits the chunk's tokens
 * in the step-by-step path's order (step, then sequence): stats and callbacks. A callback
 * that ends sequence b (or all: stop_all) cuts what b (every sequence) produced after the
 * tokens already emitted; *edited = 1 when that changed hs (to be uploaded). */
static dsc_status chunk_done(gen *g, int32_t *hs, const int32_t *n0, int32_t *em, int32_t steps,
                             int *edited) {
  const int32_t B = g->in.B, mx = g->o.max_new_tokens;
  int32_t *alive = hs, *ngen = hs + B, *out = hs + 2 * B;
  *edited = 0;
  for (int32_t b = 0; b < B; ++b) em[b] = n0[b];
  for (int32_t j = 0; j < steps && !g->stop_all; ++j)
    for (int32_t b = 0; b < B && !g->stop_all; ++b) {
      if (em[b] >= ngen[b] || em[b] != n0[b] + j) continue; /* no token at this step (or cut) */
      const int32_t tok = out[(int64_t)b * mx + em[b]];
      if (tok < 0) return bad_logits(g, b);
      em[b] += 1;
      g->new_tokens += 1;
      const int32_t r = g->on_token ? g->on_token(g->user, b, tok) : 0;
      if (r < 0) g->stop_all = 1;
      if (r != 0 && !g->stop_all) {
        cut_at(alive, ngen, out, mx, b, em[b], edited);
      }
    }
  for (int32_t b = 0; g->stop_all && b < B; ++b) {
    cut_at(alive, ngen, out, mx, b, em[b], edited);
  }
  return DSC_OK;
}

static dsc_status run_device(gen *g) {
  dsc_infer *in = &g->in;
  dsc_context *ctx = in->ctx;
  const int32_t B = in->B, mx = g->o.max_new_tokens;
  /* device memory: tok [B], [state 2B | out B*mx] (one copy back per chunk), rng [B, 2] */
  int ok = 1;
  const int64_t nst = dsc_cadd(2 * (int64_t)B, dsc_cmul(B, mx, &ok), &ok);
  const size_t sb = dsc_cbytes(nst, 4, &ok);
  const size_t tb = dsc_calign((size_t)B * 4, 256, &ok), rb = (size_t)B * 16;
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "the decode state does not fit in 64 bits");
  DSC_TRY(dsc_malloc(ctx, dsc_caddz(dsc_caddz(tb, dsc_calign(sb, 256, &ok), &ok), rb, &ok), &g->dloop));
  g->d_tok = (int32_t *)g->dloop;
  g->d_state = (int32_t *)((char *)g->dloop + tb);
  g->d_out = g->d_state + 2 * B;
  g->d_rng = (int64_t *)((char *)g->dloop + tb + dsc_calign(sb, 256, &ok));
  int32_t *hs = (int32_t *)malloc(sb + (size_t)B * 4 * 2 + rb);
  if (!hs) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the decode state");
  int32_t *n0 = hs + nst, *tot = n0 + B; /* tot: the reservations, then chunk_done's scratch */
  int64_t *hr = (int64_t *)(tot + B);
  dsc_status s = DSC_OK;
  /* the state after the prefill: inputs, positions, cache reservations, streams */
  for (int32_t b = 0; b < B; ++b) {
    const int32_t n = g->ngen[b];
    hs[b] = g->alive[b];
    hs[B + b] = n;
    memcpy(hs + 2 * B + (int64_t)b * mx, g->out + (int64_t)b * mx, (size_t)mx * 4);
    in->h_ids[b] = g->alive[b] ? g->out[(int64_t)b * mx + n - 1] : 0;
    in->h_pos[b] = g->alive[b] ? (int32_t)pending_pos(g, b) : -1;
    tot[b] = g->alive[b] ? g->plen[b] + mx : 0;
    hr[2 * b] = (int64_t)g->rkey[b];
    hr[2 * b + 1] = (int64_t)g->rctr[b];
  }
  s = dsc_infer_plan_device(in, tot);
  if (s == DSC_OK) s = dsc_memcpy(ctx, in->d_ids, in->dev, in->h_ids, HOST, (size_t)B * 4);
  if (s == DSC_OK) s = dsc_memcpy(ctx, in->d_pos, in->dev, in->h_pos, HOST, (size_t)B * 4);
  if (s == DSC_OK) s = dsc_memcpy(ctx, g->d_state, in->dev, hs, HOST, sb);
  if (s == DSC_OK) s = dsc_memcpy(ctx, g->d_rng, in->dev, hr, HOST, rb);
  dsc_sample_params sp;
  dsc_sample_params_default(&sp);
  sp.temperature = g->o.temperature;
  sp.top_k = g->o.top_k;
  sp.top_p = g->o.top_p;
  step_graph sg = {in->host || env_off("DSC_CUDA_GRAPHS") ? -1 : 0, NULL, {0}};
  int64_t step = 0, left = mx - 1; /* every alive row has emitted >= 1 token */
  int32_t forwards = 1;            /* the prefill; then the steps that emitted a token */
  while (s == DSC_OK && left > 0) {
    const int32_t n = (int32_t)(left < GEN_CHUNK ? left : GEN_CHUNK);
    for (int32_t b = 0; b < B; ++b) n0[b] = hs[B + b];
    for (int32_t j = 0; s == DSC_OK && j < n; ++j, ++step) s = graph_step(g, &sp, &sg, step);
    left -= n;
    if (s == DSC_OK) s = dsc_memcpy(ctx, hs, HOST, g->d_state, in->dev, sb); /* the chunk's one wait */
    int edited = 0;
    if (s == DSC_OK) s = chunk_done(g, hs, n0, tot, n, &edited);
    if (s == DSC_OK && edited) s = dsc_memcpy(ctx, g->d_state, in->dev, hs, HOST, sb);
    int any = 0, most = 0;
    for (int32_t b = 0; b < B; ++b) {
      any |= hs[b];
      if (hs[B + b] - n0[b] > most) most = hs[B + b] - n0[b];
    }
    forwards += most;
    if (!any) break;
  }
#ifdef DSC_WITH_CUDA
  if (sg.exec) dsc_cuda_graph_destroy(sg.exec);
#endif
  /* the results (on error too: what was emitted so far) */
  if (s == DSC_OK) s = dsc_memcpy(ctx, hr, HOST, g->d_rng, in->dev, rb);
  for (int32_t b = 0; b < B; ++b) {
    g->ngen[b] = hs[B + b];
    g->alive[b] = 0;
    if (s == DSC_OK) g->rctr[b] = (uint64_t)hr[2 * b + 1];
    memcpy(g->out + (int64_t)b * mx, hs + 2 * B + (int64_t)b * mx, (size_t)mx * 4);
  }
  in->main_forwards = forwards; /* the passes that emitted tokens, as the step-by-step path counts */
  free(hs);
  return s;
}

/* ---- the device-resident speculative loop ---------------------------------------------
 * Speculative decoding (one process) the same way: per step, on the device,
 *   main:   spec_inputs(MAIN) lays out [B, 1 + K]: row b*Tv + j = sequence b's pending
 *           token (j = 0) or draft j at P + j, padding (-1) past its nd drafts or when it is
 *           done; the main model on it (dsc_infer_verify_device), every row's logits kept;
 *   verify: dsc_spec_verify: generate.c's verify (greedy / rejection sampling against the
 *           draft distributions q, then the correction or bonus token), eos and
 *           max_new_tokens, the tokens into the device copy of out, the drafts wanted next
 *           (plan_drafts), and a record of the step per sequence (emitted, accepted,
 *           drafted) for the host;
 *   drafts: the MTP catch-up over the kept positions on [B, 1 + K] (spec_inputs(CATCH): the
 *           drafting row b*Tv + acc) and the chain of K - 1 more on [B, 1], each followed
 *           by dsc_spec_draft (argmax, or a draw keeping q on the device).
 * Row b is sequence b in every batch, so nothing is gathered or compacted on the host. The
 * cache was reserved for prompt + max_new_tokens per sequence (enough: the step's last row
 * is at most at plen + max_new - 2); positions past a sequence's kept prefix (rejected
 * drafts) are simply overwritten by later steps, attention reading only up to each row's
 * own position. The RNG draws per sequence come in the host path's order (verification,
 * then drafts 1 .. K), so the tokens are bitwise the host path's. The host reads [state |
 * out | cnt | rec] once per chunk of up to GEN_CHUNK steps and replays the records in the
 * host path's order (step, sequence, token): callbacks, cuts, stats (drafted, accepted,
 * new tokens, main forwards). The prefill and the MTP prefill stay the host path's. */

/* Host bookkeeping of one chunk of the speculative loop: hs = the host copy of [alive [B],
 * ngen [B], out [B, max_new], cnt [B], rec [GEN_CHUNK, B]], n0 / c0 [B] ngen and cnt
 * before the chunk, em and cut [B] scratch. *ran = the steps any sequence took part in
 * (as the host loop counts its main passes); *edited as chunk_done. */
static dsc_status spec_chunk_done(gen *g, int32_t *hs, const int32_t *n0, const int32_t *c0, int32_t *em,
                                  int32_t *cut, int32_t steps, int *edited, int32_t *ran) {
  const int32_t B = g->in.B, mx = g->o.max_new_tokens;
  int32_t *alive = hs, *ngen = hs + B, *out = hs + 2 * B, *cnt = out + (int64_t)B * mx, *rec = cnt + B;
  *edited = 0;
  *ran = 0;
  for (int32_t b = 0; b < B; ++b) {
    em[b] = n0[b];
    cut[b] = 0;
  }
  for (int32_t j = 0; j < steps && !g->stop_all; ++j) {
    int any = 0;
    for (int32_t b = 0; b < B && !g->stop_all; ++b) {
      if (cut[b] || j >= cnt[b] - c0[b]) continue; /* not verified at this step */
      const int32_t r = rec[(int64_t)((c0[b] + j) % GEN_CHUNK) * B + b];
      const int32_t ne = dsc_spec_rec_ne(r), a = dsc_spec_rec_acc(r);
      any = 1;
      g->drafted += dsc_spec_rec_kb(r);
      for (int32_t i = 0; i < ne; ++i) {
        const int32_t tok = out[(int64_t)b * mx + em[b]];
        if (tok < 0) return bad_logits(g, b);
        em[b] += 1;
        g->new_tokens += 1;
        g->accepted += i < a;
        const int32_t rc = g->on_token ? g->on_token(g->user, b, tok) : 0;
        if (rc < 0) g->stop_all = 1;
        if (rc != 0) {
          cut[b] = 1;
          break;
        }
      }
    }
    *ran += any;
  }
  for (int32_t b = 0; b < B; ++b) {
    if (!cut[b] && !g->stop_all) continue;
    cut_at(alive, ngen, out, mx, b, em[b], edited);
  }
  return DSC_OK;
}

static dsc_status run_spec_device(gen *g) {
  dsc_infer *in = &g->in;
  dsc_context *ctx = in->ctx;
  const int32_t B = in->B, mx = g->o.max_new_tokens, K = in->K;
  const int sampling = !g->greedy;
  /* device memory: [plen | nd | acc | drafts], [state 2B | out B*mx | cnt B | rec CHUNK*B]
   * (one copy back per chunk), rng [B, 2], q [B, K, V] (sampling) */
  int ok = 1;
  const int64_t nst = dsc_cadd(dsc_cadd(3 * (int64_t)B, dsc_cmul(B, mx, &ok), &ok), (int64_t)GEN_CHUNK * B, &ok);
  const size_t sb = dsc_cbytes(nst, 4, &ok);
  const size_t ab = dsc_calign(dsc_cbytes(dsc_cmul(B, 3 + K, &ok), 4, &ok), 256, &ok), rb = (size_t)B * 16;
  const size_t qb = sampling ? dsc_cbytes(dsc_cmul3(B, K, in->V, &ok), 8, &ok) : 0;
  const size_t off_s = ab, off_r = dsc_caddz(off_s, dsc_calign(sb, 256, &ok), &ok);
  const size_t off_q = dsc_caddz(off_r, dsc_calign(rb, 256, &ok), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "the decode state does not fit in 64 bits");
  DSC_TRY(dsc_malloc(ctx, dsc_caddz(off_q, qb, &ok), &g->dloop));
  char *dl = (char *)g->dloop;
  g->d_plen = (int32_t *)dl;
  g->d_nd = g->d_plen + B;
  g->d_acc = g->d_nd + B;
  g->d_drafts = g->d_acc + B;
  g->d_state = (int32_t *)(dl + off_s);
  g->d_out = g->d_state + 2 * B;
  g->d_cnt = g->d_out + (int64_t)B * mx;
  g->d_rec = g->d_cnt + B;
  g->d_rng = (int64_t *)(dl + off_r);
  g->d_q = sampling ? (double *)(dl + off_q) : NULL;
  /* host: rng [B, 2], the state copy, then n0, c0, em, cut / tot [B] each, [plen|nd|acc|drafts] */
  int64_t *hr = (int64_t *)malloc(rb + sb + (size_t)B * 4 * 4 + (size_t)B * (3 + K) * 4);
  if (!hr) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the decode state");
  int32_t *hs = (int32_t *)(hr + 2 * B);
  int32_t *n0 = hs + nst, *c0 = n0 + B, *em = c0 + B, *tot = em + B, *ha = tot + B;
  int32_t *cnt = hs + 2 * B + (int64_t)B * mx;
  dsc_status s = DSC_OK;
  for (int32_t b = 0; b < B; ++b) { /* the state after the prefill and its drafts */
    hs[b] = g->alive[b];
    hs[B + b] = g->ngen[b];
    memcpy(hs + 2 * B + (int64_t)b * mx, g->out + (int64_t)b * mx, (size_t)mx * 4);
    cnt[b] = 0;
    tot[b] = g->alive[b] ? g->plen[b] + mx : 0;
    ha[b] = g->plen[b];
    ha[B + b] = g->alive[b] ? g->nd[b] : 0;
    ha[2 * B + b] = 0;
    for (int32_t j = 0; j < K; ++j) ha[3 * B + (int64_t)b * K + j] = j < ha[B + b] ? g->drafts[(int64_t)b * K + j] : 0;
    hr[2 * b] = (int64_t)g->rkey[b];
    hr[2 * b + 1] = (int64_t)g->rctr[b];
  }
  memset(cnt + B, 0, (size_t)GEN_CHUNK * B * 4);
  s = dsc_infer_plan_device(in, tot);
  if (s == DSC_OK) s = dsc_memcpy(ctx, g->d_plen, in->dev, ha, HOST, (size_t)B * (3 + K) * 4);
  if (s == DSC_OK) s = dsc_memcpy(ctx, g->d_state, in->dev, hs, HOST, sb);
  if (s == DSC_OK) s = dsc_memcpy(ctx, g->d_rng, in->dev, hr, HOST, rb);
  if (s == DSC_OK && sampling) s = dsc_memcpy(ctx, g->d_q, in->dev, g->q, HOST, qb);
  dsc_sample_params sp;
  dsc_sample_params_default(&sp);
  sp.temperature = g->o.temperature;
  sp.top_k = g->o.top_k;
  sp.top_p = g->o.top_p;
  step_graph sg = {in->host || env_off("DSC_CUDA_GRAPHS") ? -1 : 0, NULL, {0}};
  int64_t step = 0;
  int32_t forwards = 1; /* the prefill; then the steps any sequence took part in */
  while (s == DSC_OK) {
    /* every step emits >= 1 token per alive row: no row outlives max_new - ngen more steps */
    int32_t n = 0;
    for (int32_t b = 0; b < B; ++b) {
      n0[b] = hs[B + b];
      c0[b] = cnt[b];
      if (hs[b] && mx - hs[B + b] > n) n = mx - hs[B + b];
    }
    if (n == 0) break;
    if (n > GEN_CHUNK) n = GEN_CHUNK;
    for (int32_t j = 0; s == DSC_OK && j < n; ++j, ++step) s = graph_step(g, &sp, &sg, step);
    if (s == DSC_OK) s = dsc_memcpy(ctx, hs, HOST, g->d_state, in->dev, sb); /* the chunk's one wait */
    int edited = 0;
    int32_t ran = 0;
    if (s == DSC_OK) s = spec_chunk_done(g, hs, n0, c0, em, tot, n, &edited, &ran);
    if (s == DSC_OK && edited) s = dsc_memcpy(ctx, g->d_state, in->dev, hs, HOST, sb);
    forwards += ran;
  }
#ifdef DSC_WITH_CUDA
  if (sg.exec) dsc_cuda_graph_destroy(sg.exec);
#endif
  for (int32_t b = 0; b < B; ++b) { /* the results (on error too: what was emitted so far) */
    g->ngen[b] = hs[B + b];
    g->alive[b] = 0;
    memcpy(g->out + (int64_t)b * mx, hs + 2 * B + (int64_t)b * mx, (size_t)mx * 4);
  }
  in->main_forwards = forwards;
  free(hr);
  return s;
}

/* ---- the loop --------------------------------------------------------------------------- */

static dsc_status run(gen *g, int64_t *first /* [2B] host scratch */) {
  const int32_t B = g->in.B, V = g->in.V;
  int64_t *hrow0 = first + B;
  DSC_TRY(setup(g));

  /* prefill: [B, Tp], -1 padded; logits of each prompt's last token */
  const int32_t Tp = g->in.Tp;
  for (int32_t b = 0; b < B; ++b) {
    DSC_TRY(dsc_mla_cache_add_sequence(g->in.cache, b));
    g->alive[b] = 1;
    for (int32_t j = 0; j < Tp; ++j) {
      const int valid = j < g->plen[b];
      g->in.h_ids[(int64_t)b * Tp + j] = valid ? g->prompts[b][j] : 0;
      g->in.h_pos[(int64_t)b * Tp + j] = valid ? j : -1;
    }
    g->in.h_seq[b] = b;
    g->in.h_gidx[b] = (int32_t)((int64_t)b * Tp + g->plen[b] - 1);
  }
  const float *lh;
  DSC_TRY(dsc_infer_main(&g->in, B, Tp, 1, B, &lh));
  for (int32_t b = 0; b < B && !g->stop_all; ++b) {
    int32_t tok;
    DSC_TRY(sample_row(g, b, lh + (int64_t)b * V, &tok));
    if (emit(g, b, tok)) finish(g, b);
  }
  if (g->stop_all)
    for (int32_t b = 0; b < B; ++b) finish(g, b);
  if (g->in.K > 0) {
    /* the MTP prefill: positions 0 .. plen-1 from the prefill's hidden rows b*Tp + i */
    for (int32_t b = 0; b < B; ++b) {
      first[b] = 0;
      hrow0[b] = (int64_t)b * Tp;
    }
    plan_drafts(g);
    DSC_TRY(draft_all(g, first, hrow0, 1, g->in.hn, (int64_t)B * Tp));
  }

  /* decode steps: the pending token + its drafts at P .. P + nd, ragged, -1 padded */
  const int ep = ep_generation(g->in.m);
  if (!ep && !env_off("DSC_DEVICE_DECODE")) {
    int any = 0;
    for (int32_t b = 0; b < B; ++b) any |= g->alive[b];
    return !any ? DSC_OK : g->in.K > 0 ? run_spec_device(g) : run_device(g);
  }
  for (;;) {
    int32_t nb = 0, T = 1;
    for (int32_t b = 0; b < B; ++b)
      if (g->alive[b]) {
        ++nb;
        if (1 + g->nd[b] > T) T = 1 + g->nd[b];
      }
    if (ep) {
      /* expert parallel: a rank whose sequences are all done still computes its experts for
       * the others' tokens, until every rank of the group is done */
      int64_t any = nb > 0;
      DSC_TRY(dsc_model_host_all_reduce(g->in.m, g->in.m->dist->epc, &any, 1, DSC_DTYPE_INT64, DSC_REDUCE_MAX));
      if (!any) break;
      if (nb == 0) {
        DSC_TRY(dsc_infer_idle_step(&g->in));
        continue;
      }
    }
    if (nb == 0) break;
    int32_t r = 0;
    int64_t nr = 0;
    for (int32_t b = 0; b < B; ++b) {
      if (!g->alive[b]) continue;
      const int64_t P = pending_pos(g, b);
      for (int32_t j = 0; j < T; ++j) {
        const int64_t k = (int64_t)r * T + j;
        const int valid = j <= g->nd[b];
        g->in.h_ids[k] = !valid ? 0 : j == 0 ? tok_at(g, b, P) : g->drafts[(int64_t)b * g->in.K + j - 1];
        g->in.h_pos[k] = valid ? (int32_t)(P + j) : -1;
        if (valid) g->in.h_gidx[nr++] = (int32_t)k;
      }
      g->in.h_seq[r] = b;
      g->row[b] = r;
      first[b] = P;
      ++r;
    }
    DSC_TRY(dsc_infer_main(&g->in, nb, T, 0, nr, &lh));
    /* verification in batch order; the logits rows are the valid rows, packed */
    int64_t lrow = 0;
    for (int32_t b = 0; b < B; ++b) {
      if (!g->alive[b]) continue;
      const int64_t base = lrow;
      lrow += 1 + g->nd[b];
      hrow0[b] = (int64_t)g->row[b] * T; /* hn rows of positions P, P+1, .. */
      if (g->stop_all) {
        finish(g, b);
        continue;
      }
      DSC_TRY(verify(g, b, lh + base * V));
      if (g->alive[b]) DSC_TRY(dsc_mla_cache_truncate(g->in.cache, b, first[b] + g->acc[b] + 1));
    }
    if (g->stop_all)
      for (int32_t b = 0; b < B; ++b) finish(g, b);
    if (g->in.K > 0) {
      plan_drafts(g);
      DSC_TRY(draft_all(g, first, hrow0, 0, g->in.hn, (int64_t)nb * T));
    }
  }
  return DSC_OK;
}

/* The fields every call sets alike: model, context, device, sizes, and the held FP8 weights
 * masters to run it with) the inference prefill's. Here, above both. */
dsc_status dsc_model_forward(dsc_model *m, const DLTensor *tokens, DLTensor *logits) {
  static const char *const FNF = "dsc_model_forward";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FNF, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_ids(m, FNF, "tokens", tokens, NULL, 0, 0));
  DSC_TRY(dsc_check_tensor(m->ctx, FNF, "logits", logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shp[3] = {tokens->shape[0], tokens->shape[1], m->cfg.vocab_size};
  DSC_TRY(dsc_check_shape(FNF, "logits", logits, 3, shp));
  DSC_TRY(dsc_check_no_overlap(FNF, "logits", logits, "tokens", tokens));
  return m->frozen ? dsc_model_forward_infer(m, tokens, logits) : dsc_model_forward_logits(m, tokens, logits);
}

dsc_status dsc_model_generate(dsc_model *model, const dsc_generate_options *o, int32_t n_prompts,
                              const int32_t *const *prompts, const int32_t *prompt_lens,
                              int32_t *out_tokens, int32_t *out_lens, dsc_token_fn on_token,
                              void *user, dsc_generate_stats *stats) {
  DSC_CHECK(model != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  dsc_generate_options defaults;
  if (!o) {
    dsc_generate_options_default(&defaults);
    o = &defaults;
  }
  const dsc_status vs = validate(model, o, n_prompts, prompts, prompt_lens, out_tokens, out_lens, stats);
  if (ep_generation(model)) {
    /* every rank of the expert-parallel group must take part in the same steps: they compare
     * first (a rank with bad arguments would otherwise leave the others waiting) */
    char vmsg[1024];
    snprintf(vmsg, sizeof vmsg, "%s", dsc_last_error());
    static const char *const names[3] = {"whether their arguments are valid", "o->speculative",
                                         "whether o->max_new_tokens > 0"};
    const int64_t f[3] = {vs != DSC_OK, vs == DSC_OK ? o->speculative : 0,
                          vs == DSC_OK ? o->max_new_tokens > 0 : 0};
    const dsc_status as = dsc_dist_agree(model->dist->epc, model->ctx, FN, 3, f, names);
    if (vs != DSC_OK) return dsc_error_set(vs, vmsg);
    DSC_TRY(as);
    DSC_CHECK(!o->speculative, DSC_ERR_UNSUPPORTED, FN,
              "o->speculative: MTP speculative decoding is not supported with expert parallelism (the ranks' "
              "draft steps would differ); generate with speculative = 0");
  }
  DSC_TRY(vs);
  const double t0 = now_s();

  gen g;
  memset(&g, 0, sizeof g);
  DSC_TRY(dsc_infer_init(&g.in, model, n_prompts));
  g.o = *o;
  g.o.size = sizeof g.o;
  g.eos = o->eos_token_id == DSC_GENERATE_EOS_FROM_CONFIG ? model->cfg.eos_token_id : o->eos_token_id;
  if (g.eos < -1 || g.eos >= model->cfg.vocab_size) g.eos = -1;
  g.greedy = o->temperature == 0.0f;
  g.in.K = o->speculative ? o->num_draft : 0;
  g.prompts = prompts;
  g.plen = prompt_lens;
  g.out = out_tokens;
  g.on_token = on_token;
  g.user = user;

  if (o->max_new_tokens > 0)
    for (int64_t i = 0; i < (int64_t)n_prompts * o->max_new_tokens; ++i) out_tokens[i] = -1;
  dsc_status s = DSC_OK;
  if (o->max_new_tokens > 0) s = dsc_model_refresh_compute(model); /* BF16: this call's weights */
  if (o->max_new_tokens > 0 && s == DSC_OK) {
    /* fp8: every block matrix to E4M3 once, so that no token re-quantizes a weight (a
     * frozen model holds them already: g.in.hw) */
    if (!model->frozen && model->fp8) {
      s = dsc_model_fp8w_build(model, &g.in.w8);
      g.in.hw = &g.in.w8;
    }
    int64_t *first = (int64_t *)malloc((size_t)(2 * n_prompts) * sizeof(int64_t));
    if (s == DSC_OK)
      s = first ? run(&g, first)
                : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %d rows", (int)n_prompts);
    free(first);
    dsc_model_fp8w_free(model, &g.in.w8);
  }
  for (int32_t b = 0; b < n_prompts; ++b) out_lens[b] = g.ngen ? g.ngen[b] : 0;
  const double dt = now_s() - t0;
  if (stats) {
    int64_t pt = 0;
    for (int32_t b = 0; b < n_prompts; ++b) pt += prompt_lens[b];
    stats->prompt_tokens = pt;
    stats->new_tokens = g.new_tokens;
    stats->drafted = g.drafted;
    stats->accepted = g.accepted;
    stats->main_forwards = g.in.main_forwards;
    stats->seconds = dt;
    stats->tokens_per_s = dt > 0.0 ? (double)g.new_tokens / dt : 0.0;
  }
  release(&g);
  return s;
}

