#include <cmath>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void swiglu(float* out, const float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace chatradio::kernels::cpu
