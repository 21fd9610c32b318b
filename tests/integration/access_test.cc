// Access (issue 14): which client may use which business. A daemon with an
// `access` section: a client on a socket of its own, a client with a bearer
// token, and (over mutual TLS) a client by its certificate subject. Allowed
// businesses work; others are PERMISSION_DENIED naming the business and the
// client (a PublishStream request FAILED alone, the stream going on); a call
// that is no client's is UNAUTHENTICATED. Health stays open (the harness
// checks it on the shared socket, with no token).
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "test_pki.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

constexpr char kToken[] = "it-token-5f0c2a9e81d64b7c";

std::shared_ptr<grpc::Channel> UnixChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Unary Publish with an optional "authorization: Bearer <token>".
grpc::Status PublishAs(pb::PubSub::Stub& stub, const std::string& biz, const std::string& token,
                       pb::PublishResult* result = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 15s);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  pb::PublishResult ignored;
  return stub.Publish(&ctx, MakePublish(biz, "m-" + biz, 1), result ? result : &ignored);
}

grpc::Status TopologyAs(pb::PubSub::Stub& stub, const std::string& token) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  pb::Topology topology;
  return stub.GetTopology(&ctx, pb::GetTopologyRequest(), &topology);
}

grpc::Status ReloadAs(pb::PubSub::Stub& stub, const std::string& token,
                      pb::ReloadResponse* response = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  pb::ReloadResponse ignored;
  return stub.Reload(&ctx, pb::ReloadRequest(), response != nullptr ? response : &ignored);
}

// Opens a Subscribe stream on `biz` and returns how it ended: a refused open
// ends it at once; with `opened` (a condition that shows the stream is
// consuming), it is cancelled once that holds and reads CANCELLED.
grpc::Status SubscribeAs(pb::PubSub::Stub& stub, const std::string& biz, const std::string& token,
                         const std::function<bool()>& opened = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 15s);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  auto stream = stub.Subscribe(&ctx);
  pb::SubscribeRequest open;
  open.mutable_open()->set_business(biz);
  stream->Write(open);
  if (opened) {
    CHECK(opened());
    ctx.TryCancel();
  }
  pb::Delivery d;
  while (stream->Read(&d)) {
  }
  return stream->Finish();
}

