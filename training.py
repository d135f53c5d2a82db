"""Fine-tuning, end to end: data, model, fit, test, save, reload. train.py is a thin shell over this."""
import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np

import classifier
import config
import imdb
import reporting
import runtime
from runtime import keras, tf

WINDOW_BATCHES = 16  # reviews are sorted by length within this many batches, then padded per batch


def _examples(split):
    """(text, label) pairs, the texts made valid UTF-8 for the tokenizer."""
    return tf.data.Dataset.from_tensor_slices(([classifier.sanitize(t) for t in split.texts], split.labels))


def token_dataset(split, text_to_tokens, batch_size, shuffle_seed=None):
    """(tokens, label) batches: tokenized once in a parallel map and cached as ids; within each
    window of batches, sorted by length so each batch is padded only to its longest review."""
    dataset = (_examples(split).batch(256)
               .map(lambda texts, labels: (text_to_tokens(texts), labels),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .unbatch().cache())
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)

    def sorted_batches(tokens, labels):
        order = tf.argsort(tf.reduce_sum(tokens["input_mask"], axis=1), stable=True)
        window = tf.data.Dataset.from_tensor_slices(
            ({key: tf.gather(value, order) for key, value in tokens.items()}, tf.gather(labels, order)))
        return window.batch(batch_size).map(lambda t, y: (classifier.trim_padding(t), y))

    dataset = dataset.batch(batch_size * WINDOW_BATCHES).flat_map(sorted_batches)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(WINDOW_BATCHES, seed=shuffle_seed)  # so lengths don't rise within a window
        dataset = dataset.repeat()  # fit counts steps per epoch; each pass reshuffles
    return dataset.prefetch(tf.data.AUTOTUNE)


def text_dataset(split, batch_size, shuffle_seed=None):
    """The tutorial pipeline: raw-string batches, cached and prefetched."""
    dataset = _examples(split).cache()
    if shuffle_seed is None:
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE)  # fit counts steps per epoch


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first NaN or infinite loss and remember where, so the run can fail clearly."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


def _record(cfg, splits, history, metrics, best_epoch, seconds):
    return {
        "config": dataclasses.asdict(cfg),
        "encoder": cfg.encoder_handle(),
        "preprocessor": cfg.preprocessor_handle(),
        "versions": runtime.package_versions(),
        "split_sizes": {name: len(split) for name, split in splits.items()},
        "history": history,
        "best_epoch": best_epoch,
        "test_metrics": metrics,
        "training_seconds": round(seconds, 1),
    }


class Session:
    """Everything one training run builds, so tests and benchmarks can reach each part."""

    def __init__(self, cfg, log=print):
        self.cfg = cfg
        keras.utils.set_random_seed(cfg.seed)  # the head's initial weights and dropout repeat run to run
        self.precision = runtime.set_precision(cfg.precision)
        runtime.check_devices(cfg.require_gpu, log)
        self.strategy = runtime.make_strategy(cfg.strategy)
        self.global_batch_size = cfg.batch_size * self.strategy.num_replicas_in_sync
        preprocessor = classifier.load_hub_model(cfg.preprocessor_handle(), "--preprocessor", log)
        with self.strategy.scope():
            encoder = classifier.load_hub_model(cfg.encoder_handle(), "--encoder", log)
        longest = classifier.max_seq_length(encoder)
        if cfg.seq_length > longest:
            raise ValueError(f"Cannot use --seq-length {cfg.seq_length} because the BERT model was only "
                             f"trained up to sequence length {longest}; use --seq-length {longest} or less")
        self.text_to_tokens = classifier.TextToTokens(preprocessor, cfg.seq_length, cfg.truncation)
        with self.strategy.scope():
            self.token_model = classifier.build_token_classifier(encoder, cfg.dropout, cfg.pooling)
            self.text_model = classifier.build_text_classifier(self.text_to_tokens, self.token_model)
        self.exported = classifier.ExportedClassifier(self.text_to_tokens, self.token_model)

    def datasets(self, train, validation):
        if self.cfg.pipeline == "tutorial":
            return (text_dataset(train, self.global_batch_size, self.cfg.seed),
                    text_dataset(validation, self.global_batch_size))
        return (token_dataset(train, self.text_to_tokens, self.global_batch_size, self.cfg.seed),
                token_dataset(validation, self.text_to_tokens, self.global_batch_size))

    def compile(self, steps_per_epoch):
        cfg = self.cfg
        if cfg.jit_compile and cfg.pipeline == "tutorial":
            raise ValueError("--jit-compile can't compile the tutorial pipeline's string ops; "
                             "use --pipeline fast")
        model = self.text_model if cfg.pipeline == "tutorial" else self.token_model
        with self.strategy.scope():
            model.compile(optimizer=classifier.make_optimizer(cfg, steps_per_epoch * cfg.epochs),
                          loss=keras.losses.BinaryCrossentropy(from_logits=True),
                          metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],  # on logits
                          jit_compile=cfg.jit_compile)
        return model

    def callbacks(self, backup_dir, log_dir):
        cfg = self.cfg
        callbacks = [keras.callbacks.BackupAndRestore(
            backup_dir, save_freq=cfg.checkpoint_every or "epoch", delete_checkpoint=True),
            keras.callbacks.CSVLogger(os.path.join(log_dir, "log.csv"), append=True)]
        if cfg.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True))
        if cfg.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, "tensorboard")))
        return callbacks


