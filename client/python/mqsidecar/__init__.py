"""mqsidecar: a thin Python client for the mq-sidecar daemon's gRPC API.

The stubs (mqsidecar.v1.pubsub_pb2, pubsub_pb2_grpc) are generated at build
time from proto/mqsidecar/v1/pubsub.proto into the build tree (target
mqsidecar_python); put <build>/client/python on PYTHONPATH.
See docs/clients.md.
"""

from mqsidecar.client import (
    ACK,
    REJECT,
    Client,
    Outcome,
    Subscription,
    connect,
    retry,
)
from mqsidecar.v1 import pubsub_pb2

PublishRequest = pubsub_pb2.PublishRequest
PublishResult = pubsub_pb2.PublishResult
Delivery = pubsub_pb2.Delivery
CONFIRMED = pubsub_pb2.PublishResult.CONFIRMED
UNROUTABLE = pubsub_pb2.PublishResult.UNROUTABLE
REJECTED = pubsub_pb2.PublishResult.REJECTED
FAILED = pubsub_pb2.PublishResult.FAILED
UNCONFIRMED = pubsub_pb2.PublishResult.UNCONFIRMED

__all__ = [
    "ACK",
    "REJECT",
    "CONFIRMED",
    "UNROUTABLE",
    "REJECTED",
    "FAILED",
    "UNCONFIRMED",
    "Client",
    "Delivery",
    "Outcome",
    "PublishRequest",
    "PublishResult",
    "Subscription",
    "connect",
    "retry",
    "pubsub_pb2",
]
