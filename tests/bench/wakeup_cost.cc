// wakeup_cost: what one cross-thread wakeup costs on this machine.
//
// Two threads ping-pong through a pair of eventfds, each sleeping in poll()
// between turns: the same hand-off the daemon makes between a gRPC thread and
// an I/O thread. Prints wall time and CPU time per wakeup, once with the
// threads free to run on any CPU and once pinned to one CPU. The daemon's
// per-message CPU at low rates is mostly such wakeups (docs/benchmarks.md),
// so this number says how far any multi-threaded design can go here.
//
//   wakeup_cost [--rounds N]
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace {

double CpuMicros() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

void Wait(int fd) {
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, -1) < 0) {
  }
  uint64_t v = 0;
  if (read(fd, &v, sizeof v) < 0) std::perror("read");
}

void Signal(int fd) {
  const uint64_t one = 1;
  if (write(fd, &one, sizeof one) < 0) std::perror("write");
}

// Runs `rounds` round trips (two wakeups each); pins both threads to CPU 0
// when `pinned`.
void Measure(int rounds, bool pinned) {
  const int ping = eventfd(0, 0);
  const int pong = eventfd(0, 0);
  cpu_set_t one_cpu;
  CPU_ZERO(&one_cpu);
  CPU_SET(0, &one_cpu);
  cpu_set_t saved;
  sched_getaffinity(0, sizeof saved, &saved);
  if (pinned) sched_setaffinity(0, sizeof one_cpu, &one_cpu);  // inherited by the thread
  const double cpu0 = CpuMicros();
  const auto t0 = std::chrono::steady_clock::now();
  std::thread peer([&] {
    for (int i = 0; i < rounds; ++i) {
      Wait(ping);
      Signal(pong);
    }
  });
  for (int i = 0; i < rounds; ++i) {
    Signal(ping);
    Wait(pong);
  }
  peer.join();
  const double wall =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = CpuMicros() - cpu0;
  if (pinned) sched_setaffinity(0, sizeof saved, &saved);
  close(ping);
  close(pong);
  std::printf("%-14s %8d wakeups: %6.1f us wall, %6.1f us CPU per wakeup\n",
              pinned ? "same CPU" : "any CPU", 2 * rounds, wall / (2.0 * rounds),
              cpu / (2.0 * rounds));
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 50000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
  }
  if (rounds <= 0) {
    std::fprintf(stderr, "usage: wakeup_cost [--rounds N>0]\n");
    return 64;
  }
  Measure(rounds, /*pinned=*/false);
  Measure(rounds, /*pinned=*/true);
  return 0;
}
