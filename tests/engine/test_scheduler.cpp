// Scheduler behaviour, one policy per test, against the fake backend (which
// checks every KV read and write; see fake_backend.h).
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/engine/fake_backend.h"

namespace chatradio::engine {
namespace {

using testing::generate_request;
using testing::Harness;
using testing::make_tokens;
using testing::Outcome;
using testing::reference_generation;

SchedulerConfig config(int n_blocks, int block_size, int budget = 512, int batch = 64) {
  SchedulerConfig c;
  c.n_blocks = n_blocks;
  c.block_size = block_size;
  c.token_budget = budget;
  c.max_batch_size = batch;
  return c;
}

const PlanEntry* find_entry(const Plan& plan, RequestId id) {
  for (const auto& e : plan.entries) {
    if (e.id == id) return &e;
  }
  return nullptr;
}

bool contains(const std::vector<RequestId>& v, RequestId id) { return std::find(v.begin(), v.end(), id) != v.end(); }

void expect_no_leaks(const Harness& h) {
  const BlockManager& bm = h.sched.blocks();
  EXPECT_FALSE(h.sched.has_work());
  EXPECT_EQ(bm.n_used(), 0);
  EXPECT_EQ(bm.n_free() + bm.n_cached(), bm.n_blocks());
  EXPECT_EQ(bm.n_pins(), 0);
}

void expect_generated(const Harness& h, RequestId id, const std::vector<int32_t>& prompt, int n) {
  const auto it = h.outcomes.find(id);
  ASSERT_NE(it, h.outcomes.end()) << "request " << id << " never ended";
  EXPECT_EQ(it->second.kind, Outcome::Kind::kFinished);
  EXPECT_EQ(it->second.output, reference_generation(prompt, n, h.vocab())) << "request " << id;
}

TEST(Scheduler, BudgetAndBatchSizeHoldWhileLongPromptsAreChunked) {
  Harness h(config(64, 16, /*budget=*/32, /*batch=*/4));
  for (RequestId id = 1; id <= 6; ++id) ASSERT_TRUE(h.submit(generate_request(id, make_tokens(100, id * 1000), 5)).ok());
  Time now = 0;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.max_tokens_seen, 32);
  for (RequestId id = 1; id <= 6; ++id) expect_generated(h, id, make_tokens(100, id * 1000), 5);
  expect_no_leaks(h);
}

TEST(Scheduler, DecodesRunEveryStepWhileALongPromptPrefills) {
  Harness h(config(64, 16, /*budget=*/32));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(8, 1), 30)).ok());
  h.step(0);  // prefilled, decoding from now on
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(300, 500), 2)).ok());
  for (int i = 1; i <= 9; ++i) {
    const Plan plan = h.step(0.01 * i);
    const PlanEntry* a = find_entry(plan, 1);
    const PlanEntry* b = find_entry(plan, 2);
    ASSERT_TRUE(a && b) << "step " << i;
    EXPECT_EQ(a->tokens.size(), 1u);
    EXPECT_EQ(b->tokens.size(), 31u);  // the rest of the budget
    EXPECT_EQ(plan.entries.front().id, 1u);
  }
  Time now = 1;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 1, make_tokens(8, 1), 30);
  expect_generated(h, 2, make_tokens(300, 500), 2);
}

TEST(Scheduler, SamePromptSharesFullBlocksAndReportsHits) {
  Harness h(config(32, 16));
  const auto prompt = make_tokens(40, 7);
  ASSERT_TRUE(h.submit(generate_request(1, prompt, 4)).ok());
  h.step(0);
  ASSERT_TRUE(h.submit(generate_request(2, prompt, 4)).ok());
  const Plan plan = h.step(0.01);
  const PlanEntry* b = find_entry(plan, 2);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->start_pos, 32);  // two full blocks reused, the partial third recomputed
  EXPECT_EQ(b->tokens.size(), 8u);
  const auto& a_table = h.sched.blocks().table(1);
  ASSERT_GE(b->blocks.size(), 3u);
  EXPECT_EQ(b->blocks[0], a_table[0]);
  EXPECT_EQ(b->blocks[1], a_table[1]);
  EXPECT_NE(b->blocks[2], a_table[2]);  // the last partial block is never shared
  EXPECT_EQ(h.sched.blocks().ref_count(a_table[0]), 2);
  EXPECT_TRUE(plan.copies.empty());
  const SchedulerStats st = h.sched.stats();
  EXPECT_EQ(st.prefix_hits, 2u);
  EXPECT_EQ(st.prefix_misses, 2u);
  EXPECT_DOUBLE_EQ(st.prefix_hit_rate, 0.5);
  Time now = 0.02;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 1, prompt, 4);
  expect_generated(h, 2, prompt, 4);
  expect_no_leaks(h);
  EXPECT_GE(h.sched.blocks().n_cached(), 2);
}

