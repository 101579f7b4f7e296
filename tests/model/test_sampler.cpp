// Sampler semantics: greedy ties, determinism per seed, top-k/top-p support,
// temperature and repetition penalty, and parameter validation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "model/sampler.h"

namespace chatradio::model {
namespace {

TEST(Sampler, GreedyTakesLowestIdOnTies) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.sample(std::vector<float>{0.5f, 2.0f, 2.0f, -1.0f}, {}), 1);
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedDiffers) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  auto draw = [&](uint64_t seed) {
    Sampler s(SamplingParams{1.0f, 0, 1.0f, 1.0f, seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits, {}));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, TopKAndTopPRestrictTheSupport) {
  // Probabilities ~ 0.5, 0.25, 0.125, ... at temperature 1.
  std::vector<float> logits;
  for (int i = 0; i < 10; ++i) logits.push_back(-i * std::log(2.0f));
  std::map<int, int> seen_k, seen_p;
  Sampler k(SamplingParams{1.0f, 3, 1.0f, 1.0f, 1});
  Sampler p(SamplingParams{1.0f, 0, 0.7f, 1.0f, 2});  // 0.5 + 0.25 reaches 0.7
  for (int i = 0; i < 4000; ++i) {
    seen_k[k.sample(logits, {})]++;
    seen_p[p.sample(logits, {})]++;
  }
  EXPECT_EQ(seen_k.size(), 3u);
  EXPECT_EQ(seen_p.size(), 2u);
  // Renormalised within the top 3: 4/7, 2/7, 1/7.
  EXPECT_NEAR(seen_k[0] / 4000.0, 4.0 / 7, 0.03);
  EXPECT_NEAR(seen_k[2] / 4000.0, 1.0 / 7, 0.03);
  EXPECT_NEAR(seen_p[0] / 4000.0, 2.0 / 3, 0.03);
}

TEST(Sampler, TemperatureSharpens) {
  const std::vector<float> logits{1.0f, 0.0f};
  Sampler cold(SamplingParams{0.1f, 0, 1.0f, 1.0f, 3});
  int zeros = 0;
  for (int i = 0; i < 1000; ++i) zeros += cold.sample(logits, {}) == 0;
  EXPECT_GT(zeros, 990);  // p = 1 / (1 + e^-10)
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  // Token 0 leads by a little; once seen, the penalty moves greedy to token 1.
  Sampler s(SamplingParams{0.0f, 0, 1.0f, 1.5f, 0});
  EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.8f, -1.0f}, {}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.8f, -1.0f}, std::vector<int32_t>{0, 0, 0}), 1);
  // A negative logit gets more negative: token 2 at -1 -> -1.5 < token 1 at -1.2.
  EXPECT_EQ(s.sample(std::vector<float>{-3.0f, -1.2f, -1.0f}, std::vector<int32_t>{2}), 1);
}

TEST(Sampler, ValidationNamesTheField) {
  EXPECT_EQ(validate(SamplingParams{}), "");
  EXPECT_NE(validate(SamplingParams{-1.0f}).find("temperature"), std::string::npos);
  EXPECT_NE(validate(SamplingParams{NAN}).find("temperature"), std::string::npos);
  EXPECT_NE(validate(SamplingParams{1.0f, -2}).find("top_k"), std::string::npos);
  EXPECT_NE(validate(SamplingParams{1.0f, 0, 0.0f}).find("top_p"), std::string::npos);
  EXPECT_NE(validate(SamplingParams{1.0f, 0, 1.5f}).find("top_p"), std::string::npos);
  EXPECT_NE(validate(SamplingParams{1.0f, 0, 1.0f, 0.0f}).find("repetition_penalty"), std::string::npos);
}

}  // namespace
}  // namespace chatradio::model
