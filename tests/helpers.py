"""What the test modules share: paths, the quick training flags, and checks every tier uses."""
import dataclasses
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A quick, offline training run on the tiny models: seconds, not hours.
QUICK = ["--recipe", "official", "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-3",
         "--seq-length", "64", "--checkpoint-every", "0", "--precision", "float32"]


def flag(flags, name):
    """The value given for name in a list of command-line flags."""
    return flags[flags.index(name) + 1]


def fails_with(argv_main, argv, capsys, *needles):
    """Run a script's main as the shell would; assert exit 2 and a one-line error naming the fix."""
    from tfhub_classifier import cli
    code = cli.run(argv_main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def unloadable_model_dir(folder):
    """A folder that passes cli.require_model_dir, for tests that stub out loading the model."""
    from tfhub_classifier import cli
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / cli.RUN_RECORD).write_text("{}")
    return str(folder)


class KilledAfterEpoch(Exception):
    """What a kill right after an epoch's checkpoint looks like to the test that caused it."""


def add_callback(monkeypatch, callback):
    """Make training's fit run callback last, after the suite's own (until monkeypatch.undo())."""
    from tfhub_classifier.training import trainer
    real_callbacks = trainer.Session.callbacks
    monkeypatch.setattr(trainer.Session, "callbacks",
                        lambda session, *args: real_callbacks(session, *args) + [callback])


def interrupted_after_first_epoch(monkeypatch, argv):
    """Run train.py's argv until its first epoch's checkpoint, as a kill there would leave it."""
    import train
    from tfhub_classifier.runtime import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KilledAfterEpoch
    add_callback(monkeypatch, Kill())
    with pytest.raises(KilledAfterEpoch):
        train.main(argv)
    monkeypatch.undo()


def untrained_classifier(directory, preprocessor, encoder, task, truncation, precision="float32", seq_length=24):
    """A classifier saved as train.py saves it, untrained: these tests compare outputs, not accuracy."""
    import config
    from tfhub_classifier import runtime
    from tfhub_classifier.model import saving
    from tfhub_classifier.training import trainer
    cfg = config.resolve(preprocessor=preprocessor, encoder=encoder, seq_length=seq_length, truncation=truncation,
                         precision=precision)
    session = trainer.Session(cfg, log=lambda *args: None, task=task)
    record = {"config": dataclasses.asdict(cfg), "task": {"kind": task.kind, "label_names": list(task.label_names)}}
    try:
        return saving.save(session.exported, str(directory / "model"), record)
    finally:
        runtime.set_precision("float32")  # process-wide: not for the rest of the test that made it


def assert_predict_scores_are_the_saved_models(model_dir, texts):
    """predict.py's scores for texts (binary) are what the saved model's serving_default signature gives."""
    import numpy as np

    import predict
    from tfhub_classifier.runtime import tf
    scores = predict.main(["--model-dir", model_dir, "--precision", "float32", *texts])
    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    expected = signature(text=tf.constant(list(texts)))["probabilities"].numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def assert_evaluate_agrees_with_the_run(model_dir, record, precision="float32"):
    """evaluate.py, rescoring the saved model, finds the test metrics train.py recorded."""
    import pytest

    import evaluate
    evaluation = evaluate.main(["--model-dir", model_dir, "--precision", precision])
    for name in ("accuracy", "subset_accuracy"):
        if name in record["test_metrics"]:
            assert evaluation[name] == pytest.approx(record["test_metrics"][name]), name
    assert evaluation["loss"] == pytest.approx(record["test_metrics"]["loss"], abs=1e-3)


def disk_full_save(obj, path, *args, **kwargs):
    """tf.saved_model.save on a full disk: half a saved_model.pb, then ENOSPC."""
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"half")
    raise OSError(28, "No space left on device")
