#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void add(float* out, const float* a, const float* b, int n) {
  for (int i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace chatradio::kernels::cpu