TEST_CASE(
    "integration: access: a client's own socket may use its businesses only, the shared socket "
    "without a token is UNAUTHENTICATED") {
  IntegrationTest t("accsock");
  const std::string mine = t.Business("mine");
  const std::string other = t.Business("other");
  const std::string sock = "unix://" + t.dir() + "/billing.sock";
  Daemon& d = t.StartDaemon({{.name = mine}, {.name = other}},
                            {.extra_yaml = "access:\n  billing:\n    socket: \"" + sock +
                                           "\"\n    socket_mode: \"0600\"\n    publish: [" + mine +
                                           "]\n    subscribe: [" + mine + "]\n"});
  struct stat st {};
  REQUIRE(::stat(sock.substr(7).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);

  auto billing = pb::PubSub::NewStub(UnixChannel(sock));
  pb::PublishResult result;
  REQUIRE(PublishAs(*billing, mine, "", &result).ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  const grpc::Status denied = PublishAs(*billing, other, "");
  CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(denied.error_message() == "client 'billing' may not publish to business '" + other +
                                      "' (Publish; access[\"billing\"].publish)");
  CHECK(TopologyAs(*billing, "").ok());
  const grpc::Status sub_denied = SubscribeAs(*billing, other, "");
  CHECK(sub_denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(sub_denied.error_message(),
             Catch::Contains("may not subscribe to business '" + other));

  // The dead-letter and control methods go by the business they use.
  const auto list_dead = [&](const std::string& biz) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 15s);
    pb::ListDeadLettersRequest request;
    request.set_business(biz);
    pb::ListDeadLettersResponse response;
    return billing->ListDeadLetters(&ctx, request, &response);
  };
  const grpc::Status own_dead = list_dead(mine);
  CHECK(own_dead.ok());
  const grpc::Status other_dead = list_dead(other);
  CHECK(other_dead.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(other_dead.error_message(),
             Catch::Contains("may not subscribe to business '" + other + "' (ListDeadLetters"));
  {
    // No ping.business here: a known client gets the call's own error.
    grpc::ClientContext ctx;
    pb::ReportStatusRequest request;
    pb::ReportStatusResponse response;
    CHECK(billing->ReportStatus(&ctx, request, &response).error_code() ==
          grpc::StatusCode::FAILED_PRECONDITION);
    grpc::ClientContext anon;
    CHECK(d.stub().ReportStatus(&anon, request, &response).error_code() ==
          grpc::StatusCode::UNAUTHENTICATED);
  }

  // PublishStream: the denied request FAILs alone, the others are confirmed
  // and consumed.
  Subscriber sub(*billing, {.business = mine, .prefetch = 10, .consumer_name = "acc"});
  const PublishStreamOutcome out = PublishStream(
      *billing,
      {MakePublish(mine, "s-1", 1), MakePublish(other, "s-2", 2), MakePublish(mine, "s-3", 3)});
  INFO(StatusText(out.status));
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == 3);
  for (const pb::PublishResult& r : out.results) {
    INFO(ResultText(r));
    if (r.sequence() == 2) {
      CHECK(r.status() == pb::PublishResult::FAILED);
      CHECK_THAT(r.error(), Catch::Contains("client 'billing' may not publish to business '" +
                                            other + "' (PublishStream"));
    } else {
      CHECK(r.status() == pb::PublishResult::CONFIRMED);
    }
  }
  REQUIRE(sub.WaitForCount(3, 15s));  // m-<mine> from the unary call, s-1, s-3
  CHECK(MessageIds(sub.deliveries()) == std::vector<std::string>{"m-" + mine, "s-1", "s-3"});
  for (const pb::Delivery& delivery : sub.deliveries()) sub.Ack(delivery.delivery_id());
  CHECK(sub.Leave().ok());

  // The shared socket: no client without a token.
  const grpc::Status anon = TopologyAs(d.stub(), "");
  CHECK(anon.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK_THAT(anon.error_message(), Catch::Contains("no client identified"));
  CHECK(PublishAs(d.stub(), mine, "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  const PublishStreamOutcome anon_stream = PublishStream(d.stub(), {MakePublish(mine, "x", 1)});
  CHECK(anon_stream.status.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(anon_stream.results.empty());
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);

  const std::string log = d.Log();
  CHECK_THAT(log, Catch::Contains("listening on " + sock + " for client billing alone (mode 0600"));
  CHECK_THAT(log, Catch::Contains("access: Publish denied to client billing: client 'billing' may "
                                  "not publish to business '" +
                                  other + "'"));
  CHECK_THAT(log, Catch::Contains("access: GetTopology refused, no client"));
}

TEST_CASE("integration: access: a bearer token is its client, a wrong or missing one is not") {
  IntegrationTest t("acctoken");
  const std::string mine = t.Business("mine");
  const std::string other = t.Business("other");
  // "it.<pid>.<test>.mi*": a pattern that matches mine, not other.
  const std::string mine_pattern = mine.substr(0, mine.rfind('.') + 1) + "mi*";
  const std::string token_file = t.dir() + "/reports.token";
  std::ofstream(token_file) << kToken << "\n";
  // An operator's token: may reload the config, and use no business.
  constexpr char kOpsToken[] = "it-ops-token-0d2b6c1f9a";
  const std::string ops_file = t.dir() + "/ops.token";
  std::ofstream(ops_file) << kOpsToken << "\n";
  Daemon& d = t.StartDaemon(
      {{.name = mine}, {.name = other}},
      {.extra_yaml = "access:\n  reports:\n    token_file: " + token_file + "\n    publish: [\"" +
                     mine_pattern + "\"]\n    subscribe: [" + mine +
                     "]\n  ops:\n    token_file: " + ops_file + "\n    reload: true\n"});
  pb::PublishResult result;
  REQUIRE(PublishAs(d.stub(), mine, kToken, &result).ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  const grpc::Status denied = PublishAs(d.stub(), other, kToken);
  CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(denied.error_message(), Catch::Contains("client 'reports' may not publish to "
                                                     "business '" +
                                                     other + "'"));
  CHECK(SubscribeAs(d.stub(), other, kToken).error_code() == grpc::StatusCode::PERMISSION_DENIED);
  // Allowed: the stream stays open until the client cancels it.
  CHECK(SubscribeAs(d.stub(), mine, kToken, [&] {
          return WaitForQueue(t.admin(), mine + ".queue", 1, std::nullopt);
        }).error_code() == grpc::StatusCode::CANCELLED);
  CHECK(TopologyAs(d.stub(), kToken).ok());
  // Reload: the ops client only.
  const grpc::Status reload_denied = ReloadAs(d.stub(), kToken);
  CHECK(reload_denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(reload_denied.error_message(),
             Catch::Contains("client 'reports' may not reload the config"));
  CHECK(ReloadAs(d.stub(), "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  pb::ReloadResponse reloaded;
  const grpc::Status reload_ok = ReloadAs(d.stub(), kOpsToken, &reloaded);
  INFO("Reload as ops: " << StatusText(reload_ok));
  CHECK(reload_ok.ok());
  CHECK(reloaded.reload().result() == "unchanged");
  CHECK(PublishAs(d.stub(), mine, kOpsToken).error_code() == grpc::StatusCode::PERMISSION_DENIED);
  // mqctl sends the token of --token-file (or $MQ_SIDECAR_TOKEN_FILE).
  const auto mqctl = [&](const std::vector<std::string>& args) {
    std::vector<std::string> argv{MqctlPath(), "--address", d.address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, 20s);
  };
  const CommandResult ops_reload = mqctl({"--token-file", ops_file, "reload"});
  INFO(CommandOutput(ops_reload));
  CHECK(ops_reload.exit_code == 0);
  CHECK_THAT(ops_reload.out, Catch::Contains("\"result\":\"unchanged\""));
  const CommandResult reports_reload = mqctl({"--token-file", token_file, "reload"});
  INFO(CommandOutput(reports_reload));
  CHECK(reports_reload.exit_code == 1);
  CHECK_THAT(reports_reload.err, Catch::Contains("PERMISSION_DENIED: client 'reports' may not "
                                                 "reload the config"));
  CHECK(mqctl({"--token-file", token_file, "topology"}).exit_code == 0);
  const CommandResult anonymous = mqctl({"topology"});
  CHECK(anonymous.exit_code == 1);
  CHECK_THAT(anonymous.err, Catch::Contains("UNAUTHENTICATED"));
  const CommandResult no_file = mqctl({"--token-file", t.dir() + "/absent.token", "topology"});
  CHECK(no_file.exit_code == 1);
  CHECK_THAT(no_file.err, Catch::Contains("mqctl: reading the token file " + t.dir() +
                                          "/absent.token: No such file or directory"));

  const std::string wrong = std::string(kToken) + "x";
  const grpc::Status bad = PublishAs(d.stub(), mine, wrong);
  CHECK(bad.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK_THAT(bad.error_message(), Catch::Contains("bearer token is no client's"));
  CHECK(TopologyAs(d.stub(), "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(SubscribeAs(d.stub(), mine, "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  {
    // The scheme in any case.
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("bearer ") + kToken);
    pb::Topology topology;
    CHECK(d.stub().GetTopology(&ctx, pb::GetTopologyRequest(), &topology).ok());
  }
  {
    // Not a bearer token: the bare token without "Bearer ".
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", kToken);
    pb::Topology topology;
    CHECK(d.stub().GetTopology(&ctx, pb::GetTopologyRequest(), &topology).error_code() ==
          grpc::StatusCode::UNAUTHENTICATED);
  }
  // A flood of refused requests logs 10 lines per client, not one each
  // (the count held back comes with the next line, after 10 s).
  for (int i = 0; i < 50; ++i) {
    CHECK(PublishAs(d.stub(), other, kToken).error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(TopologyAs(d.stub(), "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  }
  const std::string log = d.Log();
  CHECK_THAT(log, Catch::Contains("access: Publish denied to client reports"));
  CHECK(log.find(kToken) == std::string::npos);
  const auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  CHECK(count("denied to client reports") == 10);
  CHECK(count("refused, no client") == 10);
}

TEST_CASE(
    "integration: access: over mutual TLS the certificate subject is the client, another "
    "certificate of the same CA is not") {
  IntegrationTest t("acccert");
  const TestPki pki(t.dir());
  const std::string mine = t.Business("mine");
  const std::string other = t.Business("other");
  const int port = FreePort();
  t.StartDaemon(
      {{.name = mine}, {.name = other}},
      {.extra_yaml = "tcp:\n  tls:\n    cert: " + pki.Path("server-a.pem") + "\n    key: " +
                     pki.Path("server-a.key") + "\n    client_ca: " + pki.Path("ca-a.pem") +
                     "\naccess:\n  console:\n    cert_subject: \"CN=client-a,O=mqs-test\"\n"
                     "    publish: [" +
                     mine + "]\n",
       .extra_listen = {"127.0.0.1:" + std::to_string(port)}});
  auto console = pb::PubSub::NewStub(TlsChannel(pki, port, "ca-a.pem", "client-a"));
  pb::PublishResult result;
  REQUIRE(PublishAs(*console, mine, "", &result).ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  const grpc::Status denied = PublishAs(*console, other, "");
  CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(denied.error_message(), Catch::Contains("client 'console' may not publish"));

  auto stranger = pb::PubSub::NewStub(TlsChannel(pki, port, "ca-a.pem", "client-a2"));
  const grpc::Status unknown = PublishAs(*stranger, mine, "");
  CHECK(unknown.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK_THAT(unknown.error_message(), Catch::Contains("'CN=client-a2,O=mqs-test' is no client's"));
}

TEST_CASE(
    "integration: access: over TCP with server-only TLS a bearer token is its client, a wrong or "
    "missing one is UNAUTHENTICATED, another business PERMISSION_DENIED") {
  IntegrationTest t("acctlstoken");
  const TestPki pki(t.dir());
  const std::string mine = t.Business("mine");
  const std::string other = t.Business("other");
  const std::string token_file = t.dir() + "/web.token";
  std::ofstream(token_file) << kToken << "\n";
  const int port = FreePort();
  // TLS without client_ca: no client certificate is asked for; the token
  // alone says who calls.
  t.StartDaemon({{.name = mine}, {.name = other}},
                {.extra_yaml = "tcp:\n  tls:\n    cert: " + pki.Path("server-a.pem") +
                               "\n    key: " + pki.Path("server-a.key") +
                               "\naccess:\n  web:\n    token_file: " + token_file +
                               "\n    publish: [" + mine + "]\n    subscribe: [" + mine + "]\n",
                 .extra_listen = {"0.0.0.0:" + std::to_string(port)}});
  auto tcp = pb::PubSub::NewStub(TlsChannel(pki, port, "ca-a.pem"));
  pb::PublishResult result;
  const grpc::Status allowed = PublishAs(*tcp, mine, kToken, &result);
  INFO(StatusText(allowed));
  REQUIRE(allowed.ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  CHECK(SubscribeAs(*tcp, mine, kToken, [&] {
          return WaitForQueue(t.admin(), mine + ".queue", 1, std::nullopt);
        }).error_code() == grpc::StatusCode::CANCELLED);

  const grpc::Status denied = PublishAs(*tcp, other, kToken);
  CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK_THAT(denied.error_message(),
             Catch::Contains("client 'web' may not publish to business '" + other + "'"));
  CHECK(SubscribeAs(*tcp, other, kToken).error_code() == grpc::StatusCode::PERMISSION_DENIED);

  const grpc::Status wrong = PublishAs(*tcp, mine, std::string(kToken) + "x");
  CHECK(wrong.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK_THAT(wrong.error_message(), Catch::Contains("bearer token is no client's"));
  CHECK(PublishAs(*tcp, mine, "").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(TopologyAs(*tcp, "").error_code() == grpc::StatusCode::UNAUTHENTICATED);

  // The listener is TLS only: plaintext gets nothing, with or without a token.
  auto plain = pb::PubSub::NewStub(PlainChannel(port));
  CHECK(PublishAs(*plain, mine, kToken).error_code() == grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace mqs::it
