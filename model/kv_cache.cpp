#include "model/kv_cache.h"

#include <cstring>
#include <initializer_list>

namespace chatradio::model {

const char* kv_dtype_name(KvDtype d) { return d == KvDtype::kF16 ? "f16" : "f32"; }

KvCache::KvCache(int n_layers, int n_blocks, int block_size, int kv_dim, KvDtype dtype)
    : dtype_(dtype),
      block_bytes_(static_cast<size_t>(block_size) * kv_dim * (dtype == KvDtype::kF16 ? 2 : 4)),
      layer_bytes_(block_bytes_ * n_blocks),
      layers_(n_layers) {
  for (Layer& l : layers_) {
    // new T[n] without () leaves the bytes uninitialised: the kernel maps the
    // pages lazily, so RSS follows use, not the pool size.
    l.k.reset(new std::byte[layer_bytes_]);
    l.v.reset(new std::byte[layer_bytes_]);
  }
}

void KvCache::copy_block(int dst, int src) {
  for (Layer& l : layers_) {
    for (std::byte* c : {l.k.get(), l.v.get()}) std::memcpy(c + dst * block_bytes_, c + src * block_bytes_, block_bytes_);
  }
}

}  // namespace chatradio::model
