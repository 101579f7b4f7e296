#include "server/text/rouge_chinese.h"

#include <unordered_set>

#include "server/text/utf8.h"

namespace chatradio::text {

namespace {

// Text as code points, as Python's str sees it. An invalid UTF-8 byte b (a
// segmenter may pass one through) becomes kRawByte + b: no rule matches it,
// it is not whitespace, and it converts back to the same byte.
constexpr char32_t kRawByte = 0x110000;

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = decode_utf8(s, pos);
    out += c.valid ? c.cp : kRawByte + static_cast<uint8_t>(s[pos]);
    pos += c.len;
  }
  return out;
}

std::string encode(std::u32string_view s) {
  std::string out;
  for (const char32_t c : s) {
    if (c >= kRawByte) {
      out += static_cast<char>(c - kRawByte);
    } else {
      append_utf8(out, c);
    }
  }
  return out;
}

// str.isspace(): what str.split() and str.rstrip() take as whitespace.
bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_end(char32_t c) { return c == U'。' || c == U'！' || c == U'？' || c == U'?'; }  // [。！？\?]
bool is_close_quote(char32_t c) { return c == U'”' || c == U'’'; }                     // [”’]

// re.sub(r"(G1)(G2)", r"\1\n\2", s) for a fixed-length first group: scans left
// to right, and after a match continues behind it (matches never overlap).
// g1(s, i) is the length of the first group's match at i, 0 for none.
template <class G1, class G2>
std::u32string break_after(const std::u32string& s, G1 g1, G2 g2) {
  std::u32string out;
  out.reserve(s.size() + s.size() / 8);
  for (size_t i = 0; i < s.size();) {
    const size_t len = g1(s, i);
    if (len > 0 && i + len < s.size() && g2(s[i + len])) {
      out.append(s, i, len);
      out += U'\n';
      out += s[i + len];
      i += len + 1;
    } else {
      out += s[i++];
    }
  }
  return out;
}

// Rouge.cut_sent, the four substitutions in order.
std::u32string cut_sent(std::u32string s) {
  const auto not_quote = [](char32_t c) { return !is_close_quote(c); };
  const auto run_of = [](char32_t ch, size_t n) {
    return [ch, n](const std::u32string& t, size_t i) -> size_t {
      if (i + n > t.size()) return 0;
      for (size_t k = 0; k < n; ++k) {
        if (t[i + k] != ch) return 0;
      }
      return n;
    };
  };
  // ([。！？\?])([^”’])
  s = break_after(s, [](const std::u32string& t, size_t i) -> size_t { return is_end(t[i]) ? 1 : 0; }, not_quote);
  s = break_after(s, run_of(U'.', 6), not_quote);  // (\.{6})([^”’])
  s = break_after(s, run_of(U'…', 2), not_quote);  // (\…{2})([^”’])
  // ([。！？\?][”’])([^，。！？\?])
  s = break_after(
      s,
      [](const std::u32string& t, size_t i) -> size_t {
        return i + 1 < t.size() && is_end(t[i]) && is_close_quote(t[i + 1]) ? 2 : 0;
      },
      [](char32_t c) { return c != U'，' && !is_end(c); });
  return s;
}

// rouge_score.f_r_p_rouge_n's and rouge_l_summary_level's F, operation by operation.
double f_score(double precision, double recall) { return 2.0 * ((precision * recall) / (precision + recall + 1e-8)); }

// The distinct n-grams of the words, each as its words joined by "\n" (no
// word holds whitespace, so the joint is unambiguous).
std::unordered_set<std::string> ngram_set(const std::vector<std::string>& words, size_t n) {
  std::unordered_set<std::string> out;
  for (size_t i = 0; i + n <= words.size(); ++i) {
    std::string g = words[i];
    for (size_t k = 1; k < n; ++k) (g += '\n') += words[i + k];
    out.insert(std::move(g));
  }
  return out;
}

Score rouge_n_unique(const std::vector<std::string>& candidate, const std::vector<std::string>& reference, size_t n) {
  const std::unordered_set<std::string> c = ngram_set(candidate, n);
  const std::unordered_set<std::string> r = ngram_set(reference, n);
  size_t overlap = 0;
  for (const std::string& g : c) overlap += r.count(g);
  Score s;
  s.precision = c.empty() ? 0.0 : static_cast<double>(overlap) / static_cast<double>(c.size());
  s.recall = r.empty() ? 0.0 : static_cast<double>(overlap) / static_cast<double>(r.size());
  s.f1 = f_score(s.precision, s.recall);
  return s;
}

std::string join_tokens(std::span<const std::string> tokens) {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ' ';
    out += tokens[i];
  }
  return out;
}

}  // namespace

std::vector<std::string> rouge_chinese_words(std::string_view text) {
  std::u32string s = cut_sent(decode(text));
  while (!s.empty() && is_py_space(s.back())) s.pop_back();  // para.rstrip()
  std::vector<std::string> words;
  if (s.empty()) return words;
  // para.split("\n"); per sentence with len > 0: " ".join(sentence.split()),
  // which _split_into_words splits at " " again: its words, or [""].
  for (size_t b = 0; b <= s.size();) {
    size_t e = s.find(U'\n', b);
    if (e == std::u32string::npos) e = s.size();
    if (e > b) {
      const size_t before = words.size();
      for (size_t i = b; i < e;) {
        if (is_py_space(s[i])) {
          ++i;
          continue;
        }
        size_t j = i;
        while (j < e && !is_py_space(s[j])) ++j;
        words.push_back(encode(std::u32string_view(s).substr(i, j - i)));
        i = j;
      }
      if (words.size() == before) words.emplace_back();
    }
    b = e + 1;
  }
  return words;
}

RougeScores rouge_chinese_tokens(std::span<const std::string> candidate, std::span<const std::string> reference,
                                 size_t max_tokens) {
  const std::vector<std::string> c = rouge_chinese_words(join_tokens(candidate));
  const std::vector<std::string> r = rouge_chinese_words(join_tokens(reference));
  if (c.empty()) throw TextError("rouge_chinese: the candidate is empty or whitespace only (\"Hypothesis is empty.\")");
  if (r.empty()) throw TextError("rouge_chinese: the reference is empty or whitespace only (\"Reference is empty.\")");
  check_length(c.size(), r.size(), max_tokens);
  RougeScores out;
  out.rouge1 = rouge_n_unique(c, r, 1);
  out.rouge2 = rouge_n_unique(c, r, 2);
  const auto lcs = static_cast<double>(lcs_length(r, c));
  out.rougeL.recall = lcs / static_cast<double>(r.size());
  out.rougeL.precision = lcs / static_cast<double>(c.size());
  out.rougeL.f1 = f_score(out.rougeL.precision, out.rougeL.recall);
  return out;
}

RougeScores rouge_chinese(std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                          size_t max_tokens) {
  return rouge_chinese_tokens(segmenter.segment(candidate), segmenter.segment(reference), max_tokens);
}

RougeScores rouge(RougeMode mode, std::string_view candidate, std::string_view reference, const Segmenter& segmenter,
                  size_t max_tokens) {
  if (mode == RougeMode::kChineseCompat) return rouge_chinese(candidate, reference, segmenter, max_tokens);
  return rouge(candidate, reference, segmenter, max_tokens);
}

}  // namespace chatradio::text
