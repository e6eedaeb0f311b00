/*
 * kernels/graph.cu -- CUDA graph capture of work queued on the context's stream, for
 * generation's decode step (csrc/model/generate.c): capture once, replay every step.
 * Relaxed capture mode: other threads' CUDA calls are not disturbed; the captured work must
 * not wait on the host or allocate outside stream-ordered pools (the caller checks the
 * context counters before capturing). csrc sees only the opaque exec handle.
 */
#include "common.cuh"

extern "C" dsc_status dsc_cuda_graph_capture_begin(dsc_context *ctx) {
  static const char *const FN = "dsc_cuda_graph_capture_begin";
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (s == NULL) /* the legacy default stream cannot be captured */
    return dsc_error(DSC_ERR_UNSUPPORTED, FN, "the context uses the legacy default stream, which cannot be captured");
  DSC_CUDA_TRY(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_graph_capture_end(dsc_context *ctx, void **exec) {
  static const char *const FN = "dsc_cuda_graph_capture_end";
  *exec = NULL;
  cudaGraph_t g = NULL;
  /* ends the capture even when it was invalidated (then g is NULL and the error says why) */
  const cudaError_t e = cudaStreamEndCapture(dsc_cuda_stream(ctx), &g);
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
