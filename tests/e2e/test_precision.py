"""What --jit-compile really does: the train step is XLA-compiled."""
import os
import subprocess
import sys

import pytest
from helpers import QUICK, ROOT

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
