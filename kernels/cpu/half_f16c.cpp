// F16C body of floats_to_halves (half.h). Compiled with -mavx -mf16c and
// reached only through the runtime dispatch in half.cpp.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/half.h"

namespace chatradio::kernels::cpu::detail {

void floats_to_halves_f16c(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = static_cast<uint16_t>(_cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT));
}

}  // namespace chatradio::kernels::cpu::detail

#endif  // x86
