// DelayProxy, shared by the integration tests that need a slow broker.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "broker_proxy.h"
#include "harness.h"

namespace mqs::it {

// DelayProxy: a TCP proxy in front of the broker that delays every byte the
// broker sends by `delay` (what the daemon sends passes at once). With it
// every broker round trip takes at least `delay`, as on a distant or busy
// broker, so a thread that waits for replies is seen stalling.
class DelayProxy final : public BrokerProxy {
 public:
  DelayProxy(int broker_port, std::chrono::milliseconds delay)
      : BrokerProxy(broker_port), delay_(delay) {
    Start();
  }
  ~DelayProxy() override { Stop(); }

 private:
  struct Chunk {
    Clock::time_point due;
    std::string bytes;  // empty: the broker ended the link
  };
  struct Link {
    int client = -1, broker = -1;
    std::deque<Chunk> down;  // broker -> client, waiting for their time
  };

  void Serve(int client, int broker) override {
    Link link{client, broker, {}};
    std::thread up([client, broker] { Copy(client, broker); });
    std::thread read_down([this, &link] { ReadDown(&link); });
    WriteDown(&link);
    read_down.join();
    up.join();
  }
  void ReadDown(Link* link) {
    char buf[65536];
    while (true) {
      const ssize_t n = ::read(link->broker, buf, sizeof buf);
      std::lock_guard<std::mutex> lock(mu_);
      if (n <= 0) {
        link->down.push_back(Chunk{Clock::now(), std::string()});
        cv_.notify_all();
        return;
      }
      link->down.push_back(Chunk{Clock::now() + delay_, std::string(buf, static_cast<size_t>(n))});
      cv_.notify_all();
    }
  }
  void WriteDown(Link* link) {
    // Wakes at least every 50 ms to see a Stop.
    constexpr auto kTick = std::chrono::milliseconds(50);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping()) {
      if (link->down.empty()) {
        cv_.wait_for(lock, kTick);
        continue;
      }
      if (Clock::now() < link->down.front().due) {
        cv_.wait_until(lock, std::min(link->down.front().due, Clock::now() + kTick));
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

  const std::chrono::milliseconds delay_;
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace mqs::it
