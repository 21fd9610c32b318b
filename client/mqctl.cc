// mqctl: command-line client for the mq-sidecar daemon.
//
// Exit codes: 0 success; 1 gRPC or I/O error; 2 the daemon answered "no" (a
// publish, task or task result it did not confirm, a health check other than
// SERVING, a task nothing takes (NOT_FOUND) or whose result did not come in
// time (DEADLINE_EXCEEDED), see TaskSendExitCode; a dlq replay that stopped
// with an error after replaying some messages); 64 bad usage.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"
#include "dead_letter_format.h"
#include "delivery_json.h"
#include "fleet_format.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "mqsidecar/client.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"

namespace mqctl {
namespace {

namespace v1 = mqsidecar::v1;
using std::chrono::milliseconds;

// Exit codes: kExitOk, kExitError, kExitNotConfirmed (also: health is not
// SERVING, a task not taken or not answered), kExitUsage, from fleet_format.h.

// With `task send --wait`, the call's deadline is the wait plus this much, so
// that the daemon's own DEADLINE_EXCEEDED (or a result that came at the last
// moment) reaches mqctl before gRPC's deadline cuts the call.
constexpr milliseconds kTaskWaitMargin{5000};

constexpr char kDefaultAddress[] = "unix:///run/mq-sidecar/mq-sidecar.sock";
constexpr char kAddressEnv[] = "MQ_SIDECAR_ADDRESS";
constexpr char kTokenFileEnv[] = "MQ_SIDECAR_TOKEN_FILE";

// ---------------------------------------------------------------------------
// Options

struct GlobalOptions {
  std::string address = kDefaultAddress;
  std::string timeout_text = "10s";
  milliseconds timeout{10000};
  bool wait = false;
  std::string token_file;
  std::string token;  // token_file's first line; sent as "authorization: Bearer <token>"
};

struct PublishOptions {
  std::string business;
  std::string routing_key;
  std::string payload = "-";
  std::string message_id;
  std::string correlation_id;
  std::string content_type;
  std::vector<std::string> headers;
  uint32_t ttl_ms = 0;
  std::string reply_to;
  std::string file;      // payload from this file
  bool lines = false;    // each line of stdin is a message (PublishBatchStream)
  uint32_t batch = 100;  // with lines or count: messages per request
  uint64_t count = 0;    // load: this many copies of the payload (PublishBatchStream)
  double rate = 0;       // with count: messages per second; 0: as fast as confirms allow
};

enum class Settle { kAck, kNone, kNackRequeue, kNackDrop };

struct ServersOptions {
  std::string app;
  bool json = false;
};

struct TaskSendOptions {
  std::string app;
  std::string region;
  std::string server;
  std::string command;
  std::string payload;  // absent: empty; "-": stdin
  bool wait = false;
  std::optional<milliseconds> timeout;  // absent: the global --timeout
  std::string content_type;
  std::vector<std::string> headers;
  std::string message_id;
  bool json = false;
};

struct TaskCompleteOptions {
  std::string correlation_id;
  std::string payload;  // absent: empty; "-": stdin
  std::string reply_to;
  std::string state;
  std::string content_type;
  std::vector<std::string> headers;
  std::string message_id;
};

struct StatusReportOptions {
  std::string state;
  double load = 0;
  std::string message;
  std::vector<std::string> labels;
};

struct DlqOptions {
  std::string business;
  uint32_t max = 0;
  std::string message_id;
};

// dlq's deadline when --timeout is not given: the daemon ends a dead-letter
// request within 30 s, and its answer should reach mqctl.
constexpr milliseconds kDlqTimeout{35000};

struct SubscribeOptions {
  std::string business;
  uint32_t prefetch = 0;
  bool prefetch_given = false;
  std::string name;
  uint64_t count = 0;
  Settle settle = Settle::kAck;
  bool ack_multiple = false;  // one multiple ack per batch instead of the id list
};

// "10s", "500ms", "2m", "1h", "1m30s" (absl::ParseDuration), or a bare
// number of seconds; fractions allowed. From 1 ms to a day: gRPC deadlines
// beyond that are meaningless for a CLI.
std::optional<milliseconds> ParseDuration(std::string_view text) {
  std::string spelled(text);
  if (!spelled.empty() && spelled.find_first_not_of("0123456789.") == std::string::npos) {
    spelled += "s";
  }
  absl::Duration d;
  if (!absl::ParseDuration(spelled, &d)) return std::nullopt;
  if (d < absl::Milliseconds(1) || d > absl::Hours(24)) return std::nullopt;
  return milliseconds(absl::ToInt64Milliseconds(d));
}

// gRPC accepts "unix:PATH", "unix:///PATH" and "host:port" itself; a bare
// absolute path is taken to mean a unix socket.
std::string ChannelTarget(const std::string& address) {
  if (!address.empty() && address.front() == '/') return "unix:" + address;
  return address;
}

// ---------------------------------------------------------------------------
// gRPC helpers

int ReportRpcError(const grpc::Status& status) {
  std::cerr << "mqctl: " << mqsidecar::CodeName(status.error_code()) << ": "
            << status.error_message() << "\n";
  return kExitError;
}

std::shared_ptr<grpc::Channel> MakeChannel(const GlobalOptions& g) {
  grpc::ChannelArguments args;
  // Deliveries can be larger than gRPC's 4 MiB default receive limit; the
  // daemon and the broker are the ones that bound message size.
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(ChannelTarget(g.address), grpc::InsecureChannelCredentials(),
                                   args);
}

// MakeClient: the C++ client library (docs/clients.md) for the unary calls
// it wraps (publish, topology): token and --wait as every call here.
std::unique_ptr<mqsidecar::Client> MakeClient(const GlobalOptions& g) {
  return std::make_unique<mqsidecar::Client>(
      ChannelTarget(g.address),
      mqsidecar::ClientOptions{.token = g.token, .wait_for_ready = g.wait});
}

// ApplyCallerOptions: what every call carries whatever its deadline: the
// bearer token (access, docs/security.md) and --wait.
void ApplyCallerOptions(grpc::ClientContext* ctx, const GlobalOptions& g) {
  if (!g.token.empty()) ctx->AddMetadata("authorization", "Bearer " + g.token);
  ctx->set_wait_for_ready(g.wait);
}

// ApplyCallOptions: ApplyCallerOptions and the deadline of --timeout.
void ApplyCallOptions(grpc::ClientContext* ctx, const GlobalOptions& g) {
  ApplyCallerOptions(ctx, g);
  ctx->set_deadline(std::chrono::system_clock::now() + g.timeout);
}

bool WriteLine(const std::string& line) {
  // Flushed per line: a consumer reading our stdout must see a delivery before
  // we ack it, and nothing may sit in a buffer if we are killed.
  std::cout << line << '\n' << std::flush;
  if (!std::cout) {
    std::cerr << "mqctl: writing to stdout failed\n";
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// publish

bool ReadAll(std::FILE* in, std::string* out) {
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), in)) > 0) out->append(buf, n);
  return std::ferror(in) == 0;
}

