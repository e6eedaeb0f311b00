/*
 * model/model_io.c -- checkpoints of a dsc_model in the Hugging Face layout:
 *
 *   dir/config.json            every config field under its HF key, pretty-printed with
 *                              sorted keys (loadable by transformers' DeepseekV3Config)
 *   dir/model.safetensors      every tensor of dsc_model_tensor (HF names, float32,
 *                              experts one by one), metadata {"format": "pt"}
 *   dir/optimizer.safetensors  (optimizer != 0 and step > 0) "step" int64 [] and
 *                              "exp_avg.<name>", "exp_avg_sq.<name>" per trained tensor,
 *                              metadata {"format": "deepseek_c.adamw", "step": "<n>"}
 *
 * Saving replaces the directory's checkpoint as a whole (checkpoint_dir.c). With P the
 * parent of dir and B its name:
 *   1. lock P/.B.lock (flock, exclusive; the file is created once and kept), then recover
 *      and remove the leftovers of interrupted saves (below);
 *   2. mkdir P/.B.tmp-<pid>-<rand> (the new generation) and write config.json,
 *      model.safetensors and optimizer.safetensors into it, each fsync'ed -- this file is
 *      the one writer of all three;
 *   3. carry every entry of dir the save does not own into it: regular files as hard
 *      links (copies where the file system refuses a link), symlinks recreated, folders
 *      rebuilt the same way; the directory's mode (and owner, for root) copied; fsync it;
 *   4. swap: renameat2(RENAME_EXCHANGE) of the new generation and dir, then fsync P. dir
 *      is now the new generation, P/.B.tmp-... the old one. (First save: a plain rename.)
 *   5. retire the old generation: its checkpoint files are removed, any entry the new dir
 *      lacks (a file created while the save ran) is moved in, the rest (hard links of
 *      what the new dir holds) removed; then the lock is released.
 * The save owns, at dir's top level: config.json, every *.safetensors (model shards,
 * optimizer.safetensors) and model.safetensors.index.json -- exactly what dsc_model_load
 * reads; they are replaced, and old ones the new checkpoint lacks (a stale optimizer
 * file, the shards of a Hub checkpoint) disappear with the old generation. Everything
 * else (vocab.txt, history.json, plots/, README.md, tokenizer files) is carried over and
 * never lost; it is not part of the atomicity guarantee (an edit made while a save runs may
 * land in either generation; a file created meanwhile is moved over in step 5).
 *
 * Guarantee: after a kill (or power loss) at any instant, dir holds either the complete
 * old checkpoint or the complete new one, optimizer state included, for any reader --
 * transformers too -- since dir only ever changes by the one atomic swap. A failed save
 * (ENOSPC, EFBIG, EACCES, ...) is DSC_ERR_IO naming the file and the reason; it leaves the
 * old checkpoint untouched and removes its generation.
 *
 * Fallback: where RENAME_EXCHANGE is refused (EINVAL/ENOSYS/EOPNOTSUPP/EPERM: file systems
 * and kernels without it) or DSC_CHECKPOINT_NO_EXCHANGE=1 is set (for tests), step 4 is
 * rename dir -> P/.B.old-<pid>-<rand>, then the new generation -> dir. Killed between the
 * two, dir is missing until the next dsc_model_load or dsc_model_save of it renames the
 * complete old generation back (readers other than this library see no checkpoint then).
 *
 * Recovery (at the start of every save, and of a load that finds leftovers), under the
 * exclusive lock, so every leftover belongs to a dead save: a missing dir with a
 * P/.B.old-* beside it gets that back; every other P/.B.tmp-* / P/.B.old-* is retired into
 * dir as in step 5 (its unrelated files moved in where dir lacks them, never dropped).
 * Temporary files of the writer before this protocol (dir/<owned>.tmp.<pid>) are dropped.
 *
 * Concurrency: saves of one dir run one at a time (the exclusive lock); a load holds the
 * lock shared while it reads, so it waits for a save in progress and never reads half of
 * one generation and half of the other. A load never creates the lock file (read-only
 * checkpoints load as before); where it is missing no save of this protocol ever ran.
 *
 * Limits (each an error naming the directory, the old checkpoint untouched): P must be
 * writable (the lock and the new generation live there), dir must be writable, must not be
 * a mount point and must not hold one (a rename cannot cross file systems). The swap gives
 * dir a new inode: processes whose working directory is inside the old one (a shell that
 * cd'ed there) see the old, deleted generation -- the saving process itself, if its working
 * directory was dir, is moved to the new one.
 *
 * Loading reads config.json and every *.safetensors shard in dir (optimizer.safetensors
 * aside), sorted by name, all open at once. Weights may be float32, bfloat16, float16,
 * float64, or float8_e4m3fn with a "<prefix>weight_scale_inv" multiplier per 128x128
 * block (DeepSeek-V3's released checkpoints), all widened to float32 on the host. The
 * MTP modules' copies of the embedding and head (model.layers.{L+d}.embed_tokens /
 * shared_head.head) are accepted and ignored. Anything else is checked: a missing,
 * unexpected, duplicated, misshapen or non-finite tensor is DSC_ERR_FORMAT naming the
 * tensor and the file.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint_dir.h"
#include "fp8_format.h"
#include "internal.h"
#include "model_internal.h"
#include "numeric.h"

#define FP8_BLOCK 128
static const char *const BIAS_SUFFIX = "e_score_correction_bias"; /* not trained by AdamW */
static const char *const OPT_FILE = "optimizer.safetensors";

/* ================================================================== files */

/* dir + "/" + name, malloc'ed (NULL when out of memory). */
static char *path_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  int slash = a > 0 && dir[a - 1] != '/';
  char *p = (char *)malloc(a + (size_t)slash + b + 1);
  if (!p) return NULL;
  memcpy(p, dir, a);
  if (slash) p[a] = '/';
  memcpy(p + a + (size_t)slash, name, b + 1);
  return p;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* ================================================================== save */

/* Host views of n device tensors: on CPU the tensors themselves; on CUDA copies into one
 * host buffer (*host, owned by the caller). Each t[i] keeps its shape and strides. */
static dsc_status to_host(const char *fn, dsc_context *ctx, int64_t n, DLTensor *t, float **host) {
  *host = NULL;
  size_t total = 0; /* bytes: float32 weights, float32 or bfloat16 moments */
  for (int64_t i = 0; i < n; ++i)
    if (t[i].device.device_type != kDLCPU)
      total += (size_t)dsc_numel(&t[i]) * dsc_dtype_size(dsc_dtype_from_dlpack(t[i].dtype));
  if (total == 0) return DSC_OK;
  char *h = (char *)malloc(total);
  if (!h) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory (%zu bytes) for the copy", total);
  size_t off = 0;
  const DLDevice cpu = {kDLCPU, 0};
  for (int64_t i = 0; i < n; ++i) {
    if (t[i].device.device_type == kDLCPU) continue;
    const size_t k = (size_t)dsc_numel(&t[i]) * dsc_dtype_size(dsc_dtype_from_dlpack(t[i].dtype));
    dsc_status st = dsc_memcpy(ctx, h + off, cpu, dsc_data(&t[i]), t[i].device, k);
    if (st != DSC_OK) {
      free(h);
      return st;
    }
    t[i].data = h + off;
    t[i].byte_offset = 0;
    t[i].device = cpu;
    off += k;
  }
  *host = (float *)h;
  return DSC_OK;
}

/* Which tensors a file of the checkpoint holds (every one for a one-process save; a rank's
 * shard of a distributed one: see shard_has). */
typedef int (*tensor_filter)(const dsc_model *m, const char *name);
static int all_tensors(const dsc_model *m, const char *name) {
  (void)m, (void)name;
  return 1;
}

/* Every tensor of dsc_model_tensor that `keep` keeps; a frozen model's E4M3 matrices are
 * followed by their "<name>_scale_inv" block scales (the layout dsc_model_load dequantizes). */
