/*
 * model/model.c -- dsc_model: the configuration, the parameter arena addressed by
 * Hugging Face names, the V3 initialization, and the small helpers the layer math
 * (model_layers.c), training (model_train.c) and inference (generate.c) share.
 *
 * Legend: V vocab, D hidden, I dense intermediate, E routed experts, F expert
 * intermediate, Fs shared intermediate (F * n_shared_experts), H heads, L main layers,
 * Dm MTP depths, blocks b = 0..L-1 main, L..L+Dm-1 the MTP modules' blocks.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/backend.h"
#include "model_internal.h"

/* ------------------------------------------------------------------ layout */

/* The slots held in FP8: every linear of a block (not norms, router or bias). */
int dsc_model_held_slot(int s) {
  return s == S_QA || s == S_QB || s == S_Q || s == S_KVA || s == S_KVB || s == S_O ||
         s == S_MG || s == S_MU || s == S_MD || s == S_EG || s == S_EU || s == S_ED ||
         s == S_SG || s == S_SU || s == S_SD;
}

/* Held weights are storage: the model frees them (model_fp8.c builds them). */
void dsc_model_fp8w_free(dsc_model *m, dsc_model_fp8w *h) {
  if (!h) return;
  if (h->mem) dsc_free(m->ctx, h->mem);
  free(h->q);
  free(h->s);
  free(h->dims);
  memset(h, 0, sizeof *h);
}

/* The planned training activations are model_acts.c's; the model only drops them,
 * through the hook that file set when it planned them. */
void dsc_model_drop_acts(dsc_model *m) {
  if (m->acts && m->acts_free) m->acts_free(m);
}


typedef struct {
  dsc_model *m;
  int64_t cap_storage, cap_named, cap_regions;
  dsc_status st;
  int32_t ep;          /* the routed experts are split this many ways (1: all here) */
  int32_t first_expert; /* global index of this rank's first expert */
} builder;

static const char *const FN_CREATE = "dsc_model_create";

static void *grow(void *p, int64_t *cap, int64_t need, size_t elem) {
  if (need <= *cap) return p;
  int64_t nc = *cap ? *cap * 2 : 64;
  while (nc < need) nc *= 2;
  void *q = realloc(p, (size_t)nc * elem);
  if (q) *cap = nc;
  return q;
}

static void begin_region(builder *b) {
  if (b->st != DSC_OK) return;
  dsc_model *m = b->m;
  void *q = grow(m->regions, &b->cap_regions, m->n_regions + 1, sizeof *m->regions);
  if (!q) {
    b->st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_CREATE, "out of host memory");
    return;
  }
  m->regions = (dsc_model_region *)q;
  m->regions[m->n_regions].offset = m->n_params;
  m->regions[m->n_regions].numel = 0;
  m->n_regions++;
}

/* Append a storage entry (and its named view(s)) to the current region; returns its index. */
static int32_t add_entry(builder *b, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                         int train) {
  if (b->st != DSC_OK) return -1;
  dsc_model *m = b->m;
  void *q = grow(m->storage, &b->cap_storage, m->n_storage + 1, sizeof *m->storage);
  if (!q) {
    b->st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_CREATE, "out of host memory");
    return -1;
  }
  m->storage = (dsc_model_entry *)q;
  dsc_model_entry *e = &m->storage[m->n_storage];
  memset(e, 0, sizeof *e);
  snprintf(e->name, sizeof e->name, "%s", name);
  e->ndim = ndim;
  e->shape[0] = d0, e->shape[1] = d1, e->shape[2] = d2;
  e->numel = d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
  e->strides[ndim - 1] = 1;
  for (int i = ndim - 2; i >= 0; --i) e->strides[i] = e->strides[i + 1] * e->shape[i + 1];
  e->offset = m->n_params;
  e->region = m->n_regions - 1;
  e->decay = ndim >= 2;
  e->train = train;
  e->storage = (int32_t)m->n_storage;
  m->n_params += e->numel;
  m->regions[e->region].numel += e->numel;
  const int32_t idx = (int32_t)m->n_storage++;

  /* named views: a stacked expert tensor [E, ., .] is E checkpoint tensors */
  const char *ex = strstr(name, ".mlp.experts.");
  const int64_t n_named = (ex && ndim == 3) ? d0 : 1;
  q = grow(m->named, &b->cap_named, m->n_named + n_named, sizeof *m->named);
  if (!q) {
    b->st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_CREATE, "out of host memory");
    return -1;
  }
  m->named = (dsc_model_entry *)q;
  for (int64_t k = 0; k < n_named; ++k) {
    dsc_model_entry *v = &m->named[m->n_named++];
    *v = m->storage[idx];
    if (n_named > 1) {
      /* "<prefix>.mlp.experts.<proj>.weight" -> "<prefix>.mlp.experts.<k>.<proj>.weight" */
      const size_t pre = (size_t)(ex - name) + strlen(".mlp.experts.");
      snprintf(v->name, sizeof v->name, "%.*s%lld.%s", (int)pre, name, (long long)(k + b->first_expert),
               name + pre);
      v->ndim = 2;
      v->shape[0] = d1, v->shape[1] = d2, v->shape[2] = 0;
      v->strides[0] = d2, v->strides[1] = 1, v->strides[2] = 0;
      v->numel = d1 * d2;
      v->offset = e->offset + k * d1 * d2;
    }
  }
  return idx;
}

static DLTensor *block_slot(dsc_model_block *k, int s) {
  switch (s) {
    case S_IN_NORM: return &k->input_norm;
    case S_QA: return &k->q_a_proj;
    case S_QA_NORM: return &k->q_a_norm;
    case S_QB: return &k->q_b_proj;
    case S_Q: return &k->q_proj;
    case S_KVA: return &k->kv_a_proj;
    case S_KVA_NORM: return &k->kv_a_norm;
    case S_KVB: return &k->kv_b_proj;
    case S_O: return &k->o_proj;
    case S_POST_NORM: return &k->post_norm;
    case S_MG: return &k->mlp_gate;
    case S_MU: return &k->mlp_up;
    case S_MD: return &k->mlp_down;
    case S_ROUTER: return &k->router;
    case S_BIAS: return &k->bias;
    case S_EG: return &k->ex_gate;
    case S_EU: return &k->ex_up;
    case S_ED: return &k->ex_down;
    case S_SG: return &k->sh_gate;
    case S_SU: return &k->sh_up;
    default: return &k->sh_down;
  }
}

/* Entry index of every block slot (-1: the block has no such weight). */
typedef struct {
  int32_t slot[S_COUNT];
} block_entries;

