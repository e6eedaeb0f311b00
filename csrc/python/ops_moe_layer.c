/*
 * ops_moe_layer.c -- Python wrappers of the C MoE layer (dsc_moe_layer_forward/backward).
 * The saved activations are a capsule that owns the dsc_moe_layer_saved handle and holds
 * the pool context its forward ran on (which owns the memory; the backward runs there too).
 */
#include "call.h"

#include <string.h>

static const char *const SAVED_CAPSULE = "deepseek_c.moe_layer_saved";

/* Another thread may be running an op on that pool context: enter it to free (see
 * dsc_py_ctx_enter_pooled). */
static void saved_destructor(PyObject *cap) {
  dsc_moe_layer_saved *s = (dsc_moe_layer_saved *)PyCapsule_GetPointer(cap, SAVED_CAPSULE);
  PyObject *ctx_cap = (PyObject *)PyCapsule_GetContext(cap);
  dsc_py_ctx *c = ctx_cap ? dsc_py_ctx_get(ctx_cap) : NULL;
  if (s && c) {
    const int taken = dsc_py_ctx_enter_pooled(c);
    dsc_moe_layer_saved_destroy(s);
    if (taken) dsc_py_ctx_leave(c);
  }
  PyErr_Clear();
  Py_XDECREF(ctx_cap);
}

static const char *const W_NAMES[8] = {
    "mlp.gate.weight", "mlp.gate.e_score_correction_bias", "experts gate_proj (stacked)",
    "experts up_proj (stacked)", "experts down_proj (stacked)", "mlp.shared_experts.gate_proj.weight",
    "mlp.shared_experts.up_proj.weight", "mlp.shared_experts.down_proj.weight"};

/* Import the 8 weights (None allowed for bias and the shared experts). */
static int import_weights(dsc_py_frame *f, PyObject *tup, dsc_moe_layer_weights *w) {
  PyObject *seq = PySequence_Fast(tup, "weights: expected a tuple of 8 arrays");
  if (!seq) return -1;
  if (PySequence_Fast_GET_SIZE(seq) != 8) {
    Py_DECREF(seq);
    PyErr_Format(PyExc_ValueError, "%s: weights: expected 8 entries, got %zd", f->fn,
                 PySequence_Fast_GET_SIZE(seq));
    return -1;
  }
  const DLTensor *t[8];
  for (int i = 0; i < 8; ++i) {
    PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
    int optional = i == 1 || i >= 5;
    t[i] = dsc_py_frame_add(f, o, W_NAMES[i], 0, optional);
    if (!t[i] && (o != Py_None || !optional)) {
      Py_DECREF(seq);
      return -1;
    }
  }
  Py_DECREF(seq);
  memset(w, 0, sizeof *w);
  w->size = sizeof *w;
  w->gate = t[0], w->bias = t[1], w->experts_gate = t[2], w->experts_up = t[3];
  w->experts_down = t[4], w->shared_gate = t[5], w->shared_up = t[6], w->shared_down = t[7];
  return 0;
}

/* The 6 weight_scale_inv of FP8-held expert weights (experts gate/up/down, shared
 * gate/up/down; None: float32 weight). */
static int import_scales(dsc_py_frame *f, PyObject *tup, dsc_moe_layer_weights *w) {
  static const char *const NAMES[6] = {
      "experts gate_proj weight_scale_inv", "experts up_proj weight_scale_inv",
      "experts down_proj weight_scale_inv", "mlp.shared_experts.gate_proj.weight_scale_inv",
      "mlp.shared_experts.up_proj.weight_scale_inv",
      "mlp.shared_experts.down_proj.weight_scale_inv"};
  PyObject *seq = PySequence_Fast(tup, "scales: expected a tuple of 6 arrays or None");
  if (!seq) return -1;
  if (PySequence_Fast_GET_SIZE(seq) != 6) {
    Py_DECREF(seq);
    PyErr_Format(PyExc_ValueError, "%s: scales: expected 6 entries", f->fn);
    return -1;
  }
  const DLTensor *t[6];
  for (int i = 0; i < 6; ++i) {
    PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
    t[i] = dsc_py_frame_add(f, o, NAMES[i], 0, 1);
    if (!t[i] && o != Py_None) {
      Py_DECREF(seq);
      return -1;
    }
  }
  Py_DECREF(seq);
  w->experts_gate_scale_inv = t[0], w->experts_up_scale_inv = t[1];
  w->experts_down_scale_inv = t[2], w->shared_gate_scale_inv = t[3];
  w->shared_up_scale_inv = t[4], w->shared_down_scale_inv = t[5];
  return 0;
}

