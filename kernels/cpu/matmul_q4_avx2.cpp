// AVX2 + FMA + F16C path of the int4 matmul (layout and math: q4.h).
// Compiled with -mavx2 -mfma -mf16c -ffp-contract=off (kernels/CMakeLists.txt)
// and reached only through the runtime dispatch, so the binary still runs on
// any x86-64. Everything here has internal linkage or is a plain function
// declared in q4.h; the only header inline code used is simd_avx2.h, which no
// baseline file includes, so the linker can never pick an AVX2 copy of a
// shared function.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/q4.h"
#include "kernels/cpu/simd_avx2.h"

namespace chatradio::kernels::cpu::detail {
namespace {

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline int32_t hsum8_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// One block of 32 activations: the same ops as quant_block in matmul_q4.cpp
// (max is exact, cvtps rounds half-to-even like nearbyint), so same bits.
inline int32_t quant_block(int8_t* xq /*[32]*/, float* d, const float* v /*[32]*/) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
  const __m256 v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
  const __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
  const float amax = avx2::hmax8(a);
  *d = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
  const int32_t sum = hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
  // packs interleave the 128-bit lanes; the permute restores input order.
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return sum;
}

// Unpacks block b of a panel into the 8 u8 "quad" vectors (q4.h layout).
inline void unpack_block(__m256i q[8], const uint8_t* blk /*[128]*/) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int j = 0; j < 4; ++j) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * j));
    q[j] = _mm256_and_si256(v, mask);
    q[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  }
}

// Σ over the block of q*xq for the panel's 8 columns, exact in int32. u8*s8
// pairs fit int16 (<= 2*15*127) and so do sums of 8 of them (<= 30480).
inline __m256i block_dot(const __m256i q[8], const int8_t* xb /*[32]*/) {
  const __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(q[0], bcast4(xb + 0)),
                                      _mm256_maddubs_epi16(q[1], bcast4(xb + 4)));
  const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(q[2], bcast4(xb + 8)),
                                      _mm256_maddubs_epi16(q[3], bcast4(xb + 12)));
  const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(q[4], bcast4(xb + 16)),
                                      _mm256_maddubs_epi16(q[5], bcast4(xb + 20)));
  const __m256i s3 = _mm256_add_epi16(_mm256_maddubs_epi16(q[6], bcast4(xb + 24)),
                                      _mm256_maddubs_epi16(q[7], bcast4(xb + 28)));
  const __m256i s = _mm256_add_epi16(_mm256_add_epi16(s0, s1), _mm256_add_epi16(s2, s3));
  return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

