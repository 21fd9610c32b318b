// Config loading on hostile or careless input (issue 11, defect 9): deep
// nesting, huge and endless files, durations that overflow, log levels in the
// wrong case, control characters. Each is a clear error, never a crash.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "config/config.h"
#include "config/loader_internal.h"

namespace mqs::config {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

std::string ErrorText(const absl::StatusOr<Config>& result) {
  REQUIRE_FALSE(result.ok());
  return std::string(result.status().message());
}

std::filesystem::path TempPath(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("mqs-robust-test-" + std::to_string(::getpid()) + "-" + name);
}

bool HasRawControlChar(const std::string& text) {
  // Errors are joined with '\n'; any other control byte is raw input leaking.
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\n') || u == 0x7f) return true;
  }
  return false;
}

std::string Nested(size_t depth, char open, char close, std::string_view inner = "") {
  return std::string(depth, open) + std::string(inner) + std::string(depth, close);
}

TEST_CASE("config robustness: deeply nested JSON in the INI is an error, not a stack overflow") {
  // 200,000 levels: the recursive JSON -> YAML conversion overflowed the stack.
  const std::string ini = "[rabbitmq]\nconsumer=" + Nested(200000, '[', ']') + "\n";
  std::string err = ErrorText(LoadIniText(ini, "deep.ini"));
  CHECK_THAT(err, Catch::Contains("deep.ini:2: rabbitmq.consumer: nesting deeper than 32 levels"));

  const std::string objects =
      "[rabbitmq]\nproducer={\"a\": {\"exchange\": " + Nested(100000, '[', ']') + "}}\n";
  err = ErrorText(LoadIniText(objects, "deep.ini"));
  CHECK_THAT(err, Catch::Contains("deep.ini:2: rabbitmq.producer: nesting deeper than 32 levels"));

  std::string maps;
  for (int i = 0; i < 50000; ++i) maps += "{\"a\":";
  maps += "1" + std::string(50000, '}');
  err = ErrorText(LoadIniText("[rabbitmq]\nconsumer=" + maps + "\n", "deep.ini"));
  CHECK_THAT(err, Catch::Contains("nesting deeper than 32 levels"));

  // 32 levels are fine as far as nesting goes (the value is still the wrong type).
  err = ErrorText(LoadIniText(
      "[rabbitmq]\nconsumer={\"a\": {\"queue\": " + Nested(30, '[', ']') + "}}\n", "ok.ini"));
  CHECK_THAT(err, !Catch::Contains("nesting"));
  CHECK_THAT(err, Catch::Contains("expected a string"));
}

TEST_CASE("config robustness: deeply nested YAML is an error, not a stack overflow") {
  std::string err =
      ErrorText(LoadYamlText("producers: " + Nested(100000, '[', ']') + "\n", "d.yaml"));
  CHECK_THAT(err, Catch::Contains("d.yaml:1: invalid YAML: nesting deeper than"));
  std::string maps;
  for (int i = 0; i < 100000; ++i) maps += "{a: ";
  err = ErrorText(
      LoadYamlText("producers: " + maps + "1" + std::string(100000, '}') + "\n", "d.yaml"));
  CHECK_THAT(err, Catch::Contains("d.yaml:1: invalid YAML: nesting deeper than 2000 levels"));
  // Unbalanced: a syntax error, found without recursing either.
  CHECK_FALSE(LoadYamlText("producers: " + Nested(100000, '{', '}') + "\n", "d.yaml").ok());
  std::string block;
  for (int i = 0; i < 5000; ++i) block += std::string(static_cast<size_t>(i), ' ') + "- \n";
  CHECK_FALSE(LoadYamlText(block, "d.yaml").ok());
}

TEST_CASE("config robustness: a stray ',' at the top level of YAML is an error, not a hang") {
  // yaml-cpp 0.7's LoadAll returns empty documents for it forever (found by
  // tests/fuzz/config_fuzz.cc): memory ran out.
  std::string err = ErrorText(LoadYamlText(",a: 1\n", "s.yaml"));
  CHECK(err == "s.yaml:1: invalid YAML: unexpected \",\" at column 1");
  err = ErrorText(LoadYamlText("# comment\n  ,\nproducers: { a: }\n", "s.yaml"));
  CHECK(err == "s.yaml:2: invalid YAML: unexpected \",\" at column 3");
  err = ErrorText(LoadYamlText("producers: { a: }\n...\n,\n", "s.yaml"));
  CHECK(err == "s.yaml:3: invalid YAML: unexpected \",\" at column 1");
  // Several documents are still reported as such; an empty file is no businesses.
  err = ErrorText(LoadYamlText("producers: { a: }\n---\nproducers: { b: }\n", "s.yaml"));
  CHECK(err == "s.yaml:2: invalid YAML: expected one YAML document, got 2");
  CHECK_THAT(ErrorText(LoadYamlText("", "s.yaml")), Catch::Contains("got none"));
}

