"""Fine-tuning, end to end: data, model, fit, test, save, reload. train.py is a thin shell over this."""
import dataclasses
import math
import os
import shutil
import tempfile
import time

import numpy as np

import config
from tfhub_classifier import files, runtime, tasks
from tfhub_classifier.data import imdb, tokenization, user_files
from tfhub_classifier.inference import calibration, engines, plots, prediction, scoring, thresholds
from tfhub_classifier.model import hub_models, modeling, saving
from tfhub_classifier.runtime import keras, tf
from tfhub_classifier.training import checkpoints, cluster, optimization


def _examples(split):
    """(text, label) pairs, the texts made valid UTF-8 for the tokenizer."""
    return tf.data.Dataset.from_tensor_slices(([tokenization.sanitize(t) for t in split.texts], split.labels))


def token_dataset(split, text_to_tokens, batch_size, shuffle_seed=None):
    """(tokens, label) batches: tokenized once in a parallel map and cached as ids, then batched
    by length (tokenization.length_sorted_batches), as scoring batches them."""
    dataset = tokenization.tokenized(_examples(split), text_to_tokens).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = tokenization.length_sorted_batches(dataset, batch_size)
    if shuffle_seed is not None:
        # Shuffle the batches too, so lengths don't rise within a window.
        dataset = dataset.shuffle(tokenization.WINDOW_BATCHES, seed=shuffle_seed)
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


class ValidationMacroF1(keras.callbacks.Callback):
    """Adds val_macro_f1 (as evaluate.py computes it) to each epoch's logs, for early stopping and the
    history; placed before the callbacks that read the logs."""

    def __init__(self, task, validation_batches):
        super().__init__()
        self.task, self.validation_batches = task, validation_batches

    def on_epoch_end(self, epoch, logs=None):
        labels = np.concatenate([labels.numpy() for _, labels in self.validation_batches])
        logits = self.model.predict(self.validation_batches, verbose=0)
        logits = logits.reshape(-1) if self.task.kind == "binary" else logits
        logs["val_macro_f1"] = self.task.report(labels, logits)["macro"]["f1"]


