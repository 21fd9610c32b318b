// soak_driver: the client side of the soak run (tests/soak/soak.sh).
//
// Publishes N messages (ids <tag>-0 .. <tag>-(N-1)) through every sidecar
// given, one PublishStream per sidecar pulling from one shared to-do list, and
// consumes them with competing Subscribe streams on every sidecar. It behaves
// as docs/reliability.md asks a client to: a publish answered UNCONFIRMED, or
// left unanswered by a broken stream (a SIGKILLed sidecar), is retried with the
// same message_id (and declared to the checker as a retry); FAILED, REJECTED
// and UNROUTABLE are retried too (never sent: nothing to declare). Consumers
// record each delivery as received, then handled, then ack it; at random
// intervals one consumer is "killed" (its stream cancelled with whatever it
// holds) and comes back under a new name. The script restarts the broker and
// SIGKILLs a sidecar meanwhile, and writes each broker restart's window to
// the --restarts file, which the driver declares to the checker at the end
// (History::BrokerRestart): RabbitMQ delivers some messages again unmarked
// after a restart (docs/reliability.md, "When duplicates happen").
//
// When every message is CONFIRMED and handled (or at --timeout) it prints the
// checker's report (tests/integration/checker.h) and exits 0 only if the
// checker finds no violation: 0 confirmed lost, every duplicate explained.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "checker.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"
#include "util/mutex.h"

namespace mqs::soak {
namespace {

namespace pb = mqsidecar::v1;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Settings {
  std::vector<std::string> sidecars;
  std::string business = "soak";
  std::string tag = "soak";
  uint32_t messages = 1000000;
  double rate = 0;        // publishes per second, all publishers together; 0: unpaced
  uint32_t window = 256;  // unanswered publishes per stream
  int consumers_per_sidecar = 2;
  uint32_t prefetch = 50;
  double kill_min_s = 2, kill_max_s = 6;  // a consumer killed every [min, max] s
  int timeout_s = 3600;
  int settle_s = 5;  // after the last handle: late copies still count
  size_t payload_bytes = 100;
  std::string restarts_file;  // "begin <ns>" / "end <ns>" lines (wall clock, ns since epoch)
};

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Work: the messages still to publish, shared by all publishers.
class Work {
 public:
  explicit Work(uint32_t n) : total_(n) {
    for (uint32_t i = 0; i < n; ++i) todo_.push_back(i);
  }
  // The next message to publish; nullopt when none is waiting (some may come
  // back) or everything is confirmed.
  std::optional<uint32_t> Take() {
    util::MutexLock lock(&mu_);
    if (todo_.empty()) return std::nullopt;
    const uint32_t i = todo_.front();
    todo_.pop_front();
    return i;
  }
  void Again(uint32_t i) {
    util::MutexLock lock(&mu_);
    todo_.push_back(i);
  }
  void Confirmed() {
    util::MutexLock lock(&mu_);
    ++confirmed_;
  }
  bool Done() const {
    util::MutexLock lock(&mu_);
    return confirmed_ >= total_;
  }
  size_t confirmed() const {
    util::MutexLock lock(&mu_);
    return confirmed_;
  }

 private:
  const uint32_t total_;
  mutable util::Mutex mu_;
  std::deque<uint32_t> todo_ ABSL_GUARDED_BY(mu_);
  size_t confirmed_ ABSL_GUARDED_BY(mu_) = 0;
};

struct Counters {
  std::atomic<size_t> streams_broken{0};
  std::atomic<size_t> unconfirmed{0};
  std::atomic<size_t> refused{0};  // FAILED / REJECTED / UNROUTABLE, retried
  std::atomic<size_t> unknown{0};  // unanswered when a stream broke, retried
  std::atomic<size_t> consumers_killed{0};
  std::atomic<size_t> consumer_streams_ended{0};
};

// Declares the broker restarts the script logged to `path` ("begin <ns>" when
// it stopped the broker, "end <ns>" when the broker answered again); a restart
// still going on when the driver ends lasts until now. Returns how many.
size_t DeclareRestarts(const std::string& path, it::History& h) {
  if (path.empty()) return 0;
  std::ifstream in(path);
  std::string word;
  int64_t ns = 0;
  int64_t began = -1;  // none open
  size_t n = 0;
  const auto at = [](int64_t v) {
    return it::History::WallClock::time_point(
        std::chrono::duration_cast<it::History::WallClock::duration>(std::chrono::nanoseconds(v)));
  };
  while (in >> word >> ns) {
    if (word == "begin") {
      began = ns;
    } else if (word == "end" && began >= 0) {
      h.BrokerRestart(at(began), at(ns));
      began = -1;
      ++n;
    }
  }
  if (began >= 0) {
    h.BrokerRestart(at(began), it::History::WallClock::now());
    ++n;
  }
  return n;
}

std::string Id(const Settings& s, uint32_t i) { return s.tag + "-" + std::to_string(i); }

// Publisher: one PublishStream at a time to one sidecar, reopened when it breaks.
class Publisher {
 public:
  Publisher(const Settings& s, std::string name, const std::string& address, Work& work,
            it::History& h, Counters& counters, std::atomic<bool>& stop)
      : s_(s),
        name_(std::move(name)),
        stub_(pb::PubSub::NewStub(Connect(address))),
        work_(work),
        h_(h),
        counters_(counters),
        stop_(stop),
        payload_(s.payload_bytes, 'p') {}

