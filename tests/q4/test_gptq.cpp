// GPTQ v1 format: packing checked against hand-computed words (including the
// stored zero-1 offset), quantize -> dequantize error bounds for every group
// size and odd dims, the padding rule, act-order, shape validation messages,
// and the f16 conversions the format relies on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <tuple>
#include <string>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/q4.h"
#include "model/errors.h"
#include "model/gptq.h"
#include "tests/q4/q4_testing.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace chatradio::model {
namespace {

using kernels::cpu::float_to_half;
using kernels::cpu::half_to_float;
using q4test::ActOrder;
using q4test::make_act_order;
using q4test::randn;
using q4test::u32;

int nibble(const std::vector<int32_t>& words, int64_t index, int j) {
  return static_cast<int>((u32(words[index]) >> (4 * j)) & 15);
}

// w[o][i] = ((i + o) % 16) - (o + 1): every column spans exactly 16 levels,
// so scale = 1, zero = o + 1 and q = (i + o) % 16, all by hand.
TEST(Gptq, HandComputedPacking) {
  const int out = 8, in = 32;
  std::vector<float> w(out * in);  // [out, in]
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) w[o * in + i] = static_cast<float>((i + o) % 16 - (o + 1));
  const GptqTensors t = gptq_quantize(w.data(), out, in, 32, /*sym=*/false);
  ASSERT_EQ(t.qweight.size(), 4u * 8);  // [in/8, out]
  ASSERT_EQ(t.qzeros.size(), 1u);       // [1, out/8]
  ASSERT_EQ(t.scales.size(), 8u);
  EXPECT_EQ(u32(t.qweight[0 * 8 + 0]), 0x76543210u);  // inputs 0..7 of column 0, low nibble first
  EXPECT_EQ(u32(t.qweight[0 * 8 + 1]), 0x87654321u);
  EXPECT_EQ(u32(t.qweight[1 * 8 + 0]), 0xFEDCBA98u);  // inputs 8..15: negative as int32
  EXPECT_EQ(u32(t.qweight[2 * 8 + 5]), 0xCBA98765u);
  EXPECT_EQ(u32(t.qweight[3 * 8 + 7]), 0x6543210Fu);  // inputs 24..31 of column 7: 15, 0, 1, ...
  EXPECT_EQ(u32(t.qzeros[0]), 0x76543210u);           // zeros 1..8 stored as 0..7 (v1 offset)
  for (uint16_t s : t.scales) EXPECT_EQ(s, 0x3C00);   // 1.0
  for (int i = 0; i < in; ++i) EXPECT_EQ(t.g_idx[i], 0);

  std::vector<float> back(out * in);
  gptq_dequantize(back.data(), gptq_view_of(t));
  EXPECT_EQ(back, w);

  // Symmetric: zero 8 everywhere, stored 7.
  const GptqTensors s = gptq_quantize(w.data(), out, in, 32, /*sym=*/true);
  EXPECT_EQ(u32(s.qzeros[0]), 0x77777777u);
}

TEST(Gptq, HandWrittenTensorsDecode) {
  // One group, 8 outputs, 8 inputs; a stored zero nibble of 15 means 16 (the
  // value AutoGPTQ's wrapped -1 produces), which readers must accept.
  const GptqShape sh = gptq_shape(8, 8, -1);
  ASSERT_EQ(sh.n_groups, 1);
  GptqTensors t;
  t.shape = sh;
  t.qweight.assign(8, 0);
  t.qweight[3] = static_cast<int32_t>(0xF0000005u);  // column 3: input 0 -> 5, input 7 -> 15
  t.qzeros = {static_cast<int32_t>(0xF0001000u)};    // column 3 zero 2, column 7 zero 16, others 1
  t.scales.assign(8, 0x3800);                        // 0.5
  t.g_idx.assign(8, 0);
  std::vector<float> w(64);
  gptq_dequantize(w.data(), gptq_view_of(t));
  EXPECT_EQ(w[3 * 8 + 0], 0.5f * (5 - 2));
  EXPECT_EQ(w[3 * 8 + 7], 0.5f * (15 - 2));
  EXPECT_EQ(w[3 * 8 + 1], 0.5f * (0 - 2));
  EXPECT_EQ(w[7 * 8 + 0], 0.5f * (0 - 16));
  EXPECT_EQ(w[0 * 8 + 0], 0.5f * (0 - 1));
}

