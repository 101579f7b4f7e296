#include "model/quantize_config.h"

#include <cstdint>
#include <filesystem>
#include <limits>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/json_util.h"

namespace chatradio::model {

QuantizeConfig parse_quantize_config(const std::string& json_text, const std::string& source) {
  nlohmann::json j = parse_json_object(json_text, source);
  QuantizeConfig c;
  auto field = [&](const char* key, auto* dst) {
    using T = std::remove_pointer_t<decltype(dst)>;
    if (!j.contains(key) || j[key].is_null()) return;
    const nlohmann::json& v = j[key];
    // Checked here, not by get<T>(): nlohmann converts a float or an integer
    // beyond T's range with a plain cast (undefined behaviour, fuzz_quantize_config).
    bool ok = false;
    if constexpr (std::is_same_v<T, bool>) {
      ok = v.is_boolean();
    } else {
      ok = (v.is_number_integer() && v.is_number_unsigned() &&
            v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max())) ||
           (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= std::numeric_limits<T>::min() &&
            v.get<int64_t>() <= std::numeric_limits<T>::max());
    }
    if (!ok) throw ModelError(source + ": field '" + key + "' has the wrong type or range: " + v.dump());
    *dst = v.get<T>();
  };
  field("bits", &c.bits);
  field("group_size", &c.group_size);
  field("sym", &c.sym);
  field("desc_act", &c.desc_act);
  field("lm_head", &c.lm_head);
  if (c.bits != 4) throw ModelError(source + ": field 'bits' = " + std::to_string(c.bits) + ": only 4-bit is supported");
  if (c.group_size != -1 && (c.group_size <= 0 || c.group_size % 32 != 0)) {
    throw ModelError(source + ": field 'group_size' = " + std::to_string(c.group_size) +
                     ": must be -1 or a positive multiple of 32");
  }
  for (const char* key : {"checkpoint_format", "quant_method"}) {
    if (!j.contains(key) || !j[key].is_string()) continue;
    const std::string v = j[key];
    if (v != "gptq") {
      throw ModelError(source + ": field '" + key + "' = \"" + v + "\": only the GPTQ v1 format (\"gptq\") is supported");
    }
  }
  return c;
}

std::string quantize_config_json(const QuantizeConfig& c) {
  nlohmann::ordered_json j;
  j["bits"] = c.bits;
  j["group_size"] = c.group_size;
  j["damp_percent"] = 0.01;
  j["desc_act"] = c.desc_act;
  j["static_groups"] = false;
  j["sym"] = c.sym;
  j["true_sequential"] = true;
  j["lm_head"] = c.lm_head;
  j["quant_method"] = "gptq";
  j["checkpoint_format"] = "gptq";
  return j.dump(2) + "\n";
}

bool is_gptq_checkpoint(const std::string& model_dir) {
  return std::filesystem::exists(model_dir + "/quantize_config.json");
}

QuantizeConfig load_quantize_config(const std::string& model_dir) {
  const std::string path = model_dir + "/quantize_config.json";
  return parse_quantize_config(read_text_file(path), path);
}

}  // namespace chatradio::model
