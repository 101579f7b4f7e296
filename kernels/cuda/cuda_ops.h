// CUDA implementations of the ops in kernels/ops.h (plus the fused forms the
// forward pass wants), one .cu file per op in this folder. docs/cuda.md has the
// design notes: layouts, workspace sizes and how batch invariance is kept.
//
// Conventions (all launchers):
// - Destination first, raw device pointers, explicit shapes; enqueue on `stream`
//   and return the launch's cudaError_t (cudaErrorInvalidValue for unsupported
//   shapes, checked before anything is enqueued). Nothing allocates: the few ops
//   that need scratch take a preallocated workspace whose size a *_bytes()
//   function gives.
// - Activations and the KV cache are fp16 (__half); every reduction accumulates
//   in fp32. Logits for argmax are fp32.
// - Every device buffer a 16-byte vector path touches must be 16-byte aligned
//   (cudaMalloc gives 256); kernels fall back to scalar code when a row length
//   or pointer rules vectors out, with the same per-row summation order.
// - Batch invariance: each output row is computed by an instruction sequence that
//   depends only on the problem size (dims, k, head_dim, that row's own sequence),
//   never on the number of rows or on the other sequences of the batch.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/int4_layout.h"
#include "kernels/ops.h"

namespace chatradio::kernels::cuda {

// ---- device.cu -------------------------------------------------------------------
// Per-device set-up: opts the kernels that use more than 48 KB of dynamic shared
// memory (int4_gemm, the tensor-core prefill attention) into it on the current
// device. Call once per device, before the first launch there; idempotent. A
// launch on a device that was not prepared fails with cudaErrorInvalidValue.
// (Done once rather than per launch: ~160 fewer driver calls per prefill step.)
cudaError_t prepare_device();

// ---- embedding.cu --------------------------------------------------------------
// out[n_tokens, dim] = table[ids[t], :]; ids (device) must be in [0, vocab): the
// caller validates, as on the CPU.
cudaError_t embedding(__half* out, const __half* table, const int32_t* ids, int n_tokens, int dim,
                      cudaStream_t stream);

// ---- rmsnorm.cu ----------------------------------------------------------------
// out[rows, dim] = x / sqrt(mean(x²) + eps) * weight[dim]. out may alias x.
cudaError_t rmsnorm(__half* out, const __half* x, const __half* weight, int rows, int dim, float eps,
                    cudaStream_t stream);
// The pre-norm residual step: residual[rows, dim] += x[rows, dim] (rounded to
// fp16, as stored), then out = rmsnorm(residual) * weight. out may alias x, not residual.
cudaError_t add_rmsnorm(__half* out, __half* residual, const __half* x, const __half* weight, int rows,
                        int dim, float eps, cudaStream_t stream);

// ---- rope.cu -------------------------------------------------------------------
// RoPE (HF rotate_half, inv_freq_i = theta^(-2i/head_dim), angle = positions[t]·inv_freq_i)
// fused with the paged KV write:
//   q[t, h·hd ..] (row stride q_stride, n_heads heads) is rotated in place (q may be null);
//   k[t, h·hd ..] is rotated and written to k_cache, v copied to v_cache, both at slot
//   slots[t] = block·block_size + offset of [n_blocks, block_size, n_kv_heads, head_dim];
//   k and v rows have stride kv_stride. A slot < 0 writes nothing (padding token).
// For a fused QKV GEMM output qkv[t, (n_heads + 2·n_kv_heads)·hd]: q = qkv, k = q + n_heads·hd,
// v = k + n_kv_heads·hd, q_stride = kv_stride = (n_heads + 2·n_kv_heads)·hd.
// positions and slots are device arrays [n_tokens]. head_dim must be even and ≤ 256.
cudaError_t rope_kv_write(__half* q, __half* k_cache, __half* v_cache, const __half* k, const __half* v,
                          const int32_t* positions, const int32_t* slots, int n_tokens, int64_t q_stride,
                          int64_t kv_stride, const AttnShape& shape, const RopeParams& rope,
                          cudaStream_t stream);

// ---- swiglu.cu -----------------------------------------------------------------
// out[n] = silu(gate[n]) * up[n]. out may alias gate or up.
cudaError_t swiglu(__half* out, const __half* gate, const __half* up, int n, cudaStream_t stream);
// The fused gate/up GEMM output: gate_up[rows, 2n] = [gate | up] per row;
// out[rows, n] = silu(gate) * up. out must not alias gate_up unless rows == 1.
cudaError_t swiglu_fused(__half* out, const __half* gate_up, int rows, int n, cudaStream_t stream);

// ---- argmax.cu -----------------------------------------------------------------
// ids[r] = argmax over logits[r, 0..vocab) (fp32): the lowest index among equal
// maxima, NaNs ignored (a row of only NaNs gives 0). Greedy decoding copies back
// `rows` int32 only.
cudaError_t argmax(int32_t* ids, const float* logits, int rows, int vocab, cudaStream_t stream);

// ---- attention.cu (+ attention_prefill.cu) ----------------------------------------
// Host-side facts about a batch that the kernels cannot read from the device
// arrays without a sync. Upper bounds are fine: surplus blocks exit at once.
struct AttnDims {
  int n_q = 0;        // query rows = q_start[n_seqs]
  int max_q_len = 0;  // >= every sequence's new-token count
  int max_ctx = 0;    // >= every ctx_len (e.g. max_blocks * block_size)
};

// Decode rows split the context into chunks of this many tokens (a constant, so
// a row's split structure depends on its own ctx_len only).
constexpr int kAttnSplitTokens = 256;

// Workspace for the decode partials of up to max_seqs sequences with up to
// max_ctx tokens: max_seqs · n_heads · splits · (head_dim + 2) floats,
// splits = ceil(max_ctx / kAttnSplitTokens).
size_t attention_workspace_bytes(const AttnShape& shape, int max_seqs, int max_ctx);

// Causal GQA attention of the batch's new tokens over the paged cache, the
// semantics of cpu::attention. out[n_q, n_heads·hd] (contiguous); q rows have
// stride q_stride (>= n_heads·hd, a multiple of 8). batch's arrays are device
// memory. head_dim must be a multiple of 8 and <= 256.
// Paths (chosen per sequence from its own new-token count, never from the batch):
//   - 1 new token: split-KV flash decoding (SIMT) + a combine pass;
//   - more, head_dim 64 or 128: FlashAttention-2 style tiles on mma.sync;
//   - more, other head dims: the SIMT kernel walking the whole context per row.
cudaError_t attention(__half* out, const __half* q, int64_t q_stride, const __half* k_cache,
                      const __half* v_cache, const PagedBatch& batch, const AttnShape& shape,
                      const AttnDims& dims, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---- int4_repack.cu, int4_gemv.cu, int4_gemm.cu ---------------------------------------
// A GPTQ weight repacked into our layout (kernels/cuda/int4_layout.h), in device memory.
struct Int4Weight {
  const uint32_t* packed = nullptr;  // int4_layout::packed_words(n, k) words, 16-byte aligned
  const uint32_t* sz = nullptr;      // int4_layout::sz_words(n, k, group): half2 {scale, 1024 + zero}
  int n = 0;                         // out_features, a multiple of 8
  int k = 0;                         // in_features, a multiple of group
  int group = 0;                     // 32, 64 or 128
};

// Host-side repack of a GPTQ v1 checkpoint tensor set (plain host arrays):
//   qweight int32 [k/8, n]: 8 nibbles along k, low bits first;
//   qzeros  int32 [k/group, n/8]: 8 nibbles along n, stored = zero - 1;
//   scales  fp16 bits [k/group, n].
//   g_idx   int32 [k]: input i's group, or null when the checkpoint has none.
// Writes packed[int4_layout::packed_words(n, k)] and sz[int4_layout::sz_words(n, k, group)].
// Sequential groups only: a g_idx other than i / group (act-order, desc_act)
// cannot be represented and is refused, so the caller must pass what the
// checkpoint holds. Returns cudaErrorInvalidValue for shapes or a g_idx it
// cannot represent. Touches no device.
cudaError_t int4_repack_gptq(uint32_t* packed, uint32_t* sz, const int32_t* qweight, const int32_t* qzeros,
                             const uint16_t* scales, const int32_t* g_idx, int k, int n, int group);

// out[m, n] = x[m, k] · Wᵀ (x contiguous fp16; out fp16, or fp32 for logits:
// the same fp32 accumulators stored without rounding to fp16). The GEMV (m <= 16,
// decode) streams W with 128-bit loads; the GEMM (any m) runs cp.async-pipelined
// tiles on mma.sync. Both accumulate every output in the same order, so a row's
// result is bitwise the same whichever kernel and whatever m computes it.
// out must be 4-byte (fp16) or 8-byte (fp32) aligned.
cudaError_t int4_gemv(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);
cudaError_t int4_gemv(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);
cudaError_t int4_gemm(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);
cudaError_t int4_gemm(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);
// Picks the GEMV for m <= int4_layout::kGemvMaxM, else the GEMM.
cudaError_t int4_matmul(__half* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);
cudaError_t int4_matmul(float* out, const __half* x, const Int4Weight& w, int m, cudaStream_t stream);

}  // namespace chatradio::kernels::cuda
