/*
 * ops_mla.c -- Python wrappers of Multi-head Latent Attention: training forward/backward
 * (the saved activations travel as a PyCapsule owning a dsc_mla_saved, bound to the pool
 * context its forward ran on), the paged latent cache (a PyCapsule owning a dsc_mla_cache
 * on the cache's own context), prefill and decode. Each capsule holds its context capsule,
 * so the context outlives it. Defaults and output allocation live in deepseek_c/mla.py.
 */
#include "glue.h"

#include <string.h>

#include "call.h"

static const char *const SAVED_NAME = "deepseek_c.mla_saved";
static const char *const CACHE_NAME = "deepseek_c.mla_cache";

/* params: (hidden, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
 *          v_head_dim, rms_norm_eps, rope_tuple, softmax_scale[, fp8]) with rope_tuple as in
 *          ops_dense.c: (layout, dim, theta, factor, original_max_position, beta_fast,
 *          beta_slow, mscale, mscale_all_dim) */
static int parse_params(PyObject *t, dsc_mla_params *p) {
  memset(p, 0, sizeof *p);
  p->size = sizeof *p;
  dsc_rope_params_default(&p->rope, 0);
  return PyArg_ParseTuple(
      t, "iiiiiiif(iiffiffff)f|i;mla params: expected (hidden, n_heads, q_lora_rank, kv_lora_rank, "
         "qk_nope_head_dim, qk_rope_head_dim, v_head_dim, rms_norm_eps, rope, softmax_scale[, fp8])",
      &p->hidden, &p->n_heads, &p->q_lora_rank, &p->kv_lora_rank, &p->qk_nope_head_dim,
      &p->qk_rope_head_dim, &p->v_head_dim, &p->rms_norm_eps, &p->rope.layout, &p->rope.dim,
      &p->rope.theta, &p->rope.factor, &p->rope.original_max_position, &p->rope.beta_fast,
      &p->rope.beta_slow, &p->rope.mscale, &p->rope.mscale_all_dim, &p->softmax_scale, &p->fp8);
}

static const char *const WNAMES[8] = {"q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj",
                                      "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj",
                                      "o_proj"};

/* A tuple of 8 arrays or None, in WNAMES order, imported into the frame. */
static int import8(dsc_py_frame *f, PyObject *tup, int writable, DLTensor **out,
                   const char *prefix) {
  if (!PyTuple_Check(tup) || PyTuple_GET_SIZE(tup) != 8) {
    PyErr_Format(PyExc_TypeError, "%s: %s: expected a tuple of 8 arrays or None", f->fn, prefix);
    return -1;
  }
  for (int i = 0; i < 8; ++i) {
    PyObject *o = PyTuple_GET_ITEM(tup, i);
    char name[96];
    snprintf(name, sizeof name, "%s%s", prefix, WNAMES[i]);
    out[i] = dsc_py_frame_add(f, o, name, writable, 1);
    if (!out[i] && o != Py_None) return -1;
  }
  return 0;
}

static void fill_weights(dsc_mla_weights *w, DLTensor **t) {
  memset(w, 0, sizeof *w);
  w->size = sizeof *w;
  w->q_a_proj = t[0];
  w->q_a_layernorm = t[1];
  w->q_b_proj = t[2];
  w->q_proj = t[3];
  w->kv_a_proj_with_mqa = t[4];
  w->kv_a_layernorm = t[5];
  w->kv_b_proj = t[6];
  w->o_proj = t[7];
}

/* The saved activations' context is a pool context another thread may be running an op
 * on: enter it to free them (waiting with the GIL released; such a holder never waits for
 * anything itself). */
static void saved_destructor(PyObject *cap) {
  dsc_mla_saved *s = (dsc_mla_saved *)PyCapsule_GetPointer(cap, SAVED_NAME);
  PyObject *ctx_cap = (PyObject *)PyCapsule_GetContext(cap);
  dsc_py_ctx *c = ctx_cap ? dsc_py_ctx_get(ctx_cap) : NULL;
  if (s && c) {
    const int taken = dsc_py_ctx_enter_pooled(c);
    dsc_mla_saved_destroy(s);
    if (taken) dsc_py_ctx_leave(c);
  }
  PyErr_Clear();
  Py_XDECREF(ctx_cap);
}

static void cache_destructor(PyObject *cap) {
  dsc_mla_cache *c = (dsc_mla_cache *)PyCapsule_GetPointer(cap, CACHE_NAME);
  PyObject *ctx_cap = (PyObject *)PyCapsule_GetContext(cap);
  dsc_mla_cache_destroy(c); /* its own context: no call can be running, each holds the capsule */
  Py_XDECREF(ctx_cap);
}

