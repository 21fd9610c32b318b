#include "amqp/connection.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "config/config.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"
#include "util/uri.h"

namespace mqs::amqp {
namespace {

timeval ToTimeval(std::chrono::milliseconds d) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

amqp_table_entry_t BoolEntry(const char* key, bool value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = value ? 1 : 0;
  return e;
}

amqp_table_entry_t StringEntry(const char* key, const std::string& value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = AmqpBytes(value);
  return e;
}

// Maps a broker reply code (AMQP 0-9-1 constants) to the most specific status.
absl::StatusCode CodeForReply(int reply_code) {
  switch (reply_code) {
    case AMQP_NOT_FOUND:
      return absl::StatusCode::kNotFound;
    case AMQP_ACCESS_REFUSED:
      return absl::StatusCode::kPermissionDenied;
    case AMQP_PRECONDITION_FAILED:
    case AMQP_RESOURCE_LOCKED:
      return absl::StatusCode::kFailedPrecondition;
    case AMQP_RESOURCE_ERROR:
      return absl::StatusCode::kResourceExhausted;
    case AMQP_CONNECTION_FORCED:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

// An SSL socket with the settings of `tls`: TLS 1.2 or later, the CA bundle,
// the optional client certificate, peer and host name verification.
absl::StatusOr<amqp_socket_t*> NewTlsSocket(amqp_connection_state_t state, const TlsOptions& tls) {
  amqp_socket_t* socket = amqp_ssl_socket_new(state);
  if (socket == nullptr) return absl::ResourceExhaustedError("amqp_ssl_socket_new failed");
  int rc = amqp_ssl_socket_set_ssl_versions(socket, AMQP_TLSv1_2, AMQP_TLSvLATEST);
  if (rc != AMQP_STATUS_OK) {
    return absl::InternalError(
        util::StrCat("cannot require TLS 1.2 or later: ", amqp_error_string2(rc)));
  }
  const std::string ca = tls.ca.empty() ? std::string(config::kSystemCaBundle) : tls.ca;
  rc = amqp_ssl_socket_set_cacert(socket, ca.c_str());
  if (rc != AMQP_STATUS_OK) {
    // The config checked the file is readable: it holds no PEM certificate.
    return absl::InvalidArgumentError(
        util::StrCat("cannot load CA bundle ", ca, " (broker.tls.ca): ", amqp_error_string2(rc)));
  }
  if (!tls.cert.empty()) {
    rc = amqp_ssl_socket_set_key(socket, tls.cert.c_str(), tls.key.c_str());
    if (rc != AMQP_STATUS_OK) {
      return absl::InvalidArgumentError(
          util::StrCat("cannot load client certificate ", tls.cert, " and key ", tls.key,
                       " (broker.tls.cert, broker.tls.key; mismatched, or an encrypted key?): ",
                       amqp_error_string2(rc)));
    }
  }
  amqp_ssl_socket_set_verify_peer(socket, tls.verify ? 1 : 0);
  amqp_ssl_socket_set_verify_hostname(socket, tls.verify ? 1 : 0);
  return socket;
}

// rabbitmq-c's TLS errors say what failed, not what to look at.
std::string TlsFailureHint(int rc, const config::BrokerUri& uri, const TlsOptions& tls) {
  if (!uri.tls) return "";
  // OpenSSL's own reason ("certificate verify failed", "wrong version
  // number"), from this thread's error queue, which rabbitmq-c leaves filled.
  std::string openssl;
  if (const unsigned long err = ERR_peek_last_error(); err != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    openssl = util::StrCat(": ", buf);
  }
  ERR_clear_error();
  const std::string ca = tls.ca.empty()
                             ? util::StrCat("the system's CA bundle ", config::kSystemCaBundle)
                             : util::StrCat("broker.tls.ca ", tls.ca);
  switch (rc) {
    case AMQP_STATUS_SSL_PEER_VERIFY_FAILED:
      return util::StrCat(
          " (TLS certificate verification failed: the broker's certificate does "
          "not chain to ",
          ca, openssl, ")");
    case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED:
      return util::StrCat(
          " (TLS host name verification failed: the broker's certificate is not "
          "for host ",
          uri.host, openssl, ")");
    case AMQP_STATUS_SSL_CONNECTION_FAILED:
      return util::StrCat(" (TLS handshake failed", openssl, "; is port ", uri.port,
                          " a TLS listener, does the broker's certificate chain to ", ca,
                          ", does the broker require a client certificate?)");
    default:
      return openssl.empty() ? "" : util::StrCat(" (TLS", openssl, ")");
  }
}

}  // namespace

absl::Status StatusFromLibrary(int code, std::string_view what) {
  const std::string msg = util::StrCat(what, ": ", amqp_error_string2(code));
  switch (code) {
    case AMQP_STATUS_OK:
      return absl::OkStatus();
    case AMQP_STATUS_TIMEOUT:
      return absl::DeadlineExceededError(msg);
    case AMQP_STATUS_NO_MEMORY:
      return absl::ResourceExhaustedError(msg);
    case AMQP_STATUS_BAD_URL:
    case AMQP_STATUS_INVALID_PARAMETER:
      return absl::InvalidArgumentError(msg);
    default:
      // Socket, heartbeat and protocol errors: the broker is out of reach.
      return absl::UnavailableError(msg);
  }
}

SocketTimeouts SocketTimeoutsFor(std::chrono::milliseconds heartbeat) {
  SocketTimeouts t;
  if (heartbeat.count() > 0) {
    // heartbeat <= 65535 s (config), so 2 x heartbeat in ms fits an int.
    t.user_timeout_ms = static_cast<int>(std::min<int64_t>(2 * heartbeat.count(), INT32_MAX));
  }
  return t;
}

absl::Status ApplySocketTimeouts(int fd, const SocketTimeouts& t) {
  const int on = 1;
  const unsigned int user_timeout = static_cast<unsigned int>(t.user_timeout_ms);
  struct Option {
    int level;
    int name;
    const void* value;
    socklen_t size;
    const char* what;
  };
  const Option options[] = {
      {SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on), "SO_KEEPALIVE"},
      {IPPROTO_TCP, TCP_KEEPIDLE, &t.keepalive_idle_s, sizeof(int), "TCP_KEEPIDLE"},
      {IPPROTO_TCP, TCP_KEEPINTVL, &t.keepalive_interval_s, sizeof(int), "TCP_KEEPINTVL"},
      {IPPROTO_TCP, TCP_KEEPCNT, &t.keepalive_count, sizeof(int), "TCP_KEEPCNT"},
      {IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout), "TCP_USER_TIMEOUT"},
  };
  for (const Option& o : options) {
    if (::setsockopt(fd, o.level, o.name, o.value, o.size) != 0) {
      return absl::InternalError(util::StrCat("setsockopt ", o.what, " on the broker socket: ",
                                              std::generic_category().message(errno)));
    }
  }
  return absl::OkStatus();
}

void WriteGuard::Arm(int fd, std::chrono::steady_clock::time_point deadline) {
  util::MutexLock lock(&mu_);
  fd_ = fd;
  deadline_ = deadline;
}

void WriteGuard::Disarm() {
  util::MutexLock lock(&mu_);
  fd_ = -1;
}

bool WriteGuard::Expire(std::chrono::steady_clock::time_point now) {
  util::MutexLock lock(&mu_);
  if (fd_ < 0 || now < deadline_) return false;
  ::shutdown(fd_, SHUT_RDWR);
  fd_ = -1;
  return true;
}

void ConnectAbort::Arm(int fd) {
  util::MutexLock lock(&mu_);
  fd_ = fd;
  if (aborted_ && fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void ConnectAbort::Disarm() {
  util::MutexLock lock(&mu_);
  fd_ = -1;
}

void ConnectAbort::Abort() {
  util::MutexLock lock(&mu_);
  aborted_ = true;
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

bool ConnectAbort::aborted() const {
  util::MutexLock lock(&mu_);
  return aborted_;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const std::string& uri,
                                                             const ConnectOptions& options,
                                                             ConnectAbort* abort) {
  const std::string masked = util::MaskPassword(uri);
  absl::StatusOr<config::BrokerUri> info = config::ParseBrokerUri(uri);
  if (!info.ok()) return info.status();

  amqp_connection_state_t state = amqp_new_connection();
  if (state == nullptr) return absl::ResourceExhaustedError("amqp_new_connection failed");
  std::unique_ptr<Connection> conn(new Connection(state));

  amqp_socket_t* socket = nullptr;
  if (info->tls) {
    absl::StatusOr<amqp_socket_t*> tls = NewTlsSocket(state, options.tls);
    if (!tls.ok()) {
      return absl::Status(tls.status().code(),
                          util::StrCat("broker uri ", masked, ": ", tls.status().message()));
    }
    socket = *tls;
    conn->tls_ = true;
  } else {
    socket = amqp_tcp_socket_new(state);
    if (socket == nullptr) return absl::ResourceExhaustedError("amqp_tcp_socket_new failed");
  }
  // For amqps the TLS handshake is inside the open, under the same timeout.
  timeval connect_tv = ToTimeval(options.connect_timeout);
  int rc = amqp_socket_open_noblock(socket, info->host.c_str(), info->port, &connect_tv);
  if (rc != AMQP_STATUS_OK) {
    conn->dead_ = true;
    return absl::UnavailableError(util::StrCat("cannot connect to ", masked, ": ",
                                               amqp_error_string2(rc),
                                               TlsFailureHint(rc, *info, options.tls)));
  }
  // Unregistered before `conn` can close the socket (a failed open below
  // destroys it; declared after it, so destroyed first).
  struct Disarm {
    ConnectAbort* abort;
    ~Disarm() {
      if (abort != nullptr) abort->Disarm();
    }
  } disarm{abort};
  if (abort != nullptr) abort->Arm(amqp_get_sockfd(state));
  // Dead-peer detection from the first byte on, the handshake included;
  // refined below once the broker has agreed a heartbeat.
  if (absl::Status s =
          ApplySocketTimeouts(amqp_get_sockfd(state), SocketTimeoutsFor(options.heartbeat));
      !s.ok()) {
    conn->dead_ = true;
    return s;
  }
  timeval handshake_tv = ToTimeval(options.connect_timeout);
  amqp_set_handshake_timeout(state, &handshake_tv);
  timeval rpc_tv = ToTimeval(options.rpc_timeout);
  amqp_set_rpc_timeout(state, &rpc_tv);

  // rabbitmq-c 0.11 advertises neither consumer_cancel_notify nor
  // connection.blocked; without them the broker would silently drop a
  // consumer whose queue is deleted and never tell us about resource alarms.
  amqp_table_entry_t caps[] = {
      BoolEntry("publisher_confirms", true),
      BoolEntry("basic.nack", true),
      BoolEntry("consumer_cancel_notify", true),
      BoolEntry("connection.blocked", true),
      BoolEntry("authentication_failure_close", true),
      BoolEntry("exchange_exchange_bindings", true),
  };
  // The table points into these strings: they must outlive the login call.
  const std::string product = "mq-sidecar";
  const std::string platform = "C++/rabbitmq-c";
  const std::string name = options.connection_name;
  amqp_table_entry_t props[4];
  props[0] = StringEntry("product", product);
  props[1] = StringEntry("connection_name", name);
  props[2] = StringEntry("platform", platform);
  props[3].key = amqp_cstring_bytes("capabilities");
  props[3].value.kind = AMQP_FIELD_KIND_TABLE;
  props[3].value.value.table.num_entries = static_cast<int>(std::size(caps));
  props[3].value.value.table.entries = caps;
  amqp_table_t client_properties;
  client_properties.num_entries = static_cast<int>(std::size(props));
  client_properties.entries = props;

  const int heartbeat_s = static_cast<int>(options.heartbeat.count() / 1000);
  amqp_rpc_reply_t reply = amqp_login_with_properties(
      state, info->vhost.c_str(), 0 /*channel_max: the broker's*/, 131072 /*frame_max*/,
      heartbeat_s, &client_properties, AMQP_SASL_METHOD_PLAIN, info->user.c_str(),
      info->password.c_str());
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
    conn->dead_ = true;
    if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      auto* close = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
      return absl::Status(
          CodeForReply(close->reply_code),
          util::StrCat("login to ", masked, " refused: ", AmqpText(close->reply_text)));
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
      // RabbitMQ closes the socket on bad credentials unless it honours
      // authentication_failure_close; say what most likely happened.
      return absl::PermissionDeniedError(util::StrCat(
          "login to ", masked, " failed: connection closed (wrong user, password or vhost?)"));
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_SSL_ERROR && info->tls) {
      // With TLS 1.3 a broker that refuses the client's certificate (or its
      // absence) says so after the handshake: the login's first read fails.
      std::string hint = TlsFailureHint(reply.library_error, *info, options.tls);
      return absl::UnavailableError(
          util::StrCat("login to ", masked, " failed: the broker ended the TLS session", hint,
                       options.tls.cert.empty()
                           ? " (no client certificate is configured: does the broker require one? "
                             "broker.tls.cert and broker.tls.key)"
                           : util::StrCat(" (does the broker accept the client certificate ",
                                          options.tls.cert, "?)")));
    }
    return absl::UnavailableError(util::StrCat("login to ", masked, " failed: ",
                                               reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                                                   ? amqp_error_string2(reply.library_error)
                                                   : "unexpected reply"));
  }
  conn->logged_in_ = true;
  // The broker may have lowered the heartbeat (its own setting wins if
  // smaller): the user timeout follows the one in force.
  const std::chrono::seconds negotiated(amqp_get_heartbeat(state));
  if (negotiated != options.heartbeat) {
    if (absl::Status s = ApplySocketTimeouts(amqp_get_sockfd(state), SocketTimeoutsFor(negotiated));
        !s.ok()) {
      conn->dead_ = true;
      return s;
    }
  }
  return conn;
}

Connection::~Connection() {
  // Bounded: amqp_connection_close would wait the whole RPC timeout for a
  // broker that does not answer (frozen, cut off).
  if (logged_in_ && !dead_) CloseWithin(kCloseBound);
  amqp_destroy_connection(state_);
}

int Connection::fd() const { return amqp_get_sockfd(state_); }
int Connection::channel_max() const {
  const int max = amqp_get_channel_max(state_);
  return max == 0 ? 65535 : max;
}
int Connection::heartbeat_seconds() const { return amqp_get_heartbeat(state_); }

void Connection::SetRpcTimeout(std::chrono::milliseconds timeout) {
  timeval tv = ToTimeval(timeout);
  amqp_set_rpc_timeout(state_, &tv);
}

absl::Status Connection::OpenChannel(amqp_channel_t channel) {
  amqp_channel_open(state_, channel);
  return RpcStatus(util::StrCat("channel.open ", channel), channel);
}

absl::Status Connection::CloseChannel(amqp_channel_t channel) {
  amqp_rpc_reply_t reply = amqp_channel_close(state_, channel, AMQP_REPLY_SUCCESS);
  return ReplyStatus(reply, util::StrCat("channel.close ", channel), channel);
}

absl::Status Connection::RpcStatus(std::string_view what, amqp_channel_t channel) {
  return ReplyStatus(amqp_get_rpc_reply(state_), what, channel);
}

absl::Status Connection::ReplyStatus(const amqp_rpc_reply_t& reply, std::string_view what,
                                     amqp_channel_t channel) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return absl::OkStatus();
    case AMQP_RESPONSE_NONE:
      return absl::InternalError(util::StrCat(what, ": no reply"));
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      // After a failed synchronous call rabbitmq-c's framing state is
      // unknown; the only safe continuation is a new connection.
      dead_ = true;
      return StatusFromLibrary(reply.library_error, what);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      break;
  }
  if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    auto* close = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
    SendConnectionCloseOk();
    dead_ = true;
    return absl::UnavailableError(
        util::StrCat(what, ": broker closed the connection: ", close->reply_code, " ",
                     AmqpText(close->reply_text)));
  }
  if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    auto* close = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
    const int code = close->reply_code;
    std::string text(AmqpText(close->reply_text));
    SendChannelCloseOk(channel);
    return absl::Status(CodeForReply(code), util::StrCat(what, ": ", text));
  }
  return absl::InternalError(util::StrCat(what, ": unexpected server method ", reply.reply.id));
}