/* moe_layer_forward(x, route, align, weights, y, counts|None, keep[, fp8[, scales|None]])
 * -> saved | None */
static PyObject *py_moe_layer_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *ro, *wo, *yo, *co, *so = Py_None;
  int align, keep, fp8 = 0;
  if (!PyArg_ParseTuple(args, "OOiOOOp|pO", &xo, &ro, &align, &wo, &yo, &co, &keep, &fp8, &so))
    return NULL;
  dsc_moe_route_params p;
  if (!dsc_py_parse_route(ro, &p)) return NULL;
  BEGIN("dsc_moe_layer_forward")
  dsc_moe_layer_weights w;
  dsc_moe_layer_saved *saved = NULL;
  IN(x, xo, "x")
  OUT(y, yo, "y")
  OPT_OUT(counts, co, "counts")
  if (import_weights(&f, wo, &w) < 0) goto out;
  w.fp8 = fp8;
  if (so != Py_None && import_scales(&f, so, &w) < 0) goto out;
  GET_CTX();
  if (keep) {
    s = dsc_moe_layer_saved_create(ctx, &saved);
    if (s != DSC_OK) {
      dsc_py_raise(f.st, s);
      goto out;
    }
  }
  DSC_PY_CALL(s, dsc_moe_layer_forward(ctx, &p, align, &w, x, y, counts, saved));
  if (s != DSC_OK) {
    dsc_moe_layer_saved_destroy(saved);
    dsc_py_raise(f.st, s);
    goto out;
  }
  if (saved) {
    ret = PyCapsule_New(saved, SAVED_CAPSULE, NULL);
    if (!ret) {
      dsc_moe_layer_saved_destroy(saved);
      goto out;
    }
    PyCapsule_SetContext(ret, Py_NewRef(call_pc)); /* the backward runs on this context too */
    PyCapsule_SetDestructor(ret, saved_destructor);
  } else {
    ret = Py_NewRef(Py_None);
  }
  END
}

/* moe_layer_backward(x, dy, route, weights, saved, dx|None, grads(7, None allowed)[, fp8]) */
static PyObject *py_moe_layer_backward(PyObject *m, PyObject *args) {
  PyObject *xo, *dyo, *ro, *wo, *so, *dxo, *go;
  int fp8 = 0;
  if (!PyArg_ParseTuple(args, "OOOOOOO|p", &xo, &dyo, &ro, &wo, &so, &dxo, &go, &fp8)) return NULL;
  dsc_moe_route_params p;
  if (!dsc_py_parse_route(ro, &p)) return NULL;
  dsc_moe_layer_saved *saved = (dsc_moe_layer_saved *)PyCapsule_GetPointer(so, SAVED_CAPSULE);
  if (!saved) return NULL;
  BEGIN("dsc_moe_layer_backward")
  dsc_moe_layer_weights w;
  dsc_moe_layer_grads g;
  IN(x, xo, "x")
  IN(dy, dyo, "dy")
  OPT_OUT(dx, dxo, "dx")
  if (import_weights(&f, wo, &w) < 0) goto out;
  w.fp8 = fp8;
  {
    static const char *const G_NAMES[7] = {"dgate", "dexperts_gate", "dexperts_up", "dexperts_down",
                                           "dshared_gate", "dshared_up", "dshared_down"};
    PyObject *seq = PySequence_Fast(go, "grads: expected a tuple of 7 arrays or None");
    if (!seq) goto out;
    if (PySequence_Fast_GET_SIZE(seq) != 7) {
      Py_DECREF(seq);
      PyErr_SetString(PyExc_ValueError, "dsc_moe_layer_backward: grads: expected 7 entries");
      goto out;
    }
    DLTensor *gt[7];
    for (int i = 0; i < 7; ++i) {
      PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
      gt[i] = dsc_py_frame_add(&f, o, G_NAMES[i], 1, 1);
      if (!gt[i] && o != Py_None) {
        Py_DECREF(seq);
        goto out;
      }
    }
    Py_DECREF(seq);
    memset(&g, 0, sizeof g);
    g.size = sizeof g;
    g.gate = gt[0], g.experts_gate = gt[1], g.experts_up = gt[2], g.experts_down = gt[3];
    g.shared_gate = gt[4], g.shared_up = gt[5], g.shared_down = gt[6];
  }
  USE_CTX((PyObject *)PyCapsule_GetContext(so)); /* the forward's context */
  RUN(dsc_moe_layer_backward(ctx, &p, &w, x, dy, saved, dx, &g));
  ret = Py_NewRef(Py_None);
  END
}

