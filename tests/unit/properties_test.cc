// Header and property conversion between the API and AMQP, without a broker.
#include "amqp/properties.h"

#include <catch2/catch.hpp>

#include "amqp/connection.h"

namespace {

using mqs::amqp::AmqpText;
using mqsidecar::v1::Delivery;
using mqsidecar::v1::PublishRequest;

std::string Text(amqp_bytes_t b) { return std::string(AmqpText(b)); }

}  // namespace

TEST_CASE("properties: a publish is persistent, timestamped and carries its ids") {
  PublishRequest r;
  r.set_routing_key("rk");
  r.set_correlation_id("corr-1");
  r.set_content_type("application/json");
  r.set_reply_to("task.result");
  r.set_ttl_ms(1500);
  (*r.mutable_headers())["tenant"] = "acme";
  (*r.mutable_headers())["x-trace"] = "abc";

  mqs::amqp::OutgoingProperties props;
  props.Build(r, "mid-1", 1700000000);
  const amqp_basic_properties_t& p = *props.props();
  CHECK(p.delivery_mode == 2);
  CHECK(p.timestamp == 1700000000u);
  CHECK(Text(p.message_id) == "mid-1");
  CHECK(Text(p.correlation_id) == "corr-1");
  CHECK(Text(p.content_type) == "application/json");
  CHECK(Text(p.reply_to) == "task.result");
  CHECK(Text(p.expiration) == "1500");
  REQUIRE((p._flags & AMQP_BASIC_HEADERS_FLAG) != 0);
  REQUIRE(p.headers.num_entries == 2);

  // The same properties read back as a delivery give the same fields.
  Delivery d;
  mqs::amqp::FillDelivery(p, &d);
  CHECK(d.message_id() == "mid-1");
  CHECK(d.correlation_id() == "corr-1");
  CHECK(d.content_type() == "application/json");
  CHECK(d.reply_to() == "task.result");
  CHECK(d.published_at_ms() == 1700000000000);
  CHECK(d.headers().at("tenant") == "acme");
  CHECK(d.headers().at("x-trace") == "abc");
  CHECK(d.headers().size() == 2);
}

TEST_CASE("properties: optional fields stay unset when empty") {
  PublishRequest r;
  mqs::amqp::OutgoingProperties props;
  props.Build(r, "id", 1);
  const amqp_basic_properties_t& p = *props.props();
  CHECK((p._flags & AMQP_BASIC_CORRELATION_ID_FLAG) == 0);
  CHECK((p._flags & AMQP_BASIC_CONTENT_TYPE_FLAG) == 0);
  CHECK((p._flags & AMQP_BASIC_EXPIRATION_FLAG) == 0);
  CHECK((p._flags & AMQP_BASIC_HEADERS_FLAG) == 0);
  CHECK((p._flags & AMQP_BASIC_REPLY_TO_FLAG) == 0);
}

TEST_CASE("properties: headers from other clients become text, x-delivery-count is lifted") {
  amqp_table_entry_t entries[5];
  entries[0].key = amqp_cstring_bytes("n");
  entries[0].value.kind = AMQP_FIELD_KIND_I64;
  entries[0].value.value.i64 = -42;
  entries[1].key = amqp_cstring_bytes("flag");
  entries[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  entries[1].value.value.boolean = 1;
  entries[2].key = amqp_cstring_bytes("price");
  entries[2].value.kind = AMQP_FIELD_KIND_DECIMAL;
  entries[2].value.value.decimal.decimals = 2;
  entries[2].value.value.decimal.value = 5;
  entries[3].key = amqp_cstring_bytes("x-delivery-count");
  entries[3].value.kind = AMQP_FIELD_KIND_I64;
  entries[3].value.value.i64 = 3;
  entries[4].key = amqp_cstring_bytes("raw");
  entries[4].value.kind = AMQP_FIELD_KIND_BYTES;
  entries[4].value.value.bytes = amqp_cstring_bytes("bytes");

  amqp_basic_properties_t p{};
  p._flags = AMQP_BASIC_HEADERS_FLAG;
  p.headers.num_entries = 5;
  p.headers.entries = entries;
  Delivery d;
  mqs::amqp::FillDelivery(p, &d);
  CHECK(d.headers().at("n") == "-42");
  CHECK(d.headers().at("flag") == "true");
  CHECK(d.headers().at("price") == "0.05");
  CHECK(d.headers().at("raw") == "bytes");
  CHECK(d.headers().count("x-delivery-count") == 0);
  CHECK(d.delivery_count() == 3);
  CHECK(d.published_at_ms() == 0);
  CHECK(d.message_id().empty());
}

TEST_CASE("properties: AMQP short-string limits are checked with the field named") {
  PublishRequest r;
  CHECK(mqs::amqp::ValidatePublish(r).ok());
  r.set_routing_key(std::string(256, 'k'));
  const absl::Status s = mqs::amqp::ValidatePublish(r);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("routing_key") != std::string::npos);
  r.set_routing_key(std::string(255, 'k'));
  CHECK(mqs::amqp::ValidatePublish(r).ok());
  (*r.mutable_headers())[""] = "v";
  CHECK_FALSE(mqs::amqp::ValidatePublish(r).ok());
}

