#include "server/text/jieba_hmm.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "server/text/segment.h"
#include "server/text/utf8.h"

namespace chatradio::text {

namespace {

// finalseg's MIN_FLOAT: the log-probability of whatever a table lacks.
constexpr double kMinFloat = -3.14e100;

constexpr int kB = 0, kE = 1, kM = 2, kS = 3;

int state_index(const std::u32string& key) {
  if (key.size() != 1) return -1;
  switch (key[0]) {
    case U'B':
      return kB;
    case U'E':
      return kE;
    case U'M':
      return kM;
    case U'S':
      return kS;
    default:
      return -1;
  }
}

// Reads the subset of Python literal syntax the tables are written in:
// `P=` then nested dicts of str keys ('\uXXXX' escapes or plain UTF-8) with
// float values. Errors name the file and line; the tables hold no patient data.
class TableParser {
 public:
  TableParser(std::string path, std::string text) : path_(std::move(path)), s_(std::move(text)) {}

  // Positions after "P=" at the start of a line (the module's one assignment).
  void begin() {
    for (size_t line = 0; line < s_.size();) {
      size_t p = line;
      if (s_[p] == 'P') {
        ++p;
        while (p < s_.size() && s_[p] == ' ') ++p;
        if (p < s_.size() && s_[p] == '=') {
          pos_ = p + 1;
          return;
        }
      }
      const size_t nl = s_.find('\n', line);
      if (nl == std::string::npos) break;
      line = nl + 1;
    }
    fail("no \"P = {...}\" assignment");
  }

  void end() {
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the table");
  }

  // {key: value, ...}: calls on_item(key) with the parser at the value.
  template <class OnItem>
  void dict(OnItem&& on_item) {
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::u32string key = string();
      expect(':');
      on_item(key);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++pos_;
  }

  double number() {
    skip_space();
    const size_t b = pos_;
    while (pos_ < s_.size() && std::string_view("0123456789+-.eE").find(s_[pos_]) != std::string_view::npos) ++pos_;
    const std::string tok = s_.substr(b, pos_ - b);
    char* endp = nullptr;
    // strtod is correctly rounded, as Python's float literal parsing is: same doubles.
    const double v = std::strtod(tok.c_str(), &endp);
    if (tok.empty() || endp != tok.c_str() + tok.size()) fail("expected a number");
    return v;
  }

  [[noreturn]] void fail(const std::string& why) const {
    size_t line = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) line += s_[i] == '\n';
    throw TextError("jieba HMM table " + path_ + " line " + std::to_string(line) + ": " + why);
  }

 private:
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_space();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  char32_t hex(size_t digits) {
    if (pos_ + digits > s_.size()) fail("truncated escape");
    char32_t v = 0;
    for (size_t k = 0; k < digits; ++k) {
      const char c = s_[pos_++];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) fail("bad hex digit in an escape");
      v = v * 16 + static_cast<char32_t>(d);
    }
    return v;
  }
  // A str literal: optional u prefix, single or double quotes.
  std::u32string string() {
    skip_space();
    if (peek() == 'u' || peek() == 'U') ++pos_;
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a string");
    ++pos_;
    std::u32string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_];
      if (c == q) {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        if (++pos_ >= s_.size()) fail("unterminated string");
        const char e = s_[pos_++];
        switch (e) {
          case 'u':
            out += hex(4);
            break;
          case 'U':
            out += hex(8);
            break;
          case 'x':
            out += hex(2);
            break;
          case '\\':
          case '\'':
          case '"':
            out += static_cast<char32_t>(e);
            break;
          default:
            fail(std::string("unsupported escape \\") + e);
        }
        continue;
      }
      const Utf8Char u = decode_utf8(s_, pos_);
      if (!u.valid) fail("invalid UTF-8");
      out += u.cp;
      pos_ += u.len;
    }
  }

  std::string path_;
  std::string s_;
  size_t pos_ = 0;
};

TableParser open_table(const std::string& dir, const char* name) {
  const std::string path = dir + "/" + name;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TextError("jieba HMM table " + path + ": cannot open (python3-jieba's finalseg/)");
  std::ostringstream ss;
  ss << in.rdbuf();
  TableParser p(path, ss.str());
  p.begin();
  return p;
}

// A state key of a table, or a precise error.
int state_of(const TableParser& p, const std::u32string& key) {
  const int s = state_index(key);
  if (s < 0) p.fail("a state key is not one of B, E, M, S");
  return s;
}

bool is_han(char32_t cp) { return cp >= 0x4E00 && cp <= 0x9FD5; }  // finalseg's re_han

}  // namespace

JiebaHmm JiebaHmm::load(const std::string& dir) {
  JiebaHmm h;
  bool seen[4] = {};
  const auto require_all = [&](const TableParser& p, const char* what) {
    for (const bool s : seen) {
      if (!s) p.fail(std::string(what) + " lacks one of the states B, E, M, S");
    }
    for (bool& s : seen) s = false;
  };

  TableParser start = open_table(dir, "prob_start.py");
  start.dict([&](const std::u32string& key) {
    const int s = state_of(start, key);
    h.start_[s] = start.number();
    seen[s] = true;
  });
  start.end();
  require_all(start, "the start table");

  for (auto& row : h.trans_) row.fill(kMinFloat);
  TableParser trans = open_table(dir, "prob_trans.py");
  trans.dict([&](const std::u32string& key) {
    const int from = state_of(trans, key);
    seen[from] = true;
    trans.dict([&](const std::u32string& to) { h.trans_[from][state_of(trans, to)] = trans.number(); });
  });
  trans.end();
  require_all(trans, "the transition table");

  TableParser emit = open_table(dir, "prob_emit.py");
  emit.dict([&](const std::u32string& key) {
    const int s = state_of(emit, key);
    seen[s] = true;
    emit.dict([&](const std::u32string& ch) {
      // jieba looks up one character at a time: a longer key could never match.
      if (ch.size() != 1) emit.fail("an emission key is not one character");
      auto [it, fresh] = h.emit_.try_emplace(ch[0]);
      if (fresh) it->second.fill(kMinFloat);
      it->second[s] = emit.number();
    });
  });
  emit.end();
  require_all(emit, "the emission table");
  return h;
}

