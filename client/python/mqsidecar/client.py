"""Client: connect, publish, publish_stream and subscribe over the sidecar's API.

A thin layer over the generated stubs: requests and results are the
generated protobuf messages (mqsidecar.v1.pubsub_pb2); docs/api.md says what
each status means.
"""

import logging
import queue
import threading

import grpc

from mqsidecar.v1 import pubsub_pb2 as pb
from mqsidecar.v1 import pubsub_pb2_grpc as pb_grpc

log = logging.getLogger("mqsidecar")

# The sidecar sends messages up to 17 MiB + 128 KiB and accepts requests of
# max_payload_bytes + 192 KiB (docs/api.md); gRPC's 4 MiB default would refuse
# a large delivery.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_PUBLISH_FIELDS = frozenset(
    ("routing_key", "message_id", "correlation_id", "content_type", "headers", "sequence",
     "ttl_ms", "reply_to"))


class Outcome:
    """Outcome: what a subscribe handler returns; sent to the sidecar for it."""

    __slots__ = ("kind", "retry_after_ms")

    def __init__(self, kind, retry_after_ms=0):
        self.kind = kind
        self.retry_after_ms = retry_after_ms

    def __repr__(self):
        if self.kind == "retry" and self.retry_after_ms:
            return "retry(%d)" % self.retry_after_ms
        return self.kind.upper() if self.kind != "retry" else "retry()"


ACK = Outcome("ack")
# nack without requeue: the business's dead-letter queue (or dropped with
# dead_letter: false).
REJECT = Outcome("reject")


def retry(after_ms=0):
    """nack with requeue: on a business with `retry`, a delayed retry (after
    after_ms, or the next configured delay when 0); without `retry`, the broker
    requeues at once (after_ms must then be 0, or the sidecar ends the stream
    INVALID_ARGUMENT)."""
    return Outcome("retry", int(after_ms))


def _target(address):
    # gRPC takes unix:///abs/path, unix:rel/path and host:port; a bare
    # absolute path is a unix socket too (as mqctl accepts it).
    if address.startswith("/"):
        return "unix://" + address
    return address


def _as_bytes(payload):
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


def _request(business=None, payload=b"", **fields):
    """A PublishRequest from keyword fields (the proto's names)."""
    unknown = set(fields) - _PUBLISH_FIELDS
    if unknown:
        raise TypeError("unknown PublishRequest fields: %s" % ", ".join(sorted(unknown)))
    headers = fields.pop("headers", None) or {}
    req = pb.PublishRequest(business=business or "", payload=_as_bytes(payload), **fields)
    req.headers.update(headers)
    return req