// A prompt that is exactly two cached blocks: the last token must be
// recomputed (its logits are needed), and it lives in a shared block.
TEST(Scheduler, RecomputingInsideASharedBlockCopiesItFirst) {
  Harness h(config(32, 16));
  const auto prompt = make_tokens(32, 100);
  ASSERT_TRUE(h.submit(generate_request(1, prompt, 8)).ok());
  h.step(0);
  ASSERT_TRUE(h.submit(generate_request(2, prompt, 8)).ok());
  const auto a_table = h.sched.blocks().table(1);
  h.in_flight_hook = [&](const Plan& plan) {
    if (plan.step != 2) return;
    ASSERT_EQ(plan.copies.size(), 1u);
    EXPECT_EQ(h.sched.blocks().ref_count(plan.copies[0].src), 2);  // the reader + the pin
  };
  const Plan plan = h.step(0.01);
  const PlanEntry* b = find_entry(plan, 2);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->start_pos, 31);
  EXPECT_EQ(b->tokens, std::vector<int32_t>{prompt[31]});
  ASSERT_EQ(plan.copies.size(), 1u);
  EXPECT_EQ(plan.copies[0].src, a_table[1]);
  EXPECT_EQ(plan.copies[0].dst, b->blocks[1]);
  EXPECT_EQ(b->blocks[0], a_table[0]);
  EXPECT_EQ(h.sched.blocks().ref_count(a_table[1]), 1);  // unpinned after the step
  Time now = 0.02;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 1, prompt, 8);
  expect_generated(h, 2, prompt, 8);
  expect_no_leaks(h);

  // Now only the cache holds the prefix (refcount 0): the copy source is pinned alone.
  ASSERT_TRUE(h.submit(generate_request(3, prompt, 2)).ok());
  const Plan p3 = h.step(now);
  ASSERT_EQ(p3.copies.size(), 1u);
  EXPECT_EQ(find_entry(p3, 3)->start_pos, 31);
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 3, prompt, 2);
  expect_no_leaks(h);
}

std::vector<std::vector<int32_t>> pressure_prompts() {
  std::vector<std::vector<int32_t>> p;
  for (int i = 0; i < 6; ++i) p.push_back(make_tokens(10 + 4 * i, 50 * i + 3));
  return p;
}

std::map<RequestId, Outcome> run_prompts(int n_blocks, uint64_t* preemptions) {
  Harness h(config(n_blocks, 4, 64, 6));
  const auto prompts = pressure_prompts();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_TRUE(h.submit(generate_request(i + 1, prompts[i], 20)).ok());
  Time now = 0;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_no_leaks(h);
  *preemptions = h.sched.stats().preemptions;
  return h.outcomes;
}

TEST(Scheduler, PreemptedRequestsResumeToTheSameTokens) {
  uint64_t calm = 0, pressured = 0;
  const auto ref = run_prompts(200, &calm);
  const auto got = run_prompts(16, &pressured);  // 64 tokens of KV for ~6 x 45
  EXPECT_EQ(calm, 0u);
  EXPECT_GT(pressured, 0u);
  ASSERT_EQ(ref.size(), got.size());
  int n_preempted = 0;
  for (const auto& [id, o] : ref) {
    EXPECT_EQ(o.output.size(), 20u);
    EXPECT_EQ(got.at(id).output, o.output) << "request " << id;
    n_preempted += got.at(id).n_preemptions > 0;
  }
  EXPECT_GT(n_preempted, 0);
}

TEST(Scheduler, StatIsServedBeforeEarlierRoutine) {
  Harness h(config(64, 16, 512, /*batch=*/1));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(8, 1), 3, Priority::kRoutine, 0.0)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(8, 50), 3, Priority::kStat, 0.5)).ok());
  const Plan plan = h.step(1.0);
  ASSERT_EQ(plan.entries.size(), 1u);
  EXPECT_EQ(plan.entries[0].id, 2u);
  Time now = 1.01;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_LT(h.outcomes.at(2).step, h.outcomes.at(1).step);
}