void JiebaHmm::cut_han(std::vector<std::string>& dst, std::string_view run) const {
  std::vector<size_t> at;                        // [n + 1] byte offset of each character
  std::vector<const std::array<double, 4>*> em;  // [n] emission row, null: MIN_FLOAT for all
  for (size_t p = 0; p < run.size();) {
    const Utf8Char c = decode_utf8(run, p);
    at.push_back(p);
    const auto it = emit_.find(c.cp);
    em.push_back(it == emit_.end() ? nullptr : &it->second);
    p += c.len;
  }
  const size_t n = at.size();
  at.push_back(run.size());
  const auto emission = [&](size_t t, int y) { return em[t] == nullptr ? kMinFloat : (*em[t])[y]; };

  // finalseg.viterbi: V[t][y] = max over y0 in PrevStatus[y] of
  // (V[t-1][y0] + trans[y0][y] + emit[y][obs[t]], y0), added in that order;
  // a tie in the probability goes to the larger state letter.
  static constexpr int kPrev[4][2] = {{kE, kS}, {kB, kM}, {kM, kB}, {kS, kE}};  // B: ES, E: BM, M: MB, S: SE
  std::vector<std::array<double, 4>> v(n);      // [n][4] best log-probability ending in each state
  std::vector<std::array<uint8_t, 4>> from(n);  // [n][4] the state before it on that path
  for (int y = 0; y < 4; ++y) v[0][y] = start_[y] + emission(0, y);
  for (size_t t = 1; t < n; ++t) {
    for (int y = 0; y < 4; ++y) {
      const double e = emission(t, y);
      int best_state = -1;
      double best = 0.0;
      for (const int y0 : kPrev[y]) {
        const double p = v[t - 1][y0] + trans_[y0][y] + e;
        if (best_state < 0 || p > best || (p == best && y0 > best_state)) {
          best = p;
          best_state = y0;
        }
      }
      v[t][y] = best;
      from[t][y] = static_cast<uint8_t>(best_state);
    }
  }
  std::vector<int> path(n);                              // [n] state of each character
  path[n - 1] = v[n - 1][kS] >= v[n - 1][kE] ? kS : kE;  // max over (V, y) for y in "ES"
  for (size_t t = n - 1; t > 0; --t) path[t - 1] = from[t][path[t]];

  // finalseg.__cut: a word ends at each E (from the last B) and each S; the
  // rest after the last end is one word.
  size_t begin = 0, next = 0;
  for (size_t i = 0; i < n; ++i) {
    if (path[i] == kB) {
      begin = i;
    } else if (path[i] == kE) {
      dst.emplace_back(run.substr(at[begin], at[i + 1] - at[begin]));
      next = i + 1;
    } else if (path[i] == kS) {
      dst.emplace_back(run.substr(at[i], at[i + 1] - at[i]));
      next = i + 1;
    }
  }
  if (next < n) dst.emplace_back(run.substr(at[next]));
}

void JiebaHmm::cut_into(std::vector<std::string>& dst, std::string_view text) const {
  // re_han.split(text): Han runs to the Viterbi; the rest is ASCII here (the
  // caller passes characters of jieba's han pattern only) and re_skip.split
  // yields each match of [a-zA-Z0-9]+(?:\.\d+)?%? and each piece between.
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  for (size_t pos = 0; pos < text.size();) {
    size_t end = pos;
    const bool han = is_han(decode_utf8(text, pos).cp);
    while (end < text.size()) {
      const Utf8Char c = decode_utf8(text, end);
      if (is_han(c.cp) != han) break;
      end += c.len;
    }
    const std::string_view piece = text.substr(pos, end - pos);
    pos = end;
    if (han) {
      cut_han(dst, piece);
      continue;
    }
    size_t gap = 0;
    for (size_t i = 0; i < piece.size();) {
      if (!is_ascii_alnum(static_cast<unsigned char>(piece[i]))) {
        ++i;
        continue;
      }
      const size_t m = i;
      while (i < piece.size() && is_ascii_alnum(static_cast<unsigned char>(piece[i]))) ++i;
      if (i + 1 < piece.size() && piece[i] == '.' && is_digit(piece[i + 1])) {
        for (++i; i < piece.size() && is_digit(piece[i]);) ++i;
      }
      if (i < piece.size() && piece[i] == '%') ++i;
      if (m > gap) dst.emplace_back(piece.substr(gap, m - gap));
      dst.emplace_back(piece.substr(m, i - m));
      gap = i;
    }
    if (gap < piece.size()) dst.emplace_back(piece.substr(gap));
  }
}

}  // namespace chatradio::text
