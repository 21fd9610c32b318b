// libFuzzer harness for Subscribe request handling (issue 14): random
// sequences of what clients send (open, acks and nacks of known, unknown and
// repeated ids, multiple, delayed retries, closes) interleaved with what the
// broker answers (channel set-up, deliveries, closes, cancels, a lost
// connection), driven into the ConsumerLedger. Beside the sanitizers, a model
// of the broker checks what the ledger sends: it never acks, nacks or rejects
// a delivery tag its channel does not hold (RabbitMQ would close the channel
// with 406 and requeue everything on it), and a stream is told it ended once,
// after which it gets nothing.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "amqp/consumer_ledger.h"

namespace {

using mqs::amqp::ChannelNo;
using mqs::amqp::ConsumerLedger;

const std::string kOtherTag = "other";

[[noreturn]] void Violation(const char* what) {
  fprintf(stderr, "consumer_ledger_fuzz: %s\n", what);
  abort();
}

// The broker's view of each channel: which delivery tags are unsettled.
class BrokerModel final : public mqs::amqp::ChannelSender {
 public:
  struct Channel {
    bool open = false;     // channel.open sent, not yet closed
    bool closing = false;  // channel.close sent: close-ok may come
    std::string consumer_tag;
    uint64_t next_tag = 1;
    std::set<uint64_t> unsettled;
  };
  std::map<ChannelNo, Channel> channels;

  bool SendOpen(ChannelNo ch) override {
    Channel& c = channels[ch];
    if (c.open) Violation("channel.open on a channel that is open");
    c = Channel{};
    c.open = true;
    return true;
  }
  bool SendQos(ChannelNo ch, uint16_t /*prefetch*/) override { return Known(ch); }
  bool SendConsume(ChannelNo ch, const std::string& /*queue*/, const std::string& tag) override {
    if (!Known(ch)) return true;
    channels[ch].consumer_tag = tag;
    return true;
  }
  bool SendCancel(ChannelNo ch, const std::string& /*tag*/) override { return Known(ch); }
  bool SendClose(ChannelNo ch) override {
    Known(ch);
    channels[ch].closing = true;
    return true;
  }
  bool SendCloseOk(ChannelNo /*ch*/) override { return true; }
  bool SendAck(ChannelNo ch, uint64_t tag, bool multiple) override {
    Settle(ch, tag, multiple);
    return true;
  }
  bool SendNack(ChannelNo ch, uint64_t tag, bool multiple, bool /*requeue*/) override {
    Settle(ch, tag, multiple);
    return true;
  }
  bool SendReject(ChannelNo ch, uint64_t tag, bool /*requeue*/) override {
    Settle(ch, tag, false);
    return true;
  }

