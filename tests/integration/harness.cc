#include "harness.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace mqs::it {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::chrono::system_clock::time_point DeadlineIn(Clock::duration d) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
}

int MillisLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

// argv as execv wants it; built before fork() so the child only makes syscalls.
std::vector<char*> ExecArgs(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return args;
}

// CloseInheritedFds closes every descriptor above stderr in a forked child:
// without it a command that leaves a daemon behind (rabbitmq-server -detached
// and the epmd it starts, also from rabbitmqctl) would hold the caller's
// descriptors for the daemon's life: the fault tests' broker.lock (so the
// exclusive lock stays taken after the test ends), ctest's output pipes (so
// ctest waits for EOF). Only syscalls: it runs between fork and exec.
void CloseInheritedFds() {
  if (close_range(3, ~0U, 0) == 0) return;
  const long max = sysconf(_SC_OPEN_MAX);
  for (int fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); ++fd) close(fd);
}

// In the child: die with the parent (so an aborted test run leaks nothing).
void ChildDieWithParent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string AmqpReplyText(const amqp_rpc_reply_t& r) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return "ok";
    case AMQP_RESPONSE_NONE:
      return "missing RPC reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        auto* m = static_cast<amqp_connection_close_t*>(r.reply.decoded);
        return "connection closed by server: " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        auto* m = static_cast<amqp_channel_close_t*>(r.reply.decoded);
        return "channel closed by server: " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      return "server exception";
  }
  return "unknown reply";
}

// $MQS_TEST_DAEMON (e.g. an installed binary) or the one built with the tests.
std::string DaemonPath() {
  const char* env = std::getenv("MQS_TEST_DAEMON");
  return env != nullptr && *env != '\0' ? env : MQS_DAEMON_PATH;
}

}  // namespace

std::string DaemonPathForTests() { return DaemonPath(); }

namespace {

std::string BytesText(const amqp_bytes_t& b) {
  return b.len == 0 ? std::string() : std::string(static_cast<const char*>(b.bytes), b.len);
}

std::string FieldText(const amqp_field_value_t& v);

std::string TableText(const amqp_table_t& t) {
  std::string out = "{";
  for (int i = 0; i < t.num_entries; ++i) {
    if (i > 0) out += ",";
    out += BytesText(t.entries[i].key) + "=" + FieldText(t.entries[i].value);
  }
  return out + "}";
}

std::string FieldText(const amqp_field_value_t& v) {
  switch (v.kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      return BytesText(v.value.bytes);
    case AMQP_FIELD_KIND_BOOLEAN:
      return v.value.boolean ? "true" : "false";
    case AMQP_FIELD_KIND_I8:
      return std::to_string(v.value.i8);
    case AMQP_FIELD_KIND_U8:
      return std::to_string(v.value.u8);
    case AMQP_FIELD_KIND_I16:
      return std::to_string(v.value.i16);
    case AMQP_FIELD_KIND_U16:
      return std::to_string(v.value.u16);
    case AMQP_FIELD_KIND_I32:
      return std::to_string(v.value.i32);
    case AMQP_FIELD_KIND_U32:
      return std::to_string(v.value.u32);
    case AMQP_FIELD_KIND_I64:
    case AMQP_FIELD_KIND_TIMESTAMP:
      return std::to_string(v.value.i64);
    case AMQP_FIELD_KIND_U64:
      return std::to_string(v.value.u64);
    case AMQP_FIELD_KIND_TABLE:
      return TableText(v.value.table);
    case AMQP_FIELD_KIND_ARRAY: {
      std::string out = "[";
      for (int i = 0; i < v.value.array.num_entries; ++i) {
        if (i > 0) out += ",";
        out += FieldText(v.value.array.entries[i]);
      }
      return out + "]";
    }
    default:
      return "?";
  }
}

}  // namespace

std::string AmqpUri() {
  const char* env = std::getenv("MQS_TEST_AMQP_URI");
  return env != nullptr && *env != '\0' ? env : "amqp://guest:guest@127.0.0.1:5672/";
}

bool WaitUntil(const std::function<bool()>& pred, Clock::duration timeout, Clock::duration poll) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(poll);
  }
}

