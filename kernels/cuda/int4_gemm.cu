// int4 dequant-GEMM for prefill: out[m, n] = x[m, k] · Wᵀ for any m (the
// dispatcher sends m > 16 here).
//
// Block tile 64 (m) × 64 (n), 4 warps in a 2×2 grid, warp tile 32×32 (2 m16 ×
// 4 n8 mma tiles). K advances one 128-input chunk per step through a 4-stage
// cp.async ring (activations, packed weights and the chunk's scale/zero words
// all travel global→shared asynchronously, three chunks ahead of the math).
// Weights stay int4 in shared memory and are dequantised in registers right
// before the mma (lop3 + hsub2 + hmul2 per half2), so the smem footprint and
// the global traffic of W are a quarter of an fp16 GEMM's.
//
// Batch invariance: chunk uk accumulates into accumulator set uk % 4 (the
// "slice"), with the same per-quarter functions as the GEMV (int4_mma.cuh), and
// the four sets are added ((s0+s1)+(s2+s3)) at the end, exactly as the GEMV's
// four warps are. Tile shapes never enter the arithmetic of an element, so they
// are free to change per m, n or architecture. Since there are 4 stages and 4
// slices, the stage of chunk uk is also uk % 4 and both indices are
// compile-time constants in the unrolled loop.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/int4_layout.h"
#include "kernels/cuda/int4_mma.cuh"

namespace chatradio::kernels::cuda {
namespace {

using namespace int4_layout;
constexpr int kBM = 64, kBN = 64;
constexpr int kThreads = 128;
constexpr int kStages = 4;
static_assert(kStages == kSlices, "stage index doubles as slice index");
constexpr int kUnitsN = kBN / kUnitN;                // 8 unit columns per tile
constexpr int kAChunks = kBM * (kUnitK / 8);         // 16-byte chunks of the A tile (1024)
constexpr int kBChunks = kUnitsN * 32;               // 16-byte chunks of the W tile (256)
constexpr int kSWords = (kUnitK / 32) * kBN;         // scale/zero words, up to 4 groups a chunk (256)
constexpr int kStageU4 = kAChunks + kBChunks + kSWords / 4;
constexpr size_t kSmemBytes = static_cast<size_t>(kStages) * kStageU4 * sizeof(uint4);  // 86016

// Shared-memory A tile: row r, 16-byte chunk c (inputs 8c..8c+7) at
// r*16 + (c ^ 4·(r & 1)). A warp's 128-bit reads touch rows g (both parities)
// and chunks 4q + t; the swizzle puts odd rows in the other half of each 128-byte
// line, so every 8-lane phase hits 32 distinct banks.
__device__ __forceinline__ int a_index(int row, int c) { return row * (kUnitK / 8) + (c ^ ((row & 1) << 2)); }

struct Tile {
  const __half* x;
  const uint4* w;
  const uint32_t* sz;
  int m, n, k, kc_count, group, m0, un0;
};

// Issues the cp.async copies of chunk uk into stage s (rows past m, inputs past
// k and units past n are zero-filled, never read).
__device__ __forceinline__ void load_stage(uint4* smem, int s, int uk, const Tile& tl) {
  const int tid = threadIdx.x;
  uint4* A = smem + s * kStageU4;
  uint4* B = A + kAChunks;
  uint32_t* S = reinterpret_cast<uint32_t*>(B + kBChunks);
#pragma unroll
  for (int i = 0; i < kAChunks / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    const int row = idx / (kUnitK / 8), c = idx % (kUnitK / 8);
    const int gm = tl.m0 + row, gk = uk * kUnitK + 8 * c;
    const bool ok = gm < tl.m && gk < tl.k;  // k % 8 == 0: a chunk is all in or all out
    const __half* src = ok ? tl.x + static_cast<size_t>(gm) * tl.k + gk : tl.x;
    detail::cp_async16(A + a_index(row, c), src, ok ? 16 : 0);
  }
#pragma unroll
  for (int i = 0; i < kBChunks / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    const int un = tl.un0 + idx / 32;
    const bool ok = un < tl.n / kUnitN;
    const uint4* src = ok ? tl.w + (static_cast<size_t>(un) * tl.kc_count + uk) * 32 + idx % 32 : tl.w;
    detail::cp_async16(B + idx, src, ok ? 16 : 0);
  }
  const int gpc = kUnitK / tl.group;  // groups per chunk: 1, 2 or 4
  if (tid < gpc * (kBN / 4)) {
    const int gi = tid / (kBN / 4), c = tid % (kBN / 4);
    const int col = tl.un0 * kUnitN + 4 * c;
    const bool ok = col < tl.n;  // n % 8 == 0: 4 columns are all in or all out
    const uint32_t* src = ok ? tl.sz + static_cast<size_t>(uk * gpc + gi) * tl.n + col : tl.sz;
    detail::cp_async16(S + gi * kBN + 4 * c, src, ok ? 16 : 0);
  }
}

// One chunk's math for this warp's 32×32 tile into one slice's accumulators.
__device__ __forceinline__ void compute_stage(float (&acc)[2][4][4], const uint4* smem, int s, int group) {
  const int warp = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  const int g = lane / 4, t = lane % 4, wm = warp / 2, wn = warp % 2;
  const uint4* A = smem + s * kStageU4;
  const uint4* B = A + kAChunks;
  const uint32_t* S = reinterpret_cast<const uint32_t*>(B + kBChunks);
  uint4 bw[4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) bw[nt] = B[(wn * 4 + nt) * 32 + lane];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int gl = (32 * q) / group;  // the quarter's group inside the chunk
    uint32_t b[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      detail::dequant_quarter(b[nt], detail::word(bw[nt], q), S[gl * kBN + (wn * 4 + nt) * kUnitN + g]);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int row = wm * 32 + mt * 16 + g;
      const uint4 a_lo = A[a_index(row, 4 * q + t)];
      const uint4 a_hi = A[a_index(row + 8, 4 * q + t)];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) detail::mma_quarter(acc[mt][nt], a_lo, a_hi, b[nt]);
    }
  }
}

