#include "server/engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <stdexcept>

namespace chatradio::engine {

// ---- Plan -------------------------------------------------------------------

int Plan::n_tokens() const {
  int n = 0;
  for (const auto& e : entries) n += static_cast<int>(e.tokens.size());
  return n;
}

int Plan::n_samples() const {
  return static_cast<int>(std::count_if(entries.begin(), entries.end(),
                                        [](const PlanEntry& e) { return e.samples; }));
}

model::Batch Plan::to_batch() const {
  model::Batch batch;
  batch.seqs.reserve(entries.size());
  for (const auto& e : entries) {
    batch.seqs.push_back(model::SeqSlice{e.tokens, e.start_pos, e.blocks, e.all_logits});
  }
  return batch;
}

// ---- Scheduler --------------------------------------------------------------

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("SchedulerConfig: " + what);
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config), blocks_(config.n_blocks, config.block_size, config.block_hash) {
  require(config.token_budget >= 1, "token_budget must be >= 1");
  require(config.max_batch_size >= 1, "max_batch_size must be >= 1");
  require(config.max_waiting >= 0, "max_waiting must be >= 0");
  require(std::isfinite(config.routine_aging_s) && config.routine_aging_s >= 0,
          "routine_aging_s must be finite and >= 0 (a finite value is what prevents starvation)");
  require(config.max_seq_len >= 0, "max_seq_len must be >= 0");
}

int Scheduler::max_kv_tokens(const Request& r) const {
  // The last generated token is never fed back, so it never occupies KV.
  const int64_t n = r.kind == RequestKind::kScore
                        ? static_cast<int64_t>(r.prompt.size()) + static_cast<int64_t>(r.continuation.size())
                        : static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens - 1;
  return static_cast<int>(std::min<int64_t>(n, INT32_MAX));
}

SubmitResult Scheduler::submit(Request r) {
  const auto invalid = [&](const std::string& why) {
    return SubmitResult{SubmitStatus::kInvalid, "request " + std::to_string(r.id) + ": " + why};
  };
  if (seqs_.count(r.id)) return invalid("id already queued or running");
  if (r.prompt.empty()) return invalid("empty prompt");
  if (r.kind == RequestKind::kGenerate) {
    if (r.max_new_tokens < 1) return invalid("max_new_tokens must be >= 1");
    if (!r.continuation.empty()) return invalid("a continuation is only for scoring requests");
  } else if (r.continuation.empty()) {
    return invalid("a scoring request needs continuation tokens");
  }
  const auto negative = [](const std::vector<int32_t>& v) {
    return std::any_of(v.begin(), v.end(), [](int32_t t) { return t < 0; });
  };
  if (negative(r.prompt) || negative(r.continuation)) return invalid("negative token id");

  const int64_t full_len = r.kind == RequestKind::kScore
                               ? static_cast<int64_t>(r.prompt.size() + r.continuation.size())
                               : static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens;
  if (config_.max_seq_len > 0 && full_len > config_.max_seq_len) {
    return {SubmitStatus::kTooLarge, "request " + std::to_string(r.id) + " may reach " +
                                         std::to_string(full_len) + " tokens, over the limit of " +
                                         std::to_string(config_.max_seq_len)};
  }
  const int64_t max_kv = max_kv_tokens(r);
  const int64_t need = (max_kv + config_.block_size - 1) / config_.block_size;
  if (need > config_.n_blocks) {
    // Admitting it would end in it preempting itself forever once alone.
    return {SubmitStatus::kTooLarge,
            "request " + std::to_string(r.id) + " needs up to " + std::to_string(need) + " KV blocks (" +
                std::to_string(max_kv) + " tokens at " + std::to_string(config_.block_size) +
                " per block) but the whole pool has " + std::to_string(config_.n_blocks)};
  }
  if (static_cast<int>(waiting_.size()) >= config_.max_waiting) {
    return {SubmitStatus::kOverloaded, "server overloaded: " + std::to_string(waiting_.size()) +
                                           " requests already waiting; retry later"};
  }

  Sequence s;
  s.prompt_len = static_cast<int>(r.prompt.size());
  s.tokens = std::move(r.prompt);
  s.tokens.insert(s.tokens.end(), r.continuation.begin(), r.continuation.end());
  r.prompt = {};  // the tokens live in s.tokens only
  r.continuation = {};
  const Time offset = r.priority == Priority::kRoutine ? config_.routine_aging_s : 0.0;
  s.rank = Rank{r.arrival + offset, r.arrival, next_order_++, r.id};
  s.req = std::move(r);
  const RequestId id = s.req.id;
  if (s.req.deadline) deadlines_.insert({*s.req.deadline, id});
  waiting_.insert(s.rank);
  seqs_.emplace(id, std::move(s));
  return {};
}

