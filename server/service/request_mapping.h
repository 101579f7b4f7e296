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

// Score: INVALID_ARGUMENT with both counts when prompt + candidate do not fit.
grpc::Status check_score_context(int prompt_tokens, int candidate_tokens, int context);

// Parses a request message from its wire bytes. Strings that are not UTF-8
// give INVALID_ARGUMENT naming the field path and byte offset
// ("findings is not valid UTF-8 at byte 17"), anything else unparsable
// "the request is not a valid chatradio.v1.ScoreRequest".
grpc::Status parse_request(google::protobuf::Message& dst, const std::string& bytes);

v1::Language to_proto(prompt::Language lang);
std::string_view code_name(grpc::StatusCode code);  // "OK", "INVALID_ARGUMENT", ...

// The gRPC status for an engine outcome that is not kOk. `client_cancelled`
// tells a client's cancel (CANCELLED) from the engine shutting down
// (UNAVAILABLE). Rejections: "overloaded" -> RESOURCE_EXHAUSTED, shutdown ->
// UNAVAILABLE, anything else (too large for the KV pool, ...) -> INVALID_ARGUMENT.
grpc::Status status_from_outcome(const engine::Outcome& o, bool client_cancelled);

// FINISH_REASON_* for a kOk generation. The only stop predicate the service
// installs is the repetition guard, so Finish::kStop is REPETITION.
v1::FinishReason finish_reason(engine::Finish f);
std::string_view finish_name(v1::FinishReason f);  // "eos", "length", ... for logs

}  // namespace chatradio::service