static dsc_status save_weights_f(const char *fn, dsc_model *m, const char *path, tensor_filter keep);
static dsc_status save_weights(const char *fn, dsc_model *m, const char *path) {
  return save_weights_f(fn, m, path, all_tensors);
}
static dsc_status save_weights_f(const char *fn, dsc_model *m, const char *path, tensor_filter keep) {
  const int64_t n = dsc_model_num_tensors(m), cap = 2 * n + 1;
  DLTensor *t = (DLTensor *)calloc((size_t)cap, sizeof *t);
  const DLTensor **tp = (const DLTensor **)calloc((size_t)cap, sizeof *tp);
  const char **names = (const char **)calloc((size_t)cap, sizeof *names);
  char **owned = (char **)calloc((size_t)cap, sizeof *owned); /* the _scale_inv names */
  float *host = NULL;
  int64_t k = 0;
  dsc_status st = (t && tp && names && owned) ? DSC_OK
                                              : dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  for (int64_t i = 0; i < n && st == DSC_OK; ++i) {
    st = dsc_model_tensor(m, i, &names[k], &t[k]);
    if (st != DSC_OK) break;
    if (!keep(m, names[k])) continue;
    tp[k] = &t[k];
    ++k;
    if (dsc_tensor_dtype(&t[k - 1]) != DSC_DTYPE_FLOAT8_E4M3FN) continue;
    const size_t len = strlen(names[k - 1]) + sizeof "_scale_inv";
    owned[k] = (char *)malloc(len);
    if (!owned[k]) {
      st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
      break;
    }
    snprintf(owned[k], len, "%s_scale_inv", names[k - 1]);
    names[k] = owned[k];
    st = dsc_model_tensor_scale(m, i, &t[k]);
    tp[k] = &t[k];
    ++k;
  }
  if (st == DSC_OK) st = to_host(fn, dsc_model_context(m), k, t, &host);
  static const char *const meta[] = {"format", "pt"};
  if (st == DSC_OK) st = dsc_safetensors_save(path, k, names, tp, 1, meta);
  free(host);
  for (int64_t i = 0; owned && i < cap; ++i) free(owned[i]);
  free(owned);
  free(names);
  free(tp);
  free(t);
  return st;
}

static dsc_status save_optimizer_f(const char *fn, dsc_model *m, const char *path, tensor_filter keep);
static dsc_status save_optimizer(const char *fn, dsc_model *m, const char *path) {
  return save_optimizer_f(fn, m, path, all_tensors);
}
static dsc_status save_optimizer_f(const char *fn, dsc_model *m, const char *path, tensor_filter keep) {
  const int64_t n = dsc_model_num_tensors(m);
  /* trained tensors: all but the correction biases */
  int64_t *idx = (int64_t *)calloc((size_t)(n ? n : 1), sizeof *idx);
  if (!idx) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  int64_t nt = 0;
  size_t name_bytes = 0;
  dsc_status st = DSC_OK;
  for (int64_t i = 0; i < n && st == DSC_OK; ++i) {
    const char *name;
    st = dsc_model_tensor(m, i, &name, NULL);
    if (st == DSC_OK && !ends_with(name, BIAS_SUFFIX) && keep(m, name)) {
      idx[nt++] = i;
      name_bytes += 2 * strlen(name) + sizeof "exp_avg." + sizeof "exp_avg_sq.";
    }
  }
  const int64_t total = 1 + 2 * nt;
  DLTensor *t = (DLTensor *)calloc((size_t)total, sizeof *t);
  const DLTensor **tp = (const DLTensor **)calloc((size_t)total, sizeof *tp);
  const char **names = (const char **)calloc((size_t)total, sizeof *names);
  char *strings = (char *)malloc(name_bytes + 1);
  float *host = NULL;
  if (st == DSC_OK && !(t && tp && names && strings))
    st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  int64_t step = dsc_model_step(m);
  if (st == DSC_OK) {
    /* "step": int64 scalar, shape [] */
    t[0].data = &step;
    t[0].device.device_type = kDLCPU;
    t[0].dtype = dsc_dtype_to_dlpack(DSC_DTYPE_INT64);
    t[0].ndim = 0;
    names[0] = "step";
    tp[0] = &t[0];
    char *s = strings;
    for (int which = 0; which < 2 && st == DSC_OK; ++which) {
      for (int64_t k = 0; k < nt && st == DSC_OK; ++k) {
        const int64_t j = 1 + which * nt + k;
        const char *name;
        st = dsc_model_tensor(m, idx[k], &name, NULL);
        if (st == DSC_OK) st = dsc_model_optimizer_state(m, idx[k], which, &t[j]);
        if (st != DSC_OK) break;
        int w = sprintf(s, "%s%s", which ? "exp_avg_sq." : "exp_avg.", name);
        names[j] = s;
        s += w + 1;
        tp[j] = &t[j];
      }
    }
  }
  /* "step" is already on the host: to_host skips it */
  if (st == DSC_OK) st = to_host(fn, dsc_model_context(m), total, t, &host);
  char step_str[32];
  snprintf(step_str, sizeof step_str, "%lld", (long long)step);
  const char *const meta[] = {"format", "deepseek_c.adamw", "step", step_str};
  if (st == DSC_OK) st = dsc_safetensors_save(path, total, names, tp, 2, meta);
  free(host);
  free(strings);
  free(names);
  free(tp);
  free(t);
  free(idx);
  return st;
}

/* A write into the new generation failed: say which file of which checkpoint, and that the
 * old one is untouched (the generation is removed by dsc_ckpt_end). */
static dsc_status write_failed(const char *fn, dsc_status st, const char *dir, const char *file) {
  char inner[768];
  snprintf(inner, sizeof inner, "%s", dsc_last_error());
  return dsc_error(st, fn, "dir: cannot write %s of the checkpoint '%s' (the previous checkpoint there is "
                   "untouched, no temporary file is left): %s", file, dir, inner);
}


/* ---- distributed saves: every rank its shard, one atomic swap ----
 * An expert-parallel model (ep > 1) is saved as ep shards, model-0000q-of-0000N.safetensors
 * written by the ranks of the first data-parallel replica (dp_rank 0): shard q holds rank
 * q's routed experts, shard 1 also everything replicated; optimizer-0000q-of-0000N.safetensors
 * their moments; model.safetensors.index.json (written by rank 0) maps every tensor to its
 * shard. Tensors are addressed by their Hugging Face names, so the checkpoint loads at any
 * world size, and in one process. A data-parallel model (ep 1) is saved by rank 0 alone in
 * the one-process layout. The files are written into the one new generation rank 0 begins
 * (the directory must be on a file system every rank sees), every rank reports, and rank 0
 * swaps the generation in only when every file is complete: a failure anywhere leaves the
 * old checkpoint untouched, on every rank the same error. */

static int shard_has(const dsc_model *m, const char *name) {
  long layer = 0, e = 0;
  if (dsc_model_expert_name(name, &layer, &e)) return 1; /* this rank's experts */
  return m->dist->rank == 0;                             /* replicated: rank 0's copy */
}

/* bytes of host memory through the communicator's device: broadcast from root */
static dsc_status host_bcast(dsc_model *m, dsc_comm *c, void *buf, size_t bytes, int32_t root) {
  dsc_context *ctx = dsc_model_context(m);
  DLDevice dev;
  DSC_TRY(dsc_context_get_device(ctx, &dev));
  if (dev.device_type == kDLCPU) return dsc_comm_broadcast_raw(c, ctx, buf, (int64_t)bytes, root);
  void *d = NULL;
  const DLDevice host = {kDLCPU, 0};
  dsc_status st = dsc_malloc(ctx, bytes, &d);
  if (st == DSC_OK) st = dsc_memcpy(ctx, d, dev, buf, host, bytes);
  if (st == DSC_OK) st = dsc_comm_broadcast_raw(c, ctx, d, (int64_t)bytes, root);
  if (st == DSC_OK) st = dsc_comm_synchronize(c, ctx);
  if (st == DSC_OK) st = dsc_memcpy(ctx, buf, host, d, dev, bytes);
  if (d) dsc_free(ctx, d);
  return st;
}

