"""The TensorFlow stack, imported in the one order that works, and the devices to run on.

tensorflow_hub's KerasLayer only works with tf-keras (Keras 2), so TF_USE_LEGACY_KERAS
must be set before TensorFlow is first imported (the package's __init__ sets it, with
TensorFlow's other variables), and tensorflow_text must be imported before any preprocessor
is loaded, or its ops (CaseFoldUTF8, ...) are unknown.
"""
import contextlib
import os
import sys

import config
import tfhub_classifier  # sets TF_USE_LEGACY_KERAS and TensorFlow's other variables
from tfhub_classifier import cli, hardware

os.environ.setdefault("TFHUB_CACHE_DIR", config.hub_cache_dir())  # persistent, unlike the default temp dir

import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402,F401  (re-exported for the suite)
import tensorflow_text  # noqa: E402,F401  (registers the preprocessor's ops)

keras = tf.keras


def keras_version():
    """The Keras behind tf.keras: tf-keras on TensorFlow 2.16+, the bundled Keras 2 before."""
    try:
        import tf_keras
        return tf_keras.__version__
    except ImportError:
        import keras as bundled
        return bundled.__version__


if not hasattr(keras, "__internal__") or keras_version().startswith("3."):
    raise ImportError("TensorFlow was imported before tfhub_classifier.runtime could select tf-keras; "
                      "import tfhub_classifier.runtime first or set TF_USE_LEGACY_KERAS=1 "
                      "(and TF_ENABLE_ONEDNN_OPTS=1) before importing TensorFlow")


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process (None if this TensorFlow can't say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return _pywrap_util_port.IsMklEnabled()
    except (ImportError, AttributeError):  # a private module: a TensorFlow without it can't be asked
        return None


if tfhub_classifier.TENSORFLOW_PRELOADED and tfhub_classifier.ONEDNN_CPU \
        and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1" and onednn_enabled() is False:
    print("note: TensorFlow was imported before tfhub_classifier, so its oneDNN kernels stay off and it runs "
          "slower; import tfhub_classifier first, or set TF_ENABLE_ONEDNN_OPTS=1 before importing TensorFlow",
          file=sys.stderr)


def resolve_precision(precision):
    """The precision 'auto' stands for on this machine (docs/benchmarks.md)."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float32"  # float16 is offered on GPUs, but not yet measured there
    return "bfloat16" if hardware.cpu_supports_bfloat16() else "float32"


def set_precision(precision):
    """Rewrite graphs to run matmuls in reduced precision; works on TF-Hub SavedModels,
    which ignore Keras mixed-precision policies. Returns the precision in force."""
    precision = resolve_precision(precision)
    if precision == "float16" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--precision float16 needs a GPU (CPUs run float16 slower than float32); "
                         "use --precision auto or float32")
    _follow_bfloat16(BFLOAT16_FOLLOWERS if precision == "bfloat16" else ())
    tf.config.optimizer.set_experimental_options({
        "auto_mixed_precision_onednn_bfloat16": precision == "bfloat16",
        "auto_mixed_precision": precision == "float16",
    })
    return precision


REDUCED_PRECISION_REWRITES = ("auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision")


def reduced_precision_rewrites():
    """Whether graphs now run through set_precision's bfloat16 or float16 rewrite."""
    options = tf.config.optimizer.get_experimental_options()
    return any(options.get(option, False) for option in REDUCED_PRECISION_REWRITES)


@contextlib.contextmanager
def float32_rewrites():
    """Functions first run inside run in float32 whatever set_precision chose, e.g. a rewrite's check
    against float32 reference values; the setting in force comes back after."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({option: False for option in REDUCED_PRECISION_REWRITES})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {option: before.get(option, False) for option in REDUCED_PRECISION_REWRITES})


# Ops the bfloat16 rewrite leaves in float32, with casts around them, that run in bfloat16 as well:
# oneDNN's layer normalization (model/fusion.py's), which then takes its input as it comes. A user
# keeps it in float32 with TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_REMOVE=_MklLayerNorm.
BFLOAT16_FOLLOWERS = ("_MklLayerNorm",)
_followers_added = set()


def _follow_bfloat16(ops):
    """Make ops the ones this suite adds to the rewrite's list of those that run in their inputs' type
    (grappler reads the variable each time it rewrites a graph); what the user listed there stays."""
    name = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_ADD"
    listed = [op for op in os.environ.get(name, "").split(",") if op and op not in _followers_added]
    _followers_added.clear()
    _followers_added.update(op for op in ops if op not in listed)
    listed += sorted(_followers_added)
    if listed:
        os.environ[name] = ",".join(listed)
    else:
        os.environ.pop(name, None)


def check_devices(require_gpu=False, log=print):
    """Say which GPUs TensorFlow sees; with none, train on the CPU unless told not to."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log(f"GPUs found: {', '.join(g.name for g in gpus)}")
    elif require_gpu:
        raise ValueError("no GPU found and --require-gpu was given; install a CUDA build of "
                         "TensorFlow with a working driver, or drop --require-gpu to train on the CPU")
    else:
        log("No GPU found: training on the CPU, which is much slower (use --max-examples for a quick run).")
    return gpus


_multiworker_strategy = None


def make_strategy(name, collective_timeout_s=0):
    """The tf.distribute strategy for --strategy; 'default' is the single-device one. multiworker: its
    collective ops fail after collective_timeout_s seconds without every worker (0: they wait forever)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; on a machine without, every logical CPU (one unless configured otherwise).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker reads the cluster from TF_CONFIG; set it on "
                             "every worker (see docs/reliability.md)")
        global _multiworker_strategy
        if _multiworker_strategy is None:  # one per process: its collective runtime starts only once
            _multiworker_strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=communication_options(collective_timeout_s))
            cli.joined_cluster()
        return _multiworker_strategy
    raise ValueError(f"unknown --strategy {name!r}; use one of {', '.join(config.STRATEGIES)}")


def replica_layout(strategy):
    """(workers, devices on each) that a tf.distribute strategy trains on."""
    if strategy.num_replicas_in_sync == 1:
        return 1, 1  # the default strategy has no worker_devices to ask
    devices = len(strategy.extended.worker_devices)
    return strategy.num_replicas_in_sync // devices, devices


def communication_options(collective_timeout_s):
    """multiworker's collective ops fail after collective_timeout_s seconds without every worker (0: never)."""
    return tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s or None)


def is_chief(strategy):
    """Whether this worker writes the run's files: task "chief", or worker 0 when the cluster has
    no chief (TensorFlow's rule); a single-machine strategy is its own chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def package_versions():
    """Versions that decide whether a saved model reloads and scores the same."""
    import numpy
    versions = {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                "tf_keras": keras_version(), "tensorflow_hub": hub.__version__,
                "tensorflow_text": tensorflow_text.__version__, "numpy": numpy.__version__}
    return versions
