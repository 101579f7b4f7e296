// The CPU backend's paged K/V pool: per layer, K and V of shape
// [n_blocks, block_size, n_kv_heads, head_dim], in float or IEEE half.
//
// Half is the default: it halves the memory per cached token (7B: 0.5 MB
// instead of 1 MB) and the bytes attention streams per decode step, as the
// CUDA backend and llama.cpp do. Float stays available for bit-exact
// comparisons with float references (llama2.c).
//
// Memory is allocated but not touched: a pool sized for a whole hospital's
// concurrency costs resident memory only as blocks are first written (the
// engine only reads slots it has written).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace chatradio::model {

enum class KvDtype : uint8_t { kF16, kF32 };

const char* kv_dtype_name(KvDtype d);  // "f16" | "f32"
// The inverse of kv_dtype_name; nullopt for any other name.
std::optional<KvDtype> parse_kv_dtype(std::string_view name);

class KvCache {
 public:
  KvCache(int n_layers, int n_blocks, int block_size, int kv_dim, KvDtype dtype);

  KvDtype dtype() const { return dtype_; }
  // Bytes of K plus V over all layers (allocated; resident only once written).
  size_t bytes() const { return 2 * layer_bytes_ * layers_.size(); }

  // The layer's caches; valid for the dtype only (f32() on an f16 cache and the
  // reverse return null).
  float* k_f32(int layer) { return as<float>(layers_[layer].k, KvDtype::kF32); }
  float* v_f32(int layer) { return as<float>(layers_[layer].v, KvDtype::kF32); }
  uint16_t* k_f16(int layer) { return as<uint16_t>(layers_[layer].k, KvDtype::kF16); }
  uint16_t* v_f16(int layer) { return as<uint16_t>(layers_[layer].v, KvDtype::kF16); }

  // Copies block src to block dst in every layer (copy-on-write of a shared
  // prefix block). Ids are checked by the caller.
  void copy_block(int dst, int src);

 private:
  // Default-initialised bytes (new std::byte[n]), so untouched pages.
  struct Layer {
    std::unique_ptr<std::byte[]> k, v;  // [n_blocks * block_bytes_]
  };
  template <typename T>
  T* as(const std::unique_ptr<std::byte[]>& p, KvDtype want) {
    return dtype_ == want ? reinterpret_cast<T*>(p.get()) : nullptr;
  }

  KvDtype dtype_;
  size_t block_bytes_;  // one block of one layer's K (or V)
  size_t layer_bytes_;  // one layer's K (or V)
  std::vector<Layer> layers_;
};

}  // namespace chatradio::model
