#include "server/text/segment.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "server/text/utf8.h"

namespace chatradio::text {

// ---------------------------------------------------------------- char, english

namespace {

// Ends the token being built (the characters of one word, in `run`): appends it to
// `dst` when it has any, and leaves `run` empty for the next one.
void flush_run(std::vector<std::string>& dst, std::string& run) {
  if (!run.empty()) {
    dst.push_back(std::move(run));
    run.clear();
  }
}

}  // namespace

void CharSegmenter::segment_into(std::vector<std::string>& dst, std::string_view text) const {
  std::string run;
  const auto flush = [&] { flush_run(dst, run); };
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = decode_utf8(text, pos);
    const std::string_view bytes = text.substr(pos, c.len);
    pos += c.len;
    if (!c.valid) {
      flush();
      continue;
    }
    const char32_t cp = fold_fullwidth(c.cp);
    switch (classify(cp)) {
      case CharClass::kAsciiAlnum:
        run += ascii_lower(static_cast<char>(cp));
        break;
      case CharClass::kWord:
        run += bytes;
        break;
      case CharClass::kMark:  // a mark belongs to the letter before it; alone it means nothing
        if (!run.empty()) run += bytes;
        break;
      case CharClass::kIgnorable:
        break;
      case CharClass::kIdeograph:
        flush();
        dst.emplace_back(bytes);
        break;
      case CharClass::kSeparator:
        flush();
        break;
    }
  }
  flush();
}

void EnglishSegmenter::segment_into(std::vector<std::string>& dst, std::string_view text) const {
  std::string run;
  const auto flush = [&] { flush_run(dst, run); };
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = decode_utf8(text, pos);
    pos += c.len;
    if (c.valid && is_ascii_alnum(c.cp)) {
      run += ascii_lower(static_cast<char>(c.cp));
    } else if (c.valid && c.cp == 0x212A) {  // KELVIN SIGN: Python lowercases it to "k"
      run += 'k';
    } else if (c.valid && c.cp == 0x0130) {  // "İ".lower() is "i" + U+0307, and U+0307 separates
      run += 'i';
      flush();
    } else {
      flush();
    }
  }
  flush();
}

// ---------------------------------------------------------------- jieba dictionary

namespace {

bool is_ascii_space(char c) {  // what Python's bytes.strip() removes
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool valid_utf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = decode_utf8(s, pos);
    if (!c.valid) return false;
    pos += c.len;
  }
  return true;
}

std::string line_error(const std::string& path, size_t line_no, const std::string& why) {
  return "jieba dictionary " + path + " line " + std::to_string(line_no) + ": " + why;
}

uint64_t hash_key(std::string_view key) { return std::hash<std::string_view>{}(key); }

}  // namespace

size_t JiebaDict::find(std::string_view key, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  const auto tag = static_cast<uint32_t>(hash >> 32);
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.len == 0) return i;
    if (s.tag == tag && s.len == key.size() && std::memcmp(keys_.data() + s.offset, key.data(), key.size()) == 0) {
      return i;
    }
  }
}

void JiebaDict::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  for (const Slot& s : old) {
    if (s.len == 0) continue;
    const std::string_view key = std::string_view(keys_).substr(s.offset, s.len);
    slots_[find(key, hash_key(key))] = s;
  }
}

void JiebaDict::put(uint32_t offset, uint32_t len, uint32_t freq, bool overwrite) {
  if ((used_ + 1) * 2 > slots_.size()) grow();  // load factor <= 1/2 keeps probes short
  const std::string_view key = std::string_view(keys_).substr(offset, len);
  const uint64_t hash = hash_key(key);
  Slot& s = slots_[find(key, hash)];
  if (s.len == 0) {
    s = Slot{offset, len, static_cast<uint32_t>(hash >> 32), freq};
    ++used_;
  } else if (overwrite) {
    s.freq = freq;
  }
}

