// UnixAcceptor: the daemon's unix socket listeners, accepted by a thread of
// its own ("mqs-accept") and handed one connection at a time to gRPC
// (grpc::AddInsecureChannelFromFd).
//
// Why not gRPC's own unix listener: it names every connection "unix:", so
// neither the connection nor the socket a call came in on can be told apart
// (connection_table.h). Handed over by fd, each connection is "fd:<n>" to
// gRPC and recorded in the ConnectionTable with the socket's access client.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/connection_table.h"

namespace grpc {
class Server;
}

namespace mqs::server {

class UnixAcceptor {
 public:
  struct Socket {
    std::string address;  // unix:///path
    uint32_t mode = 0660;
    std::optional<gid_t> gid;  // the group to give it; the daemon's when unset
    std::string group;         // gid's name, for logs and errors
    std::string client;        // the access client it serves alone; "" for `listen`
  };

  // Listen binds and listens on every socket: created with `mode` (never
  // reachable by others before), its group set, a stale socket file at the
  // path replaced. Fails naming the socket.
  static absl::StatusOr<std::unique_ptr<UnixAcceptor>> Listen(const std::vector<Socket>& sockets);
  ~UnixAcceptor();
  UnixAcceptor(const UnixAcceptor&) = delete;
  UnixAcceptor& operator=(const UnixAcceptor&) = delete;

  // Start accepting: each connection is recorded in `table`, then served by
  // `server` (started, and outliving Stop).
  void Start(grpc::Server* server, ConnectionTable* table);
  // Stop accepting: the thread ends, the sockets are closed and their files
  // removed (when still ours). Connections already handed over stay with
  // gRPC. Idempotent.
  void Stop();

 private:
  struct Listener {
    Socket socket;
    int fd = -1;
    dev_t dev = 0;  // the socket file's identity, so Stop removes only ours
    ino_t ino = 0;
  };
  UnixAcceptor() = default;
  void Accept(grpc::Server* server, ConnectionTable* table);

  std::vector<Listener> listeners_;
  int wake_fd_ = -1;  // eventfd: Stop wakes the thread's poll
  std::thread thread_;
};

}  // namespace mqs::server