class Session:
    """Everything one training run builds, so tests and benchmarks can reach each part."""

    def __init__(self, cfg, log=print, task=None):
        self.cfg = cfg
        self.task = task or tasks.Task("binary", imdb.CLASS_NAMES)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()  # same ops, same order, same results
            # Dropout draws from a generator whose state is a variable, so checkpoints resume it too.
            keras.backend.experimental.enable_tf_random_generator()
        keras.utils.set_random_seed(cfg.seed)  # the head's initial weights and dropout repeat run to run
        self.precision = runtime.set_precision(cfg.precision)
        runtime.check_devices(cfg.require_gpu, log)
        self.strategy = runtime.make_strategy(cfg.strategy, cfg.collective_timeout_s)
        self.global_batch_size = cfg.batch_size * self.strategy.num_replicas_in_sync
        preprocessor = hub_models.load_hub_model(cfg.preprocessor_handle(), "--preprocessor", log)
        with self.strategy.scope():
            # Each variable takes its value from the chief here: a lost peer fails the load, and run() names it.
            encoder = hub_models.load_hub_model(cfg.encoder_handle(), "--encoder", log, passes=cluster.is_lost_peer)
        longest = hub_models.max_seq_length(encoder)
        if cfg.seq_length > longest:
            raise ValueError(f"Cannot use --seq-length {cfg.seq_length} because the BERT model was only "
                             f"trained up to sequence length {longest}; use --seq-length {longest} or less")
        self.text_to_tokens = tokenization.TextToTokens(preprocessor, cfg.seq_length, cfg.truncation)
        with self.strategy.scope():
            self.token_model = modeling.build_token_classifier(encoder, cfg.dropout, cfg.pooling, self.task.units)
            self.text_model = modeling.build_text_classifier(self.text_to_tokens, self.token_model)
        if cfg.deterministic:  # create dropout's generator now, so a resume finds it to restore into
            with self.strategy.scope():
                self.token_model({key: tf.zeros([1, 8], tf.int32) for key in tokenization.TOKEN_KEYS},
                                 training=True)
        self.exported = saving.ExportedClassifier(self.text_to_tokens, self.token_model, self.task)

    def datasets(self, train, validation, skip_batches=0):
        """Training and validation batches; training's stream skips the batches a resumed run
        already trained on, so it sees exactly what an uninterrupted run would."""
        if self.cfg.pipeline == "tutorial":
            training_batches = text_dataset(train, self.global_batch_size, self.cfg.seed)
            validation_batches = text_dataset(validation, self.global_batch_size)
        else:
            training_batches = token_dataset(train, self.text_to_tokens, self.global_batch_size, self.cfg.seed)
            validation_batches = token_dataset(validation, self.text_to_tokens, self.global_batch_size)
        return training_batches.skip(skip_batches), validation_batches

    def compile(self, steps_per_epoch, positive_weights=None):
        cfg = self.cfg
        model = self.text_model if cfg.pipeline == "tutorial" else self.token_model
        with self.strategy.scope():
            model.compile(optimizer=optimization.make_optimizer(cfg, steps_per_epoch * cfg.epochs, self.precision),
                          loss=self.task.loss(positive_weights), metrics=self.task.metrics(),
                          jit_compile=cfg.jit_compile)
        return model

    def early_stopping_monitor(self):
        """(the logs' key, mode) early stopping watches for --early-stopping-metric."""
        metric = self.cfg.early_stopping_metric
        if metric == "val_accuracy":
            return ("val_accuracy" if self.task.kind == "multiclass" else "val_binary_accuracy"), "max"
        return ("val_macro_f1", "max") if metric == "macro_f1" else ("val_loss", "min")

    def callbacks(self, work_dir, validation_batches):
        """Keras callbacks for fit; the checkpointing one last, so each checkpoint holds what the
        others did in that epoch (early stopping's memory included)."""
        cfg = self.cfg
        early_stopping = None
        callbacks = [keras.callbacks.CSVLogger(work_dir.log, append=True)]
        if cfg.early_stopping_patience:
            monitor, mode = self.early_stopping_monitor()
            early_stopping = checkpoints.ResumableEarlyStopping(
                monitor=monitor, mode=mode, patience=cfg.early_stopping_patience, restore_best_weights=True)
            callbacks.insert(0, early_stopping)
        if cfg.early_stopping_metric == "macro_f1":
            callbacks.insert(0, ValidationMacroF1(self.task, validation_batches))
        if cfg.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(work_dir.path, "tensorboard")))
        return callbacks + [checkpoints.Backup(work_dir, cfg.checkpoint_every, early_stopping)]


def run(cfg, log=print, splits=None):
    """Train, test, save, reload and compare; returns the run record. `splits` (train,
    validation, test) replaces the IMDB splits cfg names, for benchmarks' fixed subsets.

    With --strategy multiworker every worker runs all of it (fit, test and save take part in
    collective ops, as TensorFlow's multi-worker guide asks), but only the chief writes
    --model-dir, its work dir and the plots: the others write to a temporary folder they delete."""
    if cfg.strategy != "multiworker":
        return _run(cfg, log, splits)
    strategy = runtime.make_strategy(cfg.strategy, cfg.collective_timeout_s)  # first: no other TF op before it
    try:
        if runtime.is_chief(strategy):
            return _run(cfg, log, splits, strategy)
        scratch = tempfile.mkdtemp(prefix="bert-worker-")
        log(f"Not the chief: this worker writes to {scratch} (deleted at the end); the chief writes "
            f"{cfg.model_dir} and the plots")
        try:
            name = os.path.basename(os.path.abspath(cfg.model_dir))
            own = dataclasses.replace(cfg, model_dir=os.path.join(scratch, name),
                                      plots_dir=os.path.join(scratch, "plots"))
            return _run(own, log, splits, strategy, chief_work_dir=checkpoints.WorkDir(cfg.model_dir))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except tf.errors.OpError as error:
        lost = cluster.lost_worker(error, cfg.collective_timeout_s, checkpoints.work_dir_of(cfg.model_dir))
        if lost is None:
            raise
        raise lost from None


