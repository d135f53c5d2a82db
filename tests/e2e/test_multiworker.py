"""Multi-worker for real: two worker processes, one cluster (TF_CONFIG), one writer.

As TensorFlow's multi-worker guide asks, every worker runs the same code (fit, test and save
take part in collective ops), but only the chief writes --model-dir, its work dir and the plots;
the other workers write to temporary folders they delete.
"""
import json
import math
import os
import socket
import subprocess
import sys
import time

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
