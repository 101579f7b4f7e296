// The three RPCs end to end through a real gRPC channel: outputs equal a direct
// run of the model on the same prompt, streaming deltas are whole UTF-8
// characters that add up to the final impression, Score equals the engine's
// own numbers and ROUGE equals hand-computed values, and the guards behave.
#include <cmath>

#include "model/generate.h"
#include "model/llama.h"
#include "server/prompt/guards.h"
#include "server/text/rouge.h"
#include "server/text/segment.h"
#include "server/text/utf8.h"
#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

// The prompt and the model outside the server, to compute expected values.
struct Reference : PromptReference {
  Reference() : llama(model::CpuLlama::load(model_dir(), model::CpuBackendOptions{64, 16, 1})) {}
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, int max_tokens, model::SamplingParams sp = {}) {
    return model::generate_one(*llama, prompt, max_tokens, sp).tokens;
  }
  std::unique_ptr<model::CpuLlama> llama;
};

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const text::Utf8Char c = text::decode_utf8(s, i);
    if (!c.valid) return false;
    i += c.len;
  }
  return true;
}

// The byte-fallback piece "<0xNN>".
int32_t byte_id(const model::Tokenizer& tok, int byte) {
  char name[8];
  std::snprintf(name, sizeof name, "<0x%02X>", byte);
  return piece_id(tok, name);
}

class ServiceApi : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

TEST_F(ServiceApi, UnaryGreedyEqualsDirectGenerationAndFillsTheSummary) {
  TestServer ts;
  Reference ref;
  const std::string findings = "The lungs are clear. No pleural effusion.";
  auto req = request(findings, 40);
  req.set_client_request_id("client-42");
  req.mutable_context()->set_institution_id("site-7");
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, req, &resp).ok());

  const std::vector<int32_t> prompt = ref.prompt_ids(findings);
  const std::vector<int32_t> expected = ref.generate(prompt, 40);
  EXPECT_EQ(resp.impression(), ref.tok.decode(expected));
  EXPECT_FALSE(resp.impression().empty());
  EXPECT_EQ(resp.tokens().prompt_tokens(), prompt.size());
  EXPECT_EQ(resp.tokens().generated_tokens(), expected.size());
  EXPECT_EQ(resp.finish_reason(), expected.size() == 40 ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_EOS);
  EXPECT_EQ(resp.template_id(), "story-en");
  EXPECT_EQ(resp.language(), v1::LANGUAGE_EN);
  EXPECT_EQ(resp.client_request_id(), "client-42");
  EXPECT_FALSE(resp.request_id().empty());
  EXPECT_EQ(resp.model().name(), "stories260K");
  EXPECT_EQ(resp.model().backend(), "cpu");
  EXPECT_EQ(resp.model().weights(), "float32");
  EXPECT_EQ(resp.model().version().size(), 16u);
  EXPECT_GT(resp.timings().total_seconds(), 0.0);
  EXPECT_GE(resp.timings().total_seconds(), resp.timings().first_token_seconds());
  EXPECT_GE(resp.timings().first_token_seconds(), resp.timings().queue_seconds());
  EXPECT_FALSE(resp.flags().empty_output() || resp.flags().repetition_detected() ||
               resp.flags().empty_output_retried());

  // One log line with the ids and counts, and no report text.
  const auto lines = ts.request_lines("GenerateImpression");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("\"client_request_id\":\"client-42\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"institution_id\":\"site-7\""), std::string::npos);
  EXPECT_NE(lines[0].find("\"request_id\":\"" + resp.request_id() + "\""), std::string::npos);
  EXPECT_NE(lines[0].find("\"code\":\"OK\""), std::string::npos);
  EXPECT_NE(lines[0].find("\"template_id\":\"story-en\""), std::string::npos);
  EXPECT_NE(lines[0].find("\"generated_tokens\":" + std::to_string(expected.size())), std::string::npos);
  for (const std::string& l : ts.log_lines()) {
    EXPECT_EQ(l.find("pleural"), std::string::npos) << "findings leaked into a log line: " << l;
    EXPECT_EQ(l.find(resp.impression().substr(0, 12)), std::string::npos) << "impression leaked: " << l;
  }
}