TEST_CASE("config robustness: long lists load in linear time") {
  // 64,000 listen addresses and businesses (about 1 MiB of INI): the
  // duplicate check and Describe compared every pair (14 minutes for 200,000,
  // so about 90 s for these).
  std::string listen;
  std::string producers;
  for (int i = 0; i < 64000; ++i) {
    listen += (i == 0 ? "" : ",") + ("unix:///s/" + std::to_string(i) + ".sock");
    producers += (i == 0 ? "{" : ",") + ("\"b" + std::to_string(i) + "\":{}");
  }
  producers += "}";
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Config> c =
      LoadIniText("[rabbitmq]\nlisten=" + listen + "\nproducer=" + producers + "\n", "long.ini");
  REQUIRE(c.ok());
  CHECK(c->listen.size() == 64000);
  CHECK(Describe(*c).size() > 64000);
  // A complexity check, not a speed target: about 1.3 s optimised, 15 s in
  // the sanitizer builds.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(45));
}

TEST_CASE("config robustness: a config file above 1 MiB is refused") {
  // A valid config padded with comments to 2 MiB: without the cap it loads.
  const std::filesystem::path path = TempPath("big.yaml");
  {
    std::ofstream out(path);
    out << "producers: { a: }\n";
    const std::string comment = "# " + std::string(1021, 'x') + "\n";
    for (int i = 0; i < 2048; ++i) out << comment;
  }
  const std::string err = ErrorText(LoadFile(path.string()));
  std::filesystem::remove(path);
  CHECK_THAT(err, Catch::Contains(path.string() + ": config file larger than 1 MiB"));
}

TEST_CASE("config robustness: a file of exactly 1 MiB still loads") {
  const std::filesystem::path path = TempPath("max.yaml");
  {
    std::string text = "producers: { a: }\n#";
    text.resize((1 << 20) - 1, 'x');
    text += '\n';
    std::ofstream(path) << text;
  }
  absl::StatusOr<Config> c = LoadFile(path.string());
  std::filesystem::remove(path);
  CHECK(c.ok());
}

TEST_CASE("config robustness: an endless file (/dev/zero) is refused without reading it all") {
  absl::StatusOr<Config> c = LoadFile("/dev/zero");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(c.status().message()),
             Catch::Contains("/dev/zero: config file larger than 1 MiB"));
}

TEST_CASE("config robustness: an endless FIFO is refused") {
  const std::filesystem::path path = TempPath("fifo");
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  ::signal(SIGPIPE, SIG_IGN);  // the writer sees EPIPE once the loader gives up
  std::thread writer([&] {
    const int fd = ::open(path.c_str(), O_WRONLY);
    if (fd < 0) return;
    const std::string chunk(65536, '#');
    while (::write(fd, chunk.data(), chunk.size()) > 0) {
    }
    ::close(fd);
  });
  absl::StatusOr<Config> c = LoadFile(path.string());
  writer.join();
  std::filesystem::remove(path);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("config file larger than 1 MiB"));
}

TEST_CASE("config robustness: ParseDuration rejects values that overflow") {
  using internal::ParseDuration;
  CHECK(ParseDuration("999999999999h") == std::nullopt);
  CHECK(ParseDuration("9999999h") == std::nullopt);  // > 100 days
  CHECK(ParseDuration("2400h") == hours(2400));      // the largest accepted: 100 days
  CHECK(ParseDuration("2401h") == std::nullopt);
  CHECK(ParseDuration("144000m") == hours(2400));
  CHECK(ParseDuration("144001m") == std::nullopt);
  CHECK(ParseDuration("8640000000ms") == hours(2400));
  CHECK(ParseDuration("8640000001ms") == std::nullopt);
  CHECK(ParseDuration("9999999999999") == std::nullopt);
}

