// UTF-8 decoding and the character classes the segmenters and ROUGE agree on
// (docs/rouge.md, "Character classes"). No ICU: the tables cover what Chinese
// and English radiology reports contain (ASCII, Latin-1, CJK and its
// punctuation, fullwidth forms, general punctuation, symbols, emoji); letters
// and marks of other scripts count as word characters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace chatradio::text {

// One decoded character. An invalid sequence (stray continuation byte,
// truncated or overlong sequence, surrogate, beyond U+10FFFF) decodes as one
// byte with valid == false, so a scan always advances and never reads past the
// end.
struct Utf8Char {
  char32_t cp = 0;   // U+FFFD when !valid
  uint32_t len = 1;  // bytes consumed, 1..4
  bool valid = true;
};

// The character starting at s[pos]; pos < s.size(). Inline: every segmenter
// and the dictionary loader call it once per character.
inline Utf8Char decode_utf8(std::string_view s, size_t pos) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) return {b0, 1, true};
  constexpr Utf8Char kInvalid{0xFFFD, 1, false};
  size_t n = 0;
  char32_t cp = 0;
  if (b0 >= 0xC2 && b0 < 0xE0) {
    n = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 < 0xF0) {
    n = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 < 0xF5) {
    n = 4;
    cp = b0 & 0x07;
  } else {
    return kInvalid;  // continuation byte, C0/C1 (overlong 2-byte) or F5..FF
  }
  if (pos + n > s.size()) return kInvalid;
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<uint8_t>(s[pos + k]);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  // Overlong 3- and 4-byte forms, surrogates and values past U+10FFFF.
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return kInvalid;
  }
  return {cp, static_cast<uint32_t>(n), true};
}

// Appends the UTF-8 encoding of a valid code point.
void append_utf8(std::string& dst, char32_t cp);

// How a character takes part in word segmentation.
enum class CharClass : uint8_t {
  kSeparator,   // whitespace, controls, punctuation, symbols: ends a word, never a token
  kAsciiAlnum,  // [A-Za-z0-9] (fullwidth forms are folded to these first)
  kWord,        // letters and digits of alphabetic scripts: form words with ASCII
  kIdeograph,   // Han, kana, hangul, Yi, ...: each is a token of its own
  kMark,        // combining marks: belong to the word they follow
  kIgnorable,   // soft hyphen, joiners, variation selectors: neither split nor count
};

CharClass classify(char32_t cp);

// Fullwidth ASCII letters and digits (U+FF10-FF19, U+FF21-FF3A, U+FF41-FF5A)
// become their ASCII forms; everything else is returned unchanged. Chinese
// text mixes the two widths for the same "CT", "5".
char32_t fold_fullwidth(char32_t cp);

inline bool is_ascii_alnum(char32_t cp) {
  return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
}

inline char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace chatradio::text
