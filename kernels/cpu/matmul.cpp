#include <algorithm>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {

void matmul(float* out, const float* x, const float* w, int m, int n, int k, ThreadPool* pool) {
  // Tasks are column ranges: each weight row is streamed once per task and
  // reused across all m activation rows while it is in cache.
  constexpr int kColsPerTask = 16;
  const int n_tasks = (n + kColsPerTask - 1) / kColsPerTask;
  auto run = [&](int task, int /*thread*/) {
    const int j0 = task * kColsPerTask, j1 = std::min(n, j0 + kColsPerTask);
    for (int j = j0; j < j1; ++j) {
      const float* wj = w + static_cast<int64_t>(j) * k;
      for (int i = 0; i < m; ++i) out[static_cast<int64_t>(i) * n + j] = dot_f32(x + static_cast<int64_t>(i) * k, wj, k);
    }
  };
  if (pool) {
    pool->parallel_for(n_tasks, [&](int t, int th) { run(t, th); });
  } else {
    for (int t = 0; t < n_tasks; ++t) run(t, 0);
  }
}

}  // namespace chatradio::kernels::cpu
