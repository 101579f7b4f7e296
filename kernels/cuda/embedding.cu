// Embedding gather: out[n_tokens, dim] = table[ids[t], :] (fp16 → fp16).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

// One block per token row; 16-byte copies when rows allow it (pure data
// movement, so the vector and scalar paths give identical bits).
template <bool kVec>
__global__ void embedding_kernel(__half* __restrict__ out,          // [n_tokens, dim]
                                 const __half* __restrict__ table,  // [vocab, dim]
                                 const int32_t* __restrict__ ids,   // [n_tokens]
                                 int dim) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  if constexpr (kVec) {
    const uint4* src = reinterpret_cast<const uint4*>(table + id * dim);
    uint4* dst = reinterpret_cast<uint4*>(out + t * dim);
    for (int i = threadIdx.x; i < dim / 8; i += blockDim.x) dst[i] = __ldg(src + i);
  } else {
    const __half* src = table + id * dim;
    __half* dst = out + t * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t embedding(__half* out, const __half* table, const int32_t* ids, int n_tokens, int dim,
                      cudaStream_t stream) {
  if (n_tokens < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n_tokens == 0) return cudaSuccess;
  const bool vec = dim % 8 == 0 && detail::aligned16(out) && detail::aligned16(table);
  const int threads = vec ? (dim / 8 >= 256 ? 256 : 64) : 256;
  if (vec) {
    embedding_kernel<true><<<n_tokens, threads, 0, stream>>>(out, table, ids, dim);
  } else {
    embedding_kernel<false><<<n_tokens, threads, 0, stream>>>(out, table, ids, dim);
  }
  return detail::last_launch_error();
}

}  // namespace chatradio::kernels::cuda
