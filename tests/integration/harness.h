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

#include <atomic>
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

#include "grpc/health/v1/health.grpc.pb.h"
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

// ListenOnLoopback: a TCP socket listening on 127.0.0.1 at a free port, which
// goes to *port (the tests' proxies in front of the broker).
int ListenOnLoopback(int* port);
// DialLoopback: a TCP connection to 127.0.0.1:port, or -1.
int DialLoopback(int port);

// Runs a command to completion: its exit code (-1: timeout or signal), stdout
// and stderr.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv, Clock::duration timeout);
// "exit N" and what it printed, for a test's message.
std::string CommandOutput(const CommandResult& r);
// The lines of a command's output, without their '\n' (a last newline ends
// the last line; it does not start an empty one).
std::vector<std::string> OutputLines(const std::string& text);

// Broker nodes a script of ours starts and stops (`script start|stop`, e.g.
// deploy/scripts/cluster.sh): stopped when this goes out of scope (also when
// an assertion threw), unless Stop() already did. `tag` prefixes its output.
class ScriptedNodes {
 public:
  ScriptedNodes(std::string script, std::string tag)
      : script_(std::move(script)), tag_(std::move(tag)) {}
  ~ScriptedNodes();
  ScriptedNodes(const ScriptedNodes&) = delete;
  ScriptedNodes& operator=(const ScriptedNodes&) = delete;

  CommandResult Start();  // a half-started node is stopped too
  CommandResult Stop();

 private:
  CommandResult Script(const std::string& command, Clock::duration timeout) const;
  std::string script_;
  std::string tag_;
  bool started_ = false;
};

// Sets an environment variable for the lifetime of the object. setenv is not
// thread-safe: use it only before the test starts threads (daemons, streams).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

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
  // One message taken with basic.get (auto-ack): the message_id and the
  // headers rendered as text (tables as {k=v,...}, arrays as [a,b]).
  struct Message {
    std::string message_id;
    std::string body;
    bool redelivered = false;
    std::map<std::string, std::string> headers;
  };
  // nullopt when the queue is empty or cannot be read.
  std::optional<Message> Get(const std::string& queue);
  // Publishes (with a confirm) to `queue` through the default exchange a
  // message whose header `deep` nests `depth` arrays around "x": what a
  // hostile AMQP client can send. True once the broker confirmed it.
  bool PublishNested(const std::string& queue, const std::string& message_id, int depth);
  // Publishes (with a confirm) a message whose message_id, routing key and
  // header `key` (a byte-array value) are the given bytes, UTF-8 or not.
  bool PublishBytes(const std::string& queue, const std::string& message_id, const std::string& key,
                    const std::string& value);

 private:
  struct Conn;
  // Runs `op` on a fresh channel; on any failure drops the connection so the
  // next call reconnects. Returns op's result, false on failure.
  bool OnChannel(const std::function<bool(void* conn, uint16_t channel)>& op);
  // basic.publish to `queue` with `props` (an amqp_basic_properties_t), confirmed.
  bool PublishConfirmedRaw(const std::string& queue, const void* props);
  std::string uri_;
  void* conn_ = nullptr;  // amqp_connection_state_t
  uint16_t next_channel_ = 1;
};

struct BusinessSpec {
  std::string name;
  bool producer = true;
  bool consumer = true;
  uint32_t prefetch = 16;
  // Overrides; empty or 0 takes the daemon's default (exchange <name>, queue
  // <exchange>.queue, no delivery limit).
  std::string exchange = {};
  std::string queue = {};
  uint32_t max_deliveries = 0;
  std::string queue_type = "quorum";
  std::string handle = {};  // producer: alternate exchange for unroutable messages
  // consumers.<name>.dead_letter (<exchange>.dlx -> <queue>.dead, cleaned up
  // by IntegrationTest) and single_active; written only when not the default.
  bool dead_letter = true;
  bool single_active = false;
  // consumers.<name>.retry as YAML, e.g. "{delays: [300ms, 1s], max_attempts: 3}".
  std::string retry = {};
};

