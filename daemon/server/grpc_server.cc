#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <pthread.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <optional>
#include <system_error>

#include "absl/strings/match.h"
#include "server/access_policy.h"
#include "server/unix_acceptor.h"
#include "spdlog/spdlog.h"
#include "util/grpc_limits.h"
#include "util/strings.h"
#include "util/unix_group.h"

namespace mqs::server {

namespace {
constexpr char kServiceName[] = "mqsidecar.v1.PubSub";

// The directory of a unix socket listener: created 0750 when missing (the
// socket's own mode decides who connects); refused when anyone may write to
// it without the sticky bit, since then anyone could replace the socket.
absl::Status PrepareSocketDirectory(const std::string& addr) {
  const std::filesystem::path dir = std::filesystem::path(addr.substr(7)).parent_path();
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (!ec) {
      std::filesystem::permissions(dir, std::filesystem::perms(0750),
                                   std::filesystem::perm_options::replace, ec);
    }
    if (ec) {
      return absl::PermissionDeniedError(
          util::StrCat("listen ", addr, ": cannot create ", dir.string(), ": ", ec.message()));
    }
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::PermissionDeniedError(util::StrCat("listen ", addr, ": ", dir.string(), ": ",
                                                    std::generic_category().message(errno)));
  }
  if ((st.st_mode & S_IWOTH) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return absl::PermissionDeniedError(util::StrCat(
        "listen ", addr, ": its directory ", dir.string(),
        " is writable by every user (without the sticky bit): anyone could replace the socket"));
  }
  return absl::OkStatus();
}

// ApplyLimits: the config's `limits` that gRPC enforces. The receive limit
// leaves room for a request at every limit of ours, so such a request fails
// alone on ValidatePublish; sends may be larger than requests, since a
// message published at the limits comes back as a Delivery with its
// properties (grpc_limits.h). Streams per connection are counted by the
// service (ConnectionTable), which fails the stream above the limit; HTTP/2's
// SETTINGS_MAX_CONCURRENT_STREAMS, which makes a client wait instead, is set
// above it (kStreamHeadroom) so that unary calls and the streams the service
// refuses still get through.
void ApplyLimits(grpc::ServerBuilder& builder, const config::Limits& limits) {
  const size_t receive = util::MaxRequestBytes(limits.max_payload_bytes, limits.max_header_bytes);
  builder.SetMaxReceiveMessageSize(static_cast<int>(receive));
  builder.SetMaxSendMessageSize(static_cast<int>(util::MaxSendBytes(receive)));
  constexpr int kStreamHeadroom = 100;
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(limits.max_streams_per_connection) + kStreamHeadroom);
}

}  // namespace

