// ThreadPool: every task runs exactly once, on the thread the static partition
// names, across many back-to-back calls (the spin path) and after idle gaps
// long enough for workers to fall asleep (the futex path).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {
namespace {

void check_once(ThreadPool& pool, int n_tasks) {
  std::vector<std::atomic<int>> runs(n_tasks);  // [n_tasks] times each task ran
  std::vector<int> owner(n_tasks, -1);          // [n_tasks] thread that ran it
  pool.parallel_for(n_tasks, [&](int task, int thread) {
    runs[task].fetch_add(1, std::memory_order_relaxed);
    owner[task] = thread;
  });
  for (int t = 0; t < n_tasks; ++t) {
    ASSERT_EQ(runs[t].load(), 1) << "task " << t << " of " << n_tasks;
    int begin, end;
    ThreadPool::task_range(n_tasks, pool.size(), owner[t], &begin, &end);
    ASSERT_TRUE(t >= begin && t < end) << "task " << t << " ran on thread " << owner[t];
  }
}

TEST(ThreadPool, TaskRangeCoversEverythingOnce) {
  for (int n_threads : {1, 2, 3, 4, 7}) {
    for (int n_tasks : {0, 1, 2, 3, 5, 8, 13, 100}) {
      int expect = 0;
      for (int t = 0; t < n_threads; ++t) {
        int b, e;
        ThreadPool::task_range(n_tasks, n_threads, t, &b, &e);
        EXPECT_EQ(b, expect);
        EXPECT_LE(e - b, (n_tasks + n_threads - 1) / n_threads);
        EXPECT_GE(e - b, n_tasks / n_threads);
        expect = e;
      }
      EXPECT_EQ(expect, n_tasks);
      if (n_tasks >= 1) {  // the caller (thread 0) always gets work
        int b, e;
        ThreadPool::task_range(n_tasks, n_threads, 0, &b, &e);
        EXPECT_GT(e, b);
      }
    }
  }
}

TEST(ThreadPool, EveryTaskOnceOnItsThread) {
  for (int n_threads : {1, 2, 3, 4}) {
    ThreadPool pool(n_threads);
    EXPECT_EQ(pool.size(), n_threads);
    for (int n_tasks : {0, 1, 2, 3, 4, 5, 7, 64, 1000}) check_once(pool, n_tasks);
  }
}

TEST(ThreadPool, ManyBackToBackCalls) {
  ThreadPool pool(3);
  std::atomic<long> total{0};
  for (int call = 0; call < 5000; ++call) {
    pool.parallel_for(3, [&](int task, int) { total.fetch_add(task + 1, std::memory_order_relaxed); });
  }
  EXPECT_EQ(total.load(), 5000L * 6);
}

TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(3, /*spin_us=*/0);  // workers go to sleep right away
  for (int call = 0; call < 50; ++call) {
    if (call % 10 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    check_once(pool, 9);
  }
}

TEST(ThreadPool, SlotRunsWholeOnOneThread) {
  // Whether a worker or the caller (taking over a late worker's slot) runs
  // it, the tasks of one slot run on one OS thread.
  for (int spin_us : {0, 100}) {
    ThreadPool pool(3, spin_us);
    for (int call = 0; call < 200; ++call) {
      std::vector<std::thread::id> who(30);  // [30] OS thread of each task
      pool.parallel_for(30, [&](int task, int) { who[task] = std::this_thread::get_id(); });
      for (int slot = 0; slot < 3; ++slot) {
        int b, e;
        ThreadPool::task_range(30, 3, slot, &b, &e);
        for (int t = b; t < e; ++t) ASSERT_EQ(who[t], who[b]) << "slot " << slot;
      }
    }
  }
}

TEST(ThreadPool, ResultsVisibleToCaller) {
  // Plain (non-atomic) writes by workers must be visible after parallel_for.
  ThreadPool pool(2);
  std::vector<int> data(4096);  // [4096]
  for (int round = 1; round <= 200; ++round) {
    pool.parallel_for(64, [&](int task, int) {
      for (int i = task * 64; i < (task + 1) * 64; ++i) data[i] = round * 7 + i;
    });
    for (int i = 0; i < 4096; ++i) ASSERT_EQ(data[i], round * 7 + i);
  }
}

TEST(ThreadPool, WorkspaceIsAlignedAndGrows) {
  ThreadPool pool(1);
  std::byte* a = pool.workspace(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  a[99] = std::byte{1};
  std::byte* b = pool.workspace(50);  // smaller: reused
  EXPECT_EQ(a, b);
  std::byte* c = pool.workspace(1 << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % 64, 0u);
  c[(1 << 20) - 1] = std::byte{2};
}

// The default thread count: the affinity mask capped by cgroup quotas, with
// the files' contents as the kernel writes them (trailing newline included).
CpuLimitSources affinity(int cpus) {
  CpuLimitSources s;
  s.affinity_cpus = cpus;
  return s;
}

TEST(UsableCpus, AffinityAloneWhenNoQuota) {
  EXPECT_EQ(usable_cpus(affinity(8)), 8);
  CpuLimitSources s = affinity(8);
  s.cgroup2_cpu_max = "max 100000\n";
  s.cgroup1_cfs_quota_us = "-1\n";
  s.cgroup1_cfs_period_us = "100000\n";
  EXPECT_EQ(usable_cpus(s), 8);
}

TEST(UsableCpus, Cgroup2QuotaCapsRoundingUp) {
  CpuLimitSources s = affinity(8);
  s.cgroup2_cpu_max = "200000 100000\n";
  EXPECT_EQ(usable_cpus(s), 2);
  s.cgroup2_cpu_max = "150000 100000\n";  // --cpus 1.5 still needs two threads' worth
  EXPECT_EQ(usable_cpus(s), 2);
  s.cgroup2_cpu_max = "50000 100000\n";  // half a CPU: never below 1
  EXPECT_EQ(usable_cpus(s), 1);
  s.cgroup2_cpu_max = "1600000 100000\n";  // a quota above the mask does not raise it
  EXPECT_EQ(usable_cpus(s), 8);
}

TEST(UsableCpus, Cgroup1QuotaCaps) {
  CpuLimitSources s = affinity(16);
  s.cgroup1_cfs_quota_us = "300000\n";
  s.cgroup1_cfs_period_us = "100000\n";
  EXPECT_EQ(usable_cpus(s), 3);
  s.cgroup1_cfs_quota_us = "250000\n";
  s.cgroup1_cfs_period_us = "200000\n";
  EXPECT_EQ(usable_cpus(s), 2);
}

TEST(UsableCpus, SmallestCapWins) {
  CpuLimitSources s = affinity(16);
  s.cgroup2_cpu_max = "400000 100000";
  s.cgroup1_cfs_quota_us = "200000";
  s.cgroup1_cfs_period_us = "100000";
  EXPECT_EQ(usable_cpus(s), 2);
}

TEST(UsableCpus, MalformedQuotasDoNotCap) {
  for (const char* bad : {"", "max", "garbage", "100000", "-5 100000", "200000 0", "2e5 100000", "200000 x"}) {
    CpuLimitSources s = affinity(4);
    s.cgroup2_cpu_max = bad;
    EXPECT_EQ(usable_cpus(s), 4) << "cpu.max '" << bad << "'";
  }
  CpuLimitSources s = affinity(4);
  s.cgroup1_cfs_quota_us = "200000";  // a quota without its period
  EXPECT_EQ(usable_cpus(s), 4);
}

TEST(UsableCpus, UnknownAffinityFallsBackToHardware) {
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(usable_cpus(affinity(0)), hw);
  const int here = default_thread_count();
  EXPECT_GE(here, 1);
  EXPECT_LE(here, hw);
}

}  // namespace
}  // namespace chatradio::kernels::cpu
