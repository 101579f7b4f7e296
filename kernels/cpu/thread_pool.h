// A persistent fork-join thread pool for the CPU kernels.
//
// The decoder calls into it ~200 times per token (every linear, every
// attention), so a dispatch must cost microseconds, not the tens of
// microseconds of waking sleeping threads through the kernel: workers spin on
// a generation counter for a short while after each job and only then sleep
// (futex, through std::atomic::wait). Nothing is allocated per call.
//
// Partitioning is static and deterministic: with T threads, slot t owns the
// contiguous task range [ceil(t*n/T), ceil((t+1)*n/T)); worker t runs slot t
// and the caller runs slot 0. A worker that has not woken up by the time the
// caller has finished its own slot (descheduled on a shared or oversubscribed
// machine) has its slot taken over by the caller, so a late thread delays a
// call by nothing rather than by a scheduler tick. Either way each slot runs
// once, as a whole, and fn sees the slot index as `thread`, so per-thread
// scratch stays exclusive. Kernels must not let results depend on which
// thread ran a task (ours do not).
//
// One dispatcher at a time: parallel_for is not re-entrant (a task must not
// call parallel_for on the same pool) and must not be called concurrently from
// two threads. A pool belongs to one model runner.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace chatradio::kernels::cpu {

// What bounds the CPUs this process may use, as read from the system: the
// affinity mask and the CPU bandwidth quota of its cgroup (a container's
// `--cpus`), which the affinity mask does not show. Empty strings = file absent.
struct CpuLimitSources {
  int affinity_cpus = 0;              // CPUs in sched_getaffinity's mask (0 = unknown)
  std::string cgroup2_cpu_max;        // cgroup v2 cpu.max: "max 100000" or "200000 100000"
  std::string cgroup1_cfs_quota_us;   // cgroup v1 cpu.cfs_quota_us: "-1" or "200000"
  std::string cgroup1_cfs_period_us;  // cgroup v1 cpu.cfs_period_us: "100000"
};

// The thread count that uses the CPUs we may use and no more: the affinity
// count, capped by each quota present as ceil(quota / period) (a fractional
// quota still needs that CPU's share), never below 1. Unparsable or unlimited
// ("max", "-1") quotas do not cap. Pure, so tests feed it fixture strings.
int usable_cpus(const CpuLimitSources& src);

// usable_cpus() of this process, read from sched_getaffinity and
// /sys/fs/cgroup/{cpu.max, cpu/cpu.cfs_quota_us, cpu/cpu.cfs_period_us}:
// the default --threads of the CLI and the server.
int default_thread_count();

class ThreadPool {
 public:
  // n_threads counts the caller (1 = everything runs inline, no workers).
  // spin_us: how long an idle worker busy-waits for the next job before it
  // sleeps; ~100 µs covers the gap between two ops of one decode step.
  explicit ThreadPool(int n_threads, int spin_us = 100);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(task, thread) for every task in [0, n_tasks) exactly once and
  // returns when all have finished. thread is the slot, in [0, size()): the
  // tasks of one slot run in order on one thread. fn must not throw.
  template <class Fn>
  void parallel_for(int n_tasks, Fn&& fn) {
    auto call = [](void* ctx, int task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); };
    run(n_tasks, call, &fn);
  }

  // A 64-byte-aligned scratch area of at least `bytes`, owned by the pool and
  // reused across calls (grows, never shrinks), so ops need no per-call
  // allocation. Valid until the next workspace() call; only the dispatching
  // thread may call it, outside parallel_for.
  std::byte* workspace(size_t bytes);

  // The task range [begin, end) that `thread` runs out of n_tasks: contiguous,
  // sizes differing by at most one, low threads first (so with fewer tasks
  // than threads, the caller still gets one).
  static void task_range(int n_tasks, int n_threads, int thread, int* begin, int* end) {
    auto split = [&](int t) {
      return static_cast<int>((static_cast<int64_t>(n_tasks) * t + n_threads - 1) / n_threads);
    };
    *begin = split(thread);
    *end = split(thread + 1);
  }

 private:
  using TaskFn = void (*)(void* ctx, int task, int thread);

  void run(int n_tasks, TaskFn fn, void* ctx);
  void worker_main(int thread);
  // Claims slot `slot` for job `gen` and runs its tasks; false if another
  // thread claimed it first (or the job is not current any more).
  bool try_run_slot(int slot, uint32_t gen);

  int n_threads_ = 1;
  int spin_us_ = 100;
  std::vector<std::thread> workers_;

  // The current job; written by the dispatcher before it bumps generation_
  // (release), read by workers after they observe the bump (acquire).
  TaskFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  int job_tasks_ = 0;
  std::atomic<bool> stop_{false};  // read by workers after a generation bump

  // Each on its own cache line: workers spin on generation_ while the
  // dispatcher spins on done_.
  alignas(64) std::atomic<uint32_t> generation_{0};  // job number, bumped per dispatch
  alignas(64) std::atomic<int> done_{0};             // slots finished in this job
  alignas(64) std::atomic<int> sleepers_{0};         // workers blocked in wait()

  // Per slot: the last job it was claimed for. Every job claims every slot,
  // so a slot is claimable for job g exactly when it holds g - 1.
  struct alignas(64) Slot {
    std::atomic<uint32_t> claimed{0};
  };
  std::unique_ptr<Slot[]> slots_;  // [n_threads]

  struct FreeDeleter {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte, FreeDeleter> workspace_;
  size_t workspace_bytes_ = 0;
};

}  // namespace chatradio::kernels::cpu
