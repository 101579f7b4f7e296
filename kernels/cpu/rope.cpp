#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void rope(float* x, const int32_t* positions, int n_tokens, int n_heads, const RopeParams& p) {
  const int half = p.head_dim / 2;
  // Frequencies computed in double as HF does in float32 of (theta ** (2i/d)); the
  // angle p*inv_freq is then rounded to float before cos/sin, matching HF.
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(1.0 / std::pow(static_cast<double>(p.theta),
                                                    (2.0 * i) / p.head_dim));
  }
  std::vector<float> cs(half), sn(half);
  for (int t = 0; t < n_tokens; ++t) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cs[i] = std::cos(angle);
      sn[i] = std::sin(angle);
    }
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * p.head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

}  // namespace chatradio::kernels::cpu
