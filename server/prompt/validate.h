// Request checks the handler runs before rendering a prompt, each returning a
// message meant for the client as is (INVALID_ARGUMENT). Messages name offsets
// and sizes but never quote the text: findings are patient data.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "server/prompt/templates.h"

namespace chatradio::prompt {

struct FindingsLimits {
  size_t max_bytes = 32 * 1024;  // the longest report we accept, in UTF-8 bytes
};

// None when the findings are usable, else the first problem found:
//   "findings is 40000 bytes; the limit is 32768 bytes"
//   "findings is not valid UTF-8 at byte 17"
//   "findings contains control character U+0007 at byte 3"
//   "findings is empty"              (also for whitespace only, Unicode spaces included)
// Control characters are Unicode's Cc (U+0000-001F, U+007F-009F) except \t \n \r.
std::optional<std::string> check_findings(std::string_view findings, const FindingsLimits& limits = {});

// The UTF-8 and control-character part of check_findings() for any text, with
// `name` leading the message ("instruction is not valid UTF-8 at byte 4").
std::optional<std::string> check_text(std::string_view name, std::string_view text);

// For language=auto: kZh when CJK characters (ideographs, CJK punctuation,
// full-width forms) make up at least 20% of the letters (CJK + ASCII letters),
// else kEn; also kEn for text with no letters at all. One CJK character carries
// about as much as a whole English word, hence the low threshold: Chinese
// reports full of "CT", "T2WI", "mm" still count as Chinese.
Language detect_language(std::string_view text);

// None when a prompt of `prompt_tokens` plus `max_tokens` new tokens fits in
// `context` positions, else e.g.
//   "input is 4000 tokens; with max_tokens 256 it exceeds the model context of
//    4096 tokens (at most 3840 input tokens)"
//   "max_tokens must be at least 1 (got 0)"
//   "max_tokens 4096 leaves no room for input in the model context of 4096 tokens"
std::optional<std::string> check_context(int prompt_tokens, int max_tokens, int context);

// True for the whitespace check_findings() treats as empty: ASCII whitespace,
// U+0085, U+00A0, U+1680, U+2000-200B, U+2028, U+2029, U+202F, U+205F, U+3000, U+FEFF.
bool is_space(char32_t c);
// True when `text` (valid UTF-8 assumed; invalid bytes count as content) is empty
// or only is_space() characters.
bool is_blank(std::string_view text);
// `text` without leading and trailing is_space() characters (valid UTF-8 assumed).
std::string_view trim_space(std::string_view text);

}  // namespace chatradio::prompt
