// Word segmentation for ROUGE: a per-character segmenter for CJK text, the
// rouge-score tokenizer for English, and a reimplementation of python jieba's
// precise mode, with the HMM for unknown words (jieba.cut(text)) or without
// (jieba.cut(text, HMM=False)). docs/rouge.md gives the exact rules;
// tests/text checks jieba against python3-jieba itself.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "server/text/jieba_hmm.h"

namespace chatradio::text {

// Bad input to text/: an unreadable or malformed dictionary, an unknown
// segmenter name, a text beyond a limit. The message never quotes report text.
class TextError : public std::runtime_error {
 public:
  explicit TextError(const std::string& what) : std::runtime_error(what) {}
};

// Splits UTF-8 text into tokens. Implementations hold no mutable state: one
// object may serve many threads. Invalid UTF-8 never throws (see each class).
class Segmenter {
 public:
  virtual ~Segmenter() = default;
  // Appends the tokens of `text` to dst.
  virtual void segment_into(std::vector<std::string>& dst, std::string_view text) const = 0;
  // "char", "english", "jieba" or "jieba-nohmm", as make_segmenter() takes it.
  virtual std::string_view name() const = 0;

  std::vector<std::string> segment(std::string_view text) const {
    std::vector<std::string> out;
    segment_into(out, text);
    return out;
  }
};

// Each ideograph (Han, kana, hangul, ...) is one token; runs of letters and
// digits of alphabetic scripts are one token, ASCII lowercased, fullwidth
// ASCII folded; separators (whitespace, punctuation, symbols, invalid UTF-8)
// end a run and are dropped. "CT示3.5cm结节" -> ct 示 3 5cm 结 节.
class CharSegmenter final : public Segmenter {
 public:
  void segment_into(std::vector<std::string>& dst, std::string_view text) const override;
  std::string_view name() const override { return "char"; }
};

// rouge-score's tokenizer without stemming: lowercase, every run of
// characters outside [a-z0-9] is a separator. Non-ASCII text vanishes, except
// the two characters Python's str.lower() maps into ASCII (U+212A KELVIN SIGN
// -> "k", U+0130 -> "i" followed by a separator), so tokens equal
// rouge_score.tokenize's exactly.
class EnglishSegmenter final : public Segmenter {
 public:
  void segment_into(std::vector<std::string>& dst, std::string_view text) const override;
  std::string_view name() const override { return "english"; }
};

// jieba's prefix dictionary: every word of dict.txt with its frequency, and
// every proper prefix of a word with frequency 0 (unless it is a word itself),
// plus the sum of all frequencies; and, when loaded, jieba's HMM tables.
// Immutable after load(), so one instance can be shared by any number of
// segmenters and threads.
class JiebaDict {
 public:
  // Reads a jieba dict.txt ("word freq [tag]" lines, UTF-8), as jieba's
  // gen_pfdict does: a word listed twice keeps its last frequency while the
  // total counts both. Throws TextError naming the file and line for what
  // jieba rejects too (a line without a frequency, invalid UTF-8), and for a
  // frequency that is not plain decimal digits below 2^32 or a dictionary
  // with total 0. Loads the HMM tables of Debian's python3-jieba
  // (JiebaHmm::kDebianDir) when they are installed: python jieba, too, uses
  // its package's tables whatever dictionary it is given.
  static JiebaDict load(const std::string& path);
  // The same with the HMM tables of hmm_dir (none when empty): a missing or
  // malformed table is then an error.
  static JiebaDict load(const std::string& path, const std::string& hmm_dir);

  // Frequency of a word or prefix: -1 when absent, 0 for a prefix that is not
  // a word itself.
  int64_t freq(std::string_view word) const;
  uint64_t total() const { return total_; }
  size_t size() const { return used_; }  // words and prefixes
  // The HMM tables, or null when none were loaded.
  const JiebaHmm* hmm() const { return hmm_.get(); }