/* moe_layer_aux_loss(saved, seq_len, alpha) -> float: the sequence-wise balance loss of the
 * forward that filled `saved` (alpha * L_bal); its gradient into the router, scaled by
 * alpha, is added by the next moe_layer_backward on `saved` (a later call replaces it). */
static PyObject *py_moe_layer_aux_loss(PyObject *m, PyObject *args) {
  PyObject *so;
  long long seq_len;
  float alpha;
  if (!PyArg_ParseTuple(args, "OLf", &so, &seq_len, &alpha)) return NULL;
  dsc_moe_layer_saved *saved = (dsc_moe_layer_saved *)PyCapsule_GetPointer(so, SAVED_CAPSULE);
  if (!saved) return NULL;
  BEGIN("dsc_moe_layer_aux_loss")
  float loss = 0.0f;
  USE_CTX((PyObject *)PyCapsule_GetContext(so)); /* the forward's context */
  RUN(dsc_moe_layer_aux_loss(ctx, saved, (int64_t)seq_len, alpha, &loss));
  ret = PyFloat_FromDouble((double)loss);
  END
}

/* moe_layer_saved_routing(saved, indices|None, weights|None, scores|None): the routing of
 * the forward that filled `saved`, copied into the given arrays. */
static PyObject *py_moe_layer_saved_routing(PyObject *m, PyObject *args) {
  PyObject *so, *io, *wo, *sco;
  if (!PyArg_ParseTuple(args, "OOOO", &so, &io, &wo, &sco)) return NULL;
  dsc_moe_layer_saved *saved = (dsc_moe_layer_saved *)PyCapsule_GetPointer(so, SAVED_CAPSULE);
  if (!saved) return NULL;
  BEGIN("dsc_moe_layer_saved_routing")
  OPT_OUT(idx, io, "indices")
  OPT_OUT(wts, wo, "weights")
  OPT_OUT(scores, sco, "scores")
  USE_CTX((PyObject *)PyCapsule_GetContext(so));
  RUN(dsc_moe_layer_saved_routing(ctx, saved, idx, wts, scores));
  ret = Py_NewRef(Py_None);
  END
}

PyMethodDef dsc_py_moe_layer_methods[] = {
    {"moe_layer_forward", py_moe_layer_forward, METH_VARARGS,
     "moe_layer_forward(x, route, align, weights, y, counts|None, keep[, fp8[, scales]]) -> saved|None"},
    {"moe_layer_backward", py_moe_layer_backward, METH_VARARGS,
     "moe_layer_backward(x, dy, route, weights, saved, dx|None, grads[, fp8])"},
    {"moe_layer_aux_loss", py_moe_layer_aux_loss, METH_VARARGS,
     "moe_layer_aux_loss(saved, seq_len, alpha) -> float"},
    {"moe_layer_saved_routing", py_moe_layer_saved_routing, METH_VARARGS,
     "moe_layer_saved_routing(saved, indices|None, weights|None, scores|None)"},
    {NULL, NULL, 0, NULL},
};
