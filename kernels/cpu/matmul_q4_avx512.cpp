// AVX-512 VNNI path of the int4 matmul (layout and math: q4.h). Same tiles as
// the AVX2 path, but the u8 x s8 dot products accumulate straight into int32
// with vpdpbusd (one instruction instead of maddubs + add + madd). It uses the
// 256-bit (VL) form: the panel is 8 columns wide, and on a memory-bound GEMV
// 512-bit registers would only add license-based downclocking. Integer sums
// are exact, the float ops identical to the other paths: same bits.
// Compiled with -mavx2 -mfma -mf16c -mavx512f -mavx512vl -mavx512vnni
// -ffp-contract=off; reached only through the runtime dispatch. Activation
// quantization reuses the AVX2 routine. No header inline code is instantiated
// here (see matmul_q4_avx2.cpp).
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/q4.h"

namespace chatradio::kernels::cpu::detail {
namespace {

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Σ over the block of q*xq for the panel's 8 columns; two independent chains
// halve the vpdpbusd latency chain.
inline __m256i block_dot(const uint8_t* blk /*[128]*/, const int8_t* xb /*[32]*/) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * j));
    lo = _mm256_dpbusd_epi32(lo, _mm256_and_si256(v, mask), bcast4(xb + 4 * j));
    hi = _mm256_dpbusd_epi32(hi, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask), bcast4(xb + 16 + 4 * j));
  }
  return _mm256_add_epi32(lo, hi);
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
  _mm256_mask_storeu_ps(o, static_cast<__mmask8>((1u << cols) - 1), v);
}

// R activation rows x one panel; float op order as in the AVX2 tile.
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
      for (int r = 0; r < R; ++r) {
        const __m256 dot = _mm256_cvtepi32_ps(block_dot(blk, xr[r] + b * kQ4BlockInputs));
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

void q4_gemm_avx512vnni(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w,
                        int p0, int p1) {
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
