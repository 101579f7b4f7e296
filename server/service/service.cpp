#include "server/service/service.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/support/method_handler.h>

#include <google/protobuf/descriptor.h>

#include <cmath>
#include <cstdio>
#include <iterator>
#include <random>
#include <stdexcept>

#include "server/prompt/validate.h"

namespace chatradio::service {

namespace {

using grpc::Status;
using grpc::StatusCode;
using SteadyClock = std::chrono::steady_clock;

double seconds_since(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The client's deadline, on the engine's clock. None when the client set none.
std::optional<engine::Clock::time_point> engine_deadline(const grpc::ServerContext& ctx) {
  const auto d = ctx.deadline();
  if (d == std::chrono::system_clock::time_point::max()) return std::nullopt;
  const auto left = d - std::chrono::system_clock::now();
  return engine::Clock::now() + std::chrono::duration_cast<engine::Clock::duration>(left);
}

bool deadline_passed(const std::optional<engine::Clock::time_point>& d) {
  return d && *d <= engine::Clock::now();
}

// The client's deadline has passed by the context's own clock (the realtime
// conversion of gRPC's monotonic deadline happens inside deadline(), now).
bool context_expired(const grpc::ServerContext& ctx, std::chrono::milliseconds slack) {
  const auto d = ctx.deadline();
  return d != std::chrono::system_clock::time_point::max() && std::chrono::system_clock::now() + slack >= d;
}

std::string_view priority_name(engine::Priority p) { return p == engine::Priority::kStat ? "stat" : "routine"; }

}  // namespace

// One RPC from the handler's first line to its last: the log record, the
// accept time every reported time is measured from, and metrics-only numbers.
struct ImpressionServiceImpl::Scope {
  explicit Scope(std::string_view rpc_name) { rec.rpc = std::string(rpc_name); }
  RequestRecord rec;
  SteadyClock::time_point accepted = SteadyClock::now();
  int generated_all = 0;         // every attempt's tokens (what the engine did)
  double per_output_token_s = -1;
  bool reached_engine = false;
  bool admitted = false;  // counted in in_flight_ until finish()
};

// Text deltas of one attempt. While the output so far is blank (nothing but
// whitespace) it is held back rather than sent: a blank attempt may be retried,
// and what a client received must equal the final impression. Once visible
// text appears, everything held and everything after goes out as it comes.
class ImpressionServiceImpl::TextStream {
 public:
  explicit TextStream(grpc::ServerWriter<v1::StreamImpressionResponse>* writer) : writer_(writer) {}
  // False when the client is gone.
  bool add(const std::string& delta) {
    text_ += delta;
    if (writer_ == nullptr || delta.empty()) return true;
    if (!sending_) {
      held_ += delta;
      if (prompt::is_blank(held_)) return true;
      sending_ = true;
      std::string out;
      out.swap(held_);
      return send(out);
    }
    return send(delta);
  }
  // End of the last attempt: whatever is still held goes out too.
  bool close() {
    if (writer_ == nullptr || held_.empty()) return true;
    std::string out;
    out.swap(held_);
    return send(out);
  }
  const std::string& text() const { return text_; }

