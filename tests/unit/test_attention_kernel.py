"""The suite's fused attention kernel: compiled once for this CPU and kept, the same values as TensorFlow's
ops in every layout and mask a graph gives it, and put in the fused graph in place of each attention in
float32; where it can't be compiled or differs, attention stays TensorFlow's ops with a note."""
import os
import time

import numpy as np
import pytest

from tests.unit.test_attention_chunks import assert_scores_as_before, batch, token_classifier
from tfhub_classifier.runtime import tf


@pytest.fixture
def library(attention_kernel):
    """The kernel's op library (conftest compiles it once a session), or a skip saying why there is none."""
    if attention_kernel is None:
        from tfhub_classifier.model import kernel_library
        try:
            return kernel_library.load("fused_attention", log=lambda line: None)
        except kernel_library.Unavailable as error:
            pytest.skip(f"the kernel can't be built here: {error}")
    return attention_kernel


def attention(query, key, value, mask, scale, heads_axes):
    """The reference: float64 NumPy on [texts, heads, length, size] operands (heads_axes[k] == 2: heads on axis 2)."""
    def heads_first(t, axis):
        return np.swapaxes(t, 1, 2) if axis == 2 else t
    q, k, v = (heads_first(t.astype(np.float64), axis) for t, axis in zip((query, key, value), heads_axes))
    scores = q @ np.swapaxes(k, -1, -2) * scale + mask
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True, initial=-np.inf))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return heads_first(probabilities @ v, heads_axes[3])


def operands(texts, queries, keys, heads, depth, value_depth, heads_axes, mask_shape, seed=0):
    rng = np.random.default_rng(seed)

    def tensor(length, size, axis):
        shape = [texts, heads, length, size] if axis == 1 else [texts, length, heads, size]
        return rng.standard_normal(shape).astype(np.float32)
    # about 30% of the keys masked, as padding is; a mask without a keys axis (one number a row) adds a number
    # softmax ignores, kept small: near -10000 float32 holds a score to only about 0.001
    masked = rng.random(mask_shape) < (0.3 if mask_shape[-1] > 1 else 0.0)
    mask = np.where(masked, -10000.0, rng.standard_normal(mask_shape)).astype(np.float32)
    return (tensor(queries, depth, heads_axes[0]), tensor(keys, depth, heads_axes[1]),
            tensor(keys, value_depth, heads_axes[2]), mask)


# (texts, queries, keys, heads, size, values' size, heads axes, the mask's shape): the tiled path (values'
# size a multiple of 16) across blocks of 60 query rows, keys a multiple of 16 or not, and the other path.
CASES = [
    (2, 70, 70, 3, 32, 32, [2, 2, 2, 2], (2, 1, 1, 70)),  # MiniLM's layout, a key mask per text
    (2, 128, 128, 2, 32, 32, [2, 2, 2, 2], (1, 1, 1, 128)),  # 128 tokens, one key mask for every text
    (1, 130, 130, 2, 64, 64, [1, 1, 1, 2], (1, 1, 130, 130)),  # heads first, the output's taken in
    (3, 5, 37, 2, 16, 16, [2, 1, 2, 1], (3, 2, 5, 37)),  # mixed layouts, a mask per head, keys past queries
    (2, 7, 5, 2, 8, 16, [2, 2, 2, 2], (2, 1, 7, 1)),  # fewer keys than a vector holds, a mask per query
    (2, 9, 9, 2, 8, 8, [2, 2, 2, 2], (2, 1, 9, 9)),  # values' size 8: the other path (Keras' tiny heads)
    (2, 6, 6, 3, 32, 8, [1, 1, 1, 1], (1, 1, 1, 1)),  # a scalar mask, values narrower than keys
    (0, 4, 4, 2, 16, 16, [2, 2, 2, 2], (1, 1, 1, 4)),  # no texts
    (2, 4, 0, 2, 16, 16, [2, 2, 2, 2], (2, 1, 1, 0)),  # no keys: zero, as a product over no keys gives
]


