// Subscribe semantics: prefetch, dropping a stream with unacked deliveries, nack.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "delay_proxy.h"
#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

std::set<std::string> AsSet(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

// Publishes `body` to `queue` (default exchange) with rabbitmq-c, as another
// AMQP client would, and waits for the broker's confirm. "" on success.
std::string PublishDirect(const std::string& uri, const std::string& queue,
                          const std::string& message_id, const std::string& body) {
  std::string url = uri;
  amqp_connection_info info;
  amqp_default_connection_info(&info);
  if (amqp_parse_url(url.data(), &info) != AMQP_STATUS_OK) return "bad uri";
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(c);
  timeval tv{10, 0};
  std::string err;
  if (amqp_socket_open_noblock(socket, info.host, info.port, &tv) != AMQP_STATUS_OK) {
    err = "cannot connect";
  } else {
    amqp_set_rpc_timeout(c, &tv);
    const char* vhost = info.vhost != nullptr && *info.vhost != '\0' ? info.vhost : "/";
    if (amqp_login(c, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password)
            .reply_type != AMQP_RESPONSE_NORMAL) {
      err = "login failed";
    } else {
      amqp_channel_open(c, 1);
      amqp_confirm_select(c, 1);
      amqp_basic_properties_t props;
      props._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
      props.message_id = amqp_cstring_bytes(message_id.c_str());
      props.delivery_mode = 2;
      amqp_bytes_t b{body.size(), const_cast<char*>(body.data())};
      if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL ||
          amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue.c_str()), 1, 0,
                             &props, b) != AMQP_STATUS_OK) {
        err = "publish failed";
      } else {
        amqp_frame_t frame;
        if (amqp_simple_wait_frame_noblock(c, &frame, &tv) != AMQP_STATUS_OK ||
            frame.frame_type != AMQP_FRAME_METHOD ||
            frame.payload.method.id != AMQP_BASIC_ACK_METHOD) {
          err = "not confirmed";
        }
      }
      amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
  }
  amqp_destroy_connection(c);
  return err;
}

// Leaves gracefully (the daemon reads every ack sent so far), then checks that
// the queue is empty and that `sub` got exactly `count` deliveries.
void LeaveSettled(IntegrationTest& t, const std::string& queue, Subscriber& sub, size_t count) {
  const grpc::Status left = sub.Leave();
  INFO(StatusText(left));
  CHECK(left.ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(sub.count() == count);
}

TEST_CASE(
    "integration: a dropped stream's unacked deliveries go to another subscriber, "
    "redelivered") {
  IntegrationTest t("drop");
  const std::string biz = t.Business("work");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});

  // 20 messages wait in the queue before anyone subscribes.
  const auto published = PublishConfirmed(d.stub(), biz, 20, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 20u));

  auto a = std::make_unique<Subscriber>(
      d.stub(), Subscriber::Options{.business = biz, .prefetch = 10, .consumer_name = "a"});
  REQUIRE(a->WaitForCount(10, 10s));
  // Prefetch 10 holds: the other 10 stay ready in the queue.
  CHECK(WaitForQueue(t.admin(), queue, 1u, 10u));
  const auto a_deliveries = a->deliveries();
  REQUIRE(a_deliveries.size() == 10);
  for (const auto& d : a_deliveries) CHECK_FALSE(d.redelivered());
  const auto a_ids = AsSet(MessageIds(a_deliveries));
  CHECK(a_ids.size() == 10);

  // B takes the 10 that were still ready and acks them.
  Subscriber b(d.stub(), {.business = biz, .prefetch = 50, .consumer_name = "b"});
  REQUIRE(b.WaitForCount(10, 10s));
  auto first = b.deliveries();
  for (const auto& d : first) {
    CHECK_FALSE(d.redelivered());
    CHECK(a_ids.count(d.message_id()) == 0);
    CHECK(b.Ack(d.delivery_id()));
  }

  // A drops its stream without acking anything.
  a->Cancel();
  auto a_end = a->WaitEnded(10s);
  REQUIRE(a_end.has_value());
  CHECK(a_end->error_code() == grpc::StatusCode::CANCELLED);

  // B gets A's 10, marked redelivered.
  REQUIRE(b.WaitForCount(20, 15s));
  auto all = b.deliveries();
  std::vector<pb::Delivery> second(all.begin() + 10, all.end());
  std::set<std::string> redelivered_ids;
  for (const auto& d : second) {
    INFO(d.ShortDebugString());
    CHECK(d.redelivered());
    CHECK(d.delivery_count() >= 1);  // quorum queues keep x-delivery-count
    redelivered_ids.insert(d.message_id());
    CHECK(b.Ack(d.delivery_id()));
  }
  CHECK(redelivered_ids == a_ids);

  // Nothing lost, nothing twice: B saw each of the 20 exactly once.
  const auto b_ids = MessageIds(all);
  CHECK(AsSet(b_ids).size() == b_ids.size());
  CHECK(AsSet(b_ids) == AsSet(published));

  // B's acks settled everything: after B leaves, the queue is empty.
  LeaveSettled(t, queue, b, 20);
}

