#include "server/service/library_log.h"

#include <grpc/support/log.h>

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <string>

namespace chatradio::service {

namespace {

// The hooks' only way back to a route (see the header). A hook holds route_mu()
// while it writes, so no route is destroyed under it.
std::mutex& route_mu() {
  static std::mutex mu;
  return mu;
}
LibraryLogRoute*& current_route() {
  static LibraryLogRoute* route = nullptr;
  return route;
}

// Library messages are ours to bound too; cut on a UTF-8 boundary.
std::string bounded(const char* message) {
  std::string_view s(message == nullptr ? "" : message);
  if (s.size() <= LibraryLogRoute::kMaxMessageBytes) return std::string(s);
  size_t n = LibraryLogRoute::kMaxMessageBytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return std::string(s.substr(0, n)) + "…";
}

void forward(const char* library, const char* severity, const char* file, int line, const char* message) {
  std::lock_guard<std::mutex> lock(route_mu());
  if (LibraryLogRoute* r = current_route()) {
    r->write(library, severity, file, line, message);
    return;
  }
  // No server is running (between servers in a test, or after exit began):
  // still one JSON line on stderr.
  Logger().event("library_log", {{"library", std::string(library)},
                                 {"severity", std::string(severity)},
                                 {"message", bounded(message)}});
}

void grpc_hook(gpr_log_func_args* a) {
  forward("grpc", gpr_log_severity_string(a->severity), a->file, a->line, a->message);
}

const char* protobuf_level(google::protobuf::LogLevel level) {
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO: return "INFO";
    case google::protobuf::LOGLEVEL_WARNING: return "WARNING";
    case google::protobuf::LOGLEVEL_ERROR: return "ERROR";
    case google::protobuf::LOGLEVEL_FATAL: return "FATAL";
  }
  return "ERROR";
}

void protobuf_hook(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  forward("protobuf", protobuf_level(level), file, line, message.c_str());
}

}  // namespace

LineRateLimit::LineRateLimit(double per_second, double burst)
    : per_second_(per_second), burst_(burst), tokens_(burst) {}

bool LineRateLimit::admit(Clock::time_point now, uint64_t& suppressed) {
  if (started_ && now > last_) {
    tokens_ = std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * per_second_);
  }
  if (!started_ || now > last_) last_ = now;
  started_ = true;
  if (tokens_ < 1.0) {
    ++dropped_;
    return false;
  }
  tokens_ -= 1.0;
  suppressed = dropped_;
  dropped_ = 0;
  return true;
}

LibraryLogRoute::LibraryLogRoute(Logger& log) : log_(log) {
  std::lock_guard<std::mutex> lock(route_mu());
  current_route() = this;
  // Installing the same hooks again is harmless; neither library can give its
  // default back, so they stay installed for the life of the process.
  gpr_set_log_function(grpc_hook);
  google::protobuf::SetLogHandler(protobuf_hook);
}

LibraryLogRoute::~LibraryLogRoute() {
  std::lock_guard<std::mutex> lock(route_mu());
  if (current_route() == this) current_route() = nullptr;
}

void LibraryLogRoute::write(const char* library, const char* severity, const char* file, int line,
                            const char* message) {
  uint64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!limit_.admit(LineRateLimit::Clock::now(), suppressed)) return;
  }
  std::vector<std::pair<std::string, Logger::Value>> fields = {
      {"library", std::string(library)},
      {"severity", std::string(severity)},
      {"source", std::string(file == nullptr ? "" : file) + ":" + std::to_string(line)},
      {"message", bounded(message)}};
  if (suppressed > 0) fields.emplace_back("suppressed", static_cast<int64_t>(suppressed));
  log_.event("library_log", fields);
}

}  // namespace chatradio::service