TEST_F(ServiceApi, PresetsSeedsAndExplicitOverrides) {
  ServerOptions o = test_options();
  o.default_preset = Preset::kGreedy;
  TestServer ts(o);
  Reference ref;
  const std::string findings = "Mild cardiomegaly.";
  const std::vector<int32_t> prompt = ref.prompt_ids(findings);
  const auto call = [&](const v1::GenerateImpressionRequest& r) {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    const grpc::Status s = ts.stub()->GenerateImpression(&ctx, r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.impression();
  };
  // No preset named: the server default (greedy here).
  EXPECT_EQ(call(request(findings, 30, v1::SamplingParams::PRESET_UNSPECIFIED)),
            ref.tok.decode(ref.generate(prompt, 30)));
  // PAPER with a seed: temperature 1, top-k 50, reproducible.
  auto paper = request(findings, 30, v1::SamplingParams::PRESET_PAPER);
  paper.mutable_sampling()->set_seed(11);
  const std::string a = call(paper), b = call(paper);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, ref.tok.decode(ref.generate(prompt, 30, model::SamplingParams{1.0f, 50, 1.0f, 1.0f, 11})));
  // Explicit fields win over the preset: PAPER with temperature 0 is greedy.
  paper.mutable_sampling()->set_temperature(0.0f);
  EXPECT_EQ(call(paper), ref.tok.decode(ref.generate(prompt, 30)));
  // Without max_tokens the preset's 512 is lowered to what the context leaves.
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, request(findings, 0), &resp).ok());
  EXPECT_LE(resp.tokens().prompt_tokens() + resp.tokens().generated_tokens(), 512u);
}

TEST_F(ServiceApi, StreamingDeltasAreWholeCharactersAndAddUpToTheFinalImpression) {
  TestServer ts;
  Reference ref;
  ts.backend().delay_ms = 2;  // tokens arrive one by one, bytes of a character apart
  // stories260K never writes Chinese by itself: script the first generated
  // tokens to be the byte-fallback pieces of Chinese text, then let it go on.
  const std::string chinese = "双肺纹理清晰，右肺见结节。";
  std::vector<int32_t> script = ref.tok.encode(chinese);
  int n_byte_pieces = 0;
  for (int32_t id : script) n_byte_pieces += ref.tok.piece(id).rfind("<0x", 0) == 0;
  ASSERT_GE(n_byte_pieces, 3 * 13) << "the tokenizer should fall back to bytes for Chinese";
  ts.backend().force(script);

  auto req = request("双肺纹理增多，未见明显实变。", 60);
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, req);
  v1::StreamImpressionResponse msg;
  std::string joined;
  int n_deltas = 0;
  bool got_final = false;
  v1::GenerateImpressionResponse final_msg;
  while (reader->Read(&msg)) {
    ASSERT_FALSE(got_final) << "nothing may follow the final message";
    if (msg.has_final()) {
      got_final = true;
      final_msg = msg.final();
      continue;
    }
    ASSERT_EQ(msg.event_case(), v1::StreamImpressionResponse::kDelta);
    EXPECT_FALSE(msg.delta().empty());
    EXPECT_TRUE(valid_utf8(msg.delta())) << "delta " << n_deltas << " splits a character";
    joined += msg.delta();
    ++n_deltas;
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(got_final);
  EXPECT_GT(n_deltas, 5);
  EXPECT_EQ(joined, final_msg.impression());
  EXPECT_EQ(final_msg.impression().rfind(chinese, 0), 0u) << final_msg.impression();
  EXPECT_EQ(final_msg.language(), v1::LANGUAGE_ZH);
  EXPECT_EQ(final_msg.template_id(), "story-zh");
  EXPECT_GE(final_msg.tokens().generated_tokens(), script.size());
}

