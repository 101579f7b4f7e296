// The raw request bytes of the three RPCs exactly as ImpressionServiceImpl
// handles them before the engine (service.cpp, same steps in the same order):
// parse_request, then for GenerateImpression and StreamImpression (one
// validation path) resolve_sampling, map_priority, prepare_prompt,
// fit_max_tokens; for Score map_priority, prepare_prompt, check_score_texts,
// check_rouge_choices, score_rouge (when there is a reference),
// candidate_ids, check_score_context. Real components: deploy/templates.json,
// the Llama 2 tokenizer from ../shared, and Debian's jieba dictionary with
// its HMM when installed (else Score's jieba modes fail as the server does
// without one, FAILED_PRECONDITION). Then the request's log line, as
// Logger::request writes it.
//
// Input: one selector byte, then the request's wire bytes. Selector bit 0:
// Score, else GenerateImpression; bit 1: the server's default preset is
// greedy (else paper); bit 2: a 512-token model context (else 4096); bit 3:
// --max-input-bytes 64 (else 32768).
//
// Traps: any exception (the handlers catch none); a refusal with a code
// other than INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION, an empty
// message, one over 1 kB (client strings are clipped: issue 10 item 7), or
// one that is not UTF-8 or holds control characters; a log line over 4 kB or
// not JSON; and for accepted requests, a prompt or candidate with ids outside
// the vocabulary or that does not fit the context, sampling parameters the
// engine would refuse, a template of the wrong language, or ROUGE scores
// outside [0, 1]. Report text in messages and logs is the soak's check
// (tests/soak): here the fuzzer soon makes a "report" out of the log's own
// wording, which no substring test can tell from a leak.
//
// fuzz-seed-command: /usr/bin/python3 tests/fuzz/request_seeds.py
// fuzz-options: -max_len=8192
// fuzz-link: chatradio_service
#include <google/protobuf/stubs/logging.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "chatradio/v1/impression_service.pb.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "server/prompt/templates.h"
#include "server/prompt/validate.h"
#include "server/service/request_log.h"
#include "server/service/request_mapping.h"
#include "server/text/segment.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace service = chatradio::service;
namespace v1 = chatradio::v1;
using grpc::Status;
using grpc::StatusCode;

constexpr size_t kMaxMessageBytes = 1024;
constexpr size_t kMaxLogLineBytes = 4096;  // the soak's bound (docs/testing.md)

struct Fixture {
  chatradio::prompt::TemplateSet templates;
  chatradio::model::Tokenizer tokenizer;
  std::unique_ptr<chatradio::text::JiebaDict> jieba;  // null when python3-jieba is not installed
};

const Fixture& fixture() {
  static const Fixture f = [] {
    const std::string tok = chatradio::fuzz::shared_path("tokenizers/llama2/tokenizer.model");
    if (!chatradio::fuzz::exists(tok)) {
      std::fprintf(stderr, "SKIP: %s is absent (../shared)\n", tok.c_str());
      std::exit(0);
    }
    std::unique_ptr<chatradio::text::JiebaDict> jieba;
    if (chatradio::fuzz::exists(chatradio::text::JiebaDict::kDebianPath)) {
      jieba = std::make_unique<chatradio::text::JiebaDict>(
          chatradio::text::JiebaDict::load(chatradio::text::JiebaDict::kDebianPath));
    }
    return Fixture{chatradio::prompt::TemplateSet::load(std::string(CHATRADIO_SOURCE_DIR) + "/deploy/templates.json"),
                   chatradio::model::Tokenizer::load(tok), std::move(jieba)};
  }();
  return f;
}

struct Settings {
  service::Preset preset;
  int context;
  chatradio::prompt::FindingsLimits limits;
};

bool ids_in_vocab(const std::vector<int32_t>& ids, const chatradio::model::Tokenizer& tok) {
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) return false;
  }
  return true;
}

// Priority, then the prompt: the steps every RPC takes, in the service's order.
template <class Request>
Status prompt_of(service::PreparedPrompt& pp, const Request& req, const Settings& s) {
  chatradio::engine::Priority priority{};
  if (Status st = service::map_priority(priority, req.priority()); !st.ok()) return st;
  const Fixture& f = fixture();
  return service::prepare_prompt(pp, f.templates, f.tokenizer, req.findings(), req.context(), s.limits);
}

