/*
 * ops_model.c -- Python wrappers of dsc_model (the C model and its training step). The
 * model travels as a PyCapsule "deepseek_c.model" owning a dsc_model*; its context is the
 * model's own (a context capsule, see glue.h, held by the model capsule so it outlives the
 * model): calls on one model run one at a time, calls on different models in parallel.
 * Parameter, gradient and optimizer-state views are dsc.Tensor objects over the model's
 * arenas that keep the model capsule alive.
 */
#include "call.h"

#define MODEL_NAME "deepseek_c.model"

static void model_destructor(PyObject *cap) {
  dsc_model *mdl = (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME);
  PyObject *ctx_cap = (PyObject *)PyCapsule_GetContext(cap);
  dsc_model_destroy(mdl); /* no call can be running: each holds the capsule */
  Py_XDECREF(ctx_cap);
}

/* The capsule of mdl, holding (stealing) the context capsule it was created on. */
static PyObject *wrap_model(dsc_model *mdl, PyObject *ctx_cap) {
  PyObject *cap = PyCapsule_New(mdl, MODEL_NAME, model_destructor);
  if (!cap) {
    dsc_model_destroy(mdl);
    Py_DECREF(ctx_cap);
    return NULL;
  }
  if (PyCapsule_SetContext(cap, ctx_cap) < 0) {
    PyCapsule_SetDestructor(cap, NULL);
    Py_DECREF(cap);
    dsc_model_destroy(mdl);
    Py_DECREF(ctx_cap);
    return NULL;
  }
  return cap;
}

/* The model of a capsule (NULL with an exception). */
static dsc_model *model_of(PyObject *cap) {
  return (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME);
}

/* The context capsule of a model capsule (borrowed). */
static PyObject *model_ctx(PyObject *cap) { return (PyObject *)PyCapsule_GetContext(cap); }

/* Enter the model's context to run fn (see dsc_py_ctx_enter): 1 entered (leave after), 0
 * already held by this thread (allow_self; nothing to leave), -1 with an exception. */
static int model_enter(PyObject *m, PyObject *cap, const char *fn, int allow_self, dsc_model **mdl,
                       dsc_py_ctx **c) {
  *mdl = model_of(cap);
  if (!*mdl) return -1;
  *c = dsc_py_ctx_get(model_ctx(cap));
  if (!*c) return -1;
  const int r = dsc_py_ctx_enter(dsc_py_get_state(m), *c, fn, allow_self);
  return r < 0 ? -1 : (r == 1 ? 0 : 1);
}

/* How messages name a model: "model (2 layers, hidden 64, vocab 128, cpu)". */
static void model_label(dsc_py_ctx *c, const dsc_model_config *cfg, DLDevice dev) {
  char d[24];
  if (dev.device_type == kDLCPU) snprintf(d, sizeof d, "cpu");
  else snprintf(d, sizeof d, "cuda:%d", (int)dev.device_id);
  snprintf(c->what, sizeof c->what, "model (%d layers, hidden %d, vocab %d, %s)",
           (int)cfg->num_hidden_layers, (int)cfg->hidden_size, (int)cfg->vocab_size, d);
}

static int parse_device(PyObject *m, int dev_type, int dev_id, DLDevice *dev) {
  (void)m;
  dev->device_type = (DLDeviceType)dev_type;
  dev->device_id = dev_id;
  return 1;
}

/* "float32" | "bfloat16" -> the moments dtype; -1 with a ValueError otherwise. */
static int moments_dtype(const char *s) {
  if (!strcmp(s, "float32")) return DSC_DTYPE_FLOAT32;
  if (!strcmp(s, "bfloat16")) return DSC_DTYPE_BFLOAT16;
  PyErr_Format(PyExc_ValueError, "Model: moments: expected 'float32' or 'bfloat16', got '%s'", s);
  return -1;
}

/* "float32" | "bfloat16" -> the compute dtype (dsc_model_options.compute_dtype); -1 with a
 * ValueError naming `fn`'s dtype argument otherwise. */
static int compute_dtype(const char *s, const char *fn) {
  if (!strcmp(s, "float32")) return DSC_DTYPE_FLOAT32;
  if (!strcmp(s, "bfloat16")) return DSC_DTYPE_BFLOAT16;
  PyErr_Format(PyExc_ValueError, "%s: dtype: expected 'float32' or 'bfloat16', got '%s'", fn, s);
  return -1;
}

