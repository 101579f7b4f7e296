// End-to-end step times of the CUDA backend (CudaLlama::forward, as the engine
// calls it: host validation and flattening, one upload, all layers, lm_head,
// fp32 logits copied back) on a synthetic Llama-2-7B-shaped int4 model whose
// weights are generated in GPU memory (no checkpoint needed).
//
//   bench_e2e OUT.json [--layers N]     # on a GPU; N < 32: a quicker smoke run
//   bench_e2e --host-only OUT.json      # no GPU: the host side of a step only
//
// On a GPU: decode steps (1 new token per sequence) at batch 1 with 0, 256 and
// 1024 cached tokens and at batch 8, 32 and 64 with 512, each replayed from a
// CUDA graph and run eagerly (two backends on the same random weights), and a
// 512-token prefill. A decode case repeats the same step (same positions, same
// KV slot rewritten), so its cost is that of a real step at that context.
// Figures: median and min wall milliseconds of kIters steps after kWarmup,
// tokens/s = new tokens / median, the bytes a decode step must read (int4
// weights with scales, K/V) over the median, and that as a fraction of the
// device copy rate measured here (the HBM roofline), plus the kernels per
// decode step (the graph's nodes = the eager launches). OUT.json is rewritten
// after every case, so a run cut short keeps what it measured.
//
// --host-only: the CPU time of validate_batch + flatten_batch for those decode
// batches (what a step costs the host besides the driver calls), no GPU used.
// Random weights: only the timing is meaningful, not the tokens.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/int4_layout.h"
#include "model/backend.h"
#include "model/cuda/llama_cuda.h"
#include "model/errors.h"
#include "model/synth.h"

namespace {

using chatradio::model::Batch;
using chatradio::model::CudaLlama;
using chatradio::model::LlamaConfig;
using chatradio::model::SeqSlice;
namespace int4_layout = chatradio::kernels::cuda::int4_layout;

constexpr int kWarmup = 3;
constexpr int kIters = 20;
constexpr int kPrefillIters = 5;
constexpr int kBlockSize = 16;
constexpr int kPrefill = 512;

struct Case {
  int batch, ctx;
};
const std::vector<Case> kCases{{1, 0}, {1, 256}, {1, 1024}, {8, 512}, {32, 512}, {64, 512}};

struct Timing {
  double median_ms = 0.0, min_ms = 0.0;
};

Timing median_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

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
  return median_of(ms);
}

// `batch` sequences decoding one token each after `ctx` cached tokens; sequence
// s owns blocks [s·per_seq, (s+1)·per_seq). Every case starts at block 0: the
// cache contents do not matter for timing.
Batch decode_batch(int batch, int ctx, int vocab) {
  const int per_seq = ctx / kBlockSize + 1;
  Batch b;
  for (int s = 0; s < batch; ++s) {
    std::vector<int32_t> blocks(per_seq);
    std::iota(blocks.begin(), blocks.end(), s * per_seq);
    b.seqs.push_back(SeqSlice{{3 + (s * 7919) % (vocab - 3)}, ctx, blocks, false});
  }
  return b;
}

int blocks_needed(const LlamaConfig&) {
  int blocks = kPrefill / kBlockSize + 1;
  for (const Case& c : kCases) blocks = std::max(blocks, c.batch * (c.ctx / kBlockSize + 1));
  return blocks;
}

// Bytes one decode step of `batch` sequences at `ctx` cached tokens must read:
// every int4 linear (packed weights and scale/zero words, groups of 128, as
// synthetic() builds them) once, and each sequence's K and V.
double decode_bytes(const LlamaConfig& c, int batch, int ctx) {
  auto int4 = [](int n, int k) { return 4.0 * (int4_layout::packed_words(n, k) + int4_layout::sz_words(n, k, 128)); };
  const int d = c.hidden_size, kvd = c.kv_dim(), ff = c.intermediate_size;
  const double layer = int4(d + 2 * kvd, d) + int4(d, d) + int4(2 * ff, d) + int4(d, ff);
  const double kv = 2.0 * batch * (ctx + 1) * c.num_hidden_layers * kvd * sizeof(uint16_t);
  return c.num_hidden_layers * layer + int4((c.vocab_size + 7) / 8 * 8, d) + kv;
}