bool Scheduler::cancel(RequestId id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second.cancel_requested) return false;
  if (in_flight_ && it->second.running) {
    // The backend may be using its blocks right now: free them when it is done.
    it->second.cancel_requested = true;
    deferred_cancels_.push_back(id);
  } else {
    remove(id);
    pending_cancelled_.push_back(id);
  }
  return true;
}

void Scheduler::remove(RequestId id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  const Sequence& s = it->second;
  blocks_.free_sequence(id);
  (s.running ? running_ : waiting_).erase(s.rank);
  if (s.req.deadline) deadlines_.erase({*s.req.deadline, id});
  seqs_.erase(it);
}

int Scheduler::reusable_prefix(const Sequence& s) const {
  // At least one token is always computed: its logits are what the step is
  // for. Scoring must also compute from the first position whose logits it
  // wants (the one predicting the first continuation token).
  const int n = static_cast<int>(s.tokens.size());
  return s.req.kind == RequestKind::kScore ? s.prompt_len - 1 : n - 1;
}

void Scheduler::preempt(StepBuild& build, RequestId id, PreemptReason why) {
  Sequence& s = seqs_.at(id);
  blocks_.free_sequence(id);  // full blocks stay cached, so recompute is often cheap
  running_.erase(s.rank);
  waiting_.insert(s.rank);  // keeps its rank: it is not pushed behind later arrivals
  s.running = false;
  s.n_computed = 0;
  s.n_preemptions += 1;
  s.preempted_step = step_;
  (why == PreemptReason::kSlot ? preemptions_slot_ : preemptions_kv_) += 1;
  const auto w = std::find_if(build.work.begin(), build.work.end(),
                              [&](const Scheduled& x) { return x.id == id; });
  if (w != build.work.end()) {
    build.budget_left += w->n_tokens;
    build.work.erase(w);
  }
  build.plan.preempted.push_back(id);
}

std::vector<RequestId> Scheduler::victims_for(const Sequence& s) const {
  // A STAT never displaces a STAT: between two urgent reports, the one
  // already running keeps going rather than being recomputed.
  const bool stat = s.req.priority == Priority::kStat;
  std::vector<RequestId> victims;
  for (auto r = running_.rbegin(); r != running_.rend() && worse_than(*r, s.rank); ++r) {
    const RequestId id = std::get<3>(*r);
    if (!stat || seqs_.at(id).req.priority != Priority::kStat) victims.push_back(id);
  }
  return victims;
}

void Scheduler::schedule_decode(StepBuild& build, Sequence& s) {
  const int need = blocks_.blocks_for(s.n_computed + 1) - static_cast<int>(blocks_.table(s.req.id).size());
  while (blocks_.n_available() < need) {
    // The worst-ranked running sequence goes first: possibly this very one, which then waits.
    const RequestId victim = std::get<3>(*running_.rbegin());
    preempt(build, victim, PreemptReason::kKv);
    if (victim == s.req.id) return;
  }
  blocks_.grow(s.req.id, s.n_computed + 1);
  build.work.push_back({s.req.id, 1});
  build.budget_left -= 1;
}

void Scheduler::schedule_prefill(StepBuild& build, Sequence& s) {
  // Blocks for the whole prompt were taken at admission: only budget limits the chunk.
  const int n = std::min(static_cast<int>(s.tokens.size()) - s.n_computed, build.budget_left);
  build.work.push_back({s.req.id, n});
  build.budget_left -= n;
}

