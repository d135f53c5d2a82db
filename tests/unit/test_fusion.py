"""The fused graph (--engine fused): dense layers, GELU and layer normalization rewritten into the ops
oneDNN fuses, scoring as the graph it came from; what only looks like GELU or layer normalization is left alone."""
import os
import subprocess
import sys

import helpers
import numpy as np
import pytest
from token_graphs import BERT_EPSILON, VOCAB, WIDTH, batches, executed_ops, token_classifier

import tfhub_classifier
from tfhub_classifier.data import tokenization
from tfhub_classifier.runtime import keras, tf


class DoubledVarianceNorm(keras.layers.Layer):
    """Layer normalization's ops and weights, but with the variance doubled: not layer normalization."""

    def build(self, shape):
        self.gamma = self.add_weight(name="gamma", shape=shape[-1:], initializer="random_normal")
        self.beta = self.add_weight(name="beta", shape=shape[-1:], initializer="random_normal")

    def call(self, x):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=-1, keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance * 2.0 + 1e-6) * self.gamma + self.beta


def assert_scores_as_before(function, fused):
    for tokens in batches():
        expected = function({key: tf.constant(value) for key, value in tokens.items()})
        np.testing.assert_allclose(fused(tokens).numpy(), expected.numpy(), atol=1e-5)


def test_dense_layers_gelu_and_layer_norms_are_fused_and_score_as_before():
    from tfhub_classifier.model import fusion
    function = token_classifier()
    fused = fusion.fuse(function)
    # The three Einsum and two Dense layers on [batch, length, ...] (not the head's, already two-axis), both
    # GELUs, both layer normalizations.
    assert (fused.dense_layers, fused.gelus, fused.layer_norms) == (5, 2, 2)
    assert_scores_as_before(function, fused)


def test_the_fused_graph_holds_the_fusable_ops_and_no_reshape_between_matmul_and_bias():
    from tfhub_classifier.model import fusion
    graph = fusion.Graph(fusion.frozen_graph(token_classifier()))
    before = [node.op for node in graph.graph_def.node]
    assert "_MklLayerNorm" not in before and "Erfc" in before and before.count("Einsum") == 3
    graph = fusion.Graph(fusion.apply(graph.graph_def, fusion.fuse_dense(graph)))
    after = fusion.Graph(fusion.apply(graph.graph_def, fusion.fuse_einsum(graph)))
    ops = [node.op for node in after.graph_def.node]
    assert "Einsum" not in ops and "Erfc" not in ops and ops.count("BiasAdd") == 6  # the head's too
    for node in after.graph_def.node:
        if node.op == "BiasAdd":  # the remapper's pattern: a BiasAdd reading its MatMul directly
            assert after.nodes[node.input[0].split(":")[0]].op == "MatMul", node.name
        if node.op == "Erf":  # GELU in the remapper's form: x * ((erf(x * sqrt(1/2)) + 1) * 0.5), x the BiasAdd
            scaled = after.nodes[node.input[0]]
            assert scaled.op == "Mul" and after.nodes[scaled.input[0]].op == "BiasAdd"
    assert ops.count("Erf") == 2
    layer_norm = fusion.fuse_layer_norm(after)
    ops = [node.op for node in fusion.apply(after.graph_def, layer_norm).node]
    assert ops.count("_MklLayerNorm") == 2 and "SquaredDifference" not in ops and "Rsqrt" not in ops
    assert [node.attr["epsilon"].f for node in layer_norm.added] == pytest.approx([BERT_EPSILON] * 2)


def matmuls_reading_held_weights(fused):
    """The names of the fused graph's MatMuls whose weights come through PlaceholderWithDefault, each with
    whether GELU follows its bias (the BiasAdd it feeds, then Mul, then Erf)."""
    found = {}
    for op in fused.function.graph.get_operations():
        if op.type == "MatMul" and op.inputs[1].op.type == "PlaceholderWithDefault":
            bias = op.outputs[0].consumers()
            scaled = bias[0].outputs[0].consumers() if len(bias) == 1 and bias[0].type == "BiasAdd" else []
            found[op.name] = any(erf.type == "Erf" for mul in scaled for erf in mul.outputs[0].consumers())
    return found


