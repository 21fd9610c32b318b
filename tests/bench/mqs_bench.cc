// mqs_bench: the same workload through a direct rabbitmq-c client and through
// mq-sidecar's gRPC API, so the sidecar's extra hop can be measured (issue 4).
//
//   mqs_bench --mode direct|sidecar --scenario publish|consume|e2e|streams|ceiling ...
//   mqs_bench --mode sidecar --scenario publish --batch 64 ...   (PublishBatchStream)
//   mqs_bench --mode sidecar --scenario unary --callers 100 ...   (concurrent unary Publish)
//   mqs_bench --mode sidecar --scenario library --callers 100 ... (the same callers, sharing
//                                         one mqsidecar::Publisher of the C++ client library)
//   mqs_bench --mode sidecar --scenario churn --churn-business B --churn-rate 100 ...
//   mqs_bench --scenario cleanup --queue Q --exchange X      (delete what a run declared)
//   mqs_bench --report results.jsonl --md table.md --csv table.csv --plot-dir DIR
//
// Every run appends one JSON line per result row to --json; tests/bench/run.sh
// drives the matrix and builds the table from those lines. The program exits
// non-zero on errors (failed publishes, lost messages, timeouts), never on speed.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "mqsidecar/client.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"

namespace mqs::bench {
namespace {

using Json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;
using mqsidecar::v1::Delivery;
using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;
using mqsidecar::v1::SubscribeRequest;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch())
      .count();
}

double Seconds(int64_t ns) { return static_cast<double>(ns) / 1e9; }

struct Options {
  std::string mode = "direct";  // direct | sidecar
  std::string scenario = "publish";
  std::string amqp_uri = "amqp://guest:guest@127.0.0.1:5672/";
  std::string target;  // gRPC address of the daemon (sidecar mode)
  std::string transport = "unix";
  std::string business;
  std::string exchange;
  std::string queue;
  std::string routing_key = "bench";
  std::string queue_type = "classic";  // a label: the daemon declared the queue
  size_t size = 256;
  uint32_t window = 64;
  // The sidecar's batch forms: N > 0 publishes with PublishBatchStream,
  // requests of up to N messages (as many as the window has room for), and
  // consumes with SubscribeBatch, max_batch_messages N, every pending
  // delivery acked in one request (delivery_ids). 0: PublishStream and
  // Subscribe, one message per gRPC message.
  uint32_t batch = 0;
  uint32_t prefetch = 64;
  // Acks coalesced: what is pending at once goes as one ack with `multiple`
  // (sidecar: while an ack is being written; direct: while more is buffered).
  bool ack_multiple = false;
  uint32_t consumers = 1;
  uint32_t callers = 100;  // unary: threads calling Publish at once
  uint64_t count = 100000;
  double duration = 5;  // publish scenarios stop at count or duration, whichever is first
  double rate = 0;      // msg/s; 0: as fast as the window allows
  int daemon_pid = 0;
  int broker_pid = 0;
  double timeout = 60;  // any wait longer than this is an error
  // churn: other Subscribe streams opened (and each closed churn_life later)
  // at churn_rate per second on churn_business, while `consumers` streams
  // receive the measured flow.
  std::string churn_business;
  double churn_rate = 100;
  double churn_life = 0.5;
  std::string json_out;
  std::string report_in;
  std::string md_out;
  std::string csv_out;
  std::string plot_dir;
};

// ---------------------------------------------------------------------------
// Measurements

struct ProcSample {
  double cpu_s = 0;
  int64_t rss_kib = 0;
  int64_t hwm_kib = 0;
};

// utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat, after the
// parenthesised command name, which may itself contain spaces).
ProcSample SampleProc(int pid) {
  ProcSample s;
  if (pid <= 0) return s;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  if (paren != std::string::npos) {
    std::istringstream rest(line.substr(paren + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    s.cpu_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stoll(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) s.hwm_kib = std::stoll(line.substr(6));
  }
  return s;
}

// Resets VmHWM to the current RSS, so each row reports its own peak.
void ResetPeakRss(int pid) {
  if (pid <= 0) return;
  std::ofstream("/proc/" + std::to_string(pid) + "/clear_refs") << "5";
}

double ClientCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// Latencies in ns; appended by one thread at a time (or merged after joins).
struct Latencies {
  std::vector<int64_t> ns;
  void Merge(const Latencies& o) { ns.insert(ns.end(), o.ns.begin(), o.ns.end()); }
  Json Percentiles() {
    if (ns.empty()) return nullptr;
    std::sort(ns.begin(), ns.end());
    auto at = [&](double q) {
      size_t i = static_cast<size_t>(std::lround(q * static_cast<double>(ns.size() - 1)));
      return static_cast<double>(ns[std::min(i, ns.size() - 1)]) / 1000.0;
    };
    return Json{{"p50", at(0.50)},   {"p90", at(0.90)}, {"p99", at(0.99)},
                {"p999", at(0.999)}, {"max", at(1.0)},  {"samples", ns.size()}};
  }
};

// A row of results: started before the work, finished after it.
class Row {
 public:
  explicit Row(const Options& o) : o_(o) {}
  void Start() {
    ResetPeakRss(o_.daemon_pid);
    daemon0_ = SampleProc(o_.daemon_pid);
    broker0_ = SampleProc(o_.broker_pid);
    client0_ = ClientCpuSeconds();
    t0_ = NowNs();
  }
  Json Finish(const std::string& scenario, uint64_t messages, uint64_t errors, Latencies* lat) {
    const int64_t t1 = NowNs();
    const double client = ClientCpuSeconds() - client0_;
    const ProcSample d = SampleProc(o_.daemon_pid);
    const ProcSample b = SampleProc(o_.broker_pid);
    const double secs = Seconds(t1 - t0_);
    const bool sidecar = o_.mode == "sidecar";
    Json j{{"scenario", scenario},
           {"mode", o_.mode},
           {"transport", sidecar ? o_.transport : "amqp"},
           {"queue_type", o_.queue_type},
           {"size", o_.size},
           {"window", o_.window},
           {"batch", o_.batch},
           {"prefetch", o_.prefetch},
           {"ack_multiple", o_.ack_multiple},
           {"consumers", o_.consumers},
           {"rate", o_.rate},
           {"messages", messages},
           {"errors", errors},
           {"seconds", secs},
           {"msgs_per_s", secs > 0 ? static_cast<double>(messages) / secs : 0.0},
           {"client_cpu_s", client},
           {"latency_us", lat != nullptr ? lat->Percentiles() : Json(nullptr)}};
    if (o_.daemon_pid > 0) {
      j["daemon_cpu_s"] = d.cpu_s - daemon0_.cpu_s;
      j["daemon_cpu_us_per_msg"] =
          messages > 0 ? (d.cpu_s - daemon0_.cpu_s) * 1e6 / static_cast<double>(messages) : 0.0;
      j["daemon_rss_kib"] = d.rss_kib;
      j["daemon_hwm_kib"] = d.hwm_kib;
    }
    if (o_.broker_pid > 0) j["broker_cpu_s"] = b.cpu_s - broker0_.cpu_s;
    return j;
  }

 private:
  const Options& o_;
  ProcSample daemon0_, broker0_;
  double client0_ = 0;
  int64_t t0_ = 0;
};

// The first 16 bytes of every payload: send time (steady clock, ns) and sequence.
std::string MakePayload(size_t size) { return std::string(std::max<size_t>(size, 16), 'x'); }
void Stamp(std::string* payload, int64_t send_ns, uint64_t seq) {
  std::memcpy(payload->data(), &send_ns, 8);
  std::memcpy(payload->data() + 8, &seq, 8);
}
int64_t SendNsOf(const void* bytes, size_t len) {
  int64_t ns = 0;
  if (len >= 8) std::memcpy(&ns, bytes, 8);
  return ns;
}

// Shared by consumers: how many deliveries were expected and have arrived.
struct ConsumeGoal {
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> target{UINT64_MAX};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> duplicates{0};   // a sequence seen before
  std::atomic<uint64_t> redelivered{0};  // deliveries flagged redelivered
  std::mutex mu;
  std::condition_variable cv;
  std::mutex seen_mu;
  std::vector<bool> seen;  // by the sequence in the payload
  // Records a delivery's sequence: a repeat is a duplicate delivery.
  void See(const void* bytes, size_t len, bool redelivery) {
    if (redelivery) redelivered.fetch_add(1);
    if (len < 16) return;
    uint64_t seq = 0;
    std::memcpy(&seq, static_cast<const char*>(bytes) + 8, 8);
    std::lock_guard<std::mutex> lock(seen_mu);
    if (seq >= seen.size()) seen.resize(seq + 1024, false);
    if (seen[seq]) {
      duplicates.fetch_add(1);
    } else {
      seen[seq] = true;
    }
  }
  void Add() {
    if (received.fetch_add(1) + 1 >= target.load()) {
      std::lock_guard<std::mutex> lock(mu);
      cv.notify_all();
    }
  }
  bool WaitFor(uint64_t n, double timeout_s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
      return received.load() >= n || errors.load() > 0;
    }) && errors.load() == 0;
  }
};

