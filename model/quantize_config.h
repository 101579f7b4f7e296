// quantize_config.json of a GPTQ checkpoint (AutoGPTQ's file): read by the
// loader, written by `chatradio quantize` and `chatradio synth`.
#pragma once

#include <string>

namespace chatradio::model {

struct QuantizeConfig {
  int bits = 4;
  int group_size = 128;  // -1 = one group per row
  bool sym = false;
  bool desc_act = false;
  bool lm_head = false;  // lm_head stored quantized too
};

// Throws ModelError naming the field for anything we cannot load: bits other
// than 4, the gptq_v2 / marlin / awq formats, an invalid group size.
QuantizeConfig parse_quantize_config(const std::string& json_text, const std::string& source);
std::string quantize_config_json(const QuantizeConfig& c);

// True when DIR holds quantize_config.json (a GPTQ checkpoint).
bool is_gptq_checkpoint(const std::string& model_dir);
QuantizeConfig load_quantize_config(const std::string& model_dir);

}  // namespace chatradio::model