TEST_CASE(
    "integration: nack with requeue redelivers, nack without requeue takes it out of the queue "
    "(into the dead letters)") {
  IntegrationTest t("nack");
  const std::string biz = t.Business("nack");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "n"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  const auto ids = PublishConfirmed(d.stub(), biz, 2, biz);
  REQUIRE(sub.WaitForCount(2, 10s));
  auto first = sub.deliveries();
  for (const auto& d : first) {
    CHECK_FALSE(d.redelivered());
    // ids[0]: requeue; ids[1]: out of the queue, into <queue>.dead
    // (dead_letter_test.cc looks at the dead letter; dead_letter false drops).
    CHECK(sub.Nack(d.delivery_id(), d.message_id() == ids[0]));
  }
  REQUIRE(sub.WaitForCount(3, 10s));
  const auto again = sub.deliveries()[2];
  INFO(again.ShortDebugString());
  CHECK(again.message_id() == ids[0]);
  CHECK(again.redelivered());
  CHECK(again.delivery_count() >= 1);
  CHECK(sub.Ack(again.delivery_id()));

  // The rejected one never comes back and the acked one is settled.
  LeaveSettled(t, queue, sub, 3);
  CHECK(WaitForQueue(t.admin(), queue + ".dead", 0u, 1u));
}

TEST_CASE(
    "integration: ack and nack with multiple settle every lower unacked delivery of the "
    "stream") {
  IntegrationTest t("multi");
  const std::string biz = t.Business("multi");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "m"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  const auto ids = PublishConfirmed(d.stub(), biz, 6, biz);
  REQUIRE(sub.WaitForCount(6, 10s));
  const auto first = sub.deliveries();
  REQUIRE(MessageIds(first) == ids);  // one consumer: queue order

  // Ack up to the third: the first three are settled by one request. Nack up
  // to the fifth with requeue: the fourth and fifth come back, the sixth stays.
  REQUIRE(sub.Ack(first[2].delivery_id(), /*multiple=*/true));
  REQUIRE(sub.Nack(first[4].delivery_id(), /*requeue=*/true, /*multiple=*/true));
  REQUIRE(sub.WaitForCount(8, 10s));
  const auto all = sub.deliveries();
  std::vector<std::string> again;
  for (size_t i = 6; i < all.size(); ++i) {
    INFO(all[i].ShortDebugString());
    CHECK(all[i].redelivered());
    again.push_back(all[i].message_id());
  }
  CHECK(AsSet(again) == AsSet({ids[3], ids[4]}));

  // An id a multiple ack already settled is unknown now, as in AMQP: the
  // stream ends INVALID_ARGUMENT and returns what it still holds (the sixth
  // and the two redelivered), so the first three were acked and nothing else.
  REQUIRE(sub.Ack(first[1].delivery_id()));
  auto end = sub.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(end->error_message().find("already settled") != std::string::npos);
  CHECK(WaitForQueue(t.admin(), queue, 0u, 3u));
  CHECK(sub.count() == 8);

  // A second stream takes those three and settles them with one multiple ack.
  Subscriber next(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "n"});
  REQUIRE(next.WaitForCount(3, 10s));
  const auto rest = next.deliveries();
  CHECK(AsSet(MessageIds(rest)) == AsSet({ids[3], ids[4], ids[5]}));
  const uint64_t last =
      std::max_element(rest.begin(), rest.end(), [](const auto& a, const auto& b) {
        return a.delivery_id() < b.delivery_id();
      })->delivery_id();
  REQUIRE(next.Ack(last, /*multiple=*/true));
  LeaveSettled(t, queue, next, 3);
}