static void add_block(builder *b, int32_t i, block_entries *be) {
  const dsc_model_config *c = &b->m->cfg;
  const int64_t D = c->hidden_size, H = c->num_attention_heads;
  const int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
  char n[DSC_MODEL_NAME_MAX];
  for (int s = 0; s < S_COUNT; ++s) be->slot[s] = -1;
#define E1(S, suffix, d0) \
  (snprintf(n, sizeof n, "model.layers.%d." suffix, (int)i), be->slot[S] = add_entry(b, n, 1, d0, 0, 0, 1))
#define E2(S, suffix, d0, d1) \
  (snprintf(n, sizeof n, "model.layers.%d." suffix, (int)i), be->slot[S] = add_entry(b, n, 2, d0, d1, 0, 1))
#define E3(S, suffix, d0, d1, d2) \
  (snprintf(n, sizeof n, "model.layers.%d." suffix, (int)i), be->slot[S] = add_entry(b, n, 3, d0, d1, d2, 1))
  E1(S_IN_NORM, "input_layernorm.weight", D);
  if (c->q_lora_rank > 0) {
    E2(S_QA, "self_attn.q_a_proj.weight", c->q_lora_rank, D);
    E1(S_QA_NORM, "self_attn.q_a_layernorm.weight", c->q_lora_rank);
    E2(S_QB, "self_attn.q_b_proj.weight", H * dqk, c->q_lora_rank);
  } else {
    E2(S_Q, "self_attn.q_proj.weight", H * dqk, D);
  }
  E2(S_KVA, "self_attn.kv_a_proj_with_mqa.weight", c->kv_lora_rank + c->qk_rope_head_dim, D);
  E1(S_KVA_NORM, "self_attn.kv_a_layernorm.weight", c->kv_lora_rank);
  E2(S_KVB, "self_attn.kv_b_proj.weight", H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank);
  E2(S_O, "self_attn.o_proj.weight", D, H * c->v_head_dim);
  E1(S_POST_NORM, "post_attention_layernorm.weight", D);
  if (dsc_model_is_moe_block(c, i)) {
    const int64_t E = c->n_routed_experts, F = c->moe_intermediate_size;
    const int64_t El = E / b->ep; /* the stacks hold this rank's experts; the router all E */
    E2(S_ROUTER, "mlp.gate.weight", E, D);
    if (c->topk_method == DSC_MOE_TOPK_NOAUX_TC) {
      snprintf(n, sizeof n, "model.layers.%d.mlp.gate.e_score_correction_bias", (int)i);
      be->slot[S_BIAS] = add_entry(b, n, 1, E, 0, 0, 0);
    }
    E3(S_EG, "mlp.experts.gate_proj.weight", El, F, D);
    E3(S_EU, "mlp.experts.up_proj.weight", El, F, D);
    E3(S_ED, "mlp.experts.down_proj.weight", El, D, F);
    if (c->n_shared_experts > 0) {
      const int64_t Fs = F * c->n_shared_experts;
      E2(S_SG, "mlp.shared_experts.gate_proj.weight", Fs, D);
      E2(S_SU, "mlp.shared_experts.up_proj.weight", Fs, D);
      E2(S_SD, "mlp.shared_experts.down_proj.weight", D, Fs);
    }
  } else {
    const int64_t I = c->intermediate_size;
    E2(S_MG, "mlp.gate_proj.weight", I, D);
    E2(S_MU, "mlp.up_proj.weight", I, D);
    E2(S_MD, "mlp.down_proj.weight", D, I);
  }
#undef E1
#undef E2
#undef E3
}

/* A DLTensor view of storage entry e over `base` (params, grads or moments). */
static DLTensor entry_view(const dsc_model *m, const dsc_model_entry *e, float *base) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = base ? base + e->offset : NULL; /* NULL: a planned model without its arena */
  t.device = m->ctx->device;
  t.dtype = dsc_dtype_to_dlpack(DSC_DTYPE_FLOAT32);
  t.ndim = e->ndim;
  t.shape = (int64_t *)e->shape;
  t.strides = (int64_t *)e->strides;
  return t;
}

DLTensor dsc_model_storage_view(const dsc_model *m, int64_t e, float *base) {
  return entry_view(m, &m->storage[e], base);
}

DLTensor dsc_model_moment_view(const dsc_model *m, const dsc_model_entry *e, int which) {
  DLTensor t = entry_view(m, e, m->params);
  t.data = (char *)(which ? m->exp_avg_sq : m->exp_avg) + (size_t)e->offset * dsc_dtype_size(m->mom_dtype);
  t.dtype = dsc_dtype_to_dlpack(m->mom_dtype);
  return t;
}

DLTensor dsc_model_view(const dsc_model *m, void *data, dsc_dtype dt, int ndim, const int64_t *shape,
                        int64_t *shape_store, int64_t *stride_store) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device = m->ctx->device;
  t.dtype = dsc_dtype_to_dlpack(dt);
  t.ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    shape_store[i] = shape[i];
    stride_store[i] = s;
    s *= shape[i];
  }
  t.shape = shape_store;
  t.strides = stride_store;
  return t;
}

dsc_status dsc_model_alloc(dsc_model *m, size_t bytes, void **p) {
  return dsc_malloc(m->ctx, bytes ? bytes : 1, p);
}

void dsc_model_bind_views(dsc_model *m) {
  float *const base = m->wc ? m->wc : m->params; /* the weights the passes read */
  for (int32_t b = 0; b < m->n_blocks; ++b) {
    dsc_model_block *k = &m->blocks[b];
    const int32_t *slot = m->block_entries + (int64_t)b * S_COUNT;
    for (int s = 0; s < S_COUNT; ++s) {
      DLTensor *t = block_slot(k, s);
      memset(t, 0, sizeof *t);
      if (slot[s] >= 0) {
        *t = entry_view(m, &m->storage[slot[s]], base);
        if (m->frozen && dsc_model_held_slot(s)) t->data = NULL; /* in m->held only */
      }
    }
    k->region = slot[S_IN_NORM] >= 0 ? m->storage[slot[S_IN_NORM]].region : -1;
  }
  for (int32_t d = 0; d < m->n_mtp; ++d) {
    dsc_model_mtp *t = &m->mtp[d];
    const int32_t *e = m->mtp_entries[d];
    t->enorm = entry_view(m, &m->storage[e[0]], base);
    t->hnorm = entry_view(m, &m->storage[e[1]], base);
    t->eh_proj = entry_view(m, &m->storage[e[2]], base);
    t->head_norm = entry_view(m, &m->storage[e[3]], base);
    t->region = m->storage[e[0]].region;
  }
  m->embed = entry_view(m, &m->storage[m->emb_entry], base);
  m->final_norm = entry_view(m, &m->storage[m->norm_entry], base);
  m->head = entry_view(m, &m->storage[m->head_entry], base);
}

dsc_status dsc_model_check_not_frozen(const dsc_model *m, const char *fn, const char *what) {
  DSC_CHECK(!m->frozen, DSC_ERR_INVALID_ARGUMENT, fn,
            "model: frozen for FP8 inference (dsc_model_freeze_fp8): its block matrices are held "
            "in E4M3 only, and %s needs their float32 masters (load the checkpoint without "
            "freezing to train it)",
            what);
  return DSC_OK;
}

/* ------------------------------------------------------------------ init */

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in (0, 1): 53 random bits, never 0. */
static double uniform01(uint64_t *s) { return ((double)(splitmix64(s) >> 11) + 0.5) * 0x1.0p-53; }

/* Fill entry e of a host buffer: matrices N(0, std) (Box-Muller), norms 1, the bias 0.
 * skip: the entry holds elements skip.. of its tensor's stream (a rank's share of an expert
 * stack): they get exactly the values one process holding the whole stack gives them. */
