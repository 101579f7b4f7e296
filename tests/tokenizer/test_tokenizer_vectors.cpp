// The 46 Llama-2 tokenizer cases that llama.cpp checks (shared/README.md):
// exact ids, no BOS, and decode giving the text back.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

using ::chatradio::testing::shared_path;
using ::chatradio::testing::slurp;

// .inp: cases separated by "\n__ggml_vocab_test__\n" (also after the last one).
std::vector<std::string> read_cases(const std::string& path) {
  const std::string all = slurp(path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> cases;
  size_t pos = 0;
  for (size_t hit; (hit = all.find(sep, pos)) != std::string::npos; pos = hit + sep.size()) {
    cases.push_back(all.substr(pos, hit - pos));
  }
  return cases;
}

// .out: one line of space-separated ids per case.
std::vector<std::vector<int32_t>> read_ids(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<int32_t>> out;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ss(line);
    std::vector<int32_t> ids;
    for (int32_t id; ss >> id;) ids.push_back(id);
    out.push_back(std::move(ids));
  }
  return out;
}

TEST(TokenizerVectors, Llama2MatchesAll46Cases) {
  CHATRADIO_REQUIRE_SHARED("tokenizers/llama2/tokenizer.model");
  CHATRADIO_REQUIRE_SHARED("tokenizers/llama-spm-vectors/ggml-vocab-llama-spm.gguf.inp");
  const Tokenizer tok = Tokenizer::load(shared_path("tokenizers/llama2/tokenizer.model"));
  const std::string base = shared_path("tokenizers/llama-spm-vectors/ggml-vocab-llama-spm.gguf");
  const std::vector<std::string> cases = read_cases(base + ".inp");
  const std::vector<std::vector<int32_t>> expected = read_ids(base + ".out");
  ASSERT_EQ(cases.size(), 46u);
  ASSERT_EQ(expected.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(tok.encode(cases[i]), expected[i]) << "case " << i << ": '" << cases[i] << "'";
    // Llama 2 keeps every space, so decoding gives the text back exactly.
    EXPECT_EQ(tok.decode(expected[i]), cases[i]) << "case " << i;
  }
}

TEST(TokenizerVectors, Llama2Basics) {
  CHATRADIO_REQUIRE_SHARED("tokenizers/llama2/tokenizer.model");
  const Tokenizer tok = Tokenizer::load(shared_path("tokenizers/llama2/tokenizer.model"));
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece(1), "<s>");
  EXPECT_EQ(tok.piece(13), "<0x0A>");
  EXPECT_EQ(tok.piece(-1), "");
  EXPECT_EQ(tok.piece(32000), "");
  EXPECT_EQ(tok.encode("", true), std::vector<int32_t>{1});
  EXPECT_EQ(tok.encode("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
  // "<s>" in a text is spelled out, never read as BOS.
  EXPECT_EQ(tok.encode("<s>"), (std::vector<int32_t>{529, 29879, 29958}));
  // Control ids render as nothing; unknown and out-of-range ids as " ⁇ ".
  EXPECT_EQ(tok.decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(tok.decode({0}), " \xE2\x81\x87 ");
  EXPECT_EQ(tok.decode({32000}), " \xE2\x81\x87 ");
}

}  // namespace
}  // namespace chatradio::model
