#include "server/text/rouge.h"

#include <algorithm>
#include <cstdint>
#include <unordered_map>

#include "server/text/utf8.h"

namespace chatradio::text {

namespace {

using Ids = std::vector<uint32_t>;

// Both sides as ids of one shared vocabulary, so n-grams compare as integers.
void intern(Ids& cand_ids, Ids& ref_ids, std::span<const std::string> candidate,
            std::span<const std::string> reference) {
  std::unordered_map<std::string_view, uint32_t> vocab;
  vocab.reserve(candidate.size() + reference.size());
  const auto id_of = [&](const std::string& token) {
    return vocab.try_emplace(token, static_cast<uint32_t>(vocab.size())).first->second;
  };
  cand_ids.clear();
  ref_ids.clear();
  for (const std::string& t : candidate) cand_ids.push_back(id_of(t));
  for (const std::string& t : reference) ref_ids.push_back(id_of(t));
}

// scoring.fmeasure, in the same operation order: 2 * p * r / (p + r).
double fmeasure(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

Score make_score(size_t overlap, size_t cand_count, size_t ref_count) {
  Score s;
  s.precision = static_cast<double>(overlap) / static_cast<double>(std::max<size_t>(cand_count, 1));
  s.recall = static_cast<double>(overlap) / static_cast<double>(std::max<size_t>(ref_count, 1));
  s.f1 = fmeasure(s.precision, s.recall);
  return s;
}

// Start positions of every n-gram, sorted by the n-gram: equal n-grams end up
// adjacent, and the counts of one n-gram on both sides line up in a merge.
std::vector<uint32_t> sorted_ngrams(const Ids& ids, size_t n) {
  std::vector<uint32_t> starts;
  if (ids.size() < n) return starts;
  starts.resize(ids.size() - n + 1);
  for (size_t i = 0; i < starts.size(); ++i) starts[i] = static_cast<uint32_t>(i);
  std::sort(starts.begin(), starts.end(), [&](uint32_t a, uint32_t b) {
    return std::lexicographical_compare(ids.begin() + a, ids.begin() + a + n, ids.begin() + b, ids.begin() + b + n);
  });
  return starts;
}

Score ngram_score(const Ids& cand, const Ids& ref, size_t n) {
  const std::vector<uint32_t> c = sorted_ngrams(cand, n);
  const std::vector<uint32_t> r = sorted_ngrams(ref, n);
  // Walking two sorted multisets and stepping both on a match counts
  // min(count in c, count in r) per n-gram: the clipped overlap.
  size_t overlap = 0;
  for (size_t i = 0, j = 0; i < c.size() && j < r.size();) {
    const auto ci = cand.begin() + c[i];
    const auto rj = ref.begin() + r[j];
    if (std::lexicographical_compare(ci, ci + n, rj, rj + n)) {
      ++i;
    } else if (std::lexicographical_compare(rj, rj + n, ci, ci + n)) {
      ++j;
    } else {
      ++overlap;
      ++i;
      ++j;
    }
  }
  return make_score(overlap, c.size(), r.size());
}

size_t lcs_ids(const Ids& a, const Ids& b) {
  const Ids& longer = a.size() >= b.size() ? a : b;
  const Ids& shorter = a.size() >= b.size() ? b : a;
  if (shorter.empty()) return 0;
  // One row of the classic table over the shorter side: row[j] holds
  // LCS(longer[0..i), shorter[0..j)), diag the value up-left before overwrite.
  std::vector<uint32_t> row(shorter.size() + 1, 0);
  for (const uint32_t x : longer) {
    uint32_t diag = 0;
    for (size_t j = 1; j <= shorter.size(); ++j) {
      const uint32_t up = row[j];
      row[j] = x == shorter[j - 1] ? diag + 1 : std::max(up, row[j - 1]);
      diag = up;
    }
  }
  return row.back();
}

Score lcs_score(const Ids& cand, const Ids& ref) {
  if (cand.empty() || ref.empty()) return Score{};
  const size_t lcs = lcs_ids(cand, ref);
  Score s;
  s.precision = static_cast<double>(lcs) / static_cast<double>(cand.size());
  s.recall = static_cast<double>(lcs) / static_cast<double>(ref.size());
  s.f1 = fmeasure(s.precision, s.recall);
  return s;
}

}  // namespace

void check_length(size_t candidate, size_t reference, size_t max_tokens) {
  const auto fail = [&](const char* side, size_t n) {
    throw TextError(std::string("ROUGE input too long: the ") + side + " has " + std::to_string(n) +
                    " tokens, the limit is " + std::to_string(max_tokens));
  };
  if (candidate > max_tokens) fail("candidate", candidate);
  if (reference > max_tokens) fail("reference", reference);
}

void normalize_tokens(std::vector<std::string>& tokens) {
  size_t kept = 0;
  for (std::string& token : tokens) {
    if (!is_word_token(token)) continue;
    std::string out;
    out.reserve(token.size());
    for (size_t pos = 0; pos < token.size();) {
      const Utf8Char c = decode_utf8(token, pos);
      const char32_t folded = c.valid ? fold_fullwidth(c.cp) : c.cp;
      if (c.valid && folded < 0x80) {
        out += ascii_lower(static_cast<char>(folded));
      } else {
        out.append(token, pos, c.len);
      }
      pos += c.len;
    }
    tokens[kept++] = std::move(out);
  }
  tokens.resize(kept);
}

Score rouge_n(std::span<const std::string> candidate, std::span<const std::string> reference, size_t n) {
  if (n == 0) throw TextError("ROUGE-N needs n >= 1");
  Ids c, r;
  intern(c, r, candidate, reference);
  return ngram_score(c, r, n);
}

Score rouge_l(std::span<const std::string> candidate, std::span<const std::string> reference, size_t max_tokens) {
  check_length(candidate.size(), reference.size(), max_tokens);
  Ids c, r;
  intern(c, r, candidate, reference);
  return lcs_score(c, r);
}

size_t lcs_length(std::span<const std::string> a, std::span<const std::string> b) {
  Ids x, y;
  intern(x, y, a, b);
  return lcs_ids(x, y);
}

RougeScores rouge_tokens(std::span<const std::string> candidate, std::span<const std::string> reference,
                         size_t max_tokens) {
  check_length(candidate.size(), reference.size(), max_tokens);
  Ids c, r;
  intern(c, r, candidate, reference);
  RougeScores out;
  out.rouge1 = ngram_score(c, r, 1);
  out.rouge2 = ngram_score(c, r, 2);
  out.rougeL = lcs_score(c, r);
  return out;
}

RougeScores rouge(std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                  size_t max_tokens) {
  std::vector<std::string> c, r;
  segmenter.segment_into(c, candidate);
  segmenter.segment_into(r, reference);
  normalize_tokens(c);
  normalize_tokens(r);
  return rouge_tokens(c, r, max_tokens);
}

}  // namespace chatradio::text
