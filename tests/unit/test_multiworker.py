"""Which worker of a multi-worker cluster is the chief, the one that writes the run's files."""
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