// WriteBatch sends what `batch` gathered (nothing when empty) and empties it;
// false once the stream is broken.
bool WriteBatch(grpc::ClientReaderWriter<v1::PublishBatch, v1::PublishResultBatch>* stream,
                v1::PublishBatch* batch) {
  if (batch->messages_size() == 0) return true;
  const bool ok = stream->Write(*batch);
  batch->clear_messages();
  return ok;
}

// RunPublishLines: every line of stdin (without its '\n') is one message
// with `base`'s properties, sent over one PublishBatchStream in requests of
// up to o.batch lines, sequence = line number. Each result is printed as it
// comes (settle order; its sequence says which line). Exits 0 only when
// every line was confirmed.
int RunPublishLines(const GlobalOptions& g, const PublishOptions& o,
                    const v1::PublishRequest& base) {
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  std::unique_ptr<grpc::ClientReaderWriter<v1::PublishBatch, v1::PublishResultBatch>> stream =
      stub->PublishBatchStream(&ctx);
  // The reader runs beside the writer: the daemon stops reading once its
  // window is full, until results go out.
  uint64_t answered = 0;
  bool all_confirmed = true;
  bool output_ok = true;
  std::thread reader([&] {
    v1::PublishResultBatch results;
    while (stream->Read(&results)) {
      for (const v1::PublishResult& r : results.results()) {
        ++answered;
        if (r.status() != v1::PublishResult::CONFIRMED) all_confirmed = false;
        if (output_ok && !WriteLine(DumpLine(PublishResultToJson(r)))) output_ok = false;
      }
    }
  });
  uint64_t sent = 0;
  bool read_ok = true;
  v1::PublishBatch batch;
  const auto flush = [&] { return WriteBatch(stream.get(), &batch); };
  std::string line;
  bool stream_ok = true;
  while (stream_ok) {
    const int c = std::getchar();
    if (c == EOF) break;
    if (c != '\n') {
      line.push_back(static_cast<char>(c));
      continue;
    }
    v1::PublishRequest* m = batch.add_messages();
    *m = base;
    m->set_payload(std::move(line));
    m->set_sequence(++sent);
    line.clear();
    if (static_cast<uint32_t>(batch.messages_size()) >= o.batch) stream_ok = flush();
  }
  if (std::ferror(stdin) != 0) read_ok = false;
  if (stream_ok && !line.empty()) {  // a last line without '\n'
    v1::PublishRequest* m = batch.add_messages();
    *m = base;
    m->set_payload(std::move(line));
    m->set_sequence(++sent);
  }
  if (stream_ok) stream_ok = flush();
  if (stream_ok) stream->WritesDone();
  reader.join();
  const grpc::Status status = stream->Finish();
  if (!read_ok) {
    std::cerr << "mqctl: reading stdin: " << std::generic_category().message(errno) << "\n";
    return kExitError;
  }
  if (!status.ok()) return ReportRpcError(status);
  if (!output_ok) return kExitError;
  if (answered != sent) {
    std::cerr << "mqctl: " << sent << " lines sent, " << answered << " answered\n";
    return kExitError;
  }
  return all_confirmed ? kExitOk : kExitNotConfirmed;
}

