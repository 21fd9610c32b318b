// PubSubService: the gRPC face of the sidecar (mqsidecar.v1.PubSub).
//
// It validates requests against the config, hands work to the publisher and
// consumer threads, and maps outcomes to the most specific gRPC status. Its
// handlers never block: every hand-off is a queue push, every answer comes
// back as a callback. Every method runs on gRPC's async API, on one thread of
// ours (async_call.h says why): unary_calls.cc, publish_stream.cc,
// subscribe_stream.cc.
//
// The streaming methods are registered raw (grpc::ByteBuffer): the calls
// parse each request themselves, because gRPC's typed read reports a request
// that cannot be parsed exactly as a half-close (ok=false), and the stream
// would end OK with the request unanswered. They end INVALID_ARGUMENT instead.
#pragma once

#include <atomic>
#include <chrono>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "amqp/consumer.h"
#include "amqp/dead_letters.h"
#include "amqp/publisher.h"
#include "config/config.h"
#include "config/reload.h"
#include "config/topology_plan.h"
#include "control/control_plane.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"
#include "server/access_policy.h"
#include "server/async_call.h"
#include "server/connection_table.h"
#include "server/request_checks.h"
#include "util/mutex.h"
#include "util/trace_context.h"

namespace mqs::server {

// ToGrpc maps an absl status to a gRPC status with the same code and message.
grpc::Status ToGrpc(const absl::Status& s);

// The generated service with the unary methods typed, PublishStream,
// PublishBatchStream, Subscribe and SubscribeBatch raw.
using PubSubAsyncBase = mqsidecar::v1::PubSub::WithAsyncMethod_Publish<
    mqsidecar::v1::PubSub::WithAsyncMethod_GetTopology<
        mqsidecar::v1::PubSub::WithAsyncMethod_SendTask<
            mqsidecar::v1::PubSub::WithAsyncMethod_CompleteTask<
                mqsidecar::v1::PubSub::WithAsyncMethod_ReportStatus<
                    mqsidecar::v1::PubSub::WithAsyncMethod_ListServers<
                        mqsidecar::v1::PubSub::WithAsyncMethod_ListDeadLetters<
                            mqsidecar::v1::PubSub::WithAsyncMethod_ReplayDeadLetters<
                                mqsidecar::v1::PubSub::WithAsyncMethod_Reload<
                                    mqsidecar::v1::PubSub::WithRawMethod_PublishStream<
                                        mqsidecar::v1::PubSub::WithRawMethod_PublishBatchStream<
                                            mqsidecar::v1::PubSub::WithRawMethod_Subscribe<
                                                mqsidecar::v1::PubSub::WithRawMethod_SubscribeBatch<
                                                    mqsidecar::v1::PubSub::Service>>>>>>>>>>>>>;

// Reply: how a control-plane handler answers its call, exactly once, from
// any thread.
template <class Response>
using Reply = std::function<void(absl::StatusOr<Response>)>;

// Serialize turns a response into the bytes a raw stream writes.
grpc::ByteBuffer Serialize(const google::protobuf::Message& message);

// ReloadHook: runs one reload (what SIGHUP does) and returns its entry;
// nullopt when the daemon was not started from a config file.
using ReloadHook = std::function<std::optional<config::ReloadLog::Entry>()>;

// FillReload: a reload's entry as the API shows it.
void FillReload(const config::ReloadLog::Entry& entry, mqsidecar::v1::Topology::Reload* out);

class PubSubService final : public PubSubAsyncBase, public AsyncService {
 public:
  PubSubService(const config::Config& config, const config::TopologyPlan& plan,
                amqp::Publisher& publisher, amqp::Consumer& consumer,
                control::ControlPlane& control, amqp::DeadLetterWorker* dead_letters = nullptr,
                const config::ReloadLog* reloads = nullptr, ReloadHook reload = nullptr);

