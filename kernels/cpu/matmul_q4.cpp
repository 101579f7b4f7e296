// Int4 matmul: GPTQ repacking, ISA dispatch, the driver, and the scalar path
// (the portable fallback, and the reference the SIMD paths equal bit for bit).
// Built with -ffp-contract=off (kernels/CMakeLists.txt) so no a*b+c below is
// fused behind our back: the float op sequence must match the SIMD files.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/q4.h"
#include "kernels/cpu/unaligned.h"

namespace chatradio::kernels::cpu {
namespace {

detail::Q4WeightsRef weights_ref(const Q4Matrix& w) {
  return {w.nibbles(), w.scale_data(), w.zero_data(), w.perm_data(), w.n,
          w.k,         w.n_panels,     w.k_blocks,    w.group_blocks,  w.n_groups};
}

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("q4_from_gptq: " + msg); }

// Quantizes one block of 32 activations exactly as the SIMD paths do:
// d = amax/127, xq = round-half-even(x * (127/amax)). Returns Σ xq.
int32_t quant_block(int8_t* xq /*[32]*/, float* d, const float* v /*[32]*/) {
  float amax = 0.0f;
  for (int t = 0; t < kQ4BlockInputs; ++t) {
    const float a = std::fabs(v[t]);
    amax = a > amax ? a : amax;
  }
  *d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (int t = 0; t < kQ4BlockInputs; ++t) {
    const int q = static_cast<int>(std::nearbyint(v[t] * id));
    xq[t] = static_cast<int8_t>(q);
    sum += q;
  }
  return sum;
}

}  // namespace

void q4_append_columns(Q4Matrix& dst, const Q4Matrix& src) {
  if (dst.is_borrowed() || src.is_borrowed()) {
    throw std::invalid_argument("q4_append_columns: a borrowed (weight cache) matrix cannot be extended");
  }
  if (dst.n == 0) {
    dst = src;
    return;
  }
  if (dst.n % kQ4PanelCols != 0 || dst.k != src.k || dst.k_blocks != src.k_blocks ||
      dst.group_blocks != src.group_blocks || dst.n_groups != src.n_groups || dst.perm != src.perm) {
    throw std::invalid_argument("q4_append_columns: matrices differ in k, groups or input order, or the first "
                                "does not end on a whole panel (n = " + std::to_string(dst.n) + ")");
  }
  dst.qs.insert(dst.qs.end(), src.qs.begin(), src.qs.end());
  dst.scales.insert(dst.scales.end(), src.scales.begin(), src.scales.end());
  dst.zeros.insert(dst.zeros.end(), src.zeros.begin(), src.zeros.end());
  dst.n += src.n;
  dst.n_panels += src.n_panels;
}

size_t Q4Matrix::weight_bytes() const { return nibble_bytes() + param_count() * (sizeof(uint16_t) + 1); }

