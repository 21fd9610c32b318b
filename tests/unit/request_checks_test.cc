// The gRPC edge's request checks (server/request_checks.h), driven alone;
// tests/fuzz/request_fuzz.cc drives them with random sequences.
#include "server/request_checks.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "amqp/properties.h"
#include "util/strings.h"
#include "util/utf8.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::SubscribeRequest;

config::Config TwoBusinesses() {
  config::Config c;
  config::Consumer pay;
  pay.name = "usdt.transfer";
  pay.retry.delays = {std::chrono::seconds(1)};
  c.consumers.push_back(pay);
  config::Consumer plain;
  plain.name = "plain";
  c.consumers.push_back(plain);
  return c;
}

SubscribeRequest Ack(uint64_t id, bool multiple = false) {
  SubscribeRequest r;
  r.mutable_ack()->set_delivery_id(id);
  r.mutable_ack()->set_multiple(multiple);
  return r;
}

TEST_CASE(
    "request checks: a Subscribe stream opens first and once, and each settle names a delivery") {
  const config::Config config = TwoBusinesses();
  const config::Consumer* pay = &config.consumers[0];
  const config::Consumer* plain = &config.consumers[1];
  SubscribeRequest open;
  open.mutable_open()->set_business("usdt.transfer");

  CHECK(*CheckSubscribeRequest(open, nullptr) == SubscribeStep::kOpen);
  CHECK(CheckSubscribeRequest(open, pay).status().message() ==
        "open sent twice on one Subscribe stream");
  CHECK(CheckSubscribeRequest(Ack(1), nullptr).status().message() ==
        "the first request of a Subscribe stream must be open");
  CHECK(*CheckSubscribeRequest(Ack(1), pay) == SubscribeStep::kAck);
  CHECK_THAT(std::string(CheckSubscribeRequest(Ack(0), pay).status().message()),
             Catch::Contains("names no delivery"));
  CHECK_THAT(std::string(CheckSubscribeRequest(Ack(0, true), pay).status().message()),
             Catch::Contains("multiple needs a delivery_id"));
  SubscribeRequest listed = Ack(0);
  listed.mutable_ack()->add_delivery_ids(3);
  CHECK(*CheckSubscribeRequest(listed, pay) == SubscribeStep::kAck);
  CHECK(CheckSubscribeRequest(SubscribeRequest(), pay).status().code() ==
        absl::StatusCode::kInvalidArgument);

  SubscribeRequest delayed;
  delayed.mutable_nack()->set_delivery_id(2);
  delayed.mutable_nack()->set_requeue(true);
  delayed.mutable_nack()->set_retry_after_ms(500);
  CHECK(*CheckSubscribeRequest(delayed, pay) == SubscribeStep::kNack);
  CHECK_THAT(std::string(CheckSubscribeRequest(delayed, plain).status().message()),
             Catch::Contains("has no `retry` configured"));
}

TEST_CASE("request checks: an open names a configured consumer and limits within the config") {
  const config::Config config = TwoBusinesses();
  SubscribeRequest::Open open;
  open.set_business("usdt.transfer");
  REQUIRE(CheckOpen(open, config).ok());
  CHECK(CheckOpen(open, config)->consumer == &config.consumers[0]);

  open.set_business(std::string("nope\n", 5));
  const absl::Status unknown = CheckOpen(open, config).status();
  CHECK(unknown.message() ==
        "unknown business 'nope\\x0a'; configured consumers: usdt.transfer, plain");

  open.set_business("plain");
  open.set_prefetch(config.limits.max_prefetch + 1);
  CHECK_THAT(std::string(CheckOpen(open, config).status().message()),
             Catch::Contains("exceeds limits.max_prefetch"));
}

TEST_CASE("request checks: a refusal quoting a long client string cuts it on a UTF-8 boundary") {
  // 2-byte characters: a cut at an odd byte count would split one.
  std::string name;
  for (int i = 0; i < 200; ++i) name += "\xc3\xa9";
  const std::string quoted = util::ForLog(name, 33);
  CHECK(util::IsValidUtf8(quoted));
  CHECK(quoted == std::string(name, 0, 32) + "...");

  mqsidecar::v1::PublishRequest request;
  request.set_business("usdt.transfer");
  (*request.mutable_headers())["a" + name] = "v";  // its first 32 bytes end mid-character
  const absl::Status s = amqp::ValidatePublish(request);
  REQUIRE(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(util::IsValidUtf8(std::string(s.message())));
  CHECK_THAT(std::string(s.message()), Catch::Contains("is 401 bytes; AMQP allows at most 255"));
}

}  // namespace
}  // namespace mqs::server