static void init_entry(const dsc_model_entry *e, float *host, float std, uint64_t seed, int64_t skip) {
  if (!e->train) {
    memset(host, 0, (size_t)e->numel * sizeof(float));
  } else if (e->ndim == 1) {
    for (int64_t i = 0; i < e->numel; ++i) host[i] = 1.0f;
  } else {
    /* one stream per tensor: the init of a tensor does not depend on the others */
    uint64_t s = seed;
    for (const char *p = e->name; *p; ++p) s = (s ^ (uint64_t)(unsigned char)*p) * 0x100000001B3ull;
    /* element g comes from pair g / 2 (two draws per pair; splitmix64 adds a constant per draw) */
    s += (uint64_t)(skip / 2) * 2u * 0x9E3779B97F4A7C15ull;
    int64_t i = 0;
    int odd = (int)(skip & 1);
    while (i < e->numel) {
      const double r = sqrt(-2.0 * log(uniform01(&s))), a = 6.283185307179586 * uniform01(&s);
      if (!odd) host[i++] = (float)(std * r * cos(a));
      odd = 0;
      if (i < e->numel) host[i++] = (float)(std * r * sin(a));
    }
  }
}


/* ------------------------------------------------------------------ distributed */

int dsc_model_expert_name(const char *name, long *layer, long *expert) {
  static const char prefix[] = "model.layers.";
  if (strncmp(name, prefix, sizeof prefix - 1) != 0) return 0;
  char *end = NULL;
  const long i = strtol(name + sizeof prefix - 1, &end, 10);
  if (!end || strncmp(end, ".mlp.experts.", 13) != 0) return 0;
  const char *p = end + 13;
  if (*p < '0' || *p > '9') return 0; /* the stacked storage name ("experts.gate_proj") */
  const long e = strtol(p, &end, 10);
  if (!end || *end != '.') return 0;
  *layer = i;
  *expert = e;
  return 1;
}

int dsc_model_entry_is_expert(const dsc_model *m, int64_t e) {
  const int32_t b = m->storage[e].region; /* regions: [embed] [layer 0] ... */
  (void)b;
  const char *n = m->storage[e].name;
  return strstr(n, ".mlp.experts.") != NULL;
}

int dsc_model_name_other_rank(const dsc_model *m, const char *name) {
  long layer = 0, e = 0;
  if (!m->dist || !dsc_model_expert_name(name, &layer, &e)) return 0;
  return e < m->dist->first_expert || e >= (long)m->dist->first_expert + m->dist->n_local_experts;
}

static void dist_free(dsc_model_dist *d, int32_t n_blocks) {
  if (!d) return;
  if (d->ex)
    for (int32_t b = 0; b < n_blocks; ++b) dsc_ep_exchange_destroy(d->ex[b]);
  free(d->ex);
  if (d->req && d->grad) {
    /* reductions still in flight (a failed step): wait for them before their buffers go */
    for (int64_t i = 0; i < d->n_req; ++i) (void)dsc_comm_wait(d->grad, d->req[i]);
  }
  free(d->req);
  free(d->launched);
  dsc_comm_destroy(d->grad);
  dsc_comm_destroy(d->epc);
  dsc_comm_destroy(d->dpg);
  free(d);
}

/* The distributed layout of opt->comm: every rank's settings compared first (so that all
 * ranks fail alike instead of some waiting for the others), then checked, then the model's
 * own communicators made (collective). */
