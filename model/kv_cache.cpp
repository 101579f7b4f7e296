#include "model/kv_cache.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <new>
#include <string>

#include "model/errors.h"

namespace chatradio::model {

const char* kv_dtype_name(KvDtype d) { return d == KvDtype::kF16 ? "f16" : "f32"; }

std::optional<KvDtype> parse_kv_dtype(std::string_view name) {
  for (KvDtype d : {KvDtype::kF16, KvDtype::kF32}) {
    if (name == kv_dtype_name(d)) return d;
  }
  return std::nullopt;
}

namespace {

// MemAvailable of /proc/meminfo in bytes; 0 when unknown (not Linux).
size_t available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

std::string gb(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

}  // namespace

KvCache::KvCache(int n_layers, int n_blocks, int block_size, int kv_dim, KvDtype dtype)
    : dtype_(dtype),
      block_bytes_(static_cast<size_t>(block_size) * kv_dim * (dtype == KvDtype::kF16 ? 2 : 4)),
      layer_bytes_(block_bytes_ * n_blocks),
      layers_(n_layers) {
  // The pool is mapped lazily, but the engine does fill it (the prefix cache
  // keeps finished prompts until it needs their blocks), so a pool larger than
  // the memory left would end in the OOM killer mid-request: refuse it now.
  const size_t avail = available_memory_bytes();
  const std::string what = "KV cache of " + std::to_string(n_blocks) + " blocks x " + std::to_string(block_size) +
                           " tokens (" + kv_dtype_name(dtype) + ", " + gb(bytes()) + ")";
  if (avail > 0 && bytes() > avail) {
    const size_t per_block = 2 * block_bytes_ * layers_.size();
    throw ModelError(what + " does not fit in the " + gb(avail) + " of memory available; at most " +
                     std::to_string(avail / per_block) + " blocks fit" +
                     (dtype == KvDtype::kF32 ? " (twice as many in f16)" : ""));
  }
  try {
    for (Layer& l : layers_) {
      // new T[n] without () leaves the bytes uninitialised: the kernel maps the
      // pages lazily, so RSS follows use, not the pool size.
      l.k.reset(new std::byte[layer_bytes_]);
      l.v.reset(new std::byte[layer_bytes_]);
    }
  } catch (const std::bad_alloc&) {
    throw ModelError(what + " could not be allocated");
  }
}

void KvCache::copy_block(int dst, int src) {
  for (Layer& l : layers_) {
    for (std::byte* c : {l.k.get(), l.v.get()}) std::memcpy(c + dst * block_bytes_, c + src * block_bytes_, block_bytes_);
  }
}

}  // namespace chatradio::model
