// Float conversions of checkpoint tensors (declared in safetensors.h): IEEE
// half and bfloat16 <-> float32, and to_f32, the one door every float weight
// passes through on its way into a model. That door also refuses non-finite
// values: a NaN or Inf weight poisons every logit downstream, so it is caught
// here, in the pass that already reads each element (the check is one AND and
// compare per element on data streaming from memory, costing no extra pass).
#include <bit>
#include <cstring>
#include <string>
#include <vector>

#include "model/errors.h"
#include "model/safetensors.h"

namespace chatradio::model {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: renormalise so the leading 1 becomes the implicit bit.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return sign | 0x7c00u;
    // NaN: keep the top payload bits and force the quiet bit so the payload
    // truncation can never turn it into infinity.
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  // 65520 is the midpoint between the largest half (65504) and 2^16; ties go
  // to even, and 65504's mantissa is odd, so 65520 already rounds to inf.
  if (ax >= 0x477ff000u) return sign | 0x7c00u;
  if (ax >= 0x38800000u) {  // >= 2^-14: normal half
    uint32_t h = ((ax >> 23) - 127 + 15) << 10 | ((ax >> 13) & 0x3ffu);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half (units of 2^-24), or zero.
  const uint32_t e = ax >> 23;
  // Below 2^-25 (half the smallest subnormal) everything rounds to zero;
  // 2^-25 itself (e == 102) is a tie and the rounding below sends it to 0 too.
  if (e < 102) return sign;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // value / 2^-24 = m * 2^(e - 126)
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become 0x400, the smallest normal: correct
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN stays NaN
  // Round to nearest even; overflow past the largest bf16 correctly yields inf.
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

namespace {

// Exponent-all-ones masks: a value is NaN or +-Inf exactly when these bits are set.
constexpr uint32_t kF32ExpMask = 0x7f800000u;
constexpr uint16_t kF16ExpMask = 0x7c00u;
constexpr uint16_t kBf16ExpMask = 0x7f80u;

uint16_t load_half_bits(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  if constexpr (std::endian::native == std::endian::big) h = static_cast<uint16_t>((h >> 8) | (h << 8));
  return h;
}

uint32_t load_f32_bits(const uint8_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  if constexpr (std::endian::native == std::endian::big) x = __builtin_bswap32(x);
  return x;
}

// Elements [begin, end) of a float tensor hold a NaN or Inf: finds the first
// and throws naming the tensor, its flat and its multi-dimensional index.
[[noreturn]] void throw_non_finite(const TensorView& t, int64_t begin, int64_t end) {
  int64_t i = begin;
  float v = 0.0f;
  for (; i < end; ++i) {
    const uint8_t* p = t.data + static_cast<size_t>(i) * dtype_size(t.dtype);
    v = t.dtype == DType::F32 ? std::bit_cast<float>(load_f32_bits(p))
        : t.dtype == DType::F16 ? f16_to_f32(load_half_bits(p))
                                : bf16_to_f32(load_half_bits(p));
    if (v != v || v - v != 0.0f) break;  // NaN, or Inf (Inf - Inf is NaN)
  }
  std::vector<int64_t> at(t.shape.size());
  int64_t rest = i;
  for (size_t d = t.shape.size(); d-- > 0;) {
    at[d] = t.shape[d] ? rest % t.shape[d] : 0;
    rest = t.shape[d] ? rest / t.shape[d] : 0;
  }
  const char* what = v != v ? "NaN" : v > 0 ? "+Inf" : "-Inf";
  throw ModelError(t.file + ": tensor '" + t.name + "': element " + std::to_string(i) + " " + shape_str(at) +
                   " is " + what + "; a checkpoint with non-finite weights would produce garbage, refusing it");
}

}  // namespace

void to_f32(std::span<float> dst, const TensorView& t) {
  if (static_cast<int64_t>(dst.size()) != t.numel())
    throw ModelError(t.file + ": tensor '" + t.name + "': destination holds " + std::to_string(dst.size()) +
                     " floats, tensor has " + std::to_string(t.numel()));
  to_f32(dst, t, 0);
}

namespace {

// Elements [offset, offset + n) of `t`, or a ModelError naming them.
void check_range(const TensorView& t, int64_t offset, int64_t n) {
  if (offset < 0 || n < 0 || offset + n > t.numel())
    throw ModelError(t.file + ": tensor '" + t.name + "': elements [" + std::to_string(offset) + ", " +
                     std::to_string(offset + n) + ") are outside its " + std::to_string(t.numel()));
}

}  // namespace

void to_f32(std::span<float> dst, const TensorView& t, int64_t offset) {
  const int64_t n = static_cast<int64_t>(dst.size());
  check_range(t, offset, n);
  // Tensor data need not be aligned (the header length decides where the data
  // section starts), so elements are read with memcpy, never by casting. The
  // non-finite flag is OR-ed branch-free so the loops stay vectorisable.
  uint32_t non_finite = 0;
  switch (t.dtype) {
    case DType::F32: {
      const uint8_t* src = t.data + 4 * offset;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t x = load_f32_bits(src + 4 * i);
        dst[static_cast<size_t>(i)] = std::bit_cast<float>(x);
        non_finite |= static_cast<uint32_t>((x & kF32ExpMask) == kF32ExpMask);
      }
      break;
    }
    case DType::F16:
    case DType::BF16: {
      const bool half = t.dtype == DType::F16;
      const uint16_t mask = half ? kF16ExpMask : kBf16ExpMask;
      const uint8_t* src = t.data + 2 * offset;
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = load_half_bits(src + 2 * i);
        dst[static_cast<size_t>(i)] = half ? f16_to_f32(h) : bf16_to_f32(h);
        non_finite |= static_cast<uint32_t>((h & mask) == mask);
      }
      break;
    }
    default:
      throw ModelError(t.file + ": tensor '" + t.name + "': dtype " + dtype_name(t.dtype) +
                       " cannot be converted to float32 (expected F32, F16 or BF16)");
  }
  if (non_finite) throw_non_finite(t, offset, offset + n);
}

void check_finite(const TensorView& t) { check_finite(t, 0, t.numel()); }

void check_finite(const TensorView& t, int64_t offset, int64_t n) {
  check_range(t, offset, n);
  uint32_t non_finite = 0;
  switch (t.dtype) {
    case DType::F32: {
      const uint8_t* src = t.data + 4 * offset;
      for (int64_t i = 0; i < n; ++i) {
        non_finite |= static_cast<uint32_t>((load_f32_bits(src + 4 * i) & kF32ExpMask) == kF32ExpMask);
      }
      break;
    }
    case DType::F16:
    case DType::BF16: {
      const uint16_t mask = t.dtype == DType::F16 ? kF16ExpMask : kBf16ExpMask;
      const uint8_t* src = t.data + 2 * offset;
      for (int64_t i = 0; i < n; ++i) {
        non_finite |= static_cast<uint32_t>((load_half_bits(src + 2 * i) & mask) == mask);
      }
      break;
    }
    default:
      throw ModelError(t.file + ": tensor '" + t.name + "': dtype " + dtype_name(t.dtype) +
                       " holds no floats to check (expected F32, F16 or BF16)");
  }
  if (non_finite) throw_non_finite(t, offset, offset + n);
}

}  // namespace chatradio::model
