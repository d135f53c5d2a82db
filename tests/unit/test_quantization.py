"""The fused graph's dense layers as oneDNN int8 products (model/quantization.py): weights within 7 bits,
activations quantized over each batch's own range or a fixed one, the output x @ W + b to the quantization's
error."""
import numpy as np
import pytest
from token_graphs import batches, executed_ops, token_classifier

from tfhub_classifier import runtime
from tfhub_classifier.runtime import tf

needs_onednn = pytest.mark.skipif(not runtime.onednn_enabled(),
                                  reason="oneDNN's int8 products run only where TensorFlow's oneDNN kernels are on")


def test_weights_take_seven_bits_and_their_column_sums_are_the_dequantized_ones():
    from tfhub_classifier.model import quantization
    weights = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)
    quantized, bound, column_sums = quantization.quantized_weights(weights)
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == 64  # the largest weight at half the range
    assert bound.shape == ()  # one scale for the layer
    scale = bound / 127
    np.testing.assert_allclose(quantized * scale, weights, atol=scale / 2 + 1e-7)
    np.testing.assert_allclose(column_sums, (quantized * scale).sum(0), rtol=1e-6)
    for per_column in (False, True):
        zeros, bound, column_sums = quantization.quantized_weights(np.zeros((4, 3), np.float32), per_column)
        assert not zeros.any() and (bound > 0).all() and not column_sums.any()  # a range the op accepts


def test_per_column_scales_keep_one_large_weight_from_coarsening_the_other_columns():
    """A BERT's feed-forward output layer has a few weights tens of times the rest (MiniLM's first:
    7.91 where 99.9% are below 0.18): with one scale for the layer they take most of its levels."""
    from tfhub_classifier.model import quantization
    weights = (np.random.default_rng(0).normal(size=(48, 16)) * 0.1).astype(np.float32)
    weights[3, 5] = 8.0
    others = np.arange(16) != 5
    per_layer, bound, _ = quantization.quantized_weights(weights)
    per_layer_error = np.abs(per_layer * (bound / 127) - weights)[:, others].max()
    quantized, bound, column_sums = quantization.quantized_weights(weights, per_column=True)
    # Every column over its own 7 bits (its largest weight at 63.5 steps, rounding either way).
    assert set(np.abs(quantized).max(0).tolist()) <= {63, 64}
    dequantized = quantized * (bound / 127)
    np.testing.assert_allclose(bound, 2 * np.abs(weights).max(0), rtol=1e-6)
    np.testing.assert_allclose(column_sums, dequantized.sum(0), rtol=1e-5)
    # Each column within half its own step (its largest weight / 127), far inside the layer-wide step's error.
    error = np.abs(dequantized - weights)
    assert (error.max(0) <= np.abs(weights).max(0) / 127 * (1 + 1e-5)).all()
    assert error[:, others].max() < per_layer_error / 10


def int8_layer(x, weights, bias, per_column=False, gelu=False, divisors=None, fixed=None):
    """x @ weights + bias [then GELU] through quantization's int8 layer, run as a graph (x's channels
    divided by divisors and the weights' rows multiplied by them, if given; quantized over the range fixed,
    if given, else over x's own)."""
    from tensorflow.core.framework import graph_pb2

    from tfhub_classifier.model import quantization
    from tfhub_classifier.model.graph_edits import const_node, run_nodes
    graph_def = graph_pb2.GraphDef()
    placeholder = graph_def.node.add(name="x", op="Placeholder")
    placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
    nodes = [placeholder, const_node("bias", bias)]
    activations, quantized = quantization._quantized_activations("layer", "x", divisors, fixed)
    scaled = weights if divisors is None else weights * divisors[:, None]
    layer = quantization._int8_product("layer", *quantized, "bias",
                                       *quantization.quantized_weights(scaled, per_column), gelu=gelu)
    return run_nodes(nodes + activations + layer, layer[-1].name, {"x:0": x})


def gelu(x):
    return 0.5 * x * (1 + tf.math.erf(x / np.sqrt(2)).numpy())


