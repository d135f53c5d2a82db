"""Training state that outlives the process: MODEL_DIR.training/ until the model is saved.

It holds the settings of the run, Keras' BackupAndRestore checkpoint (model, optimizer, the
epoch and step reached, and early stopping's memory, in one atomic checkpoint), the epoch
log, and, once `fit` has returned, the trained weights. A rerun of the same command resumes
from whatever is there; nothing here is deleted until the model is saved.
"""
import dataclasses
import importlib
import json
import os
import shutil
import signal
import threading

import numpy as np

import config
from tfhub_classifier import files
from tfhub_classifier.runtime import keras, tf

# BackupAndRestore's training state, from the Keras package tf.keras is (tf_keras, or TF 2.15's keras).
worker_training_state = importlib.import_module(
    keras.callbacks.BackupAndRestore.__module__.split(".")[0] + ".src.distribute.worker_training_state")

NEVER = 1 << 62  # a save frequency in steps that is never reached


def work_dir_of(model_dir):
    return os.path.abspath(model_dir).rstrip("/") + ".training"


def _layout(workers, devices):
    """'2 workers of 1 device each', as messages name a replica layout."""
    return (f"{workers} worker{'s' if workers != 1 else ''} of {devices} device{'s' if devices != 1 else ''}"
            + (" each" if workers != 1 else ""))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Stopped(KeyboardInterrupt):
    """A signal stopped training after it checkpointed; the same command resumes."""