 private:
  bool send(const std::string& s) {
    v1::StreamImpressionResponse msg;
    msg.set_delta(s);
    return writer_->Write(msg);
  }
  grpc::ServerWriter<v1::StreamImpressionResponse>* writer_;
  std::string text_;
  std::string held_;
  bool sending_ = false;
};

struct ImpressionServiceImpl::Attempt {
  engine::Outcome outcome;
  Stop stop = Stop::kNone;
  int received = 0;  // tokens delivered to the handler (a cancelled outcome carries none)
  double submitted_s = 0;   // accepted -> submit
  double first_token_s = -1;  // accepted -> first token
  double last_token_s = -1;
};

namespace {

// The request's wire bytes, in one piece.
std::string bytes_of(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// The registration below mirrors the proto by hand; if the proto gains or
// changes a method, fail at start (and in every test) instead of serving an
// incomplete service.
void check_matches_proto() {
  const google::protobuf::ServiceDescriptor* sd =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("chatradio.v1.ImpressionService");
  struct Expected {
    const char* name;
    const google::protobuf::Descriptor* in;
    const google::protobuf::Descriptor* out;
    bool server_streaming;
  };
  const Expected expected[] = {
      {"GenerateImpression", v1::GenerateImpressionRequest::descriptor(), v1::GenerateImpressionResponse::descriptor(),
       false},
      {"StreamImpression", v1::GenerateImpressionRequest::descriptor(), v1::StreamImpressionResponse::descriptor(),
       true},
      {"Score", v1::ScoreRequest::descriptor(), v1::ScoreResponse::descriptor(), false},
  };
  bool ok = sd != nullptr && sd->method_count() == static_cast<int>(std::size(expected));
  for (const Expected& e : expected) {
    const google::protobuf::MethodDescriptor* m = ok ? sd->FindMethodByName(e.name) : nullptr;
    ok = ok && m != nullptr && m->input_type() == e.in && m->output_type() == e.out && !m->client_streaming() &&
         m->server_streaming() == e.server_streaming;
  }
  if (!ok) {
    throw std::logic_error("ImpressionServiceImpl registers methods that no longer match "
                           "proto/chatradio/v1/impression_service.proto: update service.cpp");
  }
}

}  // namespace

ImpressionServiceImpl::ImpressionServiceImpl(ServiceDeps deps) : deps_(deps) {
  check_matches_proto();
  // What the generated ImpressionService::Service constructor does, with
  // ByteBuffer requests (see the header).
  using grpc::internal::RpcMethod;
  using grpc::internal::RpcServiceMethod;
  using Self = ImpressionServiceImpl;
  AddMethod(new RpcServiceMethod(
      "/chatradio.v1.ImpressionService/GenerateImpression", RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<Self, grpc::ByteBuffer, v1::GenerateImpressionResponse, grpc::ByteBuffer,
                                           google::protobuf::MessageLite>(
          [](Self* s, grpc::ServerContext* ctx, const grpc::ByteBuffer* req, v1::GenerateImpressionResponse* resp) {
            return s->GenerateImpression(ctx, req, resp);
          },
          this)));
  AddMethod(new RpcServiceMethod(
      "/chatradio.v1.ImpressionService/StreamImpression", RpcMethod::SERVER_STREAMING,
      new grpc::internal::ServerStreamingHandler<Self, grpc::ByteBuffer, v1::StreamImpressionResponse>(
          [](Self* s, grpc::ServerContext* ctx, const grpc::ByteBuffer* req,
             grpc::ServerWriter<v1::StreamImpressionResponse>* writer) {
            return s->StreamImpression(ctx, req, writer);
          },
          this)));
  AddMethod(new RpcServiceMethod(
      "/chatradio.v1.ImpressionService/Score", RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<Self, grpc::ByteBuffer, v1::ScoreResponse, grpc::ByteBuffer,
                                           google::protobuf::MessageLite>(
          [](Self* s, grpc::ServerContext* ctx, const grpc::ByteBuffer* req, v1::ScoreResponse* resp) {
            return s->Score(ctx, req, resp);
          },
          this)));

  const ServerOptions& o = *deps_.opts;
  if (o.repetition_guard) {
    detector_ = std::make_unique<prompt::RepetitionDetector>(
        prompt::RepetitionOptions{o.repetition_max_period, o.repetition_min_repeats, o.repetition_min_span});
  }
  std::random_device rd;
  const uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  seed_state_.store(r);
  char prefix[16];
  std::snprintf(prefix, sizeof prefix, "%08x", static_cast<unsigned>(splitmix64(r) >> 32));
  id_prefix_ = prefix;
}

// Waits for an engine request to end, feeding new tokens to `on_tokens` (which
// returns false when the client is gone) and cancelling the engine request as
// soon as the client cancels, disconnects or its deadline passes, or the drain
// aborts what is left.
template <typename OnTokens>
ImpressionServiceImpl::Stop ImpressionServiceImpl::follow(engine::Handle& h, grpc::ServerContext* ctx,
                                                          OnTokens&& on_tokens) {
  std::vector<int32_t> got;
  Stop stop = Stop::kNone;
  const auto stop_for = [&](Stop why) {
    if (stop != Stop::kNone) return;
    stop = why;
    h.cancel();  // frees its KV blocks at the engine's next step
  };
  for (;;) {
    if (aborting_.load(std::memory_order_acquire)) stop_for(Stop::kAborted);
    const bool more = h.next_for(got, kPoll);
    if (!got.empty()) {
      if (!on_tokens(got)) stop_for(Stop::kClientGone);
      got.clear();
    }
    if (!more) break;
    if (ctx->IsCancelled()) stop_for(Stop::kClientGone);
  }
  if (stop == Stop::kNone && ctx->IsCancelled()) stop = Stop::kClientGone;
  return stop;
}

// A call whose client is gone: when the deadline (give or take kDeadlineSlack)
// has passed it is the deadline, otherwise the client cancelled. A drain that
// aborted the call is what the client saw instead.
Status ImpressionServiceImpl::gone_status(const grpc::ServerContext& ctx, int tokens) const {
  if (aborting_.load(std::memory_order_acquire)) return Status(StatusCode::UNAVAILABLE, drain_stopped_message(tokens));
  if (context_expired(ctx, kDeadlineSlack)) return deadline_status(tokens);
  return Status(StatusCode::CANCELLED, "the client cancelled the request" +
                                           (tokens < 0 ? "" : " after " + std::to_string(tokens) + " generated tokens"));
}

Status ImpressionServiceImpl::end_status(const engine::Outcome& o, Stop stop, const grpc::ServerContext& ctx,
                                         int tokens) const {
  switch (stop) {
    case Stop::kAborted:
      return Status(StatusCode::UNAVAILABLE, drain_stopped_message(tokens));
    case Stop::kClientGone:
      if (o.status == engine::Status::kCancelled) return gone_status(ctx, tokens);
      break;
    case Stop::kNone:
      break;
  }
  // gRPC cancels the call when the deadline passes, so the engine's own expiry
  // and our cancel race; both are the deadline, with the same message.
  if (o.status == engine::Status::kExpired) return deadline_status(tokens);
  return status_from_outcome(o, tokens, deps_.opts->max_waiting);
}

uint64_t ImpressionServiceImpl::fresh_seed() {
  return splitmix64(seed_state_.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed));
}

std::string ImpressionServiceImpl::next_request_id() {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s-%06llu", id_prefix_.c_str(),
                static_cast<unsigned long long>(request_counter_.fetch_add(1, std::memory_order_relaxed) + 1));
  return buf;
}

Status ImpressionServiceImpl::admit(const grpc::ServerContext& ctx, const Runtime*& rt, Scope& scope) {
  if (std::string err = deps_.auth->check(ctx); !err.empty()) return Status(StatusCode::UNAUTHENTICATED, err);
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return Status(StatusCode::UNAVAILABLE, std::string(kDrainingMessage));
  rt = runtime_.load(std::memory_order_acquire);
  if (rt == nullptr) return Status(StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
  ++in_flight_;
  scope.admitted = true;
  return Status::OK;
}

void ImpressionServiceImpl::set_draining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool ImpressionServiceImpl::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return in_flight_ == 0; });
}