/* A capsule owning ptr (destroyed by dtor), holding a new reference to ctx_cap. */
static PyObject *make_capsule(PyObject *ctx_cap, void *ptr, const char *name,
                              PyCapsule_Destructor dtor) {
  PyObject *cap = PyCapsule_New(ptr, name, NULL);
  if (!cap) return NULL;
  if (PyCapsule_SetContext(cap, Py_NewRef(ctx_cap)) < 0) {
    Py_DECREF(ctx_cap);
    Py_DECREF(cap);
    return NULL;
  }
  PyCapsule_SetDestructor(cap, dtor);
  return cap;
}

/* mla_forward(x, positions, weights8, params, out, want_saved[, math_mode]) -> capsule | None
 * math_mode: the dsc_math_mode of the call (the backward takes the same) */
static PyObject *py_mla_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *po, *wt, *pr, *oo;
  int want, math = DSC_MATH_DEFAULT;
  if (!PyArg_ParseTuple(args, "OOOOOp|i", &xo, &po, &wt, &pr, &oo, &want, &math)) return NULL;
  dsc_mla_params p;
  if (!parse_params(pr, &p)) return NULL;
  BEGIN("dsc_mla_forward")
  dsc_mla_saved *saved = NULL;
  IN(x, xo, "x")
  IN(pos, po, "positions")
  OUT(y, oo, "out")
  DLTensor *wts[8];
  if (import8(&f, wt, 0, wts, "") < 0) goto out;
  dsc_mla_weights w;
  fill_weights(&w, wts);
  GET_CTX();
  if (want) {
    s = dsc_mla_saved_create(ctx, &saved);
    if (s != DSC_OK) {
      dsc_py_raise(f.st, s);
      goto out;
    }
  }
  RUN_IN_MODE(math, dsc_mla_forward(ctx, &p, &w, x, pos, y, saved));
  if (s != DSC_OK) {
    dsc_mla_saved_destroy(saved);
    dsc_py_raise(f.st, s);
    goto out;
  }
  if (saved) { /* bound to this pool context: the backward runs on it too */
    ret = make_capsule(call_pc, saved, SAVED_NAME, saved_destructor);
    if (!ret) dsc_mla_saved_destroy(saved);
  } else {
    ret = Py_NewRef(Py_None);
  }
  END
}

/* mla_backward(saved, x, positions, dout, weights8, params, dx, grads8[, math_mode]) */
static PyObject *py_mla_backward(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *po, *dyo, *wt, *pr, *dxo, *gt;
  int math = DSC_MATH_DEFAULT;
  if (!PyArg_ParseTuple(args, "OOOOOOOO|i", &cap, &xo, &po, &dyo, &wt, &pr, &dxo, &gt, &math))
    return NULL;
  dsc_mla_saved *saved = (dsc_mla_saved *)PyCapsule_GetPointer(cap, SAVED_NAME);
  if (!saved) return NULL;
  dsc_mla_params p;
  if (!parse_params(pr, &p)) return NULL;
  BEGIN("dsc_mla_backward")
  IN(x, xo, "x")
  IN(pos, po, "positions")
  IN(dy, dyo, "dout")
  OPT_OUT(dx, dxo, "dx")
  DLTensor *wts[8], *gts[8];
  if (import8(&f, wt, 0, wts, "") < 0) goto out;
  if (import8(&f, gt, 1, gts, "grads.") < 0) goto out;
  dsc_mla_weights w;
  fill_weights(&w, wts);
  dsc_mla_grads g;
  memset(&g, 0, sizeof g);
  g.size = sizeof g;
  g.q_a_proj = gts[0];
  g.q_a_layernorm = gts[1];
  g.q_b_proj = gts[2];
  g.q_proj = gts[3];
  g.kv_a_proj_with_mqa = gts[4];
  g.kv_a_layernorm = gts[5];
  g.kv_b_proj = gts[6];
  g.o_proj = gts[7];
  USE_CTX((PyObject *)PyCapsule_GetContext(cap)); /* the forward's context */
  RUN_IN_MODE(math, dsc_mla_backward(ctx, &p, &w, saved, x, pos, dy, dx, &g));
  if (s != DSC_OK) {
    dsc_py_raise(f.st, s);
    goto out;
  }
  ret = Py_NewRef(Py_None);
  END
}

/* mla_cache_new(device_type, device_id, n_layers, max_batch, max_tokens, block_size,
 *               n_blocks, kv_lora_rank, rope_dim, dtype) -> capsule */
