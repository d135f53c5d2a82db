"""benchmarks/parity.py's verdict: every engine within 0.3 points of float32's accuracy, labels agreeing on 99%."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import parity  # noqa: E402


def test_a_way_meets_the_accuracy_target_up_to_its_edges():
    assert not parity.misses_target(-0.30, 0.990)
    assert not parity.misses_target(0.30, 0.997)
    assert parity.misses_target(-0.32, 0.997)
    assert parity.misses_target(0.32, 0.997)
    assert parity.misses_target(0.0, 0.989)