Q4Matrix q4_from_gptq(const Q4GptqSource& s) {
  if (!s.qweight || !s.qzeros || !s.scales || !s.g_idx) fail("missing tensor");
  if (s.k <= 0 || s.n <= 0 || s.k > s.k_stored || s.n > s.n_stored || s.k_stored % 8 != 0 ||
      s.n_stored % 8 != 0 || s.n_groups <= 0) {
    fail("bad dims k=" + std::to_string(s.k) + " n=" + std::to_string(s.n) +
         " k_stored=" + std::to_string(s.k_stored) + " n_stored=" + std::to_string(s.n_stored) +
         " n_groups=" + std::to_string(s.n_groups));
  }
  // Group of each real input; padding inputs (>= k) are never read.
  std::vector<int32_t> gid(s.k);            // [k]
  std::vector<int> count(s.n_groups, 0);   // [n_groups] real inputs per group
  for (int i = 0; i < s.k; ++i) {
    const int32_t g = load_i32(s.g_idx, i);
    if (g < 0 || g >= s.n_groups) {
      fail("g_idx[" + std::to_string(i) + "] = " + std::to_string(g) + " outside [0, " +
           std::to_string(s.n_groups) + ")");
    }
    gid[i] = g;
    ++count[g];
  }
  // Kernel groups: the non-empty stored groups in id order, each a run of
  // whole blocks so one scale applies per block.
  std::vector<int> kgroups;  // [kernel groups] stored group id
  for (int g = 0; g < s.n_groups; ++g) {
    if (count[g] > 0) kgroups.push_back(g);
  }
  const int n_kg = static_cast<int>(kgroups.size());
  const int per_group = count[kgroups[0]];
  if (n_kg > 1) {
    if (per_group % kQ4BlockInputs != 0) {
      fail("groups of " + std::to_string(per_group) +
           " inputs; the int4 kernel needs a multiple of 32");
    }
    for (int j = 0; j + 1 < n_kg; ++j) {
      if (count[kgroups[j]] != per_group) {
        fail("group " + std::to_string(kgroups[j]) + " has " + std::to_string(count[kgroups[j]]) +
             " inputs, group " + std::to_string(kgroups[0]) + " has " + std::to_string(per_group) +
             "; the int4 kernel needs equal groups (only the last may be smaller)");
      }
    }
    if (count[kgroups[n_kg - 1]] > per_group) fail("last group larger than the others");
  }
  Q4Matrix m;
  m.n = s.n;
  m.k = s.k;
  m.n_panels = (s.n + kQ4PanelCols - 1) / kQ4PanelCols;
  m.group_blocks = (per_group + kQ4BlockInputs - 1) / kQ4BlockInputs;
  m.k_blocks = (n_kg - 1) * m.group_blocks +
               (count[kgroups[n_kg - 1]] + kQ4BlockInputs - 1) / kQ4BlockInputs;
  m.n_groups = n_kg;

  // Kernel position of each input: groups in order, inputs by index inside.
  std::vector<int> next(s.n_groups, -1);  // [n_groups] next free position
  for (int j = 0; j < n_kg; ++j) next[kgroups[j]] = j * m.group_blocks * kQ4BlockInputs;
  std::vector<int32_t> pos(s.k);  // [k]
  m.perm.assign(static_cast<size_t>(m.k_blocks) * kQ4BlockInputs, -1);
  for (int i = 0; i < s.k; ++i) {
    pos[i] = next[gid[i]]++;
    m.perm[pos[i]] = i;
  }
  bool identity = true;
  for (int i = 0; i < s.k && identity; ++i) identity = pos[i] == i;
  if (identity) m.perm.clear();

  const int64_t ng = m.n_groups, kb = m.k_blocks;
  m.scales.assign(static_cast<size_t>(m.n_panels) * ng * kQ4PanelCols, 0);
  m.zeros.assign(static_cast<size_t>(m.n_panels) * ng * kQ4PanelCols, 0);
  m.qs.assign(static_cast<size_t>(m.n_panels) * kb * (kQ4BlockBytes / sizeof(Q4Line)), Q4Line{});
  uint8_t* qs = reinterpret_cast<uint8_t*>(m.qs.data());
  for (int p = 0; p < m.n_panels; ++p) {
    const int cols = std::min(kQ4PanelCols, s.n - p * kQ4PanelCols);
    for (int j = 0; j < n_kg; ++j) {
      const int g = kgroups[j];
      for (int c = 0; c < cols; ++c) {
        const int col = p * kQ4PanelCols + c;
        const size_t at = (static_cast<size_t>(p) * ng + j) * kQ4PanelCols + c;
        m.scales[at] = load_u16(s.scales, static_cast<int64_t>(g) * s.n_stored + col);
        const uint32_t word =
            static_cast<uint32_t>(load_i32(s.qzeros, static_cast<int64_t>(g) * (s.n_stored / 8) + col / 8));
        m.zeros[at] = static_cast<uint8_t>(((word >> (4 * (col % 8))) & 15) + 1);  // v1: stored = zero - 1
      }
    }
  }
  // Fast path (no permutation, whole blocks): the 4 qweight words of a column
  // hold its 32 inputs in order; each 16-bit half is one quad. Blocks outside,
  // panels inside: the 4 qweight rows of a block are read front to back (a
  // panel-outer loop read 32 bytes per 16 KB row and spent the load in cache
  // and TLB misses), and each panel's 128 bytes are written whole.
  const int fast_blocks = m.perm.empty() ? s.k / kQ4BlockInputs : 0;
  auto spread = [](uint32_t x) {  // 4 nibbles -> the low halves of 4 bytes
    return (x & 0xF) | (x & 0xF0) << 4 | (x & 0xF00) << 8 | (x & 0xF000) << 12;
  };
  for (int b = 0; b < fast_blocks; ++b) {
    for (int p = 0; p < m.n_panels; ++p) {
      const int cols = std::min(kQ4PanelCols, s.n - p * kQ4PanelCols);
      uint8_t* blk = qs + (static_cast<size_t>(p) * kb + b) * kQ4BlockBytes;
      for (int c = 0; c < cols; ++c) {
        uint32_t w[4];  // inputs 0-7, 8-15, 16-23, 24-31 of the block
        for (int rr = 0; rr < 4; ++rr) {
          w[rr] = static_cast<uint32_t>(
              load_i32(s.qweight, static_cast<int64_t>(4 * b + rr) * s.n_stored + p * kQ4PanelCols + c));
        }
        uint8_t* dst = blk + 4 * c;
        for (int j = 0; j < 4; ++j) {
          const int shift = 16 * (j & 1);
          const uint32_t lo = (w[j >> 1] >> shift) & 0xFFFF;  // inputs 4j..4j+3
          const uint32_t hi = (w[2 + (j >> 1)] >> shift) & 0xFFFF;  // inputs 16+4j..
          const uint32_t v = spread(lo) | spread(hi) << 4;
          for (int t = 0; t < 4; ++t) dst[32 * j + t] = static_cast<uint8_t>(v >> (8 * t));
        }
      }
    }
  }
  for (int p = 0; p < m.n_panels; ++p) {
    const int cols = std::min(kQ4PanelCols, s.n - p * kQ4PanelCols);
    uint8_t* panel = qs + static_cast<size_t>(p) * kb * kQ4BlockBytes;
    for (int r = fast_blocks * 4; r * 8 < s.k; ++r) {
      for (int c = 0; c < cols; ++c) {
        const uint32_t word = static_cast<uint32_t>(
            load_i32(s.qweight, static_cast<int64_t>(r) * s.n_stored + p * kQ4PanelCols + c));
        for (int jn = 0; jn < 8 && r * 8 + jn < s.k; ++jn) {
          const uint8_t q = (word >> (4 * jn)) & 15;
          const int at = pos[r * 8 + jn];
          const int within = at % kQ4BlockInputs;
          const int quad = (within % 16) / 4, t = within % 4;
          uint8_t& byte = panel[static_cast<size_t>(at / kQ4BlockInputs) * kQ4BlockBytes + quad * 32 +
                                4 * c + t];
          byte |= within >= 16 ? static_cast<uint8_t>(q << 4) : q;
        }
      }
    }
  }
  return m;
}

