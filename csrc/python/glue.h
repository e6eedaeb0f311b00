/*
 * glue.h -- shared pieces of the CPython extension deepseek_c._C: module state,
 * tensor import (NumPy C API or DLPack), the dsc.Tensor type, and status -> exception.
 * The glue never sees CUDA: device work goes through the C ABI.
 */
#ifndef DSC_PY_GLUE_H_
#define DSC_PY_GLUE_H_

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "deepseek_c.h"

#define DSC_PY_MAX_DIMS 16
#define DSC_PY_MAX_CUDA 16

/* Per-module state: no C globals. */
typedef struct {
  PyObject *error_type;     /* deepseek_c.Error (RuntimeError subclass) */
  PyTypeObject *tensor_type; /* deepseek_c.Tensor */
  dsc_context *cpu;          /* created lazily */
  dsc_context *cuda[DSC_PY_MAX_CUDA];
  PyThread_type_lock cpu_lock; /* a context is used by one thread at a time */
  PyThread_type_lock cuda_lock[DSC_PY_MAX_CUDA];
  int numpy_ready;
} dsc_py_state;

/* One imported tensor: the DLTensor view plus whatever keeps its memory alive. */
typedef struct {
  DLTensor t;
  int64_t shape[DSC_PY_MAX_DIMS];
  int64_t strides[DSC_PY_MAX_DIMS];
  PyObject *owner;                      /* strong ref (ndarray / dsc.Tensor), or NULL */
  DLManagedTensorVersioned *versioned;  /* deleter called on release */
  DLManagedTensor *legacy;
} dsc_py_tensor;

/* The tensors of one call, released together (any number: AdamW takes lists). */
typedef struct {
  dsc_py_state *st;
  const char *fn; /* public C function name, for messages */
  dsc_py_tensor **v; /* each allocated separately so DLTensor pointers stay valid */
  int n, cap;
} dsc_py_frame;

/* C-owned memory exported to Python (weights, caches, dsc.empty). */
typedef struct {
  PyObject_HEAD
  void *data;
  DLDevice device;
  dsc_dtype dtype;
  int32_t ndim;
  int64_t shape[DSC_PY_MAX_DIMS];
  int64_t strides[DSC_PY_MAX_DIMS];
  PyObject *base;      /* keeps the owner of `data` alive when owns == 0 */
  PyObject *module;    /* strong ref when owns == 1: its contexts free `data` */
  int owns;
} dsc_py_tensor_obj;

dsc_py_state *dsc_py_get_state(PyObject *module);

/* Raise the Python exception of a failed dsc_status; returns NULL. */
PyObject *dsc_py_raise(dsc_py_state *st, dsc_status s);

/* Import `obj` as argument `arg` of the call. writable: the op writes it.
 * optional: Py_None gives NULL without error. On failure raises and returns NULL. */
DLTensor *dsc_py_frame_add(dsc_py_frame *f, PyObject *obj, const char *arg, int writable,
                           int optional);
void dsc_py_frame_release(dsc_py_frame *f);
/* The context (and its lock) for a device; creates it on first use. */
dsc_context *dsc_py_context(dsc_py_state *st, DLDevice dev, PyThread_type_lock *lock);

/* Run `call` with the GIL released and the context locked. */
#define DSC_PY_CALL(lock, status, call)          \
  do {                                           \
    Py_BEGIN_ALLOW_THREADS                       \
    PyThread_acquire_lock((lock), WAIT_LOCK);    \
    (status) = (call);                           \
    PyThread_release_lock((lock));               \
    Py_END_ALLOW_THREADS                         \
  } while (0)

/* dsc.Tensor */
int dsc_py_tensor_type_init(PyObject *module, dsc_py_state *st);
PyObject *dsc_py_tensor_new_owned(PyObject *module, DLDevice dev, dsc_dtype dtype, int ndim,
                                  const int64_t *shape);

/* A Tensor over memory owned by `base` (kept alive), row-major. */
PyObject *dsc_py_tensor_new_view(PyObject *module, void *data, DLDevice dev, dsc_dtype dtype,
                                 int ndim, const int64_t *shape, PyObject *base);

/* MoE route parameters from (top_k, n_group, topk_group, scoring, topk_method,
 * norm_topk_prob, routed_scaling_factor); 0 with a Python exception on failure. */
int dsc_py_parse_route(PyObject *t, dsc_moe_route_params *p);

/* Ops tables, one per family file. */
extern PyMethodDef dsc_py_core_methods[];
extern PyMethodDef dsc_py_dense_methods[];
extern PyMethodDef dsc_py_io_methods[];
extern PyMethodDef dsc_py_moe_methods[];
extern PyMethodDef dsc_py_moe_layer_methods[];
extern PyMethodDef dsc_py_fp8_methods[];
extern PyMethodDef dsc_py_mla_methods[];
extern PyMethodDef dsc_py_model_methods[];
extern PyMethodDef dsc_py_generate_methods[];
extern PyMethodDef dsc_py_calc_methods[];

#endif /* DSC_PY_GLUE_H_ */
