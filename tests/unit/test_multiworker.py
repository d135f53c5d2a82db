"""Multi-worker for real: two worker processes, one cluster (TF_CONFIG), one writer.

As TensorFlow's multi-worker guide asks, every worker runs the same code (fit, test and save
take part in collective ops), but only the chief writes --model-dir, its work dir and the plots;
the other workers write to temporary folders they delete.
"""


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
