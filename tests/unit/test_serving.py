"""serve.py over real HTTP without TensorFlow: the app over a fake model call (recording its batches,
held back by a gate, failing on "boom") served by uvicorn in a thread of this process, for batching,
hang-ups and failures without timing guesses; serve.py's own main over a fake slow model in a process
of its own, for what SIGTERM does; and its flags."""
import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

import numpy as np
import pytest
import requests
from helpers import unloadable_model_dir
from serving_client import HOST, ServerProcess

import config
import predict
import serve
import train
from tfhub_classifier import cli, tasks
from tfhub_classifier.serving import batching, connections, protocol, rest_api
from tfhub_classifier.serving.servable import Servable

LABEL_NAMES = ["neg", "pos"]  # the tiny IMDB model's, as its serving_default signature returns them


class FakeModelCall:
    """Servable.score's stand-in: records each batch; waits while `gate` is clear; fails on "boom"."""

    def __init__(self):
        self.batches, self.gate = [], threading.Event()
        self.gate.set()

    def __call__(self, texts):
        self.batches.append(list(texts))
        assert self.gate.wait(30), "the test never opened the gate"
        if "boom" in texts:
            raise RuntimeError("model call failed")
        return [{"echo": text} for text in texts]

    def scored(self):
        return [text for batch in self.batches for text in batch]


