"""What --precision auto and --jit-compile really do: the precision in force is recorded, and the train
step is XLA-compiled."""
import os
import subprocess
import sys

import pytest
from helpers import QUICK, ROOT

import train
from tfhub_classifier import hardware

JIT_RUN = """
import sys
sys.path.insert(0, {root!r})
import train
from tfhub_classifier.training import trainer
models = []
compile = trainer.Session.compile
trainer.Session.compile = lambda session, *args: models.append(compile(session, *args)) or models[-1]
train.main(sys.argv[1:])
model = models[0]
graphs = [f.graph.as_graph_def() for f in model.train_tf_function._list_all_concrete_functions()]
marked = [f.signature.name for g in graphs for f in g.library.function
          if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
print("JIT", model.jit_compile, "MARKED", " ".join(marked) or "-")
"""


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "no-jit"])
def test_jit_compile_xla_compiles_the_train_step(flags, jit):
    """--jit-compile makes XLA compile the training step (and without it, XLA compiles nothing)."""
    small = ["--epochs", "1", "--seq-length", "16", "--max-examples", "16"] + (["--jit-compile"] if jit else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # lets TensorFlow log "Compiled cluster using XLA!"
    result = subprocess.run([sys.executable, "-c", JIT_RUN.format(root=ROOT), *flags, *QUICK, *small],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    jit_line = [line for line in result.stdout.splitlines() if line.startswith("JIT ")][-1].split()
    assert jit_line[1] == str(jit)  # train.py compiled its model with jit_compile
    assert ("run_step" in jit_line[3]) == jit  # its train step is marked for XLA ...
    assert ("Compiled cluster using XLA!" in result.stderr) == jit  # ... and XLA compiled it


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
