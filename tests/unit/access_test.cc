// Access (issue 14): which client may publish to and subscribe to which
// business. AccessPolicy alone (no sockets): identity + RPC + business ->
// allowed, denied or unauthenticated; and the `access` section's config
// rules.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.h"
#include "scratch_file.h"
#include "server/access_policy.h"

namespace mqs {
namespace {

using mqs::testing::ScratchFile;

using server::AccessPolicy;
using server::Caller;
using server::Decision;
using server::Rpc;
using Verdict = Decision::Verdict;

config::Access ThreeClients() {
  config::Access a;
  a.enabled = true;
  config::AccessClient billing;
  billing.name = "billing";
  billing.socket = "unix:///run/x/billing.sock";
  billing.publish = {"usdt.transfer", "task.*"};
  billing.subscribe = {"usdt.transfer"};
  config::AccessClient reports;
  reports.name = "reports";
  reports.token_file = "/x";
  reports.token = "reports-token-0123456789";
  reports.subscribe = {"usdt.*"};
  config::AccessClient ops;
  ops.name = "ops";
  ops.cert_subject = "CN=ops,O=example";
  ops.publish = {"*"};
  ops.subscribe = {"*"};
  a.clients = {billing, ops, reports};
  return a;
}

TEST_CASE("access policy: patterns") {
  CHECK(AccessPolicy::Matches("usdt.transfer", "usdt.transfer"));
  CHECK_FALSE(AccessPolicy::Matches("usdt.transfer", "usdt.transfer2"));
  CHECK_FALSE(AccessPolicy::Matches("usdt.transfer", "usdt"));
  CHECK(AccessPolicy::Matches("task.*", "task.usdtsvr"));
  CHECK(AccessPolicy::Matches("task.*", "task.usdtsvr.1.0"));
  CHECK_FALSE(AccessPolicy::Matches("task.*", "task"));
  CHECK_FALSE(AccessPolicy::Matches("task.*", "tasks.x"));
  CHECK(AccessPolicy::Matches("*", "anything.at.all"));
  CHECK(AccessPolicy::Matches("*.dead", "usdt.transfer.dead"));
  CHECK(AccessPolicy::Matches("a*b*c", "a-x-b-y-c"));
  CHECK_FALSE(AccessPolicy::Matches("a*b*c", "a-x-c-y-b"));
  CHECK_FALSE(AccessPolicy::Matches("*", ""));
}

TEST_CASE("access policy: constant-time comparison is equality") {
  CHECK(server::ConstantTimeEquals("abc", "abc"));
  CHECK_FALSE(server::ConstantTimeEquals("abc", "abd"));
  CHECK_FALSE(server::ConstantTimeEquals("abc", "abcd"));
  CHECK_FALSE(server::ConstantTimeEquals("", "a"));
  CHECK(server::ConstantTimeEquals("", ""));
}

TEST_CASE("access policy: a client by its socket, token or certificate subject") {
  const config::Access access = ThreeClients();
  const AccessPolicy policy(access);
  const Decision by_socket =
      policy.Check({.socket_client = "billing"}, Rpc::kPublish, "usdt.transfer");
  CHECK(by_socket.allowed());
  CHECK(by_socket.client == "billing");
  CHECK(policy.Check({.bearer_token = "reports-token-0123456789"}, Rpc::kSubscribe, "usdt.transfer")
            .allowed());
  CHECK(
      policy.Check({.cert_subject = "CN=ops,O=example"}, Rpc::kReplayDeadLetters, "x.y").allowed());
  // The socket is the identity: a token sent on it changes nothing.
  CHECK(policy
            .Check({.socket_client = "billing", .bearer_token = "reports-token-0123456789"},
                   Rpc::kSubscribe, "usdt.other")
            .verdict == Verdict::kDenied);
  // A certificate named in access wins over a token.
  CHECK(policy
            .Check({.bearer_token = "reports-token-0123456789", .cert_subject = "CN=ops,O=example"},
                   Rpc::kPublish, "usdt.transfer")
            .client == "ops");
  // An unknown certificate falls back to the token.
  CHECK(policy
            .Check({.bearer_token = "reports-token-0123456789", .cert_subject = "CN=who"},
                   Rpc::kSubscribe, "usdt.transfer")
            .client == "reports");
}

TEST_CASE("access policy: a rotated token file replaces the client's token without a restart") {
  ScratchFile reports_file("rotate-reports", "reports-token-0123456789\n");
  ScratchFile audit_file("rotate-audit", "audit-token-0123456789ab\n");
  config::Access access = ThreeClients();
  access.clients[2].token_file = reports_file.path();
  config::AccessClient audit;
  audit.name = "audit";
  audit.token_file = audit_file.path();
  audit.token = "audit-token-0123456789ab";
  access.clients.push_back(audit);
  // Looked at on every call that sends a token (1 s in the daemon).
  const AccessPolicy policy(access, std::chrono::milliseconds(0));
  const auto client_of = [&](const std::string& token) {
    return policy.Check({.bearer_token = token}, Rpc::kGetTopology, "").client;
  };
  CHECK(client_of("reports-token-0123456789") == "reports");

  std::ofstream(reports_file.path()) << "reports-token-rotated-0001\n";
  CHECK(client_of("reports-token-rotated-0001") == "reports");
  CHECK(client_of("reports-token-0123456789").empty());  // the old one is gone
  CHECK(client_of("audit-token-0123456789ab") == "audit");

  // A file that holds no valid token, then another client's token, then is
  // gone: the client keeps the token it had.
  std::ofstream(reports_file.path()) << "short\n";
  CHECK(client_of("reports-token-rotated-0001") == "reports");
  std::ofstream(reports_file.path()) << "audit-token-0123456789ab\n";
  CHECK(client_of("reports-token-rotated-0001") == "reports");
  CHECK(client_of("audit-token-0123456789ab") == "audit");
  std::filesystem::remove(reports_file.path());
  CHECK(client_of("reports-token-rotated-0001") == "reports");
}

TEST_CASE("access policy: no client is unauthenticated, a business not allowed is denied") {
  const config::Access access = ThreeClients();
  const AccessPolicy policy(access);
  const Decision none = policy.Check({}, Rpc::kGetTopology, "");
  CHECK(none.verdict == Verdict::kUnauthenticated);
  CHECK(none.client.empty());
  CHECK_THAT(none.reason, Catch::Contains("no client identified"));
  const Decision bad_token =
      policy.Check({.bearer_token = "wrong-token-0123456789"}, Rpc::kPublish, "usdt.transfer");
  CHECK(bad_token.verdict == Verdict::kUnauthenticated);
  CHECK_THAT(bad_token.reason, Catch::Contains("bearer token is no client's"));
  CHECK(bad_token.reason.find("wrong-token") == std::string::npos);
  const Decision bad_subject = policy.Check({.cert_subject = "CN=mallory"}, Rpc::kSubscribe, "a");
  CHECK(bad_subject.verdict == Verdict::kUnauthenticated);
  CHECK_THAT(bad_subject.reason, Catch::Contains("CN=mallory"));
  // A socket name the config does not hold (cannot happen): nobody.
  CHECK(policy.Check({.socket_client = "reports"}, Rpc::kGetTopology, "").verdict ==
        Verdict::kUnauthenticated);

  const Decision denied =
      policy.Check({.bearer_token = "reports-token-0123456789"}, Rpc::kPublish, "usdt.transfer");
  CHECK(denied.verdict == Verdict::kDenied);
  CHECK(denied.client == "reports");
  CHECK(denied.reason ==
        "client 'reports' may not publish to business 'usdt.transfer' (Publish; "
        "access[\"reports\"].publish)");
  const Decision sub = policy.Check({.socket_client = "billing"}, Rpc::kSubscribe, "task.x");
  CHECK(sub.verdict == Verdict::kDenied);
  CHECK_THAT(sub.reason, Catch::Contains("may not subscribe to business 'task.x'"));
}

TEST_CASE("access policy: what each RPC needs") {
  const config::Access access = ThreeClients();
  const AccessPolicy policy(access);
  const Caller billing{.socket_client = "billing"};  // publish usdt.transfer, task.*
  const Caller reports{.bearer_token = "reports-token-0123456789"};  // subscribe usdt.*
  // Any known client: GetTopology, and an RPC whose business is not set.
  CHECK(policy.Check(reports, Rpc::kGetTopology, "").allowed());
  CHECK(policy.Check(reports, Rpc::kReportStatus, "").allowed());
  // Publishing RPCs need publish on their business.
  for (Rpc rpc : {Rpc::kPublish, Rpc::kPublishStream, Rpc::kPublishBatchStream, Rpc::kSendTask,
                  Rpc::kCompleteTask, Rpc::kReportStatus}) {
    INFO(server::RpcName(rpc));
    CHECK(policy.Check(billing, rpc, "task.usdtsvr").allowed());
    CHECK(policy.Check(reports, rpc, "usdt.transfer").verdict == Verdict::kDenied);
  }
  // Reading RPCs need subscribe.
  for (Rpc rpc : {Rpc::kSubscribe, Rpc::kSubscribeBatch, Rpc::kListDeadLetters,
                  Rpc::kReplayDeadLetters, Rpc::kListServers}) {
    INFO(server::RpcName(rpc));
    CHECK(policy.Check(reports, rpc, "usdt.transfer").allowed());
    CHECK(policy.Check(billing, rpc, "task.usdtsvr").verdict == Verdict::kDenied);
  }
}

TEST_CASE("access policy: Reload needs the client's reload: true, whatever it may publish") {
  config::Access access = ThreeClients();
  access.clients[0].reload = true;  // billing
  const AccessPolicy policy(access);
  CHECK(policy.Check({.socket_client = "billing"}, Rpc::kReload, "").allowed());
  // ops may publish and subscribe to everything, and still may not reload.
  const Decision ops = policy.Check({.cert_subject = "CN=ops,O=example"}, Rpc::kReload, "");
  CHECK(ops.verdict == Verdict::kDenied);
  CHECK(ops.reason == "client 'ops' may not reload the config (access[\"ops\"].reload)");
  CHECK(policy.Check({}, Rpc::kReload, "").verdict == Verdict::kUnauthenticated);
}

// --- the config section ---

std::string Errors(const std::string& yaml) {
  absl::StatusOr<config::Config> c = config::LoadYamlText(yaml, "a.yaml");
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

constexpr char kBusinesses[] =
    "producers: { usdt.transfer: , server.ping: }\nconsumers: { usdt.transfer: }\n";

TEST_CASE("access config: clients by socket, token and subject load, absent means off") {
  CHECK_FALSE(config::LoadYamlText(kBusinesses, "a.yaml")->access.enabled);
  const ScratchFile token("t1", "reports-token-0123456789\nignored\n");
  const ScratchFile ca("ca.pem", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n");
  const ScratchFile key("k.pem", "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n");
  absl::StatusOr<config::Config> c = config::LoadYamlText(
      std::string(kBusinesses) + "tcp: { tls: { cert: " + ca.path() + ", key: " + key.path() +
          ", client_ca: " + ca.path() +
          " } }\n"
          "access:\n"
          "  reports: { token_file: " +
          token.path() +
          ", subscribe: [\"usdt.*\"] }\n"
          "  billing:\n"
          "    socket: unix:///run/mq-sidecar/billing.sock\n"
          "    socket_mode: \"0600\"\n"
          "    socket_group: nogroup\n"
          "    publish: [usdt.transfer, \"task.*\"]\n"
          "    subscribe: usdt.transfer\n"
          "  ops: { cert_subject: \"CN=ops,O=example\", publish: \"*\", subscribe: \"*\", "
          "reload: true }\n",
      "a.yaml");
  REQUIRE(c.ok());
  REQUIRE(c->access.enabled);
  REQUIRE(c->access.clients.size() == 3);
  const config::AccessClient& billing = c->access.clients[0];  // sorted by name
  CHECK(billing.name == "billing");
  CHECK(billing.socket_mode == 0600);
  CHECK(billing.socket_group == "nogroup");
  CHECK(billing.publish == std::vector<std::string>{"usdt.transfer", "task.*"});
  CHECK(billing.subscribe == std::vector<std::string>{"usdt.transfer"});
  CHECK(c->access.clients[1].cert_subject == "CN=ops,O=example");
  CHECK(c->access.clients[1].reload);
  CHECK_FALSE(billing.reload);
  CHECK(c->access.clients[2].token == "reports-token-0123456789");
  const std::string described = config::Describe(*c);
  CHECK_THAT(described, Catch::Contains("billing: socket unix:///run/mq-sidecar/billing.sock "
                                        "(mode 0600, group nogroup)"));
  CHECK_THAT(described, Catch::Contains("reports: token from " + token.path()));
  CHECK_THAT(described, Catch::Contains("subscribe [*]; reload\n"));
  CHECK(described.find("reports-token") == std::string::npos);
  // The socket takes socket.mode and socket.group by default.
  absl::StatusOr<config::Config> d = config::LoadYamlText(
      std::string(kBusinesses) +
          "socket: { mode: \"0640\" }\naccess: { a: { socket: \"unix:///run/x/a.sock\" } }\n",
      "a.yaml");
  REQUIRE(d.ok());
  CHECK(d->access.clients[0].socket_mode == 0640);
}

TEST_CASE("access config: the INI form, one client per line of [access], reads as the YAML") {
  const ScratchFile token("t5", "reports-token-0123456789\n");
  const std::string businesses =
      "[rabbitmq]\nproducer={\"usdt.transfer\":{}}\nconsumer={\"usdt.transfer\":{}}\n";
  absl::StatusOr<config::Config> c = config::LoadIniText(
      businesses +
          "[access]\n"
          "billing = {\"socket\": \"unix:///run/mq-sidecar/billing.sock\", \"socket_mode\": "
          "\"0600\", \"publish\": [\"usdt.transfer\", \"task.*\"], \"subscribe\": "
          "\"usdt.transfer\"}\n"
          "reports = {\"token_file\": \"" +
          token.path() + "\", \"subscribe\": [\"usdt.*\"]}\n",
      "a.ini");
  REQUIRE(c.ok());
  REQUIRE(c->access.enabled);
  REQUIRE(c->access.clients.size() == 2);
  CHECK(c->access.clients[0].name == "billing");
  CHECK(c->access.clients[0].socket_mode == 0600);
  CHECK(c->access.clients[0].publish == std::vector<std::string>{"usdt.transfer", "task.*"});
  CHECK(c->access.clients[1].token == "reports-token-0123456789");
  CHECK(c->access.clients[1].subscribe == std::vector<std::string>{"usdt.*"});

  // Errors name the line and the client's key.
  const auto error_of = [&](const std::string& access) {
    absl::StatusOr<config::Config> bad = config::LoadIniText(businesses + access, "b.ini");
    REQUIRE_FALSE(bad.ok());
    return std::string(bad.status().message());
  };
  CHECK_THAT(error_of("[access]\nops = {\"publish\": [\"*\"], \"colour\": 1}\n"),
             Catch::Contains("b.ini:5") && Catch::Contains("colour"));
  CHECK_THAT(error_of("[access]\nops = {\"cert_subject\": \"CN=a\"}\nops = {}\n"),
             Catch::Contains("b.ini:6") && Catch::Contains("duplicate client (first at line 5)"));
  CHECK_THAT(error_of("[access]\nops = not json\n"), Catch::Contains("b.ini:5"));
  // An empty [access] admits no one: a config error, as in YAML.
  CHECK_THAT(error_of("[access]\n"), Catch::Contains("access"));
}

TEST_CASE("access config: errors name the client and the key") {
  const ScratchFile token("t2", "a-token-of-enough-length\n");
  const ScratchFile same("t3", "a-token-of-enough-length\n");
  const ScratchFile shorty("t4", "short\n");
  const std::string b = kBusinesses;
  // Duplicate names.
  CHECK_THAT(Errors(b + "access:\n  a: { socket: \"unix:///run/x/a.sock\" }\n"
                        "  a: { socket: \"unix:///run/x/b.sock\" }\n"),
             Catch::Contains("a.yaml:5: access[\"a\"]: duplicate client (first at line 4)"));
  // An unreadable token file names the key.
  CHECK_THAT(Errors(b + "access:\n  r: { token_file: /nonexistent/token }\n"),
             Catch::Contains("a.yaml:4: access[\"r\"].token_file: cannot read "
                             "\"/nonexistent/token\""));
  CHECK_THAT(
      Errors(b + "access: { r: { token_file: " + shorty.path() + " } }\n"),
      Catch::Contains("access[\"r\"].token_file") && Catch::Contains("at least 16 characters"));
  CHECK_THAT(Errors(b + "access: { r: { token_file: " + token.path() +
                    " }, s: { token_file: " + same.path() + " } }\n"),
             Catch::Contains("access[\"s\"].token_file: the token in") &&
                 Catch::Contains("is also client \"r\"'s"));
  // Exactly one "who".
  CHECK_THAT(Errors(b + "access: { r: { publish: usdt.transfer } }\n"),
             Catch::Contains("access[\"r\"]: expected exactly one of socket, token_file, "
                             "cert_subject (who the client is), got 0"));
  CHECK_THAT(Errors(b + "access: { r: { socket: \"unix:///run/x/r.sock\", token_file: " +
                    token.path() + " } }\n"),
             Catch::Contains("got 2"));
  CHECK_THAT(Errors(b + "access: { r: }\n"), Catch::Contains("access[\"r\"]: expected settings"));
  // A plain name must be configured; a pattern need not match anything.
  const std::string unknown =
      Errors(b + "access: { r: { token_file: " + token.path() +
             ", publish: [\"task.*\", \"nothing.*\", usdt.transfer, usdt.other] } }\n");
  CHECK_THAT(unknown, Catch::Contains("access[\"r\"].publish[3]: no business named "
                                      "\"usdt.other\""));
  CHECK(unknown.find("publish[0]") == std::string::npos);
  CHECK(unknown.find("publish[1]") == std::string::npos);
  CHECK(unknown.find("publish[2]") == std::string::npos);
  CHECK_THAT(
      Errors(b + "access: { r: { token_file: " + token.path() + ", subscribe: [\"a b\"] } }\n"),
      Catch::Contains("access[\"r\"].subscribe[0]: expected a business name or a pattern"));
  // Sockets: unix only, not shared, a safe mode, an existing group.
  CHECK_THAT(Errors(b + "access: { r: { socket: \"127.0.0.1:5000\" } }\n"),
             Catch::Contains("access[\"r\"].socket: expected unix:///absolute/path"));
  CHECK_THAT(Errors(b + "listen: \"unix:///run/x/s.sock\"\n"
                        "access: { r: { socket: \"unix:///run/x/s.sock\" } }\n"),
             Catch::Contains("is also in listen"));
  CHECK_THAT(Errors(b + "access: { r: { socket: \"unix:///run/x/s.sock\" }, q: { socket: "
                        "\"unix:///run/x/s.sock\" } }\n"),
             Catch::Contains("access[\"r\"].socket: socket \"unix:///run/x/s.sock\" is also "
                             "client \"q\"'s"));
  CHECK_THAT(Errors(b + "access: { r: { socket: \"unix:///run/x/s.sock\", socket_mode: "
                        "\"0666\" } }\n"),
             Catch::Contains("access[\"r\"].socket_mode: 0666 lets other users connect"));
  CHECK_THAT(Errors(b + "access: { r: { socket: \"unix:///run/x/s.sock\", socket_group: "
                        "no-such-group-here } }\n"),
             Catch::Contains("access[\"r\"].socket_group: no group named"));
  CHECK_THAT(
      Errors(b + "access: { r: { token_file: " + token.path() + ", socket_mode: \"0600\" } }\n"),
      Catch::Contains("access[\"r\"].socket_mode: applies to a client's own socket"));
  // A certificate subject needs client certificates.
  CHECK_THAT(Errors(b + "access: { r: { cert_subject: \"CN=r\" } }\n"),
             Catch::Contains("access[\"r\"].cert_subject: a client certificate is asked for "
                             "only with tcp.tls.client_ca"));
  CHECK_THAT(Errors(b + "access: {}\n"), Catch::Contains("access: expected at least one client"));
  CHECK_THAT(Errors(b + "access: { r: { socket: \"unix:///run/x/s.sock\", read: [x] } }\n"),
             Catch::Contains("access[\"r\"].read: unknown key"));
}

}  // namespace
}  // namespace mqs
