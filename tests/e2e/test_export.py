"""A trained model's serving_default signature (run with saved_model_cli), and export.py's core-ops
export for runtimes without TF Text ops, scored by its plain-Python client."""
import json
import os
import platform
import subprocess
import sys

import helpers
import numpy as np
import pytest

import export
import predict
from tfhub_classifier import cli

TEXTS = ["The movie was great!", "awful boring plot", "the acting was really wonderful and the story dull",
         "Café, naïve résumé! (It's) 3.5 stars...", ""]
LONG_TEXT = " ".join(["great"] + ["the movie was a film"] * 40 + ["awful"])  # longer than any seq_length here


# saved_model_cli does not load TF Text ops by itself: this runs it after importing tensorflow_text.
SAVED_MODEL_CLI = [sys.executable, "-c", "import sys, tensorflow_text; from tensorflow.python.tools import "
                   "saved_model_cli; sys.argv[0] = 'saved_model_cli'; sys.exit(saved_model_cli.main())"]


# Run in a fresh process that never imports tensorflow_text: each export's client_example.py
# tokenizes texts and scores them (as it prints them); each export scores given token ids; and the ops
# of each SavedModel that this process's TensorFlow does not register are listed.
CORE_ONLY_CHECK = r"""
import contextlib, importlib.util, io, json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

def ops_outside_core(model_dir):
    saved = saved_model_pb2.SavedModel()
    with open(model_dir + "/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    ops, functions = set(), set()
    for graph in (meta.graph_def for meta in saved.meta_graphs):
        ops |= {node.op for node in graph.node}
        for function in graph.library.function:
            functions.add(function.signature.name)
            ops |= {node.op for node in function.node_def}
    return sorted(op for op in ops - functions if op_def_registry.get(op) is None), len(ops)

def client_of(export_dir):
    spec = importlib.util.spec_from_file_location("client_example", export_dir + "/client_example.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client

job = json.load(open(sys.argv[1]))
result = {"scores": {}, "outside_core": {}, "op_count": {}, "client_tokens": {}, "client_lines": {}}
for name, case in job["exports"].items():
    serve = tf.saved_model.load(case["dir"]).signatures["serving_default"]
    outputs = serve(**{key: tf.constant(np.array(value, np.int32)) for key, value in case["tokens"].items()})
    result["scores"][name] = outputs["probabilities"].numpy().tolist()
    client = client_of(case["dir"])
    result["client_tokens"][name] = client.Tokenizer.of_export(case["dir"])(job["texts"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        client.main(["--export-dir", case["dir"], *case["argv"], *job["texts"]])
    result["client_lines"][name] = printed.getvalue().splitlines()
for name, model_dir in job["ops_of"].items():
    result["outside_core"][name], result["op_count"][name] = ops_outside_core(model_dir)
result["tensorflow_text_imported"] = "tensorflow_text" in sys.modules
print(json.dumps(result))
"""


# Run in a fresh process that never imports tensorflow_text: each TFLite export's client tokenizes texts
# and scores them with its model.tflite, as it prints them.
TFLITE_CHECK = r"""
import contextlib, importlib.util, io, json, sys
job = json.load(open(sys.argv[1]))
result = {"client_tokens": {}, "client_lines": {}}
for name, case in job["exports"].items():
    spec = importlib.util.spec_from_file_location("client_" + name, case["dir"] + "/client_example.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    result["client_tokens"][name] = client.Tokenizer.of_export(case["dir"])(job["texts"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        client.main(["--export-dir", case["dir"], *case["argv"], *job["texts"]])
    result["client_lines"][name] = printed.getvalue().splitlines()
result["tensorflow_text_imported"] = "tensorflow_text" in sys.modules
print(json.dumps(result))
"""