AVX2_CPU = {"avx", "avx2", "fma"}


@pytest.mark.parametrize("flags, held", [(AVX2_CPU, 2), (AVX2_CPU | {"avx512f"}, 0), (set(), 0)],
                         ids=["AVX2", "AVX-512", "flags unknown"])
def test_on_avx2_cpus_the_dense_layers_before_gelu_read_their_weights_held(monkeypatch, flags, held):
    """Held weights get oneDNN's gemm kernel, which scored faster than brgemm on an AVX2 CPU; CPUs with
    AVX-512, where it wasn't measured, keep constants; either way the scores are the graph's."""
    from tfhub_classifier import hardware, runtime
    from tfhub_classifier.model import fusion
    monkeypatch.setattr(tfhub_classifier, "ONEDNN_CPU", True)
    monkeypatch.setattr(runtime, "onednn_enabled", lambda: True)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    function = token_classifier()
    fused = fusion.fuse(function)
    assert (fused.gelu_weights_held, fused.gelus, fused.dense_layers) == (held, 2, 5)
    assert sorted(matmuls_reading_held_weights(fused).values()) == [True] * held
    assert_scores_as_before(function, fused)


def test_held_gelu_weights_can_be_asked_for_or_refused_on_any_cpu():
    from tfhub_classifier.model import fusion
    held = matmuls_reading_held_weights(fusion.fuse(token_classifier(), gelu_weights_held=True))
    assert sorted(held.values()) == [True, True]
    assert not matmuls_reading_held_weights(fusion.fuse(token_classifier(), gelu_weights_held=False))


@pytest.mark.parametrize("setting", ["no oneDNN", "not x86", "bfloat16"])
def test_gelu_weights_stay_constant_where_holding_them_was_not_measured(monkeypatch, setting):
    from tfhub_classifier import hardware, runtime
    from tfhub_classifier.model import fusion
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2_CPU)
    monkeypatch.setattr(tfhub_classifier, "ONEDNN_CPU", setting != "not x86")
    monkeypatch.setattr(runtime, "onednn_enabled", lambda: setting != "no oneDNN")
    monkeypatch.setattr(runtime, "reduced_precision_rewrites", lambda: setting == "bfloat16")
    assert not fusion.holds_gelu_weights()


def test_a_weight_shared_with_another_matmul_is_held_for_the_gelu_layer_alone():
    from tfhub_classifier.model import fusion
    weights = np.random.default_rng(0).normal(size=(WIDTH, WIDTH)).astype(np.float32)
    bias = np.random.default_rng(1).normal(size=WIDTH).astype(np.float32)

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(tokens):
        x = tf.cast(tokens["input_word_ids"][:, :, None], tf.float32) * tf.ones([WIDTH]) / VOCAB
        shape = tf.shape(x)
        flat = tf.nn.bias_add(tf.reshape(tf.matmul(tf.reshape(x, [-1, WIDTH]), weights), shape), bias)
        gelu = flat * ((tf.math.erf(flat * np.float32(np.sqrt(0.5))) + 1) * 0.5)
        plain = tf.matmul(tf.reshape(gelu, [-1, WIDTH]), weights)  # the same weights, no GELU after
        return tf.reshape(plain, shape)[:, 0, :2]

    function = classify_tokens.get_concrete_function()
    fused = fusion.fuse(function, gelu_weights_held=True)
    assert (fused.gelus, fused.gelu_weights_held) == (1, 1)
    assert list(matmuls_reading_held_weights(fused).values()) == [True]
    assert_scores_as_before(function, fused)


GELU_KERNELS = """
import sys
sys.path[:0] = ["tests", "tests/unit"]
import numpy as np
from token_graphs import token_classifier
from tfhub_classifier.model import fusion
fused = fusion.fuse(token_classifier(), gelu_weights_held={held})
ids = np.ones((8, 48), np.int32)
fused({{"input_word_ids": ids, "input_mask": ids, "input_type_ids": 0 * ids}})
"""


