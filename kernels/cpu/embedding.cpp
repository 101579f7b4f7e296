#include <cstring>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void embedding(float* out, const float* table, const int32_t* ids, int n_tokens, int dim) {
  for (int t = 0; t < n_tokens; ++t) {
    std::memcpy(out + static_cast<int64_t>(t) * dim, table + static_cast<int64_t>(ids[t]) * dim,
                sizeof(float) * dim);
  }
}

}  // namespace chatradio::kernels::cpu
