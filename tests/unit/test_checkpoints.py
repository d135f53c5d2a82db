"""MODEL_DIR.training/: a resume compares every setting but those that change neither weights nor data."""
import dataclasses
import os

import pytest

import config
from tfhub_classifier.runtime import tf
from tfhub_classifier.training import checkpoints


def interrupted(tmp_path, cfg):
    """A work dir as a run killed after training left it (its trained summary kept)."""
    work_dir = checkpoints.WorkDir(str(tmp_path / "model")).prepare(cfg, log=lambda *_: None)
    with open(work_dir.trained_record, "w") as f:
        f.write("{}")
    return work_dir


def test_a_resume_with_other_training_settings_is_refused_naming_them(tmp_path):
    cfg = config.resolve(model_dir=str(tmp_path / "model"))
    interrupted(tmp_path, cfg)
    other = dataclasses.replace(cfg, learning_rate=1e-3, seq_length=128)
    with pytest.raises(ValueError, match=r"--learning-rate 5e-05 -> 0.001, --seq-length 512 -> 128.*--restart"):
        checkpoints.WorkDir(cfg.model_dir).prepare(other, log=lambda *_: None)


def test_a_resume_ignores_what_changes_neither_weights_nor_data(tmp_path):
    cfg = config.resolve(model_dir=str(tmp_path / "model"))
    interrupted(tmp_path, cfg)
    other = dataclasses.replace(cfg, eval_batch_size=7, plots_dir="elsewhere", checkpoint_every=3, tensorboard=True)
    work_dir = checkpoints.WorkDir(cfg.model_dir).prepare(other, log=lambda *_: None)
    assert work_dir.trained_summary() == {}  # kept for the rerun, not discarded


def test_restart_discards_the_interrupted_run(tmp_path):
    cfg = config.resolve(model_dir=str(tmp_path / "model"))
    work_dir = interrupted(tmp_path, cfg)
    checkpoints.WorkDir(cfg.model_dir).prepare(dataclasses.replace(cfg, learning_rate=1e-3, restart=True),
                                               log=lambda *_: None)
    assert work_dir.trained_summary() is None


def test_a_setting_the_interrupted_run_did_not_record_counts_as_its_default(tmp_path):
    """A run interrupted before a setting existed trained with its default: resuming with another value
    of it is refused, with the default's value named."""
    import json
    cfg = config.resolve(model_dir=str(tmp_path / "model"))
    work_dir = interrupted(tmp_path, cfg)
    settings_path = tmp_path / "model.training" / "config.json"
    with open(settings_path) as f:
        older = {k: v for k, v in json.load(f).items() if k != "early_stopping_metric"}
    with open(settings_path, "w") as f:
        json.dump(older, f)
    with pytest.raises(ValueError, match=r"--early-stopping-metric 'val_loss' -> 'macro_f1'"):
        checkpoints.WorkDir(cfg.model_dir).prepare(dataclasses.replace(cfg, early_stopping_metric="macro_f1"),
                                                   log=lambda *_: None)
    checkpoints.WorkDir(cfg.model_dir).prepare(cfg, log=lambda *_: None)  # its default: resumes
    assert work_dir.trained_summary() == {}


def test_an_unfinished_training_resumes_only_on_as_many_replicas(tmp_path):
    """Two workers' checkpoint, relaunched on one worker of three devices: each step would take another batch
    and the schedule another length, so it is refused; on two replicas laid out either way it resumes, and a
    finished training may go on anywhere."""
    cfg = config.resolve(model_dir=str(tmp_path / "model"), batch_size=8)
    work_dir = checkpoints.WorkDir(cfg.model_dir).prepare(cfg, log=lambda *_: None)
    work_dir.check_replicas(2, 1, cfg.batch_size)
    os.makedirs(os.path.join(work_dir.backup, "chief"))
    tf.train.Checkpoint(step=tf.Variable(3)).save(os.path.join(work_dir.backup, "chief", "ckpt"))
    with pytest.raises(ValueError, match=r"model.training holds a training interrupted on 2 workers of 1 device "
                                         r"each \(16 texts a step\); this launch has 1 worker of 3 devices \(24 a "
                                         r"step\).*relaunch on 2 replicas \(workers in TF_CONFIG times the GPUs each "
                                         r"sees\) to resume it, or add --restart"):
        work_dir.check_replicas(1, 3, cfg.batch_size)
    work_dir.check_replicas(1, 2, cfg.batch_size)
    work_dir.check_replicas(2, 1, cfg.batch_size)
    with open(work_dir.trained_record, "w") as f:
        f.write("{}")
    work_dir.check_replicas(1, 3, cfg.batch_size)


@pytest.mark.parametrize("follows_chief", [False, True])
def test_a_stop_says_which_checkpoint_the_run_resumes_from(tmp_path, follows_chief):
    """SIGTERM on a worker that isn't the chief: its own checkpoint goes to a folder it deletes, so the line
    names the chief's last one, not a step that no checkpoint holds."""
    cfg = config.resolve(model_dir=str(tmp_path / "model"))
    work_dir = checkpoints.WorkDir(cfg.model_dir).prepare(cfg, log=lambda *_: None)
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.iterations.assign(57)
    backup = checkpoints.Backup(work_dir, 0)
    backup.set_model(model)
    backup.stop_requested, backup.follows_chief = "SIGTERM", follows_chief
    with pytest.raises(checkpoints.Stopped) as stopped:
        backup._stop()
    if follows_chief:
        assert str(stopped.value) == (f"SIGTERM at step 57, which only the chief could checkpoint: the workers resume "
                                      f"from the chief's last checkpoint in {work_dir.backup}")
    else:
        assert str(stopped.value) == f"SIGTERM, checkpointed at step 57 in {work_dir.backup}"
