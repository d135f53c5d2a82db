"""One line for every error, found early: out of memory, unexpected errors, a waiting predict.py, and
safe extraction on every Python the suite supports."""
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from helpers import ROOT, unloadable_model_dir

import evaluate
import predict
import train
from tfhub_classifier import cli
from tfhub_classifier.data import imdb
from tfhub_classifier.data.split import Split

OOM_MESSAGE = ("Graph execution error:\n\nDetected at node 'encoder/add'\n"
               "OOM when allocating tensor with shape[8,64]")
DEBUG_HINT = "(run again with --debug, or BERT_SUITE_DEBUG=1, to see the traceback)"


@pytest.fixture
def model_dir(tmp_path):
    """A folder that passes cli.require_model_dir; tests stub out the loading."""
    return unloadable_model_dir(tmp_path / "model")


@pytest.fixture(autouse=True)
def no_debug_from_the_environment(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)


def raising(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def out_of_memory():
    import tensorflow as tf
    return tf.errors.ResourceExhaustedError(None, None, OOM_MESSAGE)


@pytest.mark.parametrize("script", [evaluate, predict])
def test_out_of_memory_in_scoring_names_batch_size(script, model_dir, monkeypatch, capsys):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(out_of_memory()))
    argv = ["--model-dir", model_dir] + (["great film"] if script is predict else [])
    assert cli.run(script.main, argv) == cli.EXIT_ERROR
    line = one_error_line(capsys)
    assert "out of memory" in line and "OOM when allocating tensor with shape[8,64]" in line
    assert "lower --batch-size" in line and "--eval-batch-size" not in line and "--seq-length" not in line


@pytest.mark.parametrize("error", [out_of_memory, MemoryError], ids=["tensorflow", "numpy"])
def test_out_of_memory_mid_evaluation(error, model_dir, monkeypatch, capsys):
    """TensorFlow's ResourceExhaustedError and Python's MemoryError (scoring's NumPy arrays) alike."""
    from tfhub_classifier.inference import engines, scoring
    monkeypatch.setattr(engines, "load", lambda *args, **kwargs: (None, {}, "float32"))
    test = Split(["a review"], np.zeros(1, dtype=np.int32), ["0_1.txt"], imdb.CLASS_NAMES, "binary")
    monkeypatch.setattr(imdb, "load_splits", lambda *args, **kwargs: (None, None, test))
    monkeypatch.setattr(scoring, "logits_of", raising(error()))
    assert cli.run(evaluate.main, ["--model-dir", model_dir]) == cli.EXIT_ERROR
    assert "lower --batch-size" in one_error_line(capsys)


def test_out_of_memory_in_training_names_all_three_flags(monkeypatch, capsys):
    from tfhub_classifier.training import trainer
    monkeypatch.setattr(trainer, "run", raising(out_of_memory()))
    assert cli.run(train.main, []) == cli.EXIT_ERROR
    line = one_error_line(capsys)
    for flag in ("--batch-size", "--eval-batch-size", "--seq-length"):
        assert flag in line, line


def test_out_of_memory_is_known_by_name_without_tensorflow(capsys):
    class ResourceExhaustedError(RuntimeError):
        pass

    def main(argv):
        raise ResourceExhaustedError("OOM when allocating tensor")
    assert cli.run(main, []) == cli.EXIT_ERROR
    assert "out of memory" in one_error_line(capsys)


# A worker whose peer was lost: a thread that never ends (as TensorFlow's input pipeline threads can stay
# blocked on the lost peer) would hold up the interpreter's exit, after the error line was printed.
LOST_PEER_WITH_A_BLOCKED_THREAD = r"""
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                      "task": {"type": "worker", "index": 0}})
from tfhub_classifier import cli
from tfhub_classifier.runtime import tf
from tfhub_classifier.training import cluster

def main(argv):
    cli.joined_cluster()  # as runtime.make_strategy does for --strategy multiworker, before any peer can be lost
    threading.Thread(target=threading.Event().wait).start()
    print(" 5/20 [======>......] - loss: 0.6931", end="")
    raise cluster.lost_worker(tf.errors.DeadlineExceededError(None, None, "Collective has timed out"), 20,
                              "/models/m.training")
cli.exit_with(main)
"""


