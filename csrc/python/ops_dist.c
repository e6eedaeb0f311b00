/*
 * ops_dist.c -- Python wrappers of dsc_comm (deepseek_c.dist.Comm is the Python class). A
 * communicator travels as a PyCapsule "deepseek_c.comm" owning a dsc_comm and a lock: a
 * communicator is used by one thread at a time (its operations are collective and ordered),
 * so a second thread waits for the first, with the GIL released. Collectives run with the
 * GIL released on a pool context of the communicator's device.
 */
#include "call.h"

#define COMM_NAME "deepseek_c.comm"

typedef struct {
  dsc_comm *c;
  PyThread_type_lock lock;
} py_comm;

static void comm_destructor(PyObject *cap) {
  py_comm *pc = (py_comm *)PyCapsule_GetPointer(cap, COMM_NAME);
  if (!pc) return;
  dsc_comm_destroy(pc->c);
  if (pc->lock) PyThread_free_lock(pc->lock);
  PyMem_Free(pc);
}

static PyObject *wrap_comm(PyObject *m, dsc_comm *c) {
  py_comm *pc = (py_comm *)PyMem_Calloc(1, sizeof *pc);
  if (!pc) {
    dsc_comm_destroy(c);
    return PyErr_NoMemory();
  }
  pc->c = c;
  pc->lock = PyThread_allocate_lock();
  if (!pc->lock) {
    dsc_comm_destroy(c);
    PyMem_Free(pc);
    return PyErr_NoMemory();
  }
  PyObject *cap = PyCapsule_New(pc, COMM_NAME, comm_destructor);
  if (!cap) {
    dsc_comm_destroy(c);
    PyThread_free_lock(pc->lock);
    PyMem_Free(pc);
  }
  return cap;
}

static py_comm *pycomm_of(PyObject *cap, const char *fn) {
  if (!PyCapsule_IsValid(cap, COMM_NAME)) {
    PyErr_Format(PyExc_TypeError, "%s: comm: expected a deepseek_c communicator, got %s", fn, Py_TYPE(cap)->tp_name);
    return NULL;
  }
  return (py_comm *)PyCapsule_GetPointer(cap, COMM_NAME);
}

dsc_comm *dsc_py_comm_of(PyObject *cap, const char *fn) {
  py_comm *pc = pycomm_of(cap, fn);
  return pc ? pc->c : NULL;
}

/* Take the communicator's lock (waiting with the GIL released). */
static void comm_lock(py_comm *pc) {
  if (PyThread_acquire_lock(pc->lock, NOWAIT_LOCK)) return;
  Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(pc->lock, WAIT_LOCK);
  Py_END_ALLOW_THREADS
}

/* ---- constructors ---------------------------------------------------------------- */

static PyObject *made(PyObject *m, dsc_status s, dsc_comm *c) {
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return wrap_comm(m, c);
}

static PyObject *py_comm_self(PyObject *m, PyObject *unused) {
  dsc_comm *c = NULL;
  const dsc_status s = dsc_comm_create_self(&c);
  return made(m, s, c);
}

/* comm_mpi(address of an MPI_Comm: int) */
static PyObject *py_comm_mpi(PyObject *m, PyObject *args) {
  unsigned long long addr;
  if (!PyArg_ParseTuple(args, "K", &addr)) return NULL;
  dsc_comm *c = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_comm_create_mpi((const void *)(uintptr_t)addr, &c));
  return made(m, s, c);
}

/* comm_nccl(ncclComm_t as int, device) */
static PyObject *py_comm_nccl(PyObject *m, PyObject *args) {
  unsigned long long ptr;
  int dev;
  if (!PyArg_ParseTuple(args, "Ki", &ptr, &dev)) return NULL;
  dsc_comm *c = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_comm_create_nccl((void *)(uintptr_t)ptr, dev, &c));
  return made(m, s, c);
}

static PyObject *py_nccl_unique_id(PyObject *m, PyObject *unused) {
  uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES];
  dsc_status s = dsc_comm_nccl_unique_id(id);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return PyBytes_FromStringAndSize((const char *)id, DSC_NCCL_UNIQUE_ID_BYTES);
}

