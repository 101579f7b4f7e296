#include "model/sentencepiece_proto.h"

#include <bit>
#include <span>

#include "model/errors.h"

namespace chatradio::model::spm {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

const char* wire_type_name(uint32_t w) {
  switch (w) {
    case kVarint: return "varint";
    case kFixed64: return "fixed64";
    case kLengthDelimited: return "length-delimited";
    case kFixed32: return "fixed32";
    default: return "group (unsupported)";
  }
}

struct Field {
  uint32_t number = 0;
  uint32_t wire = 0;
  uint64_t value = 0;      // varint, fixed32 and fixed64 payloads
  std::string_view bytes;  // length-delimited payload
  size_t offset = 0;       // of the tag, within the whole file
};

// Names of a message's fields by number, for error messages.
using FieldNames = std::span<const char* const>;
constexpr const char* kModelProtoFields[] = {nullptr, "pieces", "trainer_spec", "normalizer_spec",
                                             "self_test_data", "denormalizer_spec"};
constexpr const char* kPieceFields[] = {nullptr, "piece", "score", "type"};

// Reads the fields of one message. `base` is the message's offset within the
// file and `path` its field path ("ModelProto.pieces[17]"), so that an error
// tells the user where the file stops making sense.
class WireReader {
 public:
  WireReader(std::string_view msg, size_t base, std::string path, const std::string& origin,
             FieldNames names = {})
      : msg_(msg), base_(base), path_(std::move(path)), origin_(origin), names_(names) {}

  bool at_end() const { return pos_ >= msg_.size(); }

  Field next() {
    Field f;
    f.offset = base_ + pos_;
    const uint64_t tag = varint("tag");
    f.number = static_cast<uint32_t>(tag >> 3);
    f.wire = static_cast<uint32_t>(tag & 7);
    if (f.number == 0 || (tag >> 3) > 0x1FFFFFFF) fail(f.offset, "invalid field number 0");
    switch (f.wire) {
      case kVarint:
        f.value = varint("varint");
        break;
      case kFixed64:
        f.value = fixed(8);
        break;
      case kFixed32:
        f.value = fixed(4);
        break;
      case kLengthDelimited: {
        const uint64_t n = varint("length");
        if (n > msg_.size() - pos_) {
          fail(f.offset, label(f.number) + " claims " + std::to_string(n) + " bytes but only " +
                             std::to_string(msg_.size() - pos_) + " remain (truncated file?)");
        }
        f.bytes = msg_.substr(pos_, n);
        pos_ += n;
        break;
      }
      default:
        fail(f.offset, label(f.number) + " has wire type " + std::to_string(f.wire) +
                           ", which a tokenizer.model never uses");
    }
    return f;
  }

  // Typed views of a field; a wire type that does not match the schema is an error.
  bool as_bool(const Field& f, const char* name) const { return expect(f, kVarint, name).value != 0; }
  // int32 fields hold negative values as 10-byte sign-extended varints.
  int32_t as_int32(const Field& f, const char* name) const {
    return static_cast<int32_t>(static_cast<uint32_t>(expect(f, kVarint, name).value));
  }
  float as_float(const Field& f, const char* name) const {
    return std::bit_cast<float>(static_cast<uint32_t>(expect(f, kFixed32, name).value));
  }
  std::string as_string(const Field& f, const char* name) const {
    return std::string(expect(f, kLengthDelimited, name).bytes);
  }
  // Reader of a nested message field.
  WireReader sub(const Field& f, const char* name, long index = -1, FieldNames names = {}) const {
    const std::string_view payload = expect(f, kLengthDelimited, name).bytes;
    std::string path = path_;
    path += '.';
    path += name;
    if (index >= 0) path.append("[").append(std::to_string(index)).append("]");
    const auto offset = static_cast<size_t>(payload.data() - msg_.data());
    return WireReader(payload, base_ + offset, std::move(path), origin_, names);
  }

 private:
  uint64_t varint(const char* what) {
    const size_t start = base_ + pos_;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= msg_.size()) fail(start, std::string("truncated ") + what);
      const auto b = static_cast<uint8_t>(msg_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    fail(start, std::string(what) + " varint longer than 10 bytes");
  }

