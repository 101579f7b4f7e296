#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace chatradio::kernels::cpu {

void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
               const PagedBatch& batch, const AttnShape& shape) {
  const int hd = shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;  // query heads per KV head
  const int64_t q_row = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t kv_row = static_cast<int64_t>(shape.n_kv_heads) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> scores;  // [ctx] for one (query, head)

  for (int s = 0; s < batch.n_seqs; ++s) {
    const int q0 = batch.q_start[s], n_new = batch.q_start[s + 1] - q0;
    const int ctx = batch.ctx_len[s];
    const int32_t* table = batch.block_tables + static_cast<int64_t>(s) * batch.max_blocks;
    scores.resize(ctx);
    for (int j = 0; j < n_new; ++j) {
      const int pos = ctx - n_new + j;  // this query's position; it sees [0, pos]
      for (int h = 0; h < shape.n_heads; ++h) {
        const float* qh = q + (q0 + j) * q_row + h * hd;
        const int kvh = h / group;
        float mx = -INFINITY;
        for (int t = 0; t <= pos; ++t) {
          const int64_t slot = static_cast<int64_t>(table[t / shape.block_size]) * shape.block_size +
                               t % shape.block_size;
          const float* kt = k_cache + slot * kv_row + kvh * hd;
          float dot = 0.0f;
          for (int d = 0; d < hd; ++d) dot += qh[d] * kt[d];
          scores[t] = dot * scale;
          mx = std::max(mx, scores[t]);
        }
        double sum = 0.0;
        for (int t = 0; t <= pos; ++t) {
          scores[t] = std::exp(scores[t] - mx);
          sum += scores[t];
        }
        const float inv = static_cast<float>(1.0 / sum);
        float* oh = out + (q0 + j) * q_row + h * hd;
        for (int d = 0; d < hd; ++d) oh[d] = 0.0f;
        for (int t = 0; t <= pos; ++t) {
          const int64_t slot = static_cast<int64_t>(table[t / shape.block_size]) * shape.block_size +
                               t % shape.block_size;
          const float* vt = v_cache + slot * kv_row + kvh * hd;
          const float w = scores[t] * inv;
          for (int d = 0; d < hd; ++d) oh[d] += w * vt[d];
        }
      }
    }
  }
}

}  // namespace chatradio::kernels::cpu
