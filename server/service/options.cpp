#include "server/service/options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "kernels/cpu/thread_pool.h"

namespace chatradio::service {

namespace {

namespace fs = std::filesystem;

enum class Kind : uint8_t { kString, kPath, kInt, kNumber, kBool, kChoice };

// One option: its name, how --help shows it, and how to store a value that
// already passed the kind's checks.
struct Spec {
  std::string name;
  std::string arg;  // placeholder in --help ("N", "FILE")
  std::string help;
  Kind kind = Kind::kString;
  double lo = 0, hi = 0;               // kInt, kNumber
  std::vector<std::string> choices;    // kChoice
  std::function<void(ServerOptions&, const std::string&)> set;
};

template <typename T>
Spec int_opt(std::string name, std::string help, double lo, double hi, T ServerOptions::*member) {
  Spec s{std::move(name), "N", std::move(help), Kind::kInt, lo, hi, {}, nullptr};
  s.set = [member](ServerOptions& o, const std::string& v) { o.*member = static_cast<T>(std::stoll(v)); };
  return s;
}

Spec num_opt(std::string name, std::string arg, std::string help, double lo, double hi,
             double ServerOptions::*member) {
  Spec s{std::move(name), std::move(arg), std::move(help), Kind::kNumber, lo, hi, {}, nullptr};
  s.set = [member](ServerOptions& o, const std::string& v) { o.*member = std::stod(v); };
  return s;
}

Spec str_opt(std::string name, std::string arg, std::string help, std::string ServerOptions::*member,
             Kind kind = Kind::kString) {
  Spec s{std::move(name), std::move(arg), std::move(help), kind, 0, 0, {}, nullptr};
  s.set = [member](ServerOptions& o, const std::string& v) { o.*member = v; };
  return s;
}

Spec path_opt(std::string name, std::string arg, std::string help, std::string ServerOptions::*member) {
  return str_opt(std::move(name), std::move(arg), std::move(help), member, Kind::kPath);
}

Spec bool_opt(std::string name, std::string help, bool ServerOptions::*member) {
  Spec s{std::move(name), "BOOL", std::move(help), Kind::kBool, 0, 0, {}, nullptr};
  s.set = [member](ServerOptions& o, const std::string& v) { o.*member = v == "true"; };
  return s;
}

constexpr double kMaxInt = 2147483647.0;

const std::vector<Spec>& specs() {
  static const std::vector<Spec> table = [] {
    std::vector<Spec> t;
    t.push_back(path_opt("model", "DIR", "Hugging Face Llama directory (config.json, safetensors, tokenizer.model); required",
                         &ServerOptions::model_dir));
    {
      Spec s{"backend", "auto|cpu|cuda",
             "where the model runs: auto = CUDA when built with it and a GPU is present, else CPU (default auto)",
             Kind::kChoice, 0, 0, {"auto", "cpu", "cuda"}, nullptr};
      s.set = [](ServerOptions& o, const std::string& v) { o.backend = v; };
      t.push_back(std::move(s));
    }
    t.push_back(int_opt("threads",
                        "CPU threads for the forward pass (default: the usable cores, cgroup CPU quota included)",
                        1, 4096, &ServerOptions::threads));
    t.push_back(int_opt("kv-blocks", "KV cache pool size in blocks (default 256)", 1, 1 << 24,
                        &ServerOptions::kv_blocks));
    t.push_back(int_opt("kv-block-size", "tokens per KV block (default 16)", 1, 1024,
                        &ServerOptions::kv_block_size));
    {
      Spec s{"kv-dtype", "f16|f32",
             "KV cache element type on the CPU backend (default f16: half the memory per token; the CUDA "
             "backend always stores f16)",
             Kind::kChoice, 0, 0, {"f16", "f32"}, nullptr};
      s.set = [](ServerOptions& o, const std::string& v) { o.kv_dtype = v; };
      t.push_back(std::move(s));
    }
    {
      Spec s{"quantize", "int4", "quantize float weights to int4 at load (default: as stored)", Kind::kChoice, 0, 0,
             {"int4", "none"}, nullptr};
      s.set = [](ServerOptions& o, const std::string& v) { o.quantize = v == "none" ? "" : v; };
      t.push_back(std::move(s));
    }
    t.push_back(int_opt("quantize-group-size", "int4 group size for --quantize (default 128)", 1, 1 << 20,
                        &ServerOptions::quantize_group_size));
    t.push_back(path_opt("weight-cache", "DIR",
                         "directory of the int4 weight cache: a restart maps the kernel layout from it instead "
                         "of rebuilding it, written there after a load that found none (default: no cache)",
                         &ServerOptions::weight_cache_dir));
    t.push_back(int_opt("max-waiting", "requests queued before new ones fail with RESOURCE_EXHAUSTED (default 256)",
                        1, kMaxInt, &ServerOptions::max_waiting));
    t.push_back(int_opt("max-batch-size", "sequences per engine step (default 64)", 1, 1 << 16,
                        &ServerOptions::max_batch_size));
    t.push_back(int_opt("token-budget", "tokens per engine step, decodes plus prefill chunks (default 512)", 1,
                        1 << 20, &ServerOptions::token_budget));
    t.push_back(num_opt("routine-aging", "S", "seconds after which routine work ranks like STAT (default 30)", 0,
                        1e9, &ServerOptions::routine_aging_s));
    t.push_back(str_opt("host", "ADDR", "address the gRPC server binds (default 0.0.0.0)", &ServerOptions::host));
    t.push_back(int_opt("port", "gRPC port (default 50051; 0 = any free port, logged)", 0, 65535,
                        &ServerOptions::port));
    t.push_back(str_opt("metrics-host", "ADDR",
                        "address the metrics exposer binds (default 127.0.0.1: plain HTTP, no auth)",
                        &ServerOptions::metrics_host));
    t.push_back(int_opt("metrics-port", "Prometheus /metrics port (default 9464; 0 = off)", 0, 65535,
                        &ServerOptions::metrics_port));
    t.push_back(int_opt("max-receive-message-bytes", "largest request message accepted (default 1048576)", 1024,
                        kMaxInt, &ServerOptions::max_receive_message_bytes));
    t.push_back(int_opt("max-metadata-bytes", "largest request headers (metadata) of one call (default 65536)",
                        1024, 1 << 20, &ServerOptions::max_metadata_bytes));
    t.push_back(int_opt("max-send-message-bytes", "largest response message sent (default 4194304)", 1024, kMaxInt,
                        &ServerOptions::max_send_message_bytes));
    t.push_back(int_opt("keepalive-time", "seconds between keepalive pings on idle connections (default 60)", 1,
                        86400, &ServerOptions::keepalive_time_s));
    t.push_back(int_opt("keepalive-timeout", "seconds to wait for a ping ack before closing (default 20)", 1, 86400,
                        &ServerOptions::keepalive_timeout_s));
    t.push_back(bool_opt("reflection", "serve grpc.reflection.v1alpha (default true)", &ServerOptions::reflection));
    t.push_back(path_opt("tls-cert", "FILE", "PEM server certificate chain; with --tls-key enables TLS",
                         &ServerOptions::tls_cert));
    t.push_back(path_opt("tls-key", "FILE", "PEM private key of --tls-cert", &ServerOptions::tls_key));
    t.push_back(path_opt("tls-client-ca", "FILE",
                         "PEM CA bundle; clients must present a certificate it signed (mutual TLS)",
                         &ServerOptions::tls_client_ca));
    t.push_back(path_opt("auth-token-file", "FILE",
                         "accepted bearer tokens, one per line; requests need 'authorization: Bearer <token>'",
                         &ServerOptions::auth_token_file));
    t.push_back(path_opt("templates", "FILE", "prompt templates (default: deploy/templates.json of the source tree)",
                         &ServerOptions::templates_path));
    {
      Spec s{"default-preset", "paper|greedy", "sampling preset for requests that name none (default paper)",
             Kind::kChoice, 0, 0, {"paper", "greedy"}, nullptr};
      s.set = [](ServerOptions& o, const std::string& v) {
        o.default_preset = v == "greedy" ? Preset::kGreedy : Preset::kPaper;
      };
      t.push_back(std::move(s));
    }
    t.push_back(int_opt("max-input-bytes", "largest findings/candidate/reference in UTF-8 bytes (default 32768)", 1,
                        1 << 24, &ServerOptions::max_input_bytes));
    t.push_back(bool_opt("retry-empty", "retry a sampled output that came back empty with a new seed (default true)",
                         &ServerOptions::retry_empty));
    t.push_back(int_opt("empty-retries", "retries of an empty output (default 1)", 0, 10,
                        &ServerOptions::empty_retries));
    t.push_back(bool_opt("repetition-guard", "stop outputs that loop (default true)",
                         &ServerOptions::repetition_guard));
    t.push_back(int_opt("repetition-max-period", "longest repeated unit the guard looks for, in tokens (default 32)",
                        1, 1024, &ServerOptions::repetition_max_period));
    t.push_back(int_opt("repetition-min-repeats", "back-to-back copies that make a loop (default 3)", 2, 1000,
                        &ServerOptions::repetition_min_repeats));
    t.push_back(int_opt("repetition-min-span", "tokens a loop must cover at least (default 12)", 1, 1 << 20,
                        &ServerOptions::repetition_min_span));
    t.push_back(path_opt("jieba-dict", "FILE",
                         "jieba dict.txt for ROUGE with jieba, the default mode's segmenter (default: Debian "
                         "python3-jieba's, when present; HMM tables from its finalseg/)",
                         &ServerOptions::jieba_dict));
    t.push_back(int_opt("warmup-tokens", "tokens the start-up warm-up generation produces (default 4)", 1, 1024,
                        &ServerOptions::warmup_tokens));
    t.push_back(num_opt("drain-grace", "S",
                        "on SIGTERM: seconds of NOT_SERVING (new requests UNAVAILABLE) before closing (default 0)", 0,
                        3600, &ServerOptions::drain_grace_s));
    t.push_back(num_opt("drain-timeout", "S",
                        "on SIGTERM: seconds in-flight requests get to finish before they are cancelled (default 30)",
                        0, 86400, &ServerOptions::drain_timeout_s));
    return t;
  }();
  return table;
}

const Spec* find_spec(const std::string& name) {
  for (const Spec& s : specs()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// Checks `value` against the spec's kind and stores it; `where` prefixes messages
// ("--port", "config.json: \"port\"").
void apply(ServerOptions& dst, const Spec& s, const std::string& value, const std::string& where,
           const fs::path& base) {
  switch (s.kind) {
    case Kind::kString:
      s.set(dst, value);
      return;
    case Kind::kPath: {
      if (value.empty()) throw OptionsError(where + " must not be empty");
      const fs::path p(value);
      s.set(dst, p.is_relative() && !base.empty() ? (base / p).lexically_normal().string() : value);
      return;
    }
    case Kind::kInt: {
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || errno == ERANGE || v < s.lo || v > s.hi) {
        std::ostringstream m;
        m << where << " must be an integer in [" << static_cast<long long>(s.lo) << ", "
          << static_cast<long long>(s.hi) << "], got '" << value << "'";
        throw OptionsError(m.str());
      }
      s.set(dst, std::to_string(v));
      return;
    }
    case Kind::kNumber: {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !std::isfinite(v) || v < s.lo || v > s.hi) {
        std::ostringstream m;
        m << where << " must be a number in [" << s.lo << ", " << s.hi << "], got '" << value << "'";
        throw OptionsError(m.str());
      }
      s.set(dst, value);
      return;
    }
    case Kind::kBool:
      if (value == "true" || value == "1" || value == "yes") {
        s.set(dst, "true");
      } else if (value == "false" || value == "0" || value == "no") {
        s.set(dst, "false");
      } else {
        throw OptionsError(where + " must be true or false, got '" + value + "'");
      }
      return;
    case Kind::kChoice:
      for (const std::string& c : s.choices) {
        if (c == value) {
          s.set(dst, value);
          return;
        }
      }
      {
        std::string known;
        for (const std::string& c : s.choices) known += (known.empty() ? "" : ", ") + c;
        throw OptionsError(where + " must be one of " + known + ", got '" + value + "'");
      }
  }
}

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OptionsError(what + " '" + path + "' cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void require_readable(const std::string& path, const std::string& option) {
  if (path.empty()) return;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OptionsError("--" + option + " '" + path + "' cannot be read");
}

}  // namespace

std::string default_templates_path() {
#ifdef CHATRADIO_SOURCE_DIR
  return std::string(CHATRADIO_SOURCE_DIR) + "/deploy/templates.json";
#else
  return "deploy/templates.json";
#endif
}

void apply_config_json(ServerOptions& dst, const std::string& json_text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number too large for a double ("1e400") is out_of_range.
    throw OptionsError(origin + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw OptionsError(origin + ": the config must be a JSON object of option names");
  const fs::path base = fs::path(origin).parent_path();
  for (const auto& [key, value] : j.items()) {
    if (!key.empty() && key[0] == '_') continue;  // "_comment" and friends: notes for people
    const std::string where = origin + ": \"" + key + "\"";
    if (key == "config" || key == "help") throw OptionsError(where + " is a command-line option only");
    const Spec* s = find_spec(key);
    if (s == nullptr) throw OptionsError(where + " is not an option (see --help)");
    std::string text;
    switch (s->kind) {
      case Kind::kString:
      case Kind::kPath:
      case Kind::kChoice:
        if (!value.is_string()) throw OptionsError(where + " must be a string");
        text = value.get<std::string>();
        break;
      case Kind::kInt:
        if (!value.is_number_integer()) throw OptionsError(where + " must be an integer");
        text = value.dump();
        break;
      case Kind::kNumber:
        if (!value.is_number()) throw OptionsError(where + " must be a number");
        text = value.dump();
        break;
      case Kind::kBool:
        if (!value.is_boolean()) throw OptionsError(where + " must be true or false");
        text = value.get<bool>() ? "true" : "false";
        break;
    }
    apply(dst, *s, text, where, base.empty() ? fs::path(".") : base);
  }
}

bool parse_options(ServerOptions& dst, int argc, const char* const* argv) {
  // First pass: split into (name, value) pairs and find --config / --help.
  std::vector<std::pair<std::string, std::string>> given;
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a.size() == 2) throw OptionsError("unexpected argument '" + a + "'");
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "help") return false;
    if (name != "config" && find_spec(name) == nullptr) throw OptionsError("unknown option --" + name + " (see --help)");
    if (!has_value) {
      if (i + 1 >= argc) throw OptionsError("option --" + name + " needs a value");
      value = argv[++i];
    }
    if (name == "config") {
      config_path = value;
    } else {
      given.emplace_back(name, value);
    }
  }
  if (!config_path.empty()) apply_config_json(dst, read_file(config_path, "--config"), config_path);
  for (const auto& [name, value] : given) apply(dst, *find_spec(name), value, "--" + name, fs::path());
  if (dst.threads <= 0) dst.threads = kernels::cpu::default_thread_count();
  if (dst.templates_path.empty()) dst.templates_path = default_templates_path();
  if (dst.jieba_dict.empty() && fs::exists("/usr/lib/python3/dist-packages/jieba/dict.txt")) {
    dst.jieba_dict = "/usr/lib/python3/dist-packages/jieba/dict.txt";
  }
  validate_options(dst);
  return true;
}