/* comm_nccl_uid(id: bytes, rank, size, device) */
static PyObject *py_comm_nccl_uid(PyObject *m, PyObject *args) {
  const char *id;
  Py_ssize_t n;
  int rank, size, dev;
  if (!PyArg_ParseTuple(args, "y#iii", &id, &n, &rank, &size, &dev)) return NULL;
  if (n != DSC_NCCL_UNIQUE_ID_BYTES)
    return PyErr_Format(PyExc_ValueError, "Comm.from_nccl_unique_id: uid: expected %d bytes, got %zd",
                        DSC_NCCL_UNIQUE_ID_BYTES, n);
  dsc_comm *c = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_comm_create_nccl_uid((const uint8_t *)id, rank, size, dev, &c));
  return made(m, s, c);
}

/* comm_split(cap, color, key) -> capsule */
static PyObject *py_comm_split(PyObject *m, PyObject *args) {
  PyObject *cap;
  int color, key;
  if (!PyArg_ParseTuple(args, "Oii", &cap, &color, &key)) return NULL;
  py_comm *pc = pycomm_of(cap, "Comm.split");
  if (!pc) return NULL;
  comm_lock(pc);
  dsc_comm *c = NULL;
  dsc_status s;
  DSC_PY_CALL(s, dsc_comm_split(pc->c, color, key, &c));
  PyThread_release_lock(pc->lock);
  return made(m, s, c);
}

/* ---- accessors ------------------------------------------------------------------- */

static PyObject *py_comm_info(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  py_comm *pc = pycomm_of(cap, "Comm");
  if (!pc) return NULL;
  DLDevice d = {kDLCPU, 0};
  dsc_comm_device(pc->c, &d);
  static const char *const names[] = {"self", "mpi", "nccl"};
  const int b = dsc_comm_backend_of(pc->c);
  return Py_BuildValue("{s:i,s:i,s:s,s:d,s:i,s:i}", "rank", (int)dsc_comm_rank(pc->c), "size",
                       (int)dsc_comm_size(pc->c), "backend", b >= 0 && b <= 2 ? names[b] : "?", "timeout",
                       dsc_comm_get_timeout(pc->c), "device_type", (int)d.device_type, "device_id",
                       (int)d.device_id);
}

static PyObject *py_comm_set_timeout(PyObject *m, PyObject *args) {
  PyObject *cap;
  double t;
  if (!PyArg_ParseTuple(args, "Od", &cap, &t)) return NULL;
  py_comm *pc = pycomm_of(cap, "Comm.set_timeout");
  if (!pc) return NULL;
  comm_lock(pc);
  dsc_status s = dsc_comm_set_timeout(pc->c, t);
  PyThread_release_lock(pc->lock);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  Py_RETURN_NONE;
}

static PyObject *stats_dict(const dsc_comm_stats *x) {
  return Py_BuildValue("{s:L,s:L,s:L,s:d,s:d}", "ops", (long long)x->ops, "bytes_sent", (long long)x->bytes_sent,
                       "bytes_received", (long long)x->bytes_received, "wait_seconds", x->wait_seconds,
                       "busy_seconds", x->busy_seconds);
}

/* comm_stats(cap, reset: int) -> dict */
static PyObject *py_comm_stats(PyObject *m, PyObject *args) {
  PyObject *cap;
  int reset = 0;
  if (!PyArg_ParseTuple(args, "O|i", &cap, &reset)) return NULL;
  py_comm *pc = pycomm_of(cap, "Comm.stats");
  if (!pc) return NULL;
  comm_lock(pc);
  dsc_comm_stats x;
  memset(&x, 0, sizeof x);
  x.size = sizeof x;
  dsc_status s = dsc_comm_get_stats(pc->c, &x);
  if (s == DSC_OK && reset) dsc_comm_reset_stats(pc->c);
  PyThread_release_lock(pc->lock);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return stats_dict(&x);
}

/* ---- collectives ----------------------------------------------------------------- */

/* The frame's call on the communicator: lock, run on a pool context of its device. */
#define COMM_BEGIN(fname, capobj)                 \
  BEGIN(fname);                                   \
  py_comm *pc = pycomm_of((capobj), (fname));     \
  if (!pc) goto out;

#define COMM_RUN(call)                                                        \
  do {                                                                        \
    if (!call_c) {                                                            \
      DLDevice dev_;                                                          \
      dsc_comm_device(pc->c, &dev_);                                          \
      call_pc = dsc_py_pool_take(f.st, dev_, f.fn);                           \
      if (!call_pc) goto out;                                                 \
      call_c = dsc_py_ctx_get(call_pc);                                       \
      ctx = call_c->ctx;                                                      \
    }                                                                         \
    comm_lock(pc);                                                            \
    DSC_PY_CALL(s, call);                                                     \
    PyThread_release_lock(pc->lock);                                          \
    if (s != DSC_OK) {                                                        \
      dsc_py_raise(f.st, s);                                                  \
      goto out;                                                               \
    }                                                                         \
  } while (0)

