// chatradio-server's options: defaults, command line, JSON config file (the
// command line wins), and a precise message for every kind of bad usage.
#include <sstream>

#include "kernels/cpu/thread_pool.h"
#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

// parse_options over a list of arguments (argv[0] added).
bool parse(ServerOptions& dst, std::vector<std::string> args) {
  args.insert(args.begin(), "chatradio-server");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_options(dst, static_cast<int>(argv.size()), argv.data());
}

std::string error_of(std::vector<std::string> args) {
  ServerOptions o;
  try {
    parse(o, std::move(args));
  } catch (const OptionsError& e) {
    return e.what();
  }
  return "";
}

class ServiceOptions : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

TEST_F(ServiceOptions, DefaultsAndCommandLine) {
  ServerOptions o;
  ASSERT_TRUE(parse(o, {"--model", model_dir()}));
  EXPECT_EQ(o.port, 50051);
  EXPECT_EQ(o.metrics_port, 9464);
  EXPECT_EQ(o.metrics_host, "127.0.0.1") << "plain-HTTP metrics stay on loopback unless asked";
  EXPECT_EQ(o.max_metadata_bytes, 64 << 10);
  EXPECT_EQ(o.threads, kernels::cpu::default_thread_count());
  EXPECT_EQ(o.default_preset, Preset::kPaper);
  EXPECT_EQ(o.templates_path, std::string(CHATRADIO_SOURCE_DIR) + "/deploy/templates.json");
  EXPECT_TRUE(o.reflection);
  EXPECT_EQ(o.quantize, "");

  ServerOptions p;
  ASSERT_TRUE(parse(p, {"--model", model_dir(), "--port=6000", "--metrics-port", "0", "--threads", "3",
                        "--kv-blocks", "99", "--kv-dtype", "f32", "--quantize", "int4", "--drain-timeout", "2.5", "--max-waiting", "7",
                        "--default-preset", "greedy", "--max-input-bytes", "1000", "--reflection", "false",
                        "--templates", test_templates()}));
  EXPECT_EQ(p.port, 6000);
  EXPECT_EQ(p.metrics_port, 0);
  EXPECT_EQ(p.threads, 3);
  EXPECT_EQ(p.kv_blocks, 99);
  EXPECT_EQ(o.kv_dtype, "f16");
  EXPECT_EQ(p.kv_dtype, "f32");
  EXPECT_EQ(p.quantize, "int4");
  EXPECT_DOUBLE_EQ(p.drain_timeout_s, 2.5);
  EXPECT_EQ(p.max_waiting, 7);
  EXPECT_EQ(p.default_preset, Preset::kGreedy);
  EXPECT_EQ(p.max_input_bytes, 1000u);
  EXPECT_FALSE(p.reflection);
  ServerOptions m;
  ASSERT_TRUE(parse(m, {"--model", model_dir(), "--metrics-host", "0.0.0.0", "--max-metadata-bytes", "32768"}));
  EXPECT_EQ(m.metrics_host, "0.0.0.0");
  EXPECT_EQ(m.max_metadata_bytes, 32768);

  ServerOptions h;
  EXPECT_FALSE(parse(h, {"--help"})) << "--help asks for the help text, nothing else is checked";
}

TEST_F(ServiceOptions, ConfigFileWithCommandLineOverridesAndRelativePaths) {
  TempDir dir;
  std::filesystem::create_directories(dir.file("conf"));
  dir.write("conf/tokens", "t\n");
  const std::string cfg = dir.write("conf/server.json", R"({
    "model": ")" + model_dir() + R"(",
    "port": 7000,
    "metrics-port": 7001,
    "auth-token-file": "tokens",
    "drain-timeout": 3,
    "retry-empty": false,
    "default-preset": "greedy"
  })");
  ServerOptions o;
  ASSERT_TRUE(parse(o, {"--port", "7100", "--config", cfg}));
  EXPECT_EQ(o.port, 7100) << "the command line wins, wherever --config stands";
  EXPECT_EQ(o.metrics_port, 7001);
  EXPECT_EQ(o.auth_token_file, dir.file("conf/tokens")) << "relative to the config file's folder";
  EXPECT_DOUBLE_EQ(o.drain_timeout_s, 3.0);
  EXPECT_FALSE(o.retry_empty);
  EXPECT_EQ(o.default_preset, Preset::kGreedy);
}

