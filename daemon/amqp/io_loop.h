// IoLoop: the thread that owns one AMQP connection, and its reconnect cycle.
//
// rabbitmq-c is synchronous and not thread-safe, and it only sends and checks
// heartbeats inside its own calls. So each connection gets one thread that
// sleeps in poll() on the AMQP socket and a wake-up eventfd, never longer than
// half the heartbeat, and does everything on that connection: the commands
// other threads queue (publishes, acks, opens) and the frames the broker sends.
// Publisher and Consumer derive from it and fill in the hooks.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "amqp/connection.h"
#include "config/config.h"
#include "util/mutex.h"
#include "util/thread_watch.h"

namespace mqs::amqp {

// kStopConnectGrace: how long a stop lets a connect in progress (TCP, login,
// the set-up round trips) finish before its socket is shut down. A node that
// froze mid-connect would otherwise hold the stop for the connect or RPC
// timeout.
inline constexpr std::chrono::milliseconds kStopConnectGrace{500};

enum class LinkState { kConnecting, kConnected, kReconnecting, kStopped };
std::string_view LinkStateName(LinkState s);

class IoLoop {
 public:
  // on_state: called from the loop thread whenever the link state changes.
  // on_fatal: called once, from the loop thread, when retrying cannot help
  // (e.g. the broker refuses the declared topology); the loop then stops.
  IoLoop(std::string name, const config::Broker& broker, std::function<void()> on_state,
         std::function<void(const absl::Status&)> on_fatal);
  virtual ~IoLoop();
  IoLoop(const IoLoop&) = delete;
  IoLoop& operator=(const IoLoop&) = delete;

  void Start();
  // Stop asks the loop to finish: OnStopping() runs on the loop thread, the
  // loop keeps pumping until Drained() or `drain` has passed, then closes the
  // connection. A connect in progress gets kStopConnectGrace, then its socket
  // is shut down. Blocks until the thread has joined.
  void Stop(std::chrono::milliseconds drain);

  LinkState state() const { return state_.load(std::memory_order_acquire); }
  bool connected() const { return state() == LinkState::kConnected; }
  // blocked: the broker has paused this connection (resource alarm).
  bool blocked() const { return blocked_.load(std::memory_order_acquire); }
  std::string broker_uri() const;  // masked; the one connected or last tried
  // Why the last connect failed or the last connection was lost (password
  // masked, as logged); "" before the first failure. GetTopology shows it
  // while the link is down, so a wrong CA is visible without the log.
  std::string last_error() const;
  // The loop thread's progress, for the watchdog (util/thread_watch.h).
  const util::ThreadWatch& watch() const { return watch_; }

 protected:
  // PrepareConnection runs on the connector thread right after the login,
  // before OnConnected, while the loop thread keeps serving the inbox and its
  // deadlines: the synchronous set-up round trips (channels, topology) go
  // here. Its RPCs are bounded by broker.connect_timeout. It may use `conn`
  // and state no other thread touches (const config), nothing of the loop
  // thread's. An error drops the connection as OnConnected's does.
  virtual absl::Status PrepareConnection(Connection& conn) { return absl::OkStatus(); }
  // OnConnected prepares a fresh connection (channels, topology), on the loop
  // thread. An error drops the connection and retries, unless IsFatal(error).
  virtual absl::Status OnConnected(Connection& conn) = 0;
  // OnDisconnected: the connection is gone; settle everything tied to it.
  virtual void OnDisconnected(const absl::Status& why) = 0;
  // ProcessInbox handles queued commands; `conn` is null while disconnected.
  virtual void ProcessInbox(Connection* conn) = 0;
  virtual void OnFrame(Connection& conn, const amqp_frame_t& frame) = 0;
  virtual void OnStopping(Connection* conn) {}
  virtual bool Drained() const { return true; }
  virtual bool IsFatal(const absl::Status& s) const { return false; }
  // HasTimers: queued work has deadlines, so the loop wakes every 50 ms.
  virtual bool HasTimers() const { return false; }

  // The eventfd the loop polls; derived classes make it readable when they
  // queue a command.
  virtual int WakeFd() const = 0;
  virtual void Wake() = 0;

  bool stop_requested() const { return stop_.load(std::memory_order_acquire); }
  const std::string& name() const { return name_; }

  // RunWhileServing runs `fn` on a short-lived thread (joined before it
  // returns) while this thread keeps serving the inbox and its deadlines as
  // if disconnected (ProcessInbox(nullptr)): for synchronous broker round
  // trips on a live connection (a channel renewed after a nack or a channel
  // error). `fn` may use `conn` and const state only; this thread touches
  // neither meanwhile. A Stop shuts `conn`'s socket down after
  // kStopConnectGrace, so `fn` cannot hold a stop for its RPC timeouts.
  absl::Status RunWhileServing(Connection& conn, const std::function<absl::Status()>& fn);

 private:
  void Run();
  // Pump runs one connection until it dies (returns why) or the loop has
  // drained after a stop (returns OK).
  absl::Status Pump(Connection& conn);
  void SetState(LinkState s);
  void SetLastError(const absl::Status& why);
  // Handles channel-0 methods: connection.close, connection.(un)blocked.
  absl::Status OnConnectionMethod(Connection& conn, const amqp_method_t& method);
  // Sleeps up to `d`, still serving the inbox (with no connection).
  void WaitDisconnected(std::chrono::milliseconds d);
  // Connection::Open on a short-lived connector thread (joined), while this
  // thread keeps serving the inbox and its deadlines with no connection:
  // TCP connect and login can take up to 2 x connect_timeout (a frozen broker
  // accepts the TCP connection and never answers the login).
  // PrepareConnection runs there too, after the login.
  absl::StatusOr<std::unique_ptr<Connection>> OpenWhileServing(const std::string& uri,
                                                               const ConnectOptions& options);
  // ServeUntil: this thread's side of OpenWhileServing and RunWhileServing:
  // ProcessInbox(nullptr) until `done`.
  void ServeUntil(const std::atomic<bool>& done);

  const std::string name_;
  util::ThreadWatch watch_;
  const config::Broker broker_;
  const std::function<void()> on_state_;
  const std::function<void(const absl::Status&)> on_fatal_;
  std::atomic<LinkState> state_{LinkState::kConnecting};
  std::atomic<bool> stop_{false};
  std::atomic<bool> blocked_{false};
  std::atomic<int64_t> drain_ms_{0};
  mutable util::Mutex uri_mu_;
  std::string broker_uri_ ABSL_GUARDED_BY(uri_mu_);
  std::string last_error_ ABSL_GUARDED_BY(uri_mu_);
  std::thread thread_;
  // The socket of the connect in progress (from the TCP connect until
  // OnConnected returns), for Stop to shut down after kStopConnectGrace.
  ConnectAbort connect_abort_;
  util::Mutex run_mu_;
  util::CondVar run_ended_;
  bool run_ended_flag_ ABSL_GUARDED_BY(run_mu_) = false;
  // Loop thread: a connection was up before (metrics count reconnects).
  bool connected_before_ = false;
};

}  // namespace mqs::amqp
