// The loader runs its tensors as tasks on n_threads threads (LoadOptions):
// the weights, and so the logits, must be bitwise those of a one-thread load
// for every path a tensor can take (GPTQ repack, float -> int4 in slices of
// 1024 rows, f16 table checks in slices, float conversion), and a checkpoint
// with several defects must fail with the error a serial load stops at.
// The model: small_model.h.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"
#include "small_model.h"
#include "model/errors.h"
#include "model/llama.h"
#include "model/quantizer.h"
#include "model/safetensors.h"
#include "model/synth.h"

namespace chatradio::model {
namespace {

using chatradio::testing::TempDir;

using namespace testing_small;

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
