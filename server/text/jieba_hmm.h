// jieba's HMM for words its dictionary does not know (python jieba 0.42.1
// `jieba.finalseg`): a 4-state (B, E, M, S) Viterbi over single characters
// with jieba's own start, transition and emission log-probabilities, read at
// run time from the tables python3-jieba ships (finalseg/prob_*.py).
// docs/rouge.md says why the tables are read rather than shipped here.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace chatradio::text {

class JiebaHmm {
 public:
  // Reads prob_start.py, prob_trans.py and prob_emit.py from `dir` (the Python
  // dict literals `P={...}` jieba imports). Throws TextError naming the file
  // and line for a file that is missing, is not such a literal, or lacks a
  // state jieba indexes (start and transitions from all four states, and an
  // emission table for each).
  static JiebaHmm load(const std::string& dir);

  // Where Debian's python3-jieba keeps the tables.
  static constexpr const char* kDebianDir = "/usr/lib/python3/dist-packages/jieba/finalseg";

  // finalseg.cut(text) as __cut_DAG calls it, on a run of characters of
  // jieba's han pattern ([\u4E00-\u9FD5a-zA-Z0-9+#&._%-], valid UTF-8): Han
  // runs go through the Viterbi, other runs are split by
  // ([a-zA-Z0-9]+(?:\.\d+)?%?) into the matches and the pieces between them.
  void cut_into(std::vector<std::string>& dst, std::string_view text) const;

  size_t emit_size() const { return emit_.size(); }  // characters with an emission entry

 private:
  JiebaHmm() = default;
  // Viterbi over a run of Han characters, cut at its E and S states (__cut).
  void cut_han(std::vector<std::string>& dst, std::string_view run) const;

  // States are indexed B=0, E=1, M=2, S=3: alphabetical, so that "the larger
  // index" breaks ties exactly as Python's tuple comparison of the letters.
  std::array<double, 4> start_{};
  std::array<std::array<double, 4>, 4> trans_{};              // [from][to], absent -> MIN_FLOAT
  std::unordered_map<char32_t, std::array<double, 4>> emit_;  // per character, absent -> MIN_FLOAT
};

}  // namespace chatradio::text