/* The distributed options from (comm capsule, ep, dp, check_every, overlap, ep_micro_batches),
 * or None for one process. 0, or -1 with an exception. */
static int parse_dist(PyObject *dist, dsc_model_options *o, const char *fn) {
  if (dist == Py_None) return 0;
  PyObject *cap;
  int ep, dp, check, overlap, mbs;
  if (!PyArg_ParseTuple(dist, "Oiiiii", &cap, &ep, &dp, &check, &overlap, &mbs)) return -1;
  o->comm = dsc_py_comm_of(cap, fn);
  if (!o->comm) return -1;
  o->expert_parallel = ep;
  o->data_parallel = dp;
  o->check_every = check;
  o->overlap = overlap;
  o->ep_micro_batches = mbs;
  return 0;
}

/* model_comm_stats(cap, reset) -> dict */
static PyObject *py_model_comm_stats(PyObject *m, PyObject *args) {
  PyObject *cap;
  int reset = 0;
  if (!PyArg_ParseTuple(args, "O|i", &cap, &reset)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  if (model_enter(m, cap, "dsc_model_comm_stats", 0, &mdl, &c) < 0) return NULL;
  dsc_comm_stats x;
  memset(&x, 0, sizeof x);
  x.size = sizeof x;
  dsc_status s = dsc_model_comm_stats(mdl, reset, &x);
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return Py_BuildValue("{s:L,s:L,s:L,s:d,s:d}", "ops", (long long)x.ops, "bytes_sent", (long long)x.bytes_sent,
                       "bytes_received", (long long)x.bytes_received, "wait_seconds", x.wait_seconds,
                       "busy_seconds", x.busy_seconds);
}

/* model_new(config_json: str, device_type, device_id, seed, init, fp8, moments[, num_threads, dist, dtype])
 *   -> capsule. The config is parsed by C (dsc_model_create_json): the one parser.
 *   num_threads: OpenMP threads of the model's context (0: the default). */
static PyObject *py_model_new(PyObject *m, PyObject *args) {
  const char *cfg_text;
  Py_ssize_t cfg_len;
  int dev_type, dev_id, init, fp8, nthreads = 0;
  unsigned long long seed;
  const char *moments, *dtype = "float32";
  PyObject *dist = Py_None;
  if (!PyArg_ParseTuple(args, "s#iiKiis|iOs", &cfg_text, &cfg_len, &dev_type, &dev_id, &seed, &init, &fp8,
                        &moments, &nthreads, &dist, &dtype))
    return NULL;
  const int mdt = moments_dtype(moments);
  if (mdt < 0) return NULL;
  const int cdt = compute_dtype(dtype, "Model");
  if (cdt < 0) return NULL;
  DLDevice dev;
  parse_device(m, dev_type, dev_id, &dev);
  dsc_py_state *st = dsc_py_get_state(m);
  PyObject *ctx_cap = dsc_py_ctx_new(st, dev, nthreads, "model");
  if (!ctx_cap) return NULL;
  dsc_py_ctx *x = dsc_py_ctx_get(ctx_cap);
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.seed = seed;
  o.init = init;
  o.fp8 = fp8;
  o.moments_dtype = mdt;
  o.compute_dtype = cdt;
  if (parse_dist(dist, &o, "Model") < 0) {
    Py_DECREF(ctx_cap);
    return NULL;
  }
  dsc_model *mdl = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_create_json(x->ctx, cfg_text, (size_t)cfg_len, &o, &mdl)); /* a new context */
  if (s != DSC_OK) {
    Py_DECREF(ctx_cap);
    return dsc_py_raise(st, s);
  }
  dsc_model_config c;
  dsc_model_config_default(&c);
  dsc_model_get_config(mdl, &c);
  model_label(x, &c, dev);
  return wrap_model(mdl, ctx_cap);
}

/* model_load(dir, device_type, device_id, fp8, moments, init_missing_mtp, strict, seed[, num_threads, dist, dtype])
 *   -> capsule */
