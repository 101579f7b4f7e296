// Tokenizer::encode_continuation: a text read as the continuation of earlier
// text, without the dummy-prefix "▁". Score relies on it to give back the ids
// a model generated after a prompt (server/service/request_mapping.cpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

using ::chatradio::testing::shared_path;

constexpr const char* kLlama2 = "tokenizers/llama2/tokenizer.model";

TEST(TokenizerContinuation, FirstPieceHasNoDummyPrefix) {
  CHATRADIO_REQUIRE_SHARED(kLlama2);
  const Tokenizer tok = Tokenizer::load(shared_path(kLlama2));
  const std::vector<int32_t> whole = tok.encode("Hello world");
  const std::vector<int32_t> cont = tok.encode_continuation("Hello world");
  ASSERT_EQ(whole.size(), 2u);
  ASSERT_EQ(cont.size(), 2u);
  EXPECT_EQ(tok.piece(whole[0]), "\xE2\x96\x81Hello");
  EXPECT_EQ(tok.piece(cont[0]), "Hello");
  EXPECT_EQ(cont[1], whole[1]);  // only the start of the text differs
}

TEST(TokenizerContinuation, DecodesBackToTheTextAndNeverAddsAToken) {
  CHATRADIO_REQUIRE_SHARED(kLlama2);
  const Tokenizer tok = Tokenizer::load(shared_path(kLlama2));
  for (const std::string text : {"No acute cardiopulmonary disease.", ".", "\nLungs clear.", "ce", "双肺纹理清晰。",
                                 "1. Stable cardiomegaly.\n2. No effusion."}) {
    const std::vector<int32_t> cont = tok.encode_continuation(text);
    EXPECT_EQ(tok.decode(cont), text) << text;
    EXPECT_LE(cont.size(), tok.encode(text).size()) << text;
  }
  EXPECT_TRUE(tok.encode_continuation("").empty());
}

}  // namespace
}  // namespace chatradio::model
