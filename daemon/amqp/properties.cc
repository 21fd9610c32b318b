#include "amqp/properties.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cinttypes>
#include <cstdio>

#include "amqp/connection.h"
#include "util/strings.h"
#include "util/utf8.h"

namespace mqs::amqp {
namespace {

constexpr size_t kShortStrMax = 255;

absl::Status CheckShort(std::string_view field, std::string_view value) {
  if (value.size() <= kShortStrMax) return absl::OkStatus();
  return absl::InvalidArgumentError(
      util::StrCat(field, " is ", value.size(), " bytes; AMQP allows at most 255"));
}

// Headers the broker, its plugins or mq-sidecar itself read on a message. A
// client that sets one could forge what a consumer sees (our republished
// marker, a quorum queue's delivery count, dead-letter history, federation
// and shovel hops) or change routing (CC/BCC: a string value makes RabbitMQ
// close the publishing channel, 406). Compared case-insensitively: AMQP
// table keys are case-sensitive, but a near miss is a client's mistake.
constexpr std::string_view kReservedHeaders[] = {
    "cc",                // sender-selected distribution (routing)
    "bcc",               // same; removed by the broker before delivery
    "x-delivery-count",  // quorum queues: delivery attempts
    "x-death",           // dead lettering history
    "x-received-from",   // federation: hops, for cycle detection
    "x-delay",           // delayed message exchange plugin
};
constexpr std::string_view kReservedPrefixes[] = {
    "x-mq-sidecar-",   // ours (kRepublishedHeader)
    "x-first-death-",  // dead lettering
    "x-last-death-",   // dead lettering
    "x-shovelled",     // shovel: x-shovelled, x-shovelled-timestamp
    "x-stream-",       // streams: offset, filter value
    "x-mqtt-",         // MQTT plugin
    "x-amqp-1.0-",     // AMQP 1.0 plugin
    "x-opt-",          // AMQP 1.0 message annotations
};

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (std::tolower(c) != prefix[i]) return false;
  }
  return true;
}

}  // namespace

bool IsReservedHeader(std::string_view name) {
  for (std::string_view r : kReservedHeaders) {
    if (name.size() == r.size() && StartsWithNoCase(name, r)) return true;
  }
  for (std::string_view p : kReservedPrefixes) {
    if (StartsWithNoCase(name, p)) return true;
  }
  return false;
}

namespace {

// "<what> of N bytes exceeds limits.<key> (M)".
absl::Status CheckLimit(std::string_view what, size_t size, std::string_view key, uint32_t limit) {
  if (size <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      util::StrCat(what, " of ", size, " bytes exceeds limits.", key, " (", limit, ")"));
}

}  // namespace

absl::Status ValidatePublish(const mqsidecar::v1::PublishRequest& r, const config::Limits& limits) {
  absl::Status s;
  // The configured limits first: their message names the key to raise.
  s.Update(
      CheckLimit("payload", r.payload().size(), "max_payload_bytes", limits.max_payload_bytes));
  s.Update(CheckLimit("routing_key", r.routing_key().size(), "max_routing_key_bytes",
                      limits.max_routing_key_bytes));
  s.Update(CheckLimit("message_id", r.message_id().size(), "max_message_id_bytes",
                      limits.max_message_id_bytes));
  s.Update(CheckLimit("correlation_id", r.correlation_id().size(), "max_message_id_bytes",
                      limits.max_message_id_bytes));
  if (static_cast<size_t>(r.headers().size()) > limits.max_headers) {
    s.Update(absl::InvalidArgumentError(util::StrCat(
        r.headers().size(), " headers exceed limits.max_headers (", limits.max_headers, ")")));
  }
  size_t header_bytes = 0;
  for (const auto& [key, value] : r.headers()) header_bytes += key.size() + value.size();
  s.Update(CheckLimit("headers (names and values)", header_bytes, "max_header_bytes",
                      limits.max_header_bytes));
  s.Update(CheckShort("routing_key", r.routing_key()));
  s.Update(CheckShort("message_id", r.message_id()));
  s.Update(CheckShort("correlation_id", r.correlation_id()));
  s.Update(CheckShort("content_type", r.content_type()));
  s.Update(CheckShort("reply_to", r.reply_to()));
  for (const auto& [key, value] : r.headers()) {
    s.Update(CheckShort(util::StrCat("header name '", util::ForLog(key, 32), "'"), key));
    if (key.empty()) s.Update(absl::InvalidArgumentError("header name is empty"));
    if (util::HasControlChars(key)) {
      s.Update(absl::InvalidArgumentError(
          util::StrCat("header name '", util::ForLog(key, 64), "' contains a control character")));
    } else if (IsReservedHeader(key)) {
      s.Update(absl::InvalidArgumentError(
          util::StrCat("header '", util::ForLog(key, 64),
                       "' is reserved: the broker or mq-sidecar interprets it on a message")));
    }
  }
  return s;
}

