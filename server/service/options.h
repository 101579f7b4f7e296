// Everything `chatradio-server` can be told, from its command line or a JSON
// config file (command line wins), with the defaults docs/service.md lists.
// Parsing is table-driven (options.cpp): one entry per option gives its name,
// help line and how to read it, so --help, the config file and the command
// line can never disagree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace chatradio::service {

// Bad usage: an unknown option, a value out of range, an unreadable file named
// by an option. chatradio-server prints the message and exits 2.
class OptionsError : public std::runtime_error {
 public:
  explicit OptionsError(const std::string& what) : std::runtime_error(what) {}
};

enum class Preset : uint8_t { kPaper, kGreedy };

struct ServerOptions {
  // Model and backend.
  std::string model_dir;              // required: Hugging Face Llama directory
  // "auto": CUDA when this build has it and a GPU is present, else CPU.
  std::string backend = "auto";       // auto | cpu | cuda
  int threads = 0;                    // 0 = std::thread::hardware_concurrency()
  int kv_blocks = 256;                // KV pool size in blocks
  int kv_block_size = 16;             // tokens per KV block
  std::string kv_dtype = "f16";       // f16 | f32 (CPU backend; CUDA stores f16)
  std::string quantize;               // "" (as stored) or "int4" (RTN at load)
  int quantize_group_size = 128;
  std::string weight_cache_dir;       // "" = no int4 weight cache (model/weight_cache.h)

  // Engine (server/engine/engine.h EngineOptions).
  int max_waiting = 256;              // queued requests before RESOURCE_EXHAUSTED
  int max_batch_size = 64;
  int token_budget = 512;
  double routine_aging_s = 30.0;

  // Network.
  std::string host = "0.0.0.0";
  int port = 50051;                   // 0 = any free port (logged as "listening")
  // Loopback by default: the exposer is plain HTTP without auth even when gRPC
  // uses TLS; expose it wider deliberately (--metrics-host 0.0.0.0).
  std::string metrics_host = "127.0.0.1";
  int metrics_port = 9464;            // 0 = no metrics exposer
  // Tests only (never from the command line): bind the exposer to any free
  // port although metrics_port is 0; ChatradioServer::metrics_port() tells it.
  bool metrics_any_port = false;
  int max_receive_message_bytes = 1 << 20;
  int max_send_message_bytes = 4 << 20;
  // Headers of one call (gRPC's GRPC_ARG_MAX_METADATA_SIZE; its default is
  // 8 KiB). gRPC 1.51 fails every call of the connection when one call's
  // headers exceed it, so it is set well above what real clients send.
  int max_metadata_bytes = 64 << 10;
  int keepalive_time_s = 60;          // server pings idle connections this often
  int keepalive_timeout_s = 20;       // and closes them when a ping goes unanswered
  bool reflection = true;             // grpc.reflection.v1alpha (schema only, no data)

  // Security.
  std::string tls_cert;               // PEM; with tls_key enables TLS
  std::string tls_key;
  std::string tls_client_ca;          // PEM CA bundle: clients must present a cert it signed (mTLS)
  std::string auth_token_file;        // one accepted bearer token per line

  // Requests.
  std::string templates_path;         // default: <source tree>/deploy/templates.json
  Preset default_preset = Preset::kPaper;
  size_t max_input_bytes = 32 * 1024; // findings, candidate and reference, each
  bool retry_empty = true;            // retry an empty sampled output with a new seed
  int empty_retries = 1;
  bool repetition_guard = true;
  int repetition_max_period = 32;
  int repetition_min_repeats = 3;
  int repetition_min_span = 12;
  std::string jieba_dict;             // default: Debian's python3-jieba dict.txt
  int warmup_tokens = 4;              // tokens the warm-up generation must produce

  // Lifecycle.
  double drain_grace_s = 0.0;         // NOT_SERVING, still answering, before Shutdown
  double drain_timeout_s = 30.0;      // in-flight requests get this long, then are cancelled
};

// The default templates file: deploy/templates.json of the source tree this
// binary was built from.
std::string default_templates_path();

// Parses argv (argv[0] skipped). `--config FILE` is read first and the rest of
// the command line overrides it; relative paths in a config file resolve
// against the file's folder. Returns false when --help was asked (nothing else
// is checked then). Throws OptionsError with a message naming the option.
bool parse_options(ServerOptions& dst, int argc, const char* const* argv);

// Applies a JSON config object (keys are the long option names without "--";
// keys starting with "_" are comments). `origin` names the file in messages
// and anchors relative paths.
void apply_config_json(ServerOptions& dst, const std::string& json_text, const std::string& origin);

// Cross-field checks and file readability (TLS files, token file, model dir);
// throws OptionsError. parse_options() calls it.
void validate_options(const ServerOptions& opts);

// The --help text, generated from the option table.
std::string help_text();

}  // namespace chatradio::service