TEST(Scheduler, StatPreemptsRoutineWhenBlocksRunOut) {
  Harness h(config(8, 4));  // 32 tokens of KV
  const auto r_prompt = make_tokens(20, 1), s_prompt = make_tokens(12, 300);
  ASSERT_TRUE(h.submit(generate_request(1, r_prompt, 10)).ok());  // up to 29 tokens: the whole pool
  for (int i = 0; i < 3; ++i) h.step(0.01 * i);
  EXPECT_GE(h.sched.blocks().table(1).size(), 6u);
  ASSERT_TRUE(h.submit(generate_request(2, s_prompt, 4, Priority::kStat, 0.03)).ok());
  const Plan plan = h.step(0.03);
  EXPECT_TRUE(contains(plan.preempted, 1));
  EXPECT_EQ(find_entry(plan, 1), nullptr);  // its decode was withdrawn from the step
  ASSERT_NE(find_entry(plan, 2), nullptr);
  EXPECT_EQ(h.sched.stats().preemptions_kv, 1u);  // a slot was free: blocks were the reason
  EXPECT_EQ(h.sched.stats().preemptions_slot, 0u);
  Time now = 0.04;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_LT(h.outcomes.at(2).step, h.outcomes.at(1).step);
  EXPECT_GE(h.outcomes.at(1).n_preemptions, 1);
  expect_generated(h, 1, r_prompt, 10);
  expect_generated(h, 2, s_prompt, 4);
  expect_no_leaks(h);
}

// The batch is full of decoding routine requests: a STAT arriving now is in
// the very next plan, in the slot of the worst-ranked of them, and every
// output is still exactly what an undisturbed run gives.
TEST(Scheduler, StatTakesTheSlotOfTheWorstDecodingRoutineInTheNextPlan) {
  Harness h(config(64, 4, 512, /*batch=*/2));
  const auto a = make_tokens(6, 1), b = make_tokens(6, 100), stat = make_tokens(5, 300);
  ASSERT_TRUE(h.submit(generate_request(1, a, 30)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, b, 30)).ok());
  for (int i = 0; i < 3; ++i) h.step(0.01 * i);
  ASSERT_EQ(h.sched.n_running(), 2);
  ASSERT_EQ(h.sched.info(2)->n_generated, 3);
  ASSERT_TRUE(h.submit(generate_request(3, stat, 4, Priority::kStat, 0.03)).ok());
  const Plan plan = h.step(0.03);
  ASSERT_NE(find_entry(plan, 3), nullptr);
  EXPECT_EQ(plan.preempted, std::vector<RequestId>{2});  // same arrival as 1, submitted later: ranks worst
  EXPECT_NE(find_entry(plan, 1), nullptr);
  EXPECT_EQ(find_entry(plan, 2), nullptr);  // its decode was withdrawn from the step
  EXPECT_EQ(h.sched.stats().preemptions_slot, 1u);
  EXPECT_EQ(h.sched.stats().preemptions_kv, 0u);
  Time now = 0.04;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_LT(h.outcomes.at(3).step, h.outcomes.at(2).step);
  EXPECT_EQ(h.outcomes.at(2).n_preemptions, 1);
  EXPECT_EQ(h.outcomes.at(1).n_preemptions, 0);
  EXPECT_EQ(h.sched.stats().preemptions, 1u);  // no churn afterwards
  expect_generated(h, 1, a, 30);
  expect_generated(h, 2, b, 30);
  expect_generated(h, 3, stat, 4);
  expect_no_leaks(h);
}