TEST(Gptq, ZeroPointZeroIsAvoided) {
  // All-positive group: the plain grid wants zero 0, which v1 cannot store.
  const int out = 8, in = 32;
  std::vector<float> w(out * in);
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) w[o * in + i] = 0.01f * static_cast<float>((i * 7 + o) % 16);
  const GptqTensors t = gptq_quantize(w.data(), out, in, 32, false);
  std::vector<float> back(out * in);
  gptq_dequantize(back.data(), gptq_view_of(t));
  for (int o = 0; o < out; ++o) {
    EXPECT_EQ(nibble(t.qzeros, 0, o), 0) << "zero 1, stored 0";
    const float s = half_to_float(t.scales[o]);
    for (int i = 0; i < in; ++i) EXPECT_LE(std::fabs(back[o * in + i] - w[o * in + i]), 0.5f * s * 1.001f);
  }
}

// Quantize -> dequantize over group sizes, sym/asym and odd dims: the error is
// within half a scale step (plus the f16 rounding of the scale), padding holds
// exact zeros, and the stored shapes follow the padding rule.
TEST(Gptq, RoundTripErrorAndPadding) {
  const int dims[][2] = {{64, 172}, {172, 64}, {1, 1}, {7, 13}, {13, 7}, {8, 32}, {33, 100}, {96, 256}};
  for (auto [out, in] : dims) {
    for (int group : {32, 64, 128, -1}) {
      for (bool sym : {false, true}) {
        SCOPED_TRACE("out=" + std::to_string(out) + " in=" + std::to_string(in) +
                     " group=" + std::to_string(group) + " sym=" + std::to_string(sym));
        const auto w = randn(static_cast<size_t>(out) * in, out * 1000 + in, 0.02f);
        const GptqTensors t = gptq_quantize(w.data(), out, in, group, sym);
        const GptqShape& s = t.shape;
        EXPECT_EQ(s.in_padded, (in + 7) / 8 * 8);
        EXPECT_EQ(s.out_padded, (out + 7) / 8 * 8);
        const int g = group == -1 ? s.in_padded : group;
        EXPECT_EQ(s.n_groups, (s.in_padded + g - 1) / g);
        ASSERT_EQ(t.qweight.size(), static_cast<size_t>(s.in_padded / 8) * s.out_padded);
        ASSERT_EQ(t.qzeros.size(), static_cast<size_t>(s.n_groups) * (s.out_padded / 8));
        ASSERT_EQ(t.scales.size(), static_cast<size_t>(s.n_groups) * s.out_padded);
        ASSERT_EQ(t.g_idx.size(), static_cast<size_t>(s.in_padded));
        std::vector<float> back(w.size());
        gptq_dequantize(back.data(), gptq_view_of(t));
        for (int o = 0; o < out; ++o) {
          for (int i = 0; i < in; ++i) {
            const int gi = i / g;
            const float scale = half_to_float(t.scales[gi * s.out_padded + o]);
            const int zero = nibble(t.qzeros, gi * (s.out_padded / 8) + o / 8, o % 8) + 1;
            if (sym) {
              ASSERT_EQ(zero, 8);
            }
            ASSERT_GE(zero, 1);
            // 15 * 2^-11: the f16 rounding of the scale can stretch the grid's end.
            ASSERT_LE(std::fabs(back[o * in + i] - w[o * in + i]), scale * (0.5f + 15.0f / 2048.0f))
                << "o=" << o << " i=" << i;
          }
        }
        // Padding dequantizes to exact zeros: q equals the zero point there.
        for (int o = 0; o < s.out_padded; ++o) {
          for (int i = 0; i < s.in_padded; ++i) {
            if (o < out && i < in) continue;
            const int gi = i / g;
            const int zero = nibble(t.qzeros, gi * (s.out_padded / 8) + o / 8, o % 8) + 1;
            ASSERT_EQ(nibble(t.qweight, static_cast<int64_t>(i / 8) * s.out_padded + o, i % 8), zero)
                << "padding o=" << o << " i=" << i;
          }
        }
      }
    }
  }
}