static PyObject *py_mla_cache_new(PyObject *m, PyObject *args) {
  int dt_, di;
  dsc_mla_cache_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  const char *dtype;
  if (!PyArg_ParseTuple(args, "iiiiiiiiis", &dt_, &di, &o.n_layers, &o.max_batch, &o.max_tokens,
                        &o.block_size, &o.n_blocks, &o.kv_lora_rank, &o.rope_dim, &dtype))
    return NULL;
  if (!strcmp(dtype, "float32")) o.dtype = DSC_DTYPE_FLOAT32;
  else if (!strcmp(dtype, "bfloat16")) o.dtype = DSC_DTYPE_BFLOAT16;
  else if (!strcmp(dtype, "float8_e4m3fn") || !strcmp(dtype, "fp8")) o.dtype = DSC_DTYPE_FLOAT8_E4M3FN;
  else {
    PyErr_Format(PyExc_TypeError,
                 "dsc_mla_cache_create: dtype: expected 'float32', 'bfloat16' or 'float8_e4m3fn', got '%s'",
                 dtype);
    return NULL;
  }
  dsc_py_state *st = dsc_py_get_state(m);
  DLDevice dev = {(DLDeviceType)dt_, di};
  char what[96];
  if (dt_ == kDLCPU)
    snprintf(what, sizeof what, "MLA cache (%d layers, %d sequences, cpu)", (int)o.n_layers,
             (int)o.max_batch);
  else
    snprintf(what, sizeof what, "MLA cache (%d layers, %d sequences, cuda:%d)", (int)o.n_layers,
             (int)o.max_batch, di);
  PyObject *ctx_cap = dsc_py_ctx_new(st, dev, 0, what); /* the cache's own context */
  if (!ctx_cap) return NULL;
  dsc_mla_cache *c = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_mla_cache_create(dsc_py_ctx_get(ctx_cap)->ctx, &o, &c));
  if (s != DSC_OK) {
    Py_DECREF(ctx_cap);
    return dsc_py_raise(st, s);
  }
  PyObject *cap = make_capsule(ctx_cap, c, CACHE_NAME, cache_destructor);
  if (!cap) dsc_mla_cache_destroy(c);
  Py_DECREF(ctx_cap);
  return cap;
}

static PyObject *cache_op(dsc_py_state *st, dsc_mla_cache *c, const char *op, long long id,
                          long long arg);

/* mla_cache_op(cache, op, seq_id, arg): op in add, free, truncate, length, blocks,
 * counts, bytes. */
static PyObject *py_mla_cache_op(PyObject *m, PyObject *args) {
  PyObject *cap;
  const char *op;
  long long id = 0, arg = 0;
  if (!PyArg_ParseTuple(args, "Os|LL", &cap, &op, &id, &arg)) return NULL;
  dsc_mla_cache *c = (dsc_mla_cache *)PyCapsule_GetPointer(cap, CACHE_NAME);
  if (!c) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  /* the metadata ops are quick: run them with the GIL held, on the entered context */
  dsc_py_ctx *x = dsc_py_ctx_get((PyObject *)PyCapsule_GetContext(cap));
  if (!x || dsc_py_ctx_enter(st, x, "dsc_mla_cache", 0) < 0) return NULL;
  PyObject *ret = cache_op(st, c, op, id, arg);
  dsc_py_ctx_leave(x);
  return ret;
}

static PyObject *cache_op(dsc_py_state *st, dsc_mla_cache *c, const char *op, long long id,
                          long long arg) {
  dsc_status s = DSC_OK;
  if (!strcmp(op, "add")) s = dsc_mla_cache_add_sequence(c, id);
  else if (!strcmp(op, "free")) s = dsc_mla_cache_free_sequence(c, id);
  else if (!strcmp(op, "truncate")) s = dsc_mla_cache_truncate(c, id, arg);
  else if (!strcmp(op, "length")) {
    int64_t n = 0;
    s = dsc_mla_cache_sequence_length(c, id, &n);
    if (s == DSC_OK) return PyLong_FromLongLong(n);
  } else if (!strcmp(op, "blocks")) {
    int32_t n = 0;
    s = dsc_mla_cache_block_table(c, id, NULL, 0, &n);
    if (s != DSC_OK) return dsc_py_raise(st, s);
    int32_t *b = (int32_t *)PyMem_Malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!b) return PyErr_NoMemory();
    s = dsc_mla_cache_block_table(c, id, b, n, &n);
    PyObject *list = s == DSC_OK ? PyList_New(n) : NULL;
    for (int32_t i = 0; list && i < n; ++i) PyList_SET_ITEM(list, i, PyLong_FromLong(b[i]));
    PyMem_Free(b);
    if (s == DSC_OK) return list;
  } else if (!strcmp(op, "counts")) {
    int32_t fb = 0, fs = 0;
    s = dsc_mla_cache_free_counts(c, &fb, &fs);
    if (s == DSC_OK) return Py_BuildValue("(ii)", fb, fs);
  } else if (!strcmp(op, "bytes")) {
    size_t bpt = 0, tot = 0;
    s = dsc_mla_cache_bytes(c, &bpt, &tot);
    if (s == DSC_OK) return Py_BuildValue("(nn)", (Py_ssize_t)bpt, (Py_ssize_t)tot);
  } else {
    PyErr_Format(PyExc_ValueError, "mla_cache_op: op: unknown '%s'", op);
    return NULL;
  }
  if (s != DSC_OK) return dsc_py_raise(st, s);
  Py_RETURN_NONE;
}

