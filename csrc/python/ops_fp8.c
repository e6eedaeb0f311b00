/*
 * ops_fp8.c -- Python wrappers of the FP8 ops (cast, block quantization, dequantization,
 * block-scaled GEMMs, statistics, the FP8 linear layer): each imports its arrays (inputs
 * and caller-allocated outputs), runs the C op on the context of the first array's device
 * with the GIL released, and maps a failure to an exception. Output allocation, argument
 * defaults and format names live in deepseek_c/fp8.py.
 */
#include "glue.h"

#include <string.h>

#include "call.h"

/* params: (block_rows, block_cols, transpose, pow2_scale, amax_floor) */
static int parse_qparams(PyObject *t, dsc_fp8_quant_params *p) {
  dsc_fp8_quant_params_default(p);
  return PyArg_ParseTuple(t,
                          "iiiif;fp8 quant params: expected (block_rows, block_cols, transpose, "
                          "pow2_scale, amax_floor)",
                          &p->block_rows, &p->block_cols, &p->transpose, &p->pow2_scale,
                          &p->amax_floor);
}

static PyObject *py_fp8_cast(PyObject *m, PyObject *args) {
  PyObject *so, *dobj;
  if (!PyArg_ParseTuple(args, "OO", &so, &dobj)) return NULL;
  BEGIN("dsc_fp8_cast")
  IN(src, so, "src")
  OUT(dst, dobj, "dst")
  RUN(dsc_fp8_cast(ctx, src, dst));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_quantize(PyObject *m, PyObject *args) {
  PyObject *xo, *qo, *so, *pr;
  if (!PyArg_ParseTuple(args, "OOOO", &xo, &qo, &so, &pr)) return NULL;
  dsc_fp8_quant_params p;
  if (!parse_qparams(pr, &p)) return NULL;
  BEGIN("dsc_fp8_quantize")
  IN(x, xo, "x")
  OUT(q, qo, "q")
  OUT(scale, so, "scale")
  RUN(dsc_fp8_quantize(ctx, &p, x, q, scale));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_dequantize(PyObject *m, PyObject *args) {
  PyObject *qo, *so, *oo;
  int br, bc;
  if (!PyArg_ParseTuple(args, "OOiiO", &qo, &so, &br, &bc, &oo)) return NULL;
  BEGIN("dsc_fp8_dequantize")
  IN(q, qo, "q")
  IN(scale, so, "scale")
  OUT(out, oo, "out")
  RUN(dsc_fp8_dequantize(ctx, br, bc, q, scale, out));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_gemm(PyObject *m, PyObject *args) {
  PyObject *ao, *aso, *bo, *bso, *co;
  if (!PyArg_ParseTuple(args, "OOOOO", &ao, &aso, &bo, &bso, &co)) return NULL;
  BEGIN("dsc_fp8_gemm")
  IN(a, ao, "a")
  IN(as, aso, "a_scale")
  IN(b, bo, "b")
  IN(bs, bso, "b_scale")
  OUT(c, co, "c")
  RUN(dsc_fp8_gemm(ctx, a, as, b, bs, c));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_grouped_gemm(PyObject *m, PyObject *args) {
  PyObject *ao, *aso, *bo, *bso, *oo, *co;
  int alignment;
  if (!PyArg_ParseTuple(args, "OOOOOiO", &ao, &aso, &bo, &bso, &oo, &alignment, &co)) return NULL;
  BEGIN("dsc_fp8_grouped_gemm")
  IN(a, ao, "a")
  IN(as, aso, "a_scale")
  IN(b, bo, "b")
  IN(bs, bso, "b_scale")
  IN(offs, oo, "group_offsets")
  OUT(c, co, "c")
  RUN(dsc_fp8_grouped_gemm(ctx, a, as, b, bs, offs, alignment, c));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_grouped_gemm_masked(PyObject *m, PyObject *args) {
  PyObject *ao, *aso, *bo, *bso, *mo, *co;
  if (!PyArg_ParseTuple(args, "OOOOOO", &ao, &aso, &bo, &bso, &mo, &co)) return NULL;
  BEGIN("dsc_fp8_grouped_gemm_masked")
  IN(a, ao, "a")
  IN(as, aso, "a_scale")
  IN(b, bo, "b")
  IN(bs, bso, "b_scale")
  IN(mm, mo, "masked_m")
  OUT(c, co, "c")
  RUN(dsc_fp8_grouped_gemm_masked(ctx, a, as, b, bs, mm, c));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_stats(PyObject *m, PyObject *args) {
  PyObject *xo, *pr;
  int fmt;
  float tensor_scale;
  if (!PyArg_ParseTuple(args, "OOif", &xo, &pr, &fmt, &tensor_scale)) return NULL;
  dsc_fp8_quant_params p;
  if (!parse_qparams(pr, &p)) return NULL;
  dsc_fp8_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.size = sizeof stats;
  BEGIN("dsc_fp8_compute_stats")
  IN(x, xo, "x")
  RUN(dsc_fp8_compute_stats(ctx, &p, (dsc_dtype)fmt, tensor_scale, x, &stats));
  ret = Py_BuildValue("(ddddL)", (double)stats.amax, stats.saturated_fraction,
                      stats.underflow_fraction, stats.nan_fraction, (long long)stats.count);
  END
}

static PyObject *py_fp8_linear_forward(PyObject *m, PyObject *args) {
  PyObject *xo, *wo, *yo, *xqo, *xso, *wqo, *wso;
  if (!PyArg_ParseTuple(args, "OOOOOOO", &xo, &wo, &yo, &xqo, &xso, &wqo, &wso)) return NULL;
  BEGIN("dsc_fp8_linear_forward")
  IN(x, xo, "x")
  IN(w, wo, "w")
  OUT(y, yo, "y")
  OUT(xq, xqo, "xq")
  OUT(xs, xso, "xs")
  OUT(wq, wqo, "wq")
  OUT(ws, wso, "ws")
  RUN(dsc_fp8_linear_forward(ctx, x, w, y, xq, xs, wq, ws));
  ret = Py_NewRef(Py_None);
  END
}

static PyObject *py_fp8_linear_backward(PyObject *m, PyObject *args) {
  PyObject *dyo, *xqo, *xso, *wqo, *wso, *dxo, *dwo;
  if (!PyArg_ParseTuple(args, "OOOOOOO", &dyo, &xqo, &xso, &wqo, &wso, &dxo, &dwo)) return NULL;
  BEGIN("dsc_fp8_linear_backward")
  IN(dy, dyo, "dy")
  IN(xq, xqo, "xq")
  IN(xs, xso, "xs")
  IN(wq, wqo, "wq")
  IN(ws, wso, "ws")
  OPT_OUT(dx, dxo, "dx")
  OPT_OUT(dw, dwo, "dw")
  RUN(dsc_fp8_linear_backward(ctx, dy, xq, xs, wq, ws, dx, dw));
  ret = Py_NewRef(Py_None);
  END
}

PyMethodDef dsc_py_fp8_methods[] = {
    {"fp8_cast", py_fp8_cast, METH_VARARGS, "fp8_cast(src, dst)"},
    {"fp8_quantize", py_fp8_quantize, METH_VARARGS,
     "fp8_quantize(x, q, scale, (block_rows, block_cols, transpose, pow2_scale, amax_floor))"},
    {"fp8_dequantize", py_fp8_dequantize, METH_VARARGS,
     "fp8_dequantize(q, scale, block_rows, block_cols, out)"},
    {"fp8_gemm", py_fp8_gemm, METH_VARARGS, "fp8_gemm(a, a_scale, b, b_scale, c)"},
    {"fp8_grouped_gemm", py_fp8_grouped_gemm, METH_VARARGS,
     "fp8_grouped_gemm(a, a_scale, b, b_scale, group_offsets, alignment, c)"},
    {"fp8_grouped_gemm_masked", py_fp8_grouped_gemm_masked, METH_VARARGS,
     "fp8_grouped_gemm_masked(a, a_scale, b, b_scale, masked_m, c)"},
    {"fp8_stats", py_fp8_stats, METH_VARARGS,
     "fp8_stats(x, params, fmt, tensor_scale) -> (amax, saturated, underflow, nan, count)"},
    {"fp8_linear_forward", py_fp8_linear_forward, METH_VARARGS,
     "fp8_linear_forward(x, w, y, xq, xs, wq, ws)"},
    {"fp8_linear_backward", py_fp8_linear_backward, METH_VARARGS,
     "fp8_linear_backward(dy, xq, xs, wq, ws, dx|None, dw|None)"},
    {NULL, NULL, 0, NULL},
};
