// int4 dequant-GEMV for decode: out[m, n] = x[m, k] · Wᵀ for m <= 16.
//
// Memory-bound on W (k·n/2 bytes), so the kernel is built around streaming W
// once with 128-bit loads: one block per unit column (8 outputs), its 4 warps
// are the 4 accumulation slices (warp s takes chunks s, s+4, s+8, ...), each lane
// keeps kUnroll chunks of W in flight, dequantises them in registers and feeds
// mma.sync with the activations as the (zero-padded) 16-row A operand. x is tiny
// and shared by every block, so it is read through L1 as 16-byte loads. The
// slices meet in shared memory and are added ((s0+s1)+(s2+s3)), exactly as the
// GEMM adds its per-slice accumulators (int4_mma.cuh): same bits for any m.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/int4_layout.h"
#include "kernels/cuda/int4_mma.cuh"

namespace chatradio::kernels::cuda {
namespace {

using namespace int4_layout;
constexpr int kThreads = kSlices * detail::kWarp;  // one warp per slice
constexpr int kUnroll = 4;                          // W loads in flight per lane

template <class OutT>  // __half, or float for fp32 logits
__global__ void __launch_bounds__(kThreads)
    int4_gemv_kernel(OutT* __restrict__ out,            // [m, n]
                     const __half* __restrict__ x,      // [m, k]
                     const uint32_t* __restrict__ packed,  // our layout, [n/8][kc][32 lanes][4]
                     const uint32_t* __restrict__ sz,      // [k_pad/group, n]
                     int m, int n, int k, int kc_count, int group) {
  __shared__ float red[kSlices][detail::kWarp][4];
  const int slice = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  const int g = lane / 4, t = lane % 4;
  const int un = blockIdx.x;
  const int col = un * kUnitN + g;  // the output whose nibbles this lane dequantises
  const uint4* wp = reinterpret_cast<const uint4*>(packed) + static_cast<size_t>(un) * kc_count * 32 + lane;
  const bool lo_ok = g < m, hi_ok = g + 8 < m;
  const __half* x_lo = x + static_cast<size_t>(g) * k;
  const __half* x_hi = x + static_cast<size_t>(g + 8) * k;
  const uint4 zero4 = make_uint4(0, 0, 0, 0);

  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int base = slice; base < kc_count; base += kSlices * kUnroll) {
    // Issue every W load of this round before the first use (memory-level parallelism).
    uint4 w[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int uk = base + kSlices * u;
      w[u] = uk < kc_count ? __ldcs(wp + static_cast<size_t>(uk) * 32) : zero4;  // read once: stream
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int uk = base + kSlices * u;  // ascending within the slice, as in the GEMM
      if (uk >= kc_count) break;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = uk * kUnitK + k_in_unit(t, q, 0);  // this lane's 8 inputs; k % 8 == 0
        const bool in_k = kk < k;
        const uint4 a_lo = lo_ok && in_k ? __ldg(reinterpret_cast<const uint4*>(x_lo + kk)) : zero4;
        const uint4 a_hi = hi_ok && in_k ? __ldg(reinterpret_cast<const uint4*>(x_hi + kk)) : zero4;
        const uint32_t szw = __ldg(sz + static_cast<size_t>(group_of(uk, q, group)) * n + col);
        uint32_t b[4];
        detail::dequant_quarter(b, detail::word(w[u], q), szw);
        detail::mma_quarter(c, a_lo, a_hi, b);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) red[slice][lane][i] = c[i];
  __syncthreads();
  if (slice == 0) {
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      v[i] = detail::combine_slices(red[0][lane][i], red[1][lane][i], red[2][lane][i], red[3][lane][i]);
    const int oc = un * kUnitN + 2 * t;  // accumulator columns 2t, 2t+1 of the unit
    if (lo_ok) detail::store2(out + static_cast<size_t>(g) * n + oc, v[0], v[1]);
    if (hi_ok) detail::store2(out + static_cast<size_t>(g + 8) * n + oc, v[2], v[3]);
  }
}

template <class OutT>
cudaError_t gemv(OutT* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  if (m < 0 || m > kGemvMaxM || w.n <= 0 || w.n % kUnitN != 0 || w.k <= 0 ||
      !(w.group == 32 || w.group == 64 || w.group == 128) || w.k % w.group != 0 || !detail::aligned16(x) ||
      !detail::aligned16(w.packed) || !detail::store2_aligned(out)) {
    return cudaErrorInvalidValue;
  }
  if (m == 0) return cudaSuccess;
  const int units = w.n / kUnitN;
  int4_gemv_kernel<<<units, kThreads, 0, stream>>>(out, x, w.packed, w.sz, m, w.n, w.k, n_chunks(w.k), w.group);
  return detail::last_launch_error();
}

}  // namespace

cudaError_t int4_gemv(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return gemv(out, x, w, m, stream);
}
cudaError_t int4_gemv(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return gemv(out, x, w, m, stream);
}

cudaError_t int4_matmul(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return m <= kGemvMaxM ? int4_gemv(out, x, w, m, stream) : int4_gemm(out, x, w, m, stream);
}
cudaError_t int4_matmul(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return m <= kGemvMaxM ? int4_gemv(out, x, w, m, stream) : int4_gemm(out, x, w, m, stream);
}

}  // namespace chatradio::kernels::cuda
