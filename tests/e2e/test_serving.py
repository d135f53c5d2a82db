"""serve.py's TensorFlow Serving REST API over real HTTP: one `python serve.py` process with the trained
tiny model, shared by the protocol tests."""
import base64
import json
import os
import random
import socket
import threading

import pytest
import requests
from browser import loaded_resources
from serving_client import HOST, ServerProcess
from tiny_hub import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS

import predict
from tfhub_classifier import cli

STARTUP_SECONDS = 180  # TensorFlow's import and the model's load, on a busy machine
BATCH_SIZE = 8
MAX_REQUEST_BYTES = 2_000_000  # over a 1 MB text, so that one meets --max-text-chars instead
LABEL_NAMES = ["neg", "pos"]  # the tiny IMDB model's, as its serving_default signature returns them


def review(rng):
    words = rng.choices(FILLER_WORDS, k=rng.randint(0, 60)) + rng.choices(POSITIVE_WORDS + NEGATIVE_WORDS, k=2)
    rng.shuffle(words)
    return " ".join(words)
TEXTS = ["The movie was great!", "The movie was terrible...", "", "ÇA ÉTAIT GÉNIAL 🎬 — très bien",
         *(review(random.Random(seed)) for seed in range(20))]


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]["--model-dir"]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    running = ServerProcess(model_dir, str(tmp_path_factory.mktemp("serve") / "serve.log"), "--batch-size",
                            str(BATCH_SIZE), "--expose-record", "--max-request-bytes", str(MAX_REQUEST_BYTES),
                            startup_seconds=STARTUP_SECONDS)
    yield running
    assert running.stop() == 0, running.log()
    assert "Traceback" not in running.log(100_000), running.log()


@pytest.fixture(scope="module")
def expected(model_dir):
    """predict.py's score of each text, in this process."""
    scores = predict.main(["--model-dir", model_dir, "--precision", "float32", *TEXTS])
    return dict(zip(TEXTS, scores))


def check_predictions(predictions, texts, expected):
    assert len(predictions) == len(texts)
    for prediction, text in zip(predictions, texts):
        assert set(prediction) == {"score", "positive_label", "label", "probabilities", "label_names"}, prediction
        assert prediction["score"] == pytest.approx(expected[text], abs=1e-6), text
        assert prediction["probabilities"] == pytest.approx(expected[text], abs=1e-6), text
        assert prediction["label"] == ("pos" if expected[text] >= 0.5 else "neg"), text  # one of label_names
        assert prediction["label_names"] == LABEL_NAMES


def predict_ok(server, expected, texts=TEXTS[:3], session=requests):
    answer = session.post(server.predict_url, json={"instances": texts}, timeout=60)
    assert answer.status_code == 200, answer.text
    check_predictions(answer.json()["predictions"], texts, expected)


def b64(text):
    return {"b64": base64.b64encode(text.encode()).decode()}


