#!/usr/bin/python3
"""producer.py: publish messages through the sidecar (the otc side of the seed's flow).

  PYTHONPATH=build/werror/client/python /usr/bin/python3 client/python/examples/producer.py \
      --business usdt.transfer --routing-key usdt.transfer.create '{"order": 1}'
  ... --count 1000 --prefix order-      # 1,000 messages pipelined, payload = id = order-<n>

One message goes as a unary Publish; --count N pipelines N over
PublishBatchStream. Prints one JSON summary line; exits 0 only when the broker
confirmed every message, 2 when some were not, 1 on a gRPC error.
"""

import argparse
import json
import os
import sys
import time

import grpc

import mqsidecar


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("payload", nargs="?", default="hello", help="the payload (one message)")
    ap.add_argument("--address", default=os.environ.get(
        "MQ_SIDECAR_ADDRESS", "unix:///run/mq-sidecar/mq-sidecar.sock"))
    ap.add_argument("--business", default="usdt.transfer")
    ap.add_argument("--routing-key", default="")
    ap.add_argument("--count", type=int, default=0,
                    help="publish N messages, payload and message_id PREFIX<n>, pipelined")
    ap.add_argument("--prefix", default="py-")
    ap.add_argument("--batch", type=int, default=100, help="with --count: messages per request")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds")
    args = ap.parse_args()

    client = mqsidecar.connect(args.address)
    t0 = time.monotonic()
    try:
        if args.count == 0:
            res = client.publish(args.business, args.payload, routing_key=args.routing_key,
                                 content_type="application/json", timeout=args.timeout,
                                 wait_for_ready=True)
            print(json.dumps({"message_id": res.message_id,
                              "status": mqsidecar.PublishResult.Status.Name(res.status),
                              "error": res.error}))
            return 0 if res.status == mqsidecar.CONFIRMED else 2
        msgs = ({"business": args.business, "routing_key": args.routing_key,
                 "payload": "%s%d" % (args.prefix, n), "message_id": "%s%d" % (args.prefix, n)}
                for n in range(1, args.count + 1))
        counts = {}
        for res in client.publish_stream(msgs, batch_size=args.batch, timeout=args.timeout):
            name = mqsidecar.PublishResult.Status.Name(res.status)
            counts[name] = counts.get(name, 0) + 1
            if res.status != mqsidecar.CONFIRMED:
                print("not confirmed: %s %s %s" % (res.message_id, name, res.error),
                      file=sys.stderr)
        print(json.dumps({"published": args.count, "results": counts,
                          "seconds": round(time.monotonic() - t0, 3)}))
        return 0 if counts.get("CONFIRMED", 0) == args.count else 2
    except grpc.RpcError as e:
        print("producer: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
