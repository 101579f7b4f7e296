// jieba's HMM (finalseg) on tables written here, small enough that every
// Viterbi path is worked out by hand (and was checked with python jieba's own
// finalseg.cut on the same tables); test_jieba_oracle.cpp runs the real
// tables against python3-jieba.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "server/text/segment.h"
#include "tests/common/temp_dir.h"
#include "tests/text/segment_threads.h"

namespace chatradio::text {
namespace {

using Tokens = std::vector<std::string>;

// Log-probabilities: 甲 begins words (B), 乙 ends them (E), 丁 sits inside (M),
// 丙 stands alone (S); every other character has MIN_FLOAT (-3.14e100) in all
// four states. So 甲乙 is one word (B E: -0.5-1 -0.1-1 = -2.6 against
// -3.14e100 for anything else) and 丙甲乙 is 丙 + 甲乙.
constexpr const char* kStart = "P={'B': -0.5,\n 'E': -3.14e+100,\n 'M': -3.14e+100,\n 'S': -1.0}\n";
constexpr const char* kTrans =
    "P={'B': {'E': -0.1, 'M': -2.0},\n 'E': {'B': -0.7, 'S': -0.7},\n 'M': {'E': -0.3, 'M': -1.0},\n"
    " 'S': {'B': -0.7, 'S': -0.7}}\n";
constexpr const char* kEmit =
    "from __future__ import unicode_literals\n\n"
    "P={'B': {'\\u7532': -1.0},\n 'E': {'\\u4e59': -1.0},\n 'M': {u'丁': -0.5},\n"
    " 'S': {'\\u4e19': -1.0, \"\\u7532\": -5.0}}\n";

// A dictionary and an HMM table directory in one temporary directory.
struct Files {
  testing::TempDir dir{"chatradio-hmm"};
  Files(const std::string& dict, const std::string& start, const std::string& trans, const std::string& emit) {
    write("dict.txt", dict);
    write("prob_start.py", start);
    write("prob_trans.py", trans);
    write("prob_emit.py", emit);
  }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name, std::ios::binary) << text;
  }
  JiebaDict load() const { return JiebaDict::load(dir / "dict.txt", dir.path()); }
};

// 研究 is a word; 甲 乙 丙 丁 are single characters in the dictionary (frequent
// enough that the route takes them one by one), 甲乙 a rare word.
constexpr const char* kDict = "研究 100 n\n甲 100 n\n乙 100 n\n丙 100 n\n丁 100 n\n";

TEST(JiebaHmm, JoinsUnknownWordsLikeFinalseg) {
  const Files f(kDict, kStart, kTrans, kEmit);
  const JiebaDict dict = f.load();
  ASSERT_NE(dict.hmm(), nullptr);
  EXPECT_EQ(dict.hmm()->emit_size(), 4u);
  const JiebaSegmenter seg(dict);
  EXPECT_EQ(seg.name(), "jieba");
  // Single characters of the route between words go through the HMM together.
  EXPECT_EQ(seg.segment("研究丙甲乙研究"), (Tokens{"研究", "丙", "甲乙", "研究"}));
  EXPECT_EQ(seg.segment("甲丁丁乙丙"), (Tokens{"甲丁丁乙", "丙"}));
  // One character alone is yielded as it is.
  EXPECT_EQ(seg.segment("研究甲研究"), (Tokens{"研究", "甲", "研究"}));
  // Characters the tables do not know tie at MIN_FLOAT: S wins ties (Python
  // compares the state letters), so they stay apart.
  EXPECT_EQ(seg.segment("戊己"), (Tokens{"戊", "己"}));
  // Without the HMM the same route gives single characters.
  EXPECT_EQ(JiebaSegmenter(dict, /*hmm=*/false).segment("研究丙甲乙"), (Tokens{"研究", "丙", "甲", "乙"}));
}