@needs_onednn
@pytest.mark.parametrize("smoothed", [False, True], ids=["plain", "smoothed"])
@pytest.mark.parametrize("gelu_after", [False, True], ids=["bias", "bias-and-gelu"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per-layer", "per-column"])
@pytest.mark.parametrize("ranges", ["batch", "fixed"])
@pytest.mark.parametrize("offset", [0.0, 5.0, -5.0])
def test_an_int8_layer_computes_the_dense_layer_wherever_its_activations_lie(offset, ranges, per_column, gelu_after,
                                                                            smoothed):
    """Activations shifted far from zero (as after a residual sum) still give x @ W + b [then exact GELU,
    in the same op]: oneDNN multiplies the 8-bit numbers of x - low and the weights, and low times the
    weights' sums comes back through the bias; low is min(x), or a fixed range's own."""
    from tfhub_classifier.model import quantization
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 96)) + offset).astype(np.float32)
    weights = (rng.normal(size=(96, 32)) * 0.1 * rng.uniform(0.2, 2, size=32)).astype(np.float32)
    weights[:, 7] = 0  # a column of zeros: its output is its bias
    bias = rng.normal(size=32).astype(np.float32)
    divisors = rng.uniform(0.5, 3, size=96).astype(np.float32) if smoothed else None
    inputs = x if divisors is None else x / divisors
    fixed = quantization.fixed_range(x.min(0), x.max(0), divisors) if ranges == "fixed" else None
    got = int8_layer(x, weights, bias, per_column, gelu_after, divisors, fixed)
    then = gelu if gelu_after else (lambda values: values)
    # The same 8-bit numbers multiplied in float64, then the shift put back.
    low, high = fixed or (inputs.min(), inputs.max())
    if fixed:  # the calibration's range, widened on each side
        margin = quantization.RANGE_MARGIN * (inputs.max() - inputs.min())
        np.testing.assert_allclose([low, high], [inputs.min() - margin, inputs.max() + margin], rtol=1e-5)
    step = (high - low) / 255
    quantized, bound, column_sums = quantization.quantized_weights(
        weights if divisors is None else weights * divisors[:, None], per_column)
    dequantized = quantized * (bound / 127.0)
    exact = then((np.round((inputs - low) / step) * step) @ dequantized + bias + low * column_sums)
    # A value rounded the other way at a tie moves an output by at most a step times the largest weight
    # (GELU's slope is at most 1.13).
    largest = np.abs(weights if divisors is None else weights * divisors[:, None]).max()
    np.testing.assert_allclose(got, exact, atol=2 * 1.13 * step * largest + 1e-5)
    want = then(x @ weights + bias)
    assert 1e-4 < np.abs(got - want).max() < 0.05 * np.abs(want).max()  # int8's error: above float32's, small
    np.testing.assert_allclose(got[:, 7], then(bias[7]), rtol=1e-5)


@needs_onednn
def test_activations_beyond_a_fixed_range_are_clipped_to_it():
    from tfhub_classifier.model import quantization
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 16)).astype(np.float32)
    x[0, 0], x[1, 1] = 40.0, -40.0  # far outside the range below
    weights = (rng.normal(size=(16, 8)) * 0.1).astype(np.float32)
    bias = np.zeros(8, np.float32)
    low, high = -3.0, 3.0
    got = int8_layer(x, weights, bias, per_column=True, fixed=(low, high))
    step = (high - low) / 255
    quantized, bound, column_sums = quantization.quantized_weights(weights, True)
    clipped = np.round((np.clip(x, low, high) - low) / step) * step
    exact = clipped @ (quantized * (bound / 127.0)) + low * column_sums
    np.testing.assert_allclose(got, exact, atol=2 * step * np.abs(weights).max() + 1e-5)
    assert np.abs(got[:2] - x[:2] @ weights).max() > 1  # the clipped rows: far from the float product


@needs_onednn
def test_an_int8_layer_takes_an_empty_batch():
    assert int8_layer(np.zeros((0, 8), np.float32), np.ones((8, 3), np.float32), np.ones(3, np.float32)).shape == (0, 3)