@pytest.mark.parametrize("case", CASES)
def test_the_kernel_computes_scaled_dot_product_attention(library, case):
    *sizes, heads_axes, mask_shape = case
    query, key, value, mask = operands(*sizes, heads_axes, mask_shape)
    got = library.classifier_fused_attention(query, key, value, mask, scale=0.35, heads_axes=heads_axes).numpy()
    expected = attention(query, key, value, mask, np.float32(0.35), heads_axes)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_operands_that_do_not_fit_get_an_error_not_a_crash(library):
    query, key, value, _ = operands(2, 5, 5, 2, 16, 16, [2, 2, 2, 2], (2, 1, 1, 5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="mask does not broadcast"):
        library.classifier_fused_attention(query, key, value, np.zeros([2, 1, 1, 4], np.float32), scale=1.0,
                                           heads_axes=[2, 2, 2, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="texts or heads"):
        library.classifier_fused_attention(query, key[:1], value, np.zeros([1, 1, 1, 1], np.float32), scale=1.0,
                                           heads_axes=[2, 2, 2, 2])
    for run in (lambda f: f(), tf.function(lambda f: f())):  # eagerly (the kernel) and building a graph (its shape)
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="a heads axis is 1 or 2"):
            run(lambda: library.classifier_fused_attention(query, key, value, np.zeros([1, 1, 1, 1], np.float32),
                                                           scale=1.0, heads_axes=[2, 2, 3, 2]))


@pytest.mark.parametrize("value_size", [8, 32])  # the other path, and the tiled one
def test_a_nan_score_makes_its_row_nan_as_softmax_does(library, value_size):
    query, key, value, mask = operands(1, 70, 70, 2, 32, value_size, [2, 2, 2, 2], (1, 1, 70, 70))
    mask[0, 0, 3, 40] = np.nan
    got = library.classifier_fused_attention(query, key, value, mask, scale=0.2, heads_axes=[2, 2, 2, 2]).numpy()
    assert np.isnan(got[0, 3]).all() and not np.isnan(np.delete(got, 3, axis=1)).any()


def graph_ops(fused):
    return {node.op for node in fused.function.graph.as_graph_def().node}


@pytest.mark.parametrize("style", ["einsum", "matmul"])
@pytest.mark.parametrize("heads", [2, 1])  # heads of 8 (the other path) and of 16 (the tiled one, as BERTs' 32 or 64)
def test_each_attention_of_a_float32_graph_runs_as_one_kernel_and_scores_as_before(library, style, heads):
    """Keras' Einsum attention and MiniLM's BatchMatMul one (with the transposes of its heads around it)."""
    from tfhub_classifier.model import fusion
    function = token_classifier(style, heads=heads)
    fused = fusion.fuse(function)
    assert (fused.attention_kernels, fused.attentions_in_chunks) == (2, 0)
    assert "ClassifierFusedAttention" in graph_ops(fused)
    assert not graph_ops(fused) & {"Softmax", "Transpose", "BatchMatMulV2"}
    for rows, width in ((1, 1), (5, 9), (4, 70), (0, 4), (3, 130)):
        tokens = batch(rows, width)
        expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
        # the same arithmetic in another order: logits of up to about 60 differ in float32's last digits
        np.testing.assert_allclose(fused(tokens).numpy(), expected, rtol=2e-5, atol=1e-5)


def test_in_bfloat16_attention_stays_tensorflows_in_chunks(library):
    from tfhub_classifier import runtime
    from tfhub_classifier.model import fusion
    runtime.set_precision("bfloat16")  # the kernel is float32's: the bfloat16 rewrite would cast around it
    fused = fusion.fuse(token_classifier("matmul"))
    assert (fused.attention_kernels, fused.attentions_in_chunks) == (0, 2)


def test_an_attention_the_kernel_would_compute_differently_stays_as_it_was(library, monkeypatch):
    """The check each replacement passes: here the kernel is handed twice the attention's scale."""
    from tfhub_classifier.model import attention_kernel, fusion
    find = attention_kernel.find

    def doubled(graph):
        matches = find(graph)
        for match in matches:
            match.scale *= 2
        return matches
    monkeypatch.setattr(attention_kernel, "find", doubled)
    function = token_classifier("matmul")
    notes = []
    fused = fusion.fuse(function, log=notes.append)
    assert (fused.attention_kernels, fused.attentions_in_chunks) == (0, 2)
    assert notes == ["note: 2 of 2 attentions stay TensorFlow's ops: ValueError: the kernel differs from the "
                     "attention's nodes on probe values"]
    assert_scores_as_before(function, fused, batch(3, 9))


# A stand-in compiler: answers --version, writes its -o file (half a library), then exits as what follows says.
FAKE_COMPILER = ('#!/bin/sh\nfor a; do [ "$a" = --version ] && exit 0; done\n'
                 'while [ "$#" -gt 1 ] && [ "$1" != -o ]; do shift; done\necho half a library > "$2"\n')


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache, and a process that has loaded no kernel library yet (as far as load() knows)."""
    from tfhub_classifier.model import kernel_library
    monkeypatch.setenv(kernel_library.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(kernel_library, "_loaded", {})
    return tmp_path / "cache" / "kernels"


def test_without_a_compiler_attention_stays_tensorflows_with_a_note_naming_the_fix(fresh_cache, monkeypatch):
    from tfhub_classifier.model import fusion
    monkeypatch.setenv("CXX", "no-such-compiler")
    notes = []
    function = token_classifier("matmul")
    fused = fusion.fuse(function, log=notes.append)
    assert (fused.attention_kernels, fused.attentions_in_chunks) == (0, 2)
    assert notes == ["note: attention runs as TensorFlow's ops: no C++ compiler 'no-such-compiler' to build its "
                     "kernel: install g++ (apt-get install g++) or set CXX to one"]
    assert_scores_as_before(function, fused, batch(3, 9))


def test_a_failed_compile_says_so_in_one_line_and_leaves_nothing_behind(fresh_cache, tmp_path, monkeypatch):
    compiler = tmp_path / "failing-c++"
    compiler.write_text(FAKE_COMPILER + 'echo "kernel.cc:1:1: error: a made-up failure" >&2\nexit 1\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", f"{compiler} -O1")  # a command with flags, as CXX may be
    from tfhub_classifier.model import kernel_library
    with pytest.raises(kernel_library.Unavailable) as failed:
        kernel_library.load("fused_attention", log=lambda line: None)
    assert str(failed.value) == (f"{compiler} -O1 could not compile its kernel (kernel.cc:1:1: error: a made-up "
                                 "failure): set CXX to a C++17 compiler (apt-get install g++)")
    library = os.path.basename(kernel_library.library_path("fused_attention"))
    assert os.listdir(fresh_cache) == [f"{library}.failed"]  # its half-written output is gone; the reason is kept


def test_a_library_tensorflow_cannot_load_is_removed_and_said_so(fresh_cache, tmp_path, monkeypatch):
    compiler = tmp_path / "junk-c++"
    compiler.write_text(FAKE_COMPILER + "exit 0\n")  # "compiles" a file that is no library
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    from tfhub_classifier.model import kernel_library
    with pytest.raises(kernel_library.Unavailable, match=r"^\S+junk-c\+\+ built its kernel, but TensorFlow can't "
                                                        r"load it \(.+\): set CXX to a C\+\+17 compiler"):
        kernel_library.load("fused_attention", log=lambda line: None)
    assert os.listdir(fresh_cache) == []  # nothing kept: a library that didn't load may load in another process


def test_a_failed_build_is_not_tried_again_by_the_next_process_for_a_day(fresh_cache, tmp_path, monkeypatch):
    """Each try costs seconds of compiling: a later process (here: the same one, forgetting what it loaded)
    gives the earlier build's reason without running the compiler, until the note is deleted or a day old."""
    calls = tmp_path / "calls"
    compiler = tmp_path / "failing-c++"
    compiler.write_text(FAKE_COMPILER.replace("while", f"echo compiled >> {calls}\nwhile", 1)
                        + 'echo "kernel.cc:1:1: error: a made-up failure" >&2\nexit 1\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    from tfhub_classifier.model import kernel_library

    def load_in_a_new_process():
        monkeypatch.setattr(kernel_library, "_loaded", {})
        with pytest.raises(kernel_library.Unavailable) as failed:
            kernel_library.load("fused_attention", log=lambda line: None)
        return str(failed.value), calls.read_text().count("compiled")
    first, compiles = load_in_a_new_process()
    assert compiles == 1 and "could not compile its kernel (kernel.cc:1:1: error: a made-up failure)" in first
    note = kernel_library.library_path("fused_attention") + ".failed"
    assert load_in_a_new_process() == (f"{first} (an earlier build's; delete {note} to try again)", 1)
    day_old = time.time() - kernel_library.RETRY_AFTER_S - 1
    os.utime(note, (day_old, day_old))
    assert load_in_a_new_process() == (first, 2)
    os.remove(note)
    assert load_in_a_new_process() == (first, 3)
    with open(kernel_library.library_path("fused_attention"), "wb") as f:  # a library another process built
        f.write(b"junk")
    monkeypatch.setattr(kernel_library.tf, "load_op_library", lambda path: f"library at {path}")
    monkeypatch.setattr(kernel_library, "_loaded", {})
    assert kernel_library.load("fused_attention") == f"library at {kernel_library.library_path('fused_attention')}"


def test_a_cache_that_cannot_be_written_compiles_into_a_scratch_folder_it_removes(fresh_cache, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TFHUB_CLASSIFIER_CACHE", str(tmp_path / "file"))  # a folder under a file: never writable
    compiler = tmp_path / "junk-c++"
    compiler.write_text(FAKE_COMPILER + "exit 0\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    import tempfile

    from tfhub_classifier.model import kernel_library
    scratch = tmp_path / "scratch"

    def scratch_folder(**options):
        scratch.mkdir()
        return str(scratch)
    monkeypatch.setattr(tempfile, "mkdtemp", scratch_folder)
    notes = []
    with pytest.raises(kernel_library.Unavailable):  # the junk then fails to load: the scratch folder still goes
        kernel_library.load("fused_attention", log=notes.append)
    assert notes[0].startswith(f"Compiling the fused_attention kernel for this CPU: {tmp_path / 'file'}")
    assert notes[0].endswith("(set TFHUB_CLASSIFIER_CACHE to a folder only you can write) ...")
    assert not scratch.exists()


def test_a_kept_library_others_can_write_is_not_loaded(fresh_cache, tmp_path, monkeypatch):
    """A library another user could have replaced would run their code in this process: one whose file or
    folder others can write is left alone and the kernel compiled into a scratch folder; what the suite
    compiles itself is kept writable by its owner alone, whatever the umask."""
    from tfhub_classifier.model import kernel_library
    compiler = tmp_path / "junk-c++"
    compiler.write_text(FAKE_COMPILER + "exit 0\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    loaded = []
    monkeypatch.setattr(kernel_library.tf, "load_op_library", lambda path: loaded.append(path) or path)
    kept = kernel_library.library_path("fused_attention")
    previous = os.umask(0o002)  # a umask that leaves files group-writable
    try:
        assert kernel_library.load("fused_attention", log=lambda line: None) == kept
    finally:
        os.umask(previous)
    assert os.stat(kept).st_mode & 0o777 == 0o755 and os.stat(fresh_cache).st_mode & 0o022 == 0
    for planted in (kept, str(fresh_cache)):  # the file, then its folder, writable by others
        os.chmod(kept, 0o755)
        os.chmod(fresh_cache, 0o755)
        os.chmod(planted, 0o777)
        monkeypatch.setattr(kernel_library, "_loaded", {})
        notes = []
        library = kernel_library.load("fused_attention", log=notes.append)
        assert library != kept and os.path.dirname(kept) not in library, library
        assert notes[0] == (f"note: {kept} is not loaded: another user owns it or its folder, or can write them; "
                            "compiling the fused_attention kernel for this run alone (set TFHUB_CLASSIFIER_CACHE "
                            "to a folder only you can write)")
    assert kept not in loaded[1:]


def test_the_cache_key_names_the_compiler_and_the_cpu(fresh_cache, monkeypatch):
    from tfhub_classifier.model import kernel_library
    monkeypatch.setenv("CXX", "g++")
    with_gxx = kernel_library.library_path("fused_attention")
    monkeypatch.setenv("CXX", "another-c++")
    assert kernel_library.library_path("fused_attention") != with_gxx
    monkeypatch.setenv("CXX", "g++")
    monkeypatch.setattr(kernel_library, "_cpu", lambda: "another CPU")
    assert kernel_library.library_path("fused_attention") != with_gxx


def test_a_compile_that_failed_is_not_tried_again_in_the_same_process(fresh_cache, monkeypatch):
    from tfhub_classifier.model import kernel_library
    monkeypatch.setenv("CXX", "no-such-compiler")
    for _ in range(2):
        with pytest.raises(kernel_library.Unavailable, match="no C\\+\\+ compiler"):
            kernel_library.load("fused_attention", log=lambda line: None)
    monkeypatch.setattr(kernel_library, "_compiled", lambda *args: pytest.fail("compiled again"))
    with pytest.raises(kernel_library.Unavailable, match="no C\\+\\+ compiler"):
        kernel_library.load("fused_attention", log=lambda line: None)


LOAD = """
import os, sys
from tfhub_classifier.model import kernel_library
path = kernel_library.library_path("fused_attention")
if sys.argv[1] == "damaged":
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"not a library")
library = kernel_library.load("fused_attention")
print(library.classifier_fused_attention([[[[1.0]]]], [[[[1.0]]]], [[[[2.0]]]], [[[[0.0]]]], scale=1.0,
                                         heads_axes=[2, 2, 2, 2]).numpy().item())
"""


def load_in_a_new_process(cache, how):
    """The stdout lines of a process that loads the kernel from cache ("damaged": after writing junk in its place)."""
    import subprocess
    import sys
    environment = dict(os.environ, TFHUB_CLASSIFIER_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", LOAD, how], capture_output=True, text=True, env=environment,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_a_new_process_loads_the_kept_library_without_compiling(library):
    """(A process loads the kernel's op once, so this runs in processes of their own.)"""
    from tfhub_classifier.model import kernel_library
    assert load_in_a_new_process(kernel_library.cache_folder(), "kept") == ["2.0"]  # one key: its value, no note


def test_a_damaged_library_in_the_cache_is_compiled_again(library, tmp_path):
    lines = load_in_a_new_process(tmp_path, "damaged")
    assert lines[0].startswith("note: ") and "could not be loaded" in lines[0]
    assert lines[0].endswith("; compiling it again") and lines[1].startswith("Compiling the fused_attention kernel")
    assert lines[2:] == ["2.0"]
