"""Multi-worker for real: two worker processes, one cluster (TF_CONFIG), one writer.

As TensorFlow's multi-worker guide asks, every worker runs the same code (fit, test and save
take part in collective ops), but only the chief writes --model-dir, its work dir and the plots;
the other workers write to temporary folders they delete.
"""
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import QUICK, ROOT, assert_predict_scores_are_the_saved_models

WORKERS = 2
EPOCHS = 2
BATCH_SIZE = 8
TIMEOUT = 300  # seconds for the whole run; a stuck collective op would otherwise hang forever


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_cluster(argv, tmp_path):
    """Start one train.py per worker; (return codes, outputs) once all have ended."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(WORKERS)]}
    scratch = tmp_path / "tmp"  # the workers' temporary folders, to check they are gone afterwards
    scratch.mkdir()
    processes, logs = [], []
    for index in range(WORKERS):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TMPDIR=str(scratch),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        env.pop("BERT_SUITE_DEBUG", None)
        logs.append(open(tmp_path / f"worker{index}.log", "w+"))
        processes.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv],
                                          cwd=str(tmp_path), env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    try:
        for process in processes:
            process.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [process.returncode for process in processes], outputs


def test_two_workers_train_and_only_the_chief_writes(flags, tmp_path):
    from tfhub_classifier.model import saving
    argv = [*flags, *QUICK, "--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE), "--strategy", "multiworker"]
    codes, outputs = _run_cluster(argv, tmp_path)
    report = "\n".join(f"--- worker {i} (exit {code}) ---\n{output[-6000:]}"
                       for i, (code, output) in enumerate(zip(codes, outputs)))
    assert codes == [0] * WORKERS, report

    model_dir = flags[flags.index("--model-dir") + 1]
    models, name = os.path.dirname(model_dir), os.path.basename(model_dir)
    # Exactly one model, and nothing beside it: no work dir, no staging or .previous folder.
    assert sorted(os.listdir(models)) == [name], report
    assert sorted(os.listdir(flags[flags.index("--plots-dir") + 1])) == [f"{name}_history.png"], report
    assert sorted(os.listdir(flags[flags.index("--data-dir") + 1])) == ["aclImdb", "aclImdb_v1.tar.gz"], report
    assert os.listdir(tmp_path / "tmp") == [], report  # the other worker removed its temporary folders
    # Only the chief (worker 0, as there is no "chief" task) saved to --model-dir.
    saved = [f"Saved model: {model_dir}" in output for output in outputs]
    assert saved == [True] + [False] * (WORKERS - 1), report

    _, record = saving.load(model_dir)
    assert record["config"]["strategy"] == "multiworker"
    # Each step trains on a global batch of --batch-size per worker x 2 workers.
    train_size = record["split_sizes"]["train"]
    assert record["optimizer_steps"] == EPOCHS * math.ceil(train_size / (BATCH_SIZE * WORKERS))
    assert len(record["history"]["loss"]) == EPOCHS
    assert_predict_scores_are_the_saved_models(model_dir, ["great", "awful"])


# Worker 1 as train.py, but its Python stops for good at step 5 (stuck, not dead): its process, sockets
# and heartbeats go on, so only the collective timeout can tell the others.
STUCK_AT_STEP_5 = r"""
import os, runpy, sys, time
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
from tfhub_classifier.training import checkpoints
original = checkpoints.Backup.on_train_batch_end
def on_train_batch_end(self, batch, logs=None):
    if batch == 4:
        time.sleep(3600)
    return original(self, batch, logs)
