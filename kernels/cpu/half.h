// IEEE binary16 <-> float, the one conversion every CPU kernel and the model
// loader use (kernels/ must not depend on model/): round-to-nearest-even,
// subnormals, inf and NaN. The bulk forms take the F16C path where the CPU has
// it; it gives the same bits (IEEE conversions are exact or correctly rounded;
// NaN payloads aside).
#pragma once

#include <cstdint>

namespace chatradio::kernels::cpu {

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// dst[n] = float_to_half(src[n]).
void floats_to_halves(uint16_t* dst, const float* src, int64_t n);

namespace detail {
// The F16C body of floats_to_halves (half_f16c.cpp, compiled with -mf16c).
void floats_to_halves_f16c(uint16_t* dst, const float* src, int64_t n);
}  // namespace detail

}  // namespace chatradio::kernels::cpu