TEST_CASE(
    "integration: a stream that ends right after acking: the acked stay settled, the rest go "
    "to another subscriber") {
  // The ending stream's channel lingers a moment after its last ack (quorum
  // queues can drop acks that arrive just before a channel close): its
  // consumer is cancelled at once and the unacked come back when it closes.
  IntegrationTest t("linger");
  const std::string biz = t.Business("linger");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});  // a quorum queue
  const auto ids = PublishConfirmed(d.stub(), biz, 200, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 200u));

  auto a = std::make_unique<Subscriber>(
      d.stub(), Subscriber::Options{.business = biz, .prefetch = 200, .consumer_name = "a"});
  REQUIRE(a->WaitForCount(200, 10s));
  const auto got = a->deliveries();
  REQUIRE(MessageIds(got) == ids);
  // Ack the first 150 one by one, then leave at once, holding the other 50.
  for (size_t i = 0; i < 150; ++i) REQUIRE(a->Ack(got[i].delivery_id()));
  const grpc::Status left = a->Leave();
  INFO(StatusText(left));
  CHECK(left.ok());

  Subscriber b(d.stub(), {.business = biz, .prefetch = 200, .consumer_name = "b"});
  REQUIRE(b.WaitForCount(50, 10s));
  const auto again = b.deliveries();
  for (const auto& dl : again) {
    CHECK(dl.redelivered());
    REQUIRE(b.Ack(dl.delivery_id()));
  }
  CHECK(AsSet(MessageIds(again)) == AsSet({ids.begin() + 150, ids.end()}));
  // Nothing acked came back: the queue ends empty and b got only the 50.
  LeaveSettled(t, queue, b, 50);
}

TEST_CASE(
    "integration: many streams ending at once right after acking leave channel numbers for "
    "new streams") {
  // Each ending stream's channel lingers after its last ack; a new stream
  // must still find a free channel number at once.
  IntegrationTest t("churn");
  const std::string biz = t.Business("churn");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  constexpr size_t kStreams = 48;
  std::vector<std::unique_ptr<Subscriber>> subs;
  for (size_t i = 0; i < kStreams; ++i) {
    subs.push_back(std::make_unique<Subscriber>(
        d.stub(), Subscriber::Options{
                      .business = biz, .prefetch = 1, .consumer_name = "c" + std::to_string(i)}));
  }
  REQUIRE(WaitForQueue(t.admin(), queue, static_cast<uint32_t>(kStreams), std::nullopt));
  // Prefetch 1 each: every stream holds exactly one of these.
  PublishConfirmed(d.stub(), biz, kStreams, biz);
  for (auto& sub : subs) {
    REQUIRE(sub->WaitForCount(1, 10s));
    REQUIRE(sub->Ack(sub->deliveries()[0].delivery_id()));
  }
  for (auto& sub : subs) sub->Cancel();  // all end within a few ms of their acks
  for (auto& sub : subs) REQUIRE(sub->WaitEnded(10s).has_value());

  Subscriber next(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "next"});
  const auto ids = PublishConfirmed(d.stub(), biz, 1, biz + "-next");
  REQUIRE(next.WaitForCount(1, 10s));
  CHECK(next.deliveries()[0].message_id() == ids[0]);
  REQUIRE(next.Ack(next.deliveries()[0].delivery_id()));
  LeaveSettled(t, queue, next, 1);
}

TEST_CASE(
    "integration: a delivery larger than the gRPC send limit is rejected with a log line, the "
    "stream goes on") {
  // Another AMQP client can put a message in the queue that no Delivery can
  // carry (RabbitMQ 3.10 takes up to 128 MiB). Written to the stream it would
  // fail the write, end the stream, go back to the queue and kill every
  // stream it reaches. It is rejected (no dead-letter exchange here: dropped).
  IntegrationTest t("big");
  const std::string biz = t.Business("big");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  const std::string big(17 * 1024 * 1024 + 512 * 1024, 'x');  // 17.5 MiB
  REQUIRE(PublishDirect(t.uri(), queue, "too-big\n1", big) == "");
  REQUIRE(PublishDirect(t.uri(), queue, "small-1", "hello") == "");
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 2u));

  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "big"});
  REQUIRE(sub.WaitForCount(1, 15s));
  const auto got = sub.deliveries();
  CHECK(got[0].message_id() == "small-1");
  CHECK(got[0].payload() == "hello");
  REQUIRE(sub.Ack(got[0].delivery_id()));
  // The big one is gone from the queue (ready 0, and nothing unacked comes
  // back), and the stream is still there: one consumer.
  CHECK(WaitForQueue(t.admin(), queue, 1u, 0u));
  CHECK_FALSE(sub.ended());
  // It keeps working.
  const auto ids = PublishConfirmed(d.stub(), biz, 1, biz + "-after");
  REQUIRE(sub.WaitForCount(2, 10s));
  CHECK(sub.deliveries()[1].message_id() == ids[0]);
  REQUIRE(sub.Ack(sub.deliveries()[1].delivery_id()));
  CHECK(sub.count() == 2);
  // The log names the queue, the message id (escaped) and the size.
  const std::string log = d.Log();
  INFO(d.LogTail(20));
  CHECK(log.find("larger than the gRPC send limit") != std::string::npos);
  CHECK(log.find("too-big\\x0a1") != std::string::npos);
  CHECK(log.find(queue) != std::string::npos);
  LeaveSettled(t, queue, sub, 2);
}