static dsc_status host_gather(dsc_model *m, dsc_comm *c, const void *x, void *y, size_t bytes) {
  dsc_context *ctx = dsc_model_context(m);
  DLDevice dev;
  DSC_TRY(dsc_context_get_device(ctx, &dev));
  if (dev.device_type == kDLCPU) return dsc_comm_all_gather_raw(c, ctx, x, y, (int64_t)bytes);
  const size_t W = (size_t)dsc_comm_size(c);
  void *d = NULL;
  const DLDevice host = {kDLCPU, 0};
  dsc_status st = dsc_malloc(ctx, bytes * (W + 1), &d);
  if (st == DSC_OK) st = dsc_memcpy(ctx, (char *)d + bytes * W, dev, x, host, bytes);
  if (st == DSC_OK) st = dsc_comm_all_gather_raw(c, ctx, (char *)d + bytes * W, d, (int64_t)bytes);
  if (st == DSC_OK) st = dsc_comm_synchronize(c, ctx);
  if (st == DSC_OK) st = dsc_memcpy(ctx, y, host, d, dev, bytes * W);
  if (d) dsc_free(ctx, d);
  return st;
}

/* A JSON string of s (names are plain ASCII; quotes and backslashes escaped anyway). */
static int json_str(char *out, size_t cap, const char *s) {
  size_t k = 0;
  if (k < cap) out[k] = '"';
  ++k;
  for (const char *p = s; *p; ++p) {
    if (*p == '"' || *p == '\\') {
      if (k < cap) out[k] = '\\';
      ++k;
    }
    if (k < cap) out[k] = *p;
    ++k;
  }
  if (k < cap) out[k] = '"';
  ++k;
  return (int)k;
}

/* model.safetensors.index.json of an ep-shard checkpoint (rank 0: it knows every name: its
 * own experts' names with the expert index moved to each shard). */
static dsc_status write_index(const char *fn, dsc_model *m, const char *path) {
  const dsc_model_dist *d = m->dist;
  const int64_t n = dsc_model_num_tensors(m);
  size_t cap = 256 + (size_t)n * (size_t)d->ep * 160, used = 0;
  char *buf = (char *)malloc(cap);
  if (!buf) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    DLTensor v;
    if (dsc_model_tensor(m, i, &name, &v) != DSC_OK) continue;
    long layer = 0, e = 0;
    const int expert = dsc_model_expert_name(name, &layer, &e);
    size_t b = (size_t)dsc_numel(&v) * dsc_dtype_size(dsc_tensor_dtype(&v));
    if (dsc_model_is_frozen(m) && dsc_tensor_dtype(&v) == DSC_DTYPE_FLOAT8_E4M3FN) {
      DLTensor sc;
      if (dsc_model_tensor_scale(m, i, &sc) == DSC_OK) b += (size_t)dsc_numel(&sc) * sizeof(float);
    }
    total += (int64_t)b * (expert ? d->ep : 1);
  }
  used += (size_t)snprintf(buf + used, cap - used, "{\n  \"metadata\": {\"total_size\": %lld},\n  \"weight_map\": {",
                           (long long)total);
  int first = 1;
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    DLTensor v;
    if (dsc_model_tensor(m, i, &name, &v) != DSC_OK) continue;
    long layer = 0, e = 0;
    const int expert = dsc_model_expert_name(name, &layer, &e);
    const int held = dsc_model_is_frozen(m) && dsc_tensor_dtype(&v) == DSC_DTYPE_FLOAT8_E4M3FN;
    for (int32_t q = 0; q < (expert ? d->ep : 1); ++q) {
      char nm[DSC_MODEL_NAME_MAX + 32];
      if (expert) {
        const char *rest = strstr(name, ".mlp.experts.") + 13;
        rest = strchr(rest, '.');
        snprintf(nm, sizeof nm, "model.layers.%ld.mlp.experts.%ld%s", layer, e + (long)q * d->n_local_experts, rest);
      } else {
        snprintf(nm, sizeof nm, "%s", name);
      }
      for (int sc = 0; sc < 1 + held; ++sc) {
        char full[DSC_MODEL_NAME_MAX + 48];
        snprintf(full, sizeof full, "%s%s", nm, sc ? "_scale_inv" : "");
        if (cap - used < 512) {
          cap *= 2;
          char *nb = (char *)realloc(buf, cap);
          if (!nb) {
            free(buf);
            return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
          }
          buf = nb;
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s\n    ", first ? "" : ",");
        used += (size_t)json_str(buf + used, cap - used, full);
        used += (size_t)snprintf(buf + used, cap - used, ": \"model-%05d-of-%05d.safetensors\"",
                                 (int)(expert ? q + 1 : 1), (int)d->ep);
        first = 0;
      }
    }
  }
  used += (size_t)snprintf(buf + used, cap - used, "\n  }\n}\n");
  const dsc_status st = dsc_ckpt_write_file(fn, path, buf, used);
  free(buf);
  return st;
}

enum { SAVE_MSG = 640, SAVE_PATH = 4096 };

typedef struct {
  int64_t status;
  char msg[SAVE_MSG];
} save_report;

