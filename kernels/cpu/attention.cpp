#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {

namespace {

// One query row of one head against cache positions [0, pos].
// scores: scratch [pos + 1].
void attend(float* out /*[head_dim]*/, const float* q /*[head_dim]*/, const float* k_cache,
            const float* v_cache, const int32_t* table, int pos, int kvh, const AttnShape& shape,
            float* scores) {
  const int hd = shape.head_dim;
  const int64_t kv_row = static_cast<int64_t>(shape.n_kv_heads) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  auto slot = [&](int t) {
    return static_cast<int64_t>(table[t / shape.block_size]) * shape.block_size + t % shape.block_size;
  };
  float mx = -INFINITY;
  for (int t = 0; t <= pos; ++t) {
    scores[t] = dot_f32(q, k_cache + slot(t) * kv_row + kvh * hd, hd) * scale;
    mx = std::max(mx, scores[t]);
  }
  double sum = 0.0;
  for (int t = 0; t <= pos; ++t) {
    scores[t] = std::exp(scores[t] - mx);
    sum += scores[t];
  }
  const float inv = static_cast<float>(1.0 / sum);
  std::fill(out, out + hd, 0.0f);
  for (int t = 0; t <= pos; ++t) {
    const float* vt = v_cache + slot(t) * kv_row + kvh * hd;
    const float w = scores[t] * inv;
    for (int d = 0; d < hd; ++d) out[d] += w * vt[d];
  }
}

}  // namespace

void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape, ThreadPool* pool) {
  const int hd = shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;  // query heads per KV head
  const int64_t q_row = static_cast<int64_t>(shape.n_heads) * hd;
  const int n_q = batch.q_start[batch.n_seqs];
  int max_ctx = 1;
  for (int s = 0; s < batch.n_seqs; ++s) max_ctx = std::max(max_ctx, batch.ctx_len[s]);

  // Task = one (query row, head) pair, so a single decoding sequence still
  // spreads its heads over the threads. The row's sequence is found by a
  // search over q_start: no per-call index arrays.
  auto run = [&](int task, float* scores) {
    const int row = task / shape.n_heads, h = task % shape.n_heads;
    const int s = static_cast<int>(std::upper_bound(batch.q_start, batch.q_start + batch.n_seqs + 1, row) -
                                   batch.q_start) - 1;
    const int n_new = batch.q_start[s + 1] - batch.q_start[s];
    const int pos = batch.ctx_len[s] - n_new + (row - batch.q_start[s]);
    const int32_t* table = batch.block_tables + static_cast<int64_t>(s) * batch.max_blocks;
    attend(out + row * q_row + h * hd, q + row * q_row + h * hd, k_cache, v_cache, table, pos, h / group, shape,
           scores);
  };
  const int n_tasks = n_q * shape.n_heads;
  if (pool) {
    float* scratch = reinterpret_cast<float*>(pool->workspace(sizeof(float) * max_ctx * pool->size()));
    pool->parallel_for(n_tasks, [&](int task, int thread) { run(task, scratch + static_cast<int64_t>(thread) * max_ctx); });
  } else {
    std::vector<float> scores(max_ctx);
    for (int task = 0; task < n_tasks; ++task) run(task, scores.data());
  }
}

}  // namespace chatradio::kernels::cpu
