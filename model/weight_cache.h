// The int4 weights of a checkpoint in the kernel's layout, kept on disk so a
// restart maps them instead of rebuilding them (docs/weight-cache.md).
//
// Building the layout is most of a warm int4 load: repacking every GPTQ
// linear and quantizing a float lm_head (7B: ~9 CPU-s), and filling 3.5 GB of
// fresh anonymous memory, whose page faults dominate in a VM. A cache file is
// a safetensors file (so it is validated like a checkpoint before any byte is
// used) holding, per linear, the Q4Matrix arrays; matrices read from it borrow
// the mapping, the pages the page cache already holds.
//
// Validity. The file name carries a key: a hash of the cache and layout
// versions, the load options, config.json and quantize_config.json, and of
// each checkpoint file's name, size, modification time and safetensors
// header. A checkpoint edited in place keeping all of those would not be
// noticed (delete the cache, or run with it off). Each matrix's bytes carry a
// content hash, checked as the matrix is loaded: a damaged file is a
// WeightCacheError, after which the loader rebuilds from the checkpoint.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/q4.h"
#include "model/errors.h"
#include "model/safetensors.h"

namespace chatradio::model {

// A cache file that cannot be used (damaged, or not what its name claims).
class WeightCacheError : public ModelError {
 public:
  using ModelError::ModelError;
};

// 64-bit hash of bytes (four interleaved multiply-rotate lanes: ~1 byte per
// cycle). Detects damage, not tampering: whoever can write the cache can
// write the checkpoint.
uint64_t content_hash(const void* data, size_t n, uint64_t seed = 0);

// Hex key of `model_dir`'s checkpoint loaded with `options` (a string naming
// every load option the weights depend on). Reads the small files and the
// safetensors headers only. Throws ModelError when a file cannot be read.
std::string weight_cache_key(const Checkpoint& ckpt, const std::string& options);

// "chatradio-q4-<key>.cache": the name of the cache for a key.
std::string weight_cache_file_name(const std::string& key);

class WeightCache {
 public:
  // Maps dir/weight_cache_file_name(key). Returns null when there is no such
  // file; throws WeightCacheError when there is one but it is not a valid
  // cache for that key.
  static std::unique_ptr<WeightCache> open(const std::string& dir, const std::string& key);

  const std::string& path() const { return file_->path(); }
  bool has(const std::string& linear) const;
  // The mapped tensors of a linear, for prefetching and populating its pages.
  std::vector<const TensorView*> views(const std::string& linear) const;
  // Linear `linear` ("model.layers.0.self_attn.q_proj", "lm_head") as a
  // borrowed matrix of [out, in], after checking its content hash and
  // dimensions. Throws WeightCacheError.
  kernels::cpu::Q4Matrix get(const std::string& linear, int out, int in) const;

 private:
  explicit WeightCache(std::shared_ptr<const SafetensorsFile> file) : file_(std::move(file)) {}
  std::shared_ptr<const SafetensorsFile> file_;
};

// Writes the matrices (name, matrix) as dir/weight_cache_file_name(key),
// through a temporary file renamed when complete, then removes other
// chatradio-q4-*.cache files in dir (caches of earlier checkpoints or
// versions). Returns the bytes written. Throws ModelError (nothing is left
// behind but the old caches).
// `cancel` (may be null) is polled between arrays: when it becomes true the
// write stops with a ModelError and leaves nothing behind.
uint64_t write_weight_cache(const std::string& dir, const std::string& key,
                            const std::vector<std::pair<std::string, const kernels::cpu::Q4Matrix*>>& matrices,
                            const std::atomic<bool>* cancel = nullptr);

}  // namespace chatradio::model