def test_a_lost_worker_ends_the_process_at_once_with_its_output_flushed():
    result = subprocess.run([sys.executable, "-c", LOST_PEER_WITH_A_BLOCKED_THREAD, ROOT], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == cli.EXIT_ERROR, result.stderr[-2000:]
    assert result.stdout == " 5/20 [======>......] - loss: 0.6931\n"  # the progress bar's line closed
    assert result.stderr.strip().splitlines()[-1].startswith("error: worker 1 (127.0.0.1:2) was lost mid-training")


# A script that fails mid-epoch, Keras' progress bar's line still open, its output and errors on one pipe
# as in a terminal; stdout is block-buffered there, as when redirected to a file.
FAILS_MID_PROGRESS_BAR = r"""
import sys
sys.path.insert(0, sys.argv[1])
from tfhub_classifier import cli

def main(argv):
    print("Epoch 1/2")
    sys.stdout.write("\r 5/20 [======>......] - ETA: 3s - loss: 0.6931")
    raise {raised}
cli.exit_with(main)
"""


@pytest.mark.parametrize("raised, said", [("ValueError('lower --batch-size')", "error: lower --batch-size"),
                                          ("KeyboardInterrupt()", "interrupted: nothing was overwritten")])
def test_an_error_mid_progress_bar_starts_a_line_of_its_own(raised, said):
    result = subprocess.run([sys.executable, "-c", FAILS_MID_PROGRESS_BAR.format(raised=raised), ROOT],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    lines = result.stdout.decode().split("\n")  # bytes: text mode would read the bar's \r as a line end
    assert lines[:2] == ["Epoch 1/2", "\r 5/20 [======>......] - ETA: 3s - loss: 0.6931"], lines
    assert lines[2].startswith(said) and lines[3:] == [""], lines


def test_an_error_after_whole_lines_adds_no_blank_line(capsys):
    def main(argv):
        print("Loading the model ...")
        raise ValueError("no model at --model-dir m")
    assert cli.run(main, []) == cli.EXIT_ERROR
    printed = capsys.readouterr()
    assert printed.out == "Loading the model ...\n" and printed.err == "error: no model at --model-dir m\n"


# Any error in a cluster's worker (here a refused relaunch) with the same blocked thread, no TensorFlow needed.
CLUSTER_WORKER_WITH_A_BLOCKED_THREAD = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from tfhub_classifier import cli

def main(argv):
    cli.joined_cluster()
    threading.Thread(target=threading.Event().wait).start()
    raise ValueError("the workers would start from different points")
cli.exit_with(main)
"""


def test_any_error_in_a_cluster_worker_ends_the_process_at_once():
    result = subprocess.run([sys.executable, "-c", CLUSTER_WORKER_WITH_A_BLOCKED_THREAD, ROOT], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == cli.EXIT_ERROR
    assert result.stderr.strip() == "error: the workers would start from different points"


def test_run_reports_an_error_in_a_cluster_worker_and_returns(monkeypatch, capsys):
    """Only a script's own end (exit_with) ends the process: run() returns, as its in-process callers expect."""
    monkeypatch.setattr(cli, "_in_cluster", True)

    def main(argv):
        raise ValueError("worker 1 was lost")
    assert cli.run(main, []) == cli.EXIT_ERROR
    assert one_error_line(capsys) == "error: worker 1 was lost"


@pytest.mark.parametrize("script", [evaluate, predict])
def test_unexpected_error_is_one_line_pointing_at_debug(script, model_dir, monkeypatch, capsys):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(RuntimeError("boom\nsecond line")))
    argv = ["--model-dir", model_dir] + (["great film"] if script is predict else [])
    assert cli.run(script.main, argv) == cli.EXIT_UNEXPECTED
    assert one_error_line(capsys) == f"error: RuntimeError: boom {DEBUG_HINT}"


@pytest.mark.parametrize("script", [evaluate, predict])
def test_debug_flag_shows_the_traceback(script, model_dir, monkeypatch):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(RuntimeError("boom")))
    argv = ["--model-dir", model_dir, "--debug"] + (["great film"] if script is predict else [])
    with pytest.raises(RuntimeError, match="boom"):
        cli.run(script.main, argv)


def test_debug_variable_shows_the_traceback(model_dir, monkeypatch, capsys):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(KeyError("saved_model")))
    argv = ["--model-dir", model_dir, "great film"]
    assert cli.run(predict.main, argv) == cli.EXIT_UNEXPECTED
    assert one_error_line(capsys) == f"error: KeyError: 'saved_model' {DEBUG_HINT}"
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(KeyError):
        cli.run(predict.main, argv)


class Terminal:
    """Standard input as a terminal with a user who never types."""

    def isatty(self):
        return True

    def __getattr__(self, name):
        raise AssertionError(f"predict.py used stdin.{name} instead of saying how to pass reviews")


