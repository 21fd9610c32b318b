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

// SocketClientProcessor names the client of a socket of its own on each
// call (kSocketClientProperty). gRPC 1.51 gives a server neither the peer's
// uid nor the address a call came in on, so the socket is the identity; the
// processor needs credentials with a security connector, and local
// credentials over a unix socket exchange nothing on the wire, so plaintext
// clients connect as before.
class SocketClientProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit SocketClientProcessor(std::string client) : client_(std::move(client)) {}
  bool IsBlocking() const override { return false; }  // runs inline: no I/O
  grpc::Status Process(const InputMetadata& /*auth_metadata*/, grpc::AuthContext* context,
                       OutputMetadata* /*consumed*/, OutputMetadata* /*response*/) override {
    context->AddProperty(kSocketClientProperty, client_);
    return grpc::Status::OK;
  }

 private:
  const std::string client_;
};

std::shared_ptr<grpc::ServerCredentials> ClientSocketCredentials(const std::string& client) {
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::experimental::LocalServerCredentials(UDS);
  creds->SetAuthMetadataProcessor(std::make_shared<SocketClientProcessor>(client));
  return creds;
}

// SetSocketOwnership: `mode` and `group` on the unix socket of `addr`.
absl::Status SetSocketOwnership(const std::string& addr, uint32_t mode, const std::string& group) {
  std::optional<gid_t> gid;
  if (!group.empty()) {
    gid = util::GroupId(group);
    if (!gid) return absl::InvalidArgumentError(util::StrCat("no group named '", group, "'"));
  }
  const std::string path = addr.substr(7);
  if (::chmod(path.c_str(), mode) != 0 ||
      (gid && ::chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0)) {
    return absl::PermissionDeniedError(
        util::StrCat("listen ", addr, ": cannot set its mode ", fmt::format("{:04o}", mode),
                     gid ? util::StrCat(" and group ", group) : std::string(), ": ",
                     std::generic_category().message(errno)));
  }
  return absl::OkStatus();
}

// ApplyLimits: the config's `limits` that gRPC enforces. The receive limit
// leaves room for a request at every limit of ours, so such a request fails
// alone on ValidatePublish; sends may be larger than requests, since a
// message published at the limits comes back as a Delivery with its
// properties (grpc_limits.h). Streams per connection bound what one client
// holds open on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
void ApplyLimits(grpc::ServerBuilder& builder, const config::Limits& limits) {
  const size_t receive = util::MaxRequestBytes(limits.max_payload_bytes, limits.max_header_bytes);
  builder.SetMaxReceiveMessageSize(static_cast<int>(receive));
  builder.SetMaxSendMessageSize(static_cast<int>(util::MaxSendBytes(receive)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(limits.max_streams_per_connection));
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
    AsyncService* async, const config::Limits& limits) {
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
  std::vector<int> ports(listen.size(), 0);
  const std::shared_ptr<grpc::ServerCredentials> tcp_credentials = TcpCredentials(tcp.tls);
  for (size_t i = 0; i < listen.size(); ++i) {
    const std::string& addr = listen[i];
    if (absl::StartsWith(addr, "unix://")) {
      if (absl::Status s = PrepareSocketDirectory(addr); !s.ok()) return s;
      builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &ports[i]);
    } else {
      builder.AddListeningPort(addr, tcp_credentials, &ports[i]);
    }
  }
  // Clients' own sockets (access), after `listen` in ports/listen order.
  std::vector<const config::AccessClient*> client_sockets;
  for (const config::AccessClient& c : access.clients) {
    if (c.socket.empty()) continue;
    if (absl::Status s = PrepareSocketDirectory(c.socket); !s.ok()) return s;
    client_sockets.push_back(&c);
  }
  std::vector<int> client_ports(client_sockets.size(), 0);
  for (size_t i = 0; i < client_sockets.size(); ++i) {
    builder.AddListeningPort(client_sockets[i]->socket,
                             ClientSocketCredentials(client_sockets[i]->name), &client_ports[i]);
  }
  builder.RegisterService(service);
  builder.RegisterService(out->health_.get());
  out->cq_ = builder.AddCompletionQueue();
  // gRPC creates the sockets with the process umask: none may be reachable
  // by others even for the moment before the chmod below. Process-wide, but
  // no other thread creates files while the server starts.
  const mode_t umask_before = ::umask(0177);
  out->server_ = builder.BuildAndStart();
  ::umask(umask_before);
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
    if (absl::StartsWith(listen[i], "unix://")) {
      const std::string path = listen[i].substr(7);
      if (::chmod(path.c_str(), socket.mode) != 0 ||
          (gid && ::chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0)) {
        return absl::PermissionDeniedError(util::StrCat(
            "listen ", listen[i], ": cannot set its mode ", fmt::format("{:04o}", socket.mode),
            gid ? util::StrCat(" and group ", socket.group) : std::string(), ": ",
            std::generic_category().message(errno)));
      }
      spdlog::info("listening on {} (mode {:04o}, group {})", listen[i], socket.mode,
                   socket.group.empty() ? "the daemon's" : socket.group);
    } else if (tcp.tls.enabled()) {
      spdlog::info("listening on {} (TLS, certificate {}; {})", listen[i], tcp.tls.cert,
                   tcp.tls.client_ca.empty()
                       ? std::string("no client certificate asked")
                       : util::StrCat("client certificates required, from ", tcp.tls.client_ca));
    } else {
      spdlog::info("listening on {} (TCP without TLS: tcp.insecure)", listen[i]);
    }
  }
  for (size_t i = 0; i < client_sockets.size(); ++i) {
    const config::AccessClient& c = *client_sockets[i];
    if (client_ports[i] == 0) {
      return absl::UnavailableError(util::StrCat("cannot listen on ", c.socket));
    }
    if (absl::Status s = SetSocketOwnership(c.socket, c.socket_mode, c.socket_group); !s.ok()) {
      return s;
    }
    spdlog::info("listening on {} for client {} alone (mode {:04o}, group {})", c.socket, c.name,
                 c.socket_mode, c.socket_group.empty() ? "the daemon's" : c.socket_group);
  }
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
  health_->EndWatches();  // Watch streams never end by themselves
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
