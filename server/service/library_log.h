// gRPC's and protobuf's own log output (a line per malformed message, per
// failed TLS handshake, ...) as "library_log" JSON lines through our Logger,
// rate limited: an unauthenticated caller can make these libraries log at
// will, and neither the log's format nor its volume may be theirs to decide.
//
// Public hooks only: gpr_set_log_function (grpc/support/log.h) and
// google::protobuf::SetLogHandler. Both take a plain function pointer without
// a user argument, so the route they reach is one process-wide pointer kept in
// library_log.cpp: the most recently installed route gets the lines, and
// with none installed they still go to stderr as JSON.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

#include "server/service/request_log.h"

namespace chatradio::service {

// A token bucket over lines: up to `burst` at once, refilled at `per_second`.
// What it drops is counted and reported with the next line it lets through.
class LineRateLimit {
 public:
  using Clock = std::chrono::steady_clock;
  LineRateLimit(double per_second, double burst);
  // True when a line at `now` may be written; `suppressed` is then the number
  // of lines dropped since the last one written.
  bool admit(Clock::time_point now, uint64_t& suppressed);

 private:
  double per_second_;
  double burst_;
  double tokens_;
  Clock::time_point last_{};
  bool started_ = false;
  uint64_t dropped_ = 0;
};

class LibraryLogRoute {
 public:
  // Installs the hooks (once per process) and makes this route the current one.
  explicit LibraryLogRoute(Logger& log);
  // From here on lines go to stderr (unless another route was installed since).
  ~LibraryLogRoute();
  LibraryLogRoute(const LibraryLogRoute&) = delete;
  LibraryLogRoute& operator=(const LibraryLogRoute&) = delete;

  // 2 lines a second, bursts of 20.
  static constexpr double kPerSecond = 2;
  static constexpr double kBurst = 20;
  static constexpr size_t kMaxMessageBytes = 512;

  // What the hooks call: library "grpc" or "protobuf".
  void write(const char* library, const char* severity, const char* file, int line, const char* message);

 private:
  Logger& log_;
  std::mutex mu_;  // limit_
  LineRateLimit limit_{kPerSecond, kBurst};
};

}  // namespace chatradio::service