// RunPublishLoad: o.count copies of `base` (payload included) over one
// PublishBatchStream, paced at o.rate per second when given, sequence = 1..N.
// A progress line on a terminal's stderr; at the end one JSON summary line on
// stdout: counts by status, duration, rate and confirm latency percentiles
// (from the request's write to its result). Exits 0 only when every message
// was confirmed. The call's deadline is --timeout after the pacing's end.
int RunPublishLoad(const GlobalOptions& g, const PublishOptions& o,
                   const v1::PublishRequest& base) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto paced = [&](uint64_t i) {
    return start + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(static_cast<double>(i) / o.rate));
  };
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallerOptions(&ctx, g);
  {
    const double pacing_s = o.rate > 0 ? static_cast<double>(o.count) / o.rate : 0;
    ctx.set_deadline(std::chrono::system_clock::now() + g.timeout +
                     std::chrono::duration_cast<std::chrono::system_clock::duration>(
                         std::chrono::duration<double>(pacing_s)));
  }
  auto stream = stub->PublishBatchStream(&ctx);
  // Written before the request goes out, read when its result comes back
  // (atomics: the two threads synchronise only through gRPC).
  std::vector<std::atomic<int64_t>> sent_ns(o.count);
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> answered{0};
  std::atomic<uint64_t> confirmed{0};
  std::vector<int64_t> latency_ns;  // reader thread only, then main after join
  latency_ns.reserve(o.count);
  std::map<std::string, uint64_t> by_status;  // reader thread only
  const auto now_ns = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  };
  std::thread reader([&] {
    v1::PublishResultBatch results;
    while (stream->Read(&results)) {
      const int64_t at = now_ns();
      for (const v1::PublishResult& r : results.results()) {
        answered.fetch_add(1, std::memory_order_relaxed);
        ++by_status[v1::PublishResult::Status_Name(r.status())];
        if (r.status() == v1::PublishResult::CONFIRMED) {
          confirmed.fetch_add(1, std::memory_order_relaxed);
        }
        if (r.sequence() >= 1 && r.sequence() <= o.count) {
          latency_ns.push_back(at - sent_ns[r.sequence() - 1].load(std::memory_order_relaxed));
        }
      }
    }
  });
  // Progress on a terminal only: a pipe or a log gets the summary alone.
  std::mutex progress_mu;
  std::condition_variable progress_cv;
  bool done = false;
  std::thread progress;
  if (isatty(STDERR_FILENO) != 0) {
    progress = std::thread([&] {
      std::unique_lock<std::mutex> lock(progress_mu);
      while (!progress_cv.wait_for(lock, std::chrono::seconds(1), [&] { return done; })) {
        std::cerr << "\rmqctl: sent " << sent.load() << "/" << o.count << ", confirmed "
                  << confirmed.load() << ", not confirmed " << (answered.load() - confirmed.load())
                  << "   " << std::flush;
      }
      std::cerr << "\r" << std::string(72, ' ') << "\r" << std::flush;
    });
  }

  bool stream_ok = true;
  v1::PublishBatch batch;
  const auto flush = [&] { return WriteBatch(stream.get(), &batch); };
  for (uint64_t i = 0; i < o.count && stream_ok; ++i) {
    if (o.rate > 0) {
      const auto due = paced(i);
      if (due > Clock::now()) {
        // Nothing more is due: what is gathered goes now, then wait.
        stream_ok = flush();
        std::this_thread::sleep_until(due);
        if (!stream_ok) break;
      }
    }
    v1::PublishRequest* m = batch.add_messages();
    *m = base;
    m->set_sequence(i + 1);
    sent_ns[i].store(now_ns(), std::memory_order_relaxed);
    sent.fetch_add(1, std::memory_order_relaxed);
    if (static_cast<uint32_t>(batch.messages_size()) >= o.batch) stream_ok = flush();
  }
  if (stream_ok) stream_ok = flush();
  if (stream_ok) stream->WritesDone();
  reader.join();
  const grpc::Status status = stream->Finish();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (progress.joinable()) {
    {
      std::lock_guard<std::mutex> lock(progress_mu);
      done = true;
    }
    progress_cv.notify_all();
    progress.join();
  }

  std::sort(latency_ns.begin(), latency_ns.end());
  const auto pct_ms = [&](double q) {
    if (latency_ns.empty()) return 0.0;
    const auto at = static_cast<size_t>(q * static_cast<double>(latency_ns.size() - 1));
    return static_cast<double>(latency_ns[at]) / 1e6;
  };
  nlohmann::ordered_json summary;
  summary["sent"] = sent.load();
  summary["answered"] = answered.load();
  summary["confirmed"] = confirmed.load();
  summary["not_confirmed"] = answered.load() - confirmed.load();
  summary["by_status"] = by_status;
  summary["seconds"] = seconds;
  summary["per_second"] = seconds > 0 ? static_cast<double>(answered.load()) / seconds : 0;
  summary["latency_ms"] = {
      {"p50", pct_ms(0.5)}, {"p90", pct_ms(0.9)}, {"p99", pct_ms(0.99)}, {"max", pct_ms(1.0)}};
  if (!status.ok()) summary["error"] = mqsidecar::CodeName(status.error_code());
  const bool output_ok = WriteLine(DumpLine(summary));
  if (!status.ok()) return ReportRpcError(status);
  if (!output_ok) return kExitError;
  if (answered.load() != o.count) {
    std::cerr << "mqctl: " << o.count << " messages, " << answered.load() << " answered\n";
    return kExitError;
  }
  return confirmed.load() == o.count ? kExitOk : kExitNotConfirmed;
}

int RunPublish(const GlobalOptions& g, const PublishOptions& o) {
  if (o.lines && (o.payload != "-" || !o.message_id.empty())) {
    std::cerr << "mqctl: publish --lines reads every message from stdin, each with its own "
                 "message id: no payload argument, no --message-id\n";
    return kExitUsage;
  }
  if (!o.file.empty() && o.payload != "-") {
    std::cerr << "mqctl: publish takes its payload from the argument or from --file, not both\n";
    return kExitUsage;
  }
  if (o.count > 0 && !o.message_id.empty()) {
    std::cerr << "mqctl: publish --count sends N messages, each with its own message id: no "
                 "--message-id\n";
    return kExitUsage;
  }
  v1::PublishRequest req;
  req.set_business(o.business);
  req.set_routing_key(o.routing_key);
  req.set_message_id(o.message_id);
  req.set_correlation_id(o.correlation_id);
  req.set_content_type(o.content_type);
  req.set_ttl_ms(o.ttl_ms);
  req.set_reply_to(o.reply_to);
  std::set<std::string> seen;
  for (const std::string& h : o.headers) {
    const size_t eq = h.find('=');  // validated by the CLI: present, key non-empty
    std::string key = h.substr(0, eq);
    if (!seen.insert(key).second) {
      std::cerr << "mqctl: --header " << key << " given more than once\n";
      return kExitUsage;
    }
    (*req.mutable_headers())[key] = h.substr(eq + 1);
  }
  if (o.lines) return RunPublishLines(g, o, req);
  if (!o.file.empty()) {
    std::FILE* in = std::fopen(o.file.c_str(), "rb");
    const bool read = in != nullptr && ReadAll(in, req.mutable_payload());
    const int err = errno;
    if (in != nullptr) std::fclose(in);
    if (!read) {
      std::cerr << "mqctl: reading the payload from " << o.file << ": "
                << std::generic_category().message(err) << "\n";
      return kExitError;
    }
  } else if (o.payload == "-") {
    if (!ReadAll(stdin, req.mutable_payload())) {
      std::cerr << "mqctl: reading the payload from stdin: "
                << std::generic_category().message(errno) << "\n";
      return kExitError;
    }
  } else {
    req.set_payload(o.payload);
  }
  if (o.count > 0) return RunPublishLoad(g, o, req);

  const mqsidecar::PublishOutcome out = MakeClient(g)->Publish(req, g.timeout);
  if (!out.status.ok()) return ReportRpcError(out.status);
  if (!WriteLine(DumpLine(PublishResultToJson(out.result)))) return kExitError;
  return out.confirmed() ? kExitOk : kExitNotConfirmed;
}

// ---------------------------------------------------------------------------
// subscribe

// Self-pipe: the signal handler only write()s a byte, which is
// async-signal-safe; a watcher thread turns it into a stream shutdown.
int g_signal_pipe_write = -1;

void OnStopSignal(int /*signo*/) {
  const int saved_errno = errno;
  const char byte = 'S';
  if (write(g_signal_pipe_write, &byte, 1) < 0) {
    // Pipe full: a stop is already pending, nothing more to say.
  }
  errno = saved_errno;
}