def test_onednn_runs_the_dense_layers_with_held_weights_and_gelu_on_its_gemm_kernel():
    """The reason weights are held: oneDNN picks brgemm for constant weights, and gemm for held ones, with
    GELU fused into either (ONEDNN_VERBOSE names the kernel that ran each dense layer)."""
    from tensorflow.python.util import _pywrap_util_port
    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("this TensorFlow build runs without oneDNN (TF_ENABLE_ONEDNN_OPTS=0 or not x86): no oneDNN kernels")
    kernels = {}
    for held in (True, False):
        out, _ = python(GELU_KERNELS.format(held=held), ONEDNN_VERBOSE="1")
        fields = [line.split(",") for line in out.splitlines() if ",exec," in line and "eltwise_gelu_erf" in line]
        kernels[held] = [row[row.index("inner_product") + 1] for row in fields if "inner_product" in row]
    assert len(kernels[True]) == len(kernels[False]) == 2, kernels
    assert not any("brgemm" in kernel for kernel in kernels[True]), kernels
    assert all("brgemm" in kernel for kernel in kernels[False]), kernels


def test_approximate_gelu_is_not_taken_for_exact_gelu():
    from tfhub_classifier.model import fusion
    function = token_classifier(activation=lambda x: tf.nn.gelu(x, approximate=True))
    fused = fusion.fuse(function)
    assert (fused.dense_layers, fused.gelus) == (5, 0)
    assert_scores_as_before(function, fused)


def test_a_normalization_that_is_not_layer_normalization_is_left_alone():
    from tfhub_classifier.model import fusion
    function = token_classifier(first_norm=DoubledVarianceNorm())
    fused = fusion.fuse(function)
    assert fused.layer_norms == 1  # the real one only
    assert_scores_as_before(function, fused)


def test_tf_keras_fused_batch_norm_layer_norm_is_left_to_grappler():
    """tf-keras runs a layer normalization with epsilon above 1e-5 as FusedBatchNormV3, not moments: no match."""
    from tfhub_classifier.model import fusion
    function = token_classifier(first_norm=keras.layers.LayerNormalization(epsilon=1e-4))
    fused = fusion.fuse(function)
    assert fused.layer_norms == 1
    assert_scores_as_before(function, fused)


def test_a_layer_norm_left_unfused_keeps_its_epsilon(monkeypatch):
    """Frozen weights let grappler's own layer-normalization fusion match, and it drops the epsilon
    (BERT's 1e-12 becomes 0.001): a normalization the rewrite leaves alone must still score as before."""
    from tfhub_classifier.model import fusion
    monkeypatch.setattr(fusion, "fuse_layer_norm", lambda graph: fusion.Edit())
    function = token_classifier()
    fused = fusion.fuse(function)
    assert fused.layer_norms == 0
    assert_scores_as_before(function, fused)


class EpsilonOutsideTheRoot(keras.layers.Layer):
    """(x - mean) / (std + epsilon): layer normalization's values at unit scale, not where the variance is small."""

    def build(self, shape):
        self.gamma = self.add_weight(name="gamma", shape=shape[-1:], initializer="ones")
        self.beta = self.add_weight(name="beta", shape=shape[-1:], initializer="zeros")

    def call(self, x):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=-1, keepdims=True)
        return (x - mean) * tf.math.reciprocal(tf.sqrt(variance) + 1e-6) * self.gamma + self.beta


def test_a_normalization_with_its_epsilon_elsewhere_is_left_alone():
    from tfhub_classifier.model import fusion
    function = token_classifier(first_norm=EpsilonOutsideTheRoot())
    assert fusion.fuse(function).layer_norms == 1  # the real one only


def test_a_normalization_over_four_axes_is_left_alone():
    """_MklLayerNorm takes two or three axes: a [batch, length, heads, size] normalization stays as it is."""
    from tfhub_classifier.model import fusion
    keras.utils.set_random_seed(0)
    norm = keras.layers.LayerNormalization(epsilon=BERT_EPSILON, beta_initializer="random_normal")

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(tokens):
        x = tf.reshape(tf.cast(tokens["input_word_ids"], tf.float32), [-1, 1, 1, 1]) * tf.ones([1, 2, 3, 8])
        return tf.reduce_sum(norm(x * tf.range(8, dtype=tf.float32)), axis=[1, 2, 3])[:, None]
    function = classify_tokens.get_concrete_function()
    fused = fusion.fuse(function)
    assert fused.layer_norms == 0
    assert_scores_as_before(function, fused)


