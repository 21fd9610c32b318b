// systemd's watchdog: WATCHDOG=1 goes out only while every worker thread
// makes progress. The test plays systemd: a notify socket (NOTIFY_SOCKET,
// WATCHDOG_USEC), and the daemon's test hook MQ_SIDECAR_TEST_WEDGE to wedge
// the publisher thread while a file exists (util/thread_watch.h).
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// NotifySocket: the datagram socket systemd listens on for sd_notify.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ::unlink(path_.c_str());
    bound_ = fd_ >= 0 && path_.size() < sizeof(addr.sun_path) &&
             ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  bool bound() const { return bound_; }
  const std::string& path() const { return path_; }

  // The next datagram within `timeout`, or nullopt.
  std::optional<std::string> Read(Clock::duration timeout) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ms =
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count());
    if (::poll(&pfd, 1, std::max(ms, 0)) <= 0) return std::nullopt;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

  // Waits until `n` datagrams containing `what` arrived; false at the deadline.
  bool WaitFor(const std::string& what, int n, Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    int seen = 0;
    while (seen < n) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) return false;
      const auto got = Read(left);
      if (got && got->find(what) != std::string::npos) ++seen;
    }
    return true;
  }

  // Waits until no WATCHDOG=1 has arrived for `quiet`; false at the deadline.
  bool WaitForSilence(Clock::duration quiet, Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    auto last = Clock::now();
    while (Clock::now() < deadline) {
      const auto got = Read(100ms);
      if (got && got->find("WATCHDOG=1") != std::string::npos) last = Clock::now();
      if (Clock::now() - last >= quiet) return true;
    }
    return false;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
};

TEST_CASE(
    "integration: WATCHDOG=1 stops while the publisher or the consumer thread is wedged and comes "
    "back once it makes progress again, and the daemon logs which thread",
    "[watchdog]") {
  // Both AMQP I/O threads: each is watched on its own (app.cc's watch list).
  const std::string thread = GENERATE(as<std::string>{}, "publisher", "consumer");
  INFO("wedged thread: " << thread);
  IntegrationTest t("watchdog");
  const std::string biz = t.Business("orders");
  NotifySocket notify(t.dir() + "/notify.sock");
  REQUIRE(notify.bound());
  const std::string wedge = t.dir() + "/wedge-" + thread;
  // Watchdog interval 2 s: pings every 1 s; a thread busy for over
  // 2 x heartbeat + 5 s (9 s, longer than the interval) is wedged.
  Daemon& d = t.StartDaemon({{.name = biz}},
                            {.heartbeat = 2s,
                             .env = {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=2000000",
                                     "MQ_SIDECAR_TEST_WEDGE=" + thread + ":" + wedge}});
  REQUIRE(notify.WaitFor("READY=1", 1, 10s));
  REQUIRE(notify.WaitFor("WATCHDOG=1", 2, 10s));

  std::ofstream(wedge) << "wedged\n";
  // The thread wedges at its next wake-up (within heartbeat/2), is wedged
  // 9 s later, and the next tick sends nothing.
  CHECK(notify.WaitForSilence(3s, 25s));
  CHECK(WaitUntil(
      [&] {
        return d.Log().find("watchdog: no WATCHDOG=1 while a thread is wedged: " + thread +
                            " (busy") != std::string::npos;
      },
      5s, 50ms));

  ::unlink(wedge.c_str());
  CHECK(notify.WaitFor("WATCHDOG=1", 2, 10s));
  CHECK(WaitUntil(
      [&] {
        return d.Log().find("watchdog: every thread makes progress again") != std::string::npos;
      },
      5s, 50ms));
  // Both threads serve again: a message is confirmed and delivered.
  Subscriber sub(d.stub(), {.business = biz, .auto_ack = true});
  pb::PublishResult result;
  CHECK(PublishOne(d.stub(), MakePublish(biz, "after-wedge", 1), &result).ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  CHECK(sub.WaitForCount(1, 10s));
}

TEST_CASE("integration: an idle daemon keeps sending WATCHDOG=1", "[watchdog]") {
  IntegrationTest t("watchdogidle");
  const std::string biz = t.Business("orders");
  NotifySocket notify(t.dir() + "/notify.sock");
  REQUIRE(notify.bound());
  t.StartDaemon(
      {{.name = biz}},
      {.heartbeat = 2s, .env = {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=2000000"}});
  REQUIRE(notify.WaitFor("READY=1", 1, 10s));
  REQUIRE(notify.WaitFor("WATCHDOG=1", 1, 10s));
  // Idle with a 2 s interval (a ping every second): no thread counts as
  // wedged while it waits, also across heartbeats; 8 s, at least 6 pings.
  CHECK(notify.WaitFor("WATCHDOG=1", 6, 8s));
}

}  // namespace
}  // namespace mqs::it