class WorkDir:
    """MODEL_DIR.training/: where an unfinished run keeps everything it has done."""

    def __init__(self, model_dir):
        self.path = work_dir_of(model_dir)
        self.backup = os.path.join(self.path, "backup")
        self.log = os.path.join(self.path, "log.csv")
        self.trained_weights = os.path.join(self.path, "trained", "weights")
        self.trained_record = os.path.join(self.path, "trained.json")

    def prepare(self, cfg, log=print):
        """Create the folder, or keep the interrupted run in it for fit to resume; a run with other settings
        is an error naming the differing flags, unless cfg.restart asks to discard it."""
        settings = dataclasses.asdict(cfg)
        settings_path = os.path.join(self.path, "config.json")
        if os.path.isdir(self.path) and (cfg.restart or not self._holds_progress()):
            if cfg.restart:
                log(f"--restart: discarding the interrupted run in {self.path}")
            shutil.rmtree(self.path)  # with nothing trained in it, there is nothing to lose
        if os.path.isdir(self.path):
            recorded = _read_json(settings_path) or {}
            ignored = config.field_names(resumes=False)  # they change neither the weights nor the data
            # A setting newer than the interrupted run was at its default there.
            defaults = dataclasses.asdict(config.Config())
            differing = [name for name in settings if name not in ignored
                         and recorded.get(name, defaults[name]) != settings[name]]
            if not recorded:
                differing = ["(unreadable config.json)"]
            if differing:
                flags = ", ".join(f"--{name.replace('_', '-')} {recorded.get(name, defaults.get(name))!r} -> "
                                  f"{settings[name]!r}" for name in differing if name in settings) or differing[0]
                raise ValueError(f"{self.path} holds an interrupted run with other settings ({flags}); "
                                 "rerun with its settings to resume it, or add --restart to discard it "
                                 "and start over")
        os.makedirs(self.path, exist_ok=True)
        files.write_json(settings_path, settings)
        return self

    def check_data(self, fingerprint):
        """Refuse to resume on other data than the interrupted run's (its label names and split sizes)."""
        path = os.path.join(self.path, "data.json")
        recorded = _read_json(path)
        if recorded and recorded != fingerprint and self._holds_progress():
            differing = ", ".join(f"{key} {recorded.get(key)} -> {fingerprint[key]}" for key in fingerprint
                                  if recorded.get(key) != fingerprint[key])
            raise ValueError(f"{self.shown_path} holds an interrupted run on other data ({differing}); rerun with "
                             "its data to resume it, or add --restart to discard it and start over")
        files.write_json(path, fingerprint)

    def check_replicas(self, workers, devices, batch_size):
        """Refuse to resume an unfinished training on another number of replicas (workers times devices on
        each): each step's batch, the steps per epoch and the learning-rate schedule would not match its
        checkpoint. A work dir without replicas.json is not checked."""
        path = os.path.join(self.path, "replicas.json")
        recorded = _read_json(path) or {}
        before = recorded.get("workers", 1), recorded.get("devices", 1)
        if (recorded and before[0] * before[1] != workers * devices and self._holds_progress()
                and self.trained_summary() is None):
            raise ValueError(f"{self.shown_path} holds a training interrupted on {_layout(*before)} "
                             f"({before[0] * before[1] * batch_size} texts a step); this launch has "
                             f"{_layout(workers, devices)} ({workers * devices * batch_size} a step), so its steps "
                             f"and learning-rate schedule would not match the checkpoint's: relaunch on "
                             f"{before[0] * before[1]} replicas (workers in TF_CONFIG times the GPUs each sees) to "
                             "resume it, or add --restart to discard it and start over")
        files.write_json(path, {"workers": workers, "devices": devices})

    @property
    def shown_path(self):
        """The folder to name in messages: the chief's, on a worker that follows it from a temporary one."""
        return os.path.dirname(self.backup)

    def discard_if_empty(self):
        """Remove the folder if no attempt trained anything in it (e.g. the data was refused)."""
        if not self._holds_progress():
            shutil.rmtree(self.path, ignore_errors=True)

    def _holds_progress(self):
        """Whether a previous attempt trained anything (a checkpoint or kept weights)."""
        return (bool(tf.train.latest_checkpoint(os.path.join(self.backup, "chief")))
                or os.path.isfile(self.trained_record))

    def resume_position(self, steps_per_epoch):
        """(epoch, step) where fit and its data resume, as Keras computes it from the backup, and
        whether early stopping had already ended the run there."""
        latest = tf.train.latest_checkpoint(os.path.join(self.backup, "chief"))
        if not latest:
            return 0, 0, False
        reader = tf.train.load_checkpoint(latest)
        epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
        stopped_key = "early_stopping/stopped/.ATTRIBUTES/VARIABLE_VALUE"
        stopped = reader.has_tensor(stopped_key) and bool(reader.get_tensor(stopped_key))
        if batch == steps_per_epoch - 1:
            return epoch + 1, 0, stopped
        return epoch, batch + 1, stopped

    # The trained weights: written once fit returns, read by a rerun that failed after it.
    def keep_trained(self, model, summary):
        """Write the trained weights, then (last, as the commit) the summary of the fit."""
        tf.train.Checkpoint(model=model).write(self.trained_weights)
        files.write_json(self.trained_record, summary)

    def trained_summary(self):
        """The fit summary if a previous attempt finished training, else None."""
        if os.path.isfile(self.trained_record):
            return _read_json(self.trained_record)
        return None

    def restore_trained(self, model):
        tf.train.Checkpoint(model=model).read(self.trained_weights).assert_existing_objects_matched()

    def remove(self):
        """Only once the model is saved: the checkpoint has nothing left to protect."""
        shutil.rmtree(self.path, ignore_errors=True)