// One SubscribeBatch stream. The main thread reads each batch, prints its
// deliveries and settles them in one request (delivery_ids);
// a watcher thread reacts to SIGINT/SIGTERM and enforces the close deadline.
//
// Shutdown is graceful: mqctl half-closes (WritesDone) so the daemon sees every
// ack written before it, and the daemon is expected to end the stream (and
// requeue whatever is unsettled). If it has not done so within --timeout, or
// on a second signal, the call is cancelled.
class SubscribeSession {
 public:
  SubscribeSession(const GlobalOptions& g, const SubscribeOptions& o) : g_(g), o_(o) {}
  SubscribeSession(const SubscribeSession&) = delete;
  SubscribeSession& operator=(const SubscribeSession&) = delete;

  int Run() {
    if (pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
      std::cerr << "mqctl: pipe: " << std::generic_category().message(errno) << "\n";
      return kExitError;
    }
    g_signal_pipe_write = pipe_[1];
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    std::thread watcher([this] { Watch(); });
    const int rc = Stream();
    Notify('D');
    watcher.join();

    // The pipe stays open: a late signal must still find a valid descriptor.
    return rc;
  }

 private:
  int Stream() {
    auto stub = v1::PubSub::NewStub(MakeChannel(g_));
    ApplyCallerOptions(&ctx_, g_);
    auto stream = stub->SubscribeBatch(&ctx_);

    v1::SubscribeRequest open;
    open.mutable_open()->set_business(o_.business);
    open.mutable_open()->set_consumer_name(o_.name);
    uint32_t prefetch = o_.prefetch;
    // With --count N and no --prefetch, ask for exactly N: the broker then
    // never hands this stream deliveries it will not print (which would come
    // back later as redelivered), and --no-ack --count N larger than the
    // daemon's default prefetch cannot stall.
    if (!o_.prefetch_given && o_.count > 0) {
      prefetch = o_.count > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(o_.count);
    }
    open.mutable_open()->set_prefetch(prefetch);
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      stream_ = std::move(stream);
      if (stop_requested_) {
        // Stopped before anything was asked for: nothing to drain.
        Cancel();
      } else if (!stream_->Write(open)) {
        write_failed_ = true;  // Read() fails next; Finish() says why
      }
      if (stop_requested_) HalfCloseLocked();  // the watcher may have found the lock taken
    }

    uint64_t handled = 0;
    bool output_failed = false;
    v1::DeliveryBatch batch;
    std::vector<uint64_t> printed;
    while (stream_->Read(&batch)) {
      if (stop_requested_) HalfClose();  // in case the watcher could not take the lock
      printed.clear();
      bool close = false;
      for (const v1::Delivery& delivery : batch.deliveries()) {
        // Deliveries after the close started are neither printed nor settled;
        // the daemon requeues them when the stream ends.
        if (closing_ || stop_requested_) break;
        if (!WriteLine(DumpLine(DeliveryToJson(delivery)))) {
          output_failed = true;
          close = true;
          break;
        }
        ++handled;
        printed.push_back(delivery.delivery_id());
        if (o_.count > 0 && handled >= o_.count) {
          close = true;
          break;
        }
      }
      // What was printed is settled in one request, before the close.
      if (!printed.empty()) Settle(printed);
      if (close) BeginClose();
    }
    const grpc::Status status = stream_->Finish();

    if (output_failed) return kExitError;
    const bool we_ended = stop_requested_ || closing_;
    if (status.ok() || (we_ended && cancelled_ && status.error_code() == grpc::CANCELLED)) {
      if (we_ended) return kExitOk;
      std::cerr << "mqctl: the daemon ended the stream after " << handled << " deliveries\n";
      return kExitError;
    }
    return ReportRpcError(status);
  }

  void Settle(const std::vector<uint64_t>& ids) {
    v1::SubscribeRequest req;
    switch (o_.settle) {
      case Settle::kNone:
        return;
      case Settle::kAck:
        if (o_.ack_multiple) {
          // Every delivery of this stream up to the last printed one has
          // been printed (those after a close began are not in `ids`).
          req.mutable_ack()->set_delivery_id(ids.back());
          req.mutable_ack()->set_multiple(true);
        } else {
          req.mutable_ack()->mutable_delivery_ids()->Add(ids.begin(), ids.end());
        }
        break;
      case Settle::kNackRequeue:
      case Settle::kNackDrop:
        req.mutable_nack()->mutable_delivery_ids()->Add(ids.begin(), ids.end());
        req.mutable_nack()->set_requeue(o_.settle == Settle::kNackRequeue);
        break;
    }
    std::lock_guard<std::mutex> lock(write_mu_);
    if (half_closed_ || write_failed_) return;
    if (!stream_->Write(req)) write_failed_ = true;
    if (stop_requested_) HalfCloseLocked();  // the watcher may have found the lock taken
  }

  // Main thread: stop taking deliveries and let the daemon end the stream.
  void BeginClose() {
    closing_ = true;
    HalfClose();
    Notify('C');
  }

  void HalfClose() {
    std::lock_guard<std::mutex> lock(write_mu_);
    HalfCloseLocked();
  }

  void HalfCloseLocked() {
    if (half_closed_ || !stream_) return;
    half_closed_ = true;
    if (!write_failed_) stream_->WritesDone();
  }

  void Cancel() {
    cancelled_ = true;
    ctx_.TryCancel();
  }

  void Notify(char event) {
    if (write(pipe_[1], &event, 1) < 0) {
      // Non-blocking pipe full: the watcher has unread events and will wake.
    }
  }

  void Watch() {
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> close_deadline;
    for (;;) {
      int timeout_ms = -1;
      if (close_deadline && !cancelled_) {
        const auto left =
            std::chrono::duration_cast<milliseconds>(*close_deadline - Clock::now()).count();
        timeout_ms = left > 0 ? static_cast<int>(left) : 0;
      }
      pollfd pfd{pipe_[0], POLLIN, 0};
      const int n = poll(&pfd, 1, timeout_ms);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) {  // the daemon did not end the stream in time
        Cancel();
        continue;
      }
      char events[64];
      const ssize_t got = read(pipe_[0], events, sizeof(events));
      for (ssize_t i = 0; i < got; ++i) {
        switch (events[i]) {
          case 'D':
            return;
          case 'C':
            if (!close_deadline) close_deadline = Clock::now() + g_.timeout;
            break;
          case 'S':
            if (stop_requested_) {
              Cancel();  // second signal: the user is not waiting any more
              break;
            }
            stop_requested_ = true;
            if (!close_deadline) close_deadline = Clock::now() + g_.timeout;
            // try_lock: the main thread may be blocked in Write() under the
            // lock; it half-closes itself when it next sees stop_requested_,
            // and the deadline covers a Write() that never returns.
            if (std::unique_lock<std::mutex> lock(write_mu_, std::try_to_lock); lock.owns_lock()) {
              if (!stream_) {
                Cancel();
              } else {
                HalfCloseLocked();
              }
            }
            break;
          default:
            break;
        }
      }
    }
  }

  const GlobalOptions& g_;
  const SubscribeOptions& o_;
  grpc::ClientContext ctx_;
  int pipe_[2] = {-1, -1};

  std::mutex write_mu_;  // serializes Write()/WritesDone() and guards the three below
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::DeliveryBatch>> stream_;
  bool half_closed_ = false;
  bool write_failed_ = false;

  std::atomic<bool> stop_requested_{false};  // a signal arrived
  std::atomic<bool> closing_{false};         // the main thread started the close
  std::atomic<bool> cancelled_{false};       // we called TryCancel()
};