checkpoints.Backup.on_train_batch_end = on_train_batch_end
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start_cluster(argv, tmp_path, tag, stuck=False, own_model_dir=None, workers=WORKERS):
    """One train.py per worker of a cluster of `workers`, started (stuck: worker 1 stops at step 5;
    own_model_dir: worker 1's --model-dir, as if its disk were its own); (processes, log paths)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(workers)]}
    processes, paths = [], []
    for index in range(workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        env.pop("BERT_SUITE_DEBUG", None)
        paths.append(tmp_path / f"{tag}-worker{index}.log")
        with open(paths[-1], "w") as log:
            wrapper = ["-c", STUCK_AT_STEP_5] if stuck and index == 1 else []
            own = ["--model-dir", own_model_dir] if own_model_dir and index == 1 else []
            processes.append(subprocess.Popen([sys.executable, *wrapper, os.path.join(ROOT, "train.py"), *argv, *own],
                                              cwd=str(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes, paths


def _wait_for_all(processes):
    """Wait for every process to end, up to TIMEOUT each; kill those still running."""
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("loss", ["SIGKILL", "SIGSTOP", "stuck", "SIGTERM"])
def test_a_lost_worker_stops_the_others_in_bounded_time_and_a_relaunch_resumes(hub_models, big_archive_url,
                                                                                tmp_path, loss):
    """Worker 1 killed (SIGKILL: its connections drop), hung (SIGSTOP: they stay open, its heartbeats stop),
    stuck (its Python stops; heartbeats go on, so only the collective timeout ends the wait) or stopped
    (SIGTERM: it says the chief's checkpoint is the one to resume from, not its own) mid-epoch:
    worker 0 exits within --collective-timeout-s (plus slack) with one line naming the lost task and how to
    resume; relaunching both with the same command finishes with the optimizer steps of an uninterrupted
    run and one model, saved by the chief (checked after the kill)."""
    import signal

    from conftest import offline_flags

    from tfhub_classifier.model import saving
    timeout = 20
    flags = offline_flags(hub_models, big_archive_url, tmp_path)
    argv = [*flags, *QUICK, "--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE), "--strategy", "multiworker",
            "--checkpoint-every", "3", "--collective-timeout-s", str(timeout)]
    model_dir = flags[flags.index("--model-dir") + 1]
    backup = os.path.join(model_dir + ".training", "backup", "chief")
    processes, paths = _start_cluster(argv, tmp_path, "first", stuck=loss == "stuck")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.isdir(backup) and any(name.startswith("ckpt") for name in os.listdir(backup))):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), paths[0].read_text()
            time.sleep(0.2)
        if loss != "stuck":
            processes[1].send_signal(getattr(signal, loss))
        killed = time.monotonic()
        try:
            processes[0].wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            pass  # the time it took is asserted below, with worker 0's output
        waited = time.monotonic() - killed
        if loss == "SIGTERM":
            try:
                processes[1].wait(timeout=timeout + 60)
            except subprocess.TimeoutExpired:
                pass  # killed below: its exit code then says it hung
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = paths[0].read_text()
    print(f"worker 0 exited {waited:.1f} s after worker 1 was killed; its last lines:\n{output[-1500:]}")
    assert processes[0].returncode not in (0, None), output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "worker 1" in last and "relaunch" in last, output[-3000:]
    if loss == "stuck":
        assert f"no answer within --collective-timeout-s {timeout}" in last
    assert waited < timeout + 10, output[-3000:]  # the timeout, then one line and an immediate exit
    assert not os.path.exists(os.path.join(model_dir, "saved_model.pb"))
    if loss == "SIGTERM":
        stopped = paths[1].read_text().strip().splitlines()[-1]
        # A line of its own, though Keras' progress bar leaves its line open mid-epoch.
        assert processes[1].returncode == 130 and stopped.startswith("stopped by SIGTERM at step ") and (
            f"only the chief could checkpoint: the workers resume from the chief's last checkpoint in "
            f"{os.path.dirname(backup)}" in stopped), stopped
    if loss != "SIGKILL":
        return  # resuming is the same after any loss: relaunched once, after the kill

    # Relaunched where worker 1 can't see the chief's checkpoints (its --model-dir on a disk of its own): it
    # would start over beside a resuming chief, so both stop with one line, and the checkpoints stay.
    processes, paths = _start_cluster(argv, tmp_path, "unshared", own_model_dir=str(tmp_path / "own" / "model"))
    _wait_for_all(processes)
    own_model_dir = str(tmp_path / "own" / "model")
    for process, path, seen in zip(processes, paths, (model_dir, own_model_dir)):
        last = path.read_text().strip().splitlines()[-1]
        assert process.returncode not in (0, None) and last.startswith("error: the workers would start from "
                                                                       "different points"), last
        assert re.search(r"\(worker 0 at step [1-9]\d*, worker 1 at step 0\)", last), last  # resumed, started over
        assert f"checkpoints in {seen}.training as its own disk has them" in last  # where each worker looked
        assert "storage every worker shares" in last
    assert any(name.startswith("ckpt") for name in os.listdir(backup))

    # Relaunched on one worker: each step would take half the batch, so the checkpoint's steps would not match.
    processes, paths = _start_cluster(argv, tmp_path, "alone", workers=1)
    _wait_for_all(processes)
    last = paths[0].read_text().strip().splitlines()[-1]
    assert processes[0].returncode == 2 and re.search(
        rf"^error: {re.escape(model_dir)}.training holds a training interrupted on 2 workers of 1 device each "
        r"\(16 texts a step\); this launch has 1 worker of 1 device \(8 a step\).*relaunch on 2 replicas", last), last
    assert any(name.startswith("ckpt") for name in os.listdir(backup))

    processes, paths = _start_cluster(argv, tmp_path, "again")
    _wait_for_all(processes)
    outputs = [path.read_text() for path in paths]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "Resuming the interrupted run" in outputs[0]
    assert [f"Saved model: {model_dir}" in output for output in outputs] == [True, False]
    _, record = saving.load(model_dir)
    assert record["optimizer_steps"] == EPOCHS * math.ceil(record["split_sizes"]["train"] / (BATCH_SIZE * WORKERS))
    assert sorted(os.listdir(os.path.dirname(model_dir))) == [os.path.basename(model_dir)]
