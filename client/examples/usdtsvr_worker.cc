// usdtsvr_worker: usdtsvr's side of the seed's flow. Consumes the transfers
// otc publishes (business usdt.transfer) and executes each exactly once:
// delivery is at least once, so the worker deduplicates by message_id (here
// an in-memory set; a real usdtsvr records the id under a unique constraint in
// the same database transaction as the transfer). A transient failure (the
// chain node is busy) is retried later, a malformed transfer goes to the
// dead-letter queue. Runs until SIGINT or SIGTERM.
//
//   usdtsvr_worker [--target unix:///run/mq-sidecar/mq-sidecar.sock]
//                  [--business usdt.transfer] [--threads 4] [--token-file F]
//                  [--ledger-dir DIR] [--name NAME] [--work-ms MS]
#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "mqsidecar/client.h"

namespace {

// Executed transfers: stands in for the database table with a unique
// message_id column. In memory by default; with --ledger-dir, one file per
// transfer created with O_EXCL, so that several workers on one host share
// the "unique constraint" (the transfer demo, deploy/demo/run.sh).
class Ledger {
 public:
  Ledger(std::string dir, std::string worker) : dir_(std::move(dir)), worker_(std::move(worker)) {}

  // False when the transfer was executed before (a redelivery).
  bool Execute(const std::string& transfer_id, const std::string& payload, bool redelivered) {
    const char* again = redelivered ? " (redelivered)" : "";
    if (!dir_.empty()) {
      // The id names a file: anything but [A-Za-z0-9._-] is refused upstream.
      const std::string path = dir_ + "/" + transfer_id;
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        std::printf("duplicate %s skipped by %s%s\n", transfer_id.c_str(), worker_.c_str(), again);
        std::fflush(stdout);
        return false;
      }
      const std::string line = worker_ + "\n";
      (void)!::write(fd, line.data(), line.size());
      ::close(fd);
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      if (!done_.insert(transfer_id).second) return false;
    }
    std::printf("executed %s by %s%s: %s\n", transfer_id.c_str(), worker_.c_str(), again,
                payload.c_str());
    std::fflush(stdout);
    return true;
  }

 private:
  const std::string dir_;
  const std::string worker_;
  std::mutex mu_;
  std::set<std::string> done_;
};

bool SafeId(const std::string& id) {
  if (id.empty() || id.size() > 200 || id[0] == '.') return false;
  for (const char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// A chain node that fails now and then: an error worth retrying.
class TransientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void Transfer(const mqsidecar::v1::Delivery& d) {
  // Pretend the node is busy on the first attempt of every tenth transfer.
  if (d.attempt() <= 1 && !d.redelivered() && std::hash<std::string>{}(d.message_id()) % 10 == 0) {
    throw TransientError("chain node busy");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string target = "unix:///run/mq-sidecar/mq-sidecar.sock";
  std::string business = "usdt.transfer";
  std::string token_file;  // with the sidecar's `access`: this client's token
  size_t threads = 4;
  std::string ledger_dir;
  std::string name = "usdtsvr-worker";
  int work_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    if (flag == "--target") {
      target = argv[i + 1];
    } else if (flag == "--business") {
      business = argv[i + 1];
    } else if (flag == "--token-file") {
      token_file = argv[i + 1];
    } else if (flag == "--threads") {
      threads = static_cast<size_t>(std::atoi(argv[i + 1]));
    } else if (flag == "--ledger-dir") {
      ledger_dir = argv[i + 1];
    } else if (flag == "--name") {
      name = argv[i + 1];
    } else if (flag == "--work-ms") {
      work_ms = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr,
                   "usage: usdtsvr_worker [--target URI] [--business B] [--threads N] "
                   "[--token-file F] [--ledger-dir DIR] [--name NAME] [--work-ms MS]\n");
      return 64;
    }
  }
  // A token file, not a --token argument: a command line is visible to every
  // local user (ps).
  std::string token;
  if (!token_file.empty()) {
    if (const grpc::Status read = mqsidecar::ReadTokenFile(token_file, &token); !read.ok()) {
      std::fprintf(stderr, "usdtsvr_worker: %s\n", read.error_message().c_str());
      return 1;
    }
  }

  // Block the stop signals before any thread starts, so that only sigwait
  // below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  mqsidecar::Client client(target, {.token = token, .on_error = [](std::string_view what) {
                                      std::fprintf(stderr, "worker: %.*s\n",
                                                   static_cast<int>(what.size()), what.data());
                                    }});
  Ledger ledger(ledger_dir, name);
  const std::unique_ptr<mqsidecar::Subscription> subscription = client.Subscribe(
      business,
      [&ledger, work_ms](const mqsidecar::v1::Delivery& d) {
        if (!SafeId(d.message_id()) || d.payload().empty()) {
          return mqsidecar::Outcome::Reject();  // never valid: to usdt.transfer.queue.dead
        }
        try {
          Transfer(d);
        } catch (const TransientError& e) {
          std::fprintf(stderr, "%s: %s, retrying (attempt %u)\n", d.message_id().c_str(), e.what(),
                       d.attempt());
          return mqsidecar::Outcome::Retry();  // the business's retry delay, or requeue
        }
        // The transfer's effect and its ledger row: one transaction in a real usdtsvr.
        if (work_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
        // A duplicate is acked, not executed.
        ledger.Execute(d.message_id(), d.payload(), d.redelivered());
        return mqsidecar::Outcome::Ack();
      },
      {.prefetch = 32, .concurrency = threads, .consumer_name = name});

  int signal = 0;
  sigwait(&stop_signals, &signal);
  // Handlers running finish and their outcomes are sent; the rest return to
  // the queue for the other workers.
  subscription->Stop();
  const mqsidecar::Subscription::Stats stats = subscription->stats();
  std::printf("acked %llu, retried %llu, rejected %llu\n",
              static_cast<unsigned long long>(stats.acked),
              static_cast<unsigned long long>(stats.retried),
              static_cast<unsigned long long>(stats.rejected));
  return 0;
}
