// Logs: log.format json writes one JSON object per line (time, level,
// thread, message, and fields such as business and uri), and no log line, in
// either format, ever holds the broker password (docs/operations.md, "Logs").
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "broker_proxy.h"
#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// CutProxy: a TCP proxy in front of the broker whose Cut() drops every link
// at once (a reconnect without touching the shared broker); it keeps
// accepting new links.
class CutProxy final : public BrokerProxy {
 public:
  explicit CutProxy(int broker_port) : BrokerProxy(broker_port) { Start(); }
  ~CutProxy() override { Stop(); }
  void Cut() { CutAll(); }

 private:
  void Serve(int client, int broker) override {
    std::thread up([client, broker] { Copy(client, broker); });
    Copy(broker, client);
    up.join();
  }
};

// Runs a daemon at debug level in `format` whose broker URIs carry the
// password (guest:guest): the first URI refuses connections, the second
// goes through a CutProxy. Publishes and consumes, cuts both connections,
// waits for the reconnect, publishes again, stops; returns the whole log.
std::string LogOfARun(IntegrationTest& t, const std::string& format, const std::string& biz,
                      std::string* proxied_uri) {
  REQUIRE_THAT(t.uri(), Catch::StartsWith("amqp://guest:guest@127.0.0.1:5672"));
  CutProxy proxy(5672);
  *proxied_uri = "amqp://guest:guest@127.0.0.1:" + std::to_string(proxy.port()) + "/";
  Daemon& d =
      t.StartDaemon({{.name = biz}}, {.uris = {"amqp://guest:guest@127.0.0.1:1/", *proxied_uri},
                                      .log_level = "debug",
                                      .log_format = format});
  Subscriber sub(d.stub(), {.business = biz, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, std::nullopt));
  PublishConfirmed(d.stub(), biz, 3, "before");
  REQUIRE(sub.WaitForCount(3, 15s));
  proxy.Cut();
  // Both connections notice, reconnect, and the stream consumes again.
  REQUIRE(WaitUntil(
      [&] {
        const std::string log = d.Log();
        size_t lost = 0;
        for (size_t at = log.find("connection lost"); at != std::string::npos;
             at = log.find("connection lost", at + 1)) {
          ++lost;
        }
        return lost >= 2;
      },
      20s));
  PublishConfirmed(d.stub(), biz, 3, "after");
  REQUIRE(sub.WaitForCount(6, 20s));
  sub.Leave();
  d.Stop();
  return d.Log();
}

void CheckNoPassword(const std::string& log) {
  // The password is "guest": it shows as a credential only after a colon.
  CHECK(log.find("guest:guest") == std::string::npos);
  CHECK(log.find(":guest@") == std::string::npos);
  CHECK_THAT(log, Catch::Contains("guest:****@127.0.0.1:1/"));
}

TEST_CASE(
    "integration: log.format json writes one JSON object per line with time, level, thread, "
    "message, business and uri fields, and never the broker password") {
  IntegrationTest t("jsonlog");
  const std::string biz = t.Business("logged");
  std::string uri;
  const std::string log = LogOfARun(t, "json", biz, &uri);
  CheckNoPassword(log);
  const std::string masked = "amqp://guest:****@" + uri.substr(uri.find("127.0.0.1"));

  const std::regex time(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
  const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error", "critical"};
  std::istringstream in(log);
  std::string line;
  int lines = 0;
  std::set<std::string> lost_on, connected_to, business_lines;
  while (std::getline(in, line)) {
    ++lines;
    INFO(line);
    nlohmann::json j;
    REQUIRE_NOTHROW(j = nlohmann::json::parse(line));
    REQUIRE(j.is_object());
    REQUIRE(j["time"].is_string());
    CHECK(std::regex_match(j["time"].get<std::string>(), time));
    CHECK(levels.count(j["level"].get<std::string>()) == 1);
    CHECK(j["thread"].is_number_unsigned());
    REQUIRE(j["message"].is_string());
    const std::string message = j["message"];
    if (j.contains("uri") && j.contains("connection")) {
      if (message.find("connection lost") != std::string::npos) lost_on.insert(j["uri"]);
      if (message.find("connected to") != std::string::npos) connected_to.insert(j["uri"]);
    }
    if (j.contains("business") && j["business"] == biz) business_lines.insert(message);
  }
  CHECK(lines > 10);
  CHECK(lost_on == std::set<std::string>{masked});
  CHECK(connected_to == std::set<std::string>{masked});
  CHECK_FALSE(business_lines.empty());
}

TEST_CASE(
    "integration: a debug-level text log holds no broker password through connect failures, "
    "publish, subscribe and a reconnect") {
  IntegrationTest t("textlog");
  const std::string biz = t.Business("logged");
  std::string uri;
  const std::string log = LogOfARun(t, "text", biz, &uri);
  CheckNoPassword(log);
  // Text lines as before: the stream's line now also says its business.
  CHECK_THAT(log, Catch::Contains("[publisher] connection lost"));
  CHECK_THAT(log, Catch::Contains("business=" + biz));
}

}  // namespace
}  // namespace mqs::it