TEST_CASE(
    "integration: streams being set up do not stall another stream's deliveries (broker "
    "replies 150 ms away)") {
  // Every reply of the broker takes 150 ms (a proxy holds what it sends), so
  // a stream's set-up (channel.open, basic.qos, basic.consume: three round
  // trips) takes 450 ms. While 10 streams are set up, stream A's flow goes
  // on: no gap between two of its deliveries near 450 ms, as there was when
  // the consumer thread waited for each reply.
  constexpr auto kDelay = 150ms;
  DelayProxy proxy(5672, kDelay);  // outlives the daemon
  IntegrationTest t("stall");
  const std::string biz = t.Business("flow");
  const std::string other = t.Business("other");
  const std::string uri = proxy.Via(t.uri());
  REQUIRE_FALSE(uri.empty());
  Daemon& d = t.StartDaemon({{.name = biz}, {.name = other}}, {.uris = {uri}});

  std::mutex mu;
  std::vector<Clock::time_point> arrivals;
  Subscriber a(d.stub(), {.business = biz,
                          .prefetch = 200,
                          .consumer_name = "a",
                          .auto_ack = true,
                          .on_delivery = [&](const pb::Delivery&) {
                            std::lock_guard<std::mutex> lock(mu);
                            arrivals.push_back(Clock::now());
                          }});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));
  // 200 messages a second for up to 20 s.
  std::vector<pb::PublishRequest> requests;
  for (int i = 0; i < 4000; ++i) requests.push_back(MakePublish(biz, "m" + std::to_string(i), i));
  AsyncPublishStream pub(d.stub(), {.requests = requests, .rate = 200});
  REQUIRE(a.WaitForCount(100, 10s));  // the flow is steady

  const auto ms = [](Clock::duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  // A broker or machine that pauses (a loaded CI VM: once 2.3 s) stops A's
  // flow whoever waits; a consumer thread that waits for each reply stops
  // it at every burst. So up to three bursts, and one without a stall is
  // the proof; the old code stalled every one.
  Clock::duration best_gap = Clock::duration::max();
  std::string attempts;
  for (int attempt = 0; attempt < 3 && best_gap >= 300ms; ++attempt) {
    const auto burst_start = Clock::now();
    std::vector<std::unique_ptr<Subscriber>> burst;
    for (int i = 0; i < 10; ++i) {
      burst.push_back(std::make_unique<Subscriber>(
          d.stub(), Subscriber::Options{
                        .business = other,
                        .prefetch = 1,
                        .consumer_name = "b" + std::to_string(attempt) + "." + std::to_string(i)}));
    }
    REQUIRE(WaitForQueue(t.admin(), other + ".queue", 10u, std::nullopt));
    const auto burst_end = Clock::now();
    // A's deliveries until 1 s past the burst, for the gap after it.
    REQUIRE(WaitUntil(
        [&] {
          std::lock_guard<std::mutex> lock(mu);
          return !arrivals.empty() && arrivals.back() > burst_end + 1s;
        },
        15s, 10ms));
    Clock::duration max_gap{};
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 1; i < arrivals.size(); ++i) {
        if (arrivals[i] < burst_start || arrivals[i - 1] > burst_end + 1s) continue;
        max_gap = std::max(max_gap, arrivals[i] - arrivals[i - 1]);
      }
    }
    best_gap = std::min(best_gap, max_gap);
    attempts += " [burst of 10 set-ups took " + std::to_string(ms(burst_end - burst_start)) +
                " ms; stream A's longest gap " + std::to_string(ms(max_gap)) + " ms]";
    for (auto& b : burst) b->Cancel();
    REQUIRE(WaitForQueue(t.admin(), other + ".queue", 0u, std::nullopt));
  }
  INFO("attempts:" << attempts);
  // A waiting consumer thread stops A for 3 x 150 ms per set-up at least.
  CHECK(best_gap < 300ms);
  pub.Cancel();
  CHECK(a.Leave().ok());
}

}  // namespace
}  // namespace mqs::it
