// The UTF-8 decoders that read client text: text::decode_utf8 (segmenters,
// ROUGE, the dictionary loader, parse_request's per-field check) and the
// strict decoder behind prompt/validate.h (check_text, check_findings,
// is_blank, trim_space, detect_language). Both must agree with the reference
// decoder below at every byte offset (valid <=> valid, equal code points and
// lengths; a mismatch traps): it decodes by the lead byte's length alone and
// accepts exactly when the value is a Unicode scalar value whose canonical
// (shortest) encoding is those bytes, a formulation unlike either decoder's.
// append_utf8 must re-encode every valid character to its own bytes.
//
// fuzz-seed-bytes: Heart size normal. 双肺纹理清晰，未见实变。 Ｔ２ＷＩ 𝐀 😀 ä
// fuzz-seed-bytes: overlong \xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf; surrogate \xed\xa0\x80; big \xf4\x90\x80\x80 \xf8\x88\x80\x80\x80
// fuzz-seed-bytes: truncated \xe5\x8f tail \xf0\x9f\x98
// fuzz-seed-bytes: \xc2\x85\xc2\xa0\xe3\x80\x80\xef\xbb\xbf\x07\x7f\xc2\x9f\t\r\n
// fuzz-link: chatradio_prompt chatradio_text
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

#include "server/prompt/validate.h"
#include "server/text/utf8.h"

namespace {

struct Ref {
  bool valid;
  char32_t cp;
  uint32_t len;
};

// Canonical encoding of a scalar value, written independently of append_utf8.
std::string encode(char32_t cp) {
  std::string out;
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  const int n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  static constexpr unsigned char kLead[] = {0, 0, 0xC0, 0xE0, 0xF0};
  out.resize(n);
  for (int k = n - 1; k > 0; --k) {
    out[k] = static_cast<char>(0x80 | (cp & 0x3F));
    cp >>= 6;
  }
  out[0] = static_cast<char>(kLead[n] | cp);
  return out;
}

Ref reference(std::string_view s, size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  int n = 0;
  while (n < 8 && (b0 & (0x80 >> n))) ++n;  // leading one bits
  if (n == 0) return {true, b0, 1};
  if (n == 1 || n > 4 || pos + n > s.size()) return {false, 0, 1};
  char32_t cp = b0 & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  const bool scalar = cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
  if (!scalar || encode(cp) != s.substr(pos, n)) return {false, 0, 1};
  return {true, cp, static_cast<uint32_t>(n)};
}

bool is_control(char32_t c) { return c != U'\t' && c != U'\n' && c != U'\r' && (c < 0x20 || (c >= 0x7F && c <= 0x9F)); }

std::string hex(char32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c));
  return buf;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  // Every offset: text::decode_utf8 against the reference.
  for (size_t pos = 0; pos < s.size(); ++pos) {
    const Ref r = reference(s, pos);
    const chatradio::text::Utf8Char c = chatradio::text::decode_utf8(s, pos);
    if (c.valid != r.valid || c.len != r.len || c.cp != (r.valid ? r.cp : 0xFFFD)) __builtin_trap();
    if (r.valid) {
      std::string again;
      chatradio::text::append_utf8(again, r.cp);
      if (again != s.substr(pos, r.len)) __builtin_trap();
    }
  }
  // Character by character: the first problem check_text must name, whether
  // the text is blank, and where its non-space content starts and ends.
  std::optional<std::string> expected;
  bool blank = true, any_content = false;
  size_t begin = s.size(), end = 0;
  for (size_t pos = 0; pos < s.size();) {
    const Ref r = reference(s, pos);
    const bool space = r.valid && chatradio::prompt::is_space(r.cp);
    if (!expected && !r.valid) expected = "t is not valid UTF-8 at byte " + std::to_string(pos);
    if (!expected && r.valid && is_control(r.cp)) expected = "t contains control character " + hex(r.cp) + " at byte " + std::to_string(pos);
    if (!space) {
      blank = false;
      if (r.valid) any_content = true;
      begin = std::min(begin, pos);
      end = pos + r.len;
    }
    pos += r.len;
  }
  if (chatradio::prompt::check_text("t", s) != expected) __builtin_trap();
  if (chatradio::prompt::is_blank(s) != blank) __builtin_trap();
  const std::string_view trimmed = chatradio::prompt::trim_space(s);
  if (trimmed != (begin < end ? s.substr(begin, end - begin) : std::string_view())) __builtin_trap();
  // check_findings: size first, then check_text's scan, then emptiness.
  const std::optional<std::string> findings = chatradio::prompt::check_findings(s, {.max_bytes = 256});
  std::optional<std::string> want;
  if (s.size() > 256) {
    want = "findings is " + std::to_string(s.size()) + " bytes; the limit is 256 bytes";
  } else if (expected) {
    want = "findings" + expected->substr(1);
  } else if (!any_content) {
    want = "findings is empty";
  }
  if (findings != want) __builtin_trap();
  (void)chatradio::prompt::detect_language(s);
  return 0;
}
