// The engine on the real CPU backend and the stories260K model: concurrent
// requests give exactly what each gives alone, prefix-cache hits give the same
// numbers as misses, and cancellation, deadlines and overload behave.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <limits>
#include <mutex>
#include <memory>
#include <span>
#include <thread>
#include <tuple>

#include "model/generate.h"
#include "model/llama.h"
#include "model/scoring.h"
#include "server/engine/engine.h"
#include "tests/common/shared.h"

namespace chatradio::engine {
namespace {

using ::chatradio::testing::shared_path;

class EngineCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    CHATRADIO_REQUIRE_SHARED("models/stories260K");
    dir_ = shared_path("models/stories260K");
  }
  std::unique_ptr<model::CpuLlama> load(int n_blocks, int threads = 1) {
    model::CpuBackendOptions o;
    o.n_kv_blocks = n_blocks;
    o.n_threads = threads;
    return model::CpuLlama::load(dir_, o);
  }
  // A prompt sharing a 20-token "template" prefix, then a request-specific tail.
  static std::vector<int32_t> prompt(int i) {
    std::vector<int32_t> p{1};
    for (int j = 0; j < 20; ++j) p.push_back(300 + j);
    for (int j = 0; j < 1 + i % 13; ++j) p.push_back(3 + (i * 31 + j * 7) % 500);
    return p;
  }
  std::string dir_;
};

TEST_F(EngineCpu, ConcurrentRequestsEqualRunningEachAlone) {
  auto alone = load(64);
  auto batched = load(128, 2);
  Engine engine(*batched, EngineOptions{64, 64, 256, 30.0});
  std::vector<GenerateParams> params;
  for (int i = 0; i < 32; ++i) {
    GenerateParams g;
    g.prompt = prompt(i);
    g.max_new_tokens = 20 + i % 17;
    g.sampling = i % 3 == 0 ? model::SamplingParams{} : model::SamplingParams{0.9f, 40, 0.95f, 1.1f, uint64_t(i)};
    g.priority = i % 4 == 0 ? Priority::kStat : Priority::kRoutine;
    params.push_back(g);
  }
  std::vector<std::shared_ptr<Handle>> handles;
  for (const auto& g : params) handles.push_back(engine.generate(g));
  for (int i = 0; i < 32; ++i) {
    // Stream like a client would, then check the final outcome agrees.
    std::vector<int32_t> streamed;
    while (handles[i]->next(streamed)) {
    }
    const Outcome& o = handles[i]->wait();
    ASSERT_EQ(o.status, Status::kOk) << o.error;
    const model::GenerateResult ref = model::generate_one(*alone, params[i].prompt, params[i].max_new_tokens,
                                                          params[i].sampling);
    EXPECT_EQ(o.tokens, ref.tokens) << "request " << i;
    EXPECT_EQ(streamed, o.tokens);
    EXPECT_EQ(o.finish, ref.finish == model::FinishReason::kEos ? Finish::kEos : Finish::kLength);
  }
  const EngineStats s = engine.stats();
  EXPECT_GT(s.prefix_hits, 0u) << "the shared 20-token prefix should hit the cache";
  EXPECT_EQ(s.n_running, 0);
}

TEST_F(EngineCpu, ScoreEqualsDirectLogprobsAndPrefixHitsChangeNothing) {
  auto llama = load(64);
  std::vector<int32_t> p = prompt(3), cont{400, 401, 402, 13, 290};
  // Reference: one forward over prompt + continuation with every row's logits.
  std::vector<float> ref;
  {
    auto direct = load(64);
    std::vector<int32_t> all = p;
    all.insert(all.end(), cont.begin(), cont.end());
    model::Batch b{{model::SeqSlice{all, 0, {0, 1, 2}, true}}};
    std::vector<float> logits(all.size() * 512);
    direct->forward(logits, b);
    for (size_t i = 0; i < cont.size(); ++i) {
      const size_t row = p.size() - 1 + i;
      ref.push_back(static_cast<float>(
          model::token_logprob(std::span<const float>(logits).subspan(row * 512, 512), cont[i])));
    }
  }
  Engine engine(*llama, EngineOptions{});
  const Outcome first = engine.score(ScoreParams{p, cont, Priority::kRoutine, std::nullopt, {}})->wait();
  ASSERT_EQ(first.status, Status::kOk) << first.error;
  EXPECT_EQ(first.finish, Finish::kScored);
  EXPECT_EQ(first.logprobs, ref);
  const uint64_t hits_before = engine.stats().prefix_hits;
  const Outcome second = engine.score(ScoreParams{p, cont, Priority::kRoutine, std::nullopt, {}})->wait();
  EXPECT_GT(engine.stats().prefix_hits, hits_before);
  EXPECT_EQ(second.logprobs, first.logprobs) << "a prefix-cache hit must give bitwise the same numbers";
}