// Pacing for fixed-rate runs: how many messages may have been sent by now.
struct Pacer {
  double rate = 0;
  int64_t start_ns = 0;
  uint64_t Allowed(int64_t now) const {
    if (rate <= 0) return UINT64_MAX;
    return static_cast<uint64_t>(Seconds(now - start_ns) * rate) + 1;
  }
  int64_t NextSlotNs(uint64_t sent) const {
    return start_ns + static_cast<int64_t>(static_cast<double>(sent) / rate * 1e9);
  }
};

// ---------------------------------------------------------------------------
// Direct: one rabbitmq-c connection per thread, as a service would use it.

class AmqpConn {
 public:
  explicit AmqpConn(const std::string& uri) {
    std::vector<char> buf(uri.begin(), uri.end());
    buf.push_back('\0');
    amqp_connection_info info;
    if (amqp_parse_url(buf.data(), &info) != AMQP_STATUS_OK) Fail("bad AMQP URI " + uri);
    // rabbitmq-c reads ".../" as the empty vhost; like the daemon, take "/".
    if (info.vhost == nullptr || *info.vhost == '\0') info.vhost = const_cast<char*>("/");
    state_ = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(state_);
    if (socket == nullptr || amqp_socket_open(socket, info.host, info.port) != AMQP_STATUS_OK) {
      Fail("cannot connect to " + std::string(info.host) + ":" + std::to_string(info.port));
    }
    // Heartbeat 0: runs are short, and a synchronous loop should not have to
    // answer heartbeats while it blocks on confirms.
    Check(amqp_login(state_, info.vhost, 2047, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user,
                     info.password),
          "login");
  }
  ~AmqpConn() {
    amqp_connection_close(state_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(state_);
  }
  AmqpConn(const AmqpConn&) = delete;
  AmqpConn& operator=(const AmqpConn&) = delete;

  amqp_connection_state_t state() { return state_; }

  void OpenChannel(amqp_channel_t ch) {
    amqp_channel_open(state_, ch);
    Check(amqp_get_rpc_reply(state_), "channel.open");
  }

  void Check(const amqp_rpc_reply_t& r, const std::string& what) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
      Fail(what + ": " + amqp_error_string2(r.library_error));
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      auto* m = static_cast<amqp_channel_close_t*>(r.reply.decoded);
      Fail(what + ": channel closed: " +
           std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len));
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      auto* m = static_cast<amqp_connection_close_t*>(r.reply.decoded);
      Fail(what + ": connection closed: " +
           std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len));
    }
    Fail(what + ": the broker refused it");
  }

  // Ready messages and consumers of a queue (queue.declare passive).
  std::pair<uint32_t, uint32_t> QueueStats(amqp_channel_t ch, const std::string& queue) {
    auto* ok = amqp_queue_declare(state_, ch, amqp_cstring_bytes(queue.c_str()), 1, 0, 0, 0,
                                  amqp_empty_table);
    Check(amqp_get_rpc_reply(state_), "queue.declare passive " + queue);
    return {ok->message_count, ok->consumer_count};
  }

  void Purge(amqp_channel_t ch, const std::string& queue) {
    amqp_queue_purge(state_, ch, amqp_cstring_bytes(queue.c_str()));
    Check(amqp_get_rpc_reply(state_), "queue.purge " + queue);
  }

  [[noreturn]] static void Fail(const std::string& why) { throw std::runtime_error(why); }

 private:
  amqp_connection_state_t state_ = nullptr;
};

amqp_bytes_t Bytes(const std::string& s) { return {s.size(), const_cast<char*>(s.data())}; }

// Publishes o.count messages (or for o.duration) with up to `window`
// unconfirmed; confirms == false is the ceiling run (no confirm mode at all).
// Latency: basic.publish -> the basic.ack covering it.
struct PublishOutcome {
  uint64_t sent = 0;
  uint64_t confirmed = 0;
  uint64_t errors = 0;
  Latencies lat;
};

PublishOutcome DirectPublish(const Options& o, uint32_t window, bool confirms, uint64_t count,
                             double duration, double rate) {
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  amqp_connection_state_t st = conn.state();
  if (confirms) {
    amqp_confirm_select(st, 1);
    conn.Check(amqp_get_rpc_reply(st), "confirm.select");
  }
  // Properties as the sidecar sets them: persistent, message_id, timestamp.
  amqp_basic_properties_t props{};
  props._flags =
      AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  props.delivery_mode = 2;
  char message_id[40];
  std::string payload = MakePayload(o.size);
  const std::string exchange = o.exchange;
  const std::string routing_key = o.routing_key;

  PublishOutcome out;
  std::vector<int64_t> send_ns;  // by delivery tag - 1; -1 once settled
  send_ns.reserve(std::min<uint64_t>(count, 1u << 20));
  uint64_t outstanding = 0;
  const int64_t start = NowNs();
  const int64_t end = duration > 0 ? start + static_cast<int64_t>(duration * 1e9) : INT64_MAX;
  Pacer pacer{rate, start};

  uint64_t floor = 1;  // every tag below it is settled
  auto settle = [&](uint64_t tag, bool multiple, bool ok, int64_t now) {
    if (tag < floor || tag > send_ns.size()) return;
    for (uint64_t t = multiple ? floor : tag; t <= tag; ++t) {
      int64_t& s = send_ns[t - 1];
      if (s < 0) continue;
      out.lat.ns.push_back(now - s);
      s = -1;
      --outstanding;
      if (ok) {
        ++out.confirmed;
      } else {
        ++out.errors;
      }
    }
    while (floor <= send_ns.size() && send_ns[floor - 1] < 0) ++floor;
  };
  // Handles one frame: a confirm, a nack or a return (unroutable).
  auto on_frame = [&](const amqp_frame_t& f) {
    if (f.frame_type != AMQP_FRAME_METHOD) return;
    const int64_t now = NowNs();
    switch (f.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        auto* a = static_cast<amqp_basic_ack_t*>(f.payload.method.decoded);
        settle(a->delivery_tag, a->multiple != 0, true, now);
        break;
      }
      case AMQP_BASIC_NACK_METHOD: {
        auto* n = static_cast<amqp_basic_nack_t*>(f.payload.method.decoded);
        settle(n->delivery_tag, n->multiple != 0, false, now);
        break;
      }
      case AMQP_BASIC_RETURN_METHOD: {
        amqp_message_t m;
        conn.Check(amqp_read_message(st, f.channel, &m, 0), "reading a basic.return");
        amqp_destroy_message(&m);
        ++out.errors;  // its ack follows and settles it
        std::cerr << "mqs_bench: a publish was returned unroutable\n";
        break;
      }
      case AMQP_CHANNEL_CLOSE_METHOD:
        AmqpConn::Fail("the broker closed the publishing channel");
      default:
        break;
    }
  };

  while (true) {
    const int64_t now = NowNs();
    const bool more = out.sent < count && now < end;
    const bool may_send =
        more && out.sent < pacer.Allowed(now) && (!confirms || outstanding < window);
    if (may_send) {
      snprintf(message_id, sizeof message_id, "bench-%030llu",
               static_cast<unsigned long long>(out.sent));
      props.message_id = amqp_cstring_bytes(message_id);
      props.timestamp = static_cast<uint64_t>(time(nullptr));
      const int64_t t = NowNs();
      Stamp(&payload, t, out.sent);
      const int rc = amqp_basic_publish(st, 1, Bytes(exchange), Bytes(routing_key),
                                        /*mandatory=*/1, 0, &props, Bytes(payload));
      if (rc != AMQP_STATUS_OK) AmqpConn::Fail(std::string("publish: ") + amqp_error_string2(rc));
      ++out.sent;
      if (!confirms) continue;
      send_ns.push_back(t);
      ++outstanding;
      // Take whatever confirms have already arrived, without waiting.
      amqp_frame_t f;
      timeval zero{0, 0};
      while (amqp_simple_wait_frame_noblock(st, &f, &zero) == AMQP_STATUS_OK) on_frame(f);
      continue;
    }
    if (!more && outstanding == 0) break;
    if (!confirms) {
      if (!more) break;
      std::this_thread::sleep_until(
          SteadyClock::time_point(std::chrono::nanoseconds(pacer.NextSlotNs(out.sent))));
      continue;
    }
    // Wait for a confirm, or until the next send slot of a paced run.
    int64_t wait_ns = static_cast<int64_t>(o.timeout * 1e9);
    if (more && outstanding < window && rate > 0) {
      wait_ns = std::max<int64_t>(0, pacer.NextSlotNs(out.sent) - NowNs());
    }
    if (outstanding == 0) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(wait_ns));
      continue;
    }
    // rabbitmq-c polls with millisecond timeouts, so a paced run's sub-ms
    // waits would spin: wait on the socket here with ppoll's nanoseconds.
    if (amqp_frames_enqueued(st) == 0 && amqp_data_in_buffer(st) == 0) {
      pollfd p{amqp_get_sockfd(st), POLLIN, 0};
      const timespec ts{static_cast<time_t>(wait_ns / 1000000000), wait_ns % 1000000000};
      if (ppoll(&p, 1, &ts, nullptr) == 0) {
        if (wait_ns >= static_cast<int64_t>(o.timeout * 1e9)) {
          AmqpConn::Fail("no publisher confirm within the timeout");
        }
        continue;
      }
    }
    timeval tv{static_cast<time_t>(o.timeout), 0};
    amqp_frame_t f;
    const int rc = amqp_simple_wait_frame_noblock(st, &f, &tv);
    if (rc == AMQP_STATUS_OK) {
      on_frame(f);
    } else if (rc == AMQP_STATUS_TIMEOUT) {
      if (wait_ns >= static_cast<int64_t>(o.timeout * 1e9)) {
        AmqpConn::Fail("no publisher confirm within the timeout");
      }
    } else {
      AmqpConn::Fail(std::string("waiting for confirms: ") + amqp_error_string2(rc));
    }
    amqp_maybe_release_buffers(st);
  }
  return out;
}