// Quantizing a matrix a slice of output rows at a time and appending the
// slices (what the loader does for a float lm_head) gives exactly the matrix
// quantized whole; mismatched slices are refused.
TEST(Gptq, SlicesAppendedEqualTheWholeMatrix) {
  for (auto [out, in, group] : {std::tuple{72, 96, 32}, {1003, 64, 64}, {40, 172, 128}}) {
    const auto w = randn(static_cast<size_t>(out) * in, out + in, 0.02f);
    const kernels::cpu::Q4Matrix whole = gptq_to_q4(gptq_view_of(gptq_quantize(w.data(), out, in, group, false)));
    kernels::cpu::Q4Matrix built;
    for (int o0 = 0; o0 < out; o0 += 16) {
      const int n = std::min(16, out - o0);
      const GptqTensors t = gptq_quantize(w.data() + static_cast<size_t>(o0) * in, n, in, group, false);
      kernels::cpu::q4_append_columns(built, gptq_to_q4(gptq_view_of(t)));
    }
    EXPECT_EQ(built.n, whole.n);
    EXPECT_EQ(built.n_panels, whole.n_panels);
    EXPECT_EQ(built.scales, whole.scales);
    EXPECT_EQ(built.zeros, whole.zeros);
    ASSERT_EQ(built.qs.size(), whole.qs.size());
    EXPECT_EQ(std::memcmp(built.qs.data(), whole.qs.data(), whole.qs.size() * sizeof(kernels::cpu::Q4Line)), 0);
  }
  const auto w = randn(12 * 64, 5, 0.02f);
  kernels::cpu::Q4Matrix a = gptq_to_q4(gptq_view_of(gptq_quantize(w.data(), 12, 64, 32, false)));
  const kernels::cpu::Q4Matrix b = gptq_to_q4(gptq_view_of(gptq_quantize(w.data(), 8, 64, 32, false)));
  EXPECT_THROW(kernels::cpu::q4_append_columns(a, b), std::invalid_argument) << "12 columns: not whole panels";
  kernels::cpu::Q4Matrix c = gptq_to_q4(gptq_view_of(gptq_quantize(w.data(), 8, 64, 64, false)));
  EXPECT_THROW(kernels::cpu::q4_append_columns(c, b), std::invalid_argument) << "different groups";
}

TEST(Gptq, ZerosStayExactAndAllZeroGroups) {
  const int out = 8, in = 64;
  auto w = randn(out * in, 5, 0.1f);
  for (int i = 0; i < in; i += 3) w[2 * in + i] = 0.0f;
  for (int i = 0; i < 32; ++i) w[5 * in + i] = 0.0f;  // an all-zero group
  for (bool sym : {false, true}) {
    const GptqTensors t = gptq_quantize(w.data(), out, in, 32, sym);
    std::vector<float> back(w.size());
    gptq_dequantize(back.data(), gptq_view_of(t));
    for (int i = 0; i < in; ++i) {
      if (w[2 * in + i] == 0.0f) {
        EXPECT_EQ(back[2 * in + i], 0.0f);
      }
    }
    for (int i = 0; i < 32; ++i) EXPECT_EQ(back[5 * in + i], 0.0f);
  }
}

TEST(Gptq, GroupSizeRules) {
  EXPECT_THROW(gptq_shape(64, 64, 16), ModelError);
  EXPECT_THROW(gptq_shape(64, 64, 0), ModelError);
  EXPECT_THROW(gptq_shape(0, 64, 32), ModelError);
  const GptqShape s = gptq_shape(64, 172, 128);  // stories260K q_proj-like: group larger than in
  EXPECT_EQ(s.n_groups, 1);
  EXPECT_EQ(s.in_padded, 64);
  EXPECT_EQ(s.out_padded, 176);
  const GptqShape d = gptq_shape(172, 64, 32);  // stories260K down_proj
  EXPECT_EQ(d.in_padded, 176);
  EXPECT_EQ(d.n_groups, 6);
  const GptqShape l = gptq_shape(11008, 4096, 128);  // Llama-2-7B down_proj: no padding
  EXPECT_EQ(l.in_padded, 11008);
  EXPECT_EQ(l.n_groups, 86);
}

TEST(Gptq, ActOrderDequantizeHonoursGidx) {
  const int out = 24, in = 256;
  const ActOrder a = make_act_order(out, in, 64, 11);
  EXPECT_FALSE(gptq_is_act_order(gptq_view_of(a.plain)));
  EXPECT_TRUE(gptq_is_act_order(gptq_view_of(a.act)));
  std::vector<float> wp(out * in), w(out * in);
  gptq_dequantize(wp.data(), gptq_view_of(a.plain));
  gptq_dequantize(w.data(), gptq_view_of(a.act));
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) ASSERT_EQ(w[o * in + i], wp[o * in + a.rank[i]]);
}

