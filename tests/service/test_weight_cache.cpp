// --weight-cache on the server (docs/weight-cache.md): the first start is
// ready before the cache is written (it is written in the background and the
// outcome logged), the second start maps it, and both answer the same.
// The suite name starts with Service: like the other gRPC-facing suites it is
// left out of the TSan run (Debian's gRPC is not TSan-built; docs/testing.md).
#include <chrono>
#include <filesystem>
#include <thread>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

// The first log line holding every one of `parts`, waiting up to `limit`.
std::string wait_line(TestServer& ts, std::initializer_list<std::string> parts, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  do {
    for (const std::string& l : ts.log_lines()) {
      bool all = true;
      for (const std::string& p : parts) all = all && l.find(p) != std::string::npos;
      if (all) return l;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < end);
  return "";
}

std::string impression(TestServer& ts) {
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("The lungs are clear. No effusion.", 24), &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.impression();
}

TEST(ServiceWeightCache, FirstStartWritesItInTheBackgroundTheNextMapsIt) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  TempDir cache;
  ServerOptions o = test_options();
  o.quantize = "int4";
  o.weight_cache_dir = cache.path();
  std::string first;
  {
    TestServer ts(o);
    EXPECT_NE(wait_line(ts, {"\"event\":\"ready\"", "\"weight_cache\":\"miss (no cache for this checkpoint); "
                                                    "writing in the background\""},
                        std::chrono::seconds(0)),
              "");
    EXPECT_NE(wait_line(ts, {"\"event\":\"weight_cache\"", "\"outcome\":\"written, "}, std::chrono::seconds(120)), "")
        << "no weight_cache event";
    first = impression(ts);
  }
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(cache.path())) {
    EXPECT_EQ(e.path().extension(), ".cache") << e.path();
    ++files;
  }
  EXPECT_EQ(files, 1);
  TestServer ts(o);
  EXPECT_NE(wait_line(ts, {"\"event\":\"ready\"", "\"weight_cache\":\"hit\""}, std::chrono::seconds(0)), "");
  EXPECT_EQ(impression(ts), first);
  EXPECT_FALSE(first.empty());
}

}  // namespace
}  // namespace chatradio::service::testing