bool Scheduler::admit(StepBuild& build, Sequence& s) {
  const int bs = config_.block_size;
  const RequestId id = s.req.id;
  // Every running sequence ranked below this request can make room for it:
  // the worst one its batch slot, and as many as needed their KV blocks.
  std::vector<RequestId> victims = victims_for(s);
  const bool need_slot = static_cast<int>(running_.size()) >= config_.max_batch_size;
  if (need_slot && (!config_.slot_preemption || victims.empty())) return false;

  // Reuse the longest cached prefix. Its full blocks are shared read-only; if
  // the first position to compute falls inside a cached block, that block is
  // copied (copy-on-write) rather than written while others may read it.
  const int n_tokens = static_cast<int>(s.tokens.size());
  const std::vector<BlockId> matched = blocks_.lookup(s.tokens);
  int start = std::min(static_cast<int>(matched.size()) * bs, reusable_prefix(s));
  const int shared = start / bs;
  BlockId cow_src = start % bs != 0 ? matched[shared] : -1;
  blocks_.attach(id, std::span<const BlockId>(matched).first(shared));
  if (cow_src >= 0) blocks_.pin(cow_src);

  // Admit only if blocks for the whole prompt (cached part aside) can be had,
  // counting what reclaiming every lower-ranked sequence would free. Taking
  // them all now means a prefill never stalls or preempts midway, and a
  // request is not let in just to be preempted again a step later.
  const int need = blocks_.blocks_for(n_tokens) - shared;
  const auto obtainable = [&] { return blocks_.n_available() + blocks_.freeable_by(victims); };
  if (cow_src >= 0 && obtainable() < need) {
    blocks_.unpin(cow_src);  // the copy's pinned source is what does not fit: recompute instead
    cow_src = -1;
    start = shared * bs;
  }
  if (obtainable() < need) {
    blocks_.free_sequence(id);
    return false;
  }

  // Worst first; enough blocks come free before the list runs out (checked above).
  auto victim = victims.begin();
  if (need_slot) preempt(build, *victim++, PreemptReason::kSlot);
  while (blocks_.n_available() < need) {
    if (victim == victims.end()) throw std::logic_error("Scheduler::admit: reclaiming freed fewer blocks than counted");
    preempt(build, *victim++, PreemptReason::kKv);
  }
  blocks_.grow(id, n_tokens);
  if (cow_src >= 0) build.plan.copies.push_back({cow_src, blocks_.table(id)[shared]});
  const int hits = shared + (cow_src >= 0 ? 1 : 0);
  blocks_.record_lookup(hits, n_tokens / bs - hits);
  const int n = std::min(n_tokens - start, build.budget_left);

  waiting_.erase(s.rank);
  running_.insert(s.rank);
  s.running = true;
  s.n_computed = start;
  build.work.push_back({id, n});
  build.budget_left -= n;
  return true;
}

PlanEntry Scheduler::make_entry(const Sequence& s, int n_tokens) const {
  PlanEntry e;
  e.id = s.req.id;
  const auto first = s.tokens.begin() + s.n_computed;
  e.tokens.assign(first, first + n_tokens);
  e.start_pos = s.n_computed;
  const int end = s.n_computed + n_tokens;
  const auto& table = blocks_.table(s.req.id);
  e.blocks.assign(table.begin(), table.begin() + blocks_.blocks_for(end));
  if (s.req.kind == RequestKind::kScore) {
    // Rows from position prompt_len - 1 on predict the continuation tokens.
    e.all_logits = end > s.prompt_len - 1;
  } else {
    e.samples = end == static_cast<int>(s.tokens.size());
  }
  return e;
}

Plan Scheduler::schedule(Time now) {
  if (in_flight_) throw std::logic_error("Scheduler::schedule: the previous plan's on_step_done is missing");
  ++step_;
  StepBuild build;
  build.plan.step = step_;
  build.budget_left = config_.token_budget;
  build.plan.cancelled.swap(pending_cancelled_);

  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const RequestId id = deadlines_.begin()->second;
    remove(id);
    build.plan.expired.push_back(id);
  }

  // Snapshots in rank order. Running sequences with one token left are
  // decoding; the rest of the running ones are mid-prefill.
  std::vector<RequestId> decodes;
  std::vector<Rank> partials;
  for (const Rank& r : running_) {
    const Sequence& s = seqs_.at(std::get<3>(r));
    if (static_cast<int>(s.tokens.size()) - s.n_computed == 1) {
      decodes.push_back(s.req.id);
    } else {
      partials.push_back(r);
    }
  }
  std::vector<Rank> prefills;
  prefills.reserve(partials.size() + waiting_.size());
  std::merge(partials.begin(), partials.end(), waiting_.begin(), waiting_.end(), std::back_inserter(prefills));

  // Pass 1: decodes first, one token each, so a long prefill never stalls them.
  for (const RequestId id : decodes) {
    if (build.budget_left < 1) break;
    Sequence& s = seqs_.at(id);
    if (s.running) schedule_decode(build, s);  // skip ones preempted meanwhile
  }

  // Pass 2: prefill chunks from what is left, in rank order, continuing ones
  // and new admissions alike. The first admission that fails stops admitting
  // (a smaller later request must not overtake it forever). A batch full of
  // decodes still reaches the admissions: a waiting STAT takes a routine
  // sequence's slot in this very step.
  bool admitting = true;
  for (const Rank& r : prefills) {
    if (build.budget_left < 1) break;
    Sequence& s = seqs_.at(std::get<3>(r));
    if (s.running) {
      if (static_cast<int>(build.work.size()) < config_.max_batch_size) schedule_prefill(build, s);
    } else if (admitting && s.preempted_step != step_) {
      admitting = admit(build, s);
    }
  }

  build.plan.entries.reserve(build.work.size());
  for (const Scheduled& w : build.work) build.plan.entries.push_back(make_entry(seqs_.at(w.id), w.n_tokens));
  in_flight_ = !build.plan.entries.empty();
  return std::move(build.plan);
}

