// Connection: one AMQP connection, owned by exactly one thread.
//
// rabbitmq-c is synchronous and not thread-safe; this wrapper only adds RAII,
// login with the capabilities 0.11 forgets to advertise, conversion of
// rabbitmq-c replies into absl::Status with the most specific code, and the
// non-blocking frame pump the I/O loops are built on.
#pragma once

#include <amqp.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "util/mutex.h"

namespace mqs::amqp {

// Bound of the connection.close handshake when a connection is dropped.
inline constexpr std::chrono::milliseconds kCloseBound{1000};

// TLS settings for amqps:// URIs (config broker.tls); amqp:// ignores them.
struct TlsOptions {
  std::string ca;  // CA bundle file; "": the system's
  std::string cert;
  std::string key;
  bool verify = true;  // peer certificate chain and host name
};

struct ConnectOptions {
  std::chrono::milliseconds heartbeat{std::chrono::seconds(30)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(5)};
  // Deadline of each synchronous AMQP RPC (declare, qos, consume, close):
  // a broker that stops answering becomes an error, not a hang.
  std::chrono::milliseconds rpc_timeout{std::chrono::seconds(10)};
  std::string connection_name;  // shown in the broker's management UI
  TlsOptions tls;
};

// SocketTimeouts: kernel-level dead-peer detection set on every AMQP socket
// (docs/configuration.md, broker.heartbeat). Keepalive probes an idle
// connection, so a broker that vanished without a FIN/RST (power loss, a cut
// link, a dropped NAT entry) is found even with heartbeats off; the user
// timeout fails a write that stays unacknowledged, the case heartbeats alone
// catch only after the send buffer fills. With TCP_USER_TIMEOUT set, Linux
// ends a keepalive-probed connection when the user timeout passes rather
// than after keepalive_count probes, so the two are chosen to agree.
struct SocketTimeouts {
  int keepalive_idle_s = 10;     // TCP_KEEPIDLE: silence before the first probe
  int keepalive_interval_s = 5;  // TCP_KEEPINTVL
  int keepalive_count = 3;       // TCP_KEEPCNT: unanswered probes before the end
  int user_timeout_ms = 30000;   // TCP_USER_TIMEOUT
};

// SocketTimeoutsFor: the timeouts for a connection with this (negotiated)
// heartbeat. The user timeout is 2 x heartbeat, the same silence after which
// the I/O loop presumes the broker dead; with heartbeats off, 30 s (idle 10 s
// + 3 probes 5 s apart, plus a margin).
SocketTimeouts SocketTimeoutsFor(std::chrono::milliseconds heartbeat);

// ApplySocketTimeouts sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL,
// TCP_KEEPCNT and TCP_USER_TIMEOUT on the TCP socket `fd`.
absl::Status ApplySocketTimeouts(int fd, const SocketTimeouts& timeouts);

// ConnectAbort: lets another thread end a connect in progress (TCP connect
// done, then the login and set-up round trips, which a frozen broker never
// answers) by shutting its socket down, so a stop need not wait for the
// connect or RPC timeout. Thread-safe. The socket is registered (Arm) only
// while it is open and unregistered (Disarm) before it is closed, so Abort
// never reaches a descriptor number the process has reused.
class ConnectAbort {
 public:
  // Arm: `fd` is the connecting socket; after an Abort it is shut down at once.
  void Arm(int fd);
  void Disarm();
  // Abort: shuts the armed socket down (the blocked call fails at once) and
  // any socket armed later.
  void Abort();
  bool aborted() const;

 private:
  mutable util::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
};

// WriteGuard: a deadline for a write that rabbitmq-c makes with none of its
// own. Over TLS, amqp_basic_publish ends in SSL_write and, when the socket is
// full, a poll for POLLOUT without a timeout: a broker that stops reading (a
// frozen node still ACKs into a zero window) holds the writing thread until
// it wakes, and with it the thread's heartbeat checks and every deadline it
// serves. The writer arms the guard around the call; another thread calls
// Expire periodically, which shuts the socket down once the deadline has
// passed, so the write fails and the connection counts as lost (as the
// plaintext write's own 2 x heartbeat timeout does). Thread-safe; like
// ConnectAbort, a socket is armed only while it is open.
class WriteGuard {
 public:
  void Arm(int fd, std::chrono::steady_clock::time_point deadline);
  void Disarm();
  // Expire: true if an armed write was past its deadline at `now` (its socket
  // is then shut down, once).
  bool Expire(std::chrono::steady_clock::time_point now);

