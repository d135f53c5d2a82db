"""Fine-tune a TF-Hub BERT encoder to classify text: the library behind train.py, evaluate.py, predict.py,
serve.py and export.py.

TensorFlow reads these variables once, when it first loads, so they are set here, before any module of
the package can import it."""
import os
import platform
import sys

TENSORFLOW_PRELOADED = "tensorflow" in sys.modules  # then the variables below come too late for it

# tensorflow_hub's KerasLayer only works with tf-keras (Keras 2).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ start-up chatter out of the user's way
# TensorFlow turns its oneDNN kernels on by itself only on some x86 CPUs (AVX512-VNNI, AVX512-BF16,
# AVX-VNNI or AMX); they trained and scored faster on an AVX2 CPU too (docs/benchmarks.md#onednn-on-every-x86-cpu),
# and the fused graph's kernels are oneDNN's. TF_ENABLE_ONEDNN_OPTS=0 turns them off.
ONEDNN_CPU = platform.machine().lower() in ("x86_64", "amd64")  # measured on x86 only
if ONEDNN_CPU:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
