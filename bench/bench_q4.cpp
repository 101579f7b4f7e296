// Int4 matmul throughput against this machine's memory bandwidth.
//
//   build-q4/bench/bench_q4 [--quick] [--isa scalar|avx2|avx512vnni] [--threads 1,2]
//                           [--model Llama-2-7B|TinyLlama]
//
// 1. Memory read bandwidth: a streaming sum (256-bit loads) over a 1 GiB
//    buffer, 1 and 2 threads (best of 5). Decode of an int4 model can at best
//    stream its weights at this rate.
// 2. ThreadPool dispatch cost: an empty parallel_for, and one whose slots
//    each take 5 µs (ideal: 5 µs on any thread count).
// 3. matmul_q4 at Llama-2-7B and TinyLlama linear shapes (out x in; --model
//    keeps one model's), m = 1 (decode), 16, 64 and 256 rows (prefill): time
//    (best and median call), effective GB/s of weight bytes and its share of
//    the measured bandwidth, GFLOP/s (from the best). Weights are random GPTQ tensors
//    (group 128), repacked; enough copies are cycled that they never sit in
//    the last-level cache, as in a real decode step.
// Prints markdown tables.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <immintrin.h>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/q4.h"
#include "kernels/cpu/thread_pool.h"

using chatradio::kernels::cpu::matmul_q4;
using chatradio::kernels::cpu::Q4GptqSource;
using chatradio::kernels::cpu::CpuIsa;
using chatradio::kernels::cpu::Q4Matrix;
using chatradio::kernels::cpu::ThreadPool;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Sums buf[begin, end) with 256-bit loads: a scalar loop tops out below the
// memory bandwidth of one core here, which would understate it.
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint64_t* p, size_t begin, size_t end) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = begin; i < end; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return t[0] + t[1] + t[2] + t[3];
}

uint64_t sum_plain(const uint64_t* p, size_t begin, size_t end) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // independent chains
  for (size_t i = begin; i < end; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  return s0 + s1 + s2 + s3;
}

// Best-of-5 read bandwidth (GB/s) of a streaming sum on the pool.
double measure_bandwidth(ThreadPool& pool, const std::vector<uint64_t>& buf) {
  const int threads = pool.size();
  const bool avx2 = __builtin_cpu_supports("avx2");
  std::vector<uint64_t> sums(threads);  // [threads] keeps the loads alive
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pool.parallel_for(threads, [&](int task, int) {
      int b, e;  // in 1024-element chunks
      ThreadPool::task_range(static_cast<int>(buf.size() / 1024), threads, task, &b, &e);
      const size_t begin = static_cast<size_t>(b) * 1024, end = static_cast<size_t>(e) * 1024;
      sums[task] = avx2 ? sum_avx2(buf.data(), begin, end) : sum_plain(buf.data(), begin, end);
    });
    const double s = seconds_since(t0);
    best = std::max(best, static_cast<double>(buf.size() * sizeof(uint64_t)) / s / 1e9);
  }
  uint64_t all = 0;
  for (uint64_t s : sums) all += s;
  if (all == 42) std::printf(" ");  // use the result
  return best;
}

// Busy-waits for `us` microseconds (a stand-in for a slice of kernel work).
void busy(double us) {
  const auto t0 = Clock::now();
  while (seconds_since(t0) * 1e6 < us) {
  }
}

// Random GPTQ tensors (any nibble, zeros 1..16, small scales), repacked.
Q4Matrix random_q4(int n, int k, int group, uint32_t seed) {
  std::mt19937 g(seed);
  const int n_groups = (k + group - 1) / group;
  std::vector<int32_t> qweight(static_cast<size_t>(k / 8) * n);     // [k/8, n]
  std::vector<int32_t> qzeros(static_cast<size_t>(n_groups) * (n / 8));  // [groups, n/8]
  std::vector<uint16_t> scales(static_cast<size_t>(n_groups) * n);  // [groups, n]
  std::vector<int32_t> g_idx(k);                                    // [k]
  for (auto& v : qweight) v = static_cast<int32_t>(g());
  for (auto& v : qzeros) v = static_cast<int32_t>(g());
  std::uniform_real_distribution<float> u(0.001f, 0.02f);
  for (auto& v : scales) v = chatradio::kernels::cpu::float_to_half(u(g));
  for (int i = 0; i < k; ++i) g_idx[i] = i / group;
  Q4GptqSource src;
  src.qweight = qweight.data();
  src.qzeros = qzeros.data();
  src.scales = scales.data();
  src.g_idx = g_idx.data();
  src.k_stored = src.k = k;
  src.n_stored = src.n = n;
  src.n_groups = n_groups;
  return chatradio::kernels::cpu::q4_from_gptq(src);
}

