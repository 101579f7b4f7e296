#include "kernels/cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <new>
#include <optional>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace chatradio::kernels::cpu {
namespace {

// Tells the core we are in a spin loop (frees the sibling hyper-thread and
// avoids the memory-order machine clear when the awaited line changes).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

using Clock = std::chrono::steady_clock;

// A non-negative decimal integer with surrounding whitespace, or nullopt.
std::optional<long long> parse_count(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  long long v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// ceil(quota / period) when both are positive counts; nullopt = no cap.
std::optional<long long> quota_cpus(std::string_view quota, std::string_view period) {
  const auto q = parse_count(quota), p = parse_count(period);
  if (!q || !p || *q <= 0 || *p <= 0) return std::nullopt;
  return (*q + *p - 1) / *p;
}

std::string read_file(const char* path) {
  std::ifstream f(path);
  return f ? std::string(std::istreambuf_iterator<char>(f), {}) : std::string();
}

}  // namespace

int usable_cpus(const CpuLimitSources& src) {
  long long n = src.affinity_cpus > 0 ? src.affinity_cpus : std::thread::hardware_concurrency();
  // cgroup v2 cpu.max is "QUOTA PERIOD" on one line, QUOTA "max" when unlimited.
  const std::string_view v2 = src.cgroup2_cpu_max;
  if (const size_t sp = v2.find(' '); sp != std::string_view::npos) {
    if (const auto cap = quota_cpus(v2.substr(0, sp), v2.substr(sp + 1))) n = std::min(n, *cap);
  }
  if (const auto cap = quota_cpus(src.cgroup1_cfs_quota_us, src.cgroup1_cfs_period_us)) n = std::min(n, *cap);
  return static_cast<int>(std::max(1LL, n));
}

int default_thread_count() {
  CpuLimitSources src;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) src.affinity_cpus = CPU_COUNT(&set);
  src.cgroup2_cpu_max = read_file("/sys/fs/cgroup/cpu.max");
  src.cgroup1_cfs_quota_us = read_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  src.cgroup1_cfs_period_us = read_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  return usable_cpus(src);
}

void ThreadPool::FreeDeleter::operator()(std::byte* p) const { std::free(p); }

ThreadPool::ThreadPool(int n_threads, int spin_us)
    : n_threads_(n_threads < 1 ? 1 : n_threads),
      spin_us_(spin_us < 0 ? 0 : spin_us),
      slots_(new Slot[n_threads < 1 ? 1 : n_threads]) {
  workers_.reserve(n_threads_ - 1);
  for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { worker_main(t); });
}

ThreadPool::~ThreadPool() {
  if (workers_.empty()) return;
  stop_.store(true, std::memory_order_relaxed);  // published by the bump below
  generation_.fetch_add(1, std::memory_order_seq_cst);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

std::byte* ThreadPool::workspace(size_t bytes) {
  if (bytes > workspace_bytes_ || !workspace_) {
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, rounded));
    if (!p) throw std::bad_alloc();
    workspace_.reset(p);
    workspace_bytes_ = rounded;
  }
  return workspace_.get();
}

bool ThreadPool::try_run_slot(int slot, uint32_t gen) {
  uint32_t expected = gen - 1;
  // acq_rel: the winner then reads the job fields of `gen` (published with
  // the generation bump, and stable until every slot of it is done).
  if (!slots_[slot].claimed.compare_exchange_strong(expected, gen, std::memory_order_acq_rel)) return false;
  int begin = 0, end = 0;
  task_range(job_tasks_, n_threads_, slot, &begin, &end);
  for (int task = begin; task < end; ++task) job_fn_(job_ctx_, task, slot);
  done_.fetch_add(1, std::memory_order_release);
  return true;
}

void ThreadPool::run(int n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 0) return;
  // One task, or no workers: slot 0 owns every task under task_range's
  // mapping anyway, so running inline changes nothing but the cost.
  if (n_threads_ == 1 || n_tasks == 1) {
    for (int task = 0; task < n_tasks; ++task) fn(ctx, task, 0);
    return;
  }
  job_fn_ = fn;
  job_ctx_ = ctx;
  job_tasks_ = n_tasks;
  done_.store(0, std::memory_order_relaxed);
  // seq_cst pairs with the workers' sleepers_ increment: either a worker sees
  // the new generation before sleeping, or we see it asleep and wake it.
  const uint32_t gen = generation_.fetch_add(1, std::memory_order_seq_cst) + 1;
  if (sleepers_.load(std::memory_order_seq_cst) > 0) generation_.notify_all();

  try_run_slot(0, gen);
  // Take over the slots of workers that have not claimed theirs yet.
  for (int slot = 1; slot < n_threads_; ++slot) try_run_slot(slot, gen);

  // The remaining slots are running on awake workers: spin. Yield after a
  // while in case one was descheduled mid-slot.
  for (int spins = 0; done_.load(std::memory_order_acquire) != n_threads_;) {
    if (spins < 4096) {
      ++spins;
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::worker_main(int thread) {
  uint32_t seen = 0;
  for (;;) {
    // Wait for a new generation: spin for spin_us_, then sleep on the futex.
    uint32_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) {
      auto start = Clock::now();
      const auto spin = std::chrono::microseconds(spin_us_);
      for (uint32_t it = 1; (gen = generation_.load(std::memory_order_acquire)) == seen; ++it) {
        cpu_relax();
        if ((it & 63) != 0 || Clock::now() - start < spin) continue;
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (generation_.load(std::memory_order_seq_cst) == seen) {
          generation_.wait(seen, std::memory_order_seq_cst);
        }
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        start = Clock::now();
      }
    }
    seen = gen;
    if (stop_.load(std::memory_order_relaxed)) return;
    // Fails if the caller took the slot over, or if we slept through a whole
    // job and `gen` is already stale: then we just wait for the next one.
    try_run_slot(thread, gen);
  }
}

}  // namespace chatradio::kernels::cpu
