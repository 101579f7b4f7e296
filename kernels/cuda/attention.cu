// Grouped-query attention over the paged KV cache: the launcher, split-KV flash
// decoding (SIMT) with its combine pass, and the SIMT path for prefill rows of
// head dims without a tensor-core kernel. The tensor-core prefill is in
// attention_prefill.cu.
//
// The SIMT kernel: one block = one query row × up to 4 query heads sharing one
// KV head (GQA: K/V are read once for the group) × one chunk of 256 KV tokens.
// Each lane owns 8 consecutive dims (one 16-byte load per K or V row), so a
// token occupies lpt = pow2ceil(head_dim / 8) lanes and a warp covers 32 / lpt
// tokens per pass: the same code serves head_dim 8 (stories260K) to 256. A chunk
// is exact softmax in three phases (scores → shared, max/exp/sum per head, P·V),
// all with fixed reduction trees; chunks then meet through (max, sum, acc)
// rescaling: in the combine kernel for decode splits, in-block for prefill rows.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention_prefill.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / detail::kWarp;
constexpr int kHeadsPerBlock = 4;   // query heads of one KV group per block (one per warp in phase 2)
constexpr int kChunk = kAttnSplitTokens;
constexpr int kMaxHeadDim = 256;
constexpr int kOutSlots = kHeadsPerBlock * kMaxHeadDim / kThreads;  // per-thread output slots (8)
static_assert(kHeadsPerBlock == kWarps, "phase 2 gives each warp one head");

struct SimtParams {
  __half* out;           // [n_q, n_heads·hd]
  const __half* q;       // [n_q, q_stride]
  int64_t q_stride;
  const __half* k_cache;  // [n_blocks·block_size, n_kv_heads, hd]
  const __half* v_cache;
  PagedBatch batch;       // device arrays
  int n_heads, n_kv_heads, head_dim, block_size;
  float scale_log2;       // log2(e) / sqrt(head_dim): scores live in the exp2 domain
  float2* part_ml;        // [n_seqs, n_heads, max_splits] (max, sum) of each decode split
  float* part_acc;        // [n_seqs, n_heads, max_splits, hd] unnormalised P·V of each split
  int max_splits;
};

