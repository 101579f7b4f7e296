// Checking that test output is whole UTF-8 characters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace chatradio::testing {

// Whether `s` is a whole number of UTF-8 characters: lead bytes C2..F4 with
// their continuation bytes. With `strict`, also well-formed (no surrogates,
// no overlongs, nothing above U+10FFFF), as a stream delta must be.
inline bool is_utf8(std::string_view s, bool strict) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    if (strict) {
      const auto b1 = static_cast<uint8_t>(n > 1 ? s[i + 1] : 0);
      if ((c == 0xE0 && b1 < 0xA0) || (c == 0xED && b1 >= 0xA0) || (c == 0xF0 && b1 < 0x90) ||
          (c == 0xF4 && b1 >= 0x90)) {
        return false;
      }
    }
    i += n;
  }
  return true;
}

}  // namespace chatradio::testing
