// amqp::SocketTimeoutsFor / ApplySocketTimeouts: the keepalive and user
// timeout every AMQP socket gets (issue 11, defect 8), checked on a real
// loopback TCP socket. tests/integration/connection_test.cc checks that
// Connection::Open applies them to its socket.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "amqp/connection.h"

namespace mqs::amqp {
namespace {

int GetIntOption(int fd, int level, int name) {
  int value = -1;
  socklen_t size = sizeof(value);
  REQUIRE(::getsockopt(fd, level, name, &value, &size) == 0);
  return value;
}

// A connected loopback TCP socket (client side), closed at scope exit.
class LoopbackSocket {
 public:
  LoopbackSocket() {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listener_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listener_, 1) == 0);
    socklen_t len = sizeof(addr);
    REQUIRE(::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    client_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(client_ >= 0);
    REQUIRE(::connect(client_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~LoopbackSocket() {
    ::close(client_);
    ::close(listener_);
  }
  int fd() const { return client_; }

 private:
  int listener_ = -1;
  int client_ = -1;
};

TEST_CASE("socket timeouts: heartbeat off still gets keepalive and a 30 s user timeout") {
  const SocketTimeouts t = SocketTimeoutsFor(std::chrono::milliseconds(0));
  CHECK(t.keepalive_idle_s == 10);
  CHECK(t.keepalive_interval_s == 5);
  CHECK(t.keepalive_count == 3);
  CHECK(t.user_timeout_ms == 30000);
  // The user timeout must not cut the keepalive probing short.
  CHECK(t.user_timeout_ms >=
        (t.keepalive_idle_s + t.keepalive_interval_s * t.keepalive_count) * 1000);
}

TEST_CASE("socket timeouts: with heartbeats the user timeout is 2 x heartbeat") {
  CHECK(SocketTimeoutsFor(std::chrono::seconds(30)).user_timeout_ms == 60000);
  CHECK(SocketTimeoutsFor(std::chrono::seconds(1)).user_timeout_ms == 2000);
  CHECK(SocketTimeoutsFor(std::chrono::seconds(65535)).user_timeout_ms == 131070000);
}

TEST_CASE("socket timeouts: ApplySocketTimeouts sets every option on the socket") {
  LoopbackSocket s;
  CHECK(GetIntOption(s.fd(), SOL_SOCKET, SO_KEEPALIVE) == 0);  // off by default
  const SocketTimeouts t{.keepalive_idle_s = 11,
                         .keepalive_interval_s = 6,
                         .keepalive_count = 4,
                         .user_timeout_ms = 31000};
  REQUIRE(ApplySocketTimeouts(s.fd(), t).ok());
  CHECK(GetIntOption(s.fd(), SOL_SOCKET, SO_KEEPALIVE) == 1);
  CHECK(GetIntOption(s.fd(), IPPROTO_TCP, TCP_KEEPIDLE) == 11);
  CHECK(GetIntOption(s.fd(), IPPROTO_TCP, TCP_KEEPINTVL) == 6);
  CHECK(GetIntOption(s.fd(), IPPROTO_TCP, TCP_KEEPCNT) == 4);
  CHECK(GetIntOption(s.fd(), IPPROTO_TCP, TCP_USER_TIMEOUT) == 31000);
}

TEST_CASE("socket timeouts: a socket that is not TCP is an error, not ignored") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  const absl::Status s = ApplySocketTimeouts(fds[0], SocketTimeoutsFor(std::chrono::seconds(0)));
  ::close(fds[0]);
  ::close(fds[1]);
  CHECK(s.code() == absl::StatusCode::kInternal);
  CHECK_THAT(std::string(s.message()), Catch::Contains("setsockopt TCP_KEEPIDLE"));
}

}  // namespace
}  // namespace mqs::amqp

namespace mqs::amqp {
namespace {

// WriteGuard: a write blocked on a peer that reads nothing (a full unix
// socket pair, no TCP timeouts at all) fails once another thread expires the
// guard after its deadline; before the deadline, Expire leaves it alone.
TEST_CASE("write guard: a write blocked on a peer that reads nothing fails once expired") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  WriteGuard guard;
  const auto start = std::chrono::steady_clock::now();
  guard.Arm(fds[0], start + std::chrono::milliseconds(200));
  CHECK_FALSE(guard.Expire(start));  // not yet
  std::atomic<bool> failed{false};
  std::thread writer([&] {
    const std::string chunk(size_t{64} * 1024, 'x');
    while (true) {  // blocks once the pair's buffers are full
      if (::send(fds[0], chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) break;
    }
    failed = true;
  });
  bool expired = false;
  const auto deadline = start + std::chrono::seconds(10);
  while (!expired && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    expired = guard.Expire(std::chrono::steady_clock::now());
  }
  CHECK(expired);
  writer.join();  // returns only because the write failed
  CHECK(failed);
  CHECK_FALSE(guard.Expire(std::chrono::steady_clock::now()));  // once
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("write guard: a disarmed guard never shuts anything down") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  WriteGuard guard;
  guard.Arm(fds[0], std::chrono::steady_clock::now());
  guard.Disarm();
  CHECK_FALSE(guard.Expire(std::chrono::steady_clock::now() + std::chrono::hours(1)));
  CHECK(::write(fds[0], "x", 1) == 1);  // still open
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace mqs::amqp
