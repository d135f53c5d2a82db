"""The saved classifier: what is exported, and how it is written atomically and read back."""
import json
import os
import shutil
import tempfile

import cli
import tokenization
from runtime import keras, tf

RUN_RECORD = cli.RUN_RECORD


class ExportedClassifier(tf.Module):
    """What is saved: raw strings in, logits out, plus the two halves for fast batch scoring, and
    the task with its label names, so a saved model says what its outputs mean."""

    def __init__(self, text_to_tokens, token_classifier, task):
        super().__init__()
        self.text_to_tokens = text_to_tokens
        self.task_kind = tf.Variable(task.kind, trainable=False, name="task_kind")
        self.label_names = tf.Variable(list(task.label_names), trainable=False, name="label_names")
        # A new, uncompiled model over the same layers, so the optimizer is not saved with it.
        self.token_classifier = keras.Model(token_classifier.inputs, token_classifier.outputs)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def preprocess(self, texts):
        return self.text_to_tokens(texts)

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(self, tokens):
        return self.token_classifier(tokens, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        return self.classify_tokens(tokenization.trim_padding(self.preprocess(texts)))


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
    """Write the SavedModel and its run record to a temporary folder beside model_dir and
    rename it into place only when complete, so a failed save never costs the old model."""
    model_dir = os.path.abspath(model_dir)
    parent = os.path.dirname(model_dir)
    os.makedirs(parent, exist_ok=True)
    recover_interrupted_save(model_dir)
    staging_prefix = f".{os.path.basename(model_dir)}.saving-"
    cli.remove_leftovers(parent, staging_prefix)  # what a killed save left behind
    staging = tempfile.mkdtemp(prefix=staging_prefix, dir=parent)
    try:
        tf.saved_model.save(exported, staging)  # no optimizer: the tutorial's include_optimizer=False
        with open(os.path.join(staging, RUN_RECORD), "w") as f:
            json.dump(record, f, indent=2)
        for name, source in (extra_files or {}).items():
            shutil.copy(source, os.path.join(staging, name))
        _swap_into_place(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