@pytest.mark.parametrize("equation, axes", [("abc,cd->abd", 1), ("abc,cde->abde", 1), ("abcd,cde->abe", 2),
                                            ("abc,cd->abd".replace("abd", "adb"), None),  # output reordered
                                            ("cd,abc->abd", None), ("...c,cd->...d", None),
                                            ("abc,dc->abd", None), ("abc,cd->ab", None), ("aac,cd->aad", None)])
def test_which_einsums_are_dense_layers(equation, axes):
    from tfhub_classifier.model import fusion
    kernel = equation.split("->")[0].split(",")[1]
    assert fusion._contracted_axes(equation, len(kernel)) == axes


def test_an_einsum_whose_bias_spans_part_of_its_output_is_left_alone():
    from tfhub_classifier.model import fusion
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype=tf.int32)
    x = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    heads = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4), bias_axes="e",  # a bias per size, not per head
                                     bias_initializer="random_normal")(x)
    model = keras.Model(ids, tf.reduce_sum(heads, axis=[1, 2, 3])[:, None])

    @tf.function(input_signature=[{key: tf.TensorSpec([None, None], tf.int32) for key in tokenization.TOKEN_KEYS}])
    def classify_tokens(tokens):
        return model(tokens["input_word_ids"])
    function = classify_tokens.get_concrete_function()
    fused = fusion.fuse(function)
    assert fused.dense_layers == 0
    assert_scores_as_before(function, fused)


@pytest.mark.parametrize("gelu_weights_held", [True, False], ids=["held weights", "constant weights"])
def test_grappler_runs_each_rewritten_layer_as_one_onednn_kernel(gelu_weights_held):
    """What the speed comes from: grappler's remapper turns each MatMul + BiasAdd (+ GELU) into one fused
    MatMul, whether its weights are constants or held, and the layer normalizations run as oneDNN's; no
    GELU or normalization op runs alone."""
    from tensorflow.python.util import _pywrap_util_port

    from tfhub_classifier.model import fusion
    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("this TensorFlow build runs without oneDNN (TF_ENABLE_ONEDNN_OPTS=0 or not x86): no fused kernels")
    fused = fusion.fuse(token_classifier(), gelu_weights_held=gelu_weights_held)
    tokens = next(batches())
    fused(tokens)  # the first call optimizes the graph
    ops = executed_ops(fused, tokens)
    assert any("FusedMatMul" in op for op in ops), sorted(ops)
    assert any("LayerNorm" in op for op in ops), sorted(ops)
    assert not set(ops) & {"Erf", "Erfc", "BiasAdd", "SquaredDifference", "Rsqrt", "Einsum"}, sorted(ops)


def python(code, **variables):
    """(stdout, stderr) of code run by a new Python at the suite's root, with variables set (None: unset)."""
    environment = {key: value for key, value in os.environ.items() if key not in variables}
    environment.update({key: value for key, value in variables.items() if value is not None})
    run = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True,
                         env=environment)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, run.stderr


X86_ONLY = pytest.mark.skipif(not tfhub_classifier.ONEDNN_CPU, reason="the suite turns oneDNN on on x86 CPUs "
                              "only, where it was measured")
ONEDNN_PROBE = "from tensorflow.python.util import _pywrap_util_port\nprint('oneDNN', _pywrap_util_port.IsMklEnabled())"


@X86_ONLY
def test_the_suite_runs_onednn_on_every_x86_cpu_unless_the_user_turns_it_off():
    """TensorFlow turns oneDNN on by itself only on some x86 CPUs (AVX512-VNNI, AVX512-BF16, AVX-VNNI, AMX);
    the suite turns it on for all of them, AVX2 CPUs included, whichever of its modules imports TensorFlow
    first, and a user's TF_ENABLE_ONEDNN_OPTS=0 still wins."""
    first = "import os\nimport tfhub_classifier.model.graph_edits\n"  # a module that imports TensorFlow itself
    shown = "print('variable', os.environ.get('TF_ENABLE_ONEDNN_OPTS'))\n"
    out, _ = python(first + shown + ONEDNN_PROBE, TF_ENABLE_ONEDNN_OPTS=None)
    assert out.splitlines()[-2:] == ["variable 1", "oneDNN True"], out
    out, _ = python(first + shown + ONEDNN_PROBE, TF_ENABLE_ONEDNN_OPTS="0")
    assert out.splitlines()[-2:] == ["variable 0", "oneDNN False"], out


