#include "broker_proxy.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

namespace mqs::it {

BrokerProxy::BrokerProxy(int broker_port) : broker_port_(broker_port) {
  listen_fd_ = ListenOnLoopback(&port_);
}

BrokerProxy::~BrokerProxy() { Stop(); }

void BrokerProxy::Start() {
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

void BrokerProxy::Stop() {
  if (stopped_) return;
  stopped_ = true;
  stop_.store(true);
  if (acceptor_.joinable()) acceptor_.join();  // no new links from here on
  CutAll();
  for (std::thread& t : threads_) t.join();
  for (int fd : fds_) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string BrokerProxy::Via(const std::string& broker_uri) const {
  const std::string from = ":" + std::to_string(broker_port_);
  const size_t at = broker_uri.rfind(from);
  if (at == std::string::npos) return "";
  std::string uri = broker_uri;
  uri.replace(at, from.size(), ":" + std::to_string(port_));
  return uri;
}

void BrokerProxy::CutAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
}

void BrokerProxy::AcceptLoop() {
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
    threads_.emplace_back([this, client, broker] { Serve(client, broker); });
  }
}

void BrokerProxy::Copy(int from, int to) {
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(from, buf, sizeof buf);
    if (n <= 0 || !WriteAll(to, buf, static_cast<size_t>(n))) break;
  }
  ::shutdown(to, SHUT_WR);
}

bool BrokerProxy::WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace mqs::it