class Client:
    """Client: one gRPC channel to a sidecar.

    address: unix:///run/mq-sidecar/mq-sidecar.sock (or a bare /path), or
    host:port. credentials: grpc.ssl_channel_credentials(...) for a TLS
    listener; None is plaintext (unix sockets, tcp.insecure). token: sent as
    `authorization: Bearer <token>` on every call (config `access`).
    """

    def __init__(self, address="unix:///run/mq-sidecar/mq-sidecar.sock", *, credentials=None,
                 token=None, options=None):
        opts = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)]
        opts.extend(options or [])
        target = _target(address)
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._stub = pb_grpc.PubSubStub(self._channel)
        self._metadata = (("authorization", "Bearer " + token),) if token else None

    @property
    def stub(self):
        """The generated PubSub stub, for the RPCs this class does not wrap."""
        return self._stub

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout=30.0):
        """Waits until the channel is connected; grpc.FutureTimeoutError after timeout s."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def publish(self, business, payload=b"", *, timeout=30.0, wait_for_ready=False, **fields):
        """Publishes one message and returns its PublishResult once the broker
        settled it: .status CONFIRMED, UNROUTABLE, REJECTED or UNCONFIRMED
        (docs/api.md). fields: routing_key, message_id, correlation_id,
        content_type, headers (dict), ttl_ms, reply_to. timeout is the call's
        deadline in seconds (the sidecar caps it at publish.wait_timeout).
        A refused call (bad business or field: INVALID_ARGUMENT; no broker
        until the deadline: UNAVAILABLE; ...) raises grpc.RpcError."""
        req = _request(business, payload, **fields)
        return self._stub.Publish(req, timeout=timeout, metadata=self._metadata,
                                  wait_for_ready=wait_for_ready)

    def publish_stream(self, messages, *, batch_size=100, timeout=None):
        """Pipelines messages over one stream and yields one PublishResult per
        message, in the order the broker settles them (match them by
        .sequence). messages: PublishRequest objects or dicts of its fields
        (business, payload, routing_key, ...). A message with sequence 0 gets
        its 1-based position. batch_size > 1 sends up to that many messages per
        request over PublishBatchStream (taken from the iterable as it yields
        them: for a slow, live source use 1); 1 uses PublishStream. The
        sidecar's publish.window bounds what is in flight; gRPC flow control
        holds the iterable back meanwhile. A message the sidecar could not send
        comes back FAILED with .error; a broken stream raises grpc.RpcError."""
        batch_size = max(1, min(int(batch_size), 1000))

        def numbered():
            for n, m in enumerate(messages, start=1):
                req = m if isinstance(m, pb.PublishRequest) else _request(**m)
                if req.sequence == 0:
                    req.sequence = n
                yield req

        if batch_size == 1:
            call = self._stub.PublishStream(numbered(), timeout=timeout, metadata=self._metadata)
            yield from call
            return

        def batches():
            batch = pb.PublishBatch()
            for req in numbered():
                batch.messages.append(req)
                if len(batch.messages) >= batch_size:
                    yield batch
                    batch = pb.PublishBatch()
            if batch.messages:
                yield batch

        call = self._stub.PublishBatchStream(batches(), timeout=timeout, metadata=self._metadata)
        for response in call:
            yield from response.results

    def subscribe(self, business, handler, *, prefetch=0, consumer_name="python"):
        """Joins the competing consumers of business and returns a running
        Subscription. handler(delivery) is called for each Delivery, one at a
        time, on the subscription's thread; its return settles it: ACK (or
        None), retry(after_ms) (nack with requeue) or REJECT (nack without
        requeue: dead letter). A handler that raises is logged and its
        delivery retried (retry(0))."""
        return Subscription(self._stub, business, handler, prefetch, consumer_name, self._metadata)


class Subscription:
    """Subscription: one SubscribeBatch stream, read on a thread of its own.

    The sidecar sends whatever deliveries are ready in one message (one at a
    low rate); the handler gets them one by one, and the acks of a batch go
    back together, in one request, once the batch is handled.

    stop() half-closes the stream after sending the settlement of the delivery
    being handled; deliveries not handled go back to the queue. wait() blocks
    until the stream ends; .error is the grpc.RpcError it ended with (None when
    it ended cleanly or by stop()).
    """

    def __init__(self, stub, business, handler, prefetch, consumer_name, metadata):
        self.business = business
        self.handled = 0
        self.error = None
        self._handler = handler
        self._lock = threading.Lock()
        self._stopping = False
        self._busy = False
        self._closed = False
        self._requests = queue.Queue()
        self._requests.put(pb.SubscribeRequest(open=pb.SubscribeRequest.Open(
            business=business, prefetch=prefetch, consumer_name=consumer_name)))
        self._call = stub.SubscribeBatch(self._request_iter(), metadata=metadata)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqsidecar-sub-" + business,
                                        daemon=True)
        self._thread.start()

    def _request_iter(self):
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _close_requests(self):
        # Called with _lock held: the end of the request stream goes after
        # every settlement already queued.
        if not self._closed:
            self._closed = True
            self._requests.put(None)

    def _settle(self, delivery):
        try:
            outcome = self._handler(delivery)
        except Exception:  # pylint: disable=broad-except
            log.exception("mqsidecar: handler raised on delivery %d (message_id %s); retrying it",
                          delivery.delivery_id, delivery.message_id)
            outcome = retry(0)
        if outcome is None or outcome.kind == "ack":
            return None  # acked with the rest of its batch
        if outcome.kind == "retry":
            return pb.SubscribeRequest(nack=pb.SubscribeRequest.Nack(
                delivery_id=delivery.delivery_id, requeue=True,
                retry_after_ms=outcome.retry_after_ms))
        return pb.SubscribeRequest(nack=pb.SubscribeRequest.Nack(
            delivery_id=delivery.delivery_id, requeue=False))

    def _run(self):
        try:
            for batch in self._call:
                with self._lock:
                    if self._stopping:
                        continue  # unsettled: back to the queue when the stream closes
                    # Busy for the whole batch: stop() must not close the
                    # requests before the batch's acks are in them.
                    self._busy = True
                acks = []
                for delivery in batch.deliveries:
                    with self._lock:
                        if self._stopping:
                            break  # the rest go back to the queue
                    settle = self._settle(delivery)
                    with self._lock:
                        if settle is None:
                            acks.append(delivery.delivery_id)
                        elif not self._closed:
                            self._requests.put(settle)
                        self.handled += 1
                with self._lock:
                    self._busy = False
                    if acks and not self._closed:
                        self._requests.put(pb.SubscribeRequest(
                            ack=pb.SubscribeRequest.Ack(delivery_ids=acks)))
                    if self._stopping:
                        self._close_requests()
        except grpc.RpcError as e:
            with self._lock:
                stopped = self._stopping
            if not (stopped and e.code() == grpc.StatusCode.CANCELLED):
                self.error = e
        finally:
            with self._lock:
                self._close_requests()
            self._done.set()

    def stop(self, timeout=10.0):
        """Half-closes the stream (after the settlement in progress) and waits
        up to timeout s for the sidecar to end it; cancels it after that.
        Returns True when it ended in time."""
        with self._lock:
            self._stopping = True
            if not self._busy:
                self._close_requests()
        if self._done.wait(timeout):
            return True
        self._call.cancel()
        self._done.wait(1.0)
        return False

    def wait(self, timeout=None):
        """Blocks until the stream ends (or timeout s); True when it ended."""
        return self._done.wait(timeout)

    @property
    def running(self):
        return not self._done.is_set()


def connect(address="unix:///run/mq-sidecar/mq-sidecar.sock", **kwargs):
    """A Client for the sidecar at address (see Client)."""
    return Client(address, **kwargs)
