// rouge_chinese's scoring on cases computed by hand (each also checked with the
// package itself); test_jieba_oracle.cpp compares thousands of pairs with it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/text/rouge_chinese.h"
#include "server/text/segment.h"

namespace chatradio::text {
namespace {

using Words = std::vector<std::string>;

// The package's F: 2 * ((P * R) / (P + R + 1e-8)), never exactly 2PR/(P+R).
double f(double p, double r) { return 2.0 * ((p * r) / (p + r + 1e-8)); }

void expect_score(const Score& s, double p, double r, const char* what) {
  EXPECT_EQ(s.precision, p) << what;
  EXPECT_EQ(s.recall, r) << what;
  EXPECT_EQ(s.f1, f(p, r)) << what;
}

TEST(RougeChinese, SentenceSplittingRules) {
  // Words stay as whitespace separated them: 。 stays on its word.
  EXPECT_EQ(rouge_chinese_words("a b。c  d\n\n e"), (Words{"a", "b。", "c", "d", "e"}));
  // After 。 comes "\n": the space after it becomes a sentence of its own,
  // holding whitespace only, which scores as one empty word.
  EXPECT_EQ(rouge_chinese_words("肺炎。 \n结节"), (Words{"肺炎。", "", "结节"}));
  // Matches do not overlap: the second 。 was the first one's follower.
  EXPECT_EQ(rouge_chinese_words("。。a"), (Words{"。", "。a"}));
  // Six dots end a sentence, the seventh begins the next.
  EXPECT_EQ(rouge_chinese_words(".......x"), (Words{"......", ".x"}));
  // An end followed by a closing quote breaks after the quote.
  EXPECT_EQ(rouge_chinese_words("好。”然后"), (Words{"好。”", "然后"}));
  EXPECT_EQ(rouge_chinese_words("……”x"), (Words{"……”x"}));
  // Python's whitespace: U+3000 and U+00A0 separate words, trailing ones go.
  EXPECT_EQ(rouge_chinese_words("a\u3000b\u00a0"), (Words{"a", "b"}));
  EXPECT_EQ(rouge_chinese_words(" \n\u3000"), Words{});
  EXPECT_EQ(rouge_chinese_words(""), Words{});
}

TEST(RougeChinese, UniqueNgramsAndItsF) {
  // Unigram sets {a, b} and {a, c}: the repeated a counts once.
  // LCS(a b a, a c) = 1 over 3 candidate and 2 reference words.
  const RougeScores s = rouge_chinese_tokens(Words{"a", "b", "a"}, Words{"a", "c"});
  expect_score(s.rouge1, 0.5, 0.5, "rouge1");
  EXPECT_EQ(s.rouge1.f1, 0.4999999950000001);  // what the package prints
  expect_score(s.rouge2, 0.0, 0.0, "rouge2");
  expect_score(s.rougeL, 1.0 / 3, 0.5, "rougeL");
}

TEST(RougeChinese, PunctuationAndEmptyWordsCount) {
  // Candidate words 肺炎 。 "" 结节 (the space after 。 is a sentence), reference
  // 肺炎 。 结节 。: unigrams 3 of 4 / 3 of 3; bigrams (肺炎 。) only, 1 of 3
  // each; LCS 肺炎 。 结节 = 3 of 4 both ways.
  const RougeScores s = rouge_chinese_tokens(Words{"肺炎", "。", " ", "\n", "结节"}, Words{"肺炎", "。", "结节", "。"});
  expect_score(s.rouge1, 0.75, 1.0, "rouge1");
  expect_score(s.rouge2, 1.0 / 3, 1.0 / 3, "rouge2");
  expect_score(s.rougeL, 0.75, 0.75, "rougeL");
}

TEST(RougeChinese, IdenticalTextsScoreJustBelowOne) {
  const RougeScores s = rouge_chinese_tokens(Words{"双肺", "纹理", "清晰"}, Words{"双肺", "纹理", "清晰"});
  expect_score(s.rouge1, 1.0, 1.0, "rouge1");
  EXPECT_LT(s.rouge1.f1, 1.0);  // 2 * (1 / (2 + 1e-8))
  // One word has no bigram: both sets empty, everything 0.
  const RougeScores one = rouge_chinese_tokens(Words{"肺"}, Words{"肺"});
  expect_score(one.rouge2, 0.0, 0.0, "rouge2");
  expect_score(one.rougeL, 1.0, 1.0, "rougeL");
}

TEST(RougeChinese, RefusesWhatThePackageRefuses) {
  EXPECT_THROW(rouge_chinese_tokens(Words{}, Words{"a"}), TextError);
  EXPECT_THROW(rouge_chinese_tokens(Words{"a"}, Words{" ", "\n"}), TextError);
  try {
    rouge_chinese_tokens(Words{"a"}, Words{});
  } catch (const TextError& e) {
    EXPECT_NE(std::string(e.what()).find("reference"), std::string::npos) << e.what();
  }
  const Words many(21, "w");
  EXPECT_THROW(rouge_chinese_tokens(many, Words{"w"}, /*max_tokens=*/20), TextError);
  EXPECT_NO_THROW(rouge_chinese_tokens(many, Words{"w"}, /*max_tokens=*/21));
}

TEST(RougeChinese, ModesDiffer) {
  // Lin's mode drops the punctuation and clips counts; rouge_chinese keeps it
  // and counts distinct n-grams.
  const CharSegmenter chars;
  const RougeScores lin = rouge(RougeMode::kLin, "肺 肺 炎", "肺 炎", chars);
  const RougeScores compat = rouge(RougeMode::kChineseCompat, "肺 肺 炎", "肺 炎", chars);
  EXPECT_EQ(lin.rouge1.precision, 2.0 / 3);
  EXPECT_EQ(compat.rouge1.precision, 1.0);
  EXPECT_EQ(lin.rouge1.f1, 0.8);
  EXPECT_EQ(compat.rouge1.f1, f(1.0, 1.0));
}

}  // namespace
}  // namespace chatradio::text