TEST_F(ServiceApi, AnIncompleteCharacterBecomesReplacementNotBrokenUtf8) {
  TestServer ts;
  Reference ref;
  // "肺" is E8 82 BA: send only its first two bytes, then EOS.
  ts.backend().force({byte_id(ref.tok, 0xE8), byte_id(ref.tok, 0x82), ref.tok.eos_id()});
  grpc::ClientContext ctx;
  auto reader = ts.stub()->StreamImpression(&ctx, request("结节。", 10));
  v1::StreamImpressionResponse msg;
  std::string joined, final_text;
  while (reader->Read(&msg)) {
    if (msg.has_final()) final_text = msg.final().impression();
    else joined += msg.delta();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(valid_utf8(final_text));
  // Each byte of the broken character becomes U+FFFD, as sentencepiece decodes it.
  EXPECT_EQ(final_text, "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(final_text, ref.tok.decode({byte_id(ref.tok, 0xE8), byte_id(ref.tok, 0x82)}));
  EXPECT_EQ(joined, final_text);
}

TEST_F(ServiceApi, ScoreEqualsTheEngineAndReturnsPieces) {
  TestServer ts;
  Reference ref;
  const std::string findings = "Small nodule in the right lung.";
  const std::string candidate = "She was happy and played with her ball.";
  v1::ScoreRequest req;
  req.set_findings(findings);
  req.set_candidate_impression(candidate);
  req.set_per_token_logprobs(true);
  req.set_client_request_id("score-1");
  grpc::ClientContext ctx;
  v1::ScoreResponse resp;
  ASSERT_TRUE(ts.stub()->Score(&ctx, req, &resp).ok());

  // The same teacher-forced scoring submitted to the server's engine directly.
  engine::ScoreParams sp;
  sp.prompt = ref.prompt_ids(findings);
  sp.continuation = ref.tok.encode(candidate);
  const engine::Outcome o =
      const_cast<engine::Engine*>(ts.server().engine())->score(sp)->wait();
  ASSERT_EQ(o.status, engine::Status::kOk);
  ASSERT_EQ(resp.candidate_tokens(), sp.continuation.size());
  ASSERT_EQ(resp.token_logprobs_size(), static_cast<int>(sp.continuation.size()));
  double total = 0;
  for (size_t i = 0; i < sp.continuation.size(); ++i) {
    EXPECT_EQ(resp.token_logprobs(i).token_id(), sp.continuation[i]);
    EXPECT_EQ(resp.token_logprobs(i).token(), ref.tok.piece(sp.continuation[i]));
    EXPECT_EQ(resp.token_logprobs(i).logprob(), o.logprobs[i]) << i;  // bit for bit
    EXPECT_LT(o.logprobs[i], 0.0f);
    total += o.logprobs[i];
  }
  EXPECT_DOUBLE_EQ(resp.total_logprob(), total);
  EXPECT_DOUBLE_EQ(resp.mean_logprob(), total / sp.continuation.size());
  EXPECT_NEAR(resp.perplexity(), std::exp(-total / sp.continuation.size()), 1e-9);
  EXPECT_EQ(resp.tokens().prompt_tokens(), sp.prompt.size());
  EXPECT_FALSE(resp.has_rouge());
  EXPECT_EQ(resp.client_request_id(), "score-1");
  EXPECT_EQ(resp.template_id(), "story-en");

  // A likelier continuation (what greedy decoding produced) scores higher.
  const std::vector<int32_t> greedy = ref.generate(sp.prompt, 12);
  v1::ScoreRequest likely = req;
  likely.set_candidate_impression(ref.tok.decode(greedy));
  likely.set_per_token_logprobs(false);
  grpc::ClientContext ctx2;
  v1::ScoreResponse resp2;
  ASSERT_TRUE(ts.stub()->Score(&ctx2, likely, &resp2).ok());
  EXPECT_GT(resp2.mean_logprob(), resp.mean_logprob());
  EXPECT_EQ(resp2.token_logprobs_size(), 0);
}

void expect_rouge(const v1::RougeScore& s, double p, double r, double f) {
  EXPECT_NEAR(s.precision(), p, 1e-12);
  EXPECT_NEAR(s.recall(), r, 1e-12);
  EXPECT_NEAR(s.f1(), f, 1e-12);
}

TEST_F(ServiceApi, ScoreRougeMatchesHandComputedValues) {
  TestServer ts;
  const auto score = [&](const std::string& findings, const std::string& cand, const std::string& refr,
                         v1::ScoreRequest::Segmenter seg) {
    v1::ScoreRequest req;
    req.set_findings(findings);
    req.set_candidate_impression(cand);
    req.set_reference_impression(refr);
    req.set_rouge_segmenter(seg);
    req.set_rouge_mode(v1::ROUGE_MODE_LIN);  // the hand-computed values below use Lin's formula
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    const grpc::Status s = ts.stub()->Score(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(resp.has_rouge());
    return resp.rouge();
  };
  // English words: 5 of 6 unigrams, 3 of 5 bigrams, LCS "the cat on the mat".
  const v1::Rouge en = score("Clear lungs.", "The cat sat on the mat.", "the cat lay on the mat",
                             v1::ScoreRequest::SEGMENTER_UNSPECIFIED);
  expect_rouge(en.rouge1(), 5.0 / 6, 5.0 / 6, 5.0 / 6);
  expect_rouge(en.rouge2(), 3.0 / 5, 3.0 / 5, 3.0 / 5);
  expect_rouge(en.rouge_l(), 5.0 / 6, 5.0 / 6, 5.0 / 6);
  // Chinese findings -> characters: 双肺纹理清晰 vs 双肺清晰. Unigrams 4/6 and
  // 4/4; bigrams {双肺, 清晰} of 5 and of 3; LCS 双肺清晰.
  const v1::Rouge zh = score("双肺纹理清晰。", "双肺纹理清晰", "双肺清晰", v1::ScoreRequest::SEGMENTER_UNSPECIFIED);
  expect_rouge(zh.rouge1(), 4.0 / 6, 1.0, 0.8);
  expect_rouge(zh.rouge2(), 2.0 / 5, 2.0 / 3, 0.5);
  expect_rouge(zh.rouge_l(), 4.0 / 6, 1.0, 0.8);
  // SEGMENTER_CHAR asked explicitly for English findings gives the same.
  const v1::Rouge zh2 = score("Clear lungs.", "双肺纹理清晰", "双肺清晰", v1::ScoreRequest::SEGMENTER_CHAR);
  expect_rouge(zh2.rouge1(), 4.0 / 6, 1.0, 0.8);
}

TEST_F(ServiceApi, ScoreRougeWithJiebaNeedsTheDictionary) {
  {
    TestServer ts;  // no --jieba-dict
    v1::ScoreRequest req;
    req.set_findings("双肺纹理清晰。");
    req.set_candidate_impression("双肺纹理增粗");
    req.set_reference_impression("双肺纹理清晰");
    req.set_rouge_segmenter(v1::ScoreRequest::SEGMENTER_JIEBA);
    grpc::ClientContext ctx;
    v1::ScoreResponse resp;
    const grpc::Status s = ts.stub()->Score(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(s.error_message().find("jieba"), std::string::npos);
  }
  if (!std::filesystem::exists(text::JiebaDict::kDebianPath)) GTEST_SKIP() << "python3-jieba's dict.txt not installed";
  ServerOptions o = test_options();
  o.jieba_dict = text::JiebaDict::kDebianPath;
  TestServer ts(o);
  v1::ScoreRequest req;
  req.set_findings("双肺纹理清晰。");
  req.set_candidate_impression("双肺纹理增粗，右肺结节");
  req.set_reference_impression("双肺纹理清晰，右肺小结节");
  req.set_rouge_segmenter(v1::ScoreRequest::SEGMENTER_JIEBA);
  req.set_rouge_mode(v1::ROUGE_MODE_LIN);  // compared with text::rouge (Lin) below
  grpc::ClientContext ctx;
  v1::ScoreResponse resp;
  ASSERT_TRUE(ts.stub()->Score(&ctx, req, &resp).ok());
  const text::JiebaDict dict = text::JiebaDict::load(text::JiebaDict::kDebianPath);
  const text::RougeScores want =
      text::rouge(req.candidate_impression(), req.reference_impression(), text::JiebaSegmenter(dict));
  EXPECT_DOUBLE_EQ(resp.rouge().rouge1().f1(), want.rouge1.f1);
  EXPECT_DOUBLE_EQ(resp.rouge().rouge2().f1(), want.rouge2.f1);
  EXPECT_DOUBLE_EQ(resp.rouge().rouge_l().f1(), want.rougeL.f1);
  // Words, not characters: the two differ here.
  const text::RougeScores chars = text::rouge(req.candidate_impression(), req.reference_impression(),
                                              text::CharSegmenter());
  EXPECT_NE(resp.rouge().rouge1().f1(), chars.rouge1.f1);
}

TEST_F(ServiceApi, RepetitionGuardStopsALoopAndFlagsIt) {
  // Script a loop ("the cat sat." over and over) and check the server, with
  // the default guard options, stops exactly where the detector first fires.
  ServerOptions o = test_options();
  o.repetition_guard = true;
  TestServer ts(o);
  Reference ref;
  const std::vector<int32_t> unit = ref.tok.encode("the cat sat.");
  std::vector<int32_t> script;
  for (int i = 0; i < 12; ++i) script.insert(script.end(), unit.begin(), unit.end());
  const prompt::RepetitionDetector det{prompt::RepetitionOptions{}};
  size_t fire = 0;
  for (size_t n = 1; n <= script.size() && fire == 0; ++n) {
    if (det.repeating(std::span<const int32_t>(script.data(), n))) fire = n;
  }
  ASSERT_GT(fire, 0u);
  ASSERT_LT(fire, script.size());
  ts.backend().force(script);
  grpc::ClientContext ctx;
  v1::GenerateImpressionResponse resp;
  ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 200), &resp).ok());
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_REPETITION);
  EXPECT_TRUE(resp.flags().repetition_detected());
  EXPECT_EQ(resp.tokens().generated_tokens(), fire);
  EXPECT_EQ(resp.impression(), ref.tok.decode(std::vector<int32_t>(script.begin(), script.begin() + fire)));
  EXPECT_NE(ts.server().metrics().render_text().find("chatradio_guard_triggers_total{guard=\"repetition\"} 1"),
            std::string::npos);
  EXPECT_NE(ts.request_lines().back().find("\"finish\":\"repetition\""), std::string::npos);
}

