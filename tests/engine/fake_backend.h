// A tensor-free backend and a test harness around the Scheduler.
//
// The fake KV cache stores, per slot, the token, its position and a digest of
// the whole sequence up to it — exactly what real KV depends on. A token's
// digest is computed from the PREVIOUS slot read back through the sequence's
// block table (as attention would), and every step re-reads every cached
// position of every scheduled sequence against the test's own record of the
// sequence. So a block shared wrongly, a copy-on-write missed, a block freed
// too early or a preempted sequence resumed from the wrong state shows up as a
// wrong slot — and, through the digest, as a different sampled token.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/engine/scheduler.h"

namespace chatradio::engine::testing {

constexpr uint64_t kDigestSeed = 0x5eed5eed5eed5eedULL;

inline uint64_t mix_digest(uint64_t prev, int32_t token) {
  uint64_t h = prev ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) * 0x9fb21c651e98df25ULL + 1);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

// The "model": next token from the digest of the sequence so far. Tokens
// 0..2 are never sampled (BOS/EOS-like ids stay under the test's control).
inline int32_t sample_from(uint64_t digest, int vocab) {
  return 3 + static_cast<int32_t>(digest % static_cast<uint64_t>(vocab - 3));
}

// Digests of every prefix of one sequence, extended on demand.
struct Truth {
  std::vector<int32_t> tokens;
  std::vector<uint64_t> digests;
  int prompt_len = 0;  // prompt (+ continuation): where generated tokens start

  uint64_t digest(size_t p) {
    while (digests.size() <= p) {
      const uint64_t prev = digests.empty() ? kDigestSeed : digests.back();
      digests.push_back(mix_digest(prev, tokens[digests.size()]));
    }
    return digests[p];
  }
};

// The tokens a correct engine must generate for `prompt` (unbounded run, cut by the caller).
inline std::vector<int32_t> reference_generation(const std::vector<int32_t>& prompt, int n, int vocab) {
  Truth t;
  t.tokens = prompt;
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t tok = sample_from(t.digest(t.tokens.size() - 1), vocab);
    out.push_back(tok);
    t.tokens.push_back(tok);
  }
  return out;
}

struct Slot {
  int32_t token = -1;
  int32_t pos = -1;
  uint64_t digest = 0;
};

class FakeBackend {
 public:
  FakeBackend(int n_blocks, int block_size, int vocab)
      : block_size_(block_size), vocab_(vocab), kv_(static_cast<size_t>(n_blocks) * block_size) {}

  // Runs `plan`; returns one sampled token per `samples` entry. Checks go to
  // `errors` (first message kept); scoring rows go to score_rows.
  std::vector<int32_t> run(const Plan& plan, const BlockManager& bm,
                           std::unordered_map<RequestId, Truth>& truth) {
    const int bs = block_size_;
    for (const BlockCopy& c : plan.copies) {
      if (bm.ref_count(c.dst) != 1) error("copy destination " + std::to_string(c.dst) + " is shared");
      std::copy_n(kv_.begin() + c.src * bs, bs, kv_.begin() + c.dst * bs);
    }
    std::vector<int32_t> sampled;
    for (const PlanEntry& e : plan.entries) {
      const std::string who = "step " + std::to_string(plan.step) + " request " + std::to_string(e.id) + ": ";
      Truth& t = truth.at(e.id);
      const int n = static_cast<int>(e.tokens.size());
      const int end = e.start_pos + n;
      if (n < 1 || end > static_cast<int>(t.tokens.size()) ||
          !std::equal(e.tokens.begin(), e.tokens.end(), t.tokens.begin() + e.start_pos)) {
        error(who + "plans tokens that are not the sequence's next ones");
        continue;
      }
      const auto& table = bm.table(e.id);
      if (e.blocks.size() > table.size() || !std::equal(e.blocks.begin(), e.blocks.end(), table.begin())) {
        error(who + "plan blocks are not the start of the block table");
      }
      if (static_cast<int>(e.blocks.size()) != (end + bs - 1) / bs) error(who + "blocks do not cover exactly");
      // Read back everything already cached: it must be this very sequence.
      for (int p = 0; p < e.start_pos; ++p) {
        const Slot& s = slot(e.blocks, p);
        if (s.token != t.tokens[p] || s.pos != p || s.digest != t.digest(p)) {
          error(who + "cached KV at position " + std::to_string(p) + " (block " +
                std::to_string(e.blocks[p / bs]) + ") is not this sequence's");
          break;
        }
      }
      for (int p = e.start_pos; p < end; ++p) {
        const BlockId b = e.blocks[p / bs];
        if (bm.ref_count(b) != 1) error(who + "writes into shared block " + std::to_string(b));
        for (const BlockCopy& c : plan.copies) {
          if (c.src == b) error(who + "writes into a copy source");
        }
        const uint64_t prev = p == 0 ? kDigestSeed : slot(e.blocks, p - 1).digest;
        Slot& s = kv_[static_cast<size_t>(b) * bs + p % bs];
        s = Slot{t.tokens[p], p, mix_digest(prev, t.tokens[p])};
        if (e.all_logits) score_rows[e.id][p] = s.digest;
      }
      if (e.samples) sampled.push_back(sample_from(slot(e.blocks, end - 1).digest, vocab_));
    }
    return sampled;
  }

  void error(const std::string& what) {
    if (n_errors++ == 0) first_error = what;
  }

  int n_errors = 0;
  std::string first_error;
  std::unordered_map<RequestId, std::map<int, uint64_t>> score_rows;  // position -> logits "row"

 private:
  const Slot& slot(const std::vector<BlockId>& blocks, int p) const {
    return kv_[static_cast<size_t>(blocks[p / block_size_]) * block_size_ + p % block_size_];
  }

