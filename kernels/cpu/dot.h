// The float dot product every CPU float kernel uses, so that all of them sum in
// the same fixed order (eight interleaved partial sums, combined pairwise):
// vectorisable without -ffast-math and independent of how work is split.
#pragma once

namespace chatradio::kernels::cpu {

inline float dot_f32(const float* a, const float* b, int n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) s[i & 7] += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

}  // namespace chatradio::kernels::cpu
