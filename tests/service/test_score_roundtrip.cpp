// GenerateImpression's text scores: Score tokenizes a generated impression back
// into the ids that were generated, so an output that filled the model
// context fits it again, whatever its first token and finish reason. Before,
// an output whose first token had no "▁" (".", "\n", a word's tail)
// re-encoded with a bare dummy-prefix piece, one token more, and Score refused
// it when the output had filled the context.
#include <cmath>
#include <string>
#include <vector>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

constexpr int kContext = 512;  // stories260K's max_position_embeddings

v1::GenerateImpressionResponse generate(TestServer& ts, const v1::GenerateImpressionRequest& req) {
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  const grpc::Status s = ts.stub()->GenerateImpression(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp;
}

grpc::Status score(TestServer& ts, const std::string& findings, const std::string& candidate,
                   v1::ScoreResponse& resp) {
  v1::ScoreRequest req;
  req.set_findings(findings);
  req.set_candidate_impression(candidate);
  req.set_per_token_logprobs(true);
  grpc::ClientContext ctx;
  return ts.stub()->Score(&ctx, req, &resp);
}

engine::Engine& engine_of(TestServer& ts) { return *const_cast<engine::Engine*>(ts.server().engine()); }

class ScoreRoundTrip : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

// Greedy outputs that fill the context, starting with a piece that has no
// "▁" (forced; "ce" is a piece, "▁ce" is not), score: Score's ids start with
// the generated first piece, are never more than were generated, equal them
// whenever they are canonical, and carry the engine's numbers bit for bit.
TEST_F(ScoreRoundTrip, GreedyOutputFillingTheContextScoresItsOwnTokens) {
  TestServer ts;
  PromptReference ref;
  const std::string findings = "Small nodule in the right lung.";
  const std::vector<int32_t> prompt = ref.prompt_ids(findings);
  const int room = kContext - static_cast<int>(prompt.size());
  int canonical = 0;
  for (const int max_tokens : {room, 12}) {
    for (const char* first : {".", "<0x0A>", ",", "ce", "▁The"}) {
      SCOPED_TRACE(std::string(first) + " max_tokens " + std::to_string(max_tokens));
      const int32_t first_id = piece_id(ref.tok, first);

      // The ids themselves, from the server's engine with the same forced start.
      ts.backend().force({first_id});
      engine::GenerateParams g;
      g.prompt = prompt;
      g.max_new_tokens = max_tokens;
      const engine::Outcome gen = engine_of(ts).generate(g)->wait();
      ASSERT_EQ(gen.status, engine::Status::kOk);
      ASSERT_EQ(gen.tokens.front(), first_id);

      ts.backend().force({first_id});
      const v1::GenerateImpressionResponse out = generate(ts, request(findings, max_tokens));
      ASSERT_EQ(out.impression(), ref.tok.decode(gen.tokens));
      ASSERT_EQ(out.tokens().generated_tokens(), gen.tokens.size());

      v1::ScoreResponse sc;
      const grpc::Status s = score(ts, findings, out.impression(), sc);
      ASSERT_TRUE(s.ok()) << s.error_message();
      ASSERT_GE(sc.token_logprobs_size(), 1);
      ASSERT_LE(sc.candidate_tokens(), gen.tokens.size());
      std::vector<int32_t> ids;
      for (const v1::TokenLogprob& t : sc.token_logprobs()) ids.push_back(t.token_id());
      EXPECT_EQ(ids.front(), first_id);  // no dummy prefix the output never had
      EXPECT_EQ(ref.tok.decode(ids), out.impression());
      if (ids == gen.tokens) ++canonical;

      engine::ScoreParams sp;
      sp.prompt = prompt;
      sp.continuation = ids;
      const engine::Outcome direct = engine_of(ts).score(sp)->wait();
      ASSERT_EQ(direct.status, engine::Status::kOk);
      double total = 0;
      for (size_t i = 0; i < ids.size(); ++i) {
        EXPECT_EQ(sc.token_logprobs(i).logprob(), direct.logprobs[i]) << i;
        total += direct.logprobs[i];
      }
      EXPECT_DOUBLE_EQ(sc.total_logprob(), total);
    }
  }
  // The short outputs at least are canonical: there Score scored exactly the
  // generated tokens.
  EXPECT_GE(canonical, 1);
}

// Sampled outputs that fill the context, over several seeds and settings and
// whatever the model generates first: every one scores.
TEST_F(ScoreRoundTrip, SampledOutputsFillingTheContextScore) {
  TestServer ts;
  PromptReference ref;
  struct Case {
    std::string findings;
    float temperature;
    uint32_t top_k;
    float top_p;
  };
  const std::vector<Case> cases = {
      {"Small nodule in the right lung.", 1.0f, 50, 1.0f},
      {"No acute disease.", 1.0f, 0, 0.95f},
      {"Mild cardiomegaly. Clear lungs.", 1.5f, 0, 1.0f},
  };
  for (const Case& c : cases) {
    const int room = kContext - static_cast<int>(ref.prompt_ids(c.findings).size());
    for (uint64_t seed : {1u, 2u, 3u, 4u}) {
      SCOPED_TRACE(c.findings + " seed " + std::to_string(seed));
      v1::GenerateImpressionRequest req = request(c.findings, room, v1::SamplingParams::PRESET_PAPER);
      req.mutable_sampling()->set_temperature(c.temperature);
      req.mutable_sampling()->set_top_k(c.top_k);
      req.mutable_sampling()->set_top_p(c.top_p);
      req.mutable_sampling()->set_seed(seed);
      const v1::GenerateImpressionResponse out = generate(ts, req);
      if (prompt::is_blank(out.impression())) continue;  // Score refuses a blank candidate by design
      v1::ScoreResponse sc;
      const grpc::Status s = score(ts, c.findings, out.impression(), sc);
      ASSERT_TRUE(s.ok()) << s.error_message() << " (generated " << out.tokens().generated_tokens() << ")";
      EXPECT_LE(sc.candidate_tokens(), static_cast<uint32_t>(room));
      EXPECT_TRUE(std::isfinite(sc.total_logprob()));
    }
  }
}

// The text is read without the dummy prefix only when that takes fewer ids:
// a word that merges with the prefix keeps it, and so does a real leading space.
TEST_F(ScoreRoundTrip, CandidateIdsReadTheTextTheShorterWay) {
  PromptReference ref;
  const int32_t dot = piece_id(ref.tok, ".");
  EXPECT_EQ(ref.tok.encode("."), (std::vector<int32_t>{piece_id(ref.tok, "▁"), dot}));
  EXPECT_EQ(candidate_ids(ref.tok, "."), std::vector<int32_t>{dot});
  EXPECT_EQ(ref.tok.encode("ce"), (std::vector<int32_t>{piece_id(ref.tok, "▁c"), piece_id(ref.tok, "e")}));
  const std::vector<int32_t> ce = candidate_ids(ref.tok, "ce, he said.");
  ASSERT_FALSE(ce.empty());
  EXPECT_EQ(ce.front(), piece_id(ref.tok, "ce"));
  EXPECT_EQ(ce.size() + 1, ref.tok.encode("ce, he said.").size());
  EXPECT_EQ(ref.tok.decode(ce), "ce, he said.");
  EXPECT_EQ(candidate_ids(ref.tok, "the end"), ref.tok.encode("the end"));  // "▁the" is a piece
  EXPECT_EQ(candidate_ids(ref.tok, "The"), ref.tok.encode("The"));
  for (const std::string text : {".", "\nShe smiled.", "The end.", " She smiled.", "  two spaces"}) {
    EXPECT_EQ(ref.tok.decode(candidate_ids(ref.tok, text)), ref.tok.decode(ref.tok.encode(text))) << text;
  }
}

}  // namespace
}  // namespace chatradio::service::testing
