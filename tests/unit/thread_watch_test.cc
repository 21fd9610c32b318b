// ThreadWatch (util/thread_watch.h): busy, idle, and what counts as wedged.
#include "util/thread_watch.h"

#include <catch2/catch.hpp>
#include <chrono>

namespace mqs::util {
namespace {

using std::chrono::seconds;

TEST_CASE("thread watch: busy for longer than the limit is wedged, idle never is") {
  ThreadWatch w("publisher");
  const auto t0 = ThreadWatch::Clock::now();
  w.Busy(t0);
  CHECK(w.BusyFor(t0 + seconds(3)) == seconds(3));
  CHECK(Wedged({&w}, t0 + seconds(3), seconds(2)) ==
        std::vector<std::string>{"publisher (busy 3 s)"});
  CHECK(Wedged({&w}, t0 + seconds(3), seconds(5)).empty());

  w.Idle();  // waiting by design, however long
  CHECK(w.BusyFor(t0 + seconds(3600)) == ThreadWatch::Clock::duration::zero());
  CHECK(Wedged({&w}, t0 + seconds(3600), seconds(2)).empty());

  w.Busy(t0 + seconds(10));  // woke again: counted from the wake-up
  CHECK(Wedged({&w}, t0 + seconds(11), seconds(2)).empty());
}

TEST_CASE("thread watch: a thread that never reached its first wait counts as busy") {
  ThreadWatch w("grpc");
  ThreadWatch idle("control");
  idle.Idle();
  const auto later = ThreadWatch::Clock::now() + seconds(60);
  CHECK(Wedged({&w, &idle}, later, seconds(30)).size() == 1);
}

}  // namespace
}  // namespace mqs::util
