// Conformance against the real SentencePiece: tests/tokenizer/spm_oracle.py
// (Debian's python3-sentencepiece) writes expected ids and decoded text for
// every report text of both data sets, the llama.cpp vectors, edge cases,
// seeded random Unicode and long texts, and the decoded text of random id
// sequences; each tokenizer must reproduce all of them, through decode() and
// through StreamDecoder.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

constexpr const char* kPython = "/usr/bin/python3";  // the one with python3-sentencepiece

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

// A fresh directory for one oracle run, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "chatradio-spm-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Reads "<len>\n<bytes>\n".
std::string read_blob(std::istream& in) {
  size_t n = 0;
  in >> n;
  in.get();
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  in.get();
  return s;
}

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
  size_t count = 0;
  in >> count;
  in.get();
  dst.cases.resize(count);
  for (OracleCase& c : dst.cases) {
    std::getline(in, c.label);
    c.text = read_blob(in);
    c.ids = read_ids(in);
    c.decoded = read_blob(in);
  }
  in >> count;
  in.get();
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
  if (!std::filesystem::exists(kPython)) {
    o.skip = std::string(kPython) + " not found; run scripts/setup (python3-sentencepiece)";
    return o;
  }
  const TempDir dir;
  const std::string script = std::string(CHATRADIO_SOURCE_DIR) + "/tests/tokenizer/spm_oracle.py";
  const std::string err = dir.path() + "/stderr.txt";
  const std::string cmd = std::string(kPython) + " '" + script + "' --shared '" + CHATRADIO_SHARED_DIR +
                          "' --out '" + dir.path() + "' --tokenizer " + name + " 2>'" + err + "'";
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 3 || code == 4) {
    o.skip = slurp(err);  // sentencepiece or a test asset missing; the script says which
    return o;
  }
  if (code != 0) {
    o.error = "spm_oracle.py exited with " + std::to_string(code) + ": " + slurp(err);
    return o;
  }
  std::string model_path = slurp(dir.path() + "/model_path");
  while (!model_path.empty() && model_path.back() == '\n') model_path.pop_back();
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

// Well-formed UTF-8 (no surrogates, no overlongs), as a stream delta must be.
bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    const auto b1 = static_cast<uint8_t>(n > 1 ? s[i + 1] : 0);
    if ((c == 0xE0 && b1 < 0xA0) || (c == 0xED && b1 >= 0xA0) || (c == 0xF0 && b1 < 0x90) ||
        (c == 0xF4 && b1 >= 0x90)) {
      return false;
    }
    i += n;
  }
  return true;
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
      deltas_valid = deltas_valid && is_valid_utf8(delta);
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
