// LoRA merge against a hand-computed case, and adapter validation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/errors.h"
#include "model/lora.h"
#include "model/safetensors.h"

namespace chatradio::model {
namespace {

namespace fs = std::filesystem;

std::span<const uint8_t> bytes_of(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

fs::path write_adapter(const std::string& cfg, const std::vector<float>& a, const std::vector<float>& b,
                       int r, int in, int out) {
  const fs::path dir = fs::temp_directory_path() / ("lora_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(std::rand()));
  fs::create_directories(dir);
  std::ofstream(dir / "adapter_config.json") << cfg;
  write_safetensors((dir / "adapter_model.safetensors").string(),
                    {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType::F32, {r, in}, bytes_of(a)},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType::F32, {out, r}, bytes_of(b)}});
  return dir;
}

TEST(Lora, MergeMatchesHandComputation) {
  // r = 2, alpha = 4 -> scale 2. A = [[1,0,2],[0,1,-1]], B = [[1,2],[3,0]].
  // B·A = [[1,2,0],[3,0,6]]; W' = W + 2·B·A.
  const auto dir = write_adapter(
      R"({"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"],"bias":"none","fan_in_fan_out":false})",
      {1, 0, 2, 0, 1, -1}, {1, 2, 3, 0}, 2, 3, 2);
  const LoraAdapter ad(dir.string());
  EXPECT_EQ(ad.config().r, 2);
  EXPECT_FLOAT_EQ(ad.config().scale(), 2.0f);
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  ASSERT_TRUE(ad.covers(name));
  EXPECT_FALSE(ad.covers("model.layers.0.self_attn.v_proj.weight"));
  std::vector<float> w{1, 1, 1, 0, 0, 0};
  ad.merge_into(w, name, 2, 3);
  EXPECT_EQ(w, (std::vector<float>{3, 5, 1, 6, 0, 12}));
  // Shapes that do not match the weight are an error naming it.
  std::vector<float> wrong(8);
  try {
    ad.merge_into(wrong, name, 2, 4);
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("q_proj"), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(Lora, UnsupportedVariantsAreRejectedByName) {
  for (const char* field : {R"("use_dora":true)", R"("fan_in_fan_out":true)", R"("use_rslora":true)",
                            R"("bias":"all")", R"("peft_type":"IA3")"}) {
    const std::string cfg = std::string(R"({"r":2,"lora_alpha":4,)") + field + "}";
    try {
      parse_lora_config(cfg, "adapter_config.json");
      ADD_FAILURE() << field;
    } catch (const ModelError& e) {
      const std::string key = std::string(field).substr(1, std::string(field).find('"', 1) - 1);
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_lora_config(R"({"r":0,"lora_alpha":4})", "x"), ModelError);
  EXPECT_THROW(parse_lora_config(R"({"lora_alpha":4})", "x"), ModelError);
}

}  // namespace
}  // namespace chatradio::model
