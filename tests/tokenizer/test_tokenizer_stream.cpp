// StreamDecoder: text deltas are always whole UTF-8 characters, a character
// spelled in byte-fallback pieces appears the moment its last byte arrives,
// and all deltas plus flush() equal decode() of the whole sequence.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/common/shared.h"
#include "tests/common/utf8.h"

namespace chatradio::model {
namespace {

using ::chatradio::testing::shared_path;

constexpr const char* kStories = "models/stories260K/tokenizer.model";

// Deltas of pushing `ids` one by one, then the flush() as the last element.
std::vector<std::string> stream_deltas(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  StreamDecoder dec(tok);
  std::vector<std::string> deltas;
  for (const int32_t id : ids) deltas.push_back(dec.push(id));
  deltas.push_back(dec.flush());
  return deltas;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const std::string& p : parts) s += p;
  return s;
}

// Whether `s` is a whole number of UTF-8 characters (structure only).
bool whole_characters(std::string_view s) { return ::chatradio::testing::is_utf8(s, /*strict=*/false); }

int32_t byte_id(const Tokenizer& tok, uint8_t b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  const std::string name = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.piece(id) == name) return id;
  }
  return -1;
}

class StreamDecoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CHATRADIO_REQUIRE_SHARED(kStories);
    tok_ = std::make_unique<Tokenizer>(Tokenizer::load(shared_path(kStories)));
  }
  std::unique_ptr<Tokenizer> tok_;
};

// stories260K has 512 pieces, so every CJK character goes out as three byte
// pieces: each character must appear whole, on its third byte.
TEST_F(StreamDecoderTest, ChineseByteFallbackArrivesCharacterByCharacter) {
  const std::string text = "胸廓对称，纵隔心影居中。双肺纹理清晰";
  const std::vector<int32_t> ids = tok_->encode(text);
  ASSERT_EQ(tok_->decode(ids), text);
  ASSERT_EQ(ids.size(), 1 + 3 * 18u) << "expected the dummy-prefix piece and 3 byte pieces per character";

  const std::vector<std::string> deltas = stream_deltas(*tok_, ids);
  EXPECT_EQ(join(deltas), text);
  EXPECT_EQ(deltas.back(), "") << "nothing may be held back once the last character is complete";
  size_t chars = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(whole_characters(deltas[i])) << "delta " << i;
    // ids[0] is the dummy prefix; then bytes 3k+1, 3k+2, 3k+3 spell character k.
    if (i > 0 && i % 3 == 0) {
      EXPECT_EQ(deltas[i], text.substr(3 * chars, 3)) << "character " << chars;
      ++chars;
    } else {
      EXPECT_EQ(deltas[i], "") << "delta " << i << " should wait for the rest of its character";
    }
  }
  EXPECT_EQ(chars, 18u);
}

TEST_F(StreamDecoderTest, MixedTextMatchesDecode) {
  const std::string text = "Lily saw a 猫 🐈 and said \"你好\" to Tim.\nThe end.";
  const std::vector<int32_t> ids = tok_->encode(text);
  const std::vector<std::string> deltas = stream_deltas(*tok_, ids);
  EXPECT_EQ(join(deltas), tok_->decode(ids));
  for (const std::string& d : deltas) EXPECT_TRUE(whole_characters(d)) << "'" << d << "'";
}

// Bytes that can never become a character are settled at once (as U+FFFD,
// as spm does); bytes that still might are held until they can or cannot.
TEST_F(StreamDecoderTest, MalformedBytesBecomeReplacementCharacters) {
  const std::string fffd = "\xEF\xBF\xBD";
  const auto bytes = [&](std::initializer_list<uint8_t> bs) {
    std::vector<int32_t> ids;
    for (const uint8_t b : bs) ids.push_back(byte_id(*tok_, b));
    return ids;
  };
  // A lone continuation byte, or F5 (nothing follows it in UTF-8): at once.
  EXPECT_EQ(stream_deltas(*tok_, bytes({0x80})), (std::vector<std::string>{fffd, ""}));
  EXPECT_EQ(stream_deltas(*tok_, bytes({0xF5})), (std::vector<std::string>{fffd, ""}));
  // E4 BD may still become 你; 'A' shows it will not: both bytes go as U+FFFD.
  EXPECT_EQ(stream_deltas(*tok_, bytes({0xE4, 0xBD, 'A'})),
            (std::vector<std::string>{"", "", fffd + fffd + "A", ""}));
  // ED A0 is a surrogate's start: it can never complete, so no waiting.
  EXPECT_EQ(stream_deltas(*tok_, bytes({0xED, 0xA0})), (std::vector<std::string>{"", fffd + fffd, ""}));
  // An unfinished character at the end comes out of flush().
  EXPECT_EQ(stream_deltas(*tok_, bytes({0xE4, 0xBD})), (std::vector<std::string>{"", "", fffd + fffd}));
  // A non-byte piece settles whatever is held before its own text.
  std::vector<int32_t> ids = bytes({0xE4, 0xBD});
  const std::vector<int32_t> word = tok_->encode("Tim");
  ids.insert(ids.end(), word.begin(), word.end());
  const std::vector<std::string> deltas = stream_deltas(*tok_, ids);
  EXPECT_EQ(join(deltas), tok_->decode(ids));
  EXPECT_EQ(deltas[2].substr(0, 6), fffd + fffd);
}

// Whatever the ids, the deltas are whole characters and add up to decode().
TEST_F(StreamDecoderTest, RandomIdSequencesAddUpToDecode) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any_id(-2, tok_->vocab_size() + 1);  // includes invalid ids
  std::uniform_int_distribution<int> byte_value(0x80, 0xFF);
  for (int round = 0; round < 2000; ++round) {
    std::vector<int32_t> ids(rng() % 24);
    for (int32_t& id : ids) id = rng() % 2 ? byte_id(*tok_, static_cast<uint8_t>(byte_value(rng))) : any_id(rng);
    const std::vector<std::string> deltas = stream_deltas(*tok_, ids);
    ASSERT_EQ(join(deltas), tok_->decode(ids)) << "round " << round;
    for (const std::string& d : deltas) ASSERT_TRUE(whole_characters(d)) << "round " << round;
  }
}

// The server seeds a decoder with the prompt and streams the continuation:
// its first piece keeps the leading space that decode() would give it.
TEST_F(StreamDecoderTest, ContinuationAfterPromptKeepsItsSpace) {
  const std::vector<int32_t> prompt = tok_->encode("Once upon a time", /*add_bos=*/true);
  const std::vector<int32_t> more = tok_->encode("there was");
  StreamDecoder dec(*tok_);
  std::string prompt_text;
  for (const int32_t id : prompt) prompt_text += dec.push(id);
  std::string continuation;
  for (const int32_t id : more) continuation += dec.push(id);
  continuation += dec.flush();
  EXPECT_EQ(prompt_text, "Once upon a time");
  EXPECT_EQ(continuation, " there was");
}

}  // namespace
}  // namespace chatradio::model
