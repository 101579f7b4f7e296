// Every request check through the real channel: the gRPC code and the exact
// message, and that a refused request never reaches the engine nor leaks its
// text into the log.
#include "server/prompt/validate.h"
#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

using grpc::StatusCode;

struct Case {
  std::string name;
  std::function<void(v1::GenerateImpressionRequest&)> edit;
  StatusCode code;
  std::string message;  // exact; "" = check the code only
};

class ServiceValidation : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

TEST_F(ServiceValidation, GenerateRefusesBadRequestsWithPreciseMessages) {
  TestServer ts;  // max_input_bytes 2000
  const uint64_t generated_before = ts.server().engine()->stats().generated_tokens;  // the warm-up's
  const std::vector<Case> cases = {
      {"empty", [](auto& r) { r.set_findings(""); }, StatusCode::INVALID_ARGUMENT, "findings is empty"},
      {"whitespace", [](auto& r) { r.set_findings(" \n\t\u3000 "); }, StatusCode::INVALID_ARGUMENT,
       "findings is empty"},
      {"invalid utf-8", [](auto& r) { r.set_findings(std::string("ab\xff" "cd")); }, StatusCode::INVALID_ARGUMENT,
       "findings is not valid UTF-8 at byte 2"},
      {"control char", [](auto& r) { r.set_findings(std::string("a\x07z")); }, StatusCode::INVALID_ARGUMENT,
       "findings contains control character U+0007 at byte 1"},
      {"too large", [](auto& r) { r.set_findings(std::string(2001, 'a')); }, StatusCode::INVALID_ARGUMENT,
       "findings is 2001 bytes; the limit is 2000 bytes"},
      {"max_tokens 0", [](auto& r) { r.mutable_sampling()->set_max_tokens(0); }, StatusCode::INVALID_ARGUMENT,
       "sampling.max_tokens must be >= 1 (got 0)"},
      {"temperature < 0", [](auto& r) { r.mutable_sampling()->set_temperature(-1.0f); },
       StatusCode::INVALID_ARGUMENT, "sampling.temperature must be in [0, 100] (0 = greedy), got -1"},
      {"temperature nan", [](auto& r) { r.mutable_sampling()->set_temperature(std::nanf("")); },
       StatusCode::INVALID_ARGUMENT, "sampling.temperature must be in [0, 100] (0 = greedy), got nan"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }, StatusCode::INVALID_ARGUMENT,
       "sampling.top_p must be in (0, 1], got 0"},
      {"top_p 1.5", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, StatusCode::INVALID_ARGUMENT,
       "sampling.top_p must be in (0, 1], got 1.5"},
      {"top_k huge", [](auto& r) { r.mutable_sampling()->set_top_k(3000000000u); }, StatusCode::INVALID_ARGUMENT,
       "sampling.top_k must be in [0, 2147483647] (0 = off), got 3000000000"},
      {"repetition_penalty 0", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); },
       StatusCode::INVALID_ARGUMENT, "sampling.repetition_penalty must be in (0, 100] (1 = off), got 0"},
      {"unknown preset",
       [](auto& r) { r.mutable_sampling()->set_preset(static_cast<v1::SamplingParams::Preset>(9)); },
       StatusCode::INVALID_ARGUMENT, "sampling.preset 9 is not a known preset (PRESET_GREEDY = 1, PRESET_PAPER = 2)"},
      {"unknown priority", [](auto& r) { r.set_priority(static_cast<v1::Priority>(7)); },
       StatusCode::INVALID_ARGUMENT, "priority 7 is not a known priority (PRIORITY_ROUTINE = 1, PRIORITY_STAT = 2)"},
      {"unknown language", [](auto& r) { r.mutable_context()->set_language(static_cast<v1::Language>(9)); },
       StatusCode::INVALID_ARGUMENT,
       "context.language 9 is not a known language (LANGUAGE_AUTO = 1, LANGUAGE_ZH = 2, LANGUAGE_EN = 3)"},
      {"unknown modality", [](auto& r) { r.mutable_context()->set_modality(static_cast<v1::Modality>(42)); },
       StatusCode::INVALID_ARGUMENT, "context.modality 42 is not a known modality"},
      {"unknown template", [](auto& r) { r.mutable_context()->set_template_id("nope"); }, StatusCode::NOT_FOUND,
       ""},
      {"template of another language",
       [](auto& r) {
         r.mutable_context()->set_template_id("story-zh");
         r.mutable_context()->set_language(v1::LANGUAGE_EN);
       },
       StatusCode::INVALID_ARGUMENT, ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateImpressionRequest r = request("The lungs are clear.", 8);
    c.edit(r);
    for (const bool stream : {false, true}) {
      grpc::ClientContext ctx;
      grpc::Status s;
      if (stream) {
        auto reader = ts.stub()->StreamImpression(&ctx, r);
        v1::StreamImpressionResponse msg;
        EXPECT_FALSE(reader->Read(&msg)) << "a refused stream sends nothing";
        s = reader->Finish();
      } else {
        v1::GenerateImpressionResponse resp;
        s = ts.stub()->GenerateImpression(&ctx, r, &resp);
      }
      EXPECT_EQ(s.error_code(), c.code) << s.error_message();
      if (!c.message.empty()) {
        EXPECT_EQ(s.error_message(), c.message);
      }
    }
  }
  // Template messages name the ids involved.
  {
    v1::GenerateImpressionRequest r = request("x", 8);
    r.mutable_context()->set_template_id("nope");
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, r, &resp);
    EXPECT_NE(s.error_message().find("'nope'"), std::string::npos) << s.error_message();
    EXPECT_NE(s.error_message().find("story-en"), std::string::npos) << "lists the known ids";
  }
  // Nothing refused reached the engine.
  EXPECT_EQ(ts.server().engine()->stats().generated_tokens, generated_before);
  for (const std::string& l : ts.request_lines()) {
    EXPECT_EQ(l.find("lungs are clear"), std::string::npos) << l;
    EXPECT_NE(l.find("\"code\":\""), std::string::npos);
  }
  EXPECT_EQ(ts.request_lines().size(), 2 * cases.size() + 1);
}