// Largest s with q_start[s] <= row (empty sequences are skipped naturally).
__device__ int find_seq(const int32_t* q_start, int n_seqs, int row) {
  int lo = 0, hi = n_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (q_start[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ void unpack8(float (&f)[8], const uint4& u) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// kDecode: grid (n_seqs, max_splits, n_kv_heads·hchunks); rows of sequences with
// exactly one new token; writes split partials. Otherwise: grid (n_q, 1, same z);
// rows of sequences with more than one new token, whole causal range, final output.
template <bool kDecode>
__global__ void __launch_bounds__(kThreads) attn_simt_kernel(SimtParams p) {
  __shared__ float s_p[kHeadsPerBlock][kChunk];               // scores, then probabilities
  __shared__ float s_acc[kWarps][kHeadsPerBlock][kMaxHeadDim];  // per-warp P·V partials
  __shared__ float s_m[kHeadsPerBlock], s_l[kHeadsPerBlock];  // this chunk's max and sum
  __shared__ float s_mrun[kHeadsPerBlock], s_lrun[kHeadsPerBlock], s_fold[kHeadsPerBlock],
      s_fnew[kHeadsPerBlock];                                 // prefill rows: running state

  const int hd = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int hchunks = detail::div_up(group, kHeadsPerBlock);
  const int kvh = blockIdx.z / hchunks, hc = blockIdx.z % hchunks;
  const int h0 = kvh * group + hc * kHeadsPerBlock;  // first query head of this block
  const int n_g = min(kHeadsPerBlock, group - hc * kHeadsPerBlock);

  int seq, row, kv_begin, kv_end, split = 0;
  if constexpr (kDecode) {
    seq = blockIdx.x;
    const int q0 = p.batch.q_start[seq];
    if (p.batch.q_start[seq + 1] - q0 != 1) return;
    const int ctx = p.batch.ctx_len[seq];
    split = blockIdx.y;
    row = q0;
    kv_begin = split * kChunk;
    if (kv_begin >= ctx) return;
    kv_end = min(ctx, kv_begin + kChunk);
  } else {
    row = blockIdx.x;
    // n_q may be an upper bound (AttnDims): a surplus row has no sequence, and
    // find_seq would map it to the last one (table, q and out past their ends).
    if (row >= p.batch.q_start[p.batch.n_seqs]) return;
    seq = find_seq(p.batch.q_start, p.batch.n_seqs, row);
    const int q0 = p.batch.q_start[seq], n_new = p.batch.q_start[seq + 1] - q0;
    if (n_new <= 1) return;
    kv_begin = 0;
    kv_end = p.batch.ctx_len[seq] - n_new + (row - q0) + 1;  // causal: [0, pos]
  }
  const int32_t* table = p.batch.block_tables + static_cast<int64_t>(seq) * p.batch.max_blocks;

  const int warp = threadIdx.x / detail::kWarp, lane = threadIdx.x % detail::kWarp;
  int lpt = 1;  // lanes per token: pow2 >= hd / 8
  while (lpt * 8 < hd) lpt <<= 1;
  const int tpw = detail::kWarp / lpt;     // tokens per warp per pass
  const int tpp = kWarps * tpw;            // tokens per block per pass (divides kChunk)
  const int dc = lane % lpt;               // this lane's 8-dim slice
  const bool d_ok = dc * 8 < hd;
  const int tok = warp * tpw + lane / lpt; // this lane group's token within a pass
  const int64_t kv_row = static_cast<int64_t>(p.n_kv_heads) * hd;

  float qv[kHeadsPerBlock][8];
#pragma unroll
  for (int g = 0; g < kHeadsPerBlock; ++g) {
    uint4 u = make_uint4(0, 0, 0, 0);
    if (g < n_g && d_ok) u = *reinterpret_cast<const uint4*>(p.q + row * p.q_stride + (h0 + g) * hd + dc * 8);
    unpack8(qv[g], u);
  }
  float o[kOutSlots];
#pragma unroll
  for (int r = 0; r < kOutSlots; ++r) o[r] = 0.0f;
  if (!kDecode && threadIdx.x < kHeadsPerBlock) {
    s_mrun[threadIdx.x] = -INFINITY;
    s_lrun[threadIdx.x] = 0.0f;
  }

  for (int c0 = kv_begin; c0 < kv_end; c0 += kChunk) {
    const int c1 = min(kv_end, c0 + kChunk);
    // Phase 1: scores (8 products per lane in order, then a butterfly over the token's lanes).
#pragma unroll 4
    for (int i = 0; i < kChunk; i += tpp) {
      const int tl = i + tok, t = c0 + tl;
      const bool valid = t < c1;
      float dot[kHeadsPerBlock] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (valid && d_ok) {
        const int64_t slot = static_cast<int64_t>(table[t / p.block_size]) * p.block_size + t % p.block_size;
        float kf[8];
        unpack8(kf, __ldg(reinterpret_cast<const uint4*>(p.k_cache + slot * kv_row + kvh * hd + dc * 8)));
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g)
#pragma unroll
          for (int j = 0; j < 8; ++j) dot[g] += qv[g][j] * kf[j];
      }
#pragma unroll
      for (int g = 0; g < kHeadsPerBlock; ++g)
        for (int off = lpt / 2; off > 0; off >>= 1) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], off);
      if (dc == 0) {
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g)
          if (g < n_g) s_p[g][tl] = valid ? dot[g] * p.scale_log2 : -INFINITY;
      }
    }
    __syncthreads();
    // Phase 2: warp g normalises head g over the chunk (>= 1 valid token, so mx is finite).
    if (warp < n_g) {
      float mx = -INFINITY;
      for (int j = lane; j < kChunk; j += detail::kWarp) mx = fmaxf(mx, s_p[warp][j]);
      mx = detail::warp_max(mx);
      float sum = 0.0f;
      for (int j = lane; j < kChunk; j += detail::kWarp) {
        const float e = exp2f(s_p[warp][j] - mx);
        s_p[warp][j] = e;
        sum += e;
      }
      sum = detail::warp_sum(sum);
      if (lane == 0) {
        s_m[warp] = mx;
        s_l[warp] = sum;
      }
    }
    __syncthreads();
    // Phase 3: P·V, each lane group over its tokens, then lane groups, then warps.
    float acc[kHeadsPerBlock][8];
#pragma unroll
    for (int g = 0; g < kHeadsPerBlock; ++g)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] = 0.0f;