void OutgoingProperties::Build(const mqsidecar::v1::PublishRequest& r, std::string_view message_id,
                               int64_t timestamp_seconds, bool republished) {
  props_ = amqp_basic_properties_t{};
  props_._flags =
      AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
  props_.delivery_mode = 2;  // persistent: survives a broker restart
  props_.timestamp = static_cast<uint64_t>(timestamp_seconds);
  props_.message_id = AmqpBytes(message_id);
  if (!r.correlation_id().empty()) {
    props_._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
    props_.correlation_id = AmqpBytes(r.correlation_id());
  }
  if (!r.content_type().empty()) {
    props_._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
    props_.content_type = AmqpBytes(r.content_type());
  }
  if (!r.reply_to().empty()) {
    props_._flags |= AMQP_BASIC_REPLY_TO_FLAG;
    props_.reply_to = AmqpBytes(r.reply_to());
  }
  if (r.ttl_ms() != 0) {
    expiration_ = std::to_string(r.ttl_ms());
    props_._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    props_.expiration = AmqpBytes(expiration_);
  }
  headers_.clear();
  for (const auto& [key, value] : r.headers()) {
    amqp_table_entry_t e;
    e.key = AmqpBytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = AmqpBytes(value);
    headers_.push_back(e);
  }
  // ValidatePublish rejects a client's own kRepublishedHeader.
  if (republished) {
    amqp_table_entry_t e;
    e.key = AmqpBytes(kRepublishedHeader);
    e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e.value.value.boolean = 1;
    headers_.push_back(e);
  }
  if (!headers_.empty()) {
    props_._flags |= AMQP_BASIC_HEADERS_FLAG;
    props_.headers.num_entries = static_cast<int>(headers_.size());
    props_.headers.entries = headers_.data();
  }
}

namespace {

// Nesting deeper than this renders as "...". Another AMQP client may send
// headers nested as deep as one frame allows (~26,000 arrays in 128 KiB);
// rendering them recursively overflowed the consumer thread's stack (a
// 20,000-deep header crashed the daemon, and its redelivery crashed it
// again). Appending keeps the work linear in the header's size.
constexpr int kMaxFieldDepth = 16;

void AppendField(const amqp_field_value_t& v, int depth, std::string* out) {
  switch (v.kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
      out->append(v.value.boolean ? "true" : "false");
      return;
    case AMQP_FIELD_KIND_I8:
      util::StrAppend(out, static_cast<int>(v.value.i8));
      return;
    case AMQP_FIELD_KIND_U8:
      util::StrAppend(out, static_cast<unsigned>(v.value.u8));
      return;
    case AMQP_FIELD_KIND_I16:
      util::StrAppend(out, v.value.i16);
      return;
    case AMQP_FIELD_KIND_U16:
      util::StrAppend(out, v.value.u16);
      return;
    case AMQP_FIELD_KIND_I32:
      util::StrAppend(out, v.value.i32);
      return;
    case AMQP_FIELD_KIND_U32:
      util::StrAppend(out, v.value.u32);
      return;
    case AMQP_FIELD_KIND_I64:
      util::StrAppend(out, v.value.i64);
      return;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
      util::StrAppend(out, v.value.u64);
      return;
    case AMQP_FIELD_KIND_F32:
      util::StrAppend(out, v.value.f32);
      return;
    case AMQP_FIELD_KIND_F64:
      util::StrAppend(out, v.value.f64);
      return;
    case AMQP_FIELD_KIND_DECIMAL: {
      // value * 10^-decimals, rendered exactly.
      const std::string digits = std::to_string(v.value.decimal.value);
      const size_t d = v.value.decimal.decimals;
      if (d == 0) {
        out->append(digits);
        return;
      }
      const std::string padded =
          digits.size() > d ? digits : std::string(d + 1 - digits.size(), '0') + digits;
      util::StrAppend(out, std::string_view(padded).substr(0, padded.size() - d), ".",
                      std::string_view(padded).substr(padded.size() - d));
      return;
    }
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      util::AppendValidUtf8(out, AmqpText(v.value.bytes));
      return;
    case AMQP_FIELD_KIND_ARRAY:
      if (depth >= kMaxFieldDepth) {
        out->append("[...]");
        return;
      }
      out->push_back('[');
      for (int i = 0; i < v.value.array.num_entries; ++i) {
        if (i > 0) out->push_back(',');
        AppendField(v.value.array.entries[i], depth + 1, out);
      }
      out->push_back(']');
      return;
    case AMQP_FIELD_KIND_TABLE:
      if (depth >= kMaxFieldDepth) {
        out->append("{...}");
        return;
      }
      out->push_back('{');
      for (int i = 0; i < v.value.table.num_entries; ++i) {
        if (i > 0) out->push_back(',');
        const auto& e = v.value.table.entries[i];
        util::AppendValidUtf8(out, AmqpText(e.key));
        out->push_back('=');
        AppendField(e.value, depth + 1, out);
      }
      out->push_back('}');
      return;
    default:  // void, and kinds rabbitmq-c does not decode
      return;
  }
}

}  // namespace

