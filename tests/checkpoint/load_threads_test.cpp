// The loader runs its tensors as tasks on n_threads threads (LoadOptions):
// the weights, and so the logits, must be bitwise those of a one-thread load
// for every path a tensor can take (GPTQ repack, float -> int4 in slices of
// 1024 rows, f16 table checks in slices, float conversion), and a checkpoint
// with several defects must fail with the error a serial load stops at.
// The model is small but has a 2500-token vocabulary, so the lm_head and the
// embedding span three slices each.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"
#include "model/errors.h"
#include "model/llama.h"
#include "model/quantizer.h"
#include "model/safetensors.h"
#include "model/synth.h"

namespace chatradio::model {
namespace {

using chatradio::testing::TempDir;

LlamaConfig small_config(bool tied) {
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
void write_model(const std::string& dir, DType dtype, bool tied, const std::vector<std::string>& poison = {}) {
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

bool same_q4(const kernels::cpu::Q4Matrix& a, const kernels::cpu::Q4Matrix& b) {
  return a.n == b.n && a.k == b.k && a.n_panels == b.n_panels && a.k_blocks == b.k_blocks &&
         a.group_blocks == b.group_blocks && a.n_groups == b.n_groups && a.qs.size() == b.qs.size() &&
         // memcmp must not see the null data() of an empty (float-only) matrix, even for 0 bytes.
         (a.qs.empty() || std::memcmp(a.qs.data(), b.qs.data(), a.qs.size() * sizeof(a.qs[0])) == 0) &&
         a.scales == b.scales && a.zeros == b.zeros && a.perm == b.perm;
}

void expect_same_linear(const Linear& a, const Linear& b, const std::string& what) {
  EXPECT_EQ(a.out, b.out) << what;
  EXPECT_EQ(a.in, b.in) << what;
  EXPECT_EQ(a.is_int4(), b.is_int4()) << what;
  EXPECT_TRUE(a.w == b.w) << what << ": float weights differ";
  EXPECT_TRUE(same_q4(a.q4, b.q4)) << what << ": int4 weights differ";
}

void expect_same_weights(const LlamaWeights& a, const LlamaWeights& b) {
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
std::vector<float> prompt_logits(CpuLlama& m) {
  const std::vector<int32_t> tokens = {1, 17, 2400, 1033, 5, 2048, 999};
  Batch b{{SeqSlice{tokens, 0, {0}, true}}};
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  m.forward(logits, b);
  return logits;
}

struct Case {
  const char* name;
  DType dtype;
  bool tied;
  bool gptq;            // load the `chatradio quantize` output instead of the float model
  WeightFormat format;  // for the float model
};

class LoadThreads : public ::testing::TestWithParam<Case> {};

TEST_P(LoadThreads, WeightsAndLogitsAreBitwiseThoseOfOneThread) {
  const Case c = GetParam();
  TempDir tmp;
  std::string dir = tmp / "float";
  write_model(dir, c.dtype, c.tied);
  if (c.gptq) {
    quantize_checkpoint(tmp / "gptq", dir, {.group_size = 32});
    dir = tmp / "gptq";
  }
  const LlamaConfig cfg = load_llama_config(dir);
  LoadStats stats;
  const LlamaWeights one = load_llama_weights(cfg, dir, {c.format, 32, 1, &stats});
  EXPECT_EQ(stats.threads, 1);
  EXPECT_EQ(one.lm_head.is_int4(), c.gptq || c.format == WeightFormat::kInt4);
  for (int threads : {2, 3, 8}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    const LlamaWeights many = load_llama_weights(cfg, dir, {c.format, 32, threads, &stats});
    EXPECT_EQ(stats.threads, threads);
    expect_same_weights(one, many);
  }
  // CpuLlama::load loads on the backend's threads; the model computes the
  // same logits whatever the thread count (kernels are thread-invariant).
  const auto serial = CpuLlama::load(dir, {.n_kv_blocks = 4, .kv_block_size = 16, .n_threads = 1}, {c.format, 32});
  const auto parallel = CpuLlama::load(dir, {.n_kv_blocks = 4, .kv_block_size = 16, .n_threads = 3}, {c.format, 32});
  expect_same_weights(serial->weights(), parallel->weights());
  const std::vector<float> a = prompt_logits(*serial), b = prompt_logits(*parallel);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Paths, LoadThreads,
                         ::testing::Values(Case{"F16", DType::F16, false, false, WeightFormat::kAsStored},
                                           Case{"F16ToInt4", DType::F16, false, false, WeightFormat::kInt4},
                                           Case{"Gptq", DType::F16, false, true, WeightFormat::kAsStored},
                                           // Tied: lm_head from the mapped F16 table, or from
                                           // the F16 copy of an F32 one.
                                           Case{"TiedF16ToInt4", DType::F16, true, false, WeightFormat::kInt4},
                                           Case{"TiedF32ToInt4", DType::F32, true, false, WeightFormat::kInt4},
                                           Case{"TiedGptq", DType::F32, true, true, WeightFormat::kAsStored}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST(LoadThreadsErrors, SeveralDefectsGiveTheErrorOfASerialLoad) {
  TempDir tmp;
  const std::string dir = tmp / "bad";
  // A serial load reads layer 1's up_proj before lm_head: its NaN is the
  // error, however the threads happen to reach the two.
  write_model(dir, DType::F16, false, {"model.layers.1.mlp.up_proj.weight", "lm_head.weight"});
  const LlamaConfig cfg = load_llama_config(dir);
  for (WeightFormat f : {WeightFormat::kAsStored, WeightFormat::kInt4}) {
    for (int threads : {1, 2, 5}) {
      SCOPED_TRACE(std::to_string(threads) + " threads");
      EXPECT_MODEL_ERROR(load_llama_weights(cfg, dir, {f, 32, threads}), "model.layers.1.mlp.up_proj.weight",
                         "element 5", "NaN");
    }
  }
  EXPECT_MODEL_ERROR(load_llama_weights(cfg, dir, {WeightFormat::kInt4, 32, 0}), "at least one thread");
}

}  // namespace
}  // namespace chatradio::model
