"""Issue 2: train -> evaluate -> predict as a user runs them, offline on tiny models and data."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import QUICK, ROOT

import config
import evaluate
import predict
import train
from tfhub_classifier import cli
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


def test_predict_prints_aligned_scores(trained, capsys):
    flags, record = trained
    scores = predict.main(["--model-dir", flags["--model-dir"], "--precision", "float32",
                           *config.EXAMPLE_SENTENCES])
    np.testing.assert_allclose(scores, record["examples"]["reloaded"], atol=1e-5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert len({line.index(": score:") for line in lines}) == 1  # aligned
    assert lines[0].startswith("input: this is such an amazing movie!")


# ---------------------------------------------------------------- bad input

def fails_with(argv_main, argv, capsys, *needles):
    """Run a script's main as the shell would; assert exit 2 and a one-line error naming the fix."""
    code = cli.run(argv_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def test_unknown_bert_model(capsys):
    fails_with(train.main, ["--bert-model", "bert_tiny_nonsense"], capsys, "--list-models")


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_zero_epochs_or_batch_size(flag, capsys):
    fails_with(train.main, [flag, "0"], capsys, flag, "at least 1")


def test_missing_model_dir(tmp_path, capsys):
    fails_with(predict.main, ["--model-dir", str(tmp_path / "none"), "hi"], capsys, "train.py")
    fails_with(evaluate.main, ["--model-dir", str(tmp_path / "none")], capsys, "train.py")


def test_model_dir_that_is_not_a_classifier(tmp_path, hub_models, capsys):
    fails_with(predict.main, ["--model-dir", str(tmp_path), "hi"], capsys, "not a classifier")
    # A SavedModel, but another kind of model (the encoder), with a run record faked beside it.
    import shutil
    other = tmp_path / "other"
    shutil.copytree(hub_models[1], other)
    (other / "run.json").write_text("{}")
    fails_with(predict.main, ["--model-dir", str(other), "hi"], capsys, "not a classifier")


def test_data_dir_without_imdb_layout(flags, tmp_path, capsys):
    (tmp_path / "data" / "aclImdb" / "train" / "pos").mkdir(parents=True)
    fails_with(train.main, flags + QUICK, capsys, "not an IMDB dataset", "--data-dir")


def test_unreachable_dataset_url(flags, tmp_path, capsys):
    flags[flags.index("--dataset-url") + 1] = "http://127.0.0.1:9/aclImdb_v1.tar.gz"
    fails_with(train.main, flags + QUICK, capsys, "offline", "--dataset-url file://")


def test_unreachable_hub_handle(flags, capsys):
    flags[flags.index("--encoder") + 1] = "http://127.0.0.1:9/models/bert/2"
    fails_with(train.main, flags + QUICK, capsys, "offline", "--encoder /path/to/saved_model_dir")


def test_error_is_one_line_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--model-dir",
                             str(tmp_path / "missing"), "great"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no model at --model-dir {tmp_path / 'missing'}; train one with `python train.py "
        f"--model-dir {tmp_path / 'missing'}` or point at an existing one"]


def test_help_shows_each_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--seed", "42"), ("--data-dir", "'data'"), ("--recipe", "'best'"),
                          ("--model-dir", "'models/imdb_bert'"), ("--plots-dir", "'plots'")):
        assert flag in out and f"(default: {default})" in out, flag
    # Each value once: the default (the best recipe), then what the other recipes change.
    assert "--epochs EPOCHS passes over the training data; early stopping usually ends sooner " \
           "(default: 4; --recipe official: 5, tutorial: 5)" in out
    assert "(default: 32; --recipe tutorial: 4)" in out  # batch size
    assert "(default: 5e-05; --recipe official: 3e-05, tutorial: 3e-05)" in out


def test_config_defaults_are_what_train_py_runs():
    """What Config() says is what `python train.py` gets: the default recipe changes nothing."""
    assert train.config.from_args(train.parse([])) == config.Config().validate()
    assert config.RECIPES[config.Config().recipe] == {}


def test_failed_save_keeps_the_previous_model(trained, monkeypatch, tmp_path):
    import shutil

    import tensorflow as tf

    from tfhub_classifier.model import saving
    flags, _ = trained
    model_dir = tmp_path / "imdb_bert"
    shutil.copytree(flags["--model-dir"], model_dir)
    model, record = saving.load(str(model_dir))
    before = model(tf.constant(["great film"])).numpy()

    def disk_full(obj, path, *args, **kwargs):
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(OSError):
        saving.save(model, str(model_dir), record)
    reloaded, _ = saving.load(str(model_dir))
    np.testing.assert_array_equal(reloaded(tf.constant(["great film"])).numpy(), before)
    assert sorted(os.listdir(tmp_path)) == ["imdb_bert"]  # no half-written leftovers
