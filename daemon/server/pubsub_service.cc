#include "server/pubsub_service.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_join.h"
#include "amqp/properties.h"
#include "spdlog/spdlog.h"
#include "util/log_limiter.h"
#include "util/message_id.h"
#include "util/strings.h"

namespace mqs::server {

using mqsidecar::v1::PublishRequest;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

PubSubService::PubSubService(const config::Config& config, const config::TopologyPlan& plan,
                             amqp::Publisher& publisher, amqp::Consumer& consumer,
                             control::ControlPlane& control, amqp::DeadLetterWorker* dead_letters,
                             const config::ReloadLog* reloads, ReloadHook reload)
    : config_(config),
      plan_(plan),
      publisher_(publisher),
      consumer_(consumer),
      control_(control),
      dead_letters_(dead_letters),
      reloads_(reloads),
      reload_(std::move(reload)),
      access_(config.access.enabled ? std::make_unique<AccessPolicy>(config.access) : nullptr),
      connections_(config.limits.max_streams_per_connection) {
  std::vector<std::string> p, c;
  for (const auto& x : config.producers) p.push_back(x.name);
  for (const auto& x : config.consumers) c.push_back(x.name);
  producer_names_ = p.empty() ? "none" : absl::StrJoin(p, ", ");
  consumer_names_ = c.empty() ? "none" : absl::StrJoin(c, ", ");
}

grpc::ByteBuffer Serialize(const google::protobuf::Message& message) {
  grpc::ByteBuffer out;
  bool own = false;
  // Fails only for a message over 2 GiB, far above the send limit.
  (void)grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, &out,
                                                                                   &own);
  return out;
}

void PubSubService::Register(Drainable* d) {
  util::MutexLock lock(&drainables_mu_);
  drainables_.insert(d);
}

void PubSubService::Unregister(Drainable* d) {
  util::MutexLock lock(&drainables_mu_);
  drainables_.erase(d);
}

bool PubSubService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  return calls_.WaitZero(deadline);
}

void PubSubService::Drain() {
  draining_.store(true, std::memory_order_release);
  util::MutexLock lock(&drainables_mu_);
  for (Drainable* d : drainables_) d->OnDrain();
}

absl::StatusOr<amqp::PublishJob> PubSubService::PreparePublish(
    PublishRequest&& request, std::chrono::system_clock::time_point deadline,
    const util::TraceContext& trace) const {
  const config::Producer* producer = config_.FindProducer(request.business());
  if (producer == nullptr) {
    return absl::InvalidArgumentError(util::StrCat("unknown business '",
                                                   util::ForLog(request.business()),
                                                   "'; configured producers: ", producer_names_));
  }
  if (absl::Status s = amqp::ValidatePublish(request, config_.limits); !s.ok()) return s;
  if (absl::Status s = util::ApplyTrace(trace, request.mutable_headers()); !s.ok()) return s;
  return JobFor(std::move(request), producer->exchange, deadline);
}

util::TraceContext PubSubService::TraceOf(const grpc::ServerContext& ctx) {
  const auto& metadata = ctx.client_metadata();
  // Several values of one key are joined with commas, as HTTP does: right
  // for tracestate (the W3C allows it split), and never a valid traceparent.
  auto value = [&](std::string_view key) -> std::optional<std::string> {
    std::optional<std::string> joined;
    const auto [first, last] = metadata.equal_range(grpc::string_ref(key.data(), key.size()));
    for (auto it = first; it != last; ++it) {
      if (joined) joined->push_back(',');
      joined = joined.value_or("").append(it->second.data(), it->second.size());
    }
    return joined;
  };
  const std::optional<std::string> parent = value(util::kTraceparentHeader);
  if (!parent) return {};
  std::string dropped;
  util::TraceContext trace =
      util::TraceFromMetadata(*parent, value(util::kTracestateHeader), &dropped);
  if (!dropped.empty()) {
    static util::LogLimiter limiter(10, std::chrono::seconds(10));
    if (const std::optional<uint64_t> held = limiter.Admit("")) {
      spdlog::warn(
          "trace context: {}{}", dropped,
          *held == 0 ? std::string() : util::StrCat(" (", *held, " similar lines held back)"));
    }
  }
  return trace;
}

