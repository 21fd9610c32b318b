// Integration test harness: real mq-sidecar processes against a real RabbitMQ.
//
// IntegrationTest is the per-test scope: it checks the broker is reachable
// (failing the test, never skipping it), names businesses uniquely
// (it.<pid>.<test>.<suffix>), starts daemons in a private temp dir, and on
// destruction stops them, deletes the test's exchanges and queues, and prints
// the daemons' log tails when the test failed.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "health.grpc.pb.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"

namespace mqs::it {

using Clock = std::chrono::steady_clock;
namespace pb = ::mqsidecar::v1;

// The broker under test: $MQS_TEST_AMQP_URI or amqp://guest:guest@127.0.0.1:5672/.
std::string AmqpUri();

// Polls `pred` until it holds or `timeout` passes; returns its last value.
bool WaitUntil(const std::function<bool()>& pred, Clock::duration timeout,
               Clock::duration poll = std::chrono::milliseconds(20));

// A child process. Dies with the test binary (PR_SET_PDEATHSIG) so a crashed
// run leaks nothing; the destructor stops and reaps it.
class ChildProcess {
 public:
  // stdout and stderr go to `log_file`; with `pipe_stdout`, stdout instead goes
  // to a pipe read by ReadLine().
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_file,
               bool pipe_stdout = false);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // False once the process has exited (and then it is reaped).
  bool Running();
  // Waits for exit; true if it exited within `timeout`.
  bool WaitExit(Clock::duration timeout);
  // SIGTERM, then SIGKILL after `grace`; always reaps.
  void Stop(Clock::duration grace = std::chrono::seconds(5));
  // SIGKILL and reap.
  void Kill();
  // Next stdout line (without '\n'), or nullopt on timeout/EOF.
  std::optional<std::string> ReadLine(Clock::duration timeout);
  // waitpid() status, valid once !Running().
  int wait_status() const { return wait_status_; }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int wait_status_ = 0;
  int stdout_fd_ = -1;
  std::string buffer_;
};

// Runs a command to completion: its exit code (-1: timeout or signal), stdout
// and stderr.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv, Clock::duration timeout);

// Direct AMQP access (rabbitmq-c) for inspecting and cleaning up the broker,
// independent of the daemon under test.
class AmqpAdmin {
 public:
  explicit AmqpAdmin(std::string uri);
  ~AmqpAdmin();
  AmqpAdmin(const AmqpAdmin&) = delete;
  AmqpAdmin& operator=(const AmqpAdmin&) = delete;

  // "" on success, else why the broker is unreachable.
  std::string Connect();
  struct QueueInfo {
    uint32_t messages = 0;  // ready (not unacked) messages
    uint32_t consumers = 0;
  };
  // nullopt if the queue does not exist or the broker cannot be asked.
  std::optional<QueueInfo> InspectQueue(const std::string& queue);
  bool ExchangeExists(const std::string& exchange);
  // Best effort; errors ignored.
  void DeleteQueue(const std::string& queue);
  void DeleteExchange(const std::string& exchange);

 private:
  struct Conn;
  // Runs `op` on a fresh channel; on any failure drops the connection so the
  // next call reconnects. Returns op's result, false on failure.
  bool OnChannel(const std::function<bool(void* conn, uint16_t channel)>& op);
  std::string uri_;
  void* conn_ = nullptr;  // amqp_connection_state_t
  uint16_t next_channel_ = 1;
};

struct BusinessSpec {
  std::string name;
  bool producer = true;
  bool consumer = true;
  uint32_t prefetch = 16;
};

// One mq-sidecar process with its own config, unix socket and log file.
class Daemon {
 public:
  Daemon(std::string dir, std::string name, std::string amqp_uri,
         std::vector<BusinessSpec> businesses);
  ~Daemon();

  // Launches and waits until health says SERVING; throws (with the log tail)
  // when it exits or is not ready in time.
  void Start(Clock::duration ready_timeout = std::chrono::seconds(20));
  void Stop();  // SIGTERM, SIGKILL after a deadline
  void Kill();  // SIGKILL
  bool Running() { return process_ && process_->Running(); }

  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }  // grpc target
  const std::string& config_path() const { return config_path_; }
  const std::string& log_path() const { return log_path_; }
  std::shared_ptr<grpc::Channel> channel();
  pb::PubSub::Stub& stub();
  // Health of service "" (nullopt: the RPC failed).
  std::optional<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      Clock::duration timeout = std::chrono::seconds(2));
  std::string LogTail(size_t lines = 80) const;

 private:
  std::string dir_, name_, uri_;
  std::vector<BusinessSpec> businesses_;
  std::string address_, config_path_, log_path_;
  std::unique_ptr<ChildProcess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::PubSub::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// Per-test scope; see the file comment.
