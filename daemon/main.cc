// mq-sidecar: flags, logging and signals; everything else lives in the library.
#include <grpc/support/log.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "app.h"
#include "config/config.h"
#include "spdlog/spdlog.h"
#include "util/log_fields.h"
#include "util/strings.h"
#include "util/thread_stack.h"
#include "util/version.h"

namespace {

void GrpcLog(gpr_log_func_args* args) {
  const spdlog::level::level_enum level =
      args->severity == GPR_LOG_SEVERITY_ERROR  ? spdlog::level::err
      : args->severity == GPR_LOG_SEVERITY_INFO ? spdlog::level::info
                                                : spdlog::level::debug;
  if (!spdlog::should_log(level)) return;
  spdlog::log(level, "grpc: {} ({}:{})", args->message, args->file, args->line);
}

int Main(int argc, char** argv) {
  CLI::App cli{"mq-sidecar: RabbitMQ publish/subscribe for local services, over gRPC"};
  std::string config_path = "/etc/mq-sidecar/mq-sidecar.yaml";
  bool check_config = false;
  std::string log_level;
  cli.add_option("-c,--config", config_path, "config file (YAML, or the seed's INI)")
      ->capture_default_str();
  cli.add_flag("--check-config", check_config,
               "validate the config, print the resolved topology and exit");
  cli.add_option("--log-level", log_level,
                 "override log.level (trace|debug|info|warn|error, any case)");
  std::string log_format;
  cli.add_option("--log-format", log_format, "override log.format (text|json, any case)");
  // Identity overrides: one config file serves every replica, each started
  // with its own --server (or MQ_SIDECAR_SERVER).
  std::string app, region, server;
  CLI::Option* app_flag = cli.add_option("--app", app, "override identity.app (MQ_SIDECAR_APP)");
  CLI::Option* region_flag =
      cli.add_option("--region", region, "override identity.region (MQ_SIDECAR_REGION)");
  CLI::Option* server_flag =
      cli.add_option("--server", server, "override identity.server (MQ_SIDECAR_SERVER)");
  cli.set_version_flag("--version", std::string("mq-sidecar ") + mqs::util::kVersion);
  // CLI11_PARSE would exit with CLI11's own codes (e.g. 109): every invalid
  // command line is 2, as an invalid config is, so that systemd's
  // RestartPreventExitStatus=2 stops a restart loop. --help and --version: 0.
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e) == 0 ? 0 : 2;
  }

  // spdlog::level::from_str answers "off" for a name it does not know (even
  // "INFO"): a typo must not silence the daemon.
  std::optional<std::string> level_override;
  if (!log_level.empty()) {
    level_override = mqs::config::ParseLogLevel(log_level);
    if (!level_override) {
      std::cerr << "mq-sidecar: --log-level: expected trace, debug, info, warn or error (any "
                   "case), got \""
                << mqs::util::ForLog(log_level) << "\"\n";
      return 2;
    }
  }
  std::optional<mqs::util::LogFormat> format_override;
  if (!log_format.empty()) {
    format_override = mqs::util::ParseLogFormat(log_format);
    if (!format_override) {
      std::cerr << "mq-sidecar: --log-format: expected text or json (any case), got \""
                << mqs::util::ForLog(log_format) << "\"\n";
      return 2;
    }
  }

  // flag > environment > file: LoadFile puts the merged overrides over the
  // file. A flag given empty (--server "") is an error, not "unset".
  mqs::config::LoadOptions::IdentityOverrides flags;
  if (app_flag->count() > 0) flags.app = app;
  if (region_flag->count() > 0) flags.region = region;
  if (server_flag->count() > 0) flags.server = server;
  mqs::config::LoadOptions options;
  options.identity =
      mqs::config::MergeIdentityOverrides(flags, mqs::config::IdentityFromEnvironment());
  options.broker_password = mqs::config::BrokerPasswordFromEnvironment();

  absl::StatusOr<mqs::config::Config> config = mqs::config::LoadFile(config_path, options);
  if (!config.ok()) {
    std::cerr << "mq-sidecar: invalid config:\n" << config.status().message() << "\n";
    return 2;
  }
  // Per process, not per config: names this sidecar's exclusive queues and
  // its task correlation ids, so two runs never share them.
  config->instance = mqs::config::NewInstanceId();
  if (check_config) {
    std::cout << mqs::config::Describe(*config);
    return 0;
  }

  // Debian builds Abseil without NDEBUG, so every absl::Mutex (gRPC's too)
  // records lock order in a global graph: a measurable cost per message
  // (docs/benchmarks.md). Our own locks are util::Mutex (std::mutex); the check is for
  // debugging Abseil users, not for production.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block SIGINT/SIGTERM/SIGHUP before any thread starts, so only Run's
  // sigwait sees them.
  mqs::BlockShutdownSignals();
  // Both names are validated (ParseLogLevel, ParseLogFormat), so from_str
  // never yields "off".
  const mqs::util::LogFormat format = format_override.value_or(
      mqs::util::ParseLogFormat(config->log_format).value_or(mqs::util::LogFormat::kText));
  mqs::util::SetUpLogging(format,
                          spdlog::level::from_str(level_override.value_or(config->log_level)));
  // gRPC writes its own lines to stderr; in json mode they go through spdlog
  // too, so every line of the log parses.
  if (format == mqs::util::LogFormat::kJson) gpr_set_log_function(GrpcLog);

  mqs::RunOptions run;
  // SIGHUP reads the same file with the same flags and environment.
  const std::string instance = config->instance;
  run.reload = [config_path, options, instance]() -> absl::StatusOr<mqs::config::Config> {
    absl::StatusOr<mqs::config::Config> next = mqs::config::LoadFile(config_path, options);
    if (next.ok()) next->instance = instance;
    return next;
  };
  run.log_level_pinned = level_override.has_value();
  absl::Status status = mqs::Run(*config, run);
  if (!status.ok()) {
    spdlog::critical("{}", status.message());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread starts (util/thread_stack.h says why).
  if (std::string error; !mqs::util::EnsureThreadStacks(&error)) {
    std::cerr << "mq-sidecar: cannot set the threads' stack size: " << error << "\n";
    return 1;
  }
  // Nothing on the message path throws; what could (allocation, the config
  // libraries) still ends with a message and an exit code, not std::terminate.
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "mq-sidecar: " << e.what() << "\n";
    return 1;
  }
}
