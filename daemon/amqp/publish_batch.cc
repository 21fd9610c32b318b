#include "amqp/publish_batch.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "util/strings.h"

namespace mqs::amqp {
namespace {

constexpr size_t kFrameHeader = 7;                   // type (1), channel (2), payload size (4)
constexpr size_t kFrameOverhead = kFrameHeader + 1;  // + frame-end octet

void PutU16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

void PutU32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

void PutU64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

}  // namespace

size_t PublishBatch::BeginFrame(uint8_t type, amqp_channel_t channel) {
  buffer_.push_back(static_cast<char>(type));
  PutU16(buffer_, channel);
  PutU32(buffer_, 0);  // payload size, filled in by EndFrame
  return buffer_.size();
}

void PublishBatch::EndFrame(size_t payload_at) {
  const auto size = static_cast<uint32_t>(buffer_.size() - payload_at);
  for (int i = 0; i < 4; ++i) {
    buffer_[payload_at - 4 + static_cast<size_t>(i)] =
        static_cast<char>((size >> (24 - 8 * i)) & 0xff);
  }
  buffer_.push_back(static_cast<char>(AMQP_FRAME_END));
}

absl::Status PublishBatch::Add(amqp_channel_t channel, std::string_view exchange,
                               std::string_view routing_key, bool mandatory,
                               const amqp_basic_properties_t& properties, std::string_view body,
                               uint32_t frame_max) {
  if (frame_max <= kFrameOverhead) frame_max = 131072;  // unnegotiated: the AMQP default
  const size_t max_payload = frame_max - kFrameOverhead;
  if (scratch_.size() < max_payload) scratch_.resize(max_payload);
  const size_t rollback = buffer_.size();

  // Method frame: class and method id, then the encoded arguments.
  amqp_basic_publish_t method{};
  method.exchange = amqp_bytes_t{exchange.size(), const_cast<char*>(exchange.data())};
  method.routing_key = amqp_bytes_t{routing_key.size(), const_cast<char*>(routing_key.data())};
  method.mandatory = mandatory ? 1 : 0;
  method.immediate = 0;
  int n = amqp_encode_method(AMQP_BASIC_PUBLISH_METHOD, &method,
                             amqp_bytes_t{scratch_.size(), scratch_.data()});
  if (n < 0) {
    return absl::InvalidArgumentError(
        util::StrCat("cannot encode basic.publish: ", amqp_error_string2(n)));
  }
  size_t at = BeginFrame(AMQP_FRAME_METHOD, channel);
  PutU32(buffer_, AMQP_BASIC_PUBLISH_METHOD);
  buffer_.append(scratch_.data(), static_cast<size_t>(n));
  EndFrame(at);

  // Content header: class, weight 0, body size, then the encoded properties,
  // which must fit in one frame.
  n = amqp_encode_properties(AMQP_BASIC_CLASS, const_cast<amqp_basic_properties_t*>(&properties),
                             amqp_bytes_t{max_payload - 12, scratch_.data()});
  if (n < 0) {
    buffer_.resize(rollback);
    return absl::InvalidArgumentError(util::StrCat(
        "the message's properties and headers do not fit in one AMQP frame (frame_max ", frame_max,
        " bytes): ", amqp_error_string2(n)));
  }
  at = BeginFrame(AMQP_FRAME_HEADER, channel);
  PutU16(buffer_, AMQP_BASIC_CLASS);
  PutU16(buffer_, 0);
  PutU64(buffer_, body.size());
  buffer_.append(scratch_.data(), static_cast<size_t>(n));
  EndFrame(at);

  // Body frames of at most frame_max; none for an empty body.
  for (size_t off = 0; off < body.size(); off += max_payload) {
    at = BeginFrame(AMQP_FRAME_BODY, channel);
    buffer_.append(body.substr(off, max_payload));
    EndFrame(at);
  }
  return absl::OkStatus();
}

absl::Status PublishBatch::WriteTo(int fd, std::chrono::milliseconds timeout) {
  size_t sent = 0;
  while (sent < buffer_.size()) {
    const ssize_t n = ::send(fd, buffer_.data() + sent, buffer_.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The broker is not reading (a resource alarm blocks publishers'
      // sockets) or is slow: wait for room, but not forever.
      pollfd p{fd, POLLOUT, 0};
      const int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
      if (r > 0 || (r < 0 && errno == EINTR)) continue;
      return absl::UnavailableError(
          util::StrCat("the broker took no data for ", timeout.count(), " ms while publishing"));
    }
    return absl::UnavailableError(
        util::StrCat("writing to the broker: ",
                     n == 0 ? std::string("no progress") : std::system_category().message(errno)));
  }
  buffer_.clear();
  return absl::OkStatus();
}

}  // namespace mqs::amqp