std::string FieldToString(const amqp_field_value_t& v) {
  std::string out;
  AppendField(v, 0, &out);
  return out;
}

void FillDelivery(const amqp_basic_properties_t& p, mqsidecar::v1::Delivery* d) {
  const auto has = [&p](amqp_flags_t flag) { return (p._flags & flag) != 0; };
  // Any AMQP client may have sent these: bytes, made valid UTF-8 (utf8.h).
  if (has(AMQP_BASIC_MESSAGE_ID_FLAG)) d->set_message_id(util::ToValidUtf8(AmqpText(p.message_id)));
  if (has(AMQP_BASIC_CORRELATION_ID_FLAG)) {
    d->set_correlation_id(util::ToValidUtf8(AmqpText(p.correlation_id)));
  }
  if (has(AMQP_BASIC_CONTENT_TYPE_FLAG)) {
    d->set_content_type(util::ToValidUtf8(AmqpText(p.content_type)));
  }
  if (has(AMQP_BASIC_REPLY_TO_FLAG)) d->set_reply_to(util::ToValidUtf8(AmqpText(p.reply_to)));
  if (has(AMQP_BASIC_TIMESTAMP_FLAG)) {
    // AMQP timestamps are seconds since the epoch.
    // Any client may send any 64-bit value (found by amqp_props_fuzz).
    d->set_published_at_ms(
        static_cast<int64_t>(std::min<uint64_t>(p.timestamp, INT64_MAX / 1000) * 1000));
  }
  if (has(AMQP_BASIC_HEADERS_FLAG)) {
    auto* headers = d->mutable_headers();
    for (int i = 0; i < p.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = p.headers.entries[i];
      const std::string_view key = AmqpText(e.key);
      if (key == "x-delivery-count") {
        const std::string n = FieldToString(e.value);
        d->set_delivery_count(static_cast<uint32_t>(std::strtoul(n.c_str(), nullptr, 10)));
        continue;
      }
      if (key == kRepublishedHeader) {
        if (FieldToString(e.value) == "true") {
          d->set_redelivered(true);
          d->set_republished(true);
        }
        continue;
      }
      if (key == kRetriesHeader || key == kOriginalExchangeHeader ||
          key == kOriginalRoutingKeyHeader) {
        continue;  // read below
      }
      (*headers)[util::ToValidUtf8(key)] = FieldToString(e.value);
    }
  }
  const int64_t retries = HeaderNumber(p, kRetriesHeader, 0);
  d->set_attempt(static_cast<uint32_t>(std::clamp<int64_t>(retries, 0, UINT32_MAX - 1) + 1));
  if (has(AMQP_BASIC_HEADERS_FLAG) && FindHeader(p, kOriginalRoutingKeyHeader) != nullptr) {
    d->set_exchange(HeaderText(p, kOriginalExchangeHeader));
    d->set_routing_key(HeaderText(p, kOriginalRoutingKeyHeader));
  }
}

const amqp_field_value_t* FindHeader(const amqp_basic_properties_t& p, std::string_view name) {
  if ((p._flags & AMQP_BASIC_HEADERS_FLAG) == 0) return nullptr;
  for (int i = 0; i < p.headers.num_entries; ++i) {
    if (AmqpText(p.headers.entries[i].key) == name) return &p.headers.entries[i].value;
  }
  return nullptr;
}