// GenerateImpression / StreamImpression up to the engine submission.
Status generate(service::RequestRecord& rec, const v1::GenerateImpressionRequest& req, const Settings& s) {
  const Fixture& f = fixture();
  rec.client_request_id = req.client_request_id();
  rec.institution_id = req.context().institution_id();
  service::ResolvedSampling sampling;
  if (Status st = service::resolve_sampling(sampling, req.sampling(), s.preset, 42); !st.ok()) return st;
  service::PreparedPrompt pp;
  if (Status st = prompt_of(pp, req, s); !st.ok()) return st;
  rec.template_id = pp.template_id;
  rec.language = std::string(chatradio::prompt::to_string(pp.language));
  int max_new = 0;
  if (Status st = service::fit_max_tokens(max_new, sampling, static_cast<int>(pp.ids.size()), s.context); !st.ok()) {
    return st;
  }
  const chatradio::prompt::Template* t = f.templates.find(pp.template_id);
  if (t == nullptr || t->language != pp.language || pp.ids.empty() || !ids_in_vocab(pp.ids, f.tokenizer) ||
      max_new < 1 || static_cast<int64_t>(pp.ids.size()) + max_new > s.context ||
      !chatradio::model::validate(sampling.params).empty()) {
    __builtin_trap();
  }
  return Status::OK;
}

bool unit_score(const v1::RougeScore& r) {
  for (double v : {r.precision(), r.recall(), r.f1()}) {
    if (!std::isfinite(v) || v < 0 || v > 1) return false;
  }
  return true;
}

// Score up to the engine submission.
Status score(service::RequestRecord& rec, const v1::ScoreRequest& req, const Settings& s) {
  const Fixture& f = fixture();
  rec.client_request_id = req.client_request_id();
  rec.institution_id = req.context().institution_id();
  service::PreparedPrompt pp;
  if (Status st = prompt_of(pp, req, s); !st.ok()) return st;
  if (Status st = service::check_score_texts(req, s.limits); !st.ok()) return st;
  rec.template_id = pp.template_id;
  rec.language = std::string(chatradio::prompt::to_string(pp.language));
  if (Status st = service::check_rouge_choices(req); !st.ok()) return st;
  v1::ScoreResponse resp;
  if (!req.reference_impression().empty()) {
    if (Status st = service::score_rouge(resp, req, pp.language, f.jieba.get()); !st.ok()) return st;
    const v1::Rouge& r = resp.rouge();
    if (!unit_score(r.rouge1()) || !unit_score(r.rouge2()) || !unit_score(r.rouge_l())) __builtin_trap();
  }
  const std::vector<int32_t> cont = service::candidate_ids(f.tokenizer, req.candidate_impression());
  if (cont.empty()) return Status(StatusCode::INVALID_ARGUMENT, "candidate_impression has no tokens");
  const int prompt_tokens = static_cast<int>(pp.ids.size());
  if (Status st = service::check_score_context(prompt_tokens, static_cast<int>(cont.size()), s.context); !st.ok()) {
    return st;
  }
  if (!ids_in_vocab(pp.ids, f.tokenizer) || !ids_in_vocab(cont, f.tokenizer) ||
      static_cast<int64_t>(prompt_tokens) + static_cast<int64_t>(cont.size()) > s.context) {
    __builtin_trap();
  }
  return Status::OK;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // libprotobuf prints a line for every string that is not UTF-8 (the server
  // routes those through its logger, library_log.h): noise here.
  google::protobuf::SetLogHandler(nullptr);
  (void)fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t sel = data[0];
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const Settings settings{(sel & 2) ? service::Preset::kGreedy : service::Preset::kPaper, (sel & 4) ? 512 : 4096,
                          chatradio::prompt::FindingsLimits{(sel & 8) ? size_t{64} : size_t{32 * 1024}}};

  service::RequestRecord rec;
  rec.request_id = "fuzz-000001";
  Status st;
  if (sel & 1) {
    rec.rpc = "Score";
    v1::ScoreRequest req;
    st = service::parse_request(req, bytes);
    if (st.ok()) st = score(rec, req, settings);
  } else {
    rec.rpc = "GenerateImpression";
    v1::GenerateImpressionRequest req;
    st = service::parse_request(req, bytes);
    if (st.ok()) st = generate(rec, req, settings);
  }

  if (!st.ok()) {
    const std::string& m = st.error_message();
    const StatusCode c = st.error_code();
    if (c != StatusCode::INVALID_ARGUMENT && c != StatusCode::NOT_FOUND && c != StatusCode::FAILED_PRECONDITION) {
      __builtin_trap();
    }
    if (m.empty() || m.size() > kMaxMessageBytes || chatradio::prompt::check_text("message", m)) __builtin_trap();
  }
  rec.code = st.error_code();
  rec.error = st.error_message();
  std::string line;
  service::Logger log([&](const std::string& l) { line = l; });
  log.request(rec);
  if (line.empty() || line.size() > kMaxLogLineBytes || !nlohmann::json::accept(line)) __builtin_trap();
  return 0;
}
