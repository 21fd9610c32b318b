// ConnectionTable: what the daemon knows of each client connection that gRPC
// does not tell it.
//
// gRPC 1.51 names every connection of its own unix listener "unix:" (the
// client's unnamed address), so a server can neither tell two such
// connections apart nor the socket a call came in on. The daemon therefore
// accepts its unix sockets itself (UnixAcceptor) and hands each connection to
// gRPC, which then names it "fd:<n>"; the acceptor records here the access
// client of the socket it came in on. TCP connections are already named
// apart by gRPC ("ipv4:127.0.0.1:41234").
//
// With each connection named apart, the streams it holds open are counted
// here against limits.max_streams_per_connection, so that the stream above
// the limit fails alone with RESOURCE_EXHAUSTED instead of waiting.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "util/mutex.h"

namespace mqs::server {

class ConnectionTable {
 public:
  explicit ConnectionTable(uint32_t max_streams) : max_streams_(max_streams) {}
  ConnectionTable(const ConnectionTable&) = delete;
  ConnectionTable& operator=(const ConnectionTable&) = delete;

  // PeerOfFd: the peer name gRPC gives a connection handed to it as `fd`.
  static std::string PeerOfFd(int fd);

  // Accepted: connection `fd` came in on a socket of access client `client`
  // ("" for a socket of `listen`). Called before the connection goes to gRPC;
  // a later connection on the same fd number replaces it (gRPC closes a
  // connection's fd only once no call of it is left, so no call can see the
  // newer entry).
  void Accepted(int fd, std::string client) ABSL_LOCKS_EXCLUDED(mu_);
  // ClientOf: the access client of the socket the connection `peer` came in
  // on; "" for a socket of `listen`, a TCP connection or an unknown peer.
  std::string ClientOf(std::string_view peer) const ABSL_LOCKS_EXCLUDED(mu_);

  // StreamSlot: one stream counted against its connection; released when
  // destroyed.
  class StreamSlot {
   public:
    StreamSlot() = default;
    StreamSlot(StreamSlot&& other) noexcept;
    StreamSlot& operator=(StreamSlot&& other) noexcept;
    ~StreamSlot();

   private:
    friend class ConnectionTable;
    StreamSlot(ConnectionTable* table, std::string peer) : table_(table), peer_(std::move(peer)) {}
    ConnectionTable* table_ = nullptr;
    std::string peer_;
  };

  // OpenStream counts one more stream of connection `peer`; over
  // max_streams it is RESOURCE_EXHAUSTED naming the limit, and nothing is
  // counted.
  absl::StatusOr<StreamSlot> OpenStream(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams: what `peer` holds open now (for tests and logs).
  uint32_t Streams(const std::string& peer) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Release(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);

  const uint32_t max_streams_;
  mutable util::Mutex mu_;
  std::unordered_map<int, std::string> clients_ ABSL_GUARDED_BY(mu_);          // by fd
  std::map<std::string, uint32_t, std::less<>> streams_ ABSL_GUARDED_BY(mu_);  // by peer
};

}  // namespace mqs::server
