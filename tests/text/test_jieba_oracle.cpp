// Conformance against python3-jieba: tests/text/jieba_oracle.py (Debian's
// /usr/bin/python3) writes jieba.cut(text) and jieba.cut(text, HMM=False) for
// every findings and impression of both data sets and more (see the script),
// the char segmenter's tokens from a unicodedata-based reimplementation, ROUGE
// scores from a reimplementation of rouge-score's definitions, and the scores
// of the rouge_chinese package itself; ours must reproduce them.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "server/text/rouge.h"
#include "server/text/rouge_chinese.h"
#include "server/text/segment.h"
#include "tests/common/oracle.h"
#include "tests/common/shared.h"

namespace chatradio::text {
namespace {

using ::chatradio::testing::read_blob;
using ::chatradio::testing::read_count;

using Tokens = std::vector<std::string>;

struct SegmentCase {
  std::string label;
  std::string text;
  Tokens jieba;        // jieba.cut(text)
  Tokens jieba_nohmm;  // jieba.cut(text, HMM=False)
  bool has_char = false;  // the oracle models the text's characters
  Tokens chars;
};

struct RougeCase {
  std::string label;
  std::string segmenter;
  std::string candidate;
  std::string reference;
  double expected[9] = {};  // rouge1 P R F, rouge2 P R F, rougeL P R F
  bool value_error = false;  // rouge_chinese raised ValueError instead
};

struct Oracle {
  std::string skip;   // why the oracle is unavailable; empty when it ran
  std::string error;  // the oracle itself failed
  std::string dict_path;
  std::vector<SegmentCase> segment;
  std::vector<RougeCase> rouge;
};

// Reads "<n>\n" and n blobs; false for the "-1\n" of a list the oracle left out.
bool read_tokens(Tokens& dst, std::istream& in) {
  long n = 0;
  in >> n;
  in.get();
  if (n < 0) return false;
  dst.resize(static_cast<size_t>(n));
  for (std::string& t : dst) t = read_blob(in);
  return true;
}

void read_segment(Oracle& dst, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  dst.segment.resize(read_count(in));
  for (SegmentCase& c : dst.segment) {
    std::getline(in, c.label);
    c.text = read_blob(in);
    read_tokens(c.jieba, in);
    read_tokens(c.jieba_nohmm, in);
    c.has_char = read_tokens(c.chars, in);
  }
  if (!in) throw std::runtime_error(path + ": truncated oracle output");
}

void read_rouge(Oracle& dst, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  dst.rouge.resize(read_count(in));
  for (RougeCase& c : dst.rouge) {
    std::getline(in, c.label);
    std::getline(in, c.segmenter);
    c.candidate = read_blob(in);
    c.reference = read_blob(in);
    std::string line;
    std::getline(in, line);
    c.value_error = line == "ValueError";
    std::istringstream ss(line);
    for (double& v : c.expected) ss >> v;  // repr() of a double reads back exactly
  }
  if (!in) throw std::runtime_error(path + ": truncated oracle output");
}

Oracle run_oracle(const std::string& what) {
  Oracle o;
  const testing::TempDir dir("chatradio-jieba");
  // Debian's /usr/bin/python3, with python3-jieba.
  const testing::OracleRun run = testing::run_oracle_script("tests/text/jieba_oracle.py", dir.path(),
                                                            "--what " + what, " (apt-get install python3-jieba)");
  o.skip = run.skip;
  o.error = run.error;
  if (!run.ok()) return o;
  o.dict_path = testing::slurp_line(dir.path() + "/dict_path");
  if (what == "segment") read_segment(o, dir.path() + "/segment.bin");
  if (what == "rouge" || what == "rouge_chinese") read_rouge(o, dir.path() + "/rouge.bin");
  return o;
}

// Tokens shown with their boundaries; control characters escaped so that
// "\r\n" and " " tokens are visible. Test-only: the texts are public data.
std::string show(const Tokens& tokens) {
  std::string s;
  for (const std::string& t : tokens) {
    s += '[';
    for (const char ch : t) {
      if (static_cast<unsigned char>(ch) < 0x20) {
        s += "\\x" + std::to_string(static_cast<int>(ch));
      } else {
        s += ch;
      }
    }
    s += ']';
  }
  return s;
}

TEST(JiebaOracle, SegmentsLikePythonJieba) {
  CHATRADIO_REQUIRE_SHARED("data/cov-ctr/reports_ZH_EN.csv");
  const Oracle oracle = run_oracle("segment");
  if (!oracle.skip.empty()) GTEST_SKIP() << oracle.skip;
  ASSERT_TRUE(oracle.error.empty()) << oracle.error;

  const auto t0 = std::chrono::steady_clock::now();
  const JiebaDict dict = JiebaDict::load(oracle.dict_path);  // and python3-jieba's HMM tables
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_NE(dict.hmm(), nullptr) << "python3-jieba is installed, so are its HMM tables";
  const JiebaSegmenter jieba(dict);
  const JiebaSegmenter jieba_nohmm(dict, /*hmm=*/false);
  const CharSegmenter chars;

  // Report the first few differences in full and count the rest.
  constexpr int kShown = 8;
  int jieba_diffs = 0, nohmm_diffs = 0, char_diffs = 0;
  size_t cov_texts = 0, iu_texts = 0, char_checked = 0, tokens = 0;
  for (const SegmentCase& c : oracle.segment) {
    cov_texts += c.label.starts_with("cov-ctr");
    iu_texts += c.label.starts_with("iu-xray");
    const Tokens ours = jieba.segment(c.text);
    tokens += ours.size();
    if (ours != c.jieba && ++jieba_diffs <= kShown) {
      ADD_FAILURE() << c.label << ": jieba\n  ours:   " << show(ours) << "\n  python: " << show(c.jieba);
    }
    const Tokens ours_nohmm = jieba_nohmm.segment(c.text);
    if (ours_nohmm != c.jieba_nohmm && ++nohmm_diffs <= kShown) {
      ADD_FAILURE() << c.label << ": jieba without HMM\n  ours:   " << show(ours_nohmm)
                    << "\n  python: " << show(c.jieba_nohmm);
    }
    if (c.has_char) {
      ++char_checked;
      const Tokens ours_char = chars.segment(c.text);
      if (ours_char != c.chars && ++char_diffs <= kShown) {
        ADD_FAILURE() << c.label << ": char\n  ours:   " << show(ours_char) << "\n  python: " << show(c.chars);
      }
    }
  }
  EXPECT_EQ(cov_texts, 1800u) << "findings, impression and English report of the 600 COV-CTR rows";
  EXPECT_GE(iu_texts, 6000u) << "every non-empty findings and impression of IU X-ray";
  EXPECT_GE(char_checked, 1600u) << "texts whose characters the python char segmenter models";
  EXPECT_EQ(jieba_diffs, 0) << "texts whose tokens differ from jieba.cut(text)";
  EXPECT_EQ(nohmm_diffs, 0) << "texts whose tokens differ from jieba.cut(text, HMM=False)";
  EXPECT_EQ(char_diffs, 0) << "texts whose char-segmenter tokens differ from the python rules";
  std::cout << oracle.segment.size() << " texts (" << char_checked << " also through the char segmenter), "
            << tokens << " jieba tokens, dictionary of " << dict.size() << " words and prefixes and "
            << dict.hmm()->emit_size() << " HMM characters loaded in " << load_s << " s\n";
}

TEST(JiebaOracle, RougeLikeRougeScoreDefinitions) {
  CHATRADIO_REQUIRE_SHARED("data/cov-ctr/reports_ZH_EN.csv");
  const Oracle oracle = run_oracle("rouge");
  if (!oracle.skip.empty()) GTEST_SKIP() << oracle.skip;
  ASSERT_TRUE(oracle.error.empty()) << oracle.error;
  ASSERT_GE(oracle.rouge.size(), 100u);

  const JiebaDict dict = JiebaDict::load(oracle.dict_path);
  size_t by_segmenter[3] = {};
  for (const RougeCase& c : oracle.rouge) {
    const auto seg = make_segmenter(c.segmenter, &dict);
    by_segmenter[c.segmenter == "char" ? 0 : c.segmenter == "jieba" ? 1 : 2]++;
    ASSERT_FALSE(c.value_error) << c.label;
    const RougeScores s = rouge(c.candidate, c.reference, *seg);
    const double ours[9] = {s.rouge1.precision, s.rouge1.recall, s.rouge1.f1, s.rouge2.precision, s.rouge2.recall,
                            s.rouge2.f1,        s.rougeL.precision, s.rougeL.recall, s.rougeL.f1};
    // Same integer counts and the same double operations in the same order:
    // the scores agree to the bit, not just approximately.
    for (int k = 0; k < 9; ++k) {
      EXPECT_EQ(ours[k], c.expected[k]) << c.label << " (" << c.segmenter << ") value " << k;
    }
  }
  EXPECT_GE(by_segmenter[0], 50u);
  EXPECT_GE(by_segmenter[1], 50u);
  EXPECT_GE(by_segmenter[2], 20u);
}

TEST(JiebaOracle, RougeChineseLikeThePackage) {
  CHATRADIO_REQUIRE_SHARED("data/cov-ctr/reports_ZH_EN.csv");
  const Oracle oracle = run_oracle("rouge_chinese");
  if (!oracle.skip.empty()) GTEST_SKIP() << oracle.skip;
  ASSERT_TRUE(oracle.error.empty()) << oracle.error;

  const JiebaDict dict = JiebaDict::load(oracle.dict_path);
  size_t cov_jieba = 0, iu = 0, errors = 0, other_segmenters = 0;
  for (const RougeCase& c : oracle.rouge) {
    cov_jieba += c.label.starts_with("cov-ctr") && c.segmenter == "jieba";
    iu += c.label.starts_with("iu-xray");
    other_segmenters += c.segmenter != "jieba";
    const auto seg = make_segmenter(c.segmenter, &dict);
    if (c.value_error) {
      ++errors;
      EXPECT_THROW(rouge_chinese(c.candidate, c.reference, *seg), TextError) << c.label;
      continue;
    }
    const RougeScores s = rouge_chinese(c.candidate, c.reference, *seg);
    const double ours[9] = {s.rouge1.precision, s.rouge1.recall, s.rouge1.f1, s.rouge2.precision, s.rouge2.recall,
                            s.rouge2.f1,        s.rougeL.precision, s.rougeL.recall, s.rougeL.f1};
    // The same counts through the same double operations: equal to the bit.
    for (int k = 0; k < 9; ++k) {
      EXPECT_EQ(ours[k], c.expected[k]) << c.label << " (" << c.segmenter << ") value " << k;
    }
  }
  EXPECT_GE(cov_jieba, 1300u) << "every COV-CTR row twice, and English pairs";
  EXPECT_GE(iu, 400u);
  EXPECT_GE(other_segmenters, 150u);
  EXPECT_GE(errors, 4u) << "empty and whitespace-only sides";
  std::cout << oracle.rouge.size() << " pairs, " << errors << " of them rejected like rouge_chinese does\n";
}

}  // namespace
}  // namespace chatradio::text