amqp::PublishJob PubSubService::JobFor(PublishRequest&& request, std::string exchange,
                                       std::chrono::system_clock::time_point deadline) const {
  if (request.message_id().empty()) request.set_message_id(util::NewMessageId());
  amqp::PublishJob job;
  // The caller's deadline, as a steady-clock time, capped by wait_timeout.
  const auto sys_now = std::chrono::system_clock::now();
  const auto steady_now = std::chrono::steady_clock::now();
  // Answer a little before the caller's own deadline, so that it reads our
  // specific status rather than its generic DEADLINE_EXCEEDED.
  using Duration = std::chrono::system_clock::duration;
  Duration left = std::max(deadline - sys_now, Duration(0));
  if (deadline != std::chrono::system_clock::time_point::max()) {
    left -= std::min<Duration>(left / 10, std::chrono::milliseconds(100));
  }
  const auto wait = std::min<Duration>(config_.publish.wait_timeout, left);
  job.deadline = steady_now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait);
  job.exchange = std::move(exchange);
  job.request = std::move(request);
  return job;
}

void PubSubService::StartAccepting(grpc::ServerCompletionQueue* cq, OpGate* gate) {
  {
    util::MutexLock lock(&accept_mu_);
    cq_ = cq;
    gate_ = gate;
  }
  AcceptPublish();
  AcceptGetTopology();
  AcceptPublishStream();
  AcceptPublishBatchStream();
  AcceptSubscribe();
  AcceptSubscribeBatch();
  AcceptControl();
  AcceptDeadLetters();
}

void PubSubService::StopAccepting() {
  util::MutexLock lock(&accept_mu_);
  cq_ = nullptr;
}

void PubSubService::FillTopology(mqsidecar::v1::Topology* topology) const {
  for (const auto& p : config_.producers) {
    auto* b = topology->add_businesses();
    b->set_name(p.name);
    b->set_role("producer");
    b->set_exchange(p.exchange);
    b->set_handle(p.handle);
    b->set_written_as(p.written_as);
  }
  for (const auto& c : config_.consumers) {
    auto* b = topology->add_businesses();
    b->set_name(c.name);
    b->set_role("consumer");
    b->set_exchange(c.exchange);
    b->set_queue(c.queue);
    b->set_handle(c.handle);
    b->set_written_as(c.written_as);
    // The retry of streams opened now: a reload may have changed it.
    const config::Retry& retry = ForNewStream(c)->retry;
    if (retry.enabled()) {
      for (std::chrono::milliseconds d : retry.delays) {
        b->add_retry_delays_ms(static_cast<uint64_t>(d.count()));
      }
      b->set_max_attempts(retry.max_attempts);
    }
  }
  for (const auto& e : plan_.exchanges) {
    auto* x = topology->add_exchanges();
    x->set_name(e.name);
    x->set_type(e.type);
    x->set_alternate_exchange(e.alternate_exchange);
  }
  for (const auto& b : plan_.bindings) {
    auto* x = topology->add_bindings();
    x->set_exchange(b.exchange);
    x->set_queue(b.queue);
    x->set_binding_key(b.binding_key);
  }
  topology->set_broker_uri(publisher_.broker_uri());
  topology->set_connected(publisher_.connected() && consumer_.connected());
  topology->set_state(control::BrokerStateName(publisher_, consumer_));
  if (!publisher_.connected()) {
    topology->set_last_error(publisher_.last_error());
  } else if (!consumer_.connected()) {
    topology->set_last_error(consumer_.last_error());
  }
  *topology->mutable_identity() = control_.identity();
  if (reloads_ == nullptr) return;
  if (const std::optional<config::ReloadLog::Entry> last = reloads_->Last()) {
    FillReload(*last, topology->mutable_last_reload());
  }
}

void FillReload(const config::ReloadLog::Entry& entry, mqsidecar::v1::Topology::Reload* out) {
  out->set_at_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(entry.at.time_since_epoch()).count());
  out->set_result(std::string(config::ReloadResultName(entry.report.result)));
  for (const std::string& a : entry.report.applied) out->add_applied(a);
  for (const std::string& k : entry.report.kept) out->add_kept(k);
  out->set_error(entry.report.error);
}

}  // namespace mqs::server