// One consumer connection with `channels` channels, each a consumer of the
// queue with basic.qos(prefetch); acks every delivery (as the sidecar does),
// or with --ack-multiple one basic.ack (multiple) for what it has handled
// once nothing more is buffered.
void DirectConsume(const Options& o, uint32_t channels, ConsumeGoal* goal, Latencies* lat,
                   std::atomic<uint32_t>* ready) {
  AmqpConn conn(o.amqp_uri);
  amqp_connection_state_t st = conn.state();
  for (uint32_t i = 0; i < channels; ++i) {
    const auto ch = static_cast<amqp_channel_t>(i + 1);
    conn.OpenChannel(ch);
    amqp_basic_qos(st, ch, 0, static_cast<uint16_t>(o.prefetch), 0);
    conn.Check(amqp_get_rpc_reply(st), "basic.qos");
    amqp_basic_consume(st, ch, Bytes(o.queue), amqp_empty_bytes, 0, /*no_ack=*/0, 0,
                       amqp_empty_table);
    conn.Check(amqp_get_rpc_reply(st), "basic.consume");
  }
  ready->fetch_add(1);
  std::map<amqp_channel_t, uint64_t> unsent;  // --ack-multiple: highest tag to ack per channel
  auto flush = [&] {
    for (const auto& [ch, tag] : unsent) {
      if (amqp_basic_ack(st, ch, tag, /*multiple=*/1) != AMQP_STATUS_OK) {
        AmqpConn::Fail("basic.ack failed");
      }
    }
    unsent.clear();
  };
  while (!goal->stop.load(std::memory_order_relaxed)) {
    amqp_maybe_release_buffers(st);
    amqp_envelope_t env;
    timeval tv{0, 100000};
    amqp_rpc_reply_t r = amqp_consume_message(st, &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
      const int64_t now = NowNs();
      lat->ns.push_back(now - SendNsOf(env.message.body.bytes, env.message.body.len));
      goal->See(env.message.body.bytes, env.message.body.len, env.redelivered != 0);
      int rc = AMQP_STATUS_OK;
      if (o.ack_multiple) {
        unsent[env.channel] = env.delivery_tag;
        if (amqp_data_in_buffer(st) == 0 && amqp_frames_enqueued(st) == 0) flush();
      } else {
        rc = amqp_basic_ack(st, env.channel, env.delivery_tag, 0);
      }
      amqp_destroy_envelope(&env);
      if (rc != AMQP_STATUS_OK) AmqpConn::Fail("basic.ack failed");
      goal->Add();
      continue;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
      flush();
      continue;
    }
    AmqpConn::Fail("consuming: the connection failed");
  }
  flush();
}

// ---------------------------------------------------------------------------
// Sidecar: the daemon's gRPC API on the async (completion-queue) API, all
// streams served by one client thread that polls its own queue. gRPC 1.51's
// callback API would hand every completion from its poller to another
// thread first, a thread wake-up per message read or written (the same
// reason the daemon itself uses the completion-queue API).

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  // A distinct argument gives each channel its own connection (gRPC would
  // otherwise share one subchannel between equal channels).
  args.SetInt("mqs.bench.channel", index);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// A completion-queue tag: calls the handler `Fn` of `Call` with ok.
struct Tag {
  virtual void Done(bool ok) = 0;
  virtual ~Tag() = default;
};
template <typename Call, void (Call::*Fn)(bool)>
struct OpTag final : Tag {
  explicit OpTag(Call* c) : call(c) {}
  void Done(bool ok) override { (call->*Fn)(ok); }
  Call* call;
};

// ClientQueue: one completion queue and the thread that serves it.
class ClientQueue {
 public:
  ClientQueue() : thread_([this] { Serve(); }) {}
  ~ClientQueue() {
    cq_.Shutdown();
    thread_.join();
  }
  grpc::CompletionQueue* cq() { return &cq_; }

 private:
  void Serve() {
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) static_cast<Tag*>(tag)->Done(ok);
  }
  grpc::CompletionQueue cq_;
  std::thread thread_;
};

// StreamOps: the bookkeeping both streams share: operations in flight, the
// end of the call, and a wait for both.
class StreamOps {
 protected:
  // Waits until the call has finished and no operation is pending; false on
  // timeout (the call is then cancelled and still waited for).
  bool WaitFinished(std::unique_lock<std::mutex>& lock, grpc::ClientContext& ctx,
                    double timeout_s) {
    auto over = [&] { return finished_ && ops_ == 0; };
    if (cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), over)) return true;
    lock.unlock();
    ctx.TryCancel();
    lock.lock();
    cv_.wait(lock, over);
    return false;
  }
  void OpDoneLocked() {
    if (--ops_ == 0 && finished_) cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int ops_ = 0;  // started, not completed
  bool finished_ = false;
  grpc::Status status_;
};

// PublishStream (kBatch false) or PublishBatchStream (true: requests of up
// to `batch` messages, as many as the window has room for) with up to
// `window` messages unanswered; results are matched by sequence. Latency:
// Write -> the result.
template <bool kBatch>
class PublishCall final : StreamOps {
  using Request = std::conditional_t<kBatch, mqsidecar::v1::PublishBatch, PublishRequest>;
  using Response = std::conditional_t<kBatch, mqsidecar::v1::PublishResultBatch, PublishResult>;

