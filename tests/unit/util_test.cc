#include <poll.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "util/log_limiter.h"
#include "util/message_id.h"
#include "util/strings.h"
#include "util/utf8.h"
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

namespace {
// Readable: whether `fd` polls readable within `ms`.
bool Readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1 && (p.revents & POLLIN) != 0;
}
}  // namespace

// As the I/O threads use it: the consumer sleeps in poll() on fd() and only
// wakes when a push (or Notify) makes it readable. Fails if Notify is a no-op
// (the consumer would sleep forever) or if Drain leaves the fd readable (the
// loop would spin).
TEST_CASE("util: WakeupQueue wakes a consumer sleeping in poll on every push edge") {
  mqs::util::WakeupQueue<int> q;
  REQUIRE(q.ok());
  CHECK_FALSE(Readable(q.fd(), 0));
  q.Push(1);
  CHECK(Readable(q.fd(), 0));
  std::vector<int> out;
  q.Drain(out);
  CHECK(out == std::vector<int>{1});
  CHECK_FALSE(Readable(q.fd(), 0));  // reset: an idle loop sleeps
  q.Notify();                        // a wake-up with no item (e.g. stop)
  CHECK(Readable(q.fd(), 0));
  q.Drain(out);
  CHECK(out.empty());

  // A consumer thread that only drains after poll() says readable receives
  // every item of concurrent producers, within a deadline.
  constexpr int kThreads = 3, kPerThread = 20000;
  std::atomic<int> received{0};
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    std::vector<int> batch;
    while (!stop.load()) {
      if (!Readable(q.fd(), 200)) continue;
      q.Drain(batch);
      received += static_cast<int>(batch.size());
    }
  });
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&q] {
      for (int i = 0; i < kPerThread; ++i) q.Push(i);
    });
  }
  for (auto& t : producers) t.join();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (received.load() < kThreads * kPerThread && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stop = true;
  consumer.join();
  CHECK(received.load() == kThreads * kPerThread);
}

TEST_CASE("util: ForLog escapes control characters and bounds the length") {
  CHECK(mqs::util::ForLog("plain name") == "plain name");
  CHECK(mqs::util::ForLog(std::string("a\nb\x7f\0c", 6)) == "a\\x0ab\\x7f\\x00c");
  CHECK(mqs::util::ForLog(std::string(300, 'x'), 10) == "xxxxxxxxxx...");
  CHECK(mqs::util::HasControlChars("a\tb"));
  CHECK_FALSE(mqs::util::HasControlChars("usdtsvr-0 (ü)"));
}

TEST_CASE("util: UTF-8 validation follows RFC 3629 and replaces each bad byte by U+FFFD") {
  using mqs::util::IsValidUtf8;
  using mqs::util::ToValidUtf8;
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(IsValidUtf8(""));
  CHECK(IsValidUtf8("plain ascii"));
  CHECK(IsValidUtf8("\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x92\xB8"));  // été € 💸
  CHECK(IsValidUtf8("\xF4\x8F\xBF\xBF"));                                 // U+10FFFF
  CHECK_FALSE(IsValidUtf8("\xFF"));
  CHECK_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  CHECK_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong
  CHECK_FALSE(IsValidUtf8("\xED\xA0\x80"));      // a surrogate
  CHECK_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(IsValidUtf8("\xE2\x82"));          // cut short
  CHECK(ToValidUtf8("ok") == "ok");
  CHECK(ToValidUtf8("a\xFF"
                    "b") == "a" + fffd + "b");
  CHECK(ToValidUtf8("\xE2\x82") == fffd + fffd);
  CHECK(ToValidUtf8("caf\xE9") == "caf" + fffd);  // Latin-1 é
  CHECK(ToValidUtf8("\xC3\xA9\xFF\xC3\xA9") == "\xC3\xA9" + fffd + "\xC3\xA9");
  for (const std::string s : {"\xFF\xFE", "\xC0\xAF", "\xED\xA0\x80", "x\xF4\x90\x80\x80y"}) {
    CHECK(IsValidUtf8(ToValidUtf8(s)));
  }
}

TEST_CASE(
    "util: LogLimiter lets a burst through per key and window, then counts what it held back") {
  using mqs::util::LogLimiter;
  using std::chrono::seconds;
  LogLimiter limiter(3, seconds(10));
  const LogLimiter::Clock::time_point t0{};
  for (int i = 0; i < 3; ++i) CHECK(limiter.Admit("billing", t0 + seconds(i)) == 0u);
  for (int i = 0; i < 100; ++i) CHECK_FALSE(limiter.Admit("billing", t0 + seconds(5)).has_value());
  // Another key has its own allowance.
  CHECK(limiter.Admit("", t0 + seconds(5)) == 0u);
  // The next window: the first line admitted carries the count held back.
  CHECK(limiter.Admit("billing", t0 + seconds(10)) == 100u);
  CHECK(limiter.Admit("billing", t0 + seconds(11)) == 0u);
}
