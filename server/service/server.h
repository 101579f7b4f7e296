// The whole server's lifecycle, shared by chatradio-server and the tests:
//
//   start()           templates, auth, TLS, metrics exposer, gRPC server bound;
//                     health NOT_SERVING, ImpressionService answers UNAVAILABLE
//   load_and_warm_up() model + tokenizer + engine, one warm-up generation;
//                     then health SERVING and requests are served
//   drain()           health NOT_SERVING and new requests UNAVAILABLE (logged)
//                     for drain_grace_s; then in-flight requests get
//                     drain_timeout_s to finish, and what is left is stopped
//                     with UNAVAILABLE; only then Shutdown(): no new calls.
//                     Returns when every handler has returned
//
// Health is reported for "" (the whole server) and for
// "chatradio.v1.ImpressionService".
#pragma once

#include <grpcpp/server.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "model/backend.h"
#include "server/prompt/templates.h"
#include "server/service/auth.h"
#include "server/service/library_log.h"
#include "server/service/metrics.h"
#include "server/service/options.h"
#include "server/service/request_log.h"
#include "server/service/service.h"

namespace chatradio::text {
class JiebaDict;
}

namespace chatradio::service {

// Injection points for tests; the binary uses none.
struct ServerHooks {
  // Replaces/wraps the loaded backend (e.g. a slower one to make cancellation
  // observable mid-stream). Called once in load_and_warm_up().
  std::function<std::unique_ptr<model::Backend>(std::unique_ptr<model::Backend>)> wrap_backend;
  Logger::Sink log_sink;  // default: stderr
};

class ChatradioServer {
 public:
  // Reads nothing yet. Options are assumed validated (validate_options()).
  explicit ChatradioServer(ServerOptions opts, ServerHooks hooks = {});
  ~ChatradioServer();  // drains with a zero timeout if still running
  ChatradioServer(const ChatradioServer&) = delete;
  ChatradioServer& operator=(const ChatradioServer&) = delete;

  // Throws prompt::ConfigError (templates), OptionsError (TLS/token files),
  // std::runtime_error (a port cannot be bound).
  void start();
  // Throws model::ModelError (model files) or std::runtime_error (warm-up failed).
  void load_and_warm_up();
  // Idempotent; thread-safe; blocks until the gRPC server has stopped.
  void drain();

  int port() const { return port_; }
  int metrics_port() const { return metrics_.port(); }
  bool ready() const { return ready_.load(); }
  bool draining() const { return draining_.load(); }
  // Null before load_and_warm_up(); for tests that inspect engine stats.
  const engine::Engine* engine() const;
  ServiceMetrics& metrics() { return metrics_; }
  Logger& log() { return log_; }

  static constexpr const char* kServiceName = "chatradio.v1.ImpressionService";
  // How long stopped requests get to end after the drain deadline (a poll and
  // an engine step, or a write to a slow client), and how long calls still in
  // gRPC's hands get once it stops accepting new ones.
  static constexpr std::chrono::seconds kAbortWait{2};
  static constexpr std::chrono::seconds kShutdownGrace{1};

 private:
  void set_health(bool serving);
  static v1::ModelInfo model_info(const std::string& dir);

  ServerOptions opts_;
  ServerHooks hooks_;
  Logger log_;
  std::unique_ptr<LibraryLogRoute> library_log_;  // set by start(); after log_, destroyed before it
  ServiceMetrics metrics_;
  prompt::TemplateSet templates_;
  TokenAuth auth_;
  std::unique_ptr<text::JiebaDict> jieba_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<ImpressionServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::mutex drain_mu_;  // guards draining_ transitions and drained_
  std::condition_variable drain_cv_;  // later drain() callers wait for the first
  bool drained_ = false;
};

}  // namespace chatradio::service
