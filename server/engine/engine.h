// The engine: one thread that owns the scheduler and drives a backend, step
// after step, for every request in flight (continuous batching).
//
// Threads and queues (docs/architecture.md):
//   submitters (gRPC handlers, CLI, tests) --submit()/cancel()--> inbox (mutex)
//   engine thread: inbox -> Scheduler -> Plan -> Backend::forward -> Sampler
//                  -> each request's Handle (mutex + condvar, and the
//                     submitter's on_update callback) -> the submitter
// The engine thread is the only one that touches the scheduler, the backend and
// the samplers; submitters only ever touch the inbox and their own handle.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "model/backend.h"
#include "model/sampler.h"
#include "server/engine/scheduler.h"

namespace chatradio::engine {

using Clock = std::chrono::steady_clock;

// How a request ended.
enum class Status : uint8_t {
  kOk,         // finished normally (see finish)
  kCancelled,  // cancel() or the submitter went away
  kExpired,    // deadline passed
  kRejected,   // refused at submit (overload, too large, invalid): see error
  kFailed,     // the backend failed on a step this request was in: see error
  kNonFinite,  // the model produced NaN/Inf logits for this request: an internal error, see error
};

enum class Finish : uint8_t {
  kNone,        // not finished normally
  kEos,         // the model ended the text
  kLength,      // max_new_tokens reached
  kStop,        // the request's stop predicate fired (e.g. repetition guard)
  kScored,      // scoring request done
};

struct Outcome {
  Status status = Status::kOk;
  Finish finish = Finish::kNone;
  std::string error;              // for kRejected / kFailed / kNonFinite
  std::vector<int32_t> tokens;    // generated ids (EOS excluded); kNonFinite: those before the bad row
  std::vector<float> logprobs;    // scoring: log p(continuation[i] | everything before)
  int n_prompt_tokens = 0;
  int n_preemptions = 0;
  double queue_s = 0;        // submit -> first scheduled
  double first_token_s = 0;  // submit -> first generated token (or scored)
  double total_s = 0;        // submit -> end
};

// The submitter's side of one request. Thread-safe.
class Handle {
 public:
  uint64_t id() const { return id_; }
  // Blocks until new tokens arrive or the request ends; appends the new tokens
  // to `out`. Returns false once the request has ended and every token was
  // delivered (then outcome() is final).
  bool next(std::vector<int32_t>& out);
  // Never blocks: appends the tokens that arrived so far to `out`; false once
  // the request has ended and every token was delivered. For submitters that
  // learn of news from on_update instead of waiting.
  bool take(std::vector<int32_t>& out);
  // Blocks until the request ends.
  const Outcome& wait();
  bool done() const;
  // Asks the engine to stop this request; its KV blocks are freed at the next
  // step. Idempotent; a no-op once done.
  void cancel();

 private:
  friend class Engine;
  Handle(uint64_t id, std::function<void(uint64_t)> canceller, std::function<void()> on_update)
      : id_(id), cancel_(std::move(canceller)), on_update_(std::move(on_update)) {}
  void push(int32_t token);
  void finish(Outcome outcome);