# The client's REST paths in a process where numpy and tensorflow can't even be imported.
STDLIB_ONLY_CLIENT = r"""
import runpy, sys
sys.modules["numpy"] = sys.modules["tensorflow"] = sys.modules["tensorflow_text"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Texts on which a client must tokenize as the model does: casing, accents, compatibility forms, CJK,
# emoji, control, format and odd space characters, literal special tokens, long words and texts.
VARIED = TEXTS + [
    "GREAT Movie, Wonderful ACTING", "the MOVIE was Très wonderful", "café ÉCOLE naïve", "ｇｒｅａｔ ﬁlm",
    "电影 great 很好", "映画 was 최고 awful", "great😀 movie 👍🏽 ❤️", "great\x00movie\tfilm\nplot\r!",
    "soft\u00adly great\u200bmovie zero\u200dwidth \ufeffawful", "great\u00a0movie\u3000plot",
    "[MASK] great [SEP] film [CLS]",
    "[UNK] awful [PAD]", "“great” — ‘awful’… ¿plot? ¡story!", "great" + "s" * 95, "great" + "s" * 96,
    "the Straße İstanbul ß", "great\ufffdfilm", LONG_TEXT, LONG_TEXT.upper(), "great " * 30 + "awful " * 30]


def run_quietly(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def binary_dir(trained):
    """The binary IMDB classifier train.py saved (truncation: head, the official recipe's)."""
    return trained[0]["--model-dir"]





@pytest.fixture(scope="module")
def cased_dir(hub_models, tmp_path_factory):
    """A multi-label classifier with a cased preprocessor and tail truncation, built (as train.py
    --precision bfloat16 builds it) under the bfloat16 rewrite where the CPU has it, else in float32."""
    import tiny_hub

    from tfhub_classifier import hardware, tasks
    root = tmp_path_factory.mktemp("cased")
    preprocessor = tiny_hub.save_preprocessor(str(root / "hub"), lower_case=False)
    task = tasks.Task("multilabel", ("action", "comedy", "drama"))
    precision = "bfloat16" if hardware.cpu_supports_bfloat16() else "float32"
    return helpers.untrained_classifier(root, preprocessor, hub_models[1], task, "tail", precision=precision)


@pytest.fixture(scope="module")
def exports(binary_dir, multiclass_dir, cased_dir, tmp_path_factory):
    """{name: (model dir, core-ops export dir, export.py's result)}. Beside the binary one, a folder
    of the user's own named like a save's parked model (OUT.previous); the multi-class one goes to an
    empty folder that already exists."""
    root = tmp_path_factory.mktemp("exports")
    (root / "binary.previous").mkdir()
    (root / "binary.previous" / "mine.txt").write_text("mine")
    (root / "multiclass").mkdir()
    result = {}
    for name, model_dir in (("binary", binary_dir), ("multiclass", multiclass_dir), ("cased", cased_dir)):
        out = str(root / name)
        result[name] = (model_dir, out, export.main(["--model-dir", model_dir, "--out", out,
                                                      "--format", "core-ops"]))
    return result


# The client's flags that change its output, with predict.py's of the same name.
LABELLING = {"binary": ["--threshold", "0.4"], "multiclass": ["--top-k", "2"], "cased": ["--threshold", "0.45"]}


def predicted(model_dir, texts, capsys):
    """predict.py's probabilities for texts, in float32 as the saved graphs run by default."""
    results = predict.main(["--model-dir", model_dir, "--format", "jsonl", "--precision", "float32", *texts])
    capsys.readouterr()
    return np.array(results)


def predicted_lines(model_dir, texts, capsys, flags=()):
    """What predict.py --format jsonl prints for texts, parsed."""
    capsys.readouterr()
    predict.main(["--model-dir", model_dir, "--format", "jsonl", "--precision", "float32", *flags, *texts])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def assert_same_results(lines, expected, what):
    """JSON results alike: texts and labels exactly, probabilities and scores to 1e-5."""
    assert len(lines) == len(expected), what
    for line, want in zip(lines, expected):
        got = json.loads(line) if isinstance(line, str) else line
        assert got.keys() == want.keys(), (what, got, want)
        for key, value in want.items():
            if key in ("score", "probability", "explained_probability"):
                assert abs(got[key] - value) <= 1e-5, (what, got, want)
            elif key == "weights":  # None (outside the model's window) exactly, weights to 1e-5
                assert [w is None for w in got[key]] == [w is None for w in value], (what, got, want)
                np.testing.assert_allclose([w for w in got[key] if w is not None],
                                           [w for w in value if w is not None], atol=1e-5, err_msg=what)
            elif key == "probabilities":
                assert got[key].keys() == value.keys(), (what, got, want)
                np.testing.assert_allclose(list(got[key].values()), list(value.values()), atol=1e-5, err_msg=what)
            elif key == "top_k":
                assert [e["label"] for e in got[key]] == [e["label"] for e in value], (what, got, want)
                np.testing.assert_allclose([e["probability"] for e in got[key]],
                                           [e["probability"] for e in value], atol=1e-5, err_msg=what)
            else:
                assert got[key] == value, (what, key, got, want)


def run_without_tf_text(script, job, tmp_path):
    """What script printed last (JSON) run on job in a fresh Python, checked never to import tensorflow_text."""
    with open(tmp_path / "job.json", "w") as f:
        json.dump(job, f)
    environment = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    checked = run_quietly([sys.executable, "-c", script, str(tmp_path / "job.json")], cwd=tmp_path, env=environment)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["tensorflow_text_imported"] is False
    return result


def full_model_scores(model_dir, texts):
    """The full model's token ids for texts and its probabilities for them, via classify_tokens."""
    from tfhub_classifier.model import saving
    from tfhub_classifier.runtime import tf
    model, record = saving.load(model_dir)
    tokens = {key: value.numpy() for key, value in model.preprocess(tf.constant(texts)).items()}
    probabilities = saving.task_of_record(record).probabilities(model.classify_tokens(tokens).numpy())
    return tokens, probabilities


def test_serving_signature_scores_as_predict_does(binary_dir, multiclass_dir, capsys):
    from tfhub_classifier.runtime import tf
    for model_dir, names in ((binary_dir, ["neg", "pos"]), (multiclass_dir, ["negative", "neutral", "positive"])):
        serve = tf.saved_model.load(model_dir).signatures["serving_default"]
        outputs = serve(text=tf.constant(TEXTS + [LONG_TEXT]))
        np.testing.assert_allclose(outputs["probabilities"].numpy(), predicted(model_dir, TEXTS + [LONG_TEXT], capsys),
                                   atol=1e-5)
        assert outputs["label_names"].numpy().tolist() == [[name.encode() for name in names]] * (len(TEXTS) + 1)


def test_saved_model_cli_shows_and_runs_the_signature(binary_dir, capsys):
    shown = run_quietly(SAVED_MODEL_CLI + ["show", "--dir", binary_dir, "--all"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    signature = shown.stdout.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['text']" in signature and "DT_STRING" in signature
    assert "outputs['probabilities']" in signature and "outputs['label_names']" in signature
    assert "Function Name: 'classify_tokens'" in shown.stdout  # the fast-path functions too
    texts = ["great film", "awful boring"]
    ran = run_quietly(SAVED_MODEL_CLI + ["run", "--dir", binary_dir, "--tag_set", "serve", "--signature_def",
                                         "serving_default", "--input_exprs", f"text={json.dumps(texts)}"])
    assert ran.returncode == 0, ran.stderr[-2000:]
    printed = ran.stdout.split("Result for output key probabilities:")[1].split("Result for")[0]
    scores = np.array(printed.strip().strip("[]").split(), dtype=float)
    np.testing.assert_allclose(scores, predicted(binary_dir, texts, capsys), atol=1e-5)


def test_core_ops_export_and_its_client_work_without_tf_text(exports, tmp_path, capsys):
    """In a process that never imports tensorflow_text: the export scores as the full model does, its
    client tokenizes varied texts into the model's own ids and prints what predict.py prints, and its
    graph holds only ops core TensorFlow registers (which the full model's does not)."""
    job = {"exports": {}, "ops_of": {}, "texts": VARIED}
    expected, expected_tokens = {}, {}  # the full model's probabilities and token ids
    for name, (model_dir, out, result) in exports.items():
        assert result["format"] == "core-ops" and result["task"]["kind"] == {"cased": "multilabel"}.get(name, name)
        written = {"saved_model.pb", "variables", "vocab.txt", "tokenizer.json", "labels.json", "labels.txt",
                   "client_example.py"}
        assert written <= set(os.listdir(out)) <= written | {"fingerprint.pb", "assets"}
        tokens, expected[name] = full_model_scores(model_dir, VARIED)
        expected_tokens[name] = {key: value.tolist() for key, value in tokens.items()}
        job["exports"][name] = {"dir": out, "tokens": expected_tokens[name], "argv": LABELLING[name]}
        job["ops_of"][f"{name} export"] = out
    job["ops_of"]["full model"] = exports["binary"][0]
    result = run_without_tf_text(CORE_ONLY_CHECK, job, tmp_path)
    for name, (model_dir, _, _) in exports.items():
        np.testing.assert_allclose(result["scores"][name], expected[name], atol=1e-5)
        assert result["outside_core"][f"{name} export"] == [] and result["op_count"][f"{name} export"] > 20
        for key, value in expected_tokens[name].items():
            for text, made, want in zip(VARIED, result["client_tokens"][name][key], value):
                assert made == want, f"{name} {key} {text!r}"
        assert_same_results(result["client_lines"][name], predicted_lines(model_dir, VARIED, capsys, LABELLING[name]),
                            name)
    # The check can fail: the full model's graph holds TF Text ops that core TensorFlow lacks.
    assert {"CaseFoldUTF8", "WordpieceTokenizeWithOffsets"} <= set(result["outside_core"]["full model"])


@pytest.fixture(scope="module")
def tflite_exports(binary_dir, multiclass_dir, cased_dir, tmp_path_factory):
    """{name: (model dir, TFLite export dir, --quantize)}: float32, int8 and float16 weights."""
    root = tmp_path_factory.mktemp("tflite")
    cases = {"binary": (binary_dir, "none"), "multiclass": (multiclass_dir, "int8"), "cased": (cased_dir, "float16")}
    result = {}
    for name, (model_dir, quantize) in cases.items():
        out = str(root / name)
        written = export.main(["--model-dir", model_dir, "--out", out, "--format", "tflite", "--quantize", quantize])
        assert written["format"] == "tflite"
        result[name] = (model_dir, out, quantize)
    return result


# How far a TFLite export's probabilities may be from the SavedModel's in float32, by --quantize: float32
# weights score the same; int8 and float16 weights round the untrained tiny models' scores by less.
TFLITE_TOLERANCE = {"none": 1e-5, "int8": 0.05, "float16": 0.01}
TFLITE_FLAGS = {**LABELLING, "binary": [*LABELLING["binary"], "--explain"]}


def test_tflite_export_and_its_client_work_without_tf_text(tflite_exports, tmp_path, capsys):
    """In a process that never imports tensorflow_text, each TFLite export's client makes the model's own
    token ids and prints predict.py's lines, its probabilities within the tolerance of its weights."""
    job = {"exports": {}, "texts": VARIED}
    for name, (_, out, _) in tflite_exports.items():
        written = {"model.tflite", "vocab.txt", "tokenizer.json", "labels.json", "labels.txt", "client_example.py"}
        assert set(os.listdir(out)) == written
        job["exports"][name] = {"dir": out, "argv": TFLITE_FLAGS[name]}
    result = run_without_tf_text(TFLITE_CHECK, job, tmp_path)
    sizes = {}
    for name, (model_dir, out, quantize) in tflite_exports.items():
        tokens, _ = full_model_scores(model_dir, VARIED)
        for key, value in tokens.items():
            assert result["client_tokens"][name][key] == value.tolist(), (name, key)
        expected = predicted_lines(model_dir, VARIED, capsys, TFLITE_FLAGS[name])
        lines = [json.loads(line) for line in result["client_lines"][name]]
        assert [line["text"] for line in lines] == VARIED
        for got, want in zip(lines, expected):
            probabilities = [got.get("score", got.get("probability"))] if "probabilities" not in got else list(
                got["probabilities"].values())
            wanted = [want.get("score", want.get("probability"))] if "probabilities" not in want else list(
                want["probabilities"].values())
            np.testing.assert_allclose(probabilities, wanted, atol=TFLITE_TOLERANCE[quantize], err_msg=name)
        if quantize == "none":  # float32 weights: predict.py's lines, --explain's words and weights included
            assert "weights" in lines[0]
            assert_same_results(lines, expected, name)
        sizes[quantize] = os.path.getsize(os.path.join(out, "model.tflite"))
        stored = reduced_precision_elements(os.path.join(out, "model.tflite"))
        assert stored == {"none": {}, "int8": {"int8": stored.get("int8")},
                          "float16": {"float16": stored.get("float16")}}[quantize], (name, stored)
        assert quantize == "none" or stored[quantize] > 10_000, (name, stored)  # the encoder's weights, not a few
    assert sizes["int8"] < sizes["float16"] < sizes["none"]


def reduced_precision_elements(path):
    """{dtype: elements} of a .tflite's int8 and float16 tensors: where its weights are stored so."""
    import warnings

    from tfhub_classifier.runtime import tf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    counts = {}
    for detail in interpreter.get_tensor_details():
        dtype = np.dtype(detail["dtype"]).name
        if dtype in ("int8", "float16"):
            counts[dtype] = counts.get(dtype, 0) + int(np.prod(detail["shape"]))
    return counts


def test_quantize_needs_the_tflite_format(binary_dir, tmp_path, capsys):
    assert cli.run(export.main, ["--model-dir", binary_dir, "--out", str(tmp_path / "out"), "--quantize",
                                 "int8"]) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert "--quantize applies to --format tflite" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_writes_the_settings_and_names_the_model_uses(exports):
    from tfhub_classifier.export import core_ops
    expected = {"binary": (True, "head", ["negative", "positive"]),
                "multiclass": (True, "head+tail", ["negative", "neutral", "positive"]),
                "cased": (False, "tail", ["action", "comedy", "drama"])}
    for name, (_, out, result) in exports.items():
        lower_case, truncation, names = expected[name]
        with open(os.path.join(out, "tokenizer.json")) as f:
            settings = json.load(f)
        assert settings == result["tokenizer"]
        assert (settings["lower_case"], settings["truncation"], settings["seq_length"]) == (
            lower_case, truncation, {"binary": 64}.get(name, 24))
        with open(os.path.join(out, "labels.json")) as f:
            labels = json.load(f)
        assert labels["display_names"] == names == result["task"]["display_names"]  # IMDB's neg/pos as predict.py says
        with open(os.path.join(out, "labels.txt")) as f:
            assert f.read().splitlines() == names
        # The bfloat16 rewrite is grappler's, at run time: a model built under it exports a float32 graph.
        assert result["bfloat16_ops"] == 0 and core_ops.bfloat16_nodes(out) == []


# Run in a fresh process: the export's client loads its SavedModel; then whether TensorFlow runs oneDNN.
ONEDNN_CHECK = r"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("client_example", sys.argv[1] + "/client_example.py")
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
client.local_scorer(sys.argv[1])
from tensorflow.python.util import _pywrap_util_port
print(json.dumps(_pywrap_util_port.IsMklEnabled()))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN is turned on on x86 only")
def test_the_client_scores_with_onednn_as_the_suite_does(exports):
    """On x86 the client turns TensorFlow's oneDNN kernels on, as the suite does (TensorFlow leaves them off
    on CPUs without AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX, where they score slower); a user's
    TF_ENABLE_ONEDNN_OPTS=0 keeps them off."""
    environment = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    for setting, expected in ((None, True), ("0", False)):
        child = dict(environment, **({"TF_ENABLE_ONEDNN_OPTS": setting} if setting else {}))
        done = subprocess.run([sys.executable, "-c", ONEDNN_CHECK, exports["binary"][1]], env=child,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1]) is expected, (setting, done.stdout)


def test_client_rest_paths_need_only_the_standard_library(exports, capsys):
    """--request and --server in a process where numpy and tensorflow can't be imported, against a
    stand-in for TF Serving's REST predict API (row format) that runs the export's signature."""
    import http.server
    import threading

    from tfhub_classifier.runtime import tf
    texts = ["The movie was great!", "awful boring plot", "Café ÉCOLE 电影 😀", LONG_TEXT]
    for name, (model_dir, out, _) in exports.items():
        serve = tf.saved_model.load(out).signatures["serving_default"]

        class Serving(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/models/core:predict" and body["signature_name"] == "serving_default"
                columns = {key: tf.constant([row[key] for row in body["instances"]], tf.int32)
                           for key in ("input_word_ids", "input_mask", "input_type_ids")}
                outputs = {key: value.numpy().tolist() for key, value in serve(**columns).items()}  # noqa: B023 (served within this iteration)
                rows = [dict(zip(outputs, values)) for values in zip(*outputs.values())]
                answer = json.dumps({"predictions": rows}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serving)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            client = [sys.executable, "-c", STDLIB_ONLY_CLIENT, os.path.join(out, "client_example.py")]
            url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/core"
            scored = run_quietly(client + ["--server", url, *LABELLING[name], *texts])
            explained = run_quietly(client + ["--server", url, "--explain", *LABELLING[name], *texts])
            requested = run_quietly(client + ["--request", *texts])
        finally:
            server.shutdown()
            server.server_close()
        assert scored.returncode == 0, scored.stderr[-2000:]
        assert_same_results(scored.stdout.splitlines(), predicted_lines(model_dir, texts, capsys, LABELLING[name]),
                            name)
        assert explained.returncode == 0, explained.stderr[-2000:]
        assert_same_results(explained.stdout.splitlines(),
                            predicted_lines(model_dir, texts, capsys, [*LABELLING[name], "--explain"]), name)
        assert requested.returncode == 0, requested.stderr[-2000:]
        request = json.loads(requested.stdout)
        tokens, _ = full_model_scores(model_dir, texts)
        assert request["signature_name"] == "serving_default"
        for key, value in tokens.items():
            assert [instance[key] for instance in request["instances"]] == value.tolist()


def test_the_client_refuses_bad_input_in_one_line(exports, tmp_path):
    """The shipped client, as its users run it (numpy and TensorFlow absent), answers a bad flag, a folder
    that is no export, a server that is down or refuses the model, and a missing TensorFlow with one line
    that says what to do, and a non-zero exit: never a traceback."""
    import http.server
    import socket
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path.startswith("/hang-up"):  # a server that closes the connection without an answer
                self.close_connection = True
                return
            if self.path.startswith("/not-serving"):  # an answer, but no TF Serving's
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"<html>hello</html>")
                return
            self.send_error(404, "Servable not found")

        def log_message(self, *args):
            pass
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = [sys.executable, "-c", STDLIB_ONLY_CLIENT, os.path.join(exports["multiclass"][1], "client_example.py")]
    cases = [(["--top-k", "0"], 2, "--top-k must be 1 or more"),
             (["--export-dir", str(tmp_path)], 1, "is not an export (tokenizer.json, vocab.txt, labels.json missing)"),
             (["--server", f"http://127.0.0.1:{closed}/v1/models/core"], 1, "can't get an answer from the server"),
             (["--server", f"http://127.0.0.1:{server.server_address[1]}/v1/models/core"], 1, "answered HTTP 404"),
             (["--server", f"http://127.0.0.1:{server.server_address[1]}/hang-up"], 1,
              "can't get an answer from the server"),
             (["--server", f"http://127.0.0.1:{server.server_address[1]}/not-serving"], 1, "did not answer in JSON"),
             ([], 1, "scoring locally needs tensorflow")]
    try:
        for flags, code, expected in cases:
            done = run_quietly(client + flags + ["The movie was great!"])
            lines = done.stderr.strip().splitlines()
            assert done.returncode == code and "Traceback" not in done.stderr, (flags, done.stderr[-2000:])
            assert expected in lines[-1] and (code == 2 or len(lines) == 1), (flags, done.stderr)
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_explains_as_predict_does(exports, capsys):
    """client_example.py --explain (occlusion through the export's token interface) gives the words,
    offsets and weights predict.py --explain gives, toward the label given or the one named; words the
    truncation leaves out of the window have no weight (None) in both."""
    import importlib.util
    texts = ["The movie was great!", "don't stop, it's (really) great", "Café ÉCOLE 电影 😀", "", LONG_TEXT]
    explain_label = {"binary": "negative", "multiclass": "neutral", "cased": "drama"}
    for name, (model_dir, out, _) in exports.items():
        spec = importlib.util.spec_from_file_location(f"client_{name}", os.path.join(out, "client_example.py"))
        client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client)
        for flags in ([*LABELLING[name], "--explain"], ["--explain", "--explain-label", explain_label[name]]):
            capsys.readouterr()
            lines = client.main(["--export-dir", out, *flags, *texts])
            printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert printed == lines
            expected = predicted_lines(model_dir, texts, capsys, flags)
            assert_same_results(lines, expected, (name, flags))
            if flags[-2] == "--explain-label":
                assert {line["explained_label"] for line in lines} == {explain_label[name]}
            assert None in lines[-1]["weights"] and any(w is not None for w in lines[-1]["weights"])
        with pytest.raises(SystemExit):  # a label the model doesn't have: argparse's one-line error
            client.main(["--export-dir", out, "--explain", "--explain-label", "nonesuch", "great"])
        assert "is not one of this model's labels" in capsys.readouterr().err


def test_bad_exports_are_refused_in_one_line(binary_dir, tmp_path, capsys):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    assert cli.run(export.main, ["--model-dir", str(not_a_model), "--out", str(tmp_path / "out")]) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "--model-dir" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert cli.run(export.main, ["--model-dir", binary_dir, "--out", str(taken)]) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert "already exists" in error and "--out" in error and len(error.strip().splitlines()) == 1
    assert os.listdir(taken) == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):  # argparse: --out is required
        export.main(["--model-dir", binary_dir])


def test_an_export_touches_nothing_else(exports):
    """A folder named like a save's parked model (OUT.previous) is the user's: an export leaves it be,
    and leaves no staging folders behind."""
    root = os.path.dirname(exports["binary"][1])
    assert (open(os.path.join(root, "binary.previous", "mine.txt")).read()) == "mine"
    assert sorted(os.listdir(root)) == ["binary", "binary.previous", "cased", "multiclass"]


def test_a_folder_filled_during_the_export_is_left_alone(binary_dir, tmp_path, capsys, monkeypatch):
    """--out empty when checked, then filled while the model loads: refused in one line, untouched."""
    from tfhub_classifier.model import saving
    out = tmp_path / "out"
    out.mkdir()
    load = saving.load

    def slow_load(model_dir):
        (out / "keep.txt").write_text("mine")  # someone else writes there meanwhile
        return load(model_dir)

    monkeypatch.setattr(saving, "load", slow_load)
    assert cli.run(export.main, ["--model-dir", binary_dir, "--out", str(out)]) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "--out" in error and len(error.strip().splitlines()) == 1
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the staging folder is gone
