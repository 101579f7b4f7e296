// Causal prefill attention on tensor cores, FlashAttention-2 style, over the
// paged KV cache (head_dim 64 and 128).
//
// One block = 64 query rows of one sequence × one query head; 4 warps × 16 rows.
// Q stays in registers as mma A fragments; K and V tiles of 64 tokens are
// gathered from their pages with cp.async into a double-buffered, XOR-swizzled
// shared-memory ring (tile j+1 loads while tile j computes). S = Q·Kᵀ and O += P·V
// run on mma.sync m16n8k16 (fp16 in, fp32 accumulate); the S accumulators are
// reused in registers as the P operand (C-fragment layout = A-fragment layout);
// softmax is online, in the exp2 domain, per row.
//
// Row invariance: a row's result depends only on its own position and cache.
// KV tiles always start at token 0 in steps of 64 whatever the query tile is,
// and a tile past a row's position is fully masked for it: the row's max is
// unchanged (rescale factor exp2(0) = 1 exactly), its probabilities are exact
// zeros and V there is finite (real tokens, or zero-filled past the range), so
// such a tile leaves the row's state bitwise unchanged. Prefilling a sequence in
// one chunk or several gives the same bits for every row handled here.
#include <cmath>

#include "kernels/cuda/attention_layout.h"
#include "kernels/cuda/attention_prefill.cuh"
#include "kernels/cuda/cuda_common.cuh"

namespace chatradio::kernels::cuda::detail {
namespace {

using prefill::kBM;
using prefill::kBN;
constexpr int kThreads = 128;

struct PrefillParams {
  __half* out;            // [n_q, n_heads·HD]
  const __half* q;        // [n_q, q_stride]
  int64_t q_stride;
  const __half* k_cache;  // [n_blocks·block_size, n_kv_heads, HD]
  const __half* v_cache;
  PagedBatch batch;       // device arrays
  int n_heads, n_kv_heads, block_size;
  float scale_log2;       // log2(e) / sqrt(HD)
};

template <int HD>
constexpr size_t smem_bytes() {
  return static_cast<size_t>(kBM + 4 * kBN) * (HD / 8) * sizeof(uint4);  // Q + 2×K + 2×V
}

using prefill::sw;

template <int HD>
__global__ void __launch_bounds__(kThreads) attn_prefill_kernel(PrefillParams p) {
  static_assert(HD == 64 || HD == 128, "tensor-core prefill needs HD/8 >= 8 chunks for the swizzle");
  constexpr int CH = HD / 8;
  extern __shared__ uint4 smem[];
  uint4* Qs = smem;               // [kBM][CH]
  uint4* Ks = Qs + kBM * CH;      // [2][kBN][CH]
  uint4* Vs = Ks + 2 * kBN * CH;  // [2][kBN][CH]

  const int seq = blockIdx.z, h = blockIdx.y, tile = blockIdx.x;
  const int q0 = p.batch.q_start[seq], n_new = p.batch.q_start[seq + 1] - q0;
  const int r0 = tile * kBM;  // first new-token index of this tile
  if (n_new <= 1 || r0 >= n_new) return;
  const int ctx = p.batch.ctx_len[seq];
  const int32_t* table = p.batch.block_tables + static_cast<int64_t>(seq) * p.batch.max_blocks;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int rows = min(kBM, n_new - r0);
  const int kv_len = ctx - n_new + r0 + rows;  // last row's position + 1
  const int n_tiles = div_up(kv_len, kBN);
  const int64_t kv_row = static_cast<int64_t>(p.n_kv_heads) * HD;
  const int tid = threadIdx.x;

  for (int idx = tid; idx < kBM * CH; idx += kThreads) {
    const int r = idx / CH, c = idx % CH;
    const bool ok = r < rows;
    const __half* src = ok ? p.q + static_cast<int64_t>(q0 + r0 + r) * p.q_stride + h * HD + c * 8 : p.q;
    cp_async16(Qs + sw<HD>(r, c), src, ok ? 16 : 0);
  }
  // Gathers KV tile j into buffer b; tokens at or past kv_len are zero-filled.
  auto load_kv = [&](int j, int b) {
    uint4* K = Ks + b * kBN * CH;
    uint4* V = Vs + b * kBN * CH;
    for (int idx = tid; idx < kBN * CH; idx += kThreads) {
      const int r = idx / CH, c = idx % CH, t = j * kBN + r;
      const bool ok = t < kv_len;
      int64_t off = 0;
      if (ok) {
        const int64_t slot = static_cast<int64_t>(table[t / p.block_size]) * p.block_size + t % p.block_size;
        off = slot * kv_row + kvh * HD + c * 8;
      }
      cp_async16(K + sw<HD>(r, c), p.k_cache + off, ok ? 16 : 0);
      cp_async16(V + sw<HD>(r, c), p.v_cache + off, ok ? 16 : 0);
    }
  };
  load_kv(0, 0);
  cp_async_commit();

  const int warp = tid / kWarp, lane = tid % kWarp, g = lane / 4, t = lane % 4;
  const int pos_lo = ctx - n_new + r0 + warp * 16 + g, pos_hi = pos_lo + 8;
  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;  // l: this thread's columns

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // tile j visible to all; everyone is done with tile j-1's buffer
    if (j + 1 < n_tiles) load_kv(j + 1, (j + 1) & 1);
    cp_async_commit();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk)
        ldmatrix_x4(qf[kk], Qs + sw<HD>(prefill::q_row(warp, lane), prefill::q_chunk(lane, kk)));
    }
    const uint4* K = Ks + (j & 1) * kBN * CH;
    const uint4* V = Vs + (j & 1) * kBN * CH;

