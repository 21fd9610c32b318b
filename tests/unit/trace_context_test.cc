// util/trace_context.h: W3C traceparent/tracestate checks and how the
// caller's metadata and a request's own headers combine.
#include "util/trace_context.h"

#include <catch2/catch.hpp>

#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::util {
namespace {

constexpr std::string_view kValid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST_CASE("trace context: a W3C traceparent is version-traceid-parentid-flags in lowercase hex") {
  CHECK(IsValidTraceparent(kValid));
  CHECK(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
  CHECK_FALSE(IsValidTraceparent(""));
  CHECK_FALSE(IsValidTraceparent("garbage"));
  // Uppercase hex, wrong separators, wrong lengths.
  CHECK_FALSE(IsValidTraceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
  CHECK_FALSE(IsValidTraceparent("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  CHECK_FALSE(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"));
  CHECK_FALSE(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"));
  CHECK_FALSE(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"));
  // All-zero ids are invalid; version ff is invalid.
  CHECK_FALSE(IsValidTraceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  CHECK_FALSE(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
  CHECK_FALSE(IsValidTraceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  // Version 00 is exactly 55 characters; a later version may carry more
  // after a '-'.
  CHECK_FALSE(IsValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"));
  CHECK(IsValidTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"));
  CHECK(IsValidTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  CHECK_FALSE(IsValidTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"));
}

TEST_CASE("trace context: tracestate is the W3C list of key=value members") {
  CHECK(IsValidTracestate("congo=t61rcWkgMzE"));
  CHECK(IsValidTracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
  CHECK(IsValidTracestate("rojo=1 , \tcongo=2,,"));
  CHECK(IsValidTracestate("tenant1@vendor=x"));
  CHECK(IsValidTracestate(""));
  CHECK_FALSE(IsValidTracestate("Rojo=1"));                // uppercase key
  CHECK_FALSE(IsValidTracestate("rojo"));                  // no value
  CHECK_FALSE(IsValidTracestate("rojo="));                 // empty value
  CHECK_FALSE(IsValidTracestate("rojo=a=b"));              // '=' in the value
  CHECK_FALSE(IsValidTracestate("rojo=1,rojo=2"));         // a key twice
  CHECK_FALSE(IsValidTracestate("rojo=a\x01"));            // a control character
  CHECK_FALSE(IsValidTracestate("t@verylongsystemid=1"));  // system id over 14
  std::string many;
  for (int i = 0; i < 33; ++i) many += "k" + std::to_string(i) + "=v,";
  CHECK_FALSE(IsValidTracestate(many));
  many.resize(many.find("k32"));
  CHECK(IsValidTracestate(many));
}

TEST_CASE("trace context: metadata with an invalid traceparent is dropped, with a reason") {
  std::string dropped;
  TraceContext t = TraceFromMetadata(kValid, "rojo=1", &dropped);
  CHECK(t.traceparent == kValid);
  CHECK(t.tracestate == "rojo=1");
  CHECK(dropped.empty());

  t = TraceFromMetadata("00-zz", "rojo=1", &dropped);
  CHECK(t.empty());
  CHECK(t.tracestate.empty());
  CHECK_THAT(dropped, Catch::Contains("invalid traceparent metadata \"00-zz\""));

  dropped.clear();
  t = TraceFromMetadata(kValid, "Bad State", &dropped);
  CHECK(t.traceparent == kValid);
  CHECK(t.tracestate.empty());
  CHECK_THAT(dropped, Catch::Contains("invalid tracestate"));

  dropped.clear();
  t = TraceFromMetadata(std::nullopt, "rojo=1", &dropped);  // a tracestate alone: nothing
  CHECK(t.empty());
  CHECK(dropped.empty());
}

TEST_CASE("trace context: the metadata fills a request without its own, a request's own wins") {
  const TraceContext meta{std::string(kValid), "rojo=1"};
  mqsidecar::v1::PublishRequest r;
  REQUIRE(ApplyTrace(meta, r.mutable_headers()).ok());
  CHECK(r.headers().at("traceparent") == kValid);
  CHECK(r.headers().at("tracestate") == "rojo=1");

  const std::string own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  mqsidecar::v1::PublishRequest mine;
  (*mine.mutable_headers())["traceparent"] = own;
  REQUIRE(ApplyTrace(meta, mine.mutable_headers()).ok());
  CHECK(mine.headers().at("traceparent") == own);
  CHECK(mine.headers().count("tracestate") == 0);  // the metadata's state is not its

  mqsidecar::v1::PublishRequest none;
  REQUIRE(ApplyTrace(TraceContext{}, none.mutable_headers()).ok());
  CHECK(none.headers().empty());
}

TEST_CASE("trace context: a request's invalid trace header is INVALID_ARGUMENT naming it") {
  mqsidecar::v1::PublishRequest r;
  (*r.mutable_headers())["traceparent"] = "00-nope";
  absl::Status s = ApplyTrace(TraceContext{}, r.mutable_headers());
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("header 'traceparent'"));

  r.mutable_headers()->clear();
  (*r.mutable_headers())["tracestate"] = "rojo=1";
  s = ApplyTrace(TraceContext{std::string(kValid), ""}, r.mutable_headers());
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("header 'tracestate'"));

  (*r.mutable_headers())["traceparent"] = std::string(kValid);
  (*r.mutable_headers())["tracestate"] = "ROJO=1";
  s = ApplyTrace(TraceContext{}, r.mutable_headers());
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("header 'tracestate'"));
}

}  // namespace
}  // namespace mqs::util
