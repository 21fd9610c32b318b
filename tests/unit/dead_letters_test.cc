// Dead letters without a broker: x-death parsing, the replayed copy's
// properties, request limits, targets and deadlines (amqp/dead_letters.h).
#include "amqp/dead_letters.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "amqp/connection.h"
#include "config/config.h"
#include "util/mutex.h"

namespace {

using mqs::amqp::AmqpText;
using mqsidecar::v1::DeadLetter;
using namespace std::chrono_literals;

amqp_field_value_t Utf8(const char* s) {
  amqp_field_value_t v;
  v.kind = AMQP_FIELD_KIND_UTF8;
  v.value.bytes = amqp_cstring_bytes(s);
  return v;
}

amqp_field_value_t I64(int64_t n) {
  amqp_field_value_t v;
  v.kind = AMQP_FIELD_KIND_I64;
  v.value.i64 = n;
  return v;
}

amqp_table_entry_t Entry(const char* key, amqp_field_value_t value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value = value;
  return e;
}

// What RabbitMQ 3.10 puts on a message rejected from `queue`: x-death is an
// array of tables, the most recent first.
struct DeathHeaders {
  std::vector<amqp_field_value_t> keys;
  std::vector<amqp_table_entry_t> first, second;
  std::vector<amqp_field_value_t> deaths;
  std::vector<amqp_table_entry_t> headers;
  amqp_table_t table{};

  explicit DeathHeaders(bool with_routing_key = true) {
    keys = {Utf8("orders.created"), Utf8("other.key")};
    amqp_field_value_t time;
    time.kind = AMQP_FIELD_KIND_TIMESTAMP;
    time.value.u64 = 1700000000;
    amqp_field_value_t routing_keys;
    routing_keys.kind = AMQP_FIELD_KIND_ARRAY;
    routing_keys.value.array.num_entries = static_cast<int>(keys.size());
    routing_keys.value.array.entries = keys.data();
    first = {Entry("count", I64(2)), Entry("reason", Utf8("rejected")),
             Entry("queue", Utf8("biz.queue")), Entry("time", time),
             Entry("exchange", Utf8("biz"))};
    if (with_routing_key) first.push_back(Entry("routing-keys", routing_keys));
    second = {Entry("count", I64(1)), Entry("reason", Utf8("expired")),
              Entry("queue", Utf8("older.queue"))};
    for (auto* t : {&first, &second}) {
      amqp_field_value_t v;
      v.kind = AMQP_FIELD_KIND_TABLE;
      v.value.table.num_entries = static_cast<int>(t->size());
      v.value.table.entries = t->data();
      deaths.push_back(v);
    }
    amqp_field_value_t array;
    array.kind = AMQP_FIELD_KIND_ARRAY;
    array.value.array.num_entries = static_cast<int>(deaths.size());
    array.value.array.entries = deaths.data();
    headers = {Entry("tenant", Utf8("acme")), Entry("x-death", array),
               Entry("x-first-death-reason", Utf8("rejected")), Entry("x-delivery-count", I64(4))};
    table.num_entries = static_cast<int>(headers.size());
    table.entries = headers.data();
  }
};

}  // namespace

TEST_CASE("dead letters: the first x-death entry says why, where, when and how often") {
  DeathHeaders h;
  DeadLetter letter;
  REQUIRE(mqs::amqp::ParseDeath(h.table, &letter));
  CHECK(letter.reason() == "rejected");
  CHECK(letter.queue() == "biz.queue");
  CHECK(letter.count() == 2);
  CHECK(letter.dead_lettered_at_ms() == 1700000000000);
  CHECK(letter.original_exchange() == "biz");
  CHECK(letter.original_routing_key() == "orders.created");
  CHECK(mqs::amqp::ReplayRoutingKey(letter, "fallback") == "orders.created");
}

TEST_CASE("dead letters: no x-death, or a malformed one, leaves the facts empty") {
  amqp_table_t empty{};
  DeadLetter letter;
  CHECK_FALSE(mqs::amqp::ParseDeath(empty, &letter));
  CHECK(mqs::amqp::ReplayRoutingKey(letter, "got.with") == "got.with");

  std::vector<amqp_table_entry_t> entries = {Entry("x-death", Utf8("not an array"))};
  amqp_table_t bad{static_cast<int>(entries.size()), entries.data()};
  CHECK_FALSE(mqs::amqp::ParseDeath(bad, &letter));
  CHECK(letter.reason().empty());
}

TEST_CASE("dead letters: without routing-keys the replay falls back to the key it was got with") {
  DeathHeaders h(/*with_routing_key=*/false);
  DeadLetter letter;
  REQUIRE(mqs::amqp::ParseDeath(h.table, &letter));
  CHECK(letter.original_routing_key().empty());
  CHECK(mqs::amqp::ReplayRoutingKey(letter, "orders.created") == "orders.created");
}

