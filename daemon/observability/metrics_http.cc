#include "observability/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <charconv>

#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::observability {
namespace {

// Scrapes are small and rare: two workers, short timeouts, so that a stuck
// client cannot hold the shutdown.
constexpr size_t kWorkers = 2;
constexpr time_t kTimeoutSeconds = 5;
constexpr time_t kKeepAliveSeconds = 2;

}  // namespace

MetricsServer::~MetricsServer() { Stop(); }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    const Metrics* metrics,
                                                                    std::function<bool()> ready) {
  absl::StatusOr<ListenAddress> addr = ParseListenAddress(listen, /*allow_any_port=*/true);
  if (!addr.ok()) {
    return absl::InvalidArgumentError(
        util::StrCat("metrics.listen \"", listen, "\": ", addr.status().message()));
  }
  std::unique_ptr<MetricsServer> out(new MetricsServer());
  out->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *out->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kWorkers); };
  // httplib's default adds SO_REUSEPORT, which would let a second daemon
  // bind the same port and take half the scrapes: SO_REUSEADDR only.
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.set_read_timeout(kTimeoutSeconds);
  http.set_write_timeout(kTimeoutSeconds);
  http.set_keep_alive_timeout(kKeepAliveSeconds);
  http.Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->Render(ReadProcessStats(), std::chrono::steady_clock::now()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  http.Get("/readyz", [ready = std::move(ready)](const httplib::Request&, httplib::Response& res) {
    const bool ok = ready();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ready\n" : "not ready: the broker is not connected (or shutting down)\n",
                    "text/plain; charset=utf-8");
  });
  if (addr->port == 0) {
    out->port_ = http.bind_to_any_port(addr->host);
  } else {
    out->port_ = http.bind_to_port(addr->host, addr->port) ? addr->port : -1;
  }
  if (out->port_ <= 0) {
    return absl::UnavailableError(util::StrCat("metrics.listen \"", listen,
                                               "\": cannot listen there (address in use, or not "
                                               "an address of this host)"));
  }
  out->thread_ = std::thread([&http, done = &out->done_] {
    http.listen_after_bind();
    done->store(true, std::memory_order_release);
  });
  spdlog::info(
      "metrics: serving /metrics, /healthz and /readyz on http://{}:{}",
      addr->host.find(':') == std::string::npos ? addr->host : util::StrCat("[", addr->host, "]"),
      out->port_);
  return out;
}

void MetricsServer::Stop() {
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing before its loop has started: repeated
  // until the loop has returned (which joins httplib's workers).
  while (!done_.load(std::memory_order_acquire)) {
    http_->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  thread_.join();
}

}  // namespace mqs::observability
