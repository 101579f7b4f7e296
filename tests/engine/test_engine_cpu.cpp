// The engine on the real CPU backend and the stories260K model: concurrent
// requests give exactly what each gives alone, prefix-cache hits give the same
// numbers as misses, and cancellation, deadlines and overload behave.
#include <gtest/gtest.h>

#include <chrono>
#include <span>
#include <thread>

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
  const Outcome first = engine.score(ScoreParams{p, cont, Priority::kRoutine, std::nullopt})->wait();
  ASSERT_EQ(first.status, Status::kOk) << first.error;
  EXPECT_EQ(first.finish, Finish::kScored);
  EXPECT_EQ(first.logprobs, ref);
  const uint64_t hits_before = engine.stats().prefix_hits;
  const Outcome second = engine.score(ScoreParams{p, cont, Priority::kRoutine, std::nullopt})->wait();
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

}  // namespace
}  // namespace chatradio::engine