// Per-daemon settings; the defaults are what the plain integration tests use.
struct DaemonOptions {
  std::vector<std::string> uris = {};  // empty: the test's broker URI
  // More keys of the broker map, as YAML lines ("  password_file: /x\n").
  std::string broker_extra = {};
  std::chrono::seconds heartbeat{10};
  std::chrono::milliseconds drain{1000};                       // shutdown.drain
  std::optional<std::chrono::milliseconds> wait_timeout = {};  // publish.wait_timeout
  std::optional<bool> republish_unconfirmed = {};              // publish.republish_unconfirmed
  std::string log_level = "info";
  // Appended to the generated config: top-level keys it does not write
  // (identity, ping, tasks).
  std::string extra_yaml = {};
  // More listen addresses after the daemon's own unix socket (which the
  // harness's stub and health checks use), e.g. "127.0.0.1:50051".
  std::vector<std::string> extra_listen = {};
  // broker.tls as a YAML flow map ("{ ca: /x/ca.pem, verify: false }"),
  // written inside the generated broker map; "": not written.
  std::string broker_tls_yaml = {};
  // Run with this config file instead of a generated one (one file for
  // several daemons); its listen address must be this daemon's
  // unix://<dir>/<name>.sock, e.g. by placeholders.
  std::string config_file = {};
  // Environment for the daemon, "NAME=value" (e.g. MQ_SIDECAR_APP=usdtsvr).
  std::vector<std::string> env = {};
  std::vector<std::string> extra_args = {};
  std::string name = {};  // the daemon's name (its socket and log files); "": d<n>
  // log.format: text or json.
  std::string log_format = "text";
  // metrics.listen ("host:port"); "": off, so that concurrent daemons do not
  // collide on the default port.
  std::string metrics_listen = {};
};

// One mq-sidecar process with its own config, unix socket and log file.
class Daemon {
 public:
  Daemon(std::string dir, std::string name, std::string amqp_uri,
         std::vector<BusinessSpec> businesses, DaemonOptions options = {});
  ~Daemon();

  // Launches and waits until health says SERVING; throws (with the log tail)
  // when it exits or is not ready in time.
  void Start(Clock::duration ready_timeout = std::chrono::seconds(20));
  void Stop();  // SIGTERM, SIGKILL after a deadline
  void Kill();  // SIGKILL
  bool Running() { return process_ && process_->Running(); }
  // Sends `sig` (e.g. SIGTERM) without waiting.
  void Signal(int sig);
  // Waits for the process to exit; true if it did within `timeout`.
  bool WaitExit(Clock::duration timeout);
  // waitpid() status once exited.
  int wait_status() const { return process_ ? process_->wait_status() : 0; }

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
  // The whole log.
  std::string Log() const;
  // GetTopology (nullopt: the RPC failed).
  std::optional<pb::Topology> Topology(Clock::duration timeout = std::chrono::seconds(5));

 private:
  std::string dir_, name_, uri_;
  std::vector<BusinessSpec> businesses_;
  DaemonOptions options_;
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
  Daemon& StartDaemon(std::vector<BusinessSpec> businesses, DaemonOptions options = {});
  // Registers more broker objects for deletion at the end of the test.
  void CleanUpQueue(const std::string& queue) { queues_.push_back(queue); }
  void CleanUpExchange(const std::string& exchange) { exchanges_.push_back(exchange); }
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
    // Called on the reader thread for every delivery, after it is recorded
    // and before an auto-ack; may call Ack/Nack.
    std::function<void(const pb::Delivery&)> on_delivery = nullptr;
  };
  Subscriber(pb::PubSub::Stub& stub, Options options);
  ~Subscriber();  // cancels the stream if still open
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  // multiple: also every unacked delivery of the stream with a lower id.
  bool Ack(uint64_t delivery_id, bool multiple = false);
  bool Nack(uint64_t delivery_id, bool requeue, bool multiple = false, uint32_t retry_after_ms = 0);
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

// A PublishStream run in the background: a writer thread sends `requests`
// (at most `rate` per second when rate > 0, and only while the stream takes
// them), a reader thread collects results. The hooks run on those threads.
class AsyncPublishStream {
 public:
  struct Options {
    std::vector<pb::PublishRequest> requests = {};
    double rate = 0;  // requests per second; 0: as fast as the stream takes them
    Clock::duration timeout = std::chrono::seconds(120);
    // After a request was handed to gRPC (Write returned true).
    std::function<void(const pb::PublishRequest&)> on_written = nullptr;
    std::function<void(const pb::PublishResult&)> on_result = nullptr;
  };
  AsyncPublishStream(pb::PubSub::Stub& stub, Options options);
  ~AsyncPublishStream();  // cancels if still open, joins
  AsyncPublishStream(const AsyncPublishStream&) = delete;
  AsyncPublishStream& operator=(const AsyncPublishStream&) = delete;

