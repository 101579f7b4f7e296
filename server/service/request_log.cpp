#include "server/service/request_log.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "server/service/request_mapping.h"

namespace chatradio::service {

namespace {

// RFC 3339 UTC with milliseconds: "2026-11-01T12:00:00.123Z".
std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];  // roomy enough for any int the compiler imagines in %04d
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

// ordered_json: lines read "ts, event, ..." in the order written, not sorted.
nlohmann::ordered_json base(std::string_view event) {
  nlohmann::ordered_json j;
  j["ts"] = timestamp();
  j["event"] = std::string(event);
  return j;
}

// Lossy but safe: invalid UTF-8 from a caller-supplied id must not make the
// whole line unserializable.
std::string dump(const nlohmann::ordered_json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace

std::string clip(std::string_view s) {
  if (s.size() <= kClipBytes) return std::string(s);
  size_t n = kClipBytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // don't split a character
  return std::string(s.substr(0, n)) + "…";
}

Logger::Logger(Sink sink) : sink_(std::move(sink)) {}

void Logger::write(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sink_) {
    sink_(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }
}

void Logger::request(const RequestRecord& r) {
  nlohmann::ordered_json j = base("request");
  j["request_id"] = r.request_id;
  j["client_request_id"] = clip(r.client_request_id);
  j["rpc"] = r.rpc;
  j["code"] = std::string(code_name(r.code));
  if (!r.error.empty()) j["error"] = r.error;
  j["institution_id"] = clip(r.institution_id);
  j["template_id"] = r.template_id;
  if (!r.language.empty()) j["language"] = r.language;
  if (!r.priority.empty()) j["priority"] = r.priority;
  j["prompt_tokens"] = r.prompt_tokens;
  j["generated_tokens"] = r.generated_tokens;
  j["attempts"] = r.attempts;
  if (!r.finish.empty()) j["finish"] = r.finish;
  if (r.repetition) j["repetition_detected"] = true;
  if (r.empty_output) j["empty_output"] = true;
  if (r.empty_retried) j["empty_output_retried"] = true;
  const auto secs = [&](const char* key, double v) {
    if (v >= 0) j[key] = std::round(v * 1e6) / 1e6;
  };
  secs("queue_s", r.queue_s);
  secs("first_token_s", r.first_token_s);
  secs("total_s", r.total_s);
  write(dump(j));
}

void Logger::event(std::string_view name, const std::vector<std::pair<std::string, Value>>& fields) {
  nlohmann::ordered_json j = base(name);
  for (const auto& [k, v] : fields) std::visit([&, &key = k](const auto& x) { j[key] = x; }, v);
  write(dump(j));
}

}  // namespace chatradio::service