// ---------------------------------------------------------------------------
// ChildProcess

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const std::string& log_file,
                           bool pipe_stdout) {
  auto args = ExecArgs(argv);
  int log_fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error("cannot open " + log_file + ": " + strerror(errno));
  int pipe_fds[2] = {-1, -1};
  if (pipe_stdout && pipe2(pipe_fds, O_CLOEXEC) != 0) {
    close(log_fd);
    throw std::runtime_error(std::string("pipe2: ") + strerror(errno));
  }
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ == 0) {
    ChildDieWithParent(parent);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(pipe_stdout ? pipe_fds[1] : log_fd, 1);
    dup2(log_fd, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(log_fd);
  if (pipe_stdout) close(pipe_fds[1]);
  if (pid_ < 0) {
    if (pipe_stdout) close(pipe_fds[0]);
    throw std::runtime_error(std::string("fork: ") + strerror(fork_errno));
  }
  stdout_fd_ = pipe_fds[0];
}

ChildProcess::~ChildProcess() {
  Stop();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

bool ChildProcess::Running() {
  if (exited_ || pid_ <= 0) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    exited_ = true;
    wait_status_ = status;
    return false;
  }
  return true;
}

bool ChildProcess::WaitExit(Clock::duration timeout) {
  return WaitUntil([this] { return !Running(); }, timeout, milliseconds(10));
}

void ChildProcess::Stop(Clock::duration grace) {
  if (!Running()) return;
  kill(pid_, SIGTERM);
  if (WaitExit(grace)) return;
  Kill();
}

void ChildProcess::Kill() {
  if (!Running()) return;
  kill(pid_, SIGKILL);
  // SIGKILL cannot be caught; a blocking wait cannot hang.
  int status = 0;
  if (waitpid(pid_, &status, 0) == pid_) wait_status_ = status;
  exited_ = true;
}

std::optional<std::string> ChildProcess::ReadLine(Clock::duration timeout) {
  if (stdout_fd_ < 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    pollfd p{stdout_fd_, POLLIN, 0};
    int r = poll(&p, 1, MillisLeft(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    char buf[4096];
    ssize_t n = read(stdout_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

int ListenOnLoopback(int* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd, 16) != 0) {
    throw std::runtime_error("cannot listen on 127.0.0.1");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

int DialLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

CommandResult RunCommand(const std::vector<std::string>& argv, Clock::duration timeout) {
  CommandResult result;
  auto args = ExecArgs(argv);
  int out_fds[2], err_fds[2];
  if (pipe2(out_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  if (pipe2(err_fds, O_CLOEXEC) != 0) {
    close(out_fds[0]);
    close(out_fds[1]);
    throw std::runtime_error("pipe2 failed");
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    ChildDieWithParent(parent);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(out_fds[1], 1);
    dup2(err_fds[1], 2);
    CloseInheritedFds();
    execv(args[0], args.data());
    _exit(127);
  }
  close(out_fds[1]);
  close(err_fds[1]);
  if (pid < 0) {
    close(out_fds[0]);
    close(err_fds[0]);
    throw std::runtime_error("fork failed");
  }
  const auto deadline = Clock::now() + timeout;
  pollfd fds[2] = {{out_fds[0], POLLIN, 0}, {err_fds[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    int r = poll(fds, 2, MillisLeft(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      timed_out = true;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!timed_out && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (timed_out) result.err += "\n[harness] command timed out and was killed";
  return result;
}

// ---------------------------------------------------------------------------
// AmqpAdmin

AmqpAdmin::AmqpAdmin(std::string uri) : uri_(std::move(uri)) {}

AmqpAdmin::~AmqpAdmin() {
  if (conn_ != nullptr) {
    auto c = static_cast<amqp_connection_state_t>(conn_);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
  }
}

std::string AmqpAdmin::Connect() {
  if (conn_ != nullptr) return "";
  std::string url = uri_;
  amqp_connection_info info;
  amqp_default_connection_info(&info);
  if (amqp_parse_url(url.data(), &info) != AMQP_STATUS_OK) {
    return "cannot parse AMQP URI '" + uri_ + "'";
  }
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(c);
  timeval tv{5, 0};
  int rc = socket != nullptr ? amqp_socket_open_noblock(socket, info.host, info.port, &tv)
                             : AMQP_STATUS_NO_MEMORY;
  if (rc != AMQP_STATUS_OK) {
    amqp_destroy_connection(c);
    return std::string("cannot connect to ") + info.host + ":" + std::to_string(info.port) + ": " +
           amqp_error_string2(rc);
  }
  amqp_set_rpc_timeout(c, &tv);
  // "amqp://host/" parses to vhost "", which like most clients we take as "/".
  const char* vhost = info.vhost != nullptr && *info.vhost != '\0' ? info.vhost : "/";
  amqp_rpc_reply_t r =
      amqp_login(c, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    std::string why = AmqpReplyText(r);
    amqp_destroy_connection(c);
    return "AMQP login to " + std::string(info.host) + " failed: " + why;
  }
  conn_ = c;
  return "";
}

bool AmqpAdmin::OnChannel(const std::function<bool(void*, uint16_t)>& op) {
  if (!Connect().empty()) return false;
  auto c = static_cast<amqp_connection_state_t>(conn_);
  const uint16_t channel = 1;
  bool ok = amqp_channel_open(c, channel) != nullptr &&
            amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL && op(c, channel);
  if (ok) {
    ok = amqp_channel_close(c, channel, AMQP_REPLY_SUCCESS).reply_type == AMQP_RESPONSE_NORMAL;
  }
  if (!ok) {
    // A channel error (e.g. 404 on a passive declare) closes the channel; rather
    // than replaying the close handshake, start over with a new connection.
    amqp_destroy_connection(c);
    conn_ = nullptr;
  }
  return ok;
}

std::optional<AmqpAdmin::QueueInfo> AmqpAdmin::InspectQueue(const std::string& queue) {
  QueueInfo info;
  bool ok = OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    auto* r = amqp_queue_declare(c, ch, amqp_cstring_bytes(queue.c_str()), /*passive=*/1, 0, 0, 0,
                                 amqp_empty_table);
    if (r == nullptr) return false;
    info.messages = r->message_count;
    info.consumers = r->consumer_count;
    return true;
  });
  if (!ok) return std::nullopt;
  return info;
}

bool AmqpAdmin::ExchangeExists(const std::string& exchange) {
  return OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    return amqp_exchange_declare(c, ch, amqp_cstring_bytes(exchange.c_str()),
                                 amqp_cstring_bytes("topic"), /*passive=*/1, 0, 0, 0,
                                 amqp_empty_table) != nullptr;
  });
}

void AmqpAdmin::DeleteQueue(const std::string& queue) {
  OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    return amqp_queue_delete(c, ch, amqp_cstring_bytes(queue.c_str()), 0, 0) != nullptr;
  });
}

void AmqpAdmin::DeleteExchange(const std::string& exchange) {
  OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    return amqp_exchange_delete(c, ch, amqp_cstring_bytes(exchange.c_str()), 0) != nullptr;
  });
}

bool AmqpAdmin::PublishNested(const std::string& queue, const std::string& message_id, int depth) {
  std::vector<amqp_field_value_t> v(static_cast<size_t>(depth) + 1);
  v[depth].kind = AMQP_FIELD_KIND_UTF8;
  v[depth].value.bytes = amqp_cstring_bytes("x");
  for (int i = depth - 1; i >= 0; --i) {
    v[i].kind = AMQP_FIELD_KIND_ARRAY;
    v[i].value.array.num_entries = 1;
    v[i].value.array.entries = &v[i + 1];
  }
  amqp_table_entry_t header;
  header.key = amqp_cstring_bytes("deep");
  header.value = v[0];
  amqp_basic_properties_t props{};
  props._flags =
      AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;
  props.message_id = amqp_cstring_bytes(message_id.c_str());
  props.headers.num_entries = 1;
  props.headers.entries = &header;
  return PublishConfirmedRaw(queue, &props);
}

bool AmqpAdmin::PublishBytes(const std::string& queue, const std::string& message_id,
                             const std::string& key, const std::string& value) {
  amqp_table_entry_t header;
  header.key = {key.size(), const_cast<char*>(key.data())};
  header.value.kind = AMQP_FIELD_KIND_BYTES;
  header.value.value.bytes = {value.size(), const_cast<char*>(value.data())};
  amqp_basic_properties_t props{};
  props._flags =
      AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;
  props.message_id = {message_id.size(), const_cast<char*>(message_id.data())};
  props.headers.num_entries = 1;
  props.headers.entries = &header;
  return PublishConfirmedRaw(queue, &props);
}

bool AmqpAdmin::PublishConfirmedRaw(const std::string& queue, const void* props) {
  return OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    if (amqp_confirm_select(c, ch) == nullptr) return false;
    if (amqp_basic_publish(c, ch, amqp_cstring_bytes(""), amqp_cstring_bytes(queue.c_str()), 0, 0,
                           static_cast<const amqp_basic_properties_t*>(props),
                           amqp_cstring_bytes("raw")) != AMQP_STATUS_OK) {
      return false;
    }
    amqp_frame_t frame;
    return amqp_simple_wait_frame(c, &frame) == AMQP_STATUS_OK &&
           frame.frame_type == AMQP_FRAME_METHOD &&
           frame.payload.method.id == AMQP_BASIC_ACK_METHOD;
  });
}

std::optional<AmqpAdmin::Message> AmqpAdmin::Get(const std::string& queue) {
  std::optional<Message> got;
  OnChannel([&](void* conn, uint16_t ch) {
    auto c = static_cast<amqp_connection_state_t>(conn);
    amqp_rpc_reply_t r = amqp_basic_get(c, ch, amqp_cstring_bytes(queue.c_str()), /*no_ack=*/1);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) return false;
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) return true;
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) return false;
    const bool redelivered = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded)->redelivered != 0;
    amqp_message_t m;
    if (amqp_read_message(c, ch, &m, 0).reply_type != AMQP_RESPONSE_NORMAL) return false;
    Message msg;
    msg.redelivered = redelivered;
    msg.body = BytesText(m.body);
    if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
      msg.message_id = BytesText(m.properties.message_id);
    }
    if (m.properties._flags & AMQP_BASIC_HEADERS_FLAG) {
      const amqp_table_t& h = m.properties.headers;
      for (int i = 0; i < h.num_entries; ++i) {
        msg.headers[BytesText(h.entries[i].key)] = FieldText(h.entries[i].value);
      }
    }
    amqp_destroy_message(&m);
    got = std::move(msg);
    return true;
  });
  return got;
}