class IntegrationTest {
 public:
  explicit IntegrationTest(const std::string& test_name);
  ~IntegrationTest();

  // A unique business name, registered for cleanup of its exchange and of the
  // default queue <name>.queue.
  std::string Business(const std::string& suffix);
  // Starts a daemon serving `businesses` and waits until it is SERVING.
  Daemon& StartDaemon(std::vector<BusinessSpec> businesses);
  AmqpAdmin& admin() { return *admin_; }
  const std::string& dir() const { return dir_; }
  const std::string& uri() const { return uri_; }

 private:
  std::string prefix_, dir_, uri_;
  std::unique_ptr<AmqpAdmin> admin_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
  std::vector<std::string> exchanges_, queues_;
  int failures_at_start_ = 0;
};

// A Subscribe stream driven synchronously: a reader thread collects
// deliveries (acking each at once with `auto_ack`); the test acks/nacks.
class Subscriber {
 public:
  struct Options {
    std::string business;
    uint32_t prefetch = 0;
    std::string consumer_name = "it";
    bool auto_ack = false;
  };
  Subscriber(pb::PubSub::Stub& stub, Options options);
  ~Subscriber();  // cancels the stream if still open
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  bool Ack(uint64_t delivery_id);
  bool Nack(uint64_t delivery_id, bool requeue);
  // True once at least `n` deliveries arrived; false on timeout or stream end.
  bool WaitForCount(size_t n, Clock::duration timeout);
  size_t count() const;
  std::vector<pb::Delivery> deliveries() const;
  // The client drops the stream (context cancel). Acks written just before
  // may be lost with it (gRPC discards unread messages on cancel); use Leave()
  // when they must count.
  void Cancel();
  // Leaves gracefully: half-closes, so the daemon reads every ack sent so far,
  // and waits for the stream to end (cancels if it has not after `timeout`).
  // Returns the final status.
  grpc::Status Leave(Clock::duration timeout = std::chrono::seconds(10));
  // Half-close: the client sends no more requests.
  void CloseWrites();
  // The final status once the stream ended; nullopt if still open at timeout.
  std::optional<grpc::Status> WaitEnded(Clock::duration timeout);
  bool ended() const;

 private:
  void ReadLoop();
  bool Write(const pb::SubscribeRequest& request);

  Options options_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::SubscribeRequest, pb::Delivery>> stream_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<pb::Delivery> deliveries_;
  bool ended_ = false;
  grpc::Status status_;
  std::mutex write_mu_;
  bool writes_closed_ = false;
  std::thread reader_;
};

// PublishStream with every request pipelined (a writer thread feeds the
// stream while results are read). Returns the results and the final status.
struct PublishStreamOutcome {
  std::vector<pb::PublishResult> results;
  grpc::Status status;
};
PublishStreamOutcome PublishStream(pb::PubSub::Stub& stub,
                                   const std::vector<pb::PublishRequest>& requests,
                                   Clock::duration timeout = std::chrono::seconds(60));

pb::PublishRequest MakePublish(const std::string& business, const std::string& message_id,
                               uint64_t sequence, const std::string& payload = "payload");

// Unary Publish with a deadline.
grpc::Status PublishOne(pb::PubSub::Stub& stub, const pb::PublishRequest& request,
                        pb::PublishResult* result,
                        Clock::duration timeout = std::chrono::seconds(15));

// Publishes `n` messages with ids <tag>-0 .. <tag>-(n-1) over one PublishStream
// and REQUIREs every one CONFIRMED. Returns the ids.
std::vector<std::string> PublishConfirmed(pb::PubSub::Stub& stub, const std::string& business,
                                          int n, const std::string& tag);

// The message_ids of `deliveries`, in order.
std::vector<std::string> MessageIds(const std::vector<pb::Delivery>& deliveries);

// A delivery's headers without the x-delivery-count a quorum queue adds on
// redelivery (surfaced as Delivery.delivery_count instead).
std::map<std::string, std::string> UserHeaders(const pb::Delivery& delivery);

// Waits until the broker reports `queue` with `consumers` consumers (and, when
// given, `messages` ready messages).
bool WaitForQueue(AmqpAdmin& admin, const std::string& queue, std::optional<uint32_t> consumers,
                  std::optional<uint32_t> messages,
                  Clock::duration timeout = std::chrono::seconds(10));

std::string StatusText(const grpc::Status& status);
std::string ResultText(const pb::PublishResult& result);

// Incremented by a Catch listener on every failed assertion; lets scopes know
// whether the test failed so they print daemon logs.
int FailedAssertionCount();

}  // namespace mqs::it
