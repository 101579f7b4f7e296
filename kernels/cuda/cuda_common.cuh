// Device helpers shared by the kernels in kernels/cuda/ (internal: not part of
// the op interface). Everything here targets sm_80+ (cp.async, ldmatrix and
// mma.sync m16n8k16 exist on Ampere, Ada and Hopper alike).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chatradio::kernels::cuda::detail {

constexpr int kWarp = 32;

__host__ __device__ constexpr int div_up(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int64_t div_up64(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The error of the launch just made (configuration errors surface here; faults
// inside the kernel surface at the next synchronising call).
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

// ---- bit casts between packed halves and 32-bit registers --------------------

__device__ __forceinline__ uint32_t h2_as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 u32_as_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  return h2_as_u32(__floats2half2_rn(lo, hi));
}
// Word i (0..3) of a 128-bit register quad; i must be a compile-time constant
// after unrolling so the quad stays in registers.
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Two adjacent outputs (an mma accumulator pair, even column) stored as fp16 or
// fp32: the output type is the only thing the int4 kernels' epilogue varies.
__device__ __forceinline__ void store2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
// The alignment store2 needs of an output base pointer (4 bytes for fp16, 8 for fp32).
template <class OutT>
inline bool store2_aligned(const OutT* p) {
  return (reinterpret_cast<uintptr_t>(p) & (2 * sizeof(OutT) - 1)) == 0;
}

// ---- warp reductions (fixed butterfly order: deterministic) -----------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- asynchronous copies (sm_80+) --------------------------------------------

// 16-byte global→shared copy that bypasses L1; src_bytes == 0 zero-fills the
// destination without reading src (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- tensor-core fragments ----------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// c[16x8] += a[16x16] · b[16x8], fp16 inputs, fp32 accumulators. Fragment
// ownership (lane = 4*g + t): a0..a3 hold (row g | g+8, k 2t..2t+1 | 8+2t..),
// b0 = (k 2t..2t+1, col g), b1 = (k 8+2t.., col g), c = (row g | g+8, col 2t..2t+1).
// Each c element depends only on its own row of a and column of b, which is
// what makes every kernel built on it batch-invariant row by row.
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---- per-device set-up (prepare_device in cuda_ops.h) ---------------------------

// Each opts its kernels that need more than 48 KB of dynamic shared memory in,
// on the current device (int4_gemm.cu, attention_prefill.cu).
cudaError_t int4_gemm_set_attributes();
cudaError_t attention_prefill_set_attributes();

}  // namespace chatradio::kernels::cuda::detail
