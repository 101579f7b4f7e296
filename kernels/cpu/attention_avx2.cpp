// AVX2 path of the paged attention (math: attention_paths.h; the scalar path
// in attention.cpp gives the same bits). Compiled with -mavx2 -mfma
// -mf16c -ffp-contract=off and reached only through the runtime dispatch.
//
// Why it is shaped this way: scores are computed 8 keys at a time with one
// accumulator per key (lane = dim mod 8), so the 8 horizontal reductions
// collapse into one transpose-add; P·V keeps up to 64 output dims in
// registers while it streams the value rows.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/attention_paths.h"
#include "kernels/cpu/simd_avx2.h"

namespace chatradio::kernels::cpu::detail {
namespace {

// Walks the keys of a paged sequence in order, one cache row at a time.
struct KeyCursor {
  const int32_t* table;
  int block_size, block = 0, off = 0;
  int64_t kv_row;
  int64_t row() const { return (static_cast<int64_t>(table[block]) * block_size + off) * kv_row; }
  void next() {
    if (++off == block_size) {
      off = 0;
      ++block;
    }
  }
};

// Lane i of the result = ((a_i0+a_i1)+(a_i2+a_i3))+((a_i4+a_i5)+(a_i6+a_i7)),
// a_ij = lane j of acc[i] (hadd adds adjacent lanes; the last add joins halves).
inline __m256 reduce8(const __m256 acc[8]) {
  const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

inline float lane_tree(__m256 v) {
  const __m128 h = _mm_hadd_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h2 = _mm_hadd_ps(h, h);  // [(l0+l1)+(l2+l3), (l4+l5)+(l6+l7), ..]
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}


// 8 cache elements widened to float (a half converts exactly).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// out[NC*8 dims starting at c0] = Σ_t scores[t] * v_t, then * inv.
template <int NC, typename T>
void weighted_sum(float* out, const AttnTask& t, const float* scores, int c0, float inv) {
  __m256 acc[NC];
  for (int i = 0; i < NC; ++i) acc[i] = _mm256_setzero_ps();
  KeyCursor cur{t.table, t.block_size, 0, 0, t.kv_row};
  for (int key = 0; key < t.n_keys; ++key, cur.next()) {
    const T* v = static_cast<const T*>(t.v_cache) + cur.row() + c0;  // [NC*8]
    const __m256 p = _mm256_set1_ps(scores[key]);
    for (int i = 0; i < NC; ++i) acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(p, load8(v + 8 * i)));
  }
  const __m256 iv = _mm256_set1_ps(inv);
  for (int i = 0; i < NC; ++i) _mm256_storeu_ps(out + c0 + 8 * i, _mm256_mul_ps(acc[i], iv));
}

template <typename T>
void attend(float* out, const AttnTask& t, float* scores) {
  const int hd = t.head_dim, n = t.n_keys;
  const __m256 scale = _mm256_set1_ps(t.scale);
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 mx = neg_inf;
  KeyCursor cur{t.table, t.block_size, 0, 0, t.kv_row};
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nk = n - t0 < 8 ? n - t0 : 8;
    const T* k[8];  // past the end: the last key again; those lanes become -inf
    for (int j = 0; j < 8; ++j) {
      k[j] = static_cast<const T*>(t.k_cache) + cur.row();
      if (j + 1 < nk) cur.next();
    }
    if (nk == 8) cur.next();
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
      const __m256 qc = _mm256_loadu_ps(t.q + c);
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(qc, load8(k[j] + c)));
    }
    __m256 s = _mm256_mul_ps(reduce8(acc), scale);
    if (nk < 8) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nk), lane));
      s = _mm256_blendv_ps(neg_inf, s, live);
    }
    _mm256_storeu_ps(scores + t0, s);
    mx = _mm256_max_ps(mx, s);
  }
  const __m256 m = _mm256_set1_ps(avx2::hmax8(mx));
  __m256 sum = _mm256_setzero_ps();
  for (int t0 = 0; t0 < n; t0 += 8) {
    const __m256 e = avx2::exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t0), m));
    _mm256_storeu_ps(scores + t0, e);
    sum = _mm256_add_ps(sum, e);
  }
  const float inv = 1.0f / lane_tree(sum);
  int c0 = 0;
  for (; c0 + 64 <= hd; c0 += 64) weighted_sum<8, T>(out, t, scores, c0, inv);
  switch ((hd - c0) / 8) {
    case 7: weighted_sum<7, T>(out, t, scores, c0, inv); break;
    case 6: weighted_sum<6, T>(out, t, scores, c0, inv); break;
    case 5: weighted_sum<5, T>(out, t, scores, c0, inv); break;
    case 4: weighted_sum<4, T>(out, t, scores, c0, inv); break;
    case 3: weighted_sum<3, T>(out, t, scores, c0, inv); break;
    case 2: weighted_sum<2, T>(out, t, scores, c0, inv); break;
    case 1: weighted_sum<1, T>(out, t, scores, c0, inv); break;
    default: break;
  }
}

}  // namespace

void attend_avx2_f32(float* out, const AttnTask& t, float* scores) { attend<float>(out, t, scores); }
void attend_avx2_f16(float* out, const AttnTask& t, float* scores) { attend<uint16_t>(out, t, scores); }

}  // namespace chatradio::kernels::cpu::detail

#endif  // x86
