/*
 * ops_dense.c -- Python wrappers of the dense ops: each imports its arrays (inputs
 * and caller-allocated outputs), runs the C op on the context of the first array's
 * device with the GIL released, and maps a failure to an exception.
 * Output allocation and argument defaults live in deepseek_c/ops.py.
 */
#include "glue.h"

#include <math.h>
#include <string.h>

#include "call.h"

/* ---- RMSNorm ---------------------------------------------------------------- */

static PyObject *py_rms_norm_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *wo, *yo, *ro;
  float eps;
  if (!PyArg_ParseTuple(args, "OOfOO", &xo, &wo, &eps, &yo, &ro)) return NULL;
  BEGIN("dsc_rms_norm_forward")
  IN(x, xo, "x")
  IN(w, wo, "w")
  OUT(y, yo, "y")
  OPT_OUT(rstd, ro, "rstd")
  RUN(dsc_rms_norm_forward(ctx, x, w, eps, y, rstd));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_rms_norm_backward(PyObject *m, PyObject *args) {
  PyObject *dyo, *xo, *wo, *ro, *dxo, *dwo;
  float eps;
  if (!PyArg_ParseTuple(args, "OOOOfOO", &dyo, &xo, &wo, &ro, &eps, &dxo, &dwo)) return NULL;
  BEGIN("dsc_rms_norm_backward")
  IN(dy, dyo, "dy")
  IN(x, xo, "x")
  IN(w, wo, "w")
  OPT_IN(rstd, ro, "rstd")
  OUT(dx, dxo, "dx")
  OUT(dw, dwo, "dw")
  RUN(dsc_rms_norm_backward(ctx, dy, x, w, rstd, eps, dx, dw));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- RoPE ------------------------------------------------------------------- */

/* params: (layout, dim, theta, factor, original_max_position, beta_fast, beta_slow,
 *          mscale, mscale_all_dim) */
static int parse_rope(PyObject *t, dsc_rope_params *p) {
  dsc_rope_params_default(p, 0);
  return PyArg_ParseTuple(t, "iiffiffff;rope params: expected (layout, dim, theta, factor, "
                             "original_max_position, beta_fast, beta_slow, mscale, mscale_all_dim)",
                          &p->layout, &p->dim, &p->theta, &p->factor, &p->original_max_position,
                          &p->beta_fast, &p->beta_slow, &p->mscale, &p->mscale_all_dim);
}

static PyObject *py_rope(PyObject *m, PyObject *args, int backward) {
  PyObject *xo, *po, *pr, *yo;
  if (!PyArg_ParseTuple(args, "OOOO", &xo, &po, &pr, &yo)) return NULL;
  dsc_rope_params p;
  if (!parse_rope(pr, &p)) return NULL;
  BEGIN(backward ? "dsc_rope_backward" : "dsc_rope_forward")
  IN(x, xo, backward ? "dy" : "x")
  IN(pos, po, "positions")
  OUT(y, yo, backward ? "dx" : "y")
  if (backward) RUN(dsc_rope_backward(ctx, &p, x, pos, y));
  else RUN(dsc_rope_forward(ctx, &p, x, pos, y));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_rope_forward(PyObject *m, PyObject *args) { return py_rope(m, args, 0); }
static PyObject *py_rope_backward(PyObject *m, PyObject *args) { return py_rope(m, args, 1); }

static PyObject *py_rope_inv_freq(PyObject *m, PyObject *args) {
  PyObject *pr;
  if (!PyArg_ParseTuple(args, "O", &pr)) return NULL;
  dsc_rope_params p;
  if (!parse_rope(pr, &p)) return NULL;
  int32_t n = p.dim > 0 ? p.dim / 2 : 0;
  float buf[256];
  dsc_status s = dsc_rope_inv_freq(&p, buf, n);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  PyObject *list = PyList_New(n);
  if (!list) return NULL;
  for (int32_t i = 0; i < n; ++i) {
    PyObject *v = PyFloat_FromDouble(buf[i]);
    if (!v) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, i, v);
  }
  return list;
}

static PyObject *py_rope_scales(PyObject *m, PyObject *args) {
  PyObject *pr;
  int qk_head_dim;
  if (!PyArg_ParseTuple(args, "Oi", &pr, &qk_head_dim)) return NULL;
  dsc_rope_params p;
  if (!parse_rope(pr, &p)) return NULL;
  float cs = 0.0f, sm = 0.0f;
  dsc_status s = dsc_rope_cos_sin_scale(&p, &cs);
  if (s == DSC_OK) s = dsc_rope_softmax_scale(&p, qk_head_dim, &sm);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return Py_BuildValue("(dd)", (double)cs, (double)sm);
}

/* ---- matmul / linear -------------------------------------------------------- */

static PyObject *py_matmul(PyObject *m, PyObject *args) {
  PyObject *ao, *bo, *co;
  int ta, tb, math = DSC_MATH_DEFAULT;
  float alpha, beta;
  if (!PyArg_ParseTuple(args, "OOOppff|i", &ao, &bo, &co, &ta, &tb, &alpha, &beta, &math))
    return NULL;
  BEGIN("dsc_matmul")
  IN(a, ao, "a")
  IN(b, bo, "b")
  OUT(c, co, "out")
  GET_CTX();
  RUN_IN_MODE(math, dsc_matmul(ctx, a, b, c, ta, tb, alpha, beta));
  if (s != DSC_OK) {
    dsc_py_raise(f.st, s);
    goto out;
  }
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_linear_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *wo, *yo;
  if (!PyArg_ParseTuple(args, "OOO", &xo, &wo, &yo)) return NULL;
  BEGIN("dsc_linear_forward")
  IN(x, xo, "x")
  IN(w, wo, "w")
  OUT(y, yo, "y")
  RUN(dsc_linear_forward(ctx, x, w, y));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_linear_backward(PyObject *m, PyObject *args) {
  PyObject *dyo, *xo, *wo, *dxo, *dwo;
  if (!PyArg_ParseTuple(args, "OOOOO", &dyo, &xo, &wo, &dxo, &dwo)) return NULL;
  BEGIN("dsc_linear_backward")
  IN(dy, dyo, "dy")
  IN(x, xo, "x")
  IN(w, wo, "w")
  OPT_OUT(dx, dxo, "dx")
  OPT_OUT(dw, dwo, "dw")
  RUN(dsc_linear_backward(ctx, dy, x, w, dx, dw));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- SwiGLU ------------------------------------------------------------------ */

static PyObject *py_swiglu_forward(PyObject *m, PyObject *args) {
  PyObject *go, *uo, *oo;
  if (!PyArg_ParseTuple(args, "OOO", &go, &uo, &oo)) return NULL;
  BEGIN("dsc_swiglu_forward")
  IN(g, go, "gate")
  IN(u, uo, "up")
  OUT(o, oo, "out")
  RUN(dsc_swiglu_forward(ctx, g, u, o));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_swiglu_backward(PyObject *m, PyObject *args) {
  PyObject *doo, *go, *uo, *dgo, *duo;
  if (!PyArg_ParseTuple(args, "OOOOO", &doo, &go, &uo, &dgo, &duo)) return NULL;
  BEGIN("dsc_swiglu_backward")
  IN(dout, doo, "dout")
  IN(g, go, "gate")
  IN(u, uo, "up")
  OUT(dg, dgo, "dgate")
  OUT(du, duo, "dup")
  RUN(dsc_swiglu_backward(ctx, dout, g, u, dg, du));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- embedding ---------------------------------------------------------------- */

static PyObject *py_embedding_forward(PyObject *m, PyObject *args) {
  PyObject *io, *to, *oo;
  if (!PyArg_ParseTuple(args, "OOO", &io, &to, &oo)) return NULL;
  BEGIN("dsc_embedding_forward")
  IN(ids, io, "ids")
  IN(table, to, "table")
  OUT(o, oo, "out")
  RUN(dsc_embedding_forward(ctx, ids, table, o));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_embedding_backward(PyObject *m, PyObject *args) {
  PyObject *io, *doo, *dto;
  if (!PyArg_ParseTuple(args, "OOO", &io, &doo, &dto)) return NULL;
  BEGIN("dsc_embedding_backward")
  IN(ids, io, "ids")
  IN(dout, doo, "dout")
  OUT(dtable, dto, "dtable")
  RUN(dsc_embedding_backward(ctx, ids, dout, dtable));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- cross-entropy -------------------------------------------------------------- */

static PyObject *py_cross_entropy(PyObject *m, PyObject *args) {
  PyObject *lo, *to, *losso, *dlo, *lseo;
  long long ignore_index;
  float grad_scale;
  if (!PyArg_ParseTuple(args, "OOLfOOO", &lo, &to, &ignore_index, &grad_scale, &losso, &dlo,
                        &lseo))
    return NULL;
  BEGIN("dsc_cross_entropy")
  IN(logits, lo, "logits")
  IN(targets, to, "targets")
  OUT(loss, losso, "loss")
  OPT_OUT(dlogits, dlo, "dlogits")
  OPT_OUT(lse, lseo, "lse")
  RUN(dsc_cross_entropy(ctx, logits, targets, (int64_t)ignore_index, grad_scale, loss, dlogits,
                        lse));
  ret = Py_NewRef(Py_None);
  END
}

/* ---- optimizer ------------------------------------------------------------------ */

/* Import every item of a list; returns a PyMem array of DLTensor pointers. */
static DLTensor **import_list(dsc_py_frame *f, PyObject *list, const char *name, int writable,
                              Py_ssize_t *n_out) {
  PyObject *seq = PySequence_Fast(list, "expected a list of arrays");
  if (!seq) {
    PyErr_Format(PyExc_TypeError, "%s: %s: expected a list of arrays, got %s", f->fn, name,
                 Py_TYPE(list)->tp_name);
    return NULL;
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  DLTensor **out = (DLTensor **)PyMem_Calloc(n ? (size_t)n : 1, sizeof(DLTensor *));
  if (!out) {
    Py_DECREF(seq);
    PyErr_NoMemory();
    return NULL;
  }
  char arg[96];
  for (Py_ssize_t i = 0; i < n; ++i) {
    snprintf(arg, sizeof arg, "%s[%zd]", name, i);
    /* the frame keeps only a pointer to the name while importing */
    out[i] = dsc_py_frame_add(f, PySequence_Fast_GET_ITEM(seq, i), arg, writable, 0);
    if (!out[i]) {
      Py_DECREF(seq);
      PyMem_Free(out);
      return NULL;
    }
  }
  Py_DECREF(seq);
  *n_out = n;
  return out;
}

static PyObject *py_global_norm(PyObject *m, PyObject *args) {
  PyObject *lo;
  if (!PyArg_ParseTuple(args, "O", &lo)) return NULL;
  BEGIN("dsc_global_norm")
  Py_ssize_t n = 0;
  float norm = 0.0f;
  DLTensor **ts = import_list(&f, lo, "tensors", 0, &n);
  if (!ts) goto out;
  if (n == 0) {
    PyMem_Free(ts);
    PyErr_SetString(PyExc_ValueError, "dsc_global_norm: tensors: expected at least one tensor, got an empty list");
    goto out;
  }
  call_pc = dsc_py_pool_take(f.st, f.v[0]->t.device, f.fn);
  if (call_pc) {
    call_c = dsc_py_ctx_get(call_pc);
    DSC_PY_CALL(s, dsc_global_norm(call_c->ctx, (int32_t)n, (const DLTensor *const *)ts, &norm));
  }
  PyMem_Free(ts);
  if (!call_pc) goto out;
  if (s != DSC_OK) {
    dsc_py_raise(f.st, s);
    goto out;
  }
  ret = PyFloat_FromDouble(norm);
  END
}

static PyObject *py_adamw_step(PyObject *m, PyObject *args) {
  PyObject *po, *go, *mo, *vo;
  dsc_adamw_params p;
  memset(&p, 0, sizeof p);
  p.size = sizeof p;
  long long step;
  if (!PyArg_ParseTuple(args, "OOOOfffffLf", &po, &go, &mo, &vo, &p.lr, &p.beta1, &p.beta2, &p.eps,
                        &p.weight_decay, &step, &p.max_grad_norm))
    return NULL;
  p.step = (int64_t)step;
  BEGIN("dsc_adamw_step")
  Py_ssize_t np_ = 0, ng = 0, nm = 0, nv = 0;
  float norm = 0.0f;
  DLTensor **ps = NULL, **gs = NULL, **ms = NULL, **vs = NULL;
  ps = import_list(&f, po, "params", 1, &np_);
  if (ps) gs = import_list(&f, go, "grads", 0, &ng);
  if (gs) ms = import_list(&f, mo, "exp_avg", 1, &nm);
  if (ms) vs = import_list(&f, vo, "exp_avg_sq", 1, &nv);
  if (vs) {
    if (ng != np_ || nm != np_ || nv != np_ || np_ == 0) {
      PyErr_Format(PyExc_ValueError,
                   "dsc_adamw_step: grads, exp_avg, exp_avg_sq: expected %zd tensors each like params (at least one), got %zd, %zd, %zd",
                   np_, ng, nm, nv);
    } else {
      call_pc = dsc_py_pool_take(f.st, f.v[0]->t.device, f.fn);
      if (call_pc) {
        call_c = dsc_py_ctx_get(call_pc);
        DSC_PY_CALL(s, dsc_adamw_step(call_c->ctx, &p, (int32_t)np_, ps, (const DLTensor *const *)gs,
                                      ms, vs, &norm));
        if (s != DSC_OK) dsc_py_raise(f.st, s);
        else ret = PyFloat_FromDouble(norm);
      }
    }
  }
  PyMem_Free(ps);
  PyMem_Free(gs);
  PyMem_Free(ms);
  PyMem_Free(vs);
  END
}

PyMethodDef dsc_py_dense_methods[] = {
    {"rms_norm_forward", py_rms_norm_forward, METH_VARARGS, "rms_norm_forward(x, w, eps, y, rstd|None)"},
    {"rms_norm_backward", py_rms_norm_backward, METH_VARARGS,
     "rms_norm_backward(dy, x, w, rstd|None, eps, dx, dw)"},
    {"rope_forward", py_rope_forward, METH_VARARGS, "rope_forward(x, positions, params, y)"},
    {"rope_backward", py_rope_backward, METH_VARARGS, "rope_backward(dy, positions, params, dx)"},
    {"rope_inv_freq", py_rope_inv_freq, METH_VARARGS, "rope_inv_freq(params) -> list"},
    {"rope_scales", py_rope_scales, METH_VARARGS,
     "rope_scales(params, qk_head_dim) -> (cos_sin_scale, softmax_scale)"},
    {"matmul", py_matmul, METH_VARARGS, "matmul(a, b, out, trans_a, trans_b, alpha, beta[, math_mode])"},
    {"linear_forward", py_linear_forward, METH_VARARGS, "linear_forward(x, w, y)"},
    {"linear_backward", py_linear_backward, METH_VARARGS, "linear_backward(dy, x, w, dx|None, dw|None)"},
    {"swiglu_forward", py_swiglu_forward, METH_VARARGS, "swiglu_forward(gate, up, out)"},
    {"swiglu_backward", py_swiglu_backward, METH_VARARGS, "swiglu_backward(dout, gate, up, dgate, dup)"},
    {"embedding_forward", py_embedding_forward, METH_VARARGS, "embedding_forward(ids, table, out)"},
    {"embedding_backward", py_embedding_backward, METH_VARARGS, "embedding_backward(ids, dout, dtable)"},
    {"cross_entropy", py_cross_entropy, METH_VARARGS,
     "cross_entropy(logits, targets, ignore_index, grad_scale, loss, dlogits|None, lse|None)"},
    {"global_norm", py_global_norm, METH_VARARGS, "global_norm(tensors) -> float"},
    {"adamw_step", py_adamw_step, METH_VARARGS,
     "adamw_step(params, grads, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, max_grad_norm) -> grad_norm"},
    {NULL, NULL, 0, NULL},
};
