"""The saved classifier: what is exported, and how it is written atomically and read back."""
import json
import os
import shutil

from tfhub_classifier import cli, files, runtime, tasks
from tfhub_classifier.data import imdb, tokenization
from tfhub_classifier.runtime import keras, tf

RUN_RECORD = cli.RUN_RECORD


SERVING_SIGNATURE = "serving_default"  # the signature TF Serving and saved_model_cli run by default


def probabilities_tensor(kind, logits):
    """tasks.Task.probabilities as graph ops, for saved signatures: binary: the sigmoid of the one
    logit, [batch]; multi-class: softmax, [batch, labels]; multi-label: a sigmoid per label."""
    logits = tf.cast(logits, tf.float32)
    if kind == "binary":
        return tf.sigmoid(tf.reshape(logits, [-1]))
    return tf.nn.softmax(logits, axis=-1) if kind == "multiclass" else tf.sigmoid(logits)


class ExportedClassifier(tf.Module):
    """What is saved: raw strings in, logits out, plus the two halves for fast batch scoring, and
    the task with its label names, so a saved model says what its outputs mean. Its `serve`
    is the serving_default signature: texts in, probabilities and label names out."""

    def __init__(self, text_to_tokens, token_classifier, task):
        super().__init__()
        self.text_to_tokens = text_to_tokens
        self._kind = task.kind  # fixes the probabilities' graph when `serve` is traced
        self.task_kind = tf.Variable(task.kind, trainable=False, name="task_kind")
        self.label_names = tf.Variable(list(task.label_names), trainable=False, name="label_names")
        # Set after training by --calibrate and --threshold-metric; 1 and 0.5 leave the model as trained.
        self.temperature = tf.Variable(1.0, trainable=False, name="temperature")
        self.threshold = tf.Variable(tf.fill([task.units], 0.5), trainable=False, name="threshold")
        # A new, uncompiled model over the same layers, so the optimizer is not saved with it.
        self.token_classifier = keras.Model(token_classifier.inputs, token_classifier.outputs)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def preprocess(self, texts):
        return self.text_to_tokens(texts)

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(self, tokens):
        """Logits divided by the fitted temperature, so every consumer of the saved model (scoring,
        serving, the core-ops export) gets calibrated probabilities."""
        logits = tf.cast(self.token_classifier(tokens, training=False), tf.float32)
        return logits / self.temperature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        return self.classify_tokens(tokenization.trim_padding(self.preprocess(texts)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        probabilities = probabilities_tensor(self._kind, self(text))
        # One row of names per text, so TF Serving's row format ("instances") accepts the outputs.
        names = tf.tile(self.label_names[None, :], [tf.shape(text)[0], 1])
        return {"probabilities": probabilities, "label_names": names}


def serving_signatures(exported):
    """The signatures to save: a new classifier's `serve`; a reloaded one keeps what it was saved with."""
    if isinstance(exported, ExportedClassifier):
        return {SERVING_SIGNATURE: exported.serve}
    saved = getattr(exported, "signatures", {})
    return {SERVING_SIGNATURE: saved[SERVING_SIGNATURE]} if SERVING_SIGNATURE in saved else None


def _swap_into_place(staging, target):
    """Replace target by staging with two renames; a crash between them is undone by recover()."""
    previous = cli.previous_model_dir(target)
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(target):
        os.rename(target, previous)
    os.rename(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def recover_interrupted_save(model_dir):
    """If a save was killed between its two renames, put the previous model back."""
    previous = cli.previous_model_dir(model_dir)
    if not os.path.exists(model_dir) and os.path.isfile(os.path.join(previous, "saved_model.pb")):
        os.rename(previous, model_dir)


def save(exported, model_dir, record, extra_files=None):
    """Write the SavedModel, with its serving_default signature, and its run record to a staging
    folder beside model_dir and swap it into place only when complete, so a failed save never
    costs the old model."""
    model_dir = os.path.abspath(model_dir)
    recover_interrupted_save(model_dir)
    with files.staging_folder(model_dir, "saving", private=True) as staging:
        # No optimizer (the tutorial's include_optimizer=False).
        tf.saved_model.save(exported, staging, signatures=serving_signatures(exported))
        with open(os.path.join(staging, RUN_RECORD), "w") as f:
            json.dump(record, f, indent=2)
        for name, source in (extra_files or {}).items():
            shutil.copy(source, os.path.join(staging, name))
        _swap_into_place(staging, model_dir)
    return model_dir


def load(model_dir):
    """The saved classifier and its run record; ValueError if model_dir isn't one."""
    recover_interrupted_save(model_dir)
    cli.require_model_dir(model_dir)
    record_path = os.path.join(model_dir, RUN_RECORD)
    try:
        with open(record_path) as f:
            record = json.load(f)
        model = tf.saved_model.load(model_dir)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise ValueError(f"{model_dir} could not be loaded ({str(error).splitlines()[0][:200]}); "
                         "retrain it with train.py") from None
    if not all(hasattr(model, name) for name in ("preprocess", "classify_tokens")):
        raise ValueError(f"{model_dir} is a SavedModel, but not a classifier saved by train.py; "
                         "point --model-dir at one")
    return model, record


def load_model(model_dir, precision):
    """Set the precision rewrite, then load; returns (model, run record, precision in force)."""
    precision = runtime.set_precision(precision)
    model, record = load(model_dir)
    return model, record, precision


def temperature_of_record(record):
    """The temperature the saved model divides its logits by (1.0: not calibrated)."""
    return float((record.get("calibration") or {}).get("temperature", 1.0))


def threshold_of_record(record):
    """The threshold(s) chosen at training (--threshold-metric), else 0.5: a float, or a list per label."""
    return record.get("threshold", 0.5)


def threshold_in_use(given, record):
    """--threshold if given, else the saved model's own."""
    return given if given is not None else threshold_of_record(record)


def task_of_record(record):
    """The Task a saved model was trained for (a record without one: IMDB's neg/pos)."""
    saved = record.get("task") or {"kind": "binary", "label_names": list(imdb.CLASS_NAMES)}
    return tasks.Task(saved["kind"], tuple(saved["label_names"]))
