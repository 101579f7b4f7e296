#include "server/service/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "server/engine/engine.h"
#include "server/service/request_mapping.h"

namespace chatradio::service {

namespace {

constexpr const char* kRpcs[] = {"GenerateImpression", "StreamImpression", "Score"};
constexpr const char* kGenerationRpcs[] = {"GenerateImpression", "StreamImpression"};
constexpr const char* kGuards[] = {"repetition", "empty_retry", "empty_output"};

prometheus::Histogram::BucketBoundaries buckets(std::initializer_list<double> b) { return b; }

}  // namespace

struct ServiceMetrics::Families {
  prometheus::Family<prometheus::Histogram>* ttft = nullptr;
  prometheus::Family<prometheus::Histogram>* tpot = nullptr;
  prometheus::Family<prometheus::Histogram>* duration = nullptr;
  prometheus::Family<prometheus::Histogram>* queue = nullptr;
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Counter* prompt_tokens = nullptr;
  prometheus::Counter* generated_tokens = nullptr;
  prometheus::Counter* prefix_hits = nullptr;
  prometheus::Counter* prefix_misses = nullptr;
  prometheus::Counter* preemptions_kv = nullptr;
  prometheus::Counter* preemptions_slot = nullptr;
  prometheus::Family<prometheus::Counter>* guards = nullptr;
  prometheus::Gauge* running = nullptr;
  prometheus::Gauge* waiting = nullptr;
  prometheus::Gauge* kv_usage = nullptr;
  prometheus::Gauge* model_loaded = nullptr;
};

// What the exposer scrapes: refreshes the engine-derived values, then returns
// the registry's families.
class ServiceMetrics::Collector : public prometheus::Collectable {
 public:
  explicit Collector(ServiceMetrics& m) : m_(m) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    {
      std::lock_guard<std::mutex> lock(m_.mu_);
      m_.refresh_engine();
    }
    return m_.registry_->Collect();
  }

 private:
  ServiceMetrics& m_;
};

ServiceMetrics::ServiceMetrics() : registry_(std::make_shared<prometheus::Registry>()), f_(std::make_unique<Families>()) {
  using namespace prometheus;
  Registry& r = *registry_;
  f_->ttft = &BuildHistogram()
                  .Name("chatradio_time_to_first_token_seconds")
                  .Help("Seconds from accepting a generation request to its first generated token.")
                  .Register(r);
  f_->tpot = &BuildHistogram()
                  .Name("chatradio_time_per_output_token_seconds")
                  .Help("Mean seconds per generated token after the first, per request.")
                  .Register(r);
  f_->duration = &BuildHistogram()
                      .Name("chatradio_request_duration_seconds")
                      .Help("Seconds from accepting a request to its response, whatever its status.")
                      .Register(r);
  f_->queue = &BuildHistogram()
                   .Name("chatradio_queue_time_seconds")
                   .Help("Seconds from accepting a request to its first engine step.")
                   .Register(r);
  f_->requests = &BuildCounter()
                      .Name("chatradio_requests_total")
                      .Help("Finished requests by RPC and gRPC status code.")
                      .Register(r);
  f_->prompt_tokens = &BuildCounter()
                           .Name("chatradio_prompt_tokens_total")
                           .Help("Prompt tokens (BOS included) of requests submitted to the engine.")
                           .Register(r)
                           .Add({});
  f_->generated_tokens = &BuildCounter()
                              .Name("chatradio_generated_tokens_total")
                              .Help("Tokens generated for requests, retries included.")
                              .Register(r)
                              .Add({});
  f_->prefix_hits = &BuildCounter()
                         .Name("chatradio_prefix_cache_hits_total")
                         .Help("Prompt KV blocks found in the prefix cache.")
                         .Register(r)
                         .Add({});
  f_->prefix_misses = &BuildCounter()
                           .Name("chatradio_prefix_cache_misses_total")
                           .Help("Prompt KV blocks not found in the prefix cache.")
                           .Register(r)
                           .Add({});
  auto& preemptions = BuildCounter()
                          .Name("chatradio_preemptions_total")
                          .Help("Running requests preempted (and later recomputed), by reason: kv (to free KV "
                                "cache blocks) or slot (a higher-ranked request, e.g. STAT, took its batch slot).")
                          .Register(r);
  f_->preemptions_kv = &preemptions.Add({{"reason", "kv"}});
  f_->preemptions_slot = &preemptions.Add({{"reason", "slot"}});
  f_->guards = &BuildCounter()
                    .Name("chatradio_guard_triggers_total")
                    .Help("Output guards that fired, by guard.")
                    .Register(r);
  f_->running = &BuildGauge()
                     .Name("chatradio_requests_running")
                     .Help("Requests the engine is running now.")
                     .Register(r)
                     .Add({});
  f_->waiting = &BuildGauge()
                     .Name("chatradio_requests_waiting")
                     .Help("Requests accepted by the engine and not yet running.")
                     .Register(r)
                     .Add({});
  f_->kv_usage = &BuildGauge()
                      .Name("chatradio_kv_cache_usage_ratio")
                      .Help("Fraction of the KV cache blocks in use (0 to 1).")
                      .Register(r)
                      .Add({});
  f_->model_loaded = &BuildGauge()
                          .Name("chatradio_model_loaded")
                          .Help("1 once the model is loaded and warmed up, else 0.")
                          .Register(r)
                          .Add({});
  // Every label combination known up front exists from the start, so
  // dashboards and alerts see zeros rather than absent series.
  for (const char* rpc : kRpcs) {
    f_->duration->Add({{"rpc", rpc}}, buckets({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}));
    f_->queue->Add({{"rpc", rpc}}, buckets({0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}));
  }
  // Score generates nothing: no first token, no per-token time.
  for (const char* rpc : kGenerationRpcs) {
    f_->ttft->Add({{"rpc", rpc}}, buckets({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}));
    f_->tpot->Add({{"rpc", rpc}}, buckets({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}));
  }
  for (const char* g : kGuards) f_->guards->Add({{"guard", g}});
  collector_ = std::make_shared<Collector>(*this);
}