 private:
  util::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::chrono::steady_clock::time_point deadline_ ABSL_GUARDED_BY(mu_);
};

class Connection {
 public:
  // Open connects to `uri` (amqp:// or amqps://user:pass@host:port/vhost),
  // logs in and returns the connection; Unavailable when the broker cannot be
  // reached or the TLS handshake fails (the message says why), PermissionDenied
  // when the login is refused.
  // `abort` (optional): the socket is armed on it from the TCP connect until
  // Open returns (the TLS handshake, inside the connect, is not).
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const std::string& uri,
                                                          const ConnectOptions& options,
                                                          ConnectAbort* abort = nullptr);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  amqp_connection_state_t state() { return state_; }
  int fd() const;
  int channel_max() const;
  int heartbeat_seconds() const;
  // SetRpcTimeout: the deadline of each synchronous RPC from now on.
  void SetRpcTimeout(std::chrono::milliseconds timeout);

  absl::Status OpenChannel(amqp_channel_t channel);
  // CloseChannel closes a channel we opened; the broker requeues its unacked
  // deliveries. Frames that arrive for it meanwhile are queued by rabbitmq-c.
  absl::Status CloseChannel(amqp_channel_t channel);

  // RpcStatus turns the reply of the last synchronous call into a status. On
  // a channel.close from the broker it answers close-ok, so the channel number
  // can be reopened; on connection.close it marks the connection dead.
  absl::Status RpcStatus(std::string_view what, amqp_channel_t channel);
  absl::Status ReplyStatus(const amqp_rpc_reply_t& reply, std::string_view what,
                           amqp_channel_t channel);

  // HasBuffered: rabbitmq-c holds frames or bytes not yet handed out, so the
  // caller must not sleep in poll() before pumping them.
  bool HasBuffered();
  // NextFrame returns true and fills `frame` when one is available without
  // blocking, false when none is; an error when the connection is dead
  // (socket error, heartbeat timeout). It also sends due heartbeats.
  absl::StatusOr<bool> NextFrame(amqp_frame_t* frame);
  // ReadContent reads the header and body frames following a basic.deliver
  // or basic.return on `channel`.
  absl::Status ReadContent(amqp_channel_t channel, amqp_message_t* message);

  // CloseWithin closes the connection without trusting the broker to answer:
  // it sends connection.close (only if the socket takes it without blocking),
  // waits up to `bound` for close-ok and then gives up, so a frozen broker
  // costs `bound`, not the RPC timeout. Dropping the socket unanswered is safe:
  // the broker requeues unacked deliveries, and publishes still unconfirmed
  // are answered UNCONFIRMED by their owner. The connection is dead afterwards.
  // True when the broker answered the close.
  bool CloseWithin(std::chrono::milliseconds bound);

  // Answers a broker-initiated channel.close / connection.close.
  void SendChannelCloseOk(amqp_channel_t channel);
  void SendConnectionCloseOk();

  bool dead() const { return dead_; }
  void MarkDead() { dead_ = true; }
  // amqps: bytes must go through rabbitmq-c (OpenSSL), never straight to fd().
  bool tls() const { return tls_; }
  // The negotiated maximum frame size (bodies are split to fit).
  uint32_t frame_max() const;

 private:
  explicit Connection(amqp_connection_state_t state) : state_(state) {}
  amqp_connection_state_t state_;
  bool logged_in_ = false;
  bool dead_ = false;
  bool tls_ = false;
};

// StatusFromLibrary maps a rabbitmq-c status code (AMQP_STATUS_*) to a status.
absl::Status StatusFromLibrary(int code, std::string_view what);

// AmqpText views AMQP bytes as text.
inline std::string_view AmqpText(amqp_bytes_t b) {
  return b.len == 0 ? std::string_view()
                    : std::string_view(static_cast<const char*>(b.bytes), b.len);
}
// AmqpBytes views text as AMQP bytes; the text must outlive the call it is passed to.
inline amqp_bytes_t AmqpBytes(std::string_view s) {
  amqp_bytes_t b;
  b.len = s.size();
  b.bytes = const_cast<char*>(s.data());
  return b;
}

}  // namespace mqs::amqp