  // PreparePublish resolves the business and checks the request; the job's
  // `done` is left for the caller to set. InvalidArgument names what is wrong.
  // `deadline` bounds how long it may wait for the broker (capped by
  // publish.wait_timeout). `trace` (the caller's metadata, TraceOf) goes into
  // the headers of a request that has no traceparent of its own; the
  // request's own trace headers are checked (util/trace_context.h).
  absl::StatusOr<amqp::PublishJob> PreparePublish(mqsidecar::v1::PublishRequest&& request,
                                                  std::chrono::system_clock::time_point deadline,
                                                  const util::TraceContext& trace = {}) const;
  // TraceOf: the W3C trace context of the caller's gRPC metadata; an invalid
  // one is dropped with a rate-limited log line.
  static util::TraceContext TraceOf(const grpc::ServerContext& ctx);
  // JobFor: a job for `request` (already validated) to `exchange`, with the
  // deadline derived as PreparePublish does.
  amqp::PublishJob JobFor(mqsidecar::v1::PublishRequest&& request, std::string exchange,
                          std::chrono::system_clock::time_point deadline) const;

  // The control plane's methods (control_calls.cc). Each answers through
  // `reply`, never blocking the calling thread.
  void HandleSendTask(mqsidecar::v1::SendTaskRequest&& request,
                      std::chrono::system_clock::time_point deadline,
                      Reply<mqsidecar::v1::SendTaskResponse> reply);
  void HandleCompleteTask(mqsidecar::v1::CompleteTaskRequest&& request,
                          std::chrono::system_clock::time_point deadline,
                          Reply<mqsidecar::v1::PublishResult> reply);
  void HandleReportStatus(mqsidecar::v1::ReportStatusRequest&& request,
                          std::chrono::system_clock::time_point deadline,
                          Reply<mqsidecar::v1::ReportStatusResponse> reply);
  void HandleListServers(mqsidecar::v1::ListServersRequest&& request,
                         std::chrono::system_clock::time_point deadline,
                         Reply<mqsidecar::v1::ListServersResponse> reply);
  // Reload runs on the calling gRPC thread: reading and checking the file
  // takes milliseconds, and one reload at a time is the hook's to ensure.
  void HandleReload(mqsidecar::v1::ReloadRequest&& request,
                    std::chrono::system_clock::time_point deadline,
                    Reply<mqsidecar::v1::ReloadResponse> reply);

  // The dead-letter methods (dead_letter_calls.cc), served by the
  // DeadLetterWorker's thread; UNAVAILABLE without one. (Named apart from
  // the generated synchronous methods, which they would hide.)
  void ServeListDeadLetters(mqsidecar::v1::ListDeadLettersRequest&& request,
                            std::chrono::system_clock::time_point deadline,
                            Reply<mqsidecar::v1::ListDeadLettersResponse> reply);
  void ServeReplayDeadLetters(mqsidecar::v1::ReplayDeadLettersRequest&& request,
                              std::chrono::system_clock::time_point deadline,
                              Reply<mqsidecar::v1::ReplayDeadLettersResponse> reply);

  // Drain: shutdown has begun. Open PublishStreams stop reading, answer what
  // they hold and end; Subscribe streams are drained by the consumer.
  void Drain();
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  // Drainable: a stream that must hear about Drain(). Registered for its life.
  class Drainable {
   public:
    virtual ~Drainable() = default;
    virtual void OnDrain() = 0;
  };
  void Register(Drainable* d);
  void Unregister(Drainable* d);

  // calls: every call this service serves counts from its acceptance until
  // it deletes itself (CallBase). Shutdown waits on them: gRPC's own
  // Server::Shutdown waits out its whole deadline while any client is merely
  // connected, even with no call open.
  CallCount& calls() { return calls_; }
  // WaitIdle returns true once no call is open, false at `deadline`.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline) override;