#define COMM_END END

/* END that also frees two PyMem buffers (on every path). */
#define COMM_END_FREE(a, b)               \
  goto out;                               \
  out:                                    \
  PyMem_Free(a);                          \
  PyMem_Free(b);                          \
  if (call_c) dsc_py_ctx_leave(call_c);   \
  Py_XDECREF(call_pc);                    \
  dsc_py_frame_release(&f);               \
  return ret;

static PyObject *py_comm_all_reduce(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *yo;
  int op;
  if (!PyArg_ParseTuple(args, "OOOi", &cap, &xo, &yo, &op)) return NULL;
  COMM_BEGIN("dsc_comm_all_reduce", cap);
  IN(x, xo, "x");
  OUT(y, yo, "y");
  COMM_RUN(dsc_comm_all_reduce(pc->c, ctx, x, y, op));
  ret = Py_NewRef(yo);
  COMM_END
}

static PyObject *py_comm_reduce_scatter(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *yo;
  int op;
  if (!PyArg_ParseTuple(args, "OOOi", &cap, &xo, &yo, &op)) return NULL;
  COMM_BEGIN("dsc_comm_reduce_scatter", cap);
  IN(x, xo, "x");
  OUT(y, yo, "y");
  COMM_RUN(dsc_comm_reduce_scatter(pc->c, ctx, x, y, op));
  ret = Py_NewRef(yo);
  COMM_END
}

static PyObject *py_comm_all_gather(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *yo;
  if (!PyArg_ParseTuple(args, "OOO", &cap, &xo, &yo)) return NULL;
  COMM_BEGIN("dsc_comm_all_gather", cap);
  IN(x, xo, "x");
  OUT(y, yo, "y");
  COMM_RUN(dsc_comm_all_gather(pc->c, ctx, x, y));
  ret = Py_NewRef(yo);
  COMM_END
}

static PyObject *py_comm_broadcast(PyObject *m, PyObject *args) {
  PyObject *cap, *xo;
  int root;
  if (!PyArg_ParseTuple(args, "OOi", &cap, &xo, &root)) return NULL;
  COMM_BEGIN("dsc_comm_broadcast", cap);
  OUT(x, xo, "x");
  COMM_RUN(dsc_comm_broadcast(pc->c, ctx, x, root));
  ret = Py_NewRef(xo);
  COMM_END
}