TEST_F(ServiceValidation, ContextOverflowSaysTheTokenCounts) {
  TestServer ts;
  const std::string findings = "The lungs are clear.";
  const model::Tokenizer tok = model::Tokenizer::load(model_dir() + "/tokenizer.model");
  const prompt::TemplateSet templates = prompt::TemplateSet::load(test_templates());
  PreparedPrompt pp;
  ASSERT_TRUE(prepare_prompt(pp, templates, tok, findings, {}, {}).ok());
  const int n = static_cast<int>(pp.ids.size());
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  const grpc::Status s = ts.stub()->GenerateImpression(&ctx, request(findings, 500), &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "input is " + std::to_string(n) +
                                   " tokens; with max_tokens 500 it exceeds the model context of 512 tokens (at most "
                                   "12 input tokens)");
  // Exactly at the limit is fine.
  grpc::ClientContext ctx2;
  EXPECT_TRUE(ts.stub()->GenerateImpression(&ctx2, request(findings, 512 - n), &resp).ok());

  // A prompt that alone fills the context fails even without max_tokens:
  // 1900 bytes of Chinese are ~630 characters, ~1900 byte-fallback tokens.
  std::string big;
  while (big.size() + 3 <= 1900) big += "肺";
  grpc::ClientContext ctx3;
  const grpc::Status s3 = ts.stub()->GenerateImpression(&ctx3, request(big, 0), &resp);
  EXPECT_EQ(s3.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s3.error_message().rfind("input is ", 0), 0u) << s3.error_message();
}

TEST_F(ServiceValidation, ScoreRefusesBadRequests) {
  TestServer ts;
  const auto score = [&](const std::function<void(v1::ScoreRequest&)>& edit) {
    v1::ScoreRequest r;
    r.set_findings("The lungs are clear.");
    r.set_candidate_impression("No acute disease.");
    edit(r);
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    return ts.stub()->Score(&ctx, r, &resp);
  };
  grpc::Status s = score([](auto& r) { r.set_candidate_impression(" "); });
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "candidate_impression is empty");
  s = score([](auto& r) { r.set_candidate_impression(std::string("ok\xc3")); });
  EXPECT_EQ(s.error_message(), "candidate_impression is not valid UTF-8 at byte 2");
  s = score([](auto& r) { r.set_reference_impression(std::string("a\x1b")); });
  EXPECT_EQ(s.error_message(), "reference_impression contains control character U+001B at byte 1");
  s = score([](auto& r) { r.set_reference_impression(std::string(2001, 'x')); });
  EXPECT_EQ(s.error_message(), "reference_impression is 2001 bytes; the limit is 2000 bytes");
  s = score([](auto& r) { r.set_findings(""); });
  EXPECT_EQ(s.error_message(), "findings is empty");
  s = score([](auto& r) {
    r.set_reference_impression("x");
    r.set_rouge_segmenter(static_cast<v1::ScoreRequest::Segmenter>(9));
  });
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "rouge_segmenter 9 is not a known segmenter (SEGMENTER_CHAR = 1, SEGMENTER_JIEBA = 2, "
                               "SEGMENTER_JIEBA_NO_HMM = 3, SEGMENTER_ENGLISH = 4)");
  // Candidate too long for the context, with both counts.
  std::string long_candidate;
  while (long_candidate.size() + 3 <= 1900) long_candidate += "肺";
  s = score([&](auto& r) { r.set_candidate_impression(long_candidate); });
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find(" tokens and candidate_impression is "), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("exceed the model context of 512 tokens"), std::string::npos);
}

}  // namespace
}  // namespace chatradio::service::testing