int64_t HeaderNumber(const amqp_basic_properties_t& p, std::string_view name, int64_t fallback) {
  const amqp_field_value_t* v = FindHeader(p, name);
  if (v == nullptr) return fallback;
  switch (v->kind) {
    case AMQP_FIELD_KIND_I8:
      return v->value.i8;
    case AMQP_FIELD_KIND_U8:
      return v->value.u8;
    case AMQP_FIELD_KIND_I16:
      return v->value.i16;
    case AMQP_FIELD_KIND_U16:
      return v->value.u16;
    case AMQP_FIELD_KIND_I32:
      return v->value.i32;
    case AMQP_FIELD_KIND_U32:
      return v->value.u32;
    case AMQP_FIELD_KIND_I64:
      return v->value.i64;
    case AMQP_FIELD_KIND_U64:
      return static_cast<int64_t>(std::min<uint64_t>(v->value.u64, INT64_MAX));
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: {
      int64_t n = 0;
      const std::string_view text = AmqpText(v->value.bytes);
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
      return ec == std::errc() && end == text.data() + text.size() ? n : fallback;
    }
    default:
      return fallback;
  }
}

std::string HeaderText(const amqp_basic_properties_t& p, std::string_view name) {
  const amqp_field_value_t* v = FindHeader(p, name);
  return v == nullptr ? std::string() : FieldToString(*v);
}

CapturedMessage::CapturedMessage(const amqp_basic_properties_t& props) {
  init_amqp_pool(&pool_, 1024);
  props_ = props;
  // rabbitmq-c exports no properties clone: the short strings go to strings_
  // (a deque: its elements never move), the headers table to pool_.
  const auto copy = [&](amqp_flags_t flag, amqp_bytes_t& field) {
    if ((props_._flags & flag) == 0) return;
    field = AmqpBytes(strings_.emplace_back(AmqpText(field)));
  };
  copy(AMQP_BASIC_CONTENT_TYPE_FLAG, props_.content_type);
  copy(AMQP_BASIC_CONTENT_ENCODING_FLAG, props_.content_encoding);
  copy(AMQP_BASIC_CORRELATION_ID_FLAG, props_.correlation_id);
  copy(AMQP_BASIC_REPLY_TO_FLAG, props_.reply_to);
  copy(AMQP_BASIC_EXPIRATION_FLAG, props_.expiration);
  copy(AMQP_BASIC_MESSAGE_ID_FLAG, props_.message_id);
  copy(AMQP_BASIC_TYPE_FLAG, props_.type);
  copy(AMQP_BASIC_USER_ID_FLAG, props_.user_id);
  copy(AMQP_BASIC_APP_ID_FLAG, props_.app_id);
  copy(AMQP_BASIC_CLUSTER_ID_FLAG, props_.cluster_id);
  if ((props_._flags & AMQP_BASIC_HEADERS_FLAG) != 0 &&
      amqp_table_clone(&props.headers, &props_.headers, &pool_) != AMQP_STATUS_OK) {
    // Out of memory: no headers rather than dangling ones.
    props_._flags &= ~AMQP_BASIC_HEADERS_FLAG;
    props_.headers = amqp_empty_table;
  }
}

CapturedMessage::~CapturedMessage() { empty_amqp_pool(&pool_); }

void CopyProperties::Build(const amqp_basic_properties_t& original, std::vector<Header> replace,
                           std::initializer_list<std::string_view> drop) {
  props_ = original;
  replace_ = std::move(replace);
  headers_.clear();
  const auto replaced = [&](std::string_view key) {
    for (const Header& h : replace_) {
      if (h.name == key) return true;
    }
    for (std::string_view d : drop) {
      if (d == key) return true;
    }
    return false;
  };
  if ((original._flags & AMQP_BASIC_HEADERS_FLAG) != 0) {
    for (int i = 0; i < original.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = original.headers.entries[i];
      if (!replaced(AmqpText(e.key))) headers_.push_back(e);
    }
  }
  for (const Header& h : replace_) {
    amqp_table_entry_t e;
    e.key = AmqpBytes(h.name);
    if (const auto* text = std::get_if<std::string>(&h.value)) {
      e.value.kind = AMQP_FIELD_KIND_UTF8;
      e.value.value.bytes = AmqpBytes(*text);
    } else {
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = std::get<int64_t>(h.value);
    }
    headers_.push_back(e);
  }
  props_._flags &= ~AMQP_BASIC_HEADERS_FLAG;
  props_.headers = amqp_empty_table;
  if (!headers_.empty()) {
    props_._flags |= AMQP_BASIC_HEADERS_FLAG;
    props_.headers.num_entries = static_cast<int>(headers_.size());
    props_.headers.entries = headers_.data();
  }
}

}  // namespace mqs::amqp
