#include "observability/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "observability/metrics_http.h"
#include "util/strings.h"
#include "util/version.h"

namespace mqs::observability {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kNoBusiness = "(none)";
constexpr std::string_view kOtherMethod = "other";
constexpr std::array<std::string_view, kPublishStatuses> kStatusNames = {
    "STATUS_UNSPECIFIED", "CONFIRMED", "UNROUTABLE", "REJECTED", "FAILED", "UNCONFIRMED"};
constexpr std::array<std::string_view, kNackOutcomes> kOutcomeNames = {"requeue", "retry",
                                                                       "reject"};
constexpr std::array<std::string_view, kRoles> kRoleNames = {"publisher", "consumer"};
constexpr std::array<std::string_view, kGrpcCodes> kCodeNames = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

constexpr size_t kBuckets = kLatencyBuckets.size();

// The bucket bounds in nanoseconds, so that the hot path compares integers.
constexpr std::array<int64_t, kBuckets> BucketBoundsNs() {
  std::array<int64_t, kBuckets> out{};
  for (size_t i = 0; i < kBuckets; ++i) out[i] = static_cast<int64_t>(kLatencyBuckets[i] * 1e9);
  return out;
}
constexpr std::array<int64_t, kBuckets> kBoundsNs = BucketBoundsNs();

int64_t SteadyNs(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// A label value as the exposition format wants it: \ " and newline escaped.
std::string Escape(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// A sample value: integers exactly, others with enough digits.
std::string Num(double v) {
  char buf[400];
  // The shortest text that reads back as `v` (0.0005, not 0.00050000000000000001).
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}
std::string Num(uint64_t v) { return std::to_string(v); }
std::string Num(int64_t v) { return std::to_string(v); }

void Header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

uint64_t Load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }
int64_t Load(const std::atomic<int64_t>& a) { return a.load(std::memory_order_relaxed); }

}  // namespace

// Business: one slot. Aligned so that two businesses counted by different
// threads never share a cache line.
struct alignas(64) Metrics::Business {
  std::array<std::atomic<uint64_t>, kPublishStatuses> publishes{};
  std::array<std::atomic<uint64_t>, kBuckets + 1> latency_buckets{};  // not cumulative; last: +Inf
  std::atomic<uint64_t> latency_count{0};
  std::atomic<uint64_t> latency_sum_ns{0};
  std::atomic<uint64_t> deliveries{0};
  std::atomic<uint64_t> redeliveries{0};
  std::atomic<uint64_t> acks{0};
  std::array<std::atomic<uint64_t>, kNackOutcomes> nacks{};
  std::atomic<int64_t> unacked{0};
  std::atomic<int64_t> streams{0};

  bool Any() const {
    for (const auto& p : publishes) {
      if (Load(p) != 0) return true;
    }
    for (const auto& n : nacks) {
      if (Load(n) != 0) return true;
    }
    return Load(deliveries) != 0 || Load(acks) != 0 || Load(unacked) != 0 || Load(streams) != 0;
  }
};

std::atomic<Metrics*> Metrics::active_{nullptr};

Metrics::Metrics(const std::vector<std::string>& businesses,
                 const std::vector<std::string>& grpc_methods) {
  const std::set<std::string> unique(businesses.begin(), businesses.end());
  names_.assign(unique.begin(), unique.end());
  names_.emplace_back(kNoBusiness);
  businesses_ = std::make_unique<Business[]>(names_.size());
  methods_ = grpc_methods;
  methods_.emplace_back(kOtherMethod);
  grpc_calls_ = std::make_unique<std::atomic<uint64_t>[]>(methods_.size() * kGrpcCodes);
  for (size_t i = 0; i < methods_.size() * kGrpcCodes; ++i) grpc_calls_[i].store(0);
}

Metrics::~Metrics() {
  if (Active() == this) SetActive(nullptr);
}

size_t Metrics::Slot(std::string_view business) const {
  // names_ (but the last) is sorted: a binary search of views, no allocation.
  const auto end = names_.end() - 1;
  auto it = std::lower_bound(names_.begin(), end, business,
                             [](const std::string& a, std::string_view b) { return a < b; });
  return it != end && *it == business ? static_cast<size_t>(it - names_.begin()) : none_slot();
}

void Metrics::CountPublish(size_t slot, int status, Clock::duration latency) {
  Business& b = businesses_[slot];
  if (status < 0 || status >= kPublishStatuses) status = 0;
  b.publishes[static_cast<size_t>(status)].fetch_add(1, std::memory_order_relaxed);
  // The confirm latency: publishes the broker took (acked), returned or not.
  if (status != 1 && status != 2) return;
  const int64_t ns =
      std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(latency).count());
  size_t i = 0;
  while (i < kBuckets && ns > kBoundsNs[i]) ++i;
  b.latency_buckets[i].fetch_add(1, std::memory_order_relaxed);
  b.latency_count.fetch_add(1, std::memory_order_relaxed);
  b.latency_sum_ns.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
}