bool Connection::HasBuffered() {
  return amqp_frames_enqueued(state_) || amqp_data_in_buffer(state_);
}

absl::StatusOr<bool> Connection::NextFrame(amqp_frame_t* frame) {
  timeval zero{0, 0};
  const int rc = amqp_simple_wait_frame_noblock(state_, frame, &zero);
  if (rc == AMQP_STATUS_OK) return true;
  if (rc == AMQP_STATUS_TIMEOUT) return false;
  dead_ = true;
  return StatusFromLibrary(rc, "reading from the broker");
}

absl::Status Connection::ReadContent(amqp_channel_t channel, amqp_message_t* message) {
  amqp_rpc_reply_t reply = amqp_read_message(state_, channel, message, 0);
  if (reply.reply_type == AMQP_RESPONSE_NORMAL) return absl::OkStatus();
  dead_ = true;
  if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
    return StatusFromLibrary(reply.library_error, "reading message content");
  }
  return absl::InternalError("reading message content: unexpected frame");
}

uint32_t Connection::frame_max() const { return static_cast<uint32_t>(amqp_get_frame_max(state_)); }

bool Connection::CloseWithin(std::chrono::milliseconds bound) {
  if (!logged_in_ || dead_) return true;
  dead_ = true;
  const auto deadline = std::chrono::steady_clock::now() + bound;
  // rabbitmq-c sends without a deadline: with a send buffer the broker does
  // not drain, connection.close would block. Writable means room for it.
  pollfd pfd{fd(), POLLOUT, 0};
  if (::poll(&pfd, 1, 0) != 1 || (pfd.revents & POLLOUT) == 0) return false;
  amqp_connection_close_t close{};
  close.reply_code = AMQP_REPLY_SUCCESS;
  close.reply_text = amqp_cstring_bytes("mq-sidecar is shutting down");
  if (amqp_send_method(state_, 0, AMQP_CONNECTION_CLOSE_METHOD, &close) != AMQP_STATUS_OK) {
    return false;
  }
  amqp_frame_t frame;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    timeval tv = ToTimeval(left);
    if (amqp_simple_wait_frame_noblock(state_, &frame, &tv) != AMQP_STATUS_OK) return false;
    // Deliveries and confirms still on the way are dropped: the broker
    // requeues the former, the publisher has answered the latter.
    if (frame.frame_type != AMQP_FRAME_METHOD || frame.channel != 0) continue;
    if (frame.payload.method.id == AMQP_CONNECTION_CLOSE_OK_METHOD) return true;
    if (frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
      SendConnectionCloseOk();  // both sides closed at once
      return true;
    }
  }
}

void Connection::SendChannelCloseOk(amqp_channel_t channel) {
  amqp_channel_close_ok_t ok;
  ok.dummy = 0;
  if (amqp_send_method(state_, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK) {
    dead_ = true;
  }
}

void Connection::SendConnectionCloseOk() {
  amqp_connection_close_ok_t ok;
  ok.dummy = 0;
  amqp_send_method(state_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
  dead_ = true;
}

}  // namespace mqs::amqp