// Delegates to the CPU backend and sleeps a little after every step, so a
// stream cannot finish before its reader wakes up even on a starved machine
// (under valgrind's one-thread-at-a-time scheduling stories260K produced all
// 400 tokens before the test thread ran once).
class PacedBackend final : public model::Backend {
 public:
  explicit PacedBackend(model::Backend& inner) : inner_(inner) {}
  const model::LlamaConfig& config() const override { return inner_.config(); }
  int n_kv_blocks() const override { return inner_.n_kv_blocks(); }
  int kv_block_size() const override { return inner_.kv_block_size(); }
  void forward(std::span<float> logits, const model::Batch& batch) override {
    inner_.forward(logits, batch);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  void copy_kv_block(int dst, int src) override { inner_.copy_kv_block(dst, src); }

 private:
  model::Backend& inner_;
};

TEST_F(EngineCpu, CancelMidStreamFreesTheRequest) {
  auto llama = load(64);
  PacedBackend paced(*llama);
  Engine engine(paced, EngineOptions{});
  GenerateParams g;
  g.prompt = prompt(1);
  g.max_new_tokens = 400;
  auto h = engine.generate(g);
  std::vector<int32_t> got;
  ASSERT_TRUE(h->next(got));
  h->cancel();
  const Outcome& o = h->wait();
  EXPECT_EQ(o.status, Status::kCancelled);
  // The engine keeps serving: a new request completes.
  g.max_new_tokens = 5;
  EXPECT_EQ(engine.generate(g)->wait().status, Status::kOk);
  EXPECT_EQ(engine.stats().n_running, 0);
}

TEST_F(EngineCpu, DeadlineExpires) {
  auto llama = load(64);
  Engine engine(*llama, EngineOptions{});
  GenerateParams g;
  g.prompt = prompt(2);
  g.max_new_tokens = 450;
  g.deadline = Clock::now() + std::chrono::milliseconds(5);
  const Outcome o = engine.generate(g)->wait();
  // Either it expired, or (on a very fast machine) it finished first; it never hangs.
  if (o.status == Status::kExpired) {
    EXPECT_EQ(o.error, "deadline exceeded");
  } else {
    EXPECT_EQ(o.status, Status::kOk);
  }
  g.deadline = Clock::now() - std::chrono::seconds(1);
  EXPECT_EQ(engine.generate(g)->wait().status, Status::kExpired);
}

TEST_F(EngineCpu, RejectsWhatCanNeverRunWithAPreciseMessage) {
  auto llama = load(8);  // 128 tokens of KV
  Engine engine(*llama, EngineOptions{64, 8, 2, 30.0});
  GenerateParams g;
  g.prompt = prompt(0);
  g.max_new_tokens = 600;
  Outcome o = engine.generate(g)->wait();
  EXPECT_EQ(o.status, Status::kRejected);
  EXPECT_NE(o.error.find("exceeds the model context of 512"), std::string::npos) << o.error;
  g.max_new_tokens = 300;  // fits the context, not the 128-token pool
  o = engine.generate(g)->wait();
  EXPECT_EQ(o.status, Status::kRejected);
  EXPECT_FALSE(o.error.empty());
  g.prompt = {1, 9999};
  g.max_new_tokens = 4;
  o = engine.generate(g)->wait();
  EXPECT_NE(o.error.find("outside the vocabulary"), std::string::npos) << o.error;
  g.prompt = prompt(0);
  g.sampling.top_p = 0;
  EXPECT_NE(engine.generate(g)->wait().error.find("top_p"), std::string::npos);
}

TEST_F(EngineCpu, OverloadFailsFastAndLosesNothingAccepted) {
  auto llama = load(64);
  Engine engine(*llama, EngineOptions{64, 1, 2, 30.0});
  std::vector<std::shared_ptr<Handle>> hs;
  int rejected = 0;
  for (int i = 0; i < 40; ++i) {
    GenerateParams g;
    g.prompt = prompt(i);
    g.max_new_tokens = 30;
    auto h = engine.generate(g);
    if (h->done() && h->wait().status == Status::kRejected) {
      EXPECT_NE(h->wait().error.find("overloaded"), std::string::npos);
      ++rejected;
    } else {
      hs.push_back(h);
    }
  }
  EXPECT_GT(rejected, 0);
  for (auto& h : hs) EXPECT_EQ(h->wait().status, Status::kOk);
}

TEST_F(EngineCpu, StopPredicateEndsTheRequest) {
  auto llama = load(64);
  Engine engine(*llama, EngineOptions{});
  GenerateParams g;
  g.prompt = prompt(5);
  g.max_new_tokens = 100;
  g.stop = [](std::span<const int32_t> gen) { return gen.size() >= 7; };
  const Outcome o = engine.generate(g)->wait();
  EXPECT_EQ(o.finish, Finish::kStop);
  EXPECT_EQ(o.tokens.size(), 7u);
}

TEST_F(EngineCpu, PreemptionUnderAPoolTooSmallForAllStillGivesTheSameTokens) {
  auto alone = load(64);
  auto small = load(12);  // 192 tokens of KV for 8 requests of ~60 tokens each
  Engine engine(*small, EngineOptions{64, 8, 64, 30.0});
  std::vector<GenerateParams> ps;
  std::vector<std::shared_ptr<Handle>> hs;
  for (int i = 0; i < 8; ++i) {
    GenerateParams g;
    g.prompt = prompt(i + 40);
    g.max_new_tokens = 40;
    g.sampling = model::SamplingParams{1.0f, 50, 1.0f, 1.0f, uint64_t(100 + i)};
    ps.push_back(g);
    hs.push_back(engine.generate(g));
  }
  for (int i = 0; i < 8; ++i) {
    const Outcome& o = hs[i]->wait();
    ASSERT_EQ(o.status, Status::kOk) << o.error;
    EXPECT_EQ(o.tokens, model::generate_one(*alone, ps[i].prompt, ps[i].max_new_tokens, ps[i].sampling).tokens);
  }
  EXPECT_GT(engine.stats().preemptions, 0u);
}


// The real backend with two test controls. hold() parks the engine thread
// inside its next forward until release(), so a test can decide exactly what
// has happened before the next step (wait_parked() returns once it is parked).
// With `poison`, the logits row of every kNanToken becomes all NaN and that of
// every kInfToken gets one +Inf, as bad weights or an overflowing kernel would.
class GatedBackend final : public model::Backend {
 public:
  static constexpr int32_t kNanToken = 500, kInfToken = 501;

