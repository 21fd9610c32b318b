// libFuzzer harness for the gRPC edge's request handling (issue 14): random
// sequences of what a client can send on its streams, as raw bytes (parsed
// as the server parses them: malformed, non-UTF-8 strings, unknown fields,
// huge fields) and as well-formed requests with hostile values (open twice,
// no open, acks of id 0, multiple without an id, lists, retry delays on a
// business without retry, unknown businesses, control characters, batches
// over the limit), through the checks a stream applies before anything
// reaches an I/O thread (server/request_checks.h, amqp::ValidatePublish).
//
// Beside the sanitizers it checks the sequence rules (a stream's first
// accepted request is its open, and only that one; an accepted ack or nack
// names a delivery) and what a refused request tells the client: a status of
// INVALID_ARGUMENT whose message is valid UTF-8 with no control character,
// however hostile the bytes it quotes (the message reaches other languages'
// clients and our logs).
#include <fuzzer/FuzzedDataProvider.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "amqp/properties.h"
#include "config/config.h"
#include "server/publish_batch.h"
#include "server/request_checks.h"
#include "util/strings.h"
#include "util/utf8.h"

namespace {

using mqs::server::SubscribeStep;
using mqsidecar::v1::PublishBatch;
using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::SubscribeRequest;

[[noreturn]] void Violation(const char* what, const std::string& detail) {
  fprintf(stderr, "request_fuzz: %s: %s\n", what, mqs::util::ForLog(detail, 400).c_str());
  abort();
}

const mqs::config::Config& TestConfig() {
  static const mqs::config::Config config = [] {
    mqs::config::Config c;
    mqs::config::Consumer pay;
    pay.name = "usdt.transfer";
    pay.queue = "usdt.transfer.queue";
    pay.retry.delays = {std::chrono::seconds(1), std::chrono::seconds(10)};
    c.consumers.push_back(pay);
    mqs::config::Consumer plain;
    plain.name = "plain";
    plain.queue = "plain.queue";
    c.consumers.push_back(plain);
    mqs::config::Producer producer;
    producer.name = "usdt.transfer";
    producer.exchange = "usdt.transfer";
    c.producers.push_back(producer);
    c.limits.max_payload_bytes = 4096;
    c.limits.max_header_bytes = 1024;
    c.limits.max_prefetch = 500;
    c.limits.max_batch_messages = 8;
    return c;
  }();
  return config;
}

// A refused request's status, as the client would read it.
void CheckRefusal(const absl::Status& s) {
  if (s.ok()) return;
  const std::string message(s.message());
  if (s.code() != absl::StatusCode::kInvalidArgument) Violation("not INVALID_ARGUMENT", message);
  if (message.empty()) Violation("an empty status message", message);
  if (!mqs::util::IsValidUtf8(message)) Violation("a status message not UTF-8", message);
  if (mqs::util::HasControlChars(message)) Violation("a control character in a status", message);
}

grpc::ByteBuffer Raw(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// A string a client could send: empty, known, long, or with control
// characters and multi-byte UTF-8 near a cut (protobuf refuses non-UTF-8
// strings at parse time; the raw path covers those).
std::string Name(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0:
      return "usdt.transfer";
    case 1:
      return "plain";
    case 2:
      return "";
    case 3:
      return std::string(199, 'a') + "\xe2\x82\xac" + "\n\x7f";
    default:
      return mqs::util::ToValidUtf8(in.ConsumeRandomLengthString(300));
  }
}

class Stream {
 public:
  void Subscribe(const SubscribeRequest& request) {
    absl::StatusOr<SubscribeStep> step = mqs::server::CheckSubscribeRequest(request, opened_);
    if (!step.ok()) {
      CheckRefusal(step.status());
      return;
    }
    switch (*step) {
      case SubscribeStep::kOpen: {
        if (opened_ != nullptr) Violation("a second open accepted", request.DebugString());
        if (!request.has_open()) Violation("an open step without open", request.DebugString());
        absl::StatusOr<mqs::server::OpenPlan> plan =
            mqs::server::CheckOpen(request.open(), TestConfig());
        if (!plan.ok()) {
          CheckRefusal(plan.status());
          return;
        }
        if (plan->consumer == nullptr) Violation("an open plan without a business", "");
        if (plan->limits.max_messages == 0 || plan->limits.max_bytes == 0) {
          Violation("an open plan with an empty batch", request.DebugString());
        }
        opened_ = plan->consumer;
        return;
      }
      case SubscribeStep::kAck:
      case SubscribeStep::kNack: {
        if (opened_ == nullptr) Violation("a settle accepted before open", request.DebugString());
        const bool ack = *step == SubscribeStep::kAck;
        const uint64_t id = ack ? request.ack().delivery_id() : request.nack().delivery_id();
        const bool multiple = ack ? request.ack().multiple() : request.nack().multiple();
        const int listed =
            ack ? request.ack().delivery_ids_size() : request.nack().delivery_ids_size();
        if (id == 0 && (multiple || listed == 0)) {
          Violation("a settle naming no delivery accepted", request.DebugString());
        }
        if (!ack && request.nack().retry_after_ms() != 0 &&
            (!opened_->retry.enabled() || !request.nack().requeue())) {
          Violation("a delayed retry accepted where none can be", request.DebugString());
        }
        return;
      }
    }
  }