@X86_ONLY
def test_tensorflow_imported_before_the_suite_gets_a_note_when_it_left_onednn_off():
    """A notebook that imported TensorFlow first runs without oneDNN where TensorFlow's own default leaves it
    off (AVX2 CPUs): the suite says so and how to fix it, rather than running slower in silence; nothing is
    said when oneDNN is on anyway, or off because the user asked."""
    note = "note: TensorFlow was imported before tfhub_classifier, so its oneDNN kernels stay off"

    def imported_first(loaded_with, then):
        """stderr of TensorFlow loaded with TF_ENABLE_ONEDNN_OPTS=loaded_with, then the variable set to then
        (None: unset) and the suite imported."""
        code = (f"import os\nos.environ['TF_ENABLE_ONEDNN_OPTS'] = {loaded_with!r}\nimport tensorflow\n"
                + ("os.environ.pop('TF_ENABLE_ONEDNN_OPTS')\n" if then is None else
                   f"os.environ['TF_ENABLE_ONEDNN_OPTS'] = {then!r}\n")
                + "import tfhub_classifier.runtime\n" + ONEDNN_PROBE)
        out, err = python(code, TF_USE_LEGACY_KERAS="1")
        assert out.splitlines()[-1] == f"oneDNN {loaded_with == '1'}", out
        return err
    err = imported_first("0", None)  # as an AVX2 CPU loads TensorFlow by default
    assert note in err and "TF_ENABLE_ONEDNN_OPTS=1" in err, err
    assert note not in imported_first("0", "0")  # the user's own choice
    assert note not in imported_first("1", None)  # on already


def test_in_bfloat16_the_layer_norms_run_without_casts_around_them(monkeypatch):
    """--precision bfloat16 lets oneDNN's layer normalization take the bfloat16 activations around it as
    they come, where grappler's own lists would cast them to float32 and back for each one."""
    from tensorflow.python.util import _pywrap_util_port

    from tfhub_classifier import hardware, runtime
    from tfhub_classifier.model import fusion
    if not _pywrap_util_port.IsMklEnabled() or not hardware.cpu_supports_bfloat16():
        pytest.skip("needs oneDNN and a CPU with AVX512-BF16 or AMX: no bfloat16 rewrite here")
    tokens = list(batches())[2]
    monkeypatch.setenv("TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_ADD", "")
    try:
        runtime.set_precision("bfloat16")
        following = fusion.fuse(token_classifier())
        following(tokens)  # the first call rewrites the graph
        following_ops = executed_ops(following, tokens)
        monkeypatch.setenv("TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_ADD", "")  # grappler's lists alone
        plain = fusion.fuse(token_classifier())
        plain(tokens)
        plain_ops = executed_ops(plain, tokens)
    finally:
        runtime.set_precision("float32")
    assert following_ops["_MklLayerNorm"] == plain_ops["_MklLayerNorm"] == 2
    assert following_ops["Cast"] < plain_ops["Cast"], (following_ops, plain_ops)


def test_a_graph_run_alone_computes_what_its_function_computes():
    """The int8 engine's calibration reads activations by running the frozen graph alone (run_as_function):
    they must be those the graph computes when it scores (in a TF1 Session, run_graph, this graph's Keras
    layer normalization came out differently, 0.026 off at the output). That fuse calibrates through it,
    test_quantization's calibrated-ranges test shows: from a Session's values its scores fall 4% off (it allows 2%)."""
    from tfhub_classifier.model import fusion
    from tfhub_classifier.model.graph_edits import frozen_graph, run_as_function
    function = token_classifier()
    tokens = list(batches())[2]
    expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
    feeds = {tensor: tokens[key] for key, tensor in fusion._placeholders(function).items()}
    got = run_as_function(frozen_graph(function), [function.outputs[0].name], feeds)[0]
    np.testing.assert_allclose(got, expected, atol=2e-3)
