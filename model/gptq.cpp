#include "model/gptq.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/cpu/unaligned.h"
#include "model/errors.h"

namespace chatradio::model {
namespace {

using kernels::cpu::float_to_half;
using kernels::cpu::half_to_float;
using kernels::cpu::load_i32;
using kernels::cpu::load_u16;

void check_tensor(const std::string& name, const TensorView& t, DType dtype, size_t elem_size,
                  const std::vector<int64_t>& shape) {
  const std::string want = std::string(dtype_name(dtype)) + " " + shape_str(shape);
  if (t.dtype != dtype || t.shape != shape) {
    throw ModelError(name + ": expected " + want + ", got " + dtype_name(t.dtype) + " " + shape_str(t.shape));
  }
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (t.nbytes != static_cast<size_t>(numel) * elem_size || (numel > 0 && t.data == nullptr)) {
    throw ModelError(name + ": " + want + " needs " + std::to_string(numel * elem_size) + " bytes, has " +
                     std::to_string(t.nbytes));
  }
}

// An f16 scale that is finite and non-zero, so q = w / scale is defined.
uint16_t scale_to_half(float s) {
  uint16_t h = float_to_half(s);
  if ((h & 0x7FFF) == 0) h = 0x0001;                 // underflow: smallest subnormal
  if ((h & 0x7C00) == 0x7C00) h = 0x7BFF;            // overflow: largest finite
  return h;
}

struct GroupParams {
  uint16_t scale;  // f16 bits
  int zero;        // 1..15 (v1 stores zero - 1, so 0 is not storable)
};

// The GPTQ reference grid (Quantizer.find_params), see gptq.h.
GroupParams group_params(float lo, float hi, bool sym) {
  if (lo == 0.0f && hi == 0.0f) {
    lo = -1.0f;
    hi = 1.0f;
  }
  if (sym) {
    const float amax = std::max(-lo, hi);
    return {scale_to_half(2.0f * amax / 15.0f), 8};
  }
  uint16_t h = scale_to_half((hi - lo) / 15.0f);
  int zero = static_cast<int>(std::nearbyint(-lo / half_to_float(h)));
  zero = std::clamp(zero, 0, 15);
  if (zero == 0) {
    // The range starts at ~0: grid [-s, 14 s] with s = hi/14 still covers it
    // (lo > -s/2 here) and keeps the error within s/2.
    h = scale_to_half(hi / 14.0f);
    zero = 1;
  }
  return {h, zero};
}

int round_up(int v, int to) { return (v + to - 1) / to * to; }

// q = clamp(round_half_even(v / scale) + zero, 0, 15). Rounding by adding and
// subtracting 1.5 * 2^23 is exact round-half-even for |x| < 2^22 and, unlike
// nearbyint, needs no libm call on baseline x86-64; x is clamped to ±64
// first, which cannot change the clamped result. NaN quantizes like 0.
int quantize_one(float v, float scale, int zero) {
  float x = v / scale;
  x = x == x ? std::clamp(x, -64.0f, 64.0f) : 0.0f;
  const float r = (x + 12582912.0f) - 12582912.0f;
  return std::clamp(static_cast<int>(r) + zero, 0, 15);
}

}  // namespace

GptqShape gptq_shape(int in, int out, int group_size) {
  if (in <= 0 || out <= 0) {
    throw ModelError("gptq: bad linear shape in=" + std::to_string(in) + " out=" + std::to_string(out));
  }
  if (group_size != -1 && (group_size <= 0 || group_size % 32 != 0)) {
    throw ModelError("gptq: group_size " + std::to_string(group_size) +
                     " unsupported (need -1 or a positive multiple of 32)");
  }
  GptqShape s;
  s.in = in;
  s.out = out;
  s.group_size = group_size;
  s.in_padded = round_up(in, 8);
  s.out_padded = round_up(out, 8);
  s.group = group_size == -1 ? s.in_padded : group_size;
  s.n_groups = (s.in_padded + s.group - 1) / s.group;
  return s;
}

GptqView gptq_view_of(const GptqTensors& t, const std::string& name) {
  GptqView v;
  v.name = name;
  v.shape = t.shape;
  v.qweight = t.qweight.data();
  v.qzeros = t.qzeros.data();
  v.scales = t.scales.data();
  v.g_idx = t.g_idx.empty() ? nullptr : t.g_idx.data();
  return v;
}

GptqTensors gptq_quantize(const float* w, int out, int in, int group_size, bool sym) {
  GptqTensors t;
  t.shape = gptq_shape(in, out, group_size);
  const GptqShape& s = t.shape;
  const int op = s.out_padded;
  // Packed as unsigned (shifting nibbles into bit 31 of an int is UB before
  // C++20 and unclear to read), converted to int32 at the end.
  std::vector<uint32_t> qweight(static_cast<size_t>(s.in_padded / 8) * op, 0);  // [in_p/8, out_p]
  std::vector<uint32_t> qzeros(static_cast<size_t>(s.n_groups) * (op / 8), 0);  // [n_groups, out_p/8]
  t.scales.assign(static_cast<size_t>(s.n_groups) * op, 0);                      // [n_groups, out_p]
  t.g_idx.resize(s.in_padded);                                                   // [in_p]
  for (int i = 0; i < s.in_padded; ++i) t.g_idx[i] = i / s.group;

  // Outputs in chunks of 16, so the words a chunk writes to one qweight row
  // share a cache line (qweight is [in/8, out]: a column is 4*out_p bytes
  // between words).
  constexpr int kChunk = 16;
  for (int o0 = 0; o0 < op; o0 += kChunk) {
    const int o1 = std::min(o0 + kChunk, op);
    for (int g = 0; g < s.n_groups; ++g) {
      const int i0 = g * s.group, i1 = std::min(i0 + s.group, s.in_padded);
      float scale[kChunk];
      int zero[kChunk];
      for (int o = o0; o < o1; ++o) {
        const float* row = o < out ? w + static_cast<int64_t>(o) * in : nullptr;  // [in]
        // Padding is zero, and the range always includes 0: only real inputs matter.
        float lo = 0.0f, hi = 0.0f;
        for (int i = i0; row && i < std::min(i1, in); ++i) {
          lo = std::min(lo, row[i]);
          hi = std::max(hi, row[i]);
        }
        const GroupParams p = group_params(lo, hi, sym);
        t.scales[static_cast<size_t>(g) * op + o] = p.scale;
        qzeros[static_cast<size_t>(g) * (op / 8) + o / 8] |= static_cast<uint32_t>(p.zero - 1) << (4 * (o % 8));
        scale[o - o0] = half_to_float(p.scale);
        zero[o - o0] = p.zero;
      }
      // Groups are multiples of 8 inputs: build each word whole, store once.
      for (int i8 = i0; i8 < i1; i8 += 8) {
        for (int o = o0; o < o1; ++o) {
          const float* row = o < out ? w + static_cast<int64_t>(o) * in : nullptr;
          float v[8];  // padding reads as 0
          for (int j = 0; j < 8; ++j) v[j] = row && i8 + j < in ? row[i8 + j] : 0.0f;
          uint32_t word = 0;
          for (int j = 0; j < 8; ++j) {
            word |= static_cast<uint32_t>(quantize_one(v[j], scale[o - o0], zero[o - o0])) << (4 * j);
          }
          qweight[static_cast<size_t>(i8 / 8) * op + o] = word;
        }
      }
    }
  }
  t.qweight.assign(qweight.begin(), qweight.end());
  t.qzeros.assign(qzeros.begin(), qzeros.end());
  return t;
}

void gptq_dequantize(float* w, const GptqView& v) {
  const GptqShape& s = v.shape;
  const int op = s.out_padded;
  for (int i = 0; i < s.in; ++i) {
    const int32_t g = v.g_idx ? load_i32(v.g_idx, i) : i / s.group;
    if (g < 0 || g >= s.n_groups) {
      throw ModelError(v.name + ".g_idx: entry " + std::to_string(i) + " = " + std::to_string(g) +
                       " outside [0, " + std::to_string(s.n_groups) + ")");
    }
    for (int o = 0; o < s.out; ++o) {
      const float scale = half_to_float(load_u16(v.scales, static_cast<int64_t>(g) * op + o));
      const uint32_t zw = static_cast<uint32_t>(load_i32(v.qzeros, static_cast<int64_t>(g) * (op / 8) + o / 8));
      const int zero = static_cast<int>((zw >> (4 * (o % 8))) & 15) + 1;  // v1 offset
      const uint32_t qw = static_cast<uint32_t>(load_i32(v.qweight, static_cast<int64_t>(i / 8) * op + o));
      const int q = static_cast<int>((qw >> (4 * (i % 8))) & 15);
      // Exact: an f16 scale times an integer in [-16, 15] fits a float mantissa.
      w[static_cast<int64_t>(o) * s.in + i] = scale * static_cast<float>(q - zero);
    }
  }
}

GptqView gptq_view(const std::string& name, const TensorView& qweight, const TensorView& qzeros,
                   const TensorView& scales, const TensorView* g_idx, const GptqShape& expected) {
  const GptqShape& s = expected;
  check_tensor(name + ".qweight", qweight, DType::I32, 4, {s.in_padded / 8, s.out_padded});
  check_tensor(name + ".qzeros", qzeros, DType::I32, 4, {s.n_groups, s.out_padded / 8});
  check_tensor(name + ".scales", scales, DType::F16, 2, {s.n_groups, s.out_padded});
  // qweight/qzeros are integers and cannot be non-finite; a NaN or Inf scale
  // would poison every output it multiplies.
  check_finite(scales);
  GptqView v;
  v.name = name;
  v.shape = s;
  v.qweight = qweight.data;
  v.qzeros = qzeros.data;
  v.scales = scales.data;
  if (g_idx) {
    check_tensor(name + ".g_idx", *g_idx, DType::I32, 4, {s.in_padded});
    for (int i = 0; i < s.in_padded; ++i) {
      const int32_t g = load_i32(g_idx->data, i);
      if (g < 0 || g >= s.n_groups) {
        throw ModelError(name + ".g_idx: entry " + std::to_string(i) + " = " + std::to_string(g) +
                         " outside [0, " + std::to_string(s.n_groups) + ")");
      }
    }
    v.g_idx = g_idx->data;
  }
  return v;
}

bool gptq_is_act_order(const GptqView& v) {
  if (!v.g_idx) return false;
  for (int i = 0; i < v.shape.in_padded; ++i) {
    if (load_i32(v.g_idx, i) != i / v.shape.group) return true;
  }
  return false;
}

kernels::cpu::Q4Matrix q4_join_columns(std::vector<kernels::cpu::Q4Matrix> parts) {
  kernels::cpu::Q4Matrix m = std::move(parts.at(0));
  size_t lines = m.qs.size(), params = m.scales.size();
  for (size_t i = 1; i < parts.size(); ++i) {
    lines += parts[i].qs.size();
    params += parts[i].scales.size();
  }
  m.qs.reserve(lines);
  m.scales.reserve(params);
  m.zeros.reserve(params);
  for (size_t i = 1; i < parts.size(); ++i) kernels::cpu::q4_append_columns(m, parts[i]);
  return m;
}

kernels::cpu::Q4Matrix gptq_to_q4(const GptqView& v) {
  const GptqShape& s = v.shape;
  std::vector<int32_t> trivial;  // [in_p] i / group, when the checkpoint has no g_idx
  const void* g_idx = v.g_idx;
  if (!g_idx) {
    trivial.resize(s.in_padded);
    for (int i = 0; i < s.in_padded; ++i) trivial[i] = i / s.group;
    g_idx = trivial.data();
  }
  kernels::cpu::Q4GptqSource src;
  src.qweight = v.qweight;
  src.qzeros = v.qzeros;
  src.scales = v.scales;
  src.g_idx = g_idx;
  src.k_stored = s.in_padded;
  src.n_stored = s.out_padded;
  src.n_groups = s.n_groups;
  src.k = s.in;
  src.n = s.out;
  try {
    return kernels::cpu::q4_from_gptq(src);
  } catch (const std::invalid_argument& e) {
    throw ModelError(v.name + ": " + e.what());
  }
}

}  // namespace chatradio::model