static PyObject *py_model_load(PyObject *m, PyObject *args) {
  const char *dir, *moments, *dtype = "float32";
  int dev_type, dev_id, fp8, init_mtp, strict, nthreads = 0;
  unsigned long long seed;
  PyObject *dist = Py_None;
  if (!PyArg_ParseTuple(args, "siiisiiK|iOs", &dir, &dev_type, &dev_id, &fp8, &moments, &init_mtp, &strict, &seed,
                        &nthreads, &dist, &dtype))
    return NULL;
  const int mdt = moments_dtype(moments);
  if (mdt < 0) return NULL;
  const int cdt = compute_dtype(dtype, "Model.from_pretrained");
  if (cdt < 0) return NULL;
  DLDevice dev;
  parse_device(m, dev_type, dev_id, &dev);
  dsc_py_state *st = dsc_py_get_state(m);
  PyObject *ctx_cap = dsc_py_ctx_new(st, dev, nthreads, "model");
  if (!ctx_cap) return NULL;
  dsc_py_ctx *x = dsc_py_ctx_get(ctx_cap);
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.init = 0;
  o.fp8 = fp8;
  o.moments_dtype = mdt;
  o.compute_dtype = cdt;
  o.init_missing_mtp = init_mtp;
  o.strict = strict;
  o.seed = seed;
  if (parse_dist(dist, &o, "Model.from_pretrained") < 0) {
    Py_DECREF(ctx_cap);
    return NULL;
  }
  dsc_model *mdl = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_load(x->ctx, dir, &o, &mdl));
  if (s != DSC_OK) {
    Py_DECREF(ctx_cap);
    return dsc_py_raise(st, s);
  }
  dsc_model_config c;
  dsc_model_config_default(&c);
  dsc_model_get_config(mdl, &c);
  model_label(x, &c, dev);
  return wrap_model(mdl, ctx_cap);
}

/* A str from a text the C core renders under the size-query protocol. */
typedef dsc_status (*render_fn)(const void *arg, char *out, size_t cap, size_t *len);

static PyObject *rendered(PyObject *m, render_fn fn, const void *arg) {
  size_t n = 0;
  dsc_status s = fn(arg, NULL, 0, &n);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  char *buf = (char *)PyMem_Malloc(n + 1);
  if (!buf) return PyErr_NoMemory();
  s = fn(arg, buf, n + 1, &n);
  PyObject *out = s == DSC_OK ? PyUnicode_DecodeUTF8(buf, (Py_ssize_t)n, "strict") : dsc_py_raise(dsc_py_get_state(m), s);
  PyMem_Free(buf);
  return out;
}

static dsc_status model_json_fn(const void *arg, char *out, size_t cap, size_t *len) {
  return dsc_model_config_json((const dsc_model *)arg, out, cap, len);
}

/* model_config_json(cap) -> str: the config.json dsc_model_save writes */
static PyObject *py_model_config_json(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  return rendered(m, model_json_fn, mdl);
}

typedef struct {
  const char *text;
  size_t len;
} text_arg;

static dsc_status normalize_fn(const void *arg, char *out, size_t cap, size_t *len) {
  const text_arg *t = (const text_arg *)arg;
  return dsc_model_config_normalize_json(t->text, t->len, out, cap, len);
}

/* config_normalize(text: bytes | str) -> str: dsc_model_config_normalize_json */
static PyObject *py_config_normalize(PyObject *m, PyObject *args) {
  Py_buffer b;
  if (!PyArg_ParseTuple(args, "s*", &b)) return NULL;
  text_arg t = {(const char *)b.buf, (size_t)b.len};
  PyObject *out = rendered(m, normalize_fn, &t);
  PyBuffer_Release(&b);
  return out;
}

/* model_warnings(cap) -> [str]: what dsc_model_load let pass */
static PyObject *py_model_warnings(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  const int64_t n = dsc_model_num_load_warnings(mdl);
  PyObject *out = PyList_New((Py_ssize_t)n);
  for (int64_t i = 0; out && i < n; ++i) {
    PyObject *w = PyUnicode_DecodeUTF8(dsc_model_load_warning(mdl, i), (Py_ssize_t)strlen(dsc_model_load_warning(mdl, i)),
                                       "replace");
    if (!w) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, w);
  }
  return out;
}