/* host int64 [size] from a sequence (NULL with an exception) */
static int64_t *counts_from(PyObject *seq, int32_t size, const char *fn, const char *arg) {
  PyObject *fast = PySequence_Fast(seq, "counts");
  if (!fast) return NULL;
  if (PySequence_Fast_GET_SIZE(fast) != size) {
    PyErr_Format(PyExc_ValueError, "%s: %s: expected %d counts (one per rank), got %zd", fn, arg, (int)size,
                 PySequence_Fast_GET_SIZE(fast));
    Py_DECREF(fast);
    return NULL;
  }
  int64_t *c = (int64_t *)PyMem_Malloc((size_t)(size > 0 ? size : 1) * sizeof(int64_t));
  if (!c) {
    Py_DECREF(fast);
    PyErr_NoMemory();
    return NULL;
  }
  for (int32_t i = 0; i < size; ++i) {
    c[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    if (c[i] == -1 && PyErr_Occurred()) {
      PyMem_Free(c);
      Py_DECREF(fast);
      return NULL;
    }
  }
  Py_DECREF(fast);
  return c;
}

/* comm_exchange_counts(cap, send_counts) -> list */
static PyObject *py_comm_exchange_counts(PyObject *m, PyObject *args) {
  PyObject *cap, *so;
  if (!PyArg_ParseTuple(args, "OO", &cap, &so)) return NULL;
  int64_t *send = NULL, *recv = NULL;
  COMM_BEGIN("dsc_comm_exchange_counts", cap);
  const int32_t W = dsc_comm_size(pc->c);
  send = counts_from(so, W, f.fn, "send_counts");
  if (!send) goto out;
  recv = (int64_t *)PyMem_Calloc((size_t)W, sizeof(int64_t));
  if (!recv) {
    PyErr_NoMemory();
    goto out;
  }
  COMM_RUN(dsc_comm_exchange_counts(pc->c, ctx, send, recv));
  ret = PyList_New(W);
  for (int32_t i = 0; ret && i < W; ++i) PyList_SET_ITEM(ret, i, PyLong_FromLongLong(recv[i]));
  COMM_END_FREE(send, recv)
}

/* comm_all_to_all_v(cap, x, send_counts, y, recv_counts) */
static PyObject *py_comm_all_to_all_v(PyObject *m, PyObject *args) {
  PyObject *cap, *xo, *so, *yo, *ro;
  if (!PyArg_ParseTuple(args, "OOOOO", &cap, &xo, &so, &yo, &ro)) return NULL;
  int64_t *send = NULL, *recv = NULL;
  COMM_BEGIN("dsc_comm_all_to_all_v", cap);
  const int32_t W = dsc_comm_size(pc->c);
  IN(x, xo, "x");
  OUT(y, yo, "y");
  send = counts_from(so, W, f.fn, "send_counts");
  if (!send) goto out;
  recv = counts_from(ro, W, f.fn, "recv_counts");
  if (!recv) goto out;
  COMM_RUN(dsc_comm_all_to_all_v(pc->c, ctx, x, send, y, recv));
  ret = Py_NewRef(yo);
  COMM_END_FREE(send, recv)
}

static PyObject *py_comm_barrier(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  COMM_BEGIN("dsc_comm_barrier", cap);
  COMM_RUN(dsc_comm_barrier(pc->c, ctx));
  ret = Py_NewRef(Py_None);
  COMM_END
}

static PyObject *py_comm_synchronize(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  COMM_BEGIN("dsc_comm_synchronize", cap);
  COMM_RUN(dsc_comm_synchronize(pc->c, ctx));
  ret = Py_NewRef(Py_None);
  COMM_END
}

PyMethodDef dsc_py_dist_methods[] = {
    {"comm_self", py_comm_self, METH_NOARGS, "comm_self() -> a world of one"},
    {"comm_mpi", py_comm_mpi, METH_VARARGS, "comm_mpi(address of an MPI_Comm) -> comm (a duplicate)"},
    {"comm_nccl", py_comm_nccl, METH_VARARGS, "comm_nccl(ncclComm_t, device) -> comm (borrowed)"},
    {"nccl_unique_id", py_nccl_unique_id, METH_NOARGS, "nccl_unique_id() -> bytes"},
    {"comm_nccl_uid", py_comm_nccl_uid, METH_VARARGS, "comm_nccl_uid(id, rank, size, device) -> comm"},
    {"comm_split", py_comm_split, METH_VARARGS, "comm_split(comm, color, key) -> comm"},
    {"comm_info", py_comm_info, METH_VARARGS, "comm_info(comm) -> dict(rank, size, backend, timeout, device)"},
    {"comm_set_timeout", py_comm_set_timeout, METH_VARARGS, "comm_set_timeout(comm, seconds)"},
    {"comm_stats", py_comm_stats, METH_VARARGS, "comm_stats(comm[, reset]) -> dict"},
    {"comm_all_reduce", py_comm_all_reduce, METH_VARARGS, "comm_all_reduce(comm, x, y, op) -> y"},
    {"comm_reduce_scatter", py_comm_reduce_scatter, METH_VARARGS, "comm_reduce_scatter(comm, x, y, op) -> y"},
    {"comm_all_gather", py_comm_all_gather, METH_VARARGS, "comm_all_gather(comm, x, y) -> y"},
    {"comm_broadcast", py_comm_broadcast, METH_VARARGS, "comm_broadcast(comm, x, root) -> x"},
    {"comm_exchange_counts", py_comm_exchange_counts, METH_VARARGS,
     "comm_exchange_counts(comm, send_counts) -> recv_counts"},
    {"comm_all_to_all_v", py_comm_all_to_all_v, METH_VARARGS,
     "comm_all_to_all_v(comm, x, send_counts, y, recv_counts) -> y"},
    {"comm_barrier", py_comm_barrier, METH_VARARGS, "comm_barrier(comm)"},
    {"comm_synchronize", py_comm_synchronize, METH_VARARGS, "comm_synchronize(comm)"},
    {NULL, NULL, 0, NULL},
};
