// chatradio synth: a random-weight checkpoint of a real model's shape.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "model/synth.h"
#include "server/cli/args.h"
#include "server/cli/commands.h"
#include "server/cli/progress.h"

namespace chatradio::cli {

namespace {

constexpr const char* kHelp =
    "usage: chatradio synth --shape NAME --out DIR [options]\n"
    "\n"
    "Writes a checkpoint with the exact tensor shapes of a real Llama model and random\n"
    "weights (std ~0.02 like trained ones, norms ~1), for benchmarks and load tests. The\n"
    "same seed gives the same bytes. int4 writes GPTQ tensors directly (no float stage).\n"
    "\n"
    "  --shape NAME       llama2-7b, llama2-13b, tinyllama-1.1b or stories260k\n"
    "  --out DIR          output directory; must not exist or be empty\n"
    "  --format F         int4 (GPTQ, default) or f16\n"
    "  --seed S           random seed (default 0)\n"
    "  --group-size N     int4 scale group: 32, 64, 128 (default) or -1\n"
    "  --tokenizer FILE   copied as DIR/tokenizer.model (default: no tokenizer)\n";

int run(int argc, char** argv) {
  const Args args(argc, argv, {"shape", "out", "format", "seed", "group-size", "tokenizer"}, {"help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  model::SynthOptions opts;
  opts.shape = args.str("shape");
  const std::string out_dir = args.str("out");
  if (!model::synth_shape(opts.shape)) {
    std::string known;
    for (const std::string& n : model::synth_shape_names()) known += (known.empty() ? "" : ", ") + n;
    throw UsageError("unknown --shape '" + opts.shape + "' (known: " + known + ")");
  }
  const std::string format = args.str("format", "int4");
  if (format != "int4" && format != "f16") throw UsageError("--format must be int4 or f16, got '" + format + "'");
  opts.format = format == "int4" ? model::SynthFormat::kInt4 : model::SynthFormat::kF16;
  opts.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, INT64_MAX));
  opts.group_size = static_cast<int>(args.integer("group-size", 128, -1, 128));
  if (opts.group_size != -1 && opts.group_size != 32 && opts.group_size != 64 && opts.group_size != 128)
    throw UsageError("--group-size must be 32, 64, 128 or -1, got " + std::to_string(opts.group_size));
  opts.tokenizer = args.str("tokenizer", "");

  Progress progress(stderr);
  try {
    const model::SynthResult r = model::synth_checkpoint(
        out_dir, opts,
        [&](const std::string& tensor, uint64_t done, uint64_t total) { progress.update(short_tensor_name(tensor), done, total); });
    const double secs = progress.elapsed_s();
    char summary[512];
    std::snprintf(summary, sizeof(summary), "chatradio synth: %s: %s %s seed %llu, %s in %zu files, %s (%.0f MB/s)",
                  out_dir.c_str(), opts.shape.c_str(), format.c_str(), static_cast<unsigned long long>(opts.seed),
                  format_mb(r.out_bytes).c_str(), r.files.size(), format_duration(secs).c_str(),
                  secs > 0 ? static_cast<double>(r.out_bytes) / 1e6 / secs : 0.0);
    progress.finish(summary);
  } catch (...) {
    progress.clear();
    throw;
  }
  return 0;
}

}  // namespace

int cmd_synth(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chatradio synth: %s\n(see chatradio synth --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio synth: %s\n", e.what());
    return 1;
  }
}

}  // namespace chatradio::cli
