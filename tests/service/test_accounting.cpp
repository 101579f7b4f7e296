// Exact accounting (docs/service.md "Accounting"): every call that reaches a
// handler ends in exactly one request log line and one metric sample, with the
// status the client saw; cancelled and expired calls are told apart by the
// call's context; tokens generated before a call ended are counted; client
// strings are clipped; library logging arrives as JSON lines. Through the real
// channel, against the real server.
#include <arpa/inet.h>
#include <grpc/support/log.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>

#include <future>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

using grpc::StatusCode;
using grpc::health::v1::HealthCheckResponse;
using Ms = std::chrono::milliseconds;

class ServiceAccounting : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

// The request lines as JSON objects.
std::vector<nlohmann::json> request_records(TestServer& ts, const std::string& rpc = "") {
  std::vector<nlohmann::json> out;
  for (const std::string& l : ts.request_lines(rpc)) out.push_back(nlohmann::json::parse(l));
  return out;
}

// chatradio_requests_total{code=..,rpc=..} as scraped, 0 when absent.
double requests_total(TestServer& ts, const std::string& rpc, const std::string& code) {
  const std::string text = ts.server().metrics().render_text();
  const std::string key = "chatradio_requests_total{code=\"" + code + "\",rpc=\"" + rpc + "\"} ";
  const size_t at = text.find(key);
  return at == std::string::npos ? 0 : std::stod(text.substr(at + key.size()));
}

double counter(TestServer& ts, const std::string& name) {
  const std::string text = ts.server().metrics().render_text();
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
}

// Whether something accepts TCP connections on 127.0.0.1:port.
bool accepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// Every request line's code, counted, equals the metric's counts.
void expect_metrics_match_logs(TestServer& ts) {
  std::map<std::pair<std::string, std::string>, int> by_line;
  for (const nlohmann::json& r : request_records(ts)) ++by_line[{r["rpc"], r["code"]}];
  for (const auto& [key, n] : by_line) {
    EXPECT_EQ(requests_total(ts, key.first, key.second), n) << key.first << " " << key.second;
  }
}

TEST_F(ServiceAccounting, CallsThatEndBeforeTheirMessageArrivesAreClassifiedByTheContext) {
  TestServer ts;
  grpc::GenericStub stub(ts.channel());
  grpc::CompletionQueue cq;
  constexpr int kEach = 10;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::GenericClientAsyncReaderWriter>> calls;
  // Headers only: the request message is never sent. Half the calls expire,
  // half are cancelled by the client.
  for (int i = 0; i < 2 * kEach; ++i) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    const bool expire = i < kEach;
    if (expire) ctx->set_deadline(std::chrono::system_clock::now() + Ms(200));
    auto call = stub.PrepareCall(ctx.get(), "/chatradio.v1.ImpressionService/GenerateImpression", &cq);
    call->StartCall(reinterpret_cast<void*>(static_cast<intptr_t>(i + 1)));
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    if (!expire) ctx->TryCancel();
    ctxs.push_back(std::move(ctx));
    calls.push_back(std::move(call));
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    grpc::Status st;
    calls[i]->Finish(&st, reinterpret_cast<void*>(static_cast<intptr_t>(100 + i)));
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  ts.server().drain();  // every handler has returned
  cq.Shutdown();
  for (const nlohmann::json& r : request_records(ts, "GenerateImpression")) {
    EXPECT_TRUE(r["code"] == "DEADLINE_EXCEEDED" || r["code"] == "CANCELLED") << r.dump();
    EXPECT_EQ(r["generated_tokens"], 0) << r.dump();
  }
  EXPECT_EQ(requests_total(ts, "GenerateImpression", "INVALID_ARGUMENT"), 0);
  expect_metrics_match_logs(ts);
}

