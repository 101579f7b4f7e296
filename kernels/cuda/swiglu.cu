// SwiGLU: out = silu(gate) * up, from separate buffers or from a fused
// [gate | up] GEMM output row.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// The reference's formula and rounding order: g / (1 + exp(-g)) * u.
__device__ __forceinline__ float silu_mul(float g, float u) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// Element e of the [rows, n] output reads gate[r·gate_stride + i] and
// up[r·up_stride + i]. kVec: 8 elements per thread with 16-byte accesses
// (n, strides and pointers all multiples of 8 halves).
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    swiglu_kernel(__half* out,       // [rows, n]
                  const __half* gate,  // [rows, gate_stride]
                  const __half* up,    // [rows, up_stride]
                  int64_t rows, int n, int64_t gate_stride, int64_t up_stride) {
  const int per = kVec ? 8 : 1;
  const int64_t cols = n / per;  // n % 8 == 0 when kVec
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, i = (e - r * cols) * per;
    if constexpr (kVec) {
      const uint4 g = *reinterpret_cast<const uint4*>(gate + r * gate_stride + i);
      const uint4 u = *reinterpret_cast<const uint4*>(up + r * up_stride + i);
      const __half2* gh = reinterpret_cast<const __half2*>(&g);
      const __half2* uh = reinterpret_cast<const __half2*>(&u);
      uint4 o;
      uint32_t* oh = reinterpret_cast<uint32_t*>(&o);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 gf = __half22float2(gh[j]), uf = __half22float2(uh[j]);
        oh[j] = detail::pack_half2(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
      }
      *reinterpret_cast<uint4*>(out + r * n + i) = o;
    } else {
      const float g = __half2float(gate[r * gate_stride + i]);
      const float u = __half2float(up[r * up_stride + i]);
      out[r * n + i] = __float2half_rn(silu_mul(g, u));
    }
  }
}

cudaError_t launch(__half* out, const __half* gate, const __half* up, int64_t rows, int n, int64_t gate_stride,
                   int64_t up_stride, cudaStream_t stream) {
  const bool vec = n % 8 == 0 && gate_stride % 8 == 0 && up_stride % 8 == 0 && detail::aligned16(out) &&
                   detail::aligned16(gate) && detail::aligned16(up);
  const int64_t work = rows * (vec ? n / 8 : n);
  // Grid-stride loop: a few waves of blocks are plenty for a memory-bound map.
  const int blocks = static_cast<int>(std::min<int64_t>(detail::div_up64(work, kThreads), 4096));
  if (vec)
    swiglu_kernel<true><<<blocks, kThreads, 0, stream>>>(out, gate, up, rows, n, gate_stride, up_stride);
  else
    swiglu_kernel<false><<<blocks, kThreads, 0, stream>>>(out, gate, up, rows, n, gate_stride, up_stride);
  return detail::last_launch_error();
}

}  // namespace

cudaError_t swiglu(__half* out, const __half* gate, const __half* up, int n, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  return launch(out, gate, up, 1, n, n, n, stream);
}

cudaError_t swiglu_fused(__half* out, const __half* gate_up, int rows, int n, cudaStream_t stream) {
  if (rows < 0 || n < 0) return cudaErrorInvalidValue;
  if (rows == 0 || n == 0) return cudaSuccess;
  return launch(out, gate_up, gate_up + n, rows, n, 2 * static_cast<int64_t>(n), 2 * static_cast<int64_t>(n),
                stream);
}

}  // namespace chatradio::kernels::cuda
