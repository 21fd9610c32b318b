// BrokerProxy: the skeleton of the tests' TCP proxies in front of the broker.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mqs::it {

// BrokerProxy: a listener on 127.0.0.1 (port()) that dials the broker for
// every connection it accepts and relays the pair with the derived class's
// Serve, on a thread of its own per link. What each proxy does to the bytes
// (delay them, go silent after the login, nothing) is its Serve; accepting,
// cutting and joining are here once. A derived class calls Start() at the
// end of its constructor and Stop() first in its destructor: its Serve
// threads use its members.
class BrokerProxy {
 public:
  BrokerProxy(const BrokerProxy&) = delete;
  BrokerProxy& operator=(const BrokerProxy&) = delete;
  virtual ~BrokerProxy();

  int port() const { return port_; }
  // Via: `broker_uri` with the broker's port replaced by this proxy's ("" if
  // the URI does not name that port).
  std::string Via(const std::string& broker_uri) const;
  // CutAll: shuts every link's sockets down, so the daemon sees its
  // connections drop without the shared broker being touched. New
  // connections are still accepted.
  void CutAll();

 protected:
  explicit BrokerProxy(int broker_port);
  void Start();
  // Stop: no new links, every link cut, every Serve joined, sockets closed.
  // Idempotent.
  void Stop();
  bool stopping() const { return stop_.load(); }
  // Serve: relays one link until it ends or stopping(); both sockets stay
  // open until Stop.
  virtual void Serve(int client, int broker) = 0;

  // Copy: bytes from `from` to `to` until either side ends, then `to` is
  // shut down for writing (the peer sees the end).
  static void Copy(int from, int to);
  // WriteAll: all of [p, p + n) or false. MSG_NOSIGNAL: a link cut under a
  // write must not SIGPIPE the test process.
  static bool WriteAll(int fd, const char* p, size_t n);

 private:
  void AcceptLoop();

  const int broker_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  bool stopped_ = false;  // Stop ran (the owner's thread only)
  std::mutex mu_;         // fds_ and threads_: the acceptor adds, CutAll and Stop read
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace mqs::it
