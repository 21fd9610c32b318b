// GrpcServer: builds and runs the gRPC server on the configured addresses,
// with the standard health service and server reflection.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mqs::server {

class GrpcServer {
 public:
  // Start listens on every address (`unix:///path` or `host:port`); a unix
  // socket's directory is created when missing. Fails naming the address
  // that could not be bound.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const std::vector<std::string>& listen,
                                                           grpc::Service* service);
  ~GrpcServer();

  // SetServing reports SERVING or NOT_SERVING for "" and mqsidecar.v1.PubSub.
  void SetServing(bool serving);
  // Shutdown stops accepting calls; calls still running after `deadline` are
  // cancelled. Blocks until all have finished.
  void Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace mqs::server
