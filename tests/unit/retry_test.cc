// Delayed retry without a broker: the nack decision, the delay buckets and
// the copy's properties (the ledger's part is in consumer_ledger_test.cc).
#include "amqp/retry.h"

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

#include "amqp/connection.h"
#include "amqp/properties.h"

namespace mqs::amqp {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

config::Retry Policy() { return config::Retry{{1s, 10s, 60s}, 5}; }

TEST_CASE(
    "retry: requeue retries after the configured delay of the attempt, the last one repeats") {
  const config::Retry r = Policy();
  CHECK(DecideRetry(r, 1, true, 0).kind == RetryStep::kRetry);
  CHECK(DecideRetry(r, 1, true, 0).delay == 1s);
  CHECK(DecideRetry(r, 2, true, 0).delay == 10s);
  CHECK(DecideRetry(r, 3, true, 0).delay == 60s);
  CHECK(DecideRetry(r, 4, true, 0).delay == 60s);  // the list is used up
  // max_attempts 5: the fifth delivery failing dead-letters.
  CHECK(DecideRetry(r, 5, true, 0).kind == RetryStep::kExhausted);
  CHECK(DecideRetry(r, 9, true, 0).kind == RetryStep::kExhausted);
  // requeue=false dead-letters at once (a plain nack), whatever the attempt.
  CHECK(DecideRetry(r, 1, false, 0).kind == RetryStep::kNack);
  // Without retry: a plain nack.
  CHECK(DecideRetry(config::Retry{}, 1, true, 0).kind == RetryStep::kNack);
  // Its own delay wins over the list.
  CHECK(DecideRetry(r, 1, true, 2500).delay == 2500ms);
  CHECK(DecideRetry(r, 5, true, 2500).kind == RetryStep::kExhausted);
}

TEST_CASE("retry: a nack's own delay uses a configured one within 10 % or 100 ms, else 2 digits") {
  const config::Retry r = Policy();
  CHECK(BucketDelay(r, 1050ms) == 1s);    // within 100 ms of 1 s
  CHECK(BucketDelay(r, 10900ms) == 10s);  // within 10 % of 10 s
  CHECK(BucketDelay(r, 1234ms) == 1200ms);
  CHECK(BucketDelay(r, 98765ms) == 99000ms);
  CHECK(BucketDelay(r, 700ms) == 700ms);
  CHECK(BucketDelay(r, 5ms) == config::kMinRetryDelay);
  CHECK(BucketDelay(r, 24h * 30) == 600'000'000ms);  // the maximum, to two digits
  // Every bucket within the promised tolerance of what was asked.
  for (int64_t ms = 100; ms < 10'000'000; ms = ms * 11 / 10 + 7) {
    const int64_t got = BucketDelay(r, milliseconds(ms)).count();
    INFO("asked " << ms << " ms, got " << got);
    CHECK(std::llabs(got - ms) <= std::max<int64_t>(100, ms / 10));
  }
}

TEST_CASE("retry: a nack delay without retry, without requeue or too long is INVALID_ARGUMENT") {
  config::Consumer plain;
  plain.name = "usdt.transfer";
  CHECK(ValidateNackDelay(plain, true, 0).ok());
  const absl::Status none = ValidateNackDelay(plain, true, 500);
  CHECK(none.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(none.message()).find("usdt.transfer") != std::string::npos);
  config::Consumer retrying = plain;
  retrying.retry = Policy();
  CHECK(ValidateNackDelay(retrying, true, 500).ok());
  CHECK(ValidateNackDelay(retrying, false, 500).code() == absl::StatusCode::kInvalidArgument);
  CHECK(ValidateNackDelay(retrying, true, UINT32_MAX).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("retry: a captured message keeps every property and header, the copy replaces ours") {
  std::string nested_key = "inner";
  amqp_table_entry_t inner{AmqpBytes(nested_key), {}};
  inner.value.kind = AMQP_FIELD_KIND_I32;
  inner.value.value.i32 = 7;
  std::vector<amqp_table_entry_t> entries(3);
  entries[0].key = AmqpBytes("account");
  entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[0].value.value.bytes = AmqpBytes("A-17");
  entries[1].key = AmqpBytes("x-mq-sidecar-retries");
  entries[1].value.kind = AMQP_FIELD_KIND_I64;
  entries[1].value.value.i64 = 2;
  entries[2].key = AmqpBytes("nested");
  entries[2].value.kind = AMQP_FIELD_KIND_TABLE;
  entries[2].value.value.table = amqp_table_t{1, &inner};
  std::string id = "m-1";
  std::string type = "transfer";
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG |
                 AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.message_id = AmqpBytes(id);
  props.type = AmqpBytes(type);
  props.delivery_mode = 2;
  props.headers = amqp_table_t{3, entries.data()};

  auto captured = std::make_unique<CapturedMessage>(props);
  // The original's memory goes away: the capture owns its copy.
  id.assign("XXX");
  type.assign("YYYYYYYY");
  nested_key.assign("ZZZZZ");
  const amqp_basic_properties_t& c = captured->props();
  CHECK(AmqpText(c.message_id) == "m-1");
  CHECK(AmqpText(c.type) == "transfer");
  CHECK(c.delivery_mode == 2);
  CHECK(HeaderNumber(c, kRetriesHeader, 0) == 2);
  CHECK(HeaderText(c, "nested") == "{inner=7}");

  CopyProperties copy;
  copy.Build(c, {{kRetriesHeader, int64_t{3}}, {kOriginalRoutingKeyHeader, std::string("k.1")}});
  const amqp_basic_properties_t& p = *copy.props();
  CHECK(AmqpText(p.message_id) == "m-1");
  CHECK(p.headers.num_entries == 4);  // account, nested, retries, routing key
  CHECK(HeaderNumber(p, kRetriesHeader, 0) == 3);
  CHECK(HeaderText(p, "account") == "A-17");

  // The client sees attempt 4 and the original routing key, not our headers.
  mqsidecar::v1::Delivery d;
  d.set_routing_key("q.retry.1s");
  FillDelivery(p, &d);
  CHECK(d.attempt() == 4);
  CHECK(d.routing_key() == "k.1");
  CHECK(d.headers().count("x-mq-sidecar-retries") == 0);
  CHECK(d.headers().at("account") == "A-17");
  mqsidecar::v1::Delivery first;
  FillDelivery(amqp_basic_properties_t{}, &first);
  CHECK(first.attempt() == 1);
}

}  // namespace
}  // namespace mqs::amqp