class InProcessServer:
    """rest_api.create_app over FakeModelCall, served by uvicorn in a thread on a free port."""

    def __init__(self, **settings):
        self.model_call = FakeModelCall()
        cfg = config.resolve(**{"serve_batch_size": 4, "batch_timeout_ms": 20.0, "max_texts_per_request": 8,
                                "max_queued_texts": 16, **settings})
        servable = Servable(None, {}, tasks.Task("binary", tuple(LABEL_NAMES)), 0.5, 1, 4)
        servable.score = self.model_call
        self.explain_call = FakeModelCall()
        servable.explain = self.explain_call
        self.app = rest_api.create_app(servable, "fake", cfg)
        sock = connections.bind(HOST, 0)
        self.port = sock.getsockname()[1]
        self.predict_url = f"http://{HOST}:{self.port}/v1/models/fake:predict"
        self.server = connections.uvicorn_server(self.app, cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def post(self, texts):
        return requests.post(self.predict_url, json={"instances": texts}, timeout=60)

    def health(self):
        answer = requests.get(f"http://{HOST}:{self.port}/healthz", timeout=10)
        return answer.status_code, answer.json()

    def wait_for(self, condition, what):
        deadline = time.monotonic() + 20
        while not condition(self.health()[1]):
            assert time.monotonic() < deadline, f"{what}: {self.health()}"
            time.sleep(0.01)

    def hold_the_model(self, pool):
        """Close the gate and start a one-text request whose model call then waits: its future."""
        calls = self.health()[1]["model_calls"]
        self.model_call.gate.clear()
        first = pool.submit(self.post, ["first"])
        self.wait_for(lambda health: health["model_calls"] == calls + 1, "the first call did not start")
        return first

    def stop(self):
        self.model_call.gate.set()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def fake():
    running = InProcessServer()
    yield running
    running.stop()


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        yield threads


def test_texts_of_two_requests_share_one_model_call(fake, pool):
    first = fake.hold_the_model(pool)
    two, one = pool.submit(fake.post, ["b1", "b2"]), pool.submit(fake.post, ["c"])
    fake.wait_for(lambda health: health["texts_queued"] == 3, "the two requests were not queued")
    fake.model_call.gate.set()
    assert [answer.result(30).json() for answer in (first, two, one)] == [
        {"predictions": [{"echo": text} for text in texts]} for texts in (["first"], ["b1", "b2"], ["c"])]
    assert sorted(fake.model_call.batches[-1]) == ["b1", "b2", "c"]


def raw_predict(texts, model="fake", close=False):
    body = json.dumps({"instances": texts}).encode()
    closing = "Connection: close\r\n" if close else ""
    return (f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{closing}Content-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def through_small_buffers(server, sock):
    """sock connected to the in-process server with both sides' kernel buffers made a few kB, so an answer
    of tens of kB stays partly in asyncio's buffer: the server's side of the connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, server.port))
    deadline = time.monotonic() + 10
    while not (connection := next(iter(server.server.server_state.connections), None)):
        assert time.monotonic() < deadline, "the server never took the connection"
        time.sleep(0.01)
    connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return connection


def test_a_client_that_hangs_up_while_its_texts_wait_has_them_dropped_unscored(fake, pool):
    first = fake.hold_the_model(pool)
    _, before = fake.health()
    with socket.create_connection((HOST, fake.port), timeout=10) as sock:
        sock.sendall(raw_predict(["gone1", "gone2", "gone3"]))
        fake.wait_for(lambda health: health["texts_queued"] == 3, "the request was not queued")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
    fake.wait_for(lambda health: health["texts_queued"] == 0, "the hang-up was not noticed")
    fake.model_call.gate.set()
    assert first.result(30).status_code == 200
    _, after = fake.health()
    assert after["texts_dropped"] - before["texts_dropped"] == 3
    assert after["texts_scored"] == before["texts_scored"]
    assert not any(text.startswith("gone") for text in fake.model_call.scored())


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(fake, pool):
    """shutdown(SHUT_WR) after a whole request (as `nc -N` and some HTTP/1.0 clients do) is no hang-up."""
    first = fake.hold_the_model(pool)
    with socket.create_connection((HOST, fake.port), timeout=30) as sock:
        sock.sendall(raw_predict(["half", "closed"]))
        sock.shutdown(socket.SHUT_WR)
        fake.wait_for(lambda health: health["texts_queued"] == 2, "the request was not queued")
        fake.model_call.gate.set()
        received = b""
        while chunk := sock.recv(65536):  # the server closes once it has answered
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body) == {
        "predictions": [{"echo": "half"}, {"echo": "closed"}]}
    assert first.result(30).status_code == 200


@pytest.mark.parametrize("version, header, half_close", [("HTTP/1.1", b"Connection: close\r\n", False),
                                                          ("HTTP/1.0", b"", False), ("HTTP/1.0", b"", True)])
def test_a_request_whose_answer_takes_longer_than_the_read_timeout_is_answered(pool, version, header, half_close):
    """The read deadline ends when the request has all come, also for requests after which the client
    must close (HTTP/1.0, `Connection: close`: what urllib sends), half-closed or not."""
    server = InProcessServer(read_timeout_s=1)
    try:
        first = server.hold_the_model(pool)
        body = json.dumps({"instances": ["slow"]}).encode()
        with socket.create_connection((HOST, server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/models/fake:predict %s\r\nHost: 127.0.0.1\r\n%sContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (version.encode(), header, len(body), body))
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            time.sleep(2)  # twice --read-timeout-s, the model still held
            server.model_call.gate.set()
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, answer = received.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0] and json.loads(answer) == {"predictions": [{"echo": "slow"}]}
        assert first.result(30).status_code == 200
    finally:
        server.stop()


def read_answer(sock):
    """(status line, body) of one HTTP answer read from sock, by its content-length."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536) or pytest.fail(f"closed mid-answer: {received!r}")
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536) or pytest.fail(f"closed mid-body: {received!r}")
    return head.split(b"\r\n")[0], body


def test_a_body_answered_before_it_ended_leaves_the_connection_reusable_without_an_unasked_408():
    server = InProcessServer(read_timeout_s=1)
    try:
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            body = json.dumps({"instances": ["a"]}).encode()
            sock.sendall(b"POST /v1/models/other:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:5]))
            assert read_answer(sock)[0].startswith(b"HTTP/1.1 404 ")  # answered before the body ended
            sock.sendall(body[5:])
            sock.settimeout(2)  # past --read-timeout-s: nothing must come unasked
            with pytest.raises(TimeoutError):
                sock.recv(65536)
            sock.settimeout(10)
            sock.sendall(raw_predict(["next"]))
            status, answer = read_answer(sock)
            assert status.startswith(b"HTTP/1.1 200 ") and json.loads(answer) == {"predictions": [{"echo": "next"}]}
    finally:
        server.stop()


def test_past_the_connection_cap_with_every_connection_busy_a_client_reads_503_not_a_reset(pool):
    """A new connection that sends its request at once, as clients do, still reads the 503: the server
    does not close with the request unread (which sends a reset that can destroy the answer)."""
    server = InProcessServer(max_connections=3)
    try:
        first = server.hold_the_model(pool)
        busy = [pool.submit(server.post, [f"busy{i}"]) for i in range(2)]
        deadline = time.monotonic() + 20  # asked in-process: /healthz would need a fourth connection
        while server.app.state.batcher.queued < 2:
            assert time.monotonic() < deadline, "the busy requests were not queued"
            time.sleep(0.01)
        for attempt in range(20):
            with socket.create_connection((HOST, server.port), timeout=10) as sock:
                sock.sendall(raw_predict(["one too many"]))
                time.sleep(0.01)  # the refusal races the request's arrival
                received = b""
                while chunk := sock.recv(65536):  # ConnectionResetError here: the answer was destroyed
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), (attempt, received)
            assert "over --max-connections 3 connections" in json.loads(body)["error"]
        server.model_call.gate.set()
        assert [answer.result(30).status_code for answer in (first, *busy)] == [200, 200, 200]
        assert server.post(["after"]).json() == {"predictions": [{"echo": "after"}]}
    finally:
        server.stop()


def test_a_failed_model_call_answers_500_drops_the_rest_of_its_request_and_the_next_is_served(fake):
    _, before = fake.health()
    answer = fake.post(["boom", "b", "c", "d", "e", "f"])
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error: RuntimeError: model call failed"}
    assert fake.model_call.batches[-1] == ["boom", "b", "c", "d"]  # e and f were never scored
    _, after = fake.health()
    assert after["texts_dropped"] - before["texts_dropped"] == 2 and after["texts_queued"] == 0
    assert fake.post(["next"]).json() == {"predictions": [{"echo": "next"}]}


def test_a_full_queue_answers_503_at_once(fake, pool):
    first = fake.hold_the_model(pool)
    queued = [pool.submit(fake.post, [f"q{i}"] * 8) for i in range(2)]  # --max-queued-texts 16
    fake.wait_for(lambda health: health["texts_queued"] == 16, "the queue did not fill")
    refused = fake.post(["one more"])
    assert refused.status_code == 503
    assert "--max-queued-texts 16" in refused.json()["error"] and "retry" in refused.json()["error"]
    fake.model_call.gate.set()
    assert all(answer.result(30).status_code == 200 for answer in [first, *queued])


def test_a_dead_batcher_makes_healthz_and_predict_answer_503():
    broken = InProcessServer()
    try:
        def bug():
            raise RuntimeError("a bug in the batcher")

        broken.app.state.batcher._take = bug
        answer = broken.post(["a"])
        assert answer.status_code == 503 and "the batcher died: RuntimeError: a bug" in answer.json()["error"]
        status, health = broken.health()
        assert status == 503 and health["status"] == "unavailable" and "a bug" in health["error"]
        assert broken.post(["b"]).status_code == 503
    finally:
        broken.stop()
FAKE_SERVE = """
import time
import serve
from tfhub_classifier import cli, tasks
from tfhub_classifier.serving.servable import Servable

class SlowServable(Servable):
    def score(self, texts):  # a model call without TensorFlow
        time.sleep(0.2)
        return [{"score": 0.5} for _ in texts]

Servable.load = classmethod(lambda cls, cfg, log=print: SlowServable(
    None, {}, tasks.Task("binary", ("neg", "pos")), cfg.threshold, cfg.top_k, cfg.serve_batch_size))
cli.exit_with(serve.main)
"""


@pytest.fixture
def fake_model_dir(tmp_path):
    """A folder that passes cli.require_model_dir; it is never loaded."""
    return unloadable_model_dir(tmp_path / "imdb_bert")


def fake_serve(fake_model_dir, *flags):
    return ServerProcess(fake_model_dir, os.path.join(os.path.dirname(fake_model_dir), "serve.log"), *flags,
                         command=[sys.executable, "-c", FAKE_SERVE], startup_seconds=60)


def wait_for(server, condition, what):
    deadline = time.monotonic() + 20
    while not condition(server.health()):
        assert time.monotonic() < deadline, f"{what}: {server.log()}"
        time.sleep(0.02)


def test_sigterm_refuses_new_connections_answers_the_queued_request_then_exits_0(fake_model_dir, pool):
    # A text waits up to 8 s for others to share its model call: queued, not started, when SIGTERM comes.
    server = fake_serve(fake_model_dir, "--batch-size", "4", "--batch-timeout-ms", "8000")
    try:
        answer = pool.submit(requests.post, server.predict_url, json={"instances": ["a", "b"]}, timeout=60)
        wait_for(server, lambda health: health["texts_queued"] == 2 and health["model_calls"] == 0,
                 "the request was not queued")
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 6  # well inside the 8 s the queued text waits, even on a loaded machine
        while True:
            try:
                socket.create_connection((HOST, server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still taking connections after SIGTERM"
            time.sleep(0.02)
        assert not answer.done(), "the request was answered before the listener closed"
        assert answer.result(30).status_code == 200, server.log()
        assert answer.result().json() == {"predictions": [{"score": 0.5}] * 2}
        assert server.process.wait(30) == 0, server.log()
        assert server.log().strip().endswith("Stopped serving imdb_bert.")
    finally:
        server.stop()


def test_a_drain_that_times_out_cuts_requests_off_and_exits_2_saying_so(fake_model_dir, pool):
    server = fake_serve(fake_model_dir, "--batch-size", "4", "--batch-timeout-ms", "60000", "--drain-timeout-s", "0.5")
    try:
        answer = pool.submit(requests.post, server.predict_url, json={"instances": ["a"]}, timeout=60)
        wait_for(server, lambda health: health["texts_queued"] == 1, "the request was not queued")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == cli.EXIT_ERROR, server.log()
        assert server.log().strip().splitlines()[-1] == (
            "error: 1 request(s) were still running after --drain-timeout-s 0.5 and were cut off unanswered; "
            "allow a longer drain (and as long a grace period in the service manager)")
        try:  # a request cut off is answered 503 with the reason, or its connection just closes
            cut_off = answer.result(30)
            assert cut_off.status_code == 503 and "--drain-timeout-s 0.5 ran out" in cut_off.json()["error"]
        except requests.ConnectionError:
            pass
        assert "Traceback" not in server.log(100_000) and "CancelledError" not in server.log(100_000)
    finally:
        server.stop()


def test_batcher_takes_a_text_from_each_waiting_request_in_turn():
    batches, gate = [], threading.Event()

    def score(texts):
        batches.append(list(texts))
        gate.wait(10)
        return [text.upper() for text in texts]

    async def requests_at_once():
        batcher = batching.Batcher(score, batch_size=4, timeout_s=0.05, max_queued=100)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(["first"]))
        while not batches:
            await asyncio.sleep(0.01)
        large = asyncio.ensure_future(batcher.score(list("abcdefghij")))
        small = asyncio.ensure_future(batcher.score(["x", "y"]))
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(first, large, small)
        await batcher.close()
        return answers

    assert asyncio.run(requests_at_once()) == [["FIRST"], list("ABCDEFGHIJ"), ["X", "Y"]]
    # The small request rides in the first call after it came, not after the large one's three.
    assert batches == [["first"], ["a", "x", "b", "y"], list("cdef"), list("ghij")]


def test_a_failed_call_fails_its_request_drops_its_other_texts_and_leaves_nothing_unretrieved():
    batches, problems = [], []

    def score(texts):
        batches.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("model call failed")
        return [text.upper() for text in texts]

    async def run():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context["message"]))
        batcher = batching.Batcher(score, batch_size=4, timeout_s=0.01, max_queued=100)
        batcher.start()
        failed = await asyncio.gather(batcher.score(["boom", *"bcdefgh"]), return_exceptions=True)
        after = await batcher.score(["after"])
        await batcher.close()
        gc.collect()
        return failed[0], after, batcher.dropped

    failed, after, dropped = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and after == ["AFTER"] and dropped == 4
    assert batches == [["boom", "b", "c", "d"], ["after"]]
    assert not problems, problems