// ---------------------------------------------------------------------------
// Daemon

Daemon::Daemon(std::string dir, std::string name, std::string amqp_uri,
               std::vector<BusinessSpec> businesses, DaemonOptions options)
    : dir_(std::move(dir)),
      name_(std::move(name)),
      uri_(std::move(amqp_uri)),
      businesses_(std::move(businesses)),
      options_(std::move(options)) {
  address_ = "unix://" + dir_ + "/" + name_ + ".sock";
  config_path_ = dir_ + "/" + name_ + ".yaml";
  log_path_ = dir_ + "/" + name_ + ".log";

  std::vector<std::string> uris = options_.uris;
  if (uris.empty()) uris.push_back(uri_);
  std::ostringstream y;
  y << "listen: [\"" << address_ << "\"";
  for (const std::string& extra : options_.extra_listen) y << ", \"" << extra << "\"";
  y << "]\n"
    << "broker:\n"
    << "  uris: [";
  for (size_t i = 0; i < uris.size(); ++i) y << (i ? ", " : "") << "\"" << uris[i] << "\"";
  y << "]\n"
    << "  heartbeat: " << options_.heartbeat.count() << "s\n"
    << "  connect_timeout: 5s\n"
    << options_.broker_extra;
  if (!options_.broker_tls_yaml.empty()) y << "  tls: " << options_.broker_tls_yaml << "\n";
  std::ostringstream producers, consumers;
  for (const auto& b : businesses_) {
    const std::string exchange = b.exchange.empty() ? b.name : b.exchange;
    if (b.producer) {
      producers << "  " << b.name << ": { exchange: " << exchange;
      if (!b.handle.empty()) producers << ", handle: " << b.handle;
      producers << " }\n";
    }
    if (b.consumer) {
      consumers << "  " << b.name << ": { exchange: " << exchange
                << ", queue_type: " << b.queue_type << ", prefetch: " << b.prefetch;
      if (!b.queue.empty()) consumers << ", queue: " << b.queue;
      if (b.max_deliveries > 0) consumers << ", max_deliveries: " << b.max_deliveries;
      if (!b.dead_letter) consumers << ", dead_letter: false";
      if (b.single_active) consumers << ", single_active: true";
      if (!b.retry.empty()) consumers << ", retry: " << b.retry;
      consumers << " }\n";
    }
  }
  y << (producers.str().empty() ? "producers: {}\n" : "producers:\n" + producers.str());
  y << (consumers.str().empty() ? "consumers: {}\n" : "consumers:\n" + consumers.str());
  y << "publish: { window: 1024";
  if (options_.wait_timeout) y << ", wait_timeout: " << options_.wait_timeout->count() << "ms";
  if (options_.republish_unconfirmed) {
    y << ", republish_unconfirmed: " << (*options_.republish_unconfirmed ? "true" : "false");
  }
  y << " }\n"
    // Tests stop daemons when done; the 10 s default drain would only slow the suite.
    << "shutdown: { drain: " << options_.drain.count() << "ms }\n"
    << "log: { level: " << options_.log_level << ", format: " << options_.log_format
    << " }\n"
    // Many daemons run at once: the default port would collide.
    << "metrics: { listen: \"" << options_.metrics_listen << "\" }\n"
    << options_.extra_yaml;
  if (!options_.config_file.empty()) {
    config_path_ = options_.config_file;
    return;
  }
  std::ofstream(config_path_) << y.str();
}

