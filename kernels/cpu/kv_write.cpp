#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half.h"

namespace chatradio::kernels::cpu {

// A slot's rows are contiguous: [block][offset] flattens to slot * row.
void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* slots,
              int n_tokens, const AttnShape& shape) {
  const int64_t row = static_cast<int64_t>(shape.n_kv_heads) * shape.head_dim;
  for (int t = 0; t < n_tokens; ++t) {
    std::memcpy(k_cache + slots[t] * row, k + t * row, sizeof(float) * row);
    std::memcpy(v_cache + slots[t] * row, v + t * row, sizeof(float) * row);
  }
}

void kv_write(uint16_t* k_cache, uint16_t* v_cache, const float* k, const float* v, const int32_t* slots,
              int n_tokens, const AttnShape& shape) {
  const int64_t row = static_cast<int64_t>(shape.n_kv_heads) * shape.head_dim;
  for (int t = 0; t < n_tokens; ++t) {
    floats_to_halves(k_cache + slots[t] * row, k + t * row, row);
    floats_to_halves(v_cache + slots[t] * row, v + t * row, row);
  }
}

}  // namespace chatradio::kernels::cpu
