#include "recorded.h"

#include <sstream>
#include <utility>

namespace mqs::it {

double Seconds(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count() / 1000.0;
}

std::string Fixed(double v, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

std::vector<pb::PublishRequest> MakeRequests(const std::string& business, const std::string& tag,
                                             int n, uint64_t first_sequence) {
  std::vector<pb::PublishRequest> requests;
  requests.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const std::string id = tag + "-" + std::to_string(i);
    requests.push_back(
        MakePublish(business, id, first_sequence + static_cast<uint64_t>(i), "payload-" + id));
  }
  return requests;
}

AsyncPublishStream::Options Recorded(History& h, std::vector<pb::PublishRequest> requests,
                                     double rate, Clock::duration timeout) {
  AsyncPublishStream::Options o;
  o.requests = std::move(requests);
  o.rate = rate;
  o.timeout = timeout;
  o.on_written = [&h](const pb::PublishRequest& r) { h.Sent(r.message_id()); };
  o.on_result = [&h](const pb::PublishResult& r) { h.Result(r); };
  return o;
}

Subscriber::Options Recording(History& h, const std::string& business, const std::string& name,
                              uint32_t prefetch) {
  return {.business = business,
          .prefetch = prefetch,
          .consumer_name = name,
          .auto_ack = true,
          .on_delivery = [&h, name](const pb::Delivery& d) { h.Delivered(name, d); }};
}

}  // namespace mqs::it
