// Who gets in (issue 14): the daemon creates its unix socket with the
// configured mode and group whatever the umask, and refuses a socket
// directory that every user may write to.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

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

}  // namespace
}  // namespace mqs::it