  void Run() {
    while (!stop_ && !work_.Done()) {
      RunStream();
      if (!stop_ && !work_.Done()) std::this_thread::sleep_for(200ms);
    }
  }

 private:
  void RunStream() {
    grpc::ClientContext ctx;
    auto stream = stub_->PublishStream(&ctx);
    {
      util::MutexLock lock(&mu_);
      inflight_.clear();
      broken_ = false;
    }
    std::thread reader([&] { ReadLoop(*stream, ctx); });
    const double per_stream_rate =
        s_.rate > 0 ? s_.rate / static_cast<double>(s_.sidecars.size()) : 0;
    const auto gap = per_stream_rate > 0 ? std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(1.0 / per_stream_rate))
                                         : Clock::duration::zero();
    auto next = Clock::now();
    uint64_t seq = 0;
    while (!stop_ && !work_.Done()) {
      {
        util::MutexLock lock(&mu_);
        while (!broken_ && inflight_.size() >= s_.window) cv_.WaitUntil(&mu_, Clock::now() + 100ms);
        if (broken_) break;
      }
      const auto i = work_.Take();
      if (!i) {
        std::this_thread::sleep_for(20ms);  // wait for results to come back (retries)
        continue;
      }
      if (gap > Clock::duration::zero()) {
        std::this_thread::sleep_until(next);
        next = std::max(next + gap, Clock::now() - 10 * gap);
      }
      pb::PublishRequest r;
      r.set_business(s_.business);
      r.set_message_id(Id(s_, *i));
      r.set_sequence(++seq);
      r.set_payload(payload_);
      {
        util::MutexLock lock(&mu_);
        inflight_[seq] = *i;
      }
      h_.Sent(r.message_id());
      if (!stream->Write(r)) break;  // broken; the request is settled as unknown below
    }
    if (stop_ || work_.Done()) stream->WritesDone();
    ctx.TryCancel();
    reader.join();
    const grpc::Status st = stream->Finish();
    // Whatever is unanswered may or may not have been sent: retry it, declared.
    std::map<uint64_t, uint32_t> left;
    {
      util::MutexLock lock(&mu_);
      left.swap(inflight_);
    }
    if (!left.empty()) {
      ++counters_.streams_broken;
      std::fprintf(stderr, "soak: stream to %s ended (%d %s) with %zu unanswered: retried\n",
                   name_.c_str(), static_cast<int>(st.error_code()), st.error_message().c_str(),
                   left.size());
    }
    for (const auto& [seq_left, i] : left) {
      const std::string id = Id(s_, i);
      h_.Unknown(id);
      ++counters_.unknown;
      h_.Retried(id, "client retry of a request left unanswered by a broken PublishStream (" +
                         name_ + ")");
      work_.Again(i);
    }
  }

  void ReadLoop(grpc::ClientReaderWriter<pb::PublishRequest, pb::PublishResult>& stream,
                grpc::ClientContext& ctx) {
    pb::PublishResult res;
    while (stream.Read(&res)) {
      uint32_t i = 0;
      {
        util::MutexLock lock(&mu_);
        auto it = inflight_.find(res.sequence());
        if (it == inflight_.end()) continue;  // not ours: the checker sees no result
        i = it->second;
        inflight_.erase(it);
        cv_.SignalAll();
      }
      h_.Result(res);
      switch (res.status()) {
        case pb::PublishResult::CONFIRMED:
          work_.Confirmed();
          break;
        case pb::PublishResult::UNCONFIRMED:
          ++counters_.unconfirmed;
          h_.Retried(res.message_id(), "client retry after UNCONFIRMED");
          work_.Again(i);
          break;
        default:
          ++counters_.refused;
          work_.Again(i);
      }
      if (work_.Done()) break;
    }
    util::MutexLock lock(&mu_);
    broken_ = true;
    cv_.SignalAll();
    ctx.TryCancel();
  }

