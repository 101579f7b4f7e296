#include "server/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <unordered_map>

#include "model/scoring.h"

namespace chatradio::engine {

// ---------------------------------------------------------------- Handle

void Handle::push(int32_t token) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(token);
    if (on_update_) on_update_();
  }
  cv_.notify_all();
}

void Handle::finish(Outcome outcome) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    outcome_ = std::move(outcome);
    done_ = true;
    if (on_update_) on_update_();
  }
  cv_.notify_all();
}

bool Handle::next(std::vector<int32_t>& out) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ || !pending_.empty(); });
  out.insert(out.end(), pending_.begin(), pending_.end());
  pending_.clear();
  return !done_;
}

bool Handle::take(std::vector<int32_t>& out) {
  std::lock_guard<std::mutex> lock(mu_);
  out.insert(out.end(), pending_.begin(), pending_.end());
  pending_.clear();
  return !done_;
}

const Outcome& Handle::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  return outcome_;
}

bool Handle::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void Handle::cancel() {
  if (!done()) cancel_(id_);
}

// ---------------------------------------------------------------- Engine

struct Engine::Live {
  std::shared_ptr<Handle> handle;
  RequestKind kind = RequestKind::kGenerate;
  std::vector<int32_t> tokens;  // prompt (+ continuation) + generated: the sampler's history
  int prompt_len = 0;
  std::optional<model::Sampler> sampler;
  std::function<bool(std::span<const int32_t>)> stop;
  std::vector<float> logprobs;  // scoring, by continuation index
  Clock::time_point submitted;
  double queue_s = -1, first_token_s = -1;
};

namespace {

SchedulerConfig scheduler_config(const model::Backend& backend, const EngineOptions& opts) {
  SchedulerConfig c;
  c.n_blocks = backend.n_kv_blocks();
  c.block_size = backend.kv_block_size();
  c.token_budget = opts.token_budget;
  c.max_batch_size = opts.max_batch_size;
  // The engine enforces the queue bound itself (inbox + waiting); the
  // scheduler's own bound only needs to be at least as large.
  c.max_waiting = opts.max_waiting + 1;
  c.routine_aging_s = opts.routine_aging_s;
  c.slot_preemption = opts.slot_preemption;
  c.max_seq_len = backend.config().max_position_embeddings;
  return c;
}

std::string check_tokens(std::span<const int32_t> ids, int vocab, const char* what) {
  for (int32_t t : ids) {
    if (t < 0 || t >= vocab) {
      return std::string(what) + " has token id " + std::to_string(t) + " outside the vocabulary of " +
             std::to_string(vocab);
    }
  }
  return "";
}

bool all_finite(std::span<const float> row) {
  return std::all_of(row.begin(), row.end(), [](float x) { return std::isfinite(x); });
}

}  // namespace

Engine::Engine(model::Backend& backend, const EngineOptions& opts)
    : backend_(backend), opts_(opts), epoch_(Clock::now()), sched_(scheduler_config(backend, opts)) {
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  Outcome cancelled;
  cancelled.status = Status::kCancelled;
  for (auto& [id, live] : live_) live->handle->finish(cancelled);
  for (Submission& s : inbox_) s.handle->finish(cancelled);
}

std::shared_ptr<Handle> Engine::rejected(uint64_t id, std::string error, std::function<void()> on_update) {
  auto h = std::shared_ptr<Handle>(new Handle(id, [](uint64_t) {}, std::move(on_update)));
  Outcome o;
  o.status = Status::kRejected;
  o.error = std::move(error);
  h->finish(std::move(o));
  return h;
}

