// The exp every CPU float kernel with a SIMD path uses (softmax, SiLU), so the
// scalar path and the SIMD paths compute the same bits: Cephes-style range
// reduction and a degree-5 polynomial (~2 ulp), written op by op (the files
// that use it are built with -ffp-contract=off). x below kExpMin (or NaN)
// gives 0, x above kExpMax gives +inf.
//
// The 8-lane twin is exp8 in simd_avx2.h; change both together.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace chatradio::kernels::cpu {

inline constexpr float kExpMin = -87.0f;
inline constexpr float kExpMax = 88.0f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                      4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// Only for translation units built without ISA flags (the SIMD units use
// exp8, so no ISA-specific copy of this inline function can exist).
inline float exp_poly(float x) {
  if (!(x >= kExpMin)) return 0.0f;
  if (x > kExpMax) return INFINITY;
  const float fx = std::nearbyint(x * kLog2e);
  float r = x - fx * kLn2Hi;
  r = r - fx * kLn2Lo;
  const float z = r * r;
  float y = kExpPoly[0];
  for (int i = 1; i < 6; ++i) y = y * r + kExpPoly[i];
  y = y * z;
  y = y + r;
  y = y + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int>(fx) + 127) << 23;
  float pow2;
  std::memcpy(&pow2, &bits, 4);
  return y * pow2;
}

}  // namespace chatradio::kernels::cpu