  uint64_t fixed(size_t n) {
    if (msg_.size() - pos_ < n) fail(base_ + pos_, "truncated fixed" + std::to_string(n * 8));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(msg_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }

  const Field& expect(const Field& f, WireType wire, const char* name) const {
    if (f.wire != wire) {
      fail(f.offset, std::string(name) + " (field " + std::to_string(f.number) + ") has wire type " +
                         wire_type_name(f.wire) + ", expected " + wire_type_name(wire));
    }
    return f;
  }

  std::string label(uint32_t number) const {
    std::string s = "field " + std::to_string(number);
    if (number < names_.size() && names_[number] != nullptr) s = std::string(names_[number]) + " (" + s + ")";
    return s;
  }

  [[noreturn]] void fail(size_t offset, const std::string& what) const {
    throw ModelError(origin_ + ": not a valid sentencepiece tokenizer.model: " + what + " in " +
                     path_ + " at byte " + std::to_string(offset));
  }

  std::string_view msg_;
  size_t pos_ = 0;
  size_t base_;
  std::string path_;
  const std::string& origin_;
  FieldNames names_;
};

ProtoPiece parse_piece(WireReader r) {
  ProtoPiece p;
  while (!r.at_end()) {
    const Field f = r.next();
    switch (f.number) {
      case 1: p.piece = r.as_string(f, "piece"); break;
      case 2: p.score = r.as_float(f, "score"); break;
      case 3: p.type = static_cast<PieceType>(r.as_int32(f, "type")); break;
      default: break;  // extensions
    }
  }
  return p;
}

void parse_trainer_spec(TrainerSpec& dst, WireReader r) {
  while (!r.at_end()) {
    const Field f = r.next();
    switch (f.number) {
      case 3: dst.model_type = r.as_int32(f, "model_type"); break;
      case 24: dst.treat_whitespace_as_suffix = r.as_bool(f, "treat_whitespace_as_suffix"); break;
      case 35: dst.byte_fallback = r.as_bool(f, "byte_fallback"); break;
      case 44: dst.unk_surface = r.as_string(f, "unk_surface"); break;
      case 45: dst.unk_piece = r.as_string(f, "unk_piece"); break;
      case 46: dst.bos_piece = r.as_string(f, "bos_piece"); break;
      case 47: dst.eos_piece = r.as_string(f, "eos_piece"); break;
      default: break;  // training-only settings
    }
  }
}

void parse_normalizer_spec(NormalizerSpec& dst, WireReader r) {
  while (!r.at_end()) {
    const Field f = r.next();
    switch (f.number) {
      case 1: dst.name = r.as_string(f, "name"); break;
      case 2: dst.precompiled_charsmap = r.as_string(f, "precompiled_charsmap"); break;
      case 3: dst.add_dummy_prefix = r.as_bool(f, "add_dummy_prefix"); break;
      case 4: dst.remove_extra_whitespaces = r.as_bool(f, "remove_extra_whitespaces"); break;
      case 5: dst.escape_whitespaces = r.as_bool(f, "escape_whitespaces"); break;
      default: break;  // normalization_rule_tsv is training-only
    }
  }
}

}  // namespace

ModelProto parse_model_proto(std::string_view bytes, const std::string& origin) {
  ModelProto m;
  WireReader r(bytes, 0, "ModelProto", origin, kModelProtoFields);
  while (!r.at_end()) {
    const Field f = r.next();
    switch (f.number) {
      case 1: {
        const long index = static_cast<long>(m.pieces.size());
        m.pieces.push_back(parse_piece(r.sub(f, "pieces", index, kPieceFields)));
        break;
      }
      case 2: parse_trainer_spec(m.trainer_spec, r.sub(f, "trainer_spec")); break;
      case 3: parse_normalizer_spec(m.normalizer_spec, r.sub(f, "normalizer_spec")); break;
      case 5: parse_normalizer_spec(m.denormalizer_spec, r.sub(f, "denormalizer_spec")); break;
      default: break;  // self_test_data and extensions
    }
  }
  return m;
}

}  // namespace chatradio::model::spm