// A full batch and too few free blocks: the slot comes from the worst routine
// request, the rest of the blocks from the next one, each counted by reason.
TEST(Scheduler, SlotAndKvPreemptionsAreCountedApart) {
  Harness h(config(12, 4, 512, /*batch=*/2));  // 48 tokens of KV
  const auto a = make_tokens(10, 1), b = make_tokens(10, 100), stat = make_tokens(36, 300);
  ASSERT_TRUE(h.submit(generate_request(1, a, 14)).ok());  // up to 23 tokens: 6 blocks
  ASSERT_TRUE(h.submit(generate_request(2, b, 14)).ok());
  for (int i = 0; i < 4; ++i) h.step(0.01 * i);
  ASSERT_EQ(h.sched.blocks().n_available(), 4);  // 13 tokens computed each: 4 blocks each
  ASSERT_TRUE(h.submit(generate_request(3, stat, 2, Priority::kStat, 0.04)).ok());  // needs 9 blocks
  const Plan plan = h.step(0.04);
  ASSERT_NE(find_entry(plan, 3), nullptr);
  EXPECT_EQ(plan.preempted, (std::vector<RequestId>{2, 1}));
  EXPECT_EQ(h.sched.stats().preemptions_slot, 1u);
  EXPECT_EQ(h.sched.stats().preemptions_kv, 1u);
  Time now = 0.05;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_LT(h.outcomes.at(3).step, h.outcomes.at(1).step);
  expect_generated(h, 1, a, 14);
  expect_generated(h, 2, b, 14);
  expect_generated(h, 3, stat, 2);
  expect_no_leaks(h);
}

// Between two STAT requests the running one keeps its slot. Request 3 ranks
// above running STAT 2 (an earlier arrival stamp, as a requeued request has)
// and the routine request has aged past it: nothing may make room for it.
TEST(Scheduler, StatNeverPreemptsAStat) {
  SchedulerConfig cfg = config(64, 4, 512, /*batch=*/2);
  cfg.routine_aging_s = 1.0;
  Harness h(cfg);
  const auto r = make_tokens(6, 1), s2 = make_tokens(6, 100), s3 = make_tokens(5, 300);
  ASSERT_TRUE(h.submit(generate_request(1, r, 12, Priority::kRoutine, 0.0)).ok());  // rank 1
  ASSERT_TRUE(h.submit(generate_request(2, s2, 20, Priority::kStat, 5.0)).ok());    // rank 5
  h.step(5.0);
  ASSERT_EQ(h.sched.n_running(), 2);
  ASSERT_TRUE(h.submit(generate_request(3, s3, 4, Priority::kStat, 4.0)).ok());  // rank 4
  for (int i = 1; i <= 5; ++i) {
    const Plan plan = h.step(5.0 + 0.01 * i);
    EXPECT_TRUE(plan.preempted.empty()) << "step " << i;
    EXPECT_EQ(find_entry(plan, 3), nullptr) << "step " << i;
  }
  Time now = 5.1;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.sched.stats().preemptions, 0u);
  EXPECT_LT(h.outcomes.at(1).step, h.outcomes.at(3).step);  // it got the slot request 1 freed
  expect_generated(h, 1, r, 12);
  expect_generated(h, 2, s2, 20);
  expect_generated(h, 3, s3, 4);
  expect_no_leaks(h);
}

// Aging is unchanged: a routine request that arrived more than
// routine_aging_s before a STAT outranks it and keeps its slot.
TEST(Scheduler, StatDoesNotPreemptARoutineRequestThatAgedPastIt) {
  SchedulerConfig cfg = config(64, 4, 512, /*batch=*/1);
  cfg.routine_aging_s = 1.0;
  Harness h(cfg);
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(6, 1), 10, Priority::kRoutine, 0.0)).ok());  // rank 1
  h.step(2.0);
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(5, 300), 3, Priority::kStat, 2.0)).ok());  // rank 2
  const Plan plan = h.step(2.01);
  EXPECT_TRUE(plan.preempted.empty());
  EXPECT_EQ(find_entry(plan, 2), nullptr);
  Time now = 2.02;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_LT(h.outcomes.at(1).step, h.outcomes.at(2).step);
  EXPECT_EQ(h.sched.stats().preemptions, 0u);
  expect_no_leaks(h);
}

// With slot preemption off (the benchmark's control) a STAT waits for a slot
// to free up, and nothing is preempted.
TEST(Scheduler, WithoutSlotPreemptionAStatWaitsForAFreeSlot) {
  SchedulerConfig cfg = config(64, 4, 512, /*batch=*/2);
  cfg.slot_preemption = false;
  Harness h(cfg);
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(6, 1), 6)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(6, 100), 30)).ok());
  for (int i = 0; i < 3; ++i) h.step(0.01 * i);
  ASSERT_TRUE(h.submit(generate_request(3, make_tokens(5, 300), 4, Priority::kStat, 0.03)).ok());
  Time now = 0.03;
  while (h.outcomes.count(1) == 0) {
    const Plan plan = h.step(now);
    now += 0.01;
    EXPECT_EQ(find_entry(plan, 3), nullptr);
  }
  EXPECT_NE(find_entry(h.step(now), 3), nullptr);  // in the slot request 1 left
  now += 0.01;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.sched.stats().preemptions, 0u);
  EXPECT_LT(h.outcomes.at(3).step, h.outcomes.at(2).step);
  expect_no_leaks(h);
}