// Device-to-device copy rate (bytes read + written per second) of 1 GiB.
double copy_bytes_per_s() {
  const size_t bytes = 1ull << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaFree(a);
    cudaGetLastError();
    return 0.0;
  }
  cudaMemset(a, 1, bytes);
  std::vector<double> ms;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 8; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t = 0.0f;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 2) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (median_of(ms).median_ms / 1e3);
}

std::string escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

// The host side of a decode step (validate_batch + flatten_batch), no GPU.
int host_only(const std::string& out_path, const LlamaConfig& cfg) {
  chatradio::model::CudaBackendOptions o;
  o.n_kv_blocks = blocks_needed(cfg);
  o.kv_block_size = kBlockSize;
  o.max_tokens = kPrefill;
  o.max_seqs = 64;
  const auto at = chatradio::model::CudaBatchLayout::make(o.max_tokens, o.max_tokens, o.max_seqs);
  const int table_cap = (cfg.max_position_embeddings + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> meta(at.tables + static_cast<size_t>(o.max_seqs) * table_cap);
  std::ostringstream js;
  js << "{\n \"mode\": \"host-only\",\n \"host_step\": [";
  bool first = true;
  for (const Case& c : kCases) {
    const Batch b = decode_batch(c.batch, c.ctx, cfg.vocab_size);
    std::vector<float> logits(static_cast<size_t>(c.batch) * cfg.vocab_size);
    for (const bool graph : {true, false}) {
      const int pad = graph ? chatradio::model::cuda_graph_batch(c.batch, o.max_seqs) : 0;
      std::vector<double> us;
      for (int i = 0; i < 2000; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        chatradio::model::validate_batch(b, cfg, o.n_kv_blocks, o.kv_block_size, logits.size());
        chatradio::model::flatten_batch(meta.data(), at, b, kBlockSize, table_cap, pad);
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
      const Timing t = median_of(us);
      std::printf("host step (validate + flatten), batch %2d ctx %4d, %s: %7.2f us (min %7.2f)\n", c.batch, c.ctx,
                  graph ? "graph form" : "eager form", t.median_ms, t.min_ms);
      js << (first ? "" : ",") << "\n  {\"batch\": " << c.batch << ", \"ctx\": " << c.ctx << ", \"graphs\": "
         << (graph ? "true" : "false") << ", \"us_median\": " << t.median_ms << ", \"us_min\": " << t.min_ms << "}";
      first = false;
    }
  }
  js << "\n ]\n}\n";
  std::ofstream(out_path) << js.str();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool host = argc >= 2 && std::string(argv[1]) == "--host-only";
  if (argc < 2 || (host && argc < 3)) {
    std::fprintf(stderr, "usage: %s OUT.json [--layers N] | %s --host-only OUT.json\n", argv[0], argv[0]);
    return 2;
  }
  LlamaConfig cfg = *chatradio::model::synth_shape("llama2-7b");
  if (host) return host_only(argv[2], cfg);
  const std::string out_path = argv[1];
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--layers") cfg.num_hidden_layers = std::max(1, std::atoi(argv[i + 1]));
  }

  std::ostringstream head, decode;  // the JSON, rewritten whole after every case
  std::string prefill = "null", error;
  bool finite = true, complete = false;
  auto write_json = [&] {
    std::ofstream(out_path) << "{\n" << head.str() << " \"decode\": [" << decode.str() << "\n ],\n \"prefill\": "
                            << prefill << ",\n \"logits_finite\": " << (finite ? "true" : "false")
                            << ",\n \"complete\": " << (complete ? "true" : "false")
                            << (error.empty() ? "" : ",\n \"error\": \"" + escaped(error) + "\"") << "\n}\n";
  };
  int rc = 0;
  try {
    chatradio::model::CudaBackendOptions opts;
    opts.n_kv_blocks = blocks_needed(cfg);
    opts.kv_block_size = kBlockSize;
    opts.max_tokens = kPrefill;
    opts.max_seqs = 64;
    opts.max_logit_rows = 64;
    const auto t0 = std::chrono::steady_clock::now();
    auto graphs = CudaLlama::synthetic(cfg, opts, 1234);
    opts.cuda_graphs = false;
    auto eager = CudaLlama::synthetic(cfg, opts, 1234);
    const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, opts.device);
    const double copy_bps = copy_bytes_per_s();
    std::printf("%s: llama2-7b shape, %d layers, int4 g128; weights %.2f GB, KV %.2f GB, buffers %.2f GB (x2 "
                "backends), built in %.1f s; copy %.0f GB/s\n",
                prop.name, cfg.num_hidden_layers, graphs->weight_bytes() / 1e9, graphs->kv_bytes() / 1e9,
                graphs->buffer_bytes() / 1e9, build_s, copy_bps / 1e9);
    head << " \"device\": \"" << escaped(prop.name) << "\",\n \"model\": \"synthetic llama2-7b shape, int4 group 128\",\n"
         << " \"layers\": " << cfg.num_hidden_layers << ",\n \"weight_bytes\": " << graphs->weight_bytes()
         << ",\n \"kv_bytes\": " << graphs->kv_bytes() << ",\n \"buffer_bytes\": " << graphs->buffer_bytes()
         << ",\n \"build_s\": " << build_s << ",\n \"copy_GBps\": " << copy_bps / 1e9 << ",\n";
    write_json();
    bool first = true;
    for (const Case& c : kCases) {
      const Batch b = decode_batch(c.batch, c.ctx, cfg.vocab_size);
      const int kernels = graphs->decode_step_kernels(c.batch);
      const double bytes = decode_bytes(cfg, c.batch, c.ctx);
      for (CudaLlama* m : {graphs.get(), eager.get()}) {
        const bool g = m == graphs.get();
        const Timing t = time_steps(*m, b, kWarmup, kIters, &finite);
        const double tok_s = c.batch / (t.median_ms / 1e3);
        const double gbps = bytes / (t.median_ms / 1e3) / 1e9;
        const double roofline = copy_bps > 0 ? (bytes / copy_bps) / (t.median_ms / 1e3) : 0.0;
        std::printf("decode batch %2d ctx %4d %-6s: %7.3f ms/step (min %7.3f), %8.1f tokens/s, %6.0f GB/s read, "
                    "%4.0f%% of the copy-rate roofline, %d kernels/step\n",
                    c.batch, c.ctx, g ? "graph" : "eager", t.median_ms, t.min_ms, tok_s, gbps, 100 * roofline,
                    kernels);
        decode << (first ? "" : ",") << "\n  {\"batch\": " << c.batch << ", \"ctx\": " << c.ctx
               << ", \"graphs\": " << (g ? "true" : "false") << ", \"ms_median\": " << t.median_ms
               << ", \"ms_min\": " << t.min_ms << ", \"tokens_per_s\": " << tok_s << ", \"read_GBps\": " << gbps
               << ", \"roofline_fraction\": " << roofline << ", \"kernels_per_step\": " << kernels << "}";
        first = false;
        write_json();
      }
    }
    std::vector<int32_t> prompt(kPrefill);
    for (int i = 0; i < kPrefill; ++i) prompt[i] = 3 + (i * 104729) % (cfg.vocab_size - 3);
    std::vector<int32_t> pblocks(kPrefill / kBlockSize + 1);
    std::iota(pblocks.begin(), pblocks.end(), 0);
    const Batch pre{{SeqSlice{prompt, 0, pblocks, false}}};
    const Timing t = time_steps(*graphs, pre, 1, kPrefillIters, &finite);
    std::printf("prefill %d tokens: %8.2f ms (min %8.2f), %9.0f tokens/s; logits finite: %s\n", kPrefill, t.median_ms,
                t.min_ms, kPrefill / (t.median_ms / 1e3), finite ? "yes" : "NO");
    std::ostringstream p;
    p << "{\"tokens\": " << kPrefill << ", \"ms_median\": " << t.median_ms << ", \"ms_min\": " << t.min_ms
      << ", \"tokens_per_s\": " << kPrefill / (t.median_ms / 1e3) << "}";
    prefill = p.str();
    complete = true;
    if (!finite) rc = 1;
  } catch (const chatradio::model::ModelError& e) {
    std::fprintf(stderr, "bench_e2e: %s\n", e.what());
    error = e.what();
    rc = 1;
  }
  write_json();
  return rc;
}
