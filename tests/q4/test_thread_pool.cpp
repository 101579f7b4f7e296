// ThreadPool: every task runs exactly once, on the thread the static partition
// names, across many back-to-back calls (the spin path) and after idle gaps
// long enough for workers to fall asleep (the futex path).
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace chatradio::kernels::cpu