class EarlyStoppingMemory(tf.Module):
    """Early stopping's state as variables, so it is part of the backup checkpoint."""

    def __init__(self, model):
        super().__init__()
        self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)  # -1: nothing remembered
        self.stopped = tf.Variable(False, trainable=False)  # it ended the run: a resume trains no more
        self.best_weights = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False) for w in model.weights]


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """tf-keras' EarlyStopping (restore_best_weights) whose memory survives a resume."""

    def remember(self, memory):
        memory.best.assign(self.best)
        memory.wait.assign(self.wait)
        if self.best_weights is not None and int(memory.best_epoch.numpy()) != self.best_epoch:
            for variable, value in zip(memory.best_weights, self.best_weights):
                variable.assign(value)
        memory.best_epoch.assign(self.best_epoch if self.best_weights is not None else -1)
        memory.stopped.assign(self.stopped_epoch > 0)

    def recall(self, memory):
        if int(memory.best_epoch.numpy()) < 0:
            return
        self.best = float(memory.best.numpy())
        self.wait = int(memory.wait.numpy())
        self.best_epoch = int(memory.best_epoch.numpy())
        self.best_weights = [variable.numpy() for variable in memory.best_weights]


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that checkpoints every N steps and at each epoch's end, keeps early
    stopping's memory in the same checkpoint, never deletes it (the caller does, once the model
    is saved), and on SIGTERM or Ctrl-C checkpoints at the current step and stops."""

    def __init__(self, work_dir, every_steps, early_stopping=None):
        super().__init__(work_dir.backup, save_freq=every_steps or NEVER, delete_checkpoint=False)
        self.every_steps = every_steps
        self.early_stopping = early_stopping
        self.stop_requested = None
        self.follows_chief = False  # a non-chief worker: its checkpoints go to a folder it deletes
        self._previous_handlers = {}

    def on_train_begin(self, logs=None):
        # BackupAndRestore.on_train_begin, with a checkpoint that also holds early stopping's
        # memory and dropout's random generators (Keras leaves those out of checkpoints).
        if not getattr(self.model.optimizer, "_built", True):
            self.model.optimizer.build(self.model.trainable_variables)
        state = worker_training_state.WorkerTrainingState(self.model, self.backup_dir, self.save_freq)
        self.model._training_state = self._training_state = state
        self.memory = EarlyStoppingMemory(self.model) if self.early_stopping else None
        extra = {"early_stopping": self.memory} if self.memory else {}
        generators = [layer._random_generator._generator for layer in self.model._flatten_layers()
                      if getattr(getattr(layer, "_random_generator", None), "_generator", None) is not None]
        if generators:
            extra["random_generators"] = generators
        checkpoint = tf.train.Checkpoint(
            model=self.model, ckpt_saved_epoch=state._ckpt_saved_epoch, ckpt_saved_batch=state._ckpt_saved_batch,
            train_counter=self.model._train_counter, **extra)
        manager = tf.train.CheckpointManager(checkpoint, state.read_checkpoint_manager.directory, max_to_keep=1)
        if state.write_checkpoint_manager is state.read_checkpoint_manager:
            state.write_checkpoint_manager = manager
        else:  # a non-chief worker writes to its own temporary folder
            self.follows_chief = True
            state.write_checkpoint_manager = tf.train.CheckpointManager(
                checkpoint, state.write_checkpoint_manager.directory, max_to_keep=1)
        state.read_checkpoint_manager = manager
        manager.restore_or_initialize()
        if self.early_stopping:
            self.early_stopping.recall(self.memory)
        if threading.current_thread() is threading.main_thread():  # only there can Python take signals
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[number] = signal.signal(number, self._request_stop)

    def _request_stop(self, number, frame):
        if self.stop_requested is not None:  # a second signal: stop now, losing the current step
            raise KeyboardInterrupt
        self.stop_requested = signal.Signals(number).name

    def on_train_batch_end(self, batch, logs=None):
        last = batch == self.params["steps"] - 1  # the epoch's end saves after validation instead
        if self.stop_requested and not last:  # on the last batch, stop once validation has run
            if not self.follows_chief:  # a non-chief's checkpoint would go to a folder it deletes
                self._backup(epoch=self._current_epoch, batch=batch)
            self._stop()
        if self.every_steps and not last:
            self._batches_count += 1
            if self._batches_count >= self.every_steps:
                self._batches_count = 0
                self._backup(epoch=self._current_epoch, batch=batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.early_stopping:
            self.early_stopping.remember(self.memory)
        self._training_state._ckpt_saved_batch.assign(self.params["steps"] - 1)
        self._backup(epoch=epoch, batch=self.params["steps"] - 1)
        if self.stop_requested:
            self._stop()

    def _stop(self):
        step = int(self.model.optimizer.iterations.numpy())
        if self.follows_chief:
            raise Stopped(f"{self.stop_requested} at step {step}, which only the chief could checkpoint: the workers "
                          f"resume from the chief's last checkpoint in {self.backup_dir}")
        raise Stopped(f"{self.stop_requested}, checkpointed at step {step} in {self.backup_dir}")

    def on_train_end(self, logs=None):
        self.restore_signal_handlers()
        super().on_train_end(logs)

    def restore_signal_handlers(self):
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}
