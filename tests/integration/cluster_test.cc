// Fault test 8 (issue 3): failover within a RabbitMQ cluster. A local
// three-node cluster (deploy/scripts/cluster.sh: mqs-c1..3@localhost on AMQP
// ports 5681..5683), a quorum queue replicated on all three, a daemon with
// `broker.uris` listing all three; the node the daemon is connected to is
// stopped during a PublishStream, and the daemon must carry on on another node
// with 0 confirmed messages lost (History, checker.h).
//
// The test starts the cluster itself and stops it at the end, also when it
// fails (ScriptedNodes). The default node (5672) is not used. ctest runs it
// under the label `cluster` (RUN_SERIAL); see docs/reliability.md.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "checker.h"
#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckResponse;

constexpr auto kHeartbeat = 2s;
// Must match cluster.sh.
const std::vector<std::string> kNodes = {"mqs-c1@localhost", "mqs-c2@localhost",
                                         "mqs-c3@localhost"};
const std::vector<int> kPorts = {5681, 5682, 5683};

std::string NodeUri(size_t i) {
  return "amqp://guest:guest@127.0.0.1:" + std::to_string(kPorts[i]) + "/";
}

std::string ClusterDir() {
  const char* env = std::getenv("MQS_CLUSTER_DIR");
  return env != nullptr && *env != '\0' ? env : "/tmp/mqs-cluster";
}

std::string Rabbitmqctl() {
  // The Debian wrapper (runs the CLI as the rabbitmq user, whose Erlang cookie
  // the nodes share), not the raw script under /usr/lib/rabbitmq/bin.
  for (const char* dir : {"/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin"}) {
    std::string path = std::string(dir) + "/rabbitmqctl";
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "rabbitmqctl";
}

CommandResult Ctl(size_t node, std::vector<std::string> args, Clock::duration timeout = 30s) {
  std::vector<std::string> argv{Rabbitmqctl(), "-n", kNodes[node]};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, timeout);
}

// The server-side AMQP ports of the daemon's connections (client property
// product = mq-sidecar) as node `ask` sees the cluster; nullopt if it cannot tell.
std::optional<std::vector<int>> DaemonConnectionPorts(size_t ask) {
  const CommandResult r =
      Ctl(ask, {"list_connections", "port", "client_properties", "-q", "--no-table-headers"});
  if (r.exit_code != 0) return std::nullopt;
  std::vector<int> ports;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("mq-sidecar") != std::string::npos) ports.push_back(std::atoi(line.c_str()));
  }
  return ports;
}

struct QueueMembers {
  std::vector<std::string> members;
  std::string leader;
};

std::optional<QueueMembers> Members(size_t ask, const std::string& queue) {
  const CommandResult r =
      Ctl(ask, {"list_queues", "name", "members", "leader", "--formatter", "json", "-q"});
  if (r.exit_code != 0) return std::nullopt;
  const auto json = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  if (!json.is_array()) return std::nullopt;
  for (const auto& q : json) {
    if (q.value("name", "") != queue) continue;
    QueueMembers m;
    for (const auto& member : q.value("members", nlohmann::json::array())) {
      if (member.is_string()) m.members.push_back(member.get<std::string>());
    }
    m.leader = q.value("leader", "");
    return m;
  }
  return std::nullopt;
}

