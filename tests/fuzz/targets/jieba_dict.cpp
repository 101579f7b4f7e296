// jieba dictionary (--jieba-dict): JiebaDict::load on arbitrary file bytes
// (without HMM tables, which come from python3-jieba, not from the file).
// A dictionary it accepts must hold exactly what a plain reading of its
// lines gives (a mismatch traps): every word with its last frequency, every
// proper prefix at a character boundary with 0 unless it is a word, nothing
// else, and the total of all frequencies. Then jieba without the HMM
// segments a fixed text and the start of the file itself: the tokens must be
// non-empty and concatenate back to the text. Any exception other than
// TextError counts as a crash.
//
// fuzz-seed-head: 4096 /usr/lib/python3/dist-packages/jieba/dict.txt
// fuzz-seed-bytes: 双肺 300 n\n纹理 200 n\n清晰 100 a\n双肺纹理 5\nCT 50 eng\n结节 80 n\n双 10\n肺 20\n
// fuzz-seed-bytes: 研究 100\n研究生 50\n生命 30\n命 1\n起源 20\n研究 7 v\r\n  \t\n
// fuzz-seed-bytes: a 0\nb 0\n
// fuzz-seed-bytes: AT&T 3 nz\nB超 3 n\nc# 3 nz\nC# 3 nz\n4294967295 4294967295\n
// fuzz-link: chatradio_text
#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "server/text/segment.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace text = chatradio::text;

bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// The tokens of `s` must be non-empty and add up to `s`.
void check_segmentation(const text::JiebaSegmenter& seg, std::string_view s) {
  std::string joined;
  for (const std::string& t : seg.segment(s)) {
    if (t.empty()) __builtin_trap();
    joined += t;
  }
  if (joined != s) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = chatradio::fuzz::write_scratch("dict.txt", data, size);
  std::optional<text::JiebaDict> dict;
  try {
    dict = text::JiebaDict::load(path, /*hmm_dir=*/"");
  } catch (const text::TextError&) {
    return 0;
  }
  // The plain reading: "word freq [tag]" per line, ASCII whitespace stripped.
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  std::map<std::string_view, uint64_t> words;
  std::set<std::string_view> keys;
  uint64_t total = 0;
  for (size_t pos = 0; pos < all.size();) {
    const size_t nl = std::min(all.find('\n', pos), all.size());
    std::string_view line = all.substr(pos, nl - pos);
    pos = nl + 1;
    while (!line.empty() && space(line.front())) line.remove_prefix(1);
    while (!line.empty() && space(line.back())) line.remove_suffix(1);
    const size_t sp = line.find(' ');
    const std::string_view word = line.substr(0, sp);
    const std::string_view f = line.substr(sp + 1, line.find(' ', sp + 1) - sp - 1);
    const uint64_t freq = std::stoull(std::string(f));
    words[word] = freq;
    total += freq;
    for (size_t k = 1; k <= word.size(); ++k) {
      if (k == word.size() || (static_cast<uint8_t>(word[k]) & 0xC0) != 0x80) keys.insert(word.substr(0, k));
    }
  }
  if (dict->total() != total || dict->size() != keys.size() || dict->hmm() != nullptr) __builtin_trap();
  for (std::string_view k : keys) {
    const auto w = words.find(k);
    if (dict->freq(k) != (w == words.end() ? 0 : static_cast<int64_t>(w->second))) __builtin_trap();
  }

  const text::JiebaSegmenter seg(*dict, /*hmm=*/false);
  check_segmentation(seg, "双肺纹理清晰，未见明显实质性病变。CT示3.5cm结节 AT&T B超\r\n研究生命起源 ");
  size_t n = std::min<size_t>(all.size(), 256);
  while (n > 0 && n < all.size() && (static_cast<uint8_t>(all[n]) & 0xC0) == 0x80) --n;  // a character boundary
  check_segmentation(seg, all.substr(0, n));
  return 0;
}
