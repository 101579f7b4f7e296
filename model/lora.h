// PEFT LoRA adapters applied to a Llama checkpoint's weights before it is
// quantized, as the ChatRadio-Valuer paper merged its adapter (r = 64,
// alpha = 16) for serving. Per weight of the model, with s = lora_alpha / r:
//   lora_A [r, in] + lora_B [out, r] of a linear:        W' = W + s · B · A
//   lora_embedding_A [r, vocab] + _B [dim, r] (embed):  E' = E + s · (B · A)ᵀ
//   a saved module (modules_to_save, a resized embedding) or a LoRA layer's
//   saved base_layer weight:                             W' = the saved tensor
// (a saved base layer first, then its LoRA delta). Every tensor of the file
// is one of these or an error naming it: nothing is silently skipped. The
// full list of what is applied and what is refused: docs/lora.md.
#pragma once

#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace chatradio::model {

// How PEFT names modules in target_modules / exclude_modules: a list of names
// (a module path matches a name it equals or ends with after a dot), or one
// regular expression the whole path must match, or PEFT's "all-linear".
struct ModuleSelector {
  std::vector<std::string> names;
  std::string regex;  // empty when a list (or absent)

  bool empty() const { return names.empty() && regex.empty(); }
  // `path` is a module path ("model.layers.0.self_attn.q_proj");
  // `decoder_linear` says whether it is one of q/k/v/o/gate/up/down.
  bool matches(const std::string& path, bool decoder_linear) const;
};

struct LoraConfig {
  int r = 0;
  float alpha = 0.0f;
  ModuleSelector target_modules;
  ModuleSelector exclude_modules;
  std::vector<std::string> modules_to_save;
  std::vector<int> layers_to_transform;  // empty = every layer
  float scale() const { return alpha / static_cast<float>(r); }
};

// Parses adapter_config.json; rejects what we would apply wrongly, naming the
// field: another peft_type, fan_in_fan_out, use_rslora, use_dora, bias other
// than "none", lora_bias, rank/alpha patterns, initialisations that change the
// base model (PiSSA, OLoRA, CorDA, LoftQ), trainable tokens, layer
// replication, target_parameters, aLoRA, Arrow and QALoRA.
LoraConfig parse_lora_config(const std::string& json_text, const std::string& source);

// One adapter (DIR/adapter_config.json + DIR/adapter_model.safetensors),
// checked up front against the model it will be applied to: every tensor is
// classified, its module must exist, its shape must fit, its values must be
// floats, LoRA weights must belong to target_modules, and the adapter must
// change something. Throws ModelError naming the file and tensor.
class LoraAdapter {
 public:
  LoraAdapter(const std::string& dir, const LlamaConfig& model);
  ~LoraAdapter();
  LoraAdapter(LoraAdapter&&) noexcept;
  LoraAdapter& operator=(LoraAdapter&&) noexcept;

  const std::string& dir() const { return dir_; }
  const LoraConfig& config() const { return cfg_; }
  // Whether the adapter edits this weight (HF name, "model.norm.weight").
  bool touches(const std::string& weight) const;
  // The weights it edits, sorted.
  std::vector<std::string> touched_weights() const;
  // Edits w, the float32 values of `weight` in the model's shape ([rows,
  // cols], or [rows] for a norm): the saved replacement, then the LoRA delta.
  // Returns whether w changed: a replacement that differs from w, or a delta
  // that is not zero.
  bool apply(std::span<float> w, const std::string& weight) const;

  struct Edit;  // one weight's replacement and/or LoRA pair; opaque (lora.cpp)

 private:
  std::string dir_;
  LoraConfig cfg_;
  std::unique_ptr<SafetensorsFile> file_;
  std::vector<Edit> edits_;  // sorted by weight name
  const Edit* find(const std::string& weight) const;
};

// The adapters of `chatradio quantize --lora A --lora B ...`, applied in that
// order: B sees A's result (a domain adapter, then a task adapter trained on
// top of it). All are loaded and checked before anything is written.
class LoraStack {
 public:
  LoraStack(const std::vector<std::string>& dirs, const LlamaConfig& model);

  bool touches(const std::string& weight) const;
  // Applies every adapter that edits `weight`, in order.
  void apply(std::span<float> w, const std::string& weight);
  // Once every weight went through apply(): throws if an adapter edit was
  // never applied, or if an adapter changed nothing at all (e.g. its saved
  // modules equal the weights they replace). Returns the number of weights
  // that changed.
  int finish() const;

 private:
  std::vector<LoraAdapter> adapters_;
  std::vector<std::set<std::string>> applied_;  // per adapter
  std::vector<bool> changed_;                   // per adapter
  std::set<std::string> changed_weights_;
};

}  // namespace chatradio::model
