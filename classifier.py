"""The classifier: text -> BERT tokens -> encoder -> logit, built, trained, saved and reloaded here.

Training works on token ids (tokenized in tf.data, padded per batch); the saved model
wraps preprocessor + encoder + head, so it takes raw strings like the tutorial's.
"""
import hashlib
import itertools
import json
import os
import shutil
import tempfile

import numpy as np

import cli
import config
from runtime import hub, keras, tf

TOKEN_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
PAD_MULTIPLE = 16  # batches are padded to a multiple of this, which bounds how often graphs retrace
RUN_RECORD = cli.RUN_RECORD
HEAD_SHARE = 128 / 510  # Sun et al. (2019): the first 128 and last 382 of 510 review tokens


# ---------------------------------------------------------------- TF-Hub models

def _hub_cache_entry(handle):
    """The folder tensorflow_hub caches a URL handle in (a sha1 of the handle)."""
    return os.path.join(os.environ["TFHUB_CACHE_DIR"], hashlib.sha1(handle.encode("utf8")).hexdigest())


def load_hub_model(handle, flag, log=print):
    """hub.load(handle), with one-line errors that say what to do."""
    is_url = "://" in handle and not handle.startswith("file://")
    if not is_url:
        path = handle[len("file://"):] if handle.startswith("file://") else handle
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{flag} {handle} is neither a known URL nor a SavedModel directory "
                             "(no saved_model.pb in it); pass a TF-Hub/Kaggle handle or a local model dir")
        handle = path
    else:
        cached = _hub_cache_entry(handle)
        if os.path.isdir(cached) and not os.path.isfile(os.path.join(cached, "saved_model.pb")):
            log(f"The TF-Hub cache entry {cached} for {handle} is incomplete (no saved_model.pb); "
                "removing it and downloading again.")
            shutil.rmtree(cached, ignore_errors=True)
            for stale in (cached + ".descriptor.txt", cached + ".lock"):
                if os.path.exists(stale):
                    os.remove(stale)
    try:
        return hub.load(handle)
    except Exception as error:  # hub raises many types for a network failure
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not load {flag} {handle} ({reason[:200]}); this machine may be offline: "
                         f"download the model elsewhere and pass {flag} /path/to/saved_model_dir, or set "
                         "TFHUB_CACHE_DIR to a cache that holds it") from None


def max_seq_length(encoder):
    """Positions the encoder was pre-trained for (its position-embedding table), 512 if unknown."""
    for variable in encoder.variables:
        if "position_embedding" in variable.name and len(variable.shape) == 2:
            return int(variable.shape[0])
    return 512


# ---------------------------------------------------------------- text -> tokens

class TextToTokens(tf.Module):
    """Strings -> BERT inputs of seq_length, keeping the head, tail or head+tail of long texts,
    via the preprocessor's tokenize + bert_pack_inputs (TF-Hub's way for other lengths)."""

    def __init__(self, preprocessor, seq_length, truncation):
        super().__init__()
        self.preprocessor = preprocessor
        self.seq_length = seq_length
        self.truncation = truncation

    def _keep(self, lengths):
        """Start/limit ranges of the tokens to keep, per review."""
        budget = self.seq_length - 2  # [CLS] and [SEP]
        if self.truncation == "head":
            return [(tf.zeros_like(lengths), tf.minimum(lengths, budget))]
        if self.truncation == "tail":
            return [(tf.maximum(lengths - budget, 0), lengths)]
        head = tf.minimum(lengths, int(round(budget * HEAD_SHARE)))
        tail = tf.minimum(lengths - head, budget - head)
        return [(tf.zeros_like(lengths), head), (lengths - tail, lengths)]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        tokens = self.preprocessor.tokenize(texts).merge_dims(-2, -1)  # [batch, (word pieces)]
        lengths = tokens.row_lengths()
        keep = tf.concat([tf.ragged.range(start, limit) for start, limit in self._keep(lengths)], axis=1)
        kept = tf.gather(tokens, keep, batch_dims=1)
        # bert_pack_inputs takes [batch, (words), (pieces)]: make each kept piece a word.
        words = kept.with_flat_values(tf.RaggedTensor.from_row_lengths(
            kept.flat_values, tf.ones_like(kept.flat_values, dtype=kept.row_splits.dtype)))
        packed = self.preprocessor.bert_pack_inputs([words], tf.constant(self.seq_length, tf.int32))
        return {key: tf.cast(packed[key], tf.int32) for key in TOKEN_KEYS}


