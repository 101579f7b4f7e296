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

// R activation rows x P consecutive panels (a register tile). Per output
// element the float ops are, in order: for each group, per block
// acc = fma(float(dot), s*d_b, acc), then acc = fma(-(s*z), X_g, acc) — the
// same for every R and P and in every path. The block's integer dot is exact
// whatever the association, so the tile may sum it in any order: quad by
// quad, each unpacked quad of a panel serves all R rows and each broadcast of
// a row's 4 activation bytes all P panels. u8*s8 pairs fit int16
// (<= 2*15*127) and so do a block's 8 of them per lane (<= 30480). 4 x 2 is
// the largest tile whose int16 sums, quads and broadcast fit 16 registers.
template <int R, int P>
void tile(float* out, int64_t ldo, const Q4ActsRef& a, int row0, const Q4WeightsRef& w, int p0) {
  const int kb = w.k_blocks, ng = w.n_groups;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* qs[P];   // [kb, 128] per panel
  const uint16_t* sc[P];  // [ng, 8]
  const uint8_t* zp[P];   // [ng, 8]
  for (int p = 0; p < P; ++p) {
    qs[p] = w.qs + static_cast<int64_t>(p0 + p) * kb * kQ4BlockBytes;
    sc[p] = w.scales + static_cast<int64_t>(p0 + p) * ng * kQ4PanelCols;
    zp[p] = w.zeros + static_cast<int64_t>(p0 + p) * ng * kQ4PanelCols;
  }
  const int8_t* xr[R];
  const float* dr[R];
  const float* gr[R];
  __m256 acc[R][P];
  for (int r = 0; r < R; ++r) {
    xr[r] = a.xq + (row0 + r) * a.q_stride;
    dr[r] = a.d + static_cast<int64_t>(row0 + r) * kb;
    gr[r] = a.gsum + static_cast<int64_t>(row0 + r) * ng;
    for (int p = 0; p < P; ++p) acc[r][p] = _mm256_setzero_ps();
  }
  for (int g = 0; g < ng; ++g) {
    __m256 s[P];
    for (int p = 0; p < P; ++p) {
      s[p] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc[p] + g * kQ4PanelCols)));
    }
    const int b0 = g * w.group_blocks;
    const int b1 = b0 + w.group_blocks < kb ? b0 + w.group_blocks : kb;
    for (int b = b0; b < b1; ++b) {
      for (int p = 0; p < P; ++p) prefetch_ahead(qs[p] + static_cast<int64_t>(b) * kQ4BlockBytes);
      __m256i sum[R][P];  // int16 pairs of the block's dot per column
      // Quad h holds inputs 4h..4h+3 of each column: the low nibbles of chunk
      // h of the block for h < 4, the high nibbles of chunk h - 4 after.
      // Fully unrolled, so sum, the quads and one broadcast fit in registers.
#pragma GCC unroll 8
      for (int h = 0; h < 8; ++h) {
        __m256i q[P];
        for (int p = 0; p < P; ++p) {
          const __m256i v = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(qs[p] + static_cast<int64_t>(b) * kQ4BlockBytes + 32 * (h & 3)));
          q[p] = _mm256_and_si256(h < 4 ? v : _mm256_srli_epi16(v, 4), mask);
        }
        for (int r = 0; r < R; ++r) {
          const __m256i xv = bcast4(xr[r] + b * kQ4BlockInputs + 4 * h);
          for (int p = 0; p < P; ++p) {
            const __m256i t = _mm256_maddubs_epi16(q[p], xv);
            sum[r][p] = h == 0 ? t : _mm256_add_epi16(sum[r][p], t);
            // Pins the running sum to a register here: otherwise GCC
            // reassociates the adds and computes all 8*R*P products first,
            // spilling them to the stack.
            __asm__("" : "+x"(sum[r][p]));
          }
        }
      }
      for (int r = 0; r < R; ++r) {
        const __m256 dv = _mm256_set1_ps(dr[r][b]);
        for (int p = 0; p < P; ++p) {
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[r][p], ones));
          acc[r][p] = _mm256_fmadd_ps(dot, _mm256_mul_ps(s[p], dv), acc[r][p]);
        }
      }
    }
    for (int p = 0; p < P; ++p) {
      const __m128i z8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zp[p] + g * kQ4PanelCols));
      const __m256 mz = _mm256_mul_ps(s[p], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z8)));
      for (int r = 0; r < R; ++r) acc[r][p] = _mm256_fnmadd_ps(mz, _mm256_set1_ps(gr[r][g]), acc[r][p]);
    }
  }
  for (int p = 0; p < P; ++p) {
    const int col0 = (p0 + p) * kQ4PanelCols;
    const int cols = w.n - col0 < kQ4PanelCols ? w.n - col0 : kQ4PanelCols;
    for (int r = 0; r < R; ++r) store_panel(out + (row0 + r) * ldo + col0, acc[r][p], cols);
  }
}

// Rows [r0, r1) x panels [p0, p0 + P), in tiles of 4 rows.
template <int P>
void row_tiles(float* out, int64_t ldo, const Q4ActsRef& a, int r0, int r1, const Q4WeightsRef& w, int p0) {
  int r = r0;
  for (; r + 4 <= r1; r += 4) tile<4, P>(out, ldo, a, r, w, p0);
  switch (r1 - r) {
    case 3: tile<3, P>(out, ldo, a, r, w, p0); break;
    case 2: tile<2, P>(out, ldo, a, r, w, p0); break;
    case 1: tile<1, P>(out, ldo, a, r, w, p0); break;
    default: break;
  }
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
    int p = p0;
    for (; p + 2 <= p1; p += 2) row_tiles<2>(out, ldo, a, r0, r1, w, p);
    if (p < p1) row_tiles<1>(out, ldo, a, r0, r1, w, p);
  }
}

}  // namespace chatradio::kernels::cpu::detail

#endif  // x86