/* mla_cache_read(cache, layer, seq_id, latent, rope) */
static PyObject *py_mla_cache_read(PyObject *m, PyObject *args) {
  PyObject *cap, *lo, *ro;
  int layer;
  long long id;
  if (!PyArg_ParseTuple(args, "OiLOO", &cap, &layer, &id, &lo, &ro)) return NULL;
  dsc_mla_cache *c = (dsc_mla_cache *)PyCapsule_GetPointer(cap, CACHE_NAME);
  if (!c) return NULL;
  BEGIN("dsc_mla_cache_read")
  OUT(lat, lo, "latent")
  OUT(rope, ro, "rope")
  USE_CTX((PyObject *)PyCapsule_GetContext(cap)); /* the cache's context */
  RUN(dsc_mla_cache_read(ctx, c, layer, id, lat, rope));
  ret = Py_NewRef(Py_None);
  END
}

/* mla_infer(decode, cache, layer, x, seq_ids, positions, weights8, params, out) */
/* mla_infer(decode, cache, layer, x, seq_ids, positions, weights(8), params, out
 *           [, scale_inv(8) or None]): scale_inv entries (None allowed) make the matching
 *           weights FP8-held (see dsc_mla_weights). */
static PyObject *py_mla_infer(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *io, *po, *wt, *pr, *oo, *st = Py_None;
  int decode, layer;
  if (!PyArg_ParseTuple(args, "pOiOOOOOO|O", &decode, &cap, &layer, &xo, &io, &po, &wt, &pr, &oo,
                        &st))
    return NULL;
  dsc_mla_cache *c = (dsc_mla_cache *)PyCapsule_GetPointer(cap, CACHE_NAME);
  if (!c) return NULL;
  dsc_mla_params p;
  if (!parse_params(pr, &p)) return NULL;
  BEGIN(decode ? "dsc_mla_decode" : "dsc_mla_prefill")
  IN(x, xo, "x")
  IN(ids, io, "seq_ids")
  IN(pos, po, "positions")
  OUT(y, oo, "out")
  DLTensor *wts[8];
  if (import8(&f, wt, 0, wts, "") < 0) goto out;
  dsc_mla_weights w;
  fill_weights(&w, wts);
  if (st != Py_None) {
    DLTensor *sc[8];
    if (import8(&f, st, 0, sc, "scale_inv of ") < 0) goto out;
    w.q_a_proj_scale_inv = sc[0];
    w.q_b_proj_scale_inv = sc[2];
    w.q_proj_scale_inv = sc[3];
    w.kv_a_proj_with_mqa_scale_inv = sc[4];
    w.kv_b_proj_scale_inv = sc[6];
    w.o_proj_scale_inv = sc[7];
  }
  USE_CTX((PyObject *)PyCapsule_GetContext(cap)); /* the cache's context */
  if (decode) RUN(dsc_mla_decode(ctx, &p, &w, c, layer, x, ids, pos, y));
  else RUN(dsc_mla_prefill(ctx, &p, &w, c, layer, x, ids, pos, y));
  ret = Py_NewRef(Py_None);
  END
}

PyMethodDef dsc_py_mla_methods[] = {
    {"mla_forward", py_mla_forward, METH_VARARGS, "MLA training forward (see deepseek_c.mla)."},
    {"mla_backward", py_mla_backward, METH_VARARGS, "MLA backward (see deepseek_c.mla)."},
    {"mla_cache_new", py_mla_cache_new, METH_VARARGS, "A paged MLA latent cache (capsule)."},
    {"mla_cache_op", py_mla_cache_op, METH_VARARGS, "Sequence management of an MLA cache."},
    {"mla_cache_read", py_mla_cache_read, METH_VARARGS, "Read back a sequence's cached rows."},
    {"mla_infer", py_mla_infer, METH_VARARGS, "MLA prefill / decode over the latent cache."},
    {NULL, NULL, 0, NULL},
};
