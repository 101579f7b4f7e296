// GPTQ quantize_config.json: parse_quantize_config on arbitrary text. What it
// accepts must round-trip through quantize_config_json (a mismatch traps).
// Any exception other than ModelError counts as a crash.
//
// fuzz-seed-text: {"bits":4,"group_size":128,"damp_percent":0.01,"desc_act":false,"static_groups":false,"sym":true,"true_sequential":true,"model_name_or_path":null,"model_file_base_name":"model","quant_method":"gptq","checkpoint_format":"gptq"}
// fuzz-seed-text: {"bits":4,"group_size":-1,"desc_act":true,"sym":false,"lm_head":true}
// fuzz-seed-text: {"bits":8,"group_size":32,"checkpoint_format":"gptq_v2"}
// fuzz-seed-text: {"bits":4,"group_size":128,"quant_method":"awq","version":"gemm","zero_point":true}
#include <cstdint>
#include <string>

#include "model/errors.h"
#include "model/quantize_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  chatradio::model::QuantizeConfig c;
  try {
    c = chatradio::model::parse_quantize_config(text, "quantize_config.json");
  } catch (const chatradio::model::ModelError&) {
    return 0;
  }
  const chatradio::model::QuantizeConfig r =
      chatradio::model::parse_quantize_config(chatradio::model::quantize_config_json(c), "round-trip");
  if (r.bits != c.bits || r.group_size != c.group_size || r.sym != c.sym || r.desc_act != c.desc_act ||
      r.lm_head != c.lm_head)
    __builtin_trap();
  return 0;
}
