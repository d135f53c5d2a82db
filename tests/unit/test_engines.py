"""--engine: the saved classifier's token half in TFLite scores as the SavedModel does, through the right
width, converted once and kept beside the model for that model only."""
import dataclasses
import os
from unittest import mock

import helpers
import numpy as np
import pytest

import config
import predict
from tfhub_classifier import runtime, tasks

LABELS = {"binary": ("neg", "pos"), "multiclass": ("anger", "joy", "fear"), "multilabel": ("plot", "acting", "music")}
# Lengths that fall in several of the model's width signatures (seq_length 100: 32, 48, 64, 96, 100).
TEXTS = ["great", "The movie was great! I loved it, wonderfully acted.", "terrible , boring and dull " * 6,
         "the movie " * 30, " ".join(["the"] * 10 + ["great"] + ["movie"] * 200 + ["awful"]), ""]


@pytest.fixture(scope="module")
def saved(hub_models, tmp_path_factory):
    """{kind: model dir} of untrained classifiers of 100 tokens (head+tail)."""
    return {kind: helpers.untrained_classifier(tmp_path_factory.mktemp(kind), *hub_models, tasks.Task(kind, labels),
                                               "head+tail", seq_length=100) for kind, labels in LABELS.items()}


def logits(model, texts, batch_size=2):
    from tfhub_classifier.inference import scoring
    return scoring.logits_of(model, texts, batch_size)


def test_widths_cover_every_length_up_to_the_window():
    from tfhub_classifier.export import tflite
    assert tflite.widths(512) == [32, 48, 64, 96, 128, 192, 256, 384, 512]
    assert tflite.widths(100) == [32, 48, 64, 96, 100]
    assert tflite.widths(24) == [24]