TEST(Scheduler, WorstDecoderPreemptsItselfWhenNoBlockIsLeft) {
  Harness h(config(8, 4));
  const auto a_prompt = make_tokens(22, 1), b_prompt = make_tokens(8, 100);
  ASSERT_TRUE(h.submit(generate_request(1, a_prompt, 2)).ok());  // 6 blocks, room left in the last
  ASSERT_TRUE(h.submit(generate_request(2, b_prompt, 4)).ok());  // 2 full blocks: needs a 9th
  h.step(0);
  EXPECT_EQ(h.sched.blocks().n_available(), 0);
  const Plan plan = h.step(0.01);
  EXPECT_EQ(plan.preempted, std::vector<RequestId>{2});
  EXPECT_EQ(find_entry(plan, 2), nullptr);
  ASSERT_NE(find_entry(plan, 1), nullptr);
  EXPECT_EQ(h.sched.stats().preemptions_kv, 1u);
  Time now = 0.02;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 1, a_prompt, 2);
  expect_generated(h, 2, b_prompt, 4);
  expect_no_leaks(h);
}

// One slot, a STAT arriving every step and each needing two: without aging
// the routine request would wait as long as the stream lasts.
bool routine_finishes_under_stat_stream(double aging_s, Time horizon) {
  SchedulerConfig cfg = config(64, 16, 512, 1);
  cfg.routine_aging_s = aging_s;
  cfg.max_waiting = 1000;
  Harness h(cfg);
  EXPECT_TRUE(h.submit(generate_request(1, make_tokens(4, 1), 2, Priority::kRoutine, 0.0)).ok());
  RequestId next = 2;
  for (int i = 0; i * 0.1 < horizon; ++i) {
    const Time now = 0.1 * i;
    EXPECT_TRUE(h.submit(generate_request(next, make_tokens(4, 100 + next), 2, Priority::kStat, now)).ok());
    ++next;
    h.step(now);
  }
  EXPECT_TRUE(h.ok());
  return h.outcomes.count(1) != 0;
}

TEST(Scheduler, AgingPreventsStarvationOfRoutineRequests) {
  EXPECT_TRUE(routine_finishes_under_stat_stream(5.0, 30.0));
  EXPECT_FALSE(routine_finishes_under_stat_stream(1000.0, 30.0));  // the control: it starves
}

TEST(Scheduler, CancelWhileWaiting) {
  Harness h(config(64, 16, 512, 1));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(8, 1), 5)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(8, 90), 5)).ok());
  h.step(0);
  EXPECT_TRUE(h.sched.cancel(2));
  EXPECT_FALSE(h.sched.info(2).has_value());
  EXPECT_FALSE(h.sched.cancel(2));
  EXPECT_FALSE(h.sched.cancel(777));
  const Plan plan = h.step(0.01);
  EXPECT_EQ(plan.cancelled, std::vector<RequestId>{2});
  Time now = 0.02;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.outcomes.at(2).kind, Outcome::Kind::kCancelled);
  expect_generated(h, 1, make_tokens(8, 1), 5);
  expect_no_leaks(h);
}

TEST(Scheduler, CancelMidPrefillFreesBlocksAtOnce) {
  Harness h(config(64, 4, /*budget=*/16));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(100, 1), 5)).ok());
  h.step(0);
  ASSERT_EQ(h.sched.info(1)->n_computed, 16);
  EXPECT_EQ(h.sched.blocks().n_used(), 25);  // the whole prompt's blocks are taken at admission
  EXPECT_TRUE(h.sched.cancel(1));
  EXPECT_EQ(h.sched.blocks().n_used(), 0);
  EXPECT_EQ(h.sched.blocks().n_cached(), 4);  // the computed full blocks stay reusable
  const Plan plan = h.step(0.01);
  EXPECT_EQ(plan.cancelled, std::vector<RequestId>{1});
  EXPECT_TRUE(plan.empty());
  EXPECT_TRUE(h.ok());
  expect_no_leaks(h);
}

