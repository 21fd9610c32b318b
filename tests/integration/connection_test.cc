// Connection::Open against the local broker: the socket it opens carries TCP
// keepalive and TCP_USER_TIMEOUT (issue 11, defect 8), heartbeat or not.
#include "amqp/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "harness.h"

namespace mqs::it {
namespace {

int GetIntOption(int fd, int level, int name) {
  int value = -1;
  socklen_t size = sizeof(value);
  REQUIRE(::getsockopt(fd, level, name, &value, &size) == 0);
  return value;
}

TEST_CASE(
    "integration: broker sockets get TCP keepalive and a user timeout with and without "
    "heartbeats") {
  for (const int heartbeat_s : {0, 7}) {
    INFO("heartbeat " << heartbeat_s << " s");
    amqp::ConnectOptions options;
    options.heartbeat = std::chrono::seconds(heartbeat_s);
    options.connection_name = "it-socket-timeouts";
    auto conn = amqp::Connection::Open(AmqpUri(), options);
    REQUIRE(conn.ok());
    const int fd = (*conn)->fd();
    REQUIRE(fd >= 0);
    // The heartbeat in force after the broker's answer decides the user timeout.
    const int negotiated = (*conn)->heartbeat_seconds();
    CHECK(negotiated == heartbeat_s);
    // The values of docs/configuration.md (broker.heartbeat).
    CHECK(GetIntOption(fd, SOL_SOCKET, SO_KEEPALIVE) == 1);
    CHECK(GetIntOption(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 10);
    CHECK(GetIntOption(fd, IPPROTO_TCP, TCP_KEEPINTVL) == 5);
    CHECK(GetIntOption(fd, IPPROTO_TCP, TCP_KEEPCNT) == 3);
    CHECK(GetIntOption(fd, IPPROTO_TCP, TCP_USER_TIMEOUT) ==
          (negotiated == 0 ? 30000 : 2 * negotiated * 1000));
  }
}

}  // namespace
}  // namespace mqs::it
