// The interface the engine drives: something that owns a model's weights and
// KV cache pool and executes one Batch per step. The CPU backend (model/llama.h)
// and the CUDA backend implement it; the scheduler only sees block counts.
#pragma once

#include <span>

#include "model/batch.h"
#include "model/config.h"

namespace chatradio::model {

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const LlamaConfig& config() const = 0;
  virtual int n_kv_blocks() const = 0;
  virtual int kv_block_size() const = 0;

  // Runs one step. Writes logits[batch.n_logit_rows(), vocab] (float32, host
  // memory), rows in sequence order; each sequence's new K/V go into its blocks.
  // Throws ModelError for a malformed batch (token out of vocab, block out of
  // range, too few blocks) before touching any state.
  virtual void forward(std::span<float> logits, const Batch& batch) = 0;

  // Copies one KV block's contents to another (copy-on-write of shared blocks).
  virtual void copy_kv_block(int dst, int src) = 0;
};

// The checks every backend makes before running a batch (non-empty, positions
// within the model, enough KV blocks and all in range, tokens in the
// vocabulary, logits buffer large enough). Throws ModelError naming the
// sequence and the problem.
void validate_batch(const Batch& batch, const LlamaConfig& cfg, int n_kv_blocks, int kv_block_size,
                    size_t logits_size);

}  // namespace chatradio::model
