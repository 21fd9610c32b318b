// mqctl's dlq renderings and the replay's exit code (client/dead_letter_format.h).
#include "dead_letter_format.h"

#include <catch2/catch.hpp>

#include "delivery_json.h"

using mqsidecar::v1::DeadLetter;
using mqsidecar::v1::ReplayDeadLettersResponse;

TEST_CASE(
    "dlq format: a dead letter is its x-death facts plus the delivery as subscribe prints it") {
  DeadLetter letter;
  letter.set_reason("rejected");
  letter.set_queue("biz.queue");
  letter.set_dead_lettered_at_ms(1700000000000);
  letter.set_count(2);
  letter.set_original_exchange("biz");
  letter.set_original_routing_key("orders.created");
  letter.mutable_message()->set_message_id("m-1");
  letter.mutable_message()->set_payload("hello");
  const std::string line = mqctl::DumpLine(mqctl::DeadLetterToJson(letter));
  CHECK_THAT(line, Catch::StartsWith("{\"reason\":\"rejected\",\"queue\":\"biz.queue\","
                                     "\"dead_lettered_at_ms\":1700000000000,\"count\":2,"
                                     "\"original_exchange\":\"biz\","
                                     "\"original_routing_key\":\"orders.created\",\"message\":{"));
  CHECK(mqctl::DeadLetterToJson(letter)["message"] == mqctl::DeliveryToJson(letter.message()));
}

TEST_CASE("dlq format: a replay prints its count, ids and what is left") {
  ReplayDeadLettersResponse r;
  r.set_replayed(2);
  r.add_message_ids("a");
  r.add_message_ids("b");
  r.set_remaining(1);
  CHECK(mqctl::DumpLine(mqctl::ReplayToJson(r)) ==
        "{\"replayed\":2,\"message_ids\":[\"a\",\"b\"],\"remaining\":1}");
  CHECK(mqctl::DumpLine(mqctl::ReplayToJson(ReplayDeadLettersResponse())) ==
        "{\"replayed\":0,\"message_ids\":[],\"remaining\":0}");
}

TEST_CASE("dlq format: exit 2 only for an error after some were replayed") {
  ReplayDeadLettersResponse some;
  some.set_replayed(1);
  some.add_message_ids("a");
  const auto parsed = mqctl::ParseReplayTrailer(some.SerializeAsString());
  REQUIRE(parsed.has_value());
  CHECK(parsed->replayed() == 1);
  CHECK(mqctl::ReplayExitCode(grpc::StatusCode::OK, std::nullopt) == 0);
  CHECK(mqctl::ReplayExitCode(grpc::StatusCode::ABORTED, parsed) == 2);
  CHECK(mqctl::ReplayExitCode(grpc::StatusCode::UNAVAILABLE, std::nullopt) == 1);
  CHECK(mqctl::ReplayExitCode(grpc::StatusCode::FAILED_PRECONDITION, ReplayDeadLettersResponse()) ==
        1);
  CHECK_FALSE(mqctl::ParseReplayTrailer("\xff\xff\xff").has_value());
}
