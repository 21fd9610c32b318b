// Metrics: the daemon's Prometheus counters and gauges, and their text
// exposition (format 0.0.4). Pure logic: no socket, no thread (the HTTP
// server is metrics_http.h).
//
// Counting is on the message path, so it costs a relaxed atomic add on a slot
// fixed at startup: one per configured business (producers and consumers,
// resolved names) plus one for publishes that name no configured business
// (delayed-retry and dead-letter copies). Nothing on the hot path locks or
// allocates; a business name is looked up by binary search in the sorted
// names (read-only after construction), or resolved once per stream.
//
// The daemon installs one instance for its lifetime (SetActive); the hooks in
// the I/O threads and the gRPC edge count only while one is installed, so unit
// tests that drive those classes alone count nothing.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mqs::observability {

// The two broker connections (IoLoop names "publisher" and "consumer").
enum class Role : int { kPublisher = 0, kConsumer = 1 };
inline constexpr int kRoles = 2;

// What a client's nack asks for (docs/operations.md, "Metrics").
enum class NackOutcome : int { kRequeue = 0, kRetry = 1, kReject = 2 };
inline constexpr int kNackOutcomes = 3;

// PublishResult.Status values 0..5 (STATUS_UNSPECIFIED .. UNCONFIRMED).
inline constexpr int kPublishStatuses = 6;

// Upper bounds (seconds) of the confirm latency histogram; +Inf is implied.
inline constexpr std::array<double, 14> kLatencyBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

// gRPC status codes 0..16.
inline constexpr int kGrpcCodes = 17;

// ProcessStats: read from /proc/self at scrape time.
struct ProcessStats {
  double cpu_seconds = 0;  // user + system
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  uint64_t open_fds = 0;
  uint64_t threads = 0;
  double start_time_seconds = 0;  // since the epoch
};
// ReadProcessStats: this process's stats; fields it cannot read stay 0.
ProcessStats ReadProcessStats();

// CountCall: a call of `service`/`method` ends with `code` (a grpc::StatusCode),
// counted in the installed Metrics, if any. The call classes call it where
// they start their finish: a server interceptor would cost every message of
// a stream an extra completion-queue round trip (measured: +3-5 us of daemon
// CPU per message at window 64).
void CountCall(std::string_view service, std::string_view method, int code);

class Metrics {
 public:
  // `businesses`: every configured business name (duplicates allowed).
  // `grpc_methods`: the full method names served ("/pkg.Service/Method");
  // calls to any other name count as method "other".
  Metrics(const std::vector<std::string>& businesses, const std::vector<std::string>& grpc_methods);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The installed instance, or null. The daemon installs one before its
  // threads start and removes it after they are joined.
  static Metrics* Active() { return active_.load(std::memory_order_acquire); }
  static void SetActive(Metrics* m) { active_.store(m, std::memory_order_release); }

  // Slot of `business`: a configured one, else the "(none)" slot.
  size_t Slot(std::string_view business) const;
  size_t none_slot() const { return names_.size() - 1; }

  // Hot path (any thread).
  void CountPublish(size_t slot, int status, std::chrono::steady_clock::duration latency);
  void CountDelivery(size_t slot, bool redelivered);
  void CountAcks(size_t slot, uint64_t n);
  void CountNacks(size_t slot, NackOutcome outcome, uint64_t n);
  void AddUnacked(size_t slot, int64_t delta);
  void AddStreams(size_t slot, int64_t delta);
  // Index of a gRPC method ("/pkg.Service/Method", or service and method
  // apart) for CountGrpcCall (per call, not per message).
  size_t GrpcMethod(std::string_view full_name) const;
  size_t GrpcMethod(std::string_view service, std::string_view method) const;
  void CountGrpcCall(size_t method, int code);

  // Broker links (state changes only).
  void SetConnected(Role role, bool connected);
  void CountReconnect(Role role);
  // connection.blocked / unblocked (and a lost connection ends a block).
  void SetBlocked(Role role, bool blocked, std::chrono::steady_clock::time_point now);

  // Render: the text exposition. `now` closes a block still in progress.
  std::string Render(const ProcessStats& process, std::chrono::steady_clock::time_point now) const;

 private:
  struct Business;
  struct Link {
    std::atomic<int64_t> connected{0};
    std::atomic<uint64_t> reconnects{0};
    std::atomic<uint64_t> blocked_ns{0};     // ended blocks
    std::atomic<int64_t> blocked_since{-1};  // steady ns of a block in progress, -1: none
  };

  static std::atomic<Metrics*> active_;

  std::vector<std::string> names_;  // slot -> business, sorted; the last is "(none)"
  std::unique_ptr<Business[]> businesses_;
  std::vector<std::string> methods_;                     // index -> full name; the last is "other"
  std::unique_ptr<std::atomic<uint64_t>[]> grpc_calls_;  // method * kGrpcCodes + code
  std::array<Link, kRoles> links_;
};

}  // namespace mqs::observability
