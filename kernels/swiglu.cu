/*
 * kernels/swiglu.cu -- the SwiGLU gate of DeepSeek's MLPs and experts on the GPU; the
 * twin of csrc/cpu/swiglu.c. Elementwise, so the tensors are flat arrays.
 *
 * Legend: n elements (rows x F intermediate features, flattened); T storage type.
 *
 *   sig = sigmoid(g), silu(g) = g * sig
 *   forward:  out   = (g * sig) * u
 *   backward: dgate = dout * u * sig * (1 + g * (1 - sig))
 *             dup   = dout * g * sig
 *
 * Each element is read before it is written by the same thread, so outputs may alias
 * inputs element for element. A 16-byte vector path is used when every pointer allows
 * it; the math is the same either way.
 */
#include "common.cuh"

/* sigmoid without overflow (exp of a non-positive number only), as on the CPU. expf is
 * the accurate one (no fast-math). */
__device__ __forceinline__ float sigmoid_stable(float g) {
  if (g >= 0.0f) return 1.0f / (1.0f + expf(-g));
  const float e = expf(g);
  return e / (1.0f + e);
}

struct SwigluFwd {
  /* in: [gate, up]; out: [out] */
  __device__ __forceinline__ void operator()(const float *in, float *out) const {
    const float g = in[0], u = in[1];
    out[0] = (g * sigmoid_stable(g)) * u;
  }
  static constexpr int NIN = 2, NOUT = 1;
};

struct SwigluBwd {
  /* in: [dout, gate, up]; out: [dgate, dup] */
  __device__ __forceinline__ void operator()(const float *in, float *out) const {
    const float d = in[0], g = in[1], u = in[2];
    const float sig = sigmoid_stable(g);
    out[0] = d * u * sig * (1.0f + g * (1.0f - sig));
    out[1] = d * g * sig;
  }
  static constexpr int NIN = 3, NOUT = 2;
};

/* Pointers of an elementwise op: NIN inputs, NOUT outputs, all [n] T. */
template <typename T, int NIN, int NOUT>
struct EwPtrs {
  const T *in[NIN];
  T *out[NOUT];
};

/* Scalar grid-stride path (any alignment). */
template <typename T, typename Op>
__global__ void ew_kernel(int64_t n, EwPtrs<T, Op::NIN, Op::NOUT> ptr, Op op) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float in[Op::NIN], out[Op::NOUT];
#pragma unroll
    for (int k = 0; k < Op::NIN; ++k) in[k] = dsc_ld(ptr.in[k], i);
    op(in, out);
#pragma unroll
    for (int k = 0; k < Op::NOUT; ++k) dsc_st(ptr.out[k], i, out[k]);
  }
}

/* 16-byte path: VW = 16 / sizeof(T) elements per access; the n % VW tail is done by the
 * first threads after the loop. */
template <typename T, typename Op>
__global__ void ew_vec_kernel(int64_t n, EwPtrs<T, Op::NIN, Op::NOUT> ptr, Op op) {
  constexpr int VW = 16 / (int)sizeof(T);
  typedef DscPack<T, VW> P;
  const int64_t nvec = n / VW;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t k = tid; k < nvec; k += stride) {
    P pin[Op::NIN], pout[Op::NOUT];
#pragma unroll
    for (int q = 0; q < Op::NIN; ++q) pin[q] = ((const P *)ptr.in[q])[k];
#pragma unroll
    for (int e = 0; e < VW; ++e) {
      float in[Op::NIN], out[Op::NOUT];
#pragma unroll
      for (int q = 0; q < Op::NIN; ++q) in[q] = dsc_to_f32(pin[q].v[e]);
      op(in, out);
#pragma unroll
      for (int q = 0; q < Op::NOUT; ++q) pout[q].v[e] = dsc_from_f32<T>(out[q]);
    }
#pragma unroll
    for (int q = 0; q < Op::NOUT; ++q) ((P *)ptr.out[q])[k] = pout[q];
  }
  const int64_t i = nvec * VW + tid;
  if (i < n) {
    float in[Op::NIN], out[Op::NOUT];
#pragma unroll
    for (int q = 0; q < Op::NIN; ++q) in[q] = dsc_ld(ptr.in[q], i);
    op(in, out);
#pragma unroll
    for (int q = 0; q < Op::NOUT; ++q) dsc_st(ptr.out[q], i, out[q]);
  }
}

template <typename T, typename Op>
static dsc_status launch_ew(dsc_context *ctx, const char *fn, int64_t n,
                            const void *const *in /* [NIN] */, void *const *out /* [NOUT] */) {
  EwPtrs<T, Op::NIN, Op::NOUT> ptr;
  bool vec = true;
  for (int k = 0; k < Op::NIN; ++k) {
    ptr.in[k] = (const T *)in[k];
    vec = vec && dsc_cuda_aligned(in[k], 16);
  }
  for (int k = 0; k < Op::NOUT; ++k) {
    ptr.out[k] = (T *)out[k];
    vec = vec && dsc_cuda_aligned(out[k], 16);
  }
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int threads = 256;
  if (vec) {
    const int64_t VW = 16 / (int64_t)sizeof(T);
    ew_vec_kernel<T, Op><<<dsc_cuda_blocks(n / VW + 1, threads), threads, 0, s>>>(n, ptr, Op());
  } else {
    ew_kernel<T, Op><<<dsc_cuda_blocks(n, threads), threads, 0, s>>>(n, ptr, Op());
  }
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_swiglu_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                                          const void *gate /* [n] dt */,
                                          const void *up /* [n] dt */,
                                          void *out /* [n] dt, may alias gate or up */) {
  static const char *const FN = "dsc_cuda_swiglu_fwd";
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  const void *in[2] = {gate, up};
  void *outs[1] = {out};
  if (dt == DSC_DTYPE_BFLOAT16) return launch_ew<__nv_bfloat16, SwigluFwd>(ctx, FN, n, in, outs);
  return launch_ew<float, SwigluFwd>(ctx, FN, n, in, outs);
}

extern "C" dsc_status dsc_cuda_swiglu_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                                          const void *dout /* [n] dt */,
                                          const void *gate /* [n] dt */,
                                          const void *up /* [n] dt */, void *dgate /* [n] dt */,
                                          void *dup /* [n] dt */) {
  static const char *const FN = "dsc_cuda_swiglu_bwd";
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  const void *in[3] = {dout, gate, up};
  void *outs[2] = {dgate, dup};
  if (dt == DSC_DTYPE_BFLOAT16) return launch_ew<__nv_bfloat16, SwigluBwd>(ctx, FN, n, in, outs);
  return launch_ew<float, SwigluBwd>(ctx, FN, n, in, outs);
}
