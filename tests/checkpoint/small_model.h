// A small Llama checkpoint written on the fly, and bitwise comparisons of
// loaded weights and logits, for the loader's tests (threads, weight cache).
// The model is small but has a 2500-token vocabulary, so the lm_head and the
// embedding span three slices each.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model/synth.h"

namespace chatradio::model::testing_small {

inline LlamaConfig small_config(bool tied) {
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 2500;  // three lm_head / embedding slices of 1024 rows
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-5f;
  c.tie_word_embeddings = tied;
  return c;
}

// A checkpoint of small_config(tied) in `dtype` (F16 or F32) with
// deterministic pseudo-random weights; `poison` names tensors whose element 5
// is NaN.
inline void write_model(const std::string& dir, DType dtype, bool tied, const std::vector<std::string>& poison = {}) {
  const LlamaConfig c = small_config(tied);
  std::filesystem::create_directories(dir);
  write_file_atomically(dir + "/config.json", llama_config_json(c, std::nullopt));
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
    bool norm;
  };
  const int64_t d = c.hidden_size, kv = c.kv_dim(), ff = c.intermediate_size, v = c.vocab_size;
  std::vector<Spec> specs = {{"model.embed_tokens.weight", {v, d}, false}};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back({p + "input_layernorm.weight", {d}, true});
    specs.push_back({p + "self_attn.q_proj.weight", {d, d}, false});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, d}, false});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, d}, false});
    specs.push_back({p + "self_attn.o_proj.weight", {d, d}, false});
    specs.push_back({p + "post_attention_layernorm.weight", {d}, true});
    specs.push_back({p + "mlp.gate_proj.weight", {ff, d}, false});
    specs.push_back({p + "mlp.up_proj.weight", {ff, d}, false});
    specs.push_back({p + "mlp.down_proj.weight", {d, ff}, false});
  }
  specs.push_back({"model.norm.weight", {d}, true});
  if (!tied) specs.push_back({"lm_head.weight", {v, d}, false});

  uint64_t state = 12345;
  auto next_unit = [&] {  // uniform in [-1, 1)
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int64_t>(state >> 40) - (int64_t{1} << 23)) / (1 << 23);
  };
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<TensorToWrite> tensors;
  for (const Spec& s : specs) {
    int64_t n = 1;
    for (int64_t x : s.shape) n *= x;
    std::vector<float> f(static_cast<size_t>(n));
    for (float& x : f) x = s.norm ? 1.0f + 0.1f * next_unit() : 0.05f * next_unit();
    for (const std::string& p : poison) {
      if (p == s.name) f[5] = std::numeric_limits<float>::quiet_NaN();
    }
    std::vector<uint8_t>& b = bytes.emplace_back(f.size() * dtype_size(dtype));
    for (size_t i = 0; i < f.size(); ++i) {
      const uint16_t h = f32_to_f16(f[i]);
      if (dtype == DType::F16) std::memcpy(b.data() + 2 * i, &h, 2);
      else std::memcpy(b.data() + 4 * i, &f[i], 4);
    }
  }
  for (size_t i = 0; i < specs.size(); ++i) tensors.push_back({specs[i].name, dtype, specs[i].shape, bytes[i]});
  write_safetensors(dir + "/model.safetensors", tensors);
}

// Through the accessors, so an owned matrix and one borrowed from a weight
// cache compare by their bytes.
inline bool same_q4(const kernels::cpu::Q4Matrix& a, const kernels::cpu::Q4Matrix& b) {
  if (a.n != b.n || a.k != b.k || a.n_panels != b.n_panels || a.k_blocks != b.k_blocks ||
      a.group_blocks != b.group_blocks || a.n_groups != b.n_groups) {
    return false;
  }
  // memcmp must not see the null data of an empty (float-only) matrix, even for 0 bytes.
  auto same = [](const void* x, const void* y, size_t n) { return n == 0 || std::memcmp(x, y, n) == 0; };
  const size_t perm_bytes = static_cast<size_t>(a.k_blocks) * kernels::cpu::kQ4BlockInputs * sizeof(int32_t);
  return same(a.nibbles(), b.nibbles(), a.nibble_bytes()) &&
         same(a.scale_data(), b.scale_data(), a.param_count() * sizeof(uint16_t)) &&
         same(a.zero_data(), b.zero_data(), a.param_count()) &&
         (a.perm_data() == nullptr) == (b.perm_data() == nullptr) &&
         (a.perm_data() == nullptr || same(a.perm_data(), b.perm_data(), perm_bytes));
}

inline void expect_same_linear(const Linear& a, const Linear& b, const std::string& what) {
  EXPECT_EQ(a.out, b.out) << what;
  EXPECT_EQ(a.in, b.in) << what;
  EXPECT_EQ(a.is_int4(), b.is_int4()) << what;
  EXPECT_TRUE(a.w == b.w) << what << ": float weights differ";
  EXPECT_TRUE(same_q4(a.q4, b.q4)) << what << ": int4 weights differ";
}

inline void expect_same_weights(const LlamaWeights& a, const LlamaWeights& b) {
  EXPECT_TRUE(a.embed == b.embed);
  EXPECT_EQ(a.embed_f16, b.embed_f16);
  EXPECT_TRUE(a.final_norm == b.final_norm);
  expect_same_linear(a.lm_head, b.lm_head, "lm_head");
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &x = a.layers[l], &y = b.layers[l];
    EXPECT_TRUE(x.attn_norm == y.attn_norm) << l;
    EXPECT_TRUE(x.ffn_norm == y.ffn_norm) << l;
    const Linear* xs[] = {&x.q, &x.k, &x.v, &x.o, &x.gate, &x.up, &x.down};
    const Linear* ys[] = {&y.q, &y.k, &y.v, &y.o, &y.gate, &y.up, &y.down};
    for (int i = 0; i < 7; ++i) {
      expect_same_linear(*xs[i], *ys[i], "layer " + std::to_string(l) + " linear " + std::to_string(i));
    }
  }
}

// Logits [tokens, vocab] of one prompt prefilled in one step.
inline std::vector<float> prompt_logits(CpuLlama& m) {
  const std::vector<int32_t> tokens = {1, 17, 2400, 1033, 5, 2048, 999};
  Batch b{{SeqSlice{tokens, 0, {0}, true}}};
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  m.forward(logits, b);
  return logits;
}

}  // namespace chatradio::model::testing_small