std::shared_ptr<grpc::ServerCredentials> TcpCredentials(const config::ListenerTls& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  // The provider re-reads the files on its own thread; a failed read (a file
  // missing or half-written) makes new handshakes fail until a good read, and
  // connections already open keep their session (docs/security.md).
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key, tls.cert, tls.client_ca,
      static_cast<unsigned int>(config::kListenerTlsRefresh.count()));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (tls.client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  // gRPC 1.51 serves TLS 1.2 and 1.3 only (its minimum is TLS 1.2, not settable
  // through this API).
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const std::vector<std::string>& listen, const config::SocketOptions& socket,
    const config::TcpOptions& tcp, const config::Access& access, grpc::Service* service,
    AsyncService* async, ConnectionTable* connections, const config::Limits& limits) {
  std::optional<gid_t> gid;
  if (!socket.group.empty()) {
    gid = util::GroupId(socket.group);
    if (!gid) {
      return absl::InvalidArgumentError(
          util::StrCat("socket.group: no group named '", socket.group, "'"));
    }
  }
  // Our own health service (health_service.h says why not gRPC's).
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<GrpcServer> out(new GrpcServer());
  out->health_ = std::make_unique<HealthService>(kServiceName);
  grpc::ServerBuilder builder;
  ApplyLimits(builder, limits);
  // Unix sockets (`listen`, then the clients' own) are accepted by the
  // daemon (unix_acceptor.h); gRPC listens on the TCP addresses.
  std::vector<UnixAcceptor::Socket> unix_sockets;
  std::vector<std::string> tcp_listen;
  for (const std::string& addr : listen) {
    if (absl::StartsWith(addr, "unix://")) {
      if (absl::Status s = PrepareSocketDirectory(addr); !s.ok()) return s;
      unix_sockets.push_back(
          {.address = addr, .mode = socket.mode, .gid = gid, .group = socket.group, .client = ""});
    } else {
      tcp_listen.push_back(addr);
    }
  }
  for (const config::AccessClient& c : access.clients) {
    if (c.socket.empty()) continue;
    if (absl::Status s = PrepareSocketDirectory(c.socket); !s.ok()) return s;
    std::optional<gid_t> client_gid;
    if (!c.socket_group.empty()) {
      client_gid = util::GroupId(c.socket_group);
      if (!client_gid) {
        return absl::InvalidArgumentError(
            util::StrCat("listen ", c.socket, ": no group named '", c.socket_group, "'"));
      }
    }
    unix_sockets.push_back({.address = c.socket,
                            .mode = c.socket_mode,
                            .gid = client_gid,
                            .group = c.socket_group,
                            .client = c.name});
  }
  absl::StatusOr<std::unique_ptr<UnixAcceptor>> acceptor = UnixAcceptor::Listen(unix_sockets);
  if (!acceptor.ok()) return acceptor.status();
  out->acceptor_ = std::move(*acceptor);
  std::vector<int> ports(tcp_listen.size(), 0);
  const std::shared_ptr<grpc::ServerCredentials> tcp_credentials = TcpCredentials(tcp.tls);
  for (size_t i = 0; i < tcp_listen.size(); ++i) {
    builder.AddListeningPort(tcp_listen[i], tcp_credentials, &ports[i]);
  }
  builder.RegisterService(service);
  builder.RegisterService(out->health_.get());
  out->cq_ = builder.AddCompletionQueue();
  out->server_ = builder.BuildAndStart();
  if (out->server_ == nullptr) {
    return absl::UnavailableError(
        util::StrCat("cannot listen on ", tcp_listen.empty() ? "(no address)" : tcp_listen[0],
                     tcp_listen.size() > 1 ? " (or another listen address)" : "",
                     ": address in use, permission denied or malformed"));
  }
  for (size_t i = 0; i < tcp_listen.size(); ++i) {
    if (ports[i] == 0) {
      return absl::UnavailableError(util::StrCat("cannot listen on ", tcp_listen[i]));
    }
    if (tcp.tls.enabled()) {
      spdlog::info("listening on {} (TLS, certificate {}; {})", tcp_listen[i], tcp.tls.cert,
                   tcp.tls.client_ca.empty()
                       ? std::string("no client certificate asked")
                       : util::StrCat("client certificates required, from ", tcp.tls.client_ca));
    } else {
      spdlog::info("listening on {} (TCP without TLS: tcp.insecure)", tcp_listen[i]);
    }
  }
  for (const UnixAcceptor::Socket& s : unix_sockets) {
    const std::string group = s.group.empty() ? "the daemon's" : s.group;
    if (s.client.empty()) {
      spdlog::info("listening on {} (mode {:04o}, group {})", s.address, s.mode, group);
    } else {
      spdlog::info("listening on {} for client {} alone (mode {:04o}, group {})", s.address,
                   s.client, s.mode, group);
    }
  }
  out->acceptor_->Start(out->server_.get(), connections);
  out->SetServing(false);
  out->async_ = async;
  for (AsyncService* a : out->async_services()) a->StartAccepting(out->cq_.get(), &out->gate_);
  out->cq_thread_ = std::thread([s = out.get()] { s->ServeCompletions(); });
  return out;
}

GrpcServer::~GrpcServer() {
  if (server_ != nullptr && !shut_down_ && cq_thread_.joinable()) {
    Shutdown(std::chrono::system_clock::now());
  }
  // A server that failed to start still has a queue to shut down and drain.
  if (cq_ != nullptr && !cq_thread_.joinable()) {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    gate_.Close();
    cq_->Shutdown();
    void* tag;
    bool ok;
    while (cq_->Next(&tag, &ok)) {
    }
  }
}

void GrpcServer::ServeCompletions() {
  pthread_setname_np(pthread_self(), "mqs-grpc");
  void* tag;
  bool ok;
  while (true) {
    watch_.Idle();
    if (!cq_->Next(&tag, &ok)) break;
    watch_.Busy();
    static_cast<Completion*>(tag)->Complete(ok);
  }
}

void GrpcServer::SetServing(bool serving) { health_->SetServing(serving); }

void GrpcServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  if (acceptor_ != nullptr) acceptor_->Stop();  // no new connection from here
  health_->EndWatches();                        // Watch streams never end by themselves
  server_->Shutdown(deadline);
  server_->Wait();
  // gRPC has cancelled what was left; the calls end once their last
  // operations complete (on the thread below) and the I/O threads have
  // answered them (a publish result, a closed channel). Waiting for that
  // lets the last statuses go out.
  for (AsyncService* a : async_services()) {
    a->StopAccepting();
    // 1 s: the calls still open here are already cancelled, so no status of
    // theirs can reach a client any more; only operations gRPC has already
    // taken complete, and they do so at once. A call waiting for an I/O
    // thread (a publish awaiting the confirm of a frozen broker) is answered
    // only when that thread stops, after this; the later answer starts
    // nothing on the closed queue (OpGate) and the call deletes itself then.
    if (!a->WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(1))) {
      spdlog::warn("gRPC calls still open 1 s after shutdown; closing the queue anyway");
    }
  }
  // No operation starts after this: the queue may shut down.
  gate_.Close();
  cq_->Shutdown();
  cq_thread_.join();
}

}  // namespace mqs::server
