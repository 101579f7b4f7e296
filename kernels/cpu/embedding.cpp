#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half.h"

namespace chatradio::kernels::cpu {

void embedding(float* out, const float* table, const int32_t* ids, int n_tokens, int dim) {
  for (int t = 0; t < n_tokens; ++t) {
    std::memcpy(out + static_cast<int64_t>(t) * dim, table + static_cast<int64_t>(ids[t]) * dim,
                sizeof(float) * dim);
  }
}

void embedding_f16(float* out, const uint16_t* table, const int32_t* ids, int n_tokens, int dim) {
  for (int t = 0; t < n_tokens; ++t) {
    const uint16_t* row = table + static_cast<int64_t>(ids[t]) * dim;
    float* o = out + static_cast<int64_t>(t) * dim;
    for (int i = 0; i < dim; ++i) o[i] = half_to_float(row[i]);
  }
}

}  // namespace chatradio::kernels::cpu