TEST_F(ServiceApi, EmptyOutputIsRetriedOnceWithANewSeedThenFlagged) {
  TestServer ts;
  Reference ref;
  const int32_t eos = ref.tok.eos_id();
  const std::string findings = "Normal study.";
  auto sampled = request(findings, 20, v1::SamplingParams::PRESET_PAPER);
  sampled.mutable_sampling()->set_seed(5);

  // First attempt empty (EOS first), the retry is not: retried, not empty,
  // and its text is the seed_for(5, 1) sample.
  ts.backend().force({eos});
  {
    grpc::ClientContext ctx;
    auto reader = ts.stub()->StreamImpression(&ctx, sampled);
    v1::StreamImpressionResponse msg;
    std::string joined;
    v1::GenerateImpressionResponse fin;
    while (reader->Read(&msg)) {
      if (msg.has_final()) fin = msg.final();
      else joined += msg.delta();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_TRUE(fin.flags().empty_output_retried());
    EXPECT_FALSE(fin.flags().empty_output());
    EXPECT_FALSE(fin.impression().empty());
    EXPECT_EQ(joined, fin.impression());
    const uint64_t seed1 = prompt::EmptyOutputPolicy::seed_for(5, 1);
    EXPECT_EQ(fin.impression(), ref.tok.decode(ref.generate(ref.prompt_ids(findings), 20,
                                                            model::SamplingParams{1.0f, 50, 1.0f, 1.0f, seed1})));
    const auto line = ts.request_lines("StreamImpression").back();
    EXPECT_NE(line.find("\"attempts\":2"), std::string::npos) << line;
  }
  // Both attempts empty: flagged.
  ts.backend().force({eos, eos});
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, sampled, &resp).ok());
    EXPECT_TRUE(resp.flags().empty_output_retried());
    EXPECT_TRUE(resp.flags().empty_output());
    EXPECT_EQ(resp.impression(), "");
    EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_EOS);
  }
  // Greedy: a new seed changes nothing, so no retry.
  ts.backend().force({eos});
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, request(findings, 20), &resp).ok());
    EXPECT_FALSE(resp.flags().empty_output_retried());
    EXPECT_TRUE(resp.flags().empty_output());
  }
  const std::string m = ts.server().metrics().render_text();
  EXPECT_NE(m.find("chatradio_guard_triggers_total{guard=\"empty_retry\"} 2"), std::string::npos) << m;
  EXPECT_NE(m.find("chatradio_guard_triggers_total{guard=\"empty_output\"} 2"), std::string::npos);
}

}  // namespace
}  // namespace chatradio::service::testing