TEST(Scheduler, CancelMidDecode) {
  Harness h(config(64, 4));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(10, 1), 50)).ok());
  for (int i = 0; i < 4; ++i) h.step(0.01 * i);
  EXPECT_EQ(h.sched.info(1)->n_generated, 4);
  EXPECT_TRUE(h.sched.cancel(1));
  EXPECT_EQ(h.sched.blocks().n_used(), 0);
  const Plan plan = h.step(1);
  EXPECT_TRUE(contains(plan.cancelled, 1));
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.outcomes.at(1).kind, Outcome::Kind::kCancelled);
  expect_no_leaks(h);
}

TEST(Scheduler, CancelDuringAStepTakesEffectWhenTheStepIsDone) {
  Harness h(config(64, 4));
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(10, 1), 50)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(10, 80), 3)).ok());
  h.step(0);
  h.in_flight_hook = [&](const Plan&) {
    EXPECT_TRUE(h.sched.cancel(1));
    EXPECT_GT(h.sched.blocks().table(1).size(), 0u);  // the backend may still be using them
  };
  h.step(0.01);
  h.in_flight_hook = nullptr;
  EXPECT_FALSE(h.sched.info(1).has_value());
  EXPECT_TRUE(h.sched.blocks().table(1).empty());
  const Plan plan = h.step(0.02);
  EXPECT_TRUE(contains(plan.cancelled, 1));
  EXPECT_EQ(find_entry(plan, 1), nullptr);
  Time now = 0.03;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.outcomes.at(1).kind, Outcome::Kind::kCancelled);
  expect_generated(h, 2, make_tokens(10, 80), 3);
  expect_no_leaks(h);
}

TEST(Scheduler, DeadlinesExpireWaitingAndRunningRequests) {
  Harness h(config(64, 4, 512, /*batch=*/2));
  Request a = generate_request(1, make_tokens(10, 1), 100);
  a.deadline = 0.35;
  Request b = generate_request(2, make_tokens(10, 40), 100);
  Request c = generate_request(3, make_tokens(10, 70), 3);
  c.deadline = 0.25;  // waits behind a and b: never runs
  Request d = generate_request(4, make_tokens(10, 90), 3);
  d.deadline = 100;  // far away: finishes normally
  for (Request* r : {&a, &b, &c, &d}) ASSERT_TRUE(h.submit(*r).ok());
  bool saw_c = false, saw_a = false;
  for (int i = 0; i <= 4; ++i) {
    const Plan plan = h.step(0.1 * i);
    if (contains(plan.expired, 3)) {
      saw_c = true;
      EXPECT_EQ(i, 3);
    }
    if (contains(plan.expired, 1)) {
      saw_a = true;
      EXPECT_EQ(i, 4);
      EXPECT_EQ(find_entry(plan, 1), nullptr);
      EXPECT_NE(find_entry(plan, 4), nullptr);  // took the freed slot in the same step
    }
  }
  EXPECT_TRUE(saw_c && saw_a);
  ASSERT_TRUE(h.sched.cancel(2));
  Time now = 1;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.outcomes.at(1).kind, Outcome::Kind::kExpired);
  EXPECT_EQ(h.outcomes.at(3).kind, Outcome::Kind::kExpired);
  expect_generated(h, 4, make_tokens(10, 90), 3);
  expect_no_leaks(h);
}

TEST(Scheduler, FullWaitingQueueFailsFast) {
  SchedulerConfig cfg = config(64, 16);
  cfg.max_waiting = 2;
  Harness h(cfg);
  ASSERT_TRUE(h.submit(generate_request(1, make_tokens(4, 1), 2)).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(4, 1), 2)).ok());
  const SubmitResult r = h.submit(generate_request(3, make_tokens(4, 1), 2));
  EXPECT_EQ(r.status, SubmitStatus::kOverloaded);
  EXPECT_NE(r.error.find("overloaded"), std::string::npos);
  h.step(0);  // both admitted: the queue drains
  EXPECT_TRUE(h.submit(generate_request(4, make_tokens(4, 1), 2)).ok());
  Time now = 0.01;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_no_leaks(h);
}

