// it_subscriber: a Subscribe client in its own process, so a test can SIGKILL
// it while it holds unacked deliveries. It never acks.
//
//   it_subscriber ADDRESS BUSINESS PREFETCH
//
// stdout, one line per delivery: "D <delivery_id> <redelivered 0|1> <message_id>",
// and a final "END <grpc code> <message>" when the stream ends.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "mqsidecar/v1/pubsub.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s ADDRESS BUSINESS PREFETCH\n", argv[0]);
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto stub = mqsidecar::v1::PubSub::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);  // a fresh channel: wait for it to connect
  auto stream = stub->Subscribe(&ctx);
  mqsidecar::v1::SubscribeRequest open;
  open.mutable_open()->set_business(argv[2]);
  open.mutable_open()->set_prefetch(static_cast<uint32_t>(std::strtoul(argv[3], nullptr, 10)));
  open.mutable_open()->set_consumer_name("it_subscriber");
  stream->Write(open);
  mqsidecar::v1::Delivery d;
  while (stream->Read(&d)) {
    std::printf("D %llu %d %s\n", static_cast<unsigned long long>(d.delivery_id()),
                d.redelivered() ? 1 : 0, d.message_id().c_str());
    std::fflush(stdout);
  }
  grpc::Status s = stream->Finish();
  std::printf("END %d %s\n", static_cast<int>(s.error_code()), s.error_message().c_str());
  return s.ok() ? 0 : 1;
}
