/*
 * runtime.c -- what every file of the glue stands on: the module state, dsc_status ->
 * Python exception, the contexts (one per model or cache, a per-device pool for the ops)
 * with their owners and waits, and the per-device memory context of dsc.Tensor memory
 * (glue.h, "contexts and threads", tells the rules). Calls only the C ABI and Python.
 */
#include "glue.h"

#include <string.h>

dsc_py_state *dsc_py_get_state(PyObject *module) {
  return (dsc_py_state *)PyModule_GetState(module);
}

PyObject *dsc_py_raise(dsc_py_state *st, dsc_status s) {
  const char *msg = dsc_last_error();
  if (!msg || !msg[0]) msg = dsc_status_string(s);
  PyObject *type;
  switch (s) {
    case DSC_ERR_INVALID_ARGUMENT:
    case DSC_ERR_SHAPE:
    case DSC_ERR_DEVICE: type = PyExc_ValueError; break;
    case DSC_ERR_DTYPE: type = PyExc_TypeError; break;
    case DSC_ERR_OUT_OF_MEMORY: type = PyExc_MemoryError; break;
    case DSC_ERR_FORMAT: type = st->format_type; break;
    case DSC_ERR_COMM: type = st->comm_type; break;
    default: type = st->error_type; break;
  }
  /* messages may quote bytes from a corrupt file: decode leniently */
  PyObject *text = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
  if (!text) return NULL;
  PyErr_SetObject(type, text);
  Py_DECREF(text);
  return NULL;
}

/* ---------------------------------------------------------------- contexts */

static const char *const CTX_NAME = "deepseek_c.context";

dsc_py_device *dsc_py_device_of(dsc_py_state *st, DLDevice dev) {
  if (dev.device_type == kDLCPU) return &st->dev[0];
  if (dev.device_type == kDLCUDA) {
    if (dev.device_id < 0 || dev.device_id >= DSC_PY_MAX_CUDA) {
      PyErr_Format(PyExc_ValueError, "device: expected a CUDA ordinal in [0, %d), got %d",
                   DSC_PY_MAX_CUDA, (int)dev.device_id);
      return NULL;
    }
    return &st->dev[1 + dev.device_id];
  }
  PyErr_Format(PyExc_ValueError,
               "device: expected a CPU or CUDA array, got DLPack device type %d (only kDLCPU=1 "
               "and kDLCUDA=2 are supported)",
               (int)dev.device_type);
  return NULL;
}

static void ctx_free(dsc_py_ctx *c) {
  dsc_context_destroy(c->ctx);
  if (c->lock) PyThread_free_lock(c->lock);
  PyMem_RawFree(c);
}

/* Runs when the last owner (a model, a cache, saved activations, a pool) lets go: nothing
 * can be running on the context then, since every call holds the capsule. */
static void ctx_destructor(PyObject *cap) {
  dsc_py_ctx *c = (dsc_py_ctx *)PyCapsule_GetPointer(cap, CTX_NAME);
  if (!c) {
    PyErr_Clear();
    return;
  }
  ctx_free(c);
}

static dsc_status create_context(DLDevice dev, int32_t num_threads, dsc_context **out) {
  dsc_context_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.device_type = dev.device_type;
  o.device_id = dev.device_id;
  o.num_threads = num_threads;
  return dsc_context_create(&o, out);
}

PyObject *dsc_py_ctx_new(dsc_py_state *st, DLDevice dev, int32_t num_threads, const char *what) {
  if (!dsc_py_device_of(st, dev)) return NULL;
  if (num_threads < 0) {
    PyErr_Format(PyExc_ValueError, "num_threads: expected >= 0 (0: the OpenMP default), got %d",
                 (int)num_threads);
    return NULL;
  }
  dsc_context *ctx = NULL;
  dsc_status s;
  /* a CUDA context takes a while (cuBLASLt, scratch): let other threads run meanwhile */
  Py_BEGIN_ALLOW_THREADS s = create_context(dev, num_threads, &ctx);
  Py_END_ALLOW_THREADS
  if (s != DSC_OK) return dsc_py_raise(st, s);
  dsc_py_ctx *c = (dsc_py_ctx *)PyMem_RawCalloc(1, sizeof *c);
  if (!c) {
    dsc_context_destroy(ctx);
    return PyErr_NoMemory();
  }
  c->ctx = ctx;
  snprintf(c->what, sizeof c->what, "%s", what);
  c->lock = PyThread_allocate_lock();
  if (!c->lock) {
    ctx_free(c);
    return PyErr_NoMemory();
  }
  PyObject *cap = PyCapsule_New(c, CTX_NAME, ctx_destructor);
  if (!cap) ctx_free(c);
  return cap;
}

