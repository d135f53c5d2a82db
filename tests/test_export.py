"""Issue: serving. The saved model's serving_default signature (run with saved_model_cli), and
export.py's core-ops export for runtimes without TF Text ops."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import export
import predict

TEXTS = ["The movie was great!", "awful boring plot", "the acting was really wonderful and the story dull",
         "Café, naïve résumé! (It's) 3.5 stars...", ""]
LONG_TEXT = " ".join(["great"] + ["the movie was a film"] * 40 + ["awful"])  # longer than any seq_length here
# saved_model_cli does not load TF Text ops by itself: this runs it after importing tensorflow_text.
SAVED_MODEL_CLI = [sys.executable, "-c", "import sys, tensorflow_text; from tensorflow.python.tools import "
                   "saved_model_cli; sys.argv[0] = 'saved_model_cli'; sys.exit(saved_model_cli.main())"]

# Run in a fresh process that never imports tensorflow_text: score token ids with each export and
# list the ops of each SavedModel that this process's TensorFlow does not register.
CORE_ONLY_CHECK = r"""
import json, sys
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

job = json.load(open(sys.argv[1]))
result = {"scores": {}, "outside_core": {}, "op_count": {}}
for name, case in job["exports"].items():
    serve = tf.saved_model.load(case["dir"]).signatures["serving_default"]
    outputs = serve(**{key: tf.constant(np.array(value, np.int32)) for key, value in case["tokens"].items()})
    result["scores"][name] = outputs["probabilities"].numpy().tolist()
for name, model_dir in job["ops_of"].items():
    result["outside_core"][name], result["op_count"][name] = ops_outside_core(model_dir)
