"""Which worker of a multi-worker cluster is the chief, the one that writes the run's files; what a lost one means."""
import pytest


def test_the_chief_is_the_chief_task_else_worker_0():
    from types import SimpleNamespace

    from tfhub_classifier import runtime

    def strategy(task_type, task_id, cluster):
        spec = SimpleNamespace(as_dict=lambda: cluster)
        return SimpleNamespace(cluster_resolver=SimpleNamespace(task_type=task_type, task_id=task_id,
                                                                cluster_spec=lambda: spec))
    workers = {"worker": ["a:1", "b:2"]}
    with_chief = {"chief": ["c:3"], **workers}
    assert runtime.is_chief(strategy("worker", 0, workers))
    assert not runtime.is_chief(strategy("worker", 1, workers))
    assert runtime.is_chief(strategy("chief", 0, with_chief))
    assert not runtime.is_chief(strategy("worker", 0, with_chief))
    assert runtime.is_chief(runtime.make_strategy("default"))


def test_a_lost_worker_is_named_from_the_error_or_the_cluster(monkeypatch):
    import json

    from tfhub_classifier.runtime import tf
    from tfhub_classifier.training import cluster
    workers = ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                         "index": 0}}))
    reset = tf.errors.UnavailableError(None, None, "Additional GRPC error information from remote target "
                                       "/job:worker/replica:0/task:2 while calling RecvBuf: Connection reset")
    lost = cluster.lost_worker(reset, 120, "models/m.training")
    assert isinstance(lost, ValueError)
    assert str(lost).startswith("worker 2 (10.0.0.3:2222) was lost mid-training (its connection dropped)")
    assert "relaunch every worker with the same command" in str(lost) and "models/m.training" in str(lost)
    timed_out = tf.errors.DeadlineExceededError(None, None, "Collective has timed out during execution.")
    assert str(cluster.lost_worker(timed_out, 120, "w")).startswith(
        "one of worker 1 (10.0.0.2:2222), worker 2 (10.0.0.3:2222) was lost mid-training (no answer within "
        "--collective-timeout-s 120; if it was only slow, raise --collective-timeout-s)")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers[:2]}, "task": {"type": "worker",
                                                                                             "index": 1}}))
    assert str(cluster.lost_worker(timed_out, 5, "w")).startswith("worker 0 (10.0.0.1:2222) was lost")
    assert cluster.lost_worker(tf.errors.ResourceExhaustedError(None, None, "OOM"), 5, "w") is None
    # Unavailable, but not the cluster's doing: raised as it is.
    storage = tf.errors.UnavailableError(None, None, "Error executing an HTTP request: gs://bucket/data.csv")
    assert cluster.lost_worker(storage, 5, "w") is None


def test_the_collective_timeout_reaches_the_strategy(monkeypatch):
    import config
    from tfhub_classifier import runtime
    from tfhub_classifier.runtime import tf
    assert config.Config().collective_timeout_s == 120
    made = []
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda **kwargs: made.append(kwargs) or "made")
    monkeypatch.setattr(runtime, "_multiworker_strategy", None)
    monkeypatch.setenv("TF_CONFIG", "{}")
    assert runtime.make_strategy("multiworker", 30) == "made"
    assert made[0]["communication_options"].timeout_seconds == 30
    monkeypatch.setattr(runtime, "_multiworker_strategy", None)
    runtime.make_strategy("multiworker", 0)
    assert made[1]["communication_options"].timeout_seconds is None


def test_a_collective_timeout_without_multiworker_is_refused():
    import config
    with pytest.raises(ValueError, match="add --strategy multiworker"):
        config.resolve(collective_timeout_s=30).validate(config.TRAIN)
    assert config.resolve(collective_timeout_s=30, strategy="multiworker").validate(config.TRAIN)


def test_a_peer_lost_while_the_encoder_loads_is_not_blamed_on_the_model(monkeypatch, tmp_path):
    """Under the strategy's scope each of the encoder's variables takes its value from the chief: a lost peer
    fails that load with the cluster's error, which must reach trainer.run (which names the worker), not
    become "could not load --encoder ... this machine may be offline"; a storage error stays that line."""
    from tfhub_classifier.model import hub_models
    from tfhub_classifier.runtime import hub, tf
    from tfhub_classifier.training import cluster
    (tmp_path / "saved_model.pb").write_bytes(b"")
    failures = {"lost": tf.errors.UnavailableError(None, None, "Collective ops is aborted by: "
                                                                "/job:worker/replica:0/task:1"),
                "storage": tf.errors.UnavailableError(None, None, "Error executing an HTTP request: gs://bucket"),
                "unreadable": OSError("unreadable")}
    monkeypatch.setattr(hub, "load", lambda handle: (_ for _ in ()).throw(failures[handle.split("/")[-1]]))
    for name in failures:
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    with pytest.raises(tf.errors.UnavailableError):
        hub_models.load_hub_model(str(tmp_path / "lost"), "--encoder", passes=cluster.is_lost_peer)
    for name in ("storage", "unreadable"):
        with pytest.raises(ValueError, match=f"could not load --encoder .*{name}"):
            hub_models.load_hub_model(str(tmp_path / name), "--encoder", passes=cluster.is_lost_peer)
    with pytest.raises(ValueError, match="could not load --encoder"):  # by default, every failure is that line
        hub_models.load_hub_model(str(tmp_path / "lost"), "--encoder")
