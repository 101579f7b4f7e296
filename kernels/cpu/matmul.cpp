#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void matmul(float* out, const float* x, const float* w, int m, int n, int k) {
  for (int i = 0; i < m; ++i) {
    const float* xi = x + static_cast<int64_t>(i) * k;
    for (int j = 0; j < n; ++j) {
      const float* wj = w + static_cast<int64_t>(j) * k;
      // Four partial sums let the compiler vectorise without -ffast-math while
      // keeping the summation order fixed (batch-invariant by construction).
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int p = 0;
      for (; p + 4 <= k; p += 4) {
        s0 += xi[p] * wj[p];
        s1 += xi[p + 1] * wj[p + 1];
        s2 += xi[p + 2] * wj[p + 2];
        s3 += xi[p + 3] * wj[p + 3];
      }
      for (; p < k; ++p) s0 += xi[p] * wj[p];
      out[static_cast<int64_t>(i) * n + j] = (s0 + s1) + (s2 + s3);
    }
  }
}

}  // namespace chatradio::kernels::cpu
