// DelayProxy, shared by the integration tests that need a slow broker.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace mqs::it {

// DelayProxy: a TCP proxy in front of the broker that delays every byte the
// broker sends by `delay` (what the daemon sends passes at once). With it
// every broker round trip takes at least `delay`, as on a distant or busy
// broker, so a thread that waits for replies is seen stalling.
class DelayProxy {
 public:
  DelayProxy(int broker_port, std::chrono::milliseconds delay)
      : broker_port_(broker_port), delay_(delay) {
    listen_fd_ = ListenOnLoopback(&port_);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~DelayProxy() {
    stop_.store(true);
    acceptor_.join();  // no new links from here on
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    for (int fd : fds_) ::close(fd);
    ::close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  struct Chunk {
    Clock::time_point due;
    std::string bytes;
  };
  struct Link {
    int client = -1, broker = -1;
    std::deque<Chunk> down;  // broker -> client, waiting for their time
  };

  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 50) <= 0) continue;
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      const int broker = DialLoopback(broker_port_);
      if (broker < 0) {
        ::close(client);
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      fds_.push_back(client);
      fds_.push_back(broker);
      links_.push_back(std::make_unique<Link>(Link{client, broker, {}}));
      Link* link = links_.back().get();
      threads_.emplace_back([link] { Copy(link->client, link->broker); });
      threads_.emplace_back([this, link] { ReadDown(link); });
      threads_.emplace_back([this, link] { WriteDown(link); });
    }
  }
  static void Copy(int from, int to) {
    char buf[65536];
    while (true) {
      const ssize_t n = ::read(from, buf, sizeof buf);
      if (n <= 0 || !WriteAll(to, buf, static_cast<size_t>(n))) break;
    }
    ::shutdown(to, SHUT_WR);
  }
  static bool WriteAll(int fd, const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  void ReadDown(Link* link) {
    char buf[65536];
    while (true) {
      const ssize_t n = ::read(link->broker, buf, sizeof buf);
      std::lock_guard<std::mutex> lock(mu_);
      if (n <= 0) {
        link->down.push_back(Chunk{Clock::now(), std::string()});  // end marker
        cv_.notify_all();
        return;
      }
      link->down.push_back(Chunk{Clock::now() + delay_, std::string(buf, static_cast<size_t>(n))});
      cv_.notify_all();
    }
  }
  void WriteDown(Link* link) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_.load()) {
      if (link->down.empty()) {
        cv_.wait_for(lock, std::chrono::milliseconds(50));
        continue;
      }
      if (Clock::now() < link->down.front().due) {
        cv_.wait_until(lock, link->down.front().due);
        continue;
      }
      Chunk c = std::move(link->down.front());
      link->down.pop_front();
      if (c.bytes.empty()) break;
      lock.unlock();
      const bool ok = WriteAll(link->client, c.bytes.data(), c.bytes.size());
      lock.lock();
      if (!ok) break;
    }
    ::shutdown(link->client, SHUT_WR);
  }

  const int broker_port_;
  const std::chrono::milliseconds delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> fds_;
  std::vector<std::unique_ptr<Link>> links_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace mqs::it
