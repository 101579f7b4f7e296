// Loads from checkpoint data, which may be unaligned (mmapped safetensors):
// read through memcpy. Used by the GPTQ repacking (kernels/cpu/matmul_q4.cpp)
// and the GPTQ reference dequantization (model/gptq.cpp).
//
// `static`: each file gets its own copy, so one compiled with -mavx2 or
// -mavx512* can never lend its copy to a file that must run on any x86-64.
#pragma once

#include <cstdint>
#include <cstring>

namespace chatradio::kernels::cpu {

static inline int32_t load_i32(const void* base, int64_t index) {
  int32_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(base) + index * 4, 4);
  return v;
}

static inline uint16_t load_u16(const void* base, int64_t index) {
  uint16_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(base) + index * 2, 2);
  return v;
}

}  // namespace chatradio::kernels::cpu
