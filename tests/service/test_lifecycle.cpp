// Cancellation, deadlines, overload, health transitions and draining, through
// the real channel. Steps are slowed down (ControlledBackend) and outputs made
// long by scripting tokens, so every request is still running when the test
// acts on it.
#include <future>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

using grpc::StatusCode;
using grpc::health::v1::HealthCheckResponse;
using Ms = std::chrono::milliseconds;

class ServiceLifecycle : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
  // The first request log line of `rpc`, "" when none came.
  static std::string wait_line(TestServer& ts, const std::string& rpc) {
    const std::vector<std::string> lines = ts.wait_request_lines(1, rpc);
    return lines.empty() ? "" : lines[0];
  }
};

TEST_F(ServiceLifecycle, CancellingAStreamFreesTheEngineRequestAtOnce) {
  TestServer ts;
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(300));
  const uint64_t before = ts.server().engine()->stats().generated_tokens;  // the warm-up's
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 300));
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_delta());
  // (The engine publishes its stats at the end of the step that sent the token.)
  for (int i = 0; i < 100 && ts.server().engine()->stats().n_running != 1; ++i) std::this_thread::sleep_for(Ms(1));
  EXPECT_EQ(ts.server().engine()->stats().n_running, 1);
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::CANCELLED);
  // Freed, not finished: the token count below shows it stopped early (no wall-clock bound,
  // which a loaded machine would break).
  ASSERT_TRUE(ts.wait_engine_idle(Ms(5000)));
  const std::string line = wait_line(ts, "StreamImpression");
  EXPECT_NE(line.find("\"code\":\"CANCELLED\""), std::string::npos) << line;
  const uint64_t generated = ts.server().engine()->stats().generated_tokens;
  EXPECT_LT(generated, before + 100u) << "generation went on after the cancel";
}

TEST_F(ServiceLifecycle, CancellingAUnaryCallFreesTheEngineRequest) {
  TestServer ts;
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(300));
  const uint64_t before = ts.server().engine()->stats().generated_tokens;  // the warm-up's
  grpc::ClientContext ctx;
  auto call = std::async(std::launch::async, [&] {
    v1::GenerateImpressionResponse resp;
    return ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 300), &resp);
  });
  while (ts.server().engine()->stats().generated_tokens < before + 5) std::this_thread::sleep_for(Ms(1));
  ctx.TryCancel();
  EXPECT_EQ(call.get().error_code(), StatusCode::CANCELLED);
  EXPECT_TRUE(ts.wait_engine_idle(Ms(300)));
  EXPECT_NE(wait_line(ts, "GenerateImpression").find("\"code\":\"CANCELLED\""), std::string::npos);
}

TEST_F(ServiceLifecycle, TheClientDeadlineIsTheEngineDeadline) {
  TestServer ts;
  ts.backend().delay_ms = 10;  // 300 tokens: 3 s, far from the 150 ms deadline even on a loaded machine
  ts.backend().force(filler(300));
  const uint64_t before = ts.server().engine()->stats().generated_tokens;  // the warm-up's
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + Ms(150));
  v1::GenerateImpressionResponse resp;
  const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 300), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(ts.wait_engine_idle(Ms(5000)));
  // Stopped at the deadline, not run to its 300 tokens (a count, not a wall-clock bound).
  EXPECT_LT(ts.server().engine()->stats().generated_tokens, before + 300u) << "the request ran on past its deadline";
  const std::string line = wait_line(ts, "GenerateImpression");
  EXPECT_NE(line.find("\"code\":\"DEADLINE_EXCEEDED\""), std::string::npos) << line;

  // Score honours it too: a deadline already past never reaches the engine.
  grpc::ClientContext ctx2;
  ctx2.set_deadline(std::chrono::system_clock::now() - Ms(1));
  v1::ScoreRequest sr;
  sr.set_findings("x");
  sr.set_candidate_impression("y");
  v1::ScoreResponse sresp;
  EXPECT_EQ(ts.stub()->Score(&ctx2, sr, &sresp).error_code(), StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(ServiceLifecycle, OverloadIsResourceExhausted) {
  ServerOptions o = test_options();
  o.max_waiting = 1;
  o.max_batch_size = 1;
  TestServer ts(o);
  ts.backend().delay_ms = 5;
  ts.backend().force(filler(600));
  int ok = 0, exhausted = 0;
  for (const grpc::Status& s : generate_at_once(ts, 5)) {
    if (s.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
      EXPECT_NE(s.error_message().find("overloaded"), std::string::npos) << s.error_message();
      ++exhausted;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(exhausted, 1);
  EXPECT_NE(ts.server().metrics().render_text().find(
                "chatradio_requests_total{code=\"RESOURCE_EXHAUSTED\",rpc=\"GenerateImpression\"} " +
                std::to_string(exhausted)),
            std::string::npos);
}

TEST_F(ServiceLifecycle, AnEngineFailureIsInternalAndTheServerGoesOn) {
  TestServer ts;
  ts.backend().fail_steps = 1;
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 8), &resp);
    EXPECT_EQ(s.error_code(), StatusCode::INTERNAL);
    EXPECT_EQ(s.error_message(), "backend error: injected failure");
  }
  // The next request (STAT priority, for once) is served normally.
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  auto req = request("The lungs are clear.", 8);
  req.set_priority(v1::PRIORITY_STAT);
  EXPECT_TRUE(ts.stub()->GenerateImpression(&ctx, req, &resp).ok());
  const auto lines = ts.request_lines("GenerateImpression");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("\"code\":\"INTERNAL\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("\"priority\":\"stat\""), std::string::npos) << lines[1];
}

