// `chatradio quantize`: a float Llama checkpoint (F32/F16/BF16, one file or
// shards), optionally with PEFT LoRA adapters applied first, to a GPTQ v1
// int4 checkpoint (docs/gptq-format.md). It streams: one weight is read,
// converted or quantized and written at a time, so peak memory is about one
// float32 weight matrix, not the model.
//
// Also the pieces `chatradio synth` shares: the Llama tensor list in the order
// we write it, the stored specs of a GPTQ or F16 checkpoint, and the output
// directory that cleans up after a failure.
#pragma once

#include <bit>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gptq.h"
#include "model/safetensors.h"

namespace chatradio::model {

// One weight of the Llama architecture (HF names).
struct LlamaTensor {
  enum class Kind { kEmbed, kNorm, kLinear, kLmHead };
  Kind kind = Kind::kNorm;
  std::string name;  // "model.layers.0.self_attn.q_proj.weight"
  int rows = 0;      // [rows, cols]; a norm is [rows]
  int cols = 0;      // 0 for norms

  std::vector<int64_t> shape() const;
  std::string prefix() const;  // name without ".weight" (the GPTQ tensor prefix)
};

// Every weight of a model with this config, in checkpoint order: embed, per
// layer (input norm, q, k, v, o, post-attention norm, gate, up, down), final
// norm, lm_head (absent when tied to the embedding).
std::vector<LlamaTensor> llama_tensors(const LlamaConfig& cfg);

// The four stored tensors of a GPTQ linear: prefix.qweight/.qzeros/.scales/.g_idx.
std::vector<TensorSpec> gptq_specs(const std::string& prefix, const GptqShape& s);

// Stored tensors of a checkpoint of `tensors`: linears as GPTQ with this group
// size when int4, everything else (and linears when !int4) F16.
std::vector<TensorSpec> checkpoint_specs(const std::vector<LlamaTensor>& tensors, bool int4, int group_size);

// The bytes of a contiguous container (vector, span) as a tensor stores them.
// Safetensors is little-endian and we write native order, hence the assert.
template <class C>
std::span<const uint8_t> tensor_bytes(const C& c) {
  static_assert(std::endian::native == std::endian::little, "checkpoint writers assume a little-endian host");
  return {reinterpret_cast<const uint8_t*>(c.data()), c.size() * sizeof(typename C::value_type)};
}

// Writes the four tensors of a quantized linear, in gptq_specs order.
void write_gptq(CheckpointWriter& dst, const std::string& prefix, const GptqTensors& t);

// Called after every write: the tensor just written, output bytes so far and in all.
using ProgressFn = std::function<void(const std::string& tensor, uint64_t done, uint64_t total)>;

// The --out directory of quantize and synth. It must be absent (it is then
// created) or empty: a run never mixes its files with others. Until commit(),
// destruction removes what was added through it and the directory if created
// here, so a failed run leaves nothing that looks like a checkpoint.
class OutputDir {
 public:
  explicit OutputDir(const std::string& dir);  // throws ModelError
  ~OutputDir();
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  const std::string& path() const { return dir_; }
  // Throws ModelError unless the file system has `bytes` free (plus a margin).
  void require_space(uint64_t bytes) const;
  // Registers files written by others (a CheckpointWriter) for cleanup.
  void adopt(const std::vector<std::string>& names);
  void write_text(const std::string& name, const std::string& text);
  void copy_file(const std::string& name, const std::string& from);
  void commit() { committed_ = true; }

 private:
  std::string dir_;
  bool created_ = false, committed_ = false;
  std::vector<std::string> files_;
};

struct QuantizeOptions {
  int group_size = 128;  // -1 or a positive multiple of 32
  bool sym = false;
  std::vector<std::string> lora_dirs{};  // PEFT adapters applied first, in this order (model/lora.h)
  uint64_t max_shard_bytes = CheckpointWriter::kDefaultMaxShardBytes;
};

struct QuantizeResult {
  int n_quantized = 0;    // linears stored as GPTQ int4
  int n_f16 = 0;          // tensors stored as F16 (embedding, norms, lm_head)
  int n_lora_merged = 0;  // weights the adapters changed
  uint64_t in_bytes = 0;  // source bytes read
  uint64_t out_bytes = 0;                // tensor bytes written
  std::vector<std::string> ignored;      // weightless buffers dropped (rotary_emb.inv_freq); any other unused tensor is an error
  std::vector<std::string> files;        // written, inside the output directory
};

// Quantizes model_dir into out_dir (absent or empty): every linear of the
// decoder layers becomes GPTQ (RTN, desc_act false, the grid of
// gptq_quantize, so the result equals loading the float model with
// WeightFormat::kInt4); embedding, norms and lm_head are stored F16. Writes
// quantize_config.json, config.json (torch_dtype float16, plus the
// quantization_config transformers expects) and copies the tokenizer files.
// With LoRA adapters, each weight they edit is replaced and/or gets its LoRA
// delta in float32 (adapter after adapter, model/lora.h) before it is
// quantized or stored; an adapter that does not fit the model is an error
// before anything is written, as are a layer count other than the config's, a tensor the model
// does not use (check_all_tensors_used) and a NaN or Inf weight. Throws
// ModelError; out_dir is then left as it was found.
QuantizeResult quantize_checkpoint(const std::string& out_dir, const std::string& model_dir,
                                   const QuantizeOptions& opts, const ProgressFn& progress = {});

}  // namespace chatradio::model
