// MetricsServer: the HTTP side of observability (metrics.listen), served by
// cpp-httplib on threads of its own, off the message path:
//
//   /metrics  Prometheus text exposition (format 0.0.4) of Metrics
//   /healthz  200 while the process serves HTTP at all
//   /readyz   200 while `ready()` holds (gRPC health SERVING), else 503
//
// Start binds at once (a port in use is the caller's startup error), then
// serves on one listener thread (plus httplib's small worker pool); Stop
// ends and joins them. No thread is detached.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "observability/metrics.h"

namespace httplib {
class Server;
}

namespace mqs::observability {

// ListenAddress: metrics.listen split into host and port.
struct ListenAddress {
  std::string host;  // an IPv4 or IPv6 literal (brackets removed) or a host name
  int port = 0;
};
// ParseListenAddress accepts "host:port" and "[ipv6]:port", port 1..65535
// (0 too with `allow_any_port`, which tests use for a free port); the error
// says what was expected.
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text,
                                                 bool allow_any_port = false);

class MetricsServer {
 public:
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Start serves `metrics` on `listen` (host:port). An address that cannot
  // be bound is an error naming metrics.listen and the address.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              const Metrics* metrics,
                                                              std::function<bool()> ready);
  // The bound port (useful with port 0).
  int port() const { return port_; }
  // Stop: no new connections; joins the threads. Idempotent.
  void Stop();

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::atomic<bool> done_{false};  // the listener loop has returned
  int port_ = 0;
};

}  // namespace mqs::observability