TEST(Scheduler, RejectsWhatCanNeverFitAndMalformedRequests) {
  SchedulerConfig cfg = config(4, 16);  // 64 tokens of KV
  Harness h(cfg);
  const SubmitResult big = h.submit(generate_request(1, make_tokens(60, 1), 10));
  EXPECT_EQ(big.status, SubmitStatus::kTooLarge);
  EXPECT_NE(big.error.find("5 KV blocks"), std::string::npos) << big.error;
  Request score;
  score.id = 2;
  score.kind = RequestKind::kScore;
  score.prompt = make_tokens(50, 1);
  score.continuation = make_tokens(20, 1);
  EXPECT_EQ(h.submit(score).status, SubmitStatus::kTooLarge);

  Scheduler s(cfg);
  EXPECT_EQ(s.submit(generate_request(3, {}, 4)).status, SubmitStatus::kInvalid);
  EXPECT_EQ(s.submit(generate_request(3, {1}, 0)).status, SubmitStatus::kInvalid);
  EXPECT_EQ(s.submit(generate_request(3, {1, -2}, 2)).status, SubmitStatus::kInvalid);
  Request with_cont = generate_request(3, {1}, 2);
  with_cont.continuation = {2};
  EXPECT_EQ(s.submit(with_cont).status, SubmitStatus::kInvalid);
  Request no_cont = generate_request(3, {1}, 2);
  no_cont.kind = RequestKind::kScore;
  EXPECT_EQ(s.submit(no_cont).status, SubmitStatus::kInvalid);
  EXPECT_TRUE(s.submit(generate_request(3, {1}, 2)).ok());
  EXPECT_EQ(s.submit(generate_request(3, {1}, 2)).status, SubmitStatus::kInvalid);  // duplicate id

  SchedulerConfig limited = cfg;
  limited.max_seq_len = 32;
  Scheduler sl(limited);
  EXPECT_EQ(sl.submit(generate_request(1, make_tokens(30, 1), 5)).status, SubmitStatus::kTooLarge);

  // Exactly the whole pool fits, and runs to completion alone.
  const auto prompt = make_tokens(60, 9);
  ASSERT_TRUE(h.submit(generate_request(5, prompt, 5)).ok());
  Time now = 0;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_generated(h, 5, prompt, 5);
  expect_no_leaks(h);
}

void expect_scored(Harness& h, RequestId id, int prompt_len) {
  ASSERT_TRUE(h.outcomes.count(id));
  const Outcome& o = h.outcomes.at(id);
  EXPECT_EQ(o.kind, Outcome::Kind::kFinished);
  EXPECT_EQ(o.reason, FinishReason::kScored);
  EXPECT_TRUE(o.output.empty());
  auto& t = h.truth.at(id);
  const auto& rows = h.backend.score_rows[id];
  for (int p = prompt_len - 1; p + 1 < static_cast<int>(t.tokens.size()); ++p) {
    ASSERT_TRUE(rows.count(p)) << "no logits row for position " << p;
    EXPECT_EQ(rows.at(p), t.digest(p));
  }
}

TEST(Scheduler, ScoringPrefillsWithAllLogitsAndNeverSamples) {
  Harness h(config(64, 4, /*budget=*/16));
  Request s;
  s.id = 1;
  s.kind = RequestKind::kScore;
  s.prompt = make_tokens(10, 1);
  s.continuation = make_tokens(30, 200);
  ASSERT_TRUE(h.submit(s).ok());
  Request late = s;  // all_logits only once the scored region starts
  late.id = 2;
  late.prompt = make_tokens(40, 500);
  late.continuation = make_tokens(5, 9);
  ASSERT_TRUE(h.submit(late).ok());
  ASSERT_TRUE(h.submit(generate_request(3, make_tokens(6, 700), 4)).ok());
  Time now = 0;
  while (h.sched.has_work()) {
    const Plan plan = h.step(now);
    now += 0.01;
    for (const auto& e : plan.entries) {
      if (e.id == 3) continue;
      EXPECT_FALSE(e.samples);
      const int prompt_len = e.id == 1 ? 10 : 40;
      EXPECT_EQ(e.all_logits, e.start_pos + static_cast<int>(e.tokens.size()) > prompt_len - 1);
    }
  }
  EXPECT_TRUE(h.ok());
  expect_scored(h, 1, 10);
  expect_scored(h, 2, 40);
  expect_generated(h, 3, make_tokens(6, 700), 4);
  expect_no_leaks(h);
}