def run(cfg, log=print, splits=None):
    """Train, test, save, reload and compare; returns the run record. `splits` (train,
    validation, test) replaces the IMDB splits cfg names, for benchmarks' fixed subsets."""
    started = time.time()
    work_dir = _prepare_work_dir(cfg, log)  # fails now, not hours later, if model_dir can't be written
    train, validation, test = splits or imdb.load_splits(cfg)
    log(f"IMDB: {len(train):,} training, {len(validation):,} validation, {len(test):,} test reviews")
    session = Session(cfg, log)
    train_ds, validation_ds = session.datasets(train, validation)
    steps_per_epoch = math.ceil(len(train) / session.global_batch_size)
    model = session.compile(steps_per_epoch)

    # Checkpoints and logs live beside the model dir until the run succeeds, so a killed run
    # resumes from them and the previous model stays untouched.
    non_finite = StopOnNonFiniteLoss()
    callbacks = session.callbacks(os.path.join(work_dir, "backup"), work_dir) + [non_finite]
    fit = model.fit(train_ds, validation_data=validation_ds, epochs=cfg.epochs,
                    steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2 if os.environ.get("CI") else 1)
    if non_finite.bad_step is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise ValueError(f"training diverged: the loss became NaN or infinite at step {non_finite.bad_step}; "
                         f"lower --learning-rate (now {cfg.learning_rate}). No model was saved"
                         + (f"; the one in {cfg.model_dir} is unchanged" if os.path.exists(cfg.model_dir) else ""))
    history = _history_so_far(work_dir, fit.history)
    best_epoch = _best_epoch(cfg, history)

    log("Scoring the test set ...")
    test_logits = classifier.logits_of(session.exported, test.texts, cfg.eval_batch_size)
    metrics = reporting.binary_metrics(test.labels, test_logits)
    log(f"Test loss: {metrics['loss']:.4f}  accuracy: {metrics['accuracy']:.4f}")

    name = os.path.basename(os.path.abspath(cfg.model_dir))
    history_plot = reporting.plot_history(history, os.path.join(cfg.plots_dir, f"{name}_history.png"),
                                          best_epoch)
    log(f"History plot: {history_plot}")
    record = _record(cfg, {"train": train, "validation": validation, "test": test}, history, metrics,
                     best_epoch, time.time() - started)
    record["precision"] = session.precision
    record["optimizer_steps"] = int(model.optimizer.iterations.numpy())
    classifier.save(session.exported, cfg.model_dir, record,
                    {"history.json": _write_json(os.path.join(work_dir, "history.json"), history),
                     "metrics.json": _write_json(os.path.join(work_dir, "metrics.json"), metrics),
                     "log.csv": os.path.join(work_dir, "log.csv")})
    if cfg.tensorboard:
        shutil.copytree(os.path.join(work_dir, "tensorboard"), os.path.join(cfg.model_dir, "tensorboard"))
    shutil.rmtree(work_dir, ignore_errors=True)
    log(f"Saved model: {cfg.model_dir}")

    record["examples"] = compare_with_reloaded(session.exported, cfg.model_dir, log)
    return record


def _prepare_work_dir(cfg, log):
    """The folder for checkpoints and logs; a leftover from a killed run with the same
    settings is resumed, one with other settings is discarded."""
    work_dir = os.path.abspath(cfg.model_dir).rstrip("/") + ".training"
    settings = dataclasses.asdict(cfg)
    settings_path = os.path.join(work_dir, "config.json")
    if os.path.isdir(work_dir):
        try:
            with open(settings_path) as f:
                same = json.load(f) == settings
        except (OSError, ValueError):
            same = False
        if same:
            log(f"Resuming the interrupted run from its checkpoint in {work_dir}")
        else:
            log(f"Discarding {work_dir}: it holds an interrupted run with other settings")
            shutil.rmtree(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    _write_json(settings_path, settings)
    return work_dir


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
    return path


def _history_so_far(work_dir, history):
    """The whole history, including epochs a resumed run finished before it was killed."""
    path = os.path.join(work_dir, "log.csv")
    if not os.path.isfile(path):
        return {k: [float(x) for x in v] for k, v in history.items()}
    rows = np.genfromtxt(path, delimiter=",", names=True, ndmin=1)
    by_epoch = {}
    for row in rows:  # a resumed epoch appears twice: keep its last row
        by_epoch[int(row["epoch"])] = row
    ordered = [by_epoch[e] for e in sorted(by_epoch)]
    return {name: [float(r[name]) for r in ordered] for name in rows.dtype.names if name != "epoch"}


def _best_epoch(cfg, history):
    """The 1-based epoch whose weights are kept: the lowest val loss under early stopping, else the last."""
    if cfg.early_stopping_patience and history.get("val_loss"):
        return int(np.argmin(history["val_loss"])) + 1
    return len(history["loss"])


def compare_with_reloaded(exported, model_dir, log=print):
    """Score the tutorial's sentences with the in-memory and the reloaded model, side by side."""
    reloaded, _ = classifier.load(model_dir)
    sentences = tf.constant(config.EXAMPLE_SENTENCES)
    in_memory = classifier.sigmoid(exported(sentences).numpy().reshape(-1))
    from_disk = classifier.sigmoid(reloaded(sentences).numpy().reshape(-1))
    log("Results from the model in memory:")
    for line in reporting.format_scores(config.EXAMPLE_SENTENCES, in_memory):
        log(line)
    log("Results from the saved model:")
    for line in reporting.format_scores(config.EXAMPLE_SENTENCES, from_disk):
        log(line)
    difference = float(np.max(np.abs(in_memory - from_disk)))
    if difference > 1e-5:
        raise RuntimeError(f"the reloaded model scores differently (max difference {difference:.2e})")
    log(f"In-memory and reloaded scores agree (max difference {difference:.1e}).")
    return {"sentences": list(config.EXAMPLE_SENTENCES), "in_memory": in_memory.tolist(),
            "reloaded": from_disk.tolist()}
