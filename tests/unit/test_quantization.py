"""The fused graph's dense layers as oneDNN int8 products (--engine fused-int8): weights within 7 bits,
activations quantized over each batch's own range, the output x @ W + b to the quantization's error."""
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
    scale = bound / 127
    np.testing.assert_allclose(quantized * scale, weights, atol=scale / 2 + 1e-7)
    np.testing.assert_allclose(column_sums, (quantized * scale).sum(0), rtol=1e-6)
    zeros, bound, _ = quantization.quantized_weights(np.zeros((4, 3), np.float32))
    assert not zeros.any() and bound > 0


def int8_layer(x, weights, bias):
    """x @ weights + bias through quantization's int8 layer, run as a graph."""
    from tensorflow.core.framework import graph_pb2

    from tfhub_classifier.model import quantization
    from tfhub_classifier.model.graph_edits import const_node, run_nodes
    graph_def = graph_pb2.GraphDef()
    placeholder = graph_def.node.add(name="x", op="Placeholder")
    placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
    nodes = [placeholder, const_node("bias", bias)]
    activations, quantized = quantization._quantized_activations("layer", "x")
    layer = quantization._int8_product("layer", *quantized, "bias", *quantization.quantized_weights(weights))
    return run_nodes(nodes + activations + layer, layer[-1].name, {"x:0": x})


@needs_onednn
@pytest.mark.parametrize("offset", [0.0, 5.0, -5.0])
def test_an_int8_layer_computes_the_dense_layer_wherever_its_activations_lie(offset):
    """Activations shifted far from zero (as after a residual sum) still give x @ W + b: the shift taken off
    to quantize them is put back through the bias."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 96)) + offset).astype(np.float32)
    weights = (rng.normal(size=(96, 32)) * 0.1).astype(np.float32)
    bias = rng.normal(size=32).astype(np.float32)
    want = x @ weights + bias
    got = int8_layer(x, weights, bias)
    # Half a step of each operand, over 96 products (the quantization's own bound), far under a wrong shift's.
    x_step, w_step = (x.max() - x.min()) / 255, 2 * np.abs(weights).max() / 127
    bound = 96 * (x_step / 2 * np.abs(weights).max() + w_step / 2 * np.abs(x).max() + x_step * w_step / 4)
    assert np.abs(got - want).max() <= bound
    assert not np.array_equal(got, want)  # int8 products, not float32's


@needs_onednn
def test_the_fused_graph_runs_its_dense_layers_as_int8_products_scoring_near_float32():
    from tfhub_classifier.model import fusion
    function = token_classifier()
    fused = fusion.fuse(function, int8=True)
    # The five dense layers on [batch, length, ...]; the head's, already two-axis, stays float32.
    assert (fused.dense_layers, fused.int8_layers, fused.gelu_weights_held) == (5, 5, 0)
    for tokens in batches():
        expected = function({key: tf.constant(value) for key, value in tokens.items()}).numpy()
        np.testing.assert_allclose(fused(tokens).numpy(), expected, atol=0.02 * np.abs(expected).max() + 1e-3)
    ops = executed_ops(fused, next(iter(batches())))
    assert sum(count for op, count in ops.items() if "QuantizedMatMulWithBiasAndDequantize" in op) == 5, ops
    # The head's layer is the one float32 product left.
    assert sum(count for op, count in ops.items() if op.endswith("MatMul") and "Quantized" not in op) == 1, ops


def test_without_int8_the_fused_graph_has_no_quantized_op():
    from tfhub_classifier.model import fusion
    fused = fusion.fuse(token_classifier())
    assert fused.int8_layers == 0
    assert not any("Quantize" in node.op for node in fused.function.graph.as_graph_def().node)