 private:
  bool Known(ChannelNo ch) {
    if (!channels[ch].open) Violation("a method on a channel that is not open");
    return true;
  }
  void Settle(ChannelNo ch, uint64_t tag, bool multiple) {
    Channel& c = channels[ch];
    if (!c.open) Violation("a settle on a channel that is not open");
    if (!c.unsettled.contains(tag)) {
      Violation("a settle of a delivery tag the channel does not hold");
    }
    if (multiple) {
      c.unsettled.erase(c.unsettled.begin(), c.unsettled.upper_bound(tag));
    } else {
      c.unsettled.erase(tag);
    }
  }
};

class Sink final : public mqs::amqp::DeliverySink {
 public:
  std::vector<uint64_t> ids;
  bool closed = false;
  void OnDelivery(mqsidecar::v1::Delivery&& d) override {
    if (closed) Violation("a delivery after the stream was told it ended");
    ids.push_back(d.delivery_id());
  }
  void OnClosed(const absl::Status& /*status*/) override {
    if (closed) Violation("a stream told twice that it ended");
    closed = true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  ConsumerLedger::Clock::time_point now{};
  ConsumerLedger ledger([&now] { return now; });
  auto broker = std::make_unique<BrokerModel>();
  ledger.Attach(broker.get(), in.ConsumeIntegralInRange<int>(0, 40));
  std::vector<std::unique_ptr<Sink>> sinks;
  std::vector<ConsumerLedger::RetryTicket> tickets;
  const auto pick_channel = [&]() -> ChannelNo {
    return static_cast<ChannelNo>(in.ConsumeIntegralInRange<int>(1, 40));
  };
  const auto pick_stream = [&]() -> uint64_t {
    return sinks.empty() ? 1 : in.ConsumeIntegralInRange<uint64_t>(1, sinks.size() + 1);
  };
  const auto pick_id = [&](uint64_t stream) -> uint64_t {
    if (stream >= 1 && stream <= sinks.size() && !sinks[stream - 1]->ids.empty() &&
        in.ConsumeBool()) {
      const auto& ids = sinks[stream - 1]->ids;
      return ids[in.ConsumeIntegralInRange<size_t>(0, ids.size() - 1)];
    }
    return in.ConsumeIntegralInRange<uint64_t>(0, 64);
  };
  for (int steps = 0; steps < 2000 && in.remaining_bytes() > 0; ++steps) {
    switch (in.ConsumeIntegralInRange<int>(0, 16)) {
      case 0: {  // a client opens a stream
        auto sink = std::make_unique<Sink>();
        mqs::amqp::OpenRequest open;
        open.stream_id = sinks.size() + 1;
        open.business = "b";
        open.queue = "q";
        open.prefetch = in.ConsumeIntegralInRange<uint32_t>(0, 8);
        open.consumer_tag = "t" + std::to_string(open.stream_id);
        open.sink = sink.get();
        sinks.push_back(std::move(sink));
        ledger.Open(std::move(open));
        break;
      }
      case 1:
        ledger.OnOpenOk(pick_channel());
        break;
      case 2:
        ledger.OnQosOk(pick_channel());
        break;
      case 3:
        ledger.OnConsumeOk(pick_channel());
        break;
      case 4: {  // the broker delivers on a channel that consumes
        const ChannelNo ch = pick_channel();
        auto it = broker->channels.find(ch);
        if (it == broker->channels.end() || !it->second.open) break;
        BrokerModel::Channel& c = it->second;
        const uint64_t tag = c.next_tag++;
        c.unsettled.insert(tag);
        mqsidecar::v1::Delivery d;
        d.set_message_id("m" + std::to_string(tag));
        const std::string& tag_name = in.ConsumeBool() ? c.consumer_tag : kOtherTag;
        // Captured as a retry business's consumer does, so retries can take it.
        auto captured =
            in.ConsumeBool()
                ? std::make_shared<const mqs::amqp::CapturedMessage>(amqp_basic_properties_t{})
                : nullptr;
        ledger.OnDelivery(ch, tag, tag_name, std::move(d), std::move(captured));
        break;
      }
      case 5: {  // a client acks or nacks (any id, known or not)
        const uint64_t stream = pick_stream();
        ledger.Settle(stream, pick_id(stream), in.ConsumeBool(), in.ConsumeBool(),
                      in.ConsumeBool());
        break;
      }
      case 6:
        ledger.FlushAcks();
        break;
      case 7:
        ledger.Close(pick_stream(), absl::OkStatus());
        break;
      case 8: {  // the broker confirms a close it was asked for
        const ChannelNo ch = pick_channel();
        BrokerModel::Channel& c = broker->channels[ch];
        if (!c.open || !c.closing) break;
        c.open = false;
        c.unsettled.clear();
        ledger.OnCloseOk(ch);
        break;
      }
      case 9: {  // the broker closes a channel (refused set-up, channel error)
        const ChannelNo ch = pick_channel();
        BrokerModel::Channel& c = broker->channels[ch];
        if (!c.open) break;
        c.open = false;
        c.unsettled.clear();
        ledger.OnBrokerClose(ch, in.ConsumeBool() ? 404 : 406, "closed by the fuzzer");
        break;
      }
      case 10:
        ledger.OnBrokerCancel(pick_channel());
        break;
      case 11: {  // the connection is lost and comes back
        ledger.Detach();
        tickets.clear();  // the consumer forgets them with the connection
        broker = std::make_unique<BrokerModel>();
        ledger.Attach(broker.get(), in.ConsumeIntegralInRange<int>(0, 40));
        break;
      }
      case 12:
        ledger.Drain();
        break;
      case 13:
        now += std::chrono::milliseconds(in.ConsumeIntegralInRange<int>(0, 300));
        ledger.CloseDue();
        break;
      case 14: {  // a delayed retry takes a delivery
        const uint64_t stream = pick_stream();
        if (auto t = ledger.TakeForRetry(stream, pick_id(stream))) tickets.push_back(*t);
        break;
      }
      case 15: {  // the retry copy is confirmed or not
        if (tickets.empty()) break;
        const size_t i = in.ConsumeIntegralInRange<size_t>(0, tickets.size() - 1);
        const ConsumerLedger::RetryTicket t = tickets[i];
        tickets.erase(tickets.begin() + static_cast<std::ptrdiff_t>(i));
        ledger.FinishRetry(t, in.ConsumeBool());
        break;
      }
      default:
        (void)ledger.LiveUpTo(pick_stream(), 64);
        break;
    }
  }
  ledger.FlushAcks();
  ledger.EndAll(absl::UnavailableError("the fuzzer is done"));
  for (const auto& sink : sinks) {
    if (!sink->closed) Violation("a stream never told that it ended");
  }
  return 0;
}
