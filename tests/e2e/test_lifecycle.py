"""A finished run is never lost, a resumed run is exact, early stopping survives a resume."""
import dataclasses
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import (
    QUICK,
    ROOT,
    KilledAfterEpoch,
    add_callback,
    disk_full_save,
    flag,
    interrupted_after_first_epoch,
)

import config
import train
from tfhub_classifier.data import imdb
from tfhub_classifier.inference import scoring
from tfhub_classifier.model import saving
from tfhub_classifier.training import trainer

PROBE = ["great wonderful film", "awful boring mess", "a film", "great " * 30 + "awful"]


@pytest.fixture(autouse=True)
def no_op_determinism_leak():
    """--deterministic switches TensorFlow's op determinism on for the process; other tests don't want it."""
    yield
    from tensorflow.python.framework import config as tf_config

    from tfhub_classifier.runtime import keras
    tf_config.disable_op_determinism()
    keras.backend.experimental.disable_tf_random_generator()


@pytest.fixture
def fits(monkeypatch):
    """Counts trainer.fit calls and keeps the probe scores of the weights each fit left."""
    calls = []
    real_fit, real_logits_of = trainer.fit, scoring.logits_of

    def counting_fit(session, *args, **kwargs):
        summary = real_fit(session, *args, **kwargs)
        calls.append({"summary": summary, "probe": real_logits_of(session.exported, PROBE, 8)})
        return summary
    monkeypatch.setattr(trainer, "fit", counting_fit)
    return calls


def saved_probe(model_dir):
    return scoring.logits_of(saving.load(model_dir)[0], PROBE, 8)


def expected_steps(record, epochs, batch_size):
    return epochs * -(-record["split_sizes"]["train"] // batch_size)


@pytest.mark.parametrize("failure", ["plots dir unwritable after training", "error in the test pass",
                                     "disk full at save"])
def test_a_failure_after_fit_loses_no_training(flags, fits, monkeypatch, capsys, failure):
    from tfhub_classifier import cli
    from tfhub_classifier.inference import plots
    argv = flags + QUICK + ["--epochs", "2"]
    plots_dir = flag(flags, "--plots-dir")
    if failure == "error in the test pass":
        def out_of_memory(*args, **kwargs):
            import tensorflow as tf
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        monkeypatch.setattr(scoring, "logits_of", out_of_memory)
    elif failure == "disk full at save":
        import tensorflow as tf
        monkeypatch.setattr(tf.saved_model, "save", disk_full_save)
    else:
        real_plot = plots.plot_history

        def plots_dir_gone(history, path, best_epoch=None):
            shutil.rmtree(plots_dir)
            open(plots_dir, "w").close()  # a file where the folder was: nothing can be written there
            return real_plot(history, path, best_epoch)
        monkeypatch.setattr(plots, "plot_history", plots_dir_gone)
    assert cli.run(train.main, argv) == cli.EXIT_ERROR
    lines = capsys.readouterr().err.strip().splitlines()  # the test pass's progress bar may come first
    error = [line for line in lines if line.startswith("error")]
    assert len(error) == 1 and error[0] == lines[-1]
    assert failure != "error in the test pass" or "lower --eval-batch-size" in error[0]
    assert len(fits) == 1 and not os.path.exists(flag(flags, "--model-dir"))
    assert os.path.isfile(flag(flags, "--model-dir") + ".training/trained.json")  # the weights are kept
    assert not glob.glob(os.path.join(os.path.dirname(flag(flags, "--model-dir")), ".*saving-*"))
    trained = fits[0]

    monkeypatch.undo()
    if os.path.isfile(plots_dir):
        os.remove(plots_dir)
    rerun_fits = []
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: rerun_fits.append(1))
    capsys.readouterr()
    record = train.main(argv)
    assert rerun_fits == []  # not trained again
    assert "Training finished in an earlier attempt" in capsys.readouterr().out
    assert record["optimizer_steps"] == trained["summary"]["optimizer_steps"] == expected_steps(record, 2, 8)
    np.testing.assert_allclose(saved_probe(flag(flags, "--model-dir")), trained["probe"], atol=1e-5)
    assert not os.path.exists(flag(flags, "--model-dir") + ".training")