TEST(Gptq, UnevenGroupsRejectedByKernelRepack) {
  GptqTensors t = gptq_quantize(randn(8 * 64, 3).data(), 8, 64, 32, false);
  for (int i = 0; i < 64; ++i) t.g_idx[i] = i < 40 ? 0 : 1;  // groups of 40 and 24
  try {
    gptq_to_q4(gptq_view_of(t, "model.layers.3.mlp.up_proj"));
    FAIL() << "expected ModelError";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.mlp.up_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

TensorView tensor(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                  size_t elem) {
  TensorView t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = static_cast<const uint8_t*>(data);
  size_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  t.nbytes = n * elem;
  return t;
}

TEST(Gptq, ViewValidatesShapesWithTensorNames) {
  const GptqShape s = gptq_shape(172, 64, 32);  // in_p 176, 6 groups
  const GptqTensors t = gptq_quantize(randn(64 * 172, 9).data(), 64, 172, 32, false);
  const std::string p = "model.layers.0.mlp.down_proj";
  auto qw = tensor(p + ".qweight", DType::I32, {22, 64}, t.qweight.data(), 4);
  auto qz = tensor(p + ".qzeros", DType::I32, {6, 8}, t.qzeros.data(), 4);
  auto sc = tensor(p + ".scales", DType::F16, {6, 64}, t.scales.data(), 2);
  auto gi = tensor(p + ".g_idx", DType::I32, {176}, t.g_idx.data(), 4);
  const GptqView v = gptq_view(p, qw, qz, sc, &gi, s);
  std::vector<float> a(64 * 172), b(64 * 172);
  gptq_dequantize(a.data(), v);
  gptq_dequantize(b.data(), gptq_view_of(t));
  EXPECT_EQ(a, b);
  EXPECT_NO_THROW(gptq_view(p, qw, qz, sc, nullptr, s));

  auto expect_error = [&](const TensorView& w, const TensorView& z, const TensorView& c, const TensorView* g,
                          const std::string& needle) {
    try {
      gptq_view(p, w, z, c, g, s);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto bad_qw = tensor(p + ".qweight", DType::I32, {21, 64}, t.qweight.data(), 4);  // unpadded 172/8
  expect_error(bad_qw, qz, sc, &gi, p + ".qweight: expected I32 [22, 64], got I32 [21, 64]");
  auto bad_qz = tensor(p + ".qzeros", DType::I32, {5, 8}, t.qzeros.data(), 4);
  expect_error(qw, bad_qz, sc, &gi, p + ".qzeros: expected I32 [6, 8]");
  auto bad_sc = tensor(p + ".scales", DType::F32, {6, 64}, t.scales.data(), 4);
  expect_error(qw, qz, bad_sc, &gi, p + ".scales: expected F16 [6, 64], got F32 [6, 64]");
  auto short_sc = sc;
  short_sc.nbytes -= 2;
  expect_error(qw, qz, short_sc, &gi, p + ".scales: F16 [6, 64] needs 768 bytes, has 766");
  std::vector<int32_t> bad_g = t.g_idx;
  bad_g[100] = 6;
  auto bad_gi = tensor(p + ".g_idx", DType::I32, {176}, bad_g.data(), 4);
  expect_error(qw, qz, sc, &bad_gi, p + ".g_idx: entry 100 = 6 outside [0, 6)");
}

TEST(Half, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(float_to_half(f) & 0x7C00, 0x7C00);
      continue;
    }
    ASSERT_EQ(float_to_half(f), h) << std::hex << h;
  }
  EXPECT_EQ(half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(half_to_float(0xFBFF), -65504.0f);
  EXPECT_EQ(float_to_half(65520.0f), 0x7C00);  // ties to even: infinity
  EXPECT_EQ(float_to_half(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);                 // tie to even: 0
  EXPECT_EQ(float_to_half(std::ldexp(1.5f, -25)), 0x0001);
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) uint16_t hw_float_to_half(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

TEST(Half, MatchesF16cOnRandomFloats) {
  if (!kernels::cpu::cpu_has_f16c()) GTEST_SKIP() << "no F16C";
  std::mt19937 g(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int n = 0; n < 2000000; ++n) {
    uint32_t u = bits(g);
    // Bias toward the half range (exponents 100..150) where rounding matters.
    if (n % 2) u = (u & 0x807FFFFFu) | ((100u + (u >> 24) % 51) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), hw_float_to_half(f)) << std::hex << u;
  }
}
#endif

}  // namespace
}  // namespace chatradio::model