void q4_quantize_row(int8_t* xq, float* d, float* gsum, const float* x, const Q4Matrix& w) {
  detail::q4_quant_scalar(xq, d, gsum, x, weights_ref(w), 0, 1);
}

void matmul_q4(float* out, const float* x, const Q4Matrix& w, int m, ThreadPool* pool) {
  matmul_q4(out, x, w, m, pool, cpu_default_isa());
}

void matmul_q4(float* out, const float* x, const Q4Matrix& w, int m, ThreadPool* pool, CpuIsa isa) {
  if (!cpu_isa_supported(isa)) {
    throw std::invalid_argument(std::string("matmul_q4: ISA path ") + cpu_isa_name(isa) +
                                " not supported on this CPU");
  }
  if (m <= 0 || w.n_panels == 0) return;
  detail::Q4QuantFn quant = detail::q4_quant_scalar;
  detail::Q4GemmFn gemm = detail::q4_gemm_scalar;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == CpuIsa::Avx2 || isa == CpuIsa::Avx512Vnni) quant = detail::q4_quant_avx2;
  if (isa == CpuIsa::Avx2) gemm = detail::q4_gemm_avx2;
  if (isa == CpuIsa::Avx512Vnni) gemm = detail::q4_gemm_avx512vnni;
#endif
  const detail::Q4WeightsRef wr = weights_ref(w);

  // Scratch: xq [m, k_blocks*32] int8, d [m, k_blocks], gsum [m, n_groups];
  // each section 64-byte aligned.
  auto round64 = [](size_t b) { return (b + 63) / 64 * 64; };
  const int64_t q_stride = static_cast<int64_t>(w.k_blocks) * kQ4BlockInputs;
  const size_t q_bytes = round64(static_cast<size_t>(m) * q_stride);
  const size_t d_bytes = round64(static_cast<size_t>(m) * w.k_blocks * sizeof(float));
  const size_t g_bytes = round64(static_cast<size_t>(m) * w.n_groups * sizeof(float));
  std::vector<Q4Line> local;  // only without a pool
  std::byte* ws;
  if (pool) {
    ws = pool->workspace(q_bytes + d_bytes + g_bytes);
  } else {
    local.resize((q_bytes + d_bytes + g_bytes) / sizeof(Q4Line));
    ws = reinterpret_cast<std::byte*>(local.data());
  }
  auto* xq = reinterpret_cast<int8_t*>(ws);
  auto* d = reinterpret_cast<float*>(ws + q_bytes);
  auto* gsum = reinterpret_cast<float*>(ws + q_bytes + d_bytes);

  const int n_threads = pool ? pool->size() : 1;
  // Rows are independent, so the split cannot change any row's bits; it only
  // pays off once there are a few rows (a dispatch costs ~1-2 µs).
  if (n_threads > 1 && m >= 4) {
    pool->parallel_for(n_threads, [&](int task, int) {
      int r0, r1;
      ThreadPool::task_range(m, n_threads, task, &r0, &r1);
      if (r0 < r1) quant(xq, d, gsum, x, wr, r0, r1);
    });
  } else {
    quant(xq, d, gsum, x, wr, 0, m);
  }

  int row_chunk = static_cast<int>((256 * 1024) / q_stride) / 4 * 4;
  if (row_chunk < 4) row_chunk = 4;
  const detail::Q4ActsRef acts{xq, d, gsum, q_stride, row_chunk};
  if (n_threads > 1 && w.n_panels > 1) {
    pool->parallel_for(n_threads, [&](int task, int) {
      int p0, p1;
      ThreadPool::task_range(w.n_panels, n_threads, task, &p0, &p1);
      if (p0 < p1) gemm(out, w.n, acts, m, wr, p0, p1);
    });
  } else {
    gemm(out, w.n, acts, m, wr, 0, w.n_panels);
  }
}