def _run(cfg, log, splits, strategy=None, chief_work_dir=None):
    """run() on one worker: the chief (or the only one), or, given chief_work_dir, another worker."""
    started = time.time()
    work_dir = _prepare_work_dir(cfg, log, splits, strategy, chief_work_dir)
    train, validation, test = _load_checked_data(cfg, log, splits, work_dir)
    task = task_of(train)
    session = Session(cfg, log, task)
    summary = _train(session, work_dir, train, validation, log)
    tuned = _tune(session, work_dir, validation, log)
    metrics = _test(session, work_dir, test, tuned.get("threshold", thresholds.DEFAULT), log)
    name = os.path.basename(os.path.abspath(cfg.model_dir))
    history_plot = plots.plot_history(summary["history"], os.path.join(cfg.plots_dir, f"{name}_history.png"),
                                      summary["best_epoch"])
    log(f"History plot: {history_plot}")
    record = _record(session, {"train": train, "validation": validation, "test": test}, summary, metrics,
                     time.time() - started, tuned)
    _save(session, work_dir, record, strategy, log)
    examples = config.EXAMPLE_SENTENCES if not cfg.train_data else [text[:200] for text in test.texts[:5]]
    # Scored by the saved model after its save: returned with the record, not in its run.json.
    return {**record, "examples": compare_with_reloaded(session.exported, cfg.model_dir, task, examples, log,
                                                        tuned.get("threshold", thresholds.DEFAULT))}


def _prepare_work_dir(cfg, log, splits, strategy, chief_work_dir):
    """Check the output folders can be written, then create or resume MODEL_DIR.training/; under
    multiworker, wait for the chief's work dir and data, never racing it."""
    # Fail now, not hours later: the model is saved beside --model-dir, then renamed into place.
    files.check_writable(os.path.dirname(os.path.abspath(cfg.model_dir)), "--model-dir", cfg.model_dir)
    files.check_writable(cfg.plots_dir, "--plots-dir")
    work_dir = checkpoints.WorkDir(cfg.model_dir).prepare(cfg, log)
    if strategy is not None:
        if chief_work_dir is None and splits is None and not cfg.train_data:
            imdb.prepare(cfg.data_dir, cfg.dataset_url, cfg.dataset_md5)
        _barrier(strategy)  # an unshared disk: each worker has its own copy of the data
        if chief_work_dir is not None:
            _follow(chief_work_dir, work_dir)
    return work_dir


def _load_checked_data(cfg, log, splits, work_dir):
    """The three splits, refused if an interrupted run in work_dir trained on other data."""
    try:
        train, validation, test = splits or load_data(cfg, log)
    except BaseException:
        work_dir.discard_if_empty()  # refused data leaves nothing behind
        raise
    task = task_of(train)
    work_dir.check_data({"label_names": list(task.label_names), "task": task.kind,
                         "split_sizes": [len(train), len(validation), len(test)]})
    log(f"{'Your data' if cfg.train_data else 'IMDB'}: {len(train):,} training, {len(validation):,} validation, "
        f"{len(test):,} test texts; {task.kind}, labels {', '.join(task.label_names)}"
        + (f" (positive: {task.label_names[1]})" if task.kind == "binary" else ""))
    return train, validation, test


