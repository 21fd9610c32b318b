// libFuzzer harness for what another AMQP client can put in a message's
// properties (issue 14): any bytes that rabbitmq-c decodes as a basic
// content header must become a Delivery that every protobuf client can parse
// (valid UTF-8 in every string field), and be captured and copied for a
// delayed retry, without a crash, a sanitizer report or a hang.
#include <amqp.h>
#include <amqp_framing.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "amqp/properties.h"
#include "mqsidecar/v1/pubsub.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A content header frame is at most frame_max (128 KiB) long.
  if (size > 131072) return 0;
  std::string bytes(reinterpret_cast<const char*>(data), size);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  void* decoded = nullptr;
  if (amqp_decode_properties(AMQP_BASIC_CLASS, &pool, {bytes.size(), bytes.data()}, &decoded) ==
          AMQP_STATUS_OK &&
      decoded != nullptr) {
    const auto& props = *static_cast<const amqp_basic_properties_t*>(decoded);
    mqsidecar::v1::Delivery delivery;
    mqs::amqp::FillDelivery(props, &delivery);
    mqsidecar::v1::Delivery parsed;
    if (!parsed.ParseFromString(delivery.SerializeAsString())) abort();  // not UTF-8
    // Delayed retry: captured, then copied with its retry headers replaced.
    mqs::amqp::CapturedMessage captured(props);
    mqs::amqp::CopyProperties copy;
    copy.Build(captured.props(), {{mqs::amqp::kRetriesHeader, int64_t{1}}},
               {mqs::amqp::kOriginalExchangeHeader});
    (void)mqs::amqp::HeaderText(*copy.props(), mqs::amqp::kOriginalRoutingKeyHeader);
    (void)mqs::amqp::HeaderNumber(*copy.props(), mqs::amqp::kRetriesHeader, 0);
    // As the publisher sends it.
    std::string out(size_t{2} * 131072, '\0');
    (void)amqp_encode_properties(AMQP_BASIC_CLASS,
                                 const_cast<amqp_basic_properties_t*>(copy.props()),
                                 {out.size(), out.data()});
  }
  empty_amqp_pool(&pool);
  return 0;
}
