#include "kernels/cpu/half.h"

#include <cstring>

#include "kernels/cpu/isa.h"

namespace chatradio::kernels::cpu {
namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    return bits_float(sign | float_bits(static_cast<float>(mant) * 5.9604644775390625e-8f));
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13));
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t float_to_half(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  x &= 0x7FFFFFFF;
  if (x >= 0x7F800000) return static_cast<uint16_t>(sign | (x > 0x7F800000 ? 0x7E00 : 0x7C00));
  // 65520 is the midpoint between the largest half (65504) and 2^16; ties go
  // to even, which here is infinity.
  if (x >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);
  if (x < 0x38800000) {
    // Below 2^-14: a half subnormal. Adding 0.5 lines the float's ulp up with
    // the half's (2^-24) and lets the FPU do the round-to-nearest-even.
    const float v = bits_float(x) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(v) - float_bits(0.5f)));
  }
  // Normal: rebias the exponent and round the 13 dropped bits to nearest even.
  const uint32_t odd = (x >> 13) & 1;
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFF + odd;
  return static_cast<uint16_t>(sign | (x >> 13));
}

void floats_to_halves(uint16_t* dst, const float* src, int64_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (cpu_default_isa() != CpuIsa::Scalar) {
    detail::floats_to_halves_f16c(dst, src, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

}  // namespace chatradio::kernels::cpu