namespace {

// Why a generation request can never run; empty when it can.
std::string refusal(const GenerateParams& p, const model::LlamaConfig& cfg) {
  if (p.prompt.empty()) return "the prompt has no tokens";
  if (p.max_new_tokens < 1) return "max_new_tokens must be >= 1";
  if (std::string e = model::validate(p.sampling); !e.empty()) return e;
  if (std::string e = check_tokens(p.prompt, cfg.vocab_size, "the prompt"); !e.empty()) return e;
  const int64_t total = static_cast<int64_t>(p.prompt.size()) + p.max_new_tokens;
  if (total > cfg.max_position_embeddings) {
    return "prompt of " + std::to_string(p.prompt.size()) + " tokens plus max_new_tokens " +
           std::to_string(p.max_new_tokens) + " exceeds the model context of " +
           std::to_string(cfg.max_position_embeddings) + " tokens";
  }
  return "";
}

// Why a scoring request can never run; empty when it can.
std::string refusal(const ScoreParams& p, const model::LlamaConfig& cfg) {
  if (p.prompt.empty()) return "the prompt has no tokens";
  if (p.continuation.empty()) return "nothing to score: the continuation has no tokens";
  if (std::string e = check_tokens(p.prompt, cfg.vocab_size, "the prompt"); !e.empty()) return e;
  if (std::string e = check_tokens(p.continuation, cfg.vocab_size, "the continuation"); !e.empty()) return e;
  const int64_t total = static_cast<int64_t>(p.prompt.size()) + p.continuation.size();
  if (total > cfg.max_position_embeddings) {
    return "prompt of " + std::to_string(p.prompt.size()) + " tokens plus " + std::to_string(p.continuation.size()) +
           " tokens to score exceeds the model context of " + std::to_string(cfg.max_position_embeddings) + " tokens";
  }
  return "";
}

}  // namespace

std::shared_ptr<Handle> Engine::generate(GenerateParams params) {
  const uint64_t id = next_id_++;
  std::function<void()> on_update = std::move(params.on_update);
  const model::LlamaConfig& cfg = backend_.config();
  if (std::string e = refusal(params, cfg); !e.empty()) return rejected(id, std::move(e), std::move(on_update));
  Submission sub;
  sub.request.id = id;
  sub.request.kind = RequestKind::kGenerate;
  sub.request.priority = params.priority;
  sub.request.prompt = params.prompt;
  sub.request.max_new_tokens = params.max_new_tokens;
  sub.request.eos_id = cfg.eos_token_id;
  sub.gen = std::move(params);
  return submit(std::move(sub), std::move(on_update));
}

std::shared_ptr<Handle> Engine::score(ScoreParams params) {
  const uint64_t id = next_id_++;
  std::function<void()> on_update = std::move(params.on_update);
  if (std::string e = refusal(params, backend_.config()); !e.empty()) {
    return rejected(id, std::move(e), std::move(on_update));
  }
  Submission sub;
  sub.request.id = id;
  sub.request.kind = RequestKind::kScore;
  sub.request.priority = params.priority;
  sub.request.prompt = std::move(params.prompt);
  sub.request.continuation = std::move(params.continuation);
  if (params.deadline) sub.request.deadline = std::chrono::duration<double>(*params.deadline - epoch_).count();
  return submit(std::move(sub), std::move(on_update));
}

std::shared_ptr<Handle> Engine::submit(Submission sub, std::function<void()> on_update) {
  const uint64_t id = sub.request.id;
  if (sub.gen && sub.gen->deadline) {
    sub.request.deadline = std::chrono::duration<double>(*sub.gen->deadline - epoch_).count();
  }
  sub.submitted = Clock::now();
  sub.request.arrival = std::chrono::duration<double>(sub.submitted - epoch_).count();
  std::string refused;
  std::shared_ptr<Handle> h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t queued = inbox_.size() + static_cast<size_t>(stats_.n_waiting);
    if (stop_) {
      refused = "the engine is shutting down";
    } else if (queued >= static_cast<size_t>(opts_.max_waiting)) {
      refused = "overloaded: " + std::to_string(queued) + " requests already waiting (limit " +
                std::to_string(opts_.max_waiting) + "); retry later";
    } else {
      h = std::shared_ptr<Handle>(new Handle(id, [this](uint64_t i) { request_cancel(i); }, on_update));
      sub.handle = h;
      inbox_.push_back(std::move(sub));
    }
  }
  // Refused outside the inbox lock: on_update may take the submitter's locks.
  if (!refused.empty()) return rejected(id, std::move(refused), std::move(on_update));
  cv_.notify_all();
  return h;
}

void Engine::request_cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(id);
  }
  cv_.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats s = stats_;
  s.n_waiting += static_cast<int>(inbox_.size());
  return s;
}

