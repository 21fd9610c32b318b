// GrpcServer: builds and runs the gRPC server on the configured addresses,
// with the standard health service (health_service.h), server reflection,
// and the one thread that serves every async method's completion queue
// ("mqs-grpc").
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "config/config.h"
#include "server/async_call.h"
#include "server/health_service.h"
#include "util/thread_watch.h"

namespace mqs::server {

class ConnectionTable;
class UnixAcceptor;

// TcpCredentials: TLS server credentials from `tls.cert` and `tls.key`,
// asking for and verifying a client certificate against `tls.client_ca` when
// set (mutual TLS); plaintext when `tls` is not enabled. gRPC's file watcher
// re-reads the files every config::kListenerTlsRefresh: a renewed
// certificate serves the next handshake without a restart.
std::shared_ptr<grpc::ServerCredentials> TcpCredentials(const config::ListenerTls& tls);

class GrpcServer {
 public:
  // Start listens on every address (`unix:///path` or `host:port`). A unix
  // socket gets `socket.mode` and `socket.group` whatever the umask; its
  // directory is created (0750) when missing and must not be writable by
  // everyone (unless sticky, like /tmp). A TCP listener serves TLS when
  // `tcp.tls` is set (TcpCredentials), plaintext otherwise. Fails naming the
  // address that could not be bound. `async` is `service` seen as a service
  // with async methods.
  // Every client of `access` with a socket of its own gets that listener
  // too, with its mode and group. Unix sockets are accepted by the daemon
  // (UnixAcceptor), which records in `connections` the socket each
  // connection came in on; `connections` outlives the server.
  // `limits` sets gRPC's receive and send limits (ApplyLimits).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const std::vector<std::string>& listen, const config::SocketOptions& socket,
      const config::TcpOptions& tcp, const config::Access& access, grpc::Service* service,
      AsyncService* async, ConnectionTable* connections, const config::Limits& limits = {});
  ~GrpcServer();

  // SetServing reports SERVING or NOT_SERVING for "" and mqsidecar.v1.PubSub.
  void SetServing(bool serving);
  // The completion-queue thread's progress, for the watchdog.
  const util::ThreadWatch& watch() const { return watch_; }
  // Shutdown stops accepting calls; calls still running after `deadline` are
  // cancelled. Blocks until all have finished and the completion-queue
  // thread has ended.
  void Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  // ServeCompletions runs on the "mqs-grpc" thread: every completion of the
  // async methods, handled inline, until the queue is shut down and empty.
  void ServeCompletions();

  // The async services, in the order they stop: PubSub, then health.
  std::vector<AsyncService*> async_services() { return {async_, health_.get()}; }

  // Destroyed in reverse: the server before its queue and its services.
  OpGate gate_;  // every operation on cq_ starts through it; closed before cq_ shuts down
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<UnixAcceptor> acceptor_;  // stopped before server_ goes
  AsyncService* async_ = nullptr;
  std::thread cq_thread_;
  util::ThreadWatch watch_{"grpc"};
  bool shut_down_ = false;
};

}  // namespace mqs::server