Daemon::~Daemon() { Stop(); }

void Daemon::Start(Clock::duration ready_timeout) {
  std::vector<std::string> argv;
  if (!options_.env.empty()) {
    argv.push_back("/usr/bin/env");
    argv.insert(argv.end(), options_.env.begin(), options_.env.end());
  }
  argv.insert(argv.end(), {DaemonPath(), "--config", config_path_});
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  process_ = std::make_unique<ChildProcess>(argv, log_path_);
  // Short reconnect backoff: the first health checks race the daemon's
  // listen(), and the default backoff (1 s, growing) would slow every test.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is also the connect timeout: keep its default.)
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 250);
  channel_ = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
  stub_ = pb::PubSub::NewStub(channel_);
  health_ = grpc::health::v1::Health::NewStub(channel_);

  std::string last;
  const bool ready = WaitUntil(
      [&] {
        if (!process_->Running()) return true;  // reported below
        auto h = Health(milliseconds(500));
        last =
            h ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*h) : "health RPC failed";
        return h == grpc::health::v1::HealthCheckResponse::SERVING;
      },
      ready_timeout, milliseconds(50));
  if (!process_->Running()) {
    const int st = process_->wait_status();
    throw std::runtime_error("daemon " + name_ + " exited during startup (" +
                             (WIFEXITED(st) ? "exit code " + std::to_string(WEXITSTATUS(st))
                                            : "signal " + std::to_string(WTERMSIG(st))) +
                             ")\nconfig " + config_path_ + ":\n" + ReadFile(config_path_) + "log " +
                             log_path_ + ":\n" + LogTail());
  }
  if (!ready) {
    throw std::runtime_error(
        "daemon " + name_ + " not SERVING after " +
        std::to_string(std::chrono::duration_cast<seconds>(ready_timeout).count()) +
        " s (last: " + last + ")\nlog " + log_path_ + ":\n" + LogTail());
  }
}

void Daemon::Stop() {
  if (process_) process_->Stop(seconds(10));
}

void Daemon::Kill() {
  if (process_) process_->Kill();
}

void Daemon::Signal(int sig) {
  if (process_ && process_->Running()) kill(process_->pid(), sig);
}

bool Daemon::WaitExit(Clock::duration timeout) { return !process_ || process_->WaitExit(timeout); }

std::string Daemon::Log() const { return ReadFile(log_path_); }

std::optional<pb::Topology> Daemon::Topology(Clock::duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  pb::GetTopologyRequest req;
  pb::Topology topology;
  if (!stub_->GetTopology(&ctx, req, &topology).ok()) return std::nullopt;
  return topology;
}

std::shared_ptr<grpc::Channel> Daemon::channel() { return channel_; }

pb::PubSub::Stub& Daemon::stub() { return *stub_; }

std::optional<grpc::health::v1::HealthCheckResponse::ServingStatus> Daemon::Health(
    Clock::duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  // Wait for the connection rather than fail fast: a sync client only drives
  // the connection handshake while an RPC is waiting, so fail-fast polling
  // would stall until gRPC's 5 s backup poller.
  ctx.set_wait_for_ready(true);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = health_->Check(&ctx, req, &resp);
  if (!s.ok()) return std::nullopt;
  return resp.status();
}

std::string Daemon::LogTail(size_t lines) const {
  std::ifstream in(log_path_);
  std::deque<std::string> tail;
  for (std::string line; std::getline(in, line);) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string out;
  for (const auto& l : tail) out += "  | " + l + "\n";
  return out;
}

