// CallPump: the one thread that steps every RPC of the service. What the
// service relies on: a task runs on the pump thread only, never twice at once;
// news scheduled while it is queued or running is seen by a later run; a task
// may delete itself in run(); the destructor runs what is still queued.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "server/service/call_pump.h"

namespace chatradio::service {
namespace {

// Counts news (posted from any thread) and what run() saw of it.
class Counter final : public CallPump::Task {
 public:
  std::atomic<int> posted{0};
  std::atomic<int> seen{0};
  std::atomic<int> runs{0};
  std::atomic<int> running{0};
  std::atomic<bool> overlapped{false};
  std::thread::id runner;
  std::atomic<bool> other_thread{false};

 protected:
  void run() override {
    if (running.fetch_add(1) != 0) overlapped = true;
    if (runner == std::thread::id()) runner = std::this_thread::get_id();
    if (runner != std::this_thread::get_id()) other_thread = true;
    seen = posted.load();
    ++runs;
    running.fetch_sub(1);
  }
};

TEST(CallPump, NewsFromManyThreadsIsAllSeenByOneThreadOneRunAtATime) {
  Counter c;
  {
    CallPump pump;
    std::vector<std::thread> posters;
    for (int t = 0; t < 4; ++t) {
      posters.emplace_back([&] {
        for (int i = 0; i < 5000; ++i) {
          c.posted.fetch_add(1);
          pump.schedule(&c);
        }
      });
    }
    for (std::thread& t : posters) t.join();
  }  // the destructor runs what is still queued
  EXPECT_EQ(c.seen.load(), 20000);  // the last run saw every post
  EXPECT_GE(c.runs.load(), 1);
  EXPECT_LE(c.runs.load(), 20000);  // coalesced while queued
  EXPECT_FALSE(c.overlapped.load());
  EXPECT_FALSE(c.other_thread.load());
  EXPECT_NE(c.runner, std::this_thread::get_id());
}

// A task that ends itself, like a call after OnDone.
class SelfDeleting final : public CallPump::Task {
 public:
  explicit SelfDeleting(std::atomic<int>& deleted) : deleted_(deleted) {}
  ~SelfDeleting() override { ++deleted_; }

 protected:
  void run() override { delete this; }

 private:
  std::atomic<int>& deleted_;
};

TEST(CallPump, ATaskMayDeleteItselfInRun) {
  std::atomic<int> deleted{0};
  {
    CallPump pump;
    for (int i = 0; i < 1000; ++i) pump.schedule(new SelfDeleting(deleted));
  }
  EXPECT_EQ(deleted.load(), 1000);
}

// A task that schedules itself again from run() (a call that submits a retry
// and is woken by the engine at once) runs again.
class Rescheduling final : public CallPump::Task {
 public:
  explicit Rescheduling(CallPump*& pump) : pump_(pump) {}
  std::atomic<int> runs{0};

 protected:
  void run() override {
    if (++runs < 10) pump_->schedule(this);
  }

 private:
  CallPump*& pump_;
};

TEST(CallPump, ATaskScheduledFromItsOwnRunRunsAgain) {
  CallPump* p = nullptr;
  Rescheduling r(p);
  {
    CallPump pump;
    p = &pump;
    pump.schedule(&r);
  }
  EXPECT_EQ(r.runs.load(), 10);
}

}  // namespace
}  // namespace chatradio::service
