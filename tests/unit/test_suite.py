"""Each script's one-line errors for bad flags, missing models and unreachable data, and its --help."""
import os
import subprocess
import sys

import pytest
from helpers import QUICK, ROOT, fails_with

import config
import evaluate
import predict
import train


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
