#include "server/text/utf8.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace chatradio::text {

void append_utf8(std::string& dst, char32_t cp) {
  if (cp < 0x80) {
    dst += static_cast<char>(cp);
  } else if (cp < 0x800) {
    dst += static_cast<char>(0xC0 | (cp >> 6));
    dst += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    dst += static_cast<char>(0xE0 | (cp >> 12));
    dst += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    dst += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    dst += static_cast<char>(0xF0 | (cp >> 18));
    dst += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    dst += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    dst += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

char32_t fold_fullwidth(char32_t cp) {
  if ((cp >= 0xFF10 && cp <= 0xFF19) || (cp >= 0xFF21 && cp <= 0xFF3A) || (cp >= 0xFF41 && cp <= 0xFF5A)) {
    return cp - 0xFEE0;
  }
  return cp;
}

namespace {

struct Range {
  char32_t lo, hi;
  CharClass cls;
};

// Non-ASCII ranges that are not kWord, sorted and disjoint; anything not
// listed (Latin letters with diacritics, Greek, Cyrillic, unassigned, ...) is
// kWord. Ranges follow Unicode blocks, with the exceptions inside a block
// spelled out where they matter for CJK text (e.g. 〇 U+3007 is a numeral,
// ・ U+30FB is punctuation).
constexpr Range kRanges[] = {
    {0x0080, 0x00A9, CharClass::kSeparator},  // C1 controls, NBSP, ¡¢£¤¥¦§¨©
    {0x00AB, 0x00AC, CharClass::kSeparator},  // « ¬
    {0x00AD, 0x00AD, CharClass::kIgnorable},  // soft hyphen
    {0x00AE, 0x00B1, CharClass::kSeparator},  // ® ¯ ° ±
    {0x00B4, 0x00B4, CharClass::kSeparator},  // ´
    {0x00B6, 0x00B8, CharClass::kSeparator},  // ¶ · ¸
    {0x00BB, 0x00BB, CharClass::kSeparator},  // »
    {0x00BF, 0x00BF, CharClass::kSeparator},  // ¿
    {0x00D7, 0x00D7, CharClass::kSeparator},  // ×
    {0x00F7, 0x00F7, CharClass::kSeparator},  // ÷
    {0x0300, 0x036F, CharClass::kMark},       // combining diacritical marks
    {0x037E, 0x037E, CharClass::kSeparator},  // Greek question mark
    {0x0387, 0x0387, CharClass::kSeparator},  // Greek ano teleia
    {0x1100, 0x11FF, CharClass::kIdeograph},  // Hangul jamo
    {0x1680, 0x1680, CharClass::kSeparator},  // Ogham space
    {0x180E, 0x180E, CharClass::kSeparator},  // Mongolian vowel separator
    {0x1AB0, 0x1AFF, CharClass::kMark},       // combining marks extended
    {0x1DC0, 0x1DFF, CharClass::kMark},       // combining marks supplement
    {0x2000, 0x200B, CharClass::kSeparator},  // spaces, zero width space
    {0x200C, 0x200D, CharClass::kIgnorable},  // ZWNJ, ZWJ
    {0x200E, 0x205F, CharClass::kSeparator},  // marks, dashes, quotes, bullets, ‰ ′ ″, spaces
    {0x2060, 0x2060, CharClass::kIgnorable},  // word joiner
    {0x2061, 0x206F, CharClass::kSeparator},  // invisible operators, format controls
    {0x20A0, 0x20CF, CharClass::kSeparator},  // currency symbols
    {0x20D0, 0x20FF, CharClass::kMark},       // combining marks for symbols
    {0x2100, 0x214F, CharClass::kSeparator},  // letterlike symbols: ℃ № ™
    {0x2190, 0x2BFF, CharClass::kSeparator},  // arrows, math, technical, ①②, box drawing, shapes, dingbats
    {0x2E00, 0x2E7F, CharClass::kSeparator},  // supplemental punctuation
    {0x2E80, 0x2FDF, CharClass::kIdeograph},  // CJK radicals, Kangxi radicals
    {0x2FF0, 0x2FFF, CharClass::kSeparator},  // ideographic description characters
    {0x3000, 0x3004, CharClass::kSeparator},  // ideographic space, 、。〃〄
    {0x3005, 0x3007, CharClass::kIdeograph},  // 々 〆 〇
    {0x3008, 0x3020, CharClass::kSeparator},  // 〈〉《》「」『』【】〒〓〔〕… 〜
    {0x3021, 0x302F, CharClass::kIdeograph},  // Hangzhou numerals, tone marks
    {0x3030, 0x3030, CharClass::kSeparator},  // 〰
    {0x3031, 0x3035, CharClass::kIdeograph},  // kana repeat marks
    {0x3036, 0x3037, CharClass::kSeparator},  // 〶 〷
    {0x3038, 0x303C, CharClass::kIdeograph},  // 〸〹〺 〻 〼
    {0x303D, 0x303F, CharClass::kSeparator},  // 〽 〾 〿
    {0x3040, 0x309A, CharClass::kIdeograph},  // hiragana
    {0x309B, 0x309C, CharClass::kSeparator},  // ゛ ゜ (spacing sound marks)
    {0x309D, 0x309F, CharClass::kIdeograph},  // hiragana iteration marks
    {0x30A0, 0x30A0, CharClass::kSeparator},  // ゠
    {0x30A1, 0x30FA, CharClass::kIdeograph},  // katakana
    {0x30FB, 0x30FB, CharClass::kSeparator},  // ・
    {0x30FC, 0x4DBF, CharClass::kIdeograph},  // ー, bopomofo, hangul compat jamo, kanbun, strokes, enclosed CJK, CJK compat, ext A
    {0x4DC0, 0x4DFF, CharClass::kSeparator},  // Yijing hexagram symbols
    {0x4E00, 0xA4CF, CharClass::kIdeograph},  // CJK unified ideographs, Yi
    {0xA960, 0xA97F, CharClass::kIdeograph},  // Hangul jamo extended-A
    {0xAC00, 0xD7FF, CharClass::kIdeograph},  // Hangul syllables, jamo extended-B
    {0xE000, 0xF8FF, CharClass::kSeparator},  // private use
    {0xF900, 0xFAFF, CharClass::kIdeograph},  // CJK compatibility ideographs
    {0xFE00, 0xFE0F, CharClass::kIgnorable},  // variation selectors
    {0xFE10, 0xFE1F, CharClass::kSeparator},  // vertical forms
    {0xFE20, 0xFE2F, CharClass::kMark},       // combining half marks
    {0xFE30, 0xFE6F, CharClass::kSeparator},  // CJK compatibility forms, small form variants
    {0xFEFF, 0xFEFF, CharClass::kIgnorable},  // BOM / zero width no-break space
    {0xFF00, 0xFF0F, CharClass::kSeparator},  // fullwidth ！＂＃ ... ／
    {0xFF10, 0xFF19, CharClass::kAsciiAlnum},  // fullwidth digits (folded)
    {0xFF1A, 0xFF20, CharClass::kSeparator},  // ：；＜＝＞？＠
    {0xFF21, 0xFF3A, CharClass::kAsciiAlnum},  // fullwidth A-Z (folded)
    {0xFF3B, 0xFF40, CharClass::kSeparator},  // ［＼］＾＿｀
    {0xFF41, 0xFF5A, CharClass::kAsciiAlnum},  // fullwidth a-z (folded)
    {0xFF5B, 0xFF65, CharClass::kSeparator},  // ｛｜｝～ ｟｠ ｡｢｣､･
    {0xFF66, 0xFFDC, CharClass::kIdeograph},  // halfwidth katakana and hangul
    {0xFFE0, 0xFFFF, CharClass::kSeparator},  // fullwidth ￠￡￥, specials, U+FFFD
    {0x1AFF0, 0x1B2FF, CharClass::kIdeograph},  // kana extended/supplement, Nushu
    {0x1F000, 0x1FBFF, CharClass::kSeparator},  // tiles, cards, enclosed supplements, emoji, symbols
    {0x20000, 0x3FFFF, CharClass::kIdeograph},  // CJK extensions B-H, compatibility supplement
    {0xE0000, 0xE007F, CharClass::kIgnorable},  // tags
    {0xE0100, 0xE01EF, CharClass::kIgnorable},  // variation selectors supplement
    {0xF0000, 0x10FFFF, CharClass::kSeparator},  // supplementary private use
};

constexpr bool sorted_and_disjoint() {
  for (size_t i = 0; i + 1 < std::size(kRanges); ++i) {
    if (kRanges[i].lo > kRanges[i].hi || kRanges[i].hi >= kRanges[i + 1].lo) return false;
  }
  return true;
}
static_assert(sorted_and_disjoint(), "kRanges must be sorted and disjoint for the binary search");

}  // namespace

CharClass classify(char32_t cp) {
  if (cp < 0x80) return is_ascii_alnum(cp) ? CharClass::kAsciiAlnum : CharClass::kSeparator;
  if (cp >= 0x4E00 && cp <= 0x9FFF) return CharClass::kIdeograph;  // the common case, no search
  // The last range starting at or below cp.
  const auto* it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                                    [](char32_t c, const Range& r) { return c < r.lo; });
  if (it == std::begin(kRanges)) return CharClass::kWord;
  --it;
  return cp <= it->hi ? it->cls : CharClass::kWord;
}

}  // namespace chatradio::text
