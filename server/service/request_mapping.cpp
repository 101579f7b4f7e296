#include "server/service/request_mapping.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <sstream>

#include "server/text/rouge_chinese.h"
#include "server/text/segment.h"
#include "server/service/request_log.h"
#include "server/text/utf8.h"

namespace chatradio::service {

namespace {

using grpc::Status;
using grpc::StatusCode;

Status invalid(std::string msg) { return Status(StatusCode::INVALID_ARGUMENT, std::move(msg)); }

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Upper bounds that keep obviously broken values out: the sampler itself only
// needs finite values, but temperature 1e30 or a penalty of 1e6 are client bugs.
constexpr float kMaxTemperature = 100.0f;
constexpr float kMaxRepetitionPenalty = 100.0f;

}  // namespace

ResolvedSampling preset_values(Preset preset) {
  ResolvedSampling r;
  r.max_tokens = 512;
  if (preset == Preset::kPaper) {
    r.params.temperature = 1.0f;
    r.params.top_k = 50;
    r.params.top_p = 1.0f;
  } else {
    r.params.temperature = 0.0f;
    r.params.top_k = 0;
    r.params.top_p = 1.0f;
  }
  r.params.repetition_penalty = 1.0f;
  return r;
}

Status resolve_sampling(ResolvedSampling& dst, const v1::SamplingParams& req, Preset server_default,
                        uint64_t fallback_seed) {
  Preset preset = server_default;
  switch (req.preset()) {
    case v1::SamplingParams::PRESET_UNSPECIFIED:
      break;
    case v1::SamplingParams::PRESET_GREEDY:
      preset = Preset::kGreedy;
      break;
    case v1::SamplingParams::PRESET_PAPER:
      preset = Preset::kPaper;
      break;
    default:
      return invalid("sampling.preset " + std::to_string(req.preset()) +
                     " is not a known preset (PRESET_GREEDY = 1, PRESET_PAPER = 2)");
  }
  ResolvedSampling r = preset_values(preset);
  if (req.has_max_tokens()) {
    if (req.max_tokens() < 1) return invalid("sampling.max_tokens must be >= 1 (got 0)");
    if (req.max_tokens() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
      return invalid("sampling.max_tokens must be <= 2147483647 (got " + std::to_string(req.max_tokens()) + ")");
    }
    r.max_tokens = static_cast<int>(req.max_tokens());
    r.max_tokens_explicit = true;
  }
  if (req.has_temperature()) {
    const float t = req.temperature();
    if (!std::isfinite(t) || t < 0.0f || t > kMaxTemperature) {
      return invalid("sampling.temperature must be in [0, " + fmt(kMaxTemperature) + "] (0 = greedy), got " + fmt(t));
    }
    r.params.temperature = t;
  }
  if (req.has_top_k()) {
    if (req.top_k() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
      return invalid("sampling.top_k must be in [0, 2147483647] (0 = off), got " + std::to_string(req.top_k()));
    }
    r.params.top_k = static_cast<int>(req.top_k());
  }
  if (req.has_top_p()) {
    const float p = req.top_p();
    if (!std::isfinite(p) || !(p > 0.0f && p <= 1.0f)) {
      return invalid("sampling.top_p must be in (0, 1], got " + fmt(p));
    }
    r.params.top_p = p;
  }
  if (req.has_repetition_penalty()) {
    const float rp = req.repetition_penalty();
    if (!std::isfinite(rp) || !(rp > 0.0f) || rp > kMaxRepetitionPenalty) {
      return invalid("sampling.repetition_penalty must be in (0, " + fmt(kMaxRepetitionPenalty) +
                     "] (1 = off), got " + fmt(rp));
    }
    r.params.repetition_penalty = rp;
  }
  r.params.seed = req.has_seed() ? req.seed() : fallback_seed;
  // The engine checks again; anything it would refuse must have failed above.
  if (std::string e = model::validate(r.params); !e.empty()) return invalid("sampling: " + e);
  dst = r;
  return Status::OK;
}

Status map_priority(engine::Priority& dst, v1::Priority p) {
  switch (p) {
    case v1::PRIORITY_UNSPECIFIED:
    case v1::PRIORITY_ROUTINE:
      dst = engine::Priority::kRoutine;
      return Status::OK;
    case v1::PRIORITY_STAT:
      dst = engine::Priority::kStat;
      return Status::OK;
    default:
      return invalid("priority " + std::to_string(static_cast<int>(p)) +
                     " is not a known priority (PRIORITY_ROUTINE = 1, PRIORITY_STAT = 2)");
  }
}

namespace {

Status map_language(std::optional<prompt::Language>& dst, v1::Language l) {
  switch (l) {
    case v1::LANGUAGE_UNSPECIFIED:
    case v1::LANGUAGE_AUTO:
      dst.reset();
      return Status::OK;
    case v1::LANGUAGE_ZH:
      dst = prompt::Language::kZh;
      return Status::OK;
    case v1::LANGUAGE_EN:
      dst = prompt::Language::kEn;
      return Status::OK;
    default:
      return invalid("context.language " + std::to_string(static_cast<int>(l)) +
                     " is not a known language (LANGUAGE_AUTO = 1, LANGUAGE_ZH = 2, LANGUAGE_EN = 3)");
  }
}

// OTHER and UNSPECIFIED both render as "not specified": the templates have no
// wording for "some other modality".
Status map_modality(std::optional<prompt::Modality>& dst, v1::Modality m) {
  dst.reset();
  switch (m) {
    case v1::MODALITY_UNSPECIFIED:
    case v1::MODALITY_OTHER:
      return Status::OK;
    case v1::MODALITY_CT:
      dst = prompt::Modality::kCT;
      return Status::OK;
    case v1::MODALITY_MR:
      dst = prompt::Modality::kMR;
      return Status::OK;
    case v1::MODALITY_XR:
      dst = prompt::Modality::kXR;
      return Status::OK;
    case v1::MODALITY_US:
      dst = prompt::Modality::kUS;
      return Status::OK;
    case v1::MODALITY_PET_CT:
      dst = prompt::Modality::kPETCT;
      return Status::OK;
    default:
      return invalid("context.modality " + std::to_string(static_cast<int>(m)) + " is not a known modality");
  }
}

Status map_body_system(std::optional<prompt::BodySystem>& dst, v1::BodySystem b) {
  dst.reset();
  switch (b) {
    case v1::BODY_SYSTEM_UNSPECIFIED:
    case v1::BODY_SYSTEM_OTHER:
      return Status::OK;
    case v1::BODY_SYSTEM_CHEST:
      dst = prompt::BodySystem::kChest;
      return Status::OK;
    case v1::BODY_SYSTEM_ABDOMEN:
      dst = prompt::BodySystem::kAbdomen;
      return Status::OK;
    case v1::BODY_SYSTEM_MUSCULOSKELETAL:
      dst = prompt::BodySystem::kMusculoskeletal;
      return Status::OK;
    case v1::BODY_SYSTEM_HEAD:
      dst = prompt::BodySystem::kHead;
      return Status::OK;
    case v1::BODY_SYSTEM_MAXILLOFACIAL_NECK:
      dst = prompt::BodySystem::kMaxillofacialNeck;
      return Status::OK;
    default:
      return invalid("context.body_system " + std::to_string(static_cast<int>(b)) + " is not a known body system");
  }
}

}  // namespace

Status prepare_prompt(PreparedPrompt& dst, const prompt::TemplateSet& templates, const model::Tokenizer& tok,
                      std::string_view findings, const v1::ReportContext& context,
                      const prompt::FindingsLimits& limits) {
  if (auto err = prompt::check_findings(findings, limits)) return invalid(*err);
  std::optional<prompt::Language> lang;
  std::optional<prompt::Modality> modality;
  std::optional<prompt::BodySystem> body;
  if (Status s = map_language(lang, context.language()); !s.ok()) return s;
  if (Status s = map_modality(modality, context.modality()); !s.ok()) return s;
  if (Status s = map_body_system(body, context.body_system()); !s.ok()) return s;
  if (auto err = prompt::check_text("context.template_id", context.template_id())) return invalid(*err);
  const prompt::Language language = lang ? *lang : prompt::detect_language(findings);

  std::optional<std::string_view> id;
  if (!context.template_id().empty()) id = context.template_id();
  const prompt::Selection sel = templates.select(id, language, body);
  if (!sel) {
    // select() quotes the requested id, which is the caller's: clipped.
    std::string msg = sel.error;
    if (const size_t at = id ? msg.find(*id) : std::string::npos; at != std::string::npos) {
      msg.replace(at, id->size(), clip(*id));
    }
    return Status(sel.error_kind == prompt::SelectError::kLanguageMismatch ? StatusCode::INVALID_ARGUMENT
                                                                           : StatusCode::NOT_FOUND,
                  msg);
  }
  const prompt::Rendered rendered = prompt::render(*sel.tmpl, prompt::RenderInput{findings, modality, body});
  dst.ids = prompt::encode_prompt(tok, rendered);
  dst.template_id = rendered.template_id;
  dst.template_version = rendered.template_version;
  dst.language = language;
  if (dst.ids.empty()) return invalid("the rendered prompt has no tokens");
  return Status::OK;
}

Status fit_max_tokens(int& dst, const ResolvedSampling& s, int prompt_tokens, int context) {
  if (s.max_tokens_explicit) {
    if (auto err = prompt::check_context(prompt_tokens, s.max_tokens, context)) return invalid(*err);
    dst = s.max_tokens;
    return Status::OK;
  }
  // The preset's 512 is a ceiling, not a demand: a long report on a model with
  // a small context still gets what room there is. Only "no room at all" fails.
  const int room = context - prompt_tokens;
  if (room < 1) {
    if (auto err = prompt::check_context(prompt_tokens, 1, context)) return invalid(*err);
  }
  dst = std::min(s.max_tokens, room);
  return Status::OK;
}

Status check_score_texts(const v1::ScoreRequest& req, const prompt::FindingsLimits& limits) {
  const auto check = [&](std::string_view name, const std::string& text) -> std::optional<std::string> {
    if (text.size() > limits.max_bytes) {
      return std::string(name) + " is " + std::to_string(text.size()) + " bytes; the limit is " +
             std::to_string(limits.max_bytes) + " bytes";
    }
    return prompt::check_text(name, text);
  };
  if (auto err = check("candidate_impression", req.candidate_impression())) return invalid(*err);
  if (prompt::is_blank(req.candidate_impression())) return invalid("candidate_impression is empty");
  if (auto err = check("reference_impression", req.reference_impression())) return invalid(*err);
  return Status::OK;
}

std::vector<int32_t> candidate_ids(const model::Tokenizer& tok, std::string_view candidate) {
  std::vector<int32_t> with_prefix = tok.encode(candidate, /*add_bos=*/false);
  // Generated text does not say whether its first piece had a "▁" (decoding
  // drops it); the text starts a word either way. Of the two readings, the
  // shorter is the one generation can have produced canonically: ".", "\n" or
  // "ce" as a first piece re-encode with the prefix as "▁" + "." or "▁c" + "e".
  // Equal lengths keep sentencepiece's own encoding. The decode test keeps the
  // prefix where the text starts with a real space.
  std::vector<int32_t> without = tok.encode_continuation(candidate);
  if (!without.empty() && without.size() < with_prefix.size() && tok.decode(without) == tok.decode(with_prefix)) {
    return without;
  }
  return with_prefix;
}

Status check_score_context(int prompt_tokens, int candidate_tokens, int context) {
  if (static_cast<int64_t>(prompt_tokens) + candidate_tokens <= context) return Status::OK;
  return invalid("input is " + std::to_string(prompt_tokens) + " tokens and candidate_impression is " +
                 std::to_string(candidate_tokens) + " tokens; together they exceed the model context of " +
                 std::to_string(context) + " tokens");
}

namespace {

// "NAME = 1, NAME = 2" for the values of `e` other than 0 (UNSPECIFIED).
std::string known_values(const google::protobuf::EnumDescriptor& e) {
  std::string out;
  for (int i = 0; i < e.value_count(); ++i) {
    if (e.value(i)->number() == 0) continue;
    if (!out.empty()) out += ", ";
    out += e.value(i)->name() + " = " + std::to_string(e.value(i)->number());
  }
  return out;
}

}  // namespace

Status check_rouge_choices(const v1::ScoreRequest& req) {
  if (!v1::ScoreRequest::Segmenter_IsValid(req.rouge_segmenter())) {
    return invalid("rouge_segmenter " + std::to_string(static_cast<int>(req.rouge_segmenter())) +
                   " is not a known segmenter (" + known_values(*v1::ScoreRequest::Segmenter_descriptor()) + ")");
  }
  if (!v1::RougeMode_IsValid(req.rouge_mode())) {
    return invalid("rouge_mode " + std::to_string(static_cast<int>(req.rouge_mode())) + " is not a known mode (" +
                   known_values(*v1::RougeMode_descriptor()) + ")");
  }
  return Status::OK;
}

Status score_rouge(v1::ScoreResponse& dst, const v1::ScoreRequest& req, prompt::Language language,
                   const text::JiebaDict* jieba) {
  // Known values only (check_rouge_choices ran first).
  const v1::RougeMode mode_used =
      req.rouge_mode() == v1::ROUGE_MODE_LIN ? v1::ROUGE_MODE_LIN : v1::ROUGE_MODE_CHINESE_COMPAT;
  const text::RougeMode mode =
      mode_used == v1::ROUGE_MODE_LIN ? text::RougeMode::kLin : text::RougeMode::kChineseCompat;
  v1::ScoreRequest::Segmenter seg_used = req.rouge_segmenter();
  if (seg_used == v1::ScoreRequest::SEGMENTER_UNSPECIFIED) {
    if (mode == text::RougeMode::kChineseCompat) {
      seg_used = v1::ScoreRequest::SEGMENTER_JIEBA;
    } else {
      seg_used = language == prompt::Language::kZh ? v1::ScoreRequest::SEGMENTER_CHAR
                                                   : v1::ScoreRequest::SEGMENTER_ENGLISH;
    }
  }
  std::unique_ptr<text::Segmenter> seg;
  if (seg_used == v1::ScoreRequest::SEGMENTER_CHAR) {
    seg = std::make_unique<text::CharSegmenter>();
  } else if (seg_used == v1::ScoreRequest::SEGMENTER_ENGLISH) {
    seg = std::make_unique<text::EnglishSegmenter>();
  } else {  // SEGMENTER_JIEBA, SEGMENTER_JIEBA_NO_HMM
    const bool hmm = seg_used == v1::ScoreRequest::SEGMENTER_JIEBA;
    if (jieba == nullptr || (hmm && jieba->hmm() == nullptr)) {
      const std::string which = req.rouge_segmenter() == seg_used ? "" : " (the mode's default)";
      const std::string lacks = jieba == nullptr ? "dictionary (--jieba-dict)" : "HMM tables";
      return Status(StatusCode::FAILED_PRECONDITION,
                    "rouge_segmenter " + v1::ScoreRequest::Segmenter_Name(seg_used) + which + ": this server has no jieba " + lacks +
                        "; install python3-jieba, or ask for ROUGE_MODE_LIN or SEGMENTER_CHAR");
    }
    seg = std::make_unique<text::JiebaSegmenter>(*jieba, hmm);
  }
  text::RougeScores r;
  try {
    r = text::rouge(mode, req.candidate_impression(), req.reference_impression(), *seg);
  } catch (const text::TextError& e) {
    return invalid(std::string("rouge: ") + e.what());
  }
  const auto put = [](v1::RougeScore* d, const text::Score& s) {
    d->set_precision(s.precision);
    d->set_recall(s.recall);
    d->set_f1(s.f1);
  };
  put(dst.mutable_rouge()->mutable_rouge1(), r.rouge1);
  put(dst.mutable_rouge()->mutable_rouge2(), r.rouge2);
  put(dst.mutable_rouge()->mutable_rouge_l(), r.rougeL);
  dst.set_rouge_mode(mode_used);
  dst.set_rouge_segmenter(seg_used);
  return Status::OK;
}

namespace {

// The first proto string field (depth-first, wire order) that is not UTF-8, as
// "path is not valid UTF-8 at byte N". Works on the schema-less
// UnknownFieldSet view, which never rejects a string.
std::optional<std::string> find_invalid_utf8(const google::protobuf::Descriptor& d,
                                             const google::protobuf::UnknownFieldSet& fields,
                                             const std::string& prefix, int depth) {
  using google::protobuf::FieldDescriptor;
  using google::protobuf::UnknownField;
  if (depth > 16) return std::nullopt;
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& f = fields.field(i);
    if (f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* fd = d.FindFieldByNumber(f.number());
    if (fd == nullptr) continue;
    const std::string name = prefix + fd->name();
    if (fd->type() == FieldDescriptor::TYPE_STRING) {
      const std::string& v = f.length_delimited();
      for (size_t pos = 0; pos < v.size();) {
        const text::Utf8Char c = text::decode_utf8(v, pos);
        if (!c.valid) return name + " is not valid UTF-8 at byte " + std::to_string(pos);
        pos += c.len;
      }
    } else if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      google::protobuf::UnknownFieldSet sub;
      if (sub.ParseFromString(f.length_delimited())) {
        if (auto e = find_invalid_utf8(*fd->message_type(), sub, name + ".", depth + 1)) return e;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

Status parse_request(google::protobuf::Message& dst, const std::string& bytes) {
  google::protobuf::UnknownFieldSet raw;
  if (raw.ParseFromString(bytes)) {
    if (auto e = find_invalid_utf8(*dst.GetDescriptor(), raw, "", 0)) return invalid(*e);
  }
  if (!dst.ParseFromString(bytes)) return invalid("the request is not a valid " + dst.GetDescriptor()->full_name());
  return Status::OK;
}

v1::Language to_proto(prompt::Language lang) {
  return lang == prompt::Language::kZh ? v1::LANGUAGE_ZH : v1::LANGUAGE_EN;
}

std::string_view code_name(grpc::StatusCode code) {
  switch (code) {
    case StatusCode::OK: return "OK";
    case StatusCode::CANCELLED: return "CANCELLED";
    case StatusCode::UNKNOWN: return "UNKNOWN";
    case StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case StatusCode::NOT_FOUND: return "NOT_FOUND";
    case StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case StatusCode::ABORTED: return "ABORTED";
    case StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case StatusCode::INTERNAL: return "INTERNAL";
    case StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case StatusCode::DATA_LOSS: return "DATA_LOSS";
    case StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

std::string drain_stopped_message(int tokens) {
  if (tokens < 0) return std::string(kDrainingMessage);
  return "the server is draining; the request was stopped after " + std::to_string(tokens) +
         " generated tokens; retry on another instance";
}

Status deadline_status(int tokens) {
  return Status(StatusCode::DEADLINE_EXCEEDED,
                tokens < 0 ? std::string("deadline exceeded")
                           : "deadline exceeded after " + std::to_string(tokens) + " generated tokens");
}

Status status_from_outcome(const engine::Outcome& o, int tokens, int max_waiting) {
  switch (o.status) {
    case engine::Status::kOk:
      return Status::OK;
    case engine::Status::kCancelled:
      return Status(StatusCode::UNAVAILABLE, drain_stopped_message(tokens));
    case engine::Status::kExpired:
      return deadline_status(tokens);
    case engine::Status::kRejected:
      // The engine's two queue checks word this differently and count waiting
      // requests at different moments; the client gets one wording, and the
      // limit is the number that is certain.
      if (o.error.find("overloaded") != std::string::npos) {
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      "the server is overloaded: the queue of waiting requests is full (--max-waiting " +
                          std::to_string(max_waiting) + "); retry later");
      }
      if (o.error.find("shutting down") != std::string::npos) {
        return Status(StatusCode::UNAVAILABLE, std::string(kDrainingMessage));
      }
      return invalid(o.error);
    case engine::Status::kNonFinite:
    case engine::Status::kFailed:
      return Status(StatusCode::INTERNAL, o.error.empty() ? "the engine failed" : o.error);
  }
  return Status(StatusCode::INTERNAL, "unknown engine status");
}

v1::FinishReason finish_reason(engine::Finish f) {
  switch (f) {
    case engine::Finish::kEos: return v1::FINISH_REASON_EOS;
    case engine::Finish::kLength: return v1::FINISH_REASON_LENGTH;
    case engine::Finish::kStop: return v1::FINISH_REASON_REPETITION;
    default: return v1::FINISH_REASON_UNSPECIFIED;
  }
}

std::string_view finish_name(v1::FinishReason f) {
  switch (f) {
    case v1::FINISH_REASON_EOS: return "eos";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_REPETITION: return "repetition";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    default: return "";
  }
}

}  // namespace chatradio::service