// ---------------------------------------------------------------------------
// IntegrationTest

IntegrationTest::IntegrationTest(const std::string& test_name)
    : prefix_("it." + std::to_string(getpid()) + "." + test_name),
      uri_(AmqpUri()),
      admin_(std::make_unique<AmqpAdmin>(uri_)),
      failures_at_start_(FailedAssertionCount()) {
  const std::string why = admin_->Connect();
  if (!why.empty()) {
    FAIL("RabbitMQ is not reachable at " << uri_ << " (" << why
                                         << "). Integration tests need a broker: start one "
                                            "(rabbitmq-server -detached) or set "
                                            "MQS_TEST_AMQP_URI.");
  }
  char tmpl[] = "/tmp/mqs-it-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) FAIL("mkdtemp failed: " << strerror(errno));
  dir_ = tmpl;
}

IntegrationTest::~IntegrationTest() {
  const bool failed = FailedAssertionCount() > failures_at_start_ || std::uncaught_exceptions() > 0;
  if (failed) {
    for (const auto& d : daemons_) {
      std::cerr << "---- " << prefix_ << ": daemon " << d->name() << " log tail (" << d->log_path()
                << ") ----\n"
                << d->LogTail() << "---- end " << d->name() << " ----\n";
    }
  }
  for (auto& d : daemons_) d->Stop();
  for (const auto& q : queues_) admin_->DeleteQueue(q);
  for (const auto& e : exchanges_) admin_->DeleteExchange(e);
  if (failed) {
    std::cerr << "---- " << prefix_ << ": kept " << dir_ << " for inspection ----\n";
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string IntegrationTest::Business(const std::string& suffix) {
  std::string name = prefix_ + "." + suffix;
  exchanges_.push_back(name);
  queues_.push_back(name + ".queue");
  // Its dead letters, which every consumer gets by default.
  exchanges_.push_back(name + ".dlx");
  queues_.push_back(name + ".queue.dead");
  return name;
}

Daemon& IntegrationTest::StartDaemon(std::vector<BusinessSpec> businesses, DaemonOptions options) {
  const std::string name =
      options.name.empty() ? "d" + std::to_string(daemons_.size() + 1) : options.name;
  for (const BusinessSpec& b : businesses) {  // dead letters of overridden names
    if (!b.consumer || !b.dead_letter) continue;
    const std::string exchange = b.exchange.empty() ? b.name : b.exchange;
    CleanUpExchange(exchange + ".dlx");
    CleanUpQueue((b.queue.empty() ? exchange + ".queue" : b.queue) + ".dead");
  }
  daemons_.push_back(
      std::make_unique<Daemon>(dir_, name, uri_, std::move(businesses), std::move(options)));
  daemons_.back()->Start();
  return *daemons_.back();
}

// ---------------------------------------------------------------------------
// Subscriber

Subscriber::Subscriber(pb::PubSub::Stub& stub, Options options) : options_(std::move(options)) {
  stream_ = stub.Subscribe(&context_);
  pb::SubscribeRequest open;
  open.mutable_open()->set_business(options_.business);
  open.mutable_open()->set_prefetch(options_.prefetch);
  open.mutable_open()->set_consumer_name(options_.consumer_name);
  Write(open);  // a failure shows up as the stream's end status
  reader_ = std::thread([this] { ReadLoop(); });
}

Subscriber::~Subscriber() {
  context_.TryCancel();
  if (reader_.joinable()) reader_.join();
}

void Subscriber::ReadLoop() {
  pb::Delivery d;
  while (stream_->Read(&d)) {
    const uint64_t id = d.delivery_id();
    {
      std::lock_guard<std::mutex> lock(mu_);
      deliveries_.push_back(d);
    }
    cv_.notify_all();
    if (options_.on_delivery) options_.on_delivery(d);
    if (options_.auto_ack) Ack(id);
  }
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    status = stream_->Finish();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    ended_ = true;
  }
  cv_.notify_all();
}

bool Subscriber::Write(const pb::SubscribeRequest& request) {
  std::lock_guard<std::mutex> lock(write_mu_);
  if (writes_closed_) return false;
  return stream_->Write(request);
}

bool Subscriber::Ack(uint64_t delivery_id, bool multiple) {
  pb::SubscribeRequest r;
  r.mutable_ack()->set_delivery_id(delivery_id);
  r.mutable_ack()->set_multiple(multiple);
  return Write(r);
}

bool Subscriber::Nack(uint64_t delivery_id, bool requeue, bool multiple, uint32_t retry_after_ms) {
  pb::SubscribeRequest r;
  r.mutable_nack()->set_delivery_id(delivery_id);
  r.mutable_nack()->set_requeue(requeue);
  r.mutable_nack()->set_multiple(multiple);
  r.mutable_nack()->set_retry_after_ms(retry_after_ms);
  return Write(r);
}

bool Subscriber::WaitForCount(size_t n, Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return deliveries_.size() >= n || ended_; });
  return deliveries_.size() >= n;
}

size_t Subscriber::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deliveries_.size();
}

std::vector<pb::Delivery> Subscriber::deliveries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deliveries_;
}

void Subscriber::Cancel() { context_.TryCancel(); }