dsc_py_ctx *dsc_py_ctx_get(PyObject *cap) {
  return (dsc_py_ctx *)PyCapsule_GetPointer(cap, CTX_NAME);
}

PyObject *dsc_py_ctx_capsule_of(PyObject *obj, const char *fn) {
  PyObject *cap = obj;
  if (PyCapsule_CheckExact(obj) && !PyCapsule_IsValid(obj, CTX_NAME)) {
    cap = (PyObject *)PyCapsule_GetContext(obj);
    if (!cap && PyErr_Occurred()) return NULL;
  }
  if (!cap || !PyCapsule_IsValid(cap, CTX_NAME)) {
    PyErr_Format(PyExc_TypeError, "%s: obj: expected a context capsule or a capsule made on one, got %s",
                 fn, Py_TYPE(obj)->tp_name);
    return NULL;
  }
  return cap;
}

int dsc_py_ctx_check_self(dsc_py_state *st, const dsc_py_ctx *c, const char *fn) {
  if (c->owner != PyThread_get_thread_ident()) return 0;
  PyErr_Format(st->error_type,
                 "%s: the %s is busy with %s in this same thread: calling it from its own "
                 "on_token callback (or from anything that runs inside one of its calls) would "
                 "wait for itself forever. Call it after that call returns, or use another "
                 "model; ops (dsc.matmul, ...) and other models may be called from the callback",
                 fn, c->what, c->busy ? c->busy : "a call");
  return -1;
}

int dsc_py_ctx_enter(dsc_py_state *st, dsc_py_ctx *c, const char *fn, int allow_self) {
  const unsigned long me = PyThread_get_thread_ident();
  if (c->owner == me) return allow_self ? 1 : dsc_py_ctx_check_self(st, c, fn);
  if (PyThread_acquire_lock(c->lock, NOWAIT_LOCK)) {
    c->owner = me;
    c->busy = fn;
    return 0;
  }
  /* Busy. Would the wait end? Follow the holder to what it waits for, to that holder, ...:
   * coming back to this thread means a cycle of waits that no one can break. */
  unsigned long t = c->owner;
  for (int hops = 0; t != 0 && hops < 4096; ++hops) {
    const dsc_py_wait *w = st->waits;
    while (w && w->thread != t) w = w->next;
    if (!w) break;
    t = w->on->owner;
    if (t == me) {
      PyErr_Format(st->error_type,
                   "%s: waiting for the %s (busy with %s in another thread) would never end: that "
                   "thread waits, directly or through others, for a model or cache this thread is "
                   "running (e.g. two on_token callbacks each calling the other's model). Call it "
                   "after the running call returns",
                   fn, c->what, c->busy ? c->busy : "a call");
      return -1;
    }
  }
  dsc_py_wait self = {me, c, st->waits};
  st->waits = &self;
  int got = 0;
  for (;;) {
    PyLockStatus r;
    Py_BEGIN_ALLOW_THREADS r = PyThread_acquire_lock_timed(c->lock, -1, 1);
    Py_END_ALLOW_THREADS
    if (r == PY_LOCK_ACQUIRED) {
      got = 1;
      break;
    }
    if (Py_MakePendingCalls() < 0) break; /* a signal handler raised (Ctrl-C): give up */
  }
  dsc_py_wait **pp = &st->waits;
  while (*pp != &self) pp = &(*pp)->next;
  *pp = self.next;
  if (!got) return -1;
  c->owner = me;
  c->busy = fn;
  return 0;
}

