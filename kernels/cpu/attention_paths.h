// The per-(query row, head) attention routine, one per ISA path, shared by
// attention.cpp (driver + scalar path) and attention_avx2.cpp.
//
// The math is fixed so both paths give the same bits, like the int4 matmul
// (q4.h); both files are compiled with -ffp-contract=off:
//  - score[t] = dot(q, k_t) * scale, the dot as 8 lanes (lane j sums the
//    products of dims d ≡ j mod 8, in order, mul then add) combined as
//    ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7));
//  - e[t] = exp_poly(score[t] - max) (exp_poly.h: exact same ops in every path);
//  - sum = Σ e[t] in 8 lanes by t mod 8, combined by the same tree;
//  - out[d] = (Σ_t e[t] * v_t[d], in t order, mul then add) * (1 / sum).
// A row's result thus depends only on its own query and keys: batch invariant.
#pragma once

#include <cstdint>

namespace chatradio::kernels::cpu::detail {

// Inputs of one (query row, head) task as plain pointers (the AVX2 unit is
// compiled with ISA flags and must not instantiate shared inline code). The
// cache holds float or IEEE half elements (the path is chosen per dtype); a
// half is widened exactly, so the math above is unchanged.
struct AttnTask {
  const float* q;        // [head_dim]
  const void* k_cache;   // slot s, dim d of this KV head at element s * kv_row + d
  const void* v_cache;   // same layout as k_cache
  const int32_t* table;  // block ids of the sequence
  int n_keys;            // positions 0 .. n_keys-1 are attended (causal: pos + 1)
  int head_dim;
  int block_size;        // tokens per KV block
  int64_t kv_row;        // floats per cache slot (n_kv_heads * head_dim)
  float scale;           // 1 / sqrt(head_dim)
};

// scores: scratch of attn_scores_len(n_keys) floats.
using AttendFn = void (*)(float* out /*[head_dim]*/, const AttnTask& t, float* scores);
inline constexpr int attn_scores_len(int n_keys) { return (n_keys + 7) / 8 * 8; }

void attend_scalar_f32(float* out, const AttnTask& t, float* scores);
void attend_scalar_f16(float* out, const AttnTask& t, float* scores);
// Need head_dim % 8 == 0 (the driver falls back to scalar otherwise).
void attend_avx2_f32(float* out, const AttnTask& t, float* scores);
void attend_avx2_f16(float* out, const AttnTask& t, float* scores);

}  // namespace chatradio::kernels::cpu::detail
