"""Faults provoked for real on trained models: kills, interrupted saves, divergence, bad input."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiny_hub
from helpers import QUICK, ROOT, assert_predict_scores_are_the_saved_models, fails_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import predict
import train
from tfhub_classifier.inference import prediction
from tfhub_classifier.model import saving

BINARY = saving.task_of_record({})  # models trained on IMDB
PYTHON_TRAIN = [sys.executable, os.path.join(ROOT, "train.py")]


def start(argv):
    return subprocess.Popen(PYTHON_TRAIN + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(process, ready, what, timeout=120):
    """SIGKILL the process as soon as ready() is true; fail if it ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}:\n{process.stdout.read()[-2000:]}"
        assert time.time() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_run_resumes_with_the_same_number_of_steps(flags, big_archive_url, tmp_path):
    flags[flags.index("--dataset-url") + 1] = big_archive_url
    argv = flags + QUICK + ["--epochs", "2", "--batch-size", "2", "--checkpoint-every", "25"]
    model_dir = flags[flags.index("--model-dir") + 1]
    backup = model_dir + ".training/backup"
    first = start(argv)
    kill_when(first, lambda: glob.glob(f"{backup}/**/checkpoint", recursive=True), "a checkpoint")
    assert not os.path.exists(model_dir)

    second = subprocess.run(PYTHON_TRAIN + argv, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming the interrupted run" in second.stdout
    record = saving.load(model_dir)[1]
    steps_per_epoch = -(-record["split_sizes"]["train"] // 2)
    assert record["optimizer_steps"] == 2 * steps_per_epoch  # as many as an uninterrupted run
    assert len(record["history"]["loss"]) == 2
    assert not os.path.exists(model_dir + ".training")
    assert_predict_scores_are_the_saved_models(model_dir, ["great film"])


def test_kill_during_save_keeps_the_previous_model(flags, trained, tmp_path):
    import tensorflow as tf
    model_dir = flags[flags.index("--model-dir") + 1]
    shutil.copytree(trained[0]["--model-dir"], model_dir)
    texts = tf.constant(["great film", "awful boring"])
    before = saving.load(model_dir)[0](texts).numpy()
    parent = os.path.dirname(model_dir)
    run = start(flags + QUICK + ["--epochs", "1"])
    kill_when(run, lambda: glob.glob(f"{parent}/.imdb_bert.saving-*/variables"), "the save")
    after = saving.load(model_dir)[0](texts).numpy()
    np.testing.assert_array_equal(after, before)


def test_interrupted_swap_is_recovered(trained, tmp_path):
    """A kill between the save's two renames leaves only model_dir.previous: it is put back."""
    model_dir = str(tmp_path / "imdb_bert")
    shutil.copytree(trained[0]["--model-dir"], model_dir + ".previous")
    assert saving.load(model_dir)[1]["config"]["seq_length"] == 64
    assert os.path.isdir(model_dir) and not os.path.exists(model_dir + ".previous")


def test_nan_loss_stops_training_and_keeps_the_old_model(flags, trained, capsys):
    model_dir = flags[flags.index("--model-dir") + 1]
    shutil.copytree(trained[0]["--model-dir"], model_dir)
    before = os.path.getmtime(os.path.join(model_dir, "saved_model.pb"))
    fails_with(train.main, flags + QUICK + ["--learning-rate", "1e9"], capsys, "NaN", "lower --learning-rate",
               "unchanged")
    assert os.path.getmtime(os.path.join(model_dir, "saved_model.pb")) == before
    saving.load(model_dir)


@pytest.mark.parametrize("text", ["", "   \t ", "x" * 1_000_000, b"caf\xe9 \xff\xfe great".decode("latin-1"),
                                  "great \x00 film", "\u202e\u0000\U0001F600 awful"])
def test_predict_scores_odd_texts(trained_model, text):
    """An odd text gets the score the saved model's own signature gives it, not an error."""
    import tensorflow as tf
    (_, score), = prediction.predict(trained_model, BINARY, [text], 16)
    direct = trained_model.signatures["serving_default"](text=tf.constant([text.encode("utf-8", "replace")]))
    assert score == pytest.approx(float(direct["probabilities"].numpy()[0]), abs=1e-6)


def test_predict_invalid_utf8_bytes(trained_model):
    """Bytes that are not UTF-8 are scored as their replacement-character decoding."""
    scores = [s for _, s in prediction.predict(trained_model, BINARY, [b"\xff\xfe\x80 great", b"awful"], 16)]
    decoded = [s for _, s in prediction.predict(trained_model, BINARY, ["\ufffd\ufffd\ufffd great", "awful"], 16)]
    assert scores == pytest.approx(decoded)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=3000) | st.binary(max_size=500), min_size=1, max_size=6))
def test_fuzz_predict_never_crashes(trained_model, texts):
    """Any texts and bytes are scored, in input order, each as it is scored alone."""
    results = list(prediction.predict(trained_model, BINARY, texts, 4))
    assert [t for t, _ in results] == texts  # input order kept
    alone = [next(prediction.predict(trained_model, BINARY, [text], 4))[1] for text in texts]
    assert [score for _, score in results] == pytest.approx(alone, abs=1e-6)


def test_binary_file_is_refused(trained, tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    fails_with(predict.main, ["--model-dir", trained[0]["--model-dir"], "--file", str(binary)], capsys,
               "looks binary", "one review per line")


def test_hundred_thousand_lines(trained, tmp_path, capsys):
    lines = tmp_path / "reviews.txt"
    lines.write_text("".join(f"{'great' if i % 2 else 'awful'} film number {i}\n" for i in range(100_000)))
    count = predict.main(["--model-dir", trained[0]["--model-dir"], "--file", str(lines), "--format", "csv",
                          "--batch-size", "512"])
    out = capsys.readouterr().out.splitlines()
    assert count == 100_000 and len(out) == 100_001
    assert out[1].startswith("awful film number 0,") and out[-1].startswith("great film number 99999,")


def test_training_on_a_review_that_is_not_utf8(flags, tmp_path):
    url = "file://" + tiny_hub.write_archive(str(tmp_path / "aclImdb_v1.tar.gz"), extra={
        "aclImdb/train/pos/999_9.txt": b"\xff\xfe great \x80\x81 wonderful", "aclImdb/test/neg/999_1.txt": b"\xc3"})
    flags[flags.index("--dataset-url") + 1] = url
    record = train.main(flags + QUICK + ["--epochs", "1"])
    assert record["split_sizes"]["test"] == 49


def test_threshold_out_of_range(trained, capsys):
    fails_with(predict.main, ["--model-dir", trained[0]["--model-dir"], "--threshold", "2", "x"], capsys,
               "--threshold")
