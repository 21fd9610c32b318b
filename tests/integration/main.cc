// Catch2 main for the integration tests, plus a listener counting failed
// assertions so IntegrationTest can print daemon logs for failing tests only.
#define CATCH_CONFIG_MAIN
#include <atomic>
#include <catch2/catch.hpp>

#include "harness.h"

namespace mqs::it {
namespace {

std::atomic<int> g_failed_assertions{0};

struct FailureCounter : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    if (!stats.assertionResult.isOk()) ++g_failed_assertions;
    return true;
  }
};
CATCH_REGISTER_LISTENER(FailureCounter)

}  // namespace

int FailedAssertionCount() { return g_failed_assertions.load(); }

}  // namespace mqs::it
