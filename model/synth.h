// `chatradio synth`: a random-weight checkpoint with the exact shapes of a
// real model, for benchmarks and load tests where the real weights are not
// at hand (or too big to ship). Deterministic for a seed: every tensor draws
// from its own generator seeded by (seed, tensor name), so the bytes do not
// depend on write order or sharding.
//
// Values mimic a trained Llama's statistics: linear and embedding weights
// with std ~0.02, norms ~1. The int4 format generates GPTQ tensors directly
// (bell-shaped nibbles, per-group scales around 0.01, zeros 7 or 8), never a
// float matrix, so a 13B int4 checkpoint needs no more memory than one layer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/quantize_config.h"
#include "model/quantizer.h"

namespace chatradio::model {

// The config of a known shape (llama2-7b, llama2-13b, tinyllama-1.1b,
// stories260k), or nullopt.
std::optional<LlamaConfig> synth_shape(const std::string& name);
std::vector<std::string> synth_shape_names();

enum class SynthFormat { kInt4, kF16 };

struct SynthOptions {
  std::string shape{};                  // a synth_shape_names() entry
  SynthFormat format = SynthFormat::kInt4;
  uint64_t seed = 0;
  int group_size = 128;                 // int4 only
  std::string tokenizer{};              // copied as tokenizer.model when set
  uint64_t max_shard_bytes = CheckpointWriter::kDefaultMaxShardBytes;
};

struct SynthResult {
  uint64_t out_bytes = 0;          // tensor bytes written
  std::vector<std::string> files;  // inside the output directory
};

// Writes config.json (and quantize_config.json for int4) plus the tensors to
// out_dir (absent or empty), checking first that the disk has room. Throws
// ModelError; out_dir is then left as it was found.
SynthResult synth_checkpoint(const std::string& out_dir, const SynthOptions& opts, const ProgressFn& progress = {});

// config.json text of a Llama model (LlamaForCausalLM, silu, torch_dtype
// float16), with transformers' quantization_config when `quant` is set.
std::string llama_config_json(const LlamaConfig& cfg, const std::optional<QuantizeConfig>& quant);

}  // namespace chatradio::model
