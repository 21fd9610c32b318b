// PublishBatch: the frames it encodes, read back with rabbitmq-c's decoders,
// and its writes over a socket pair. No broker.
#include "amqp/publish_batch.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

namespace {

using mqs::amqp::PublishBatch;

struct Frame {
  uint8_t type = 0;
  uint16_t channel = 0;
  std::string payload;
};

uint32_t U32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

// Splits `data` into frames, checking each header and frame-end octet.
std::vector<Frame> Parse(const std::string& data) {
  std::vector<Frame> frames;
  size_t at = 0;
  while (at < data.size()) {
    REQUIRE(data.size() - at >= 8);
    Frame f;
    f.type = static_cast<uint8_t>(data[at]);
    f.channel = static_cast<uint16_t>((static_cast<uint8_t>(data[at + 1]) << 8) |
                                      static_cast<uint8_t>(data[at + 2]));
    const uint32_t size = U32(data, at + 3);
    REQUIRE(data.size() - at >= 8 + size);
    f.payload = data.substr(at + 7, size);
    REQUIRE(static_cast<uint8_t>(data[at + 7 + size]) == AMQP_FRAME_END);
    frames.push_back(std::move(f));
    at += 8 + size;
  }
  return frames;
}

amqp_bytes_t Bytes(std::string& s) { return amqp_bytes_t{s.size(), s.data()}; }

std::string Text(amqp_bytes_t b) { return std::string(static_cast<const char*>(b.bytes), b.len); }

amqp_basic_properties_t Props(const char* message_id) {
  amqp_basic_properties_t p{};
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
  p.delivery_mode = 2;
  p.message_id = amqp_cstring_bytes(message_id);
  return p;
}

}  // namespace

TEST_CASE("publish batch: method, header and body frames decode as the publish that was added") {
  PublishBatch batch;
  const std::string body(10000, 'b');
  REQUIRE(batch.Add(7, "ex", "rk.1", true, Props("m-1"), body, 4096).ok());
  REQUIRE(batch.Add(7, "ex2", "", false, Props("m-2"), "", 4096).ok());

  const std::vector<Frame> frames = Parse(batch.data());
  // m-1: method, header, 3 body frames (4088 + 4088 + 1824); m-2: method, header.
  REQUIRE(frames.size() == 7);
  for (const Frame& f : frames) CHECK(f.channel == 7);
  CHECK(frames[0].type == AMQP_FRAME_METHOD);
  CHECK(frames[1].type == AMQP_FRAME_HEADER);
  CHECK(frames[2].type == AMQP_FRAME_BODY);
  CHECK(frames[2].payload.size() == 4088);
  CHECK(frames[3].payload.size() == 4088);
  CHECK(frames[4].payload.size() == 1824);
  CHECK(frames[2].payload + frames[3].payload + frames[4].payload == body);
  CHECK(frames[5].type == AMQP_FRAME_METHOD);
  CHECK(frames[6].type == AMQP_FRAME_HEADER);

  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  // Method: basic.publish with the exchange, routing key and mandatory flag.
  std::string method = frames[0].payload;
  REQUIRE(U32(method, 0) == AMQP_BASIC_PUBLISH_METHOD);
  std::string args = method.substr(4);
  void* decoded = nullptr;
  REQUIRE(amqp_decode_method(AMQP_BASIC_PUBLISH_METHOD, &pool, Bytes(args), &decoded) ==
          AMQP_STATUS_OK);
  auto* publish = static_cast<amqp_basic_publish_t*>(decoded);
  CHECK(Text(publish->exchange) == "ex");
  CHECK(Text(publish->routing_key) == "rk.1");
  CHECK(publish->mandatory == 1);
  CHECK(publish->immediate == 0);

  // Header: class basic, weight 0, the body size, then the properties.
  const std::string& header = frames[1].payload;
  CHECK(((static_cast<uint8_t>(header[0]) << 8) | static_cast<uint8_t>(header[1])) ==
        AMQP_BASIC_CLASS);
  CHECK(header[2] == 0);
  CHECK(header[3] == 0);
  CHECK(U32(header, 4) == 0);
  CHECK(U32(header, 8) == 10000);
  std::string props = header.substr(12);
  REQUIRE(amqp_decode_properties(AMQP_BASIC_CLASS, &pool, Bytes(props), &decoded) ==
          AMQP_STATUS_OK);
  auto* p = static_cast<amqp_basic_properties_t*>(decoded);
  CHECK(Text(p->message_id) == "m-1");
  CHECK(p->delivery_mode == 2);

  // The empty body: a header saying 0 bytes, and no body frame.
  CHECK(U32(frames[6].payload, 8) == 0);
  args = frames[5].payload.substr(4);
  REQUIRE(amqp_decode_method(AMQP_BASIC_PUBLISH_METHOD, &pool, Bytes(args), &decoded) ==
          AMQP_STATUS_OK);
  CHECK(static_cast<amqp_basic_publish_t*>(decoded)->mandatory == 0);
  empty_amqp_pool(&pool);
}

TEST_CASE("publish batch: properties too large for one frame fail that message only") {
  PublishBatch batch;
  REQUIRE(batch.Add(1, "ex", "rk", true, Props("ok-1"), "x", 4096).ok());
  const std::string before = batch.data();

  std::string big(3000, 'v');
  amqp_table_entry_t entries[2];
  entries[0].key = amqp_cstring_bytes("a");
  entries[1].key = amqp_cstring_bytes("b");
  for (auto& e : entries) {
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = Bytes(big);
  }
  amqp_basic_properties_t props = Props("too-big");
  props._flags |= AMQP_BASIC_HEADERS_FLAG;
  props.headers.num_entries = 2;
  props.headers.entries = entries;
  const absl::Status s = batch.Add(1, "ex", "rk", true, props, "x", 4096);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("do not fit in one AMQP frame"));
  // Nothing of it was appended; the batch goes on.
  CHECK(batch.data() == before);
  REQUIRE(batch.Add(1, "ex", "rk", true, Props("ok-2"), "y", 4096).ok());
  CHECK(Parse(batch.data()).size() == 6);
}

TEST_CASE("publish batch: WriteTo delivers everything, and gives up on a peer that reads nothing") {
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  REQUIRE(fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK) == 0);

  PublishBatch batch;
  REQUIRE(batch.Add(1, "ex", "rk", true, Props("w-1"), std::string(300, 'p'), 131072).ok());
  const std::string expected = batch.data();
  REQUIRE(batch.WriteTo(fds[0], std::chrono::milliseconds(1000)).ok());
  CHECK(batch.empty());
  std::string got(expected.size(), '\0');
  size_t have = 0;
  while (have < got.size()) {
    const ssize_t n = read(fds[1], got.data() + have, got.size() - have);
    REQUIRE(n > 0);
    have += static_cast<size_t>(n);
  }
  CHECK(got == expected);

  // More than the socket buffers hold, and nobody reads: a clear error after
  // the timeout, not a hang.
  for (int i = 0; i < 64; ++i) {
    REQUIRE(
        batch.Add(1, "ex", "rk", true, Props("fill"), std::string(size_t{256} * 1024, 'f'), 131072)
            .ok());
  }
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = batch.WriteTo(fds[0], std::chrono::milliseconds(100));
  CHECK(s.code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(s.message()), Catch::Contains("took no data"));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  close(fds[0]);
  close(fds[1]);
}
