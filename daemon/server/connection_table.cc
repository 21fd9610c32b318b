#include "server/connection_table.h"

#include <charconv>

#include "absl/status/status.h"
#include "util/strings.h"

namespace mqs::server {

namespace {
constexpr std::string_view kFdPrefix = "fd:";
}  // namespace

std::string ConnectionTable::PeerOfFd(int fd) { return util::StrCat(kFdPrefix, fd); }

void ConnectionTable::Accepted(int fd, std::string client) {
  util::MutexLock lock(&mu_);
  clients_[fd] = std::move(client);
}

std::string ConnectionTable::ClientOf(std::string_view peer) const {
  if (peer.substr(0, kFdPrefix.size()) != kFdPrefix) return std::string();
  peer.remove_prefix(kFdPrefix.size());
  int fd = -1;
  const auto [end, ec] = std::from_chars(peer.data(), peer.data() + peer.size(), fd);
  if (ec != std::errc() || end != peer.data() + peer.size()) return std::string();
  util::MutexLock lock(&mu_);
  const auto it = clients_.find(fd);
  return it == clients_.end() ? std::string() : it->second;
}

absl::StatusOr<ConnectionTable::StreamSlot> ConnectionTable::OpenStream(const std::string& peer) {
  {
    util::MutexLock lock(&mu_);
    uint32_t& open = streams_[peer];
    if (open >= max_streams_) {
      if (open == 0) streams_.erase(peer);
      return absl::ResourceExhaustedError(
          util::StrCat("limits.max_streams_per_connection: this connection already holds ", open,
                       " streams open (the limit); open more connections or end a stream"));
    }
    ++open;
  }
  return StreamSlot(this, peer);
}

uint32_t ConnectionTable::Streams(const std::string& peer) const {
  util::MutexLock lock(&mu_);
  const auto it = streams_.find(peer);
  return it == streams_.end() ? 0 : it->second;
}

void ConnectionTable::Release(const std::string& peer) {
  util::MutexLock lock(&mu_);
  const auto it = streams_.find(peer);
  if (it == streams_.end()) return;
  if (--it->second == 0) streams_.erase(it);
}

ConnectionTable::StreamSlot::StreamSlot(StreamSlot&& other) noexcept
    : table_(other.table_), peer_(std::move(other.peer_)) {
  other.table_ = nullptr;
}

ConnectionTable::StreamSlot& ConnectionTable::StreamSlot::operator=(StreamSlot&& other) noexcept {
  if (this != &other) {
    if (table_ != nullptr) table_->Release(peer_);
    table_ = other.table_;
    peer_ = std::move(other.peer_);
    other.table_ = nullptr;
  }
  return *this;
}

ConnectionTable::StreamSlot::~StreamSlot() {
  if (table_ != nullptr) table_->Release(peer_);
}

}  // namespace mqs::server
