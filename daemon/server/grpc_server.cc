#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::server {

namespace {
constexpr char kServiceName[] = "mqsidecar.v1.PubSub";
constexpr int kMaxMessageBytes = 16 * 1024 * 1024;
}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const std::vector<std::string>& listen, grpc::Service* service) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  std::vector<int> ports(listen.size(), 0);
  for (size_t i = 0; i < listen.size(); ++i) {
    const std::string& addr = listen[i];
    if (absl::StartsWith(addr, "unix://")) {
      const std::filesystem::path path(addr.substr(7));
      std::error_code ec;
      std::filesystem::create_directories(path.parent_path(), ec);
      if (ec) {
        return absl::PermissionDeniedError(util::StrCat(
            "listen ", addr, ": cannot create ", path.parent_path().string(), ": ", ec.message()));
      }
    }
    builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &ports[i]);
  }
  builder.RegisterService(service);
  std::unique_ptr<GrpcServer> out(new GrpcServer());
  out->server_ = builder.BuildAndStart();
  if (out->server_ == nullptr) {
    return absl::UnavailableError(
        util::StrCat("cannot listen on ", listen.empty() ? "(no address)" : listen[0],
                     listen.size() > 1 ? " (or another listen address)" : "",
                     ": address in use, permission denied or malformed"));
  }
  for (size_t i = 0; i < listen.size(); ++i) {
    if (ports[i] == 0) {
      return absl::UnavailableError(util::StrCat("cannot listen on ", listen[i]));
    }
    spdlog::info("listening on {}", listen[i]);
  }
  out->SetServing(false);
  return out;
}

GrpcServer::~GrpcServer() {
  if (server_ != nullptr && !shut_down_) Shutdown(std::chrono::system_clock::now());
}

void GrpcServer::SetServing(bool serving) {
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(serving);
    health->SetServingStatus(kServiceName, serving);
  }
}

void GrpcServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->Shutdown(deadline);
  server_->Wait();
}

}  // namespace mqs::server