Status ImpressionServiceImpl::finish(Scope& scope, Status status) {
  RequestRecord& rec = scope.rec;
  rec.code = status.error_code();
  rec.error = status.ok() ? "" : status.error_message();
  rec.total_s = seconds_since(scope.accepted);
  RequestSample s;
  s.rpc = rec.rpc;
  s.code = rec.code;
  s.total_s = rec.total_s;
  if (scope.reached_engine) {
    s.prompt_tokens = rec.prompt_tokens * std::max(1, rec.attempts);
    s.generated_tokens = scope.generated_all;
    s.queue_s = rec.queue_s;
    if (rec.rpc != "Score") {
      s.first_token_s = rec.first_token_s;
      s.per_output_token_s = scope.per_output_token_s;
    }
  }
  deps_.metrics->record(s);
  deps_.log->request(rec);
  if (scope.admitted) {
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_flight_ == 0) idle_cv_.notify_all();
  }
  return status;
}

// Before anything else: a call whose client is already gone (cancelled, or
// expired before its message even arrived) is accounted as exactly that, not
// as the empty message it would parse as. gRPC hands such a call over without
// a payload (`bytes` not Valid()), and its cancellation may become visible to
// IsCancelled() only a moment later, so a missing message counts as gone too
// (a client that half-closes without sending one is broken anyway).
std::optional<Status> ImpressionServiceImpl::already_gone(const grpc::ServerContext& ctx,
                                                          const grpc::ByteBuffer& bytes) const {
  if (ctx.IsCancelled() || !bytes.Valid()) return gone_status(ctx, -1);
  if (context_expired(ctx, std::chrono::milliseconds(0))) {
    return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before the request was read");
  }
  return std::nullopt;
}

