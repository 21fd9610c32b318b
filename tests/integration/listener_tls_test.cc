// TLS and mutual TLS for TCP listeners (issue 14, tcp.tls). A daemon serves
// its unix socket (which the harness checks health on) and a TCP listener
// with TLS, from certificates made at test time (test_pki.h). A client that
// trusts the CA publishes and consumes; a plaintext client, a client that
// trusts another CA, and (with client_ca) a client without a certificate or
// with one from another CA are refused in the handshake (UNAVAILABLE).
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "harness.h"
#include "test_pki.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

std::string TcpTlsYaml(const std::string& cert, const std::string& key,
                       const std::string& client_ca = "") {
  std::string y = "tcp:\n  tls:\n    cert: " + cert + "\n    key: " + key + "\n";
  if (!client_ca.empty()) y += "    client_ca: " + client_ca + "\n";
  return y;
}

// Publishes 3 messages confirmed and consumes them, all over `channel`.
void PublishAndConsume(const std::shared_ptr<grpc::Channel>& channel, const std::string& biz,
                       const std::string& tag) {
  auto stub = pb::PubSub::NewStub(channel);
  Subscriber sub(*stub, {.business = biz, .prefetch = 10, .consumer_name = tag});
  const std::vector<std::string> ids = PublishConfirmed(*stub, biz, 3, tag);
  REQUIRE(sub.WaitForCount(3, 15s));
  CHECK(MessageIds(sub.deliveries()) == ids);
  for (const pb::Delivery& delivery : sub.deliveries()) sub.Ack(delivery.delivery_id());
  CHECK(sub.Leave().ok());
}

TEST_CASE(
    "integration: listener tls: a TLS listener on 0.0.0.0 serves a client that trusts its CA, "
    "plaintext and a client trusting another CA are refused") {
  IntegrationTest t("tcptls");
  const TestPki pki(t.dir());
  const std::string biz = t.Business("tls");
  const int port = FreePort();
  const std::string listen = "0.0.0.0:" + std::to_string(port);
  Daemon& d =
      t.StartDaemon({{.name = biz}},
                    {.extra_yaml = TcpTlsYaml(pki.Path("server-a.pem"), pki.Path("server-a.key")),
                     .extra_listen = {listen}});
  CHECK_THAT(d.Log(), Catch::Contains("listening on " + listen + " (TLS, certificate " +
                                      pki.Path("server-a.pem") + "; no client certificate asked)"));

  PublishAndConsume(TlsChannel(pki, port, "ca-a.pem"), biz, "tls");
  // A client certificate nobody asked for is fine too.
  CHECK(TopologyCall(TlsChannel(pki, port, "ca-a.pem", "client-b")).ok());

  const grpc::Status plain = TopologyCall(PlainChannel(port));
  INFO(StatusText(plain));
  CHECK(plain.error_code() == grpc::StatusCode::UNAVAILABLE);
  const grpc::Status other_ca = TopologyCall(TlsChannel(pki, port, "ca-b.pem"));
  INFO(StatusText(other_ca));
  CHECK(other_ca.error_code() == grpc::StatusCode::UNAVAILABLE);
  // The unix socket is unchanged: plaintext.
  CHECK(d.Topology().has_value());
}

TEST_CASE(
    "integration: listener tls: with client_ca, no client certificate or one from another CA is "
    "refused, a client certificate from client_ca works") {
  IntegrationTest t("mtls");
  const TestPki pki(t.dir());
  const std::string biz = t.Business("mtls");
  const int port = FreePort();
  Daemon& d = t.StartDaemon(
      {{.name = biz}}, {.extra_yaml = TcpTlsYaml(pki.Path("server-a.pem"), pki.Path("server-a.key"),
                                                 pki.Path("ca-a.pem")),
                        .extra_listen = {"127.0.0.1:" + std::to_string(port)}});
  CHECK_THAT(d.Log(),
             Catch::Contains("client certificates required, from " + pki.Path("ca-a.pem")));

  const grpc::Status none = TopologyCall(TlsChannel(pki, port, "ca-a.pem"));
  INFO(StatusText(none));
  CHECK(none.error_code() == grpc::StatusCode::UNAVAILABLE);
  const grpc::Status other = TopologyCall(TlsChannel(pki, port, "ca-a.pem", "client-b"));
  INFO(StatusText(other));
  CHECK(other.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(TopologyCall(PlainChannel(port)).error_code() == grpc::StatusCode::UNAVAILABLE);

  PublishAndConsume(TlsChannel(pki, port, "ca-a.pem", "client-a"), biz, "mtls");
}

TEST_CASE(
    "integration: listener tls: a renewed certificate file is served to new connections without "
    "a restart") {
  IntegrationTest t("tlsrenew");
  const TestPki pki(t.dir());
  const std::string biz = t.Business("renew");
  const int port = FreePort();
  // The daemon reads live/server.{pem,key}, copies of server-a's.
  const std::string live = t.dir() + "/live";
  std::filesystem::create_directory(live);
  const auto install = [&](const std::string& name) {
    // Written beside and renamed over: a reader never sees half a file.
    for (const std::string ext : {".key", ".pem"}) {
      std::filesystem::copy_file(pki.Path(name + ext), live + "/next" + ext,
                                 std::filesystem::copy_options::overwrite_existing);
      std::filesystem::rename(live + "/next" + ext, live + "/server" + ext);
    }
  };
  install("server-a");
  t.StartDaemon({{.name = biz}},
                {.extra_yaml = TcpTlsYaml(live + "/server.pem", live + "/server.key"),
                 .extra_listen = {"127.0.0.1:" + std::to_string(port)}});
  const auto kept = TlsChannel(pki, port, "ca-a.pem");
  REQUIRE(TopologyCall(kept).ok());
  CHECK_FALSE(TopologyCall(TlsChannel(pki, port, "ca-b.pem")).ok());

  install("server-b");
  // gRPC re-reads the files every 5 s (config::kListenerTlsRefresh).
  CHECK(WaitUntil([&] { return TopologyCall(TlsChannel(pki, port, "ca-b.pem"), 2s).ok(); }, 20s,
                  200ms));
  CHECK_FALSE(TopologyCall(TlsChannel(pki, port, "ca-a.pem")).ok());
  // A connection made before keeps its session.
  CHECK(TopologyCall(kept).ok());
}

TEST_CASE("integration: listener tls: a TCP listener on 0.0.0.0 without tcp.tls stops the start") {
  IntegrationTest t("notls");
  const std::string config = t.dir() + "/notls.yaml";
  std::ofstream(config) << "listen: [\"0.0.0.0:" << FreePort() << "\"]\n"
                        << "tcp: { insecure: true }\n"
                        << "broker: { uris: [\"" << t.uri() << "\"] }\n"
                        << "producers: { " << t.Business("notls") << ": }\n";
  const CommandResult r = RunCommand({DaemonPathForTests(), "-c", config}, 30s);
  INFO(CommandOutput(r));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err + r.out,
             Catch::Contains("is not a loopback address") && Catch::Contains("set tcp.tls"));
}

}  // namespace
}  // namespace mqs::it
