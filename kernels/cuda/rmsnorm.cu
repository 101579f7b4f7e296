// RMSNorm, optionally fused with the residual add that precedes it in a
// pre-norm transformer block.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;

// Loads/stores one chunk of 8 consecutive elements, as a 16-byte vector or
// element by element (row tail, unaligned rows). Both paths hand the same 8
// values to the same thread, so the summation order never depends on alignment.
template <bool kVec>
__device__ __forceinline__ void load8(float (&v)[8], const __half* p, int valid) {
  if constexpr (kVec) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = i < valid ? __half2float(p[i]) : 0.0f;
  }
}
template <bool kVec>
__device__ __forceinline__ void store8(__half* p, const float (&v)[8], int valid) {
  if constexpr (kVec) {
    uint4 u;
    u.x = detail::pack_half2(v[0], v[1]);
    u.y = detail::pack_half2(v[2], v[3]);
    u.z = detail::pack_half2(v[4], v[5]);
    u.w = detail::pack_half2(v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (i < valid) p[i] = __float2half_rn(v[i]);
  }
}

// Fixed-shape block sum: warp butterflies, then thread 0 adds the warp totals in
// order. The block size is a function of dim only, so a row's sum of squares is
// bitwise the same in any batch.
constexpr int kRedSlots = kMaxThreads / detail::kWarp + 1;  // warp totals + the block total
__device__ float block_sum(float v, float* smem /* [kRedSlots] */) {
  v = detail::warp_sum(v);
  const int warp = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / detail::kWarp); ++w) s += smem[w];
    smem[kRedSlots - 1] = s;
  }
  __syncthreads();
  return smem[kRedSlots - 1];
}

// One block per row. Pass 1 forms the (rounded) residual and its sum of squares;
// pass 2 re-reads the row (each thread its own chunks, so in-place aliasing of
// out and x is safe) and writes the normalised, weighted values.
template <bool kVec, bool kResidual>
__global__ void rmsnorm_kernel(__half* out,                       // [rows, dim]
                               __half* residual,                  // [rows, dim] (kResidual)
                               const __half* x,                   // [rows, dim]
                               const __half* __restrict__ weight, // [dim]
                               int dim, float eps) {
  __shared__ float red[kRedSlots];
  const int64_t row = blockIdx.x;
  const int n_chunks = detail::div_up(dim, 8);
  const __half* xr = x + row * dim;
  __half* rr = kResidual ? residual + row * dim : nullptr;

  float ss = 0.0f;
  for (int c = threadIdx.x; c < n_chunks; c += blockDim.x) {
    const int valid = min(8, dim - 8 * c);
    float v[8];
    load8<kVec>(v, xr + 8 * c, valid);
    if constexpr (kResidual) {
      float r[8];
      load8<kVec>(r, rr + 8 * c, valid);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __half2float(__hadd(__float2half_rn(r[i]), __float2half_rn(v[i])));
      store8<kVec>(rr + 8 * c, v, valid);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
  }
  ss = block_sum(ss, red);
  // The CPU reference's formula: 1 / sqrt(mean + eps), applied as (x * inv) * w.
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);

  __half* orow = out + row * dim;
  const __half* src = kResidual ? rr : xr;
  for (int c = threadIdx.x; c < n_chunks; c += blockDim.x) {
    const int valid = min(8, dim - 8 * c);
    float v[8], w[8];
    load8<kVec>(v, src + 8 * c, valid);
    load8<kVec>(w, weight + 8 * c, valid);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = v[i] * inv * w[i];
    store8<kVec>(orow + 8 * c, v, valid);
  }
}

cudaError_t launch(__half* out, __half* residual, const __half* x, const __half* weight, int rows, int dim,
                   float eps, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  // Threads from dim alone (never from rows): the reduction tree is a property of the row.
  const int chunks = detail::div_up(dim, 8);
  const int threads = std::min(kMaxThreads, detail::div_up(chunks, detail::kWarp) * detail::kWarp);
  const bool vec = dim % 8 == 0 && detail::aligned16(out) && detail::aligned16(x) &&
                   detail::aligned16(weight) && (residual == nullptr || detail::aligned16(residual));
  if (residual != nullptr) {
    if (vec)
      rmsnorm_kernel<true, true><<<rows, threads, 0, stream>>>(out, residual, x, weight, dim, eps);
    else
      rmsnorm_kernel<false, true><<<rows, threads, 0, stream>>>(out, residual, x, weight, dim, eps);
  } else {
    if (vec)
      rmsnorm_kernel<true, false><<<rows, threads, 0, stream>>>(out, nullptr, x, weight, dim, eps);
    else
      rmsnorm_kernel<false, false><<<rows, threads, 0, stream>>>(out, nullptr, x, weight, dim, eps);
  }
  return detail::last_launch_error();
}

}  // namespace

cudaError_t rmsnorm(__half* out, const __half* x, const __half* weight, int rows, int dim, float eps,
                    cudaStream_t stream) {
  return launch(out, nullptr, x, weight, rows, dim, eps, stream);
}

cudaError_t add_rmsnorm(__half* out, __half* residual, const __half* x, const __half* weight, int rows,
                        int dim, float eps, cudaStream_t stream) {
  if (residual == nullptr) return cudaErrorInvalidValue;
  return launch(out, residual, x, weight, rows, dim, eps, stream);
}

}  // namespace chatradio::kernels::cuda
