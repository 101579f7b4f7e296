#include "server/service/call_pump.h"

namespace chatradio::service {

CallPump::CallPump() : thread_([this] { loop(); }) {}

CallPump::~CallPump() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void CallPump::schedule(Task* task) {
  if (task->queued_.exchange(true, std::memory_order_acq_rel)) return;  // already queued: it will see this news
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(task);
  }
  cv_.notify_one();
}

void CallPump::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything queued has run
    Task* t = queue_.front();
    queue_.pop_front();
    lock.unlock();
    // Cleared before run(): news arriving while it runs queues it again. An
    // exchange, not a store: reading the schedulers' exchanges makes what they
    // wrote before scheduling visible to run().
    t->queued_.exchange(false, std::memory_order_acq_rel);
    t->run();
    lock.lock();
  }
}

}  // namespace chatradio::service