static dsc_status dist_setup(dsc_context *ctx, const char *fn, const dsc_model_config *cfg,
                             const dsc_model_options *o, dsc_model_dist **out) {
  *out = NULL;
  dsc_comm *comm = o->comm;
  const int32_t W = dsc_comm_size(comm), rank = dsc_comm_rank(comm);
  const int32_t E = cfg->n_routed_experts;
  /* unset: ep = W / dp when dp is given, else W (1 without experts); dp = W / ep */
  const int32_t ep = o->expert_parallel > 0 ? o->expert_parallel
                     : o->data_parallel > 0 ? (W % o->data_parallel == 0 ? W / o->data_parallel : 0)
                                            : (E > 0 ? W : 1);
  const int32_t dp = o->data_parallel > 0 ? o->data_parallel : (ep > 0 && W % ep == 0 ? W / ep : 0);
  DLDevice cdev;
  DSC_TRY(dsc_comm_device(comm, &cdev));
  const int dev_ok = cdev.device_type == ctx->device.device_type && cdev.device_id == ctx->device.device_id;
  char *json = NULL;
  size_t json_n = 0;
  DSC_TRY(dsc_model_config_render(fn, cfg, NULL, 0, &json, &json_n));
  const uint64_t cfg_hash = dsc_dist_hash(json, json_n, 0x5EEDull);
  free(json);
  static const char *const names[] = {
      "the world size", "the model config (config.json)", "n_routed_experts", "num_hidden_layers",
      "hidden_size", "vocab_size", "expert_parallel", "data_parallel", "fp8", "moments_dtype", "init",
      "seed", "check_every", "overlap", "ep_micro_batches", "compute_dtype", "the device type",
      "whether the context's device is the communicator's", "the deepseek_c version"};
  const int64_t fields[] = {W, (int64_t)cfg_hash, E, cfg->num_hidden_layers, cfg->hidden_size, cfg->vocab_size,
                            ep, dp, o->fp8, o->moments_dtype, o->init, (int64_t)o->seed, o->check_every,
                            o->overlap, o->ep_micro_batches, o->compute_dtype, ctx->device.device_type, dev_ok,
                            DSC_VERSION_MAJOR * 10000 + DSC_VERSION_MINOR * 100 + DSC_VERSION_PATCH};
  DSC_TRY(dsc_dist_agree(comm, ctx, fn, (int32_t)(sizeof fields / sizeof fields[0]), fields, names));
  /* now every rank sees the same values and reaches the same verdict */
  DSC_CHECK(dev_ok, DSC_ERR_DEVICE, fn,
            "opt->comm: the communicator's device (%s:%d) is not the context's (%s:%d)",
            cdev.device_type == kDLCPU ? "cpu" : "cuda", (int)cdev.device_id,
            ctx->device.device_type == kDLCPU ? "cpu" : "cuda", (int)ctx->device.device_id);
  DSC_CHECK(ep >= 1 && dp >= 1 && (int64_t)ep * dp == W, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->expert_parallel x opt->data_parallel: expected the world size %d, got %d x %d", (int)W, (int)ep,
            (int)dp);
  DSC_CHECK(E > 0 || ep == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->expert_parallel: expected 1 for a model without routed experts, got %d", (int)ep);
  DSC_CHECK(E == 0 || E % ep == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->expert_parallel: the %d routed experts cannot be spread evenly over %d ranks (expected a "
            "divisor of n_routed_experts)",
            (int)E, (int)ep);
  {
    /* Node-limited routing: with group-limited top-k (each token keeps the experts of its
     * topk_group best groups of n_group), groups that align with the expert-parallel ranks
     * bound the ranks a token's rows travel to: n_group % ep == 0 (each rank holds whole
     * groups) gives at most topk_group ranks, ep % n_group == 0 (a group spans ep / n_group
     * ranks: a node of GPUs, as DeepSeek-V3's 8 groups of 32 experts over 8 nodes) at most
     * topk_group * ep / n_group. Groups that straddle ranks unevenly bound nothing. */
    const int32_t G = cfg->topk_method == DSC_MOE_TOPK_GREEDY ? 1 : cfg->n_group;
    const int limited = E > 0 && G > 1 && cfg->topk_group < G;
    DSC_CHECK(!limited || ep <= 1 || G % ep == 0 || ep % G == 0, DSC_ERR_INVALID_ARGUMENT, fn,
              "cfg->n_group: expected a multiple or a divisor of opt->expert_parallel = %d (group-limited "
              "routing, topk_group %d < n_group, limits each token to the ranks of its groups only when the "
              "groups align with the ranks), got %d",
              (int)ep, (int)cfg->topk_group, (int)G);
  }
  DSC_CHECK(o->check_every >= 0, DSC_ERR_INVALID_ARGUMENT, fn, "opt->check_every: expected >= 0, got %d",
            (int)o->check_every);
  DSC_CHECK(o->overlap == 0 || o->overlap == 1, DSC_ERR_INVALID_ARGUMENT, fn, "opt->overlap: expected 0 or 1, got %d",
            (int)o->overlap);
  DSC_CHECK(o->ep_micro_batches == 1 || o->ep_micro_batches == 2, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->ep_micro_batches: expected 1 or 2, got %d", (int)o->ep_micro_batches);
  dsc_model_dist *d = (dsc_model_dist *)calloc(1, sizeof *d);
  if (!d) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  d->world = W;
  d->rank = rank;
  d->ep = ep;
  d->dp = dp;
  d->ep_rank = rank % ep;
  d->dp_rank = rank / ep;
  d->n_local_experts = E / ep;
  d->first_expert = d->ep_rank * (E / ep);
  d->check_every = o->check_every;
  d->overlap = o->overlap;
  d->micro_batches = ep > 1 ? o->ep_micro_batches : 1;
  dsc_status st = dsc_comm_dup(comm, &d->grad);
  if (st == DSC_OK) st = dsc_comm_split(comm, d->dp_rank, rank, &d->epc);
  if (st == DSC_OK) st = dsc_comm_split(comm, d->ep_rank, rank, &d->dpg);
  if (st != DSC_OK) {
    char msg[768];
    snprintf(msg, sizeof msg, "%s", dsc_last_error());
    dist_free(d, 0);
    return dsc_error(st, fn, "opt->comm: could not make the model's communicators: %s", msg);
  }
  *out = d;
  return DSC_OK;
}

/* ------------------------------------------------------------------ create / destroy */

void dsc_model_options_default(dsc_model_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->seed = 0;
  o->init = 1;
  o->fp8 = 0;
  o->moments_dtype = DSC_DTYPE_FLOAT32;
  o->comm = NULL;
  o->expert_parallel = 0;
  o->data_parallel = 0;
  o->check_every = 1;
  o->overlap = 1;
  o->ep_micro_batches = 1;
  o->compute_dtype = DSC_DTYPE_FLOAT32;
}


void dsc_model_destroy(dsc_model *m) {
  if (!m) return;
  dsc_model_drop_acts(m);
  dsc_context *ctx = m->ctx;
  if (m->params) dsc_free(ctx, m->params);
  if (m->wc) dsc_free(ctx, m->wc);
  if (m->grads) dsc_free(ctx, m->grads);
  if (m->exp_avg) dsc_free(ctx, m->exp_avg);
  if (m->exp_avg_sq) dsc_free(ctx, m->exp_avg_sq);
  if (m->scratch) dsc_free(ctx, m->scratch);
  free(m->storage);
  free(m->named);
  free(m->regions);
  free(m->blocks);
  free(m->mtp);
  free(m->load);
  free(m->touched);
  free(m->block_entries);
  dsc_model_fp8w_free(m, &m->held);
  free(m->held_of);
  dist_free(m->dist, m->n_blocks);
  free(m->cfg_extra);
  for (int64_t i = 0; i < m->n_warnings; ++i) free(m->warnings[i]);
  free(m->warnings);
  free(m);
}

dsc_status dsc_model_create_json(dsc_context *ctx, const char *config_json, size_t len,
                                 const dsc_model_options *opt, dsc_model **out) {
  static const char *const FN = "dsc_model_create_json";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  dsc_model_config cfg;
  dsc_model_config_default(&cfg);
  char *extra = NULL;
  DSC_TRY(dsc_model_config_parse(FN, config_json, len, &cfg, &extra));
  dsc_model *m = NULL;
  dsc_status st = dsc_model_create(ctx, &cfg, opt, &m);
  if (st != DSC_OK) {
    free(extra);
    return st;
  }
  m->cfg_extra = extra;
  *out = m;
  return DSC_OK;
}

dsc_status dsc_model_config_json(const dsc_model *m, char *out, size_t cap, size_t *out_len) {
  static const char *const FN = "dsc_model_config_json";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  char *text = NULL;
  size_t n = 0;
  DSC_TRY(dsc_model_config_render(FN, &m->cfg, m->cfg_extra, 0, &text, &n));
  dsc_status st = dsc_model_config_copy_out(FN, text, n, out, cap, out_len);
  free(text);
  return st;
}

dsc_status dsc_model_add_warning(dsc_model *m, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  dsc_log(m->ctx, DSC_LOG_WARN, "%s", buf);
  char **w = (char **)realloc(m->warnings, (size_t)(m->n_warnings + 1) * sizeof *w);
  if (!w) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_model_load", "out of host memory");
  m->warnings = w;
  const size_t n = strlen(buf) + 1;
  char *copy = (char *)malloc(n);
  if (!copy) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_model_load", "out of host memory");
  memcpy(copy, buf, n);
  m->warnings[m->n_warnings++] = copy;
  return DSC_OK;
}

int64_t dsc_model_num_load_warnings(const dsc_model *m) { return m ? m->n_warnings : 0; }

const char *dsc_model_load_warning(const dsc_model *m, int64_t i) {
  return m && i >= 0 && i < m->n_warnings ? m->warnings[i] : NULL;
}

/* "2.44 TiB" */
static const char *fmt_bytes(double b, char *buf, size_t n) {
  static const char *const unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024.0 && u < 6) b /= 1024.0, ++u;
  snprintf(buf, n, u ? "%.3g %s" : "%.0f %s", b, unit[u]);
  return buf;
}

/* Fail fast when the float32 parameters (and the host tables describing them) cannot fit
 * in the memory of the device they go to, instead of trying to allocate or touching pages:
 * host RAM on the CPU, the device's memory on CUDA. A machine whose size is unknown is not
 * checked (the allocator decides). */
static dsc_status check_fits(dsc_context *ctx, const char *fn, int64_t n_params, int64_t n_tables) {
  int ok = 1;
  const size_t param_bytes = dsc_cbytes(n_params, sizeof(float), &ok);
  const size_t table_bytes = dsc_cbytes(n_tables, sizeof(dsc_model_entry), &ok);
  char a[32], b[32], t[64];
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, fn,
            "cfg: the model needs more than 2^63 bytes of float32 parameters (%lld parameters)",
            (long long)n_params);
  double have = 0.0;
  const char *what = "RAM";
  if (dsc_ctx_is_cuda(ctx)) {
#ifdef DSC_WITH_CUDA
    size_t free_b = 0, total_b = 0;
    if (dsc_cuda_mem_info(ctx, &free_b, &total_b) == DSC_OK) have = (double)total_b;
    dsc_clear_error();
    what = "device memory";
    /* the host tables stay on the host: compare the parameters alone */
    DSC_CHECK(have <= 0.0 || (double)param_bytes <= have, DSC_ERR_OUT_OF_MEMORY, fn,
              "cfg: the model needs %s of float32 parameters, CUDA device %d has %s of %s",
              fmt_bytes((double)param_bytes, a, sizeof a), (int)ctx->device.device_id,
              fmt_bytes(have, b, sizeof b), what);
#endif
    return DSC_OK;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return DSC_OK;
  have = (double)pages * (double)page;
  const double need = (double)param_bytes + (double)table_bytes;
  t[0] = '\0';
  if (table_bytes > param_bytes / 8)
    snprintf(t, sizeof t, " and %s of tensor tables", fmt_bytes((double)table_bytes, b, sizeof b));
  DSC_CHECK(need <= have, DSC_ERR_OUT_OF_MEMORY, fn,
            "cfg: the model needs %s of float32 parameters%s, this machine has %s of %s",
            fmt_bytes((double)param_bytes, a, sizeof a), t, fmt_bytes(have, b, sizeof b), what);
  return DSC_OK;
}

static dsc_status check_options(const char *fn, const dsc_model_options *opt, dsc_model_options *o) {
  dsc_model_options_default(o);
  if (opt) {
    DSC_CHECK(opt->size >= sizeof(dsc_model_options), DSC_ERR_INVALID_ARGUMENT, fn,
              "opt: expected size = %zu (dsc_model_options_default), got %zu", sizeof(dsc_model_options),
              opt->size);
    *o = *opt;
  }
  DSC_CHECK(o->fp8 == 0 || o->fp8 == 1, DSC_ERR_INVALID_ARGUMENT, fn, "opt->fp8: expected 0 or 1, got %d",
            (int)o->fp8);
  DSC_CHECK(o->moments_dtype == DSC_DTYPE_FLOAT32 || o->moments_dtype == DSC_DTYPE_BFLOAT16,
            DSC_ERR_INVALID_ARGUMENT, fn, "opt->moments_dtype: expected FLOAT32 or BFLOAT16, got %d",
            (int)o->moments_dtype);
  DSC_CHECK(o->compute_dtype == DSC_DTYPE_FLOAT32 || o->compute_dtype == DSC_DTYPE_BFLOAT16,
            DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->compute_dtype: expected DSC_DTYPE_FLOAT32 (%d) or DSC_DTYPE_BFLOAT16 (%d), got %d",
            (int)DSC_DTYPE_FLOAT32, (int)DSC_DTYPE_BFLOAT16, (int)o->compute_dtype);
  return DSC_OK;
}

dsc_status dsc_model_plan(dsc_context *ctx, const char *FN, const dsc_model_config *cfg,
                          const dsc_model_options *opt, dsc_model **out) {
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  /* everything is checked before the first allocation: the config's ranges and totals,
   * the options, and whether the parameters can fit in this machine at all */
  DSC_TRY(dsc_model_config_validate(cfg));
  dsc_model_options o;
  DSC_TRY(check_options(FN, opt, &o));
  dsc_model_dist *dist = NULL;
  if (o.comm) DSC_TRY(dist_setup(ctx, FN, cfg, &o, &dist));
  const int32_t ep = dist ? dist->ep : 1;
  int64_t want_params = 0, want_named = 0, want_entries = 0, want_maxr = 0;
  dsc_status pst = dsc_model_config_sizes_ep(cfg, ep, &want_params, &want_named, &want_entries, &want_maxr);
  if (pst == DSC_OK) pst = check_fits(ctx, FN, want_params, want_named + want_entries);
  dsc_model *m = pst == DSC_OK ? (dsc_model *)calloc(1, sizeof *m) : NULL;
  if (pst == DSC_OK && !m) pst = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  if (pst != DSC_OK) {
    dist_free(dist, 0);
    return pst;
  }
  m->dist = dist;
  m->ctx = ctx;
  m->cfg = *cfg;
  m->cfg.size = sizeof m->cfg;
  m->fp8 = o.fp8;
  m->mom_dtype = (dsc_dtype)o.moments_dtype;
  m->compute_dtype = o.compute_dtype;
  m->n_layers = cfg->num_hidden_layers;
  m->n_mtp = cfg->num_nextn_predict_layers; /* <= DSC_MODEL_MAX_MTP (validated) */
  m->n_blocks = m->n_layers + m->n_mtp;
  const dsc_model_config *c = &m->cfg;
  const int64_t V = c->vocab_size, D = c->hidden_size;

  dsc_status st = DSC_OK;
  block_entries *be = (block_entries *)calloc((size_t)m->n_blocks, sizeof *be);
  int32_t(*mtp_e)[4] = (int32_t(*)[4])calloc((size_t)(m->n_mtp ? m->n_mtp : 1), sizeof *mtp_e);
  m->blocks = (dsc_model_block *)calloc((size_t)m->n_blocks, sizeof *m->blocks);
  m->mtp = (dsc_model_mtp *)calloc((size_t)(m->n_mtp ? m->n_mtp : 1), sizeof *m->mtp);
  m->load = (int64_t *)calloc((size_t)m->n_blocks * (size_t)(c->n_routed_experts ? c->n_routed_experts : 1),
                              sizeof *m->load);
  if (!be || !mtp_e || !m->blocks || !m->mtp || !m->load) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");

  builder b = {m, 0, 0, 0, st, ep, dist ? dist->first_expert : 0};
  char n[DSC_MODEL_NAME_MAX];
  begin_region(&b);
  const int32_t emb_e = add_entry(&b, "model.embed_tokens.weight", 2, V, D, 0, 1);
  for (int32_t i = 0; i < m->n_layers && b.st == DSC_OK; ++i) {
    begin_region(&b);
    add_block(&b, i, &be[i]);
    m->blocks[i].is_moe = dsc_model_is_moe_block(c, i);
  }
  begin_region(&b);
  const int32_t norm_e = add_entry(&b, "model.norm.weight", 1, D, 0, 0, 1);
  int32_t head_e = emb_e;
  if (!c->tie_word_embeddings) {
    begin_region(&b);
    head_e = add_entry(&b, "lm_head.weight", 2, V, D, 0, 1);
  }
  for (int32_t d = 0; d < m->n_mtp && b.st == DSC_OK; ++d) {
    const int32_t i = m->n_layers + d;
    begin_region(&b);
    snprintf(n, sizeof n, "model.layers.%d.enorm.weight", (int)i);
    mtp_e[d][0] = add_entry(&b, n, 1, D, 0, 0, 1);
    snprintf(n, sizeof n, "model.layers.%d.hnorm.weight", (int)i);
    mtp_e[d][1] = add_entry(&b, n, 1, D, 0, 0, 1);
    snprintf(n, sizeof n, "model.layers.%d.eh_proj.weight", (int)i);
    mtp_e[d][2] = add_entry(&b, n, 2, D, 2 * D, 0, 1);
    add_block(&b, i, &be[i]);
    m->blocks[i].is_moe = dsc_model_is_moe_block(c, i);
    snprintf(n, sizeof n, "model.layers.%d.shared_head.norm.weight", (int)i);
    mtp_e[d][3] = add_entry(&b, n, 1, D, 0, 0, 1);
  }
  st = b.st;
  int64_t maxr = 0;
  for (int32_t r = 0; st == DSC_OK && r < m->n_regions; ++r)
    maxr = m->regions[r].numel > maxr ? m->regions[r].numel : maxr;
  /* the layout and the up-front count (which the memory check used) must agree */
  if (st == DSC_OK && (m->n_params != want_params || m->n_named != want_named ||
                       m->n_storage != want_entries || maxr != want_maxr))
    st = dsc_error(DSC_ERR_INTERNAL, FN,
                   "layout of %lld parameters, %lld named / %lld stored tensors, largest region %lld; "
                   "dsc_model_config_sizes said %lld, %lld / %lld, %lld",
                   (long long)m->n_params, (long long)m->n_named, (long long)m->n_storage,
                   (long long)maxr, (long long)want_params, (long long)want_named,
                   (long long)want_entries, (long long)want_maxr);
  m->scratch_numel = maxr;

  /* MLA and routing parameters from the config */
  if (st == DSC_OK) {
    dsc_mla_params *p = &m->mla;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->hidden = c->hidden_size;
    p->n_heads = c->num_attention_heads;
    p->q_lora_rank = c->q_lora_rank;
    p->kv_lora_rank = c->kv_lora_rank;
    p->qk_nope_head_dim = c->qk_nope_head_dim;
    p->qk_rope_head_dim = c->qk_rope_head_dim;
    p->v_head_dim = c->v_head_dim;
    p->rms_norm_eps = c->rms_norm_eps;
    p->rope = c->rope;
    p->rope.size = sizeof p->rope;
    p->fp8 = m->fp8; /* attention projections as FP8 GEMMs (the ops quantize the masters) */
    st = dsc_rope_softmax_scale(&p->rope, c->qk_nope_head_dim + c->qk_rope_head_dim, &p->softmax_scale);
    dsc_moe_route_params_default(&m->route);
    m->route.top_k = c->num_experts_per_tok;
    m->route.n_group = c->topk_method == DSC_MOE_TOPK_GREEDY ? 1 : c->n_group;
    m->route.topk_group = c->topk_method == DSC_MOE_TOPK_GREEDY ? 1 : c->topk_group;
    m->route.scoring = c->scoring_func;
    m->route.topk_method = c->topk_method;
    m->route.norm_topk_prob = c->norm_topk_prob;
    m->route.routed_scaling_factor = c->routed_scaling_factor;
  }

  if (st == DSC_OK) {
    m->touched = (uint8_t *)calloc((size_t)(m->n_storage ? m->n_storage : 1), 1);
    m->block_entries = (int32_t *)malloc((size_t)m->n_blocks * S_COUNT * sizeof(int32_t));
    if (!m->touched || !m->block_entries) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  if (st == DSC_OK) {
    for (int32_t k = 0; k < m->n_blocks; ++k) memcpy(m->block_entries + k * S_COUNT, be[k].slot, sizeof be[k].slot);
    m->emb_entry = emb_e;
    m->head_entry = head_e;
    m->norm_entry = norm_e;
    memcpy(m->mtp_entries, mtp_e, sizeof(int32_t) * 4 * (size_t)m->n_mtp);
    m->arena_numel = m->n_params;
  }
  if (st == DSC_OK && dist) {
    /* an exchange per MoE block (expert parallel), bookkeeping of the bucket reductions */
    dist->ex = (dsc_ep_exchange **)calloc((size_t)m->n_blocks, sizeof *dist->ex);
    dist->req = (dsc_comm_req **)calloc((size_t)m->n_regions * 4 + 1, sizeof *dist->req);
    if (dist->req) dist->n_req = (int64_t)m->n_regions * 4;
    dist->launched = (uint8_t *)calloc((size_t)m->n_regions + 1, 1);
    if (!dist->ex || !dist->req || !dist->launched) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
    for (int32_t k = 0; k < m->n_blocks && st == DSC_OK && dist->ep > 1; ++k)
      if (m->blocks[k].is_moe) st = dsc_ep_exchange_create(dist->epc, ctx, c->n_routed_experts, &dist->ex[k]);
  }
  free(be);
  free(mtp_e);
  if (st != DSC_OK) {
    dsc_model_destroy(m);
    return st;
  }
  *out = m;
  return DSC_OK;
}

dsc_status dsc_model_materialize(dsc_model *m, const dsc_model_options *opt) {
  static const char *const FN = "dsc_model_create";
  dsc_context *ctx = m->ctx;
  const dsc_model_config *c = &m->cfg;
  dsc_model_options o;
  DSC_TRY(check_options(FN, opt, &o));
  const int64_t maxr = m->scratch_numel;
  /* the arenas: parameters, scratch (sizes checked by dsc_model_plan) */
  DSC_TRY(dsc_model_alloc(m, (size_t)m->n_params * sizeof(float), (void **)&m->params));
  DSC_TRY(dsc_model_alloc(m, (size_t)maxr * sizeof(float), (void **)&m->scratch));
  if (m->compute_dtype == DSC_DTYPE_BFLOAT16)
    DSC_TRY(dsc_model_alloc(m, (size_t)m->n_params * sizeof(float), (void **)&m->wc));
  dsc_model_bind_views(m);

  /* initialize on the host, region by region, then copy to the device */
  dsc_status st = DSC_OK;
  float *host = (float *)malloc((size_t)(maxr ? maxr : 1) * sizeof(float));
  if (!host) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  const DLDevice cpu = {kDLCPU, 0};
  for (int32_t r = 0; r < m->n_regions && st == DSC_OK; ++r) {
    const dsc_model_region *rg = &m->regions[r];
    if (o.init) {
      for (int64_t e = 0; e < m->n_storage; ++e) {
        const dsc_model_entry *en = &m->storage[e];
        if (en->region != r) continue;
        const int64_t skip = dsc_model_entry_is_expert(m, e) && m->dist
                                 ? (int64_t)m->dist->first_expert * en->shape[1] * en->shape[2]
                                 : 0;
        init_entry(en, host + (en->offset - rg->offset), c->initializer_range, o.seed, skip);
      }
    } else {
      memset(host, 0, (size_t)rg->numel * sizeof(float));
    }
    st = dsc_memcpy(ctx, m->params + rg->offset, ctx->device, host, cpu, (size_t)rg->numel * sizeof(float));
  }
  free(host);
  if (st == DSC_OK) st = dsc_model_refresh_compute(m);
  return st;
}

dsc_status dsc_model_create(dsc_context *ctx, const dsc_model_config *cfg, const dsc_model_options *opt,
                            dsc_model **out) {
  static const char *const FN = "dsc_model_create";
  dsc_model *m = NULL;
  DSC_TRY(dsc_model_plan(ctx, FN, cfg, opt, &m));
  dsc_status st = dsc_model_materialize(m, opt);
  if (st != DSC_OK) {
    dsc_model_destroy(m);
    return st;
  }
  *out = m;
  return DSC_OK;
}

/* ------------------------------------------------------------------ accessors */

dsc_status dsc_model_parallel_info(const dsc_model *m, dsc_model_parallel *info) {
  static const char *const FN = "dsc_model_parallel_info";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(info != NULL && info->size >= sizeof(dsc_model_parallel), DSC_ERR_INVALID_ARGUMENT, FN,
            "info: expected a dsc_model_parallel with size = %zu", sizeof(dsc_model_parallel));
  const dsc_model_dist *d = m->dist;
  info->world = d ? d->world : 1;
  info->rank = d ? d->rank : 0;
  info->expert_parallel = d ? d->ep : 1;
  info->data_parallel = d ? d->dp : 1;
  info->ep_rank = d ? d->ep_rank : 0;
  info->dp_rank = d ? d->dp_rank : 0;
  info->n_local_experts = d ? d->n_local_experts : m->cfg.n_routed_experts;
  info->first_expert = d ? d->first_expert : 0;
  return DSC_OK;
}

dsc_status dsc_model_comm_stats(dsc_model *m, int32_t reset, dsc_comm_stats *stats) {
  static const char *const FN = "dsc_model_comm_stats";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(stats != NULL && stats->size >= sizeof(dsc_comm_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected a dsc_comm_stats with size = %zu", sizeof(dsc_comm_stats));
  const size_t sz = stats->size;
  memset(stats, 0, sizeof *stats);
  stats->size = sz;
  if (!m->dist) return DSC_OK;
  dsc_comm *cs[3] = {m->dist->grad, m->dist->epc, m->dist->dpg};
  for (int i = 0; i < 3; ++i) {
    dsc_comm_add_stats(cs[i], stats);
    if (reset) dsc_comm_reset_stats(cs[i]);
  }
  return DSC_OK;
}

dsc_status dsc_model_get_config(const dsc_model *m, dsc_model_config *cfg) {
  static const char *const FN = "dsc_model_get_config";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(cfg != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "cfg: expected a pointer, got NULL");
  *cfg = m->cfg;
  return DSC_OK;
}

dsc_context *dsc_model_context(const dsc_model *m) { return m ? m->ctx : NULL; }

int64_t dsc_model_num_parameters(const dsc_model *m) { return m ? m->n_params : 0; }

int64_t dsc_model_num_tensors(const dsc_model *m) { return m ? m->n_named : 0; }

static dsc_status check_index(const dsc_model *m, const char *fn, int64_t index) {
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "model: expected a model, got NULL");
  DSC_CHECK(index >= 0 && index < m->n_named, DSC_ERR_INVALID_ARGUMENT, fn,
            "index: expected 0..%lld (dsc_model_num_tensors - 1), got %lld", (long long)m->n_named - 1,
            (long long)index);
  return DSC_OK;
}

/* Frozen models: the E4M3 codes (which 0) or block scales (which 1) of named entry e when
 * it is held, else a view with data NULL. A named expert is matrix g of its stack. */
static DLTensor held_view(const dsc_model *m, const dsc_model_entry *e, int which) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  const int32_t slot = m->frozen ? m->held_of[e->storage] : -1;
  if (slot < 0) return t;
  const dsc_model_entry *st = &m->storage[e->storage];
  const int64_t N = e->shape[e->ndim - 2], K = e->shape[e->ndim - 1];
  const int64_t g = (e->offset - st->offset) / (N * K);
  if (which == 0) {
    t = entry_view(m, e, m->params);
    t.data = (uint8_t *)m->held.q[slot].data + g * N * K;
    t.dtype = dsc_dtype_to_dlpack(DSC_DTYPE_FLOAT8_E4M3FN);
    return t;
  }
  const DLTensor *s = &m->held.s[slot]; /* [Nb, Kb] or [G, Nb, Kb] */
  t = *s;
  t.ndim = 2;
  t.shape = s->shape + (s->ndim - 2);
  t.strides = s->strides + (s->ndim - 2);
  t.data = (float *)s->data + g * t.shape[0] * t.shape[1];
  return t;
}

dsc_status dsc_model_tensor(const dsc_model *m, int64_t index, const char **name, DLTensor *view) {
  static const char *const FN = "dsc_model_tensor";
  DSC_TRY(check_index(m, FN, index));
  const dsc_model_entry *e = &m->named[index];
  if (name) *name = e->name;
  if (view) {
    *view = held_view(m, e, 0);
    if (!view->data) *view = entry_view(m, e, m->params);
  }
  return DSC_OK;
}

dsc_status dsc_model_compute_tensor(dsc_model *m, int64_t index, DLTensor *view) {
  static const char *const FN = "dsc_model_compute_tensor";
  DSC_TRY(check_index(m, FN, index));
  DSC_CHECK(view != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "view: expected a pointer, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "the compute copy"));
  DSC_TRY(dsc_model_refresh_compute(m));
  *view = entry_view(m, &m->named[index], m->wc ? m->wc : m->params);
  return DSC_OK;
}

dsc_status dsc_model_tensor_scale(const dsc_model *m, int64_t index, DLTensor *view) {
  static const char *const FN = "dsc_model_tensor_scale";
  DSC_TRY(check_index(m, FN, index));
  DSC_CHECK(view != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "view: expected a pointer, got NULL");
  *view = held_view(m, &m->named[index], 1);
  DSC_CHECK(view->data != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "index: %s is not held in FP8 (%s)", m->named[index].name,
            m->frozen ? "float32 in a frozen model: embedding, head, norms, router, bias, eh_proj"
                      : "the model is not frozen: call dsc_model_freeze_fp8");
  return DSC_OK;
}

int32_t dsc_model_is_frozen(const dsc_model *m) { return m ? m->frozen : 0; }

dsc_status dsc_model_weight_bytes(const dsc_model *m, size_t *bytes) {
  static const char *const FN = "dsc_model_weight_bytes";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(bytes != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "bytes: expected a pointer, got NULL");
  *bytes = (size_t)m->arena_numel * sizeof(float) + (m->frozen ? m->held.bytes : 0) +
           (m->wc ? (size_t)m->n_params * sizeof(float) : 0); /* BF16 compute: the rounded copy */
  return DSC_OK;
}

dsc_status dsc_model_find_tensor(const dsc_model *m, const char *name, int64_t *index) {
  static const char *const FN = "dsc_model_find_tensor";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(name != NULL && index != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "name, index: expected pointers");
  for (int64_t i = 0; i < m->n_named; ++i) {
    if (!strcmp(m->named[i].name, name)) {
      *index = i;
      return DSC_OK;
    }
  }
  return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "name: no tensor %s in this model", name);
}

dsc_status dsc_model_grad(dsc_model *m, int64_t index, DLTensor *view) {
  static const char *const FN = "dsc_model_grad";
  DSC_TRY(check_index(m, FN, index));
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "a gradient"));
  DSC_CHECK(view != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "view: expected a pointer, got NULL");
  DSC_CHECK(m->grads != NULL && m->have_grads, DSC_ERR_INVALID_ARGUMENT, FN,
            "model: no gradients yet (call dsc_model_loss_and_grad first)");
  DSC_CHECK(m->named[index].train, DSC_ERR_INVALID_ARGUMENT, FN,
            "index: %s is not trained by gradient (the aux-loss-free bias)", m->named[index].name);
  *view = entry_view(m, &m->named[index], m->grads);
  return DSC_OK;
}

/* Allocate the AdamW moments (zeros) if needed. */
dsc_status dsc_model_ensure_moments(dsc_model *m) {
  const size_t bytes = (size_t)m->n_params * dsc_dtype_size(m->mom_dtype);
  /* zero bits are 0.0 in both dtypes: clear as float32 words (rounded up) */
  const int64_t words = (int64_t)((bytes + sizeof(float) - 1) / sizeof(float));
  if (!m->exp_avg) {
    DSC_TRY(dsc_model_alloc(m, (size_t)words * sizeof(float), &m->exp_avg));
    DSC_TRY(dsc_model_fill_zero(m, (float *)m->exp_avg, words));
  }
  if (!m->exp_avg_sq) {
    DSC_TRY(dsc_model_alloc(m, (size_t)words * sizeof(float), &m->exp_avg_sq));
    DSC_TRY(dsc_model_fill_zero(m, (float *)m->exp_avg_sq, words));
  }
  return DSC_OK;
}

dsc_status dsc_model_optimizer_state(dsc_model *m, int64_t index, int32_t which, DLTensor *view) {
  static const char *const FN = "dsc_model_optimizer_state";
  DSC_TRY(check_index(m, FN, index));
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "optimizer state"));
  DSC_CHECK(which == 0 || which == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "which: expected 0 (exp_avg) or 1 (exp_avg_sq), got %d", (int)which);
  DSC_CHECK(view != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "view: expected a pointer, got NULL");
  DSC_CHECK(m->named[index].train, DSC_ERR_INVALID_ARGUMENT, FN,
            "index: %s has no optimizer state (not trained by gradient)", m->named[index].name);
  DSC_TRY(dsc_model_ensure_moments(m));
  *view = dsc_model_moment_view(m, &m->named[index], which);
  return DSC_OK;
}

