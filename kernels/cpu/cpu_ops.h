// CPU implementations of the ops in kernels/ops.h: float32 host memory.
// These are the reference every other backend is tested against, so they favour
// plain, obviously-correct loops; fast paths live beside them and are tested
// against them.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace chatradio::kernels::cpu {
class ThreadPool;
}

namespace chatradio::kernels::cpu {

// out[n_tokens, dim] = table[ids[t], :]. Ids must be in [0, vocab); the caller validates.
void embedding(float* out, const float* table, const int32_t* ids, int n_tokens, int dim);
// Same from an IEEE-half table [vocab, dim] (int4 models keep the table in f16).
void embedding_f16(float* out, const uint16_t* table, const int32_t* ids, int n_tokens, int dim);

// out[rows, dim] = x / sqrt(mean(x²) + eps) * weight. out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps);

// out[m, n] = x[m, k] · w[n, k]ᵀ (HF linear layout). out must not alias x.
// With a pool, columns are split across threads; each element's summation order
// is fixed, so the result is bitwise the same for any m, pool or thread count.
void matmul(float* out, const float* x, const float* w, int m, int n, int k, ThreadPool* pool = nullptr);

// In place on x[n_tokens, n_heads, head_dim]: rotate each head of token t by
// positions[t] (HF rotate_half convention).
void rope(float* x, const int32_t* positions, int n_tokens, int n_heads, const RopeParams& p);

// Writes the K and V rows of new tokens into the paged cache.
// k_cache, v_cache: [n_blocks, block_size, n_kv_heads, head_dim]
// k, v: [n_tokens, n_kv_heads * head_dim]; slots[t] = block_id * block_size + offset.
void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* slots,
              int n_tokens, const AttnShape& shape);
// Same into an IEEE-half cache (float_to_half of each element: half the
// memory and bandwidth of a float cache, at ~3 significant digits per value).
void kv_write(uint16_t* k_cache, uint16_t* v_cache, const float* k, const float* v, const int32_t* slots,
              int n_tokens, const AttnShape& shape);

// Causal grouped-query attention of the batch's new tokens over the paged cache.
// out: [n_q, n_heads * head_dim]; q: [n_q, n_heads * head_dim] (RoPE applied),
// n_q = batch.q_start[batch.n_seqs]. Softmax scale is 1/sqrt(head_dim).
// With a pool, (query, head) pairs are split across threads; each pair's math
// is the same whatever the split, so results are bitwise identical. Runs the
// default SIMD path; every path gives the same bits (attention_paths.h).
void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool = nullptr);
// Same on an explicit path; throws std::invalid_argument when it is not
// supported here.
void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool, CpuIsa isa);
// The same over an IEEE-half cache (elements widened exactly, then the same math).
void attention(float* out, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool = nullptr);
void attention(float* out, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool, CpuIsa isa);

// out[n] = silu(gate[n]) * up[n]. out may alias gate or up. exp is exp_poly
// (exp_poly.h) in every path, so all paths and splits give the same bits.
void swiglu(float* out, const float* gate, const float* up, int n, ThreadPool* pool = nullptr);

// out[n] = a[n] + b[n]. out may alias a or b.
void add(float* out, const float* a, const float* b, int n);

}  // namespace chatradio::kernels::cpu