  GatedBackend(model::Backend& inner, bool poison) : inner_(inner), poison_(poison) {}
  const model::LlamaConfig& config() const override { return inner_.config(); }
  int n_kv_blocks() const override { return inner_.n_kv_blocks(); }
  int kv_block_size() const override { return inner_.kv_block_size(); }
  void copy_kv_block(int dst, int src) override { inner_.copy_kv_block(dst, src); }
  void forward(std::span<float> logits, const model::Batch& batch) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      parked_ = held_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !held_; });
      parked_ = false;
    }
    inner_.forward(logits, batch);
    if (!poison_) return;
    const size_t vocab = static_cast<size_t>(config().vocab_size);
    size_t row = 0;  // logits: [batch.n_logit_rows(), vocab]
    for (const model::SeqSlice& s : batch.seqs) {
      const size_t rows = s.all_logits ? s.tokens.size() : 1;
      for (size_t j = 0; j < rows; ++j, ++row) {
        const int32_t t = s.tokens[s.all_logits ? j : s.tokens.size() - 1];
        const std::span<float> r = logits.subspan(row * vocab, vocab);
        if (t == kNanToken) std::fill(r.begin(), r.end(), std::numeric_limits<float>::quiet_NaN());
        if (t == kInfToken) r[7] = std::numeric_limits<float>::infinity();
      }
    }
  }
  void hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void wait_parked() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return parked_; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      held_ = false;
    }
    cv_.notify_all();
  }

 private:
  model::Backend& inner_;
  const bool poison_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  bool parked_ = false;  // the engine thread waits in forward
};