def _train(session, work_dir, train, validation, log):
    """Fit (resuming any checkpoint), or restore the weights an earlier attempt finished training;
    returns the fit's summary."""
    cfg, task = session.cfg, session.task
    steps_per_epoch = math.ceil(len(train) / session.global_batch_size)
    fit_class_weight, positive_weights = (task.class_weighting(train.labels) if cfg.class_weight == "balanced"
                                          else (None, None))
    if fit_class_weight is not None:
        log(f"Class weights (balanced): {fit_class_weight}")
    if positive_weights is not None:
        log(f"Positive weights per label (balanced): {positive_weights.round(3).tolist()}")
    model = session.compile(steps_per_epoch, positive_weights)
    if cfg.strategy == "multiworker":  # first: a worker that would start elsewhere has no layout to compare
        _check_same_start(session.strategy, work_dir, steps_per_epoch, cfg.collective_timeout_s)
    work_dir.check_replicas(*runtime.replica_layout(session.strategy), cfg.batch_size)
    summary = work_dir.trained_summary()
    if summary is None:
        return fit(session, model, work_dir, train, validation, steps_per_epoch, log, fit_class_weight)
    log(f"Training finished in an earlier attempt; restoring its weights from {work_dir.path} "
        "and going straight to test, plot and save.")
    work_dir.restore_trained(session.token_model)
    return summary


def _tune(session, work_dir, validation, log):
    """After training, on the validation split: fit the temperature (--calibrate) and choose the
    threshold (--threshold-metric), both set in the model to be saved; without --threshold-metric,
    report what f1's threshold would give. Returns what the run record keeps of them."""
    cfg, task = session.cfg, session.task
    if cfg.calibrate == "none" and task.kind == "multiclass":
        return {}
    log("Scoring the validation set to " + ("calibrate and " if cfg.calibrate != "none" else "")
        + ("choose the threshold ..." if cfg.threshold_metric else "report the operating point ..."))
    logits = _logits(session, work_dir, validation, "validation", log)  # the temperature is 1 here
    tuned = {}
    if cfg.calibrate == "temperature":
        before = calibration.summary(task.kind, validation.labels, logits)
        temperature = calibration.fit_temperature(task.kind, validation.labels, logits)
        logits = logits / temperature
        after = calibration.summary(task.kind, validation.labels, logits)
        session.exported.temperature.assign(temperature)
        tuned["calibration"] = {"method": "temperature", "temperature": temperature, "validation": {
            "before": {key: before[key] for key in ("ece", "brier", "nll")},
            "after": {key: after[key] for key in ("ece", "brier", "nll")}}}
        log(f"Temperature scaling: T = {temperature:.4f}; on the validation texts ECE {before['ece']:.4f} -> "
            f"{after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}, "
            f"NLL {before['nll']:.4f} -> {after['nll']:.4f}")
    if task.kind == "multiclass":
        return tuned
    spec = cfg.threshold_metric or "f1"
    probabilities = task.probabilities(logits)
    chosen, kept = thresholds.choose_all(task.kind, validation.labels, probabilities, spec)
    at_default, at_chosen = (_f1_scores(task.report(validation.labels, logits, threshold))
                             for threshold in (thresholds.DEFAULT, chosen))
    for k, reason in kept.items():
        log(f"warning: {task.label_names[k] if task.kind == 'multilabel' else 'the threshold'} keeps 0.5: {reason}")
    if cfg.threshold_metric:
        session.exported.threshold.assign(np.atleast_1d(np.asarray(chosen, np.float32)))
        tuned["threshold"] = chosen
        tuned["threshold_choice"] = {"metric": spec, "validation": {"at_0.5": at_default, "chosen": at_chosen},
                                     "kept_0.5": {task.label_names[k] if task.kind == "multilabel" else "all": r
                                                  for k, r in kept.items()}}
        log(f"Threshold for {spec}, chosen on the validation texts: {thresholds.describe(chosen)} "
            f"({_described(at_chosen)}; at 0.5: {_described(at_default)}); saved with the model")
    else:
        log(f"Threshold 0.5: {_described(at_default)} on the validation texts; --threshold-metric f1 would "
            f"choose {thresholds.describe(chosen)} ({_described(at_chosen)})")
    if task.kind == "multilabel" and not (probabilities >= thresholds.DEFAULT).any():
        log("warning: at threshold 0.5 the model gives no label to any validation text; train longer, or add "
            "--threshold-metric f1 to choose each label's threshold on the validation texts")
    return tuned


