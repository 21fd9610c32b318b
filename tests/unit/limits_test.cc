// limits: (issue 14, "Bad input"): each key's parsing, default and range in
// YAML and INI, the cross-checks, the derived gRPC sizes, and ValidatePublish
// at and one past every limit.
#include <catch2/catch.hpp>
#include <string>

#include "amqp/properties.h"
#include "config/config.h"
#include "util/grpc_limits.h"

namespace mqs::config {
namespace {

using mqsidecar::v1::PublishRequest;

std::string YamlErrors(const std::string& yaml) {
  absl::StatusOr<Config> c = LoadYamlText(yaml, "l.yaml");
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

std::string IniErrors(const std::string& ini) {
  absl::StatusOr<Config> c = LoadIniText(ini, "l.ini");
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

struct KeyCase {
  const char* key;
  uint32_t Limits::*field;
  uint32_t def, min, max;
};
constexpr KeyCase kKeys[] = {
    {"max_payload_bytes", &Limits::max_payload_bytes, 16777216, 1, 134217728},
    {"max_headers", &Limits::max_headers, 64, 0, 1024},
    {"max_header_bytes", &Limits::max_header_bytes, 65536, 0, 65536},
    {"max_routing_key_bytes", &Limits::max_routing_key_bytes, 255, 1, 255},
    {"max_message_id_bytes", &Limits::max_message_id_bytes, 255, 1, 255},
    {"max_streams_per_connection", &Limits::max_streams_per_connection, 1000, 1, 100000},
    {"max_prefetch", &Limits::max_prefetch, 10000, 1, 65535},
};

TEST_CASE("limits: defaults, with no limits section") {
  absl::StatusOr<Config> c = LoadYamlText("producers: { a: }\n", "l.yaml");
  REQUIRE(c.ok());
  for (const KeyCase& k : kKeys) {
    INFO(k.key);
    CHECK(c->limits.*k.field == k.def);
  }
  absl::StatusOr<Config> ini =
      LoadIniText("[rabbitmq]\naddress=amqp://h/\nproducer={\"a\":{}}\n", "l.ini");
  REQUIRE(ini.ok());
  for (const KeyCase& k : kKeys) {
    INFO(k.key);
    CHECK(ini->limits.*k.field == k.def);
  }
}

TEST_CASE("limits: every key parses at both ends of its range, YAML and INI") {
  for (const KeyCase& k : kKeys) {
    for (uint32_t v : {k.min, k.max}) {
      INFO(k.key << " = " << v);
      // A prefetch ceiling below the consumers' default prefetch (16) needs
      // the consumer's prefetch lowered too.
      const std::string yaml = "limits:\n  " + std::string(k.key) + ": " + std::to_string(v) +
                               "\nconsumers: { c: { prefetch: 1 } }\n";
      absl::StatusOr<Config> c = LoadYamlText(yaml, "l.yaml");
      REQUIRE(c.ok());
      CHECK(c->limits.*k.field == v);
      const std::string ini =
          "[rabbitmq]\naddress=amqp://h/\nconsumer={\"c\":{\"prefetch\":1}}\n"
          "[limits]\n" +
          std::string(k.key) + "=" + std::to_string(v) + "\n";
      absl::StatusOr<Config> i = LoadIniText(ini, "l.ini");
      REQUIRE(i.ok());
      CHECK(i->limits.*k.field == v);
    }
  }
}

TEST_CASE("limits: out of range, malformed or unknown keys name the file, line and key") {
  for (const KeyCase& k : kKeys) {
    INFO(k.key);
    const std::string range =
        "expected an integer " + std::to_string(k.min) + ".." + std::to_string(k.max);
    const std::string over = std::to_string(uint64_t{k.max} + 1);
    CHECK_THAT(
        YamlErrors("producers: { a: }\nlimits:\n  " + std::string(k.key) + ": " + over + "\n"),
        Catch::Contains("l.yaml:3: limits." + std::string(k.key) + ": " + range));
    CHECK_THAT(IniErrors("[rabbitmq]\naddress=amqp://h/\n[limits]\n" + std::string(k.key) + "=" +
                         over + "\n"),
               Catch::Contains("l.ini:4: limits." + std::string(k.key) + ": " + range));
    CHECK_THAT(YamlErrors("limits:\n  " + std::string(k.key) + ": lots\n"),
               Catch::Contains("l.yaml:2: limits." + std::string(k.key) + ": " + range));
    if (k.min > 0) {
      CHECK_THAT(
          YamlErrors("limits:\n  " + std::string(k.key) + ": " + std::to_string(k.min - 1) + "\n"),
          Catch::Contains("l.yaml:2: limits." + std::string(k.key) + ": " + range));
    }
  }
  CHECK_THAT(YamlErrors("limits:\n  max_payload: 1\n"),
             Catch::Contains("l.yaml:2: limits.max_payload: unknown key") &&
                 Catch::Contains("max_payload_bytes"));
  CHECK_THAT(IniErrors("[rabbitmq]\naddress=amqp://h/\n[limits]\nmax_payload=1\n"),
             Catch::Contains("l.ini:4: limits.max_payload: unknown key"));
  CHECK_THAT(IniErrors("[rabbitmq]\naddress=amqp://h/\n[limits]\nmax_headers=1\nmax_headers=2\n"),
             Catch::Contains("l.ini:5: limits.max_headers: duplicate key (first at line 4)"));
  CHECK_THAT(YamlErrors("limits: 5\n"), Catch::Contains("l.yaml:1: limits: expected a map"));
}

TEST_CASE("limits: a configured prefetch above max_prefetch is a config error") {
  CHECK(
      LoadYamlText("limits: { max_prefetch: 64 }\nconsumers: { c: { prefetch: 64 } }\n", "l").ok());
  CHECK_THAT(YamlErrors("limits: { max_prefetch: 64 }\nconsumers:\n  c: { prefetch: 65 }\n"),
             Catch::Contains("l.yaml:3: consumers[\"c\"].prefetch: prefetch 65 exceeds "
                             "limits.max_prefetch (64)"));
  // The default prefetch (16) is held to it too.
  CHECK_THAT(YamlErrors("limits: { max_prefetch: 8 }\nconsumers: { c: }\n"),
             Catch::Contains("prefetch 16 exceeds limits.max_prefetch (8)"));
  // An implicit unroutable consumer's default yields instead.
  absl::StatusOr<Config> c =
      LoadYamlText("limits: { max_prefetch: 8 }\nproducers: { p: { handle: p.ae } }\n", "l.yaml");
  REQUIRE(c.ok());
  const Consumer* u = c->FindConsumer("p.unroutable");
  REQUIRE(u != nullptr);
  CHECK(u->prefetch == 8);
}

TEST_CASE("limits: --check-config shows them") {
  absl::StatusOr<Config> c = LoadYamlText(
      "limits: { max_payload_bytes: 1000, max_prefetch: 99 }\nproducers: { a: }\n", "l.yaml");
  REQUIRE(c.ok());
  const std::string out = Describe(*c);
  CHECK_THAT(out, Catch::Contains("limits:\n  max_payload_bytes: 1000\n") &&
                      Catch::Contains("  max_prefetch: 99\n"));
}

TEST_CASE("limits: gRPC's receive and send limits derive from them") {
  const Limits d;
  // Defaults: 16 MiB payload + 64 KiB headers + 64 KiB for the other fields.
  CHECK(util::MaxRequestBytes(d.max_payload_bytes, d.max_header_bytes) == 16908288);
  CHECK(util::MaxSendBytes(16908288) == 16908288 + 1048576);
  CHECK(util::kMinSendBytes == 16908288 + 1048576);
  // Smaller limits never shrink the send limit below the floor; larger ones
  // keep a request at the limits fitting in a Delivery.
  CHECK(util::MaxSendBytes(util::MaxRequestBytes(1000, 0)) == util::kMinSendBytes);
  const size_t big = util::MaxRequestBytes(kMaxPayloadBytesLimit, kMaxHeaderBytesLimit);
  CHECK(util::MaxSendBytes(big) == big + 1048576);
  CHECK(big + 1048576 < size_t{1} << 31);  // gRPC takes an int
}

// A request at every limit of `l`.
PublishRequest AtLimits(const Limits& l) {
  PublishRequest r;
  r.set_business("b");
  r.set_payload(std::string(l.max_payload_bytes, 'p'));
  r.set_routing_key(std::string(l.max_routing_key_bytes, 'k'));
  r.set_message_id(std::string(l.max_message_id_bytes, 'm'));
  r.set_correlation_id(std::string(l.max_message_id_bytes, 'c'));
  // max_headers headers whose names and values add up to max_header_bytes.
  size_t left = l.max_header_bytes;
  for (uint32_t i = 0; i < l.max_headers; ++i) {
    std::string name = "h" + std::to_string(i);
    const size_t value = i + 1 == l.max_headers ? left - name.size() : 0;
    left -= name.size() + value;
    (*r.mutable_headers())[name] = std::string(value, 'v');
  }
  return r;
}

TEST_CASE("limits: ValidatePublish passes exactly at every limit and fails one past it") {
  Limits l;
  l.max_payload_bytes = 1000;
  l.max_headers = 4;
  l.max_header_bytes = 200;
  l.max_routing_key_bytes = 20;
  l.max_message_id_bytes = 30;
  const PublishRequest at = AtLimits(l);
  REQUIRE(at.headers().size() == 4);
  REQUIRE(amqp::ValidatePublish(at, l).ok());

  auto fails = [&](const PublishRequest& r, const std::string& message) {
    INFO(message);
    const absl::Status s = amqp::ValidatePublish(r, l);
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()) == message);
  };
  PublishRequest r = at;
  r.mutable_payload()->push_back('p');
  fails(r, "payload of 1001 bytes exceeds limits.max_payload_bytes (1000)");
  r = at;
  r.mutable_routing_key()->push_back('k');
  fails(r, "routing_key of 21 bytes exceeds limits.max_routing_key_bytes (20)");
  r = at;
  r.mutable_message_id()->push_back('m');
  fails(r, "message_id of 31 bytes exceeds limits.max_message_id_bytes (30)");
  r = at;
  r.mutable_correlation_id()->push_back('c');
  fails(r, "correlation_id of 31 bytes exceeds limits.max_message_id_bytes (30)");
  r = at;
  (*r.mutable_headers())["h3"].push_back('v');
  fails(r, "headers (names and values) of 201 bytes exceeds limits.max_header_bytes (200)");
  r = at;
  (*r.mutable_headers())["h3"].clear();  // room for a fifth header's bytes, not its count
  (*r.mutable_headers())["x"] = "";
  fails(r, "5 headers exceed limits.max_headers (4)");
}

TEST_CASE("limits: ValidatePublish at the default limits") {
  const Limits l;
  const PublishRequest at = AtLimits(l);
  CHECK(amqp::ValidatePublish(at, l).ok());
  // The whole request at every default limit fits under gRPC's receive limit.
  CHECK(at.ByteSizeLong() <= util::MaxRequestBytes(l.max_payload_bytes, l.max_header_bytes));
  PublishRequest r = at;
  r.mutable_payload()->push_back('p');
  CHECK(amqp::ValidatePublish(r, l).message() ==
        "payload of 16777217 bytes exceeds limits.max_payload_bytes (16777216)");
  // Without limits given, the defaults apply.
  CHECK(amqp::ValidatePublish(r).message() == amqp::ValidatePublish(r, l).message());
}

}  // namespace
}  // namespace mqs::config
