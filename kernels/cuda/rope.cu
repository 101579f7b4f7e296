// RoPE (HF rotate_half) fused with the paged KV-cache write: one pass over the
// new tokens' Q/K/V instead of a rope pass plus a copy.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

constexpr int kMaxHalfDim = 128;  // head_dim <= 256
constexpr int kThreads = 128;

// a·c − b·s and b·c + a·s rounded like the CPU reference (no FMA contraction),
// so the float result matches it bit for bit before the fp16 store.
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& ra, float& rb) {
  ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// One block per token: the token's cos/sin table goes to shared memory once and
// serves every Q and K head.
__global__ void __launch_bounds__(kThreads)
    rope_kv_kernel(__half* q,                            // [n_tokens, q_stride], n_heads·hd used
                   __half* __restrict__ k_cache,         // [n_blocks·block_size, n_kv_heads, hd]
                   __half* __restrict__ v_cache,         // same shape as k_cache
                   const __half* k,                      // [n_tokens, kv_stride], n_kv_heads·hd used
                   const __half* v,                      // [n_tokens, kv_stride]
                   const int32_t* __restrict__ positions,  // [n_tokens]
                   const int32_t* __restrict__ slots,      // [n_tokens]
                   int64_t q_stride, int64_t kv_stride, int n_heads, int n_kv_heads, int head_dim,
                   float theta) {
  __shared__ float cs[kMaxHalfDim], sn[kMaxHalfDim];
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    // As the reference: inv_freq from a double pow rounded to float, the angle
    // rounded to float, then float cos/sin.
    const float inv_freq =
        static_cast<float>(1.0 / pow(static_cast<double>(theta), (2.0 * i) / head_dim));
    const float angle = __fmul_rn(pos, inv_freq);
    cs[i] = cosf(angle);
    sn[i] = sinf(angle);
  }
  __syncthreads();

  if (q != nullptr) {
    __half* qt = q + t * q_stride;
    for (int p = threadIdx.x; p < n_heads * half; p += blockDim.x) {
      const int h = p / half, i = p - h * half;
      __half* qh = qt + h * head_dim;
      float ra, rb;
      rotate(__half2float(qh[i]), __half2float(qh[i + half]), cs[i], sn[i], ra, rb);
      qh[i] = __float2half_rn(ra);
      qh[i + half] = __float2half_rn(rb);
    }
  }

  const int64_t slot = slots[t];
  if (slot < 0) return;
  const int row = n_kv_heads * head_dim;  // a slot's K (or V) row is contiguous
  const __half* kt = k + t * kv_stride;
  __half* kc = k_cache + slot * row;
  for (int p = threadIdx.x; p < n_kv_heads * half; p += blockDim.x) {
    const int h = p / half, i = p - h * half;
    const __half* kh = kt + h * head_dim;
    float ra, rb;
    rotate(__half2float(kh[i]), __half2float(kh[i + half]), cs[i], sn[i], ra, rb);
    kc[h * head_dim + i] = __float2half_rn(ra);
    kc[h * head_dim + i + half] = __float2half_rn(rb);
  }
  const __half* vt = v + t * kv_stride;
  __half* vc = v_cache + slot * row;
  for (int e = threadIdx.x; e < row; e += blockDim.x) vc[e] = vt[e];
}

}  // namespace

cudaError_t rope_kv_write(__half* q, __half* k_cache, __half* v_cache, const __half* k, const __half* v,
                          const int32_t* positions, const int32_t* slots, int n_tokens, int64_t q_stride,
                          int64_t kv_stride, const AttnShape& shape, const RopeParams& rope,
                          cudaStream_t stream) {
  const int hd = shape.head_dim;
  if (n_tokens < 0 || hd <= 0 || hd % 2 != 0 || hd / 2 > kMaxHalfDim || rope.head_dim != hd ||
      shape.n_heads <= 0 || shape.n_kv_heads <= 0 ||
      (q != nullptr && q_stride < static_cast<int64_t>(shape.n_heads) * hd) ||
      kv_stride < static_cast<int64_t>(shape.n_kv_heads) * hd) {
    return cudaErrorInvalidValue;
  }
  if (n_tokens == 0) return cudaSuccess;
  rope_kv_kernel<<<n_tokens, kThreads, 0, stream>>>(q, k_cache, v_cache, k, v, positions, slots, q_stride,
                                                    kv_stride, shape.n_heads, shape.n_kv_heads, hd, rope.theta);
  return detail::last_launch_error();
}

}  // namespace chatradio::kernels::cuda