@pytest.mark.parametrize("kind", LABELS)
def test_tflite_scores_as_the_saved_model_in_float32(saved, kind):
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    model, _ = saving.load(saved[kind])
    engine, _, precision = engines.load(saved[kind], "float32", "tflite", log=lambda line: None)
    assert isinstance(engine, engines.TfliteClassifier) and precision == "float32 (TFLite)"
    assert engine.widths == [32, 48, 64, 96, 100]
    expected = logits(model, TEXTS)
    np.testing.assert_allclose(logits(engine, TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(logits(engine, TEXTS, batch_size=64), expected, atol=1e-4)  # all at one width
    int8, _, _ = engines.load(saved[kind], "float32", "tflite-int8", log=lambda line: None)
    assert not np.array_equal(logits(int8, TEXTS), expected)  # its own weights, not float32's
    np.testing.assert_allclose(logits(int8, TEXTS), expected, atol=0.05)


@pytest.mark.parametrize("kind", LABELS)
def test_the_fused_engine_is_the_default_and_scores_as_the_saved_graph(saved, kind):
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    assert config.resolve().engine == "auto"
    model, _ = saving.load(saved[kind])
    engine, _, precision = engines.load(saved[kind], "float32")
    assert isinstance(engine, engines.FusedClassifier) and precision == "float32"
    assert engines.in_use(engine, "fused") == "fused"
    # Per layer of the tiny encoder: attention's four EinsumDense projections and the feed-forward block's
    # two Dense layers, one with GELU. (Its layer normalization is tf-keras's FusedBatchNormV3 form: not rewritten.)
    assert (engine.fused.dense_layers, engine.fused.gelus, engine.fused.layer_norms) == (12, 2, 0)
    np.testing.assert_allclose(logits(engine, TEXTS), logits(model, TEXTS), atol=1e-5)
    np.testing.assert_allclose(logits(engine, TEXTS, batch_size=64), logits(model, TEXTS), atol=1e-5)


needs_onednn = pytest.mark.skipif(not runtime.onednn_enabled(),
                                  reason="oneDNN's int8 products need its kernels, off here")


@needs_onednn
@pytest.mark.parametrize("kind", LABELS)
def test_the_fused_int8_engine_scores_near_the_saved_graph(saved, kind):
    """--engine fused-int8: the tiny encoder's dense layers in int8 but the feed-forward block's second
    (it reads GELU's output), each weight column on its own scale, the activations smoothed."""
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    engine, _, precision = engines.load(saved[kind], "float32", "fused-int8", log=lambda line: None)
    assert isinstance(engine, engines.FusedClassifier) and precision == "int8 dense layers (oneDNN)"
    assert engines.in_use(engine, "fused-int8") == "fused-int8"
    # Of 12 dense layers (per encoder layer: attention's four, the feed-forward block's two), 10 in int8.
    assert (engine.fused.dense_layers, engine.fused.int8_layers) == (12, 10)
    # Attention's queries, keys and values share one quantization of their input: 3 a layer, not 5; each
    # input's channels evened out by SmoothQuant scales measured on the calibration texts.
    nodes = engine.fused.function.graph.as_graph_def().node
    assert sum(node.op == "QuantizeV2" for node in nodes) == 6
    assert sum(node.name.endswith("/int8/smoothed") for node in nodes) == 6
    # Each product has a weight range a column, and runs its GELU itself where one follows.
    products = [node for node in nodes if node.op == "_QuantizedMatMul"]
    assert len(products) == 10 and sum(b"GeluExact" in node.attr["fused_ops"].list.s for node in products) == 2
    model, _ = saving.load(saved[kind])
    expected = logits(model, TEXTS)
    scale = np.abs(expected).max()
    assert np.abs(logits(engine, TEXTS) - expected).max() > 1e-4 * scale  # int8 products, not float32's rounding
    np.testing.assert_allclose(logits(engine, TEXTS), expected, atol=0.02 * scale)
    # Its activations' ranges were measured at load, so a text scores the same alone or in any batch.
    np.testing.assert_allclose(logits(engine, TEXTS, batch_size=64), logits(engine, TEXTS, batch_size=1),
                               atol=1e-5 * scale)


@needs_onednn
def test_an_int8_form_that_scores_too_far_off_falls_back_to_float32_saying_so(saved, monkeypatch):
    from tfhub_classifier.inference import engines
    monkeypatch.setattr(engines, "INT8_TOLERANCE", 0.0)
    lines = []
    engine, _, precision = engines.load(saved["binary"], "float32", "fused-int8", log=lines.append)
    assert engines.in_use(engine, "fused-int8") == "fused" and precision == "float32"
    assert not engine.fused.int8_layers
    assert any("int8 form scores too far off" in line for line in lines), lines


@pytest.mark.parametrize("cause", ["onednn-off", pytest.param("no-gelu", marks=needs_onednn),
                                   pytest.param("no-layer-after-gelu", marks=needs_onednn)])
def test_where_int8_cannot_run_as_measured_it_scores_in_float32_saying_why(saved, monkeypatch, cause):
    """Without oneDNN's kernels there are no int8 products; without a GELU it finds, or a layer reading
    one, the engine can't tell which layers to keep in float32 (every layer in int8 missed the accuracy
    target)."""
    from tfhub_classifier import runtime
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import fusion, quantization
    if cause == "onednn-off":
        monkeypatch.setattr(runtime, "onednn_enabled", lambda: False)
    elif cause == "no-gelu":
        monkeypatch.setattr(fusion, "_gelu", lambda graph, start: (None, None))
    else:
        monkeypatch.setattr(quantization, "_reshaped_from", lambda graph, x: x)
    lines = []
    engine, _, precision = engines.load(saved["binary"], "float32", "fused-int8", log=lines.append)
    assert engines.in_use(engine, "fused-int8") in ("fused", "savedmodel") and precision == "float32"
    why = {"onednn-off": "TF_ENABLE_ONEDNN_OPTS=0", "no-gelu": "no GELU",
           "no-layer-after-gelu": "no layer reading a GELU's output"}[cause]
    assert [line for line in lines if "rather than int8" in line and why in line], lines


@needs_onednn
def test_an_int8_form_that_cannot_be_built_falls_back_to_float32_saying_so(saved, monkeypatch):
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import quantization

    def fails(*args, **kwargs):
        raise RuntimeError("no int8 kernels")
    monkeypatch.setattr(quantization, "quantize_dense", fails)
    lines = []
    engine, _, precision = engines.load(saved["binary"], "float32", "fused-int8", log=lines.append)
    assert engines.in_use(engine, "fused-int8") in ("fused", "savedmodel") and precision == "float32"
    assert any("int8 form could not be built" in line and "no int8 kernels" in line for line in lines), lines


def test_the_engine_in_use_says_how_attention_runs(saved, attention_kernel, monkeypatch):
    """evaluation.json and /healthz say how the fused graph ran attention, which sets its speed."""
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import attention_chunks, saving
    from tfhub_classifier.model import attention_kernel as kernel_rewrite
    model, _ = saving.load(saved["binary"])

    def fused(**options):
        return engines.attention_in_use(engines.FusedClassifier(model, log=lambda line: None, **options))

    assert engines.attention_in_use(model) is None  # the graph as saved
    assert fused(kernel=False) == "chunks"
    assert fused() == ("kernel" if attention_kernel else "chunks")
    if attention_kernel:
        find = kernel_rewrite.find
        monkeypatch.setattr(kernel_rewrite, "find", lambda graph: find(graph)[:1])  # the kernel takes one of two
        assert fused() == "kernel for 1, chunks for 1"
        with monkeypatch.context() as patch:  # and the chunks can't reproduce the other: it runs as saved
            patch.setattr(attention_chunks, "_check", mock.Mock(side_effect=ValueError("differs")))
            assert fused() == "kernel for 1, as saved for 1"
    with monkeypatch.context() as patch:  # recognized, but the chunks reproduce none
        patch.setattr(attention_chunks, "_check", mock.Mock(side_effect=ValueError("differs")))
        assert fused(kernel=False) == "as saved"
    monkeypatch.setattr(attention_chunks, "find", lambda graph: [])  # no attention recognized
    assert fused() == "as saved"


def test_the_fused_engine_fuses_a_tf_hub_encoder_with_berts_layer_norms(hub_models, tmp_path):
    """BERT's epsilon (1e-12) makes tf-keras write layer normalization as tf.nn.moments: reloaded from a
    TF-Hub SavedModel, every one becomes _MklLayerNorm, and the scores stay the saved graph's."""
    import tiny_hub

    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    encoder = tiny_hub.save_encoder(str(tmp_path / "encoder"), layer_norm_epsilon=1e-12)
    model_dir = helpers.untrained_classifier(tmp_path, hub_models[0], encoder, tasks.Task("binary", LABELS["binary"]),
                                             "head+tail", seq_length=100)
    engine, _, _ = engines.load(model_dir, "float32")
    assert (engine.fused.dense_layers, engine.fused.gelus, engine.fused.layer_norms) == (12, 2, 5)
    np.testing.assert_allclose(logits(engine, TEXTS), logits(saving.load(model_dir)[0], TEXTS), atol=1e-5)


def test_a_fused_graph_within_the_tolerance_is_kept(saved, monkeypatch):
    from tfhub_classifier.inference import engines
    fused_logits = engines.FusedClassifier.classify_tokens
    monkeypatch.setattr(engines.FusedClassifier, "classify_tokens",
                        lambda self, tokens: fused_logits(self, tokens) + 1e-6)
    lines = []
    model, _, _ = engines.load(saved["binary"], "float32", log=lines.append)
    assert isinstance(model, engines.FusedClassifier) and lines == []


def test_auto_builds_the_fused_graph_except_for_a_few_texts_on_the_command_line(saved, tmp_path, monkeypatch):
    """Building the fused graph takes seconds: predict.py's command-line texts are scored sooner without it."""
    from tfhub_classifier.inference import engines
    loaded = []
    load = engines.load
    monkeypatch.setattr(engines, "load", lambda *args, **kwargs: loaded.append(args[2]) or load(*args, **kwargs))
    texts = tmp_path / "texts.txt"
    texts.write_text("great\nawful\n")
    predict.main(["--model-dir", saved["binary"], "--precision", "float32", "great"])
    predict.main(["--model-dir", saved["binary"], "--precision", "float32", "--file", str(texts)])
    predict.main(["--model-dir", saved["binary"], "--precision", "float32", "--engine", "fused", "great"])
    assert loaded == ["savedmodel", "auto", "fused"]
    model, _, _ = load(saved["binary"], "float32", "auto")
    assert isinstance(model, engines.FusedClassifier) and engines.in_use(model, "auto") == "fused"


@pytest.mark.parametrize("failure", ["raises", "fuses nothing", "scores differently", "a GPU"])
def test_a_graph_the_rewrite_cannot_serve_is_scored_as_saved_with_a_note(saved, monkeypatch, failure):
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import fusion, saving
    from tfhub_classifier.runtime import tf
    from tfhub_classifier.serving.servable import Servable
    note = {"raises": "its fused form could not be built (ValueError: an op the rewrite does not know)",
            "fuses nothing": "none of its layers has a form --engine fused rewrites",
            "scores differently": "its fused form scores differently (logits 0.01 apart on a probe text)",
            "a GPU": "--engine fused rewrites it for oneDNN on CPUs, and a GPU will run it"}[failure]
    if failure == "raises":
        def fails(function, **options):
            raise ValueError("an op the rewrite does not know\nsecond line")
        monkeypatch.setattr(fusion, "fuse", fails)
    elif failure == "fuses nothing":
        fuse = fusion.fuse
        monkeypatch.setattr(fusion, "fuse", lambda function, **options: dataclasses.replace(
            fuse(function, **options), dense_layers=0, gelus=0, layer_norms=0))
    elif failure == "scores differently":  # the load-time check compares the two graphs' real logits
        fused_logits = engines.FusedClassifier.classify_tokens
        monkeypatch.setattr(engines.FusedClassifier, "classify_tokens", lambda self, tokens: fused_logits(
            self, tokens) + 0.01)
    else:
        devices = tf.config.list_physical_devices
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: ["GPU:0"] if kind == "GPU" else devices(kind))
    lines = []
    model, _, _ = engines.load(saved["binary"], "float32", log=lines.append)
    assert lines == ["note: scoring with the graph as saved: " + note]
    assert not isinstance(model, engines.FusedClassifier) and engines.in_use(model, "fused") == "savedmodel"
    np.testing.assert_array_equal(logits(model, TEXTS), logits(saving.load(saved["binary"])[0], TEXTS))
    if failure == "raises":
        servable = Servable.load(config.resolve(model_dir=saved["binary"]), log=lines.append)
        assert servable.engine == "savedmodel" and servable.attention is None  # what /healthz and evaluation.json say


def test_a_batch_runs_at_the_smallest_width_that_holds_it(saved):
    from tfhub_classifier.inference import engines
    engine, _, _ = engines.load(saved["binary"], "float32", "tflite", log=lambda line: None)
    ran = []
    for width, runner in list(engine.runners.items()):
        engine.runners[width] = lambda runner=runner, width=width, **tokens: (
            ran.append((width, tokens["input_word_ids"].shape)) or runner(**tokens))
    ids = np.ones((3, 40), dtype=np.int32)
    engine.classify_tokens({"input_word_ids": ids, "input_mask": ids, "input_type_ids": 0 * ids})
    assert ran == [(48, (3, 48))]
    with pytest.raises(ValueError, match="longer than the model's widest input"):
        wide = np.ones((1, 101), dtype=np.int32)
        engine.classify_tokens({"input_word_ids": wide, "input_mask": wide, "input_type_ids": 0 * wide})


def test_the_conversion_is_kept_for_that_model_and_tensorflow_only(hub_models, tmp_path, monkeypatch):
    from tfhub_classifier.inference import engines
    from tfhub_classifier.model import saving
    model_dir = helpers.untrained_classifier(tmp_path / "a", *hub_models, tasks.Task("binary", LABELS["binary"]),
                                             "head")
    said = []
    first, _, _ = engines.load(model_dir, "float32", "tflite", log=said.append)
    kept = os.listdir(os.path.join(model_dir, engines.CACHE_FOLDER))
    assert len(said) == 1 and said[0].startswith("Converting") and len(kept) == 1 and kept[0].startswith("tflite-")
    said.clear()
    again, _, _ = engines.load(model_dir, "float32", "tflite", log=said.append)
    assert said == []  # read, not converted
    np.testing.assert_array_equal(logits(again, TEXTS), logits(first, TEXTS))
    # Another model saved in the same folder (as a retraining does) gets its own conversion.
    other = helpers.untrained_classifier(tmp_path / "b", *hub_models, tasks.Task("binary", ("x", "y")), "head")
    os.rename(os.path.join(model_dir, engines.CACHE_FOLDER), os.path.join(other, engines.CACHE_FOLDER))
    replaced, _, _ = engines.load(other, "float32", "tflite", log=said.append)
    assert said and said[0].startswith("Converting")
    assert os.listdir(os.path.join(other, engines.CACHE_FOLDER)) == [  # the other save's conversion removed
        os.path.basename(engines.kept_path(other, "tflite", saving.load(other)[1]["config"]["seq_length"]))]
    np.testing.assert_allclose(logits(replaced, TEXTS), logits(saving.load(other)[0], TEXTS), atol=1e-4)
    # A damaged kept file is converted again; a killed write's leftover, once stale, is removed.
    folder = os.path.join(other, engines.CACHE_FOLDER)
    damaged = os.path.basename(engines.kept_path(other, "tflite", saving.load(other)[1]["config"]["seq_length"]))
    with open(os.path.join(folder, damaged), "r+b") as f:
        f.truncate(1000)
    leftover = os.path.join(folder, damaged + ".0123.partial")
    open(leftover, "wb").close()
    os.utime(leftover, (0, 0))
    said.clear()
    repaired, _, _ = engines.load(other, "float32", "tflite", log=said.append)
    assert said[0].startswith("note: ") and "converting again" in said[0] and said[1].startswith("Converting")
    np.testing.assert_allclose(logits(repaired, TEXTS), logits(replaced, TEXTS), atol=1e-6)
    assert not os.path.exists(leftover) and os.path.getsize(os.path.join(folder, damaged)) > 1000
    # Another TensorFlow would convert differently: its conversion is made anew, and kept in the old one's place.
    monkeypatch.setattr(engines.tf, "__version__", "0.0.other")
    said.clear()
    engines.load(other, "float32", "tflite", log=said.append)
    assert said and said[0].startswith("Converting") and os.listdir(folder) == [
        os.path.basename(engines.kept_path(other, "tflite", saving.load(other)[1]["config"]["seq_length"]))]
    assert damaged not in os.listdir(folder)


def test_a_model_folder_that_cannot_be_written_still_gets_its_engine(saved, monkeypatch):
    from tfhub_classifier import files
    from tfhub_classifier.inference import engines

    def refused(path, content):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(files, "write_bytes", refused)
    monkeypatch.setattr(engines, "fingerprint", lambda *_: "unkept")
    said = []
    engine, _, _ = engines.load(saved["binary"], "float32", "tflite", log=said.append)
    assert any("could not keep the converted model" in line and "Permission denied" in line for line in said)
    assert logits(engine, ["great"]).shape == (1,)


def test_predict_and_explain_through_an_engine(saved, capsys):
    """predict.py --engine tflite-int8 gives scores and occlusion weights near the SavedModel's float32 ones,
    over the same words."""
    import json
    expected = predict.main(["--model-dir", saved["multiclass"], "--precision", "float32", "--explain",
                             "--format", "jsonl", *TEXTS[:3]])
    lines = capsys.readouterr().out
    got = predict.main(["--model-dir", saved["multiclass"], "--engine", "tflite-int8", "--explain", "--format",
                        "jsonl", *TEXTS[:3]])
    out = capsys.readouterr()
    assert not np.array_equal(got, expected)
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert len(out.out.splitlines()) == len(lines.splitlines()) == 3
    for mine, theirs in zip(map(json.loads, out.out.splitlines()), map(json.loads, lines.splitlines())):
        assert mine["words"] == theirs["words"] and mine["offsets"] == theirs["offsets"]
        np.testing.assert_allclose(mine["weights"], theirs["weights"], atol=0.05)


@pytest.mark.parametrize("int8_engine", ["tflite-int8", "fused-int8"])
def test_flags_an_engine_would_ignore_are_refused(int8_engine):
    with pytest.raises(ValueError, match=f"--engine {int8_engine} takes no --precision float16: .*drop --precision"):
        config.resolve(engine=int8_engine, precision="float16").validate(config.PREDICT)
    assert config.resolve(engine=int8_engine, precision="auto").validate(config.PREDICT).engine == int8_engine
    with pytest.raises(ValueError, match=f"not --engine {int8_engine}'s int8 weights.*use --explain-method occlusion"):
        config.resolve(engine=int8_engine, explain_method="integrated-gradients").validate(config.PREDICT)
    for engine in ("auto", "fused", "savedmodel"):
        assert config.resolve(engine=engine, explain_method="integrated-gradients").validate(config.PREDICT)
        assert config.resolve(engine=engine, precision="auto").validate(config.PREDICT).engine == engine
    with pytest.raises(SystemExit):  # TFLite in float32, measured slower than the SavedModel: not offered
        predict.parse(["--engine", "tflite", "great"])


def test_the_server_scores_through_the_engine(saved):
    """serve.py --engine tflite-int8: the Servable answers with the engine's scores and says which it runs."""
    from tfhub_classifier.inference import engines, scoring
    from tfhub_classifier.serving.servable import Servable
    cfg = config.resolve(model_dir=saved["binary"], engine="tflite-int8")
    servable = Servable.load(cfg, log=lambda line: None)
    assert servable.precision == "int8 weights (TFLite)" and isinstance(servable.model, engines.TfliteClassifier)
    assert servable.engine == "tflite-int8" and servable.attention is None
    from tfhub_classifier.model import saving
    served = [result["probabilities"] for result in servable.score(TEXTS)]
    float32 = servable.task.probabilities(scoring.logits_of(saving.load(saved["binary"])[0], TEXTS, 8))
    assert served != pytest.approx(float32, abs=1e-7)  # int8 weights' own scores, not the SavedModel's ...
    assert served == pytest.approx(float32, abs=0.05)  # ... close to them


@needs_onednn
def test_the_server_and_predict_score_with_int8_products_and_say_so(saved):
    from tfhub_classifier.serving.servable import Servable
    servable = Servable.load(config.resolve(model_dir=saved["binary"], engine="fused-int8"), log=lambda line: None)
    assert (servable.engine, servable.precision) == ("fused-int8", "int8 dense layers (oneDNN)")
    assert servable.attention is not None  # the fused graph's attention, as for --engine fused
    expected = predict.main(["--model-dir", saved["multiclass"], "--precision", "float32", *TEXTS])
    got = predict.main(["--model-dir", saved["multiclass"], "--engine", "fused-int8", *TEXTS])
    assert np.abs(np.subtract(got, expected)).max() > 1e-4  # int8 products' scores, not float32's rounding
    np.testing.assert_allclose(got, expected, atol=0.05)
