// The quantize and synth subcommands as a user runs them: exit codes (2 for
// usage, 1 for failures) and a single summary line when stderr is a file.
#include <filesystem>
#include <fstream>

#include "tests/quantize/quantize_testing.h"

namespace chatradio::model {
namespace {

using qtest::exit_code;
using qtest::TempDir;
namespace fs = std::filesystem;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(bin_)) FAIL() << bin_ << " not built: build the chatradio target first";
  }
  int run(const std::string& args) { return exit_code(bin_ + " " + args + " >/dev/null 2>" + err_); }
  std::string err() const { return qtest::read_file(err_); }

  const std::string bin_ = qtest::chatradio_binary();
  TempDir tmp_;
  const std::string err_ = tmp_ / "stderr.txt";
};

TEST_F(Cli, UsageErrorsExitTwo) {
  const std::string out = tmp_ / "out";
  EXPECT_EQ(run("quantize"), 2);
  EXPECT_NE(err().find("--model"), std::string::npos) << err();
  EXPECT_EQ(run("quantize --model m"), 2);
  EXPECT_NE(err().find("--out"), std::string::npos) << err();
  EXPECT_EQ(run("quantize --model m --out " + out + " --group-size 48"), 2);
  EXPECT_NE(err().find("48"), std::string::npos) << err();
  EXPECT_EQ(run("quantize --model m --out " + out + " --bits 3"), 2);
  EXPECT_EQ(run("synth --out " + out), 2);
  EXPECT_EQ(run("synth --shape gpt2 --out " + out), 2);
  EXPECT_NE(err().find("tinyllama-1.1b"), std::string::npos) << "lists the known shapes: " << err();
  EXPECT_EQ(run("synth --shape stories260k --out " + out + " --format f8"), 2);
  EXPECT_EQ(run("synth --shape stories260k --out " + out + " --seed -1"), 2);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(run("quantize --help"), 0);
  EXPECT_EQ(run("synth --help"), 0);
}

TEST_F(Cli, FailuresExitOne) {
  EXPECT_EQ(run("quantize --model " + tmp_ / "missing" + " --out " + tmp_ / "out"), 1);
  EXPECT_NE(err().find("missing"), std::string::npos) << err();
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  fs::create_directories(tmp_ / "full");
  std::ofstream(tmp_ / "full/x") << "x";
  EXPECT_EQ(run("synth --shape stories260k --out " + tmp_ / "full"), 1);
  EXPECT_NE(err().find("not empty"), std::string::npos) << err();
}

TEST_F(Cli, SynthThenQuantizeWithOneSummaryLineEach) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  const std::string model = testing::shared_path("models/stories260K");
  ASSERT_EQ(run("synth --shape stories260k --format f16 --seed 5 --out " + tmp_ / "f16"), 0) << err();
  std::string e = err();
  EXPECT_EQ(e.find('\r'), std::string::npos) << "no progress bar when stderr is a file";
  EXPECT_EQ(std::count(e.begin(), e.end(), '\n'), 1) << e;
  EXPECT_EQ(e.rfind("chatradio synth: ", 0), 0u) << e;

  ASSERT_EQ(run("quantize --model " + tmp_ / "f16" + " --out " + tmp_ / "q --group-size 32"), 0) << err();
  e = err();
  EXPECT_EQ(std::count(e.begin(), e.end(), '\n'), 1) << e;
  EXPECT_NE(e.find("35 linears int4"), std::string::npos) << e;
  EXPECT_TRUE(fs::exists(tmp_ / "q/quantize_config.json"));
  EXPECT_FALSE(fs::exists(tmp_ / "q/tokenizer.model")) << "synth copies no tokenizer unless asked";

  ASSERT_EQ(run("quantize --model " + model + " --out " + tmp_ / "real"), 0) << err();
  EXPECT_TRUE(fs::exists(tmp_ / "real/tokenizer.model"));
}

}  // namespace
}  // namespace chatradio::model
