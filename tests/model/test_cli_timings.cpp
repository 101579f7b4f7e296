// `chatradio generate --timings`: one stderr line with load time, prompt
// tokens, TTFT and prefill/decode speed, while stdout keeps exactly the text
// it prints without the flag (and the line never carries the text). Values are
// checked for shape and sign only: timing thresholds do not belong in tests.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "tests/common/shared.h"
#include "tests/common/temp_dir.h"

namespace chatradio::testing {
namespace {

struct CliRun {
  int code = -1;
  std::string out, err;
};

CliRun generate(const std::string& args) {
  const TempDir tmp("chatradio-timings");
  const std::string bin = std::string(CHATRADIO_BINARY_DIR) + "/server/chatradio";
  const int status = std::system((bin + " generate " + args + " >" + (tmp / "out") + " 2>" + (tmp / "err")).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(tmp / "out"), slurp(tmp / "err")};
}

// "timings: k=v k=v ...\n" -> {k: v}; empty when stderr is not exactly that line.
std::map<std::string, std::string> parse_timings(const std::string& err) {
  std::map<std::string, std::string> kv;
  if (err.rfind("timings: ", 0) != 0 || err.find('\n') != err.size() - 1) return kv;
  std::istringstream in(err.substr(9));
  for (std::string field; in >> field;) {
    const size_t eq = field.find('=');
    if (eq == std::string::npos) return {};
    kv[field.substr(0, eq)] = field.substr(eq + 1);
  }
  return kv;
}

TEST(CliGenerateTimings, PrintsOneLineAndLeavesTheTextAlone) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  const std::string model = shared_path("models/stories260K");
  const CliRun plain = generate("--model " + model + " --prompt '' --max-tokens 40 --threads 1");
  const CliRun timed = generate("--model " + model + " --prompt '' --max-tokens 40 --threads 1 --timings");
  ASSERT_EQ(plain.code, 0) << plain.err;
  ASSERT_EQ(timed.code, 0) << timed.err;
  EXPECT_EQ(plain.err, "");
  EXPECT_EQ(timed.out, plain.out);
  const std::string reference = slurp(shared_path("models/stories260K/expected_greedy_bos_200.txt"));
  EXPECT_EQ(timed.out.substr(0, 40), reference.substr(0, 40));

  const auto kv = parse_timings(timed.err);
  ASSERT_FALSE(kv.empty()) << "stderr: " << timed.err;
  EXPECT_EQ(kv.at("prompt_tokens"), "1");  // BOS alone
  EXPECT_EQ(kv.at("generated_tokens"), "40");
  for (const char* key : {"load_s", "ttft_s", "prefill_tok_s", "decode_tok_s"}) {
    ASSERT_TRUE(kv.count(key)) << key << " missing: " << timed.err;
    char* end = nullptr;
    const double v = std::strtod(kv.at(key).c_str(), &end);
    EXPECT_TRUE(*end == '\0' && v >= 0) << key << "=" << kv.at(key);
  }
  EXPECT_GT(std::strtod(kv.at("decode_tok_s").c_str(), nullptr), 0);
  // Patient data stays out of the line: no word of the generated text.
  EXPECT_EQ(timed.err.find("Lily"), std::string::npos);
}

TEST(CliGenerateTimings, SaysNotApplicableWithoutTokens) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  const CliRun r = generate("--model " + shared_path("models/stories260K") + " --prompt hi --max-tokens 0 --timings");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto kv = parse_timings(r.err);
  ASSERT_FALSE(kv.empty()) << "stderr: " << r.err;
  EXPECT_EQ(kv.at("generated_tokens"), "0");
  EXPECT_EQ(kv.at("ttft_s"), "n/a");
  EXPECT_EQ(kv.at("decode_tok_s"), "n/a");
}

}  // namespace
}  // namespace chatradio::testing
