// The real stories260K checkpoints in ../shared: config values, the full set
// of Llama tensor names and shapes, and f16 weights agreeing with f32 ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

using chatradio::testing::shared_path;

constexpr const char* kF32 = "models/stories260K";
constexpr const char* kF16 = "models/stories260K-f16";

void expect_stories_config(const LlamaConfig& c) {
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.head_dim(), 8);
  EXPECT_EQ(c.kv_dim(), 32);
}

TEST(SharedModels, Config) {
  CHATRADIO_REQUIRE_SHARED(kF32);
  CHATRADIO_REQUIRE_SHARED(kF16);
  expect_stories_config(load_llama_config(shared_path(kF32)));
  expect_stories_config(load_llama_config(shared_path(kF16)));
}

// Every tensor a tied HF Llama has, with its shape, via the shape-checked get().
void expect_llama_tensors(const Checkpoint& ck, const LlamaConfig& c, DType dtype) {
  const int64_t h = c.hidden_size, f = c.intermediate_size, kv = c.kv_dim();
  std::vector<std::string> want = {"model.embed_tokens.weight", "model.norm.weight"};
  EXPECT_EQ(ck.get("model.embed_tokens.weight", {c.vocab_size, h}).dtype, dtype);
  EXPECT_EQ(ck.get("model.norm.weight", {h}).dtype, dtype);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::vector<std::pair<std::string, std::vector<int64_t>>> layer = {
        {"input_layernorm.weight", {h}},          {"post_attention_layernorm.weight", {h}},
        {"self_attn.q_proj.weight", {h, h}},      {"self_attn.k_proj.weight", {kv, h}},
        {"self_attn.v_proj.weight", {kv, h}},     {"self_attn.o_proj.weight", {h, h}},
        {"mlp.gate_proj.weight", {f, h}},         {"mlp.up_proj.weight", {f, h}},
        {"mlp.down_proj.weight", {h, f}}};
    for (const auto& [name, shape] : layer) {
      EXPECT_EQ(ck.get(p + name, shape).dtype, dtype) << p + name;
      want.push_back(p + name);
    }
  }
  EXPECT_FALSE(ck.has("lm_head.weight")) << "tied embeddings: no separate lm_head";
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ck.names(), want);
}

TEST(SharedModels, F32CheckpointHasEveryTensor) {
  CHATRADIO_REQUIRE_SHARED(kF32);
  const LlamaConfig c = load_llama_config(shared_path(kF32));
  Checkpoint ck(shared_path(kF32));
  expect_llama_tensors(ck, c, DType::F32);
  // Real weights: finite and not all zero.
  const TensorView& emb = ck.get("model.embed_tokens.weight");
  std::vector<float> v(static_cast<size_t>(emb.numel()));
  to_f32(v, emb);
  double sumsq = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sumsq += double(x) * x;
  }
  EXPECT_GT(sumsq, 0.0);
}

TEST(SharedModels, F16MatchesF32) {
  CHATRADIO_REQUIRE_SHARED(kF32);
  CHATRADIO_REQUIRE_SHARED(kF16);
  const LlamaConfig c = load_llama_config(shared_path(kF16));
  Checkpoint f32(shared_path(kF32)), f16(shared_path(kF16));
  expect_llama_tensors(f16, c, DType::F16);
  ASSERT_EQ(f16.names(), f32.names());
  size_t exact = 0, total = 0;
  for (const std::string& name : f32.names()) {
    const TensorView& a = f32.get(name);
    const TensorView& b = f16.get(name, a.shape);
    std::vector<float> va(static_cast<size_t>(a.numel())), vb(va.size());
    to_f32(va, a);
    to_f32(vb, b);
    for (size_t i = 0; i < va.size(); ++i) {
      // f16 keeps 11 significant bits (relative error <= 2^-11 ~ 4.9e-4);
      // below 2^-14 it is subnormal, where the error is absolute (<= 2^-25).
      ASSERT_LE(std::fabs(va[i] - vb[i]), 1e-3 * std::fabs(va[i]) + 3e-8) << name << "[" << i << "]";
      // The file was made by IEEE round-to-nearest-even conversion, so our
      // f32_to_f16 should reproduce its bits.
      uint16_t raw;
      std::memcpy(&raw, b.data + 2 * i, 2);
      exact += f32_to_f16(va[i]) == raw;
      ++total;
    }
  }
  EXPECT_EQ(exact, total) << "f32_to_f16 disagrees with the stored f16 on " << total - exact << " values";
}

}  // namespace
}  // namespace chatradio::model
