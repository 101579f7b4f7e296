// Offline serving benchmark of the engine on the CPU backend, on real report
// findings wrapped in a prompt template. Prints markdown tables.
//
// --mode load (default): a closed loop of C concurrent clients (C = 1, 4, 16,
//   64 by default): throughput, latency percentiles, prefix-cache hit rate.
// --mode stat: STAT time-to-first-token under full routine load. 2 x B routine
//   clients keep all B batch slots (--max-batch-size) busy with --max-tokens
//   generations while --stat-requests short STAT requests arrive, one every
//   --stat-interval-ms; run with slot preemption on and off, so the table shows
//   what the STAT latency gains and what routine throughput pays for it.
//
// usage: bench_engine --model DIR [--mode load|stat] [--requests N] [--max-tokens N]
//                     [--threads N] [--concurrency 1,4,16,64] [--quantize int4]
//                     [--data DIR] [--token-budget N] [--max-batch-size N]
//                     [--stat-requests N] [--stat-interval-ms N]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "server/engine/engine.h"
#include "tests/common/csv.h"

namespace {

using namespace chatradio;
using Clock = std::chrono::steady_clock;

// The shared system text every request starts with, as in the service's
// templates: it is what the prefix cache reuses.
constexpr const char* kSystem =
    "You are an experienced radiologist. Read the findings of a radiology report and write the "
    "impression: a concise summary of the most important findings first, with no findings that are "
    "not in the report, in the same language as the findings.";

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()))];
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Settings {
  int requests = 64, max_tokens = 32, token_budget = 512, max_batch_size = 64;
  int stat_requests = 100, stat_interval_ms = 100;
  std::vector<int> conc{1, 4, 16, 64};
};

// --mode load: one table row per concurrency.
void run_load(model::Backend& backend, const std::vector<std::vector<int32_t>>& prompts, const Settings& set) {
  std::printf("| concurrency | req/s | gen tok/s | TTFT p50 / p95 (s) | per-token p50 / p95 (ms) | "
              "e2e p50 / p95 (s) | prefix hit rate | preemptions |\n|---|---|---|---|---|---|---|---|\n");
  for (int c : set.conc) {
    engine::Engine eng(backend, engine::EngineOptions{set.token_budget, set.max_batch_size, 1024, 30.0});
    std::mutex mu;
    std::vector<double> ttft, tpot, e2e;
    long gen_tokens = 0;
    int next = 0;
    const auto t0 = Clock::now();
    std::vector<std::thread> clients;
    for (int k = 0; k < c; ++k) {
      clients.emplace_back([&] {
        for (;;) {
          int i;
          {
            std::lock_guard<std::mutex> lock(mu);
            if (next >= set.requests) return;
            i = next++;
          }
          engine::GenerateParams g;
          g.prompt = prompts[i % prompts.size()];
          g.max_new_tokens = set.max_tokens;
          const engine::Outcome o = eng.generate(g)->wait();
          std::lock_guard<std::mutex> lock(mu);
          if (o.status != engine::Status::kOk) {
            std::fprintf(stderr, "request failed: %s\n", o.error.c_str());
            continue;
          }
          ttft.push_back(o.first_token_s);
          e2e.push_back(o.total_s);
          if (o.tokens.size() > 1) tpot.push_back((o.total_s - o.first_token_s) / (o.tokens.size() - 1) * 1e3);
          gen_tokens += static_cast<long>(o.tokens.size());
        }
      });
    }
    for (auto& t : clients) t.join();
    const double secs = seconds_since(t0);
    const engine::EngineStats s = eng.stats();
    const double hit = s.prefix_hits + s.prefix_misses ? double(s.prefix_hits) / (s.prefix_hits + s.prefix_misses) : 0;
    std::printf("| %d | %.2f | %.1f | %.3f / %.3f | %.1f / %.1f | %.2f / %.2f | %.2f | %llu |\n", c,
                set.requests / secs, gen_tokens / secs, pct(ttft, 50), pct(ttft, 95), pct(tpot, 50), pct(tpot, 95),
                pct(e2e, 50), pct(e2e, 95), hit, static_cast<unsigned long long>(s.preemptions));
    std::fflush(stdout);
  }
}

