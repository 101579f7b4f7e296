// PEFT LoRA adapters merged into base weights before quantization, as the
// ChatRadio-Valuer paper merged its adapter (r = 64, alpha = 16) for serving:
//   W' = W + (lora_alpha / r) · B · A,   A[r, in], B[out, r], W[out, in].
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace chatradio::model {

struct LoraConfig {
  int r = 0;
  float alpha = 0.0f;
  std::vector<std::string> target_modules;  // e.g. q_proj, v_proj
  float scale() const { return alpha / static_cast<float>(r); }
};

// Parses adapter_config.json; rejects what we would merge wrongly
// (fan_in_fan_out, use_rslora, use_dora, a non-LORA peft_type, bias != none).
LoraConfig parse_lora_config(const std::string& json_text, const std::string& source);

class LoraAdapter {
 public:
  // Reads DIR/adapter_config.json and DIR/adapter_model.safetensors.
  explicit LoraAdapter(const std::string& dir);

  const LoraConfig& config() const { return cfg_; }
  // True when the adapter has A/B for this base weight name, e.g.
  // "model.layers.0.self_attn.q_proj.weight".
  bool covers(const std::string& base_weight) const;
  // w[out, in] += scale · B · A for the base weight; checks A/B shapes against
  // out/in and throws ModelError naming the tensor on mismatch.
  void merge_into(std::span<float> w, const std::string& base_weight, int out, int in) const;
  // Base weights the adapter touches (to check that every one was merged).
  std::vector<std::string> covered_weights() const;

 private:
  struct Pair {
    const TensorView* a = nullptr;  // [r, in]
    const TensorView* b = nullptr;  // [out, r]
  };
  LoraConfig cfg_;
  std::unique_ptr<SafetensorsFile> file_;
  std::map<std::string, Pair> pairs_;  // base weight name -> A/B
  const Pair* find(const std::string& base_weight) const;
};

}  // namespace chatradio::model