    // S = Q·Kᵀ for this warp's 16 rows × 64 tokens.
    float s[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, K + sw<HD>(prefill::k_row(lane, np), prefill::k_chunk(lane, kk)));
        mma_16816(s[2 * np], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[0], b[1]);
        mma_16816(s[2 * np + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[2], b[3]);
      }
    }
    // Causal mask and scale; row maxima over the quad that shares a row.
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int kv = j * kBN + nt * 8 + 2 * t + e;
        s[nt][e] = kv <= pos_lo ? s[nt][e] * p.scale_log2 : -INFINITY;
        s[nt][2 + e] = kv <= pos_hi ? s[nt][2 + e] * p.scale_log2 : -INFINITY;
        mx_lo = fmaxf(mx_lo, s[nt][e]);
        mx_hi = fmaxf(mx_hi, s[nt][2 + e]);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
    }
    // Token 0 is in every row's range, so m is finite from tile 0 on.
    const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
    const float f_lo = exp2f(m_lo - mn_lo), f_hi = exp2f(m_hi - mn_hi);
    m_lo = mn_lo;
    m_hi = mn_hi;
    // P in fp16 as the A operand; the row sums use the same rounded values so the
    // weights the mma applies are exactly the ones normalised by l.
    uint32_t pa[kBN / 16][4];
    float rs_lo = 0.0f, rs_hi = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      const __half2 plo = __floats2half2_rn(exp2f(s[nt][0] - m_lo), exp2f(s[nt][1] - m_lo));
      const __half2 phi = __floats2half2_rn(exp2f(s[nt][2] - m_hi), exp2f(s[nt][3] - m_hi));
      const float2 flo = __half22float2(plo), fhi = __half22float2(phi);
      rs_lo += flo.x + flo.y;
      rs_hi += fhi.x + fhi.y;
      pa[nt / 2][prefill::pa_reg(nt, 0)] = h2_as_u32(plo);
      pa[nt / 2][prefill::pa_reg(nt, 1)] = h2_as_u32(phi);
    }
    l_lo = l_lo * f_lo + rs_lo;
    l_hi = l_hi * f_hi + rs_hi;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      o[dt][0] *= f_lo;
      o[dt][1] *= f_lo;
      o[dt][2] *= f_hi;
      o[dt][3] *= f_hi;
    }
    // O += P·V (V read transposed from its row-major tile).
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, V + sw<HD>(prefill::v_row(lane, kk), prefill::v_chunk(lane, dp)));
        mma_16816(o[2 * dp], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], b[0], b[1]);
        mma_16816(o[2 * dp + 1], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
  }
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  const int row_lo = r0 + warp * 16 + g, row_hi = row_lo + 8;
  const int64_t out_row = static_cast<int64_t>(p.n_heads) * HD;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = h * HD + dt * 8 + 2 * t;
    if (row_lo < n_new)
      *reinterpret_cast<__half2*>(p.out + (q0 + row_lo) * out_row + col) =
          __floats2half2_rn(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
    if (row_hi < n_new)
      *reinterpret_cast<__half2*>(p.out + (q0 + row_hi) * out_row + col) =
          __floats2half2_rn(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
  }
}

template <int HD>
cudaError_t launch(const PrefillParams& p, int max_q_len, int n_seqs, cudaStream_t stream) {
  constexpr size_t bytes = smem_bytes<HD>();  // > 48 KB for HD 128: set by prepare_device()
  const dim3 grid(div_up(max_q_len, kBM), p.n_heads, n_seqs);
  attn_prefill_kernel<HD><<<grid, kThreads, bytes, stream>>>(p);
  return last_launch_error();
}

}  // namespace

cudaError_t attention_prefill_set_attributes() {
  for (cudaError_t e : {cudaFuncSetAttribute(attn_prefill_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem_bytes<64>())),
                        cudaFuncSetAttribute(attn_prefill_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem_bytes<128>()))}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t attention_prefill_mma(__half* out, const __half* q, int64_t q_stride, const __half* k_cache,
                                  const __half* v_cache, const PagedBatch& batch, const AttnShape& shape,
                                  int max_q_len, cudaStream_t stream) {
  if (batch.n_seqs <= 0 || batch.n_seqs > 65535 || max_q_len <= 0) return cudaErrorInvalidValue;
  PrefillParams p{out, q, q_stride, k_cache, v_cache, batch, shape.n_heads, shape.n_kv_heads, shape.block_size,
                  static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(shape.head_dim)))};
  switch (shape.head_dim) {
    case 64: return launch<64>(p, max_q_len, batch.n_seqs, stream);
    case 128: return launch<128>(p, max_q_len, batch.n_seqs, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace chatradio::kernels::cuda::detail
