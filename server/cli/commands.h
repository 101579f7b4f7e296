// Subcommands of the `chatradio` CLI. Each takes the arguments after its name
// (argv[0] is the subcommand), prints its result to stdout, errors to stderr,
// and returns the process exit code: 0 ok, 2 usage error, 1 any other failure.
#pragma once

namespace chatradio::cli {

int cmd_generate(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
int cmd_synth(int argc, char** argv);

}  // namespace chatradio::cli