 public:
  PublishCall(mqsidecar::v1::PubSub::Stub* stub, grpc::CompletionQueue* cq, const Options& o,
              uint64_t count, double duration)
      : window_(o.window), batch_(std::max<uint32_t>(o.batch, 1)), count_(count) {
    request_.set_business(o.business);
    request_.set_routing_key(o.routing_key);
    payload_ = MakePayload(o.size);
    start_ = NowNs();
    end_ = duration > 0 ? start_ + static_cast<int64_t>(duration * 1e9) : INT64_MAX;
    pacer_ = Pacer{o.rate, start_};
    if constexpr (kBatch) {
      stream_ = stub->PrepareAsyncPublishBatchStream(&ctx_, cq);
    } else {
      stream_ = stub->PrepareAsyncPublishStream(&ctx_, cq);
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++ops_;
    stream_->StartCall(&start_tag_);
  }

  // Paced runs: called by the pacing thread to release due sends.
  void Tick() {
    std::lock_guard<std::mutex> lock(mu_);
    MaybeWriteLocked();
  }

  PublishOutcome Wait(double timeout_s) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!WaitFinished(lock, ctx_, timeout_s)) {
      throw std::runtime_error("PublishStream did not end within the timeout");
    }
    if (!status_.ok()) {
      throw std::runtime_error("PublishStream ended with " + std::to_string(status_.error_code()) +
                               ": " + status_.error_message());
    }
    PublishOutcome out;
    out.sent = sent_;
    out.confirmed = confirmed_;
    out.errors = sent_ - confirmed_;  // failed, unroutable or unanswered
    out.lat = std::move(lat_);
    return out;
  }

 private:
  void OnStarted(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      started_ = true;
      ++ops_;
      stream_->Read(&result_, &read_tag_);
      MaybeWriteLocked();
    } else {
      done_writing_ = true;
      ++ops_;
      stream_->Finish(&status_, &finish_tag_);
    }
    OpDoneLocked();
  }

  void OnWriteDone(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      done_writing_ = true;  // the stream is over; the failed read finishes it
    } else {
      MaybeWriteLocked();
    }
    OpDoneLocked();
  }

  void OnReadDone(bool ok) {
    const int64_t now = NowNs();
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {
      // The daemon ended the stream (every result written, or an error).
      ++ops_;
      stream_->Finish(&status_, &finish_tag_);
      OpDoneLocked();
      return;
    }
    if constexpr (kBatch) {
      for (const PublishResult& r : result_.results()) OnResultLocked(r, now);
    } else {
      OnResultLocked(result_, now);
    }
    MaybeWriteLocked();
    stream_->Read(&result_, &read_tag_);  // the read op stays counted
  }

  void OnFinished(bool /*ok*/) {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    OpDoneLocked();
  }

  void OnResultLocked(const PublishResult& r, int64_t now) {
    const uint64_t seq = r.sequence();
    if (seq < send_ns_.size() && send_ns_[seq] >= 0) {
      lat_.ns.push_back(now - send_ns_[seq]);
      send_ns_[seq] = -1;
    }
    if (r.status() == PublishResult::CONFIRMED) {
      ++confirmed_;
    } else if (errors_++ < 5) {
      std::cerr << "mqs_bench: publish " << seq << ": " << PublishResult::Status_Name(r.status())
                << " " << r.error() << "\n";
    }
    --outstanding_;
  }

  void MaybeWriteLocked() {
    // gRPC 1.51 refuses a write before the call has started (TOO_MANY_OPERATIONS).
    if (!started_ || writing_ || done_writing_) return;
    const int64_t now = NowNs();
    if (sent_ >= count_ || now >= end_) {
      // The daemon ends the stream once every result is written.
      done_writing_ = true;
      ++ops_;
      writing_ = true;
      stream_->WritesDone(&write_tag_);
      return;
    }
    if (outstanding_ >= window_ || sent_ >= pacer_.Allowed(now)) return;
    const uint64_t n = std::min<uint64_t>(
        {batch_, window_ - outstanding_, count_ - sent_, pacer_.Allowed(now) - sent_});
    if constexpr (kBatch) batch_request_.clear_messages();
    for (uint64_t i = 0; i < n; ++i) {
      Stamp(&payload_, now, sent_);
      request_.set_sequence(sent_);
      request_.set_payload(payload_);
      if constexpr (kBatch) *batch_request_.add_messages() = request_;
      send_ns_.push_back(now);
      ++sent_;
      ++outstanding_;
    }
    writing_ = true;
    ++ops_;
    if constexpr (kBatch) {
      stream_->Write(batch_request_, &write_tag_);
    } else {
      stream_->Write(request_, &write_tag_);
    }
  }

  const uint32_t window_;
  const uint32_t batch_;
  const uint64_t count_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<Request, Response>> stream_;
  OpTag<PublishCall, &PublishCall::OnStarted> start_tag_{this};
  OpTag<PublishCall, &PublishCall::OnWriteDone> write_tag_{this};
  OpTag<PublishCall, &PublishCall::OnReadDone> read_tag_{this};
  OpTag<PublishCall, &PublishCall::OnFinished> finish_tag_{this};
  PublishRequest request_;                     // serialized by Write
  mqsidecar::v1::PublishBatch batch_request_;  // kBatch: serialized by Write
  Response result_;                            // owned by the read in flight
  std::string payload_;
  int64_t start_ = 0, end_ = 0;
  Pacer pacer_;
  std::vector<int64_t> send_ns_;  // by sequence; -1 once answered
  uint64_t sent_ = 0, confirmed_ = 0, errors_ = 0, outstanding_ = 0;
  bool started_ = false, writing_ = false, done_writing_ = false;
  Latencies lat_;
};

// One Subscribe stream: acks every delivery, one write at a time; with
// --ack-multiple, the acks that piled up during a write go as one (multiple).
// With --batch N, a SubscribeBatch stream instead: the acks that piled up
// go as one request listing them (delivery_ids).
class SubscribeCall final : StreamOps {
 public:
  SubscribeCall(mqsidecar::v1::PubSub::Stub* stub, grpc::CompletionQueue* cq, const Options& o,
                int index, ConsumeGoal* goal)
      : goal_(goal), ack_multiple_(o.ack_multiple), batch_(o.batch > 0) {
    auto* open = out_.mutable_open();
    open->set_business(o.business);
    open->set_prefetch(o.prefetch);
    open->set_max_batch_messages(o.batch);
    open->set_consumer_name("bench" + std::to_string(index));
    if (batch_) {
      batch_stream_ = stub->PrepareAsyncSubscribeBatch(&ctx_, cq);
    } else {
      stream_ = stub->PrepareAsyncSubscribe(&ctx_, cq);
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++ops_;
    if (batch_) {
      batch_stream_->StartCall(&start_tag_);
    } else {
      stream_->StartCall(&start_tag_);
    }
  }

  // Half-closes once every ack is written; the daemon then ends the stream.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    MaybeWriteLocked();
  }

  // Waits for the end of the stream; returns an error text or "".
  std::string Wait(double timeout_s, Latencies* lat) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!WaitFinished(lock, ctx_, timeout_s)) return "Subscribe did not end within the timeout";
    lat->Merge(lat_);
    if (failed_) return "an ack could not be written";
    if (!status_.ok()) {
      return "Subscribe ended with " + std::to_string(status_.error_code()) + ": " +
             status_.error_message();
    }
    return "";
  }

 private:
  void OnStarted(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      started_ = true;
      writing_ = true;
      ops_ += 2;
      WriteLocked();
      ReadLocked();
    } else {
      failed_ = true;
      ++ops_;
      FinishLocked();
    }
    OpDoneLocked();
  }

  void WriteLocked() {
    if (batch_) {
      batch_stream_->Write(out_, &write_tag_);
    } else {
      stream_->Write(out_, &write_tag_);
    }
  }
  void ReadLocked() {
    if (batch_) {
      batch_stream_->Read(&batch_in_, &read_tag_);
    } else {
      stream_->Read(&delivery_, &read_tag_);
    }
  }
  void FinishLocked() {
    if (batch_) {
      batch_stream_->Finish(&status_, &finish_tag_);
    } else {
      stream_->Finish(&status_, &finish_tag_);
    }
  }
  void See(const Delivery& d, int64_t now) {
    const std::string& p = d.payload();
    lat_.ns.push_back(now - SendNsOf(p.data(), p.size()));
    goal_->See(p.data(), p.size(), d.redelivered());
    acks_.push_back(d.delivery_id());
  }

  void OnReadDone(bool ok) {
    const int64_t now = NowNs();
    uint64_t seen = 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        ended_ = true;
        ++ops_;
        FinishLocked();
        OpDoneLocked();
        return;
      }
      if (batch_) {
        seen = static_cast<uint64_t>(batch_in_.deliveries_size());
        for (const Delivery& d : batch_in_.deliveries()) See(d, now);
      } else {
        See(delivery_, now);
      }
      MaybeWriteLocked();
      ReadLocked();  // the read op stays counted
    }
    for (uint64_t i = 0; i < seen; ++i) goal_->Add();
  }

  void OnWriteDone(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      failed_ = true;
    } else {
      MaybeWriteLocked();
    }
    OpDoneLocked();
  }

  void OnFinished(bool /*ok*/) {
    bool early;
    {
      std::lock_guard<std::mutex> lock(mu_);
      early = !closing_;
      finished_ = true;
      if (early) {
        // Ended before we closed it: wake the waiting run instead of timing out.
        std::cerr << "mqs_bench: a Subscribe stream ended early: " << status_.error_message()
                  << "\n";
      }
      OpDoneLocked();
    }
    if (early) {
      goal_->errors.fetch_add(1);
      std::lock_guard<std::mutex> glock(goal_->mu);
      goal_->cv.notify_all();
    }
  }

  void MaybeWriteLocked() {
    // Nothing before the call has started, nothing more once the stream has
    // ended (the daemon may end it first).
    if (!started_ || writing_ || half_closed_ || failed_ || ended_) return;
    if (!acks_.empty()) {
      // Delivery ids grow in delivery order, so the last one pending covers
      // every one before it.
      auto* ack = out_.mutable_ack();
      ack->set_multiple(ack_multiple_ && acks_.size() > 1);
      if (batch_) {
        ack->set_delivery_id(0);
        ack->set_multiple(false);
        ack->mutable_delivery_ids()->Assign(acks_.begin(), acks_.end());
        acks_.clear();
      } else if (ack->multiple()) {
        ack->set_delivery_id(acks_.back());
        acks_.clear();
      } else {
        ack->set_delivery_id(acks_.front());
        acks_.pop_front();
      }
      writing_ = true;
      ++ops_;
      WriteLocked();
    } else if (closing_) {
      half_closed_ = true;
      writing_ = true;
      ++ops_;
      if (batch_) {
        batch_stream_->WritesDone(&write_tag_);
      } else {
        stream_->WritesDone(&write_tag_);
      }
    }
  }

  ConsumeGoal* goal_;
  const bool ack_multiple_;
  const bool batch_;  // SubscribeBatch
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<SubscribeRequest, Delivery>> stream_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<SubscribeRequest, mqsidecar::v1::DeliveryBatch>>
      batch_stream_;
  OpTag<SubscribeCall, &SubscribeCall::OnStarted> start_tag_{this};
  OpTag<SubscribeCall, &SubscribeCall::OnWriteDone> write_tag_{this};
  OpTag<SubscribeCall, &SubscribeCall::OnReadDone> read_tag_{this};
  OpTag<SubscribeCall, &SubscribeCall::OnFinished> finish_tag_{this};
  SubscribeRequest out_;                   // serialized by Write
  Delivery delivery_;                      // owned by the read in flight
  mqsidecar::v1::DeliveryBatch batch_in_;  // the same, with --batch
  std::deque<uint64_t> acks_;
  bool started_ = false, writing_ = false, closing_ = false, half_closed_ = false, failed_ = false,
       ended_ = false;
  Latencies lat_;
};

