#include <cstring>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* slots,
              int n_tokens, const AttnShape& shape) {
  // A slot's rows are contiguous: [block][offset] flattens to slot * row.
  const int64_t row = static_cast<int64_t>(shape.n_kv_heads) * shape.head_dim;
  for (int t = 0; t < n_tokens; ++t) {
    std::memcpy(k_cache + slots[t] * row, k + t * row, sizeof(float) * row);
    std::memcpy(v_cache + slots[t] * row, v + t * row, sizeof(float) * row);
  }
}

}  // namespace chatradio::kernels::cpu