class TextToTokensLayer(keras.layers.Layer):
    """TextToTokens as a Keras layer, for the tutorial pipeline's string-input model."""

    def __init__(self, text_to_tokens, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.text_to_tokens = text_to_tokens

    def call(self, texts):
        return self.text_to_tokens(tf.reshape(texts, [-1]))


def trim_padding(tokens, multiple=PAD_MULTIPLE):
    """Cut a padded batch to its longest review, rounded up to a multiple (never beyond its width)."""
    longest = tf.reduce_max(tf.reduce_sum(tokens["input_mask"], axis=1))
    width = tf.shape(tokens["input_mask"])[1]
    keep = tf.minimum(width, (longest + multiple - 1) // multiple * multiple)
    return {key: value[:, :keep] for key, value in tokens.items()}


# ---------------------------------------------------------------- the model

class MaskedMean(keras.layers.Layer):
    """Mean of the token vectors under the mask: uses every token, not only [CLS]."""

    def call(self, sequence, mask):
        mask = tf.cast(mask, sequence.dtype)[:, :, None]
        return tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def build_token_classifier(encoder, dropout, pooling):
    """BERT token ids -> encoder -> pooled vector -> Dropout -> Dense(1) logit (Functional API)."""
    inputs = {key: keras.Input(shape=(None,), dtype=tf.int32, name=key) for key in TOKEN_KEYS}
    outputs = hub.KerasLayer(encoder, trainable=True, name="BERT_encoder")(inputs)
    if pooling == "pooled":
        net = outputs["pooled_output"]
    else:
        net = MaskedMean(name="masked_mean")(outputs["sequence_output"], inputs["input_mask"])
    net = keras.layers.Dropout(dropout, name="dropout")(net)
    logit = keras.layers.Dense(1, name="classifier")(net)
    return keras.Model(inputs, logit, name="bert_token_classifier")


def build_text_classifier(text_to_tokens, token_classifier):
    """Raw string -> tokens -> the token classifier: the tutorial's model shape."""
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    tokens = TextToTokensLayer(text_to_tokens, name="preprocessing")(text)
    return keras.Model(text, token_classifier(tokens), name="bert_text_classifier")


class WarmUpLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to the peak, then linear decay to 0: BERT's schedule."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.decay = keras.optimizers.schedules.PolynomialDecay(
            peak, max(total_steps - warmup_steps, 1), end_learning_rate=0.0, power=1.0)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        return tf.where(step < self.warmup_steps, warm, self.decay(step - self.warmup_steps))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


NO_DECAY_NAMES = ["layer_norm", "LayerNorm", "bias"]  # BERT excludes LayerNorm and bias from decay


def make_optimizer(cfg, total_steps):
    """AdamW as cfg.optimizer says, with tf-keras' own optimizer and schedules."""
    if cfg.schedule == "constant":
        learning_rate = cfg.learning_rate
    else:
        learning_rate = WarmUpLinearDecay(cfg.learning_rate, int(cfg.warmup_fraction * total_steps),
                                          total_steps)
    clipping = {"global_clipnorm": cfg.clip_norm} if cfg.clip_norm else {}
    if cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay,
                                           epsilon=cfg.epsilon, **clipping)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
        return optimizer
    if cfg.schedule != "constant":
        raise ValueError(f"--optimizer {cfg.optimizer} decays weights by a fixed amount per step, as "
                         "the tutorial does, which needs --schedule constant")
    if cfg.optimizer == "tutorial-adamw":
        # tfa decays every variable by weight_decay * w per step; tf-keras by rate * weight_decay * w,
        # so dividing by the (constant) rate gives tfa's semantics with tf-keras' optimizer.
        return keras.optimizers.AdamW(learning_rate=learning_rate,
                                      weight_decay=cfg.weight_decay / cfg.learning_rate,
                                      epsilon=cfg.epsilon, **clipping)
    try:
        import tensorflow_addons as tfa
    except ImportError:
        raise ValueError("--optimizer tfa needs tensorflow-addons, which only runs on TensorFlow 2.15: "
                         "in a Python 3.9-3.11 venv, `pip install -r requirements-tfa.txt` (see README), "
                         "or use --optimizer tutorial-adamw for the same semantics") from None
    return tfa.optimizers.AdamW(weight_decay=lambda: cfg.weight_decay, learning_rate=learning_rate,
                                epsilon=cfg.epsilon, **clipping)


# ---------------------------------------------------------------- the saved model

class ExportedClassifier(tf.Module):
    """What is saved: raw strings in, logits out, plus the two halves for fast batch scoring."""

    def __init__(self, text_to_tokens, token_classifier):
        super().__init__()
        self.text_to_tokens = text_to_tokens
        # A new, uncompiled model over the same layers, so the optimizer is not saved with it.
        self.token_classifier = keras.Model(token_classifier.inputs, token_classifier.outputs)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def preprocess(self, texts):
        return self.text_to_tokens(texts)

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in TOKEN_KEYS}])
    def classify_tokens(self, tokens):
        return self.token_classifier(tokens, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        return self.classify_tokens(trim_padding(self.preprocess(texts)))


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


# ---------------------------------------------------------------- scoring many texts

def score_texts(model, texts, batch_size, window_batches=16):
    """Logits for texts, in their order, in one streaming pass.

    Texts are tokenized in a parallel tf.data map; within each window of batches they are
    sorted by length so each batch is padded only to its longest review, then put back in
    order. `model` is an ExportedClassifier or its reloaded SavedModel.
    """
    texts = iter(texts)
    while True:
        window = [sanitize(text) for text in itertools.islice(texts, batch_size * window_batches)]
        if not window:
            return
        if len(window) <= batch_size:  # one batch: no pipeline to set up, for low latency
            batches = [model.preprocess(tf.constant(window))]
        else:
            batches = list(tf.data.Dataset.from_tensor_slices(window).batch(batch_size)
                           .map(lambda texts: model.preprocess(texts), num_parallel_calls=tf.data.AUTOTUNE))
        tokens = {key: np.concatenate([batch[key].numpy() for batch in batches]) for key in TOKEN_KEYS}
        lengths = tokens["input_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        logits = np.empty(len(order), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = min(tokens["input_mask"].shape[1],
                        -(-int(lengths[rows].max()) // PAD_MULTIPLE) * PAD_MULTIPLE)
            batch = {key: tf.constant(value[rows, :width]) for key, value in tokens.items()}
            logits[rows] = model.classify_tokens(batch).numpy().reshape(-1)
        yield logits


def sanitize(text):
    """Bytes or str -> valid UTF-8 bytes, invalid sequences replaced, so the tokenizer never fails."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text.encode("utf-8", errors="replace")


def logits_of(model, texts, batch_size):
    """All logits of score_texts as one array."""
    parts = list(score_texts(model, texts, batch_size))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
