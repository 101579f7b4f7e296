// STAT priority through the real server with one batch slot: a short STAT
// request arriving while a long routine generation decodes takes the slot at
// once (a "slot" preemption), finishes first, and the routine request still
// streams exactly the text it gives alone. Steps are slowed down while the
// STAT request is in flight so the routine one is surely still decoding; the
// assertions are about order and counts, never about times.
#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

TEST(ServiceStatPriority, AStatRequestTakesTheSlotOfARunningRoutineOneAndFinishesFirst) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  ServerOptions opts = test_options();
  opts.max_batch_size = 1;
  TestServer ts(opts);
  v1::GenerateImpressionRequest routine = request("The lungs are clear.", 400);
  routine.set_priority(v1::PRIORITY_ROUTINE);
  v1::GenerateImpressionRequest stat = request("A small nodule.", 5);
  stat.set_priority(v1::PRIORITY_STAT);

  // The routine request alone, undisturbed: the text to compare with.
  v1::GenerateImpressionResponse alone;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, routine, &alone).ok());
  }
  // Long enough that it cannot end while the STAT request is served (at
  // 10 ms per step, seconds of decoding are left after its first token).
  ASSERT_GE(alone.tokens().generated_tokens(), 200u) << "pick findings the model continues at length";
  const engine::EngineStats before = ts.server().engine()->stats();

  ts.backend().delay_ms = 10;
  grpc::ClientContext stream_ctx;
  auto reader = ts.stub()->StreamImpression(&stream_ctx, routine);
  v1::StreamImpressionResponse msg;
  ASSERT_TRUE(reader->Read(&msg));  // decoding now, in the only slot
  ASSERT_TRUE(msg.has_delta());
  std::string streamed = msg.delta();

  v1::GenerateImpressionResponse stat_resp;
  {
    grpc::ClientContext ctx;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, stat, &stat_resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(stat_resp.tokens().generated_tokens(), 5u);
  const engine::EngineStats after = ts.server().engine()->stats();
  EXPECT_EQ(after.preemptions_slot, before.preemptions_slot + 1) << "the STAT request must take the slot";
  EXPECT_EQ(after.preemptions_kv, before.preemptions_kv);
  EXPECT_NE(ts.server().metrics().render_text().find("chatradio_preemptions_total{reason=\"slot\"} 1"),
            std::string::npos);

  ts.backend().delay_ms = 0;
  v1::GenerateImpressionResponse last;
  while (reader->Read(&msg)) {
    if (msg.has_delta()) streamed += msg.delta();
    if (msg.has_final()) last = msg.final();
  }
  ASSERT_TRUE(reader->Finish().ok());
  // Preempted and recomputed, yet exactly the same text.
  EXPECT_EQ(streamed, alone.impression());
  EXPECT_EQ(last.impression(), alone.impression());

  // The STAT request's log line comes before the routine stream's.
  const auto lines = ts.request_lines();
  size_t stat_at = lines.size(), stream_at = lines.size();
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find("\"priority\":\"stat\"") != std::string::npos) stat_at = i;
    if (lines[i].find("\"rpc\":\"StreamImpression\"") != std::string::npos) stream_at = i;
  }
  ASSERT_LT(stat_at, lines.size());
  ASSERT_LT(stream_at, lines.size());
  EXPECT_LT(stat_at, stream_at);
}

}  // namespace
}  // namespace chatradio::service::testing