@needs_onednn
@pytest.mark.parametrize("scales", ["per-layer", "per-column"])
def test_the_fused_graph_runs_its_dense_layers_as_int8_products_scoring_near_float32(scales):
    from tfhub_classifier.model import fusion
    function = token_classifier()
    fused = fusion.fuse(function, int8=scales)
    # The five dense layers on [batch, length, ...]; the head's, already two-axis, stays float32.
    assert (fused.dense_layers, fused.int8_layers, fused.gelu_weights_held) == (5, 5, 0)
    for tokens in batches():
        expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
        np.testing.assert_allclose(fused(tokens).numpy(), expected, atol=0.02 * np.abs(expected).max() + 1e-3)
    ops = executed_ops(fused, next(iter(batches())))
    assert ops.get("_QuantizedMatMul") == 5, ops
    # The head's layer is the one float32 product left; the two GELUs run inside their int8 products.
    assert sum(count for op, count in ops.items() if op.endswith("MatMul") and "Quantized" not in op) == 1, ops
    assert "Erf" not in ops, ops
    # The op takes one weight range a layer, or one a column.
    nodes = {node.name: node for node in fused.function.graph.as_graph_def().node}
    ranges = [tf.make_ndarray(nodes[node.input[6]].attr["value"].tensor) for node in nodes.values()
              if node.op == "_QuantizedMatMul"]
    assert [values.ndim for values in ranges] == [1 if scales == "per-column" else 0] * 5


def test_int8_weight_scales_are_per_layer_or_per_column():
    from tfhub_classifier.model import fusion
    with pytest.raises(ValueError, match="per-layer, per-column"):
        fusion.fuse(token_classifier(), int8="per-row")


def test_without_int8_the_fused_graph_has_no_quantized_op():
    from tfhub_classifier.model import fusion
    fused = fusion.fuse(token_classifier())
    assert fused.int8_layers == 0
    assert not any("Quantize" in node.op for node in fused.function.graph.as_graph_def().node)


@needs_onednn
def test_a_gelu_layer_left_in_float32_holds_its_weights_as_without_int8(monkeypatch):
    """Where only some layers are int8 (benchmarks/int8_layers.py), the GELU layers left in float32 read their
    weights as the float32 fused graph's do, so the two differ only in the int8 products."""
    from tfhub_classifier.model import fusion, quantization
    # A new function for each use (the same seeded weights): one's variables go with its Keras model.
    function = token_classifier()
    expected = [function({key: tf.constant(value) for key, value in tokens.items()}).numpy() for tokens in batches()]
    assert fusion.fuse(token_classifier(), int8="per-layer", gelu_weights_held=True).gelu_weights_held == 0  # none left
    every_layer = quantization.quantize_dense
    monkeypatch.setattr(quantization, "quantize_dense", lambda graph, bias_adds, scales, **options: every_layer(
        graph, [name for name in bias_adds if not any(reader.op == "Mul" for reader in graph.readers[name])], scales,
        **options))
    fused = fusion.fuse(token_classifier(), int8="per-layer", gelu_weights_held=True)  # the three without GELU in int8
    assert (fused.int8_layers, fused.gelus, fused.gelu_weights_held) == (3, 2, 2)
    for tokens, want in zip(batches(), expected):
        np.testing.assert_allclose(fused(tokens).numpy(), want, atol=0.02 * np.abs(want).max() + 1e-3)


@needs_onednn
def test_layers_reading_a_gelus_output_can_be_left_in_float32():
    """--engine fused-int8 leaves in float32 the feed-forward block's second layer, chosen by what it reads
    (a GELU's output), not by its name: int8 rounds its weights and activations worst."""
    from tfhub_classifier.model import fusion
    function = token_classifier()
    fused = fusion.fuse(function, int8="per-column", int8_after_gelu=False)
    assert fused.int8_layers == 4  # of the five: the one reading the Dense layer's GELU stays float32
    ops = executed_ops(fused, next(iter(batches())))
    assert ops.get("_QuantizedMatMul") == 4, ops
    # The float32 products left: that one (Keras' Dense, through Tensordot), reading what the int8 product
    # with GELU computed, and the head's.
    from tfhub_classifier.model import quantization
    from tfhub_classifier.model.graph_edits import Graph, node_of
    graph = Graph(fused.function.graph.as_graph_def())
    sources = [graph.nodes[node_of(quantization._reshaped_from(graph, node.input[0]))]
               for node in graph.graph_def.node if node.op == "MatMul"]
    assert len(sources) == 2
    int8_sources = [node for node in sources if node.op == "_QuantizedMatMul"]
    assert [b"GeluExact" in node.attr["fused_ops"].list.s for node in int8_sources] == [True]
    for tokens in batches():
        expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
        np.testing.assert_allclose(fused(tokens).numpy(), expected, atol=0.02 * np.abs(expected).max() + 1e-3)