// ---------------------------------------------------------------------------
// topology, health

int RunTopology(const GlobalOptions& g, bool pretty) {
  v1::Topology topology;
  const grpc::Status status = MakeClient(g)->GetTopology(&topology, g.timeout);
  if (!status.ok()) return ReportRpcError(status);

  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.always_print_primitive_fields = true;  // show connected=false, empty lists
  options.preserve_proto_field_names = true;     // snake_case, like subscribe's output
  std::string json;
  const auto converted = google::protobuf::util::MessageToJsonString(topology, &json, options);
  if (!converted.ok()) {
    std::cerr << "mqctl: rendering the topology: " << converted.ToString() << "\n";
    return kExitError;
  }
  while (!json.empty() && json.back() == '\n') json.pop_back();
  return WriteLine(json) ? kExitOk : kExitError;
}

// reload: the Reload RPC; its outcome as one JSON line. A file the daemon
// rejected is a "no" (2): the running config stays.
int RunReload(const GlobalOptions& g) {
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::ReloadResponse response;
  const grpc::Status status = stub->Reload(&ctx, v1::ReloadRequest(), &response);
  if (!status.ok()) return ReportRpcError(status);
  const v1::Topology::Reload& r = response.reload();
  nlohmann::ordered_json out;
  out["at_ms"] = r.at_ms();
  out["result"] = r.result();
  out["applied"] = std::vector<std::string>(r.applied().begin(), r.applied().end());
  out["kept"] = std::vector<std::string>(r.kept().begin(), r.kept().end());
  out["error"] = r.error();
  if (!WriteLine(DumpLine(out))) return kExitError;
  return r.result() == "rejected" ? kExitNotConfirmed : kExitOk;
}

int RunHealth(const GlobalOptions& g, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&ctx, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!WriteLine(grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()))) {
    return kExitError;
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk
                                                                             : kExitNotConfirmed;
}

// ---------------------------------------------------------------------------
// servers, task send, task complete, status report

int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The payload argument of the task commands: "-" reads stdin; anything else,
// including nothing, is the payload itself (a task often has none, so unlike
// publish an absent payload does not read stdin).
bool TaskPayload(const std::string& arg, std::string* out) {
  if (arg != "-") {
    *out = arg;
    return true;
  }
  if (!ReadAll(stdin, out)) {
    std::cerr << "mqctl: reading the payload from stdin: " << std::generic_category().message(errno)
              << "\n";
    return false;
  }
  return true;
}

int RunServers(const GlobalOptions& g, const ServersOptions& o) {
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::ListServersRequest req;
  req.set_app(o.app);
  v1::ListServersResponse resp;
  const grpc::Status status = stub->ListServers(&ctx, req, &resp);
  if (!status.ok()) return ReportRpcError(status);
  if (o.json) {
    for (const v1::ServerInfo& server : resp.servers()) {
      if (!WriteLine(DumpLine(ServerInfoToJson(server)))) return kExitError;
    }
    return kExitOk;
  }
  std::string table = RenderServersTable(resp, NowMs());
  if (!table.empty() && table.back() == '\n') table.pop_back();
  return WriteLine(table) ? kExitOk : kExitError;
}

int RunTaskSend(const GlobalOptions& g, const TaskSendOptions& o) {
  v1::SendTaskRequest req;
  req.set_app(o.app);
  req.set_region(o.region);
  req.set_server(o.server);
  req.set_command(o.command);
  req.set_content_type(o.content_type);
  req.set_message_id(o.message_id);
  if (auto error = CollectKeyValues(o.headers, "--header", req.mutable_headers())) {
    std::cerr << "mqctl: " << *error << "\n";
    return kExitUsage;
  }
  if (!TaskPayload(o.payload, req.mutable_payload())) return kExitError;
  const milliseconds timeout = o.timeout.value_or(g.timeout);
  milliseconds deadline = timeout;
  if (o.wait) {
    req.set_wait(true);
    req.set_timeout_ms(static_cast<uint32_t>(timeout.count()));  // at most a day (ParseDuration)
    deadline += kTaskWaitMargin;
  }

  const std::shared_ptr<grpc::Channel> channel = MakeChannel(g);
  auto stub = v1::PubSub::NewStub(channel);
  grpc::ClientContext ctx;
  ApplyCallerOptions(&ctx, g);
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  v1::SendTaskResponse resp;
  const grpc::Status status = stub->SendTask(&ctx, req, &resp);
  if (!status.ok()) {
    ReportRpcError(status);
    // UNAVAILABLE is both "daemon unreachable" (nothing sent) and the daemon's
    // "connection died before the confirm" (maybe queued); a channel that is
    // still READY tells the second apart.
    const bool daemon_answered = channel->GetState(false) == GRPC_CHANNEL_READY;
    return TaskSendExitCode(status.error_code(), daemon_answered);
  }
  if (o.json) return WriteLine(DumpLine(SendTaskResponseToJson(resp))) ? kExitOk : kExitError;
  std::string text = RenderSendTask(resp);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return WriteLine(text) ? kExitOk : kExitError;
}