def test_sigkill_in_the_test_pass_loses_no_training(flags, tmp_path, capsys):
    argv = flags + QUICK + ["--epochs", "2"]
    model_dir = flag(flags, "--model-dir")
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        run = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "CI": "1", "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 300
        while "Scoring the test set" not in log_path.read_text():
            assert run.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert not os.path.exists(model_dir)

    # What the kept weights score, read straight from MODEL_DIR.training/ before the rerun.
    from tfhub_classifier.training import checkpoints
    cfg = config.from_args(train.parse(argv))
    session = trainer.Session(cfg, log=lambda *_: None)
    checkpoints.WorkDir(model_dir).restore_trained(session.token_model)
    kept = scoring.logits_of(session.exported, PROBE, 8)

    record = train.main(argv)
    assert "Training finished in an earlier attempt" in capsys.readouterr().out
    assert record["optimizer_steps"] == expected_steps(record, 2, 8)
    np.testing.assert_allclose(saved_probe(model_dir), kept, atol=1e-5)


def rising_validation(cfg):
    """IMDB splits whose validation set is the training set with every label flipped, so the
    validation loss rises as the model learns: early stopping keeps epoch 1."""
    train_split, _, test = imdb.load_splits(cfg)
    flipped = dataclasses.replace(train_split, labels=1 - train_split.labels)
    return train_split, flipped, test


@pytest.mark.parametrize("patience, killed_after", [(1, 1), (1, 2), (2, 2)])
def test_early_stopping_survives_a_resume(flags, monkeypatch, patience, killed_after):
    """With patience 2 and a kill after epoch 2, early stopping's wait counter is 1 at the checkpoint: a
    resume that forgot it would train 4 epochs instead of 3."""
    argv = flags + QUICK + ["--epochs", "4", "--early-stopping-patience", str(patience), "--deterministic"]
    cfg = config.from_args(train.parse(argv))
    uninterrupted = trainer.run(cfg, log=lambda *_: None, splits=rising_validation(cfg))
    assert len(uninterrupted["history"]["loss"]) == patience + 1  # it stopped early
    assert uninterrupted["best_epoch"] == 1
    weights = [v.numpy() for v in saving.load(cfg.model_dir)[0].token_classifier.variables]
    shutil.rmtree(cfg.model_dir)

    from tfhub_classifier.runtime import keras

    class Kill(keras.callbacks.Callback):  # a kill right after the epoch's checkpoint
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == killed_after:
                raise KilledAfterEpoch
    add_callback(monkeypatch, Kill())
    with pytest.raises(KilledAfterEpoch):
        trainer.run(cfg, log=lambda *_: None, splits=rising_validation(cfg))
    monkeypatch.undo()

    resumed = trainer.run(cfg, log=lambda *_: None, splits=rising_validation(cfg))
    assert resumed["history"]["loss"] == pytest.approx(uninterrupted["history"]["loss"])
    assert resumed["best_epoch"] == uninterrupted["best_epoch"] == 1
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"]
    for after, before in zip(saving.load(cfg.model_dir)[0].token_classifier.variables, weights):
        np.testing.assert_array_equal(after.numpy(), before)


def test_deterministic_runs_give_identical_weights(flags):
    from tensorflow.python.framework import config as tf_config
    argv = flags + QUICK + ["--epochs", "1", "--deterministic"]
    model_dir = flag(flags, "--model-dir")
    train.main(argv)
    assert tf_config.is_op_determinism_enabled()  # what --deterministic switches on
    first = [v.numpy() for v in saving.load(model_dir)[0].token_classifier.variables]
    train.main(argv)
    second = [v.numpy() for v in saving.load(model_dir)[0].token_classifier.variables]
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(flags, big_archive_url, capsys):
    flags[flags.index("--dataset-url") + 1] = big_archive_url
    argv = flags + QUICK + ["--epochs", "2", "--batch-size", "2", "--checkpoint-every", "10", "--deterministic"]
    model_dir = flag(flags, "--model-dir")
    run = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, "CI": "1"})
    deadline = time.time() + 300
    while not glob.glob(f"{model_dir}.training/backup/**/checkpoint", recursive=True):
        assert run.poll() is None and time.time() < deadline, run.stdout.read()[-3000:]
        time.sleep(0.005)
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=60)[0]  # a hang guard, not a timing: promptness is checked by step below
    assert run.returncode not in (0, -signal.SIGTERM), output[-3000:]
    last_line = output.strip().splitlines()[-1]
    assert "SIGTERM" in last_line and "checkpointed at step" in last_line and "again to resume" in last_line
    stopped_at = int(last_line.split("checkpointed at step ")[1].split()[0])

    import tensorflow as tf
    latest = tf.train.latest_checkpoint(f"{model_dir}.training/backup/chief")
    iterations = next(name for name, _ in tf.train.list_variables(latest)
                      if name.startswith("model/optimizer/") and "iter" in name)
    assert int(tf.train.load_checkpoint(latest).get_tensor(iterations)) == stopped_at

    resumed = train.main(argv)
    assert "Resuming the interrupted run" in capsys.readouterr().out
    resumed_weights = [v.numpy() for v in saving.load(model_dir)[0].token_classifier.variables]
    shutil.rmtree(model_dir)
    uninterrupted = train.main(argv)
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == expected_steps(resumed, 2, 2)
    # Sent just after the checkpoint at step 10: it stopped within a few steps, not at the end of the 160-step
    # epoch (320 training reviews in batches of 2); the next test pins the exact step.
    assert 10 <= stopped_at < 50 < resumed["optimizer_steps"] // 2
    for after, before in zip(resumed_weights, saving.load(model_dir)[0].token_classifier.variables):
        np.testing.assert_array_equal(after, before.numpy())


