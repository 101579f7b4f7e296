#include "server/service/health.h"

#include "server/service/request_log.h"

namespace chatradio::service {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch call: writes the watched status whenever it differs from what the
// client last got (one write at a time; a change during a write is written
// after it), and ends with UNAVAILABLE once the service shut down and the
// client has NOT_SERVING. Its lock is taken after the service's.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService& svc, std::string name) : svc_(svc), name_(std::move(name)) {}

  // Under the service's lock: the watched status now, and whether the service shut down.
  void update(ServingStatus now, bool ending) {
    std::lock_guard<std::mutex> lock(mu_);
    wanted_ = now;
    ending_ = ending;
    advance();
  }
  const std::string& name() const { return name_; }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok || cancelled_) return end(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    advance();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (!writing_) end(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));  // else at OnWriteDone
  }
  void OnDone() override {
    svc_.forget(this);
    delete this;
  }

 private:
  void advance() {  // under mu_
    if (ended_ || writing_ || cancelled_) return;
    if (!sent_ || wanted_ != msg_.status()) {
      msg_.set_status(wanted_);
      sent_ = true;
      writing_ = true;
      StartWrite(&msg_);
      return;
    }
    if (ending_) end(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
  }
  void end(const grpc::Status& s) {  // under mu_
    if (ended_) return;
    ended_ = true;
    Finish(s);
  }

  HealthService& svc_;
  const std::string name_;
  std::mutex mu_;
  HealthCheckResponse msg_;  // the last status written (or being written)
  ServingStatus wanted_ = HealthCheckResponse::SERVICE_UNKNOWN;
  bool sent_ = false, writing_ = false, ending_ = false, cancelled_ = false, ended_ = false;
};

HealthService::HealthService(const std::vector<std::string>& services) {
  statuses_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& s : services) statuses_[s] = HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServingStatus(const std::string& service_name, bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) return;
  statuses_[service_name] = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  notify_watchers();
}

void HealthService::SetServingStatus(bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) return;
  for (auto& [name, st] : statuses_) st = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  notify_watchers();
}

void HealthService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) return;
  for (auto& [name, st] : statuses_) st = HealthCheckResponse::NOT_SERVING;
  shutdown_ = true;
  notify_watchers();
}

HealthService::ServingStatus HealthService::status_of(const std::string& name) const {
  const auto it = statuses_.find(name);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

void HealthService::notify_watchers() {
  for (Watcher* w : watchers_) w->update(status_of(w->name()), shutdown_);
}

void HealthService::forget(Watcher* w) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.erase(w);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* ctx, const HealthCheckRequest* req,
                                               HealthCheckResponse* resp) {
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  std::lock_guard<std::mutex> lock(mu_);
  const ServingStatus st = status_of(req->service());
  if (st == HealthCheckResponse::SERVICE_UNKNOWN) {
    r->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + clip(req->service()) + "'"));
  } else {
    resp->set_status(st);
    r->Finish(grpc::Status::OK);
  }
  return r;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(grpc::CallbackServerContext* /*ctx*/,
                                                                    const HealthCheckRequest* req) {
  auto* w = new Watcher(*this, req->service());
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.insert(w);
  w->update(status_of(w->name()), shutdown_);  // the first write: the status now
  return w;
}

}  // namespace chatradio::service