  void Publish(const PublishRequest& request) {
    const mqs::config::Config& config = TestConfig();
    if (config.FindProducer(request.business()) == nullptr) return;  // the service's first check
    CheckRefusal(mqs::amqp::ValidatePublish(request, config.limits));
  }

 private:
  const mqs::config::Consumer* opened_ = nullptr;
};

void FillSubscribe(FuzzedDataProvider& in, SubscribeRequest* r) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: {
      auto* open = r->mutable_open();
      open->set_business(Name(in));
      open->set_consumer_name(Name(in));
      open->set_prefetch(in.ConsumeIntegral<uint32_t>() % 1024);
      open->set_max_batch_messages(in.ConsumeIntegral<uint32_t>() % 1024);
      open->set_max_batch_bytes(in.ConsumeBool() ? in.ConsumeIntegral<uint32_t>() : 0);
      break;
    }
    case 1: {
      auto* ack = r->mutable_ack();
      ack->set_delivery_id(in.ConsumeIntegralInRange<uint64_t>(0, 4));
      ack->set_multiple(in.ConsumeBool());
      for (int i = in.ConsumeIntegralInRange(0, 3); i > 0; --i) {
        ack->add_delivery_ids(in.ConsumeIntegralInRange<uint64_t>(0, 4));
      }
      break;
    }
    case 2: {
      auto* nack = r->mutable_nack();
      nack->set_delivery_id(in.ConsumeIntegralInRange<uint64_t>(0, 4));
      nack->set_multiple(in.ConsumeBool());
      nack->set_requeue(in.ConsumeBool());
      nack->set_retry_after_ms(in.ConsumeBool() ? in.ConsumeIntegral<uint32_t>() : 0);
      for (int i = in.ConsumeIntegralInRange(0, 3); i > 0; --i) {
        nack->add_delivery_ids(in.ConsumeIntegralInRange<uint64_t>(0, 4));
      }
      break;
    }
    default:
      break;  // no kind set
  }
}

void FillPublish(FuzzedDataProvider& in, PublishRequest* r) {
  r->set_business(in.ConsumeBool() ? "usdt.transfer" : Name(in));
  r->set_routing_key(Name(in));
  r->set_payload(in.ConsumeRandomLengthString(5000));
  if (in.ConsumeBool()) r->set_message_id(Name(in));
  if (in.ConsumeBool()) r->set_correlation_id(Name(in));
  if (in.ConsumeBool()) r->set_content_type(Name(in));
  if (in.ConsumeBool()) r->set_reply_to(Name(in));
  for (int i = in.ConsumeIntegralInRange(0, 4); i > 0; --i) {
    static const char* const kNames[] = {"x-mq-sidecar-republished",
                                         "X-Delivery-Count",
                                         "CC",
                                         "bcc",
                                         "x-death",
                                         "tenant",
                                         "traceparent",
                                         ""};
    const std::string key = in.ConsumeBool() ? kNames[in.ConsumeIntegralInRange(0, 7)] : Name(in);
    (*r->mutable_headers())[key] = Name(in);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Stream subscribe_stream;
  Stream publish_stream;
  const uint32_t max_batch = TestConfig().limits.max_batch_messages;
  for (uint64_t n = 1; in.remaining_bytes() > 0 && n <= 64; ++n) {
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0: {  // raw bytes on a Subscribe stream
        grpc::ByteBuffer raw = Raw(in.ConsumeRandomLengthString(512));
        SubscribeRequest r;
        if (absl::Status s = mqs::server::ParseRequest(&raw, &r, n); !s.ok()) {
          CheckRefusal(s);
          return 0;  // the stream ends
        }
        subscribe_stream.Subscribe(r);
        break;
      }
      case 1: {  // a well-formed Subscribe request
        SubscribeRequest r;
        FillSubscribe(in, &r);
        // Through the wire format, as the server reads it.
        grpc::ByteBuffer raw = Raw(r.SerializeAsString());
        SubscribeRequest parsed;
        if (!mqs::server::ParseRequest(&raw, &parsed, n).ok()) {
          Violation("a serialised request did not parse", r.DebugString());
        }
        subscribe_stream.Subscribe(parsed);
        break;
      }
      case 2: {  // raw bytes on a PublishBatchStream
        grpc::ByteBuffer raw = Raw(in.ConsumeRandomLengthString(2048));
        PublishBatch batch;
        if (absl::Status s = mqs::server::ParseRequest(&raw, &batch, n); !s.ok()) {
          CheckRefusal(s);
          return 0;
        }
        if (absl::Status s = mqs::server::CheckBatchSize(static_cast<size_t>(batch.messages_size()),
                                                         max_batch, n);
            !s.ok()) {
          CheckRefusal(s);
          return 0;
        }
        for (const PublishRequest& m : batch.messages()) publish_stream.Publish(m);
        break;
      }
      default: {  // a well-formed batch with hostile values
        PublishBatch batch;
        for (int i = in.ConsumeIntegralInRange(1, 10); i > 0; --i) {
          FillPublish(in, batch.add_messages());
        }
        if (absl::Status s = mqs::server::CheckBatchSize(static_cast<size_t>(batch.messages_size()),
                                                         max_batch, n);
            !s.ok()) {
          CheckRefusal(s);
          break;
        }
        for (const PublishRequest& m : batch.messages()) publish_stream.Publish(m);
        break;
      }
    }
  }
  return 0;
}
