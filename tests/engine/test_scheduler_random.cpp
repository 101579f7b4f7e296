// Randomized soak: thousands of seeded arrivals (shared prefixes, STAT and
// routine, scoring, EOS, stop decisions, deadlines, cancellations at every
// stage, some mid-step, oversized requests, overload) over a small pool. After
// every half-step the harness checks the scheduler's invariants (refcounts =
// table references, free + cached + used = N, running blocks cover computed
// tokens, budget, batch size) and the fake backend checks every KV slot read
// or written. At the end: every request ended exactly once, no block is used,
// and every finished request's output equals an independent reference run.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "tests/engine/fake_backend.h"

namespace chatradio::engine {
namespace {

using testing::Harness;
using testing::Outcome;
using testing::reference_generation;
using testing::Truth;

uint64_t constant_hash(uint64_t, std::span<const int32_t>) { return 0x1234; }
// Keys only a block's own tokens: equal blocks under different prefixes collide.
uint64_t prefix_blind_hash(uint64_t, std::span<const int32_t> t) { return default_block_hash(0, t); }

struct Params {
  uint64_t seed = 1;
  int n_blocks = 48;
  int block_size = 4;
  int budget = 24;
  int batch = 6;
  int max_waiting = 16;
  double aging_s = 1.0;
  int arrivals = 3000;
  int max_suffix = 20;
  BlockHashFn hash = nullptr;
  int vocab = 40;
  int prompt_alphabet = 0;  // > 0: prompt suffixes use only this many token ids
};

struct Meta {
  std::vector<int32_t> prompt;
  RequestKind kind = RequestKind::kGenerate;
  int max_new = 0;
  int32_t eos = -1;
};

// The caller's stop decision: a deterministic function of the sequence, so a
// reference run can replay it.
bool stops(RequestId id, const std::vector<int32_t>& tokens) { return id % 5 == 0 && tokens.back() % 11 == 0; }

void run_random(const Params& p) {
  SchedulerConfig cfg;
  cfg.n_blocks = p.n_blocks;
  cfg.block_size = p.block_size;
  cfg.token_budget = p.budget;
  cfg.max_batch_size = p.batch;
  cfg.max_waiting = p.max_waiting;
  cfg.routine_aging_s = p.aging_s;
  cfg.block_hash = p.hash;
  Harness h(cfg, p.vocab);
  std::mt19937_64 rng(p.seed);
  const auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto chance = [&](double q) { return std::uniform_real_distribution<double>(0, 1)(rng) < q; };
  const auto token = [&] { return uniform(3, p.vocab - 1); };

  // A few shared report templates, so the prefix cache sees real reuse.
  std::vector<std::vector<int32_t>> prefixes(5);
  for (size_t i = 1; i < prefixes.size(); ++i) {
    for (int k = uniform(p.block_size, 3 * p.block_size + 1); k > 0; --k) prefixes[i].push_back(token());
  }
  std::unordered_map<RequestId, Meta> meta;
  std::vector<RequestId> live;
  const auto pick_live = [&]() -> std::optional<RequestId> {
    if (live.empty()) return std::nullopt;
    return live[static_cast<size_t>(uniform(0, static_cast<int>(live.size()) - 1))];
  };
  h.stop_fn = [](RequestId id, const Truth& t) { return stops(id, t.tokens); };
  h.in_flight_hook = [&](const Plan&) {
    if (chance(0.02)) {
      if (auto id = pick_live()) h.sched.cancel(*id);
    }
  };

  const auto t0 = std::chrono::steady_clock::now();
  Time now = 0;
  const Time dt = 0.05;
  RequestId next_id = 1;
  int steps = 0;
  while (static_cast<int>(next_id) <= p.arrivals || h.sched.has_work()) {
    const int n_arrive = chance(0.02) ? 6 : (chance(0.45) ? 1 : 0);
    for (int a = 0; a < n_arrive && static_cast<int>(next_id) <= p.arrivals; ++a) {
      Request r;
      r.id = next_id++;
      r.arrival = now;
      r.priority = chance(0.25) ? Priority::kStat : Priority::kRoutine;
      r.prompt = prefixes[static_cast<size_t>(uniform(0, static_cast<int>(prefixes.size()) - 1))];
      for (int k = uniform(1, p.max_suffix); k > 0; --k) {
        r.prompt.push_back(p.prompt_alphabet > 0 ? uniform(3, 2 + p.prompt_alphabet) : token());
      }
      if (chance(0.01)) r.prompt.resize(static_cast<size_t>(p.n_blocks * p.block_size + 1), 5);  // never fits
      if (chance(0.15)) {
        r.kind = RequestKind::kScore;
        for (int k = uniform(1, 12); k > 0; --k) r.continuation.push_back(token());
      } else {
        r.max_new_tokens = uniform(1, 24);
        if (chance(0.5)) r.eos_id = token();
      }
      if (chance(0.3)) r.deadline = now + std::uniform_real_distribution<double>(0.2, 3.0)(rng);
      meta[r.id] = Meta{r.prompt, r.kind, r.max_new_tokens, r.eos_id};
      const RequestId id = r.id;
      if (h.submit(std::move(r)).ok()) live.push_back(id);
    }
    if (chance(0.04)) {
      if (auto id = pick_live()) h.sched.cancel(*id);
    }
    h.step(now);
    now += dt;
    ++steps;
    // Forget what ended (swap-remove keeps this O(live)).
    for (size_t i = 0; i < live.size();) {
      if (h.outcomes.count(live[i])) {
        live[i] = live.back();
        live.pop_back();
      } else {
        ++i;
      }
    }
    ASSERT_LT(steps, 50 * p.arrivals) << "no progress: livelock?";
    ASSERT_TRUE(h.ok()) << "seed " << p.seed << " step " << steps;
  }

  // Every request ended exactly once, and nothing holds a block.
  ASSERT_EQ(h.outcomes.size(), static_cast<size_t>(p.arrivals));
  std::map<Outcome::Kind, int> by_kind;
  std::map<FinishReason, int> by_reason;
  for (const auto& [id, o] : h.outcomes) {
    ASSERT_EQ(o.times_ended, 1) << "request " << id;
    ++by_kind[o.kind];
    if (o.kind != Outcome::Kind::kFinished) continue;
    ++by_reason[o.reason];
    const Meta& m = meta.at(id);
    if (m.kind == RequestKind::kScore) {
      EXPECT_EQ(o.reason, FinishReason::kScored);
      Truth& t = h.truth.at(id);
      const auto& rows = h.backend.score_rows[id];
      for (int q = static_cast<int>(m.prompt.size()) - 1; q + 1 < static_cast<int>(t.tokens.size()); ++q) {
        ASSERT_TRUE(rows.count(q) && rows.at(q) == t.digest(q)) << "request " << id << " position " << q;
      }
      continue;
    }
    // Same tokens as an undisturbed run, ended for the right reason.
    ASSERT_EQ(o.output, reference_generation(m.prompt, static_cast<int>(o.output.size()), p.vocab))
        << "request " << id << " (preempted " << o.n_preemptions << "x)";
    std::vector<int32_t> seq = m.prompt;
    for (size_t i = 0; i < o.output.size(); ++i) {
      seq.push_back(o.output[i]);
      const bool last = i + 1 == o.output.size();
      const bool eos = o.output[i] == m.eos;
      const bool stop = !eos && stops(id, seq);
      const bool full = !eos && !stop && static_cast<int>(i) + 1 == m.max_new;
      ASSERT_EQ(last, eos || stop || full) << "request " << id << " token " << i;
      if (last) {
        ASSERT_EQ(o.reason, eos ? FinishReason::kEos : stop ? FinishReason::kStop : FinishReason::kMaxTokens);
      }
    }
  }
  const BlockManager& bm = h.sched.blocks();
  EXPECT_EQ(bm.n_used(), 0);
  EXPECT_EQ(bm.n_free() + bm.n_cached(), bm.n_blocks());
  EXPECT_EQ(h.sched.n_waiting() + h.sched.n_running(), 0);

  const SchedulerStats st = h.sched.stats();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "seed %llu: %d steps, %.2fs | finished %d (eos %d stop %d max %d scored %d) cancelled %d expired %d "
      "rejected %d | preemptions %llu (kv %llu, slot %llu), prefix hit rate %.2f\n",
      static_cast<unsigned long long>(p.seed), steps, secs, by_kind[Outcome::Kind::kFinished],
      by_reason[FinishReason::kEos], by_reason[FinishReason::kStop], by_reason[FinishReason::kMaxTokens],
      by_reason[FinishReason::kScored], by_kind[Outcome::Kind::kCancelled], by_kind[Outcome::Kind::kExpired],
      by_kind[Outcome::Kind::kRejected], static_cast<unsigned long long>(st.preemptions),
      static_cast<unsigned long long>(st.preemptions_kv), static_cast<unsigned long long>(st.preemptions_slot),
      st.prefix_hit_rate);
  // The workload must actually exercise every path.
  EXPECT_GT(by_kind[Outcome::Kind::kCancelled], 0);
  EXPECT_GT(by_kind[Outcome::Kind::kExpired], 0);
  EXPECT_GT(by_kind[Outcome::Kind::kRejected], 0);
  EXPECT_GT(by_reason[FinishReason::kScored], 0);
  EXPECT_GT(by_reason[FinishReason::kEos], 0);
  EXPECT_GT(st.preemptions, 0u);
  if (p.hash != constant_hash) {
    EXPECT_GT(st.prefix_hits, 0u);
  }
}

TEST(SchedulerRandom, SmallPoolThreeThousandArrivals) { run_random(Params{}); }

TEST(SchedulerRandom, TinyBlocksHeavyPressure) {
  Params p;
  p.seed = 2;
  p.n_blocks = 24;
  p.block_size = 2;
  p.budget = 16;
  p.batch = 4;
  p.max_waiting = 8;
  p.aging_s = 0.5;
  p.arrivals = 2000;
  p.max_suffix = 12;
  run_random(p);
}

TEST(SchedulerRandom, RealisticBlocksLongerPrompts) {
  Params p;
  p.seed = 3;
  p.n_blocks = 16;
  p.block_size = 16;
  p.budget = 64;
  p.batch = 8;
  p.max_waiting = 32;
  p.aging_s = 2.0;
  p.arrivals = 1500;
  p.max_suffix = 60;
  run_random(p);
}

// Every key collides: the cache may only lose hits, never return wrong KV.
TEST(SchedulerRandom, CollisionStormNeverCorruptsKv) {
  Params p;
  p.seed = 4;
  p.n_blocks = 40;
  p.budget = 32;
  p.batch = 8;
  p.arrivals = 1500;
  p.hash = constant_hash;
  run_random(p);
}

// Equal blocks under different prefixes share a key (tiny alphabet, tiny
// blocks: it happens constantly); only the parent check tells them apart.
TEST(SchedulerRandom, PrefixBlindKeysNeverShareAcrossPrefixes) {
  Params p;
  p.seed = 5;
  p.n_blocks = 40;
  p.block_size = 2;
  p.budget = 32;
  p.batch = 8;
  p.arrivals = 1500;
  p.hash = prefix_blind_hash;
  p.prompt_alphabet = 2;
  run_random(p);
}

}  // namespace
}  // namespace chatradio::engine