StepResult Scheduler::on_step_done(const Plan& plan, std::span<const int32_t> sampled,
                                   std::span<const uint8_t> stop) {
  if (!in_flight_ || plan.step != step_) {
    throw std::logic_error("Scheduler::on_step_done: plan " + std::to_string(plan.step) +
                           " is not the one in flight");
  }
  if (static_cast<int>(sampled.size()) != plan.n_samples() || (!stop.empty() && stop.size() != sampled.size())) {
    throw std::invalid_argument("Scheduler::on_step_done: expected " + std::to_string(plan.n_samples()) +
                                " sampled tokens (and as many stop flags, if any), got " +
                                std::to_string(sampled.size()));
  }
  std::vector<std::pair<RequestId, FinishReason>> done;
  size_t k = 0;
  for (const PlanEntry& e : plan.entries) {
    Sequence& s = seqs_.at(e.id);
    if (e.start_pos != s.n_computed) throw std::logic_error("Scheduler::on_step_done: plan was modified");
    s.n_computed = e.start_pos + static_cast<int>(e.tokens.size());
    // The KV of this step is valid even for a cancelled request: cache it.
    blocks_.commit(e.id, s.tokens, s.n_computed);
    if (e.samples) {
      const int32_t token = sampled[k];
      const bool stop_now = !stop.empty() && stop[k] != 0;
      ++k;
      if (s.cancel_requested) continue;
      s.tokens.push_back(token);
      s.n_generated += 1;
      if (s.req.eos_id >= 0 && token == s.req.eos_id) {
        done.push_back({e.id, FinishReason::kEos});
      } else if (stop_now) {
        done.push_back({e.id, FinishReason::kStop});
      } else if (s.n_generated >= s.req.max_new_tokens) {
        done.push_back({e.id, FinishReason::kMaxTokens});
      }
    } else if (s.req.kind == RequestKind::kScore && !s.cancel_requested &&
               s.n_computed == static_cast<int>(s.tokens.size())) {
      done.push_back({e.id, FinishReason::kScored});
    }
  }
  blocks_.release_pins();  // the copies have been made

  StepResult result;
  result.finished.reserve(done.size());
  for (const auto& [id, reason] : done) {
    const Sequence& s = seqs_.at(id);
    Finished f{id, reason, {}, s.n_preemptions};
    if (s.req.kind == RequestKind::kGenerate) f.output.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
    result.finished.push_back(std::move(f));
    remove(id);
  }
  for (const RequestId id : deferred_cancels_) {
    remove(id);
    pending_cancelled_.push_back(id);
  }
  deferred_cancels_.clear();
  in_flight_ = false;
  return result;
}

std::optional<RequestInfo> Scheduler::info(RequestId id) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) return std::nullopt;
  const Sequence& s = it->second;
  return RequestInfo{s.running ? RequestState::kRunning : RequestState::kWaiting,
                     static_cast<int>(s.tokens.size()), s.n_computed, s.n_generated, s.n_preemptions};
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st;
  st.steps = step_;
  st.preemptions_kv = preemptions_kv_;
  st.preemptions_slot = preemptions_slot_;
  st.preemptions = preemptions_kv_ + preemptions_slot_;
  st.n_waiting = n_waiting();
  st.n_running = n_running();
  st.prefix_hits = blocks_.hits();
  st.prefix_misses = blocks_.misses();
  st.prefix_hit_rate = blocks_.hit_rate();
  st.block_usage = blocks_.usage();
  return st;
}

std::string Scheduler::validate() const {
  if (std::string e = blocks_.validate(); !e.empty()) return "blocks: " + e;
  const int bs = config_.block_size;
  int n_running = 0;
  for (const auto& [id, s] : seqs_) {
    const std::string who = "request " + std::to_string(id) + ": ";
    const auto& table = blocks_.table(id);
    if (s.n_computed < 0 || s.n_computed > static_cast<int>(s.tokens.size())) return who + "computed out of range";
    if (s.running) {
      ++n_running;
      if (!running_.count(s.rank)) return who + "running but not in the running set";
      if (!blocks_.has_sequence(id)) return who + "running without a block table";
      if (static_cast<int>(table.size()) * bs < s.n_computed) return who + "blocks do not cover computed tokens";
    } else {
      if (!waiting_.count(s.rank)) return who + "waiting but not in the waiting queue";
      if (blocks_.has_sequence(id) || s.n_computed != 0) return who + "waiting while holding KV";
    }
    if (s.req.deadline && !deadlines_.count({*s.req.deadline, id})) return who + "deadline not tracked";
  }
  if (n_running != static_cast<int>(running_.size()) ||
      seqs_.size() != running_.size() + waiting_.size()) {
    return "running/waiting sets disagree with the requests";
  }
  if (blocks_.n_sequences() != n_running) return "a block table belongs to no running request";
  if (n_running > config_.max_batch_size) return "more running sequences than max_batch_size";
  return {};
}

}  // namespace chatradio::engine