#pragma unroll 4
    for (int i = 0; i < kChunk; i += tpp) {
      const int tl = i + tok, t = c0 + tl;
      if (t < c1 && d_ok) {  // V of tokens past the range is never read (0·NaN would poison)
        const int64_t slot = static_cast<int64_t>(table[t / p.block_size]) * p.block_size + t % p.block_size;
        float vf[8];
        unpack8(vf, __ldg(reinterpret_cast<const uint4*>(p.v_cache + slot * kv_row + kvh * hd + dc * 8)));
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g) {
          if (g < n_g) {
            const float pr = s_p[g][tl];
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[g][j] += pr * vf[j];
          }
        }
      }
    }
    for (int off = lpt; off < detail::kWarp; off <<= 1)
#pragma unroll
      for (int g = 0; g < kHeadsPerBlock; ++g)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], off);
    if (lane < lpt && d_ok) {
#pragma unroll
      for (int g = 0; g < kHeadsPerBlock; ++g)
        if (g < n_g)
#pragma unroll
          for (int j = 0; j < 8; ++j) s_acc[warp][g][dc * 8 + j] = acc[g][j];
    }
    if (!kDecode && threadIdx.x < n_g) {
      // Fold this chunk into the running state (first chunk: s_mrun = -inf → f_old = 0).
      const int g = threadIdx.x;
      const float m_new = fmaxf(s_mrun[g], s_m[g]);
      const float f_old = exp2f(s_mrun[g] - m_new), f_new = exp2f(s_m[g] - m_new);
      s_lrun[g] = s_lrun[g] * f_old + s_l[g] * f_new;
      s_mrun[g] = m_new;
      s_fold[g] = f_old;
      s_fnew[g] = f_new;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kOutSlots; ++r) {
      const int idx = threadIdx.x + r * kThreads;
      if (idx >= n_g * hd) break;
      const int g = idx / hd, d = idx - g * hd;
      const float a = (s_acc[0][g][d] + s_acc[1][g][d]) + (s_acc[2][g][d] + s_acc[3][g][d]);
      if constexpr (kDecode) {
        const int64_t base = (static_cast<int64_t>(seq) * p.n_heads + h0 + g) * p.max_splits + split;
        p.part_acc[base * hd + d] = a;
        if (d == 0) p.part_ml[base] = make_float2(s_m[g], s_l[g]);
      } else {
        o[r] = o[r] * s_fold[g] + a * s_fnew[g];
      }
    }
    __syncthreads();  // s_p, s_acc and the fold factors are reused by the next chunk
  }

  if constexpr (!kDecode) {
    __half* orow = p.out + static_cast<int64_t>(row) * p.n_heads * hd;
#pragma unroll
    for (int r = 0; r < kOutSlots; ++r) {
      const int idx = threadIdx.x + r * kThreads;
      if (idx >= n_g * hd) break;
      const int g = idx / hd, d = idx - g * hd;
      orow[(h0 + g) * hd + d] = __float2half_rn(o[r] / s_lrun[g]);
    }
  }
}

// Adds a decode row's splits in split order: grid (n_seqs, n_heads).
__global__ void __launch_bounds__(kThreads) attn_combine_kernel(SimtParams p) {
  const int seq = blockIdx.x, h = blockIdx.y, hd = p.head_dim;
  const int q0 = p.batch.q_start[seq];
  if (p.batch.q_start[seq + 1] - q0 != 1) return;
  const int n_splits = min(p.max_splits, detail::div_up(p.batch.ctx_len[seq], kChunk));
  const int64_t base = (static_cast<int64_t>(seq) * p.n_heads + h) * p.max_splits;
  const float2* ml = p.part_ml + base;
  float mx = -INFINITY;
  for (int i = 0; i < n_splits; ++i) mx = fmaxf(mx, ml[i].x);
  float sum = 0.0f;
  for (int i = 0; i < n_splits; ++i) sum += ml[i].y * exp2f(ml[i].x - mx);
  const float inv = 1.0f / sum;
  __half* orow = p.out + static_cast<int64_t>(q0) * p.n_heads * hd + h * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < n_splits; ++i) acc += p.part_acc[(base + i) * hd + d] * exp2f(ml[i].x - mx);
    orow[d] = __float2half_rn(acc * inv);
  }
}