void Engine::end(uint64_t id, Outcome o) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  Live& l = *it->second;
  o.total_s = std::chrono::duration<double>(Clock::now() - l.submitted).count();
  o.queue_s = std::max(0.0, l.queue_s);
  o.first_token_s = std::max(0.0, l.first_token_s);
  o.n_prompt_tokens = l.prompt_len;
  if (l.kind == RequestKind::kScore) o.logprobs = std::move(l.logprobs);
  // Delivered after the step publishes its stats, so a submitter woken by
  // its result sees counters that already include it.
  ended_.emplace_back(std::move(l.handle), std::move(o));
  live_.erase(it);
}

void Engine::absorb_inbox() {
  std::deque<Submission> subs;
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    subs.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (Submission& s : subs) {
    const uint64_t id = s.request.id;
    auto live = std::make_unique<Live>();
    live->handle = s.handle;
    live->kind = s.request.kind;
    live->tokens = s.request.prompt;
    live->tokens.insert(live->tokens.end(), s.request.continuation.begin(), s.request.continuation.end());
    live->prompt_len = static_cast<int>(s.request.prompt.size());
    live->submitted = s.submitted;
    if (s.gen) {
      live->sampler.emplace(s.gen->sampling);
      live->stop = std::move(s.gen->stop);
    } else {
      live->logprobs.assign(s.request.continuation.size(), 0.0f);
    }
    const SubmitResult r = sched_.submit(std::move(s.request));
    live_.emplace(id, std::move(live));
    if (!r.ok()) {
      Outcome o;
      o.status = Status::kRejected;
      o.error = r.error;
      end(id, std::move(o));
    }
  }
  for (uint64_t id : cancels) sched_.cancel(id);
}

void Engine::run() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !inbox_.empty() || !cancels_.empty() || sched_.has_work(); });
      if (stop_) return;
    }
    absorb_inbox();
    step();
    for (auto& [handle, outcome] : ended_) handle->finish(std::move(outcome));
    ended_.clear();
  }
}

bool Engine::execute(const Plan& plan) {
  const model::Batch batch = plan.to_batch();
  logits_.resize(static_cast<size_t>(batch.n_logit_rows()) * backend_.config().vocab_size);
  try {
    for (const BlockCopy& c : plan.copies) backend_.copy_kv_block(c.dst, c.src);
    backend_.forward(logits_, batch);
    return true;
  } catch (const std::exception& e) {
    // A backend failure fails the requests of this step, not the server:
    // cancel them in the scheduler so their blocks come back.
    Outcome failed;
    failed.status = Status::kFailed;
    failed.error = std::string("backend error: ") + e.what();
    for (const PlanEntry& en : plan.entries) sched_.cancel(en.id);
    sched_.on_step_done(plan, std::vector<int32_t>(plan.n_samples(), 0), std::vector<uint8_t>(plan.n_samples(), 1));
    for (const PlanEntry& en : plan.entries) end(en.id, failed);
    return false;
  }
}

