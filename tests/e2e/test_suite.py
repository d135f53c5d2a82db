"""train -> evaluate -> predict as a user runs them, offline on tiny models and data."""
import json
import os

import numpy as np
import pytest
from helpers import disk_full_save

import config
import evaluate
import predict
from tfhub_classifier.data import imdb


def test_model_learns_the_task(trained):
    _, record = trained
    assert record["test_metrics"]["accuracy"] >= 0.85
    assert record["history"]["loss"][-1] < record["history"]["loss"][0]


def test_encoder_weights_change_in_training(trained, hub_models):
    import tensorflow as tf
    flags, _ = trained
    before = {v.name: v.numpy() for v in tf.saved_model.load(hub_models[1]).variables}
    after = {v.name: v.numpy() for v in tf.saved_model.load(flags["--model-dir"]).token_classifier.variables}
    shared = [name for name in before if name in after and "word_embeddings" in name]
    assert shared, "the saved model should hold the encoder's variables"
    assert all(not np.allclose(before[name], after[name]) for name in shared)


def test_saved_model_reloads_and_scores_raw_strings_as_in_memory(trained):
    import tensorflow as tf
    flags, record = trained
    examples = record["examples"]
    assert examples["sentences"] == list(config.EXAMPLE_SENTENCES)
    np.testing.assert_allclose(examples["in_memory"], examples["reloaded"], atol=1e-6)
    reloaded = tf.saved_model.load(flags["--model-dir"])  # the tutorial's way to reload
    logits = reloaded(tf.constant(list(config.EXAMPLE_SENTENCES))).numpy().reshape(-1)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), examples["reloaded"], atol=1e-6)


def test_saved_model_has_no_optimizer_state(trained):
    import tensorflow as tf
    flags, _ = trained
    names = [name for name, _ in tf.train.list_variables(
        os.path.join(flags["--model-dir"], "variables", "variables"))]
    assert any("token_classifier" in name for name in names)
    assert not any("optimizer" in name.lower() for name in names)


def test_history_json_and_png_plot(trained):
    flags, record = trained
    with open(os.path.join(flags["--model-dir"], "history.json")) as f:
        history = json.load(f)
    assert len(history["loss"]) == len(history["val_loss"]) == 4
    plot = os.path.join(flags["--plots-dir"], "imdb_bert_history.png")
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(plot).shape
    assert height > 100 and width > 100


def test_unsup_is_removed_and_splits_are_the_tutorials(trained):
    flags, _ = trained
    root = os.path.join(flags["--data-dir"], "aclImdb")
    assert not os.path.exists(os.path.join(root, "train", "unsup"))
    cfg = config.resolve(data_dir=flags["--data-dir"], dataset_url=flags["--dataset-url"])
    train_split, validation, test = imdb.load_splits(cfg)
    assert not set(train_split.paths) & set(validation.paths)
    assert set(np.unique(train_split.labels)) == {0, 1}
    assert len(validation) == int(0.2 * (len(train_split) + len(validation)))
    # The same reviews the tutorial's text_dataset_from_directory puts in each subset.
    from tfhub_classifier import runtime
    for subset, split in (("training", train_split), ("validation", validation)):
        reference = runtime.keras.utils.text_dataset_from_directory(
            os.path.join(root, "train"), validation_split=0.2, subset=subset, seed=42)
        assert reference.class_names == ["neg", "pos"]
        texts = [t.decode() for batch, _ in reference for t in batch.numpy()]
        assert sorted(texts) == sorted(split.texts)


def test_second_run_does_not_download_again(trained, monkeypatch):
    flags, _ = trained
    from tfhub_classifier import runtime

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")
    monkeypatch.setattr(runtime.keras.utils, "get_file", no_download)
    assert imdb.prepare(flags["--data-dir"], flags["--dataset-url"]).endswith("aclImdb")


def test_evaluate_reports_the_same_test_accuracy(trained):
    flags, record = trained
    metrics = evaluate.main(["--model-dir", flags["--model-dir"], "--data-dir", flags["--data-dir"],
                             "--plots-dir", flags["--plots-dir"], "--precision", "float32"])
    assert metrics["accuracy"] == pytest.approx(record["test_metrics"]["accuracy"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(record["test_metrics"]["loss"], abs=1e-4)


@pytest.mark.parametrize("engine", ["savedmodel", "fused-int8"])
def test_evaluate_scores_through_the_engine_it_is_given(trained, engine, capsys):
    from tfhub_classifier import runtime
    from tfhub_classifier.inference import engines
    if engine == "fused-int8" and not runtime.onednn_enabled():
        pytest.skip("fused-int8 runs oneDNN's int8 products, off in this process")
    flags, record = trained
    metrics = evaluate.main(["--model-dir", flags["--model-dir"], "--data-dir", flags["--data-dir"],
                             "--plots-dir", flags["--plots-dir"], "--engine", engine,
                             *(["--precision", "float32"] if engine == "savedmodel" else [])])
    said = capsys.readouterr()
    unbuilt = [line for line in (said.out + said.err).splitlines() if "int8 form could not be built" in line]
    if engine == "fused-int8" and metrics["engine"] != engine and unbuilt:
        pytest.skip(f"this TensorFlow cannot build the int8 products (the tensorflow-addons profile's): {unbuilt[0]}")
    assert metrics["engine"] == engine  # what ran: a fallback would name the float32 engine
    if engine == "savedmodel":  # the graph as trained, in float32: the fused graph's test figures to rounding
        assert metrics["precision_mode"] == "float32"
        assert metrics["attention"] is None  # the fused graph would say how it runs attention
        assert metrics["loss"] == pytest.approx(record["test_metrics"]["loss"], abs=1e-4)
    else:  # int8 dense layers: near the float32 figures, not equal to them
        assert metrics["precision_mode"] == engines.PRECISION["fused-int8"]
        assert metrics["loss"] == pytest.approx(record["test_metrics"]["loss"], abs=0.05)
        assert metrics["loss"] != pytest.approx(record["test_metrics"]["loss"], abs=1e-7)


def test_predict_prints_aligned_scores(trained, capsys):
    flags, record = trained
    scores = predict.main(["--model-dir", flags["--model-dir"], "--precision", "float32",
                           *config.EXAMPLE_SENTENCES])
    np.testing.assert_allclose(scores, record["examples"]["reloaded"], atol=1e-5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert len({line.index(": positive score:") for line in lines}) == 1  # aligned, naming the score's label
    assert lines[0].startswith("input: this is such an amazing movie!")


def test_failed_save_keeps_the_previous_model(trained, monkeypatch, tmp_path):
    import shutil

    import tensorflow as tf

    from tfhub_classifier.model import saving
    flags, _ = trained
    model_dir = tmp_path / "imdb_bert"
    shutil.copytree(flags["--model-dir"], model_dir)
    model, record = saving.load(str(model_dir))
    before = model(tf.constant(["great film"])).numpy()

    monkeypatch.setattr(tf.saved_model, "save", disk_full_save)
    with pytest.raises(OSError):
        saving.save(model, str(model_dir), record)
    reloaded, _ = saving.load(str(model_dir))
    np.testing.assert_array_equal(reloaded(tf.constant(["great film"])).numpy(), before)
    assert sorted(os.listdir(tmp_path)) == ["imdb_bert"]  # no half-written leftovers