def test_predict_with_a_terminal_on_stdin_says_how_to_pass_reviews(model_dir, monkeypatch, capsys):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(AssertionError("the model was loaded")))
    monkeypatch.setattr(sys, "stdin", Terminal())
    assert cli.run(predict.main, ["--model-dir", model_dir]) == cli.EXIT_ERROR
    line = one_error_line(capsys)
    for way in ("arguments", "--file", "pipe"):
        assert way in line, line


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_predict_from_the_shell_with_a_terminal_does_not_wait(model_dir):
    primary, terminal = os.openpty()
    try:
        result = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--model-dir", model_dir],
                                stdin=terminal, capture_output=True, text=True, timeout=120)
    finally:
        os.close(primary)
        os.close(terminal)
    assert result.returncode == cli.EXIT_ERROR
    assert len(result.stderr.strip().splitlines()) == 1 and "pipe" in result.stderr


def write_tar(path, *extra):
    """A tiny aclImdb_v1.tar.gz with one review per split and label, then the extra TarInfo members."""
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for label in imdb.CLASS_NAMES:
                info = tarfile.TarInfo(f"aclImdb/{split}/{label}/0_1.txt")
                info.size = 4
                archive.addfile(info, io.BytesIO(b"good"))
        for info in extra:
            archive.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    return str(path)


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.fixture(params=["data_filter", "without_filter"])
def python_tarfile(request, monkeypatch):
    """tarfile as this Python has it, then as Python 3.10.0-3.10.11 has it: no filter= argument."""
    if request.param == "without_filter":
        extractall = tarfile.TarFile.extractall

        def old_extractall(self, path=".", members=None, *, numeric_owner=False):
            return extractall(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")
        monkeypatch.delattr(tarfile, "data_filter")
        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    return request.param


def test_a_sound_archive_extracts(python_tarfile, tmp_path):
    archive = write_tar(tmp_path / "aclImdb_v1.tar.gz")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    root = imdb._extract(archive, str(data_dir))
    assert (tmp_path / "data" / "aclImdb" / "test" / "pos" / "0_1.txt").read_text() == "good"
    assert os.listdir(data_dir) == ["aclImdb"] and root.endswith("aclImdb")
UNSAFE = {"parent": member("../evil"),
          "symlink_out": member("aclImdb/escape", tarfile.SYMTYPE, "../../evil"),
          "absolute_symlink": member("aclImdb/escape", tarfile.SYMTYPE, "/etc/passwd"),
          "hardlink_out": member("aclImdb/escape", tarfile.LNKTYPE, "../evil"),
          "device": member("aclImdb/tty", tarfile.CHRTYPE)}


@pytest.mark.parametrize("unsafe", UNSAFE, ids=list(UNSAFE))
def test_an_unsafe_member_is_refused(python_tarfile, unsafe, tmp_path):
    bad = UNSAFE[unsafe]
    archive = write_tar(tmp_path / "aclImdb_v1.tar.gz", bad)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(ValueError, match=f"unsafe member '{bad.name}'.*--dataset-url"):
        imdb._extract(archive, str(data_dir))
    assert os.listdir(data_dir) == []  # nothing extracted, no staging folder left
    assert not (tmp_path / "evil").exists()


def test_an_absolute_member_is_refused_without_filter(tmp_path, monkeypatch):
    """filter="data" strips the leading '/', so only the hand check meets an absolute path."""
    monkeypatch.delattr(tarfile, "data_filter")
    archive = write_tar(tmp_path / "aclImdb_v1.tar.gz", member(str(tmp_path / "evil")))
    with tarfile.open(archive) as opened, pytest.raises(ValueError, match="unsafe member"):
        imdb.extract_safely(opened, opened.getmembers(), str(tmp_path / "data"))
    assert not (tmp_path / "evil").exists()


def test_unsafe_archive_from_the_command_line_is_one_line(model_dir, tmp_path, monkeypatch, capsys):
    from tfhub_classifier.inference import engines
    monkeypatch.setattr(engines, "load", lambda *args, **kwargs: (None, {}, "float32"))
    archive = write_tar(tmp_path / "aclImdb_v1.tar.gz", member("../evil"))
    argv = ["--model-dir", model_dir, "--data-dir", str(tmp_path / "data"), "--dataset-url", "file://" + archive]
    assert cli.run(evaluate.main, argv) == cli.EXIT_ERROR
    assert "unsafe member '../evil'" in one_error_line(capsys)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("script", [evaluate, predict])
def test_a_threshold_outside_0_1_is_refused_before_the_model_loads(script, model_dir, monkeypatch, capsys):
    from tfhub_classifier.model import saving
    monkeypatch.setattr(saving, "load_model", raising(AssertionError("the model must not load")))
    argv = ["--model-dir", model_dir, "--threshold", "1.5"] + (["great film"] if script is predict else [])
    assert cli.run(script.main, argv) == cli.EXIT_ERROR
    assert one_error_line(capsys) == "error: --threshold must be between 0 and 1, got 1.5"