// ---------------------------------------------------------------------------
// Consumers of either mode, started before and stopped after the work.

class ConsumerGroup {
 public:
  ConsumerGroup(const Options& o, ConsumeGoal* goal) : o_(o), goal_(goal) {}
  ~ConsumerGroup() { Stop(); }

  // n consumers over up to 10 connections (direct) or gRPC channels (sidecar).
  void Start(uint32_t n) {
    const uint32_t conns = std::min<uint32_t>(n, 10);
    if (o_.mode == "direct") {
      lats_.resize(conns);
      for (uint32_t c = 0; c < conns; ++c) {
        const uint32_t channels = n / conns + (c < n % conns ? 1 : 0);
        threads_.emplace_back([this, c, channels] {
          try {
            DirectConsume(o_, channels, goal_, &lats_[c], &ready_);
          } catch (const std::exception& e) {
            std::lock_guard<std::mutex> lock(err_mu_);
            error_ = e.what();
            goal_->errors.fetch_add(1);
            ready_.fetch_add(1);
            std::lock_guard<std::mutex> glock(goal_->mu);
            goal_->cv.notify_all();
          }
        });
      }
      while (ready_.load() < conns) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      ThrowIfFailed();
      return;
    }
    for (uint32_t c = 0; c < conns; ++c) {
      stubs_.push_back(mqsidecar::v1::PubSub::NewStub(NewChannel(o_.target, 1000 + c)));
    }
    queue_ = std::make_unique<ClientQueue>();
    for (uint32_t i = 0; i < n; ++i) {
      calls_.push_back(
          std::make_unique<SubscribeCall>(stubs_[i % conns].get(), queue_->cq(), o_, i, goal_));
    }
  }

  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    goal_->stop.store(true);
    for (auto& t : threads_) t.join();
    for (auto& l : lats_) lat_.Merge(l);
    for (auto& r : calls_) r->Close();
    for (auto& r : calls_) {
      std::string err = r->Wait(o_.timeout, &lat_);
      if (!err.empty() && error_.empty()) error_ = err;
    }
  }

  void ThrowIfFailed() {
    std::lock_guard<std::mutex> lock(err_mu_);
    if (!error_.empty()) throw std::runtime_error(error_);
  }

  Latencies& latencies() { return lat_; }

 private:
  const Options& o_;
  ConsumeGoal* goal_;
  bool stopped_ = false;
  std::atomic<uint32_t> ready_{0};  // direct consumer threads that consume (or failed)
  std::vector<std::thread> threads_;
  std::vector<Latencies> lats_;
  std::vector<std::unique_ptr<mqsidecar::v1::PubSub::Stub>> stubs_;
  std::unique_ptr<ClientQueue> queue_;  // outlives the calls (declared first)
  std::vector<std::unique_ptr<SubscribeCall>> calls_;
  std::mutex err_mu_;
  std::string error_;
  Latencies lat_;
};

