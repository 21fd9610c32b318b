// CallBase and OpGate (server/async_call.h) driven directly: a fake call whose
// "operations" are counters, so the lifecycle every call type shares is
// checked without gRPC or a broker. The TSan pass runs the two-thread case.
#include "server/async_call.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <vector>

namespace mqs::server {
namespace {

using namespace std::chrono_literals;

struct Counters {
  std::atomic<int> deleted{0};
  std::atomic<int> started{0};  // operations that reached the (fake) completion queue
};

// FakeCall: a call whose operations touch only Counters::started; the test
// plays gRPC (completions, the done tag) and the I/O threads (owed callbacks).
class FakeCall final : public CallBase {
 public:
  FakeCall(OpGate& gate, CallCount& calls, Counters& counters)
      : CallBase(gate, calls), counters_(counters) {
    Accepted();
  }
  ~FakeCall() override { counters_.deleted.fetch_add(1); }

  bool StartOp() {
    Lock lock(this);
    return StartOpLocked([this] { counters_.started.fetch_add(1); });
  }
  bool StartFinish() {
    Lock lock(this);
    return StartFinishLocked([this] { counters_.started.fetch_add(1); });
  }
  // A completion handler: retires its operation.
  void OpCompleted() {
    Lock lock(this);
    OpDoneLocked();
  }
  // gRPC's done tag.
  void DoneTag() {
    Lock lock(this);
    SetDoneLocked();
  }
  // An I/O thread promises a callback (a publish result to come).
  void Owe() {
    Lock lock(this);
    OweLocked();
  }
  // The owed callback arrives: settles the debt and answers with a finish,
  // as a unary Publish does with its result. Returns whether the finish was
  // started (reached the completion queue).
  bool Pay() {
    Lock lock(this);
    PaidLocked();
    return StartFinishLocked([this] { counters_.started.fetch_add(1); });
  }
  // The owed callback arrives and only settles the debt (a consumer's OnClosed).
  void Settle() {
    Lock lock(this);
    PaidLocked();
  }

 private:
  Counters& counters_;
};

TEST_CASE("CallBase: an operation started after the gate closes is refused") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  REQUIRE(call->StartOp());
  CHECK(counters.started == 1);
  gate.Close();
  CHECK_FALSE(call->StartOp());
  CHECK_FALSE(call->StartFinish());
  CHECK(counters.started == 1);  // nothing reached the queue after the close
  call->OpCompleted();
  CHECK(counters.deleted == 0);  // not done yet
  call->DoneTag();
  CHECK(counters.deleted == 1);
  CHECK(calls.WaitZero(std::chrono::steady_clock::now()));
}

TEST_CASE("CallBase: an operation started after the done tag is refused") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  call->Owe();  // keeps the call alive past the done tag
  call->DoneTag();
  CHECK(counters.deleted == 0);
  CHECK_FALSE(call->Pay());  // the finish is refused; the call goes
  CHECK(counters.started == 0);
  CHECK(counters.deleted == 1);
}

TEST_CASE(
    "CallBase: a call is deleted exactly once, after its last operation and owed callback "
    "retire, never before") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  REQUIRE(call->StartOp());  // a read
  REQUIRE(call->StartOp());  // a write
  call->Owe();
  call->DoneTag();  // cancelled: gRPC is done, but two ops and a callback remain
  CHECK(counters.deleted == 0);
  CHECK_FALSE(calls.WaitZero(std::chrono::steady_clock::now()));
  call->OpCompleted();
  CHECK(counters.deleted == 0);  // an operation and the callback remain
  CHECK_FALSE(call->Pay());      // done: no finish starts
  CHECK(counters.deleted == 0);  // the write is still pending
  CHECK_FALSE(calls.WaitZero(std::chrono::steady_clock::now()));
  call->OpCompleted();
  CHECK(counters.deleted == 1);
  CHECK(calls.WaitZero(std::chrono::steady_clock::now()));
}

TEST_CASE("CallBase: a call whose operations retire before its owed callback waits for it") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  REQUIRE(call->StartOp());
  call->Owe();
  call->DoneTag();
  call->OpCompleted();
  CHECK(counters.deleted == 0);  // the I/O thread still owes its callback
  call->Settle();
  CHECK(counters.deleted == 1);
}

TEST_CASE("CallBase: the finish starts at most once") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  REQUIRE(call->StartFinish());
  CHECK_FALSE(call->StartFinish());
  CHECK(counters.started == 1);
  call->OpCompleted();
  call->DoneTag();
  CHECK(counters.deleted == 1);
}

TEST_CASE(
    "CallBase: a callback owed by an I/O thread that arrives after shutdown does not touch the "
    "completion queue") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  call->Owe();  // a publish awaits its confirm
  // Shutdown: the server cancels the call (done tag), closes the gate and
  // shuts the queue down.
  call->DoneTag();
  gate.Close();
  CHECK(counters.deleted == 0);
  // The confirm comes later, on the publisher thread.
  std::thread io([&] { CHECK_FALSE(call->Pay()); });
  io.join();
  CHECK(counters.started == 0);
  CHECK(counters.deleted == 1);
  CHECK(calls.WaitZero(std::chrono::steady_clock::now()));
}

TEST_CASE("CallBase: an owed callback arriving after shutdown, before the done tag, is refused") {
  OpGate gate;
  CallCount calls;
  Counters counters;
  auto* call = new FakeCall(gate, calls, counters);
  call->Owe();
  gate.Close();  // the queue is closing; the done tag has not come yet
  CHECK_FALSE(call->Pay());
  CHECK(counters.started == 0);
  CHECK(counters.deleted == 0);  // gRPC still owes the done tag
  call->DoneTag();
  CHECK(counters.deleted == 1);
}

TEST_CASE("OpGate: Close waits for a start in progress") {
  OpGate gate;
  std::atomic<bool> inside{false};
  std::atomic<bool> closed{false};
  std::atomic<bool> closed_while_inside{false};
  std::thread starter([&] {
    OpGate::Pass pass(&gate);
    inside = true;
    std::this_thread::sleep_for(100ms);
    closed_while_inside = closed.load();
    inside = false;
  });
  while (!inside) std::this_thread::yield();
  gate.Close();
  closed = true;
  starter.join();
  CHECK_FALSE(closed_while_inside);
  OpGate::Pass pass(&gate);
  CHECK_FALSE(gate.open());
}

TEST_CASE("CallBase: concurrent retirements from two threads delete each call exactly once") {
  constexpr int kCalls = 2000;
  OpGate gate;
  CallCount calls;
  Counters counters;
  std::vector<FakeCall*> all;
  all.reserve(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto* call = new FakeCall(gate, calls, counters);
    REQUIRE(call->StartOp());
    call->Owe();
    all.push_back(call);
  }
  // The gRPC thread retires the operation and delivers the done tag while
  // an I/O thread pays the callback: whichever is last deletes the call.
  std::atomic<bool> go{false};
  std::thread grpc([&] {
    while (!go) std::this_thread::yield();
    for (FakeCall* call : all) {
      call->DoneTag();
      call->OpCompleted();
    }
  });
  std::thread io([&] {
    while (!go) std::this_thread::yield();
    for (FakeCall* call : all) call->Settle();
  });
  go = true;
  grpc.join();
  io.join();
  CHECK(counters.deleted == kCalls);
  CHECK(calls.WaitZero(std::chrono::steady_clock::now() + 1s));
}

}  // namespace
}  // namespace mqs::server
