// Prometheus metrics (docs/service.md lists them): per-request histograms and
// counters recorded by the handlers, and engine gauges/counters read from
// Engine::stats() at scrape time, so a scrape always sees current values and
// no thread polls in between. No report text ever becomes a label.
#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace chatradio::engine {
class Engine;
}

namespace chatradio::service {

// What one finished request contributes; negative times were not measured
// (e.g. a request refused before reaching the engine has no queue time).
struct RequestSample {
  std::string_view rpc;  // "GenerateImpression", "StreamImpression", "Score"
  grpc::StatusCode code = grpc::StatusCode::OK;
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double queue_s = -1;
  double first_token_s = -1;       // generation RPCs only
  double per_output_token_s = -1;  // generation RPCs only
  double total_s = -1;
};

class ServiceMetrics {
 public:
  ServiceMetrics();
  ~ServiceMetrics();
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // Serves GET /metrics on host:port. port 0 means no exposer unless any_port
  // (tests): then a free port is picked. Throws std::runtime_error when the
  // port cannot be bound.
  void expose(const std::string& host, int port, bool any_port);
  int port() const { return port_; }  // 0 when not exposed
  // Stops serving (joins the exposer's threads); idempotent. The drain calls
  // it, so nothing is left to stop after the server's "exit" line.
  void stop_exposer();

  // The engine whose stats the scrape reads; null detaches it (before the
  // engine is destroyed). Thread-safe against concurrent scrapes.
  void set_engine(const engine::Engine* engine);
  void set_model_loaded(bool loaded);

  void record(const RequestSample& s);
  // guard: "repetition", "empty_retry" (an empty output was retried) or
  // "empty_output" (still empty after the retries).
  void guard_triggered(std::string_view guard);

  // The exposition text a scrape would get (tests; the exposer serves the same).
  std::string render_text();

 private:
  struct Families;
  class Collector;
  void refresh_engine();  // under mu_

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string host_;

  std::mutex mu_;  // engine_ and the last-seen engine counters
  const engine::Engine* engine_ = nullptr;
  uint64_t seen_preemptions_kv_ = 0, seen_preemptions_slot_ = 0, seen_hits_ = 0, seen_misses_ = 0;
};

}  // namespace chatradio::service