TEST_CASE("properties: a republished copy is marked and reads back as redelivered") {
  PublishRequest r;
  (*r.mutable_headers())["tenant"] = "acme";
  mqs::amqp::OutgoingProperties props;

  props.Build(r, "id", 1, /*republished=*/true);
  const amqp_basic_properties_t& p = *props.props();
  REQUIRE((p._flags & AMQP_BASIC_HEADERS_FLAG) != 0);
  REQUIRE(p.headers.num_entries == 2);
  Delivery d;
  mqs::amqp::FillDelivery(p, &d);
  CHECK(d.redelivered());
  CHECK(d.republished());
  // The marker is not one of the caller's headers.
  CHECK(d.headers().size() == 1);
  CHECK(d.headers().at("tenant") == "acme");

  // The first send carries no marker.
  props.Build(r, "id", 1, /*republished=*/false);
  Delivery first;
  mqs::amqp::FillDelivery(*props.props(), &first);
  CHECK_FALSE(first.redelivered());
  CHECK_FALSE(first.republished());
  CHECK(props.props()->headers.num_entries == 1);

  // Without headers of its own, a republished copy still gets the marker.
  PublishRequest bare;
  props.Build(bare, "id", 1, /*republished=*/true);
  CHECK((props.props()->_flags & AMQP_BASIC_HEADERS_FLAG) != 0);
  Delivery again;
  mqs::amqp::FillDelivery(*props.props(), &again);
  CHECK(again.redelivered());
  CHECK(again.headers().empty());
}

TEST_CASE("properties: reserved headers are refused, naming the header, in any case") {
  for (const char* name :
       {"x-mq-sidecar-republished", "X-MQ-Sidecar-Anything", "x-delivery-count", "X-Delivery-Count",
        "x-death", "x-first-death-reason", "x-last-death-queue", "CC", "cc", "BCC", "Bcc",
        "x-received-from", "x-shovelled", "x-shovelled-timestamp", "x-delay", "x-stream-offset",
        "x-mqtt-publish-qos", "x-amqp-1.0-properties", "x-opt-sequence"}) {
    INFO(name);
    PublishRequest r;
    (*r.mutable_headers())[name] = "forged";
    const absl::Status s = mqs::amqp::ValidatePublish(r);
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(s.message()).find(name) != std::string::npos);
    CHECK(mqs::amqp::IsReservedHeader(name));
  }
  // Near misses and ordinary x- headers are the client's own.
  for (const char* name : {"ccx", "x-cc", "x-deathly", "x-trace", "x-delivery", "tenant", "x-mq"}) {
    INFO(name);
    PublishRequest r;
    (*r.mutable_headers())[name] = "v";
    CHECK(mqs::amqp::ValidatePublish(r).ok());
  }
}

TEST_CASE("properties: a header name with a control character is refused, escaped in the error") {
  PublishRequest r;
  (*r.mutable_headers())["bad\nname"] = "v";
  const absl::Status s = mqs::amqp::ValidatePublish(r);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  const std::string msg(s.message());
  CHECK(msg.find("bad\\x0aname") != std::string::npos);
  CHECK(msg.find('\n') == std::string::npos);
  PublishRequest del;
  (*del.mutable_headers())[std::string("a\x7f", 2)] = "v";
  CHECK_FALSE(mqs::amqp::ValidatePublish(del).ok());
}

