// ROUGE-1, ROUGE-2 and ROUGE-L of a candidate impression against a reference,
// with the definitions of Google's rouge-score package (rouge1, rouge2,
// sentence-level rougeL), over the tokens of a Segmenter. docs/rouge.md.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "server/text/segment.h"

namespace chatradio::text {

struct Score {
  double precision = 0.0;
  double recall = 0.0;
  double f1 = 0.0;
};

struct RougeScores {
  Score rouge1;
  Score rouge2;
  Score rougeL;
};

// Longest input rouge() and rouge_tokens() accept, in tokens per side. LCS
// costs O(n*m) time: 20k x 20k is ~0.5 s on one core. Impressions are tens
// of tokens; the cap exists so that a hostile request cannot pin a CPU.
inline constexpr size_t kMaxRougeTokens = 20000;

// What ROUGE compares: drops tokens without a letter, digit or ideograph
// (is_word_token: punctuation and whitespace, which jieba yields), folds
// fullwidth ASCII letters/digits to ASCII and lowercases ASCII. The char and
// english segmenters' tokens come out unchanged.
void normalize_tokens(std::vector<std::string>& tokens);

// rouge-score's _score_ngrams: n-gram counts clipped to the other side,
// overlap = sum over n-grams of min(count in candidate, count in reference);
// precision = overlap / max(candidate n-grams, 1), recall = overlap /
// max(reference n-grams, 1), f1 = 2PR/(P+R) or 0. n >= 1 (TextError otherwise).
Score rouge_n(std::span<const std::string> candidate, std::span<const std::string> reference, size_t n);

// rouge-score's rougeL: P = LCS/|candidate|, R = LCS/|reference|, all 0 when
// either side is empty. Throws TextError past max_tokens on either side.
Score rouge_l(std::span<const std::string> candidate, std::span<const std::string> reference,
              size_t max_tokens = kMaxRougeTokens);

// Throws TextError, naming the side and its length but no text, when either
// side has more than max_tokens tokens.
void check_length(size_t candidate, size_t reference, size_t max_tokens);

// Length of the longest common subsequence: O(|a|*|b|) time, O(min) memory.
// No length cap here: rouge_l and rouge_tokens apply one.
size_t lcs_length(std::span<const std::string> a, std::span<const std::string> b);

// All three over tokens as given (normalize them first for rouge()'s
// behaviour). Throws TextError, naming the side and its length but no text,
// when either side has more than max_tokens tokens.
RougeScores rouge_tokens(std::span<const std::string> candidate, std::span<const std::string> reference,
                         size_t max_tokens = kMaxRougeTokens);

// Segments both texts with `segmenter`, normalizes the tokens, scores them.
RougeScores rouge(std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                  size_t max_tokens = kMaxRougeTokens);

}  // namespace chatradio::text