@pytest.mark.parametrize("kind, top_k", [("multiclass", 1), ("multiclass", 2), ("multilabel", 1)])
def test_other_tasks_answer_the_signature_outputs_and_what_predict_py_jsonl_writes(kind, top_k, monkeypatch):
    from tfhub_classifier.inference import prediction, scoring
    task = tasks.Task(kind, ("anger", "joy", "fear"))
    logits = np.array([[2.0, 0.0, -1.0], [-1.0, 0.5, 3.0]])
    monkeypatch.setattr(scoring, "logits_of", lambda model, texts, batch_size: logits[:len(texts)])
    servable = Servable(None, {}, task, 0.5, top_k, batch_size=8)
    results = servable.score(["a", "b"])
    jsonl = io.StringIO()
    writer = prediction.Writer("jsonl", task, 0.5, top_k, jsonl)
    probabilities = task.probabilities(logits)
    for text, row in zip("ab", probabilities):
        writer.write(text, row)
    for result, line, row in zip(results, jsonl.getvalue().splitlines(), probabilities):
        written = json.loads(line)
        del written["text"]
        written.pop("probabilities", None)  # multi-label's {name: p}: the signature's list instead
        assert {k: v for k, v in result.items() if k not in ("probabilities", "label_names")} == written
        assert result["probabilities"] == pytest.approx(row.tolist(), abs=1e-6)
        assert result["label_names"] == ["anger", "joy", "fear"]
    columns = protocol.as_columns(results)
    assert list(columns) == list(results[0]) and all(len(values) == 2 for values in columns.values())
    kinds = {"multiclass": {"label", "probability"} | ({"top_k"} if top_k > 1 else set()), "multilabel": {"labels"}}
    assert set(columns) == {"probabilities", "label_names"} | kinds[kind]  # the signature's two, then the additions


