// grpc.health.v1.Health, installed as the server's HealthCheckServiceInterface
// (so Server::GetHealthCheckService() sets its statuses, as with gRPC's default
// service).
//
// Why not gRPC's default service: in gRPC 1.51 its Watch streams stay open
// through Server::Shutdown(deadline), so a single client-side health watcher
// holds every drain to the full --drain-timeout. Here Shutdown() ends every
// Watch (after telling it NOT_SERVING), and the drain waits only for real work.
//
// Callback API like the ImpressionService: a Watch is a reactor that writes
// when its status changes, not a thread waiting for it.
#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

namespace chatradio::service {

class HealthService final : public grpc::health::v1::Health::CallbackService,
                            public grpc::HealthCheckServiceInterface {
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
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req) override;

 private:
  class Watcher;  // one Watch call (health.cpp)

  ServingStatus status_of(const std::string& name) const;  // under mu_
  void notify_watchers();                                  // under mu_
  void forget(Watcher* w);

  mutable std::mutex mu_;  // taken before any Watcher's own lock
  std::map<std::string, ServingStatus> statuses_;
  std::set<Watcher*> watchers_;  // Watch calls not yet done
  bool shutdown_ = false;
};

}  // namespace chatradio::service