static dsc_status save_dist(dsc_model *m, const char *dir, int32_t optimizer, const char *json, size_t json_n) {
  static const char *const FN = "dsc_model_save";
  dsc_model_dist *d = m->dist;
  dsc_comm *c = d->grad;
  const int32_t W = d->world, me = d->rank;
  const int writer = d->ep > 1 ? d->dp_rank == 0 : me == 0;
  /* 1. rank 0 begins the generation and tells everyone where it is */
  dsc_ckpt_txn t;
  memset(&t, 0, sizeof t);
  struct {
    int64_t status;
    char msg[SAVE_MSG];
    char gen[SAVE_PATH];
  } head;
  memset(&head, 0, sizeof head);
  int began = 0;
  if (me == 0) {
    dsc_status st = dsc_ckpt_begin(FN, dir, &t);
    head.status = st;
    if (st != DSC_OK) snprintf(head.msg, sizeof head.msg, "%s", dsc_last_error());
    else if (strlen(t.gen) >= sizeof head.gen) {
      head.status = DSC_ERR_IO;
      snprintf(head.msg, sizeof head.msg, "%s: dir: path too long for a distributed save", FN);
    } else {
      began = 1;
      snprintf(head.gen, sizeof head.gen, "%s", t.gen);
    }
  }
  dsc_status st = host_bcast(m, c, &head, sizeof head, 0);
  if (st != DSC_OK) {
    if (began) dsc_ckpt_end(&t);
    return st;
  }
  if (head.status != DSC_OK) {
    if (began) dsc_ckpt_end(&t);
    return dsc_error((dsc_status)head.status, FN, "rank 0 could not begin the checkpoint: %s", head.msg);
  }
  /* 2. every writer its files, into that generation */
  save_report mine;
  memset(&mine, 0, sizeof mine);
  if (writer) {
    char file[64];
    const int q = d->ep > 1 ? d->ep_rank : 0;
    if (d->ep > 1) snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", q + 1, (int)d->ep);
    else snprintf(file, sizeof file, "model.safetensors");
    char *path = path_join(head.gen, file);
    st = path ? (d->ep > 1 ? save_weights_f(FN, m, path, shard_has) : save_weights(FN, m, path))
              : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
    if (st != DSC_OK) st = write_failed(FN, st, dir, file);
    free(path);
    if (st == DSC_OK && optimizer && dsc_model_step(m) > 0 && !dsc_model_is_frozen(m)) {
      if (d->ep > 1) snprintf(file, sizeof file, "optimizer-%05d-of-%05d.safetensors", q + 1, (int)d->ep);
      else snprintf(file, sizeof file, "%s", OPT_FILE);
      path = path_join(head.gen, file);
      st = path ? (d->ep > 1 ? save_optimizer_f(FN, m, path, shard_has) : save_optimizer(FN, m, path))
                : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
      if (st != DSC_OK) st = write_failed(FN, st, dir, file);
      free(path);
    }
    if (st == DSC_OK && me == 0) {
      path = path_join(head.gen, "config.json");
      st = path ? dsc_ckpt_write_file(FN, path, json, json_n) : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
      if (st != DSC_OK) st = write_failed(FN, st, dir, "config.json");
      free(path);
    }
    if (st == DSC_OK && me == 0 && d->ep > 1) {
      path = path_join(head.gen, "model.safetensors.index.json");
      st = path ? write_index(FN, m, path) : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
      if (st != DSC_OK) st = write_failed(FN, st, dir, "model.safetensors.index.json");
      free(path);
    }
  }
  mine.status = st;
  if (st != DSC_OK) snprintf(mine.msg, sizeof mine.msg, "%s", dsc_last_error());
  /* 3. every rank's report; rank 0 swaps the generation in only if all succeeded */
  save_report *all = (save_report *)calloc((size_t)W, sizeof *all);
  if (!all) {
    if (began) dsc_ckpt_end(&t);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  st = host_gather(m, c, &mine, all, sizeof mine);
  int32_t bad = -1;
  for (int32_t q = 0; st == DSC_OK && q < W && bad < 0; ++q)
    if (all[q].status != DSC_OK) bad = q;
  memset(&head, 0, sizeof head);
  if (st == DSC_OK && me == 0) {
    if (bad < 0) {
      dsc_status cs = dsc_ckpt_commit(FN, &t);
      head.status = cs;
      if (cs != DSC_OK) snprintf(head.msg, sizeof head.msg, "%s", dsc_last_error());
    } else {
      head.status = all[bad].status;
      snprintf(head.msg, sizeof head.msg, "rank %d: %.600s", (int)bad, all[bad].msg);
    }
  }
  if (began) dsc_ckpt_end(&t); /* removes an uncommitted generation, unlocks */
  free(all);
  if (st != DSC_OK) return st;
  /* 4. the outcome, the same on every rank */
  DSC_TRY(host_bcast(m, c, &head, sizeof head, 0));
  if (head.status != DSC_OK)
    return dsc_error((dsc_status)head.status, FN, "distributed save of '%s' failed (the previous checkpoint "
                     "is untouched): %s", dir, head.msg);
  return DSC_OK;
}

dsc_status dsc_model_save(dsc_model *model, const char *dir, int32_t optimizer) {
  static const char *const FN = "dsc_model_save";
  DSC_CHECK(model != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(dir != NULL && dir[0], DSC_ERR_INVALID_ARGUMENT, FN, "dir: expected a directory name");
  DSC_TRY(dsc_model_settle(model)); /* a training step without the host: its step count, its failure */
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  DSC_TRY(dsc_model_get_config(model, &cfg));
  char *json = NULL;
  size_t json_n = 0;
  DSC_TRY(dsc_model_config_render(FN, &cfg, model->cfg_extra,
                                  DSC_CONFIG_CHECKPOINT | (dsc_model_is_frozen(model) ? DSC_CONFIG_FP8_WEIGHTS : 0),
                                  &json, &json_n));
  if (model->dist) {
    const dsc_status ds = save_dist(model, dir, optimizer, json, json_n);
    free(json);
    return ds;
  }
  /* every file into a fresh generation beside dir, then one swap (protocol at the top) */
  dsc_ckpt_txn t;
  dsc_status st = dsc_ckpt_begin(FN, dir, &t);
  if (st != DSC_OK) {
    free(json);
    return st;
  }
  char *cfg_path = dsc_ckpt_path(&t, "config.json");
  char *model_path = dsc_ckpt_path(&t, "model.safetensors");
  char *opt_path = dsc_ckpt_path(&t, OPT_FILE);
  if (!(cfg_path && model_path && opt_path)) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  if (st == DSC_OK && (st = dsc_ckpt_write_file(FN, cfg_path, json, json_n)) != DSC_OK)
    st = write_failed(FN, st, dir, "config.json");
  if (st == DSC_OK && (st = save_weights(FN, model, model_path)) != DSC_OK)
    st = write_failed(FN, st, dir, "model.safetensors");
  /* a frozen model has no optimizer state; without this file the old one goes with the
   * old generation, so a load never pairs new weights with old moments */
  if (st == DSC_OK && optimizer && dsc_model_step(model) > 0 && !dsc_model_is_frozen(model) &&
      (st = save_optimizer(FN, model, opt_path)) != DSC_OK)
    st = write_failed(FN, st, dir, OPT_FILE);
  if (st == DSC_OK) st = dsc_ckpt_commit(FN, &t);
  dsc_ckpt_end(&t);
  free(json);
  free(cfg_path);
  free(model_path);
  free(opt_path);
  return st;
}

/* ================================================================== load */

/* Widen n elements of a checkpoint dtype to float32 (memcpy per element: shard data need
 * not be aligned). 0 when the dtype is not a supported floating type. */
static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13); /* inf, NaN */
  } else if (e != 0) {
    u = sign | ((e + 112u) << 23) | (m << 13);
  } else if (m == 0) {
    u = sign;
  } else { /* subnormal: m * 2^-24, normalized */
    uint32_t k = 0;
    while (!(m & 0x400u)) {
      m <<= 1;
      ++k;
    }
    u = sign | ((113u - k) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static int widen(dsc_dtype dt, const unsigned char *src, int64_t n, float *dst) {
  switch (dt) {
    case DSC_DTYPE_FLOAT32:
      memcpy(dst, src, (size_t)n * sizeof(float));
      return 1;
    case DSC_DTYPE_BFLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = dsc_bf16_to_f32(h);
      }
      return 1;
    case DSC_DTYPE_FLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return 1;
    case DSC_DTYPE_FLOAT64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        memcpy(&d, src + 8 * i, 8);
        /* beyond float range is inf (refused later as non-finite), not UB */
        dst[i] = d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
      }
      return 1;
    default:
      return 0;
  }
}

/* Index of the first non-finite value, or -1. */
static int64_t first_non_finite(const float *x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(x[i])) return i;
  return -1;
}

/* "(a, b, c)" */
static const char *shape_str(int32_t ndim, const int64_t *shape, char *buf, size_t cap) {
  size_t k = 0;
  k += (size_t)snprintf(buf, cap, "(");
  for (int32_t d = 0; d < ndim && k < cap; ++d)
    k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)shape[d]);
  if (k < cap) snprintf(buf + k, cap - k, ")");
  return buf;
}

/* One tensor of some shard. */
typedef struct {
  const char *name;
  int32_t file;
  int64_t index;
  int used;
} st_ref;

static int ref_cmp(const void *a, const void *b) {
  return strcmp(((const st_ref *)a)->name, ((const st_ref *)b)->name);
}

/* The open shards of a checkpoint and a sorted table of their tensors. */
typedef struct {
  char **paths;
  dsc_safetensors **files;
  int32_t n_files;
  st_ref *refs;
  int64_t n_refs;
} shards;