@pytest.mark.parametrize("flags, needle", [
    (["--port", "0"], "--port must be between 1 and 65535"),
    (["--batch-size", "0"], "--max-batch-size must be at least 1"),  # the old spelling sets it too
    (["--batch-timeout-ms", "-1"], "--batch-timeout-ms and --drain-timeout-s must be 0 or more"),
    (["--max-request-bytes", "0"], "--max-request-bytes must be at least 1"),
    (["--max-texts-per-request", "0"], "--max-texts-per-request must be at least 1"),
    (["--max-queued-texts", "100"], "--max-queued-texts 100 is below --max-texts-per-request 256"),
    (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--model-name", "a/b"], "can't be part of a URL path"),
])
def test_bad_flags_fail_at_once(fake_model_dir, flags, needle, capsys):
    assert cli.run(serve.main, ["--model-dir", fake_model_dir, *flags]) == cli.EXIT_ERROR
    assert needle in capsys.readouterr().err


def test_a_port_in_use_fails_before_the_model_loads(fake_model_dir, capsys):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.run(serve.main, ["--model-dir", fake_model_dir, "--port", str(port)]) == cli.EXIT_ERROR
    assert f"can't listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_servers_batch_flag_has_tf_servings_name_and_keeps_the_old_one():
    assert serve.parse(["--max-batch-size", "8"]).serve_batch_size == 8
    assert serve.parse(["--batch-size", "4"]).serve_batch_size == 4


def test_labelling_flags_come_from_config_for_predict_and_serve_and_not_train():
    for parse in (predict.parse, serve.parse):
        args = parse(["--threshold", "0.7", "--top-k", "2"])
        assert (args.threshold, args.top_k) == (0.7, 2)
        defaults = config.from_args(parse([]))
        # No --threshold: None, the saved model's own threshold (0.5 unless chosen at training).
        assert (defaults.threshold, defaults.top_k) == (config.Config.threshold, config.Config.top_k) == (None, 1)
    assert {"threshold", "top_k"} <= set(config.field_names(config.PREDICT)) & set(config.field_names(config.SERVE))
    assert not {"threshold", "top_k", "host", "port"} & set(config.field_names(config.TRAIN))
    for flag in ("--port", "--threshold"):
        with pytest.raises(SystemExit):
            train.parse([flag, "1"])


def test_a_host_header_not_served_gets_400_and_the_served_ones_are_answered(fake):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    url = f"http://{HOST}:{fake.port}/healthz"
    for host in ("evil.example", f"evil.example:{fake.port}", "127.0.0.1.evil.example", "EVIL.example.",
                 "[::1]x.evil.example", "localhost:80:80"):
        answer = requests.get(url, headers={"Host": host}, timeout=10)
        assert answer.status_code == 400 and "--allowed-hosts" in answer.json()["error"], host
    # This machine's names, and IP addresses (no DNS name to rebind; health checks send them).
    for host in ("localhost", f"localhost:{fake.port}", "LOCALHOST.", f"127.0.0.1:{fake.port}", f"[::1]:{fake.port}",
                 "10.0.0.5:8501", "[2001:db8::1]"):
        assert requests.get(url, headers={"Host": host}, timeout=10).status_code == 200, host
    with socket.create_connection((HOST, fake.port), timeout=10) as sock:  # HTTP/1.0 sends no Host
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_allowed_hosts_widen_what_is_served():
    assert rest_api.allowed_hosts(config.resolve(allowed_hosts="api.example.com, Other.example")) == {
        "localhost", "127.0.0.1", "::1", "api.example.com", "other.example"}
    assert rest_api.allowed_hosts(config.resolve(host="0.0.0.0")) == {"localhost", "127.0.0.1", "::1"}
    assert rest_api.allowed_hosts(config.resolve(host="10.0.0.5")) == {"localhost", "127.0.0.1", "::1", "10.0.0.5"}
    assert rest_api.allowed_hosts(config.resolve(allowed_hosts="*")) is None


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_predict_takes_only_json_so_no_page_can_post_to_it_cross_site(fake, content_type):
    """A form or fetch() with a 'simple' type skips the CORS preflight; it must not be scored."""
    _, before = fake.health()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(fake.predict_url, data=b'{"instances": ["a"]}', headers=headers, timeout=10)
    assert answer.status_code == 415 and "Content-Type: application/json" in answer.json()["error"]
    assert "access-control-allow-origin" not in answer.headers
    assert fake.health()[1]["texts_scored"] == before["texts_scored"]
    ok = requests.post(fake.predict_url, data=b'{"instances": ["a"]}', timeout=10,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_cors_headers_only_for_the_origin_named():
    server = InProcessServer(cors_origin="https://app.example.com")
    try:
        preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        answer = requests.options(server.predict_url, headers=preflight, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        other = requests.options(server.predict_url, headers={**preflight, "Origin": "https://evil.example"},
                                 timeout=10)
        assert "access-control-allow-origin" not in other.headers
        assert other.status_code == 400 and "Disallowed CORS origin" in other.json()["error"]
    finally:
        server.stop()


def test_the_record_is_served_only_when_asked_and_without_paths_or_credentials(fake):
    answer = requests.get(f"http://{HOST}:{fake.port}/v1/models/fake/record", timeout=10)
    assert answer.status_code == 404 and "--expose-record" in answer.json()["error"]
    record = {"config": {"model_dir": "/srv/models/tickets", "data_dir": "/home/ana/data", "train_data": "rel.csv",
                         "dataset_url": "https://ana:s3cret@data.example.com:8443/imdb.tar.gz?token=abc#x",
                         "encoder": "file:///home/ana/hub/encoder", "plots_dir": "~/plots", "seed": 42},
              "encoder": "https://tfhub.dev/tensorflow/small_bert/2", "history": {"loss": [0.5]}}
    public = protocol.public_record(record)
    assert public["config"] == {"model_dir": "tickets", "data_dir": "data", "train_data": "rel.csv",
                                "dataset_url": "https://data.example.com:8443/imdb.tar.gz",
                                "encoder": "encoder", "plots_dir": "plots", "seed": 42}
    assert public["encoder"] == record["encoder"] and public["history"] == record["history"]
    assert protocol.public_record(["http://u:p@[::1]:8080/x?k=v", "http://h:99999/data/x.tgz", "http://[::1"]) == [
        "http://[::1]:8080/x", "x.tgz", "[::1"]  # odd URLs are cut, never a 500


def _connected(sockets, seconds):
    """Whether every non-blocking connect in sockets completes within seconds."""
    import selectors
    waiting, deadline = set(sockets), time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for sock in waiting:
            selector.register(sock, selectors.EVENT_WRITE)
        while waiting and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    waiting.discard(key.fileobj)
                selector.unregister(key.fileobj)
    return not waiting


def test_a_flood_queued_while_the_server_is_stopped_neither_starves_a_client_nor_outlives_the_read_timeout(
        fake_model_dir):
    """Under a 300-descriptor limit and --max-connections 10, 400 connections arrive while the server is
    stopped (SIGSTOP: a loaded machine, at its worst): 150 trickling half a request's headers, 5 of them
    before a normal client's whole request and the rest right after it, then 250 silent. Every connection completes at
    once (none waits out a dropped SYN's retry); once the server runs again the client is answered within
    a second, not displaced by the silent connections accepted with it; the server never runs out of
    descriptors, and closes all 400 once --read-timeout-s has passed, trickling on or not."""
    with open("/proc/sys/net/core/somaxconn") as limit:
        if int(limit.read()) < 401:
            pytest.skip("net.core.somaxconn is under 401: the kernel can't queue the whole flood")
    limited = "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))\n" + FAKE_SERVE
    server = ServerProcess(fake_model_dir, os.path.join(os.path.dirname(fake_model_dir), "serve.log"),
                           "--max-connections", "10", "--read-timeout-s", "3",
                           command=[sys.executable, "-c", limited], startup_seconds=60)
    sockets = []
    try:
        server.process.send_signal(signal.SIGSTOP)
        for _ in range(401):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, server.port))
            sockets.append(sock)
        client, flood = sockets.pop(5), sockets
        assert _connected([client, *flood], 5), "connections waited for the stopped server"
        client.sendall(raw_predict(["a"], model="imdb_bert", close=True))
        for sock in flood[:150]:
            sock.sendall(b"POST /v1/models/imdb_bert:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        server.process.send_signal(signal.SIGCONT)
        opened = time.monotonic()
        client.setblocking(True)
        client.settimeout(10)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # reset: displaced, which the assert below says
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"predictions": [{"score": 0.5}]}
        assert time.monotonic() - opened < 1, "the client waited for the idle connections to time out"
        for sock in flood[:150]:
            with contextlib.suppress(OSError):
                sock.sendall(b"Length: 10\r\n")  # trickling on does not extend the deadline
        budget = 3 + 10  # the read timeout, and room for a loaded machine
        for sock in flood:
            sock.setblocking(True)
            sock.settimeout(max(0.1, opened + budget - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(4096):  # a 408 or nothing, then the server's close (or reset)
                    pass
        assert time.monotonic() - opened < budget
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert "Too many open files" not in server.log(100_000) and "Traceback" not in server.log(100_000)
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGCONT)
        for sock in [*sockets, locals().get("client")]:
            if sock is not None:
                sock.close()
        server.stop()


def test_an_answer_the_client_does_not_read_is_cut_however_little_of_it_is_left():
    """A client that never reads a 40 kB answer, of which the kernel's buffers (made small here) take a
    few: the rest, under asyncio's 64 KiB mark, starts no pause, and after the answer only a close waits
    for it. The connection is cut within --read-timeout-s or two all the same."""
    server = InProcessServer(read_timeout_s=1.0)
    try:
        with socket.socket() as sock:
            connection = through_small_buffers(server, sock)
            sock.sendall(raw_predict(["x" * 5000] * 8, close=True))
            deadline = time.monotonic() + 10
            while not connection.transport.get_write_buffer_size():
                assert time.monotonic() < deadline, "the kernel took the whole answer"
                time.sleep(0.01)
            answered = time.monotonic()
            assert connection.transport.get_write_buffer_size() < 64 * 1024
            while server.server.server_state.connections:
                assert time.monotonic() - answered < 2 * 1.0 + 3, "the connection outlived a client not reading"
                time.sleep(0.05)
    finally:
        server.stop()


def test_a_client_reading_its_answers_steadily_is_not_cut():
    """Keep-alive, the kernel's buffers made small: a 40 kB answer read at once, then, close to
    --read-timeout-s later, a 60 kB one read at 40 kB/s. More of the second is unsent (under asyncio's
    64 KiB mark) than was of the first, yet bytes keep going out, so the connection is not cut."""
    server = InProcessServer(read_timeout_s=1.0)
    try:
        with socket.socket() as sock:
            through_small_buffers(server, sock)
            sock.settimeout(10)
            for size, pause, then in ((5000, 0.0, 0.8), (7500, 0.1, 0.0)):
                sock.sendall(raw_predict(["x" * size] * 8))
                answer = b""
                while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
                        answer.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0]):
                    chunk = sock.recv(4096)
                    assert chunk, "the server cut a client that was reading"
                    answer += chunk
                    time.sleep(pause)
                assert answer.startswith(b"HTTP/1.1 200 ")
                time.sleep(then)
    finally:
        server.stop()


