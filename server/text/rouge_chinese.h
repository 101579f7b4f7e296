// ROUGE exactly as the rouge_chinese 1.0.3 Python package computes it, which
// is what Chinese LLM evaluations publish:
//   Rouge().get_scores(' '.join(segment(candidate)), ' '.join(segment(reference)))
// with its sentence splitting, unique n-grams, LCS over all words and its F
// formula, quirks included (docs/rouge.md lists them). tests/text checks it
// against the package itself.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "server/text/rouge.h"

namespace chatradio::text {

// The words rouge_chinese scores for one text (Rouge._get_scores): cut_sent's
// four regex rules put "\n" after sentence ends (。！？? not followed by a
// closing quote, six dots, two "…", and an end with its quote), trailing
// whitespace goes, the text splits at "\n", and each non-empty sentence
// becomes its whitespace-separated words, or one empty word when it holds
// whitespace only. Empty exactly when the text is whitespace only (Python's
// str.isspace set), where rouge_chinese raises ValueError.
std::vector<std::string> rouge_chinese_words(std::string_view text);

// rouge_chinese's rouge-1, rouge-2 and rouge-l of the texts ' '.join(candidate)
// and ' '.join(reference): ROUGE-N over the sets of distinct n-grams of the
// words (n-grams run across sentence ends), P = |C ∩ R| / |C|, R = |C ∩ R| / |R|
// (0 for an empty set); ROUGE-L P = LCS / #candidate words, R = LCS /
// #reference words over the whole word sequences; F = 2 * ((P * R) / (P + R +
// 1e-8)), in the package's operation order so the doubles are identical.
// Throws TextError when a side has no words (rouge_chinese's "Hypothesis is
// empty." / "Reference is empty.") or more than max_tokens words.
RougeScores rouge_chinese_tokens(std::span<const std::string> candidate, std::span<const std::string> reference,
                                 size_t max_tokens = kMaxRougeTokens);

// Segments both texts (tokens as the segmenter yields them, punctuation
// included) and scores them with rouge_chinese_tokens().
RougeScores rouge_chinese(std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                          size_t max_tokens = kMaxRougeTokens);

// The two ways the service scores: rouge_chinese's, or Lin's definitions as
// rouge-score computes them (rouge() in rouge.h).
enum class RougeMode { kChineseCompat, kLin };

RougeScores rouge(RougeMode mode, std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                  size_t max_tokens = kMaxRougeTokens);

}  // namespace chatradio::text
