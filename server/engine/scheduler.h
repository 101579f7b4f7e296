// Scheduler: decides, step by step, which tokens of which requests the backend
// computes, with which KV blocks. It deals in request ids, token ids, counts and
// block ids only — never tensors — and reads no clock: time is passed in, so a
// test can replay any interleaving exactly. Single-threaded: the engine thread
// owns it. Design, invariants and policies: docs/scheduler.md.
//
// The step protocol:
//   Plan plan = sched.schedule(now);        // who computes what this step
//   ... backend: copy_kv_block(c.dst, c.src) for each plan.copies entry,
//       then forward(logits, plan.to_batch()), then sample ...
//   StepResult r = sched.on_step_done(plan, sampled);  // append, finish, cache
// Every non-empty plan must be followed by its on_step_done before the next
// schedule (an empty plan needs none).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "model/batch.h"
#include "server/engine/block_manager.h"

namespace chatradio::engine {

using RequestId = SeqId;
using Time = double;  // seconds on the caller's monotonic clock

enum class Priority : uint8_t { kStat, kRoutine };
enum class RequestKind : uint8_t {
  kGenerate,  // prefill the prompt, then sample up to max_new_tokens
  kScore,     // prefill prompt + continuation; logits for every continuation token, no sampling
};

struct Request {
  RequestId id = 0;  // unique among live requests
  RequestKind kind = RequestKind::kGenerate;
  Priority priority = Priority::kRoutine;
  std::vector<int32_t> prompt;        // non-empty
  std::vector<int32_t> continuation;  // kScore: the teacher-forced tokens (non-empty)
  int max_new_tokens = 256;           // kGenerate: >= 1
  int32_t eos_id = -1;                // kGenerate: finish when sampled; < 0 for none
  Time arrival = 0;                   // orders the queue (and drives aging)
  std::optional<Time> deadline;       // absolute; the request expires at the first step at or after it
};

enum class SubmitStatus : uint8_t {
  kAccepted,
  kOverloaded,  // the waiting queue is full: retry later (fails fast, nothing queued)
  kInvalid,     // malformed request (empty prompt, duplicate id, ...)
  kTooLarge,    // could never fit in the KV pool (or max_seq_len) even alone
};

struct SubmitResult {
  SubmitStatus status = SubmitStatus::kAccepted;
  std::string error;  // for the user, empty when accepted
  bool ok() const { return status == SubmitStatus::kAccepted; }
};

// One sequence's work in a step; converts 1:1 into model::SeqSlice.
struct PlanEntry {
  RequestId id = 0;
  std::vector<int32_t> tokens;  // compute these at positions [start_pos, start_pos + size)
  int32_t start_pos = 0;        // tokens of this sequence already in its KV blocks
  std::vector<BlockId> blocks;  // block table prefix exactly covering [0, start_pos + tokens.size())
  // Scoring: logits for every token of the slice (row j is position start_pos + j);
  // otherwise only the last row is produced.
  bool all_logits = false;
  // The last row completes the sequence so far: sample one token from it and
  // pass it to on_step_done (in entry order).
  bool samples = false;
};

struct Plan {
  uint64_t step = 0;
  std::vector<BlockCopy> copies;  // copy-on-write: apply before computing the entries
  std::vector<PlanEntry> entries;
  // Requests that left (or were requeued) while this plan was made; each id
  // appears in at most one terminal list, once in the request's life.
  std::vector<RequestId> cancelled;  // by cancel()
  std::vector<RequestId> expired;    // deadline passed
  std::vector<RequestId> preempted;  // blocks reclaimed; requeued for recompute (not terminal)

  bool empty() const { return entries.empty(); }
  int n_tokens() const;
  int n_samples() const;
  model::Batch to_batch() const;
};

enum class FinishReason : uint8_t { kEos, kStop, kMaxTokens, kScored };

struct Finished {
  RequestId id = 0;
  FinishReason reason = FinishReason::kMaxTokens;
  std::vector<int32_t> output;  // generated tokens (including the EOS token when kEos)
  int n_preemptions = 0;
};

struct StepResult {
  std::vector<Finished> finished;  // terminal: these requests are gone
};

struct SchedulerConfig {
  int n_blocks = 1024;        // KV pool size
  int block_size = 16;        // tokens per block (kernels::AttnShape::block_size)
  int token_budget = 512;     // max tokens computed per step (decodes + prefill chunks)
  int max_batch_size = 64;    // max sequences per step, and max running sequences
  int max_waiting = 256;      // submit() beyond this many waiting fails with kOverloaded
  // Aging: a ROUTINE request ranks as if it had arrived this many seconds
  // later, so it yields to STAT requests arriving within that window but
  // outranks any request arriving after it. Finite, so nothing starves.
  double routine_aging_s = 30.0;
  int max_seq_len = 0;           // > 0: reject requests that could grow longer (model context)
  // A waiting request that finds every batch slot taken preempts the worst
  // running sequence ranked below it (never a STAT for a STAT). Off: it waits
  // for a slot to free up (benchmarks measure what the preemption costs).
  bool slot_preemption = true;
  BlockHashFn block_hash = nullptr;  // prefix-cache key; nullptr = default_block_hash
};

enum class RequestState : uint8_t { kWaiting, kRunning };

struct RequestInfo {
  RequestState state = RequestState::kWaiting;
  int n_tokens = 0;     // prompt (+ continuation) + generated
  int n_computed = 0;   // of those, in KV cache
  int n_generated = 0;
  int n_preemptions = 0;
};

struct SchedulerStats {
  uint64_t steps = 0;
  uint64_t preemptions = 0;       // preemptions_kv + preemptions_slot
  uint64_t preemptions_kv = 0;    // to free KV blocks (a decode's next block, an admission's prompt)
  uint64_t preemptions_slot = 0;  // to free a batch slot for a higher-ranked waiting request
  int n_waiting = 0;
  int n_running = 0;
  uint64_t prefix_hits = 0;    // blocks reused from the prefix cache
  uint64_t prefix_misses = 0;  // full prompt blocks computed
  double prefix_hit_rate = 0;
  double block_usage = 0;      // used / n_blocks
};

class Scheduler {
 public:
  // Throws std::invalid_argument for an unusable config.
  explicit Scheduler(const SchedulerConfig& config);