int RunTaskComplete(const GlobalOptions& g, const TaskCompleteOptions& o) {
  v1::CompleteTaskRequest req;
  req.set_correlation_id(o.correlation_id);
  req.set_reply_to(o.reply_to);
  req.set_state(o.state);
  req.set_content_type(o.content_type);
  req.set_message_id(o.message_id);
  if (auto error = CollectKeyValues(o.headers, "--header", req.mutable_headers())) {
    std::cerr << "mqctl: " << *error << "\n";
    return kExitUsage;
  }
  if (!TaskPayload(o.payload, req.mutable_payload())) return kExitError;

  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::PublishResult result;
  const grpc::Status status = stub->CompleteTask(&ctx, req, &result);
  if (!status.ok()) return ReportRpcError(status);
  if (!WriteLine(DumpLine(PublishResultToJson(result)))) return kExitError;
  return result.status() == v1::PublishResult::CONFIRMED ? kExitOk : kExitNotConfirmed;
}

int RunStatusReport(const GlobalOptions& g, const StatusReportOptions& o) {
  v1::ReportStatusRequest req;
  v1::ServiceStatus* s = req.mutable_status();
  s->set_state(o.state);
  s->set_load(o.load);
  s->set_message(o.message);
  if (auto error = CollectKeyValues(o.labels, "--label", s->mutable_labels())) {
    std::cerr << "mqctl: " << *error << "\n";
    return kExitUsage;
  }

  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::ReportStatusResponse resp;
  const grpc::Status status = stub->ReportStatus(&ctx, req, &resp);
  if (!status.ok()) return ReportRpcError(status);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// dlq list, dlq replay

int RunDlqList(const GlobalOptions& g, const DlqOptions& o) {
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::ListDeadLettersRequest req;
  req.set_business(o.business);
  req.set_max(o.max);
  v1::ListDeadLettersResponse resp;
  const grpc::Status status = stub->ListDeadLetters(&ctx, req, &resp);
  if (!status.ok()) return ReportRpcError(status);
  for (const v1::DeadLetter& letter : resp.messages()) {
    if (!WriteLine(DumpLine(DeadLetterToJson(letter)))) return kExitError;
  }
  std::cerr << "mqctl: listed " << resp.messages_size() << " of " << resp.total()
            << " dead letter(s) of " << o.business << "\n";
  return kExitOk;
}

int RunDlqReplay(const GlobalOptions& g, const DlqOptions& o) {
  auto stub = v1::PubSub::NewStub(MakeChannel(g));
  grpc::ClientContext ctx;
  ApplyCallOptions(&ctx, g);
  v1::ReplayDeadLettersRequest req;
  req.set_business(o.business);
  req.set_max(o.max);
  req.set_message_id(o.message_id);
  v1::ReplayDeadLettersResponse resp;
  const grpc::Status status = stub->ReplayDeadLetters(&ctx, req, &resp);
  if (status.ok()) return WriteLine(DumpLine(ReplayToJson(resp))) ? kExitOk : kExitError;
  std::optional<v1::ReplayDeadLettersResponse> partial;
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (auto it = trailers.find(kReplayTrailer); it != trailers.end()) {
    partial = ParseReplayTrailer(std::string_view(it->second.data(), it->second.size()));
  }
  if (partial.has_value() && !WriteLine(DumpLine(ReplayToJson(*partial)))) return kExitError;
  ReportRpcError(status);
  return ReplayExitCode(status.error_code(), partial);
}

// ---------------------------------------------------------------------------
// command line

int Main(int argc, char** argv) {
  CLI::App app{
      "mqctl talks to the local mq-sidecar daemon: publish messages, subscribe to a "
      "business's queue, and inspect the daemon.",
      "mqctl"};
  app.require_subcommand(1, 1);
  app.fallthrough();  // global options are accepted after the subcommand, too
  app.set_help_all_flag("--help-all", "Print help for all subcommands and exit");
  app.set_version_flag("--version", MQS_VERSION);
  app.footer(
      "Exit status: 0 success; 1 gRPC or I/O error (printed as 'mqctl: CODE: message');\n"
      "2 publish or task complete not confirmed (UNROUTABLE, REJECTED, FAILED, UNCONFIRMED),\n"
      "health not SERVING, task send answered NOT_FOUND, DEADLINE_EXCEEDED, ABORTED or\n"
      "(from the daemon itself) UNAVAILABLE, or dlq replay stopped by an error after\n"
      "replaying some;\n"
      "64 bad usage.");

  GlobalOptions g;
  app.add_option("--address", g.address,
                 "Daemon address: unix:///path/to.sock, unix:relative.sock, /path/to.sock "
                 "or host:port")
      ->envname(kAddressEnv)
      ->capture_default_str();
  const CLI::Validator duration_check(
      [](std::string& text) -> std::string {
        return ParseDuration(text) ? "" : "expected a positive duration such as 10s, 500ms, 2m";
      },
      "DURATION");
  app.add_option("--timeout", g.timeout_text,
                 "Deadline for publish, topology and health; for subscribe, how long to wait "
                 "for the daemon to end the stream after mqctl asked it to")
      ->check(duration_check)
      ->capture_default_str();
  app.add_flag("--wait", g.wait,
               "Wait (up to --timeout) for the daemon to become reachable instead of failing "
               "at once with UNAVAILABLE");
  app.add_option("--token-file", g.token_file,
                 "With the daemon's access section: a file whose first line is this client's "
                 "bearer token, sent on every call (never give the token itself on a command "
                 "line)")
      ->envname(kTokenFileEnv);

  // publish
  PublishOptions po;
  CLI::App* publish = app.add_subcommand(
      "publish",
      "Publish one message and print its result as JSON: "
      "{sequence, message_id, status, error}; or one message per stdin line (--lines), or N "
      "copies for load (--count). Exits 0 only when the broker confirmed every message.");
  publish->add_option("business", po.business, "A producer business configured in the daemon")
      ->required();
  publish->add_option("routing_key", po.routing_key, "AMQP routing key")->required();
  publish->add_option("payload", po.payload,
                      "Message body; '-' or absent: read it from stdin (bytes, unchanged)");
  publish->add_option("--message-id", po.message_id,
                      "Idempotency key; the daemon generates one when absent");
  publish->add_option("--correlation-id", po.correlation_id, "AMQP correlation-id");
  publish->add_option("--content-type", po.content_type, "AMQP content-type");
  const CLI::Validator header_check(
      [](std::string& kv) -> std::string {
        const size_t eq = kv.find('=');
        return eq == std::string::npos || eq == 0 ? "expected KEY=VALUE" : "";
      },
      "KEY=VALUE");
  publish->add_option("--header", po.headers, "Message header; repeat for more")
      ->check(header_check)
      ->allow_extra_args(false)
      ->take_all();
  publish->add_option("--ttl-ms", po.ttl_ms, "Per-message expiry in milliseconds; 0: none")
      ->check(CLI::Range(uint32_t{0}, UINT32_MAX));
  publish->add_option("--reply-to", po.reply_to, "Business name replies should go to");
  publish->add_flag("--lines", po.lines,
                    "Each line of stdin is one message (without its newline), all with these "
                    "options, sent over PublishBatchStream; one result line per message "
                    "(sequence = line number), in the order the broker settles them. Exits 0 "
                    "only when every line was confirmed; --timeout bounds the whole run");
  CLI::Option* file_opt = publish->add_option("--file", po.file, "Read the payload from this file");
  CLI::Option* count_opt = publish->add_option(
      "--count", po.count,
      "Load: publish N copies of the payload over PublishBatchStream (each with its own "
      "message id) and print one JSON summary line: counts by status, seconds, per_second, "
      "confirm latency_ms p50/p90/p99/max (a progress line on a terminal's stderr). Exits 0 "
      "only when all N were confirmed; --timeout bounds the run after the pacing's end");
  count_opt->check(CLI::Range(uint64_t{1}, uint64_t{100000000}));
  CLI::Option* rate_opt = publish->add_option(
      "--rate", po.rate, "With --count: messages per second; absent: as fast as confirms allow");
  rate_opt->check(CLI::PositiveNumber)->needs(count_opt);
  CLI::Option* lines_opt = publish->get_option("--lines");
  lines_opt->excludes(count_opt)->excludes(file_opt);
  publish->add_option("--batch", po.batch, "With --lines or --count: messages per request")
      ->check(CLI::Range(uint32_t{1}, uint32_t{1000}));

  // subscribe
  SubscribeOptions so;
  CLI::App* subscribe = app.add_subcommand(
      "subscribe",
      "Consume a business's queue, printing one JSON line per delivery and acking it after "
      "printing. The payload is in \"payload\" when it is UTF-8, else in \"payload_base64\". "
      "SIGINT/SIGTERM end it cleanly (exit 0); unacked deliveries go back to the queue.");
  subscribe->add_option("business", so.business, "A consumer business configured in the daemon")
      ->required();
  CLI::Option* prefetch_opt =
      subscribe->add_option("--prefetch", so.prefetch,
                            "Unacked deliveries allowed in flight; 0: the daemon's default "
                            "(default: 0, or N when --count N is given)");
  subscribe->add_option("--name", so.name, "Consumer name shown to operators");
  subscribe->add_option("--count", so.count, "Exit 0 after handling N deliveries; 0: run forever")
      ->capture_default_str();
  bool no_ack_flag = false;
  bool nack_requeue_flag = false;
  bool nack_drop_flag = false;
  CLI::Option* no_ack = subscribe->add_flag("--no-ack", no_ack_flag,
                                            "Print deliveries but never settle them (for tests)");
  CLI::Option* nack_requeue = subscribe->add_flag(
      "--nack-requeue", nack_requeue_flag, "Nack each delivery with requeue instead of acking");
  CLI::Option* nack_drop =
      subscribe->add_flag("--nack-drop", nack_drop_flag,
                          "Nack each delivery without requeue (dead-letter or drop) instead "
                          "of acking");
  no_ack->excludes(nack_requeue)->excludes(nack_drop);
  nack_requeue->excludes(nack_drop);
  subscribe
      ->add_flag("--ack-multiple", so.ack_multiple,
                 "Ack each batch of printed deliveries with one multiple ack (its last id) "
                 "instead of listing every id")
      ->excludes(no_ack)
      ->excludes(nack_requeue)
      ->excludes(nack_drop);

  // topology
  bool pretty = false;
  CLI::App* topology = app.add_subcommand(
      "topology", "Print what the daemon declared and its broker connection state, as JSON");
  topology->add_flag("--pretty", pretty, "Indent the JSON");

  // health
  std::string health_service;
  CLI::App* health = app.add_subcommand(
      "health",
      "grpc.health.v1 check: print SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN; exit 0 "
      "only when SERVING");
  health->add_option("--service", health_service, "Service to check; empty: the whole server");

  // reload
  CLI::App* reload = app.add_subcommand(
      "reload",
      "Make the daemon read its config file again, as SIGHUP (systemctl reload) does, and "
      "print the outcome as JSON {at_ms, result, applied, kept, error}; result is unchanged, "
      "applied, kept (some differences need a restart) or rejected (exit 2: the file does not "
      "load; the running config stays)");

  // servers
  ServersOptions svo;
  CLI::App* servers = app.add_subcommand(
      "servers",
      "List the fleet this daemon sees on its ping exchange (needs ping.fleet: true): a "
      "table APP REGION SERVER HOST LAST-SEEN STATE STREAMS STATUS STALE");
  servers->add_option("--app", svo.app, "Only this app");
  servers->add_flag("--json", svo.json, "One JSON object per server instead of the table");

  // task send, task complete
  CLI::App* task = app.add_subcommand("task", "Send tasks to services and complete them");
  task->require_subcommand(1, 1);
  TaskSendOptions tso;
  std::string task_timeout_text;
  CLI::App* task_send = task->add_subcommand(
      "send",
      "Send a task to any one instance of an app (exchange task.<app>) or, with --region and "
      "--server, to that one server; print its correlation_id, exchange, command and "
      "message_id, and with --wait its result (state, from, content_type, payload).");
  task_send->add_option("--app", tso.app, "The app the task is for")->required();
  CLI::Option* region_opt =
      task_send->add_option("--region", tso.region, "With --server: one server");
  CLI::Option* server_opt =
      task_send->add_option("--server", tso.server, "With --region: one server");
  region_opt->needs(server_opt);
  server_opt->needs(region_opt);
  task_send
      ->add_option("command", tso.command,
                   "run, awake, pause, delete or distribute (the seed's 'distibute' is sent as "
                   "distribute); the routing key")
      ->required();
  task_send->add_option("payload", tso.payload,
                        "Task body; '-': read it from stdin; absent: empty");
  task_send->add_flag("--wait", tso.wait,
                      "Wait for the task's result (up to --timeout) and print it; exit 2 when "
                      "none came in time. (The global --wait, before 'task', waits for the "
                      "daemon instead.)");
  CLI::Option* task_timeout_opt =
      task_send
          ->add_option("--timeout", task_timeout_text,
                       "With --wait: how long to wait for the result (the call's deadline is 5s "
                       "more); without: the call's deadline. Default: the global --timeout (10s)")
          ->check(duration_check);
  task_send->add_option("--content-type", tso.content_type, "AMQP content-type of the task");
  task_send->add_option("--header", tso.headers, "Task header; repeat for more")
      ->check(header_check)
      ->allow_extra_args(false)
      ->take_all();
  task_send->add_option("--message-id", tso.message_id,
                        "Idempotency key; the daemon generates one when absent");
  task_send->add_flag("--json", tso.json,
                      "Print one JSON object {exchange, command, message_id, correlation_id, "
                      "result} instead of key: value lines");

  TaskCompleteOptions tco;
  CLI::App* task_complete = task->add_subcommand(
      "complete",
      "Publish a task's result (to the task's reply_to business, default task.result, routing "
      "key = correlation id) and print the publish result as JSON, like publish.");
  task_complete
      ->add_option("correlation_id", tco.correlation_id, "The task delivery's correlation_id")
      ->required();
  task_complete->add_option("payload", tco.payload,
                            "Result body; '-': read it from stdin; absent: empty");
  task_complete->add_option("--reply-to", tco.reply_to,
                            "The task delivery's reply_to; absent: task.result");
  task_complete->add_option("--state", tco.state, "Free-form result state, e.g. done, failed");
  task_complete->add_option("--content-type", tco.content_type, "AMQP content-type of the result");
  task_complete->add_option("--header", tco.headers, "Result header; repeat for more")
      ->check(header_check)
      ->allow_extra_args(false)
      ->take_all();
  task_complete->add_option("--message-id", tco.message_id,
                            "Idempotency key; the daemon generates one when absent");

  // status report
  CLI::App* status_cmd = app.add_subcommand("status", "The service's own status, in its pings");
  status_cmd->require_subcommand(1, 1);
  StatusReportOptions sro;
  CLI::App* status_report = status_cmd->add_subcommand(
      "report",
      "Set this service's status (replacing the previous report); the daemon carries it in "
      "every ping from now on, and `mqctl servers` shows it.");
  status_report->add_option("--state", sro.state, "Free-form, e.g. ready, busy, draining");
  status_report->add_option("--load", sro.load, "Free-form number, e.g. 0.3")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double value = 0;
            const char* end = text.data() + text.size();
            const auto [ptr, ec] = std::from_chars(text.data(), end, value);
            return ec == std::errc() && ptr == end && std::isfinite(value)
                       ? ""
                       : "expected a finite number such as 0.3";
          },
          "NUMBER"));
  status_report->add_option("--message", sro.message, "Free-form text");
  status_report->add_option("--label", sro.labels, "KEY=VALUE label; repeat for more")
      ->check(header_check)
      ->allow_extra_args(false)
      ->take_all();

  // dlq list, dlq replay
  CLI::App* dlq = app.add_subcommand(
      "dlq", "Inspect and replay a consumer business's dead-letter queue (<queue>.dead)");
  dlq->require_subcommand(1, 1);
  DlqOptions dlo;
  CLI::App* dlq_list = dlq->add_subcommand(
      "list",
      "Print the dead letters of a business, one JSON line each: {reason, queue, "
      "dead_lettered_at_ms, count, original_exchange, original_routing_key, message} (message "
      "as `subscribe` prints a delivery). Nothing is removed from the queue.");
  dlq_list->add_option("business", dlo.business, "A consumer business configured in the daemon")
      ->required();
  dlq_list
      ->add_option("--max", dlo.max, "At most N messages; 0: 100 (the daemon lists 1000 at most)")
      ->capture_default_str();
  CLI::App* dlq_replay = dlq->add_subcommand(
      "replay",
      "Move dead letters back to the business's exchange, with their routing key, properties "
      "and headers; each leaves the dead-letter queue only once its copy is confirmed. Prints "
      "{replayed, message_ids, remaining}; exit 2 when the daemon stopped with an error after "
      "replaying some (printed first).");
  dlq_replay->add_option("business", dlo.business, "A consumer business configured in the daemon")
      ->required();
  dlq_replay->add_option("--max", dlo.max, "At most N messages; 0: all those there at the start")
      ->capture_default_str();
  dlq_replay->add_option("--message-id", dlo.message_id,
                         "Only the messages with this message_id (NOT_FOUND when none)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error
    return rc == 0 ? kExitOk : kExitUsage;
  }
  g.timeout = *ParseDuration(g.timeout_text);  // validated above
  if (!g.token_file.empty()) {
    if (const grpc::Status read = mqsidecar::ReadTokenFile(g.token_file, &g.token); !read.ok()) {
      std::cerr << "mqctl: " << read.error_message() << "\n";
      return kExitError;
    }
  }

  if (publish->parsed()) return RunPublish(g, po);
  if (subscribe->parsed()) {
    so.prefetch_given = prefetch_opt->count() > 0;
    if (no_ack_flag) so.settle = Settle::kNone;
    if (nack_requeue_flag) so.settle = Settle::kNackRequeue;
    if (nack_drop_flag) so.settle = Settle::kNackDrop;
    SubscribeSession session(g, so);
    return session.Run();
  }
  if (topology->parsed()) return RunTopology(g, pretty);
  if (health->parsed()) return RunHealth(g, health_service);
  if (reload->parsed()) return RunReload(g);
  if (servers->parsed()) return RunServers(g, svo);
  if (task_send->parsed()) {
    if (task_timeout_opt->count() > 0) tso.timeout = ParseDuration(task_timeout_text);
    return RunTaskSend(g, tso);
  }
  if (task_complete->parsed()) return RunTaskComplete(g, tco);
  if (status_report->parsed()) return RunStatusReport(g, sro);
  if (dlq_list->parsed() || dlq_replay->parsed()) {
    // Unless --timeout was given: the daemon's own bound, and a margin.
    if (app.get_option("--timeout")->count() == 0) g.timeout = kDlqTimeout;
    return dlq_list->parsed() ? RunDlqList(g, dlo) : RunDlqReplay(g, dlo);
  }
  return kExitUsage;  // unreachable: require_subcommand(1, 1)
}

}  // namespace
}  // namespace mqctl

int main(int argc, char** argv) {
  // CLI11 reports usage errors itself; anything else escaping is a bug, but
  // it still gets a message and an exit code instead of std::terminate.
  try {
    return mqctl::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "mqctl: " << e.what() << "\n";
    return 1;
  }
}
