// The service's one "call thread": every step of an RPC after its handler
// returned (engine news, a finished write, a cancellation) runs here, one at a
// time, so an RPC's state needs no lock and an RPC in flight holds no thread
// while the engine works on it. The work per step is small (detokenizing a few
// tokens, starting one write), so one thread keeps up with thousands of
// streams; gRPC's own threads and the engine thread only hand news over.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace chatradio::service {

class CallPump {
 public:
  // Something the pump runs. A task scheduled again before it ran is queued
  // once and runs once, seeing every change made before either schedule.
  class Task {
   public:
    virtual ~Task() = default;

   protected:
    // On the pump thread. May delete the task (it is not touched afterwards).
    virtual void run() = 0;

   private:
    friend class CallPump;
    std::atomic<bool> queued_{false};
  };

  CallPump();
  // Runs what is still queued, then stops the thread. Nothing may schedule
  // during or after destruction.
  ~CallPump();
  CallPump(const CallPump&) = delete;
  CallPump& operator=(const CallPump&) = delete;

  // Any thread; never blocks on a running task.
  void schedule(Task* task);

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task*> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

}  // namespace chatradio::service
