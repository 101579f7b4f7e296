// chatradio-server's --backend decision (server/service/backend_choice.h) without
// a GPU: the GPU count and the CUDA loader's verdict are inputs. The CPU backend
// is the real CpuLlama on stories260K; the CUDA loader either refuses the model
// with the ModelError CudaLlama throws for act-order weights, or (for the
// "accepted" case) hands back a real backend standing in for the GPU one.
#include <gtest/gtest.h>

#include <string>

#include "model/errors.h"
#include "model/llama.h"
#include "server/service/backend_choice.h"
#include "tests/common/shared.h"

namespace chatradio::service {
namespace {

const char* const kRefusal =
    "model.layers.0.self_attn.q_proj: act-order (desc_act) int4 weights are not supported by the CUDA backend";

class BackendChoice : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K/model.safetensors"); }

  // Loaders that count their calls.
  BackendLoader cpu() {
    return [this] {
      ++cpu_loads;
      return std::unique_ptr<model::Backend>(
          model::CpuLlama::load(::chatradio::testing::shared_path("models/stories260K"), {64, 16, 1}));
    };
  }
  BackendLoader cuda_refusing() {
    return [this]() -> std::unique_ptr<model::Backend> {
      ++cuda_loads;
      throw model::ModelError(kRefusal);
    };
  }
  BackendLoader cuda_accepting() {
    return [this] {
      ++cuda_loads;
      return std::unique_ptr<model::Backend>(
          model::CpuLlama::load(::chatradio::testing::shared_path("models/stories260K"), {32, 16, 1}));
    };
  }
  int cpu_loads = 0, cuda_loads = 0;
};

TEST_F(BackendChoice, AutoFallsBackToCpuWhenTheGpuBackendRefusesTheModel) {
  const ChosenBackend c = choose_backend("auto", 1, cuda_refusing(), cpu());
  ASSERT_TRUE(c.backend);
  EXPECT_EQ(c.name, "cpu");
  EXPECT_EQ(c.fallback_reason, kRefusal);
  EXPECT_EQ(c.backend->n_kv_blocks(), 64);  // the CPU loader's backend
  EXPECT_EQ(cuda_loads, 1);
  EXPECT_EQ(cpu_loads, 1);
}

TEST_F(BackendChoice, AutoUsesTheGpuBackendWhenItTakesTheModel) {
  const ChosenBackend c = choose_backend("auto", 2, cuda_accepting(), cpu());
  EXPECT_EQ(c.name, "cuda");
  EXPECT_EQ(c.fallback_reason, "");
  EXPECT_EQ(c.backend->n_kv_blocks(), 32);  // the CUDA loader's backend
  EXPECT_EQ(cpu_loads, 0);
}

TEST_F(BackendChoice, AutoWithoutGpuOrWithoutCudaBuildIsCpuWithoutAReason) {
  for (const bool cuda_built : {true, false}) {
    const ChosenBackend c = choose_backend("auto", cuda_built ? 0 : 1, cuda_built ? cuda_refusing() : nullptr, cpu());
    EXPECT_EQ(c.name, "cpu");
    EXPECT_EQ(c.fallback_reason, "") << "not a fallback: there was no GPU backend to try";
  }
  EXPECT_EQ(cuda_loads, 0);
}

TEST_F(BackendChoice, ExplicitCudaFailsLoudly) {
  std::string what;
  try {
    choose_backend("cuda", 1, cuda_refusing(), cpu());
  } catch (const model::ModelError& e) {
    what = e.what();
  }
  EXPECT_EQ(what, kRefusal);
  what.clear();
  try {
    choose_backend("cuda", 0, nullptr, cpu());
  } catch (const model::ModelError& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("no CUDA backend"), std::string::npos) << what;
  EXPECT_EQ(cpu_loads, 0);
}

TEST_F(BackendChoice, ExplicitCpuNeverTriesTheGpu) {
  const ChosenBackend c = choose_backend("cpu", 1, cuda_accepting(), cpu());
  EXPECT_EQ(c.name, "cpu");
  EXPECT_EQ(cuda_loads, 0);
}

}  // namespace
}  // namespace chatradio::service
