// cpp_peer: the C++ client library's side of the cross-language test
// (tests/polyglot/run.py), with the interface and output of the Python and
// Node examples (client/python/examples, client/node/examples):
//
//   cpp_peer produce --address A --business B [--routing-key K] [PAYLOAD]
//       one unary Publish (Client::Publish); one JSON line
//       {"message_id", "status", "error"}
//   cpp_peer produce ... --count N [--prefix P] [--timeout S]
//       N messages, payload and message_id P<n>, through one
//       mqsidecar::Publisher; one JSON summary line {"published", "results",
//       "seconds"}, a line on stderr per message not confirmed
//   cpp_peer work --address A --business B [--business B2 ...] [--name N]
//       one mqsidecar::Subscription per business until SIGINT/SIGTERM; one
//       JSON line per delivery acked {"business", "message_id", "payload",
//       "redelivered", "attempt"}; payload "fail" is retried, "poison"
//       rejected (dead letter)
//
// Exit codes as the examples': 0 every message confirmed (or a clean stop),
// 2 some not confirmed, 1 a gRPC or usage error.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "mqsidecar/client.h"

namespace {

namespace v1 = mqsidecar::v1;
using std::chrono::milliseconds;

struct Args {
  std::string address = "unix:///run/mq-sidecar/mq-sidecar.sock";
  std::vector<std::string> businesses;
  std::string routing_key;
  std::string payload = "hello";
  uint64_t count = 0;
  std::string prefix = "cpp-";
  double timeout_s = 30;
  std::string name = "cpp-worker";
};

void PrintLine(const nlohmann::json& j) {
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

int ProduceOne(mqsidecar::Client& client, const Args& a) {
  v1::PublishRequest req;
  req.set_business(a.businesses.front());
  req.set_routing_key(a.routing_key);
  req.set_payload(a.payload);
  req.set_content_type("application/json");
  const mqsidecar::PublishOutcome out =
      client.Publish(req, milliseconds(static_cast<int64_t>(a.timeout_s * 1000)));
  if (!out.status.ok()) {
    std::fprintf(stderr, "producer: %s: %s\n", mqsidecar::CodeName(out.status.error_code()).c_str(),
                 out.status.error_message().c_str());
    return 1;
  }
  PrintLine({{"message_id", out.result.message_id()},
             {"status", v1::PublishResult::Status_Name(out.result.status())},
             {"error", out.result.error()}});
  return out.confirmed() ? 0 : 2;
}

int ProduceMany(mqsidecar::Client& client, const Args& a) {
  const auto t0 = std::chrono::steady_clock::now();
  std::mutex mu;
  std::map<std::string, uint64_t> counts;  // guarded by mu
  const std::unique_ptr<mqsidecar::Publisher> publisher = client.NewPublisher();
  for (uint64_t n = 1; n <= a.count; ++n) {
    v1::PublishRequest req;
    req.set_business(a.businesses.front());
    req.set_routing_key(a.routing_key);
    req.set_payload(a.prefix + std::to_string(n));
    req.set_message_id(req.payload());
    req.set_sequence(n);
    publisher->Publish(std::move(req), [&mu, &counts](const v1::PublishResult& r) {
      const std::string status = v1::PublishResult::Status_Name(r.status());
      if (r.status() != v1::PublishResult::CONFIRMED) {
        std::fprintf(stderr, "not confirmed: %s %s %s\n", r.message_id().c_str(), status.c_str(),
                     r.error().c_str());
      }
      std::lock_guard<std::mutex> lock(mu);
      ++counts[status];
    });
  }
  // Close answers whatever is still in flight at the timeout UNCONFIRMED.
  publisher->Close(milliseconds(static_cast<int64_t>(a.timeout_s * 1000)));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu);
  PrintLine({{"published", a.count}, {"results", counts}, {"seconds", seconds}});
  return counts["CONFIRMED"] == a.count ? 0 : 2;
}

int Work(mqsidecar::Client& client, const Args& a) {
  // Blocked before the library starts a thread: only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::mutex out_mu;
  const mqsidecar::Handler handle = [&out_mu](const v1::Delivery& d) {
    if (d.payload() == "fail") return mqsidecar::Outcome::Retry();
    if (d.payload() == "poison") return mqsidecar::Outcome::Reject();
    std::lock_guard<std::mutex> lock(out_mu);
    PrintLine({{"business", d.business()},
               {"message_id", d.message_id()},
               {"payload", d.payload()},
               {"redelivered", d.redelivered()},
               {"attempt", d.attempt()}});
    return mqsidecar::Outcome::Ack();
  };
  std::vector<std::unique_ptr<mqsidecar::Subscription>> subs;
  subs.reserve(a.businesses.size());
  for (const std::string& b : a.businesses) {
    subs.push_back(client.Subscribe(b, handle, {.consumer_name = a.name}));
  }
  int signal = 0;
  sigwait(&stop_signals, &signal);
  for (const auto& s : subs) s->Stop();
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"cpp_peer: the C++ client library's side of tests/polyglot/run.py"};
  app.require_subcommand(1);
  Args a;
  CLI::App* produce = app.add_subcommand("produce", "publish one message or --count N");
  CLI::App* work = app.add_subcommand("work", "consume businesses until SIGINT/SIGTERM");
  for (CLI::App* sub : {produce, work}) sub->add_option("--address", a.address, "sidecar target");
  produce->add_option("--business", a.businesses, "the producer business")->required();
  produce->add_option("--routing-key", a.routing_key);
  produce->add_option("--count", a.count, "publish N messages, payload and id PREFIX<n>");
  produce->add_option("--prefix", a.prefix);
  produce->add_option("--timeout", a.timeout_s, "seconds");
  produce->add_option("payload", a.payload, "the payload (one message)");
  work->add_option("--business", a.businesses, "a consumer business; repeat for more")->required();
  work->add_option("--name", a.name, "consumer name");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  }
  mqsidecar::Client client(a.address, {.on_error = [](std::string_view what) {
                             std::fprintf(stderr, "cpp_peer: %.*s\n", static_cast<int>(what.size()),
                                          what.data());
                           }});
  if (*work) return Work(client, a);
  if (produce->get_option("--business")->count() != 1) {
    std::fprintf(stderr, "cpp_peer: produce takes one --business\n");
    return 1;
  }
  return a.count == 0 ? ProduceOne(client, a) : ProduceMany(client, a);
}

}  // namespace

int main(int argc, char** argv) {
  // CLI11 throws on a bad option definition; nothing else here does.
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cpp_peer: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "cpp_peer: an unknown exception\n");
  }
  return 1;
}
