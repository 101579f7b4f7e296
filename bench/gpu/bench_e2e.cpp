// End-to-end step times of the CUDA backend (CudaLlama::forward, as the engine
// calls it: host validation and flattening, one upload, all layers, lm_head,
// fp32 logits copied back) on a synthetic Llama-2-7B-shaped int4 model whose
// weights are generated in GPU memory (no checkpoint needed).
//
//   bench_e2e OUT.json [--layers N]     # N < 32: a quicker smoke run
//
// Measures decode steps (1 new token per sequence) at batch 1 with 0, 256 and
// 1024 cached tokens and at batch 16 and 64 with 512, and a 512-token prefill
// of one sequence. A decode case repeats the same step (same positions, same
// KV slot rewritten), so its cost is that of a real step at that context.
// Figures: median and min wall milliseconds of `kIters` steps after `kWarmup`,
// tokens/s = new tokens / median, and the int4 weight stream rate at batch 1
// (weight bytes / median) to compare with the copy bandwidth bench_kernels
// measures. Random weights: only the timing is meaningful, not the tokens.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "model/cuda/llama_cuda.h"
#include "model/errors.h"
#include "model/synth.h"

namespace {

using chatradio::model::Batch;
using chatradio::model::CudaLlama;
using chatradio::model::SeqSlice;

constexpr int kWarmup = 3;
constexpr int kIters = 20;
constexpr int kPrefillIters = 5;
constexpr int kBlockSize = 16;

struct Timing {
  double median_ms = 0.0, min_ms = 0.0;
};

Timing time_steps(CudaLlama& m, const Batch& b, int warmup, int iters, bool* finite) {
  std::vector<float> logits(static_cast<size_t>(b.n_logit_rows()) * m.config().vocab_size);  // [rows, vocab]
  std::vector<double> ms;
  for (int i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    m.forward(logits, b);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  for (float v : logits) *finite = *finite && std::isfinite(v);
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

// `batch` sequences decoding one token each after `ctx` cached tokens; sequence
// s owns blocks [s·per_seq, (s+1)·per_seq) from block `first`.
Batch decode_batch(int batch, int ctx, int first, int vocab) {
  const int per_seq = ctx / kBlockSize + 1;
  Batch b;
  for (int s = 0; s < batch; ++s) {
    std::vector<int32_t> blocks(per_seq);
    std::iota(blocks.begin(), blocks.end(), first + s * per_seq);
    b.seqs.push_back(SeqSlice{{3 + (s * 7919) % (vocab - 3)}, ctx, blocks, false});
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT.json [--layers N]\n", argv[0]);
    return 2;
  }
  const std::string out_path = argv[1];
  chatradio::model::LlamaConfig cfg = *chatradio::model::synth_shape("llama2-7b");
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--layers") cfg.num_hidden_layers = std::max(1, std::atoi(argv[i + 1]));
  }
  struct Case {
    int batch, ctx;
  };
  const std::vector<Case> cases{{1, 0}, {1, 256}, {1, 1024}, {16, 512}, {64, 512}};
  constexpr int kPrefill = 512;
  // Disjoint blocks for every case, so no case reads another's KV writes.
  int blocks = kPrefill / kBlockSize + 1;
  for (const Case& c : cases) blocks += c.batch * (c.ctx / kBlockSize + 1);

  std::ostringstream js;
  int rc = 0;
  try {
    chatradio::model::CudaBackendOptions opts;
    opts.n_kv_blocks = blocks;
    opts.kv_block_size = kBlockSize;
    opts.max_tokens = kPrefill;
    opts.max_seqs = 64;
    opts.max_logit_rows = 64;
    const auto t0 = std::chrono::steady_clock::now();
    auto m = CudaLlama::synthetic(cfg, opts, 1234);
    const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, opts.device);
    std::printf("%s: llama2-7b shape, %d layers, int4 g128; weights %.2f GB, KV %.2f GB, buffers %.2f GB, "
                "built in %.1f s\n",
                prop.name, cfg.num_hidden_layers, m->weight_bytes() / 1e9, m->kv_bytes() / 1e9,
                m->buffer_bytes() / 1e9, build_s);
    js << "{\n \"device\": \"" << prop.name << "\",\n \"model\": \"synthetic llama2-7b shape, int4 group 128\",\n"
       << " \"layers\": " << cfg.num_hidden_layers << ",\n \"weight_bytes\": " << m->weight_bytes()
       << ",\n \"kv_bytes\": " << m->kv_bytes() << ",\n \"buffer_bytes\": " << m->buffer_bytes()
       << ",\n \"build_s\": " << build_s << ",\n \"decode\": [";
    bool finite = true;
    int first = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      const Batch b = decode_batch(c.batch, c.ctx, first, cfg.vocab_size);
      first += c.batch * (c.ctx / kBlockSize + 1);
      const Timing t = time_steps(*m, b, kWarmup, kIters, &finite);
      const double tok_s = c.batch / (t.median_ms / 1e3);
      const double gbps = m->weight_bytes() / (t.median_ms / 1e3) / 1e9;
      std::printf("decode batch %2d ctx %4d: %7.3f ms/step (min %7.3f), %8.1f tokens/s, weights %6.0f GB/s\n",
                  c.batch, c.ctx, t.median_ms, t.min_ms, tok_s, gbps);
      js << (i ? "," : "") << "\n  {\"batch\": " << c.batch << ", \"ctx\": " << c.ctx
         << ", \"ms_median\": " << t.median_ms << ", \"ms_min\": " << t.min_ms << ", \"tokens_per_s\": " << tok_s
         << ", \"weight_GBps\": " << gbps << "}";
    }
    std::vector<int32_t> prompt(kPrefill);
    for (int i = 0; i < kPrefill; ++i) prompt[i] = 3 + (i * 104729) % (cfg.vocab_size - 3);
    std::vector<int32_t> pblocks(kPrefill / kBlockSize + 1);
    std::iota(pblocks.begin(), pblocks.end(), first);
    const Batch pre{{SeqSlice{prompt, 0, pblocks, false}}};
    const Timing t = time_steps(*m, pre, 1, kPrefillIters, &finite);
    std::printf("prefill %d tokens: %8.2f ms (min %8.2f), %9.0f tokens/s; logits finite: %s\n", kPrefill, t.median_ms,
                t.min_ms, kPrefill / (t.median_ms / 1e3), finite ? "yes" : "NO");
    js << "\n ],\n \"prefill\": {\"tokens\": " << kPrefill << ", \"ms_median\": " << t.median_ms
       << ", \"ms_min\": " << t.min_ms << ", \"tokens_per_s\": " << kPrefill / (t.median_ms / 1e3) << "},\n"
       << " \"logits_finite\": " << (finite ? "true" : "false") << "\n}\n";
    if (!finite) rc = 1;
  } catch (const chatradio::model::ModelError& e) {
    std::fprintf(stderr, "bench_e2e: %s\n", e.what());
    std::string msg;
    for (char c : std::string(e.what())) {
      if (c == '"' || c == '\\') msg += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) msg += c;
    }
    js.str("");
    js << "{\"error\": \"" << msg << "\"}\n";
    rc = 1;
  }
  std::ofstream(out_path) << js.str();
  return rc;
}