int64_t JiebaDict::freq(std::string_view word) const {
  if (word.empty() || slots_.empty()) return -1;
  const Slot& s = slots_[find(word, hash_key(word))];
  return s.len == 0 ? int64_t{-1} : static_cast<int64_t>(s.freq);
}

JiebaDict JiebaDict::load(const std::string& path) {
  const bool debian_hmm = std::filesystem::exists(std::string(JiebaHmm::kDebianDir) + "/prob_emit.py");
  return load(path, debian_hmm ? JiebaHmm::kDebianDir : "");
}

JiebaDict JiebaDict::load(const std::string& path, const std::string& hmm_dir) {
  JiebaDict d;
  {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw TextError("jieba dictionary " + path + ": cannot open");
    const std::streamoff size = in.tellg();
    if (size < 0) throw TextError("jieba dictionary " + path + ": cannot read");
    if (size >= std::numeric_limits<uint32_t>::max()) throw TextError("jieba dictionary " + path + ": too large");
    d.keys_.resize(static_cast<size_t>(size));
    in.seekg(0);
    if (!in.read(d.keys_.data(), size)) throw TextError("jieba dictionary " + path + ": read error");
  }
  const std::string_view all = d.keys_;
  // Sized up front for ~1.5 keys (word and prefixes) per line: no rehash for dict.txt.
  const size_t lines = static_cast<size_t>(std::count(all.begin(), all.end(), '\n')) + 1;
  d.slots_.assign(std::bit_ceil(std::max<size_t>(16, lines * 3)), Slot{});

  size_t line_no = 0;
  for (size_t pos = 0; pos < all.size();) {
    size_t end = all.find('\n', pos);
    if (end == std::string_view::npos) end = all.size();
    ++line_no;
    size_t b = pos, e = end;
    pos = end + 1;
    while (b < e && is_ascii_space(all[b])) ++b;
    while (e > b && is_ascii_space(all[e - 1])) --e;
    const std::string_view line = all.substr(b, e - b);
    // jieba: line.decode('utf-8'); word, freq = line.split(' ')[:2]; int(freq).
    if (!valid_utf8(line)) throw TextError(line_error(path, line_no, "invalid UTF-8"));
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos) throw TextError(line_error(path, line_no, "expected \"word freq [tag]\""));
    const std::string_view word = line.substr(0, sp);
    std::string_view freq_text = line.substr(sp + 1);
    freq_text = freq_text.substr(0, freq_text.find(' '));
    uint64_t freq = 0;
    for (const char ch : freq_text) {
      if (ch < '0' || ch > '9' || freq > std::numeric_limits<uint32_t>::max()) break;
      freq = freq * 10 + static_cast<uint64_t>(ch - '0');
    }
    if (freq_text.empty() || freq_text.find_first_not_of("0123456789") != std::string_view::npos ||
        freq > std::numeric_limits<uint32_t>::max()) {
      throw TextError(line_error(path, line_no, "frequency is not a decimal number below 2^32"));
    }

    const auto offset = static_cast<uint32_t>(word.data() - all.data());
    d.put(offset, static_cast<uint32_t>(word.size()), static_cast<uint32_t>(freq), /*overwrite=*/true);
    d.total_ += freq;
    // Proper prefixes, cut at character boundaries (the line is valid UTF-8),
    // enter with 0 unless present.
    for (size_t k = 1; k < word.size(); ++k) {
      if ((static_cast<uint8_t>(word[k]) & 0xC0) != 0x80) d.put(offset, static_cast<uint32_t>(k), 0, false);
    }
  }
  // jieba would fail on log(0) at the first cut; say so at load instead.
  if (d.total_ == 0) throw TextError("jieba dictionary " + path + ": no word with a positive frequency");
  if (!hmm_dir.empty()) d.hmm_ = std::make_shared<const JiebaHmm>(JiebaHmm::load(hmm_dir));
  return d;
}

// ---------------------------------------------------------------- jieba cut