grpc::Status Subscriber::Leave(Clock::duration timeout) {
  CloseWrites();
  if (auto status = WaitEnded(timeout)) return *status;
  Cancel();
  auto status = WaitEnded(timeout);
  return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                      "[harness] stream not ended " +
                          std::to_string(std::chrono::duration_cast<seconds>(timeout).count()) +
                          " s after half-close; cancelled" +
                          (status ? " (" + StatusText(*status) + ")" : ""));
}

void Subscriber::CloseWrites() {
  std::lock_guard<std::mutex> lock(write_mu_);
  if (!writes_closed_) stream_->WritesDone();
  writes_closed_ = true;
}

std::optional<grpc::Status> Subscriber::WaitEnded(Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return ended_; })) return std::nullopt;
  return status_;
}

bool Subscriber::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

// ---------------------------------------------------------------------------
// Publishing

PublishStreamOutcome PublishStream(pb::PubSub::Stub& stub,
                                   const std::vector<pb::PublishRequest>& requests,
                                   Clock::duration timeout) {
  PublishStreamOutcome out;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  auto stream = stub.PublishStream(&ctx);
  std::thread writer([&] {
    for (const auto& r : requests) {
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
  });
  // Once every request is answered and writes are done, the server should end
  // the stream promptly; if it does not, cancel after a grace period so the
  // test fails fast (status CANCELLED) instead of waiting out the deadline.
  std::mutex mu;
  std::condition_variable cv;
  bool all_answered = false, done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return all_answered || done; });
    if (done) return;
    if (!cv.wait_for(lock, seconds(5), [&] { return done; })) ctx.TryCancel();
  });
  pb::PublishResult result;
  while (stream->Read(&result)) {
    out.results.push_back(result);
    if (out.results.size() == requests.size()) {
      std::lock_guard<std::mutex> lock(mu);
      all_answered = true;
      cv.notify_all();
    }
  }
  writer.join();
  out.status = stream->Finish();
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    cv.notify_all();
  }
  watchdog.join();
  return out;
}

AsyncPublishStream::AsyncPublishStream(pb::PubSub::Stub& stub, Options options)
    : options_(std::move(options)), rate_(options_.rate) {
  context_.set_deadline(DeadlineIn(options_.timeout));
  stream_ = stub.PublishStream(&context_);
  writer_ = std::thread([this] { WriteLoop(); });
  reader_ = std::thread([this] { ReadLoop(); });
}

AsyncPublishStream::~AsyncPublishStream() {
  context_.TryCancel();
  if (writer_.joinable()) writer_.join();
  if (reader_.joinable()) reader_.join();
}

void AsyncPublishStream::WriteLoop() {
  auto next = Clock::now();
  for (const auto& request : options_.requests) {
    const double rate = rate_.load();
    if (rate > 0) {
      // On schedule, not "sleep after each": the rate holds whatever Write costs.
      std::this_thread::sleep_until(next);
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1 / rate));
    } else {
      next = Clock::now();
    }
    if (!stream_->Write(request)) break;
    if (options_.on_written) options_.on_written(request);
    std::lock_guard<std::mutex> lock(mu_);
    ++written_;
  }
  stream_->WritesDone();
  std::lock_guard<std::mutex> lock(mu_);
  writer_done_ = true;
  cv_.notify_all();
}

void AsyncPublishStream::ReadLoop() {
  pb::PublishResult result;
  while (stream_->Read(&result)) {
    if (options_.on_result) options_.on_result(result);
    std::lock_guard<std::mutex> lock(mu_);
    results_.push_back(result);
    cv_.notify_all();
  }
  // Finish only once the writer is done with the stream.
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return writer_done_; });
  }
  grpc::Status status = stream_->Finish();
  std::lock_guard<std::mutex> lock(mu_);
  status_ = status;
  ended_ = true;
  cv_.notify_all();
}

size_t AsyncPublishStream::written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return written_;
}

size_t AsyncPublishStream::answered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return results_.size();
}

bool AsyncPublishStream::WaitAnswered(size_t n, Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return results_.size() >= n || ended_; });
  return results_.size() >= n;
}

std::optional<grpc::Status> AsyncPublishStream::WaitEnded(Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return ended_; })) return std::nullopt;
  return status_;
}

std::vector<pb::PublishResult> AsyncPublishStream::results() const {
  std::lock_guard<std::mutex> lock(mu_);
  return results_;
}

bool AsyncPublishStream::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

void AsyncPublishStream::Cancel() { context_.TryCancel(); }

pb::PublishRequest MakePublish(const std::string& business, const std::string& message_id,
                               uint64_t sequence, const std::string& payload) {
  pb::PublishRequest r;
  r.set_business(business);
  r.set_message_id(message_id);
  r.set_sequence(sequence);
  r.set_payload(payload);
  return r;
}

grpc::Status PublishOne(pb::PubSub::Stub& stub, const pb::PublishRequest& request,
                        pb::PublishResult* result, Clock::duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(timeout));
  return stub.Publish(&ctx, request, result);
}

std::vector<std::string> PublishConfirmed(pb::PubSub::Stub& stub, const std::string& business,
                                          int n, const std::string& tag) {
  std::vector<pb::PublishRequest> requests;
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) {
    ids.push_back(tag + "-" + std::to_string(i));
    requests.push_back(
        MakePublish(business, ids.back(), static_cast<uint64_t>(i) + 1, "payload-" + ids.back()));
  }
  PublishStreamOutcome out = PublishStream(stub, requests, seconds(30));
  INFO("PublishStream to " << business << ": " << StatusText(out.status));
  REQUIRE(out.results.size() == static_cast<size_t>(n));
  for (const auto& r : out.results) {
    INFO(ResultText(r));
    REQUIRE(r.status() == pb::PublishResult::CONFIRMED);
  }
  CHECK(out.status.ok());
  return ids;
}

