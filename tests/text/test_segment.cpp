// The char and english segmenters, the character classes behind them,
// mostly_cjk and is_word_token, on hand-written text.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/text/segment.h"
#include "server/text/utf8.h"

namespace chatradio::text {
namespace {

using Tokens = std::vector<std::string>;

TEST(Utf8, DecodesAndRejectsMalformedSequences) {
  EXPECT_EQ(decode_utf8("a", 0).cp, U'a');
  const Utf8Char han = decode_utf8("肺", 0);
  EXPECT_TRUE(han.valid);
  EXPECT_EQ(han.cp, U'肺');
  EXPECT_EQ(han.len, 3u);
  EXPECT_EQ(decode_utf8("\U00020000", 0).cp, U'\U00020000');
  // Each malformed sequence is one invalid byte, so a scan always advances.
  for (const std::string bad : {"\xff", "\x80", "\xc0\x80", "\xe4\xbd", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                "\xe0\x80\x80", "\xf0\x80\x80\x80"}) {
    const Utf8Char c = decode_utf8(bad, 0);
    EXPECT_FALSE(c.valid) << bad.size();
    EXPECT_EQ(c.len, 1u);
  }
  std::string s;
  for (const char32_t cp : {U'a', U'é', U'肺', U'\U0001F600'}) append_utf8(s, cp);
  EXPECT_EQ(s, "aé肺\U0001F600");
}

TEST(Utf8, ClassifiesTheCharactersOfReports) {
  EXPECT_EQ(classify(U'a'), CharClass::kAsciiAlnum);
  EXPECT_EQ(classify(U'7'), CharClass::kAsciiAlnum);
  EXPECT_EQ(classify(U'-'), CharClass::kSeparator);
  EXPECT_EQ(classify(U'肺'), CharClass::kIdeograph);
  EXPECT_EQ(classify(U'〇'), CharClass::kIdeograph);
  EXPECT_EQ(classify(U'\U00020000'), CharClass::kIdeograph);
  EXPECT_EQ(classify(U'カ'), CharClass::kIdeograph);
  EXPECT_EQ(classify(U'한'), CharClass::kIdeograph);
  for (const char32_t sep : {U'，', U'。', U'、', U'（', U'）', U'；', U'：', U'“', U'”', U'·', U'×', U'℃', U'①',
                             U'\u3000', U'\u00a0', U'\U0001F600', U'\ufffd', U'・'}) {
    EXPECT_EQ(classify(sep), CharClass::kSeparator) << static_cast<uint32_t>(sep);
  }
  EXPECT_EQ(classify(U'é'), CharClass::kWord);
  EXPECT_EQ(classify(U'α'), CharClass::kWord);
  EXPECT_EQ(classify(U'µ'), CharClass::kWord);
  EXPECT_EQ(classify(U'\u0301'), CharClass::kMark);
  EXPECT_EQ(classify(U'\u00ad'), CharClass::kIgnorable);
  EXPECT_EQ(classify(U'\ufe0f'), CharClass::kIgnorable);
  EXPECT_EQ(fold_fullwidth(U'Ｃ'), U'C');
  EXPECT_EQ(fold_fullwidth(U'５'), U'5');
  EXPECT_EQ(fold_fullwidth(U'ｚ'), U'z');
  EXPECT_EQ(fold_fullwidth(U'，'), U'，');
}

TEST(CharSegmenter, MixedChineseEnglishDigitsPunctuation) {
  const CharSegmenter seg;
  EXPECT_EQ(seg.segment("CT示：右肺上叶3.5cm结节（COVID-19）。"),
            (Tokens{"ct", "示", "右", "肺", "上", "叶", "3", "5cm", "结", "节", "covid", "19"}));
  EXPECT_EQ(seg.segment("双肺纹理清晰，未见异常密度影。"),
            (Tokens{"双", "肺", "纹", "理", "清", "晰", "未", "见", "异", "常", "密", "度", "影"}));
  EXPECT_EQ(seg.segment("ＣＴ１２示"), (Tokens{"ct12", "示"}));  // fullwidth folded, one run
  EXPECT_EQ(seg.segment("体温37.5℃，①右肺"), (Tokens{"体", "温", "37", "5", "右", "肺"}));
  EXPECT_EQ(seg.segment("Café α-fetoprotein"), (Tokens{"café", "α", "fetoprotein"}));
  EXPECT_EQ(seg.segment("cafe\u0301 \u0301x"), (Tokens{"cafe\u0301", "x"}));  // a mark joins its letter only
  EXPECT_EQ(seg.segment("co\u00adoperate"), (Tokens{"cooperate"}));
  EXPECT_EQ(seg.segment("カタカナ한국\U00020000〇"), (Tokens{"カ", "タ", "カ", "ナ", "한", "국", "\U00020000", "〇"}));
  EXPECT_EQ(seg.segment("肺\U0001F600炎"), (Tokens{"肺", "炎"}));
  EXPECT_EQ(seg.segment(" \t\r\n\u3000。，!?"), Tokens{});
  EXPECT_EQ(seg.segment(""), Tokens{});
}

TEST(CharSegmenter, InvalidUtf8SeparatesAndNeverThrows) {
  const CharSegmenter seg;
  EXPECT_EQ(seg.segment("ab\xff" "cd"), (Tokens{"ab", "cd"}));
  EXPECT_EQ(seg.segment("肺\xe4\xbd"), (Tokens{"肺"}));
  EXPECT_EQ(seg.segment("\x80\x80"), Tokens{});
  std::string noise;
  for (int i = 0; i < 4096; ++i) noise += static_cast<char>((i * 131 + 7) & 0xFF);
  EXPECT_NO_THROW(seg.segment(noise));
}

TEST(EnglishSegmenter, LikeRougeScoreTokenize) {
  const EnglishSegmenter seg;
  EXPECT_EQ(seg.segment("The quick-brown FOX, 3.5cm!"), (Tokens{"the", "quick", "brown", "fox", "3", "5cm"}));
  EXPECT_EQ(seg.segment("No acute cardiopulmonary abnormality."),
            (Tokens{"no", "acute", "cardiopulmonary", "abnormality"}));
  EXPECT_EQ(seg.segment("XXXX-year-old, T11/T12"), (Tokens{"xxxx", "year", "old", "t11", "t12"}));
  EXPECT_EQ(seg.segment("café"), (Tokens{"caf"}));  // non-ASCII letters separate, as in rouge-score
  EXPECT_EQ(seg.segment("肺 CT"), (Tokens{"ct"}));
  EXPECT_EQ(seg.segment("ＣＴ"), Tokens{});  // rouge-score drops fullwidth too
  // The two characters Python's lower() maps into ASCII.
  EXPECT_EQ(seg.segment("5\u212a"), (Tokens{"5k"}));
  EXPECT_EQ(seg.segment("\u0130stanbul"), (Tokens{"i", "stanbul"}));
  EXPECT_EQ(seg.segment("ab\xff" "cd"), (Tokens{"ab", "cd"}));
  EXPECT_EQ(seg.segment(""), Tokens{});
}

TEST(Segmenters, FactoryAndNames) {
  EXPECT_EQ(make_segmenter("char")->name(), "char");
  EXPECT_EQ(make_segmenter("english")->name(), "english");
  EXPECT_THROW(make_segmenter("jieba"), TextError);  // no dictionary
  EXPECT_THROW(make_segmenter("spacy"), TextError);
}

TEST(MostlyCjk, PicksBySharesOfLetters) {
  EXPECT_TRUE(mostly_cjk("CT示双肺磨玻璃影"));
  EXPECT_TRUE(mostly_cjk("右肺上叶炎性病变（符合病毒性肺炎）"));
  EXPECT_FALSE(mostly_cjk("肺 CT"));   // 1 ideograph, 2 letters
  EXPECT_TRUE(mostly_cjk("肺炎 CT"));  // 2 and 2: a tie counts as CJK
  EXPECT_FALSE(mostly_cjk("The lung (肺) is clear"));
  EXPECT_FALSE(mostly_cjk("No acute disease."));
  EXPECT_FALSE(mostly_cjk(""));
  EXPECT_FALSE(mostly_cjk("12345 。，"));  // digits and punctuation do not count
  EXPECT_TRUE(mostly_cjk("肺 12345"));
  EXPECT_TRUE(mostly_cjk("ab肺炎"));
  EXPECT_FALSE(mostly_cjk("abc肺炎"));
}

TEST(IsWordToken, LettersDigitsIdeographs) {
  for (const char* word : {"肺", "ct", "CT", "5", "５", "é", "3.5", "C++", "カ"}) EXPECT_TRUE(is_word_token(word)) << word;
  for (const char* other : {"", " ", "\r\n", "，", "。", ".", "%", "-", "（", "\u3000", "\xff", "℃", "\u0301"}) {
    EXPECT_FALSE(is_word_token(other)) << other;
  }
}

}  // namespace
}  // namespace chatradio::text