// NaN/Inf logits end their own request as an internal error naming the
// position — never text, never a NaN logprob — and every other request of the
// same steps gives exactly what it gives alone.
TEST_F(EngineCpu, NonFiniteLogitsFailOnlyTheirRequest) {
  auto alone = load(64);
  auto llama = load(64);
  GatedBackend poisoned(*llama, /*poison=*/true);
  Engine engine(poisoned, EngineOptions{});
  const auto tail = [](std::vector<int32_t> p, std::initializer_list<int32_t> t) {
    p.insert(p.end(), t);
    return p;
  };
  const std::vector<int32_t> base{1, 300, 301, 302, 303, 304, 305, 306, 307, 308};  // 10 tokens

  // The engine thread waits inside the gate request's step while all the
  // others are submitted, so they are admitted together into one step.
  poisoned.hold();
  GenerateParams gate;
  gate.prompt = {1, 400};
  gate.max_new_tokens = 2;
  const auto gate_handle = engine.generate(gate);
  std::vector<GenerateParams> healthy;
  std::vector<std::shared_ptr<Handle>> healthy_handles;
  for (int i = 0; i < 4; ++i) {
    GenerateParams g;
    g.prompt = tail(base, {static_cast<int32_t>(20 + i)});
    g.max_new_tokens = 30;
    g.sampling = i % 2 == 0 ? model::SamplingParams{} : model::SamplingParams{0.9f, 40, 0.95f, 1.0f, uint64_t(i)};
    healthy.push_back(g);
  }
  GenerateParams nan_gen, inf_gen;
  nan_gen.prompt = tail(base, {GatedBackend::kNanToken});  // its first sampling row is NaN
  inf_gen.prompt = tail(base, {42, GatedBackend::kInfToken});
  nan_gen.max_new_tokens = inf_gen.max_new_tokens = 30;
  const std::vector<int32_t> used_row{400, GatedBackend::kNanToken, 402, 403};  // row 11 predicts 402
  const std::vector<int32_t> unused_row{400, 401, GatedBackend::kNanToken};     // the last row is never read
  const auto nan_h = engine.generate(nan_gen);
  healthy_handles.push_back(engine.generate(healthy[0]));
  const auto inf_h = engine.generate(inf_gen);
  healthy_handles.push_back(engine.generate(healthy[1]));
  const auto score_bad = engine.score(ScoreParams{base, used_row, Priority::kStat, std::nullopt, {}});
  const auto score_ok = engine.score(ScoreParams{base, unused_row, Priority::kRoutine, std::nullopt, {}});
  for (int i = 2; i < 4; ++i) healthy_handles.push_back(engine.generate(healthy[i]));
  poisoned.release();

  const Outcome& n = nan_h->wait();
  EXPECT_EQ(n.status, Status::kNonFinite);
  EXPECT_EQ(n.error, "the model produced non-finite logits (NaN or Inf) at position 10");
  EXPECT_TRUE(n.tokens.empty());
  const Outcome& f = inf_h->wait();
  EXPECT_EQ(f.status, Status::kNonFinite);
  EXPECT_NE(f.error.find("at position 11"), std::string::npos) << f.error;
  const Outcome& sb = score_bad->wait();
  EXPECT_EQ(sb.status, Status::kNonFinite);
  EXPECT_NE(sb.error.find("at position 11"), std::string::npos) << sb.error;
  const Outcome& so = score_ok->wait();
  ASSERT_EQ(so.status, Status::kOk) << so.error;
  for (float lp : so.logprobs) EXPECT_TRUE(std::isfinite(lp));
  {
    Engine clean(*alone, EngineOptions{});
    EXPECT_EQ(so.logprobs, clean.score(ScoreParams{base, unused_row, Priority::kRoutine, std::nullopt, {}})->wait().logprobs);
  }
  for (size_t i = 0; i < healthy.size(); ++i) {
    const Outcome& o = healthy_handles[i]->wait();
    ASSERT_EQ(o.status, Status::kOk) << o.error;
    const model::GenerateResult ref =
        model::generate_one(*alone, healthy[i].prompt, healthy[i].max_new_tokens, healthy[i].sampling);
    for (int32_t t : ref.tokens) {
      ASSERT_NE(t, GatedBackend::kNanToken) << "pick marker tokens the healthy requests never generate";
      ASSERT_NE(t, GatedBackend::kInfToken) << "pick marker tokens the healthy requests never generate";
    }
    EXPECT_EQ(o.tokens, ref.tokens) << "request " << i;
  }
  EXPECT_EQ(gate_handle->wait().status, Status::kOk);
  const EngineStats st = engine.stats();
  EXPECT_EQ(st.nonfinite_logits, 3u);
  EXPECT_EQ(st.n_running, 0);
  EXPECT_EQ(st.kv_usage, 0.0);  // the failed requests' blocks came back
}