  const Settings& s_;
  const std::string name_;
  std::unique_ptr<pb::PubSub::Stub> stub_;
  Work& work_;
  it::History& h_;
  Counters& counters_;
  std::atomic<bool>& stop_;
  const std::string payload_;
  util::Mutex mu_;
  util::CondVar cv_;
  std::map<uint64_t, uint32_t> inflight_ ABSL_GUARDED_BY(mu_);  // sequence -> message
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
};

// Consumer: a Subscribe stream that handles and acks every delivery; Kill()
// drops it mid-flight, and it comes back under a new name.
class Consumer {
 public:
  Consumer(const Settings& s, std::string name, const std::string& address, it::History& h,
           Counters& counters, std::atomic<bool>& stop)
      : s_(s),
        name_(std::move(name)),
        stub_(pb::PubSub::NewStub(Connect(address))),
        h_(h),
        counters_(counters),
        stop_(stop) {}

  void Run() {
    for (int incarnation = 1; !stop_; ++incarnation) {
      RunStream(name_ + "." + std::to_string(incarnation));
      ++counters_.consumer_streams_ended;
      if (!stop_) std::this_thread::sleep_for(200ms);
    }
  }
  // Cancels the stream with whatever it holds, like a client that died.
  void Kill() {
    util::MutexLock lock(&mu_);
    if (ctx_) ctx_->TryCancel();
  }
  // Leaves gracefully: half-closes; the sidecar ends the stream once nothing is unacked.
  void Leave() {
    util::MutexLock lock(&mu_);
    if (stream_) stream_->WritesDone();
  }

 private:
  void RunStream(const std::string& name) {
    grpc::ClientContext ctx;
    auto stream = stub_->Subscribe(&ctx);
    {
      util::MutexLock lock(&mu_);
      ctx_ = &ctx;
      stream_ = stream.get();
    }
    pb::SubscribeRequest open;
    open.mutable_open()->set_business(s_.business);
    open.mutable_open()->set_prefetch(s_.prefetch);
    open.mutable_open()->set_consumer_name(name);
    bool ok;
    {
      util::MutexLock lock(&mu_);
      ok = !stop_ && stream->Write(open);
    }
    pb::Delivery d;
    while (ok && stream->Read(&d)) {
      h_.Received(name, d);
      // The effect, committed (docs/reliability.md: dedup insert + effect, commit), then the ack.
      h_.Handled(name, d);
      pb::SubscribeRequest ack;
      ack.mutable_ack()->set_delivery_id(d.delivery_id());
      util::MutexLock lock(&mu_);
      if (!stream->Write(ack)) break;
    }
    {
      util::MutexLock lock(&mu_);
      ctx_ = nullptr;
      stream_ = nullptr;
    }
    ctx.TryCancel();
    stream->Finish();
  }

