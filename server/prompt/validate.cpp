#include "server/prompt/validate.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

namespace chatradio::prompt {
namespace {

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
// U+10FFFF. Decodes the character at `pos`, advancing it; returns false (pos
// unchanged) on an invalid or truncated sequence.
bool decode_utf8(std::string_view s, size_t& pos, char32_t& out) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    out = b0;
    pos += 1;
    return true;
  }
  int n;
  char32_t c;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, c = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, c = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return false;  // continuation byte, C0/C1 overlong lead, or F5..FF
  }
  if (pos + n > s.size()) return false;
  for (int k = 1; k < n; ++k) {
    const unsigned char b = byte(pos + k);
    if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return false;
    c = (c << 6) | (b & 0x3F);
  }
  out = c;
  pos += n;
  return true;
}

bool is_control(char32_t c) {
  if (c == U'\t' || c == U'\n' || c == U'\r') return false;
  return c < 0x20 || (c >= 0x7F && c <= 0x9F);
}

std::string codepoint_name(char32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c));
  return buf;
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF)      // CJK Unified Ideographs
         || (c >= 0x3400 && c <= 0x4DBF)   // Extension A
         || (c >= 0x20000 && c <= 0x3134F)  // Extensions B-G
         || (c >= 0xF900 && c <= 0xFAFF)   // Compatibility Ideographs
         || (c >= 0x3000 && c <= 0x303F)   // CJK Symbols and Punctuation (。、「」)
         || (c >= 0xFF00 && c <= 0xFFEF);  // Full-width forms (，：（）)
}

// The shared scan: first invalid byte or control character, and whether any
// non-space character was seen.
std::optional<std::string> scan(std::string_view name, std::string_view text, bool* any_content) {
  bool content = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t at = pos;
    char32_t c;
    if (!decode_utf8(text, pos, c)) {
      return std::string(name) + " is not valid UTF-8 at byte " + std::to_string(at);
    }
    if (is_control(c)) {
      return std::string(name) + " contains control character " + codepoint_name(c) + " at byte " +
             std::to_string(at);
    }
    if (!is_space(c)) content = true;
  }
  if (any_content) *any_content = content;
  return std::nullopt;
}

}  // namespace

bool is_space(char32_t c) {
  switch (c) {
    case U' ': case U'\t': case U'\n': case U'\r': case U'\v': case U'\f':
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F:
    case 0x205F: case 0x3000: case 0xFEFF:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200B;  // en quad .. zero-width space
  }
}

bool is_blank(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t c;
    if (!decode_utf8(text, pos, c)) return false;
    if (!is_space(c)) return false;
  }
  return true;
}

std::string_view trim_space(std::string_view text) {
  size_t begin = text.size(), end = 0, pos = 0;
  while (pos < text.size()) {
    const size_t at = pos;
    char32_t c;
    if (!decode_utf8(text, pos, c)) {
      pos = at + 1;  // an invalid byte is content
      c = 0xFFFD;
    }
    if (!is_space(c)) {
      begin = std::min(begin, at);
      end = pos;
    }
  }
  return begin < end ? text.substr(begin, end - begin) : std::string_view();
}

std::optional<std::string> check_text(std::string_view name, std::string_view text) {
  return scan(name, text, nullptr);
}

std::optional<std::string> check_findings(std::string_view findings, const FindingsLimits& limits) {
  // Size first: it is O(1) and bounds the work of everything after it.
  if (findings.size() > limits.max_bytes) {
    return "findings is " + std::to_string(findings.size()) + " bytes; the limit is " +
           std::to_string(limits.max_bytes) + " bytes";
  }
  bool content = false;
  if (auto err = scan("findings", findings, &content)) return err;
  if (!content) return std::string("findings is empty");
  return std::nullopt;
}

Language detect_language(std::string_view text) {
  size_t cjk = 0, latin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t c;
    if (!decode_utf8(text, pos, c)) {
      ++pos;  // detection must not fail; check_findings() reports the byte
      continue;
    }
    if (is_cjk(c)) {
      ++cjk;
    } else if ((c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z')) {
      ++latin;
    }
  }
  // cjk / (cjk + latin) >= 0.2, in integers.
  return cjk > 0 && 5 * cjk >= cjk + latin ? Language::kZh : Language::kEn;
}

std::optional<std::string> check_context(int prompt_tokens, int max_tokens, int context) {
  if (max_tokens < 1) return "max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")";
  if (max_tokens >= context) {
    return "max_tokens " + std::to_string(max_tokens) + " leaves no room for input in the model context of " +
           std::to_string(context) + " tokens";
  }
  // 64-bit sum: both come from clients.
  if (static_cast<int64_t>(prompt_tokens) + max_tokens <= context) return std::nullopt;
  return "input is " + std::to_string(prompt_tokens) + " tokens; with max_tokens " + std::to_string(max_tokens) +
         " it exceeds the model context of " + std::to_string(context) + " tokens (at most " +
         std::to_string(context - max_tokens) + " input tokens)";
}

}  // namespace chatradio::prompt
