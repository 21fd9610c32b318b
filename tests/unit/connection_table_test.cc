#include "server/connection_table.h"

#include <catch2/catch.hpp>
#include <optional>

using mqs::server::ConnectionTable;

TEST_CASE("unit: connection table: streams past the limit fail on that connection alone") {
  ConnectionTable table(2);
  const std::string a = ConnectionTable::PeerOfFd(7);
  const std::string b = "ipv4:127.0.0.1:41234";
  auto first = table.OpenStream(a);
  auto second = table.OpenStream(a);
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  const auto third = table.OpenStream(a);
  REQUIRE_FALSE(third.ok());
  CHECK(third.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(third.status().message()),
             Catch::Contains("limits.max_streams_per_connection"));
  CHECK(table.Streams(a) == 2);
  // Another connection has its own count.
  auto other = table.OpenStream(b);
  CHECK(other.ok());
  // A slot released (destroyed, or moved over) frees its place once.
  {
    ConnectionTable::StreamSlot moved = std::move(*first);
    CHECK(table.Streams(a) == 2);
  }
  CHECK(table.Streams(a) == 1);
  auto again = table.OpenStream(a);
  CHECK(again.ok());
  *second = std::move(*again);  // second's place is freed, again's kept
  CHECK(table.Streams(a) == 1);
}

TEST_CASE("unit: connection table: a connection's client is the socket it came in on") {
  ConnectionTable table(10);
  table.Accepted(9, "otc");
  table.Accepted(10, "");
  CHECK(table.ClientOf(ConnectionTable::PeerOfFd(9)) == "otc");
  CHECK(table.ClientOf(ConnectionTable::PeerOfFd(10)).empty());
  // A TCP peer, an unknown fd, a malformed name: no client.
  CHECK(table.ClientOf("ipv4:127.0.0.1:9").empty());
  CHECK(table.ClientOf("fd:11").empty());
  CHECK(table.ClientOf("fd:9x").empty());
  CHECK(table.ClientOf("fd:").empty());
  // A later connection on the same fd number replaces the earlier.
  table.Accepted(9, "");
  CHECK(table.ClientOf("fd:9").empty());
}
