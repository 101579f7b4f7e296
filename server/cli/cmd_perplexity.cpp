// chatradio perplexity: how well a model predicts a text, in float and int4
// side by side, so the cost of quantization is a number.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "kernels/cpu/thread_pool.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/quantize_config.h"
#include "model/scoring.h"
#include "model/tokenizer.h"
#include "server/cli/args.h"
#include "server/cli/commands.h"

namespace chatradio::cli {

namespace {

constexpr const char* kHelp =
    "usage: chatradio perplexity --model DIR --text FILE [options]\n"
    "\n"
    "Scores every token of FILE (UTF-8) with the model in DIR, in windows of BOS plus up to\n"
    "(window - 1) tokens, and prints the perplexity. For a float checkpoint it reports the\n"
    "float32 weights and the same weights quantized to int4 at load; for a GPTQ checkpoint,\n"
    "the int4 weights (and, with --reference, a float checkpoint of the same model).\n"
    "\n"
    "  --model DIR        Hugging Face Llama directory (float or GPTQ int4)\n"
    "  --text FILE        text to score\n"
    "  --reference DIR    float checkpoint to compare a GPTQ model with\n"
    "  --window N         positions per window (default: the model's context)\n"
    "  --group-size N     int4 group size when quantizing at load (32, 64, 128; default 128)\n"
    "  --threads N        CPU threads (default: the usable cores, cgroup quota included)\n"
    "  --kv-dtype f16|f32 KV cache element type (default f16, as served)\n";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("cannot read --text file '" + path + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void score(const char* label, const std::string& dir, const model::LoadOptions& load,
           const std::vector<int32_t>& ids, int window, int threads, model::KvDtype kv_dtype) {
  const auto t0 = std::chrono::steady_clock::now();
  model::CpuBackendOptions opts;
  opts.n_threads = threads;
  opts.kv_dtype = kv_dtype;
  opts.n_kv_blocks = (window + opts.kv_block_size - 1) / opts.kv_block_size;
  const auto llama = model::CpuLlama::load(dir, opts, load);
  const model::PerplexityResult r = model::perplexity(*llama, ids, window);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-6s perplexity %.4f  (mean NLL %.5f over %lld tokens, weights %.1f MB, %.1f s)\n", label,
              r.perplexity(), r.nll_sum / r.n_scored, static_cast<long long>(r.n_scored),
              llama->weights().bytes() / 1e6, secs);
}

int run(int argc, char** argv) {
  const Args args(argc, argv, {"model", "text", "reference", "window", "group-size", "threads", "kv-dtype"},
                  {"help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  const std::string dir = args.str("model");
  const std::string text = read_file(args.str("text"));
  const model::LlamaConfig cfg = model::load_llama_config(dir);
  const int window = static_cast<int>(args.integer("window", cfg.max_position_embeddings, 2,
                                                    cfg.max_position_embeddings));
  const int group = static_cast<int>(args.integer("group-size", 128, -1, 1 << 20));
  const int threads = static_cast<int>(args.integer("threads", kernels::cpu::default_thread_count(), 1, 256));
  const model::KvDtype kv = kv_dtype_arg(args);
  const model::Tokenizer tok = model::Tokenizer::load(dir + "/tokenizer.model");
  const std::vector<int32_t> ids = tok.encode(text);
  if (ids.empty()) throw UsageError("the --text file has no tokens");
  std::printf("%zu bytes, %zu tokens, window %d\n", text.size(), ids.size(), window);

  if (model::is_gptq_checkpoint(dir)) {
    if (args.has("reference")) score("float", args.str("reference"), {}, ids, window, threads, kv);
    score("int4", dir, {}, ids, window, threads, kv);
  } else {
    score("float", dir, {}, ids, window, threads, kv);
    score("int4", dir, {model::WeightFormat::kInt4, group}, ids, window, threads, kv);
  }
  return 0;
}

}  // namespace

int cmd_perplexity(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chatradio perplexity: %s\n(see chatradio perplexity --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio perplexity: %s\n", e.what());
    return 1;
  }
}

}  // namespace chatradio::cli
