/*
 * glue.h -- shared pieces of the CPython extension deepseek_c._C: module state,
 * tensor import (NumPy C API or DLPack), the dsc.Tensor type, and status -> exception.
 * The glue never sees CUDA: device work goes through the C ABI.
 * Files, each calling only those before it: runtime.c (state, exceptions, contexts,
 * memory), streams.c (the CUDA stream of a call), tensor_io.c (tensor import), tensor.c (dsc.Tensor), the ops_*.c families (one
 * may use another's argument parser: ops_moe_layer.c the route's of ops_moe.c, ops_model.c
 * the communicator's of ops_dist.c), module.c (the module: registers all of them, and the
 * core functions).
 */
#ifndef DSC_PY_GLUE_H_
#define DSC_PY_GLUE_H_

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "deepseek_c.h"

#define DSC_PY_MAX_DIMS 16
#define DSC_PY_MAX_CUDA 16

/* ---- contexts and threads ------------------------------------------------------
 * A dsc_context is used by one thread at a time. The glue gives
 *   - each Model and each MLACache its own context (created with the object, destroyed
 *     after it), so independent models run in parallel;
 *   - the functional ops a context from a per-device pool: a call takes a free one (or a
 *     new one when all are busy) and puts it back, so ops in several threads run in
 *     parallel and never wait for one another;
 *   - dsc.Tensor memory (dsc.empty, copies) a per-device memory context used only for
 *     dsc_malloc / dsc_free under its own short mutex.
 * A context travels as a PyCapsule "deepseek_c.context" owning a dsc_py_ctx; whatever was
 * allocated on it (a model, a cache, saved activations) holds the capsule, so the context
 * outlives it.
 *
 * Waiting: a call enters its context (dsc_py_ctx_enter) with the GIL held. When the
 * context is busy it waits with the GIL released -- except where that would never end: the
 * context is held by this very thread (a model called from its own on_token callback), or
 * waiting would close a cycle of threads each holding a context the next one waits for
 * (two callbacks calling each other's models). Both raise deepseek_c.Error instead. The
 * owners and the waits are bookkeeping guarded by the GIL (the module does not declare
 * free-threading support, so the GIL exists even on free-threaded builds). */
typedef struct dsc_py_ctx {
  dsc_context *ctx;
  PyThread_type_lock lock; /* held while a call runs on ctx */
  unsigned long owner;     /* PyThread_get_thread_ident() of the holder; 0: free */
  const char *busy;        /* the C function the holder runs (a string literal) */
  char what[128];          /* "model (2 layers, hidden 64, vocab 128, cpu)", for messages */
} dsc_py_ctx;

/* A thread waiting for a context (lives on that thread's stack while it waits). */
typedef struct dsc_py_wait {
  unsigned long thread;
  dsc_py_ctx *on;
  struct dsc_py_wait *next;
} dsc_py_wait;

#define DSC_PY_N_DEV (1 + DSC_PY_MAX_CUDA) /* index 0: CPU, 1 + i: CUDA device i */

typedef struct {
  dsc_context *mem;           /* dsc_malloc / dsc_free of dsc.Tensors only; created lazily */
  PyThread_type_lock mem_lock; /* held around each dsc_malloc / dsc_free on mem */
  PyObject *pool;             /* list of context capsules for the ops; created lazily */
  int32_t check_mode;         /* dsc_check_mode of the pool's contexts (op_set_check_mode) */
} dsc_py_device;

/* Per-module state: no C globals. */
typedef struct {
  PyObject *error_type;     /* deepseek_c.Error (RuntimeError subclass) */
  PyObject *format_type;    /* deepseek_c.FormatError(Error, ValueError): a bad file (DSC_ERR_FORMAT) */
  PyObject *comm_type;      /* deepseek_c.CommError(Error): a communicator failed (DSC_ERR_COMM) */
  PyTypeObject *tensor_type; /* deepseek_c.Tensor */
  dsc_py_device dev[DSC_PY_N_DEV];
  dsc_py_wait *waits;        /* threads waiting for a context (GIL-guarded) */
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
  /* The CUDA stream of the call (a cudaStream_t; 0 = the legacy default stream), chosen at
   * the first CUDA array (dsc_py_call_stream); CUDA producers make their data ready on it and
   * the call runs on it. */
  int stream_known;
  uintptr_t stream;
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
  PyObject *module;    /* strong ref: owns == 1 frees `data` through its memory context */
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
/* The stream this thread chose with deepseek_c.cuda_stream (thread_stream_set): 1 and *handle
 * when it chose one, 0 when not (then calls follow a PyTorch input's current stream, else the
 * legacy default stream), -1 with an exception. */
int dsc_py_thread_stream(uintptr_t *handle);
/* Set (has = 1) or clear this thread's stream; -1 with an exception. */
int dsc_py_thread_stream_set(int has, uintptr_t handle);
/* Choose f's stream at its first CUDA array obj on CUDA device dev_id (streams.c); -1 with an
 * exception. */
int dsc_py_call_stream(dsc_py_frame *f, PyObject *obj, long dev_id);
/* Run a pool context on f's stream; -1 with an exception. */
int dsc_py_use_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f);
/* Order a model's context after f's stream (or adopt the context's stream for f when no
 * CUDA array came yet); -1 with an exception. */