ServiceMetrics::~ServiceMetrics() {
  stop_exposer();  // no scrape may run once the members go away
}

void ServiceMetrics::expose(const std::string& host, int port, bool any_port) {
  if (port == 0 && !any_port) return;
  const std::string address = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                              std::to_string(port);
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot serve metrics on " + address + ": " + e.what());
  }
  exposer_->RegisterCollectable(collector_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? port : ports.front();
  host_ = host;
}

namespace {

// Opens and closes one TCP connection to host:port (a wildcard host means this
// machine); failures are fine, the caller just tries again.
void knock(const std::string& host, int port) {
  const std::string target = host == "0.0.0.0" || host.empty() ? "127.0.0.1" : host == "::" ? "::1" : host;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(target.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return;
  const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  if (fd >= 0) {
    connect(fd, res->ai_addr, res->ai_addrlen);
    close(fd);
  }
  freeaddrinfo(res);
}

}  // namespace

void ServiceMetrics::stop_exposer() {
  if (!exposer_) return;
  // civetweb's listener thread polls its socket in 2 s quanta and only then
  // sees that it should stop (the 2 s an exiting server used to hang after
  // its "exit" line); a connection wakes it at once. Knock until it is gone.
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    while (!stopped.load()) {
      knock(host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  exposer_.reset();
  stopped = true;
  waker.join();
  port_ = 0;
}

void ServiceMetrics::set_engine(const engine::Engine* engine) {
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ != nullptr) refresh_engine();  // keep the counters' last increments
  engine_ = engine;
  if (engine_ == nullptr) {
    f_->running->Set(0);
    f_->waiting->Set(0);
    f_->kv_usage->Set(0);
  }
}

void ServiceMetrics::refresh_engine() {
  if (engine_ == nullptr) return;
  const engine::EngineStats s = engine_->stats();
  f_->running->Set(s.n_running);
  f_->waiting->Set(s.n_waiting);
  f_->kv_usage->Set(s.kv_usage);
  // Engine counters only grow; publish the increments since the last look.
  const auto bump = [](prometheus::Counter* c, uint64_t now, uint64_t& seen) {
    if (now > seen) c->Increment(static_cast<double>(now - seen));
    seen = std::max(seen, now);
  };
  bump(f_->preemptions_kv, s.preemptions_kv, seen_preemptions_kv_);
  bump(f_->preemptions_slot, s.preemptions_slot, seen_preemptions_slot_);
  bump(f_->prefix_hits, s.prefix_hits, seen_hits_);
  bump(f_->prefix_misses, s.prefix_misses, seen_misses_);
}

void ServiceMetrics::set_model_loaded(bool loaded) { f_->model_loaded->Set(loaded ? 1 : 0); }

void ServiceMetrics::record(const RequestSample& s) {
  const prometheus::Labels rpc{{"rpc", std::string(s.rpc)}};
  f_->requests->Add({{"rpc", std::string(s.rpc)}, {"code", std::string(code_name(s.code))}}).Increment();
  if (s.prompt_tokens > 0) f_->prompt_tokens->Increment(s.prompt_tokens);
  if (s.generated_tokens > 0) f_->generated_tokens->Increment(s.generated_tokens);
  // Histogram families were created with buckets for every known rpc; Add
  // with the same labels returns that child (the buckets argument is ignored).
  const auto observe = [&](prometheus::Family<prometheus::Histogram>* fam, double v) {
    if (v >= 0) fam->Add(rpc, prometheus::Histogram::BucketBoundaries{}).Observe(v);
  };
  observe(f_->duration, s.total_s);
  observe(f_->queue, s.queue_s);
  observe(f_->ttft, s.first_token_s);
  observe(f_->tpot, s.per_output_token_s);
}

void ServiceMetrics::guard_triggered(std::string_view guard) {
  f_->guards->Add({{"guard", std::string(guard)}}).Increment();
}

std::string ServiceMetrics::render_text() {
  return prometheus::TextSerializer().Serialize(collector_->Collect());
}

}  // namespace chatradio::service
