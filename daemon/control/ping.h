// Ping: the server.ping heartbeat's payload, and the fleet table built from
// the pings a sidecar sees (pure logic; control_plane.cc does the I/O).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/mutex.h"

namespace mqs::control {

// PingFacts: what one ping says (docs/control-plane.md lists the JSON).
struct PingFacts {
  mqsidecar::v1::Identity identity;
  std::string host;
  uint32_t pid = 0;
  std::string version;
  int64_t started_at_ms = 0;
  int64_t sent_at_ms = 0;
  int64_t interval_ms = 0;
  std::string broker_state;
  std::map<std::string, uint32_t> streams;             // live Subscribe streams per business
  std::optional<mqsidecar::v1::ServiceStatus> status;  // as the service last reported it
};

// BuildPing renders the JSON payload.
std::string BuildPing(const PingFacts& facts);

// ParsePing reads a ping's payload into a ServerInfo (last_seen_ms and stale
// left for the fleet table). InvalidArgument when it is not JSON or lacks a
// complete identity or a positive interval; unknown fields are ignored, so
// newer sidecars may add some.
absl::StatusOr<mqsidecar::v1::ServerInfo> ParsePing(std::string_view payload);

// RoutingKeyFor: "<app>.<region>.<server>", the ping's routing key.
std::string RoutingKeyFor(const mqsidecar::v1::Identity& identity);

// FleetTable: the instances seen, by identity. An instance is stale once
// kStaleIntervals of its own intervals pass without a ping, and forgotten
// after kForgetIntervals. Thread-safe: the consumer thread applies pings,
// gRPC's thread lists.
class FleetTable {
 public:
  static constexpr int kStaleIntervals = 3;
  static constexpr int kForgetIntervals = 30;

  void Apply(mqsidecar::v1::ServerInfo info, int64_t now_ms);
  // List: sorted by app, region, server; `app` empty = all. Forgets those
  // past kForgetIntervals.
  std::vector<mqsidecar::v1::ServerInfo> List(std::string_view app, int64_t now_ms);
  size_t size() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string>;
  mutable util::Mutex mu_;
  std::map<Key, mqsidecar::v1::ServerInfo> servers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mqs::control
