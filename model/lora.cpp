#include "model/lora.h"

#include <nlohmann/json.hpp>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/json_util.h"

namespace chatradio::model {

namespace {

// PEFT names adapter tensors "base_model.model.<base name without .weight>.lora_A.weight"
// (sometimes with an adapter name, ".lora_A.default.weight"). Returns the base
// weight name and which half it is, or false for a tensor that is not A/B.
bool split_lora_name(const std::string& name, std::string* base, char* half) {
  static constexpr std::string_view kPrefix = "base_model.model.";
  std::string rest = name;
  if (rest.rfind(kPrefix, 0) == 0) rest = rest.substr(kPrefix.size());
  for (const char* h : {".lora_A.", ".lora_B."}) {
    const size_t at = rest.find(h);
    if (at == std::string::npos) continue;
    *base = rest.substr(0, at) + ".weight";
    *half = h[6];
    return true;
  }
  return false;
}

}  // namespace

LoraConfig parse_lora_config(const std::string& json_text, const std::string& source) {
  nlohmann::json j = parse_json_object(json_text, source);
  auto reject_if = [&](const char* key, auto bad) {
    if (j.contains(key) && !j[key].is_null() && bad(j[key])) {
      throw ModelError(source + ": field '" + key + "' = " + j[key].dump() + " is not supported");
    }
  };
  reject_if("peft_type", [](const nlohmann::json& v) { return v != "LORA"; });
  reject_if("fan_in_fan_out", [](const nlohmann::json& v) { return v == true; });
  reject_if("use_rslora", [](const nlohmann::json& v) { return v == true; });
  reject_if("use_dora", [](const nlohmann::json& v) { return v == true; });
  reject_if("bias", [](const nlohmann::json& v) { return v != "none"; });
  reject_if("rank_pattern", [](const nlohmann::json& v) { return !v.empty(); });
  reject_if("alpha_pattern", [](const nlohmann::json& v) { return !v.empty(); });
  LoraConfig c;
  try {
    c.r = j.at("r").get<int>();
    c.alpha = j.at("lora_alpha").get<float>();
    if (j.contains("target_modules") && j["target_modules"].is_array()) {
      c.target_modules = j["target_modules"].get<std::vector<std::string>>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(source + ": fields 'r' and 'lora_alpha' must be numbers: " + e.what());
  }
  if (c.r <= 0) throw ModelError(source + ": field 'r' must be > 0");
  return c;
}

LoraAdapter::LoraAdapter(const std::string& dir)
    : cfg_(parse_lora_config(read_text_file(dir + "/adapter_config.json"), dir + "/adapter_config.json")),
      file_(std::make_unique<SafetensorsFile>(dir + "/adapter_model.safetensors")) {
  for (const auto& [name, view] : file_->tensors()) {
    std::string base;
    char half = 0;
    if (!split_lora_name(name, &base, &half)) continue;
    Pair& p = pairs_[base];
    (half == 'A' ? p.a : p.b) = &view;
  }
  for (const auto& [base, pair] : pairs_) {
    if (!pair.a || !pair.b) {
      throw ModelError(file_->path() + ": adapter for '" + base + "' has only one of lora_A/lora_B");
    }
  }
}

const LoraAdapter::Pair* LoraAdapter::find(const std::string& base_weight) const {
  auto it = pairs_.find(base_weight);
  return it == pairs_.end() ? nullptr : &it->second;
}

bool LoraAdapter::covers(const std::string& base_weight) const { return find(base_weight) != nullptr; }

std::vector<std::string> LoraAdapter::covered_weights() const {
  std::vector<std::string> out;
  for (const auto& p : pairs_) out.push_back(p.first);
  return out;
}

void LoraAdapter::merge_into(std::span<float> w, const std::string& base_weight, int out, int in) const {
  const Pair* p = find(base_weight);
  if (!p) throw ModelError(file_->path() + ": no adapter for '" + base_weight + "'");
  const int r = cfg_.r;
  const std::vector<int64_t> a_shape{r, in}, b_shape{out, r};
  if (p->a->shape != a_shape || p->b->shape != b_shape) {
    throw ModelError(file_->path() + ": adapter for '" + base_weight + "' has A/B shapes that do not match " +
                     "r=" + std::to_string(r) + ", weight [" + std::to_string(out) + ", " +
                     std::to_string(in) + "]");
  }
  if (w.size() != static_cast<size_t>(out) * in) throw ModelError("merge_into: weight buffer size mismatch");
  std::vector<float> a(static_cast<size_t>(r) * in), b(static_cast<size_t>(out) * r);  // [r, in], [out, r]
  to_f32(a, *p->a);
  to_f32(b, *p->b);
  const float scale = cfg_.scale();
  // Row i of W gains scale · Σ_k B[i,k] · A[k,:]; scaling B's row first keeps
  // the inner loop a plain axpy over A's contiguous rows.
  for (int i = 0; i < out; ++i) {
    float* wi = w.data() + static_cast<size_t>(i) * in;
    for (int k = 0; k < r; ++k) {
      const float c = scale * b[static_cast<size_t>(i) * r + k];
      const float* ak = a.data() + static_cast<size_t>(k) * in;
      for (int j = 0; j < in; ++j) wi[j] += c * ak[j];
    }
  }
}

}  // namespace chatradio::model
