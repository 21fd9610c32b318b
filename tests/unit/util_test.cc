#include <catch2/catch.hpp>

#include <set>
#include <thread>
#include <vector>

#include "util/message_id.h"
#include "util/strings.h"
#include "util/wakeup_queue.h"

TEST_CASE("util: message ids are canonical v4 UUIDs and distinct") {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    const std::string id = mqs::util::NewMessageId();
    REQUIRE(id.size() == 36);
    CHECK(id[8] == '-');
    CHECK(id[14] == '4');
    CHECK((id[19] == '8' || id[19] == '9' || id[19] == 'a' || id[19] == 'b'));
    seen.insert(id);
  }
  CHECK(seen.size() == 10000);
}

TEST_CASE("util: StrCat accepts std and absl views and numbers") {
  const std::string_view a = "a";
  const absl::string_view b = "b";
  CHECK(mqs::util::StrCat(a, b, 1, "-", 2.5, std::string("s"), 'c') == "ab1-2.5sc");
}

TEST_CASE("util: WakeupQueue hands every item from many producers to one consumer") {
  mqs::util::WakeupQueue<int> q;
  REQUIRE(q.ok());
  constexpr int kThreads = 4, kPerThread = 5000;
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&q, t] {
      for (int i = 0; i < kPerThread; ++i) q.Push(t * kPerThread + i);
    });
  }
  for (auto& t : producers) t.join();
  std::vector<int> out;
  q.Drain(out);
  CHECK(out.size() == static_cast<size_t>(kThreads * kPerThread));
  std::set<int> distinct(out.begin(), out.end());
  CHECK(distinct.size() == out.size());
  q.Drain(out);
  CHECK(out.empty());
}

TEST_CASE("util: ForLog escapes control characters and bounds the length") {
  CHECK(mqs::util::ForLog("plain name") == "plain name");
  CHECK(mqs::util::ForLog(std::string("a\nb\x7f\0c", 6)) == "a\\x0ab\\x7f\\x00c");
  CHECK(mqs::util::ForLog(std::string(300, 'x'), 10) == "xxxxxxxxxx...");
  CHECK(mqs::util::HasControlChars("a\tb"));
  CHECK_FALSE(mqs::util::HasControlChars("usdtsvr-0 (ü)"));
}