TEST(Scheduler, ScoringReusesACachedPromptThroughACopy) {
  Harness h(config(64, 16));
  const auto prompt = make_tokens(32, 5);
  ASSERT_TRUE(h.submit(generate_request(1, prompt, 3)).ok());
  Time now = 0;
  h.run_until_idle(now);
  Request s;
  s.id = 2;
  s.kind = RequestKind::kScore;
  s.prompt = prompt;
  s.continuation = make_tokens(20, 900);
  ASSERT_TRUE(h.submit(s).ok());
  const Plan plan = h.step(now);
  EXPECT_EQ(plan.copies.size(), 1u);
  EXPECT_EQ(find_entry(plan, 2)->start_pos, 31);  // first row needed: position 31 predicts token 32
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  expect_scored(h, 2, 32);
  expect_no_leaks(h);
}

TEST(Scheduler, FinishesOnEosAndOnTheCallersStopDecision) {
  Harness h(config(64, 4));
  const auto prompt = make_tokens(9, 11);
  const auto ref = reference_generation(prompt, 12, h.vocab());
  Request eos = generate_request(1, prompt, 12);
  eos.eos_id = ref[4];
  const size_t eos_at = std::find(ref.begin(), ref.end(), ref[4]) - ref.begin();
  ASSERT_TRUE(h.submit(eos).ok());
  ASSERT_TRUE(h.submit(generate_request(2, make_tokens(9, 300), 12)).ok());
  h.stop_fn = [](RequestId id, const testing::Truth& t) {
    return id == 2 && static_cast<int>(t.tokens.size()) - t.prompt_len == 3;
  };
  Time now = 0;
  h.run_until_idle(now);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.outcomes.at(1).reason, FinishReason::kEos);
  EXPECT_EQ(h.outcomes.at(1).output, std::vector<int32_t>(ref.begin(), ref.begin() + eos_at + 1));
  EXPECT_EQ(h.outcomes.at(2).reason, FinishReason::kStop);
  EXPECT_EQ(h.outcomes.at(2).output.size(), 3u);
  expect_no_leaks(h);
}

TEST(Scheduler, StepProtocolMisuseThrows) {
  Scheduler s(config(16, 4));
  ASSERT_TRUE(s.submit(generate_request(1, make_tokens(6, 1), 3)).ok());
  const Plan plan = s.schedule(0);
  ASSERT_EQ(plan.n_samples(), 1);
  EXPECT_THROW(s.schedule(0), std::logic_error);
  EXPECT_THROW(s.on_step_done(plan, {}), std::invalid_argument);
  const std::vector<int32_t> tok{5};
  s.on_step_done(plan, tok);
  EXPECT_THROW(s.on_step_done(plan, tok), std::logic_error);  // already done
  const Plan idle_check = s.schedule(0.01);
  EXPECT_EQ(idle_check.entries.size(), 1u);
}

TEST(Scheduler, PlanConvertsOneToOneIntoABatch) {
  Scheduler s(config(16, 4));
  Request sc;
  sc.id = 2;
  sc.kind = RequestKind::kScore;
  sc.prompt = make_tokens(3, 1);
  sc.continuation = make_tokens(2, 9);
  ASSERT_TRUE(s.submit(generate_request(1, make_tokens(6, 1), 3)).ok());
  ASSERT_TRUE(s.submit(sc).ok());
  const Plan plan = s.schedule(0);
  const model::Batch batch = plan.to_batch();
  ASSERT_EQ(batch.seqs.size(), plan.entries.size());
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    EXPECT_EQ(batch.seqs[i].tokens, plan.entries[i].tokens);
    EXPECT_EQ(batch.seqs[i].start_pos, plan.entries[i].start_pos);
    EXPECT_EQ(batch.seqs[i].blocks, plan.entries[i].blocks);
    EXPECT_EQ(batch.seqs[i].all_logits, plan.entries[i].all_logits);
  }
  EXPECT_EQ(batch.n_tokens(), plan.n_tokens());
  EXPECT_EQ(batch.n_logit_rows(), 1 + 5);
}

TEST(Scheduler, RejectsAnUnusableConfig) {
  SchedulerConfig c = config(16, 4);
  c.token_budget = 0;
  EXPECT_THROW(Scheduler{c}, std::invalid_argument);
  c = config(16, 4);
  c.routine_aging_s = -1;
  EXPECT_THROW(Scheduler{c}, std::invalid_argument);
}

}  // namespace
}  // namespace chatradio::engine
