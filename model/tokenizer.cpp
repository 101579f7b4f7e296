// SentencePiece BPE, reimplemented from the behaviour of sentencepiece's
// normalizer.cc, bpe_model.cc and SentencePieceProcessor (Encode, Decode) so
// that ids and text match libsentencepiece exactly; the conformance tests in
// tests/tokenizer/ compare against it as an oracle.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/sentencepiece_proto.h"

namespace chatradio::model {
namespace {

using spm::PieceType;

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";      // U+2581, spm's escaped ' '
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Bytes of the character that a lead byte announces, as spm splits text into
// symbols (stray continuation bytes count as one).
size_t lead_len(char c) {
  const auto b = static_cast<uint8_t>(c);
  return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Length of the well-formed UTF-8 character at the start of `s`, or 0 when it
// is malformed (stray continuation byte, overlong form, surrogate, beyond
// U+10FFFF, truncated): the judgement of spm's IsValidDecodeUTF8.
size_t valid_char_len(std::string_view s) {
  if (s.empty()) return 0;
  const auto at = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto trails = [&](size_t n) {
    if (s.size() < n) return false;
    for (size_t i = 1; i < n; ++i) {
      if ((at(i) & 0xC0) != 0x80) return false;
    }
    return true;
  };
  const uint8_t c = at(0);
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;  // continuation byte, or C0/C1 (always overlong)
  if (c < 0xE0) return trails(2) ? 2 : 0;
  if (c < 0xF0) {
    if (!trails(3)) return 0;
    if (c == 0xE0 && at(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && at(1) >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (c < 0xF5) {
    if (!trails(4)) return 0;
    if (c == 0xF0 && at(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && at(1) >= 0x90) return 0;  // beyond U+10FFFF
    return 4;
  }
  return 0;
}

// Whether more bytes could still turn `s` (malformed as it stands) into a
// well-formed character. Validity depends only on the lead byte, the range of
// the second byte and the rest being continuation bytes, so trying these few
// second bytes, with 0x80 after them, answers it exactly.
bool could_complete(std::string_view s) {
  const size_t need = lead_len(s[0]);
  if (s.size() >= need) return false;
  for (const char second : {'\x80', '\x90', '\xA0'}) {
    std::string probe(s);
    if (probe.size() == 1) probe += second;
    probe.resize(need, '\x80');
    if (valid_char_len(probe) == need) return true;
  }
  return false;
}

// The byte a "<0xNN>" piece stands for (upper-case hex, as spm names them), or -1.
int piece_to_byte(std::string_view p) {
  const auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  if (p.size() != 6 || !p.starts_with("<0x") || p[5] != '>') return -1;
  const int hi = hex(p[3]);
  const int lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

const char* model_type_name(int32_t t) {
  switch (t) {
    case spm::kUnigram: return "UNIGRAM";
    case spm::kBpe: return "BPE";
    case spm::kWord: return "WORD";
    case spm::kChar: return "CHAR";
    default: return "unknown";
  }
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw ModelError(path + ": is a directory, expected a tokenizer.model file");
  }
  return read_text_file(path, "cannot open tokenizer model", /*with_errno=*/true);
}

}  // namespace

struct Tokenizer::Impl {
  struct Entry {
    std::string text;
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
    uint8_t byte = 0;  // value of a BYTE piece
  };

  std::vector<Entry> pieces;
  // As spm keeps them: NORMAL, USER_DEFINED and UNUSED pieces take part in
  // merges; CONTROL, UNKNOWN and BYTE pieces are only found by exact lookup,
  // so "<s>" in a text is spelled out, never read as BOS. Keys view `pieces`.
  std::unordered_map<std::string_view, int32_t> mergeable;
  std::unordered_map<std::string_view, int32_t> reserved;
  std::unordered_set<std::string_view> user_symbols;
  std::vector<size_t> user_symbol_lengths;  // distinct, longest first
  std::array<int32_t, 256> byte_ids{};
  size_t max_piece_bytes = 0;  // no merge can produce anything longer
  // True when no piece has U+2581 after other text (so no merge can join a
  // "▁word" to the non-space before it) and none is UNUSED (whose
  // resegmentation depends on the order of all merges): then merging word
  // by word gives exactly what one merge queue over the whole text gives.
  bool words_merge_independently = false;
  int32_t unk = -1;
  int32_t bos = -1;
  int32_t eos = -1;

  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  bool whitespace_as_suffix = false;
  std::string unk_surface;

  bool valid(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < pieces.size(); }
  bool is_byte(int32_t id) const { return valid(id) && pieces[id].type == PieceType::kByte; }

  // spm's PieceToId: reserved pieces first, then the rest, else <unk>.
  int32_t piece_to_id(std::string_view w) const {
    if (const auto it = reserved.find(w); it != reserved.end()) return it->second;
    if (const auto it = mergeable.find(w); it != mergeable.end()) return it->second;
    return unk;
  }

  // Length of the longest user-defined piece that starts `s`, 0 if none.
  size_t match_user_symbol(std::string_view s) const {
    for (const size_t n : user_symbol_lengths) {
      if (n <= s.size() && user_symbols.contains(s.substr(0, n))) return n;
    }
    return 0;
  }

  // Checks the model as spm's ModelInterface::InitializePieces does, plus
  // what this implementation does not support, and builds the tables.
  static std::unique_ptr<Impl> build(spm::ModelProto proto, const std::string& path);

  std::string normalize(std::string_view input, bool dummy_prefix) const;
  void encode_normalized(std::vector<int32_t>& dst, std::string_view text) const;
  bool append_surface(std::string& dst, int32_t id, bool at_start) const;
};

std::unique_ptr<Tokenizer::Impl> Tokenizer::Impl::build(spm::ModelProto proto, const std::string& path) {
  const auto fail = [&](const std::string& what) -> void {
    throw ModelError(path + ": unsupported or invalid tokenizer.model: " + what);
  };
  if (proto.pieces.empty()) fail("no pieces (empty or not a tokenizer.model file?)");
  const int32_t type = proto.trainer_spec.model_type;
  if (type != spm::kBpe) {
    fail(std::string("trainer_spec.model_type is ") + model_type_name(type) + " (" +
         std::to_string(type) + "); only BPE (2) models are supported");
  }
  const spm::NormalizerSpec& norm = proto.normalizer_spec;
  if (!norm.precompiled_charsmap.empty()) {
    fail("normalizer_spec.precompiled_charsmap is set (normalizer '" + norm.name +
         "'): NFKC-style normalization not supported, only 'identity' normalizers are");
  }
  if (!proto.denormalizer_spec.precompiled_charsmap.empty()) {
    fail("denormalizer_spec.precompiled_charsmap is set: denormalization not supported");
  }
  if (proto.pieces.size() > static_cast<size_t>(INT32_MAX)) fail("too many pieces");

  auto impl = std::make_unique<Impl>();
  impl->byte_fallback = proto.trainer_spec.byte_fallback;
  impl->whitespace_as_suffix = proto.trainer_spec.treat_whitespace_as_suffix;
  impl->unk_surface = proto.trainer_spec.unk_surface;
  impl->add_dummy_prefix = norm.add_dummy_prefix;
  impl->remove_extra_whitespaces = norm.remove_extra_whitespaces;
  impl->escape_whitespaces = norm.escape_whitespaces;
  impl->byte_ids.fill(-1);

  impl->pieces.reserve(proto.pieces.size());
  for (spm::ProtoPiece& p : proto.pieces) {
    impl->pieces.push_back({std::move(p.piece), p.score, p.type, 0});
  }
  // The maps view the strings in `pieces`, which no longer move from here on.
  for (size_t i = 0; i < impl->pieces.size(); ++i) {
    Entry& e = impl->pieces[i];
    const auto id = static_cast<int32_t>(i);
    const auto where = [i] { return "pieces[" + std::to_string(i) + "]"; };
    if (e.text.empty()) fail(where() + " is empty");
    if (e.text.find('\0') != std::string::npos) fail(where() + " contains a NUL byte");
    if (e.text.size() >= 8000) fail(where() + " is too long");
    const auto t = static_cast<int>(e.type);
    if (t < 1 || t > 6) fail(where() + ".type is " + std::to_string(t) + ", not a SentencePiece type");
    const bool mergeable = e.type == PieceType::kNormal || e.type == PieceType::kUserDefined ||
                           e.type == PieceType::kUnused;
    if (!(mergeable ? impl->mergeable : impl->reserved).emplace(e.text, id).second) {
      fail(where() + " '" + e.text + "' is already defined");
    }
    if (mergeable) impl->max_piece_bytes = std::max(impl->max_piece_bytes, e.text.size());
    if (e.type == PieceType::kUserDefined) impl->user_symbols.insert(e.text);
    if (e.type == PieceType::kUnknown) {
      if (impl->unk >= 0) fail(where() + ": a second UNKNOWN piece");
      impl->unk = id;
    }
    if (e.type == PieceType::kByte) {
      if (!impl->byte_fallback) {
        fail(where() + " '" + e.text + "' is a BYTE piece although trainer_spec.byte_fallback is false");
      }
      const int value = piece_to_byte(e.text);
      if (value < 0) fail(where() + " '" + e.text + "' is a BYTE piece but not <0xNN>");
      e.byte = static_cast<uint8_t>(value);
      impl->byte_ids[e.byte] = id;
    }
  }
  if (impl->unk < 0) fail("no UNKNOWN piece (<unk>) defined");
  if (impl->byte_fallback &&
      std::find(impl->byte_ids.begin(), impl->byte_ids.end(), -1) != impl->byte_ids.end()) {
    fail("trainer_spec.byte_fallback is true but the 256 <0xNN> BYTE pieces are not all present");
  }
  impl->words_merge_independently =
      std::none_of(impl->pieces.begin(), impl->pieces.end(), [](const Entry& e) {
        if (e.type == PieceType::kUnused) return true;
        if (e.type != PieceType::kNormal && e.type != PieceType::kUserDefined) return false;
        std::string_view rest = e.text;
        while (rest.starts_with(kSpaceSymbol)) rest.remove_prefix(kSpaceSymbol.size());
        return rest.find(kSpaceSymbol) != std::string_view::npos;
      });
  for (const std::string_view s : impl->user_symbols) impl->user_symbol_lengths.push_back(s.size());
  std::sort(impl->user_symbol_lengths.begin(), impl->user_symbol_lengths.end(), std::greater<>());
  impl->user_symbol_lengths.erase(
      std::unique(impl->user_symbol_lengths.begin(), impl->user_symbol_lengths.end()),
      impl->user_symbol_lengths.end());

  // spm's bos_id()/eos_id(): the named piece, and only if it is a CONTROL piece.
  const auto control_id = [&](const std::string& name) {
    const int32_t id = impl->piece_to_id(name);
    return impl->pieces[id].type == PieceType::kControl ? id : -1;
  };
  impl->bos = control_id(proto.trainer_spec.bos_piece);
  impl->eos = control_id(proto.trainer_spec.eos_piece);
  return impl;
}

// spm's Normalizer::Normalize without a charsmap: only spaces are touched
// (tabs and newlines pass through), malformed bytes become U+FFFD one byte
// at a time, user-defined pieces pass whole.
std::string Tokenizer::Impl::normalize(std::string_view input, bool dummy_prefix) const {
  const auto next = [this](std::string_view s) -> std::pair<std::string_view, size_t> {
    if (const size_t n = match_user_symbol(s)) return {s.substr(0, n), n};
    if (const size_t n = valid_char_len(s)) return {s.substr(0, n), n};
    return {kReplacementChar, 1};
  };
  std::string out;
  if (remove_extra_whitespaces) {
    while (!input.empty()) {
      const auto [text, consumed] = next(input);
      if (text != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return out;

  const std::string_view space = escape_whitespaces ? kSpaceSymbol : " ";
  out.reserve(input.size() + input.size() / 2 + space.size());
  if (dummy_prefix && add_dummy_prefix && !whitespace_as_suffix) out += space;
  bool prev_space = remove_extra_whitespaces;
  while (!input.empty()) {
    auto [text, consumed] = next(input);
    input.remove_prefix(consumed);
    while (prev_space && !text.empty() && text.front() == ' ') text.remove_prefix(1);
    if (!text.empty()) {
      for (const char c : text) {
        if (c == ' ') {
          out += space;
        } else {
          out += c;
        }
      }
      prev_space = text.back() == ' ';
    }
    if (!remove_extra_whitespaces) prev_space = false;
  }
  if (remove_extra_whitespaces) {
    size_t end = out.size();
    while (std::string_view(out).substr(0, end).ends_with(space)) end -= space.size();
    out.erase(end);
  }
  if (dummy_prefix && add_dummy_prefix && whitespace_as_suffix) out += space;
  return out;
}

// spm's bpe::Model::Encode on normalized text, then the byte fallback and
// unknown folding of SentencePieceProcessor::PopulateSentencePieceText.
void Tokenizer::Impl::encode_normalized(std::vector<int32_t>& dst, std::string_view text) const {
  struct Symbol {
    int32_t prev;
    int32_t next;
    size_t begin;
    uint32_t size;  // 0 once merged into its left neighbour
    bool frozen;    // a user-defined piece: never merged
  };
  struct Candidate {
    float score;
    int32_t left;
    int32_t right;
    uint32_t size;  // of the merged piece; a mismatch later means the pair is stale
  };
  // Highest score first; among equal scores the leftmost pair, as spm does.
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };

  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t n = match_user_symbol(text.substr(pos));
    const bool frozen = n > 0;
    if (!frozen) n = std::min(lead_len(text[pos]), text.size() - pos);
    const auto i = static_cast<int32_t>(symbols.size());
    symbols.push_back({i - 1, i + 1, pos, static_cast<uint32_t>(n), frozen});
    pos += n;
  }
  const auto view = [&](const Symbol& s) { return text.substr(s.begin, s.size); };
  const auto is_space = [&](size_t i) { return !symbols[i].frozen && view(symbols[i]) == kSpaceSymbol; };

  // Merges into UNUSED pieces are undone afterwards along the split recorded
  // here; like spm, the last proposal of a piece decides its split.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> unused_splits;
  std::vector<Candidate> heap_storage;
  heap_storage.reserve(std::min<size_t>(symbols.size(), 4096));
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> agenda(later, std::move(heap_storage));
  const auto propose = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || symbols[l].frozen || symbols[r].frozen) return;
    const size_t size = symbols[l].size + symbols[r].size;
    if (size > max_piece_bytes) return;
    const std::string_view merged = text.substr(symbols[l].begin, size);
    const auto it = mergeable.find(merged);
    if (it == mergeable.end()) return;
    const Entry& e = pieces[it->second];
    agenda.push({e.score, l, r, static_cast<uint32_t>(size)});
    if (e.type == PieceType::kUnused) unused_splits[merged] = {view(symbols[l]), view(symbols[r])};
  };

  bool prev_unknown = false;
  const auto emit = [&](std::string_view w, int32_t id) {
    const bool unknown = pieces[id].type == PieceType::kUnknown;
    if (unknown && byte_fallback) {
      for (const char c : w) dst.push_back(byte_ids[static_cast<uint8_t>(c)]);
    } else if (!(unknown && prev_unknown)) {  // spm folds a run of unknowns into one <unk>
      dst.push_back(id);
    }
    prev_unknown = unknown;
  };
  std::vector<std::string_view> pending;  // resegmentation stack, leftmost on top

  // Runs of symbols that no merge can join are merged separately: same
  // result as one run over the text, but the heap stays small and in cache.
  for (size_t lo = 0; lo < symbols.size();) {
    size_t hi = lo + 1;
    if (words_merge_independently) {
      while (hi < symbols.size() && !(is_space(hi) && !is_space(hi - 1))) ++hi;
    } else {
      hi = symbols.size();
    }
    symbols[lo].prev = -1;
    symbols[hi - 1].next = -1;
    for (size_t i = lo + 1; i < hi; ++i) propose(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

    while (!agenda.empty()) {
      const Candidate top = agenda.top();
      agenda.pop();
      Symbol& left = symbols[top.left];
      Symbol& right = symbols[top.right];
      if (left.size == 0 || right.size == 0 || left.size + right.size != top.size) continue;
      left.size += right.size;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      right.size = 0;
      propose(left.prev, top.left);
      propose(top.left, left.next);
    }

    for (auto i = static_cast<int32_t>(lo); i != -1; i = symbols[i].next) {
      pending.push_back(view(symbols[i]));
      while (!pending.empty()) {
        const std::string_view w = pending.back();
        pending.pop_back();
        const int32_t id = piece_to_id(w);
        if (pieces[id].type == PieceType::kUnused) {
          if (const auto it = unused_splits.find(w); it != unused_splits.end()) {
            pending.push_back(it->second.second);
            pending.push_back(it->second.first);
            continue;
          }
        }
        emit(w, id);
      }
    }
    lo = hi;
  }
}

// The text of one non-byte piece, as spm's Decode renders it. `at_start`:
// no text yet, so a leading U+2581 is the dummy prefix and is dropped.
// Returns whether it dropped one (spm then stops dropping; with
// remove_extra_whitespaces it keeps dropping while no text has appeared).
bool Tokenizer::Impl::append_surface(std::string& dst, int32_t id, bool at_start) const {
  if (!valid(id) || pieces[id].type == PieceType::kUnknown) {
    dst += unk_surface;
    return false;
  }
  if (pieces[id].type == PieceType::kControl) return false;
  std::string_view p = pieces[id].text;
  bool dropped = false;
  if (at_start && (add_dummy_prefix || remove_extra_whitespaces) && p.starts_with(kSpaceSymbol)) {
    p.remove_prefix(kSpaceSymbol.size());
    dropped = !remove_extra_whitespaces;
  }
  for (size_t pos = 0; pos < p.size();) {
    const size_t hit = p.find(kSpaceSymbol, pos);
    dst.append(p.substr(pos, hit - pos));
    if (hit == std::string_view::npos) break;
    dst += ' ';
    pos = hit + kSpaceSymbol.size();
  }
  return dropped;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  return Tokenizer(Impl::build(spm::parse_model_proto(read_file(path), path), path));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && impl_->bos >= 0) ids.push_back(impl_->bos);
  impl_->encode_normalized(ids, impl_->normalize(text, /*dummy_prefix=*/true));
  return ids;
}

std::vector<int32_t> Tokenizer::encode_continuation(std::string_view text) const {
  std::vector<int32_t> ids;
  impl_->encode_normalized(ids, impl_->normalize(text, /*dummy_prefix=*/false));
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  StreamDecoder decoder(*this);
  for (const int32_t id : ids) decoder.append(text, id);
  decoder.release_bytes(text, /*final=*/true);
  return text;
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::unk_id() const { return impl_->unk; }

std::string_view Tokenizer::piece(int32_t id) const {
  return impl_->valid(id) ? std::string_view(impl_->pieces[id].text) : std::string_view();
}

StreamDecoder::StreamDecoder(const Tokenizer& tok) : tok_(tok) {}

std::string StreamDecoder::push(int32_t id) {
  std::string out;
  append(out, id);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  release_bytes(out, /*final=*/true);
  wrote_text_ = wrote_text_ || !out.empty();
  return out;
}

// spm's Decode, one piece at a time: byte pieces collect into UTF-8, and
// anything else first settles the bytes before it.
void StreamDecoder::append(std::string& dst, int32_t id) {
  const Tokenizer::Impl& impl = *tok_.impl_;
  const size_t before = dst.size();
  if (impl.is_byte(id)) {
    held_ += static_cast<char>(impl.pieces[id].byte);
    release_bytes(dst, /*final=*/false);
  } else {
    release_bytes(dst, /*final=*/true);
    if (stripped_ws_ || wrote_text_ || dst.size() > before) at_start_ = false;
    stripped_ws_ = impl.append_surface(dst, id, at_start_);
  }
  wrote_text_ = wrote_text_ || dst.size() > before;
}

// Moves the held bytes that spm's decoder would already have settled into
// `dst`: whole characters as they are, malformed bytes as U+FFFD each. Unless
// `final`, the tail of a character that later bytes may complete stays held.
void StreamDecoder::release_bytes(std::string& dst, bool final) {
  const std::string_view held = held_;
  size_t pos = 0;
  while (pos < held.size()) {
    const std::string_view rest = held.substr(pos);
    if (const size_t n = valid_char_len(rest)) {
      dst.append(rest.substr(0, n));
      pos += n;
    } else if (!final && could_complete(rest)) {
      break;
    } else {
      dst += kReplacementChar;
      pos += 1;
    }
  }
  held_.erase(0, pos);
}

}  // namespace chatradio::model
