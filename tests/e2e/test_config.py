"""The precision a run used is recorded as what --precision auto resolved to on this machine."""
import os

from helpers import QUICK

import train
from tfhub_classifier import hardware


def test_precision_in_force_is_recorded(flags):
    """auto is recorded as what it resolved to on this machine, not as 'auto'."""
    import json

    from tfhub_classifier import runtime
    record = train.main(flags + QUICK[:-2] + ["--epochs", "1", "--precision", "auto"])
    if runtime.tf.config.list_physical_devices("GPU"):
        expected = "float32"  # auto keeps float32 on a GPU
    else:
        expected = "bfloat16" if hardware.cpu_supports_bfloat16() else "float32"
    assert record["precision"] == runtime.resolve_precision("auto") == expected
    with open(os.path.join(flags[flags.index("--model-dir") + 1], "run.json")) as f:
        assert json.load(f)["precision"] == expected
