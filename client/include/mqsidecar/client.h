// mqsidecar::Client: a C++ client for the mq-sidecar daemon's gRPC API
// (proto/mqsidecar/v1/pubsub.proto, docs/clients.md).
//
// Nothing on the message path throws: publishes answer with a grpc::Status
// and a PublishResult, subscription handlers answer with an Outcome. Every
// thread the library starts is joined by Close()/Stop() (or the destructor).
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "mqsidecar/v1/pubsub.pb.h"

namespace grpc {
class Channel;
class ChannelCredentials;
class ClientContext;
}  // namespace grpc

namespace mqsidecar {

// ErrorCallback receives what the library cannot return to a caller: a
// handler that threw, a subscription stream that ended and is being resumed.
// Called from the library's threads; it must not block for long. Unset: the
// text goes to stderr.
using ErrorCallback = std::function<void(std::string_view)>;

// ClientOptions: how to reach and authenticate to the sidecar.
struct ClientOptions {
  // With the sidecar's `access` section: a client's bearer token, sent as
  // `authorization: Bearer <token>` metadata on every call (docs/security.md).
  // Use it over a unix socket or TLS only: plaintext TCP carries it in clear.
  std::string token = {};
  // null: plaintext (unix sockets, a loopback listener with tcp.insecure);
  // grpc::SslCredentials(...) for a TLS listener.
  std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr;
  // The channel's reconnect backoff after the sidecar went away (gRPC's
  // default grows to 120 s, far too slow to notice a restarted sidecar).
  std::chrono::milliseconds max_reconnect_backoff{2000};
  ErrorCallback on_error = nullptr;
  // Unary calls (Publish, GetTopology) wait, up to their timeout, for a
  // sidecar that is not reachable yet (starting, restarting) instead of
  // failing at once with UNAVAILABLE: gRPC's wait_for_ready.
  bool wait_for_ready = false;
};

// ReadTokenFile: the bearer token on the first line of `path` (a trailing
// '\r' dropped), as the sidecar reads access.<client>.token_file, for
// ClientOptions.token. A file keeps the token out of command lines and
// environments other local users can read. NOT_FOUND when the file cannot
// be read, INVALID_ARGUMENT when its first line is empty or holds spaces or
// control characters (they would not survive the authorization header); the
// message names the file.
grpc::Status ReadTokenFile(const std::string& path, std::string* token);

// PublishOutcome: the answer to a unary Publish.
struct PublishOutcome {
  grpc::Status status;       // the call's status (INVALID_ARGUMENT, UNAVAILABLE, ...)
  v1::PublishResult result;  // valid when status.ok()
  // The broker has the message.
  bool confirmed() const { return status.ok() && result.status() == v1::PublishResult::CONFIRMED; }
  // "CONFIRMED", "UNROUTABLE: <error>", "UNAVAILABLE: <message>", ...
  std::string ToString() const;
};

// Called once per message with its result (PublishResult.sequence is the
// request's own), on the publisher's reader thread: keep it short, and do not
// call the publisher from it (Publish with a full window would wait for
// itself; Close and the destructor must not run on the reader).
using PublishCallback = std::function<void(const v1::PublishResult&)>;

struct PublisherOptions {
  // Messages in flight (sent, result not yet in) at most; Publish blocks while
  // the window is full. Keep it at or below the sidecar's publish.window (1,024).
  size_t window = 256;
  // Messages queued while another caller writes go out together, as one
  // PublishBatch of at most this many messages and about this many bytes (a
  // larger message goes alone). Keep max_batch_messages at or below the
  // sidecar's limits.max_batch_messages (1,000), or the stream ends
  // INVALID_ARGUMENT.
  size_t max_batch_messages = 256;
  size_t max_batch_bytes = size_t{1} << 20;
};

// Publisher: messages pipelined over one PublishBatchStream, a window of them
// in flight. Thread-safe. A Publish call that finds nothing being written
// writes its message at once (nothing waits for a batch to fill); messages
// queued while a write is in flight go out together in the next PublishBatch,
// written by the publisher's writer thread (a Publish call writes one batch at
// most). Results arrive on the publisher's reader thread, in the order the
// broker settles them. When the stream breaks (the sidecar went
// away), every message in flight is answered UNCONFIRMED (it may or may not be
// queued: retrying may duplicate it, consumers deduplicate by message_id), and
// the next Publish opens a new stream.
class Publisher {
 public:
  ~Publisher();  // Close(5 s)
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Sends `request` (blocking while the window is full); `done` runs once with
  // its result. After Close, `done` runs at once with FAILED.
  void Publish(v1::PublishRequest request, PublishCallback done);
  // The same, with a future instead of a callback.
  std::future<v1::PublishResult> Publish(v1::PublishRequest request);
  // Waits until every message sent so far has its result; false on timeout.
  bool Flush(std::chrono::milliseconds timeout);
  // Flushes, half-closes the stream and joins the reader; messages still
  // without a result after `timeout` are answered UNCONFIRMED.
  void Close(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Messages sent whose result has not come yet.
  size_t in_flight() const;

  struct Stats {
    uint64_t messages = 0;  // written to the sidecar
    uint64_t batches = 0;   // PublishBatch requests they went in
  };
  Stats stats() const;

  struct Impl;

 private:
  friend class Client;
  explicit Publisher(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Outcome: what a subscription handler decided about a delivery; the library
// sends it to the sidecar.
struct Outcome {
  enum class Kind { kAck, kRetry, kReject };
  Kind kind = Kind::kAck;
  uint32_t retry_after_ms = 0;

  // Done: the message leaves the queue.
  static Outcome Ack() { return {Kind::kAck, 0}; }
  // Try again later: nack with requeue. On a business with `retry` the message
  // comes back after the next configured delay, or after `after` when it is
  // not zero (a non-zero `after` on a business without `retry` is refused by
  // the sidecar: the stream ends and its unsettled messages come back);
  // without `retry` it is requeued at once.
  static Outcome Retry(std::chrono::milliseconds after = std::chrono::milliseconds(0)) {
    return {Kind::kRetry, static_cast<uint32_t>(after.count())};
  }
  // Never: nack without requeue, into the dead-letter queue <queue>.dead.
  static Outcome Reject() { return {Kind::kReject, 0}; }
};

// A subscription handler. It runs on one of the subscription's worker threads
// (which Stop joins: do not call Stop from a handler).
// An exception thrown from it is caught, reported to on_error and treated as
// Outcome::Retry() (the message comes back; see docs/clients.md).
using Handler = std::function<Outcome(const v1::Delivery&)>;

struct SubscribeOptions {
  uint32_t prefetch = 0;  // unacked deliveries at most; 0: the business's configured prefetch
  // Handler threads. Deliveries wait in a queue bounded by prefetch; with one
  // thread they are handled in delivery order.
  size_t concurrency = 1;
  std::string consumer_name = "mqsidecar-client";
  // Resuming after the stream ended (sidecar restart, network): the wait
  // before the next attempt doubles from min to max.
  std::chrono::milliseconds min_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  // Ids per ack/nack request at most.
  size_t max_settle_ids = 1000;
};

// Subscription: a SubscribeBatch stream that resumes by itself (with
// backoff) until Stop(), handlers on a bounded pool of threads, their outcomes
// settled in batches (ack lists, `multiple` where every lower delivery is
// settled too).
class Subscription {
 public:
  ~Subscription();  // Stop()
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Stops taking deliveries, lets the handlers running finish, sends their
  // outcomes, half-closes the stream (cancelled after `grace`) and joins every
  // thread. Deliveries received but not yet handled go back to the queue.
  void Stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

  struct Stats {
    uint64_t streams = 0;  // Subscribe streams opened (1 + resumes)
    uint64_t deliveries = 0;
    uint64_t acked = 0;
    uint64_t retried = 0;
    uint64_t rejected = 0;
    uint64_t handler_errors = 0;   // handlers that threw
    uint64_t settle_requests = 0;  // ack/nack requests written
    uint64_t multiple_acks = 0;    // of them, acks with `multiple`
    grpc::Status last_status;      // how the last stream ended
  };
  Stats stats() const;

  struct Impl;

 private:
  friend class Client;
  explicit Subscription(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Client: one gRPC channel to one sidecar. Cheap to share; publishers and
// subscriptions made from it keep the channel alive.
class Client {
 public:
  // target: "unix:///run/mq-sidecar/mq-sidecar.sock" or "host:port". The
  // channel connects lazily: a sidecar that is not up yet is not an error here.
  explicit Client(const std::string& target, ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // One message, answered once the broker confirmed, returned or refused it,
  // or the deadline passed (the sidecar caps it by publish.wait_timeout).
  PublishOutcome Publish(const v1::PublishRequest& request,
                         std::chrono::milliseconds timeout = std::chrono::seconds(30));
  std::unique_ptr<Publisher> NewPublisher(PublisherOptions options = {});
  // Starts consuming `business` at once; see Subscription.
  std::unique_ptr<Subscription> Subscribe(const std::string& business, Handler handler,
                                          SubscribeOptions options = {});
  // GetTopology, e.g. to wait until the sidecar is up and connected.
  grpc::Status GetTopology(v1::Topology* topology,
                           std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // For calls the library does not wrap (SendTask, ListDeadLetters, ...):
  // make a stub on channel() and let PrepareContext add the token.
  std::shared_ptr<grpc::Channel> channel() const;
  void PrepareContext(grpc::ClientContext* context) const;

  struct Core;

 private:
  std::shared_ptr<Core> core_;
};

// CodeName: a gRPC status code's name ("UNAVAILABLE", "INVALID_ARGUMENT",
// ...; gRPC 1.51 has no public name table), for messages and logs.
std::string CodeName(grpc::StatusCode code);

}  // namespace mqsidecar