// --mode stat: one row with slot preemption on, one with it off.
void run_stat(model::Backend& backend, const std::vector<std::vector<int32_t>>& prompts, const Settings& set) {
  constexpr int kStatTokens = 8;
  // STAT requests arrive on a fixed schedule (open loop), so both rows serve the
  // same STAT work and differ only in how it gets its slot.
  const auto interval = std::chrono::milliseconds(set.stat_interval_ms);
  std::printf("| slot preemption | STAT TTFT p50 / p99 (s) | STAT e2e p50 / p99 (s) | routine gen tok/s | "
              "routine req/s | preemptions slot / kv |\n|---|---|---|---|---|---|\n");
  for (const bool slot_preemption : {true, false}) {
    engine::EngineOptions opts{set.token_budget, set.max_batch_size, 1024, 30.0};
    opts.slot_preemption = slot_preemption;
    engine::Engine eng(backend, opts);
    std::atomic<bool> stop{false};
    std::mutex mu;
    int routine_done = 0, next = 0;
    std::vector<std::thread> clients;
    for (int k = 0; k < 2 * set.max_batch_size; ++k) {
      clients.emplace_back([&] {
        while (!stop) {
          engine::GenerateParams g;
          {
            std::lock_guard<std::mutex> lock(mu);
            g.prompt = prompts[next++ % prompts.size()];
          }
          g.max_new_tokens = set.max_tokens;
          const engine::Outcome o = eng.generate(g)->wait();
          std::lock_guard<std::mutex> lock(mu);
          routine_done += o.status == engine::Status::kOk;
        }
      });
    }
    // Let the routine load fill every slot before the first STAT request.
    while (eng.stats().n_running < set.max_batch_size) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // The measured window starts now. Routine tokens = everything the engine
    // sampled in it minus what the STAT requests sampled.
    const auto t0 = Clock::now();
    const engine::EngineStats s0 = eng.stats();
    int done0;
    {
      std::lock_guard<std::mutex> lock(mu);
      done0 = routine_done;
    }
    long stat_tokens = 0;
    std::vector<double> ttft, e2e;
    std::vector<std::shared_ptr<engine::Handle>> stat_handles;
    for (int i = 0; i < set.stat_requests; ++i) {
      std::this_thread::sleep_until(t0 + (i + 1) * interval);
      engine::GenerateParams g;
      g.prompt = prompts[(prompts.size() / 2 + i) % prompts.size()];
      g.max_new_tokens = kStatTokens;
      g.priority = engine::Priority::kStat;
      stat_handles.push_back(eng.generate(std::move(g)));
    }
    // The window ends when the last STAT request is done.
    for (const auto& h : stat_handles) {
      const engine::Outcome& o = h->wait();
      if (o.status != engine::Status::kOk) {
        std::fprintf(stderr, "STAT request failed: %s\n", o.error.c_str());
        continue;
      }
      ttft.push_back(o.first_token_s);
      e2e.push_back(o.total_s);
      stat_tokens += static_cast<long>(o.tokens.size()) + (o.finish == engine::Finish::kEos ? 1 : 0);
    }
    const double secs = seconds_since(t0);
    const engine::EngineStats s = eng.stats();
    int done;
    {
      std::lock_guard<std::mutex> lock(mu);
      done = routine_done - done0;
    }
    const long routine_tokens = static_cast<long>(s.generated_tokens - s0.generated_tokens) - stat_tokens;
    stop = true;
    for (auto& t : clients) t.join();
    std::printf("| %s | %.3f / %.3f | %.3f / %.3f | %.1f | %.2f | %llu / %llu |\n", slot_preemption ? "on" : "off",
                pct(ttft, 50), pct(ttft, 99), pct(e2e, 50), pct(e2e, 99), routine_tokens / secs, done / secs,
                static_cast<unsigned long long>(s.preemptions_slot - s0.preemptions_slot),
                static_cast<unsigned long long>(s.preemptions_kv - s0.preemptions_kv));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, data = "../shared/data", mode = "load";
  int threads = 2;
  bool quantize = false;
  Settings set;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") dir = v;
    else if (a == "--mode" && (v == "load" || v == "stat")) mode = v;
    else if (a == "--requests") set.requests = std::atoi(v.c_str());
    else if (a == "--max-tokens") set.max_tokens = std::atoi(v.c_str());
    else if (a == "--threads") threads = std::atoi(v.c_str());
    else if (a == "--data") data = v;
    else if (a == "--token-budget") set.token_budget = std::atoi(v.c_str());
    else if (a == "--max-batch-size") set.max_batch_size = std::atoi(v.c_str());
    else if (a == "--stat-requests") set.stat_requests = std::atoi(v.c_str());
    else if (a == "--stat-interval-ms") set.stat_interval_ms = std::atoi(v.c_str());
    else if (a == "--quantize" && v == "int4") quantize = true;
    else if (a == "--concurrency") {
      set.conc.clear();
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) set.conc.push_back(std::atoi(item.c_str()));
    } else {
      std::fprintf(stderr, "unknown option %s %s\n", a.c_str(), v.c_str());
      return 2;
    }
  }
  if (dir.empty() || set.max_batch_size < 1) {
    std::fprintf(stderr, "usage: bench_engine --model DIR [--mode load|stat] [--requests N] [--max-tokens N] "
                         "[--threads N] [--concurrency 1,4,16,64] [--quantize int4] [--data DIR] "
                         "[--token-budget N] [--max-batch-size N] [--stat-requests N] [--stat-interval-ms N]\n");
    return 2;
  }
  try {
    // English IU X-ray and Chinese COV-CTR findings, interleaved.
    std::vector<std::string> findings = chatradio::testing::csv_column(data + "/iu-xray/indiana_reports.csv", "findings");
    const auto zh = chatradio::testing::csv_column(data + "/cov-ctr/reports_ZH_EN.csv", "findings");
    for (size_t i = 0; i < zh.size() && i < findings.size(); ++i) findings.insert(findings.begin() + 2 * i, zh[i]);
    if (findings.empty()) throw std::runtime_error("no reports found under " + data);

    const model::Tokenizer tok = model::Tokenizer::load(dir + "/tokenizer.model");
    model::CpuBackendOptions opts;
    opts.n_threads = threads;
    opts.n_kv_blocks = 2048;
    model::LoadOptions load;
    if (quantize) load.format = model::WeightFormat::kInt4;
    auto llama = model::CpuLlama::load(dir, opts, load);
    const int ctx = llama->config().max_position_embeddings;
    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& f : findings) {
      auto ids = tok.encode(std::string(kSystem) + "\n\nFindings: " + f + "\nImpression:", true);
      if (static_cast<int>(ids.size()) + set.max_tokens <= ctx) prompts.push_back(std::move(ids));
    }
    if (prompts.empty()) throw std::runtime_error("no prompt leaves room for --max-tokens in the model context");

    std::printf("model %s, %d threads, max batch %d, max %d new tokens, mode %s\n\n", dir.c_str(), threads,
                set.max_batch_size, set.max_tokens, mode.c_str());
    if (mode == "load") {
      run_load(*llama, prompts, set);
    } else {
      run_stat(*llama, prompts, set);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
}
