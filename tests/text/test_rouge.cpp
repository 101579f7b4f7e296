// ROUGE-1/2/L on cases computed by hand (docs/rouge.md has the definitions).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "server/text/rouge.h"
#include "server/text/segment.h"

namespace chatradio::text {
namespace {

using Tokens = std::vector<std::string>;

void expect_score(const Score& s, double p, double r, double f, const char* what) {
  EXPECT_DOUBLE_EQ(s.precision, p) << what;
  EXPECT_DOUBLE_EQ(s.recall, r) << what;
  EXPECT_DOUBLE_EQ(s.f1, f) << what;
}

TEST(Rouge, EnglishSentencePair) {
  // the cat sat on the mat / the cat is on the mat: unigrams the(2) cat on mat
  // match, 5 of 6; bigrams the-cat, on-the, the-mat, 3 of 5; LCS "the cat on
  // the mat", 5.
  const RougeScores s = rouge("The cat sat on the mat.", "the cat is on the mat", EnglishSegmenter());
  expect_score(s.rouge1, 5.0 / 6, 5.0 / 6, 5.0 / 6, "rouge1");
  expect_score(s.rouge2, 3.0 / 5, 3.0 / 5, 3.0 / 5, "rouge2");
  expect_score(s.rougeL, 5.0 / 6, 5.0 / 6, 5.0 / 6, "rougeL");
}

TEST(Rouge, RepeatedTokensAreClipped) {
  // "the" four times against once: 1 unigram overlaps, not 4.
  // P = 1/4, R = 1/2, F = 2*(1/8)/(3/4) = 1/3; no bigram the-cat in the candidate.
  const RougeScores s = rouge("the the the the", "the cat", EnglishSegmenter());
  expect_score(s.rouge1, 0.25, 0.5, 1.0 / 3, "rouge1");
  expect_score(s.rouge2, 0.0, 0.0, 0.0, "rouge2");
  expect_score(s.rougeL, 0.25, 0.5, 1.0 / 3, "rougeL");
  // Clipping works per n-gram on both sides: a a b vs a b b -> a:1 + b:1.
  const RougeScores t = rouge("a a b", "a b b", EnglishSegmenter());
  expect_score(t.rouge1, 2.0 / 3, 2.0 / 3, 2.0 / 3, "rouge1 a a b");
  expect_score(t.rouge2, 0.5, 0.5, 0.5, "rouge2 a a b");  // a-b matches, a-a and b-b do not
  expect_score(t.rougeL, 2.0 / 3, 2.0 / 3, 2.0 / 3, "rougeL a a b");
}

TEST(Rouge, LcsDiffersFromNgrams) {
  // Same bag of words, reversed order: ROUGE-1 is perfect, ROUGE-2 zero,
  // ROUGE-L only one token in order.
  const RougeScores s = rouge("a b c d", "d c b a", EnglishSegmenter());
  expect_score(s.rouge1, 1, 1, 1, "rouge1");
  expect_score(s.rouge2, 0, 0, 0, "rouge2");
  expect_score(s.rougeL, 0.25, 0.25, 0.25, "rougeL");
  // In-order with gaps: LCS 3 without any shared bigram. P = 3/5, R = 1,
  // F = 2*(3/5)/(8/5) = 3/4.
  const RougeScores t = rouge("a x b y c", "a b c", EnglishSegmenter());
  expect_score(t.rouge1, 0.6, 1, 0.75, "rouge1 gaps");
  expect_score(t.rouge2, 0, 0, 0, "rouge2 gaps");
  expect_score(t.rougeL, 0.6, 1, 0.75, "rougeL gaps");
}

TEST(Rouge, EmptyAndIdentical) {
  const EnglishSegmenter en;
  for (const auto& [c, r] : std::vector<std::pair<std::string, std::string>>{
           {"", "lungs are clear"}, {"lungs are clear", ""}, {"", ""}, {"!!!", "..."}, {"lungs", "heart"}}) {
    const RougeScores s = rouge(c, r, en);
    expect_score(s.rouge1, 0, 0, 0, "rouge1");
    expect_score(s.rouge2, 0, 0, 0, "rouge2");
    expect_score(s.rougeL, 0, 0, 0, "rougeL");
  }
  const RougeScores same = rouge("No acute disease.", "no acute disease", en);
  expect_score(same.rouge1, 1, 1, 1, "rouge1");
  expect_score(same.rouge2, 1, 1, 1, "rouge2");
  expect_score(same.rougeL, 1, 1, 1, "rougeL");
  // One token each: no bigram on either side, so ROUGE-2 is 0 although equal.
  const RougeScores one = rouge("lung", "lung", en);
  expect_score(one.rouge1, 1, 1, 1, "rouge1 one token");
  expect_score(one.rouge2, 0, 0, 0, "rouge2 one token");
  expect_score(one.rougeL, 1, 1, 1, "rougeL one token");
}

TEST(Rouge, ChineseByCharacter) {
  const CharSegmenter zh;
  // 双肺纹理清晰 / 双肺纹理增粗: 4 of 6 characters, 3 of 5 bigrams, LCS 4.
  const RougeScores s = rouge("双肺纹理清晰。", "双肺纹理增粗", zh);
  expect_score(s.rouge1, 4.0 / 6, 4.0 / 6, 4.0 / 6, "rouge1");
  expect_score(s.rouge2, 3.0 / 5, 3.0 / 5, 3.0 / 5, "rouge2");
  expect_score(s.rougeL, 4.0 / 6, 4.0 / 6, 4.0 / 6, "rougeL");
  // 肺肺肺 / 肺心, punctuation dropped: 1 clipped match; P 1/3, R 1/2, F 2/5.
  const RougeScores t = rouge("肺肺肺。", "肺，心", zh);
  expect_score(t.rouge1, 1.0 / 3, 0.5, 0.4, "rouge1 clipped");
  expect_score(t.rouge2, 0, 0, 0, "rouge2 clipped");
  expect_score(t.rougeL, 1.0 / 3, 0.5, 0.4, "rougeL clipped");
  // Mixed script: ct 示 右 肺 3 5cm vs ct 示 右 肺 结 节: 4 of 6, bigrams
  // ct-示 示-右 右-肺 match of 5.
  const RougeScores u = rouge("CT示：右肺3.5cm", "ct示右肺结节", zh);
  expect_score(u.rouge1, 4.0 / 6, 4.0 / 6, 4.0 / 6, "rouge1 mixed");
  expect_score(u.rouge2, 3.0 / 5, 3.0 / 5, 3.0 / 5, "rouge2 mixed");
}

TEST(Rouge, NormalizeDropsPunctuationAndFoldsCase) {
  Tokens t{"研究", "，", "CT", " ", "\r\n", "Ｃｔ", "3", ".", "5cm", "\xff", "%"};
  normalize_tokens(t);
  EXPECT_EQ(t, (Tokens{"研究", "ct", "ct", "3", "5cm"}));
}

TEST(Rouge, NgramOfAnyOrder) {
  const Tokens c{"a", "b", "c", "a", "b", "c"};
  const Tokens r{"a", "b", "c"};
  const Score s3 = rouge_n(c, r, 3);  // abc bca cab abc vs abc: 1 clipped match
  EXPECT_DOUBLE_EQ(s3.precision, 0.25);
  EXPECT_DOUBLE_EQ(s3.recall, 1.0);
  EXPECT_DOUBLE_EQ(rouge_n(c, r, 7).f1, 0.0);  // longer than both
  EXPECT_THROW(rouge_n(c, r, 0), TextError);
}

// The O(min) one-row LCS against the full table of the textbook.
TEST(Rouge, LcsMatchesFullTable) {
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    Tokens a(rng() % 40), b(rng() % 40);
    const int alphabet = 1 + static_cast<int>(rng() % 5);
    for (std::string& t : a) t = std::string(1, static_cast<char>('a' + rng() % alphabet));
    for (std::string& t : b) t = std::string(1, static_cast<char>('a' + rng() % alphabet));
    std::vector<std::vector<size_t>> table(a.size() + 1, std::vector<size_t>(b.size() + 1, 0));
    for (size_t i = 1; i <= a.size(); ++i) {
      for (size_t j = 1; j <= b.size(); ++j) {
        table[i][j] = a[i - 1] == b[j - 1] ? table[i - 1][j - 1] + 1 : std::max(table[i - 1][j], table[i][j - 1]);
      }
    }
    ASSERT_EQ(lcs_length(a, b), table[a.size()][b.size()]) << "round " << round;
    ASSERT_EQ(lcs_length(b, a), table[a.size()][b.size()]) << "round " << round;
  }
}

TEST(Rouge, RefusesInputsPastTheTokenLimit) {
  const EnglishSegmenter en;
  EXPECT_THROW(rouge("a b c", "a", en, 2), TextError);
  EXPECT_THROW(rouge("a", "a b c", en, 2), TextError);
  EXPECT_NO_THROW(rouge("a b", "a b", en, 2));
  try {
    rouge("secret words here", "x", en, 2);
    FAIL() << "no error";
  } catch (const TextError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("candidate has 3 tokens"), std::string::npos) << what;
    EXPECT_EQ(what.find("secret"), std::string::npos) << "the message must not quote the text";
  }
  // The default cap: one token past it is refused before any LCS work.
  const Tokens big(kMaxRougeTokens + 1, "x");
  EXPECT_THROW(rouge_tokens(big, Tokens{"x"}), TextError);
  EXPECT_THROW(rouge_l(Tokens{"x"}, big), TextError);
}

}  // namespace
}  // namespace chatradio::text
