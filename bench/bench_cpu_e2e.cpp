// End-to-end CPU backend speed on one sequence: load, prefill tok/s, decode
// tok/s at context 0 and at a given context, peak RSS. Prints one markdown
// table row per run so results paste into bench/README.md.
//
// usage: bench_cpu_e2e --model DIR [--threads N] [--prefill N] [--decode N]
//                      [--context N] [--quantize int4] [--kv-dtype f16|f32]
//                      [--weight-cache DIR] [--timings] [--load-only]
// Columns: model, threads, KV dtype, weights GB, decode tok/s at context 0,
// decode tok/s at --context, prefill tok/s, peak RSS GiB, load s.
// --timings prints where the load time went to stderr (model::LoadStats);
// --load-only stops after loading (load time and peak RSS only).
// --weight-cache DIR maps (or, the first time, writes) the int4 layout there
// (model/weight_cache.h); without it every load builds the layout.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "model/llama.h"

namespace {

using chatradio::model::Batch;
using chatradio::model::CpuLlama;
using chatradio::model::SeqSlice;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double peak_rss_gib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1048576.0;  // KiB -> GiB
}

struct Runner {
  CpuLlama& llama;
  std::vector<float> logits;
  std::vector<int32_t> blocks;

  // Runs `tokens` at positions [start, start + n) with logits for the last one.
  void step(const std::vector<int32_t>& tokens, int start) {
    Batch b{{SeqSlice{tokens, start, blocks, false}}};
    llama.forward(logits, b);
  }
  // Decodes n tokens after `ctx` cached ones; returns tokens/s.
  double decode(int ctx, int n) {
    int32_t tok = 1;
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      step({tok}, ctx + i);
      tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    return n / seconds_since(t0);
  }
};

// The load's phases, one line each: wall seconds, and per kind of task the
// CPU and wall seconds summed over the loader threads.
void print_load_stats(const chatradio::model::LoadStats& s, double load_s) {
  using chatradio::model::LoadStats;
  static constexpr const char* kNames[LoadStats::kKinds] = {"read", "repack", "quantize", "convert", "cached"};
  std::fprintf(stderr, "load %.2f s on %d threads: open %.3f s, tensors %.2f s, finish %.3f s\n", load_s, s.threads,
               s.open_s, s.tensors_s, s.finish_s);
  for (int k = 0; k < LoadStats::kKinds; ++k) {
    std::fprintf(stderr, "  %-8s cpu %6.2f s  wall %6.2f s (summed over threads)\n", kNames[k], s.cpu_s[k],
                 s.wall_s[k]);
  }
  std::fprintf(stderr, "  weight cache: %s (write %.2f s)\n", s.cache.c_str(), s.cache_write_s);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, weight_cache;
  int threads = 1, prefill = 256, decode = 32, context = 256;
  bool quantize = false, timings = false, load_only = false;
  chatradio::model::KvDtype kv = chatradio::model::KvDtype::kF16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--timings") {
      timings = true;
      continue;
    }
    if (a == "--load-only") {
      load_only = true;
      continue;
    }
    if (i + 1 == argc) {
      std::fprintf(stderr, "option %s needs a value\n", a.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (a == "--model") dir = v;
    else if (a == "--threads") threads = std::atoi(v.c_str());
    else if (a == "--prefill") prefill = std::atoi(v.c_str());
    else if (a == "--decode") decode = std::atoi(v.c_str());
    else if (a == "--context") context = std::atoi(v.c_str());
    else if (a == "--quantize" && v == "int4") quantize = true;
    else if (a == "--weight-cache") weight_cache = v;
    else if (a == "--kv-dtype" && chatradio::model::parse_kv_dtype(v)) kv = *chatradio::model::parse_kv_dtype(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_cpu_e2e --model DIR [--threads N] [--prefill N] [--decode N] [--context N] [--quantize int4] [--kv-dtype f16|f32] [--weight-cache DIR] [--timings] [--load-only]\n");
    return 2;
  }
  try {
    chatradio::model::CpuBackendOptions opts;
    opts.n_threads = threads;
    opts.kv_dtype = kv;
    const int positions = std::max(prefill, context) + decode + 1;
    opts.n_kv_blocks = (positions + opts.kv_block_size - 1) / opts.kv_block_size;
    chatradio::model::LoadOptions load;
    if (quantize) load.format = chatradio::model::WeightFormat::kInt4;
    load.weight_cache_dir = weight_cache;
    chatradio::model::LoadStats stats;
    load.stats = &stats;
    const auto t0 = Clock::now();
    auto llama = CpuLlama::load(dir, opts, load);
    const double load_s = seconds_since(t0);
    if (timings) print_load_stats(stats, load_s);
    if (load_only) {
      std::printf("| %s | %d | load only | %.1f | | | | %.2f | %.2f |\n", dir.c_str(), threads,
                  llama->weights().bytes() / 1e9, peak_rss_gib(), load_s);
      return 0;
    }
    Runner r{*llama, std::vector<float>(llama->config().vocab_size), std::vector<int32_t>(opts.n_kv_blocks)};
    std::iota(r.blocks.begin(), r.blocks.end(), 0);

    r.decode(0, 2);  // warm-up: page in weights, grow scratch
    const double decode0 = r.decode(0, decode);

    std::vector<int32_t> prompt(prefill);
    const int vocab = llama->config().vocab_size;
    for (int i = 0; i < prefill; ++i) prompt[i] = 3 + (i * 7919) % (vocab - 3);
    prompt[0] = 1;
    const auto tp = Clock::now();
    r.step(prompt, 0);
    const double prefill_tps = prefill / seconds_since(tp);

    // Fill the cache up to `context` (beyond the prefill, by more prefill).
    for (int pos = prefill; pos < context; pos += 64) {
      const int n = std::min(64, context - pos);
      std::vector<int32_t> fill(n);  // [n] arbitrary in-vocabulary tokens
      for (int i = 0; i < n; ++i) fill[i] = 3 + ((pos + i) * 7919) % (vocab - 3);
      r.step(fill, pos);
    }
    const double decode_ctx = r.decode(context, decode);

    std::printf("| %s | %d | %s | %.1f | %.2f | %.2f (ctx %d) | %.1f (%d tok) | %.2f | %.2f |\n",
                dir.c_str(), threads, chatradio::model::kv_dtype_name(kv), llama->weights().bytes() / 1e9,
                decode0, decode_ctx, context, prefill_tps, prefill, peak_rss_gib(), load_s);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu_e2e: %s\n", e.what());
    return 1;
  }
}