  size_t written() const;
  size_t answered() const;
  // True once at least `n` results arrived; false on timeout or stream end.
  bool WaitAnswered(size_t n, Clock::duration timeout);
  // The final status once the stream ended; nullopt if still open at timeout.
  std::optional<grpc::Status> WaitEnded(Clock::duration timeout);
  std::vector<pb::PublishResult> results() const;
  bool ended() const;
  void Cancel();
  // Changes the pace of the writes still to come (0: unpaced).
  void SetRate(double rate) { rate_.store(rate); }

 private:
  void WriteLoop();
  void ReadLoop();

  Options options_;
  std::atomic<double> rate_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::PublishRequest, pb::PublishResult>> stream_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t written_ = 0;
  std::vector<pb::PublishResult> results_;
  bool writer_done_ = false;
  bool ended_ = false;
  grpc::Status status_;
  std::thread writer_, reader_;
};

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

// The mq-sidecar binary under test ($MQS_TEST_DAEMON, else the build's).
std::string DaemonPathForTests();
// The mqctl binary built with the tests.
inline std::string MqctlPath() { return MQS_MQCTL_PATH; }
std::string ResultText(const pb::PublishResult& result);

// Control of a local RabbitMQ node through rabbitmqctl and signals (tests run
// as root on the broker's machine). Every change is undone by Restore(), which
// the destructor calls: the node is thawed, its memory watermark restored and
// it is started again if stopped, and Restore waits until AMQP logins work.
// rabbitmqctl boots an Erlang VM per call (~1-3 s): use it sparingly.
class BrokerControl {
 public:
  struct Node {
    std::string amqp_uri;        // how to reach it, e.g. amqp://guest:guest@127.0.0.1:5672/
    std::string node_name = {};  // rabbitmqctl -n; "" = the default node
    // Environment for starting it (RABBITMQ_NODENAME=..., RABBITMQ_NODE_PORT=...).
    std::vector<std::string> start_env = {};
    std::string pid_file = {};  // "" = ask the node (rabbitmqctl eval)
  };
  // The default local node serving `amqp_uri`.
  explicit BrokerControl(std::string amqp_uri);
  explicit BrokerControl(Node node);
  ~BrokerControl();
  BrokerControl(const BrokerControl&) = delete;
  BrokerControl& operator=(const BrokerControl&) = delete;

  // "" when this process can control the node (root, rabbitmqctl installed).
  std::string CheckControllable() const;
  // Stops the whole node (rabbitmqctl stop: the Erlang VM exits).
  std::string StopNode();
  // Starts it (rabbitmq-server -detached) and waits until AMQP logins work.
  std::string StartNode(Clock::duration timeout = std::chrono::seconds(90));
  // rabbitmqctl stop_app / start_app: the VM stays, RabbitMQ stops.
  std::string StopApp();
  std::string StartApp(Clock::duration timeout = std::chrono::seconds(60));
  // SIGSTOP / SIGCONT on the node's VM (beam.smp).
  std::string Freeze();
  std::string Thaw();
  // rabbitmqctl set_vm_memory_high_watermark <fraction>; "0" raises the memory alarm.
  std::string SetMemoryWatermark(const std::string& fraction);
  // application:set_env(rabbit, key, value) on the running node (kept across
  // stop_app/start_app); Restore() puts back what was there.
  std::string SetRabbitEnv(const std::string& key, const std::string& erlang_value);
  // AMQP login works within `timeout`.
  bool WaitAnswers(Clock::duration timeout);
  // Undoes every change; "" on success, else what could not be restored.
  std::string Restore();
  const Node& node() const { return node_; }

 private:
  CommandResult Ctl(std::vector<std::string> args, Clock::duration timeout);
  pid_t FindPid();

  Node node_;
  pid_t frozen_pid_ = 0;
  bool watermark_changed_ = false;
  std::string original_watermark_ = "0.4";
  bool node_stopped_ = false;
  bool app_stopped_ = false;
  // key -> the node's value before SetRabbitEnv ("" = it had none).
  std::map<std::string, std::string> env_changed_;
};

// Incremented by a Catch listener on every failed assertion; lets scopes know
// whether the test failed so they print daemon logs.
int FailedAssertionCount();

}  // namespace mqs::it