namespace {

// re_han_default = [\u4E00-\u9FD5a-zA-Z0-9+#&\._%\-]
bool is_jieba_han(char32_t cp) {
  if (cp >= 0x4E00 && cp <= 0x9FD5) return true;
  if (cp >= 0x80) return false;
  return is_ascii_alnum(cp) || cp == '+' || cp == '#' || cp == '&' || cp == '.' || cp == '_' || cp == '%' ||
         cp == '-';
}

}  // namespace

JiebaSegmenter::JiebaSegmenter(const JiebaDict& dict, bool hmm) : dict_(dict), hmm_(hmm ? dict.hmm() : nullptr) {
  if (hmm && hmm_ == nullptr) {
    throw TextError("jieba with the HMM needs jieba's HMM tables (python3-jieba's finalseg/), which are not loaded");
  }
}

void JiebaSegmenter::segment_into(std::vector<std::string>& dst, std::string_view text) const {
  // jieba.cut: re_han.split(text) into blocks; a han block goes to
  // __cut_DAG or __cut_DAG_NO_HMM; any other block is split by re_skip = (\r\n|\s) and
  // yields each piece that is whitespace and each character of the rest,
  // which comes to: every character alone, "\r\n" together.
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = decode_utf8(text, pos);
    if (c.valid && is_jieba_han(c.cp)) {
      size_t end = pos + c.len;
      while (end < text.size()) {
        const Utf8Char d = decode_utf8(text, end);
        if (!d.valid || !is_jieba_han(d.cp)) break;
        end += d.len;
      }
      cut_block(dst, text.substr(pos, end - pos));
      pos = end;
    } else if (text[pos] == '\r' && pos + 1 < text.size() && text[pos + 1] == '\n') {
      dst.emplace_back("\r\n");
      pos += 2;
    } else {
      dst.emplace_back(text.substr(pos, c.len));
      pos += c.len;
    }
  }
}

void JiebaSegmenter::cut_block(std::vector<std::string>& dst, std::string_view block) const {
  // Character starts: a block holds only ASCII and 3-byte Han characters.
  std::vector<uint32_t> at;
  at.reserve(block.size() + 1);
  for (size_t p = 0; p < block.size(); p += decode_utf8(block, p).len) at.push_back(static_cast<uint32_t>(p));
  const size_t n = at.size();
  at.push_back(static_cast<uint32_t>(block.size()));
  const auto piece = [&](size_t from, size_t to) { return block.substr(at[from], at[to] - at[from]); };

  // jieba's calc(): route[idx] = max over DAG[idx] of
  //   (log(FREQ.get(word) or 1) - logtotal + route[x + 1][0], x)
  // in the same double operations and order, so ties and rounding agree; a
  // tie in the score goes to the larger x, as Python compares the tuples.
  // DAG[idx] (get_DAG) is every end x whose piece has a positive frequency,
  // found by extending while the piece is in the prefix dictionary; or idx
  // alone when there is none.
  const double log_total = std::log(static_cast<double>(dict_.total()));
  std::vector<double> score(n + 1, 0.0);
  std::vector<uint32_t> end(n + 1, 0);
  for (size_t idx = n; idx-- > 0;) {
    bool any = false;
    double best = 0.0;
    size_t best_x = idx;
    const auto consider = [&](size_t x, int64_t freq) {
      const double v = std::log(static_cast<double>(freq > 0 ? freq : 1)) - log_total + score[x + 1];
      if (!any || v >= best) {  // x only grows, so >= keeps the larger x on a tie
        best = v;
        best_x = x;
        any = true;
      }
    };
    for (size_t x = idx; x < n; ++x) {
      const int64_t f = dict_.freq(piece(idx, x + 1));
      if (f < 0) break;
      if (f > 0) consider(x, f);
    }
    if (!any) consider(idx, dict_.freq(piece(idx, idx + 1)));
    score[idx] = best;
    end[idx] = static_cast<uint32_t>(best_x);
  }

  if (hmm_ != nullptr) {
    emit_route_hmm(dst, block, at, end);
    return;
  }
  // __cut_DAG_NO_HMM: single ASCII letters/digits of the route collect in a
  // buffer that is yielded as one word before the next other word.
  std::string buf;
  for (size_t x = 0; x < n;) {
    const size_t y = end[x] + 1;
    const std::string_view word = piece(x, y);
    if (y - x == 1 && is_ascii_alnum(static_cast<unsigned char>(word[0]))) {
      buf += word;
    } else {
      if (!buf.empty()) {
        dst.push_back(std::move(buf));
        buf.clear();
      }
      dst.emplace_back(word);
    }
    x = y;
  }
  if (!buf.empty()) dst.push_back(std::move(buf));
}

