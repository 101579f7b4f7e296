// Helpers shared by the AVX2 kernel files: exp_poly (exp_poly.h) on 8 lanes,
// op for op, and a horizontal max. Include only from translation units built
// with -mavx2 -ffp-contract=off (never from baseline files: the linker could
// keep an AVX2 copy of these inline functions for everyone).
#pragma once

#include <immintrin.h>

#include "kernels/cpu/exp_poly.h"

namespace chatradio::kernels::cpu::avx2 {

// Largest of the 8 lanes (max is exact, so the order does not matter).
inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

inline __m256 exp8(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_GE_OQ);  // false for NaN
  const __m256 big = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMax), _CMP_GT_OQ);
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(kLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(fx, _mm256_set1_ps(kLn2Lo)));
  const __m256 z = _mm256_mul_ps(r, r);
  __m256 y = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(kExpPoly[i]));
  y = _mm256_mul_ps(y, z);
  y = _mm256_add_ps(y, r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // Lanes outside [kExpMin, kExpMax] get garbage exponents here; masked below.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  const __m256 v = _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
  return _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), big);
}

}  // namespace chatradio::kernels::cpu::avx2