void Metrics::CountDelivery(size_t slot, bool redelivered) {
  Business& b = businesses_[slot];
  b.deliveries.fetch_add(1, std::memory_order_relaxed);
  if (redelivered) b.redeliveries.fetch_add(1, std::memory_order_relaxed);
}

void Metrics::CountAcks(size_t slot, uint64_t n) {
  businesses_[slot].acks.fetch_add(n, std::memory_order_relaxed);
}

void Metrics::CountNacks(size_t slot, NackOutcome outcome, uint64_t n) {
  businesses_[slot].nacks[static_cast<size_t>(outcome)].fetch_add(n, std::memory_order_relaxed);
}

void Metrics::AddUnacked(size_t slot, int64_t delta) {
  businesses_[slot].unacked.fetch_add(delta, std::memory_order_relaxed);
}

void Metrics::AddStreams(size_t slot, int64_t delta) {
  businesses_[slot].streams.fetch_add(delta, std::memory_order_relaxed);
}

size_t Metrics::GrpcMethod(std::string_view service, std::string_view method) const {
  for (size_t i = 0; i + 1 < methods_.size(); ++i) {
    const std::string_view m = methods_[i];
    if (m.size() == service.size() + method.size() + 2 && m[0] == '/' &&
        m.substr(1, service.size()) == service && m[service.size() + 1] == '/' &&
        m.substr(service.size() + 2) == method) {
      return i;
    }
  }
  return methods_.size() - 1;
}

void CountCall(std::string_view service, std::string_view method, int code) {
  if (Metrics* m = Metrics::Active(); m != nullptr) {
    m->CountGrpcCall(m->GrpcMethod(service, method), code);
  }
}

size_t Metrics::GrpcMethod(std::string_view full_name) const {
  for (size_t i = 0; i + 1 < methods_.size(); ++i) {
    if (methods_[i] == full_name) return i;
  }
  return methods_.size() - 1;
}

void Metrics::CountGrpcCall(size_t method, int code) {
  if (method >= methods_.size()) method = methods_.size() - 1;
  if (code < 0 || code >= kGrpcCodes) code = 2;  // UNKNOWN
  grpc_calls_[method * kGrpcCodes + static_cast<size_t>(code)].fetch_add(1,
                                                                         std::memory_order_relaxed);
}

void Metrics::SetConnected(Role role, bool connected) {
  links_[static_cast<size_t>(role)].connected.store(connected ? 1 : 0, std::memory_order_relaxed);
}

void Metrics::CountReconnect(Role role) {
  links_[static_cast<size_t>(role)].reconnects.fetch_add(1, std::memory_order_relaxed);
}

void Metrics::SetBlocked(Role role, bool blocked, Clock::time_point now) {
  Link& l = links_[static_cast<size_t>(role)];
  const int64_t t = SteadyNs(now);
  if (blocked) {
    int64_t none = -1;
    l.blocked_since.compare_exchange_strong(none, t, std::memory_order_relaxed);
    return;
  }
  const int64_t since = l.blocked_since.exchange(-1, std::memory_order_relaxed);
  if (since >= 0 && t > since) {
    l.blocked_ns.fetch_add(static_cast<uint64_t>(t - since), std::memory_order_relaxed);
  }
}

