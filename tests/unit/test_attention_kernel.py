"""The suite's fused attention kernel: compiled once for this CPU and kept, the same values as TensorFlow's
ops in every layout and mask a graph gives it, and put in the fused graph in place of each attention in
float32; where it can't be compiled or differs, attention stays TensorFlow's ops with a note."""
import os

import numpy as np
import pytest

from tests.unit.test_attention_chunks import assert_scores_as_before, batch, token_classifier
from tfhub_classifier.runtime import tf


@pytest.fixture(scope="module")
def library():
    from tfhub_classifier.model import kernel_library
    try:
        return kernel_library.load("fused_attention")
    except kernel_library.Unavailable as error:
        pytest.skip(f"the kernel can't be built here: {error}")


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
    mask = np.where(rng.random(mask_shape) < 0.3, -10000.0, rng.standard_normal(mask_shape)).astype(np.float32)
    return (tensor(queries, depth, heads_axes[0]), tensor(keys, depth, heads_axes[1]),
            tensor(keys, value_depth, heads_axes[2]), mask)


# (texts, queries, keys, heads, size, values' size, heads axes, the mask's shape): the tiled path (values'
# size a multiple of 16) across blocks of 60 query rows and keys not a multiple of 16, and the other path.
CASES = [
    (2, 70, 70, 3, 32, 32, [2, 2, 2, 2], (2, 1, 1, 70)),  # MiniLM's layout, a key mask per text
    (1, 130, 130, 2, 64, 64, [1, 1, 1, 2], (1, 1, 130, 130)),  # heads first, the output's taken in
    (3, 5, 37, 2, 16, 16, [2, 1, 2, 1], (3, 2, 5, 37)),  # mixed layouts, a mask per head, keys past queries
    (2, 9, 9, 2, 8, 8, [2, 2, 2, 2], (2, 1, 9, 9)),  # values' size 8: the other path (Keras' tiny heads)
    (2, 6, 6, 3, 32, 8, [1, 1, 1, 1], (1, 1, 1, 1)),  # a scalar mask, values narrower than keys
    (0, 4, 4, 2, 16, 16, [2, 2, 2, 2], (1, 1, 1, 4)),  # no texts
    (2, 4, 0, 2, 16, 16, [2, 2, 2, 2], (2, 1, 1, 0)),  # no keys: zero, as TensorFlow's product gives
]


@pytest.mark.parametrize("case", CASES)
def test_the_kernel_computes_what_tensorflows_ops_do(library, case):
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


def graph_ops(fused):
    return {node.op for node in fused.function.graph.as_graph_def().node}


@pytest.mark.parametrize("style", ["einsum", "matmul"])
def test_each_attention_of_a_float32_graph_runs_as_one_kernel_and_scores_as_before(library, style):
    """Keras' Einsum attention and MiniLM's BatchMatMul one (with the transposes of its heads around it)."""
    from tfhub_classifier.model import fusion
    function = token_classifier(style)
    fused = fusion.fuse(function)
    assert (fused.attention_kernels, fused.attentions) == (2, 0)
    assert "ClassifierFusedAttention" in graph_ops(fused)
    assert not graph_ops(fused) & {"Softmax", "Transpose", "BatchMatMulV2"}
    for rows, width in ((1, 1), (5, 9), (4, 70), (0, 4), (3, 130)):
        assert_scores_as_before(function, fused, batch(rows, width), atol=2e-4)  # logits up to ~60: float32 order


def test_in_bfloat16_attention_stays_tensorflows_in_chunks(library):
    from tfhub_classifier import runtime
    from tfhub_classifier.model import fusion
    runtime.set_precision("bfloat16")  # the kernel is float32's: the bfloat16 rewrite would cast around it
    fused = fusion.fuse(token_classifier("matmul"))
    assert (fused.attention_kernels, fused.attentions) == (0, 2)


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
    fused = fusion.fuse(function)
    assert (fused.attention_kernels, fused.attentions) == (0, 2)
    assert_scores_as_before(function, fused, batch(3, 9))


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
    assert (fused.attention_kernels, fused.attentions) == (0, 2)
    assert notes == ["note: attention runs as TensorFlow's ops: no C++ compiler 'no-such-compiler' to build its "
                     "kernel: install g++ (apt-get install g++) or set CXX to one"]
    assert_scores_as_before(function, fused, batch(3, 9))


def test_a_failed_compile_says_so_in_one_line_and_leaves_nothing_behind(fresh_cache, monkeypatch):
    from tfhub_classifier.model import kernel_library
    monkeypatch.setenv("CXX", "false")  # a compiler that fails without a message
    with pytest.raises(kernel_library.Unavailable, match=r"^false could not compile its kernel: no message$"):
        kernel_library.load("fused_attention", log=lambda line: None)
    assert os.listdir(fresh_cache) == []


def test_the_library_is_compiled_once_then_loaded_from_the_cache(fresh_cache, monkeypatch):
    from tfhub_classifier.model import kernel_library
    notes = []
    kernel_library.load("fused_attention", log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("Compiling the fused_attention kernel for this CPU")
    kept = os.listdir(fresh_cache)
    assert len(kept) == 1 and kept[0].endswith(".so")
    monkeypatch.setattr(kernel_library, "_loaded", {})  # as a new process
    monkeypatch.setenv("CXX", "no-such-compiler-needed")
    assert kernel_library.library_path("fused_attention") != str(fresh_cache / kept[0])  # the compiler is in the key
    monkeypatch.delenv("CXX")
    kernel_library.load("fused_attention", log=notes.append)
    assert len(notes) == 1 and os.listdir(fresh_cache) == kept


def test_a_damaged_library_in_the_cache_is_compiled_again(tmp_path):
    """In a process of its own: a process loads the kernel's op once, so this one must not have yet."""
    import subprocess
    import sys
    code = """
import os
from tfhub_classifier.model import kernel_library
path = kernel_library.library_path("fused_attention")
os.makedirs(os.path.dirname(path))
with open(path, "wb") as f:
    f.write(b"not a library")
library = kernel_library.load("fused_attention")
print(library.classifier_fused_attention([[[[1.0]]]], [[[[1.0]]]], [[[[2.0]]]], [[[[0.0]]]], scale=1.0,
                                         heads_axes=[2, 2, 2, 2]).numpy().item())
"""
    environment = dict(os.environ, TFHUB_CLASSIFIER_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("note: ") and "could not be loaded" in lines[0]
    assert lines[0].endswith("; compiling it again") and lines[1].startswith("Compiling the fused_attention kernel")
    assert lines[-1] == "2.0"  # one key, its value
