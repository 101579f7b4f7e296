// The jieba reimplementation without the HMM (jieba.cut(text, HMM=False)) on
// small dictionaries written here, where every route is computed by hand;
// test_jieba_hmm.cpp adds the HMM, test_jieba_oracle.cpp checks the real
// dict.txt against python3-jieba.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "server/text/segment.h"
#include "tests/text/segment_threads.h"

namespace chatradio::text {
namespace {

using Tokens = std::vector<std::string>;

// A dictionary file in the temporary directory, removed with the object.
class DictFile {
 public:
  explicit DictFile(const std::string& content) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "chatradio-dict-XXXXXX").string();
    const int fd = mkstemp(tmpl.data());
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    close(fd);
    path_ = tmpl;
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~DictFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Total 340. For 研究生命起源 the DAG is 0:{研,研究,研究生} 1:{究} 2:{生,生命}
// 3:{命} 4:{起,起源} 5:{源}; with p(w) = freq/340, from the end:
//   route(4) = 起源        (p 60/340 beats 起 源: 5/340 * 5/340)
//   route(2) = 生命 起源   (80/340 beats 生 命: 20/340 * 10/340)
//   route(0) = 研究 生命 起源: 100*80 beats 研究生 命 (50*10) and 研 究 ...
// Longest-match would have said 研究生 命 起源.
constexpr const char* kDict =
    "研究 100 n\n研究生 50 n\n生命 80 n\n命 10 n\n起源 60 n\n研 5 n\n究 5 n\n生 20 n\n起 5 n\n源 5 n\n"
    "CT 30 eng\n";

TEST(JiebaDict, PrefixDictionaryAndTotal) {
  const DictFile file(std::string(kDict) + "生命科学 2 n\n");
  const JiebaDict dict = JiebaDict::load(file.path());
  EXPECT_EQ(dict.total(), 372u);
  EXPECT_EQ(dict.freq("研究"), 100);
  EXPECT_EQ(dict.freq("研究生"), 50);
  EXPECT_EQ(dict.freq("生命科"), 0);  // a prefix only
  EXPECT_EQ(dict.freq("C"), 0);
  EXPECT_EQ(dict.freq("研究生命"), -1);
  EXPECT_EQ(dict.freq(""), -1);
  // 11 words + 生命科学 + prefixes 研究生's 研究 (a word), 生命科, C: 14 keys
  EXPECT_EQ(dict.size(), 14u);
}

TEST(JiebaDict, DuplicateWordKeepsLastFrequencyAndCountsBoth) {
  const DictFile file("肺炎 10 n\n肺 3\r\n肺炎 7 n\n");  // "\r\n" is stripped, the tag optional
  const JiebaDict dict = JiebaDict::load(file.path());
  EXPECT_EQ(dict.freq("肺炎"), 7);
  EXPECT_EQ(dict.freq("肺"), 3);
  EXPECT_EQ(dict.total(), 20u);
}

TEST(JiebaDict, RejectsWhatJiebaRejects) {
  const auto message = [](const std::string& content) {
    const DictFile file(content);
    try {
      JiebaDict::load(file.path());
    } catch (const TextError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("肺 3\n炎\n").find("line 2"), std::string::npos);
  EXPECT_NE(message("肺 3\n\n炎 2\n").find("line 2"), std::string::npos);  // an empty line
  EXPECT_NE(message("肺 x\n").find("line 1"), std::string::npos);
  EXPECT_NE(message("肺 -3\n").find("line 1"), std::string::npos);
  EXPECT_NE(message("肺 4294967296\n").find("2^32"), std::string::npos);
  EXPECT_EQ(message("肺 4294967295\n"), "no error");
  EXPECT_NE(message("\xe8\x82 3\n").find("invalid UTF-8"), std::string::npos);
  EXPECT_NE(message("肺 0\n").find("positive"), std::string::npos);
  EXPECT_NE(message("").find("positive"), std::string::npos);
  EXPECT_THROW(JiebaDict::load("/nonexistent/dict.txt"), TextError);
}

TEST(JiebaSegmenter, MaximumProbabilityRoute) {
  const DictFile file(kDict);
  const JiebaDict dict = JiebaDict::load(file.path());
  const JiebaSegmenter seg(dict, /*hmm=*/false);
  EXPECT_EQ(seg.segment("研究生命起源"), (Tokens{"研究", "生命", "起源"}));
  // Characters outside the dictionary fall back to themselves.
  EXPECT_EQ(seg.segment("研究肺炎"), (Tokens{"研究", "肺", "炎"}));

  // With 研究生 frequent, 研究生 命 (1000*10) beats 研究 生命 (100*80).
  const DictFile file2(std::string(kDict) + "研究生 1000 n\n");
  const JiebaDict dict2 = JiebaDict::load(file2.path());
  EXPECT_EQ(JiebaSegmenter(dict2, /*hmm=*/false).segment("研究生命起源"), (Tokens{"研究生", "命", "起源"}));
}

TEST(JiebaSegmenter, AsciiRunsAndNonHanCharacters) {
  const DictFile file(kDict);
  const JiebaDict dict = JiebaDict::load(file.path());
  const JiebaSegmenter seg(dict, /*hmm=*/false);
  // Single ASCII letters/digits of the route gather into one token...
  EXPECT_EQ(seg.segment("ab研究3x"), (Tokens{"ab", "研究", "3x"}));
  // ...but a dictionary word with ASCII in it stays a word of its own.
  EXPECT_EQ(seg.segment("aCT研究"), (Tokens{"a", "CT", "研究"}));
  // + # & . _ % - belong to the block but are never letters: they split runs.
  EXPECT_EQ(seg.segment("3.5cm"), (Tokens{"3", ".", "5cm"}));
  EXPECT_EQ(seg.segment("x-y_z%"), (Tokens{"x", "-", "y", "_", "z", "%"}));
  // Outside the blocks every character is a token, "\r\n" one token.
  EXPECT_EQ(seg.segment("研究，生命\r\n起源 ！"), (Tokens{"研究", "，", "生命", "\r\n", "起源", " ", "！"}));
  EXPECT_EQ(seg.segment("\r\r\n\n"), (Tokens{"\r", "\r\n", "\n"}));
  EXPECT_EQ(seg.segment("ＣＴ"), (Tokens{"Ｃ", "Ｔ"}));
  // jieba's Han range ends at U+9FD5; U+9FD6 is outside it.
  EXPECT_EQ(seg.segment("研\u9fd5\u9fd6"), (Tokens{"研", "\u9fd5", "\u9fd6"}));
  EXPECT_EQ(seg.segment(""), Tokens{});
}

TEST(JiebaSegmenter, InvalidUtf8BecomesByteTokens) {
  const DictFile file(kDict);
  const JiebaDict dict = JiebaDict::load(file.path());
  const JiebaSegmenter seg(dict, /*hmm=*/false);
  EXPECT_EQ(seg.segment("研\xff究"), (Tokens{"研", "\xff", "究"}));
  EXPECT_EQ(seg.segment("研究\xe7\x94"), (Tokens{"研究", "\xe7", "\x94"}));
}

TEST(JiebaSegmenter, SharedDictionaryAcrossThreads) {
  const DictFile file(kDict);
  const JiebaDict dict = JiebaDict::load(file.path());
  const auto seg = make_segmenter("jieba-nohmm", &dict);
  expect_same_tokens_across_threads(*seg, "研究生命起源，ab研究3x\r\n");
}

}  // namespace
}  // namespace chatradio::text
