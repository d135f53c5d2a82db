"""benchmarks/common.py's turns between two settings: each keeps its best run (the highest rate, the lowest
latency), and benchmarks/gelu_weights.py refuses a run that did not hold what its setting says."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import common  # noqa: E402
import gelu_weights  # noqa: E402

FUSED = {"dense_layers": 12, "gelus": 6, "layer_norms": 13, "attention_kernels": 6, "attentions_in_chunks": 0}


def run(rate, latency, held):
    return {"eval_reviews_per_s": rate, "predict_latency_ms": latency, "fused": dict(FUSED, gelu_weights_held=held)}


def test_each_setting_keeps_its_highest_rate_and_lowest_latency(monkeypatch, tmp_path):
    scripted = iter([run(50.0, 30.0, 6), run(40.0, 35.0, 0),  # round 1: held, then constant
                     run(42.0, 33.0, 0), run(55.0, 31.0, 6)])  # round 2: constant first
    monkeypatch.setattr(common, "run_child", lambda script, spec, environment: next(scripted))
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    best = common.take_turns("turns", gelu_weights.SETTINGS, [128], 2, {}, gelu_weights.check,
                             gelu_weights.FIGURES)
    assert best[(128, "held")] == {"eval_reviews_per_s": 55.0, "predict_latency_ms": 30.0}
    assert best[(128, "constant")] == {"eval_reviews_per_s": 42.0, "predict_latency_ms": 33.0}


@pytest.mark.parametrize("setting, held", [("held", 5), ("held", 0), ("constant", 6)])
def test_a_run_that_did_not_hold_what_its_setting_says_is_refused(setting, held):
    first = dict(run(50.0, 30.0, 6), name="first")
    assert "its figures would not be its setting's" in gelu_weights.check(setting, run(50.0, 30.0, held), first)


def test_a_run_that_fused_other_layers_than_the_first_is_refused():
    first = dict(run(50.0, 30.0, 6), name="first")
    other = run(50.0, 30.0, 0)
    other["fused"]["attention_kernels"] = 0
    assert gelu_weights.check("held", run(50.0, 30.0, 6), first) is None
    assert "would not score the same layers" in gelu_weights.check("constant", other, first)


def test_threads_refuses_a_run_whose_inter_op_pool_was_not_its_settings():
    import threads
    assert threads.check("one", {"inter_op_threads": 1}, {}) is None
    assert threads.check("default", {"inter_op_threads": 0}, {}) is None
    for setting, count in (("one", 0), ("default", 1)):
        assert "its figures would not be its setting's" in threads.check(setting, {"inter_op_threads": count}, {})