def test_a_websocket_upgrade_is_answered_as_plain_http(fake):
    """No upgrade to a protocol outside the deadlines and the cap: the request is answered over HTTP/1.1."""
    assert fake.server.config.ws == "none"  # also where a WebSocket library is installed
    with socket.create_connection((HOST, fake.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_client_stalled_mid_body_does_not_hold_the_drain(fake_model_dir):
    """SIGTERM while a body is half sent: the read timeout ends that request, so the drain takes seconds,
    not --drain-timeout-s, and ends with exit 0 and no traceback."""
    server = fake_serve(fake_model_dir, "--read-timeout-s", "2", "--drain-timeout-s", "60")
    try:
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/imdb_bert:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"instances\": [\"a")
            time.sleep(0.5)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(30) == 0, server.log()
            assert time.monotonic() - signalled < 20  # far inside the 60 s drain it would otherwise take
        assert "Traceback" not in server.log(100_000) and "CancelledError" not in server.log(100_000)
    finally:
        server.stop()


class OutOfDescriptors(socket.socket):
    """A listening socket whose accept() fails with EMFILE while `full` is set."""
    full = True

    def accept(self):
        if self.full:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_running_out_of_descriptors_pauses_accepting_with_one_warning_then_accepts(caplog):
    """If the process's own files leave no descriptor for a connection, accepting pauses with one warning
    (not a traceback a second), and the waiting client is accepted once a descriptor is free."""
    loop = asyncio.new_event_loop()
    listener = OutOfDescriptors()
    listener.bind((HOST, 0))
    made = []

    class Recorded(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)
    acceptor = connections.Acceptor(listener, Recorded, 5, loop)
    try:
        with socket.create_connection(listener.getsockname(), timeout=10):
            loop.run_until_complete(asyncio.sleep(0.3))
            warnings = [r.getMessage() for r in caplog.records if "open-file limit" in r.getMessage()]
            assert len(warnings) == 1 and "lower --max-connections" in warnings[0] and not acceptor.reading
            OutOfDescriptors.full = False
            loop.run_until_complete(asyncio.sleep(connections.RETRY_ACCEPT_SECONDS + 0.5))
            assert len(made) == 1 and acceptor.reading
            made[0].close()
    finally:
        OutOfDescriptors.full = True
        acceptor.close()
        loop.close()


def test_more_connections_than_the_open_file_limit_allows_are_refused_at_start(monkeypatch):
    import resource
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert connections.check_descriptor_limit(512) == 512
    with pytest.raises(ValueError, match=r"--max-connections 2000 does not fit this process's open-file limit "
                                         r"\(1024, .*use --max-connections 928 or less, or raise the limit "
                                         r"\(ulimit -n 2096\)"):
        connections.check_descriptor_limit(2000)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, 4096))
    with pytest.raises(ValueError, match=r"limit \(64\) leaves no room for connections .* \(ulimit -n 608\)"):
        connections.check_descriptor_limit(512)