int dsc_py_join_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f);
/* At the end of the call: order f's stream after the context's work. On failure raises and
 * clears *ret. */
void dsc_py_unjoin_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f, PyObject **ret);
/* The device slot of `dev` (CPU or a CUDA ordinal); NULL with a ValueError otherwise. */
dsc_py_device *dsc_py_device_of(dsc_py_state *st, DLDevice dev);

/* A new context capsule on `dev` (not entered). num_threads: 0 = the OpenMP default.
 * what: how messages name its owner. NULL with an exception on failure. */
PyObject *dsc_py_ctx_new(dsc_py_state *st, DLDevice dev, int32_t num_threads, const char *what);
/* The dsc_py_ctx of a context capsule (NULL with an exception when it is not one). */
dsc_py_ctx *dsc_py_ctx_get(PyObject *cap);
/* The context capsule of obj: obj itself, or the context a capsule (a model's) was made on
 * (borrowed). NULL with a TypeError naming fn otherwise. */
PyObject *dsc_py_ctx_capsule_of(PyObject *obj, const char *fn);
/* Take `c` for this thread to run `fn` on (GIL held; waits with the GIL released). 0 on
 * success; -1 with deepseek_c.Error when waiting could never end (see above), or with
 * KeyboardInterrupt & co. when a signal handler raised while waiting.
 * allow_self: when this thread already holds `c`, return 1 (nothing taken: do not leave)
 * instead of raising -- for reads that are safe while the holder is paused in a callback. */
int dsc_py_ctx_enter(dsc_py_state *st, dsc_py_ctx *c, const char *fn, int allow_self);
/* -1 with the error of dsc_py_ctx_enter when this thread holds `c` (a call on it would
 * wait for itself), else 0. For code that is about to wait for `c` in another thread. */
int dsc_py_ctx_check_self(dsc_py_state *st, const dsc_py_ctx *c, const char *fn);
/* For destructors (never raises): take pool context `c`, waiting with the GIL released;
 * 1 when taken (leave after), 0 when this thread holds it already. Only for pool contexts,
 * whose holders never wait for anything while they hold them. */
int dsc_py_ctx_enter_pooled(dsc_py_ctx *c);
/* Give `c` back (GIL held). */
void dsc_py_ctx_leave(dsc_py_ctx *c);
/* A free context of `dev`'s pool, entered for `fn` (a new one when all are busy): the
 * capsule (a new reference) or NULL with an exception. Never waits. */
PyObject *dsc_py_pool_take(dsc_py_state *st, DLDevice dev, const char *fn);

/* Memory of a dsc.Tensor on `dev` through the device's memory context (GIL held; the
 * allocation itself runs with the GIL released). 0, or -1 with an exception. */
int dsc_py_mem_alloc(dsc_py_state *st, DLDevice dev, size_t bytes, void **ptr);
/* Free what dsc_py_mem_alloc gave (GIL held; never raises). */
void dsc_py_mem_free(dsc_py_state *st, DLDevice dev, void *ptr);

/* Run `call` with the GIL released (the caller has entered the context). */
#define DSC_PY_CALL(status, call) \
  do {                            \
    Py_BEGIN_ALLOW_THREADS        \
    (status) = (call);            \
    Py_END_ALLOW_THREADS          \
  } while (0)

/* dsc.Tensor */
int dsc_py_tensor_type_init(PyObject *module, dsc_py_state *st);
PyObject *dsc_py_tensor_new_owned(PyObject *module, DLDevice dev, dsc_dtype dtype, int ndim,
                                  const int64_t *shape);

/* A Tensor over memory owned by `base` (kept alive), row-major. */
PyObject *dsc_py_tensor_new_view(PyObject *module, void *data, DLDevice dev, dsc_dtype dtype,
                                 int ndim, const int64_t *shape, PyObject *base);
/* Both constructors refuse (ValueError naming `shape`) a shape whose bytes, or the product
 * of whose non-zero dims times the item size, do not fit in int64:
 * dsc_py_shape_bytes returns 0 then, else 1 with *bytes set. */
int dsc_py_shape_bytes(dsc_dtype dtype, int ndim, const int64_t *shape, size_t *bytes);
/* "(2, 3)", "(5,)" */
const char *dsc_py_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

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
extern PyMethodDef dsc_py_rl_methods[];
extern PyMethodDef dsc_py_dist_methods[];

/* The dsc_comm of a "deepseek_c.comm" capsule (NULL with a TypeError naming fn). */
dsc_comm *dsc_py_comm_of(PyObject *cap, const char *fn);

#endif /* DSC_PY_GLUE_H_ */
