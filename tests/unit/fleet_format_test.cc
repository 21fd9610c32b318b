// mqctl's renderings of the control plane (client/fleet_format), without a daemon.
#include "fleet_format.h"

#include <catch2/catch.hpp>
#include <limits>
#include <string>
#include <vector>

#include "delivery_json.h"

namespace {

using mqsidecar::v1::ListServersResponse;
using mqsidecar::v1::SendTaskResponse;
using mqsidecar::v1::ServerInfo;
using mqsidecar::v1::TaskResult;

constexpr int64_t kNow = 1'700'000'000'000;

ServerInfo Server(const std::string& app, const std::string& region, const std::string& server) {
  ServerInfo s;
  s.mutable_identity()->set_app(app);
  s.mutable_identity()->set_region(region);
  s.mutable_identity()->set_server(server);
  return s;
}

}  // namespace

TEST_CASE("fleet_format: ages in the largest unit under twice its size") {
  using mqctl::FormatAge;
  CHECK(FormatAge(kNow - 3'000, kNow) == "3s ago");
  CHECK(FormatAge(kNow - 3'999, kNow) == "3s ago");  // whole seconds, rounded down
  CHECK(FormatAge(kNow, kNow) == "0s ago");
  CHECK(FormatAge(kNow - 119'999, kNow) == "119s ago");
  CHECK(FormatAge(kNow - 120'000, kNow) == "2m ago");
  CHECK(FormatAge(kNow - int64_t{119} * 60'000, kNow) == "119m ago");
  CHECK(FormatAge(kNow - int64_t{120} * 60'000, kNow) == "2h ago");
  CHECK(FormatAge(kNow - 47 * 3'600'000LL, kNow) == "47h ago");
  CHECK(FormatAge(kNow - 48 * 3'600'000LL, kNow) == "2d ago");
  CHECK(FormatAge(kNow - 400 * 86'400'000LL, kNow) == "400d ago");
}

TEST_CASE("fleet_format: a future moment is 0s ago and no moment is never") {
  CHECK(mqctl::FormatAge(kNow + 5'000, kNow) == "0s ago");  // the daemon's clock ahead of ours
  CHECK(mqctl::FormatAge(0, kNow) == "never");
  CHECK(mqctl::FormatAge(-1, kNow) == "never");
}

TEST_CASE("fleet_format: identities join the parts that are set") {
  mqsidecar::v1::Identity id;
  CHECK(mqctl::FormatIdentity(id) == "");
  id.set_app("usdtsvr");
  CHECK(mqctl::FormatIdentity(id) == "usdtsvr");
  id.set_region("1");
  id.set_server("0");
  CHECK(mqctl::FormatIdentity(id) == "usdtsvr.1.0");
}

TEST_CASE("fleet_format: streams are sorted business=n pairs, '-' when none") {
  ServerInfo s;
  CHECK(mqctl::FormatStreams(s.streams()) == "-");
  (*s.mutable_streams())["usdt.transfer"] = 2;
  (*s.mutable_streams())["task.usdtsvr"] = 1;
  (*s.mutable_streams())["task.usdtsvr.1.0"] = 0;
  CHECK(mqctl::FormatStreams(s.streams()) == "task.usdtsvr=1,task.usdtsvr.1.0=0,usdt.transfer=2");
}

TEST_CASE("fleet_format: loads read back as the same number") {
  CHECK(mqctl::FormatLoad(0.3) == "0.3");
  CHECK(mqctl::FormatLoad(0) == "0");
  CHECK(mqctl::FormatLoad(2) == "2");
  CHECK(mqctl::FormatLoad(-1.5) == "-1.5");
  CHECK(mqctl::FormatLoad(1e20) == "1e+20");
  CHECK(mqctl::FormatLoad(std::numeric_limits<double>::quiet_NaN()) == "nan");
  CHECK(mqctl::FormatLoad(std::numeric_limits<double>::infinity()) == "inf");
  CHECK(mqctl::FormatLoad(-std::numeric_limits<double>::infinity()) == "-inf");
}

TEST_CASE("fleet_format: status is state and load, '-' when never reported") {
  ServerInfo s;
  CHECK(mqctl::FormatStatus(s) == "-");
  s.mutable_status();  // reported, with every field at its default
  CHECK(mqctl::FormatStatus(s) == "load=0");
  s.mutable_status()->set_state("ready");
  s.mutable_status()->set_load(0.3);
  CHECK(mqctl::FormatStatus(s) == "ready,load=0.3");
}

TEST_CASE("fleet_format: tables align columns without trailing blanks") {
  const std::string table = mqctl::RenderTable({{"A", "BB", "C"}, {"long", "", "z"}, {"x"}});
  CHECK(table ==
        "A     BB  C\n"
        "long  -   z\n"
        "x     -   -\n");
}

TEST_CASE("fleet_format: table widths count characters, control characters become '?'") {
  const std::string table =
      mqctl::RenderTable({{"STATE", "N"}, {"\xc3\xa9t\xc3\xa9", "1"}, {"a\x1b[2Jb", "2"}});
  CHECK(table ==
        "STATE   N\n"
        "\xc3\xa9t\xc3\xa9     1\n"
        "a?[2Jb  2\n");
}

TEST_CASE("fleet_format: the servers table") {
  ListServersResponse resp;
  ServerInfo a = Server("usdtsvr", "1", "0");
  a.set_host("host-a");
  a.set_last_seen_ms(kNow - 3'000);
  a.set_broker_state("connected");
  (*a.mutable_streams())["usdt.transfer"] = 2;
  a.mutable_status()->set_state("ready");
  a.mutable_status()->set_load(0.25);
  *resp.add_servers() = a;
  ServerInfo b = Server("otc", "2", "10");
  b.set_host("h");
  b.set_last_seen_ms(kNow - 45'000);
  b.set_broker_state("reconnecting");
  b.set_stale(true);
  *resp.add_servers() = b;

  CHECK(
      mqctl::RenderServersTable(resp, kNow) ==
      "APP      REGION  SERVER  HOST    LAST-SEEN  STATE         STREAMS          STATUS           "
      "STALE\n"
      "usdtsvr  1       0       host-a  3s ago     connected     usdt.transfer=2  "
      "ready,load=0.25  -\n"
      "otc      2       10      h       45s ago    reconnecting  -                -               "
      " yes\n");
}

TEST_CASE("fleet_format: no servers is the header alone") {
  CHECK(mqctl::RenderServersTable(ListServersResponse(), kNow) ==
        "APP  REGION  SERVER  HOST  LAST-SEEN  STATE  STREAMS  STATUS  STALE\n");
}

TEST_CASE("fleet_format: a server as JSON, identity flattened, maps sorted") {
  ServerInfo s = Server("usdtsvr", "1", "0");
  s.set_host("host-a");
  s.set_pid(42);
  s.set_version("0.1.0");
  s.set_started_at_ms(kNow - 60'000);
  s.set_uptime_ms(59'000);
  s.set_interval_ms(10'000);
  s.set_last_seen_ms(kNow - 1'000);
  s.set_broker_state("connected");
  (*s.mutable_streams())["z"] = 1;
  (*s.mutable_streams())["a"] = 3;
  CHECK(mqctl::DumpLine(mqctl::ServerInfoToJson(s)) ==
        R"({"app":"usdtsvr","region":"1","server":"0","host":"host-a","pid":42,"version":"0.1.0",)"
        R"("started_at_ms":1699999940000,"uptime_ms":59000,"interval_ms":10000,)"
        R"("last_seen_ms":1699999999000,"broker_state":"connected","streams":{"a":3,"z":1},)"
        R"("status":null,"stale":false})");

  s.mutable_status()->set_state("busy");
  s.mutable_status()->set_load(0.5);
  s.mutable_status()->set_message("draining soon");
  (*s.mutable_status()->mutable_labels())["zone"] = "b";
  (*s.mutable_status()->mutable_labels())["build"] = "7";
  s.mutable_status()->set_reported_at_ms(kNow - 5'000);
  s.set_stale(true);
  const nlohmann::ordered_json j = mqctl::ServerInfoToJson(s);
  CHECK(mqctl::DumpLine(j["status"]) ==
        R"({"state":"busy","load":0.5,"message":"draining soon","labels":{"build":"7","zone":"b"},)"
        R"("reported_at_ms":1699999995000})");
  CHECK(j["stale"] == true);
}

TEST_CASE("fleet_format: a load JSON cannot carry is null") {
  ServerInfo s;
  s.mutable_status()->set_load(std::numeric_limits<double>::quiet_NaN());
  CHECK(mqctl::ServerInfoToJson(s)["status"]["load"].is_null());
}

TEST_CASE("fleet_format: task results as JSON, payload as text or base64") {
  TaskResult r;
  r.set_correlation_id("0123456789abcdef.fedcba9876543210");
  r.set_state("done");
  r.set_payload(R"({"ok":true})");
  r.set_content_type("application/json");
  r.mutable_from()->set_app("usdtsvr");
  r.mutable_from()->set_region("1");
  r.mutable_from()->set_server("0");
  (*r.mutable_headers())["task-state"] = "done";
  r.set_completed_at_ms(kNow);
  CHECK(mqctl::DumpLine(mqctl::TaskResultToJson(r)) ==
        R"({"correlation_id":"0123456789abcdef.fedcba9876543210","state":"done",)"
        R"("from":{"app":"usdtsvr","region":"1","server":"0"},"payload":"{\"ok\":true}",)"
        R"("content_type":"application/json","headers":{"task-state":"done"},)"
        R"("completed_at_ms":1700000000000})");

  r.set_payload(std::string("\xff\x00\x01", 3));
  const nlohmann::ordered_json j = mqctl::TaskResultToJson(r);
  CHECK(j["payload_base64"] == "/wAB");
  CHECK_FALSE(j.contains("payload"));
}

TEST_CASE("fleet_format: a send-task response as JSON, result null without --wait") {
  SendTaskResponse resp;
  resp.set_exchange("task.usdtsvr");
  resp.set_command("distribute");
  resp.set_message_id("m-1");
  resp.set_correlation_id("c-1");
  CHECK(mqctl::DumpLine(mqctl::SendTaskResponseToJson(resp)) ==
        R"({"exchange":"task.usdtsvr","command":"distribute","message_id":"m-1",)"
        R"("correlation_id":"c-1","result":null})");
  resp.mutable_result()->set_state("done");
  CHECK(mqctl::SendTaskResponseToJson(resp)["result"]["state"] == "done");
}

TEST_CASE("fleet_format: task send's text output, payload last") {
  SendTaskResponse resp;
  resp.set_exchange("task.usdtsvr.1.0");
  resp.set_command("run");
  resp.set_message_id("m-1");
  resp.set_correlation_id("c-1");
  CHECK(mqctl::RenderSendTask(resp) ==
        "correlation_id: c-1\n"
        "exchange: task.usdtsvr.1.0\n"
        "command: run\n"
        "message_id: m-1\n");

  TaskResult* r = resp.mutable_result();
  r->set_state("failed");
  r->mutable_from()->set_app("usdtsvr");
  r->mutable_from()->set_region("1");
  r->mutable_from()->set_server("0");
  r->set_content_type("text/plain");
  r->set_payload("line 1\nline 2");
  CHECK(mqctl::RenderSendTask(resp) ==
        "correlation_id: c-1\n"
        "exchange: task.usdtsvr.1.0\n"
        "command: run\n"
        "message_id: m-1\n"
        "state: failed\n"
        "from: usdtsvr.1.0\n"
        "content_type: text/plain\n"
        "payload: line 1\nline 2\n");

  r->clear_from();
  r->set_payload(std::string("\x80", 1));
  const std::string text = mqctl::RenderSendTask(resp);
  CHECK(text.find("from: -\n") != std::string::npos);
  CHECK(text.find("payload_base64: gA==\n") != std::string::npos);
}

TEST_CASE("fleet_format: task send exit codes") {
  using grpc::StatusCode;
  for (const bool answered : {true, false}) {
    CHECK(mqctl::TaskSendExitCode(StatusCode::OK, answered) == 0);
    CHECK(mqctl::TaskSendExitCode(StatusCode::NOT_FOUND, answered) == 2);
    CHECK(mqctl::TaskSendExitCode(StatusCode::DEADLINE_EXCEEDED, answered) == 2);
    CHECK(mqctl::TaskSendExitCode(StatusCode::ABORTED, answered) == 2);
    CHECK(mqctl::TaskSendExitCode(StatusCode::INVALID_ARGUMENT, answered) == 1);
    CHECK(mqctl::TaskSendExitCode(StatusCode::FAILED_PRECONDITION, answered) == 1);
    CHECK(mqctl::TaskSendExitCode(StatusCode::UNKNOWN, answered) == 1);
  }
  // The daemon's "the connection died before the confirm" vs no daemon at all.
  CHECK(mqctl::TaskSendExitCode(StatusCode::UNAVAILABLE, true) == 2);
  CHECK(mqctl::TaskSendExitCode(StatusCode::UNAVAILABLE, false) == 1);
}

TEST_CASE("fleet_format: key=value arguments, a key given twice is refused") {
  google::protobuf::Map<std::string, std::string> out;
  CHECK_FALSE(mqctl::CollectKeyValues({"a=1", "b=", "c=x=y"}, "--label", &out));
  CHECK(out.size() == 3);
  CHECK(out["a"] == "1");
  CHECK(out["b"] == "");
  CHECK(out["c"] == "x=y");

  google::protobuf::Map<std::string, std::string> dup;
  const auto error = mqctl::CollectKeyValues({"a=1", "a=2"}, "--header", &dup);
  REQUIRE(error);
  CHECK(*error == "--header a given more than once");
}