TEST(JiebaHmm, BufferThatIsAWordIsYieldedCharacterByCharacter) {
  // 甲乙 (frequency 1) loses the route to 甲 + 乙 (100 each), and is in the
  // dictionary: __cut_DAG yields its characters rather than asking the HMM.
  const Files f(std::string(kDict) + "甲乙 1 n\n", kStart, kTrans, kEmit);
  const JiebaDict dict = f.load();
  EXPECT_EQ(JiebaSegmenter(dict).segment("研究甲乙"), (Tokens{"研究", "甲", "乙"}));
}

TEST(JiebaHmm, AsciiInsideTheBufferSplitsLikeReSkip) {
  const Files f(kDict, kStart, kTrans, kEmit);
  const JiebaDict dict = f.load();
  const JiebaSegmenter seg(dict);
  // [a-zA-Z0-9]+(?:\.\d+)?%? and the pieces between the matches.
  EXPECT_EQ(seg.segment("研究ab3.5%x"), (Tokens{"研究", "ab3.5%", "x"}));
  EXPECT_EQ(seg.segment("研究a+#b"), (Tokens{"研究", "a", "+#", "b"}));
  EXPECT_EQ(seg.segment("甲乙ab1.2.3"), (Tokens{"甲乙", "ab1.2", ".", "3"}));
  // Outside the han blocks nothing changes: each character, "\r\n" whole.
  EXPECT_EQ(seg.segment("甲乙，\r\n丙"), (Tokens{"甲乙", "，", "\r\n", "丙"}));
}

TEST(JiebaHmm, TablesMustBeComplete) {
  const auto message = [](const std::string& start, const std::string& trans, const std::string& emit) {
    const Files f(kDict, start, trans, emit);
    try {
      f.load();
    } catch (const TextError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(kStart, kTrans, kEmit), "no error");
  EXPECT_NE(message("P={'B': -0.5, 'E': -1.0, 'M': -1.0}\n", kTrans, kEmit).find("prob_start.py"), std::string::npos);
  EXPECT_NE(message("P={'B': -0.5, 'X': -1.0}\n", kTrans, kEmit).find("B, E, M, S"), std::string::npos);
  EXPECT_NE(message(kStart, "P={'B': {'E': nan}}\n", kEmit).find("prob_trans.py line 1"), std::string::npos);
  EXPECT_NE(message(kStart, kTrans, "P={'B': {'\\u7532': -1.0},\n 'E': {'ab': -1.0}}").find("prob_emit.py line 2"),
            std::string::npos);
  EXPECT_NE(message(kStart, kTrans, "Q=1\n").find("no \"P = {...}\""), std::string::npos);
  EXPECT_NE(message(kStart, kTrans, std::string(kEmit) + "P").find("after the table"), std::string::npos);

  const testing::TempDir empty("chatradio-hmm");
  std::ofstream(empty / "dict.txt") << kDict;
  EXPECT_THROW(JiebaDict::load(empty / "dict.txt", empty.path()), TextError);  // no tables there
}

TEST(JiebaHmm, SegmenterNeedsTheTables) {
  const Files f(kDict, kStart, kTrans, kEmit);
  const JiebaDict bare = JiebaDict::load(f.dir / "dict.txt", "");
  EXPECT_EQ(bare.hmm(), nullptr);
  EXPECT_THROW(JiebaSegmenter{bare}, TextError);
  EXPECT_THROW(make_segmenter("jieba", &bare), TextError);
  EXPECT_EQ(make_segmenter("jieba-nohmm", &bare)->name(), "jieba-nohmm");
}

TEST(JiebaHmm, SharedAcrossThreads) {
  const Files f(kDict, kStart, kTrans, kEmit);
  const JiebaDict dict = f.load();
  const auto seg = make_segmenter("jieba", &dict);
  expect_same_tokens_across_threads(*seg, "研究丙甲乙研究，甲丁丁乙丙ab3.5%x\r\n");
}

}  // namespace
}  // namespace chatradio::text