TEST_CASE("config robustness: every duration key has an upper bound") {
  auto load = [](const std::string& yaml) {
    return LoadYamlText(yaml + "producers: { a: }\n", "b.yaml");
  };
  std::string err = ErrorText(load("publish: { wait_timeout: 9999999h }\n"));
  CHECK_THAT(err, Catch::Contains("b.yaml:1: publish.wait_timeout: expected a duration like"));
  CHECK_THAT(err, Catch::Contains("at most 100 days"));

  err = ErrorText(load("publish: { wait_timeout: 61m }\n"));
  CHECK_THAT(err,
             Catch::Contains("b.yaml:1: publish.wait_timeout: expected a duration above 0 and at "
                             "most 1h, got 61m"));
  CHECK(load("publish: { wait_timeout: 1h }\n")->publish.wait_timeout == hours(1));

  err = ErrorText(load("shutdown: { drain: 2h }\n"));
  CHECK_THAT(err, Catch::Contains("b.yaml:1: shutdown.drain: expected a duration of at most 1h, "
                                  "got 2h"));
  CHECK(load("shutdown: { drain: 1h }\n")->shutdown.drain == hours(1));

  err = ErrorText(load("broker: { connect_timeout: 6m }\n"));
  CHECK_THAT(err, Catch::Contains("b.yaml:1: broker.connect_timeout: expected a duration above 0 "
                                  "and at most 5m, got 6m"));
  CHECK(load("broker: { connect_timeout: 5m }\n")->broker.connect_timeout == minutes(5));

  // INI durations go through the same checks.
  err = ErrorText(LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\nconnect_timeout=1h\n", "b.ini"));
  CHECK_THAT(err, Catch::Contains("b.ini:3: rabbitmq.connect_timeout: expected a duration above 0 "
                                  "and at most 5m, got 1h"));
}

TEST_CASE("config robustness: ParseLogLevel (also --log-level) takes the five names in any case") {
  CHECK(ParseLogLevel("INFO") == "info");
  CHECK(ParseLogLevel("Warn") == "warn");
  CHECK(ParseLogLevel("trace") == "trace");
  CHECK(ParseLogLevel("ERROR") == "error");
  CHECK(ParseLogLevel("DeBuG") == "debug");
  CHECK_FALSE(ParseLogLevel("verbose").has_value());
  CHECK_FALSE(ParseLogLevel("off").has_value());
  CHECK_FALSE(ParseLogLevel("").has_value());
}

TEST_CASE("config robustness: log.level in any case, unknown ones are errors") {
  absl::StatusOr<Config> c = LoadYamlText("log: { level: INFO }\nproducers: { a: }\n", "l.yaml");
  REQUIRE(c.ok());
  CHECK(c->log_level == "info");
  c = LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\nlog_level=Debug\n", "l.ini");
  REQUIRE(c.ok());
  CHECK(c->log_level == "debug");
  const std::string err =
      ErrorText(LoadYamlText("log: { level: loud }\nproducers: { a: }\n", "l.yaml"));
  CHECK_THAT(err, Catch::Contains("l.yaml:1: log.level: expected trace, debug, info, warn or error "
                                  "(any case), got \"loud\""));
}

TEST_CASE("config robustness: control characters in names are errors, escaped in the message") {
  // Business names (YAML keys), exchange and queue names, handles, binding keys.
  std::string err = ErrorText(LoadYamlText(
      "producers:\n  \"pay\\x1b[2Jment\": {}\n  b: { exchange: \"e\\tx\" }\n", "cc.yaml"));
  CHECK_FALSE(HasRawControlChar(err));
  CHECK_THAT(err, Catch::Contains("cc.yaml:2: producers[\"pay\\x1b[2Jment\"]: expected a business "
                                  "name without control characters"));
  CHECK_THAT(err, Catch::Contains("cc.yaml:3: producers[\"b\"].exchange: expected an exchange name "
                                  "without control characters, got \"e\\x09x\""));

  err = ErrorText(LoadYamlText(
      "consumers:\n  c:\n    queue: \"q\\rq\"\n    binding_keys: [\"ok\", \"k\\ney\"]\n"
      "    handle: \"h\\x00\"\n",
      "cc.yaml"));
  CHECK_FALSE(HasRawControlChar(err));
  CHECK_THAT(err, Catch::Contains("cc.yaml:3: consumers[\"c\"].queue: expected a queue name "
                                  "without control characters, got \"q\\x0dq\""));
  CHECK_THAT(err, Catch::Contains("cc.yaml:4: consumers[\"c\"].binding_keys[1]: expected a "
                                  "binding key without control characters, got \"k\\x0aey\""));
  CHECK_THAT(err, Catch::Contains("cc.yaml:5: consumers[\"c\"].handle: expected a handle without "
                                  "control characters, got \"h\\x00\""));

  // An unknown key with a control character: the error is still one line.
  err = ErrorText(LoadYamlText("producers: { a: }\n\"lo\\ng\": 1\n", "cc.yaml"));
  CHECK_FALSE(HasRawControlChar(err));
  CHECK_THAT(err, Catch::Contains("cc.yaml:2: lo\\x0ag: unknown key"));

  // INI: a business name from the JSON map, and a raw control byte in a key.
  err = ErrorText(
      LoadIniText("[rabbitmq]\nconsumer={\"a\\u0007b\":{}}\nlog\x01level=info\n", "cc.ini"));
  CHECK_FALSE(HasRawControlChar(err));
  CHECK_THAT(err, Catch::Contains("cc.ini:2: rabbitmq.consumer[\"a\\x07b\"]: expected a business "
                                  "name without control characters"));
  CHECK_THAT(err, Catch::Contains("cc.ini:3: rabbitmq.log\\x01level: unknown key"));

  // A broker URI with a control character.
  err = ErrorText(LoadYamlText(
      "broker: { uris: \"amqp://u:secret@h\\x7fost/\" }\nproducers: { a: }\n", "u.yaml"));
  CHECK_FALSE(HasRawControlChar(err));
  CHECK_THAT(err, Catch::Contains("u.yaml:1: broker.uris[0]: expected a broker URI without control "
                                  "characters"));
  CHECK_THAT(err, !Catch::Contains("secret"));
}

}  // namespace
}  // namespace mqs::config
