// grpc.health.v1.Health, installed as the server's HealthCheckServiceInterface
// (so Server::GetHealthCheckService() sets its statuses, as with gRPC's default
// service).
//
// Why not gRPC's default service: in gRPC 1.51 its Watch streams stay open
// through Server::Shutdown(deadline), so a single client-side health watcher
// holds every drain to the full --drain-timeout. Here Shutdown() ends every
// Watch (after telling it NOT_SERVING), and the drain waits only for real work.
#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"

namespace chatradio::service {

class HealthService final : public grpc::health::v1::Health::Service, public grpc::HealthCheckServiceInterface {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Statuses exist for "" (the whole server) and the names given, all NOT_SERVING.
  explicit HealthService(const std::vector<std::string>& services);

  // HealthCheckServiceInterface. After Shutdown() statuses stay NOT_SERVING.
  void SetServingStatus(const std::string& service_name, bool serving) override;
  void SetServingStatus(bool serving) override;
  void Shutdown() override;

  // grpc.health.v1.Health. Check: NOT_FOUND for unknown names. Watch: the
  // current status, then every change; SERVICE_UNKNOWN for unknown names;
  // ends with UNAVAILABLE at Shutdown().
  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

  // How often a Watch checks whether its client went away.
  static constexpr std::chrono::milliseconds kPoll{100};

 private:
  ServingStatus status_of(const std::string& name) const;  // under mu_

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, ServingStatus> statuses_;
  uint64_t version_ = 0;  // bumped on every change, so watchers notice
  bool shutdown_ = false;
};

}  // namespace chatradio::service
