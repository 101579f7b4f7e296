// chatradio quantize: float Llama checkpoint (+ optional LoRA) -> GPTQ int4.
#include <cstdio>
#include <exception>
#include <string>

#include "model/quantizer.h"
#include "server/cli/args.h"
#include "server/cli/commands.h"
#include "server/cli/progress.h"

namespace chatradio::cli {

namespace {

constexpr const char* kHelp =
    "usage: chatradio quantize --model DIR --out DIR [options]\n"
    "\n"
    "Writes a GPTQ v1 int4 checkpoint (AutoGPTQ layout, loadable by chatradio, vLLM, TGI)\n"
    "from a Hugging Face Llama checkpoint in F32, F16 or BF16 (one file or shards). Every\n"
    "linear of the decoder layers is quantized with round-to-nearest (desc_act false);\n"
    "embedding, norms and lm_head are stored F16. Tensors are processed one at a time,\n"
    "so memory stays far below the model size. Output larger than 2 GB is sharded.\n"
    "\n"
    "  --model DIR        float checkpoint (config.json + safetensors)\n"
    "  --out DIR          output directory; must not exist or be empty\n"
    "  --lora DIR[,DIR..] PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n"
    "                     applied in float32 before quantizing; repeat the option or give a\n"
    "                     comma-separated list to apply several in order (each sees the result\n"
    "                     of the ones before it: a domain adapter, then a task adapter).\n"
    "                     Applied, with s = lora_alpha/r:\n"
    "                       lora_A/lora_B of a linear (q/k/v/o/gate/up/down, untied lm_head):\n"
    "                         W' = W + s * B*A\n"
    "                       lora_embedding_A/B of embed_tokens: E' = E + s * (B*A)^T\n"
    "                       modules_to_save tensors (embed_tokens, lm_head, norms, linears) and a\n"
    "                       resized or base_layer embedding: replace the base tensor (same shape)\n"
    "                     With tied embeddings lm_head follows embed_tokens. Refused with a\n"
    "                     message: any tensor not listed above, modules the model lacks, DoRA,\n"
    "                     rsLoRA, biases, rank/alpha patterns, PiSSA/OLoRA/CorDA/LoftQ, trainable\n"
    "                     tokens, a LoRA of a tied lm_head, and an adapter that changes nothing\n"
    "                     (docs/lora.md)\n"
    "  --group-size N     inputs per scale group: 32, 64, 128 (default) or -1 (one group)\n"
    "  --sym              symmetric quantization (zero point 8)\n";

int run(int argc, char** argv) {
  const Args args(argc, argv, {"model", "out", "lora", "group-size"}, {"sym", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  model::QuantizeOptions opts;
  const std::string model_dir = args.str("model");
  const std::string out_dir = args.str("out");
  for (const std::string& list : args.all("lora")) {
    for (size_t at = 0;;) {  // "A,B" is two adapters, applied in that order
      const size_t comma = list.find(',', at);
      const std::string dir = list.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
      if (dir.empty()) throw UsageError("--lora '" + list + "' has an empty adapter directory");
      opts.lora_dirs.push_back(dir);
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
  }
  opts.group_size = static_cast<int>(args.integer("group-size", 128, -1, 128));
  if (opts.group_size != -1 && opts.group_size != 32 && opts.group_size != 64 && opts.group_size != 128)
    throw UsageError("--group-size must be 32, 64, 128 or -1, got " + std::to_string(opts.group_size));
  opts.sym = args.has("sym");

  Progress progress(stderr);
  try {
    const model::QuantizeResult r = model::quantize_checkpoint(
        out_dir, model_dir, opts,
        [&](const std::string& tensor, uint64_t done, uint64_t total) { progress.update(short_tensor_name(tensor), done, total); });
    const double secs = progress.elapsed_s();
    std::string summary = "chatradio quantize: " + out_dir + ": " + std::to_string(r.n_quantized) +
                          " linears int4 (group " + std::to_string(opts.group_size) +
                          (opts.sym ? ", sym" : ", asym") + "), " + std::to_string(r.n_f16) + " tensors f16";
    if (!opts.lora_dirs.empty())
      summary += ", " + std::to_string(r.n_lora_merged) + " weights changed by " + std::to_string(opts.lora_dirs.size()) +
                 (opts.lora_dirs.size() == 1 ? " LoRA adapter" : " LoRA adapters");
    char tail[128];
    std::snprintf(tail, sizeof(tail), "; %s in, %s out, %zu files, %s (%.0f MB/s)", format_mb(r.in_bytes).c_str(),
                  format_mb(r.out_bytes).c_str(), r.files.size(), format_duration(secs).c_str(),
                  secs > 0 ? static_cast<double>(r.in_bytes) / 1e6 / secs : 0.0);
    progress.finish(summary + tail);
    if (!r.ignored.empty()) {
      std::string names;
      for (size_t i = 0; i < r.ignored.size() && i < 3; ++i) names += (i ? ", " : "") + r.ignored[i];
      if (r.ignored.size() > 3) names += ", ...";
      std::fprintf(stderr, "chatradio quantize: note: %zu source tensors are not Llama weights and were not copied (%s)\n",
                   r.ignored.size(), names.c_str());
    }
  } catch (...) {
    progress.clear();
    throw;
  }
  return 0;
}

}  // namespace

int cmd_quantize(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chatradio quantize: %s\n(see chatradio quantize --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio quantize: %s\n", e.what());
    return 1;
  }
}

}  // namespace chatradio::cli