int64_t dsc_model_step(const dsc_model *m) { return m ? m->step : 0; }

dsc_status dsc_model_set_step(dsc_model *m, int64_t step) {
  static const char *const FN = "dsc_model_set_step";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(step >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "step: expected >= 0, got %lld", (long long)step);
  m->step = step;
  return DSC_OK;
}

void dsc_model_mla_weights(const dsc_model *m, int32_t b, dsc_mla_weights *w) {
  const dsc_model_block *k = &m->blocks[b];
  memset(w, 0, sizeof *w);
  w->size = sizeof *w;
  w->q_a_proj = k->q_a_proj.data ? &k->q_a_proj : NULL;
  w->q_a_layernorm = k->q_a_norm.data ? &k->q_a_norm : NULL;
  w->q_b_proj = k->q_b_proj.data ? &k->q_b_proj : NULL;
  w->q_proj = k->q_proj.data ? &k->q_proj : NULL;
  w->kv_a_proj_with_mqa = &k->kv_a_proj;
  w->kv_a_layernorm = &k->kv_a_norm;
  w->kv_b_proj = &k->kv_b_proj;
  w->o_proj = &k->o_proj;
}

void dsc_model_moe_weights(const dsc_model *m, int32_t b, dsc_moe_layer_weights *w) {
  const dsc_model_block *k = &m->blocks[b];
  memset(w, 0, sizeof *w);
  w->size = sizeof *w;
  w->gate = &k->router;
  w->bias = k->bias.data ? &k->bias : NULL;
  w->experts_gate = &k->ex_gate;
  w->experts_up = &k->ex_up;
  w->experts_down = &k->ex_down;
  w->shared_gate = k->sh_gate.data ? &k->sh_gate : NULL;
  w->shared_up = k->sh_up.data ? &k->sh_up : NULL;
  w->shared_down = k->sh_down.data ? &k->sh_down : NULL;
  w->fp8 = m->fp8; /* routed and shared experts as FP8 GEMMs */
}