struct Shape {
  const char* model;
  const char* what;
  int n, k;  // out, in
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only_model;  // empty: every model's shapes
  CpuIsa isa = chatradio::kernels::cpu::cpu_default_isa();
  std::vector<int> thread_counts{1, 2};
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--isa" && a + 1 < argc) {
      const std::string v = argv[++a];
      for (CpuIsa i : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
        if (v == chatradio::kernels::cpu::cpu_isa_name(i)) isa = i;
      }
    } else if (arg == "--model" && a + 1 < argc) {
      only_model = argv[++a];
    } else if (arg == "--threads" && a + 1 < argc) {
      thread_counts.clear();
      for (const char* p = argv[++a]; *p;) {
        thread_counts.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "usage: bench_q4 [--quick] [--isa scalar|avx2|avx512vnni] [--threads 1,2] "
                           "[--model Llama-2-7B|TinyLlama]\n");
      return 2;
    }
  }
  if (!chatradio::kernels::cpu::cpu_isa_supported(isa)) {
    std::fprintf(stderr, "ISA path %s not supported here\n", chatradio::kernels::cpu::cpu_isa_name(isa));
    return 2;
  }
  const int max_threads = *std::max_element(thread_counts.begin(), thread_counts.end());

  std::printf("## Memory read bandwidth (streaming sum, 1 GiB, best of 5)\n\n| threads | GB/s |\n|---|---|\n");
  std::vector<double> bandwidth(max_threads + 1, 0.0);  // [threads]
  {
    std::vector<uint64_t> buf((size_t{1} << 30) / sizeof(uint64_t));
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = i * 0x9E3779B97F4A7C15ull;
    for (int t : thread_counts) {
      ThreadPool pool(t);
      bandwidth[t] = measure_bandwidth(pool, buf);
      std::printf("| %d | %.1f |\n", t, bandwidth[t]);
    }
  }

  std::printf("\n## ThreadPool dispatch (mean of 20000 calls)\n\n"
              "| threads | empty call µs | call of 5 µs per slot, µs (ideal 5) |\n|---|---|---|\n");
  for (int t : thread_counts) {
    ThreadPool pool(t);
    auto t0 = Clock::now();
    for (int i = 0; i < 20000; ++i) pool.parallel_for(t, [](int, int) {});
    const double empty = seconds_since(t0) / 20000 * 1e6;
    t0 = Clock::now();
    for (int i = 0; i < 20000; ++i) pool.parallel_for(t, [](int, int) { busy(5.0); });
    std::printf("| %d | %.2f | %.2f |\n", t, empty, seconds_since(t0) / 20000 * 1e6);
  }

  std::vector<Shape> shapes = {
      {"Llama-2-7B", "q/k/v/o", 4096, 4096}, {"Llama-2-7B", "gate/up", 11008, 4096},
      {"Llama-2-7B", "down", 4096, 11008},   {"Llama-2-7B", "lm_head", 32000, 4096},
      {"TinyLlama", "q/o", 2048, 2048},      {"TinyLlama", "gate/up", 5632, 2048},
      {"TinyLlama", "down", 2048, 5632},     {"TinyLlama", "k/v", 256, 2048},
  };
  std::vector<int> ms{1, 16, 64, 256};
  if (quick) {
    shapes = {shapes[0], shapes[2], shapes[4]};
    ms = {1, 16};
  }

  std::printf("\n## matmul_q4 (%s path, group 128; weight GB/s vs the bandwidth above)\n\n",
              chatradio::kernels::cpu::cpu_isa_name(isa));
  std::printf("| model | linear | out x in | weights MB | m | threads | ms/call best | ms/call median | "
              "weight GB/s | %% of BW | GFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    if (!only_model.empty() && only_model != s.model) continue;
    const Q4Matrix base = random_q4(s.n, s.k, 128, static_cast<uint32_t>(s.n * 31 + s.k));
    const double mb = static_cast<double>(base.weight_bytes()) / 1e6;
    // Cycle >= 256 MB of copies so a call never finds its weights in L3.
    const int copies = std::max(1, static_cast<int>(256.0 / mb + 0.999));
    std::vector<Q4Matrix> ws(copies, base);
    for (int m : ms) {
      std::vector<float> x(static_cast<size_t>(m) * s.k);  // [m, k]
      std::mt19937 g(m);
      std::normal_distribution<float> nd;
      for (float& v : x) v = nd(g);
      std::vector<float> out(static_cast<size_t>(m) * s.n);  // [m, n]
      const double flop = 2.0 * m * static_cast<double>(s.n) * s.k;
      for (int t : thread_counts) {
        ThreadPool pool(t);
        matmul_q4(out.data(), x.data(), ws[0], m, &pool, isa);  // warm-up
        // Enough calls for ~0.5 s (at least 3), timed one by one; median.
        std::vector<double> times;
        const auto start = Clock::now();
        for (int call = 0; times.size() < 3 || (seconds_since(start) < 0.5 && times.size() < 2000); ++call) {
          const auto t0 = Clock::now();
          matmul_q4(out.data(), x.data(), ws[call % copies], m, &pool, isa);
          times.push_back(seconds_since(t0));
        }
        // Rates from the best call: on a shared machine the median mostly
        // measures the neighbours; both are printed.
        std::sort(times.begin(), times.end());
        const double best = times[0], median = times[times.size() / 2];
        const double gbs = static_cast<double>(base.weight_bytes()) / best / 1e9;
        std::printf("| %s | %s | %dx%d | %.1f | %d | %d | %.3f | %.3f | %.1f | %.0f%% | %.1f |\n", s.model, s.what,
                    s.n, s.k, mb, m, t, best * 1e3, median * 1e3, gbs, 100.0 * gbs / bandwidth[t], flop / best / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