void Engine::step() {
  const Clock::time_point step_start = Clock::now();
  const Plan plan = sched_.schedule(std::chrono::duration<double>(step_start - epoch_).count());
  Outcome cancelled, expired;
  cancelled.status = Status::kCancelled;
  expired.status = Status::kExpired;
  expired.error = "deadline exceeded";
  for (RequestId id : plan.cancelled) end(id, cancelled);
  for (RequestId id : plan.expired) end(id, expired);

  std::vector<int32_t> sampled;  // one per entry with .samples
  std::vector<uint8_t> stop;     // parallel to sampled
  uint64_t n_generated = 0;      // sampled tokens that were kept
  // Requests whose logits held NaN/Inf, with the position of the first bad
  // row: such a row would become garbage text or a NaN logprob, so the
  // request ends as an internal error and the rest of the batch goes on.
  std::vector<std::pair<uint64_t, int>> nonfinite;
  if (!plan.empty() && execute(plan)) {
    const int vocab = backend_.config().vocab_size;
    const auto logits_row = [&](size_t r) { return std::span<const float>(logits_).subspan(r * vocab, vocab); };
    size_t row = 0;
    for (const PlanEntry& en : plan.entries) {
      Live& l = *live_.at(en.id);
      const size_t rows = en.all_logits ? en.tokens.size() : 1;
      const int first_pos = en.all_logits ? en.start_pos : en.start_pos + static_cast<int>(en.tokens.size()) - 1;
      if (l.queue_s < 0) l.queue_s = std::chrono::duration<double>(step_start - l.submitted).count();
      int bad_pos = -1;
      if (l.kind == RequestKind::kScore) {
        // Row at position p predicts token p + 1; continuation token i sits at
        // position prompt_len + i.
        for (size_t j = 0; j < rows && bad_pos < 0; ++j) {
          const int target = first_pos + static_cast<int>(j) + 1;
          const int idx = target - l.prompt_len;
          if (idx < 0 || idx >= static_cast<int>(l.logprobs.size())) continue;
          const std::span<const float> logits = logits_row(row + j);
          if (!all_finite(logits)) {
            bad_pos = first_pos + static_cast<int>(j);
          } else {
            l.logprobs[idx] = static_cast<float>(model::token_logprob(logits, l.tokens[target]));
          }
        }
      }
      if (en.samples && l.sampler) {
        const std::span<const float> last = logits_row(row + rows - 1);
        if (bad_pos < 0 && !all_finite(last)) bad_pos = first_pos + static_cast<int>(rows) - 1;
        int32_t tok = 0;  // a placeholder for a failed request: the scheduler drops it
        bool stop_here = false;
        if (bad_pos < 0) {
          tok = l.sampler->sample(last, l.tokens);
          l.tokens.push_back(tok);
          ++n_generated;
          if (tok != backend_.config().eos_token_id) {
            if (l.first_token_s < 0) l.first_token_s = std::chrono::duration<double>(Clock::now() - l.submitted).count();
            l.handle->push(tok);
            if (l.stop) stop_here = l.stop(std::span<const int32_t>(l.tokens).subspan(l.prompt_len));
          }
        }
        sampled.push_back(tok);
        stop.push_back(stop_here);
      }
      if (bad_pos >= 0) {
        // The plan is in flight: the scheduler frees its blocks right after
        // on_step_done and ignores its sampled token.
        sched_.cancel(en.id);
        nonfinite.emplace_back(en.id, bad_pos);
      }
      row += rows;
    }
    const StepResult r = sched_.on_step_done(plan, sampled, stop);
    for (const Finished& f : r.finished) {
      Live& l = *live_.at(f.id);
      Outcome o;
      o.n_preemptions = f.n_preemptions;
      switch (f.reason) {
        case FinishReason::kEos: o.finish = Finish::kEos; break;
        case FinishReason::kStop: o.finish = Finish::kStop; break;
        case FinishReason::kMaxTokens: o.finish = Finish::kLength; break;
        case FinishReason::kScored:
          o.finish = Finish::kScored;
          if (l.first_token_s < 0) l.first_token_s = std::chrono::duration<double>(Clock::now() - l.submitted).count();
          break;
      }
      o.tokens = f.output;
      if (!o.tokens.empty() && f.reason == FinishReason::kEos) o.tokens.pop_back();
      end(f.id, std::move(o));
    }
    for (const auto& [id, pos] : nonfinite) {
      const Live& l = *live_.at(id);
      Outcome o;
      o.status = Status::kNonFinite;
      o.error = "the model produced non-finite logits (NaN or Inf) at position " + std::to_string(pos);
      if (l.kind == RequestKind::kGenerate) o.tokens.assign(l.tokens.begin() + l.prompt_len, l.tokens.end());
      end(id, std::move(o));
    }
  }

  const SchedulerStats s = sched_.stats();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.steps = s.steps;
  stats_.preemptions = s.preemptions;
  stats_.preemptions_kv = s.preemptions_kv;
  stats_.preemptions_slot = s.preemptions_slot;
  stats_.n_waiting = s.n_waiting;
  stats_.n_running = s.n_running;
  stats_.prefix_hits = s.prefix_hits;
  stats_.prefix_misses = s.prefix_misses;
  stats_.kv_usage = s.block_usage;
  stats_.computed_tokens += plan.n_tokens();
  stats_.generated_tokens += n_generated;
  stats_.nonfinite_logits += nonfinite.size();
}

}  // namespace chatradio::engine