/* ------------------------------------------------------------------ device helpers */

/* The expert-parallel exchange of block b (NULL: one process, or ep 1): part of the model's
 * state, read by the layer math (model_layers.c, model_train.c) and FP8 inference (model_fp8.c). */
const dsc_moe_exchange *dsc_model_exchange(const dsc_model *m, int32_t b) {
  return m->dist && m->dist->ex && m->dist->ex[b] ? dsc_ep_exchange_hooks(m->dist->ex[b]) : NULL;
}

dsc_status dsc_model_copy2d(dsc_model *m, int64_t rows, size_t row_bytes, const void *src, size_t src_pitch,
                            void *dst, size_t dst_pitch) {
  return DSC_DISPATCH(copy2d, m->ctx, rows, row_bytes, src, src_pitch, dst, dst_pitch);
}

dsc_status dsc_model_scale(dsc_model *m, float *x, int64_t n, float alpha) {
  if (n == 0) return DSC_OK;
  return DSC_DISPATCH(scale_f32, m->ctx, n, x, alpha);
}

dsc_status dsc_model_round_copy(dsc_model *m, const float *src, float *dst, int64_t n);

dsc_status dsc_model_round(dsc_model *m, float *x, int64_t n) {
  return m->wc ? dsc_model_round_copy(m, x, x, n) : DSC_OK;
}

