// `chatradio`: the command-line front end (generate, tokenize, ...).
#include <cstdio>
#include <cstring>
#include <string>

#include "server/cli/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: chatradio <command> [options]\n"
    "\n"
    "commands:\n"
    "  generate   continue a prompt with a model (CPU backend)\n"
    "             --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]\n"
    "             [--top-p P] [--repetition-penalty R] [--seed S] [--ids]\n"
    "  tokenize   print the token ids of a text\n"
    "             --tokenizer FILE (--text T | --file F) [--bos]\n"
    "  perplexity perplexity of a text, float and int4 side by side\n"
    "             --model DIR --text FILE [--reference DIR] [--window N] [--threads N]\n"
    "  quantize   write a GPTQ int4 checkpoint from a float one (optionally merging LoRAs)\n"
    "             --model DIR --out DIR [--lora DIR[,DIR...]] [--group-size N] [--sym]\n"
    "  synth      write a random-weight checkpoint of a real model's shape\n"
    "             --shape llama2-7b|tinyllama-1.1b|... --out DIR [--format int4|f16] [--seed S]\n"
    "\n"
    "Run 'chatradio <command> --help' for details.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "generate") return chatradio::cli::cmd_generate(argc - 1, argv + 1);
  if (cmd == "tokenize") return chatradio::cli::cmd_tokenize(argc - 1, argv + 1);
  if (cmd == "perplexity") return chatradio::cli::cmd_perplexity(argc - 1, argv + 1);
  if (cmd == "quantize") return chatradio::cli::cmd_quantize(argc - 1, argv + 1);
  if (cmd == "synth") return chatradio::cli::cmd_synth(argc - 1, argv + 1);
  std::fprintf(stderr, "chatradio: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
