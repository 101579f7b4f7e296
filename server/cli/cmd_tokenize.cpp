// chatradio tokenize: the ids of a text under a tokenizer.model, one line.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "server/cli/args.h"
#include "server/cli/commands.h"

namespace chatradio::cli {

namespace {

constexpr const char* kHelp =
    "usage: chatradio tokenize --tokenizer FILE (--text T | --file F) [--bos]\n"
    "\n"
    "Prints the ids of the text, space-separated on one line, as sentencepiece's\n"
    "EncodeAsIds would give them.\n"
    "\n"
    "  --tokenizer FILE   sentencepiece BPE model (tokenizer.model)\n"
    "  --text T           the text to encode\n"
    "  --file F           encode the bytes of file F instead (all of it, newlines included)\n"
    "  --bos              start with the BOS id\n";

// Failing to read the input is not a usage error, so it leaves as exit code 1.
std::string read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(path + ": read error");
  return text;
}

int run(int argc, char** argv) {
  const Args args(argc, argv, {"tokenizer", "text", "file"}, {"bos", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  const std::string path = args.str("tokenizer");
  if (args.has("text") == args.has("file")) throw UsageError("give exactly one of --text and --file");
  const std::string text = args.has("text") ? args.str("text") : read_input(args.str("file"));

  const model::Tokenizer tok = model::Tokenizer::load(path);
  const std::vector<int32_t> ids = tok.encode(text, args.has("bos"));
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(ids[i]);
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stdout);
  return 0;
}

}  // namespace

int cmd_tokenize(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chatradio tokenize: %s\n(see chatradio tokenize --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio tokenize: %s\n", e.what());
    return 1;
  }
}

}  // namespace chatradio::cli
