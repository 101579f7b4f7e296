// Greedy sampling on the device: ids[r] = argmax logits[r, :], so a decode step
// copies back one int32 per row instead of a vocab-sized row of floats.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

constexpr int kThreads = 512;

// (v, i) beats (bv, bi) when it is larger, or equal with a lower index; NaNs
// never win; bi < 0 means "nothing yet". A total order, so the reduction tree's
// shape cannot change the winner.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  if (v != v || i < 0) return false;
  return bi < 0 || v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kThreads)
    argmax_kernel(int32_t* __restrict__ ids,         // [rows]
                  const float* __restrict__ logits,  // [rows, vocab]
                  int vocab) {
  __shared__ float sv[kThreads / detail::kWarp];
  __shared__ int si[kThreads / detail::kWarp];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float bv = 0.0f;
  int bi = -1;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = __ldg(row + i);
    if (better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  const int warp = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / detail::kWarp; ++w) {
      if (better(sv[w], si[w], bv, bi)) {
        bv = sv[w];
        bi = si[w];
      }
    }
    ids[blockIdx.x] = bi < 0 ? 0 : bi;
  }
}

}  // namespace

cudaError_t argmax(int32_t* ids, const float* logits, int rows, int vocab, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  argmax_kernel<<<rows, kThreads, 0, stream>>>(ids, logits, vocab);
  return detail::last_launch_error();
}

}  // namespace chatradio::kernels::cuda
