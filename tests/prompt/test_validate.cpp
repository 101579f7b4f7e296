// Request validation: the exact message for each kind of bad findings, the
// context-length message, and zh/en detection.
#include <gtest/gtest.h>

#include <string>

#include "server/prompt/validate.h"

namespace chatradio::prompt {
namespace {

using namespace std::string_literals;

std::string err(std::string_view s, const FindingsLimits& limits = {}) {
  const auto e = check_findings(s, limits);
  return e ? *e : "(ok)";
}

TEST(CheckFindings, AcceptsOrdinaryReports) {
  EXPECT_EQ(err("No acute cardiopulmonary abnormality."), "(ok)");
  EXPECT_EQ(err("胸廓对称，纵隔居中。\r\n双肺纹理清晰。\t"), "(ok)");
  EXPECT_EQ(err("Nodule 12 mm × 10 mm, T2WI hyperintense; 4 mm → 6 mm. 😀"), "(ok)");
}

TEST(CheckFindings, Empty) {
  EXPECT_EQ(err(""), "findings is empty");
  EXPECT_EQ(err(" \t\r\n "), "findings is empty");
  EXPECT_EQ(err("\u3000\u00A0\u200B\uFEFF"), "findings is empty") << "Unicode spaces count as blank";
}

TEST(CheckFindings, TooLong) {
  EXPECT_EQ(err(std::string(32 * 1024, 'a')), "(ok)");
  EXPECT_EQ(err(std::string(32 * 1024 + 1, 'a')), "findings is 32769 bytes; the limit is 32768 bytes");
  EXPECT_EQ(err("abcdef", FindingsLimits{5}), "findings is 6 bytes; the limit is 5 bytes");
  // Size is checked first, so even bad bytes get the size message.
  EXPECT_EQ(err(std::string(10, '\xFF'), FindingsLimits{5}), "findings is 10 bytes; the limit is 5 bytes");
}

TEST(CheckFindings, InvalidUtf8NamesTheByte) {
  EXPECT_EQ(err("ab\xFF"), "findings is not valid UTF-8 at byte 2");
  EXPECT_EQ(err("\x80"), "findings is not valid UTF-8 at byte 0") << "stray continuation";
  EXPECT_EQ(err("肺\xC3"), "findings is not valid UTF-8 at byte 3") << "truncated";
  EXPECT_EQ(err("a\xE8\x82x"), "findings is not valid UTF-8 at byte 1") << "bad continuation";
  EXPECT_EQ(err("\xC0\xAF"), "findings is not valid UTF-8 at byte 0") << "overlong '/'";
  EXPECT_EQ(err("x\xE0\x80\xAF"), "findings is not valid UTF-8 at byte 1") << "overlong, 3 bytes";
  EXPECT_EQ(err("\xED\xA0\x80"), "findings is not valid UTF-8 at byte 0") << "surrogate";
  EXPECT_EQ(err("\xF4\x90\x80\x80"), "findings is not valid UTF-8 at byte 0") << "above U+10FFFF";
  EXPECT_EQ(err("\xF0\x9F\x98\x80\xF5"), "findings is not valid UTF-8 at byte 4");
}

TEST(CheckFindings, ControlCharactersNameCodePointAndByte) {
  EXPECT_EQ(err("a\x07" "b"), "findings contains control character U+0007 at byte 1");
  EXPECT_EQ(err("ab\0c"s), "findings contains control character U+0000 at byte 2");
  EXPECT_EQ(err("肺\x1B[0m"), "findings contains control character U+001B at byte 3");
  EXPECT_EQ(err("x\x7F"), "findings contains control character U+007F at byte 1");
  EXPECT_EQ(err("x\xC2\x85"), "findings contains control character U+0085 at byte 1") << "C1";
  EXPECT_EQ(err("\v"), "findings contains control character U+000B at byte 0");
  EXPECT_EQ(err("\f"), "findings contains control character U+000C at byte 0");
}

TEST(CheckText, NamesTheField) {
  EXPECT_EQ(check_text("instruction", "ok\n"), std::nullopt);
  EXPECT_EQ(*check_text("instruction", "a\xFF"), "instruction is not valid UTF-8 at byte 1");
}

TEST(Blank, TrimAndBlank) {
  EXPECT_TRUE(is_blank(""));
  EXPECT_TRUE(is_blank(" \n\u3000"));
  EXPECT_FALSE(is_blank(" a "));
  EXPECT_FALSE(is_blank("\xFF")) << "invalid bytes are content";
  EXPECT_EQ(trim_space("\u3000 双肺 \n"), "双肺");
  EXPECT_EQ(trim_space(" \xFF "), "\xFF");
  EXPECT_EQ(trim_space("  "), "");
}

TEST(CheckContext, ExactMessages) {
  EXPECT_EQ(check_context(3840, 256, 4096), std::nullopt);
  EXPECT_EQ(*check_context(4000, 256, 4096),
            "input is 4000 tokens; with max_tokens 256 it exceeds the model context of 4096 tokens "
            "(at most 3840 input tokens)");
  EXPECT_EQ(*check_context(3841, 256, 4096),
            "input is 3841 tokens; with max_tokens 256 it exceeds the model context of 4096 tokens "
            "(at most 3840 input tokens)");
  EXPECT_EQ(*check_context(10, 0, 4096), "max_tokens must be at least 1 (got 0)");
  EXPECT_EQ(*check_context(10, 4096, 4096),
            "max_tokens 4096 leaves no room for input in the model context of 4096 tokens");
  EXPECT_EQ(*check_context(2147483647, 256, 4096),
            "input is 2147483647 tokens; with max_tokens 256 it exceeds the model context of 4096 tokens "
            "(at most 3840 input tokens)")
      << "no overflow";
}

TEST(DetectLanguage, ByShareOfCjk) {
  EXPECT_EQ(detect_language("No acute cardiopulmonary abnormality."), Language::kEn);
  EXPECT_EQ(detect_language("右肺上叶见结节，大小约12mm×10mm，T2WI呈高信号，DWI未见弥散受限。"), Language::kZh);
  EXPECT_EQ(detect_language("CT: 肺炎"), Language::kZh) << "2 CJK of 4 letters";
  EXPECT_EQ(detect_language("Right upper lobe nodule (右肺)."), Language::kEn) << "2 of 23 letters";
  EXPECT_EQ(detect_language("12 mm, 3 cm"), Language::kEn) << "letters but no CJK";
  EXPECT_EQ(detect_language("1. 2. 3."), Language::kEn) << "no letters at all";
  EXPECT_EQ(detect_language("，。"), Language::kZh) << "CJK punctuation counts";
  EXPECT_EQ(detect_language("\xFF\xFE 双肺"), Language::kZh) << "invalid bytes are skipped";
  // Boundary: 1 CJK in 5 letters is 20%.
  EXPECT_EQ(detect_language("肺abcd"), Language::kZh);
  EXPECT_EQ(detect_language("肺abcde"), Language::kEn);
}

}  // namespace
}  // namespace chatradio::prompt
