// Who gets in (issue 14): the listener rules of the config. Unix sockets by
// default, with a mode and group; TCP only on loopback and only when asked
// for with tcp.insecure.
#include <catch2/catch.hpp>
#include <string>

#include "config/config.h"

namespace mqs::config {
namespace {

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

}  // namespace
}  // namespace mqs::config