TEST_CASE("dead letters: a listed message is the Delivery Subscribe would show, plus x-death") {
  DeathHeaders h;
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                 AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  props.headers = h.table;
  props.message_id = amqp_cstring_bytes("m-1");
  props.content_type = amqp_cstring_bytes("text/plain");
  props.timestamp = 1700000001;
  const DeadLetter letter = mqs::amqp::ToDeadLetter(props, amqp_cstring_bytes("body"), "biz",
                                                    "biz.dlx", "orders.created");
  const auto& d = letter.message();
  CHECK(d.business() == "biz");
  CHECK(d.exchange() == "biz.dlx");
  CHECK(d.routing_key() == "orders.created");
  CHECK(d.payload() == "body");
  CHECK(d.message_id() == "m-1");
  CHECK(d.content_type() == "text/plain");
  CHECK(d.published_at_ms() == 1700000001000);
  CHECK(d.delivery_count() == 4);
  CHECK(d.headers().at("tenant") == "acme");
  CHECK(d.headers().count("x-death") == 1);
  CHECK(letter.reason() == "rejected");
  CHECK(letter.queue() == "biz.queue");
}

TEST_CASE("dead letters: a replayed copy keeps everything but the queue's delivery count") {
  DeathHeaders h;
  amqp_basic_properties_t original{};
  original._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                    AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
  original.headers = h.table;
  original.message_id = amqp_cstring_bytes("m-1");
  original.correlation_id = amqp_cstring_bytes("c-1");
  original.delivery_mode = 2;

  mqs::amqp::ReplayProperties props;
  props.Build(original);
  const amqp_basic_properties_t& p = *props.props();
  CHECK(props.replayed() == 1);
  CHECK(AmqpText(p.message_id) == "m-1");
  CHECK(AmqpText(p.correlation_id) == "c-1");
  CHECK(p.delivery_mode == 2);
  CHECK(p._flags == original._flags);
  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(p.headers.num_entries));
  for (int i = 0; i < p.headers.num_entries; ++i) {
    keys.emplace_back(AmqpText(p.headers.entries[i].key));
  }
  CHECK(keys == std::vector<std::string>{"tenant", "x-death", "x-first-death-reason",
                                         "x-mq-sidecar-replayed"});
  CHECK(p.headers.entries[3].value.kind == AMQP_FIELD_KIND_I64);
  CHECK(p.headers.entries[3].value.value.i64 == 1);

  // Replayed again: the count goes up, the header is not doubled.
  amqp_basic_properties_t again = p;
  mqs::amqp::ReplayProperties second;
  second.Build(again);
  CHECK(second.replayed() == 2);
  CHECK(second.props()->headers.num_entries == 4);

  // No headers at all: only the mark.
  amqp_basic_properties_t bare{};
  mqs::amqp::ReplayProperties third;
  third.Build(bare);
  REQUIRE(third.props()->headers.num_entries == 1);
  CHECK((third.props()->_flags & AMQP_BASIC_HEADERS_FLAG) != 0);
}

TEST_CASE("dead letters: limits, message ids and deadlines") {
  CHECK(mqs::amqp::ListLimit(0) == 100);
  CHECK(mqs::amqp::ListLimit(5) == 5);
  CHECK(mqs::amqp::ListLimit(1000) == 1000);
  CHECK(mqs::amqp::ListLimit(5000) == 1000);

  mqsidecar::v1::ReplayDeadLettersRequest r;
  r.set_message_id(std::string(255, 'a'));
  CHECK(mqs::amqp::ValidateReplay(r).ok());
  r.set_message_id(std::string(256, 'a'));
  CHECK(mqs::amqp::ValidateReplay(r).code() == absl::StatusCode::kInvalidArgument);

  const auto now = std::chrono::system_clock::now();
  const auto steady = std::chrono::steady_clock::now();
  // No deadline: the cap.
  CHECK(mqs::amqp::RequestDeadline(std::chrono::system_clock::time_point::max(), now, steady) ==
        steady + 30s);
  // 5 s: 100 ms earlier, so the caller reads our status.
  CHECK(mqs::amqp::RequestDeadline(now + 5s, now, steady) == steady + 4900ms);
  // 500 ms: a tenth earlier.
  CHECK(mqs::amqp::RequestDeadline(now + 500ms, now, steady) == steady + 450ms);
  // A minute: capped.
  CHECK(mqs::amqp::RequestDeadline(now + 60s, now, steady) == steady + 30s);
  // Already past: now.
  CHECK(mqs::amqp::RequestDeadline(now - 1s, now, steady) == steady);
}