dsc_status dsc_model_round_copy(dsc_model *m, const float *src, float *dst, int64_t n) {
  if (n == 0) return DSC_OK;
  return DSC_DISPATCH(round_bf16_f32, m->ctx, n, src, dst);
}

int32_t dsc_model_math_enter(dsc_model *m) {
  const int32_t saved = m->ctx->math_mode;
  if (m->wc) m->ctx->math_mode = DSC_MATH_BF16_OPERANDS;
  return saved;
}

void dsc_model_math_leave(dsc_model *m, int32_t saved) { m->ctx->math_mode = saved; }

dsc_status dsc_model_refresh_compute(dsc_model *m) {
  return m->wc ? dsc_model_round_copy(m, m->params, m->wc, m->n_params) : DSC_OK;
}

dsc_status dsc_model_fill_zero(dsc_model *m, float *x, int64_t n) {
  if (n == 0) return DSC_OK;
  return DSC_DISPATCH(zero, m->ctx, (size_t)n * sizeof(float), x); /* stream-ordered: no wait */
}

/* tokens / targets: int32 [B, T] on the model's device, ids in [0, V) (targets may also be
 * `skip`). */
dsc_status dsc_model_check_ids(dsc_model *m, const char *fn, const char *arg, const DLTensor *t,
                               const DLTensor *like, int64_t skip, int use_skip) {
  DSC_TRY(dsc_check_tensor(m->ctx, fn, arg, t, DSC_DT(DSC_DTYPE_INT32)));
  if (like) {
    DSC_TRY(dsc_check_same_shape(fn, arg, t, "tokens", like));
  } else {
    DSC_TRY(dsc_check_ndim(fn, arg, t, 2, 2, "(B, T)"));
    DSC_CHECK(t->shape[0] >= 1 && t->shape[1] >= 1, DSC_ERR_SHAPE, fn,
              "%s: expected a non-empty [B, T] batch, got [%lld, %lld]", arg, (long long)t->shape[0],
              (long long)t->shape[1]);
    DSC_CHECK(t->shape[1] <= m->cfg.max_position_embeddings, DSC_ERR_SHAPE, fn,
              "%s: expected at most max_position_embeddings = %d tokens per row, got %lld", arg,
              (int)m->cfg.max_position_embeddings, (long long)t->shape[1]);
  }
  const int64_t n = dsc_numel(t);
  /* fn and arg are string literals at every caller: a deferred failure keeps the pointers */
  const dsc_index_site site = {fn, arg, NULL, use_skip ? DSC_IDX_MSG_VOCAB_OR_SKIP : DSC_IDX_MSG_VOCAB};
  return dsc_index_check(m->ctx, &site, n, 0, dsc_data(t), 0, m->cfg.vocab_size, use_skip ? skip : 0);
}
