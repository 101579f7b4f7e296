// AVX2 path of SwiGLU (swiglu_paths.h); the scalar path in swiglu.cpp gives the
// same bits. Compiled with -mavx2 -mfma -ffp-contract=off, reached only through
// the runtime dispatch.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/simd_avx2.h"
#include "kernels/cpu/swiglu_paths.h"

namespace chatradio::kernels::cpu::detail {

void swiglu_avx2(float* out, const float* gate, const float* up, int64_t i0, int64_t i1) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = avx2::exp8(_mm256_xor_ps(g, sign));  // exp(-g)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  if (i < i1) swiglu_scalar(out, gate, up, i, i1);
}

}  // namespace chatradio::kernels::cpu::detail

#endif  // x86
