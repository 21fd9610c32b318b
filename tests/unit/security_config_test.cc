// Security settings of the config (issue 14). Who gets in: unix sockets by
// default, with a mode and group; TCP only on loopback and only when asked
// for with tcp.insecure. Secrets: the broker password from a file or the
// environment, never shown.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.h"
#include "scratch_file.h"

namespace mqs::config {
namespace {

using mqs::testing::ScratchFile;

std::string Errors(const std::string& yaml) {
  absl::StatusOr<Config> c = LoadYamlText(yaml, "s.yaml");
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST_CASE("listeners: by default a unix socket only, mode 0660, the daemon's group") {
  absl::StatusOr<Config> c = LoadYamlText("producers: { a: }\n", "s.yaml");
  REQUIRE(c.ok());
  CHECK(c->listen == std::vector<std::string>{"unix:///run/mq-sidecar/mq-sidecar.sock"});
  CHECK(c->socket.mode == 0660);
  CHECK(c->socket.group.empty());
  CHECK_FALSE(c->tcp.insecure);
}

TEST_CASE("listeners: a TCP listener needs tcp.insecure, and a loopback address even then") {
  const std::string plain = Errors("listen: [\"127.0.0.1:50051\"]\nproducers: { a: }\n");
  CHECK_THAT(plain, Catch::Contains("s.yaml:1: listen[0]: \"127.0.0.1:50051\" is a TCP listener "
                                    "without TLS or credentials") &&
                        Catch::Contains("set tcp.insecure: true"));

  absl::StatusOr<Config> ok = LoadYamlText(
      "listen: [\"127.0.0.1:50051\", \"[::1]:50052\", \"localhost:50053\"]\n"
      "tcp: { insecure: true }\nproducers: { a: }\n",
      "s.yaml");
  REQUIRE(ok.ok());
  CHECK(ok->tcp.insecure);

  for (const char* addr : {"0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051", "example.com:1"}) {
    INFO(addr);
    const std::string err = Errors(std::string("listen: [\"") + addr +
                                   "\"]\ntcp: { insecure: true }\nproducers: { a: }\n");
    CHECK_THAT(err, Catch::Contains("listen[0]") && Catch::Contains("is not a loopback address"));
  }
}

TEST_CASE("listeners: socket.mode is octal and never lets others in, socket.group must exist") {
  absl::StatusOr<Config> c =
      LoadYamlText("socket: { mode: \"0600\", group: nogroup }\nproducers: { a: }\n", "s.yaml");
  REQUIRE(c.ok());
  CHECK(c->socket.mode == 0600);
  CHECK(c->socket.group == "nogroup");
  // Unquoted, as octal digits too.
  absl::StatusOr<Config> bare = LoadYamlText("socket: { mode: 0770 }\nproducers: { a: }\n", "s");
  REQUIRE(bare.ok());
  CHECK(bare->socket.mode == 0770);

  CHECK_THAT(Errors("socket: { mode: \"0666\" }\nproducers: { a: }\n"),
             Catch::Contains("socket.mode: 0666 lets other users connect; at most 0770"));
  CHECK_THAT(Errors("socket: { mode: \"rw-rw----\" }\nproducers: { a: }\n"),
             Catch::Contains("s.yaml:1: socket.mode: expected an octal mode like \"0660\""));
  CHECK_THAT(Errors("socket: { mode: \"0999\" }\nproducers: { a: }\n"),
             Catch::Contains("expected an octal mode"));
  CHECK_THAT(Errors("socket: { group: no-such-group-here }\nproducers: { a: }\n"),
             Catch::Contains("socket.group: no group named \"no-such-group-here\""));
  CHECK_THAT(Errors("socket: { owner: x }\nproducers: { a: }\n"),
             Catch::Contains("socket.owner: unknown key"));
}

TEST_CASE("listeners: the seed's INI takes [socket] and [tcp] sections") {
  absl::StatusOr<Config> c = LoadIniText(
      "[rabbitmq]\naddress=amqp://h/\nlisten=127.0.0.1:6000\nproducer={\"a\":{}}\n"
      "[socket]\nmode=0640\n[tcp]\ninsecure=true\n",
      "s.ini");
  REQUIRE(c.ok());
  CHECK(c->socket.mode == 0640);
  CHECK(c->tcp.insecure);
  absl::StatusOr<Config> refused = LoadIniText(
      "[rabbitmq]\naddress=amqp://h/\nlisten=127.0.0.1:6000\nproducer={\"a\":{}}\n", "s.ini");
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("tcp.insecure"));
}

TEST_CASE("secrets: broker.password_file gives every URI its password, encoded, never shown") {
  ScratchFile file("password.txt", "s3cr/t:@x%\nsecond line ignored\n");
  absl::StatusOr<Config> c = LoadYamlText(
      "broker:\n  uris: [\"amqp://svc@h1/\", \"amqp://svc@h2:5673/prod\"]\n  password_file: " +
          file.path() + "\nproducers: { a: }\n",
      "s.yaml");
  REQUIRE(c.ok());
  REQUIRE(c->broker.uris.size() == 2);
  for (const std::string& uri : c->broker.uris) {
    absl::StatusOr<BrokerUri> parsed = ParseBrokerUri(uri);
    REQUIRE(parsed.ok());
    CHECK(parsed->user == "svc");
    CHECK(parsed->password == "s3cr/t:@x%");
  }
  CHECK(ParseBrokerUri(c->broker.uris[1])->vhost == "prod");
  CHECK(Describe(*c).find("s3cr") == std::string::npos);

  // The environment wins over the file.
  LoadOptions env;
  env.broker_password = "from-env";
  absl::StatusOr<Config> e = LoadYamlText(
      "broker: { uris: \"amqp://svc@h1/\", password_file: /nonexistent }\nproducers: { a: }\n",
      "s.yaml", env);
  REQUIRE(e.ok());
  CHECK(ParseBrokerUri(e->broker.uris[0])->password == "from-env");
}

TEST_CASE("secrets: password_file errors name the key and never the password") {
  ScratchFile file("password.txt", "hunter2\n");
  const std::string own =
      Errors("broker: { uris: \"amqp://svc:other@h1/\", password_file: " + file.path() +
             " }\nproducers: { a: }\n");
  CHECK_THAT(own, Catch::Contains("broker.uris[0]") && Catch::Contains("password of its own"));
  CHECK(own.find("other") == std::string::npos);
  CHECK(own.find("hunter2") == std::string::npos);
  const std::string no_user = Errors(
      "broker: { uris: \"amqp://h1/\", password_file: " + file.path() + " }\nproducers: { a: }\n");
  CHECK_THAT(no_user, Catch::Contains("names its user"));
  CHECK_THAT(Errors("broker: { uris: \"amqp://svc@h1/\", password_file: /nonexistent/pw }\n"
                    "producers: { a: }\n"),
             Catch::Contains("broker.password_file: cannot read \"/nonexistent/pw\""));
  ScratchFile empty("password.txt", "\n");
  CHECK_THAT(Errors("broker: { uris: \"amqp://svc@h1/\", password_file: " + empty.path() +
                    " }\nproducers: { a: }\n"),
             Catch::Contains("the first line is empty"));
}

}  // namespace
}  // namespace mqs::config