TEST_F(ServiceAccounting, AnExpiredDeadlineIsAlwaysDeadlineExceededWithTheTokensGenerated) {
  TestServer ts;
  ts.backend().delay_ms = 10;  // 300 tokens take 3 s: every deadline below passes mid-generation
  const double before = counter(ts, "chatradio_generated_tokens_total");
  constexpr int kCalls = 10;
  for (int i = 0; i < kCalls; ++i) {
    ts.backend().force(filler(300));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + Ms(250));
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 300), &resp);
    EXPECT_EQ(s.error_code(), StatusCode::DEADLINE_EXCEEDED);
    ASSERT_TRUE(ts.wait_engine_idle(Ms(5000)));
  }
  ts.server().drain();  // every handler has returned
  // On a loaded machine a call can expire before gRPC hands it to a handler
  // (no line, by design); every call that got one is the deadline.
  const auto records = request_records(ts, "GenerateImpression");
  EXPECT_GE(records.size(), kCalls / 2u);
  int generated = 0, with_tokens = 0;
  for (const nlohmann::json& r : records) {
    EXPECT_EQ(r["code"], "DEADLINE_EXCEEDED") << r.dump();
    const int n = r["generated_tokens"];
    if (n > 0) {
      ++with_tokens;
      EXPECT_EQ(r["error"], "deadline exceeded after " + std::to_string(n) + " generated tokens") << r.dump();
    }
    generated += n;
  }
  EXPECT_GE(with_tokens, 1);
  EXPECT_EQ(requests_total(ts, "GenerateImpression", "DEADLINE_EXCEEDED"), static_cast<double>(records.size()));
  EXPECT_EQ(counter(ts, "chatradio_generated_tokens_total"), before + generated);
}

TEST_F(ServiceAccounting, ACancelledStreamCountsItsTokens) {
  TestServer ts;
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(300));
  const double before = counter(ts, "chatradio_generated_tokens_total");
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 300));
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(reader->Read(&msg));
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::CANCELLED);
  ASSERT_GE(ts.wait_request_lines(1, "StreamImpression").size(), 1u);
  const nlohmann::json r = request_records(ts, "StreamImpression").at(0);
  EXPECT_EQ(r["code"], "CANCELLED") << r.dump();
  const int n = r["generated_tokens"];
  EXPECT_GE(n, 2) << r.dump();
  EXPECT_EQ(r["error"], "the client cancelled the request after " + std::to_string(n) + " generated tokens");
  EXPECT_EQ(counter(ts, "chatradio_generated_tokens_total"), before + n);
  expect_metrics_match_logs(ts);
}

TEST_F(ServiceAccounting, DrainTimeoutIsUnavailableForTheClientTheLogAndTheMetric) {
  ServerOptions o = test_options();
  o.drain_timeout_s = 0.3;
  TestServer ts(o);
  ts.backend().delay_ms = 10;
  ts.backend().force(filler(400));
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 400));  // ~4 s
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  auto drained = std::async(std::launch::async, [&] { ts.server().drain(); });
  // While the drain waits for the stream, the server still answers: new calls
  // are refused (and logged), health says NOT_SERVING.
  for (int i = 0; i < 1000 && !ts.server().draining(); ++i) std::this_thread::sleep_for(Ms(1));
  {
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&c, request("x"), &resp);
    EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
    EXPECT_EQ(s.error_message(), "the server is draining; retry on another instance");
  }
  auto health = ts.health();
  EXPECT_EQ(health_of(*health, ""), HealthCheckResponse::NOT_SERVING);
  while (reader->Read(&msg)) {
    EXPECT_FALSE(msg.has_final());
  }
  const grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  drained.get();
  const auto lines = request_records(ts, "StreamImpression");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["code"], "UNAVAILABLE") << lines[0].dump();
  const int n = lines[0]["generated_tokens"];
  EXPECT_GT(n, 0);
  EXPECT_EQ(lines[0]["error"], "the server is draining; the request was stopped after " + std::to_string(n) +
                                   " generated tokens; retry on another instance");
  EXPECT_EQ(s.error_message(), lines[0]["error"]);
  ASSERT_EQ(request_records(ts, "GenerateImpression").size(), 1u);
  EXPECT_EQ(requests_total(ts, "StreamImpression", "UNAVAILABLE"), 1);
  EXPECT_EQ(requests_total(ts, "GenerateImpression", "UNAVAILABLE"), 1);
}