/* model_save(cap, dir, optimizer) */
static PyObject *py_model_save(PyObject *m, PyObject *args) {
  PyObject *cap;
  const char *dir;
  int opt;
  if (!PyArg_ParseTuple(args, "Osi", &cap, &dir, &opt)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  if (model_enter(m, cap, "dsc_model_save", 0, &mdl, &c) < 0) return NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_save(mdl, dir, opt));
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

/* model_check_reentry(cap, fn): raise the re-entrant-call error when this thread is running a
 * call on the model (e.g. stream() from the model's own callback, whose worker thread would
 * wait for it forever), else return None without waiting. */
static PyObject *py_model_check_reentry(PyObject *m, PyObject *args) {
  PyObject *cap;
  const char *fn;
  if (!PyArg_ParseTuple(args, "Os", &cap, &fn)) return NULL;
  if (!model_of(cap)) return NULL;
  dsc_py_ctx *c = dsc_py_ctx_get(model_ctx(cap));
  if (!c || dsc_py_ctx_check_self(dsc_py_get_state(m), c, fn) < 0) return NULL;
  Py_RETURN_NONE;
}

/* A dsc.Tensor over a model view, keeping the capsule alive. */
static PyObject *view_tensor(PyObject *m, PyObject *cap, const DLTensor *v) {
  return dsc_py_tensor_new_view(m, v->data, v->device, dsc_dtype_from_dlpack(v->dtype), v->ndim, v->shape, cap);
}

/* model_tensors(cap) -> [(name, Tensor)] */
static PyObject *py_model_tensors(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl = model_of(cap); /* the layout never changes: no context needed */
  if (!mdl) return NULL;
  const int64_t n = dsc_model_num_tensors(mdl);
  PyObject *out = PyList_New((Py_ssize_t)n);
  if (!out) return NULL;
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    DLTensor v;
    dsc_status s = dsc_model_tensor(mdl, i, &name, &v);
    if (s != DSC_OK) {
      Py_DECREF(out);
      return dsc_py_raise(dsc_py_get_state(m), s);
    }
    PyObject *t = view_tensor(m, cap, &v);
    PyObject *item = t ? Py_BuildValue("(sN)", name, t) : NULL;
    if (!item) {
      Py_DECREF(out);
      return NULL;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, item);
  }
  return out;
}

/* model_tensor_scale(cap, index) -> Tensor: the block scales of a frozen model's held matrix */
static PyObject *py_model_tensor_scale(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long index;
  if (!PyArg_ParseTuple(args, "OL", &cap, &index)) return NULL;
  dsc_model *mdl = model_of(cap); /* fixed once frozen: no context needed */
  if (!mdl) return NULL;
  DLTensor v;
  dsc_status s = dsc_model_tensor_scale(mdl, index, &v);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return view_tensor(m, cap, &v);
}

/* model_compute_tensor(cap, index) -> Tensor: the BF16-rounded compute copy (refreshed now) */
static PyObject *py_model_compute_tensor(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long index;
  if (!PyArg_ParseTuple(args, "OL", &cap, &index)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  if (model_enter(m, cap, "dsc_model_compute_tensor", 0, &mdl, &c) < 0) return NULL;
  DLTensor v;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_compute_tensor(mdl, index, &v));
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return view_tensor(m, cap, &v);
}

/* model_freeze(cap): dsc_model_freeze_fp8. Frees the float32 masters of the block matrices:
 * the Python layer calls it only on a model none of whose views were handed out. */
static PyObject *py_model_freeze(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  if (model_enter(m, cap, "dsc_model_freeze_fp8", 0, &mdl, &c) < 0) return NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_freeze_fp8(mdl));
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

