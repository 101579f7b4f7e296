// Broken and unsupported tokenizer.model files: a ModelError with a message
// that names the problem, never a crash or a silently wrong tokenizer.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "model/errors.h"
#include "model/tokenizer.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

using ::chatradio::testing::shared_path;
using ::chatradio::testing::slurp;

constexpr const char* kStories = "models/stories260K/tokenizer.model";

// Protobuf encoding, enough to append fields to a model: a later scalar
// overrides, a repeated message field merges (so "flipping" a field is an append).
std::string varint(uint64_t v) {
  std::string s;
  do {
    s += static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return s;
}
std::string field_varint(uint32_t number, uint64_t v) { return varint(number << 3) + varint(v); }
std::string field_bytes(uint32_t number, const std::string& payload) {
  return varint(number << 3 | 2) + varint(payload.size()) + payload;
}

class BrokenModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "chatradio-tok-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string write(const std::string& bytes) {
    const std::string path = dir_ + "/tokenizer.model";
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // Loads `bytes`; returns the ModelError message, or "" when it loaded.
  // Any other exception fails the test.
  std::string load_error(const std::string& bytes) {
    try {
      const Tokenizer tok = Tokenizer::load(write(bytes));
      // A file that still loads must still work.
      const std::vector<int32_t> ids = tok.encode("The lungs are clear. 胸廓对称");
      tok.decode(ids);
      return "";
    } catch (const ModelError& e) {
      return e.what();
    }
  }

  std::string dir_;
};

TEST_F(BrokenModelTest, MissingFileAndDirectory) {
  try {
    Tokenizer::load(dir_ + "/nope.model");
    FAIL() << "no error for a missing file";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.model"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::load(dir_), ModelError);
}

TEST_F(BrokenModelTest, EmptyAndGarbageFiles) {
  EXPECT_NE(load_error("").find("no pieces"), std::string::npos);
  std::mt19937 rng(1);
  for (int round = 0; round < 300; ++round) {
    std::string bytes(1 + rng() % 4000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    EXPECT_NE(load_error(bytes), "") << "random bytes, round " << round;
  }
}

// A file cut anywhere fails cleanly. A cut exactly between two top-level
// fields leaves a well-formed, shorter model: for stories260K the only such
// model that is complete enough to load is the one that lost its last field,
// normalizer_spec, which holds nothing but defaults there.
TEST_F(BrokenModelTest, TruncatedAnywhere) {
  CHATRADIO_REQUIRE_SHARED(kStories);
  const std::string model = slurp(shared_path(kStories));
  ASSERT_EQ(load_error(model), "");
  const std::string normalizer_spec = field_bytes(3, field_bytes(1, "identity") + field_bytes(2, ""));
  ASSERT_TRUE(model.ends_with(normalizer_spec));
  int truncated_messages = 0;
  for (size_t cut = 0; cut < model.size(); cut += cut < 64 || cut + 256 > model.size() ? 1 : 5) {
    const std::string err = load_error(model.substr(0, cut));
    if (cut == model.size() - normalizer_spec.size()) continue;
    ASSERT_NE(err, "") << "cut at " << cut << " loaded";
    if (err.find("truncated") != std::string::npos) ++truncated_messages;
  }
  EXPECT_GT(truncated_messages, 500) << "cuts inside a field should say the file is truncated";
  const std::string err = load_error(model.substr(0, model.size() - 1));
  EXPECT_NE(err.find("normalizer_spec"), std::string::npos) << err;
}

TEST_F(BrokenModelTest, TruncatedLlama2SaysWhere) {
  CHATRADIO_REQUIRE_SHARED("tokenizers/llama2/tokenizer.model");
  const std::string model = slurp(shared_path("tokenizers/llama2/tokenizer.model"));
  const std::string err = load_error(model.substr(0, model.size() / 2));
  EXPECT_NE(err.find("pieces"), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("tokenizer.model"), std::string::npos) << err;
}

TEST_F(BrokenModelTest, FlippedBytesNeverCrash) {
  CHATRADIO_REQUIRE_SHARED(kStories);
  const std::string model = slurp(shared_path(kStories));
  std::mt19937 rng(2);
  for (int round = 0; round < 500; ++round) {
    std::string bytes = model;
    for (int k = 0; k < 1 + round % 8; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    load_error(bytes);  // either outcome is fine; crashing or another exception is not
  }
}

TEST_F(BrokenModelTest, UnigramModelIsRejected) {
  CHATRADIO_REQUIRE_SHARED(kStories);
  const std::string model = slurp(shared_path(kStories));
  const std::string err = load_error(model + field_bytes(2, field_varint(3, 1)));  // trainer_spec.model_type = UNIGRAM
  EXPECT_NE(err.find("model_type"), std::string::npos) << err;
  EXPECT_NE(err.find("UNIGRAM"), std::string::npos) << err;
}

TEST_F(BrokenModelTest, NfkcCharsmapIsRejected) {
  CHATRADIO_REQUIRE_SHARED(kStories);
  const std::string model = slurp(shared_path(kStories));
  const std::string spec = field_bytes(1, "nmt_nfkc") + field_bytes(2, std::string("\x04\x00\x00\x00xxxxyz", 10));
  const std::string err = load_error(model + field_bytes(3, spec));
  EXPECT_NE(err.find("precompiled_charsmap"), std::string::npos) << err;
  EXPECT_NE(err.find("NFKC"), std::string::npos) << err;
}

TEST_F(BrokenModelTest, InconsistentPiecesAreRejected) {
  CHATRADIO_REQUIRE_SHARED(kStories);
  const std::string model = slurp(shared_path(kStories));
  // stories260K has byte pieces, which need trainer_spec.byte_fallback.
  EXPECT_NE(load_error(model + field_bytes(2, field_varint(35, 0))).find("byte_fallback"), std::string::npos);
  const auto piece = [](const std::string& text, int type) {
    return field_bytes(1, field_bytes(1, text) + field_varint(3, static_cast<uint64_t>(type)));
  };
  EXPECT_NE(load_error(model + piece("\xE2\x96\x81the", 1)).find("already defined"), std::string::npos);
  EXPECT_NE(load_error(model + piece("<unk2>", 2)).find("UNKNOWN"), std::string::npos);
  EXPECT_NE(load_error(model + piece("<0xZZ>", 6)).find("BYTE"), std::string::npos);
  EXPECT_NE(load_error(model + piece("odd", 9)).find("type"), std::string::npos);
  EXPECT_NE(load_error(model + field_bytes(1, field_bytes(1, ""))).find("empty"), std::string::npos);
  // A scalar field sent with the wrong wire type.
  EXPECT_NE(load_error(model + field_bytes(2, field_bytes(3, "x"))).find("wire type"), std::string::npos);
}

}  // namespace
}  // namespace chatradio::model
