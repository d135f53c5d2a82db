"""serve.py: TensorFlow Serving's REST API over real HTTP, batching, bad requests, SIGTERM.

Most tests share one server process (started with the trained tiny model on a free port of
127.0.0.1); the SIGTERM test starts its own, since it stops it.
"""
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

import cli
import config
import serve
import train
from conftest import ROOT
from tiny_hub import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS

STARTUP_SECONDS = 180  # TensorFlow's import and the model's load, on a busy machine
BATCH_SIZE = 8
MAX_REQUEST_BYTES = 2_000_000  # over a 1 MB text, so that one meets --max-text-chars instead


def review(rng):
    words = rng.choices(FILLER_WORDS, k=rng.randint(0, 60)) + rng.choices(POSITIVE_WORDS + NEGATIVE_WORDS, k=2)
    rng.shuffle(words)
    return " ".join(words)


TEXTS = ["The movie was great!", "The movie was terrible...", "", "ÇA ÉTAIT GÉNIAL 🎬 — très bien",
         *(review(random.Random(seed)) for seed in range(20))]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python serve.py` in a subprocess, its stderr in a log file."""

    def __init__(self, model_dir, log_path, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.predict_url = f"{self.url}/v1/models/imdb_bert:predict"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "serve.py"), "--model-dir", model_dir, "--port", str(self.port),
                 "--precision", "float32", *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, f"serve.py exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"serve.py did not start in {STARTUP_SECONDS} s:\n{self.log()}"
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-5000:]

    def health(self):
        return requests.get(f"{self.url}/healthz", timeout=10).json()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]["--model-dir"]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    running = Server(model_dir, str(tmp_path_factory.mktemp("serve") / "serve.log"), "--batch-size",
                     str(BATCH_SIZE), "--max-request-bytes", str(MAX_REQUEST_BYTES))
    yield running
    running.stop()
    assert running.process.returncode == 0, running.log()


@pytest.fixture(scope="module")
def expected(model_dir):
    """predict.py's score of each text, in this process."""
    import predict
    scores = predict.main(["--model-dir", model_dir, "--precision", "float32", *TEXTS])
    return dict(zip(TEXTS, scores))


def check_predictions(predictions, texts, expected):
    assert len(predictions) == len(texts)
    for prediction, text in zip(predictions, texts):
        assert prediction["score"] == pytest.approx(expected[text], abs=1e-6), text
        assert prediction["label"] == ("positive" if expected[text] >= 0.5 else "negative"), text


def predict_ok(server, expected, texts=TEXTS[:3], session=requests):
    answer = session.post(server.predict_url, json={"instances": texts}, timeout=60)
    assert answer.status_code == 200, answer.text
    check_predictions(answer.json()["predictions"], texts, expected)


# ---------------------------------------------------------------- the protocol

def test_row_format_answers_predictions_as_predict_py_scores(server, expected):
    rows = [text if i % 2 else {"text": text} for i, text in enumerate(TEXTS)]  # both row forms
    answer = requests.post(server.predict_url, json={"instances": rows}, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"predictions"}
    check_predictions(answer.json()["predictions"], TEXTS, expected)  # more texts than --batch-size, too


@pytest.mark.parametrize("inputs", [TEXTS[:5], {"text": TEXTS[:5]}])
def test_columnar_format_answers_outputs_as_tf_serving_does(server, expected, inputs):
    answer = requests.post(f"{server.url}/v1/models/imdb_bert/versions/1:predict",
                           json={"inputs": inputs, "signature_name": "serving_default"}, timeout=60)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert set(outputs) == {"score", "label"}
    check_predictions([{"score": s, "label": label} for s, label in zip(outputs["score"], outputs["label"])],
                      TEXTS[:5], expected)


def test_model_status_metadata_and_health(server, model_dir):
    status = requests.get(f"{server.url}/v1/models/imdb_bert", timeout=10)
    assert status.status_code == 200
    with open(os.path.join(model_dir, cli.RUN_RECORD)) as f:
        record = json.load(f)
    assert status.json() == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}], "run_record": record}
    assert requests.get(f"{server.url}/v1/models/imdb_bert/versions/1", timeout=10).json() == status.json()
    metadata = requests.get(f"{server.url}/v1/models/imdb_bert/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": "imdb_bert", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    assert {name: spec["dtype"] for name, spec in signature["outputs"].items()} == {
        "score": "DT_FLOAT", "label": "DT_STRING"}
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("method, path, status, needle", [
    ("post", "/v1/models/other:predict", 404, "Servable not found for request: Latest(other)"),
    ("post", "/v1/models/imdb_bert/versions/7:predict", 404, "Specific(imdb_bert, 7)"),
    ("get", "/v1/models/other", 404, "Servable not found"),
    ("get", "/v1/nothing", 404, "Not Found"),
    ("put", "/v1/models/imdb_bert:predict", 405, "Method Not Allowed"),
])
def test_unknown_models_and_routes_get_json_errors(server, expected, method, path, status, needle):
    answer = getattr(requests, method)(server.url + path, json={"instances": ["great"]}, timeout=10)
    assert answer.status_code == status and needle in answer.json()["error"]
    predict_ok(server, expected)


# ---------------------------------------------------------------- bad requests

def chunks_of(data, size=65536):
    """A body requests sends chunked, with no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


BIG = json.dumps({"instances": ["great " * (MAX_REQUEST_BYTES // 6)]}).encode()


@pytest.mark.parametrize("body, status, needle", [
    pytest.param(b'{"instances": ["great"', 400, "not valid JSON", id="malformed JSON"),
    pytest.param(b"", 400, "body is empty", id="no body"),
    pytest.param(b'["great"]', 400, "must be a JSON object", id="a list"),
    pytest.param(b'{"instances": "great"}', 400, '"instances" must be a list of texts, got a string', id="a string"),
    pytest.param(b'{"instances": []}', 400, '"instances" is empty', id="no instances"),
    pytest.param(b'{"inputs": {"text": []}}', 400, '"inputs.text" is empty', id="no inputs"),
    pytest.param(b'{"instances": ["great", 3]}', 400, "instances[1] must be a text", id="a number"),
    pytest.param(b'{"instances": [{"review": "great"}]}', 400, 'instances[0] must have the one input "text"',
                 id="unknown input"),
    pytest.param(b'{"instances": [{"text": null}]}', 400, "instances[0].text must be a text", id="null text"),
    pytest.param(b'{"inputs": {"words": ["great"]}}', 400, 'takes the one input "text"', id="unknown column"),
    pytest.param(b'{"instances": ["a"], "inputs": ["b"]}', 400, "not both", id="both formats"),
    pytest.param(b'{"texts": ["great"]}', 400, 'unknown key(s) "texts"', id="unknown key"),
    pytest.param(b'{"signature_name": "classify", "instances": ["great"]}', 400,
                 'signature name: "classify" not found', id="unknown signature"),
    pytest.param(b'{"instances": ["caf\xe9"]}', 400, "not valid UTF-8 (byte 0xe9 at offset 19)", id="Latin-1"),
    pytest.param(b'{"instances": ["\xff\xfe"]}', 400, "not valid UTF-8", id="invalid UTF-8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply", id="deep nesting"),
    pytest.param(json.dumps({"instances": ["great", "a" * 2**20]}).encode(), 400,
                 "instances[1] has 1,048,576 characters, over --max-text-chars 100,000", id="a 1 MB text"),
    pytest.param(BIG, 413, "over --max-request-bytes 2,000,000", id="too large"),
    pytest.param(lambda: chunks_of(BIG), 413, "over --max-request-bytes 2,000,000", id="too large, chunked"),
])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_next_is_served(server, expected, body, status,
                                                                          needle):
    answer = requests.post(server.predict_url, data=body() if callable(body) else body, timeout=60)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]
    predict_ok(server, expected)


def test_a_client_that_hangs_up_mid_body_does_not_stall_the_server(server, expected):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/imdb_bert:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     b'{"instances": ["gre')
    predict_ok(server, expected)


# ---------------------------------------------------------------- batching under load

def test_eight_concurrent_clients_get_every_answer_right_and_share_model_calls(server, expected):
    clients, requests_each = 8, 50
    before = server.health()
    failures = []

    def client(number):
        with requests.Session() as session:
            for i in range(requests_each):
                texts = [TEXTS[(number * requests_each + i + 7 * k) % len(TEXTS)] for k in range(3)]
                try:
                    predict_ok(server, expected, texts, session)
                except Exception as error:  # noqa: BLE001  (every failure is reported below)
                    failures.append(f"client {number}, request {i}: {error!r}")

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    after = server.health()
    texts = after["texts_scored"] - before["texts_scored"]
    calls = after["model_calls"] - before["model_calls"]
    assert texts == clients * requests_each * 3
    assert texts / calls > 1.5, f"{calls} model calls for {texts} texts: concurrent requests were not batched"


# ---------------------------------------------------------------- stopping

def test_sigterm_answers_the_request_in_flight_then_exits_0(model_dir, tmp_path):
    server = Server(model_dir, str(tmp_path / "serve.log"), "--batch-size", "4")
    try:
        texts = [review(random.Random(seed)) for seed in range(3000)]  # seconds of model calls
        answers = []
        sender = threading.Thread(target=lambda: answers.append(
            requests.post(server.predict_url, json={"instances": texts}, timeout=120)))
        sender.start()
        deadline = time.monotonic() + 60
        while server.health()["texts_scored"] == 0:  # the request is being scored
            assert time.monotonic() < deadline and sender.is_alive(), server.log()
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        sender.join(120)
        assert answers and answers[0].status_code == 200, server.log()
        assert len(answers[0].json()["predictions"]) == len(texts)
        assert server.process.wait(60) == 0, server.log()
        assert time.monotonic() - signalled < 60
        assert "Stopped serving imdb_bert." in server.log()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/healthz", timeout=10)
    finally:
        server.stop()


# ---------------------------------------------------------------- the parts, in this process

def test_batcher_splits_large_requests_gathers_small_ones_and_survives_a_failed_call():
    import serving
    batch_sizes = []

    def score(texts):
        batch_sizes.append(len(texts))
        if "boom" in texts:
            raise RuntimeError("model call failed")
        return [text.upper() for text in texts]

    async def requests_at_once():
        batcher = serving.Batcher(score, batch_size=4, timeout_s=0.05)
        batcher.start()
        answers = await asyncio.gather(batcher.score(list("abcdefghij")), batcher.score(["x", "y"]),
                                       batcher.score(["boom"]), return_exceptions=True)
        answers.append(await batcher.score(["after"]))
        await batcher.close()
        return answers

    many, few, failed, after = asyncio.run(requests_at_once())
    assert many == list("ABCDEFGHIJ") and few == ["X", "Y"] and after == ["AFTER"]
    assert isinstance(failed, RuntimeError)
    assert max(batch_sizes) == 4 and sum(batch_sizes) == 14 and len(batch_sizes) == 5


@pytest.mark.parametrize("kind, top_k", [("multiclass", 1), ("multiclass", 2), ("multilabel", 1)])
def test_other_tasks_answer_what_predict_py_jsonl_writes(kind, top_k, monkeypatch):
    import inference
    import scoring
    import serving
    import tasks
    task = tasks.Task(kind, ("anger", "joy", "fear"))
    logits = np.array([[2.0, 0.0, -1.0], [-1.0, 0.5, 3.0]])
    monkeypatch.setattr(scoring, "logits_of", lambda model, texts, batch_size: logits[:len(texts)])
    results = serving.Servable(None, {}, task, 0.5, top_k, batch_size=8).score(["a", "b"])
    jsonl = io.StringIO()
    writer = inference.Writer("jsonl", task, 0.5, top_k, jsonl)
    for text, probabilities in zip("ab", task.probabilities(logits)):
        writer.write(text, probabilities)
    assert [{"text": text, **result} for text, result in zip("ab", results)] == [
        json.loads(line) for line in jsonl.getvalue().splitlines()]
    columns = serving.as_columns(results)
    assert list(columns) == list(results[0]) and all(len(values) == 2 for values in columns.values())


# ---------------------------------------------------------------- flags, before any model loads

@pytest.fixture
def fake_model_dir(tmp_path):
    """A folder that passes cli.require_model_dir; these tests fail before it is loaded."""
    folder = tmp_path / "imdb_bert"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / cli.RUN_RECORD).write_text("{}")
    return str(folder)


@pytest.mark.parametrize("flags, needle", [
    (["--port", "0"], "--port must be between 1 and 65535"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-timeout-ms", "-1"], "--batch-timeout-ms and --drain-timeout-s must be 0 or more"),
    (["--max-request-bytes", "0"], "--max-request-bytes must be at least 1"),
    (["--model-name", "a/b"], "can't be part of a URL path"),
])
def test_bad_flags_fail_at_once(fake_model_dir, flags, needle, capsys):
    assert cli.run(serve.main, ["--model-dir", fake_model_dir, *flags]) == cli.EXIT_ERROR
    assert needle in capsys.readouterr().err


def test_a_port_in_use_fails_before_the_model_loads(fake_model_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.run(serve.main, ["--model-dir", fake_model_dir, "--port", str(port)]) == cli.EXIT_ERROR
    assert f"can't listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_train_py_has_no_serving_flags():
    assert all(name not in train.TRAIN_FLAGS for name in config.SERVING_FIELDS)
    with pytest.raises(SystemExit):
        train.parse(["--port", "8501"])