/* model_state(cap, index, which) -> Tensor: which 0 grad, 1 exp_avg, 2 exp_avg_sq */
static PyObject *py_model_state(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long index;
  int which;
  if (!PyArg_ParseTuple(args, "OLi", &cap, &index, &which)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  /* a view, no data read: fine from the model's own callback too */
  const int entered = model_enter(m, cap, "dsc_model_grad", 1, &mdl, &c);
  if (entered < 0) return NULL;
  DLTensor v;
  dsc_status s;
  if (which == 0) s = dsc_model_grad(mdl, index, &v);
  else s = dsc_model_optimizer_state(mdl, index, which - 1, &v);
  if (entered) dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return view_tensor(m, cap, &v);
}

/* model_info(cap) -> dict(n_params, n_tensors, step, activation_bytes) */
static PyObject *py_model_info(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  /* step and activation bytes change in a training step; reading them from the model's
   * own callback is fine (the call is paused there) */
  const int entered = model_enter(m, cap, "dsc_model_info", 1, &mdl, &c);
  if (entered < 0) return NULL;
  size_t act = 0, wb = 0;
  dsc_model_activation_bytes(mdl, &act);
  dsc_model_weight_bytes(mdl, &wb);
  const long long step = (long long)dsc_model_step(mdl);
  if (entered) dsc_py_ctx_leave(c);
  dsc_model_parallel par;
  memset(&par, 0, sizeof par);
  par.size = sizeof par;
  dsc_model_parallel_info(mdl, &par);
  return Py_BuildValue("{s:L,s:L,s:L,s:K,s:K,s:i,s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}}", "n_params",
                       (long long)dsc_model_num_parameters(mdl), "n_tensors", (long long)dsc_model_num_tensors(mdl),
                       "step", step, "activation_bytes", (unsigned long long)act, "weight_bytes",
                       (unsigned long long)wb, "frozen", (int)dsc_model_is_frozen(mdl), "parallel", "world",
                       (int)par.world, "rank", (int)par.rank, "expert_parallel", (int)par.expert_parallel,
                       "data_parallel", (int)par.data_parallel, "ep_rank", (int)par.ep_rank, "dp_rank",
                       (int)par.dp_rank, "n_local_experts", (int)par.n_local_experts, "first_expert",
                       (int)par.first_expert);
}

/* model_set_step(cap, step) */
static PyObject *py_model_set_step(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long step;
  if (!PyArg_ParseTuple(args, "OL", &cap, &step)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *c;
  if (model_enter(m, cap, "dsc_model_set_step", 0, &mdl, &c) < 0) return NULL;
  dsc_status s = dsc_model_set_step(mdl, step);
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

/* model_expert_load(cap, layer) -> list[int] */
static PyObject *py_model_expert_load(PyObject *m, PyObject *args) {
  PyObject *cap;
  int layer;
  if (!PyArg_ParseTuple(args, "Oi", &cap, &layer)) return NULL;
  dsc_model *mdl;
  dsc_py_ctx *x;
  const int entered = model_enter(m, cap, "dsc_model_expert_load", 1, &mdl, &x);
  if (entered < 0) return NULL;
  dsc_model_config c;
  dsc_model_get_config(mdl, &c);
  const int32_t E = c.n_routed_experts > 0 ? c.n_routed_experts : 1;
  int64_t *counts = (int64_t *)PyMem_Malloc((size_t)E * sizeof(int64_t));
  if (!counts) {
    if (entered) dsc_py_ctx_leave(x);
    return PyErr_NoMemory();
  }
  dsc_status s = dsc_model_expert_load(mdl, layer, counts, E);
  if (entered) dsc_py_ctx_leave(x);
  PyObject *out = NULL;
  if (s != DSC_OK) {
    dsc_py_raise(dsc_py_get_state(m), s);
  } else if ((out = PyList_New(E))) {
    for (int32_t e = 0; e < E; ++e) PyList_SET_ITEM(out, e, PyLong_FromLongLong(counts[e]));
  }
  PyMem_Free(counts);
  return out;
}

/* model_forward(cap, tokens, logits, depth): depth < 0 main logits, else MTP depth */
static PyObject *py_model_forward(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *lg_o;
  int depth;
  if (!PyArg_ParseTuple(args, "OOOi", &cap, &tok_o, &lg_o, &depth)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  BEGIN(depth < 0 ? "dsc_model_forward" : "dsc_model_forward_mtp");
  IN(tok, tok_o, "tokens");
  OUT(lg, lg_o, "logits");
  USE_CTX(model_ctx(cap));
  if (depth < 0)
    RUN(dsc_model_forward(mdl, tok, lg));
  else
    RUN(dsc_model_forward_mtp(mdl, tok, depth, lg));
  ret = Py_NewRef(Py_None);
  END
}

/* model_routing(cap, tokens, layer, indices, weights, scores) */
static PyObject *py_model_routing(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *i_o, *w_o, *s_o;
  int layer;
  if (!PyArg_ParseTuple(args, "OOiOOO", &cap, &tok_o, &layer, &i_o, &w_o, &s_o)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  BEGIN("dsc_model_routing");
  IN(tok, tok_o, "tokens");
  OUT(idx, i_o, "indices");
  OUT(wt, w_o, "weights");
  OUT(sc, s_o, "scores");
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_routing(mdl, tok, layer, idx, wt, sc));
  ret = Py_NewRef(Py_None);
  END
}

static int parse_train_options(PyObject *t, dsc_train_options *o) {
  dsc_train_options_default(o);
  return PyArg_ParseTuple(t, "fffffffffii;train options: (lr, beta1, beta2, eps, weight_decay, max_grad_norm, "
                             "mtp_lambda, aux_alpha, bias_update_rate, grad_accum, ignore_index)",
                          &o->lr, &o->beta1, &o->beta2, &o->eps, &o->weight_decay, &o->max_grad_norm,
                          &o->mtp_lambda, &o->aux_alpha, &o->bias_update_rate, &o->grad_accum,
                          &o->ignore_index);
}

static PyObject *stats_dict(const dsc_train_stats *s) {
  return Py_BuildValue("{s:f,s:f,s:f,s:f,s:L,s:f,s:L}", "loss", (double)s->loss, "mtp_loss", (double)s->mtp_loss,
                       "aux_loss", (double)s->aux_loss, "grad_norm", (double)s->grad_norm, "step",
                       (long long)s->step, "load_imbalance", (double)s->load_imbalance, "tokens",
                       (long long)s->tokens);
}

/* model_train(cap, tokens, targets, options, mode, accumulate, grad_scale) -> stats dict;
 * mode 0: dsc_model_loss_and_grad, 1: dsc_model_train_step, 2: dsc_model_train_step with
 * stats NULL (no host wait on a GPU) -> None */
static PyObject *py_model_train(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *tgt_o, *opt_o;
  int mode, acc;
  float scale;
  if (!PyArg_ParseTuple(args, "OOOOiif", &cap, &tok_o, &tgt_o, &opt_o, &mode, &acc, &scale)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  dsc_train_options o;
  if (!parse_train_options(opt_o, &o)) return NULL;
  dsc_train_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.size = sizeof stats;
  BEGIN(mode ? "dsc_model_train_step" : "dsc_model_loss_and_grad");
  IN(tok, tok_o, "tokens");
  IN(tgt, tgt_o, "targets");
  USE_CTX(model_ctx(cap));
  if (mode)
    RUN(dsc_model_train_step(mdl, &o, tok, tgt, mode == 2 ? NULL : &stats));
  else
    RUN(dsc_model_loss_and_grad(mdl, &o, tok, tgt, acc, scale, &stats));
  ret = mode == 2 ? Py_NewRef(Py_None) : stats_dict(&stats);
  END
}

/* model_train_stats(cap) -> stats dict of the last train step (dsc_model_train_stats) */
static PyObject *py_model_train_stats(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  dsc_train_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.size = sizeof stats;
  BEGIN("dsc_model_train_stats");
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_train_stats(mdl, &stats));
  ret = stats_dict(&stats);
  END
}

#define MAX_MTP_ARGS 8

/* model_forward_train(cap, tokens, logits_or_None, [mtp_logits ...]) */
static PyObject *py_model_forward_train(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *lg_o, *mtp_o;
  if (!PyArg_ParseTuple(args, "OOOO!", &cap, &tok_o, &lg_o, &PyList_Type, &mtp_o)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  const Py_ssize_t nm = PyList_GET_SIZE(mtp_o);
  if (nm > MAX_MTP_ARGS) {
    PyErr_Format(PyExc_ValueError, "dsc_model_forward_train: n_mtp: expected at most %d, got %zd", MAX_MTP_ARGS, nm);
    return NULL;
  }
  BEGIN("dsc_model_forward_train");
  IN(tok, tok_o, "tokens");
  OPT_OUT(lg, lg_o, "logits");
  DLTensor *mt[MAX_MTP_ARGS] = {0};
  for (Py_ssize_t d = 0; d < nm; ++d) {
    PyObject *o = PyList_GET_ITEM(mtp_o, d);
    mt[d] = dsc_py_frame_add(&f, o, "mtp_logits", 1, 1);
    if (!mt[d] && o != Py_None) goto out;
  }
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_forward_train(mdl, tok, (int32_t)nm, lg, mt));
  ret = Py_NewRef(Py_None);
  END
}

/* model_backward(cap, dlogits, [dmtp_logits ...], accumulate) */
static PyObject *py_model_backward(PyObject *m, PyObject *args) {
  PyObject *cap, *dl_o, *mtp_o;
  int acc;
  if (!PyArg_ParseTuple(args, "OOO!i", &cap, &dl_o, &PyList_Type, &mtp_o, &acc)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  const Py_ssize_t nm = PyList_GET_SIZE(mtp_o);
  if (nm > MAX_MTP_ARGS) {
    PyErr_Format(PyExc_ValueError, "dsc_model_backward: n_mtp: expected at most %d, got %zd", MAX_MTP_ARGS, nm);
    return NULL;
  }
  BEGIN("dsc_model_backward");
  IN(dl, dl_o, "dlogits");
  const DLTensor *mt[MAX_MTP_ARGS] = {0};
  for (Py_ssize_t d = 0; d < nm; ++d) {
    PyObject *o = PyList_GET_ITEM(mtp_o, d);
    mt[d] = dsc_py_frame_add(&f, o, "dmtp_logits", 0, 1);
    if (!mt[d] && o != Py_None) goto out;
  }
  USE_CTX(model_ctx(cap));
  RUN(dsc_model_backward(mdl, dl, (int32_t)nm, mt, acc));
  ret = Py_NewRef(Py_None);
  END
}

/* model_optimizer_step(cap, options) -> stats dict */
static PyObject *py_model_optimizer_step(PyObject *m, PyObject *args) {
  PyObject *cap, *opt_o;
  if (!PyArg_ParseTuple(args, "OO", &cap, &opt_o)) return NULL;
  dsc_model *mdl = model_of(cap);
  if (!mdl) return NULL;
  dsc_train_options o;
  if (!parse_train_options(opt_o, &o)) return NULL;
  dsc_train_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.size = sizeof stats;
  dsc_py_ctx *c;
  const int r = model_enter(m, cap, "dsc_model_optimizer_step", 0, &mdl, &c);
  if (r < 0) return NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_model_optimizer_step(mdl, &o, &stats));
  if (r) dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return stats_dict(&stats);
}

PyMethodDef dsc_py_model_methods[] = {
    {"model_forward_train", py_model_forward_train, METH_VARARGS, "dsc_model_forward_train."},
    {"model_backward", py_model_backward, METH_VARARGS, "dsc_model_backward."},
    {"model_optimizer_step", py_model_optimizer_step, METH_VARARGS, "dsc_model_optimizer_step."},
    {"model_new", py_model_new, METH_VARARGS, "A dsc_model (capsule) from config.json text."},
    {"model_load", py_model_load, METH_VARARGS, "dsc_model_load(dir) (capsule)."},
    {"model_save", py_model_save, METH_VARARGS, "dsc_model_save."},
    {"model_check_reentry", py_model_check_reentry, METH_VARARGS,
     "Raise when this thread is running a call on the model."},
    {"model_tensors", py_model_tensors, METH_VARARGS, "[(hf_name, Tensor view)]."},
    {"model_tensor_scale", py_model_tensor_scale, METH_VARARGS, "Block scales of a held FP8 matrix."},
    {"model_compute_tensor", py_model_compute_tensor, METH_VARARGS, "BF16 compute copy of a tensor (refreshed)."},
    {"model_freeze", py_model_freeze, METH_VARARGS, "dsc_model_freeze_fp8 (no views may exist)."},
    {"model_state", py_model_state, METH_VARARGS, "Gradient (0) / exp_avg (1) / exp_avg_sq (2) view."},
    {"model_info", py_model_info, METH_VARARGS, "Parameter count, tensors, step, activation bytes."},
    {"model_comm_stats", py_model_comm_stats, METH_VARARGS, "dsc_model_comm_stats."},
    {"model_set_step", py_model_set_step, METH_VARARGS, "dsc_model_set_step."},
    {"model_expert_load", py_model_expert_load, METH_VARARGS, "Expert load of an MoE layer."},
    {"model_forward", py_model_forward, METH_VARARGS, "dsc_model_forward / dsc_model_forward_mtp."},
    {"model_routing", py_model_routing, METH_VARARGS, "dsc_model_routing."},
    {"model_train", py_model_train, METH_VARARGS, "dsc_model_loss_and_grad / dsc_model_train_step."},
    {"model_train_stats", py_model_train_stats, METH_VARARGS, "dsc_model_train_stats."},
    {"config_normalize", py_config_normalize, METH_VARARGS, "dsc_model_config_normalize_json (str)."},
    {"model_config_json", py_model_config_json, METH_VARARGS, "dsc_model_config_json (str)."},
    {"model_warnings", py_model_warnings, METH_VARARGS, "dsc_model_load's warnings."},
    {NULL, NULL, 0, NULL},
};
