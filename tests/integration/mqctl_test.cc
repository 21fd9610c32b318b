// mqctl end to end against a real daemon: the load mode (--count/--rate and
// its summary), --file, subscribe --ack-multiple, health through the
// generated grpc.health.v1 client, and the documented exit codes (0 ok, 1 RPC
// or I/O error, 2 not confirmed / not serving, 64 usage, CLI11's own errors
// included).

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "nlohmann/json.hpp"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

TEST_CASE(
    "integration: mqctl publish --count N --rate R publishes N copies with their own ids and "
    "prints a JSON summary (counts, rate, latency), and subscribe --ack-multiple consumes and "
    "acks them all") {
  IntegrationTest t("mqctl-load");
  const std::string biz = t.Business("load");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 64}});

  const std::string payload_file = t.dir() + "/payload.bin";
  {
    std::ofstream f(payload_file, std::ios::binary);
    f << "transfer\xff"
      << "bytes";
  }
  constexpr int kCount = 600;
  const CommandResult pub = RunCommand(
      {MqctlPath(), "--address", d.address(), "publish", biz, "usdt.approved", "--file",
       payload_file, "--count", std::to_string(kCount), "--rate", "3000", "--batch", "50"},
      60s);
  INFO(CommandOutput(pub));
  REQUIRE(pub.exit_code == 0);
  const std::vector<std::string> lines = OutputLines(pub.out);
  REQUIRE(lines.size() == 1);
  const auto summary = nlohmann::json::parse(lines[0]);
  CHECK(summary.at("sent") == kCount);
  CHECK(summary.at("answered") == kCount);
  CHECK(summary.at("confirmed") == kCount);
  CHECK(summary.at("not_confirmed") == 0);
  CHECK(summary.at("by_status").at("CONFIRMED") == kCount);
  // Paced at 3,000/s: 600 take at least 0.2 s.
  CHECK(summary.at("seconds").get<double>() >= 0.19);
  CHECK(summary.at("per_second").get<double>() > 0);
  const auto& latency = summary.at("latency_ms");
  CHECK(latency.at("p50").get<double>() > 0);
  CHECK(latency.at("p50").get<double>() <= latency.at("p99").get<double>());
  CHECK(latency.at("p99").get<double>() <= latency.at("max").get<double>());
  REQUIRE(WaitForQueue(t.admin(), queue, std::nullopt, static_cast<uint32_t>(kCount)));

  const CommandResult sub =
      RunCommand({MqctlPath(), "--address", d.address(), "subscribe", biz, "--count",
                  std::to_string(kCount), "--prefetch", "100", "--ack-multiple"},
                 60s);
  INFO(CommandOutput(sub));
  REQUIRE(sub.exit_code == 0);
  std::set<std::string> ids;
  for (const std::string& line : OutputLines(sub.out)) {
    const auto j = nlohmann::json::parse(line);
    ids.insert(j.at("message_id").get<std::string>());
    CHECK(j.at("payload_base64") == "dHJhbnNmZXL/Ynl0ZXM=");  // not UTF-8: base64
  }
  CHECK(ids.size() == static_cast<size_t>(kCount));  // each its own message id
  // Acked, not requeued by the stream's end: nothing comes back.
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 0u));
}

TEST_CASE(
    "integration: mqctl health answers through grpc.health.v1, and every documented exit code "
    "holds (0, 1 RPC error, 2 not confirmed, 64 usage errors including CLI11's own)") {
  IntegrationTest t("mqctl-exit");
  const std::string biz = t.Business("exit");
  const std::string sink = t.Business("sink");  // a producer nobody consumes: unroutable
  Daemon& d = t.StartDaemon({{.name = biz}, {.name = sink, .consumer = false}});
  const auto run = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{MqctlPath(), "--address", d.address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, 30s);
  };

  const CommandResult health = run({"health"});
  INFO(CommandOutput(health));
  CHECK(health.exit_code == 0);
  CHECK(health.out == "SERVING\n");
  const CommandResult unknown_service = run({"health", "--service", "no.such.service"});
  CHECK(unknown_service.exit_code == 1);  // NOT_FOUND from the health service
  CHECK_THAT(unknown_service.err, Catch::Contains("NOT_FOUND"));

  // 1: an RPC error (nobody listens there; INVALID_ARGUMENT for a business
  // the daemon does not have).
  const CommandResult nobody = RunCommand(
      {MqctlPath(), "--address", "unix://" + t.dir() + "/nobody.sock", "--timeout", "2s", "health"},
      30s);
  CHECK(nobody.exit_code == 1);
  CHECK_THAT(nobody.err, Catch::Contains("UNAVAILABLE"));
  const CommandResult bad_business = run({"publish", "no.such.business", "key", "x"});
  CHECK(bad_business.exit_code == 1);
  CHECK_THAT(bad_business.err, Catch::Contains("INVALID_ARGUMENT"));

  // 2: answered, not confirmed (no queue takes it).
  const CommandResult unroutable = run({"publish", sink, "key", "x"});
  INFO(CommandOutput(unroutable));
  CHECK(unroutable.exit_code == 2);
  CHECK_THAT(unroutable.out, Catch::Contains("UNROUTABLE"));
  const CommandResult unroutable_load = run({"publish", sink, "key", "x", "--count", "20"});
  CHECK(unroutable_load.exit_code == 2);
  CHECK_THAT(unroutable_load.out, Catch::Contains("\"UNROUTABLE\":20"));

  // 64: usage, ours and CLI11's, each with one line naming the problem.
  const std::vector<std::pair<std::vector<std::string>, std::string>> usage = {
      {{"publish", biz}, "routing_key"},                                   // CLI11: missing
      {{"publish", biz, "key", "x", "--no-such-flag"}, "--no-such-flag"},  // CLI11: unknown
      {{"frobnicate"}, "subcommand"},                                      // CLI11: subcommand
      {{"publish", biz, "key", "x", "--rate", "10"}, "--count"},           // CLI11: needs
      {{"publish", biz, "key", "x", "--count", "0"}, "--count"},           // CLI11: range
      {{"publish", biz, "key", "x", "--file", "/etc/hostname"}, "--file"},
      {{"publish", biz, "key", "--count", "5", "--message-id", "m"}, "--message-id"},
      {{"subscribe", biz, "--ack-multiple", "--no-ack"}, "--no-ack"},  // CLI11: excludes
      {{"--timeout", "soon", "health"}, "--timeout"},
  };
  for (const auto& [args, names] : usage) {
    const CommandResult r = run(args);
    INFO(CommandOutput(r));
    CHECK(r.exit_code == 64);
    CHECK_THAT(r.err, Catch::Contains(names));
  }
}

}  // namespace
}  // namespace mqs::it