@pytest.mark.parametrize("path", ["/V1/MODELS/fake:predict", "/v1/models/fake/versions/01:predict",
                                  "/v1/models/fake/labels/stable:predict"])
def test_routes_match_as_tf_servings_do(path):
    """Case-insensitive, versions as integers, and a version label named by --version-label; the method and
    "metadata" compared as written, as TF Serving's handler compares them after its case-insensitive match."""
    server = InProcessServer(version_label="stable")
    url = f"http://{HOST}:{server.port}"
    try:
        answer = requests.post(url + path, json={"instances": ["a"]}, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"predictions": [{"echo": "a"}]}, answer.text
        status = requests.get(f"{url}/v1/models/fake/versions/001", timeout=10)
        assert status.status_code == 200 and status.json() == protocol.model_status()
        shouted = requests.post(f"{url}/v1/models/fake:PREDICT", json={"instances": ["a"]}, timeout=10)
        assert shouted.status_code == 400 and shouted.json() == {
            "error": "Malformed request: POST /v1/models/fake:PREDICT"}
        assert requests.get(f"{url}/v1/models/fake/METADATA", timeout=10).json() == protocol.model_status()
    finally:
        server.stop()


def test_healthz_answers_head_as_get(fake):
    answer = requests.head(f"http://{HOST}:{fake.port}/healthz", timeout=10)
    assert answer.status_code == 200 and answer.content == b""