  // StartAccepting posts one request for each streaming method; each call,
  // once accepted, posts the next (AcceptPublishStream, AcceptSubscribe, in
  // publish_stream.cc and subscribe_stream.cc, which serves SubscribeBatch too).
  void StartAccepting(grpc::ServerCompletionQueue* cq, OpGate* gate) override;
  void StopAccepting() override;
  void AcceptPublish();
  void AcceptGetTopology();
  void AcceptPublishStream();
  void AcceptPublishBatchStream();
  void AcceptSubscribe();
  void AcceptSubscribeBatch();
  void AcceptControl();      // SendTask, CompleteTask, ReportStatus, ListServers, Reload
  void AcceptDeadLetters();  // ListDeadLetters, ReplayDeadLetters
  // AcceptControlMethod runs `post` with the queue and gate, unless accepting
  // has stopped: how each control call posts the next of its method.
  void AcceptControlMethod(const std::function<void(grpc::ServerCompletionQueue*, OpGate*)>& post);

  // FillTopology: what GetTopology answers before the queue counts, which
  // come from the broker (consumer().Inspect).
  void FillTopology(mqsidecar::v1::Topology* topology) const;

  // Access (access_policy.h, access_edge.cc). CallerOf reads who made a
  // call; Authorize answers OK, or UNAUTHENTICATED / PERMISSION_DENIED,
  // logged with the client's name (never a token). Without `access` every
  // call is allowed and neither reads anything.
  Caller CallerOf(const grpc::ServerContext& ctx) const;
  absl::Status Authorize(const Caller& caller, Rpc rpc, std::string_view business) const;
  absl::Status Authorize(const grpc::ServerContext& ctx, Rpc rpc, std::string_view business) const;
  // The control and dead-letter methods, each on the business it uses.
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::SendTaskRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::CompleteTaskRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::ReportStatusRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::ListServersRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::ListDeadLettersRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::ReplayDeadLettersRequest& r) const;
  absl::Status AuthorizeRequest(const grpc::ServerContext& ctx,
                                const mqsidecar::v1::ReloadRequest& r) const;

  // DefaultPrefetch: a Subscribe's prefetch when open.prefetch is 0: the
  // configured one, or the one the last reload that changed it applied.
  uint32_t DefaultPrefetch(const config::Consumer& consumer) const {
    return reloads_ != nullptr ? reloads_->Prefetch(consumer) : consumer.prefetch;
  }
  // ForNewStream: the business a Subscribe opened now runs with: the
  // configured one, or its copy with the retry a reload applied.
  const config::Consumer* ForNewStream(const config::Consumer& consumer) const {
    return reloads_ != nullptr ? reloads_->ForNewStream(consumer) : &consumer;
  }

  // OpenStream: counts a PublishStream, PublishBatchStream, Subscribe or
  // SubscribeBatch against its connection for as long as the call holds the
  // slot; RESOURCE_EXHAUSTED naming limits.max_streams_per_connection when
  // the connection holds that many already.
  absl::StatusOr<ConnectionTable::StreamSlot> OpenStream(const grpc::ServerContext& ctx) {
    return connections_.OpenStream(ctx.peer());
  }
  // The daemon's connections, recorded by GrpcServer's unix acceptor.
  ConnectionTable* connections() { return &connections_; }

  const config::Config& config() const { return config_; }
  amqp::Publisher& publisher() { return publisher_; }
  amqp::Consumer& consumer() { return consumer_; }
  control::ControlPlane& control() { return control_; }

 private:
  const config::Config& config_;
  const config::TopologyPlan& plan_;
  amqp::Publisher& publisher_;
  amqp::Consumer& consumer_;
  control::ControlPlane& control_;
  amqp::DeadLetterWorker* const dead_letters_;
  const config::ReloadLog* const reloads_;  // may be null
  const ReloadHook reload_;                 // may be empty: Reload is FAILED_PRECONDITION
  std::unique_ptr<AccessPolicy> access_;    // null without `access`
  ConnectionTable connections_;
  std::string producer_names_;  // for error messages
  std::string consumer_names_;
  std::atomic<bool> draining_{false};
  util::Mutex drainables_mu_;
  std::set<Drainable*> drainables_ ABSL_GUARDED_BY(drainables_mu_);
  CallCount calls_;
  util::Mutex accept_mu_;
  grpc::ServerCompletionQueue* cq_ ABSL_GUARDED_BY(accept_mu_) = nullptr;
  OpGate* gate_ ABSL_GUARDED_BY(accept_mu_) = nullptr;
};

}  // namespace mqs::server