  const Settings& s_;
  const std::string name_;
  std::unique_ptr<pb::PubSub::Stub> stub_;
  it::History& h_;
  Counters& counters_;
  std::atomic<bool>& stop_;
  util::Mutex mu_;  // guards the current stream's context and its writes
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientReaderWriter<pb::SubscribeRequest, pb::Delivery>* stream_ ABSL_GUARDED_BY(mu_) =
      nullptr;
};

int Main(int argc, char** argv) {
  Settings s;
  CLI::App app{"soak_driver: publish and consume through sidecars under faults; judge the history"};
  app.add_option("--sidecar", s.sidecars, "gRPC address of a sidecar (repeat)")->required();
  app.add_option("--business", s.business);
  app.add_option("--tag", s.tag, "message id prefix (unique per run)");
  app.add_option("--messages", s.messages);
  app.add_option("--rate", s.rate, "publishes per second in total; 0: unpaced");
  app.add_option("--window", s.window);
  app.add_option("--consumers-per-sidecar", s.consumers_per_sidecar);
  app.add_option("--prefetch", s.prefetch);
  app.add_option("--kill-min", s.kill_min_s, "seconds between consumer kills, at least");
  app.add_option("--kill-max", s.kill_max_s, "seconds between consumer kills, at most");
  app.add_option("--timeout", s.timeout_s, "seconds");
  app.add_option("--settle", s.settle_s, "seconds to keep consuming after the last message");
  app.add_option("--restarts", s.restarts_file,
                 "file of broker restart windows (\"begin <ns>\" / \"end <ns>\" lines, wall "
                 "clock), declared to the checker");
  CLI11_PARSE(app, argc, argv);

  it::History h;
  Counters counters;
  Work work(s.messages);
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<Consumer>> consumers;
  std::vector<std::unique_ptr<Publisher>> publishers;
  for (size_t k = 0; k < s.sidecars.size(); ++k) {
    const std::string sc = std::string(1, static_cast<char>('A' + k));
    for (int c = 0; c < s.consumers_per_sidecar; ++c) {
      consumers.push_back(std::make_unique<Consumer>(s, sc + "-c" + std::to_string(c),
                                                     s.sidecars[k], h, counters, stop));
    }
    publishers.push_back(
        std::make_unique<Publisher>(s, "sidecar " + sc, s.sidecars[k], work, h, counters, stop));
  }
  std::vector<std::thread> threads;
  for (auto& c : consumers) threads.emplace_back([&c] { c->Run(); });
  std::this_thread::sleep_for(1s);  // consumers attached before the first publish
  for (auto& p : publishers) threads.emplace_back([&p] { p->Run(); });

  std::atomic<bool> stop_killer{false};
  std::thread killer([&] {
    std::mt19937 rng(std::random_device{}());
    std::uniform_real_distribution<double> gap(s.kill_min_s, s.kill_max_s);
    std::uniform_int_distribution<size_t> pick(0, consumers.size() - 1);
    while (!stop_killer) {
      const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(gap(rng)));
      while (!stop_killer && Clock::now() < until) std::this_thread::sleep_for(50ms);
      if (stop_killer) break;
      consumers[pick(rng)]->Kill();
      ++counters.consumers_killed;
    }
  });

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(s.timeout_s);
  auto next_progress = start + 5s;
  bool complete = false;
  while (Clock::now() < deadline) {
    if (work.Done() && h.ConfirmedUndelivered() == 0) {
      complete = true;
      break;
    }
    std::this_thread::sleep_for(50ms);
    if (Clock::now() >= next_progress) {
      next_progress += 5s;
      std::fprintf(stderr,
                   "soak: %.0f s: confirmed %zu/%u, confirmed not handled yet %zu, unconfirmed "
                   "%zu, unknown %zu, consumers killed %zu\n",
                   std::chrono::duration<double>(Clock::now() - start).count(), work.confirmed(),
                   s.messages, h.ConfirmedUndelivered(), counters.unconfirmed.load(),
                   counters.unknown.load(), counters.consumers_killed.load());
    }
  }
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  stop_killer = true;
  killer.join();
  // Late copies (redeliveries of what a killed consumer held) still count.
  std::this_thread::sleep_for(std::chrono::seconds(s.settle_s));
  stop = true;
  for (auto& c : consumers) c->Leave();
  const auto leave_deadline = Clock::now() + 10s;
  while (Clock::now() < leave_deadline &&
         counters.consumer_streams_ended.load() < consumers.size()) {
    std::this_thread::sleep_for(50ms);
  }
  for (auto& c : consumers) c->Kill();
  for (auto& t : threads) t.join();

  const size_t restarts = DeclareRestarts(s.restarts_file, h);
  const it::History::Report r = h.Check();
  std::printf("soak: %zu broker restarts declared to the checker\n", restarts);
  std::printf("soak: %s in %.1f s (%u messages, %zu sidecars, %zu consumers)\n",
              complete ? "complete" : "TIMED OUT", took, s.messages, s.sidecars.size(),
              consumers.size());
  std::printf(
      "soak: publish streams broken %zu (requests left unanswered and retried %zu), "
      "UNCONFIRMED retried %zu, FAILED/REJECTED/UNROUTABLE retried %zu; consumers killed %zu\n",
      counters.streams_broken.load(), counters.unknown.load(), counters.unconfirmed.load(),
      counters.refused.load(), counters.consumers_killed.load());
  std::printf("soak: checker: %s\n", r.Summary().c_str());
  std::printf("soak: verdict: %s\n", complete && r.ok() ? "PASS" : "FAIL");
  std::fflush(stdout);
  return complete && r.ok() ? 0 : 1;
}

}  // namespace
}  // namespace mqs::soak

int main(int argc, char** argv) {
  try {
    return mqs::soak::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "soak_driver: error: %s\n", e.what());
    return 1;
  }
}
