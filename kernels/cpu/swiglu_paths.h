// The SwiGLU paths, shared by swiglu.cpp (driver + scalar) and swiglu_avx2.cpp.
// Both compute out[i] = g / (1 + exp_poly(-g)) * up[i], g = gate[i], with the
// same float ops, so the same bits.
#pragma once

#include <cstdint>

namespace chatradio::kernels::cpu::detail {

// Elements [i0, i1); out may alias gate or up.
using SwigluFn = void (*)(float* out, const float* gate, const float* up, int64_t i0, int64_t i1);
void swiglu_scalar(float* out, const float* gate, const float* up, int64_t i0, int64_t i1);
void swiglu_avx2(float* out, const float* gate, const float* up, int64_t i0, int64_t i1);

}  // namespace chatradio::kernels::cpu::detail