def test_sigterm_stops_at_the_end_of_the_step_it_arrives_in(flags, big_archive_url, monkeypatch):
    """Not at the next --checkpoint-every step nor at the epoch's end: the step after the signal's."""
    from tfhub_classifier.runtime import keras
    from tfhub_classifier.training import checkpoints
    flags[flags.index("--dataset-url") + 1] = big_archive_url
    argv = flags + QUICK + ["--epochs", "2", "--batch-size", "2", "--checkpoint-every", "50"]
    signalled_at = []

    class Signal(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 7 and not signalled_at:
                signalled_at.append(int(self.model.optimizer.iterations.numpy()))
                os.kill(os.getpid(), signal.SIGTERM)
    add_callback(monkeypatch, Signal())
    with pytest.raises(checkpoints.Stopped) as stopped:
        train.main(argv)
    assert "SIGTERM" in str(stopped.value)
    assert int(str(stopped.value).split("checkpointed at step ")[1].split()[0]) == signalled_at[0] + 1


def test_checkpoint_every_n_steps_also_checkpoints_each_epoch(flags, monkeypatch):
    """With --checkpoint-every larger than an epoch, a kill after epoch 1 still resumes at epoch 2."""
    from tfhub_classifier.training import checkpoints
    argv = flags + QUICK + ["--epochs", "2", "--checkpoint-every", "1000"]
    interrupted_after_first_epoch(monkeypatch, argv)
    work_dir = checkpoints.WorkDir(flag(flags, "--model-dir"))
    steps_per_epoch = 10  # 77 training reviews in batches of 8
    assert work_dir.resume_position(steps_per_epoch) == (1, 0, False)
    record = train.main(argv)
    assert record["optimizer_steps"] == 2 * steps_per_epoch and len(record["history"]["loss"]) == 2


def test_resume_ignores_settings_that_do_not_change_the_weights(flags, monkeypatch, capsys):
    argv = flags + QUICK + ["--epochs", "2"]
    interrupted_after_first_epoch(monkeypatch, argv)
    capsys.readouterr()
    record = train.main(argv + ["--eval-batch-size", "7", "--tensorboard", "--checkpoint-every", "3",
                                "--plots-dir", flag(flags, "--plots-dir") + "2"])
    out = capsys.readouterr().out
    assert re.search(r"Resuming the interrupted run from its checkpoint in \S+\.training \(epoch 2, step 1 of \d+\)",
                     out), out[-2000:]
    assert "Epoch 1/2" not in out and "Epoch 2/2" in out  # only the second epoch was trained
    assert record["optimizer_steps"] == 20 and len(record["history"]["loss"]) == 2


def test_resume_with_other_settings_stops_and_keeps_the_checkpoint(flags, monkeypatch, capsys):
    from tfhub_classifier import cli
    argv = flags + QUICK + ["--epochs", "2"]
    interrupted_after_first_epoch(monkeypatch, argv)
    work_dir = flag(flags, "--model-dir") + ".training"
    before = sorted(glob.glob(f"{work_dir}/**", recursive=True))
    capsys.readouterr()
    code = cli.run(train.main, argv + ["--learning-rate", "1e-3", "--seq-length", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert "--learning-rate 0.003 -> 0.001" in err[0] and "--seq-length 64 -> 32" in err[0]
    assert "--restart" in err[0]
    assert sorted(glob.glob(f"{work_dir}/**", recursive=True)) == before  # nothing thrown away

    record = train.main(argv + ["--learning-rate", "1e-3", "--restart"])
    assert "discarding the interrupted run" in capsys.readouterr().out
    assert record["optimizer_steps"] == 20 and record["config"]["learning_rate"] == 1e-3
