// The real chatradio-server binary: exit codes, and the Python end-to-end
// client (client_test.py) with stubs generated from proto/ at test time,
// including SIGTERM with requests in flight -> drain -> exit 0.
#include <sys/wait.h>

#include <cstdlib>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

const std::string kBinary = std::string(CHATRADIO_BINARY_DIR) + "/server/service/chatradio-server";

int exit_status(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

TEST(ServiceBinary, UsageErrorsExitTwoAndHelpExitsZero) {
  ASSERT_TRUE(std::filesystem::exists(kBinary)) << kBinary;
  EXPECT_EQ(exit_status(quote(kBinary) + " --help >/dev/null"), 0);
  EXPECT_EQ(exit_status(quote(kBinary) + " --bogus 2>/dev/null"), 2);
  EXPECT_EQ(exit_status(quote(kBinary) + " 2>/dev/null"), 2) << "--model is required";
  EXPECT_EQ(exit_status(quote(kBinary) + " --model /nonexistent 2>/dev/null"), 2);
}

TEST(ServiceBinary, PythonClientEndToEnd) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  ASSERT_EQ(exit_status("/usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null"), 0)
      << "Debian's python3-grpcio and python3-protobuf are missing: run scripts/setup";
  ASSERT_EQ(exit_status("command -v protoc >/dev/null && test -x /usr/bin/grpc_python_plugin"), 0)
      << "protoc or grpc_python_plugin missing: run scripts/setup";
  TempDir dir;
  const std::string log = dir.file("client.log");
  const std::string cmd = "/usr/bin/python3 " + quote(std::string(CHATRADIO_SOURCE_DIR) + "/tests/service/client_test.py") +
                          " --server " + quote(kBinary) + " --model " + quote(model_dir()) + " --templates " +
                          quote(test_templates()) + " --proto-root " +
                          quote(std::string(CHATRADIO_SOURCE_DIR) + "/proto") + " > " + quote(log) + " 2>&1";
  const int rc = exit_status(cmd);
  std::ifstream in(log);
  std::stringstream out;
  out << in.rdbuf();
  EXPECT_EQ(rc, 0) << out.str();
  EXPECT_NE(out.str().find("client_test: all checks passed"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace chatradio::service::testing
