// The per-quarter arithmetic shared by the int4 GEMV and GEMM. Both kernels
// call exactly these functions in exactly this order for every output element
// (chunk uk → slice uk % 4, quarters 0..3, k-steps 0..1 within a quarter), which
// is what makes int4_matmul batch-invariant across its two kernels. Internal.
#pragma once

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/int4_layout.h"

namespace chatradio::kernels::cuda::detail {

// Dequantises nibble pair j (compile-time) of a packed word: OR-ing the
// exponent of 1024 into each nibble gives the halves 1024 + q; subtracting
// 1024 + zero is exact; one rounding in the multiply by the scale.
template <int J>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, __half2 zz, __half2 ss) {
  const uint32_t v = ((w >> (4 * J)) & 0x000F000Fu) | 0x64006400u;
  return h2_as_u32(__hmul2(__hsub2(u32_as_h2(v), zz), ss));
}

// b[j] = the B fragments of one quarter (k-steps 2 of them: b[0], b[1] for the
// first, b[2], b[3] for the second) from the lane's packed word and its group's
// sz word {scale, 1024 + zero}.
__device__ __forceinline__ void dequant_quarter(uint32_t (&b)[4], uint32_t w, uint32_t szw) {
  const __half2 s2 = u32_as_h2(szw);
  const __half2 ss = __low2half2(s2), zz = __high2half2(s2);
  b[0] = dequant_pair<0>(w, zz, ss);
  b[1] = dequant_pair<1>(w, zz, ss);
  b[2] = dequant_pair<2>(w, zz, ss);
  b[3] = dequant_pair<3>(w, zz, ss);
}

// c += A·B over one quarter: a_lo / a_hi are the lane's 16-byte activation loads
// (8 consecutive inputs) of rows g and g+8. k-step h uses words 2h (k-slots
// 2t..2t+1) and 2h+1 (k-slots 8+2t..), matching dequant_pair<2h> and <2h+1>.
__device__ __forceinline__ void mma_quarter(float (&c)[4], const uint4& a_lo, const uint4& a_hi,
                                            const uint32_t (&b)[4]) {
  mma_16816(c, a_lo.x, a_hi.x, a_lo.y, a_hi.y, b[0], b[1]);
  mma_16816(c, a_lo.z, a_hi.z, a_lo.w, a_hi.w, b[2], b[3]);
}

// The final combination of the slice accumulators, ((s0 + s1) + (s2 + s3)).
__device__ __forceinline__ float combine_slices(float s0, float s1, float s2, float s3) {
  return (s0 + s1) + (s2 + s3);
}
static_assert(int4_layout::kSlices == 4, "combine_slices and both int4 kernels assume 4 slices");

}  // namespace chatradio::kernels::cuda::detail
