/*
 * kernels/graph.cu -- CUDA graph capture of work queued on the context's stream, for
 * generation's decode step (csrc/model/generate.c): capture once, replay every step.
 * Relaxed capture mode: other threads' CUDA calls are not disturbed; the captured work must
 * not wait on the host or allocate outside stream-ordered pools (the caller checks the
 * context counters before capturing). csrc sees only the opaque exec handle.
 */
#include "common.cuh"

#include <new>

/* A capture in progress: the stream it records on. The legacy default stream (a context
 * without its own stream) cannot be captured: a private stream stands in for it while
 * recording (it first waits for the work queued so far) and the graph is launched on the
 * context's stream as usual. */
struct dsc_graph_capture {
  cudaStream_t saved; /* ctx->stream before the capture */
  cudaStream_t own;   /* the private stream, or NULL */
  cudaEvent_t ready;  /* own waits for the legacy stream's work */
};

static void cap_free(dsc_context *ctx, dsc_graph_capture *c) {
  ctx->stream = (void *)c->saved;
  if (c->own) cudaStreamDestroy(c->own);
  if (c->ready) cudaEventDestroy(c->ready);
  delete c;
}

extern "C" dsc_status dsc_cuda_graph_capture_begin(dsc_context *ctx, dsc_graph_capture **cap) {
  static const char *const FN = "dsc_cuda_graph_capture_begin";
  *cap = NULL;
  DSC_CUDA_ENTER(ctx, FN);
  dsc_graph_capture *c = new (std::nothrow) dsc_graph_capture{dsc_cuda_stream(ctx), NULL, NULL};
  if (!c) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  cudaError_t e = cudaSuccess;
  if (c->saved == NULL) {
    e = cudaStreamCreateWithFlags(&c->own, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(c->ready, 0);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->own, c->ready, 0);
    if (e == cudaSuccess) ctx->stream = (void *)c->own;
  }
  if (e == cudaSuccess) e = cudaStreamBeginCapture(dsc_cuda_stream(ctx), cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    cap_free(ctx, c);
    return dsc_error(DSC_ERR_CUDA, FN, "could not start a capture: %s (%s)", cudaGetErrorString(e),
                     cudaGetErrorName(e));
  }
  *cap = c;
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_graph_capture_end(dsc_context *ctx, dsc_graph_capture *cap, void **exec) {
  static const char *const FN = "dsc_cuda_graph_capture_end";
  *exec = NULL;
  cudaGraph_t g = NULL;
  /* ends the capture even when it was invalidated (then g is NULL and the error says why) */
  const cudaError_t e = cudaStreamEndCapture(dsc_cuda_stream(ctx), &g);
  cap_free(ctx, cap); /* the context's own stream again */
  if (e != cudaSuccess || g == NULL) {
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError(); /* clear the capture's error: the caller falls back to launches */
    return dsc_error(DSC_ERR_CUDA, FN, "the capture failed: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  cudaGraphExec_t x = NULL;
  const cudaError_t ei = cudaGraphInstantiateWithFlags(&x, g, 0);
  cudaGraphDestroy(g);
  if (ei != cudaSuccess) {
    (void)cudaGetLastError();
    return dsc_error(DSC_ERR_CUDA, FN, "cudaGraphInstantiate: %s (%s)", cudaGetErrorString(ei), cudaGetErrorName(ei));
  }
  *exec = (void *)x;
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_graph_launch(dsc_context *ctx, void *exec) {
  static const char *const FN = "dsc_cuda_graph_launch";
  DSC_CUDA_ENTER(ctx, FN);
  DSC_CUDA_TRY(cudaGraphLaunch((cudaGraphExec_t)exec, dsc_cuda_stream(ctx)), FN);
  return DSC_OK;
}

extern "C" void dsc_cuda_graph_destroy(void *exec) {
  if (exec) cudaGraphExecDestroy((cudaGraphExec_t)exec);
}