Status ImpressionServiceImpl::GenerateImpression(grpc::ServerContext* ctx, const grpc::ByteBuffer* bytes,
                                                 v1::GenerateImpressionResponse* resp) {
  Scope scope("GenerateImpression");
  if (auto gone = already_gone(*ctx, *bytes)) return finish_unread(scope, *gone);
  v1::GenerateImpressionRequest req;
  if (Status s = parse_request(req, bytes_of(*bytes)); !s.ok()) return refuse(scope, *ctx, s);
  return finish(scope, generate(ctx, req, *resp, scope, nullptr));
}

Status ImpressionServiceImpl::StreamImpression(grpc::ServerContext* ctx, const grpc::ByteBuffer* bytes,
                                               grpc::ServerWriter<v1::StreamImpressionResponse>* writer) {
  Scope scope("StreamImpression");
  if (auto gone = already_gone(*ctx, *bytes)) return finish_unread(scope, *gone);
  v1::GenerateImpressionRequest req;
  if (Status s = parse_request(req, bytes_of(*bytes)); !s.ok()) return refuse(scope, *ctx, s);
  v1::StreamImpressionResponse last;
  Status s = generate(ctx, req, *last.mutable_final(), scope, writer);
  if (s.ok() && !writer->Write(last)) s = gone_status(*ctx, scope.rec.generated_tokens);
  return finish(scope, s);
}

Status ImpressionServiceImpl::generate(grpc::ServerContext* ctx, const v1::GenerateImpressionRequest& req,
                                       v1::GenerateImpressionResponse& dst, Scope& scope,
                                       grpc::ServerWriter<v1::StreamImpressionResponse>* writer) {
  RequestRecord& rec = scope.rec;
  rec.request_id = next_request_id();
  rec.client_request_id = req.client_request_id();
  rec.institution_id = req.context().institution_id();
  const Runtime* rt = nullptr;
  if (Status s = admit(*ctx, rt, scope); !s.ok()) return s;

  ResolvedSampling sampling;
  if (Status s = resolve_sampling(sampling, req.sampling(), deps_.opts->default_preset, fresh_seed()); !s.ok()) {
    return s;
  }
  engine::Priority priority{};
  if (Status s = map_priority(priority, req.priority()); !s.ok()) return s;
  rec.priority = priority_name(priority);
  PreparedPrompt pp;
  const prompt::FindingsLimits limits{deps_.opts->max_input_bytes};
  if (Status s = prepare_prompt(pp, *deps_.templates, rt->tokenizer, req.findings(), req.context(), limits);
      !s.ok()) {
    return s;
  }
  rec.template_id = pp.template_id;
  rec.language = std::string(prompt::to_string(pp.language));
  rec.prompt_tokens = static_cast<int>(pp.ids.size());
  int max_new = 0;
  if (Status s = fit_max_tokens(max_new, sampling, rec.prompt_tokens, rt->context); !s.ok()) return s;
  const auto deadline = engine_deadline(*ctx);
  if (deadline_passed(deadline)) return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before generation");

  const prompt::EmptyOutputPolicy policy{deps_.opts->retry_empty, deps_.opts->empty_retries};
  const uint64_t seed = sampling.params.seed;
  TextStream stream(nullptr);
  Attempt a;
  for (int attempt = 0;; ++attempt) {
    engine::GenerateParams g;
    g.prompt = pp.ids;
    g.max_new_tokens = max_new;
    g.sampling = sampling.params;
    g.sampling.seed = prompt::EmptyOutputPolicy::seed_for(seed, attempt);
    g.priority = priority;
    g.deadline = deadline;
    if (detector_) {
      g.stop = [det = detector_.get()](std::span<const int32_t> generated) { return det->repeating(generated); };
    }
    a = Attempt{};
    a.submitted_s = seconds_since(scope.accepted);
    std::shared_ptr<engine::Handle> h = rt->engine->generate(std::move(g));
    ++rec.attempts;
    scope.reached_engine = true;
    stream = TextStream(writer);
    model::StreamDecoder dec(rt->tokenizer);  // seeded with nothing: only generated ids are text
    a.stop = follow(*h, ctx, [&](const std::vector<int32_t>& ids) {
      a.received += static_cast<int>(ids.size());
      const double now = seconds_since(scope.accepted);
      if (a.first_token_s < 0) a.first_token_s = now;
      a.last_token_s = now;
      std::string delta;
      for (int32_t id : ids) delta += dec.push(id);
      return stream.add(delta);  // one message per batch of tokens, not per token
    });
    a.outcome = h->wait();
    // A request that ended early still generated what it delivered: counted
    // in the log, the metrics and the status message.
    rec.generated_tokens = std::max(static_cast<int>(a.outcome.tokens.size()), a.received);
    scope.generated_all += rec.generated_tokens;
    if (attempt == 0) rec.queue_s = a.submitted_s + a.outcome.queue_s;
    if (a.outcome.status != engine::Status::kOk) return end_status(a.outcome, a.stop, *ctx, rec.generated_tokens);
    if (!stream.add(dec.flush())) return gone_status(*ctx, rec.generated_tokens);
    if (!policy.should_retry(stream.text(), attempt + 1, sampling.sampled())) break;
    dst.mutable_flags()->set_empty_output_retried(true);
    deps_.metrics->guard_triggered("empty_retry");
    if (ctx->IsCancelled()) return gone_status(*ctx, rec.generated_tokens);
  }
  if (!stream.close()) return gone_status(*ctx, rec.generated_tokens);

  const engine::Outcome& o = a.outcome;
  const int n = static_cast<int>(o.tokens.size());
  dst.set_impression(stream.text());
  dst.set_finish_reason(finish_reason(o.finish));
  if (o.finish == engine::Finish::kStop) {
    dst.mutable_flags()->set_repetition_detected(true);
    deps_.metrics->guard_triggered("repetition");
  }
  if (prompt::is_blank(stream.text())) {
    dst.mutable_flags()->set_empty_output(true);
    deps_.metrics->guard_triggered("empty_output");
  }
  dst.mutable_tokens()->set_prompt_tokens(rec.prompt_tokens);
  dst.mutable_tokens()->set_generated_tokens(n);
  rec.generated_tokens = n;
  rec.first_token_s = a.first_token_s;
  if (n > 1 && a.last_token_s > a.first_token_s) scope.per_output_token_s = (a.last_token_s - a.first_token_s) / (n - 1);
  dst.mutable_timings()->set_queue_seconds(std::max(0.0, rec.queue_s));
  dst.mutable_timings()->set_first_token_seconds(std::max(0.0, a.first_token_s));
  dst.mutable_timings()->set_total_seconds(seconds_since(scope.accepted));
  *dst.mutable_model() = rt->info;
  dst.set_template_id(pp.template_id);
  dst.set_client_request_id(req.client_request_id());
  dst.set_request_id(rec.request_id);
  dst.set_language(to_proto(pp.language));
  rec.finish = std::string(finish_name(dst.finish_reason()));
  rec.repetition = dst.flags().repetition_detected();
  rec.empty_output = dst.flags().empty_output();
  rec.empty_retried = dst.flags().empty_output_retried();
  return Status::OK;
}

