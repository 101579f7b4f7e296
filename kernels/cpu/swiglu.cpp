// SwiGLU: the driver (threads, ISA choice) and the scalar path, which is the
// exact reference of the AVX2 path (same ops: exp_poly, add, div, mul). Built
// with -ffp-contract=off (kernels/CMakeLists.txt).
#include <algorithm>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/exp_poly.h"
#include "kernels/cpu/swiglu_paths.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {

namespace detail {

void swiglu_scalar(float* out, const float* gate, const float* up, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + exp_poly(-g)) * up[i];
  }
}

}  // namespace detail

void swiglu(float* out, const float* gate, const float* up, int n, ThreadPool* pool) {
  detail::SwigluFn fn = detail::swiglu_scalar;
#if defined(__x86_64__) || defined(__i386__)
  if (cpu_default_isa() != CpuIsa::Scalar) fn = detail::swiglu_avx2;
#endif
  // Elementwise, so any split gives the same bits; a prefill's n = rows x
  // intermediate is millions of exps, worth the threads; a decode's is not.
  constexpr int kMinPerThread = 16384;
  const int threads = pool ? std::min(pool->size(), std::max(1, n / kMinPerThread)) : 1;
  if (threads <= 1) {
    fn(out, gate, up, 0, n);
    return;
  }
  pool->parallel_for(threads, [&](int task, int) {
    int i0, i1;
    ThreadPool::task_range(n, threads, task, &i0, &i1);
    fn(out, gate, up, i0, i1);
  });
}

}  // namespace chatradio::kernels::cpu