// Decode streams the panel from DRAM; the hardware prefetcher alone leaves
// ~20% of one core's bandwidth unused (bench_q4), so ask for the lines 8
// blocks ahead. Past the end of the matrix this is a harmless hint.
inline void prefetch_ahead(const uint8_t* blk) {
  _mm_prefetch(reinterpret_cast<const char*>(blk + 8 * kQ4BlockBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(blk + 8 * kQ4BlockBytes + 64), _MM_HINT_T0);
}

inline void store_panel(float* o, __m256 v, int cols) {
  if (cols == kQ4PanelCols) {
    _mm256_storeu_ps(o, v);
    return;
  }
  alignas(32) float tmp[kQ4PanelCols];
  _mm256_store_ps(tmp, v);
  for (int c = 0; c < cols; ++c) o[c] = tmp[c];
}

// R activation rows x one panel. Per output element the float ops are, in
// order: for each group, per block acc = fma(float(dot), s*d_b, acc), then
// acc = fma(-(s*z), X_g, acc) — the same for every R and in every path.
template <int R>
void tile(float* out, int64_t ldo, const Q4ActsRef& a, int row0, const Q4WeightsRef& w, int p) {
  const int kb = w.k_blocks, ng = w.n_groups;
  const uint8_t* qs = w.qs + static_cast<int64_t>(p) * kb * kQ4BlockBytes;      // [kb, 128]
  const uint16_t* sc = w.scales + static_cast<int64_t>(p) * ng * kQ4PanelCols;  // [ng, 8]
  const uint8_t* zp = w.zeros + static_cast<int64_t>(p) * ng * kQ4PanelCols;    // [ng, 8]
  const int8_t* xr[R];
  const float* dr[R];
  const float* gr[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    xr[r] = a.xq + (row0 + r) * a.q_stride;
    dr[r] = a.d + static_cast<int64_t>(row0 + r) * kb;
    gr[r] = a.gsum + static_cast<int64_t>(row0 + r) * ng;
    acc[r] = _mm256_setzero_ps();
  }
  for (int g = 0; g < ng; ++g) {
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g * kQ4PanelCols)));
    const int b0 = g * w.group_blocks;
    const int b1 = b0 + w.group_blocks < kb ? b0 + w.group_blocks : kb;
    for (int b = b0; b < b1; ++b) {
      const uint8_t* blk = qs + static_cast<int64_t>(b) * kQ4BlockBytes;
      prefetch_ahead(blk);
      __m256i q[8];
      unpack_block(q, blk);
      for (int r = 0; r < R; ++r) {
        const __m256 dot = _mm256_cvtepi32_ps(block_dot(q, xr[r] + b * kQ4BlockInputs));
        acc[r] = _mm256_fmadd_ps(dot, _mm256_mul_ps(s, _mm256_set1_ps(dr[r][b])), acc[r]);
      }
    }
    const __m128i z8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zp + g * kQ4PanelCols));
    const __m256 mz = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z8)));
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fnmadd_ps(mz, _mm256_set1_ps(gr[r][g]), acc[r]);
  }
  const int cols = w.n - p * kQ4PanelCols < kQ4PanelCols ? w.n - p * kQ4PanelCols : kQ4PanelCols;
  for (int r = 0; r < R; ++r) store_panel(out + (row0 + r) * ldo + p * kQ4PanelCols, acc[r], cols);
}

}  // namespace

void q4_quant_avx2(int8_t* xq, float* d, float* gsum, const float* x, const Q4WeightsRef& w, int r0,
                   int r1) {
  const int kb = w.k_blocks;
  for (int r = r0; r < r1; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * w.k;                // [k]
    int8_t* qr = xq + static_cast<int64_t>(r) * kb * kQ4BlockInputs;  // [kb*32]
    float* dr = d + static_cast<int64_t>(r) * kb;                     // [kb]
    float* gr = gsum + static_cast<int64_t>(r) * w.n_groups;          // [n_groups]
    float acc = 0.0f;
    for (int b = 0; b < kb; ++b) {
      alignas(32) float v[kQ4BlockInputs];
      const float* src = xr + b * kQ4BlockInputs;
      if (w.perm || (b + 1) * kQ4BlockInputs > w.k) {
        for (int t = 0; t < kQ4BlockInputs; ++t) {
          const int p = b * kQ4BlockInputs + t;
          const int i = w.perm ? w.perm[p] : (p < w.k ? p : -1);
          v[t] = i >= 0 ? xr[i] : 0.0f;
        }
        src = v;
      }
      const int32_t sx = quant_block(qr + b * kQ4BlockInputs, &dr[b], src);
      acc = acc + dr[b] * static_cast<float>(sx);
      if ((b + 1) % w.group_blocks == 0 || b + 1 == kb) {
        gr[b / w.group_blocks] = acc;
        acc = 0.0f;
      }
    }
  }
}

void q4_gemm_avx2(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w, int p0,
                  int p1) {
  for (int r0 = 0; r0 < m; r0 += a.row_chunk) {
    const int r1 = r0 + a.row_chunk < m ? r0 + a.row_chunk : m;
    for (int p = p0; p < p1; ++p) {
      int r = r0;
      for (; r + 4 <= r1; r += 4) tile<4>(out, ldo, a, r, w, p);
      switch (r1 - r) {
        case 3: tile<3>(out, ldo, a, r, w, p); break;
        case 2: tile<2>(out, ldo, a, r, w, p); break;
        case 1: tile<1>(out, ldo, a, r, w, p); break;
        default: break;
      }
    }
  }
}

}  // namespace chatradio::kernels::cpu::detail

#endif  // x86
