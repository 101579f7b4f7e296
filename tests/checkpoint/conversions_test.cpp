// f16 / bf16 conversions. The oracle is independent of the code under test:
// exact arithmetic in double (every f16, bf16 and f32 value is exact in
// double), plus the compiler's own _Float16 where it exists.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "model/safetensors.h"

namespace chatradio::model {
namespace {

// Value of a half bit pattern, computed from the IEEE definition.
double half_value(uint16_t h) {
  int sign = (h & 0x8000) ? -1 : 1;
  int exp = (h >> 10) & 0x1f;
  int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

// Reference round-to-nearest-even to 16 bits: pick the nearer of the two
// neighbouring encodings, the even one on a tie. `value_of` decodes;
// `truncated` is the encoding of f (f >= 0) rounded toward zero.
template <class Decode>
uint16_t reference_round(float f, uint16_t truncated, Decode value_of) {
  double x = f;
  uint16_t lo = truncated, hi = static_cast<uint16_t>(truncated + 1);
  double dlo = std::fabs(x - value_of(lo)), dhi = std::fabs(value_of(hi) - x);
  if (std::isnan(dhi) || dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

double bf16_value(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// The half encoding of |f| rounded toward zero (f finite, |f| < 65520).
uint16_t half_truncate(float f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  double a = std::fabs(static_cast<double>(f));
  // Largest half not above a: binary search over the monotone positive encodings.
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {
    uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (half_value(mid) <= a) lo = mid; else hi = static_cast<uint16_t>(mid - 1);
  }
  return sign | lo;
}

// Rounding is symmetric in the sign, so round |f| and reattach the sign.
uint16_t reference_f16(float f) {
  if (std::isnan(f)) return 0x7e00;
  float a = std::fabs(f);
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (a >= 65520.0f) return sign | 0x7c00;
  uint16_t r = reference_round(a, half_truncate(a), [](uint16_t h) { return half_value(h); });
  return sign | r;
}

uint16_t reference_bf16(float f) {
  float a = std::fabs(f);
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  uint16_t trunc = static_cast<uint16_t>(std::bit_cast<uint32_t>(a) >> 16);
  if (trunc == 0x7f7f) {  // the rounding up neighbour is infinity
    // IEEE overflow: round as if the exponent range were unbounded (next
    // value 2^128); 0x7f7f is odd, so a tie also goes up, to infinity.
    double dlo = a - bf16_value(0x7f7f), dhi = std::ldexp(1.0, 128) - a;
    return sign | (dlo < dhi ? 0x7f7f : 0x7f80);
  }
  return sign | reference_round(a, trunc, bf16_value);
}

// A spread of f32 bit patterns: every exponent, many mantissas, both signs,
// plus ties (low bits exactly 100..0) and their neighbours.
std::vector<uint32_t> sample_floats() {
  std::vector<uint32_t> v;
  for (uint64_t x = 0; x <= 0xffffffffull; x += 40503) v.push_back(static_cast<uint32_t>(x));
  for (uint32_t e = 0; e < 255; ++e)
    for (uint32_t m : {0u, 1u, 0x1000u, 0x1001u, 0xfffu, 0x3000u, 0x8000u, 0x8001u, 0x7fffu, 0x18000u, 0x7fffffu,
                       0x400000u, 0x2000u, 0x6000u, 0x7fe000u, 0x7ff000u})
      for (uint32_t s : {0u, 0x80000000u}) v.push_back(s | e << 23 | m);
  return v;
}

TEST(F16, EveryHalfDecodesExactly) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    double want = half_value(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;  // -0 stays -0
    }
  }
}

TEST(F16, RoundTripIsIdentityForEveryNonNaNHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaNs checked separately
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(F16, SubnormalsAndSpecials) {
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_f32(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));  // signalling NaN stays NaN

  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);  // overflow -> inf
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);  // below the midpoint
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // midpoint, ties to even (inf)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24 -> 0 (even)
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: tie -> 2 (even)
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);  // 2.5 units: tie -> 2 (even)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -30)), 0x0000);  // far below: zero
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -30)), 0x8000);  // keeps the sign
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  // Largest subnormal + half a unit rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);

  // NaNs, including ones whose payload lives only in the low bits, stay NaN.
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f801fffu}) {
    uint16_t h = f32_to_f16(std::bit_cast<float>(bits));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << bits;
    EXPECT_NE(h & 0x3ff, 0) << std::hex << bits;
    EXPECT_EQ((h & 0x8000) != 0, (bits & 0x80000000u) != 0) << std::hex << bits;
  }
}

TEST(F16, RoundingMatchesExactReference) {
  for (uint32_t bits : sample_floats()) {
    float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), reference_f16(f)) << std::hex << "bits 0x" << bits << " value " << f;
  }
}

#ifdef __FLT16_MAX__
// A second, independent oracle where the compiler has a half type (its
// conversion is IEEE round-to-nearest-even).
TEST(F16, MatchesCompilerFloat16) {
  for (uint32_t bits : sample_floats()) {
    float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    uint16_t want = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
    ASSERT_EQ(f32_to_f16(f), want) << std::hex << "bits 0x" << bits;
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float want = static_cast<float>(std::bit_cast<_Float16>(static_cast<uint16_t>(h)));
    float got = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got));
    } else {
      ASSERT_EQ(got, want) << std::hex << h;
    }
  }
}
#endif

TEST(BF16, DecodeAndRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    ASSERT_EQ(std::bit_cast<uint32_t>(f), h << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), h) << std::hex << h;
    }
  }
}

TEST(BF16, SpecialsAndRounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past max -> inf
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);  // above tie
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x00008000u)), 0x0000);  // subnormal tie -> even 0
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x00018000u)), 0x0002);  // subnormal tie -> even 2
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu}) {
    uint16_t h = f32_to_bf16(std::bit_cast<float>(bits));
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << bits;
    EXPECT_EQ((h & 0x8000) != 0, (bits & 0x80000000u) != 0);
  }
}

TEST(BF16, RoundingMatchesExactReference) {
  for (uint32_t bits : sample_floats()) {
    float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), reference_bf16(f)) << std::hex << "bits 0x" << bits;
  }
}

}  // namespace
}  // namespace chatradio::model