int splits_for(int max_ctx) { return std::max(1, detail::div_up(max_ctx, kChunk)); }

}  // namespace

size_t attention_workspace_bytes(const AttnShape& shape, int max_seqs, int max_ctx) {
  const size_t rows = static_cast<size_t>(std::max(max_seqs, 0)) * std::max(shape.n_heads, 0) * splits_for(max_ctx);
  return rows * (static_cast<size_t>(std::max(shape.head_dim, 0)) + 2) * sizeof(float);
}

cudaError_t attention(__half* out, const __half* q, int64_t q_stride, const __half* k_cache,
                      const __half* v_cache, const PagedBatch& batch, const AttnShape& shape,
                      const AttnDims& dims, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int hd = shape.head_dim;
  if (hd <= 0 || hd % 8 != 0 || hd > kMaxHeadDim || shape.n_heads <= 0 || shape.n_kv_heads <= 0 ||
      shape.n_heads % shape.n_kv_heads != 0 || shape.block_size <= 0 || batch.n_seqs < 0 || dims.n_q < 0 ||
      q_stride < static_cast<int64_t>(shape.n_heads) * hd || q_stride % 8 != 0 || !detail::aligned16(q) ||
      !detail::aligned16(k_cache) || !detail::aligned16(v_cache) || !detail::aligned16(out)) {
    return cudaErrorInvalidValue;
  }
  if (batch.n_seqs == 0 || dims.n_q == 0) return cudaSuccess;
  const int max_splits = splits_for(dims.max_ctx);
  const size_t need = attention_workspace_bytes(shape, batch.n_seqs, dims.max_ctx);
  const int hchunks = detail::div_up(shape.n_heads / shape.n_kv_heads, kHeadsPerBlock);
  if (workspace == nullptr || workspace_bytes < need || !detail::aligned16(workspace) || max_splits > 65535 ||
      static_cast<int64_t>(shape.n_kv_heads) * hchunks > 65535 || shape.n_heads > 65535) {
    return cudaErrorInvalidValue;
  }

  SimtParams p{};
  p.out = out;
  p.q = q;
  p.q_stride = q_stride;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.batch = batch;
  p.n_heads = shape.n_heads;
  p.n_kv_heads = shape.n_kv_heads;
  p.head_dim = hd;
  p.block_size = shape.block_size;
  p.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(hd)));
  const size_t partials = static_cast<size_t>(batch.n_seqs) * shape.n_heads * max_splits;
  p.part_ml = static_cast<float2*>(workspace);
  p.part_acc = reinterpret_cast<float*>(p.part_ml + partials);
  p.max_splits = max_splits;

  if (dims.max_q_len > 1) {
    cudaError_t err;
    if (detail::prefill_mma_supported(hd)) {
      err = detail::attention_prefill_mma(out, q, q_stride, k_cache, v_cache, batch, shape, dims.max_q_len, stream);
    } else {
      attn_simt_kernel<false><<<dim3(dims.n_q, 1, shape.n_kv_heads * hchunks), kThreads, 0, stream>>>(p);
      err = detail::last_launch_error();
    }
    if (err != cudaSuccess) return err;
  }
  // Decode rows (exactly one new token). Launched unconditionally: the host does
  // not know the per-sequence counts, and blocks of other sequences exit at once.
  attn_simt_kernel<true><<<dim3(batch.n_seqs, max_splits, shape.n_kv_heads * hchunks), kThreads, 0, stream>>>(p);
  cudaError_t err = detail::last_launch_error();
  if (err != cudaSuccess) return err;
  attn_combine_kernel<<<dim3(batch.n_seqs, shape.n_heads), kThreads, 0, stream>>>(p);
  return detail::last_launch_error();
}

}  // namespace chatradio::kernels::cuda
