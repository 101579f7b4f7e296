// The Llama architecture on the CPU ops: weights held as float32 (F16/BF16
// checkpoints convert at load), a paged KV cache pool, and a batched forward pass
// over model::Batch. This is the reference every other backend is checked against.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/config.h"

namespace chatradio::model {

// y[m, out] = x[m, in] · Wᵀ with W[out, in].
struct Linear {
  int out = 0, in = 0;
  std::vector<float> w;  // [out, in]

  void apply(float* y, const float* x, int m) const;
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  Linear q, k, v, o;             // q,o: [hidden, hidden]; k,v: [kv_dim, hidden]
  std::vector<float> ffn_norm;   // [hidden]
  Linear gate, up, down;         // gate,up: [inter, hidden]; down: [hidden, inter]
};

struct LlamaWeights {
  std::vector<float> embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  Linear lm_head;                 // [vocab, hidden]; a copy of embed when tied
};

// Reads config.json and the safetensors of a Hugging Face Llama directory.
// Throws ModelError naming the file/tensor on any problem.
LlamaWeights load_llama_weights(const LlamaConfig& cfg, const std::string& model_dir);

struct CpuBackendOptions {
  int n_kv_blocks = 256;  // KV pool size in blocks
  int kv_block_size = 16;
};

class CpuLlama final : public Backend {
 public:
  CpuLlama(LlamaConfig cfg, LlamaWeights weights, const CpuBackendOptions& opts);
  // Loads a model directory (config.json + safetensors).
  static std::unique_ptr<CpuLlama> load(const std::string& model_dir, const CpuBackendOptions& opts);

  const LlamaConfig& config() const override { return cfg_; }
  int n_kv_blocks() const override { return opts_.n_kv_blocks; }
  int kv_block_size() const override { return opts_.kv_block_size; }
  void forward(std::span<float> logits, const Batch& batch) override;
  void copy_kv_block(int dst, int src) override;

 private:
  void validate(const Batch& batch, size_t logits_size) const;

  LlamaConfig cfg_;
  LlamaWeights w_;
  CpuBackendOptions opts_;
  // Per layer: [n_kv_blocks, block_size, n_kv_heads, head_dim].
  std::vector<std::vector<float>> k_cache_, v_cache_;

  // Scratch reused across steps (capacity grows to the largest batch seen).
  struct Scratch {
    std::vector<float> x, h, q, k, v, att, gate, up;  // [n_tokens, *]
    std::vector<float> last;                          // [n_logit_rows, hidden]
    std::vector<int32_t> tokens, positions, slots;    // [n_tokens]
    std::vector<int32_t> q_start, ctx_len, tables;    // paged-attention arrays
  } s_;
};

}  // namespace chatradio::model
