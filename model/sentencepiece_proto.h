// The parts of sentencepiece's ModelProto (sentencepiece_model.proto) that
// encoding and decoding need, read by a small bounds-checked protobuf
// wire-format reader: linking libprotobuf/libsentencepiece beside gRPC's own
// protobuf is not an option (DEVELOPERS.md). Defaults are the proto2 defaults
// of sentencepiece_model.proto, so an absent field reads as spm would read it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chatradio::model::spm {

// ModelProto.SentencePiece.Type.
enum class PieceType : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// TrainerSpec.ModelType.
enum ModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

struct ProtoPiece {
  std::string piece;
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
};

struct TrainerSpec {
  int32_t model_type = kUnigram;
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "
  std::string unk_piece = "<unk>";
  std::string bos_piece = "<s>";
  std::string eos_piece = "</s>";
};

struct NormalizerSpec {
  std::string name;
  std::string precompiled_charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

struct ModelProto {
  std::vector<ProtoPiece> pieces;
  TrainerSpec trainer_spec;
  NormalizerSpec normalizer_spec;
  NormalizerSpec denormalizer_spec;
};

// Parses a serialized ModelProto. Unknown fields are skipped; a message field
// that occurs twice is merged, as protobuf does. Throws ModelError naming
// `origin` (the file), the field path and the byte offset for truncated or
// malformed input. Semantic checks (model type, pieces) are the caller's.
ModelProto parse_model_proto(std::string_view bytes, const std::string& origin);

}  // namespace chatradio::model::spm