def _logits(session, work_dir, split, name, log, progress=False):
    """The model's logits of a split after training, through the fused graph evaluate.py scores with
    (frozen now, so it has the weights and temperature as they are; under a distribution strategy,
    the graph as trained); out of memory is an error naming the fix, the trained weights kept."""
    batch_size = session.cfg.eval_batch_size
    model = engines.fused_or_saved(session.exported, session.precision, log) if session.cfg.strategy == "default" \
        else session.exported
    try:
        return scoring.logits_of(model, split.texts, batch_size, progress=progress)
    except tf.errors.ResourceExhaustedError:
        raise ValueError(f"out of memory scoring the {name} set; the trained weights are kept in {work_dir.path}: "
                         f"run the same command with a lower --eval-batch-size (now {batch_size}) "
                         "to finish without training again") from None


def _f1_scores(report):
    """The F1 figures a threshold is judged by: binary F1, or multi-label micro and macro F1."""
    if "f1" in report:
        return {"f1": report["f1"], "precision": report["precision"], "recall": report["recall"]}
    return {"micro_f1": report["micro"]["f1"], "macro_f1": report["macro"]["f1"]}


def _described(scores):
    return ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in scores.items())


def _test(session, work_dir, test, threshold, log):
    """The trained model's metrics on the test split, at the threshold the model is saved with."""
    log("Scoring the test set ...")
    test_logits = _logits(session, work_dir, test, "test", log, progress=True)
    metrics = session.task.report(test.labels, test_logits, threshold)
    log(f"Test loss: {metrics['loss']:.4f}  " + ("  ".join(
        f"{name.replace('_', ' ')}: {metrics[name]:.4f}" for name in ("accuracy", "subset_accuracy")
        if name in metrics) + (f"  macro F1: {metrics['macro']['f1']:.4f}" if "macro" in metrics else "")))
    return metrics


def _record(session, splits, summary, metrics, seconds, tuned):
    """The run record saved beside the model as run.json, with the temperature and threshold (tuned)."""
    cfg, task = session.cfg, session.task
    data_paths = {name: os.path.abspath(getattr(cfg, name)) for name in config.field_names(data_path=True)
                  if getattr(cfg, name)}
    return {
        "config": {**dataclasses.asdict(cfg), **data_paths},
        "encoder": cfg.encoder_handle(),
        "preprocessor": cfg.preprocessor_handle(),
        "versions": runtime.package_versions(),
        "split_sizes": {name: len(split) for name, split in splits.items()},
        "history": summary["history"],
        "best_epoch": summary["best_epoch"],
        "test_metrics": metrics,
        "training_seconds": round(summary["training_seconds"] + seconds, 1),
        "precision": session.precision,
        "optimizer_steps": summary["optimizer_steps"],
        "task": {"kind": task.kind, "label_names": list(task.label_names)},
        **tuned,
    }


def _save(session, work_dir, record, strategy, log):
    """Save the model with its record and the work dir's history, metrics and log, then remove the
    work dir: nothing in it is left to protect."""
    cfg = session.cfg
    saving.save(session.exported, cfg.model_dir, record,
                {"history.json": files.write_json(os.path.join(work_dir.path, "history.json"), record["history"]),
                 "metrics.json": files.write_json(os.path.join(work_dir.path, "metrics.json"),
                                                  record["test_metrics"]),
                 "log.csv": work_dir.log})
    if cfg.tensorboard and os.path.isdir(os.path.join(work_dir.path, "tensorboard")):
        shutil.copytree(os.path.join(work_dir.path, "tensorboard"), os.path.join(cfg.model_dir, "tensorboard"))
    if strategy is not None:
        _barrier(strategy)  # every worker is done with the chief's checkpoint before it goes
    work_dir.remove()
    log(f"Saved model: {cfg.model_dir}")


