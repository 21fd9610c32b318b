// Helpers shared by the fault and cluster tests: publish streams and
// subscribers that record into a History (checker.h), and the formatting of
// the timings they print.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "checker.h"
#include "harness.h"

namespace mqs::it {

// `d` in seconds, with millisecond resolution.
double Seconds(Clock::duration d);
// `v` with `digits` decimals.
std::string Fixed(double v, int digits = 2);

// `n` publishes to `business` with message ids <tag>-0 .. <tag>-(n-1),
// sequences from `first_sequence`, payload "payload-<id>".
std::vector<pb::PublishRequest> MakeRequests(const std::string& business, const std::string& tag,
                                             int n, uint64_t first_sequence = 1);

// Options for an AsyncPublishStream that records into `h`: every request
// written as sent, every result as its outcome.
AsyncPublishStream::Options Recorded(History& h, std::vector<pb::PublishRequest> requests,
                                     double rate = 0,
                                     Clock::duration timeout = std::chrono::seconds(240));

// A subscriber that acks every delivery and records it as processed by `name`.
Subscriber::Options Recording(History& h, const std::string& business, const std::string& name,
                              uint32_t prefetch = 64);

}  // namespace mqs::it