TEST_F(ServiceAccounting, HealthAnswersDuringADrainWithoutGraceAndTheExposerStopsWithTheDrain) {
  ServerOptions o = test_options();  // drain_grace_s 0
  o.metrics_any_port = true;
  TestServer ts(o);
  const int mport = ts.server().metrics_port();
  ASSERT_TRUE(accepts(mport));
  ts.backend().delay_ms = 10;
  ts.backend().force(filler(60));
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 60));  // ~0.6 s
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  auto drained = std::async(std::launch::async, [&] { ts.server().drain(); });
  for (int i = 0; i < 1000 && !ts.server().draining(); ++i) std::this_thread::sleep_for(Ms(1));
  auto health = ts.health();
  EXPECT_EQ(health_of(*health, ""), HealthCheckResponse::NOT_SERVING);
  while (reader->Read(&msg)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
  drained.get();
  // Stopped by the drain, before "drained": nothing is left to stop after the
  // server's "exit" line (civetweb takes up to 2 s unless woken).
  EXPECT_FALSE(accepts(mport));
}

TEST_F(ServiceAccounting, ClientStringsAreClippedInMessagesAndLogs) {
  TestServer ts;
  const std::string huge(100000, 'x');
  auto req = request("The lungs are clear.", 4);
  req.mutable_context()->set_template_id(huge);
  req.set_client_request_id(std::string(500, 'c'));
  req.mutable_context()->set_institution_id(std::string(500, 'i'));
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  const grpc::Status s = ts.stub()->GenerateImpression(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_LT(s.error_message().size(), 400u) << s.error_message().substr(0, 400);
  EXPECT_NE(s.error_message().find("'" + std::string(64, 'x') + "…'"), std::string::npos) << s.error_message();
  ASSERT_GE(ts.wait_request_lines(1).size(), 1u);
  const std::string line = ts.request_lines().at(0);
  EXPECT_LT(line.size(), 1200u);
  const nlohmann::json r = nlohmann::json::parse(line);
  EXPECT_EQ(r["client_request_id"], std::string(64, 'c') + "…");
  EXPECT_EQ(r["institution_id"], std::string(64, 'i') + "…");

  // Health echoes the service name it does not know: clipped too.
  grpc::ClientContext hctx;
  grpc::health::v1::HealthCheckRequest hreq;
  hreq.set_service(huge);
  HealthCheckResponse hresp;
  const grpc::Status hs = ts.health()->Check(&hctx, hreq, &hresp);
  EXPECT_EQ(hs.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(hs.error_message(), "unknown service '" + std::string(64, 'x') + "…'");
}

// gRPC 1.51 fails every call of a connection when one call's headers exceed
// GRPC_ARG_MAX_METADATA_SIZE (default 8 KiB). The server's limit is set
// deliberately (--max-metadata-bytes, 64 KiB) so headers well past 8 KiB are
// one call's business.
TEST_F(ServiceAccounting, LargeHeadersUpToTheLimitDoNotDisturbTheirNeighbours) {
  TestServer ts;
  ASSERT_EQ(test_options().max_metadata_bytes, 64 << 10);
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(60));
  auto channel = ts.channel();
  auto stub = v1::ImpressionService::NewStub(channel);
  grpc::ClientContext ctx;
  auto reader = stub->StreamImpression(&ctx, request("The lungs are clear.", 60));
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  for (size_t kb : {12, 40}) {
    grpc::ClientContext big;
    big.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    big.AddMetadata("x-padding", std::string(kb * 1024, 'p'));
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = stub->GenerateImpression(&big, request("The lungs are clear.", 4), &resp);
    EXPECT_TRUE(s.ok()) << kb << " kB of headers: " << s.error_message();
  }
  // The neighbour on the same connection is untouched.
  bool got_final = false;
  while (reader->Read(&msg)) got_final = got_final || msg.has_final();
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(got_final);
}

TEST_F(ServiceAccounting, LibraryLogLinesAreJsonAndRateLimited) {
  TestServer ts;
  // protobuf: parsing a proto3 string that is not UTF-8 logs an error line.
  v1::GenerateImpressionRequest raw;
  raw.set_findings("ok");
  std::string bytes = raw.SerializeAsString();
  bytes[bytes.size() - 1] = '\xff';
  v1::GenerateImpressionRequest parsed;
  EXPECT_FALSE(parsed.ParseFromString(bytes));
  // gRPC: a burst of 1000 lines is rate limited.
  for (int i = 0; i < 1000; ++i) gpr_log(GPR_ERROR, "burst line %d", i);
  gpr_log(GPR_ERROR, "after the burst");
  int protobuf_lines = 0, grpc_lines = 0;
  for (const std::string& l : ts.log_lines()) {
    const nlohmann::json j = nlohmann::json::parse(l);  // throws if a line is not JSON
    if (j["event"] != "library_log") continue;
    if (j["library"] == "protobuf") {
      ++protobuf_lines;
      EXPECT_NE(j["message"].get<std::string>().find("invalid UTF-8"), std::string::npos) << l;
    }
    if (j["library"] == "grpc") ++grpc_lines;
  }
  EXPECT_EQ(protobuf_lines, 1);
  EXPECT_GE(grpc_lines, 1);
  EXPECT_LE(grpc_lines, LibraryLogRoute::kBurst + 5) << "1000 lines in a burst must be rate limited";
}

TEST(ServiceLineRateLimit, BurstThenRefillAndTheDroppedCountRidesOnTheNextLine) {
  LineRateLimit limit(/*per_second=*/2, /*burst=*/3);
  const auto t0 = LineRateLimit::Clock::time_point{} + std::chrono::hours(1);
  uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limit.admit(t0, suppressed));
    EXPECT_EQ(suppressed, 0u);
  }
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(limit.admit(t0, suppressed));
  EXPECT_FALSE(limit.admit(t0 + Ms(400), suppressed)) << "0.8 of a line refilled";
  EXPECT_TRUE(limit.admit(t0 + Ms(600), suppressed));
  EXPECT_EQ(suppressed, 11u);
  EXPECT_FALSE(limit.admit(t0 + Ms(600), suppressed));
  // A long quiet spell refills the burst, not more.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limit.admit(t0 + std::chrono::hours(1), suppressed));
  EXPECT_EQ(suppressed, 0u);
  EXPECT_FALSE(limit.admit(t0 + std::chrono::hours(1), suppressed));
}

TEST_F(ServiceAccounting, OneOverloadWordingAndScoreChecksTheSegmenterAlways) {
  ServerOptions o = test_options();
  o.max_waiting = 1;
  o.max_batch_size = 1;
  TestServer ts(o);
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(600));
  int exhausted = 0;
  for (const grpc::Status& s : generate_at_once(ts, 5)) {
    if (s.ok()) continue;
    ++exhausted;
    EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(s.error_message(), "the server is overloaded: the queue of waiting requests is full "
                                 "(--max-waiting 1); retry later");
  }
  EXPECT_GE(exhausted, 1);

  grpc::ClientContext ctx;
  v1::ScoreRequest sr;
  sr.set_findings("The lungs are clear.");
  sr.set_candidate_impression("No acute findings.");
  sr.set_rouge_segmenter(static_cast<v1::ScoreRequest::Segmenter>(9));
  v1::ScoreResponse sresp;
  const grpc::Status s = ts.stub()->Score(&ctx, sr, &sresp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message().rfind("rouge_segmenter 9 is not a known segmenter", 0), 0u) << s.error_message();
}

}  // namespace
}  // namespace chatradio::service::testing
