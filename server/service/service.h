// chatradio.v1.ImpressionService on the engine. Each call runs one way:
//   auth -> readiness -> validate -> render template -> tokenize -> context
//   check -> engine.generate/score -> stream deltas -> response
// and ends in exactly one request log line and one metrics sample.
//
// gRPC's callback API, public classes only: the generated
// WithRawCallbackMethod_* mixins give each method raw request bytes and a
// reactor. No call holds a thread while the engine works on it. The method
// handler (a gRPC thread) parses, validates and tokenizes; from then on the
// call is a small state machine stepped on the service's CallPump thread,
// woken by the engine (Handle on_update: new tokens, the end), by gRPC
// (OnWriteDone, OnCancel, OnDone) and by the drain. A client that goes away or
// a deadline that passes cancels the engine request at once (OnCancel).
//
// Accounting: every call that reaches a handler ends in exactly one log line
// and one metric sample carrying the status the client saw. A call that ends
// because its client went away is classified by its context (deadline passed
// or not) before anything else, even before its message is parsed; tokens it
// got are counted. The drain (ChatradioServer::drain) refuses new calls with
// UNAVAILABLE, waits for admitted ones (wait_idle) and at its deadline stops
// them with UNAVAILABLE itself (abort_in_flight), so gRPC never has to cancel
// a call the log has not accounted for.
//
// Requests arrive as raw bytes and are parsed here, not by gRPC: protobuf
// refuses proto3 strings that are not UTF-8, and gRPC would answer such a
// request with a bare INTERNAL. Parsing ourselves turns it into
// INVALID_ARGUMENT naming the field and byte offset, like every other check.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>

#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include "chatradio/v1/impression_service.grpc.pb.h"
#include "model/backend.h"
#include "model/tokenizer.h"
#include "server/engine/engine.h"
#include "server/prompt/guards.h"
#include "server/prompt/templates.h"
#include "server/service/auth.h"
#include "server/service/call_pump.h"
#include "server/service/metrics.h"
#include "server/service/options.h"
#include "server/service/request_log.h"
#include "server/service/request_mapping.h"

namespace chatradio::text {
class JiebaDict;
}

namespace chatradio::service {

// The loaded model and its engine. Immutable once published to the service;
// the server destroys it only after the gRPC server has stopped.
struct Runtime {
  model::Tokenizer tokenizer;
  std::unique_ptr<model::Backend> backend;
  std::unique_ptr<engine::Engine> engine;  // declared after backend: destroyed first
  v1::ModelInfo info;
  int context = 0;  // model positions
};

// What the handlers share with the server that owns them.
struct ServiceDeps {
  const ServerOptions* opts = nullptr;
  const prompt::TemplateSet* templates = nullptr;
  const TokenAuth* auth = nullptr;
  const text::JiebaDict* jieba = nullptr;  // null: ROUGE with jieba fails with FAILED_PRECONDITION
  ServiceMetrics* metrics = nullptr;
  Logger* log = nullptr;
};

// The generated service with every method taking raw bytes through a reactor.
using ImpressionServiceBase = v1::ImpressionService::WithRawCallbackMethod_GenerateImpression<
    v1::ImpressionService::WithRawCallbackMethod_StreamImpression<
        v1::ImpressionService::WithRawCallbackMethod_Score<v1::ImpressionService::Service>>>;

class ImpressionServiceImpl final : public ImpressionServiceBase {
 public:
  explicit ImpressionServiceImpl(ServiceDeps deps);
  // Every call has ended (the gRPC server has stopped) before this runs.
  ~ImpressionServiceImpl() override;

  // Published by the server once warm-up succeeded; null = not ready (UNAVAILABLE).
  void set_runtime(const Runtime* rt) { runtime_.store(rt, std::memory_order_release); }
  // New requests fail with UNAVAILABLE; requests in flight go on.
  void set_draining();
  // Waits until no admitted request is in flight, or `deadline`; true when none is.
  bool wait_idle(std::chrono::steady_clock::time_point deadline);
  // Requests in flight stop their engine work and end with UNAVAILABLE, saying
  // how many tokens they had (the drain's deadline passed).
  void abort_in_flight();

  grpc::ServerUnaryReactor* GenerateImpression(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                               grpc::ByteBuffer* resp) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamImpression(grpc::CallbackServerContext* ctx,
                                                               const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                  grpc::ByteBuffer* resp) override;

  // A client cancel that arrives this close to the call's deadline is the
  // deadline: gRPC clients cancel on their own deadline, which runs ahead of
  // the server's copy by the request's transit time, and their RST_STREAM
  // looks exactly like an explicit cancel.
  static constexpr std::chrono::milliseconds kDeadlineSlack{250};

 private:
  struct Scope;      // one RPC's record, timings and end-of-request bookkeeping
  class TextStream;  // streamed deltas with the blank-prefix hold-back
  class Call;        // one RPC's state machine (service.cpp)
  class UnaryCall;
  class StreamCall;

  enum class Stop : uint8_t { kNone, kClientGone, kAborted };  // why a call stopped its engine request
  // The status of a request that did not finish; `tokens` it generated, < 0
  // when none can have been (it never reached the engine, or Score).
  grpc::Status end_status(const engine::Outcome& o, Stop stop, const grpc::ServerContextBase& ctx, int tokens) const;
  grpc::Status gone_status(const grpc::ServerContextBase& ctx, int tokens) const;
  grpc::Status admit(const grpc::ServerContextBase& ctx, const Runtime*& rt, Scope& scope, Call* call);
  void finish(Scope& scope, const grpc::Status& status, Call* call);
  std::optional<grpc::Status> already_gone(const grpc::ServerContextBase& ctx, const grpc::ByteBuffer& bytes) const;
  uint64_t fresh_seed();
  std::string next_request_id();

  ServiceDeps deps_;
  std::unique_ptr<prompt::RepetitionDetector> detector_;  // null when the guard is off
  std::atomic<const Runtime*> runtime_{nullptr};
  std::mutex mu_;  // draining_, in_flight_, so no request is admitted after the drain counted them
  std::condition_variable idle_cv_;
  bool draining_ = false;
  std::unordered_set<Call*> in_flight_;  // admitted calls that have not ended
  std::atomic<bool> aborting_{false};
  std::atomic<uint64_t> seed_state_;
  std::atomic<uint64_t> request_counter_{0};
  std::string id_prefix_;  // per process, so ids from restarts do not collide
  CallPump pump_;          // last: its thread stops (running what is queued) before the rest goes
};

}  // namespace chatradio::service