pid_t NodePid(size_t node) {
  std::ifstream in(ClusterDir() + "/" + kNodes[node].substr(0, kNodes[node].find('@')) + "/pid");
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

// False once `pid` has exited, also while it is a zombie (a detached VM's
// parent is init, which in a container may be slow to reap it).
bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto paren = line.rfind(')');  // the state follows "(comm) "
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

std::string Join(const std::vector<int>& v) {
  std::string out;
  for (int x : v) out += (out.empty() ? "" : ",") + std::to_string(x);
  return out;
}

// The time of day (s) of the first line of a daemon log containing `needle`
// at or after the line containing `after`; lines start "2026-11-24T19:46:50.029".
std::optional<double> LogTime(const std::string& log, const std::string& after,
                              const std::string& needle) {
  std::istringstream lines(log);
  bool seen = after.empty();
  for (std::string line; std::getline(lines, line);) {
    if (!seen && line.find(after) != std::string::npos) seen = true;
    if (!seen || line.find(needle) == std::string::npos || line.size() < 23) continue;
    return std::stoi(line.substr(11, 2)) * 3600 + std::stoi(line.substr(14, 2)) * 60 +
           std::stod(line.substr(17, 6));
  }
  return std::nullopt;
}

// How many of the daemons' connections each node serves (by AMQP port).
std::map<int, int> CountByPort(const std::vector<int>& ports) {
  std::map<int, int> n;
  for (int p : ports) ++n[p];
  return n;
}

// Where the quorum queue's leader is when the daemon's node is stopped.
enum class Leader { kElsewhere, kOnStoppedNode };

// The scenario of both test cases below.
void RunFailover(Leader placement) {
  constexpr int kMessages = 15000;
  constexpr size_t kVictim = 0;  // node 1: the first of the daemon's broker.uris
  constexpr size_t kNext = 1;    // node 2: the next URI, where the daemon goes first
  // Node 3 is never stopped: it answers rabbitmqctl and the harness's admin
  // connection, and a second daemon with a subscriber stays on it.
  constexpr size_t kStable = 2;
  // A daemon's broker links: its publishing and its consuming connection.
  // Counted exactly, or a listing taken while one of them is still being
  // registered would make the "all moved" comparisons below wrong.
  constexpr int kLinksPerDaemon = 2;
  const bool leader_on_victim = placement == Leader::kOnStoppedNode;
  REQUIRE(geteuid() == 0);  // cluster.sh and rabbitmqctl run the nodes as the rabbitmq user

  const auto cluster_start = Clock::now();
  ScriptedNodes cluster(MQS_CLUSTER_SCRIPT, "cluster");
  {
    const CommandResult started = cluster.Start();
    INFO("cluster.sh start: " << CommandOutput(started));
    REQUIRE(started.exit_code == 0);
  }
  const auto cluster_up = Clock::now();

  {
    std::optional<IntegrationTest> scope;
    {
      ScopedEnv env("MQS_TEST_AMQP_URI", NodeUri(kStable));
      scope.emplace(leader_on_victim ? "cluster-leader" : "cluster");
    }
    IntegrationTest& t = *scope;
    const std::string biz = t.Business("orders");
    const std::string queue = biz + ".queue";
    const BusinessSpec spec{.name = biz, .prefetch = 64};
    const DaemonOptions on_cluster{
        .uris = {NodeUri(0), NodeUri(1), NodeUri(2)}, .heartbeat = kHeartbeat, .wait_timeout = 60s};
    const DaemonOptions on_stable{.uris = {NodeUri(kStable)}, .heartbeat = kHeartbeat};
    // The daemon that declares the queue first places its leader: RabbitMQ
    // puts a new quorum queue's leader on the node of the declaring
    // connection (queue_leader_locator client-local). Either way the queue,
    // declared after the cluster formed, has a replica on each node.
    Daemon* sidecar = nullptr;    // on the cluster's URIs; its node is stopped
    Daemon* bystander = nullptr;  // on node 3 only
    if (leader_on_victim) {
      sidecar = &t.StartDaemon({spec}, on_cluster);
      bystander = &t.StartDaemon({spec}, on_stable);
    } else {
      bystander = &t.StartDaemon({spec}, on_stable);
      sidecar = &t.StartDaemon({spec}, on_cluster);
    }
    History h;
    Subscriber s1(sidecar->stub(), Recording(h, biz, "s1"));
    Subscriber s2(sidecar->stub(), Recording(h, biz, "s2"));
    Subscriber s3(bystander->stub(), Recording(h, biz, "s3"));
    REQUIRE(WaitForQueue(t.admin(), queue, 3u, std::nullopt));

    const auto members = Members(kStable, queue);
    REQUIRE(members.has_value());
    INFO("queue members: " << nlohmann::json(members->members).dump() << ", leader "
                           << members->leader);
    REQUIRE(members->members.size() == 3);
    REQUIRE(members->leader == kNodes[leader_on_victim ? kVictim : kStable]);

    // Which node is the daemon on? The first URI that answers; make sure,
    // from the broker's side: its connections are on node 1, the
    // bystander's on node 3, none on node 2.
    std::optional<std::vector<int>> ports;
    std::map<int, int> before;
    REQUIRE(WaitUntil(
        [&] {
          ports = DaemonConnectionPorts(kStable);
          if (!ports) return false;
          before = CountByPort(*ports);
          return before[kPorts[kVictim]] == kLinksPerDaemon &&
                 before[kPorts[kStable]] == kLinksPerDaemon;
        },
        20s, 100ms));
    INFO("daemon connections on ports "
         << (ports ? Join(*ports) : std::string("? (rabbitmqctl failed)")));
    REQUIRE(before[kPorts[kNext]] == 0);
    const auto topology = sidecar->Topology();
    REQUIRE(topology.has_value());
    REQUIRE(topology->broker_uri().find(":" + std::to_string(kPorts[kVictim])) !=
            std::string::npos);

    // Paced until the node is down so that the stop lands mid-stream; unpaced after.
    AsyncPublishStream stream(sidecar->stub(),
                              Recorded(h, MakeRequests(biz, biz, kMessages), 800, 150s));
    REQUIRE(stream.WaitAnswered(1000, 30s));

    const pid_t victim_pid = NodePid(kVictim);
    REQUIRE(victim_pid > 0);
    const auto stop_at = Clock::now();
    const auto stop_wall = History::WallClock::now();
    const CommandResult stop = Ctl(kVictim, {"stop"}, 60s);
    INFO("rabbitmqctl -n " << kNodes[kVictim] << " stop: " << CommandOutput(stop));
    REQUIRE(stop.exit_code == 0);
    // rabbitmqctl stop returns as the VM halts; wait until it is gone.
    REQUIRE(WaitUntil([&] { return !Alive(victim_pid); }, 30s, 50ms));
    const auto node_down = Clock::now();
    const size_t answered_at_stop = stream.answered();
    stream.SetRate(0);
    INFO("answered when the node was down: " << answered_at_stop);
    // The stop must hit the stream mid-flight, or this test proves nothing.
    REQUIRE(answered_at_stop < static_cast<size_t>(kMessages));

    // The daemon fails over by itself: SERVING again, on a surviving node.
    // It tries the next URI first; when that node does not take it at once
    // (on a loaded machine node 2 has refused the connect while the cluster
    // reacted to the stop), it goes on to node 3: both are right.
    std::string uri_now;
    int port_now = 0;
    const bool failed_over = WaitUntil(
        [&] {
          auto top = sidecar->Topology(2s);
          if (!top || !top->connected()) return false;
          uri_now = top->broker_uri();
          port_now = 0;
          for (size_t i : {kNext, kStable}) {
            if (uri_now.find(":" + std::to_string(kPorts[i])) != std::string::npos) {
              port_now = kPorts[i];
            }
          }
          return port_now != 0 && sidecar->Health(1s) == HealthCheckResponse::SERVING;
        },
        30s, 20ms);
    const auto serving_at = Clock::now();
    INFO("daemon now on " << uri_now);
    CHECK(failed_over);
    // All its connections (publishing and consuming) moved to surviving
    // nodes, none is left on the stopped one; the bystander's stayed on node 3.
    std::map<int, int> after;
    const bool moved = WaitUntil(
        [&] {
          ports = DaemonConnectionPorts(kStable);
          if (!ports) return false;
          after = CountByPort(*ports);
          // (Each link fails over by itself, so they may land on different
          // surviving nodes; the bystander's two stay on node 3.)
          return after[kPorts[kVictim]] == 0 &&
                 after[kPorts[kNext]] + after[kPorts[kStable]] == 2 * kLinksPerDaemon &&
                 after[kPorts[kStable]] >= kLinksPerDaemon;
        },
        20s, 200ms);
    INFO("daemon connections after the failover on ports "
         << (ports ? Join(*ports) : std::string("? (rabbitmqctl failed)")));
    CHECK(moved);

    auto end = stream.WaitEnded(120s);
    REQUIRE(end.has_value());
    INFO("stream: " << StatusText(*end));
    CHECK(end->ok());
    CHECK(stream.answered() == static_cast<size_t>(kMessages));
    const auto stream_done = Clock::now();

    // Consumers finish the queue: every confirmed message arrives.
    CHECK(WaitUntil([&] { return h.ConfirmedUndelivered() == 0; }, 60s, 50ms));
    CHECK(WaitForQueue(t.admin(), queue, 3u, 0u, 30s));
    CHECK_FALSE(s1.ended());
    CHECK_FALSE(s2.ended());
    CHECK_FALSE(s3.ended());
    const auto members_after = Members(kStable, queue);
    // How long each of the daemon's connections was away, by its log.
    const std::string log = sidecar->Log();
    std::string gaps;
    for (const std::string conn : {"[publisher]", "[consumer]"}) {
      const auto lost = LogTime(log, "", conn + " connection lost");
      const auto back =
          LogTime(log, conn + " connection lost",
                  conn + " connected to amqp://guest:****@127.0.0.1:" + std::to_string(port_now));
      gaps += " " + conn + " " + (lost && back ? Fixed(*back - *lost, 2) + " s" : "?");
    }

    // The messages in flight at the stop: RabbitMQ 3.10 has been seen (CI,
    // 27 of 15,000 with the leader on the stopped node, 2 with it elsewhere)
    // to deliver such a message again without the redelivered mark, right
    // after a marked copy (not one the sidecar republished) was handled. A
    // broker behaviour the sidecar cannot mark: declared, and bounded below.
    h.NodeFailover(stop_wall, History::WallClock::now());
    const History::Report r = h.Check();
    WARN("[fault-checker] cluster failover (queue leader "
         << (leader_on_victim ? "on the stopped node" : "elsewhere") << "): " << r.Summary()
         << "\n  answered before the stop: " << answered_at_stop << "; queue leader "
         << members->leader << " -> " << (members_after ? members_after->leader : "?")
         << "; rabbitmqctl stop took " << Fixed(Seconds(node_down - stop_at), 2)
         << " s; daemon SERVING on " << uri_now << " " << Fixed(Seconds(serving_at - stop_at), 2)
         << " s after the stop began; its connections were away (log):" << gaps << "; stream done "
         << Fixed(Seconds(stream_done - stop_at), 1)
         << " s after the stop began; deliveries s1/s2/s3 " << s1.count() << "/" << s2.count()
         << "/" << s3.count());
    CHECK(r.lost == 0);
    CHECK(r.Violations() == "");
    // Failover copies: at most what was in flight at the stop, a publish
    // window and the prefetch of the two subscribers whose consumer was on
    // the node.
    const auto failover_copies = r.accepted_by_cause.find(History::kNodeFailoverCause);
    CHECK((failover_copies == r.accepted_by_cause.end() ? 0 : failover_copies->second) <=
          size_t{1024 + 2 * 64});
    CHECK(r.unanswered == 0);
    CHECK(r.failed == 0);
    if (!leader_on_victim) {
      // With a wait_timeout far longer than the failover every publish is confirmed.
      CHECK(r.confirmed == static_cast<size_t>(kMessages));
    } else {
      // When the daemon's new channel publishes before the surviving nodes
      // have elected a leader, RabbitMQ 3.10 nacks what that channel carries
      // (rabbit_fifo_client asks the dead node). Those are answered REJECTED
      // (UNCONFIRMED for a republished copy whose first send may be queued:
      // the checker counts one delivered as recovered, never as a violation),
      // and the daemon renews the channel once they have settled: at most one
      // publish window (1,024 in flight) is refused, then publishing recovers.
      CHECK(r.rejected + r.unconfirmed <= 1024);
      CHECK(r.confirmed + r.rejected + r.unconfirmed == static_cast<size_t>(kMessages));
      const auto results = stream.results();
      REQUIRE(results.size() == static_cast<size_t>(kMessages));
      size_t tail_confirmed = 0;
      for (size_t i = results.size() - 1000; i < results.size(); ++i) {
        if (results[i].status() == pb::PublishResult::CONFIRMED) ++tail_confirmed;
      }
      CHECK(tail_confirmed == 1000);  // the last 1,000 answers: recovered
    }
  }

  const auto stop_at = Clock::now();
  const CommandResult stopped = cluster.Stop();
  INFO("cluster.sh stop: " << CommandOutput(stopped));
  CHECK(stopped.exit_code == 0);
  WARN("[cluster] timings: cluster.sh start "
       << Fixed(Seconds(cluster_up - cluster_start), 1) << " s, test "
       << Fixed(Seconds(stop_at - cluster_up), 1) << " s, cluster.sh stop "
       << Fixed(Seconds(Clock::now() - stop_at), 1) << " s");
}

// ---------------------------------------------------------------------------

TEST_CASE(
    "cluster: the node the daemon is connected to (not the quorum queue's leader) is stopped "
    "during a 15000-message PublishStream: the daemon fails over to the next node of the 3-node "
    "cluster, 0 confirmed lost",
    "[cluster]") {
  RunFailover(Leader::kElsewhere);
}

// When the daemon's new channel publishes before the remaining nodes have
// elected a new leader, RabbitMQ 3.10's quorum queue client on that channel
// keeps asking the stopped node and nacks every publish for the channel's
// life (rabbit_fifo_client:enqueue, {badrpc, nodedown} -> reject_publish).
// The daemon renews the channel after a nack, so at most the publishes in
// flight are refused. See docs/reliability.md, test 8.
TEST_CASE(
    "cluster: the node the daemon is connected to, with the quorum queue's leader, is stopped "
    "during a 15000-message PublishStream: at most one window is refused, then publishing "
    "recovers, 0 confirmed lost",
    "[cluster]") {
  RunFailover(Leader::kOnStoppedNode);
}

}  // namespace
}  // namespace mqs::it
