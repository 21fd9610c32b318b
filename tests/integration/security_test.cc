// Security (issue 14). Who gets in: the daemon creates its unix socket with the
// configured mode and group whatever the umask, and refuses a socket
// directory that every user may write to. Secrets: a broker password from a
// file reaches the broker and nothing else (logs, --check-config, topology).
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// Sets the process umask for the test's scope; the daemons it starts inherit it.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : before_(::umask(mask)) {}
  ~ScopedUmask() { ::umask(before_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t before_;
};

struct stat StatOf(const std::string& unix_address) {
  struct stat st {};
  REQUIRE(::stat(unix_address.substr(std::string("unix://").size()).c_str(), &st) == 0);
  return st;
}

TEST_CASE(
    "integration: the unix socket gets mode 0660 under a permissive umask, or the configured mode "
    "and group, and serves") {
  IntegrationTest t("socketmode");
  const std::string biz = t.Business("sock");
  ScopedUmask permissive(0);
  Daemon& plain = t.StartDaemon({{.name = biz}}, {.name = "plain"});
  const struct stat a = StatOf(plain.address());
  CHECK(S_ISSOCK(a.st_mode));
  CHECK((a.st_mode & 07777) == 0660);

  Daemon& custom = t.StartDaemon(
      {{.name = biz}},
      {.extra_yaml = "socket: { mode: \"0600\", group: nogroup }\n", .name = "custom"});
  const struct stat b = StatOf(custom.address());
  CHECK((b.st_mode & 07777) == 0600);
  CHECK(b.st_gid == 65534u);  // nogroup
  // Both serve (the tests run as root, which the mode lets in).
  CHECK(PublishConfirmed(custom.stub(), biz, 1, "m").size() == 1);
  CHECK(PublishConfirmed(plain.stub(), biz, 1, "p").size() == 1);
}

TEST_CASE("integration: a socket directory that every user may write to is refused at start") {
  IntegrationTest t("socketdir");
  const std::string dir = t.dir() + "/open";
  std::filesystem::create_directory(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::all);  // 0777, no sticky bit
  const std::string config = t.dir() + "/open.yaml";
  std::ofstream(config) << "listen: [\"unix://" << dir << "/s.sock\"]\n"
                        << "broker: { uris: [\"" << t.uri() << "\"] }\n"
                        << "producers: { " << t.Business("open") << ": }\n";
  const CommandResult r = RunCommand({DaemonPathForTests(), "-c", config}, 30s);
  INFO(r.out << r.err);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err + r.out, Catch::Contains("writable by every user"));
  CHECK_FALSE(std::filesystem::exists(dir + "/s.sock"));
}

// rabbitmqctl, as root on the broker's host (the tests run there).
CommandResult Ctl(std::vector<std::string> args) {
  args.insert(args.begin(), "/usr/bin/env");  // RunCommand does not search PATH
  args.insert(args.begin() + 1, "rabbitmqctl");
  return RunCommand(args, 60s);
}

TEST_CASE(
    "integration: a broker password from broker.password_file or MQ_SIDECAR_BROKER_PASSWORD "
    "logs in, and shows nowhere: not in the log, --check-config or GetTopology") {
  IntegrationTest t("secret");
  const std::string user = "mqs-it-" + std::to_string(::getpid());
  const std::string password = "Pw-" + std::to_string(::getpid()) + "/s3cr:t@x";
  REQUIRE(Ctl({"add_user", user, password}).exit_code == 0);
  struct DeleteUser {
    std::string user;
    ~DeleteUser() { Ctl({"delete_user", user}); }
  } cleanup{user};
  REQUIRE(Ctl({"set_permissions", "-p", "/", user, ".*", ".*", ".*"}).exit_code == 0);
  const std::string file = t.dir() + "/broker.password";
  std::ofstream(file) << password << "\n";
  const std::string uri = "amqp://" + user + "@127.0.0.1:5672/";
  const std::string biz = t.Business("secret");

  Daemon& d = t.StartDaemon({{.name = biz}}, {.uris = {uri},
                                              .broker_extra = "  password_file: " + file + "\n",
                                              .log_level = "debug",
                                              .name = "file"});
  CHECK(PublishConfirmed(d.stub(), biz, 1, "s").size() == 1);
  const std::optional<pb::Topology> topology = d.Topology();
  REQUIRE(topology.has_value());
  CHECK_THAT(topology->broker_uri(), Catch::Contains(user));
  const CommandResult check =
      RunCommand({DaemonPathForTests(), "--check-config", "-c", d.config_path()}, 30s);
  CHECK(check.exit_code == 0);
  // Also from the environment, which wins over a file that does not exist.
  std::ofstream(t.dir() + "/env.yaml")
      << "broker: { uris: [\"" << uri << "\"], password_file: /nonexistent }\n"
      << "producers: { " << biz << ": }\n";
  const CommandResult env =
      RunCommand({"/usr/bin/env", "MQ_SIDECAR_BROKER_PASSWORD=" + password, DaemonPathForTests(),
                  "--check-config", "-c", t.dir() + "/env.yaml"},
                 30s);
  CHECK(env.exit_code == 0);
  // The password's own text, in any encoding that could leak it.
  for (const std::string& text :
       {d.Log(), check.out + check.err, env.out + env.err, topology->DebugString()}) {
    CHECK(text.find("s3cr") == std::string::npos);
    CHECK(text.find("Pw-") == std::string::npos);
  }
}

}  // namespace
}  // namespace mqs::it
