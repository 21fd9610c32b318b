// util/log_fields.h: JSON log lines and the structured fields of text lines;
// log.format in the config.
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "util/log_fields.h"

namespace mqs::util {
namespace {

TEST_CASE("log format: a JSON line has time (RFC 3339, ms, UTC), level, thread, message, fields") {
  using namespace std::chrono;
  // 2026-12-01T05:50:41.123Z
  const system_clock::time_point t{milliseconds(1'796'104'241'123)};
  const LogField fields[] = {{"business", "otc.order"}, {"uri", "amqp://u:****@h:5672/", false}};
  const std::string line = FormatJsonLine(t, spdlog::level::warn, 4242, "connection lost", fields);
  REQUIRE(line.back() == '\n');
  const nlohmann::json j = nlohmann::json::parse(line);
  CHECK(j["time"] == "2026-12-01T05:50:41.123Z");
  CHECK(j["level"] == "warn");
  CHECK(j["thread"] == 4242);
  CHECK(j["message"] == "connection lost");
  CHECK(j["business"] == "otc.order");
  CHECK(j["uri"] == "amqp://u:****@h:5672/");
  CHECK(j.size() == 6);
  CHECK(nlohmann::json::parse(FormatJsonLine(t, spdlog::level::err, 1, "x", {}))["level"] ==
        "error");
}

TEST_CASE("log format: JSON escapes quotes, backslashes, control bytes and invalid UTF-8") {
  std::string out;
  AppendJsonString(&out, std::string("a\"b\\c\nd\te\x01\x7f\xff\xc3\xa9", 14));
  CHECK(out == "\"a\\\"b\\\\c\\nd\\te\\u0001\\u007f\xef\xbf\xbd\xc3\xa9\"");
  const std::string line =
      FormatJsonLine(std::chrono::system_clock::time_point{}, spdlog::level::info, 1,
                     std::string("forged\n{\"level\":\"x\"}\xc0", 21), {});
  // One line, and it parses (nlohmann refuses invalid UTF-8).
  CHECK(line.find('\n') == line.size() - 1);
  const nlohmann::json j = nlohmann::json::parse(line);
  CHECK(j["message"] == "forged\n{\"level\":\"x\"}\xef\xbf\xbd");
  CHECK(j["time"] == "1970-01-01T00:00:00.000Z");
}

TEST_CASE("log format: text fields are key=value, quoted when needed, escaped") {
  std::string out = "msg";
  const LogField fields[] = {{"business", "otc.order"},
                             {"said", "in the message", false},
                             {"uri", "a b"},
                             {"x", "l1\nl2"},
                             {"e", ""}};
  AppendTextFields(&out, fields);
  CHECK(out == "msg business=otc.order uri=\"a b\" x=l1\\x0al2 e=\"\"");
}

TEST_CASE("log format: ParseLogFormat takes text and json in any case") {
  CHECK(ParseLogFormat("text") == LogFormat::kText);
  CHECK(ParseLogFormat("JSON") == LogFormat::kJson);
  CHECK_FALSE(ParseLogFormat("logfmt").has_value());
  CHECK_FALSE(ParseLogFormat("").has_value());
}

TEST_CASE("log format: log.format and INI log_format, an unknown one names key and values") {
  using config::LoadIniText;
  using config::LoadYamlText;
  absl::StatusOr<config::Config> c = LoadYamlText("producers: { a: }\n", "l.yaml");
  REQUIRE(c.ok());
  CHECK(c->log_format == "text");
  c = LoadYamlText("log: { level: info, format: JSON }\nproducers: { a: }\n", "l.yaml");
  REQUIRE(c.ok());
  CHECK(c->log_format == "json");
  CHECK(c->log_level == "info");
  c = LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\nlog_level=debug\nlog_format=json\n", "l.ini");
  REQUIRE(c.ok());
  CHECK(c->log_format == "json");
  CHECK(c->log_level == "debug");
  c = LoadYamlText("log: { format: xml }\nproducers: { a: }\n", "l.yaml");
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(
      std::string(c.status().message()),
      Catch::Contains("l.yaml:1: log.format: expected text or json (any case), got \"xml\""));
  c = LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\nlog_format=xml\n", "l.ini");
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("log_format"));
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("expected text or json"));
}

}  // namespace
}  // namespace mqs::util
