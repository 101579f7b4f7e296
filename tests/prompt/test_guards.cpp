// The repetition detector on synthetic loops, near-loops and sequences that
// must not fire, fed token by token as the engine does; the empty-output policy.
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <vector>

#include "server/prompt/guards.h"

namespace chatradio::prompt {
namespace {

using Ids = std::vector<int32_t>;

Ids repeat(const Ids& unit, int times, const Ids& prefix = {}) {
  Ids out = prefix;
  for (int i = 0; i < times; ++i) out.insert(out.end(), unit.begin(), unit.end());
  return out;
}

// The index of the first token after which the detector fires when fed one
// token at a time (-1 if never), as GenerateParams::stop calls it.
int first_fire(const RepetitionDetector& d, const Ids& ids) {
  for (size_t n = 1; n <= ids.size(); ++n) {
    if (d.repeating(std::span<const int32_t>(ids.data(), n))) return static_cast<int>(n) - 1;
  }
  return -1;
}

TEST(Repetition, OptionsAreChecked) {
  EXPECT_THROW(RepetitionDetector(RepetitionOptions{0, 3, 12}), std::invalid_argument);
  EXPECT_THROW(RepetitionDetector(RepetitionOptions{32, 1, 12}), std::invalid_argument);
  EXPECT_THROW(RepetitionDetector(RepetitionOptions{32, 3, 0}), std::invalid_argument);
  try {
    RepetitionDetector(RepetitionOptions{2000, 3, 12});
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "repetition max_period must be in [1, 1024] (got 2000)");
  }
}

TEST(Repetition, EmptyAndShort) {
  const RepetitionDetector d;
  EXPECT_FALSE(d.repeating({}));
  EXPECT_FALSE(d.repeating(Ids{5}));
  EXPECT_FALSE(d.repeating(Ids(11, 7))) << "11 identical tokens < min_span 12";
}

TEST(Repetition, SingleTokenLoopNeedsMinSpan) {
  const RepetitionDetector d;
  EXPECT_TRUE(d.repeating(Ids(12, 7)));
  EXPECT_EQ(first_fire(d, repeat({7}, 40, {1, 2, 3})), 3 + 11);
}

TEST(Repetition, ShortPeriodsNeedMinSpanLongOnesMinRepeats) {
  const RepetitionDetector d;  // period <= 32, 3 repeats, 12 tokens
  // p = 2: 12 tokens are 6 repeats; fires on the 12th token of the loop.
  EXPECT_EQ(first_fire(d, repeat({1, 2}, 20, {9})), 1 + 11);
  // p = 5: 3 repeats = 15 tokens > 12.
  EXPECT_EQ(first_fire(d, repeat({1, 2, 3, 4, 5}, 10, {9, 9})), 2 + 14);
  // p = 32: 96 tokens.
  Ids unit(32);
  for (int i = 0; i < 32; ++i) unit[i] = 100 + i;
  EXPECT_EQ(first_fire(d, repeat(unit, 4)), 95);
}

TEST(Repetition, PeriodAboveMaxDoesNotFire) {
  const RepetitionDetector d;
  Ids unit(33);
  for (int i = 0; i < 33; ++i) unit[i] = 100 + i;
  EXPECT_EQ(first_fire(d, repeat(unit, 5)), -1);
  const RepetitionDetector wide(RepetitionOptions{64, 3, 12});
  EXPECT_EQ(first_fire(wide, repeat(unit, 5)), 33 * 3 - 1);
}

TEST(Repetition, ConfigurableRepeatsAndSpan) {
  const RepetitionDetector two(RepetitionOptions{32, 2, 1});
  EXPECT_TRUE(two.repeating(Ids{1, 2, 3, 1, 2, 3}));
  EXPECT_TRUE(two.repeating(Ids{4, 4})) << "min_span 1, p = 1: two copies";
  const RepetitionDetector strict(RepetitionOptions{32, 4, 40});
  EXPECT_FALSE(strict.repeating(repeat({1, 2, 3, 4, 5}, 7)));  // 35 tokens < 40
  EXPECT_TRUE(strict.repeating(repeat({1, 2, 3, 4, 5}, 8)));
}

TEST(Repetition, FindReportsTheShortestUnitAndWhereToCut) {
  const RepetitionDetector d;
  const Ids ids = repeat({1, 2, 3, 4}, 5, {7, 8, 9});  // 3 + 20 tokens
  const auto loop = d.find(ids);
  ASSERT_TRUE(loop);
  EXPECT_EQ(loop->period, 4);
  EXPECT_EQ(loop->start, 3);
  EXPECT_EQ(loop->length, 20);
  EXPECT_EQ(loop->keep_until(), 7) << "keeps one copy of the unit";
  // A unit that is itself periodic ("abab") is reported by its shortest period.
  const auto ab = d.find(repeat({1, 2, 1, 2}, 4));
  ASSERT_TRUE(ab);
  EXPECT_EQ(ab->period, 2);
  EXPECT_EQ(ab->start, 0);
}

TEST(Repetition, PartialLastCopyStillALoop) {
  const RepetitionDetector d;
  Ids ids = repeat({1, 2, 3, 4, 5}, 3);
  ids.push_back(1);
  ids.push_back(2);
  const auto loop = d.find(ids);
  ASSERT_TRUE(loop);
  EXPECT_EQ(loop->period, 5);
  EXPECT_EQ(loop->start, 0);
  EXPECT_EQ(loop->length, 17);
}

TEST(Repetition, NearLoopsDoNotFire) {
  const RepetitionDetector d;
  // Three copies of a 6-token unit with one token changed in the middle copy.
  Ids ids = repeat({1, 2, 3, 4, 5, 6}, 3);
  ids[8] = 99;
  EXPECT_EQ(first_fire(d, ids), -1);
  // Two full copies only (12 tokens meet min_span, but not min_repeats).
  EXPECT_EQ(first_fire(d, repeat({1, 2, 3, 4, 5, 6}, 2)), -1);
  // A loop that was broken: the tail after the break is too short.
  Ids broken = repeat({1, 2, 3}, 3);
  broken.push_back(42);
  broken.insert(broken.end(), {1, 2, 3, 1, 2, 3});
  EXPECT_FALSE(d.repeating(broken));
}

TEST(Repetition, NumberedListsDoNotFire) {
  const RepetitionDetector d;
  // "1. <finding> 2. <finding> 3. <finding>": shared scaffolding, different content.
  Ids ids;
  for (int item = 1; item <= 9; ++item) {
    ids.insert(ids.end(), {29871, 29900 + item, 29889});  // " ", digit, "."
    for (int w = 0; w < 5; ++w) ids.push_back(1000 + item * 10 + w);
    ids.push_back(29889);
    ids.push_back(13);  // "\n"
  }
  EXPECT_EQ(first_fire(d, ids), -1);
  // Repeated words with different neighbours: "no X. no Y. no Z."
  Ids negations;
  for (int i = 0; i < 10; ++i) negations.insert(negations.end(), {694, 2000 + i, 29889});
  EXPECT_EQ(first_fire(d, negations), -1);
}

TEST(Repetition, LongNonRepeatingSequenceIsCheap) {
  // A pseudo-random walk with many short coincidences but no loop.
  Ids ids;
  uint32_t x = 12345;
  for (int i = 0; i < 4096; ++i) {
    x = x * 1103515245u + 12345u;
    ids.push_back(static_cast<int32_t>((x >> 16) % 7));  // small alphabet: many near-misses
  }
  const RepetitionDetector loose(RepetitionOptions{32, 3, 24});
  const auto t0 = std::chrono::steady_clock::now();
  int fires = 0;
  for (size_t n = 1; n <= ids.size(); ++n) fires += loose.repeating(std::span<const int32_t>(ids.data(), n));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(fires, 0);
  EXPECT_LT(s, 1.0) << "4096 calls should take well under a millisecond each";
}

TEST(EmptyOutput, Policy) {
  const EmptyOutputPolicy p;
  EXPECT_TRUE(p.retry_on_empty);
  EXPECT_EQ(p.max_retries, 1);
  EXPECT_TRUE(p.should_retry("", 1, true));
  EXPECT_TRUE(p.should_retry(" \n\u3000", 1, true));
  EXPECT_FALSE(p.should_retry("", 2, true)) << "one retry by default";
  EXPECT_FALSE(p.should_retry("", 1, false)) << "greedy: a new seed changes nothing";
  EXPECT_FALSE(p.should_retry("No acute disease.", 1, true));
  EXPECT_FALSE((EmptyOutputPolicy{false, 1}.should_retry("", 1, true)));
  EXPECT_TRUE((EmptyOutputPolicy{true, 3}.should_retry("", 3, true)));
  EXPECT_FALSE((EmptyOutputPolicy{true, 3}.should_retry("", 4, true)));
}

TEST(EmptyOutput, SeedDerivation) {
  EXPECT_EQ(EmptyOutputPolicy::seed_for(42, 0), 42u);
  EXPECT_EQ(EmptyOutputPolicy::seed_for(42, 1), 42u + 0x9E3779B97F4A7C15ull);
  EXPECT_EQ(EmptyOutputPolicy::seed_for(0xFFFFFFFFFFFFFFFFull, 1), 0x9E3779B97F4A7C14ull) << "wraps mod 2^64";
  EXPECT_EQ(EmptyOutputPolicy::seed_for(7, 2), 7u + 2 * 0x9E3779B97F4A7C15ull);
}

}  // namespace
}  // namespace chatradio::prompt