int dsc_py_ctx_enter_pooled(dsc_py_ctx *c) {
  const unsigned long me = PyThread_get_thread_ident();
  if (c->owner == me) return 0;
  if (!PyThread_acquire_lock(c->lock, NOWAIT_LOCK)) {
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(c->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
  }
  c->owner = me;
  c->busy = "freeing saved activations";
  return 1;
}

void dsc_py_ctx_leave(dsc_py_ctx *c) {
  c->owner = 0;
  c->busy = NULL;
  PyThread_release_lock(c->lock);
}

PyObject *dsc_py_pool_take(dsc_py_state *st, DLDevice dev, const char *fn) {
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d) return NULL;
  if (!d->pool && !(d->pool = PyList_New(0))) return NULL;
  const unsigned long me = PyThread_get_thread_ident();
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(d->pool); ++i) {
    PyObject *cap = PyList_GET_ITEM(d->pool, i);
    dsc_py_ctx *c = dsc_py_ctx_get(cap);
    if (c && PyThread_acquire_lock(c->lock, NOWAIT_LOCK)) {
      c->owner = me;
      c->busy = fn;
      return Py_NewRef(cap);
    }
  }
  char what[64];
  if (dev.device_type == kDLCPU) snprintf(what, sizeof what, "op context (cpu)");
  else snprintf(what, sizeof what, "op context (cuda:%d)", (int)dev.device_id);
  PyObject *cap = dsc_py_ctx_new(st, dev, 0, what);
  if (!cap) return NULL;
  dsc_py_ctx *c = dsc_py_ctx_get(cap);
  (void)dsc_context_set_check_mode(c->ctx, d->check_mode); /* a valid mode: cannot fail */
  if (!d->pool && !(d->pool = PyList_New(0))) { /* cleared while the GIL was released */
    Py_DECREF(cap);
    return NULL;
  }
  if (PyList_Append(d->pool, cap) < 0) {
    Py_DECREF(cap);
    return NULL;
  }
  PyThread_acquire_lock(c->lock, WAIT_LOCK); /* new: free */
  c->owner = me;
  c->busy = fn;
  return cap;
}

/* The memory context of a device, created on first use (with the GIL held, so once). */
static dsc_py_device *mem_device(dsc_py_state *st, DLDevice dev) {
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d || d->mem) return d;
  dsc_context *ctx = NULL;
  dsc_status s = create_context(dev, 0, &ctx);
  if (s != DSC_OK) return (dsc_py_device *)dsc_py_raise(st, s);
  PyThread_type_lock l = PyThread_allocate_lock();
  if (!l) {
    dsc_context_destroy(ctx);
    return (dsc_py_device *)PyErr_NoMemory();
  }
  d->mem = ctx;
  d->mem_lock = l;
  return d;
}

int dsc_py_mem_alloc(dsc_py_state *st, DLDevice dev, size_t bytes, void **ptr) {
  *ptr = NULL;
  dsc_py_device *d = mem_device(st, dev);
  if (!d) return -1;
  dsc_status s;
  Py_BEGIN_ALLOW_THREADS
  PyThread_acquire_lock(d->mem_lock, WAIT_LOCK);
  s = dsc_malloc(d->mem, bytes, ptr);
  PyThread_release_lock(d->mem_lock);
  Py_END_ALLOW_THREADS
  if (s != DSC_OK) {
    dsc_py_raise(st, s);
    return -1;
  }
  return 0;
}

void dsc_py_mem_free(dsc_py_state *st, DLDevice dev, void *ptr) {
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d || !d->mem) { /* cannot happen for memory dsc_py_mem_alloc gave */
    PyErr_Clear();
    return;
  }
  /* Waiting with the GIL held is safe: the holder of mem_lock never needs the GIL. */
  PyThread_acquire_lock(d->mem_lock, WAIT_LOCK);
  dsc_free(d->mem, ptr);
  PyThread_release_lock(d->mem_lock);
}