TEST_CASE("properties: headers nested as deep as a frame allows render without recursion") {
  // 30,000 nested arrays (more than fit in a 128 KiB frame) around a string:
  // before the depth limit, rendering this overflowed the stack.
  constexpr int kDepth = 30000;
  std::vector<amqp_field_value_t> v(kDepth + 1);
  v[kDepth].kind = AMQP_FIELD_KIND_UTF8;
  v[kDepth].value.bytes = amqp_cstring_bytes("x");
  for (int i = kDepth - 1; i >= 0; --i) {
    v[i].kind = AMQP_FIELD_KIND_ARRAY;
    v[i].value.array.num_entries = 1;
    v[i].value.array.entries = &v[i + 1];
  }
  const std::string text = mqs::amqp::FieldToString(v[0]);
  // append, not operator+: g++ 12 -O2 warns (-Warray-bounds) on the latter.
  CHECK(text == std::string(16, '[').append("[...]").append(16, ']'));

  // Tables the same way, inside a delivery's headers.
  std::vector<amqp_table_entry_t> t(kDepth);
  for (int i = kDepth - 1; i >= 0; --i) {
    t[i].key = amqp_cstring_bytes("k");
    if (i + 1 < kDepth) {
      t[i].value.kind = AMQP_FIELD_KIND_TABLE;
      t[i].value.value.table.num_entries = 1;
      t[i].value.value.table.entries = &t[i + 1];
    } else {
      t[i].value.kind = AMQP_FIELD_KIND_I32;
      t[i].value.value.i32 = 7;
    }
  }
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_HEADERS_FLAG;
  props.headers.num_entries = 1;
  props.headers.entries = &t[0];
  Delivery d;
  mqs::amqp::FillDelivery(props, &d);
  REQUIRE(d.headers().contains("k"));
  std::string want;
  for (int i = 0; i < 16; ++i) want += "{k=";
  want += "{...}";
  for (int i = 0; i < 16; ++i) want += "}";
  CHECK(d.headers().at("k") == want);

  // Shallow nesting is unchanged.
  amqp_field_value_t inner[2];
  inner[0].kind = AMQP_FIELD_KIND_I8;
  inner[0].value.i8 = -3;
  inner[1].kind = AMQP_FIELD_KIND_U8;
  inner[1].value.u8 = 200;
  amqp_field_value_t arr;
  arr.kind = AMQP_FIELD_KIND_ARRAY;
  arr.value.array.num_entries = 2;
  arr.value.array.entries = inner;
  CHECK(mqs::amqp::FieldToString(arr) == "[-3,200]");
}

TEST_CASE(
    "properties: bytes that are not UTF-8 in properties and headers become U+FFFD, so every "
    "client can parse the delivery") {
  // A Latin-1 message id and header, raw bytes in a header value and key:
  // protobuf clients refuse a Delivery whose string fields are not UTF-8.
  const std::string fffd = "\xEF\xBF\xBD";
  std::string latin1_id = "caf\xE9-1";
  std::string bad_key = "k\xFF";
  std::string bytes_value = "\x80\x81ok";
  amqp_table_entry_t headers[2];
  headers[0].key = amqp_cstring_bytes("note");
  headers[0].value.kind = AMQP_FIELD_KIND_UTF8;
  headers[0].value.value.bytes = amqp_cstring_bytes("na\xEFve");
  headers[1].key = {bad_key.size(), bad_key.data()};
  headers[1].value.kind = AMQP_FIELD_KIND_BYTES;
  headers[1].value.value.bytes = {bytes_value.size(), bytes_value.data()};
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                 AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
  props.message_id = {latin1_id.size(), latin1_id.data()};
  props.correlation_id = amqp_cstring_bytes("\xC3\xA9t\xC3\xA9");  // valid: unchanged
  props.content_type = amqp_cstring_bytes("text/\xFF");
  props.headers.num_entries = 2;
  props.headers.entries = headers;
  Delivery d;
  mqs::amqp::FillDelivery(props, &d);
  d.set_payload("\xFF\xFE raw payload bytes stay as they are");

  Delivery parsed;
  REQUIRE(parsed.ParseFromString(d.SerializeAsString()));
  CHECK(parsed.message_id() == "caf" + fffd + "-1");
  CHECK(parsed.correlation_id() == "\xC3\xA9t\xC3\xA9");
  CHECK(parsed.content_type() == "text/" + fffd);
  CHECK(parsed.headers().at("note") == "na" + fffd + "ve");
  CHECK(parsed.headers().at("k" + fffd) == fffd + fffd + "ok");
  CHECK(parsed.payload() == d.payload());
}

TEST_CASE("properties: a timestamp beyond what milliseconds can hold does not overflow") {
  // Found by tests/fuzz/amqp_props_fuzz: seconds * 1000 overflowed int64.
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_TIMESTAMP_FLAG;
  props.timestamp = UINT64_MAX;
  Delivery d;
  mqs::amqp::FillDelivery(props, &d);
  CHECK(d.published_at_ms() == INT64_MAX / 1000 * 1000);
  props.timestamp = 1700000000;
  mqs::amqp::FillDelivery(props, &d);
  CHECK(d.published_at_ms() == int64_t{1700000000} * 1000);
}
