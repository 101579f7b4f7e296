#include <cmath>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * dim;
    float* yr = out + static_cast<int64_t>(r) * dim;
    // Accumulate in double: the reference must not drift on 4096-wide rows.
    double ss = 0.0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int i = 0; i < dim; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

}  // namespace chatradio::kernels::cpu