// SidecarPublish: one publishing stream of the daemon's, paced when o.rate > 0.
template <bool kBatch>
PublishOutcome SidecarPublish(const Options& o, uint64_t count, double duration) {
  auto stub = mqsidecar::v1::PubSub::NewStub(NewChannel(o.target, 1));
  ClientQueue queue;
  PublishCall<kBatch> call(stub.get(), queue.cq(), o, count, duration);
  std::atomic<bool> done{false};
  std::thread pacer;
  if (o.rate > 0) {
    // A tick every 100 µs releases the sends that are due.
    pacer = std::thread([&] {
      while (!done.load()) {
        call.Tick();
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    });
  } else if (duration > 0) {
    // Ends an unpaced run on time even when no result arrives to trigger it.
    pacer = std::thread([&] {
      const auto end = SteadyClock::now() + std::chrono::duration<double>(duration);
      while (!done.load() && SteadyClock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      call.Tick();
    });
  }
  PublishOutcome out;
  try {
    out = call.Wait(duration + o.timeout);
  } catch (...) {
    done.store(true);
    if (pacer.joinable()) pacer.join();
    throw;
  }
  done.store(true);
  if (pacer.joinable()) pacer.join();
  return out;
}

// Publishes in the run's mode; paced when o.rate > 0.
PublishOutcome Publish(const Options& o, uint64_t count, double duration) {
  if (o.mode == "direct") return DirectPublish(o, o.window, true, count, duration, o.rate);
  if (o.batch > 0) return SidecarPublish<true>(o, count, duration);
  return SidecarPublish<false>(o, count, duration);
}

void WaitSidecarReady(const Options& o) {
  auto stub = mqsidecar::v1::PubSub::NewStub(NewChannel(o.target, 0));
  const auto deadline = SteadyClock::now() + std::chrono::duration<double>(o.timeout);
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    mqsidecar::v1::Topology topo;
    grpc::Status s = stub->GetTopology(&ctx, mqsidecar::v1::GetTopologyRequest(), &topo);
    if (s.ok() && topo.connected()) return;
    if (SteadyClock::now() > deadline) {
      throw std::runtime_error("the daemon at " + o.target +
                               " is not ready: " + (s.ok() ? "not connected" : s.error_message()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// ---------------------------------------------------------------------------
// Scenarios. Each returns the rows it produced.

void RequireNoErrors(uint64_t errors, const std::string& what) {
  if (errors > 0) throw std::runtime_error(what + ": " + std::to_string(errors) + " errors");
}

// After a consume run that received everything, the queue should be empty.
// Messages left are not lost (all were received) but were returned after
// their ack: RabbitMQ quorum queues can ignore acks sent just before a
// channel closes (rabbitmq-server#10327), and the sidecar closes a stream's
// channel right after its last acks. Counted and reported, not an error.
uint32_t LeftInQueue(const Options& o) {
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  const auto deadline = SteadyClock::now() + std::chrono::seconds(3);
  uint32_t messages = 0;
  while ((messages = conn.QueueStats(1, o.queue).first) > 0 && SteadyClock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (messages > 0) {
    std::cerr << "mqs_bench: warning: " << messages << " acked messages are back in " << o.queue
              << " (acks before a channel close ignored by the broker)\n";
    conn.Purge(1, o.queue);
  }
  return messages;
}

void PurgeQueue(const Options& o) {
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  conn.Purge(1, o.queue);
}

std::vector<Json> RunPublish(const Options& o) {
  PurgeQueue(o);
  Row row(o);
  row.Start();
  PublishOutcome out = Publish(o, o.count, o.duration);
  Json j = row.Finish("publish", out.confirmed, out.errors, &out.lat);
  PurgeQueue(o);
  RequireNoErrors(out.errors, "publish");
  return {j};
}

// RunCallers: o.callers threads at once, each publishing one message and
// waiting for its answer before its next (`publish` returns true when the
// message was confirmed): a web service publishing once per request. The row
// is named `name`; the queue is purged before and after.
Json RunCallers(const Options& o, const std::string& name,
                const std::function<bool(mqsidecar::v1::PublishRequest&&)>& publish) {
  PurgeQueue(o);
  std::atomic<uint64_t> confirmed{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> next{0};
  std::vector<Latencies> lats(o.callers);
  Row row(o);
  row.Start();
  const auto end = SteadyClock::now() + std::chrono::duration<double>(o.duration);
  std::vector<std::thread> threads;
  for (uint32_t c = 0; c < o.callers; ++c) {
    threads.emplace_back([&, c] {
      std::string payload = MakePayload(o.size);
      while (SteadyClock::now() < end) {
        const uint64_t seq = next.fetch_add(1);
        if (seq >= o.count) break;
        const int64_t t0 = NowNs();
        Stamp(&payload, t0, seq);
        mqsidecar::v1::PublishRequest req;
        req.set_business(o.business);
        req.set_routing_key(o.routing_key);
        req.set_sequence(seq);
        req.set_payload(payload);
        if (publish(std::move(req))) {
          confirmed.fetch_add(1);
          lats[c].ns.push_back(NowNs() - t0);
        } else {
          errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  Latencies all;
  for (const Latencies& l : lats) all.Merge(l);
  Json j = row.Finish(name, confirmed.load(), errors.load(), &all);
  j["callers"] = o.callers;
  PurgeQueue(o);
  RequireNoErrors(errors.load(), name);
  return j;
}

// Unary Publish from o.callers threads over one channel. The daemon pipelines
// them into its one confirm window; a direct client per caller could only
// publish at window 1, so the comparison is the direct client at window 64
// (scenario publish).
std::vector<Json> RunUnary(const Options& o) {
  if (o.mode != "sidecar") throw std::runtime_error("unary: sidecar mode only");
  auto stub = mqsidecar::v1::PubSub::NewStub(NewChannel(o.target, 0));
  return {RunCallers(o, "unary", [&](mqsidecar::v1::PublishRequest&& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)));
    mqsidecar::v1::PublishResult res;
    const grpc::Status s = stub->Publish(&ctx, req, &res);
    return s.ok() && res.status() == mqsidecar::v1::PublishResult::CONFIRMED;
  })};
}

// The unary callers' workload through the C++ client library: the callers
// share one mqsidecar::Publisher (window o.window), each waiting on its
// message's future; the library batches what they queue while it writes.
std::vector<Json> RunLibrary(const Options& o) {
  if (o.mode != "sidecar") throw std::runtime_error("library: sidecar mode only");
  mqsidecar::Client client(o.target);
  const std::unique_ptr<mqsidecar::Publisher> publisher =
      client.NewPublisher({.window = std::max<uint32_t>(1, o.window)});
  Json j = RunCallers(o, "library", [&](mqsidecar::v1::PublishRequest&& req) {
    return publisher->Publish(std::move(req)).get().status() ==
           mqsidecar::v1::PublishResult::CONFIRMED;
  });
  j["batches"] = publisher->stats().batches;
  publisher->Close();
  return {j};
}

// Direct publishing without confirms: the broker's own limit. Done when the
// queue holds every message sent.
std::vector<Json> RunCeiling(const Options& o) {
  PurgeQueue(o);
  Row row(o);
  row.Start();
  PublishOutcome out = DirectPublish(o, 0, false, o.count, o.duration, 0);
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  const auto deadline = SteadyClock::now() + std::chrono::duration<double>(o.timeout);
  while (conn.QueueStats(1, o.queue).first < out.sent) {
    if (SteadyClock::now() > deadline) throw std::runtime_error("ceiling: messages missing");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  Json j = row.Finish("ceiling", out.sent, 0, nullptr);
  conn.Purge(1, o.queue);
  return {j};
}

// Consume with acks from a pre-filled queue (o.count messages), for at most
// o.duration seconds when given (a quorum queue at prefetch 1 settles a few
// hundred a second). Afterwards nothing may be missing: every message was
// received or is back in the queue.
std::vector<Json> RunConsume(const Options& o, const std::string& name) {
  PurgeQueue(o);
  PublishOutcome filled = DirectPublish(o, 1024, true, o.count, 0, 0);
  RequireNoErrors(filled.errors, "pre-filling the queue");
  ConsumeGoal goal;
  goal.target = o.count;
  Row row(o);
  row.Start();
  ConsumerGroup group(o, &goal);
  group.Start(o.consumers);
  const bool all = goal.WaitFor(o.count, o.duration > 0 ? o.duration : o.timeout);
  const uint64_t received = goal.received.load();
  Json j = row.Finish(name, received, 0, nullptr);
  group.Stop();
  j["duplicates"] = goal.duplicates.load();
  j["redelivered"] = goal.redelivered.load();
  if (goal.duplicates.load() > 0) {
    std::cerr << "mqs_bench: " << name << ": " << goal.duplicates.load()
              << " duplicate deliveries (" << goal.redelivered.load() << " flagged redelivered)\n";
  }
  group.ThrowIfFailed();
  if (goal.errors.load() > 0) throw std::runtime_error(name + ": a consumer failed");
  if (all) {
    j["returned_after_ack"] = LeftInQueue(o);
    return {j};
  }
  if (o.duration <= 0) {
    throw std::runtime_error(name + ": received " + std::to_string(received) + " of " +
                             std::to_string(o.count));
  }
  // Stopped on time: the rest (and deliveries unacked at the close) is back
  // in the queue. Counted once every consumer has stopped: they go on
  // receiving and acking after the row's figures are taken.
  const uint64_t consumed = goal.received.load();
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  const auto deadline = SteadyClock::now() + std::chrono::seconds(10);
  uint32_t ready = 0;
  while ((ready = conn.QueueStats(1, o.queue).first) + consumed < o.count) {
    if (SteadyClock::now() > deadline) {
      throw std::runtime_error(name + ": messages lost: " + std::to_string(consumed) +
                               " consumed and " + std::to_string(ready) + " back in the queue of " +
                               std::to_string(o.count));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  conn.Purge(1, o.queue);
  return {j};
}

// Publish at a fixed rate while consuming; latency publish -> delivery.
std::vector<Json> RunEndToEnd(const Options& o) {
  PurgeQueue(o);
  ConsumeGoal goal;
  ConsumerGroup group(o, &goal);
  group.Start(o.consumers);
  Row row(o);
  row.Start();
  PublishOutcome out = Publish(o, o.count, o.duration);
  RequireNoErrors(out.errors, "e2e publish");
  goal.target = out.confirmed;
  const bool ok = goal.WaitFor(out.confirmed, o.timeout);
  Json j = row.Finish("e2e", goal.received.load(), 0, nullptr);
  group.Stop();
  group.ThrowIfFailed();
  if (!ok) {
    throw std::runtime_error("e2e: received " + std::to_string(goal.received.load()) + " of " +
                             std::to_string(out.confirmed));
  }
  j["latency_us"] = group.latencies().Percentiles();
  j["publish_latency_us"] = out.lat.Percentiles();
  return {j};
}

// The floor under e2e's added latency: a unary health check (answered by the
// daemon's gRPC thread alone, no AMQP) at o.rate for o.duration seconds. One
// round trip is one hop to the daemon and one back, as many as a publish to
// the daemon and a delivery from it add to a message's path.
std::vector<Json> RunRoundTrip(const Options& o) {
  if (o.mode != "sidecar") throw std::runtime_error("rtt: sidecar mode only");
  auto stub = grpc::health::v1::Health::NewStub(NewChannel(o.target, 0));
  Latencies lat;
  Row row(o);
  row.Start();
  const Pacer pacer{o.rate, NowNs()};
  uint64_t n = 0;
  for (; n < o.count && NowNs() - pacer.start_ns < static_cast<int64_t>(o.duration * 1e9); ++n) {
    if (o.rate > 0) {
      std::this_thread::sleep_until(
          SteadyClock::time_point(std::chrono::nanoseconds(pacer.NextSlotNs(n))));
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckResponse res;
    const int64_t t = NowNs();
    grpc::Status s = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &res);
    lat.ns.push_back(NowNs() - t);
    if (!s.ok()) throw std::runtime_error("rtt: Health.Check failed: " + s.error_message());
  }
  return {row.Finish("rtt", n, 0, &lat)};
}

// o.consumers Subscribe streams (or channels) held open: memory idle, then
// latency while publishing at o.rate.
// WaitForConsumers returns once the broker counts o.consumers consumers on
// o.queue (every stream consumes), or throws naming `scenario` at o.timeout.
void WaitForConsumers(const Options& o, const char* scenario) {
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  const auto deadline = SteadyClock::now() + std::chrono::duration<double>(o.timeout);
  while (conn.QueueStats(1, o.queue).second < o.consumers) {
    if (SteadyClock::now() > deadline) {
      throw std::runtime_error(std::string(scenario) + ": not every consumer started");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::vector<Json> RunStreams(const Options& o) {
  PurgeQueue(o);
  ConsumeGoal goal;
  Row idle(o);
  idle.Start();
  ConsumerGroup group(o, &goal);
  group.Start(o.consumers);
  WaitForConsumers(o, "streams");
  std::this_thread::sleep_for(std::chrono::seconds(1));  // settle
  Json j_idle = idle.Finish("streams-idle", 0, 0, nullptr);
  Row active(o);
  active.Start();
  PublishOutcome out = Publish(o, o.count, o.duration);
  RequireNoErrors(out.errors, "streams publish");
  goal.target = out.confirmed;
  const bool ok = goal.WaitFor(out.confirmed, o.timeout);
  Json j_active = active.Finish("streams-active", goal.received.load(), 0, nullptr);
  group.Stop();
  group.ThrowIfFailed();
  if (!ok) throw std::runtime_error("streams: deliveries missing");
  j_active["latency_us"] = group.latencies().Percentiles();
  return {j_idle, j_active};
}

// Churner: opens Subscribe streams on o.churn_business at o.churn_rate per
// second, each cancelled o.churn_life seconds after it opened, until stopped.
// Nobody publishes to that business: the streams only cost their consumer's
// set-up and tear-down on the daemon's consumer connection.
class Churner {
 public:
  explicit Churner(const Options& o) : o_(o) {
    stub_ = mqsidecar::v1::PubSub::NewStub(NewChannel(o.target, 2000));
    thread_ = std::thread([this] { Run(); });
  }
  ~Churner() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t opened() const { return opened_; }

 private:
  struct Open {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<SubscribeRequest, Delivery>> stream;
    SteadyClock::time_point at;
  };
  void End(Open& s) {
    s.ctx->TryCancel();
    s.stream->Finish();
  }
  void Run() {
    std::deque<Open> live;
    const auto period = std::chrono::duration_cast<SteadyClock::duration>(
        std::chrono::duration<double>(1.0 / o_.churn_rate));
    const auto life = std::chrono::duration_cast<SteadyClock::duration>(
        std::chrono::duration<double>(o_.churn_life));
    auto next = SteadyClock::now();
    while (!stop_.load()) {
      std::this_thread::sleep_until(next);
      next += period;
      const auto now = SteadyClock::now();
      while (!live.empty() && now - live.front().at >= life) {
        End(live.front());
        live.pop_front();
      }
      Open s;
      s.ctx = std::make_unique<grpc::ClientContext>();
      s.stream = stub_->Subscribe(s.ctx.get());
      SubscribeRequest req;
      req.mutable_open()->set_business(o_.churn_business);
      req.mutable_open()->set_prefetch(1);
      req.mutable_open()->set_consumer_name("churn" + std::to_string(opened_));
      s.stream->Write(req);
      s.at = now;
      live.push_back(std::move(s));
      ++opened_;
    }
    for (auto& s : live) End(s);
  }

  const Options& o_;
  std::unique_ptr<mqsidecar::v1::PubSub::Stub> stub_;
  std::atomic<bool> stop_{false};
  uint64_t opened_ = 0;
  std::thread thread_;
};

// churn: `consumers` streams receive a paced flow (latency measured) while
// other streams open and close at churn_rate per second on another business.
std::vector<Json> RunChurn(const Options& o) {
  if (o.mode != "sidecar" || o.churn_business.empty()) {
    throw std::runtime_error("churn: sidecar mode with --churn-business only");
  }
  PurgeQueue(o);
  ConsumeGoal goal;
  ConsumerGroup group(o, &goal);
  group.Start(o.consumers);
  WaitForConsumers(o, "churn");
  Churner churner(o);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the churn reaches its pace
  Row active(o);
  active.Start();
  PublishOutcome out = Publish(o, o.count, o.duration);
  RequireNoErrors(out.errors, "churn publish");
  goal.target = out.confirmed;
  const bool ok = goal.WaitFor(out.confirmed, o.timeout);
  churner.Stop();
  Json j = active.Finish("churn", goal.received.load(), 0, nullptr);
  group.Stop();
  group.ThrowIfFailed();
  if (!ok) throw std::runtime_error("churn: deliveries missing");
  j["latency_us"] = group.latencies().Percentiles();
  j["churn_rate"] = o.churn_rate;
  j["churn_life_s"] = o.churn_life;
  j["churn_opened"] = churner.opened();
  return {j};
}

void Cleanup(const Options& o) {
  AmqpConn conn(o.amqp_uri);
  conn.OpenChannel(1);
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string item; std::getline(ss, item, ',');) {
      if (!item.empty()) out.push_back(item);
    }
    return out;
  };
  for (const auto& q : split(o.queue)) {
    amqp_queue_delete(conn.state(), 1, amqp_cstring_bytes(q.c_str()), 0, 0);
    conn.Check(amqp_get_rpc_reply(conn.state()), "queue.delete " + q);
  }
  for (const auto& x : split(o.exchange)) {
    amqp_exchange_delete(conn.state(), 1, amqp_cstring_bytes(x.c_str()), 0);
    conn.Check(amqp_get_rpc_reply(conn.state()), "exchange.delete " + x);
  }
}

// ---------------------------------------------------------------------------
// Report: pairs each sidecar row with the direct row of the same workload.

std::string Key(const Json& r) {
  std::string s = r["scenario"].get<std::string>();
  if (s == "ceiling") s = "publish";  // compared against confirmed direct publishing
  std::ostringstream k;
  k << s << "|" << r["queue_type"].get<std::string>() << "|" << r["size"] << "|" << r["window"]
    << "|" << r["prefetch"] << "|" << r["consumers"] << "|" << r["rate"];
  if (r.value("ack_multiple", false)) k << "|ack-multiple";
  return k.str();
}

std::string Fmt(double v, int prec) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string LatText(const Json& l) {
  if (l.is_null()) return "-";
  auto f = [](double us) { return us >= 100 ? Fmt(us / 1000, 1) : Fmt(us / 1000, 2); };
  return f(l["p50"]) + " / " + f(l["p90"]) + " / " + f(l["p99"]) + " / " + f(l["p999"]) + " / " +
         f(l["max"]);
}

std::string Params(const Json& r) {
  const std::string s = r["scenario"];
  std::ostringstream p;
  if (s == "publish") {
    p << "win " << r["window"] << ", " << r["size"] << " B";
  } else if (s == "ceiling") {
    p << "no confirms, " << r["size"] << " B";
  } else if (s == "consume") {
    p << "prefetch " << r["prefetch"] << ", " << r["size"] << " B";
  } else if (s == "competing") {
    p << r["consumers"] << " consumers, prefetch " << r["prefetch"];
  } else if (s == "e2e") {
    p << r["rate"].get<double>() << " msg/s, win " << r["window"] << ", prefetch " << r["prefetch"];
  } else if (s == "rtt") {
    p << "Health.Check, " << r["rate"].get<double>() << " calls/s";
  } else if (s == "churn") {
    p << r["consumers"] << " streams, " << r["rate"].get<double>() << " msg/s, "
      << r["churn_rate"].get<double>() << " other streams opened+closed/s";
  } else {
    p << r["consumers"] << " streams, " << r["rate"].get<double>() << " msg/s";
  }
  if (r.value("ack_multiple", false)) p << ", acks multiple";
  if (r.value("batch", 0) > 0) p << ", batch " << r["batch"];
  return p.str();
}

// A chart's x label: "pub w64 256B c", "e2e 1000/s q", ...
std::string ShortLabel(const Json& r) {
  const std::string s = r["scenario"];
  const std::string q = r["queue_type"] == "quorum" ? " q" : " c";
  std::ostringstream p;
  if (s == "publish") {
    p << "pub w" << r["window"] << " " << r["size"] << "B";
  } else if (s == "consume") {
    p << "con pf" << r["prefetch"];
  } else if (s == "competing") {
    p << r["consumers"] << " cons";
  } else if (s == "e2e") {
    p << "e2e " << static_cast<int>(r["rate"].get<double>()) << "/s";
  } else if (s == "rtt") {
    p << "rtt " << static_cast<int>(r["rate"].get<double>()) << "/s";
  } else {
    p << r["consumers"] << " streams";
  }
  if (r.value("ack_multiple", false)) p << " m";
  if (r.value("batch", 0) > 0) p << " b" << r["batch"];
  return p.str() + q;
}

int Report(const Options& o) {
  std::ifstream in(o.report_in);
  if (!in) throw std::runtime_error("cannot read " + o.report_in);
  std::vector<Json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(Json::parse(line));
  }
  // Repeated runs of one row (run.sh --key): keep the median by msgs/s, in
  // the order each row first appeared. On a noisy machine one pass can land
  // on another job's burst; the median of three mostly does not.
  {
    std::map<std::string, std::vector<Json>> runs;
    std::vector<std::string> order;
    for (const auto& r : rows) {
      const std::string k = Key(r) + "|" + r["scenario"].get<std::string>() + "|" +
                            r["mode"].get<std::string>() + "|" + r["transport"].get<std::string>() +
                            "|" + std::to_string(r.value("batch", 0));
      if (runs[k].empty()) order.push_back(k);
      runs[k].push_back(r);
    }
    rows.clear();
    for (const auto& k : order) {
      auto& v = runs[k];
      std::sort(v.begin(), v.end(), [](const Json& a, const Json& b) {
        return a["msgs_per_s"].get<double>() < b["msgs_per_s"].get<double>();
      });
      Json median = v[v.size() / 2];
      median["runs"] = v.size();
      rows.push_back(std::move(median));
    }
  }
  std::map<std::string, Json> direct;
  for (const auto& r : rows) {
    if (r["mode"] == "direct" && r["scenario"] != "ceiling") direct[Key(r)] = r;
  }
  std::ostringstream md, csv, tput, lat;
  md << "| scenario | queue | parameters | via | msgs/s | direct msgs/s | ratio | "
        "daemon CPU µs/msg | daemon peak RSS MiB | client CPU s (via / direct) | "
        "latency ms p50 / p90 / p99 / p99.9 / max (via) | same (direct) |\n"
     << "|---|---|---|---|--:|--:|--:|--:|--:|--:|---|---|\n";
  csv << "scenario,queue_type,size,window,prefetch,consumers,rate,mode,transport,messages,"
         "seconds,msgs_per_s,ratio_to_direct,daemon_cpu_s,daemon_cpu_us_per_msg,"
         "daemon_hwm_mib,client_cpu_s,broker_cpu_s,p50_us,p90_us,p99_us,p999_us,max_us,"
         "ack_multiple\n";
  int index = 0;
  for (const auto& r : rows) {
    const bool is_direct = r["mode"] == "direct" && r["scenario"] != "ceiling";
    auto it = direct.find(Key(r));
    const Json* d = it != direct.end() ? &it->second : nullptr;
    const double rate = r["msgs_per_s"];
    double ratio = 0;
    if (!is_direct && d != nullptr && (*d)["msgs_per_s"].get<double>() > 0) {
      ratio = rate / (*d)["msgs_per_s"].get<double>();
    }
    const Json& l = r["latency_us"];
    const bool has_daemon = r.contains("daemon_cpu_s") && r["mode"] == "sidecar";
    csv << r["scenario"].get<std::string>() << "," << r["queue_type"].get<std::string>() << ","
        << r["size"] << "," << r["window"] << "," << r["prefetch"] << "," << r["consumers"] << ","
        << r["rate"] << "," << r["mode"].get<std::string>() << ","
        << r["transport"].get<std::string>() << "," << r["messages"] << "," << Fmt(r["seconds"], 3)
        << "," << Fmt(rate, 1) << "," << (ratio > 0 ? Fmt(ratio, 3) : "") << ","
        << (has_daemon ? Fmt(r["daemon_cpu_s"], 3) : "") << ","
        << (has_daemon ? Fmt(r["daemon_cpu_us_per_msg"], 1) : "") << ","
        << (has_daemon ? Fmt(r["daemon_hwm_kib"].get<double>() / 1024, 1) : "") << ","
        << Fmt(r["client_cpu_s"], 3) << ","
        << (r.contains("broker_cpu_s") ? Fmt(r["broker_cpu_s"], 3) : "");
    for (const char* p : {"p50", "p90", "p99", "p999", "max"}) {
      csv << "," << (l.is_null() ? "" : Fmt(l[p], 1));
    }
    csv << "," << (r.value("ack_multiple", false) ? 1 : 0) << "\n";
    if (is_direct) continue;  // shown beside its sidecar row
    const std::string scen = r["scenario"];
    const bool idle = scen == "streams-idle";
    const std::string via = r["mode"] == "sidecar" ? "sidecar/" + r["transport"].get<std::string>()
                                                   : "direct (no confirms)";
    md << "| " << scen << " | " << r["queue_type"].get<std::string>() << " | " << Params(r) << " | "
       << via << " | " << (idle ? "-" : Fmt(rate, 0)) << " | "
       << (d != nullptr && !idle ? Fmt((*d)["msgs_per_s"], 0) : "-") << " | "
       << (ratio > 0 && !idle ? Fmt(ratio, 2) : "-") << " | "
       << (has_daemon && !idle ? Fmt(r["daemon_cpu_us_per_msg"], 1) : "-") << " | "
       << (has_daemon ? Fmt(r["daemon_hwm_kib"].get<double>() / 1024, 1) : "-") << " | "
       << Fmt(r["client_cpu_s"], 2) << " / " << (d != nullptr ? Fmt((*d)["client_cpu_s"], 2) : "-")
       << " | " << LatText(l) << " | " << (d != nullptr ? LatText((*d)["latency_us"]) : "-")
       << " |\n";
    // Chart data: throughput of the unix-socket rows; latency of rows that have it.
    if (d != nullptr && !idle && r["transport"] == "unix") {
      ++index;
      const std::string label = "\"" + ShortLabel(r) + "\"";
      tput << index << " " << label << " " << Fmt(rate, 0) << " " << Fmt((*d)["msgs_per_s"], 0)
           << "\n";
      const Json& dl = (*d)["latency_us"];
      if (!l.is_null() && !dl.is_null() &&
          (scen == "e2e" || scen == "streams-active" || scen == "publish")) {
        lat << index << " " << label << " " << Fmt(l["p50"].get<double>() / 1000, 3) << " "
            << Fmt(dl["p50"].get<double>() / 1000, 3) << " "
            << Fmt(l["p99"].get<double>() / 1000, 3) << " "
            << Fmt(dl["p99"].get<double>() / 1000, 3) << "\n";
      }
    }
  }
  std::cout << md.str();
  if (!o.md_out.empty()) std::ofstream(o.md_out) << md.str();
  if (!o.csv_out.empty()) std::ofstream(o.csv_out) << csv.str();
  if (!o.plot_dir.empty()) {
    std::ofstream(o.plot_dir + "/throughput.dat") << tput.str();
    std::ofstream(o.plot_dir + "/latency.dat") << lat.str();
  }
  return 0;
}

int Run(const Options& o) {
  if (!o.report_in.empty()) return Report(o);
  if (o.scenario == "cleanup") {
    Cleanup(o);
    return 0;
  }
  if (o.scenario == "ready") {
    // run.sh waits for its daemon (connected, topology declared) before the
    // first row: a direct row needs the queue the daemon declares.
    WaitSidecarReady(o);
    return 0;
  }
  if (o.mode != "direct" && o.mode != "sidecar") throw std::runtime_error("--mode direct|sidecar");
  if (o.mode == "sidecar") WaitSidecarReady(o);
  std::vector<Json> rows;
  if (o.scenario == "publish") {
    rows = RunPublish(o);
  } else if (o.scenario == "ceiling") {
    rows = RunCeiling(o);
  } else if (o.scenario == "unary") {
    rows = RunUnary(o);
  } else if (o.scenario == "library") {
    rows = RunLibrary(o);
  } else if (o.scenario == "consume" || o.scenario == "competing") {
    rows = RunConsume(o, o.scenario);
  } else if (o.scenario == "rtt") {
    rows = RunRoundTrip(o);
  } else if (o.scenario == "e2e") {
    rows = RunEndToEnd(o);
  } else if (o.scenario == "streams") {
    rows = RunStreams(o);
  } else if (o.scenario == "churn") {
    rows = RunChurn(o);
  } else {
    throw std::runtime_error("unknown scenario " + o.scenario);
  }
  for (const auto& r : rows) {
    const std::string line = r.dump();
    std::cout << line << std::endl;
    if (!o.json_out.empty()) std::ofstream(o.json_out, std::ios::app) << line << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace mqs::bench

namespace {

// Main: the command line, then the run; main() turns any exception into exit 1.
int Main(int argc, char** argv) {
  mqs::bench::Options o;
  CLI::App app{"mqs_bench: mq-sidecar against a direct rabbitmq-c client, same workload"};
  app.add_option("--mode", o.mode, "direct or sidecar");
  app.add_option("--scenario", o.scenario,
                 "publish, ceiling, consume, competing, e2e, rtt, streams, ready or cleanup");
  app.add_option("--amqp-uri", o.amqp_uri, "broker (direct mode, fill, purge, checks)");
  app.add_option("--target", o.target, "daemon gRPC address (sidecar mode)");
  app.add_option("--transport", o.transport, "label of the target: unix or tcp");
  app.add_option("--business", o.business, "sidecar business (producer and consumer)");
  app.add_option("--exchange", o.exchange, "exchange of the business (comma list for cleanup)");
  app.add_option("--queue", o.queue, "queue of the business (comma list for cleanup)");
  app.add_option("--routing-key", o.routing_key);
  app.add_option("--queue-type", o.queue_type, "label: classic or quorum");
  app.add_option("--size", o.size, "payload bytes (>= 16: timestamp + sequence)");
  app.add_option("--window", o.window, "publishes unconfirmed at once");
  app.add_option("--prefetch", o.prefetch, "unacked deliveries per consumer");
  app.add_option("--batch", o.batch,
                 "sidecar: PublishBatchStream with up to N messages per request and "
                 "SubscribeBatch with max_batch_messages N, acks listed in one request (0: "
                 "PublishStream and Subscribe)");
  app.add_flag("--ack-multiple", o.ack_multiple,
               "coalesce acks: what is pending at once goes as one ack with multiple");
  app.add_option("--consumers", o.consumers, "consumers (Subscribe streams or AMQP channels)");
  app.add_option("--callers", o.callers, "unary: threads calling Publish at once");
  app.add_option("--count", o.count, "messages (publish: at most)");
  app.add_option("--duration", o.duration, "publish: seconds at most (0: until count)");
  app.add_option("--rate", o.rate, "msg/s for paced runs (0: unpaced)");
  app.add_option("--daemon-pid", o.daemon_pid, "daemon to measure (CPU, RSS)");
  app.add_option("--broker-pid", o.broker_pid, "broker to measure (CPU)");
  app.add_option("--churn-business", o.churn_business, "churn: business of the churning streams");
  app.add_option("--churn-rate", o.churn_rate, "churn: streams opened (and closed) per second");
  app.add_option("--churn-life", o.churn_life, "churn: seconds each churning stream stays open");
  app.add_option("--timeout", o.timeout, "seconds any wait may take before it is an error");
  app.add_option("--json", o.json_out, "append result rows (JSON lines) to this file");
  app.add_option("--report", o.report_in, "build the table from this JSON lines file");
  app.add_option("--md", o.md_out, "report: markdown table file");
  app.add_option("--csv", o.csv_out, "report: CSV file");
  app.add_option("--plot-dir", o.plot_dir, "report: directory for gnuplot data");
  CLI11_PARSE(app, argc, argv);
  return mqs::bench::Run(o);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "mqs_bench: error: " << e.what() << "\n";
    return 1;
  }
}
