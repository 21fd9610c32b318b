#!/usr/bin/python3
"""run.py: the cross-language test (issue 16): C++, Python and Node through real daemons.

  /usr/bin/python3 tests/polyglot/run.py --daemon build/werror/daemon/mq-sidecar \
      --mqctl build/werror/client/mqctl --cpp-peer build/werror/tests/cpp_peer \
      --python-path build/werror/client/python

Starts two mq-sidecar daemons on unix sockets in a temp dir (a publishing one
and a consuming one) against the local broker, with names unique to the run:
one exchange and three classic queues, <pfx>.cpp, <pfx>.py and <pfx>.node,
bound to routing keys from.cpp, from.py and from.node. Then

  - workers: the Python example worker on the .cpp and .node queues, the Node
    example worker on .cpp and .py, and the C++ library's (tests/polyglot/
    cpp_peer.cc: mqsidecar::Subscription) on .py and .node: every queue has
    two competing workers, neither in the language that published to it;
  - publishers, at once: the C++ library's (mqsidecar::Publisher), the
    Python and the Node example producers, --count messages each (1,000),
    payload and message_id <lang>-<n>;
  - handler outcomes: each client's worker retries "fail" (dead-lettered as
    retries_exhausted after max_attempts 2) and rejects "poison", each sent by
    the client's own unary publish;

and checks that every message was confirmed, delivered at least once and
acked (each payload seen by a worker of another language; every worker
stopped cleanly; every queue empty afterwards). Duplicates are reported, not
failed (delivery is at-least-once). Waits on conditions with deadlines;
exits 1 with a message saying what is missing; kills everything it started
and deletes its exchange and queues.

--inject-loss adds a worker (`mqctl subscribe --count 1`) that takes one
message of the .py queue, acks it and records nothing: the run must then
fail ("1 of 1000 py messages never delivered").
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AMQP_URI = os.environ.get("MQS_POLYGLOT_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
LANGS = ("cpp", "py", "node")
# Handler outcomes: a business per client, with delayed retry and dead letters.
OUTCOME_LANGS = ("cpp", "py", "node")


class Failure(Exception):
    pass


def log(msg):
    print("polyglot: " + msg, flush=True)


def wait_until(what, cond, timeout):
    """Polls cond() every 50 ms until it is true; Failure after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failure("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


class Run:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="mqs-polyglot.")
        self.pfx = "poly.%d.%s" % (os.getpid(), uuid.uuid4().hex[:6])
        self.procs = []  # (name, Popen, stdout path)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = args.python_path
        self.env.pop("MQ_SIDECAR_ADDRESS", None)
        self.declared = ([], [])  # (queues, exchanges) named <pfx>*, from the topology

    # ---- processes

    def spawn(self, name, argv, stdin=None):
        out = os.path.join(self.work, name + ".out")
        err = os.path.join(self.work, name + ".err")
        with open(out, "wb") as o, open(err, "wb") as e:
            p = subprocess.Popen(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                 stdout=o, stderr=e, env=self.env, cwd=self.work)
        self.procs.append((name, p, out))
        return p

    def tail(self, name, n=15):
        path = os.path.join(self.work, name)
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n".join("    " + l for l in lines)

    def stop(self, name, p, timeout=15.0):
        """SIGTERM, then SIGKILL after timeout s; returns the exit code."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s did not end within %.0f s of SIGTERM; killing it" % (name, timeout))
                p.kill()
                p.wait()
        return p.returncode

    def cleanup(self):
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                self.stop(name, p, timeout=10.0)
        queues, exchanges = self.declared
        queues = set(queues) | {"%s.%s.queue" % (self.pfx, l)
                                for l in LANGS + tuple("out" + o for o in OUTCOME_LANGS)}
        exchanges = set(exchanges) | {self.pfx}
        try:
            import pika  # Debian's python3-pika (install-deps.sh)
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URI))
            ch = conn.channel()
            for q in sorted(queues):
                ch.queue_delete(queue=q)
            for x in sorted(exchanges):
                ch.exchange_delete(exchange=x)
            conn.close()
        except Exception as e:  # pylint: disable=broad-except
            log("cleanup of %s.* failed: %s" % (self.pfx, e))
        if self.args.keep:
            log("kept %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- the daemons

    def config(self, sock, metrics_off):
        consumers = "\n".join(
            "  %s.%s: { exchange: %s, queue: %s.%s.queue, binding_keys: [from.%s],"
            " queue_type: classic, prefetch: 64, dead_letter: false }"
            % (self.pfx, l, self.pfx, self.pfx, l, l) for l in LANGS)
        consumers += "".join(
            "\n  %s.out%s: { exchange: %s, queue: %s.out%s.queue, binding_keys: [out.%s],"
            " queue_type: classic, prefetch: 8, retry: { delays: [200ms], max_attempts: 2 } }"
            % (self.pfx, l, self.pfx, self.pfx, l, l) for l in OUTCOME_LANGS)
        text = ("listen: [\"unix://%s\"]\n"
                "broker: { uris: [\"%s\"] }\n"
                "producers:\n  %s: { exchange: %s }\n"
                "consumers:\n%s\n"
                "log: { level: warn }\n" % (sock, AMQP_URI, self.pfx, self.pfx, consumers))
        if metrics_off:
            text += "metrics: { listen: \"\" }\n"
        return text

    def write_config(self, name):
        path = os.path.join(self.work, name + ".yaml")
        sock = os.path.join(self.work, name + ".sock")
        # Two daemons must not both take a metrics port: turn metrics off
        # where this daemon has them (the key is refused where it has not).
        for metrics_off in (True, False):
            with open(path, "w") as f:
                f.write(self.config(sock, metrics_off))
            check = subprocess.run([self.args.daemon, "--check-config", "-c", path],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
            if check.returncode == 0:
                return path, "unix://" + sock
        raise Failure("the daemon refuses the generated config:\n" +
                      check.stderr.decode("utf-8", "replace"))

    def topology(self, client):
        import grpc
        from mqsidecar.v1 import pubsub_pb2 as pb
        try:
            return client.stub.GetTopology(pb.GetTopologyRequest(), timeout=5)
        except grpc.RpcError:
            return None

    def queues(self, client):
        topo = self.topology(client)
        if topo is None or topo.state != "connected":
            return None
        return {q.name: q for q in topo.queues if q.name.startswith(self.pfx + ".")}

    # ---- output

    def records(self, name):
        """The payloads a worker printed (one JSON line each), with its business."""
        out = os.path.join(self.work, name + ".out")
        recs = []
        with open(out, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                if not line.strip():
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                recs.append((j.get("payload", ""), j.get("business", "")))
        return recs

    def main(self):
        a = self.args
        sys.path.insert(0, a.python_path)
        import mqsidecar  # the package under test, from the build tree
        node_dir = os.path.join(ROOT, "client", "node")
        if not os.path.isdir(os.path.join(node_dir, "node_modules", "@grpc", "grpc-js")):
            raise Failure("client/node/node_modules is missing: run deploy/scripts/install-deps.sh "
                          "(it runs npm ci in client/node)")
        t0 = time.monotonic()

        daemons = {}
        for name in ("pubd", "subd"):
            cfg, addr = self.write_config(name)
            self.spawn(name, [a.daemon, "-c", cfg])
            daemons[name] = addr
        pub_addr, sub_addr = daemons["pubd"], daemons["subd"]
        pub_client = mqsidecar.connect(pub_addr)
        sub_client = mqsidecar.connect(sub_addr)
        names = {l: "%s.%s.queue" % (self.pfx, l)
                 for l in LANGS + tuple("out" + o for o in OUTCOME_LANGS)}

        def alive():
            for name, p, _ in self.procs:
                if p.poll() is not None and not name.startswith(("prod-", "drop-")):
                    raise Failure("%s exited with %s:\n%s" % (name, p.returncode,
                                                              self.tail(name + ".err")))

        def ready(client):
            alive()
            qs = self.queues(client)
            return qs is not None and all(n in qs for n in names.values())

        wait_until("both daemons connected with the queues declared",
                   lambda: ready(pub_client) and ready(sub_client), 30)
        topo = self.topology(pub_client)
        self.declared = ([q.name for q in topo.queues if q.name.startswith(self.pfx)],
                         [x.name for x in topo.exchanges if x.name.startswith(self.pfx)])

        py_ex = os.path.join(ROOT, "client", "python", "examples")
        node_ex = os.path.join(node_dir, "examples")
        biz = {l: "%s.%s" % (self.pfx, l) for l in LANGS + tuple("out" + o for o in OUTCOME_LANGS)}
        workers = {
            "w-python": ("python", [sys.executable, os.path.join(py_ex, "worker.py"),
                                    "--address", sub_addr, "--business", biz["cpp"],
                                    "--business", biz["node"], "--business", biz["outpy"],
                                    "--name", "polyglot-py"]),
            "w-node": ("node", ["node", os.path.join(node_ex, "worker.js"), "--address", sub_addr,
                                "--business", biz["cpp"], "--business", biz["py"],
                                "--business", biz["outnode"], "--name", "polyglot-node"]),
            "w-cpp": ("cpp", [a.cpp_peer, "work", "--address", sub_addr, "--business", biz["py"],
                              "--business", biz["node"], "--business", biz["outcpp"],
                              "--name", "polyglot-cpp"]),
        }
        for name, (_, argv) in workers.items():
            self.spawn(name, argv)
        want_consumers = {l: 2 for l in LANGS}
        want_consumers.update({"out" + l: 1 for l in OUTCOME_LANGS})
        if a.inject_loss:
            # A worker that acks one message and records it nowhere.
            self.spawn("drop-py", [a.mqctl, "--address", sub_addr, "subscribe", biz["py"],
                                   "--count", "1", "--name", "polyglot-drop"])
            want_consumers["py"] = 3

        def subscribed():
            alive()
            qs = self.queues(sub_client)
            return qs is not None and all(
                qs[names[l]].consumers >= want_consumers[l] for l in want_consumers)

        wait_until("every worker subscribed", subscribed, 30)
        t_ready = time.monotonic()

        n = a.count
        producers = {
            "prod-cpp": self.spawn("prod-cpp", [
                a.cpp_peer, "produce", "--address", pub_addr, "--business", self.pfx,
                "--routing-key", "from.cpp", "--count", str(n), "--prefix", "cpp-",
                "--timeout", "60"]),
            "prod-python": self.spawn("prod-python", [
                sys.executable, os.path.join(py_ex, "producer.py"), "--address", pub_addr,
                "--business", self.pfx, "--routing-key", "from.py", "--count", str(n),
                "--prefix", "py-", "--timeout", "60"]),
            "prod-node": self.spawn("prod-node", [
                "node", os.path.join(node_ex, "producer.js"), "--address", pub_addr,
                "--business", self.pfx, "--routing-key", "from.node", "--count", str(n),
                "--prefix", "node-", "--timeout", "60"]),
        }
        # Handler outcomes: each client's worker retries "fail" (a delayed
        # retry, then dead-lettered after max_attempts 2) and rejects
        # "poison" (dead-lettered at once); each sent by the client's own
        # single-message producer (a unary Publish).
        producer = {"cpp": [a.cpp_peer, "produce"],
                    "py": [sys.executable, os.path.join(py_ex, "producer.py")],
                    "node": ["node", os.path.join(node_ex, "producer.js")]}
        for l in OUTCOME_LANGS:
            for payload in ("fail", "poison"):
                name = "prod-out%s-%s" % (l, payload)
                producers[name] = self.spawn(name, producer[l] + [
                    "--address", pub_addr, "--business", self.pfx, "--routing-key", "out." + l,
                    payload])

        def published():
            alive()
            return all(p.poll() is not None for p in producers.values())

        wait_until("the producers to finish", published, 90)
        for name, p in producers.items():
            if p.returncode != 0:
                raise Failure("%s exited %d (not every message confirmed):\n%s\n%s" % (
                    name, p.returncode, self.tail(name + ".out", 5), self.tail(name + ".err")))
        # Each producer's summary line: {"published", "results": {status: n}, "seconds"}.
        for name in ("prod-cpp", "prod-python", "prod-node"):
            try:
                with open(os.path.join(self.work, name + ".out")) as f:
                    summary = json.loads(f.read().splitlines()[-1])
                confirmed = summary["results"].get("CONFIRMED", 0)
            except (OSError, ValueError, IndexError, KeyError, AttributeError) as e:
                raise Failure("%s printed no summary (%s):\n%s" % (name, e, self.tail(name + ".out")))
            if confirmed != n:
                raise Failure("%s: %d of %d confirmed: %s" % (name, confirmed, n, summary))
        t_published = time.monotonic()

        expected = {"%s-%d" % (l, i) for l in LANGS for i in range(1, n + 1)}

        def seen():
            got = {}
            for name, (lang, _) in workers.items():
                for payload, business in self.records(name):
                    got.setdefault(payload, []).append((name, lang, business))
            return got

        def all_delivered():
            alive()
            return expected <= set(seen())

        try:
            wait_until("every message delivered", all_delivered, a.deliver_timeout)
        except Failure:
            got = seen()
            lines = []
            for l in LANGS:
                missing = sorted((p for p in expected if p.startswith(l + "-") and p not in got),
                                 key=lambda p: int(p.split("-")[1]))
                if missing:
                    lines.append("%d of %d %s messages never delivered (e.g. %s)" % (
                        len(missing), n, l, ", ".join(missing[:5])))
            raise Failure("; ".join(lines) or "timed out")
        t_delivered = time.monotonic()

        from mqsidecar.v1 import pubsub_pb2 as pb

        def dead_letters(l):
            return sub_client.stub.ListDeadLetters(
                pb.ListDeadLettersRequest(business=biz["out" + l]), timeout=10)

        def outcomes_settled():
            alive()
            return all(dead_letters(l).total >= 2 for l in OUTCOME_LANGS)

        try:
            wait_until("fail and poison dead-lettered", outcomes_settled, 20)
        except Failure:
            raise Failure("handler outcomes: dead-letter queues hold " + ", ".join(
                "%s %d" % (l, dead_letters(l).total) for l in OUTCOME_LANGS) + " (want 2 each)")
        for l in OUTCOME_LANGS:
            dl = dead_letters(l)
            got = sorted((d.message.payload.decode(), d.reason, d.message.attempt)
                         for d in dl.messages)
            want = [("fail", "retries_exhausted", 2), ("poison", "rejected", 1)]
            if dl.total != 2 or got != want:
                raise Failure("handler outcomes of the %s worker: dead letters %s, want %s" % (
                    l, got, want))

        for name in workers:
            p = next(p for nm, p, _ in self.procs if nm == name)
            rc = self.stop(name, p)
            if rc != 0:
                raise Failure("worker %s exited %d on SIGTERM:\n%s" % (name, rc,
                                                                      self.tail(name + ".err")))
        got = seen()
        wrong = [(p, w) for p, ws in got.items() for (w, lang, _) in ws
                 if p.startswith({"cpp": "cpp-", "python": "py-", "node": "node-"}[lang])]
        if wrong:
            raise Failure("%d messages went to a worker of their own language, e.g. %s" % (
                len(wrong), wrong[:3]))
        stray = sorted(set(got) - expected)
        if stray:
            raise Failure("workers got %d payloads nobody published, e.g. %s" % (len(stray),
                                                                                stray[:5]))

        # Acked: once the workers' streams are closed, anything unacked is
        # back in its queue.
        def drained():
            qs = self.queues(pub_client)
            return qs is not None and all(qs[q].messages == 0 and qs[q].consumers == 0
                                          for q in names.values())

        try:
            wait_until("every queue empty with its workers gone", drained, 15)
        except Failure:
            qs = self.queues(pub_client) or {}
            raise Failure("not every message was acked: " + ", ".join(
                "%s holds %d (%d consumers)" % (q, qs[q].messages, qs[q].consumers)
                for q in sorted(names.values()) if q in qs and (qs[q].messages or qs[q].consumers)))

        dups = {p: ws for p, ws in got.items() if len(ws) > 1}
        per_worker = {name: len(self.records(name)) for name in workers}
        log("%d messages (%d from each of C++, Python, Node) confirmed, delivered to a worker of "
            "another language and acked; %d duplicates%s" % (
                3 * n, n, len(dups), (" (e.g. %s)" % sorted(dups)[:3]) if dups else ""))
        log("handler outcomes: retry and reject from the C++, Python and Node workers dead-lettered "
            "as retries_exhausted (attempt 2) and rejected (attempt 1)")
        log("per worker: %s" % ", ".join("%s %d" % kv for kv in per_worker.items()))
        log("timing: daemons and workers up %.1f s, published %.1f s, all delivered %.1f s, "
            "total %.1f s" % (t_ready - t0, t_published - t_ready, t_delivered - t_ready,
                              time.monotonic() - t0))
        pub_client.close()
        sub_client.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", default=os.path.join(ROOT, "build/werror/daemon/mq-sidecar"))
    ap.add_argument("--mqctl", default=os.path.join(ROOT, "build/werror/client/mqctl"),
                    help="for --inject-loss")
    ap.add_argument("--cpp-peer", default=os.path.join(ROOT, "build/werror/tests/cpp_peer"),
                    help="the C++ library's producer and worker (tests/polyglot/cpp_peer.cc)")
    ap.add_argument("--python-path", default=os.path.join(ROOT, "build/werror/client/python"))
    ap.add_argument("--count", type=int, default=1000, help="messages from each language")
    ap.add_argument("--deliver-timeout", type=float, default=60.0, help="seconds")
    ap.add_argument("--inject-loss", action="store_true",
                    help="add a worker that drops one message: the run must fail")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, outputs)")
    args = ap.parse_args()
    # The processes run in the temp dir: paths relative to here would not resolve there.
    for key in ("daemon", "mqctl", "cpp_peer", "python_path"):
        setattr(args, key, os.path.abspath(getattr(args, key)))
    run = Run(args)
    # ctest's timeout and ^C end the run through the same cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run.main()
        return 0
    except Failure as e:
        log("FAILED: %s" % e)
        for name in ("pubd", "subd"):
            t = run.tail(name + ".err")
            if t:
                log("%s log (last lines):\n%s" % (name, t))
        return 1
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
