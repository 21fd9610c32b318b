#!/usr/bin/python3
"""worker.py: consume businesses through the sidecar (the usdtsvr side of the seed's flow).

  PYTHONPATH=build/werror/client/python /usr/bin/python3 client/python/examples/worker.py \
      --business usdt.transfer

Prints one JSON line per delivery it acked: {"business", "message_id",
"payload", "redelivered", "attempt"}. A payload "fail" is retried (nack with
requeue), "poison" rejected (dead letter); anything else acked. SIGINT/SIGTERM
stop it cleanly: the settlement in progress is sent, unhandled deliveries go
back to the queue. Exits 1 when a stream ends with an error.
"""

import argparse
import json
import os
import signal
import sys
import threading

import mqsidecar


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--address", default=os.environ.get(
        "MQ_SIDECAR_ADDRESS", "unix:///run/mq-sidecar/mq-sidecar.sock"))
    ap.add_argument("--business", action="append", required=True,
                    help="a consumer business; repeat for more")
    ap.add_argument("--prefetch", type=int, default=0, help="0: the business's configured one")
    ap.add_argument("--name", default="python-worker", help="consumer name")
    args = ap.parse_args()

    out_lock = threading.Lock()

    def handle(d):
        payload = d.payload.decode("utf-8", "replace")
        if payload == "fail":
            return mqsidecar.retry()
        if payload == "poison":
            return mqsidecar.REJECT
        # The work goes here; a real consumer deduplicates on d.message_id
        # (delivery is at-least-once: docs/reliability.md).
        line = json.dumps({"business": d.business, "message_id": d.message_id,
                           "payload": payload, "redelivered": d.redelivered,
                           "attempt": d.attempt})
        with out_lock:
            print(line, flush=True)
        return mqsidecar.ACK

    client = mqsidecar.connect(args.address)
    client.wait_ready(timeout=30)
    subs = [client.subscribe(b, handle, prefetch=args.prefetch, consumer_name=args.name)
            for b in args.business]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Ends on a signal, or when a stream ends by itself (an error, a shutdown).
    while not stop.wait(0.2) and all(s.running for s in subs):
        pass
    for s in subs:
        s.stop()
    client.close()
    rc = 0
    for s in subs:
        if s.error is not None:
            print("worker: %s: %s: %s" % (s.business, s.error.code().name, s.error.details()),
                  file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
