// PublishBatch: many basic.publish commands encoded into one buffer and
// written to the broker's socket with as few send() calls as the kernel takes.
//
// rabbitmq-c's amqp_basic_publish sends each message as three frames with
// three send() calls (method, content header, body), and one more per extra
// body frame. On the publisher thread those system calls were the largest
// cost per message after gRPC's own. The frames are the same ones: the method
// arguments and the properties are encoded by rabbitmq-c's public encoders
// (amqp_encode_method, amqp_encode_properties); this class adds only the
// 7-byte frame headers and the frame-end octet (AMQP 0-9-1, section 4.2.3).
//
// The connection's thread owns the batch and writes it between rabbitmq-c
// calls, whole or not at all: a write that cannot finish marks the connection
// dead, so no half frame is ever followed by rabbitmq-c's own frames.
// Plain TCP only: over amqps the publisher still encodes here (to check each
// message fits) but sends through rabbitmq-c, which encrypts.
#pragma once

#include <amqp.h>
#include <amqp_framing.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace mqs::amqp {

class PublishBatch {
 public:
  // Add appends the frames of one basic.publish. `frame_max` is the
  // connection's negotiated maximum frame size (bodies are split to fit). On
  // error (properties too large for one frame) nothing is appended and the
  // status names the problem.
  absl::Status Add(amqp_channel_t channel, std::string_view exchange, std::string_view routing_key,
                   bool mandatory, const amqp_basic_properties_t& properties, std::string_view body,
                   uint32_t frame_max);

  bool empty() const { return buffer_.empty(); }
  size_t bytes() const { return buffer_.size(); }
  const std::string& data() const { return buffer_; }
  void Clear() { buffer_.clear(); }

  // WriteTo sends the whole buffer on the non-blocking socket `fd`, waiting
  // for room when the socket is full, at most `timeout` without progress.
  // Clears the buffer on success. An error means part of it may have been
  // sent: the connection must be dropped.
  absl::Status WriteTo(int fd, std::chrono::milliseconds timeout);

 private:
  // Appends a frame header (type, channel, payload size) and returns the
  // offset where the payload starts.
  size_t BeginFrame(uint8_t type, amqp_channel_t channel);
  // Writes the payload size into the frame begun at `payload_at` and
  // appends the frame-end octet.
  void EndFrame(size_t payload_at);

  std::string buffer_;
  std::vector<char> scratch_;  // encoder output, reused
};

}  // namespace mqs::amqp