namespace detail {

void q4_quant_scalar(int8_t* xq, float* d, float* gsum, const float* x, const Q4WeightsRef& w, int r0,
                     int r1) {
  const int kb = w.k_blocks;
  for (int r = r0; r < r1; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * w.k;                        // [k]
    int8_t* qr = xq + static_cast<int64_t>(r) * kb * kQ4BlockInputs;          // [kb*32]
    float* dr = d + static_cast<int64_t>(r) * kb;                             // [kb]
    float* gr = gsum + static_cast<int64_t>(r) * w.n_groups;                  // [n_groups]
    float v[kQ4BlockInputs];
    float acc = 0.0f;
    for (int b = 0; b < kb; ++b) {
      for (int t = 0; t < kQ4BlockInputs; ++t) {
        const int p = b * kQ4BlockInputs + t;
        const int i = w.perm ? w.perm[p] : (p < w.k ? p : -1);
        v[t] = i >= 0 ? xr[i] : 0.0f;
      }
      const int32_t sx = quant_block(qr + b * kQ4BlockInputs, &dr[b], v);
      acc = acc + dr[b] * static_cast<float>(sx);
      if ((b + 1) % w.group_blocks == 0 || b + 1 == kb) {
        gr[b / w.group_blocks] = acc;
        acc = 0.0f;
      }
    }
  }
}

void q4_gemm_scalar(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w, int p0,
                    int p1) {
  const int kb = w.k_blocks, ng = w.n_groups;
  for (int p = p0; p < p1; ++p) {
    const uint8_t* qs = w.qs + static_cast<int64_t>(p) * kb * kQ4BlockBytes;  // [kb, 128]
    const uint16_t* sc = w.scales + static_cast<int64_t>(p) * ng * kQ4PanelCols;  // [ng, 8]
    const uint8_t* zp = w.zeros + static_cast<int64_t>(p) * ng * kQ4PanelCols;    // [ng, 8]
    const int cols = std::min(kQ4PanelCols, w.n - p * kQ4PanelCols);
    for (int r = 0; r < m; ++r) {
      const int8_t* xr = a.xq + r * a.q_stride;  // [kb*32]
      const float* dr = a.d + static_cast<int64_t>(r) * kb;
      const float* gr = a.gsum + static_cast<int64_t>(r) * ng;
      float acc[kQ4PanelCols] = {};
      for (int g = 0; g < ng; ++g) {
        float s[kQ4PanelCols];
        for (int c = 0; c < kQ4PanelCols; ++c) s[c] = half_to_float(sc[g * kQ4PanelCols + c]);
        const int b1 = std::min(kb, (g + 1) * w.group_blocks);
        for (int b = g * w.group_blocks; b < b1; ++b) {
          const uint8_t* blk = qs + static_cast<int64_t>(b) * kQ4BlockBytes;
          const int8_t* xb = xr + b * kQ4BlockInputs;
          int32_t dot[kQ4PanelCols] = {};
          for (int j = 0; j < 4; ++j) {
            for (int c = 0; c < kQ4PanelCols; ++c) {
              for (int t = 0; t < 4; ++t) {
                const uint8_t byte = blk[j * 32 + 4 * c + t];
                dot[c] += (byte & 15) * xb[4 * j + t] + (byte >> 4) * xb[16 + 4 * j + t];
              }
            }
          }
          for (int c = 0; c < kQ4PanelCols; ++c) {
            acc[c] = std::fma(static_cast<float>(dot[c]), s[c] * dr[b], acc[c]);
          }
        }
        for (int c = 0; c < kQ4PanelCols; ++c) {
          const float mz = s[c] * static_cast<float>(zp[g * kQ4PanelCols + c]);
          acc[c] = std::fma(-mz, gr[g], acc[c]);
        }
      }
      float* o = out + r * ldo + p * kQ4PanelCols;
      for (int c = 0; c < cols; ++c) o[c] = acc[c];
    }
  }
}

}  // namespace detail
}  // namespace chatradio::kernels::cpu