std::string Metrics::Render(const ProcessStats& process, Clock::time_point now) const {
  std::string out;
  out.reserve(8192);
  // Every configured business is shown (zeros included, so rates work from
  // the first scrape); "(none)" only once something was counted there.
  std::vector<size_t> shown;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (i != none_slot() || businesses_[i].Any()) shown.push_back(i);
  }
  auto biz = [&](size_t i) { return "business=\"" + Escape(names_[i]) + "\""; };

  out.append("# HELP mq_sidecar_build_info The sidecar's version (always 1).\n");
  out.append("# TYPE mq_sidecar_build_info gauge\n");
  out.append("mq_sidecar_build_info{version=\"").append(util::kVersion).append("\"} 1\n");

  Header(out, "mq_sidecar_publishes_total", "counter",
         "Publishes answered, by business and PublishResult status.");
  for (size_t i : shown) {
    for (int s = 1; s < kPublishStatuses; ++s) {
      out.append("mq_sidecar_publishes_total{")
          .append(biz(i))
          .append(",status=\"")
          .append(kStatusNames[static_cast<size_t>(s)])
          .append("\"} ")
          .append(Num(Load(businesses_[i].publishes[static_cast<size_t>(s)])))
          .append("\n");
    }
  }

  Header(out, "mq_sidecar_publish_confirm_seconds", "histogram",
         "Time from a publish reaching the publisher to the broker's confirm (CONFIRMED and "
         "UNROUTABLE).");
  for (size_t i : shown) {
    const Business& b = businesses_[i];
    uint64_t cumulative = 0;
    for (size_t k = 0; k <= kBuckets; ++k) {
      cumulative += Load(b.latency_buckets[k]);
      out.append("mq_sidecar_publish_confirm_seconds_bucket{")
          .append(biz(i))
          .append(",le=\"")
          .append(k < kBuckets ? Num(kLatencyBuckets[k]) : "+Inf")
          .append("\"} ")
          .append(Num(cumulative))
          .append("\n");
    }
    out.append("mq_sidecar_publish_confirm_seconds_sum{")
        .append(biz(i))
        .append("} ")
        .append(Num(static_cast<double>(Load(b.latency_sum_ns)) / 1e9))
        .append("\n");
    out.append("mq_sidecar_publish_confirm_seconds_count{")
        .append(biz(i))
        .append("} ")
        .append(Num(Load(b.latency_count)))
        .append("\n");
  }

  auto per_business = [&](std::string_view name, std::string_view type, std::string_view help,
                          auto value) {
    Header(out, name, type, help);
    for (size_t i : shown) {
      out.append(name).append("{").append(biz(i)).append("} ");
      out.append(Num(value(businesses_[i]))).append("\n");
    }
  };
  per_business("mq_sidecar_deliveries_total", "counter",
               "Deliveries handed to Subscribe streams, by business.",
               [](const Business& b) { return Load(b.deliveries); });
  per_business("mq_sidecar_redeliveries_total", "counter",
               "Deliveries handed to Subscribe streams with redelivered=true, by business.",
               [](const Business& b) { return Load(b.redeliveries); });
  per_business("mq_sidecar_acks_total", "counter",
               "Delivery ids acked by Subscribe clients (an ack with multiple counts once).",
               [](const Business& b) { return Load(b.acks); });
  Header(out, "mq_sidecar_nacks_total", "counter",
         "Delivery ids nacked by Subscribe clients (a nack with multiple counts once), by what "
         "the nack asks for: requeue, retry (requeue on a business with retry), reject (no "
         "requeue: dead-lettered or dropped).");
  for (size_t i : shown) {
    for (size_t o = 0; o < kNackOutcomes; ++o) {
      out.append("mq_sidecar_nacks_total{")
          .append(biz(i))
          .append(",outcome=\"")
          .append(kOutcomeNames[o])
          .append("\"} ")
          .append(Num(Load(businesses_[i].nacks[o])))
          .append("\n");
    }
  }
  per_business("mq_sidecar_unacked_deliveries", "gauge",
               "Deliveries handed to open Subscribe streams and not yet acked or nacked.",
               [](const Business& b) { return std::max<int64_t>(0, Load(b.unacked)); });
  per_business("mq_sidecar_subscribe_streams", "gauge", "Open Subscribe streams, by business.",
               [](const Business& b) { return Load(b.streams); });

  Header(out, "mq_sidecar_broker_connected", "gauge",
         "1 while the broker connection of this role is up.");
  for (size_t r = 0; r < kRoles; ++r) {
    out.append("mq_sidecar_broker_connected{role=\"").append(kRoleNames[r]).append("\"} ");
    out.append(Num(Load(links_[r].connected))).append("\n");
  }
  Header(out, "mq_sidecar_broker_reconnects_total", "counter",
         "Connections to the broker made after the first, by role.");
  for (size_t r = 0; r < kRoles; ++r) {
    out.append("mq_sidecar_broker_reconnects_total{role=\"").append(kRoleNames[r]).append("\"} ");
    out.append(Num(Load(links_[r].reconnects))).append("\n");
  }
  Header(out, "mq_sidecar_broker_blocked_seconds_total", "counter",
         "Time the broker held the connection blocked (connection.blocked: a resource alarm).");
  const int64_t now_ns = SteadyNs(now);
  for (size_t r = 0; r < kRoles; ++r) {
    uint64_t ns = Load(links_[r].blocked_ns);
    const int64_t since = Load(links_[r].blocked_since);
    if (since >= 0 && now_ns > since) ns += static_cast<uint64_t>(now_ns - since);
    out.append("mq_sidecar_broker_blocked_seconds_total{role=\"")
        .append(kRoleNames[r])
        .append("\"} ");
    out.append(Num(static_cast<double>(ns) / 1e9)).append("\n");
  }

  Header(out, "mq_sidecar_grpc_server_handled_total", "counter",
         "gRPC calls ended, by service, method and status code.");
  for (size_t m = 0; m < methods_.size(); ++m) {
    std::string_view full = methods_[m];
    std::string_view service = "other";
    std::string_view method = full;
    if (const size_t slash = full.rfind('/'); slash != std::string_view::npos && slash > 0) {
      service = full.substr(full[0] == '/' ? 1 : 0, slash - (full[0] == '/' ? 1 : 0));
      method = full.substr(slash + 1);
    }
    for (size_t c = 0; c < kGrpcCodes; ++c) {
      const uint64_t n = Load(grpc_calls_[m * kGrpcCodes + c]);
      if (n == 0) continue;
      out.append("mq_sidecar_grpc_server_handled_total{grpc_service=\"")
          .append(Escape(service))
          .append("\",grpc_method=\"")
          .append(Escape(method))
          .append("\",grpc_code=\"")
          .append(kCodeNames[c])
          .append("\"} ")
          .append(Num(n))
          .append("\n");
    }
  }

  Header(out, "mq_sidecar_process_cpu_seconds_total", "counter",
         "User and system CPU time of the process.");
  out.append("mq_sidecar_process_cpu_seconds_total ").append(Num(process.cpu_seconds)).append("\n");
  Header(out, "mq_sidecar_process_resident_memory_bytes", "gauge", "Resident memory (RSS).");
  out.append("mq_sidecar_process_resident_memory_bytes ")
      .append(Num(process.resident_bytes))
      .append("\n");
  Header(out, "mq_sidecar_process_virtual_memory_bytes", "gauge", "Virtual memory size.");
  out.append("mq_sidecar_process_virtual_memory_bytes ")
      .append(Num(process.virtual_bytes))
      .append("\n");
  Header(out, "mq_sidecar_process_open_fds", "gauge", "Open file descriptors.");
  out.append("mq_sidecar_process_open_fds ").append(Num(process.open_fds)).append("\n");
  Header(out, "mq_sidecar_process_threads", "gauge", "Threads of the process.");
  out.append("mq_sidecar_process_threads ").append(Num(process.threads)).append("\n");
  Header(out, "mq_sidecar_process_start_time_seconds", "gauge",
         "Start time of the process since the Unix epoch.");
  out.append("mq_sidecar_process_start_time_seconds ")
      .append(Num(process.start_time_seconds))
      .append("\n");
  return out;
}

