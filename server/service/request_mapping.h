// The handler's pure steps, proto in, plain values or a gRPC status out: request
// checks, sampling presets, template selection, prompt rendering and
// tokenization, and how engine outcomes map to gRPC codes and finish reasons.
// Nothing here touches the engine or a ServerContext, so tests can call each
// step directly.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chatradio/v1/impression_service.pb.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "server/engine/engine.h"
#include "server/prompt/templates.h"
#include "server/prompt/validate.h"
#include "server/service/options.h"

namespace chatradio::text {
class JiebaDict;
}  // namespace chatradio::text

namespace chatradio::service {

// What a request's SamplingParams resolve to once the preset filled the gaps.
struct ResolvedSampling {
  model::SamplingParams params;
  int max_tokens = 0;
  bool max_tokens_explicit = false;  // the client set max_tokens (else the preset's, bounded by the context)
  bool sampled() const { return params.temperature > 0.0f; }
};

// Preset values: PAPER = temperature 1.0, top-k 50, top-p 1.0, max 512 new
// tokens; GREEDY = temperature 0, max 512. Repetition penalty 1 (off) in both.
ResolvedSampling preset_values(Preset preset);

// Fills dst from the request: the preset (PRESET_UNSPECIFIED = `server_default`),
// then every field the client set. `fallback_seed` is used when the client set
// none. INVALID_ARGUMENT naming the field and its range for a bad value.
grpc::Status resolve_sampling(ResolvedSampling& dst, const v1::SamplingParams& req, Preset server_default,
                              uint64_t fallback_seed);

// PRIORITY_UNSPECIFIED/ROUTINE -> routine, STAT -> stat; INVALID_ARGUMENT for
// values this server does not know.
grpc::Status map_priority(engine::Priority& dst, v1::Priority p);

struct PreparedPrompt {
  std::vector<int32_t> ids;  // BOS (when the template wants it) + prompt
  std::string template_id;
  int template_version = 0;
  prompt::Language language = prompt::Language::kEn;
};

// findings check (INVALID_ARGUMENT, prompt/validate.h messages) -> language
// (given, or detected when AUTO/UNSPECIFIED) -> template (NOT_FOUND for an
// unknown id; INVALID_ARGUMENT for one of another language) -> render ->
// tokenize. The findings are never copied into a message.
grpc::Status prepare_prompt(PreparedPrompt& dst, const prompt::TemplateSet& templates, const model::Tokenizer& tok,
                            std::string_view findings, const v1::ReportContext& context,
                            const prompt::FindingsLimits& limits);

// Decides max_new_tokens for a prompt of `prompt_tokens` in `context` positions:
// an explicit max_tokens must fit (INVALID_ARGUMENT with the token counts,
// prompt/validate.h check_context); a preset's default is lowered to what
// the context leaves, and fails only when nothing is left.
grpc::Status fit_max_tokens(int& dst, const ResolvedSampling& s, int prompt_tokens, int context);

// Candidate/reference text checks for Score: UTF-8 and control characters
// (check_text), size, and non-blank for the candidate.
grpc::Status check_score_texts(const v1::ScoreRequest& req, const prompt::FindingsLimits& limits);

// Score: the ids of `candidate` as generation would have produced them right
// after the prompt (no BOS). Generated text is sentencepiece's Decode of the
// generated ids, which drops the dummy-prefix "▁" of the first piece when it
// has one; so a text is read with or without that prefix, whichever takes
// fewer ids (sentencepiece's own encoding, prefix included, on a tie), and
// never without it when the text starts with a real space. Re-encoding with
// the prefix alone turned a first piece "." or "\n" into "▁" + ".", "ce" into
// "▁c" + "e": one token more than was generated, refused when the output had
// filled the context. Whenever the generated ids are the canonical encoding
// of their text read this way, these are exactly those ids.
std::vector<int32_t> candidate_ids(const model::Tokenizer& tok, std::string_view candidate);

// Score: INVALID_ARGUMENT with both counts when prompt + candidate do not fit.
grpc::Status check_score_context(int prompt_tokens, int candidate_tokens, int context);

// Score: rouge_segmenter and rouge_mode must be values this server knows,
// whether or not a reference asks for ROUGE (INVALID_ARGUMENT listing them).
grpc::Status check_rouge_choices(const v1::ScoreRequest& req);

// Score's ROUGE of req's candidate against its reference, into dst.rouge, with
// the mode and segmenter used echoed in dst.rouge_mode / dst.rouge_segmenter.
// UNSPECIFIED mode is ROUGE_MODE_CHINESE_COMPAT; UNSPECIFIED segmenter is
// jieba with the HMM in that mode (any language: ' '.join(jieba.cut(text))),
// char for Chinese and english for English (`language`) in ROUGE_MODE_LIN
// (docs/rouge.md). FAILED_PRECONDITION when jieba is needed and `jieba` is
// null or lacks the HMM tables; INVALID_ARGUMENT for texts the mode refuses
// (too long; for rouge_chinese, a whitespace-only reference). The caller has
// passed req through check_rouge_choices: mode and segmenter are known values.
grpc::Status score_rouge(v1::ScoreResponse& dst, const v1::ScoreRequest& req, prompt::Language language,
                         const text::JiebaDict* jieba);

// Parses a request message from its wire bytes. Strings that are not UTF-8
// give INVALID_ARGUMENT naming the field path and byte offset
// ("findings is not valid UTF-8 at byte 17"), anything else unparsable
// "the request is not a valid chatradio.v1.ScoreRequest".
grpc::Status parse_request(google::protobuf::Message& dst, const std::string& bytes);

v1::Language to_proto(prompt::Language lang);
std::string_view code_name(grpc::StatusCode code);  // "OK", "INVALID_ARGUMENT", ...

// The one wording of "this server takes no more work" (UNAVAILABLE), for calls
// refused while draining and for engine submissions refused at shutdown.
inline constexpr std::string_view kDrainingMessage = "the server is draining; retry on another instance";
// The same for a request the drain stopped after `tokens` generated tokens
// (tokens < 0: before it reached the engine).
std::string drain_stopped_message(int tokens);
// DEADLINE_EXCEEDED "deadline exceeded after N generated tokens" (no count
// when tokens < 0: the request never reached the engine).
grpc::Status deadline_status(int tokens);

// The gRPC status for an engine outcome that is not kOk, when the client is
// still there (the service classifies calls whose client went away itself).
// kCancelled: the engine stopped (shutdown) -> UNAVAILABLE; kExpired ->
// DEADLINE_EXCEEDED; rejections: overload -> RESOURCE_EXHAUSTED in one wording
// naming `max_waiting`, shutdown -> UNAVAILABLE, anything else (too large for
// the KV pool, ...) -> INVALID_ARGUMENT; failures -> INTERNAL. `tokens`: what
// the request had generated.
grpc::Status status_from_outcome(const engine::Outcome& o, int tokens, int max_waiting);

// FINISH_REASON_* for a kOk generation. The only stop predicate the service
// installs is the repetition guard, so Finish::kStop is REPETITION.
v1::FinishReason finish_reason(engine::Finish f);
std::string_view finish_name(v1::FinishReason f);  // "eos", "length", ... for logs

}  // namespace chatradio::service