  int block_size_;
  int vocab_;
  std::vector<Slot> kv_;
};

// How a request ended, as the harness saw it.
struct Outcome {
  enum class Kind { kFinished, kCancelled, kExpired, kRejected } kind = Kind::kFinished;
  FinishReason reason = FinishReason::kMaxTokens;
  std::vector<int32_t> output;
  int n_preemptions = 0;
  int times_ended = 0;  // must end up exactly 1
  uint64_t step = 0;
};

// Scheduler + fake backend + the test's own record of every sequence.
class Harness {
 public:
  explicit Harness(const SchedulerConfig& cfg, int vocab = 1000)
      : sched(cfg), backend(cfg.n_blocks, cfg.block_size, vocab), vocab_(vocab) {}

  SubmitResult submit(Request r) {
    Truth t;
    t.tokens = r.prompt;
    t.tokens.insert(t.tokens.end(), r.continuation.begin(), r.continuation.end());
    t.prompt_len = static_cast<int>(t.tokens.size());
    const RequestId id = r.id;
    const RequestKind kind = r.kind;
    const int prompt_len = static_cast<int>(r.prompt.size());
    SubmitResult res = sched.submit(std::move(r));
    if (res.ok()) {
      truth[id] = std::move(t);
      kinds[id] = kind;
      prompt_lens[id] = prompt_len;
    } else {
      end(id, Outcome::Kind::kRejected);
    }
    return res;
  }

  // One engine iteration; every invariant is checked after each half.
  Plan step(Time now) {
    Plan plan = sched.schedule(now);
    check("after schedule");
    for (const RequestId id : plan.cancelled) end(id, Outcome::Kind::kCancelled);
    for (const RequestId id : plan.expired) end(id, Outcome::Kind::kExpired);
    const auto& cfg = sched.config();
    if (plan.n_tokens() > cfg.token_budget) fail("token budget exceeded");
    if (static_cast<int>(plan.entries.size()) > cfg.max_batch_size) fail("batch size exceeded");
    for (size_t i = 0; i < plan.entries.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (plan.entries[i].id == plan.entries[j].id) fail("a request twice in one plan");
      }
    }
    max_tokens_seen = std::max(max_tokens_seen, plan.n_tokens());
    if (plan.empty()) return plan;
    std::vector<int32_t> sampled = backend.run(plan, sched.blocks(), truth);
    std::vector<uint8_t> stops;
    size_t k = 0;
    for (const PlanEntry& e : plan.entries) {
      if (!e.samples) continue;
      Truth& t = truth.at(e.id);
      t.tokens.push_back(sampled[k]);
      stops.push_back(stop_fn && stop_fn(e.id, t) ? 1 : 0);
      ++k;
    }
    if (in_flight_hook) in_flight_hook(plan);
    const StepResult r = sched.on_step_done(plan, sampled, stop_fn ? std::span<const uint8_t>(stops)
                                                                   : std::span<const uint8_t>());
    for (const Finished& f : r.finished) {
      Outcome& o = end(f.id, Outcome::Kind::kFinished);
      o.reason = f.reason;
      o.output = f.output;
      o.n_preemptions = f.n_preemptions;
      const Truth& t = truth.at(f.id);
      if (kinds.at(f.id) == RequestKind::kGenerate &&
          !std::equal(f.output.begin(), f.output.end(), t.tokens.begin() + t.prompt_len, t.tokens.end())) {
        fail("request " + std::to_string(f.id) + " output differs from its sampled tokens");
      }
    }
    check("after step");
    return plan;
  }

  // Steps until nothing is left (or max_steps); returns the number of steps.
  int run_until_idle(Time& now, Time dt = 0.01, int max_steps = 100000) {
    int n = 0;
    while (sched.has_work() && n < max_steps) {
      step(now);
      now += dt;
      ++n;
    }
    return n;
  }

  Outcome& end(RequestId id, Outcome::Kind kind) {
    Outcome& o = outcomes[id];
    if (o.times_ended++ > 0) fail("request " + std::to_string(id) + " ended twice");
    o.kind = kind;
    o.step = sched.stats().steps;
    return o;
  }

  void check(const std::string& when) {
    if (std::string e = sched.validate(); !e.empty()) fail(when + ": " + e);
  }

  void fail(const std::string& what) {
    if (n_failures++ < 10) ADD_FAILURE() << what;
  }

  // No failure anywhere (harness or backend).
  ::testing::AssertionResult ok() const {
    if (n_failures == 0 && backend.n_errors == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << n_failures << " harness failures, " << backend.n_errors
                                         << " backend errors; first backend error: " << backend.first_error;
  }

  int vocab() const { return vocab_; }

  Scheduler sched;
  FakeBackend backend;
  std::unordered_map<RequestId, Truth> truth;
  std::unordered_map<RequestId, RequestKind> kinds;
  std::unordered_map<RequestId, int> prompt_lens;
  std::map<RequestId, Outcome> outcomes;
  std::function<bool(RequestId, const Truth&)> stop_fn;  // caller's stop decision
  std::function<void(const Plan&)> in_flight_hook;       // runs between backend and on_step_done
  int n_failures = 0;
  int max_tokens_seen = 0;

 private:
  int vocab_;
};

inline std::vector<int32_t> make_tokens(int n, int32_t first) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = first + i;
  return v;
}

inline Request generate_request(RequestId id, std::vector<int32_t> prompt, int max_new,
                                Priority prio = Priority::kRoutine, Time arrival = 0) {
  Request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.priority = prio;
  r.arrival = arrival;
  return r;
}

}  // namespace chatradio::engine::testing
