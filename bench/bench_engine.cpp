// Offline serving benchmark of the engine on the CPU backend: a closed loop of
// C concurrent clients (C = 1, 4, 16, 64 by default), each sending real report
// findings wrapped in a prompt template, measuring throughput and latency
// percentiles and the prefix-cache hit rate. Prints a markdown table.
//
// usage: bench_engine --model DIR [--requests N] [--max-tokens N] [--threads N]
//                     [--concurrency 1,4,16,64] [--quantize int4] [--data DIR]
//                     [--token-budget N]
#include <algorithm>
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

}  // namespace

int main(int argc, char** argv) {
  std::string dir, data = "../shared/data";
  int requests = 64, max_tokens = 32, threads = 2, token_budget = 512;
  bool quantize = false;
  std::vector<int> conc{1, 4, 16, 64};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") dir = v;
    else if (a == "--requests") requests = std::atoi(v.c_str());
    else if (a == "--max-tokens") max_tokens = std::atoi(v.c_str());
    else if (a == "--threads") threads = std::atoi(v.c_str());
    else if (a == "--data") data = v;
    else if (a == "--token-budget") token_budget = std::atoi(v.c_str());
    else if (a == "--quantize" && v == "int4") quantize = true;
    else if (a == "--concurrency") {
      conc.clear();
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) conc.push_back(std::atoi(item.c_str()));
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_engine --model DIR [--requests N] [--max-tokens N] [--threads N] "
                         "[--concurrency 1,4,16,64] [--quantize int4] [--data DIR] [--token-budget N]\n");
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
      if (static_cast<int>(ids.size()) + max_tokens <= ctx) prompts.push_back(std::move(ids));
    }

    std::printf("model %s, %d threads, %d requests per row, max %d new tokens\n\n", dir.c_str(), threads,
                requests, max_tokens);
    std::printf("| concurrency | req/s | gen tok/s | TTFT p50 / p95 (s) | per-token p50 / p95 (ms) | "
                "e2e p50 / p95 (s) | prefix hit rate | preemptions |\n|---|---|---|---|---|---|---|---|\n");
    for (int c : conc) {
      engine::Engine eng(*llama, engine::EngineOptions{token_budget, 64, 1024, 30.0});
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
              if (next >= requests) return;
              i = next++;
            }
            engine::GenerateParams g;
            g.prompt = prompts[i % prompts.size()];
            g.max_new_tokens = max_tokens;
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
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const engine::EngineStats s = eng.stats();
      const double hit = s.prefix_hits + s.prefix_misses ? double(s.prefix_hits) / (s.prefix_hits + s.prefix_misses) : 0;
      std::printf("| %d | %.2f | %.1f | %.3f / %.3f | %.1f / %.1f | %.2f / %.2f | %.2f | %llu |\n", c,
                  requests / secs, gen_tokens / secs, pct(ttft, 50), pct(ttft, 95), pct(tpot, 50), pct(tpot, 95),
                  pct(e2e, 50), pct(e2e, 95), hit, static_cast<unsigned long long>(s.preemptions));
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
}
