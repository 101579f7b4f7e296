// chatradio-server's options: parse_options on `--config FILE` plus command-line
// arguments, as server_main calls it. Input: the config file's bytes, then
// optionally a NUL byte and NUL-separated extra arguments ("--port\0" "7").
// parse_options must throw nothing but OptionsError (server_main catches
// only that one: anything else terminates the server with no usable
// message), return false only for --help, and what it accepts must hold the
// documented ranges and cross-field rules (a violation traps). The config
// lives in the scratch folder, so "model": "." names an existing folder.
// Extra arguments naming --config are skipped: reading a file the operator
// names (/dev/zero) is not a parser bug.
//
// fuzz-seeds: deploy/server.example.json docker/server.json
// fuzz-seed-text: {"model":".","port":0,"metrics-port":0,"threads":2,"kv-blocks":64,"backend":"cpu","kv-dtype":"f32","quantize":"int4","default-preset":"greedy","retry-empty":false,"drain-grace":0.5,"_c":[1]}
// fuzz-seed-text: {"model":".","port":50051,"metrics-port":50051}
// fuzz-seed-text: {"model":".","max-input-bytes":400000,"max-receive-message-bytes":1048576,"routine-aging":1e300}
// fuzz-seed-text: {"model":".","tls-cert":"c.pem","templates":"t.json","jieba-dict":"d.txt","metrics-host":"::1"}
// fuzz-link: chatradio_service
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "server/service/options.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string path = chatradio::fuzz::write_scratch("server.json", data, nul == std::string_view::npos ? size : nul);
  std::vector<std::string> args = {"chatradio-server", "--config", path};
  bool help = false;
  for (size_t pos = nul; pos != std::string_view::npos && pos < in.size();) {
    const size_t end = std::min(in.find('\0', pos + 1), in.size());
    std::string a(in.substr(pos + 1, end - pos - 1));
    if (a.starts_with("--config")) return 0;
    if (a == "--help" || a.starts_with("--help=")) help = true;
    args.push_back(std::move(a));
    pos = end;
  }
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());

  chatradio::service::ServerOptions o;
  bool ok = false;
  try {
    ok = chatradio::service::parse_options(o, static_cast<int>(argv.size()), argv.data());
  } catch (const chatradio::service::OptionsError&) {
    return 0;
  }
  if (!ok) {
    if (!help) __builtin_trap();  // only --help returns false
    return 0;
  }
  std::error_code ec;
  const bool valid =
      std::filesystem::is_directory(o.model_dir, ec) && (o.backend == "auto" || o.backend == "cpu" || o.backend == "cuda") &&
      (o.kv_dtype == "f16" || o.kv_dtype == "f32") && (o.quantize.empty() || o.quantize == "int4") &&
      o.threads >= 1 && o.kv_blocks >= 1 && o.kv_block_size >= 1 && o.quantize_group_size >= 1 && o.max_waiting >= 1 &&
      o.max_batch_size >= 1 && o.token_budget >= 1 && std::isfinite(o.routine_aging_s) && o.routine_aging_s >= 0 &&
      o.port >= 0 && o.port <= 65535 && o.metrics_port >= 0 && o.metrics_port <= 65535 &&
      (o.port == 0 || o.port != o.metrics_port) && o.max_input_bytes >= 1 &&
      static_cast<int64_t>(o.max_receive_message_bytes) >= 3 * static_cast<int64_t>(o.max_input_bytes) + 4096 &&
      o.max_send_message_bytes >= 1024 && o.max_metadata_bytes >= 1024 && o.keepalive_time_s >= 1 &&
      o.keepalive_timeout_s >= 1 && o.tls_cert.empty() == o.tls_key.empty() &&
      (o.tls_client_ca.empty() || !o.tls_cert.empty()) && !o.templates_path.empty() && o.empty_retries >= 0 &&
      o.repetition_max_period >= 1 && o.repetition_min_repeats >= 2 && o.repetition_min_span >= 1 &&
      o.warmup_tokens >= 1 && std::isfinite(o.drain_grace_s) && o.drain_grace_s >= 0 &&
      std::isfinite(o.drain_timeout_s) && o.drain_timeout_s >= 0;
  if (!valid) __builtin_trap();
  return 0;
}