TEST_F(ServiceOptions, BadUsageHasPreciseMessages) {
  const std::string m = model_dir();
  EXPECT_EQ(error_of({}), "missing required option --model DIR");
  EXPECT_EQ(error_of({"--model", m, "--bogus", "1"}), "unknown option --bogus (see --help)");
  EXPECT_EQ(error_of({"--model", m, "--port"}), "option --port needs a value");
  EXPECT_EQ(error_of({"--model", m, "--port", "70000"}), "--port must be an integer in [0, 65535], got '70000'");
  EXPECT_EQ(error_of({"--model", m, "--threads", "two"}), "--threads must be an integer in [1, 4096], got 'two'");
  EXPECT_EQ(error_of({"--model", m, "--drain-timeout", "-1"}),
            "--drain-timeout must be a number in [0, 86400], got '-1'");
  EXPECT_EQ(error_of({"--model", m, "--default-preset", "fast"}),
            "--default-preset must be one of paper, greedy, got 'fast'");
  EXPECT_EQ(error_of({"--model", m, "--quantize", "int8"}), "--quantize must be one of int4, none, got 'int8'");
  EXPECT_EQ(error_of({"--model", m, "--reflection", "maybe"}), "--reflection must be true or false, got 'maybe'");
  EXPECT_EQ(error_of({"--model", "/nonexistent/model"}), "--model '/nonexistent/model' is not a directory");
  EXPECT_EQ(error_of({"--model", m, "--weight-cache", "/nonexistent/cache"}),
            "--weight-cache '/nonexistent/cache' is not a directory");
  EXPECT_EQ(error_of({"--model", m, "--tls-cert", "/etc/hostname"}),
            "--tls-cert and --tls-key go together: give both or neither");
  EXPECT_EQ(error_of({"--model", m, "--tls-client-ca", "/etc/hostname"}),
            "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  EXPECT_EQ(error_of({"--model", m, "--auth-token-file", "/nonexistent/tokens"}),
            "--auth-token-file '/nonexistent/tokens' cannot be read");
  EXPECT_EQ(error_of({"--model", m, "--port", "9000", "--metrics-port", "9000"}),
            "--port and --metrics-port are both 9000");
  EXPECT_EQ(error_of({"--model", m, "stray"}), "unexpected argument 'stray'");
  EXPECT_NE(error_of({"--model", m, "--max-input-bytes", "400000"}).find("--max-receive-message-bytes"),
            std::string::npos);

  TempDir dir;
  const auto cfg_error = [&](const std::string& json) {
    return error_of({"--config", dir.write("c.json", json)});
  };
  EXPECT_NE(cfg_error("{nope").find("c.json: invalid JSON"), std::string::npos);
  EXPECT_EQ(cfg_error("[1]"), dir.file("c.json") + ": the config must be a JSON object of option names");
  EXPECT_EQ(cfg_error(R"({"prot": 1})"), dir.file("c.json") + ": \"prot\" is not an option (see --help)");
  EXPECT_EQ(cfg_error(R"({"port": "1"})"), dir.file("c.json") + ": \"port\" must be an integer");
  EXPECT_EQ(cfg_error(R"({"port": 1.5})"), dir.file("c.json") + ": \"port\" must be an integer");
  EXPECT_EQ(cfg_error(R"({"reflection": "yes"})"), dir.file("c.json") + ": \"reflection\" must be true or false");
  EXPECT_EQ(cfg_error(R"({"config": "x"})"), dir.file("c.json") + ": \"config\" is a command-line option only");
  EXPECT_EQ(error_of({"--config", "/nonexistent.json"}), "--config '/nonexistent.json' cannot be read");
}

// Both escaped parse_options as other exception types (nlohmann's
// out_of_range, std::filesystem_error), which server_main does not catch: the
// server died in std::terminate instead of exiting 2 with the message
// (tests/fuzz server_config).
TEST(ServiceOptionsErrors, NumberOverflowAndOverlongModelPathAreUsageErrors) {
  TempDir dir;
  const std::string cfg = dir.write("c.json", R"({"drain-grace": 1e400})");
  EXPECT_NE(error_of({"--config", cfg}).find("c.json: invalid JSON: "), std::string::npos);
  const std::string long_name(300, 'm');  // over NAME_MAX: stat() fails with ENAMETOOLONG
  EXPECT_EQ(error_of({"--model", long_name}), "--model '" + long_name + "' is not a directory");
}

TEST(ServiceOptionsExample, DeployExampleConfigParses) {
  // Its paths are a production machine's, so only the parsing is checked here.
  const std::string path = std::string(CHATRADIO_SOURCE_DIR) + "/deploy/server.example.json";
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  ServerOptions o;
  ASSERT_NO_THROW(apply_config_json(o, text.str(), path));
  EXPECT_EQ(o.templates_path, std::string(CHATRADIO_SOURCE_DIR) + "/deploy/templates.json");
  EXPECT_EQ(o.port, 50051);
  EXPECT_EQ(o.tls_client_ca, "/etc/chatradio/tls/clients-ca.pem");
  EXPECT_DOUBLE_EQ(o.drain_grace_s, 5.0);
}

TEST(ServiceOptionsHelp, DocumentsEveryOption) {
  const std::string h = help_text();
  for (const char* opt : {"--model", "--port", "--metrics-port", "--config", "--templates", "--threads", "--kv-blocks", "--kv-dtype",
                          "--quantize", "--tls-cert", "--tls-key", "--tls-client-ca", "--auth-token-file",
                          "--drain-timeout", "--drain-grace", "--max-waiting", "--default-preset",
                          "--max-input-bytes", "--max-receive-message-bytes", "--max-send-message-bytes",
                          "--keepalive-time", "--keepalive-timeout", "--jieba-dict", "--repetition-guard",
                          "--retry-empty", "--help"}) {
    EXPECT_NE(h.find(std::string(opt) + " "), std::string::npos) << opt;
  }
}

}  // namespace
}  // namespace chatradio::service::testing
