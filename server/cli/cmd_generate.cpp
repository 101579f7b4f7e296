// chatradio generate: one prompt through the CPU backend, streamed to stdout.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <optional>
#include <string>

#include "kernels/cpu/thread_pool.h"
#include "model/config.h"
#include "model/errors.h"
#include "model/generate.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "server/cli/args.h"
#include "server/cli/commands.h"

namespace chatradio::cli {

namespace {

constexpr const char* kHelp =
    "usage: chatradio generate --model DIR --prompt TEXT [options]\n"
    "\n"
    "Encodes BOS + TEXT with DIR/tokenizer.model, runs the model in DIR (config.json +\n"
    "safetensors) on the CPU and prints the continuation as it is generated.\n"
    "\n"
    "  --model DIR               Hugging Face Llama directory\n"
    "  --prompt TEXT             prompt text (may be empty: generation from BOS)\n"
    "  --max-tokens N            tokens to generate (default 200)\n"
    "  --temperature T           0 = greedy (default 0)\n"
    "  --top-k K                 keep the K most likely tokens (0 = off, default)\n"
    "  --top-p P                 nucleus sampling mass in (0, 1] (default 1 = off)\n"
    "  --repetition-penalty R    > 0, 1 = off (default 1)\n"
    "  --seed S                  RNG seed (default 0); same seed, same output\n"
    "  --quantize int4           quantize a float checkpoint to int4 at load (GPTQ ones are int4 already)\n"
    "  --threads N               CPU threads (default: the usable cores, cgroup quota included)\n"
    "  --kv-dtype f16|f32        KV cache element type (default f16)\n"
    "  --weight-cache DIR        map the int4 layout from DIR when it matches the checkpoint, else build\n"
    "                            and write it there (docs/weight-cache.md; default: no cache)\n"
    "  --ids                     print token ids (prompt with BOS, then generated) instead of text\n"
    "  --timings                 print to stderr one line: load time, prompt tokens, time to first\n"
    "                            token, prefill and decode tokens/s (never the text)\n";

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The --timings line. TTFT runs from the start of prefill to the first sampled
// token, so prefill tok/s includes one lm_head and one sampling step; decode
// tok/s counts the tokens after the first over the time after it.
void print_timings(Clock::duration load, size_t prompt_tokens, Clock::time_point start,
                   const std::optional<Clock::time_point>& first, Clock::time_point last, size_t generated) {
  std::fprintf(stderr, "timings: load_s=%.3f prompt_tokens=%zu generated_tokens=%zu", seconds(load), prompt_tokens,
               generated);
  if (!first) {
    std::fprintf(stderr, " ttft_s=n/a prefill_tok_s=n/a decode_tok_s=n/a\n");
    return;
  }
  const double ttft = seconds(*first - start);
  std::fprintf(stderr, " ttft_s=%.4f prefill_tok_s=%.1f", ttft, static_cast<double>(prompt_tokens) / ttft);
  const double decode = seconds(last - *first);
  if (generated < 2 || decode <= 0) {
    std::fprintf(stderr, " decode_tok_s=n/a\n");
  } else {
    std::fprintf(stderr, " decode_tok_s=%.1f\n", static_cast<double>(generated - 1) / decode);
  }
}

int run(int argc, char** argv) {
  const Args args(argc, argv,
                  {"model", "prompt", "max-tokens", "temperature", "top-k", "top-p",
                   "repetition-penalty", "seed", "quantize", "threads", "kv-dtype", "weight-cache"},
                  {"ids", "timings", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  const std::string dir = args.str("model");
  const std::string prompt = args.str("prompt");
  const int max_tokens = static_cast<int>(args.integer("max-tokens", 200, 0, 1 << 20));
  model::SamplingParams sp;
  sp.temperature = static_cast<float>(args.number("temperature", 0.0));
  sp.top_k = static_cast<int>(args.integer("top-k", 0, 0, 1 << 30));
  sp.top_p = static_cast<float>(args.number("top-p", 1.0));
  sp.repetition_penalty = static_cast<float>(args.number("repetition-penalty", 1.0));
  sp.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, INT64_MAX));
  if (const std::string err = model::validate(sp); !err.empty()) throw UsageError(err);
  const bool print_ids = args.has("ids");
  const bool timings = args.has("timings");
  model::LoadOptions load;
  if (args.has("quantize")) {
    if (args.str("quantize") != "int4") throw UsageError("--quantize supports only 'int4'");
    load.format = model::WeightFormat::kInt4;
  }
  if (args.has("weight-cache")) load.weight_cache_dir = args.str("weight-cache");

  const Clock::time_point load_start = Clock::now();
  const model::Tokenizer tok = model::Tokenizer::load(dir + "/tokenizer.model");
  const std::vector<int32_t> ids = tok.encode(prompt, /*add_bos=*/true);
  const model::LlamaConfig cfg = model::load_llama_config(dir);
  // Size the KV pool for exactly this sequence: KV of a 7B model at full
  // context would be gigabytes.
  model::CpuBackendOptions opts;
  opts.n_threads = static_cast<int>(args.integer("threads", kernels::cpu::default_thread_count(), 1, 256));
  opts.kv_dtype = kv_dtype_arg(args);
  const int64_t positions = static_cast<int64_t>(ids.size()) + max_tokens;
  opts.n_kv_blocks = static_cast<int>(std::max<int64_t>(1, (positions + opts.kv_block_size - 1) / opts.kv_block_size));
  load.n_threads = opts.n_threads;  // the load repacks on the same threads as the model runs
  model::CpuLlama llama(cfg, model::load_llama_weights(cfg, dir, load), opts);
  const Clock::duration load_time = Clock::now() - load_start;

  model::StreamDecoder dec(tok);
  std::function<void(int32_t)> emit;
  if (print_ids) {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    emit = [](int32_t t) { std::printf(" %d", t); };
  } else {
    // Seed the stream decoder with the prompt so the continuation's first piece
    // keeps its leading space when it has one.
    for (int32_t id : ids) dec.push(id);
    emit = [&](int32_t t) {
      const std::string delta = dec.push(t);
      std::fwrite(delta.data(), 1, delta.size(), stdout);
      std::fflush(stdout);
    };
  }
  std::optional<Clock::time_point> first;
  Clock::time_point last;
  size_t generated = 0;
  const Clock::time_point start = Clock::now();
  model::generate_one(llama, ids, max_tokens, sp, [&](int32_t t) {
    last = Clock::now();
    if (!first) first = last;
    ++generated;
    emit(t);
  });
  if (!print_ids) {
    const std::string rest = dec.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::printf("\n");
  std::fflush(stdout);
  if (timings) print_timings(load_time, ids.size(), start, first, last, generated);
  return 0;
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chatradio generate: %s\n(see chatradio generate --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio generate: %s\n", e.what());
    return 1;
  }
}

}  // namespace chatradio::cli