def test_row_format_answers_predictions_as_predict_py_scores(server, expected):
    # TF Serving's text forms: values (a string or its b64) or named inputs, one kind a request.
    for forms in ([lambda t: t, b64], [lambda t: {"text": t}, lambda t: {"text": b64(t)}]):
        rows = [forms[i % len(forms)](text) for i, text in enumerate(TEXTS)]
        answer = requests.post(server.predict_url, json={"instances": rows}, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        assert set(answer.json()) == {"predictions"}
        check_predictions(answer.json()["predictions"], TEXTS, expected)  # more texts than --batch-size, too


def test_served_scores_are_the_saved_signatures_own_by_default(server, model_dir, attention_kernel):
    """What TF Serving and the core-ops export give for the same texts (to 1e-6, through the fused graph),
    whatever the CPU's bfloat16."""
    from tfhub_classifier.model import saving
    from tfhub_classifier.runtime import tf
    model, _, _ = saving.load_model(model_dir, "float32")
    signature = model.signatures[saving.SERVING_SIGNATURE]
    saved = signature(text=tf.constant(TEXTS))["probabilities"].numpy().tolist()
    answer = requests.post(server.predict_url, json={"instances": TEXTS}, timeout=60)
    assert [p["probabilities"] for p in answer.json()["predictions"]] == pytest.approx(saved, abs=1e-6)
    assert server.health()["precision"] == "float32" and server.health()["engine"] == "fused"
    assert server.health()["attention"] == ("kernel" if attention_kernel else "chunks")


@pytest.mark.parametrize("inputs", [TEXTS[:5], {"text": TEXTS[:5]}, {"text": [b64(text) for text in TEXTS[:5]]}])
def test_columnar_format_answers_outputs_as_tf_serving_does(server, expected, inputs):
    answer = requests.post(f"{server.url}/v1/models/imdb_bert/versions/1:predict",
                           json={"inputs": inputs, "signature_name": "serving_default"}, timeout=60)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert set(outputs) == {"score", "positive_label", "label", "probabilities", "label_names"}
    check_predictions([dict(zip(outputs, values)) for values in zip(*outputs.values())], TEXTS[:5], expected)


def test_status_is_tf_servings_exactly_and_the_record_has_its_own_route(server, model_dir):
    status = requests.get(f"{server.url}/v1/models/imdb_bert", timeout=10)
    assert status.status_code == 200
    assert status.json() == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{server.url}/v1/models/imdb_bert/versions/1", timeout=10).json() == status.json()
    with open(os.path.join(model_dir, cli.RUN_RECORD)) as f:
        record = json.load(f)
    served = requests.get(f"{server.url}/v1/models/imdb_bert/record", timeout=10).json()  # with --expose-record
    assert {key: value for key, value in served.items() if key != "run_record"} == {
        "model_spec": {"name": "imdb_bert", "version": "1"},
        "task": {"kind": "binary", "label_names": LABEL_NAMES}, "threshold": 0.5, "top_k": 1}
    assert served["run_record"]["history"] == record["history"]
    assert served["run_record"]["config"]["model_dir"] == "imdb_bert"  # the folder's name, not where it is
    assert model_dir not in json.dumps(served) and os.path.dirname(record["encoder"]) not in json.dumps(served)
    health = server.health()
    assert health["status"] == "ok" and health["texts_queued"] == 0


def test_metadata_lists_every_saved_signature_and_invents_no_output(server, model_dir):
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signatures = saved.meta_graphs[0].signature_def
    metadata = requests.get(f"{server.url}/v1/models/imdb_bert/metadata", timeout=10).json()
    assert set(metadata) == {"model_spec", "metadata"}
    assert metadata["model_spec"] == {"name": "imdb_bert", "signature_name": "", "version": "1"}
    assert set(metadata["metadata"]) == {"signature_def"}
    served = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(served) == set(signatures) and {"serving_default", "__saved_model_init_op"} <= set(served)
    for signature_name, signature in signatures.items():  # what TF Serving would say of the SavedModel
        assert served[signature_name]["method_name"] == signature.method_name
        for kind in ("inputs", "outputs"):
            assert set(served[signature_name][kind]) == set(getattr(signature, kind)), (signature_name, kind)
            for name, info in getattr(signature, kind).items():
                assert served[signature_name][kind][name] == {
                    "dtype": types_pb2.DataType.Name(info.dtype), "name": info.name,
                    "tensor_shape": {"dim": [{"size": str(d.size), "name": ""} for d in info.tensor_shape.dim],
                                     "unknown_rank": info.tensor_shape.unknown_rank}}, (signature_name, name)
    default = served["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert {name: (spec["dtype"], [int(d["size"]) for d in spec["tensor_shape"]["dim"]])
            for name, spec in default["outputs"].items()} == {
        "probabilities": ("DT_FLOAT", [-1]), "label_names": ("DT_STRING", [-1, 2])}  # score, label: additions
    assert {name: spec["dtype"] for name, spec in default["inputs"].items()} == {"text": "DT_STRING"}
    assert all(spec["name"] for spec in [*default["inputs"].values(), *default["outputs"].values()])
    assert requests.get(f"{server.url}/v1/models/imdb_bert/versions/1/metadata", timeout=10).json() == metadata


@pytest.mark.parametrize("method, path, status, needle", [
    ("post", "/v1/models/other:predict", 404, "Servable not found for request: Latest(other)"),
    ("post", "/v1/models/imdb_bert/versions/7:predict", 404, "Specific(imdb_bert, 7)"),
    ("get", "/v1/models/other", 404, "Servable not found"),
    ("get", "/v1/models/other/record", 404, "Servable not found"),
    ("get", "/v1/nothing", 400, "Malformed request: GET /v1/nothing"),
    ("put", "/v1/models/imdb_bert:predict", 400, "Malformed request: PUT /v1/models/imdb_bert:predict"),
    ("get", "/v1/models/imdb_bert/", 400, "Malformed request"),  # a trailing slash, as TF Serving
    ("get", "/v1/models", 400, "Missing model name in request."),
    ("get", "/v1/models/imdb_bert/versions/abc", 400, "Malformed request"),
    ("post", "/v1/models/imdb_bert/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
    ("post", "/v1/models/imdb_bert:classify", 400, "Expected classification signature method_name to be "
                                                   "tensorflow/serving/classify. Was: tensorflow/serving/predict"),
    ("post", "/v1/models/imdb_bert:regress", 400, "Expected regression signature"),
    ("get", "/nothing", 404, "Not Found"),
])
def test_tf_servings_routes_and_unknown_ones_get_its_json_errors(server, expected, method, path, status, needle):
    answer = getattr(requests, method)(server.url + path, json={"instances": ["great"]}, timeout=10)
    assert answer.status_code == status and needle in answer.json()["error"]
    predict_ok(server, expected)


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
    pytest.param(b'{"instances": [' + b"9" * 5000 + b"]}", 400, "a number of over 4,300 digits", id="a huge number"),
    pytest.param(b'{"instances": [{"review": "great"}]}', 400, 'instances[0] must have the one input "text"',
                 id="unknown input"),
    pytest.param(b'{"instances": [{"text": null}]}', 400, "instances[0].text must be a text", id="null text"),
    pytest.param(b'{"instances": [{"b64": "not base64!"}]}', 400, "instances[0].b64 is not base64", id="bad b64"),
    pytest.param(b'{"inputs": {"words": ["great"]}}', 400, 'takes the one input "text"', id="unknown column"),
    pytest.param(b'{"instances": ["a"], "inputs": ["b"]}', 400, "not both", id="both formats"),
    pytest.param(b'{"texts": ["great"]}', 400, 'as "instances" (row format) or as "inputs"', id="neither format"),
    pytest.param(b'{"instances": ["great", {"text": "awful"}]}', 400, "instances[1] is an object where instances[0] "
                 "is a text", id="mixed row kinds"),
    pytest.param(b'{"signature_name": 100, "instances": ["great"]}', 400,
                 "'signature_name' key must be a string value.", id="signature name not a string"),
    pytest.param(b'{"signature_name": "classify", "instances": ["great"]}', 400,
                 'signature name: "classify" not found', id="unknown signature"),
    pytest.param(b'{"instances": ["caf\xe9"]}', 400, "not valid UTF-8 (byte 0xe9 at offset 19)", id="Latin-1"),
    pytest.param(b'{"instances": ["\xff\xfe"]}', 400, "not valid UTF-8", id="invalid UTF-8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply", id="deep nesting"),
    pytest.param(json.dumps({"instances": ["great", "a" * 2**20]}).encode(), 400,
                 "instances[1] has 1,048,576 characters, over --max-text-chars 100,000", id="a 1 MB text"),
    pytest.param(json.dumps({"instances": [""] * 257}).encode(), 400,
                 '"instances" has 257 texts, over --max-texts-per-request 256', id="too many texts"),
    pytest.param(b'{"instances": [' + b'"",' * 600_000 + b'""]}', 400, "has 600,001 texts, over",
                 id="2 MB of empty texts"),
    pytest.param(BIG, 413, "over --max-request-bytes 2,000,000", id="too large"),
    pytest.param(lambda: chunks_of(BIG), 413, "over --max-request-bytes 2,000,000", id="too large, chunked"),
])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_next_is_served(server, expected, body, status,
                                                                          needle):
    before = server.health()
    answer = requests.post(server.predict_url, data=body() if callable(body) else body, timeout=60,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]
    assert server.health()["texts_scored"] == before["texts_scored"]  # refused before any model call
    predict_ok(server, expected)


