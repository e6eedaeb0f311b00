/*
 * ops_moe.c -- Python wrappers of the MoE ops (routing, balancing, permute/unpermute,
 * grouped linear): each imports its arrays (inputs and caller-allocated outputs), runs
 * the C op on the context of the first array's device with the GIL released, and maps a
 * failure to an exception. Output allocation and defaults live in deepseek_c/moe.py.
 */
#include "glue.h"

#include <math.h>
#include <string.h>

#include "call.h"

/* params: (top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob, scale) */
int dsc_py_parse_route(PyObject *t, dsc_moe_route_params *p) {
  dsc_moe_route_params_default(p);
  return PyArg_ParseTuple(t,
                          "iiiiiif;route params: expected (top_k, n_group, topk_group, scoring, "
                          "topk_method, norm_topk_prob, routed_scaling_factor)",
                          &p->top_k, &p->n_group, &p->topk_group, &p->scoring, &p->topk_method,
                          &p->norm_topk_prob, &p->routed_scaling_factor);
}

static PyObject *py_moe_route(PyObject *m, PyObject *args) {
  PyObject *lo, *bo, *pr, *io, *wo, *so;
  if (!PyArg_ParseTuple(args, "OOOOOO", &lo, &bo, &pr, &io, &wo, &so)) return NULL;
  dsc_moe_route_params p;
  if (!dsc_py_parse_route(pr, &p)) return NULL;
  BEGIN("dsc_moe_route")
  IN(logits, lo, "logits")
  OPT_IN(bias, bo, "bias")
  OUT(idx, io, "indices")
  OUT(w, wo, "weights")
  OPT_OUT(sc, so, "scores")
  RUN(dsc_moe_route(ctx, &p, logits, bias, idx, w, sc));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_route_backward(PyObject *m, PyObject *args) {
  PyObject *pr, *dwo, *so, *io, *dso, *dlo;
  if (!PyArg_ParseTuple(args, "OOOOOO", &pr, &dwo, &so, &io, &dso, &dlo)) return NULL;
  dsc_moe_route_params p;
  if (!dsc_py_parse_route(pr, &p)) return NULL;
  BEGIN("dsc_moe_route_backward")
  IN(dw, dwo, "dweights")
  IN(sc, so, "scores")
  IN(idx, io, "indices")
  OPT_IN(ds, dso, "dscores")
  OUT(dl, dlo, "dlogits")
  RUN(dsc_moe_route_backward(ctx, &p, dw, sc, idx, ds, dl));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_expert_load(PyObject *m, PyObject *args) {
  PyObject *io, *co;
  if (!PyArg_ParseTuple(args, "OO", &io, &co)) return NULL;
  BEGIN("dsc_moe_expert_load")
  IN(idx, io, "indices")
  OUT(c, co, "counts")
  RUN(dsc_moe_expert_load(ctx, idx, c));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_update_bias(PyObject *m, PyObject *args) {
  PyObject *bo, *co;
  float rate;
  if (!PyArg_ParseTuple(args, "OOf", &bo, &co, &rate)) return NULL;
  BEGIN("dsc_moe_update_bias")
  OUT(b, bo, "bias")
  IN(c, co, "counts")
  RUN(dsc_moe_update_bias(ctx, b, c, rate));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_seq_aux_loss(PyObject *m, PyObject *args) {
  PyObject *so, *io, *lo, *dso;
  long long seq_len;
  float alpha;
  if (!PyArg_ParseTuple(args, "OOLfOO", &so, &io, &seq_len, &alpha, &lo, &dso)) return NULL;
  BEGIN("dsc_moe_seq_aux_loss")
  IN(sc, so, "scores")
  IN(idx, io, "indices")
  OUT(loss, lo, "loss")
  OPT_OUT(ds, dso, "dscores")
  RUN(dsc_moe_seq_aux_loss(ctx, sc, idx, (int64_t)seq_len, alpha, loss, ds));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_permute_rows(PyObject *m, PyObject *args) {
  PyObject *io;
  int n_experts, align;
  if (!PyArg_ParseTuple(args, "Oii", &io, &n_experts, &align)) return NULL;
  BEGIN("dsc_moe_permute_rows")
  int64_t rows = 0;
  IN(idx, io, "indices")
  RUN(dsc_moe_permute_rows(ctx, idx, n_experts, align, &rows));
  ret = PyLong_FromLongLong((long long)rows);
  END
}

static PyObject *py_moe_permute(PyObject *m, PyObject *args) {
  PyObject *xo, *io, *oo, *go, *ro;
  int n_experts, align;
  if (!PyArg_ParseTuple(args, "OOiiOOO", &xo, &io, &n_experts, &align, &oo, &go, &ro)) return NULL;
  BEGIN("dsc_moe_permute")
  IN(x, xo, "x")
  IN(idx, io, "indices")
  OUT(o, oo, "out")
  OUT(g, go, "group_offsets")
  OUT(r, ro, "row_map")
  RUN(dsc_moe_permute(ctx, x, idx, n_experts, align, o, g, r));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_permute_backward(PyObject *m, PyObject *args) {
  PyObject *doo, *ro, *dxo;
  if (!PyArg_ParseTuple(args, "OOO", &doo, &ro, &dxo)) return NULL;
  BEGIN("dsc_moe_permute_backward")
  IN(dout, doo, "dout")
  IN(r, ro, "row_map")
  OUT(dx, dxo, "dx")
  RUN(dsc_moe_permute_backward(ctx, dout, r, dx));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_unpermute(PyObject *m, PyObject *args) {
  PyObject *eo, *ro, *wo, *yo;
  if (!PyArg_ParseTuple(args, "OOOO", &eo, &ro, &wo, &yo)) return NULL;
  BEGIN("dsc_moe_unpermute")
  IN(e, eo, "expert_out")
  IN(r, ro, "row_map")
  IN(w, wo, "weights")
  OUT(y, yo, "y")
  RUN(dsc_moe_unpermute(ctx, e, r, w, y));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_moe_unpermute_backward(PyObject *m, PyObject *args) {
  PyObject *dyo, *eo, *ro, *wo, *deo, *dwo;
  if (!PyArg_ParseTuple(args, "OOOOOO", &dyo, &eo, &ro, &wo, &deo, &dwo)) return NULL;
  BEGIN("dsc_moe_unpermute_backward")
  IN(dy, dyo, "dy")
  IN(e, eo, "expert_out")
  IN(r, ro, "row_map")
  IN(w, wo, "weights")
  OPT_OUT(de, deo, "dexpert_out")
  OPT_OUT(dw, dwo, "dweights")
  RUN(dsc_moe_unpermute_backward(ctx, dy, e, r, w, de, dw));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_grouped_linear_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *wo, *go, *yo;
  if (!PyArg_ParseTuple(args, "OOOO", &xo, &wo, &go, &yo)) return NULL;
  BEGIN("dsc_grouped_linear_forward")
  IN(x, xo, "x")
  IN(w, wo, "w")
  IN(g, go, "group_offsets")
  OUT(y, yo, "y")
  RUN(dsc_grouped_linear_forward(ctx, x, w, g, y));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_grouped_linear_backward(PyObject *m, PyObject *args) {
  PyObject *dyo, *xo, *wo, *go, *dxo, *dwo;
  if (!PyArg_ParseTuple(args, "OOOOOO", &dyo, &xo, &wo, &go, &dxo, &dwo)) return NULL;
  BEGIN("dsc_grouped_linear_backward")
  IN(dy, dyo, "dy")
  IN(x, xo, "x")
  IN(w, wo, "w")
  IN(g, go, "group_offsets")
  OPT_OUT(dx, dxo, "dx")
  OPT_OUT(dw, dwo, "dw")
  RUN(dsc_grouped_linear_backward(ctx, dy, x, w, g, dx, dw));
  ret = Py_NewRef(Py_None);
  END
}

PyMethodDef dsc_py_moe_methods[] = {
    {"moe_route", py_moe_route, METH_VARARGS,
     "moe_route(logits, bias|None, params, indices, weights, scores|None)"},
    {"moe_route_backward", py_moe_route_backward, METH_VARARGS,
     "moe_route_backward(params, dweights, scores, indices, dscores|None, dlogits)"},
    {"moe_expert_load", py_moe_expert_load, METH_VARARGS, "moe_expert_load(indices, counts)"},
    {"moe_update_bias", py_moe_update_bias, METH_VARARGS, "moe_update_bias(bias, counts, rate)"},
    {"moe_seq_aux_loss", py_moe_seq_aux_loss, METH_VARARGS,
     "moe_seq_aux_loss(scores, indices, seq_len, alpha, loss, dscores|None)"},
    {"moe_permute_rows", py_moe_permute_rows, METH_VARARGS,
     "moe_permute_rows(indices, n_experts, align) -> int"},
    {"moe_permute", py_moe_permute, METH_VARARGS,
     "moe_permute(x, indices, n_experts, align, out, group_offsets, row_map)"},
    {"moe_permute_backward", py_moe_permute_backward, METH_VARARGS,
     "moe_permute_backward(dout, row_map, dx)"},
    {"moe_unpermute", py_moe_unpermute, METH_VARARGS,
     "moe_unpermute(expert_out, row_map, weights, y)"},
    {"moe_unpermute_backward", py_moe_unpermute_backward, METH_VARARGS,
     "moe_unpermute_backward(dy, expert_out, row_map, weights, dexpert_out|None, dweights|None)"},
    {"grouped_linear_forward", py_grouped_linear_forward, METH_VARARGS,
     "grouped_linear_forward(x, w, group_offsets, y)"},
    {"grouped_linear_backward", py_grouped_linear_backward, METH_VARARGS,
     "grouped_linear_backward(dy, x, w, group_offsets, dx|None, dw|None)"},
    {NULL, NULL, 0, NULL},
};