void validate_options(const ServerOptions& o) {
  if (o.model_dir.empty()) throw OptionsError("missing required option --model DIR");
  // The error_code overload: the throwing one raises filesystem_error for a
  // name the OS refuses (too long), which is bad usage like any other.
  std::error_code ec;
  if (!fs::is_directory(o.model_dir, ec)) throw OptionsError("--model '" + o.model_dir + "' is not a directory");
  if (!o.weight_cache_dir.empty() && !fs::is_directory(o.weight_cache_dir, ec)) {
    throw OptionsError("--weight-cache '" + o.weight_cache_dir + "' is not a directory");
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    throw OptionsError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (!o.tls_client_ca.empty() && o.tls_cert.empty()) {
    throw OptionsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  require_readable(o.tls_cert, "tls-cert");
  require_readable(o.tls_key, "tls-key");
  require_readable(o.tls_client_ca, "tls-client-ca");
  require_readable(o.auth_token_file, "auth-token-file");
  require_readable(o.templates_path, "templates");
  if (o.port != 0 && o.port == o.metrics_port) {
    throw OptionsError("--port and --metrics-port are both " + std::to_string(o.port));
  }
  // A request message carries findings plus a candidate and a reference (Score):
  // a receive limit below that would turn valid requests into transport errors.
  const long long needed = 3LL * static_cast<long long>(o.max_input_bytes) + 4096;
  if (o.max_receive_message_bytes < needed) {
    throw OptionsError("--max-receive-message-bytes " + std::to_string(o.max_receive_message_bytes) +
                       " is too small for --max-input-bytes " + std::to_string(o.max_input_bytes) +
                       " (a Score request carries three texts): use at least " + std::to_string(needed));
  }
  if (o.repetition_min_span < 1) throw OptionsError("--repetition-min-span must be >= 1");
}

std::string help_text() {
  std::ostringstream h;
  h << "usage: chatradio-server --model DIR [options]\n"
       "\n"
       "Serves chatradio.v1.ImpressionService (GenerateImpression, StreamImpression, Score),\n"
       "grpc.health.v1.Health and server reflection over gRPC, and Prometheus metrics over HTTP.\n"
       "Every option can also be set in a JSON config file: {\"model\": \"DIR\", \"port\": 50051, ...}\n"
       "(keys are the option names below; the command line wins; relative paths in the file\n"
       "resolve against the file's folder). SIGTERM/SIGINT drain the server and exit 0.\n"
       "Exit codes: 0 after a drain; 1 when the model fails to load or a port cannot be bound;\n"
       "2 for bad usage: options, config file, templates, TLS or token files.\n"
       "\n"
       "  --help                          this text\n"
       "  --config FILE                   JSON config file (options as keys)\n";
  for (const Spec& s : specs()) {
    std::string left = "  --" + s.name + " " + s.arg;
    if (left.size() < 34) left.resize(34, ' ');
    else left += "  ";
    h << left << s.help << "\n";
  }
  return h.str();
}

}  // namespace chatradio::service