template <class OutT>  // __half, or float for fp32 logits
__global__ void __launch_bounds__(kThreads)
    int4_gemm_kernel(OutT* __restrict__ out,               // [m, n]
                     const __half* __restrict__ x,         // [m, k]
                     const uint32_t* __restrict__ packed,  // our layout
                     const uint32_t* __restrict__ sz,      // [k_pad/group, n]
                     int m, int n, int k, int kc_count, int group) {
  extern __shared__ uint4 smem[];
  const Tile tl{x, reinterpret_cast<const uint4*>(packed), sz, m, n, k, kc_count, group,
                static_cast<int>(blockIdx.y) * kBM, static_cast<int>(blockIdx.x) * kUnitsN};

  float acc[kSlices][2][4][4];
#pragma unroll
  for (int s = 0; s < kSlices; ++s)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][mt][nt][i] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < kc_count) load_stage(smem, s, s, tl);
    detail::cp_async_commit();
  }
  for (int base = 0; base < kc_count; base += kSlices) {
#pragma unroll
    for (int s = 0; s < kSlices; ++s) {
      const int uk = base + s;
      if (uk >= kc_count) break;
      // Groups committed so far: chunks 0 .. uk+2; waiting until at most 2 are
      // pending means chunk uk has landed (for this thread; the barrier makes it
      // every thread's, and also frees stage (uk+3)%4, last read for chunk uk-1).
      detail::cp_async_wait<kStages - 2>();
      __syncthreads();
      if (uk + kStages - 1 < kc_count) load_stage(smem, (s + kStages - 1) % kStages, uk + kStages - 1, tl);
      detail::cp_async_commit();  // possibly empty: keeps the group count uniform
      compute_stage(acc[s], smem, s, group);
    }
  }

  const int warp = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  const int g = lane / 4, t = lane % 4, wm = warp / 2, wn = warp % 2;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int row = tl.m0 + wm * 32 + mt * 16 + g;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int col = (tl.un0 + wn * 4 + nt) * kUnitN + 2 * t;
      if (col >= n) continue;
      float v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        v[i] = detail::combine_slices(acc[0][mt][nt][i], acc[1][mt][nt][i], acc[2][mt][nt][i], acc[3][mt][nt][i]);
      if (row < m) detail::store2(out + static_cast<size_t>(row) * n + col, v[0], v[1]);
      if (row + 8 < m) detail::store2(out + static_cast<size_t>(row + 8) * n + col, v[2], v[3]);
    }
  }
}

template <class OutT>
cudaError_t gemm(OutT* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  if (m < 0 || w.n <= 0 || w.n % kUnitN != 0 || w.k <= 0 || !(w.group == 32 || w.group == 64 || w.group == 128) ||
      w.k % w.group != 0 || !detail::aligned16(x) || !detail::aligned16(w.packed) || !detail::aligned16(w.sz) ||
      !detail::store2_aligned(out) || detail::div_up(m, kBM) > 65535) {
    return cudaErrorInvalidValue;
  }
  if (m == 0) return cudaSuccess;
  // kSmemBytes > 48 KB: needs prepare_device() on this device first (else the
  // launch fails with cudaErrorInvalidValue).
  const dim3 grid(detail::div_up(w.n / kUnitN, kUnitsN), detail::div_up(m, kBM));
  int4_gemm_kernel<<<grid, kThreads, kSmemBytes, stream>>>(out, x, w.packed, w.sz, m, w.n, w.k, n_chunks(w.k),
                                                            w.group);
  return detail::last_launch_error();
}

}  // namespace

cudaError_t int4_gemm(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return gemm(out, x, w, m, stream);
}
cudaError_t int4_gemm(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream) {
  return gemm(out, x, w, m, stream);
}

namespace detail {
cudaError_t int4_gemm_set_attributes() {
  for (cudaError_t e : {cudaFuncSetAttribute(int4_gemm_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kSmemBytes)),
                        cudaFuncSetAttribute(int4_gemm_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kSmemBytes))}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}
}  // namespace detail

}  // namespace chatradio::kernels::cuda
