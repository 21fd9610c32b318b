#include "server/unix_acceptor.h"

#include <grpcpp/server_posix.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"
#include "util/log_limiter.h"
#include "util/strings.h"

namespace mqs::server {

namespace {

std::string Errno() { return std::generic_category().message(errno); }

// BindSocket: a listening unix socket at `path` with `mode` and `gid`.
absl::StatusOr<int> BindSocket(const UnixAcceptor::Socket& s, const std::string& path) {
  const std::string& address = s.address;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(util::StrCat("listen ", address, ": the path must be 1 to ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  // A socket file left by a daemon that did not stop cleanly is replaced (as
  // gRPC's own listener did); any other file there is an error below.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return absl::UnavailableError(util::StrCat("listen ", address, ": socket: ", Errno()));
  }
  // The file is created with the process umask: none may reach it even for
  // the moment before the chmod below. Process-wide, but no other thread
  // creates files while the server starts.
  const mode_t umask_before = ::umask(0177);
  const int bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int bind_errno = errno;
  ::umask(umask_before);
  if (bound != 0) {
    ::close(fd);
    return absl::UnavailableError(util::StrCat("cannot listen on ", address, ": ",
                                               std::generic_category().message(bind_errno)));
  }
  if (::chmod(path.c_str(), s.mode) != 0 ||
      (s.gid && ::chown(path.c_str(), static_cast<uid_t>(-1), *s.gid) != 0)) {
    const std::string why = Errno();
    ::close(fd);
    ::unlink(path.c_str());
    return absl::PermissionDeniedError(
        util::StrCat("listen ", address, ": cannot set its mode ", fmt::format("{:04o}", s.mode),
                     s.gid ? util::StrCat(" and group ", s.group) : std::string(), ": ", why));
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    const std::string why = Errno();
    ::close(fd);
    ::unlink(path.c_str());
    return absl::UnavailableError(util::StrCat("cannot listen on ", address, ": ", why));
  }
  return fd;
}

// FailedAcceptLog: out of file descriptors, every attempt fails the same way;
// one line per 10 s says so.
util::LogLimiter& FailedAcceptLog() {
  static util::LogLimiter limiter(1, std::chrono::seconds(10));
  return limiter;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UnixAcceptor>> UnixAcceptor::Listen(
    const std::vector<Socket>& sockets) {
  std::unique_ptr<UnixAcceptor> out(new UnixAcceptor());
  out->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (out->wake_fd_ < 0) return absl::InternalError(util::StrCat("eventfd: ", Errno()));
  for (const Socket& s : sockets) {
    const std::string path = s.address.substr(7);  // after unix://
    absl::StatusOr<int> fd = BindSocket(s, path);
    if (!fd.ok()) return fd.status();  // the destructor closes what was bound
    Listener l{.socket = s, .fd = *fd};
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      l.dev = st.st_dev;
      l.ino = st.st_ino;
    }
    out->listeners_.push_back(std::move(l));
  }
  return out;
}

UnixAcceptor::~UnixAcceptor() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void UnixAcceptor::Start(grpc::Server* server, ConnectionTable* table) {
  thread_ = std::thread([this, server, table] { Accept(server, table); });
}

void UnixAcceptor::Stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    if (::write(wake_fd_, &one, sizeof(one)) != sizeof(one)) {
      spdlog::error("unix acceptor: cannot wake its thread: {}", Errno());
    }
    thread_.join();
  }
  for (Listener& l : listeners_) {
    if (l.fd < 0) continue;
    ::close(l.fd);
    l.fd = -1;
    // Removed only while it is still the file this daemon made: a daemon
    // started since may own the path now.
    const std::string path = l.socket.address.substr(7);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && st.st_dev == l.dev && st.st_ino == l.ino) {
      ::unlink(path.c_str());
    }
  }
}

void UnixAcceptor::Accept(grpc::Server* server, ConnectionTable* table) {
  pthread_setname_np(pthread_self(), "mqs-accept");
  std::vector<pollfd> fds;
  fds.push_back({.fd = wake_fd_, .events = POLLIN, .revents = 0});
  for (const Listener& l : listeners_) fds.push_back({.fd = l.fd, .events = POLLIN, .revents = 0});
  while (true) {
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("unix acceptor: poll: {}; no more connections are accepted", Errno());
      return;
    }
    if (fds[0].revents != 0) return;  // Stop
    bool out_of_resources = false;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      const Listener& l = listeners_[i - 1];
      while (true) {
        const int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in the
          // backlog; retried after a pause rather than in a busy loop.
          out_of_resources = true;
          if (const std::optional<uint64_t> held = FailedAcceptLog().Admit("accept")) {
            spdlog::warn("cannot accept a connection on {}: {} (retrying every 100 ms){}",
                         l.socket.address, Errno(),
                         *held == 0 ? std::string()
                                    : util::StrCat(" (", *held, " similar lines held back)"));
          }
          break;
        }
        table->Accepted(fd, l.socket.client);
        grpc::AddInsecureChannelFromFd(server, fd);  // gRPC owns fd from here
      }
    }
    if (out_of_resources) {
      pollfd wake{.fd = wake_fd_, .events = POLLIN, .revents = 0};
      if (::poll(&wake, 1, 100) > 0) return;
    }
  }
}

}  // namespace mqs::server
