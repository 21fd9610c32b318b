#!/usr/bin/python3
"""Another AMQP client (pika) for the interop integration tests.

Run with Debian's /usr/bin/python3 (it has python3-pika).

  pika_interop.py publish URI EXCHANGE ROUTING_KEY BODY MESSAGE_ID CORRELATION_ID
                  CONTENT_TYPE TIMESTAMP_S [HEADER=VALUE ...]
      Publishes one persistent message with publisher confirms; exit 0 once
      confirmed.
  pika_interop.py get URI QUEUE TIMEOUT_S
      basic_get (with ack) one message, retrying until TIMEOUT_S; prints it as
      one JSON object; exit 3 if the queue stayed empty.
"""
import json
import sys
import time

import pika


def text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def publish(uri, exchange, routing_key, body, message_id, correlation_id, content_type,
            timestamp, header_args):
    headers = dict(arg.split("=", 1) for arg in header_args)
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(
        delivery_mode=2, message_id=message_id, correlation_id=correlation_id,
        content_type=content_type, timestamp=int(timestamp), headers=headers)
    # mandatory: an unroutable message raises UnroutableError instead of vanishing.
    ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body.encode(),
                     properties=props, mandatory=True)
    conn.close()
    return 0


def get(uri, queue, timeout):
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    deadline = time.monotonic() + float(timeout)
    while True:
        method, props, body = ch.basic_get(queue=queue, auto_ack=False)
        if method is not None:
            break
        if time.monotonic() >= deadline:
            print(json.dumps({"error": "queue %s stayed empty" % queue}))
            conn.close()
            return 3
        time.sleep(0.05)
    ch.basic_ack(method.delivery_tag)
    out = {
        "exchange": method.exchange,
        "routing_key": method.routing_key,
        "redelivered": method.redelivered,
        "body": text(body),
        "delivery_mode": props.delivery_mode,
        "message_id": props.message_id,
        "correlation_id": props.correlation_id,
        "content_type": props.content_type,
        "timestamp": props.timestamp,
        "expiration": props.expiration,
        "reply_to": props.reply_to,
        "headers": {k: text(v) if isinstance(v, (bytes, str)) else repr(v)
                    for k, v in (props.headers or {}).items()},
    }
    print(json.dumps(out))
    conn.close()
    return 0


def main(argv):
    if len(argv) >= 10 and argv[1] == "publish":
        return publish(*argv[2:10], argv[10:])
    if len(argv) == 5 and argv[1] == "get":
        return get(*argv[2:5])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