TEST_CASE("dead letters: a consumer business's dead letters are in <queue>.dead") {
  mqs::config::Config config;
  mqs::config::Consumer c;
  c.name = "usdt.transfer";
  c.exchange = "usdt";
  c.queue = "usdt.transfer.queue";
  config.consumers.push_back(c);
  auto target = mqs::amqp::ResolveDeadLetterTarget(config, "usdt.transfer");
  REQUIRE(target.ok());
  CHECK(target->business == "usdt.transfer");
  CHECK(target->dead_queue == "usdt.transfer.queue.dead");
  CHECK(target->exchange == "usdt");
  auto unknown = mqs::amqp::ResolveDeadLetterTarget(config, "nope");
  CHECK(unknown.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(unknown.status().message()), Catch::Contains("usdt.transfer"));
}

TEST_CASE("dead letters: a stopped worker answers UNAVAILABLE at once") {
  mqs::config::Broker broker;
  broker.uris = {"amqp://guest:guest@127.0.0.1:1/"};
  mqs::amqp::DeadLetterWorker worker(broker);
  worker.Start();
  worker.Stop();
  absl::Status got = absl::OkStatus();
  worker.Replay(
      {"biz", "biz.queue.dead", "biz"}, 0, "", std::chrono::steady_clock::now() + 1s,
      [&](absl::Status s, const mqsidecar::v1::ReplayDeadLettersResponse&) { got = std::move(s); });
  CHECK(got.code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("dead letters: a broker out of reach is UNAVAILABLE") {
  mqs::config::Broker broker;
  broker.uris = {"amqp://guest:guest@127.0.0.1:1/"};  // nothing listens on port 1
  broker.connect_timeout = 1s;
  mqs::amqp::DeadLetterWorker worker(broker);
  worker.Start();
  mqs::util::Mutex mu;
  mqs::util::CondVar cv;
  std::optional<absl::Status> got;
  worker.List({"biz", "biz.queue.dead", "biz"}, 10, std::chrono::steady_clock::now() + 5s,
              [&](const absl::StatusOr<mqsidecar::v1::ListDeadLettersResponse>& r) {
                mqs::util::MutexLock lock(&mu);
                got = r.status();
                cv.SignalAll();
              });
  {
    mqs::util::MutexLock lock(&mu);
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!got.has_value() && cv.WaitUntil(&mu, until)) {
    }
    REQUIRE(got.has_value());
    CHECK(got->code() == absl::StatusCode::kUnavailable);
  }
  worker.Stop();
}

TEST_CASE("dead letters: one exhausted by delayed retry says so, and its replay starts afresh") {
  DeathHeaders h;  // x-death as a retry queue's expiry left it
  std::vector<amqp_table_entry_t> headers = h.headers;
  headers.push_back(Entry("x-mq-sidecar-retries", I64(4)));
  headers.push_back(Entry("x-mq-sidecar-exchange", Utf8("usdt")));
  headers.push_back(Entry("x-mq-sidecar-routing-key", Utf8("transfer.approved")));
  headers.push_back(Entry("x-mq-sidecar-dead-reason", Utf8("retries_exhausted")));
  headers.push_back(Entry("x-mq-sidecar-dead-queue", Utf8("usdt.queue")));
  headers.push_back(Entry("x-mq-sidecar-dead-at-ms", I64(1700000000123)));
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_HEADERS_FLAG;
  props.headers = amqp_table_t{static_cast<int>(headers.size()), headers.data()};

  const DeadLetter letter =
      mqs::amqp::ToDeadLetter(props, amqp_cstring_bytes("b"), "usdt", "usdt.dlx", "usdt.queue");
  CHECK(letter.reason() == "retries_exhausted");
  CHECK(letter.queue() == "usdt.queue");
  CHECK(letter.dead_lettered_at_ms() == 1700000000123);
  CHECK(letter.original_exchange() == "usdt");
  CHECK(letter.original_routing_key() == "transfer.approved");
  CHECK(mqs::amqp::ReplayRoutingKey(letter, "usdt.queue") == "transfer.approved");
  CHECK(letter.message().attempt() == 5);
  CHECK(letter.message().headers().count("x-mq-sidecar-retries") == 0);

  mqs::amqp::ReplayProperties replay;
  replay.Build(props);
  std::vector<std::string> keys;
  for (int i = 0; i < replay.props()->headers.num_entries; ++i) {
    keys.emplace_back(AmqpText(replay.props()->headers.entries[i].key));
  }
  CHECK(keys == std::vector<std::string>{"tenant", "x-death", "x-first-death-reason",
                                         "x-mq-sidecar-replayed"});
}