@needs_onednn
def test_smoothing_keeps_one_large_activation_channel_from_coarsening_the_others():
    """A BERT's layer normalization outputs have a few channels many times the rest (MiniLM's: 28 where
    the median channel reaches 2): dividing each channel by its SmoothQuant scale, and multiplying the
    weights' rows by it, leaves x @ W as it was but the batch's one range covers the channels evenly."""
    from tfhub_classifier.model import quantization
    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    x[:, 9] *= 30
    weights = (rng.normal(size=(64, 32)) * 0.1).astype(np.float32)
    bias = np.zeros(32, np.float32)
    want = x @ weights
    divisors = quantization.smoothing_scales(np.abs(x).max(0), np.abs(weights).max(1))
    np.testing.assert_allclose(divisors, np.sqrt(np.abs(x).max(0) / np.abs(weights).max(1)), rtol=1e-5)
    plain = np.abs(int8_layer(x, weights, bias, per_column=True) - want).mean()
    smoothed = np.abs(int8_layer(x, weights, bias, per_column=True, divisors=divisors) - want).mean()
    assert smoothed < plain / 2, (smoothed, plain)


@needs_onednn
def test_calibration_texts_set_a_smoothing_for_each_quantized_input():
    from tfhub_classifier.model import fusion
    function = token_classifier()
    calibration = next(iter(batches()))
    fused = fusion.fuse(function, int8="per-column", int8_after_gelu=False, int8_calibration=calibration)
    nodes = fused.function.graph.as_graph_def().node
    # The four int8 layers read four different activations, each divided by its own channel scales.
    assert sum(node.name.endswith("/int8/smoothed") for node in nodes) == 4 == fused.int8_layers
    for tokens in batches():
        expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
        np.testing.assert_allclose(fused(tokens).numpy(), expected, atol=0.02 * np.abs(expected).max() + 1e-3)


@needs_onednn
def test_with_calibrated_ranges_a_text_scores_the_same_in_any_batch():
    """Over each batch's range a text's scores move with its batch-mates; over the ranges measured on
    calibration texts they don't (int8 sums are exact, whatever the batch)."""
    from tfhub_classifier.model import fusion
    calibration = list(batches())[2]  # 8 rows of 48 tokens
    tokens = {key: value[:4] for key, value in calibration.items()}
    tokens["input_word_ids"] = tokens["input_word_ids"].copy()
    tokens["input_word_ids"][3] = tokens["input_word_ids"][3][::-1]  # batch-mates of other values
    expected = token_classifier()({key: tf.constant(value) for key, value in tokens.items()}).numpy()
    moved = {}
    for ranges in fusion.INT8_RANGES:
        fused = fusion.fuse(token_classifier(), int8="per-column", int8_calibration=calibration, int8_ranges=ranges)
        together = fused(tokens).numpy()
        alone = np.concatenate([fused({key: value[i:i + 1] for key, value in tokens.items()}).numpy()
                                for i in range(4)])
        moved[ranges] = np.abs(together - alone).max()
        np.testing.assert_allclose(together, expected, atol=0.02 * np.abs(expected).max() + 1e-3)
    assert moved["calibrated"] < 1e-5 < moved["batch"], moved


def test_calibrated_ranges_need_calibration_texts_and_unknown_ranges_are_refused():
    from tfhub_classifier.model import fusion
    with pytest.raises(ValueError, match="need calibration tokens"):
        fusion.fuse(token_classifier(), int8="per-column", int8_ranges="calibrated")
    with pytest.raises(ValueError, match="batch, calibrated"):
        fusion.fuse(token_classifier(), int8="per-column", int8_ranges="per-token")
