#include "server/service/health.h"

#include "server/service/request_log.h"

namespace chatradio::service {

using grpc::health::v1::HealthCheckResponse;

HealthService::HealthService(const std::vector<std::string>& services) {
  statuses_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& s : services) statuses_[s] = HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServingStatus(const std::string& service_name, bool serving) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    statuses_[service_name] = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
    ++version_;
  }
  cv_.notify_all();
}

void HealthService::SetServingStatus(bool serving) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    for (auto& [name, st] : statuses_) st = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
    ++version_;
  }
  cv_.notify_all();
}

void HealthService::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    for (auto& [name, st] : statuses_) st = HealthCheckResponse::NOT_SERVING;
    shutdown_ = true;
    ++version_;
  }
  cv_.notify_all();
}

HealthService::ServingStatus HealthService::status_of(const std::string& name) const {
  const auto it = statuses_.find(name);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

grpc::Status HealthService::Check(grpc::ServerContext* /*ctx*/, const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) {
  std::lock_guard<std::mutex> lock(mu_);
  const ServingStatus st = status_of(req->service());
  if (st == HealthCheckResponse::SERVICE_UNKNOWN) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + clip(req->service()) + "'");
  }
  resp->set_status(st);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) {
  std::unique_lock<std::mutex> lock(mu_);
  uint64_t seen = version_;
  ServingStatus last = status_of(req->service());
  bool first = true;
  for (;;) {
    const ServingStatus now = status_of(req->service());
    const bool ending = shutdown_;
    if (first || now != last) {
      HealthCheckResponse resp;
      resp.set_status(now);
      lock.unlock();  // never write to the network under the lock
      const bool ok = writer->Write(resp);
      lock.lock();
      if (!ok) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      last = now;
      first = false;
    }
    if (ending) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    cv_.wait_for(lock, kPoll, [&] { return version_ != seen; });
    seen = version_;
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
}

}  // namespace chatradio::service