Status ImpressionServiceImpl::Score(grpc::ServerContext* ctx, const grpc::ByteBuffer* bytes, v1::ScoreResponse* resp) {
  Scope scope("Score");
  if (auto gone = already_gone(*ctx, *bytes)) return finish_unread(scope, *gone);
  v1::ScoreRequest req;
  if (Status s = parse_request(req, bytes_of(*bytes)); !s.ok()) return refuse(scope, *ctx, s);
  return finish(scope, score(ctx, req, *resp, scope));
}

Status ImpressionServiceImpl::finish_unread(Scope& scope, Status gone) {
  scope.rec.request_id = next_request_id();
  return finish(scope, std::move(gone));
}

Status ImpressionServiceImpl::refuse(Scope& scope, const grpc::ServerContext& ctx, Status parse_error) {
  scope.rec.request_id = next_request_id();
  // Unauthenticated callers learn nothing about their request, not even that
  // it was malformed.
  if (std::string err = deps_.auth->check(ctx); !err.empty()) {
    return finish(scope, Status(StatusCode::UNAUTHENTICATED, err));
  }
  return finish(scope, parse_error);
}

Status ImpressionServiceImpl::score(grpc::ServerContext* ctx, const v1::ScoreRequest& req, v1::ScoreResponse& dst,
                                    Scope& scope) {
  RequestRecord& rec = scope.rec;
  rec.request_id = next_request_id();
  rec.client_request_id = req.client_request_id();
  rec.institution_id = req.context().institution_id();
  const Runtime* rt = nullptr;
  if (Status s = admit(*ctx, rt, scope); !s.ok()) return s;

  const prompt::FindingsLimits limits{deps_.opts->max_input_bytes};
  engine::Priority priority{};
  if (Status s = map_priority(priority, req.priority()); !s.ok()) return s;
  rec.priority = priority_name(priority);
  PreparedPrompt pp;
  if (Status s = prepare_prompt(pp, *deps_.templates, rt->tokenizer, req.findings(), req.context(), limits);
      !s.ok()) {
    return s;
  }
  if (Status s = check_score_texts(req, limits); !s.ok()) return s;
  rec.template_id = pp.template_id;
  rec.language = std::string(prompt::to_string(pp.language));
  rec.prompt_tokens = static_cast<int>(pp.ids.size());

  // ROUGE first: it needs no model, and a bad mode or segmenter choice should
  // fail before any engine work, reference or not.
  if (Status s = check_rouge_choices(req); !s.ok()) return s;
  if (!req.reference_impression().empty()) {
    if (Status s = score_rouge(dst, req, pp.language, deps_.jieba); !s.ok()) return s;
  }

  // The candidate is tokenized on its own, as generation would have produced
  // it after the prompt, never through the prompt's text: teacher forcing
  // scores exactly these ids, so an output that filled the context fits again
  // whenever its ids were canonical (candidate_ids, docs/service.md).
  std::vector<int32_t> cont = candidate_ids(rt->tokenizer, req.candidate_impression());
  if (cont.empty()) return Status(StatusCode::INVALID_ARGUMENT, "candidate_impression has no tokens");
  if (Status s = check_score_context(rec.prompt_tokens, static_cast<int>(cont.size()), rt->context); !s.ok()) {
    return s;
  }
  const auto deadline = engine_deadline(*ctx);
  if (deadline_passed(deadline)) return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before scoring");

  engine::ScoreParams sp;
  sp.prompt = pp.ids;
  sp.continuation = cont;
  sp.priority = priority;
  sp.deadline = deadline;
  const double submitted_s = seconds_since(scope.accepted);
  std::shared_ptr<engine::Handle> h = rt->engine->score(std::move(sp));
  rec.attempts = 1;
  scope.reached_engine = true;
  const Stop stop = follow(*h, ctx, [](const std::vector<int32_t>&) { return true; });
  const engine::Outcome& o = h->wait();
  rec.queue_s = submitted_s + o.queue_s;
  if (o.status != engine::Status::kOk) return end_status(o, stop, *ctx, /*tokens=*/-1);  // Score generates none
  if (o.logprobs.size() != cont.size()) {
    return Status(StatusCode::INTERNAL, "the engine returned " + std::to_string(o.logprobs.size()) +
                                            " log-probabilities for " + std::to_string(cont.size()) + " tokens");
  }
  rec.first_token_s = submitted_s + o.first_token_s;
  rec.generated_tokens = static_cast<int>(cont.size());

  double total = 0;
  for (float lp : o.logprobs) total += lp;
  const double mean = total / static_cast<double>(cont.size());
  dst.set_total_logprob(total);
  dst.set_mean_logprob(mean);
  dst.set_perplexity(std::exp(-mean));
  dst.set_candidate_tokens(static_cast<uint32_t>(cont.size()));
  if (req.per_token_logprobs()) {
    for (size_t i = 0; i < cont.size(); ++i) {
      v1::TokenLogprob* t = dst.add_token_logprobs();
      t->set_token(std::string(rt->tokenizer.piece(cont[i])));
      t->set_token_id(cont[i]);
      t->set_logprob(o.logprobs[i]);
    }
  }
  dst.mutable_tokens()->set_prompt_tokens(rec.prompt_tokens);
  dst.mutable_tokens()->set_generated_tokens(0);
  dst.mutable_timings()->set_queue_seconds(std::max(0.0, rec.queue_s));
  dst.mutable_timings()->set_first_token_seconds(std::max(0.0, rec.first_token_s));
  dst.mutable_timings()->set_total_seconds(seconds_since(scope.accepted));
  *dst.mutable_model() = rt->info;
  dst.set_template_id(pp.template_id);
  dst.set_client_request_id(req.client_request_id());
  dst.set_request_id(rec.request_id);
  dst.set_language(to_proto(pp.language));
  return Status::OK;
}

}  // namespace chatradio::service