TEST_F(ServiceLifecycle, HealthIsNotServingUntilWarmUpThenServingThenNotServingWhileDraining) {
  ServerOptions o = test_options();
  o.drain_grace_s = 0.4;
  TestServer ts(o, /*load=*/false);
  auto health = ts.health();
  EXPECT_EQ(health_of(*health, ""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(health_of(*health, ChatradioServer::kServiceName), HealthCheckResponse::NOT_SERVING);
  {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthCheckResponse resp;
    EXPECT_EQ(health->Check(&ctx, req, &resp).error_code(), StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("x"), &resp);
    EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
    EXPECT_EQ(s.error_message(), "the model is still loading; retry shortly");
  }
  EXPECT_NE(ts.server().metrics().render_text().find("chatradio_model_loaded 0"), std::string::npos);

  // A watcher sees every transition.
  grpc::ClientContext watch_ctx;
  grpc::health::v1::HealthCheckRequest watch_req;
  auto watch = health->Watch(&watch_ctx, watch_req);
  HealthCheckResponse w;
  ASSERT_TRUE(watch->Read(&w));
  EXPECT_EQ(w.status(), HealthCheckResponse::NOT_SERVING);

  ts.server().load_and_warm_up();
  EXPECT_EQ(health_of(*health, ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(health_of(*health, ChatradioServer::kServiceName), HealthCheckResponse::SERVING);
  ASSERT_TRUE(watch->Read(&w));
  EXPECT_EQ(w.status(), HealthCheckResponse::SERVING);
  EXPECT_NE(ts.server().metrics().render_text().find("chatradio_model_loaded 1"), std::string::npos);

  auto drained = std::async(std::launch::async, [&] { ts.server().drain(); });
  ASSERT_TRUE(watch->Read(&w));
  EXPECT_EQ(w.status(), HealthCheckResponse::NOT_SERVING);
  // During the grace period the server still answers, but refuses work.
  EXPECT_EQ(health_of(*health, ""), HealthCheckResponse::NOT_SERVING);
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request("x"), &resp);
    EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE);
    EXPECT_EQ(s.error_message(), "the server is draining; retry on another instance");
  }
  drained.get();
  EXPECT_TRUE(ts.server().draining());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + Ms(500));
  v1::GenerateImpressionResponse resp;
  EXPECT_FALSE(ts.stub()->GenerateImpression(&ctx, request("x"), &resp).ok()) << "no calls after the drain";
}

TEST_F(ServiceLifecycle, DrainLetsInFlightStreamsFinish) {
  TestServer ts;
  ts.backend().delay_ms = 4;
  ts.backend().force(filler(60));
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 60));
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  std::atomic<bool> drain_done{false};
  auto drained = std::async(std::launch::async, [&] {
    ts.server().drain();
    drain_done = true;
  });
  bool got_final = false;
  while (reader->Read(&msg)) {
    if (msg.has_final()) {
      got_final = true;
      EXPECT_EQ(msg.final().tokens().generated_tokens(), 60u);
      EXPECT_EQ(msg.final().finish_reason(), v1::FINISH_REASON_LENGTH);
    }
  }
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(got_final);
  drained.get();
  EXPECT_TRUE(drain_done);
  const auto lines = ts.log_lines();
  const auto at = [&](const std::string& needle) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].find(needle) != std::string::npos) return static_cast<int>(i);
    }
    return -1;
  };
  EXPECT_LT(at("\"event\":\"draining\""), at("\"rpc\":\"StreamImpression\""));
  EXPECT_LT(at("\"rpc\":\"StreamImpression\""), at("\"event\":\"drained\""));
}

TEST_F(ServiceLifecycle, DrainTimeoutCancelsWhatIsLeft) {
  ServerOptions o = test_options();
  o.drain_timeout_s = 0.2;
  TestServer ts(o);
  ts.backend().delay_ms = 10;
  ts.backend().force(filler(300));
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("The lungs are clear.", 300));  // ~3 s
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  const auto t0 = std::chrono::steady_clock::now();
  ts.server().drain();
  const double drain_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(drain_s, 0.19);  // it waited for the timeout; that the stream was cut shows below
  while (reader->Read(&msg)) {
    EXPECT_FALSE(msg.has_final());
  }
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_TRUE(ts.wait_engine_idle(Ms(5000)));
}

}  // namespace
}  // namespace chatradio::service::testing
