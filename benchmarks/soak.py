"""A soak of serve.py: many clients, mixed good and bad requests, for a fixed time, against a real model.

    python benchmarks/soak.py                          # 32 clients for 60 s
    python benchmarks/soak.py --clients 8 --seconds 10 # a quick look

The model: benchmarks/serving.py's (the MiniLM stand-in fine-tuned on 64 reviews, 128 tokens), served
by serve.py with its defaults. Each client thread keeps one keep-alive connection and draws each
request from MIX (seeded per client): good requests of one and of eight IMDB test reviews (row and
columnar, b64 too), and the bad ones a server on a network meets, each with the status
docs/serving.md promises; some clients reset their connection with the request unanswered. It prints
the requests sent and answered, the statuses of each kind, every answer that is not the documented
one, p50/p99 latency of the good requests, and the server's resident and peak memory (VmRSS, VmHWM)
after the warm-up, at half time and at the end. 503 (queue full) is the only 5xx documented: any
other, or any undocumented answer, makes the script exit 1.
"""
import argparse
import base64
import collections
import http.client
import json
import os
import random
import socket
import struct
import sys
import threading
import time

import common  # noqa: I001  (puts the repository on sys.path)
import serving

import config

serving_client = serving.serving_client
WARM_UP_REQUESTS = 64
LOAD_SEQ_LENGTH = 128


def request_kinds(path, reviews, cfg):
    """{kind: (weight, build(rng) -> (method, path, body, content type), statuses allowed, texts answered)}."""
    def review(rng):
        return rng.choice(reviews)

    def post(payload, content_type="application/json"):
        return "POST", path, payload if isinstance(payload, bytes) else json.dumps(payload), content_type

    def b64(text):
        return {"b64": base64.b64encode(text.encode()).decode()}

    too_long = "x" * (cfg.max_text_chars + 1)
    return {
        "good: 1 review": (30, lambda rng: post({"instances": [review(rng)]}), {200}, 1),
        "good: 8 reviews": (10, lambda rng: post({"instances": [review(rng) for _ in range(8)]}), {200}, 8),
        "good: columnar b64": (5, lambda rng: post({"inputs": {"text": [b64(review(rng))]}}), {200}, 1),
        "good: with parameters": (5, lambda rng: post({"instances": [review(rng)], "parameters": {}}), {200}, 1),
        "malformed JSON": (4, lambda rng: post(b'{"instances": ["unfinished'), {400}, 0),
        "100,000 levels of nesting": (2, lambda rng: post(b"[" * 100_000), {400}, 0),
        "text/plain": (4, lambda rng: post({"instances": [review(rng)]}, "text/plain"), {415}, 0),
        "empty list": (3, lambda rng: post({"instances": []}), {400}, 0),
        "257 texts": (2, lambda rng: post({"instances": ["x"] * (cfg.max_texts_per_request + 1)}), {400}, 0),
        "text over --max-text-chars": (2, lambda rng: post({"instances": [too_long]}), {400}, 0),
        "bad base64": (3, lambda rng: post({"instances": [{"b64": "not base64!"}]}), {400}, 0),
        "mixed row items": (2, lambda rng: post({"instances": ["a", {"text": "b"}]}), {400}, 0),
        "unknown model": (3, lambda rng: ("POST", "/v1/models/other:predict",
                                          json.dumps({"instances": ["x"]}), "application/json"), {404}, 0),
        "trailing slash": (2, lambda rng: ("GET", path.split(":")[0] + "/", None, None), {400}, 0),
        "metadata": (3, lambda rng: ("GET", path.split(":")[0] + "/metadata", None, None), {200}, 0),
        "healthz": (3, lambda rng: ("GET", "/healthz", None, None), {200}, 0),
        "hang-up (reset) before the answer": (3, None, set(), 0),
    }


