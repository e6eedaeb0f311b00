/*
 * ops_model.c -- Python wrappers of dsc_model (the C model and its training step). The
 * model travels as a PyCapsule "deepseek_c.model" owning a dsc_model* (and holding the
 * module, whose contexts must outlive it). Parameter, gradient and optimizer-state views
 * are dsc.Tensor objects over the model's arenas that keep the capsule alive.
 */
#include "call.h"

#define MODEL_NAME "deepseek_c.model"

static void model_destructor(PyObject *cap) {
  dsc_model *mdl = (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME);
  PyObject *mod = (PyObject *)PyCapsule_GetContext(cap);
  dsc_model_destroy(mdl);
  Py_XDECREF(mod);
}

static PyObject *wrap_model(PyObject *m, dsc_model *mdl) {
  PyObject *cap = PyCapsule_New(mdl, MODEL_NAME, model_destructor);
  if (!cap) {
    dsc_model_destroy(mdl);
    return NULL;
  }
  Py_INCREF(m);
  if (PyCapsule_SetContext(cap, m) < 0) {
    Py_DECREF(m);
    Py_DECREF(cap);
    return NULL;
  }
  return cap;
}

/* The model of a capsule and the lock of its context. */
static dsc_model *model_of(PyObject *m, PyObject *cap, PyThread_type_lock *lock) {
  dsc_model *mdl = (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME);
  if (!mdl) return NULL;
  DLDevice dev;
  dsc_context_get_device(dsc_model_context(mdl), &dev);
  if (lock && !dsc_py_context(dsc_py_get_state(m), dev, lock)) return NULL;
  return mdl;
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

/* model_new(config_json: str, device_type, device_id, seed, init, fp8, moments) -> capsule.
 * The config is parsed by C (dsc_model_create_json): the one parser. */
static PyObject *py_model_new(PyObject *m, PyObject *args) {
  const char *cfg_text;
  Py_ssize_t cfg_len;
  int dev_type, dev_id, init, fp8;
  unsigned long long seed;
  const char *moments;
  if (!PyArg_ParseTuple(args, "s#iiKiis", &cfg_text, &cfg_len, &dev_type, &dev_id, &seed, &init, &fp8,
                        &moments))
    return NULL;
  const int mdt = moments_dtype(moments);
  if (mdt < 0) return NULL;
  DLDevice dev;
  parse_device(m, dev_type, dev_id, &dev);
  dsc_py_state *st = dsc_py_get_state(m);
  PyThread_type_lock lock;
  dsc_context *ctx = dsc_py_context(st, dev, &lock);
  if (!ctx) return NULL;
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.seed = seed;
  o.init = init;
  o.fp8 = fp8;
  o.moments_dtype = mdt;
  dsc_model *mdl = NULL;
  dsc_status s;
  DSC_PY_CALL(lock, s, dsc_model_create_json(ctx, cfg_text, (size_t)cfg_len, &o, &mdl));
  if (s != DSC_OK) return dsc_py_raise(st, s);
  return wrap_model(m, mdl);
}

/* model_load(dir, device_type, device_id, fp8, moments, init_missing_mtp, strict, seed) -> capsule */
static PyObject *py_model_load(PyObject *m, PyObject *args) {
  const char *dir, *moments;
  int dev_type, dev_id, fp8, init_mtp, strict;
  unsigned long long seed;
  if (!PyArg_ParseTuple(args, "siiisiiK", &dir, &dev_type, &dev_id, &fp8, &moments, &init_mtp, &strict, &seed))
    return NULL;
  const int mdt = moments_dtype(moments);
  if (mdt < 0) return NULL;
  DLDevice dev;
  parse_device(m, dev_type, dev_id, &dev);
  dsc_py_state *st = dsc_py_get_state(m);
  PyThread_type_lock lock;
  dsc_context *ctx = dsc_py_context(st, dev, &lock);
  if (!ctx) return NULL;
  dsc_model_options o;
  dsc_model_options_default(&o);
  o.init = 0;
  o.fp8 = fp8;
  o.moments_dtype = mdt;
  o.init_missing_mtp = init_mtp;
  o.strict = strict;
  o.seed = seed;
  dsc_model *mdl = NULL;
  dsc_status s;
  DSC_PY_CALL(lock, s, dsc_model_load(ctx, dir, &o, &mdl));
  if (s != DSC_OK) return dsc_py_raise(st, s);
  return wrap_model(m, mdl);
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
  dsc_model *mdl = model_of(m, cap, NULL);
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
  dsc_model *mdl = model_of(m, cap, NULL);
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
  PyThread_type_lock lock;
  dsc_model *mdl = model_of(m, cap, &lock);
  if (!mdl) return NULL;
  dsc_status s;
  DSC_PY_CALL(lock, s, dsc_model_save(mdl, dir, opt));
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
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
  dsc_model *mdl = model_of(m, cap, NULL);
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
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  DLTensor v;
  dsc_status s = dsc_model_tensor_scale(mdl, index, &v);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return view_tensor(m, cap, &v);
}

/* model_freeze(cap): dsc_model_freeze_fp8. Frees the float32 masters of the block matrices:
 * the Python layer calls it only on a model none of whose views were handed out. */
static PyObject *py_model_freeze(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  PyThread_type_lock lock;
  dsc_model *mdl = model_of(m, cap, &lock);
  if (!mdl) return NULL;
  dsc_status s;
  DSC_PY_CALL(lock, s, dsc_model_freeze_fp8(mdl));
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

/* model_state(cap, index, which) -> Tensor: which 0 grad, 1 exp_avg, 2 exp_avg_sq */
static PyObject *py_model_state(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long index;
  int which;
  if (!PyArg_ParseTuple(args, "OLi", &cap, &index, &which)) return NULL;
  PyThread_type_lock lock;
  dsc_model *mdl = model_of(m, cap, &lock);
  if (!mdl) return NULL;
  DLTensor v;
  dsc_status s;
  if (which == 0) {
    DSC_PY_CALL(lock, s, dsc_model_grad(mdl, index, &v));
  } else {
    DSC_PY_CALL(lock, s, dsc_model_optimizer_state(mdl, index, which - 1, &v));
  }
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return view_tensor(m, cap, &v);
}

/* model_info(cap) -> dict(n_params, n_tensors, step, activation_bytes) */
static PyObject *py_model_info(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  size_t act = 0, wb = 0;
  dsc_model_activation_bytes(mdl, &act);
  dsc_model_weight_bytes(mdl, &wb);
  return Py_BuildValue("{s:L,s:L,s:L,s:K,s:K,s:i}", "n_params", (long long)dsc_model_num_parameters(mdl),
                       "n_tensors", (long long)dsc_model_num_tensors(mdl), "step",
                       (long long)dsc_model_step(mdl), "activation_bytes", (unsigned long long)act,
                       "weight_bytes", (unsigned long long)wb, "frozen", (int)dsc_model_is_frozen(mdl));
}

/* model_set_step(cap, step) */
static PyObject *py_model_set_step(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long step;
  if (!PyArg_ParseTuple(args, "OL", &cap, &step)) return NULL;
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  dsc_status s = dsc_model_set_step(mdl, step);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

/* model_expert_load(cap, layer) -> list[int] */
static PyObject *py_model_expert_load(PyObject *m, PyObject *args) {
  PyObject *cap;
  int layer;
  if (!PyArg_ParseTuple(args, "Oi", &cap, &layer)) return NULL;
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  dsc_model_config c;
  dsc_model_get_config(mdl, &c);
  const int32_t E = c.n_routed_experts > 0 ? c.n_routed_experts : 1;
  int64_t *counts = (int64_t *)PyMem_Malloc((size_t)E * sizeof(int64_t));
  if (!counts) return PyErr_NoMemory();
  dsc_status s = dsc_model_expert_load(mdl, layer, counts, E);
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
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  BEGIN(depth < 0 ? "dsc_model_forward" : "dsc_model_forward_mtp");
  IN(tok, tok_o, "tokens");
  OUT(lg, lg_o, "logits");
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
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  BEGIN("dsc_model_routing");
  IN(tok, tok_o, "tokens");
  OUT(idx, i_o, "indices");
  OUT(wt, w_o, "weights");
  OUT(sc, s_o, "scores");
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
 * mode 0: dsc_model_loss_and_grad, 1: dsc_model_train_step */
static PyObject *py_model_train(PyObject *m, PyObject *args) {
  PyObject *cap, *tok_o, *tgt_o, *opt_o;
  int mode, acc;
  float scale;
  if (!PyArg_ParseTuple(args, "OOOOiif", &cap, &tok_o, &tgt_o, &opt_o, &mode, &acc, &scale)) return NULL;
  dsc_model *mdl = model_of(m, cap, NULL);
  if (!mdl) return NULL;
  dsc_train_options o;
  if (!parse_train_options(opt_o, &o)) return NULL;
  dsc_train_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.size = sizeof stats;
  BEGIN(mode ? "dsc_model_train_step" : "dsc_model_loss_and_grad");
  IN(tok, tok_o, "tokens");
  IN(tgt, tgt_o, "targets");
  if (mode)
    RUN(dsc_model_train_step(mdl, &o, tok, tgt, &stats));
  else
    RUN(dsc_model_loss_and_grad(mdl, &o, tok, tgt, acc, scale, &stats));
  ret = stats_dict(&stats);
  END
}

PyMethodDef dsc_py_model_methods[] = {
    {"model_new", py_model_new, METH_VARARGS, "A dsc_model (capsule) from config.json text."},
    {"model_load", py_model_load, METH_VARARGS, "dsc_model_load(dir) (capsule)."},
    {"model_save", py_model_save, METH_VARARGS, "dsc_model_save."},
    {"model_tensors", py_model_tensors, METH_VARARGS, "[(hf_name, Tensor view)]."},
    {"model_tensor_scale", py_model_tensor_scale, METH_VARARGS, "Block scales of a held FP8 matrix."},
    {"model_freeze", py_model_freeze, METH_VARARGS, "dsc_model_freeze_fp8 (no views may exist)."},
    {"model_state", py_model_state, METH_VARARGS, "Gradient (0) / exp_avg (1) / exp_avg_sq (2) view."},
    {"model_info", py_model_info, METH_VARARGS, "Parameter count, tensors, step, activation bytes."},
    {"model_set_step", py_model_set_step, METH_VARARGS, "dsc_model_set_step."},
    {"model_expert_load", py_model_expert_load, METH_VARARGS, "Expert load of an MoE layer."},
    {"model_forward", py_model_forward, METH_VARARGS, "dsc_model_forward / dsc_model_forward_mtp."},
    {"model_routing", py_model_routing, METH_VARARGS, "dsc_model_routing."},
    {"model_train", py_model_train, METH_VARARGS, "dsc_model_loss_and_grad / dsc_model_train_step."},
    {"config_normalize", py_config_normalize, METH_VARARGS, "dsc_model_config_normalize_json (str)."},
    {"model_config_json", py_model_config_json, METH_VARARGS, "dsc_model_config_json (str)."},
    {"model_warnings", py_model_warnings, METH_VARARGS, "dsc_model_load's warnings."},
    {NULL, NULL, 0, NULL},
};
