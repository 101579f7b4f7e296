// Structured logs on stderr: one JSON object per line. One "request" line per
// RPC with ids, counts, timings and status, and a few lifecycle lines
// ("listening", "ready", "draining", ...). Report text (findings, impressions,
// references) never reaches a log: the request line is built from
// RequestRecord, which has no field that could hold it.
#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace chatradio::service {

// Everything the request line says. Times are seconds; negative = not measured.
struct RequestRecord {
  std::string request_id;
  std::string client_request_id;  // caller-controlled: clipped (clip()) and escaped when written
  std::string rpc;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string error;              // our status message: names fields and counts, never text
  std::string institution_id;     // caller-controlled, like client_request_id
  std::string template_id;
  std::string language;           // "zh" / "en"
  std::string priority;           // "routine" / "stat"
  int prompt_tokens = 0;
  int generated_tokens = 0;       // Score: candidate tokens scored
  int attempts = 0;               // engine submissions (empty-output retries add one each)
  std::string finish;             // "eos", "length", "repetition", ...
  bool repetition = false;
  bool empty_output = false;
  bool empty_retried = false;
  double queue_s = -1;
  double first_token_s = -1;
  double total_s = -1;
};

class Logger {
 public:
  using Sink = std::function<void(const std::string& line)>;
  // Without a sink, lines go to stderr.
  explicit Logger(Sink sink = nullptr);

  void request(const RequestRecord& r);
  // A lifecycle event ("listening", "ready", "draining", ...) with its fields,
  // in the order given.
  using Value = std::variant<std::string, int64_t, double, bool>;
  void event(std::string_view name, const std::vector<std::pair<std::string, Value>>& fields = {});

 private:
  void write(const std::string& line);
  Sink sink_;
  std::mutex mu_;  // whole lines, never interleaved
};

// Every caller-supplied string that reaches a status message or a log goes
// through this: at most kClipBytes bytes of `s`, cut on a UTF-8 boundary, with
// "…" appended when something was cut. A 100 kB template id must not become a
// 100 kB log line, nor trailers larger than the client accepts.
constexpr size_t kClipBytes = 64;
std::string clip(std::string_view s);

}  // namespace chatradio::service