static void shards_free(shards *s) {
  for (int32_t i = 0; i < s->n_files; ++i) {
    dsc_safetensors_close(s->files ? s->files[i] : NULL);
    free(s->paths[i]);
  }
  free(s->paths);
  free(s->files);
  free(s->refs);
  memset(s, 0, sizeof *s);
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static dsc_status shards_open(const char *fn, const char *dir, shards *s) {
  memset(s, 0, sizeof *s);
  DIR *d = opendir(dir);
  if (!d) return dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s': %s", dir, strerror(errno));
  dsc_status st = DSC_OK;
  int32_t cap = 0;
  for (struct dirent *e; st == DSC_OK && (e = readdir(d)) != NULL;) {
    const char *nm = e->d_name;
    if (nm[0] == '.' || !ends_with(nm, ".safetensors") || !strncmp(nm, "optimizer", 9)) continue;
    if (s->n_files == cap) {
      cap = cap ? 2 * cap : 8;
      char **np = (char **)realloc(s->paths, (size_t)cap * sizeof *np);
      if (!np) {
        st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
        break;
      }
      s->paths = np;
    }
    s->paths[s->n_files] = path_join(dir, nm);
    if (!s->paths[s->n_files]) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    else s->n_files++;
  }
  closedir(d);
  if (st == DSC_OK && s->n_files == 0)
    st = dsc_error(DSC_ERR_IO, fn, "dir: no *.safetensors file in '%s'", dir);
  if (st == DSC_OK) {
    if (s->n_files > 1) qsort(s->paths, (size_t)s->n_files, sizeof *s->paths, str_cmp);
    s->files = (dsc_safetensors **)calloc((size_t)s->n_files, sizeof *s->files);
    if (!s->files) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  for (int32_t i = 0; i < s->n_files && st == DSC_OK; ++i) {
    st = dsc_safetensors_open(s->paths[i], &s->files[i]);
    if (st == DSC_OK) s->n_refs += dsc_safetensors_count(s->files[i]);
  }
  if (st == DSC_OK) {
    s->refs = (st_ref *)calloc((size_t)(s->n_refs ? s->n_refs : 1), sizeof *s->refs);
    if (!s->refs) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  int64_t k = 0;
  for (int32_t i = 0; i < s->n_files && st == DSC_OK; ++i) {
    for (int64_t j = 0; j < dsc_safetensors_count(s->files[i]) && st == DSC_OK; ++j, ++k) {
      st = dsc_safetensors_tensor(s->files[i], j, &s->refs[k].name, NULL, NULL, NULL, NULL, NULL);
      s->refs[k].file = i;
      s->refs[k].index = j;
    }
  }
  if (st == DSC_OK) {
    qsort(s->refs, (size_t)s->n_refs, sizeof *s->refs, ref_cmp);
    for (int64_t i = 1; i < s->n_refs && st == DSC_OK; ++i)
      if (!strcmp(s->refs[i - 1].name, s->refs[i].name))
        st = dsc_error(DSC_ERR_FORMAT, fn, "tensor %s is in both %s and %s", s->refs[i].name,
                       s->paths[s->refs[i - 1].file], s->paths[s->refs[i].file]);
  }
  if (st != DSC_OK) shards_free(s);
  return st;
}

static st_ref *shards_find(shards *s, const char *name) {
  st_ref key = {name, 0, 0, 0};
  return (st_ref *)bsearch(&key, s->refs, (size_t)s->n_refs, sizeof key, ref_cmp);
}

/* A host float32 scratch of at least n elements. */
typedef struct {
  float *p;
  int64_t cap;
} scratch;

static dsc_status scratch_get(const char *fn, scratch *s, int64_t n, float **out) {
  if (n > s->cap) {
    float *p = (float *)realloc(s->p, (size_t)(n ? n : 1) * sizeof(float));
    if (!p) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory (%lld floats)", (long long)n);
    s->p = p;
    s->cap = n;
  }
  *out = s->p;
  return DSC_OK;
}

static int widenable(dsc_dtype dt) {
  return dt == DSC_DTYPE_FLOAT32 || dt == DSC_DTYPE_BFLOAT16 || dt == DSC_DTYPE_FLOAT16 ||
         dt == DSC_DTYPE_FLOAT64;
}

/* The header of checkpoint tensor r (and, for float8_e4m3fn, of its block scales) against
 * the float32 view it fills: shape, dtype, byte count. Reads no tensor data, so the whole
 * checkpoint is checked before the model's arena is allocated. Marks r (and the scales)
 * used; *scales gets the scales' entry (NULL: not FP8). */
static dsc_status check_entry(const char *fn, shards *s, st_ref *r, const DLTensor *view, st_ref **scales) {
  const char *file = s->paths[r->file];
  const char *name = r->name;
  dsc_dtype dt;
  int32_t ndim;
  const int64_t *shape;
  size_t nbytes;
  *scales = NULL;
  DSC_TRY(dsc_safetensors_tensor(s->files[r->file], r->index, NULL, &dt, &ndim, &shape, NULL, &nbytes));
  r->used = 1;
  char b1[128], b2[128];
  int same = ndim == view->ndim;
  for (int32_t d = 0; same && d < ndim; ++d) same = shape[d] == view->shape[d];
  DSC_CHECK(same, DSC_ERR_FORMAT, fn, "%s in %s: expected shape %s, got %s", name, file,
            shape_str(view->ndim, view->shape, b1, sizeof b1), shape_str(ndim, shape, b2, sizeof b2));
  const int64_t n = dsc_numel(view);
  DSC_CHECK(widenable(dt) || dt == DSC_DTYPE_FLOAT8_E4M3FN, DSC_ERR_FORMAT, fn,
            "%s in %s: expected float32, bfloat16, float16, float64 or float8_e4m3fn (with "
            "weight_scale_inv), got %s",
            name, file, dsc_dtype_name(dt));
  DSC_CHECK(nbytes == (size_t)n * dsc_dtype_size(dt), DSC_ERR_FORMAT, fn,
            "%s in %s: %zu bytes for %lld elements of %s", name, file, nbytes, (long long)n, dsc_dtype_name(dt));
  if (dt != DSC_DTYPE_FLOAT8_E4M3FN) return DSC_OK;
  /* DeepSeek-V3 FP8: w[r, c] = q[r, c] * scale_inv[r / 128, c / 128] */
  DSC_CHECK(ndim == 2 && ends_with(name, "weight"), DSC_ERR_FORMAT, fn,
            "%s in %s: float8_e4m3fn is only accepted for 2-D \"...weight\" matrices", name, file);
  char sname[256];
  DSC_CHECK(snprintf(sname, sizeof sname, "%s_scale_inv", name) < (int)sizeof sname, DSC_ERR_FORMAT, fn,
            "%s: name too long", name);
  st_ref *sr = shards_find(s, sname);
  DSC_CHECK(sr != NULL, DSC_ERR_FORMAT, fn,
            "%s in %s is float8_e4m3fn but its block scales %s are in no shard", name, file, sname);
  dsc_dtype sdt;
  int32_t sndim;
  const int64_t *sshape;
  size_t sbytes;
  DSC_TRY(dsc_safetensors_tensor(s->files[sr->file], sr->index, NULL, &sdt, &sndim, &sshape, NULL, &sbytes));
  sr->used = 1;
  const int64_t sr_n = (shape[0] + FP8_BLOCK - 1) / FP8_BLOCK, sc_n = (shape[1] + FP8_BLOCK - 1) / FP8_BLOCK;
  const int64_t want[2] = {sr_n, sc_n};
  DSC_CHECK(sndim == 2 && sshape[0] == sr_n && sshape[1] == sc_n, DSC_ERR_FORMAT, fn,
            "%s in %s: expected shape %s (128x128 blocks of %s), got %s", sname, s->paths[sr->file],
            shape_str(2, want, b1, sizeof b1), name, shape_str(sndim, sshape, b2, sizeof b2));
  DSC_CHECK(widenable(sdt) && sbytes == (size_t)(sr_n * sc_n) * dsc_dtype_size(sdt), DSC_ERR_FORMAT, fn,
            "%s in %s: expected float32 scales, got %s", sname, s->paths[sr->file], dsc_dtype_name(sdt));
  *scales = sr;
  return DSC_OK;
}

/* Read checkpoint tensor `name` (shard entry r) into the float32 view: the header checks
 * of check_entry, widening or FP8 dequantization, finiteness, then the copy to the device. */
static dsc_status read_tensor(const char *fn, dsc_context *ctx, shards *s, st_ref *r,
                              const DLTensor *view, scratch *stage, scratch *tmp) {
  const char *file = s->paths[r->file];
  const char *name = r->name;
  st_ref *sr = NULL;
  DSC_TRY(check_entry(fn, s, r, view, &sr));
  dsc_dtype dt;
  int32_t ndim;
  const int64_t *shape;
  const void *data;
  DSC_TRY(dsc_safetensors_tensor(s->files[r->file], r->index, NULL, &dt, &ndim, &shape, &data, NULL));
  const int64_t n = dsc_numel(view);
  const int on_host = view->device.device_type == kDLCPU;
  /* bfloat16 destinations (AdamW moments) are read as float32, then rounded */
  const int narrow = dsc_dtype_from_dlpack(view->dtype) == DSC_DTYPE_BFLOAT16;
  float *dst = NULL;
  if (on_host && !narrow) dst = (float *)dsc_data(view);
  else DSC_TRY(scratch_get(fn, stage, n, &dst));
  if (sr) {
    dsc_dtype sdt;
    const void *sdata;
    DSC_TRY(dsc_safetensors_tensor(s->files[sr->file], sr->index, NULL, &sdt, NULL, NULL, &sdata, NULL));
    const int64_t rows = shape[0], cols = shape[1];
    const int64_t sr_n = (rows + FP8_BLOCK - 1) / FP8_BLOCK, sc_n = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
    float *sc = NULL;
    DSC_TRY(scratch_get(fn, tmp, sr_n * sc_n, &sc));
    (void)widen(sdt, (const unsigned char *)sdata, sr_n * sc_n, sc); /* dtype checked above */
    int64_t bad = first_non_finite(sc, sr_n * sc_n);
    DSC_CHECK(bad < 0, DSC_ERR_FORMAT, fn, "%s in %s: element %lld is %g (not finite)", sr->name,
              s->paths[sr->file], (long long)bad, bad < 0 ? 0.0 : (double)sc[bad]);
    const unsigned char *q = (const unsigned char *)data;
    for (int64_t i = 0; i < rows; ++i) {
      const float *srow = sc + (i / FP8_BLOCK) * sc_n;
      for (int64_t j = 0; j < cols; ++j) dst[i * cols + j] = dsc_e4m3_to_f32(q[i * cols + j]) * srow[j / FP8_BLOCK];
    }
  } else {
    (void)widen(dt, (const unsigned char *)data, n, dst); /* dtype checked above */
  }
  int64_t bad = first_non_finite(dst, n);
  DSC_CHECK(bad < 0, DSC_ERR_FORMAT, fn, "%s in %s: element %lld is %g (not finite)", name, file,
            (long long)bad, bad < 0 ? 0.0 : (double)dst[bad]);
  size_t bytes = (size_t)n * sizeof(float);
  if (narrow) {
    /* in place, front to back: element i's 2 bytes never overlap a float not yet read */
    uint16_t *h16 = (uint16_t *)dst;
    for (int64_t i = 0; i < n; ++i) h16[i] = dsc_f32_to_bf16(dst[i]);
    bytes = (size_t)n * sizeof(uint16_t);
  }
  if (!on_host || narrow) {
    const DLDevice cpu = {kDLCPU, 0};
    DSC_TRY(dsc_memcpy(ctx, dsc_data(view), view->device, dst, cpu, bytes));
  }
  return DSC_OK;
}

/* The layer index k of "model.layers.{k}.<rest>" (rest in *rest), or -1. */
static long layer_of(const char *name, const char **rest) {
  static const char prefix[] = "model.layers.";
  if (strncmp(name, prefix, sizeof prefix - 1) != 0) return -1;
  const char *p = name + sizeof prefix - 1;
  long k = 0;
  int digits = 0;
  for (; *p >= '0' && *p <= '9' && digits < 9; ++p, ++digits) k = 10 * k + (*p - '0');
  if (digits == 0 || *p != '.') return -1;
  if (rest) *rest = p + 1;
  return k;
}

/* model.layers.{k}.embed_tokens.weight / .shared_head.head.weight with L <= k < L + Dm:
 * the MTP modules' copies of the shared embedding and head. */
static int is_mtp_duplicate(const char *name, int32_t L, int32_t Dm) {
  const char *rest;
  const long k = layer_of(name, &rest);
  if (k < L || k >= (long)L + Dm) return 0;
  return !strcmp(rest, "embed_tokens.weight") || !strcmp(rest, "shared_head.head.weight");
}

/* rest (after "model.layers.{k}.") names a part only an MTP module has. */
static int is_mtp_part(const char *rest) {
  static const char *const parts[] = {"eh_proj.", "enorm.", "hnorm.", "shared_head.", "embed_tokens."};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; ++i)
    if (!strncmp(rest, parts[i], strlen(parts[i]))) return 1;
  return 0;
}

/* Layer k of the checkpoint is an MTP module (it has an eh_proj). */
static int layer_is_mtp(const shards *s, long k) {
  const char *rest;
  for (int64_t i = 0; i < s->n_refs; ++i)
    if (layer_of(s->refs[i].name, &rest) == k && !strncmp(rest, "eh_proj.", 8)) return 1;
  return 0;
}

/* How many MTP depths (from the first) have tensors of their own in the checkpoint. */
static int32_t mtp_depths_present(const shards *s, int32_t L, int32_t Dm) {
  int32_t present = 0;
  for (int32_t d = 0; d < Dm; ++d) {
    int found = 0;
    for (int64_t i = 0; i < s->n_refs && !found; ++i)
      found = layer_of(s->refs[i].name, NULL) == (long)L + d && !is_mtp_duplicate(s->refs[i].name, L, Dm);
    if (!found) break;
    present = d + 1;
  }
  return present;
}

/* A tied checkpoint that still carries lm_head.weight: 1 when it equals the embedding bit
 * for bit (after widening), 0 when not, an error status on failure. */
static dsc_status tied_head_equal(const char *fn, dsc_model *m, shards *s, st_ref *r, int *equal) {
  *equal = 0;
  int64_t idx = -1;
  DSC_TRY(dsc_model_find_tensor(m, "model.embed_tokens.weight", &idx));
  DLTensor emb;
  DSC_TRY(dsc_model_tensor(m, idx, NULL, &emb));
  const int64_t n = dsc_numel(&emb);
  float *a = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
  float *b = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
  dsc_status st = a && b ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  DLTensor head = emb; /* same shape, on the host */
  head.data = a;
  head.byte_offset = 0;
  head.device.device_type = kDLCPU;
  head.device.device_id = 0;
  scratch stage = {0}, tmp = {0};
  if (st == DSC_OK) st = read_tensor(fn, dsc_model_context(m), s, r, &head, &stage, &tmp);
  const DLDevice cpu = {kDLCPU, 0};
  if (st == DSC_OK)
    st = dsc_memcpy(dsc_model_context(m), b, cpu, dsc_data(&emb), emb.device, (size_t)n * sizeof(float));
  if (st == DSC_OK) *equal = memcmp(a, b, (size_t)n * sizeof(float)) == 0;
  free(stage.p);
  free(tmp.p);
  free(a);
  free(b);
  return st;
}

/* Every tensor of the (planned) model against the checkpoint's headers -- present, shaped
 * and typed as the config says -- before the arena is allocated: a wrong checkpoint costs no
 * memory. Tensors of blocks >= skip_from_block (MTP modules to initialize) may be missing.
 * What the model has no use for: the MTP copies of embedding and head (of the file's Dm
 * depths) and rotary inv_freq buffers are skipped silently; a tied lm_head is left for
 * load_weights to compare with the embedding; layers that do not line up with the config
 * and orphan FP8 scales are errors; anything else is an error when strict, else skipped
 * with one warning (the model's, added here). */
static dsc_status check_weights(const char *fn, dsc_model *m, shards *s, const char *dir, int32_t file_mtp,
                                int32_t skip_from_block, int strict) {
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  DSC_TRY(dsc_model_get_config(m, &cfg));
  const int64_t n = dsc_model_num_tensors(m);
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    DLTensor view;
    DSC_TRY(dsc_model_tensor(m, i, &name, &view));
    st_ref *r = shards_find(s, name);
    if (!r && skip_from_block >= 0 && layer_of(name, NULL) >= skip_from_block) continue; /* to initialize */
    DSC_CHECK(r != NULL, DSC_ERR_FORMAT, fn,
              "%s: missing from the checkpoint (in none of the %d *.safetensors files in %s)", name,
              (int)s->n_files, dir);
    st_ref *sr = NULL;
    DSC_TRY(check_entry(fn, s, r, &view, &sr));
  }
  /* what is left over */
  const int32_t L = cfg.num_hidden_layers, Dm = cfg.num_nextn_predict_layers;
  int64_t n_skipped = 0;
  char listed[600];
  size_t used = 0;
  listed[0] = '\0';
  for (int64_t i = 0; i < s->n_refs; ++i) {
    const st_ref *r = &s->refs[i];
    if (r->used || is_mtp_duplicate(r->name, L, file_mtp) || ends_with(r->name, ".rotary_emb.inv_freq"))
      continue;
    if (dsc_model_name_other_rank(m, r->name)) continue; /* another rank's expert (or its scales) */
    if (cfg.tie_word_embeddings && !strcmp(r->name, "lm_head.weight")) continue; /* load_weights compares */
    /* layers that do not line up with the config mean the config is wrong, not that a
     * tensor is spare: loading on would build another model than the checkpoint's */
    const char *rest;
    const long k = layer_of(r->name, &rest);
    DSC_CHECK(!(k >= 0 && k < L && is_mtp_part(rest)), DSC_ERR_FORMAT, fn,
              "%s in %s belongs to an MTP module, but config.json makes model.layers.%ld a main layer "
              "(num_hidden_layers = %d): the config does not match the checkpoint",
              r->name, s->paths[r->file], k, (int)L);
    DSC_CHECK(!(k >= (long)L + Dm && !layer_is_mtp(s, k)), DSC_ERR_FORMAT, fn,
              "%s in %s: the checkpoint has a decoder layer %ld, but config.json has %d layers "
              "(num_hidden_layers %d + num_nextn_predict_layers %d): the config does not match the checkpoint",
              r->name, s->paths[r->file], k, (int)(L + Dm), (int)L, (int)Dm);
    /* scales without FP8 codes: a damaged FP8 checkpoint */
    DSC_CHECK(!ends_with(r->name, "_scale_inv"), DSC_ERR_FORMAT, fn,
              "unexpected tensor %s in %s (block scales of a weight that is not float8_e4m3fn)", r->name,
              s->paths[r->file]);
    DSC_CHECK(!strict, DSC_ERR_FORMAT, fn,
              "unexpected tensor %s in %s (the model has no tensor of that name; strict loading)", r->name,
              s->paths[r->file]);
    if (n_skipped < 5 && used < sizeof listed) {
      int w = snprintf(listed + used, sizeof listed - used, "%s%s", n_skipped ? ", " : "", r->name);
      if (w > 0) used += (size_t)w;
    }
    ++n_skipped;
  }
  if (n_skipped > 0)
    DSC_TRY(dsc_model_add_warning(m,
                                  "skipped %lld tensor%s of the checkpoint in %s that the model has no use for: "
                                  "%s%s (strict loading makes this an error)",
                                  (long long)n_skipped, n_skipped > 1 ? "s" : "", dir, listed,
                                  n_skipped > 5 ? ", ..." : ""));
  return DSC_OK;
}

/* Fill the arena from the shards (already checked by check_weights; tensors of blocks
 * >= skip_from_block may be absent: they keep their init); then a tied checkpoint's
 * lm_head.weight, if it has one, must equal the embedding loaded. */
static dsc_status load_weights(const char *fn, dsc_model *m, shards *s, int32_t skip_from_block) {
  scratch stage = {0}, tmp = {0};
  dsc_status st = DSC_OK;
  const int64_t n = dsc_model_num_tensors(m);
  for (int64_t i = 0; i < n && st == DSC_OK; ++i) {
    const char *name;
    DLTensor view;
    st = dsc_model_tensor(m, i, &name, &view);
    if (st != DSC_OK) break;
    st_ref *r = shards_find(s, name);
    if (!r && skip_from_block >= 0 && layer_of(name, NULL) >= skip_from_block) continue;
    st = r ? read_tensor(fn, dsc_model_context(m), s, r, &view, &stage, &tmp)
           : dsc_error(DSC_ERR_INTERNAL, fn, "%s: missing after the checks", name);
  }
  dsc_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  if (st == DSC_OK) st = dsc_model_get_config(m, &cfg);
  st_ref *head = st == DSC_OK && cfg.tie_word_embeddings ? shards_find(s, "lm_head.weight") : NULL;
  if (head) {
    int equal = 0;
    st = tied_head_equal(fn, m, s, head, &equal);
    if (st == DSC_OK && !equal)
      st = dsc_error(DSC_ERR_FORMAT, fn,
                     "lm_head.weight in %s differs from model.embed_tokens.weight, but config.json says "
                     "tie_word_embeddings: true (one matrix for both): fix the config or the checkpoint",
                     s->paths[head->file]);
  }
  free(stage.p);
  free(tmp.p);
  return st;
}

/* One optimizer file: its moments into the model (have[2 i + which] marks them), its step
 * into *step (every file of a sharded checkpoint must say the same). Moments of another
 * rank's experts are skipped. */
static dsc_status load_optimizer_file(const char *fn, dsc_model *m, char *path, unsigned char *have, int64_t *step) {
  dsc_safetensors *f = NULL;
  dsc_status st = dsc_safetensors_open(path, &f);
  for (int64_t i = 0; st == DSC_OK && i < dsc_safetensors_metadata_count(f); ++i) {
    const char *k, *v;
    st = dsc_safetensors_metadata(f, i, &k, &v);
    if (st == DSC_OK && !strcmp(k, "format") && strcmp(v, "deepseek_c.adamw") != 0)
      st = dsc_error(DSC_ERR_FORMAT, fn, "%s: metadata format is \"%s\", expected \"deepseek_c.adamw\"", path, v);
  }
  int64_t fstep = -1;
  scratch stage = {0};
  for (int64_t j = 0; st == DSC_OK && j < dsc_safetensors_count(f); ++j) {
    const char *tname;
    dsc_dtype dt;
    int32_t ndim;
    const int64_t *shape;
    const void *data;
    size_t nbytes;
    st = dsc_safetensors_tensor(f, j, &tname, &dt, &ndim, &shape, &data, &nbytes);
    if (st != DSC_OK) break;
    if (!strcmp(tname, "step")) {
      if (dt != DSC_DTYPE_INT64 || nbytes != 8 || ndim > 1) {
        st = dsc_error(DSC_ERR_FORMAT, fn, "step in %s: expected an int64 scalar, got %s with %d dims", path,
                       dsc_dtype_name(dt), (int)ndim);
        break;
      }
      memcpy(&fstep, data, 8);
      if (fstep < 0) st = dsc_error(DSC_ERR_FORMAT, fn, "step in %s: expected >= 0, got %lld", path, (long long)fstep);
      continue;
    }
    int which = strncmp(tname, "exp_avg_sq.", 11) == 0 ? 1 : strncmp(tname, "exp_avg.", 8) == 0 ? 0 : -1;
    const char *pname = which == 1 ? tname + 11 : which == 0 ? tname + 8 : tname;
    int64_t idx = -1;
    if (which >= 0 && dsc_model_name_other_rank(m, pname)) continue; /* another rank's expert */
    if (which < 0 || ends_with(pname, BIAS_SUFFIX) || dsc_model_find_tensor(m, pname, &idx) != DSC_OK) {
      st = dsc_error(DSC_ERR_FORMAT, fn, "unexpected tensor %s in %s (expected step, exp_avg.<name> and "
                     "exp_avg_sq.<name> of the model's trained tensors)", tname, path);
      break;
    }
    have[2 * idx + which] = 1;
    DLTensor view;
    st = dsc_model_optimizer_state(m, idx, which, &view);
    if (st != DSC_OK) break;
    /* same reading rules as the weights, minus FP8 */
    shards one = {&path, &f, 1, NULL, 0};
    st_ref r = {tname, 0, j, 0};
    if (dt == DSC_DTYPE_FLOAT8_E4M3FN) {
      st = dsc_error(DSC_ERR_FORMAT, fn, "%s in %s: expected a float32 moment, got %s", tname, path,
                     dsc_dtype_name(dt));
      break;
    }
    st = read_tensor(fn, dsc_model_context(m), &one, &r, &view, &stage, NULL);
  }
  if (st == DSC_OK && fstep < 0) st = dsc_error(DSC_ERR_FORMAT, fn, "%s: no \"step\" tensor", path);
  if (st == DSC_OK && *step >= 0 && fstep != *step)
    st = dsc_error(DSC_ERR_FORMAT, fn, "%s: step %lld, but another optimizer shard says %lld", path,
                   (long long)fstep, (long long)*step);
  if (st == DSC_OK) *step = fstep;
  free(stage.p);
  dsc_safetensors_close(f);
  return st;
}

/* The optimizer state, when present: dir/optimizer.safetensors (one process, data parallel)
 * or the shards dir/optimizer-*.safetensors of an expert-parallel save: the step and both
 * moments of every trained tensor of this model (a rank: its experts), nothing else. */
static dsc_status load_optimizer(const char *fn, dsc_model *m, const char *dir) {
  char **paths = NULL;
  int32_t np = 0, cap = 0;
  dsc_status st = DSC_OK;
  char *one = path_join(dir, OPT_FILE);
  if (!one) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  struct stat sb;
  if (stat(one, &sb) == 0) {
    paths = (char **)malloc(sizeof *paths);
    if (!paths) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
    else paths[np++] = one, one = NULL;
  } else if (errno != ENOENT) {
    st = dsc_error(DSC_ERR_IO, fn, "cannot read '%s': %s", one, strerror(errno));
  } else {
    DIR *dd = opendir(dir);
    if (!dd) st = dsc_error(DSC_ERR_IO, fn, "dir: cannot open '%s': %s", dir, strerror(errno));
    for (struct dirent *e; st == DSC_OK && dd && (e = readdir(dd)) != NULL;) {
      if (strncmp(e->d_name, "optimizer-", 10) != 0 || !ends_with(e->d_name, ".safetensors")) continue;
      if (np == cap) {
        cap = cap ? 2 * cap : 8;
        char **q = (char **)realloc(paths, (size_t)cap * sizeof *q);
        if (!q) {
          st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
          break;
        }
        paths = q;
      }
      paths[np] = path_join(dir, e->d_name);
      if (!paths[np]) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
      else ++np;
    }
    if (dd) closedir(dd);
    if (np > 1) qsort(paths, (size_t)np, sizeof *paths, str_cmp);
  }
  free(one);
  const int64_t n = dsc_model_num_tensors(m);
  unsigned char *have = NULL;
  if (st == DSC_OK && np > 0) {
    have = (unsigned char *)calloc((size_t)(2 * n + 1), 1);
    if (!have) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  int64_t step = -1;
  for (int32_t i = 0; st == DSC_OK && i < np; ++i) st = load_optimizer_file(fn, m, paths[i], have, &step);
  for (int64_t i = 0; st == DSC_OK && np > 0 && i < n; ++i) {
    const char *name;
    st = dsc_model_tensor(m, i, &name, NULL);
    if (st != DSC_OK || ends_with(name, BIAS_SUFFIX)) continue;
    for (int which = 0; which < 2 && st == DSC_OK; ++which)
      if (!have[2 * i + which])
        st = dsc_error(DSC_ERR_FORMAT, fn, "%s%s: missing from %s%s", which ? "exp_avg_sq." : "exp_avg.", name,
                       paths[0], np > 1 ? " and the other optimizer shards" : "");
  }
  if (st == DSC_OK && np > 0) st = dsc_model_set_step(m, step);
  for (int32_t i = 0; i < np; ++i) free(paths[i]);
  free(paths);
  free(have);
  return st;
}

static dsc_status load_dir(dsc_context *ctx, const char *dir, const dsc_model_options *opt, dsc_model **out) {
  static const char *const FN = "dsc_model_load";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(dir != NULL && dir[0], DSC_ERR_INVALID_ARGUMENT, FN, "dir: expected a directory name");
  dsc_model_options o;
  if (opt) {
    DSC_CHECK(opt->size >= sizeof o, DSC_ERR_INVALID_ARGUMENT, FN,
              "opt->size: expected sizeof(dsc_model_options) = %zu, got %zu", sizeof o, opt->size);
    o = *opt;
  } else {
    dsc_model_options_default(&o);
  }
  DSC_CHECK(o.init_missing_mtp == 0 || o.init_missing_mtp == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->init_missing_mtp: expected 0 or 1, got %d", (int)o.init_missing_mtp);
  DSC_CHECK(o.strict == 0 || o.strict == 1, DSC_ERR_INVALID_ARGUMENT, FN, "opt->strict: expected 0 or 1, got %d",
            (int)o.strict);
  o.init = 0; /* every value comes from the checkpoint */
  dsc_model_config cfg;
  dsc_model_config_default(&cfg);
  char *cfg_path = path_join(dir, "config.json");
  if (!cfg_path) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  char *extra = NULL;
  dsc_status st = dsc_model_config_read(FN, cfg_path, &cfg, &extra);
  free(cfg_path);
  DSC_TRY(st);
  /* the config and the memory it needs are checked before any file is opened: a config
   * that cannot fit fails fast (the plan is redone below when MTP depths are missing) */
  dsc_model *m = NULL;
  st = dsc_model_plan(ctx, FN, &cfg, &o, &m);
  if (st != DSC_OK) {
    free(extra);
    return st;
  }
  shards s;
  st = shards_open(FN, dir, &s);
  if (st != DSC_OK) {
    dsc_model_destroy(m);
    free(extra);
    return st;
  }
  /* MTP modules named by the config but absent from the file: transformers keeps no MTP
   * layer, so its save_pretrained of a V3 model has none. */
  const int32_t L = cfg.num_hidden_layers, file_mtp = cfg.num_nextn_predict_layers;
  const int32_t present = mtp_depths_present(&s, L, file_mtp);
  int32_t skip_from = -1;
  if (present < file_mtp) {
    if (o.init_missing_mtp) {
      o.init = 1; /* the missing modules get the V3 init; the rest is overwritten by the file */
      skip_from = L + present;
    } else {
      cfg.num_nextn_predict_layers = present;
    }
  }
  /* every tensor header is checked against the plan before the arena is allocated */
  if (present < file_mtp && !o.init_missing_mtp) {
    dsc_model_destroy(m);
    m = NULL;
    st = dsc_model_plan(ctx, FN, &cfg, &o, &m);
    if (st != DSC_OK) {
      free(extra);
      shards_free(&s);
      return st;
    }
  }
  m->cfg_extra = extra;
  if (present < file_mtp) {
    if (o.init_missing_mtp)
      st = dsc_model_add_warning(
          m, "%s: config.json names %d MTP depth%s but the checkpoint has weights for %d: the missing MTP "
             "module%s initialized (V3 init, seed %llu) for training",
          dir, (int)file_mtp, file_mtp > 1 ? "s" : "", (int)present, file_mtp - present > 1 ? "s are" : " is",
          (unsigned long long)o.seed);
    else
      st = dsc_model_add_warning(
          m, "%s: config.json names %d MTP depth%s but the checkpoint has weights for %d (transformers does not "
             "keep MTP layers): loaded with %d, so no MTP loss in training and no MTP speculative decoding; "
             "load with init_missing_mtp to train fresh MTP modules",
          dir, (int)file_mtp, file_mtp > 1 ? "s" : "", (int)present, (int)present);
  }
  if (st == DSC_OK) st = check_weights(FN, m, &s, dir, file_mtp, skip_from, o.strict);
  if (st == DSC_OK) st = dsc_model_materialize(m, &o);
  if (st == DSC_OK) st = load_weights(FN, m, &s, skip_from);
  shards_free(&s);
  if (st == DSC_OK) st = load_optimizer(FN, m, dir);
  if (st != DSC_OK) {
    dsc_model_destroy(m);
    return st;
  }
  *out = m;
  return DSC_OK;
}

/* ---- the checkpoint directory's lock and recovery around the load (protocol at the top):
 * leftovers of an interrupted save are recovered or removed first, and a save in progress
 * is waited for, so the files read are of one generation. */
dsc_status dsc_model_load(dsc_context *ctx, const char *dir, const dsc_model_options *opt, dsc_model **out) {
  const int lock = dir && dir[0] ? dsc_ckpt_read_begin(dir) : -1;
  dsc_status st = load_dir(ctx, dir, opt, out);
  dsc_ckpt_read_end(lock);
  return st;
}
