// otc_producer: otc's side of the seed's flow. Publishes approved USDT
// transfers to the business usdt.transfer (otc -> usdtsvr), pipelined, and
// reports each result. Copy and adapt: a real otc reads approved transfers
// from its database and marks each one sent once its result is CONFIRMED.
//
//   otc_producer [--target unix:///run/mq-sidecar/mq-sidecar.sock]
//                [--business usdt.transfer] [--count 10] [--token-file F] [--prefix P]
//
// Exit 0 when every transfer was confirmed by the broker.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mqsidecar/client.h"

namespace {

struct Args {
  std::string target = "unix:///run/mq-sidecar/mq-sidecar.sock";
  std::string business = "usdt.transfer";
  std::string token_file;  // with the sidecar's `access`: this client's token
  int count = 10;
  std::string prefix;  // before each transfer id: one demo run's ids apart from another's
};

bool Parse(int argc, char** argv, Args* args) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--target") {
      args->target = value;
    } else if (flag == "--business") {
      args->business = value;
    } else if (flag == "--token-file") {
      args->token_file = value;
    } else if (flag == "--count") {
      args->count = std::atoi(value);
    } else if (flag == "--prefix") {
      args->prefix = value;
    } else {
      return false;
    }
  }
  return argc % 2 == 1 && args->count > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!Parse(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: otc_producer [--target URI] [--business B] [--count N] "
                 "[--token-file F] [--prefix P]\n");
    return 64;
  }
  // A token file, not a --token argument: a command line is visible to every
  // local user (ps).
  std::string token;
  if (!args.token_file.empty()) {
    if (const grpc::Status read = mqsidecar::ReadTokenFile(args.token_file, &token); !read.ok()) {
      std::fprintf(stderr, "otc_producer: %s\n", read.error_message().c_str());
      return 1;
    }
  }
  mqsidecar::Client client(args.target, {.token = token});

  // One transfer alone: a blocking publish with a deadline.
  mqsidecar::v1::PublishRequest first;
  first.set_business(args.business);
  first.set_routing_key("transfer.approved");
  const std::string first_id = args.prefix + "otc-transfer-0";
  first.set_message_id(first_id);  // the idempotency key: the transfer's id
  first.set_content_type("application/json");
  first.set_payload(R"({"transfer_id":")" + first_id + R"(","asset":"USDT","amount":"100.00"})");
  const mqsidecar::PublishOutcome outcome = client.Publish(first, std::chrono::seconds(10));
  std::printf("%s: %s\n", first.message_id().c_str(), outcome.ToString().c_str());
  if (!outcome.confirmed()) return 1;  // UNAVAILABLE etc.: nothing sent, safe to retry later

  // The rest pipelined: up to `window` in flight, each result reported once.
  std::atomic<int> confirmed{1};
  std::atomic<int> failed{0};
  {
    const std::unique_ptr<mqsidecar::Publisher> publisher = client.NewPublisher({.window = 128});
    for (int i = 1; i < args.count; ++i) {
      const std::string id = args.prefix + "otc-transfer-" + std::to_string(i);
      mqsidecar::v1::PublishRequest r;
      r.set_business(args.business);
      r.set_routing_key("transfer.approved");
      r.set_message_id(id);
      r.set_content_type("application/json");
      r.set_payload(R"({"transfer_id":")" + id + R"(","asset":"USDT","amount":"100.00"})");
      r.set_sequence(static_cast<uint64_t>(i));
      publisher->Publish(std::move(r), [&](const mqsidecar::v1::PublishResult& result) {
        // Runs on the publisher's thread: keep it short (here: count; a real
        // otc marks the transfer sent, or schedules a retry).
        if (result.status() == mqsidecar::v1::PublishResult::CONFIRMED) {
          ++confirmed;
        } else {
          ++failed;
          std::fprintf(stderr, "%s: %s %s\n", result.message_id().c_str(),
                       mqsidecar::v1::PublishResult::Status_Name(result.status()).c_str(),
                       result.error().c_str());
        }
      });
    }
    publisher->Close(std::chrono::seconds(30));  // every result is in (or UNCONFIRMED)
  }
  std::printf("confirmed %d, not confirmed %d\n", confirmed.load(), failed.load());
  return failed.load() == 0 ? 0 : 1;
}
