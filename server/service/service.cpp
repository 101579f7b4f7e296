#include "server/service/service.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <random>

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
std::optional<engine::Clock::time_point> engine_deadline(const grpc::ServerContextBase& ctx) {
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
bool context_expired(const grpc::ServerContextBase& ctx, std::chrono::milliseconds slack) {
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
  bool admitted = false;  // in in_flight_ until finish()
};

// Text deltas of one attempt. While the output so far is blank (nothing but
// whitespace) it is held back rather than sent: a blank attempt may be retried,
// and what a client received must equal the final impression. Once visible
// text appears, everything held and everything after becomes sendable.
class ImpressionServiceImpl::TextStream {
 public:
  explicit TextStream(bool streaming) : streaming_(streaming) {}
  void add(const std::string& delta) {
    text_ += delta;
    if (!streaming_ || delta.empty()) return;
    if (visible_) {
      out_ += delta;
      return;
    }
    held_ += delta;
    if (prompt::is_blank(held_)) return;
    visible_ = true;
    out_ += held_;
    held_.clear();
  }
  // End of the last attempt: whatever is still held becomes sendable too.
  void close() {
    out_ += held_;
    held_.clear();
  }
  bool has_output() const { return !out_.empty(); }
  // What may be sent now (all of it, in one message: tokens that arrived
  // while the previous write was in flight go out together).
  std::string take() {
    std::string s;
    s.swap(out_);
    return s;
  }
  const std::string& text() const { return text_; }

 private:
  bool streaming_;
  bool visible_ = false;
  std::string text_;
  std::string held_;
  std::string out_;
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

void serialize(grpc::ByteBuffer& dst, const google::protobuf::MessageLite& msg) {
  const grpc::Slice slice(msg.SerializeAsString());
  dst = grpc::ByteBuffer(&slice, 1);
}

}  // namespace

// One RPC as a state machine. start() runs in the method handler on a gRPC
// thread; every later step runs in run() on the pump thread, woken by the
// engine (on_update), by gRPC's reactions and by the drain, which only set
// flags and wake it. So the fields below are the pump's alone once start()
// has handed over; only the atomics are shared.
class ImpressionServiceImpl::Call : public CallPump::Task {
 public:
  enum class Rpc : uint8_t { kGenerate, kStream, kScore };

  Call(ImpressionServiceImpl& svc, grpc::CallbackServerContext* ctx, Rpc rpc, grpc::ByteBuffer* response)
      : svc_(svc),
        ctx_(ctx),
        rpc_(rpc),
        response_(response),
        scope_(rpc == Rpc::kGenerate ? "GenerateImpression" : rpc == Rpc::kStream ? "StreamImpression" : "Score"),
        stream_(rpc == Rpc::kStream) {}

  // The handler's part: read, check and prepare the request. A refusal ends
  // the call here; otherwise the pump takes over.
  void start(const grpc::ByteBuffer& bytes) {
    Status s;
    try {
      s = prepare(bytes);
    } catch (const std::exception&) {  // prepare() reports statuses; this is for bad_alloc and the like
      s = Status(StatusCode::INTERNAL, "internal error while reading the request");
    }
    if (!s.ok()) return end(s);
    phase_ = Phase::kSubmit;
    wake();  // last: the pump may run (and end) the call at once
  }

  // Reactions (gRPC threads) and engine news: flags first, then a wake-up.
  void on_cancel() {
    cancelled_.store(true, std::memory_order_release);
    wake();
  }
  void on_write_done(bool ok) {
    if (!ok) write_failed_.store(true, std::memory_order_release);
    writing_.store(false, std::memory_order_release);
    wake();
  }
  void on_done() {
    done_.store(true, std::memory_order_release);
    wake();
  }
  void wake() { svc_.pump_.schedule(this); }

 protected:
  // Streams only: the reactor that writes.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* write_reactor_ = nullptr;
  virtual void end_rpc(const Status& s) = 0;  // the reactor's Finish

 private:
  enum class Phase : uint8_t { kStarting, kSubmit, kRunning, kFlushing, kFinalWrite, kEnded };

  void run() override {
    if (done_.load(std::memory_order_acquire)) {
      delete this;  // OnDone was gRPC's last reaction; the engine request ended before Finish
      return;
    }
    if (phase_ == Phase::kRunning) stop_if_asked();
    if (writing_.load(std::memory_order_acquire)) return;  // OnWriteDone wakes us
    switch (phase_) {
      case Phase::kSubmit:
        submit();
        break;
      case Phase::kRunning:
        advance();
        break;
      case Phase::kFlushing:
        flush();
        break;
      case Phase::kFinalWrite:
        end(write_failed_.load(std::memory_order_acquire) ? svc_.gone_status(*ctx_, scope_.rec.generated_tokens)
                                                           : Status::OK);
        break;
      case Phase::kStarting:
      case Phase::kEnded:
        break;
    }
  }

  Status prepare(const grpc::ByteBuffer& bytes);
  Status prepare_generate();
  Status prepare_score();
  void submit();
  void advance();
  void end_attempt();
  void end_score();
  void flush();
  void stop_if_asked();
  void send(const google::protobuf::MessageLite& msg);
  void end(Status s);

  ImpressionServiceImpl& svc_;
  grpc::CallbackServerContext* const ctx_;
  const Rpc rpc_;
  grpc::ByteBuffer* const response_;  // unary: where the reply goes
  Scope scope_;
  Phase phase_ = Phase::kStarting;
  const Runtime* rt_ = nullptr;
  // GenerateImpression / StreamImpression
  v1::GenerateImpressionRequest gen_req_;
  ResolvedSampling sampling_;
  PreparedPrompt pp_;
  engine::Priority priority_{};
  int max_new_ = 0;
  std::optional<engine::Clock::time_point> deadline_;
  int attempt_ = -1;
  struct {
    int received = 0;           // tokens delivered to the call (a cancelled outcome carries none)
    double submitted_s = 0;     // accepted -> submit
    double first_token_s = -1;  // accepted -> first token
    double last_token_s = -1;
  } a_;                         // the current attempt
  std::optional<model::StreamDecoder> dec_;
  TextStream stream_;
  v1::GenerateImpressionResponse result_;
  grpc::ByteBuffer out_;  // the message being written
  // Score
  v1::ScoreRequest score_req_;
  v1::ScoreResponse score_result_;
  std::vector<int32_t> cont_;
  // The engine request in flight
  std::shared_ptr<engine::Handle> handle_;
  Stop stop_ = Stop::kNone;
  std::vector<int32_t> got_;
  // Set by gRPC's threads
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> writing_{false};
  std::atomic<bool> write_failed_{false};
  std::atomic<bool> done_{false};
};

class ImpressionServiceImpl::UnaryCall final : public grpc::ServerUnaryReactor, public Call {
 public:
  UnaryCall(ImpressionServiceImpl& svc, grpc::CallbackServerContext* ctx, Rpc rpc, grpc::ByteBuffer* response)
      : Call(svc, ctx, rpc, response) {}
  void OnCancel() override { on_cancel(); }
  void OnDone() override { on_done(); }

 private:
  void end_rpc(const Status& s) override { Finish(s); }
};

class ImpressionServiceImpl::StreamCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer>, public Call {
 public:
  StreamCall(ImpressionServiceImpl& svc, grpc::CallbackServerContext* ctx) : Call(svc, ctx, Rpc::kStream, nullptr) {
    write_reactor_ = this;
  }
  void OnWriteDone(bool ok) override { on_write_done(ok); }
  void OnCancel() override { on_cancel(); }
  void OnDone() override { on_done(); }

 private:
  void end_rpc(const Status& s) override { Finish(s); }
};

Status ImpressionServiceImpl::Call::prepare(const grpc::ByteBuffer& bytes) {
  RequestRecord& rec = scope_.rec;
  rec.request_id = svc_.next_request_id();  // every call has one, refused or not
  if (auto gone = svc_.already_gone(*ctx_, bytes)) return *gone;
  google::protobuf::Message& req = rpc_ == Rpc::kScore ? static_cast<google::protobuf::Message&>(score_req_)
                                                       : static_cast<google::protobuf::Message&>(gen_req_);
  if (Status s = parse_request(req, bytes_of(bytes)); !s.ok()) {
    // Unauthenticated callers learn nothing about their request, not even that
    // it was malformed.
    if (std::string err = svc_.deps_.auth->check(*ctx_); !err.empty()) return Status(StatusCode::UNAUTHENTICATED, err);
    return s;
  }
  const bool score = rpc_ == Rpc::kScore;
  rec.client_request_id = score ? score_req_.client_request_id() : gen_req_.client_request_id();
  rec.institution_id = (score ? score_req_.context() : gen_req_.context()).institution_id();
  if (Status s = svc_.admit(*ctx_, rt_, scope_, this); !s.ok()) return s;
  return score ? prepare_score() : prepare_generate();
}

Status ImpressionServiceImpl::Call::prepare_generate() {
  const v1::GenerateImpressionRequest& req = gen_req_;
  RequestRecord& rec = scope_.rec;
  const ServerOptions& opts = *svc_.deps_.opts;
  if (Status s = resolve_sampling(sampling_, req.sampling(), opts.default_preset, svc_.fresh_seed()); !s.ok()) {
    return s;
  }
  if (Status s = map_priority(priority_, req.priority()); !s.ok()) return s;
  rec.priority = priority_name(priority_);
  const prompt::FindingsLimits limits{opts.max_input_bytes};
  if (Status s = prepare_prompt(pp_, *svc_.deps_.templates, rt_->tokenizer, req.findings(), req.context(), limits);
      !s.ok()) {
    return s;
  }
  rec.template_id = pp_.template_id;
  rec.language = std::string(prompt::to_string(pp_.language));
  rec.prompt_tokens = static_cast<int>(pp_.ids.size());
  if (Status s = fit_max_tokens(max_new_, sampling_, rec.prompt_tokens, rt_->context); !s.ok()) return s;
  deadline_ = engine_deadline(*ctx_);
  if (deadline_passed(deadline_)) return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before generation");
  return Status::OK;
}

Status ImpressionServiceImpl::Call::prepare_score() {
  const v1::ScoreRequest& req = score_req_;
  RequestRecord& rec = scope_.rec;
  const prompt::FindingsLimits limits{svc_.deps_.opts->max_input_bytes};
  if (Status s = map_priority(priority_, req.priority()); !s.ok()) return s;
  rec.priority = priority_name(priority_);
  if (Status s = prepare_prompt(pp_, *svc_.deps_.templates, rt_->tokenizer, req.findings(), req.context(), limits);
      !s.ok()) {
    return s;
  }
  if (Status s = check_score_texts(req, limits); !s.ok()) return s;
  rec.template_id = pp_.template_id;
  rec.language = std::string(prompt::to_string(pp_.language));
  rec.prompt_tokens = static_cast<int>(pp_.ids.size());

  // ROUGE first: it needs no model, and a bad mode or segmenter choice should
  // fail before any engine work, reference or not.
  if (Status s = check_rouge_choices(req); !s.ok()) return s;
  if (!req.reference_impression().empty()) {
    if (Status s = score_rouge(score_result_, req, pp_.language, svc_.deps_.jieba); !s.ok()) return s;
  }

  // The candidate is tokenized on its own, as generation would have produced
  // it after the prompt, never through the prompt's text: teacher forcing
  // scores exactly these ids, so an output that filled the context fits again
  // whenever its ids were canonical (candidate_ids, docs/service.md).
  cont_ = candidate_ids(rt_->tokenizer, req.candidate_impression());
  if (cont_.empty()) return Status(StatusCode::INVALID_ARGUMENT, "candidate_impression has no tokens");
  if (Status s = check_score_context(rec.prompt_tokens, static_cast<int>(cont_.size()), rt_->context); !s.ok()) {
    return s;
  }
  deadline_ = engine_deadline(*ctx_);
  if (deadline_passed(deadline_)) return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before scoring");
  return Status::OK;
}

// One engine submission: the request's only one for Score, one per attempt
// for generation (a blank output may be retried with the next seed).
void ImpressionServiceImpl::Call::submit() {
  RequestRecord& rec = scope_.rec;
  a_ = {};
  a_.submitted_s = seconds_since(scope_.accepted);
  stop_ = Stop::kNone;
  phase_ = Phase::kRunning;
  if (rpc_ == Rpc::kScore) {
    engine::ScoreParams sp;
    sp.prompt = pp_.ids;
    sp.continuation = cont_;
    sp.priority = priority_;
    sp.deadline = deadline_;
    sp.on_update = [this] { wake(); };
    handle_ = rt_->engine->score(std::move(sp));
  } else {
    ++attempt_;
    engine::GenerateParams g;
    g.prompt = pp_.ids;
    g.max_new_tokens = max_new_;
    g.sampling = sampling_.params;
    g.sampling.seed = prompt::EmptyOutputPolicy::seed_for(sampling_.params.seed, attempt_);
    g.priority = priority_;
    g.deadline = deadline_;
    if (svc_.detector_) {
      g.stop = [det = svc_.detector_.get()](std::span<const int32_t> generated) { return det->repeating(generated); };
    }
    g.on_update = [this] { wake(); };
    stream_ = TextStream(rpc_ == Rpc::kStream);
    dec_.emplace(rt_->tokenizer);  // seeded with nothing: only generated ids are text
    handle_ = rt_->engine->generate(std::move(g));
  }
  ++rec.attempts;
  scope_.reached_engine = true;
  // A refusal inside generate()/score() has woken us already; so will tokens.
}

// A client that went away (or whose deadline passed) and the drain's deadline
// stop the engine request at once; its end (kCancelled) then ends the call.
void ImpressionServiceImpl::Call::stop_if_asked() {
  if (stop_ != Stop::kNone) return;
  if (svc_.aborting_.load(std::memory_order_acquire)) {
    stop_ = Stop::kAborted;
  } else if (cancelled_.load(std::memory_order_acquire) || write_failed_.load(std::memory_order_acquire)) {
    stop_ = Stop::kClientGone;
  } else {
    return;
  }
  handle_->cancel();  // frees its KV blocks at the engine's next step
}

void ImpressionServiceImpl::Call::advance() {
  got_.clear();
  const bool more = handle_->take(got_);
  if (!got_.empty()) {
    a_.received += static_cast<int>(got_.size());
    const double now = seconds_since(scope_.accepted);
    if (a_.first_token_s < 0) a_.first_token_s = now;
    a_.last_token_s = now;
    std::string delta;
    for (int32_t id : got_) delta += dec_->push(id);
    stream_.add(delta);
  }
  if (more) {
    // One message per wake-up, however many tokens came since the last one.
    if (write_reactor_ != nullptr && stop_ == Stop::kNone && stream_.has_output()) {
      v1::StreamImpressionResponse msg;
      msg.set_delta(stream_.take());
      send(msg);
    }
    return;
  }
  if (rpc_ == Rpc::kScore) {
    end_score();
  } else {
    end_attempt();
  }
}

void ImpressionServiceImpl::Call::end_attempt() {
  RequestRecord& rec = scope_.rec;
  const engine::Outcome& o = handle_->wait();  // ended: does not block
  // A request that ended early still generated what it delivered: counted
  // in the log, the metrics and the status message.
  rec.generated_tokens = std::max(static_cast<int>(o.tokens.size()), a_.received);
  scope_.generated_all += rec.generated_tokens;
  if (attempt_ == 0) rec.queue_s = a_.submitted_s + o.queue_s;
  if (o.status != engine::Status::kOk) return end(svc_.end_status(o, stop_, *ctx_, rec.generated_tokens));
  stream_.add(dec_->flush());
  const ServerOptions& opts = *svc_.deps_.opts;
  const prompt::EmptyOutputPolicy policy{opts.retry_empty, opts.empty_retries};
  if (policy.should_retry(stream_.text(), attempt_ + 1, sampling_.sampled())) {
    result_.mutable_flags()->set_empty_output_retried(true);
    svc_.deps_.metrics->guard_triggered("empty_retry");
    if (cancelled_.load(std::memory_order_acquire)) return end(svc_.gone_status(*ctx_, rec.generated_tokens));
    return submit();
  }

  const int n = static_cast<int>(o.tokens.size());
  v1::GenerateImpressionResponse& dst = result_;
  dst.set_impression(stream_.text());
  dst.set_finish_reason(finish_reason(o.finish));
  if (o.finish == engine::Finish::kStop) {
    dst.mutable_flags()->set_repetition_detected(true);
    svc_.deps_.metrics->guard_triggered("repetition");
  }
  if (prompt::is_blank(stream_.text())) {
    dst.mutable_flags()->set_empty_output(true);
    svc_.deps_.metrics->guard_triggered("empty_output");
  }
  dst.mutable_tokens()->set_prompt_tokens(rec.prompt_tokens);
  dst.mutable_tokens()->set_generated_tokens(n);
  rec.generated_tokens = n;
  rec.first_token_s = a_.first_token_s;
  if (n > 1 && a_.last_token_s > a_.first_token_s) {
    scope_.per_output_token_s = (a_.last_token_s - a_.first_token_s) / (n - 1);
  }
  dst.mutable_timings()->set_queue_seconds(std::max(0.0, rec.queue_s));
  dst.mutable_timings()->set_first_token_seconds(std::max(0.0, a_.first_token_s));
  *dst.mutable_model() = rt_->info;
  dst.set_template_id(pp_.template_id);
  dst.set_client_request_id(gen_req_.client_request_id());
  dst.set_request_id(rec.request_id);
  dst.set_language(to_proto(pp_.language));
  rec.finish = std::string(finish_name(dst.finish_reason()));
  rec.repetition = dst.flags().repetition_detected();
  rec.empty_output = dst.flags().empty_output();
  rec.empty_retried = dst.flags().empty_output_retried();
  if (write_reactor_ == nullptr) {
    dst.mutable_timings()->set_total_seconds(seconds_since(scope_.accepted));
    serialize(*response_, dst);
    return end(Status::OK);
  }
  stream_.close();
  phase_ = Phase::kFlushing;
  flush();
}

// Streams, after a successful generation: the deltas not yet written, then
// the final message, each write after the previous one completed.
void ImpressionServiceImpl::Call::flush() {
  if (write_failed_.load(std::memory_order_acquire)) {
    return end(svc_.gone_status(*ctx_, scope_.rec.generated_tokens));
  }
  v1::StreamImpressionResponse msg;
  if (stream_.has_output()) {
    msg.set_delta(stream_.take());
  } else {
    result_.mutable_timings()->set_total_seconds(seconds_since(scope_.accepted));
    *msg.mutable_final() = result_;
    phase_ = Phase::kFinalWrite;
  }
  send(msg);
}

void ImpressionServiceImpl::Call::send(const google::protobuf::MessageLite& msg) {
  serialize(out_, msg);
  writing_.store(true, std::memory_order_release);  // before: OnWriteDone may run at once
  write_reactor_->StartWrite(&out_);
}

void ImpressionServiceImpl::Call::end_score() {
  RequestRecord& rec = scope_.rec;
  const engine::Outcome& o = handle_->wait();  // ended: does not block
  rec.queue_s = a_.submitted_s + o.queue_s;
  if (o.status != engine::Status::kOk) return end(svc_.end_status(o, stop_, *ctx_, /*tokens=*/-1));  // Score generates none
  if (o.logprobs.size() != cont_.size()) {
    return end(Status(StatusCode::INTERNAL, "the engine returned " + std::to_string(o.logprobs.size()) +
                                                " log-probabilities for " + std::to_string(cont_.size()) + " tokens"));
  }
  rec.first_token_s = a_.submitted_s + o.first_token_s;
  rec.generated_tokens = static_cast<int>(cont_.size());

  v1::ScoreResponse& dst = score_result_;
  double total = 0;
  for (float lp : o.logprobs) total += lp;
  const double mean = total / static_cast<double>(cont_.size());
  dst.set_total_logprob(total);
  dst.set_mean_logprob(mean);
  dst.set_perplexity(std::exp(-mean));
  dst.set_candidate_tokens(static_cast<uint32_t>(cont_.size()));
  if (score_req_.per_token_logprobs()) {
    for (size_t i = 0; i < cont_.size(); ++i) {
      v1::TokenLogprob* t = dst.add_token_logprobs();
      t->set_token(std::string(rt_->tokenizer.piece(cont_[i])));
      t->set_token_id(cont_[i]);
      t->set_logprob(o.logprobs[i]);
    }
  }
  dst.mutable_tokens()->set_prompt_tokens(rec.prompt_tokens);
  dst.mutable_tokens()->set_generated_tokens(0);
  dst.mutable_timings()->set_queue_seconds(std::max(0.0, rec.queue_s));
  dst.mutable_timings()->set_first_token_seconds(std::max(0.0, rec.first_token_s));
  dst.mutable_timings()->set_total_seconds(seconds_since(scope_.accepted));
  *dst.mutable_model() = rt_->info;
  dst.set_template_id(pp_.template_id);
  dst.set_client_request_id(score_req_.client_request_id());
  dst.set_request_id(rec.request_id);
  dst.set_language(to_proto(pp_.language));
  serialize(*response_, dst);
  end(Status::OK);
}

// The one place a call ends: accounted (log line, metric sample) with the
// status the client will see, then finished.
void ImpressionServiceImpl::Call::end(Status s) {
  // A call gRPC has cancelled (client gone, deadline) cannot deliver a result.
  if (s.ok() && cancelled_.load(std::memory_order_acquire)) {
    s = svc_.gone_status(*ctx_, rpc_ == Rpc::kScore ? -1 : scope_.rec.generated_tokens);
  }
  svc_.finish(scope_, s, this);
  phase_ = Phase::kEnded;
  end_rpc(s);  // last: OnDone may follow at once
}

ImpressionServiceImpl::ImpressionServiceImpl(ServiceDeps deps) : deps_(deps) {
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

ImpressionServiceImpl::~ImpressionServiceImpl() = default;

grpc::ServerUnaryReactor* ImpressionServiceImpl::GenerateImpression(grpc::CallbackServerContext* ctx,
                                                                    const grpc::ByteBuffer* req,
                                                                    grpc::ByteBuffer* resp) {
  auto* call = new UnaryCall(*this, ctx, Call::Rpc::kGenerate, resp);
  call->start(*req);
  return call;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ImpressionServiceImpl::StreamImpression(grpc::CallbackServerContext* ctx,
                                                                                    const grpc::ByteBuffer* req) {
  auto* call = new StreamCall(*this, ctx);
  call->start(*req);
  return call;
}

grpc::ServerUnaryReactor* ImpressionServiceImpl::Score(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                                       grpc::ByteBuffer* resp) {
  auto* call = new UnaryCall(*this, ctx, Call::Rpc::kScore, resp);
  call->start(*req);
  return call;
}

// A call whose client is gone: when the deadline (give or take kDeadlineSlack)
// has passed it is the deadline, otherwise the client cancelled. A drain that
// aborted the call is what the client saw instead.
Status ImpressionServiceImpl::gone_status(const grpc::ServerContextBase& ctx, int tokens) const {
  if (aborting_.load(std::memory_order_acquire)) return Status(StatusCode::UNAVAILABLE, drain_stopped_message(tokens));
  if (context_expired(ctx, kDeadlineSlack)) return deadline_status(tokens);
  return Status(StatusCode::CANCELLED, "the client cancelled the request" +
                                           (tokens < 0 ? "" : " after " + std::to_string(tokens) + " generated tokens"));
}

Status ImpressionServiceImpl::end_status(const engine::Outcome& o, Stop stop, const grpc::ServerContextBase& ctx,
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

Status ImpressionServiceImpl::admit(const grpc::ServerContextBase& ctx, const Runtime*& rt, Scope& scope, Call* call) {
  if (std::string err = deps_.auth->check(ctx); !err.empty()) return Status(StatusCode::UNAUTHENTICATED, err);
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return Status(StatusCode::UNAVAILABLE, std::string(kDrainingMessage));
  rt = runtime_.load(std::memory_order_acquire);
  if (rt == nullptr) return Status(StatusCode::UNAVAILABLE, "the model is still loading; retry shortly");
  in_flight_.insert(call);
  scope.admitted = true;
  return Status::OK;
}

void ImpressionServiceImpl::set_draining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool ImpressionServiceImpl::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return in_flight_.empty(); });
}

void ImpressionServiceImpl::abort_in_flight() {
  aborting_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> lock(mu_);  // a call leaves in_flight_ before it can be deleted
  for (Call* c : in_flight_) c->wake();
}

void ImpressionServiceImpl::finish(Scope& scope, const Status& status, Call* call) {
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
    in_flight_.erase(call);
    if (in_flight_.empty()) idle_cv_.notify_all();
  }
}

// Before anything else: a call whose client is already gone (cancelled, or
// expired before its message even arrived) is accounted as exactly that, not
// as the empty message it would parse as. gRPC hands such a call over without
// a payload (`bytes` not Valid()), and its cancellation may become visible to
// IsCancelled() only a moment later, so a missing message counts as gone too
// (a client that half-closes without sending one is broken anyway).
std::optional<Status> ImpressionServiceImpl::already_gone(const grpc::ServerContextBase& ctx,
                                                          const grpc::ByteBuffer& bytes) const {
  if (ctx.IsCancelled() || !bytes.Valid()) return gone_status(ctx, -1);
  if (context_expired(ctx, std::chrono::milliseconds(0))) {
    return Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before the request was read");
  }
  return std::nullopt;
}

}  // namespace chatradio::service