void JiebaSegmenter::emit_route_hmm(std::vector<std::string>& dst, std::string_view block,
                                    const std::vector<uint32_t>& at, const std::vector<uint32_t>& end) const {
  // __cut_DAG: consecutive single characters of the route collect in a
  // buffer; before the next longer word and at the end it is yielded as it
  // is when one character long, character by character when it is a word of
  // the dictionary, and through the HMM (finalseg.cut) otherwise.
  const size_t n = at.size() - 1;
  size_t buf_from = 0, buf_len = 0;  // the buffer, in characters
  const auto flush = [&] {
    const std::string_view buf = block.substr(at[buf_from], at[buf_from + buf_len] - at[buf_from]);
    if (buf_len == 1) {
      dst.emplace_back(buf);
    } else if (dict_.freq(buf) <= 0) {  // `not FREQ.get(buf)`: absent or a prefix only
      hmm_->cut_into(dst, buf);
    } else {
      for (size_t k = buf_from; k < buf_from + buf_len; ++k) dst.emplace_back(block.substr(at[k], at[k + 1] - at[k]));
    }
    buf_len = 0;
  };
  for (size_t x = 0; x < n;) {
    const size_t y = end[x] + 1;
    if (y - x == 1) {
      if (buf_len == 0) buf_from = x;
      ++buf_len;
    } else {
      if (buf_len > 0) flush();
      dst.emplace_back(block.substr(at[x], at[y] - at[x]));
    }
    x = y;
  }
  if (buf_len > 0) flush();
}

// ---------------------------------------------------------------- helpers

std::unique_ptr<Segmenter> make_segmenter(std::string_view name, const JiebaDict* dict) {
  if (name == "char") return std::make_unique<CharSegmenter>();
  if (name == "english") return std::make_unique<EnglishSegmenter>();
  if (name == "jieba" || name == "jieba-nohmm") {
    if (dict == nullptr) throw TextError("segmenter \"" + std::string(name) + "\" needs a loaded jieba dictionary");
    return std::make_unique<JiebaSegmenter>(*dict, name == "jieba");
  }
  throw TextError("unknown segmenter \"" + std::string(name) + "\" (expected char, english, jieba or jieba-nohmm)");
}

bool mostly_cjk(std::string_view text) {
  size_t ideographs = 0, letters = 0;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = decode_utf8(text, pos);
    pos += c.len;
    if (!c.valid) continue;
    const char32_t cp = fold_fullwidth(c.cp);
    switch (classify(cp)) {
      case CharClass::kIdeograph:
        ++ideographs;
        break;
      case CharClass::kAsciiAlnum:
        if (cp > '9') ++letters;
        break;
      case CharClass::kWord:
        ++letters;
        break;
      default:
        break;
    }
  }
  return ideographs > 0 && ideographs >= letters;
}

bool is_word_token(std::string_view token) {
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Char c = decode_utf8(token, pos);
    pos += c.len;
    if (!c.valid) continue;
    const CharClass cls = classify(fold_fullwidth(c.cp));
    if (cls == CharClass::kAsciiAlnum || cls == CharClass::kWord || cls == CharClass::kIdeograph) return true;
  }
  return false;
}

}  // namespace chatradio::text