class Tally:
    """What the clients saw, shared by their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = collections.defaultdict(collections.Counter)
        self.latencies, self.wrong, self.sent, self.wrong_count = [], [], 0, 0

    def add(self, kind, status, latency=None, wrong=None):
        with self.lock:
            self.sent += 1
            self.statuses[kind][status] += 1
            if latency is not None:
                self.latencies.append(latency)
            if wrong:
                self.wrong_count += 1
                if len(self.wrong) < 20:  # the first few, to read
                    self.wrong.append(f"{kind}: {wrong}")


def hang_up(port, path, review):
    """A good request, then a reset (SO_LINGER 0) before its answer."""
    body = json.dumps({"instances": [review]}).encode()
    with socket.create_connection((serving_client.HOST, port), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def client(number, server, kinds, deadline, tally):
    rng = random.Random(number)
    names = list(kinds)
    weights = [kinds[name][0] for name in names]
    connection = http.client.HTTPConnection(serving_client.HOST, server.port, timeout=120)
    while time.monotonic() < deadline:
        kind = rng.choices(names, weights)[0]
        _, build, allowed, texts = kinds[kind]
        if build is None:
            hang_up(server.port, server.predict_path, "A review whose client left.")
            tally.add(kind, "reset")
            continue
        method, path, body, content_type = build(rng)
        started = time.perf_counter()
        try:
            connection.request(method, path, body, {"Content-Type": content_type} if content_type else {})
            response = connection.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as error:
            tally.add(kind, type(error).__name__, wrong=repr(error))
            connection.close()
            connection = http.client.HTTPConnection(serving_client.HOST, server.port, timeout=120)
            continue
        latency = time.perf_counter() - started
        status = response.status
        wrong = None
        if status == 503 and texts and "--max-queued-texts" in answer.get("error", ""):
            pass  # documented: a full queue
        elif status not in allowed:
            wrong = f"{status} {json.dumps(answer)[:200]}"
        elif status >= 400 and not answer.get("error"):
            wrong = f"{status} without a JSON error: {json.dumps(answer)[:200]}"
        elif texts and len(answer.get("predictions") or next(iter(answer["outputs"].values()))) != texts:
            wrong = f"{texts} texts sent, answered {json.dumps(answer)[:200]}"
        tally.add(kind, status, latency if texts and status == 200 else None, wrong)
    connection.close()


def memory(pid):
    """(VmRSS, VmHWM) of the process in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    model_dir = serving.train_model(LOAD_SEQ_LENGTH)
    reviews = serving.test_reviews(serving.REVIEWS)
    log_path = os.path.join(common.RESULTS, "soak_serve.log")
    try:
        server = serving_client.ServerProcess(model_dir, log_path, startup_seconds=serving.STARTUP_SECONDS)
    except RuntimeError as error:
        sys.exit(f"{str(error).splitlines()[0]} see {log_path}")
    cfg = config.Config()
    kinds = request_kinds(server.predict_path, reviews, cfg)
    try:
        serving.load(server, reviews, args.clients, WARM_UP_REQUESTS)  # untimed: every batch shape once
        tally, samples = Tally(), {}
        samples["after warm-up"] = memory(server.process.pid)
        started = time.monotonic()
        deadline = started + args.seconds
        threads = [threading.Thread(target=client, args=(number, server, kinds, deadline, tally))
                   for number in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.seconds / 2)
        samples["at half time"] = memory(server.process.pid)
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        samples["at the end"] = memory(server.process.pid)
        health = server.health()
    finally:
        exit_code = server.stop()
    answered = sum(count for counter in tally.statuses.values() for status, count in counter.items()
                   if isinstance(status, int))
    server_errors = sum(count for counter in tally.statuses.values() for status, count in counter.items()
                        if isinstance(status, int) and status >= 500 and status != 503)
    latencies = sorted(tally.latencies)
    print(f"soak: {args.clients} clients, {elapsed:.1f} s, {tally.sent:,} requests sent, {answered:,} answered "
          f"({answered / elapsed:.1f}/s), {sum(tally.statuses[k]['reset'] for k in tally.statuses):,} reset "
          f"by their client; {health['texts_scored']:,} texts scored (the warm-up's included) in "
          f"{health['model_calls']:,} model calls, {health['texts_dropped']:,} dropped")
    for kind, counter in tally.statuses.items():
        print(f"  {kind:<36} " + ", ".join(f"{status}: {count:,}" for status, count in sorted(
            counter.items(), key=str)))
    if latencies:
        print(f"good requests: p50 {serving.percentile(latencies, 50) * 1000:.0f} ms, "
              f"p99 {serving.percentile(latencies, 99) * 1000:.0f} ms over {len(latencies):,}")
    for when, (rss, peak) in samples.items():
        print(f"server memory {when}: resident {rss:,.0f} MiB, peak {peak:,.0f} MiB")
    print(f"5xx other than 503: {server_errors}; answers not as documented: {tally.wrong_count}; "
          f"serve.py exited {exit_code}")
    for line in tally.wrong:
        print("  " + line)
    figures = {"clients": args.clients, "seconds": elapsed, "sent": tally.sent, "answered": answered,
               "statuses": {kind: {str(s): c for s, c in counter.items()} for kind, counter in tally.statuses.items()},
               "p50_ms": serving.percentile(latencies, 50) * 1000 if latencies else None,
               "p99_ms": serving.percentile(latencies, 99) * 1000 if latencies else None,
               "memory_mib": {when: {"resident": rss, "peak": peak} for when, (rss, peak) in samples.items()},
               "server_errors": server_errors, "wrong": tally.wrong_count, "exit_code": exit_code}
    common.save_result("soak", {"machine": common.machine(), **figures})
    return 1 if server_errors or tally.wrong_count or exit_code != 0 or health["texts_queued"] else 0


if __name__ == "__main__":
    sys.exit(main())
