// Paged causal GQA attention: the driver (tasks, threads, ISA choice) and the
// scalar path, which is the exact reference of the SIMD path (math:
// attention_paths.h). Built with -ffp-contract=off (kernels/CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention_paths.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/exp_poly.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {

namespace detail {
namespace {

float lane_tree(const float l[8]) { return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])); }

float widen(float x) { return x; }
float widen(uint16_t h) { return half_to_float(h); }

template <typename T>
void attend_scalar(float* out, const AttnTask& t, float* scores) {
  const int hd = t.head_dim, n = t.n_keys, bs = t.block_size;
  // Keys are visited block by block: no division per key.
  auto for_each_key = [&](auto&& fn) {
    for (int b = 0, key = 0; key < n; ++b) {
      const int64_t base = static_cast<int64_t>(t.table[b]) * bs;
      for (int off = 0; off < bs && key < n; ++off, ++key) fn(key, (base + off) * t.kv_row);
    }
  };
  float mx = -INFINITY;
  for_each_key([&](int key, int64_t row) {
    const T* k = static_cast<const T*>(t.k_cache) + row;  // [head_dim]
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int d = 0; d < hd; ++d) l[d & 7] = l[d & 7] + t.q[d] * widen(k[d]);
    scores[key] = lane_tree(l) * t.scale;
    mx = std::max(mx, scores[key]);
  });
  const int padded = attn_scores_len(n);
  for (int key = n; key < padded; ++key) scores[key] = -INFINITY;
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int key = 0; key < padded; ++key) {
    scores[key] = exp_poly(scores[key] - mx);
    l[key & 7] = l[key & 7] + scores[key];
  }
  const float inv = 1.0f / lane_tree(l);
  std::fill(out, out + hd, 0.0f);
  for_each_key([&](int key, int64_t row) {
    const T* v = static_cast<const T*>(t.v_cache) + row;  // [head_dim]
    for (int d = 0; d < hd; ++d) out[d] = out[d] + scores[key] * widen(v[d]);
  });
  for (int d = 0; d < hd; ++d) out[d] = out[d] * inv;
}

}  // namespace

void attend_scalar_f32(float* out, const AttnTask& t, float* scores) { attend_scalar<float>(out, t, scores); }
void attend_scalar_f16(float* out, const AttnTask& t, float* scores) { attend_scalar<uint16_t>(out, t, scores); }

}  // namespace detail

namespace {

// The driver for either cache element type T (float or IEEE half bits).
template <typename T>
void run_attention(float* out, const float* q, const T* k_cache, const T* v_cache, const PagedBatch& batch,
                   const AttnShape& shape, ThreadPool* pool, CpuIsa isa) {
  if (!cpu_isa_supported(isa)) {
    throw std::invalid_argument(std::string("attention: ISA path ") + cpu_isa_name(isa) +
                                " not supported on this CPU");
  }
  constexpr bool kHalf = std::is_same_v<T, uint16_t>;
  const int hd = shape.head_dim;
  detail::AttendFn attend = kHalf ? detail::attend_scalar_f16 : detail::attend_scalar_f32;
#if defined(__x86_64__) || defined(__i386__)
  if (isa != CpuIsa::Scalar && hd % 8 == 0) attend = kHalf ? detail::attend_avx2_f16 : detail::attend_avx2_f32;
#endif
  const int group = shape.n_heads / shape.n_kv_heads;  // query heads per KV head
  const int64_t q_row = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t kv_row = static_cast<int64_t>(shape.n_kv_heads) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int n_q = batch.q_start[batch.n_seqs];
  int max_ctx = 1;
  for (int s = 0; s < batch.n_seqs; ++s) max_ctx = std::max(max_ctx, batch.ctx_len[s]);
  const int scores_len = detail::attn_scores_len(max_ctx);

  // Task = one (query row, head) pair, so a single decoding sequence still
  // spreads its heads over the threads. The row's sequence is found by a
  // search over q_start: no per-call index arrays.
  auto run = [&](int task, float* scores /*[scores_len]*/) {
    const int row = task / shape.n_heads, h = task % shape.n_heads;
    const int s = static_cast<int>(std::upper_bound(batch.q_start, batch.q_start + batch.n_seqs + 1, row) -
                                   batch.q_start) - 1;
    const int n_new = batch.q_start[s + 1] - batch.q_start[s];
    const int pos = batch.ctx_len[s] - n_new + (row - batch.q_start[s]);
    const int kvh = h / group;
    const detail::AttnTask t{q + row * q_row + h * hd,
                             k_cache + kvh * hd,
                             v_cache + kvh * hd,
                             batch.block_tables + static_cast<int64_t>(s) * batch.max_blocks,
                             pos + 1,
                             hd,
                             shape.block_size,
                             kv_row,
                             scale};
    attend(out + row * q_row + h * hd, t, scores);
  };
  const int n_tasks = n_q * shape.n_heads;
  if (pool) {
    float* scratch = reinterpret_cast<float*>(pool->workspace(sizeof(float) * scores_len * pool->size()));
    pool->parallel_for(n_tasks, [&](int task, int thread) {
      run(task, scratch + static_cast<int64_t>(thread) * scores_len);
    });
  } else {
    std::vector<float> scores(scores_len);
    for (int task = 0; task < n_tasks; ++task) run(task, scores.data());
  }
}

}  // namespace

void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool) {
  run_attention(out, q, k_cache, v_cache, batch, shape, pool, cpu_default_isa());
}
void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool, CpuIsa isa) {
  run_attention(out, q, k_cache, v_cache, batch, shape, pool, isa);
}
void attention(float* out, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool) {
  run_attention(out, q, k_cache, v_cache, batch, shape, pool, cpu_default_isa());
}
void attention(float* out, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool, CpuIsa isa) {
  run_attention(out, q, k_cache, v_cache, batch, shape, pool, isa);
}

}  // namespace chatradio::kernels::cpu