def test_requests_keep_tf_servings_json_rules():
    """Other top-level keys are ignored; a repeated key keeps its first value."""
    payload = protocol.parse_json(b'{"instances": ["a"], "parameters": {}, "instances": ["b"]}')
    assert protocol.texts_of_request(payload, 100, 10) == (["a"], False)


def test_malformed_http_gets_a_json_error(fake):
    with socket.create_connection((HOST, fake.port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert "Invalid HTTP request" in json.loads(body)["error"]


def test_keep_alive_connections_get_no_unasked_answer_and_silent_ones_close_quietly(fake_model_dir):
    """Between requests only the keep-alive timeout applies: no 408 a client could take for its next
    answer; a connection that never sends a byte is closed at the read timeout without a word."""
    server = fake_serve(fake_model_dir, "--read-timeout-s", "1", "--keep-alive-timeout-s", "30")
    request = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def one_answer(sock):
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
        return head
    try:
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.sendall(request)
            assert one_answer(sock).startswith(b"HTTP/1.1 200")
            sock.settimeout(2.5)
            with pytest.raises(TimeoutError):  # well past --read-timeout-s: nothing comes
                sock.recv(65536)
            sock.settimeout(10)
            sock.sendall(request)
            assert one_answer(sock).startswith(b"HTTP/1.1 200")
        with socket.create_connection((HOST, server.port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(65536) == b"" and time.monotonic() - started < 5
    finally:
        server.stop()


def test_a_client_that_does_not_read_its_answers_is_cut_off(fake_model_dir):
    """Pipelined requests whose answers are never read: the write deadline cuts the connection, so the
    client gets far fewer answers than it asked for instead of holding the connection for ever."""
    server = fake_serve(fake_model_dir, "--read-timeout-s", "1")
    try:
        answer_size = len(requests.get(f"{server.url}/v1/models/imdb_bert/metadata", timeout=10).content)
        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = b"GET /v1/models/imdb_bert/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            sent = 0
            with contextlib.suppress(OSError):  # the server stops reading once its answers back up
                for _ in range(200):
                    sock.sendall(request * 100)
                    sent += 100
            time.sleep(4)  # not reading: the server's writes stall past --read-timeout-s
            received, ended = 0, "by the client's own timeout: the server never cut it"
            sock.settimeout(10)
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
                ended = "closed"
            except ConnectionResetError:
                ended = "reset"
            except TimeoutError:
                pass
        assert ended in ("closed", "reset"), ended
        assert received < sent * answer_size
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["9" * 5000, "%D9%A1"])
def test_a_version_that_is_no_ascii_number_is_a_malformed_request(fake, version):
    answer = requests.get(f"http://{HOST}:{fake.port}/v1/models/fake/versions/{version}", timeout=10)
    assert answer.status_code == 400 and answer.json()["error"].startswith("Malformed request")


def test_predict_is_answered_while_a_text_is_being_explained(fake, pool):
    """An explanation takes seconds (a model call per word): :predict goes on beside it, not behind it."""
    fake.explain_call.gate.clear()
    try:
        explaining = pool.submit(requests.post, f"http://{HOST}:{fake.port}/v1/models/fake:explain",
                                 json={"instances": ["slow"]}, timeout=60)
        deadline = time.monotonic() + 20
        while not fake.explain_call.batches or fake.explain_call.batches[-1] != ["slow"]:
            assert time.monotonic() < deadline, "the explanation did not start"
            time.sleep(0.01)
        answer = fake.post(["quick"])  # would wait for the explanation on a shared thread
        assert answer.status_code == 200 and answer.json() == {"predictions": [{"echo": "quick"}]}
        assert not explaining.done()
    finally:
        fake.explain_call.gate.set()
    assert explaining.result(30).json() == {"predictions": [{"echo": "slow"}]}


def test_the_page_and_its_script_and_styles_come_from_the_server_itself(fake):
    url = f"http://{HOST}:{fake.port}"
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert '<script src="/page.js"></script>' in page.text and 'data-explain="/v1/models/fake:explain"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    script = requests.get(url + "/page.js", timeout=10)
    assert script.headers["content-type"].startswith("text/javascript") and "textContent" in script.text
    assert "innerHTML" not in script.text  # texts go on the page as text only
    assert requests.get(url + "/page.css", timeout=10).headers["content-type"].startswith("text/css")
    missing = requests.get(url + "/page.exe", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