result["tensorflow_text_imported"] = "tensorflow_text" in sys.modules
print(json.dumps(result))
"""


def run_quietly(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def binary_dir(trained):
    """The binary IMDB classifier train.py saved (truncation: head, the official recipe's)."""
    return trained[0]["--model-dir"]


@pytest.fixture(scope="module")
def multiclass_dir(hub_models, tmp_path_factory):
    """A multi-class classifier saved as train.py saves it, untrained: these tests compare outputs,
    not accuracy, and its head+tail truncation is the one the binary model lacks."""
    import config
    import saving
    import tasks
    import training
    cfg = config.resolve(preprocessor=hub_models[0], encoder=hub_models[1], seq_length=24,
                         truncation="head+tail", precision="float32")
    task = tasks.Task("multiclass", ("negative", "neutral", "positive"))
    session = training.Session(cfg, log=lambda *args: None, task=task)
    record = {"config": dataclasses.asdict(cfg), "task": {"kind": task.kind, "label_names": list(task.label_names)}}
    return saving.save(session.exported, str(tmp_path_factory.mktemp("multiclass") / "model"), record)


@pytest.fixture(scope="module")
def exports(binary_dir, multiclass_dir, tmp_path_factory):
    """{name: (model dir, core-ops export dir, export.py's result)} for both classifiers."""
    root = tmp_path_factory.mktemp("exports")
    result = {}
    for name, model_dir in (("binary", binary_dir), ("multiclass", multiclass_dir)):
        out = str(root / name)
        result[name] = (model_dir, out, export.main(["--model-dir", model_dir, "--out", out,
                                                      "--format", "core-ops"]))
    return result


def predicted(model_dir, texts, capsys):
    """predict.py's probabilities for texts, in float32 as the saved graphs run by default."""
    results = predict.main(["--model-dir", model_dir, "--format", "jsonl", "--precision", "float32", *texts])
    capsys.readouterr()
    return np.array(results)


def full_model_scores(model_dir, texts):
    """The full model's token ids for texts and its probabilities for them, via classify_tokens."""
    import inference
    import saving
    from runtime import tf
    model, record = saving.load(model_dir)
    tokens = {key: value.numpy() for key, value in model.preprocess(tf.constant(texts)).items()}
    probabilities = inference.task_of_record(record).probabilities(model.classify_tokens(tokens).numpy())
    return tokens, probabilities


def test_probabilities_in_the_graph_match_the_tasks():
    import saving
    import tasks
    rng = np.random.default_rng(0)
    for task in (tasks.Task("binary", ("neg", "pos")), tasks.Task("multiclass", ("a", "b", "c")),
                 tasks.Task("multilabel", ("a", "b", "c"))):
        logits = rng.normal(0, 3, (7, task.units)).astype(np.float32)
        np.testing.assert_allclose(saving.probabilities_tensor(task.kind, logits).numpy(),
                                   task.probabilities(logits), atol=1e-6)


def test_serving_signature_scores_as_predict_does(binary_dir, multiclass_dir, capsys):
    from runtime import tf
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


def test_core_ops_export_scores_like_the_full_model_without_tf_text(exports, tmp_path):
    job = {"exports": {}, "ops_of": {}}
    expected = {}
    for name, (model_dir, out, result) in exports.items():
        assert result["format"] == "core-ops" and result["task"]["kind"] == name
        assert {"saved_model.pb", "vocab.txt", "tokenizer.json", "labels.json", "labels.txt",
                "client_example.py"} <= set(os.listdir(out))
        tokens, expected[name] = full_model_scores(model_dir, TEXTS + [LONG_TEXT])
        job["exports"][name] = {"dir": out, "tokens": {key: value.tolist() for key, value in tokens.items()}}
        job["ops_of"][f"{name} export"] = out
    job["ops_of"]["full model"] = exports["binary"][0]
    with open(tmp_path / "job.json", "w") as f:
        json.dump(job, f)
    environment = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    checked = run_quietly([sys.executable, "-c", CORE_ONLY_CHECK, str(tmp_path / "job.json")], cwd=tmp_path,
                          env=environment)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["tensorflow_text_imported"] is False
    for name in exports:
        np.testing.assert_allclose(result["scores"][name], expected[name], atol=1e-5)
        assert result["outside_core"][f"{name} export"] == [] and result["op_count"][f"{name} export"] > 20
    # The check can fail: the full model's graph holds TF Text ops that core TensorFlow lacks.
    assert {"CaseFoldUTF8", "WordpieceTokenizeWithOffsets"} <= set(result["outside_core"]["full model"])


def load_client(out):
    spec = importlib.util.spec_from_file_location(f"client_{os.path.basename(out)}",
                                                  os.path.join(out, "client_example.py"))
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


def test_client_example_tokenizes_and_scores_as_the_model_does(exports, capsys):
    texts = TEXTS + [LONG_TEXT, LONG_TEXT.upper(), "great " * 30 + "awful " * 30]
    for name, (model_dir, out, result) in exports.items():
        assert result["tokenizer"]["truncation"] == {"binary": "head", "multiclass": "head+tail"}[name]
        assert result["tokenizer"]["lower_case"] is True
        client = load_client(out)
        tokens, _ = full_model_scores(model_dir, texts)
        made = client.Tokenizer.of_export(out)(texts)
        for key, value in tokens.items():
            np.testing.assert_array_equal(made[key], value, err_msg=f"{name} {key}")
        results = client.main(["--export-dir", out, *texts])
        scores = [row["score"] for row in results] if name == "binary" else [
            list(row["probabilities"].values()) for row in results]
        np.testing.assert_allclose(scores, predicted(model_dir, texts, capsys), atol=2e-6)  # printed to 6 places
        client.main(["--export-dir", out, "--request", "great film", "awful"])
        request = json.loads(capsys.readouterr().out)
        assert request["signature_name"] == "serving_default" and len(request["instances"]) == 2
        assert set(request["instances"][0]) == {"input_word_ids", "input_mask", "input_type_ids"}


def test_client_truncates_as_the_suite_does(hub_models):
    """Each truncation, not only the two the exported models use, against tokenization.TextToTokens."""
    import export_client
    import tokenization
    from runtime import tf
    preprocessor = tf.saved_model.load(hub_models[0])
    vocab = os.path.join(hub_models[0], "assets", "vocab.txt")
    texts = [LONG_TEXT, "great " * 5 + "the movie " * 20 + "awful !", "short and sweet", ""]
    for seq_length in (16, 25):
        for truncation in ("head", "tail", "head+tail"):
            suite = tokenization.TextToTokens(preprocessor, seq_length, truncation)(tf.constant(texts))
            client = export_client.Tokenizer(vocab, True, seq_length, truncation,
                                             round((seq_length - 2) * tokenization.HEAD_SHARE), 2, 3)(texts)
            for key in tokenization.TOKEN_KEYS:
                np.testing.assert_array_equal(client[key], suite[key].numpy(), err_msg=f"{truncation} {key}")


def test_tokenizer_settings_are_found_not_trusted(multiclass_dir):
    """A run record that names the wrong truncation still gives the settings that reproduce the model."""
    import exporting
    import saving
    model, record = saving.load(multiclass_dir)
    record = {**record, "config": {**record["config"], "truncation": "head"}}
    settings, vocab_file = exporting.tokenizer_settings(model, multiclass_dir, record)
    assert settings["truncation"] == "head+tail" and settings["seq_length"] == 24
    assert os.path.basename(vocab_file) == "vocab.txt"


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
