// The op interface shared by every backend (DEVELOPERS.md, rule 2).
//
// Each op is a destination-first function on raw pointers with explicit shapes.
// kernels/cpu/ implements every op on host float32 memory (the reference, plus
// fast paths); kernels/cuda/ implements the same ops on device memory, with the
// same argument order and meaning, as launchers returning cudaError_t. Tests run
// each CUDA op against the CPU one on the same inputs.
//
// Conventions
// - Activations are row-major [rows, cols]; a "token row" is one token.
// - Linear weights use the Hugging Face layout: W[out_features, in_features],
//   so y = x · Wᵀ.
// - The KV cache is paged: one pool per layer of shape
//   [n_blocks, block_size, n_kv_heads, head_dim]; a sequence's tokens live in
//   the blocks listed by its row of the block table, in order.
#pragma once

#include <cstdint>

namespace chatradio::kernels {

// Shape of the attention of one model, fixed at load.
struct AttnShape {
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads; n_heads % n_kv_heads == 0 (GQA; 1:1 is MHA)
  int head_dim = 0;
  int block_size = 0;  // tokens per KV block
};

// The sequences of one batch step, as flat arrays (device-friendly: no
// pointers to pointers). Sequence s owns query rows [q_start[s], q_start[s+1]);
// those are its newest tokens, already written to the cache, so its query row j
// sits at position ctx_len[s] - (q_start[s+1] - q_start[s]) + j and attends
// causally to cache positions [0, that position].
struct PagedBatch {
  int n_seqs = 0;
  const int32_t* q_start = nullptr;       // [n_seqs + 1], prefix sums of new tokens
  const int32_t* ctx_len = nullptr;       // [n_seqs], tokens in cache after this step
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks], KV block ids
  int max_blocks = 0;                     // row stride of block_tables
};

// Rotary embedding frequencies: position p, pair i of head_dim/2 rotates by
// p * theta^(-2i/head_dim). HF "rotate_half" pairs element i with i + head_dim/2.
struct RopeParams {
  int head_dim = 0;
  float theta = 10000.0f;
};

}  // namespace chatradio::kernels