def load_data(cfg, log=print):
    """(train, validation, test): the user's files (--train-data, --test-data), else IMDB as the
    tutorial splits it."""
    if not cfg.train_data:
        splits = imdb.load_splits(cfg)
    else:
        splits = user_files.build_splits(cfg.train_data, cfg.test_data, cfg.validation_data or None,
                                         cfg.validation_split, cfg.seed, cfg.task, log=log,
                                         stratify=cfg.stratify, **user_files.reading_options(cfg))
        splits = tuple(split.capped(cfg.max_examples) for split in splits)
    if cfg.positive_label:
        splits = tuple(split.with_positive_label(cfg.positive_label) for split in splits)
    return splits


def task_of(split):
    """The Task a training split asks for."""
    return tasks.Task(split.task, split.label_names)


def _barrier(strategy):
    """Return once every worker has called it: an all-reduce needs them all. It waits up to BARRIER_TIMEOUT_S,
    not --collective-timeout-s: workers reach it after work of their own (the chief's download, scoring the
    test set), which a slower machine may take minutes longer to finish."""
    def all_reduce():
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=BARRIER_TIMEOUT_S)
        return tf.distribute.get_replica_context().all_reduce("SUM", tf.constant(1.0), options=options)
    tf.function(lambda: strategy.run(all_reduce), autograph=False)()  # in a graph: eager is slow and warns


BARRIER_TIMEOUT_S = 6 * 3600  # a worker that never arrives is still found: its connection drops or heartbeats stop


def _check_same_start(strategy, work_dir, steps_per_epoch, timeout_s):
    """Raise ValueError unless every worker starts where the chief does. Each resumes from the chief's
    checkpoint in MODEL_DIR.training as it sees it, so a worker on a disk of its own would start over
    beside a chief that resumes, and their gradient exchanges would mix two runs."""
    epoch, step, stopped = work_dir.resume_position(steps_per_epoch)
    resolver = strategy.cluster_resolver
    start = [int(resolver.task_type == "chief"), resolver.task_id, epoch * steps_per_epoch + step, int(stopped),
             int(work_dir.trained_summary() is not None)]

    def gather():
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s or None)
        return tf.distribute.get_replica_context().all_gather(tf.constant([start], tf.int64), axis=0,
                                                              options=options)
    gathered = tf.function(lambda: strategy.run(gather), autograph=False)()
    starts = {tuple(row[:2]): row[2:] for row in strategy.experimental_local_results(gathered)[0].numpy().tolist()}
    if len({tuple(point) for point in starts.values()}) > 1:
        where = ", ".join(f"{'chief' if chief else 'worker'} {index} at step {position}"
                          + (" (trained)" if trained else "") for (chief, index), (position, _, trained) in
                          sorted(starts.items(), key=lambda item: (-item[0][0], item[0][1])))
        raise ValueError(f"the workers would start from different points ({where}): each reads the chief's "
                         f"checkpoints in {os.path.dirname(work_dir.backup)} as its own disk has them; put "
                         "--model-dir on storage every worker shares, at the same path, and relaunch them all")


def _follow(chief_work_dir, work_dir):
    """Make a non-chief worker's work dir resume as the chief's does: from the chief's checkpoint
    (Keras writes this worker's own to a temporary folder it deletes), and from copies of its
    epoch log and trained weights."""
    work_dir.backup = chief_work_dir.backup
    if os.path.isdir(chief_work_dir.path):
        shutil.copytree(chief_work_dir.path, work_dir.path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("backup", "config.json", "tensorboard", "*.partial"))