  // Where Debian's python3-jieba keeps its dictionary.
  static constexpr const char* kDebianPath = "/usr/lib/python3/dist-packages/jieba/dict.txt";

 private:
  JiebaDict() = default;
  struct Slot {
    uint32_t offset = 0;  // key bytes in keys_
    uint32_t len = 0;     // 0: empty slot
    uint32_t tag = 0;     // high bits of the key's hash: most probes skip the memcmp
    uint32_t freq = 0;
  };
  // Finds key's slot, or the empty slot where it would go.
  size_t find(std::string_view key, uint64_t hash) const;
  void grow();
  // Inserts a key that points into keys_; overwrite decides whether an
  // existing entry takes the new frequency.
  void put(uint32_t offset, uint32_t len, uint32_t freq, bool overwrite);

  std::string keys_;  // the file itself: every key is a substring of it
  std::vector<Slot> slots_;
  size_t used_ = 0;
  uint64_t total_ = 0;
  std::shared_ptr<const JiebaHmm> hmm_;  // shared: copies of a dictionary share the tables
};

// python jieba 0.42.1 `jieba.cut(text)` (hmm) or `jieba.cut(text, HMM=False)`
// over a JiebaDict: runs of [\u4E00-\u9FD5a-zA-Z0-9+#&._%-] are cut by the
// maximum-probability route through the word DAG. Without the HMM,
// consecutive single ASCII letters/digits of that route are joined into one
// token; with it, consecutive single characters of the route that are not a
// dictionary word together go through jieba's HMM (JiebaHmm), which may join
// them into new words. Every character outside those runs is a token of its
// own, except "\r\n" which stays one. Whitespace and punctuation tokens are
// kept, exactly as jieba yields them (ROUGE drops them: normalize_tokens in
// rouge.h). An invalid UTF-8 byte (jieba would refuse the text) becomes a
// token of that one byte. Holds a reference: `dict` must outlive the segmenter.
class JiebaSegmenter final : public Segmenter {
 public:
  // Throws TextError when hmm is asked for and `dict` has no HMM tables.
  explicit JiebaSegmenter(const JiebaDict& dict, bool hmm = true);
  void segment_into(std::vector<std::string>& dst, std::string_view text) const override;
  std::string_view name() const override { return hmm_ != nullptr ? "jieba" : "jieba-nohmm"; }

 private:
  // One run of the han pattern: DAG, route, and __cut_DAG's or
  // __cut_DAG_NO_HMM's output loop.
  void cut_block(std::vector<std::string>& dst, std::string_view block) const;
  // __cut_DAG's output loop over the route: at[k] is the byte offset of
  // character k of the block (one past the end last), end[k] the last
  // character of the route's word starting at k.
  void emit_route_hmm(std::vector<std::string>& dst, std::string_view block, const std::vector<uint32_t>& at,
                      const std::vector<uint32_t>& end) const;
  const JiebaDict& dict_;
  const JiebaHmm* hmm_;  // null: HMM off
};

// "char", "english", "jieba" or "jieba-nohmm" (the jieba ones need dict, which
// must outlive the result, and "jieba" its HMM tables). Throws TextError for
// any other name or for a jieba segmenter without what it needs.
std::unique_ptr<Segmenter> make_segmenter(std::string_view name, const JiebaDict* dict = nullptr);

// True when ideographs (CharClass::kIdeograph: Han, kana, hangul) are at least
// half of the letters of `text` (ideographs, ASCII letters, other letters;
// digits, marks and separators do not count), and there is at least one.
// "CT示双肺磨玻璃影" is CJK; "The lung (肺) is clear" is not. Picks a
// segmenter when the caller does not say which.
bool mostly_cjk(std::string_view text);

// Whether a token carries a word: at least one ASCII/fullwidth letter or
// digit, other letter or ideograph. Punctuation, whitespace and symbol tokens
// (jieba yields them) are not.
bool is_word_token(std::string_view token);

}  // namespace chatradio::text
