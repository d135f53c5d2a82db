import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the scripts, config.py and the package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # helpers, tiny_hub, token_graphs, serving_client

# The suite's C++ kernels compile once per test session, into a cache of its own (subprocesses inherit it).
if not os.environ.get("TFHUB_CLASSIFIER_CACHE"):
    os.environ["TFHUB_CLASSIFIER_CACHE"] = tempfile.mkdtemp(prefix="tfhub_classifier_cache_")
    atexit.register(shutil.rmtree, os.environ["TFHUB_CLASSIFIER_CACHE"], ignore_errors=True)

import helpers  # noqa: E402
import tiny_hub  # noqa: E402
from browser import chromium  # noqa: E402, F401  (the headless browser fixture)
from helpers import QUICK  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def attention_kernel():
    """The suite's attention kernel, compiled before any test (None where it can't be), so that no test's
    log depends on whether it was the first to load the kernel."""
    from tfhub_classifier.model import kernel_library
    try:
        return kernel_library.load("fused_attention", log=lambda line: None)
    except kernel_library.Unavailable:
        return None


@pytest.fixture(autouse=True)
def attention_as_tensorflow_ops_without_the_kernel(attention_kernel, request, monkeypatch):
    """Where the kernel can't be built (no compiler), the fused graph of every test but the kernel's own
    runs attention as TensorFlow's ops without looking for the kernel, so no note of its absence changes
    what those tests see."""
    if attention_kernel is None and request.module.__name__.rpartition(".")[2] != "test_attention_kernel":
        from tfhub_classifier.model import attention_kernel as kernel_rewrite
        monkeypatch.setattr(kernel_rewrite, "find", lambda graph: [])


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """--precision is process-wide (a grappler rewrite): one test's bfloat16 must not leak into the next."""
    yield
    if "tfhub_classifier.runtime" in sys.modules:
        sys.modules["tfhub_classifier.runtime"].set_precision("float32")


@pytest.fixture(scope="session")
def hub_models(tmp_path_factory):
    """(preprocessor dir, encoder dir) of the tiny TF-Hub-format models."""
    return tiny_hub.save_hub_models(str(tmp_path_factory.mktemp("hub")))


@pytest.fixture(scope="session")
def archive_url(tmp_path_factory):
    """A file:// URL of a tiny aclImdb_v1.tar.gz."""
    path = tiny_hub.write_archive(str(tmp_path_factory.mktemp("archive") / "aclImdb_v1.tar.gz"))
    return "file://" + path


@pytest.fixture(scope="session")
def big_archive_url(tmp_path_factory):
    """Enough reviews (400 to train on) that an epoch takes seconds: time to kill or signal it mid-way."""
    path = tmp_path_factory.mktemp("big") / "aclImdb_v1.tar.gz"
    return "file://" + tiny_hub.write_archive(str(path), per_class=(200, 8))


def offline_flags(hub_models, archive_url, folder):
    """Command-line flags for an offline training run on the tiny models and archive, writing in folder."""
    preprocess, encoder = hub_models
    return ["--encoder", encoder, "--preprocessor", preprocess, "--dataset-url", archive_url,
            "--data-dir", str(folder / "data"), "--model-dir", str(folder / "models" / "imdb_bert"),
            "--plots-dir", str(folder / "plots")]


@pytest.fixture
def flags(hub_models, archive_url, tmp_path):
    """Command-line flags for a quick, offline training run in tmp_path."""
    return offline_flags(hub_models, archive_url, tmp_path)


@pytest.fixture(scope="session")
def trained(hub_models, archive_url, tmp_path_factory):
    """One training run shared by many tests: ({flag: value}, run record)."""
    import train
    flags = offline_flags(hub_models, archive_url, tmp_path_factory.mktemp("run"))
    record = train.main(flags + QUICK + ["--epochs", "4", "--learning-rate", "5e-3"])
    return dict(zip(flags[::2], flags[1::2])), record


@pytest.fixture(scope="session")
def trained_model(trained):
    """The trained classifier, reloaded from disk."""
    from tfhub_classifier.model import saving
    model, _ = saving.load(trained[0]["--model-dir"])
    return model


@pytest.fixture(scope="session")
def multiclass_dir(hub_models, tmp_path_factory):
    """A multi-class classifier with the head+tail truncation the binary model lacks."""
    from tfhub_classifier import tasks
    return helpers.untrained_classifier(tmp_path_factory.mktemp("multiclass"), *hub_models,
                                        tasks.Task("multiclass", ("negative", "neutral", "positive")), "head+tail")