ProcessStats ReadProcessStats() {
  ProcessStats s;
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    s.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                    static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  }
  const long page = sysconf(_SC_PAGESIZE);
  if (std::ifstream statm("/proc/self/statm"); statm) {
    uint64_t size = 0;
    uint64_t resident = 0;
    if (statm >> size >> resident) {
      s.virtual_bytes = size * static_cast<uint64_t>(page);
      s.resident_bytes = resident * static_cast<uint64_t>(page);
    }
  }
  if (std::ifstream stat("/proc/self/stat"); stat) {
    std::string line;
    std::getline(stat, line);
    // Fields after the command name (which may hold spaces) end in ')'.
    const size_t close = line.rfind(')');
    if (close != std::string::npos) {
      std::istringstream rest(line.substr(close + 2));
      std::vector<std::string> f;
      for (std::string field; rest >> field;) f.push_back(field);
      // f[0] is field 3 (state): threads is field 20, starttime field 22.
      if (f.size() > 19) {
        s.threads = std::strtoull(f[17].c_str(), nullptr, 10);
        const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
        const double start_after_boot =
            static_cast<double>(std::strtoull(f[19].c_str(), nullptr, 10)) / ticks;
        if (std::ifstream up("/proc/stat"); up) {
          for (std::string l; std::getline(up, l);) {
            if (l.rfind("btime ", 0) == 0) {
              s.start_time_seconds =
                  static_cast<double>(std::strtoull(l.c_str() + 6, nullptr, 10)) + start_after_boot;
              break;
            }
          }
        }
      }
    }
  }
  // Each entry is an open descriptor; the iterator's own is one of them.
  std::error_code ec;
  uint64_t fds = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++fds;
  }
  if (!ec && fds > 0) s.open_fds = fds - 1;
  return s;
}

// Here rather than in metrics_http.cc: the config loader checks the key
// without linking the HTTP server.
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text, bool allow_any_port) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        util::StrCat("expected host:port (e.g. 127.0.0.1:9464 or [::1]:9464), ", why));
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("got no port");
  std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad("got an unclosed '['");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("got an IPv6 address without brackets");
  }
  if (host.empty()) return bad("got no host");
  for (char c : host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == ':' || c == '_' || c == '%';
    if (!ok) return bad("got a host with characters a host name or address cannot have");
  }
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port < (allow_any_port ? 0 : 1) || port > 65535) {
    return bad("with a port 1..65535");
  }
  return ListenAddress{std::string(host), port};
}

}  // namespace mqs::observability