  const uint64_t id_;
  std::function<void(uint64_t)> cancel_;
  // Called with mu_ held, so a submitter that sees done() knows no call of it
  // is still running (it may then free whatever the callback points at).
  const std::function<void()> on_update_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> pending_;  // sampled, not yet taken by next()
  bool done_ = false;
  Outcome outcome_;
};

struct GenerateParams {
  std::vector<int32_t> prompt;  // non-empty (BOS first, usually)
  int max_new_tokens = 256;
  model::SamplingParams sampling;
  Priority priority = Priority::kRoutine;
  std::optional<Clock::time_point> deadline;
  // Optional, run on the engine thread after each sampled token with the
  // generated tokens so far (including it): true ends the request with
  // Finish::kStop, keeping that token.
  std::function<bool(std::span<const int32_t> generated)> stop;
  // Optional: called after new tokens arrive and once when the request ends
  // (also when it is refused inside generate()). Runs on the engine thread
  // (or the caller's, for a refusal) with the handle's lock held: it must only
  // hand the news on (schedule work elsewhere), never block or call the Handle.
  std::function<void()> on_update;
};

struct ScoreParams {
  std::vector<int32_t> prompt;        // non-empty
  std::vector<int32_t> continuation;  // non-empty: the tokens to score
  Priority priority = Priority::kRoutine;
  std::optional<Clock::time_point> deadline;
  std::function<void()> on_update;  // as GenerateParams::on_update (called once, at the end)
};

struct EngineOptions {
  int token_budget = 512;      // tokens per step (decodes + prefill chunks)
  int max_batch_size = 64;     // sequences per step
  int max_waiting = 256;       // queued requests before submit fails fast
  double routine_aging_s = 30.0;
  // A waiting request that finds the batch full preempts the worst running one
  // ranked below it (a STAT takes a routine request's slot). Off only to
  // measure what that costs (bench_engine).
  bool slot_preemption = true;
};

struct EngineStats {
  uint64_t steps = 0;
  uint64_t preemptions = 0;       // preemptions_kv + preemptions_slot
  uint64_t preemptions_kv = 0;    // to free KV blocks
  uint64_t preemptions_slot = 0;  // to free a batch slot for a higher-ranked request
  int n_waiting = 0;  // accepted, not yet running (includes the inbox)
  int n_running = 0;
  uint64_t prefix_hits = 0;
  uint64_t prefix_misses = 0;
  double kv_usage = 0;
  uint64_t computed_tokens = 0;   // tokens run through the model (prefix-cache hits excluded)
  uint64_t generated_tokens = 0;
  uint64_t nonfinite_logits = 0;  // requests ended with Status::kNonFinite
};

class Engine {
 public:
  // Starts the engine thread. The backend must outlive the engine.
  Engine(model::Backend& backend, const EngineOptions& opts);
  // Stops the thread; requests still in flight end as kCancelled.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Never blocks on the engine thread. A request that can never run (too long
  // for the context or the KV pool, bad sampling values) or that finds the
  // queue full gets a handle that is already done with Status::kRejected and a
  // precise error; check handle->done() or just wait().
  std::shared_ptr<Handle> generate(GenerateParams params);
  std::shared_ptr<Handle> score(ScoreParams params);

  EngineStats stats() const;
  const model::LlamaConfig& model_config() const { return backend_.config(); }

 private:
  struct Live;  // engine-thread state of one request
  struct Submission {
    std::shared_ptr<Handle> handle;
    Request request;
    std::optional<GenerateParams> gen;  // generation settings (sampler, stop)
    Clock::time_point submitted;
  };

  std::shared_ptr<Handle> submit(Submission sub, std::function<void()> on_update);
  static std::shared_ptr<Handle> rejected(uint64_t id, std::string error, std::function<void()> on_update);
  void request_cancel(uint64_t id);
  void run();
  void step();
  bool execute(const Plan& plan);  // false (requests failed) when the backend throws
  void absorb_inbox();
  void end(uint64_t id, Outcome outcome);

  model::Backend& backend_;
  const EngineOptions opts_;
  const Clock::time_point epoch_;
  std::atomic<uint64_t> next_id_{1};

  // Inbox: the only state shared with submitters.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Submission> inbox_;
  std::vector<uint64_t> cancels_;
  bool stop_ = false;
  EngineStats stats_;  // published by the engine thread after each step

  // Engine-thread state.
  Scheduler sched_;
  std::unordered_map<uint64_t, std::unique_ptr<Live>> live_;
  std::vector<float> logits_;  // [rows, vocab], reused across steps
  std::vector<std::pair<std::shared_ptr<Handle>, Outcome>> ended_;  // to deliver after this step
  std::thread thread_;
};

}  // namespace chatradio::engine