std::vector<std::string> MessageIds(const std::vector<pb::Delivery>& deliveries) {
  std::vector<std::string> ids;
  for (const auto& d : deliveries) ids.push_back(d.message_id());
  return ids;
}

std::map<std::string, std::string> UserHeaders(const pb::Delivery& delivery) {
  std::map<std::string, std::string> headers(delivery.headers().begin(), delivery.headers().end());
  headers.erase("x-delivery-count");
  return headers;
}

bool WaitForQueue(AmqpAdmin& admin, const std::string& queue, std::optional<uint32_t> consumers,
                  std::optional<uint32_t> messages, Clock::duration timeout) {
  std::optional<AmqpAdmin::QueueInfo> last;
  const bool ok = WaitUntil(
      [&] {
        last = admin.InspectQueue(queue);
        return last && (!consumers || last->consumers == *consumers) &&
               (!messages || last->messages == *messages);
      },
      timeout, milliseconds(50));
  if (!ok) {
    UNSCOPED_INFO("queue " << queue << ": "
                           << (last ? "consumers=" + std::to_string(last->consumers) +
                                          " ready=" + std::to_string(last->messages)
                                    : std::string("missing or broker unreachable")));
  }
  return ok;
}

// ---------------------------------------------------------------------------
// BrokerControl

namespace {

std::string FindProgram(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/usr/bin",
                          "/usr/local/bin", "/sbin"}) {
    std::string path = std::string(dir) + "/" + name;
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

std::string CommandText(const std::vector<std::string>& argv, const CommandResult& r) {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  return "'" + cmd + "' exited " + std::to_string(r.exit_code) + ": " + r.out + r.err;
}

bool ProcessAlive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

std::string ShortHostname() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string h = host;
  return h.substr(0, h.find('.'));
}

}  // namespace

BrokerControl::BrokerControl(std::string amqp_uri)
    : BrokerControl(Node{std::move(amqp_uri),
                         "",
                         {},
                         "/var/lib/rabbitmq/mnesia/rabbit@" + ShortHostname() + ".pid"}) {}

BrokerControl::BrokerControl(Node node) : node_(std::move(node)) {}

BrokerControl::~BrokerControl() {
  const std::string why = Restore();
  if (!why.empty()) std::cerr << "[harness] BrokerControl: could not restore the broker: " << why;
}

std::string BrokerControl::CheckControllable() const {
  if (geteuid() != 0) return "fault tests control the local RabbitMQ node and must run as root";
  if (FindProgram("rabbitmqctl").empty() || FindProgram("rabbitmq-server").empty()) {
    return "rabbitmqctl/rabbitmq-server not found; fault tests need a local RabbitMQ node";
  }
  return "";
}

CommandResult BrokerControl::Ctl(std::vector<std::string> args, Clock::duration timeout) {
  std::vector<std::string> argv{FindProgram("rabbitmqctl")};
  if (!node_.node_name.empty()) {
    argv.push_back("-n");
    argv.push_back(node_.node_name);
  }
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = RunCommand(argv, timeout);
  if (r.exit_code != 0) r.err = CommandText(argv, r);
  return r;
}

pid_t BrokerControl::FindPid() {
  if (!node_.pid_file.empty()) {
    std::string text = ReadFile(node_.pid_file);
    const pid_t pid = static_cast<pid_t>(std::atol(text.c_str()));
    if (pid > 0 && ReadFile("/proc/" + std::to_string(pid) + "/comm").rfind("beam", 0) == 0) {
      return pid;
    }
  }
  CommandResult r = Ctl({"eval", "list_to_integer(os:getpid())."}, seconds(30));
  if (r.exit_code != 0) return 0;
  return static_cast<pid_t>(std::atol(r.out.c_str()));
}

std::string BrokerControl::StopNode() {
  const pid_t pid = FindPid();
  node_stopped_ = true;  // from here on, Restore() starts it again
  CommandResult r = Ctl({"stop"}, seconds(60));
  if (r.exit_code != 0) return r.err;
  // rabbitmqctl stop returns as the VM halts; wait until it is gone, so a
  // start cannot meet a node of the same name still running.
  if (pid > 0 && !WaitUntil([&] { return !ProcessAlive(pid); }, seconds(30), milliseconds(50))) {
    return "the node's VM (pid " + std::to_string(pid) + ") still runs 30 s after rabbitmqctl stop";
  }
  return "";
}

std::string BrokerControl::StartNode(Clock::duration timeout) {
  std::vector<std::string> argv{"/usr/bin/env"};
  argv.insert(argv.end(), node_.start_env.begin(), node_.start_env.end());
  argv.insert(argv.end(),
              {"/bin/sh", "-c",
               "exec " + FindProgram("rabbitmq-server") + " -detached </dev/null >/dev/null 2>&1"});
  CommandResult r = RunCommand(argv, seconds(60));
  if (r.exit_code != 0) return CommandText(argv, r);
  if (!WaitAnswers(timeout)) {
    return "the node does not answer AMQP logins at " + node_.amqp_uri + " " +
           std::to_string(std::chrono::duration_cast<seconds>(timeout).count()) +
           " s after rabbitmq-server -detached";
  }
  node_stopped_ = false;
  return "";
}