// One batch slot per routine request, both decoding: a STAT request submitted
// now takes the slot of the later one in the next step (a slot preemption),
// finishes before it, and every output — the preempted one's included, with
// seeded sampling — is exactly what each request gives alone.
TEST_F(EngineCpu, StatSlotPreemptionKeepsEveryOutputTheSame) {
  auto alone = load(64);
  auto llama = load(64);
  GatedBackend gated(*llama, /*poison=*/false);
  Engine engine(gated, EngineOptions{64, 2, 256, 30.0});
  std::vector<GenerateParams> ps(3);
  for (int i = 0; i < 3; ++i) {
    ps[i].prompt = prompt(i + 60);
    ps[i].sampling = model::SamplingParams{0.8f, 40, 0.95f, 1.0f, uint64_t(7 + i)};
  }
  ps[0].max_new_tokens = ps[1].max_new_tokens = 300;
  ps[2].max_new_tokens = 6;
  ps[2].priority = Priority::kStat;
  std::vector<model::GenerateResult> refs;
  for (const auto& g : ps) refs.push_back(model::generate_one(*alone, g.prompt, g.max_new_tokens, g.sampling));
  ASSERT_GE(refs[0].tokens.size(), 100u) << "pick prompts the model continues at length";
  ASSERT_GE(refs[1].tokens.size(), 100u) << "pick prompts the model continues at length";

  auto a = engine.generate(ps[0]);
  auto b = engine.generate(ps[1]);
  std::vector<int32_t> first;
  ASSERT_TRUE(a->next(first));  // both are decoding now
  ASSERT_TRUE(b->next(first));
  gated.hold();
  gated.wait_parked();
  ASSERT_FALSE(a->done());
  ASSERT_FALSE(b->done());
  const uint64_t slot_before = engine.stats().preemptions_slot;
  auto stat = engine.generate(ps[2]);
  gated.release();

  const Outcome& so = stat->wait();
  ASSERT_EQ(so.status, Status::kOk) << so.error;
  EXPECT_FALSE(b->done()) << "the STAT request must not wait for the routine ones";
  EXPECT_EQ(engine.stats().preemptions_slot, slot_before + 1);
  EXPECT_EQ(so.tokens, refs[2].tokens);
  const Outcome& ao = a->wait();
  const Outcome& bo = b->wait();
  EXPECT_EQ(ao.n_preemptions, 0);
  EXPECT_EQ(bo.n_preemptions, 1);  // same arrival order, later: ranks worst
  EXPECT_EQ(ao.tokens, refs[0].tokens);
  EXPECT_EQ(bo.tokens, refs[1].tokens);
}

// on_update, what the service's calls wait on instead of a thread: called for
// every token and once at the end (a refusal inside generate()/score() too),
// and a submitter that sees done() has had its last call. Draining with take()
// only when woken delivers every token.
TEST_F(EngineCpu, OnUpdateWakesForEveryTokenAndTheEnd) {
  auto llama = load(64);
  Engine engine(*llama, EngineOptions{});
  struct Watch {
    std::mutex mu;
    std::condition_variable cv;
    int calls = 0;
  };
  auto run = [&](auto submit) {
    auto w = std::make_shared<Watch>();
    std::function<void()> notify = [w] {
      std::lock_guard<std::mutex> lock(w->mu);
      ++w->calls;
      w->cv.notify_all();
    };
    std::shared_ptr<Handle> h = submit(notify);
    std::vector<int32_t> got;
    int seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(w->mu);
      w->cv.wait(lock, [&] { return w->calls > seen; });
      seen = w->calls;
      lock.unlock();
      if (!h->take(got)) break;
    }
    const Outcome o = h->wait();  // not under w->mu: on_update takes w->mu under the handle's lock
    std::lock_guard<std::mutex> lock(w->mu);
    return std::make_tuple(o, got, w->calls);
  };

  GenerateParams g;
  g.prompt = prompt(1);
  g.max_new_tokens = 12;
  const auto [o, got, calls] = run([&](std::function<void()> n) {
    GenerateParams p = g;
    p.on_update = std::move(n);
    return engine.generate(std::move(p));
  });
  ASSERT_EQ(o.status, Status::kOk) << o.error;
  EXPECT_EQ(got, o.tokens);
  EXPECT_EQ(calls, static_cast<int>(o.tokens.size()) + 1);  // each token, then the end

  GenerateParams bad = g;
  bad.max_new_tokens = 0;
  const auto [ro, rgot, rcalls] = run([&](std::function<void()> n) {
    bad.on_update = std::move(n);
    return engine.generate(std::move(bad));
  });
  EXPECT_EQ(ro.status, Status::kRejected);
  EXPECT_TRUE(rgot.empty());
  EXPECT_EQ(rcalls, 1);

  const auto [so, sgot, scalls] = run([&](std::function<void()> n) {
    return engine.score(ScoreParams{prompt(2), {300, 301, 302}, Priority::kRoutine, std::nullopt, std::move(n)});
  });
  ASSERT_EQ(so.status, Status::kOk) << so.error;
  EXPECT_EQ(so.logprobs.size(), 3u);
  EXPECT_EQ(scalls, 1);
}

}  // namespace
}  // namespace chatradio::engine
