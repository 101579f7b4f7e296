// Conformance against the real SentencePiece: tests/tokenizer/spm_oracle.py
// (Debian's python3-sentencepiece) writes expected ids and decoded text for
// every report text of both data sets, the llama.cpp vectors, edge cases,
// seeded random Unicode and long texts, and the decoded text of random id
// sequences; each tokenizer must reproduce all of them, through decode() and
// through StreamDecoder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/common/oracle.h"
#include "tests/common/shared.h"
#include "tests/common/utf8.h"

namespace chatradio::model {
namespace {

struct OracleCase {
  std::string label;
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
};

struct Oracle {
  std::string skip;   // why the oracle is unavailable; empty when it ran
  std::string error;  // the oracle itself failed
  std::string model_path;
  std::vector<OracleCase> cases;
  std::vector<OracleCase> decode_only;  // random id sequences: no text, ids and decoded only
};

using ::chatradio::testing::read_blob;
using ::chatradio::testing::read_count;

std::vector<int32_t> read_ids(std::istream& in) {
  std::string line;
  std::getline(in, line);
  std::istringstream ss(line);
  std::vector<int32_t> ids;
  for (int32_t id; ss >> id;) ids.push_back(id);
  return ids;
}

// cases.bin as spm_oracle.py documents it.
void read_cases(Oracle& dst, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  dst.cases.resize(read_count(in));
  for (OracleCase& c : dst.cases) {
    std::getline(in, c.label);
    c.text = read_blob(in);
    c.ids = read_ids(in);
    c.decoded = read_blob(in);
  }
  const size_t count = read_count(in);
  dst.decode_only.resize(count);
  for (size_t i = 0; i < count; ++i) {
    OracleCase& c = dst.decode_only[i];
    c.label = "random id sequence " + std::to_string(i);
    c.ids = read_ids(in);
    c.decoded = read_blob(in);
  }
  if (!in) throw std::runtime_error(path + ": truncated oracle output");
}

Oracle run_oracle(const std::string& name) {
  Oracle o;
  const testing::TempDir dir("chatradio-spm");
  // Debian's /usr/bin/python3, with python3-sentencepiece.
  const testing::OracleRun run =
      testing::run_oracle_script("tests/tokenizer/spm_oracle.py", dir.path(), "--tokenizer " + name,
                                 "; run scripts/setup (python3-sentencepiece)");
  o.skip = run.skip;
  o.error = run.error;
  if (!run.ok()) return o;
  std::string model_path = testing::slurp_line(dir.path() + "/model_path");
  read_cases(o, dir.path() + "/cases.bin");
  // Trained models live in the temporary directory: keep a copy beside the test.
  if (model_path.starts_with(dir.path())) {
    const std::string keep = std::string(CHATRADIO_BINARY_DIR) + "/tokenizer-oracle-" + name + ".model";
    std::filesystem::copy_file(model_path, keep, std::filesystem::copy_options::overwrite_existing);
    model_path = keep;
  }
  o.model_path = model_path;
  return o;
}

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (const int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

class TokenizerOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerOracle, MatchesSentencePiece) {
  const Oracle oracle = run_oracle(GetParam());
  if (!oracle.skip.empty()) GTEST_SKIP() << oracle.skip;
  ASSERT_TRUE(oracle.error.empty()) << oracle.error;
  ASSERT_GT(oracle.cases.size(), 9000u);
  const Tokenizer tok = Tokenizer::load(oracle.model_path);

  // Report the first few differences in full and count the rest, so that one
  // bug does not bury the log under thousands of failures.
  constexpr int kShown = 8;
  int encode_diffs = 0, decode_diffs = 0, stream_diffs = 0;
  for (const OracleCase& c : oracle.cases) {
    const std::vector<int32_t> ids = tok.encode(c.text);
    if (ids != c.ids && ++encode_diffs <= kShown) {
      ADD_FAILURE() << c.label << ": encode('" << c.text << "')\n  ours: " << ids_str(ids)
                    << "\n  spm:  " << ids_str(c.ids);
    }
  }
  ASSERT_GE(oracle.decode_only.size(), 500u);
  std::vector<const OracleCase*> to_decode;
  for (const OracleCase& c : oracle.cases) to_decode.push_back(&c);
  for (const OracleCase& c : oracle.decode_only) to_decode.push_back(&c);
  for (const OracleCase* c : to_decode) {
    const std::string decoded = tok.decode(c->ids);
    if (decoded != c->decoded && ++decode_diffs <= kShown) {
      ADD_FAILURE() << c->label << ": decode(" << ids_str(c->ids) << ")\n  ours: '" << decoded
                    << "'\n  spm:  '" << c->decoded << "'";
    }
    StreamDecoder stream(tok);
    std::string joined;
    bool deltas_valid = true;
    for (const int32_t id : c->ids) {
      const std::string delta = stream.push(id);
      deltas_valid = deltas_valid && testing::is_utf8(delta, /*strict=*/true);
      joined += delta;
    }
    joined += stream.flush();
    if ((joined != c->decoded || !deltas_valid) && ++stream_diffs <= kShown) {
      ADD_FAILURE() << c->label << ": streamed decode of " << ids_str(c->ids) << " gave '" << joined
                    << "' (deltas valid UTF-8: " << deltas_valid << "), spm '" << c->decoded << "'";
    }
  }
  EXPECT_EQ(encode_diffs, 0) << "texts whose ids differ from sentencepiece";
  EXPECT_EQ(decode_diffs, 0) << "id sequences whose decoded text differs from sentencepiece";
  EXPECT_EQ(stream_diffs, 0) << "id sequences whose StreamDecoder output differs";
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TokenizerOracle,
                         ::testing::Values("llama2", "chinese-llama2", "stories260K", "trained-unk-user",
                                           "trained-suffix", "trained-no-prefix"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace chatradio::model