std::string BrokerControl::StopApp() {
  app_stopped_ = true;
  CommandResult r = Ctl({"stop_app"}, seconds(60));
  return r.exit_code == 0 ? "" : r.err;
}

std::string BrokerControl::StartApp(Clock::duration timeout) {
  CommandResult r = Ctl({"start_app"}, timeout);
  if (r.exit_code != 0) return r.err;
  if (!WaitAnswers(timeout)) return "no AMQP login after start_app at " + node_.amqp_uri;
  app_stopped_ = false;
  return "";
}

std::string BrokerControl::Freeze() {
  const pid_t pid = FindPid();
  if (pid <= 0) return "cannot find the pid of the node's VM";
  if (kill(pid, SIGSTOP) != 0) return "kill(SIGSTOP): " + std::string(strerror(errno));
  frozen_pid_ = pid;
  return "";
}

std::string BrokerControl::Thaw() {
  if (frozen_pid_ == 0) return "";
  if (kill(frozen_pid_, SIGCONT) != 0 && errno != ESRCH) {
    return "kill(SIGCONT): " + std::string(strerror(errno));
  }
  frozen_pid_ = 0;
  return "";
}

std::string BrokerControl::SetMemoryWatermark(const std::string& fraction) {
  watermark_changed_ = fraction != original_watermark_;
  CommandResult r = Ctl({"set_vm_memory_high_watermark", fraction}, seconds(30));
  if (r.exit_code != 0) {
    watermark_changed_ = true;  // unknown state: restore it
    return r.err;
  }
  return "";
}

std::string BrokerControl::SetRabbitEnv(const std::string& key, const std::string& erlang_value) {
  if (!env_changed_.contains(key)) {
    // Prints `{ok,Value}` or `undefined`.
    CommandResult was = Ctl({"eval", "application:get_env(rabbit, " + key + ")."}, seconds(30));
    if (was.exit_code != 0) return was.err;
    std::string value = was.out.substr(0, was.out.find('\n'));
    value =
        value.starts_with("{ok,") && value.ends_with("}") ? value.substr(4, value.size() - 5) : "";
    env_changed_[key] = value;
  }
  const std::string expr = erlang_value.empty()
                               ? "application:unset_env(rabbit, " + key + ")."
                               : "application:set_env(rabbit, " + key + ", " + erlang_value + ").";
  CommandResult r = Ctl({"eval", expr}, seconds(30));
  return r.exit_code == 0 ? "" : r.err;
}

bool BrokerControl::WaitAnswers(Clock::duration timeout) {
  return WaitUntil([&] { return AmqpAdmin(node_.amqp_uri).Connect().empty(); }, timeout,
                   milliseconds(200));
}

std::string BrokerControl::Restore() {
  std::string errors;
  auto note = [&](const std::string& e) {
    if (!e.empty()) errors += e + "\n";
  };
  note(Thaw());
  if (node_stopped_) note(StartNode());
  if (app_stopped_) note(StartApp());
  if (watermark_changed_) note(SetMemoryWatermark(original_watermark_));
  for (const auto& [key, value] : std::map<std::string, std::string>(env_changed_)) {
    note(SetRabbitEnv(key, value));
  }
  env_changed_.clear();
  if (!WaitAnswers(seconds(60))) note("the broker at " + node_.amqp_uri + " does not answer");
  return errors;
}

std::string StatusText(const grpc::Status& status) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int code = status.error_code();
  std::string name = code >= 0 && code <= 16 ? kNames[code] : std::to_string(code);
  return name + ": " + status.error_message();
}

std::string ResultText(const pb::PublishResult& result) {
  return "seq=" + std::to_string(result.sequence()) + " id=" + result.message_id() + " " +
         pb::PublishResult::Status_Name(result.status()) +
         (result.error().empty() ? "" : " (" + result.error() + ")");
}

std::vector<std::string> OutputLines(const std::string& text) {
  std::vector<std::string> out;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    out.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

std::string CommandOutput(const CommandResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\n" + r.out + r.err;
}

ScriptedNodes::~ScriptedNodes() {
  if (!started_) return;
  // A destructor must not throw: a failed stop is printed, the next test's
  // start reports nodes left behind.
  try {
    const CommandResult r = Script("stop", std::chrono::seconds(90));
    std::cout << "[" << tag_ << "] " << script_ << " stop (scope end): " << CommandOutput(r)
              << std::flush;
  } catch (const std::exception& e) {
    std::cerr << "[" << tag_ << "] " << script_ << " stop (scope end) failed: " << e.what()
              << std::endl;
  }
}

CommandResult ScriptedNodes::Start() {
  started_ = true;
  return Script("start", std::chrono::seconds(150));
}

CommandResult ScriptedNodes::Stop() {
  started_ = false;
  return Script("stop", std::chrono::seconds(90));
}

CommandResult ScriptedNodes::Script(const std::string& command, Clock::duration timeout) const {
  return RunCommand({"/bin/bash", script_, command}, timeout);
}

ScopedEnv::ScopedEnv(const char* name, const std::string& value) : name_(name) {
  const char* old = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): before any thread
  if (old != nullptr) old_ = old;
  setenv(name, value.c_str(), 1);
}

ScopedEnv::~ScopedEnv() {
  if (old_) {
    setenv(name_, old_->c_str(), 1);
  } else {
    unsetenv(name_);
  }
}

}  // namespace mqs::it