def fit(session, model, work_dir, train, validation, steps_per_epoch, log=print, class_weight=None):
    """model.fit from wherever the work dir's checkpoint left off; keeps the trained weights in the
    work dir and returns the summary (history, best epoch, optimizer steps) kept with them."""
    cfg = session.cfg
    started = time.time()
    epoch, step, stopped_early = work_dir.resume_position(steps_per_epoch)
    if epoch or step:  # said only here, after every check that could refuse the resume
        where = ("early stopping had ended it" if stopped_early else "all its epochs had run" if epoch >= cfg.epochs
                 else f"epoch {epoch + 1}, step {step + 1} of {steps_per_epoch}")
        log(f"Resuming the interrupted run from its checkpoint in {work_dir.shown_path} ({where})")
    train_batches, validation_batches = session.datasets(train, validation, epoch * steps_per_epoch + step)
    non_finite = StopOnNonFiniteLoss()
    callbacks = session.callbacks(work_dir, validation_batches) + [non_finite]
    backup = next(callback for callback in callbacks if isinstance(callback, checkpoints.Backup))
    try:
        model.fit(train_batches, validation_data=validation_batches, steps_per_epoch=steps_per_epoch,
                  epochs=epoch if stopped_early else cfg.epochs,  # early stopping had ended the run
                  callbacks=callbacks, class_weight=class_weight, verbose=2 if os.environ.get("CI") else 1)
    finally:
        backup.restore_signal_handlers()
    if non_finite.bad_step is not None:  # the checkpoints of earlier steps stay: nothing is deleted unasked
        raise ValueError(f"training diverged: the loss became NaN or infinite at step {non_finite.bad_step}; "
                         f"lower --learning-rate (now {cfg.learning_rate}) and add --restart. No model was saved"
                         + (f"; the one in {cfg.model_dir} is unchanged" if os.path.exists(cfg.model_dir) else ""))
    history = _history_so_far(work_dir.log)
    early_stopping = next((callback for callback in callbacks
                           if isinstance(callback, checkpoints.ResumableEarlyStopping)), None)
    summary = {"history": history,
               "best_epoch": early_stopping.best_epoch + 1 if early_stopping else len(history["loss"]),
               "optimizer_steps": int(model.optimizer.iterations.numpy()),
               "training_seconds": round(time.time() - started, 1)}
    work_dir.keep_trained(session.token_model, summary)
    return summary


def _history_so_far(log_path):
    """The whole history from the epoch log, including epochs run before a resume."""
    rows = np.genfromtxt(log_path, delimiter=",", names=True, ndmin=1)
    by_epoch = {}
    for row in rows:  # an epoch re-run after a resume appears twice: keep its last row
        by_epoch[int(row["epoch"])] = row
    ordered = [by_epoch[e] for e in sorted(by_epoch)]
    return {name: [float(r[name]) for r in ordered] for name in rows.dtype.names if name != "epoch"}


def compare_with_reloaded(exported, model_dir, task, texts=config.EXAMPLE_SENTENCES, log=print,
                          threshold=thresholds.DEFAULT):
    """Score the tutorial's sentences (or a few test texts) with the in-memory and the reloaded
    model, side by side, labelled at the model's threshold."""
    reloaded, _ = saving.load(model_dir)
    sentences = tf.constant(list(texts))
    in_memory = task.probabilities(exported(sentences).numpy())
    from_disk = task.probabilities(reloaded(sentences).numpy())
    for title, probabilities in (("in memory", in_memory), ("saved", from_disk)):
        log(f"Results from the {title} model:")
        for text, text_probabilities in zip(texts, probabilities):
            log(prediction.table_line(text, prediction.labelled(task, text_probabilities, threshold)))
    difference = float(np.max(np.abs(in_memory - from_disk)))
    if difference > 1e-5:
        raise RuntimeError(f"the reloaded model scores differently (max difference {difference:.2e})")
    log(f"In-memory and reloaded scores agree (max difference {difference:.1e}).")
    return {"sentences": list(texts), "in_memory": in_memory.tolist(),
            "reloaded": from_disk.tolist()}