def test_a_client_stalled_mid_body_holds_no_one_up_and_its_hang_up_is_no_error(server, expected):
    before = server.health()
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/imdb_bert:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     b'{"instances": ["gre')
        predict_ok(server, expected)  # answered while that body is still unfinished
    predict_ok(server, expected)  # and after its client hung up mid-body
    assert server.health()["texts_scored"] - before["texts_scored"] == 6
    assert "Traceback" not in server.log(100_000) and "Exception in ASGI" not in server.log(100_000), server.log()


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


def test_explain_answers_each_prediction_with_the_words_behind_it(server, model_dir, expected):
    """:explain (the suite's addition): predict's fields, plus each word's occlusion weight, as predict.py
    --explain computes them in this process."""
    from tfhub_classifier.inference import attribution
    from tfhub_classifier.model import saving
    texts = TEXTS[:2] + [TEXTS[4]]
    answer = requests.post(server.url + "/v1/models/imdb_bert:explain", json={"instances": texts}, timeout=120)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    check_predictions([{k: p[k] for k in ("score", "positive_label", "label", "probabilities", "label_names")}
                       for p in predictions], texts, expected)
    model, record, _ = saving.load_model(model_dir, "float32")
    task = saving.task_of_record(record)
    labels = [int(expected[text] >= 0.5) for text in texts]
    explainer = attribution.Explainer.of_record(model, record, task, "occlusion")
    for prediction, own in zip(predictions, explainer.explain(texts, labels)):
        assert prediction["explained_label"] == prediction["label"]
        assert prediction["words"] == own.words and prediction["offsets"] == own.offsets
        assert prediction["weights"] == pytest.approx(own.weights, abs=1e-5)
    bad = requests.post(server.url + "/v1/models/imdb_bert:explain", data="{", timeout=10,
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "error" in bad.json()  # the same limits and error bodies as :predict
    many = requests.post(server.url + "/v1/models/imdb_bert:explain", json={"instances": ["great"] * 9}, timeout=10)
    assert many.status_code == 400 and "--max-explain-texts 8" in many.json()["error"]
    half = requests.post(server.url + "/v1/models/imdb_bert:explain", data='{"instances": ["\\ud83d great"]}',
                         headers={"Content-Type": "application/json"}, timeout=60)
    assert half.status_code == 200 and half.json()["predictions"][0]["words"] == ["\ufffd", "great"]
    assert server.health()["texts_explained"] >= 3


def test_the_page_in_a_browser_labels_a_typed_review_and_shades_its_words(server, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    chromium.get(server.url + "/")
    assert chromium.title == "imdb_bert: try the model"
    review = ('A great film 🎬, wonderful acting! 好电影 café <script>window.hacked = 1</script>'
              '<img src=x onerror="window.hacked=2">')
    box = chromium.find_element(By.ID, "text")
    assert chromium.switch_to.active_element == box  # focused on load: type at once
    # ChromeDriver types only the Basic Multilingual Plane: the emoji goes in by script, the last key by hand.
    chromium.execute_script("arguments[0].value = arguments[1]", box, review[:-1])
    box.send_keys(Keys.END, review[-1])
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard alone submits
    WebDriverWait(chromium, 60).until(expected_conditions.visibility_of_element_located((By.ID, "result")))
    verdict = chromium.find_element(By.ID, "verdict").text
    assert verdict in LABEL_NAMES
    meters = chromium.find_elements(By.CSS_SELECTOR, "#labels meter")
    values = [float(meter.get_attribute("value")) for meter in meters]
    assert len(values) == 2 and sum(values) == pytest.approx(1, abs=1e-6)
    words = chromium.find_element(By.ID, "words")
    assert words.text == review  # the hostile markup is shown as text
    # No element made of it: this holds apart from the CSP, which would stop the script running anyway.
    assert not chromium.find_elements(By.CSS_SELECTOR, "#words img, #words script")
    shaded = words.find_elements(By.CSS_SELECTOR, "span[title]")
    assert shaded and all("toward" in span.get_attribute("title") for span in shaded)
    served = requests.post(server.url + "/v1/models/imdb_bert:explain", json={"instances": [review]},
                           timeout=60).json()["predictions"][0]
    assert [span.text for span in words.find_elements(By.TAG_NAME, "span")] == served["words"]  # offsets kept
    assert len(chromium.find_elements(By.CSS_SELECTOR, "#top li")) == min(8, sum(1 for w in served["weights"] if w))
    assert all(url.startswith(server.url) for url in loaded_resources(chromium))  # no CDN: all from the server
    chromium.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