  SubmitResult submit(Request request);
  // Cancels a live request: it is reported in the next plan's `cancelled`.
  // Its blocks are freed at once, except for a running request while a plan
  // is in flight (the backend may be reading them): then right after that
  // plan's on_step_done, which also drops its sampled token.
  // False when the id is unknown (never submitted, or already gone).
  bool cancel(RequestId id);

  Plan schedule(Time now);
  // `sampled`: one token per entry with `samples`, in entry order. `stop`
  // (optional, same length): nonzero where the caller decided the request
  // ends with that token (stop string, client limit).
  // Throws std::logic_error for a plan that is not the one in flight and
  // std::invalid_argument for sizes that do not match it.
  StepResult on_step_done(const Plan& plan, std::span<const int32_t> sampled,
                          std::span<const uint8_t> stop = {});

  bool has_work() const { return !seqs_.empty() || !pending_cancelled_.empty(); }
  int n_waiting() const { return static_cast<int>(waiting_.size()); }
  int n_running() const { return static_cast<int>(running_.size()); }
  std::optional<RequestInfo> info(RequestId id) const;
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return config_; }
  const BlockManager& blocks() const { return blocks_; }

  // Empty when all invariants hold (block accounting, every running sequence's
  // blocks cover its computed tokens, waiting ones hold none, queue/set
  // consistency), else the first violation. For tests; O(pool + requests).
  std::string validate() const;

 private:
  // Rank: lower is served first and preempted last. rank = arrival (+ the
  // routine aging constant); ties go to the earlier arrival, then submission order.
  using Rank = std::tuple<Time, Time, uint64_t, RequestId>;

  struct Sequence {
    Request req;
    std::vector<int32_t> tokens;  // prompt (+ continuation) + generated
    int prompt_len = 0;
    int n_generated = 0;
    int n_computed = 0;
    int n_preemptions = 0;
    Rank rank;
    bool running = false;
    bool cancel_requested = false;  // cancelled while a plan was in flight
    uint64_t preempted_step = 0;    // not re-admitted in the step that preempted it
  };

  struct Scheduled {
    RequestId id;
    int n_tokens;
  };

  // Per-schedule() working state.
  struct StepBuild {
    Plan plan;
    std::vector<Scheduled> work;
    int budget_left = 0;
  };

  enum class PreemptReason : uint8_t { kKv, kSlot };

  int max_kv_tokens(const Request& r) const;
  int reusable_prefix(const Sequence& s) const;
  void remove(RequestId id);  // frees blocks, forgets the request
  void preempt(StepBuild& build, RequestId id, PreemptReason why);
  bool worse_than(const Rank& a, const Rank& b) const { return a > b; }
  // The running sequences an admission of `s` may preempt, worst first: those
  // ranked below it, except STAT ones when `s` is STAT.
  std::vector<RequestId> victims_for(const Sequence& s) const;
  void schedule_decode(StepBuild& build, Sequence& s);
  void schedule_prefill(StepBuild& build, Sequence& s);
  bool admit(StepBuild& build, Sequence& s);
  PlanEntry make_entry(const Sequence& s, int n_tokens) const;

  SchedulerConfig config_;
  BlockManager blocks_;
  std::unordered_map<RequestId, Sequence> seqs_;
  std::set<Rank> waiting_;
  std::set<Rank> running_;
  std::set<std::pair<Time, RequestId>> deadlines_;
  std::vector<RequestId> pending_cancelled_;  // to report in the next plan
  std::vector<RequestId> deferred_cancels_;   // running while a plan was in flight
  uint64_t next_order_ = 0;
  uint64_t step_ = 0;
  bool in_flight_ = false;
  uint64_t preemptions_kv_ = 0;
  uint64_t preemptions_slot_ = 0;
};

}  // namespace chatradio::engine
